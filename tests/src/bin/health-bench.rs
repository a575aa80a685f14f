//! Whether the health thread keeps up: N backends at one interval, every
//! check kind, on the namespace lab. Root only.
//!
//! One lab backend holds N addresses (198.18.16.0/20 on its loopback, the
//! balancer routes them to it), with the lab server on port 80 of all of
//! them; the balancer namespace runs `fulcrum_health::HealthMonitor` over
//! N checks for `--seconds`. Per kind it prints the checks completed per
//! second, how many failed, how many started more than 10 ms late and the
//! worst lag, any transition (none expected), and the CPU time of the
//! health thread.
//!
//! The https kind asks nginx on port 443 of every address (a certificate
//! for bench.lab.test, verified against the CA openssl made for the run),
//! the udp kind a lab server's echo on port 8 bound to each address (one
//! bound to the wildcard would answer from the backend's own address,
//! which a connected check socket does not take), the dns kind dnsmasq.
//!
//! health-bench [--backends N] [--interval-ms MS] [--seconds S] [--kind KIND]...

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::exit;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fulcrum_config::{DnsType, HealthCheck, HttpProbe, Probe, StatusRange, Tls, TlsVerify};
use fulcrum_dataplane::health_policy::RiseFall;
use fulcrum_dataplane::sched::Latencies;
use fulcrum_health::{HealthMonitor, Member, Pool};
use fulcrum_tests::servers::{self, TempDir};
use fulcrum_tests::{Lab, Topology, in_netns, require_root};

const KINDS: [&str; 8] = ["icmp", "tcp-connect", "tcp-half-open", "http-status", "http-content", "https-status", "udp", "dns"];
/// The name the https and dns kinds ask for, and the dns answer.
const NAME: &str = "bench.lab.test";
const ANSWER: Ipv4Addr = Ipv4Addr::new(198, 18, 5, 5);

struct Args {
    backends: usize,
    interval: Duration,
    seconds: u64,
    kinds: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args { backends: 1000, interval: Duration::from_secs(1), seconds: 10, kinds: Vec::new() };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = || value.parse::<u64>().map_err(|_| format!("{flag}: `{value}` is not a number"));
        match flag.as_str() {
            "--backends" => a.backends = num()?.clamp(1, 4000) as usize,
            "--interval-ms" => a.interval = Duration::from_millis(num()?.max(100)),
            "--seconds" => a.seconds = num()?.max(1),
            "--kind" if KINDS.contains(&value.as_str()) => a.kinds.push(value),
            _ => return Err(format!("unknown argument {flag} {value}")),
        }
    }
    if a.kinds.is_empty() {
        a.kinds = KINDS.iter().map(|k| k.to_string()).collect();
    }
    Ok(a)
}

/// The i-th backend address: 198.18.16.1 onwards.
fn address(i: usize) -> Ipv4Addr {
    let n = (16u32 << 8) + 1 + i as u32;
    Ipv4Addr::new(198, 18, (n >> 8) as u8, n as u8)
}

/// `ca`: the CA file the https kind verifies against.
fn probe(kind: &str, ca: &Path) -> Probe {
    let http = |port, content: Option<&str>, tls| {
        let status = StatusRange { first: 200, last: 299 };
        Probe::Http(HttpProbe { port, path: "/".into(), status, content: content.map(Into::into), host: None, tls })
    };
    match kind {
        "icmp" => Probe::Icmp,
        "tcp-connect" => Probe::TcpConnect { port: 80 },
        "tcp-half-open" => Probe::TcpHalfOpen { port: 80 },
        "http-status" => http(80, None, None),
        "https-status" => http(443, None, Some(Tls { server_name: Some(NAME.into()), verify: TlsVerify::CaFile(ca.into()) })),
        "udp" => Probe::Udp { port: 8, payload: b"ping".to_vec(), expect: Some(b"ping".to_vec()) },
        "dns" => Probe::Dns { port: 53, name: NAME.into(), record: DnsType::A, expect_address: Some(IpAddr::V4(ANSWER)) },
        _ => http(80, Some("backend1"), None),
    }
}

/// User plus system CPU time of this process's thread named `name`.
fn thread_cpu(name: &str) -> Duration {
    let tick = Duration::from_secs(1) / 100; // USER_HZ
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Duration::ZERO };
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // After "(comm)": state is field 3, utime 14, stime 15.
        let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |r| r.1).split_whitespace().collect();
        let ticks: u32 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u32>().ok()).sum();
        return tick * ticks;
    }
    Duration::ZERO
}

fn run(args: &Args, kind: &str, ca: &Path) {
    let pool = Pool {
        vip: 0,
        policy: Box::new(RiseFall),
        members: (0..args.backends)
            .map(|i| Member {
                backend: i as u16,
                ident: i as u64,
                weight: 1,
                up: true,
                check: HealthCheck {
                    address: IpAddr::V4(address(i)),
                    probe: probe(kind, ca),
                    through_vip: false,
                    interval: args.interval,
                    timeout: args.interval / 2,
                    rise: 2,
                    fall: 3,
                },
                via: None,
            })
            .collect(),
    };
    let monitor = HealthMonitor::start(vec![pool], Arc::new(Latencies::new(args.backends))).unwrap_or_else(|e| panic!("{kind}: {e}"));
    // The first round spreads over one interval: measure whole rounds after it.
    std::thread::sleep(args.interval);
    let stats = monitor.stats();
    let totals = || (0..args.backends as u16).filter_map(|i| stats.backend(i)).fold((0, 0), |(p, f), c| (p + c.passed.get(), f + c.failed.get()));
    let ((p0, f0), late0, cpu0, t0) = (totals(), stats.late.get(), thread_cpu("fulcrum-health"), Instant::now());
    std::thread::sleep(Duration::from_secs(args.seconds));
    let ((p1, f1), late1, cpu1, secs) = (totals(), stats.late.get(), thread_cpu("fulcrum-health"), t0.elapsed().as_secs_f64());
    let transitions = monitor.transitions().try_iter().count();
    let per_s = (p1 + f1 - p0 - f0) as f64 / secs;
    let expected = args.backends as f64 / args.interval.as_secs_f64();
    println!(
        "| {kind} | {per_s:.0} / {expected:.0} | {} | {} | {:.1} | {transitions} | {:.1}% |",
        f1 - f0,
        late1 - late0,
        stats.lag_max_us.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1000.0,
        (cpu1 - cpu0).as_secs_f64() / secs * 100.0,
    );
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("health-bench: {e}\nusage: health-bench [--backends N] [--interval-ms MS] [--seconds S] [--kind KIND]...");
        exit(2)
    });
    require_root();
    let mut lab = Lab::new(Topology::OneArm).expect("lab");
    let backend = lab.backends[0].clone();
    let batch: String = (0..args.backends).map(|i| format!("address add {}/32 dev lo\n", address(i))).collect();
    let file = std::env::temp_dir().join(format!("health-bench-{}.ip", std::process::id()));
    std::fs::write(&file, batch).expect("ip batch file");
    let added = lab.exec(&backend.ns, &["ip", "-batch", file.to_str().unwrap_or_default()]);
    let _ = std::fs::remove_file(&file);
    added.expect("backend addresses");
    let via = backend.iface().v4.to_string();
    lab.exec(&lab.balancer.ns, &["ip", "route", "add", "198.18.16.0/20", "via", &via]).expect("route");
    let server = fulcrum_tests::daemon::fulcrum_bin().with_file_name("lab-server");
    lab.start_servers(&server).expect("lab servers");
    let dir = TempDir::new("health-bench").expect("temp dir");
    let ca = servers::ca(&dir, "bench-ca").expect("a CA");
    let (cert, key) = servers::signed(&dir, &ca, NAME).expect("a certificate");
    let site = format!(
        "server {{ listen 443 ssl; ssl_certificate {}; ssl_certificate_key {}; location / {{ return 200 \"ok\\n\"; }} }}",
        cert.display(),
        key.display()
    );
    let first = SocketAddr::new(IpAddr::V4(address(0)), 443);
    let _nginx = servers::nginx(&lab, &backend.ns, &dir, &site, first).expect("nginx");
    let _dnsmasq = servers::dnsmasq(&lab, &backend.ns, None, &[(NAME, IpAddr::V4(ANSWER))]).expect("dnsmasq");
    let mut echo = vec![server.to_string_lossy().into_owned(), "--name".into(), "echo".into(), "--udp".into(), "8".into()];
    echo.extend((0..args.backends).flat_map(|i| ["--udp-bind".to_string(), address(i).to_string()]));
    let echo = lab.spawn(&backend.ns, &echo.iter().map(String::as_str).collect::<Vec<_>>()).expect("udp echo");
    echo.wait_for_line(|l| l.starts_with("ready"), Duration::from_secs(10)).unwrap_or_else(|| panic!("udp echo: {}", echo.output()));
    println!("{} backends, interval {:?}, timeout {:?}, {} s per kind", args.backends, args.interval, args.interval / 2, args.seconds);
    println!("| check | completed/s (of expected) | failed | late (>10 ms) | worst lag ms | transitions | health thread CPU |");
    println!("|---|---|---|---|---|---|---|");
    in_netns(&lab.balancer.ns, || {
        for kind in &args.kinds {
            run(&args, kind, &ca);
        }
    })
    .expect("entering the balancer namespace");
}
