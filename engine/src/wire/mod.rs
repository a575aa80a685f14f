//! Zero-copy header views over byte buffers and checksum helpers.
//!
//! Every view is built with `new_checked`, which verifies every length the
//! accessors rely on; after that no accessor can panic on any input.

pub mod build;
pub mod checksum;
pub mod ethernet;
pub mod icmp;
pub mod ipv4;
pub mod ipv6;
pub mod parse;
pub mod tcp;
pub mod udp;

pub use ethernet::Ethernet;
pub use icmp::Icmp;
pub use ipv4::Ipv4;
pub use ipv6::Ipv6;
pub use parse::{ParseError, Parsed, parse};
pub use tcp::Tcp;
pub use udp::Udp;

/// Why a header view could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// The buffer ends before the header (or the length it declares).
    Truncated,
    /// A field holds a value the header cannot have (version, length).
    Malformed,
}

#[inline]
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline]
pub(crate) fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}
