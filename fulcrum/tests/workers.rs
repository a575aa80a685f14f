//! Worker loops over the in-memory I/O backend: batches through the engine,
//! and NAT return traffic that lands on a worker not holding its flow.

use std::net::IpAddr;
use std::sync::Arc;

use fulcrum::workers::{Dataplane, Worker};
use fulcrum_dataplane::wire::IpProtocol;
use fulcrum_dataplane::wire::tcp::{ACK, SYN};
use fulcrum_dataplane::{Backend, DropReason, EngineConfig, Interface, Mode, Services, Shared, SynProxy, VipSpec};
use fulcrum_io::memory::MemoryIo;
use fulcrum_testing::frame::{LB_MAC, PacketBuilder};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const BACKEND_MAC: [u8; 6] = [2, 0, 0, 0, 1, 10];

fn workers(mode: Mode, n: usize) -> Vec<Worker<MemoryIo>> {
    let backend = Backend { addr: ip("198.18.1.10"), port: 8080, weight: 1, up: true, next_hop: BACKEND_MAC, iface: 0 };
    let vip = VipSpec {
        addr: ip("198.18.0.100"),
        proto: IpProtocol::TCP,
        port: 80,
        mode,
        backends: vec![0],
        persistence_ms: None,
        reset_on_down: false,
        syn_proxy: SynProxy::Off,
    };
    let s = Arc::new(Services::new(vec![Interface { mac: LB_MAC, mtu: 1500 }], vec![Some(vip)], vec![Some(backend)]).unwrap());
    let ios = (0..n).map(|_| MemoryIo::new(256, 64)).collect();
    let cfg = EngineConfig { table_capacity: 1024, ..EngineConfig::default() };
    Dataplane::workers(ios, cfg, &s, &Shared::new(&cfg)).unwrap().into_iter().map(|(w, _)| w).collect()
}

/// Injects a frame into a worker and polls it; returns what it sent.
fn step(w: &mut Worker<MemoryIo>, frame: Option<&[u8]>) -> Vec<Vec<u8>> {
    if let Some(f) = frame {
        assert!(w.io_mut().inject(0, f));
    }
    w.poll().unwrap();
    w.io_mut().take_sent().into_iter().map(|(_, b)| b).collect()
}

fn dst_port(frame: &[u8]) -> u16 {
    u16::from_be_bytes([frame[36], frame[37]])
}

#[test]
fn full_nat_return_traffic_reaches_the_port_owner() {
    let mut ws = workers(Mode::Nat { snat: vec![ip("198.18.0.200")] }, 2);
    let syn = PacketBuilder::tcp(ip("198.18.0.1"), 40000, ip("198.18.0.100"), 80, SYN).frame();
    // Worker 1 gets the client's SYN: its source port is from its half.
    let out = step(&mut ws[1], Some(&syn));
    assert_eq!(out.len(), 1);
    let sport = u16::from_be_bytes([out[0][34], out[0][35]]);
    // Two workers split 1024..=65535: worker 1 starts half way.
    assert_eq!(sport, 1024 + 32256);
    // The backend's answer lands on worker 0, which hands it to worker 1.
    let reply = PacketBuilder::tcp(ip("198.18.1.10"), 8080, ip("198.18.0.200"), sport, SYN | ACK).frame();
    assert!(step(&mut ws[0], Some(&reply)).is_empty());
    assert_eq!(ws[0].stats().handed_out.get(), 1);
    let out = step(&mut ws[1], None);
    assert_eq!(out.len(), 1, "worker 1 translates and sends it");
    assert_eq!(dst_port(&out[0]), 40000);
    assert_eq!(ws[1].stats().handed_in.get(), 1);
}

#[test]
fn inline_return_traffic_goes_round_the_workers_until_found_or_dropped() {
    let mut ws = workers(Mode::Nat { snat: vec![] }, 3);
    let syn = PacketBuilder::tcp(ip("198.18.0.1"), 40000, ip("198.18.0.100"), 80, SYN).frame();
    assert_eq!(step(&mut ws[2], Some(&syn)).len(), 1);
    // The answer lands on worker 0: 0 -> 1 -> 2, which has the flow.
    let reply = PacketBuilder::tcp(ip("198.18.1.10"), 8080, ip("198.18.0.1"), 40000, SYN | ACK).frame();
    assert!(step(&mut ws[0], Some(&reply)).is_empty());
    assert!(step(&mut ws[1], None).is_empty());
    let out = step(&mut ws[2], None);
    assert_eq!(out.len(), 1);
    assert_eq!(u16::from_be_bytes([out[0][34], out[0][35]]), 80, "source translated back to the VIP port");
    // A reply nobody knows goes once round and is dropped as without state.
    let stray = PacketBuilder::tcp(ip("198.18.1.10"), 8080, ip("198.18.0.1"), 40001, ACK).frame();
    step(&mut ws[0], Some(&stray));
    step(&mut ws[1], None);
    assert!(step(&mut ws[2], None).is_empty());
    assert_eq!(ws[2].engine_stats().drops.get(DropReason::NoState), 1);
    assert_eq!(ws.iter().map(|w| w.stats().handoff_lost.get()).sum::<u64>(), 0);
}

#[test]
fn a_single_worker_drops_stateless_return_traffic_itself() {
    let mut ws = workers(Mode::Nat { snat: vec![] }, 1);
    let stray = PacketBuilder::tcp(ip("198.18.1.10"), 8080, ip("198.18.0.1"), 40001, ACK).frame();
    assert!(step(&mut ws[0], Some(&stray)).is_empty());
    assert_eq!(ws[0].engine_stats().drops.get(DropReason::NoState), 1);
    assert_eq!(ws[0].stats().handed_out.get(), 0);
}
