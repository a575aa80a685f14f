//! Session persistence: which backend each client of a VIP sticks to.
//!
//! One table shared by every worker. RSS spreads one client's connections
//! over all the workers, and the choice a client must keep is the one made
//! when its backend failed, by whichever worker saw that first: a table
//! per worker would let another worker, without the entry or with an older
//! one, send the client back to its old backend once that recovers. Shared,
//! every worker reads and refreshes one entry per client, with one idle
//! clock.
//!
//! Lock-free and allocation-free: a fixed array of 4-way buckets of
//! `AtomicU64`, each entry one word (tag, backend, time) written and read
//! whole with relaxed ordering, so no reader sees half an entry. Only new
//! flows touch it, never established ones. A lookup refreshes the entry's
//! time when it changed (at most once per time unit, so a busy client does
//! not keep the cache line bouncing); a full bucket gives way to its
//! longest idle entry. Two workers inserting different clients into one
//! bucket at the same instant may pick the same way: one entry is lost and
//! that client is scheduled afresh next time, which only matters if its
//! backend had failed meanwhile. A tag collision (1 in 2^25 per occupied
//! way) gives a client another client's backend, which is still validated
//! (a member of the VIP, up) before use.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::types::{BackendId, VipId};

const WAYS: usize = 4;
/// Time is kept in units of 1024 ms: `now_ms >> 10` wraps together with
/// the engine's u32 millisecond clock, in 22 bits.
const TIME_SHIFT: u32 = 10;
const TIME_BITS: u32 = 32 - TIME_SHIFT;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;
const BACKEND_SHIFT: u32 = TIME_BITS;
const TAG_SHIFT: u32 = BACKEND_SHIFT + 16;
const TAG_BITS: u32 = 63 - TAG_SHIFT;
const VALID: u64 = 1 << 63;

/// The sticky table. See the module docs.
pub struct StickyTable {
    buckets: Box<[[AtomicU64; WAYS]]>,
    mask: u64,
}

/// A client of a VIP, hashed: where its entry lives and its tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Client(u64);

impl Client {
    /// `src_hash` is the client address's hash (`FlowKey::src_hash64`),
    /// the one source-IP Maglev uses too.
    #[inline]
    pub fn new(vip: VipId, src_hash: u64) -> Client {
        // The multiplier spreads VIP ids over the whole word, so one
        // client's entries for two VIPs are unrelated.
        Client(src_hash ^ u64::from(vip).wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    fn tag(self) -> u64 {
        self.0 >> (64 - TAG_BITS)
    }

    /// Whether entry `w` is this client's.
    fn owns(self, w: u64) -> bool {
        w & VALID != 0 && (w >> TAG_SHIFT) & ((1 << TAG_BITS) - 1) == self.tag()
    }
}

fn units(now_ms: u32) -> u64 {
    u64::from(now_ms >> TIME_SHIFT)
}

/// Idle time in units; correct while below 2^22 units (48 days).
fn age(word: u64, now: u64) -> u64 {
    now.wrapping_sub(word) & TIME_MASK
}

impl StickyTable {
    /// Room for about `clients` clients (rounded up to a power of two; at
    /// least one bucket). Allocated and zeroed here, never again.
    pub fn new(clients: usize) -> StickyTable {
        let buckets = clients.div_ceil(WAYS).max(1).next_power_of_two();
        StickyTable { buckets: (0..buckets).map(|_| Default::default()).collect(), mask: buckets as u64 - 1 }
    }

    pub fn capacity(&self) -> usize {
        self.buckets.len() * WAYS
    }

    fn bucket(&self, c: Client) -> &[AtomicU64; WAYS] {
        &self.buckets[(c.0 & self.mask) as usize]
    }

    /// The backend `c` sticks to, if it used it within `timeout_ms`. A hit
    /// restarts the idle clock.
    #[inline]
    pub fn lookup(&self, c: Client, now_ms: u32, timeout_ms: u32) -> Option<BackendId> {
        let now = units(now_ms);
        // Rounded up: an entry lives at least `timeout_ms`, at most one
        // unit more.
        let timeout = u64::from(timeout_ms).div_ceil(1 << TIME_SHIFT);
        for way in self.bucket(c) {
            let w = way.load(Relaxed);
            if !c.owns(w) {
                continue;
            }
            if age(w, now) > timeout {
                return None;
            }
            if w & TIME_MASK != now & TIME_MASK {
                way.store((w & !TIME_MASK) | (now & TIME_MASK), Relaxed);
            }
            return Some((w >> BACKEND_SHIFT) as BackendId);
        }
        None
    }

    /// Makes `c` stick to `backend` from now on: its own entry, else an
    /// empty way, else the longest idle one.
    pub fn record(&self, c: Client, backend: BackendId, now_ms: u32) {
        let now = units(now_ms);
        let word = VALID | (c.tag() << TAG_SHIFT) | (u64::from(backend) << BACKEND_SHIFT) | (now & TIME_MASK);
        let bucket = self.bucket(c);
        let mut victim = &bucket[0];
        let mut oldest = 0;
        for way in bucket {
            let w = way.load(Relaxed);
            if w & VALID == 0 || c.owns(w) {
                victim = way;
                break;
            }
            if age(w, now) >= oldest {
                (victim, oldest) = (way, age(w, now));
            }
        }
        victim.store(word, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(i: u64) -> Client {
        Client::new(0, xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()))
    }

    #[test]
    fn a_client_keeps_its_backend_until_idle_for_the_timeout() {
        let t = StickyTable::new(64);
        let c = client(1);
        assert_eq!(t.lookup(c, 0, 10_000), None);
        t.record(c, 7, 0);
        assert_eq!(t.lookup(c, 9_000, 10_000), Some(7));
        // The hit at 9 s restarted the clock.
        assert_eq!(t.lookup(c, 18_000, 10_000), Some(7));
        assert_eq!(t.lookup(c, 30_000, 10_000), None);
        t.record(c, 8, 30_000);
        assert_eq!(t.lookup(c, 30_001, 10_000), Some(8));
    }

    #[test]
    fn vips_and_clients_are_apart() {
        let t = StickyTable::new(1024);
        let h = 0x1234_5678_9abc_def0;
        t.record(Client::new(1, h), 1, 0);
        t.record(Client::new(2, h), 2, 0);
        assert_eq!(t.lookup(Client::new(1, h), 0, 1000), Some(1));
        assert_eq!(t.lookup(Client::new(2, h), 0, 1000), Some(2));
        assert_eq!(t.lookup(Client::new(3, h), 0, 1000), None);
    }

    #[test]
    fn a_full_bucket_gives_way_to_its_longest_idle_entry() {
        // One bucket: every client shares it.
        let t = StickyTable::new(1);
        assert_eq!(t.capacity(), WAYS);
        for i in 0..WAYS as u64 {
            t.record(client(i), i as BackendId, (i as u32) * 2048);
        }
        t.record(client(99), 99, 100_000);
        assert_eq!(t.lookup(client(0), 100_000, u32::MAX), None);
        for i in 1..WAYS as u64 {
            assert_eq!(t.lookup(client(i), 100_000, u32::MAX), Some(i as BackendId));
        }
        assert_eq!(t.lookup(client(99), 100_000, u32::MAX), Some(99));
    }

    #[test]
    fn the_clock_wraps_with_the_engines() {
        let t = StickyTable::new(16);
        let c = client(5);
        let before_wrap = u32::MAX - 500;
        t.record(c, 3, before_wrap);
        assert_eq!(t.lookup(c, before_wrap.wrapping_add(5_000), 10_000), Some(3));
        assert_eq!(t.lookup(c, before_wrap.wrapping_add(30_000), 10_000), None);
    }
}
