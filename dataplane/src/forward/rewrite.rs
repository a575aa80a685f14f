//! In-place header rewrites with incremental checksum updates (RFC 1624).
//! They work on frames `wire::parse` accepted, at the offsets it returned.

use crate::flow::parse::Parsed;
use crate::types::Mac;
use crate::wire::{IpProtocol, Ipv4, Ipv6, be16, checksum, put16, tcp, udp};

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
pub fn set_endpoint(frame: &mut [u8], p: &Parsed, end: End, addr: &[u8; 16], port: u16) {
    let (old_addr, new_addr): (&[u8], &[u8]);
    let mut old_buf = [0u8; 16];
    let ip = &mut frame[p.l3..p.end];
    if p.v6 {
        let mut h = Ipv6::new_unchecked(ip);
        old_buf = if end == End::Src { h.src() } else { h.dst() };
        if end == End::Src {
            h.set_src(*addr)
        } else {
            h.set_dst(*addr)
        }
        (old_addr, new_addr) = (&old_buf[..], &addr[..]);
    } else {
        let mut h = Ipv4::new_unchecked(ip);
        old_buf[..4].copy_from_slice(&if end == End::Src { h.src() } else { h.dst() });
        let a4 = [addr[12], addr[13], addr[14], addr[15]];
        if end == End::Src {
            h.set_src(a4)
        } else {
            h.set_dst(a4)
        }
        (old_addr, new_addr) = (&old_buf[..4], &addr[12..]);
    }
    let port_at = p.l4 + if end == End::Src { 0 } else { 2 };
    let ports = matches!(p.key.proto, IpProtocol::TCP | IpProtocol::UDP) && !p.later_fragment();
    let old_port = if ports { be16(frame, port_at) } else { 0 };
    if let Some(at) = l4_checksum_at(p) {
        let old = be16(frame, at);
        if !(old == 0 && p.key.proto == IpProtocol::UDP && !p.v6) {
            let mut c = checksum::update(old, old_addr, new_addr);
            if ports {
                c = checksum::update16(c, old_port, port);
            }
            // In UDP a computed zero is sent as all ones (RFC 768).
            put16(frame, at, if c == 0 && p.key.proto == IpProtocol::UDP { 0xffff } else { c });
        }
    }
    if ports {
        put16(frame, port_at, port);
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

pub fn set_macs(frame: &mut [u8], src: Mac, dst: Mac) {
    frame[0..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
}
