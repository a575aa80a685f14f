//! Scale-out with real routing daemons: BIRD 2 as the router, spreading
//! the VIP's flows by ECMP over three fulcrum nodes, each announcing the
//! VIP through its own ExaBGP. Long-lived TCP connections exchange a
//! message every 100 ms and new connections open in a loop while a node
//! is drained, comes back, and is killed; none of them may break (dsr:
//! a flow the router moves to another node reaches the same backend by
//! Maglev). Root only.
//!
//! One lab serves every scenario, in turn. Figures go to stderr (run with
//! `--nocapture` to see them; perf/RESULTS.md has a run's).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use fulcrum_tests::daemon::{self, LabMode};
use fulcrum_tests::ecmp::{Churn, Node, Router};
use fulcrum_tests::ha::{self, Clients, Outcome, wait_until};
use fulcrum_tests::{Lab, Topology, require_root};

const SERVER: &str = env!("CARGO_BIN_EXE_lab-server");
const CONNECTIONS: usize = 600;
const EVERY: Duration = Duration::from_millis(100);
/// How long the connections run after each change.
const AFTER: Duration = Duration::from_secs(4);

struct Cluster {
    lab: Lab,
    router: Router,
    nodes: Vec<Node>,
}

impl Cluster {
    fn hops(&self) -> Vec<Ipv4Addr> {
        self.router.next_hops(&self.lab)
    }

    /// Waits until the router's route has exactly the next hops of the
    /// nodes `up` (indexes); how long that took.
    fn wait_hops(&self, up: &[usize], within: Duration) -> Duration {
        let mut want: Vec<Ipv4Addr> = up.iter().map(|&i| self.nodes[i].addr()).collect();
        want.sort();
        wait_until("the router's route", within, || self.hops() == want).unwrap_or_else(|e| {
            panic!(
                "{e}: has {:?}, wants {want:?}\n{}\n{}",
                self.hops(),
                self.router.bird_output(),
                self.nodes.iter().map(Node::output).collect::<Vec<_>>().join("\n")
            )
        })
    }
}

/// What one scenario measured.
fn report(name: &str, o: &Outcome, route: Duration, churn: (u64, u64), moved: Option<(usize, usize)>) {
    let moved = moved.map_or_else(String::new, |(m, n)| format!(", flows moved {m} of {n} ({:.0} %)", 100.0 * m as f64 / n.max(1) as f64));
    eprintln!(
        "ecmp dsr {name}: {} connections, {} broken, longest gap p50 {:?} p99 {:?} max {:?}, route changed after {route:?}, new connections {} ok {} failed{moved}",
        o.connections,
        o.broken,
        o.quantile(0.5),
        o.quantile(0.99),
        o.quantile(1.0),
        churn.0,
        churn.1
    );
}

/// Runs `action` (a change to the cluster, returning how long the router
/// took to reflect it) while the connections exchange messages and new
/// ones open in a loop; reports, and records a failure if any connection
/// broke.
fn scenario(c: &mut Cluster, clients: &mut Clients, name: &str, failures: &mut Vec<String>, action: impl FnOnce(&mut Cluster) -> Duration + Send) {
    let ports = clients.ports();
    let picks = c.router.picks(&c.lab, &ports);
    let churn = Churn::start(&c.router.client.ns);
    clients.reset_gaps();
    let route = std::thread::scope(|s| {
        let changed = s.spawn(|| action(&mut *c));
        clients.run(AFTER, EVERY);
        changed.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
    });
    let churn = churn.stop();
    let o = clients.outcome();
    report(name, &o, route, churn, Some(moved(&picks, &c.router.picks(&c.lab, &ports))));
    if o.broken > 0 || churn.1 > 0 {
        failures.push(format!("{name}: {} of {} connections broken, {} new connections failed", o.broken, o.connections, churn.1));
    }
}

fn moved(before: &[Option<Ipv4Addr>], after: &[Option<Ipv4Addr>]) -> (usize, usize) {
    (before.iter().zip(after).filter(|(a, b)| a != b).count(), before.len())
}

#[test]
fn nodes_drained_added_and_killed_break_no_connection() {
    require_root();
    let mut lab = Lab::new(Topology::OneArm).expect("lab");
    for _ in 0..2 {
        lab.add_balancer().expect("another node");
    }
    let _none = daemon::prepare_hosts(&mut lab, LabMode::Dsr).expect("DSR backends");
    lab.start_servers_with(SERVER.as_ref(), &["--echo", &ha::ECHO_PORT.to_string()]).expect("servers");
    let mut router = Router::add(&mut lab).expect("router");
    let hosts: Vec<_> = std::iter::once(lab.balancer.clone()).chain(lab.standbys.iter().cloned()).collect();
    router.start_bird(&lab, &hosts.iter().map(|h| h.iface().v4).collect::<Vec<_>>()).expect("bird");
    let nodes = hosts.iter().map(|h| Node::start(&lab, h).expect("node")).collect();
    let mut c = Cluster { lab, router, nodes };
    let started = Instant::now();
    let took = c.wait_hops(&[0, 1, 2], Duration::from_secs(20));
    eprintln!("ecmp: all three nodes announced and in the router's route {took:?} after they started ({:?} total)", started.elapsed());

    // Every node carries some of the connections.
    let mut clients = Clients::open_from(&c.router.client.ns, CONNECTIONS).expect("connections through the router");
    let before: Vec<u64> = c.nodes.iter().map(|n| n.vip_packets().unwrap_or(0)).collect();
    clients.run(Duration::from_secs(2), EVERY);
    assert_eq!(clients.outcome().broken, 0, "broken before any change");
    for (i, n) in c.nodes.iter().enumerate() {
        let got = n.vip_packets().unwrap_or(0) - before[i];
        assert!(got > 100, "node {i} forwarded {got} packets: ECMP should use every node");
    }
    let mut failures = Vec::new();

    // Drain node 2: withdrawn, its connections move on to the others, it
    // exits once its traffic stopped.
    scenario(&mut c, &mut clients, "drain", &mut failures, |c| {
        let socket = c.nodes[2].socket.to_string_lossy().into_owned();
        let asked = Instant::now();
        let (code, out, err) = daemon::cli(&["drain", "--socket", &socket]);
        assert_eq!(code, Some(0), "fulcrum drain: {out}{err}");
        let route = c.wait_hops(&[0, 1], Duration::from_secs(5));
        let exited = c.nodes[2].fulcrum.as_mut().expect("node 2").wait_timeout(Duration::from_secs(10));
        assert!(exited.is_some_and(|s| s.success()), "the drained node should exit by itself:\n{}", c.nodes[2].output());
        eprintln!("ecmp: the drained node exited {:?} after `fulcrum drain` (grace 10 s)", asked.elapsed());
        route
    });
    // Node 2 comes back: announced once ready, the router spreads over
    // three again.
    scenario(&mut c, &mut clients, "add", &mut failures, |c| {
        let lab = &c.lab;
        c.nodes[2].start_fulcrum(lab).expect("node 2 again");
        c.wait_hops(&[0, 1, 2], Duration::from_secs(5))
    });
    // systemctl stop: SIGTERM with daemon.shutdown_grace drains the same
    // way. Then node 2 starts again.
    scenario(&mut c, &mut clients, "SIGTERM", &mut failures, |c| {
        let node = c.nodes[2].fulcrum.as_mut().expect("node 2");
        node.signal(libc::SIGTERM);
        let route = c.wait_hops(&[0, 1], Duration::from_secs(5));
        let exited = c.nodes[2].fulcrum.as_mut().expect("node 2").wait_timeout(Duration::from_secs(10));
        assert!(exited.is_some_and(|s| s.success()), "SIGTERM should drain, then exit:\n{}", c.nodes[2].output());
        route
    });
    let lab = &c.lab;
    c.nodes[2].start_fulcrum(lab).expect("node 2 again");
    c.wait_hops(&[0, 1, 2], Duration::from_secs(5));
    // kill -9 of node 0's fulcrum: its helper finds the daemon gone and
    // withdraws at once.
    scenario(&mut c, &mut clients, "kill -9", &mut failures, |c| {
        c.nodes[0].fulcrum.as_ref().expect("node 0").signal(libc::SIGKILL);
        c.wait_hops(&[1, 2], Duration::from_secs(5))
    });
    // SIGSTOP of node 1's fulcrum: it hangs; its helper gets no answer
    // within bgp.timeout and withdraws. It announces again once resumed.
    scenario(&mut c, &mut clients, "SIGSTOP", &mut failures, |c| {
        c.nodes[1].fulcrum.as_ref().expect("node 1").signal(libc::SIGSTOP);
        c.wait_hops(&[2], Duration::from_secs(5))
    });
    c.nodes[1].fulcrum.as_ref().expect("node 1").signal(libc::SIGCONT);
    c.wait_hops(&[1, 2], Duration::from_secs(5));
    // A node whose VIP has no backend that takes new flows withdraws it,
    // and announces it again when one does.
    for weight in [0, 1] {
        for n in &c.nodes[1..] {
            n.reweight(&c.lab, weight).expect("reload");
        }
        let took = c.wait_hops(if weight == 0 { &[] } else { &[1, 2] }, Duration::from_secs(5));
        eprintln!("ecmp: every backend at weight {weight}: the router's route followed in {took:?}");
    }

    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
