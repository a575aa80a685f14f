//! Scale-out with real routing daemons: BIRD 2 as the router, spreading
//! the VIP's flows by ECMP over fulcrum nodes, each announcing the VIP
//! through its own ExaBGP. Long-lived TCP connections exchange a message
//! every 100 ms and new connections open in a loop while a node is
//! drained, comes back, is killed, hangs, or loses its link, while a
//! fourth node joins three, and while every node changes a backend's
//! weight before one is killed (Maglev's hard case: only sync keeps the
//! flows whose backend is no longer the table's answer). Full-NAT runs on
//! the fleet too: each node opens flows from its own SNAT address, and the
//! router sends their replies to it, or to the survivors once it is gone.
//! Root only.
//!
//! A fleet of four nodes runs every scenario in turn, once per mode (dsr,
//! ipip, full-NAT), with sync and without: lab start-ups cost more than
//! scenarios. Figures go to stderr (run with `--nocapture` to see them;
//! perf/RESULTS.md has a run's).

use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fulcrum_tests::daemon::{self, LabMode};
use fulcrum_tests::ecmp::{Churn, ChurnOutcome, Node, Router, Service, snat_of};
use fulcrum_tests::ha::{self, Clients, Outcome, wait_until};
use fulcrum_tests::{Lab, Proc, Topology, VIP4, require_root};

const SERVER: &str = env!("CARGO_BIN_EXE_lab-server");
const CONNECTIONS: usize = 600;
const EVERY: Duration = Duration::from_millis(100);
/// How long the connections run after each change.
const AFTER: Duration = Duration::from_secs(4);
/// How long before a node dies a new full-NAT flow may have begun and
/// still be unknown to the others: the sync thread sends entries every
/// 2 ms (a sync lag p99 within 10 ms is the HA target); the rest is the
/// slack of a busy two-core lab.
const IN_FLIGHT: Duration = Duration::from_millis(20);

/// Each test runs 600 connections through a lab of its own: one at a
/// time, or two labs share the machine's two cores and measure each
/// other.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Cluster {
    lab: Lab,
    router: Router,
    nodes: Vec<Node>,
    service: Service,
    /// The backends' decapsulators in tunnel modes.
    _decap: Vec<Proc>,
}

impl Cluster {
    /// A one-arm lab with `n` nodes running `service`, the first
    /// `running` of them started (the others' ExaBGP only), and the
    /// router watching the sessions of the nodes `bfd` with BFD; waits
    /// until the running ones are in the router's route.
    fn start(service: Service, n: usize, running: usize, bfd: &[usize]) -> Cluster {
        let mut lab = Lab::new(Topology::OneArm).expect("lab");
        for _ in 1..n {
            lab.add_balancer().expect("another node");
        }
        // Full-NAT sources are the nodes' own, routed by BGP (`Router::add`).
        let decap = match service.mode {
            LabMode::FullNat => Vec::new(),
            mode => daemon::prepare_hosts(&mut lab, mode).expect("backends that own the VIP"),
        };
        lab.start_servers_with(SERVER.as_ref(), &["--echo", &ha::ECHO_PORT.to_string()]).expect("servers");
        let mut router = Router::add(&mut lab).expect("router");
        let hosts: Vec<_> = std::iter::once(lab.balancer.clone()).chain(lab.standbys.iter().cloned()).collect();
        let addrs: Vec<Ipv4Addr> = hosts.iter().map(|h| h.iface().v4).collect();
        router.start_bird(&lab, &addrs, bfd).expect("bird");
        let nodes = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let mut node = Node::start(&lab, h, service, &addrs, i < running).expect("node");
                if bfd.contains(&i) {
                    node.start_bfd(&lab).expect("BFD on the node");
                }
                node
            })
            .collect();
        let c = Cluster { lab, router, nodes, service, _decap: decap };
        let started = Instant::now();
        let up: Vec<usize> = (0..running).collect();
        let took = c.wait_hops(&up, Duration::from_secs(20));
        eprintln!("ecmp {}: {running} nodes announced and in the router's route {took:?} after they started ({:?} total)", service.label(), started.elapsed());
        c
    }

    /// Waits until the router's route has exactly the next hops of the
    /// nodes `up` (indexes); how long that took.
    fn wait_hops(&self, up: &[usize], within: Duration) -> Duration {
        self.wait_route(VIP4, up, within)
    }

    /// `wait_hops` for the route to `dst`.
    fn wait_route(&self, dst: Ipv4Addr, up: &[usize], within: Duration) -> Duration {
        let mut want: Vec<Ipv4Addr> = up.iter().map(|&i| self.nodes[i].addr()).collect();
        want.sort();
        let hops = || self.router.next_hops(&self.lab, dst);
        wait_until(&format!("the router's route to {dst}"), within, || hops() == want).unwrap_or_else(|e| {
            panic!(
                "{e}: has {:?}, wants {want:?}\n{}\n{}",
                hops(),
                self.router.bird_output(),
                self.nodes.iter().map(Node::output).collect::<Vec<_>>().join("\n")
            )
        })
    }

    /// The running nodes' Maglev digests, which must all be equal.
    fn digests(&self) -> Vec<String> {
        let all: Vec<Vec<String>> = self.nodes.iter().filter_map(Node::digests).collect();
        assert!(all.len() > 1 && all.windows(2).all(|w| w[0] == w[1]), "nodes with the same configuration differ: {all:?}");
        assert!(all[0].iter().all(|d| d.len() == 16), "digests of 16 hex digits: {all:?}");
        all[0].clone()
    }

    /// Opens the connections and checks that every running node carries
    /// some of them.
    fn clients(&self) -> Clients {
        let mut clients = Clients::open_from(&self.router.client.ns, CONNECTIONS).expect("connections through the router");
        let before: Vec<Option<u64>> = self.nodes.iter().map(Node::vip_packets).collect();
        clients.run(Duration::from_secs(2), EVERY);
        assert_eq!(clients.outcome().broken, 0, "broken before any change");
        for (i, (n, b)) in self.nodes.iter().zip(before).enumerate() {
            if let (Some(b), Some(now)) = (b, n.vip_packets()) {
                assert!(now - b > 100, "node {i} forwarded {} packets: ECMP should use every node", now - b);
            }
        }
        clients
    }

    /// Runs `action` (a change to the cluster, returning how long the
    /// router took to reflect it, if it changed the route) while the
    /// connections exchange messages for `after` and new ones open in a
    /// loop; reports, and records a failure if a connection broke where
    /// `expect` allows none.
    fn scenario(
        &mut self,
        clients: &mut Clients,
        name: &str,
        after: Duration,
        expect: Expect,
        failures: &mut Vec<String>,
        action: impl FnOnce(&mut Cluster) -> Option<Duration> + Send,
    ) {
        let label = self.service.label();
        let outcome = self.run(clients, after, action);
        outcome.report(&label, name);
        match expect {
            Expect::Unbroken => outcome.check(&label, name, failures),
            Expect::UnbrokenButInFlight => outcome.check_but_in_flight(&label, name, failures),
            Expect::Recorded => {}
        }
    }

    /// On a full-NAT fleet, waits until the router's route to node `i`'s
    /// SNAT address has the next hops of the nodes `up`, and says how
    /// long that took (after the VIP's route, which moved first).
    fn follow_snat(&self, i: usize, up: &[usize]) {
        if self.service.mode == LabMode::FullNat {
            let took = self.wait_route(snat_of(i), up, Duration::from_secs(5));
            eprintln!("ecmp {}: node {i}'s SNAT address routed to nodes {up:?} {took:?} later", self.service.label());
        }
    }

    fn run(&mut self, clients: &mut Clients, after: Duration, action: impl FnOnce(&mut Cluster) -> Option<Duration> + Send) -> Measured {
        let ports = clients.ports();
        let picks = self.router.picks(&self.lab, VIP4, &ports);
        let churn = Churn::start(&self.router.client.ns);
        // A connection silent at the end of the last scenario may have
        // come back since: broken here are those that were not before.
        let broken_before = clients.broken();
        clients.reset_gaps();
        let changed_at = Instant::now();
        let route = std::thread::scope(|s| {
            let changed = s.spawn(|| action(&mut *self));
            clients.run(after, EVERY);
            changed.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
        });
        let after_picks = self.router.picks(&self.lab, VIP4, &ports);
        let broken = clients.broken().iter().zip(&broken_before).filter(|&(&now, &before)| now && !before).count();
        let clients = clients.outcome();
        Measured { broken, clients, route, changed_at, churn: churn.stop(), moved: moved(&picks, &after_picks) }
    }
}

/// What one scenario measured.
struct Measured {
    clients: Outcome,
    /// Connections that broke during this scenario (`clients.broken`
    /// counts all that are broken at its end).
    broken: usize,
    route: Option<Duration>,
    /// When the change began.
    changed_at: Instant,
    churn: ChurnOutcome,
    /// Connections whose next hop changed, of all.
    moved: (usize, usize),
}

impl Measured {
    /// Records a failure if a connection broke or a new one failed.
    fn check(&self, label: &str, name: &str, failures: &mut Vec<String>) {
        self.check_failed(label, name, self.churn.failed.len(), failures);
    }

    /// `check`, but a new connection that began within `IN_FLIGHT`
    /// before the change may fail: its node may die before the sync
    /// thread has sent its entry, and no other node can carry a
    /// full-NAT flow it has never heard of.
    fn check_but_in_flight(&self, label: &str, name: &str, failures: &mut Vec<String>) {
        let in_flight = |b: Instant| b <= self.changed_at && self.changed_at - b <= IN_FLIGHT;
        let unexcused = self.churn.failed.iter().filter(|f| !in_flight(f.began)).count();
        self.check_failed(label, name, unexcused, failures);
    }

    fn check_failed(&self, label: &str, name: &str, new_failed: usize, failures: &mut Vec<String>) {
        if self.broken > 0 || new_failed > 0 {
            failures.push(format!("{label} {name}: {} of {} connections broken, {new_failed} new connections failed", self.broken, self.clients.connections));
        }
    }

    fn report(&self, label: &str, name: &str) {
        let (o, (m, n)) = (&self.clients, self.moved);
        let route = self.route.map_or_else(|| "unchanged".into(), |r| format!("changed after {r:?}"));
        eprintln!(
            "ecmp {label} {name}: {} connections, {} broken, longest gap p50 {:?} p99 {:?} max {:?}, route {route}, new connections {} ok {} failed, flows moved {m} of {n} ({:.0} %)",
            o.connections,
            self.broken,
            o.quantile(0.5),
            o.quantile(0.99),
            o.quantile(1.0),
            self.churn.ok,
            self.churn.failed.len(),
            100.0 * m as f64 / n.max(1) as f64
        );
        for f in &self.churn.failed {
            let (sign, offset) = match f.began.checked_duration_since(self.changed_at) {
                Some(d) => ('+', d),
                None => ('-', self.changed_at - f.began),
            };
            eprintln!("ecmp {label} {name}: a new connection begun {sign}{offset:?} from the change failed: {}", f.error);
        }
    }
}

fn moved(before: &[Option<Ipv4Addr>], after: &[Option<Ipv4Addr>]) -> (usize, usize) {
    (before.iter().zip(after).filter(|(a, b)| a != b).count(), before.len())
}

#[test]
fn nodes_drained_added_killed_and_lost_break_no_connection() {
    require_root();
    let _serial = one_at_a_time();
    // Node 0's session is watched by BFD, node 1's is not: their link
    // losses at the end compare the two.
    let mut c = Cluster::start(Service::DSR, 3, 3, &[0]);
    let mut clients = c.clients();
    let mut failures = Vec::new();

    // Drain node 2: withdrawn, its connections move on to the others, it
    // exits once its traffic stopped.
    c.scenario(&mut clients, "drain", AFTER, Expect::Unbroken, &mut failures, |c| {
        let socket = c.nodes[2].socket.to_string_lossy().into_owned();
        let asked = Instant::now();
        let (code, out, err) = daemon::cli(&["drain", "--socket", &socket]);
        assert_eq!(code, Some(0), "fulcrum drain: {out}{err}");
        let route = c.wait_hops(&[0, 1], Duration::from_secs(5));
        let exited = c.nodes[2].fulcrum.as_mut().expect("node 2").wait_timeout(Duration::from_secs(10));
        assert!(exited.is_some_and(|s| s.success()), "the drained node should exit by itself:\n{}", c.nodes[2].output());
        eprintln!("ecmp: the drained node exited {:?} after `fulcrum drain` (grace 10 s)", asked.elapsed());
        Some(route)
    });
    // Node 2 comes back: announced once ready, the router spreads over
    // three again.
    c.scenario(&mut clients, "add", AFTER, Expect::Unbroken, &mut failures, |c| {
        let lab = &c.lab;
        c.nodes[2].start_fulcrum(lab).expect("node 2 again");
        Some(c.wait_hops(&[0, 1, 2], Duration::from_secs(5)))
    });
    // systemctl stop: SIGTERM with daemon.shutdown_grace drains the same
    // way. Then node 2 starts again.
    c.scenario(&mut clients, "SIGTERM", AFTER, Expect::Unbroken, &mut failures, |c| {
        let node = c.nodes[2].fulcrum.as_mut().expect("node 2");
        node.signal(libc::SIGTERM);
        let route = c.wait_hops(&[0, 1], Duration::from_secs(5));
        let exited = c.nodes[2].fulcrum.as_mut().expect("node 2").wait_timeout(Duration::from_secs(10));
        assert!(exited.is_some_and(|s| s.success()), "SIGTERM should drain, then exit:\n{}", c.nodes[2].output());
        Some(route)
    });
    let lab = &c.lab;
    c.nodes[2].start_fulcrum(lab).expect("node 2 again");
    c.wait_hops(&[0, 1, 2], Duration::from_secs(5));
    // kill -9 of node 0's fulcrum: its helper finds the daemon gone and
    // withdraws at once.
    c.scenario(&mut clients, "kill -9", AFTER, Expect::Unbroken, &mut failures, |c| {
        c.nodes[0].fulcrum.as_ref().expect("node 0").signal(libc::SIGKILL);
        Some(c.wait_hops(&[1, 2], Duration::from_secs(5)))
    });
    // SIGSTOP of node 1's fulcrum: it hangs; its helper gets no answer
    // within bgp.timeout and withdraws. It announces again once resumed.
    c.scenario(&mut clients, "SIGSTOP", AFTER, Expect::Unbroken, &mut failures, |c| {
        c.nodes[1].fulcrum.as_ref().expect("node 1").signal(libc::SIGSTOP);
        Some(c.wait_hops(&[2], Duration::from_secs(5)))
    });
    c.nodes[1].fulcrum.as_ref().expect("node 1").signal(libc::SIGCONT);
    c.wait_hops(&[1, 2], Duration::from_secs(5));
    // A node whose VIP has no backend that takes new flows withdraws it,
    // and announces it again when one does.
    for weight in [0, 1] {
        for n in &c.nodes[1..] {
            n.reweight(&c.lab, &[weight; 3]).expect("reload");
        }
        let took = c.wait_hops(if weight == 0 { &[] } else { &[1, 2] }, Duration::from_secs(5));
        eprintln!("ecmp: every backend at weight {weight}: the router's route followed in {took:?}");
    }
    let lab = &c.lab;
    c.nodes[0].start_fulcrum(lab).expect("node 0 again");
    c.wait_hops(&[0, 1, 2], Duration::from_secs(5));

    // A whole node lost: every process on it stops (as in a kernel hang
    // or a power cut), so nothing it runs can say so and its TCP sessions
    // stay open. BFD (node 0) withdraws within its detection time;
    // without it (node 1) the router waits for the hold time, and the
    // connections for their retransmissions after that.
    c.scenario(&mut clients, "node frozen, BFD", AFTER, Expect::Unbroken, &mut failures, |c| {
        c.nodes[0].signal_all(libc::SIGSTOP);
        Some(c.wait_hops(&[1, 2], Duration::from_secs(5)))
    });
    // Without BFD a new connection hashed to the frozen node waits for
    // the hold time and may give up first (3 s to connect): its failures
    // are recorded; established connections must all survive.
    let frozen = c.run(&mut clients, Duration::from_secs(10), |c| {
        c.nodes[1].signal_all(libc::SIGSTOP);
        Some(c.wait_hops(&[2], Duration::from_secs(6)))
    });
    frozen.report(&c.service.label(), "node frozen, hold time");
    if frozen.broken > 0 {
        failures.push(format!("node frozen, hold time: {} of {} connections broken", frozen.broken, frozen.clients.connections));
    }

    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// What a scenario asserts of the connections (`Measured::check`).
#[derive(Clone, Copy)]
enum Expect {
    /// None breaks, no new one fails.
    Unbroken,
    /// As `Unbroken`, but a new connection that began within `IN_FLIGHT`
    /// before the change may fail (`Measured::check_but_in_flight`).
    UnbrokenButInFlight,
    /// Reported only.
    Recorded,
}

/// What a fleet of `service` must keep through the scenario `name`. In
/// dsr and ipip Maglev places a moved flow again, unless a weight changed
/// since it began: then only sync keeps it past a kill. In full-NAT a
/// flow's state lives on the node that opened it: only sync keeps it
/// anywhere else, and a kill may take a flow whose entry is still in
/// flight.
fn expect(service: Service, name: &str) -> Expect {
    match (service.mode, service.sync, name) {
        (LabMode::FullNat, false, _) => Expect::Recorded,
        (LabMode::FullNat, true, KILL) => Expect::UnbrokenButInFlight,
        (_, false, KILL) => Expect::Recorded,
        _ => Expect::Unbroken,
    }
}

const KILL: &str = "then kill -9 of a node";

/// Every scenario on one fleet of four nodes, three running: the fourth
/// joins; node 2 is drained and exits; node 1's fulcrum hangs (SIGSTOP)
/// until withdrawn, then resumes (SIGCONT) and is announced again; every
/// node gives the first backend twice the weight; node 0 is killed. The
/// new weights leave some flows on a backend that is no longer Maglev's
/// answer, and the kill moves about half of all flows to other nodes,
/// which only know those flows' backends through sync (Maglev's hard
/// case). In full-NAT every node also owns a SNAT address, announced as
/// the best route and the others' as a backup: the router hands a
/// departed node's address to the survivors.
fn fleet(service: Service, failures: &mut Vec<String>) {
    let mut c = Cluster::start(service, 4, 3, &[]);
    let label = service.label();
    if service.mode == LabMode::FullNat {
        // Each running node's address is its own; node 3's the others'
        // backups, merged into one multipath route.
        for i in 0..3 {
            c.wait_route(snat_of(i), &[i], Duration::from_secs(5));
        }
        c.wait_route(snat_of(3), &[0, 1, 2], Duration::from_secs(5));
    }
    let first = c.digests();
    let mut clients = c.clients();
    let mut scenario = |c: &mut Cluster, clients: &mut Clients, name: &str, after: Duration, action: &(dyn Fn(&mut Cluster) -> Option<Duration> + Sync)| {
        c.scenario(clients, name, after, expect(service, name), failures, action);
    };

    // With sync the new node is announced only once its peers' bulk
    // resync has had time to arrive (`Sync::settled`): the flows the
    // router moves to it find their entries.
    scenario(&mut c, &mut clients, "add a fourth", AFTER, &|c| {
        let lab = &c.lab;
        c.nodes[3].start_fulcrum(lab).expect("node 3");
        let route = c.wait_hops(&[0, 1, 2, 3], Duration::from_secs(5));
        c.follow_snat(3, &[3]);
        Some(route)
    });
    assert_eq!(c.digests(), first, "{label}: a node added with the same configuration builds the same table");

    scenario(&mut c, &mut clients, "drain", AFTER, &|c| {
        let (code, out, err) = daemon::cli(&["drain", "--socket", &c.nodes[2].socket.to_string_lossy()]);
        assert_eq!(code, Some(0), "fulcrum drain: {out}{err}");
        let route = c.wait_hops(&[0, 1, 3], Duration::from_secs(5));
        c.follow_snat(2, &[0, 1, 3]);
        Some(route)
    });
    let exited = c.nodes[2].fulcrum.as_mut().expect("node 2").wait_timeout(Duration::from_secs(10));
    assert!(exited.is_some_and(|s| s.success()), "{label}: the drained node should exit by itself:\n{}", c.nodes[2].output());

    // The helper gets no answer within bgp.timeout and withdraws; once
    // resumed the node answers and is announced again. The run is a
    // second longer: a flow the router moves back and the node no
    // longer carries has to be silent for `GIVE_UP` before it counts.
    scenario(&mut c, &mut clients, "SIGSTOP, then SIGCONT", AFTER + Duration::from_secs(1), &|c| {
        let node = c.nodes[1].fulcrum.as_ref().expect("node 1");
        node.signal(libc::SIGSTOP);
        let route = c.wait_hops(&[0, 3], Duration::from_secs(5));
        c.follow_snat(1, &[0, 3]);
        node.signal(libc::SIGCONT);
        let back = c.wait_hops(&[0, 1, 3], Duration::from_secs(5));
        eprintln!("ecmp {}: the resumed node is back in the route {back:?} after SIGCONT", c.service.label());
        c.follow_snat(1, &[1]);
        Some(route)
    });

    scenario(&mut c, &mut clients, "weight 2 on every node", AFTER, &|c| {
        for i in [0, 1, 3] {
            c.nodes[i].reweight(&c.lab, &[2, 1, 1]).expect("reload");
        }
        None
    });
    assert_ne!(c.digests(), first, "{label}: a changed weight changes the table's digest");

    scenario(&mut c, &mut clients, KILL, AFTER, &|c| {
        c.nodes[0].fulcrum.as_ref().expect("node 0").signal(libc::SIGKILL);
        let route = c.wait_hops(&[1, 3], Duration::from_secs(5));
        c.follow_snat(0, &[1, 3]);
        Some(route)
    });
    let synced: u64 = c.nodes.iter().filter_map(Node::sync_sent).sum();
    eprintln!("ecmp {label}: {synced} flow entries synced by the survivors (of {CONNECTIONS} connections and the new ones)");
}

/// The fleet's scenarios in dsr and ipip, each with and without sync,
/// side by side.
#[test]
fn dsr_and_ipip_fleets_grow_drain_hang_reweight_and_lose_nodes_with_and_without_sync() {
    require_root();
    let _serial = one_at_a_time();
    let mut failures = Vec::new();
    for mode in [LabMode::Dsr, LabMode::Ipip] {
        for sync in [true, false] {
            fleet(Service { mode, sync }, &mut failures);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The fleet's scenarios in full-NAT: each node opens flows from a SNAT
/// address of its own. With sync every node holds every flow, so none
/// breaks; without, the broken ones are recorded, side by side.
#[test]
fn full_nat_fleets_grow_drain_hang_reweight_and_lose_nodes_with_and_without_sync() {
    require_root();
    let _serial = one_at_a_time();
    let mut failures = Vec::new();
    for sync in [true, false] {
        fleet(Service { mode: LabMode::FullNat, sync }, &mut failures);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The next hop the router picks for each connection.
type Picks = Vec<Option<Ipv4Addr>>;

/// A route to one destination, over the same next hops as the others.
struct HashedRoute {
    name: &'static str,
    dst: Ipv4Addr,
    /// A resilient nexthop group (its id and timers), or a plain
    /// multipath route.
    group: Option<(u32, &'static [&'static str])>,
}

/// The router's choice of next hop for 600 connections (the lab's client
/// to 600 source ports) when a node is added to three and then two are
/// removed: through a plain multipath route (what BIRD 2.0 installs) and
/// through resilient nexthop groups, side by side: one with the kernel's
/// default timers (a bucket moves only once idle for 120 s, and `ip route
/// get` uses them), one with `idle_timer 0` (every bucket counts as idle).
/// A resilient group moves no flow between nodes that stay; a plain route
/// rehashes them. Routes only: no traffic flows.
#[test]
fn a_resilient_group_keeps_the_flows_of_the_nodes_that_stay() {
    require_root();
    let mut lab = Lab::new(Topology::OneArm).expect("lab");
    let router = Router::add(&mut lab).expect("router");
    // Four next-hop addresses on the router's network, nexthop objects 1-4.
    let all: Vec<Ipv4Addr> = (0..4).map(|i| Ipv4Addr::new(198, 18, 0, 150 + i)).collect();
    router.add_nexthops(&lab, 1, &all).expect("nexthop objects");
    let routes = [
        HashedRoute { name: "plain multipath", dst: Ipv4Addr::new(198, 18, 101, 1), group: None },
        HashedRoute { name: "resilient group", dst: Ipv4Addr::new(198, 18, 101, 2), group: Some((100, &[])) },
        HashedRoute { name: "resilient group, idle_timer 0", dst: Ipv4Addr::new(198, 18, 101, 3), group: Some((101, &["idle_timer", "0"])) },
    ];
    let ports: Vec<u16> = (0..CONNECTIONS as u16).map(|i| 20000 + i).collect();
    let steps: [(&str, Vec<Ipv4Addr>); 4] = [
        ("three", all[..3].to_vec()),
        ("a fourth added", all.clone()),
        ("the second of four removed", vec![all[0], all[2], all[3]]),
        ("the last of three removed", vec![all[0], all[2]]),
    ];
    let mut before: Option<(&[Ipv4Addr], Vec<Picks>)> = None;
    for (step, hops) in &steps {
        let members: Vec<u32> = hops.iter().filter_map(|h| all.iter().position(|a| a == h)).map(|i| 1 + i as u32).collect();
        for r in &routes {
            match r.group {
                None => router.set_multipath(&lab, r.dst, hops).expect("multipath route"),
                Some((group, timers)) => router.set_resilient(&lab, r.dst, group, timers, &members).expect("resilient group"),
            }
        }
        let now: Vec<Picks> = routes.iter().map(|r| router.picks(&lab, r.dst, &ports)).collect();
        for p in &now {
            assert!(p.iter().all(|h| h.is_some_and(|h| hops.contains(&h))), "{step}: every connection gets one of {hops:?}: {p:?}");
        }
        if let Some((old_hops, old)) = &before {
            // A flow moved between two nodes that are in the route before
            // and after: needless, and fatal to a flow Maglev cannot place.
            let stays = |h: &Option<Ipv4Addr>| h.is_some_and(|h| old_hops.contains(&h) && hops.contains(&h));
            let pct = |n: usize| 100.0 * n as f64 / CONNECTIONS as f64;
            for (i, HashedRoute { name, group, .. }) in routes.iter().enumerate() {
                let pairs = || old[i].iter().zip(&now[i]).filter(|(b, a)| b != a);
                let (moved, between) = (pairs().count(), pairs().filter(|(b, a)| stays(b) && stays(a)).count());
                eprintln!(
                    "ecmp next hops, {step}: {name} moved {moved} of {CONNECTIONS} ({:.0} %), {between} ({:.0} %) between nodes that stay",
                    pct(moved),
                    pct(between)
                );
                if group.is_some() {
                    assert_eq!(between, 0, "{step}: the {name} moved flows between nodes that stay");
                } else {
                    assert!(between > 0, "{step}: the plain route should rehash flows between nodes that stay");
                }
            }
        }
        before = Some((hops, now));
    }
}

/// The shipped BIRD configurations (router, and a node's BFD) are what
/// BIRD accepts.
#[test]
fn the_shipped_bird_configurations_parse() {
    for file in ["bird.conf", "bird-node.conf"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples/ecmp").join(file);
        let out = std::process::Command::new("bird").args(["-p", "-c"]).arg(&path).output().expect("bird (scripts/setup.sh installs bird2)");
        assert!(out.status.success(), "{file}: {}", String::from_utf8_lossy(&out.stderr));
    }
}
