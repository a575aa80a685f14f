//! The SYN proxy through the daemon, with the kernel's TCP on both sides:
//! the client's stack completes its handshake with the balancer's cookie,
//! the backend's with the balancer's SYN and ACK, and everything after is
//! translated between the two sequence spaces, clocks and window scales.
//! Root only.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use fulcrum_tests::daemon::{self, LabMode};
use fulcrum_tests::{Lab, VIP4, VIP6, http_answers, http_get, in_netns, require_root};

const SERVER: &str = env!("CARGO_BIN_EXE_lab-server");

/// A counter of the daemon's summary line `floods: ...`.
fn flood_counter(summary: &str, name: &str) -> u64 {
    summary
        .lines()
        .find_map(|l| l.strip_prefix("floods: "))
        .and_then(|l| l.split_whitespace().find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in the summary:\n{summary}"))
}

fn proxied_connections_work(mode: LabMode) {
    require_root();
    let mut lab = Lab::new(mode.topology()).expect("lab");
    let _hosts = daemon::prepare(&mut lab, mode, SERVER.as_ref()).expect("backend set-up");
    let config = daemon::config_with(&lab, mode, |_, proto| if proto == "tcp" { "syn_proxy = \"always\"\n".into() } else { String::new() });
    let (d, _config) = daemon::start(&lab, &config).expect("daemon");
    let mut failed = Vec::new();
    let mut answered = 0;
    for vip in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)] {
        let addr = SocketAddr::new(vip, 80);
        let (by_backend, lost) = http_answers(&lab.client.ns, addr, 30, Duration::from_secs(3)).expect("netns");
        answered += by_backend.values().sum::<usize>();
        if lost > 0 || by_backend.len() != 3 {
            failed.push(format!("{vip}: {lost} of 30 requests failed; answers by backend {by_backend:?}"));
        }
        // A long transfer: window scaling, SACK and timestamps of the
        // backend's side, translated for all of it.
        let body = in_netns(&lab.client.ns, || http_get(addr, "/bytes/4000000", Duration::from_secs(20))).expect("netns");
        match body {
            Ok((200, b)) if b.len() == 4_000_000 && b.iter().enumerate().all(|(i, &x)| x == (i % 251) as u8) => {}
            Ok((code, b)) => failed.push(format!("{vip}: 4 MB download: status {code}, {} bytes (or corrupted)", b.len())),
            Err(e) => failed.push(format!("{vip}: 4 MB download: {e}")),
        }
    }
    let summary = daemon::stop(d).expect("daemon stop");
    assert!(failed.is_empty(), "{mode:?}:\n{}\n{summary}", failed.join("\n"));
    assert_eq!(answered, 60);
    // Every connection's SYN was answered by the balancer and returned.
    let (sent, accepted) = (flood_counter(&summary, "syn_cookies_sent"), flood_counter(&summary, "syn_cookies_accepted"));
    assert!(accepted >= 62 && sent >= accepted, "{mode:?}: cookies sent {sent}, accepted {accepted}:\n{summary}");
}

#[test]
fn proxied_connections_work_full_nat() {
    proxied_connections_work(LabMode::FullNat);
}

#[test]
fn proxied_connections_work_nat() {
    proxied_connections_work(LabMode::Nat);
}
