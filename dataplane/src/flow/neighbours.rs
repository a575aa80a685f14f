//! Where replies to a client go on the link: the client's (or its
//! router's) MAC as the kernel's neighbour table knows it, not as the
//! first frame of a flow claims it. A frame's source MAC is whatever its
//! sender wrote: a host on the segment forging a client's address would
//! otherwise receive the client's replies.
//!
//! One table shared by every worker, written by the control plane's
//! neighbour thread (one writer) from the kernel's neighbour events, read
//! when a NAT flow is created. Lock-free and allocation-free: a fixed array
//! of 4-way buckets, each entry two words, the address's 64-bit hash and
//! the MAC, guarded by a sequence so that a reader never pairs one
//! address with another's MAC: the writer clears the MAC word, writes the
//! hash, then the MAC; a reader takes the MAC, the hash, and the MAC again,
//! and believes the entry only if both MAC reads agree and are set.

use std::sync::atomic::{AtomicU64, Ordering::Acquire, Ordering::Release};

use crate::types::Mac;

const WAYS: usize = 4;
/// Bit 63 of the MAC word: the entry is set.
const SET: u64 = 1 << 63;
/// The address hash's seed; any fixed value (nodes need not agree).
const SEED: u64 = 0x6e65_6967_6862_6f72; // "neighbor"

struct Entry {
    hash: AtomicU64,
    mac: AtomicU64,
}

/// The neighbour table. See the module docs.
pub struct Neighbours {
    buckets: Box<[[Entry; WAYS]]>,
    mask: u64,
}

fn hash(addr: &[u8; 16]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(addr, SEED)
}

fn mac_word(mac: Mac) -> u64 {
    let mut b = [0u8; 8];
    b[..6].copy_from_slice(&mac);
    u64::from_le_bytes(b) | SET
}

impl Neighbours {
    /// Room for about `capacity` addresses (rounded up to a power of two
    /// of 4-way buckets).
    pub fn new(capacity: usize) -> Neighbours {
        let buckets = capacity.div_ceil(WAYS).next_power_of_two();
        let empty = || std::array::from_fn(|_| Entry { hash: AtomicU64::new(0), mac: AtomicU64::new(0) });
        Neighbours { buckets: (0..buckets).map(|_| empty()).collect(), mask: buckets as u64 - 1 }
    }

    fn bucket(&self, h: u64) -> &[Entry; WAYS] {
        &self.buckets[(h & self.mask) as usize]
    }

    /// The MAC the kernel has for `addr` (16 bytes, IPv4 v4-mapped).
    #[inline]
    pub fn get(&self, addr: &[u8; 16]) -> Option<Mac> {
        let h = hash(addr);
        self.bucket(h).iter().find_map(|e| {
            let mac = e.mac.load(Acquire);
            let same = e.hash.load(Acquire) == h && e.mac.load(Acquire) == mac;
            (mac & SET != 0 && same).then(|| mac.to_le_bytes()[..6].try_into().expect("six bytes"))
        })
    }

    /// Records `addr`'s MAC. One writer at a time (the control plane's
    /// neighbour thread). A full bucket gives up its first way.
    pub fn set(&self, addr: &[u8; 16], mac: Mac) {
        let h = hash(addr);
        let bucket = self.bucket(h);
        let way = bucket
            .iter()
            .find(|e| e.mac.load(Acquire) & SET != 0 && e.hash.load(Acquire) == h)
            .or_else(|| bucket.iter().find(|e| e.mac.load(Acquire) & SET == 0))
            .unwrap_or(&bucket[0]);
        way.mac.store(0, Release);
        way.hash.store(h, Release);
        way.mac.store(mac_word(mac), Release);
    }

    /// Forgets `addr` (the kernel's entry failed or was deleted).
    pub fn remove(&self, addr: &[u8; 16]) {
        let h = hash(addr);
        for e in self.bucket(h) {
            if e.hash.load(Acquire) == h {
                e.mac.store(0, Release);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::key::addr16;

    #[test]
    fn set_get_replace_and_remove() {
        let t = Neighbours::new(64);
        let a = addr16("198.18.0.1".parse().unwrap());
        let b = addr16("2001:db8::1".parse().unwrap());
        assert_eq!(t.get(&a), None);
        t.set(&a, [2, 0, 0, 0, 0, 1]);
        t.set(&b, [2, 0, 0, 0, 0, 2]);
        assert_eq!((t.get(&a), t.get(&b)), (Some([2, 0, 0, 0, 0, 1]), Some([2, 0, 0, 0, 0, 2])));
        t.set(&a, [2, 0, 0, 0, 0, 3]);
        assert_eq!(t.get(&a), Some([2, 0, 0, 0, 0, 3]));
        t.remove(&a);
        assert_eq!((t.get(&a), t.get(&b)), (None, Some([2, 0, 0, 0, 0, 2])));
    }

    #[test]
    fn a_full_table_keeps_working_and_never_answers_for_another_address() {
        let t = Neighbours::new(8);
        let addrs: Vec<[u8; 16]> = (0..100u8).map(|i| addr16([198, 18, 5, i].into())).collect();
        for (i, a) in addrs.iter().enumerate() {
            t.set(a, [2, 0, 0, 0, 0, i as u8]);
        }
        // Some were displaced; none answers with another address's MAC.
        for (i, a) in addrs.iter().enumerate() {
            assert!(t.get(a).is_none_or(|m| m == [2, 0, 0, 0, 0, i as u8]));
        }
        assert_eq!(t.get(&addrs[99]), Some([2, 0, 0, 0, 0, 99]));
    }
}
