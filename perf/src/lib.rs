//! Shared by the micro-benchmarks (perf/README.md): an engine with one TCP
//! VIP over 16 backends, 64-byte frames of distinct flows, and timed passes
//! of them through `Engine::process` in batches. The line-rate harness is
//! the `fulcrum-linerate` crate in `linerate/` (see README.md).

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use fulcrum_dataplane::wire::IpProtocol;
use fulcrum_dataplane::{Backend, Engine, EngineConfig, Interface, Mode, Packet, Services, SynProxy, VipSpec};
use fulcrum_testing::frame::PacketBuilder;

pub const BATCH: usize = 64;
pub const FRAME: usize = 64;
pub const HEADROOM: usize = 128;
pub const SLOT: usize = 256;

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// One TCP VIP (198.18.0.100:80) over 16 backends of weight 1.
pub fn engine(mode: Mode, capacity: usize) -> Engine {
    engine_with_proxy(mode, capacity, SynProxy::Off)
}

/// `engine` with the VIP's SYN proxy set.
pub fn engine_with_proxy(mode: Mode, capacity: usize, syn_proxy: SynProxy) -> Engine {
    let backends: Vec<Option<Backend>> = (0..16u8)
        .map(|i| Some(Backend { addr: IpAddr::from([198, 18, 1, i + 1]), port: 0, weight: 1, up: true, next_hop: [2, 0, 0, 0, 1, i], iface: 0 }))
        .collect();
    let vip = VipSpec {
        addr: ip("198.18.0.100"),
        proto: IpProtocol::TCP,
        port: 80,
        mode,
        backends: (0..16).collect(),
        persistence_ms: None,
        reset_on_down: false,
        syn_proxy,
    };
    let services = Services::new(vec![Interface { mac: [2, 0, 0, 0, 0, 0x10], mtu: 1500 }], vec![Some(vip)], backends).unwrap();
    // SYNC=1: with flow sync on, what it costs per packet and new flow.
    let cfg = EngineConfig { table_capacity: capacity, sync: std::env::var_os("SYNC").is_some(), ..EngineConfig::default() };
    Engine::new(cfg, Arc::new(services)).unwrap()
}

/// 64-byte TCP frames of `count` distinct flows: 65536 client addresses in
/// 198.19.0.0/16, then the source port.
pub fn frames(count: usize, first: usize, flags: u8) -> Vec<[u8; FRAME]> {
    (first..first + count)
        .map(|i| {
            let src = IpAddr::from([198, 19, (i >> 8) as u8, i as u8]);
            let port = 1024 + (i >> 16) as u16;
            let f = PacketBuilder::tcp(src, port, ip("198.18.0.100"), 80, flags).payload(&[0; 10]).frame();
            let mut out = [0u8; FRAME];
            out.copy_from_slice(&f[..FRAME]);
            out
        })
        .collect()
}

/// A fixed pseudo-random visiting order, so consecutive packets belong to
/// flows far apart in the table (no help from the cache).
pub fn shuffled(n: usize) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    order
}

/// Runs every frame (in `order`) through the engine in batches; returns
/// ns per packet. `process: false` measures the copy alone.
pub fn pass(e: &mut Engine, frames: &[[u8; FRAME]], order: &[u32], bufs: &mut [u8], process: bool, now: u32) -> f64 {
    let start = Instant::now();
    for chunk in order.chunks(BATCH) {
        let mut slots = bufs.chunks_mut(SLOT);
        let mut batch: [Packet; BATCH] = std::array::from_fn(|_| Packet::new(slots.next().unwrap_or_default(), HEADROOM, FRAME, 0));
        for (pkt, &i) in batch.iter_mut().zip(chunk) {
            pkt.buf[HEADROOM..HEADROOM + FRAME].copy_from_slice(&frames[i as usize]);
        }
        if process {
            e.process(now, &mut batch[..chunk.len()]);
            // As a worker does after each batch (nothing without sync).
            e.export_sync(now, true, |entry| {
                black_box(entry);
                true
            });
        }
        black_box(&batch);
    }
    start.elapsed().as_nanos() as f64 / order.len() as f64
}

/// The middle value (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The value after `name` on the command line.
pub fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}
