//! Health policy plugins (ABI.md §6): a VIP's `health::Policy` from its
//! plugin's `lb_health`, when the slot's plugin exports one and is not
//! quarantined; otherwise the native rise/fall rule decides. The health
//! thread calls it once per completed check (it holds its own plugin
//! instance).

use std::sync::Arc;

use fulcrum_dataplane::health_policy::{HealthState, Observation, Policy, rise_fall};
use fulcrum_dataplane::sched::BackendState;

use crate::abi::HEALTH_UP;
use crate::slot::{Follower, PluginSlot};

fn encode(s: HealthState) -> u32 {
    u32::from(s.weight) | if s.up { HEALTH_UP } else { 0 }
}

fn decode(v: u32) -> HealthState {
    HealthState { up: v & HEALTH_UP != 0, weight: v as u16 }
}

/// Follows a slot: its plugin's verdicts, hot swaps included.
pub struct HealthPolicy {
    plugin: Follower,
}

impl HealthPolicy {
    pub fn new(slot: &Arc<PluginSlot>) -> HealthPolicy {
        HealthPolicy { plugin: Follower::new(slot) }
    }
}

impl Policy for HealthPolicy {
    /// A faulty verdict (trap, reserved bits) keeps the current state and
    /// counts a fault against the plugin.
    fn decide(&mut self, seen: &Observation, pool: &[BackendState]) -> HealthState {
        let h = &seen.health;
        let args = (
            seen.index as i32,
            i32::from(seen.check.ok),
            seen.check.latency_us as i32,
            h.successes as i32,
            h.failures as i32,
            encode(h.state) as i32,
            i32::from(seen.configured_weight),
        );
        match self.plugin.health(pool, args) {
            Some(Ok(verdict)) => decode(verdict),
            Some(Err(())) => h.state,
            None => rise_fall(seen),
        }
    }
}
