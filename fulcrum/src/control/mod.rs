//! The control plane: from a configuration to running workers, what the
//! daemon learns from the kernel on the way, reload, the control socket
//! and its protocol, and the metrics endpoint.

pub mod api;
pub mod apply;
pub mod checks;
pub mod client;
pub mod conn;
pub mod daemon;
pub mod drain;
pub mod metrics;
pub mod neighbours;
pub mod plugins;
pub mod prepare;
pub mod reload;
pub mod server;
pub mod telemetry;

use std::path::Path;

use crate::error::Error;

/// Reads and validates a configuration file, and checks that the plugin
/// files it names can be opened: what `run`, reload and `check-config`
/// all accept.
pub fn load_config(path: &Path) -> Result<fulcrum_config::Config, Error> {
    let origin = path.display().to_string();
    let config = fulcrum_config::load(path)?;
    fulcrum_config::check_files(&config, &origin)?;
    Ok(config)
}
