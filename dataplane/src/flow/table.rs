//! The per-worker connection table: a bounded map from [`FlowKey`] to a small
//! `Copy` value, with TCP-state-aware idle timeouts and CLOCK eviction.
//!
//! Each worker core owns one table (one shard), so nothing here locks. Every
//! byte is allocated in [`ConnTable::new`]: the per-packet path (`find`,
//! `refresh`) and the new-flow path (`insert`, with its eviction) never
//! allocate, so a flood of new flows cannot make a worker stall in the
//! allocator or run out of memory.
//!
//! Layout: entries live in one slot array and are addressed by a `u32`
//! [`Slot`]; freed slots form a free list through the entries. An index of
//! 8-byte buckets (open addressing, linear probing, at most half full)
//! maps the flow hash to a slot, so a lookup costs one index cache line and
//! the entry's own line, and the index line is known from the hash alone:
//! the engine warms both for a whole batch before processing it.
//!
//! Recency is CLOCK (second chance): a hit sets the entry's reference bit,
//! a write to its own cache line only (an LRU list would also write its
//! two neighbours, scattered in memory). When the table is full a hand
//! sweeps the slots, clearing set bits, and evicts the first entry whose
//! bit (and its peer's) is clear. A new entry starts clear, so the entries
//! of a SYN flood, never hit again, go at the hand's first pass, while a
//! flow that receives a packet per sweep survives.

use super::FlowKey;

/// Index of an entry in its table. Valid until the entry is removed,
/// evicted or expired; a later insert may reuse it for another flow.
pub type Slot = u32;

/// `Entry::peer` of an entry that is not paired.
pub const NO_PEER: Slot = u32::MAX;

/// End of the free list.
const NIL: Slot = u32::MAX;

/// `link` of a live slot. Free slots hold the next free slot or `NIL`
/// there, so this one marker tells live from free without a spare byte.
const LIVE: Slot = u32::MAX - 1;

/// Largest capacity: the index (twice as many buckets, a power of two)
/// must be addressable by the 32 hash bits a bucket keeps.
const MAX_CAPACITY: usize = 1 << 30;

/// An empty index bucket (no slot is `u32::MAX`).
const EMPTY: u64 = u64::MAX;

/// Slots the clock hand examines for one eviction at most, so that one
/// insert into a table of busy flows costs a bounded sweep (a sequential
/// walk of 256 KiB): when all of them were referenced, the previous insert
/// goes if still unreferenced, else the longest idle of them.
const EVICTION_SCAN: usize = 4096;

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
/// two bytes of state and reference bit, then the value.
///
/// The key, the timestamp and the links belong to the table (changing them
/// would corrupt the index, the free list or the pairing), so they are
/// read-only; `state` and `value` are the caller's.
#[derive(Debug)]
#[repr(C)]
pub struct Entry<V> {
    last_seen: u32,
    peer: Slot,
    /// `LIVE`, or the next free slot.
    link: Slot,
    /// The low 32 bits of the key's hash: its index bucket, kept so that
    /// removing the entry does not hash the key again.
    tag: u32,
    key: FlowKey,
    pub state: FlowState,
    /// Hit since the clock hand last passed.
    referenced: bool,
    pub value: V,
}

const _: () = assert!(size_of::<Entry<[u8; 8]>>() <= 64);
const _: () = assert!(size_of::<Entry<u64>>() <= 64);

impl<V> Entry<V> {
    pub fn key(&self) -> &FlowKey {
        &self.key
    }

    /// Time of this entry's last hit (ms, wrapping). A pair is as recent as
    /// its more recent half: see [`ConnTable::pair_seen`].
    pub fn last_seen(&self) -> u32 {
        self.last_seen
    }

    /// When the pair of this entry and its `peer` was last seen: the more
    /// recent half's `last_seen` (a hit refreshes one half only).
    pub fn pair_seen_with(&self, peer: &Entry<V>) -> u32 {
        newer(self.last_seen, peer.last_seen)
    }

    /// The other half of a NAT'd flow, or [`NO_PEER`].
    pub fn peer(&self) -> Slot {
        self.peer
    }

    fn is_live(&self) -> bool {
        self.link == LIVE
    }
}

/// The flow-hash index: buckets of `tag << 32 | slot`, linear probing from
/// `tag & mask`, at most half full (so a miss ends at an empty bucket soon),
/// deletion by backward shift (no tombstones, so it never degrades).
struct Index {
    buckets: Box<[u64]>,
    mask: usize,
}

impl Index {
    fn new(capacity: usize) -> Index {
        let n = (2 * capacity).next_power_of_two();
        Index { buckets: vec![EMPTY; n].into_boxed_slice(), mask: n - 1 }
    }

    fn home(&self, tag: u32) -> usize {
        tag as usize & self.mask
    }

    fn insert(&mut self, tag: u32, slot: Slot) {
        let mut i = self.home(tag);
        while self.buckets[i] != EMPTY {
            i = (i + 1) & self.mask;
        }
        self.buckets[i] = u64::from(tag) << 32 | u64::from(slot);
    }

    fn remove(&mut self, tag: u32, slot: Slot) {
        let want = u64::from(tag) << 32 | u64::from(slot);
        let mut hole = self.home(tag);
        while self.buckets[hole] != want {
            debug_assert_ne!(self.buckets[hole], EMPTY, "slot {slot} missing from the index");
            if self.buckets[hole] == EMPTY {
                return;
            }
            hole = (hole + 1) & self.mask;
        }
        // Shift back every later bucket of the run that may move into the
        // hole (its home is not between the hole and itself).
        let mut j = hole;
        loop {
            j = (j + 1) & self.mask;
            let b = self.buckets[j];
            if b == EMPTY {
                break;
            }
            let home = self.home((b >> 32) as u32);
            if (j.wrapping_sub(home) & self.mask) >= (j.wrapping_sub(hole) & self.mask) {
                self.buckets[hole] = b;
                hole = j;
            }
        }
        self.buckets[hole] = EMPTY;
    }
}

/// A bounded connection table for one worker. See the module docs.
pub struct ConnTable<V: Copy> {
    /// Slots handed out so far; never reallocated (its capacity is reserved
    /// in `new` and it grows by `push` only while below `capacity`), so slots
    /// are initialised lazily and need no placeholder `V`.
    slots: Vec<Entry<V>>,
    index: Index,
    capacity: usize,
    len: usize,
    free: Slot,
    /// The latest insert, which eviction spares: the second half of a pair
    /// must not evict the first.
    newest: Slot,
    /// The insert before it.
    prior: Slot,
    /// Clock hand of eviction, in `0..slots.len()`.
    evict_hand: usize,
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
}

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
            index: Index::new(capacity),
            capacity,
            len: 0,
            free: NIL,
            newest: NIL,
            prior: NIL,
            evict_hand: 0,
            hand: 0,
            timeouts,
            evictions: 0,
            expirations: 0,
            departed: Vec::with_capacity(DEPARTED_CAP),
            lost_departures: 0,
        }
    }

    /// The entry to evict from a full table (every slot handed out is then
    /// live): the first the clock hand finds unreferenced, with its peer,
    /// clearing the bits it passes; see `EVICTION_SCAN` for a long run of
    /// referenced ones.
    fn victim(&mut self, now: u32) -> Slot {
        let used = self.slots.len();
        let mut oldest: Option<(u32, Slot)> = None;
        // Two sweeps at most: the second finds the bits the first cleared.
        for _ in 0..EVICTION_SCAN.min(2 * used) {
            let slot = self.evict_hand as Slot;
            self.evict_hand += 1;
            if self.evict_hand == used {
                self.evict_hand = 0;
            }
            let (referenced, peer) = (self.slots[slot as usize].referenced, self.slots[slot as usize].peer);
            // A pair is judged once per sweep, at its lower slot, as one
            // entry referenced if either half is.
            if slot == self.newest || (peer != NO_PEER && peer < slot) {
                continue;
            }
            if !referenced && (peer == NO_PEER || !self.slots[peer as usize].referenced) {
                return slot;
            }
            self.slots[slot as usize].referenced = false;
            if peer != NO_PEER {
                self.slots[peer as usize].referenced = false;
            }
            let idle = now.wrapping_sub(self.pair_seen(slot));
            if oldest.is_none_or(|(i, _)| idle > i) {
                oldest = Some((idle, slot));
            }
        }
        // A run of busy flows: rather than one of them, the insert before
        // the newest if nothing hit it yet (in a flood, a SYN of the flood).
        let prior = self.slots.get(self.prior as usize).filter(|e| e.is_live() && !e.referenced);
        if let Some(e) = prior
            && (e.peer == NO_PEER || !self.slots[e.peer as usize].referenced)
        {
            return self.prior;
        }
        // Only `newest` and referenced entries were seen (at least one of
        // the latter: capacity >= 2).
        oldest.map_or(self.evict_hand as Slot, |(_, s)| s)
    }

    /// The slot of `key`'s entry (`hash` must be `key.hash64()`), live or
    /// expired: reads the index and the entry, writes nothing. With
    /// [`refresh`](Self::refresh), a lookup split in two, so the engine
    /// can find the entries of a batch first and handle them after.
    #[inline]
    pub fn find(&self, key: &FlowKey, hash: u64) -> Option<Slot> {
        let tag = hash as u32;
        let mut i = self.index.home(tag);
        loop {
            let b = self.index.buckets[i];
            if b == EMPTY {
                return None;
            }
            if (b >> 32) as u32 == tag && self.slots[b as u32 as usize].key == *key {
                return Some(b as u32);
            }
            i = (i + 1) & self.index.mask;
        }
    }

    /// Loads the index bucket of `hash` into the cache, so that a `find`
    /// of it soon after does not wait for memory. A demand load, not a
    /// prefetch instruction: `_mm_prefetch` needs `unsafe`, which this
    /// crate forbids, and the crate that holds the unsafe code sits above
    /// it; independent loads of a batch overlap in the CPU all the same.
    #[inline]
    pub fn warm(&self, hash: u64) {
        std::hint::black_box(self.index.buckets[self.index.home(hash as u32)]);
    }

    /// Loads the entry of the first bucket of `hash`'s run whose tag is
    /// its (the flow's own, but for a tag collision) into the cache; call
    /// it after `warm`, once the bucket has arrived. Not the home bucket's
    /// entry: at half load a third of the flows live further down the run,
    /// and warming another flow's entry left theirs to miss. `find`'s walk
    /// without the key compare, written apart: one helper for both cost
    /// every established packet 6-9 instructions (callgrind).
    #[inline]
    pub fn warm_entry(&self, hash: u64) {
        let tag = hash as u32;
        let mut i = self.index.home(tag);
        loop {
            let b = self.index.buckets[i];
            if b == EMPTY {
                return;
            }
            if (b >> 32) as u32 == tag {
                std::hint::black_box(self.slots[b as u32 as usize].last_seen);
                return;
            }
            i = (i + 1) & self.index.mask;
        }
    }

    /// The live entry for `key`: refreshes it and reports its slot. An
    /// expired entry is removed, with its peer, and reported absent.
    #[inline]
    pub fn lookup(&mut self, key: &FlowKey, hash: u64, now: u32) -> Option<Slot> {
        let slot = self.find(key, hash)?;
        self.refresh(slot, now).then_some(slot)
    }

    /// A hit on the entry `find` returned: if its pair has expired, removes
    /// the pair and returns false; else marks it seen at `now` and
    /// referenced, writing to its own entry only, and returns true.
    #[inline(always)]
    pub fn refresh(&mut self, slot: Slot, now: u32) -> bool {
        if self.pair_expired(slot, now) {
            self.reap(slot);
            return false;
        }
        self.touch(slot, now);
        true
    }

    /// Removes an expired pair a hit found.
    #[cold]
    fn reap(&mut self, slot: Slot) {
        self.expirations += self.remove_pair(slot) as u64;
    }

    /// Whether `key` has a live entry, without refreshing or reaping
    /// anything: probing candidate SNAT ports must not keep them alive.
    pub fn contains(&self, key: &FlowKey, hash: u64, now: u32) -> bool {
        self.peek(key, hash, now).is_some()
    }

    /// The live entry for `key`, like `contains` touching nothing.
    pub fn peek(&self, key: &FlowKey, hash: u64, now: u32) -> Option<Slot> {
        self.find(key, hash).filter(|&slot| !self.pair_expired(slot, now))
    }

    /// Inserts `key` unreferenced and returns its slot. The key must not be
    /// live; an expired entry for it (which `contains` reports absent but
    /// leaves in place) is removed first. When the table is full the clock
    /// hand's victim and its peer are evicted.
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
        let tag = hash as u32;
        let entry = Entry { last_seen: now, peer: NO_PEER, link: LIVE, tag, key, state, referenced: false, value };
        let slot = if self.free != NIL {
            let slot = self.free;
            self.free = self.slots[slot as usize].link;
            self.slots[slot as usize] = entry;
            slot
        } else {
            // No free slot and len < capacity: every slot handed out is live,
            // so slots.len() == len < capacity and the push cannot reallocate.
            debug_assert!(self.slots.len() < self.capacity);
            self.slots.push(entry);
            (self.slots.len() - 1) as Slot
        };
        self.index.insert(tag, slot);
        self.prior = std::mem::replace(&mut self.newest, slot);
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

    /// When the pair of `slot` was last seen: its more recent half's
    /// `last_seen` (a hit refreshes one half only).
    pub fn pair_seen(&self, slot: Slot) -> u32 {
        let e = &self.slots[slot as usize];
        match e.peer {
            NO_PEER => e.last_seen,
            peer => e.pair_seen_with(&self.slots[peer as usize]),
        }
    }

    /// Ages `slot` as if last seen at `at` (a flow imported from a peer
    /// keeps the time it has left there). Its reference bit is unchanged.
    pub fn set_last_seen(&mut self, slot: Slot, at: u32) {
        debug_assert!(self.slots[slot as usize].is_live(), "set_last_seen of free slot {slot}");
        self.slots[slot as usize].last_seen = at;
    }

    /// Marks `slot` seen at `now` and referenced. Its peer is not written:
    /// a pair ages as one because its age is that of its more recent half,
    /// so the idle reverse half of a one-way flow neither expires nor is
    /// evicted while the busy half lives.
    #[inline]
    pub fn touch(&mut self, slot: Slot, now: u32) {
        let entry = &mut self.slots[slot as usize];
        debug_assert!(entry.is_live(), "touch of free slot {slot}");
        entry.last_seen = now;
        entry.referenced = true;
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

    /// Whether any departure waits to be taken: the cheap test before
    /// `take_departed`, made after every packet.
    #[inline]
    pub fn has_departed(&self) -> bool {
        !self.departed.is_empty()
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

    /// Idle longer than its state allows. Wrapping arithmetic, so `now` may
    /// wrap around u32 (every 49.7 days); the clock hand reaps entries long
    /// before they could be idle that long. A pair is idle since its more
    /// recent half's last hit, and allowed the shorter of its halves'
    /// timeouts (both halves normally share one state).
    #[inline]
    fn pair_expired(&self, slot: Slot, now: u32) -> bool {
        let e = &self.slots[slot as usize];
        let (mut seen, mut timeout) = (e.last_seen, self.timeouts.for_state(e.state));
        if e.peer != NO_PEER {
            let p = &self.slots[e.peer as usize];
            seen = newer(seen, p.last_seen);
            timeout = timeout.min(self.timeouts.for_state(p.state));
        }
        now.wrapping_sub(seen) > timeout
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

    /// Frees one slot (if live): out of the index, onto the free list.
    /// Returns 1 if it was live.
    fn release(&mut self, slot: Slot) -> usize {
        let entry = &self.slots[slot as usize];
        if !entry.is_live() {
            return 0;
        }
        self.index.remove(entry.tag, slot);
        let entry = &mut self.slots[slot as usize];
        if self.departed.len() < DEPARTED_CAP {
            self.departed.push((entry.key, entry.value, entry.state));
        } else {
            self.lost_departures += 1;
        }
        entry.peer = NO_PEER;
        entry.link = self.free;
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
}

/// The more recent of two wrapping millisecond times (at most half the
/// u32 range apart).
fn newer(a: u32, b: u32) -> u32 {
    if b.wrapping_sub(a) as i32 > 0 { b } else { a }
}

#[cfg(test)]
mod tests;
