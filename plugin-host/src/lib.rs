//! The WebAssembly plugin host: scheduling and health-policy plugins that
//! follow `plugin-sdk/ABI.md` (version 1), run by wasmtime.
//!
//! - A thread preparing a reload or load (never the control thread, never
//!   a worker) loads a plugin ([`PluginRuntime::load`]): the module's size
//!   and function count checked against [`CompileLimits`], compiled on a
//!   thread of its own within their timeout, imports, exports and
//!   signatures, the ABI version, the state region and its capacity
//!   checked, then a smoke `lb_update`/`lb_pick` over the VIP's pool.
//!   Errors are typed ([`LoadError`]) and say what is wrong.
//! - It publishes the plugin in the VIP's [`PluginSlot`]; each worker runs a
//!   [`WasmScheduler`] from [`PluginSlot::scheduler`]: its own store and
//!   instance, typed calls of plain core-module exports, the backend rows
//!   kept in guest memory and rewritten only when they change, `lb_update`
//!   only when the set, a weight or a health state changed. A worker tries
//!   `lb_update` within a few µs of fuel and one epoch tick; longer updates
//!   (the maglev plugin's table rebuild) run on the slot's plugin thread,
//!   which hands the worker a prepared instance (ABI.md §5).
//! - Sandbox: fuel per call, a CPU-time limit as a backstop (checked at the
//!   ticks of one shared epoch thread), a memory cap (growing past it
//!   traps), a native stack cap, no imports. A fault (trap, exhausted fuel
//!   or CPU time, invalid or ineligible answer) makes that flow fall back to native Maglev and is counted; a
//!   trap also discards the instance; `K` faults within a window
//!   quarantine the version (one log line) until a new one is published.
//! - Hot swap: publishing bumps the slot's generation; a worker compares it
//!   once per pick (one atomic load) and re-instantiates when it changed.
//! - [`HealthPolicy`]: a health-policy `Policy` from `lb_health`, or the native
//!   rise/fall rule.
//! - [`replay`]: synthetic flows through a plugin, for plugin authors, with
//!   the gates of a deploy (faults, quarantine, declines, pick and update
//!   costs).
//!
//! Modules, each using only those before it: `abi` (the ABI's layout),
//! `config` (limits and budgets), `error` (faults and load errors),
//! `instance` (one store and its calls), `runtime` (the engine, compiling
//! and checking modules), `slot` (publication and per-worker schedulers),
//! `health_policy` (the health-policy adapter), `replay`.

mod abi;
mod config;
mod error;
mod health_policy;
mod instance;
pub mod replay;
mod runtime;
mod slot;

pub use abi::ABI_VERSION;
pub use config::{CompileLimits, HostConfig};
pub use error::{Fault, FaultKind, LoadError};
pub use health_policy::HealthPolicy;
pub use runtime::{Plugin, PluginRuntime, module_hash};
pub use slot::{Fallbacks, LastFault, PICK_COST_BUCKETS, PluginSlot, PluginStats, WasmScheduler};
