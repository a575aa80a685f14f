//! The no-panic harness, shared by the property test (`tests/no_panic.rs`),
//! its fuzz-corpus generator and the cargo-fuzz target (`fuzz/`, which
//! includes this file by path): one engine per forwarding mode, frames
//! built from recipes, the fuzz input format, and the invariant check every
//! processed batch must pass.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, LazyLock};

use fulcrum_dataplane::flow::table::Timeouts;
use fulcrum_dataplane::flow::{FlowKey, parse};
use fulcrum_dataplane::forward::tunnel::{Encap, GUE_DEFAULT_PORT};
use fulcrum_dataplane::sched::{BackendState, Scheduler};
use fulcrum_dataplane::stats::Stats;
use fulcrum_dataplane::wire::{IpProtocol, checksum, ipv4::Ipv4};
use fulcrum_dataplane::{Backend, DropReason, Engine, EngineConfig, Interface, Mode, Packet, Services, SynProxy, Verdict, VipSpec};
use fulcrum_testing::frame::{L4, LB_MAC, PacketBuilder, ethernet};

/// The engines under test, by index; each has VIPs of both families.
pub const MODES: [&str; 5] = ["nat-inline", "full-nat", "dsr", "ipip", "gue"];

const SERVER_SIDE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
const BACKEND_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 0x0a];
/// Port of NAT backends, and the source port of replies.
const BACKEND_PORT: u16 = 8080;
/// Full-NAT source ports: a range so small that worker 1 of 2 owns only
/// four ([`OWN_SNAT_PORTS`]) and runs out; the other worker's ports are
/// return traffic without state.
const SNAT_PORTS: (u16, u16) = (1024, 1031);
pub const OWN_SNAT_PORTS: std::ops::Range<u16> = 1028..1032;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// One family's addresses. Clients include a backend's and the SNAT
/// address, so forward and return keys of different flows can collide.
struct Net {
    clients: [IpAddr; 4],
    vip: IpAddr,
    /// The other family's VIP as this family can address it (IPv6 only:
    /// `::ffff:` and the IPv4 VIP), else a host that is no VIP.
    alien_vip: IpAddr,
    /// Weights 1, 2 and 0 (draining).
    backends: [IpAddr; 3],
    snat: IpAddr,
    router: IpAddr,
    stray: IpAddr,
    tunnel_src: IpAddr,
    tunnel_prefix: u8,
}

fn net(v6: bool) -> Net {
    if v6 {
        Net {
            clients: [ip("2001:db8::1"), ip("2001:db8::2"), ip("2001:db8:1::a"), ip("2001:db8::c8")],
            vip: ip("2001:db8:100::64"),
            alien_vip: IpAddr::V6(Ipv6Addr::from([0, 0, 0, 0, 0, 0xffff, 0xc612, 0x0064])),
            backends: [ip("2001:db8:1::a"), ip("2001:db8:1::b"), ip("2001:db8:1::c")],
            snat: ip("2001:db8::c8"),
            router: ip("2001:db8::fe"),
            stray: ip("2001:db8::50"),
            tunnel_src: ip("2001:db8:ff::"),
            tunnel_prefix: 96,
        }
    } else {
        Net {
            clients: [ip("198.18.0.1"), ip("198.18.0.2"), ip("198.18.1.10"), ip("198.18.0.200")],
            vip: ip("198.18.0.100"),
            alien_vip: ip("198.18.0.51"),
            backends: [ip("198.18.1.10"), ip("198.18.1.11"), ip("198.18.1.12")],
            snat: ip("198.18.0.200"),
            router: ip("198.18.0.254"),
            stray: ip("198.18.0.50"),
            tunnel_src: ip("198.18.200.0"),
            tunnel_prefix: 24,
        }
    }
}

/// Two interfaces: 0 faces the clients, 1 the servers. Inline NAT puts
/// its backends behind 1; the one-arm modes reach them through 0.
/// Per family: TCP port 80 (all three backends; flows of a backend that
/// goes down are reset), UDP all ports (the two weighted ones, with
/// source-IP persistence), TCP port 443 (only the draining one: no new flow
/// fits). In nat modes the TCP VIPs have a SYN proxy: automatic on 80,
/// always on 443.
fn services(mode: usize) -> Services {
    let ifaces = vec![Interface { mac: LB_MAC, mtu: 1500 }, Interface { mac: SERVER_SIDE_MAC, mtu: 1500 }];
    let backend_iface = u8::from(mode == 0);
    let (mut backends, mut vips) = (Vec::new(), Vec::new());
    for v6 in [false, true] {
        let n = net(v6);
        let mode = match mode {
            0 => Mode::Nat { snat: vec![] },
            1 => Mode::Nat { snat: vec![n.snat] },
            2 => Mode::Dsr,
            3 => Mode::Tunnel { encap: Encap::Ipip, source: n.tunnel_src, source_prefix: n.tunnel_prefix },
            _ => Mode::Tunnel { encap: Encap::Gue { port: GUE_DEFAULT_PORT }, source: n.tunnel_src, source_prefix: n.tunnel_prefix },
        };
        // DSR and tunnels cannot change the port.
        let port = if let Mode::Nat { .. } = mode { BACKEND_PORT } else { 0 };
        let first = backends.len() as u16;
        for (addr, weight) in n.backends.into_iter().zip([1, 2, 0]) {
            backends.push(Some(Backend { addr, port, weight, up: true, next_hop: BACKEND_MAC, iface: backend_iface }));
        }
        let vip = |proto, port, backends: &[u16]| VipSpec {
            addr: n.vip,
            proto,
            port,
            mode: mode.clone(),
            backends: backends.iter().map(|b| first + b).collect(),
            persistence_ms: None,
            reset_on_down: false,
            syn_proxy: SynProxy::Auto,
        };
        vips.extend([
            Some(VipSpec { reset_on_down: true, ..vip(IpProtocol::TCP, 80, &[0, 1, 2]) }),
            Some(VipSpec { persistence_ms: Some(5_000), ..vip(IpProtocol::UDP, 0, &[0, 1]) }),
            Some(VipSpec { syn_proxy: SynProxy::Always, ..vip(IpProtocol::TCP, 443, &[2]) }),
        ]);
    }
    Services::new(ifaces, vips, backends).unwrap()
}

/// Built once: each holds six Maglev tables, which take a while in debug.
/// Per mode: all up, and the first backend of each family down.
static SERVICES: LazyLock<Vec<[Arc<Services>; 2]>> = LazyLock::new(|| {
    (0..MODES.len())
        .map(|m| {
            let up = services(m);
            let down: Vec<_> = [0, 3].iter().filter_map(|&id| Some((id, Backend { up: false, ..up.backend(id)?.spec }))).collect();
            let down = up.with_backends(&down).unwrap();
            [Arc::new(up), Arc::new(down)]
        })
        .collect()
});

/// Ids of the TCP port 80 VIPs, which get a [`Wayward`] scheduler.
const SCHEDULED_VIPS: [u16; 2] = [0, 3];

/// A scheduler that misbehaves on purpose: no answer, indexes past the
/// pool and draining backends must all fall back to Maglev.
struct Wayward;

impl Scheduler for Wayward {
    fn pick(&mut self, _: &FlowKey, flow_hash: u64, backends: &[BackendState]) -> Option<usize> {
        (!flow_hash.is_multiple_of(4)).then(|| (flow_hash >> 8) as usize % (backends.len() + 2))
    }
}

/// A fresh engine for a mode: worker 1 of 2 (the upper half of the SNAT
/// ports), a 16-entry table so that eviction happens, and short timeouts
/// so that the fuzzed clock expires flows.
fn engine(mode: usize) -> (Engine, Arc<Services>) {
    let services = Arc::clone(&SERVICES[mode][0]);
    let cfg = EngineConfig {
        worker: 1,
        workers: 2,
        table_capacity: 16,
        timeouts: Timeouts { syn_ms: 2_000, established_ms: 20_000, closing_ms: 1_000, udp_ms: 5_000 },
        expire_budget: 8,
        snat_ports: SNAT_PORTS,
        snat_reuse_ms: 3_000,
        // Low, so that the fuzzed SYNs reach them too.
        half_open_per_vip: 4,
        syn_proxy_above: 4,
        max_vips: 8,
        max_backends: 8,
        sticky_clients: 64,
        neighbours: 64,
        fragments: 16,
        fragment_ttl_ms: 2_000,
        sync: true,
    };
    let mut e = Engine::new(cfg, Arc::clone(&services)).unwrap();
    for vip in SCHEDULED_VIPS {
        e.set_scheduler(vip, Some(Box::new(Wayward)));
    }
    (e, services)
}

/// What a built frame is, in terms of the test network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Client to the VIP.
    ToVip,
    /// Client to [`Net::alien_vip`].
    ToAlienVip,
    /// Backend (source port [`BACKEND_PORT`]) to the client: inline NAT
    /// return traffic.
    Reply,
    /// Backend to the SNAT address and `snat_port`: full-NAT return traffic.
    ReplyToSnat,
    /// From a router to the VIP, quoting what the VIP sent the client.
    IcmpError,
    /// Echo request to the VIP.
    Echo,
    /// Client to a host that is no VIP.
    Stray,
}

/// How the IP layer is shaped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    Plain,
    /// IPv4: this many option words; IPv6: this many extension headers
    /// (more than the parser's limit of 8 is malformed).
    Ext(u8),
    /// A fragment: the first one (ports present) or a later one.
    Fragment {
        first: bool,
    },
}

/// A frame of the test network, described by a few small numbers so that
/// generated ones shrink well and the corpus generator can list them.
#[derive(Clone, Debug)]
pub struct Recipe {
    pub v6: bool,
    pub kind: Kind,
    pub tcp: bool,
    /// Index into the clients (and for replies, the backends).
    pub host: u8,
    pub port: u16,
    pub vip_port: u16,
    pub snat_port: u16,
    /// TCP flags; for ICMP errors, which error.
    pub flags: u8,
    pub payload: usize,
    pub ttl: u8,
    pub vlan: bool,
    pub shape: Shape,
}

impl Recipe {
    /// A TCP segment from client 0 to the VIP's port 80.
    pub fn tcp(v6: bool, port: u16, flags: u8) -> Recipe {
        Recipe { v6, kind: Kind::ToVip, tcp: true, host: 0, port, vip_port: 80, snat_port: 0, flags, payload: 0, ttl: 64, vlan: false, shape: Shape::Plain }
    }

    pub fn frame(&self) -> Vec<u8> {
        let n = net(self.v6);
        let client = n.clients[usize::from(self.host) % n.clients.len()];
        let backend = n.backends[usize::from(self.host) % n.backends.len()];
        let payload: Vec<u8> = (0..self.payload).map(|i| i as u8).collect();
        let l4 = |sport, dport| {
            if self.tcp {
                L4::Tcp { src_port: sport, dst_port: dport, flags: self.flags, seq: 1, ack: 1 }
            } else {
                L4::Udp { src_port: sport, dst_port: dport, checksum: true }
            }
        };
        let mut b = match self.kind {
            Kind::ToVip => PacketBuilder::ip(client, n.vip, l4(self.port, self.vip_port)),
            Kind::ToAlienVip => PacketBuilder::ip(client, n.alien_vip, l4(self.port, self.vip_port)),
            Kind::Reply => PacketBuilder::ip(backend, client, l4(BACKEND_PORT, self.port)),
            Kind::ReplyToSnat => PacketBuilder::ip(backend, n.snat, l4(BACKEND_PORT, self.snat_port)),
            Kind::Stray => PacketBuilder::ip(client, n.stray, l4(self.port, self.vip_port)),
            Kind::Echo => PacketBuilder::icmp(client, n.vip, if self.v6 { 128 } else { 8 }, 0, [0, 1, 0, 1]),
            Kind::IcmpError => {
                let sent = PacketBuilder::ip(n.vip, client, l4(self.vip_port, self.port)).payload(&payload).ip_packet();
                let (msg_type, code, rest) = match (self.v6, self.flags % 3) {
                    (false, 0) => (3, 4, [0, 0, 0x05, 0x78]),
                    (false, 1) => (11, 0, [0; 4]),
                    (false, _) => (3, 3, [0; 4]),
                    (true, 0) => (2, 0, 1400u32.to_be_bytes()),
                    (true, 1) => (3, 0, [0; 4]),
                    (true, _) => (1, 4, [0; 4]),
                };
                // Routers quote the IP header and at least 8 bytes.
                let quote = (if self.v6 { 48 } else { 28 } + self.payload % 64).min(sent.len());
                PacketBuilder::icmp(n.router, n.vip, msg_type, code, rest).payload(&sent[..quote])
            }
        };
        if self.kind != Kind::IcmpError {
            b = b.payload(&payload);
        }
        b.ttl = self.ttl;
        b.vlan = self.vlan.then_some(100);
        let mut ip = b.ip_packet();
        self.shape_ip(&mut ip);
        ethernet(b.src_mac, b.dst_mac, b.vlan, self.v6, &ip)
    }

    /// Applies the shape to a built IP packet. Neither options nor
    /// extension headers enter the transport checksum, so it stays valid.
    fn shape_ip(&self, ip: &mut Vec<u8>) {
        if self.v6 {
            let (n, frag) = match self.shape {
                Shape::Plain => return,
                Shape::Ext(n) => (n, None),
                Shape::Fragment { first } => (0, Some(first)),
            };
            // Hop-by-hop and destination options (one PadN option each),
            // routing (segment routing, no segments left); the first byte
            // holds the header's own type until the chain is linked below.
            let kinds = [[0u8, 0, 1, 4, 0, 0, 0, 0], [43, 0, 4, 0, 0, 0, 0, 0], [60, 0, 1, 4, 0, 0, 0, 0]];
            let mut hdrs: Vec<[u8; 8]> = (0..n).map(|i| kinds[usize::from(i) % 3]).collect();
            if let Some(first) = frag {
                hdrs.push([44, 0, if first { 0 } else { 0x05 }, if first { 1 } else { 0 }, 0, 0, 0, 7]);
            }
            let mut next = ip[6];
            for h in hdrs.iter_mut().rev() {
                (h[0], next) = (next, h[0]);
            }
            ip[6] = next;
            let ext: Vec<u8> = hdrs.concat();
            let plen = u16::from_be_bytes([ip[4], ip[5]]) + ext.len() as u16;
            ip[4..6].copy_from_slice(&plen.to_be_bytes());
            ip.splice(40..40, ext);
        } else {
            match self.shape {
                Shape::Plain => return,
                Shape::Ext(n) => {
                    let words = n.min(10);
                    ip[0] = 0x45 + words;
                    ip.splice(20..20, (0..usize::from(words) * 4).map(|_| 1)); // NOPs
                    let total = ip.len() as u16;
                    ip[2..4].copy_from_slice(&total.to_be_bytes());
                }
                Shape::Fragment { first } => ip[6..8].copy_from_slice(&if first { 0x2000u16 } else { 0x00b9 }.to_be_bytes()),
            }
            Ipv4::new_unchecked(&mut ip[..]).fill_checksum();
        }
    }
}

/// One frame to process, in a buffer with this much room around it.
#[derive(Clone, Debug)]
pub struct Frame {
    pub bytes: Vec<u8>,
    pub ingress: u8,
    pub headroom: usize,
    pub tailroom: usize,
}

#[derive(Clone, Debug)]
pub struct Batch {
    /// How far the clock moves before this batch.
    pub advance_ms: u32,
    pub frames: Vec<Frame>,
}

/// Batches for one engine, from a starting clock (which may wrap).
#[derive(Clone, Debug)]
pub struct Traffic {
    pub start_ms: u32,
    pub batches: Vec<Batch>,
}

/// Clock unit of the fuzz input format.
const TICK_MS: u32 = 50;

impl Traffic {
    /// Reads a fuzz input; any bytes make some traffic:
    ///
    /// ```text
    /// input = mode:u8 start_ms:u32be frame*
    /// frame = ctl:u8 ingress:u8 headroom:u8 tailroom:u8 len:u16be bytes[len]
    /// ```
    ///
    /// `mode` indexes [`MODES`] (modulo). Bit 0 of `ctl` starts a new batch
    /// at this frame, after the clock advances by `ctl >> 1` ticks of 50 ms.
    /// Missing bytes read as zero; a frame cut short by the end of the
    /// input keeps what there is.
    pub fn decode(data: &[u8]) -> (usize, Traffic) {
        let byte = |i: usize| data.get(i).copied().unwrap_or(0);
        let mode = usize::from(byte(0)) % MODES.len();
        let start_ms = u32::from_be_bytes([byte(1), byte(2), byte(3), byte(4)]);
        let mut t = Traffic { start_ms, batches: Vec::new() };
        let mut at = 5;
        while at < data.len() {
            let ctl = byte(at);
            let len = usize::from(u16::from_be_bytes([byte(at + 4), byte(at + 5)]));
            let bytes = data.get(at + 6..).map_or(&[][..], |rest| &rest[..len.min(rest.len())]);
            let frame = Frame { bytes: bytes.to_vec(), ingress: byte(at + 1), headroom: usize::from(byte(at + 2)), tailroom: usize::from(byte(at + 3)) };
            at += 6 + len;
            match t.batches.last_mut() {
                Some(b) if ctl & 1 == 0 => b.frames.push(frame),
                _ => t.batches.push(Batch { advance_ms: u32::from(ctl >> 1) * TICK_MS, frames: vec![frame] }),
            }
        }
        (mode, t)
    }

    /// The fuzz input that [`decode`](Self::decode)s to this traffic. Clock
    /// advances must be whole ticks, rooms and frame lengths must fit
    /// their fields, and batches must not be empty.
    pub fn encode(&self, mode: usize) -> Vec<u8> {
        let mut out = vec![mode as u8];
        out.extend(self.start_ms.to_be_bytes());
        for b in &self.batches {
            let ticks = b.advance_ms / TICK_MS;
            assert!(ticks < 128 && ticks * TICK_MS == b.advance_ms, "clock advance {} ms", b.advance_ms);
            for (i, f) in b.frames.iter().enumerate() {
                let ctl = if i == 0 { (ticks as u8) << 1 | 1 } else { 0 };
                let room = |r: usize| u8::try_from(r).expect("room fits a byte");
                out.extend([ctl, f.ingress, room(f.headroom), room(f.tailroom)]);
                out.extend(u16::try_from(f.bytes.len()).expect("frame fits").to_be_bytes());
                out.extend(&f.bytes);
            }
        }
        out
    }
}

/// Runs traffic through a fresh engine of `mode`, checking every batch.
pub fn drive(mode: usize, t: &Traffic) -> Arc<Stats> {
    let (mut peer, _) = engine(mode);
    let (mut engine, services) = engine(mode);
    let mut now = t.start_ms;
    for (i, b) in t.batches.iter().enumerate() {
        now = now.wrapping_add(b.advance_ms);
        // Every other batch the first backends are down: their flows are
        // reset or moved, then they come back.
        engine.set_services(Arc::clone(&SERVICES[mode][i % 2])).unwrap();
        process_checked(&mut engine, &services.interfaces, now, &b.frames, &format!("{} batch {i}", MODES[mode]));
        // What the flows tell a peer, and the peer taking it in (and the
        // engine its own entries, as after a failback), never break.
        peer.set_services(Arc::clone(&SERVICES[mode][(i + 1) % 2])).unwrap();
        if i % 5 == 4 {
            engine.start_bulk_sync();
        }
        let mut exported = Vec::new();
        engine.export_sync(now, true, |e| {
            exported.push(*e);
            true
        });
        for e in &exported {
            let _ = peer.import(now, e);
            let _ = engine.import(now, e);
        }
    }
    Arc::clone(engine.stats())
}

/// Processes one batch and panics, naming `what`, on any broken invariant:
/// - a Tx goes out of a configured interface, with that interface's MAC as
///   source, and the frame parses; a valid IPv4 header checksum and a valid
///   transport checksum on the way in stay valid on the way out;
/// - a passed or handed-off frame is untouched;
/// - every frame stays inside its buffer;
/// - the drop and pass counters move exactly as the verdicts say.
fn process_checked(engine: &mut Engine, ifaces: &[Interface], now: u32, frames: &[Frame], what: &str) {
    let mut bufs: Vec<Vec<u8>> = frames
        .iter()
        .map(|f| {
            let mut buf = vec![0u8; f.headroom + f.bytes.len() + f.tailroom];
            buf[f.headroom..f.headroom + f.bytes.len()].copy_from_slice(&f.bytes);
            buf
        })
        .collect();
    let mut batch: Vec<Packet> = bufs.iter_mut().zip(frames).map(|(buf, f)| Packet::new(buf, f.headroom, f.bytes.len(), f.ingress)).collect();
    let stats = Arc::clone(engine.stats());
    let drops_before = DropReason::ALL.iter().map(|&r| stats.drops.get(r)).collect::<Vec<_>>();
    let passed_before = stats.passed.get();
    engine.process(now, &mut batch);

    let (mut drops, mut passed) = (vec![0u64; DropReason::COUNT], 0);
    for (i, (pkt, f)) in batch.iter().zip(frames).enumerate() {
        let ctx = || format!("{what} frame {i} ({:?}, ingress {}, headroom {}): {}", pkt.verdict, f.ingress, f.headroom, hex(&f.bytes));
        assert!(pkt.start <= pkt.buf.len() && pkt.len <= pkt.buf.len() - pkt.start, "frame outside its buffer: {}", ctx());
        let out = pkt.frame();
        match pkt.verdict {
            Verdict::Pass => {
                passed += 1;
                assert!(pkt.start == f.headroom && out == &f.bytes[..], "passed frame changed: {}", ctx());
            }
            Verdict::Drop(r) => drops[r as usize] += 1,
            // Another worker processes it as it arrived.
            Verdict::Handoff(_) => assert!(pkt.start == f.headroom && out == &f.bytes[..], "handed-off frame changed: {}", ctx()),
            Verdict::Tx(iface) => {
                let Some(iface) = ifaces.get(usize::from(iface)) else { panic!("Tx on an unconfigured interface: {}", ctx()) };
                assert!(parse(out).is_ok(), "sent frame does not parse: {}\nout: {}", ctx(), hex(out));
                assert_eq!(out[6..12], iface.mac, "source MAC is not the interface's: {}", ctx());
                assert!(!ip_header_ok(&f.bytes) || ip_header_ok(out), "IPv4 header checksum broken: {}\nout: {}", ctx(), hex(out));
                assert!(!transport_ok(&f.bytes) || transport_ok(out), "transport checksum broken: {}\nout: {}", ctx(), hex(out));
            }
        }
    }
    for &r in DropReason::ALL {
        assert_eq!(stats.drops.get(r) - drops_before[r as usize], drops[r as usize], "{what}: {} drops counted", r.label());
    }
    assert_eq!(stats.passed.get() - passed_before, passed, "{what}: passes counted");
}

/// The IPv4 header checksum verifies (IPv6 has none).
fn ip_header_ok(frame: &[u8]) -> bool {
    parse(frame).is_ok_and(|p| p.v6 || checksum::checksum(&frame[p.l3..p.l4], 0) == 0)
}

/// The TCP, UDP or ICMP checksum verifies, or the packet has none to check
/// (fragments, other protocols, IPv4 UDP sent without one).
fn transport_ok(frame: &[u8]) -> bool {
    let Ok(p) = parse(frame) else { return false };
    if p.fragment.is_some() {
        return true;
    }
    let (ip, l4) = (&frame[p.l3..p.end], &frame[p.l4..p.end]);
    let (src, dst) = if p.v6 { (&ip[8..24], &ip[24..40]) } else { (&ip[12..16], &ip[16..20]) };
    let verify = |data: &[u8], proto| checksum::checksum(data, checksum::pseudo_header(src, dst, proto, data.len() as u32)) == 0;
    match p.key.proto {
        IpProtocol::TCP => verify(l4, IpProtocol::TCP),
        // The UDP length may end before the IP packet does.
        IpProtocol::UDP => (!p.v6 && l4[6..8] == [0, 0]) || verify(&l4[..usize::from(u16::from_be_bytes([l4[4], l4[5]]))], IpProtocol::UDP),
        IpProtocol::ICMP if !p.v6 => checksum::checksum(l4, 0) == 0,
        IpProtocol::ICMPV6 if p.v6 => verify(l4, IpProtocol::ICMPV6),
        _ => true,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
