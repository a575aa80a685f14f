//! Weighted least connections: the eligible backend with the fewest
//! established connections per unit of weight (compared exactly, by cross
//! multiplication); ties go to the lowest row index.

#![no_std]

use fulcrum_plugin_sdk::{Backends, Choice, Flow};

pub fn pick(_flow: &Flow, backends: &Backends) -> Choice {
    backends.min_by_load_per_weight(|b| u64::from(b.active))
}

fulcrum_plugin_sdk::export_plugin!(pick: pick);

#[cfg(test)]
mod tests {
    use super::*;
    use fulcrum_plugin_sdk::Backend;
    use fulcrum_plugin_sdk::testing::choose;

    #[test]
    fn picks_the_fewest_connections_per_weight() {
        // 10/1, 25/5 = 5, 12/2 = 6.
        let rows = [Backend::new(1, 1).with_active(10), Backend::new(2, 5).with_active(25), Backend::new(3, 2).with_active(12)];
        assert_eq!(choose(pick, &rows), Some(1));
    }

    #[test]
    fn fills_backends_in_proportion_to_weight() {
        // Simulate the host: each pick opens a connection on the chosen row.
        let mut rows = [Backend::new(1, 1), Backend::new(2, 3), Backend::new(3, 2)];
        for _ in 0..600 {
            let i = choose(pick, &rows).unwrap();
            rows[i].active += 1;
        }
        assert_eq!(rows.map(|b| b.active), [100, 300, 200]);
    }

    #[test]
    fn ties_go_to_the_lowest_index_and_ineligible_are_skipped() {
        let rows = [Backend::new(1, 2).with_active(1).down(), Backend::new(2, 0), Backend::new(3, 2).with_active(4), Backend::new(4, 1).with_active(2)];
        assert_eq!(choose(pick, &rows), Some(2));
        assert_eq!(choose(pick, &rows[..2]), None);
    }
}
