//! What the SYN proxy costs a nat VIP: instructions (or ns) to open one
//! connection, and per established packet, with the proxy and without.
//!
//! A connection opens with the three segments the balancer sees in both
//! cases, as Linux sends them (MSS, SACK, timestamps, window scale):
//! without the proxy the client's SYN, the backend's SYN-ACK and the
//! client's ACK are relayed; with it the balancer answers the SYN with a
//! cookie, turns the client's ACK into the backend's SYN and answers the
//! backend's SYN-ACK. Then every flow's client sends ACKs, relayed (and,
//! proxied, translated).
//!
//! `cargo bench -p fulcrum-perf --bench handshake` prints ns per
//! connection and per established packet for nat and full-nat, proxy off
//! and always. `-- --callgrind MODE [--proxy]` runs the same, for
//! `valgrind --tool=callgrind --toggle-collect='*counted_open*'` (or
//! `'*counted_established*'`): only the engine's work is counted
//! (perf/scripts/callgrind-synproxy.sh).

use std::hint::black_box;
use std::net::IpAddr;
use std::time::Instant;

use fulcrum_dataplane::flow::key::ip_from16;
use fulcrum_dataplane::flow::parse::parse;
use fulcrum_dataplane::wire::be32;
use fulcrum_dataplane::wire::tcp::{self, ACK, Options, SYN};
use fulcrum_dataplane::{Engine, Mode, Packet, SynProxy, Verdict};
use fulcrum_perf::{arg, engine_with_proxy, ip, median};
use fulcrum_testing::frame::{L4, PacketBuilder};

const BATCH: usize = 64;
const HEADROOM: usize = 256;
const CHUNK: usize = 2048;

fn modes() -> [(&'static str, Mode); 2] {
    [("nat", Mode::Nat { snat: vec![] }), ("full-nat", Mode::Nat { snat: vec![ip("198.18.0.200")] })]
}

fn segment(src: (IpAddr, u16), dst: (IpAddr, u16), (seq, ack): (u32, u32), flags: u8, options: Options) -> Vec<u8> {
    let mut b = PacketBuilder::tcp(src.0, src.1, dst.0, dst.1, flags);
    b.l4 = L4::Tcp { src_port: src.1, dst_port: dst.1, flags, seq, ack };
    b.tcp_options = options;
    b.frame()
}

/// Frames in UMEM-like chunks, ready to process in batches.
struct Frames {
    bufs: Vec<u8>,
    lens: Vec<usize>,
}

impl Frames {
    fn new(frames: &[Vec<u8>]) -> Frames {
        let mut bufs = vec![0u8; frames.len() * CHUNK];
        for (f, chunk) in frames.iter().zip(bufs.chunks_mut(CHUNK)) {
            chunk[HEADROOM..HEADROOM + f.len()].copy_from_slice(f);
        }
        Frames { bufs, lens: frames.iter().map(Vec::len).collect() }
    }

    /// Processes every frame (as received on interface 0); returns the
    /// frames as they leave and the time taken.
    fn run(&mut self, e: &mut Engine, now: u32, count: fn(&mut Engine, u32, &mut [Packet])) -> (Vec<Vec<u8>>, f64) {
        let (mut out, mut ns) = (Vec::with_capacity(self.lens.len()), 0.0);
        for (bufs, lens) in self.bufs.chunks_mut(CHUNK * BATCH).zip(self.lens.chunks(BATCH)) {
            let mut batch: Vec<Packet> = bufs.chunks_mut(CHUNK).zip(lens).map(|(b, &len)| Packet::new(b, HEADROOM, len, 0)).collect();
            let start = Instant::now();
            count(e, now, &mut batch);
            ns += start.elapsed().as_nanos() as f64;
            out.extend(batch.iter().map(|p| if let Verdict::Tx(_) = p.verdict { p.frame().to_vec() } else { Vec::new() }));
        }
        (out, ns)
    }
}

/// The passes callgrind counts, by name (`--toggle-collect`). Their
/// bodies differ (the black-boxed tag) so that the compiler cannot fold
/// them into one function under one name.
#[inline(never)]
fn counted_open(e: &mut Engine, now: u32, batch: &mut [Packet]) {
    e.process(now, batch);
    black_box((batch, "open"));
}

#[inline(never)]
fn counted_established(e: &mut Engine, now: u32, batch: &mut [Packet]) {
    e.process(now, batch);
    black_box((batch, "established"));
}

/// Opens `flows` connections (ns per connection), then runs `rounds`
/// ACKs of each (ns per packet).
fn measure(mode: Mode, proxy: bool, flows: usize, rounds: usize) -> (f64, f64) {
    let mut e = engine_with_proxy(mode, flows * 4, if proxy { SynProxy::Always } else { SynProxy::Off });
    let vip = (ip("198.18.0.100"), 80);
    let client = |i: usize| (IpAddr::from([198, 19, (i >> 8) as u8, i as u8]), 1024 + (i >> 16) as u16);
    let syn_opts = Options { mss: Some(1460), wscale: Some(7), sack_permitted: true, timestamp: Some((1000, 0)) };
    let isn = |i: usize| (i as u32).wrapping_mul(2_654_435_761);
    let syns: Vec<Vec<u8>> = (0..flows).map(|i| segment(client(i), vip, (isn(i), 0), SYN, syn_opts)).collect();
    let (first, mut ns) = Frames::new(&syns).run(&mut e, 1, counted_open);
    assert!(first.iter().all(|f| !f.is_empty()), "every SYN is answered or forwarded");
    // Proxied: `first` are the SYN-ACKs to the clients; else the SYNs to
    // the backends. Each side's next segment answers them.
    let server_isn = |f: &[u8]| be32(f, parse(f).unwrap().l4 + 4);
    let to_backend: Vec<Vec<u8>> = if proxy {
        let acks: Vec<Vec<u8>> = (0..flows)
            .map(|i| {
                let cookie = server_isn(&first[i]);
                let our_ts = tcp::options(&first[i][parse(&first[i]).unwrap().l4..]).timestamp.map_or(0, |(v, _)| v);
                segment(client(i), vip, (isn(i) + 1, cookie + 1), ACK, Options { timestamp: Some((1001, our_ts)), ..Options::default() })
            })
            .collect();
        let (syns, t) = Frames::new(&acks).run(&mut e, 2, counted_open);
        ns += t;
        syns
    } else {
        first.clone()
    };
    let synacks: Vec<Vec<u8>> = to_backend
        .iter()
        .map(|f| {
            let p = parse(f).expect("a SYN to the backend");
            let (backend, at) = ((ip_from16(&p.key.dst), p.key.dst_port), (ip_from16(&p.key.src), p.key.src_port));
            let opts = Options { mss: Some(1460), wscale: Some(7), sack_permitted: true, timestamp: Some((5000, 1001)) };
            segment(backend, at, (0x4000_0000, be32(f, p.l4 + 4) + 1), SYN | ACK, opts)
        })
        .collect();
    let (synacks_out, t) = Frames::new(&synacks).run(&mut e, 3, counted_open);
    ns += t;
    let ack_of = |i: usize, ack: u32| segment(client(i), vip, (isn(i) + 1, ack), ACK, Options { timestamp: Some((1002, 5000)), ..Options::default() });
    // The client acknowledges the server ISN it was given: the cookie, or
    // the backend's own.
    let given = if proxy { &first } else { &synacks_out };
    let acks: Vec<Vec<u8>> = (0..flows).map(|i| ack_of(i, server_isn(&given[i]) + 1)).collect();
    if !proxy {
        let (_, t) = Frames::new(&acks).run(&mut e, 4, counted_open);
        ns += t;
    }
    let open_ns = ns / flows as f64;
    let est = (0..rounds)
        .map(|r| {
            let (out, ns) = Frames::new(&acks).run(&mut e, 5 + r as u32, counted_established);
            assert!(out.iter().all(|f| !f.is_empty()), "every established packet is forwarded");
            ns / flows as f64
        })
        .collect();
    (open_ns, median(est))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flows: usize = arg(&args, "--flows").map_or(100_000, |s| s.parse().expect("--flows N"));
    let rounds: usize = arg(&args, "--rounds").map_or(5, |s| s.parse().expect("--rounds R"));
    if let Some(name) = arg(&args, "--callgrind") {
        let (_, mode) = modes().into_iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("unknown mode {name}"));
        measure(mode, args.iter().any(|a| a == "--proxy"), flows, rounds);
        return;
    }
    println!("| mode | SYN proxy | ns per connection opened | ns per established packet |");
    println!("|---|---|---|---|");
    for (name, mode) in modes() {
        for proxy in [false, true] {
            let (open, est) = measure(mode.clone(), proxy, flows, rounds);
            println!("| {name} | {} | {open:.1} | {est:.1} |", if proxy { "always" } else { "off" });
        }
    }
}
