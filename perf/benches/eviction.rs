//! Eviction quality under a SYN flood: the fraction of established flows
//! that keep receiving packets yet lose their connection-table entry while
//! a flood of new flows fills the table.
//!
//! One nat VIP (an ACK without an entry is dropped as `no_state`, so every
//! eviction of an active flow shows), a table of `--capacity` entries,
//! `--active` established flows each sending a packet every `--every` ms,
//! and `--flood` SYNs of distinct flows per ms, for `--ms` ms of a
//! simulated clock. Prints the share of active flows that lost their entry
//! at least once and the share of their packets dropped.
//!
//! `cargo bench -p fulcrum-perf --bench eviction [-- --flood N ...]`

use fulcrum_dataplane::wire::tcp::{ACK, SYN};
use fulcrum_dataplane::{DropReason, Mode, Packet, Verdict};
use fulcrum_perf::{BATCH, FRAME, HEADROOM, SLOT, arg, engine, frames};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let num = |name: &str, default: usize| arg(&args, name).map_or(default, |s| s.parse().unwrap_or_else(|_| panic!("{name} N")));
    let (capacity, active, every, flood, ms) =
        (num("--capacity", 65_536), num("--active", 10_000), num("--every", 10), num("--flood", 2_000), num("--ms", 3_000));
    let mut e = engine(Mode::Nat { snat: vec![] }, capacity);
    let (syns, acks) = (frames(active, 0, SYN), frames(active, 0, ACK));
    // Distinct flood flows, reused only after 8 table-fulls: long evicted.
    let flood_frames = frames(8 * capacity, active, SYN);
    let mut bufs = vec![0u8; SLOT * BATCH];
    let mut queue: Vec<(&[u8; FRAME], Option<usize>)> = Vec::with_capacity(flood + active);
    let mut run = |e: &mut fulcrum_dataplane::Engine, now: u32, queue: &[(&[u8; FRAME], Option<usize>)], lost: &mut dyn FnMut(usize)| {
        for chunk in queue.chunks(BATCH) {
            let mut slots = bufs.chunks_mut(SLOT);
            let mut batch: Vec<Packet> = chunk
                .iter()
                .map(|(f, _)| {
                    let buf = slots.next().unwrap();
                    buf[HEADROOM..HEADROOM + FRAME].copy_from_slice(&f[..]);
                    Packet::new(buf, HEADROOM, FRAME, 0)
                })
                .collect();
            e.process(now, &mut batch);
            for (p, (_, flow)) in batch.iter().zip(chunk) {
                if let (Some(i), Verdict::Drop(DropReason::NoState)) = (flow, p.verdict) {
                    lost(*i);
                }
            }
        }
    };
    let opening: Vec<_> = syns.iter().chain(&acks).map(|f| (f, None)).collect();
    run(&mut e, 0, &opening, &mut |_| {});
    let (mut evicted, mut dropped, mut sent, mut next_flood) = (vec![false; active], 0u64, 0u64, 0);
    for now in 1..=ms as u32 {
        queue.clear();
        // Interleave: the flood's SYNs and this ms's share of active flows.
        let turn = (now as usize % every, every);
        let mine: Vec<usize> = (turn.0..active).step_by(turn.1).collect();
        for (k, &i) in mine.iter().enumerate() {
            for _ in k * flood / mine.len()..(k + 1) * flood / mine.len() {
                queue.push((&flood_frames[next_flood], None));
                next_flood = (next_flood + 1) % flood_frames.len();
            }
            queue.push((&acks[i], Some(i)));
        }
        sent += mine.len() as u64;
        run(&mut e, now, &queue, &mut |i| {
            evicted[i] = true;
            dropped += 1;
        });
    }
    let lost = evicted.iter().filter(|&&x| x).count();
    println!("| capacity | active flows | packet every | flood SYNs/ms | active flows that lost their entry | their packets dropped | evictions |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {capacity} | {active} | {every} ms | {flood} | {lost} ({:.1} %) | {dropped} of {sent} ({:.2} %) | {} |",
        100.0 * lost as f64 / active as f64,
        100.0 * dropped as f64 / sent.max(1) as f64,
        e.table().evictions()
    );
}
