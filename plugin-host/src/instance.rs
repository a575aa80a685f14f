//! One live plugin instance: a store, the typed exports, the state region
//! and the host's copy of the rows it last wrote there. Every call goes
//! through [`call`], which sets the fuel and the CPU-time budget first.

use std::time::Duration;

use fulcrum_dataplane::sched::BackendState;
use wasmtime::{Engine, InstancePre, Memory, Store, StoreContextMut, StoreLimits, StoreLimitsBuilder, TypedFunc, UpdateDeadline, WasmParams, WasmResults};

use crate::abi::{self, ABI_VERSION, HEALTH_UP, HealthArgs, MAGIC, Row};
use crate::config::{Budget, HostConfig};
use crate::error::{Fault, LoadError};

/// A compiled module, pre-linked, and which optional exports it has.
pub(crate) struct Compiled {
    pub pre: InstancePre<Sandbox>,
    pub has_update: bool,
    pub has_health: bool,
    pub has_batch: bool,
}

struct Exports {
    memory: Memory,
    pick: TypedFunc<i32, i32>,
    update: Option<TypedFunc<i32, ()>>,
    health: Option<TypedFunc<HealthArgs, i32>>,
    pick_batch: Option<TypedFunc<(i32, i32), i32>>,
}

/// Per-store data: the memory cap and the current call's CPU budget.
pub(crate) struct Sandbox {
    limits: StoreLimits,
    cpu_limit: Duration,
    /// The thread's CPU time at the first epoch tick inside the call.
    cpu_mark: Option<Duration>,
}

/// Runs when the epoch ticks during a call: marks the thread's CPU time at
/// the first tick, interrupts once the call has used its limit since.
fn on_epoch_tick(mut ctx: StoreContextMut<'_, Sandbox>) -> wasmtime::Result<UpdateDeadline> {
    // A system call: read only when the epoch ticks during a call, never
    // per call.
    let now = fulcrum_io::thread_cpu_time();
    let s = ctx.data_mut();
    match s.cpu_mark {
        None if s.cpu_limit.is_zero() => Ok(UpdateDeadline::Interrupt),
        Some(mark) if now.saturating_sub(mark) >= s.cpu_limit => Ok(UpdateDeadline::Interrupt),
        Some(_) => Ok(UpdateDeadline::Continue(1)),
        None => {
            s.cpu_mark = Some(now);
            Ok(UpdateDeadline::Continue(1))
        }
    }
}

/// Every guest call: fuel and the CPU budget first, so that no call, not
/// even the first one on a fresh store, runs unbounded.
fn call<P: WasmParams, R: WasmResults>(store: &mut Store<Sandbox>, f: &TypedFunc<P, R>, args: P, budget: Budget, name: &'static str) -> Result<R, Fault> {
    let trap = |error| Fault::Trap { call: name, error };
    store.set_fuel(budget.fuel).map_err(trap)?;
    let s = store.data_mut();
    (s.cpu_limit, s.cpu_mark) = (budget.cpu, None);
    store.set_epoch_deadline(1);
    f.call(store, args).map_err(trap)
}

pub(crate) struct Live {
    store: Store<Sandbox>,
    exports: Exports,
    /// Address of the state region (range-checked at instantiation).
    region: usize,
    cap: usize,
    /// What rows `0..rows.len()` of this instance's memory hold.
    rows: Vec<Row>,
    /// `lb_update` must run before the next pick.
    update_owed: bool,
    /// Address and capacity (flows) of the batch region; 0 without one.
    batch: usize,
    batch_cap: usize,
}

impl Live {
    /// Instantiates `module` and checks the state region (ABI.md §3 steps
    /// 2-4).
    pub fn new(engine: &Engine, cfg: &HostConfig, module: &Compiled) -> Result<Live, LoadError> {
        let limits = StoreLimitsBuilder::new().memory_size(cfg.memory_limit).memories(1).tables(1).instances(1).trap_on_grow_failure(true).build();
        let sandbox = Sandbox { limits, cpu_limit: Duration::ZERO, cpu_mark: None };
        let mut store = Store::new(engine, sandbox);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_callback(on_epoch_tick);
        // Instantiation runs no guest code (no start function); every call
        // sets its own fuel and deadline.
        store.set_fuel(0).map_err(|e| LoadError::Instantiate(e.to_string()))?;
        store.set_epoch_deadline(1);
        let instance = module.pre.instantiate(&mut store).map_err(|e| LoadError::Instantiate(format!("{e:#}")))?;
        let typed = |store: &mut Store<Sandbox>, name| instance.get_typed_func::<(), i32>(store, name);
        let bad = |e: wasmtime::Error| LoadError::Instantiate(format!("{e:#}"));
        let version = typed(&mut store, "lb_abi_version").map_err(bad)?;
        let state_ptr = typed(&mut store, "lb_state_ptr").map_err(bad)?;
        let state_cap = typed(&mut store, "lb_state_cap").map_err(bad)?;
        let exports = Exports {
            memory: instance.get_memory(&mut store, "memory").ok_or(LoadError::MissingExport("memory"))?,
            pick: instance.get_typed_func(&mut store, "lb_pick").map_err(bad)?,
            update: if module.has_update { Some(instance.get_typed_func(&mut store, "lb_update").map_err(bad)?) } else { None },
            health: if module.has_health { Some(instance.get_typed_func(&mut store, "lb_health").map_err(bad)?) } else { None },
            pick_batch: if module.has_batch { Some(instance.get_typed_func(&mut store, "lb_pick_batch").map_err(bad)?) } else { None },
        };
        let batch_exports =
            if module.has_batch { Some((typed(&mut store, "lb_batch_ptr").map_err(bad)?, typed(&mut store, "lb_batch_cap").map_err(bad)?)) } else { None };
        let mut live = Live { store, exports, region: 0, cap: 0, rows: Vec::new(), update_owed: true, batch: 0, batch_cap: 0 };
        let small = cfg.small_budget();
        let version = call(&mut live.store, &version, (), small, "lb_abi_version").map_err(LoadError::Smoke)? as u32;
        if version == 0 || version > ABI_VERSION {
            return Err(LoadError::AbiVersion(version));
        }
        match (version >= abi::BATCH_VERSION, module.has_batch) {
            (true, false) => return Err(LoadError::MissingExport("lb_pick_batch")),
            (false, true) => return Err(LoadError::TooNew { name: "lb_pick_batch", version }),
            _ => {}
        }
        let ptr = u64::from(call(&mut live.store, &state_ptr, (), small, "lb_state_ptr").map_err(LoadError::Smoke)? as u32);
        let cap = call(&mut live.store, &state_cap, (), small, "lb_state_cap").map_err(LoadError::Smoke)? as u32;
        live.check_region(ptr, cap, version)?;
        live.region = ptr as usize;
        live.cap = cap as usize;
        if let Some((batch_ptr, batch_cap)) = batch_exports {
            let ptr = u64::from(call(&mut live.store, &batch_ptr, (), small, "lb_batch_ptr").map_err(LoadError::Smoke)? as u32);
            let cap = call(&mut live.store, &batch_cap, (), small, "lb_batch_cap").map_err(LoadError::Smoke)? as u32;
            live.check_batch_region(ptr, cap)?;
            (live.batch, live.batch_cap) = (ptr as usize, cap as usize);
        }
        Ok(live)
    }

    /// ABI.md §3 step 4, in 64-bit arithmetic. Memory never shrinks and
    /// the region never moves, so this holds for the instance's life.
    fn check_region(&self, ptr: u64, cap: u32, version: u32) -> Result<(), LoadError> {
        if !ptr.is_multiple_of(8) {
            return Err(LoadError::StateRegion(format!("address {ptr:#x} is not 8-byte aligned")));
        }
        if cap == 0 {
            return Err(LoadError::StateRegion("lb_state_cap() is 0: no room for a backend".into()));
        }
        let memory = self.exports.memory.data(&self.store);
        let end = ptr + abi::region_len(cap);
        if end > memory.len() as u64 {
            return Err(LoadError::StateRegion(format!("{ptr:#x}..{end:#x} ({cap} rows) is past the end of memory ({} bytes)", memory.len())));
        }
        let at = ptr as usize;
        let mut bytes = [0u8; abi::HEADER_SIZE];
        bytes.copy_from_slice(&memory[at..at + abi::HEADER_SIZE]);
        let header = abi::Header::read(&bytes);
        let want = abi::Header { magic: MAGIC, abi_version: version, cap, row_size: abi::ROW_SIZE as u32 };
        if header != want {
            return Err(LoadError::Header(format!(
                "read magic {:#010x}, version {}, cap {}, row size {}; expected magic {MAGIC:#010x}, version {version}, cap {cap}, row size {}",
                header.magic,
                header.abi_version,
                header.cap,
                header.row_size,
                abi::ROW_SIZE
            )));
        }
        Ok(())
    }

    /// ABI.md §3 step 4, version 2: the batch region, aligned and within
    /// memory (64-bit arithmetic: no answer overflows it).
    fn check_batch_region(&self, ptr: u64, cap: u32) -> Result<(), LoadError> {
        let bad = |e: String| Err(LoadError::StateRegion(format!("batch region: {e}")));
        let end = ptr + abi::batch_len(cap);
        let memory = self.exports.memory.data(&self.store).len() as u64;
        if !ptr.is_multiple_of(8) {
            return bad(format!("address {ptr:#x} is not 8-byte aligned"));
        }
        if cap == 0 {
            return bad("lb_batch_cap() is 0: no room for a flow".into());
        }
        if end > memory {
            return bad(format!("{ptr:#x}..{end:#x} ({cap} flows) is past the end of memory ({memory} bytes)"));
        }
        Ok(())
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Flows one `pick_batch` call takes; 0 when the plugin has no batch
    /// entry point.
    pub fn batch_cap(&self) -> usize {
        self.batch_cap
    }

    /// Brings rows `0..n` of guest memory up to date with `backends`,
    /// writing only the rows that changed, and the flow record if given;
    /// then, if the set, a weight or a health state changed (ABI.md §2,
    /// §5), runs `lb_update` within `update`, or with `None` leaves it owed.
    /// Whether an update is still owed. The caller ensures `n <= cap`.
    pub fn sync(&mut self, backends: &[BackendState], flow: Option<&[u8; abi::FLOW_SIZE]>, update: Option<Budget>) -> Result<bool, Fault> {
        let n = backends.len();
        if n != self.rows.len() {
            self.update_owed = true;
            self.rows.resize(n, Row::UNWRITTEN);
        }
        let start = self.region;
        // One borrow of guest memory per pick: looking it up is not free.
        let memory = self.exports.memory.data_mut(&mut self.store);
        let Some(region) = memory.get_mut(start..start + abi::ROWS_OFFSET + abi::ROW_SIZE * n) else {
            return Err(Fault::Instantiate("state region outside memory".into()));
        };
        if let Some(record) = flow {
            region[abi::FLOW_OFFSET..abi::FLOW_OFFSET + abi::FLOW_SIZE].copy_from_slice(record);
        }
        let rows = region[abi::ROWS_OFFSET..].chunks_exact_mut(abi::ROW_SIZE);
        for ((b, old), dst) in backends.iter().zip(self.rows.iter_mut()).zip(rows) {
            let row = Row::new(b);
            if row == *old {
                continue;
            }
            self.update_owed |= old.placement_differs(&row);
            *old = row;
            row.write(dst);
        }
        if self.update_owed {
            let Some(lb_update) = &self.exports.update else {
                self.update_owed = false;
                return Ok(false);
            };
            let Some(budget) = update else { return Ok(true) };
            call(&mut self.store, lb_update, n as i32, budget, "lb_update")?;
            self.update_owed = false;
        }
        Ok(false)
    }

    /// The fuel and the CPU time `lb_update` used over `backends`, in a
    /// call within `budget` (the smoke test's measure).
    pub fn measure_update(&mut self, backends: &[BackendState], budget: Budget) -> Result<(u64, Duration), Fault> {
        self.sync(backends, None, None)?;
        let Some(lb_update) = &self.exports.update else { return Ok((0, Duration::ZERO)) };
        let started = fulcrum_io::thread_cpu_time();
        call(&mut self.store, lb_update, backends.len() as i32, budget, "lb_update")?;
        let took = fulcrum_io::thread_cpu_time().saturating_sub(started);
        self.update_owed = false;
        Ok((budget.fuel.saturating_sub(self.store.get_fuel().unwrap_or(0)), took))
    }

    /// One decision (ABI.md §4) over rows synced first: `Ok(None)` when
    /// the plugin declines.
    pub fn pick(&mut self, cfg: &HostConfig, backends: &[BackendState]) -> Result<Option<usize>, Fault> {
        let n = backends.len();
        match call(&mut self.store, &self.exports.pick, n as i32, cfg.pick_budget(n), "lb_pick")? {
            -1 => Ok(None),
            r if r >= 0 && (r as usize) < n => {
                let i = r as usize;
                if backends[i].usable() { Ok(Some(i)) } else { Err(Fault::Ineligible { index: i }) }
            }
            index => Err(Fault::BadIndex { index, n }),
        }
    }

    /// Decisions for `flows` (at most `batch_cap`) in one `lb_pick_batch`
    /// call over rows synced first, into `out`: an index, `None` for a
    /// decline, or the flow's fault (a bad or ineligible index). A fault of
    /// the call itself (a trap, the budget, a bad count) is returned and
    /// leaves `out` alone. The guest counts each pick on its row: the
    /// host's copy of those rows is read back, so the next sync rewrites
    /// them.
    pub fn pick_batch(
        &mut self,
        cfg: &HostConfig,
        backends: &[BackendState],
        flows: &[[u8; abi::FLOW_SIZE]],
        out: &mut [Result<Option<usize>, Fault>],
    ) -> Result<(), Fault> {
        let Some(lb_pick_batch) = &self.exports.pick_batch else { return Err(Fault::Instantiate("no lb_pick_batch".into())) };
        let (n, m) = (backends.len(), flows.len().min(self.batch_cap));
        let memory = self.exports.memory.data_mut(&mut self.store);
        let Some(region) = memory.get_mut(self.batch..self.batch + abi::FLOW_SIZE * m) else {
            return Err(Fault::Instantiate("batch region outside memory".into()));
        };
        for (dst, record) in region.chunks_exact_mut(abi::FLOW_SIZE).zip(flows) {
            dst.copy_from_slice(record);
        }
        let one = cfg.pick_budget(n);
        let budget = Budget { fuel: one.fuel.saturating_mul(m as u64), cpu: one.cpu };
        let decided = call(&mut self.store, lb_pick_batch, (n as i32, m as i32), budget, "lb_pick_batch")?;
        if decided != m as i32 {
            return Err(Fault::BatchCount { decided, flows: m });
        }
        let (answers, rows) = (self.batch + abi::FLOW_SIZE * self.batch_cap, self.region + abi::ROWS_OFFSET);
        let memory = self.exports.memory.data(&self.store);
        let (Some(answers), Some(rows)) = (memory.get(answers..answers + 4 * m), memory.get(rows..rows + abi::ROW_SIZE * n)) else {
            return Err(Fault::Instantiate("batch region outside memory".into()));
        };
        for (answer, slot) in answers.chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]])).zip(out.iter_mut()) {
            *slot = match answer {
                -1 => Ok(None),
                r if r >= 0 && (r as usize) < n => {
                    let i = r as usize;
                    self.rows[i] = Row::read(&rows[i * abi::ROW_SIZE..][..abi::ROW_SIZE]);
                    if backends[i].usable() { Ok(Some(i)) } else { Err(Fault::Ineligible { index: i }) }
                }
                index => Err(Fault::BadIndex { index, n }),
            };
        }
        Ok(())
    }

    /// `lb_health` (ABI.md §6) over rows synced first, or `None` when the
    /// plugin has none.
    pub fn health(&mut self, cfg: &HostConfig, args: HealthArgs) -> Result<Option<u32>, Fault> {
        let Some(health) = &self.exports.health else { return Ok(None) };
        let v = call(&mut self.store, health, args, cfg.small_budget(), "lb_health")? as u32;
        if v >> 17 != 0 { Err(Fault::BadHealth(v)) } else { Ok(Some(v & (HEALTH_UP | 0xffff))) }
    }
}
