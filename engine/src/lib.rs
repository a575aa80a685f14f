//! fulcrum: a kernel-bypass L4 load balancer.
//!
//! The packet path is pure: `Engine::process` takes a batch of frames and
//! sets a verdict on each, with no I/O. The I/O backends (AF_XDP,
//! in-memory) only move frames.

pub mod control;
pub mod dataplane;
pub mod engine;
pub mod flow;
pub mod forward;
pub mod health;
pub mod io;
pub mod packet;
pub mod sched;
pub mod services;
pub mod stats;
pub mod wire;

pub use engine::{Engine, EngineConfig, FlowValue, Load};
pub use packet::{DropReason, IfIndex, Packet, Verdict};
pub use services::{Backend, Interface, Mode, Services, VipSpec};
