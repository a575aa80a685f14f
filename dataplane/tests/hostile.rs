//! What a frame may leave behind: state only from frames that open a flow
//! and are forwarded; a client's new SYN on its old tuple opens a new
//! connection unless that one is established with a live backend; a
//! forged frame from another host cannot take over a client's reply path.

use std::net::IpAddr;
use std::sync::Arc;

use fulcrum_dataplane::flow::key::addr16;
use fulcrum_dataplane::forward::tunnel::Encap;
use fulcrum_dataplane::wire::tcp::{ACK, FIN, PSH, RST, SYN, URG};
use fulcrum_dataplane::{Backend, DropReason, Engine, EngineConfig, Mode, Shared, Verdict};
use fulcrum_testing::frame::{CLIENT_MAC, LB_MAC, PacketBuilder};
use fulcrum_testing::one_vip::{CLIENT, VIP, backend, engine, ip, process, services};

/// Another host on the client's segment, forging the client's address.
const ATTACKER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x66];
const SNAT: &str = "198.18.0.200";
/// The first full-NAT source port of worker 0 of 1.
const FIRST_PORT: u16 = 1024;

fn full_nat() -> Mode {
    Mode::Nat { snat: vec![ip(SNAT)] }
}

fn client(port: u16, flags: u8) -> PacketBuilder {
    PacketBuilder::tcp(ip(CLIENT), port, ip(VIP), 80, flags)
}

fn run(e: &mut Engine, f: &[u8]) -> (Verdict, Vec<u8>) {
    process(e, f, 1000)
}

/// The full-NAT source port a forwarded client frame left with.
fn snat_port(out: &[u8]) -> u16 {
    u16::from_be_bytes([out[34], out[35]])
}

/// Backend `i`'s answer to the SNAT address and `port`; where it goes.
fn reply(e: &mut Engine, i: u8, port: u16, flags: u8) -> (Verdict, [u8; 6]) {
    let f = PacketBuilder::tcp(IpAddr::from([198, 18, 1, i]), 80, ip(SNAT), port, flags).macs([2, 0, 0, 0, 1, i], LB_MAC).frame();
    let (v, out) = run(e, &f);
    (v, out[..6].try_into().unwrap())
}

#[test]
fn stray_and_forged_segments_leave_no_state_in_nat_modes() {
    for mode in [Mode::Nat { snat: vec![] }, full_nat()] {
        let mut e = engine(EngineConfig::default(), services(mode.clone(), &[backend(1, 1), backend(2, 1)]));
        let cases = [
            (client(40000, ACK), DropReason::NoState),
            (client(40001, RST), DropReason::NoState),
            (client(40002, 0), DropReason::NoState),
            (client(40003, FIN | PSH | URG), DropReason::NoState),
            (client(40004, SYN | FIN), DropReason::InvalidFlags),
            (client(40005, SYN | RST), DropReason::InvalidFlags),
            (client(40006, SYN).ttl(1), DropReason::TtlExceeded),
            (client(40007, SYN).ttl(0), DropReason::TtlExceeded),
        ];
        for (f, reason) in cases {
            let f = f.macs(ATTACKER_MAC, LB_MAC);
            assert_eq!(run(&mut e, &f.frame()).0, Verdict::Drop(reason), "{mode:?} {f:?}");
            assert_eq!(e.table().len(), 0, "{mode:?} {f:?} left an entry");
        }
        assert_eq!(e.stats().vip_drops[0].get(DropReason::NoState), 4);
        // No full-NAT port was taken: the real client gets the first one.
        let (v, out) = run(&mut e, &client(40000, SYN).frame());
        assert_eq!(v, Verdict::Tx(0));
        if mode == full_nat() {
            assert_eq!(snat_port(&out), FIRST_PORT);
        }
    }
}

#[test]
fn dsr_and_tunnel_place_segments_without_state_by_maglev() {
    // Another node may have started the flow: Maglev gives its backend.
    let tunnel = Mode::Tunnel { encap: Encap::Ipip, source: ip("198.18.200.0"), source_prefix: 24 };
    for mode in [Mode::Dsr, tunnel] {
        let s = services(mode.clone(), &[backend(1, 1), backend(2, 1), backend(3, 1)]);
        let mut e = engine(EngineConfig::default(), Arc::clone(&s));
        assert_eq!(run(&mut e, &client(40000, ACK).frame()).0, Verdict::Tx(0), "{mode:?}");
        assert_eq!(e.table().len(), 1);
    }
}

#[test]
fn a_syn_on_a_flow_not_yet_established_opens_it_afresh() {
    let mut e = engine(EngineConfig::default(), services(full_nat(), &[backend(1, 1)]));
    // A forged SYN first: it is forwarded (a SYN is a SYN) and its reply
    // goes to the forger's MAC.
    let (v, out) = run(&mut e, &client(40000, SYN).macs(ATTACKER_MAC, LB_MAC).frame());
    assert_eq!((v, snat_port(&out)), (Verdict::Tx(0), FIRST_PORT));
    // The real client's SYN on the same tuple: a new connection, with its
    // own source port and reply path.
    let (v, out) = run(&mut e, &client(40000, SYN).frame());
    assert_eq!((v, snat_port(&out)), (Verdict::Tx(0), FIRST_PORT + 1));
    assert_eq!(e.table().len(), 2, "one NAT pair");
    assert_eq!(reply(&mut e, 1, FIRST_PORT + 1, SYN | ACK), (Verdict::Tx(0), CLIENT_MAC));
    assert_eq!(reply(&mut e, 1, FIRST_PORT, SYN | ACK).0, Verdict::Drop(DropReason::NoState));
}

#[test]
fn a_syn_on_an_established_flow_keeps_its_backend_and_reply_path() {
    let mut e = engine(EngineConfig::default(), services(full_nat(), &[backend(1, 1), backend(2, 1)]));
    let (_, out) = run(&mut e, &client(40000, SYN).frame());
    let backend = out[5];
    assert_eq!(reply(&mut e, backend, FIRST_PORT, SYN | ACK), (Verdict::Tx(0), CLIENT_MAC));
    assert_eq!(run(&mut e, &client(40000, ACK).frame()).0, Verdict::Tx(0));
    // A forged SYN from another MAC: taken as a retransmission.
    let (v, out) = run(&mut e, &client(40000, SYN).macs(ATTACKER_MAC, LB_MAC).frame());
    assert_eq!((v, snat_port(&out), out[5]), (Verdict::Tx(0), FIRST_PORT, backend));
    assert_eq!(reply(&mut e, backend, FIRST_PORT, ACK), (Verdict::Tx(0), CLIENT_MAC));
}

#[test]
fn a_reused_port_whose_backend_is_down_is_scheduled_afresh() {
    for established in [false, true] {
        let s = services(Mode::Nat { snat: vec![] }, &[backend(1, 1), backend(2, 1)]);
        let mut e = engine(EngineConfig::default(), Arc::clone(&s));
        let (_, out) = run(&mut e, &client(40000, SYN).frame());
        let first = out[5];
        if established {
            assert_eq!(run(&mut e, &client(40000, ACK).frame()).0, Verdict::Tx(0));
        } else {
            // The connection closed; the client reuses its port at once.
            assert_eq!(run(&mut e, &client(40000, FIN | ACK).frame()).0, Verdict::Tx(0));
        }
        let down = Backend { up: false, ..backend(first, 1) };
        let s = s.with_backends(&[(u16::from(first - 1), down)]).unwrap();
        e.set_services(Arc::new(s)).unwrap();
        let (v, out) = run(&mut e, &client(40000, SYN).frame());
        assert_eq!(v, Verdict::Tx(0));
        assert_ne!(out[5], first, "established: {established}: the SYN went to the backend that is down");
    }
}

#[test]
fn a_new_flow_too_big_for_its_tunnel_is_answered_and_leaves_nothing() {
    let tunnel = Mode::Tunnel { encap: Encap::Ipip, source: ip("198.18.200.0"), source_prefix: 24 };
    let mut e = engine(EngineConfig::default(), services(tunnel, &[backend(1, 1)]));
    let big = client(40000, SYN).payload(&[0u8; 1480]);
    let (v, out) = run(&mut e, &big.frame());
    assert_eq!(v, Verdict::Tx(0));
    assert_eq!(out[23], 1, "an ICMP answer");
    assert_eq!(e.table().len(), 0);
    assert_eq!(e.stats().vips[0].new_flows.get(), 0);
}

#[test]
fn replies_go_where_the_neighbour_table_says_not_where_the_frame_came_from() {
    let cfg = EngineConfig::default();
    let shared = Shared::new(&cfg);
    let mut e = Engine::with_shared(EngineConfig { table_capacity: 4096, ..cfg }, services(full_nat(), &[backend(1, 1)]), &shared).unwrap();
    shared.neighbours.set(&addr16(ip(CLIENT)), CLIENT_MAC);
    let (v, out) = run(&mut e, &client(40000, SYN).macs(ATTACKER_MAC, LB_MAC).frame());
    assert_eq!((v, snat_port(&out)), (Verdict::Tx(0), FIRST_PORT));
    assert_eq!(reply(&mut e, 1, FIRST_PORT, SYN | ACK), (Verdict::Tx(0), CLIENT_MAC));
    // A client the kernel does not know: its frame's MAC is all there is.
    let other = PacketBuilder::tcp(ip("198.18.0.7"), 40000, ip(VIP), 80, SYN).macs(ATTACKER_MAC, LB_MAC);
    let (_, out) = run(&mut e, &other.frame());
    assert_eq!(reply(&mut e, 1, snat_port(&out), SYN | ACK), (Verdict::Tx(0), ATTACKER_MAC));
}

#[test]
fn a_full_nat_port_is_held_back_from_its_backend_after_its_flow_ends() {
    let cfg = EngineConfig { snat_ports: (FIRST_PORT, FIRST_PORT + 1), ..EngineConfig::default() };
    let mut e = engine(cfg, services(full_nat(), &[backend(1, 1)]));
    let at = |e: &mut Engine, f: &[u8], now: u32| {
        let (v, out) = process(e, f, now);
        (v, snat_port(&out))
    };
    assert_eq!(at(&mut e, &client(40000, SYN).frame(), 1_000), (Verdict::Tx(0), FIRST_PORT));
    // The client opens the tuple afresh: the old flow ends, its port is
    // held back from the backend (still in TIME_WAIT there).
    assert_eq!(at(&mut e, &client(40000, SYN).frame(), 2_000), (Verdict::Tx(0), FIRST_PORT + 1));
    assert_eq!(at(&mut e, &client(40001, SYN).frame(), 3_000).0, Verdict::Drop(DropReason::SnatExhausted));
    assert_eq!(e.table().len(), 2);
    // After the quarantine (60 s from the end) the port serves again.
    assert_eq!(at(&mut e, &client(40001, SYN).frame(), 62_500), (Verdict::Tx(0), FIRST_PORT));
}

/// The full-NAT source (address, port) a forwarded IPv4 client frame
/// left with.
fn snat_source(out: &[u8]) -> (IpAddr, u16) {
    (IpAddr::from([out[26], out[27], out[28], out[29]]), snat_port(out))
}

#[test]
fn several_snat_addresses_multiply_the_sources_towards_one_backend() {
    let addrs = ["198.18.9.1", "198.18.9.2", "198.18.9.3"].map(ip);
    // 2 ports × 3 addresses: 6 sources towards the one backend.
    let cfg = EngineConfig { snat_ports: (FIRST_PORT, FIRST_PORT + 1), ..EngineConfig::default() };
    let mut e = engine(cfg, services(Mode::Nat { snat: addrs.to_vec() }, &[backend(1, 1)]));
    let mut used = Vec::new();
    for n in 0..6u32 {
        // The client opens one tuple afresh each time: the flow before
        // ends, and its source is held back from the backend.
        let (v, out) = process(&mut e, &client(40000, SYN).frame(), 1_000 + n);
        assert_eq!(v, Verdict::Tx(0), "connection {n}");
        let source = snat_source(&out);
        assert!(addrs.contains(&source.0) && !used.contains(&source), "connection {n}: {source:?} after {used:?}");
        used.push(source);
        // The backend's answer to that source reaches the client.
        let answer = PacketBuilder::tcp(IpAddr::from([198, 18, 1, 1]), 80, source.0, source.1, SYN | ACK).frame();
        let (v, back) = process(&mut e, &answer, 1_000 + n);
        assert_eq!(v, Verdict::Tx(0), "connection {n}: the answer to {source:?}");
        assert_eq!((&back[30..34], u16::from_be_bytes([back[36], back[37]])), (&[198, 18, 0, 1][..], 40000));
    }
    // Every address served, each with both ports.
    for a in addrs {
        assert_eq!(used.iter().filter(|(u, _)| *u == a).count(), 2, "{a}: {used:?}");
    }
    // All six held back (five ended, one in use): the next is refused and
    // counted against the VIP.
    assert_eq!(process(&mut e, &client(40000, SYN).frame(), 2_000).0, Verdict::Drop(DropReason::SnatExhausted));
    assert_eq!(e.stats().vip_drops[0].get(DropReason::SnatExhausted), 1);
    // A quarantine after the first ended, its source serves again.
    let (v, out) = process(&mut e, &client(40001, SYN).frame(), 61_001);
    assert_eq!((v, snat_source(&out)), (Verdict::Tx(0), used[0]));
}

#[test]
fn return_traffic_to_any_snat_address_goes_to_the_worker_owning_the_port() {
    let addrs = ["198.18.9.1", "198.18.9.2"].map(ip);
    let s = services(Mode::Nat { snat: addrs.to_vec() }, &[backend(1, 1)]);
    // Worker 0 of 2 owns ports 1024..=33279, worker 1 the rest.
    let mut w0 = engine(EngineConfig { worker: 0, workers: 2, ..EngineConfig::default() }, s);
    for a in addrs {
        let answer = |port: u16| PacketBuilder::tcp(IpAddr::from([198, 18, 1, 1]), 80, a, port, ACK).frame();
        assert_eq!(process(&mut w0, &answer(40000), 0).0, Verdict::Handoff(Some(1)), "{a}");
        assert_eq!(process(&mut w0, &answer(2000), 0).0, Verdict::Drop(DropReason::NoState), "{a}");
    }
    // To another address, a backend's segment has no owner by its port:
    // every worker is asked.
    let other = PacketBuilder::tcp(IpAddr::from([198, 18, 1, 1]), 80, ip("198.18.9.3"), 40000, ACK).frame();
    assert_eq!(process(&mut w0, &other, 0).0, Verdict::Handoff(None));
}

/// Picks the backends in turn, whatever the flow: as round-robin does.
struct InTurn(usize);

impl fulcrum_dataplane::sched::Scheduler for InTurn {
    fn pick(&mut self, _: &fulcrum_dataplane::flow::FlowKey, _: u64, backends: &[fulcrum_dataplane::sched::BackendState]) -> Option<usize> {
        self.0 += 1;
        Some(self.0 % backends.len())
    }
}

#[test]
fn a_retransmitted_syn_in_dsr_reaches_the_backend_that_may_have_answered() {
    let tunnel = Mode::Tunnel { encap: Encap::Ipip, source: ip("198.18.200.0"), source_prefix: 24 };
    for mode in [Mode::Dsr, tunnel] {
        let mut e = engine(EngineConfig::default(), services(mode.clone(), &[backend(1, 1), backend(2, 1), backend(3, 1)]));
        e.set_scheduler(0, Some(Box::new(InTurn(0))));
        let (_, first) = run(&mut e, &client(40000, SYN).frame());
        let (_, again) = run(&mut e, &client(40000, SYN).frame());
        assert_eq!((first[5], again[5]), (first[5], first[5]), "{mode:?}");
        assert_eq!(e.stats().vips[0].new_flows.get(), 1, "{mode:?}: a retransmission is no new flow");
    }
}

#[test]
fn a_syn_flood_neither_fills_the_table_nor_evicts_established_flows() {
    let tunnel = Mode::Tunnel { encap: Encap::Ipip, source: ip("198.18.200.0"), source_prefix: 24 };
    for mode in [Mode::Dsr, tunnel] {
        let cfg = EngineConfig { half_open_per_vip: 100, ..EngineConfig::default() };
        let mut e = engine(cfg, services(mode.clone(), &[backend(1, 1), backend(2, 1), backend(3, 1)]));
        // 50 clients with established connections.
        let mut established = Vec::new();
        for port in 40000..40050 {
            let (_, out) = run(&mut e, &client(port, SYN).frame());
            assert_eq!(run(&mut e, &client(port, ACK).frame()).0, Verdict::Tx(0));
            established.push((port, out[5]));
        }
        // 10,000 SYNs from forged sources (the table holds 4096).
        for i in 0..10_000u32 {
            let [_, _, a, b] = i.to_be_bytes();
            let forged = PacketBuilder::tcp(IpAddr::from([198, 19, a, b]), 1024 + (i % 50_000) as u16, ip(VIP), 80, SYN);
            assert_eq!(run(&mut e, &forged.frame()).0, Verdict::Tx(0), "{mode:?}: every SYN is still forwarded");
        }
        assert_eq!(e.table().len(), 50 + 100, "{mode:?}: the established flows and the cap");
        assert_eq!(e.table().evictions(), 0, "{mode:?}");
        assert_eq!(e.stats().syns_without_state.get(), 10_000 - 100);
        for (port, backend) in established {
            let (v, out) = run(&mut e, &client(port, ACK | PSH).frame());
            assert_eq!((v, out[5]), (Verdict::Tx(0), backend), "{mode:?}: an established flow moved");
        }
        // A real client during the flood: its SYN and then its ACK go to
        // one backend, without an entry for the SYN.
        let (_, syn) = run(&mut e, &client(41000, SYN).frame());
        let (v, ack) = run(&mut e, &client(41000, ACK).frame());
        assert_eq!((v, ack[5]), (Verdict::Tx(0), syn[5]), "{mode:?}");
    }
}

#[test]
fn ack_and_rst_floods_take_no_port_and_make_no_entry_in_nat_modes() {
    for mode in [Mode::Nat { snat: vec![] }, full_nat()] {
        let mut e = engine(EngineConfig::default(), services(mode.clone(), &[backend(1, 1), backend(2, 1)]));
        for i in 0..100_000u32 {
            let [_, a, b, c] = i.to_be_bytes();
            let flags = if i % 2 == 0 { ACK } else { RST };
            let forged = PacketBuilder::tcp(IpAddr::from([198, 19, a ^ b, c]), 1024 + (i % 60_000) as u16, ip(VIP), 80, flags);
            assert_eq!(run(&mut e, &forged.frame()).0, Verdict::Drop(DropReason::NoState));
        }
        assert_eq!((e.table().len(), e.table().evictions()), (0, 0), "{mode:?}");
        assert_eq!(e.stats().drops.get(DropReason::NoState), 100_000);
        // The first full-NAT port is still the first one given.
        let (v, out) = run(&mut e, &client(40000, SYN).frame());
        assert_eq!(v, Verdict::Tx(0));
        if mode == full_nat() {
            assert_eq!(snat_port(&out), FIRST_PORT);
        }
    }
}
