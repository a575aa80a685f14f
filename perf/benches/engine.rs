//! In-process engine costs: ns per established-flow packet in each mode
//! and ns per new flow with native Maglev, over 64-byte frames spread
//! across 1 million flows, on one core.
//!
//! `cargo bench -p fulcrum-perf --bench engine` prints a markdown table.
//! `-- --flows N --rounds R` change the flow count and repetitions,
//! `-- --mode MODE` measures that mode only;
//! `-- --callgrind MODE` fills the table, then runs `--rounds` passes of
//! that mode's established flows (with `--new`, of flows never seen)
//! through `counted`, for instruction counting by
//! `valgrind --tool=callgrind --toggle-collect='*counted*'`: the set-up is
//! not counted, so the total divided by the packets passed is the cost of
//! one (perf/scripts/callgrind-engine.sh).
//!
//! Each batch first copies the pristine frames into the buffers (the NIC's
//! DMA, in effect): the `copy only` row measures that alone, and the
//! per-mode rows subtract it.
//!
//! A last table prices the alternative to one UMEM shared by a worker's
//! sockets (inline topology): a copy of every forwarded frame into a
//! chunk of the egress socket's own UMEM.

use std::hint::black_box;
use std::time::Instant;

use fulcrum_dataplane::forward::tunnel::{Encap, GUE_DEFAULT_PORT};
use fulcrum_dataplane::wire::tcp::{ACK, SYN};
use fulcrum_dataplane::{Engine, Mode};
use fulcrum_perf::{BATCH, FRAME, SLOT, arg, engine, frames, ip, median, pass, shuffled};

/// The UMEM layout of fulcrum-io (`FRAME_SIZE`, `HEADROOM`), restated so
/// that this bench builds on the data plane alone.
const FRAME_SIZE: usize = 2048;
const UMEM_HEADROOM: usize = 256;

fn modes() -> Vec<(&'static str, Mode)> {
    let tunnel = |encap| Mode::Tunnel { encap, source: ip("198.18.200.0"), source_prefix: 24 };
    vec![
        ("nat", Mode::Nat { snat: vec![] }),
        ("full-nat", Mode::Nat { snat: vec![ip("198.18.0.200")] }),
        ("dsr", Mode::Dsr),
        ("ipip", tunnel(Encap::Ipip)),
        ("gue", tunnel(Encap::Gue { port: GUE_DEFAULT_PORT })),
    ]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flows: usize = arg(&args, "--flows").map_or(1_000_000, |s| s.parse().expect("--flows N"));
    let rounds: usize = arg(&args, "--rounds").map_or(5, |s| s.parse().expect("--rounds R"));
    let callgrind = arg(&args, "--callgrind");
    let new_only = args.iter().any(|a| a == "--new");
    let only = arg(&args, "--mode");
    let mut bufs = vec![0u8; SLOT * BATCH];
    let syns = frames(flows, 0, SYN);
    let acks = frames(flows, 0, ACK);
    let order = shuffled(flows);
    if let Some(mode) = callgrind.as_deref() {
        let (_, m) = modes().into_iter().find(|(n, _)| *n == mode).unwrap_or_else(|| panic!("unknown mode {mode}"));
        let mut e = engine(m, if new_only { flows } else { flows * 2 });
        pass(&mut e, &syns, &order, &mut bufs, true, 0);
        if !new_only {
            // Established before counting: the handshake's state change
            // (and with SYNC its export) is a new flow's cost.
            pass(&mut e, &acks, &order, &mut bufs, true, 0);
        }
        for r in 0..rounds {
            // New flows: a table already full, so each insert also evicts.
            let fresh;
            let set = if new_only {
                fresh = frames(flows, (r + 1) * flows, SYN);
                &fresh
            } else {
                &acks
            };
            counted(&mut e, set, &order, &mut bufs, 1 + r as u32);
        }
        return;
    }

    println!("| mode | established ns/pkt | new flow ns (Maglev) |");
    println!("|---|---|---|");
    let mut copy = engine(Mode::Dsr, 16);
    let copy_ns = median((0..rounds).map(|_| pass(&mut copy, &acks, &order, &mut bufs, false, 0)).collect());
    println!("| copy only | {copy_ns:.1} | |");
    for (name, mode) in modes().into_iter().filter(|(n, _)| only.as_deref().is_none_or(|o| o == *n)) {
        // New flows: a table already full, so each insert also evicts —
        // the steady state of a busy balancer.
        let mut e = engine(mode.clone(), flows);
        pass(&mut e, &syns, &order, &mut bufs, true, 0);
        let new_ns = pass(&mut e, &frames(flows, flows, SYN), &order, &mut bufs, true, 1) - copy_ns;
        // Established: every flow has an entry; visit them all, repeatedly.
        let mut e = engine(mode, flows * 2);
        pass(&mut e, &syns, &order, &mut bufs, true, 0);
        let est: Vec<f64> = (0..rounds).map(|r| pass(&mut e, &acks, &order, &mut bufs, true, 2 + r as u32) - copy_ns).collect();
        println!("| {name} | {:.1} | {new_ns:.1} |", median(est));
    }
    println!();
    println!("| shared UMEM, or a copy per forwarded frame between UMEMs | ns per frame |");
    println!("|---|---|");
    println!("| shared UMEM (the descriptor moves) | 0 |");
    for len in [64, 1500] {
        let ns = median((0..rounds).map(|_| umem_copy(len, 1 << 22)).collect());
        println!("| copy of a {len}-byte frame | {ns:.1} |");
    }
}

/// The passes callgrind counts (`--callgrind`): a function of its own so
/// `--toggle-collect` can find it.
#[inline(never)]
fn counted(e: &mut Engine, frames: &[[u8; FRAME]], order: &[u32], bufs: &mut [u8], now: u32) {
    pass(e, frames, order, bufs, true, now);
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
