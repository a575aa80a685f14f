//! Swapping the scheduler plugin of a running daemon under traffic, through
//! `fulcrum plugin load`. Root only; the plugins come from
//! scripts/build-plugins.sh (run by scripts/test.sh first).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fulcrum_tests::daemon::{self, LabMode};
use fulcrum_tests::{Lab, VIP4, http_get, in_netns, require_root};

const SERVER: &str = env!("CARGO_BIN_EXE_lab-server");
const T: Duration = Duration::from_secs(3);
const SWAPS: u64 = 20;
const VIP: &str = "198.18.100.1:80/tcp";

fn plugin(name: &str) -> String {
    daemon::plugin_module(name).to_string_lossy().into_owned()
}

/// New HTTP connections to the VIP until `stop`: answers by backend name,
/// and every failure.
fn traffic(lab: &Lab, stop: &AtomicBool) -> (HashMap<String, u64>, Vec<String>) {
    in_netns(&lab.client.ns, || {
        let (mut by_name, mut failures) = (HashMap::new(), Vec::new());
        while !stop.load(Ordering::Relaxed) {
            match http_get(SocketAddr::new(IpAddr::V4(VIP4), 80), "/", T) {
                Ok((200, body)) => *by_name.entry(String::from_utf8_lossy(&body).trim().to_string()).or_insert(0) += 1,
                other => failures.push(format!("{other:?}")),
            }
        }
        (by_name, failures)
    })
    .expect("client namespace")
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn twenty_swaps_under_traffic_fail_no_request() {
    require_root();
    let mut lab = Lab::new(LabMode::FullNat.topology()).expect("lab");
    let _none = daemon::prepare(&mut lab, LabMode::FullNat, SERVER.as_ref()).expect("set-up");
    let config = daemon::config(&lab, LabMode::FullNat, "");
    let socket = daemon::socket_of(&config).to_string_lossy().into_owned();
    let (d, _file) = daemon::start(&lab, &config).expect("daemon");
    let stop = AtomicBool::new(false);
    let (by_name, failures) = std::thread::scope(|s| {
        let client = s.spawn(|| traffic(&lab, &stop));
        // Stops the client also when an assertion below fails.
        let stopper = StopOnDrop(&stop);
        for i in 1..=SWAPS {
            let name = if i % 2 == 1 { "round-robin" } else { "least-connections" };
            let (code, out, err) = daemon::cli(&["plugin", "load", "--vip", VIP, &plugin(name), "--socket", &socket]);
            assert_eq!(code, Some(0), "swap {i}: {out}{err}");
            assert_eq!(out.trim(), format!("vip {VIP}: plugin {name} published (generation {i}) until the daemon restarts"), "swap {i}");
            std::thread::sleep(Duration::from_millis(100));
        }
        drop(stopper);
        client.join().expect("client")
    });
    assert!(failures.is_empty(), "{} requests failed across {SWAPS} swaps: {failures:?}", failures.len());
    let total: u64 = by_name.values().sum();
    assert!(total >= 100, "too little traffic to judge: {by_name:?}");
    // Round-robin and least-connections both keep every backend busy.
    assert_eq!(by_name.len(), 3, "{by_name:?}");

    // A module that is not a valid plugin is refused, and the last good
    // one keeps deciding.
    let (code, _, err) = daemon::cli(&["plugin", "load", "--vip", VIP, &plugin("hostile-bad-abi-version"), "--socket", &socket]);
    assert_eq!(code, Some(1));
    assert!(err.contains("plugin abi version 3, this host speaks 1 to 2"), "{err}");
    let (code, _, err) = daemon::cli(&["plugin", "load", "--vip", "198.18.100.1:81/tcp", &plugin("round-robin"), "--socket", &socket]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no vip 198.18.100.1:81/tcp"), "{err}");
    let (status, _) = in_netns(&lab.client.ns, || http_get(SocketAddr::new(IpAddr::V4(VIP4), 80), "/", T)).expect("netns").expect("after a refused load");
    assert_eq!(status, 200);
    daemon::stop(d).expect("stop");
}
