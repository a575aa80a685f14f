//! Running the `fulcrum` daemon on a lab: its configuration, the backend
//! set-up each forwarding mode needs, its CLI and control socket, and
//! reading its counters back (summary, metrics).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use fulcrum::control::api::{Request, Response};

use crate::{Lab, LabError, Proc, Topology, VIP4, VIP6, http_get, in_netns};

/// The `fulcrum` binary cargo built beside this program.
pub fn fulcrum_bin() -> PathBuf {
    sibling_bin("fulcrum")
}

/// A binary of the workspace cargo built beside this program: in the same
/// directory (a binary) or the one above (a test, built in deps/).
pub fn sibling_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("this program's path");
    let dirs = exe.ancestors().skip(1).take(2);
    let found = dirs.map(|d| d.join(name)).find(|b| b.is_file());
    found.unwrap_or_else(|| panic!("no {name} binary beside {}: build it first (cargo build --bins)", exe.display()))
}

/// The forwarding modes as the configuration names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabMode {
    Nat,
    FullNat,
    Dsr,
    Ipip,
    Gue,
}

impl LabMode {
    pub fn name(self) -> &'static str {
        match self {
            LabMode::Nat => "nat",
            LabMode::FullNat => "full-nat",
            LabMode::Dsr => "dsr",
            LabMode::Ipip => "ipip",
            LabMode::Gue => "gue",
        }
    }

    pub fn topology(self) -> Topology {
        if self == LabMode::Nat { Topology::Inline } else { Topology::OneArm }
    }

    /// Whether backends hold the VIP themselves (and answer from it).
    pub fn owns_vip(self) -> bool {
        matches!(self, LabMode::Dsr | LabMode::Ipip | LabMode::Gue)
    }
}

/// Full-NAT source addresses: balancer addresses on the one-arm network
/// that nothing else uses.
pub const SNAT4: &str = "198.18.0.200";
pub const SNAT6: &str = "2001:db8::c8";

/// Writes a configuration balancing VIP4 and VIP6 (TCP 80 and UDP 7) over
/// the lab's three backends in `mode`, with the given extra TOML per VIP.
pub fn config(lab: &Lab, mode: LabMode, vip_extra: &str) -> String {
    config_with(lab, mode, |_, _| vip_extra.to_string())
}

/// `config` with the extra TOML of each VIP from `vip_extra(address,
/// protocol)`, protocol "tcp" or "udp". It comes after the VIP's keys and
/// before its backends, so it may end with a `[vip.health]` table.
pub fn config_with(lab: &Lab, mode: LabMode, vip_extra: impl Fn(IpAddr, &str) -> String) -> String {
    let mut c = format!("[daemon]\ncontrol_socket = \"{}\"\nxdp_mode = \"auto\"\n\n", control_socket());
    c.push_str(&interfaces(lab));
    for (vip, snat, tunnel) in [(IpAddr::V4(VIP4), SNAT4, "198.18.200.0/24"), (IpAddr::V6(VIP6), SNAT6, "2001:db8:200::/64")] {
        for (proto, port) in [("tcp", 80), ("udp", 7)] {
            let _ = writeln!(c, "[[vip]]\naddress = \"{vip}\"\nprotocol = \"{proto}\"\nport = {port}\nmode = \"{}\"", mode.name());
            match mode {
                LabMode::FullNat => {
                    let _ = writeln!(c, "snat = \"{snat}\"");
                }
                LabMode::Ipip | LabMode::Gue => {
                    let _ = writeln!(c, "tunnel_source = \"{tunnel}\"");
                }
                LabMode::Nat | LabMode::Dsr => {}
            }
            c.push_str(&vip_extra(vip, proto));
            for b in &lab.backends {
                let addr = if vip.is_ipv4() { IpAddr::V4(b.iface().v4) } else { IpAddr::V6(b.iface().v6) };
                let _ = writeln!(c, "\n[[vip.backend]]\naddress = \"{addr}\"");
            }
            c.push('\n');
        }
    }
    c
}

/// A control socket path no other daemon of this test run uses.
pub fn control_socket() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("/run/fulcrum-lab-{}-{}.sock", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// The `[[interface]]` sections of the lab's balancer.
pub fn interfaces(lab: &Lab) -> String {
    let mut c = String::new();
    for (i, ifc) in lab.balancer.ifaces.iter().enumerate() {
        let role = match (lab.topology, i) {
            (Topology::OneArm, _) => "one-arm",
            (Topology::Inline, 0) => "client",
            (Topology::Inline, _) => "server",
        };
        let _ = writeln!(c, "[[interface]]\nname = \"{}\"\nrole = \"{role}\"\n", ifc.name);
    }
    c
}

/// Prepares the hosts for `mode`, then starts the backends' servers (the
/// `lab-server` binary at `server`): the SNAT address on the balancer, the
/// VIP on the backends' loopback (DSR, tunnels) with ARP kept quiet about
/// it and the UDP echo bound to it, and decapsulation on tunnel backends
/// (`fulcrum decap`).
pub fn prepare(lab: &mut Lab, mode: LabMode, server: &Path) -> Result<Vec<Proc>, LabError> {
    let procs = prepare_hosts(lab, mode)?;
    start_servers(lab, server, mode.owns_vip(), &[])?;
    Ok(procs)
}

/// The hosts' part of `prepare` (callable for several modes in turn); the
/// decapsulators it started, which must live as long as the test.
pub fn prepare_hosts(lab: &mut Lab, mode: LabMode) -> Result<Vec<Proc>, LabError> {
    let mut procs = Vec::new();
    match mode {
        LabMode::FullNat => add_snat_addrs(lab, &[SNAT4, SNAT6].map(|a| a.parse().expect("a literal address")))?,
        LabMode::Dsr | LabMode::Ipip | LabMode::Gue => {
            for b in lab.backends.clone() {
                for s in ["net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2", "net.ipv4.conf.all.rp_filter=0"] {
                    lab.exec(&b.ns, &["sysctl", "-q", "-w", s])?;
                }
                lab.exec(&b.ns, &["ip", "addr", "add", &format!("{VIP4}/32"), "dev", "lo"])?;
                lab.exec(&b.ns, &["ip", "addr", "add", &format!("{VIP6}/128"), "dev", "lo"])?;
                if mode != LabMode::Dsr {
                    let bin = fulcrum_bin();
                    let p = lab.spawn(&b.ns, &[bin.to_str().unwrap_or_default(), "decap", "--iface", &b.iface().name])?;
                    p.wait_for_line(|l| l.starts_with("ready"), Duration::from_secs(10))
                        .ok_or_else(|| LabError(format!("fulcrum decap on {} did not start: {}", b.name, p.output())))?;
                    procs.push(p);
                }
            }
        }
        LabMode::Nat => {}
    }
    Ok(procs)
}

/// Gives the balancer full-NAT source addresses on its server-side
/// interface, so that its kernel answers ARP / NDP for them: backends send
/// their replies there. IPv6 ones deprecated, so that the kernel never
/// picks one as the source of the host's own traffic (health checks):
/// replies to it go to the data path. IPv4 picks the primary address
/// anyway.
pub fn add_snat_addrs(lab: &Lab, addrs: &[IpAddr]) -> Result<(), LabError> {
    let dev = &lab.balancer.ifaces.last().unwrap_or(lab.balancer.iface()).name;
    for a in addrs {
        match a {
            IpAddr::V4(_) => lab.exec(&lab.balancer.ns, &["ip", "addr", "add", &format!("{a}/32"), "dev", dev])?,
            IpAddr::V6(_) => lab.exec(&lab.balancer.ns, &["ip", "addr", "add", &format!("{a}/128"), "dev", dev, "nodad", "preferred_lft", "0"])?,
        };
    }
    Ok(())
}

/// Starts the backends' servers (`lab-server` at `server`), with `extra`
/// arguments; with `owns_vip` their UDP echo answers from the VIPs.
pub fn start_servers(lab: &mut Lab, server: &Path, owns_vip: bool, extra: &[&str]) -> Result<(), LabError> {
    let (v4, v6) = (VIP4.to_string(), VIP6.to_string());
    let mut args = if owns_vip { vec!["--udp-bind", &v4, "--udp-bind", &v6] } else { Vec::new() };
    args.extend_from_slice(extra);
    lab.start_servers_with(server, &args)
}

/// Starts `fulcrum run` in the balancer namespace with `config`; waits
/// until it is ready.
pub fn start(lab: &Lab, config: &str) -> Result<(Proc, TempConfig), LabError> {
    let file = TempConfig::new(config)?;
    let p = run_in(lab, &lab.balancer.ns, &file).map_err(|e| LabError(format!("{e}\nconfig:\n{config}")))?;
    Ok((p, file))
}

/// Starts `fulcrum run --config FILE` in namespace `ns`; waits until it
/// is ready.
pub fn run_in(lab: &Lab, ns: &str, config: &TempConfig) -> Result<Proc, LabError> {
    let bin = fulcrum_bin();
    let p = lab.spawn(ns, &[bin.to_str().unwrap_or_default(), "run", "--config", config.path_str()])?;
    p.wait_for_line(|l| l.starts_with("ready"), Duration::from_secs(20))
        .ok_or_else(|| LabError(format!("fulcrum run in {ns} did not become ready:\n{}", p.output())))?;
    Ok(p)
}

/// Stops the daemon with SIGTERM; its summary output.
pub fn stop(mut p: Proc) -> Result<String, LabError> {
    p.signal(libc::SIGTERM);
    let status = p.wait_timeout(Duration::from_secs(10)).ok_or_else(|| LabError(format!("fulcrum did not stop:\n{}", p.output())))?;
    if !status.success() {
        return Err(LabError(format!("fulcrum exited with {status}:\n{}", p.output())));
    }
    Ok(p.output())
}

/// New flows per backend address of one VIP in the daemon's summary
/// (`vip NAME: ...` followed by `  backend ADDR: ... new_flows=N` lines).
pub fn new_flows(summary: &str, vip: &str) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    let mut inside = false;
    for line in summary.lines() {
        if let Some(rest) = line.strip_prefix("vip ") {
            inside = rest.starts_with(&format!("{vip}:"));
        } else if inside && let Some(rest) = line.trim_start().strip_prefix("backend ") {
            let (addr, counters) = rest.split_once(": ").unwrap_or((rest, ""));
            let n = counters.split_whitespace().find_map(|kv| kv.strip_prefix("new_flows=")).and_then(|v| v.parse().ok()).unwrap_or(0);
            out.insert(addr.to_string(), n);
        }
    }
    out
}

/// The control socket a configuration names.
pub fn socket_of(config: &str) -> PathBuf {
    fulcrum_config::parse(config, "lab.toml").unwrap_or_else(|e| panic!("{e}\n{config}")).daemon.control_socket
}

/// A module scripts/build-plugins.sh built (under CARGO_TARGET_DIR if
/// set): `round-robin`, `hostile-slow-update`, ...
pub fn plugin_module(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"), PathBuf::from);
    let path = target.join("plugins").join(format!("{name}.wasm"));
    assert!(path.is_file(), "{} is missing: run scripts/build-plugins.sh", path.display());
    path
}

/// Runs the `fulcrum` CLI with `args`: its exit code, stdout and stderr.
pub fn cli(args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(fulcrum_bin()).args(args).output().expect("running fulcrum");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// One request to the daemon on `socket`, as the CLI sends it.
pub fn ask(socket: &Path, req: Request) -> Response {
    fulcrum::control::client::request(socket, &req).unwrap_or_else(|e| panic!("{req:?}: {e}"))
}

/// Scrapes the daemon's metrics endpoint (the default 127.0.0.1:7780 in
/// the balancer's namespace).
pub fn scrape(lab: &Lab) -> String {
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7780);
    let (status, body) = in_netns(&lab.balancer.ns, || http_get(addr, "/metrics", Duration::from_secs(5))).expect("netns").expect("scraping /metrics");
    assert_eq!(status, 200);
    String::from_utf8(body).expect("UTF-8 metrics")
}

/// The sum of the samples of metric `name` whose labels include every
/// `label="value"` pair of `labels` (0 if none).
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
            let set: Vec<&str> = rest.strip_suffix('}')?.split(',').collect();
            (n == name && labels.iter().all(|l| set.contains(l))).then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// The shipped examples' directory (config/examples).
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples")
}

/// An example configuration's text with what every lab differs in: the
/// interface name, the plugins' directory, the worker count and a control
/// socket of this test's own.
pub fn example_for_lab(text: &str, lab: &Lab) -> String {
    // Plugin paths are relative to the example's directory.
    let plugins = examples_dir().join("../../target/plugins/");
    let text = text.replace("\"lb0\"", "\"eth0\"").replace("\"../../target/plugins/", &format!("\"{}", plugins.display()));
    let text = text.replace("workers = 2", &format!("workers = {}", lab.queues));
    let socket = format!("control_socket = \"{}\"", control_socket());
    if text.contains("control_socket = ") {
        text.replace("control_socket = \"/run/fulcrum/control.sock\"", &socket)
    } else {
        format!("[daemon]\n{socket}\n\n{text}")
    }
}

/// A configuration file, removed when dropped with the control socket it
/// names (which a daemon killed by a signal leaves behind).
pub struct TempConfig(PathBuf, Option<PathBuf>);

impl TempConfig {
    pub fn new(text: &str) -> Result<TempConfig, LabError> {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!("fulcrum-lab-{}-{}.toml", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        std::fs::write(&path, text).map_err(|e| LabError(format!("writing {}: {e}", path.display())))?;
        let socket = fulcrum_config::parse(text, "lab.toml").ok().map(|c| c.daemon.control_socket);
        Ok(TempConfig(path, socket))
    }

    pub fn path_str(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Replaces the file's text (for a reload).
    pub fn write(&self, text: &str) {
        std::fs::write(&self.0, text).unwrap_or_else(|e| panic!("writing {}: {e}", self.0.display()));
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        if let Some(socket) = &self.1 {
            let _ = std::fs::remove_file(socket);
        }
    }
}
