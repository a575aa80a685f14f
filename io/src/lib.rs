//! fulcrum's system edge: everything that talks to the kernel, and every
//! `unsafe` block of the project, each with its SAFETY comment.
//!
//! - Frame I/O: the `PacketIo` trait the workers poll, with an AF_XDP
//!   backend ([`afxdp`]) and an in-memory one for tests ([`memory`]).
//! - [`xdp`]: the XDP programs (C in `bpf/`) that steer balanced traffic
//!   into the AF_XDP sockets or decapsulate tunnels, and their loading.
//! - [`sock`] and [`epoll`]: the nonblocking sockets, raw sockets and epoll
//!   set of the health checks; [`unix`]: process-level calls (the control
//!   socket's, signals, namespaces, clocks).
//! - [`netinfo`]: what the kernel knows of interfaces and neighbours;
//!   [`netlink`]: its neighbour table as it changes.
//! - [`thread_cpu_time`]: the calling thread's CPU clock.
//!
//! A frame is a [`FrameRef`]: a token for one 2 KiB buffer with the frame at
//! `start..start + len` and HEADROOM (256) free bytes before a received
//! frame, so encapsulation prepends in place. The dataplane loop is:
//!
//! ```text
//! io.recv(&mut batch)?;                 // reused Vec, no allocation
//! for f in &mut batch { let buf = io.buffer(&mut f.chunk); ... set f.start/len/port }
//! io.send(&mut to_send)?;               // f.port = egress interface
//! io.recycle(&mut dropped);
//! ```

// The one crate that allows it (denied workspace-wide): every block
// carries its SAFETY comment, which clippy checks.
#![allow(unsafe_code)]

pub mod afxdp;
pub mod epoll;
mod error;
mod frame;
pub mod memory;
pub mod netinfo;
pub mod netlink;
pub mod sock;
mod sys;
pub mod unix;
pub mod xdp;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

pub use error::IoError;
pub use frame::{Chunk, FRAME_SIZE, FrameRef, HEADROOM, PortId};
pub use sys::thread_cpu_time;

/// Moves frames in batches. Implementations allocate nothing per frame.
pub trait PacketIo {
    /// Appends received frames to `out` (at most one batch) and returns how
    /// many. Never blocks.
    fn recv(&mut self, out: &mut Vec<FrameRef>) -> Result<usize, IoError>;

    /// The whole FRAME_SIZE buffer of a frame's chunk (headroom included),
    /// or None if the frame came from another backend. Frames of one batch
    /// can be borrowed at the same time: each `Chunk` is unique.
    fn buffer<'a>(&'a self, chunk: &'a mut Chunk) -> Option<&'a mut [u8]>;

    /// Transmits every frame of `frames` on its `port` and empties the Vec.
    /// Frames that cannot be queued (ring full, out of bounds, unknown
    /// port) are recycled; returns how many were queued.
    fn send(&mut self, frames: &mut Vec<FrameRef>) -> Result<usize, IoError>;

    /// Gives frames back without sending them and empties the Vec.
    fn recycle(&mut self, frames: &mut Vec<FrameRef>);

    /// A free buffer to fill and send (bytes another worker handed over),
    /// with `start` at HEADROOM and `len` 0; None when none is free.
    fn alloc(&mut self) -> Option<FrameRef>;

    /// Sleeps until frames may be ready or `timeout` passes (idle loops).
    fn wait(&mut self, timeout: Duration) -> Result<(), IoError>;

    /// Returns at once after giving the device a chance to deliver (busy
    /// loops). Nothing to do for a backend without a device to poll.
    fn spin(&mut self) -> Result<(), IoError> {
        Ok(())
    }
}

/// How an XDP program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver (XDP_FLAGS_DRV_MODE).
    Native,
    /// In the kernel's generic path, any device (XDP_FLAGS_SKB_MODE).
    Generic,
    /// Native, falling back to generic when the driver refuses.
    Auto,
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
            XdpMode::Auto => "auto",
        })
    }
}

impl FromStr for XdpMode {
    type Err = IoError;

    fn from_str(s: &str) -> Result<Self, IoError> {
        match s {
            "native" => Ok(XdpMode::Native),
            "generic" => Ok(XdpMode::Generic),
            "auto" => Ok(XdpMode::Auto),
            _ => Err(IoError::InvalidArgument(format!("XDP mode `{s}`: expected native, generic or auto"))),
        }
    }
}
