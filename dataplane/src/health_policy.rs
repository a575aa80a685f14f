//! Health policy: how a completed check turns into up/down and a weight.
//!
//! The health monitor keeps each backend's streaks and calls its VIP's [`Policy`]
//! once per completed check; what the policy answers is applied when it
//! differs from the current state. The built-in [`RiseFall`] is the
//! classic rule; a VIP's health-policy plugin (`policy = "x.wasm"`) is
//! the plugin host's `HealthPolicy`, which calls the plugin's `lb_health`
//! with these inputs and falls back to the rule. Pure decisions, here
//! beside the `Scheduler` trait, so that the health checks and the plugin
//! host both build on this crate and not on each other.

use crate::sched::BackendState;

/// What the data path applies to a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthState {
    pub up: bool,
    /// Effective weight; 0 drains.
    pub weight: u16,
}

/// One completed check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckResult {
    pub ok: bool,
    /// How long it took (for a failure: until it failed or timed out).
    pub latency_us: u32,
}

/// What the monitor remembers of one backend between checks.
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

    /// Extends the streaks with one result.
    pub fn count(&mut self, check: CheckResult) {
        if check.ok {
            (self.successes, self.failures) = (self.successes.saturating_add(1), 0);
        } else {
            (self.successes, self.failures) = (0, self.failures.saturating_add(1));
        }
    }
}

/// Everything a policy is told about one completed check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observation {
    /// The backend's row in its VIP's pool.
    pub index: usize,
    pub check: CheckResult,
    /// Streaks, this check included, and the state currently applied.
    pub health: BackendHealth,
    /// The weight from the configuration.
    pub configured_weight: u16,
    /// The backend's configured thresholds (the native rule's inputs).
    pub rise: u8,
    pub fall: u8,
}

/// Decides a backend's state after each of its checks. One instance per
/// VIP, called from the health thread only.
pub trait Policy: Send {
    /// `pool` is the VIP's backends as schedulers see them (up, weight,
    /// smoothed check latency), `pool[seen.index]` the one just checked.
    fn decide(&mut self, seen: &Observation, pool: &[BackendState]) -> HealthState;
}

/// The native rule: an up backend goes down after `fall` consecutive
/// failed checks, a down one comes up after `rise` consecutive passes;
/// the weight is the configured one.
#[derive(Clone, Copy, Debug, Default)]
pub struct RiseFall;

impl Policy for RiseFall {
    fn decide(&mut self, seen: &Observation, _: &[BackendState]) -> HealthState {
        rise_fall(seen)
    }
}

pub fn rise_fall(seen: &Observation) -> HealthState {
    let h = &seen.health;
    let up = if h.state.up { h.failures < u32::from(seen.fall.max(1)) } else { h.successes >= u32::from(seen.rise.max(1)) };
    HealthState { up, weight: seen.configured_weight }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `results` to the native rule from `start_up`; the state after each.
    fn run(start_up: bool, results: &[bool]) -> Vec<bool> {
        let mut h = BackendHealth::new(HealthState { up: start_up, weight: 5 });
        results
            .iter()
            .map(|&ok| {
                let check = CheckResult { ok, latency_us: 100 };
                h.count(check);
                let seen = Observation { index: 0, check, health: h, configured_weight: 5, rise: 2, fall: 3 };
                h.state = RiseFall.decide(&seen, &[]);
                h.state.up
            })
            .collect()
    }

    #[test]
    fn rise_passes_bring_it_up_and_fall_failures_take_it_down() {
        assert_eq!(run(true, &[false, false, true, false, false, false]), [true, true, true, true, true, false]);
        assert_eq!(run(false, &[true, false, true, true]), [false, false, false, true]);
    }

    #[test]
    fn the_configured_weight_is_restored() {
        let check = CheckResult { ok: true, latency_us: 1 };
        let health = BackendHealth { successes: 1, failures: 0, state: HealthState { up: true, weight: 1 } };
        let seen = Observation { index: 0, check, health, configured_weight: 9, rise: 1, fall: 1 };
        assert_eq!(rise_fall(&seen), HealthState { up: true, weight: 9 });
    }
}
