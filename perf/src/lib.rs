//! Micro-benchmarks of the engine (`benches/engine.rs`); the line-rate
//! harness is the `fulcrum-linerate` crate in `linerate/` (see README.md).
