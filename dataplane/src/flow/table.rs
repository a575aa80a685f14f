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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u8)]
pub enum FlowState {
    /// TCP, handshake not completed.
    #[default]
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
    /// Entries removed since the owner last took them (key, value and
    /// state), so it can keep per-backend counts exact and hold back the
    /// source ports of ended NAT flows. Preallocated and bounded.
    departed: Vec<(FlowKey, V, FlowState)>,
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
        self.peek(key, hash, now).is_some()
    }

    /// The live entry for `key`, like `contains` touching nothing.
    pub fn peek(&self, key: &FlowKey, hash: u64, now: u32) -> Option<Slot> {
        self.find(key, hash).filter(|&slot| !self.pair_expired(slot, now))
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

    /// The entry in `slot` if the slot was handed out and is live: for
    /// walking the table by slot (the sync's refresh and bulk resync).
    pub fn live(&self, slot: Slot) -> Option<&Entry<V>> {
        self.slots.get(slot as usize).filter(|e| e.is_live())
    }

    /// Slots handed out so far (live or free): the range a walk covers.
    pub fn slots_used(&self) -> usize {
        self.slots.len()
    }

    /// Ages `slot` as if last seen at `at` (a flow imported from a peer
    /// keeps the time it has left there). Its LRU place is unchanged.
    pub fn set_last_seen(&mut self, slot: Slot, at: u32) {
        debug_assert!(self.slots[slot as usize].is_live(), "set_last_seen of free slot {slot}");
        self.slots[slot as usize].last_seen = at;
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
    pub fn take_departed(&mut self) -> std::vec::Drain<'_, (FlowKey, V, FlowState)> {
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
            self.departed.push((entry.key, entry.value, entry.state));
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
mod tests;
