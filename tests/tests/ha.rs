//! High availability with real keepalived: two fulcrum daemons in front of
//! three backends, each with keepalived in its own namespace moving the
//! VIP's gateway and the full-NAT address. Long-lived TCP connections
//! exchange a message every 100 ms while the master fails (kill -9, a
//! hang) or hands over (`fulcrum ha role backup` as a planned switch does);
//! with flow sync none breaks. The same failover without sync is the
//! baseline: there full-NAT connections break. Root only.
//!
//! One lab serves every scenario, in turn. Figures go to stderr (run with
//! `--nocapture` to see them; perf/RESULTS.md has a run's).

use std::time::Duration;

use fulcrum::control::api::{Request, Response};
use fulcrum_tests::daemon::{self, LabMode};
use fulcrum_tests::ha::{self, Clients, GATEWAY, Node, Outcome, wait_until};
use fulcrum_tests::{Lab, Topology, require_root};

const SERVER: &str = env!("CARGO_BIN_EXE_lab-server");
const CONNECTIONS: usize = 200;
const EVERY: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// `kill -9` of the master's fulcrum.
    Kill,
    /// SIGSTOP of the master's fulcrum: it hangs.
    Hang,
    /// `fulcrum ha role backup` on the master and its keepalived stopped,
    /// as a planned switch does.
    Planned,
}

struct Pair {
    a: Node,
    b: Node,
}

/// Starts the pair (a has the higher priority) and waits until a is the
/// master with the gateway.
fn pair(lab: &Lab, mode: &str, sync: bool) -> Pair {
    let (ha, hb) = (lab.balancer.clone(), lab.standbys[0].clone());
    let (va, vb) = (ha.iface().v4, hb.iface().v4);
    let a = Node::start(lab, &ha, mode, 150, sync.then_some(vb)).expect("balancer a");
    let b = Node::start(lab, &hb, mode, 100, sync.then_some(va)).expect("balancer b");
    wait_until("balancer a holds the gateway", Duration::from_secs(10), || a.holds_gateway(lab)).expect("VRRP election");
    if sync {
        wait_until("balancer a is master", Duration::from_secs(5), || a.role().as_deref() == Some("master")).expect("notify_master");
    }
    Pair { a, b }
}

/// Runs one scenario: connections through a, then `failure` of a, then
/// traffic through b. The outcome, and how long until b took over.
fn scenario(lab: &Lab, mode: &str, sync: bool, failure: Failure) -> (Outcome, Duration) {
    let mut p = pair(lab, mode, sync);
    let mut clients = Clients::open(lab, CONNECTIONS).expect("connections through the master");
    clients.run(Duration::from_millis(1500), EVERY);
    assert_eq!(clients.outcome().broken, 0, "{mode}: broken before any failure");
    let fulcrum = p.a.fulcrum.as_ref().expect("a's fulcrum");
    match failure {
        Failure::Kill => fulcrum.signal(libc::SIGKILL),
        Failure::Hang => fulcrum.signal(libc::SIGSTOP),
        Failure::Planned => {
            // What an operator's switch does: the standby takes the role
            // when the master's keepalived leaves, and this one stops
            // forwarding.
            p.a.stop_keepalived();
        }
    }
    let b = &p.b;
    let took_over = std::thread::scope(|s| {
        let watch = s.spawn(|| wait_until("b takes the gateway", Duration::from_secs(10), || b.holds_gateway(lab)));
        clients.run(Duration::from_secs(5), EVERY);
        watch.join().expect("watcher")
    })
    .unwrap_or_else(|e| panic!("{mode} {failure:?}: {e}"));
    if failure == Failure::Hang {
        p.a.fulcrum.as_ref().expect("a's fulcrum").signal(libc::SIGCONT);
    }
    let outcome = clients.outcome();
    eprintln!(
        "ha {mode} sync={sync} {failure:?}: {} connections, {} broken, longest gap p50 {:?} p99 {:?} max {:?}, takeover {took_over:?}, {} messages",
        outcome.connections,
        outcome.broken,
        outcome.quantile(0.5),
        outcome.quantile(0.99),
        outcome.quantile(1.0),
        outcome.messages
    );
    if sync {
        report_sync(&p);
    }
    (outcome, took_over)
}

/// Sync figures of both balancers.
fn report_sync(p: &Pair) {
    for (name, node) in [("a", &p.a), ("b", &p.b)] {
        if let Ok(Response::Status(s)) = fulcrum::control::client::request(&node.socket, &Request::Status)
            && let Some(h) = s.ha
        {
            eprintln!(
                "  {name}: role {}, entries sent {}, received {}, lag p99 {:?} ms, peers {:?}",
                h.role, h.entries_sent, h.entries_received, h.lag_p99_ms, h.peers
            );
        }
    }
}

#[test]
fn failover_breaks_no_connection_with_flow_sync() {
    require_root();
    let mut lab = Lab::new(Topology::OneArm).expect("lab");
    lab.add_balancer().expect("standby balancer");
    lab.route_vips_via(GATEWAY).expect("routes via the gateway");
    let _none = daemon::prepare_hosts(&mut lab, LabMode::Dsr).expect("DSR backends");
    lab.start_servers_with(SERVER.as_ref(), &["--echo", &ha::ECHO_PORT.to_string()]).expect("servers");

    let mut failures = Vec::new();
    for (mode, failure) in [("full-nat", Failure::Kill), ("dsr", Failure::Kill), ("full-nat", Failure::Hang), ("full-nat", Failure::Planned)] {
        let (o, _) = scenario(&lab, mode, true, failure);
        if o.broken > 0 {
            failures.push(format!("{mode} {failure:?}: {} of {} connections broken", o.broken, o.connections));
        }
    }
    // The baseline, keepalived alone: the new master knows none of the
    // full-NAT flows.
    let (o, _) = scenario(&lab, "full-nat", false, Failure::Kill);
    assert!(o.broken > 0, "without sync every full-NAT connection should break, none did");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
