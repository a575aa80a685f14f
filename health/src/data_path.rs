//! Checks through the data path (`through_vip`): the probe of a dsr or
//! tunnel backend is the frame the balancer would send it for a client,
//! addressed to the VIP and its port, with the backend's next-hop MAC and,
//! for ipip and gue, inside the tunnel, encapsulated by the data path's own
//! code (`forward::tunnel`). A backend that would drop a client's packets
//! (VIP missing on its loopback, decapsulation broken) drops the probe too.
//!
//! Why a packet socket from the health thread, not the workers' AF_XDP
//! rings: the frame is one per check interval, so it needs no fast path,
//! and the workers stay free of anything but client traffic (no
//! control-to-worker channel, no scheduler decision to bypass). The
//! AF_PACKET socket sends the frame as built, out of the interface facing
//! the backend, past the kernel's routing (which would send a packet for
//! the VIP nowhere near that backend).
//!
//! The inner source is the balancer's own address towards the backend
//! (the one the kernel would pick): the backend answers the VIP-sourced
//! SYN-ACK straight to it, as it answers clients, and the kernel delivers
//! that to the half-open checker's raw socket like any other check's
//! answer. The checker's RST goes back through the same path.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use fulcrum_dataplane::Packet;
use fulcrum_dataplane::flow::key::addr16;
use fulcrum_dataplane::flow::parse;
use fulcrum_dataplane::forward::rewrite;
use fulcrum_dataplane::forward::tunnel::{self, Encap};
use fulcrum_dataplane::types::Mac;
use fulcrum_dataplane::wire::{IpProtocol, ethernet, ipv4, ipv6, put16};
use fulcrum_io::sock::FrameSender;

use super::Failure;

/// Room before the frame for the outer headers (IPv6 and UDP at most).
const HEADROOM: usize = 64;
/// The longest transport message a check sends (a bare TCP header, an
/// echo request with its payload).
const MAX_L4: usize = 64;
/// A frame of one such message, encapsulated at most once.
const FRAME_LEN: usize = HEADROOM + ethernet::ETH_HLEN + ipv6::IPV6_HLEN + MAX_L4;
const TTL: u8 = 64;

/// How a VIP's packets reach one backend.
#[derive(Clone, Debug)]
pub struct DataPath {
    pub vip: IpAddr,
    /// The balancer's interface facing the backend, and its MAC.
    pub iface: String,
    pub iface_mac: Mac,
    /// The backend's next hop (the backend itself in dsr mode), as the
    /// workers have it now.
    pub next_hop: Arc<NextHop>,
    /// The backend's address: the tunnel's outer destination.
    pub backend: IpAddr,
    /// `None` in dsr mode.
    pub tunnel: Option<Tunnel>,
}

/// A backend's next-hop MAC, read at each check: the control plane moves
/// it with the workers' (a replaced server's new MAC learnt from the
/// kernel, a reload), so checks keep going where client traffic goes.
#[derive(Debug, Default)]
pub struct NextHop(AtomicU64);

impl NextHop {
    pub fn new(mac: Mac) -> NextHop {
        let n = NextHop::default();
        n.set(mac);
        n
    }

    pub fn set(&self, mac: Mac) {
        let mut b = [0u8; 8];
        b[..6].copy_from_slice(&mac);
        self.0.store(u64::from_le_bytes(b), Relaxed);
    }

    pub fn get(&self) -> Mac {
        let b = self.0.load(Relaxed).to_le_bytes();
        [b[0], b[1], b[2], b[3], b[4], b[5]]
    }
}

/// A tunnel VIP's encapsulation, as its services entry has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tunnel {
    pub encap: Encap,
    /// Outer sources: this prefix, host bits from the flow hash.
    pub source: IpAddr,
    pub source_prefix: u8,
}

/// Packet sockets of the checks through the VIP, one per interface,
/// opened at their first check.
#[derive(Default)]
pub struct Senders(Vec<(String, FrameSender)>);

impl Senders {
    /// Sends the transport message `l4` (checksummed for `src` and the
    /// VIP) from `src` to the VIP through `path`.
    pub fn send(&mut self, path: &DataPath, src: IpAddr, proto: IpProtocol, l4: &[u8]) -> Result<(), Failure> {
        let mut buf = [0u8; FRAME_LEN];
        let frame = path.frame(src, proto, l4, &mut buf)?;
        let at = match self.0.iter().position(|(name, _)| *name == path.iface) {
            Some(at) => at,
            None => {
                self.0.push((path.iface.clone(), FrameSender::open(&path.iface)?));
                self.0.len() - 1
            }
        };
        self.0[at].1.send(frame).map_err(Failure::from)
    }
}

impl DataPath {
    /// The frame carrying `l4` (a transport message of protocol `proto`,
    /// checksummed) from `src` to the VIP, as the data path would carry a
    /// client's packet to the backend, written into `buf`.
    pub fn frame<'b>(&self, src: IpAddr, proto: IpProtocol, l4: &[u8], buf: &'b mut [u8; FRAME_LEN]) -> Result<&'b [u8], Failure> {
        let v6 = self.vip.is_ipv6();
        if src.is_ipv6() != v6 || self.backend.is_ipv6() != v6 {
            return Err(Failure::Os(libc::EAFNOSUPPORT));
        }
        if l4.len() > MAX_L4 {
            return Err(Failure::Os(libc::EMSGSIZE));
        }
        let ip_len = if v6 { ipv6::IPV6_HLEN } else { ipv4::IPV4_MIN_HLEN };
        let len = ethernet::ETH_HLEN + ip_len + l4.len();
        let frame = &mut buf[HEADROOM..HEADROOM + len];
        rewrite::set_macs(frame, self.iface_mac, self.next_hop.get());
        put16(frame, 12, if v6 { ethernet::ETHERTYPE_IPV6 } else { ethernet::ETHERTYPE_IPV4 });
        let (ip, payload) = frame[ethernet::ETH_HLEN..].split_at_mut(ip_len);
        payload.copy_from_slice(l4);
        match (src, self.vip) {
            (IpAddr::V4(s), IpAddr::V4(d)) => ipv4::write_header(ip, (ip_len + l4.len()) as u16, TTL, proto, s.octets(), d.octets(), true),
            (s, d) => ipv6::write_header(ip, l4.len() as u16, proto, TTL, addr16(s), addr16(d)),
        }
        let Some(t) = self.tunnel else { return Ok(&buf[HEADROOM..HEADROOM + len]) };
        // The data path's own encapsulation, from the parsed frame as a
        // worker has it.
        let parsed = parse::parse(&buf[HEADROOM..HEADROOM + len]).map_err(|_| Failure::Os(libc::EINVAL))?;
        let hash = parsed.key.hash64();
        let outer_src = tunnel::outer_source(&addr16(t.source), t.source_prefix, v6, hash);
        let mut pkt = Packet::new(&mut buf[..], HEADROOM, len, 0);
        tunnel::encapsulate(&mut pkt, &parsed, t.encap, &outer_src, &addr16(self.backend), hash).map_err(|_| Failure::Os(libc::EMSGSIZE))?;
        let (start, len) = (pkt.start, pkt.len);
        Ok(&buf[start..start + len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fulcrum_dataplane::wire::{checksum, tcp, udp};

    fn path(tunnel: Option<Tunnel>, v6: bool) -> DataPath {
        let (vip, backend, source) = if v6 {
            ("2001:db8:100::1".parse().unwrap(), "2001:db8::11".parse().unwrap(), "2001:db8:200::".parse().unwrap())
        } else {
            ("198.18.100.1".parse().unwrap(), "198.18.0.11".parse().unwrap(), "198.18.200.0".parse().unwrap())
        };
        DataPath {
            vip,
            iface: "eth0".into(),
            iface_mac: [2, 0, 0, 0, 0, 1],
            next_hop: Arc::new(NextHop::new([2, 0, 0, 0, 0, 0x11])),
            backend,
            tunnel: tunnel.map(|t| Tunnel { source, ..t }),
        }
    }

    /// The balancer's source and a SYN from it to the VIP's port 80.
    fn syn(p: &DataPath) -> (IpAddr, Vec<u8>) {
        let src: IpAddr = if p.vip.is_ipv6() { "2001:db8::2".parse().unwrap() } else { "198.18.0.2".parse().unwrap() };
        let mut seg = vec![0; tcp::TCP_MIN_HLEN];
        tcp::write_header(&mut seg, 61000, 80, 7, 0, tcp::SYN, 65535);
        tcp::fill_checksum(&mut seg, &p.vip_bytes_of(src), &p.vip_bytes());
        (src, seg)
    }

    /// The inner packet is a valid SYN to the VIP, whatever the mode.
    fn check_inner(frame: &[u8], at: usize, p: &DataPath) {
        let parsed = parse::parse(frame).unwrap();
        if at == 0 {
            assert_eq!(parsed.key.dst, addr16(p.vip));
            assert_eq!((parsed.key.dst_port, parsed.tcp_flags), (80, tcp::SYN));
        }
        let inner = &frame[ethernet::ETH_HLEN + at..];
        let (hlen, src, dst) = if p.vip.is_ipv6() {
            (ipv6::IPV6_HLEN, inner[8..24].to_vec(), inner[24..40].to_vec())
        } else {
            assert_eq!(checksum::checksum(&inner[..20], 0), 0, "IPv4 header checksum");
            (ipv4::IPV4_MIN_HLEN, inner[12..16].to_vec(), inner[16..20].to_vec())
        };
        let seg = &inner[hlen..];
        assert_eq!(checksum::checksum(seg, checksum::pseudo_header(&src, &dst, IpProtocol::TCP, seg.len() as u32)), 0, "TCP checksum");
        assert_eq!(&dst, &p.vip_bytes());
    }

    impl DataPath {
        fn vip_bytes(&self) -> Vec<u8> {
            self.vip_bytes_of(self.vip)
        }

        fn vip_bytes_of(&self, a: IpAddr) -> Vec<u8> {
            match a {
                IpAddr::V4(a) => a.octets().to_vec(),
                IpAddr::V6(a) => a.octets().to_vec(),
            }
        }
    }

    #[test]
    fn dsr_frames_go_to_the_backends_mac_addressed_to_the_vip() {
        for v6 in [false, true] {
            let p = path(None, v6);
            let mut buf = [0; FRAME_LEN];
            let (src, seg) = syn(&p);
            let frame = p.frame(src, IpProtocol::TCP, &seg, &mut buf).unwrap().to_vec();
            assert_eq!(&frame[..6], &p.next_hop.get());
            assert_eq!(&frame[6..12], &p.iface_mac);
            check_inner(&frame, 0, &p);
            // A moved next hop takes the next frame.
            p.next_hop.set([2, 0, 0, 0, 0, 0x12]);
            assert_eq!(&p.frame(src, IpProtocol::TCP, &seg, &mut buf).unwrap()[..6], &[2, 0, 0, 0, 0, 0x12]);
        }
    }

    #[test]
    fn tunnel_frames_are_encapsulated_to_the_backend_from_the_tunnel_source() {
        for (encap, v6) in [(Encap::Ipip, false), (Encap::Ipip, true), (Encap::Gue { port: 6080 }, false), (Encap::Gue { port: 6080 }, true)] {
            let p = path(Some(Tunnel { encap, source: IpAddr::from([0; 4]), source_prefix: if v6 { 64 } else { 24 } }), v6);
            let mut buf = [0; FRAME_LEN];
            let (src, seg) = syn(&p);
            let frame = p.frame(src, IpProtocol::TCP, &seg, &mut buf).unwrap().to_vec();
            assert_eq!(&frame[..6], &p.next_hop.get(), "{encap:?}");
            let outer = parse::parse(&frame).unwrap();
            assert_eq!(outer.key.dst, addr16(p.backend), "{encap:?}");
            let src = outer.key.src;
            let base = addr16(p.tunnel.unwrap().source);
            assert_eq!(&src[..if v6 { 8 } else { 15 }], &base[..if v6 { 8 } else { 15 }], "outer source in the tunnel prefix");
            let at = match encap {
                Encap::Ipip => outer.l4 - ethernet::ETH_HLEN,
                Encap::Gue { port } => {
                    assert_eq!(outer.key.dst_port, port);
                    outer.l4 - ethernet::ETH_HLEN + udp::UDP_HLEN
                }
            };
            check_inner(&frame, at, &p);
        }
    }
}
