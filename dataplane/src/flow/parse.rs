//! One pass over a frame's headers, producing the offsets and the flow key
//! the packet path works from.

use crate::flow::FlowKey;
use crate::flow::key::v4_mapped;
use crate::wire::ethernet::{ETHERTYPE_IPV4, ETHERTYPE_IPV6, Ethernet};
use crate::wire::{Icmp, IpProtocol, Ipv4, Ipv6, Tcp, Udp, WireError, be16, ipv4, ipv6, udp};

/// Where the headers of a checked frame are. Offsets are from the start of
/// the frame; every header they point at has passed its `new_checked`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub l3: usize,
    pub l4: usize,
    /// End of the IP packet; bytes after it are link-layer padding.
    pub end: usize,
    pub v6: bool,
    /// Ports are zero for protocols without ports.
    pub key: FlowKey,
    pub tcp_flags: u8,
    pub ttl: u8,
    /// Set for an IP fragment. The first one carries the transport header,
    /// so its ports are parsed; in a later one `l4` is where its payload
    /// starts and the ports are zero.
    pub fragment: Option<Fragment>,
}

/// What identifies an IP fragment's datagram beyond its addresses and
/// protocol, and whether it is the one with the transport header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment {
    /// IPv4's 16-bit or IPv6's 32-bit identification.
    pub id: u32,
    pub first: bool,
}

impl Parsed {
    /// A fragment other than the first: no transport header, no ports.
    pub fn later_fragment(&self) -> bool {
        self.fragment.is_some_and(|f| !f.first)
    }
}

/// Why a frame could not be parsed as a balanceable packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...): the kernel's business.
    NotIp,
    Truncated,
    Malformed,
}

impl From<WireError> for ParseError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Truncated => ParseError::Truncated,
            WireError::Malformed => ParseError::Malformed,
        }
    }
}

#[inline]
pub fn parse(frame: &[u8]) -> Result<Parsed, ParseError> {
    let mut p = Parsed::default();
    parse_into(frame, &mut p).map(|()| p)
}

/// `parse`, writing into `out` field by field: the engine parses each
/// frame of a chunk straight into the chunk's buffer, where building the
/// whole result and then moving it there cost about 40 instructions a
/// frame. On an error `out` holds part of a frame and means nothing.
#[inline]
pub fn parse_into(frame: &[u8], out: &mut Parsed) -> Result<(), ParseError> {
    let eth = Ethernet::new_checked(frame)?;
    let l3 = eth.header_len();
    let ip = &frame[l3..];
    out.l3 = l3;
    match eth.ethertype() {
        ETHERTYPE_IPV4 => {
            let h = Ipv4::new_checked(ip)?;
            (out.key.src, out.key.dst) = (v4_mapped(h.src()), v4_mapped(h.dst()));
            out.fragment = h.is_fragment().then(|| Fragment { id: u32::from(h.ident()), first: h.fragment_offset() == 0 });
            (out.v6, out.key.proto, out.l4, out.end, out.ttl) = (false, h.protocol(), l3 + h.header_len(), l3 + h.total_len(), h.ttl());
        }
        ETHERTYPE_IPV6 => {
            let h = Ipv6::new_checked(ip)?;
            (out.key.src, out.key.dst) = (h.src(), h.dst());
            out.fragment = h.is_fragment().then(|| Fragment { id: h.ident(), first: h.fragment_offset() == 0 });
            (out.v6, out.key.proto, out.l4, out.end, out.ttl) = (true, h.upper_proto(), l3 + h.upper_offset(), l3 + h.total_len(), h.hop_limit());
        }
        _ => return Err(ParseError::NotIp),
    }
    let l4b = &frame[out.l4..out.end];
    (out.key.src_port, out.key.dst_port, out.tcp_flags) = match out.key.proto {
        _ if out.fragment.is_some_and(|f| !f.first) => (0, 0, 0),
        IpProtocol::TCP => {
            let t = Tcp::new_checked(l4b)?;
            (t.src_port(), t.dst_port(), t.flags())
        }
        // A first fragment holds the UDP header but not the whole datagram
        // its length field counts.
        IpProtocol::UDP if out.fragment.is_some() => {
            let ports = l4b.get(..udp::UDP_HLEN).ok_or(ParseError::Truncated)?;
            (be16(ports, 0), be16(ports, 2), 0)
        }
        IpProtocol::UDP => {
            let u = Udp::new_checked(l4b)?;
            (u.src_port(), u.dst_port(), 0)
        }
        IpProtocol::ICMP | IpProtocol::ICMPV6 => {
            Icmp::new_checked(l4b)?;
            (0, 0, 0)
        }
        _ => (0, 0, 0),
    };
    Ok(())
}

/// Parses the packet quoted in an ICMP error, `frame[at..end]`: its IP
/// header whole and at least the 8 bytes of transport header that hold
/// the ports (RFC 792 quotes no more). `end` is the end of the quote.
pub fn parse_quoted(frame: &[u8], at: usize, end: usize) -> Option<Parsed> {
    let q = frame.get(at..end)?;
    let (v6, src, dst, proto, hlen, ttl) = match q.first()? >> 4 {
        4 if q.len() >= ipv4::IPV4_MIN_HLEN && q[0] & 0x0f >= 5 => {
            let a = |i: usize| v4_mapped([q[i], q[i + 1], q[i + 2], q[i + 3]]);
            (false, a(12), a(16), IpProtocol(q[9]), usize::from(q[0] & 0x0f) * 4, q[8])
        }
        6 if q.len() >= ipv6::IPV6_HLEN => {
            let h = Ipv6::new_unchecked(q);
            (true, h.src(), h.dst(), IpProtocol(q[6]), ipv6::IPV6_HLEN, q[7])
        }
        _ => return None,
    };
    let l4 = at + hlen;
    if l4 + 8 > end || !matches!(proto, IpProtocol::TCP | IpProtocol::UDP) {
        return None;
    }
    let ports = &frame[l4..l4 + 4];
    let key = FlowKey { src, dst, src_port: u16::from_be_bytes([ports[0], ports[1]]), dst_port: u16::from_be_bytes([ports[2], ports[3]]), proto };
    Some(Parsed { l3: at, l4, end, v6, key, tcp_flags: 0, ttl, fragment: None })
}
