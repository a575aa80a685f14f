//! Zero-copy header views over byte buffers and checksum helpers.
//!
//! Every view is built with `new_checked`, which verifies every length the
//! accessors rely on; after that no accessor can panic on any input.

pub mod checksum;
pub mod ethernet;
pub mod icmp;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod udp;

use std::fmt;

pub use ethernet::Ethernet;
pub use icmp::Icmp;
pub use ipv4::Ipv4;
pub use ipv6::Ipv6;
pub use tcp::Tcp;
pub use udp::Udp;

/// An IP protocol number (the IPv4 protocol field, the IPv6 next header).
/// Open rather than a closed enum: a frame may carry any of the 256
/// values and a flow keeps the byte it saw; the constants name the ones
/// the balancer handles.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(transparent)]
pub struct IpProtocol(pub u8);

impl IpProtocol {
    pub const ICMP: IpProtocol = IpProtocol(1);
    /// IPv4 in IP (IPIP).
    pub const IPIP: IpProtocol = IpProtocol(4);
    pub const TCP: IpProtocol = IpProtocol(6);
    pub const UDP: IpProtocol = IpProtocol(17);
    /// IPv6 in IP.
    pub const IPV6: IpProtocol = IpProtocol(41);
    pub const ICMPV6: IpProtocol = IpProtocol(58);

    /// The lower-case name used in VIP names and metrics, if it has one.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            IpProtocol::ICMP => "icmp",
            IpProtocol::IPIP => "ipip",
            IpProtocol::TCP => "tcp",
            IpProtocol::UDP => "udp",
            IpProtocol::IPV6 => "ipv6",
            IpProtocol::ICMPV6 => "icmpv6",
            _ => return None,
        })
    }
}

impl fmt::Display for IpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "proto{}", self.0),
        }
    }
}

impl fmt::Debug for IpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a header view could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// The buffer ends before the header (or the length it declares).
    Truncated,
    /// A field holds a value the header cannot have (version, length).
    Malformed,
}

// One range check and one load per field: indexing each byte apart costs
// a check per byte, which the compiler does not always merge.
#[inline]
pub fn be16(b: &[u8], at: usize) -> u16 {
    let mut w = [0; 2];
    w.copy_from_slice(&b[at..at + 2]);
    u16::from_be_bytes(w)
}

#[inline]
pub fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[inline]
pub fn be32(b: &[u8], at: usize) -> u32 {
    let mut w = [0; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(w)
}

#[inline]
pub fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
