//! How new and established flows get their backends: reloads, drain, the
//! scheduler hook and its fallbacks, and full-NAT source ports.

use std::net::IpAddr;
use std::sync::Arc;

use fulcrum_dataplane::flow::FlowKey;
use fulcrum_dataplane::sched::{BackendState, Scheduler};
use fulcrum_dataplane::wire::IpProtocol;
use fulcrum_dataplane::wire::tcp::{ACK, SYN};
use fulcrum_dataplane::{Backend, DropReason, Engine, EngineConfig, Interface, Mode, Packet, Services, Shared, SynProxy, Verdict, VipSpec};
use fulcrum_testing::frame::{L4, LB_MAC, PacketBuilder};
use fulcrum_testing::one_vip::{VIP, backend, backend_of, engine, frame, ip, send, services};

#[test]
fn established_flows_keep_their_backend_across_a_reload() {
    let pool: Vec<Backend> = (1..=4).map(|i| backend(i, 1)).collect();
    let mut e = engine(EngineConfig::default(), services(Mode::Dsr, &pool));
    let before: Vec<u8> = (0..200).map(|p| backend_of(&mut e, 10_000 + p, SYN)).collect();
    // Reweight heavily and add a backend: established flows stay put.
    let mut bigger = pool.clone();
    bigger[0].weight = 50;
    bigger.push(backend(5, 50));
    e.set_services(services(Mode::Dsr, &bigger)).unwrap();
    let after: Vec<u8> = (0..200).map(|p| backend_of(&mut e, 10_000 + p, ACK)).collect();
    assert_eq!(before, after);
    // New flows see the new weights.
    let fresh: Vec<u8> = (0..400).map(|p| backend_of(&mut e, 20_000 + p, SYN)).collect();
    let heavy = fresh.iter().filter(|&&b| b == 1 || b == 5).count();
    assert!(heavy > 300, "weights 50,1,1,1,50 gave {heavy}/400 to the heavy two");
}

#[test]
fn a_removed_backend_s_flows_are_rescheduled() {
    let pool: Vec<Backend> = (1..=3).map(|i| backend(i, 1)).collect();
    let mut e = engine(EngineConfig::default(), services(Mode::Dsr, &pool));
    let on: Vec<u16> = (0..300).filter(|&p| backend_of(&mut e, 10_000 + p, SYN) == 2).collect();
    let on_last: Vec<u16> = (0..300).filter(|&p| backend_of(&mut e, 10_000 + p, ACK) == 3).collect();
    assert!(!on.is_empty() && !on_last.is_empty());
    // Backend 2 (id 1) leaves the pool; ids of the others are kept.
    let ids = vec![Some(pool[0]), None, Some(pool[2])];
    let vip = VipSpec {
        addr: ip(VIP),
        proto: IpProtocol::TCP,
        port: 80,
        mode: Mode::Dsr,
        backends: vec![0, 2],
        persistence_ms: None,
        reset_on_down: false,
        syn_proxy: SynProxy::Off,
    };
    let s = Services::new(vec![Interface { mac: LB_MAC, mtu: 1500 }], vec![Some(vip)], ids).unwrap();
    e.set_services(Arc::new(s)).unwrap();
    for p in on {
        assert_ne!(backend_of(&mut e, 10_000 + p, ACK), 2);
    }
    // The last backend is now second in the VIP's list: its flows stay.
    for p in on_last {
        assert_eq!(backend_of(&mut e, 10_000 + p, ACK), 3);
    }
}

#[test]
fn weight_zero_drains() {
    let mut pool: Vec<Backend> = (1..=3).map(|i| backend(i, 1)).collect();
    let mut e = engine(EngineConfig::default(), services(Mode::Dsr, &pool));
    let first: Vec<u8> = (0..300).map(|p| backend_of(&mut e, 10_000 + p, SYN)).collect();
    pool[1].weight = 0;
    e.set_services(services(Mode::Dsr, &pool)).unwrap();
    let new_before = e.stats().backends[1].new_flows.get();
    // No new flow lands on the drained backend...
    assert!((0..300).all(|p| backend_of(&mut e, 30_000 + p, SYN) != 2));
    assert_eq!(e.stats().backends[1].new_flows.get(), new_before);
    // ...while its established flows go on.
    let drained_pkts = e.stats().backends[1].packets.get();
    let again: Vec<u8> = (0..300).map(|p| backend_of(&mut e, 10_000 + p, ACK)).collect();
    assert_eq!(first, again);
    assert!(e.stats().backends[1].packets.get() > drained_pkts);
}

#[test]
fn a_down_backend_takes_no_new_flows_and_rejoins_with_its_weight() {
    let pool = [backend(1, 1), backend(2, 3), backend(3, 1)];
    let up = services(Mode::Dsr, &pool);
    let mut e = engine(EngineConfig::default(), Arc::clone(&up));
    let first: Vec<u8> = (0..300).map(|p| backend_of(&mut e, 10_000 + p, SYN)).collect();
    let down = Arc::new(up.with_backends(&[(1, Backend { up: false, ..pool[1] })]).unwrap());
    e.set_services(Arc::clone(&down)).unwrap();
    assert!((0..300).all(|p| backend_of(&mut e, 30_000 + p, SYN) != 2));
    // Schedulers are told, and their picks of it fall back to Maglev.
    e.set_scheduler(0, Some(Box::new(Cycle { next: 1, n: 3, bogus: false })));
    assert_ne!(backend_of(&mut e, 40_000, SYN), 2);
    assert_eq!(e.stats().scheduler_faults.get(), 1);
    e.set_scheduler(0, None);
    // Established flows stay (`on_down = "keep"`).
    assert_eq!(first, (0..300).map(|p| backend_of(&mut e, 10_000 + p, ACK)).collect::<Vec<_>>());
    // Back up, it has its weight again: 3/5 of the new flows.
    e.set_services(Arc::new(down.with_backends(&[(1, pool[1])]).unwrap())).unwrap();
    let heavy = (0..500).filter(|&p| backend_of(&mut e, 50_000 + p, SYN) == 2).count();
    assert!((250..350).contains(&heavy), "weight 3 of 5 got {heavy}/500");
}

#[test]
fn a_health_change_rebuilds_only_the_tables_it_touches() {
    let iface = vec![Interface { mac: LB_MAC, mtu: 1500 }];
    let pool: Vec<Backend> = (1..=4).map(|i| backend(i, 1)).collect();
    let vip = |port, ids: Vec<u16>| {
        Some(VipSpec {
            addr: ip(VIP),
            proto: IpProtocol::TCP,
            port,
            mode: Mode::Dsr,
            backends: ids,
            persistence_ms: None,
            reset_on_down: false,
            syn_proxy: SynProxy::Off,
        })
    };
    let s = Services::new(iface, vec![vip(80, vec![0, 1]), vip(81, vec![2, 3])], pool.iter().copied().map(Some).collect()).unwrap();
    let t = s.with_backends(&[(3, Backend { up: false, ..pool[3] })]).unwrap();
    let table = |s: &Services, v| Arc::clone(&s.vip(v).unwrap().maglev);
    assert!(Arc::ptr_eq(&table(&s, 0), &table(&t, 0)));
    assert!(!Arc::ptr_eq(&table(&s, 1), &table(&t, 1)));
    assert!(t.vip(1).unwrap().maglev.table().iter().all(|&i| i == 0));
    // A weight change of a backend that is down changes no table either.
    let u = t.with_backends(&[(3, Backend { up: false, weight: 9, ..pool[3] })]).unwrap();
    assert!(Arc::ptr_eq(&table(&t, 1), &table(&u, 1)));
    assert!(s.with_backends(&[(9, pool[0])]).is_err());
}

/// Hands out backends in order; optionally answers out of range.
struct Cycle {
    next: usize,
    n: usize,
    bogus: bool,
}

impl Scheduler for Cycle {
    fn pick(&mut self, _: &FlowKey, _: u64, _: &[BackendState]) -> Option<usize> {
        let i = self.next;
        self.next = (self.next + 1) % self.n;
        Some(if self.bogus { i + 100 } else { i })
    }
}

#[test]
fn a_scheduler_decides_new_flows_and_its_faults_fall_back_to_maglev() {
    let pool: Vec<Backend> = (1..=3).map(|i| backend(i, 1)).collect();
    let s = services(Mode::Dsr, &pool);
    let mut e = engine(EngineConfig::default(), Arc::clone(&s));
    e.set_scheduler(0, Some(Box::new(Cycle { next: 0, n: 3, bogus: false })));
    let picks: Vec<u8> = (0..6).map(|p| backend_of(&mut e, 10_000 + p, SYN)).collect();
    assert_eq!(picks, [1, 2, 3, 1, 2, 3]);

    // Out-of-range answers are faults: Maglev decides and a counter rises.
    let mut reference = engine(EngineConfig::default(), Arc::clone(&s));
    e.set_scheduler(0, Some(Box::new(Cycle { next: 0, n: 3, bogus: true })));
    for p in 0..20 {
        assert_eq!(backend_of(&mut e, 20_000 + p, SYN), backend_of(&mut reference, 20_000 + p, SYN));
    }
    assert_eq!(e.stats().scheduler_faults.get(), 20);
}

/// `Cycle`, recording how many flows each `pick_batch` call brought.
struct Batched {
    cycle: Cycle,
    calls: Arc<std::sync::Mutex<Vec<usize>>>,
}

impl Scheduler for Batched {
    fn pick(&mut self, flow: &FlowKey, hash: u64, backends: &[BackendState]) -> Option<usize> {
        self.cycle.pick(flow, hash, backends)
    }

    fn pick_batch(&mut self, flows: &[(FlowKey, u64)], backends: &mut [BackendState], out: &mut [Option<usize>]) {
        self.calls.lock().unwrap().push(flows.len());
        fulcrum_dataplane::sched::pick_each(self, flows, backends, out);
    }
}

#[test]
fn the_new_flows_of_a_batch_are_placed_in_one_call() {
    let pool: Vec<Backend> = (1..=3).map(|i| backend(i, 1)).collect();
    let s = services(Mode::Dsr, &pool);
    let mut e = engine(EngineConfig::default(), Arc::clone(&s));
    let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
    e.set_scheduler(0, Some(Box::new(Batched { cycle: Cycle { next: 0, n: 3, bogus: false }, calls: Arc::clone(&calls) })));
    // Six SYNs, an ACK without state (Maglev's), the first SYN again (a
    // retransmission: its flow exists by then) and one more SYN.
    let mut frames: Vec<Vec<u8>> = (0..6).map(|p| frame(10_000 + p, SYN)).collect();
    frames.extend([frame(20_000, ACK), frame(10_000, SYN), frame(10_006, SYN)]);
    let mut bufs: Vec<Vec<u8>> = frames.iter().map(|f| [vec![0u8; 128], f.clone(), vec![0u8; 256]].concat()).collect();
    let mut batch: Vec<Packet> = bufs.iter_mut().zip(&frames).map(|(b, f)| Packet::new(b, 128, f.len(), 0)).collect();
    e.process(0, &mut batch);
    let to: Vec<u8> = batch.iter().map(|p| p.frame()[5]).collect();
    // One call for the eight frames that looked new; the retransmission's
    // answer went unused, and the flows took the answers in order.
    assert_eq!(*calls.lock().unwrap(), [8]);
    let mut reference = engine(EngineConfig::default(), Arc::clone(&s));
    assert_eq!(to[..6], [1, 2, 3, 1, 2, 3]);
    assert_eq!(to[6], backend_of(&mut reference, 20_000, ACK), "mid-stream: Maglev");
    // The retransmission keeps its backend; the answer asked for it (the
    // seventh, backend 1) goes unused, and the last SYN has the eighth.
    assert_eq!((to[7], to[8]), (1, 2));
    // A lone new flow is picked alone.
    assert_eq!(backend_of(&mut e, 30_000, SYN), 3);
    assert_eq!(*calls.lock().unwrap(), [8]);
}

#[test]
fn mid_stream_packets_without_state_use_maglev_on_every_node() {
    let pool: Vec<Backend> = (1..=8).map(|i| backend(i, 1)).collect();
    let s = services(Mode::Dsr, &pool);
    let mut node_a = engine(EngineConfig::default(), Arc::clone(&s));
    let mut node_b = engine(EngineConfig::default(), Arc::clone(&s));
    // Node A runs a scheduler for new connections; node B never saw them.
    node_a.set_scheduler(0, Some(Box::new(Cycle { next: 0, n: 8, bogus: false })));
    for p in 0..100 {
        let a = backend_of(&mut node_a, 10_000 + p, ACK);
        assert_eq!(a, backend_of(&mut node_b, 10_000 + p, ACK), "port {p}");
    }
    assert_eq!(node_a.stats().scheduler_faults.get(), 0);
}

#[test]
fn full_nat_ports_are_split_between_workers_and_can_run_out() {
    let pool = [backend(1, 1)];
    let snat = Mode::Nat { snat: vec![ip("198.18.0.200")] };
    let src_port = |e: &mut Engine, client_port: u16| {
        let mut buf = vec![0u8; 2048];
        let f = frame(client_port, SYN);
        buf[..f.len()].copy_from_slice(&f);
        let mut batch = [Packet::new(&mut buf, 0, f.len(), 0)];
        e.process(0, &mut batch);
        let out = batch[0].frame();
        (batch[0].verdict, u16::from_be_bytes([out[34], out[35]]))
    };
    let cfg = EngineConfig { worker: 1, workers: 2, snat_ports: (1000, 1999), ..EngineConfig::default() };
    let mut w1 = engine(cfg, services(snat.clone(), &pool));
    assert_eq!(src_port(&mut w1, 40_000), (Verdict::Tx(0), 1500));
    assert_eq!(src_port(&mut w1, 40_001), (Verdict::Tx(0), 1501));

    let cfg = EngineConfig { snat_ports: (2000, 2001), ..EngineConfig::default() };
    let mut tiny = engine(cfg, services(snat, &pool));
    assert_eq!(src_port(&mut tiny, 40_000).0, Verdict::Tx(0));
    assert_eq!(src_port(&mut tiny, 40_001).0, Verdict::Tx(0));
    assert_eq!(src_port(&mut tiny, 40_002).0, Verdict::Drop(DropReason::SnatExhausted));
    assert_eq!(tiny.stats().vip_drops[0].get(DropReason::SnatExhausted), 1);
    // A failed flow leaves nothing behind: two flows, two entries each.
    assert_eq!(tiny.table().len(), 4);
}

#[test]
fn a_vip_without_usable_backends_drops_new_flows() {
    let mut e = engine(EngineConfig::default(), services(Mode::Dsr, &[backend(1, 0)]));
    assert_eq!(send(&mut e, &frame(1, SYN)).0, Verdict::Drop(DropReason::NoBackend));
    assert_eq!(e.stats().vip_drops[0].get(DropReason::NoBackend), 1);
}

#[test]
fn invalid_services_are_refused_with_the_reason() {
    let iface = vec![Interface { mac: LB_MAC, mtu: 1500 }];
    let v6_backend = Backend { addr: ip("2001:db8::1"), ..backend(1, 1) };
    let vip = VipSpec {
        addr: ip(VIP),
        proto: IpProtocol::TCP,
        port: 80,
        mode: Mode::Dsr,
        backends: vec![0],
        persistence_ms: None,
        reset_on_down: false,
        syn_proxy: SynProxy::Off,
    };
    let err = Services::new(iface.clone(), vec![Some(vip.clone())], vec![Some(v6_backend)]).unwrap_err();
    assert_eq!(err.to_string(), "vip 198.18.0.100:80/tcp: backend 0 (2001:db8::1): not of the VIP's family");
    let moved = Backend { port: 8080, ..backend(1, 1) };
    let err = Services::new(iface.clone(), vec![Some(vip.clone())], vec![Some(moved)]).unwrap_err();
    assert!(err.to_string().contains("DSR cannot change the port (80 -> 8080)"), "{err}");
    let err = Services::new(iface.clone(), vec![Some(vip.clone()), Some(vip.clone())], vec![Some(backend(1, 1))]).unwrap_err();
    assert_eq!(err.to_string(), "vip 198.18.0.100:80/tcp: defined twice");
    let wrong_if = Backend { iface: 3, ..backend(1, 1) };
    let err = Services::new(iface, vec![Some(vip)], vec![Some(wrong_if)]).unwrap_err();
    assert_eq!(err.to_string(), "backend 0 (198.18.1.1): interface 3 does not exist");
}

/// Services with one UDP VIP on port 53 over backends 1..=3, in dsr.
fn dns_services() -> Arc<Services> {
    let pool: Vec<Backend> = (1..=3).map(|i| backend(i, 1)).collect();
    let vip = VipSpec {
        addr: ip(VIP),
        proto: IpProtocol::UDP,
        port: 53,
        mode: Mode::Dsr,
        backends: vec![0, 1, 2],
        persistence_ms: None,
        reset_on_down: false,
        syn_proxy: SynProxy::Off,
    };
    Arc::new(Services::new(vec![Interface { mac: LB_MAC, mtu: 1500 }], vec![Some(vip)], pool.into_iter().map(Some).collect()).unwrap())
}

/// A DNS query from `port`.
fn dns(port: u16) -> Vec<u8> {
    let mut b = PacketBuilder::udp(ip("198.18.0.1"), port, ip(VIP), 53).payload(b"q");
    b.l4 = L4::Udp { src_port: port, dst_port: 53, checksum: true };
    b.frame()
}

#[test]
fn udp_flows_are_balanced_and_sticky() {
    let mut e = engine(EngineConfig::default(), dns_services());
    let first: Vec<u8> = (0..100).map(|p| send(&mut e, &dns(5000 + p)).1).collect();
    let again: Vec<u8> = (0..100).map(|p| send(&mut e, &dns(5000 + p)).1).collect();
    assert_eq!(first, again);
    for b in 1..=3 {
        assert!(first.iter().filter(|&&x| x == b).count() > 15, "backend {b} starved");
    }
}

/// Picks the backend with the fewest established plus half-open flows.
struct Least;

impl Scheduler for Least {
    fn pick(&mut self, _: &FlowKey, _: u64, backends: &[BackendState]) -> Option<usize> {
        (0..backends.len()).filter(|&i| backends[i].usable()).min_by_key(|&i| backends[i].active + backends[i].pending)
    }
}

#[test]
fn udp_flows_count_as_load_for_schedulers() {
    // Without the UDP flows counted, every backend ties at 0 and the
    // least-loaded pick is always the first.
    let mut e = engine(EngineConfig::default(), dns_services());
    e.set_scheduler(0, Some(Box::new(Least)));
    let placed: Vec<u8> = (0..90).map(|p| send(&mut e, &dns(5000 + p)).1).collect();
    for b in 1..=3 {
        assert_eq!(placed.iter().filter(|&&x| x == b).count(), 30, "backend {b}: {placed:?}");
    }
    assert_eq!((1..=3).map(|i| e.load(i - 1).active).sum::<u32>(), 90);
}

#[test]
fn connection_counts_follow_flow_state_and_reach_schedulers() {
    let pool: Vec<Backend> = (1..=2).map(|i| backend(i, 1)).collect();
    let mut e = engine(EngineConfig::default(), services(Mode::Dsr, &pool));
    e.set_scheduler(0, Some(Box::new(Least)));
    // Four SYNs alternate between the two backends: all half-open.
    let picks: Vec<u8> = (0..4).map(|p| backend_of(&mut e, 10_000 + p, SYN)).collect();
    assert_eq!(picks, [1, 2, 1, 2]);
    assert_eq!((e.load(0), e.load(1)), (fulcrum_dataplane::Load { active: 0, pending: 2 }, fulcrum_dataplane::Load { active: 0, pending: 2 }));
    // The client's ACKs establish them; a RST closes one.
    for p in 0..4 {
        backend_of(&mut e, 10_000 + p, ACK);
    }
    assert_eq!(e.load(0), fulcrum_dataplane::Load { active: 2, pending: 0 });
    backend_of(&mut e, 10_000, fulcrum_dataplane::wire::tcp::RST);
    assert_eq!(e.load(0), fulcrum_dataplane::Load { active: 1, pending: 0 });
    // The scheduler sees backend 1 less loaded now.
    assert_eq!(backend_of(&mut e, 20_000, SYN), 1);
    // Expiry forgets them all: the closing one after 60 s, the rest after 900 s.
    let other = PacketBuilder::tcp(ip("198.18.0.1"), 1, ip("198.18.0.2"), 22, SYN).frame();
    for now in [1_000_000u32, 1_000_001] {
        let mut buf = vec![0u8; 2048];
        buf[..other.len()].copy_from_slice(&other);
        e.process(now, &mut [Packet::new(&mut buf, 0, other.len(), 0)]);
    }
    assert_eq!((e.load(0), e.load(1)), (fulcrum_dataplane::Load::default(), fulcrum_dataplane::Load::default()));
    assert_eq!(e.table().len(), 0);
}

/// Picks the backend with the smallest known response time.
struct Fastest;

impl Scheduler for Fastest {
    fn pick(&mut self, _: &FlowKey, _: u64, backends: &[BackendState]) -> Option<usize> {
        (0..backends.len()).filter(|&i| backends[i].usable() && backends[i].rtt_us > 0).min_by_key(|&i| backends[i].rtt_us)
    }
}

#[test]
fn schedulers_see_the_backends_response_times() {
    let pool: Vec<Backend> = (1..=3).map(|i| backend(i, 1)).collect();
    let cfg = EngineConfig { table_capacity: 4096, ..EngineConfig::default() };
    let shared = Shared::new(&cfg);
    let mut e = Engine::with_shared(cfg, services(Mode::Dsr, &pool), &shared).unwrap();
    e.set_scheduler(0, Some(Box::new(Fastest)));
    // As the health checks write them: backend 2 (id 1) answers fastest.
    for (id, us) in [(0, 900), (1, 150), (2, 40_000)] {
        shared.latencies.set(id, us);
    }
    assert!((0..20).all(|p| backend_of(&mut e, 30_000 + p, SYN) == 2));
    shared.latencies.set(2, 10);
    assert_eq!(backend_of(&mut e, 31_000, SYN), 3, "a newer response time is seen at the next new flow");
}

/// One frame through `e` at `now_us`; where it went (the last byte of its
/// destination MAC).
fn send_at(e: &mut Engine, f: &[u8], now_us: u64) -> (Verdict, u8) {
    let mut buf = vec![0u8; 2048];
    buf[128..128 + f.len()].copy_from_slice(f);
    let mut batch = [Packet::new(&mut buf, 128, f.len(), 0)];
    e.process_us(now_us, &mut batch);
    (batch[0].verdict, batch[0].frame()[5])
}

#[test]
fn every_worker_s_scheduler_sees_the_whole_daemon_s_connections() {
    let pool: Vec<Backend> = (1..=3).map(|i| backend(i, 1)).collect();
    let cfg = |worker| EngineConfig { worker, workers: 2, table_capacity: 4096, ..EngineConfig::default() };
    let shared = Shared::new(&cfg(0));
    let mut w0 = Engine::with_shared(cfg(0), services(Mode::Dsr, &pool), &shared).unwrap();
    let mut w1 = Engine::with_shared(cfg(1), services(Mode::Dsr, &pool), &shared).unwrap();
    w0.set_scheduler(0, Some(Box::new(Least)));
    w1.set_scheduler(0, Some(Box::new(Least)));
    // Worker 0 holds 20 connections, spread 7/7/6, then 10 more that a
    // plugin-less VIP would not spread: placed by hand on backend 3.
    for p in 0..20 {
        backend_of(&mut w0, 10_000 + p, SYN);
        backend_of(&mut w0, 10_000 + p, ACK);
    }
    assert_eq!((0..3).map(|b| w0.load(b).active).sum::<u32>(), 20);
    // Worker 1 alone would see three idle backends; it sees worker 0's.
    let seen = shared.readings.load(0);
    assert_eq!(seen, w0.load(0), "worker 1 has none yet");
    let picks: Vec<u8> = (0..9).map(|p| backend_of(&mut w1, 20_000 + p, SYN)).collect();
    let total = |b: u16| shared.readings.load(b);
    let sums: Vec<u32> = (0..3).map(|b| total(b).active + total(b).pending).collect();
    assert!(sums.iter().max().unwrap() - sums.iter().min().unwrap() <= 1, "the daemon-wide load stays even: {sums:?} after {picks:?}");
}

/// Picks the usable backend with the least traffic.
struct Quietest;

impl Scheduler for Quietest {
    fn pick(&mut self, _: &FlowKey, _: u64, backends: &[BackendState]) -> Option<usize> {
        (0..backends.len()).filter(|&i| backends[i].usable()).min_by_key(|&i| backends[i].bytes_per_sec)
    }
}

#[test]
fn schedulers_see_byte_rates_over_about_a_second() {
    let pool: Vec<Backend> = (1..=3).map(|i| backend(i, 1)).collect();
    let cfg = EngineConfig { table_capacity: 4096, ..EngineConfig::default() };
    let shared = Shared::new(&cfg);
    let mut e = Engine::with_shared(cfg, services(Mode::Dsr, &pool), &shared).unwrap();
    e.set_scheduler(0, Some(Box::new(Quietest)));
    // A download-sized stream on the first flow for a second of clock.
    let first = backend_of(&mut e, 10_000, SYN);
    let data = PacketBuilder::tcp(ip("198.18.0.1"), 10_000, ip(VIP), 80, ACK).payload(&[0; 1400]).frame();
    for ms in 0..1000u64 {
        assert_eq!(send_at(&mut e, &data, ms * 1000).1, first);
    }
    let busy = u16::from(first - 1);
    let rate = shared.readings.rate(busy);
    // 1,454-byte frames at 1,000 a second, smoothed over about a second.
    assert!((1_000_000..=1_460_000).contains(&rate), "rate {rate} B/s");
    assert!((0..3).filter(|&b| b != busy).all(|b| shared.readings.rate(b) == 0));
    let picks: Vec<u8> = (0..10).map(|p| send_at(&mut e, &frame(20_000 + p, SYN), 1_000_000).1).collect();
    assert!(!picks.contains(&first), "new flows avoid the busy backend: {picks:?}");
    // Quiet for two seconds (only traffic for no VIP): the rate decays.
    let other = PacketBuilder::tcp(ip("198.18.0.1"), 1, ip("198.18.0.2"), 22, SYN).frame();
    for ms in 1000..3000u64 {
        assert_eq!(send_at(&mut e, &other, ms * 1000).0, Verdict::Pass);
    }
    // (7/8 per 100 ms: 7 % after two seconds.)
    assert!(shared.readings.rate(busy) < rate / 10, "rate after 2 s idle: {}", shared.readings.rate(busy));
}

#[test]
fn nat_schedulers_see_handshake_times_before_health_checks() {
    let pool: Vec<Backend> = (1..=3).map(|i| backend(i, 1)).collect();
    let cfg = EngineConfig { table_capacity: 4096, ..EngineConfig::default() };
    let shared = Shared::new(&cfg);
    let mut e = Engine::with_shared(cfg, services(Mode::Nat { snat: Vec::new() }, &pool), &shared).unwrap();
    // The health checks say backend 1 is fastest...
    for (id, us) in [(0, 100), (1, 5_000), (2, 5_000)] {
        shared.latencies.set(id, us);
    }
    // ...but its handshakes take 30 ms, backend 2's 200 µs, backend 3's 2 ms.
    let handshake = [30_000u64, 200, 2_000];
    let mut t = 1_000_000u64;
    for p in 0..30 {
        let (v, b) = send_at(&mut e, &frame(10_000 + p, SYN), t);
        assert_eq!(v, Verdict::Tx(0));
        let synack = PacketBuilder::tcp(IpAddr::from([198, 18, 1, b]), 80, ip("198.18.0.1"), 10_000 + p, SYN | ACK).macs([2, 0, 0, 0, 1, b], LB_MAC).frame();
        t += handshake[usize::from(b - 1)];
        assert_eq!(send_at(&mut e, &synack, t).0, Verdict::Tx(0));
        t += 1000;
    }
    let now_ms = (t / 1000) as u32;
    for (id, want) in [(0u16, 30_000u32), (1, 200), (2, 2_000)] {
        let got = shared.readings.handshake(id, now_ms).expect("timed");
        assert!(got.abs_diff(want) <= want / 10 + 1, "backend {id}: {got} µs, want about {want}");
    }
    e.set_scheduler(0, Some(Box::new(Fastest)));
    assert!((0..10).all(|p| send_at(&mut e, &frame(20_000 + p, SYN), t).1 == 2), "the handshakes win over the checks");
    // Ten seconds without a handshake: the checks' times apply again.
    let later = t + 10_000_001;
    assert_eq!(send_at(&mut e, &frame(30_000, SYN), later).1, 1);
}
