//! L7 switching by composition (config/examples/two-tier): fulcrum in dsr
//! mode in front of two real HAProxy nodes running the shipped haproxy.cfg
//! unchanged, and an app tier (nginx, one site per address, each answering
//! its name). URL switching, cookie persistence across HAProxy nodes, and
//! the loss of one HAProxy node. Root only.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use fulcrum::control::api::{Request, Response};
use fulcrum_tests::daemon::{self, LabMode, examples_dir};
use fulcrum_tests::servers::{self, TempDir};
use fulcrum_tests::{HttpResponse, Lab, VIP4, http_request, in_netns, require_root};

const T: Duration = Duration::from_secs(2);
/// The app tier's sites, at the addresses haproxy.cfg names.
const APPS: [(&str, &str); 4] = [("static1", "198.18.0.21"), ("static2", "198.18.0.22"), ("api1", "198.18.0.23"), ("api2", "198.18.0.24")];
/// Between a transition and the test seeing its line, on a shared VM.
const SLACK: Duration = Duration::from_millis(500);

/// `GET path` through the VIP from the client, with `headers`.
fn get(lab: &Lab, path: &str, headers: &[&str]) -> std::io::Result<HttpResponse> {
    in_netns(&lab.client.ns, || http_request(SocketAddr::new(IpAddr::V4(VIP4), 80), path, headers, T)).expect("entering the client")
}

/// The app servers that answered `n` requests for `path` (each must
/// succeed).
fn answered(lab: &Lab, path: &str, headers: &[&str], n: usize) -> BTreeSet<String> {
    (0..n)
        .map(|i| {
            let r = get(lab, path, headers).unwrap_or_else(|e| panic!("request {i} for {path}: {e}"));
            assert_eq!(r.status, 200, "request {i} for {path}: {r:?}");
            String::from_utf8_lossy(&r.body).trim().to_string()
        })
        .collect()
}

/// New flows fulcrum sent to each HAProxy node (backends 1 and 2) so far.
fn node_flows(lab: &Lab, socket: &Path) -> Vec<u64> {
    let Response::Stats(stats) = daemon::ask(socket, Request::Stats) else { panic!("no stats from fulcrum") };
    let backends: Vec<_> = stats.vips.iter().flat_map(|v| &v.backends).collect();
    lab.backends[..2]
        .iter()
        .map(|b| {
            let addr = b.iface().v4.to_string();
            backends.iter().find(|s| s.name.split(':').next() == Some(addr.as_str())).map_or(0, |s| s.traffic.new_flows)
        })
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[test]
fn shipped_two_tier_configs_are_valid() {
    let dir = examples_dir().join("two-tier");
    let haproxy = Command::new("haproxy").args(["-c", "-f"]).arg(dir.join("haproxy.cfg")).output().expect("running haproxy (package haproxy)");
    assert!(haproxy.status.success(), "haproxy -c: {}{}", String::from_utf8_lossy(&haproxy.stdout), String::from_utf8_lossy(&haproxy.stderr));
    let (code, out, err) = daemon::cli(&["check-config", &dir.join("fulcrum.toml").to_string_lossy()]);
    assert_eq!(code, Some(0), "fulcrum check-config: {out}{err}");
}

#[test]
fn haproxy_behind_fulcrum_switches_by_url_and_cookie_and_survives_a_lost_node() {
    require_root();
    let mut lab = Lab::new(LabMode::Dsr.topology()).expect("building the lab");
    // The VIP on every backend's loopback; backends 1 and 2 are the HAProxy
    // nodes, backend 3 the app tier.
    let _decap = daemon::prepare_hosts(&mut lab, LabMode::Dsr).expect("preparing the backends");
    let dir = TempDir::new("two-tier").expect("temp dir");
    let apps = lab.backends[2].clone();
    let mut sites = String::new();
    for (name, addr) in APPS {
        lab.exec(&apps.ns, &["ip", "addr", "add", &format!("{addr}/24"), "dev", &apps.iface().name]).expect("app address");
        sites += &format!("server {{ listen {addr}:80; location / {{ return 200 \"{name}\\n\"; }} }}\n");
    }
    let last = SocketAddr::new(APPS[3].1.parse().unwrap(), 80);
    let _nginx = servers::nginx(&lab, &apps.ns, &dir, &sites, last).expect("starting the app tier");
    let cfg = examples_dir().join("two-tier/haproxy.cfg");
    let mut proxies = Vec::new();
    for b in &lab.backends[..2] {
        let p = lab.spawn(&b.ns, &["haproxy", "-db", "-f", &cfg.to_string_lossy()]).expect("starting haproxy");
        servers::wait_listening(&b.ns, SocketAddr::new(IpAddr::V4(b.iface().v4), 8404), &p).expect("haproxy listening");
        proxies.push(p);
    }
    let example = std::fs::read_to_string(examples_dir().join("two-tier/fulcrum.toml")).expect("the example");
    let config = daemon::example_for_lab(&example.replace("\"198.18.0.100\"", &format!("\"{VIP4}\"")), &lab);
    let (d, _file) = daemon::start(&lab, &config).expect("starting fulcrum");

    // URL switching: each path lands on its own pool, both servers of it.
    assert_eq!(answered(&lab, "/static/logo.png", &[], 12), set(&["static1", "static2"]));
    assert_eq!(answered(&lab, "/api/users", &[], 12), set(&["api1", "api2"]));
    // The api pool sets the cookie; a client that sends it back stays on
    // that server, whichever HAProxy node its connection reaches (Maglev
    // spreads the client's connections over both).
    let first = get(&lab, "/api/users", &[]).expect("an api request");
    let cookie = first.header("set-cookie").unwrap_or_else(|| panic!("no Set-Cookie from the api pool: {first:?}")).to_string();
    let pinned = String::from_utf8_lossy(&first.body).trim().to_string();
    assert!(cookie.starts_with(&format!("SERVERID={pinned}")), "{cookie} for {pinned}");
    let with_cookie = format!("Cookie: SERVERID={pinned}");
    let socket = daemon::socket_of(&config);
    let before = node_flows(&lab, &socket);
    assert_eq!(answered(&lab, "/api/users", &[&with_cookie], 20), set(&[&pinned]));
    let after = node_flows(&lab, &socket);
    assert!(before.iter().zip(&after).all(|(b, a)| a > b), "the pinned requests did not cross both HAProxy nodes: {before:?} -> {after:?}");

    // Lose one HAProxy node. Clients open a new connection per request and
    // never retry. Until fulcrum's check takes the node out (fall 2 x 500ms
    // + 300ms timeout), the new connections Maglev gives it are refused by
    // its kernel: those failures are counted and must all fall before the
    // transition is in force; none may come after it.
    proxies.remove(0);
    let killed = Instant::now();
    let needle = format!("backend {} is down", lab.backends[0].iface().v4);
    let mut results: Vec<(Instant, bool)> = Vec::new();
    let mut down_at = None;
    while down_at.is_none_or(|t: Instant| t.elapsed() < SLACK) {
        results.push((Instant::now(), get(&lab, "/static/x", &[]).is_ok_and(|r| r.status == 200)));
        if down_at.is_none() && d.output().contains(&needle) {
            down_at = Some(Instant::now());
        }
        assert!(killed.elapsed() < Duration::from_secs(10), "fulcrum did not take the lost node down:\n{}", d.output());
    }
    let detected = down_at.map_or(Duration::ZERO, |t| t.duration_since(killed));
    let failed: Vec<Duration> = results.iter().filter(|(_, ok)| !ok).map(|(t, _)| t.duration_since(killed)).collect();
    println!("lost node: detected after {detected:?}; {} of {} requests failed before that, the last at {:?}", failed.len(), results.len(), failed.last());
    assert!(detected <= Duration::from_millis(2 * 500 + 300) + SLACK, "detection took {detected:?}");
    assert!(failed.iter().all(|&t| t <= detected), "requests failed after the node was down: {failed:?}, detected at {detected:?}");
    // From now on every new request succeeds, the cookie still pins.
    assert_eq!(answered(&lab, "/static/x", &[], 30), set(&["static1", "static2"]));
    assert_eq!(answered(&lab, "/api/users", &[&with_cookie], 20), set(&[&pinned]));
    daemon::stop(d).expect("stopping fulcrum");
}
