//! The daemon's plugins: reading a module (bounded, from a regular file
//! only), compiling and smoke-testing it off the control thread, and the
//! scheduler slots: one per VIP that has a plugin (from the configuration
//! or `fulcrum plugin load`), one scheduler instance per worker following
//! it. Publishing swaps a plugin in for new flows on every worker.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use fulcrum_config as cfg;
use fulcrum_dataplane::sched::BackendState;
use fulcrum_dataplane::services::Services;
use fulcrum_dataplane::types::VipId;
use fulcrum_plugin_host::{CompileLimits, FaultKind, HostConfig, Plugin, PluginRuntime, PluginSlot, PluginStats};

use super::api::{PluginFault, PluginReport};
use crate::error::{Context, Error};
use crate::workers::Dataplane;

/// The largest module read (64 MiB): real plugins are kilobytes to a few
/// megabytes; this only stops a wrong path (a disk image, `/dev/zero` is
/// refused anyway) from filling memory.
pub const MAX_MODULE_BYTES: u64 = 64 << 20;

/// A module as read from its file.
pub struct Module {
    /// The file's stem: "round-robin" for round-robin.wasm.
    pub name: String,
    pub bytes: Vec<u8>,
    pub from: Fingerprint,
}

/// Which file, with which contents, a VIP's plugin was loaded from: a
/// reload that names the same file with new contents loads it again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    pub path: PathBuf,
    pub hash: u64,
}

impl Module {
    /// Reads the module at `path`: a regular file (checked on the opened
    /// descriptor, opened without blocking, so a FIFO cannot hang the
    /// daemon) of at most `MAX_MODULE_BYTES`.
    pub fn read(path: &Path) -> Result<Module, Error> {
        let bytes = fulcrum_config::read_regular(path, MAX_MODULE_BYTES).map_err(|source| Error::File { path: path.display().to_string(), source })?;
        let name = path.file_stem().map_or_else(|| path.display().to_string(), |s| s.to_string_lossy().into_owned());
        Ok(Module { name, from: Fingerprint { path: path.to_path_buf(), hash: fulcrum_plugin_host::module_hash(&bytes) }, bytes })
    }

    /// Compiles, checks and smoke-tests the module against `pool`: what
    /// happens before anything is published. Milliseconds to seconds: never
    /// on the control thread.
    pub fn load(&self, runtime: &Runtime, pool: &[BackendState]) -> Result<Plugin, Error> {
        runtime.get()?.load(&self.name, &self.bytes, pool).context(|| self.from.path.display().to_string())
    }
}

/// The runtime every plugin of the daemon runs in (health-policy plugins
/// too), made on first use, so wasmtime reserves its address space only
/// in daemons that use plugins. Shared with the threads that prepare.
#[derive(Clone)]
pub struct Runtime {
    runtime: Arc<Mutex<Option<Arc<PluginRuntime>>>>,
    compile: CompileLimits,
}

impl Runtime {
    pub fn get(&self) -> Result<Arc<PluginRuntime>, Error> {
        let mut r = self.runtime.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(r) = &*r {
            return Ok(Arc::clone(r));
        }
        Ok(Arc::clone(r.insert(PluginRuntime::new(HostConfig { compile: self.compile, ..HostConfig::default() })?)))
    }
}

/// The plugin host's compile limits from the configuration's `[plugins]`.
fn compile_limits(c: &cfg::Plugins) -> CompileLimits {
    CompileLimits { max_module_bytes: c.max_module_bytes as usize, max_functions: c.max_functions, timeout: c.compile_timeout }
}

/// What a prepared configuration does to one VIP's scheduler.
pub enum SchedulerChange {
    /// Publish this plugin, loaded from the configuration's file.
    Plugin { vip: VipId, plugin: Plugin, from: Fingerprint },
    /// Back to native Maglev (the configuration dropped the plugin, or the
    /// VIP).
    Maglev(VipId),
}

/// The VIPs' scheduler slots, shared with the telemetry that reports them.
pub type Slots = Arc<Mutex<HashMap<VipId, Arc<PluginSlot>>>>;

pub struct Plugins {
    runtime: Runtime,
    slots: Slots,
    /// The file each VIP's configured plugin came from.
    configured: HashMap<VipId, Fingerprint>,
}

impl Plugins {
    /// No plugin yet; the runtime compiles with `limits` once made.
    pub fn new(limits: &cfg::Plugins) -> Plugins {
        let runtime = Runtime { runtime: Arc::default(), compile: compile_limits(limits) };
        Plugins { runtime, slots: Slots::default(), configured: HashMap::new() }
    }

    pub fn runtime(&self) -> Runtime {
        self.runtime.clone()
    }

    pub fn slots(&self) -> Slots {
        Arc::clone(&self.slots)
    }

    pub fn configured(&self) -> HashMap<VipId, Fingerprint> {
        self.configured.clone()
    }

    /// Applies what a prepared configuration changes; cannot fail.
    pub fn commit(&mut self, changes: Vec<SchedulerChange>, dataplane: &Dataplane) {
        for c in changes {
            match c {
                SchedulerChange::Plugin { vip, plugin, from } => {
                    self.publish(vip, plugin, dataplane);
                    self.configured.insert(vip, from);
                }
                SchedulerChange::Maglev(vip) => {
                    self.configured.remove(&vip);
                    if lock(&self.slots).remove(&vip).is_some() {
                        dataplane.set_scheduler(vip, &|_| None);
                        tracing::info!(vip, "scheduler back to maglev");
                    }
                }
            }
        }
    }

    /// Publishes a loaded plugin for the VIP's new flows: its generation.
    pub fn publish(&mut self, vip: VipId, plugin: Plugin, dataplane: &Dataplane) -> u64 {
        let name = plugin.name().to_string();
        let mut slots = lock(&self.slots);
        let slot = slots.entry(vip).or_insert_with(|| {
            let s = PluginSlot::new(format!("vip {vip}"));
            let follow = Arc::clone(&s);
            dataplane.set_scheduler(vip, &move |_| Some(Box::new(follow.scheduler())));
            s
        });
        let generation = slot.publish(plugin);
        tracing::info!(vip, plugin = %name, generation, "scheduler plugin published");
        generation
    }

    /// Records that `vip`'s published plugin is the configured one, from
    /// `from` (`fulcrum plugin load --persist`).
    pub fn set_configured(&mut self, vip: VipId, from: Fingerprint) {
        self.configured.insert(vip, from);
    }

    /// The plugin the VIP's new flows go through, and what it did;
    /// `None`: native Maglev.
    pub fn in_force(&self, vip: VipId) -> Option<PluginReport> {
        report(&lock(&self.slots).get(&vip)?.stats())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What `stats` and the metrics show of a slot; `None` when no plugin is
/// published in it.
pub fn report(s: &PluginStats) -> Option<PluginReport> {
    let f = &s.fallbacks;
    let fallbacks = [
        ("declined", f.declined),
        ("fault", f.fault),
        ("quarantined", f.quarantined),
        ("preparing", f.preparing),
        ("over_capacity", f.over_capacity),
        ("unavailable", f.unavailable),
    ];
    Some(PluginReport {
        name: s.plugin.clone()?,
        hash: format!("{:016x}", s.hash?),
        generation: s.generation,
        picks: s.picks,
        declines: f.declined,
        fallbacks: fallbacks.into_iter().map(|(k, n)| (k.to_string(), n)).collect(),
        faults: FaultKind::ALL.iter().map(|&k| (k.name().to_string(), s.faults_of(k))).collect(),
        quarantined: s.quarantined,
        last_fault: s.last_fault.as_ref().map(|l| PluginFault { message: l.message.clone(), at: l.at }),
        instantiations: s.instantiations,
        batches: s.batches,
        pick_p99_ns: s.pick_p99().map(|d| d.as_nanos() as u64),
    })
}

/// Every fault of the VIPs' scheduler plugins, for `scheduler_faults`.
pub fn faults(slots: &Slots) -> u64 {
    lock(slots).values().map(|s| s.stats().fault_count()).sum()
}

/// The report of a VIP's plugin, if it has one.
pub fn vip_report(slots: &Slots, vip: VipId) -> Option<PluginReport> {
    report(&lock(slots).get(&vip)?.stats())
}

/// The VIP's id in the running services.
pub fn vip_id(services: &Services, v: &cfg::Vip) -> Result<VipId, Error> {
    services.vip_id(v.address, v.protocol.into(), v.port).ok_or_else(|| Error::Refused(format!("vip {} is not configured", v.name())))
}

/// The VIP's pool as a freshly loaded plugin is smoke-tested against.
pub fn pool(services: &Services, vip: VipId) -> Vec<BackendState> {
    let ids = services.vip(vip).map_or(&[][..], |v| &v.spec.backends[..]);
    ids.iter().filter_map(|&b| services.backend(b)).map(|b| BackendState { id: b.ident, weight: b.spec.weight, up: true, ..BackendState::default() }).collect()
}
