//! The control plane's side of health checking: the monitor running the
//! configured checks, the state of every checked backend, and its
//! transitions turned into services snapshots and one log line each.
//!
//! A reload keeps the running monitor when no check changed, and otherwise
//! starts one for the new checks before the old one stops; either way a
//! backend keeps the state it had (down stays down until `rise` passes).
//! A restarted monitor's counters start from zero.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::sync::Arc;

use fulcrum_config as cfg;
use fulcrum_dataplane::flow::key::ip_from16;
use fulcrum_dataplane::health_policy::{HealthState, Policy, RiseFall};
use fulcrum_dataplane::sched::{BackendState, Latencies};
use fulcrum_dataplane::services::{Backend, Mode, Services, backend_name, vip_name};
use fulcrum_dataplane::types::{BackendId, VipId};
use fulcrum_health::{DataPath, HealthMonitor, HealthStats, Member, NextHop, Pool, Transition, Tunnel, route_source};
use fulcrum_plugin_host::{HealthPolicy, PluginSlot};

use super::apply::{self, CheckedVip, Ids, Net};
use super::plugins::{Module, Runtime};
use crate::error::{Context, Error};

pub struct HealthControl {
    monitor: HealthMonitor,
    view: HealthView,
    /// The next hops of the checks through the VIP, by backend.
    next_hops: Vec<(BackendId, Arc<NextHop>)>,
}

/// What the running checks are and where they stand: what a reload is
/// prepared against, on another thread.
#[derive(Clone, Debug, Default)]
pub struct HealthView {
    /// What the monitor checks.
    checks: Vec<CheckedVip>,
    /// Every checked backend's state, as last applied.
    states: HashMap<BackendId, HealthState>,
}

/// What a (re)configuration does to the running checks, once committed.
pub enum Next {
    /// No VIP has checks.
    Off,
    /// The same checks: the monitor runs on, and the states it reached
    /// meanwhile are applied at commit (`HealthControl::reapply`).
    Keep,
    Start(HealthControl),
}

/// Transitions, and the snapshot with them applied.
pub struct HealthUpdate {
    pub services: Services,
    pub changes: Vec<Transition>,
}

impl HealthControl {
    /// The checks of `config` (`services` and `ids` as `apply::build` made
    /// them), given the running ones: `services` with the checked
    /// backends' states applied, and what to `commit` once those services
    /// are in force. A monitor is started only if the checks changed
    /// (after its health-policy plugins loaded); an error leaves
    /// everything as it was.
    /// `latencies`: where the new checks' response times go (the
    /// workers' scheduler rows).
    pub fn configure(
        current: Option<&HealthView>,
        config: &cfg::Config,
        ids: &Ids,
        services: Services,
        runtime: &Runtime,
        latencies: &Arc<Latencies>,
        net: &Net,
    ) -> Result<(Services, Next), Error> {
        let checks = apply::health_checks(config, ids);
        let keep = current.filter(|h| h.checks == checks);
        // Unchanged checks keep their states as applied (a policy plugin
        // may have changed a weight); new ones start from the configured
        // weight, and up unless the backend was down.
        let state = |id, weight| match (keep, current.and_then(|h| h.states.get(&id))) {
            (Some(_), Some(s)) => *s,
            (_, was) => HealthState { up: was.is_none_or(|s| s.up), weight },
        };
        let states: HashMap<BackendId, HealthState> = checks.iter().flat_map(|c| &c.members).map(|&(id, weight, _)| (id, state(id, weight))).collect();
        let services = with_states(services, &states)?;
        let next = match keep {
            _ if states.is_empty() => Next::Off,
            Some(_) => Next::Keep,
            None => {
                let pools = pools(&checks, &states, &services, net, runtime)?;
                warn_snat_sources(config, &pools);
                tracing::info!("health: checking {} backends of {} VIPs", states.len(), pools.len());
                let next_hops = pools.iter().flat_map(|p| &p.members).filter_map(|m| Some((m.backend, Arc::clone(&m.via.as_ref()?.next_hop)))).collect();
                let monitor = HealthMonitor::start(pools, Arc::clone(latencies))?;
                Next::Start(HealthControl { monitor, view: HealthView { checks, states }, next_hops })
            }
        };
        Ok((services, next))
    }

    /// Makes `next` the running checks (the old monitor stops here).
    pub fn commit(current: &mut Option<HealthControl>, next: Next) {
        match next {
            Next::Off => *current = None,
            Next::Keep => {}
            Next::Start(h) => *current = Some(h),
        }
    }

    /// Checks through the VIP follow the backends' next hops in
    /// `services` (the snapshot the workers are given).
    pub fn follow(&self, services: &Services) {
        for (id, hop) in &self.next_hops {
            if let Some(b) = services.backend(*id) {
                hop.set(b.spec.next_hop);
            }
        }
    }

    pub fn view(&self) -> &HealthView {
        &self.view
    }

    /// `services` (prepared on another thread from an older view) with the
    /// states the running checks have reached since.
    pub fn reapply(&self, services: Services) -> Result<Services, Error> {
        with_states(services, &self.view.states)
    }

    /// Readable when transitions wait.
    pub fn wake_fd(&self) -> RawFd {
        self.monitor.wake_fd()
    }

    pub fn stats(&self) -> Arc<HealthStats> {
        Arc::clone(self.monitor.stats())
    }

    /// The transitions waiting, applied to `services`; `None` if none.
    pub fn take(&mut self, services: &Services) -> Option<Result<HealthUpdate, Error>> {
        let changes = self.monitor.take_transitions();
        if changes.is_empty() {
            return None;
        }
        let backends: Vec<_> = changes
            .iter()
            .filter_map(|t| {
                self.view.states.insert(t.backend, t.state);
                let b = services.backend(t.backend)?.spec;
                Some((t.backend, Backend { up: t.state.up, weight: u32::from(t.state.weight), ..b }))
            })
            .collect();
        let update = services.with_backends(&backends).context(|| format!("health: cannot apply {} transitions", changes.len()));
        Some(update.map(|services| HealthUpdate { services, changes }))
    }
}

/// `services` with the checked backends in `states`.
fn with_states(services: Services, states: &HashMap<BackendId, HealthState>) -> Result<Services, Error> {
    let changed: Vec<(BackendId, Backend)> =
        states.iter().filter_map(|(&id, s)| Some((id, Backend { up: s.up, weight: u32::from(s.weight), ..services.backend(id)?.spec }))).collect();
    Ok(services.with_backends(&changed)?)
}

/// The monitor's pools: each VIP's members as scheduler rows see them, in
/// the state they start in, and its policy: the native one, or its
/// health-policy plugin (read, loaded and smoke-tested here, in the
/// runtime of the daemon's plugins).
fn pools(checks: &[CheckedVip], states: &HashMap<BackendId, HealthState>, services: &Services, net: &Net, runtime: &Runtime) -> Result<Vec<Pool>, Error> {
    checks
        .iter()
        .map(|c| {
            let members: Vec<Member> = c
                .members
                .iter()
                .filter_map(|(id, weight, check)| {
                    let via = if check.through_vip { Some(data_path(services, net, c.vip, *id)?) } else { None };
                    Some(Member { backend: *id, ident: services.backend(*id)?.ident, weight: *weight, up: states[id].up, check: check.clone(), via })
                })
                .collect();
            let policy: Box<dyn Policy> = match &c.plugin {
                None => Box::new(RiseFall),
                Some(path) => {
                    let rows: Vec<BackendState> =
                        members.iter().map(|m| BackendState { id: m.ident, weight: u32::from(m.weight), up: m.up, ..BackendState::default() }).collect();
                    let plugin = Module::read(path).and_then(|m| m.load(runtime, &rows)).context(|| format!("vip {}: health policy", c.name))?;
                    let slot = PluginSlot::new(format!("vip {} health policy", c.name));
                    slot.publish(plugin);
                    Box::new(HealthPolicy::new(&slot))
                }
            };
            Ok(Pool { vip: c.vip, policy, members })
        })
        .collect()
}

/// How `vip`'s packets reach `backend`, as the workers send them: what a
/// check through the VIP sends. `None` for a nat VIP (refused by the
/// configuration's checks).
fn data_path(services: &Services, net: &Net, vip: VipId, backend: BackendId) -> Option<DataPath> {
    let (v, b) = (services.vip(vip)?, services.backend(backend)?);
    let iface = net.ifaces.get(usize::from(b.spec.iface))?;
    let tunnel = match v.spec.mode {
        Mode::Dsr => None,
        Mode::Tunnel { encap, source, source_prefix } => Some(Tunnel { encap, source, source_prefix }),
        Mode::Nat { .. } => return None,
    };
    let next_hop = Arc::new(NextHop::new(b.spec.next_hop));
    Some(DataPath { vip: v.spec.addr, iface: iface.name.clone(), iface_mac: iface.mac, next_hop, backend: b.spec.addr, tunnel })
}

/// Replies to a full-NAT source address go to the data path: checks sent
/// from one would never see theirs. Says so for every check address the
/// kernel would send from one.
fn warn_snat_sources(config: &cfg::Config, pools: &[Pool]) {
    let snat: Vec<IpAddr> = config.vips.iter().flat_map(|v| if let cfg::Mode::FullNat { snat } = &v.mode { snat.as_slice() } else { &[] }).copied().collect();
    let mut targets: Vec<IpAddr> = pools.iter().flat_map(|p| p.members.iter().map(|m| m.check.address)).collect();
    targets.sort_unstable();
    targets.dedup();
    for to in targets {
        if let Ok(src) = route_source(to)
            && snat.contains(&src)
        {
            tracing::error!(
                "health: checks of {to} would leave from {src}, a full-NAT source address, and their answers go to the data path: make the kernel prefer another source (e.g. IPv6: add {src} with preferred_lft 0)"
            );
        }
    }
}

/// One line per transition; names from `s`.
pub fn log(changes: &[Transition], s: &Services) {
    for t in changes {
        let vip = s.vip(t.vip).map_or_else(|| format!("#{}", t.vip), |v| vip_name(ip_from16(&v.addr), v.spec.proto, v.spec.port));
        let backend = s.backend(t.backend).map_or_else(|| format!("#{}", t.backend), |b| backend_name(b.spec.addr, b.spec.port));
        match (t.was.up, t.state.up, t.failure) {
            (true, false, Some(f)) => tracing::warn!("health: vip {vip} backend {backend} is down after {} failed checks ({f})", t.streak),
            (true, false, None) => tracing::warn!("health: vip {vip} backend {backend} is down"),
            (false, true, _) => tracing::info!("health: vip {vip} backend {backend} is up after {} passed checks, weight {}", t.streak, t.state.weight),
            _ => tracing::info!("health: vip {vip} backend {backend} weight {} -> {}", t.was.weight, t.state.weight),
        }
    }
}
