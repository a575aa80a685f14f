//! Test support for fulcrum's packet path, never shipped: a frame builder
//! (golden packets, the fuzz corpus, the perf generator), a one-VIP engine
//! fixture shared by the integration tests of several crates, the list
//! of shipped plugins, and hand-made WebAssembly modules.

pub mod frame;
pub mod one_vip;
pub mod plugins;
pub mod wasm;
