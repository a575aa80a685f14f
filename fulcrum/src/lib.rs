//! The fulcrum daemon, as a library for its binary and the lab tests:
//! [`workers`] (per-core poll loops that run the data plane's engine over
//! fulcrum-io's AF_XDP sockets) and [`control`] (from a configuration to
//! running workers, reload, the control socket and its protocol, the
//! metrics endpoint), [`ha`] (roles and flow sync of a balancer pair) and
//! [`bgp`] (announcing the VIPs through a BGP speaker), and [`scaffold`]
//! (a new plugin crate, for `fulcrum plugin new`).
//! `main.rs` adds the command line.

pub mod bgp;
pub mod control;
pub mod error;
pub mod ha;
pub mod scaffold;
pub mod workers;

pub use error::{Context, Error};
