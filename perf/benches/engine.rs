//! In-process engine costs: ns per established-flow packet in each mode
//! and ns per new flow with native Maglev, over 64-byte frames spread
//! across 1 million flows, on one core.
//!
//! `cargo bench -p fulcrum-perf --bench engine` prints a markdown table.
//! `-- --flows N --rounds R` change the flow count and repetitions;
//! `-- --callgrind MODE` runs only that mode's established-flow passes (with
//! `--new`, its new-flow passes), for instruction counting: the difference
//! between two runs with different `--rounds` (at most 3 with `--new`),
//! divided by the extra packets, is instructions per packet with the
//! set-up cancelled out.
//!
//! Each batch first copies the pristine frames into the buffers (the NIC's
//! DMA, in effect): the `copy only` row measures that alone, and the
//! per-mode rows subtract it.
//!
//! A last table prices the alternative to one UMEM shared by a worker's
//! sockets (inline topology): a copy of every forwarded frame into a
//! chunk of the egress socket's own UMEM.

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use fulcrum::forward::tunnel::{Encap, GUE_DEFAULT_PORT};
use fulcrum::io::{FRAME_SIZE, HEADROOM as UMEM_HEADROOM};
use fulcrum::wire::build::PacketBuilder;
use fulcrum::wire::tcp::{ACK, SYN};
use fulcrum::{Backend, Engine, EngineConfig, Interface, Mode, Packet, Services, VipSpec};

const BATCH: usize = 64;
const FRAME: usize = 64;
const HEADROOM: usize = 128;
const SLOT: usize = 256;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn modes() -> Vec<(&'static str, Mode)> {
    let tunnel = |encap| Mode::Tunnel { encap, source: ip("198.18.200.0"), source_prefix: 24 };
    vec![
        ("nat", Mode::Nat { snat: None }),
        ("full-nat", Mode::Nat { snat: Some(ip("198.18.0.200")) }),
        ("dsr", Mode::Dsr),
        ("ipip", tunnel(Encap::Ipip)),
        ("gue", tunnel(Encap::Gue { port: GUE_DEFAULT_PORT })),
    ]
}

fn engine(mode: Mode, capacity: usize) -> Engine {
    let backends: Vec<Option<Backend>> = (0..16u8)
        .map(|i| Some(Backend { addr: IpAddr::from([198, 18, 1, i + 1]), port: 0, weight: 1, next_hop: [2, 0, 0, 0, 1, i], iface: 0 }))
        .collect();
    let vip = VipSpec { addr: ip("198.18.0.100"), proto: 6, port: 80, mode, backends: (0..16).collect() };
    let services = Services::new(vec![Interface { mac: [2, 0, 0, 0, 0, 0x10], mtu: 1500 }], vec![Some(vip)], backends).unwrap();
    let cfg = EngineConfig { table_capacity: capacity, ..EngineConfig::default() };
    Engine::new(cfg, Arc::new(services)).unwrap()
}

/// 64-byte TCP frames of `count` distinct flows: 65536 client addresses in
/// 198.19.0.0/16, then the source port.
fn frames(count: usize, first: usize, flags: u8) -> Vec<[u8; FRAME]> {
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
fn shuffled(n: usize) -> Vec<u32> {
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
fn pass(e: &mut Engine, frames: &[[u8; FRAME]], order: &[u32], bufs: &mut [u8], process: bool, now: u32) -> f64 {
    let start = Instant::now();
    for chunk in order.chunks(BATCH) {
        let mut slots = bufs.chunks_mut(SLOT);
        let mut batch: [Packet; BATCH] = std::array::from_fn(|_| Packet::new(slots.next().unwrap_or_default(), HEADROOM, FRAME, 0));
        for (pkt, &i) in batch.iter_mut().zip(chunk) {
            pkt.buf[HEADROOM..HEADROOM + FRAME].copy_from_slice(&frames[i as usize]);
        }
        if process {
            e.process(now, &mut batch[..chunk.len()]);
        }
        black_box(&batch);
    }
    start.elapsed().as_nanos() as f64 / order.len() as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flows: usize = arg(&args, "--flows").map_or(1_000_000, |s| s.parse().expect("--flows N"));
    let rounds: usize = arg(&args, "--rounds").map_or(5, |s| s.parse().expect("--rounds R"));
    let callgrind = arg(&args, "--callgrind");
    let new_only = args.iter().any(|a| a == "--new");
    let mut bufs = vec![0u8; SLOT * BATCH];
    let syns = frames(flows, 0, SYN);
    let acks = frames(flows, 0, ACK);
    let order = shuffled(flows);
    if let Some(mode) = callgrind.as_deref().filter(|_| new_only) {
        callgrind_new(mode, flows, rounds, &syns, &order, &mut bufs);
        return;
    }

    println!("| mode | established ns/pkt | new flow ns (Maglev) |");
    println!("|---|---|---|");
    let mut copy = engine(Mode::Dsr, 16);
    let copy_ns = median((0..rounds).map(|_| pass(&mut copy, &acks, &order, &mut bufs, false, 0)).collect());
    println!("| copy only | {copy_ns:.1} | |");
    for (name, mode) in modes() {
        if callgrind.as_deref().is_some_and(|m| m != name) {
            continue;
        }
        // New flows: a table already full, so each insert also evicts —
        // the steady state of a busy balancer.
        let new_ns = if callgrind.is_some() {
            0.0
        } else {
            let mut e = engine(mode, flows);
            pass(&mut e, &syns, &order, &mut bufs, true, 0);
            let fresh = frames(flows, flows, SYN);
            pass(&mut e, &fresh, &order, &mut bufs, true, 1) - copy_ns
        };
        // Established: every flow has an entry; visit them all, repeatedly.
        let mut e = engine(mode, flows * 2);
        pass(&mut e, &syns, &order, &mut bufs, true, 0);
        let est: Vec<f64> = (0..rounds).map(|r| pass(&mut e, &acks, &order, &mut bufs, true, 2 + r as u32) - copy_ns).collect();
        println!("| {name} | {:.1} | {new_ns:.1} |", median(est));
    }
    if callgrind.is_none() {
        println!();
        println!("| shared UMEM, or a copy per forwarded frame between UMEMs | ns per frame |");
        println!("|---|---|");
        println!("| shared UMEM (the descriptor moves) | 0 |");
        for len in [64, 1500] {
            let ns = median((0..rounds).map(|_| umem_copy(len, 1 << 22)).collect());
            println!("| copy of a {len}-byte frame | {ns:.1} |");
        }
    }
}

/// New-flow passes only, for callgrind: the table filled with `syns`, then
/// `rounds` (at most 3) passes of flows it has never seen. The frames of
/// all 3 passes are built whatever `rounds` is, so two runs differ only in
/// the passes processed.
fn callgrind_new(mode: &str, flows: usize, rounds: usize, syns: &[[u8; FRAME]], order: &[u32], bufs: &mut [u8]) {
    const SETS: usize = 3;
    assert!(rounds <= SETS, "--new takes at most {SETS} rounds");
    let (_, m) = modes().into_iter().find(|(n, _)| *n == mode).unwrap_or_else(|| panic!("unknown mode {mode}"));
    let fresh: Vec<Vec<[u8; FRAME]>> = (1..=SETS).map(|k| frames(flows, k * flows, SYN)).collect();
    let mut e = engine(m, flows);
    pass(&mut e, syns, order, bufs, true, 0);
    for (r, set) in fresh.iter().take(rounds).enumerate() {
        pass(&mut e, set, order, bufs, true, 1 + r as u32);
    }
}

/// ns per frame to copy `len` bytes from a received chunk of one UMEM to a
/// free chunk of another, over `frames` frames. Both UMEMs have the
/// 4096 chunks of 2 KiB an `XskIo` port has, visited in ring order, so
/// they do not fit the cache (as under load).
fn umem_copy(len: usize, frames: usize) -> f64 {
    const CHUNKS: usize = 4096;
    let rx = vec![1u8; CHUNKS * FRAME_SIZE];
    let mut tx = vec![0u8; CHUNKS * FRAME_SIZE];
    let start = Instant::now();
    for i in 0..frames {
        let (from, to) = ((i % CHUNKS) * FRAME_SIZE + UMEM_HEADROOM, ((i + CHUNKS / 2) % CHUNKS) * FRAME_SIZE + UMEM_HEADROOM);
        tx[to..to + len].copy_from_slice(&rx[from..from + len]);
        black_box(&mut tx);
    }
    start.elapsed().as_nanos() as f64 / frames as f64
}
