//! The daemon's scheduler plugins: one slot per VIP that has a plugin (from
//! the configuration or `fulcrum plugin load`), one scheduler instance per
//! worker following it. Loading compiles, checks and smoke-tests on the
//! control thread; publishing swaps it in for new flows on every worker.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use fulcrum_config as cfg;
use fulcrum_dataplane::sched::BackendState;
use fulcrum_dataplane::services::Services;
use fulcrum_dataplane::types::VipId;
use fulcrum_plugin_host::{HostConfig, PluginRuntime, PluginSlot};

use crate::error::{Context, Error};
use crate::workers::Dataplane;

#[derive(Default)]
pub struct Plugins {
    /// Created with the first plugin: wasmtime reserves its address space
    /// only for daemons that use plugins.
    runtime: Option<Arc<PluginRuntime>>,
    slots: HashMap<VipId, Arc<PluginSlot>>,
}

impl Plugins {
    /// Loads the plugins `config` names for VIPs whose scheduler differs
    /// from `before` (all of them at start) and returns those VIPs to
    /// Maglev whose plugin the configuration dropped.
    pub fn apply(&mut self, before: Option<&cfg::Config>, config: &cfg::Config, services: &Services, dataplane: &Dataplane) -> Result<(), Error> {
        for v in &config.vips {
            let unchanged = before
                .and_then(|b| b.vips.iter().find(|o| (o.address, o.protocol, o.port) == (v.address, v.protocol, v.port)))
                .is_some_and(|o| o.scheduler == v.scheduler);
            if unchanged {
                continue;
            }
            let id = vip_id(services, v)?;
            match &v.scheduler {
                cfg::Scheduler::Plugin(path) => {
                    self.load(id, path, services, dataplane).context(|| format!("vip {}", v.name()))?;
                }
                cfg::Scheduler::Maglev => {
                    if self.slots.remove(&id).is_some() {
                        dataplane.set_scheduler(id, &|_| None);
                    }
                }
            }
        }
        Ok(())
    }

    /// The runtime every plugin of the daemon runs in (health-policy
    /// plugins too), made on first use.
    pub fn runtime(&mut self) -> Result<Arc<PluginRuntime>, Error> {
        if let Some(r) = &self.runtime {
            return Ok(Arc::clone(r));
        }
        let r = PluginRuntime::new(HostConfig::default())?;
        Ok(Arc::clone(self.runtime.insert(r)))
    }

    /// Loads `path` for the VIP and publishes it: the name of the plugin
    /// and its generation.
    pub fn load(&mut self, vip: VipId, path: &Path, services: &Services, dataplane: &Dataplane) -> Result<(String, u64), Error> {
        let runtime = self.runtime()?;
        let pool = pool(services, vip);
        let plugin = runtime.load_file(path, &pool).context(|| format!("{}", path.display()))?;
        let name = plugin.name().to_string();
        let slot = match self.slots.get(&vip) {
            Some(s) => Arc::clone(s),
            None => {
                let s = PluginSlot::new(format!("vip {vip}"));
                let follow = Arc::clone(&s);
                dataplane.set_scheduler(vip, &move |_| Some(Box::new(follow.scheduler())));
                self.slots.insert(vip, Arc::clone(&s));
                s
            }
        };
        let generation = slot.publish(plugin);
        tracing::info!(vip, plugin = %name, generation, "scheduler plugin published");
        Ok((name, generation))
    }
}

/// The VIP's id in the running services.
pub fn vip_id(services: &Services, v: &cfg::Vip) -> Result<VipId, Error> {
    services.vip_id(v.address, v.protocol.into(), v.port).ok_or_else(|| Error::Refused(format!("vip {} is not configured", v.name())))
}

/// The VIP's pool as a freshly loaded plugin is smoke-tested against.
fn pool(services: &Services, vip: VipId) -> Vec<BackendState> {
    let ids = services.vip(vip).map_or(&[][..], |v| &v.spec.backends[..]);
    ids.iter().filter_map(|&b| services.backend(b)).map(|b| BackendState { id: b.ident, weight: b.spec.weight, up: true, ..BackendState::default() }).collect()
}
