//! Operating the daemon on the namespace lab: hot reload under traffic,
//! the control socket and CLI, the metrics endpoint. Root only.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fulcrum::control::api::{Request, Response, StatsReport, Status};
use fulcrum_tests::daemon::{self, LabMode, SNAT4, SNAT6};
use fulcrum_tests::{Lab, VIP4, VIP6, http_answers, http_get, in_netns, require_root, udp_echo};

const SERVER: &str = env!("CARGO_BIN_EXE_lab-server");
const T: Duration = Duration::from_secs(3);
const RELOADS: usize = 20;

fn status(socket: &std::path::Path) -> Status {
    match daemon::ask(socket, Request::Status) {
        Response::Status(s) => s,
        r => panic!("status: {r:?}"),
    }
}

fn stats(socket: &std::path::Path) -> StatsReport {
    match daemon::ask(socket, Request::Stats) {
        Response::Stats(s) => s,
        r => panic!("stats: {r:?}"),
    }
}

fn new_flows(s: &StatsReport, vip: &str) -> u64 {
    s.vips.iter().find(|v| v.name == vip).map_or(0, |v| v.traffic.new_flows)
}

/// The two configurations the reload test alternates between, full-NAT
/// one-arm. `b` drains backend 3 of the HTTP VIP and reweights backend 1,
/// removes backend 3 from the UDP VIP and adds a fourth VIP (TCP 8080 to
/// the backends' port 80); the IPv6 VIP stays as it is.
fn reload_config(lab: &Lab, socket: &str, b: bool, extra_daemon: &str) -> String {
    let addrs: Vec<String> = lab.backends.iter().map(|h| h.iface().v4.to_string()).collect();
    let vip = |addr: &str, proto: &str, port: u16, snat: &str, backends: &[(&str, u16, u16)]| {
        let mut v = format!("[[vip]]\naddress = \"{addr}\"\nprotocol = \"{proto}\"\nport = {port}\nmode = \"full-nat\"\nsnat = \"{snat}\"\n");
        for (a, port, weight) in backends {
            v.push_str(&format!("[[vip.backend]]\naddress = \"{a}\"\nport = {port}\nweight = {weight}\n"));
        }
        v + "\n"
    };
    let (b1, b2, b3) = (addrs[0].as_str(), addrs[1].as_str(), addrs[2].as_str());
    let v6: Vec<String> = lab.backends.iter().map(|h| h.iface().v6.to_string()).collect();
    let mut c = format!("[daemon]\ncontrol_socket = \"{socket}\"\n{extra_daemon}\n{}", daemon::interfaces(lab));
    let v4 = VIP4.to_string();
    c += &vip(&v4, "tcp", 80, SNAT4, &[(b1, 0, if b { 3 } else { 1 }), (b2, 0, 1), (b3, 0, if b { 0 } else { 1 })]);
    c += &vip(&v4, "udp", 7, SNAT4, &if b { vec![(b1, 0, 1), (b2, 0, 1)] } else { vec![(b1, 0, 1), (b2, 0, 1), (b3, 0, 1)] });
    c += &vip(&VIP6.to_string(), "tcp", 80, SNAT6, &[(&v6[0], 0, 1), (&v6[1], 0, 1), (&v6[2], 0, 1)]);
    if b {
        c += &vip(&v4, "tcp", 8080, SNAT4, &[(b1, 80, 1), (b2, 80, 1)]);
    }
    c
}

/// What the client loop saw.
#[derive(Default, Debug)]
struct Seen {
    http_ok: u64,
    udp_ok: u64,
    failures: Vec<String>,
    slowest: Duration,
}

/// New HTTP connections and UDP echoes to VIP4 from the client, in a loop
/// until `stop`.
fn traffic(lab: &Lab, stop: &AtomicBool) -> Seen {
    in_netns(&lab.client.ns, || {
        let mut seen = Seen::default();
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            match http_get(SocketAddr::new(IpAddr::V4(VIP4), 80), "/", T) {
                Ok((200, _)) => seen.http_ok += 1,
                Ok((status, _)) => seen.failures.push(format!("HTTP status {status}")),
                Err(e) => seen.failures.push(format!("HTTP: {e}")),
            }
            match udp_echo(SocketAddr::new(IpAddr::V4(VIP4), 7), b"ping", T) {
                Ok((echo, _)) if echo == b"ping" => seen.udp_ok += 1,
                Ok(_) => seen.failures.push("UDP: wrong echo".into()),
                Err(e) => seen.failures.push(format!("UDP: {e}")),
            }
            seen.slowest = seen.slowest.max(t.elapsed());
        }
        seen
    })
    .expect("client namespace")
}

fn wait_reloads(socket: &std::path::Path, applied: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(socket).reloads.applied < applied {
        assert!(Instant::now() < deadline, "SIGHUP: reload {applied} not applied: {:?}", status(socket).reloads);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The reload test: 20 reloads (by `fulcrum reload` and SIGHUP in
/// turn) between two configurations while the client opens connections
/// in a loop: not one request fails, the fourth VIP serves whenever it is
/// configured, and the VIP's ids (so its counters) survive every reload.
/// Then a file that is invalid, and one that needs a restart, are refused
/// with the reason and the running configuration keeps serving.
#[test]
fn reload_under_continuous_traffic() {
    require_root();
    let mut lab = Lab::new(LabMode::FullNat.topology()).expect("lab");
    let _ = daemon::prepare(&mut lab, LabMode::FullNat, SERVER.as_ref()).expect("set-up");
    let socket_path = daemon::control_socket();
    let (a, b) = (reload_config(&lab, &socket_path, false, ""), reload_config(&lab, &socket_path, true, ""));
    let (d, file) = daemon::start(&lab, &a).expect("daemon");
    let socket = daemon::socket_of(&a);
    let fourth = SocketAddr::new(IpAddr::V4(VIP4), 8080);
    let stop = AtomicBool::new(false);
    let mut counted = 0;
    let seen = std::thread::scope(|s| {
        let client = s.spawn(|| traffic(&lab, &stop));
        std::thread::sleep(Duration::from_millis(300));
        for i in 1..=RELOADS {
            let to_b = i % 2 == 1;
            file.write(if to_b { &b } else { &a });
            if i % 4 < 2 {
                let (code, out, err) = daemon::cli(&["reload", "--socket", socket.to_str().unwrap()]);
                assert_eq!(code, Some(0), "reload {i}: {out}{err}");
                assert!(out.starts_with("reloaded "), "{out}");
            } else {
                d.signal(libc::SIGHUP);
                wait_reloads(&socket, i as u64);
            }
            // The VIP keeps its id, so its counter only grows.
            let flows = new_flows(&stats(&socket), "198.18.100.1:80/tcp");
            assert!(flows >= counted, "reload {i}: new flows {counted} -> {flows}");
            counted = flows;
            let vips = status(&socket).vips;
            assert_eq!(vips.len(), if to_b { 4 } else { 3 }, "reload {i}: {vips:?}");
            if to_b {
                let r = in_netns(&lab.client.ns, || http_get(fourth, "/", T)).expect("netns");
                assert!(matches!(r, Ok((200, _))), "reload {i}: the fourth VIP: {r:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        client.join().expect("client loop")
    });
    assert!(seen.failures.is_empty(), "{} requests failed across {RELOADS} reloads: {:?}", seen.failures.len(), seen.failures);
    println!("across {RELOADS} reloads: {seen:?}");
    assert!(seen.http_ok >= 50 && seen.udp_ok >= 50, "too little traffic to tell: {seen:?}");
    let s = stats(&socket);
    // One flow per connection, but after some thousands of connections the
    // client reuses source ports whose (closing) entries are still there:
    // those connections continue a flow, they do not count as new.
    let flows = new_flows(&s, "198.18.100.1:80/tcp");
    assert!(flows <= seen.http_ok && flows >= seen.http_ok / 2, "{flows} new flows for {seen:?}");
    assert_eq!(new_flows(&s, "198.18.100.1:8080/tcp"), 0, "the fourth VIP is gone from the report");
    assert_eq!(status(&socket).reloads.applied, RELOADS as u64);

    // Invalid: refused with the file, line and field; the old one serves.
    file.write(&a.replace("weight = 1", "weight = 70000"));
    let (code, _, err) = daemon::cli(&["reload", "--socket", socket.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("invalid configuration") && err.contains(&format!("{}:", file.path().display())) && err.contains("weight must be 0..=65535, got 70000"),
        "{err}"
    );
    // Needs a restart: refused, naming the field.
    file.write(&reload_config(&lab, &socket_path, true, "metrics_listen = \"127.0.0.1:9200\"\n"));
    let (code, _, err) = daemon::cli(&["reload", "--config", file.path().to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("need a restart") && err.contains("daemon.metrics_listen: 127.0.0.1:7780 -> 127.0.0.1:9200"), "{err}");
    let st = status(&socket);
    assert_eq!((st.reloads.applied, st.reloads.refused, st.vips.len()), (RELOADS as u64, 2, 3), "{st:?}");
    for _ in 0..10 {
        let r = in_netns(&lab.client.ns, || http_get(SocketAddr::new(IpAddr::V4(VIP4), 80), "/", T)).expect("netns");
        assert!(matches!(r, Ok((200, _))), "after refused reloads: {r:?}");
    }
    let out = daemon::stop(d).expect("stop");
    assert!(out.contains("reload refused") && out.contains("reload applied"), "reloads are logged:\n{out}");
}

/// A scrape before and after known traffic: the counters moved by exactly
/// what was sent, the families are all there, and `fulcrum stats` agrees.
#[test]
fn metrics_match_the_traffic() {
    require_root();
    let mut lab = Lab::new(LabMode::FullNat.topology()).expect("lab");
    let _ = daemon::prepare(&mut lab, LabMode::FullNat, SERVER.as_ref()).expect("set-up");
    let config = daemon::config(&lab, LabMode::FullNat, "");
    let (d, file) = daemon::start(&lab, &config).expect("daemon");
    let socket = daemon::socket_of(&config);
    let (http, udp) = (40u32, 10u32);
    let tcp_vip = ["vip=\"198.18.100.1:80/tcp\""];
    let udp_vip = ["vip=\"198.18.100.1:7/udp\""];
    let before = daemon::scrape(&lab);
    in_netns(&lab.client.ns, || {
        for i in 0..http {
            let r = http_get(SocketAddr::new(IpAddr::V4(VIP4), 80), "/", T);
            assert!(matches!(r, Ok((200, _))), "request {i}: {r:?}");
        }
        // One socket: one flow (new sockets could reuse a source port).
        let sock = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        sock.set_read_timeout(Some(T)).expect("timeout");
        for i in 0..udp {
            sock.send_to(b"x", SocketAddr::new(IpAddr::V4(VIP4), 7)).expect("send");
            sock.recv_from(&mut [0u8; 16]).unwrap_or_else(|e| panic!("echo {i}: {e}"));
        }
    })
    .expect("netns");
    let after = daemon::scrape(&lab);
    let delta = |name: &str, labels: &[&str]| daemon::metric(&after, name, labels) - daemon::metric(&before, name, labels);
    assert_eq!(delta("fulcrum_vip_new_flows_total", &tcp_vip), f64::from(http), "{after}");
    assert_eq!(delta("fulcrum_backend_new_flows_total", &tcp_vip), f64::from(http), "{after}");
    assert_eq!(delta("fulcrum_vip_new_flows_total", &udp_vip), 1.0, "{after}");
    // An echo is one datagram each way; a connection at least SYN, ACK,
    // request, FIN each way but the last ACK.
    assert_eq!(delta("fulcrum_vip_packets_total", &udp_vip), f64::from(2 * udp), "{after}");
    assert!(delta("fulcrum_vip_packets_total", &tcp_vip) >= f64::from(7 * http), "{after}");
    for what in ["packets", "bytes", "new_flows"] {
        let (v, b) = (
            daemon::metric(&after, &format!("fulcrum_vip_{what}_total"), &tcp_vip),
            daemon::metric(&after, &format!("fulcrum_backend_{what}_total"), &tcp_vip),
        );
        assert_eq!(v, b, "{what}: a VIP's count is its backends' sum");
    }
    assert!(delta("fulcrum_worker_frames_total", &[]) >= delta("fulcrum_vip_packets_total", &[]), "{after}");
    // A full-NAT flow takes two entries; closed ones stay for a while.
    assert!(daemon::metric(&after, "fulcrum_connections", &[]) >= f64::from(2 * (http + 1)), "{after}");
    assert_eq!(daemon::metric(&after, "fulcrum_worker_batch_size_count", &[]), daemon::metric(&after, "fulcrum_worker_busy_polls_total", &[]));
    assert_eq!(daemon::metric(&after, "fulcrum_drops_total", &["reason=\"no_backend\""]), 0.0, "{after}");
    for family in
        ["fulcrum_drops_total", "fulcrum_scheduler_faults_total", "fulcrum_connection_evictions_total", "fulcrum_connections_capacity", "fulcrum_reloads_total"]
    {
        assert!(after.contains(&format!("# TYPE {family} ")), "no {family}:\n{after}");
    }

    // The VIP's parts as labels of their own, beside its name.
    assert_eq!(
        daemon::metric(&after, "fulcrum_vip_new_flows_total", &["address=\"198.18.100.1\"", "port=\"80\"", "protocol=\"tcp\""]),
        daemon::metric(&after, "fulcrum_vip_new_flows_total", &tcp_vip)
    );
    assert_eq!(daemon::metric(&after, "fulcrum_build_info", &[&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))]), 1.0, "{after}");
    assert_eq!(daemon::metric(&after, "fulcrum_config_last_reload_successful", &[]), 1.0, "{after}");
    assert!(daemon::metric(&after, "fulcrum_config_last_reload_success_timestamp_seconds", &[]) > 1.7e9, "{after}");
    for (path, body) in [("/ready", "ready\n"), ("/healthz", "ok\n")] {
        let addr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7780);
        let r = in_netns(&lab.balancer.ns, || http_get(addr, path, T)).expect("netns");
        assert!(matches!(&r, Ok((200, b)) if b == body.as_bytes()), "{path}: {r:?}");
    }

    let s = stats(&socket);
    assert_eq!(new_flows(&s, "198.18.100.1:80/tcp") as f64, daemon::metric(&after, "fulcrum_vip_new_flows_total", &tcp_vip));
    let (code, table, err) = daemon::cli(&["stats", "--socket", socket.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(table.starts_with("VIP / BACKEND") && table.contains("198.18.100.1:80/tcp") && table.contains("WORKER"), "{table}");
    let (code, json, err) = daemon::cli(&["status", "--json", "--config", file.path().to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(json.contains("\"status\"") && json.contains("\"198.18.100.1:80/tcp\""), "{json}");

    // The flows a client holds, as the tables have them.
    let held: Vec<std::net::TcpStream> =
        in_netns(&lab.client.ns, || (0..3).map(|_| std::net::TcpStream::connect_timeout(&SocketAddr::new(IpAddr::V4(VIP4), 80), T).expect("held")).collect())
            .expect("netns");
    let ports: Vec<String> = held.iter().map(|c| format!("{}:{}", lab.client.iface().v4, c.local_addr().expect("local").port())).collect();
    std::thread::sleep(Duration::from_millis(100));
    let client = lab.client.iface().v4.to_string();
    let (code, listed, err) = daemon::cli(&["flows", "--vip", "198.18.100.1:80/tcp", "--client", &client, "--socket", socket.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    for p in &ports {
        assert!(listed.lines().any(|l| l.contains(&format!(" {p} ")) && l.contains("established")), "{p} in\n{listed}");
    }
    let (code, _, err) = daemon::cli(&["flows", "--vip", "198.18.100.1:81/tcp", "--socket", socket.to_str().unwrap()]);
    assert_eq!(code, Some(1), "no such VIP: {err}");
    assert!(err.contains("no VIP 198.18.100.1:81/tcp"), "{err}");
    drop(held);

    // The live view: rates per VIP while requests flow.
    let ((code, watched, err), (_, failed)) = std::thread::scope(|s| {
        let traffic = s.spawn(|| http_answers(&lab.client.ns, SocketAddr::new(IpAddr::V4(VIP4), 80), 300, T).expect("netns"));
        let watched = daemon::cli(&["stats", "--watch", "--interval", "300ms", "--count", "2", "--socket", socket.to_str().unwrap()]);
        (watched, traffic.join().expect("traffic"))
    });
    assert_eq!((code, failed), (Some(0), 0), "{err}");
    let tables: Vec<&str> = watched.split("every 300ms (Ctrl-C stops)").filter(|t| !t.trim().is_empty()).collect();
    assert_eq!(tables.len(), 2, "{watched}");
    let rate = |t: &str| t.lines().find(|l| l.starts_with("198.18.100.1:80/tcp")).and_then(|l| l.split_whitespace().nth(3)?.parse::<u64>().ok());
    assert!(tables.iter().all(|t| t.contains("PACKETS/S") && rate(t).is_some()), "{watched}");
    assert!(tables.iter().any(|t| rate(t) > Some(0)), "packets per second while requests flow:\n{watched}");
    daemon::stop(d).expect("stop");
}

/// The AF_XDP gauges are the kernel's: every worker's socket shows copy
/// mode (veth refuses zero-copy), and a socket whose worker stops polling
/// while traffic arrives shows the frames the kernel dropped. Health
/// checks' durations come as a histogram per backend.
#[test]
fn af_xdp_ring_counters_and_check_durations_come_from_the_kernel_and_the_checks() {
    require_root();
    let mut lab = Lab::new(LabMode::FullNat.topology()).expect("lab");
    let _ = daemon::prepare(&mut lab, LabMode::FullNat, SERVER.as_ref()).expect("set-up");
    let health = "\n[vip.health]\nkind = \"tcp-connect\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\n";
    let config = daemon::config_with(&lab, LabMode::FullNat, |_, proto| if proto == "tcp" { health.to_string() } else { String::new() });
    let (d, _file) = daemon::start(&lab, &config).expect("daemon");
    let socket = daemon::socket_of(&config);
    std::thread::sleep(Duration::from_millis(700));

    let s = stats(&socket);
    let mut queues: Vec<u32> = s.sockets.iter().map(|k| k.queue).collect();
    queues.sort_unstable();
    assert_eq!(queues, (0..lab.queues).collect::<Vec<_>>(), "one socket per worker: {:?}", s.sockets);
    assert!(s.sockets.iter().all(|k| k.interface == "eth0" && !k.zero_copy && k.worker == k.queue as usize), "{:?}", s.sockets);
    let before = daemon::scrape(&lab);
    let zero_copy: Vec<&str> = before.lines().filter(|l| l.starts_with("fulcrum_xsk_zero_copy{")).collect();
    assert_eq!(zero_copy.len(), lab.queues as usize, "{before}");
    assert!(zero_copy.iter().all(|l| l.ends_with(" 0")), "veth runs copy mode: {zero_copy:?}");

    let backend = ["backend=\"198.18.0.11\"", "vip=\"198.18.100.1:80/tcp\""];
    let count = daemon::metric(&before, "fulcrum_health_check_duration_seconds_count", &backend);
    assert!(count >= 2.0, "checks every 200 ms: {before}");
    assert_eq!(daemon::metric(&before, "fulcrum_health_check_duration_seconds_bucket", &[backend[0], backend[1], "le=\"+Inf\""]), count);
    // A connect check on a quiet lab takes well under 100 ms.
    assert_eq!(daemon::metric(&before, "fulcrum_health_check_duration_seconds_bucket", &[backend[0], backend[1], "le=\"0.1\""]), count, "{before}");
    let sum = daemon::metric(&before, "fulcrum_health_check_duration_seconds_sum", &backend);
    assert!(sum > 0.0 && sum < count * 0.1, "{sum} s over {count} checks");

    // The worker of queue 0 (where the bridge delivers every frame) stops
    // polling; its RX ring (2048 entries) fills and the kernel drops the rest.
    let drops = |text: &str| daemon::metric(text, "fulcrum_xsk_rx_drops_total", &["queue=\"0\""]);
    assert_eq!(drops(&before), 0.0, "{before}");
    d.signal(libc::SIGSTOP);
    let sent = in_netns(&lab.client.ns, || {
        let sock = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        (0..6000).filter(|_| sock.send_to(b"overload", SocketAddr::new(IpAddr::V4(VIP4), 7)).is_ok()).count()
    });
    std::thread::sleep(Duration::from_millis(300));
    d.signal(libc::SIGCONT);
    assert!(sent.expect("netns") > 4096, "datagrams sent");
    let after = daemon::scrape(&lab);
    let full = daemon::metric(&after, "fulcrum_xsk_rx_drops_total", &["queue=\"0\"", "reason=\"rx_ring_full\""])
        + daemon::metric(&after, "fulcrum_xsk_rx_drops_total", &["queue=\"0\"", "reason=\"fill_ring_empty\""]);
    assert!(
        full > 1000.0,
        "the stopped worker's socket dropped frames: {}",
        after.lines().filter(|l| l.starts_with("fulcrum_xsk")).collect::<Vec<_>>().join("\n")
    );
    let s = stats(&socket);
    let k = s.sockets.iter().find(|k| k.queue == 0).expect("queue 0");
    assert!((k.rx_ring_full + k.fill_ring_empty) as f64 >= full, "{k:?}");
    let (code, table, err) = daemon::cli(&["stats", "--socket", socket.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    let row = table.lines().find(|l| l.starts_with("eth0 queue 0 ")).unwrap_or_else(|| panic!("no socket row:\n{table}"));
    assert!(row.split_whitespace().nth(4) == Some("copy"), "{row}");

    // status speaks in durations and dates.
    let (code, text, err) = daemon::cli(&["status", "--socket", socket.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    let first = text.lines().next().unwrap_or_default();
    let up = first.split(", up ").nth(1).and_then(|r| r.split(',').next()).unwrap_or_default();
    assert!(up.ends_with('s') && up[..up.len() - 1].parse::<u32>().is_ok(), "uptime of seconds as `Ns`: {first}");
    let since = text.lines().find_map(|l| l.strip_prefix("configuration in force since ")).unwrap_or_else(|| panic!("{text}"));
    assert!(since.starts_with("20") && since.contains(" UTC (") && (since.ends_with(" ago)") || since.ends_with("(just now)")), "{since}");
    daemon::stop(d).expect("stop");
}

/// The control socket is root's only (0600), a second daemon is refused
/// before it touches the interfaces, and the CLI says clearly when no
/// daemon runs or it lacks the permission.
#[test]
fn control_socket_is_root_only_and_errors_are_clear() {
    require_root();
    let mut lab = Lab::new(LabMode::FullNat.topology()).expect("lab");
    let _ = daemon::prepare(&mut lab, LabMode::FullNat, SERVER.as_ref()).expect("set-up");
    let config = daemon::config(&lab, LabMode::FullNat, "");
    let (d, file) = daemon::start(&lab, &config).expect("daemon");
    let socket = daemon::socket_of(&config);
    let mode = std::fs::metadata(&socket).expect("socket").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");

    let second = lab.spawn(&lab.balancer.ns, &[daemon::fulcrum_bin().to_str().unwrap(), "run", "--config", file.path().to_str().unwrap()]).expect("spawn");
    let refused = second.wait_for_line(|l| l.contains("another fulcrum is running"), Duration::from_secs(10));
    assert!(refused.is_some(), "{}", second.output());
    assert_eq!(status(&socket).pid, d.pid(), "the first daemon still answers");

    // Someone else than root: a copy of the CLI any user may run.
    let bin = std::env::temp_dir().join(format!("fulcrum-cli-{}", std::process::id()));
    std::fs::copy(daemon::fulcrum_bin(), &bin).expect("copy");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = std::process::Command::new(&bin).args(["status", "--socket", socket.to_str().unwrap()]).uid(65534).gid(65534).output();
    let _ = std::fs::remove_file(&bin);
    let out = out.expect("run as nobody");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("permission denied") && err.contains("root"), "{err}");

    daemon::stop(d).expect("stop");
    assert!(!socket.exists(), "the socket is removed on exit");
    let (code, _, err) = daemon::cli(&["stats", "--socket", socket.to_str().unwrap()]);
    assert_eq!(code, Some(4), "not running has its own exit code: {err}");
    assert!(err.contains("fulcrum is not running"), "{err}");
    // And an invalid file its own.
    let broken = daemon::TempConfig::new("[daemon]\nworkers = 0\n").expect("a file");
    let (code, _, err) = daemon::cli(&["check-config", broken.path_str()]);
    assert_eq!(code, Some(3), "invalid configuration: {err}");
}

/// Under systemd (`Type=notify`, a watchdog): READY=1 once the daemon
/// serves, WATCHDOG=1 pings at half the period while its workers poll,
/// STOPPING=1 on the way out.
#[test]
fn systemd_hears_ready_watchdog_pings_and_stopping() {
    require_root();
    let mut lab = Lab::new(LabMode::Dsr.topology()).expect("lab");
    let _ = daemon::prepare(&mut lab, LabMode::Dsr, SERVER.as_ref()).expect("set-up");
    let config = daemon::TempConfig::new(&daemon::config(&lab, LabMode::Dsr, "")).expect("config");
    let socket_path = std::env::temp_dir().join(format!("fulcrum-notify-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket_path);
    let notify = std::os::unix::net::UnixDatagram::bind(&socket_path).expect("a notify socket");
    notify.set_read_timeout(Some(T)).expect("timeout");
    let bin = daemon::fulcrum_bin();
    let env_socket = format!("NOTIFY_SOCKET={}", socket_path.display());
    // As the journal runs it: each line with its priority; JSON asked for,
    // and the libraries' `log` records (aya's) included.
    let args = ["env", &env_socket, "WATCHDOG_USEC=400000", "JOURNAL_STREAM=8:9", "RUST_LOG=info,aya=debug", bin.to_str().unwrap_or_default()];
    let mut p = lab.spawn(&lab.balancer.ns, &[&args[..], &["--log-format", "json", "run", "--config", config.path_str()]].concat()).expect("fulcrum run");
    let mut heard = Vec::new();
    let started = Instant::now();
    let mut buf = [0u8; 512];
    while heard.iter().filter(|m: &&String| m.as_str() == "WATCHDOG=1").count() < 3 && started.elapsed() < Duration::from_secs(20) {
        if let Ok(n) = notify.recv(&mut buf) {
            heard.push(String::from_utf8_lossy(&buf[..n]).trim().to_string());
        }
    }
    p.signal(libc::SIGTERM);
    let exited = p.wait_timeout(Duration::from_secs(10));
    while let Ok(n) = notify.recv(&mut buf) {
        heard.push(String::from_utf8_lossy(&buf[..n]).trim().to_string());
        if heard.last().is_some_and(|m| m == "STOPPING=1") {
            break;
        }
    }
    let _ = std::fs::remove_file(&socket_path);
    assert!(exited.is_some_and(|s| s.success()), "{}", p.output());
    assert_eq!(heard.first().map(String::as_str), Some("READY=1"), "{heard:?}\n{}", p.output());
    assert!(heard.iter().filter(|m| m.as_str() == "WATCHDOG=1").count() >= 3, "{heard:?}");
    assert_eq!(heard.last().map(String::as_str), Some("STOPPING=1"), "{heard:?}");
    let out = p.output();
    let logged = |prefix: &str, needle: &str| out.lines().any(|l| l.starts_with(prefix) && l.contains(needle));
    assert!(logged("<6>{", "\"level\":\"INFO\""), "info lines as JSON at priority 6:\n{out}");
    assert!(logged("<7>{", "\"target\":\"aya"), "aya's log records reach the log:\n{out}");
}
