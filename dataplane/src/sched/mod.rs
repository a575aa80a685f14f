//! Choosing a backend for a new flow: the `Scheduler` trait, and native
//! Maglev, the built-in scheduler every other one falls back to.

pub mod ahead;
pub mod maglev;
pub mod readings;

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

use crate::flow::FlowKey;
use crate::types::BackendId;
use crate::wire::IpProtocol;

/// What a scheduler knows of one backend of the VIP, in the VIP's order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendState {
    /// Stable identity (the Maglev ident: a hash of address and port).
    pub id: u64,
    /// 0 drains: the backend must not be picked.
    pub weight: u32,
    pub up: bool,
    /// Established TCP connections and live UDP flows the daemon (every
    /// worker) sent to the backend (`readings::Readings`).
    pub active: u32,
    /// Half-open connections (SYN seen, not yet established).
    pub pending: u32,
    /// Smoothed response time: in nat modes the TCP handshake time the
    /// workers measure, while fresh; else the health checks'
    /// (`Latencies`); 0 = no sample yet.
    pub rtt_us: u32,
    /// Bytes per second to and from the backend, both directions, over
    /// about the last second (every worker's).
    pub bytes_per_sec: u64,
}

impl BackendState {
    /// Whether a new flow may go to this backend.
    pub fn usable(&self) -> bool {
        self.up && self.weight > 0
    }

    /// Counts a new flow of `proto` placed on this backend, as the
    /// readings will once it opens: a TCP flow opens half-open.
    pub fn count_new(&mut self, proto: IpProtocol) {
        let n = if proto == IpProtocol::TCP { &mut self.pending } else { &mut self.active };
        *n = n.saturating_add(1);
    }
}

/// Picks the backend of a new flow. Called once per new flow, never per
/// packet. Returns an index into `backends`; `None`, an index out of range
/// or an unusable backend makes the flow fall back to Maglev.
pub trait Scheduler: Send {
    fn pick(&mut self, flow: &FlowKey, flow_hash: u64, backends: &[BackendState]) -> Option<usize>;

    /// Picks for several new flows of one VIP, `out[j]` for `flows[j]`, as
    /// if they came one after another: each placed flow is counted in
    /// `backends` (`BackendState::count_new`) before the next is picked.
    /// A scheduler whose calls cost more than its decisions (a plugin)
    /// answers them all in one call.
    fn pick_batch(&mut self, flows: &[(FlowKey, u64)], backends: &mut [BackendState], out: &mut [Option<usize>]) {
        pick_each(self, flows, backends, out);
    }
}

/// `Scheduler::pick_batch` one `pick` at a time.
pub fn pick_each<S: Scheduler + ?Sized>(sched: &mut S, flows: &[(FlowKey, u64)], backends: &mut [BackendState], out: &mut [Option<usize>]) {
    for ((key, hash), answer) in flows.iter().zip(out) {
        *answer = sched.pick(key, *hash, backends);
        if let Some(b) = answer.and_then(|i| backends.get_mut(i)) {
            b.count_new(key.proto);
        }
    }
}

/// Each backend's smoothed response time in µs, by backend id (0: no
/// sample yet): written by the health checks at each passed check, read by
/// the workers when they hand a scheduler its rows. Relaxed atomics: a row
/// may be one check behind.
pub struct Latencies(Box<[AtomicU32]>);

impl Latencies {
    /// Room for backend ids `0..backends`.
    pub fn new(backends: usize) -> Latencies {
        Latencies((0..backends).map(|_| AtomicU32::new(0)).collect())
    }

    #[inline]
    pub fn get(&self, backend: BackendId) -> u32 {
        self.0.get(usize::from(backend)).map_or(0, |a| a.load(Relaxed))
    }

    pub fn set(&self, backend: BackendId, us: u32) {
        if let Some(a) = self.0.get(usize::from(backend)) {
            a.store(us, Relaxed);
        }
    }
}
