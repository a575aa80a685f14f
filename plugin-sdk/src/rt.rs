//! The glue behind the exports `export_plugin!` generates. Not a stable API.
//!
//! Everything the host controls (n, the row contents, the health arguments)
//! is checked here once, so plugin code only ever sees in-range data and an
//! out-of-range request becomes -1 instead of a trap.

use crate::{Backend, Backends, Choice, Flow, HealthInput, HealthVerdict, StateRegion};

/// The rows the host filled, or none when `n` exceeds the capacity (a host
/// bug: the plugin then answers "no choice" rather than trapping).
pub fn rows(region: &StateRegion, n: u32) -> &[Backend] {
    usize::try_from(n).ok().and_then(|n| region.rows.get(..n)).unwrap_or(&[])
}

/// `lb_pick` over a given region: -1 for no choice or an index that is not
/// below `n` (so a faulty plugin cannot hand the host a bad index).
pub fn pick_in(region: &StateRegion, n: u32, pick: impl FnOnce(&Flow, &Backends) -> Choice) -> i32 {
    let backends = Backends::new(rows(region, n));
    match pick(&region.flow, &backends) {
        // i < n <= CAPACITY, so the cast cannot truncate.
        Choice::Backend(i) if i < backends.len() => i as i32,
        _ => -1,
    }
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
pub use region::{pick, state_ptr, update};

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
        let region = REGION.0.get();
        // SAFETY: no reference into the region is alive during an export
        // call other than the one that creates it.
        unsafe { (*region).header = crate::Header::V1 };
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
    fn health_glue_encodes_the_policy_verdict() {
        let up = HealthVerdict::UP_BIT;
        assert_eq!(health(0, 1, 10, 2, 0, 5, 8, |i| i.rise_fall(2, 3)), up | 8);
        assert_eq!(health(0, 0, 10, 0, 3, up | 5, 8, |i| i.rise_fall(2, 3)), 8);
    }
}
