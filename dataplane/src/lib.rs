//! fulcrum's packet path, pure: `Engine::process` takes a batch of frames
//! and sets a verdict on each, with no I/O and no threads, in safe Rust.
//! The I/O backends (the `fulcrum-io` crate) only move frames.
//!
//! Modules, from the bottom up; each uses only those above it in this list:
//!
//! ```text
//! types          VipId, BackendId, IfIndex, Mac
//! wire           IpProtocol, checked header views, checksums
//! packet         a frame in a batch, its verdict and drop reasons
//! flow           5-tuple keys, frame parsing, connection table, sticky table
//! stats          counters per VIP, backend and drop reason
//! sched          the Scheduler trait, backend rows, native Maglev
//! health_policy  how check results become up/down and a weight
//! forward        NAT, DSR, tunnel, ICMP and RST rewrites, the SYN proxy
//! services       VIPs, backends and interfaces as the workers see them
//! engine         process a batch -> verdicts
//! ```

pub mod engine;
pub mod flow;
pub mod forward;
pub mod health_policy;
pub mod packet;
pub mod sched;
pub mod services;
pub mod stats;
pub mod types;
pub mod wire;

pub use engine::{Engine, EngineConfig, EngineError, FlowRow, FlowValue, Shared};
pub use packet::{DropReason, Packet, Verdict};
pub use sched::readings::Load;
pub use services::{Backend, Interface, Mode, Services, SynProxy, VipSpec};
pub use types::{BackendId, IfIndex, Mac, VipId};
