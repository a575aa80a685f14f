//! Loading and attaching XDP programs: fulcrum's own (C sources in
//! `io/bpf/`), and any other object through [`XdpProgram`] (the test
//! lab's pass and sink programs).
//!
//! aya (pure Rust) loads the objects and owns the maps; the attach itself is
//! a BPF link made here (see `sys::xdp_link_create`), so a program is gone
//! when its value is dropped or the process dies, even by SIGKILL. aya is
//! used instead of libbpf-rs because xsk-rs already links the libbpf that
//! libxdp-sys bundles: a second libbpf-sys would clash at link time.
//!
//! - [`SteerProgram`]: redirects VIP and NAT-return traffic into the AF_XDP
//!   socket of the frame's rx queue, passes the rest to the kernel.
//! - [`DecapProgram`]: for tunnel-mode backends, strips IPIP/IP6IP6/GUE.

use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use aya::maps::{HashMap, MapData, XskMap};
use aya::programs::Xdp;
use aya::{Ebpf, EbpfLoader, Pod};
use fulcrum_dataplane::flow::key::addr16;
use fulcrum_dataplane::wire::IpProtocol;

use super::sys::{self, Privilege};
use super::{IoError, XdpMode};

const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// Key of the `vips` and `returns` maps; mirrors `struct lb_key` in
/// bpf/steer.c (20 bytes, no padding).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct LbKey {
    addr: [u8; 16],
    proto: u8,
    dir: u8,
    /// Big-endian; 0 = every port.
    port: [u8; 2],
}

// SAFETY: plain bytes, no padding.
unsafe impl Pod for LbKey {}

const MATCH_DST: u8 = 0;
const MATCH_SRC: u8 = 1;
/// Added to a direction: the entry that steers later IP fragments (no
/// ports) of an address and protocol with port-specific entries.
const FRAG: u8 = 2;

impl LbKey {
    fn new(addr: IpAddr, proto: IpProtocol, dir: u8, port: u16) -> Result<LbKey, IoError> {
        if proto != IpProtocol::TCP && proto != IpProtocol::UDP {
            return Err(IoError::InvalidArgument(format!("protocol {proto}: only TCP and UDP are balanced")));
        }
        Ok(LbKey { addr: addr16(addr), proto: proto.0, dir, port: port.to_be_bytes() })
    }
}

/// NAT return traffic the steering program must redirect to the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReturnTraffic {
    /// Full-NAT (one-arm): backends answer the balancer's SNAT address and
    /// port; matched on the destination. Port 0 = every port of that
    /// address, so prefer an SNAT address the host uses for nothing else.
    ToSnat { addr: IpAddr, proto: IpProtocol, port: u16 },
    /// Inline DNAT: backends answer clients through the balancer; matched
    /// on the backend address and port as the source. Port 0 = every port.
    /// Frames to the host's own addresses are never matched this way.
    FromBackend { addr: IpAddr, proto: IpProtocol, port: u16 },
}

impl ReturnTraffic {
    fn key(self) -> Result<LbKey, IoError> {
        match self {
            ReturnTraffic::ToSnat { addr, proto, port } => LbKey::new(addr, proto, MATCH_DST, port),
            ReturnTraffic::FromBackend { addr, proto, port } => LbKey::new(addr, proto, MATCH_SRC, port),
        }
    }
}

/// A loaded program and the BPF link that attaches it; dropping it
/// detaches. Field order: the link closes (detaching the program) before
/// the object is unloaded.
pub struct XdpProgram {
    _link: OwnedFd,
    ebpf: Ebpf,
    mode: XdpMode,
}

impl XdpProgram {
    /// Loads program `program` of the BPF object `object` (an ELF image,
    /// 8-byte aligned: `aya::include_bytes_aligned!`) and attaches it to
    /// `ifname` through a BPF link.
    pub fn attach(program: &'static str, object: &[u8], ifname: &str, mode: XdpMode) -> Result<XdpProgram, IoError> {
        XdpProgram::load(program, object, ifname, mode, None)
    }

    fn load(program: &'static str, object: &[u8], ifname: &str, mode: XdpMode, gue_port: Option<u16>) -> Result<XdpProgram, IoError> {
        let what = format!("attaching XDP program `{program}` to {ifname}");
        sys::check_privilege(&what, Privilege::AttachXdp)?;
        let ifindex = sys::ifindex(ifname)?;

        let mut loader = EbpfLoader::new();
        if let Some(port) = gue_port.as_ref() {
            loader.override_global("gue_port", port, true);
        }
        let load_err = |e: &(dyn std::error::Error + 'static)| IoError::wrap(e, what.clone(), |detail| IoError::Load { program, detail });
        let mut ebpf = loader.load(object).map_err(|e| load_err(&e))?;
        let prog: &mut Xdp =
            ebpf.program_mut(program).ok_or_else(|| IoError::Load { program, detail: "not in the object".into() })?.try_into().map_err(|e| load_err(&e))?;
        prog.load().map_err(|e| load_err(&e))?;
        let fd = prog.fd().map_err(|e| load_err(&e))?.as_fd();

        let attach = |m: XdpMode| {
            let flags = if m == XdpMode::Native { XDP_FLAGS_DRV_MODE } else { XDP_FLAGS_SKB_MODE };
            sys::xdp_link_create(fd, ifindex, flags).map_err(|source| match source.raw_os_error() {
                Some(libc::EPERM) => IoError::NotPermitted { what: what.clone() },
                _ => IoError::XdpAttach { ifname: ifname.to_owned(), mode: m, source },
            })
        };
        let (link, mode) = match mode {
            XdpMode::Auto => match attach(XdpMode::Native) {
                Ok(link) => (link, XdpMode::Native),
                Err(IoError::XdpAttach { source, .. }) if !matches!(source.raw_os_error(), Some(libc::EBUSY | libc::EEXIST)) => {
                    (attach(XdpMode::Generic)?, XdpMode::Generic)
                }
                Err(e) => return Err(e),
            },
            m => (attach(m)?, m),
        };
        Ok(XdpProgram { _link: link, ebpf, mode })
    }

    /// The mode actually in use (Auto resolves to Native or Generic).
    pub fn mode(&self) -> XdpMode {
        self.mode
    }

    /// Takes a map of the object out, typed.
    pub fn take_map<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(&mut self, name: &str) -> Result<T, IoError> {
        let map = self.ebpf.take_map(name).ok_or_else(|| IoError::Map { what: name.into(), detail: "not in the object".into() })?;
        T::try_from(map).map_err(|e| IoError::wrap(&e, name, |detail| IoError::Map { what: name.into(), detail }))
    }
}

/// Turns an aya map error into an [`IoError::Map`] naming `what`.
pub fn map_err(what: &str) -> impl Fn(aya::maps::MapError) -> IoError + '_ {
    move |e| IoError::wrap(&e, what, |detail| IoError::Map { what: what.into(), detail })
}

/// The steering program attached to one interface. Dropping it detaches.
pub struct SteerProgram {
    vips: HashMap<MapData, LbKey, u8>,
    returns: HashMap<MapData, LbKey, u8>,
    host_addrs: HashMap<MapData, [u8; 16], u8>,
    xsks: XskMap<MapData>,
    /// Each FRAG entry and the port-specific entries that need it: it goes
    /// when the last of them does.
    frag_members: std::collections::HashMap<(Which, LbKey), std::collections::HashSet<u16>>,
    prog: XdpProgram,
}

/// The two maps of match entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Which {
    Vips,
    Returns,
}

impl SteerProgram {
    /// Loads and attaches the program; the host's current addresses are
    /// registered as `host_addrs` (see `ReturnTraffic::FromBackend`).
    pub fn attach(ifname: &str, mode: XdpMode) -> Result<SteerProgram, IoError> {
        let object = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/steer.o"));
        let mut prog = XdpProgram::attach("steer", object, ifname, mode)?;
        let mut steer = SteerProgram {
            vips: prog.take_map("vips")?,
            returns: prog.take_map("returns")?,
            host_addrs: prog.take_map("host_addrs")?,
            xsks: prog.take_map("xsks")?,
            frag_members: std::collections::HashMap::new(),
            prog,
        };
        let addrs = sys::host_addresses().map_err(|e| IoError::Map { what: "host_addrs".into(), detail: format!("getifaddrs: {e}") })?;
        for addr in addrs {
            steer.add_host_addr(addr)?;
        }
        Ok(steer)
    }

    /// The mode actually in use (Auto resolves to Native or Generic).
    pub fn mode(&self) -> XdpMode {
        self.prog.mode
    }

    /// Steers traffic to `addr`, `proto` (TCP or UDP), `port` (0 = all).
    pub fn add_vip(&mut self, addr: IpAddr, proto: IpProtocol, port: u16) -> Result<(), IoError> {
        let key = LbKey::new(addr, proto, MATCH_DST, port)?;
        self.add(Which::Vips, key)
    }

    /// Stops steering a VIP; false if it was not there.
    pub fn remove_vip(&mut self, addr: IpAddr, proto: IpProtocol, port: u16) -> Result<bool, IoError> {
        let key = LbKey::new(addr, proto, MATCH_DST, port)?;
        self.remove(Which::Vips, key)
    }

    pub fn add_return(&mut self, ret: ReturnTraffic) -> Result<(), IoError> {
        self.add(Which::Returns, ret.key()?)
    }

    /// False if it was not there.
    pub fn remove_return(&mut self, ret: ReturnTraffic) -> Result<bool, IoError> {
        self.remove(Which::Returns, ret.key()?)
    }

    fn map(&mut self, which: Which) -> &mut HashMap<MapData, LbKey, u8> {
        match which {
            Which::Vips => &mut self.vips,
            Which::Returns => &mut self.returns,
        }
    }

    /// Inserts `key`, and for a port-specific one the FRAG entry of its
    /// address and protocol.
    fn add(&mut self, which: Which, key: LbKey) -> Result<(), IoError> {
        let what = if which == Which::Vips { "vips: insert" } else { "returns: insert" };
        self.map(which).insert(key, 1, 0).map_err(map_err(what))?;
        let port = u16::from_be_bytes(key.port);
        if port == 0 {
            return Ok(());
        }
        let frag = LbKey { dir: key.dir + FRAG, port: [0; 2], ..key };
        if self.frag_members.get(&(which, frag)).is_none_or(|m| m.is_empty()) {
            self.map(which).insert(frag, 1, 0).map_err(map_err(what))?;
        }
        self.frag_members.entry((which, frag)).or_default().insert(port);
        Ok(())
    }

    /// Removes `key`, and the FRAG entry its port-specific kind needed when
    /// no other entry needs it; false if `key` was not there.
    fn remove(&mut self, which: Which, key: LbKey) -> Result<bool, IoError> {
        let what = if which == Which::Vips { "vips: remove" } else { "returns: remove" };
        let removed = remove(self.map(which), &key, what)?;
        let port = u16::from_be_bytes(key.port);
        let frag = LbKey { dir: key.dir + FRAG, port: [0; 2], ..key };
        if port != 0
            && let Some(members) = self.frag_members.get_mut(&(which, frag))
            && members.remove(&port)
            && members.is_empty()
        {
            self.frag_members.remove(&(which, frag));
            remove(self.map(which), &frag, what)?;
        }
        Ok(removed)
    }

    /// Registers an address added to the host after `attach`.
    pub fn add_host_addr(&mut self, addr: IpAddr) -> Result<(), IoError> {
        self.host_addrs.insert(addr16(addr), 1, 0).map_err(map_err("host_addrs: insert"))
    }

    /// Makes `socket` (an AF_XDP socket bound to this interface's
    /// `queue`) the target for frames received on that queue. The kernel
    /// drops the entry when the socket closes.
    pub fn register_socket(&mut self, queue: u32, socket: impl AsRawFd) -> Result<(), IoError> {
        if queue >= self.xsks.len() {
            return Err(IoError::InvalidArgument(format!("rx queue {queue}: the steering program handles queues 0..{}", self.xsks.len())));
        }
        self.xsks.set(queue, socket, 0).map_err(map_err("xsks: set"))
    }
}

fn remove<K: Pod>(map: &mut HashMap<MapData, K, u8>, key: &K, what: &str) -> Result<bool, IoError> {
    match map.remove(key) {
        Ok(()) => Ok(true),
        Err(aya::maps::MapError::KeyNotFound) => Ok(false),
        Err(e) => Err(map_err(what)(e)),
    }
}

/// The tunnel decapsulation program (IPIP, IP6IP6, GUE) for backends.
pub struct DecapProgram {
    local_addrs: HashMap<MapData, [u8; 16], u8>,
    prog: XdpProgram,
}

impl DecapProgram {
    /// Attaches to `ifname`; tunnels to any of the host's current
    /// addresses are decapsulated, GUE on UDP port `gue_port`.
    pub fn attach(ifname: &str, mode: XdpMode, gue_port: u16) -> Result<DecapProgram, IoError> {
        let object = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/decap.o"));
        let mut prog = XdpProgram::load("decap", object, ifname, mode, Some(gue_port))?;
        let mut decap = DecapProgram { local_addrs: prog.take_map("local_addrs")?, prog };
        let addrs = sys::host_addresses().map_err(|e| IoError::Map { what: "local_addrs".into(), detail: format!("getifaddrs: {e}") })?;
        for addr in addrs {
            decap.add_local_addr(addr)?;
        }
        Ok(decap)
    }

    pub fn mode(&self) -> XdpMode {
        self.prog.mode
    }

    /// Also decapsulates tunnels to `addr` (an address added later).
    pub fn add_local_addr(&mut self, addr: IpAddr) -> Result<(), IoError> {
        self.local_addrs.insert(addr16(addr), 1, 0).map_err(map_err("local_addrs: insert"))
    }
}
