//! The WebAssembly plugin host against the real modules: every plugin of
//! plugins/ placing flows through `Engine::process`, the hostile modules
//! contained (refused at load, or falling back to Maglev at run time and
//! quarantined), hot swaps under continuous picks, and health policies.
//!
//! The modules come from `scripts/build-plugins.sh` (which `scripts/test.sh`
//! runs before `cargo test`), in `target/plugins/`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use fulcrum_dataplane::flow::FlowKey;
use fulcrum_dataplane::health_policy::{BackendHealth, CheckResult, HealthState, Observation, Policy};
use fulcrum_dataplane::sched::{BackendState, Scheduler};
use fulcrum_dataplane::wire::IpProtocol;
use fulcrum_dataplane::wire::tcp::{ACK, RST, SYN};
use fulcrum_dataplane::{Backend, Engine, EngineConfig, Mode, Verdict};
use fulcrum_plugin_host::replay::{self, ReplayOptions};
use fulcrum_plugin_host::{
    CompileLimits, Fallbacks, FaultKind, HealthPolicy, HostConfig, LastFault, LoadError, Plugin, PluginRuntime, PluginSlot, PluginStats, WasmScheduler,
};
use fulcrum_testing::one_vip::{CLIENT, backend, backend_of, engine, frame, frame_from, ip, send, services};
use fulcrum_testing::plugins::shipped;
use fulcrum_testing::wasm::{self as hand, Func, HEADER, func, i32_const, module};

/// Where scripts/build-plugins.sh put a module.
fn module_path(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../plugins").join(format!("{name}.wasm"));
    assert!(path.exists(), "{}: missing: build the plugins first with scripts/build-plugins.sh", path.display());
    path
}

fn wasm(name: &str) -> Vec<u8> {
    let path = module_path(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The runtime the tests share (one pool of instance slots, one ticker).
fn runtime() -> &'static Arc<PluginRuntime> {
    static RT: OnceLock<Arc<PluginRuntime>> = OnceLock::new();
    RT.get_or_init(|| PluginRuntime::new(HostConfig { quarantine_faults: 3, ..HostConfig::default() }).unwrap())
}

/// The pool as the engine presents it to a scheduler.
fn states(weights: &[u32]) -> Vec<BackendState> {
    weights.iter().enumerate().map(|(i, &weight)| BackendState { id: 100 + i as u64, weight, up: true, ..BackendState::default() }).collect()
}

fn load(name: &str, pool: &[BackendState]) -> Plugin {
    runtime().load(name, &wasm(name), pool).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn published(plugin: Plugin) -> Arc<PluginSlot> {
    let slot = PluginSlot::new("198.18.0.100:80/tcp");
    slot.publish(plugin);
    slot
}

/// An engine whose VIP runs `name` over backends of these weights.
fn engine_with(name: &str, weights: &[u32]) -> (Engine, Arc<PluginSlot>) {
    let pool: Vec<Backend> = weights.iter().enumerate().map(|(i, &w)| backend(i as u8 + 1, w)).collect();
    let mut e = engine(EngineConfig::default(), services(Mode::Dsr, &pool));
    let slot = published(load(name, &states(weights)));
    e.set_scheduler(0, Some(Box::new(slot.scheduler())));
    (e, slot)
}

/// Backends (by MAC byte) of new flows from client ports `first..`.
fn new_flows(e: &mut Engine, first: u16, count: u16, flags: u8) -> Vec<u8> {
    (first..first + count).map(|p| backend_of(e, p, flags)).collect()
}

/// Opens connections (SYN, then the client's ACK): they count as active.
fn connect(e: &mut Engine, first: u16, count: u16) -> Vec<u8> {
    (first..first + count)
        .map(|p| {
            let b = backend_of(e, p, SYN);
            assert_eq!(backend_of(e, p, ACK), b);
            b
        })
        .collect()
}

#[test]
fn every_plugin_loads_and_places_every_new_flow_through_the_engine() {
    let names = shipped();
    // Derived from plugins/: an empty or partial list would test nothing.
    assert!(names.len() >= 11 && names.iter().any(|n| n == "maglev") && !names.iter().any(|n| n == "hostile"), "{names:?}");
    for name in &names {
        let name = name.as_str();
        let (mut e, slot) = engine_with(name, &[1, 2, 3]);
        // 30 SYNs (half-open, none established) over weights 1, 2, 3.
        let placed = new_flows(&mut e, 10_000, 30, SYN);
        let counts: Vec<usize> = (1..=3).map(|b| placed.iter().filter(|&&x| x == b).count()).collect();
        match name {
            "round-robin" => assert_eq!(counts, [10, 10, 10], "{name}: weights ignored, the exact cycle"),
            "weighted-round-robin" | "least-pending" => assert_eq!(counts, [5, 10, 15], "{name}: by weight (half-open ones count as pending)"),
            // Nothing established, no response time, no traffic: every row
            // ties, and the first wins.
            "least-connections" | "weighted-least-connections" | "latency-health" | "fastest-response-time" | "bandwidth" => {
                assert_eq!(counts, [30, 0, 0], "{name}: ties go to the first row")
            }
            "source-ip-hash" => assert!(counts.contains(&30), "{name}: one client, one backend: {counts:?}"),
            "five-tuple-hash" => {
                let by_weight = [1, 2, 2, 3, 3, 3];
                let want: Vec<u8> = (10_000..10_030u16)
                    .map(|port| by_weight[(FlowKey::new(ip(CLIENT), ip(fulcrum_testing::one_vip::VIP), port, 80, IpProtocol::TCP).hash64() % 6) as usize])
                    .collect();
                assert_eq!(placed, want, "{name}: the flow hash over the weights");
            }
            "maglev" => assert!(counts.iter().all(|&n| n > 0) && counts[2] > counts[0], "{name}: all three, by weight: {counts:?}"),
            other => panic!("{other}: a shipped plugin without an expectation here"),
        }
        let s = slot.stats();
        // An update too long for a worker (the maglev table) is prepared
        // on the plugin thread: Maglev places the flows meanwhile.
        let prepared = slot.plugin().is_some_and(|p| p.update_off_worker());
        assert_eq!(prepared, name == "maglev", "{name}");
        let instances = if prepared { s.instantiations.min(1) } else { 1 };
        assert_eq!((s.picks, s.fallbacks.total() - s.fallbacks.preparing, s.fault_count(), s.instantiations), (30, 0, 0, instances), "{name}: {s:?}");
        assert_eq!(s.plugin.as_deref(), Some(name));
        assert_eq!(e.stats().scheduler_faults.get(), 0);
    }
}

#[test]
fn round_robin_gives_the_exact_cyclic_order() {
    let (mut e, _) = engine_with("round-robin", &[1, 1, 1]);
    assert_eq!(new_flows(&mut e, 10_000, 7, SYN), [1, 2, 3, 1, 2, 3, 1]);
}

#[test]
fn weighted_round_robin_interleaves_and_restarts_its_cycle_on_a_weight_change() {
    // The plugin's own native code is the oracle: the same picks with the
    // same resets prove the host writes the rows and calls lb_update on
    // placement changes only (a reset per pick would give a a a ...).
    use fulcrum_plugin_sdk::{Backend as Row, Backends, Flow};
    let mut oracle = fulcrum_plugin_weighted_round_robin::SmoothWrr::new();
    let mut expect = |weights: &[u16], picks: usize, reset: bool| -> Vec<usize> {
        let rows: Vec<Row> = weights.iter().enumerate().map(|(i, &w)| Row::new(i as u64, w)).collect();
        if reset {
            oracle.reset(&Backends::new(&rows));
        }
        (0..picks).map(|_| oracle.pick(&Flow::default(), &Backends::new(&rows)).index().unwrap()).collect()
    };
    let plugin = load("weighted-round-robin", &states(&[5, 1, 1]));
    let slot = published(plugin);
    let mut sched = slot.scheduler();
    let flow = FlowKey::default();
    let mut pool = states(&[5, 1, 1]);
    let mut got = Vec::new();
    for i in 0..14 {
        // Load figures change on every pick: no lb_update for those.
        pool[i % 3].active += 1;
        got.push(sched.pick(&flow, 0, &pool).unwrap());
    }
    assert_eq!(got[..7], [0, 0, 1, 0, 2, 0, 0]);
    assert_eq!(got, expect(&[5, 1, 1], 14, true));
    pool[0].weight = 1;
    pool[2].weight = 5;
    let got: Vec<usize> = (0..14).map(|_| sched.pick(&flow, 0, &pool).unwrap()).collect();
    assert_eq!(got, expect(&[1, 1, 5], 14, true));
}

#[test]
fn round_robin_shares_stay_exact_over_the_whole_daemon() {
    // Two workers, each with its own instance and cursor, the flows spread
    // over them unevenly (as RSS spreads them): each worker's shares are
    // exact within one cycle, so the daemon's are within one per worker.
    for (name, weights, want) in [("round-robin", [1, 1, 1], [200, 200, 200]), ("weighted-round-robin", [1, 2, 3], [100, 200, 300])] {
        let pool: Vec<Backend> = weights.iter().enumerate().map(|(i, &w)| backend(i as u8 + 1, w)).collect();
        let slot = published(load(name, &states(&weights)));
        let cfg = |worker| EngineConfig { worker, workers: 2, table_capacity: 4096, ..EngineConfig::default() };
        let shared = fulcrum_dataplane::Shared::new(&cfg(0));
        let mut workers: Vec<Engine> = (0..2).map(|w| Engine::with_shared(cfg(w), services(Mode::Dsr, &pool), &shared).expect("an engine")).collect();
        for w in &mut workers {
            w.set_scheduler(0, Some(Box::new(slot.scheduler())));
        }
        let mut placed = [0usize; 3];
        for port in 10_000..10_600u16 {
            // About two thirds to worker 0.
            let w = usize::from(port % 3 != 0);
            placed[usize::from(backend_of(&mut workers[w], port, SYN) - 1)] += 1;
        }
        let cycle = weights.iter().sum::<u32>() as usize;
        for i in 0..3 {
            assert!(placed[i].abs_diff(want[i]) <= 2 * cycle / 3 + 1, "{name}: {placed:?}, want {want:?}");
        }
    }
}

#[test]
fn least_connections_follows_established_load() {
    let (mut e, _) = engine_with("least-connections", &[1, 1, 1]);
    assert_eq!(connect(&mut e, 10_000, 6), [1, 2, 3, 1, 2, 3]);
    // Both connections to backend 2 close: it is the least loaded.
    for port in [10_001, 10_004] {
        backend_of(&mut e, port, RST);
    }
    assert_eq!(connect(&mut e, 20_000, 3), [2, 2, 1]);
}

#[test]
fn least_pending_counts_half_open_connections_and_least_connections_does_not() {
    let (mut pending, _) = engine_with("least-pending", &[1, 1, 1]);
    assert_eq!(new_flows(&mut pending, 10_000, 6, SYN), [1, 2, 3, 1, 2, 3]);
    let (mut established, _) = engine_with("least-connections", &[1, 1, 1]);
    assert_eq!(new_flows(&mut established, 10_000, 4, SYN), [1, 1, 1, 1]);
}

#[test]
fn weighted_least_connections_divides_by_weight() {
    let (mut e, _) = engine_with("weighted-least-connections", &[1, 3]);
    assert_eq!(connect(&mut e, 10_000, 5), [1, 2, 2, 2, 1]);
}

#[test]
fn five_tuple_hash_places_by_the_host_flow_hash() {
    let (mut e, _) = engine_with("five-tuple-hash", &[1, 1, 1]);
    for port in 10_000..10_050 {
        let key = FlowKey::new(ip(CLIENT), ip(fulcrum_testing::one_vip::VIP), port, 80, IpProtocol::TCP);
        assert_eq!(backend_of(&mut e, port, SYN), (key.hash64() % 3) as u8 + 1, "port {port}");
    }
}

#[test]
fn source_ip_hash_keeps_each_client_on_one_backend() {
    let (mut e, _) = engine_with("source-ip-hash", &[1, 1, 1]);
    let mut seen = Vec::new();
    for c in 1..=20u8 {
        let client = ip(&format!("198.19.0.{c}"));
        let placed: Vec<u8> = (0..5).map(|p| send(&mut e, &frame_from(client, 10_000 + p, SYN)).1).collect();
        assert!(placed.iter().all(|&b| b == placed[0]), "client {c}: {placed:?}");
        seen.push(placed[0]);
    }
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen, [1, 2, 3], "20 clients should reach all three backends");
}

#[test]
fn response_time_and_bandwidth_plugins_read_the_load_figures() {
    let flow = FlowKey::default();
    let mut pool = states(&[1, 1, 1, 1]);
    let fastest = published(load("fastest-response-time", &pool));
    let mut sched = fastest.scheduler();
    for (i, rtt) in [0, 300, 100, 200].into_iter().enumerate() {
        pool[i].rtt_us = rtt;
    }
    assert_eq!(sched.pick(&flow, 0, &pool), Some(2));
    pool[3].rtt_us = 50;
    assert_eq!(sched.pick(&flow, 0, &pool), Some(3));

    let bandwidth = published(load("bandwidth", &pool));
    let mut sched = bandwidth.scheduler();
    for (i, bps) in [500, 100, 300, 200].into_iter().enumerate() {
        pool[i].bytes_per_sec = bps;
    }
    assert_eq!(sched.pick(&flow, 0, &pool), Some(1));
    pool[1].weight = 0;
    assert_eq!(sched.pick(&flow, 0, &pool), Some(3));
}

// ---- hostile modules ----

/// Collects the `tracing` events of the current thread.
#[derive(Default, Clone)]
struct Events(Arc<Mutex<Vec<String>>>);

impl tracing::Subscriber for Events {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Text(String);
        impl tracing::field::Visit for Text {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0 += &format!("{}={value:?} ", field.name());
            }
        }
        let mut text = Text(format!("{} ", event.metadata().level()));
        event.record(&mut text);
        self.0.lock().unwrap().push(text.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Each run-time misbehaviour and the fault it ends in.
const RUNTIME_HOSTILES: [(&str, &str); 6] = [
    ("infinite-loop", "`lb_pick` ran out of fuel"),
    ("out-of-bounds", "`lb_pick` trapped: wasm trap: out of bounds memory access"),
    ("unreachable", "`lb_pick` trapped: wasm trap: wasm `unreachable` instruction executed"),
    ("memory-growth", "`lb_pick` failed: forcing trap when growing memory to 16908288 bytes"),
    // Its deep frames use up the fuel first (see stack_overflows_trap).
    ("stack-overflow", "`lb_pick` ran out of fuel"),
    ("bad-index", "`lb_pick` returned 3 for a pool of 3"),
];

#[test]
fn load_time_hostiles_are_refused_with_the_reason() {
    let pool = states(&[1, 1, 1]);
    let err = |name: &str| runtime().load(name, &wasm(name), &pool).unwrap_err().to_string();
    assert_eq!(err("hostile-bad-abi-version"), "plugin abi version 3, this host speaks 1 to 2");
    assert_eq!(err("hostile-unexpected-import"), "plugin imports `env.host_secret`: plugins may import nothing (no WASI, no host functions)");
    let region = err("hostile-bad-state-region");
    assert!(region.starts_with("plugin state region: 0xffffffc0..0x100008000 (1024 rows) is past the end of memory"), "{region}");
    let too_big = runtime().load("round-robin", &wasm("round-robin"), &states(&[1; 1025])).unwrap_err();
    assert_eq!(too_big.to_string(), "plugin holds 1024 backend rows, the VIP's pool has 1025");
    assert!(matches!(runtime().load("junk", b"\0asm\x02\0\0\0", &pool), Err(LoadError::Compile(_))));
    // Not WebAssembly at all: the message never quotes the bytes.
    let secret = runtime().load("shadow", b"root:$6$secret:19000:0:99999:7:::\n", &pool).unwrap_err();
    assert!(matches!(secret, LoadError::NotWasm), "{secret}");
    assert!(!secret.to_string().contains("root") && !secret.to_string().contains("0x72"), "{secret}");
    // The run-time misbehaviours already fail the smoke call.
    for (name, reason) in RUNTIME_HOSTILES {
        let e = err(&format!("hostile-{name}"));
        assert_eq!(e, format!("plugin failed its smoke test: {reason}"), "{name}");
    }
}

#[test]
fn run_time_hostiles_fall_back_to_maglev_and_are_quarantined_after_k_faults() {
    let events = Events::default();
    let pool: Vec<Backend> = (1..=3).map(|i| backend(i, 1)).collect();
    let s = services(Mode::Dsr, &pool);
    let mut reference = engine(EngineConfig::default(), Arc::clone(&s));
    let maglev: Vec<u8> = new_flows(&mut reference, 10_000, 10, SYN);
    for (name, reason) in RUNTIME_HOSTILES {
        // Published without the smoke test, as a plugin that turns bad
        // after loading would be.
        let slot = published(runtime().compile(name, &wasm(&format!("hostile-{name}"))).unwrap());
        let mut e = engine(EngineConfig::default(), Arc::clone(&s));
        e.set_scheduler(0, Some(Box::new(slot.scheduler())));
        let placed = tracing::subscriber::with_default(events.clone(), || new_flows(&mut e, 10_000, 10, SYN));
        assert_eq!(placed, maglev, "{name}: every flow forwarded, by Maglev");
        let st = slot.stats();
        // K = 3 faults, then quarantine: no further calls.
        let instances = if name == "bad-index" { 1 } else { 3 };
        let last = st.last_fault.clone().expect("a last fault");
        let kind = if name == "bad-index" {
            FaultKind::BadIndex
        } else if reason.contains("fuel") {
            FaultKind::Budget
        } else {
            FaultKind::Trap
        };
        let want = PluginStats {
            plugin: Some(name.into()),
            hash: Some(fulcrum_plugin_host::module_hash(&wasm(&format!("hostile-{name}")))),
            generation: 1,
            picks: 10,
            fallbacks: Fallbacks { fault: 3, quarantined: 7, ..Fallbacks::default() },
            faults: FaultKind::ALL.map(|k| if k == kind { 3 } else { 0 }),
            instantiations: instances,
            // Version 1 modules: asked one flow per call.
            batches: 0,
            quarantined: true,
            last_fault: Some(LastFault { message: reason.into(), ..last }),
            pick_ns: st.pick_ns,
        };
        assert_eq!(st, want, "{name}");
        assert_eq!(st.pick_ns.iter().sum::<u64>(), 2, "{name}: the first pick and the ninth timed");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        assert!(now.abs_diff(last.at) <= 5, "the fault's time is now: {last:?}");
    }
    let lines = events.0.lock().unwrap();
    assert_eq!(lines.len(), RUNTIME_HOSTILES.len(), "one line per quarantine: {lines:#?}");
    for (line, (name, reason)) in lines.iter().zip(RUNTIME_HOSTILES) {
        assert!(line.starts_with("WARN") && line.contains(&format!("plugin={name}")) && line.contains("quarantined") && line.contains(reason), "{line}");
    }
}

#[test]
fn what_fuel_does_not_stop_the_stack_limit_and_the_cpu_limit_do() {
    // Fuel enough that something else gives out first.
    let cfg = HostConfig { pick_fuel_base: 1 << 40, max_instances: 4, ..HostConfig::default() };
    let rt = PluginRuntime::new(cfg).unwrap();
    let fault = |wasm: &[u8]| {
        let slot = published(rt.compile("deep", wasm).unwrap());
        assert_eq!(slot.scheduler().pick(&FlowKey::default(), 0, &states(&[1])), None);
        slot.stats().last_fault.unwrap().message
    };
    // The SDK's shadow stack runs below address 0.
    assert_eq!(fault(&wasm("hostile-stack-overflow")), "`lb_pick` trapped: wasm trap: out of bounds memory access");
    // Plain recursion (local.get 0; call lb_pick) hits max_wasm_stack.
    let recurse = hand::plugin(vec![func("lb_pick", 1, 1, vec![0x20, 0, 0x10, 3])], HEADER);
    assert_eq!(fault(&recurse), "`lb_pick` trapped: wasm trap: call stack exhausted");
    // loop br 0 end; i32.const 0: the CPU-time limit ends it.
    let spin = hand::plugin(vec![func("lb_pick", 1, 1, vec![0x03, 0x40, 0x0c, 0, 0x0b, 0x41, 0])], HEADER);
    assert_eq!(fault(&spin), "`lb_pick` ran past its CPU-time limit");
}

#[test]
fn a_slow_update_runs_on_the_plugin_thread_never_on_the_worker() {
    let pool = states(&[1, 1, 1]);
    // The smoke test tells where updates run: the maglev table's rebuild
    // (millions of fuel) and this one (0.2 s of memory.fill) off the
    // workers, the weighted round robin's reset (thousands) on them.
    assert!(load("maglev", &pool).update_off_worker());
    assert!(!load("weighted-round-robin", &pool).update_off_worker());
    let t = Instant::now();
    let plugin = load("hostile-slow-update", &pool);
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(30), "the smoke test's update is slow: {took:?}");
    assert!(plugin.update_off_worker());
    let slot = published(plugin);
    let mut sched = slot.scheduler();
    let flow = FlowKey::default();
    let mut reweighted = pool.clone();
    reweighted[2].weight = 5;
    let mut slowest = Duration::ZERO;
    // The first instance, then a placement change: each time Maglev
    // answers at once until the plugin thread has the instance ready.
    for rows in [&pool, &reweighted] {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut fallbacks = 0;
        loop {
            let t = Instant::now();
            let choice = sched.pick(&flow, 0, rows);
            slowest = slowest.max(t.elapsed());
            if choice == Some(0) {
                break;
            }
            fallbacks += 1;
            assert!(Instant::now() < deadline, "never prepared: {:?}", slot.stats());
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(fallbacks >= 1, "the first pick cannot have waited for a 0.2 s update");
    }
    assert!(slowest < Duration::from_millis(20), "a pick took {slowest:?}");
    let s = slot.stats();
    assert_eq!(s.fault_count(), 0, "{s:?}");
    assert_eq!(s.fallbacks.total(), s.fallbacks.preparing, "{s:?}");
    assert_eq!(s.instantiations, 2, "one prepared instance per placement: {s:?}");
}

#[test]
fn declines_are_counted_as_such() {
    let pool = states(&[1, 1, 1]);
    let slot = published(load("hostile-silent-decline", &pool));
    let mut sched = slot.scheduler();
    assert!((0..10).all(|_| sched.pick(&FlowKey::default(), 0, &pool).is_none()));
    let s = slot.stats();
    assert_eq!((s.picks, s.fallbacks.clone(), s.fault_count()), (10, Fallbacks { declined: 10, ..Fallbacks::default() }, 0));
}

#[test]
fn a_new_version_lifts_the_quarantine() {
    let pool = states(&[1, 1, 1]);
    let slot = published(runtime().compile("bad", &wasm("hostile-bad-index")).unwrap());
    let mut sched = slot.scheduler();
    let flow = FlowKey::default();
    assert!((0..5).all(|_| sched.pick(&flow, 0, &pool).is_none()));
    assert!(slot.stats().quarantined);
    slot.publish(load("round-robin", &pool));
    assert_eq!((0..4).map(|_| sched.pick(&flow, 0, &pool)).collect::<Vec<_>>(), [Some(0), Some(1), Some(2), Some(0)]);
    let s = slot.stats();
    assert_eq!((s.fault_count(), s.fallbacks.total(), s.quarantined, s.generation), (3, 5, false, 2));
}

#[test]
fn faults_spread_beyond_the_window_do_not_quarantine() {
    let cfg = HostConfig { quarantine_faults: 3, quarantine_window: Duration::from_millis(300), max_instances: 4, ..HostConfig::default() };
    let rt = PluginRuntime::new(cfg).unwrap();
    let slot = published(rt.compile("bad", &wasm("hostile-bad-index")).unwrap());
    let mut sched = slot.scheduler();
    let (flow, pool) = (FlowKey::default(), states(&[1, 1]));
    for _ in 0..2 {
        sched.pick(&flow, 0, &pool);
    }
    std::thread::sleep(Duration::from_millis(400));
    for _ in 0..2 {
        sched.pick(&flow, 0, &pool);
    }
    assert!(!slot.stats().quarantined, "two faults, a pause longer than the window, two faults");
    sched.pick(&flow, 0, &pool);
    assert!(slot.stats().quarantined, "three faults within the window");
}

#[test]
fn a_pool_larger_than_the_plugin_falls_back_without_a_fault() {
    let slot = published(load("round-robin", &states(&[1])));
    let mut sched = slot.scheduler();
    assert_eq!(sched.pick(&FlowKey::default(), 0, &states(&[1; 1025])), None);
    assert_eq!(sched.pick(&FlowKey::default(), 0, &states(&[1; 1024])), Some(0));
    let s = slot.stats();
    assert_eq!((s.picks, s.fallbacks.over_capacity, s.fallbacks.total(), s.fault_count()), (2, 1, 1, 0));
}

#[test]
fn no_plugin_published_means_maglev() {
    let slot = PluginSlot::new("vip");
    let mut sched = slot.scheduler();
    assert_eq!(sched.pick(&FlowKey::default(), 0, &states(&[1])), None);
    slot.publish(load("round-robin", &states(&[1])));
    assert_eq!(sched.pick(&FlowKey::default(), 0, &states(&[1])), Some(0));
    slot.clear();
    assert_eq!(sched.pick(&FlowKey::default(), 0, &states(&[1])), None);
    assert_eq!(slot.stats().plugin, None);
}

// ---- hand-made modules, for the checks no SDK plugin can fail ----

#[test]
fn hand_made_modules_that_break_the_abi_are_refused_with_the_reason() {
    let compile = |wasm: &[u8]| runtime().compile("hand", wasm).map(|_| ()).map_err(|e| e.to_string());
    assert_eq!(compile(&hand::plugin(vec![], HEADER)), Ok(()));
    let with_start = [func("lb_abi_version", 0, 1, i32_const(1)), Func { export: None, params: 0, results: 0, body: vec![] }];
    assert_eq!(compile(&module(&with_start, &[], Some(1))), Err("plugin has a start function, which the ABI forbids".into()));
    assert_eq!(
        compile(&hand::plugin(vec![func("lb_heath", 7, 1, i32_const(0))], HEADER)),
        Err("plugin exports unknown function `lb_heath` (ABI functions: lb_abi_version, lb_state_ptr, lb_state_cap, lb_pick, lb_update, lb_health, lb_batch_ptr, lb_batch_cap, lb_pick_batch)".into())
    );
    // Version 2: the batch exports come all together or not at all, only
    // in version 2, and their region lies in memory.
    assert_eq!(compile(&hand::plugin(batch(4096, 4), V2)), Ok(()));
    assert_eq!(compile(&hand::plugin(batch(4096, 4).split_off(2), V2)), Err("plugin does not export `lb_batch_ptr`".into()));
    assert_eq!(compile(&hand::plugin(batch(4096, 4).into_iter().take(3).collect(), V2)), Err("plugin does not export `lb_pick_batch`".into()));
    assert_eq!(compile(&hand::plugin(vec![func("lb_abi_version", 0, 1, i32_const(2))], V2)), Err("plugin does not export `lb_pick_batch`".into()));
    let v1_with_batch: Vec<Func> = batch(4096, 4).into_iter().skip(1).collect();
    assert_eq!(
        compile(&hand::plugin(v1_with_batch, HEADER)),
        Err("plugin exports `lb_pick_batch`, which ABI version 1 (the one it declares) does not have: declare version 2".into())
    );
    assert_eq!(compile(&hand::plugin(vec![func("lb_abi_version", 0, 1, i32_const(3))], HEADER)), Err("plugin abi version 3, this host speaks 1 to 2".into()));
    assert_eq!(compile(&hand::plugin(batch(4100, 4), V2)), Err("plugin state region: batch region: address 0x1004 is not 8-byte aligned".into()));
    assert_eq!(
        compile(&hand::plugin(batch(65_536 - 64, 4), V2)),
        Err("plugin state region: batch region: 0xffc0..0x10090 (4 flows) is past the end of memory (65536 bytes)".into())
    );
    assert_eq!(
        compile(&hand::plugin(vec![func("lb_pick", 2, 1, i32_const(0))], HEADER)),
        Err("plugin export `lb_pick` has type (i32, i32) -> (i32), the ABI says (i32) -> (i32)".into())
    );
    assert_eq!(compile(&module(&[func("lb_abi_version", 0, 1, i32_const(1))], &[], None)), Err("plugin does not export `lb_state_ptr`".into()));
    assert_eq!(
        compile(&hand::plugin(vec![func("lb_state_ptr", 0, 1, i32_const(4))], HEADER)),
        Err("plugin state region: address 0x4 is not 8-byte aligned".into())
    );
    assert_eq!(
        compile(&hand::plugin(vec![], [HEADER[0], 1, 5, 32])),
        Err("plugin state header: read magic 0x4d434c46, version 1, cap 5, row size 32; expected magic 0x4d434c46, version 1, cap 4, row size 32".into())
    );
    assert_eq!(
        compile(&hand::plugin(vec![func("lb_state_cap", 0, 1, i32_const(0))], HEADER)),
        Err("plugin state region: lb_state_cap() is 0: no room for a backend".into())
    );
}

#[test]
fn the_health_policy_comes_from_the_plugin_or_native_rise_fall() {
    let pool = states(&[8, 8]);
    // As the health thread does: the streaks, then the policy's verdict,
    // with the backend's thresholds (rise, fall).
    let check = |policy: &mut HealthPolicy, b: &mut BackendHealth, ok, latency_us, (rise, fall)| {
        let check = CheckResult { ok, latency_us };
        b.count(check);
        b.state = policy.decide(&Observation { index: 0, check, health: *b, configured_weight: 8, rise, fall }, &pool);
        b.state
    };
    let up8 = HealthState { up: true, weight: 8 };

    // latency-health: rise 2 / fall 3, and slow checks shrink the weight.
    let slot = published(load("latency-health", &pool));
    let mut policy = HealthPolicy::new(&slot);
    let mut b = BackendHealth::new(up8);
    assert_eq!(check(&mut policy, &mut b, true, 60_000, (9, 9)), HealthState { up: true, weight: 4 });
    assert_eq!(check(&mut policy, &mut b, true, 1_000, (9, 9)), up8);
    assert_eq!((0..3).map(|_| check(&mut policy, &mut b, false, 1_000, (9, 9)).up).collect::<Vec<_>>(), [true, true, false]);

    // Without lb_health in the module, the native rule (rise 1, fall 1 here).
    let slot = published(load("round-robin", &pool));
    let mut policy = HealthPolicy::new(&slot);
    let mut b = BackendHealth::new(up8);
    assert!(!check(&mut policy, &mut b, false, 1_000, (1, 1)).up);
    assert!(check(&mut policy, &mut b, true, 1_000, (1, 1)).up);

    // A verdict with reserved bits set is a fault: the state stays, and
    // after K of them the native rule takes over.
    let bad = hand::plugin(vec![func("lb_health", 7, 1, i32_const(1 << 17))], HEADER);
    let slot = published(runtime().load("bad-health", &bad, &pool).unwrap());
    let mut policy = HealthPolicy::new(&slot);
    let mut b = BackendHealth::new(up8);
    assert_eq!((0..3).map(|_| check(&mut policy, &mut b, false, 1, (1, 1)).up).collect::<Vec<_>>(), [true, true, true]);
    assert!(slot.stats().quarantined);
    assert_eq!(slot.stats().faults_of(FaultKind::BadHealth), 3);
    assert!(!check(&mut policy, &mut b, false, 1, (1, 1)).up);
}

// ---- hot swap ----

#[test]
fn hot_swaps_under_continuous_picks_lose_nothing_and_take_effect_at_once() {
    // With these loads fastest-response-time picks row 1 and
    // least-connections row 2: each answer names the version that gave it.
    let mut pool = states(&[1, 1, 1, 1]);
    for (b, (active, rtt)) in pool.iter_mut().zip([(5, 100), (5, 10), (0, 100), (5, 100)]) {
        (b.active, b.rtt_us) = (active, rtt);
    }
    let versions = [load("fastest-response-time", &pool), load("least-connections", &pool)];
    let expected = |generation: u64| if generation % 2 == 1 { 1 } else { 2 };
    let slot = published(versions[0].clone());
    let latest = Arc::new(AtomicU64::new(1));
    let done = Arc::new(AtomicBool::new(false));
    let picks = Arc::new(AtomicUsize::new(0));
    let picker = {
        let (slot, latest, done, picks, pool) = (Arc::clone(&slot), Arc::clone(&latest), Arc::clone(&done), Arc::clone(&picks), pool.clone());
        std::thread::spawn(move || {
            let mut sched: WasmScheduler = slot.scheduler();
            let flow = FlowKey::default();
            while !done.load(Ordering::Acquire) {
                // Every pick that starts after a publish returned runs the
                // new version.
                let published = latest.load(Ordering::Acquire);
                let choice = sched.pick(&flow, 0, &pool);
                assert!(sched.generation() >= published, "pick after publishing {published} ran {}", sched.generation());
                assert_eq!(choice, Some(expected(sched.generation())), "generation {}: {:?}", sched.generation(), slot.stats());
                picks.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // Lets the picker make 50 picks (or stop, having failed).
    let run_after = |before: usize| {
        while picks.load(Ordering::Relaxed) < before + 50 && !picker.is_finished() {
            std::thread::yield_now();
        }
    };
    run_after(0);
    for swap in 0..20 {
        let before = picks.load(Ordering::Relaxed);
        let generation = slot.publish(versions[(swap + 1) % 2].clone());
        latest.store(generation, Ordering::Release);
        run_after(before);
    }
    done.store(true, Ordering::Release);
    picker.join().expect("picker thread");
    let s = slot.stats();
    assert_eq!((s.generation, s.fallbacks.total(), s.fault_count(), s.instantiations), (21, 0, 0, 21));
    assert!(s.picks >= 20 * 50);
}

#[test]
fn established_flows_keep_their_backend_across_a_swap() {
    let (mut e, slot) = engine_with("round-robin", &[1, 1, 1]);
    let before = connect(&mut e, 10_000, 6);
    slot.publish(load("least-connections", &states(&[1, 1, 1])));
    let after: Vec<u8> = (10_000..10_006).map(|p| backend_of(&mut e, p, ACK)).collect();
    assert_eq!(before, after);
    let (v, _) = send(&mut e, &frame(20_000, SYN));
    assert_eq!(v, Verdict::Tx(0));
    assert_eq!(slot.stats().generation, 2);
}

// ---- replay, for plugin authors ----

#[test]
fn replay_shows_the_spread_and_what_a_failure_remaps() {
    let opts = |failures: Vec<usize>| ReplayOptions { backends: 10, flows: 20_000, failures, ..ReplayOptions::default() };
    // Maglev: minimal disruption. Only the failed backend's flows move
    // (plus a little churn), and the rest stay put.
    let r = replay::run("maglev", &wasm("maglev"), &opts(vec![3])).unwrap();
    assert_eq!(r.all_up.flows.iter().sum::<usize>(), 20_000);
    assert!(r.all_up.flows.iter().all(|&f| (1_700..2_300).contains(&f)), "{r}");
    let fp = r.failure.as_ref().unwrap();
    assert_eq!(fp.pass.flows[3], 0);
    assert_eq!(fp.remapped_from_failed, r.all_up.flows[3]);
    assert!(fp.remapped - fp.remapped_from_failed < 400, "more than 2% moved needlessly:\n{r}");
    assert_eq!((r.all_up.fallbacks, fp.pass.fallbacks, r.faults), (0, 0, 0));

    // The 5-tuple hash is a plain modulo: a failure moves most flows.
    let r = replay::run("five-tuple-hash", &wasm("five-tuple-hash"), &opts(vec![3])).unwrap();
    let fp = r.failure.as_ref().unwrap();
    assert!(fp.remapped > 10_000, "{r}");

    // Weights and initial loads reach the plugin: least connections first
    // fills the idle backends up to the loaded one's level.
    let wlc = ReplayOptions { backends: 3, flows: 300, loads: vec![100], weights: vec![1, 1, 0], ..ReplayOptions::default() };
    let r = replay::run("least-connections", &wasm("least-connections"), &wlc).unwrap();
    assert_eq!(r.all_up.flows, [100, 200, 0]);
    assert!(r.failure.is_none());
    let table = r.to_string();
    assert!(
        table.starts_with("plugin least-connections: 300 new flows over 3 backends, none closing\nbackend  weight    load      flows    share    ideal\n"),
        "{table}"
    );
    assert!(table.contains("      1       1       0        200   66.67%   50.00%\n"), "{table}");
    // Flows that close keep the counts down: the loaded backend is never
    // the least loaded again.
    let closing = ReplayOptions { backends: 3, flows: 3000, loads: vec![0, 0, 8], open: Some(5), ..ReplayOptions::default() };
    let r = replay::run("least-connections", &wasm("least-connections"), &closing).unwrap();
    assert_eq!((r.all_up.flows[2], r.all_up.flows[0] + r.all_up.flows[1]), (0, 3000), "{r}");
    let open = ReplayOptions { open: None, ..closing };
    assert!(replay::run("least-connections", &wasm("least-connections"), &open).unwrap().all_up.flows[2] > 900);

    // Response times and byte rates reach the plugins that read them, and
    // the table shows them.
    let timed = ReplayOptions { backends: 3, flows: 30, rtt_us: vec![2_000, 400, 40_000], ..ReplayOptions::default() };
    let r = replay::run("fastest-response-time", &wasm("fastest-response-time"), &timed).unwrap();
    assert_eq!(r.all_up.flows, [0, 30, 0], "{r}");
    assert!(r.to_string().contains("     rtt"), "{r}");
    let busy = ReplayOptions { backends: 3, flows: 30, rates: vec![50_000_000, 0, 10_000], ..ReplayOptions::default() };
    let r = replay::run("bandwidth", &wasm("bandwidth"), &busy).unwrap();
    assert_eq!(r.all_up.flows, [0, 30, 0], "{r}");
    assert!(r.to_string().contains("50000000"), "{r}");
}

#[test]
fn replay_refuses_bad_options_and_reports_load_errors() {
    let err = |opts: ReplayOptions, name: &str| replay::run(name, &wasm(name), &opts).unwrap_err().to_string();
    assert_eq!(err(ReplayOptions { backends: 0, ..ReplayOptions::default() }, "maglev"), "0 backends: give 1 to 65535");
    assert_eq!(err(ReplayOptions { backends: 2, failures: vec![2], ..ReplayOptions::default() }, "maglev"), "backend 2 cannot fail: there are 2 (0..1)");
    assert_eq!(
        err(ReplayOptions { backends: 2, weights: vec![1; 3], ..ReplayOptions::default() }, "maglev"),
        "weights given up to backend 2, but there are 2 (0..1)"
    );
    assert_eq!(err(ReplayOptions::default(), "hostile-bad-abi-version"), "plugin abi version 3, this host speaks 1 to 2");
}

#[test]
fn modules_past_the_compile_limits_are_refused_naming_the_limit() {
    let compile = CompileLimits { max_module_bytes: 1 << 20, max_functions: 1000, timeout: Duration::from_millis(1) };
    let rt = PluginRuntime::new(HostConfig { max_instances: 4, compile, ..HostConfig::default() }).unwrap();
    let err = |wasm: &[u8]| rt.compile("bloated", wasm).map(drop).unwrap_err().to_string();
    let large = hand::bloated_plugin(400, 1000);
    assert_eq!(err(&large), format!("module is {} bytes, above the limit of 1048576 bytes (plugins.max_module_bytes)", large.len()));
    assert_eq!(err(&hand::bloated_plugin(2000, 1)), "module defines 2004 functions, above the limit of 1000 (plugins.max_functions)");
    // Within both limits, but no compile of 200 functions ends within 1 ms.
    assert_eq!(err(&hand::bloated_plugin(200, 20)), "module still compiling after 1ms (plugins.compile_timeout): refused");
    // The compile given up on runs on; none starts until it ends.
    let small = hand::plugin(vec![], HEADER);
    assert_eq!(err(&small), "a module that ran past plugins.compile_timeout is still compiling: try again once it is done");
    let t = Instant::now();
    let compiled = loop {
        match rt.compile("small", &small) {
            Err(LoadError::CompileBusy) => assert!(t.elapsed() < Duration::from_secs(120), "the late compile never ended"),
            // Started: compiled, or (1 ms is short) given up on in turn.
            other => break other.map(drop).map_err(|e| e.to_string()),
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(compiled.as_ref().map_or_else(|e| e.contains("plugins.compile_timeout"), |()| true), "{compiled:?}");
    eprintln!("the late compile ended after {:?}", t.elapsed());
}

/// The state header of a hand-made ABI version 2 plugin.
const V2: [u32; 4] = [HEADER[0], 2, HEADER[2], HEADER[3]];

/// What makes a hand-made plugin (with the `V2` header) one of ABI version
/// 2: the version, and the batch exports: its region at `ptr`, room for
/// `cap` flows, and an `lb_pick_batch` that decides none.
fn batch(ptr: i32, cap: i32) -> Vec<Func> {
    vec![
        func("lb_abi_version", 0, 1, i32_const(2)),
        func("lb_batch_ptr", 0, 1, i32_const(ptr)),
        func("lb_batch_cap", 0, 1, i32_const(cap)),
        func("lb_pick_batch", 2, 1, i32_const(0)),
    ]
}

fn flows(n: u16) -> Vec<(FlowKey, u64)> {
    (0..n)
        .map(|i| {
            let key = FlowKey::new(ip(CLIENT), ip(fulcrum_testing::one_vip::VIP), 2000 + i, 80, if i % 2 == 0 { IpProtocol::TCP } else { IpProtocol::UDP });
            (key, key.hash64())
        })
        .collect()
}

#[test]
fn a_batch_is_placed_in_one_call_as_if_its_flows_came_one_by_one() {
    let pool = states(&[1, 1, 1, 1]);
    let flows = flows(10);
    // Least pending (open plus half-open) sees each pick of the batch
    // counted: an even spread.
    let slot = published(load("least-pending", &pool));
    let mut sched = slot.scheduler();
    let (mut rows, mut out) = (pool.clone(), vec![None; flows.len()]);
    sched.pick_batch(&flows, &mut rows, &mut out);
    assert_eq!(out, [0, 1, 2, 3, 0, 1, 2, 3, 0, 1].map(Some));
    // The host's rows count them too: TCP flows half-open, UDP ones active.
    assert_eq!(rows.iter().map(|b| (b.pending, b.active)).collect::<Vec<_>>(), [(3, 0), (0, 3), (2, 0), (0, 2)]);
    // The guest's rows are written afresh at the next call: a fresh pool
    // starts the spread again.
    sched.pick_batch(&flows[..4], &mut pool.clone(), &mut out[..4]);
    assert_eq!(out[..4], [0, 1, 2, 3].map(Some));
    let s = slot.stats();
    assert_eq!((s.picks, s.batches, s.fallbacks.total(), s.fault_count()), (14, 2, 0, 0));
    assert_eq!(s.pick_ns.iter().sum::<u64>(), 2, "one timed sample per call");

    // A hash plugin answers in a batch what it answers one by one.
    let slot = published(load("five-tuple-hash", &pool));
    let (mut batch, mut one) = (slot.scheduler(), slot.scheduler());
    batch.pick_batch(&flows, &mut pool.clone(), &mut out);
    let single: Vec<_> = flows.iter().map(|(k, h)| one.pick(k, *h, &pool)).collect();
    assert_eq!(out, single);
}

#[test]
fn a_plugin_without_the_batch_entry_point_and_a_faulty_one_fall_back_per_flow() {
    let pool = states(&[1, 1]);
    let flows = flows(3);
    let mut out = vec![Some(9); 3];
    // ABI version 1, without lb_pick_batch (this one declines everything):
    // one pick per flow.
    let slot = published(runtime().compile("v1", &hand::plugin(vec![], HEADER)).unwrap());
    slot.scheduler().pick_batch(&flows, &mut pool.clone(), &mut out);
    let s = slot.stats();
    assert_eq!((out.clone(), s.picks, s.batches, s.fallbacks.declined), (vec![None; 3], 3, 0, 3));
    // A batch call that decides nothing: one fault, every flow to Maglev.
    let slot = published(runtime().compile("lazy", &hand::plugin(batch(4096, 4), V2)).unwrap());
    out.fill(Some(9));
    slot.scheduler().pick_batch(&flows, &mut pool.clone(), &mut out);
    let s = slot.stats();
    assert_eq!((out.clone(), s.picks, s.batches, s.fallbacks.fault, s.faults_of(FaultKind::BadIndex)), (vec![None; 3], 3, 1, 3, 1));
    assert_eq!(s.last_fault.map(|f| f.message), Some("`lb_pick_batch` returned 0 for 3 flows".into()));
    // A batch call that traps: one fault, every flow to Maglev, and the
    // instance discarded (the next call instantiates afresh).
    let mut trapping = batch(4096, 4);
    trapping[3] = func("lb_pick_batch", 2, 1, vec![0x00]);
    let slot = published(runtime().compile("trap", &hand::plugin(trapping, V2)).unwrap());
    let mut sched = slot.scheduler();
    for _ in 0..2 {
        out.fill(Some(9));
        sched.pick_batch(&flows, &mut pool.clone(), &mut out);
        assert_eq!(out, vec![None; 3]);
    }
    let s = slot.stats();
    assert_eq!((s.picks, s.batches, s.fallbacks.fault, s.faults_of(FaultKind::Trap), s.instantiations), (6, 2, 6, 2, 2));
}
