//! Floods from random sources and a storm of short connections, against
//! the daemon on the lab, while real clients connect: forged ACKs and
//! RSTs leave nat and full-NAT VIPs without a table entry or a source
//! port; a SYN flood on a nat or full-NAT VIP is answered by the SYN proxy
//! and reaches neither the table nor the backends; a SYN flood on a dsr
//! VIP keeps to the half-open cap and costs
//! real and established clients nothing; connections through one
//! full-NAT backend never meet a source (SNAT address and port) the
//! backend still holds in TIME_WAIT. Root only.
//!
//! The tests of this file run one at a time: each loads the machine.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fulcrum::control::api::{Request, Response, StatsReport};
use fulcrum_dataplane::wire::tcp::{ACK, RST, SYN};
use fulcrum_tests::daemon::{self, LabMode};
use fulcrum_tests::load::{Flood, Tally, with_clients};
use fulcrum_tests::{Lab, Topology, VIP4, ask_held, http_get, in_netns, require_root};

const SERVER: &str = env!("CARGO_BIN_EXE_lab-server");
/// Frames a second of every flood: what the balancer's debug build takes
/// in without its rx ring overflowing on these shared machines.
const FLOOD_RATE: u32 = 50_000;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn stats(socket: &Path) -> StatsReport {
    match daemon::ask(socket, Request::Stats) {
        Response::Stats(s) => s,
        other => panic!("stats: {other:?}"),
    }
}

/// A VIP's drops for `reason` (0 if none).
fn vip_drops(s: &StatsReport, vip: &str, reason: &str) -> u64 {
    s.vips.iter().find(|v| v.name == vip).unwrap_or_else(|| panic!("no vip {vip} in {s:?}")).drops.get(reason).copied().unwrap_or(0)
}

fn new_flows(s: &StatsReport, vip: &str) -> u64 {
    s.vips.iter().find(|v| v.name == vip).map_or(0, |v| v.traffic.new_flows)
}

/// Connection-table entries and evictions, summed over the workers.
fn table(s: &StatsReport) -> (u64, u64) {
    s.workers.iter().fold((0, 0), |(n, e), w| (n + w.connections, e + w.evictions))
}

/// `[[vip]]` on VIP4 and `port` over the lab backends `backends` (port 80
/// on each), with `extra` lines.
fn vip(lab: &Lab, port: u16, mode: &str, extra: &str, backends: &[usize]) -> String {
    let mut c = format!("[[vip]]\naddress = \"{VIP4}\"\nprotocol = \"tcp\"\nport = {port}\nmode = \"{mode}\"\n{extra}\n");
    for &i in backends {
        let _ = writeln!(c, "[[vip.backend]]\naddress = \"{}\"\nport = 80\n", lab.backends[i].iface().v4);
    }
    c
}

fn head(lab: &Lab, limits: &str) -> String {
    format!("[daemon]\ncontrol_socket = \"{}\"\nxdp_mode = \"auto\"\n\n{}\n[limits]\n{limits}\n\n", daemon::control_socket(), daemon::interfaces(lab))
}

/// The peers of `backend`'s TIME_WAIT sockets on port 80: how many per
/// peer address (the lab server listens on [::]: IPv4 peers are mapped).
fn time_wait_peers(lab: &Lab, backend: usize) -> BTreeMap<IpAddr, usize> {
    let out = lab.exec(&lab.backends[backend].ns, &["ss", "-Htn", "state", "time-wait", "sport", "= :80"]).expect("ss");
    let mut peers = BTreeMap::new();
    for line in out.lines() {
        let peer = line.split_whitespace().last().and_then(|p| p.parse::<SocketAddr>().ok()).unwrap_or_else(|| panic!("an ss line: {line}"));
        *peers.entry(peer.ip().to_canonical()).or_insert(0) += 1;
    }
    peers
}

/// Forged ACKs, then RSTs, from random sources at `target` while eight
/// clients connect: every one dropped as `no_state`, no entry (and so no
/// full-NAT source) made, no client fails.
fn ack_and_rst_floods(lab: &Lab, socket: &Path, target: SocketAddr, mode: &str) {
    const FRAMES: u32 = 100_000;
    let name = format!("{target}/tcp");
    let before = stats(socket);
    let ((), clients) = with_clients(lab, target, 8, CLIENT_TIMEOUT, || {
        for flags in [ACK, RST] {
            Flood { target, flags, frames: FRAMES, rate: FLOOD_RATE }.send(lab).expect("flood");
        }
    });
    let after = stats(socket);
    let summary = format!("{mode}: {clients:?}\nbefore: {before:?}\nafter: {after:?}");
    assert_eq!(clients.failed, 0, "{summary}");
    assert!(clients.ok > 0, "{summary}");
    // The flood reached the engine (a ring that overflowed would make
    // this test vacuous) and was refused.
    let refused = vip_drops(&after, &name, "no_state") - vip_drops(&before, &name, "no_state");
    assert!(refused >= u64::from(FRAMES) * 2 * 9 / 10, "{refused} of {} forged segments reached the engine\n{summary}", 2 * FRAMES);
    // Each real connection takes two entries (its flow and the reply
    // path); whatever else appeared would be the flood's.
    let ((n0, e0), (n1, e1)) = (table(&before), table(&after));
    assert!(n1 <= n0 + 2 * clients.ok, "{mode}: {} entries for {} connections\n{summary}", n1 - n0, clients.ok);
    assert_eq!(e1, e0, "{mode}: evictions\n{summary}");
    assert_eq!(vip_drops(&after, &name, "snat_exhausted"), 0, "{summary}");
    eprintln!("{mode}: {refused} forged segments refused, {} client connections, {} entries", clients.ok, n1 - n0);
}

/// `n` connections from the client to `target`, opened before a flood.
fn open_established(lab: &Lab, target: SocketAddr, n: usize) -> Vec<TcpStream> {
    in_netns(&lab.client.ns, || (0..n).map(|_| TcpStream::connect_timeout(&target, CLIENT_TIMEOUT).expect("an established connection")).collect())
        .expect("netns")
}

/// Backend sockets of port 80 in SYN_RECV, over all the lab's backends:
/// the half-open connections the backends hold.
fn backend_half_open(lab: &Lab) -> usize {
    (0..lab.backends.len()).map(|b| lab.exec(&lab.backends[b].ns, &["ss", "-Htn", "state", "syn-recv", "sport", "= :80"]).expect("ss").lines().count()).sum()
}

/// A flood of SYNs from random sources at a nat or full-NAT `target` whose
/// SYN proxy is engaged (`always`, or `auto` past `engaged_after`
/// half-open entries per worker), while 32 clients connect in a loop and
/// connections opened before wait to send their request: no client fails,
/// every established connection is answered, the balancer answers the
/// flood with cookies and keeps no entry for it, and the backends hold
/// no half-open socket from it (beyond what `auto` let through before it
/// engaged).
fn syn_flood_behind_the_proxy(lab: &Lab, socket: &Path, target: SocketAddr, engaged_after: u64) {
    const FRAMES: u32 = 100_000;
    let mut established = open_established(lab, target, 8);
    let before = stats(socket);
    let ((), clients) =
        with_clients(lab, target, 32, CLIENT_TIMEOUT, || Flood { target, flags: SYN, frames: FRAMES, rate: FLOOD_RATE }.send(lab).expect("flood"));
    // The clients' own handshakes are long done; the flood's would last a
    // minute (its sources never answer the SYN-ACKs).
    let half_open = backend_half_open(lab);
    let after = stats(socket);
    let workers = after.workers.len() as u64;
    let summary = format!(
        "{target}: {clients:?}, {half_open} half-open on the backends
before: {before:?}
after: {after:?}"
    );
    assert_eq!(clients.failed, 0, "{summary}");
    assert!(clients.ok > 0, "{summary}");
    let cookies = after.syn_cookies_sent - before.syn_cookies_sent;
    assert!(
        cookies >= u64::from(FRAMES) * 9 / 10 - engaged_after * workers,
        "{cookies} cookies for {FRAMES} forged SYNs
{summary}"
    );
    assert!(
        half_open as u64 <= engaged_after * workers,
        "the flood reached the backends
{summary}"
    );
    let ((n0, e0), (n1, e1)) = (table(&before), table(&after));
    assert!(
        n1 <= n0 + 2 * (clients.ok + engaged_after * workers),
        "{} entries for {} connections
{summary}",
        n1 - n0,
        clients.ok
    );
    assert_eq!(
        e1, e0,
        "evictions
{summary}"
    );
    eprintln!("held connections served by {:?}", ask_held(&mut established, CLIENT_TIMEOUT));
    eprintln!("SYN flood behind the proxy on {target}: {cookies} cookies, {} client connections, {half_open} half-open on the backends", clients.ok);
}

/// In nat and full-NAT modes (inline: both on one lab, full-NAT over four
/// source addresses on the server side): forged ACKs and RSTs, then SYN
/// floods behind the SYN proxy (always on the nat VIP, auto on full-NAT).
#[test]
fn ack_rst_and_syn_floods_leave_no_entry_and_take_no_source_in_nat_modes() {
    require_root();
    let _serial = one_at_a_time();
    let mut lab = Lab::new(Topology::Inline).expect("lab");
    let snat: Vec<IpAddr> = (200..204).map(|i| IpAddr::V4(Ipv4Addr::new(198, 18, 2, i))).collect();
    daemon::add_snat_addrs(&lab, &snat).expect("SNAT addresses");
    daemon::start_servers(&mut lab, SERVER.as_ref(), false, &[]).expect("servers");
    let all = [0, 1, 2];
    // And a VIP whose SNAT address the host does not have: the daemon
    // must say so (its flows would never see a reply).
    let foreign = format!("[[vip]]\naddress = \"{VIP4}\"\nprotocol = \"udp\"\nport = 9000\nmode = \"full-nat\"\nsnat = \"198.18.2.250\"\nbackend = []\n");
    const AUTO_ABOVE: u64 = 64;
    let config = head(&lab, &format!("syn_proxy_above = {AUTO_ABOVE}"))
        + &vip(&lab, 80, "nat", "syn_proxy = \"always\"", &all)
        + &vip(&lab, 8080, "full-nat", "snat = \"198.18.2.200/30\"", &all)
        + &foreign;
    let (d, _file) = daemon::start(&lab, &config).expect("daemon");
    let warned = |a: &str| d.output().contains(&format!("snat {a} is not an address of this host"));
    assert!(warned("198.18.2.250") && !snat.iter().any(|a| warned(&a.to_string())), "{}", d.output());
    let socket = daemon::socket_of(&config);
    ack_and_rst_floods(&lab, &socket, SocketAddr::new(IpAddr::V4(VIP4), 80), "nat");
    ack_and_rst_floods(&lab, &socket, SocketAddr::new(IpAddr::V4(VIP4), 8080), "full-nat");
    syn_flood_behind_the_proxy(&lab, &socket, SocketAddr::new(IpAddr::V4(VIP4), 80), 0);
    syn_flood_behind_the_proxy(&lab, &socket, SocketAddr::new(IpAddr::V4(VIP4), 8080), AUTO_ABOVE);
    // The full-NAT clients reached the backends from every SNAT address
    // (the backends' TIME_WAIT sockets name them): each is steered to
    // the engine and answered for by the balancer's kernel.
    let peers: BTreeSet<IpAddr> = (0..3).flat_map(|b| time_wait_peers(&lab, b).into_keys()).collect();
    let summary = daemon::stop(d).expect("daemon stop");
    assert!(snat.iter().all(|a| peers.contains(a)), "backends saw {peers:?}, not all of {snat:?}\n{summary}");
}

/// A flood of `frames` SYNs from random sources at `target` while 32
/// clients connect in a loop and `established` connections opened before
/// wait to send their request: no client fails, every established one is
/// answered, and the table holds no more than the half-open cap of the
/// flood. For any VIP whose SYNs go on without state past a cap (dsr and
/// tunnel); a VIP behind the SYN proxy makes no entry at all and counts
/// cookies instead: its test floods and connects the same way (`Flood`,
/// `with_clients`) and checks those counters.
fn syn_flood_past_the_half_open_cap(lab: &Lab, socket: &Path, target: SocketAddr, frames: u32, half_open_cap: u64) {
    const ESTABLISHED: usize = 8;
    let name = format!("{target}/tcp");
    let mut established = open_established(lab, target, ESTABLISHED);
    let before = stats(socket);
    let ((), clients) = with_clients(lab, target, 32, CLIENT_TIMEOUT, || Flood { target, flags: SYN, frames, rate: FLOOD_RATE }.send(lab).expect("flood"));
    let after = stats(socket);
    let summary = format!("{clients:?}\nbefore: {before:?}\nafter: {after:?}");
    assert_eq!(clients.failed, 0, "{summary}");
    assert!(clients.ok > 0, "{summary}");
    // The flood reached the engine (a ring that overflowed would make
    // this test vacuous): a real connection counts at most twice (its SYN
    // past the cap, then its ACK placing the flow), the rest is the flood.
    let without_state = after.syns_without_state - before.syns_without_state;
    let with_entry = new_flows(&after, &name) - new_flows(&before, &name);
    let flood = (without_state + with_entry).saturating_sub(2 * clients.ok);
    assert!(flood >= u64::from(frames) * 9 / 10, "{flood} of {frames} forged SYNs reached the engine\n{summary}");
    // Each worker keeps at most the cap of half-open entries; the rest are
    // the real clients' (one entry each).
    let ((n0, e0), (n1, e1)) = (table(&before), table(&after));
    let workers = after.workers.len() as u64;
    assert!(n1 <= n0 + half_open_cap * workers + clients.ok, "{} entries\n{summary}", n1 - n0);
    assert_eq!(e1, e0, "established flows were evicted\n{summary}");
    eprintln!("held connections served by {:?}", ask_held(&mut established, CLIENT_TIMEOUT));
    eprintln!("SYN flood: {without_state} SYNs without state, {with_entry} with an entry, {} client connections, {} entries", clients.ok, n1 - n0);
}

/// Short connections to `target` (full-NAT to one backend) from many
/// client threads until `total` or `deadline`: how many succeeded, the
/// failures, and when each success ended.
fn connection_storm(lab: &Lab, target: SocketAddr, threads: usize, total: u64, deadline: Duration) -> (Tally, Vec<Instant>) {
    let started = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        let loops: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    in_netns(&lab.client.ns, || {
                        let (mut t, mut ends) = (Tally::default(), Vec::new());
                        while started.fetch_add(1, Ordering::Relaxed) < total && start.elapsed() < deadline {
                            match http_get(target, "/", CLIENT_TIMEOUT) {
                                Ok((200, _)) => {
                                    t.ok += 1;
                                    ends.push(Instant::now());
                                }
                                other => {
                                    t.failed += 1;
                                    if t.errors.len() < 10 {
                                        t.errors.push(format!("{other:?}"));
                                    }
                                }
                            }
                        }
                        (t, ends)
                    })
                    .expect("netns")
                })
            })
            .collect();
        let (mut tally, mut ends) = (Tally::default(), Vec::new());
        for l in loops {
            let (t, e) = l.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            tally.ok += t.ok;
            tally.failed += t.failed;
            tally.errors.extend(t.errors);
            ends.extend(e);
        }
        (tally, ends)
    })
}

/// Many connections through one full-NAT backend, more than one SNAT
/// address's ports serve within the quarantine: none fails, and the
/// backend's TIME_WAIT sockets show that no source (address and port) was
/// given twice within it. The backend closes first (the lab server does),
/// so it is the one holding TIME_WAIT, keyed by the balancer's source;
/// the client holds none and reuses its own ports at will.
fn port_reuse(lab: &Lab, socket: &Path, target: SocketAddr, snat: &[IpAddr], ports_per_worker: u64) {
    const TOTAL: u64 = 200_000;
    const DEADLINE: Duration = Duration::from_secs(60);
    // TIME_WAIT lasts 60 s on Linux; connections that ended within the
    // last 55 s (clocks and the ss listing apart) all still have theirs.
    const WINDOW: Duration = Duration::from_secs(55);
    let backend = 0;
    lab.exec(&lab.backends[backend].ns, &["sysctl", "-qw", "net.ipv4.tcp_max_tw_buckets=1000000"]).expect("sysctl");
    let start = Instant::now();
    let (tally, ends) = connection_storm(lab, target, 32, TOTAL, DEADLINE);
    let took = start.elapsed();
    let peers = time_wait_peers(lab, backend);
    let listed = Instant::now();
    let s = stats(socket);
    let name = format!("{target}/tcp");
    let recent = ends.iter().filter(|&&t| listed.duration_since(t) < WINDOW).count();
    let from_snat: usize = snat.iter().map(|a| peers.get(a).copied().unwrap_or(0)).sum();
    let summary = format!(
        "{} connections in {took:.1?} ({:.0}/s), {recent} within {WINDOW:?} of the listing; TIME_WAIT peers {peers:?}\n{tally:?}\n{s:?}",
        tally.ok,
        tally.ok as f64 / took.as_secs_f64()
    );
    eprintln!("port reuse: {summary}");
    assert_eq!(tally.failed, 0, "{summary}");
    assert_eq!(vip_drops(&s, &name, "snat_exhausted"), 0, "{summary}");
    // More connections than one address's ports serve in a quarantine:
    // without several addresses, sources would have been reused or
    // refused.
    assert!(recent as u64 > ports_per_worker, "only {recent} connections within the window: one address would do\n{summary}");
    // Every recent connection left a TIME_WAIT socket of its own: a
    // source given twice would have met (and ended) its predecessor's.
    assert!(from_snat >= recent, "{from_snat} TIME_WAIT sockets for {recent} connections: sources were reused\n{summary}");
    assert!(snat.iter().all(|a| peers.contains_key(a)), "not every SNAT address was used\n{summary}");
}

/// A SYN flood on a dsr VIP, then a storm of connections through one
/// full-NAT backend over eight SNAT addresses (a prefix), on one lab and
/// daemon (one-arm: the backends hold the VIP for dsr; the full-NAT VIP
/// is another port of it).
#[test]
fn a_syn_flood_on_dsr_then_a_connection_storm_through_one_full_nat_backend() {
    require_root();
    let _serial = one_at_a_time();
    const HALF_OPEN: u64 = 1000;
    let mut lab = Lab::new(Topology::OneArm).expect("lab");
    let _none = daemon::prepare_hosts(&mut lab, LabMode::Dsr).expect("dsr backends");
    let snat: Vec<IpAddr> = (208..216).map(|i| IpAddr::V4(Ipv4Addr::new(198, 18, 0, i))).collect();
    daemon::add_snat_addrs(&lab, &snat).expect("SNAT addresses");
    daemon::start_servers(&mut lab, SERVER.as_ref(), true, &[]).expect("servers");
    let config = head(&lab, &format!("half_open_per_vip = {HALF_OPEN}"))
        + &vip(&lab, 80, "dsr", "", &[0, 1, 2])
        + &vip(&lab, 8080, "full-nat", "snat = \"198.18.0.208/29\"", &[0]);
    let (d, _file) = daemon::start(&lab, &config).expect("daemon");
    let socket = daemon::socket_of(&config);
    syn_flood_past_the_half_open_cap(&lab, &socket, SocketAddr::new(IpAddr::V4(VIP4), 80), 100_000, HALF_OPEN);
    let workers = stats(&socket).workers.len() as u64;
    port_reuse(&lab, &socket, SocketAddr::new(IpAddr::V4(VIP4), 8080), &snat, 64_512 / workers);
    daemon::stop(d).expect("daemon stop");
}
