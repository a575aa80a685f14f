//! The services the packet path balances: VIPs, their backends and the
//! interfaces. Built and validated by the control plane, then shared
//! read-only with every worker; a reload publishes a new one.
//!
//! VIP and backend ids are stable across reloads (the control plane keeps
//! them), so connection-table entries that name them stay valid.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use hashbrown::{HashMap, HashSet};

use crate::flow::FlowKey;
use crate::flow::key::{addr16, ip_from16};
use crate::forward::tunnel::Encap;
use crate::sched::maglev::{Maglev, MaglevInput};
use crate::types::{BackendId, IfIndex, Mac, VipId};
use crate::wire::IpProtocol;

/// How a VIP forwards (per VIP).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// DNAT to the backend. With `snat` addresses, also SNAT to one of
    /// those balancer addresses (full-NAT, for one-arm topologies where
    /// replies would otherwise bypass the balancer); none: inline DNAT.
    Nat { snat: Vec<IpAddr> },
    /// L2 direct server return: only the MACs change; the backend holds the
    /// VIP on its loopback and answers the client itself.
    Dsr,
    /// Encapsulate to the backend (L3 DSR). The outer source is `source`
    /// with its bits after `source_prefix` taken from the flow hash.
    Tunnel { encap: Encap, source: IpAddr, source_prefix: u8 },
}

/// When a nat or full-NAT VIP answers SYNs itself with SYN cookies (see
/// `forward::synproxy`), opening the backend connection only for clients
/// that complete the handshake.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SynProxy {
    Off,
    /// While the VIP's half-open flows on a worker reach the engine's
    /// `syn_proxy_above`, and as long as the SYNs it answers then mostly
    /// go unanswered (a flood).
    #[default]
    Auto,
    Always,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interface {
    pub mac: Mac,
    pub mtu: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    pub addr: IpAddr,
    /// 0: the port the client connected to.
    pub port: u16,
    /// 0 drains: no new flows, established ones continue.
    pub weight: u32,
    /// Health: a backend that is down takes no new flows; its weight is
    /// kept, so it rejoins with it. What happens to its established flows
    /// is the VIP's `reset_on_down`.
    pub up: bool,
    /// The L2 next hop towards the backend (itself when on-link).
    pub next_hop: Mac,
    pub iface: IfIndex,
}

impl Backend {
    /// The weight new flows see: 0 while the backend is down (it keeps
    /// its weight for when it comes back).
    pub fn effective_weight(&self) -> u32 {
        if self.up { self.weight } else { 0 }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipSpec {
    pub addr: IpAddr,
    pub proto: IpProtocol,
    /// 0: every port.
    pub port: u16,
    pub mode: Mode,
    pub backends: Vec<BackendId>,
    /// Source-IP persistence: how long (ms) an idle client keeps its
    /// backend; `None`: every new flow is scheduled on its own.
    pub persistence_ms: Option<u32>,
    /// The established TCP flows of a backend that is down are answered
    /// with a RST at the client's next packet (else they stay on it).
    pub reset_on_down: bool,
    /// Only for TCP VIPs in nat modes (ignored otherwise).
    pub syn_proxy: SynProxy,
}

/// A VIP ready for the packet path: addresses pre-converted, the Maglev
/// table built.
pub struct Vip {
    pub spec: VipSpec,
    pub addr: [u8; 16],
    /// Full-NAT source addresses, as positions in `Services::snat_addrs`;
    /// empty unless full-NAT. Return traffic to any of them is taken, and
    /// a synced flow from any of them imported.
    pub snat: Box<[u16]>,
    /// Those of `snat` that new flows take their source from: all of them
    /// unless `Services::with_snat_own` says which this node owns.
    pub snat_new: Box<[u16]>,
    /// Over the usable backends. Shared with the snapshot this one was
    /// derived from when the pool's idents and effective weights are equal
    /// (health changes of other VIPs rebuild nothing here).
    pub maglev: Arc<Maglev>,
    /// What `maglev` was built from, to tell whether it can be reused.
    maglev_inputs: Box<[(u64, u32)]>,
    /// (backend id, index in `spec.backends`), sorted by id: the
    /// per-packet membership check and the sticky backend's index.
    members: Box<[(BackendId, u16)]>,
}

impl Vip {
    /// Whether an established flow's backend still serves this VIP. `at`
    /// is its place in `spec.backends` when the flow opened: while the list
    /// is unchanged that answers at once, without a search (a sixteenth of
    /// an established packet's instructions).
    #[inline]
    pub fn has_backend_at(&self, id: BackendId, at: u16) -> bool {
        self.spec.backends.get(usize::from(at)) == Some(&id) || self.index_of(id).is_some()
    }

    /// Where `id` is in `spec.backends`.
    #[inline]
    pub fn index_of(&self, id: BackendId) -> Option<usize> {
        let i = self.members.binary_search_by_key(&id, |&(b, _)| b).ok()?;
        Some(usize::from(self.members[i].1))
    }
}

/// A backend ready for the packet path.
#[derive(Clone, Copy, Debug)]
pub struct BackendEntry {
    pub spec: Backend,
    pub addr: [u8; 16],
    /// Identity for Maglev and schedulers: a hash of address and port, so
    /// every node with the same pool agrees whatever the ids or order.
    pub ident: u64,
}

impl BackendEntry {
    /// The port to send a flow to.
    #[inline]
    pub fn port_for(&self, client_dst_port: u16) -> u16 {
        if self.spec.port == 0 { client_dst_port } else { self.spec.port }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct VipKey {
    addr: [u8; 16],
    proto: IpProtocol,
    port: u16,
}

#[derive(Debug)]
pub struct Services {
    pub interfaces: Vec<Interface>,
    vips: Vec<Option<Vip>>,
    backends: Vec<Option<BackendEntry>>,
    by_key: HashMap<VipKey, VipId>,
    /// The first VIP defined on each address, to count drops of traffic
    /// that has an address but no port (fragments).
    vip_addrs: HashMap<[u8; 16], VipId>,
    /// Per address and protocol, the VIP of one port there, if there is
    /// only one: where a fragment without ports can be for.
    port_vips: HashMap<([u8; 16], IpProtocol), Option<VipId>>,
    /// Where NAT return traffic comes from (backend address, port,
    /// protocol) or goes to (SNAT addresses, port 0): such traffic without
    /// state is dropped, not leaked un-NAT'd to the kernel.
    return_ends: HashSet<VipKey>,
    /// The addresses of NAT backends, by protocol: their later IP
    /// fragments carry no ports to match `return_ends` with.
    nat_backends: HashSet<([u8; 16], IpProtocol)>,
    /// Every VIP's full-NAT source addresses, each once, in the order
    /// first named.
    snat_addrs: Vec<[u8; 16]>,
    snat_positions: HashMap<[u8; 16], u16>,
    /// The SNAT addresses this node opens new flows from, when it shares
    /// the others with peers (an ECMP fleet); `None`: all of them.
    snat_own: Option<HashSet<[u8; 16]>>,
}

/// A configuration the packet path cannot run, with what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceError(pub String);

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ServiceError {}

/// "198.18.0.100:80/tcp" or "[2001:db8::1]:*/udp", as operators write VIPs.
pub fn vip_name(addr: IpAddr, proto: IpProtocol, port: u16) -> String {
    let port = if port == 0 { "*".to_string() } else { port.to_string() };
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}/{proto}"),
        IpAddr::V6(a) => format!("[{a}]:{port}/{proto}"),
    }
}

/// "198.18.0.11", "198.18.0.11:8080" or "[2001:db8::11]:8080": a backend
/// as operators write it (no port: the client's).
pub fn backend_name(addr: IpAddr, port: u16) -> String {
    match (addr, port) {
        (a, 0) => a.to_string(),
        (IpAddr::V4(a), p) => format!("{a}:{p}"),
        (IpAddr::V6(a), p) => format!("[{a}]:{p}"),
    }
}

impl Services {
    /// Validates and builds. Ids are the positions the control plane
    /// assigned; `None` marks an id no longer (or not yet) in use.
    pub fn new(interfaces: Vec<Interface>, vips: Vec<Option<VipSpec>>, backends: Vec<Option<Backend>>) -> Result<Services, ServiceError> {
        Self::build(interfaces, vips, backends, None)
    }

    /// `new`, reusing this snapshot's Maglev table for every VIP (same id)
    /// whose usable backends and weights did not change: a table costs
    /// milliseconds to build, and a health change touches one pool.
    pub fn rebuild(&self, interfaces: Vec<Interface>, vips: Vec<Option<VipSpec>>, backends: Vec<Option<Backend>>) -> Result<Services, ServiceError> {
        Self::build(interfaces, vips, backends, Some(self))
    }

    /// This snapshot with some backends replaced (same ids), e.g. with
    /// their health applied.
    pub fn with_backends(&self, changed: &[(BackendId, Backend)]) -> Result<Services, ServiceError> {
        let vips = self.vips.iter().map(|v| v.as_ref().map(|v| v.spec.clone())).collect();
        let mut backends: Vec<Option<Backend>> = self.backends.iter().map(|b| b.map(|b| b.spec)).collect();
        for &(id, b) in changed {
            match backends.get_mut(usize::from(id)) {
                Some(slot @ Some(_)) => *slot = Some(b),
                _ => return Err(ServiceError(format!("backend id {id} is not defined"))),
            }
        }
        self.rebuild(self.interfaces.clone(), vips, backends)
    }

    fn build(
        interfaces: Vec<Interface>,
        vips: Vec<Option<VipSpec>>,
        backends: Vec<Option<Backend>>,
        previous: Option<&Services>,
    ) -> Result<Services, ServiceError> {
        let err = |msg: String| Err(ServiceError(msg));
        if vips.len() > usize::from(VipId::MAX) || backends.len() > usize::from(BackendId::MAX) {
            return err(format!("too many VIPs ({}) or backends ({}): at most {} each", vips.len(), backends.len(), u16::MAX));
        }
        let mut out = Services {
            interfaces,
            vips: Vec::with_capacity(vips.len()),
            backends: Vec::with_capacity(backends.len()),
            by_key: HashMap::new(),
            vip_addrs: HashMap::new(),
            port_vips: HashMap::new(),
            return_ends: HashSet::new(),
            nat_backends: HashSet::new(),
            snat_addrs: Vec::new(),
            snat_positions: HashMap::new(),
            snat_own: previous.and_then(|p| p.snat_own.clone()),
        };
        for (id, b) in backends.iter().enumerate() {
            if let Some(b) = b
                && usize::from(b.iface) >= out.interfaces.len()
            {
                return err(format!("backend {id} ({}): interface {} does not exist", b.addr, b.iface));
            }
            out.backends.push(b.map(|spec| {
                let addr = addr16(spec.addr);
                BackendEntry { spec, addr, ident: backend_ident(&addr, spec.port) }
            }));
        }
        for spec in vips {
            let Some(spec) = spec else {
                out.vips.push(None);
                continue;
            };
            let id = out.vips.len() as VipId;
            let vip = out.build_vip(spec, previous.and_then(|p| p.vip(id)))?;
            out.vips.push(Some(vip));
        }
        Ok(out)
    }

    fn build_vip(&mut self, spec: VipSpec, previous: Option<&Vip>) -> Result<Vip, ServiceError> {
        let name = vip_name(spec.addr, spec.proto, spec.port);
        let err = |msg: String| Err(ServiceError(format!("vip {name}: {msg}")));
        if !matches!(spec.proto, IpProtocol::TCP | IpProtocol::UDP) {
            return err("protocol must be tcp or udp".into());
        }
        let key = VipKey { addr: addr16(spec.addr), proto: spec.proto, port: spec.port };
        let id = self.vips.len() as VipId;
        if self.by_key.insert(key, id).is_some() {
            return err("defined twice".into());
        }
        let v4 = spec.addr.is_ipv4();
        let snat = match &spec.mode {
            Mode::Nat { snat } => {
                if let Some(s) = snat.iter().find(|s| s.is_ipv4() != v4) {
                    return err(format!("snat address {s} is not of the VIP's family"));
                }
                snat.iter().map(|&s| self.snat_index(addr16(s))).collect::<Result<_, _>>().map_err(|e| ServiceError(format!("vip {name}: {e}")))?
            }
            &Mode::Tunnel { source, source_prefix, .. } => {
                if source.is_ipv4() != v4 {
                    return err(format!("tunnel source {source} is not of the VIP's family"));
                }
                if source_prefix > if v4 { 32 } else { 128 } {
                    return err(format!("tunnel source prefix /{source_prefix} is too long"));
                }
                Box::default()
            }
            Mode::Dsr => Box::default(),
        };
        let mut inputs = Vec::with_capacity(spec.backends.len());
        for (i, &bid) in spec.backends.iter().enumerate() {
            let Some(b) = self.backends.get(usize::from(bid)).copied().flatten() else {
                return err(format!("backend {i}: id {bid} is not defined"));
            };
            if b.spec.addr.is_ipv4() != v4 {
                return err(format!("backend {i} ({}): not of the VIP's family", b.spec.addr));
            }
            if spec.mode == Mode::Dsr && b.spec.port != 0 && b.spec.port != spec.port {
                return err(format!("backend {i} ({}): DSR cannot change the port ({} -> {})", b.spec.addr, spec.port, b.spec.port));
            }
            if let Mode::Nat { snat } = &spec.mode {
                let port = if b.spec.port == 0 { spec.port } else { b.spec.port };
                self.return_ends.insert(VipKey { addr: b.addr, proto: spec.proto, port });
                self.nat_backends.insert((b.addr, spec.proto));
                for &s in snat {
                    self.return_ends.insert(VipKey { addr: addr16(s), proto: spec.proto, port: 0 });
                }
            }
            // A backend that is down keeps its weight but no entries.
            inputs.push((b.ident, b.spec.effective_weight()));
        }
        let maglev_inputs: Box<[(u64, u32)]> = inputs.into();
        let maglev = match previous {
            Some(p) if p.maglev_inputs == maglev_inputs => Arc::clone(&p.maglev),
            _ => {
                let inputs: Vec<MaglevInput> = maglev_inputs.iter().map(|&(ident, weight)| MaglevInput { ident, weight }).collect();
                Arc::new(Maglev::build(&inputs).map_err(|e| ServiceError(format!("vip {name}: {e}")))?)
            }
        };
        self.vip_addrs.entry(key.addr).or_insert(id);
        if key.port != 0 {
            self.port_vips.entry((key.addr, key.proto)).and_modify(|v| *v = None).or_insert(Some(id));
        }
        let mut members: Box<[(BackendId, u16)]> = spec.backends.iter().enumerate().map(|(i, &b)| (b, i as u16)).collect();
        members.sort_unstable();
        let snat_new = self.owned(&snat);
        Ok(Vip { addr: key.addr, snat, snat_new, maglev, maglev_inputs, spec, members })
    }

    /// The VIP a client packet is for: an exact port first, then all ports.
    #[inline]
    pub fn find_vip(&self, key: &FlowKey) -> Option<VipId> {
        let exact = VipKey { addr: key.dst, proto: key.proto, port: key.dst_port };
        self.by_key.get(&exact).or_else(|| self.by_key.get(&VipKey { port: 0, ..exact })).copied()
    }

    /// The VIP a packet without ports (a later IP fragment) is for: the
    /// all-ports VIP of its address and protocol, else the only VIP there.
    pub fn vip_for_portless(&self, key: &FlowKey) -> Option<VipId> {
        let all = VipKey { addr: key.dst, proto: key.proto, port: 0 };
        self.by_key.get(&all).copied().or_else(|| self.port_vips.get(&(key.dst, key.proto)).copied().flatten())
    }

    /// The VIP with exactly this address, protocol and port.
    pub fn vip_id(&self, addr: IpAddr, proto: IpProtocol, port: u16) -> Option<VipId> {
        self.by_key.get(&VipKey { addr: addr16(addr), proto, port }).copied()
    }

    /// The first VIP on `addr`, if `addr` is the address of any VIP.
    pub fn vip_for_addr(&self, addr: &[u8; 16]) -> Option<VipId> {
        self.vip_addrs.get(addr).copied()
    }

    /// Every VIP's full-NAT source addresses, each once: a VIP's `snat`
    /// names positions in it.
    pub fn snat_addrs(&self) -> &[[u8; 16]] {
        &self.snat_addrs
    }

    /// This snapshot with new flows taking their full-NAT source only from
    /// `own` (SNAT addresses of this node; the VIPs' others belong to
    /// peers, whose synced flows and return traffic this node still
    /// takes). Every address must be some VIP's, and every full-NAT VIP
    /// must keep one.
    pub fn with_snat_own(mut self, own: &[IpAddr]) -> Result<Services, ServiceError> {
        let own: HashSet<[u8; 16]> = own.iter().map(|&a| addr16(a)).collect();
        if let Some(a) = own.iter().find(|a| !self.snat_positions.contains_key(*a)) {
            return Err(ServiceError(format!("own SNAT address {} is no full-NAT VIP's", ip_from16(a))));
        }
        self.snat_own = Some(own);
        let mut vips = std::mem::take(&mut self.vips);
        for v in vips.iter_mut().flatten() {
            v.snat_new = self.owned(&v.snat);
            if v.snat_new.is_empty() && !v.snat.is_empty() {
                let name = vip_name(v.spec.addr, v.spec.proto, v.spec.port);
                return Err(ServiceError(format!("vip {name}: none of its SNAT addresses is this node's own")));
            }
        }
        self.vips = vips;
        Ok(self)
    }

    /// Whether new flows take their source only from some SNAT addresses
    /// (`with_snat_own`).
    pub fn shares_snat(&self) -> bool {
        self.snat_own.is_some()
    }

    /// The positions of `snat` that new flows may take (`Vip::snat_new`).
    fn owned(&self, snat: &[u16]) -> Box<[u16]> {
        match &self.snat_own {
            None => snat.into(),
            Some(own) => snat.iter().copied().filter(|&i| self.snat_addrs.get(usize::from(i)).is_some_and(|a| own.contains(a))).collect(),
        }
    }

    /// A VIP's full-NAT source addresses.
    pub fn snat_addrs_of<'a>(&'a self, vip: &'a Vip) -> impl Iterator<Item = &'a [u8; 16]> {
        vip.snat.iter().filter_map(|&i| self.snat_addrs.get(usize::from(i)))
    }

    /// The position of a full-NAT source address in `snat_addrs`, added
    /// if new.
    fn snat_index(&mut self, addr: [u8; 16]) -> Result<u16, String> {
        let next = self.snat_addrs.len();
        match self.snat_positions.entry(addr) {
            hashbrown::hash_map::Entry::Occupied(e) => Ok(*e.get()),
            hashbrown::hash_map::Entry::Vacant(e) => {
                let i = u16::try_from(next).map_err(|_| format!("more than {} full-NAT source addresses in all", u16::MAX))?;
                e.insert(i);
                self.snat_addrs.push(addr);
                Ok(i)
            }
        }
    }

    /// Whether a packet goes to a full-NAT source address.
    pub fn is_to_snat(&self, key: &FlowKey) -> bool {
        self.return_ends.contains(&VipKey { addr: key.dst, proto: key.proto, port: 0 })
    }

    /// Whether a later IP fragment (no ports) may be NAT return traffic:
    /// sent to a full-NAT address, or by a NAT backend.
    pub fn may_be_return_fragment(&self, key: &FlowKey) -> bool {
        self.is_to_snat(key) || self.nat_backends.contains(&(key.src, key.proto))
    }

    /// Whether a packet is NAT return traffic by its ends alone.
    pub fn is_return(&self, key: &FlowKey) -> bool {
        let from_backend = VipKey { addr: key.src, proto: key.proto, port: key.src_port };
        !self.return_ends.is_empty() && (self.return_ends.contains(&from_backend) || self.is_to_snat(key))
    }

    #[inline]
    pub fn vip(&self, id: VipId) -> Option<&Vip> {
        self.vips.get(usize::from(id)).and_then(Option::as_ref)
    }

    #[inline]
    pub fn backend(&self, id: BackendId) -> Option<&BackendEntry> {
        self.backends.get(usize::from(id)).and_then(Option::as_ref)
    }

    pub fn vips(&self) -> impl Iterator<Item = (VipId, &Vip)> {
        self.vips.iter().enumerate().filter_map(|(i, v)| Some((i as VipId, v.as_ref()?)))
    }

    /// The largest pool of any VIP.
    pub fn max_pool(&self) -> usize {
        self.vips().map(|(_, v)| v.spec.backends.len()).max().unwrap_or(0)
    }

    pub fn vip_slots(&self) -> usize {
        self.vips.len()
    }

    pub fn backend_slots(&self) -> usize {
        self.backends.len()
    }
}

/// A backend's identity for Maglev and schedulers: a hash of its address
/// and port, the same on every node whatever the ids or the order.
pub fn backend_ident(addr: &[u8; 16], port: u16) -> u64 {
    let mut bytes = [0u8; 18];
    bytes[..16].copy_from_slice(addr);
    bytes[16..].copy_from_slice(&port.to_be_bytes());
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

impl fmt::Debug for Vip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Vip({})", vip_name(ip_from16(&self.addr), self.spec.proto, self.spec.port))
    }
}
