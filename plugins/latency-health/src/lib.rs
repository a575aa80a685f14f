//! A health policy that takes latency into account, on top of weighted
//! least connections (the scheduling half; it exists so the policy ships in
//! a usable module). The native rise/fall rule (rise 2, fall 3) decides up
//! and down; an up backend whose last check was slow keeps serving but
//! gets a smaller share of new flows until a fast check restores its
//! configured weight.

#![no_std]

use fulcrum_plugin_sdk::{Backends, Choice, Flow, HealthInput, HealthVerdict};

const RISE: u32 = 2;
const FALL: u32 = 3;
/// A check slower than this halves the weight...
const SLOW_US: u32 = 50_000;
/// ...and slower than this quarters it.
const VERY_SLOW_US: u32 = 200_000;

pub fn pick(_flow: &Flow, backends: &Backends) -> Choice {
    backends.min_by_load_per_weight(|b| u64::from(b.active))
}

pub fn health(input: &HealthInput) -> HealthVerdict {
    let verdict = input.rise_fall(RISE, FALL);
    let shift = match input.latency_us {
        _ if !input.ok => 0,
        l if l > VERY_SLOW_US => 2,
        l if l > SLOW_US => 1,
        _ => 0,
    };
    // Never let slowness alone drain a backend: that is weight 0's job.
    let weight = if verdict.weight == 0 { 0 } else { (verdict.weight >> shift).max(1) };
    HealthVerdict { weight, ..verdict }
}

fulcrum_plugin_sdk::export_plugin!(pick: pick, health: health);

#[cfg(test)]
mod tests {
    use super::*;
    use fulcrum_plugin_sdk::Backend;
    use fulcrum_plugin_sdk::testing::choose;

    fn check(ok: bool, latency_us: u32, successes: u32, failures: u32, up: bool, configured_weight: u16) -> HealthVerdict {
        let current = HealthVerdict { up, weight: configured_weight };
        health(&HealthInput { index: 0, ok, latency_us, successes, failures, current, configured_weight })
    }

    #[test]
    fn slow_checks_shrink_the_weight_fast_ones_restore_it() {
        assert_eq!(check(true, 1_000, 5, 0, true, 8), HealthVerdict { up: true, weight: 8 });
        assert_eq!(check(true, 60_000, 5, 0, true, 8), HealthVerdict { up: true, weight: 4 });
        assert_eq!(check(true, 250_000, 5, 0, true, 8), HealthVerdict { up: true, weight: 2 });
        assert_eq!(check(true, 250_000, 5, 0, true, 1), HealthVerdict { up: true, weight: 1 });
        assert_eq!(check(true, 250_000, 5, 0, true, 0), HealthVerdict { up: true, weight: 0 });
    }

    #[test]
    fn up_and_down_follow_rise_and_fall() {
        assert!(check(false, 3_000_000, 0, 2, true, 8).up);
        assert!(!check(false, 3_000_000, 0, 3, true, 8).up);
        assert!(!check(true, 1_000, 1, 0, false, 8).up);
        assert_eq!(check(true, 1_000, 2, 0, false, 8), HealthVerdict { up: true, weight: 8 });
    }

    #[test]
    fn schedules_by_connections_per_weight() {
        let rows = [Backend::new(1, 1).with_active(3), Backend::new(2, 4).with_active(8), Backend::new(3, 9).down()];
        assert_eq!(choose(pick, &rows), Some(1));
    }
}
