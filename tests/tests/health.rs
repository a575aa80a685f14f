//! Health checks, failover, session persistence and drain, through the
//! `fulcrum` daemon on the namespace lab. The daemon logs one
//! line per health transition once it is in force on every worker; the
//! tests wait for those lines. Root only.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use fulcrum::control::api::{BackendStats, Request, Response, StatsReport};
use fulcrum_dataplane::wire::IpProtocol;
use fulcrum_tests::daemon::{self, LabMode};
use fulcrum_tests::{Lab, Proc, VIP4, VIP6, http_get, in_netns, require_root};

const SERVER: &str = env!("CARGO_BIN_EXE_lab-server");
const T: Duration = Duration::from_secs(3);
const INTERVAL_MS: u64 = 300;
const TIMEOUT_MS: u64 = 200;
const RISE: u64 = 2;
const FALL: u64 = 3;
/// Between a transition and the test seeing its line: the control loop,
/// the workers taking the new services, the pipe. Generous on a shared VM.
const SLACK: Duration = Duration::from_millis(250);
/// How long a transition may take at most, with slack.
const DETECT: Duration = Duration::from_millis(FALL * INTERVAL_MS + TIMEOUT_MS);
const REJOIN: Duration = Duration::from_millis(RISE * INTERVAL_MS + TIMEOUT_MS);

/// A `[vip.health]` table with the tests' timing.
fn health(kind: &str, more: &str) -> String {
    format!("\n[vip.health]\nkind = \"{kind}\"\ninterval = \"{INTERVAL_MS}ms\"\ntimeout = \"{TIMEOUT_MS}ms\"\nrise = {RISE}\nfall = {FALL}\n{more}")
}

/// The VIP's name in the daemon's output.
/// The name `fulcrum status` gives the lab's TCP VIP on port 80.
fn vip_name(vip: IpAddr) -> String {
    fulcrum_dataplane::services::vip_name(vip, IpProtocol::TCP, 80)
}

/// Backend `i`'s address in `vip`'s family.
fn addr(lab: &Lab, i: usize, vip: IpAddr) -> IpAddr {
    let ifc = lab.backends[i].iface();
    if vip.is_ipv4() { IpAddr::V4(ifc.v4) } else { IpAddr::V6(ifc.v6) }
}

/// Waits for the `n`-th "is `state`" line of backend `i` of `vip`; how
/// long that took. Panics with the daemon's output if it does not come.
fn wait_health(d: &Proc, lab: &Lab, vip: IpAddr, i: usize, state: &str, n: usize, timeout: Duration) -> (Duration, String) {
    wait_health_of(d, &vip_name(vip), addr(lab, i, vip), state, n, timeout)
}

/// `wait_health` for the VIP named `vip` as the daemon names it.
fn wait_health_of(d: &Proc, vip: &str, backend: IpAddr, state: &str, n: usize, timeout: Duration) -> (Duration, String) {
    let t0 = Instant::now();
    let needle = format!("health: vip {vip} backend {backend} is {state}");
    let line = d.wait_for_nth_line(|l| l.contains(&needle), n, timeout).unwrap_or_else(|| panic!("no `{needle}` (#{n}) within {timeout:?}:\n{}", d.output()));
    (t0.elapsed(), line)
}

/// The backends (by the name they answer with) of `n` new connections
/// to `vip` from the client; every one must succeed.
fn answers(lab: &Lab, vip: IpAddr, n: usize) -> Vec<String> {
    in_netns(&lab.client.ns, || {
        (0..n)
            .map(|i| {
                let (status, body) = http_get(SocketAddr::new(vip, 80), "/", T).unwrap_or_else(|e| panic!("connection {i} to {vip}: {e}"));
                assert_eq!(status, 200, "connection {i} to {vip}");
                String::from_utf8_lossy(&body).trim().to_string()
            })
            .collect()
    })
    .expect("entering the client namespace")
}

/// The summary line of backend `addr` under `vip` (TCP port 80). The
/// daemon's log lines go to another stream and may land between the
/// summary's lines: the VIP's backends run to the next VIP's line.
fn backend_line(summary: &str, vip: IpAddr, addr: IpAddr) -> String {
    let head = format!("vip {}:", vip_name(vip));
    let mut lines = summary.lines().skip_while(|l| !l.starts_with(&head)).skip(1);
    let line = lines.by_ref().take_while(|l| !l.starts_with("vip ")).find(|l| l.starts_with(&format!("  backend {addr}:")));
    line.unwrap_or_else(|| panic!("no backend {addr} under {head}\n{summary}")).to_string()
}

/// Health files of the lab servers (`--health-dir`), removed when dropped.
struct HealthDir(PathBuf);

impl HealthDir {
    fn new() -> HealthDir {
        let dir = std::env::temp_dir().join(format!("fulcrum-health-{}-{:?}", std::process::id(), std::thread::current().id()));
        std::fs::create_dir_all(&dir).expect("health dir");
        HealthDir(dir)
    }

    fn arg(&self) -> &str {
        self.0.to_str().expect("UTF-8 temp dir")
    }

    /// What backend `name` answers on /health; `None`: 503.
    fn set(&self, name: &str, body: Option<&str>) {
        let file = self.0.join(name);
        match body {
            Some(b) => std::fs::write(&file, b).expect("health file"),
            None => std::fs::remove_file(&file).expect("health file"),
        }
    }
}

impl Drop for HealthDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A full-NAT one-arm lab with the lab servers running (with `--health-dir`
/// when given) and the daemon running `config`'s extra TOML per TCP VIP.
fn full_nat(dir: Option<&HealthDir>, tcp_extra: impl Fn(IpAddr) -> String) -> (Lab, Proc, daemon::TempConfig) {
    require_root();
    let mut lab = Lab::new(LabMode::FullNat.topology()).expect("lab");
    let extra: Vec<&str> = dir.map_or(vec![], |d| vec!["--health-dir", d.arg()]);
    let _ = daemon::prepare_hosts(&mut lab, LabMode::FullNat).expect("backend set-up");
    daemon::start_servers(&mut lab, SERVER.as_ref(), false, &extra).expect("lab servers");
    let config = daemon::config_with(&lab, LabMode::FullNat, |vip, proto| if proto == "tcp" { tcp_extra(vip) } else { String::new() });
    let (d, file) = daemon::start(&lab, &config).expect("daemon");
    (lab, d, file)
}

#[test]
fn a_dead_backend_goes_down_in_time_and_rejoins_after_rise_checks() {
    let (mut lab, d, _config) = full_nat(None, |_| health("tcp-connect", ""));
    let vips = [IpAddr::V4(VIP4), IpAddr::V6(VIP6)];
    lab.stop_server(2);
    for vip in vips {
        let (took, line) = wait_health(&d, &lab, vip, 2, "down", 1, DETECT + SLACK);
        // Both families were checked at once: the time since the stop holds.
        assert!(took <= DETECT + SLACK, "{took:?}: {line}");
        assert!(line.contains(&format!("after {FALL} failed checks")) && line.contains("refused"), "{line}");
    }
    for vip in vips {
        let served = answers(&lab, vip, 200);
        assert!(!served.iter().any(|b| b == "backend3"), "{vip}: backend3 served while down");
        assert!(served.iter().any(|b| b == "backend1") && served.iter().any(|b| b == "backend2"));
    }
    lab.start_server(2).expect("restart backend3");
    for vip in vips {
        let (took, line) = wait_health(&d, &lab, vip, 2, "up", 1, REJOIN + SLACK);
        assert!(took <= REJOIN + SLACK, "{took:?}: {line}");
        assert!(line.contains(&format!("after {RISE} passed checks")), "{line}");
    }
    for vip in vips {
        assert!(answers(&lab, vip, 60).iter().any(|b| b == "backend3"), "{vip}: backend3 did not rejoin");
    }
    let summary = daemon::stop(d).expect("daemon stop");
    for vip in vips {
        let line = backend_line(&summary, vip, addr(&lab, 2, vip));
        assert!(line.contains("state=up") && line.contains("went_down=1") && line.contains("went_up=1"), "{line}");
        let other = backend_line(&summary, vip, addr(&lab, 0, vip));
        assert!(other.contains("went_down=0") && other.contains("checks_failed=0"), "{other}");
    }
}

/// HTTP checks judge the answer, not the port: the IPv4 VIP checks for a
/// string in the body of /health, the IPv6 one for a 2xx status only.
#[test]
fn http_checks_fail_on_a_wrong_answer_while_the_port_stays_open() {
    let dir = HealthDir::new();
    for b in ["backend1", "backend2", "backend3"] {
        dir.set(b, Some("all ok\n"));
    }
    let (lab, d, _config) = full_nat(Some(&dir), |vip| match vip {
        IpAddr::V4(_) => health("http-content", "path = \"/health\"\nexpect_content = \"ok\""),
        IpAddr::V6(_) => health("http-status", "path = \"/health\"\nexpect_status = \"200-299\""),
    });
    let (v4, v6) = (IpAddr::V4(VIP4), IpAddr::V6(VIP6));
    // 200 with the wrong body: only the content check fails.
    dir.set("backend2", Some("maintenance\n"));
    let (_, line) = wait_health(&d, &lab, v4, 1, "down", 1, DETECT + SLACK);
    assert!(line.contains("expected content missing"), "{line}");
    // The port is open: the backend itself answers.
    let direct = in_netns(&lab.client.ns, || http_get(SocketAddr::new(addr(&lab, 1, v4), 80), "/", T)).expect("netns").expect("backend2 answers directly");
    assert_eq!(direct, (200, b"backend2\n".to_vec()));
    assert!(!answers(&lab, v4, 100).iter().any(|b| b == "backend2"));
    // The status check saw 200 all along.
    assert!(answers(&lab, v6, 100).iter().any(|b| b == "backend2"));
    // A 503 fails both.
    dir.set("backend2", None);
    let (_, line) = wait_health(&d, &lab, v6, 1, "down", 1, DETECT + SLACK);
    assert!(line.contains("HTTP status 503"), "{line}");
    dir.set("backend2", Some("ok again\n"));
    for vip in [v4, v6] {
        wait_health(&d, &lab, vip, 1, "up", 1, REJOIN + SLACK);
        assert!(answers(&lab, vip, 60).iter().any(|b| b == "backend2"), "{vip}: backend2 did not rejoin");
    }
    daemon::stop(d).expect("daemon stop");
}

/// TCP segments of a namespace's kernel: SYN and SYN-ACK retransmissions
/// (`TcpExt: TCPSynRetrans`), from /proc/net/netstat.
fn syn_retransmits(lab: &Lab, ns: &str) -> u64 {
    let netstat = lab.exec(ns, &["cat", "/proc/net/netstat"]).expect("netstat");
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap_or_default(), lines.next().unwrap_or_default());
    let at = names.split_whitespace().position(|n| n == "TCPSynRetrans").expect("TCPSynRetrans in /proc/net/netstat");
    values.split_whitespace().nth(at).and_then(|v| v.parse().ok()).expect("a count")
}

#[test]
fn half_open_checks_find_listening_ports_and_leave_nothing_behind() {
    let (mut lab, d, _config) = full_nat(None, |_| health("tcp-half-open", ""));
    let vips = [IpAddr::V4(VIP4), IpAddr::V6(VIP6)];
    let retrans: Vec<u64> = lab.backends.iter().map(|b| syn_retransmits(&lab, &b.ns)).collect();
    lab.stop_server(2);
    for vip in vips {
        let (_, line) = wait_health(&d, &lab, vip, 2, "down", 1, DETECT + SLACK);
        assert!(line.contains("refused"), "{line}");
    }
    lab.start_server(2).expect("restart backend3");
    for vip in vips {
        wait_health(&d, &lab, vip, 2, "up", 1, REJOIN + SLACK);
    }
    // Over a few more rounds, nothing is left half open on the backends:
    // each SYN-ACK got its RST, so none was retransmitted, and no
    // connection ever became established.
    std::thread::sleep(Duration::from_millis(3 * INTERVAL_MS));
    for (b, before) in lab.backends.iter().zip(retrans) {
        let syn_recv = lab.exec(&b.ns, &["ss", "-Htn", "state", "syn-recv"]).expect("ss");
        assert_eq!(syn_recv.trim(), "", "{}: half-open connections left", b.name);
        let established = lab.exec(&b.ns, &["ss", "-Htn", "state", "established"]).expect("ss");
        assert_eq!(established.trim(), "", "{}: connections established", b.name);
        assert_eq!(syn_retransmits(&lab, &b.ns), before, "{}: SYN-ACKs were retransmitted", b.name);
    }
    // The kernel's own RSTs were generated and kept back by the rule.
    let table = lab.exec(&lab.balancer.ns, &["nft", "list", "table", "inet", "fulcrum_health"]).expect("the RST rule while running");
    let dropped: u64 = table.split("counter packets ").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse().ok()).expect("a counter");
    assert!(dropped > 0, "{table}");
    daemon::stop(d).expect("daemon stop");
    assert!(lab.exec(&lab.balancer.ns, &["nft", "list", "table", "inet", "fulcrum_health"]).is_err(), "the rule outlived the daemon");
}

#[test]
fn icmp_checks_follow_echo_replies() {
    let (lab, d, _config) = full_nat(None, |_| health("icmp", ""));
    let ns = &lab.backends[0].ns;
    let ignore = |on: &str| {
        for key in ["net.ipv4.icmp_echo_ignore_all", "net.ipv6.icmp.echo_ignore_all"] {
            lab.exec(ns, &["sysctl", "-q", "-w", &format!("{key}={on}")]).expect("sysctl");
        }
    };
    ignore("1");
    for vip in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)] {
        let (_, line) = wait_health(&d, &lab, vip, 0, "down", 1, DETECT + SLACK);
        assert!(line.contains("timed out"), "{line}");
    }
    ignore("0");
    for vip in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)] {
        wait_health(&d, &lab, vip, 0, "up", 1, REJOIN + SLACK);
    }
    daemon::stop(d).expect("daemon stop");
}

/// An idle connection opened before every backend failed its content
/// check (the servers stay up): on the IPv4 VIP (`on_down = "reset"`)
/// its next request is answered with a RST; on the IPv6 one (`keep`) it
/// is served as before.
#[test]
fn on_down_reset_resets_established_flows_and_keep_keeps_them() {
    let dir = HealthDir::new();
    for b in ["backend1", "backend2", "backend3"] {
        dir.set(b, Some("ok"));
    }
    let (lab, d, _config) = full_nat(Some(&dir), |vip| {
        let on_down = if vip.is_ipv4() { "reset" } else { "keep" };
        health("http-content", &format!("path = \"/health\"\nexpect_content = \"ok\"\non_down = \"{on_down}\""))
    });
    let (v4, v6) = (IpAddr::V4(VIP4), IpAddr::V6(VIP6));
    let request = |s: &mut std::net::TcpStream| -> std::io::Result<Vec<u8>> {
        use std::io::{Read, Write};
        s.write_all(b"GET / HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n")?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp)?;
        Ok(resp)
    };
    in_netns(&lab.client.ns, || {
        let open = |vip| {
            let s = std::net::TcpStream::connect_timeout(&SocketAddr::new(vip, 80), T).expect("connect");
            s.set_read_timeout(Some(T)).expect("timeout");
            s
        };
        let (mut reset, mut kept) = (open(v4), open(v6));
        for b in ["backend1", "backend2", "backend3"] {
            dir.set(b, Some("failing"));
        }
        for vip in [v4, v6] {
            for i in 0..3 {
                wait_health(&d, &lab, vip, i, "down", 1, DETECT + SLACK);
            }
        }
        let err = request(&mut reset).expect_err("a reset connection");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
        let resp = request(&mut kept).expect("a kept connection is served");
        assert!(resp.starts_with(b"HTTP/1.1 200 OK"), "{}", String::from_utf8_lossy(&resp));
    })
    .expect("netns");
    let summary = daemon::stop(d).expect("daemon stop");
    assert!(summary.lines().any(|l| l.starts_with(&format!("vip {}: ", vip_name(v4))) && l.contains("resets=1")), "{summary}");
}

/// Drain by reload: backend 3 of the IPv4 VIP goes to weight 0 while 30
/// idle connections are open (some on it). New connections avoid it; the
/// open ones, on it too, are still served; stats and the summary show it
/// draining, still checked and up.
#[test]
fn weight_zero_drains_new_flows_and_established_ones_continue() {
    let (lab, d, file) = full_nat(None, |_| health("tcp-connect", ""));
    let text = std::fs::read_to_string(file.path()).expect("config");
    let socket = daemon::socket_of(&text);
    let (v4, v6) = (IpAddr::V4(VIP4), IpAddr::V6(VIP6));
    let drained = addr(&lab, 2, v4);
    let served = in_netns(&lab.client.ns, || {
        let mut open: Vec<std::net::TcpStream> = (0..30).map(|_| std::net::TcpStream::connect_timeout(&SocketAddr::new(v4, 80), T).expect("connect")).collect();
        // The IPv4 TCP VIP's backend 3 (the first occurrence) drains.
        file.write(&text.replacen(&format!("address = \"{drained}\"\n"), &format!("address = \"{drained}\"\nweight = 0\n"), 1));
        assert!(matches!(daemon::ask(&socket, Request::Reload), Response::Reloaded(_)), "reload refused:\n{}", d.output());
        assert!(!answers(&lab, v4, 200).iter().any(|b| b == "backend3"), "a drained backend got new flows");
        fulcrum_tests::ask_held(&mut open, T)
    })
    .expect("netns");
    assert!(served.iter().any(|b| b == "backend3"), "no open connection was on backend3: {served:?}");
    assert_eq!(stats_state(&socket, v4, drained), ("draining".to_string(), 0));
    assert!(answers(&lab, v6, 100).iter().any(|b| b == "backend3"), "the IPv6 VIP does not drain");
    // Still checked: the reload restarted its checks, which pass again
    // within an interval or two (the summary counts since the restart).
    let checked = || backend_stats(&socket, v4, drained).checks.is_some_and(|c| c.passed > 0);
    fulcrum_tests::ha::wait_until("a passing check of the drained backend", Duration::from_millis(10 * INTERVAL_MS), checked).unwrap_or_else(|e| panic!("{e}"));
    let summary = daemon::stop(d).expect("daemon stop");
    let line = backend_line(&summary, v4, drained);
    assert!(line.contains("state=draining") && line.contains("weight=0") && !line.contains("checks_passed=0"), "{line}");
    assert!(backend_line(&summary, v6, addr(&lab, 2, v6)).contains("state=up"), "{summary}");
}

/// Source-IP persistence on the inline topology, where the client's
/// connections spread over both workers: the client keeps one backend,
/// moves once when it fails, and stays on the new one after the old one
/// is back.
#[test]
fn a_sticky_client_moves_on_failure_and_sticks_where_it_moved() {
    require_root();
    let mut lab = Lab::new(LabMode::Nat.topology()).expect("lab");
    daemon::prepare(&mut lab, LabMode::Nat, SERVER.as_ref()).expect("backend set-up");
    let sticky = format!("persistence = {{ kind = \"source-ip\", timeout = \"60s\" }}\n{}", health("tcp-connect", ""));
    let config = daemon::config_with(&lab, LabMode::Nat, |_, proto| if proto == "tcp" { sticky.clone() } else { String::new() });
    let (d, _config) = daemon::start(&lab, &config).expect("daemon");
    let vip = IpAddr::V4(VIP4);
    let one = |names: Vec<String>| {
        assert!(names.iter().all(|n| *n == names[0]), "the client was spread: {names:?}");
        names[0].clone()
    };
    let first = one(answers(&lab, vip, 30));
    let i = lab.backends.iter().position(|b| b.name == first).expect("a lab backend");
    lab.stop_server(i);
    wait_health(&d, &lab, vip, i, "down", 1, DETECT + SLACK);
    let moved = one(answers(&lab, vip, 30));
    assert_ne!(moved, first);
    lab.start_server(i).expect("restart");
    wait_health(&d, &lab, vip, i, "up", 1, REJOIN + SLACK);
    assert_eq!(one(answers(&lab, vip, 30)), moved, "the client went back to {first}");
    let summary = daemon::stop(d).expect("daemon stop");
    assert!(summary.lines().any(|l| l.starts_with(&format!("vip {}: ", vip_name(vip))) && l.contains("moved_clients=1")), "{summary}");
    assert!(backend_line(&summary, vip, addr(&lab, i, vip)).contains("moved_clients=1"), "{summary}");
}

/// A backend's state in `fulcrum stats` (its JSON).
fn stats_state(socket: &std::path::Path, vip: IpAddr, backend: IpAddr) -> (String, u32) {
    let b = backend_stats(socket, vip, backend);
    (b.state, b.weight)
}

/// One backend of `vip` in `fulcrum stats`.
fn backend_stats(socket: &std::path::Path, vip: IpAddr, backend: IpAddr) -> BackendStats {
    let Response::Stats(StatsReport { vips, .. }) = daemon::ask(socket, Request::Stats) else { panic!("no stats") };
    let v = vips.into_iter().find(|v| v.name == vip_name(vip)).expect("the VIP");
    v.backends.into_iter().find(|b| b.name == backend.to_string()).expect("the backend")
}

/// A down backend stays down across a reload that restarts the checks (a
/// weight changed), shows so in stats and metrics, and comes back once its
/// server does.
#[test]
fn health_states_survive_a_reload_and_show_in_stats_and_metrics() {
    let (mut lab, d, file) = full_nat(None, |_| health("tcp-connect", ""));
    let text = std::fs::read_to_string(file.path()).expect("config");
    let socket = daemon::socket_of(&text);
    let v4 = IpAddr::V4(VIP4);
    let (dead, other) = (addr(&lab, 2, v4), addr(&lab, 0, v4));
    lab.stop_server(2);
    wait_health(&d, &lab, v4, 2, "down", 1, DETECT + SLACK);
    assert_eq!(stats_state(&socket, v4, dead), ("down".to_string(), 1));
    let metrics = daemon::scrape(&lab);
    let labels = [&*format!("vip=\"{}\"", vip_name(v4)), &*format!("backend=\"{dead}\"")];
    assert_eq!(daemon::metric(&metrics, "fulcrum_backend_up", &labels), 0.0, "{metrics}");
    assert_eq!(daemon::metric(&metrics, "fulcrum_health_transitions_total", &[labels[0], labels[1], "to=\"down\""]), 1.0, "{metrics}");
    assert!(daemon::metric(&metrics, "fulcrum_health_checks_total", &[labels[0], labels[1], "result=\"failed\""]) >= FALL as f64);

    let reweighted = text.replacen(&format!("address = \"{other}\"\n"), &format!("address = \"{other}\"\nweight = 2\n"), 1);
    file.write(&reweighted);
    assert!(matches!(daemon::ask(&socket, Request::Reload), Response::Reloaded(_)), "reload refused:\n{}", d.output());
    assert_eq!(stats_state(&socket, v4, dead), ("down".to_string(), 1));
    assert_eq!(stats_state(&socket, v4, other), ("up".to_string(), 2));
    assert!(!answers(&lab, v4, 100).iter().any(|b| b == "backend3"), "backend3 served after the reload");
    lab.start_server(2).expect("restart backend3");
    wait_health(&d, &lab, v4, 2, "up", 1, REJOIN + SLACK);
    assert_eq!(stats_state(&socket, v4, dead).0, "up");
    assert!(answers(&lab, v4, 60).iter().any(|b| b == "backend3"));
    daemon::stop(d).expect("daemon stop");
}

/// A health-policy plugin decides instead of the configured rise and fall:
/// latency-health (scripts/build-plugins.sh) takes a backend down after
/// its own 3 failed checks where the configuration says 1.
#[test]
fn a_health_policy_plugin_decides() {
    let plugin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins/latency-health.wasm");
    assert!(plugin.is_file(), "build the plugins first: scripts/build-plugins.sh");
    let table = format!(
        "\n[vip.health]\nkind = \"tcp-connect\"\ninterval = \"{INTERVAL_MS}ms\"\ntimeout = \"{TIMEOUT_MS}ms\"\nrise = 1\nfall = 1\npolicy = \"{}\"\n",
        plugin.display()
    );
    let (mut lab, d, _config) = full_nat(None, |_| table.clone());
    lab.stop_server(2);
    let v4 = IpAddr::V4(VIP4);
    let (_, line) = wait_health(&d, &lab, v4, 2, "down", 1, DETECT + SLACK);
    assert!(line.contains("after 3 failed checks"), "{line}");
    lab.start_server(2).expect("restart backend3");
    let (_, line) = wait_health(&d, &lab, v4, 2, "up", 1, REJOIN + SLACK);
    assert!(line.contains("after 2 passed checks"), "{line}");
    daemon::stop(d).expect("daemon stop");
}

/// How long the through-VIP tests wait for a transition: they test what
/// is detected, not how fast (the tests above do), so they leave room for
/// a loaded machine.
const THROUGH_VIP_DETECT: Duration = Duration::from_millis(2 * (FALL * INTERVAL_MS + TIMEOUT_MS));

/// A dsr or tunnel lab (backends own the VIP; tunnel ones decapsulate)
/// whose VIPs are checked through the VIP, TCP ones half-open and UDP ones
/// by ICMP echo; the daemon running; the decapsulators, by backend.
fn through_vip(mode: LabMode) -> (Lab, Vec<Proc>, Proc, daemon::TempConfig) {
    require_root();
    let mut lab = Lab::new(mode.topology()).expect("lab");
    let decaps = daemon::prepare(&mut lab, mode, SERVER.as_ref()).expect("backend set-up");
    let config = daemon::config_with(&lab, mode, |_, proto| health(if proto == "tcp" { "tcp-half-open" } else { "icmp" }, "through_vip = true\n"));
    let (d, file) = daemon::start(&lab, &config).expect("daemon");
    (lab, decaps, d, file)
}

/// Through the VIP, healthy backends pass round after round, and each
/// SYN-ACK got its RST back through the same path: nothing is left half
/// open and nothing was retransmitted.
fn healthy_rounds_pass(lab: &Lab, d: &Proc) {
    let retrans: Vec<u64> = lab.backends.iter().map(|b| syn_retransmits(lab, &b.ns)).collect();
    std::thread::sleep(DETECT + SLACK);
    assert!(!d.output().contains(" is down"), "a healthy backend went down:\n{}", d.output());
    for (b, before) in lab.backends.iter().zip(retrans) {
        let syn_recv = lab.exec(&b.ns, &["ss", "-Htn", "state", "syn-recv"]).expect("ss");
        assert_eq!(syn_recv.trim(), "", "{}: half-open connections left", b.name);
        assert_eq!(syn_retransmits(lab, &b.ns), before, "{}: SYN-ACKs were retransmitted", b.name);
    }
}

/// Waits until backend 1 (index 0) of the UDP VIP on port 7 of `vip`'s
/// family is down after echo requests through the VIP timed out.
fn udp_backend1_down(d: &Proc, lab: &Lab, vip: IpAddr) {
    let name = fulcrum_dataplane::services::vip_name(vip, IpProtocol::UDP, 7);
    let (_, line) = wait_health_of(d, &name, addr(lab, 0, vip), "down", 1, THROUGH_VIP_DETECT);
    assert!(line.contains("timed out"), "{line}");
}

/// Real flows to `vip`: every one served, none by `gone`.
fn served_without(lab: &Lab, vip: IpAddr, gone: &str) {
    let served = answers(lab, vip, 60);
    assert!(!served.iter().any(|b| b == gone), "{vip}: {gone} served while down");
    assert!(served.iter().any(|b| b == "backend2") && served.iter().any(|b| b == "backend3"), "{vip}: {served:?}");
}

/// A dsr backend that lost the VIP from its loopback answers checks of
/// its own address but drops every flow: checked through the VIP, it goes
/// down while the others stay up, and rejoins once the VIP is back.
#[test]
fn through_vip_checks_take_down_a_dsr_backend_without_the_vip() {
    let (lab, _decaps, d, _config) = through_vip(LabMode::Dsr);
    let vips = [IpAddr::V4(VIP4), IpAddr::V6(VIP6)];
    healthy_rounds_pass(&lab, &d);
    for vip in vips {
        assert!(answers(&lab, vip, 30).iter().any(|b| b == "backend1"), "{vip}: backend1 serves to begin with");
    }
    let ns = &lab.backends[0].ns;
    let on_lo = [format!("{VIP4}/32"), format!("{VIP6}/128")];
    for a in &on_lo {
        lab.exec(ns, &["ip", "addr", "del", a, "dev", "lo"]).expect("VIP off backend1's loopback");
    }
    for vip in vips {
        let (_, line) = wait_health(&d, &lab, vip, 0, "down", 1, THROUGH_VIP_DETECT);
        assert!(line.contains("timed out"), "{line}");
        udp_backend1_down(&d, &lab, vip);
    }
    for vip in vips {
        served_without(&lab, vip, "backend1");
    }
    for a in &on_lo {
        lab.exec(ns, &["ip", "addr", "add", a, "dev", "lo"]).expect("VIP back on backend1's loopback");
    }
    for vip in vips {
        wait_health(&d, &lab, vip, 0, "up", 1, THROUGH_VIP_DETECT);
        assert!(answers(&lab, vip, 30).iter().any(|b| b == "backend1"), "{vip}: backend1 did not rejoin");
    }
    // backend2 is replaced by a server with another MAC, which it
    // announces (gratuitous ARP, unsolicited NA): the checks follow the
    // workers to it instead of probing the old MAC.
    let b2 = &lab.backends[1];
    for s in ["net.ipv4.conf.eth0.arp_notify=1", "net.ipv6.conf.eth0.ndisc_notify=1"] {
        lab.exec(&b2.ns, &["sysctl", "-q", "-w", s]).expect("sysctl");
    }
    // Past the neighbour table's lock time (1 s) since its last update.
    std::thread::sleep(Duration::from_millis(1100));
    lab.exec(&b2.ns, &["ip", "link", "set", "eth0", "address", "02:f1:00:00:0c:99"]).expect("new MAC");
    for vip in vips {
        let needle = format!("backend {} is now at 02:f1:00:00:0c:99", addr(&lab, 1, vip));
        d.wait_for_line(|l| l.contains(&needle), T).unwrap_or_else(|| panic!("no `{needle}`:\n{}", d.output()));
    }
    std::thread::sleep(DETECT + SLACK);
    assert!(!d.output().contains(&format!("backend {} is down", addr(&lab, 1, IpAddr::V4(VIP4)))), "{}", d.output());
    assert!(!d.output().contains(&format!("backend {} is down", addr(&lab, 1, IpAddr::V6(VIP6)))), "{}", d.output());
    for vip in vips {
        assert!(answers(&lab, vip, 30).iter().any(|b| b == "backend2"), "{vip}: backend2 at its new MAC");
    }
    let out = daemon::stop(d).expect("daemon stop");
    for vip in vips {
        for i in [1, 2] {
            let line = backend_line(&out, vip, addr(&lab, i, vip));
            assert!(line.contains("went_down=0") && line.contains("checks_failed=0"), "{line}");
        }
    }
}

/// A tunnel backend whose decapsulation stopped still answers on its own
/// address; checked inside the tunnel (ipip, then gue), it goes down and
/// real flows avoid it, while the others stay up.
#[test]
fn through_vip_checks_take_down_a_tunnel_backend_that_stopped_decapsulating() {
    for mode in [LabMode::Ipip, LabMode::Gue] {
        let (lab, mut decaps, d, _config) = through_vip(mode);
        let vips = [IpAddr::V4(VIP4), IpAddr::V6(VIP6)];
        healthy_rounds_pass(&lab, &d);
        for vip in vips {
            assert!(answers(&lab, vip, 30).iter().any(|b| b == "backend1"), "{mode:?} {vip}: backend1 serves to begin with");
        }
        // Its decapsulating program goes with the process.
        drop(decaps.remove(0));
        for vip in vips {
            let (_, line) = wait_health(&d, &lab, vip, 0, "down", 1, THROUGH_VIP_DETECT);
            assert!(line.contains("timed out"), "{mode:?}: {line}");
            udp_backend1_down(&d, &lab, vip);
            served_without(&lab, vip, "backend1");
        }
        let out = daemon::stop(d).expect("daemon stop");
        for vip in vips {
            for i in [1, 2] {
                let line = backend_line(&out, vip, addr(&lab, i, vip));
                assert!(line.contains("went_down=0") && line.contains("checks_failed=0"), "{mode:?}: {line}");
            }
        }
    }
}
