//! Where an IP datagram's fragments go. Only the first fragment carries
//! the ports, so the engine places it like any packet and remembers, per
//! datagram (addresses, protocol, identification), the flow it went with;
//! the later fragments follow it there, rewritten the same way. A later
//! fragment that arrives before its first is placed by its addresses
//! alone (the VIP's Maglev over the 3-tuple hash), and that placement is
//! remembered instead: the rest of the datagram, its first fragment
//! included, follows it. One table per worker: the fragments of one
//! datagram arrive on one queue, since the NIC hashes them by addresses
//! alone.
//!
//! Fixed size and direct-mapped: a datagram's record is overwritten by
//! any later datagram that hashes to its slot, and is forgotten after
//! `ttl_ms`.

use crate::flow::FlowKey;
use crate::types::{BackendId, VipId};
use crate::wire::IpProtocol;

/// Where a datagram went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// With the flow its first fragment opened or belonged to.
    Flow(FlowKey),
    /// To a VIP's backend, chosen for a later fragment seen first.
    Backend(VipId, BackendId),
}

#[derive(Clone, Copy)]
struct Record {
    /// The datagram's hash; 0: empty.
    tag: u64,
    at_ms: u32,
    placement: Placement,
}

impl Default for Record {
    fn default() -> Self {
        Record { tag: 0, at_ms: 0, placement: Placement::Backend(0, 0) }
    }
}

/// The fragment table. See the module docs.
pub struct Fragments {
    slots: Box<[Record]>,
    mask: u64,
    ttl_ms: u32,
}

/// A datagram: its addresses, protocol and identification.
fn datagram(src: &[u8; 16], dst: &[u8; 16], proto: IpProtocol, id: u32) -> u64 {
    let mut b = [0u8; 37];
    b[..16].copy_from_slice(src);
    b[16..32].copy_from_slice(dst);
    b[32] = proto.0;
    b[33..].copy_from_slice(&id.to_be_bytes());
    xxhash_rust::xxh3::xxh3_64(&b) | 1
}

impl Fragments {
    /// Room for about `capacity` datagrams in flight (a power of two).
    pub fn new(capacity: usize, ttl_ms: u32) -> Fragments {
        let n = capacity.max(1).next_power_of_two();
        Fragments { slots: vec![Record::default(); n].into_boxed_slice(), mask: n as u64 - 1, ttl_ms }
    }

    /// Remembers where the datagram of fragment `key` (ports or not) and
    /// `id` went.
    pub fn record(&mut self, key: &FlowKey, id: u32, placement: Placement, now: u32) {
        let tag = datagram(&key.src, &key.dst, key.proto, id);
        self.slots[(tag & self.mask) as usize] = Record { tag, at_ms: now, placement };
    }

    /// Where the datagram of a fragment went, if one of its fragments was
    /// placed within the record's lifetime.
    pub fn placement(&self, fragment: &FlowKey, id: u32, now: u32) -> Option<Placement> {
        let tag = datagram(&fragment.src, &fragment.dst, fragment.proto, id);
        let r = &self.slots[(tag & self.mask) as usize];
        (r.tag == tag && now.wrapping_sub(r.at_ms) < self.ttl_ms).then_some(r.placement)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_fragments_find_their_flow_for_a_while() {
        let mut t = Fragments::new(64, 2_000);
        let flow = FlowKey::new([198, 18, 0, 1].into(), [198, 18, 100, 1].into(), 5000, 7, IpProtocol::UDP);
        let later = FlowKey { src_port: 0, dst_port: 0, ..flow };
        assert_eq!(t.placement(&later, 9, 0), None);
        t.record(&flow, 9, Placement::Flow(flow), 1_000);
        assert_eq!(t.placement(&later, 9, 2_500), Some(Placement::Flow(flow)));
        assert_eq!(t.placement(&later, 10, 2_500), None, "another datagram");
        assert_eq!(t.placement(&later, 9, 3_000), None, "forgotten");
        t.record(&later, 10, Placement::Backend(1, 2), 3_000);
        assert_eq!(t.placement(&flow, 10, 3_001), Some(Placement::Backend(1, 2)), "the first fragment finds it too");
    }
}
