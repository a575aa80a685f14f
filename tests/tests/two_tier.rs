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
/// How long a client waits for a request when a node is lost: two SYN
/// retransmissions (after 1 s and 3 s) and the answer.
const LATE: Duration = Duration::from_secs(6);

/// `GET path` through the VIP from the client, with `headers`.
fn get(lab: &Lab, path: &str, headers: &[&str]) -> std::io::Result<HttpResponse> {
    get_within(lab, path, headers, T)
}

/// `get`, waiting up to `timeout` to connect and for each read.
fn get_within(lab: &Lab, path: &str, headers: &[&str], timeout: Duration) -> std::io::Result<HttpResponse> {
    in_netns(&lab.client.ns, || http_request(SocketAddr::new(IpAddr::V4(VIP4), 80), path, headers, timeout)).expect("entering the client")
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
    let nft = Command::new("nft").args(["-c", "-f"]).arg(dir.join("haproxy-node.nft")).output().expect("running nft (package nftables)");
    assert!(nft.status.success(), "nft -c: {}{}", String::from_utf8_lossy(&nft.stdout), String::from_utf8_lossy(&nft.stderr));
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
    let rules = examples_dir().join("two-tier/haproxy-node.nft");
    let mut proxies = Vec::new();
    for b in &lab.backends[..2] {
        lab.exec(&b.ns, &["nft", "-f", &rules.to_string_lossy()]).expect("the HAProxy node's nftables rules");
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

    // Lose one HAProxy node: its HAProxy dies. Clients open a new
    // connection per request and never retry a request; their kernels
    // send a SYN again as any client's do (after 1 s, then 3 s). Until
    // fulcrum's check takes the node out (fall 2 x 500ms + 300ms timeout),
    // Maglev still gives it new connections, whose SYNs its rules drop
    // (haproxy-node.nft) instead of refusing; the SYN sent again after the
    // transition opens the flow afresh on the survivor. No request may
    // fail; those of the window are late.
    proxies.remove(0);
    let killed = Instant::now();
    let needle = format!("backend {} is down", lab.backends[0].iface().v4);
    let mut results: Vec<(Duration, Duration, bool)> = Vec::new();
    let mut down_at = None;
    while down_at.is_none_or(|t: Instant| t.elapsed() < SLACK) {
        let sent = Instant::now();
        let ok = get_within(&lab, "/static/x", &[], LATE).is_ok_and(|r| r.status == 200);
        results.push((sent.duration_since(killed), sent.elapsed(), ok));
        if down_at.is_none() && d.output().contains(&needle) {
            down_at = Some(Instant::now());
        }
        assert!(killed.elapsed() < Duration::from_secs(15), "fulcrum did not take the lost node down:\n{}", d.output());
    }
    let detected = down_at.map_or(Duration::ZERO, |t| t.duration_since(killed));
    // (begun after the loss, took, succeeded)
    let failed: Vec<Duration> = results.iter().filter(|&&(_, _, ok)| !ok).map(|&(begun, _, _)| begun).collect();
    let late: Vec<Duration> = results.iter().filter(|&&(_, took, ok)| ok && took > Duration::from_millis(500)).map(|&(_, took, _)| took).collect();
    println!("lost node: detected after {detected:?}; of {} requests {} failed, {} late (waited {late:?})", results.len(), failed.len(), late.len());
    assert!(detected <= Duration::from_millis(2 * 500 + 300) + SLACK, "detection took {detected:?}");
    assert!(failed.is_empty(), "requests failed, begun after the loss at {failed:?}; the node was down at {detected:?}");
    assert!(!late.is_empty(), "no request reached the lost node in the window: the test proved nothing");
    // From now on every new request succeeds, the cookie still pins.
    assert_eq!(answered(&lab, "/static/x", &[], 30), set(&["static1", "static2"]));
    assert_eq!(answered(&lab, "/api/users", &[&with_cookie], 20), set(&[&pinned]));
    daemon::stop(d).expect("stopping fulcrum");
}
