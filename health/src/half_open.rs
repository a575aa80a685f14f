//! TCP half-open checks: a SYN from a raw socket; a SYN-ACK means the port
//! listens (up), a RST that it does not. The checker answers the SYN-ACK
//! with a RST itself, so the backend drops the half-open connection at
//! once and no connection is ever established: lighter than a connect
//! check, and invisible to the service. The kernel's own RST is kept off
//! the wire by [`RstGuard`].
//!
//! One raw TCP socket per family, with a classic BPF filter so that only
//! segments to the checker's ports ([`rst_guard::PORTS`]) are queued, not
//! every TCP segment the host receives. Each check in flight owns one port;
//! a reply is matched by port, then by source address, port and ACK.
//! IPv4 segments are sent with the IP header included (the source address
//! is chosen as the kernel would, and checksummed with); IPv6 ones let the
//! kernel add the header and the checksum (IPV6_CHECKSUM). A check through
//! the data path ([`DataPath`]) sends whole frames instead, from a packet
//! socket per interface; its answer comes back to the same raw socket.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use fulcrum_dataplane::wire::{IpProtocol, ipv4, tcp};
use fulcrum_io::epoll::{Interest, Poller};
use fulcrum_io::sock;

use super::data_path::{DataPath, Senders};
use super::rst_guard::{self, RstGuard};
use super::{Failure, HealthError};

const FIRST_PORT: u16 = *rst_guard::PORTS.start();
const PORT_COUNT: usize = (*rst_guard::PORTS.end() - FIRST_PORT) as usize + 1;
/// An IPv4 packet of a bare TCP header.
const V4_LEN: usize = ipv4::IPV4_MIN_HLEN + tcp::TCP_MIN_HLEN;

/// A SYN in flight.
#[derive(Clone, Debug)]
struct Probe {
    slot: usize,
    to: SocketAddr,
    /// The source address (IPv4, and through the data path; otherwise
    /// IPv6 leaves it to the kernel).
    src: Option<IpAddr>,
    isn: u32,
    via: Option<Arc<DataPath>>,
}

pub struct HalfOpen {
    /// By family: [IPv4, IPv6].
    socks: [Option<OwnedFd>; 2],
    /// By source port (offset from `FIRST_PORT`).
    waiting: Vec<Option<Probe>>,
    /// Each slot's source port in flight.
    by_slot: Vec<Option<u16>>,
    next_port: usize,
    /// Seed of the initial sequence numbers.
    isn_seed: u64,
    /// Packet sockets of checks through the data path.
    senders: Senders,
    _guard: Arc<RstGuard>,
}

/// Accepts segments whose destination port is in the checker's range;
/// `ip_header`: the IPv4 header comes first (its length from IHL).
fn port_filter(ip_header: bool) -> Vec<libc::sock_filter> {
    let op = |code: u32, jt, jf, k| libc::sock_filter { code: code as u16, jt, jf, k };
    let (lo, hi) = (u32::from(FIRST_PORT), u32::from(*rst_guard::PORTS.end()));
    let mut prog = Vec::new();
    if ip_header {
        // X = 4 * (IHL); A = the 16 bits at X + 2.
        prog.push(op(libc::BPF_LDX | libc::BPF_B | libc::BPF_MSH, 0, 0, 0));
        prog.push(op(libc::BPF_LD | libc::BPF_H | libc::BPF_IND, 0, 0, 2));
    } else {
        prog.push(op(libc::BPF_LD | libc::BPF_H | libc::BPF_ABS, 0, 0, 2));
    }
    prog.extend([
        op(libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K, 0, 2, lo),
        op(libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K, 1, 0, hi),
        op(libc::BPF_RET | libc::BPF_K, 0, 0, 0xffff),
        op(libc::BPF_RET | libc::BPF_K, 0, 0, 0),
    ]);
    prog
}

impl HalfOpen {
    /// Installs the RST guard and opens the sockets of the families asked
    /// for, registered with `tokens[family]`.
    pub fn open(families: [bool; 2], slots: usize, poller: &Poller, tokens: [u64; 2]) -> Result<HalfOpen, HealthError> {
        let guard = RstGuard::acquire()?;
        let mut socks = [None, None];
        for (v6, wanted) in [false, true].into_iter().zip(families) {
            if !wanted {
                continue;
            }
            let open = || -> std::io::Result<OwnedFd> {
                let fd = sock::socket(v6, libc::SOCK_RAW, libc::IPPROTO_TCP)?;
                if v6 {
                    sock::set_opt(&fd, libc::IPPROTO_IPV6, libc::IPV6_CHECKSUM, &(tcp::CHECKSUM_AT as libc::c_int))?;
                } else {
                    sock::set_opt(&fd, libc::IPPROTO_IP, libc::IP_HDRINCL, &(1 as libc::c_int))?;
                }
                sock::set_opt(&fd, libc::SOL_SOCKET, libc::SO_MARK, &rst_guard::MARK)?;
                sock::attach_filter(&fd, &port_filter(!v6))?;
                poller.add(&fd, tokens[usize::from(v6)], Interest::Read)?;
                Ok(fd)
            };
            socks[usize::from(v6)] = Some(open().map_err(HealthError::system("half-open checks: raw TCP socket"))?);
        }
        let isn_seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        Ok(HalfOpen { socks, waiting: vec![None; PORT_COUNT], by_slot: vec![None; slots], next_port: 0, isn_seed, senders: Senders::default(), _guard: guard })
    }

    /// Sends `slot`'s SYN to `to`, through `via` when given (`to` is then
    /// the VIP and its port).
    pub fn start(&mut self, slot: usize, to: SocketAddr, via: Option<&Arc<DataPath>>) -> Result<(), Failure> {
        let offset = (0..PORT_COUNT).map(|i| (self.next_port + i) % PORT_COUNT).find(|&p| self.waiting[p].is_none()).ok_or(Failure::Os(libc::EADDRINUSE))?;
        self.next_port = (offset + 1) % PORT_COUNT;
        let port = FIRST_PORT + offset as u16;
        // Unpredictable enough that a stray segment does not pass for the
        // answer; the hash of a counter seeded from the clock.
        self.isn_seed = self.isn_seed.wrapping_add(1);
        let isn = xxhash_rust::xxh3::xxh3_64_with_seed(&fulcrum_dataplane::flow::key::addr16(to.ip()), self.isn_seed ^ u64::from(port)) as u32;
        // Through the data path, the backend answers the address it is
        // reached from (the VIP is not routed to it).
        let src = match (via, to.ip()) {
            (Some(path), _) => Some(sock::route_source(path.backend)?),
            (None, IpAddr::V4(_)) => Some(sock::route_source(to.ip())?),
            (None, IpAddr::V6(_)) => None,
        };
        if src.is_some_and(|s| s.is_ipv6() != to.is_ipv6()) {
            return Err(Failure::Os(libc::EAFNOSUPPORT));
        }
        let probe = Probe { slot, to, src, isn, via: via.cloned() };
        self.send(&probe, port, isn, tcp::SYN)?;
        self.waiting[offset] = Some(probe);
        self.by_slot[slot] = Some(port);
        Ok(())
    }

    fn send(&mut self, p: &Probe, port: u16, seq: u32, flags: u8) -> Result<(), Failure> {
        let window = if flags & tcp::SYN != 0 { 65535 } else { 0 };
        if let (Some(path), Some(src)) = (&p.via, p.src) {
            let mut seg = [0u8; tcp::TCP_MIN_HLEN];
            tcp::write_header(&mut seg, port, p.to.port(), seq, 0, flags, window);
            let (s, d) = (fulcrum_dataplane::flow::key::addr16(src), fulcrum_dataplane::flow::key::addr16(p.to.ip()));
            let (s, d) = if src.is_ipv4() { (&s[12..], &d[12..]) } else { (&s[..], &d[..]) };
            tcp::fill_checksum(&mut seg, s, d);
            return self.senders.send(path, src, IpProtocol::TCP, &seg);
        }
        let fd = self.socks[usize::from(p.to.is_ipv6())].as_ref().ok_or(Failure::Os(libc::EAFNOSUPPORT))?;
        let mut buf = [0u8; V4_LEN];
        let len = match (p.src, p.to.ip()) {
            (Some(IpAddr::V4(src)), IpAddr::V4(dst)) => {
                let src = src.octets();
                let (ip, seg) = buf.split_at_mut(ipv4::IPV4_MIN_HLEN);
                ipv4::write_header(ip, V4_LEN as u16, 64, IpProtocol::TCP, src, dst.octets(), true);
                tcp::write_header(seg, port, p.to.port(), seq, 0, flags, window);
                tcp::fill_checksum(seg, &src, &dst.octets());
                V4_LEN
            }
            _ => {
                tcp::write_header(&mut buf, port, p.to.port(), seq, 0, flags, window);
                tcp::TCP_MIN_HLEN
            }
        };
        sock::send_to(fd, &buf[..len], p.to.ip()).map_err(Failure::from)
    }

    /// Reads the segments queued on the `v6` socket; the checks they decide.
    pub fn ready(&mut self, v6: bool, done: &mut Vec<(usize, Result<(), Failure>)>) {
        let mut buf = [0u8; 1500];
        loop {
            let Some(fd) = &self.socks[usize::from(v6)] else { return };
            let Ok((n, from)) = sock::recv_from(fd, &mut buf) else { return };
            // IPv4 raw sockets deliver the IP header too.
            let at = if v6 { 0 } else { usize::from(buf[0] & 0x0f) * 4 };
            let Some(seg) = buf[..n].get(at..at + tcp::TCP_MIN_HLEN) else { continue };
            let be16 = |i: usize| u16::from_be_bytes([seg[i], seg[i + 1]]);
            let be32 = |i: usize| u32::from_be_bytes([seg[i], seg[i + 1], seg[i + 2], seg[i + 3]]);
            let (sport, dport, ack, flags) = (be16(0), be16(2), be32(8), seg[13]);
            let Some(offset) = dport.checked_sub(FIRST_PORT).map(usize::from).filter(|&o| o < PORT_COUNT) else { continue };
            let Some(p) = self.waiting[offset].clone() else { continue };
            if p.to != SocketAddr::new(from, sport) || flags & tcp::ACK == 0 || ack != p.isn.wrapping_add(1) {
                continue;
            }
            let result = if flags & (tcp::SYN | tcp::RST) == tcp::SYN {
                // Listening: end the half-open connection (RFC 9293: a
                // RST for a SYN-ACK carries the SYN-ACK's ACK as SEQ).
                self.send(&p, dport, ack, tcp::RST)
            } else if flags & tcp::RST != 0 {
                Err(Failure::Os(libc::ECONNREFUSED))
            } else {
                continue;
            };
            self.waiting[offset] = None;
            self.by_slot[p.slot] = None;
            done.push((p.slot, result));
        }
    }

    /// Forgets `slot`'s SYN (timed out).
    pub fn abandon(&mut self, slot: usize) {
        if let Some(port) = self.by_slot[slot].take() {
            self.waiting[usize::from(port - FIRST_PORT)] = None;
        }
    }
}
