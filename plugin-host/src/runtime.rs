//! The wasmtime engine the plugins run on, and loading a plugin: compile,
//! check it against the ABI, instantiate it once and smoke-test it. All of
//! this happens on the control thread, never on a worker.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use fulcrum_dataplane::flow::FlowKey;
use fulcrum_dataplane::sched::BackendState;
use fulcrum_dataplane::wire::IpProtocol;
use wasmtime::{
    Config, Engine, ExternType, InstanceAllocationStrategy, InstancePre, Linker, Module, PoolingAllocationConfig, StoreLimits, StoreLimitsBuilder, ValType,
};

use crate::abi::{self, ABI_VERSION};
use crate::instance::{Fault, Live, Sandbox};

/// Limits and budgets of the plugin sandbox. The defaults follow ABI.md's
/// measurements; every figure applies per instance.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// Instances alive at once across every plugin, worker and load test:
    /// the pooling allocator's slot count. Each reserves `memory_limit` of
    /// address space (plus a guard page), so this many times that is what
    /// the process maps. Size it as workers × VIPs with a plugin × 2 (a swap
    /// overlaps old and new) plus a few for loading and health policies.
    pub max_instances: u32,
    /// Most linear memory an instance may have. Growing past it traps (a
    /// fault), rather than failing quietly. The SDK's modules start below
    /// 2 MiB.
    pub memory_limit: usize,
    /// Most native stack the guest may use per call.
    pub max_wasm_stack: usize,
    /// Fuel per `lb_pick`: `pick_fuel_base + pick_fuel_per_row × n`.
    pub pick_fuel_base: u64,
    pub pick_fuel_per_row: u64,
    /// Fuel per `lb_update` (the maglev plugin's rebuild needs ~27 M at 1024 rows).
    pub update_fuel: u64,
    /// Fuel per `lb_health` and per set-up call (`lb_abi_version`, ...).
    pub small_fuel: u64,
    /// Period of the epoch ticker, which drives the CPU-time backstop below.
    pub epoch_tick: Duration,
    /// Most CPU time a call may use, a backstop behind fuel: fuel bounds
    /// the instructions a call runs, this also bounds what fuel does not
    /// count (one `memory.fill` of many MiB is one unit). CPU time of the
    /// worker thread, not wall-clock time, so that a worker descheduled in
    /// mid-call (common on a loaded machine) is not taken for a hung plugin.
    /// Checked at each epoch tick from the first one inside the call, so a
    /// call ends within `epoch_tick` + this much CPU time.
    pub pick_cpu_limit: Duration,
    pub update_cpu_limit: Duration,
    /// Quarantine after this many faults of one published version within
    /// `quarantine_window` (a sliding window).
    pub quarantine_faults: u32,
    pub quarantine_window: Duration,
}

impl Default for HostConfig {
    fn default() -> HostConfig {
        HostConfig {
            max_instances: 128,
            memory_limit: 16 << 20,
            max_wasm_stack: 256 << 10,
            pick_fuel_base: 10_000,
            pick_fuel_per_row: 100,
            update_fuel: 50_000_000,
            small_fuel: 10_000,
            epoch_tick: Duration::from_millis(1),
            pick_cpu_limit: Duration::from_millis(10),
            update_cpu_limit: Duration::from_secs(1),
            quarantine_faults: 8,
            quarantine_window: Duration::from_secs(10),
        }
    }
}

/// Fuel and CPU time for one call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Budget {
    pub fuel: u64,
    pub cpu: Duration,
}

impl HostConfig {
    pub(crate) fn pick_budget(&self, n: usize) -> Budget {
        let fuel = self.pick_fuel_base.saturating_add(self.pick_fuel_per_row.saturating_mul(n as u64));
        Budget { fuel, cpu: self.pick_cpu_limit }
    }

    pub(crate) fn update_budget(&self) -> Budget {
        Budget { fuel: self.update_fuel, cpu: self.update_cpu_limit }
    }

    pub(crate) fn small_budget(&self) -> Budget {
        Budget { fuel: self.small_fuel, cpu: self.pick_cpu_limit }
    }
}

/// Why a plugin cannot be loaded. The messages name what is wrong, for
/// the operator who ran `fulcrum plugin load`.
#[derive(Debug)]
pub enum LoadError {
    /// The wasmtime engine could not be set up with this configuration.
    Runtime(String),
    Io {
        path: String,
        error: std::io::Error,
    },
    /// Not a valid WebAssembly core module (or one wasmtime cannot compile).
    Compile(String),
    Precompiled,
    Import {
        module: String,
        name: String,
    },
    StartFunction,
    MissingExport(&'static str),
    UnknownExport(String),
    Signature {
        name: &'static str,
        found: String,
        expected: String,
    },
    Memory(String),
    AbiVersion(u32),
    StateRegion(String),
    Header(String),
    Capacity {
        cap: u32,
        pool: usize,
    },
    Instantiate(String),
    /// A call while loading or smoke-testing failed.
    Smoke(Fault),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Runtime(e) => write!(f, "cannot set up the plugin runtime: {e}"),
            LoadError::Io { path, error } => write!(f, "{path}: {error}"),
            LoadError::Compile(e) => write!(f, "not a valid WebAssembly core module: {e}"),
            LoadError::Precompiled => f.write_str("precompiled (.cwasm) modules are not accepted: load the .wasm file"),
            LoadError::Import { module, name } => {
                write!(f, "plugin imports `{module}.{name}`: plugins may import nothing (no WASI, no host functions)")
            }
            LoadError::StartFunction => f.write_str("plugin has a start function, which the ABI forbids"),
            LoadError::MissingExport(name) => write!(f, "plugin does not export `{name}`"),
            LoadError::UnknownExport(name) => {
                write!(f, "plugin exports unknown function `{name}` (ABI v1 functions: {})", abi::EXPORTS.map(|e| e.name).join(", "))
            }
            LoadError::Signature { name, found, expected } => write!(f, "plugin export `{name}` has type {found}, the ABI says {expected}"),
            LoadError::Memory(e) => write!(f, "plugin memory: {e}"),
            LoadError::AbiVersion(v) => write!(f, "plugin abi version {v}, this host speaks {ABI_VERSION}"),
            LoadError::StateRegion(e) => write!(f, "plugin state region: {e}"),
            LoadError::Header(e) => write!(f, "plugin state header: {e}"),
            LoadError::Capacity { cap, pool } => write!(f, "plugin holds {cap} backend rows, the VIP's pool has {pool}"),
            LoadError::Instantiate(e) => write!(f, "cannot instantiate the plugin: {e}"),
            LoadError::Smoke(fault) => write!(f, "plugin failed its smoke test: {fault}"),
        }
    }
}

impl std::error::Error for LoadError {}

/// The wasmtime engine shared by every plugin: one compiler configuration,
/// one pool of instance slots, one epoch ticker.
pub struct PluginRuntime {
    engine: Engine,
    cfg: HostConfig,
    /// Stops (and joins) the ticker when the last plugin is gone.
    _ticker: Ticker,
}

impl fmt::Debug for PluginRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginRuntime").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

/// Advances the engine's epoch every `epoch_tick`. One thread for all
/// plugins: an epoch check in guest code is a load and a compare, far
/// cheaper than reading a clock.
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl PluginRuntime {
    pub fn new(cfg: HostConfig) -> Result<Arc<PluginRuntime>, LoadError> {
        let mut pool = PoolingAllocationConfig::new();
        // One memory and one table per plugin instance; memories reserve
        // only what the cap allows, so the bounds checks are explicit but
        // the address space stays at max_instances × memory_limit.
        pool.total_core_instances(cfg.max_instances).total_memories(cfg.max_instances).total_tables(cfg.max_instances).max_memory_size(cfg.memory_limit);
        let mut c = Config::new();
        c.consume_fuel(true)
            .epoch_interruption(true)
            .max_wasm_stack(cfg.max_wasm_stack)
            .memory_reservation(cfg.memory_limit as u64)
            .memory_reservation_for_growth(0)
            // Traps are contained, not debugged: skip capturing backtraces.
            .wasm_backtrace_max_frames(None)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&c).map_err(|e| LoadError::Runtime(format!("{e:#}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (engine, stop, tick) = (engine.clone(), Arc::clone(&stop), cfg.epoch_tick);
            std::thread::Builder::new()
                .name("wasm-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| LoadError::Runtime(format!("cannot start the epoch ticker: {e}")))?
        };
        Ok(Arc::new(PluginRuntime { engine, cfg, _ticker: Ticker { stop, thread: Some(thread) } }))
    }

    pub fn config(&self) -> &HostConfig {
        &self.cfg
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Reads and loads a `.wasm` file (see [`PluginRuntime::load`]).
    pub fn load_file(self: &Arc<Self>, path: &Path, pool: &[BackendState]) -> Result<Plugin, LoadError> {
        let wasm = std::fs::read(path).map_err(|error| LoadError::Io { path: path.display().to_string(), error })?;
        let name = path.file_stem().map_or_else(|| path.display().to_string(), |s| s.to_string_lossy().into_owned());
        self.load(&name, &wasm, pool)
    }

    /// What the control plane runs before publishing: [`PluginRuntime::compile`]
    /// then [`Plugin::smoke_test`] over the VIP's pool as it is now. Takes
    /// milliseconds: call it off the workers.
    pub fn load(self: &Arc<Self>, name: &str, wasm: &[u8], pool: &[BackendState]) -> Result<Plugin, LoadError> {
        let plugin = self.compile(name, wasm)?;
        plugin.smoke_test(pool)?;
        Ok(plugin)
    }

    /// Compiles `wasm` and checks it against ABI v1 (ABI.md §3 steps 1-4):
    /// no imports, no start function, the exports and their signatures, a
    /// 32-bit memory within the cap; then one instance for the ABI version,
    /// the state region's range and its header.
    pub fn compile(self: &Arc<Self>, name: &str, wasm: &[u8]) -> Result<Plugin, LoadError> {
        if Engine::detect_precompiled(wasm).is_some() {
            return Err(LoadError::Precompiled);
        }
        let module = Module::from_binary(&self.engine, wasm).map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        let shape = check_module(&module, wasm, self.cfg.memory_limit)?;
        let pre = Linker::new(&self.engine).instantiate_pre(&module).map_err(|e| LoadError::Instantiate(format!("{e:#}")))?;
        let mut plugin = PluginInner { name: name.to_string(), runtime: Arc::clone(self), pre, cap: 0, has_update: shape.update, has_health: shape.health };
        plugin.cap = Live::new(&plugin)?.cap() as u32;
        Ok(Plugin(Arc::new(plugin)))
    }
}

/// Which optional exports a module has.
struct Shape {
    update: bool,
    health: bool,
}

/// ABI.md §1: imports, start function, exports and their signatures, and
/// a 32-bit memory the cap can hold.
fn check_module(module: &Module, wasm: &[u8], memory_limit: usize) -> Result<Shape, LoadError> {
    if let Some(i) = module.imports().next() {
        return Err(LoadError::Import { module: i.module().to_string(), name: i.name().to_string() });
    }
    if has_start_section(wasm) {
        return Err(LoadError::StartFunction);
    }
    match module.get_export("memory") {
        Some(ExternType::Memory(m)) => {
            if m.is_64() || m.is_shared() {
                return Err(LoadError::Memory("`memory` must be a 32-bit, unshared memory".into()));
            }
            let initial = m.minimum().saturating_mul(m.page_size());
            if initial > memory_limit as u64 {
                return Err(LoadError::Memory(format!("starts at {initial} bytes, above this host's cap of {memory_limit}")));
            }
        }
        _ => return Err(LoadError::MissingExport("memory")),
    }
    for export in module.exports() {
        let ExternType::Func(ty) = export.ty() else { continue };
        let Some(want) = abi::EXPORTS.iter().find(|e| e.name == export.name()) else {
            return Err(LoadError::UnknownExport(export.name().to_string()));
        };
        if ty.params().len() != want.params || ty.results().len() != want.results || !all_i32(ty.params()) || !all_i32(ty.results()) {
            let list = |tys: Vec<String>| format!("({})", tys.join(", "));
            let found = format!("{} -> {}", list(ty.params().map(|t| t.to_string()).collect()), list(ty.results().map(|t| t.to_string()).collect()));
            let expected = format!("{} -> {}", list(vec!["i32".into(); want.params]), list(vec!["i32".into(); want.results]));
            return Err(LoadError::Signature { name: want.name, found, expected });
        }
    }
    if let Some(missing) = abi::EXPORTS.iter().find(|e| e.required && module.get_export(e.name).is_none()) {
        return Err(LoadError::MissingExport(missing.name));
    }
    Ok(Shape { update: module.get_export("lb_update").is_some(), health: module.get_export("lb_health").is_some() })
}

fn all_i32(mut tys: impl Iterator<Item = ValType>) -> bool {
    tys.all(|t| matches!(t, ValType::I32))
}

/// Whether a module (already validated by wasmtime) has a start section:
/// wasmtime's API does not say, and it is one walk over the section
/// headers.
fn has_start_section(wasm: &[u8]) -> bool {
    const START: u8 = 8;
    let mut pos = 8; // magic and version
    while let Some(&id) = wasm.get(pos) {
        let (size, len) = leb128_u32(&wasm[pos + 1..]);
        if id == START {
            return true;
        }
        pos += 1 + len + size as usize;
    }
    false
}

/// An unsigned LEB128 (at most 5 bytes): the value and its length.
fn leb128_u32(b: &[u8]) -> (u32, usize) {
    let mut value = 0u32;
    for (i, &byte) in b.iter().take(5).enumerate() {
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return (value, i + 1);
        }
    }
    (value, b.len().min(5))
}

/// A compiled, validated plugin, ready to be instantiated on any worker
/// (cheap to clone: one `Arc`).
#[derive(Clone)]
pub struct Plugin(pub(crate) Arc<PluginInner>);

pub(crate) struct PluginInner {
    pub name: String,
    pub runtime: Arc<PluginRuntime>,
    pub pre: InstancePre<Sandbox>,
    pub cap: u32,
    pub has_update: bool,
    pub has_health: bool,
}

impl PluginInner {
    pub fn store_limits(&self) -> StoreLimits {
        StoreLimitsBuilder::new().memory_size(self.runtime.cfg.memory_limit).memories(1).tables(1).instances(1).trap_on_grow_failure(true).build()
    }
}

impl Plugin {
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Backend rows the plugin holds: the largest pool it can serve.
    pub fn capacity(&self) -> usize {
        self.0.cap as usize
    }

    /// Whether the plugin exports a health policy (`lb_health`).
    pub fn has_health_policy(&self) -> bool {
        self.0.has_health
    }

    pub fn runtime(&self) -> &Arc<PluginRuntime> {
        &self.0.runtime
    }

    /// ABI.md §3 step 5 on a fresh instance: the pool fits, all rows
    /// written, `lb_update`, and one `lb_pick` of a synthetic flow must
    /// answer -1 or an eligible row.
    pub fn smoke_test(&self, pool: &[BackendState]) -> Result<(), LoadError> {
        if pool.len() > self.capacity() {
            return Err(LoadError::Capacity { cap: self.0.cap, pool: pool.len() });
        }
        let flow = FlowKey::new([198, 18, 0, 1].into(), [198, 18, 0, 100].into(), 40_000, 80, IpProtocol::TCP);
        Live::new(&self.0)?.pick(self.0.runtime.config(), &flow, flow.hash64(), pool).map_err(LoadError::Smoke)?;
        Ok(())
    }
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin").field("name", &self.0.name).field("cap", &self.0.cap).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_sections_are_found_by_walking_the_headers() {
        let header = b"\0asm\x01\0\0\0";
        // A type section (id 1, 4 bytes) then a start section (id 8).
        let with_start = [&header[..], &[1, 4, 1, 0x60, 0, 0], &[8, 1, 0]].concat();
        assert!(has_start_section(&with_start));
        assert!(!has_start_section(&with_start[..14]));
        assert!(!has_start_section(header));
    }

    #[test]
    fn leb128_reads_multi_byte_sizes() {
        assert_eq!(leb128_u32(&[0xe5, 0x8e, 0x26]), (624_485, 3));
        assert_eq!(leb128_u32(&[0x7f, 0xff]), (127, 1));
    }

    #[test]
    fn pick_fuel_grows_with_the_pool_and_saturates() {
        let cfg = HostConfig::default();
        assert_eq!(cfg.pick_budget(8).fuel, 10_800);
        assert_eq!(cfg.pick_budget(1024).fuel, 112_400);
        assert_eq!(cfg.pick_budget(usize::MAX).fuel, u64::MAX);
    }
}
