//! The daemon's plugins: reading a module (bounded, from a regular file
//! only), compiling and smoke-testing it off the control thread, and the
//! scheduler slots: one per VIP that has a plugin (from the configuration
//! or `fulcrum plugin load`), one scheduler instance per worker following
//! it. Publishing swaps a plugin in for new flows on every worker.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use fulcrum_config as cfg;
use fulcrum_dataplane::sched::BackendState;
use fulcrum_dataplane::services::Services;
use fulcrum_dataplane::types::VipId;
use fulcrum_plugin_host::{HostConfig, Plugin, PluginRuntime, PluginSlot};

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
        // Not cryptographic: it only tells an operator's new build from the
        // running one.
        let mut h = std::hash::DefaultHasher::new();
        bytes.hash(&mut h);
        Ok(Module { name, from: Fingerprint { path: path.to_path_buf(), hash: h.finish() }, bytes })
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
#[derive(Clone, Default)]
pub struct Runtime(Arc<Mutex<Option<Arc<PluginRuntime>>>>);

impl Runtime {
    pub fn get(&self) -> Result<Arc<PluginRuntime>, Error> {
        let mut r = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(r) = &*r {
            return Ok(Arc::clone(r));
        }
        Ok(Arc::clone(r.insert(PluginRuntime::new(HostConfig::default())?)))
    }
}

/// What a prepared configuration does to one VIP's scheduler.
pub enum SchedulerChange {
    /// Publish this plugin, loaded from the configuration's file.
    Plugin { vip: VipId, plugin: Plugin, from: Fingerprint },
    /// Back to native Maglev (the configuration dropped the plugin, or the
    /// VIP).
    Maglev(VipId),
}

#[derive(Default)]
pub struct Plugins {
    runtime: Runtime,
    slots: HashMap<VipId, Arc<PluginSlot>>,
    /// The file each VIP's configured plugin came from.
    configured: HashMap<VipId, Fingerprint>,
}

impl Plugins {
    pub fn runtime(&self) -> Runtime {
        self.runtime.clone()
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
                    if self.slots.remove(&vip).is_some() {
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
        let slot = self.slots.entry(vip).or_insert_with(|| {
            let s = PluginSlot::new(format!("vip {vip}"));
            let follow = Arc::clone(&s);
            dataplane.set_scheduler(vip, &move |_| Some(Box::new(follow.scheduler())));
            s
        });
        let generation = slot.publish(plugin);
        tracing::info!(vip, plugin = %name, generation, "scheduler plugin published");
        generation
    }

    /// The plugin the VIP's new flows go through, and its generation;
    /// `None`: native Maglev.
    pub fn in_force(&self, vip: VipId) -> Option<(String, u64)> {
        let stats = self.slots.get(&vip)?.stats();
        Some((stats.plugin?, stats.generation))
    }
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
