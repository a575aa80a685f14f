//! In-process engine costs: ns per established-flow packet in each mode
//! and ns per new flow with native Maglev, over 64-byte frames spread
//! across 1 million flows, on one core.
//!
//! `cargo bench -p fulcrum-perf --bench engine` prints a markdown table.
//! `-- --flows N --rounds R` change the flow count and repetitions;
//! `-- --callgrind MODE` runs only that mode's established-flow passes, for
//! instruction counting: the difference between two runs with different
//! `--rounds`, divided by the extra packets, is instructions per packet
//! with the set-up cancelled out.
//!
//! Each batch first copies the pristine frames into the buffers (the NIC's
//! DMA, in effect): the `copy only` row measures that alone, and the
//! per-mode rows subtract it.

use fulcrum::Mode;
use fulcrum::forward::tunnel::{Encap, GUE_DEFAULT_PORT};
use fulcrum::wire::tcp::{ACK, SYN};
use fulcrum_perf::{BATCH, SLOT, arg, engine, frames, ip, median, pass, shuffled};

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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flows: usize = arg(&args, "--flows").map_or(1_000_000, |s| s.parse().expect("--flows N"));
    let rounds: usize = arg(&args, "--rounds").map_or(5, |s| s.parse().expect("--rounds R"));
    let callgrind = arg(&args, "--callgrind");
    let mut bufs = vec![0u8; SLOT * BATCH];
    let syns = frames(flows, 0, SYN);
    let acks = frames(flows, 0, ACK);
    let order = shuffled(flows);

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
}
