//! Round robin: each new flow goes to the next eligible backend in row
//! order; down and drained backends are skipped.

#![no_std]

use fulcrum_plugin_sdk::{Backends, Choice, Flow};

/// Where the next scan starts: one past the last pick. A pool that shrank
/// below it simply wraps to the first eligible row.
pub struct RoundRobin {
    next: usize,
}

impl RoundRobin {
    pub const fn new() -> RoundRobin {
        RoundRobin { next: 0 }
    }

    pub fn pick(&mut self, _flow: &Flow, backends: &Backends) -> Choice {
        let choice = backends.next_eligible(self.next);
        if let Choice::Backend(i) = choice {
            self.next = i + 1;
        }
        choice
    }
}

impl Default for RoundRobin {
    fn default() -> RoundRobin {
        RoundRobin::new()
    }
}

fulcrum_plugin_sdk::export_plugin! {
    state: RoundRobin = RoundRobin::new(),
    pick: RoundRobin::pick,
}

#[cfg(test)]
mod tests {
    use super::*;
    use fulcrum_plugin_sdk::Backend;
    use fulcrum_plugin_sdk::testing::choose;

    fn picks<const K: usize>(rr: &mut RoundRobin, rows: &[Backend]) -> [Option<usize>; K] {
        core::array::from_fn(|_| choose(|f, b| rr.pick(f, b), rows))
    }

    #[test]
    fn cycles_exactly_in_row_order() {
        let rows = [Backend::new(1, 1), Backend::new(2, 5), Backend::new(3, 1)];
        let got: [_; 7] = picks(&mut RoundRobin::new(), &rows);
        assert_eq!(got, [0, 1, 2, 0, 1, 2, 0].map(Some));
    }

    #[test]
    fn skips_down_and_drained() {
        let rows = [Backend::new(1, 1), Backend::new(2, 1).down(), Backend::new(3, 0), Backend::new(4, 1)];
        let got: [_; 4] = picks(&mut RoundRobin::new(), &rows);
        assert_eq!(got, [0, 3, 0, 3].map(Some));
    }

    #[test]
    fn follows_a_shrinking_pool_and_gives_up_when_none_is_eligible() {
        let mut rr = RoundRobin::new();
        let rows = [Backend::new(1, 1), Backend::new(2, 1), Backend::new(3, 1)];
        let _: [_; 2] = picks(&mut rr, &rows);
        let got: [_; 3] = picks(&mut rr, &rows[..1]);
        assert_eq!(got, [Some(0); 3]);
        let none: [_; 2] = picks(&mut rr, &[Backend::new(1, 1).down()]);
        assert_eq!(none, [None; 2]);
        let empty: [_; 1] = picks(&mut rr, &[]);
        assert_eq!(empty, [None]);
    }
}
