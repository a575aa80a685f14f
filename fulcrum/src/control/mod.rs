//! The control plane: from a configuration to running workers, what the
//! daemon learns from the kernel on the way, reload, the control socket
//! and its protocol, and the metrics endpoint.

pub mod api;
pub mod apply;
pub mod backends;
pub mod checks;
pub mod client;
pub mod conn;
pub mod daemon;
pub mod drain;
pub mod human;
pub mod metrics;
pub mod neighbours;
pub mod plugins;
pub mod prepare;
pub mod reload;
pub mod server;
pub mod telemetry;

use std::path::Path;

use fulcrum_config::Overlay;

use crate::error::Error;

/// A configuration as the daemon runs it: the file's text, the runtime
/// changes to the backends laid over it, and the validated result.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub config: fulcrum_config::Config,
    pub text: String,
    pub overlay: Overlay,
}

/// Reads and validates a configuration file with the runtime changes its
/// state file (`daemon.state_file`) keeps, and checks that the plugin
/// files it names can be opened: what `run` and `check-config` accept.
pub fn load_config(path: &Path) -> Result<Loaded, Error> {
    let text = fulcrum_config::read(path)?;
    // Where the state file is, the file says.
    let state_file = fulcrum_config::parse(&text, &path.display().to_string())?.daemon.state_file;
    let overlay = backends::load(&state_file)?;
    with_overlay(path, text, overlay)
}

/// Validates the text of the file at `path` with `overlay` laid over it,
/// as `load_config` does: what a reload and a runtime change accept.
pub fn with_overlay(path: &Path, text: String, overlay: Overlay) -> Result<Loaded, Error> {
    let origin = path.display().to_string();
    let config = fulcrum_config::parse_with(&text, &origin, &overlay)?;
    fulcrum_config::check_files(&config, &origin)?;
    Ok(Loaded { config, text, overlay })
}
