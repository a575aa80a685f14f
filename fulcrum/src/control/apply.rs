//! From a validated configuration to what the packet path and the steering
//! programs need: the engine's `Services`, with ids that stay stable for
//! the daemon's lifetime, and the traffic to steer.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;

use fulcrum_config as cfg;
use fulcrum_dataplane::forward::tunnel::Encap;
use fulcrum_dataplane::services::{Backend, Interface, Mode, Services, SynProxy, VipSpec};
use fulcrum_dataplane::types::{BackendId, IfIndex, Mac, VipId};
use fulcrum_io::netinfo::NetError;
use fulcrum_io::xdp::ReturnTraffic;

use crate::error::{Context, Error};

/// An interface as the daemon found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetIface {
    pub name: String,
    pub mac: Mac,
    pub mtu: u16,
    pub addrs: Vec<IpAddr>,
}

/// The interfaces of a topology: index 0 faces clients; the last faces
/// backends (the same one in one-arm).
#[derive(Clone, Debug)]
pub struct Net {
    pub ifaces: Vec<NetIface>,
}

impl Net {
    pub fn server(&self) -> IfIndex {
        (self.ifaces.len() - 1) as IfIndex
    }
}

/// Ids handed out so far. Never reused while the daemon runs, so a
/// connection-table entry naming an id never finds a different VIP or
/// backend behind it after a reload.
#[derive(Clone, Debug, Default)]
pub struct Ids {
    vips: HashMap<VipKey, VipId>,
    /// A backend is its VIP's: the same server in two pools has two ids.
    backends: HashMap<(VipKey, IpAddr, u16), BackendId>,
}

impl Ids {
    /// The id a VIP of the configuration got, if it was ever built.
    pub fn vip(&self, v: &cfg::Vip) -> Option<VipId> {
        self.vips.get(&(v.address, v.protocol, v.port)).copied()
    }
}

/// A VIP as an operator names it: address, protocol, port.
type VipKey = (IpAddr, cfg::Protocol, u16);

fn next_id<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u16>, key: K, what: &str) -> Result<u16, Error> {
    let n = map.len();
    if let Some(&id) = map.get(&key) {
        return Ok(id);
    }
    let id = u16::try_from(n).map_err(|_| Error::Refused(format!("more than {} {what} defined since start: restart the daemon", u16::MAX)))?;
    map.insert(key, id);
    Ok(id)
}

fn mode(m: &cfg::Mode) -> Mode {
    match *m {
        cfg::Mode::Nat => Mode::Nat { snat: Vec::new() },
        cfg::Mode::FullNat { ref snat } => Mode::Nat { snat: snat.clone() },
        cfg::Mode::Dsr => Mode::Dsr,
        cfg::Mode::Ipip { source } => Mode::Tunnel { encap: Encap::Ipip, source: source.address, source_prefix: source.len },
        cfg::Mode::Gue { source, port } => Mode::Tunnel { encap: Encap::Gue { port: port.get() }, source: source.address, source_prefix: source.len },
    }
}

/// Resolves a backend's next-hop MAC: (address, interface, must be on-link).
pub type Resolver<'a> = dyn FnMut(IpAddr, &str, bool) -> Result<Mac, NetError> + 'a;

/// The engine's services for `config`, and the return traffic the
/// steering program must send to the engine.
pub fn build(config: &cfg::Config, net: &Net, ids: &mut Ids, resolve: &mut Resolver) -> Result<(Services, Vec<ReturnTraffic>), Error> {
    let server = net.server();
    let server_name = &net.ifaces[usize::from(server)].name;
    let mut vips: Vec<Option<VipSpec>> = vec![None; ids.vips.len()];
    let mut backends: Vec<Option<Backend>> = vec![None; ids.backends.len()];
    let mut returns = Vec::new();
    let mut returns_seen = HashSet::new();
    for v in &config.vips {
        let vkey = (v.address, v.protocol, v.port);
        let vid = usize::from(next_id(&mut ids.vips, vkey, "VIPs")?);
        let mut members = Vec::with_capacity(v.backends.len());
        for b in &v.backends {
            let bid = next_id(&mut ids.backends, (vkey, b.address, b.port), "backends")?;
            let next_hop = match b.mac {
                Some(mac) => mac,
                None => resolve(b.address, server_name, v.mode == cfg::Mode::Dsr).context(|| format!("vip {}, backend {}", v.name(), b.address))?,
            };
            let slot = usize::from(bid);
            if backends.len() <= slot {
                backends.resize(slot + 1, None);
            }
            // Up until its health checks say otherwise.
            backends[slot] = Some(Backend { addr: b.address, port: b.port, weight: u32::from(b.weight), up: true, next_hop, iface: server });
            members.push(bid);
            if v.mode == cfg::Mode::Nat {
                let r = ReturnTraffic::FromBackend { addr: b.address, proto: v.protocol.into(), port: if b.port == 0 { v.port } else { b.port } };
                if returns_seen.insert(r) {
                    returns.push(r);
                }
            }
        }
        // Backends answer every SNAT address of a VIP with a pool.
        if let cfg::Mode::FullNat { snat } = &v.mode
            && !v.backends.is_empty()
        {
            for &addr in snat {
                let r = ReturnTraffic::ToSnat { addr, proto: v.protocol.into(), port: 0 };
                if returns_seen.insert(r) {
                    returns.push(r);
                }
            }
        }
        if vips.len() <= vid {
            vips.resize(vid + 1, None);
        }
        vips[vid] = Some(VipSpec {
            addr: v.address,
            proto: v.protocol.into(),
            port: v.port,
            mode: mode(&v.mode),
            backends: members,
            persistence_ms: v.persistence.map(|p| u32::try_from(p.timeout.as_millis()).unwrap_or(u32::MAX)),
            reset_on_down: v.health.as_ref().is_some_and(|h| h.on_down == cfg::OnDown::Reset),
            syn_proxy: match v.syn_proxy {
                cfg::SynProxy::Off => SynProxy::Off,
                cfg::SynProxy::Auto => SynProxy::Auto,
                cfg::SynProxy::Always => SynProxy::Always,
            },
        });
    }
    let ifaces = net.ifaces.iter().map(|i| Interface { mac: i.mac, mtu: i.mtu }).collect();
    let mut services = Services::new(ifaces, vips, backends)?;
    // On a fleet each node opens flows from its own SNAT addresses only;
    // the rest are its peers', whose flows it may carry on.
    if let Some(bgp) = config.bgp.as_ref().filter(|b| !b.snat_own.is_empty()) {
        services = services.with_snat_own(&bgp.snat_own)?;
    }
    Ok((services, returns))
}

/// One VIP's health checks as configured: its policy plugin and, in pool
/// order, its backends with their configured weights and checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedVip {
    pub vip: VipId,
    /// The VIP's name, for messages.
    pub name: String,
    pub plugin: Option<PathBuf>,
    pub members: Vec<(BackendId, u16, cfg::HealthCheck)>,
}

/// The health checks of `config`'s VIPs, with the ids `build` gave them.
pub fn health_checks(config: &cfg::Config, ids: &Ids) -> Vec<CheckedVip> {
    config
        .vips
        .iter()
        .filter_map(|v| {
            let vkey = (v.address, v.protocol, v.port);
            let vip = *ids.vips.get(&vkey)?;
            let members = v.backends.iter().filter_map(|b| Some((*ids.backends.get(&(vkey, b.address, b.port))?, b.weight, b.check.clone()?))).collect();
            Some(CheckedVip { vip, name: v.name(), plugin: v.health.as_ref()?.plugin.clone(), members })
        })
        .collect()
}
