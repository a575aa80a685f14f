//! The host's side of plugin ABI version 1 (`plugin-sdk/ABI.md`, which is
//! normative): the export table, the state region's layout and the
//! encodings of the rows, the flow record and health verdicts.

use crate::flow::FlowKey;
use crate::sched::BackendState;

/// The ABI versions this host speaks.
pub const ABI_VERSION: u32 = 1;
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

pub const EXPORTS: [Export; 6] = [
    Export { name: "lb_abi_version", params: 0, results: 1, required: true },
    Export { name: "lb_state_ptr", params: 0, results: 1, required: true },
    Export { name: "lb_state_cap", params: 0, results: 1, required: true },
    Export { name: "lb_pick", params: 1, results: 1, required: true },
    Export { name: "lb_update", params: 1, results: 0, required: false },
    Export { name: "lb_health", params: 7, results: 1, required: false },
];

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

/// One backend row as the guest sees it. Compared field by field to find
/// the rows that changed since the host last wrote them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Row {
    pub id: u64,
    pub bytes_per_sec: u64,
    pub weight: u16,
    pub flags: u16,
    pub active: u32,
    pub pending: u32,
    pub rtt_us: u32,
}

impl Row {
    /// The engine's weights are u32; the ABI's 16 bits saturate, which
    /// keeps "above 0" (eligibility) intact.
    pub fn new(b: &BackendState) -> Row {
        Row {
            id: b.id,
            bytes_per_sec: b.bytes_per_sec,
            weight: b.weight.min(u32::from(u16::MAX)) as u16,
            flags: if b.up { FLAG_UP } else { 0 },
            active: b.active,
            pending: b.pending,
            rtt_us: b.rtt_us,
        }
    }

    /// Whether `other` differs in what `lb_update` must hear about: the
    /// identity, the weight or the health state (not the load figures).
    pub fn placement_differs(&self, other: &Row) -> bool {
        (self.id, self.weight, self.flags) != (other.id, other.weight, other.flags)
    }

    pub fn to_bytes(self) -> [u8; ROW_SIZE] {
        let mut b = [0u8; ROW_SIZE];
        b[0..8].copy_from_slice(&self.id.to_le_bytes());
        b[8..16].copy_from_slice(&self.bytes_per_sec.to_le_bytes());
        b[16..18].copy_from_slice(&self.weight.to_le_bytes());
        b[18..20].copy_from_slice(&self.flags.to_le_bytes());
        b[20..24].copy_from_slice(&self.active.to_le_bytes());
        b[24..28].copy_from_slice(&self.pending.to_le_bytes());
        b[28..32].copy_from_slice(&self.rtt_us.to_le_bytes());
        b
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
    b[36] = flow.proto;
    b[40..48].copy_from_slice(&hash.to_le_bytes());
    b
}

/// Bit 16 of a health verdict; bits 17.. must be zero.
pub const HEALTH_UP: u32 = 1 << 16;

#[cfg(test)]
mod tests {
    use super::*;
    use fulcrum_plugin_sdk as sdk;

    /// The bytes of a `#[repr(C)]` value without padding.
    fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
        // SAFETY: only used on the SDK's padding-free ABI structs (their
        // sizes are asserted by the SDK), so every byte is initialised.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()).to_vec() }
    }

    #[test]
    fn rows_match_the_sdk_layout() {
        let state = BackendState { id: 0x0102_0304_0506_0708, weight: 70_000, up: true, active: 5, pending: 6, rtt_us: 7, bytes_per_sec: 1 << 40 };
        let guest = sdk::Backend::new(state.id, u16::MAX).with_active(5).with_pending(6).with_rtt_us(7).with_bytes_per_sec(1 << 40);
        assert_eq!(Row::new(&state).to_bytes().to_vec(), bytes_of(&guest));
        let down = BackendState { up: false, weight: 3, ..state };
        let guest_down = sdk::Backend { weight: 3, ..guest }.down();
        assert_eq!(Row::new(&down).to_bytes().to_vec(), bytes_of(&guest_down));
    }

    #[test]
    fn flow_record_matches_the_sdk_layout() {
        let key = FlowKey::new("198.18.0.1".parse().unwrap(), "198.18.0.100".parse().unwrap(), 4000, 80, 6);
        let guest = sdk::Flow::v4([198, 18, 0, 1], 4000, [198, 18, 0, 100], 80, 6, 99);
        assert_eq!(flow_record(&key, 99).to_vec(), bytes_of(&guest));
    }

    #[test]
    fn header_and_constants_match_the_sdk() {
        assert_eq!((MAGIC, ABI_VERSION, ROW_SIZE), (sdk::MAGIC, sdk::ABI_VERSION, size_of::<sdk::Backend>()));
        let h = sdk::Header::V1;
        let b: [u8; HEADER_SIZE] = bytes_of(&h).try_into().unwrap();
        assert_eq!(Header::read(&b), Header { magic: MAGIC, abi_version: 1, cap: sdk::CAPACITY as u32, row_size: 32 });
        assert_eq!(region_len(sdk::CAPACITY as u32), size_of::<sdk::StateRegion>() as u64);
        assert_eq!(HEALTH_UP, sdk::HealthVerdict::UP_BIT);
    }

    #[test]
    fn only_identity_weight_and_health_are_placement_changes() {
        let a = Row::new(&BackendState { id: 1, weight: 1, up: true, ..BackendState::default() });
        assert!(!a.placement_differs(&Row { active: 9, pending: 9, rtt_us: 9, bytes_per_sec: 9, ..a }));
        assert!(a.placement_differs(&Row { weight: 2, ..a }));
        assert!(a.placement_differs(&Row { flags: 0, ..a }));
        assert!(a.placement_differs(&Row { id: 2, ..a }));
    }
}
