//! The running daemon: steering programs attached, one AF_XDP socket set
//! and one worker per rx queue, and the counters to report.

use std::fmt::Write as _;
use std::sync::Arc;

use fulcrum_config as cfg;

use super::apply::{self, Ids, Net, NetIface};
use super::netinfo;
use crate::dataplane::Dataplane;
use crate::engine::EngineConfig;
use crate::flow::key::ip_from16;
use crate::flow::table::Timeouts;
use crate::io::afxdp::{self, XskConfig, XskIo};
use crate::io::xdp::SteerProgram;
use crate::io::XdpMode;
use crate::packet::DropReason;
use crate::services::{Services, vip_name};

pub struct Daemon {
    services: Arc<Services>,
    dataplane: Dataplane,
    /// Detached when dropped, after the workers stopped.
    steer: Vec<SteerProgram>,
    pub workers: usize,
    pub xdp_mode: XdpMode,
}

fn xdp_mode(m: cfg::XdpMode) -> XdpMode {
    match m {
        cfg::XdpMode::Native => XdpMode::Native,
        cfg::XdpMode::Generic => XdpMode::Generic,
        cfg::XdpMode::Auto => XdpMode::Auto,
    }
}

fn ms(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

impl Daemon {
    pub fn start(config: &cfg::Config) -> Result<Daemon, String> {
        let ifaces: Vec<&cfg::Interface> = match &config.topology {
            cfg::Topology::OneArm(i) => vec![i],
            cfg::Topology::Inline { client, server } => vec![client, server],
        };
        let net = Net {
            ifaces: ifaces
                .iter()
                .map(|i| {
                    Ok(NetIface {
                        name: i.name.clone(),
                        mac: netinfo::iface_mac(&i.name)?,
                        mtu: i.mtu.map_or_else(|| netinfo::iface_mtu(&i.name), Ok)?,
                        addrs: netinfo::iface_addrs(&i.name)?,
                    })
                })
                .collect::<Result<_, String>>()?,
        };
        let (services, returns) = apply::build(config, &net, &mut Ids::default(), &mut netinfo::next_hop_mac)?;
        let services = Arc::new(services);

        let mode = xdp_mode(config.daemon.xdp_mode);
        let mut steer = Vec::new();
        for i in &net.ifaces {
            let mut p = SteerProgram::attach(&i.name, mode).map_err(|e| e.to_string())?;
            for &a in &i.addrs {
                p.add_host_addr(a).map_err(|e| e.to_string())?;
            }
            steer.push(p);
        }
        let server = usize::from(net.server());
        for v in &config.vips {
            steer[0].add_vip(v.address, apply::proto(v.protocol), v.port).map_err(|e| e.to_string())?;
        }
        for r in returns {
            steer[server].add_return(r).map_err(|e| e.to_string())?;
        }

        let names: Vec<&str> = net.ifaces.iter().map(|i| i.name.as_str()).collect();
        let queues = names.iter().map(|n| afxdp::rx_queue_count(n)).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
        let queues = queues.into_iter().min().unwrap_or(1);
        let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
        // Every rx queue needs its socket, or its frames would bypass the
        // balancer: one worker per queue.
        let cpus: Vec<usize> = match &config.daemon.workers {
            cfg::Workers::Auto => (0..queues as usize).map(|i| i % ncpu).collect(),
            cfg::Workers::Count(n) if u32::from(n.get()) == queues => Vec::new(),
            cfg::Workers::Pinned(list) if list.len() as u32 == queues => list.iter().map(|&c| usize::from(c)).collect(),
            _ => return Err(format!("{} has {queues} rx queues and fulcrum runs one worker per queue: set daemon.workers to {queues} or \"auto\", or change the queue count with `ethtool -L`", names.join(", "))),
        };
        let mut ios = Vec::with_capacity(queues as usize);
        for q in 0..queues {
            let io = XskIo::open(&names, q, &XskConfig::default()).map_err(|e| e.to_string())?;
            for (port, p) in steer.iter_mut().enumerate() {
                if let Some(fd) = io.socket_fd(port as u8) {
                    p.register_socket(q, fd).map_err(|e| e.to_string())?;
                }
            }
            ios.push(io);
        }
        let t = &config.timeouts;
        let engine = EngineConfig {
            table_capacity: config.limits.connections_per_worker as usize,
            timeouts: Timeouts { syn_ms: ms(t.tcp_syn), established_ms: ms(t.tcp_established), closing_ms: ms(t.tcp_closing), udp_ms: ms(t.udp) },
            snat_ports: (config.limits.snat_ports.first, config.limits.snat_ports.last),
            ..EngineConfig::default()
        };
        let dataplane = Dataplane::start(ios, engine, &services, &cpus)?;
        Ok(Daemon { services, dataplane, steer, workers: queues as usize, xdp_mode: mode })
    }

    /// Per VIP and backend: packets, bytes and new flows summed over the
    /// workers, then drops by reason.
    pub fn summary(&self) -> String {
        let sum = |f: &dyn Fn(&crate::stats::Stats) -> u64| self.dataplane.stats.iter().map(|(s, _)| f(s)).sum::<u64>();
        let mut out = String::new();
        for (id, vip) in self.services.vips() {
            let i = usize::from(id);
            let name = vip_name(ip_from16(&vip.addr), vip.spec.proto, vip.spec.port);
            let (p, b, n) = (sum(&|s| s.vips[i].packets.get()), sum(&|s| s.vips[i].bytes.get()), sum(&|s| s.vips[i].new_flows.get()));
            let _ = writeln!(out, "vip {name}: packets={p} bytes={b} new_flows={n}");
            for &bid in &vip.spec.backends {
                let j = usize::from(bid);
                let addr = self.services.backend(bid).map_or("?".into(), |b| b.spec.addr.to_string());
                let (p, n) = (sum(&|s| s.backends[j].packets.get()), sum(&|s| s.backends[j].new_flows.get()));
                let _ = writeln!(out, "  backend {addr}: packets={p} new_flows={n}");
            }
        }
        let drops: Vec<String> = DropReason::ALL.iter().filter_map(|&r| Some((r, sum(&|s| s.drops.get(r)))).filter(|d| d.1 > 0)).map(|(r, n)| format!("{}={n}", r.label())).collect();
        let _ = writeln!(out, "drops: {}", if drops.is_empty() { "none".into() } else { drops.join(" ") });
        let w = |f: &dyn Fn(&crate::dataplane::WorkerStats) -> u64| self.dataplane.stats.iter().map(|(_, s)| f(s)).sum::<u64>();
        let _ = writeln!(out, "workers: frames={} handed_out={} handoff_lost={} unsteerable={}", w(&|s| s.frames.get()), w(&|s| s.handed_out.get()), w(&|s| s.handoff_lost.get()), w(&|s| s.unsteerable.get()));
        out
    }

    /// Stops the workers, then detaches the programs.
    pub fn stop(self) -> Result<(), String> {
        let r = self.dataplane.stop().map_err(|e| e.to_string());
        drop(self.steer);
        r
    }
}
