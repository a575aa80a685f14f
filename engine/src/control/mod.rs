//! The control plane: from a configuration to running workers, and what
//! the daemon learns from the kernel on the way.

pub mod apply;
pub mod daemon;
pub mod netinfo;
