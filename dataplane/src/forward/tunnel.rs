//! Encapsulation to a backend (L3 DSR): IP-in-IP and GUE.
//!
//! The backend decapsulates and answers the client directly. The outer
//! source varies per flow so that the backend NIC's RSS, which hashes the
//! outer header, spreads flows over its queues (as Katran does).

use crate::flow::parse::Parsed;
use crate::packet::{DropReason, Packet};
use crate::wire::ethernet::{ETH_HLEN, VLAN_HLEN};
use crate::wire::{IpProtocol, checksum, ipv4, ipv6, put16, udp};

/// IANA protocol numbers of the inner packet for IP-in-IP.
pub const GUE_DEFAULT_PORT: u16 = 6080;
const OUTER_TTL: u8 = 64;

/// How a tunnel VIP encapsulates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encap {
    /// IPv4 in IPv4 (protocol 4) or IPv6 in IPv6 (protocol 41).
    Ipip,
    /// GUE variant 1 ("direct IP"): UDP to `port` whose payload is the
    /// inner IP packet itself, no GUE header (the IP version nibble is the
    /// GUE version field).
    Gue { port: u16 },
}

impl Encap {
    /// Bytes the outer headers add.
    pub fn overhead(self, v6: bool) -> usize {
        let ip = if v6 { ipv6::IPV6_HLEN } else { ipv4::IPV4_MIN_HLEN };
        ip + if let Encap::Gue { .. } = self { udp::UDP_HLEN } else { 0 }
    }
}

/// The outer source for a flow: `base` with its host bits (those after
/// `prefix_len`, at most the low 32) taken from the flow hash.
pub fn outer_source(base: &[u8; 16], prefix_len: u8, v6: bool, flow_hash: u64) -> [u8; 16] {
    let total_bits: u32 = if v6 { 128 } else { 32 };
    let host_bits = total_bits.saturating_sub(u32::from(prefix_len)).min(32);
    let mask = if host_bits == 0 { 0 } else { u32::MAX >> (32 - host_bits) };
    let mut out = *base;
    let low = u32::from_be_bytes([out[12], out[13], out[14], out[15]]);
    let mixed = (low & !mask) | (flow_hash as u32 & mask);
    out[12..].copy_from_slice(&mixed.to_be_bytes());
    out
}

/// Prepends the outer headers in front of the IP packet, keeping the link
/// header (with any VLAN tag) in front. Link padding after the IP packet is
/// dropped. The caller has checked the MTU.
pub fn encapsulate(pkt: &mut Packet, p: &Parsed, encap: Encap, src: &[u8; 16], dst: &[u8; 16], flow_hash: u64) -> Result<(), DropReason> {
    let overhead = encap.overhead(p.v6);
    if pkt.headroom() < overhead {
        return Err(DropReason::NoRoom);
    }
    let inner_len = p.end - p.l3;
    let new_start = pkt.start - overhead;
    // The link header, 14 or 18 bytes, moves to the new start: always 18
    // through a local array, so no memmove call; what follows it lands where
    // the outer header is written next (the overhead is at least 20).
    const LINK: usize = ETH_HLEN + VLAN_HLEN;
    debug_assert!(p.l3 <= LINK && overhead >= LINK);
    let mut link = [0u8; LINK];
    link.copy_from_slice(&pkt.buf[pkt.start..pkt.start + LINK]);
    pkt.buf[new_start..new_start + LINK].copy_from_slice(&link);
    pkt.start = new_start;
    pkt.len = p.l3 + overhead + inner_len;
    let outer = &mut pkt.buf[new_start + p.l3..new_start + pkt.len];
    let (ip_len, inner_proto) = if p.v6 { (ipv6::IPV6_HLEN, IpProtocol::IPV6) } else { (ipv4::IPV4_MIN_HLEN, IpProtocol::IPIP) };
    let proto = if let Encap::Gue { .. } = encap { IpProtocol::UDP } else { inner_proto };
    let outer_len = outer.len();
    if p.v6 {
        ipv6::write_header(outer, (outer_len - ip_len) as u16, proto, OUTER_TTL, *src, *dst);
    } else {
        let (s, d) = ([src[12], src[13], src[14], src[15]], [dst[12], dst[13], dst[14], dst[15]]);
        ipv4::write_header(outer, outer_len as u16, OUTER_TTL, proto, s, d, true);
    }
    if let Encap::Gue { port } = encap {
        // The source port carries flow entropy for the backend's RSS.
        let sport = 0xc000 | (flow_hash >> 32) as u16 & 0x3fff;
        let (hdr, rest) = outer.split_at_mut(ip_len);
        udp::write_header(rest, sport, port, (outer_len - ip_len) as u16);
        // IPv4 allows a zero UDP checksum; IPv6 does not.
        if p.v6 {
            let pseudo = checksum::pseudo_header(&hdr[8..24], &hdr[24..40], IpProtocol::UDP, rest.len() as u32);
            let c = checksum::checksum(rest, pseudo);
            put16(rest, udp::CHECKSUM_AT, if c == 0 { 0xffff } else { c });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::key::v4_mapped;

    #[test]
    fn outer_source_keeps_prefix_and_varies_host_bits() {
        let base = v4_mapped([198, 18, 200, 0]);
        let a = outer_source(&base, 24, false, 0x1234_5678_9abc_def0);
        assert_eq!(&a[..15], &base[..15]);
        assert_eq!(a[15], 0xf0);
        let all = (0..64u64).map(|h| outer_source(&base, 24, false, h * 0x9e37_79b9)[15]).collect::<std::collections::HashSet<_>>();
        assert!(all.len() > 32, "host bits spread: {}", all.len());
        assert_eq!(outer_source(&base, 32, false, u64::MAX), base);
        let b6: [u8; 16] = "2001:db8:ff::".parse::<std::net::Ipv6Addr>().unwrap().octets();
        let a6 = outer_source(&b6, 64, true, 0xdead_beef);
        assert_eq!(&a6[..12], &b6[..12]);
        assert_eq!(&a6[12..], &0xdead_beefu32.to_be_bytes());
    }
}
