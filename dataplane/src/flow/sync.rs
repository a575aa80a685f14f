//! Flow sync between balancers: the entry one node sends another about a
//! flow, and the datagram that carries a batch of them.
//!
//! An entry names everything by stable identities (addresses and ports,
//! never a daemon's VIP or backend ids), so a peer with the same services
//! but other ids places it right. Pure encode and decode: the daemon adds
//! the authentication trailer and moves the bytes. Decoding is checked
//! once for length, so no accessor after it can panic on hostile input.
//!
//! Layout (big endian):
//!
//! ```text
//! header  magic "FLSY" | version u8 | kind u8 | flags u8 | reserved u8
//!         boot_id u64 | seq u32 | workers u16 | snat_first u16 | snat_last u16
//!         count u16                                              (28 bytes)
//! entry   client src[16] dst[16] src_port u16 dst_port u16 proto u8
//!         vip_port u16 | backend[16] backend_port u16 | snat[16] snat_port u16
//!         client_mac[6] | iface u8 | state u8 | remaining_ms u32 | worker u16
//!         splice flags u8 | seq_delta u32 | ts_delta u32 | window_shift i8
//!                                                                (99 bytes)
//! ```

use std::fmt;

use crate::flow::key::FlowKey;
use crate::flow::table::FlowState;
use crate::types::{IfIndex, Mac};
use crate::wire::IpProtocol;

const MAGIC: [u8; 4] = *b"FLSY";
pub const VERSION: u8 = 2;
pub const HEADER_LEN: usize = 28;
pub const ENTRY_LEN: usize = 99;

/// What a datagram is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// "I am here, since boot `boot_id`": a peer that sees a new boot id
    /// sends it everything live (bulk resync). No entries.
    Hello,
    /// Flow entries.
    Entries,
}

/// What every datagram says of its sender: enough to refuse a peer whose
/// entries would land on the wrong worker or source port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    /// Random per daemon start: a new one means the sender restarted and
    /// holds nothing.
    pub boot_id: u64,
    /// Per sender, counting datagrams (a gap is a lost datagram).
    pub seq: u32,
    pub workers: u16,
    pub snat_ports: (u16, u16),
    pub count: u16,
}

/// One flow as the sync carries it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncEntry {
    /// Client to VIP, as the client sends it.
    pub key: FlowKey,
    /// The VIP's port as configured (0: every port); its address and
    /// protocol are the key's destination and protocol.
    pub vip_port: u16,
    pub backend: [u8; 16],
    /// The backend's port as configured (0: the client's).
    pub backend_port: u16,
    /// Full-NAT source address and port; port 0: not full-NAT.
    pub snat: [u8; 16],
    pub snat_port: u16,
    /// Where NAT replies to the client go on the link (the client or its
    /// router), and the interface they leave by.
    pub client_mac: Mac,
    pub iface: IfIndex,
    pub state: FlowState,
    /// Time left before the entry expires unless traffic refreshes it.
    pub remaining_ms: u32,
    /// The sender's worker that owns the flow: the peer's worker of the
    /// same index gets it (the same NIC queue; for full-NAT, the owner of
    /// the source port's range).
    pub worker: u16,
    /// A flow the SYN proxy opened: how its backend's side differs from
    /// what its client was told.
    pub splice: Option<SpliceOffsets>,
}

/// The translation of an established flow the SYN proxy opened
/// (`forward::synproxy::Splice`): what a peer needs to carry it on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpliceOffsets {
    /// The backend's ISN minus the balancer's; its TSval clock minus the
    /// one the client was given.
    pub seq_delta: u32,
    pub ts_delta: u32,
    /// Bits the backend scales its window by beyond what the client was
    /// offered.
    pub window_shift: i8,
    pub timestamps: bool,
}

const SPLICED: u8 = 1;
const SPLICE_TIMESTAMPS: u8 = 2;

/// Why a datagram is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than a header, or than its entries.
    Truncated {
        len: usize,
        need: usize,
    },
    /// Not a sync datagram at all.
    BadMagic,
    Version(u8),
    Kind(u8),
    /// Bytes beyond the entries the header counts.
    TrailingBytes(usize),
    /// Entry `index` has an unknown state byte.
    State {
        index: usize,
        value: u8,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated { len, need } => write!(f, "truncated: {len} bytes, {need} needed"),
            DecodeError::BadMagic => f.write_str("not a fulcrum sync datagram (bad magic)"),
            DecodeError::Version(v) => write!(f, "sync version {v}, this daemon speaks {VERSION}"),
            DecodeError::Kind(k) => write!(f, "unknown datagram kind {k}"),
            DecodeError::TrailingBytes(n) => write!(f, "{n} bytes after the last entry"),
            DecodeError::State { index, value } => write!(f, "entry {index}: unknown flow state {value}"),
        }
    }
}

impl std::error::Error for DecodeError {}

fn state_byte(s: FlowState) -> u8 {
    s as u8
}

fn state_of(b: u8) -> Option<FlowState> {
    [FlowState::SynSeen, FlowState::Established, FlowState::Closing, FlowState::Udp].into_iter().find(|&s| s as u8 == b)
}

/// Big-endian writes into a slice of known length.
struct Writer<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn bytes(&mut self, b: &[u8]) {
        self.buf[self.at..self.at + b.len()].copy_from_slice(b);
        self.at += b.len();
    }
}

/// Big-endian reads from a slice whose length was checked first.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&self.buf[self.at..self.at + N]);
        self.at += N;
        a
    }
    fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.array())
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.array())
    }
    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.array())
    }
}

impl Header {
    /// Writes the header into `out[..HEADER_LEN]`.
    pub fn encode(&self, out: &mut [u8; HEADER_LEN]) {
        let mut w = Writer { buf: out, at: 0 };
        let kind = match self.kind {
            Kind::Hello => 0,
            Kind::Entries => 1,
        };
        w.bytes(&MAGIC);
        w.bytes(&[VERSION, kind, 0, 0]);
        w.bytes(&self.boot_id.to_be_bytes());
        w.bytes(&self.seq.to_be_bytes());
        w.bytes(&self.workers.to_be_bytes());
        w.bytes(&self.snat_ports.0.to_be_bytes());
        w.bytes(&self.snat_ports.1.to_be_bytes());
        w.bytes(&self.count.to_be_bytes());
    }
}

impl SyncEntry {
    pub fn encode(&self, out: &mut [u8; ENTRY_LEN]) {
        let mut w = Writer { buf: out, at: 0 };
        let k = &self.key;
        w.bytes(&k.src);
        w.bytes(&k.dst);
        w.bytes(&k.src_port.to_be_bytes());
        w.bytes(&k.dst_port.to_be_bytes());
        w.bytes(&[k.proto.0]);
        w.bytes(&self.vip_port.to_be_bytes());
        w.bytes(&self.backend);
        w.bytes(&self.backend_port.to_be_bytes());
        w.bytes(&self.snat);
        w.bytes(&self.snat_port.to_be_bytes());
        w.bytes(&self.client_mac);
        w.bytes(&[self.iface, state_byte(self.state)]);
        w.bytes(&self.remaining_ms.to_be_bytes());
        w.bytes(&self.worker.to_be_bytes());
        let o = self.splice.unwrap_or_default();
        let flags = match self.splice {
            Some(o) if o.timestamps => SPLICED | SPLICE_TIMESTAMPS,
            Some(_) => SPLICED,
            None => 0,
        };
        w.bytes(&[flags]);
        w.bytes(&o.seq_delta.to_be_bytes());
        w.bytes(&o.ts_delta.to_be_bytes());
        w.bytes(&o.window_shift.to_be_bytes());
    }

    fn decode(r: &mut Reader<'_>, index: usize) -> Result<SyncEntry, DecodeError> {
        let key = FlowKey { src: r.array(), dst: r.array(), src_port: r.u16(), dst_port: r.u16(), proto: IpProtocol(r.u8()) };
        let vip_port = r.u16();
        let (backend, backend_port) = (r.array(), r.u16());
        let (snat, snat_port) = (r.array(), r.u16());
        let (client_mac, iface, state) = (r.array(), r.u8(), r.u8());
        let state = state_of(state).ok_or(DecodeError::State { index, value: state })?;
        let (remaining_ms, worker) = (r.u32(), r.u16());
        let (flags, seq_delta, ts_delta, shift) = (r.u8(), r.u32(), r.u32(), r.u8());
        let splice = (flags & SPLICED != 0).then_some(SpliceOffsets {
            seq_delta,
            ts_delta,
            window_shift: i8::from_be_bytes([shift]),
            timestamps: flags & SPLICE_TIMESTAMPS != 0,
        });
        Ok(SyncEntry { key, vip_port, backend, backend_port, snat, snat_port, client_mac, iface, state, remaining_ms, worker, splice })
    }
}

/// Writes a datagram of `header` (its `count` set from `entries`) and
/// `entries` into `out`; the bytes written. `out` must hold
/// `HEADER_LEN + entries.len() * ENTRY_LEN` bytes.
pub fn encode(header: Header, entries: &[SyncEntry], out: &mut [u8]) -> usize {
    let len = HEADER_LEN + entries.len() * ENTRY_LEN;
    assert!(out.len() >= len && entries.len() <= usize::from(u16::MAX), "sync datagram buffer too small");
    let header = Header { count: entries.len() as u16, ..header };
    let (head, mut body) = out.split_at_mut(HEADER_LEN);
    header.encode(head.try_into().expect("HEADER_LEN"));
    for e in entries {
        let (one, rest) = body.split_at_mut(ENTRY_LEN);
        e.encode(one.try_into().expect("ENTRY_LEN"));
        body = rest;
    }
    len
}

/// Reads a datagram (without its authentication trailer): the header and
/// its entries, every length checked before anything is read.
pub fn decode(buf: &[u8]) -> Result<(Header, Vec<SyncEntry>), DecodeError> {
    if buf.len() < HEADER_LEN {
        return Err(DecodeError::Truncated { len: buf.len(), need: HEADER_LEN });
    }
    let mut r = Reader { buf, at: 0 };
    if r.array::<4>() != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let (version, kind, _flags, _reserved) = (r.u8(), r.u8(), r.u8(), r.u8());
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    let kind = match kind {
        0 => Kind::Hello,
        1 => Kind::Entries,
        k => return Err(DecodeError::Kind(k)),
    };
    let header = Header { kind, boot_id: r.u64(), seq: r.u32(), workers: r.u16(), snat_ports: (r.u16(), r.u16()), count: r.u16() };
    let need = HEADER_LEN + usize::from(header.count) * ENTRY_LEN;
    if buf.len() < need {
        return Err(DecodeError::Truncated { len: buf.len(), need });
    }
    if buf.len() > need {
        return Err(DecodeError::TrailingBytes(buf.len() - need));
    }
    let entries = (0..usize::from(header.count)).map(|i| SyncEntry::decode(&mut r, i)).collect::<Result<_, _>>()?;
    Ok((header, entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::key::addr16;

    fn entry(i: u16) -> SyncEntry {
        SyncEntry {
            key: FlowKey::new("198.18.0.1".parse().unwrap(), "198.18.100.1".parse().unwrap(), 40000 + i, 80, IpProtocol::TCP),
            vip_port: 80,
            backend: addr16("198.18.0.11".parse().unwrap()),
            backend_port: 8080,
            snat: addr16("198.18.0.4".parse().unwrap()),
            snat_port: 2000 + i,
            client_mac: [2, 0, 0, 0, 0, 1],
            iface: 0,
            state: FlowState::Established,
            remaining_ms: 899_000,
            worker: 1,
            splice: (i % 2 == 1).then_some(SpliceOffsets { seq_delta: 0xdead_beef, ts_delta: 7, window_shift: -3, timestamps: i == 1 }),
        }
    }

    fn header() -> Header {
        Header { kind: Kind::Entries, boot_id: 0x0123_4567_89ab_cdef, seq: 7, workers: 2, snat_ports: (1024, 65535), count: 0 }
    }

    #[test]
    fn a_batch_round_trips() {
        let entries: Vec<SyncEntry> = (0..3).map(entry).collect();
        let mut buf = [0u8; HEADER_LEN + 3 * ENTRY_LEN];
        let n = encode(header(), &entries, &mut buf);
        assert_eq!(n, buf.len());
        let (h, got) = decode(&buf).unwrap();
        assert_eq!(h, Header { count: 3, ..header() });
        assert_eq!(got, entries);
    }

    #[test]
    fn bad_datagrams_are_typed_errors() {
        let mut buf = [0u8; HEADER_LEN + ENTRY_LEN];
        encode(header(), &[entry(0)], &mut buf);
        assert_eq!(decode(&buf[..10]), Err(DecodeError::Truncated { len: 10, need: HEADER_LEN }));
        assert_eq!(decode(&buf[..HEADER_LEN + 5]), Err(DecodeError::Truncated { len: HEADER_LEN + 5, need: HEADER_LEN + ENTRY_LEN }));
        let mut long = buf.to_vec();
        long.push(0);
        assert_eq!(decode(&long), Err(DecodeError::TrailingBytes(1)));
        let mut b = buf;
        b[0] = b'X';
        assert_eq!(decode(&b), Err(DecodeError::BadMagic));
        let mut b = buf;
        b[4] = 9;
        assert_eq!(decode(&b), Err(DecodeError::Version(9)));
        let mut b = buf;
        b[5] = 7;
        assert_eq!(decode(&b), Err(DecodeError::Kind(7)));
        let mut b = buf;
        b[HEADER_LEN + ENTRY_LEN - 17] = 200;
        assert_eq!(decode(&b), Err(DecodeError::State { index: 0, value: 200 }));
    }

    proptest::proptest! {
        #[test]
        fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn a_valid_header_with_any_body_never_panics(body in proptest::collection::vec(proptest::num::u8::ANY, 0..400), count in 0u16..5) {
            let mut buf = vec![0u8; HEADER_LEN];
            Header { count, ..header() }.encode((&mut buf[..]).try_into().unwrap());
            buf.extend_from_slice(&body);
            let _ = decode(&buf);
        }
    }
}
