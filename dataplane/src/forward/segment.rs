//! TCP segments the balancer writes itself, in place of the frame that
//! made it answer: a RST, the SYN proxy's SYN-ACK to a client and its SYN
//! and ACK to a backend.

use crate::flow::FlowKey;
use crate::flow::parse::Parsed;
use crate::packet::{DropReason, Packet};
use crate::wire::tcp::{self, Options};
use crate::wire::{IpProtocol, ipv4, ipv6};

/// TTL of segments the balancer originates.
const OWN_TTL: u8 = 64;

/// A segment, addresses as 16 bytes (IPv4 v4-mapped).
pub struct Segment<'a> {
    pub src: &'a [u8; 16],
    pub dst: &'a [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub options: &'a Options,
    pub payload: &'a [u8],
}

/// Replaces the IP packet of a frame `parse` accepted (`p`) with `s`, in
/// the frame's IP version, with a plain IP header (no options, extension
/// headers or fragmentation) and a valid checksum. The Ethernet header
/// stays; the caller sets the MACs. Returns where the new headers are.
pub fn write(pkt: &mut Packet, p: &Parsed, s: &Segment) -> Result<Parsed, DropReason> {
    let mut opts = [0u8; tcp::MAX_WRITTEN_OPTIONS];
    let opts_len = tcp::write_options(&mut opts, s.options);
    let ip_len = if p.v6 { ipv6::IPV6_HLEN } else { ipv4::IPV4_MIN_HLEN };
    let hlen = tcp::TCP_MIN_HLEN + opts_len;
    let seg_len = hlen + s.payload.len();
    let len = p.l3 + ip_len + seg_len;
    if len > pkt.len + pkt.tailroom() {
        return Err(DropReason::NoRoom);
    }
    pkt.len = len;
    let frame = pkt.frame_mut();
    let (ip, seg) = frame[p.l3..].split_at_mut(ip_len);
    let seg = &mut seg[..seg_len];
    tcp::write_header_with_options(seg, s.src_port, s.dst_port, (s.seq, s.ack), s.flags, s.window, opts_len);
    seg[tcp::TCP_MIN_HLEN..hlen].copy_from_slice(&opts[..opts_len]);
    seg[hlen..seg_len].copy_from_slice(s.payload);
    if p.v6 {
        ipv6::write_header(ip, seg_len as u16, IpProtocol::TCP, OWN_TTL, *s.src, *s.dst);
        tcp::fill_checksum(seg, s.src, s.dst);
    } else {
        let a4 = |a: &[u8; 16]| [a[12], a[13], a[14], a[15]];
        ipv4::write_header(ip, (ip_len + seg_len) as u16, OWN_TTL, IpProtocol::TCP, a4(s.src), a4(s.dst), true);
        tcp::fill_checksum(seg, &s.src[12..], &s.dst[12..]);
    }
    let l4 = p.l3 + ip_len;
    let key = FlowKey { src: *s.src, dst: *s.dst, src_port: s.src_port, dst_port: s.dst_port, proto: IpProtocol::TCP };
    Ok(Parsed { l3: p.l3, l4, end: len, v6: p.v6, key, tcp_flags: s.flags, ttl: OWN_TTL, fragment: None })
}
