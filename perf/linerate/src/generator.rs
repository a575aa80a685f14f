//! The traffic generator: AF_XDP TX (the engine's `XskIo`) at a set rate.
//!
//! Frames are built once per flow with `PacketBuilder` (full checksums);
//! sending copies a template into a UMEM chunk and patches only what
//! changes, with incremental checksum updates (RFC 1624): the stamp's
//! sequence number and send time, and for SYNs a fresh source address and
//! port, so every SYN opens a new flow; for a device that opens flows
//! only on a SYN (fulcrum's NAT), an established flow's first frame is its
//! SYN. The stamp (`SinkProgram::MAGIC`, flow, seq, time) ends every IP
//! packet, where the sink finds it.
//!
//! One socket per tx queue of the client's interface, all driven by one
//! thread (the machines have two cores): flow i leaves on queue
//! i % queues, which on a veth is the peer's rx queue, so the device under
//! test sees flows spread over its queues as a NIC's RSS would spread them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use fulcrum_dataplane::wire::checksum;
use fulcrum_dataplane::wire::tcp::{ACK, SYN};
use fulcrum_io::afxdp::{XskConfig, XskIo};
use fulcrum_io::{FrameRef, HEADROOM, IoError, PacketIo};
use fulcrum_testing::frame::PacketBuilder;
use fulcrum_tests::xdp::SinkProgram;

/// Most flows: flow i's source address is 198.19.0.0 + i, and the sink
/// tracks sequence numbers of 65536 flows.
pub const MAX_FLOWS: u32 = 32768;
const STAMP: usize = SinkProgram::STAMP_LEN;
/// Frames one `XskIo::send` takes at most.
const MAX_BURST: usize = 64;
/// Bursts are sized so one leaves about every 50 µs: small bursts at low
/// rates (latency is not measured behind a queue of the generator's own
/// making), full ones at high rates (one system call per 64 frames).
const BURST_SPACING_S: f64 = 50e-6;
/// A backlog the generator may catch up on after being descheduled;
/// beyond it, frames are skipped, not sent in a burst.
const MAX_BACKLOG_S: f64 = 1e-3;

/// What kind of packet a flow sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A SYN with a fresh source address and port every time: new flows.
    Syn,
    /// ACKs of one connection: established-flow packets.
    Established,
    /// Datagrams of one UDP flow.
    Udp,
}

/// The traffic to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    /// Frame length without FCS; raised to what the headers and the stamp
    /// need, and to an even length (the stamp's checksum words).
    pub frame: usize,
    /// Distinct flows (templates), sent round robin.
    pub flows: u32,
    /// Relative weights of SYN, established TCP and UDP flows.
    pub mix: [u32; 3],
    /// Share of IPv6 flows, in percent.
    pub v6_percent: u32,
}

impl Profile {
    pub fn describe(&self) -> String {
        let [s, e, u] = self.mix;
        format!("{} B frames, {} flows, SYN:est:UDP {s}:{e}:{u}, {}% IPv6", self.frame, self.flows, self.v6_percent)
    }
}

/// Where the frames go: the next hop's MAC and the destination addresses
/// (a VIP, or a host for a run without a device under test).
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub dst4: Ipv4Addr,
    pub dst6: Ipv6Addr,
    pub tcp_port: u16,
    pub udp_port: u16,
}

/// One flow's frame and where to patch it.
struct Template {
    bytes: Vec<u8>,
    queue: usize,
    kind: Kind,
    /// Offsets of the checksums covering the source address (IPv4 header,
    /// L4) and the L4 one alone; whether the L4 one is UDP's (0 → 0xffff).
    ip_csum: Option<usize>,
    l4_csum: usize,
    udp: bool,
    src_addr: (usize, usize),
    src_port: usize,
    stamp: usize,
    /// An established flow's first frame has gone (`Generator::syn_first`).
    opened: bool,
}

/// Frames sent by one `run`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sent {
    /// Frames the kernel took: fewer than the rate asks when the
    /// generator cannot keep up.
    pub frames: u64,
    pub secs: f64,
}

pub struct Generator {
    ios: Vec<XskIo>,
    tx: Vec<Vec<FrameRef>>,
    templates: Vec<Template>,
    seq: Vec<u32>,
    next: usize,
    /// Counter of SYNs sent: picks each one's source address and port.
    syns: u32,
    pub profile: Profile,
    target: Target,
    /// Each established flow's first frame is a SYN.
    syn_first: bool,
}

/// CLOCK_MONOTONIC in ns, the clock of the sink's `bpf_ktime_get_ns`.
pub use fulcrum_io::unix::monotonic_ns;

/// Flow i's kind: the weights in `mix`, interleaved (slot i % total).
fn kind_of(mix: [u32; 3], i: u32) -> Kind {
    let slot = i % mix.iter().sum::<u32>().max(1);
    if slot < mix[0] {
        Kind::Syn
    } else if slot < mix[0] + mix[1] {
        Kind::Established
    } else {
        Kind::Udp
    }
}

/// Whether flow i is IPv6: `percent` of the flows, spread evenly.
fn is_v6(percent: u32, i: u32) -> bool {
    (i + 1) * percent / 100 != i * percent / 100
}

/// Source address of flow i (or of SYN number i, in the upper half).
fn source(v6: bool, i: u32, syn: bool) -> IpAddr {
    let n = (i & 0x7fff) | if syn { 0x8000 } else { 0 };
    if v6 { IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xff00, 0, 0, 0, 0, n as u16)) } else { IpAddr::V4(Ipv4Addr::new(198, 19, (n >> 8) as u8, n as u8)) }
}

/// Source port of SYN number i: with the address, about 2 billion
/// distinct tuples before one repeats.
fn syn_port(i: u32) -> u16 {
    1024 + ((i >> 15) % 64512) as u16
}

const FLOW_PORT: u16 = 4000;

impl Template {
    fn new(profile: &Profile, target: &Target, flow: u32, queues: usize) -> Template {
        let (kind, v6) = (kind_of(profile.mix, flow), is_v6(profile.v6_percent, flow));
        let src = source(v6, flow, kind == Kind::Syn);
        let (dst, port) = match (v6, kind) {
            (false, Kind::Udp) => (IpAddr::V4(target.dst4), target.udp_port),
            (true, Kind::Udp) => (IpAddr::V6(target.dst6), target.udp_port),
            (false, _) => (IpAddr::V4(target.dst4), target.tcp_port),
            (true, _) => (IpAddr::V6(target.dst6), target.tcp_port),
        };
        let sport = if kind == Kind::Syn { syn_port(0) } else { FLOW_PORT };
        let b = match kind {
            Kind::Syn => PacketBuilder::tcp(src, sport, dst, port, SYN),
            Kind::Established => PacketBuilder::tcp(src, sport, dst, port, ACK),
            Kind::Udp => PacketBuilder::udp(src, sport, dst, port),
        }
        .macs(target.src_mac, target.dst_mac);
        let headers = b.frame().len();
        let len = profile.frame.max(headers + STAMP).next_multiple_of(2);
        let mut payload = vec![0u8; len - headers];
        let at = payload.len() - STAMP;
        payload[at..at + 4].copy_from_slice(&SinkProgram::MAGIC.to_ne_bytes());
        payload[at + 4..at + 8].copy_from_slice(&flow.to_ne_bytes());
        let bytes = b.payload(&payload).frame();
        let (ip_len, addr_at, addr_len) = if v6 { (40, 14 + 8, 16) } else { (20, 14 + 12, 4) };
        let l4 = 14 + ip_len;
        Template {
            queue: flow as usize % queues,
            kind,
            ip_csum: (!v6).then_some(14 + 10),
            l4_csum: l4 + if kind == Kind::Udp { 6 } else { 16 },
            udp: kind == Kind::Udp,
            src_addr: (addr_at, addr_len),
            src_port: l4,
            stamp: bytes.len() - STAMP,
            bytes,
            opened: false,
        }
    }

    /// Writes `new` at `at` and updates the L4 checksum (and the IPv4
    /// header's when `ip` is set) for the change.
    fn patch(&self, frame: &mut [u8], at: usize, new: &[u8], ip: bool) {
        let old: [u8; 16] = std::array::from_fn(|i| frame.get(at + i).copied().unwrap_or(0));
        let old = &old[..new.len()];
        let fix = |frame: &mut [u8], off: usize, udp: bool| {
            let c = checksum::update(u16::from_be_bytes([frame[off], frame[off + 1]]), old, new);
            let c = if udp && c == 0 { 0xffff } else { c };
            frame[off..off + 2].copy_from_slice(&c.to_be_bytes());
        };
        fix(frame, self.l4_csum, self.udp);
        if ip && let Some(off) = self.ip_csum {
            fix(frame, off, false);
        }
        frame[at..at + new.len()].copy_from_slice(new);
    }

    /// Fills `frame` (exactly the template's length) for sending; `open`:
    /// an established flow's first frame, sent as its SYN.
    fn write(&self, frame: &mut [u8], seq: u32, sent_ns: u32, syn: u32, open: bool) {
        frame.copy_from_slice(&self.bytes);
        if open {
            // The data offset and the flags: one 16-bit word.
            let at = self.src_port + 12;
            self.patch(frame, at, &[frame[at], SYN], false);
        }
        if self.kind == Kind::Syn {
            let v6 = self.src_addr.1 == 16;
            let addr = match source(v6, syn, true) {
                IpAddr::V4(a) => a.octets().to_vec(),
                IpAddr::V6(a) => a.octets().to_vec(),
            };
            self.patch(frame, self.src_addr.0, &addr, true);
            self.patch(frame, self.src_port, &syn_port(syn).to_be_bytes(), false);
        }
        let mut stamp = [0u8; 8];
        stamp[..4].copy_from_slice(&seq.to_ne_bytes());
        stamp[4..].copy_from_slice(&sent_ns.to_ne_bytes());
        self.patch(frame, self.stamp + 8, &stamp, false);
    }
}

impl Generator {
    /// Opens one AF_XDP socket per queue of `ifname` (call it inside the
    /// interface's namespace) and builds the frames of `profile`.
    /// `syn_first`: each established flow's first frame is a SYN, for a
    /// device that opens flows only on one.
    pub fn open(ifname: &str, queues: u32, profile: Profile, target: &Target, syn_first: bool) -> Result<Generator, IoError> {
        let ios: Vec<XskIo> = (0..queues.max(1)).map(|q| XskIo::open(&[ifname], q, &XskConfig::default())).collect::<Result<_, _>>()?;
        let mut g = Generator {
            tx: ios.iter().map(|_| Vec::with_capacity(MAX_BURST)).collect(),
            ios,
            templates: Vec::new(),
            seq: Vec::new(),
            next: 0,
            syns: 0,
            profile: profile.clone(),
            target: *target,
            syn_first,
        };
        g.set_profile(profile)?;
        Ok(g)
    }

    /// Sends `profile` from now on (same sockets, new frames).
    pub fn set_profile(&mut self, profile: Profile) -> Result<(), IoError> {
        if profile.flows == 0 || profile.flows > MAX_FLOWS || profile.mix.iter().sum::<u32>() == 0 || profile.v6_percent > 100 {
            return Err(IoError::InvalidArgument(format!("profile {profile:?}: 1 to {MAX_FLOWS} flows, a mix with a weight, IPv6 0-100%")));
        }
        self.templates = (0..profile.flows).map(|i| Template::new(&profile, &self.target, i, self.ios.len())).collect();
        // Sequence numbers go on across profiles: the sink remembers the
        // highest per flow.
        self.seq.resize(profile.flows as usize, 0);
        self.next = 0;
        self.profile = profile;
        Ok(())
    }

    /// The frame length actually sent for each IP version and kind present.
    pub fn frame_lengths(&self) -> (usize, usize) {
        let lens = self.templates.iter().map(|t| t.bytes.len());
        (lens.clone().min().unwrap_or(0), lens.max().unwrap_or(0))
    }

    /// Sends at `rate` frames per second for `duration`.
    pub fn run(&mut self, rate: f64, duration: Duration) -> Result<Sent, IoError> {
        let burst = ((rate * BURST_SPACING_S).ceil() as usize).clamp(1, MAX_BURST);
        let backlog = (rate * MAX_BACKLOG_S).max(MAX_BURST as f64) as u64;
        let (mut sent, mut scheduled) = (0u64, 0u64);
        let start = Instant::now();
        loop {
            let t = start.elapsed();
            if t >= duration {
                break;
            }
            let due = (rate * t.as_secs_f64()) as u64;
            if due - scheduled > backlog {
                scheduled = due - backlog;
            }
            let want = (due - scheduled) as usize;
            if want < burst {
                // Sleep until the next burst is due; spin the last stretch.
                let next = Duration::from_secs_f64((scheduled + burst as u64) as f64 / rate);
                let wait = next.saturating_sub(start.elapsed());
                if wait > Duration::from_micros(60) {
                    std::thread::sleep(wait - Duration::from_micros(50));
                } else {
                    std::hint::spin_loop();
                }
                continue;
            }
            let n = want.min(MAX_BURST);
            let queued = self.send_burst(n)?;
            scheduled += n as u64;
            sent += queued as u64;
        }
        Ok(Sent { frames: sent, secs: start.elapsed().as_secs_f64() })
    }

    /// Queues `n` frames (the next flows in turn); how many the kernel took.
    fn send_burst(&mut self, n: usize) -> Result<usize, IoError> {
        let now = monotonic_ns() as u32;
        for _ in 0..n {
            let i = self.next;
            self.next = (self.next + 1) % self.templates.len();
            let t = &mut self.templates[i];
            let io = &mut self.ios[t.queue];
            let Some(mut f) = io.alloc() else { continue };
            self.seq[i] = self.seq[i].wrapping_add(1);
            let open = self.syn_first && t.kind == Kind::Established && !t.opened;
            t.opened = true;
            if let Some(buf) = io.buffer(&mut f.chunk) {
                t.write(&mut buf[HEADROOM..HEADROOM + t.bytes.len()], self.seq[i], now, self.syns, open);
            }
            if t.kind == Kind::Syn {
                self.syns = self.syns.wrapping_add(1);
            }
            f.len = t.bytes.len();
            self.tx[t.queue].push(f);
        }
        let mut queued = 0;
        for (io, tx) in self.ios.iter_mut().zip(&mut self.tx) {
            queued += io.send(tx)?;
        }
        Ok(queued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fulcrum_dataplane::flow::key::ip_from16;
    use fulcrum_dataplane::flow::parse;

    fn target() -> Target {
        Target {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            dst4: Ipv4Addr::new(198, 18, 100, 1),
            dst6: "2001:db8:100::1".parse().unwrap(),
            tcp_port: 80,
            udp_port: 7,
        }
    }

    /// Recomputing every checksum of a patched frame gives what the
    /// incremental updates wrote.
    #[test]
    fn patched_frames_carry_valid_checksums_and_the_stamp() {
        let profile = Profile { frame: 64, flows: 12, mix: [1, 1, 1], v6_percent: 50 };
        for (flow, open) in (0..12).flat_map(|f| [(f, false), (f, true)]) {
            let t = Template::new(&profile, &target(), flow, 2);
            let mut frame = vec![0u8; t.bytes.len()];
            let open = open && t.kind == Kind::Established;
            t.write(&mut frame, 0x0102_0304 + flow, 0xdead_beef, 0x0012_3456, open);
            let p = parse(&frame).unwrap_or_else(|e| panic!("flow {flow}: {e:?}"));
            let fresh = {
                let (src, dst, k) = (ip_from16(&p.key.src), ip_from16(&p.key.dst), &p.key);
                let b = match t.kind {
                    Kind::Udp => PacketBuilder::udp(src, k.src_port, dst, k.dst_port),
                    Kind::Syn => PacketBuilder::tcp(src, k.src_port, dst, k.dst_port, SYN),
                    Kind::Established if open => PacketBuilder::tcp(src, k.src_port, dst, k.dst_port, SYN),
                    Kind::Established => PacketBuilder::tcp(src, k.src_port, dst, k.dst_port, ACK),
                };
                let payload = p.l4 + if t.kind == Kind::Udp { 8 } else { 20 };
                b.macs(target().src_mac, target().dst_mac).payload(&frame[payload..]).frame()
            };
            assert_eq!(frame, fresh, "flow {flow} ({:?}, v6 {})", t.kind, p.v6);
            let stamp = &frame[frame.len() - STAMP..];
            assert_eq!(stamp[..4], SinkProgram::MAGIC.to_ne_bytes());
            assert_eq!(stamp[4..8], flow.to_ne_bytes());
            assert_eq!(stamp[12..], 0xdead_beef_u32.to_ne_bytes());
            assert!(frame.len() >= 64 && frame.len().is_multiple_of(2));
        }
    }

    #[test]
    fn flows_follow_the_mix_and_every_syn_is_a_new_tuple() {
        let mix = [1, 2, 1];
        let kinds: Vec<Kind> = (0..8).map(|i| kind_of(mix, i)).collect();
        assert_eq!(kinds.iter().filter(|&&k| k == Kind::Established).count(), 4);
        assert_eq!((0..100).filter(|&i| is_v6(25, i)).count(), 25);
        assert_eq!((0..100).filter(|&i| is_v6(0, i)).count(), 0);
        let tuples: std::collections::HashSet<(IpAddr, u16)> = (0..200_000u32).map(|i| (source(false, i, true), syn_port(i))).collect();
        assert_eq!(tuples.len(), 200_000);
        assert!((0..MAX_FLOWS).all(|i| source(false, i, false) != source(false, i, true)));
    }
}
