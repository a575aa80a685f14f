//! Loading and attaching fulcrum's XDP programs (C sources in `engine/bpf/`).
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
//! - [`PassProgram`]: XDP_PASS, for veth peers that must accept XDP_TX or
//!   redirected frames.
//! - [`SinkProgram`]: the perf harness's receiver: counts and drops the
//!   generator's frames with their latency.

use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use aya::maps::{HashMap, MapData, PerCpuArray, XskMap};
use aya::programs::Xdp;
use aya::{Ebpf, EbpfLoader, Pod};

use super::sys::{self, Privilege};
use super::{IoError, XdpMode};
use crate::flow::key::{PROTO_TCP, PROTO_UDP, addr16};

const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// Key of the `vips` and `returns` maps; mirrors `struct lb_key` in
/// bpf/steer.c (20 bytes, no padding).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
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

impl LbKey {
    fn new(addr: IpAddr, proto: u8, dir: u8, port: u16) -> Result<LbKey, IoError> {
        if proto != PROTO_TCP && proto != PROTO_UDP {
            return Err(IoError::InvalidArgument(format!("protocol {proto}: only TCP ({PROTO_TCP}) and UDP ({PROTO_UDP}) are balanced")));
        }
        Ok(LbKey { addr: addr16(addr), proto, dir, port: port.to_be_bytes() })
    }
}

/// NAT return traffic the steering program must redirect to the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReturnTraffic {
    /// Full-NAT (one-arm): backends answer the balancer's SNAT address and
    /// port; matched on the destination. Port 0 = every port of that
    /// address, so prefer an SNAT address the host uses for nothing else.
    ToSnat { addr: IpAddr, proto: u8, port: u16 },
    /// Inline DNAT: backends answer clients through the balancer; matched
    /// on the backend address and port as the source. Port 0 = every port.
    /// Frames to the host's own addresses are never matched this way.
    FromBackend { addr: IpAddr, proto: u8, port: u16 },
}

impl ReturnTraffic {
    fn key(self) -> Result<LbKey, IoError> {
        match self {
            ReturnTraffic::ToSnat { addr, proto, port } => LbKey::new(addr, proto, MATCH_DST, port),
            ReturnTraffic::FromBackend { addr, proto, port } => LbKey::new(addr, proto, MATCH_SRC, port),
        }
    }
}

/// A loaded program and the BPF link that attaches it. Field order: the
/// link closes (detaching the program) before the object is unloaded.
struct Attached {
    _link: OwnedFd,
    ebpf: Ebpf,
    mode: XdpMode,
}

impl Attached {
    fn new(program: &'static str, object: &[u8], ifname: &str, mode: XdpMode, gue_port: Option<u16>) -> Result<Attached, IoError> {
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
        Ok(Attached { _link: link, ebpf, mode })
    }

    fn take_map<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(&mut self, name: &str) -> Result<T, IoError> {
        let map = self.ebpf.take_map(name).ok_or_else(|| IoError::Map { what: name.into(), detail: "not in the object".into() })?;
        T::try_from(map).map_err(|e| IoError::wrap(&e, name, |detail| IoError::Map { what: name.into(), detail }))
    }
}

fn map_err(what: &str) -> impl Fn(aya::maps::MapError) -> IoError + '_ {
    move |e| IoError::wrap(&e, what, |detail| IoError::Map { what: what.into(), detail })
}

/// The steering program attached to one interface. Dropping it detaches.
pub struct SteerProgram {
    vips: HashMap<MapData, LbKey, u8>,
    returns: HashMap<MapData, LbKey, u8>,
    host_addrs: HashMap<MapData, [u8; 16], u8>,
    xsks: XskMap<MapData>,
    prog: Attached,
}

impl SteerProgram {
    /// Loads and attaches the program; the host's current addresses are
    /// registered as `host_addrs` (see `ReturnTraffic::FromBackend`).
    pub fn attach(ifname: &str, mode: XdpMode) -> Result<SteerProgram, IoError> {
        let object = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/steer.o"));
        let mut prog = Attached::new("steer", object, ifname, mode, None)?;
        let mut steer = SteerProgram {
            vips: prog.take_map("vips")?,
            returns: prog.take_map("returns")?,
            host_addrs: prog.take_map("host_addrs")?,
            xsks: prog.take_map("xsks")?,
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
    pub fn add_vip(&mut self, addr: IpAddr, proto: u8, port: u16) -> Result<(), IoError> {
        let key = LbKey::new(addr, proto, MATCH_DST, port)?;
        self.vips.insert(key, 1, 0).map_err(map_err("vips: insert"))
    }

    /// Stops steering a VIP; false if it was not there.
    pub fn remove_vip(&mut self, addr: IpAddr, proto: u8, port: u16) -> Result<bool, IoError> {
        let key = LbKey::new(addr, proto, MATCH_DST, port)?;
        remove(&mut self.vips, &key, "vips: remove")
    }

    pub fn add_return(&mut self, ret: ReturnTraffic) -> Result<(), IoError> {
        self.returns.insert(ret.key()?, 1, 0).map_err(map_err("returns: insert"))
    }

    /// False if it was not there.
    pub fn remove_return(&mut self, ret: ReturnTraffic) -> Result<bool, IoError> {
        remove(&mut self.returns, &ret.key()?, "returns: remove")
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
    prog: Attached,
}

/// Default UDP port of GUE tunnels, as the engine encapsulates them.
pub const GUE_PORT: u16 = 6080;

impl DecapProgram {
    /// Attaches to `ifname`; tunnels to any of the host's current
    /// addresses are decapsulated, GUE on UDP port `gue_port`.
    pub fn attach(ifname: &str, mode: XdpMode, gue_port: u16) -> Result<DecapProgram, IoError> {
        let object = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/decap.o"));
        let mut prog = Attached::new("decap", object, ifname, mode, Some(gue_port))?;
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

/// An XDP_PASS program: lets a veth accept XDP_TX'd or redirected frames.
pub struct PassProgram {
    prog: Attached,
}

impl PassProgram {
    pub fn attach(ifname: &str, mode: XdpMode) -> Result<PassProgram, IoError> {
        let object = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pass.o"));
        Ok(PassProgram { prog: Attached::new("pass", object, ifname, mode, None)? })
    }

    pub fn mode(&self) -> XdpMode {
        self.prog.mode
    }
}

/// What a [`SinkProgram`] has counted since it was attached. Subtract two
/// snapshots for one measurement.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkCounts {
    /// The generator's frames received (and dropped).
    pub frames: u64,
    /// Frames with a lower sequence number than one already seen in their flow.
    pub reordered: u64,
    /// Frames per latency bucket; see [`SinkProgram::bucket_ns`].
    pub latency: Vec<u64>,
}

impl SinkCounts {
    /// `self - earlier`, bucket by bucket.
    pub fn since(&self, earlier: &SinkCounts) -> SinkCounts {
        SinkCounts {
            frames: self.frames - earlier.frames,
            reordered: self.reordered - earlier.reordered,
            latency: self.latency.iter().zip(earlier.latency.iter().chain(std::iter::repeat(&0))).map(|(a, b)| a - b).collect(),
        }
    }

    /// Adds another sink's counts (frames spread over several backends).
    pub fn add(&mut self, other: &SinkCounts) {
        self.frames += other.frames;
        self.reordered += other.reordered;
        self.latency.resize(self.latency.len().max(other.latency.len()), 0);
        for (a, b) in self.latency.iter_mut().zip(&other.latency) {
            *a += b;
        }
    }
}

/// The perf harness's sink (bpf/sink.c): counts the frames that end with
/// the generator's stamp, their one-way latency and reordering, and drops
/// them; passes everything else.
pub struct SinkProgram {
    counters: PerCpuArray<MapData, u64>,
    latency: PerCpuArray<MapData, u64>,
    _prog: Attached,
}

impl SinkProgram {
    /// The stamp's first word, as bpf/sink.c expects it.
    pub const MAGIC: u32 = 0xf1c7_a7e5;
    /// Bytes of the stamp at the end of every generated IP packet:
    /// magic, flow, seq, sent (CLOCK_MONOTONIC ns, truncated), u32 each
    /// in host order.
    pub const STAMP_LEN: usize = 16;
    const SUB: u32 = 32;

    pub fn attach(ifname: &str, mode: XdpMode) -> Result<SinkProgram, IoError> {
        let object = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sink.o"));
        let mut prog = Attached::new("sink", object, ifname, mode, None)?;
        Ok(SinkProgram { counters: prog.take_map("counters")?, latency: prog.take_map("latency")?, _prog: prog })
    }

    /// Sums the per-CPU counters (one system call per bucket: call it
    /// between measurements, not during).
    pub fn counts(&self) -> Result<SinkCounts, IoError> {
        let sum = |map: &PerCpuArray<MapData, u64>, i: u32| map.get(&i, 0).map(|v| v.iter().sum::<u64>()).map_err(map_err("sink: read"));
        Ok(SinkCounts {
            frames: sum(&self.counters, 0)?,
            reordered: sum(&self.counters, 1)?,
            latency: (0..self.latency.len()).map(|i| sum(&self.latency, i)).collect::<Result<_, _>>()?,
        })
    }

    /// The latency range of bucket `i` in ns, `low..low + width`: below 32
    /// one bucket per ns, then 32 buckets per power of two.
    pub fn bucket_ns(i: u32) -> (u64, u64) {
        if i < Self::SUB {
            return (u64::from(i), 1);
        }
        let (octave, sub) = ((i - Self::SUB) / Self::SUB, (i - Self::SUB) % Self::SUB);
        (u64::from(Self::SUB + sub) << octave, 1 << octave)
    }
}
