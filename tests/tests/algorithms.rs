//! Scheduling algorithms through the daemon on the lab, with real traffic:
//! each plugin does what its name promises. Root only.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use fulcrum::control::api::{Request, Response, StatsReport, VipStats};
use fulcrum_tests::daemon::{self, LabMode};
use fulcrum_tests::{Lab, VIP4, http_answers, in_netns, require_root};

const SERVER: &str = env!("CARGO_BIN_EXE_lab-server");

fn plugin(name: &str) -> String {
    daemon::plugin_module(name).to_string_lossy().into_owned()
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

/// The other algorithms share one lab and one daemon: a VIP (a port of
/// VIP4) per algorithm, dsr unless return traffic matters.
const RR: u16 = 80;
const WRR: u16 = 81;
const LEAST_CONN: u16 = 82;
const SOURCE_IP: u16 = 83;
const FIVE_TUPLE: u16 = 84;
/// Full-NAT: byte rates count both directions only where replies pass.
const BANDWIDTH: u16 = 85;
const LATENCY_HEALTH: u16 = 86;
const LEAST_PENDING: u16 = 87;
const UDP: u16 = 7;

/// A VIP4 `[[vip]]` on `port` over the lab's backends with `weights`;
/// `extra` before the backends.
fn vip(lab: &Lab, proto: &str, port: u16, mode: &str, extra: &str, weights: [u32; 3]) -> String {
    let mut c = format!("[[vip]]\naddress = \"{VIP4}\"\nprotocol = \"{proto}\"\nport = {port}\nmode = \"{mode}\"\n{extra}\n");
    for (b, w) in lab.backends.iter().zip(weights) {
        let port = if mode == "full-nat" { "port = 80\n" } else { "" };
        c += &format!("[[vip.backend]]\naddress = \"{}\"\nweight = {w}\n{port}\n", b.iface().v4);
    }
    c
}

fn config(lab: &Lab, socket: &str, least_conn_weights: [u32; 3]) -> String {
    let sched = |name: &str| format!("scheduler = \"{}\"", plugin(name));
    let health = format!(
        "[vip.health]\nkind = \"http-status\"\nport = {LATENCY_HEALTH}\ninterval = \"200ms\"\ntimeout = \"150ms\"\npolicy = \"{}\"\n",
        plugin("latency-health")
    );
    format!("[daemon]\ncontrol_socket = \"{socket}\"\nxdp_mode = \"auto\"\n\n{}\n", daemon::interfaces(lab))
        + &vip(lab, "tcp", RR, "dsr", &sched("round-robin"), [1, 1, 1])
        + &vip(lab, "tcp", WRR, "dsr", &sched("weighted-round-robin"), [1, 2, 3])
        + &vip(lab, "tcp", LEAST_CONN, "dsr", &sched("least-connections"), least_conn_weights)
        + &vip(lab, "tcp", SOURCE_IP, "dsr", &sched("source-ip-hash"), [1, 1, 1])
        + &vip(lab, "tcp", FIVE_TUPLE, "dsr", &sched("five-tuple-hash"), [1, 1, 1])
        + &vip(lab, "tcp", BANDWIDTH, "full-nat", &format!("snat = \"{}\"\n{}", daemon::SNAT4, sched("bandwidth")), [1, 1, 1])
        + &vip(lab, "udp", UDP, "dsr", &sched("least-connections"), [1, 1, 1])
        + &vip(lab, "tcp", LEAST_PENDING, "dsr", &sched("least-pending"), [1, 1, 1])
        + &vip(lab, "tcp", LATENCY_HEALTH, "dsr", &health, [2, 2, 2])
}

fn to(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(VIP4), port)
}

/// Requests on new connections to `port`: answers per backend (by name).
fn shares_of(lab: &Lab, port: u16, n: usize) -> HashMap<String, usize> {
    let (by_name, failed) = http_answers(&lab.client.ns, to(port), n, Duration::from_secs(3)).expect("netns");
    assert_eq!(failed, 0, "port {port}: requests failed: {by_name:?}");
    by_name
}

fn share(by_name: &HashMap<String, usize>, lab: &Lab, i: usize) -> usize {
    by_name.get(&lab.backends[i].name).copied().unwrap_or(0)
}

fn stats(socket: &std::path::Path) -> StatsReport {
    match daemon::ask(socket, Request::Stats) {
        Response::Stats(s) => s,
        other => panic!("stats: {other:?}"),
    }
}

fn vip_stats<'a>(s: &'a StatsReport, port: u16, proto: &str) -> &'a VipStats {
    let name = format!("{VIP4}:{port}/{proto}");
    s.vips.iter().find(|v| v.name == name).unwrap_or_else(|| panic!("no {name}"))
}

#[test]
fn every_algorithm_does_what_its_name_says_through_the_daemon() {
    require_root();
    let mut lab = Lab::new(LabMode::Dsr.topology()).expect("lab");
    let _hosts = daemon::prepare_hosts(&mut lab, LabMode::Dsr).expect("dsr backends");
    let _snat = daemon::prepare_hosts(&mut lab, LabMode::FullNat).expect("SNAT address");
    let ports: Vec<String> = [WRR, LEAST_CONN, SOURCE_IP, FIVE_TUPLE, BANDWIDTH, LATENCY_HEALTH, LEAST_PENDING].iter().map(u16::to_string).collect();
    let extra: Vec<&str> = ports.iter().flat_map(|p| ["--http", p.as_str()]).collect();
    daemon::start_servers(&mut lab, SERVER.as_ref(), true, &extra).expect("servers");
    let control = daemon::control_socket();
    let text = config(&lab, &control, [1, 0, 0]);
    let (d, file) = daemon::start(&lab, &text).expect("daemon");
    let socket = daemon::socket_of(&text);

    // Round-robin and weighted round-robin: the configured shares.
    let rr = shares_of(&lab, RR, 600);
    let wrr = shares_of(&lab, WRR, 600);
    for (i, (want_rr, want_wrr)) in [(200, 100), (200, 200), (200, 300)].into_iter().enumerate() {
        assert!(share(&rr, &lab, i).abs_diff(want_rr) <= want_rr / 20, "round-robin: {rr:?}");
        assert!(share(&wrr, &lab, i).abs_diff(want_wrr) <= want_wrr / 20, "weighted round-robin 1:2:3: {wrr:?}");
    }

    // Least connections: 30 connections held open on backend1 (the others
    // drained meanwhile), then all weights 1: new connections avoid it
    // while they last, and find it again once they close.
    let held: Vec<TcpStream> =
        in_netns(&lab.client.ns, || (0..30).map(|_| TcpStream::connect_timeout(&to(LEAST_CONN), Duration::from_secs(3)).expect("held")).collect())
            .expect("netns");
    file.write(&config(&lab, &control, [1, 1, 1]));
    let (code, out, err) = daemon::cli(&["reload", "--socket", socket.to_str().unwrap_or_default()]);
    assert_eq!(code, Some(0), "reload: {out}{err}");
    let held_on = vip_stats(&stats(&socket), LEAST_CONN, "tcp").backends.iter().map(|b| b.active).collect::<Vec<_>>();
    assert_eq!(held_on, [30, 0, 0], "the held connections are backend1's");
    let while_held = shares_of(&lab, LEAST_CONN, 30);
    assert_eq!(share(&while_held, &lab, 0), 0, "least-connections sent new flows to the busy backend: {while_held:?}");
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    let after = shares_of(&lab, LEAST_CONN, 30);
    assert!(share(&after, &lab, 0) >= 20, "once they closed, backend1 is the least loaded again: {after:?}");

    // Source-IP hash: each client keeps its backend, the one the plugin's
    // own code names for its address.
    use fulcrum_plugin_sdk::{Backend as Row, Backends, Flow};
    // (Weights alone decide its pick: the rows' ids do not matter.)
    let rows: Vec<Row> = (0..3).map(|i| Row::new(i, 1)).collect();
    let dev = lab.client.iface().name.clone();
    let mut placed = [0usize; 3];
    for c in 120..150u8 {
        let addr = format!("198.18.0.{c}");
        lab.exec(&lab.client.ns, &["ip", "addr", "add", &format!("{addr}/32"), "dev", &dev]).expect("a client address");
        let answers: Vec<String> = (0..3)
            .map(|_| {
                lab.exec(&lab.client.ns, &["curl", "-sS", "-m", "3", "--interface", &addr, &format!("http://{VIP4}:{SOURCE_IP}/")])
                    .expect("curl")
                    .trim()
                    .to_string()
            })
            .collect();
        let flow = Flow::v4([198, 18, 0, c], 0, VIP4.octets(), SOURCE_IP, 6, 0);
        let want = fulcrum_plugin_source_ip_hash::pick(&flow, &Backends::new(&rows)).index().expect("a backend");
        assert!(answers.iter().all(|a| *a == lab.backends[want].name), "client {addr}: {answers:?}, the plugin names {}", lab.backends[want].name);
        placed[want] += 1;
    }
    assert!(placed.iter().all(|&n| n > 0), "30 clients over three backends: {placed:?}");

    // Five-tuple hash: every new connection placed on its own; over 3,000
    // the spread is within 10 % of even.
    let five = shares_of(&lab, FIVE_TUPLE, 3000);
    assert!((0..3).all(|i| share(&five, &lab, i).abs_diff(1000) <= 100), "five-tuple hash: {five:?}");

    // UDP least connections: a UDP flow counts until it expires, so 90
    // flows spread 30 / 30 / 30.
    // All 90 sockets open at once: 90 source ports, 90 flows.
    let payload = b"least-connections";
    let answered = in_netns(&lab.client.ns, || {
        let sockets: Vec<UdpSocket> = (0..90).map(|_| UdpSocket::bind("0.0.0.0:0").expect("a UDP socket")).collect();
        sockets
            .iter()
            .filter(|s| {
                let mut buf = [0u8; 64];
                s.set_read_timeout(Some(Duration::from_secs(2))).is_ok()
                    && s.send_to(payload, to(UDP)).is_ok()
                    && s.recv_from(&mut buf).is_ok_and(|(n, _)| &buf[..n] == payload)
            })
            .count()
    })
    .expect("netns");
    assert_eq!(answered, 90, "UDP echoes");
    let udp: Vec<u64> = vip_stats(&stats(&socket), UDP, "udp").backends.iter().map(|b| b.traffic.new_flows).collect();
    assert_eq!(udp, [30, 30, 30], "UDP flows per backend");

    // Bandwidth: a download streaming from one backend; new flows go to
    // the other two.
    let download = std::thread::spawn({
        let ns = lab.client.ns.clone();
        move || in_netns(&ns, || slow_download(to(BANDWIDTH), Duration::from_secs(4))).expect("netns")
    });
    std::thread::sleep(Duration::from_millis(1500));
    let s = stats(&socket);
    let rates: Vec<u64> = vip_stats(&s, BANDWIDTH, "tcp").backends.iter().map(|b| b.bytes_per_sec).collect();
    let busy = (0..3).max_by_key(|&i| rates[i]).unwrap_or(0);
    assert!(rates[busy] > 1_000_000, "the download's backend carries over 1 MB/s: {rates:?}");
    let during = shares_of(&lab, BANDWIDTH, 30);
    assert_eq!(share(&during, &lab, busy), 0, "bandwidth sent new flows to the busy backend {busy}: {during:?}, rates {rates:?}");
    assert!(download.join().expect("download thread") > 4_000_000, "the download ran");

    // Least pending: backend1 accepts no connection for two seconds (its
    // SYNs dropped, as by a full queue), so the first flow it got stays
    // half-open; 30 new connections meanwhile go to the two others, and
    // every one succeeds (backend1's once it accepts again).
    for rule in [
        &["add", "table", "inet", "slow"][..],
        &["add", "chain", "inet", "slow", "input", "{ type filter hook input priority 0; }"],
        &["add", "rule", "inet", "slow", "input", "tcp", "dport", "87", "tcp", "flags", "syn", "drop"],
    ] {
        let cmd: Vec<&str> = std::iter::once("nft").chain(rule.iter().copied()).collect();
        lab.exec(&lab.backends[0].ns, &cmd).expect("nft");
    }
    let before: Vec<u64> = vip_stats(&stats(&socket), LEAST_PENDING, "tcp").backends.iter().map(|b| b.traffic.new_flows).collect();
    let connections = std::thread::scope(|s| {
        let tries: Vec<_> = (0..30)
            .map(|i| {
                let ns = lab.client.ns.clone();
                s.spawn(move || {
                    std::thread::sleep(Duration::from_millis(40 * i));
                    in_netns(&ns, || fulcrum_tests::http_get(to(LEAST_PENDING), "/", Duration::from_secs(6)).map(|(code, _)| code)).expect("netns")
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs(2));
        lab.exec(&lab.backends[0].ns, &["nft", "delete", "table", "inet", "slow"]).expect("nft");
        tries.into_iter().map(|t| t.join().expect("a client")).collect::<Vec<_>>()
    });
    assert!(connections.iter().all(|c| matches!(c, Ok(200))), "{connections:?}");
    let after: Vec<u64> = vip_stats(&stats(&socket), LEAST_PENDING, "tcp").backends.iter().map(|b| b.traffic.new_flows).collect();
    let placed: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert!(placed[0] <= 2, "least-pending kept sending new flows to the backend not accepting: {placed:?}");

    // Latency-based health policy: backend1 answers 60 ms late, so its
    // weight in force halves; the daemon shows it.
    lab.restart_server_with(0, &["--delay-ms", "60"]).expect("a slow backend1");
    std::thread::sleep(Duration::from_secs(2));
    let weights: Vec<u32> = vip_stats(&stats(&socket), LATENCY_HEALTH, "tcp").backends.iter().map(|b| b.weight).collect();
    let summary = daemon::stop(d).expect("daemon stop");
    assert_eq!(weights, [1, 2, 2], "weights in force under latency-health\n{summary}");
}

/// Reads `GET /bytes/N` at about 5 MB/s for `run`; the bytes read.
fn slow_download(to: SocketAddr, run: Duration) -> usize {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3)).expect("download connection");
    s.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    write!(s, "GET /bytes/1000000000 HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
    let (mut buf, mut total, start) = (vec![0u8; 50_000], 0, Instant::now());
    while start.elapsed() < run {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    total
}
