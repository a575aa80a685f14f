//! Flow keys and the per-worker connection table.

pub mod key;

pub use key::FlowKey;
