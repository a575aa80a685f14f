//! The memory layout of ABI version 2 (see `ABI.md`, which is normative).
//!
//! Every field is an integer or a byte array, so any bytes the host writes
//! are a valid value: host-controlled memory can never make a guest read
//! undefined behaviour.

use core::mem::{offset_of, size_of};

/// The ABI version this SDK implements (`lb_abi_version`).
pub const ABI_VERSION: u32 = 2;
/// First field of the header: "FLCM" read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"FLCM");
/// Backend rows in the state region (`lb_state_cap`). 1024 covers the
/// largest pools an L4 balancer serves while the region stays at 32 KiB.
pub const CAPACITY: usize = 1024;
/// Flows in the batch region (`lb_batch_cap`): as many as a worker's
/// chunk of frames can hold.
pub const BATCH_CAPACITY: usize = 64;

/// Start of the state region: a layout descriptor the guest writes when the
/// host calls `lb_state_ptr`, so the host can check it against its own view.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub magic: u32,
    pub abi_version: u32,
    /// Rows in the region, equal to `lb_state_cap()`.
    pub cap: u32,
    /// `size_of::<Backend>()`, 32 in version 1.
    pub row_size: u32,
}

impl Header {
    pub const CURRENT: Header = Header { magic: MAGIC, abi_version: ABI_VERSION, cap: CAPACITY as u32, row_size: size_of::<Backend>() as u32 };
}

/// The new flow to place, written by the host before each `lb_pick`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// Source address, 16 bytes; IPv4 is v4-mapped (`::ffff:a.b.c.d`).
    pub src: [u8; 16],
    /// Destination address (the VIP), same encoding.
    pub dst: [u8; 16],
    /// Ports as numbers (stored little endian, not in network order).
    pub src_port: u16,
    pub dst_port: u16,
    /// IP protocol number ([`Flow::TCP`], [`Flow::UDP`]).
    pub proto: u8,
    reserved: [u8; 3],
    /// The host's 64-bit hash of the 5-tuple: the same on every node.
    pub hash: u64,
}

impl Flow {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;

    pub const fn new(src: [u8; 16], dst: [u8; 16], src_port: u16, dst_port: u16, proto: u8, hash: u64) -> Flow {
        Flow { src, dst, src_port, dst_port, proto, reserved: [0; 3], hash }
    }

    /// An IPv4 flow, addresses v4-mapped as the host writes them.
    pub const fn v4(src: [u8; 4], src_port: u16, dst: [u8; 4], dst_port: u16, proto: u8, hash: u64) -> Flow {
        Flow::new(v4_mapped(src), v4_mapped(dst), src_port, dst_port, proto, hash)
    }

    /// A hash of the source address alone, for client affinity. Computed in
    /// the guest with a fixed function, so it is the same on every node and
    /// every run: changing it would move every client, so it never changes.
    pub const fn src_hash(&self) -> u64 {
        let a = u128::from_le_bytes(self.src);
        crate::mix64((a >> 64) as u64 ^ crate::mix64(a as u64 ^ SRC_HASH_SEED))
    }
}

const SRC_HASH_SEED: u64 = 0x6675_6c63_7275_6d32; // "fulcrum2"

const fn v4_mapped(a: [u8; 4]) -> [u8; 16] {
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3]]
}

/// One backend of the VIP's pool. The host rewrites a row only when one of
/// its fields changed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Stable identity: a hash of the backend's address and port, the same
    /// on every node and across reloads, whatever the row's position, and
    /// unique within the pool.
    pub id: u64,
    /// Smoothed forwarded bytes per second (both directions the host sees).
    pub bytes_per_sec: u64,
    /// Effective weight; 0 drains (no new flows).
    pub weight: u16,
    /// Bit 0 [`Backend::UP`]; the other bits are reserved (written 0, ignored).
    pub flags: u16,
    /// Established TCP connections and live UDP flows, as the calling
    /// worker counts them (about 1/N of the load with N workers).
    pub active: u32,
    /// Half-open connections (SYN forwarded, handshake not completed).
    pub pending: u32,
    /// Smoothed response time in µs; 0 = no sample yet.
    pub rtt_us: u32,
}

impl Backend {
    pub const UP: u16 = 1;

    /// An up backend with no load.
    pub const fn new(id: u64, weight: u16) -> Backend {
        Backend { id, bytes_per_sec: 0, weight, flags: Backend::UP, active: 0, pending: 0, rtt_us: 0 }
    }

    pub const fn is_up(&self) -> bool {
        self.flags & Backend::UP != 0
    }

    /// May take a new flow: up and not drained.
    pub const fn is_eligible(&self) -> bool {
        self.is_up() && self.weight > 0
    }

    pub const fn down(self) -> Backend {
        Backend { flags: self.flags & !Backend::UP, ..self }
    }

    pub const fn with_active(self, active: u32) -> Backend {
        Backend { active, ..self }
    }

    pub const fn with_pending(self, pending: u32) -> Backend {
        Backend { pending, ..self }
    }

    pub const fn with_rtt_us(self, rtt_us: u32) -> Backend {
        Backend { rtt_us, ..self }
    }

    pub const fn with_bytes_per_sec(self, bytes_per_sec: u64) -> Backend {
        Backend { bytes_per_sec, ..self }
    }
}

/// The whole guest-owned region at `lb_state_ptr()`.
#[repr(C)]
pub struct StateRegion {
    pub header: Header,
    pub flow: Flow,
    pub rows: [Backend; CAPACITY],
}

impl StateRegion {
    /// All zero (so a static of it costs no bytes in the .wasm file) until
    /// `lb_state_ptr` writes the header.
    pub const ZEROED: StateRegion = StateRegion {
        header: Header { magic: 0, abi_version: 0, cap: 0, row_size: 0 },
        flow: Flow::new([0; 16], [0; 16], 0, 0, 0, 0),
        rows: [Backend { id: 0, bytes_per_sec: 0, weight: 0, flags: 0, active: 0, pending: 0, rtt_us: 0 }; CAPACITY],
    };
}

/// The region at `lb_batch_ptr()`: the new flows of one batch, which
/// the host writes before `lb_pick_batch`, and a row index or -1 per flow,
/// which `lb_pick_batch` writes.
#[repr(C)]
pub struct BatchRegion {
    pub flows: [Flow; BATCH_CAPACITY],
    pub choices: [i32; BATCH_CAPACITY],
}

impl BatchRegion {
    pub const ZEROED: BatchRegion = BatchRegion { flows: [Flow::new([0; 16], [0; 16], 0, 0, 0, 0); BATCH_CAPACITY], choices: [0; BATCH_CAPACITY] };
}

// The offsets ABI.md promises; a change here is a new ABI version. The
// batch region's capacity is the guest's choice: the host reads it from
// `lb_batch_cap`.
const _: () = {
    assert!(size_of::<Header>() == 16);
    assert!(size_of::<Flow>() == 48);
    assert!(offset_of!(Flow, src) == 0);
    assert!(offset_of!(Flow, dst) == 16);
    assert!(offset_of!(Flow, src_port) == 32);
    assert!(offset_of!(Flow, dst_port) == 34);
    assert!(offset_of!(Flow, proto) == 36);
    assert!(offset_of!(Flow, hash) == 40);
    assert!(size_of::<Backend>() == 32);
    assert!(offset_of!(Backend, id) == 0);
    assert!(offset_of!(Backend, bytes_per_sec) == 8);
    assert!(offset_of!(Backend, weight) == 16);
    assert!(offset_of!(Backend, flags) == 18);
    assert!(offset_of!(Backend, active) == 20);
    assert!(offset_of!(Backend, pending) == 24);
    assert!(offset_of!(Backend, rtt_us) == 28);
    assert!(offset_of!(StateRegion, header) == 0);
    assert!(offset_of!(StateRegion, flow) == 16);
    assert!(offset_of!(StateRegion, rows) == 64);
    assert!(core::mem::align_of::<StateRegion>() == 8);
    assert!(size_of::<StateRegion>() == 64 + 32 * CAPACITY);
    assert!(offset_of!(BatchRegion, choices) == 48 * BATCH_CAPACITY);
    assert!(core::mem::align_of::<BatchRegion>() == 8);
};
