//! Synthetic flows through a plugin, for plugin authors (`fulcrum plugin
//! test`): how the flows spread over the backends, and how many move when
//! some backends fail. The plugin runs exactly as on a worker, with the
//! same fallback to native Maglev when it declines or faults.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use fulcrum_dataplane::flow::FlowKey;
use fulcrum_dataplane::flow::key::addr16;
use fulcrum_dataplane::sched::maglev::{MAGLEV_MAX_BACKENDS, Maglev, MaglevInput};
use fulcrum_dataplane::sched::{BackendState, Scheduler};
use fulcrum_dataplane::services::backend_ident;
use fulcrum_dataplane::wire::IpProtocol;

use crate::{HostConfig, LoadError, PluginRuntime, PluginSlot};

/// What to replay. Backends are 198.18.1.0/24 and up, port 80; flows come
/// from distinct clients of 198.19.0.0/16 (then distinct ports) to one
/// TCP VIP, each placed once and then kept open (it counts as an
/// established connection of its backend for the flows after it).
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    pub backends: usize,
    pub flows: usize,
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
}

impl Default for ReplayOptions {
    fn default() -> ReplayOptions {
        ReplayOptions { backends: 8, flows: 10_000, weights: Vec::new(), loads: Vec::new(), rtt_us: Vec::new(), rates: Vec::new(), failures: Vec::new() }
    }
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pass {
    /// Per backend.
    pub flows: Vec<usize>,
    /// Flows the plugin declined or faulted on: native Maglev placed them.
    pub fallbacks: usize,
    /// Flows no backend could take.
    pub unplaced: usize,
}

/// The second pass, with `failed` down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailurePass {
    pub failed: Vec<usize>,
    pub pass: Pass,
    /// Flows whose backend changed from the first pass...
    pub remapped: usize,
    /// ...of which this many had to (their backend failed).
    pub remapped_from_failed: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayReport {
    pub plugin: String,
    pub flows: usize,
    pub weights: Vec<u32>,
    pub loads: Vec<u32>,
    pub rtt_us: Vec<u32>,
    pub rates: Vec<u64>,
    pub all_up: Pass,
    pub failure: Option<FailurePass>,
    /// Plugin faults over both passes.
    pub faults: u64,
}

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
    let slot = PluginSlot::new(format!("replay of {name}"));
    slot.publish(plugin);

    let (all_up, placed) = replay(&slot, pool.clone(), opts.flows);
    let failure = (!opts.failures.is_empty()).then(|| {
        let mut down = pool;
        for &b in &opts.failures {
            down[b].up = false;
        }
        let (pass, moved) = replay(&slot, down, opts.flows);
        let changed = placed.iter().zip(&moved).filter(|(a, b)| a != b);
        let remapped_from_failed = changed.clone().filter(|(a, _)| a.is_some_and(|a| opts.failures.contains(&a))).count();
        FailurePass { failed: opts.failures.clone(), pass, remapped: changed.count(), remapped_from_failed }
    });
    Ok(ReplayReport { plugin: name, flows: opts.flows, weights, loads, rtt_us, rates, all_up, failure, faults: slot.stats().fault_count() })
}

/// One pass on a fresh instance (as a new worker would start): the
/// backend of every flow, in order.
fn replay(slot: &std::sync::Arc<PluginSlot>, mut pool: Vec<BackendState>, flows: usize) -> (Pass, Vec<Option<usize>>) {
    // The engine's fallback: Maglev over the backends that can take flows.
    let inputs: Vec<MaglevInput> = pool.iter().map(|b| MaglevInput { ident: b.id, weight: if b.up { b.weight } else { 0 } }).collect();
    let maglev = Maglev::build(&inputs).ok();
    let mut sched = slot.scheduler();
    // A replay may wait for an instance prepared off the picking thread,
    // which a worker never does: every flow is the plugin's to place.
    sched.wait_ready(&pool, PREPARE_TIMEOUT);
    let mut pass = Pass { flows: vec![0; pool.len()], fallbacks: 0, unplaced: 0 };
    let vip = IpAddr::from([198, 18, 0, 100]);
    let placed = (0..flows)
        .map(|i| {
            let client = IpAddr::from([198, 19, (i >> 8) as u8, i as u8]);
            let key = FlowKey::new(client, vip, 1024 + (i >> 16) as u16, 80, IpProtocol::TCP);
            let hash = key.hash64();
            let choice = sched.pick(&key, hash, &pool).or_else(|| {
                pass.fallbacks += 1;
                maglev.as_ref().and_then(|m| m.lookup(hash))
            });
            match choice {
                Some(b) => {
                    pass.flows[b] += 1;
                    pool[b].active += 1;
                }
                None => pass.unplaced += 1,
            }
            choice
        })
        .collect();
    (pass, placed)
}

/// Longer than any update within the default budget (1 s of CPU).
const PREPARE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn share(part: usize, whole: usize) -> f64 {
    if whole == 0 { 0.0 } else { 100.0 * part as f64 / whole as f64 }
}

impl fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.weights.len();
        writeln!(f, "plugin {}: {} new flows over {n} backends", self.plugin, self.flows)?;
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
        writeln!(f, "plugin faults: {}", self.faults)
    }
}
