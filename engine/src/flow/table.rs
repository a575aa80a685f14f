//! The per-worker connection table: a bounded map from [`FlowKey`] to a small
//! `Copy` value, with TCP-state-aware idle timeouts and LRU eviction.
//!
//! Each worker core owns one table (one shard), so nothing here locks. Every
//! byte is allocated in [`ConnTable::new`]: the per-packet path (`lookup`,
//! `touch`) and the new-flow path (`insert`, with its eviction) never
//! allocate, so a flood of new flows cannot make a worker stall in the
//! allocator or run out of memory.
//!
//! Layout: entries live in one slot array and are addressed by a `u32`
//! [`Slot`]. An intrusive doubly linked list through the entries orders them
//! by recency (head = most recently used); freed slots form a free list
//! through the same links. A `hashbrown::HashTable<Slot>` indexes slots by
//! the flow hash, so an index bucket is 4 bytes and an entry is one cache
//! line for an 8-byte value.

use hashbrown::HashTable;

use super::FlowKey;

/// Index of an entry in its table. Valid until the entry is removed,
/// evicted or expired; a later insert may reuse it for another flow.
pub type Slot = u32;

/// `Entry::peer` of an entry that is not paired.
pub const NO_PEER: Slot = u32::MAX;

/// End of the LRU and free lists.
const NIL: Slot = u32::MAX;

/// `prev` of a slot on the free list. Live slots hold a slot index or `NIL`
/// there, so this one marker tells free from live without a spare byte.
const FREE: Slot = u32::MAX - 1;

/// Largest capacity: every slot index must stay below `FREE`.
const MAX_CAPACITY: usize = FREE as usize;

/// Idle timeouts in milliseconds, by flow state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub syn_ms: u32,
    pub established_ms: u32,
    pub closing_ms: u32,
    pub udp_ms: u32,
}

impl Default for Timeouts {
    /// Short for half-open flows (SYN floods must not fill the table), long
    /// for established ones (idle keep-alive connections must survive).
    fn default() -> Self {
        Timeouts { syn_ms: 30_000, established_ms: 900_000, closing_ms: 60_000, udp_ms: 300_000 }
    }
}

impl Timeouts {
    /// The idle timeout that applies to a flow in `state`.
    pub fn for_state(&self, state: FlowState) -> u32 {
        match state {
            FlowState::SynSeen => self.syn_ms,
            FlowState::Established => self.established_ms,
            FlowState::Closing => self.closing_ms,
            FlowState::Udp => self.udp_ms,
        }
    }
}

/// Where a flow is in its life; selects its idle timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FlowState {
    /// TCP, handshake not completed.
    SynSeen,
    /// TCP, handshake completed.
    Established,
    /// TCP, FIN or RST seen.
    Closing,
    /// Any non-TCP protocol.
    Udp,
}

/// One connection. Field order keeps `Entry<V>` for an 8-byte `V` within one
/// 64-byte cache line: the u32 fields first, then the 38-byte key, then the
/// two bytes of state and promotion tick, then the value.
///
/// The key, the timestamp and the links belong to the table (changing them
/// would corrupt the index, the LRU order or the pairing), so they are
/// read-only; `state` and `value` are the caller's.
#[derive(Debug)]
#[repr(C)]
pub struct Entry<V> {
    last_seen: u32,
    peer: Slot,
    prev: Slot,
    next: Slot,
    key: FlowKey,
    pub state: FlowState,
    /// Promotion tick of the last move to the LRU head (lazy promotion).
    tick: u8,
    pub value: V,
}

const _: () = assert!(size_of::<Entry<[u8; 8]>>() <= 64);
const _: () = assert!(size_of::<Entry<u64>>() <= 64);

impl<V> Entry<V> {
    pub fn key(&self) -> &FlowKey {
        &self.key
    }

    /// Time of the last lookup or touch (ms, wrapping).
    pub fn last_seen(&self) -> u32 {
        self.last_seen
    }

    /// The other half of a NAT'd flow, or [`NO_PEER`].
    pub fn peer(&self) -> Slot {
        self.peer
    }

    fn is_live(&self) -> bool {
        self.prev != FREE
    }
}

/// A bounded connection table for one worker. See the module docs.
pub struct ConnTable<V: Copy> {
    /// Slots handed out so far; never reallocated (its capacity is reserved
    /// in `new` and it grows by `push` only while below `capacity`), so slots
    /// are initialised lazily and need no placeholder `V`.
    slots: Vec<Entry<V>>,
    /// Live slots, keyed by `key.hash64()`. Sized for twice `capacity` so it
    /// never reallocates: hashbrown reclaims tombstones by rehashing in place
    /// as long as items <= half its full capacity, which then always holds.
    index: HashTable<Slot>,
    capacity: usize,
    len: usize,
    /// Most recently used.
    head: Slot,
    /// Least recently used: the next victim when full.
    tail: Slot,
    free: Slot,
    /// Clock hand of `expire`, in `0..slots.len()`.
    hand: usize,
    timeouts: Timeouts,
    evictions: u64,
    expirations: u64,
    /// Entries removed since the owner last took them (value and state), so
    /// it can keep per-backend counts exact. Preallocated and bounded.
    departed: Vec<(V, FlowState)>,
    lost_departures: u64,
    /// Lazy promotion: a hit moves an entry to the LRU head only when the
    /// tick (`now >> shift`) changed since its last move. None: every hit
    /// moves it (exact LRU).
    promote_shift: Option<u32>,
}

/// With lazy promotion the list is in LRU order only to within an interval,
/// so eviction picks the longest idle of this many entries nearest the tail.
const EVICTION_SAMPLE: usize = 8;

/// The most slots one `expire` call examines.
pub const MAX_EXPIRE_BUDGET: usize = 1024;
/// Room for the departures of one `expire` call plus those of a packet's
/// lookups and inserts, each of which removes at most a pair.
const DEPARTED_CAP: usize = 2 * MAX_EXPIRE_BUDGET + 16;

impl<V: Copy> ConnTable<V> {
    /// A table holding at most `capacity` entries (clamped to at least 2, so
    /// inserting the second half of a pair never evicts the first).
    pub fn new(capacity: usize, timeouts: Timeouts) -> Self {
        let capacity = capacity.clamp(2, MAX_CAPACITY);
        ConnTable {
            slots: Vec::with_capacity(capacity),
            index: HashTable::with_capacity(2 * capacity),
            capacity,
            len: 0,
            head: NIL,
            tail: NIL,
            free: NIL,
            hand: 0,
            timeouts,
            evictions: 0,
            expirations: 0,
            departed: Vec::with_capacity(DEPARTED_CAP),
            lost_departures: 0,
            promote_shift: None,
        }
    }

    /// Lazy promotion, as memcached bumps items: a hit relinks the entry at
    /// the head of the LRU list only once per interval (`ms` rounded up to a
    /// power of two), so a busy flow costs a write to its own entry instead
    /// of writes to three entries scattered in memory. Eviction takes the
    /// longest idle of the entries nearest the tail. `ms` = 0 keeps exact LRU.
    pub fn with_promotion_interval(mut self, ms: u32) -> Self {
        self.promote_shift = (ms > 0).then(|| ms.next_power_of_two().trailing_zeros());
        self
    }

    /// The entry to evict: the tail, or with lazy promotion the longest idle
    /// of the entries nearest it.
    fn victim(&self, now: u32) -> Slot {
        if self.promote_shift.is_none() {
            return self.tail;
        }
        let idle = |s: Slot| now.wrapping_sub(self.slots[s as usize].last_seen);
        let (mut best, mut at) = (self.tail, self.tail);
        for _ in 0..EVICTION_SAMPLE {
            if at == NIL {
                break;
            }
            if idle(at) > idle(best) {
                best = at;
            }
            at = self.slots[at as usize].prev;
        }
        best
    }

    fn tick(&self, now: u32) -> u8 {
        self.promote_shift.map_or(0, |shift| (now >> shift) as u8)
    }

    /// The live entry for `key` (`hash` must be `key.hash64()`): refreshes it
    /// and its peer and makes it the most recently used. An expired entry is
    /// removed, with its peer, and reported absent.
    pub fn lookup(&mut self, key: &FlowKey, hash: u64, now: u32) -> Option<Slot> {
        let slot = self.find(key, hash)?;
        if self.pair_expired(slot, now) {
            self.expirations += self.remove_pair(slot) as u64;
            return None;
        }
        self.touch(slot, now);
        Some(slot)
    }

    /// Whether `key` has a live entry, without refreshing, reordering or
    /// reaping anything: probing candidate SNAT ports must not keep them alive.
    pub fn contains(&self, key: &FlowKey, hash: u64, now: u32) -> bool {
        self.find(key, hash).is_some_and(|slot| !self.pair_expired(slot, now))
    }

    /// Inserts `key` as the most recently used entry and returns its slot.
    /// The key must not be live; an expired entry for it (which `contains`
    /// reports absent but leaves in place) is removed first. When the table
    /// is full the least recently used entry and its peer are evicted.
    pub fn insert(&mut self, key: FlowKey, hash: u64, state: FlowState, value: V, now: u32) -> Slot {
        debug_assert_eq!(hash, key.hash64(), "hash must be key.hash64()");
        if let Some(old) = self.find(&key, hash) {
            let expired = self.pair_expired(old, now);
            debug_assert!(expired, "insert of a live key");
            let removed = self.remove_pair(old) as u64;
            if expired {
                self.expirations += removed;
            }
        }
        if self.len == self.capacity {
            let victim = self.victim(now);
            self.evictions += self.remove_pair(victim) as u64;
        }
        let entry = Entry { last_seen: now, peer: NO_PEER, prev: NIL, next: NIL, key, state, tick: self.tick(now), value };
        let slot = if self.free != NIL {
            let slot = self.free;
            self.free = self.slots[slot as usize].next;
            self.slots[slot as usize] = entry;
            slot
        } else {
            // No free slot and len < capacity: every slot handed out is live,
            // so slots.len() == len < capacity and the push cannot reallocate.
            debug_assert!(self.slots.len() < self.capacity);
            self.slots.push(entry);
            (self.slots.len() - 1) as Slot
        };
        self.push_front(slot);
        let slots = &self.slots;
        self.index.insert_unique(hash, slot, |&s| slots[s as usize].key.hash64());
        self.len += 1;
        slot
    }

    /// The entry in `slot`. Panics if `slot` was never handed out; a removed
    /// slot yields its stale contents (and fails a debug assertion).
    pub fn entry(&self, slot: Slot) -> &Entry<V> {
        let entry = &self.slots[slot as usize];
        debug_assert!(entry.is_live(), "slot {slot} is free");
        entry
    }

    /// Like [`entry`](Self::entry), for changing `state` or `value`.
    pub fn entry_mut(&mut self, slot: Slot) -> &mut Entry<V> {
        let entry = &mut self.slots[slot as usize];
        debug_assert!(entry.is_live(), "slot {slot} is free");
        entry
    }

    /// Marks `slot` and its peer as seen at `now` and makes `slot` the most
    /// recently used. A pair ages as one: otherwise the idle reverse half of
    /// a one-way flow would expire or be evicted and take the busy half with it.
    pub fn touch(&mut self, slot: Slot, now: u32) {
        debug_assert!(self.slots[slot as usize].is_live(), "touch of free slot {slot}");
        let peer = self.slots[slot as usize].peer;
        if peer != NO_PEER {
            self.refresh(peer, now);
        }
        self.refresh(slot, now);
    }

    /// Pairs the forward and reverse halves of a NAT'd flow so that they
    /// live and die together. Either one's previous pairing is dissolved.
    pub fn link_peers(&mut self, a: Slot, b: Slot) {
        debug_assert_ne!(a, b, "an entry cannot be its own peer");
        debug_assert!(self.slots[a as usize].is_live() && self.slots[b as usize].is_live());
        self.unpair(a);
        self.unpair(b);
        self.slots[a as usize].peer = b;
        self.slots[b as usize].peer = a;
    }

    /// Removes the entry in `slot` and its peer. A free slot is left alone.
    pub fn remove(&mut self, slot: Slot) {
        debug_assert!(self.slots[slot as usize].is_live(), "remove of free slot {slot}");
        self.remove_pair(slot);
    }

    /// Examines at most `budget` slots, continuing where the previous call
    /// stopped, and removes the expired entries (with their peers). Returns
    /// the number of entries removed. Call it every poll round with a small
    /// budget: the cost per call stays bounded and every slot is visited once
    /// per `slots / budget` calls.
    pub fn expire(&mut self, now: u32, budget: usize) -> usize {
        let used = self.slots.len();
        let mut removed = 0;
        for _ in 0..budget.min(used).min(MAX_EXPIRE_BUDGET) {
            let slot = self.hand as Slot;
            self.hand += 1;
            if self.hand == used {
                self.hand = 0;
            }
            if self.slots[slot as usize].is_live() && self.pair_expired(slot, now) {
                removed += self.remove_pair(slot);
            }
        }
        self.expirations += removed as u64;
        removed
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Entries evicted to make room, peers included.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Entries removed because they timed out, peers included.
    pub fn expirations(&self) -> u64 {
        self.expirations
    }

    /// Takes the entries removed since the last call, by any cause, with
    /// their last state. Take them after every `expire` and after each
    /// packet's lookups and inserts: departures beyond the bounded log are
    /// only counted ([`lost_departures`](Self::lost_departures)).
    pub fn take_departed(&mut self) -> std::vec::Drain<'_, (V, FlowState)> {
        self.departed.drain(..)
    }

    /// Departures not logged because the log was full.
    pub fn lost_departures(&self) -> u64 {
        self.lost_departures
    }

    fn find(&self, key: &FlowKey, hash: u64) -> Option<Slot> {
        let slots = &self.slots;
        self.index.find(hash, |&s| slots[s as usize].key == *key).copied()
    }

    /// Idle longer than its state allows. Wrapping arithmetic, so `now` may
    /// wrap around u32 (every 49.7 days); the clock hand reaps entries long
    /// before they could be idle that long.
    fn expired(&self, slot: Slot, now: u32) -> bool {
        let e = &self.slots[slot as usize];
        now.wrapping_sub(e.last_seen) > self.timeouts.for_state(e.state)
    }

    /// A pair is gone as soon as either half has timed out.
    fn pair_expired(&self, slot: Slot, now: u32) -> bool {
        let peer = self.slots[slot as usize].peer;
        self.expired(slot, now) || (peer != NO_PEER && self.expired(peer, now))
    }

    /// Frees `slot` and its peer; returns how many entries that removed.
    fn remove_pair(&mut self, slot: Slot) -> usize {
        let peer = self.slots[slot as usize].peer;
        let mut removed = self.release(slot);
        if peer != NO_PEER {
            removed += self.release(peer);
        }
        removed
    }

    /// Frees one slot (if live): out of the index and the LRU list, onto the
    /// free list. Returns 1 if it was live.
    fn release(&mut self, slot: Slot) -> usize {
        let entry = &self.slots[slot as usize];
        if !entry.is_live() {
            return 0;
        }
        let indexed = self.index.find_entry(entry.key.hash64(), |&s| s == slot).map(|e| e.remove()).is_ok();
        debug_assert!(indexed, "live slot {slot} missing from the index");
        self.unlink(slot);
        let entry = &mut self.slots[slot as usize];
        if self.departed.len() < DEPARTED_CAP {
            self.departed.push((entry.value, entry.state));
        } else {
            self.lost_departures += 1;
        }
        entry.peer = NO_PEER;
        entry.prev = FREE;
        entry.next = self.free;
        self.free = slot;
        self.len -= 1;
        1
    }

    /// Dissolves `slot`'s pairing, keeping `peer` links symmetric.
    fn unpair(&mut self, slot: Slot) {
        let old = std::mem::replace(&mut self.slots[slot as usize].peer, NO_PEER);
        if old != NO_PEER {
            self.slots[old as usize].peer = NO_PEER;
        }
    }

    fn refresh(&mut self, slot: Slot, now: u32) {
        let tick = self.tick(now);
        let entry = &mut self.slots[slot as usize];
        entry.last_seen = now;
        let due = self.promote_shift.is_none() || entry.tick != tick;
        if due && self.head != slot {
            self.slots[slot as usize].tick = tick;
            self.unlink(slot);
            self.push_front(slot);
        }
    }

    fn unlink(&mut self, slot: Slot) {
        let Entry { prev, next, .. } = self.slots[slot as usize];
        if prev == NIL {
            self.head = next;
        } else {
            self.slots[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.slots[next as usize].prev = prev;
        }
    }

    fn push_front(&mut self, slot: Slot) {
        let old_head = self.head;
        let entry = &mut self.slots[slot as usize];
        entry.prev = NIL;
        entry.next = old_head;
        if old_head == NIL {
            self.tail = slot;
        } else {
            self.slots[old_head as usize].prev = slot;
        }
        self.head = slot;
    }
}

#[cfg(test)]
mod promotion_tests {
    use super::*;
    use crate::flow::key::PROTO_TCP;

    fn key(n: u16) -> FlowKey {
        FlowKey::new([198, 18, 0, 1].into(), [198, 18, 0, 2].into(), n, 80, PROTO_TCP)
    }

    #[test]
    fn hits_within_an_interval_do_not_relink_yet_eviction_takes_the_longest_idle() {
        let mut t: ConnTable<u8> = ConnTable::new(2, Timeouts::default()).with_promotion_interval(1000); // 1024 ms ticks
        let b = t.insert(key(2), key(2).hash64(), FlowState::Established, 2, 0);
        let a = t.insert(key(1), key(1).hash64(), FlowState::Established, 1, 3072); // tick 3
        assert_eq!(t.lookup(&key(2), key(2).hash64(), 3100), Some(b)); // tick changed: b to the head
        assert_eq!(t.tail, a);
        assert_eq!(t.lookup(&key(1), key(1).hash64(), 3200), Some(a)); // same tick: a stays the tail
        assert_eq!(t.tail, a);
        // a was used last, so b goes although a is the tail.
        t.insert(key(3), key(3).hash64(), FlowState::Established, 3, 3300);
        assert!(t.contains(&key(1), key(1).hash64(), 3300));
        assert!(!t.contains(&key(2), key(2).hash64(), 3300));
    }
}

#[cfg(test)]
mod departure_tests {
    use super::*;
    use crate::flow::key::PROTO_UDP;

    #[test]
    fn every_removal_is_reported_once_with_its_state() {
        let key = |n: u16| FlowKey::new([198, 18, 0, 1].into(), [198, 18, 0, 2].into(), n, 53, PROTO_UDP);
        let t_out = Timeouts { syn_ms: 10, established_ms: 10, closing_ms: 10, udp_ms: 10 };
        let mut t: ConnTable<u16> = ConnTable::new(2, t_out);
        let a = t.insert(key(1), key(1).hash64(), FlowState::SynSeen, 1, 0);
        let b = t.insert(key(2), key(2).hash64(), FlowState::Udp, 2, 0);
        t.link_peers(a, b);
        t.insert(key(3), key(3).hash64(), FlowState::Established, 3, 0); // evicts the pair
        assert_eq!(t.take_departed().collect::<Vec<_>>(), [(1, FlowState::SynSeen), (2, FlowState::Udp)]);
        assert_eq!(t.take_departed().count(), 0);
        t.expire(100, 8);
        assert_eq!(t.take_departed().collect::<Vec<_>>(), [(3, FlowState::Established)]);
        let c = t.insert(key(4), key(4).hash64(), FlowState::Closing, 4, 100);
        t.remove(c);
        assert_eq!(t.take_departed().collect::<Vec<_>>(), [(4, FlowState::Closing)]);
        assert_eq!(t.lost_departures(), 0);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::flow::key::{PROTO_TCP, PROTO_UDP};

    fn key(n: u32) -> FlowKey {
        let [a, b, c, d] = n.to_be_bytes();
        let src = IpAddr::V4(Ipv4Addr::new(198, 18, c, d));
        FlowKey::new(src, IpAddr::V4(Ipv4Addr::new(198, 19, a, b)), 1024 + (n % 7) as u16, 80, PROTO_TCP)
    }

    const T: Timeouts = Timeouts { syn_ms: 50, established_ms: 500, closing_ms: 20, udp_ms: 200 };

    fn ins(t: &mut ConnTable<u64>, n: u32, now: u32) -> Slot {
        let k = key(n);
        t.insert(k, k.hash64(), FlowState::Established, n as u64, now)
    }

    fn look(t: &mut ConnTable<u64>, n: u32, now: u32) -> Option<Slot> {
        let k = key(n);
        t.lookup(&k, k.hash64(), now)
    }

    fn has(t: &ConnTable<u64>, n: u32, now: u32) -> bool {
        let k = key(n);
        t.contains(&k, k.hash64(), now)
    }

    #[test]
    fn entry_fits_one_cache_line() {
        assert_eq!(size_of::<Entry<[u8; 8]>>(), 64);
        assert_eq!(size_of::<Entry<u64>>(), 64);
    }

    #[test]
    fn default_timeouts() {
        let d = Timeouts::default();
        assert_eq!((d.syn_ms, d.established_ms, d.closing_ms, d.udp_ms), (30_000, 900_000, 60_000, 300_000));
    }

    #[test]
    fn insert_lookup_remove() {
        let mut t = ConnTable::<u64>::new(8, T);
        assert!(t.is_empty());
        let s = ins(&mut t, 1, 0);
        ins(&mut t, 2, 0);
        assert_eq!(t.len(), 2);
        assert_eq!(look(&mut t, 1, 5), Some(s));
        assert_eq!(t.entry(s).key(), &key(1));
        assert_eq!(t.entry(s).last_seen(), 5);
        assert_eq!(t.entry(s).value, 1);
        t.entry_mut(s).value = 77;
        t.entry_mut(s).state = FlowState::Closing;
        assert_eq!((t.entry(s).value, t.entry(s).state), (77, FlowState::Closing));
        assert_eq!(look(&mut t, 3, 5), None);
        t.remove(s);
        assert_eq!(look(&mut t, 1, 5), None);
        assert!(look(&mut t, 2, 5).is_some());
        assert_eq!(t.len(), 1);
        // The freed slot is reused.
        assert_eq!(ins(&mut t, 4, 6), s);
        assert_eq!(t.entry(s).value, 4);
        assert_eq!((t.evictions(), t.expirations()), (0, 0));
    }

    #[test]
    fn capacity_is_clamped_to_two() {
        let mut t = ConnTable::<u64>::new(0, T);
        assert_eq!(t.capacity(), 2);
        let a = ins(&mut t, 1, 0);
        let b = ins(&mut t, 2, 0);
        t.link_peers(a, b);
        assert_eq!(t.len(), 2);
        ins(&mut t, 3, 0);
        assert_eq!((t.len(), t.evictions()), (1, 2));
    }

    #[test]
    fn full_table_evicts_least_recently_used() {
        let mut t = ConnTable::<u64>::new(4, T);
        for n in 0..4 {
            ins(&mut t, n, n);
        }
        // Key 0 is the oldest insert, but a lookup makes 1 the least recently used.
        assert!(look(&mut t, 0, 10).is_some());
        ins(&mut t, 4, 11);
        assert_eq!(t.len(), 4);
        assert_eq!(t.evictions(), 1);
        assert!(!has(&t, 1, 11));
        for n in [0, 2, 3, 4] {
            assert!(has(&t, n, 11), "{n} evicted");
        }
        // A touch rescues too.
        let s2 = look(&mut t, 2, 12).unwrap();
        let s3 = look(&mut t, 3, 12).unwrap();
        t.touch(s2, 13);
        t.touch(s3, 13);
        assert!(look(&mut t, 4, 13).is_some());
        ins(&mut t, 5, 14);
        assert!(!has(&t, 0, 14));
        assert_eq!(t.evictions(), 2);
    }

    #[test]
    fn contains_does_not_touch_lru_order_or_time() {
        let mut t = ConnTable::<u64>::new(3, T);
        for n in 0..3 {
            ins(&mut t, n, 0);
        }
        assert!(has(&t, 0, 400));
        // Not refreshed: still expires 500 ms after the insert.
        assert!(!has(&t, 0, 501));
        ins(&mut t, 3, 1);
        assert!(!has(&t, 0, 1), "contains must not have made 0 recently used");
        assert!(has(&t, 1, 1));
    }

    #[test]
    fn peers_die_together() {
        // On remove, from either side.
        let mut t = ConnTable::<u64>::new(8, T);
        let (a, b, c) = (ins(&mut t, 1, 0), ins(&mut t, 2, 0), ins(&mut t, 3, 0));
        t.link_peers(a, b);
        assert_eq!((t.entry(a).peer(), t.entry(b).peer(), t.entry(c).peer()), (b, a, NO_PEER));
        t.remove(b);
        assert_eq!(t.len(), 1);
        assert!(!has(&t, 1, 0) && !has(&t, 2, 0) && has(&t, 3, 0));

        // On eviction: the pair is the least recently used.
        let mut t = ConnTable::<u64>::new(4, T);
        let (a, b) = (ins(&mut t, 1, 0), ins(&mut t, 2, 0));
        t.link_peers(a, b);
        ins(&mut t, 3, 1);
        ins(&mut t, 4, 1);
        ins(&mut t, 5, 2);
        assert_eq!((t.len(), t.evictions()), (3, 2));
        assert!(!has(&t, 1, 2) && !has(&t, 2, 2));

        // On expiry through lookup and through expire.
        let mut t = ConnTable::<u64>::new(8, T);
        let (a, b) = (ins(&mut t, 1, 0), ins(&mut t, 2, 0));
        t.link_peers(a, b);
        assert_eq!(look(&mut t, 2, 501), None);
        assert_eq!((t.len(), t.expirations()), (0, 2));
        let (a, b) = (ins(&mut t, 1, 600), ins(&mut t, 2, 600));
        t.link_peers(a, b);
        ins(&mut t, 3, 1000);
        assert_eq!(t.expire(1101, 100), 2);
        assert_eq!(t.len(), 1);
        assert!(has(&t, 3, 1101));
    }

    #[test]
    fn a_pair_ages_as_one_and_expires_with_its_shortest_timeout() {
        let mut t = ConnTable::<u64>::new(4, T);
        let (a, b) = (ins(&mut t, 1, 0), ins(&mut t, 2, 0));
        t.link_peers(a, b);
        ins(&mut t, 3, 0);
        ins(&mut t, 4, 0);
        // Traffic on a alone keeps b alive and recently used.
        for now in (100..=1000).step_by(100) {
            assert_eq!(look(&mut t, 1, now), Some(a));
        }
        assert_eq!(t.entry(b).last_seen(), 1000);
        ins(&mut t, 5, 1000);
        assert!(has(&t, 2, 1000), "b was evicted while a was busy");
        // b closing: the pair goes when b's 20 ms run out.
        t.entry_mut(b).state = FlowState::Closing;
        assert!(has(&t, 1, 1020));
        assert!(!has(&t, 1, 1021));
        assert_eq!(look(&mut t, 1, 1021), None);
        assert!(!has(&t, 2, 1021));
    }

    #[test]
    fn relinking_dissolves_the_old_pair() {
        let mut t = ConnTable::<u64>::new(8, T);
        let (a, b, c) = (ins(&mut t, 1, 0), ins(&mut t, 2, 0), ins(&mut t, 3, 0));
        t.link_peers(a, b);
        t.link_peers(a, c);
        assert_eq!((t.entry(a).peer(), t.entry(b).peer(), t.entry(c).peer()), (c, NO_PEER, a));
        t.remove(a);
        assert_eq!(t.len(), 1);
        assert!(has(&t, 2, 0));
    }

    #[test]
    fn each_state_times_out_across_the_u32_wrap() {
        for state in [FlowState::SynSeen, FlowState::Established, FlowState::Closing, FlowState::Udp] {
            let timeout = T.for_state(state);
            let start = u32::MAX - timeout / 2;
            let mut t = ConnTable::<u64>::new(4, T);
            let k = key(9);
            let h = k.hash64();
            let s = t.insert(k, h, state, 0, start);
            assert!(t.contains(&k, h, start.wrapping_add(timeout)), "{state:?} gone at its timeout");
            assert!(!t.contains(&k, h, start.wrapping_add(timeout + 1)), "{state:?} alive past its timeout");
            // A lookup just in time refreshes it for another full timeout.
            assert_eq!(t.lookup(&k, h, start.wrapping_add(timeout)), Some(s));
            let last = start.wrapping_add(timeout);
            assert_eq!(t.expire(last.wrapping_add(timeout), 4), 0);
            assert_eq!(t.expire(last.wrapping_add(timeout + 1), 4), 1, "{state:?}");
            assert!(t.is_empty());
            let s = t.insert(k, h, state, 0, last);
            assert_eq!(t.lookup(&k, h, last.wrapping_add(timeout + 1)), None);
            assert_eq!((t.len(), t.expirations()), (0, 2));
            // Re-insert after expiry without a lookup in between (the SNAT probe path).
            t.insert(k, h, state, 0, last);
            assert!(!t.contains(&k, h, last.wrapping_add(timeout + 1)));
            assert_eq!(t.insert(k, h, state, 1, last.wrapping_add(timeout + 1)), s);
            assert_eq!((t.len(), t.expirations()), (1, 3));
            assert_eq!(t.entry(s).value, 1);
        }
    }

    #[test]
    fn expire_works_in_bounded_steps_and_eventually_reaps_everything() {
        const N: u32 = 100;
        const BUDGET: usize = 7;
        let mut t = ConnTable::<u64>::new(N as usize, T);
        for n in 0..N {
            ins(&mut t, n, 0);
        }
        for n in (0..N).step_by(2) {
            look(&mut t, n, 400).unwrap();
        }
        // At 600 the odd keys are expired and the even ones are not.
        let mut removed = 0;
        for call in 0..N as usize / BUDGET + 1 {
            let r = t.expire(600, BUDGET);
            // Each call examines BUDGET slots, half of them expired.
            assert!(r <= BUDGET.div_ceil(2), "call {call} removed {r}");
            removed += r;
        }
        assert_eq!(removed, N as usize / 2);
        assert_eq!(t.expire(600, BUDGET), 0);
        assert_eq!((t.len(), t.expirations()), (N as usize / 2, N as u64 / 2));
        for n in 0..N {
            assert_eq!(has(&t, n, 600), n % 2 == 0);
        }

        // All expired: each call removes exactly BUDGET until none are left.
        let mut calls = 0;
        while !t.is_empty() {
            let before = t.len();
            let r = t.expire(10_000, BUDGET);
            assert!(r <= BUDGET && r == before - t.len());
            calls += 1;
        }
        assert_eq!(calls, (N as usize).div_ceil(BUDGET));
        assert_eq!(t.expire(10_000, BUDGET), 0);
    }

    /// The obvious implementation: a HashMap plus a Vec in recency order.
    struct Model {
        capacity: usize,
        map: HashMap<FlowKey, M>,
        /// Least recently used first.
        lru: Vec<FlowKey>,
        /// Slots handed out so far and the clock hand over them.
        used: usize,
        hand: usize,
        evictions: u64,
        expirations: u64,
    }

    struct M {
        slot: Slot,
        last_seen: u32,
        state: FlowState,
        peer: Option<FlowKey>,
    }

    impl Model {
        fn expired(&self, k: &FlowKey, now: u32) -> bool {
            let m = &self.map[k];
            now.wrapping_sub(m.last_seen) > T.for_state(m.state)
        }
        fn pair_expired(&self, k: &FlowKey, now: u32) -> bool {
            self.expired(k, now) || self.map[k].peer.is_some_and(|p| self.expired(&p, now))
        }
        fn live(&self, k: &FlowKey, now: u32) -> bool {
            self.map.contains_key(k) && !self.pair_expired(k, now)
        }
        fn remove_pair(&mut self, k: &FlowKey) -> u64 {
            let peer = self.map[k].peer;
            let mut n = 0;
            for x in std::iter::once(*k).chain(peer) {
                self.map.remove(&x);
                self.lru.retain(|y| *y != x);
                n += 1;
            }
            n
        }
        fn refresh(&mut self, k: &FlowKey, now: u32) {
            self.map.get_mut(k).unwrap().last_seen = now;
            self.lru.retain(|y| y != k);
            self.lru.push(*k);
        }
        fn touch(&mut self, k: &FlowKey, now: u32) {
            if let Some(p) = self.map[k].peer {
                self.refresh(&p, now);
            }
            self.refresh(k, now);
        }
        fn lookup(&mut self, k: &FlowKey, now: u32) -> bool {
            if !self.map.contains_key(k) {
                return false;
            }
            if self.pair_expired(k, now) {
                self.expirations += self.remove_pair(k);
                return false;
            }
            self.touch(k, now);
            true
        }
        fn insert(&mut self, k: FlowKey, state: FlowState, now: u32, slot: Slot) {
            if self.map.contains_key(&k) {
                assert!(self.pair_expired(&k, now));
                self.expirations += self.remove_pair(&k);
            }
            if self.map.len() == self.capacity {
                let victim = self.lru[0];
                self.evictions += self.remove_pair(&victim);
            }
            assert!((slot as usize) < self.capacity);
            assert!(self.map.values().all(|m| m.slot != slot), "slot {slot} handed out twice");
            self.used = self.used.max(slot as usize + 1);
            self.map.insert(k, M { slot, last_seen: now, state, peer: None });
            self.lru.push(k);
        }
        fn expire(&mut self, now: u32, budget: usize) -> usize {
            let mut removed = 0;
            for _ in 0..budget.min(self.used) {
                let slot = self.hand as Slot;
                self.hand = (self.hand + 1) % self.used;
                let at = self.map.iter().find(|(_, m)| m.slot == slot).map(|(k, _)| *k);
                if let Some(k) = at.filter(|k| self.pair_expired(k, now)) {
                    removed += self.remove_pair(&k) as usize;
                }
            }
            self.expirations += removed as u64;
            removed
        }
    }

    /// splitmix64: deterministic, no extra crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    const STATES: [FlowState; 4] = [FlowState::SynSeen, FlowState::Established, FlowState::Closing, FlowState::Udp];

    #[test]
    fn matches_a_simple_model() {
        for seed in 1..=6u64 {
            let mut rng = Rng(seed);
            let capacity = 2 + rng.below(14) as usize;
            let keys: Vec<FlowKey> = (0..3 * capacity as u32)
                .map(|n| {
                    let src = IpAddr::V4(Ipv4Addr::new(198, 18, 0, n as u8));
                    FlowKey::new(src, "198.18.1.1".parse().unwrap(), 5000, 53, PROTO_UDP)
                })
                .collect();
            let mut t = ConnTable::<u64>::new(capacity, T);
            let mut m = Model { capacity, map: HashMap::new(), lru: Vec::new(), used: 0, hand: 0, evictions: 0, expirations: 0 };
            // Start close to the wrap so that `now` crosses u32::MAX.
            let mut now = u32::MAX - 20_000;
            for step in 0..15_000 {
                now = now.wrapping_add(if rng.below(50) == 0 { 400 } else { rng.below(8) as u32 });
                let k = keys[rng.below(keys.len() as u64) as usize];
                let h = k.hash64();
                let present: Vec<FlowKey> = m.lru.clone();
                let some_present = (!present.is_empty()).then(|| present[rng.below(present.len() as u64) as usize]);
                match rng.below(100) {
                    0..30 => {
                        let got = t.lookup(&k, h, now);
                        assert_eq!(got.is_some(), m.lookup(&k, now), "seed {seed} step {step}: lookup");
                        if let Some(s) = got {
                            assert_eq!(s, m.map[&k].slot);
                        }
                    }
                    30..55 => {
                        if !t.contains(&k, h, now) {
                            let state = STATES[rng.below(4) as usize];
                            let s = t.insert(k, h, state, step, now);
                            m.insert(k, state, now, s);
                            assert_eq!(t.entry(s).value, step);
                        }
                    }
                    55..65 => {
                        let other = (!present.is_empty()).then(|| present[rng.below(present.len() as u64) as usize]);
                        if let (Some(a), Some(b)) = (some_present, other)
                            && a != b
                            && m.map[&a].peer.is_none()
                            && m.map[&b].peer.is_none()
                        {
                            t.link_peers(m.map[&a].slot, m.map[&b].slot);
                            m.map.get_mut(&a).unwrap().peer = Some(b);
                            m.map.get_mut(&b).unwrap().peer = Some(a);
                        }
                    }
                    65..72 => {
                        if let Some(p) = some_present {
                            t.remove(m.map[&p].slot);
                            m.remove_pair(&p);
                        }
                    }
                    72..80 => {
                        if let Some(p) = some_present {
                            t.touch(m.map[&p].slot, now);
                            m.touch(&p, now);
                        }
                    }
                    80..88 => {
                        if let Some(p) = some_present {
                            let state = STATES[rng.below(4) as usize];
                            t.entry_mut(m.map[&p].slot).state = state;
                            m.map.get_mut(&p).unwrap().state = state;
                        }
                    }
                    _ => {
                        let budget = rng.below(6) as usize;
                        assert_eq!(t.expire(now, budget), m.expire(now, budget), "seed {seed} step {step}: expire");
                    }
                }
                assert_eq!(t.len(), m.map.len(), "seed {seed} step {step}: len");
                assert_eq!((t.evictions(), t.expirations()), (m.evictions, m.expirations));
                for k in &keys {
                    assert_eq!(t.contains(k, k.hash64(), now), m.live(k, now), "seed {seed} step {step}");
                }
                for (k, e) in &m.map {
                    let te = t.entry(e.slot);
                    assert_eq!((te.key(), te.last_seen(), te.state), (k, e.last_seen, e.state));
                    assert_eq!(te.peer(), e.peer.map_or(NO_PEER, |p| m.map[&p].slot));
                }
            }
        }
    }
}
