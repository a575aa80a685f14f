//! fulcrum: a kernel-bypass L4 load balancer.
//!
//! The packet path is pure: frames in, verdicts out, no I/O. The I/O
//! backends (AF_XDP, in-memory) only move frames.

pub mod flow;
pub mod sched;
