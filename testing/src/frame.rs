//! Building frames from scratch, with checksums computed whole: for tests
//! (golden packets), the fuzz corpus and the traffic generator. Not used on
//! the packet path.

use std::net::IpAddr;

use fulcrum_dataplane::types::Mac;
use fulcrum_dataplane::wire::ethernet::{ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_VLAN};
use fulcrum_dataplane::wire::{IpProtocol, checksum, ipv4, ipv6, put16, tcp, udp};

/// The transport part of a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        src_port: u16,
        dst_port: u16,
        flags: u8,
        seq: u32,
        ack: u32,
    },
    /// `checksum: false` sends zero (IPv4 only).
    Udp {
        src_port: u16,
        dst_port: u16,
        checksum: bool,
    },
    /// ICMP or ICMPv6 (by the address family): type, code, the 4 bytes
    /// after the checksum.
    Icmp {
        msg_type: u8,
        code: u8,
        rest: [u8; 4],
    },
    /// Any other protocol: its number; the payload is sent as is.
    Other(u8),
}

/// A packet to build. Start from `tcp`, `udp`, `icmp` or `ip`, adjust the
/// public fields, then call `frame` or `ip_packet`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketBuilder {
    pub src_mac: Mac,
    pub dst_mac: Mac,
    pub vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ttl: u8,
    pub dont_fragment: bool,
    pub l4: L4,
    /// TCP only.
    pub tcp_window: u16,
    pub tcp_options: tcp::Options,
    pub payload: Vec<u8>,
}

pub const CLIENT_MAC: Mac = [0x02, 0, 0, 0, 0, 0x01];
pub const LB_MAC: Mac = [0x02, 0, 0, 0, 0, 0x10];

impl PacketBuilder {
    pub fn ip(src: IpAddr, dst: IpAddr, l4: L4) -> Self {
        PacketBuilder {
            src_mac: CLIENT_MAC,
            dst_mac: LB_MAC,
            vlan: None,
            src,
            dst,
            ttl: 64,
            dont_fragment: true,
            l4,
            tcp_window: 65535,
            tcp_options: tcp::Options::default(),
            payload: Vec::new(),
        }
    }

    pub fn tcp(src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16, flags: u8) -> Self {
        Self::ip(src, dst, L4::Tcp { src_port, dst_port, flags, seq: 1, ack: 0 })
    }

    pub fn udp(src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16) -> Self {
        Self::ip(src, dst, L4::Udp { src_port, dst_port, checksum: true })
    }

    pub fn icmp(src: IpAddr, dst: IpAddr, msg_type: u8, code: u8, rest: [u8; 4]) -> Self {
        Self::ip(src, dst, L4::Icmp { msg_type, code, rest })
    }

    pub fn payload(mut self, p: &[u8]) -> Self {
        self.payload = p.to_vec();
        self
    }

    pub fn macs(mut self, src: Mac, dst: Mac) -> Self {
        (self.src_mac, self.dst_mac) = (src, dst);
        self
    }

    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    fn v6(&self) -> bool {
        self.dst.is_ipv6()
    }

    fn proto(&self) -> IpProtocol {
        match self.l4 {
            L4::Tcp { .. } => IpProtocol::TCP,
            L4::Udp { .. } => IpProtocol::UDP,
            L4::Icmp { .. } if self.v6() => IpProtocol::ICMPV6,
            L4::Icmp { .. } => IpProtocol::ICMP,
            L4::Other(p) => IpProtocol(p),
        }
    }

    /// The transport header and payload, checksum filled.
    pub fn l4_bytes(&self) -> Vec<u8> {
        let mut b = match self.l4 {
            L4::Tcp { src_port, dst_port, flags, seq, ack } => {
                let mut opts = [0u8; tcp::MAX_WRITTEN_OPTIONS];
                let n = tcp::write_options(&mut opts, &self.tcp_options);
                let mut h = vec![0u8; tcp::TCP_MIN_HLEN];
                tcp::write_header_with_options(&mut h, src_port, dst_port, (seq, ack), flags, self.tcp_window, n);
                h.extend_from_slice(&opts[..n]);
                h
            }
            L4::Udp { src_port, dst_port, .. } => {
                let mut h = vec![0u8; 8];
                udp::write_header(&mut h, src_port, dst_port, (8 + self.payload.len()) as u16);
                h
            }
            L4::Icmp { msg_type, code, rest } => vec![msg_type, code, 0, 0, rest[0], rest[1], rest[2], rest[3]],
            L4::Other(_) => Vec::new(),
        };
        b.extend_from_slice(&self.payload);
        let (src, dst) = (addr_bytes(self.src), addr_bytes(self.dst));
        let pseudo = checksum::pseudo_header(&src, &dst, self.proto(), b.len() as u32);
        match self.l4 {
            L4::Tcp { .. } => tcp::fill_checksum(&mut b, &src, &dst),
            L4::Udp { checksum: true, .. } => {
                let c = checksum::checksum(&b, pseudo);
                put16(&mut b, 6, if c == 0 { 0xffff } else { c });
            }
            L4::Icmp { .. } => {
                let c = checksum::checksum(&b, if self.v6() { pseudo } else { 0 });
                put16(&mut b, 2, c);
            }
            L4::Udp { checksum: false, .. } | L4::Other(_) => {}
        }
        b
    }

    /// The IP packet (header and everything after it).
    pub fn ip_packet(&self) -> Vec<u8> {
        ip_packet(self.src, self.dst, self.proto(), self.ttl, self.dont_fragment, &self.l4_bytes())
    }

    /// The whole Ethernet frame.
    pub fn frame(&self) -> Vec<u8> {
        ethernet(self.src_mac, self.dst_mac, self.vlan, self.v6(), &self.ip_packet())
    }
}

/// An IP packet around `payload`. The family follows `dst`.
pub fn ip_packet(src: IpAddr, dst: IpAddr, proto: IpProtocol, ttl: u8, dont_fragment: bool, payload: &[u8]) -> Vec<u8> {
    let (s, d) = (addr_bytes(src), addr_bytes(dst));
    let mut b = if dst.is_ipv6() {
        let mut h = vec![0u8; ipv6::IPV6_HLEN];
        ipv6::write_header(&mut h, payload.len() as u16, proto, ttl, arr(&s), arr(&d));
        h
    } else {
        let mut h = vec![0u8; ipv4::IPV4_MIN_HLEN];
        let total = (ipv4::IPV4_MIN_HLEN + payload.len()) as u16;
        ipv4::write_header(&mut h, total, ttl, proto, arr(&s), arr(&d), dont_fragment);
        h
    };
    b.extend_from_slice(payload);
    b
}

/// An Ethernet frame (with an 802.1Q tag if `vlan`) around an IP packet.
pub fn ethernet(src: Mac, dst: Mac, vlan: Option<u16>, v6: bool, ip: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(18 + ip.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    if let Some(id) = vlan {
        f.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
        f.extend_from_slice(&(id & 0x0fff).to_be_bytes());
    }
    f.extend_from_slice(&if v6 { ETHERTYPE_IPV6 } else { ETHERTYPE_IPV4 }.to_be_bytes());
    f.extend_from_slice(ip);
    f
}

fn addr_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn arr<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(b);
    a
}

/// Splits the IP packet of an untagged Ethernet frame (no IPv4 options, no
/// IPv6 extension headers) into fragments of at most `chunk` payload bytes
/// each (a multiple of 8), with identification `id`, as a sending host
/// would; returns their frames in order. For IPv6 a fragment header goes
/// after the fixed header.
pub fn fragments(frame: &[u8], chunk: usize, id: u32) -> Vec<Vec<u8>> {
    assert!(chunk > 0 && chunk.is_multiple_of(8), "fragment payloads are multiples of 8 bytes");
    let (macs, ip) = (&frame[..12], &frame[14..]);
    let v6 = ip[0] >> 4 == 6;
    let (hlen, proto) = if v6 { (ipv6::IPV6_HLEN, ip[6]) } else { (ipv4::IPV4_MIN_HLEN, ip[9]) };
    let payload = &ip[hlen..];
    let pieces: Vec<&[u8]> = payload.chunks(chunk).collect();
    pieces
        .iter()
        .enumerate()
        .map(|(i, piece)| {
            let (offset, more) = (i * chunk, i + 1 < pieces.len());
            let mut h = ip[..hlen].to_vec();
            if v6 {
                h[6] = 44; // a fragment header follows
                let mut fh = [proto, 0, 0, 0, 0, 0, 0, 0];
                put16(&mut fh, 2, (offset as u16) | u16::from(more));
                fh[4..].copy_from_slice(&id.to_be_bytes());
                h.extend_from_slice(&fh);
                put16(&mut h, 4, (8 + piece.len()) as u16);
            } else {
                put16(&mut h, 2, (hlen + piece.len()) as u16);
                put16(&mut h, 4, id as u16);
                put16(&mut h, 6, ((offset / 8) as u16) | if more { 0x2000 } else { 0 });
                put16(&mut h, 10, 0);
                let c = checksum::checksum(&h, 0);
                put16(&mut h, 10, c);
            }
            h.extend_from_slice(piece);
            let mut f = macs.to_vec();
            f.extend_from_slice(&if v6 { ETHERTYPE_IPV6 } else { ETHERTYPE_IPV4 }.to_be_bytes());
            f.extend_from_slice(&h);
            f
        })
        .collect()
}
