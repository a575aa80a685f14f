//! WebAssembly plugin costs: ns per new flow through `Engine::process`
//! with each plugin against native Maglev (same engine, frames and passes
//! as the engine bench), the time to load a plugin, and the swap latency
//! from publish to the first decision on the new version.
//!
//! `scripts/build-plugins.sh && cargo bench -p fulcrum-plugin-host --bench plugins`
//! prints markdown tables. `-- --flows N --rounds R --swaps S` change the
//! flows per pass, the passes per figure and the swaps per pair.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fulcrum_dataplane::Mode;
use fulcrum_dataplane::sched::{BackendState, Scheduler};
use fulcrum_dataplane::wire::tcp::SYN;
use fulcrum_perf::{BATCH, SLOT, arg, engine, frames, median, pass, shuffled};
use fulcrum_plugin_host::{HostConfig, Plugin, PluginRuntime, PluginSlot, WasmScheduler};
use fulcrum_testing::plugins::shipped;

fn wasm(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../plugins").join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}: run scripts/build-plugins.sh first", path.display()))
}

/// The 16 backends of `fulcrum_perf::engine` as a scheduler sees them.
fn pool() -> Vec<BackendState> {
    (0..16).map(|i| BackendState { id: i, weight: 1, up: true, ..BackendState::default() }).collect()
}

/// Answers nothing, so Maglev places every flow: what remains is the
/// engine's cost of presenting the pool to a scheduler.
struct Decline;

impl Scheduler for Decline {
    fn pick(&mut self, _: &fulcrum_dataplane::flow::FlowKey, _: u64, _: &[BackendState]) -> Option<usize> {
        None
    }
}

/// A plugin scheduler asked one flow per call, as before the batch
/// entry point: `pick_batch` is the trait's, one `pick` per flow.
struct OneByOne(WasmScheduler);

impl Scheduler for OneByOne {
    fn pick(&mut self, flow: &fulcrum_dataplane::flow::FlowKey, hash: u64, backends: &[BackendState]) -> Option<usize> {
        self.0.pick(flow, hash, backends)
    }
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flows: usize = arg(&args, "--flows").map_or(10_000, |s| s.parse().expect("--flows N"));
    let rounds: usize = arg(&args, "--rounds").map_or(11, |s| s.parse().expect("--rounds R"));
    let swaps: usize = arg(&args, "--swaps").map_or(200, |s| s.parse().expect("--swaps S"));
    let runtime = PluginRuntime::new(HostConfig::default()).expect("plugin runtime");
    let mut bufs = vec![0u8; SLOT * BATCH];
    // Two sets of SYNs: with the table sized for one set, every pass of
    // the other is all new flows, each insert evicting one of the last.
    let sets = [frames(flows, 0, SYN), frames(flows, flows, SYN)];
    let order = shuffled(flows);
    let copy_ns = median((0..rounds).map(|_| pass(&mut engine(Mode::Dsr, 16), &sets[0], &order, &mut bufs, false, 0)).collect());

    let mut new_flow_ns = |sched: Option<Box<dyn Scheduler>>| {
        let mut e = engine(Mode::Dsr, flows);
        e.set_scheduler(0, sched);
        pass(&mut e, &sets[1], &order, &mut bufs, true, 0);
        median((0..rounds).map(|r| pass(&mut e, &sets[r % 2], &order, &mut bufs, true, 1 + r as u32) - copy_ns).collect())
    };

    println!("### ns per new flow through Engine::process (DSR, 16 backends, {flows} flows per pass)\n");
    println!("| scheduler | ns per new flow | over native Maglev | asked one flow per call | load (compile, checks, smoke test) |");
    println!("|---|---|---|---|---|");
    let native = new_flow_ns(None);
    println!("| native Maglev | {native:.1} | | | |");
    let declining = new_flow_ns(Some(Box::new(Decline)));
    println!("| a native scheduler that declines (the engine's pool for any scheduler) | {declining:.1} | {:+.1} | | |", declining - native);
    let mut loaded = Vec::new();
    let names = shipped();
    for name in &names {
        let name = name.as_str();
        let bytes = wasm(name);
        let start = Instant::now();
        let plugin = runtime.load(name, &bytes, &pool()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let load_ms = start.elapsed().as_secs_f64() * 1e3;
        let slot = PluginSlot::new("bench");
        slot.publish(plugin.clone());
        let ns = new_flow_ns(Some(Box::new(slot.scheduler())));
        let one_by_one = new_flow_ns(Some(Box::new(OneByOne(slot.scheduler()))));
        println!("| {name} | {ns:.1} | {:+.1} | {one_by_one:.1} ({:+.1}) | {load_ms:.1} ms |", ns - native, one_by_one - native);
        loaded.push(plugin);
    }
    let by_name = |n: &str| loaded[names.iter().position(|p| p == n).expect("known plugin")].clone();

    println!("\n### ns per Scheduler::pick alone (16 backends; the host's share without the engine)\n");
    println!("| plugin | rows unchanged | one row's load changed per pick |");
    println!("|---|---|---|");
    for name in ["round-robin", "least-connections", "maglev"] {
        let slot = PluginSlot::new("bench");
        slot.publish(by_name(name));
        let mut sched = slot.scheduler();
        let (mut pool, flow) = (pool(), Default::default());
        let mut per_pick = |churn: bool| {
            let picks = 200_000;
            median(
                (0..rounds)
                    .map(|_| {
                        let start = Instant::now();
                        for i in 0..picks {
                            if churn {
                                pool[i % 16].active = i as u32;
                            }
                            std::hint::black_box(sched.pick(&flow, i as u64, &pool));
                        }
                        start.elapsed().as_nanos() as f64 / picks as f64
                    })
                    .collect(),
            )
        };
        let (still, churn) = (per_pick(false), per_pick(true));
        println!("| {name} | {still:.1} | {churn:.1} |");
    }

    println!("\n### Swap latency: publish to the first decision on the new version ({swaps} swaps per pair)\n");
    println!("| swapping between | median µs | p99 µs | max µs | picks that fell back |");
    println!("|---|---|---|---|---|");
    for pair in [["round-robin", "least-connections"], ["round-robin", "maglev"]] {
        let versions = pair.map(by_name);
        let (lat, fallbacks) = swap_latency(&versions, swaps);
        let us = |v: f64| v * 1e6;
        println!(
            "| {} ↔ {} | {:.1} | {:.1} | {:.1} | {fallbacks} |",
            pair[0],
            pair[1],
            us(median(lat.clone())),
            us(percentile(lat.clone(), 0.99)),
            us(percentile(lat, 1.0))
        );
    }
}

/// A worker thread picks new flows without pause; the control thread
/// publishes `versions` alternately. Returns the seconds from each
/// publish to the end of the worker's first pick on it, and the count of
/// picks that fell back: 0 unless a version's `lb_update` runs on the
/// plugin thread (the maglev plugin's table), whose picks go to native
/// Maglev until its instance is ready (`preparing`).
fn swap_latency(versions: &[Plugin; 2], swaps: usize) -> (Vec<f64>, u64) {
    let slot = PluginSlot::new("bench");
    slot.publish(versions[0].clone());
    let base = Instant::now();
    // Generation the worker last decided on, and when (ns since base).
    let seen = Arc::new(AtomicU64::new(0));
    let seen_at = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (slot, seen, seen_at, stop) = (Arc::clone(&slot), Arc::clone(&seen), Arc::clone(&seen_at), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut sched = slot.scheduler();
            let (pool, flow) = (pool(), Default::default());
            let mut hash = 0u64;
            while !stop.load(Ordering::Relaxed) {
                hash = hash.wrapping_add(0x9e37_79b9_7f4a_7c15);
                sched.pick(&flow, hash, &pool);
                if sched.generation() != seen.load(Ordering::Relaxed) {
                    seen_at.store(base.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    seen.store(sched.generation(), Ordering::Release);
                }
            }
        })
    };
    let mut lat = Vec::with_capacity(swaps);
    for i in 0..swaps {
        std::thread::sleep(Duration::from_millis(2));
        let t0 = base.elapsed().as_nanos() as u64;
        let generation = slot.publish(versions[(i + 1) % 2].clone());
        while seen.load(Ordering::Acquire) != generation {
            std::thread::yield_now();
        }
        lat.push((seen_at.load(Ordering::Relaxed) - t0) as f64 * 1e-9);
    }
    stop.store(true, Ordering::Relaxed);
    worker.join().expect("worker");
    (lat, slot.stats().fallbacks.total())
}
