//! Scheduling algorithms through the daemon on the lab, with real traffic:
//! each plugin does what its name promises. Root only.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use fulcrum_tests::daemon::{self, LabMode};
use fulcrum_tests::{Lab, VIP4, http_answers, require_root};

const SERVER: &str = env!("CARGO_BIN_EXE_lab-server");

fn plugin(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugins").join(format!("{name}.wasm"));
    assert!(path.is_file(), "{} is missing: run scripts/build-plugins.sh", path.display());
    path.to_string_lossy().into_owned()
}

/// `n` requests from the client, each on a new connection: how many each
/// backend (by the name it answers with) served. Every one must succeed.
fn shares(lab: &Lab, n: usize) -> HashMap<String, usize> {
    let (by_name, failed) = http_answers(&lab.client.ns, SocketAddr::new(IpAddr::V4(VIP4), 80), n, Duration::from_secs(3)).expect("netns");
    assert_eq!(failed, 0, "requests failed: {by_name:?}");
    by_name
}

#[test]
fn fastest_response_time_sends_new_flows_to_the_fast_backends() {
    require_root();
    let mode = LabMode::Dsr;
    let mut lab = Lab::new(mode.topology()).expect("lab");
    let _decap = daemon::prepare(&mut lab, mode, SERVER.as_ref()).expect("backend set-up");
    // backend1 answers every request 50 ms late, its health checks too. It
    // is the first row: without response times, ties go to it.
    lab.restart_server_with(0, &["--delay-ms", "50"]).expect("a slow backend1");
    let extra = format!(
        "scheduler = \"{}\"\n[vip.health]\nkind = \"http-status\"\nport = 80\ninterval = \"200ms\"\ntimeout = \"150ms\"\nrise = 1\nfall = 3\n",
        plugin("fastest-response-time")
    );
    let (d, _config) =
        daemon::start(&lab, &daemon::config_with(&lab, mode, |vip, proto| if vip.is_ipv4() && proto == "tcp" { extra.clone() } else { String::new() }))
            .expect("daemon");
    // A few checks of each backend first.
    std::thread::sleep(Duration::from_secs(2));
    let by_name = shares(&lab, 60);
    let summary = daemon::stop(d).expect("daemon stop");
    let slow = by_name.get(&lab.backends[0].name).copied().unwrap_or(0);
    assert!(slow <= 12, "the slow backend got {slow} of 60 new connections (at most 20 %): {by_name:?}\n{summary}");
}
