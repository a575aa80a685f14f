//! What plugin work costs the data path, and what operators see of it,
//! through the daemon on the namespace lab: a plugin whose `lb_update`
//! takes some 10 ms stalls no worker (at the swap, at a backend going down
//! and coming back), and a plugin that declines every flow shows as such
//! in `stats`, `status` and the metrics. Root only; the modules come from
//! scripts/build-plugins.sh.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fulcrum::control::api::{PluginReport, Request, Response};
use fulcrum_tests::daemon::{self, LabMode};
use fulcrum_tests::{Lab, Proc, VIP4, http_get, in_netns, require_root};

const SERVER: &str = env!("CARGO_BIN_EXE_lab-server");
const T: Duration = Duration::from_secs(3);
const VIP: &str = "198.18.100.1:80/tcp";

fn plugin(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugins").join(format!("{name}.wasm"));
    let path = std::env::var_os("CARGO_TARGET_DIR").map_or(path, |t| PathBuf::from(t).join("plugins").join(format!("{name}.wasm")));
    assert!(path.is_file(), "{} is missing: run scripts/build-plugins.sh", path.display());
    path.to_string_lossy().into_owned()
}

/// A full-NAT lab whose TCP VIPs are checked every 100 ms (rise 1, fall 1).
fn lab() -> (Lab, Proc, daemon::TempConfig, String) {
    require_root();
    let mut lab = Lab::new(LabMode::FullNat.topology()).expect("lab");
    let _ = daemon::prepare(&mut lab, LabMode::FullNat, SERVER.as_ref()).expect("set-up");
    let health = "\n[vip.health]\nkind = \"tcp-connect\"\ninterval = \"100ms\"\ntimeout = \"80ms\"\nrise = 1\nfall = 1\n";
    let config = daemon::config_with(&lab, LabMode::FullNat, |_, proto| if proto == "tcp" { health.to_string() } else { String::new() });
    let socket = daemon::socket_of(&config).to_string_lossy().into_owned();
    let (d, file) = daemon::start(&lab, &config).expect("daemon");
    (lab, d, file, socket)
}

fn load(socket: &str, name: &str) {
    let (code, out, err) = daemon::cli(&["plugin", "load", "--vip", VIP, &plugin(name), "--socket", socket]);
    assert_eq!(code, Some(0), "{out}{err}");
}

/// The VIP's plugin report from `stats --json`.
fn report(socket: &str) -> PluginReport {
    let Response::Stats(s) = daemon::ask(Path::new(socket), Request::Stats) else { panic!("not stats") };
    s.vips.into_iter().find(|v| v.name == VIP).and_then(|v| v.plugin).expect("the VIP's plugin report")
}

/// Request latencies (successful requests only), in order.
struct Latencies(Mutex<Vec<(Instant, Duration)>>);

impl Latencies {
    fn between(&self, from: Instant, to: Instant) -> Vec<Duration> {
        let mut v: Vec<Duration> = self.0.lock().unwrap().iter().filter(|(t, _)| (from..to).contains(t)).map(|&(_, d)| d).collect();
        v.sort();
        v
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
            if let Ok((200, _)) = http_get(SocketAddr::new(IpAddr::V4(VIP4), 80), "/", T) {
                out.0.lock().unwrap().push((t, t.elapsed()));
            }
        }
    })
    .expect("client namespace");
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn a_slow_update_stalls_no_worker_at_the_swap_nor_at_backend_changes() {
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
    let Response::Status(status) = daemon::ask(Path::new(&socket), Request::Status) else { panic!("not status") };
    let v = status.vips.iter().find(|v| v.name == VIP).expect("the VIP");
    assert_eq!((v.scheduler.as_str(), v.scheduler_generation, v.scheduler_hash.as_ref()), ("hostile-silent-decline", Some(1), Some(&r.hash)));
    let text = daemon::scrape(&lab);
    let vip = format!("vip=\"{VIP}\"");
    assert_eq!(daemon::metric(&text, "fulcrum_vip_plugin_fallbacks_total", &[&vip, "reason=\"declined\""]), 50.0);
    assert_eq!(daemon::metric(&text, "fulcrum_vip_plugin_picks_total", &[&vip]), 50.0);
    daemon::stop(d).expect("daemon stops");
}
