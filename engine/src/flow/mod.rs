//! Flow keys and the per-worker connection table.

pub mod key;
pub mod table;

pub use key::FlowKey;
pub use table::{ConnTable, Entry, FlowState, NO_PEER, Slot, Timeouts};
