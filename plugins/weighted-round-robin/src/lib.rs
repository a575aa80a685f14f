//! Smooth weighted round robin, as nginx does it: every pick adds each
//! eligible backend's weight to its running score, takes the highest score
//! (lowest index on ties) and subtracts the total weight from the winner.
//! Shares follow the weights exactly over each cycle of `total` picks, and
//! a heavy backend's turns are interleaved with the others' instead of
//! coming in a burst.

#![no_std]

use fulcrum_plugin_sdk::{Backends, CAPACITY, Choice, Flow};

pub struct SmoothWrr {
    /// Running score per row. |score| stays within the total weight
    /// (< 2^26 for 1024 rows of u16 weights), so i64 cannot overflow.
    score: [i64; CAPACITY],
}

impl SmoothWrr {
    pub const fn new() -> SmoothWrr {
        SmoothWrr { score: [0; CAPACITY] }
    }

    pub fn pick(&mut self, _flow: &Flow, backends: &Backends) -> Choice {
        let total = backends.total_weight() as i64;
        let mut best: Option<(usize, i64)> = None;
        for ((i, b), score) in backends.iter().enumerate().zip(self.score.iter_mut()) {
            if !b.is_eligible() {
                continue;
            }
            *score += i64::from(b.weight);
            if best.is_none_or(|(_, s)| *score > s) {
                best = Some((i, *score));
            }
        }
        let Some((i, _)) = best else { return Choice::NoChoice };
        if let Some(score) = self.score.get_mut(i) {
            *score -= total;
        }
        Choice::Backend(i)
    }

    /// The set or the weights changed: start a fresh cycle, so the new
    /// shares hold exactly from the next pick on.
    pub fn reset(&mut self, _backends: &Backends) {
        self.score = [0; CAPACITY];
    }
}

impl Default for SmoothWrr {
    fn default() -> SmoothWrr {
        SmoothWrr::new()
    }
}

fulcrum_plugin_sdk::export_plugin! {
    state: SmoothWrr = SmoothWrr::new(),
    pick: SmoothWrr::pick,
    update: SmoothWrr::reset,
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use fulcrum_plugin_sdk::Backend;
    use fulcrum_plugin_sdk::testing::choose;
    use std::boxed::Box;
    use std::vec::Vec;

    fn run(wrr: &mut SmoothWrr, rows: &[Backend], k: usize) -> Vec<Option<usize>> {
        (0..k).map(|_| choose(|f, b| wrr.pick(f, b), rows)).collect()
    }

    #[test]
    fn weights_5_1_1_give_nginx_smooth_sequence() {
        let rows = [Backend::new(1, 5), Backend::new(2, 1), Backend::new(3, 1)];
        let (a, b, c) = (Some(0), Some(1), Some(2));
        let cycle = [a, a, b, a, c, a, a];
        let got = run(&mut Box::new(SmoothWrr::new()), &rows, 14);
        assert_eq!(got[..7], cycle);
        assert_eq!(got[7..], cycle);
    }

    #[test]
    fn shares_are_exact_per_cycle() {
        let rows = [Backend::new(1, 3), Backend::new(2, 2), Backend::new(3, 4)];
        let got = run(&mut Box::new(SmoothWrr::new()), &rows, 9 * 10);
        for (i, w) in [3, 2, 4].into_iter().enumerate() {
            assert_eq!(got.iter().filter(|&&p| p == Some(i)).count(), w * 10);
        }
    }

    #[test]
    fn skips_down_and_drained_and_restarts_after_reset() {
        let mut wrr = Box::new(SmoothWrr::new());
        let rows = [Backend::new(1, 2), Backend::new(2, 9).down(), Backend::new(3, 0), Backend::new(4, 1)];
        assert_eq!(run(&mut wrr, &rows, 6), [0, 3, 0, 0, 3, 0].map(Some));
        let _ = run(&mut wrr, &rows, 1);
        wrr.reset(&Backends::new(&rows));
        assert_eq!(run(&mut wrr, &rows, 3), [0, 3, 0].map(Some));
        let none = [Backend::new(1, 2).down(), Backend::new(2, 0)];
        assert_eq!(run(&mut wrr, &none, 2), [None, None]);
    }
}
