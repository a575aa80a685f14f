//! fulcrum's configuration: the TOML schema operators write (see
//! README.md for every field), parsed with serde and `toml`, and validated
//! as a whole so that one run reports every problem with its line.
//!
//! This crate knows nothing of the engine: the control plane converts a
//! validated [`Config`] into the engine's services, and compares two of
//! them to apply a reload.

mod error;
mod model;
mod raw;
mod validate;

use std::path::Path;

pub use error::{ConfigError, ConfigErrors};
pub use model::*;
pub use validate::DEFAULT_CONTROL_SOCKET;

/// The lab's default config (one-arm full-NAT on "lb0"), for the demo.
pub const LAB: &str = include_str!("../examples/lab.toml");

/// Reads and validates the config file at `path`. Relative plugin paths in
/// it are resolved against the file's directory.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let origin = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, &origin),
        Err(e) => Err(ConfigErrors(vec![ConfigError { origin, line: None, context: String::new(), message: format!("cannot read: {e}") }])),
    }
}

/// Checks that every plugin file `config` names can be opened: `parse`
/// never touches the filesystem, so whoever is about to run a config (or
/// `fulcrum check-config`) calls this too. `origin` names the file in
/// messages; the errors have no line (the typed `Config` keeps none).
pub fn check_files(config: &Config, origin: &str) -> Result<(), ConfigErrors> {
    let errors: Vec<ConfigError> = config
        .plugins()
        .filter_map(|(vip, field, path)| {
            let problem = open_plugin(path).err()?;
            let message = format!("{field}: cannot open plugin {}: {problem}", path.display());
            Some(ConfigError { origin: origin.to_string(), line: None, context: format!("vip {}", vip.name()), message })
        })
        .collect();
    if errors.is_empty() { Ok(()) } else { Err(ConfigErrors(errors)) }
}

fn open_plugin(path: &Path) -> Result<(), String> {
    match std::fs::File::open(path).and_then(|f| f.metadata()) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err("not a regular file".into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err("no such file".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Validates config text. `origin` names the file in messages and, taken
/// as the file's path, is what relative plugin paths are resolved against
/// (a bare file name leaves them relative to the working directory).
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigErrors> {
    let base = Path::new(origin).parent().unwrap_or(Path::new(""));
    validate::config(text, origin, base)
}
