//! The devices under test, each on its own namespace lab (the one the
//! end-to-end tests use), with a generator on the client and a sink on
//! every backend. All peers of a run are up at once, so their trials can
//! be interleaved: machine noise then falls on every peer alike.

use std::fmt;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fulcrum_io::XdpMode;
use fulcrum_tests::daemon::{self, LabMode, TempConfig};
use fulcrum_tests::xdp::SinkCounts;
use fulcrum_tests::{Lab, LabError, Proc, Topology, VIP4, VIP6, http_get, in_netns};

use crate::generator::{Generator, Profile, Target};
use crate::search::Trial;
use crate::sink::Sinks;

/// Time for frames still in flight to reach the sink after a trial.
const DRAIN: Duration = Duration::from_millis(50);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dut {
    /// No device: the generator addresses backend 1 across the one-arm
    /// bridge. The ceiling of the generator and the sink themselves.
    Direct,
    /// The null AF_XDP forwarder (tests/src/bin/null-fwd.rs): steer, swap
    /// the destination to one backend, transmit. The machine's ceiling for
    /// an AF_XDP forwarder.
    NullFwd(Topology, XdpMode),
    Fulcrum(LabMode, XdpMode),
    /// The kernel forwarding with nftables DNAT, backend by `numgen`.
    Nftables,
    /// HAProxy in TCP mode: a proxy, measured in connections per second.
    Haproxy,
}

impl fmt::Display for Dut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let xdp = |m: &XdpMode| if *m == XdpMode::Generic { " (generic XDP)" } else { "" };
        match self {
            Dut::Direct => write!(f, "no device (generator → sink)"),
            Dut::NullFwd(t, m) => write!(f, "null AF_XDP fwd, {}{}", topology_name(*t), xdp(m)),
            Dut::Fulcrum(mode, m) => write!(f, "fulcrum {}{}", format!("{mode:?}").to_lowercase(), xdp(m)),
            Dut::Nftables => write!(f, "nftables DNAT (numgen)"),
            Dut::Haproxy => write!(f, "HAProxy (TCP mode)"),
        }
    }
}

pub fn topology_name(t: Topology) -> &'static str {
    match t {
        Topology::OneArm => "one-arm",
        Topology::Inline => "inline",
    }
}

impl Dut {
    /// Whether the device opens a flow only on a SYN: fulcrum's NAT
    /// modes. nftables' conntrack takes a flow up mid-stream, and counts
    /// the ACKs after a SYN that no SYN-ACK answered as invalid.
    pub fn opens_on_syn(&self) -> bool {
        matches!(self, Dut::Fulcrum(LabMode::Nat | LabMode::FullNat, _))
    }

    pub fn topology(&self) -> Topology {
        match self {
            Dut::Direct => Topology::OneArm,
            Dut::NullFwd(t, _) => *t,
            Dut::Fulcrum(mode, _) => mode.topology(),
            Dut::Nftables | Dut::Haproxy => Topology::Inline,
        }
    }
}

pub struct Peer {
    pub dut: Dut,
    // Dropped in this order: the device, the generator and sinks, the lab.
    proc: Option<Proc>,
    _config: Option<TempConfig>,
    pub generator: Generator,
    pub sinks: Sinks,
    pub lab: Lab,
}

fn lab_err(what: &str) -> impl Fn(fulcrum_io::IoError) -> LabError + '_ {
    move |e| LabError(format!("{what}: {e}"))
}

impl Peer {
    /// Builds the lab, starts the device and attaches generator and sinks.
    /// `servers` (the lab server on the backends) is needed only for
    /// connection tests, which real TCP endpoints must answer.
    /// `busy`: the AF_XDP devices spin with busy polling when idle.
    pub fn start(dut: Dut, profile: &Profile, servers: bool, busy: bool) -> Result<Peer, LabError> {
        let mut lab = Lab::new(dut.topology())?;
        let sinks = Sinks::attach(&lab)?;
        if servers {
            lab.start_servers(&daemon::sibling_bin("lab-server"))?;
        }
        let (proc, config) = start_dut(&mut lab, dut, busy)?;
        let client = lab.client.iface().clone();
        let b1 = lab.backends[0].iface().clone();
        let target = match dut {
            Dut::Direct => Target { src_mac: client.mac, dst_mac: b1.mac, dst4: b1.v4, dst6: b1.v6, tcp_port: 80, udp_port: 7 },
            _ => Target { src_mac: client.mac, dst_mac: lab.balancer.iface().mac, dst4: VIP4, dst6: VIP6, tcp_port: 80, udp_port: 7 },
        };
        let queues = lab.queues;
        let generator = in_netns(&lab.client.ns, || Generator::open(&client.name, queues, profile.clone(), &target, dut.opens_on_syn()))
            .map_err(|e| LabError(format!("entering {}: {e}", lab.client.ns)))?
            .map_err(lab_err("generator"))?;
        Ok(Peer { dut, proc, _config: config, generator, sinks, lab })
    }

    /// Sends at `rate` for `duration`; the trial and what the sinks saw.
    pub fn trial(&mut self, rate: f64, duration: Duration) -> Result<(Trial, SinkCounts), LabError> {
        let before = self.sinks.counts()?;
        let sent = self.generator.run(rate, duration).map_err(lab_err("generator"))?;
        std::thread::sleep(DRAIN);
        let got = self.sinks.counts()?.since(&before);
        Ok((Trial { offered: rate, sent: sent.frames, received: got.frames, secs: sent.secs }, got))
    }

    /// CPU time the device's process has used so far (user and system,
    /// all threads), if it is a process: AF_XDP devices pay their kernel
    /// work (copy-mode TX) in their own system calls, so this is their
    /// whole cost. Kernel forwarding runs in the sender's context instead.
    pub fn cpu_secs(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.proc.as_ref()?.pid())).ok()?;
        // Fields after the parenthesised command: utime and stime are the
        // 12th and 13th.
        let mut f = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
        let ticks = f.next()?.parse::<f64>().ok()? + f.next()?.parse::<f64>().ok()?;
        Some(ticks / fulcrum_io::unix::clock_ticks_per_sec() as f64)
    }

    /// New TCP connections per second through the device to VIP4:80 (an
    /// HTTP request each, answered by a backend's lab server), from
    /// `clients` threads on the client for `duration`; and the failures.
    pub fn connections_per_second(&self, clients: usize, duration: Duration) -> Result<(f64, u64), LabError> {
        let (ok, failed) = (AtomicU64::new(0), AtomicU64::new(0));
        let start = Instant::now();
        in_netns(&self.lab.client.ns, || {
            std::thread::scope(|s| {
                for _ in 0..clients {
                    s.spawn(|| {
                        while start.elapsed() < duration {
                            let r = http_get(SocketAddr::new(IpAddr::V4(VIP4), 80), "/", Duration::from_secs(1));
                            let n = if r.is_ok_and(|(status, _)| status == 200) { &ok } else { &failed };
                            n.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
            })
        })
        .map_err(|e| LabError(format!("entering {}: {e}", self.lab.client.ns)))?;
        Ok((ok.into_inner() as f64 / start.elapsed().as_secs_f64(), failed.into_inner()))
    }

    /// Stops the device; what it printed (fulcrum's counters, say).
    pub fn stop(mut self) -> Result<String, LabError> {
        match (self.dut, self.proc.take()) {
            (Dut::Fulcrum(..), Some(p)) => daemon::stop(p),
            (_, Some(p)) => {
                p.signal(libc::SIGTERM);
                std::thread::sleep(Duration::from_millis(200));
                Ok(p.output())
            }
            (_, None) => Ok(String::new()),
        }
    }
}

fn start_dut(lab: &mut Lab, dut: Dut, busy: bool) -> Result<(Option<Proc>, Option<TempConfig>), LabError> {
    let bal = lab.balancer.ns.clone();
    let b1 = lab.backends[0].iface().clone();
    match dut {
        Dut::Direct => Ok((None, None)),
        Dut::NullFwd(topology, mode) => {
            let bin = daemon::sibling_bin("null-fwd");
            let (v4, b1v4, mac, mode) = (VIP4.to_string(), b1.v4.to_string(), b1.mac_string(), mode.to_string());
            let mut args = vec![bin.to_str().unwrap_or_default(), "--in", "eth0", "--vip", &v4, "--proto", "tcp", "--port", "80"];
            args.extend(["--backend-ip", &b1v4, "--backend-mac", &mac, "--mode", &mode]);
            if topology == Topology::Inline {
                args.extend(["--out", "eth1"]);
            }
            if busy {
                args.push("--busy");
            }
            let p = lab.spawn(&bal, &args)?;
            p.wait_for_line(|l| l.starts_with("ready"), Duration::from_secs(10)).ok_or_else(|| LabError(format!("null-fwd did not start: {}", p.output())))?;
            Ok((Some(p), None))
        }
        Dut::Fulcrum(mode, xdp) => {
            // The generator's SYNs never complete a handshake: a NAT VIP's
            // SYN proxy (auto) would take them for a flood and answer them
            // itself. The comparison is of forwarding, as nftables does it.
            let config = daemon::config(lab, mode, "syn_proxy = \"off\"\n");
            let auto = "xdp_mode = \"auto\"";
            assert!(config.contains(auto), "the lab configuration sets the XDP mode");
            // Workers as many as queues but not pinned (`workers = N`), as
            // the null forwarder's threads are not: on these shared cores
            // a pinned worker cannot leave a CPU another program's poller
            // occupies.
            let poll = if busy { "busy" } else { "adaptive" };
            let config = config.replace(auto, &format!("xdp_mode = \"{xdp}\"\nworkers = {}\npoll = \"{poll}\"", lab.queues));
            let (p, file) = daemon::start(lab, &config)?;
            Ok((Some(p), Some(file)))
        }
        Dut::Nftables => {
            for s in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1", "net.ipv4.conf.all.rp_filter=0"] {
                lab.exec(&bal, &["sysctl", "-qw", s])?;
            }
            let map = |v6: bool| {
                let addrs: Vec<String> = lab
                    .backends
                    .iter()
                    .enumerate()
                    .map(|(i, b)| format!("{i} : {}", if v6 { b.iface().v6.to_string() } else { b.iface().v4.to_string() }))
                    .collect();
                format!("numgen random mod {} map {{ {} }}", addrs.len(), addrs.join(", "))
            };
            let mut rules = String::new();
            for (family, vip, v6) in [("ip", IpAddr::V4(VIP4), false), ("ip6", IpAddr::V6(VIP6), true)] {
                let m = map(v6);
                rules += &format!(
                    "table {family} fulcrum_bench {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    \
                     {family} daddr {vip} tcp dport 80 dnat to {m}\n    {family} daddr {vip} udp dport 7 dnat to {m}\n  }}\n}}\n"
                );
            }
            let file = TempConfig::new(&rules)?;
            lab.exec(&bal, &["nft", "-f", file.path_str()])?;
            Ok((None, None))
        }
        Dut::Haproxy => {
            lab.exec(&bal, &["ip", "addr", "add", &format!("{VIP4}/32"), "dev", "lo"])?;
            let servers: String = lab.backends.iter().map(|b| format!("  server {} {}:80\n", b.name, b.iface().v4)).collect();
            let config = format!(
                "global\n  maxconn 4000\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\
                 frontend vip\n  bind {VIP4}:80\n  default_backend pool\nbackend pool\n  balance roundrobin\n{servers}"
            );
            let file = TempConfig::new(&config)?;
            let p = lab.spawn(&bal, &["haproxy", "-db", "-f", file.path_str()])?;
            let up = in_netns(&lab.client.ns, || {
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    if TcpStream::connect_timeout(&SocketAddr::new(IpAddr::V4(VIP4), 80), Duration::from_millis(200)).is_ok() {
                        return true;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                false
            });
            if up.ok() != Some(true) {
                return Err(LabError(format!("haproxy did not start: {}", p.output())));
            }
            Ok((Some(p), Some(file)))
        }
    }
}
