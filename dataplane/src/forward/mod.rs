//! Rewrites for each forwarding mode, as functions over a frame and its
//! parsed headers. NAT is `rewrite::set_endpoint` on one or both ends, DSR
//! only `rewrite::set_macs`, tunnel mode `tunnel::encapsulate`.

pub mod icmp;
pub mod reset;
pub mod rewrite;
pub mod segment;
pub mod synproxy;
pub mod tunnel;
