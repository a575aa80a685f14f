//! Test support for fulcrum's packet path, never shipped: a frame builder
//! (golden packets, the fuzz corpus, the perf generator) and a one-VIP
//! engine fixture shared by the integration tests of several crates.

pub mod frame;
pub mod one_vip;
