//! Publishing plugins to the workers ([`PluginSlot`]), the per-worker
//! scheduler that follows a slot ([`WasmScheduler`]), fault counting and
//! quarantine.
//!
//! The per-pick path reads one atomic (the slot's generation) and, for
//! the version it runs, one flag (quarantined). The slot's mutex is taken
//! only by a publish and by each worker once after it: std's `Mutex`
//! is enough there, so no `arc-swap` crate.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use fulcrum_dataplane::flow::FlowKey;
use fulcrum_dataplane::sched::{BackendState, Scheduler};
use fulcrum_dataplane::stats::Counter;

use crate::config::HostConfig;
use crate::error::Fault;
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
    faults: AtomicU64,
    /// Counters of the live followers (one writer each), and the sums of
    /// the ones that are gone.
    followers: Mutex<Vec<Arc<FollowerCounters>>>,
    retired: FollowerCounters,
}

/// One published version of a plugin, with its fault history.
pub(crate) struct Version {
    pub plugin: Plugin,
    quarantined: AtomicBool,
    /// Times of the last `K - 1` faults (ms since `born`, +1; 0 = none), a
    /// ring: a fault whose `K - 1`-th predecessor lies within the window
    /// makes `K` faults in the window.
    recent: Box<[AtomicU64]>,
    next: AtomicUsize,
    born: Instant,
    /// Written only by faults, read by `stats`: the one lock is off the
    /// path of any pick that succeeds.
    last_fault: Mutex<Option<String>>,
}

#[derive(Debug, Default)]
struct FollowerCounters {
    picks: Counter,
    fallbacks: Counter,
    instantiations: Counter,
}

/// What the control plane reads of a slot (sums over workers).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PluginStats {
    /// The published plugin's name, if any.
    pub plugin: Option<String>,
    pub generation: u64,
    /// New flows the plugin was asked to place.
    pub picks: u64,
    /// Of those, the ones native Maglev placed: the plugin declined (-1),
    /// faulted, was quarantined or none was published.
    pub fallbacks: u64,
    /// Traps, fuel or CPU-time exhaustion, invalid answers, failed
    /// instantiations, in picks, updates and health calls alike.
    pub faults: u64,
    /// Instances created by the workers (one per worker per version, plus
    /// one after every trap).
    pub instantiations: u64,
    /// The published version is quarantined: all its picks fall back.
    pub quarantined: bool,
    /// What the published version's last fault was.
    pub last_fault: Option<String>,
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
            faults: AtomicU64::new(0),
            followers: Mutex::new(Vec::new()),
            retired: FollowerCounters::default(),
        })
    }

    /// Makes `plugin` the slot's plugin: every worker's next pick runs on
    /// a fresh instance of it. Returns the new generation. Flows already
    /// placed keep their backends: the engine asks only about new flows.
    pub fn publish(&self, plugin: Plugin) -> u64 {
        let quarantine_faults = plugin.runtime().config().quarantine_faults.max(1) as usize;
        let version = Version {
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
        WasmScheduler { follower: Follower::new(self) }
    }

    pub fn stats(&self) -> PluginStats {
        let (generation, version) = lock(&self.current).clone();
        let mut s = PluginStats {
            plugin: version.as_ref().map(|v| v.plugin.name().to_string()),
            generation,
            faults: self.faults.load(Relaxed),
            quarantined: version.as_ref().is_some_and(|v| v.quarantined.load(Relaxed)),
            last_fault: version.as_ref().and_then(|v| lock(&v.last_fault).clone()),
            ..PluginStats::default()
        };
        for c in lock(&self.followers).iter().map(Arc::as_ref).chain([&self.retired]) {
            s.picks += c.picks.get();
            s.fallbacks += c.fallbacks.get();
            s.instantiations += c.instantiations.get();
        }
        s
    }
}

impl Version {
    fn config(&self) -> &HostConfig {
        self.plugin.runtime().config()
    }

    /// Counts a fault; the `K`-th within the window quarantines the
    /// version, with the one log line the operator gets about it.
    fn fault(&self, slot: &PluginSlot, fault: &Fault) {
        slot.faults.fetch_add(1, Relaxed);
        *lock(&self.last_fault) = Some(fault.to_string());
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

/// A worker's view of a slot: the version it runs and its instance of it,
/// re-instantiated when the slot's generation changes or after a trap.
/// Shared by the scheduler and the health policy.
pub(crate) struct Follower {
    slot: Arc<PluginSlot>,
    seen: u64,
    version: Option<Arc<Version>>,
    live: Option<Live>,
    counters: Arc<FollowerCounters>,
}

impl Follower {
    pub fn new(slot: &Arc<PluginSlot>) -> Follower {
        let counters = Arc::new(FollowerCounters::default());
        lock(&slot.followers).push(Arc::clone(&counters));
        // u64::MAX: no generation seen yet, so the first call loads one.
        Follower { slot: Arc::clone(slot), seen: u64::MAX, version: None, live: None, counters }
    }

    /// The instance to call and its configuration, or `None` when no
    /// plugin is published, it is quarantined, or no instance can be made.
    pub fn instance(&mut self) -> Option<(&HostConfig, &mut Live)> {
        if self.slot.generation.load(Acquire) != self.seen {
            let (generation, version) = lock(&self.slot.current).clone();
            (self.seen, self.version, self.live) = (generation, version, None);
        }
        let version = self.version.as_deref()?;
        if version.quarantined.load(Relaxed) {
            self.live = None; // give the pool slot back
            return None;
        }
        if self.live.is_none() {
            match version.plugin.instantiate() {
                Ok(live) => {
                    self.counters.instantiations.inc();
                    self.live = Some(live);
                }
                Err(e) => {
                    version.fault(&self.slot, &Fault::Instantiate(e.to_string()));
                    return None;
                }
            }
        }
        Some((version.config(), self.live.as_mut()?))
    }

    /// Counts a fault of the current version; discards the instance after
    /// a trap (its memory may be half-written).
    pub fn fault(&mut self, fault: Fault) {
        if fault.discards_instance() {
            self.live = None;
        }
        if let Some(v) = &self.version {
            v.fault(&self.slot, &fault);
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let mut followers = lock(&self.slot.followers);
        followers.retain(|c| !Arc::ptr_eq(c, &self.counters));
        let (from, to) = (&self.counters, &self.slot.retired);
        to.picks.add(from.picks.get());
        to.fallbacks.add(from.fallbacks.get());
        to.instantiations.add(from.instantiations.get());
    }
}

/// Places new flows with the slot's plugin on one worker. Anything but a
/// valid, eligible answer (no plugin, quarantine, -1, a fault) returns
/// `None`, and the engine places the flow with native Maglev.
pub struct WasmScheduler {
    follower: Follower,
}

impl WasmScheduler {
    /// The generation this worker runs (the last it saw).
    pub fn generation(&self) -> u64 {
        self.follower.seen
    }

    fn decide(&mut self, flow: &FlowKey, flow_hash: u64, backends: &[BackendState]) -> Option<usize> {
        let (cfg, live) = self.follower.instance()?;
        match live.pick(cfg, flow, flow_hash, backends) {
            Ok(choice) => choice,
            Err(fault) => {
                self.follower.fault(fault);
                None
            }
        }
    }
}

impl Scheduler for WasmScheduler {
    fn pick(&mut self, flow: &FlowKey, flow_hash: u64, backends: &[BackendState]) -> Option<usize> {
        let choice = self.decide(flow, flow_hash, backends);
        let c = &self.follower.counters;
        c.picks.inc();
        if choice.is_none() {
            c.fallbacks.inc();
        }
        choice
    }
}
