//! Publishing plugins to the workers ([`PluginSlot`]), the per-worker
//! scheduler that follows a slot ([`WasmScheduler`]), the slot's plugin
//! thread, fault counting and quarantine.
//!
//! The per-pick path reads one atomic (the slot's generation) and, for
//! the version it runs, one flag (quarantined). The slot's mutex is taken
//! only by a publish and by each worker once after it: std's `Mutex`
//! is enough there, so no `arc-swap` crate.
//!
//! Nothing slow runs on a worker. Its instance's `lb_update` is tried
//! there within a few µs of fuel and at most until the next epoch tick;
//! an update that needs more (or a version whose smoke-test update did)
//! runs on the slot's plugin thread instead, on a fresh instance with the
//! worker's rows, which the worker takes over at its next pick once it is
//! ready. Until then that worker's new flows of the VIP fall back to
//! native Maglev (counted as `preparing`).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fulcrum_dataplane::flow::FlowKey;
use fulcrum_dataplane::sched::{BackendState, Scheduler, pick_each};
use fulcrum_dataplane::stats::{Counter, Log2Histogram, log2_quantile};

use crate::abi;
use crate::config::HostConfig;
use crate::error::{Fault, FaultKind};
use crate::instance::Live;
use crate::runtime::Plugin;

/// The plugin of one VIP (or whatever the control plane attaches it to),
/// shared by the control thread and every worker.
pub struct PluginSlot {
    /// Names the slot in the quarantine log line (the VIP, typically).
    label: String,
    /// The published version and its generation, changed together.
    current: Mutex<(u64, Option<Arc<Version>>)>,
    /// Mirrors `current.0`: what workers compare once per pick.
    generation: AtomicU64,
    /// Faults by kind (`FaultKind::ALL` order), of every version.
    faults: [AtomicU64; FaultKind::ALL.len()],
    /// Counters of the live followers (one writer each), and the sums of
    /// the ones that are gone.
    followers: Mutex<Vec<Arc<FollowerCounters>>>,
    retired: FollowerCounters,
    /// The plugin thread's queue, started at the first preparation.
    preparer: OnceLock<Sender<Preparation>>,
}

/// One published version of a plugin, with its fault history.
pub(crate) struct Version {
    pub plugin: Plugin,
    quarantined: AtomicBool,
    /// Its updates run on the plugin thread only: the smoke test's took
    /// too long for a worker, or one overran a worker's budget since.
    update_off_worker: AtomicBool,
    /// Times of the last `K - 1` faults (ms since `born`, +1; 0 = none), a
    /// ring: a fault whose `K - 1`-th predecessor lies within the window
    /// makes `K` faults in the window.
    recent: Box<[AtomicU64]>,
    next: AtomicUsize,
    born: Instant,
    /// Written only by faults, read by `stats`: the one lock is off the
    /// path of any pick that succeeds.
    last_fault: Mutex<Option<LastFault>>,
}

/// A version's last fault and when it happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastFault {
    pub message: String,
    /// Seconds since the Unix epoch.
    pub at: u64,
}

/// Why a flow the plugin was asked about went to native Maglev.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fallback {
    /// The plugin answered -1.
    Declined,
    /// The call faulted.
    Fault,
    Quarantined,
    /// This worker's instance is being prepared on the plugin thread.
    Preparing,
    /// The pool has more backends than the plugin holds rows.
    OverCapacity,
    /// No plugin published, or no instance could be made.
    Unavailable,
}

/// Buckets of the pick-cost histogram, in ns: the last holds 2^30 ns
/// (about a second, the CPU budget's order) and above.
pub const PICK_COST_BUCKETS: usize = 31;

/// One pick in this many is timed: two clock reads (tens of ns) on every
/// pick would be a sizeable share of what a plugin costs over Maglev.
const PICK_COST_SAMPLE: u32 = 8;

#[derive(Debug, Default)]
struct FollowerCounters {
    picks: Counter,
    declined: Counter,
    fault: Counter,
    quarantined: Counter,
    preparing: Counter,
    over_capacity: Counter,
    unavailable: Counter,
    instantiations: Counter,
    /// `lb_pick_batch` calls made.
    batches: Counter,
    /// A sample of whole picks' cost on the worker, in ns: the flow record,
    /// the rows' sync (with an inline `lb_update`) and the call.
    pick_ns: Log2Histogram<PICK_COST_BUCKETS>,
}

impl FollowerCounters {
    fn fallback(&self, why: Fallback) -> &Counter {
        match why {
            Fallback::Declined => &self.declined,
            Fallback::Fault => &self.fault,
            Fallback::Quarantined => &self.quarantined,
            Fallback::Preparing => &self.preparing,
            Fallback::OverCapacity => &self.over_capacity,
            Fallback::Unavailable => &self.unavailable,
        }
    }

    fn all(&self) -> [&Counter; 9] {
        [
            &self.picks,
            &self.declined,
            &self.fault,
            &self.quarantined,
            &self.preparing,
            &self.over_capacity,
            &self.unavailable,
            &self.instantiations,
            &self.batches,
        ]
    }
}

/// Flows the plugin was asked about that native Maglev placed, by why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fallbacks {
    /// The plugin declined (-1).
    pub declined: u64,
    /// The pick, or the update before it, faulted.
    pub fault: u64,
    pub quarantined: u64,
    /// The worker's instance was being prepared on the plugin thread (a
    /// new version, an update too long for a worker, after a trap).
    pub preparing: u64,
    /// The pool had more backends than the plugin holds rows.
    pub over_capacity: u64,
    /// No instance could be made.
    pub unavailable: u64,
}

impl Fallbacks {
    pub fn total(&self) -> u64 {
        self.declined + self.fault + self.quarantined + self.preparing + self.over_capacity + self.unavailable
    }
}

/// What the control plane reads of a slot (sums over workers).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PluginStats {
    /// The published plugin's name and module hash, if any.
    pub plugin: Option<String>,
    pub hash: Option<u64>,
    pub generation: u64,
    /// New flows the plugin was asked to place.
    pub picks: u64,
    /// Of those, the ones native Maglev placed, by why.
    pub fallbacks: Fallbacks,
    /// Traps, fuel or CPU-time exhaustion, invalid answers, failed
    /// instantiations, in picks, updates and health calls alike, by kind
    /// (`FaultKind::ALL` order).
    pub faults: [u64; FaultKind::ALL.len()],
    /// Instances the workers ran (one per worker per version, plus one
    /// after every trap and every update prepared on the plugin thread).
    pub instantiations: u64,
    /// `lb_pick_batch` calls: the picks over them is how many new flows a
    /// call placed on average.
    pub batches: u64,
    /// The published version is quarantined: all its picks fall back.
    pub quarantined: bool,
    /// The published version's last fault.
    pub last_fault: Option<LastFault>,
    /// A sample of picks by their cost on the worker (ns), in
    /// `Log2Histogram` buckets: one `lb_pick` in eight, and every batch at
    /// its cost per flow.
    pub pick_ns: [u64; PICK_COST_BUCKETS],
}

impl PluginStats {
    /// Faults of every kind.
    pub fn fault_count(&self) -> u64 {
        self.faults.iter().sum()
    }

    pub fn faults_of(&self, kind: FaultKind) -> u64 {
        FaultKind::ALL.iter().position(|&k| k == kind).map_or(0, |i| self.faults[i])
    }

    /// The 99th percentile of a pick's cost, once a pick was timed.
    pub fn pick_p99(&self) -> Option<Duration> {
        log2_quantile(&self.pick_ns, 0.99).map(|ns| Duration::from_nanos(ns as u64))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PluginSlot {
    pub fn new(label: impl Into<String>) -> Arc<PluginSlot> {
        Arc::new(PluginSlot {
            label: label.into(),
            current: Mutex::new((0, None)),
            generation: AtomicU64::new(0),
            faults: Default::default(),
            followers: Mutex::new(Vec::new()),
            retired: FollowerCounters::default(),
            preparer: OnceLock::new(),
        })
    }

    /// Makes `plugin` the slot's plugin: every worker's next pick runs on
    /// a fresh instance of it. Returns the new generation. Flows already
    /// placed keep their backends: the engine asks only about new flows.
    pub fn publish(&self, plugin: Plugin) -> u64 {
        let quarantine_faults = plugin.runtime().config().quarantine_faults.max(1) as usize;
        let version = Version {
            update_off_worker: AtomicBool::new(plugin.update_off_worker()),
            plugin,
            quarantined: AtomicBool::new(false),
            recent: (1..quarantine_faults).map(|_| AtomicU64::new(0)).collect(),
            next: AtomicUsize::new(0),
            born: Instant::now(),
            last_fault: Mutex::new(None),
        };
        self.replace(Some(Arc::new(version)))
    }

    /// Removes the plugin: new flows go to native Maglev.
    pub fn clear(&self) -> u64 {
        self.replace(None)
    }

    fn replace(&self, version: Option<Arc<Version>>) -> u64 {
        let mut current = lock(&self.current);
        let generation = current.0 + 1;
        *current = (generation, version);
        self.generation.store(generation, Release);
        generation
    }

    pub fn plugin(&self) -> Option<Plugin> {
        lock(&self.current).1.as_ref().map(|v| v.plugin.clone())
    }

    /// A scheduler for one worker (`Engine::set_scheduler`).
    pub fn scheduler(self: &Arc<Self>) -> WasmScheduler {
        WasmScheduler { follower: Follower::new(self), untimed: 0, records: Vec::new(), answers: Vec::new() }
    }

    pub fn stats(&self) -> PluginStats {
        let (generation, version) = lock(&self.current).clone();
        let (mut sums, mut pick_ns) = ([0u64; 9], [0u64; PICK_COST_BUCKETS]);
        for c in lock(&self.followers).iter().map(Arc::as_ref).chain([&self.retired]) {
            for (sum, counter) in sums.iter_mut().zip(c.all()) {
                *sum += counter.get();
            }
            for (sum, n) in pick_ns.iter_mut().zip(c.pick_ns.counts()) {
                *sum += n;
            }
        }
        let [picks, declined, fault, quarantined, preparing, over_capacity, unavailable, instantiations, batches] = sums;
        PluginStats {
            plugin: version.as_ref().map(|v| v.plugin.name().to_string()),
            hash: version.as_ref().map(|v| v.plugin.hash()),
            generation,
            picks,
            fallbacks: Fallbacks { declined, fault, quarantined, preparing, over_capacity, unavailable },
            faults: self.faults.each_ref().map(|f| f.load(Relaxed)),
            instantiations,
            batches,
            quarantined: version.as_ref().is_some_and(|v| v.quarantined.load(Relaxed)),
            last_fault: version.as_ref().and_then(|v| lock(&v.last_fault).clone()),
            pick_ns,
        }
    }

    /// Hands a preparation to the slot's plugin thread, started on first
    /// use; gone when the slot is (its queue closes).
    fn prepare(&self, job: Preparation) {
        let queue = self.preparer.get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Preparation>();
            let spawned = std::thread::Builder::new().name("fulcrum-plugin".into()).spawn(move || {
                for job in rx {
                    job.run();
                }
            });
            if let Err(e) = spawned {
                tracing::error!(slot = %self.label, "cannot start the plugin thread: {e}");
            }
            tx
        });
        // Without a thread the job comes back unrun: the worker stops
        // waiting for it.
        if let Err(mpsc::SendError(job)) = queue.send(job) {
            job.mailbox.deliver(None);
        }
    }
}

impl Version {
    fn config(&self) -> &HostConfig {
        self.plugin.runtime().config()
    }

    /// Counts a fault; the `K`-th within the window quarantines the
    /// version, with the one log line the operator gets about it.
    fn fault(&self, slot: &PluginSlot, fault: &Fault) {
        let kind = FaultKind::ALL.iter().position(|&k| k == fault.kind()).unwrap_or(0);
        slot.faults[kind].fetch_add(1, Relaxed);
        let at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        *lock(&self.last_fault) = Some(LastFault { message: fault.to_string(), at });
        let now = self.born.elapsed().as_millis() as u64 + 1;
        let window = self.config().quarantine_window.as_millis() as u64;
        let within = match self.recent.len() {
            0 => true,
            k => {
                let earlier = self.recent[self.next.fetch_add(1, Relaxed) % k].swap(now, Relaxed);
                earlier != 0 && now.saturating_sub(earlier) <= window
            }
        };
        if within && !self.quarantined.swap(true, Relaxed) {
            let cfg = self.config();
            tracing::warn!(
                slot = %slot.label,
                plugin = %self.plugin.name(),
                "plugin quarantined after {} faults within {:?} (last: {fault}); new flows use native Maglev until a new version is loaded",
                cfg.quarantine_faults.max(1),
                cfg.quarantine_window,
            );
        }
    }
}

/// Where the plugin thread leaves a prepared instance for one worker.
#[derive(Default)]
struct Mailbox {
    ready: AtomicBool,
    /// `None` once ready: the preparation failed (a fault, counted).
    live: Mutex<Option<Live>>,
}

impl Mailbox {
    fn deliver(&self, live: Option<Live>) {
        *lock(&self.live) = live;
        self.ready.store(true, Release);
    }
}

/// A fresh instance of `version` brought up to `rows`, `lb_update` run
/// with the full budget: the plugin thread's work for one worker.
struct Preparation {
    slot: Arc<PluginSlot>,
    version: Arc<Version>,
    rows: Vec<BackendState>,
    mailbox: Arc<Mailbox>,
}

impl Preparation {
    fn run(self) {
        let cfg = self.version.config();
        let live = match self.version.plugin.instantiate() {
            Ok(mut live) => live.sync(&self.rows, None, Some(cfg.update_budget())).map(|_| live),
            Err(e) => Err(Fault::Instantiate(e.to_string())),
        };
        let live = live.map_err(|fault| self.version.fault(&self.slot, &fault)).ok();
        self.mailbox.deliver(live);
    }
}

/// After a failed preparation, a worker asks again no sooner than this.
const RETRY: Duration = Duration::from_secs(1);

/// A worker's view of a slot: the version it runs and its instance of it,
/// re-instantiated when the slot's generation changes or after a trap.
/// Shared by the scheduler and the health policy.
pub(crate) struct Follower {
    slot: Arc<PluginSlot>,
    seen: u64,
    version: Option<Arc<Version>>,
    live: Option<Live>,
    /// The preparation this follower waits for.
    waiting: Option<Arc<Mailbox>>,
    /// Until when a failed preparation is not asked for again.
    retry_at: Option<Instant>,
    counters: Arc<FollowerCounters>,
}

impl Follower {
    pub fn new(slot: &Arc<PluginSlot>) -> Follower {
        let counters = Arc::new(FollowerCounters::default());
        lock(&slot.followers).push(Arc::clone(&counters));
        // u64::MAX: no generation seen yet, so the first call loads one.
        Follower { slot: Arc::clone(slot), seen: u64::MAX, version: None, live: None, waiting: None, retry_at: None, counters }
    }

    /// The instance to call, its rows synced with `backends` (and the flow
    /// record written if given), and its configuration; or why there is
    /// none to call: no plugin published, quarantined, a pool too large,
    /// an instance being prepared or none to be made.
    fn instance(&mut self, backends: &[BackendState], flow: Option<&[u8; abi::FLOW_SIZE]>) -> Result<(&HostConfig, &mut Live), Fallback> {
        if self.slot.generation.load(Acquire) != self.seen {
            let (generation, version) = lock(&self.slot.current).clone();
            (self.seen, self.version, self.live, self.waiting, self.retry_at) = (generation, version, None, None, None);
        }
        let version = Arc::clone(self.version.as_ref().ok_or(Fallback::Unavailable)?);
        if version.quarantined.load(Relaxed) {
            (self.live, self.waiting) = (None, None); // give the pool slots back
            return Err(Fallback::Quarantined);
        }
        if backends.len() > version.plugin.capacity() {
            return Err(Fallback::OverCapacity);
        }
        if self.live.is_none() {
            self.take_prepared(&version, backends)?;
        }
        let cfg = version.config();
        let inline = (!version.update_off_worker.load(Relaxed)).then(|| cfg.worker_update_budget());
        let Some(live) = self.live.as_mut() else { return Err(Fallback::Unavailable) };
        match live.sync(backends, flow, inline) {
            Ok(false) => {}
            Ok(true) => {
                self.live = None;
                self.request(&version, backends);
                return Err(Fallback::Preparing);
            }
            // Too long for a worker: not the plugin's fault, the plugin
            // thread's job from now on.
            Err(fault) if inline.is_some() && fault.kind() == FaultKind::Budget => {
                version.update_off_worker.store(true, Relaxed);
                self.live = None;
                self.request(&version, backends);
                return Err(Fallback::Preparing);
            }
            Err(fault) => {
                self.fault(fault);
                return Err(Fallback::Fault);
            }
        }
        match (self.version.as_deref(), self.live.as_mut()) {
            (Some(version), Some(live)) => Ok((version.config(), live)),
            _ => Err(Fallback::Unavailable),
        }
    }

    /// Makes `self.live` an instance of `version`: the one the plugin
    /// thread prepared if it is ready, else a fresh one here (cheap: tens of
    /// µs) unless its updates belong on the plugin thread, which is then
    /// asked for one.
    fn take_prepared(&mut self, version: &Arc<Version>, backends: &[BackendState]) -> Result<(), Fallback> {
        if let Some(mailbox) = &self.waiting {
            if !mailbox.ready.load(Acquire) {
                return Err(Fallback::Preparing);
            }
            let live = lock(&mailbox.live).take();
            self.waiting = None;
            match live {
                Some(live) => {
                    self.counters.instantiations.inc();
                    self.live = Some(live);
                    return Ok(());
                }
                None => self.retry_at = Some(Instant::now() + RETRY),
            }
        }
        if self.retry_at.is_some_and(|t| Instant::now() < t) {
            return Err(Fallback::Unavailable);
        }
        self.retry_at = None;
        if version.update_off_worker.load(Relaxed) {
            self.request(version, backends);
            return Err(Fallback::Preparing);
        }
        match version.plugin.instantiate() {
            Ok(live) => {
                self.counters.instantiations.inc();
                self.live = Some(live);
                Ok(())
            }
            Err(e) => {
                version.fault(&self.slot, &Fault::Instantiate(e.to_string()));
                Err(Fallback::Unavailable)
            }
        }
    }

    /// Asks the plugin thread for an instance of `version` prepared for
    /// `backends` (the one allocation, once per placement change).
    fn request(&mut self, version: &Arc<Version>, backends: &[BackendState]) {
        let mailbox = Arc::new(Mailbox::default());
        self.waiting = Some(Arc::clone(&mailbox));
        let job = Preparation { slot: Arc::clone(&self.slot), version: Arc::clone(version), rows: backends.to_vec(), mailbox };
        self.slot.prepare(job);
    }

    /// Counts a fault of the current version; discards the instance after
    /// a trap (its memory may be half-written).
    fn fault(&mut self, fault: Fault) {
        if fault.discards_instance() {
            self.live = None;
        }
        if let Some(v) = &self.version {
            v.fault(&self.slot, &fault);
        }
    }

    /// A health verdict from the plugin's `lb_health`, or why there is
    /// none (a fault is counted; `Ok(None)`: the plugin has no policy).
    pub fn health(&mut self, pool: &[BackendState], args: abi::HealthArgs) -> Option<Result<u32, ()>> {
        let (cfg, live) = self.instance(pool, None).ok()?;
        match live.health(cfg, args) {
            Ok(verdict) => verdict.map(Ok),
            Err(fault) => {
                self.fault(fault);
                Some(Err(()))
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let mut followers = lock(&self.slot.followers);
        followers.retain(|c| !Arc::ptr_eq(c, &self.counters));
        for (to, from) in self.slot.retired.all().into_iter().zip(self.counters.all()) {
            to.add(from.get());
        }
        self.slot.retired.pick_ns.merge(&self.counters.pick_ns);
    }
}

/// Places new flows with the slot's plugin on one worker. Anything but a
/// valid, eligible answer (no plugin, quarantine, -1, a fault, an instance
/// being prepared) returns `None`, and the engine places the flow with
/// native Maglev.
pub struct WasmScheduler {
    follower: Follower,
    /// Picks until the next timed one.
    untimed: u32,
    /// A batch's flow records and answers, sized at the first batch.
    records: Vec<[u8; abi::FLOW_SIZE]>,
    answers: Vec<Result<Option<usize>, Fault>>,
}

impl WasmScheduler {
    /// The generation this worker runs (the last it saw).
    pub fn generation(&self) -> u64 {
        self.follower.seen
    }

    /// For callers that may wait, never a worker: waits up to `timeout`
    /// until this scheduler's instance is ready for `backends` (prepared on
    /// the plugin thread if need be); false if it is not, or cannot be
    /// (quarantine, no plugin, a fault).
    pub fn wait_ready(&mut self, backends: &[BackendState], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            match self.follower.instance(backends, None) {
                Ok(_) => return true,
                Err(Fallback::Preparing) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
                Err(_) => return false,
            }
        }
    }

    fn decide(&mut self, flow: &FlowKey, flow_hash: u64, backends: &[BackendState]) -> Result<usize, Fallback> {
        let (cfg, live) = self.follower.instance(backends, Some(&abi::flow_record(flow, flow_hash)))?;
        match live.pick(cfg, backends) {
            Ok(Some(i)) => Ok(i),
            Ok(None) => Err(Fallback::Declined),
            Err(fault) => {
                self.follower.fault(fault);
                Err(Fallback::Fault)
            }
        }
    }

    /// The first of `flows` the batch region holds through one
    /// `lb_pick_batch` call, their answers left in `self.answers`: how
    /// many (0: the plugin has no such entry point), or why none was asked.
    fn decide_batch(&mut self, flows: &[(FlowKey, u64)], backends: &[BackendState]) -> Result<usize, Fallback> {
        let (cfg, live) = self.follower.instance(backends, None)?;
        let m = flows.len().min(live.batch_cap());
        if m == 0 {
            return Ok(0);
        }
        self.records.clear();
        self.records.extend(flows[..m].iter().map(|(key, hash)| abi::flow_record(key, *hash)));
        self.answers.clear();
        self.answers.resize_with(m, || Ok(None));
        let called = live.pick_batch(cfg, backends, &self.records, &mut self.answers);
        self.follower.counters.batches.inc();
        match called {
            Ok(()) => Ok(m),
            Err(fault) => {
                self.follower.fault(fault);
                Err(Fallback::Fault)
            }
        }
    }
}

impl Scheduler for WasmScheduler {
    fn pick(&mut self, flow: &FlowKey, flow_hash: u64, backends: &[BackendState]) -> Option<usize> {
        let choice = if self.untimed == 0 {
            self.untimed = PICK_COST_SAMPLE - 1;
            let start = Instant::now();
            let choice = self.decide(flow, flow_hash, backends);
            self.follower.counters.pick_ns.record(start.elapsed().as_nanos() as u64);
            choice
        } else {
            self.untimed -= 1;
            self.decide(flow, flow_hash, backends)
        };
        let c = &self.follower.counters;
        c.picks.inc();
        choice.map_err(|why| c.fallback(why).inc()).ok()
    }

    /// One `lb_pick_batch` call per batch region's worth of flows; a
    /// plugin without that entry point picks them one by one.
    fn pick_batch(&mut self, flows: &[(FlowKey, u64)], backends: &mut [BackendState], out: &mut [Option<usize>]) {
        let mut done = 0;
        while done < flows.len() {
            let start = Instant::now();
            let asked = self.decide_batch(&flows[done..], backends);
            let n = match asked {
                Ok(0) => return pick_each(self, &flows[done..], backends, &mut out[done..]),
                Ok(m) => m,
                Err(_) => flows.len() - done,
            };
            let (batch, answers) = (&flows[done..done + n], &mut out[done..done + n]);
            done += n;
            let c = &self.follower.counters;
            c.picks.add(n as u64);
            // One sample per call: its cost per flow.
            c.pick_ns.record(start.elapsed().as_nanos() as u64 / n as u64);
            if let Err(why) = asked {
                c.fallback(why).add(n as u64);
                answers.fill(None);
                continue;
            }
            for ((answer, slot), (key, _)) in self.answers.drain(..).zip(answers).zip(batch) {
                *slot = match answer {
                    Ok(Some(i)) => {
                        backends[i].count_new(key.proto);
                        Some(i)
                    }
                    Ok(None) => {
                        self.follower.counters.declined.inc();
                        None
                    }
                    Err(fault) => {
                        self.follower.fault(fault);
                        self.follower.counters.fault.inc();
                        None
                    }
                };
            }
        }
    }
}
