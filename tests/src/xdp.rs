//! The lab's own BPF programs (C in `tests/bpf/`, built by `build.rs`),
//! XDP ones loaded through fulcrum-io's `XdpProgram`: test support, not
//! shipped.
//!
//! - [`PassProgram`]: XDP_PASS, for veth peers that must accept XDP_TX or
//!   redirected frames.
//! - [`SinkProgram`]: the perf harness's receiver: counts and drops the
//!   generator's frames with their latency.
//! - [`TxQueueProgram`]: tc egress, makes a veth queue by the flow as a
//!   NIC's RSS does.

use aya::maps::{MapData, PerCpuArray};
use fulcrum_io::xdp::{XdpProgram, map_err};
use fulcrum_io::{IoError, XdpMode};

/// An XDP_PASS program: lets a veth accept XDP_TX'd or redirected frames.
pub struct PassProgram {
    prog: XdpProgram,
}

impl PassProgram {
    pub fn attach(ifname: &str, mode: XdpMode) -> Result<PassProgram, IoError> {
        let object = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pass.o"));
        Ok(PassProgram { prog: XdpProgram::attach("pass", object, ifname, mode)? })
    }

    pub fn mode(&self) -> XdpMode {
        self.prog.mode()
    }
}

/// tc egress on a veth end (bpf/txq.c): its packets' hash, and so the tx
/// queue the kernel picks, the peer's rx queue, comes from their addresses
/// and ports (addresses alone for fragments), as a NIC's RSS hashes.
pub struct TxQueueProgram {
    _bpf: aya::Ebpf,
}

impl TxQueueProgram {
    pub fn attach(ifname: &str) -> Result<TxQueueProgram, String> {
        let object = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/txq.o"));
        let mut bpf = aya::Ebpf::load(object).map_err(|e| format!("loading txq: {e}"))?;
        let prog: &mut aya::programs::SchedClassifier =
            bpf.program_mut("txq").ok_or("no program txq")?.try_into().map_err(|e| format!("txq is no tc program: {e}"))?;
        prog.load().map_err(|e| format!("loading txq: {e}"))?;
        prog.attach(ifname, aya::programs::TcAttachType::Egress).map_err(|e| format!("attaching txq to {ifname}: {e}"))?;
        Ok(TxQueueProgram { _bpf: bpf })
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
    _prog: XdpProgram,
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
        let mut prog = XdpProgram::attach("sink", object, ifname, mode)?;
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
