//! Source-IP hash: all flows of a client go to the same backend while the
//! eligible set and weights stay the same (client affinity without a
//! table). The SDK's fixed source hash is mapped onto the weights, so every
//! node with the same pool agrees. A pool change moves most clients; use
//! the maglev plugin when that matters.

#![no_std]

use fulcrum_plugin_sdk::{Backends, Choice, Flow};

pub fn pick(flow: &Flow, backends: &Backends) -> Choice {
    backends.pick_by_weight(flow.src_hash())
}

fulcrum_plugin_sdk::export_plugin!(pick: pick);

#[cfg(test)]
mod tests {
    use super::*;
    use fulcrum_plugin_sdk::Backend;
    use fulcrum_plugin_sdk::testing::choose_for;

    const CLIENTS: u32 = 40_000;

    fn client(c: u32, src_port: u16, hash: u64) -> Flow {
        let [_, _, a, b] = c.to_be_bytes();
        Flow::v4([198, 18, a, b], src_port, [198, 19, 0, 1], 443, 6, hash)
    }

    fn counts(rows: &[Backend]) -> [u32; 4] {
        let mut n = [0; 4];
        for c in 0..CLIENTS {
            n[choose_for(pick, &client(c, 1000, 0), rows).unwrap()] += 1;
        }
        n
    }

    #[test]
    fn a_client_always_lands_on_the_same_backend() {
        let rows = [Backend::new(1, 1), Backend::new(2, 1), Backend::new(3, 1)];
        let b = Backends::new(&rows);
        for c in [0, 7, 9999] {
            let first = pick(&client(c, 1000, 1), &b);
            for (port, hash) in [(1001, 2), (40000, 3), (65535, u64::MAX)] {
                assert_eq!(pick(&client(c, port, hash), &b), first);
            }
        }
    }

    /// Bound: each backend within ±5% of its weighted share of 40 000 clients.
    #[test]
    fn spreads_clients_by_weight_within_5_percent() {
        let equal = [Backend::new(1, 1), Backend::new(2, 1), Backend::new(3, 1), Backend::new(4, 1)];
        for n in counts(&equal) {
            assert!(n.abs_diff(10_000) <= 500, "{n}");
        }
        let weighted = [Backend::new(1, 3), Backend::new(2, 1), Backend::new(3, 2), Backend::new(4, 2)];
        for (n, want) in counts(&weighted).into_iter().zip([15_000, 5_000, 10_000, 10_000]) {
            assert!(n.abs_diff(want) <= want / 20, "{n} vs {want}");
        }
    }

    #[test]
    fn skips_down_and_drained() {
        let rows = [Backend::new(1, 1), Backend::new(2, 1).down(), Backend::new(3, 0), Backend::new(4, 1)];
        let n = counts(&rows);
        assert_eq!((n[1], n[2]), (0, 0));
        assert!(n[0].abs_diff(20_000) <= 1_000 && n[3].abs_diff(20_000) <= 1_000, "{n:?}");
        assert_eq!(choose_for(pick, &client(1, 1, 1), &rows[1..3]), None);
    }
}
