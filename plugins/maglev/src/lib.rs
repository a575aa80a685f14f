//! Maglev consistent hashing ("minimum misses", Eisenbud et al., NSDI 2016):
//! a lookup table of M slots, each owning a backend; a flow takes the slot
//! `hash % M`. When a backend goes down only its own slots (about 1/N) and
//! a few others change owner, so established placements mostly survive
//! even on nodes without connection state.
//!
//! The table is rebuilt in `lb_update` (the host calls it when the set,
//! a weight or a health state changed), never in `lb_pick`: a rebuild is
//! about M·ln M probes, far beyond a pick's fuel budget, while a pick is
//! one table read.
//!
//! M = 65537, the prime the native Maglev uses (a smaller M saves little):
//! even at the SDK's 1024 backends each keeps 64 slots, and equal weights
//! get slot counts within one of each other (1.6% there, far less for
//! smaller pools). Memory: 128 KiB of table plus 40 KiB of build scratch;
//! the module's whole initial memory is 320 KiB.
//!
//! The table depends only on the backends' ids and weights, never on the
//! order of the rows, so every node with the same pool builds the same one.

#![no_std]

use fulcrum_plugin_sdk::{Backends, CAPACITY, Choice, Flow, mix64};

pub const M: usize = 65537;
const OFFSET_SEED: u64 = 0x6d61_676c_6576_6f66; // "maglevof"
const SKIP_SEED: u64 = 0x6d61_676c_6576_736b; // "maglevsk"

/// One backend's walk through the table during a rebuild.
#[derive(Clone, Copy)]
struct Probe {
    /// Next slot of this backend's permutation.
    slot: u32,
    skip: u32,
    weight: u64,
    /// Weighted turns earned but not yet taken.
    credit: u64,
}

const NO_PROBE: Probe = Probe { slot: 0, skip: 0, weight: 0, credit: 0 };

pub struct Maglev {
    /// Row index + 1 per slot; 0 = no backend (also the state before the
    /// first update, so an instance that was never updated declines).
    table: [u16; M],
    /// Build scratch, kept here rather than on the (small) wasm stack.
    order: [(u64, u16); CAPACITY],
    probes: [Probe; CAPACITY],
}

impl Maglev {
    pub const fn new() -> Maglev {
        Maglev { table: [0; M], order: [(0, 0); CAPACITY], probes: [NO_PROBE; CAPACITY] }
    }

    pub fn pick(&mut self, flow: &Flow, backends: &Backends) -> Choice {
        let entry = self.table.get((flow.hash % M as u64) as usize).copied().unwrap_or(0);
        // A stale table (the host skipped an update) may name a row that is
        // gone or no longer eligible: decline rather than misplace the flow.
        usize::from(entry).checked_sub(1).filter(|&i| backends.get(i).is_some_and(|b| b.is_eligible())).into()
    }

    /// Rebuilds the table for the current rows.
    pub fn rebuild(&mut self, backends: &Backends) {
        self.table = [0; M];
        // Eligible backends by id, so row order does not matter. The zip
        // stops at CAPACITY, and rows never exceed it.
        let mut count = 0;
        for ((i, b), o) in backends.eligible().zip(self.order.iter_mut()) {
            *o = (b.id, i as u16);
            count += 1;
        }
        let order = &mut self.order[..count];
        order.sort_unstable();
        let mut max_weight = 0;
        for (&(id, i), p) in order.iter().zip(self.probes.iter_mut()) {
            let weight = backends.get(usize::from(i)).map_or(0, |b| u64::from(b.weight));
            max_weight = max_weight.max(weight);
            *p = Probe { slot: (mix64(id ^ OFFSET_SEED) % M as u64) as u32, skip: (mix64(id ^ SKIP_SEED) % (M as u64 - 1) + 1) as u32, weight, credit: 0 };
        }
        if count == 0 {
            return;
        }
        // Rounds: every backend earns its weight; each max_weight earned
        // buys one slot, taken at the next free place of its permutation.
        // The heaviest backend buys a slot every round, so the table fills;
        // M is prime and 0 < skip < M, so a permutation visits every slot
        // and a free one is found within M steps.
        let mut filled = 0;
        loop {
            for (&(_, i), p) in order.iter().zip(self.probes.iter_mut()) {
                p.credit += p.weight;
                if p.credit < max_weight {
                    continue;
                }
                p.credit -= max_weight;
                loop {
                    let slot = p.slot as usize;
                    p.slot += p.skip;
                    if p.slot >= M as u32 {
                        p.slot -= M as u32;
                    }
                    if let Some(entry @ 0) = self.table.get_mut(slot) {
                        *entry = i + 1;
                        break;
                    }
                }
                filled += 1;
                if filled == M {
                    return;
                }
            }
        }
    }
}

impl Default for Maglev {
    fn default() -> Maglev {
        Maglev::new()
    }
}

fulcrum_plugin_sdk::export_plugin! {
    state: Maglev = Maglev::new(),
    pick: Maglev::pick,
    update: Maglev::rebuild,
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use fulcrum_plugin_sdk::Backend;
    use std::boxed::Box;
    use std::vec::Vec;

    fn pool(n: u32) -> Vec<Backend> {
        (0..n).map(|k| Backend::new(mix64(u64::from(k)), 1)).collect()
    }

    /// The backend id owning each slot.
    fn owners(rows: &[Backend]) -> Vec<Option<u64>> {
        let mut m = Box::new(Maglev::new());
        m.rebuild(&Backends::new(rows));
        m.table.iter().map(|&e| usize::from(e).checked_sub(1).map(|i| rows[i].id)).collect()
    }

    fn slot_counts(owners: &[Option<u64>], rows: &[Backend]) -> Vec<usize> {
        rows.iter().map(|b| owners.iter().filter(|&&o| o == Some(b.id)).count()).collect()
    }

    #[test]
    fn equal_weights_get_equal_slots() {
        let rows = pool(10);
        let o = owners(&rows);
        assert!(o.iter().all(Option::is_some));
        let c = slot_counts(&o, &rows);
        assert!(c.iter().max().unwrap() - c.iter().min().unwrap() <= 1, "{c:?}");
    }

    #[test]
    fn weights_set_the_shares() {
        let mut rows = pool(3);
        rows[0].weight = 3;
        rows[1].weight = 2;
        let c = slot_counts(&owners(&rows), &rows);
        for (c, w) in c.into_iter().zip([3, 2, 1]) {
            assert!((c * 6).abs_diff(M * w) <= M / 100, "{c} for weight {w}");
        }
    }

    /// One of N down: its 1/N of the slots must move, and Maglev moves only
    /// a few more: at most 1.5/N in all (measured: 1.01/N at N = 5, 1.02/N
    /// at 10, 1.17/N at 40).
    #[test]
    fn one_backend_down_remaps_at_most_one_and_a_half_nth() {
        for n in [5, 10, 40] {
            let mut rows = pool(n);
            let before = owners(&rows);
            let gone = rows[3].id;
            rows[3] = rows[3].down();
            let after = owners(&rows);
            assert!(after.iter().all(|&o| o.is_some() && o != Some(gone)));
            let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
            assert!(moved * n as usize <= M * 3 / 2, "n={n}: {moved} of {M} slots moved");
        }
    }

    #[test]
    fn row_order_does_not_change_placement() {
        let rows = pool(12);
        let mut shuffled = rows.clone();
        shuffled.reverse();
        shuffled.swap(2, 7);
        assert_eq!(owners(&rows), owners(&shuffled));
    }

    #[test]
    fn picks_read_the_table_and_skip_ineligible_rows() {
        let mut rows = pool(4);
        rows[1] = rows[1].down();
        rows[2].weight = 0;
        let mut m = Box::new(Maglev::new());
        let flow = |h| Flow::v4([198, 18, 0, 1], 1, [198, 19, 0, 1], 80, 6, h);
        // Never updated: declines.
        assert_eq!(m.pick(&flow(5), &Backends::new(&rows)), Choice::NoChoice);
        m.rebuild(&Backends::new(&rows));
        let mut seen = [false; 4];
        for h in 0..M as u64 {
            let i = m.pick(&flow(h), &Backends::new(&rows)).index().unwrap();
            seen[i] = true;
        }
        assert_eq!(seen, [true, false, false, true]);
        // Stale table after a change the host did not announce: declines.
        rows[0] = rows[0].down();
        assert!((0..100).any(|h| m.pick(&flow(h), &Backends::new(&rows)) == Choice::NoChoice));
        m.rebuild(&Backends::new(&rows[..2]));
        assert_eq!(m.pick(&flow(9), &Backends::new(&rows[..2])), Choice::NoChoice);
    }
}
