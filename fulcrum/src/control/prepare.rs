//! Preparing a configuration or a plugin load. Everything that can fail or
//! take long happens here: reading and validating the file, reading,
//! compiling and smoke-testing scheduler plugins, resolving the backends'
//! neighbours, loading health-policy plugins and starting the checks.
//! It runs against a copy of the running state (`Base`), on a thread of
//! its own for a reload, so the control thread goes on applying health
//! transitions and answering requests meanwhile. Nothing the workers, the
//! steering programs or `status` see changes until the control thread
//! commits the result (`Daemon::finish_reload`); a preparation that fails
//! is dropped (a health monitor it started stops), so a refused reload
//! changes nothing anywhere.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fulcrum_config::{self as cfg, Overlay};
use fulcrum_dataplane::sched::Latencies;
use fulcrum_dataplane::services::Services;
use fulcrum_dataplane::types::VipId;
use fulcrum_io::netinfo;
use fulcrum_io::sock::route_source;
use fulcrum_io::xdp::ReturnTraffic;

use super::Loaded;
use super::apply::{self, Ids, Net};
use super::checks::{HealthControl, HealthView, Next};
use super::plugins::{self, Fingerprint, Module, Runtime, SchedulerChange};
use super::reload::{self, Changes};
use crate::error::{Context, Error};
use fulcrum_plugin_host::Plugin;

/// What a preparation starts from: a copy of the running state.
pub struct Base {
    /// The configuration file.
    pub path: PathBuf,
    /// The configuration in force; `None` at start.
    pub config: Option<cfg::Config>,
    /// The file's text in force, and the runtime changes laid over it.
    pub text: String,
    pub overlay: Overlay,
    pub net: Arc<Net>,
    pub ids: Ids,
    /// The engine's VIP and backend slots.
    pub max_vips: usize,
    pub max_backends: usize,
    /// The services in force; `None` at start.
    pub services: Option<Arc<Services>>,
    pub health: Option<HealthView>,
    pub runtime: Runtime,
    /// Where health checks put the backends' response times.
    pub latencies: Arc<Latencies>,
    /// The files the configured scheduler plugins were loaded from.
    pub configured: HashMap<VipId, Fingerprint>,
}

/// A configuration ready to commit: nothing left in it can fail but the
/// steering maps' update, which undoes itself.
pub struct Prepared {
    pub config: cfg::Config,
    pub text: String,
    pub overlay: Overlay,
    pub changes: Changes,
    /// `Base::ids` with the new VIPs' and backends' ids.
    pub ids: Ids,
    /// With the checked backends' states as of `Base::health`.
    pub services: Services,
    pub returns: Vec<ReturnTraffic>,
    pub health: Next,
    pub schedulers: Vec<SchedulerChange>,
}

pub enum Reload {
    /// The file is valid and describes what runs.
    NoChange,
    Apply(Box<Prepared>),
}

/// A scheduler plugin ready to publish for a VIP.
pub struct PreparedPlugin {
    pub vip: String,
    pub id: VipId,
    pub plugin: Plugin,
    /// With `--persist`: the configuration with the plugin recorded in the
    /// overlay, and the file it came from.
    pub persisted: Option<Box<(Loaded, Fingerprint)>>,
}

/// Re-reads the configuration file and prepares what changed, with the
/// runtime changes in force laid over it.
pub fn reload(base: &Base) -> Result<Reload, Error> {
    let text = cfg::read(&base.path)?;
    changed(base, super::with_overlay(&base.path, text, base.overlay.clone())?)
}

/// Prepares a runtime change to the backends: `overlay` laid over the
/// file's text in force. Returns the overlay too: it is to be kept even
/// when the services stay the same (a drain of a backend at weight 0).
pub fn backends(base: &Base, change: impl FnOnce(&cfg::Config, Option<&cfg::Config>) -> Result<Overlay, Error>) -> Result<(Overlay, Reload), Error> {
    let Some(old) = &base.config else { return Err(Error::Refused("no configuration runs yet".into())) };
    let file = cfg::parse(&base.text, &base.path.display().to_string()).ok();
    let overlay = change(old, file.as_ref())?;
    let loaded = super::with_overlay(&base.path, base.text.clone(), overlay.clone())?;
    Ok((overlay, changed(base, loaded)?))
}

/// What `loaded` changes from the configuration in force, prepared.
fn changed(base: &Base, loaded: Loaded) -> Result<Reload, Error> {
    let Some(old) = &base.config else { return Err(Error::Refused("no configuration runs yet".into())) };
    let Loaded { config: new, text, overlay } = loaded;
    let restart = reload::needs_restart(old, &new);
    if !restart.is_empty() {
        return Err(Error::Refused(format!(
            "{}: these changes need a restart (`systemctl restart fulcrum`):\n  {}",
            base.path.display(),
            restart.join("\n  ")
        )));
    }
    let modules = read_modules(&new)?;
    let mut changes = reload::changes(old, &new);
    // A plugin rebuilt in place is a change too: otherwise the operator who
    // fixed a plugin file would be told "no change" and keep the old one.
    for (v, m) in new.vips.iter().zip(&modules) {
        let Some(m) = m else { continue };
        let same_setting = old.vips.iter().any(|o| (o.address, o.protocol, o.port) == (v.address, v.protocol, v.port) && o.scheduler == v.scheduler);
        let loaded = base.ids.vip(v).and_then(|id| base.configured.get(&id));
        if same_setting && loaded != Some(&m.from) {
            changes.vips_changed.push(format!("{} scheduler {}: the file changed", v.name(), m.from.path.display()));
        }
    }
    if changes.is_empty() {
        return Ok(Reload::NoChange);
    }
    configuration(base, Loaded { config: new, text, overlay }, modules, changes).map(|p| Reload::Apply(Box::new(p)))
}

/// Backends reply to every full-NAT source address: one the host does not
/// have (the kernel answers no ARP / NDP for it) loses every flow that
/// gets it. Says so for each; a local route (`ip route add local`) counts
/// as the host's, as the kernel sees it. On a full-NAT fleet
/// (`bgp.snat_own`) the routers carry them to the nodes, as BGP routes.
fn warn_foreign_snat(config: &cfg::Config) {
    if config.bgp.as_ref().is_some_and(|b| !b.snat_own.is_empty()) {
        return;
    }
    let mut addrs: Vec<IpAddr> =
        config.vips.iter().flat_map(|v| if let cfg::Mode::FullNat { snat } = &v.mode { snat.as_slice() } else { &[] }).copied().collect();
    addrs.sort_unstable();
    addrs.dedup();
    for a in addrs {
        // Towards one of its own addresses, the kernel sends from it.
        if !matches!(route_source(a), Ok(src) if src == a) {
            tracing::warn!("snat {a} is not an address of this host: backends' replies to it will not reach the balancer; add it to an interface");
        }
    }
}

/// The scheduler modules `config` names, per VIP in order (`None`:
/// Maglev): read now, so that what is compiled is what was checked.
pub fn read_modules(config: &cfg::Config) -> Result<Vec<Option<Module>>, Error> {
    config
        .vips
        .iter()
        .map(|v| match &v.scheduler {
            cfg::Scheduler::Maglev => Ok(None),
            cfg::Scheduler::Plugin(path) => Module::read(path).map(Some).context(|| format!("vip {}: scheduler", v.name())),
        })
        .collect()
}

/// Builds everything `new` needs, in the order of the cheapest check
/// first: services (neighbours resolved), the engine's limits, scheduler
/// plugins, health checks.
pub fn configuration(base: &Base, loaded: Loaded, modules: Vec<Option<Module>>, changes: Changes) -> Result<Prepared, Error> {
    let Loaded { config: new, text, overlay } = loaded;
    let mut ids = base.ids.clone();
    let (services, returns) = apply::build(&new, &base.net, &mut ids, &mut netinfo::next_hop_mac)?;
    warn_foreign_snat(&new);
    if services.vip_slots() > base.max_vips || services.backend_slots() > base.max_backends {
        return Err(Error::Refused(format!(
            "{} VIPs and {} backends defined since start exceed the engine's {} and {}: restart the daemon",
            services.vip_slots(),
            services.backend_slots(),
            base.max_vips,
            base.max_backends
        )));
    }
    let schedulers = schedulers(base, &new, modules, &services)?;
    let (services, health) = HealthControl::configure(base.health.as_ref(), &new, &ids, services, &base.runtime, &base.latencies, &base.net)?;
    Ok(Prepared { config: new, text, overlay, changes, ids, services, returns, health, schedulers })
}

/// What changes for each VIP's scheduler: plugins loaded from a file (or
/// contents) other than the running one's, compiled and smoke-tested over
/// the new pool; VIPs whose configured plugin is gone, and removed VIPs,
/// back to Maglev. A VIP whose setting and file are unchanged keeps its
/// plugin, including one swapped in by `fulcrum plugin load`.
fn schedulers(base: &Base, new: &cfg::Config, modules: Vec<Option<Module>>, services: &Services) -> Result<Vec<SchedulerChange>, Error> {
    let mut out = Vec::new();
    for (v, module) in new.vips.iter().zip(modules) {
        let id = plugins::vip_id(services, v)?;
        match module {
            Some(m) if base.configured.get(&id) == Some(&m.from) => {}
            Some(m) => {
                let plugin = m.load(&base.runtime, &plugins::pool(services, id)).context(|| format!("vip {}: scheduler", v.name()))?;
                out.push(SchedulerChange::Plugin { vip: id, plugin, from: m.from });
            }
            None if base.configured.contains_key(&id) => out.push(SchedulerChange::Maglev(id)),
            None => {}
        }
    }
    let key = |v: &cfg::Vip| (v.address, v.protocol, v.port);
    let removed = base.config.iter().flat_map(|c| &c.vips).filter(|o| !new.vips.iter().any(|v| key(v) == key(o)));
    out.extend(removed.filter_map(|o| base.ids.vip(o)).map(SchedulerChange::Maglev));
    Ok(out)
}

/// `fulcrum plugin load`: reads, compiles and smoke-tests the plugin at
/// `path` for the VIP named `vip` over its pool in force; with `persist`,
/// also checks the configuration with it recorded as the VIP's scheduler.
pub fn plugin(base: &Base, vip: &str, path: &Path, persist: bool) -> Result<PreparedPlugin, Error> {
    let no_vip = || Error::Refused(format!("no vip {vip} (VIPs are named like 198.18.0.100:80/tcp)"));
    let (Some(config), Some(services)) = (&base.config, &base.services) else { return Err(no_vip()) };
    let v = config.vips.iter().find(|v| v.name() == vip).ok_or_else(no_vip)?;
    let id = plugins::vip_id(services, v)?;
    let module = Module::read(path)?;
    let persisted = match persist {
        true => {
            if path.to_str().is_none() {
                return Err(Error::Refused(format!("{}: a persisted plugin's path must be UTF-8 (it is written in the state file)", path.display())));
            }
            let mut overlay = base.overlay.clone();
            overlay.set_scheduler(&v.name(), Some(path));
            Some(Box::new((super::with_overlay(&base.path, base.text.clone(), overlay)?, module.from.clone())))
        }
        false => None,
    };
    let plugin = module.load(&base.runtime, &plugins::pool(services, id))?;
    Ok(PreparedPlugin { vip: vip.to_string(), id, plugin, persisted })
}

/// `fulcrum plugin forget`: the overlay without `vip`'s persisted plugin,
/// checked against the configuration in force.
pub fn forget(running: &cfg::Config, overlay: &Overlay, vip: &str) -> Result<Overlay, Error> {
    let name = super::backends::find_vip(running, vip)?.name();
    if overlay.scheduler(&name).is_none() {
        return Err(Error::Refused(format!("vip {name} has no persisted plugin")));
    }
    let mut next = overlay.clone();
    next.set_scheduler(&name, None);
    Ok(next)
}
