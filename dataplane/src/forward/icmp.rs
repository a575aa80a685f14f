//! ICMP the balancer sends and ICMP errors it routes.

use super::rewrite::{End, set_endpoint};
use crate::flow::parse::Parsed;
use crate::packet::{DropReason, Packet};
use crate::types::Mac;
use crate::wire::{IpProtocol, checksum, icmp, ipv4, ipv6, put16};

/// A router never quotes more than this much of IPv4 (RFC 1812: the error
/// fits in 576 bytes) nor of IPv6 (RFC 4443: it fits in the 1280 minimum).
const V4_MAX_ERROR: usize = 576;
const V6_MAX_ERROR: usize = 1280;
const REPLY_TTL: u8 = 64;

/// Turns the frame, in place, into "fragmentation needed" (IPv4) or
/// "packet too big" (IPv6) back to its sender, from the address it was sent
/// to, advertising `mtu` for the inner packet. The caller sends it back out
/// of the ingress interface.
pub fn too_big(pkt: &mut Packet, p: &Parsed, mtu: u16, own_mac: Mac) -> Result<(), DropReason> {
    let (hdr_len, max) = if p.v6 { (ipv6::IPV6_HLEN, V6_MAX_ERROR) } else { (ipv4::IPV4_MIN_HLEN, V4_MAX_ERROR) };
    let lead = hdr_len + icmp::ICMP_HLEN;
    let quote_len = (p.end - p.l3).min(max - lead).min(pkt.tailroom() + pkt.len - p.l3 - lead);
    if quote_len < hdr_len {
        return Err(DropReason::NoRoom);
    }
    let (client, vip) = (p.key.src, p.key.dst);
    let peer_mac: Mac = pkt.frame()[6..12].try_into().map_err(|_| DropReason::Truncated)?;
    let l3 = pkt.start + p.l3;
    pkt.buf.copy_within(l3..l3 + quote_len, l3 + lead);
    pkt.len = p.l3 + lead + quote_len;
    let frame = pkt.frame_mut();
    super::rewrite::set_macs(frame, own_mac, peer_mac);
    let msg_len = icmp::ICMP_HLEN + quote_len;
    let (ip, msg) = frame[p.l3..].split_at_mut(hdr_len);
    msg[..icmp::ICMP_HLEN].fill(0);
    if p.v6 {
        ipv6::write_header(ip, msg_len as u16, IpProtocol::ICMPV6, REPLY_TTL, vip, client);
        msg[0] = icmp::V6_PACKET_TOO_BIG;
        msg[4..8].copy_from_slice(&u32::from(mtu).to_be_bytes());
    } else {
        let a4 = |a: [u8; 16]| [a[12], a[13], a[14], a[15]];
        ipv4::write_header(ip, (hdr_len + msg_len) as u16, REPLY_TTL, IpProtocol::ICMP, a4(vip), a4(client), false);
        msg[0] = icmp::V4_DEST_UNREACH;
        msg[1] = icmp::V4_FRAG_NEEDED_CODE;
        put16(msg, 6, mtu);
    }
    fill_icmp_checksum(&mut frame[p.l3..p.l3 + hdr_len + msg_len], hdr_len, p.v6);
    Ok(())
}

/// Rewrites an ICMP error about a NAT'd flow so that the backend recognises
/// its own packet: the quoted packet's ends become `inner_src` (the backend)
/// and `inner_dst` (the peer the backend talked to), the outer destination
/// becomes the backend; the ICMP checksum is recomputed whole (errors are
/// rare and the quote changed in several places).
pub fn translate_error(frame: &mut [u8], outer: &Parsed, inner: &Parsed, inner_src: (&[u8; 16], u16), inner_dst: (&[u8; 16], u16)) {
    set_endpoint(frame, inner, End::Src, inner_src.0, inner_src.1);
    set_endpoint(frame, inner, End::Dst, inner_dst.0, inner_dst.1);
    set_endpoint(frame, outer, End::Dst, inner_src.0, 0);
    fill_icmp_checksum(&mut frame[outer.l3..outer.end], outer.l4 - outer.l3, outer.v6);
}

/// Recomputes the checksum of the ICMP / ICMPv6 message that follows the
/// `hdr_len`-byte IP header of `packet`.
fn fill_icmp_checksum(packet: &mut [u8], hdr_len: usize, v6: bool) {
    let (ip, msg) = packet.split_at_mut(hdr_len);
    put16(msg, icmp::CHECKSUM_AT, 0);
    let initial = if v6 { checksum::pseudo_header(&ip[8..24], &ip[24..40], IpProtocol::ICMPV6, msg.len() as u32) } else { 0 };
    let c = checksum::checksum(msg, initial);
    put16(msg, icmp::CHECKSUM_AT, c);
}
