//! The https, http Host, udp and dns checks against real servers from
//! Debian in the namespace lab: nginx with certificates openssl made for
//! the test, dnsmasq, and the lab server's UDP echo. The health monitor
//! runs in the balancer's namespace, as the daemon runs it. Every check
//! that should pass starts down and must come up; every broken one starts
//! up and must go down, for the reason expected. Last, the daemon itself
//! runs an https check from its config file. Root only.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fulcrum_config::HealthCheck;
use fulcrum_dataplane::health_policy::RiseFall;
use fulcrum_dataplane::sched::Latencies;
use fulcrum_health::{Failure, HealthMonitor, Member, Pool};
use fulcrum_tests::daemon::{self, LabMode};
use fulcrum_tests::servers::{self, TempDir};
use fulcrum_tests::{Lab, Topology, in_netns, require_root};

const SERVER: &str = env!("CARGO_BIN_EXE_lab-server");
const INTERVAL: Duration = Duration::from_millis(300);
const TIMEOUT: Duration = Duration::from_millis(200);
const RISE: u8 = 2;
const FALL: u8 = 2;

/// A backend's check as an operator writes it (`[vip.health]` fields),
/// resolved by the config crate against `address`.
fn check(address: IpAddr, health: &str, base: &TempDir) -> HealthCheck {
    let text = format!(
        "[[interface]]\nname = \"lb0\"\nrole = \"one-arm\"\n[[vip]]\naddress = \"198.18.100.1\"\nprotocol = \"tcp\"\nport = 80\nmode = \"dsr\"\n\
         health = {{ interval = \"{}ms\", timeout = \"{}ms\", rise = {RISE}, fall = {FALL}, {health} }}\n[[vip.backend]]\naddress = \"{address}\"\n",
        INTERVAL.as_millis(),
        TIMEOUT.as_millis()
    );
    let origin = base.path().join("fulcrum.toml");
    let config = fulcrum_config::parse(&text, &origin.to_string_lossy()).unwrap_or_else(|e| panic!("{health}: {e}"));
    fulcrum_config::check_files(&config, "fulcrum.toml").unwrap_or_else(|e| panic!("{health}: {e}"));
    config.vips[0].backends[0].check.clone().unwrap()
}

/// Which checks must pass (`None`) or fail and why, by name.
struct Case {
    name: &'static str,
    check: HealthCheck,
    expect: Option<Failure>,
}

/// Runs every case's check in `ns` until each reached its expected state;
/// panics naming the cases that did not.
fn expect_states(ns: &str, cases: Vec<Case>) {
    let members = cases
        .iter()
        .enumerate()
        .map(|(i, c)| Member { backend: i as u16, ident: i as u64, weight: 1, up: c.expect.is_some(), check: c.check.clone(), via: None })
        .collect();
    let pools = vec![Pool { vip: 0, policy: Box::new(RiseFall), members }];
    let monitor =
        in_netns(ns, || HealthMonitor::start(pools, Arc::new(Latencies::new(cases.len())))).expect("entering the balancer").expect("starting the checks");
    let mut reached: HashMap<u16, Option<Failure>> = HashMap::new();
    let deadline = Instant::now() + INTERVAL * u32::from(RISE.max(FALL) + 3) + TIMEOUT;
    while reached.len() < cases.len() && Instant::now() < deadline {
        if let Ok(t) = monitor.transitions().recv_timeout(Duration::from_millis(50)) {
            assert!(reached.insert(t.backend, t.failure).is_none(), "{} changed twice: {t:?}", cases[usize::from(t.backend)].name);
            assert_eq!(t.state.up, cases[usize::from(t.backend)].expect.is_none(), "{}: {t:?}", cases[usize::from(t.backend)].name);
        }
    }
    // Then one more interval: a passing check must not fail once, and
    // the reasons must be those expected.
    std::thread::sleep(INTERVAL);
    let mut wrong = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let stats = monitor.stats().backend(i as u16).expect("stats of a checked backend");
        let (passed, failed) = (stats.passed.get(), stats.failed.get());
        let ok = match (reached.get(&(i as u16)), c.expect) {
            (Some(None), None) => failed == 0,
            (Some(Some(got)), Some(want)) => *got == want && passed == 0,
            _ => false,
        };
        if !ok {
            wrong.push(format!("{}: expected {:?}, reached {:?} ({passed} passed, {failed} failed)", c.name, c.expect, reached.get(&(i as u16))));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// nginx's sites on `ip`, plain (80) and TLS (443) with `cert`: the
/// name-based one (www.lab.test) answers "ok"; any other Host gets a 404.
fn sites(ip: IpAddr, cert: &Path, key: &Path) -> String {
    let (cert, key) = (cert.display(), key.display());
    format!(
        "server {{ listen {ip}:80 default_server; listen {ip}:443 ssl default_server; ssl_certificate {cert}; ssl_certificate_key {key}; return 404; }}\n\
         server {{ listen {ip}:80; listen {ip}:443 ssl; server_name www.lab.test; ssl_certificate {cert}; ssl_certificate_key {key};\n\
         location / {{ return 200 \"ok\\n\"; }} }}"
    )
}

#[test]
fn https_and_host_header_checks_against_nginx() {
    require_root();
    let lab = Lab::new(Topology::OneArm).expect("building the lab");
    let dir = TempDir::new("checks-https").expect("temp dir");
    let lab_ca = servers::ca(&dir, "lab-ca").expect("a CA");
    let (cert, key) = servers::signed(&dir, &lab_ca, "www.lab.test").expect("nginx's certificate");
    // Another CA, which never signed nginx's certificate.
    let other_ca = servers::ca(&dir, "other-ca").expect("another CA");
    let backend = &lab.backends[0];
    let ip = IpAddr::V4(backend.iface().v4);
    let (lab_ca, other_ca) = (lab_ca.display(), other_ca.display());
    let _nginx = servers::nginx(&lab, &backend.ns, &dir, &sites(ip, &cert, &key), SocketAddr::new(ip, 443)).expect("starting nginx");
    let case = |name, health: &str, expect| Case { name, check: check(ip, health, &dir), expect };
    expect_states(
        &lab.balancer.ns,
        vec![
            case("http, right Host", "kind = \"http-content\", port = 80, host = \"www.lab.test\", expect_content = \"ok\"", None),
            case("http, wrong Host", "kind = \"http-status\", port = 80, host = \"nope.lab.test\"", Some(Failure::Status(404))),
            case("http, no Host", "kind = \"http-status\", port = 80", Some(Failure::Status(404))),
            case(
                "https, verified by its CA file",
                &format!("kind = \"https-content\", port = 443, host = \"www.lab.test\", ca_file = \"{lab_ca}\", expect_content = \"ok\""),
                None,
            ),
            case(
                "https, wrong Host",
                &format!("kind = \"https-status\", port = 443, host = \"nope.lab.test\", sni = \"www.lab.test\", ca_file = \"{lab_ca}\""),
                Some(Failure::Status(404)),
            ),
            case(
                "https, another CA",
                &format!("kind = \"https-status\", port = 443, host = \"www.lab.test\", ca_file = \"{other_ca}\""),
                Some(Failure::Certificate),
            ),
            case(
                "https, name not in the certificate",
                &format!("kind = \"https-status\", port = 443, host = \"www.lab.test\", sni = \"other.lab.test\", ca_file = \"{lab_ca}\""),
                Some(Failure::Certificate),
            ),
            case("https, unverified", "kind = \"https-status\", port = 443, host = \"www.lab.test\", sni = \"other.lab.test\", verify = false", None),
            case("https to the plain HTTP port", "kind = \"https-status\", port = 80, verify = false", Some(Failure::Tls)),
        ],
    );
}

#[test]
fn udp_and_dns_checks_against_the_lab_echo_and_dnsmasq() {
    require_root();
    let mut lab = Lab::new(Topology::OneArm).expect("building the lab");
    lab.start_servers(SERVER.as_ref()).expect("lab servers");
    let dir = TempDir::new("checks-dns").expect("temp dir");
    let dns_host = lab.backends[1].clone();
    let dns_ip = IpAddr::V4(dns_host.iface().v4);
    let answer = IpAddr::V4(Ipv4Addr::new(198, 18, 5, 5));
    let _dnsmasq = servers::dnsmasq(&lab, &dns_host.ns, Some(dns_ip), &[("www.lab.test", answer)]).expect("starting dnsmasq");
    let echo = IpAddr::V4(lab.backends[0].iface().v4);
    // On the lab's subnet, but nobody's: no reply at all.
    let nobody = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 99));
    let case = |name, address, health: &str, expect| Case { name, check: check(address, health, &dir), expect };
    expect_states(
        &lab.balancer.ns,
        vec![
            case("udp echo", echo, "kind = \"udp\", port = 7, payload = \"ping\", expect_reply_hex = \"70696e67\"", None),
            case("udp, any reply", echo, "kind = \"udp\", port = 7, payload_hex = \"00ff\"", None),
            case("udp, wrong reply", echo, "kind = \"udp\", port = 7, payload = \"ping\", expect_reply = \"pong\"", Some(Failure::UnexpectedReply)),
            case("udp, closed port", echo, "kind = \"udp\", port = 9, payload = \"ping\"", Some(Failure::Os(libc::ECONNREFUSED))),
            case("udp, no host", nobody, "kind = \"udp\", port = 7, payload = \"ping\"", Some(Failure::Timeout)),
            case("dns, the address", dns_ip, "kind = \"dns\", port = 53, query_name = \"www.lab.test\", expect_address = \"198.18.5.5\"", None),
            case("dns, NOERROR only", dns_ip, "kind = \"dns\", port = 53, query_name = \"www.lab.test\"", None),
            case(
                "dns, another address",
                dns_ip,
                "kind = \"dns\", port = 53, query_name = \"www.lab.test\", expect_address = \"198.18.5.6\"",
                Some(Failure::DnsAddressMissing),
            ),
            case("dns, a name it does not serve", dns_ip, "kind = \"dns\", port = 53, query_name = \"missing.lab.test\"", Some(Failure::DnsRcode(5))),
            case("dns, its query echoed back", echo, "kind = \"dns\", port = 7, query_name = \"www.lab.test\"", Some(Failure::Timeout)),
        ],
    );
}

/// The daemon runs an https check from its config file: a backend with a
/// certificate from the configured CA stays up, one whose certificate
/// another CA signed and one without a server go down, each logged with
/// its reason.
#[test]
fn the_daemon_takes_down_backends_its_https_check_does_not_trust() {
    require_root();
    let lab = Lab::new(Topology::OneArm).expect("building the lab");
    let dir = TempDir::new("checks-daemon").expect("temp dir");
    let lab_ca = servers::ca(&dir, "lab-ca").expect("a CA");
    let other_ca = servers::ca(&dir, "other-ca").expect("another CA");
    let mut nginx = Vec::new();
    for (b, ca) in lab.backends[..2].iter().zip([&lab_ca, &other_ca]) {
        let ip = IpAddr::V4(b.iface().v4);
        // A directory per site: both certificates are for www.lab.test.
        let own = TempDir::new("checks-daemon-site").expect("temp dir");
        let (cert, key) = servers::signed(&own, ca, "www.lab.test").expect("a certificate");
        nginx.push((servers::nginx(&lab, &b.ns, &own, &sites(ip, &cert, &key), SocketAddr::new(ip, 443)).expect("starting nginx"), own));
    }
    let health = format!(
        "\n[vip.health]\nkind = \"https-content\"\nport = 443\nhost = \"www.lab.test\"\nexpect_content = \"ok\"\nca_file = \"{}\"\n\
         interval = \"{}ms\"\ntimeout = \"{}ms\"\nrise = {RISE}\nfall = {FALL}\n",
        lab_ca.display(),
        INTERVAL.as_millis(),
        TIMEOUT.as_millis()
    );
    let config = daemon::config_with(&lab, LabMode::Dsr, |vip, proto| if vip.is_ipv4() && proto == "tcp" { health.clone() } else { String::new() });
    let (d, _file) = daemon::start(&lab, &config).expect("starting fulcrum");
    let line = |i: usize, what: &str| format!("backend {} is down after {FALL} failed checks ({what}", lab.backends[i].iface().v4);
    let window = INTERVAL * u32::from(FALL + 2) + TIMEOUT;
    for (i, reason) in [(1, "TLS certificate not trusted)"), (2, "Connection refused")] {
        let needle = line(i, reason);
        d.wait_for_line(|l| l.contains(&needle), window).unwrap_or_else(|| panic!("no `{needle}`:\n{}", d.output()));
    }
    std::thread::sleep(INTERVAL * 2);
    let good = format!("backend {} is down", lab.backends[0].iface().v4);
    assert!(!d.output().contains(&good), "the trusted backend went down:\n{}", d.output());
    daemon::stop(d).expect("stopping fulcrum");
}
