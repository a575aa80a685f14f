//! The daemon's error: what the lower crates report, each kept as the
//! source, plus the refusals the control plane itself makes. `main` is the
//! only place that turns it into text for a person.

use std::time::Duration;
use std::{fmt, io};

use fulcrum_config::{ConfigErrors, FileError};
use fulcrum_dataplane::EngineError;
use fulcrum_dataplane::services::ServiceError;
use fulcrum_health::HealthError;
use fulcrum_io::IoError;
use fulcrum_io::netinfo::NetError;
use fulcrum_plugin_host::LoadError;
use fulcrum_plugin_host::replay::ReplayError;

#[derive(Debug)]
pub enum Error {
    /// The configuration file is invalid (every problem, with its line).
    Config(ConfigErrors),
    /// A file the configuration names cannot be used.
    File {
        path: String,
        source: FileError,
    },
    /// XDP, AF_XDP or a BPF map.
    Io(IoError),
    /// The kernel's view of an interface or a backend's next hop.
    Net(NetError),
    Engine(EngineError),
    Services(ServiceError),
    Health(HealthError),
    Plugin(LoadError),
    /// `fulcrum plugin test` / `check`.
    Replay(ReplayError),
    /// `fulcrum plugin test`: the plugin failed these gates.
    Gates {
        plugin: String,
        failed: Vec<String>,
    },
    /// A system call or socket, and what it was for.
    System {
        what: String,
        source: io::Error,
    },
    /// A control-socket message that does not encode or decode.
    Json {
        what: String,
        source: serde_json::Error,
    },
    /// A request or configuration the daemon refuses, with the reason.
    Refused(String),
    /// Nothing listens on the control socket.
    NotRunning {
        socket: String,
        source: io::Error,
    },
    /// A request longer than the endpoint takes.
    TooLarge {
        what: &'static str,
        limit: usize,
    },
    /// Something that did not happen within its deadline.
    TimedOut {
        what: &'static str,
        after: Duration,
    },
    /// `source`, in the context of `context` (a VIP, a backend, a file).
    In {
        context: String,
        source: Box<Error>,
    },
}

/// What the CLI exits with, by what went wrong (`fulcrum --help` lists
/// them): scripts and systemd tell a refusal from a broken file from a
/// daemon that is not there.
pub mod exit {
    /// The daemon (or the check) refused, or anything else failed. (2 is
    /// clap's, for a command line it cannot parse.)
    pub const FAILED: u8 = 1;
    /// The configuration file, or a file it names, is invalid.
    pub const INVALID_CONFIG: u8 = 3;
    /// No daemon answers on the control socket.
    pub const NOT_RUNNING: u8 = 4;
    /// `fulcrum plugin test`: the plugin loads, but failed a gate.
    pub const GATE_FAILED: u8 = 5;
}

impl Error {
    /// The CLI's exit code for this error (see [`exit`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::In { source, .. } => source.exit_code(),
            Error::Config(_) | Error::File { .. } => exit::INVALID_CONFIG,
            Error::NotRunning { .. } => exit::NOT_RUNNING,
            Error::Gates { .. } => exit::GATE_FAILED,
            _ => exit::FAILED,
        }
    }

    /// A `map_err` adapter for system calls made for `what`.
    pub fn system(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::System { what: what.into(), source }
    }
}

/// Adds what was being worked on to an error, keeping it as the source.
pub trait Context<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T, Error>;
}

impl<T, E: Into<Error>> Context<T> for Result<T, E> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|e| Error::In { context: context(), source: Box::new(e.into()) })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(e) => write!(f, "invalid configuration:\n{e}"),
            Error::File { path, source } => write!(f, "{path}: {source}"),
            Error::Io(e) => e.fmt(f),
            Error::Net(e) => e.fmt(f),
            Error::Engine(e) => e.fmt(f),
            Error::Services(e) => e.fmt(f),
            Error::Health(e) => e.fmt(f),
            Error::Plugin(e) => e.fmt(f),
            Error::Replay(e) => e.fmt(f),
            Error::Gates { plugin, failed } => write!(f, "plugin {plugin} failed {} gate(s): {}", failed.len(), failed.join("; ")),
            Error::System { what, source } => write!(f, "{what}: {source}"),
            Error::NotRunning { socket, source } => write!(
                f,
                "fulcrum is not running: nothing listens on {socket} (start it with `fulcrum run`; or name its socket with --socket or its config with --config): {source}"
            ),
            Error::Json { what, source } => write!(f, "{what}: {source}"),
            Error::Refused(reason) => f.write_str(reason),
            Error::TooLarge { what, limit } => write!(f, "{what} longer than {limit} bytes"),
            Error::TimedOut { what, after } => write!(f, "{what} within {after:?}"),
            Error::In { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Config(e) => Some(e),
            Error::File { source, .. } => Some(source),
            Error::Io(e) => Some(e),
            Error::Net(e) => Some(e),
            Error::Engine(e) => Some(e),
            Error::Services(e) => Some(e),
            Error::Health(e) => Some(e),
            Error::Plugin(e) => Some(e),
            Error::Replay(e) => Some(e),
            Error::System { source, .. } | Error::NotRunning { source, .. } => Some(source),
            Error::Json { source, .. } => Some(source),
            Error::In { source, .. } => Some(source.as_ref()),
            Error::Refused(_) | Error::Gates { .. } | Error::TooLarge { .. } | Error::TimedOut { .. } => None,
        }
    }
}

macro_rules! from {
    ($($ty:ty => $variant:ident),* $(,)?) => {
        $(impl From<$ty> for Error {
            fn from(e: $ty) -> Error {
                Error::$variant(e)
            }
        })*
    };
}

from!(ConfigErrors => Config, IoError => Io, NetError => Net, EngineError => Engine, ServiceError => Services, HealthError => Health, LoadError => Plugin, ReplayError => Replay);
