//! Health policy: how one completed check of a backend turns into up/down
//! and a weight (ABI.md §6). A plugin's `lb_health` decides when the slot's
//! plugin exports one and is not quarantined; otherwise the native rise/fall
//! rule does. The health checker calls [`HealthPolicy::record`] once per
//! completed check, on its own thread (it holds its own plugin instance).

use std::sync::Arc;

use super::abi::HEALTH_UP;
use super::slot::{Follower, PluginSlot};
use crate::sched::BackendState;

/// What the host applies to a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthState {
    pub up: bool,
    /// Effective weight; 0 drains.
    pub weight: u16,
}

impl HealthState {
    fn encode(self) -> u32 {
        u32::from(self.weight) | if self.up { HEALTH_UP } else { 0 }
    }

    fn decode(v: u32) -> HealthState {
        HealthState { up: v & HEALTH_UP != 0, weight: v as u16 }
    }
}

/// What the host remembers of one backend between checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendHealth {
    /// Consecutive passed checks (0 after a failure).
    pub successes: u32,
    /// Consecutive failed checks (0 after a pass).
    pub failures: u32,
    pub state: HealthState,
}

impl BackendHealth {
    pub fn new(state: HealthState) -> BackendHealth {
        BackendHealth { successes: 0, failures: 0, state }
    }
}

/// One completed check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckResult {
    pub ok: bool,
    /// How long it took (for a failure: until it failed or timed out).
    pub latency_us: u32,
}

/// The native policy: an up backend goes down after `fall` consecutive
/// failures, a down one comes up after `rise` consecutive passes; the
/// weight is the configured one.
pub fn rise_fall(h: &BackendHealth, rise: u32, fall: u32, configured_weight: u16) -> HealthState {
    let up = if h.state.up { h.failures < fall.max(1) } else { h.successes >= rise.max(1) };
    HealthState { up, weight: configured_weight }
}

/// A VIP's health policy: native rise/fall, or a plugin's `lb_health`.
pub struct HealthPolicy {
    rise: u32,
    fall: u32,
    plugin: Option<Follower>,
}

impl HealthPolicy {
    pub fn native(rise: u32, fall: u32) -> HealthPolicy {
        HealthPolicy { rise, fall, plugin: None }
    }

    /// Follows `slot`: its plugin's `lb_health` when it has one (hot swaps
    /// included), native rise/fall otherwise or while it is quarantined.
    pub fn with_plugin(slot: &Arc<PluginSlot>, rise: u32, fall: u32) -> HealthPolicy {
        HealthPolicy { rise, fall, plugin: Some(Follower::new(slot)) }
    }

    /// One completed check of `pool[index]`: updates the streaks in
    /// `backend`, decides, stores and returns the new state. A faulty
    /// verdict (trap, reserved bits) keeps the current state and counts a
    /// fault against the plugin.
    pub fn record(&mut self, backend: &mut BackendHealth, pool: &[BackendState], index: usize, check: CheckResult, configured_weight: u32) -> HealthState {
        if check.ok {
            (backend.successes, backend.failures) = (backend.successes.saturating_add(1), 0);
        } else {
            (backend.successes, backend.failures) = (0, backend.failures.saturating_add(1));
        }
        let configured_weight = configured_weight.min(u32::from(u16::MAX)) as u16;
        let args = (
            index as i32,
            i32::from(check.ok),
            check.latency_us as i32,
            backend.successes as i32,
            backend.failures as i32,
            backend.state.encode() as i32,
            i32::from(configured_weight),
        );
        let from_plugin = self.plugin.as_mut().and_then(|f| {
            let (cfg, live) = f.instance()?;
            match live.health(cfg, pool, args) {
                Ok(verdict) => verdict.map(HealthState::decode),
                Err(fault) => {
                    f.fault(fault);
                    Some(backend.state)
                }
            }
        });
        backend.state = from_plugin.unwrap_or_else(|| rise_fall(backend, self.rise, self.fall, configured_weight));
        backend.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checks(policy: &mut HealthPolicy, start_up: bool, results: &[bool]) -> Vec<bool> {
        let mut b = BackendHealth::new(HealthState { up: start_up, weight: 5 });
        results.iter().map(|&ok| policy.record(&mut b, &[], 0, CheckResult { ok, latency_us: 100 }, 5).up).collect()
    }

    #[test]
    fn native_policy_needs_rise_passes_and_fall_failures() {
        let mut p = HealthPolicy::native(2, 3);
        assert_eq!(checks(&mut p, true, &[false, false, true, false, false, false]), [true, true, true, true, true, false]);
        assert_eq!(checks(&mut p, false, &[true, false, true, true]), [false, false, false, true]);
    }

    #[test]
    fn native_policy_restores_the_configured_weight_and_saturates_it() {
        let mut p = HealthPolicy::native(1, 1);
        let mut b = BackendHealth::new(HealthState { up: true, weight: 1 });
        let s = p.record(&mut b, &[], 0, CheckResult { ok: true, latency_us: 1 }, 100_000);
        assert_eq!(s, HealthState { up: true, weight: u16::MAX });
        assert_eq!((b.successes, b.failures), (1, 0));
    }
}
