//! Least pending (adaptive): the fewest open plus half-open connections per
//! unit of weight. Half-open connections (SYN sent, no handshake yet) show
//! a backend that is slow to accept before its established count does, so
//! this reacts to overload earlier than least connections.

#![no_std]

use fulcrum_plugin_sdk::{Backends, Choice, Flow};

pub fn pick(_flow: &Flow, backends: &Backends) -> Choice {
    backends.min_by_load_per_weight(|b| u64::from(b.active) + u64::from(b.pending))
}

fulcrum_plugin_sdk::export_plugin!(pick: pick);

#[cfg(test)]
mod tests {
    use super::*;
    use fulcrum_plugin_sdk::Backend;
    use fulcrum_plugin_sdk::testing::choose;

    #[test]
    fn counts_half_open_connections() {
        // Fewer established connections but a backlog of handshakes loses.
        let rows = [Backend::new(1, 1).with_active(5).with_pending(20), Backend::new(2, 1).with_active(10).with_pending(1)];
        assert_eq!(choose(pick, &rows), Some(1));
    }

    #[test]
    fn weighs_load_by_weight() {
        // (8+4)/4 = 3 beats (3+1)/1 = 4.
        let rows = [Backend::new(1, 1).with_active(3).with_pending(1), Backend::new(2, 4).with_active(8).with_pending(4)];
        assert_eq!(choose(pick, &rows), Some(1));
    }

    #[test]
    fn skips_down_and_drained_and_breaks_ties_by_index() {
        let rows = [Backend::new(1, 1).down(), Backend::new(2, 0), Backend::new(3, 1).with_pending(2), Backend::new(4, 1).with_active(2)];
        assert_eq!(choose(pick, &rows), Some(2));
        assert_eq!(choose(pick, &rows[..2]), None);
    }
}
