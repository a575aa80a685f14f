//! The TCP RST a client gets for a flow whose backend went down (VIP
//! `on_down = "reset"`): built in place from the client's packet, so the
//! client gives up at once instead of retransmitting into a dead backend.

use crate::flow::parse::Parsed;
use crate::packet::Packet;
use crate::types::Mac;
use crate::wire::{IpProtocol, ipv4, ipv6, tcp};

const RESET_TTL: u8 = 64;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Turns a TCP frame `wire::parse` accepted (`p`) into a RST from its
/// destination (the VIP) to its source, as RFC 9293 (3.10.7.1) answers a
/// segment that belongs to no connection: SEQ = the segment's ACK if it
/// has one, else SEQ 0 and ACK = its SEQ plus its length. The segment's
/// ACK is the sequence number the client expects next, so Linux accepts
/// the RST as in-window exactly (RFC 5961). The IP header loses any
/// options or extension headers and the payload goes; the caller sends
/// the frame back out of the ingress interface. Must not be used on a RST.
pub fn tcp_reset(pkt: &mut Packet, p: &Parsed, own_mac: Mac) {
    debug_assert!(p.key.proto == IpProtocol::TCP && p.tcp_flags & tcp::RST == 0);
    let frame = pkt.frame_mut();
    let seq = be32(frame, p.l4 + 4);
    let ack = be32(frame, p.l4 + 8);
    let hlen = usize::from(frame[p.l4 + 12] >> 4) * 4;
    let seg_len = (p.end - p.l4 - hlen) as u32 + u32::from(p.tcp_flags & tcp::SYN != 0) + u32::from(p.tcp_flags & tcp::FIN != 0);
    let (seq, ack, flags) = if p.tcp_flags & tcp::ACK != 0 { (ack, 0, tcp::RST) } else { (0, seq.wrapping_add(seg_len), tcp::RST | tcp::ACK) };
    let client_mac: Mac = [frame[6], frame[7], frame[8], frame[9], frame[10], frame[11]];
    super::rewrite::set_macs(frame, own_mac, client_mac);
    let (client, vip) = (p.key.src, p.key.dst);
    // The new headers are no longer than the old ones: it fits in place.
    let ip_len = if p.v6 { ipv6::IPV6_HLEN } else { ipv4::IPV4_MIN_HLEN };
    let (ip, seg) = frame[p.l3..].split_at_mut(ip_len);
    let seg = &mut seg[..tcp::TCP_MIN_HLEN];
    tcp::write_header(seg, p.key.dst_port, p.key.src_port, seq, ack, flags, 0);
    if p.v6 {
        ipv6::write_header(ip, tcp::TCP_MIN_HLEN as u16, IpProtocol::TCP, RESET_TTL, vip, client);
        tcp::fill_checksum(seg, &vip, &client);
    } else {
        let a4 = |a: [u8; 16]| [a[12], a[13], a[14], a[15]];
        ipv4::write_header(ip, (ip_len + tcp::TCP_MIN_HLEN) as u16, RESET_TTL, IpProtocol::TCP, a4(vip), a4(client), true);
        tcp::fill_checksum(seg, &vip[12..], &client[12..]);
    }
    pkt.len = p.l3 + ip_len + tcp::TCP_MIN_HLEN;
}
