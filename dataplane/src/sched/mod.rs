//! Choosing a backend for a new flow: the `Scheduler` trait, and native
//! Maglev, the built-in scheduler every other one falls back to.

pub mod maglev;

use crate::flow::FlowKey;

/// What a scheduler knows of one backend of the VIP, in the VIP's order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendState {
    /// Stable identity (the Maglev ident: a hash of address and port).
    pub id: u64,
    /// 0 drains: the backend must not be picked.
    pub weight: u32,
    pub up: bool,
    /// Established TCP connections and live UDP flows this worker sent to
    /// the backend.
    pub active: u32,
    /// Half-open connections (SYN seen, not yet established).
    pub pending: u32,
    /// Smoothed health-check response time; 0 = no sample yet.
    pub rtt_us: u32,
    pub bytes_per_sec: u64,
}

impl BackendState {
    /// Whether a new flow may go to this backend.
    pub fn usable(&self) -> bool {
        self.up && self.weight > 0
    }
}

/// Picks the backend of a new flow. Called once per new flow, never per
/// packet. Returns an index into `backends`; `None`, an index out of range
/// or an unusable backend makes the flow fall back to Maglev.
pub trait Scheduler: Send {
    fn pick(&mut self, flow: &FlowKey, flow_hash: u64, backends: &[BackendState]) -> Option<usize>;
}
