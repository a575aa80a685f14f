//! The glue behind the exports `export_plugin!` generates. Not a stable API.
//!
//! Everything the host controls (n, the row contents, the health arguments)
//! is checked here once, so plugin code only ever sees in-range data and an
//! out-of-range request becomes -1 instead of a trap.

use crate::{BATCH_CAPACITY, Backend, Backends, BatchRegion, Choice, Flow, HealthInput, HealthVerdict, StateRegion};

/// The rows the host filled, or none when `n` exceeds the capacity (a host
/// bug: the plugin then answers "no choice" rather than trapping).
pub fn rows(region: &StateRegion, n: u32) -> &[Backend] {
    usize::try_from(n).ok().and_then(|n| region.rows.get(..n)).unwrap_or(&[])
}

/// `lb_pick` over a given region: -1 for no choice or an index that is not
/// below `n` (so a faulty plugin cannot hand the host a bad index).
pub fn pick_in(region: &StateRegion, n: u32, pick: impl FnOnce(&Flow, &Backends) -> Choice) -> i32 {
    choose(&region.flow, rows(region, n), pick)
}

fn choose(flow: &Flow, rows: &[Backend], pick: impl FnOnce(&Flow, &Backends) -> Choice) -> i32 {
    let backends = Backends::new(rows);
    match pick(flow, &backends) {
        // i < n <= CAPACITY, so the cast cannot truncate.
        Choice::Backend(i) if i < backends.len() => i as i32,
        _ => -1,
    }
}

/// `lb_pick_batch` over given regions: each of the first `flows` flows
/// picked in turn, its answer written to `choices`, and counted on its
/// backend's row (pending for TCP, whose flows open with a SYN, active
/// otherwise) before the next pick, as the host would count it had the
/// flows come one by one. Returns the flows decided, or -1 when `flows`
/// exceeds the batch capacity.
pub fn pick_batch_in(region: &mut StateRegion, batch: &mut BatchRegion, n: u32, flows: u32, mut pick: impl FnMut(&Flow, &Backends) -> Choice) -> i32 {
    let Some(m) = usize::try_from(flows).ok().filter(|&m| m <= BATCH_CAPACITY) else { return -1 };
    let n = usize::try_from(n).ok().filter(|&n| n <= region.rows.len()).unwrap_or(0);
    for (flow, choice) in batch.flows[..m].iter().zip(&mut batch.choices[..m]) {
        *choice = choose(flow, &region.rows[..n], &mut pick);
        if let Some(row) = usize::try_from(*choice).ok().and_then(|i| region.rows.get_mut(i)) {
            let count = if flow.proto == Flow::TCP { &mut row.pending } else { &mut row.active };
            *count = count.saturating_add(1);
        }
    }
    m as i32
}

/// `lb_update` over a given region.
pub fn update_in(region: &StateRegion, n: u32, update: impl FnOnce(&Backends)) {
    update(&Backends::new(rows(region, n)))
}

/// `lb_health`: decodes the arguments, encodes the verdict.
#[allow(clippy::too_many_arguments)] // mirrors the export's signature one to one
pub fn health(
    index: u32,
    ok: u32,
    latency_us: u32,
    successes: u32,
    failures: u32,
    current: u32,
    configured_weight: u32,
    policy: impl FnOnce(&HealthInput) -> HealthVerdict,
) -> u32 {
    policy(&HealthInput::from_abi(index, ok, latency_us, successes, failures, current, configured_weight)).encode()
}

#[cfg(target_arch = "wasm32")]
pub use region::{batch_ptr, pick, pick_batch, state_ptr, state_ptr_with, update};

#[cfg(target_arch = "wasm32")]
mod region {
    use super::*;
    use core::cell::UnsafeCell;

    /// The module's one state region. Zero-initialised, so it lives in
    /// .bss and adds nothing to the .wasm file.
    struct Region(UnsafeCell<StateRegion>);

    // SAFETY: wasm32-unknown-unknown (without the atomics feature) runs one
    // thread, and the host only writes the region between export calls.
    unsafe impl Sync for Region {}

    static REGION: Region = Region(UnsafeCell::new(StateRegion::ZEROED));

    /// `lb_state_ptr`: writes the header, then returns the region's address.
    pub fn state_ptr() -> u32 {
        state_ptr_with(crate::Header::CURRENT)
    }

    /// `lb_state_ptr` with another header than this SDK's (a module that
    /// declares an older ABI version).
    pub fn state_ptr_with(header: crate::Header) -> u32 {
        let region = REGION.0.get();
        // SAFETY: no reference into the region is alive during an export
        // call other than the one that creates it.
        unsafe { (*region).header = header };
        region as usize as u32
    }

    fn with_region<R>(f: impl FnOnce(&StateRegion) -> R) -> R {
        // SAFETY: as above; this shared reference lives for one call only,
        // while the host does not write.
        f(unsafe { &*REGION.0.get() })
    }

    pub fn pick(n: u32, pick: impl FnOnce(&Flow, &Backends) -> Choice) -> i32 {
        with_region(|r| pick_in(r, n, pick))
    }

    pub fn update(n: u32, update: impl FnOnce(&Backends)) {
        with_region(|r| update_in(r, n, update))
    }

    struct Batch(UnsafeCell<BatchRegion>);

    // SAFETY: as for `Region`.
    unsafe impl Sync for Batch {}

    static BATCH: Batch = Batch(UnsafeCell::new(BatchRegion::ZEROED));

    /// `lb_batch_ptr`: the batch region's address.
    pub fn batch_ptr() -> u32 {
        BATCH.0.get() as usize as u32
    }

    pub fn pick_batch(n: u32, flows: u32, pick: impl FnMut(&Flow, &Backends) -> Choice) -> i32 {
        // SAFETY: the two regions are distinct statics; these are the only
        // references into them during this call, while the host does not
        // write.
        let (region, batch) = unsafe { (&mut *REGION.0.get(), &mut *BATCH.0.get()) };
        pick_batch_in(region, batch, n, flows, pick)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::{CAPACITY, Choice};
    use std::boxed::Box;

    fn region(n: usize) -> Box<StateRegion> {
        let mut r = Box::new(StateRegion::ZEROED);
        for (i, row) in r.rows.iter_mut().take(n).enumerate() {
            *row = Backend::new(i as u64, 1);
        }
        r.flow.hash = 42;
        r
    }

    #[test]
    fn pick_sees_exactly_n_rows_and_the_flow() {
        let r = region(3);
        assert_eq!(pick_in(&r, 3, |f, b| Choice::Backend((f.hash as usize) % b.len())), 0);
        assert_eq!(pick_in(&r, 3, |_, b| Choice::Backend(b.len() - 1)), 2);
    }

    #[test]
    fn out_of_range_requests_and_answers_become_minus_one() {
        let r = region(3);
        assert_eq!(pick_in(&r, 3, |_, _| Choice::Backend(3)), -1);
        assert_eq!(pick_in(&r, 3, |_, _| Choice::NoChoice), -1);
        // n above the capacity: the plugin sees no rows at all.
        assert_eq!(pick_in(&r, CAPACITY as u32 + 1, |_, b| b.len().checked_sub(1).into()), -1);
        assert_eq!(pick_in(&r, u32::MAX, |_, b| Choice::Backend(b.len())), -1);
        assert_eq!(pick_in(&r, CAPACITY as u32, |_, b| Choice::Backend(b.len() - 1)), CAPACITY as i32 - 1);
        let mut seen = usize::MAX;
        update_in(&r, u32::MAX, |b| seen = b.len());
        assert_eq!(seen, 0);
    }

    #[test]
    fn a_batch_counts_each_pick_before_the_next() {
        let mut r = region(3);
        let mut batch = Box::new(BatchRegion::ZEROED);
        for (i, f) in batch.flows.iter_mut().enumerate().take(5) {
            *f = Flow::v4([198, 18, 0, i as u8], 1000, [198, 18, 0, 100], 80, if i == 4 { 17 } else { 6 }, i as u64);
        }
        let least_loaded = |_: &Flow, b: &Backends| b.min_by_key(|b| u64::from(b.active) + u64::from(b.pending));
        assert_eq!(pick_batch_in(&mut r, &mut batch, 3, 5, least_loaded), 5);
        // One flow each, then round again: the rows saw every pick.
        assert_eq!(batch.choices[..5], [0, 1, 2, 0, 1]);
        let load = |b: &Backend| (b.pending, b.active);
        assert_eq!([load(&r.rows[0]), load(&r.rows[1]), load(&r.rows[2])], [(2, 0), (1, 1), (1, 0)]);
        // A decline is -1 and counts nowhere; too many flows is refused.
        assert_eq!(pick_batch_in(&mut r, &mut batch, 3, 1, |_, _| Choice::NoChoice), 1);
        assert_eq!((batch.choices[0], load(&r.rows[0])), (-1, (2, 0)));
        assert_eq!(pick_batch_in(&mut r, &mut batch, 3, BATCH_CAPACITY as u32 + 1, least_loaded), -1);
    }

    #[test]
    fn health_glue_encodes_the_policy_verdict() {
        let up = HealthVerdict::UP_BIT;
        assert_eq!(health(0, 1, 10, 2, 0, 5, 8, |i| i.rise_fall(2, 3)), up | 8);
        assert_eq!(health(0, 0, 10, 0, 3, up | 5, 8, |i| i.rise_fall(2, 3)), 8);
    }
}
