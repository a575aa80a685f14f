//! The TCP RST a client gets for a flow whose backend went down (VIP
//! `on_down = "reset"`): built in place from the client's packet, so the
//! client gives up at once instead of retransmitting into a dead backend.

use super::segment::{self, Segment};
use crate::flow::parse::Parsed;
use crate::packet::{DropReason, Packet};
use crate::types::Mac;
use crate::wire::{IpProtocol, be32, tcp};

/// Turns a TCP frame `wire::parse` accepted (`p`) into a RST from its
/// destination (the VIP) to its source, as RFC 9293 (3.10.7.1) answers a
/// segment that belongs to no connection: SEQ = the segment's ACK if it
/// has one, else SEQ 0 and ACK = its SEQ plus its length. The segment's
/// ACK is the sequence number the client expects next, so Linux accepts
/// the RST as in-window exactly (RFC 5961). The IP header loses any
/// options or extension headers and the payload goes; the caller sends
/// the frame back out of the ingress interface. Must not be used on a RST.
/// The RST is never longer than the segment, so it always fits.
pub fn tcp_reset(pkt: &mut Packet, p: &Parsed, own_mac: Mac) -> Result<(), DropReason> {
    debug_assert!(p.key.proto == IpProtocol::TCP && p.tcp_flags & tcp::RST == 0);
    let frame = pkt.frame();
    let seq = be32(frame, p.l4 + 4);
    let ack = be32(frame, p.l4 + 8);
    let hlen = usize::from(frame[p.l4 + 12] >> 4) * 4;
    let seg_len = (p.end - p.l4 - hlen) as u32 + u32::from(p.tcp_flags & tcp::SYN != 0) + u32::from(p.tcp_flags & tcp::FIN != 0);
    let (seq, ack, flags) = if p.tcp_flags & tcp::ACK != 0 { (ack, 0, tcp::RST) } else { (0, seq.wrapping_add(seg_len), tcp::RST | tcp::ACK) };
    let client_mac: Mac = [frame[6], frame[7], frame[8], frame[9], frame[10], frame[11]];
    let (client, vip) = (p.key.src, p.key.dst);
    let options = tcp::Options::default();
    let rst =
        Segment { src: &vip, dst: &client, src_port: p.key.dst_port, dst_port: p.key.src_port, seq, ack, flags, window: 0, options: &options, payload: &[] };
    segment::write(pkt, p, &rst)?;
    super::rewrite::set_macs(pkt.frame_mut(), own_mac, client_mac);
    Ok(())
}
