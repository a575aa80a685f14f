//! The host's side of plugin ABI versions 1 and 2 (`plugin-sdk/ABI.md`,
//! which is normative): the export table, the state and batch regions'
//! layouts and the encodings of the rows, the flow record and health
//! verdicts. Version 2 is version 1 and the batch entry point.

use fulcrum_dataplane::flow::FlowKey;
use fulcrum_dataplane::sched::BackendState;

/// The newest ABI version this host speaks; it speaks every one from 1.
pub const ABI_VERSION: u32 = 2;
/// The version that brought the batch exports, which it requires.
pub const BATCH_VERSION: u32 = 2;
/// `"FLCM"` read as a little-endian u32: the header's first field.
pub const MAGIC: u32 = u32::from_le_bytes(*b"FLCM");

/// Offsets inside the state region.
pub const FLOW_OFFSET: usize = 16;
pub const ROWS_OFFSET: usize = 64;
pub const ROW_SIZE: usize = 32;
pub const FLOW_SIZE: usize = 48;
pub const HEADER_SIZE: usize = 16;

/// Bytes the region spans for `cap` rows, in 64 bits so that no guest
/// answer can overflow it.
pub fn region_len(cap: u32) -> u64 {
    ROWS_OFFSET as u64 + ROW_SIZE as u64 * u64::from(cap)
}

/// The wasm signature of an export: `(params, results)`, every value i32.
pub struct Export {
    pub name: &'static str,
    pub params: usize,
    pub results: usize,
    pub required: bool,
}

pub const EXPORTS: [Export; 9] = [
    Export { name: "lb_abi_version", params: 0, results: 1, required: true },
    Export { name: "lb_state_ptr", params: 0, results: 1, required: true },
    Export { name: "lb_state_cap", params: 0, results: 1, required: true },
    Export { name: "lb_pick", params: 1, results: 1, required: true },
    Export { name: "lb_update", params: 1, results: 0, required: false },
    Export { name: "lb_health", params: 7, results: 1, required: false },
    Export { name: "lb_batch_ptr", params: 0, results: 1, required: false },
    Export { name: "lb_batch_cap", params: 0, results: 1, required: false },
    Export { name: "lb_pick_batch", params: 2, results: 1, required: false },
];

/// The batch exports: a module has all of them or none.
pub const BATCH_EXPORTS: [&str; 3] = ["lb_batch_ptr", "lb_batch_cap", "lb_pick_batch"];

/// Bytes the batch region spans for `cap` flows: the flow records, then
/// one little-endian i32 answer per flow.
pub fn batch_len(cap: u32) -> u64 {
    (FLOW_SIZE as u64 + 4) * u64::from(cap)
}

/// `lb_health`'s parameters, in order.
pub type HealthArgs = (i32, i32, i32, i32, i32, i32, i32);

/// The header the guest writes in `lb_state_ptr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub magic: u32,
    pub abi_version: u32,
    pub cap: u32,
    pub row_size: u32,
}

impl Header {
    pub fn read(b: &[u8; HEADER_SIZE]) -> Header {
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Header { magic: word(0), abi_version: word(4), cap: word(8), row_size: word(12) }
    }
}

/// Bit 0 of a row's flags.
pub const FLAG_UP: u16 = 1;

/// One backend row as the guest sees it, as the four little-endian u64
/// words its 32 bytes are: `id`, `bytes_per_sec`, then `weight | flags <<
/// 16 | active << 32` and `pending | rtt_us << 32`. Compared whole, to find
/// the rows that changed since the host last wrote them: the hot loop of a
/// pick, so it is kept to a few instructions per row.
#[derive(Clone, Copy, Debug, Default)]
pub struct Row([u64; 4]);

impl PartialEq for Row {
    /// Word by word in registers: the derived comparison loads the new
    /// row, just stored as four words, as two 16-byte vectors, which stalls
    /// store forwarding and cost more than all the rest of a pick.
    #[inline]
    fn eq(&self, other: &Row) -> bool {
        let [a, b] = [self.0, other.0];
        (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) == 0
    }
}

impl Eq for Row {}

impl Row {
    /// Stands for a row not written yet: its reserved flag bits are set,
    /// which no real row has, so it differs from every row.
    pub const UNWRITTEN: Row = Row([0, 0, u64::MAX, 0]);

    /// The engine's weights are u32; the ABI's 16 bits saturate, which
    /// keeps "above 0" (eligibility) intact.
    #[inline]
    pub fn new(b: &BackendState) -> Row {
        let weight = u64::from(b.weight.min(u32::from(u16::MAX)));
        let flags = if b.up { u64::from(FLAG_UP) } else { 0 };
        Row([b.id, b.bytes_per_sec, weight | flags << 16 | u64::from(b.active) << 32, u64::from(b.pending) | u64::from(b.rtt_us) << 32])
    }

    /// The row as `src` (32 bytes of guest memory) holds it.
    #[inline]
    pub fn read(src: &[u8]) -> Row {
        let mut words = [0u64; 4];
        for (w, s) in words.iter_mut().zip(src.chunks_exact(8)) {
            *w = u64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]);
        }
        Row(words)
    }

    /// Whether `other` differs in what `lb_update` must hear about: the
    /// identity, the weight or the health state (not the load figures).
    #[inline]
    pub fn placement_differs(&self, other: &Row) -> bool {
        self.0[0] != other.0[0] || (self.0[2] ^ other.0[2]) & 0xffff_ffff != 0
    }

    #[inline]
    pub fn write(&self, dst: &mut [u8]) {
        for (d, w) in dst.chunks_exact_mut(8).zip(self.0) {
            d.copy_from_slice(&w.to_le_bytes());
        }
    }
}

/// The flow record: the 5-tuple as the engine's `FlowKey` holds it (ports
/// as little-endian numbers), three reserved zero bytes, the flow hash.
pub fn flow_record(flow: &FlowKey, hash: u64) -> [u8; FLOW_SIZE] {
    let mut b = [0u8; FLOW_SIZE];
    b[0..16].copy_from_slice(&flow.src);
    b[16..32].copy_from_slice(&flow.dst);
    b[32..34].copy_from_slice(&flow.src_port.to_le_bytes());
    b[34..36].copy_from_slice(&flow.dst_port.to_le_bytes());
    b[36] = flow.proto.0;
    b[40..48].copy_from_slice(&hash.to_le_bytes());
    b
}

/// Bit 16 of a health verdict; bits 17.. must be zero.
pub const HEALTH_UP: u32 = 1 << 16;

#[cfg(test)]
mod tests {
    use std::mem::offset_of;

    use fulcrum_dataplane::wire::IpProtocol;
    use fulcrum_plugin_sdk as sdk;

    use super::*;

    /// The guest's structs as the bytes the host reads, field by field at
    /// the offsets `offset_of!` gives: the layout is checked without
    /// reading memory as bytes.
    trait GuestBytes {
        fn bytes(&self) -> Vec<u8>;
    }

    fn put(b: &mut [u8], at: usize, v: &[u8]) {
        b[at..at + v.len()].copy_from_slice(v);
    }

    impl GuestBytes for sdk::Backend {
        fn bytes(&self) -> Vec<u8> {
            let mut b = vec![0u8; size_of::<sdk::Backend>()];
            put(&mut b, offset_of!(sdk::Backend, id), &self.id.to_le_bytes());
            put(&mut b, offset_of!(sdk::Backend, bytes_per_sec), &self.bytes_per_sec.to_le_bytes());
            put(&mut b, offset_of!(sdk::Backend, weight), &self.weight.to_le_bytes());
            put(&mut b, offset_of!(sdk::Backend, flags), &self.flags.to_le_bytes());
            put(&mut b, offset_of!(sdk::Backend, active), &self.active.to_le_bytes());
            put(&mut b, offset_of!(sdk::Backend, pending), &self.pending.to_le_bytes());
            put(&mut b, offset_of!(sdk::Backend, rtt_us), &self.rtt_us.to_le_bytes());
            b
        }
    }

    impl GuestBytes for sdk::Flow {
        fn bytes(&self) -> Vec<u8> {
            let mut b = vec![0u8; size_of::<sdk::Flow>()];
            put(&mut b, offset_of!(sdk::Flow, src), &self.src);
            put(&mut b, offset_of!(sdk::Flow, dst), &self.dst);
            put(&mut b, offset_of!(sdk::Flow, src_port), &self.src_port.to_le_bytes());
            put(&mut b, offset_of!(sdk::Flow, dst_port), &self.dst_port.to_le_bytes());
            put(&mut b, offset_of!(sdk::Flow, proto), &[self.proto]);
            put(&mut b, offset_of!(sdk::Flow, hash), &self.hash.to_le_bytes());
            b
        }
    }

    impl GuestBytes for sdk::Header {
        fn bytes(&self) -> Vec<u8> {
            let mut b = vec![0u8; size_of::<sdk::Header>()];
            put(&mut b, offset_of!(sdk::Header, magic), &self.magic.to_le_bytes());
            put(&mut b, offset_of!(sdk::Header, abi_version), &self.abi_version.to_le_bytes());
            put(&mut b, offset_of!(sdk::Header, cap), &self.cap.to_le_bytes());
            put(&mut b, offset_of!(sdk::Header, row_size), &self.row_size.to_le_bytes());
            b
        }
    }

    #[test]
    fn rows_match_the_sdk_layout() {
        let bytes = |state: &BackendState| {
            let mut b = vec![0u8; ROW_SIZE];
            Row::new(state).write(&mut b);
            b
        };
        let state = BackendState { id: 0x0102_0304_0506_0708, weight: 70_000, up: true, active: 5, pending: 6, rtt_us: 7, bytes_per_sec: 1 << 40 };
        let guest = sdk::Backend::new(state.id, u16::MAX).with_active(5).with_pending(6).with_rtt_us(7).with_bytes_per_sec(1 << 40);
        assert_eq!(bytes(&state), guest.bytes());
        let down = BackendState { up: false, weight: 3, ..state };
        let guest_down = sdk::Backend { weight: 3, ..guest }.down();
        assert_eq!(bytes(&down), guest_down.bytes());
    }

    #[test]
    fn flow_record_matches_the_sdk_layout() {
        let key = FlowKey::new("198.18.0.1".parse().unwrap(), "198.18.0.100".parse().unwrap(), 4000, 80, IpProtocol::TCP);
        let guest = sdk::Flow::v4([198, 18, 0, 1], 4000, [198, 18, 0, 100], 80, 6, 99);
        assert_eq!(flow_record(&key, 99).to_vec(), guest.bytes());
    }

    #[test]
    fn header_and_constants_match_the_sdk() {
        assert_eq!((MAGIC, ABI_VERSION, ROW_SIZE), (sdk::MAGIC, sdk::ABI_VERSION, size_of::<sdk::Backend>()));
        let h = sdk::Header::CURRENT;
        let b: [u8; HEADER_SIZE] = h.bytes().try_into().unwrap();
        assert_eq!(Header::read(&b), Header { magic: MAGIC, abi_version: 2, cap: sdk::CAPACITY as u32, row_size: 32 });
        assert_eq!(region_len(sdk::CAPACITY as u32), size_of::<sdk::StateRegion>() as u64);
        assert_eq!(HEALTH_UP, sdk::HealthVerdict::UP_BIT);
        assert_eq!(batch_len(sdk::BATCH_CAPACITY as u32), size_of::<sdk::BatchRegion>() as u64);
        assert_eq!(std::mem::offset_of!(sdk::BatchRegion, choices), FLOW_SIZE * sdk::BATCH_CAPACITY);
    }

    #[test]
    fn a_row_reads_back_as_written() {
        let row = Row::new(&BackendState { id: 7, weight: 3, up: true, active: 1, pending: 2, rtt_us: 3, bytes_per_sec: 4 });
        let mut b = [0u8; ROW_SIZE];
        row.write(&mut b);
        assert_eq!(Row::read(&b), row);
    }

    #[test]
    fn only_identity_weight_and_health_are_placement_changes() {
        let b = BackendState { id: 1, weight: 1, up: true, ..BackendState::default() };
        let a = Row::new(&b);
        let loaded = BackendState { active: u32::MAX, pending: 9, rtt_us: 9, bytes_per_sec: 9, ..b };
        assert!(!a.placement_differs(&Row::new(&loaded)));
        assert!(a.placement_differs(&Row::new(&BackendState { weight: 2, ..b })));
        assert!(a.placement_differs(&Row::new(&BackendState { up: false, ..b })));
        assert!(a.placement_differs(&Row::new(&BackendState { id: 2, ..b })));
    }
}
