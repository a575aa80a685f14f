//! The running daemon: steering programs attached, one AF_XDP socket set
//! and one worker per rx queue, the counters to report, and reload.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fulcrum_config::{self as cfg, Overlay};
use fulcrum_dataplane::engine::{EngineConfig, Shared};
use fulcrum_dataplane::flow::key::{addr16, ip_from16};
use fulcrum_dataplane::flow::table::FlowState;
use fulcrum_dataplane::flow::table::Timeouts;
use fulcrum_dataplane::sched::Latencies;
use fulcrum_dataplane::sched::readings::Readings;
use fulcrum_dataplane::services::{Backend, Services, backend_name, vip_name};
use fulcrum_dataplane::wire::IpProtocol;
use fulcrum_io::afxdp::{self, XskConfig, XskIo};
use fulcrum_io::xdp::{ReturnTraffic, SteerProgram};
use fulcrum_io::{XdpMode, netinfo};

use super::Loaded;
use super::api::{self, BackendStatus, BackendsChanged, Draining, PluginLoaded, ReloadReport, RoleChange, Routes, Status, VipStatus};
use super::apply::{Ids, Net, NetIface};
use super::backends;
use super::checks::{self, HealthControl, HealthUpdate, Next};
use super::drain::{self, Drain};
use super::neighbours::NeighbourSync;
use super::plugins::Plugins;
use super::prepare::{self, Base, Prepared, PreparedPlugin, Reload};
use super::reload::{self, Changes};
use super::telemetry::Telemetry;
use crate::bgp;
use crate::error::Error;
use crate::ha::Ha;
use crate::ha::sync::{Shape, Sync};
use crate::workers::Dataplane;

/// How long a reload waits for every worker to switch to the new services
/// (an idle worker wakes every millisecond).
const APPLY_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Daemon {
    /// The configuration file, re-read on reload.
    path: PathBuf,
    config: cfg::Config,
    /// The file's text in force, and the runtime changes to the backends
    /// laid over it (`fulcrum backend`, kept in `daemon.state_file`).
    text: String,
    overlay: Overlay,
    net: Arc<Net>,
    /// Kept for the daemon's lifetime: a reload keeps every id.
    ids: Ids,
    engine: EngineConfig,
    dataplane: Dataplane,
    /// Detached when dropped, after the workers stopped.
    steering: Steering,
    /// The health checks, when any VIP has them.
    health: Option<HealthControl>,
    /// Keeps the workers' neighbour table in step with the kernel's.
    neighbours: NeighbourSync,
    /// Where health checks put the backends' response times, which the
    /// workers hand to schedulers.
    latencies: Arc<Latencies>,
    telemetry: Arc<Telemetry>,
    plugins: Plugins,
    /// NAT return traffic of the configuration in force, steered while
    /// this balancer forwards.
    returns: Vec<ReturnTraffic>,
    /// The role and flow sync of a balancer pair (`[sync]`).
    ha: Option<(Arc<Ha>, Sync)>,
    /// Once `fulcrum drain` or SIGTERM (with a grace) started one.
    drain: Option<Drain>,
    started: Instant,
    /// Each worker's poll count when the watchdog last looked.
    watched_polls: Vec<u64>,
    pub workers: usize,
    pub xdp_mode: XdpMode,
}

fn xdp_mode(m: cfg::XdpMode) -> XdpMode {
    match m {
        cfg::XdpMode::Native => XdpMode::Native,
        cfg::XdpMode::Generic => XdpMode::Generic,
        cfg::XdpMode::Auto => XdpMode::Auto,
    }
}

fn ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// The most flows one `fulcrum flows` lists, and how long the workers get
/// to answer it.
const MAX_FLOWS_LISTED: usize = 10_000;
const FLOWS_TIMEOUT: Duration = Duration::from_secs(1);

fn engine_config(config: &cfg::Config) -> EngineConfig {
    let t = &config.timeouts;
    EngineConfig {
        table_capacity: config.limits.connections_per_worker as usize,
        sticky_clients: config.limits.connections_per_worker as usize,
        timeouts: Timeouts { syn_ms: ms(t.tcp_syn), established_ms: ms(t.tcp_established), closing_ms: ms(t.tcp_closing), udp_ms: ms(t.udp) },
        snat_ports: (config.limits.snat_ports.first, config.limits.snat_ports.last),
        snat_reuse_ms: ms(t.snat_reuse),
        half_open_per_vip: config.limits.half_open_per_vip,
        syn_proxy_above: config.limits.syn_proxy_above,
        sync: config.sync.is_some(),
        ..EngineConfig::default()
    }
}

/// A VIP as the steering program matches it: address, protocol, port.
type VipMatch = (IpAddr, IpProtocol, u16);

fn vip_matches(config: &cfg::Config) -> Vec<VipMatch> {
    config.vips.iter().map(|v| (v.address, v.protocol.into(), v.port)).collect()
}

/// The steering programs and what they redirect: VIPs on the client-facing
/// interface, NAT return traffic on the server-facing one.
struct Steering {
    programs: Vec<SteerProgram>,
    server: usize,
    vips: Vec<VipMatch>,
    returns: Vec<ReturnTraffic>,
}

impl Steering {
    /// Adds what is missing; on a failure removes what it added, so the
    /// maps are as before.
    fn add(&mut self, vips: &[VipMatch], returns: &[ReturnTraffic]) -> Result<(), Error> {
        let new_vips: Vec<VipMatch> = vips.iter().filter(|v| !self.vips.contains(v)).copied().collect();
        let new_returns: Vec<ReturnTraffic> = returns.iter().filter(|r| !self.returns.contains(r)).copied().collect();
        let (mut added_vips, mut added_returns) = (Vec::new(), Vec::new());
        let mut add_all = || -> Result<(), fulcrum_io::IoError> {
            for &(a, p, port) in &new_vips {
                self.programs[0].add_vip(a, p, port)?;
                added_vips.push((a, p, port));
            }
            for &r in &new_returns {
                self.programs[self.server].add_return(r)?;
                added_returns.push(r);
            }
            Ok(())
        };
        if let Err(e) = add_all() {
            self.remove(&added_vips, &added_returns);
            return Err(Error::Refused(format!("updating the steering maps: {e}")));
        }
        self.vips.extend(added_vips);
        self.returns.extend(added_returns);
        Ok(())
    }

    /// Stops steering what is not in `vips` and `returns`. A failure only
    /// leaves a stale entry (its frames are counted as unsteerable).
    fn retain(&mut self, vips: &[VipMatch], returns: &[ReturnTraffic]) {
        let stale_vips: Vec<VipMatch> = self.vips.iter().filter(|v| !vips.contains(v)).copied().collect();
        let stale_returns: Vec<ReturnTraffic> = self.returns.iter().filter(|r| !returns.contains(r)).copied().collect();
        self.remove(&stale_vips, &stale_returns);
        self.vips.retain(|v| vips.contains(v));
        self.returns.retain(|r| returns.contains(r));
    }

    fn remove(&mut self, vips: &[VipMatch], returns: &[ReturnTraffic]) {
        for &(a, p, port) in vips {
            if let Err(e) = self.programs[0].remove_vip(a, p, port) {
                tracing::error!("steering: removing VIP {a} {p}/{port}: {e}");
            }
        }
        for &r in returns {
            if let Err(e) = self.programs[self.server].remove_return(r) {
                tracing::error!("steering: removing return traffic {r:?}: {e}");
            }
        }
    }
}

impl Daemon {
    /// Starts the balancer with `config`, read from `path` (kept for
    /// reloads).
    pub fn start(path: &Path, loaded: Loaded) -> Result<Daemon, Error> {
        let config = &loaded.config;
        let ifaces: Vec<&cfg::Interface> = match &config.topology {
            cfg::Topology::OneArm(i) => vec![i],
            cfg::Topology::Inline { client, server } => vec![client, server],
        };
        let net = Arc::new(Net {
            ifaces: ifaces
                .iter()
                .map(|i| {
                    Ok(NetIface {
                        name: i.name.clone(),
                        mac: netinfo::iface_mac(&i.name)?,
                        mtu: i.mtu.map_or_else(|| netinfo::iface_mtu(&i.name), Ok)?,
                        addrs: netinfo::iface_addrs(&i.name)?,
                    })
                })
                .collect::<Result<_, Error>>()?,
        });
        let engine = engine_config(config);
        let mut plugins = Plugins::new(&config.plugins);
        // The same preparation as a reload's, from nothing.
        let mut shared = Shared::new(&engine);
        let base = Base {
            path: path.to_path_buf(),
            config: None,
            text: String::new(),
            overlay: Overlay::default(),
            net: Arc::clone(&net),
            ids: Ids::default(),
            max_vips: engine.max_vips,
            max_backends: engine.max_backends,
            services: None,
            health: None,
            runtime: plugins.runtime(),
            latencies: Arc::clone(&shared.latencies),
            configured: Default::default(),
        };
        let modules = prepare::read_modules(config)?;
        let Prepared { config, text, overlay, ids, services, returns, health: next, schedulers, .. } =
            prepare::configuration(&base, loaded, modules, Changes::default())?;
        let mut health = None;
        HealthControl::commit(&mut health, next);
        let services = Arc::new(services);

        let mode = xdp_mode(config.daemon.xdp_mode);
        let mut programs = Vec::new();
        for i in &net.ifaces {
            let mut p = SteerProgram::attach(&i.name, mode)?;
            for &a in &i.addrs {
                p.add_host_addr(a)?;
            }
            programs.push(p);
        }
        let mut steering = Steering { programs, server: usize::from(net.server()), vips: Vec::new(), returns: Vec::new() };
        // A backup forwards nothing for the VIPs: their frames go to the
        // kernel until `fulcrum ha role master`.
        let role = config.sync.as_ref().map_or(cfg::HaRole::Master, |s| s.role);
        if role == cfg::HaRole::Master {
            steering.add(&vip_matches(&config), &returns)?;
        }

        let names: Vec<&str> = net.ifaces.iter().map(|i| i.name.as_str()).collect();
        let queues = names.iter().map(|n| afxdp::rx_queue_count(n)).collect::<Result<Vec<_>, _>>()?;
        let queues = queues.into_iter().min().unwrap_or(1);
        let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
        // Every rx queue needs its socket, or its frames would bypass the
        // balancer: one worker per queue.
        let cpus: Vec<usize> = match &config.daemon.workers {
            cfg::Workers::Auto => (0..queues as usize).map(|i| i % ncpu).collect(),
            cfg::Workers::Count(n) if u32::from(n.get()) == queues => Vec::new(),
            cfg::Workers::Pinned(list) if list.len() as u32 == queues => list.iter().map(|&c| usize::from(c)).collect(),
            _ => {
                return Err(Error::Refused(format!(
                    "{} has {queues} rx queues and fulcrum runs one worker per queue: set daemon.workers to {queues} or \"auto\", or change the queue count with `ethtool -L`",
                    names.join(", ")
                )));
            }
        };
        let busy = config.daemon.poll == cfg::Poll::Busy;
        let xsk = XskConfig { busy_poll: busy.then(afxdp::BusyPoll::default), ..XskConfig::default() };
        let mut ios = Vec::with_capacity(queues as usize);
        let mut sockets = Vec::new();
        for q in 0..queues {
            let io = XskIo::open(&names, q, &xsk)?;
            if busy && !io.is_busy_polling() {
                tracing::warn!(queue = q, "the kernel has no preferred busy polling (SO_PREFER_BUSY_POLL): the workers spin without it");
            }
            sockets.extend(io.watches()?.into_iter().map(|w| (q as usize, w)));
            for (port, p) in steering.programs.iter_mut().enumerate() {
                if let Some(fd) = io.socket_fd(port as u8) {
                    p.register_socket(q, fd)?;
                }
            }
            ios.push(io);
        }
        let ifindexes = names.iter().map(|n| netinfo::iface_index(n)).collect::<Result<_, _>>()?;
        let neighbours = NeighbourSync::start(ifindexes, Arc::clone(&shared.neighbours))?;
        let ha = config.sync.as_ref().map(|_| Ha::new(queues as usize, role));
        // A row of readings per worker, now that their number is known.
        shared.readings = Arc::new(Readings::new(queues as usize, engine.max_backends));
        let dataplane = Dataplane::start(ios, engine, &services, &shared, &cpus, ha.as_ref(), busy)?;
        let ha = match (ha, &config.sync) {
            (Some(ha), Some(c)) => {
                let shape = Shape { workers: queues as u16, snat_ports: engine.snat_ports };
                let sync = Sync::start(c, shape, Arc::clone(&ha))?;
                Some((ha, sync))
            }
            _ => None,
        };
        let telemetry =
            Arc::new(Telemetry::new(Arc::clone(&services), dataplane.stats.clone(), sockets, &shared, u64::from(config.limits.connections_per_worker)));
        telemetry.set_health(health.as_ref().map(HealthControl::stats));
        telemetry.set_plugins(plugins.slots());
        if let Some((ha, sync)) = &ha {
            telemetry.set_sync(Arc::clone(ha), Arc::clone(&sync.counters));
        }
        let xdp_mode = steering.programs[0].mode();
        tracing::info!(config = %path.display(), workers = queues, %xdp_mode, vips = config.vips.len(), "started");
        plugins.commit(schedulers, &dataplane);
        if !overlay.is_empty() {
            tracing::info!(state_file = %config.daemon.state_file.display(), "runtime changes to {} backends in force", overlay.backends.len());
        }
        Ok(Daemon {
            path: path.to_path_buf(),
            config,
            text,
            overlay,
            net,
            ids,
            engine,
            dataplane,
            steering,
            health,
            neighbours,
            latencies: Arc::clone(&shared.latencies),
            telemetry,
            plugins,
            returns,
            ha,
            drain: None,
            started: Instant::now(),
            watched_polls: Vec::new(),
            workers: queues as usize,
            xdp_mode,
        })
    }

    /// Readable when health transitions wait for `apply_health`.
    pub fn health_fd(&self) -> Option<RawFd> {
        self.health.as_ref().map(HealthControl::wake_fd)
    }

    /// Applies the health transitions waiting: the workers run the new
    /// services before each transition is logged, so whoever reads "is
    /// down" knows that backend gets no new flow any more.
    pub fn apply_health(&mut self) {
        let Some(h) = &mut self.health else { return };
        match h.take(&self.telemetry.services()) {
            None => {}
            Some(Err(e)) => tracing::error!("{e}"),
            Some(Ok(HealthUpdate { services, changes })) => {
                let services = self.publish(services);
                checks::log(&changes, &services);
            }
        }
    }

    /// Readable when the kernel learnt MACs that may be backends'.
    pub fn neighbours_fd(&self) -> RawFd {
        self.neighbours.wake_fd()
    }

    /// Moves backends whose MAC the kernel now knows differently (a
    /// replaced server, a changed NIC): new flows go to the new MAC. Only
    /// on-link backends (their own address is the next hop) and those
    /// without a configured `mac`; routed ones keep their gateway's MAC
    /// until a reload resolves it again.
    pub fn apply_neighbours(&mut self) {
        let known = self.neighbours.take_known();
        if known.is_empty() {
            return;
        }
        let services = self.telemetry.services();
        let pinned = |addr: IpAddr| self.config.vips.iter().flat_map(|v| &v.backends).any(|b| b.address == addr && b.mac.is_some());
        let moved: Vec<_> = (0..services.backend_slots())
            .filter_map(|i| {
                let id = u16::try_from(i).ok()?;
                let spec = services.backend(id)?.spec;
                let &(_, mac) = known.iter().rev().find(|(addr, _)| *addr == spec.addr)?;
                (mac != spec.next_hop && !pinned(spec.addr)).then_some((id, Backend { next_hop: mac, ..spec }))
            })
            .collect();
        if moved.is_empty() {
            return;
        }
        match services.with_backends(&moved) {
            Ok(next) => {
                let services = self.publish(next);
                for (id, b) in &moved {
                    let name = services.backend(*id).map_or_else(|| format!("#{id}"), |e| backend_name(e.spec.addr, e.spec.port));
                    tracing::info!("backend {name} is now at {} (the kernel's neighbour table)", netinfo::format_mac(&b.next_hop));
                }
            }
            Err(e) => tracing::error!("moving backends to their new MACs: {e}"),
        }
    }

    /// Publishes `services` to the workers and waits until they run them.
    fn publish(&mut self, services: Services) -> Arc<Services> {
        let services = Arc::new(services);
        let generation = self.dataplane.publish(&services);
        if let Err(behind) = self.dataplane.wait_applied(generation, APPLY_TIMEOUT) {
            tracing::warn!(?behind, "workers have not switched to the new services yet");
        }
        if let Some(h) = &self.health {
            h.follow(&services);
        }
        self.telemetry.set_services(Arc::clone(&services));
        services
    }

    pub fn telemetry(&self) -> Arc<Telemetry> {
        Arc::clone(&self.telemetry)
    }

    /// A copy of the running state, for a preparation on another thread.
    pub fn base(&self) -> Base {
        Base {
            path: self.path.clone(),
            config: Some(self.config.clone()),
            text: self.text.clone(),
            overlay: self.overlay.clone(),
            net: Arc::clone(&self.net),
            ids: self.ids.clone(),
            max_vips: self.engine.max_vips,
            max_backends: self.engine.max_backends,
            services: Some(self.telemetry.services()),
            health: self.health.as_ref().map(|h| h.view().clone()),
            runtime: self.plugins.runtime(),
            latencies: Arc::clone(&self.latencies),
            configured: self.plugins.configured(),
        }
    }

    /// Applies a prepared reload (`prepare::reload`), or keeps the running
    /// configuration and says why not. Logged and counted either way.
    pub fn finish_reload(&mut self, prepared: Result<Reload, Error>) -> Result<ReloadReport, Error> {
        let result = prepared.and_then(|r| match r {
            Reload::NoChange => Ok(Changes::default()),
            Reload::Apply(p) => {
                let changes = p.changes.clone();
                self.commit(*p).map(|()| changes)
            }
        });
        let config = self.path.display().to_string();
        match result {
            Ok(changes) => {
                tracing::info!(%config, "reload applied: {}", changes.summary());
                for line in changes.details() {
                    tracing::info!("  {line}");
                }
                self.telemetry.reloaded(true, &changes.summary());
                Ok(ReloadReport { config, changes })
            }
            Err(e) => {
                let message = e.to_string();
                tracing::warn!(%config, "reload refused, the running configuration stays: {}", api::brief(&message));
                self.telemetry.reloaded(false, &message);
                Err(e)
            }
        }
    }

    /// Puts a prepared configuration in force. Only the steering maps'
    /// update can fail, and it undoes itself: then nothing changed.
    fn commit(&mut self, p: Prepared) -> Result<(), Error> {
        let services = match (&p.health, &self.health) {
            // Transitions applied since the preparation started.
            (Next::Keep, Some(h)) => h.reapply(p.services)?,
            _ => p.services,
        };
        let services = Arc::new(services);
        let vips = vip_matches(&p.config);
        // New VIPs and return traffic are steered before the workers switch,
        // so none of a new flow's frames reach the kernel; stale entries go
        // once no worker uses the old services.
        let forwarding = self.forwarding();
        if forwarding {
            self.steering.add(&vips, &p.returns)?;
        }
        let generation = self.dataplane.publish(&services);
        if let Err(behind) = self.dataplane.wait_applied(generation, APPLY_TIMEOUT) {
            tracing::warn!(?behind, "workers have not switched to the new services yet");
        }
        if forwarding {
            self.steering.retain(&vips, &p.returns);
        }
        self.returns = p.returns;
        self.plugins.commit(p.schedulers, &self.dataplane);
        HealthControl::commit(&mut self.health, p.health);
        if let Some(h) = &self.health {
            h.follow(&services);
        }
        self.telemetry.set_health(self.health.as_ref().map(HealthControl::stats));
        self.telemetry.set_services(services);
        self.config = p.config;
        self.text = p.text;
        self.overlay = p.overlay;
        self.ids = p.ids;
        Ok(())
    }

    /// Applies a prepared runtime change to the backends
    /// (`prepare::backends`): the state file is written first, so that
    /// what runs is what a restart would run; it is written back if the
    /// commit fails. Logged either way; not counted as a reload.
    pub fn finish_backends(&mut self, what: &str, prepared: Result<(Overlay, Reload), Error>) -> Result<BackendsChanged, Error> {
        let state_file = self.config.daemon.state_file.clone();
        let result = prepared.and_then(|(overlay, reload)| {
            backends::save(&state_file, &overlay)?;
            let changes = match reload {
                Reload::NoChange => {
                    self.overlay = overlay;
                    Changes::default()
                }
                Reload::Apply(p) => {
                    let changes = p.changes.clone();
                    if let Err(e) = self.commit(*p) {
                        if let Err(e) = backends::save(&state_file, &self.overlay) {
                            tracing::error!("{e}");
                        }
                        return Err(e);
                    }
                    changes
                }
            };
            Ok(changes)
        });
        match result {
            Ok(changes) => {
                tracing::info!("{what}: applied, {}", changes.summary());
                for line in changes.details() {
                    tracing::info!("  {line}");
                }
                Ok(BackendsChanged { state_file: state_file.display().to_string(), changes, overrides: self.overlay.backends.clone() })
            }
            Err(e) => {
                tracing::warn!("{what}: refused: {}", api::brief(&e.to_string()));
                Err(e)
            }
        }
    }

    /// Whether this balancer forwards the VIPs' traffic: standalone, or
    /// the master of its pair.
    fn forwarding(&self) -> bool {
        self.ha.as_ref().is_none_or(|(ha, _)| ha.role() == cfg::HaRole::Master)
    }

    /// `fulcrum ha role`: a master steers the VIPs' traffic (and NAT
    /// return traffic) to the workers and sends its flows to the peer; a
    /// backup or faulty one hands that traffic to the kernel and keeps the
    /// peer's flows warm.
    pub fn set_role(&mut self, word: &str) -> Result<RoleChange, Error> {
        let role = cfg::HaRole::parse(word).ok_or_else(|| Error::Refused(format!("role must be master, backup or fault, got {word:?}")))?;
        let Some((ha, _)) = &self.ha else {
            return Err(Error::Refused("no [sync] in the configuration: this balancer is not part of a pair".into()));
        };
        let ha = Arc::clone(ha);
        // A new master's workers export before its first frame arrives; a
        // backup stops forwarding before it stops exporting.
        let previous = if role == cfg::HaRole::Master {
            let previous = ha.set_role(role);
            if let Err(e) = self.steering.add(&vip_matches(&self.config), &self.returns) {
                ha.set_role(previous);
                return Err(e);
            }
            previous
        } else {
            self.steering.retain(&[], &[]);
            ha.set_role(role)
        };
        ha.note_role_change(previous, role);
        if previous != role {
            tracing::info!(from = previous.as_str(), to = role.as_str(), standing_down = ha.standing_down(), "HA role changed");
        }
        Ok(RoleChange { previous: previous.as_str().into(), role: role.as_str().into() })
    }

    fn wanted_routes(&self) -> Routes {
        // A node of a synced fleet announces once it holds its peers'
        // flows, since the routers move some of them to it at once.
        let unsettled = self.ha.as_ref().is_some_and(|(_, sync)| !sync.settled());
        let routes = match self.drain {
            Some(_) => Default::default(),
            None if unsettled => Default::default(),
            None => bgp::announced(&self.telemetry.services()),
        };
        let of = |pref| routes.iter().filter(|(_, p)| **p == pref).map(|(a, _)| *a).collect();
        Routes { announce: of(bgp::Preference::Best), backup: of(bgp::Preference::Backup), draining: self.drain.is_some() }
    }

    /// What the BGP speaker's helper is to announce. Once it has been
    /// told to announce nothing, a drain can count its VIPs withdrawn.
    pub fn routes(&mut self) -> Routes {
        let routes = self.wanted_routes();
        if let Some(d) = &mut self.drain {
            d.withdrawn(Instant::now());
        }
        routes
    }

    /// Starts a drain, or reports the one under way: the VIPs are
    /// withdrawn, traffic is forwarded until it stops or the grace
    /// (`daemon.shutdown_grace`) ends.
    pub fn drain(&mut self) -> Draining {
        let now = Instant::now();
        let (bgp, packets) = (self.config.bgp.is_some(), self.telemetry.vip_packets());
        let grace = self.config.daemon.shutdown_grace.unwrap_or(drain::DEFAULT_GRACE);
        self.telemetry.set_draining();
        let d = self.drain.get_or_insert_with(|| {
            tracing::info!(grace = ?grace, "draining: withdrawing the VIPs, forwarding until their traffic stops");
            Drain::start(now, grace, !bgp, packets)
        });
        d.report(now)
    }

    /// Whether a drain is under way and over: time to exit.
    /// Up to `limit` of `vip`'s flows from every worker's table (of
    /// `client` only, if given).
    pub fn flows(&self, vip: &str, client: Option<IpAddr>, limit: usize) -> Result<Vec<api::FlowEntry>, Error> {
        let services = self.telemetry.services();
        let (id, _) = services
            .vips()
            .find(|(_, v)| vip_name(ip_from16(&v.addr), v.spec.proto, v.spec.port) == vip)
            .ok_or_else(|| Error::Refused(format!("no VIP {vip} (`fulcrum vip list` names them)")))?;
        let rows = self.dataplane.flows(id, client.map(addr16), limit.min(MAX_FLOWS_LISTED), FLOWS_TIMEOUT);
        let state = |s: FlowState| match s {
            FlowState::SynSeen => "half-open",
            FlowState::Established => "established",
            FlowState::Closing => "closing",
            FlowState::Udp => "udp",
        };
        Ok(rows
            .into_iter()
            .map(|(worker, r)| api::FlowEntry {
                worker,
                client: std::net::SocketAddr::new(ip_from16(&r.key.src), r.key.src_port).to_string(),
                backend: services.backend(r.backend).map_or_else(|| format!("#{}", r.backend), |b| backend_name(b.spec.addr, b.spec.port)),
                state: state(r.state).into(),
                idle_ms: r.idle_ms,
            })
            .collect())
    }

    /// Whether every worker polled since the last call: a worker stuck
    /// in a plugin or a system call stops counting.
    pub fn workers_progressed(&mut self) -> bool {
        let polls: Vec<u64> = self.dataplane.stats.iter().map(|(_, w)| w.polls.get()).collect();
        let progressed = self.watched_polls.len() != polls.len() || polls.iter().zip(&self.watched_polls).all(|(now, then)| now != then);
        self.watched_polls = polls;
        progressed
    }

    pub fn drained(&mut self) -> bool {
        let packets = self.telemetry.vip_packets();
        self.drain.as_mut().is_some_and(|d| d.done(Instant::now(), packets))
    }

    pub fn draining(&self) -> bool {
        self.drain.is_some()
    }

    /// Whether SIGTERM drains (a grace is configured) rather than stops.
    pub fn drains_on_sigterm(&self) -> bool {
        self.config.daemon.shutdown_grace.is_some()
    }

    /// `fulcrum plugin load`: publishes a prepared plugin for the VIP's
    /// new flows (until a reload changes that VIP's configured scheduler,
    /// or a restart). With `--persist`, the state file is written first (as for a
    /// backend change), and the VIP's plugin counts as configured from then
    /// on: a reload keeps it, a restart loads it.
    pub fn finish_plugin(&mut self, prepared: Result<PreparedPlugin, Error>) -> Result<PluginLoaded, Error> {
        let p = prepared?;
        let state_file = self.config.daemon.state_file.clone();
        if let Some(persisted) = &p.persisted {
            backends::save(&state_file, &persisted.0.overlay)?;
        }
        let plugin = p.plugin.name().to_string();
        let generation = self.plugins.publish(p.id, p.plugin, &self.dataplane);
        let persisted = p.persisted.map(|persisted| {
            let (loaded, from) = *persisted;
            self.plugins.set_configured(p.id, from);
            (self.config, self.text, self.overlay) = (loaded.config, loaded.text, loaded.overlay);
            state_file.display().to_string()
        });
        Ok(PluginLoaded { vip: p.vip, plugin, generation, persisted })
    }

    /// What runs: the configuration committed last, with the scheduler
    /// each VIP's new flows go through.
    pub fn status(&self) -> Status {
        let in_force = |v: &cfg::Vip| self.ids.vip(v).and_then(|id| self.plugins.in_force(id));
        let services = self.telemetry.services();
        let digest = |v: &cfg::Vip| self.ids.vip(v).and_then(|id| services.vip(id)).map_or_else(String::new, |v| format!("{:016x}", v.maglev.digest()));
        let vips = self
            .config
            .vips
            .iter()
            .map(|v| VipStatus {
                name: v.name(),
                mode: match v.mode {
                    cfg::Mode::Nat => "nat",
                    cfg::Mode::FullNat { .. } => "full-nat",
                    cfg::Mode::Dsr => "dsr",
                    cfg::Mode::Ipip { .. } => "ipip",
                    cfg::Mode::Gue { .. } => "gue",
                }
                .into(),
                scheduler: in_force(v).map_or_else(|| "maglev".into(), |p| p.name),
                scheduler_generation: in_force(v).map(|p| p.generation),
                scheduler_hash: in_force(v).map(|p| p.hash),
                quarantined: in_force(v).is_some_and(|p| p.quarantined),
                maglev_digest: digest(v),
                backends: v
                    .backends
                    .iter()
                    .map(|b| BackendStatus {
                        name: backend_name(b.address, b.port),
                        weight: b.weight,
                        runtime: self.overlay.get(&v.name(), b.address, b.port).map(cfg::BackendOverride::describe),
                    })
                    .collect(),
            })
            .collect();
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            config: self.path.display().to_string(),
            uptime_secs: self.started.elapsed().as_secs(),
            workers: self.workers,
            xdp_mode: self.xdp_mode.to_string(),
            interfaces: reload::interfaces(&self.config.topology),
            metrics_listen: self.config.daemon.metrics_listen.to_string(),
            state_file: self.config.daemon.state_file.display().to_string(),
            overrides: self.overlay.backends.clone(),
            reloads: self.telemetry.reloads(),
            vips,
            ha: self.ha.as_ref().map(|(_, sync)| sync.status()),
            bgp: self.config.bgp.as_ref().map(|_| Box::new(self.wanted_routes())),
            draining: self.drain.as_ref().map(|d| d.report(Instant::now())),
        }
    }

    /// Per VIP and backend: packets, bytes and new flows summed over the
    /// workers, then drops by reason, the flood defences' counters and the
    /// workers' handoffs.
    pub fn summary(&self) -> String {
        let s = self.telemetry.stats();
        let mut out = String::new();
        for v in &s.vips {
            let t = &v.traffic;
            let _ = writeln!(
                out,
                "vip {}: packets={} bytes={} new_flows={} resets={} moved_clients={}",
                v.name, t.packets, t.bytes, t.new_flows, t.resets, t.moved_clients
            );
            for b in &v.backends {
                let t = &b.traffic;
                let _ = write!(
                    out,
                    "  backend {}: state={} weight={} packets={} new_flows={} resets={} moved_clients={}",
                    b.name, b.state, b.weight, t.packets, t.new_flows, t.resets, t.moved_clients
                );
                if let Some(c) = &b.checks {
                    let _ = write!(out, " checks_passed={} checks_failed={} went_down={} went_up={}", c.passed, c.failed, c.went_down, c.went_up);
                }
                out.push('\n');
            }
        }
        let drops: Vec<String> = s.drops.iter().filter(|(_, n)| **n > 0).map(|(r, n)| format!("{r}={n}")).collect();
        let _ = writeln!(out, "drops: {}", if drops.is_empty() { "none".into() } else { drops.join(" ") });
        let _ = writeln!(
            out,
            "floods: syns_without_state={} syn_cookies_sent={} syn_cookies_accepted={}",
            s.syns_without_state, s.syn_cookies_sent, s.syn_cookies_accepted
        );
        let w = |f: fn(&super::api::WorkerReport) -> u64| s.workers.iter().map(f).sum::<u64>();
        let _ = writeln!(
            out,
            "workers: frames={} handed_out={} handoff_lost={} unsteerable={}",
            w(|w| w.frames),
            w(|w| w.handed_out),
            w(|w| w.handoff_lost),
            w(|w| w.unsteerable)
        );
        out
    }

    /// Stops the health checks and the workers, then detaches the programs.
    pub fn stop(self) -> Result<(), Error> {
        drop(self.ha);
        drop(self.health);
        let r = self.dataplane.stop();
        drop(self.steering);
        Ok(r?)
    }
}
