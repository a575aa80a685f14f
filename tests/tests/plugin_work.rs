//! What plugin work costs the data path, and what operators see of it,
//! through the daemon on the namespace lab: a plugin whose `lb_update`
//! takes some 10 ms stalls no worker (at the swap, at a backend going down
//! and coming back), a module that takes seconds to compile blinds neither
//! the control socket nor the health checks and is refused at
//! `plugins.compile_timeout`, a plugin that declines every flow shows
//! as such in `stats`, `status` and the metrics, and a burst of new flows
//! reaches the plugin in batch calls. Root only; the modules come from
//! scripts/build-plugins.sh or are made here.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fulcrum::control::api::{PluginReport, Request, Response};
use fulcrum_dataplane::wire::tcp::SYN;
use fulcrum_tests::daemon::{self, LabMode};
use fulcrum_tests::load::Flood;
use fulcrum_tests::{Lab, Proc, VIP4, http_get, in_netns, require_root};

const SERVER: &str = env!("CARGO_BIN_EXE_lab-server");
const T: Duration = Duration::from_secs(3);
const VIP: &str = "198.18.100.1:80/tcp";

fn plugin(name: &str) -> String {
    daemon::plugin_module(name).to_string_lossy().into_owned()
}

/// A full-NAT lab whose TCP VIPs are checked every 100 ms (rise 1, fall 1).
fn lab() -> (Lab, Proc, daemon::TempConfig, String) {
    lab_with("")
}

/// `lab`, with `extra` TOML (whole sections) at the end of the config.
fn lab_with(extra: &str) -> (Lab, Proc, daemon::TempConfig, String) {
    require_root();
    let mut lab = Lab::new(LabMode::FullNat.topology()).expect("lab");
    let _ = daemon::prepare(&mut lab, LabMode::FullNat, SERVER.as_ref()).expect("set-up");
    let health = "\n[vip.health]\nkind = \"tcp-connect\"\ninterval = \"100ms\"\ntimeout = \"80ms\"\nrise = 1\nfall = 1\n";
    let config = daemon::config_with(&lab, LabMode::FullNat, |_, proto| if proto == "tcp" { health.to_string() } else { String::new() }) + extra;
    let socket = daemon::socket_of(&config).to_string_lossy().into_owned();
    let (d, file) = daemon::start(&lab, &config).expect("daemon");
    (lab, d, file, socket)
}

fn load(socket: &str, name: &str) {
    let (code, out, err) = daemon::cli(&["plugin", "load", "--vip", VIP, &plugin(name), "--socket", socket]);
    assert_eq!(code, Some(0), "{out}{err}");
}

/// The VIP's scheduler in `status`, and its generation.
fn scheduler(socket: &str) -> (String, Option<u64>) {
    let Response::Status(status) = daemon::ask(Path::new(socket), Request::Status) else { panic!("not status") };
    let v = status.vips.into_iter().find(|v| v.name == VIP).expect("the VIP");
    (v.scheduler, v.scheduler_generation)
}

/// The VIP's plugin report from `stats --json`.
fn report(socket: &str) -> PluginReport {
    let Response::Stats(s) = daemon::ask(Path::new(socket), Request::Stats) else { panic!("not stats") };
    s.vips.into_iter().find(|v| v.name == VIP).and_then(|v| v.plugin).expect("the VIP's plugin report")
}

/// Requests as they started, and their latency (`None`: failed).
struct Latencies(Mutex<Vec<(Instant, Option<Duration>)>>);

impl Latencies {
    /// The latencies of the successful requests started in `from..to`.
    fn between(&self, from: Instant, to: Instant) -> Vec<Duration> {
        let mut v: Vec<Duration> = self.0.lock().unwrap().iter().filter(|(t, _)| (from..to).contains(t)).filter_map(|&(_, d)| d).collect();
        v.sort();
        v
    }

    fn failed(&self) -> usize {
        self.0.lock().unwrap().iter().filter(|(_, d)| d.is_none()).count()
    }
}

fn p99(sorted: &[Duration]) -> Duration {
    sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)]
}

/// New HTTP connections to the VIP, one after the other, until `stop`.
fn traffic(lab: &Lab, stop: &AtomicBool, out: &Latencies) {
    in_netns(&lab.client.ns, || {
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            let ok = matches!(http_get(SocketAddr::new(IpAddr::V4(VIP4), 80), "/", T), Ok((200, _)));
            out.0.lock().unwrap().push((t, ok.then(|| t.elapsed())));
        }
    })
    .expect("client namespace");
}

/// Held by the test that measures request latencies and by the one that
/// keeps a core busy compiling: side by side (test threads of one binary)
/// the second would be the first's noise.
static TIMING: Mutex<()> = Mutex::new(());

fn timing() -> std::sync::MutexGuard<'static, ()> {
    TIMING.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn a_slow_update_stalls_no_worker_at_the_swap_nor_at_backend_changes() {
    let _timing = timing();
    let (lab, d, _file, socket) = lab();
    let (stop, latencies) = (AtomicBool::new(false), Latencies(Mutex::new(Vec::new())));
    let health_line = |state: &str| format!("backend {} is {state}", lab.backends[2].iface().v4);
    let (baseline, with_plugin) = std::thread::scope(|s| {
        let client = s.spawn(|| traffic(&lab, &stop, &latencies));
        let stopper = StopOnDrop(&stop);
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs(2));
        let t1 = Instant::now();
        // The swap, then backend 3 down and up again: each a placement
        // change, each an update of tens of ms per worker.
        load(&socket, "hostile-slow-update");
        std::thread::sleep(Duration::from_millis(500));
        let down = health_line("down");
        lab.set_plugged(&lab.backends[2], false).expect("unplug backend 3");
        d.wait_for_line(|l| l.contains(&down), Duration::from_secs(5)).unwrap_or_else(|| panic!("no `{down}`:\n{}", d.output()));
        std::thread::sleep(Duration::from_millis(500));
        lab.set_plugged(&lab.backends[2], true).expect("plug backend 3 back");
        let up = health_line("up");
        d.wait_for_line(|l| l.contains(&up), Duration::from_secs(5)).unwrap_or_else(|| panic!("no `{up}`:\n{}", d.output()));
        std::thread::sleep(Duration::from_millis(500));
        let t2 = Instant::now();
        drop(stopper);
        client.join().expect("client");
        (latencies.between(t0, t1), latencies.between(t1, t2))
    });
    assert!(baseline.len() >= 100 && with_plugin.len() >= 100, "too little traffic: {} and {}", baseline.len(), with_plugin.len());
    let (before, during) = (p99(&baseline), p99(&with_plugin));
    assert!(during <= before * 2 + Duration::from_millis(5), "p99 {before:?} under Maglev, {during:?} through the swap and the backend changes");
    // A stall holds up the request in flight: one per placement change
    // (three here) if the update ran on the worker, each some 15 ms where
    // requests take 1 to 6.
    let slow = |l: &[Duration]| l.iter().filter(|&&d| d >= Duration::from_millis(12)).count();
    assert!(
        slow(&with_plugin) <= slow(&baseline) + 1,
        "{} requests of 12 ms or more (baseline {}): {:?}",
        slow(&with_plugin),
        slow(&baseline),
        &with_plugin[with_plugin.len() - 5..]
    );
    let r = report(&socket);
    assert_eq!(r.name, "hostile-slow-update");
    assert!(r.picks > 0 && r.fallbacks["preparing"] > 0, "{r:?}");
    assert_eq!(r.faults.values().sum::<u64>(), 0, "{r:?}");
    daemon::stop(d).expect("daemon stops");
}

#[test]
fn a_plugin_that_declines_every_flow_shows_in_stats_status_and_metrics() {
    let (lab, d, _file, socket) = lab();
    load(&socket, "hostile-silent-decline");
    let served = in_netns(&lab.client.ns, || (0..50).filter(|_| matches!(http_get(SocketAddr::new(IpAddr::V4(VIP4), 80), "/", T), Ok((200, _)))).count())
        .expect("client namespace");
    assert_eq!(served, 50, "Maglev serves what the plugin declines");
    let r = report(&socket);
    assert_eq!((r.picks, r.declines, r.fallbacks["declined"]), (50, 50, 50), "{r:?}");
    assert!(!r.quarantined && r.last_fault.is_none() && r.hash.len() == 16, "{r:?}");
    // Every worker times its first pick, then one in eight.
    let p99 = r.pick_p99_ns.unwrap_or_else(|| panic!("no pick cost in {r:?}"));
    assert!((100..5_000_000).contains(&p99), "a pick's p99 of {p99} ns");
    let Response::Status(status) = daemon::ask(Path::new(&socket), Request::Status) else { panic!("not status") };
    let v = status.vips.iter().find(|v| v.name == VIP).expect("the VIP");
    assert_eq!((v.scheduler.as_str(), v.scheduler_generation, v.scheduler_hash.as_ref()), ("hostile-silent-decline", Some(1), Some(&r.hash)));
    let text = daemon::scrape(&lab);
    let vip = format!("vip=\"{VIP}\"");
    assert_eq!(daemon::metric(&text, "fulcrum_vip_plugin_fallbacks_total", &[&vip, "reason=\"declined\""]), 50.0);
    assert_eq!(daemon::metric(&text, "fulcrum_vip_plugin_picks_total", &[&vip]), 50.0);
    assert_eq!(daemon::metric(&text, "fulcrum_vip_plugin_pick_p99_seconds", &[&vip]), p99 as f64 / 1e9);
    daemon::stop(d).expect("daemon stops");
}

#[test]
fn a_burst_of_new_flows_is_placed_in_batch_calls_and_a_client_is_still_served() {
    require_root();
    let mut lab = Lab::new(LabMode::Dsr.topology()).expect("lab");
    let _ = daemon::prepare(&mut lab, LabMode::Dsr, SERVER.as_ref()).expect("set-up");
    let config = daemon::config_with(&lab, LabMode::Dsr, |_, _| String::new());
    let socket = daemon::socket_of(&config).to_string_lossy().into_owned();
    let (d, _file) = daemon::start(&lab, &config).expect("daemon");
    load(&socket, "round-robin");
    const SYNS: u32 = 2000;
    let target = SocketAddr::new(IpAddr::V4(VIP4), 80);
    // Forged SYNs from many sources: each a new flow for the plugin. The
    // workers poll adaptively, so the frames that come while one sleeps
    // reach it as one chunk.
    Flood { target, flags: SYN, frames: SYNS, rate: 50_000 }.send(&lab).expect("flood");
    let served = in_netns(&lab.client.ns, || http_get(target, "/", T)).expect("client namespace");
    assert!(matches!(served, Ok((200, _))), "{served:?}");
    let r = report(&socket);
    assert!(r.picks >= u64::from(SYNS) * 9 / 10, "{} picks for {SYNS} SYNs: {r:?}", r.picks);
    assert!(r.batches > 0 && r.picks > r.batches * 2, "{} batch calls for {} picks: {r:?}", r.batches, r.picks);
    assert_eq!(r.faults.values().sum::<u64>(), 0, "{r:?}");
    let text = daemon::scrape(&lab);
    assert_eq!(daemon::metric(&text, "fulcrum_vip_plugin_batches_total", &[&format!("vip=\"{VIP}\"")]), r.batches as f64);
    eprintln!("{} picks in {} batch calls (and single picks)", r.picks, r.batches);
    daemon::stop(d).expect("daemon stops");
}

/// A module written for one test, removed when dropped.
struct TempModule(PathBuf);

impl TempModule {
    fn new(name: &str, wasm: &[u8]) -> TempModule {
        let path = std::env::temp_dir().join(format!("fulcrum-lab-{}-{name}.wasm", std::process::id()));
        std::fs::write(&path, wasm).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        TempModule(path)
    }

    /// `fulcrum plugin load` of this module: the exit code and stderr.
    fn load(&self, socket: &str) -> (Option<i32>, String) {
        let (code, _, err) = daemon::cli(&["plugin", "load", "--vip", VIP, self.0.to_str().unwrap(), "--socket", socket]);
        (code, err)
    }
}

impl Drop for TempModule {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_module_compiling_for_seconds_blinds_neither_the_control_socket_nor_health_checks() {
    let _timing = timing();
    let limits = "\n[plugins]\nmax_module_bytes = 4194304\nmax_functions = 10000\ncompile_timeout = \"2s\"\n";
    let (lab, d, _file, socket) = lab_with(limits);
    // Legal and within the limits, but a million additions to compile:
    // seconds even for a release build.
    let huge = TempModule::new("huge", &fulcrum_testing::wasm::bloated_plugin(5000, 200));
    let (stop, latencies) = (AtomicBool::new(false), Latencies(Mutex::new(Vec::new())));
    let down = format!("backend {} is down", lab.backends[2].iface().v4);
    std::thread::scope(|s| {
        let client = s.spawn(|| traffic(&lab, &stop, &latencies));
        let stopper = StopOnDrop(&stop);
        std::thread::sleep(Duration::from_secs(1));
        let t_load = Instant::now();
        let loading = s.spawn(|| {
            let r = huge.load(&socket);
            (r, Instant::now())
        });
        std::thread::sleep(Duration::from_millis(300));
        let t_kill = Instant::now();
        lab.set_plugged(&lab.backends[2], false).expect("unplug backend 3");
        // The control socket answers at once throughout, and the health
        // checks go on.
        let (mut slowest, mut t_down) = (Duration::ZERO, None);
        while !loading.is_finished() {
            let t = Instant::now();
            assert!(matches!(daemon::ask(Path::new(&socket), Request::Stats), Response::Stats(_)));
            slowest = slowest.max(t.elapsed());
            if t_down.is_none() && d.wait_for_line(|l| l.contains(&down), Duration::ZERO).is_some() {
                t_down = Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let ((code, err), t_refused) = loading.join().expect("plugin load");
        std::thread::sleep(Duration::from_millis(500));
        drop(stopper);
        client.join().expect("client");
        assert_ne!(code, Some(0), "the huge module was loaded");
        assert!(err.contains("plugins.compile_timeout"), "{err}");
        assert!(t_refused - t_load >= Duration::from_secs(2) && t_refused - t_load < Duration::from_secs(4), "refused after {:?}", t_refused - t_load);
        let t_down = t_down.unwrap_or_else(|| panic!("no `{down}` while the module compiled:\n{}", d.output()));
        assert!(t_down - t_kill < Duration::from_secs(1), "backend 3 marked down {:?} after it died", t_down - t_kill);
        assert!(slowest < Duration::from_millis(250), "`stats` took up to {slowest:?} while the module compiled");
    });
    assert!(latencies.failed() <= 2, "{} requests failed", latencies.failed());
    // Past a limit: refused before compiling, naming it.
    let many = TempModule::new("many", &fulcrum_testing::wasm::bloated_plugin(10_001, 1));
    let (code, err) = many.load(&socket);
    assert!(code != Some(0) && err.contains("module defines 10005 functions, above the limit of 10000 (plugins.max_functions)"), "{err}");
    let large = TempModule::new("large", &fulcrum_testing::wasm::bloated_plugin(100, 15_000));
    let (code, err) = large.load(&socket);
    assert!(code != Some(0) && err.contains("above the limit of 4194304 bytes (plugins.max_module_bytes)"), "{err}");
    let Response::Status(status) = daemon::ask(Path::new(&socket), Request::Status) else { panic!("not status") };
    assert_eq!(status.vips.iter().find(|v| v.name == VIP).map(|v| v.scheduler.as_str()), Some("maglev"));
    daemon::stop(d).expect("daemon stops");
}

/// A state file of the test's own, removed when dropped.
struct StateFile(PathBuf);

impl Drop for StateFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_persisted_plugin_survives_reload_and_restart_and_an_unpersisted_one_does_not() {
    let state = StateFile(std::env::temp_dir().join(format!("fulcrum-lab-state-{}.json", std::process::id())));
    let (lab, d, file, socket) = lab_with("");
    // The lab's config keeps runtime changes in the default state file:
    // this test's own instead, from the restart on.
    let text = std::fs::read_to_string(file.path()).expect("config");
    file.write(&text.replacen("[daemon]\n", &format!("[daemon]\nstate_file = \"{}\"\n", state.0.display()), 1));
    daemon::stop(d).expect("daemon stops");
    let d = daemon::run_in(&lab, &lab.balancer.ns, &file).expect("daemon with its state file");

    let (code, out, err) = daemon::cli(&["plugin", "load", "--persist", "--vip", VIP, &plugin("round-robin"), "--socket", &socket]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out.trim_end(), format!("vip {VIP}: plugin round-robin published (generation 1), persisted in {}", state.0.display()));
    let saved = std::fs::read_to_string(&state.0).expect("the state file");
    assert!(saved.contains("\"schedulers\"") && saved.contains("round-robin.wasm"), "{saved}");
    // A reload keeps it as it runs: no new generation.
    let (code, out, err) = daemon::cli(&["reload", "--socket", &socket]);
    assert!(code == Some(0) && out.contains("no change"), "{out}{err}");
    assert_eq!(scheduler(&socket), ("round-robin".into(), Some(1)));
    // A restart loads it from the state file.
    daemon::stop(d).expect("daemon stops");
    let d = daemon::run_in(&lab, &lab.balancer.ns, &file).expect("daemon restarts");
    assert_eq!(scheduler(&socket).0, "round-robin");
    let served = in_netns(&lab.client.ns, || (0..6).filter(|_| matches!(http_get(SocketAddr::new(IpAddr::V4(VIP4), 80), "/", T), Ok((200, _)))).count());
    assert_eq!(served.expect("client namespace"), 6);
    assert_eq!(report(&socket).picks, 6, "the persisted plugin places the new flows");

    // Forgotten: the file's scheduler (Maglev) at once, and no state left.
    let (code, out, err) = daemon::cli(&["plugin", "forget", "--vip", VIP, "--socket", &socket]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(scheduler(&socket).0, "maglev");
    assert!(!state.0.exists(), "the state file outlived its last change");
    let (code, _, err) = daemon::cli(&["plugin", "forget", "--vip", VIP, "--socket", &socket]);
    assert!(code == Some(1) && err.contains("has no persisted plugin"), "{err}");

    // Without --persist: gone at the restart.
    load(&socket, "round-robin");
    assert_eq!(scheduler(&socket).0, "round-robin");
    daemon::stop(d).expect("daemon stops");
    let d = daemon::run_in(&lab, &lab.balancer.ns, &file).expect("daemon restarts");
    assert_eq!(scheduler(&socket).0, "maglev");
    daemon::stop(d).expect("daemon stops");
}
