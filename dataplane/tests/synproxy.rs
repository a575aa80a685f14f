//! The SYN proxy of nat VIPs, one handshake at a time: the balancer
//! answers the SYN with a cookie and keeps nothing; the client's ACK that
//! returns it opens the backend connection with the client's options; the
//! backend's SYN-ACK is answered by the balancer; from then on sequence
//! numbers, timestamps, SACK blocks and windows are translated both ways.

use std::net::IpAddr;
use std::sync::Arc;

use fulcrum_dataplane::flow::parse::{Parsed, parse};
use fulcrum_dataplane::wire::tcp::{self, ACK, Options, PSH, RST, SYN};
use fulcrum_dataplane::wire::{IpProtocol, be16, be32, checksum};
use fulcrum_dataplane::{Backend, DropReason, Engine, EngineConfig, Interface, Mode, Services, SynProxy, Verdict, VipSpec};
use fulcrum_testing::frame::{LB_MAC, PacketBuilder};
use fulcrum_testing::one_vip::process;

const CLIENT_ISN: u32 = 0x1000_0000;
const BACKEND_ISN: u32 = 0x7000_0000;
const CLIENT_TS: u32 = 500_000;
const BACKEND_TS: u32 = 9_000_000;
const NOW: u32 = 1_000_000;

/// One VIP, TCP port 80, over one backend on port 8080, in a family.
struct Net {
    client: IpAddr,
    vip: IpAddr,
    backend: IpAddr,
    snat: IpAddr,
}

fn net(v6: bool) -> Net {
    let ip = |s: &str| s.parse().unwrap();
    if v6 {
        Net { client: ip("2001:db8::1"), vip: ip("2001:db8::100"), backend: ip("2001:db8:1::10"), snat: ip("2001:db8::200") }
    } else {
        Net { client: ip("198.18.0.1"), vip: ip("198.18.0.100"), backend: ip("198.18.1.10"), snat: ip("198.18.0.200") }
    }
}

const BACKEND_MAC: [u8; 6] = [2, 0, 0, 0, 1, 10];

fn engine(n: &Net, full_nat: bool, syn_proxy: SynProxy, cfg: EngineConfig) -> Engine {
    let mode = Mode::Nat { snat: full_nat.then_some(n.snat).into_iter().collect() };
    let vip = VipSpec { addr: n.vip, proto: IpProtocol::TCP, port: 80, mode, backends: vec![0], persistence_ms: None, reset_on_down: false, syn_proxy };
    let backend = Backend { addr: n.backend, port: 8080, weight: 1, up: true, next_hop: BACKEND_MAC, iface: 0 };
    let s = Services::new(vec![Interface { mac: LB_MAC, mtu: 1500 }], vec![Some(vip)], vec![Some(backend)]).unwrap();
    Engine::new(EngineConfig { table_capacity: 1024, ..cfg }, Arc::new(s)).unwrap()
}

fn segment(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, (seq, ack): (u32, u32), flags: u8, options: Options) -> PacketBuilder {
    let mut b = PacketBuilder::tcp(src, sport, dst, dport, flags);
    b.l4 = fulcrum_testing::frame::L4::Tcp { src_port: sport, dst_port: dport, flags, seq, ack };
    b.tcp_options = options;
    b
}

/// A frame as it leaves, checked: IPv4 header and TCP checksums valid.
struct Out {
    frame: Vec<u8>,
    p: Parsed,
}

impl Out {
    fn new(frame: Vec<u8>) -> Out {
        let p = parse(&frame).expect("the balancer sends a well-formed frame");
        assert_eq!(p.key.proto, IpProtocol::TCP);
        if !p.v6 {
            assert_eq!(checksum::checksum(&frame[p.l3..p.l4], 0), 0, "IPv4 header checksum");
        }
        let (src, dst) = if p.v6 { (&p.key.src[..], &p.key.dst[..]) } else { (&p.key.src[12..], &p.key.dst[12..]) };
        let seg = &frame[p.l4..p.end];
        assert_eq!(checksum::checksum(seg, checksum::pseudo_header(src, dst, IpProtocol::TCP, seg.len() as u32)), 0, "TCP checksum");
        Out { frame, p }
    }
    fn seg(&self) -> &[u8] {
        &self.frame[self.p.l4..self.p.end]
    }
    fn seq(&self) -> u32 {
        be32(self.seg(), 4)
    }
    fn ack(&self) -> u32 {
        be32(self.seg(), 8)
    }
    fn window(&self) -> u16 {
        be16(self.seg(), 14)
    }
    fn options(&self) -> Options {
        tcp::options(self.seg())
    }
    fn ends(&self) -> (IpAddr, u16, IpAddr, u16) {
        let k = &self.p.key;
        (fulcrum_dataplane::flow::key::ip_from16(&k.src), k.src_port, fulcrum_dataplane::flow::key::ip_from16(&k.dst), k.dst_port)
    }
    fn payload(&self) -> &[u8] {
        let seg = self.seg();
        &seg[usize::from(seg[12] >> 4) * 4..]
    }
}

fn run(e: &mut Engine, b: &PacketBuilder) -> (Verdict, Out) {
    let (v, frame) = process(e, &b.frame(), NOW);
    (v, Out::new(frame))
}

fn client_syn_options() -> Options {
    Options { mss: Some(1460), wscale: Some(9), sack_permitted: true, timestamp: Some((CLIENT_TS, 0)) }
}

/// A proxied connection after the three-way handshake with the client and
/// the balancer's SYN to the backend: the cookie, the timestamp the
/// balancer gave the client, and where the backend sees the client.
struct Opened {
    cookie: u32,
    our_ts: u32,
    client_port: u16,
    seen_as: (IpAddr, u16),
}

fn open(e: &mut Engine, n: &Net, port: u16, options: Options) -> Opened {
    let syn = segment(n.client, port, n.vip, 80, (CLIENT_ISN, 0), SYN, options);
    let (v, synack) = run(e, &syn);
    assert_eq!(v, Verdict::Tx(0), "the SYN is answered out of the interface it came in on");
    assert_eq!(synack.ends(), (n.vip, 80, n.client, port));
    assert_eq!(synack.p.tcp_flags, SYN | ACK);
    assert_eq!(synack.ack(), CLIENT_ISN + 1);
    assert_eq!(&synack.frame[..6], &fulcrum_testing::frame::CLIENT_MAC, "to the client's MAC");
    let offered = synack.options();
    assert_eq!(offered.mss, Some(if n.vip.is_ipv6() { 1440 } else { 1460 }));
    assert_eq!(offered.sack_permitted, options.sack_permitted && options.timestamp.is_some());
    assert_eq!(offered.wscale.is_some(), options.wscale.is_some() && options.timestamp.is_some());
    assert_eq!(e.table().len(), 0, "a SYN answered with a cookie leaves no state");
    let cookie = synack.seq();
    let our_ts = offered.timestamp.map_or(0, |(val, ecr)| {
        assert_eq!(ecr, CLIENT_TS);
        val
    });

    let ack_opts = Options { timestamp: options.timestamp.map(|_| (CLIENT_TS + 1, our_ts)), ..Options::default() };
    let mut ack = segment(n.client, port, n.vip, 80, (CLIENT_ISN + 1, cookie + 1), ACK, ack_opts);
    ack.tcp_window = 1000;
    let (v, syn) = run(e, &ack);
    assert_eq!(v, Verdict::Tx(0));
    assert_eq!(e.table().len(), 2, "a returned cookie opens the flow");
    assert_eq!(syn.p.tcp_flags, SYN, "the client's ACK became the backend's SYN");
    assert_eq!(syn.seq(), CLIENT_ISN);
    assert_eq!(&syn.frame[..6], &BACKEND_MAC);
    let (src, sport, dst, dport) = syn.ends();
    assert_eq!((dst, dport), (n.backend, 8080));
    let sent = syn.options();
    assert_eq!(sent.mss, Some(cookie_mss(n.vip.is_ipv6(), options.mss)));
    if options.timestamp.is_some() {
        assert_eq!(sent.wscale, options.wscale);
        assert_eq!(sent.sack_permitted, options.sack_permitted);
        assert_eq!(sent.timestamp, Some((CLIENT_TS + 1, 0)));
    } else {
        assert_eq!((sent.wscale, sent.sack_permitted, sent.timestamp), (None, false, None), "without timestamps the cookie keeps only the MSS");
    }
    Opened { cookie, our_ts, client_port: port, seen_as: (src, sport) }
}

/// The MSS a cookie keeps of the client's: the largest entry of Linux's
/// table not above it.
fn cookie_mss(v6: bool, client: Option<u16>) -> u16 {
    match (v6, client) {
        (false, Some(1460..)) => 1460,
        (false, Some(1400)) => 1300,
        (true, Some(1440..)) => 1440,
        other => panic!("no expectation for {other:?}"),
    }
}

/// The client's first data right after its ACK, before the backend can
/// have answered the balancer's SYN.
fn first_data(n: &Net, o: &Opened, payload: &[u8]) -> PacketBuilder {
    let ts = Options { timestamp: Some((CLIENT_TS + 2, o.our_ts)), ..Options::default() };
    segment(n.client, o.client_port, n.vip, 80, (CLIENT_ISN + 1, o.cookie + 1), ACK | PSH, ts).payload(payload)
}

fn from_backend(n: &Net, o: &Opened, (seq, ack): (u32, u32), flags: u8, options: Options) -> PacketBuilder {
    segment(n.backend, 8080, o.seen_as.0, o.seen_as.1, (seq, ack), flags, options).macs(BACKEND_MAC, LB_MAC)
}

#[test]
fn a_proxied_connection_is_translated_both_ways() {
    for v6 in [false, true] {
        for full_nat in [false, true] {
            let n = net(v6);
            let mut e = engine(&n, full_nat, SynProxy::Always, EngineConfig::default());
            let o = open(&mut e, &n, 40000, client_syn_options());
            assert_eq!(o.seen_as, if full_nat { (n.snat, o.seen_as.1) } else { (n.client, 40000) });

            // The backend accepts with scale 8 (the client was offered 7).
            let b_opts = Options { mss: Some(1460), wscale: Some(8), sack_permitted: true, timestamp: Some((BACKEND_TS, CLIENT_TS + 1)) };
            let (v, ack) = run(&mut e, &from_backend(&n, &o, (BACKEND_ISN, CLIENT_ISN + 1), SYN | ACK, b_opts));
            assert_eq!(v, Verdict::Tx(0), "the balancer completes the backend's handshake");
            assert_eq!(ack.ends(), (o.seen_as.0, o.seen_as.1, n.backend, 8080));
            assert_eq!((ack.p.tcp_flags, ack.seq(), ack.ack(), ack.window()), (ACK, CLIENT_ISN + 1, BACKEND_ISN + 1, 1000));
            assert_eq!(ack.options().timestamp, Some((CLIENT_TS + 1, BACKEND_TS)));
            assert_eq!(&ack.frame[..6], &BACKEND_MAC);

            // Backend data: into the client's sequence space and clock,
            // the window rescaled from shift 8 to 7.
            let mut data = from_backend(
                &n,
                &o,
                (BACKEND_ISN + 1, CLIENT_ISN + 1),
                ACK | PSH,
                Options { timestamp: Some((BACKEND_TS + 5, CLIENT_TS + 1)), ..Options::default() },
            )
            .payload(b"hello");
            data.tcp_window = 300;
            let (v, out) = run(&mut e, &data);
            assert_eq!(v, Verdict::Tx(0));
            assert_eq!(out.ends(), (n.vip, 80, n.client, 40000));
            assert_eq!((out.seq(), out.ack(), out.window()), (o.cookie + 1, CLIENT_ISN + 1, 600));
            assert_eq!(out.options().timestamp, Some((o.our_ts + 5, CLIENT_TS + 1)));
            assert_eq!(out.payload(), b"hello");

            // The client's ACK with a SACK block: into the backend's space.
            let mut sack = vec![1, 1, 5, 10];
            sack.extend_from_slice(&(o.cookie + 20).to_be_bytes());
            sack.extend_from_slice(&(o.cookie + 30).to_be_bytes());
            let mut reply = segment(
                n.client,
                40000,
                n.vip,
                80,
                (CLIENT_ISN + 1, o.cookie + 6),
                ACK,
                Options { timestamp: Some((CLIENT_TS + 2, o.our_ts + 5)), ..Options::default() },
            );
            reply.payload = Vec::new();
            let mut f = reply.frame();
            splice_sack(&mut f, v6, &sack);
            let (v, out) = process(&mut e, &f, NOW);
            let out = Out::new(out);
            assert_eq!(v, Verdict::Tx(0));
            assert_eq!(out.ends().2, n.backend);
            assert_eq!(out.ack(), BACKEND_ISN + 6);
            assert_eq!(out.options().timestamp, Some((CLIENT_TS + 2, BACKEND_TS + 5)));
            let edges: Vec<u32> = tcp::Stamps::find(out.seg()).sack_edges().map(|at| be32(out.seg(), at)).collect();
            assert_eq!(edges, vec![BACKEND_ISN + 20, BACKEND_ISN + 30]);
            assert_eq!(e.stats().syn_cookies_sent.get(), 1);
            assert_eq!(e.stats().syn_cookies_accepted.get(), 1);
        }
    }
}

/// Appends a raw option block (a multiple of 4 bytes) to the TCP header of
/// a frame and fixes the lengths and checksums.
fn splice_sack(f: &mut Vec<u8>, v6: bool, opts: &[u8]) {
    let p = parse(f).unwrap();
    let hlen = usize::from(f[p.l4 + 12] >> 4) * 4;
    let at = p.l4 + hlen;
    f.splice(at..at, opts.iter().copied());
    f[p.l4 + 12] = (((hlen + opts.len()) / 4) as u8) << 4;
    let seg_len = f.len() - p.l4;
    if v6 {
        f[p.l3 + 4..p.l3 + 6].copy_from_slice(&(seg_len as u16).to_be_bytes());
    } else {
        let total = (f.len() - p.l3) as u16;
        f[p.l3 + 2..p.l3 + 4].copy_from_slice(&total.to_be_bytes());
        f[p.l3 + 10..p.l3 + 12].fill(0);
        let c = checksum::checksum(&f[p.l3..p.l4], 0);
        f[p.l3 + 10..p.l3 + 12].copy_from_slice(&c.to_be_bytes());
    }
    let (src, dst) = if v6 { (p.key.src.to_vec(), p.key.dst.to_vec()) } else { (p.key.src[12..].to_vec(), p.key.dst[12..].to_vec()) };
    tcp::fill_checksum(&mut f[p.l4..], &src, &dst);
}

#[test]
fn without_timestamps_only_the_mss_survives_and_windows_are_not_scaled() {
    let n = net(false);
    let mut e = engine(&n, true, SynProxy::Always, EngineConfig::default());
    let o = open(&mut e, &n, 40000, Options { mss: Some(1400), wscale: Some(9), sack_permitted: true, timestamp: None });
    let (v, ack) = run(&mut e, &from_backend(&n, &o, (BACKEND_ISN, CLIENT_ISN + 1), SYN | ACK, Options { mss: Some(1460), ..Options::default() }));
    assert_eq!(v, Verdict::Tx(0));
    assert_eq!(ack.options(), Options::default());
    let mut data = from_backend(&n, &o, (BACKEND_ISN + 1, CLIENT_ISN + 1), ACK, Options::default());
    data.tcp_window = 4321;
    let (_, out) = run(&mut e, &data);
    assert_eq!((out.seq(), out.window()), (o.cookie + 1, 4321));
}

#[test]
fn forged_and_stale_acks_open_nothing() {
    let n = net(false);
    let mut e = engine(&n, true, SynProxy::Always, EngineConfig::default());
    let syn = segment(n.client, 40000, n.vip, 80, (CLIENT_ISN, 0), SYN, client_syn_options());
    let (_, synack) = run(&mut e, &syn);
    let cookie = synack.seq();
    let cases = [
        (CLIENT_ISN + 1, cookie.wrapping_add(2), 40000, NOW),
        (CLIENT_ISN + 2, cookie + 1, 40000, NOW),
        (CLIENT_ISN + 1, cookie + 1, 40001, NOW),
        // Two clock epochs later the cookie has expired.
        (CLIENT_ISN + 1, cookie + 1, 40000, NOW + (2 << 16) + 1),
    ];
    for (seq, ack, port, now) in cases {
        let f = segment(n.client, port, n.vip, 80, (seq, ack), ACK, Options::default()).frame();
        let (v, _) = process(&mut e, &f, now);
        assert_eq!(v, Verdict::Drop(DropReason::NoState), "seq {seq:#x} ack {ack:#x} port {port} at {now}");
        assert_eq!(e.table().len(), 0);
    }
    // The genuine ACK, a minute later, still opens the flow.
    let f = segment(n.client, 40000, n.vip, 80, (CLIENT_ISN + 1, cookie + 1), ACK, Options::default()).frame();
    let (v, _) = process(&mut e, &f, NOW + 60_000);
    assert_eq!(v, Verdict::Tx(0));
    assert_eq!(e.stats().syn_cookies_accepted.get(), 1);
}

#[test]
fn before_the_backend_answers_the_client_s_segments_resend_the_syn_and_a_refusal_resets_the_client() {
    let n = net(false);
    let mut e = engine(&n, true, SynProxy::Always, EngineConfig::default());
    let o = open(&mut e, &n, 40000, client_syn_options());
    let early = first_data(&n, &o, b"GET /");
    let (v, syn) = run(&mut e, &early);
    assert_eq!(v, Verdict::Tx(0));
    assert_eq!((syn.p.tcp_flags, syn.seq(), syn.payload().len()), (SYN, CLIENT_ISN, 0));
    // Nothing but the SYN-ACK or a refusal passes from the backend yet.
    let (v, _) = run(&mut e, &from_backend(&n, &o, (BACKEND_ISN + 1, CLIENT_ISN + 1), ACK, Options::default()));
    assert_eq!(v, Verdict::Drop(DropReason::NoState));
    let (v, rst) = run(&mut e, &from_backend(&n, &o, (0, CLIENT_ISN + 1), RST | ACK, Options::default()));
    assert_eq!(v, Verdict::Tx(0));
    assert_eq!(rst.ends(), (n.vip, 80, n.client, o.client_port));
    assert_eq!(rst.seq(), o.cookie + 1, "exactly where the client expects it");
}

#[test]
fn the_automatic_proxy_engages_past_the_half_open_threshold() {
    let n = net(false);
    let cfg = EngineConfig { syn_proxy_above: 4, ..EngineConfig::default() };
    let mut e = engine(&n, true, SynProxy::Auto, cfg);
    for port in 0..4 {
        let (v, out) = run(&mut e, &segment(n.client, 40000 + port, n.vip, 80, (CLIENT_ISN, 0), SYN, client_syn_options()));
        assert_eq!((v, out.ends().2), (Verdict::Tx(0), n.backend), "below the threshold SYNs go to the backend");
    }
    for port in 4..100 {
        let (v, out) = run(&mut e, &segment(n.client, 40000 + port, n.vip, 80, (CLIENT_ISN, 0), SYN, client_syn_options()));
        assert_eq!((v, out.p.tcp_flags, out.ends().2), (Verdict::Tx(0), SYN | ACK, n.client));
    }
    assert_eq!(e.table().len(), 8, "the flood past the threshold made no entry");
    assert_eq!(e.stats().syn_cookies_sent.get(), 96);
    let mut off = engine(&n, true, SynProxy::Off, cfg);
    for port in 0..100 {
        let (_, out) = run(&mut off, &segment(n.client, 40000 + port, n.vip, 80, (CLIENT_ISN, 0), SYN, client_syn_options()));
        assert_eq!(out.ends().2, n.backend, "with the proxy off every SYN goes to the backend");
    }
}

#[test]
fn the_client_s_first_data_waits_for_the_backend_and_goes_with_the_handshake_s_ack() {
    let n = net(true);
    let mut e = engine(&n, true, SynProxy::Always, EngineConfig::default());
    let o = open(&mut e, &n, 40000, client_syn_options());
    let request = first_data(&n, &o, b"GET / HTTP/1.1\r\n\r\n");
    let (_, syn) = run(&mut e, &request);
    assert_eq!(syn.p.tcp_flags, SYN, "the SYN again, in case the first was lost");
    let b_opts = Options { wscale: Some(7), timestamp: Some((BACKEND_TS, CLIENT_TS + 1)), ..Options::default() };
    let (v, ack) = run(&mut e, &from_backend(&n, &o, (BACKEND_ISN, CLIENT_ISN + 1), SYN | ACK, b_opts));
    assert_eq!(v, Verdict::Tx(0));
    assert_eq!((ack.p.tcp_flags, ack.seq(), ack.ack()), (ACK | PSH, CLIENT_ISN + 1, BACKEND_ISN + 1));
    assert_eq!(ack.payload(), b"GET / HTTP/1.1\r\n\r\n");
    // Delivered once: a retransmitted SYN-ACK gets a bare ACK.
    let (_, again) = run(&mut e, &from_backend(&n, &o, (BACKEND_ISN, CLIENT_ISN + 1), SYN | ACK, b_opts));
    assert_eq!((again.p.tcp_flags, again.payload().len()), (ACK, 0));
}
