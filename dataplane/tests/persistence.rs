//! Session persistence by source address, across workers: a client keeps
//! its backend, moves when that one goes down, and stays where it moved.

use std::net::IpAddr;
use std::sync::Arc;

use fulcrum_dataplane::wire::IpProtocol;
use fulcrum_dataplane::wire::tcp::{ACK, SYN};
use fulcrum_dataplane::{Backend, Engine, EngineConfig, Interface, Mode, Packet, Services, Shared, SynProxy, Verdict, VipSpec};
use fulcrum_testing::frame::{LB_MAC, PacketBuilder};

const VIP: [u8; 4] = [198, 18, 0, 100];
const TIMEOUT_MS: u32 = 60_000;

fn backend(i: u8) -> Backend {
    Backend { addr: IpAddr::from([198, 18, 1, i]), port: 0, weight: 1, up: true, next_hop: [2, 0, 0, 0, 1, i], iface: 0 }
}

/// One DSR VIP with source-IP persistence over backends 1..=4.
fn services() -> Services {
    let vip = VipSpec {
        addr: IpAddr::from(VIP),
        proto: IpProtocol::TCP,
        port: 80,
        mode: Mode::Dsr,
        backends: vec![0, 1, 2, 3],
        persistence_ms: Some(TIMEOUT_MS),
        reset_on_down: false,
        syn_proxy: SynProxy::Off,
    };
    Services::new(vec![Interface { mac: LB_MAC, mtu: 1500 }], vec![Some(vip)], (1..=4).map(|i| Some(backend(i))).collect()).unwrap()
}

/// `Services` with backend `i` (1-based) changed.
fn with(s: &Services, i: u8, f: impl Fn(&mut Backend)) -> Arc<Services> {
    let mut b = backend(i);
    f(&mut b);
    Arc::new(s.with_backends(&[(u16::from(i) - 1, b)]).unwrap())
}

/// Two workers sharing one sticky table, as the dataplane wires them.
fn workers(s: &Arc<Services>) -> [Engine; 2] {
    let shared = Shared::new(&EngineConfig::default());
    [0, 1].map(|w| {
        let cfg = EngineConfig { worker: w, workers: 2, table_capacity: 4096, ..EngineConfig::default() };
        Engine::with_shared(cfg, Arc::clone(s), &shared).unwrap()
    })
}

fn publish(ws: &mut [Engine; 2], s: &Arc<Services>) {
    for w in ws {
        w.set_services(Arc::clone(s)).unwrap();
    }
}

/// The backend (1-based) a segment from client `c`, port `port` goes to at `now`.
fn send(e: &mut Engine, now: u32, c: u8, port: u16, flags: u8) -> u8 {
    let f = PacketBuilder::tcp(IpAddr::from([198, 18, 5, c]), port, IpAddr::from(VIP), 80, flags).frame();
    let mut buf = vec![0u8; 2048];
    buf[..f.len()].copy_from_slice(&f);
    let mut batch = [Packet::new(&mut buf, 0, f.len(), 0)];
    e.process(now, &mut batch);
    assert_eq!(batch[0].verdict, Verdict::Tx(0));
    batch[0].frame()[5]
}

/// New connections of client `c` at `now`, alternating between the
/// workers as RSS would spread them: the backends they went to.
fn connect(ws: &mut [Engine; 2], now: u32, c: u8, ports: std::ops::Range<u16>) -> Vec<u8> {
    ports.map(|p| send(&mut ws[usize::from(p % 2)], now, c, p, SYN)).collect()
}

fn one(backends: &[u8]) -> u8 {
    assert!(backends.iter().all(|&b| b == backends[0]), "client spread over {backends:?}");
    backends[0]
}

#[test]
fn every_worker_sends_a_client_to_one_backend_and_clients_spread() {
    let s = Arc::new(services());
    let mut ws = workers(&s);
    let firsts: Vec<u8> = (1..=40).map(|c| one(&connect(&mut ws, 0, c, 1000..1010))).collect();
    for b in 1..=4 {
        assert!(firsts.iter().filter(|&&x| x == b).count() >= 4, "backend {b} got too few of {firsts:?}");
    }
    // A node with an empty sticky table makes the same first choices.
    let mut other = workers(&s);
    assert_eq!(firsts, (1..=40).map(|c| one(&connect(&mut other, 0, c, 2000..2002))).collect::<Vec<_>>());
}

#[test]
fn a_client_moves_off_a_failed_backend_and_stays_after_it_returns() {
    let s = Arc::new(services());
    let mut ws = workers(&s);
    let first = one(&connect(&mut ws, 0, 7, 1000..1010));
    let down = with(&s, first, |b| b.up = false);
    publish(&mut ws, &down);
    // Moved (by worker 0 alone, as RSS may have it), once counted.
    let moved = one(&(2000..2010).map(|p| send(&mut ws[0], 1_000, 7, p, SYN)).collect::<Vec<_>>());
    assert_ne!(moved, first);
    assert_eq!(ws[0].stats().vips[0].moved_clients.get(), 1);
    assert_eq!(ws[0].stats().backends[usize::from(first) - 1].moved_clients.get(), 1);
    // The old backend is back: the client stays, also on worker 1, which
    // last sent it to the old one and never saw it during the failure.
    publish(&mut ws, &s);
    assert_eq!(send(&mut ws[1], 2_000, 7, 3001, SYN), moved);
    assert_eq!(one(&connect(&mut ws, 30_000, 7, 3002..3012)), moved);
    // Mid-stream packets of a lost entry follow the sticky choice too.
    assert_eq!(send(&mut workers(&s)[0], 30_000, 7, 4000, ACK), first, "a node without the entry");
    assert_eq!(send(&mut ws[0], 30_000, 7, 4000, ACK), moved);
    // Idle for longer than the timeout, it starts afresh.
    assert_eq!(one(&connect(&mut ws, 30_000 + TIMEOUT_MS + 2_000, 7, 5000..5010)), first);
}

#[test]
fn a_draining_backend_keeps_its_sticky_clients_but_gets_no_new_ones() {
    let s = Arc::new(services());
    let mut ws = workers(&s);
    let first = one(&connect(&mut ws, 0, 9, 1000..1004));
    let drained = with(&s, first, |b| b.weight = 0);
    publish(&mut ws, &drained);
    assert_eq!(one(&connect(&mut ws, 1_000, 9, 2000..2004)), first);
    let others: Vec<u8> = (10..=60).map(|c| one(&connect(&mut ws, 1_000, c, 1000..1002))).collect();
    assert!(!others.contains(&first), "{others:?}");
}

#[test]
fn a_client_of_a_removed_backend_moves() {
    let s = Arc::new(services());
    let mut ws = workers(&s);
    let first = one(&connect(&mut ws, 0, 11, 1000..1004));
    let ids: Vec<u16> = (0..4).filter(|&i| i != u16::from(first) - 1).collect();
    let vip = VipSpec { backends: ids, ..s.vip(0).unwrap().spec.clone() };
    let gone = Services::new(s.interfaces.clone(), vec![Some(vip)], (1..=4).map(|i| Some(backend(i))).collect()).unwrap();
    publish(&mut ws, &Arc::new(gone));
    assert_ne!(one(&connect(&mut ws, 1_000, 11, 2000..2004)), first);
}
