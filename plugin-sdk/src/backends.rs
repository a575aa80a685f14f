//! Safe, bounds-checked access to the backend rows, and the selection
//! helpers every plugin builds on (so no two plugins carry the same loop).

use crate::Backend;

/// A plugin's answer for one new flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// Index of the chosen row (`0..backends.len()`).
    Backend(usize),
    /// No backend can take the flow: `lb_pick` returns -1 and the host
    /// applies its native fallback.
    NoChoice,
}

impl From<Option<usize>> for Choice {
    fn from(index: Option<usize>) -> Choice {
        index.map_or(Choice::NoChoice, Choice::Backend)
    }
}

impl Choice {
    pub const fn index(self) -> Option<usize> {
        match self {
            Choice::Backend(i) => Some(i),
            Choice::NoChoice => None,
        }
    }
}

/// The `n` rows the host filled for this call.
#[derive(Clone, Copy, Debug)]
pub struct Backends<'a> {
    rows: &'a [Backend],
}

impl<'a> Backends<'a> {
    pub const fn new(rows: &'a [Backend]) -> Backends<'a> {
        Backends { rows }
    }

    pub const fn len(&self) -> usize {
        self.rows.len()
    }

    pub const fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn get(&self, index: usize) -> Option<&'a Backend> {
        self.rows.get(index)
    }

    /// Every row, eligible or not.
    pub fn iter(&self) -> core::slice::Iter<'a, Backend> {
        self.rows.iter()
    }

    /// `(index, row)` of the backends that may take a new flow: up and with
    /// a weight above 0 (weight 0 is a drain).
    pub fn eligible(&self) -> impl Iterator<Item = (usize, &'a Backend)> + 'a {
        self.rows.iter().enumerate().filter(|(_, b)| b.is_eligible())
    }

    /// The first eligible backend at index `from` or after it, wrapping
    /// around to the start once (round-robin scans).
    pub fn next_eligible(&self, from: usize) -> Choice {
        self.eligible().find(|&(i, _)| i >= from).or_else(|| self.eligible().next()).map(|(i, _)| i).into()
    }

    /// Sum of the eligible backends' weights (u64: cannot overflow).
    pub fn total_weight(&self) -> u64 {
        self.eligible().map(|(_, b)| u64::from(b.weight)).sum()
    }

    /// The eligible backend with the smallest `key`; ties go to the lowest
    /// index, so the answer is deterministic.
    pub fn min_by_key<K: Ord>(&self, key: impl Fn(&Backend) -> K) -> Choice {
        self.eligible().min_by_key(|(_, b)| key(b)).map(|(i, _)| i).into()
    }

    /// The eligible backend with the smallest `load / weight`; ties go to the
    /// lowest index. Exact: compared by cross-multiplying, with no division
    /// and no overflow for any row contents.
    pub fn min_by_load_per_weight(&self, load: impl Fn(&Backend) -> u64) -> Choice {
        let mut best: Option<(usize, u64, u16)> = None;
        for (i, b) in self.eligible() {
            let l = load(b);
            if best.is_none_or(|(_, best_load, best_weight)| wide_mul(l, best_weight) < wide_mul(best_load, b.weight)) {
                best = Some((i, l, b.weight));
            }
        }
        best.map(|(i, ..)| i).into()
    }

    /// Maps `point` (a hash) onto the eligible backends in proportion to
    /// their weights: `point % total_weight` falls into one backend's share
    /// of the cumulative weights. Stable while the eligible set and weights
    /// stay the same; any change moves most points (use Maglev when that
    /// matters).
    pub fn pick_by_weight(&self, point: u64) -> Choice {
        let total = self.total_weight();
        if total == 0 {
            return Choice::NoChoice;
        }
        let mut rest = point % total;
        for (i, b) in self.eligible() {
            let w = u64::from(b.weight);
            if rest < w {
                return Choice::Backend(i);
            }
            rest -= w;
        }
        Choice::NoChoice
    }
}

/// `load × weight` exactly, as (bits 32.., bits 0..32): tuples compare like
/// the 80-bit products. Two u64 multiplications, where a u128 product costs
/// a library call on wasm32 (it made the weighted picks 3x dearer).
const fn wide_mul(load: u64, weight: u16) -> (u64, u32) {
    let w = weight as u64;
    let low = (load & 0xffff_ffff) * w; // < 2^48
    ((load >> 32) * w + (low >> 32), low as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> [Backend; 5] {
        [
            Backend::new(10, 1).with_active(4),
            Backend::new(11, 2).with_active(2).down(),
            Backend::new(12, 0).with_active(0),
            Backend::new(13, 3).with_active(6),
            Backend::new(14, 1).with_active(4),
        ]
    }

    #[test]
    fn eligible_skips_down_and_drained() {
        let rows = pool();
        let b = Backends::new(&rows);
        let idx: [usize; 3] = core::array::from_fn(|k| b.eligible().nth(k).unwrap().0);
        assert_eq!(idx, [0, 3, 4]);
        assert_eq!(b.eligible().count(), 3);
        assert_eq!(b.total_weight(), 5);
        assert_eq!(b.len(), 5);
        assert!(b.get(5).is_none());
    }

    #[test]
    fn next_eligible_wraps_once() {
        let rows = pool();
        let b = Backends::new(&rows);
        let got: [Choice; 7] = core::array::from_fn(|from| b.next_eligible(from));
        assert_eq!(got, [0, 3, 3, 3, 4, 0, 0].map(Choice::Backend));
    }

    #[test]
    fn min_by_key_takes_lowest_index_on_ties() {
        let rows = pool();
        let b = Backends::new(&rows);
        assert_eq!(b.min_by_key(|r| r.active), Choice::Backend(0));
        assert_eq!(b.min_by_key(|r| u32::MAX - r.active), Choice::Backend(3));
    }

    #[test]
    fn load_per_weight_is_exact() {
        let rows = pool();
        let b = Backends::new(&rows);
        // 4/1, 6/3 = 2, 4/1: backend 3 wins.
        assert_eq!(b.min_by_load_per_weight(|r| u64::from(r.active)), Choice::Backend(3));
        // Extremes do not overflow.
        let big = [Backend::new(1, u16::MAX).with_bytes_per_sec(u64::MAX), Backend::new(2, 1).with_bytes_per_sec(u64::MAX / 2)];
        assert_eq!(Backends::new(&big).min_by_load_per_weight(|r| r.bytes_per_sec), Choice::Backend(0));
    }

    #[test]
    fn wide_mul_orders_like_the_exact_product() {
        let loads = [0, 1, 0xffff_ffff, 0x1_0000_0000, 0x1234_5678_9abc_def0, u64::MAX - 1, u64::MAX];
        let weights = [0, 1, 2, 255, 0x8000, u16::MAX];
        for (la, wa) in loads.iter().flat_map(|&l| weights.map(|w| (l, w))) {
            for (lb, wb) in loads.iter().flat_map(|&l| weights.map(|w| (l, w))) {
                let exact = (u128::from(la) * u128::from(wa)).cmp(&(u128::from(lb) * u128::from(wb)));
                assert_eq!(wide_mul(la, wa).cmp(&wide_mul(lb, wb)), exact, "{la}*{wa} vs {lb}*{wb}");
            }
        }
    }

    #[test]
    fn pick_by_weight_follows_cumulative_shares() {
        let rows = pool();
        let b = Backends::new(&rows);
        let got: [Choice; 6] = core::array::from_fn(|p| b.pick_by_weight(p as u64));
        let want = [0, 3, 3, 3, 4, 0].map(Choice::Backend);
        assert_eq!(got, want);
    }

    #[test]
    fn nothing_eligible_means_no_choice() {
        let rows = [Backend::new(1, 1).down(), Backend::new(2, 0)];
        let b = Backends::new(&rows);
        assert_eq!(b.min_by_key(|r| r.active), Choice::NoChoice);
        assert_eq!(b.min_by_load_per_weight(|r| u64::from(r.active)), Choice::NoChoice);
        assert_eq!(b.pick_by_weight(7), Choice::NoChoice);
        assert_eq!(b.next_eligible(0), Choice::NoChoice);
        assert_eq!(Backends::new(&[]).pick_by_weight(7), Choice::NoChoice);
    }
}
