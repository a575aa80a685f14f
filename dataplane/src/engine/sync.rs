//! The engine's side of flow sync: which flows to tell a peer about, and
//! taking in the flows a peer tells about.
//!
//! A new flow's entry is written where the flow opens, into a
//! preallocated log, from what is at hand there (its key, VIP, backend and
//! the reverse half just made): no search, no allocation. A change of
//! state appends only the slot. Once per batch `export_sync` hands on the
//! new entries, turns the changed slots into `SyncEntry`s by stable
//! identities and walks a few slots of the table: a flow that traffic kept
//! alive since the walk last passed is sent again, so the peer's copy,
//! which expires on the time it was given, never runs out before ours.
//! The walk starts a lap at most every `refresh_ms`, so an established
//! flow costs its packets nothing and the peer a refresh now and then.

use std::fmt;

use crate::flow::FlowKey;
use crate::flow::key::ip_from16;
use crate::flow::sync::SyncEntry;
use crate::flow::table::{Entry, FlowState, NO_PEER, Slot};
use crate::forward::synproxy::Splice;
use crate::services::{BackendEntry, Mode, Vip};
use crate::types::{BackendId, IfIndex, Mac, VipId};

use super::{Engine, EngineConfig, FlowValue, Flows};

/// Changes logged per batch before the excess is only counted; a batch
/// has at most one change per packet, a few per TCP connection.
const LOG_CAPACITY: usize = 4096;
/// New flows' entries written per batch; past it a new flow is logged by
/// its slot, as a change.
const OPENED_CAPACITY: usize = 256;
/// Table slots the refresh walk visits per `export_sync`.
const REFRESH_BUDGET: usize = 64;
/// Table slots a bulk resync visits per `export_sync`.
const BULK_BUDGET: usize = 1024;
/// The shortest interval between refresh laps.
const MIN_REFRESH_MS: u32 = 100;

pub(super) struct SyncLog {
    on: bool,
    /// Forward entries created or changed since the last export. A slot
    /// freed since is skipped; one reused since holds a flow that is new,
    /// and logged itself: sending it twice does no harm, so the log needs
    /// no key to tell them apart.
    changed: Vec<Slot>,
    /// Entries of the flows opened since the last export: the first
    /// `opened_len`. Building them where the flow opens spares export the
    /// look-ups of a logged slot: under half the cost per new flow. One
    /// that ends before the export is sent all the same; the peer's copy
    /// expires.
    opened: Box<[SyncEntry]>,
    opened_len: usize,
    lost: u64,
    /// The refresh walk: next slot, when this lap and the previous began.
    hand: usize,
    lap_start: u32,
    prev_lap_start: u32,
    refresh_ms: u32,
    /// Start a lap at the next export, however recent the last one.
    relap: bool,
    /// Next slot of a bulk resync under way.
    bulk: Option<usize>,
}

impl SyncLog {
    pub(super) fn new(cfg: &EngineConfig) -> SyncLog {
        let t = cfg.timeouts;
        // A quarter of the shortest timeout: a refreshed entry is sent
        // again well before the peer's copy would expire.
        let shortest = t.syn_ms.min(t.established_ms).min(t.closing_ms).min(t.udp_ms);
        SyncLog {
            on: cfg.sync,
            changed: Vec::with_capacity(if cfg.sync { LOG_CAPACITY } else { 0 }),
            opened: vec![SyncEntry::default(); if cfg.sync { OPENED_CAPACITY } else { 0 }].into_boxed_slice(),
            opened_len: 0,
            lost: 0,
            hand: 0,
            lap_start: 0,
            prev_lap_start: 0,
            refresh_ms: (shortest / 4).max(MIN_REFRESH_MS),
            relap: false,
            bulk: None,
        }
    }

    /// A VIP's Maglev table changed: the busy flows it now places
    /// elsewhere go to the peers at once (a lap starts at the next
    /// export), not up to `refresh_ms` later, since a node lost in between
    /// would take with it the only record of their backends.
    pub(super) fn placement_changed(&mut self) {
        if self.on {
            self.hand = 0;
            self.relap = true;
        }
    }

    /// A forward entry was created or changed state.
    #[inline]
    pub(super) fn changed(&mut self, slot: Slot) {
        if !self.on {
            return;
        }
        if self.changed.len() < self.changed.capacity() {
            self.changed.push(slot);
        } else {
            self.lost += 1;
        }
    }
}

/// A NAT flow's reverse half, as a peer needs it: where replies to the
/// client go, and for full-NAT the flow's source address and port.
struct NatSide {
    client_mac: Mac,
    iface: IfIndex,
    snat: Option<([u8; 16], u16)>,
}

/// The NAT side of a flow of `v` whose reverse half is `r`.
#[inline]
fn nat_side(v: &Vip, r: &Entry<FlowValue>) -> Option<NatSide> {
    let FlowValue::Reverse { client_mac, iface } = r.value else { return None };
    // Full-NAT: the flow's source, the return key's destination.
    let snat = (!v.snat.is_empty()).then(|| (r.key().dst, r.key().dst_port));
    Some(NatSide { client_mac, iface, snat })
}

/// Writes into `out` what every entry carries: the flow, its VIP's port,
/// its backend, its state and time left, the owning worker, and the NAT
/// side if any. `splice` is set apart (only a synced SYN proxy flow has it).
#[allow(clippy::too_many_arguments)]
#[inline]
fn fill(out: &mut SyncEntry, key: &FlowKey, v: &Vip, b: &BackendEntry, state: FlowState, remaining_ms: u32, worker: u16, nat: Option<NatSide>) {
    out.key = *key;
    out.vip_port = v.spec.port;
    (out.backend, out.backend_port) = (b.addr, b.spec.port);
    out.state = state;
    out.remaining_ms = remaining_ms;
    out.worker = worker;
    (out.client_mac, out.iface, out.snat, out.snat_port) = ([0; 6], 0, [0; 16], 0);
    if let Some(n) = nat {
        (out.client_mac, out.iface) = (n.client_mac, n.iface);
        if let Some((addr, port)) = n.snat {
            (out.snat, out.snat_port) = (addr, port);
        }
    }
}

impl Flows {
    /// A flow was opened to `b` (`backend`): its entry is written now,
    /// unless the peer needs none. `hash` is the key's.
    #[inline]
    pub(super) fn flow_opened(
        &mut self,
        slot: Slot,
        (key, hash): (&FlowKey, u64),
        (vip_id, v): (VipId, &Vip),
        (backend, b): (BackendId, &BackendEntry),
        state: FlowState,
    ) {
        if !self.sync.on || self.peer_places(vip_id, v, backend, || hash) {
            return;
        }
        let nat = self.table.live(self.table.entry(slot).peer()).and_then(|r| nat_side(v, r));
        let log = &mut self.sync;
        let Some(out) = log.opened.get_mut(log.opened_len) else {
            log.changed(slot);
            return;
        };
        log.opened_len += 1;
        fill(out, key, v, b, state, self.cfg.timeouts.for_state(state), self.cfg.worker, nat);
        out.splice = None;
    }

    /// Whether a peer that never heard of the flow (key hash `hash`)
    /// sends it to `backend` all the same: a dsr or tunnel VIP (where any
    /// segment opens a flow) scheduled by Maglev alone, whose current
    /// answer is `backend`. Only the exceptions are synced; a busy flow
    /// left behind when the backends change is sent by the refresh walk
    /// once Maglev answers otherwise. The hash is asked for last: NAT
    /// flows, all synced, never pay for it.
    fn peer_places(&self, vip_id: VipId, v: &Vip, backend: BackendId, hash: impl FnOnce() -> u64) -> bool {
        !matches!(v.spec.mode, Mode::Nat { .. })
            && v.spec.persistence_ms.is_none()
            && self.schedulers.get(usize::from(vip_id)).is_none_or(Option::is_none)
            && v.maglev.lookup(hash()).and_then(|i| v.spec.backends.get(i)) == Some(&backend)
    }
}

/// Why a peer's entry was not taken in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportError {
    /// No VIP here with that address, protocol and port.
    UnknownVip,
    /// The VIP has no backend with that address and port here.
    UnknownBackend,
    /// Full-NAT on one side and not the other, or an address that is none
    /// of the VIP's SNAT addresses here.
    SnatMismatch,
    /// A flow the peer's SYN proxy opened, for a VIP without one here.
    NoSynProxy,
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ImportError::UnknownVip => "unknown VIP",
            ImportError::UnknownBackend => "unknown backend",
            ImportError::SnatMismatch => "SNAT address differs",
            ImportError::NoSynProxy => "SYN proxy flow for a VIP without one",
        })
    }
}

impl std::error::Error for ImportError {}

impl Engine {
    /// Hands `send` the flows a peer should hear about: with `active`
    /// (this node forwards) the flows created or changed since the last
    /// call and a few refreshed ones; and a slice of a bulk resync under
    /// way either way. `send` returns false when it has no room: the rest
    /// of the log is dropped (and counted), a bulk resync resumes at the
    /// next call. Call it after each `process`, with the same clock.
    pub fn export_sync(&mut self, now: u32, active: bool, mut send: impl FnMut(&SyncEntry) -> bool) {
        if !self.flows.sync.on {
            return;
        }
        let mut log = std::mem::take(&mut self.flows.sync.changed);
        let mut entry = SyncEntry::default();
        let opened = std::mem::take(&mut self.flows.sync.opened_len);
        if active {
            for (i, e) in self.flows.sync.opened[..opened].iter().enumerate() {
                if !send(e) {
                    self.flows.sync.lost += (opened - i + log.len()) as u64;
                    log.clear();
                    break;
                }
            }
            for (i, &slot) in log.iter().enumerate() {
                if self.sync_entry(slot, now, &mut entry) && !send(&entry) {
                    self.flows.sync.lost += (log.len() - i) as u64;
                    break;
                }
            }
            self.refresh(now, &mut entry, &mut send);
        }
        log.clear();
        self.flows.sync.changed = log;
        self.bulk(now, &mut entry, &mut send);
    }

    /// Starts sending every live flow (a peer started or restarted).
    pub fn start_bulk_sync(&mut self) {
        self.flows.sync.bulk = Some(0);
    }

    /// Whether a bulk resync is under way.
    pub fn bulk_sync_pending(&self) -> bool {
        self.flows.sync.bulk.is_some()
    }

    /// Changes not sent because the log or the sender had no room.
    pub fn sync_lost(&self) -> u64 {
        self.flows.sync.lost
    }

    /// The refresh walk's share of this call.
    fn refresh(&mut self, now: u32, entry: &mut SyncEntry, send: &mut impl FnMut(&SyncEntry) -> bool) {
        let sync = &mut self.flows.sync;
        if sync.hand == 0 {
            if !sync.relap && now.wrapping_sub(sync.lap_start) < sync.refresh_ms {
                return;
            }
            sync.relap = false;
            sync.prev_lap_start = sync.lap_start;
            sync.lap_start = now;
        }
        let since = now.wrapping_sub(sync.prev_lap_start);
        for _ in 0..REFRESH_BUDGET {
            let slot = self.flows.sync.hand;
            if slot >= self.flows.table.slots_used() {
                self.flows.sync.hand = 0;
                return;
            }
            self.flows.sync.hand += 1;
            let table = &self.flows.table;
            let seen = table.live(slot as Slot).is_some() && now.wrapping_sub(table.pair_seen(slot as Slot)) < since;
            if seen && self.sync_entry(slot as Slot, now, entry) && !send(entry) {
                self.flows.sync.lost += 1;
                return;
            }
        }
    }

    /// The bulk resync's share of this call.
    fn bulk(&mut self, now: u32, entry: &mut SyncEntry, send: &mut impl FnMut(&SyncEntry) -> bool) {
        let Some(mut at) = self.flows.sync.bulk else { return };
        let end = self.flows.table.slots_used().min(at + BULK_BUDGET);
        while at < end {
            if self.sync_entry(at as Slot, now, entry) && !send(entry) {
                break;
            }
            at += 1;
        }
        self.flows.sync.bulk = (at < self.flows.table.slots_used()).then_some(at);
    }

    /// Writes into `out` the flow whose forward entry is `slot`, by stable
    /// identities; false when there is none to send. An out-parameter
    /// that export reuses, because returning the entry by value copied it
    /// once more on its way to `send`: an eighth of sync's cost per new
    /// flow.
    fn sync_entry(&self, slot: Slot, now: u32, out: &mut SyncEntry) -> bool {
        let (f, s) = (&self.flows, &*self.services);
        let Some(e) = f.table.live(slot) else { return false };
        let FlowValue::Forward { vip, backend, spliced, .. } = e.value else { return false };
        // A flow the SYN proxy opened goes with its translation, once the
        // backend has answered (before, the client would retry anyway).
        let splice = if spliced {
            match f.splices.get(slot as usize).and_then(Splice::offsets) {
                Some(o) => Some(o),
                None => return false,
            }
        } else {
            None
        };
        let Some(v) = s.vip(vip) else { return false };
        if f.peer_places(vip, v, backend, || e.key().hash64()) {
            return false;
        }
        let Some(b) = s.backend(backend) else { return false };
        // The reverse half, read once: its NAT details and its recency.
        let (mut seen, mut nat) = (e.last_seen(), None);
        if e.peer() != NO_PEER
            && let Some(r) = f.table.live(e.peer())
        {
            seen = e.pair_seen_with(r);
            nat = nat_side(v, r);
        }
        let remaining_ms = f.cfg.timeouts.for_state(e.state).saturating_sub(now.wrapping_sub(seen));
        fill(out, e.key(), v, b, e.state, remaining_ms, f.cfg.worker, nat);
        out.splice = splice;
        true
    }

    /// Takes in a flow a peer sent: its entry (and for NAT the reverse
    /// one) as the peer has it, with the time it has left there. A local
    /// entry of the same flow is replaced unless it goes to the same
    /// backend, when only its state and age follow the peer's.
    pub fn import(&mut self, now: u32, e: &SyncEntry) -> Result<(), ImportError> {
        let s = &*self.services;
        let vip_id = s.vip_id(ip_from16(&e.key.dst), e.key.proto, e.vip_port).ok_or(ImportError::UnknownVip)?;
        let vip = s.vip(vip_id).ok_or(ImportError::UnknownVip)?;
        let (at, backend_id, b) = vip
            .spec
            .backends
            .iter()
            .enumerate()
            .filter_map(|(at, &id)| Some((at as u16, id, s.backend(id)?)))
            .find(|(_, _, b)| b.addr == e.backend && b.spec.port == e.backend_port)
            .ok_or(ImportError::UnknownBackend)?;
        let nat = matches!(vip.spec.mode, Mode::Nat { .. });
        let full_nat = !vip.snat.is_empty();
        if full_nat != (e.snat_port != 0) || (full_nat && !s.snat_addrs_of(vip).any(|a| *a == e.snat)) {
            return Err(ImportError::SnatMismatch);
        }
        let f = &mut self.flows;
        if e.splice.is_some() && (!nat || f.splices.is_empty()) {
            return Err(ImportError::NoSynProxy);
        }
        let seen = now.wrapping_sub(f.cfg.timeouts.for_state(e.state).saturating_sub(e.remaining_ms));
        let hash = e.key.hash64();
        if let Some(slot) = f.table.peek(&e.key, hash, now) {
            let entry = f.table.entry(slot);
            if let FlowValue::Forward { spliced: true, .. } = entry.value
                && e.splice.is_none()
            {
                // Spliced here by the SYN proxy: the local entry knows more.
                return Ok(());
            }
            if let FlowValue::Forward { vip, backend, spliced, .. } = entry.value
                && (vip, backend, spliced) == (vip_id, backend_id, e.splice.is_some())
            {
                if let Some(o) = e.splice {
                    f.splices[slot as usize] = Splice::from_offsets(o);
                }
                let (old, peer) = (entry.state, entry.peer());
                f.counts.flow((vip_id, backend_id), old, -1);
                f.counts.flow((vip_id, backend_id), e.state, 1);
                for at in [slot, peer].into_iter().filter(|&at| at != NO_PEER) {
                    f.table.entry_mut(at).state = e.state;
                    f.table.set_last_seen(at, seen);
                }
                return Ok(());
            }
            f.table.remove(slot);
        }
        // The return key the backend's replies carry; whatever holds it
        // (a flow ended here but not yet there) gives way.
        let rkey = nat.then(|| {
            let mut rkey = FlowKey { src: b.addr, dst: e.key.src, src_port: b.port_for(e.key.dst_port), dst_port: e.key.src_port, proto: e.key.proto };
            if full_nat {
                (rkey.dst, rkey.dst_port) = (e.snat, e.snat_port);
            }
            rkey
        });
        if let Some(rkey) = &rkey
            && let Some(old) = f.table.peek(rkey, rkey.hash64(), now)
        {
            f.table.remove(old);
        }
        let slot = f.table.insert(e.key, hash, e.state, FlowValue::Forward { vip: vip_id, backend: backend_id, at, spliced: e.splice.is_some() }, now);
        if let Some(o) = e.splice {
            f.splices[slot as usize] = Splice::from_offsets(o);
        }
        if let Some(rkey) = rkey {
            let rev = f.table.insert(rkey, rkey.hash64(), e.state, FlowValue::Reverse { client_mac: e.client_mac, iface: e.iface }, now);
            f.table.link_peers(slot, rev);
            f.table.set_last_seen(rev, seen);
        }
        f.table.set_last_seen(slot, seen);
        f.counts.flow((vip_id, backend_id), e.state, 1);
        f.settle_departures(now);
        Ok(())
    }
}
