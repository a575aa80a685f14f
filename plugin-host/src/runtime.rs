//! The wasmtime engine the plugins run on, and loading a plugin: compile,
//! check it against the ABI, instantiate it once and smoke-test it. All of
//! this happens on the thread that prepares a load, never on a worker; the
//! compile itself on a thread of its own, waited for at most
//! `CompileLimits::timeout`.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use fulcrum_dataplane::flow::FlowKey;
use fulcrum_dataplane::sched::BackendState;
use fulcrum_dataplane::wire::IpProtocol;
use wasmtime::{Config, Engine, ExternType, InstanceAllocationStrategy, Linker, Module, PoolingAllocationConfig, ValType};

use crate::abi;
use crate::config::{CompileLimits, HostConfig};
use crate::error::{Fault, LoadError};
use crate::instance::{Compiled, Live};

/// The wasmtime engine shared by every plugin: one compiler configuration,
/// one pool of instance slots, one epoch ticker.
pub struct PluginRuntime {
    engine: Engine,
    cfg: HostConfig,
    /// Compiles given up on (past `CompileLimits::timeout`) and still
    /// running: while one runs, no other compile starts, so an operator
    /// retrying a hostile module cannot pile compiles up on the cores.
    late_compiles: Arc<AtomicUsize>,
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
        // One memory and one table per plugin instance. Each memory
        // reserves 4 GiB of address space (never backed: growth past
        // memory_limit still traps), so that guard pages stand in for the
        // bounds check on every guest load and store: picks cost 5-50 ns
        // less (perf/RESULTS.md). 128 instances map about 0.5 TiB of the
        // 128 TiB a process may.
        pool.total_core_instances(cfg.max_instances).total_memories(cfg.max_instances).total_tables(cfg.max_instances).max_memory_size(cfg.memory_limit);
        let mut c = Config::new();
        c.consume_fuel(true)
            .epoch_interruption(true)
            .max_wasm_stack(cfg.max_wasm_stack)
            .memory_reservation(1 << 32)
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
        Ok(Arc::new(PluginRuntime { engine, cfg, late_compiles: Arc::default(), _ticker: Ticker { stop, thread: Some(thread) } }))
    }

    pub fn config(&self) -> &HostConfig {
        &self.cfg
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// What the control plane runs before publishing: [`PluginRuntime::compile`]
    /// then [`Plugin::smoke_test`] over the VIP's pool as it is now. Takes
    /// milliseconds: call it off the workers.
    pub fn load(self: &Arc<Self>, name: &str, wasm: &[u8], pool: &[BackendState]) -> Result<Plugin, LoadError> {
        let plugin = self.compile(name, wasm)?;
        plugin.smoke_test(pool)?;
        Ok(plugin)
    }

    /// Compiles `wasm` and checks it against the ABI (ABI.md §3 steps 1-4):
    /// no imports, no start function, the exports and their signatures, a
    /// 32-bit memory within the cap; then one instance for the ABI version,
    /// the state region's range and its header.
    pub fn compile(self: &Arc<Self>, name: &str, wasm: &[u8]) -> Result<Plugin, LoadError> {
        // Checked here rather than left to wasmtime, whose message quotes
        // the first bytes: whatever file an operator names by mistake
        // (a password file), its contents must not reach a log or a client.
        if !wasm.starts_with(WASM_MAGIC) {
            return Err(LoadError::NotWasm);
        }
        if Engine::detect_precompiled(wasm).is_some() {
            return Err(LoadError::Precompiled);
        }
        let module = self.compile_module(wasm)?;
        let shape = check_module(&module, wasm, self.cfg.memory_limit)?;
        let pre = Linker::new(&self.engine).instantiate_pre(&module).map_err(|e| LoadError::Instantiate(format!("{e:#}")))?;
        let module = Compiled { pre, has_update: shape.update, has_health: shape.health, has_batch: shape.batch };
        let cap = Live::new(&self.engine, &self.cfg, &module)?.cap() as u32;
        let inner =
            PluginInner { name: name.to_string(), hash: module_hash(wasm), runtime: Arc::clone(self), module, cap, update_off_worker: AtomicBool::new(false) };
        Ok(Plugin(Arc::new(inner)))
    }
}

impl PluginRuntime {
    /// Checks the module's size and function count against the limits,
    /// then compiles it on a thread of its own and waits for it at most
    /// `CompileLimits::timeout`. A compile given up on cannot be stopped:
    /// it runs to its end and its result is dropped.
    fn compile_module(&self, wasm: &[u8]) -> Result<Module, LoadError> {
        let limits: CompileLimits = self.cfg.compile;
        if wasm.len() > limits.max_module_bytes {
            return Err(LoadError::TooLarge { size: wasm.len(), limit: limits.max_module_bytes });
        }
        let functions = function_count(wasm);
        if functions > u64::from(limits.max_functions) {
            return Err(LoadError::TooManyFunctions { count: functions, limit: limits.max_functions });
        }
        if self.late_compiles.load(Ordering::Acquire) > 0 {
            return Err(LoadError::CompileBusy);
        }
        const RUNNING: u8 = 0;
        const DONE: u8 = 1;
        const ABANDONED: u8 = 2;
        let state = Arc::new(AtomicU8::new(RUNNING));
        let (tx, rx) = mpsc::sync_channel(1);
        let (engine, bytes, late) = (self.engine.clone(), wasm.to_vec(), Arc::clone(&self.late_compiles));
        let thread_state = Arc::clone(&state);
        std::thread::Builder::new()
            .name("wasm-compile".into())
            .spawn(move || {
                let _ = tx.send(Module::from_binary(&engine, &bytes));
                if thread_state.swap(DONE, Ordering::AcqRel) == ABANDONED {
                    late.fetch_sub(1, Ordering::AcqRel);
                }
            })
            .map_err(|e| LoadError::Runtime(format!("cannot start a compile thread: {e}")))?;
        let result = match rx.recv_timeout(limits.timeout) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // Counted before it is marked, so that the thread's
                // decrement never comes first.
                self.late_compiles.fetch_add(1, Ordering::AcqRel);
                if state.swap(ABANDONED, Ordering::AcqRel) == RUNNING {
                    return Err(LoadError::CompileTimeout(limits.timeout));
                }
                // It finished at the deadline: its result is there.
                self.late_compiles.fetch_sub(1, Ordering::AcqRel);
                rx.recv().map_err(|_| LoadError::Runtime("the compile thread ended without a result".into()))?
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err(LoadError::Runtime("the compile thread ended without a result".into())),
        };
        result.map_err(|e| LoadError::Compile(format!("{e:#}")))
    }
}

/// A module's fingerprint, shown with its name: not cryptographic, it
/// only tells an operator's new build from the running one.
pub fn module_hash(wasm: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    wasm.hash(&mut h);
    h.finish()
}

/// The first four bytes of every WebAssembly binary.
const WASM_MAGIC: &[u8] = b"\0asm";

/// Which optional exports a module has.
struct Shape {
    update: bool,
    health: bool,
    batch: bool,
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
    let batch = abi::BATCH_EXPORTS.map(|name| module.get_export(name).is_some());
    if let Some(i) = batch.iter().position(|&has| has != batch[0]) {
        return Err(LoadError::MissingExport(abi::BATCH_EXPORTS[if batch[0] { i } else { 0 }]));
    }
    Ok(Shape { update: module.get_export("lb_update").is_some(), health: module.get_export("lb_health").is_some(), batch: batch[0] })
}

fn all_i32(mut tys: impl Iterator<Item = ValType>) -> bool {
    tys.all(|t| matches!(t, ValType::I32))
}

/// A module's sections, each as its id and contents, from its headers
/// alone: a walk that stops at the first header pointing past the end, so
/// it runs on bytes wasmtime has not validated yet.
fn sections(wasm: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut pos = 8; // magic and version
    std::iter::from_fn(move || {
        let &id = wasm.get(pos)?;
        let (size, len) = leb128_u32(&wasm[pos + 1..]);
        let start = pos + 1 + len;
        let body = wasm.get(start..start.checked_add(size as usize)?)?;
        pos = start + body.len();
        Some((id, body))
    })
}

/// Whether a module (already validated by wasmtime) has a start section:
/// wasmtime's API does not say.
fn has_start_section(wasm: &[u8]) -> bool {
    const START: u8 = 8;
    sections(wasm).any(|(id, _)| id == START)
}

/// How many functions a module defines, as its function section declares
/// (read before compiling: what compile time grows with); 0 if it has
/// none or it is malformed, which compiling then refuses.
fn function_count(wasm: &[u8]) -> u64 {
    const FUNCTION: u8 = 3;
    sections(wasm).find(|(id, _)| *id == FUNCTION).map_or(0, |(_, body)| u64::from(leb128_u32(body).0))
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
    pub hash: u64,
    pub runtime: Arc<PluginRuntime>,
    pub module: Compiled,
    pub cap: u32,
    /// Set by the smoke test when `lb_update` took longer than a worker
    /// may spend on it.
    pub update_off_worker: AtomicBool,
}

impl Plugin {
    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub fn hash(&self) -> u64 {
        self.0.hash
    }

    /// Whether its `lb_update` runs on the slot's plugin thread only (see
    /// `slot`): the smoke test's took more than `worker_update_fuel` or
    /// `worker_update_time`.
    pub fn update_off_worker(&self) -> bool {
        self.0.update_off_worker.load(Ordering::Relaxed)
    }

    /// Backend rows the plugin holds: the largest pool it can serve.
    pub fn capacity(&self) -> usize {
        self.0.cap as usize
    }

    /// Whether the plugin exports a health policy (`lb_health`).
    pub fn has_health_policy(&self) -> bool {
        self.0.module.has_health
    }

    /// Whether the plugin has the batch entry point (`lb_pick_batch`, ABI
    /// version 2).
    pub fn has_batch(&self) -> bool {
        self.0.module.has_batch
    }

    /// A fresh instance of this plugin, its state region checked.
    pub(crate) fn instantiate(&self) -> Result<Live, LoadError> {
        Live::new(self.0.runtime.engine(), self.0.runtime.config(), &self.0.module)
    }

    pub fn runtime(&self) -> &Arc<PluginRuntime> {
        &self.0.runtime
    }

    /// The CPU time of `lb_update` over `pool` on a fresh instance,
    /// `rounds` times, one backend's weight changed before each (as a
    /// placement change would), with the plugin thread's budget; empty if
    /// the plugin has no `lb_update`.
    pub fn update_costs(&self, pool: &[BackendState], rounds: usize) -> Result<Vec<Duration>, Fault> {
        if !self.0.module.has_update || pool.is_empty() {
            return Ok(Vec::new());
        }
        let mut live = self.instantiate().map_err(|e| Fault::Instantiate(e.to_string()))?;
        let mut rows = pool.to_vec();
        let budget = self.0.runtime.config().update_budget();
        (0..rounds)
            .map(|r| {
                let row = &mut rows[r % pool.len()];
                row.weight = if row.weight == pool[r % pool.len()].weight { row.weight.saturating_add(1) } else { pool[r % pool.len()].weight };
                live.measure_update(&rows, budget).map(|(_, took)| took)
            })
            .collect()
    }

    /// ABI.md §3 step 5 on a fresh instance: the pool fits, all rows
    /// written, `lb_update` (timed: it tells where later updates run), and
    /// one `lb_pick` of a synthetic flow must answer -1 or an eligible row.
    pub fn smoke_test(&self, pool: &[BackendState]) -> Result<(), LoadError> {
        if pool.len() > self.capacity() {
            return Err(LoadError::Capacity { cap: self.0.cap, pool: pool.len() });
        }
        let cfg = self.0.runtime.config();
        let mut live = self.instantiate()?;
        let (fuel, took) = live.measure_update(pool, cfg.update_budget()).map_err(LoadError::Smoke)?;
        if fuel > cfg.worker_update_fuel || took > cfg.worker_update_time {
            self.0.update_off_worker.store(true, Ordering::Relaxed);
        }
        let flow = FlowKey::new([198, 18, 0, 1].into(), [198, 18, 0, 100].into(), 40_000, 80, IpProtocol::TCP);
        live.sync(pool, Some(&abi::flow_record(&flow, flow.hash64())), Some(cfg.update_budget())).map_err(LoadError::Smoke)?;
        live.pick(cfg, pool).map_err(LoadError::Smoke)?;
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
    fn functions_are_counted_from_the_function_section() {
        let header = b"\0asm\x01\0\0\0";
        // A type section, then a function section declaring 300 functions
        // (LEB128 0xac 0x02) whose indexes are cut short.
        let module = [&header[..], &[1, 4, 1, 0x60, 0, 0], &[3, 4, 0xac, 0x02, 0, 0]].concat();
        assert_eq!(function_count(&module), 300);
        // A header that points past the end stops the walk.
        assert_eq!(function_count(&module[..module.len() - 1]), 0);
        assert_eq!(function_count(header), 0);
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
