//! Flow keys, parsing a frame into its flow, the flows of IP fragments, the clients' neighbours
//! (where replies go on the link), full-NAT source ports, the per-worker connection table, the sticky table of
//! session persistence and the entries flow sync sends between balancers.

pub mod fragments;
pub mod key;
pub mod neighbours;
pub mod parse;
pub mod snat;
pub mod sticky;
pub mod sync;
pub mod table;

pub use key::FlowKey;
pub use parse::{ParseError, Parsed, parse};
pub use table::{ConnTable, Entry, FlowState, NO_PEER, Slot, Timeouts};
