//! In-place header rewrites with incremental checksum updates (RFC 1624).
//! They work on frames `wire::parse` accepted, at the offsets it returned.

use crate::flow::parse::Parsed;
use crate::types::Mac;
use crate::wire::checksum::Incremental;
use crate::wire::{IpProtocol, Ipv4, Ipv6, be16, be32, ipv4, ipv6, put16, put32, tcp, udp};

/// Which end of a packet to rewrite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Src,
    Dst,
}

/// Sets one end's address (16 bytes, IPv4 v4-mapped) and port, keeping the
/// IPv4 header checksum and the TCP/UDP/ICMPv6 checksum valid. A fragment
/// after the first has no transport header: only its address changes (the
/// first fragment's checksum update covers the whole datagram).
///
/// The address's change is summed once, as 32-bit words, and applied to
/// both checksums it is in with the port's: a third of the instructions
/// of updating each checksum for each field apart.
#[inline]
pub fn set_endpoint(frame: &mut [u8], p: &Parsed, end: End, addr: &[u8; 16], port: u16) {
    let src = end == End::Src;
    let mut change = Incremental::changes();
    if p.v6 {
        let at = p.l3 + if src { ipv6::SRC_AT } else { ipv6::DST_AT };
        for i in (0..16).step_by(4) {
            change.replace32(be32(frame, at + i), be32(addr, i));
        }
        frame[at..at + 16].copy_from_slice(addr);
    } else {
        let at = p.l3 + if src { ipv4::SRC_AT } else { ipv4::DST_AT };
        change.replace32(be32(frame, at), be32(addr, 12));
        put32(frame, at, be32(addr, 12));
        let header = p.l3 + ipv4::CHECKSUM_AT;
        put16(frame, header, change.apply(be16(frame, header)));
    }
    let port_at = p.l4 + if src { 0 } else { 2 };
    let ports = matches!(p.key.proto, IpProtocol::TCP | IpProtocol::UDP) && !p.later_fragment();
    if ports {
        change.replace16(be16(frame, port_at), port);
        put16(frame, port_at, port);
    }
    if let Some(at) = l4_checksum_at(p) {
        let old = be16(frame, at);
        if !(old == 0 && p.key.proto == IpProtocol::UDP && !p.v6) {
            let c = change.apply(old);
            // In UDP a computed zero is sent as all ones (RFC 768).
            put16(frame, at, if c == 0 && p.key.proto == IpProtocol::UDP { 0xffff } else { c });
        }
    }
}

/// Where the L4 checksum that covers the pseudo-header lives, if any and
/// if it is inside the packet (a packet quoted in an ICMP error may be cut
/// short after the ports).
fn l4_checksum_at(p: &Parsed) -> Option<usize> {
    if p.later_fragment() {
        return None;
    }
    let at = match p.key.proto {
        IpProtocol::TCP => p.l4 + tcp::CHECKSUM_AT,
        IpProtocol::UDP => p.l4 + udp::CHECKSUM_AT,
        IpProtocol::ICMPV6 => p.l4 + crate::wire::icmp::CHECKSUM_AT,
        _ => return None,
    };
    (at + 2 <= p.end).then_some(at)
}

/// Decrements TTL / hop limit as a router does; false when the packet
/// must not be forwarded (it would arrive with zero).
#[inline]
pub fn decrement_ttl(frame: &mut [u8], p: &Parsed) -> bool {
    if p.ttl <= 1 {
        return false;
    }
    let ip = &mut frame[p.l3..p.end];
    if p.v6 {
        Ipv6::new_unchecked(ip).decrement_hop_limit();
    } else {
        Ipv4::new_unchecked(ip).decrement_ttl();
    }
    true
}

#[inline]
pub fn set_macs(frame: &mut [u8], src: Mac, dst: Mac) {
    let (d, s) = frame[..12].split_at_mut(6);
    d.copy_from_slice(&dst);
    s.copy_from_slice(&src);
}
