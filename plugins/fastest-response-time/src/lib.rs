//! Fastest response time: the eligible backend with the lowest smoothed
//! response time. A backend without a sample yet (rtt 0) ranks after all
//! measured ones, so a newcomer is not flooded before its first check;
//! ties go to fewer established connections, then the lowest index.

#![no_std]

use fulcrum_plugin_sdk::{Backends, Choice, Flow};

pub fn pick(_flow: &Flow, backends: &Backends) -> Choice {
    backends.min_by_key(|b| (b.rtt_us == 0, b.rtt_us, b.active))
}

fulcrum_plugin_sdk::export_plugin!(pick: pick);

#[cfg(test)]
mod tests {
    use super::*;
    use fulcrum_plugin_sdk::Backend;
    use fulcrum_plugin_sdk::testing::choose;

    #[test]
    fn picks_the_fastest() {
        let rows = [Backend::new(1, 1).with_rtt_us(900), Backend::new(2, 1).with_rtt_us(250).with_active(40), Backend::new(3, 1).with_rtt_us(300)];
        assert_eq!(choose(pick, &rows), Some(1));
    }

    #[test]
    fn unmeasured_backends_come_last_and_ties_use_load() {
        let rows = [Backend::new(1, 1), Backend::new(2, 1).with_rtt_us(5000).with_active(3), Backend::new(3, 1).with_rtt_us(5000).with_active(1)];
        assert_eq!(choose(pick, &rows), Some(2));
        let unmeasured = [Backend::new(1, 1).with_active(2), Backend::new(2, 1).with_active(1)];
        assert_eq!(choose(pick, &unmeasured), Some(1));
    }

    #[test]
    fn skips_down_and_drained() {
        let rows = [Backend::new(1, 1).with_rtt_us(1).down(), Backend::new(2, 0).with_rtt_us(1), Backend::new(3, 1).with_rtt_us(80_000)];
        assert_eq!(choose(pick, &rows), Some(2));
        assert_eq!(choose(pick, &rows[..2]), None);
    }
}
