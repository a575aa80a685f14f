//! An HA pair on the lab: two fulcrum daemons, each with its keepalived
//! in its own namespace, moving a gateway address (the client's and the
//! backends' route to the VIP) and the full-NAT source address; and a
//! client holding long-lived TCP connections that exchange a message every
//! 100 ms, measuring how long each one waited across a failover.

use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use fulcrum::control::api::{HaStatus, Request, Response};

use crate::daemon::{self, TempConfig, fulcrum_bin};
use crate::{Host, Lab, LabError, Proc, VIP4, in_netns};

/// What keepalived moves: the VIP's gateway and the SNAT address.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
pub const SNAT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 4);
/// The backends' TCP echo port, and the VIP's.
pub const ECHO_PORT: u16 = 9000;
/// The lab server's UDP echo port, and the UDP VIP's.
pub const UDP_ECHO_PORT: u16 = 7;
const SYNC_PORT: u16 = 7788;
const KEY: &str = "lab-shared-secret-0123456789";

/// One balancer of the pair: its host, fulcrum and keepalived.
pub struct Node {
    pub host: Host,
    pub socket: PathBuf,
    pub fulcrum: Option<Proc>,
    pub keepalived: Option<Proc>,
    /// `fulcrum ha watch`, writing the file keepalived tracks (`fit`).
    watch: Option<Proc>,
    fit: PathBuf,
    config: TempConfig,
    keepalived_conf: TempConfig,
}

/// How a pair syncs its flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// keepalived alone: the baseline.
    Off,
    /// To the other balancer's address.
    Unicast,
    /// To a multicast group both join.
    Multicast,
}

/// What a pair's daemons forward, the same on both.
#[derive(Clone, Debug)]
pub struct Service {
    /// "nat" (inline: the backends' route to the client is the gateway),
    /// "full-nat" or "dsr".
    pub mode: &'static str,
    /// A scheduler plugin (.wasm) for the TCP VIP, or Maglev.
    pub scheduler: Option<PathBuf>,
    pub sync: SyncMode,
}

const SYNC_GROUP: Ipv4Addr = Ipv4Addr::new(239, 18, 0, 1);

/// A TCP VIP (the echo port) and a UDP one (the lab server's UDP echo),
/// both with the three backends. `peer`: the other balancer's address.
fn fulcrum_config(lab: &Lab, host: &Host, service: &Service, socket: &str, peer: Ipv4Addr) -> String {
    let mode = service.mode;
    let mut c = format!("[daemon]\ncontrol_socket = \"{socket}\"\nxdp_mode = \"auto\"\nworkers = {}\n\n", lab.queues);
    let _ = writeln!(c, "[[interface]]\nname = \"{}\"\nrole = \"one-arm\"\n", host.iface().name);
    for (protocol, port) in [("tcp", ECHO_PORT), ("udp", UDP_ECHO_PORT)] {
        let _ = writeln!(c, "[[vip]]\naddress = \"{VIP4}\"\nprotocol = \"{protocol}\"\nport = {port}\nmode = \"{mode}\"");
        if mode == "full-nat" {
            let _ = writeln!(c, "snat = \"{SNAT}\"");
        }
        if let (Some(plugin), "tcp") = (&service.scheduler, protocol) {
            let _ = writeln!(c, "scheduler = \"{}\"", plugin.display());
        }
        for b in &lab.backends {
            let _ = writeln!(c, "\n[[vip.backend]]\naddress = \"{}\"", b.iface().v4);
        }
        c.push('\n');
    }
    let listen = format!("listen = \"{}:{SYNC_PORT}\"\nkey = \"{KEY}\"", host.iface().v4);
    match service.sync {
        SyncMode::Off => {}
        SyncMode::Unicast => {
            let _ = writeln!(c, "[sync]\n{listen}\npeers = [\"{peer}:{SYNC_PORT}\"]");
        }
        SyncMode::Multicast => {
            let _ = writeln!(c, "[sync]\n{listen}\ngroup = \"{SYNC_GROUP}\"");
        }
    }
    c
}

/// keepalived as `config/examples/ha/keepalived.conf` has it, with the
/// lab's names: VRRPv3 adverts every 100 ms, fulcrum tracked through the
/// file `fulcrum ha watch` keeps (`fit`), no preemption. The lab has no
/// `track_process`: one `fulcrum` binary serves every namespace, so a
/// process name cannot tell the pair's daemons apart. The gateway is the
/// VIP's route and, for inline NAT, the backends' route to the client.
fn keepalived_config(host: &Host, priority: u8, socket: &str, fit: &str) -> String {
    let bin = fulcrum_bin();
    let bin = bin.display();
    let iface = &host.iface().name;
    format!(
        r#"global_defs {{
    router_id {name}
    script_user root
    vrrp_version 3
    vrrp_garp_master_repeat 3
    vrrp_garp_master_refresh 10
}}
track_file fulcrum_fit {{
    file "{fit}"
    weight 0
    init_file 1 overwrite
}}
vrrp_instance lb {{
    state BACKUP
    nopreempt
    interface {iface}
    virtual_router_id 51
    priority {priority}
    advert_int 0.1
    virtual_ipaddress {{
        {GATEWAY}/24 dev {iface}
        {SNAT}/24 dev {iface}
    }}
    track_file {{
        fulcrum_fit
    }}
    notify_master "{bin} ha role master --socket {socket}"
    notify_backup "{bin} ha role backup --socket {socket}"
    notify_fault "{bin} ha role fault --socket {socket}"
}}
"#,
        name = host.name
    )
}

impl Node {
    /// Starts fulcrum (a backup until keepalived says otherwise) and
    /// keepalived on `host`, whose pair's other balancer is `peer`.
    pub fn start(lab: &Lab, host: &Host, service: &Service, priority: u8, peer: Ipv4Addr) -> Result<Node, LabError> {
        let socket = daemon::control_socket();
        let config = TempConfig::new(&fulcrum_config(lab, host, service, &socket, peer))?;
        let fit = format!("{}.fit", config.path_str());
        let keepalived_conf = TempConfig::new(&keepalived_config(host, priority, &socket, &fit))?;
        let mut node = Node {
            host: host.clone(),
            socket: socket.clone().into(),
            fulcrum: None,
            keepalived: None,
            watch: None,
            fit: fit.clone().into(),
            config,
            keepalived_conf,
        };
        node.start_fulcrum(lab)?;
        let bin = fulcrum_bin();
        node.watch = Some(lab.spawn(&host.ns, &[bin.to_str().unwrap_or_default(), "ha", "watch", "--file", &fit, "--socket", &socket])?);
        let conf = node.keepalived_conf.path_str().to_string();
        let (pid, vrrp_pid) = (format!("{conf}.pid"), format!("{conf}.vrrp.pid"));
        let k = lab.spawn(&host.ns, &["keepalived", "--dont-fork", "--log-console", "--vrrp", "-f", &conf, "-p", &pid, "-r", &vrrp_pid])?;
        node.keepalived = Some(k);
        Ok(node)
    }

    pub fn start_fulcrum(&mut self, lab: &Lab) -> Result<(), LabError> {
        self.fulcrum = Some(daemon::run_in(lab, &self.host.ns, &self.config)?);
        Ok(())
    }

    /// What fulcrum reports of its pair; None without sync or when it
    /// does not answer.
    pub fn ha(&self) -> Option<HaStatus> {
        match fulcrum::control::client::request(&self.socket, &Request::Status) {
            Ok(Response::Status(s)) => s.ha,
            _ => None,
        }
    }

    /// The role fulcrum reports ("master", ...).
    pub fn role(&self) -> Option<String> {
        self.ha().map(|h| h.role)
    }

    /// `fulcrum ha role ROLE`, as an operator runs it.
    pub fn set_role(&self, lab: &Lab, role: &str) -> Result<String, LabError> {
        let bin = fulcrum_bin();
        let socket = self.socket.to_string_lossy();
        lab.exec(&self.host.ns, &[bin.to_str().unwrap_or_default(), "ha", "role", role, "--socket", &socket])
    }

    /// Whether keepalived holds the gateway address here.
    pub fn holds_gateway(&self, lab: &Lab) -> bool {
        lab.exec(&self.host.ns, &["ip", "-4", "addr", "show", "dev", &self.host.iface().name]).is_ok_and(|out| out.contains(&format!("{GATEWAY}/")))
    }

    /// Stops keepalived cleanly: it gives up the addresses at once
    /// (priority 0) and its notify makes fulcrum a backup.
    pub fn stop_keepalived(&mut self) {
        if let Some(mut k) = self.keepalived.take() {
            k.signal(libc::SIGTERM);
            let _ = k.wait_timeout(Duration::from_secs(5));
        }
    }

    /// Stops keepalived, then fulcrum and its watcher.
    pub fn stop(&mut self) {
        self.stop_keepalived();
        self.fulcrum = None;
        self.watch = None;
        let _ = std::fs::remove_file(&self.fit);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until `f` holds, polling every 50 ms.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Result<Duration, LabError> {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > timeout {
            return Err(LabError(format!("{what}: not within {timeout:?}")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(start.elapsed())
}

/// What happened to the connections across the run.
#[derive(Debug, Default)]
pub struct Outcome {
    pub connections: usize,
    /// Reset, closed or silent for longer than the give-up time.
    pub broken: usize,
    /// Per connection, the longest time between two answered messages,
    /// sorted.
    pub gaps: Vec<Duration>,
    pub messages: u64,
    /// The UDP stream: datagrams answered, and the longest time between
    /// two answers (or since the last).
    pub udp_answered: u64,
    pub udp_gap: Duration,
}

impl Outcome {
    pub fn quantile(&self, q: f64) -> Duration {
        let i = ((self.gaps.len() as f64 * q).ceil() as usize).clamp(1, self.gaps.len().max(1)) - 1;
        self.gaps.get(i).copied().unwrap_or_default()
    }
}

/// Long-lived connections through the VIP, each sending an 8-byte
/// message every `every` and reading its echo.
pub struct Clients {
    conns: Vec<Conn>,
    udp: Option<UdpStream>,
}

/// A UDP flow through the UDP VIP: one datagram per tick, its echo read.
struct UdpStream {
    s: UdpSocket,
    answered: u64,
    last: Instant,
    gap: Duration,
}

struct Conn {
    s: TcpStream,
    sent: u64,
    got: usize,
    /// When the last complete echo arrived (or the connection opened).
    last: Instant,
    gap: Duration,
    broken: bool,
}

/// A connection silent this long at the end of a run (a message
/// outstanding) is broken: a balancer without its state drops it
/// silently, and TCP would only give up after minutes.
const GIVE_UP: Duration = Duration::from_secs(3);

impl Clients {
    /// Opens `n` connections from the client namespace.
    pub fn open(lab: &Lab, n: usize) -> Result<Clients, LabError> {
        Clients::open_from(&lab.client.ns, n)
    }

    /// Opens `n` connections from namespace `ns`.
    pub fn open_from(ns: &str, n: usize) -> Result<Clients, LabError> {
        let addr = SocketAddr::from((VIP4, ECHO_PORT));
        let conns = in_netns(ns, || {
            (0..n)
                .map(|_| {
                    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
                    s.set_nodelay(true)?;
                    s.set_nonblocking(true)?;
                    Ok(Conn { s, sent: 0, got: 0, last: Instant::now(), gap: Duration::ZERO, broken: false })
                })
                .collect::<std::io::Result<Vec<Conn>>>()
        })
        .map_err(|e| LabError(format!("entering the client namespace: {e}")))?
        .map_err(|e| LabError(format!("connecting to {addr}: {e}")))?;
        Ok(Clients { conns, udp: None })
    }

    /// Adds a UDP stream to the UDP VIP, sending at every tick of `run`.
    pub fn add_udp(&mut self, lab: &Lab) -> Result<(), LabError> {
        let s = in_netns(&lab.client.ns, || {
            // Not connected: a DSR backend answers from its own address.
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            s.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(s)
        })
        .map_err(|e| LabError(format!("entering the client namespace: {e}")))?
        .map_err(|e| LabError(format!("UDP socket to {VIP4}:{UDP_ECHO_PORT}: {e}")))?;
        self.udp = Some(UdpStream { s, answered: 0, last: Instant::now(), gap: Duration::ZERO });
        Ok(())
    }

    /// Closes every connection and waits (up to `timeout`) for the
    /// backends to close theirs, so that none is left open on a backend
    /// when the balancers stop: a later full-NAT flow would find its
    /// source port still taken there.
    pub fn close(mut self, timeout: Duration) {
        let end = Instant::now() + timeout;
        for c in &mut self.conns {
            let _ = c.s.shutdown(std::net::Shutdown::Write);
        }
        let mut buf = [0u8; 4096];
        while Instant::now() < end && self.conns.iter().any(|c| !c.broken) {
            for c in self.conns.iter_mut().filter(|c| !c.broken) {
                // An end of stream is what this waits for.
                c.read(&mut buf);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Takes `other`'s connections into this set.
    pub fn merge(&mut self, other: Clients) {
        self.conns.extend(other.conns);
    }

    /// Exchanges messages for `d`, one per connection every `every`.
    pub fn run(&mut self, d: Duration, every: Duration) {
        let end = Instant::now() + d;
        let mut buf = [0u8; 4096];
        while Instant::now() < end {
            let tick = Instant::now();
            for c in self.conns.iter_mut().filter(|c| !c.broken) {
                c.read(&mut buf);
                if !c.broken && c.got as u64 / 8 >= c.sent {
                    // One message in flight at a time: a stalled connection
                    // is not flooded with a backlog.
                    match c.s.write(&c.sent.to_be_bytes()) {
                        Ok(8) => c.sent += 1,
                        Ok(_) => c.broken = true,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(_) => c.broken = true,
                    }
                }
            }
            if let Some(u) = &mut self.udp {
                u.read(&mut buf);
                // A lost datagram is the stream's loss, not an error.
                let _ = u.s.send_to(&u.answered.to_be_bytes(), (VIP4, UDP_ECHO_PORT));
            }
            std::thread::sleep(every.saturating_sub(tick.elapsed()));
        }
        for c in &mut self.conns {
            c.read(&mut buf);
        }
        if let Some(u) = &mut self.udp {
            u.read(&mut buf);
        }
    }

    /// Starts measuring gaps afresh, from now (for the next scenario on
    /// the same connections).
    pub fn reset_gaps(&mut self) {
        for c in &mut self.conns {
            c.gap = Duration::ZERO;
            c.last = Instant::now();
        }
    }

    /// The client's port of each connection.
    pub fn ports(&self) -> Vec<u16> {
        self.conns.iter().filter_map(|c| c.s.local_addr().ok()).map(|a| a.port()).collect()
    }

    /// Per connection, whether it is broken now: reset, closed, or
    /// silent for longer than the give-up time.
    pub fn broken(&self) -> Vec<bool> {
        self.conns.iter().map(Conn::is_broken).collect()
    }

    pub fn outcome(&self) -> Outcome {
        let mut gaps: Vec<Duration> = self.conns.iter().map(|c| c.gap.max(c.last.elapsed())).collect();
        gaps.sort();
        Outcome {
            connections: self.conns.len(),
            broken: self.conns.iter().filter(|c| c.is_broken()).count(),
            gaps,
            messages: self.conns.iter().map(|c| c.got as u64 / 8).sum(),
            udp_answered: self.udp.as_ref().map_or(0, |u| u.answered),
            udp_gap: self.udp.as_ref().map_or(Duration::ZERO, |u| u.gap.max(u.last.elapsed())),
        }
    }
}

impl UdpStream {
    fn read(&mut self, buf: &mut [u8]) {
        while let Ok((n, _)) = self.s.recv_from(buf) {
            if n > 0 {
                self.answered += 1;
                self.gap = self.gap.max(self.last.elapsed());
                self.last = Instant::now();
            }
        }
    }
}

/// How long after `since` a new connection to the TCP VIP first succeeds,
/// trying every `every` (each attempt given as long); None if none did
/// within `timeout`.
pub fn first_new_connection(lab: &Lab, since: Instant, every: Duration, timeout: Duration) -> Option<Duration> {
    let addr = SocketAddr::from((VIP4, ECHO_PORT));
    in_netns(&lab.client.ns, || {
        while since.elapsed() < timeout {
            let attempt = Instant::now();
            if TcpStream::connect_timeout(&addr, every).is_ok() {
                return Some(since.elapsed());
            }
            std::thread::sleep(every.saturating_sub(attempt.elapsed()));
        }
        None
    })
    .ok()
    .flatten()
}

impl Conn {
    fn is_broken(&self) -> bool {
        self.broken || self.last.elapsed() > GIVE_UP
    }

    fn read(&mut self, buf: &mut [u8]) {
        loop {
            match self.s.read(buf) {
                Ok(0) => {
                    self.broken = true;
                    return;
                }
                Ok(n) => {
                    let before = self.got / 8;
                    self.got += n;
                    if self.got / 8 > before {
                        self.gap = self.gap.max(self.last.elapsed());
                        self.last = Instant::now();
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.broken = true;
                    return;
                }
            }
        }
    }
}
