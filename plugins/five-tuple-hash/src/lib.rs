//! 5-tuple hash: each flow is placed by the host's 64-bit flow hash,
//! weighted, with no state: every node with the same pool sends the same
//! flow to the same backend (useful behind ECMP, where a flow may reach any
//! balancer). A pool change moves most flows; use the maglev plugin when
//! that matters.

#![no_std]

use fulcrum_plugin_sdk::{Backends, Choice, Flow};

pub fn pick(flow: &Flow, backends: &Backends) -> Choice {
    backends.pick_by_weight(flow.hash)
}

fulcrum_plugin_sdk::export_plugin!(pick: pick);

#[cfg(test)]
mod tests {
    use super::*;
    use fulcrum_plugin_sdk::testing::choose_for;
    use fulcrum_plugin_sdk::{Backend, mix64};

    const FLOWS: u64 = 40_000;

    /// Flow k with a well-mixed hash, as the host's xxh3 gives.
    fn flow(k: u64) -> Flow {
        Flow::v4([198, 18, 0, 1], k as u16, [198, 19, 0, 1], 80, 6, mix64(k))
    }

    #[test]
    fn the_same_flow_is_placed_the_same_way_on_every_call() {
        let rows = [Backend::new(1, 1), Backend::new(2, 2), Backend::new(3, 1)];
        let (a, b) = (Backends::new(&rows), Backends::new(&rows));
        for k in 0..1000 {
            assert_eq!(pick(&flow(k), &a), pick(&flow(k), &b));
        }
    }

    /// Bound: each backend within ±5% of its weighted share of 40 000 flows.
    #[test]
    fn spreads_flows_by_weight_within_5_percent() {
        let rows = [Backend::new(1, 1), Backend::new(2, 2), Backend::new(3, 1), Backend::new(4, 4)];
        let mut n = [0u64; 4];
        for k in 0..FLOWS {
            n[choose_for(pick, &flow(k), &rows).unwrap()] += 1;
        }
        for (n, want) in n.into_iter().zip([5_000, 10_000, 5_000, 20_000]) {
            assert!(n.abs_diff(want) <= want / 20, "{n} vs {want}");
        }
    }

    #[test]
    fn skips_down_and_drained() {
        let rows = [Backend::new(1, 1).down(), Backend::new(2, 1), Backend::new(3, 0)];
        for k in 0..1000 {
            assert_eq!(choose_for(pick, &flow(k), &rows), Some(1));
        }
        assert_eq!(choose_for(pick, &flow(1), &[rows[0], rows[2]]), None);
    }
}
