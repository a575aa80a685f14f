//! The sandbox's limits and budgets, from the daemon's configuration.

use std::time::Duration;

/// Limits and budgets of the plugin sandbox. The defaults follow ABI.md's
/// measurements; every figure applies per instance.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// Instances alive at once across every plugin, worker and load test:
    /// the pooling allocator's slot count. Each reserves 4 GiB of address
    /// space (plus guard pages), never backed beyond `memory_limit`, so
    /// this many times that is what the process maps. Size it as workers
    /// × VIPs with a plugin × 2 (a swap overlaps old and new) plus a few
    /// for loading and health policies.
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
    /// Fuel per `lb_update` on the slot's plugin thread (the maglev
    /// plugin's rebuild needs ~27 M at 1024 rows).
    pub update_fuel: u64,
    /// Fuel per `lb_update` tried on a worker: a few µs (about 0.12 ns a
    /// unit). An update that needs more, or that is still running at the
    /// next epoch tick, is abandoned there and run on the plugin thread;
    /// the worker's new flows of that VIP go to native Maglev meanwhile.
    pub worker_update_fuel: u64,
    /// Most CPU time the smoke test's `lb_update` may take for the plugin's
    /// updates to be tried on the workers at all; above it they always run
    /// on the plugin thread.
    pub worker_update_time: Duration,
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
    /// What compiling a module may cost.
    pub compile: CompileLimits,
}

/// Limits checked before and while a module compiles (the daemon's
/// `[plugins]` section). Compile time grows with the module's size and
/// its function count; both are checked before compiling, and the compile
/// itself runs on a thread of its own that the loader stops waiting for
/// after `timeout`.
#[derive(Clone, Copy, Debug)]
pub struct CompileLimits {
    pub max_module_bytes: usize,
    pub max_functions: u32,
    pub timeout: Duration,
}

impl Default for CompileLimits {
    fn default() -> CompileLimits {
        CompileLimits { max_module_bytes: 8 << 20, max_functions: 10_000, timeout: Duration::from_secs(5) }
    }
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
            worker_update_fuel: 50_000,
            worker_update_time: Duration::from_micros(100),
            small_fuel: 10_000,
            epoch_tick: Duration::from_millis(1),
            pick_cpu_limit: Duration::from_millis(10),
            update_cpu_limit: Duration::from_secs(1),
            quarantine_faults: 8,
            quarantine_window: Duration::from_secs(10),
            compile: CompileLimits::default(),
        }
    }
}

/// Fuel and CPU time for one call. A zero `cpu` interrupts the call at
/// the first epoch tick inside it, whatever CPU time it used.
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

    pub(crate) fn worker_update_budget(&self) -> Budget {
        Budget { fuel: self.worker_update_fuel, cpu: Duration::ZERO }
    }

    pub(crate) fn small_budget(&self) -> Budget {
        Budget { fuel: self.small_fuel, cpu: self.pick_cpu_limit }
    }
}
