//! Scale-out on the lab: a router running BIRD 2 in front of several
//! fulcrum nodes, each announcing the VIP over eBGP through its own
//! ExaBGP (`fulcrum bgp exabgp`), with the client on the router's far side:
//!
//! ```text
//! client (198.18.3.2) ── router (BIRD 2, ECMP) ── br0 ─┬─ nodes 198.18.0.2, .5, .6, ...
//!                  198.18.3.1      198.18.0.254        └─ backends 198.18.0.11-13
//! ```
//!
//! The router installs the VIP as one multipath route over the nodes that
//! announce it, hashing flows by their 5-tuple (`fib_multipath_hash_policy`
//! 1). The nodes run the VIP in dsr or a tunnel mode, so Maglev sends a
//! flow to the same backend whichever node the router picks, and the
//! backends answer the client directly through the router; with sync the
//! nodes also tell each other the flows Maglev would place elsewhere. A
//! node may run BIRD for BFD alone, the router watching its session with
//! it.
//!
//! In full-NAT each node opens flows from a SNAT address of its own
//! (`SNAT_NET`, node i's `.i+1`) and announces it as the best route, its
//! peers' as a backup: the backends send their replies to the router,
//! which hands them to the owner while it announces, else to the others,
//! which carry its flows on through sync.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fulcrum::control::api::{Request, Response};

use crate::daemon::{self, LabMode, TempConfig, fulcrum_bin};
use crate::ha::ECHO_PORT;
use crate::{End, Host, Iface, Lab, LabError, Proc, VIP4, in_netns, ip, mac};

pub const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
const ROUTER_AS: u32 = 65000;
const NODES_AS: u32 = 65001;
/// The client's network, behind the router.
const EDGE: &str = "198.18.3.0/24";
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 2);
const EDGE_GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 1);
/// The nodes' full-NAT source addresses: node i owns `.i+1`.
const SNAT_NET: &str = "198.18.150.0/24";

/// The full-NAT source address node `i` owns.
pub fn snat_of(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 150, u8::try_from(i + 1).expect("fewer than 255 nodes"))
}

/// The router and the client behind it, added to a one-arm lab.
pub struct Router {
    pub host: Host,
    pub client: Host,
    bird: Option<Proc>,
    conf: Option<TempConfig>,
}

impl Router {
    /// Adds the router and the edge client to `lab` (its namespaces go
    /// with the lab), and routes the edge network from the backends and
    /// the nodes, and the nodes' SNAT addresses from the backends,
    /// through it.
    pub fn add(lab: &mut Lab) -> Result<Router, LabError> {
        let base = lab.bridge_ns.trim_end_matches("bridge").to_string();
        let iface = |name: &str, m, v4| Iface { name: name.into(), mac: m, v4, v6: "2001:db8:3::1".parse().expect("address") };
        let host = Host {
            name: "router".into(),
            ns: format!("{base}router"),
            ifaces: vec![iface("eth0", mac(30, 0), ROUTER), iface("eth1", mac(30, 1), EDGE_GATEWAY)],
        };
        let client = Host { name: "edge".into(), ns: format!("{base}edge"), ifaces: vec![iface("eth0", mac(31, 0), CLIENT)] };
        for ns in [&host.ns, &client.ns] {
            ip(&["netns", "add", ns])?;
            lab.namespaces.push(ns.clone());
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        let br = lab.bridge_ns.clone();
        lab.veth(End::host(&host, 0), End { ns: &br, dev: "r0", mac: None })?;
        ip(&["-n", &br, "link", "set", "r0", "master", "br0"])?;
        lab.veth(End::host(&host, 1), End::host(&client, 0))?;
        ip(&["-n", &host.ns, "addr", "add", &format!("{ROUTER}/24"), "dev", "eth0"])?;
        ip(&["-n", &host.ns, "addr", "add", &format!("{EDGE_GATEWAY}/24"), "dev", "eth1"])?;
        ip(&["-n", &client.ns, "addr", "add", &format!("{CLIENT}/24"), "dev", "eth0"])?;
        ip(&["-n", &client.ns, "route", "add", "default", "via", &EDGE_GATEWAY.to_string()])?;
        // Replies to a SNAT address leave by the interface they came in
        // on: a redirect would pin the backend to one node past its death.
        let router_sysctls = [
            "net.ipv4.ip_forward=1",
            "net.ipv4.fib_multipath_hash_policy=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
            "net.ipv4.conf.all.send_redirects=0",
            "net.ipv4.conf.eth0.send_redirects=0",
        ];
        for s in router_sysctls {
            lab.exec(&host.ns, &["sysctl", "-q", "-w", s])?;
        }
        for b in &lab.backends {
            ip(&["-n", &b.ns, "route", "add", EDGE, "via", &ROUTER.to_string()])?;
            ip(&["-n", &b.ns, "route", "add", SNAT_NET, "via", &ROUTER.to_string()])?;
            lab.exec(&b.ns, &["sysctl", "-q", "-w", "net.ipv4.conf.all.accept_redirects=0"])?;
        }
        for n in std::iter::once(&lab.balancer).chain(&lab.standbys) {
            ip(&["-n", &n.ns, "route", "add", EDGE, "via", &ROUTER.to_string()])?;
        }
        Ok(Router { host, client, bird: None, conf: None })
    }

    /// Starts BIRD with an eBGP session to each of `nodes` (hold time 3 s,
    /// the least BGP allows) and ECMP over the routes they announce. The
    /// sessions of the nodes `bfd` (indexes) are also watched by BFD (as
    /// `config/examples/ecmp/bird.conf` has it): those nodes must run
    /// [`Node::start_bfd`].
    pub fn start_bird(&mut self, lab: &Lab, nodes: &[Ipv4Addr], bfd: &[usize]) -> Result<(), LabError> {
        let mut c = format!(
            "router id {ROUTER};\nlog stderr all;\nprotocol device {{ scan time 10; }}\n\
             protocol kernel {{ ipv4 {{ import none; export all; }}; merge paths yes limit 16; }}\n\
             template bgp node {{ local {ROUTER} as {ROUTER_AS}; hold time 3; keepalive time 1; connect retry time 1; \
             error wait time 1, 2; ipv4 {{ import all; export none; }}; }}\n"
        );
        if !bfd.is_empty() {
            let _ = writeln!(c, "protocol bfd {{ interface \"eth0\" {{ {BFD_TIMERS} }}; }}");
        }
        for (i, n) in nodes.iter().enumerate() {
            let bfd = if bfd.contains(&i) { " bfd on;" } else { "" };
            let _ = writeln!(c, "protocol bgp node{i} from node {{ neighbor {n} as {NODES_AS};{bfd} }}");
        }
        let conf = TempConfig::new(&c)?;
        let sock = format!("{}.ctl", conf.path_str());
        let bird = lab.spawn(&self.host.ns, &["bird", "-f", "-c", conf.path_str(), "-s", &sock])?;
        self.bird = Some(bird);
        self.conf = Some(conf);
        Ok(())
    }

    /// The next hops of the router's route to `dst`, sorted.
    pub fn next_hops(&self, lab: &Lab, dst: Ipv4Addr) -> Vec<Ipv4Addr> {
        let out = lab.exec(&self.host.ns, &["ip", "-4", "route", "show", &format!("{dst}/32")]).unwrap_or_default();
        let mut hops: Vec<Ipv4Addr> =
            out.split_whitespace().collect::<Vec<_>>().windows(2).filter(|w| w[0] == "via").filter_map(|w| w[1].parse().ok()).collect();
        hops.sort();
        hops
    }

    /// The next hop the router picks for each of the client's TCP
    /// connections to `dst` from `ports` (its 5-tuple hash).
    pub fn picks(&self, lab: &Lab, dst: Ipv4Addr, ports: &[u16]) -> Vec<Option<Ipv4Addr>> {
        let mut batch = String::new();
        for p in ports {
            let _ = writeln!(batch, "route get {dst} from {CLIENT} iif eth1 ipproto tcp sport {p} dport {ECHO_PORT}");
        }
        let Ok(file) = TempConfig::new(&batch) else { return vec![None; ports.len()] };
        let out = lab.exec(&self.host.ns, &["ip", "-4", "-batch", file.path_str()]).unwrap_or_default();
        let mut picks: Vec<Option<Ipv4Addr>> = out
            .lines()
            .filter(|l| l.starts_with(&dst.to_string()))
            .map(|l| l.split_whitespace().skip_while(|w| *w != "via").nth(1).and_then(|a| a.parse().ok()))
            .collect();
        picks.resize(ports.len(), None);
        picks
    }

    /// Routes `dst` over `hops` as one plain multipath route, as BIRD
    /// installs it.
    pub fn set_multipath(&self, lab: &Lab, dst: Ipv4Addr, hops: &[Ipv4Addr]) -> Result<(), LabError> {
        let mut args = vec!["ip".to_string(), "route".into(), "replace".into(), format!("{dst}/32")];
        for h in hops {
            args.extend(["nexthop".into(), "via".into(), h.to_string(), "dev".into(), "eth0".into()]);
        }
        lab.exec(&self.host.ns, &args.iter().map(String::as_str).collect::<Vec<_>>()).map(drop)
    }

    /// Nexthop objects `first ..` for the addresses `all`, in order.
    pub fn add_nexthops(&self, lab: &Lab, first: u32, all: &[Ipv4Addr]) -> Result<(), LabError> {
        for (id, a) in (first..).zip(all) {
            lab.exec(&self.host.ns, &["ip", "nexthop", "add", "id", &id.to_string(), "via", &a.to_string(), "dev", "eth0"])?;
        }
        Ok(())
    }

    /// Routes `dst` through resilient nexthop group `group` (128 buckets,
    /// and `timers`, e.g. ["idle_timer", "0"]) of the nexthop objects
    /// `members`.
    pub fn set_resilient(&self, lab: &Lab, dst: Ipv4Addr, group: u32, timers: &[&str], members: &[u32]) -> Result<(), LabError> {
        let ns = &self.host.ns;
        let members = members.iter().map(ToString::to_string).collect::<Vec<_>>().join("/");
        let group_id = group.to_string();
        let mut args = vec!["ip", "nexthop", "replace", "id", &group_id, "group", &members, "type", "resilient", "buckets", "128"];
        args.extend_from_slice(timers);
        lab.exec(ns, &args)?;
        lab.exec(ns, &["ip", "route", "replace", &format!("{dst}/32"), "nhid", &group.to_string()]).map(drop)
    }

    /// What BIRD printed, for failure messages.
    pub fn bird_output(&self) -> String {
        self.bird.as_ref().map_or_else(String::new, Proc::output)
    }
}

/// What every node of a cluster runs: the VIP's mode, and whether the
/// nodes sync their flows (each to every other).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Service {
    pub mode: LabMode,
    pub sync: bool,
}

impl Service {
    pub const DSR: Service = Service { mode: LabMode::Dsr, sync: false };

    /// "dsr", "ipip with sync".
    pub fn label(self) -> String {
        format!("{}{}", self.mode.name(), if self.sync { " with sync" } else { "" })
    }
}

/// One scale-out node: fulcrum with `[bgp]`, ExaBGP running `fulcrum bgp
/// exabgp` as its API process, and, for BFD, BIRD.
pub struct Node {
    pub host: Host,
    pub socket: PathBuf,
    pub fulcrum: Option<Proc>,
    pub exabgp: Option<Proc>,
    bird: Option<(Proc, TempConfig)>,
    service: Service,
    /// Every node's address: the sync peers.
    cluster: Vec<Ipv4Addr>,
    config: TempConfig,
    exabgp_conf: TempConfig,
}

const SYNC_PORT: u16 = 7788;
/// BFD every 100 ms, down after 3 missed: a lost node is seen in 0.3 s.
const BFD_TIMERS: &str = "min rx interval 100 ms; min tx interval 100 ms; multiplier 3;";

/// The node's fulcrum: the VIP's TCP echo port in `service`'s mode over
/// the lab's backends (of `weights`, in order), announced through ExaBGP,
/// drained within 10 s; with sync, every node forwards (role master) and
/// sends its flows to all the others. In full-NAT the VIP lists every
/// node's SNAT address and the node owns its own.
fn fulcrum_config(lab: &Lab, node: &Node, weights: &[u32]) -> String {
    let (host, service) = (&node.host, node.service);
    let socket = node.socket.display();
    let mut c = format!("[daemon]\ncontrol_socket = \"{socket}\"\nxdp_mode = \"auto\"\nworkers = {}\nshutdown_grace = \"10s\"\n\n", lab.queues);
    let _ = writeln!(c, "[[interface]]\nname = \"{}\"\nrole = \"one-arm\"\n", host.iface().name);
    let _ = writeln!(c, "[bgp]\nspeaker = \"exabgp\"");
    let me = node.cluster.iter().position(|&a| a == host.iface().v4).expect("a node of its cluster");
    let full_nat = service.mode == LabMode::FullNat;
    if full_nat {
        let _ = writeln!(c, "snat_own = \"{}\"", snat_of(me));
    }
    c.push('\n');
    if service.sync {
        let me = host.iface().v4;
        let peers: Vec<String> = node.cluster.iter().filter(|&&a| a != me).map(|a| format!("\"{a}:{SYNC_PORT}\"")).collect();
        let _ =
            writeln!(c, "[sync]\nlisten = \"{me}:{SYNC_PORT}\"\nkey = \"lab-cluster-secret-0123456789\"\nrole = \"master\"\npeers = [{}]\n", peers.join(", "));
    }
    let _ = writeln!(c, "[[vip]]\naddress = \"{VIP4}\"\nprotocol = \"tcp\"\nport = {ECHO_PORT}\nmode = \"{}\"", service.mode.name());
    if matches!(service.mode, LabMode::Ipip | LabMode::Gue) {
        let _ = writeln!(c, "tunnel_source = \"{TUNNEL_SOURCE}\"");
    }
    if full_nat {
        let all: Vec<String> = (0..node.cluster.len()).map(|i| format!("\"{}\"", snat_of(i))).collect();
        let _ = writeln!(c, "snat = [{}]", all.join(", "));
    }
    for (b, w) in lab.backends.iter().zip(weights) {
        let _ = writeln!(c, "\n[[vip.backend]]\naddress = \"{}\"\nweight = {w}", b.iface().v4);
    }
    c
}

/// Outer sources of tunnelled packets, the same on every node.
const TUNNEL_SOURCE: &str = "198.18.200.0/24";

/// ExaBGP as `config/examples/ecmp/exabgp.conf` has it, with the lab's
/// names.
fn exabgp_config(host: &Host, fulcrum_conf: &str) -> String {
    let bin = fulcrum_bin();
    let addr = host.iface().v4;
    format!(
        "process fulcrum {{\n    run {bin} bgp exabgp --config {fulcrum_conf};\n    encoder text;\n}}\n\n\
         neighbor {ROUTER} {{\n    router-id {addr};\n    local-address {addr};\n    local-as {NODES_AS};\n    peer-as {ROUTER_AS};\n    \
         hold-time 3;\n    api {{\n        processes [ fulcrum ];\n    }}\n}}\n",
        bin = bin.display()
    )
}

/// BIRD on a node for BFD alone, as `config/examples/ecmp/bird-node.conf`
/// has it: ExaBGP has no BFD.
fn bfd_config(host: &Host) -> String {
    let addr = host.iface().v4;
    format!(
        "router id {addr};\nlog stderr all;\nprotocol device {{ scan time 10; }}\n\
         protocol bfd {{ interface \"{}\" {{ {BFD_TIMERS} }}; neighbor {ROUTER} local {addr}; }}\n",
        host.iface().name
    )
}

impl Node {
    /// Starts ExaBGP on `host`, and fulcrum with every backend at weight
    /// 1 unless `start` is false (a node to add later). `cluster`: every
    /// node's address.
    pub fn start(lab: &Lab, host: &Host, service: Service, cluster: &[Ipv4Addr], start: bool) -> Result<Node, LabError> {
        let config = TempConfig::new("")?;
        let exabgp_conf = TempConfig::new(&exabgp_config(host, config.path_str()))?;
        let mut node = Node {
            host: host.clone(),
            socket: daemon::control_socket().into(),
            fulcrum: None,
            exabgp: None,
            bird: None,
            service,
            cluster: cluster.to_vec(),
            config,
            exabgp_conf,
        };
        node.config.write(&fulcrum_config(lab, &node, &vec![1; lab.backends.len()]));
        if start {
            node.start_fulcrum(lab)?;
        }
        node.start_exabgp(lab)?;
        Ok(node)
    }

    /// Gives the backends `weights` (in order; all 0 drains them all) by a
    /// reload.
    pub fn reweight(&self, lab: &Lab, weights: &[u32]) -> Result<(), LabError> {
        self.config.write(&fulcrum_config(lab, self, weights));
        let (code, out, err) = daemon::cli(&["reload", "--socket", &self.socket.to_string_lossy()]);
        if code == Some(0) { Ok(()) } else { Err(LabError(format!("reload on {}: {out}{err}", self.host.name))) }
    }

    pub fn start_fulcrum(&mut self, lab: &Lab) -> Result<(), LabError> {
        self.fulcrum = Some(daemon::run_in(lab, &self.host.ns, &self.config)?);
        Ok(())
    }

    fn start_exabgp(&mut self, lab: &Lab) -> Result<(), LabError> {
        let env = ["exabgp.daemon.user=root", "exabgp.log.destination=stdout", "exabgp.daemon.daemonize=false", "exabgp.api.ack=false"];
        let mut args = vec!["env"];
        args.extend_from_slice(&env);
        args.extend_from_slice(&["exabgp", self.exabgp_conf.path_str()]);
        self.exabgp = Some(lab.spawn(&self.host.ns, &args)?);
        Ok(())
    }

    /// Starts BIRD's BFD towards the router, for a session the router
    /// watches with BFD.
    pub fn start_bfd(&mut self, lab: &Lab) -> Result<(), LabError> {
        let conf = TempConfig::new(&bfd_config(&self.host))?;
        let sock = format!("{}.ctl", conf.path_str());
        let bird = lab.spawn(&self.host.ns, &["bird", "-f", "-c", conf.path_str(), "-s", &sock])?;
        self.bird = Some((bird, conf));
        Ok(())
    }

    /// Signals fulcrum, ExaBGP and BIRD: SIGSTOP freezes the whole node.
    pub fn signal_all(&self, signal: i32) {
        let bird = self.bird.as_ref().map(|(p, _)| p);
        for p in [self.fulcrum.as_ref(), self.exabgp.as_ref(), bird].into_iter().flatten() {
            p.signal(signal);
        }
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.host.iface().v4
    }

    /// Packets of the VIP this node forwarded so far (None: not running).
    pub fn vip_packets(&self) -> Option<u64> {
        match fulcrum::control::client::request(&self.socket, &Request::Stats) {
            Ok(Response::Stats(s)) => Some(s.vips.iter().map(|v| v.traffic.packets).sum()),
            _ => None,
        }
    }

    /// The Maglev table digest of each VIP, as `fulcrum status --json`
    /// gives it (None: not running).
    pub fn digests(&self) -> Option<Vec<String>> {
        match fulcrum::control::client::request(&self.socket, &Request::Status) {
            Ok(Response::Status(s)) => Some(s.vips.into_iter().map(|v| v.maglev_digest).collect()),
            _ => None,
        }
    }

    /// Flow entries this node sent its sync peers (None: not running or
    /// no sync).
    pub fn sync_sent(&self) -> Option<u64> {
        match fulcrum::control::client::request(&self.socket, &Request::Status) {
            Ok(Response::Status(s)) => s.ha.map(|h| h.entries_sent),
            _ => None,
        }
    }

    /// Everything fulcrum, ExaBGP and BIRD printed, for failure messages.
    pub fn output(&self) -> String {
        let bird = self.bird.as_ref().map(|(p, _)| p);
        [self.fulcrum.as_ref(), self.exabgp.as_ref(), bird].iter().filter_map(|p| p.map(Proc::output)).collect::<Vec<_>>().join("\n")
    }
}

/// New connections in a loop from the client, each sending 8 bytes and
/// reading their echo, on a thread of their own until `stop`.
pub struct Churn {
    ok: Arc<AtomicU64>,
    failed: Arc<Mutex<Vec<Failed>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A new connection that failed: when it began, and how it failed.
#[derive(Debug)]
pub struct Failed {
    pub began: Instant,
    pub error: std::io::Error,
}

/// What the loop of new connections saw.
#[derive(Debug, Default)]
pub struct ChurnOutcome {
    pub ok: u64,
    pub failed: Vec<Failed>,
}

impl Churn {
    pub fn start(ns: &str) -> Churn {
        let (ok, failed, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let (o, f, s, ns) = (Arc::clone(&ok), Arc::clone(&failed), Arc::clone(&stop), ns.to_string());
        let thread = std::thread::spawn(move || {
            let addr = SocketAddr::from((VIP4, ECHO_PORT));
            let one = || -> std::io::Result<()> {
                // Long enough for a SYN's retransmission (after 1 s): a
                // connection is failed, not slowed, by a lost first SYN.
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
                s.set_read_timeout(Some(Duration::from_secs(3)))?;
                s.write_all(b"churning")?;
                let mut buf = [0u8; 8];
                s.read_exact(&mut buf)
            };
            let _ = in_netns(&ns, || {
                while !s.load(Ordering::Relaxed) {
                    let began = Instant::now();
                    match one() {
                        Ok(()) => _ = o.fetch_add(1, Ordering::Relaxed),
                        Err(error) => f.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(Failed { began, error }),
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        });
        Churn { ok, failed, stop, thread: Some(thread) }
    }

    /// Stops the loop: the connections that worked and those that failed.
    pub fn stop(mut self) -> ChurnOutcome {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let failed = std::mem::take(&mut *self.failed.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        ChurnOutcome { ok: self.ok.load(Ordering::Relaxed), failed }
    }
}
