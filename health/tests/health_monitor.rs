//! The health thread against local listeners on 127.0.0.1: TCP connect
//! and HTTP checks, rise/fall, the reasons it reports, and a policy of
//! its own. (ICMP and half-open checks need raw sockets: the lab tests
//! run those.)

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering::Relaxed};
use std::time::Duration;

use fulcrum_config::{HealthCheck, HttpProbe, Probe, StatusRange, Tls, TlsVerify};
use fulcrum_dataplane::health_policy::{HealthState, Observation, Policy, RiseFall};
use fulcrum_dataplane::sched::BackendState;
use fulcrum_dataplane::sched::Latencies;
use fulcrum_health::{Failure, HealthMonitor, Member, Pool, Transition};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// An HTTP server answering every request with `status` (shared, so a
/// test can change it) and the body "ok".
fn http_server() -> (u16, Arc<AtomicU16>) {
    let listener = TcpListener::bind((LOCAL, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let status = Arc::new(AtomicU16::new(200));
    let answer = Arc::clone(&status);
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut req = [0u8; 1024];
            let _ = conn.read(&mut req);
            let _ = write!(conn, "HTTP/1.0 {} X\r\nContent-Length: 2\r\n\r\nok", answer.load(Relaxed));
        }
    });
    (port, status)
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    TcpListener::bind((LOCAL, 0)).unwrap().local_addr().unwrap().port()
}

fn check(probe: Probe) -> HealthCheck {
    HealthCheck { address: LOCAL, probe, through_vip: false, interval: Duration::from_millis(100), timeout: Duration::from_millis(50), rise: 2, fall: 2 }
}

fn http(port: u16, content: Option<&str>) -> Probe {
    Probe::Http(HttpProbe { port, path: "/".into(), status: StatusRange { first: 200, last: 299 }, content: content.map(Into::into), host: None, tls: None })
}

fn monitor(policy: Box<dyn Policy>, probes: Vec<Probe>) -> HealthMonitor {
    monitor_into(policy, probes, Arc::new(Latencies::new(16)))
}

/// A monitor whose checks' response times go to `latencies`.
fn monitor_into(policy: Box<dyn Policy>, probes: Vec<Probe>, latencies: Arc<Latencies>) -> HealthMonitor {
    let members =
        probes.into_iter().enumerate().map(|(i, p)| Member { backend: i as u16, ident: i as u64, weight: 4, up: true, check: check(p), via: None }).collect();
    HealthMonitor::start(vec![Pool { vip: 0, policy, members }], latencies).unwrap()
}

#[test]
fn passed_checks_give_the_workers_each_backends_response_time() {
    let (port, _) = http_server();
    let latencies = Arc::new(Latencies::new(16));
    let _m = monitor_into(Box::new(RiseFall), vec![http(port, None), Probe::TcpConnect { port: closed_port() }], Arc::clone(&latencies));
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while latencies.get(0) == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let rtt = latencies.get(0);
    assert!(rtt > 0 && rtt < 50_000, "backend 0's smoothed check time: {rtt} us");
    assert_eq!(latencies.get(1), 0, "a backend whose checks fail has no response time");
}

fn next(m: &HealthMonitor) -> Transition {
    m.transitions().recv_timeout(Duration::from_secs(5)).expect("a transition")
}

#[test]
fn connect_and_http_checks_report_down_and_up_with_the_reason() {
    let (port, status) = http_server();
    let probes =
        vec![Probe::TcpConnect { port }, Probe::TcpConnect { port: closed_port() }, http(port, None), http(port, Some("ok")), http(port, Some("missing"))];
    let m = monitor(Box::new(RiseFall), probes);
    let mut down: Vec<(u16, Option<Failure>)> = (0..2).map(|_| next(&m)).map(|t| (t.backend, t.failure)).collect();
    down.sort_by_key(|d| d.0);
    assert_eq!(down, [(1, Some(Failure::Os(libc::ECONNREFUSED))), (4, Some(Failure::ContentMissing))]);
    // The HTTP checks see the status (the content check first).
    status.store(503, Relaxed);
    let mut down: Vec<Transition> = (0..2).map(|_| next(&m)).collect();
    down.sort_by_key(|t| t.backend);
    for (t, backend) in down.iter().zip([2, 3]) {
        assert_eq!((t.backend, t.streak, t.failure), (backend, 2, Some(Failure::Status(503))));
        assert_eq!(t.state, HealthState { up: false, weight: 4 });
    }
    status.store(200, Relaxed);
    let mut up: Vec<u16> = (0..2).map(|_| next(&m)).inspect(|t| assert!(t.state.up && t.streak == 2)).map(|t| t.backend).collect();
    up.sort();
    assert_eq!(up, [2, 3]);
    let stats = m.stats();
    let b0 = stats.backend(0).unwrap();
    assert!(b0.passed.get() >= 5 && b0.failed.get() == 0 && b0.rtt_us.load(Relaxed) > 0);
    assert_eq!((stats.backend(2).unwrap().went_down.get(), stats.backend(2).unwrap().went_up.get()), (1, 1));
    assert!(stats.backend(5).is_none());
}

#[test]
fn a_check_without_an_answer_times_out() {
    // The kernel completes the handshakes, nobody answers the request.
    let mute = TcpListener::bind((LOCAL, 0)).unwrap();
    let port = mute.local_addr().unwrap().port();
    let m = monitor(Box::new(RiseFall), vec![http(port, None), Probe::TcpConnect { port }]);
    let t = next(&m);
    assert_eq!((t.backend, t.state.up, t.failure), (0, false, Some(Failure::Timeout)));
    assert_eq!(m.stats().backend(1).unwrap().failed.get(), 0, "the connect check passes");
}

/// A policy of its own: halves the weight at each failed check, never
/// takes a backend down.
struct Halve;

impl Policy for Halve {
    fn decide(&mut self, seen: &Observation, pool: &[BackendState]) -> HealthState {
        assert_eq!(pool[seen.index].id, seen.index as u64);
        let w = seen.health.state.weight;
        HealthState { up: true, weight: if seen.check.ok { w } else { w / 2 } }
    }
}

#[test]
fn a_policy_can_replace_rise_and_fall() {
    let m = monitor(Box::new(Halve), vec![Probe::TcpConnect { port: closed_port() }]);
    let weights: Vec<(u16, u16)> = (0..3).map(|_| next(&m)).map(|t| (t.was.weight, t.state.weight)).collect();
    assert_eq!(weights, [(4, 2), (2, 1), (1, 0)]);
}

#[test]
fn https_checks_do_not_start_without_certificates_to_verify_against() {
    let file = std::env::temp_dir().join(format!("fulcrum-health-ca-{}.pem", std::process::id()));
    std::fs::write(&file, "not a certificate\n").unwrap();
    let https = |verify| {
        let tls = Some(Tls { server_name: Some("www.lab.test".into()), verify });
        Probe::Http(HttpProbe { port: 443, path: "/".into(), status: StatusRange { first: 200, last: 299 }, content: None, host: None, tls })
    };
    let start = |probe| {
        let members = vec![Member { backend: 0, ident: 0, weight: 1, up: true, check: check(probe), via: None }];
        HealthMonitor::start(vec![Pool { vip: 0, policy: Box::new(RiseFall), members }], Arc::new(Latencies::new(1)))
    };
    let refused = start(https(TlsVerify::CaFile(file.clone()))).err().map(|e| e.to_string());
    let _ = std::fs::remove_file(&file);
    assert_eq!(refused, Some(format!("https checks: cannot load CA file {}: no PEM certificate in it", file.display())));
    // Unverified, nothing to load.
    start(https(TlsVerify::Off)).unwrap();
}
