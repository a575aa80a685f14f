//! fulcrum's configuration: the TOML schema operators write (see
//! README.md for every field), parsed with serde and `toml`, and validated
//! as a whole so that one run reports every problem with its line.
//!
//! This crate knows nothing of the engine: the control plane converts a
//! validated [`Config`] into the engine's services, and compares two of
//! them to apply a reload.

mod error;
mod file;
mod model;
mod overlay;
mod raw;
mod validate;

use std::path::Path;

pub use error::{ConfigError, ConfigErrors};
pub use file::{FileError, MAX_CONFIG_BYTES, open_regular, read_regular};
pub use model::*;
pub use overlay::{BackendOverride, Overlay, SchedulerOverride};
pub use validate::{DEFAULT_CONTROL_SOCKET, DEFAULT_STATE_FILE};

/// The lab's default config (one-arm full-NAT on "lb0"), for the demo.
pub const LAB: &str = include_str!("../examples/lab.toml");

/// Reads and validates the config file at `path`. Relative plugin paths in
/// it are resolved against the file's directory. The file must be a regular
/// file of at most `MAX_CONFIG_BYTES` bytes (`read_regular`).
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    parse(&read(path)?, &path.display().to_string())
}

/// The text of the config file at `path`, as `load` reads it: a regular
/// file of at most `MAX_CONFIG_BYTES` bytes of UTF-8.
pub fn read(path: &Path) -> Result<String, ConfigErrors> {
    let origin = path.display().to_string();
    let error = |line, message: String| ConfigErrors(vec![ConfigError::new(&origin, line, "", &message)]);
    let bytes = read_regular(path, MAX_CONFIG_BYTES).map_err(|e| error(None, format!("cannot read: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        // Where the first bad byte is, so an editor can go there; the bytes
        // themselves are not shown.
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line_start = valid.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let line = 1 + valid.iter().filter(|&&b| b == b'\n').count();
        let column = valid.len() - line_start + 1;
        error(Some(line), format!("not valid UTF-8 (at byte {column} of the line): a config is UTF-8 text"))
    })?;
    Ok(text)
}

/// Checks that every plugin and CA file `config` names can be opened and is a
/// regular file (`open_regular`; nothing is read): `parse` never touches
/// the filesystem, so whoever is about to run a config (or `fulcrum
/// check-config`) calls this too. `origin` names the file in messages; the
/// errors have no line (the typed `Config` keeps none).
pub fn check_files(config: &Config, origin: &str) -> Result<(), ConfigErrors> {
    let plugins = config.plugins().map(|(vip, field, path)| (vip, field, "plugin", path));
    let ca_files = config.ca_files().map(|(vip, path)| (vip, "health.ca_file", "CA file", path));
    let mut errors: Vec<ConfigError> = plugins
        .chain(ca_files)
        .filter_map(|(vip, field, what, path)| {
            // No size limit: that is for whoever loads the file to set.
            let problem = open_regular(path, u64::MAX).err()?;
            let message = format!("{field}: cannot open {what} {}: {problem}", path.display());
            Some(ConfigError::new(origin, None, &format!("vip {}", vip.name()), &message))
        })
        .collect();
    // A CA file shared by several backends is reported once.
    errors.dedup_by(|a, b| a.to_string() == b.to_string());
    if errors.is_empty() { Ok(()) } else { Err(ConfigErrors(errors)) }
}

/// Validates config text. `origin` names the file in messages and, taken
/// as the file's path, is what relative plugin paths are resolved against
/// (a bare file name leaves them relative to the working directory).
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigErrors> {
    parse_with(text, origin, &Overlay::default())
}

/// `parse` with runtime changes to the backends laid over the text first,
/// so they are validated as the file's own backends are.
pub fn parse_with(text: &str, origin: &str, overlay: &Overlay) -> Result<Config, ConfigErrors> {
    let base = Path::new(origin).parent().unwrap_or(Path::new(""));
    validate::config(text, origin, base, overlay)
}
