//! Bandwidth: the eligible backend with the fewest bytes per second per
//! unit of weight, so traffic volume (not connection count) is balanced:
//! the right choice when a few flows carry most bytes.

#![no_std]

use fulcrum_plugin_sdk::{Backends, Choice, Flow};

pub fn pick(_flow: &Flow, backends: &Backends) -> Choice {
    backends.min_by_load_per_weight(|b| b.bytes_per_sec)
}

fulcrum_plugin_sdk::export_plugin!(pick: pick);

#[cfg(test)]
mod tests {
    use super::*;
    use fulcrum_plugin_sdk::Backend;
    use fulcrum_plugin_sdk::testing::choose;

    #[test]
    fn prefers_the_least_loaded_per_weight() {
        // 50 MB/s at weight 1 is busier than 120 MB/s at weight 4.
        let rows = [Backend::new(1, 1).with_bytes_per_sec(50_000_000), Backend::new(2, 4).with_bytes_per_sec(120_000_000)];
        assert_eq!(choose(pick, &rows), Some(1));
        let rows = [Backend::new(1, 1).with_bytes_per_sec(20_000_000), Backend::new(2, 4).with_bytes_per_sec(120_000_000)];
        assert_eq!(choose(pick, &rows), Some(0));
    }

    #[test]
    fn ignores_connection_counts_and_handles_extreme_rates() {
        let rows = [Backend::new(1, 1).with_active(1).with_bytes_per_sec(u64::MAX), Backend::new(2, 1).with_active(900).with_bytes_per_sec(u64::MAX - 1)];
        assert_eq!(choose(pick, &rows), Some(1));
    }

    #[test]
    fn skips_down_and_drained() {
        let rows = [Backend::new(1, 1).down(), Backend::new(2, 0), Backend::new(3, 1).with_bytes_per_sec(1 << 40)];
        assert_eq!(choose(pick, &rows), Some(2));
        assert_eq!(choose(pick, &rows[..2]), None);
    }
}
