//! The packet path: `Engine::process` parses each frame of a batch, finds
//! or creates its flow, rewrites it and sets its verdict. One engine per
//! worker core; it owns its connection-table shard and counters and takes
//! no lock.

mod sync;

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use crate::flow::FlowKey;
use crate::flow::fragments::{Fragments, Placement};
use crate::flow::neighbours::Neighbours;
use crate::flow::parse::{Fragment, ParseError, Parsed, parse_into, parse_quoted};
use crate::flow::snat::{SnatPorts, backend_tag};
use crate::flow::sticky::{Client, StickyTable};
use crate::flow::table::{ConnTable, FlowState, NO_PEER, Slot, Timeouts};
use crate::forward::rewrite::End;
use crate::forward::synproxy::{Cookies, EarlyData, Splice};
use crate::forward::tunnel::Encap;
use crate::forward::{icmp, reset, rewrite, tunnel};
use crate::packet::{DropReason, Packet, Verdict};
use crate::sched::ahead::PicksAhead;
use crate::sched::readings::{Load, Readings};
use crate::sched::{BackendState, Latencies, Scheduler};
use crate::services::{BackendEntry, Mode, Services, SynProxy, Vip};
use crate::stats::Stats;
use crate::types::{BackendId, IfIndex, Mac, VipId};
use crate::wire::{IpProtocol, icmp as wicmp, tcp};

pub use self::sync::ImportError;
use self::sync::SyncLog;

/// What a connection-table entry records (8 bytes, so an entry fits one
/// cache line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowValue {
    /// Client to VIP: the backend that serves the flow, and its place in
    /// the VIP's list when the flow opened (`Vip::has_backend_at`).
    /// `spliced`: the SYN proxy opened it, and its `Splice` (by slot)
    /// translates it.
    Forward { vip: VipId, backend: BackendId, at: u16, spliced: bool },
    /// NAT return traffic, backend to client: where the client is. The
    /// paired forward entry holds the rest.
    Reverse { client_mac: Mac, iface: IfIndex },
}

const _: () = assert!(std::mem::size_of::<crate::flow::table::Entry<FlowValue>>() <= 64);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// This worker's index and the number of workers: they split the
    /// full-NAT source ports so two workers never pick the same one.
    pub worker: u16,
    pub workers: u16,
    pub table_capacity: usize,
    pub timeouts: Timeouts,
    /// Connection-table slots examined for expiry after each batch.
    pub expire_budget: usize,
    /// Full-NAT source ports (inclusive), shared out among the workers.
    pub snat_ports: (u16, u16),
    /// Half-open entries kept per dsr or tunnel VIP; beyond it a SYN is
    /// forwarded by Maglev without one.
    pub half_open_per_vip: u32,
    /// Half-open entries of a nat VIP with `SynProxy::Auto` from which on
    /// its SYNs are answered with cookies.
    pub syn_proxy_above: u32,
    /// How long a full-NAT source port is held back from the backend its
    /// flow went to after the flow ended (see `flow::snat`).
    pub snat_reuse_ms: u32,
    pub max_vips: usize,
    pub max_backends: usize,
    /// Clients the sticky table of session persistence holds (one table
    /// shared by all workers, see `flow::sticky`).
    pub sticky_clients: usize,
    /// Addresses the neighbour table holds (shared, see `flow::neighbours`).
    pub neighbours: usize,
    /// Datagrams in flight whose later fragments the worker can follow,
    /// and for how long after their first fragment (`flow::fragments`).
    pub fragments: usize,
    pub fragment_ttl_ms: u32,
    /// Flow sync with a peer balancer: the engine logs the flows it
    /// creates and changes, and refreshes, for `export_sync`.
    pub sync: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            worker: 0,
            workers: 1,
            table_capacity: 1 << 20,
            timeouts: Timeouts::default(),
            expire_budget: 32,
            snat_ports: (1024, 65535),
            snat_reuse_ms: 60_000,
            half_open_per_vip: 1 << 18,
            syn_proxy_above: 1024,
            max_vips: 1024,
            max_backends: 16384,
            sticky_clients: 1 << 16,
            neighbours: 1 << 14,
            fragments: 4096,
            fragment_ttl_ms: 2_000,
            sync: false,
        }
    }
}

/// What every worker shares: tables written by other threads (the sticky
/// choices of session persistence by any worker, the clients' neighbours
/// by the control plane, the backends' response times by the health
/// checks) and the SYN cookies' key.
#[derive(Clone)]
pub struct Shared {
    pub sticky: Arc<StickyTable>,
    pub neighbours: Arc<Neighbours>,
    /// Backends' response times (the health checks').
    pub latencies: Arc<Latencies>,
    /// Backends' load, byte rates and handshake times, by worker.
    pub readings: Arc<Readings>,
    pub cookies: Cookies,
    /// Where the workers' clock (`now` of `process`) starts: the sticky
    /// table and the readings' times need one clock, and their readers
    /// the same.
    pub epoch: Instant,
}

impl Shared {
    pub fn new(cfg: &EngineConfig) -> Shared {
        Shared {
            sticky: Arc::new(StickyTable::new(cfg.sticky_clients)),
            neighbours: Arc::new(Neighbours::new(cfg.neighbours)),
            latencies: Arc::new(Latencies::new(cfg.max_backends)),
            readings: Arc::new(Readings::new(usize::from(cfg.workers), cfg.max_backends)),
            cookies: Cookies::new(),
            epoch: Instant::now(),
        }
    }
}

/// Where a flow goes: its VIP and backend, by id and resolved.
#[derive(Clone, Copy)]
struct Target<'a> {
    vip_id: VipId,
    vip: &'a Vip,
    backend_id: BackendId,
    b: &'a BackendEntry,
}

/// Full-NAT ports probed before a new flow is dropped as exhausted.
const SNAT_PROBES: u16 = 64;

pub struct Engine {
    services: Arc<Services>,
    flows: Flows,
}

/// The worker's mutable state, apart from the read-only services so that
/// the packet path borrows both without cloning the `Arc` per packet.
struct Flows {
    cfg: EngineConfig,
    table: ConnTable<FlowValue>,
    sticky: Arc<StickyTable>,
    neighbours: Arc<Neighbours>,
    latencies: Arc<Latencies>,
    readings: Arc<Readings>,
    /// Byte counts and smoothed rates per backend id at the last
    /// `RATE_INTERVAL_MS` tick, and when that was.
    rates: Vec<(u64, u64)>,
    rates_at: u32,
    /// Handshakes of NAT flows being timed, and this worker's smoothed
    /// handshake time per backend id.
    handshakes: Handshakes,
    handshake_us: Vec<u32>,
    /// The batch's clock.
    now_us: u64,
    stats: Arc<Stats>,
    /// Per-VIP scheduler overriding Maglev for new flows (plugins).
    schedulers: Vec<Option<Box<dyn Scheduler>>>,
    /// Some VIP has a scheduler: the chunk's new flows are noted for it.
    any_scheduler: bool,
    ahead: PicksAhead,
    counts: Counts,
    /// The pool as a scheduler sees it, filled per new flow (preallocated).
    pool: Vec<BackendState>,
    snat: SnatPorts,
    fragments: Fragments,
    cookies: Cookies,
    /// Per forward-entry slot, the splice of a flow the SYN proxy opened
    /// (allocated once a nat VIP may proxy; see `FlowValue::Forward`).
    splices: Vec<Splice>,
    early: EarlyData,
    /// Per VIP id, whether its SYN proxy is engaged (`SynProxy::Auto`).
    guards: Vec<Guard>,
    sync: SyncLog,
    /// The chunk being processed, frame by frame: `WARM_BATCH` entries,
    /// each frame parsed into its own in place.
    heads: Vec<Head>,
}

/// What the first passes over a chunk found of one frame.
#[derive(Clone, Copy)]
struct Head {
    /// Meaningful when `parsing` is `Ok`.
    parsed: Parsed,
    parsing: Result<(), ParseError>,
    /// The flow key's hash.
    hash: u64,
}

/// Frames whose index buckets and entries are loaded before the first of
/// them is processed: enough misses in flight to cover the memory latency.
const WARM_BATCH: usize = 64;

/// How often a worker measures its byte rate per backend, and the weight
/// of each measure in the smoothed rate (1/8 at 100 ms: the last second or
/// so).
const RATE_INTERVAL_MS: u32 = 100;
const RATE_SMOOTHING: u64 = 8;

/// Handshakes a worker times at once (the rest go untimed), and the
/// weight of each in the smoothed time.
const HANDSHAKE_SLOTS: usize = 1024;
const HANDSHAKE_SMOOTHING: u32 = 8;

/// NAT flows whose SYN went to the backend and whose SYN-ACK has not come
/// back yet, by flow hash: direct-mapped, so a SYN may push out another's
/// sample (that one is then not timed).
struct Handshakes(Box<[(u64, u64, BackendId)]>);

impl Handshakes {
    fn new(slots: usize) -> Handshakes {
        Handshakes(vec![(0, 0, 0); slots.next_power_of_two()].into_boxed_slice())
    }

    fn slot(&mut self, hash: u64) -> &mut (u64, u64, BackendId) {
        let mask = self.0.len() as u64 - 1;
        &mut self.0[(hash & mask) as usize]
    }

    /// The flow of `hash` sent its SYN to `backend` at `now_us`.
    fn start(&mut self, hash: u64, backend: BackendId, now_us: u64) {
        *self.slot(hash | 1) = (hash | 1, now_us, backend);
    }

    /// The SYN-ACK of the flow of `hash` came at `now_us`: its backend and
    /// handshake time, if it was being timed.
    fn finish(&mut self, hash: u64, now_us: u64) -> Option<(BackendId, u32)> {
        let s = self.slot(hash | 1);
        if s.0 != hash | 1 {
            return None;
        }
        let (started, backend) = (s.1, s.2);
        s.0 = 0;
        u32::try_from(now_us.checked_sub(started)?).ok().map(|us| (backend, us))
    }
}

/// How long an automatic SYN proxy stays engaged before it looks again
/// whether the flood goes on.
const GUARD_HOLD_MS: u32 = 10_000;

/// The state of one VIP's automatic SYN proxy on one worker.
#[derive(Clone, Copy, Debug, Default)]
struct Guard {
    /// When it was engaged or last confirmed.
    since: Option<u32>,
    /// Cookies sent since then that no ACK returned.
    unanswered: u32,
}

impl Guard {
    /// Engaged from `threshold` half-open flows on; it stays engaged (its
    /// own cookies make no half-open flows) while at least `threshold`
    /// cookies per hold go unanswered.
    fn engaged(&mut self, now: u32, half_open: u32, threshold: u32) -> bool {
        if let Some(since) = self.since
            && now.wrapping_sub(since) >= GUARD_HOLD_MS
        {
            self.since = (self.unanswered >= threshold).then_some(now);
            self.unanswered = 0;
        }
        if self.since.is_none() && half_open >= threshold {
            self.since = Some(now);
            self.unanswered = 0;
        }
        self.since.is_some()
    }
}

/// One flow of a worker's table, as an operator lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowRow {
    /// Client to VIP.
    pub key: FlowKey,
    pub backend: BackendId,
    pub state: FlowState,
    /// Since its last packet.
    pub idle_ms: u32,
}

/// Why an engine cannot be built or take a service snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineError {
    /// `worker` is not below `workers`.
    NoSuchWorker { worker: u16, workers: u16 },
    /// The full-NAT source-port range cannot give every worker a port.
    SnatPorts { lo: u16, hi: u16, workers: u16 },
    /// The snapshot names more VIP or backend ids than the engine's
    /// preallocated tables hold.
    TooManyIds { vips: usize, backends: usize, max_vips: usize, max_backends: usize },
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::NoSuchWorker { worker, workers } => write!(f, "worker {worker} of {workers}: no such worker"),
            EngineError::SnatPorts { lo, hi, workers } => {
                write!(f, "snat ports {lo}-{hi}: need a non-empty range above 0 with a port for each of {workers} workers")
            }
            EngineError::TooManyIds { vips, backends, max_vips, max_backends } => {
                write!(f, "{vips} VIP and {backends} backend ids exceed this engine's limits ({max_vips} and {max_backends})")
            }
        }
    }
}

impl std::error::Error for EngineError {}

impl Engine {
    /// An engine with shared tables of its own (one worker).
    pub fn new(cfg: EngineConfig, services: Arc<Services>) -> Result<Engine, EngineError> {
        Self::with_shared(cfg, services, &Shared::new(&cfg))
    }

    /// An engine sharing `shared` with the other workers, which must use
    /// one clock (`now_ms` of `process`) for the sticky table.
    pub fn with_shared(cfg: EngineConfig, services: Arc<Services>, shared: &Shared) -> Result<Engine, EngineError> {
        if cfg.workers == 0 || cfg.worker >= cfg.workers {
            return Err(EngineError::NoSuchWorker { worker: cfg.worker, workers: cfg.workers });
        }
        let (lo, hi) = cfg.snat_ports;
        let span = (u32::from(hi.saturating_sub(lo)) + 1) / u32::from(cfg.workers);
        if lo == 0 || hi < lo || span == 0 {
            return Err(EngineError::SnatPorts { lo, hi, workers: cfg.workers });
        }
        let span = span as u16;
        let flows = Flows {
            table: ConnTable::new(cfg.table_capacity, cfg.timeouts),
            sticky: Arc::clone(&shared.sticky),
            neighbours: Arc::clone(&shared.neighbours),
            latencies: Arc::clone(&shared.latencies),
            readings: Arc::clone(&shared.readings),
            rates: vec![(0, 0); cfg.max_backends],
            rates_at: 0,
            handshakes: Handshakes::new(HANDSHAKE_SLOTS),
            handshake_us: vec![0; cfg.max_backends],
            now_us: 0,
            stats: Arc::new(Stats::new(cfg.max_vips, cfg.max_backends)),
            schedulers: Vec::new(),
            any_scheduler: false,
            ahead: PicksAhead::new(WARM_BATCH),
            counts: Counts {
                load: vec![Load::default(); cfg.max_backends],
                readings: Arc::clone(&shared.readings),
                worker: cfg.worker,
                half_open: vec![0; cfg.max_vips],
            },
            pool: Vec::new(),
            snat: SnatPorts::new(lo + cfg.worker * span, span, cfg.snat_reuse_ms),
            fragments: Fragments::new(cfg.fragments, cfg.fragment_ttl_ms),
            cookies: shared.cookies.clone(),
            splices: Vec::new(),
            early: EarlyData::default(),
            guards: vec![Guard::default(); cfg.max_vips],
            sync: SyncLog::new(&cfg),
            heads: vec![Head { parsed: Parsed::default(), parsing: Err(ParseError::NotIp), hash: 0 }; WARM_BATCH],
            cfg,
        };
        let mut engine = Engine { services: Arc::clone(&services), flows };
        engine.set_services(services)?;
        Ok(engine)
    }

    /// Switches to a new service snapshot. Established flows keep their
    /// backends as long as the ids still exist.
    pub fn set_services(&mut self, services: Arc<Services>) -> Result<(), EngineError> {
        let cfg = &self.flows.cfg;
        if services.vip_slots() > cfg.max_vips || services.backend_slots() > cfg.max_backends {
            return Err(EngineError::TooManyIds {
                vips: services.vip_slots(),
                backends: services.backend_slots(),
                max_vips: cfg.max_vips,
                max_backends: cfg.max_backends,
            });
        }
        self.flows.schedulers.resize_with(services.vip_slots(), || None);
        self.flows.pool.reserve(services.max_pool());
        let proxies = services.vips().any(|(_, v)| matches!(v.spec.mode, Mode::Nat { .. }) && v.spec.syn_proxy != SynProxy::Off);
        if proxies && self.flows.splices.is_empty() {
            self.flows.splices = vec![Splice::default(); self.flows.cfg.table_capacity];
        }
        self.flows.snat.set_addrs(services.snat_addrs());
        // A rebuild shares the tables of the pools that did not change.
        if services.vips().any(|(id, v)| self.services.vip(id).is_none_or(|old| !Arc::ptr_eq(&old.maglev, &v.maglev))) {
            self.flows.sync.placement_changed();
        }
        self.services = services;
        Ok(())
    }

    /// Installs (or with `None` removes) the scheduler of a VIP's new flows.
    pub fn set_scheduler(&mut self, vip: VipId, sched: Option<Box<dyn Scheduler>>) {
        if let Some(slot) = self.flows.schedulers.get_mut(usize::from(vip)) {
            *slot = sched;
        }
        self.flows.any_scheduler = self.flows.schedulers.iter().any(Option::is_some);
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.flows.stats
    }

    pub fn table(&self) -> &ConnTable<FlowValue> {
        &self.flows.table
    }

    /// Up to `limit` flows of `vip` in this worker's table (of clients at
    /// `client` only, if given), at `now_ms`. Walks the table: for an
    /// operator's question between batches, never the packet path.
    pub fn flows(&self, vip: VipId, client: Option<[u8; 16]>, now_ms: u32, limit: usize) -> Vec<FlowRow> {
        let table = &self.flows.table;
        (0..table.slots_used())
            .filter_map(|slot| Some((slot as Slot, table.live(slot as Slot)?)))
            .filter_map(|(slot, e)| match e.value {
                FlowValue::Forward { vip: v, backend, .. } if v == vip && client.is_none_or(|c| e.key().src == c) => {
                    Some(FlowRow { key: *e.key(), backend, state: e.state, idle_ms: now_ms.wrapping_sub(table.pair_seen(slot)) })
                }
                _ => None,
            })
            .take(limit)
            .collect()
    }

    /// This worker's established and half-open connections to a backend.
    pub fn load(&self, backend: BackendId) -> Load {
        self.flows.counts.load.get(usize::from(backend)).copied().unwrap_or_default()
    }

    /// Processes a batch: sets every packet's verdict and rewrites the
    /// frames to transmit. `now_ms` is a monotonic clock in milliseconds
    /// (wrapping); handshakes are timed at its resolution.
    pub fn process(&mut self, now_ms: u32, batch: &mut [Packet<'_>]) {
        self.process_us(u64::from(now_ms) * 1000, batch);
    }

    /// `process` with a monotonic clock in microseconds.
    pub fn process_us(&mut self, now_us: u64, batch: &mut [Packet<'_>]) {
        let now_ms = (now_us / 1000) as u32;
        let (services, flows) = (&*self.services, &mut self.flows);
        flows.now_us = now_us;
        for chunk in batch.chunks_mut(WARM_BATCH) {
            // First every frame's headers and flow hash, loading its index
            // bucket, then every flow's entry, so that the cache misses of
            // the whole chunk overlap instead of coming one per packet.
            let mut all = std::mem::take(&mut flows.heads);
            let heads = &mut all[..chunk.len()];
            for (pkt, head) in chunk.iter().zip(heads.iter_mut()) {
                head.parsing = parse_into(pkt.frame(), &mut head.parsed);
                if head.parsing.is_ok() {
                    head.hash = head.parsed.key.hash64();
                    flows.table.warm(head.hash);
                }
            }
            for h in heads.iter() {
                if h.parsing.is_ok() {
                    flows.table.warm_entry(h.hash);
                }
            }
            if flows.any_scheduler {
                flows.note_new_flows(services, heads);
            }
            for (pkt, head) in chunk.iter_mut().zip(heads.iter()) {
                pkt.verdict = flows.process_one(services, now_ms, pkt, head);
                match pkt.verdict {
                    Verdict::Pass => flows.stats.passed.inc(),
                    Verdict::Drop(r) => flows.stats.drops.count(r),
                    Verdict::Tx(_) | Verdict::Handoff(_) => {}
                }
                flows.settle_departures(now_ms);
            }
            flows.heads = all;
        }
        flows.ahead.clear();
        flows.table.expire(now_ms, flows.cfg.expire_budget);
        flows.settle_departures(now_ms);
        if now_ms.wrapping_sub(flows.rates_at) >= RATE_INTERVAL_MS {
            flows.measure_rates(services.backend_slots(), now_ms);
        }
        let (table, stats) = (&flows.table, &flows.stats);
        stats.connections.set(table.len() as u64);
        stats.evictions.set(table.evictions());
        stats.expirations.set(table.expirations());
    }
}

/// A worker's flows by backend and by VIP, as their entries come, change
/// state and go.
struct Counts {
    /// Connections per backend id, also published in the worker's row of
    /// the readings for every worker's schedulers.
    load: Vec<Load>,
    readings: Arc<Readings>,
    worker: u16,
    /// Half-open entries per VIP id.
    half_open: Vec<u32>,
}

impl Counts {
    /// Counts a flow of `vip` and `backend` in `state` in (`delta` 1) or
    /// out (-1).
    fn flow(&mut self, (vip, backend): (VipId, BackendId), state: FlowState, delta: i32) {
        if let Some(l) = self.load.get_mut(usize::from(backend)) {
            l.count(state, delta);
            self.readings.set_load(self.worker, backend, *l);
        }
        if state == FlowState::SynSeen
            && let Some(n) = self.half_open.get_mut(usize::from(vip))
        {
            *n = n.saturating_add_signed(delta);
        }
    }
}

impl Flows {
    /// Ends the timing of a NAT flow's handshake at its SYN-ACK, into its
    /// backend's smoothed handshake time.
    #[cold]
    fn time_handshake(&mut self, client: &FlowKey) {
        let Some((backend, us)) = self.handshakes.finish(client.hash64(), self.now_us) else { return };
        let Some(avg) = self.handshake_us.get_mut(usize::from(backend)) else { return };
        let us = us.max(1);
        *avg = if *avg == 0 { us } else { ((u64::from(*avg) * u64::from(HANDSHAKE_SMOOTHING - 1) + u64::from(us)) / u64::from(HANDSHAKE_SMOOTHING)) as u32 };
        self.readings.set_handshake(backend, (*avg).max(1), (self.now_us / 1000) as u32);
    }

    /// This worker's byte rate per backend since the last measure, into
    /// its smoothed rates in the readings.
    fn measure_rates(&mut self, backends: usize, now_ms: u32) {
        let elapsed = u64::from(now_ms.wrapping_sub(self.rates_at).max(1));
        self.rates_at = now_ms;
        for (b, (last, rate)) in self.rates.iter_mut().enumerate().take(backends) {
            let bytes = self.stats.backends[b].bytes.get();
            let sample = bytes.wrapping_sub(*last).saturating_mul(1000) / elapsed;
            *last = bytes;
            *rate = (*rate * (RATE_SMOOTHING - 1) + sample) / RATE_SMOOTHING;
            self.readings.set_rate(self.cfg.worker, b as BackendId, *rate);
        }
    }

    /// Forgets the connections of entries the table removed, and holds
    /// back the source ports of the full-NAT flows among them.
    #[inline]
    fn settle_departures(&mut self, now: u32) {
        if self.table.has_departed() {
            self.settle_departed(now);
        }
    }

    fn settle_departed(&mut self, now: u32) {
        for (key, value, state) in self.table.take_departed() {
            match value {
                FlowValue::Forward { vip, backend, .. } => self.counts.flow((vip, backend), state, -1),
                // The return key of a full-NAT flow is backend -> SNAT
                // address and port; an inline DNAT one (to the client) is
                // no SNAT address's, and ignored.
                FlowValue::Reverse { .. } => self.snat.ended(&key.dst, key.dst_port, backend_tag(&key.src, key.src_port), now),
            }
        }
    }

    /// Notes the chunk's frames that look like new flows of a VIP with a
    /// scheduler (a SYN or a UDP datagram without an entry), for
    /// `PicksAhead` to place together. Out of line: inlined into the
    /// chunk's loop, it cost every packet 9 instructions (callgrind).
    #[inline(never)]
    fn note_new_flows(&mut self, s: &Services, heads: &[Head]) {
        self.ahead.clear();
        for h in heads {
            let p = &h.parsed;
            if h.parsing.is_err() || p.fragment.is_some() || !(is_syn(p) || p.key.proto == IpProtocol::UDP) {
                continue;
            }
            if let Some(vip) = s.find_vip(&p.key)
                && matches!(self.schedulers.get(usize::from(vip)), Some(Some(_)))
                && self.table.find(&p.key, h.hash).is_none()
            {
                self.ahead.note(vip, (p.key, h.hash));
            }
        }
    }

    /// One frame, with what the first passes over its chunk found.
    fn process_one(&mut self, s: &Services, now: u32, pkt: &mut Packet, head: &Head) -> Verdict {
        // Replies and NAT return traffic leave by the interface a flow came
        // in on: it must be one the services describe.
        if usize::from(pkt.ingress) >= s.interfaces.len() {
            return Verdict::Drop(DropReason::UnknownInterface);
        }
        let p = match head.parsing {
            Ok(()) => &head.parsed,
            Err(ParseError::NotIp) => return Verdict::Pass,
            Err(ParseError::Truncated) => return Verdict::Drop(DropReason::Truncated),
            Err(ParseError::Malformed) => return Verdict::Drop(DropReason::Malformed),
        };
        match p.fragment {
            None => self.flow_packet(s, now, pkt, p, head.hash),
            Some(f) => self.fragment(s, now, pkt, p, head.hash, f),
        }
    }

    /// An IP fragment: the first is placed like any packet and recorded
    /// for the later ones, which follow it, unless a later one came first
    /// and was placed: then the first follows that one, and opens its flow
    /// there.
    #[cold]
    fn fragment(&mut self, s: &Services, now: u32, pkt: &mut Packet, p: &Parsed, hash: u64, f: Fragment) -> Verdict {
        if !f.first {
            return self.later_fragment(s, now, pkt, p, f.id);
        }
        let verdict = match self.fragments.placement(&p.key, f.id, now) {
            Some(Placement::Backend(vip_id, backend)) if s.find_vip(&p.key) == Some(vip_id) && !self.table.contains(&p.key, hash, now) => match s.vip(vip_id) {
                Some(vip) => match vip.index_of(backend) {
                    Some(at) => self.open_flow(s, now, pkt, p, hash, (vip_id, vip), at),
                    // Removed from the VIP by a reload since: scheduled afresh.
                    None => self.flow_packet(s, now, pkt, p, hash),
                },
                None => self.vip_drop(vip_id, DropReason::Fragment),
            },
            _ => self.flow_packet(s, now, pkt, p, hash),
        };
        if let Verdict::Tx(_) = verdict {
            self.fragments.record(&p.key, f.id, Placement::Flow(p.key), now);
        }
        verdict
    }

    /// A packet with ports: its flow's, or a new flow's.
    #[inline(always)]
    fn flow_packet(&mut self, s: &Services, now: u32, pkt: &mut Packet, p: &Parsed, hash: u64) -> Verdict {
        if is_icmp_error(pkt, p) {
            return self.icmp_error(s, now, pkt, p);
        }
        if let Some(slot) = self.table.find(&p.key, hash)
            && self.table.refresh(slot, now)
        {
            match self.table.entry(slot).value {
                FlowValue::Forward { vip, backend, .. } if self.opens_afresh(s, p, slot, (vip, backend)) => {
                    // A client reusing its port (or a spoofed SYN before
                    // it): a new connection, scheduled, NAT'd and with a
                    // reply path of its own, as IPVS's conn_reuse_mode.
                    self.table.remove(slot);
                }
                FlowValue::Forward { vip, backend, at, spliced } => {
                    if let Some(v) = self.established(s, pkt, p, hash, slot, (vip, backend, at), spliced) {
                        return v;
                    }
                    // The VIP or backend was removed by a reload: the
                    // entry is stale, so schedule the flow afresh.
                    self.table.remove(slot);
                }
                FlowValue::Reverse { client_mac, iface } => return self.reverse(s, pkt, p, slot, client_mac, iface),
            }
        }
        match s.find_vip(&p.key) {
            Some(vip) => self.new_flow(s, now, pkt, p, hash, vip),
            None if s.is_return(&p.key) => self.foreign_return(s, &p.key),
            None => Verdict::Pass,
        }
    }

    /// A fragment after the first goes where its datagram's first fragment
    /// went, rewritten the same way (its addresses only: it has no ports),
    /// or where an earlier one of its later fragments was placed.
    fn later_fragment(&mut self, s: &Services, now: u32, pkt: &mut Packet, p: &Parsed, id: u32) -> Verdict {
        let flow = match self.fragments.placement(&p.key, id, now) {
            Some(Placement::Flow(flow)) => flow,
            Some(Placement::Backend(vip, backend)) => return self.placed_fragment(s, pkt, p, (vip, backend)),
            None => return self.unplaced_fragment(s, now, pkt, p, id),
        };
        let hash = flow.hash64();
        let Some(slot) = self.table.lookup(&flow, hash, now) else {
            return self.orphan_fragment(s, p);
        };
        let verdict = match self.table.entry(slot).value {
            FlowValue::Forward { vip, backend, .. } => match (s.vip(vip), s.backend(backend)) {
                (Some(v), Some(b)) => self.send_to_backend(s, pkt, p, hash, Some(slot), Target { vip_id: vip, vip: v, backend_id: backend, b }),
                _ => self.for_vip_addr(s, p, DropReason::Fragment),
            },
            FlowValue::Reverse { client_mac, iface } => self.reverse(s, pkt, p, slot, client_mac, iface),
        };
        if let Verdict::Tx(_) = verdict {
            self.stats.fragments_followed.inc();
        }
        verdict
    }

    /// A later fragment seen before its datagram's first: placed by its
    /// addresses alone, by the VIP's Maglev over its 3-tuple hash, and
    /// recorded so that the rest of the datagram, the first fragment
    /// included, follows. Not for full-NAT VIPs: their source address and
    /// port are chosen for the first fragment's flow, so such a fragment
    /// is dropped (the sender's datagram is lost, as with any loss).
    fn unplaced_fragment(&mut self, s: &Services, now: u32, pkt: &mut Packet, p: &Parsed, id: u32) -> Verdict {
        let Some((vip_id, vip)) = s.vip_for_portless(&p.key).and_then(|id| Some((id, s.vip(id)?))) else {
            return self.orphan_fragment(s, p);
        };
        if !vip.snat.is_empty() {
            return self.vip_drop(vip_id, DropReason::Fragment);
        }
        let Some(idx) = vip.maglev.lookup(p.key.hash64()) else { return self.vip_drop(vip_id, DropReason::NoBackend) };
        let backend = vip.spec.backends[idx];
        self.fragments.record(&p.key, id, Placement::Backend(vip_id, backend), now);
        self.placed_fragment(s, pkt, p, (vip_id, backend))
    }

    /// A later fragment sent to the backend its datagram was placed on.
    fn placed_fragment(&mut self, s: &Services, pkt: &mut Packet, p: &Parsed, (vip_id, backend_id): (VipId, BackendId)) -> Verdict {
        let (Some(vip), Some(b)) = (s.vip(vip_id), s.backend(backend_id)) else { return self.vip_drop(vip_id, DropReason::Fragment) };
        let verdict = self.send_to_backend(s, pkt, p, p.key.hash64(), None, Target { vip_id, vip, backend_id, b });
        if let Verdict::Tx(_) = verdict {
            self.stats.fragments_placed.inc();
        }
        verdict
    }

    /// A later fragment this worker cannot place. NAT return traffic may be
    /// another worker's (its first fragment, with the full-NAT port, went
    /// to that port's owner): the others are asked in turn.
    fn orphan_fragment(&self, s: &Services, p: &Parsed) -> Verdict {
        if self.cfg.workers > 1 && s.may_be_return_fragment(&p.key) {
            return Verdict::Handoff(None);
        }
        self.for_vip_addr(s, p, DropReason::Fragment)
    }

    /// Whether a client packet on an existing flow opens a new connection
    /// instead: a SYN on a closing entry (the client reuses its port), on
    /// an entry whose backend is down or gone, or, in nat modes, on one not
    /// yet established: there the entry holds a reply path and a source
    /// port that a forged SYN may have set up. Otherwise a SYN is a
    /// retransmission and keeps the entry: in dsr and tunnel modes a
    /// retransmitted SYN must reach the backend that may have answered the
    /// first (the balancer never sees its SYN-ACK).
    #[inline(always)]
    fn opens_afresh(&self, s: &Services, p: &Parsed, slot: Slot, (vip, backend): (VipId, BackendId)) -> bool {
        if !is_syn(p) {
            return false;
        }
        let nat = s.vip(vip).is_some_and(|v| matches!(v.spec.mode, Mode::Nat { .. }));
        match self.table.entry(slot).state {
            FlowState::Closing => true,
            FlowState::SynSeen if nat => true,
            _ => !s.backend(backend).is_some_and(|b| b.spec.up),
        }
    }

    /// Return traffic without state here: with one worker there is no one
    /// else to ask; with several, the owner of a full-NAT source port is
    /// known by its range, an inline DNAT flow's owner is not.
    fn foreign_return(&self, s: &Services, key: &FlowKey) -> Verdict {
        if self.cfg.workers == 1 {
            return Verdict::Drop(DropReason::NoState);
        }
        let (lo, _) = self.cfg.snat_ports;
        let owner = s.is_to_snat(key).then(|| key.dst_port.checked_sub(lo).map(|off| off / self.snat.span())).flatten().filter(|&w| w < self.cfg.workers);
        match owner {
            Some(w) if w == self.cfg.worker => Verdict::Drop(DropReason::NoState),
            owner => Verdict::Handoff(owner),
        }
    }

    /// Drops a frame counted against the VIP whose address it is for, or
    /// passes it to the kernel if it is for no VIP.
    fn for_vip_addr(&self, s: &Services, p: &Parsed, reason: DropReason) -> Verdict {
        match s.vip_for_addr(&p.key.dst) {
            Some(vip) => self.vip_drop(vip, reason),
            None => Verdict::Pass,
        }
    }

    /// An established flow's packet. Inlined, as are `advance_state` and
    /// `send_to_backend` here: their calls, with the registers each saved
    /// and restored, were a tenth of an established packet's instructions.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn established(
        &mut self,
        s: &Services,
        pkt: &mut Packet,
        p: &Parsed,
        hash: u64,
        slot: Slot,
        (vip, backend, at): (VipId, BackendId, u16),
        spliced: bool,
    ) -> Option<Verdict> {
        let v = s.vip(vip)?;
        let b = s.backend(backend).filter(|_| v.has_backend_at(backend, at))?;
        if !b.spec.up && v.spec.reset_on_down && p.key.proto == IpProtocol::TCP {
            return Some(self.reset(s, pkt, p, slot, (vip, backend)));
        }
        let target = Target { vip_id: vip, vip: v, backend_id: backend, b };
        if spliced {
            return Some(self.spliced_established(s, pkt, p, hash, slot, target));
        }
        self.advance_state(slot, p.tcp_flags, true);
        Some(self.send_to_backend(s, pkt, p, hash, Some(slot), target))
    }

    /// A client segment of a flow the SYN proxy opened: translated, or,
    /// before the backend has answered, the SYN again.
    #[cold]
    #[inline(never)]
    fn spliced_established(&mut self, s: &Services, pkt: &mut Packet, p: &Parsed, hash: u64, slot: Slot, target: Target) -> Verdict {
        if self.splices[slot as usize].pending {
            if p.tcp_flags & tcp::RST != 0 {
                self.table.remove(slot);
                return self.vip_drop(target.vip_id, DropReason::NoState);
            }
            self.early.keep(&mut self.splices[slot as usize], slot, pkt.frame(), p);
            return self.syn_to_backend(s, pkt, p, hash, slot, target);
        }
        self.advance_state(slot, p.tcp_flags, true);
        let verdict = self.send_to_backend(s, pkt, p, hash, Some(slot), target);
        if let Verdict::Tx(_) = verdict {
            self.splices[slot as usize].to_backend(pkt.frame_mut(), p);
        }
        verdict
    }

    /// A client packet of a flow whose backend is down, on a VIP that
    /// resets them: the flow goes and the client gets a RST instead.
    fn reset(&mut self, s: &Services, pkt: &mut Packet, p: &Parsed, slot: Slot, (vip, backend): (VipId, BackendId)) -> Verdict {
        self.table.remove(slot);
        self.stats.vips[usize::from(vip)].resets.inc();
        self.stats.backends[usize::from(backend)].resets.inc();
        if p.tcp_flags & tcp::RST != 0 {
            return self.vip_drop(vip, DropReason::BackendDown);
        }
        match reset::tcp_reset(pkt, p, s.interfaces[usize::from(pkt.ingress)].mac) {
            Ok(()) => Verdict::Tx(pkt.ingress),
            Err(r) => self.vip_drop(vip, r),
        }
    }

    /// A packet for a VIP without a table entry. Everything that would
    /// drop it is checked before any state is made (an entry, a full-NAT
    /// port, a sticky choice), and a drop on the way out removes what was
    /// made: a dropped frame leaves nothing behind.
    fn new_flow(&mut self, s: &Services, now: u32, pkt: &mut Packet, p: &Parsed, hash: u64, vip_id: VipId) -> Verdict {
        let Some(vip) = s.vip(vip_id) else { return Verdict::Pass };
        let tcp = p.key.proto == IpProtocol::TCP;
        if tcp && p.tcp_flags & tcp::SYN != 0 && p.tcp_flags & (tcp::FIN | tcp::RST) != 0 {
            return self.vip_drop(vip_id, DropReason::InvalidFlags);
        }
        let mid_stream = tcp && !is_syn(p);
        if let Mode::Nat { .. } = vip.spec.mode {
            // A NAT flow is carried only where its state is (its reply
            // path and source port): a segment without state here is
            // stray or forged, unless it returns a SYN cookie, or, with
            // sync, another worker holds its flow. A flow a peer synced
            // lives in the worker it had there, and its client's
            // segments need not reach the same queue here (another NIC's
            // RSS key): every worker is asked before it is dropped.
            if mid_stream {
                if vip.spec.syn_proxy != SynProxy::Off
                    && p.tcp_flags & (tcp::ACK | tcp::RST | tcp::FIN) == tcp::ACK
                    && let Some(splice) = self.cookies.accept(pkt.frame(), p, now)
                {
                    return self.proxied_flow(s, now, pkt, p, hash, vip_id, vip, splice);
                }
                if self.cfg.sync && self.cfg.workers > 1 && !pkt.handed_round {
                    return Verdict::Handoff(None);
                }
                return self.vip_drop(vip_id, DropReason::NoState);
            }
            if tcp && self.proxy_engaged(vip_id, vip, now) {
                return self.answer_syn(s, now, pkt, p, vip_id);
            }
            if p.ttl <= 1 {
                return self.vip_drop(vip_id, DropReason::TtlExceeded);
            }
        }
        if is_syn(p)
            && !matches!(vip.spec.mode, Mode::Nat { .. })
            && self.counts.half_open.get(usize::from(vip_id)).is_some_and(|&n| n >= self.cfg.half_open_per_vip)
        {
            // A SYN flood, or a crowd: past the cap, SYNs of a dsr or
            // tunnel VIP go where the client's next segment, without an
            // entry, will go too, and make none, so the flood neither
            // fills the table nor evicts established flows.
            self.stats.syns_without_state.inc();
            return self.forward_without_state(s, now, pkt, p, hash, vip_id, vip);
        }
        let Some(idx) = self.pick(s, now, vip_id, vip, &p.key, hash, mid_stream) else {
            self.stats.vip_drops[usize::from(vip_id)].count(DropReason::NoBackend);
            return Verdict::Drop(DropReason::NoBackend);
        };
        self.open_flow(s, now, pkt, p, hash, (vip_id, vip), idx)
    }

    /// Opens a flow of `vip` to its backend at `at` and forwards its first
    /// packet.
    #[allow(clippy::too_many_arguments)]
    fn open_flow(&mut self, s: &Services, now: u32, pkt: &mut Packet, p: &Parsed, hash: u64, (vip_id, vip): (VipId, &Vip), at: usize) -> Verdict {
        let backend_id = vip.spec.backends[at];
        let Some(b) = s.backend(backend_id) else { return Verdict::Drop(DropReason::NoBackend) };
        if let Mode::Tunnel { encap, .. } = vip.spec.mode
            && let Some(inner_mtu) = tunnel_overflow(encap, p, s.interfaces[usize::from(b.spec.iface)].mtu)
        {
            return self.answer_too_big(s, pkt, p, vip_id, inner_mtu);
        }
        let state = initial_state(&p.key, p.tcp_flags);
        let slot = self.table.insert(p.key, hash, state, FlowValue::Forward { vip: vip_id, backend: backend_id, at: at as u16, spliced: false }, now);
        if let Mode::Nat { .. } = vip.spec.mode
            && let Err(reason) = self.add_reverse(now, pkt, p, slot, vip, b, state)
        {
            self.table.remove(slot);
            self.stats.vip_drops[usize::from(vip_id)].count(reason);
            return Verdict::Drop(reason);
        }
        self.counts.flow((vip_id, backend_id), state, 1);
        let verdict = self.send_to_backend(s, pkt, p, hash, Some(slot), Target { vip_id, vip, backend_id, b });
        if let Verdict::Tx(_) = verdict {
            self.flow_opened(slot, (&p.key, hash), (vip_id, vip), (backend_id, b), state);
            self.stats.vips[usize::from(vip_id)].new_flows.inc();
            self.stats.backends[usize::from(backend_id)].new_flows.inc();
            if state == FlowState::SynSeen && matches!(vip.spec.mode, Mode::Nat { .. }) {
                self.handshakes.start(hash, backend_id, self.now_us);
            }
        } else {
            // Dropped on the way out: no flow was opened. The departure
            // log takes the load back.
            self.table.remove(slot);
        }
        verdict
    }

    /// Whether a nat VIP's SYNs are answered with cookies now.
    fn proxy_engaged(&mut self, vip_id: VipId, vip: &Vip, now: u32) -> bool {
        match vip.spec.syn_proxy {
            SynProxy::Off => false,
            SynProxy::Always => true,
            SynProxy::Auto => {
                let half_open = self.counts.half_open.get(usize::from(vip_id)).copied().unwrap_or(0);
                self.guards.get_mut(usize::from(vip_id)).is_some_and(|g| g.engaged(now, half_open, self.cfg.syn_proxy_above))
            }
        }
    }

    /// A client's SYN answered with a SYN cookie: no state, no backend.
    fn answer_syn(&mut self, s: &Services, now: u32, pkt: &mut Packet, p: &Parsed, vip_id: VipId) -> Verdict {
        let iface = s.interfaces[usize::from(pkt.ingress)];
        let client_mac = self.client_mac(pkt, p);
        if let Err(r) = self.cookies.answer_syn(pkt, p, now, iface.mtu, (iface.mac, client_mac)) {
            return self.vip_drop(vip_id, r);
        }
        self.stats.syn_cookies_sent.inc();
        if let Some(g) = self.guards.get_mut(usize::from(vip_id)) {
            g.unanswered = g.unanswered.saturating_add(1);
        }
        Verdict::Tx(pkt.ingress)
    }

    /// A client that returned its SYN cookie: its flow is scheduled and
    /// made as any new NAT flow, and its ACK becomes the SYN that opens the
    /// backend connection.
    #[allow(clippy::too_many_arguments)]
    fn proxied_flow(&mut self, s: &Services, now: u32, pkt: &mut Packet, p: &Parsed, hash: u64, vip_id: VipId, vip: &Vip, splice: Splice) -> Verdict {
        self.stats.syn_cookies_accepted.inc();
        if let Some(g) = self.guards.get_mut(usize::from(vip_id)) {
            g.unanswered = g.unanswered.saturating_sub(1);
        }
        let Some(idx) = self.pick(s, now, vip_id, vip, &p.key, hash, false) else {
            return self.vip_drop(vip_id, DropReason::NoBackend);
        };
        let backend_id = vip.spec.backends[idx];
        let Some(b) = s.backend(backend_id) else { return self.vip_drop(vip_id, DropReason::NoBackend) };
        let state = FlowState::SynSeen;
        let slot = self.table.insert(p.key, hash, state, FlowValue::Forward { vip: vip_id, backend: backend_id, at: idx as u16, spliced: true }, now);
        if let Err(reason) = self.add_reverse(now, pkt, p, slot, vip, b, state) {
            self.table.remove(slot);
            return self.vip_drop(vip_id, reason);
        }
        self.counts.flow((vip_id, backend_id), state, 1);
        self.splices[slot as usize] = splice;
        self.early.keep(&mut self.splices[slot as usize], slot, pkt.frame(), p);
        let verdict = self.syn_to_backend(s, pkt, p, hash, slot, Target { vip_id, vip, backend_id, b });
        if let Verdict::Tx(_) = verdict {
            self.stats.vips[usize::from(vip_id)].new_flows.inc();
            self.stats.backends[usize::from(backend_id)].new_flows.inc();
            self.handshakes.start(hash, backend_id, self.now_us);
        } else {
            self.table.remove(slot);
        }
        verdict
    }

    /// A client segment of a proxied flow whose backend has not answered
    /// yet becomes (again) the SYN that opens the backend connection.
    fn syn_to_backend(&mut self, s: &Services, pkt: &mut Packet, p: &Parsed, hash: u64, slot: Slot, t: Target) -> Verdict {
        match self.splices[slot as usize].backend_syn(pkt, p) {
            Ok(syn) => self.send_to_backend(s, pkt, &syn, hash, Some(slot), t),
            Err(r) => self.vip_drop(t.vip_id, r),
        }
    }

    /// Where replies to a client go: the kernel's neighbour entry for it,
    /// else the frame's own source MAC (off-link clients arrive from their
    /// router, whose MAC that is).
    fn client_mac(&self, pkt: &Packet, p: &Parsed) -> Mac {
        let frame = pkt.frame();
        self.neighbours.get(&p.key.src).unwrap_or([frame[6], frame[7], frame[8], frame[9], frame[10], frame[11]])
    }

    /// A segment of a dsr or tunnel VIP forwarded without an entry, to
    /// the backend a segment without state goes to (Maglev, not the
    /// scheduler), so that the rest of its flow follows.
    #[cold]
    #[allow(clippy::too_many_arguments)]
    fn forward_without_state(&mut self, s: &Services, now: u32, pkt: &mut Packet, p: &Parsed, hash: u64, vip_id: VipId, vip: &Vip) -> Verdict {
        let Some(idx) = self.pick(s, now, vip_id, vip, &p.key, hash, true) else {
            return self.vip_drop(vip_id, DropReason::NoBackend);
        };
        let backend_id = vip.spec.backends[idx];
        let Some(b) = s.backend(backend_id) else { return self.vip_drop(vip_id, DropReason::NoBackend) };
        self.send_to_backend(s, pkt, p, hash, None, Target { vip_id, vip, backend_id, b })
    }

    /// The backend index for a new flow.
    ///
    /// With source-IP persistence, a client's backend is the one it used
    /// last, while that one is up (draining or not: a draining backend
    /// finishes its sessions, as in HAProxy and IPVS) and the client was
    /// not idle for longer than the timeout. Otherwise the flow is
    /// scheduled with the client address's hash in place of the flow's,
    /// so Maglev's first choice is the same on every worker and node, and
    /// the choice is recorded: a client moved off a failed backend stays
    /// where it moved, also after that one comes back, until idle for the
    /// timeout.
    #[allow(clippy::too_many_arguments)]
    fn pick(&mut self, s: &Services, now: u32, vip_id: VipId, vip: &Vip, key: &FlowKey, hash: u64, mid_stream: bool) -> Option<usize> {
        let Some(timeout) = vip.spec.persistence_ms else {
            return self.schedule(s, now, (vip_id, vip), key, hash, mid_stream);
        };
        let src_hash = key.src_hash64();
        let client = Client::new(vip_id, src_hash);
        let last = self.sticky.lookup(client, now, timeout);
        if let Some(id) = last
            && let Some(i) = vip.index_of(id)
            && s.backend(id).is_some_and(|b| b.spec.up)
        {
            return Some(i);
        }
        let i = self.schedule(s, now, (vip_id, vip), key, src_hash, mid_stream)?;
        if let Some(id) = last {
            self.stats.vips[usize::from(vip_id)].moved_clients.inc();
            if let Some(b) = self.stats.backends.get(usize::from(id)) {
                b.moved_clients.inc();
            }
        }
        self.sticky.record(client, vip.spec.backends[i], now);
        Some(i)
    }

    /// The VIP's scheduler, falling back to Maglev. A TCP packet that does
    /// not open a connection belongs to a flow another node (or a lost
    /// entry) started: only Maglev gives the answer every node agrees on.
    fn schedule(&mut self, s: &Services, now: u32, (vip_id, vip): (VipId, &Vip), key: &FlowKey, hash: u64, mid_stream: bool) -> Option<usize> {
        if !mid_stream && let Some(Some(sched)) = self.schedulers.get_mut(usize::from(vip_id)) {
            // The later new flows of a chunk were placed with the first:
            // they need no pool.
            let answer = match self.ahead.answered(vip_id, (key, hash)) {
                Some(answer) => answer,
                None => {
                    self.pool.clear();
                    // Where return traffic passes the balancer, the
                    // handshakes it times are the freshest response times.
                    let nat = matches!(vip.spec.mode, Mode::Nat { .. });
                    for &id in &vip.spec.backends {
                        let (b, load) = (s.backend(id), self.readings.load(id));
                        let handshake = if nat { self.readings.handshake(id, now) } else { None };
                        self.pool.push(BackendState {
                            id: b.map_or(0, |b| b.ident),
                            weight: b.map_or(0, |b| b.spec.weight),
                            up: b.is_some_and(|b| b.spec.up),
                            active: load.active,
                            pending: load.pending,
                            rtt_us: handshake.unwrap_or_else(|| self.latencies.get(id)),
                            bytes_per_sec: self.readings.rate(id),
                        });
                    }
                    match self.ahead.ask(vip_id, (key, hash), sched.as_mut(), &mut self.pool) {
                        Some(answer) => answer,
                        None => sched.pick(key, hash, &self.pool),
                    }
                }
            };
            // As the pool would have it: up and not drained.
            let usable = |i: usize| vip.spec.backends.get(i).and_then(|&id| s.backend(id)).is_some_and(|b| b.spec.effective_weight() > 0);
            match answer {
                Some(i) if usable(i) => return Some(i),
                Some(_) => self.stats.scheduler_faults.inc(),
                None => {}
            }
        }
        vip.maglev.lookup(hash)
    }

    /// Creates the reverse entry of a NAT flow: the key return traffic
    /// will carry, after allocating a source port for full-NAT.
    #[allow(clippy::too_many_arguments)]
    fn add_reverse(&mut self, now: u32, pkt: &Packet, p: &Parsed, fwd: Slot, vip: &Vip, b: &BackendEntry, state: FlowState) -> Result<(), DropReason> {
        let bport = b.port_for(p.key.dst_port);
        let mut rkey = FlowKey { src: b.addr, dst: p.key.src, src_port: bport, dst_port: p.key.src_port, proto: p.key.proto };
        if !vip.snat.is_empty() {
            (rkey.dst, rkey.dst_port) = self.alloc_snat(&vip.snat_new, &rkey, now).ok_or(DropReason::SnatExhausted)?;
        }
        let rhash = rkey.hash64();
        // DNAT cannot tell apart one client port reaching the same backend
        // through two VIPs; the newer flow wins.
        if let Some(old) = self.table.lookup(&rkey, rhash, now) {
            self.table.remove(old);
        }
        let client_mac = self.client_mac(pkt, p);
        let rev = self.table.insert(rkey, rhash, state, FlowValue::Reverse { client_mac, iface: pkt.ingress }, now);
        self.table.link_peers(fwd, rev);
        Ok(())
    }

    /// A source (one of the VIP's SNAT addresses, a port of this
    /// worker's share) whose return key is free and that is not held back
    /// from this backend.
    fn alloc_snat(&mut self, addrs: &[u16], rkey: &FlowKey, now: u32) -> Option<([u8; 16], u16)> {
        // A flow this very packet ended (its SYN opened the tuple afresh)
        // holds its source back too.
        self.settle_departures(now);
        let backend = backend_tag(&rkey.src, rkey.src_port);
        let table = &self.table;
        self.snat.next_for(addrs, backend, now, SNAT_PROBES).find(|&(dst, dst_port)| {
            let key = FlowKey { dst, dst_port, ..*rkey };
            !table.contains(&key, key.hash64(), now)
        })
    }

    /// Rewrites a client packet for its backend per the VIP's mode.
    /// `slot`: the flow's entry, which a full-NAT flow must have (its
    /// source port is its peer's); dsr and tunnel may forward without one.
    #[inline(always)]
    fn send_to_backend(&mut self, s: &Services, pkt: &mut Packet, p: &Parsed, hash: u64, slot: Option<Slot>, t: Target) -> Verdict {
        let Target { vip_id, vip, backend_id, b } = t;
        let out = s.interfaces[usize::from(b.spec.iface)];
        let frame_len = pkt.len;
        match vip.spec.mode {
            Mode::Nat { .. } => {
                let frame = pkt.frame_mut();
                if !rewrite::decrement_ttl(frame, p) {
                    return self.vip_drop(vip_id, DropReason::TtlExceeded);
                }
                if !vip.snat.is_empty() {
                    // The flow's source is its return key's destination.
                    let Some(slot) = slot else { return self.vip_drop(vip_id, DropReason::NoState) };
                    let peer = self.table.entry(slot).peer();
                    let source = self.table.entry(peer).key();
                    rewrite::set_endpoint(frame, p, End::Src, &source.dst, source.dst_port);
                }
                rewrite::set_endpoint(frame, p, End::Dst, &b.addr, b.port_for(p.key.dst_port));
            }
            Mode::Dsr => {}
            Mode::Tunnel { encap, source, source_prefix } => {
                if let Some(inner_mtu) = tunnel_overflow(encap, p, out.mtu) {
                    return self.answer_too_big(s, pkt, p, vip_id, inner_mtu);
                }
                let src = tunnel::outer_source(&crate::flow::key::addr16(source), source_prefix, p.v6, hash);
                if let Err(r) = tunnel::encapsulate(pkt, p, encap, &src, &b.addr, hash) {
                    return self.vip_drop(vip_id, r);
                }
            }
        }
        rewrite::set_macs(pkt.frame_mut(), out.mac, b.spec.next_hop);
        self.stats.vips[usize::from(vip_id)].packet(frame_len);
        self.stats.backends[usize::from(backend_id)].packet(frame_len);
        Verdict::Tx(b.spec.iface)
    }

    /// A tunnel-mode packet too big once encapsulated is answered with
    /// fragmentation-needed / packet-too-big in its place.
    #[cold]
    fn answer_too_big(&self, s: &Services, pkt: &mut Packet, p: &Parsed, vip_id: VipId, inner_mtu: u16) -> Verdict {
        let ingress_mac = s.interfaces[usize::from(pkt.ingress)].mac;
        match icmp::too_big(pkt, p, inner_mtu, ingress_mac) {
            Ok(()) => Verdict::Tx(pkt.ingress),
            Err(r) => self.vip_drop(vip_id, r),
        }
    }

    /// NAT return traffic: restore the VIP as source (and the client as
    /// destination for full-NAT), send it towards the client.
    fn reverse(&mut self, s: &Services, pkt: &mut Packet, p: &Parsed, slot: Slot, client_mac: Mac, iface: IfIndex) -> Verdict {
        let fwd = self.table.entry(slot).peer();
        if fwd == NO_PEER {
            return Verdict::Drop(DropReason::NoState);
        }
        let FlowValue::Forward { vip: vip_id, backend, spliced, .. } = self.table.entry(fwd).value else {
            return Verdict::Drop(DropReason::NoState);
        };
        if spliced && let Some(v) = self.spliced_reply(s, pkt, p, fwd, (vip_id, backend)) {
            return v;
        }
        let client = *self.table.entry(fwd).key();
        if p.tcp_flags & (tcp::SYN | tcp::ACK) == tcp::SYN | tcp::ACK {
            self.time_handshake(&client);
        }
        self.advance_state(slot, p.tcp_flags, false);
        let Some(vip) = s.vip(vip_id) else { return Verdict::Drop(DropReason::NoState) };
        let snat = !vip.snat.is_empty();
        let frame_len = pkt.len;
        let frame = pkt.frame_mut();
        if !rewrite::decrement_ttl(frame, p) {
            return self.vip_drop(vip_id, DropReason::TtlExceeded);
        }
        rewrite::set_endpoint(frame, p, End::Src, &client.dst, client.dst_port);
        if snat {
            rewrite::set_endpoint(frame, p, End::Dst, &client.src, client.src_port);
        }
        let Some(out) = s.interfaces.get(usize::from(iface)) else {
            return self.vip_drop(vip_id, DropReason::UnknownInterface);
        };
        rewrite::set_macs(frame, out.mac, client_mac);
        if spliced {
            self.splices[fwd as usize].to_client(frame, p);
        }
        self.stats.vips[usize::from(vip_id)].packet(frame_len);
        self.stats.backends[usize::from(backend)].packet(frame_len);
        Verdict::Tx(iface)
    }

    /// A backend's segment of a proxied flow that is not simply relayed:
    /// its SYN-ACK, answered by the balancer (the client has had its own),
    /// and anything before it. `None`: relay it, translated.
    #[cold]
    #[inline(never)]
    fn spliced_reply(&mut self, s: &Services, pkt: &mut Packet, p: &Parsed, fwd: Slot, (vip_id, backend): (VipId, BackendId)) -> Option<Verdict> {
        let splice = &mut self.splices[fwd as usize];
        if p.tcp_flags & tcp::SYN != 0 {
            let Some(b) = s.backend(backend) else { return Some(self.vip_drop(vip_id, DropReason::NoState)) };
            let early = self.early.take(splice, fwd);
            return Some(match splice.complete(pkt, p, early) {
                // Not this flow's: a client that reused its port may have
                // opened the new flow on another worker (queues that do
                // not hash by the 5-tuple), while this one still holds the
                // old, closing entry.
                None if self.cfg.workers > 1 => Verdict::Handoff(None),
                None => self.vip_drop(vip_id, DropReason::NoState),
                Some(Err(r)) => self.vip_drop(vip_id, r),
                Some(Ok(())) => {
                    let client = *self.table.entry(fwd).key();
                    self.time_handshake(&client);
                    self.advance_state(fwd, tcp::ACK, true);
                    let out = s.interfaces[usize::from(b.spec.iface)];
                    rewrite::set_macs(pkt.frame_mut(), out.mac, b.spec.next_hop);
                    Verdict::Tx(b.spec.iface)
                }
            });
        }
        if !splice.pending {
            return None;
        }
        if p.tcp_flags & tcp::RST == 0 {
            return Some(self.vip_drop(vip_id, DropReason::NoState));
        }
        // Refused: the client learns it by a RST it accepts, which then
        // closes the flow as any RST.
        splice.refused(pkt.frame_mut(), p);
        splice.pending = false;
        None
    }

    /// Moves a flow's TCP state on the flags of one packet; both halves of
    /// a NAT pair share it.
    #[inline(always)]
    fn advance_state(&mut self, slot: Slot, flags: u8, from_client: bool) {
        let e = self.table.entry(slot);
        let (state, peer) = (e.state, e.peer());
        let next = next_state(state, flags, from_client);
        if next == state {
            return;
        }
        self.table.entry_mut(slot).state = next;
        if peer != NO_PEER {
            self.table.entry_mut(peer).state = next;
        }
        let fwd = if let FlowValue::Forward { .. } = self.table.entry(slot).value { slot } else { peer };
        if fwd != NO_PEER
            && let FlowValue::Forward { vip, backend, .. } = self.table.entry(fwd).value
        {
            self.counts.flow((vip, backend), state, -1);
            self.counts.flow((vip, backend), next, 1);
            self.sync.changed(fwd);
        }
    }

    /// An ICMP error sent to a VIP about a packet the VIP sent (a NAT'd
    /// reply, or a DSR backend's reply): deliver it to that flow's backend,
    /// which is the one that needs it (path MTU discovery, unreachables).
    fn icmp_error(&mut self, s: &Services, now: u32, pkt: &mut Packet, p: &Parsed) -> Verdict {
        if s.vip_for_addr(&p.key.dst).is_none() {
            return Verdict::Pass;
        }
        let Some(inner) = parse_quoted(pkt.frame(), p.l4 + wicmp::ICMP_HLEN, p.end) else {
            return Verdict::Drop(DropReason::IcmpNoFlow);
        };
        let flow = inner.key.reversed();
        let Some(slot) = self.table.lookup(&flow, flow.hash64(), now) else {
            return Verdict::Drop(DropReason::IcmpNoFlow);
        };
        let FlowValue::Forward { vip: vip_id, backend, .. } = self.table.entry(slot).value else {
            return Verdict::Drop(DropReason::IcmpNoFlow);
        };
        let (Some(vip), Some(b)) = (s.vip(vip_id), s.backend(backend)) else {
            return Verdict::Drop(DropReason::IcmpNoFlow);
        };
        if let Mode::Nat { .. } = vip.spec.mode {
            // The backend sent (backend -> client, or -> SNAT address):
            // make the quote say so and address the error to it.
            let peer = self.table.entry(slot).peer();
            let (dst, dport) = if !vip.snat.is_empty() && peer != NO_PEER {
                let source = self.table.entry(peer).key();
                (source.dst, source.dst_port)
            } else {
                (flow.src, flow.src_port)
            };
            let frame = pkt.frame_mut();
            if !rewrite::decrement_ttl(frame, p) {
                return self.vip_drop(vip_id, DropReason::TtlExceeded);
            }
            icmp::translate_error(frame, p, &inner, (&b.addr, b.port_for(flow.dst_port)), (&dst, dport));
            let out = s.interfaces[usize::from(b.spec.iface)];
            rewrite::set_macs(frame, out.mac, b.spec.next_hop);
            self.stats.vips[usize::from(vip_id)].packet(pkt.len);
            return Verdict::Tx(b.spec.iface);
        }
        // DSR and tunnel backends own the VIP: the error goes as it is.
        // It is not itself answered with "too big" when it does not fit.
        if let Mode::Tunnel { encap, .. } = vip.spec.mode
            && p.end - p.l3 + encap.overhead(p.v6) > usize::from(s.interfaces[usize::from(b.spec.iface)].mtu)
        {
            return self.vip_drop(vip_id, DropReason::NoRoom);
        }
        self.send_to_backend(s, pkt, p, flow.hash64(), Some(slot), Target { vip_id, vip, backend_id: backend, b })
    }

    fn vip_drop(&self, vip: VipId, reason: DropReason) -> Verdict {
        self.stats.vip_drops[usize::from(vip)].count(reason);
        Verdict::Drop(reason)
    }
}

/// The largest inner packet a tunnel to an interface of `mtu` carries, if
/// this packet is bigger once encapsulated.
#[inline]
fn tunnel_overflow(encap: Encap, p: &Parsed, mtu: u16) -> Option<u16> {
    let overhead = encap.overhead(p.v6);
    (p.end - p.l3 + overhead > usize::from(mtu)).then(|| mtu.saturating_sub(overhead as u16))
}

/// A TCP segment that opens a connection: SYN without ACK.
fn is_syn(p: &Parsed) -> bool {
    p.key.proto == IpProtocol::TCP && p.tcp_flags & (tcp::SYN | tcp::ACK) == tcp::SYN
}

/// The frame is sliced only for ICMP: slicing it (a bounds check) before
/// the protocol test cost every packet.
fn is_icmp_error(pkt: &Packet, p: &Parsed) -> bool {
    matches!(p.key.proto, IpProtocol::ICMP | IpProtocol::ICMPV6) && (p.key.proto == IpProtocol::ICMPV6) == p.v6 && wicmp::is_error(p.v6, pkt.frame()[p.l4])
}

fn initial_state(key: &FlowKey, flags: u8) -> FlowState {
    if key.proto != IpProtocol::TCP {
        return FlowState::Udp;
    }
    let base = if flags & (tcp::SYN | tcp::ACK) == tcp::SYN { FlowState::SynSeen } else { FlowState::Established };
    next_state(base, flags, true)
}

/// TCP state as the balancer sees it. In DSR and tunnel modes only the
/// client's half is seen, so the client's first plain ACK establishes.
fn next_state(state: FlowState, flags: u8, from_client: bool) -> FlowState {
    match state {
        FlowState::Udp => FlowState::Udp,
        _ if flags & (tcp::FIN | tcp::RST) != 0 => FlowState::Closing,
        FlowState::SynSeen if from_client && flags & (tcp::SYN | tcp::ACK) == tcp::ACK => FlowState::Established,
        s => s,
    }
}
