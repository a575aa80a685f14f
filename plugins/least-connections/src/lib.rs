//! Least connections: the eligible backend with the fewest established
//! connections; ties go to the lowest row index (deterministic). Weights
//! only matter as 0 = drained.

#![no_std]

use fulcrum_plugin_sdk::{Backends, Choice, Flow};

pub fn pick(_flow: &Flow, backends: &Backends) -> Choice {
    backends.min_by_key(|b| b.active)
}

fulcrum_plugin_sdk::export_plugin!(pick: pick);

#[cfg(test)]
mod tests {
    use super::*;
    use fulcrum_plugin_sdk::Backend;
    use fulcrum_plugin_sdk::testing::choose;

    #[test]
    fn picks_the_minimum() {
        let rows = [Backend::new(1, 1).with_active(7), Backend::new(2, 1).with_active(3), Backend::new(3, 9).with_active(5)];
        assert_eq!(choose(pick, &rows), Some(1));
    }

    #[test]
    fn ties_go_to_the_lowest_index() {
        let rows = [Backend::new(1, 1).with_active(4), Backend::new(2, 1).with_active(2), Backend::new(3, 1).with_active(2)];
        assert_eq!(choose(pick, &rows), Some(1));
    }

    #[test]
    fn skips_down_and_drained() {
        let rows = [Backend::new(1, 1).with_active(0).down(), Backend::new(2, 0).with_active(0), Backend::new(3, 1).with_active(50)];
        assert_eq!(choose(pick, &rows), Some(2));
        assert_eq!(choose(pick, &rows[..2]), None);
        assert_eq!(choose(pick, &[]), None);
    }
}
