//! The network-namespace lab for fulcrum's end-to-end tests and
//! measurements.
//!
//! [`Lab::new`] builds a client, a balancer and three backends, each in its
//! own namespace, in one of two topologies:
//!
//! ```text
//! one-arm:  client ─┐                       inline:  client ── balancer ─┐
//!           balancer├─ br0 (own namespace)                  eth0   eth1  ├─ br0 ─ backends
//!           backends┘                                                    ┘
//! ```
//!
//! Names are `fl-<pid>-<n>-<role>`, so parallel tests never collide;
//! everything (processes, XDP programs, namespaces and so their veths) is
//! removed when the `Lab` is dropped, which also happens when a test panics
//! or when building it fails half way. Labs left behind by a killed test
//! process are removed by the next `Lab::new`.
//!
//! Addresses come only from 198.18.0.0/15 and 2001:db8::/32. Every veth has
//! tx checksum offload and GRO off and `gso_max_segs 1`, so frames carry full
//! checksums and never exceed one MTU (an AF_XDP frame is 2 KiB), and
//! `Lab::queues` rx/tx queues.

pub mod daemon;
pub mod ecmp;
pub mod ha;
pub mod load;
mod net;
mod proc;
pub mod servers;
pub mod xdp;

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use fulcrum_io::XdpMode;

use crate::xdp::{PassProgram, TxQueueProgram};

pub use net::{HttpResponse, ask_held, http_answers, http_get, http_request, in_netns, udp_echo};
pub use proc::Proc;

/// A failure to build or drive the lab, with the command and its output.
#[derive(Debug)]
pub struct LabError(pub String);

impl fmt::Display for LabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LabError {}

/// Panics with a clear message unless the process can build labs: lab
/// tests must fail, not skip silently, when run without privileges.
pub fn require_root() {
    if !fulcrum_io::unix::is_root() {
        panic!(
            "lab tests create network namespaces and attach XDP programs: they need root \
             (CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF). Run them as root, e.g. `sudo -E cargo test -p fulcrum-tests`."
        );
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// Every host on one bridge; the balancer has one interface.
    OneArm,
    /// client ─ balancer eth0; balancer eth1 ─ bridge ─ backends. Backends
    /// route the client network through the balancer.
    Inline,
}

/// One interface of a lab host.
#[derive(Clone, Debug)]
pub struct Iface {
    pub name: String,
    pub mac: [u8; 6],
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

impl Iface {
    pub fn mac_string(&self) -> String {
        let m = self.mac;
        format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

/// A host: its namespace and interfaces (`ifaces[0]` faces the client side).
#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    pub ns: String,
    pub ifaces: Vec<Iface>,
}

impl Host {
    pub fn iface(&self) -> &Iface {
        &self.ifaces[0]
    }
}

/// The VIPs every lab routes to the balancer.
pub const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 1);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);

const PREFIX: &str = "fl-";
static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

pub struct Lab {
    pub topology: Topology,
    pub client: Host,
    pub balancer: Host,
    pub backends: Vec<Host>,
    /// Namespace holding the bridge.
    pub bridge_ns: String,
    /// Rx (and tx) queues of every veth: 2 where the machine has 2 CPUs,
    /// so flows spread over queues as on a multi-queue NIC (a new veth
    /// has a single active queue). Only a direct veth spreads them: frames
    /// forwarded by the bridge all reach the balancer on queue 0, so in
    /// one-arm one worker gets all the traffic, inline the client side
    /// uses every queue.
    pub queues: u32,
    // Dropped in this order: processes, XDP programs, then namespaces.
    procs: Vec<Proc>,
    /// Balancers added to the one-arm bridge (`add_balancer`), for HA pairs.
    pub standbys: Vec<Host>,
    /// Per bridged host interface (namespace, interface): its port on the
    /// bridge.
    bridge_ports: Vec<((String, String), String)>,
    /// Per backend (as in `backends`): its lab server, if running, and the
    /// arguments it was started with, to start it again.
    servers: Vec<(Vec<String>, Option<Proc>)>,
    xdp: Vec<PassProgram>,
    /// The client's queue-by-flow program (inline).
    tc: Vec<TxQueueProgram>,
    namespaces: Vec<String>,
}

/// One end of a veth pair.
#[derive(Clone, Copy)]
struct End<'a> {
    ns: &'a str,
    dev: &'a str,
    mac: Option<&'a Iface>,
}

impl<'a> End<'a> {
    fn host(h: &'a Host, ifidx: usize) -> End<'a> {
        let ifc = &h.ifaces[ifidx];
        End { ns: &h.ns, dev: &ifc.name, mac: Some(ifc) }
    }
}

fn mac(host: u8, port: u8) -> [u8; 6] {
    [0x02, 0xf1, 0, 0, host, port]
}

fn v6(net: u16, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, net, 0, 0, 0, 0, host)
}

impl Lab {
    pub fn new(topology: Topology) -> Result<Lab, LabError> {
        remove_stale_labs();
        let id = format!("{PREFIX}{}-{}-", std::process::id(), LAB_COUNTER.fetch_add(1, Ordering::Relaxed));
        let ns = |role: &str| format!("{id}{role}");
        let iface = |name: &str, m: [u8; 6], v4: [u8; 4], v6a: Ipv6Addr| Iface { name: name.into(), mac: m, v4: Ipv4Addr::from(v4), v6: v6a };
        // one-arm: 198.18.0.0/24, 2001:db8:0::/64 for everyone.
        // inline: client net 198.18.1.0/24 + 2001:db8:1::/64,
        //         server net 198.18.2.0/24 + 2001:db8:2::/64.
        let (cnet, snet) = match topology {
            Topology::OneArm => (0u8, 0u8),
            Topology::Inline => (1, 2),
        };
        let client = Host { name: "client".into(), ns: ns("client"), ifaces: vec![iface("eth0", mac(1, 0), [198, 18, cnet, 1], v6(cnet.into(), 1))] };
        let balancer_ifaces = match topology {
            Topology::OneArm => vec![iface("eth0", mac(2, 0), [198, 18, 0, 2], v6(0, 2))],
            Topology::Inline => vec![iface("eth0", mac(2, 0), [198, 18, 1, 2], v6(1, 2)), iface("eth1", mac(2, 1), [198, 18, 2, 1], v6(2, 1))],
        };
        let balancer = Host { name: "balancer".into(), ns: ns("balancer"), ifaces: balancer_ifaces };
        let backends = (1..=3u8)
            .map(|i| Host {
                name: format!("backend{i}"),
                ns: ns(&format!("backend{i}")),
                ifaces: vec![iface("eth0", mac(10 + i, 0), [198, 18, snet, 10 + i], v6(snet.into(), 0x10 + u16::from(i)))],
            })
            .collect();
        let mut lab = Lab {
            topology,
            client,
            balancer,
            backends,
            bridge_ns: ns("bridge"),
            queues: std::thread::available_parallelism().map_or(1, |n| n.get().min(2) as u32),
            procs: Vec::new(),
            standbys: Vec::new(),
            bridge_ports: Vec::new(),
            servers: Vec::new(),
            xdp: Vec::new(),
            tc: Vec::new(),
            namespaces: Vec::new(),
        };
        // On error `lab` is dropped here, removing what was built so far.
        lab.build()?;
        Ok(lab)
    }

    fn build(&mut self) -> Result<(), LabError> {
        let hosts: Vec<Host> = self.hosts().cloned().collect();
        for ns in std::iter::once(self.bridge_ns.clone()).chain(hosts.iter().map(|h| h.ns.clone())) {
            ip(&["netns", "add", &ns])?;
            self.namespaces.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        let br = self.bridge_ns.clone();
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;

        let bridged: Vec<(Host, usize)> = match self.topology {
            Topology::OneArm => hosts.iter().map(|h| (h.clone(), 0)).collect(),
            Topology::Inline => {
                // The client's only link is a veth straight to the balancer.
                let (c, b) = (&self.client, &self.balancer);
                self.veth(End::host(c, 0), End::host(b, 0))?;
                // Left alone, a veth queues by the sending socket's random
                // hash, which differs between two connections of one
                // 5-tuple (a client reusing its port) and changes on a
                // retransmission timeout: flows would reach workers a NIC's
                // RSS never sends them to.
                let (ns, dev) = (c.ns.clone(), c.ifaces[0].name.clone());
                let prog = in_netns(&ns, || TxQueueProgram::attach(&dev))
                    .map_err(|e| LabError(format!("entering {ns}: {e}")))?
                    .map_err(|e| LabError(format!("{ns}/{dev}: {e}")))?;
                self.tc.push(prog);
                let b = &self.balancer;
                std::iter::once((b.clone(), 1)).chain(self.backends.iter().map(|h| (h.clone(), 0))).collect()
            }
        };
        for (i, (host, ifidx)) in bridged.iter().enumerate() {
            let port = format!("p{i}");
            self.veth(End::host(host, *ifidx), End { ns: &br, dev: &port, mac: None })?;
            ip(&["-n", &br, "link", "set", &port, "master", "br0"])?;
            self.bridge_ports.push(((host.ns.clone(), host.ifaces[*ifidx].name.clone()), port));
        }
        for host in &hosts {
            for ifc in &host.ifaces {
                let prefix = 24;
                ip(&["-n", &host.ns, "addr", "add", &format!("{}/{prefix}", ifc.v4), "dev", &ifc.name])?;
                ip(&["-n", &host.ns, "addr", "add", &format!("{}/64", ifc.v6), "dev", &ifc.name, "nodad"])?;
            }
        }
        self.routes()
    }

    /// A veth pair between two namespaces; both ends up, offloads off,
    /// MACs set where the lab defines them.
    fn veth(&self, a: End<'_>, b: End<'_>) -> Result<(), LabError> {
        ip(&["-n", a.ns, "link", "add", a.dev, "type", "veth", "peer", "name", b.dev, "netns", b.ns])?;
        for end in [a, b] {
            if let Some(m) = end.mac {
                ip(&["-n", end.ns, "link", "set", end.dev, "address", &m.mac_string()])?;
            }
            ip(&["-n", end.ns, "link", "set", end.dev, "gso_max_segs", "1", "up"])?;
            let q = self.queues.to_string();
            let ethtool = |args: &[&str]| {
                let mut full = vec!["ip", "netns", "exec", end.ns, "ethtool"];
                full.extend_from_slice(args);
                run(&full)
            };
            ethtool(&["-K", end.dev, "tx", "off", "gro", "off"])?;
            ethtool(&["-L", end.dev, "rx", &q, "tx", &q])?;
        }
        Ok(())
    }

    fn routes(&self) -> Result<(), LabError> {
        let bal_client_side = self.balancer.ifaces[0].clone();
        let vip_routes = |ns: &str, via: &Iface| -> Result<(), LabError> {
            ip(&["-n", ns, "route", "add", &format!("{VIP4}/32"), "via", &via.v4.to_string()])?;
            ip(&["-n", ns, "-6", "route", "add", &format!("{VIP6}/128"), "via", &via.v6.to_string()])?;
            Ok(())
        };
        vip_routes(&self.client.ns, &bal_client_side)?;
        let bal_server_side = self.balancer.ifaces.last().cloned().unwrap_or(bal_client_side);
        for b in &self.backends {
            vip_routes(&b.ns, &bal_server_side)?;
            if self.topology == Topology::Inline {
                // DNAT return traffic goes back through the balancer.
                ip(&["-n", &b.ns, "route", "add", "198.18.1.0/24", "via", &bal_server_side.v4.to_string()])?;
                ip(&["-n", &b.ns, "-6", "route", "add", "2001:db8:1::/64", "via", &bal_server_side.v6.to_string()])?;
            }
        }
        Ok(())
    }

    /// Adds another balancer to a one-arm lab's bridge (198.18.0.5, .6,
    /// ...): the standby of an HA pair. Everything else still routes the
    /// VIPs to the first balancer until `route_vips_via`.
    pub fn add_balancer(&mut self) -> Result<Host, LabError> {
        if self.topology != Topology::OneArm {
            return Err(LabError("add_balancer: one-arm labs only".into()));
        }
        let n = self.standbys.len() as u8;
        let ns = format!("{}standby{n}", self.bridge_ns.trim_end_matches("bridge"));
        ip(&["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        let ifc = Iface { name: "eth0".into(), mac: mac(3 + n, 0), v4: Ipv4Addr::new(198, 18, 0, 5 + n), v6: v6(0, 5 + u16::from(n)) };
        let host = Host { name: format!("standby{n}"), ns, ifaces: vec![ifc.clone()] };
        let port = format!("s{n}");
        let br = self.bridge_ns.clone();
        self.veth(End::host(&host, 0), End { ns: &br, dev: &port, mac: None })?;
        ip(&["-n", &br, "link", "set", &port, "master", "br0"])?;
        self.bridge_ports.push(((host.ns.clone(), ifc.name.clone()), port));
        ip(&["-n", &host.ns, "addr", "add", &format!("{}/24", ifc.v4), "dev", "eth0"])?;
        ip(&["-n", &host.ns, "addr", "add", &format!("{}/64", ifc.v6), "dev", "eth0", "nodad"])?;
        self.standbys.push(host.clone());
        Ok(host)
    }

    /// Routes VIP4 on the client and the backends via `gateway` (an
    /// address the HA pair moves between its balancers).
    pub fn route_vips_via(&self, gateway: Ipv4Addr) -> Result<(), LabError> {
        for ns in std::iter::once(&self.client.ns).chain(self.backends.iter().map(|b| &b.ns)) {
            ip(&["-n", ns, "route", "replace", &format!("{VIP4}/32"), "via", &gateway.to_string()])?;
        }
        Ok(())
    }

    /// Unplugs (or plugs back) `host`'s first interface from the bridge:
    /// its bridge port goes down, the host sees its link lose carrier.
    pub fn set_plugged(&self, host: &Host, plugged: bool) -> Result<(), LabError> {
        let key = (host.ns.clone(), host.iface().name.clone());
        let port = self.bridge_ports.iter().find(|(k, _)| *k == key).map(|(_, p)| p).ok_or_else(|| LabError(format!("{} is not on the bridge", host.name)))?;
        ip(&["-n", &self.bridge_ns, "link", "set", port, if plugged { "up" } else { "down" }]).map(drop)
    }

    /// Client, balancer, backends.
    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        [&self.client, &self.balancer].into_iter().chain(self.backends.iter())
    }

    /// Runs `args` in namespace `ns`; its stdout, or an error with stderr.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Result<String, LabError> {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(args);
        run(&full)
    }

    /// Starts `args` in namespace `ns`; killed when the `Proc` is dropped.
    /// Its output is collected (see `Proc::wait_for_line`).
    pub fn spawn(&self, ns: &str, args: &[&str]) -> Result<Proc, LabError> {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(args);
        Proc::spawn(&full)
    }

    /// Starts the lab server (`lab-server` binary at `server`) on every
    /// backend: HTTP on port 80 answering its name, UDP echo on port 7.
    /// They live as long as the lab.
    pub fn start_servers(&mut self, server: &Path) -> Result<(), LabError> {
        self.start_servers_with(server, &[])
    }

    /// `start_servers` with more arguments for every server.
    pub fn start_servers_with(&mut self, server: &Path, extra: &[&str]) -> Result<(), LabError> {
        let bin = server.to_str().ok_or_else(|| LabError("non-UTF-8 server path".into()))?;
        for b in self.backends.clone() {
            let mut args = vec![bin, "--name", &b.name, "--http", "80", "--udp", "7"];
            args.extend_from_slice(extra);
            self.servers.push((args.iter().map(|a| a.to_string()).collect(), None));
            self.start_server(self.servers.len() - 1)?;
        }
        Ok(())
    }

    /// Starts backend `i`'s lab server again, as `start_servers` did.
    pub fn start_server(&mut self, i: usize) -> Result<(), LabError> {
        let b = &self.backends[i];
        let args: Vec<&str> = self.servers[i].0.iter().map(String::as_str).collect();
        let p = self.spawn(&b.ns, &args)?;
        p.wait_for_line(|l| l.starts_with("ready"), std::time::Duration::from_secs(10))
            .ok_or_else(|| LabError(format!("lab-server on {} did not start: {}", b.name, p.output())))?;
        self.servers[i].1 = Some(p);
        Ok(())
    }

    /// Restarts backend `i`'s lab server with `extra` arguments added.
    pub fn restart_server_with(&mut self, i: usize, extra: &[&str]) -> Result<(), LabError> {
        self.stop_server(i);
        self.servers[i].0.extend(extra.iter().map(|a| a.to_string()));
        self.start_server(i)
    }

    /// Kills backend `i`'s lab server (its ports close) and waits for it.
    pub fn stop_server(&mut self, i: usize) {
        // Dropping a `Proc` kills it and reaps it.
        self.servers[i].1 = None;
    }

    /// Attaches an XDP_PASS program to the veth peers of the balancer's
    /// interfaces, which a veth needs to accept frames the balancer sends
    /// with XDP_TX or a redirect (AF_XDP TX needs nothing).
    pub fn xdp_pass_on_peers(&mut self, mode: XdpMode) -> Result<(), LabError> {
        let peers: Vec<(String, String)> = match self.topology {
            Topology::OneArm => vec![(self.bridge_ns.clone(), "p1".into())],
            Topology::Inline => {
                vec![(self.client.ns.clone(), "eth0".into()), (self.bridge_ns.clone(), "p0".into())]
            }
        };
        for (ns, dev) in peers {
            let prog = in_netns(&ns, || PassProgram::attach(&dev, mode))
                .map_err(|e| LabError(format!("entering {ns}: {e}")))?
                .map_err(|e| LabError(format!("XDP_PASS on {ns}/{dev}: {e}")))?;
            self.xdp.push(prog);
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.servers.clear();
        self.procs.clear();
        self.xdp.clear();
        self.tc.clear();
        for ns in self.namespaces.drain(..).rev() {
            let _ = ip(&["netns", "del", &ns]);
        }
    }
}

/// Deletes lab namespaces whose creating process is gone (a test run
/// killed before its Drop ran).
fn remove_stale_labs() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|r| r.split('-').next()) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

fn ip(args: &[&str]) -> Result<String, LabError> {
    let mut full = vec!["ip"];
    full.extend_from_slice(args);
    run(&full)
}

/// Runs a command; its stdout, or an error naming it with its stderr.
fn run(args: &[&str]) -> Result<String, LabError> {
    let out = Command::new(args[0]).args(&args[1..]).output().map_err(|e| LabError(format!("cannot run `{}`: {e} (scripts/setup.sh installs it)", args[0])))?;
    if !out.status.success() {
        return Err(LabError(format!("`{}` failed ({}): {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
