//! Flow sync between two engines standing for two balancers: what one
//! exports, the other imports, and then carries the flow on as the first
//! would have (same backend, same full-NAT source port, replies NAT'd back).

use std::net::IpAddr;
use std::sync::Arc;

use fulcrum_dataplane::flow::sync::{self, Header, Kind, SyncEntry};
use fulcrum_dataplane::flow::table::FlowState;
use fulcrum_dataplane::services::SynProxy;
use fulcrum_dataplane::wire::IpProtocol;
use fulcrum_dataplane::wire::tcp::{ACK, FIN, SYN};
use fulcrum_dataplane::{Backend, DropReason, Engine, EngineConfig, Interface, Mode, Packet, Services, Verdict, VipSpec};
use fulcrum_testing::frame::{LB_MAC, PacketBuilder};

const VIP: [u8; 4] = [198, 18, 0, 100];
const SNAT: [u8; 4] = [198, 18, 0, 4];
const CLIENT: [u8; 4] = [198, 18, 5, 1];

fn backend(i: u8, port: u16) -> Backend {
    Backend { addr: IpAddr::from([198, 18, 1, i]), port, weight: 1, up: true, next_hop: [2, 0, 0, 0, 1, i], iface: 0 }
}

/// One VIP in `mode` over three backends; `order` lists the backends in
/// the order this node numbered them (ids differ between nodes).
fn services(mode: Mode, order: [u8; 3]) -> Arc<Services> {
    services_with(mode, order, SynProxy::Off)
}

fn services_with(mode: Mode, order: [u8; 3], syn_proxy: SynProxy) -> Arc<Services> {
    let port = if mode == Mode::Dsr { 0 } else { 8080 };
    let vip = VipSpec {
        addr: IpAddr::from(VIP),
        proto: IpProtocol::TCP,
        port: 80,
        mode,
        backends: vec![0, 1, 2],
        persistence_ms: None,
        reset_on_down: false,
        syn_proxy,
    };
    let backends = order.iter().map(|&i| Some(backend(i, port))).collect();
    Arc::new(Services::new(vec![Interface { mac: LB_MAC, mtu: 1500 }], vec![Some(vip)], backends).unwrap())
}

fn engine(s: &Arc<Services>) -> Engine {
    let cfg = EngineConfig { table_capacity: 4096, snat_ports: (1024, 2047), sync: true, ..EngineConfig::default() };
    Engine::new(cfg, Arc::clone(s)).unwrap()
}

/// Sends one frame; its verdict and the frame as it left.
fn send(e: &mut Engine, now: u32, b: PacketBuilder) -> (Verdict, Vec<u8>) {
    let f = b.frame();
    let mut buf = vec![0u8; 2048];
    buf[..f.len()].copy_from_slice(&f);
    let mut batch = [Packet::new(&mut buf, 0, f.len(), 0)];
    e.process(now, &mut batch);
    (batch[0].verdict, batch[0].frame().to_vec())
}

fn client(port: u16, flags: u8) -> PacketBuilder {
    PacketBuilder::tcp(IpAddr::from(CLIENT), port, IpAddr::from(VIP), 80, flags)
}

fn export(e: &mut Engine, now: u32, active: bool) -> Vec<SyncEntry> {
    let mut out = Vec::new();
    e.export_sync(now, active, |x| {
        out.push(*x);
        true
    });
    out
}

/// Destination address and port of an IPv4 TCP frame (no VLAN).
fn dst(frame: &[u8]) -> ([u8; 4], u16) {
    (frame[30..34].try_into().unwrap(), u16::from_be_bytes([frame[36], frame[37]]))
}

/// Source address and port of an IPv4 TCP frame.
fn src(frame: &[u8]) -> ([u8; 4], u16) {
    (frame[26..30].try_into().unwrap(), u16::from_be_bytes([frame[34], frame[35]]))
}

#[test]
fn a_full_nat_flow_moves_to_the_peer_with_its_backend_and_source_port() {
    let mode = Mode::Nat { snat: vec![IpAddr::from(SNAT)] };
    let (sa, sb) = (services(mode.clone(), [1, 2, 3]), services(mode, [3, 1, 2]));
    let (mut a, mut b) = (engine(&sa), engine(&sb));
    let (v, out) = send(&mut a, 0, client(40000, SYN));
    assert_eq!(v, Verdict::Tx(0));
    let (to_backend, snat_end) = (dst(&out), src(&out));
    assert_eq!(snat_end.0, SNAT);
    let created = export(&mut a, 0, true);
    assert_eq!(created.len(), 1);
    assert_eq!((created[0].state, created[0].snat_port), (FlowState::SynSeen, snat_end.1));
    // A standby hears of it through the wire format, by addresses.
    let mut wire = vec![0u8; sync::HEADER_LEN + sync::ENTRY_LEN];
    let header = Header { kind: Kind::Entries, boot_id: 1, seq: 0, workers: 1, snat_ports: (1024, 2047), count: 0 };
    sync::encode(header, &created, &mut wire);
    for e in sync::decode(&wire).unwrap().1 {
        b.import(10, &e).unwrap();
    }
    // The handshake completes on the first node; the change is exported.
    let (v, _) = send(&mut a, 20, client(40000, ACK));
    assert_eq!(v, Verdict::Tx(0));
    let established = export(&mut a, 20, true);
    assert_eq!(established.iter().map(|e| e.state).collect::<Vec<_>>(), [FlowState::Established]);
    b.import(30, &established[0]).unwrap();
    assert_eq!(b.table().len(), 2, "forward and reverse entries, once");
    // Failover: the peer carries the flow on, same backend, same port.
    let (v, out) = send(&mut b, 40, client(40000, ACK).payload(b"hi"));
    assert_eq!(v, Verdict::Tx(0));
    assert_eq!((dst(&out), src(&out)), (to_backend, snat_end));
    // And NATs the backend's replies back to the client.
    let reply = PacketBuilder::tcp(IpAddr::from(to_backend.0), to_backend.1, IpAddr::from(SNAT), snat_end.1, ACK);
    let (v, out) = send(&mut b, 50, reply);
    assert_eq!(v, Verdict::Tx(0));
    assert_eq!((src(&out), dst(&out)), ((VIP, 80), (CLIENT, 40000)));
    // A standby does not echo what it imported.
    assert!(export(&mut b, 60, false).is_empty());
}

/// Two nodes of an ECMP fleet, each owning one of the VIP's two SNAT
/// addresses: each opens flows from its own address only, and takes the
/// other's flows (and their return traffic) with the other's address.
#[test]
fn fleet_nodes_open_flows_from_their_own_snat_address_and_carry_the_others() {
    let other = [198, 18, 0, 5];
    let mode = Mode::Nat { snat: vec![IpAddr::from(SNAT), IpAddr::from(other)] };
    let own = |s: Arc<Services>, a: [u8; 4]| Arc::new(Arc::try_unwrap(s).unwrap().with_snat_own(&[IpAddr::from(a)]).unwrap());
    let (sa, sb) = (own(services(mode.clone(), [1, 2, 3]), SNAT), own(services(mode, [3, 1, 2]), other));
    let (mut a, mut b) = (engine(&sa), engine(&sb));
    for port in 0..20 {
        assert_eq!(src(&send(&mut a, 0, client(40000 + port, SYN)).1).0, SNAT);
        assert_eq!(src(&send(&mut b, 0, client(41000 + port, SYN)).1).0, other);
    }
    // b takes a's flows with a's address and port, and NATs their replies.
    let (v, out) = send(&mut a, 1, client(42000, SYN));
    assert_eq!(v, Verdict::Tx(0));
    for e in export(&mut a, 1, true) {
        b.import(2, &e).unwrap();
    }
    let (v, moved) = send(&mut b, 3, client(42000, ACK));
    assert_eq!(v, Verdict::Tx(0));
    assert_eq!((dst(&moved), src(&moved)), (dst(&out), src(&out)));
    let (to_backend, snat_end) = (dst(&out), src(&out));
    let reply = PacketBuilder::tcp(IpAddr::from(to_backend.0), to_backend.1, IpAddr::from(SNAT), snat_end.1, ACK);
    let (v, back) = send(&mut b, 4, reply);
    assert_eq!(v, Verdict::Tx(0));
    assert_eq!((src(&back), dst(&back)), ((VIP, 80), (CLIENT, 42000)));
}

/// A peer's flow lives here in the worker it had there, but its client's
/// segments reach whichever queue this node's RSS gives them: with sync,
/// a NAT segment without state on one worker is handed to the others,
/// the one that holds it carries it, and the last one asked drops it
/// against the VIP. Without sync a flow's segments stay on its worker's
/// queue: a stray one is dropped at once.
#[test]
fn a_synced_nat_flow_is_found_whatever_worker_its_client_segments_reach() {
    let mode = Mode::Nat { snat: vec![IpAddr::from(SNAT)] };
    let s = services(mode, [1, 2, 3]);
    let worker = |w: u16, sync: bool| {
        let cfg = EngineConfig { table_capacity: 4096, snat_ports: (1024, 2047), sync, worker: w, workers: 2, ..EngineConfig::default() };
        Engine::new(cfg, Arc::clone(&s)).unwrap()
    };
    let (mut a, mut b0, mut b1) = (worker(1, true), worker(0, true), worker(1, true));
    send(&mut a, 0, client(40000, SYN));
    send(&mut a, 1, client(40000, ACK));
    for e in export(&mut a, 1, true) {
        assert_eq!(e.worker, 1);
        b1.import(2, &e).unwrap();
    }
    let segment = || client(40000, ACK).payload(b"hi");
    assert_eq!(send(&mut b0, 3, segment()).0, Verdict::Handoff(None));
    assert_eq!(send(&mut b1, 3, segment()).0, Verdict::Tx(0));
    assert!(b0.table().is_empty(), "a handed-on segment leaves nothing");
    // Handed round and still unknown: dropped, and counted.
    let f = client(40001, ACK).frame();
    let mut buf = vec![0u8; 2048];
    buf[..f.len()].copy_from_slice(&f);
    let mut batch = [Packet::new(&mut buf, 0, f.len(), 0)];
    batch[0].handed_round = true;
    b0.process(4, &mut batch);
    assert_eq!(batch[0].verdict, Verdict::Drop(DropReason::NoState));
    assert_eq!(b0.stats().vip_drops[0].get(DropReason::NoState), 1);
    assert_eq!(send(&mut worker(0, false), 3, segment()).0, Verdict::Drop(DropReason::NoState));
}

#[test]
fn own_snat_addresses_must_be_a_vips_and_leave_each_vip_one() {
    let s = || Arc::try_unwrap(services(Mode::Nat { snat: vec![IpAddr::from(SNAT)] }, [1, 2, 3])).unwrap();
    let stranger = s().with_snat_own(&[IpAddr::from([198, 18, 0, 9])]).unwrap_err();
    assert!(stranger.0.contains("198.18.0.9 is no full-NAT VIP's"), "{stranger}");
    let spec = s().vip(0).unwrap().spec.clone();
    let two = Services::new(
        vec![Interface { mac: LB_MAC, mtu: 1500 }],
        vec![Some(spec.clone()), Some(VipSpec { port: 81, mode: Mode::Nat { snat: vec![IpAddr::from([198, 18, 0, 5])] }, ..spec })],
        (1..=3).map(|i| Some(backend(i, 8080))).collect(),
    )
    .unwrap();
    let none = two.with_snat_own(&[IpAddr::from(SNAT)]).unwrap_err();
    assert!(none.0.contains("vip 198.18.0.100:81/tcp: none of its SNAT addresses"), "{none}");
}

#[test]
fn a_closing_flow_keeps_only_the_closing_timeout_on_the_peer() {
    let nat = Mode::Nat { snat: Vec::new() };
    let (sa, sb) = (services(nat.clone(), [1, 2, 3]), services(nat, [2, 3, 1]));
    let (mut a, mut b) = (engine(&sa), engine(&sb));
    // Each batch's export says the state the flow is in by then.
    let mut all = Vec::new();
    for (t, flags) in [SYN, ACK, FIN | ACK].into_iter().enumerate() {
        send(&mut a, t as u32, client(40001, flags));
        all.extend(export(&mut a, t as u32, true));
    }
    assert_eq!(all.iter().map(|e| e.state).collect::<Vec<_>>(), [FlowState::SynSeen, FlowState::Established, FlowState::Closing]);
    for e in &all {
        b.import(3, e).unwrap();
    }
    assert_eq!(b.table().len(), 2, "the flow and its return path");
    let closing_ms = EngineConfig::default().timeouts.closing_ms;
    assert!(all[2].remaining_ms > closing_ms - 10 && all[2].remaining_ms <= closing_ms);
    // Expired on the peer when it would have on the first node.
    b.process(closing_ms + 10, &mut []);
    let mut budget = 0;
    while !b.table().is_empty() && budget < 1000 {
        b.process(closing_ms + 10, &mut []);
        budget += 1;
    }
    assert!(b.table().is_empty());
}

/// A new flow's entry is written where it opens; a changed or refreshed
/// one is read back from the table. Both must say the same.
#[test]
fn a_new_flows_entry_is_the_one_read_back_from_the_table() {
    for mode in [Mode::Nat { snat: vec![] }, Mode::Nat { snat: vec![IpAddr::from(SNAT)] }] {
        let mut a = engine(&services(mode.clone(), [1, 2, 3]));
        send(&mut a, 5, client(42000, SYN));
        let opened = export(&mut a, 5, true);
        a.start_bulk_sync();
        let read_back = export(&mut a, 5, true);
        assert_eq!(opened.len(), 1, "{mode:?}");
        assert_eq!(read_back, opened, "{mode:?}");
        assert_ne!(opened[0].client_mac, [0; 6], "{mode:?}: where replies go");
    }
}

#[test]
fn busy_flows_are_refreshed_and_a_bulk_resync_sends_everything() {
    let s = services(Mode::Nat { snat: vec![IpAddr::from(SNAT)] }, [1, 2, 3]);
    let mut a = engine(&s);
    for port in 0..100 {
        send(&mut a, 0, client(41000 + port, SYN));
        send(&mut a, 0, client(41000 + port, ACK));
    }
    assert_eq!(export(&mut a, 0, true).len(), 200);
    // Half the flows carry traffic later on; the walk sends those again
    // (at most the shortest timeout / 4 after its previous lap).
    let later = 10_000;
    for port in 0..50 {
        send(&mut a, later, client(41000 + port, ACK));
    }
    let mut refreshed = std::collections::HashSet::new();
    for t in 0..100 {
        for e in export(&mut a, later + t, true) {
            refreshed.insert(e.key.src_port);
        }
    }
    assert_eq!(refreshed.len(), 50, "the busy half only");
    assert!(refreshed.iter().all(|p| *p < 41050));
    // Someone restarted: everything live goes, whatever the role.
    a.start_bulk_sync();
    let mut bulk = Vec::new();
    while a.bulk_sync_pending() {
        bulk.extend(export(&mut a, later + 200, false));
    }
    assert_eq!(bulk.len(), 100);
}

#[test]
fn dsr_flows_are_synced_only_where_maglev_would_send_them_elsewhere() {
    let s = services(Mode::Dsr, [1, 2, 3]);
    let mut a = engine(&s);
    // Backend of each flow: the last byte of the destination MAC.
    let mut backend_of = std::collections::HashMap::new();
    for port in 0..100 {
        let (v, frame) = send(&mut a, 0, client(42000 + port, SYN));
        assert!(matches!(v, Verdict::Tx(_)));
        send(&mut a, 0, client(42000 + port, ACK));
        backend_of.insert(42000 + port, frame[5]);
    }
    let mut bulk = Vec::new();
    a.start_bulk_sync();
    while a.bulk_sync_pending() {
        bulk.extend(export(&mut a, 0, true));
    }
    assert!(bulk.is_empty(), "a peer's Maglev places every one of them the same: {bulk:?}");
    // A refresh lap runs (and sends nothing: the peer places them all).
    for t in 0..100 {
        assert!(export(&mut a, 9_000 + t, true).is_empty());
    }
    // Backend 3 goes down: Maglev sends its flows' next segments
    // elsewhere, so the peer must learn them; the busy ones go with a
    // refresh lap that the new table starts at once, not a lap interval
    // (a quarter of the shortest timeout) after the last one.
    let mut down = backend(3, 0);
    down.up = false;
    let vip = s.vip(0).unwrap().spec.clone();
    let s2 = Arc::new(
        Services::new(vec![Interface { mac: LB_MAC, mtu: 1500 }], vec![Some(vip)], vec![Some(backend(1, 0)), Some(backend(2, 0)), Some(down)]).unwrap(),
    );
    a.set_services(s2).unwrap();
    let later = 10_000;
    for port in 0..100 {
        send(&mut a, later, client(42000 + port, ACK));
    }
    let mut sent = std::collections::HashSet::new();
    for t in 0..100 {
        for e in export(&mut a, later + t, true) {
            assert_eq!(e.backend[12..], [198, 18, 1, 3], "only flows Maglev now places elsewhere: {e:?}");
            sent.insert(e.key.src_port);
        }
    }
    let on_three: std::collections::HashSet<u16> = backend_of.iter().filter(|(_, b)| **b == 3).map(|(p, _)| *p).collect();
    assert!(!on_three.is_empty());
    assert_eq!(sent, on_three);
}

#[test]
fn entries_for_unknown_services_are_refused_by_name() {
    let s = services(Mode::Nat { snat: vec![IpAddr::from(SNAT)] }, [1, 2, 3]);
    let mut a = engine(&s);
    send(&mut a, 0, client(40000, SYN));
    let e = export(&mut a, 0, true)[0];
    let other = services(Mode::Nat { snat: vec![IpAddr::from([198, 18, 0, 5])] }, [1, 2, 3]);
    assert_eq!(engine(&other).import(0, &e), Err(fulcrum_dataplane::engine::ImportError::SnatMismatch));
    // A peer whose VIP has that address among others takes it.
    let among = services(Mode::Nat { snat: vec![IpAddr::from([198, 18, 0, 5]), IpAddr::from(SNAT)] }, [1, 2, 3]);
    assert_eq!(engine(&among).import(0, &e), Ok(()));
    let mut unknown_backend = e;
    unknown_backend.backend_port = 9;
    assert_eq!(engine(&s).import(0, &unknown_backend), Err(fulcrum_dataplane::engine::ImportError::UnknownBackend));
    let mut unknown_vip = e;
    unknown_vip.vip_port = 443;
    assert_eq!(engine(&s).import(0, &unknown_vip), Err(fulcrum_dataplane::engine::ImportError::UnknownVip));
}

#[test]
fn a_flow_the_syn_proxy_opened_moves_with_its_translation() {
    use fulcrum_dataplane::wire::tcp::{Options, PSH};
    let mode = Mode::Nat { snat: vec![IpAddr::from(SNAT)] };
    let (sa, sb) = (services_with(mode.clone(), [1, 2, 3], SynProxy::Always), services_with(mode, [2, 3, 1], SynProxy::Always));
    let (mut a, mut b) = (engine(&sa), engine(&sb));
    let segment = |from: (IpAddr, u16), to: (IpAddr, u16), (seq, ack): (u32, u32), flags: u8, options: Options| {
        let mut p = PacketBuilder::tcp(from.0, from.1, to.0, to.1, flags);
        p.l4 = fulcrum_testing::frame::L4::Tcp { src_port: from.1, dst_port: to.1, flags, seq, ack };
        p.tcp_options = options;
        p
    };
    let be32 = |f: &[u8], at: usize| u32::from_be_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]]);
    let (client_end, vip_end) = ((IpAddr::from(CLIENT), 40000), (IpAddr::from(VIP), 80));
    let ts = Options { timestamp: Some((100, 0)), wscale: Some(7), mss: Some(1460), sack_permitted: true };
    // The SYN answered with a cookie, the ACK returning it opens the flow.
    let (_, synack) = send(&mut a, 0, segment(client_end, vip_end, (1000, 0), SYN, ts));
    // Sequence number at 38; the TSval after MSS and SACK-permitted, at 62.
    let (cookie, our_ts) = (be32(&synack, 38), be32(&synack, 62));
    let (v, syn) = send(&mut a, 1, segment(client_end, vip_end, (1001, cookie + 1), ACK, Options { timestamp: Some((101, our_ts)), ..Options::default() }));
    assert_eq!(v, Verdict::Tx(0));
    let (backend_end, snat_end) = (dst(&syn), src(&syn));
    let (backend_ip, snat_ip) = (IpAddr::from(backend_end.0), IpAddr::from(snat_end.0));
    assert!(export(&mut a, 1, true).iter().all(|e| e.splice.is_none()), "a pending flow goes nowhere");
    // The backend answers; the flow is established and exported whole.
    let (v, _) = send(
        &mut a,
        2,
        segment(
            (backend_ip, backend_end.1),
            (snat_ip, snat_end.1),
            (7000, 1001),
            SYN | ACK,
            Options { timestamp: Some((9000, 101)), wscale: Some(9), ..Options::default() },
        ),
    );
    assert_eq!(v, Verdict::Tx(0));
    let entries = export(&mut a, 2, true);
    let spliced: Vec<&SyncEntry> = entries.iter().filter(|e| e.splice.is_some()).collect();
    assert_eq!(spliced.len(), 1, "{entries:?}");
    let mut wire = vec![0u8; sync::HEADER_LEN + sync::ENTRY_LEN];
    let header = Header { kind: Kind::Entries, boot_id: 1, seq: 0, workers: 1, snat_ports: (1024, 2047), count: 0 };
    sync::encode(header, &[*spliced[0]], &mut wire);
    for e in sync::decode(&wire).unwrap().1 {
        b.import(3, &e).unwrap();
    }
    // Failover: the same backend segment leaves both nodes the same.
    let data = || {
        segment((backend_ip, backend_end.1), (snat_ip, snat_end.1), (7001, 1001), ACK | PSH, Options { timestamp: Some((9005, 101)), ..Options::default() })
            .payload(b"hello")
    };
    let (va, from_a) = send(&mut a, 4, data());
    let (vb, from_b) = send(&mut b, 4, data());
    assert_eq!((va, vb), (Verdict::Tx(0), Verdict::Tx(0)));
    assert_eq!(from_b, from_a, "the standby translates as the first node did");
    assert_eq!(be32(&from_b, 38), cookie + 1, "in the client's sequence space");
    // And the client's segments the other way.
    let ack = || segment(client_end, vip_end, (1001, cookie + 6), ACK, Options { timestamp: Some((102, our_ts + 5)), ..Options::default() });
    let ((va, to_a), (vb, to_b)) = (send(&mut a, 5, ack()), send(&mut b, 5, ack()));
    assert_eq!((va, vb, to_b.clone()), (Verdict::Tx(0), Verdict::Tx(0), to_a));
    assert_eq!(be32(&to_b, 42), 7006, "acknowledges the backend's bytes");
    // A peer without a SYN proxy on the VIP refuses such an entry.
    let mut plain = engine(&services(Mode::Nat { snat: vec![IpAddr::from(SNAT)] }, [1, 2, 3]));
    assert_eq!(plain.import(3, spliced[0]), Err(fulcrum_dataplane::engine::ImportError::NoSynProxy));
}
