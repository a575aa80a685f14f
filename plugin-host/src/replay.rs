//! Synthetic flows through a plugin, for plugin authors (`fulcrum plugin
//! test`): how the flows spread over the backends, how many move when
//! some backends fail, what each pick and update costs, and whether the
//! plugin passes the gates a deploy may set (no fault, no quarantine, a
//! share of declines, a cost budget). The plugin runs exactly as on a
//! worker, with the same fallback to native Maglev when it declines or
//! faults.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastrand::Rng;
use serde::Serialize;

use fulcrum_dataplane::flow::FlowKey;
use fulcrum_dataplane::flow::key::addr16;
use fulcrum_dataplane::sched::maglev::{MAGLEV_MAX_BACKENDS, Maglev, MaglevInput};
use fulcrum_dataplane::sched::{BackendState, Scheduler};
use fulcrum_dataplane::services::backend_ident;
use fulcrum_dataplane::wire::IpProtocol;

use crate::{FaultKind, HostConfig, LoadError, PluginRuntime, PluginSlot};

/// What to replay. Backends are 198.18.1.0/24 and up, port 80; flows come
/// to the TCP VIP 198.18.7.10:443 from clients of 198.19.0.0/16 (a
/// quarter as many clients as flows, so most open several), each from a
/// random ephemeral port. A flow counts as an established connection of
/// its backend until it closes, after `open` later flows on average.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    pub backends: usize,
    pub flows: usize,
    /// Flows open at once on average: each closes after a random number
    /// of later flows, 1 to 2 × this many; `None`: none closes.
    pub open: Option<usize>,
    /// Weight per backend; missing ones are 1.
    pub weights: Vec<u32>,
    /// Established connections per backend before the first flow; missing
    /// ones are 0.
    pub loads: Vec<u32>,
    /// Smoothed response time (µs) and byte rate per backend, as the
    /// daemon's rows would carry them; missing ones are 0 (unmeasured).
    pub rtt_us: Vec<u32>,
    pub rates: Vec<u64>,
    /// Backends (by index) that are down in the second pass.
    pub failures: Vec<usize>,
    pub gates: Gates,
}

impl Default for ReplayOptions {
    fn default() -> ReplayOptions {
        ReplayOptions {
            backends: 8,
            flows: 10_000,
            open: None,
            weights: Vec::new(),
            loads: Vec::new(),
            rtt_us: Vec::new(),
            rates: Vec::new(),
            failures: Vec::new(),
            gates: Gates::default(),
        }
    }
}

/// What a deploy may require of a plugin beyond never faulting and never
/// being quarantined (always required).
#[derive(Clone, Copy, Debug, Default)]
pub struct Gates {
    /// Most p99 CPU cost of a pick (the host's whole call: rows synced,
    /// `lb_pick`, its answer checked).
    pub max_pick: Option<Duration>,
    /// Most p99 CPU time of an `lb_update`.
    pub max_update: Option<Duration>,
    /// Most share of picks the plugin may decline, in percent.
    pub max_declines: Option<f64>,
}

#[derive(Debug)]
pub enum ReplayError {
    Options(String),
    Load(LoadError),
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplayError::Options(e) => f.write_str(e),
            ReplayError::Load(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ReplayError {}

/// Flows each backend received, in one pass.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Pass {
    /// Per backend.
    pub flows: Vec<usize>,
    /// Flows the plugin declined or faulted on: native Maglev placed them.
    pub fallbacks: usize,
    /// Flows no backend could take.
    pub unplaced: usize,
}

/// The second pass, with `failed` down.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FailurePass {
    pub failed: Vec<usize>,
    pub pass: Pass,
    /// Flows whose backend changed from the first pass...
    pub remapped: usize,
    /// ...of which this many had to (their backend failed).
    pub remapped_from_failed: usize,
}

/// What calls of one kind cost, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Cost {
    pub calls: usize,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

impl Cost {
    fn of(mut samples: Vec<Duration>) -> Cost {
        samples.sort_unstable();
        let at = |q: usize| samples.get((samples.len() * q / 100).min(samples.len().saturating_sub(1))).map_or(0, |d| d.as_nanos() as u64);
        Cost { calls: samples.len(), p50_ns: at(50), p99_ns: at(99), max_ns: samples.last().map_or(0, |d| d.as_nanos() as u64) }
    }

    pub fn p99(&self) -> Duration {
        Duration::from_nanos(self.p99_ns)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReplayReport {
    pub plugin: String,
    pub flows: usize,
    pub open: Option<usize>,
    pub weights: Vec<u32>,
    pub loads: Vec<u32>,
    pub rtt_us: Vec<u32>,
    pub rates: Vec<u64>,
    pub all_up: Pass,
    pub failure: Option<FailurePass>,
    /// Plugin faults over both passes, and by kind.
    pub faults: u64,
    pub faults_by_kind: Vec<(&'static str, u64)>,
    pub last_fault: Option<String>,
    pub quarantined: bool,
    /// Picks the plugin was asked for, and those it declined.
    pub picks: u64,
    pub declines: u64,
    /// Every pick of both passes (wall-clock time, which on a loaded
    /// machine includes preemption: read p50 and p99).
    pub pick_cost: Cost,
    /// `lb_pick_batch` per flow, over `BATCH_ROUNDS` calls of
    /// `BATCH_FLOWS` new flows each (as a worker asks for a chunk's), wall
    /// clock; `None` if the plugin has no batch entry point.
    pub batch_cost: Option<Cost>,
    /// `lb_update` (CPU time) over `UPDATE_ROUNDS` placement changes;
    /// `None` if the plugin has no `lb_update`.
    pub update_cost: Option<Cost>,
    /// The gates failed, each saying which and by how much: empty if the
    /// plugin passed.
    pub failed_gates: Vec<String>,
}

/// Updates timed after the passes.
const UPDATE_ROUNDS: usize = 50;
/// Batch calls timed after the passes, and the new flows in each: a
/// worker's chunk of frames, all new.
const BATCH_ROUNDS: usize = 50;
const BATCH_FLOWS: usize = 64;
/// The VIP the replayed flows are for.
const VIP: [u8; 4] = [198, 18, 7, 10];

/// `n` backends 198.18.1.i:80 with the weights and loads given per index.
fn replay_pool(n: usize, weight: impl Fn(usize) -> u32, load: impl Fn(usize) -> u32) -> Vec<BackendState> {
    (0..n)
        .map(|i| {
            let addr = addr16(IpAddr::from([198, 18, 1 + (i >> 8) as u8, i as u8]));
            BackendState { id: backend_ident(&addr, 80), weight: weight(i), up: true, active: load(i), ..BackendState::default() }
        })
        .collect()
}

fn replay_runtime() -> Result<Arc<PluginRuntime>, ReplayError> {
    PluginRuntime::new(HostConfig { max_instances: 4, ..HostConfig::default() }).map_err(ReplayError::Load)
}

/// Loads a module as a daemon would, over eight equal backends: every ABI
/// check (imports, start function, exports and their signatures, version,
/// state region) and the smoke test. The one ABI checker of the project:
/// `fulcrum plugin check` and `scripts/build-plugins.sh` run it.
/// `name` names the plugin, `wasm` is its module (the caller reads the
/// file, with its own limits).
pub fn check(name: &str, wasm: &[u8]) -> Result<(), ReplayError> {
    replay_runtime()?.load(name, wasm, &replay_pool(8, |_| 1, |_| 0)).map(drop).map_err(ReplayError::Load)
}

/// Loads the plugin `wasm` (as `fulcrum plugin load` would, smoke test
/// included) and replays the flows: once with every backend up, then, if
/// `failures` is not empty, again from the same start with those down.
pub fn run(name: &str, wasm: &[u8], opts: &ReplayOptions) -> Result<ReplayReport, ReplayError> {
    let n = opts.backends;
    if n == 0 || n > MAGLEV_MAX_BACKENDS {
        return Err(ReplayError::Options(format!("{n} backends: give 1 to {MAGLEV_MAX_BACKENDS}")));
    }
    for (what, len) in [("weights", opts.weights.len()), ("loads", opts.loads.len()), ("response times", opts.rtt_us.len()), ("rates", opts.rates.len())] {
        if len > n {
            return Err(ReplayError::Options(format!("{what} given up to backend {}, but there are {n} (0..{})", len - 1, n - 1)));
        }
    }
    if let Some(&b) = opts.failures.iter().find(|&&b| b >= n) {
        return Err(ReplayError::Options(format!("backend {b} cannot fail: there are {n} (0..{})", n - 1)));
    }
    let weights: Vec<u32> = (0..n).map(|i| opts.weights.get(i).copied().unwrap_or(1)).collect();
    let loads: Vec<u32> = (0..n).map(|i| opts.loads.get(i).copied().unwrap_or(0)).collect();
    let rtt_us: Vec<u32> = (0..n).map(|i| opts.rtt_us.get(i).copied().unwrap_or(0)).collect();
    let rates: Vec<u64> = (0..n).map(|i| opts.rates.get(i).copied().unwrap_or(0)).collect();
    let mut pool = replay_pool(n, |i| weights[i], |i| loads[i]);
    for (row, (&rtt, &rate)) in pool.iter_mut().zip(rtt_us.iter().zip(&rates)) {
        (row.rtt_us, row.bytes_per_sec) = (rtt, rate);
    }
    let plugin = replay_runtime()?.load(name, wasm, &pool).map_err(ReplayError::Load)?;
    let name = plugin.name().to_string();

    // Timed apart from the passes: a fault here counts as the passes' do.
    let (update_cost, update_fault) = match plugin.update_costs(&pool, UPDATE_ROUNDS) {
        Ok(costs) if costs.is_empty() => (None, None),
        Ok(costs) => (Some(Cost::of(costs)), None),
        Err(fault) => (None, Some(fault)),
    };
    let has_batch = plugin.has_batch();
    let slot = PluginSlot::new(format!("replay of {name}"));
    slot.publish(plugin);

    let mut picks = Vec::with_capacity(opts.flows * 2);
    let (all_up, placed) = replay(&slot, pool.clone(), opts, &mut picks);
    let failure = (!opts.failures.is_empty()).then(|| {
        let mut down = pool.clone();
        for &b in &opts.failures {
            down[b].up = false;
        }
        let (pass, moved) = replay(&slot, down, opts, &mut picks);
        let changed = placed.iter().zip(&moved).filter(|(a, b)| a != b);
        let remapped_from_failed = changed.clone().filter(|(a, _)| a.is_some_and(|a| opts.failures.contains(&a))).count();
        FailurePass { failed: opts.failures.clone(), pass, remapped: changed.count(), remapped_from_failed }
    });
    // The declines gate judges the passes; faults count wherever they came.
    let passes = slot.stats();
    let batch_cost = has_batch.then(|| Cost::of(batch_costs(&slot, &pool, opts)));
    let stats = slot.stats();
    let faults_of = |k: FaultKind| stats.faults_of(k) + u64::from(update_fault.as_ref().is_some_and(|f| f.kind() == k));
    let last_fault = stats.last_fault.as_ref().map(|f| f.message.clone()).or_else(|| update_fault.as_ref().map(ToString::to_string));
    let mut report = ReplayReport {
        plugin: name,
        flows: opts.flows,
        open: opts.open,
        weights,
        loads,
        rtt_us,
        rates,
        all_up,
        failure,
        faults: stats.fault_count() + u64::from(update_fault.is_some()),
        faults_by_kind: FaultKind::ALL.iter().map(|&k| (k.name(), faults_of(k))).filter(|&(_, n)| n > 0).collect(),
        last_fault,
        quarantined: stats.quarantined,
        picks: passes.picks,
        declines: passes.fallbacks.declined,
        pick_cost: Cost::of(picks),
        batch_cost,
        update_cost,
        failed_gates: Vec::new(),
    };
    report.failed_gates = report.check(&opts.gates);
    Ok(report)
}

impl ReplayReport {
    /// The gates `gates` (and the ones always set) this report fails.
    fn check(&self, gates: &Gates) -> Vec<String> {
        let mut failed = Vec::new();
        if self.faults > 0 {
            let kinds: Vec<String> = self.faults_by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
            let last = self.last_fault.as_deref().unwrap_or("?");
            failed.push(format!("faults: the plugin faulted {} times ({}); last: {last}", self.faults, kinds.join(", ")));
        }
        if self.quarantined {
            failed.push("quarantine: the plugin was quarantined (a daemon would run native Maglev for its VIP)".into());
        }
        if let Some(max) = gates.max_declines {
            let share = share(self.declines as usize, self.picks as usize);
            if share > max {
                failed.push(format!("declines: {share:.2}% of picks declined, above --max-declines {max}%"));
            }
        }
        if let Some(max) = gates.max_pick
            && self.pick_cost.p99() > max
        {
            failed.push(format!("pick cost: p99 {:?}, above --max-pick {max:?}", self.pick_cost.p99()));
        }
        if let (Some(max), Some(cost)) = (gates.max_update, &self.update_cost)
            && cost.p99() > max
        {
            failed.push(format!("update cost: p99 {:?}, above --max-update {max:?}", cost.p99()));
        }
        failed
    }
}

/// One pass on a fresh instance (as a new worker would start): the
/// backend of every flow, in order; each pick's cost goes to `costs`.
fn replay(slot: &std::sync::Arc<PluginSlot>, mut pool: Vec<BackendState>, opts: &ReplayOptions, costs: &mut Vec<Duration>) -> (Pass, Vec<Option<usize>>) {
    // The engine's fallback: Maglev over the backends that can take flows.
    let inputs: Vec<MaglevInput> = pool.iter().map(|b| MaglevInput { ident: b.id, weight: if b.up { b.weight } else { 0 } }).collect();
    let maglev = Maglev::build(&inputs).ok();
    let mut sched = slot.scheduler();
    // A replay may wait for an instance prepared off the picking thread,
    // which a worker never does: every flow is the plugin's to place.
    sched.wait_ready(&pool, PREPARE_TIMEOUT);
    let mut pass = Pass { flows: vec![0; pool.len()], fallbacks: 0, unplaced: 0 };
    let clients = (opts.flows / 4).max(1) as u64;
    let mut rng = Rng::with_seed(0x5eed);
    // When each open flow closes (in flows started), and its backend.
    let mut closing: std::collections::BinaryHeap<std::cmp::Reverse<(usize, usize)>> = Default::default();
    let placed = (0..opts.flows)
        .map(|i| {
            while let Some(&std::cmp::Reverse((at, b))) = closing.peek()
                && at <= i
            {
                closing.pop();
                pool[b].active = pool[b].active.saturating_sub(1);
            }
            let (key, hash) = new_flow(&mut rng, clients);
            let lifetime = opts.open.map(|open| 1 + rng.usize(..(2 * open).max(1)));
            let started = Instant::now();
            let picked = sched.pick(&key, hash, &pool);
            costs.push(started.elapsed());
            let choice = picked.or_else(|| {
                pass.fallbacks += 1;
                maglev.as_ref().and_then(|m| m.lookup(hash))
            });
            match choice {
                Some(b) => {
                    pass.flows[b] += 1;
                    pool[b].active += 1;
                    if let Some(l) = lifetime {
                        closing.push(std::cmp::Reverse((i + l, b)));
                    }
                }
                None => pass.unplaced += 1,
            }
            choice
        })
        .collect();
    (pass, placed)
}

/// `BATCH_ROUNDS` batches of new flows through `lb_pick_batch`, each
/// over the all-up pool on a fresh instance's rows: the cost per flow of
/// each call.
fn batch_costs(slot: &std::sync::Arc<PluginSlot>, pool: &[BackendState], opts: &ReplayOptions) -> Vec<Duration> {
    let mut sched = slot.scheduler();
    sched.wait_ready(pool, PREPARE_TIMEOUT);
    let mut rng = Rng::with_seed(0xba7c);
    let clients = (opts.flows / 4).max(1) as u64;
    let mut out = vec![None; BATCH_FLOWS];
    (0..BATCH_ROUNDS)
        .map(|_| {
            let flows: Vec<(FlowKey, u64)> = (0..BATCH_FLOWS).map(|_| new_flow(&mut rng, clients)).collect();
            let mut rows = pool.to_vec();
            let started = Instant::now();
            sched.pick_batch(&flows, &mut rows, &mut out);
            started.elapsed() / BATCH_FLOWS as u32
        })
        .collect()
}

/// A new TCP flow to the VIP and its hash: from one of `clients` clients
/// in 198.19.0.0/16, and an ephemeral port (Linux's default range).
fn new_flow(rng: &mut Rng, clients: u64) -> (FlowKey, u64) {
    let c = rng.u64(..clients.max(1));
    let client = IpAddr::from([198, 19, (c >> 8) as u8, c as u8]);
    let key = FlowKey::new(client, IpAddr::from(VIP), rng.u16(32_768..61_000), 443, IpProtocol::TCP);
    (key, key.hash64())
}

/// Longer than any update within the default budget (1 s of CPU).
const PREPARE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn share(part: usize, whole: usize) -> f64 {
    if whole == 0 { 0.0 } else { 100.0 * part as f64 / whole as f64 }
}

impl fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.weights.len();
        match self.open {
            Some(open) => writeln!(f, "plugin {}: {} new flows over {n} backends, about {open} open at once", self.plugin, self.flows)?,
            None => writeln!(f, "plugin {}: {} new flows over {n} backends, none closing", self.plugin, self.flows)?,
        }
        let total_weight: u64 = self.weights.iter().map(|&w| u64::from(w)).sum();
        // Response times and rates only when given: most algorithms ignore them.
        let (rtt, rate) = (self.rtt_us.iter().any(|&r| r > 0), self.rates.iter().any(|&r| r > 0));
        write!(f, "{:>7} {:>7} {:>7}", "backend", "weight", "load")?;
        if rtt {
            write!(f, " {:>9}", "rtt")?;
        }
        if rate {
            write!(f, " {:>12}", "bytes/s")?;
        }
        write!(f, " {:>10} {:>8} {:>8}", "flows", "share", "ideal")?;
        if let Some(fp) = &self.failure {
            write!(f, " | {:>10} {:>8}", format!("{} down", fp.failed.len()), "share")?;
        }
        writeln!(f)?;
        for b in 0..n {
            let flows = self.all_up.flows[b];
            let ideal = if total_weight == 0 { 0.0 } else { 100.0 * f64::from(self.weights[b]) / total_weight as f64 };
            write!(f, "{b:>7} {:>7} {:>7}", self.weights[b], self.loads[b])?;
            if rtt {
                write!(f, " {:>7}us", self.rtt_us[b])?;
            }
            if rate {
                write!(f, " {:>12}", self.rates[b])?;
            }
            write!(f, " {flows:>10} {:>7.2}% {ideal:>7.2}%", share(flows, self.flows))?;
            if let Some(fp) = &self.failure {
                if fp.failed.contains(&b) {
                    write!(f, " | {:>10}", "down")?;
                } else {
                    write!(f, " | {:>10} {:>7.2}%", fp.pass.flows[b], share(fp.pass.flows[b], self.flows))?;
                }
            }
            writeln!(f)?;
        }
        let pass_line = |f: &mut fmt::Formatter<'_>, label: &str, p: &Pass| {
            writeln!(f, "{label}: {} placed by native Maglev (plugin declined or faulted), {} with no backend", p.fallbacks, p.unplaced)
        };
        pass_line(f, "all up", &self.all_up)?;
        if let Some(fp) = &self.failure {
            pass_line(f, "after the failure", &fp.pass)?;
            let list: Vec<String> = fp.failed.iter().map(usize::to_string).collect();
            writeln!(
                f,
                "backend {} down: {} flows remapped ({:.2}%), {} of them from the failed backends ({:.2}%), {} from backends still up ({:.2}%)",
                list.join(", "),
                fp.remapped,
                share(fp.remapped, self.flows),
                fp.remapped_from_failed,
                share(fp.remapped_from_failed, self.flows),
                fp.remapped - fp.remapped_from_failed,
                share(fp.remapped - fp.remapped_from_failed, self.flows),
            )?;
        }
        let kinds: Vec<String> = self.faults_by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
        match &self.last_fault {
            Some(last) => writeln!(f, "plugin faults: {} ({}); last: {last}", self.faults, kinds.join(", "))?,
            None => writeln!(f, "plugin faults: 0")?,
        }
        writeln!(f, "quarantined: {}", if self.quarantined { "yes" } else { "no" })?;
        writeln!(f, "declined: {} of {} picks ({:.2}%)", self.declines, self.picks, share(self.declines as usize, self.picks as usize))?;
        let cost = |f: &mut fmt::Formatter<'_>, label: &str, c: &Cost| {
            let d = Duration::from_nanos;
            writeln!(f, "{label}: p50 {:?}, p99 {:?}, max {:?} over {} calls", d(c.p50_ns), d(c.p99_ns), d(c.max_ns), c.calls)
        };
        cost(f, "pick cost", &self.pick_cost)?;
        match &self.batch_cost {
            Some(c) => cost(f, &format!("batch cost per flow ({BATCH_FLOWS} flows a call)"), c)?,
            None => writeln!(f, "batch cost: no lb_pick_batch (ABI version 1: one call per flow)")?,
        }
        match &self.update_cost {
            Some(c) => cost(f, "update cost (CPU)", c)?,
            None => writeln!(f, "update cost: no lb_update")?,
        }
        match self.failed_gates.as_slice() {
            [] => writeln!(f, "gates: passed"),
            failed => writeln!(f, "gates: FAILED\n  {}", failed.join("\n  ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replayed_flows_come_from_many_clients_and_ports() {
        let opts = ReplayOptions { flows: 4000, ..ReplayOptions::default() };
        let (mut clients, mut ports) = (std::collections::HashSet::new(), std::collections::HashSet::new());
        let mut rng = Rng::with_seed(0x5eed);
        for _ in 0..opts.flows {
            let (key, _) = new_flow(&mut rng, (opts.flows / 4) as u64);
            clients.insert(key.src);
            ports.insert(key.src_port);
        }
        assert!(clients.len() > 800 && ports.len() > 3500, "{} clients, {} ports", clients.len(), ports.len());
    }
}
