//! The `fulcrum` daemon on the namespace lab, in every forwarding mode:
//! real kernel TCP and UDP clients and servers talk through it. Root only.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use fulcrum_dataplane::wire::IpProtocol;
use fulcrum_tests::daemon::{self, LabMode};
use fulcrum_tests::{Lab, VIP4, VIP6, http_get, in_netns, require_root, udp_echo};

const SERVER: &str = env!("CARGO_BIN_EXE_lab-server");
const T: Duration = Duration::from_secs(3);
const REQUESTS: usize = 300;
const BIG: usize = 10 * 1024 * 1024;

/// `REQUESTS` HTTP requests, each on a new connection, from `ns`: how many
/// each backend (by the name it answers with) served. Every one must succeed.
fn spread(lab: &Lab, ns: &str, vip: IpAddr) -> HashMap<String, u64> {
    in_netns(ns, || {
        let mut by_name = HashMap::new();
        for i in 0..REQUESTS {
            let (status, body) = http_get(SocketAddr::new(vip, 80), "/", T).unwrap_or_else(|e| panic!("request {i} to {vip}: {e}"));
            assert_eq!(status, 200, "request {i} to {vip}");
            *by_name.entry(String::from_utf8_lossy(&body).trim().to_string()).or_insert(0) += 1;
        }
        by_name
    })
    .expect("entering the client namespace")
    .into_iter()
    .inspect(|(name, _)| assert!(lab.backends.iter().any(|b| &b.name == name), "unknown answer {name:?}"))
    .collect()
}

/// A 10 MB body arrives whole and uncorrupted (byte i is i % 251).
fn big_transfer(lab: &Lab, vip: IpAddr) {
    let (status, body) = in_netns(&lab.client.ns, || http_get(SocketAddr::new(vip, 80), &format!("/bytes/{BIG}"), Duration::from_secs(30)))
        .expect("netns")
        .unwrap_or_else(|e| panic!("10 MB from {vip}: {e}"));
    assert_eq!((status, body.len()), (200, BIG));
    assert!(body.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8), "10 MB body corrupted");
}

fn udp(lab: &Lab, vip: IpAddr) {
    for i in 0..5 {
        let (echo, from) = in_netns(&lab.client.ns, || udp_echo(SocketAddr::new(vip, 7), format!("ping {i}").as_bytes(), T))
            .expect("netns")
            .unwrap_or_else(|e| panic!("UDP echo via {vip}: {e}"));
        assert_eq!((echo, from.ip()), (format!("ping {i}").into_bytes(), vip));
    }
}

/// The name `fulcrum status` gives the lab's TCP VIP on port 80.
fn vip_name(vip: IpAddr) -> String {
    fulcrum_dataplane::services::vip_name(vip, IpProtocol::TCP, 80)
}

/// Runs the daemon in `mode` and checks HTTP spread, a 10 MB transfer and
/// UDP echo through every VIP in `vips`, then that its counters match.
/// Returns its summary.
fn through_the_balancer(mode: LabMode, vips: &[IpAddr]) -> String {
    require_root();
    let mut lab = Lab::new(mode.topology()).expect("lab");
    let _decap = daemon::prepare(&mut lab, mode, SERVER.as_ref()).expect("backend set-up");
    let (d, _config) = daemon::start(&lab, &daemon::config(&lab, mode, "")).expect("daemon");
    let mut served = Vec::new();
    for &vip in vips {
        let by_name = spread(&lab, &lab.client.ns, vip);
        for b in &lab.backends {
            let n = by_name.get(&b.name).copied().unwrap_or(0);
            assert!(n >= 50, "{mode:?} {vip}: {} served {n} of {REQUESTS}: {by_name:?}", b.name);
        }
        big_transfer(&lab, vip);
        udp(&lab, vip);
        served.push((vip, by_name));
    }
    let summary = daemon::stop(d).expect("daemon stop");
    // The daemon counted exactly the connections the clients made: one per
    // request, and one more on the backend that sent the 10 MB.
    for (vip, by_name) in served {
        let flows = daemon::new_flows(&summary, &vip_name(vip));
        let total: u64 = flows.values().sum();
        assert_eq!(total, REQUESTS as u64 + 1, "{mode:?} {vip}: {summary}");
        for b in &lab.backends {
            let addr = if vip.is_ipv4() { IpAddr::V4(b.iface().v4) } else { IpAddr::V6(b.iface().v6) }.to_string();
            let (counted, answered) = (flows.get(&addr).copied().unwrap_or(0), by_name.get(&b.name).copied().unwrap_or(0));
            assert!(counted == answered || counted == answered + 1, "{mode:?} {vip} {addr}: counted {counted}, answered {answered}\n{summary}");
        }
    }
    summary
}

#[test]
fn nat_inline() {
    let summary = through_the_balancer(LabMode::Nat, &[IpAddr::V4(VIP4), IpAddr::V6(VIP6)]);
    // Clients reach both rx queues, replies come over the bridge to queue
    // 0: the flows of worker 1 only work if worker 0 hands their replies on.
    let handed: u64 = summary.split_whitespace().find_map(|w| w.strip_prefix("handed_out=")).and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(handed > 0, "no reply was handed between workers:\n{summary}");
    assert!(summary.contains("handoff_lost=0"), "{summary}");
}

#[test]
fn full_nat_one_arm() {
    let _ = through_the_balancer(LabMode::FullNat, &[IpAddr::V4(VIP4), IpAddr::V6(VIP6)]);
}

#[test]
fn dsr_one_arm() {
    let _ = through_the_balancer(LabMode::Dsr, &[IpAddr::V4(VIP4), IpAddr::V6(VIP6)]);
}

#[test]
fn ipip_tunnel() {
    let _ = through_the_balancer(LabMode::Ipip, &[IpAddr::V4(VIP4)]);
}

#[test]
fn gue_tunnel() {
    let _ = through_the_balancer(LabMode::Gue, &[IpAddr::V4(VIP4)]);
}

/// The seeds' same-network case: a backend calling the VIP of its own pool
/// in one-arm. With full-NAT the answer comes back through the balancer
/// because the source was the balancer's; with DSR the backend owns the
/// VIP and answers itself.
#[test]
fn a_backend_calls_its_own_vip() {
    for mode in [LabMode::FullNat, LabMode::Dsr] {
        require_root();
        let mut lab = Lab::new(mode.topology()).expect("lab");
        let _decap = daemon::prepare(&mut lab, mode, SERVER.as_ref()).expect("backend set-up");
        let (d, _config) = daemon::start(&lab, &daemon::config(&lab, mode, "")).expect("daemon");
        let caller = lab.backends[0].ns.clone();
        let by_name = in_netns(&caller, || {
            (0..30)
                .map(|i| {
                    let (status, body) =
                        http_get(SocketAddr::new(IpAddr::V4(VIP4), 80), "/", T).unwrap_or_else(|e| panic!("{mode:?}: backend request {i}: {e}"));
                    assert_eq!(status, 200);
                    String::from_utf8_lossy(&body).trim().to_string()
                })
                .collect::<Vec<_>>()
        })
        .expect("netns");
        if mode == LabMode::FullNat {
            let others = by_name.iter().filter(|n| **n != lab.backends[0].name).count();
            assert!(others > 0, "full-NAT spreads the backend's own calls too: {by_name:?}");
        }
        daemon::stop(d).expect("stop");
    }
}

/// Traffic for the balancer itself (TCP to its own address, ping, ARP)
/// keeps working while fulcrum runs and after it is killed.
#[test]
fn host_traffic_is_untouched() {
    require_root();
    let mut lab = Lab::new(LabMode::FullNat.topology()).expect("lab");
    let own = lab.spawn(&lab.balancer.ns, &[SERVER, "--name", "balancer", "--http", "8080"]).expect("balancer server");
    own.wait_for_line(|l| l.starts_with("ready"), T).expect("balancer server ready");
    let _ = daemon::prepare(&mut lab, LabMode::FullNat, SERVER.as_ref()).expect("set-up");
    let host = |lab: &Lab| {
        let addr = IpAddr::V4(lab.balancer.iface().v4);
        let (status, body) = in_netns(&lab.client.ns, || http_get(SocketAddr::new(addr, 8080), "/", T)).expect("netns").expect("HTTP to the balancer itself");
        assert_eq!((status, body.as_slice()), (200, &b"balancer\n"[..]));
        lab.exec(&lab.client.ns, &["ping", "-c", "1", "-W", "2", &addr.to_string()]).expect("ping the balancer");
        // The client's neighbour entry for the balancer comes from ARP.
        let neigh = lab.exec(&lab.client.ns, &["ip", "neigh", "show", &addr.to_string()]).expect("ip neigh");
        assert!(neigh.contains(&lab.balancer.iface().mac_string()), "ARP: {neigh}");
    };
    let (d, _config) = daemon::start(&lab, &daemon::config(&lab, LabMode::FullNat, "")).expect("daemon");
    host(&lab);
    d.signal(libc::SIGKILL);
    drop(d);
    host(&lab);
    let link = lab.exec(&lab.balancer.ns, &["ip", "link", "show", "dev", &lab.balancer.iface().name]).expect("ip link");
    assert!(!link.contains("xdp"), "the steering program must be gone with the process: {link}");
}

#[test]
fn bad_configurations_and_environments_are_clear_errors() {
    require_root();
    let lab = Lab::new(LabMode::Dsr.topology()).expect("lab");
    let bin = daemon::fulcrum_bin();
    let run = |config: &str| {
        let path = std::env::temp_dir().join(format!("fulcrum-bad-{}.toml", std::process::id()));
        std::fs::write(&path, config).expect("write config");
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &lab.balancer.ns])
            .arg(&bin)
            .args(["run", "--config"])
            .arg(&path)
            .output()
            .expect("run fulcrum");
        let _ = std::fs::remove_file(&path);
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let good = daemon::config(&lab, LabMode::Dsr, "");
    let (code, err) = run(&good.replace("name = \"eth0\"", "name = \"nope0\""));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no such network interface: nope0"), "{err}");
    let (code, err) = run(&good.replace("mode = \"dsr\"", "mode = \"dsr\"\nweight = 70000"));
    assert_eq!(code, Some(3), "an invalid configuration has its own exit code: {err}");
    assert!(err.contains("invalid configuration") && err.contains(".toml:"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
