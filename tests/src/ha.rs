//! An HA pair on the lab: two fulcrum daemons, each with its keepalived
//! in its own namespace, moving a gateway address (the client's and the
//! backends' route to the VIP) and the full-NAT source address; and a
//! client holding long-lived TCP connections that exchange a message every
//! 100 ms, measuring how long each one waited across a failover.

use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use fulcrum::control::api::{Request, Response};

use crate::daemon::{self, TempConfig, fulcrum_bin};
use crate::{Host, Lab, LabError, Proc, VIP4, in_netns};

/// What keepalived moves: the VIP's gateway and the SNAT address.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
pub const SNAT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 4);
/// The backends' TCP echo port, and the VIP's.
pub const ECHO_PORT: u16 = 9000;
const SYNC_PORT: u16 = 7788;
const KEY: &str = "lab-shared-secret-0123456789";

/// One balancer of the pair: its host, fulcrum and keepalived.
pub struct Node {
    pub host: Host,
    pub socket: PathBuf,
    pub fulcrum: Option<Proc>,
    pub keepalived: Option<Proc>,
    config: TempConfig,
    keepalived_conf: TempConfig,
}

/// `mode`: "full-nat" or "dsr". `peer`: the other node's address, for
/// sync (None: keepalived alone, the baseline).
fn fulcrum_config(lab: &Lab, host: &Host, mode: &str, socket: &str, peer: Option<Ipv4Addr>) -> String {
    let mut c = format!("[daemon]\ncontrol_socket = \"{socket}\"\nxdp_mode = \"auto\"\nworkers = {}\n\n", lab.queues);
    let _ = writeln!(c, "[[interface]]\nname = \"{}\"\nrole = \"one-arm\"\n", host.iface().name);
    let _ = writeln!(c, "[[vip]]\naddress = \"{VIP4}\"\nprotocol = \"tcp\"\nport = {ECHO_PORT}\nmode = \"{mode}\"");
    if mode == "full-nat" {
        let _ = writeln!(c, "snat = \"{SNAT}\"");
    }
    for b in &lab.backends {
        let _ = writeln!(c, "\n[[vip.backend]]\naddress = \"{}\"", b.iface().v4);
    }
    if let Some(peer) = peer {
        let _ = writeln!(c, "\n[sync]\nlisten = \"{}:{SYNC_PORT}\"\npeers = [\"{peer}:{SYNC_PORT}\"]\nkey = \"{KEY}\"", host.iface().v4);
    }
    c
}

/// keepalived as `config/examples/ha/keepalived.conf` has it, with the
/// lab's names: VRRPv3 adverts every 100 ms, the check every second.
fn keepalived_config(host: &Host, priority: u8, socket: &str) -> String {
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
vrrp_script fulcrum_alive {{
    script "{bin} status --socket {socket}"
    interval 1
    timeout 1
    fall 1
    rise 1
}}
vrrp_instance lb {{
    state BACKUP
    interface {iface}
    virtual_router_id 51
    priority {priority}
    advert_int 0.1
    virtual_ipaddress {{
        {GATEWAY}/24 dev {iface}
        {SNAT}/24 dev {iface}
    }}
    track_script {{
        fulcrum_alive
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
    /// keepalived on `host`.
    pub fn start(lab: &Lab, host: &Host, mode: &str, priority: u8, peer: Option<Ipv4Addr>) -> Result<Node, LabError> {
        let socket = daemon::control_socket();
        let config = TempConfig::new(&fulcrum_config(lab, host, mode, &socket, peer))?;
        let keepalived_conf = TempConfig::new(&keepalived_config(host, priority, &socket))?;
        let mut node = Node { host: host.clone(), socket: socket.into(), fulcrum: None, keepalived: None, config, keepalived_conf };
        node.start_fulcrum(lab)?;
        let conf = node.keepalived_conf.path_str().to_string();
        let (pid, vrrp_pid) = (format!("{conf}.pid"), format!("{conf}.vrrp.pid"));
        let k = lab.spawn(&host.ns, &["keepalived", "--dont-fork", "--log-console", "--vrrp", "-f", &conf, "-p", &pid, "-r", &vrrp_pid])?;
        node.keepalived = Some(k);
        Ok(node)
    }

    pub fn start_fulcrum(&mut self, lab: &Lab) -> Result<(), LabError> {
        let bin = fulcrum_bin();
        let p = lab.spawn(&self.host.ns, &[bin.to_str().unwrap_or_default(), "run", "--config", self.config.path_str()])?;
        p.wait_for_line(|l| l.starts_with("ready"), Duration::from_secs(20))
            .ok_or_else(|| LabError(format!("fulcrum on {} did not become ready:\n{}", self.host.name, p.output())))?;
        self.fulcrum = Some(p);
        Ok(())
    }

    /// The role fulcrum reports ("master", ...), None without sync or
    /// when it does not answer.
    pub fn role(&self) -> Option<String> {
        match fulcrum::control::client::request(&self.socket, &Request::Status) {
            Ok(Response::Status(s)) => s.ha.map(|h| h.role),
            _ => None,
        }
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

    /// Stops keepalived, then fulcrum.
    pub fn stop(&mut self) {
        self.stop_keepalived();
        self.fulcrum = None;
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
        Ok(Clients { conns })
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
            std::thread::sleep(every.saturating_sub(tick.elapsed()));
        }
        for c in &mut self.conns {
            c.read(&mut buf);
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

    pub fn outcome(&self) -> Outcome {
        let mut gaps: Vec<Duration> = self.conns.iter().map(|c| c.gap.max(c.last.elapsed())).collect();
        gaps.sort();
        Outcome {
            connections: self.conns.len(),
            broken: self.conns.iter().filter(|c| c.broken || c.last.elapsed() > GIVE_UP).count(),
            gaps,
            messages: self.conns.iter().map(|c| c.got as u64 / 8).sum(),
        }
    }
}

impl Conn {
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
