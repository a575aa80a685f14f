//! Golden packets: for each mode and IP version, a configuration, an input
//! frame and the exact output frame and verdict. Expected frames are built
//! with whole checksums, so they also check the engine's incremental ones.

use std::net::IpAddr;
use std::sync::Arc;

use fulcrum_dataplane::flow::FlowKey;
use fulcrum_dataplane::flow::table::FlowState;
use fulcrum_dataplane::forward::tunnel::{self, Encap, GUE_DEFAULT_PORT};
use fulcrum_dataplane::wire::IpProtocol;
use fulcrum_dataplane::wire::tcp::{ACK, FIN, RST, SYN};
use fulcrum_dataplane::{Backend, DropReason, Engine, EngineConfig, Interface, Mode, Packet, Services, SynProxy, Verdict, VipSpec};
use fulcrum_testing::frame::{CLIENT_MAC, L4, LB_MAC, PacketBuilder, ethernet, ip_packet};

const SERVER_SIDE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];
const BACKEND_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 0x0a];
const HEADROOM: usize = 256;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Addresses of one IP version's test network.
struct Net {
    client: IpAddr,
    vip: IpAddr,
    backend: IpAddr,
    snat: IpAddr,
    tunnel_src: IpAddr,
    tunnel_prefix: u8,
}

fn net(v6: bool) -> Net {
    if v6 {
        Net {
            client: ip("2001:db8::1"),
            vip: ip("2001:db8:100::64"),
            backend: ip("2001:db8:1::a"),
            snat: ip("2001:db8::c8"),
            tunnel_src: ip("2001:db8:ff::"),
            tunnel_prefix: 96,
        }
    } else {
        Net {
            client: ip("198.18.0.1"),
            vip: ip("198.18.0.100"),
            backend: ip("198.18.1.10"),
            snat: ip("198.18.0.200"),
            tunnel_src: ip("198.18.200.0"),
            tunnel_prefix: 24,
        }
    }
}

/// An engine with one VIP (port 80) and one backend. `inline`: the client
/// side is interface 0 and the backends are on interface 1.
fn engine(n: &Net, mode: Mode, backend_port: u16, inline: bool, mtu: u16) -> Engine {
    let mut ifaces = vec![Interface { mac: LB_MAC, mtu }];
    if inline {
        ifaces.push(Interface { mac: SERVER_SIDE_MAC, mtu });
    }
    let backend = Backend { addr: n.backend, port: backend_port, weight: 1, up: true, next_hop: BACKEND_MAC, iface: inline as u8 };
    let vip = VipSpec {
        addr: n.vip,
        proto: IpProtocol::TCP,
        port: 80,
        mode,
        backends: vec![0],
        persistence_ms: None,
        reset_on_down: false,
        syn_proxy: SynProxy::Off,
    };
    let udp_vip = VipSpec { proto: IpProtocol::UDP, ..vip.clone() };
    let services = Services::new(ifaces, vec![Some(vip), Some(udp_vip)], vec![Some(backend)]).unwrap();
    let cfg = EngineConfig { table_capacity: 1024, ..EngineConfig::default() };
    Engine::new(cfg, Arc::new(services)).unwrap()
}

/// Runs one frame through the engine at time `now`.
fn run_at(e: &mut Engine, frame: &[u8], ingress: u8, now: u32) -> (Verdict, Vec<u8>) {
    let mut buf = vec![0u8; 2048];
    buf[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
    let mut batch = [Packet::new(&mut buf, HEADROOM, frame.len(), ingress)];
    e.process(now, &mut batch);
    (batch[0].verdict, batch[0].frame().to_vec())
}

fn run(e: &mut Engine, frame: &[u8], ingress: u8) -> (Verdict, Vec<u8>) {
    run_at(e, frame, ingress, 1000)
}

fn syn(n: &Net) -> PacketBuilder {
    PacketBuilder::tcp(n.client, 40000, n.vip, 80, SYN).payload(b"hello")
}

fn assert_frame(got: &(Verdict, Vec<u8>), verdict: Verdict, want: &[u8]) {
    assert_eq!(got.0, verdict);
    assert_eq!(hex(&got.1), hex(want), "frame differs");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().chunks(16).map(|c| c.join(" ")).collect::<Vec<_>>().join("\n")
}

fn dnat_inline(v6: bool) {
    let n = net(v6);
    let mut e = engine(&n, Mode::Nat { snat: vec![] }, 8080, true, 1500);
    let input = syn(&n);
    let mut want = input.clone().macs(SERVER_SIDE_MAC, BACKEND_MAC).ttl(63);
    want.dst = n.backend;
    want.l4 = L4::Tcp { src_port: 40000, dst_port: 8080, flags: SYN, seq: 1, ack: 0 };
    assert_frame(&run(&mut e, &input.frame(), 0), Verdict::Tx(1), &want.frame());

    // The backend's SYN-ACK comes back through the balancer to the client.
    let reply = PacketBuilder::tcp(n.backend, 8080, n.client, 40000, SYN | ACK).macs(BACKEND_MAC, SERVER_SIDE_MAC).payload(b"world");
    let mut want = reply.clone().macs(LB_MAC, CLIENT_MAC).ttl(63);
    want.src = n.vip;
    want.l4 = L4::Tcp { src_port: 80, dst_port: 40000, flags: SYN | ACK, seq: 1, ack: 0 };
    assert_frame(&run(&mut e, &reply.frame(), 1), Verdict::Tx(0), &want.frame());
}

#[test]
fn nat_inline_v4() {
    dnat_inline(false);
}

#[test]
fn nat_inline_v6() {
    dnat_inline(true);
}

fn full_nat_one_arm(v6: bool) {
    let n = net(v6);
    let mut e = engine(&n, Mode::Nat { snat: vec![n.snat] }, 8080, false, 1500);
    let input = syn(&n);
    let mut want = input.clone().macs(LB_MAC, BACKEND_MAC).ttl(63);
    (want.src, want.dst) = (n.snat, n.backend);
    // Worker 0 of 1 owns ports from 1024.
    want.l4 = L4::Tcp { src_port: 1024, dst_port: 8080, flags: SYN, seq: 1, ack: 0 };
    assert_frame(&run(&mut e, &input.frame(), 0), Verdict::Tx(0), &want.frame());

    let reply = PacketBuilder::tcp(n.backend, 8080, n.snat, 1024, SYN | ACK).macs(BACKEND_MAC, LB_MAC);
    let mut want = reply.clone().macs(LB_MAC, CLIENT_MAC).ttl(63);
    (want.src, want.dst) = (n.vip, n.client);
    want.l4 = L4::Tcp { src_port: 80, dst_port: 40000, flags: SYN | ACK, seq: 1, ack: 0 };
    assert_frame(&run(&mut e, &reply.frame(), 0), Verdict::Tx(0), &want.frame());

    // A second client port gets the next source port.
    let mut other = syn(&n);
    other.l4 = L4::Tcp { src_port: 40001, dst_port: 80, flags: SYN, seq: 1, ack: 0 };
    let (v, out) = run(&mut e, &other.frame(), 0);
    assert_eq!(v, Verdict::Tx(0));
    let l4 = out.len() - 20 - 5;
    assert_eq!(u16::from_be_bytes([out[l4], out[l4 + 1]]), 1025);
}

#[test]
fn full_nat_one_arm_v4() {
    full_nat_one_arm(false);
}

#[test]
fn full_nat_one_arm_v6() {
    full_nat_one_arm(true);
}

#[test]
fn nat_udp_zero_checksum_stays_zero_and_port_zero_keeps_client_port() {
    let n = net(false);
    let mut e = engine(&n, Mode::Nat { snat: vec![] }, 0, true, 1500);
    let mut input = PacketBuilder::udp(n.client, 5000, n.vip, 80).payload(b"ping");
    input.l4 = L4::Udp { src_port: 5000, dst_port: 80, checksum: false };
    let mut want = input.clone().macs(SERVER_SIDE_MAC, BACKEND_MAC).ttl(63);
    want.dst = n.backend;
    assert_frame(&run(&mut e, &input.frame(), 0), Verdict::Tx(1), &want.frame());
}

fn dsr(v6: bool) {
    let n = net(v6);
    let mut e = engine(&n, Mode::Dsr, 0, false, 1500);
    let input = syn(&n);
    let want = input.clone().macs(LB_MAC, BACKEND_MAC);
    assert_frame(&run(&mut e, &input.frame(), 0), Verdict::Tx(0), &want.frame());
    // Established traffic of the flow goes the same way.
    let mut ack = syn(&n);
    ack.l4 = L4::Tcp { src_port: 40000, dst_port: 80, flags: ACK, seq: 2, ack: 9 };
    assert_frame(&run(&mut e, &ack.frame(), 0), Verdict::Tx(0), &ack.clone().macs(LB_MAC, BACKEND_MAC).frame());
}

#[test]
fn dsr_v4() {
    dsr(false);
}

#[test]
fn dsr_v6() {
    dsr(true);
}

fn tunnel_case(v6: bool, encap: Encap) {
    let n = net(v6);
    let mode = Mode::Tunnel { encap, source: n.tunnel_src, source_prefix: n.tunnel_prefix };
    let mut e = engine(&n, mode, 0, false, 1500);
    let input = syn(&n);
    let hash = FlowKey::new(n.client, n.vip, 40000, 80, IpProtocol::TCP).hash64();
    let outer_src = tunnel::outer_source(&fulcrum_dataplane::flow::key::addr16(n.tunnel_src), n.tunnel_prefix, v6, hash);
    let outer_src = fulcrum_dataplane::flow::key::ip_from16(&outer_src);
    let inner = input.ip_packet();
    let outer = match encap {
        Encap::Ipip => ip_packet(outer_src, n.backend, if v6 { IpProtocol::IPV6 } else { IpProtocol::IPIP }, 64, true, &inner),
        Encap::Gue { port } => {
            let sport = 0xc000 | (hash >> 32) as u16 & 0x3fff;
            let mut udp = PacketBuilder::udp(outer_src, sport, n.backend, port).payload(&inner);
            udp.l4 = L4::Udp { src_port: sport, dst_port: port, checksum: v6 };
            udp.ip_packet()
        }
    };
    let want = ethernet(LB_MAC, BACKEND_MAC, None, v6, &outer);
    assert_frame(&run(&mut e, &input.frame(), 0), Verdict::Tx(0), &want);
    // The outer source lies in the configured prefix.
    let s = fulcrum_dataplane::flow::key::addr16(outer_src);
    let b = fulcrum_dataplane::flow::key::addr16(n.tunnel_src);
    assert_eq!(&s[..if v6 { 12 } else { 15 }], &b[..if v6 { 12 } else { 15 }]);
}

#[test]
fn ipip_v4() {
    tunnel_case(false, Encap::Ipip);
}

#[test]
fn ipip_v6() {
    tunnel_case(true, Encap::Ipip);
}

#[test]
fn gue_v4() {
    tunnel_case(false, Encap::Gue { port: GUE_DEFAULT_PORT });
}

#[test]
fn gue_v6() {
    tunnel_case(true, Encap::Gue { port: GUE_DEFAULT_PORT });
}

/// A frame that would exceed the MTU once encapsulated is answered with
/// "fragmentation needed" / "packet too big" quoting it.
fn too_big(v6: bool) {
    let n = net(v6);
    let mode = Mode::Tunnel { encap: Encap::Ipip, source: n.tunnel_src, source_prefix: n.tunnel_prefix };
    let mut e = engine(&n, mode, 0, false, 1500);
    let hdr = if v6 { 40 } else { 20 };
    let input = syn(&n).payload(&vec![0x5a; 1500 - hdr - 20]); // exactly the MTU before encapsulation
    let quote = input.ip_packet();
    // The advertised MTU leaves room for the outer header: 1460 / 1480.
    let (rest, quote_len) = if v6 { (1460u32.to_be_bytes(), 1232) } else { ([0, 0, 0x05, 0xc8], 548) };
    let mut want =
        PacketBuilder::icmp(n.vip, n.client, if v6 { 2 } else { 3 }, if v6 { 0 } else { 4 }, rest).macs(LB_MAC, CLIENT_MAC).payload(&quote[..quote_len]);
    want.dont_fragment = false;
    assert_frame(&run(&mut e, &input.frame(), 0), Verdict::Tx(0), &want.frame());
    // One byte less fits after encapsulation.
    let small = syn(&n).payload(&vec![0x5a; 1500 - hdr - 20 - hdr]);
    assert_eq!(run(&mut e, &small.frame(), 0).0, Verdict::Tx(0));
}

#[test]
fn too_big_v4() {
    too_big(false);
}

#[test]
fn too_big_v6() {
    too_big(true);
}

#[test]
fn vlan_tag_is_kept() {
    let n = net(false);
    let mut e = engine(&n, Mode::Dsr, 0, false, 1500);
    let mut input = syn(&n);
    input.vlan = Some(100);
    let want = input.clone().macs(LB_MAC, BACKEND_MAC);
    assert_frame(&run(&mut e, &input.frame(), 0), Verdict::Tx(0), &want.frame());
}

#[test]
fn traffic_not_for_a_vip_goes_to_the_kernel_unchanged() {
    let n = net(false);
    let mut e = engine(&n, Mode::Nat { snat: vec![n.snat] }, 8080, false, 1500);
    let ssh = PacketBuilder::tcp(n.client, 40000, ip("198.18.0.2"), 22, SYN).frame();
    assert_frame(&run(&mut e, &ssh, 0), Verdict::Pass, &ssh);
    let other_port = PacketBuilder::tcp(n.client, 40000, n.vip, 443, SYN).frame();
    assert_frame(&run(&mut e, &other_port, 0), Verdict::Pass, &other_port);
    let mut arp = vec![0xffu8; 6];
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    assert_frame(&run(&mut e, &arp, 0), Verdict::Pass, &arp);
    let ping = PacketBuilder::icmp(n.client, n.vip, 8, 0, [0, 1, 0, 1]).frame();
    assert_frame(&run(&mut e, &ping, 0), Verdict::Pass, &ping);
    assert_eq!(e.stats().passed.get(), 4);
}

#[test]
fn truncated_and_garbled_frames_are_counted_drops() {
    let n = net(false);
    let mut e = engine(&n, Mode::Dsr, 0, false, 1500);
    let good = syn(&n).frame();
    let cases: Vec<(Vec<u8>, DropReason)> = vec![
        (good[..10].to_vec(), DropReason::Truncated),
        (good[..14 + 19].to_vec(), DropReason::Truncated),
        (good[..14 + 20 + 10].to_vec(), DropReason::Truncated), // IP total length beyond the frame
        (
            {
                let mut g = good.clone();
                g[14] = 0x43;
                g
            },
            DropReason::Malformed,
        ),
        (
            {
                let mut g = good.clone();
                g[14 + 20 + 12] = 0x20;
                g
            },
            DropReason::Malformed,
        ), // TCP data offset 2
        (PacketBuilder::udp(n.client, 1, n.vip, 80).frame()[..14 + 20 + 6].to_vec(), DropReason::Truncated),
    ];
    for (i, (frame, reason)) in cases.iter().enumerate() {
        assert_eq!(run(&mut e, frame, 0).0, Verdict::Drop(*reason), "case {i}");
    }
    assert_eq!(e.stats().drops.get(DropReason::Truncated), 4);
    assert_eq!(e.stats().drops.get(DropReason::Malformed), 2);
}

#[test]
fn full_nat_drops_later_fragments_without_their_first_others_pass() {
    // Fragments that do reach backends: tests/fragments.rs.
    let n = net(false);
    let mut e = engine(&n, Mode::Nat { snat: vec![n.snat] }, 8080, false, 1500);
    let mut f = syn(&n).frame();
    f[14 + 6] = 0x20; // more fragments
    f[14 + 7] = 0x10; // at offset 128: not the first
    f[14 + 10..14 + 12].fill(0); // checksum is not what is checked here
    assert_eq!(run(&mut e, &f, 0).0, Verdict::Drop(DropReason::Fragment));
    assert_eq!(e.stats().vip_drops[0].get(DropReason::Fragment), 1);
    let mut other = PacketBuilder::tcp(n.client, 1, ip("198.18.0.2"), 22, SYN).frame();
    other[14 + 6] = 0x20;
    assert_eq!(run(&mut e, &other, 0).0, Verdict::Pass);
}

#[test]
fn nat_drops_ttl_expiring_packets() {
    for v6 in [false, true] {
        let n = net(v6);
        let mut e = engine(&n, Mode::Nat { snat: vec![] }, 8080, true, 1500);
        assert_eq!(run(&mut e, &syn(&n).ttl(1).frame(), 0).0, Verdict::Drop(DropReason::TtlExceeded));
        assert_eq!(run(&mut e, &syn(&n).ttl(2).frame(), 0).0, Verdict::Tx(1));
    }
}

#[test]
fn rst_and_fin_move_the_entry_to_closing() {
    for flags in [RST, FIN | ACK] {
        let n = net(false);
        let mut e = engine(&n, Mode::Dsr, 0, false, 1500);
        let key = FlowKey::new(n.client, n.vip, 40000, 80, IpProtocol::TCP);
        let state = |e: &mut Engine| {
            let t = e.table();
            (0..t.capacity() as u32).find(|&s| s < t.len() as u32 && *t.entry(s).key() == key).map(|s| t.entry(s).state)
        };
        run(&mut e, &syn(&n).frame(), 0);
        assert_eq!(state(&mut e), Some(FlowState::SynSeen));
        let mut ack = syn(&n);
        ack.l4 = L4::Tcp { src_port: 40000, dst_port: 80, flags: ACK, seq: 2, ack: 2 };
        run(&mut e, &ack.frame(), 0);
        assert_eq!(state(&mut e), Some(FlowState::Established));
        ack.l4 = L4::Tcp { src_port: 40000, dst_port: 80, flags, seq: 2, ack: 2 };
        run(&mut e, &ack.frame(), 0);
        assert_eq!(state(&mut e), Some(FlowState::Closing));
    }
}

#[test]
fn return_traffic_without_state_is_dropped_not_leaked() {
    let n = net(false);
    let mut e = engine(&n, Mode::Nat { snat: vec![n.snat] }, 8080, false, 1500);
    let stray = PacketBuilder::tcp(n.backend, 8080, n.snat, 3000, ACK).frame();
    assert_eq!(run(&mut e, &stray, 0).0, Verdict::Drop(DropReason::NoState));
}

/// An ICMP error about a VIP's reply (from a router between the balancer
/// and the client) reaches the backend that sent the reply.
#[test]
fn icmp_errors_quoting_a_flow_reach_its_backend() {
    for v6 in [false, true] {
        let n = net(v6);
        let router = if v6 { ip("2001:db8::fe") } else { ip("198.18.0.254") };
        let reply = PacketBuilder::tcp(n.vip, 80, n.client, 40000, ACK).payload(&[7; 16]).ip_packet();
        let (t, c, rest) = if v6 { (2, 0, 1400u32.to_be_bytes()) } else { (3, 4, [0, 0, 0x05, 0x78]) };
        let error = PacketBuilder::icmp(router, n.vip, t, c, rest).payload(&reply[..if v6 { 48 } else { 28 }]);

        // DSR: the error goes to the backend as it is.
        let mut e = engine(&n, Mode::Dsr, 0, false, 1500);
        run(&mut e, &syn(&n).frame(), 0);
        assert_frame(&run(&mut e, &error.frame(), 0), Verdict::Tx(0), &error.clone().macs(LB_MAC, BACKEND_MAC).frame());

        // NAT: the quote is turned back into what the backend sent.
        let mut e = engine(&n, Mode::Nat { snat: vec![] }, 8080, true, 1500);
        run(&mut e, &syn(&n).frame(), 0);
        let backend_sent = PacketBuilder::tcp(n.backend, 8080, n.client, 40000, ACK).payload(&[7; 16]).ip_packet();
        let mut want = PacketBuilder::icmp(router, n.backend, t, c, rest).macs(SERVER_SIDE_MAC, BACKEND_MAC).ttl(63);
        want.payload = backend_sent[..if v6 { 48 } else { 28 }].to_vec();
        // The quoted TCP checksum lies beyond the quote and is not there
        // to update; the quoted IPv4 header checksum is.
        assert_frame(&run(&mut e, &error.frame(), 1), Verdict::Tx(1), &want.frame());

        // An error quoting no known flow is dropped and counted.
        let mut e = engine(&n, Mode::Dsr, 0, false, 1500);
        assert_eq!(run(&mut e, &error.frame(), 0).0, Verdict::Drop(DropReason::IcmpNoFlow));
    }
}

#[test]
fn counters_follow_traffic() {
    let n = net(false);
    let mut e = engine(&n, Mode::Nat { snat: vec![] }, 8080, true, 1500);
    let f = syn(&n).frame();
    run(&mut e, &f, 0);
    let mut ack = syn(&n);
    ack.l4 = L4::Tcp { src_port: 40000, dst_port: 80, flags: ACK, seq: 2, ack: 2 };
    let a = ack.frame();
    run(&mut e, &a, 0);
    let reply = PacketBuilder::tcp(n.backend, 8080, n.client, 40000, ACK).frame();
    run(&mut e, &reply, 1);
    let s = e.stats();
    assert_eq!((s.vips[0].packets.get(), s.vips[0].new_flows.get()), (3, 1));
    assert_eq!(s.vips[0].bytes.get(), (f.len() + a.len() + reply.len()) as u64);
    assert_eq!((s.backends[0].packets.get(), s.backends[0].new_flows.get()), (3, 1));
    assert_eq!(s.vips[1].packets.get(), 0);
}

#[test]
fn idle_flows_expire_by_state() {
    let n = net(false);
    let mut e = engine(&n, Mode::Dsr, 0, false, 1500);
    run_at(&mut e, &syn(&n).frame(), 0, 0);
    assert_eq!(e.table().len(), 1);
    // The SYN timeout is 30 s; expiry runs a bounded step per batch.
    let other = PacketBuilder::tcp(n.client, 1, ip("198.18.0.2"), 22, SYN).frame();
    run_at(&mut e, &other, 0, 29_000);
    assert_eq!(e.table().len(), 1);
    run_at(&mut e, &other, 0, 31_000);
    assert_eq!(e.table().len(), 0);
}

/// A full-NAT VIP whose backend goes down after a flow started, with
/// `on_down` reset (`reset`) or keep: the engine and the client's first SYN.
fn backend_goes_down(n: &Net, reset: bool) -> Engine {
    let backend = Backend { addr: n.backend, port: 8080, weight: 1, up: true, next_hop: BACKEND_MAC, iface: 0 };
    let mode = Mode::Nat { snat: vec![n.snat] };
    let vip = VipSpec {
        addr: n.vip,
        proto: IpProtocol::TCP,
        port: 80,
        mode,
        backends: vec![0],
        persistence_ms: None,
        reset_on_down: reset,
        syn_proxy: SynProxy::Off,
    };
    let up = Services::new(vec![Interface { mac: LB_MAC, mtu: 1500 }], vec![Some(vip)], vec![Some(backend)]).unwrap();
    let down = up.with_backends(&[(0, Backend { up: false, ..backend })]).unwrap();
    let mut e = Engine::new(EngineConfig { table_capacity: 1024, ..EngineConfig::default() }, Arc::new(up)).unwrap();
    assert_eq!(run(&mut e, &syn(n).frame(), 0).0, Verdict::Tx(0));
    e.set_services(Arc::new(down)).unwrap();
    e
}

/// The RST the VIP answers with: from VIP:80 to the client, window 0.
fn rst_from_vip(n: &Net, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    let mut want = PacketBuilder::tcp(n.vip, 80, n.client, 40000, flags).macs(LB_MAC, CLIENT_MAC);
    want.l4 = L4::Tcp { src_port: 80, dst_port: 40000, flags, seq, ack };
    want.tcp_window = 0;
    want.frame()
}

fn client_segment(n: &Net, flags: u8, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
    let mut seg = PacketBuilder::tcp(n.client, 40000, n.vip, 80, flags).payload(payload);
    seg.l4 = L4::Tcp { src_port: 40000, dst_port: 80, flags, seq, ack };
    seg.frame()
}

#[test]
fn on_down_reset_answers_the_clients_next_packet_with_a_rst() {
    for v6 in [false, true] {
        let n = net(v6);
        // A segment with ACK: SEQ = its ACK, the byte the client expects.
        let mut e = backend_goes_down(&n, true);
        let got = run(&mut e, &client_segment(&n, ACK, 1001, 5001, b"more data"), 0);
        assert_frame(&got, Verdict::Tx(0), &rst_from_vip(&n, RST, 5001, 0));
        // The flow is gone (both halves), and counted.
        assert_eq!(e.table().len(), 0);
        assert_eq!((e.stats().vips[0].resets.get(), e.stats().backends[0].resets.get()), (1, 1));

        // A SYN on that tuple opens a new connection instead of being
        // reset: scheduled afresh, it finds no backend up here, and the old
        // flow is gone.
        let mut e = backend_goes_down(&n, true);
        assert_eq!(run(&mut e, &syn(&n).frame(), 0).0, Verdict::Drop(DropReason::NoBackend));
        assert_eq!(e.table().len(), 0);
        assert_eq!(e.stats().vips[0].resets.get(), 0);

        // Without ACK and not a SYN (a FIN): SEQ 0, ACK = its SEQ + 9 + 1
        // for the FIN.
        let mut e = backend_goes_down(&n, true);
        assert_frame(&run(&mut e, &client_segment(&n, FIN, 1001, 0, b"more data"), 0), Verdict::Tx(0), &rst_from_vip(&n, RST | ACK, 0, 1011));

        // A RST from the client needs no answer; the flow goes all the same.
        let mut e = backend_goes_down(&n, true);
        let got = run(&mut e, &client_segment(&n, RST, 1001, 0, b""), 0);
        assert_eq!(got.0, Verdict::Drop(DropReason::BackendDown));
        assert_eq!(e.table().len(), 0);
    }
}

#[test]
fn on_down_keep_leaves_established_flows_on_their_backend() {
    let n = net(false);
    let mut e = backend_goes_down(&n, false);
    let mut want = PacketBuilder::tcp(n.snat, 1024, n.backend, 8080, ACK).payload(b"more data").macs(LB_MAC, BACKEND_MAC).ttl(63);
    want.l4 = L4::Tcp { src_port: 1024, dst_port: 8080, flags: ACK, seq: 1001, ack: 5001 };
    assert_frame(&run(&mut e, &client_segment(&n, ACK, 1001, 5001, b"more data"), 0), Verdict::Tx(0), &want.frame());
    // New flows have nowhere to go.
    let mut other = syn(&n);
    other.l4 = L4::Tcp { src_port: 40001, dst_port: 80, flags: SYN, seq: 1, ack: 0 };
    assert_eq!(run(&mut e, &other.frame(), 0).0, Verdict::Drop(DropReason::NoBackend));
}
