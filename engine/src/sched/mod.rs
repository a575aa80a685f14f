//! Choosing a backend for a new flow: the `Scheduler` trait, and native
//! Maglev, the built-in scheduler every other one falls back to.

pub mod maglev;

use crate::flow::FlowKey;

/// Picks the backend of a new flow. Called once per new flow, never per
/// packet. Returns an index into the VIP's backend list; `None`, an index
/// out of range or a drained backend makes the flow fall back to Maglev.
pub trait Scheduler: Send {
    fn pick(&mut self, flow: &FlowKey, flow_hash: u64) -> Option<usize>;
}
