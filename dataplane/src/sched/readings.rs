//! What the workers observe of each backend, for the schedulers of every
//! worker: connections and byte rates (each worker writes its own row,
//! readers sum the rows, so a scheduler sees the whole daemon's load), and
//! TCP handshake times of NAT flows. Relaxed atomics with one writer per
//! cell except the handshake time (any worker may set it: each holds an
//! estimate of the same quantity), so no lock and no read-modify-write
//! on the packet path; a reader may miss the other workers' current batch.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use crate::flow::table::FlowState;
use crate::types::BackendId;

/// One worker's view of one backend.
#[derive(Debug, Default)]
struct Cell {
    active: AtomicU32,
    pending: AtomicU32,
    bytes_per_sec: AtomicU64,
}

/// A handshake time this old or older no longer stands for the backend
/// (it saw no new NAT connection for that long): the health checks' time
/// applies again.
pub const HANDSHAKE_FRESH_MS: u32 = 10_000;

/// The readings of every backend by every worker. See the module docs.
#[derive(Debug)]
pub struct Readings {
    backends: usize,
    /// Worker-major: worker w's cells are `cells[w * backends..][..backends]`.
    cells: Box<[Cell]>,
    handshake_us: Box<[AtomicU32]>,
    handshake_at_ms: Box<[AtomicU32]>,
}

/// Connections of one backend, by the state of their entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    pub active: u32,
    pub pending: u32,
}

impl Load {
    /// Counts a flow in `state` in (`delta` 1) or out (-1). A UDP flow is
    /// active until its entry expires: load-aware schedulers see UDP
    /// backends' load as TCP ones'.
    pub fn count(&mut self, state: FlowState, delta: i32) {
        let n = match state {
            FlowState::SynSeen => &mut self.pending,
            FlowState::Established | FlowState::Udp => &mut self.active,
            FlowState::Closing => return,
        };
        *n = n.saturating_add_signed(delta);
    }
}

impl Readings {
    /// Room for `workers` workers and backend ids `0..backends`.
    pub fn new(workers: usize, backends: usize) -> Readings {
        let atomics = |n: usize| (0..n).map(|_| AtomicU32::new(0)).collect();
        Readings {
            backends,
            cells: (0..workers * backends).map(|_| Cell::default()).collect(),
            handshake_us: atomics(backends),
            handshake_at_ms: atomics(backends),
        }
    }

    fn cell(&self, worker: u16, backend: BackendId) -> Option<&Cell> {
        let b = usize::from(backend);
        (b < self.backends).then(|| self.cells.get(usize::from(worker) * self.backends + b)).flatten()
    }

    /// Worker `worker`'s connections to `backend`; only that worker calls it.
    #[inline]
    pub fn set_load(&self, worker: u16, backend: BackendId, load: Load) {
        if let Some(c) = self.cell(worker, backend) {
            c.active.store(load.active, Relaxed);
            c.pending.store(load.pending, Relaxed);
        }
    }

    /// Worker `worker`'s own connections to `backend`.
    pub fn worker_load(&self, worker: u16, backend: BackendId) -> Load {
        self.cell(worker, backend).map_or_else(Load::default, |c| Load { active: c.active.load(Relaxed), pending: c.pending.load(Relaxed) })
    }

    /// Worker `worker`'s byte rate to and from `backend`; only that worker
    /// calls it.
    pub fn set_rate(&self, worker: u16, backend: BackendId, bytes_per_sec: u64) {
        if let Some(c) = self.cell(worker, backend) {
            c.bytes_per_sec.store(bytes_per_sec, Relaxed);
        }
    }

    /// The whole daemon's connections to `backend`.
    pub fn load(&self, backend: BackendId) -> Load {
        self.column(backend).fold(Load::default(), |l, c| Load {
            active: l.active.saturating_add(c.active.load(Relaxed)),
            pending: l.pending.saturating_add(c.pending.load(Relaxed)),
        })
    }

    /// The whole daemon's byte rate to and from `backend`.
    pub fn rate(&self, backend: BackendId) -> u64 {
        self.column(backend).map(|c| c.bytes_per_sec.load(Relaxed)).sum()
    }

    fn column(&self, backend: BackendId) -> impl Iterator<Item = &Cell> {
        let b = usize::from(backend);
        let cells: &[Cell] = if b < self.backends { &self.cells[b..] } else { &[] };
        cells.iter().step_by(self.backends.max(1))
    }

    /// A smoothed handshake time of `backend`, at `now_ms`.
    pub fn set_handshake(&self, backend: BackendId, us: u32, now_ms: u32) {
        if let (Some(t), Some(at)) = (self.handshake_us.get(usize::from(backend)), self.handshake_at_ms.get(usize::from(backend))) {
            t.store(us, Relaxed);
            at.store(now_ms, Relaxed);
        }
    }

    /// `backend`'s smoothed handshake time in µs if one was measured in the
    /// last `HANDSHAKE_FRESH_MS` before `now_ms`.
    pub fn handshake(&self, backend: BackendId, now_ms: u32) -> Option<u32> {
        let b = usize::from(backend);
        let (us, at) = (self.handshake_us.get(b)?.load(Relaxed), self.handshake_at_ms.get(b)?.load(Relaxed));
        (us != 0 && now_ms.wrapping_sub(at) < HANDSHAKE_FRESH_MS).then_some(us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_and_rates_sum_over_workers() {
        let r = Readings::new(3, 4);
        r.set_load(0, 2, Load { active: 5, pending: 1 });
        r.set_load(2, 2, Load { active: 7, pending: 0 });
        r.set_load(1, 3, Load { active: 100, pending: 100 });
        assert_eq!(r.load(2), Load { active: 12, pending: 1 });
        assert_eq!(r.worker_load(2, 2), Load { active: 7, pending: 0 });
        r.set_rate(0, 1, 1000);
        r.set_rate(1, 1, 500);
        assert_eq!(r.rate(1), 1500);
        assert_eq!(r.rate(0), 0);
        // Out of range: nothing, never a panic.
        r.set_load(3, 0, Load { active: 1, pending: 1 });
        r.set_load(0, 4, Load { active: 1, pending: 1 });
        assert_eq!(r.load(4), Load::default());
        assert_eq!(r.rate(9), 0);
    }

    #[test]
    fn a_handshake_time_goes_stale() {
        let r = Readings::new(1, 2);
        assert_eq!(r.handshake(0, 0), None);
        r.set_handshake(0, 250, 1_000);
        assert_eq!(r.handshake(0, 1_000 + HANDSHAKE_FRESH_MS - 1), Some(250));
        assert_eq!(r.handshake(0, 1_000 + HANDSHAKE_FRESH_MS), None);
    }
}
