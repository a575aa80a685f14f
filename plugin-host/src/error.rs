//! What goes wrong with a plugin: a call at run time ([`Fault`]) or a
//! module at load time ([`LoadError`]).

use std::fmt;
use std::time::Duration;

use wasmtime::Trap;

use crate::abi::{self, ABI_VERSION};

/// A plugin call that went wrong. The flow falls back to native Maglev
/// and the fault is counted against the plugin.
#[derive(Debug)]
pub enum Fault {
    /// A trap: out of fuel or CPU time, out-of-bounds access,
    /// `unreachable`, stack overflow, memory growth past the cap.
    Trap { call: &'static str, error: wasmtime::Error },
    /// `lb_pick` answered neither -1 nor a row index below `n`.
    BadIndex { index: i32, n: usize },
    /// `lb_pick_batch` did not decide the flows it was given.
    BatchCount { decided: i32, flows: usize },
    /// `lb_pick` chose a row that is down or drained.
    Ineligible { index: usize },
    /// `lb_health` set reserved bits.
    BadHealth(u32),
    /// No instance could be made (for example every pool slot is taken).
    Instantiate(String),
}

/// What kind of fault, as the counters split them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// A trap other than the two budgets: out-of-bounds access,
    /// `unreachable`, stack overflow, memory growth past the cap.
    Trap,
    /// Out of fuel or past the CPU-time limit.
    Budget,
    BadIndex,
    Ineligible,
    BadHealth,
    Instantiate,
}

impl FaultKind {
    pub const ALL: [FaultKind; 6] =
        [FaultKind::Trap, FaultKind::Budget, FaultKind::BadIndex, FaultKind::Ineligible, FaultKind::BadHealth, FaultKind::Instantiate];

    /// The name in `stats --json` and in metric labels.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Trap => "trap",
            FaultKind::Budget => "budget",
            FaultKind::BadIndex => "bad_index",
            FaultKind::Ineligible => "ineligible",
            FaultKind::BadHealth => "bad_health",
            FaultKind::Instantiate => "instantiate",
        }
    }
}

impl Fault {
    /// Whether the instance must be discarded: after a trap its memory may
    /// be half-written.
    pub fn discards_instance(&self) -> bool {
        matches!(self, Fault::Trap { .. } | Fault::Instantiate(_))
    }

    pub fn kind(&self) -> FaultKind {
        match self {
            Fault::Trap { error, .. } => match error.downcast_ref::<Trap>() {
                Some(Trap::OutOfFuel | Trap::Interrupt) => FaultKind::Budget,
                _ => FaultKind::Trap,
            },
            Fault::BadIndex { .. } | Fault::BatchCount { .. } => FaultKind::BadIndex,
            Fault::Ineligible { .. } => FaultKind::Ineligible,
            Fault::BadHealth(_) => FaultKind::BadHealth,
            Fault::Instantiate(_) => FaultKind::Instantiate,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Trap { call, error } => match error.downcast_ref::<Trap>() {
                Some(Trap::Interrupt) => write!(f, "`{call}` ran past its CPU-time limit"),
                Some(Trap::OutOfFuel) => write!(f, "`{call}` ran out of fuel"),
                Some(trap) => write!(f, "`{call}` trapped: {trap}"),
                None => write!(f, "`{call}` failed: {error:#}"),
            },
            Fault::BadIndex { index, n } => write!(f, "`lb_pick` returned {index} for a pool of {n}"),
            Fault::BatchCount { decided, flows } => write!(f, "`lb_pick_batch` returned {decided} for {flows} flows"),
            Fault::Ineligible { index } => write!(f, "`lb_pick` chose row {index}, which is down or drained"),
            Fault::BadHealth(v) => write!(f, "`lb_health` returned {v:#x}: bits 17..31 must be 0"),
            Fault::Instantiate(e) => write!(f, "cannot instantiate: {e}"),
        }
    }
}

/// Why a plugin cannot be loaded. The messages name what is wrong, for
/// the operator who ran `fulcrum plugin load`.
#[derive(Debug)]
pub enum LoadError {
    /// The wasmtime engine could not be set up with this configuration.
    Runtime(String),
    /// The bytes do not start as a WebAssembly binary does.
    NotWasm,
    /// Not a valid WebAssembly core module (or one wasmtime cannot compile).
    Compile(String),
    /// Larger than `CompileLimits::max_module_bytes`.
    TooLarge {
        size: usize,
        limit: usize,
    },
    /// Defines more functions than `CompileLimits::max_functions`.
    TooManyFunctions {
        count: u64,
        limit: u32,
    },
    /// Still compiling after `CompileLimits::timeout`.
    CompileTimeout(Duration),
    /// A compile given up on earlier is still running.
    CompileBusy,
    Precompiled,
    Import {
        module: String,
        name: String,
    },
    StartFunction,
    MissingExport(&'static str),
    UnknownExport(String),
    /// An export of a later ABI version than the module declares.
    TooNew {
        name: &'static str,
        version: u32,
    },
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
            LoadError::NotWasm => f.write_str("not a WebAssembly module (no \\0asm header): give the plugin's .wasm file"),
            LoadError::Compile(e) => write!(f, "not a valid WebAssembly core module: {e}"),
            LoadError::TooLarge { size, limit } => {
                write!(f, "module is {size} bytes, above the limit of {limit} bytes (plugins.max_module_bytes)")
            }
            LoadError::TooManyFunctions { count, limit } => {
                write!(f, "module defines {count} functions, above the limit of {limit} (plugins.max_functions)")
            }
            LoadError::CompileTimeout(after) => {
                write!(f, "module still compiling after {} (plugins.compile_timeout): refused", humantime_ms(*after))
            }
            LoadError::CompileBusy => f.write_str("a module that ran past plugins.compile_timeout is still compiling: try again once it is done"),
            LoadError::Precompiled => f.write_str("precompiled (.cwasm) modules are not accepted: load the .wasm file"),
            LoadError::Import { module, name } => {
                write!(f, "plugin imports `{module}.{name}`: plugins may import nothing (no WASI, no host functions)")
            }
            LoadError::StartFunction => f.write_str("plugin has a start function, which the ABI forbids"),
            LoadError::MissingExport(name) => write!(f, "plugin does not export `{name}`"),
            LoadError::UnknownExport(name) => {
                write!(f, "plugin exports unknown function `{name}` (ABI functions: {})", abi::EXPORTS.map(|e| e.name).join(", "))
            }
            LoadError::TooNew { name, version } => {
                write!(f, "plugin exports `{name}`, which ABI version {version} (the one it declares) does not have: declare version {}", abi::BATCH_VERSION)
            }
            LoadError::Signature { name, found, expected } => write!(f, "plugin export `{name}` has type {found}, the ABI says {expected}"),
            LoadError::Memory(e) => write!(f, "plugin memory: {e}"),
            LoadError::AbiVersion(v) => write!(f, "plugin abi version {v}, this host speaks 1 to {ABI_VERSION}"),
            LoadError::StateRegion(e) => write!(f, "plugin state region: {e}"),
            LoadError::Header(e) => write!(f, "plugin state header: {e}"),
            LoadError::Capacity { cap, pool } => write!(f, "plugin holds {cap} backend rows, the VIP's pool has {pool}"),
            LoadError::Instantiate(e) => write!(f, "cannot instantiate the plugin: {e}"),
            LoadError::Smoke(fault) => write!(f, "plugin failed its smoke test: {fault}"),
        }
    }
}

impl std::error::Error for LoadError {}

/// "5s", "250ms": a limit as the configuration writes it.
fn humantime_ms(d: Duration) -> String {
    match d.subsec_millis() {
        0 => format!("{}s", d.as_secs()),
        _ => format!("{}ms", d.as_millis()),
    }
}
