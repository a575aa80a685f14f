//! The shipped plugins: one crate per directory of `plugins/`, as
//! `scripts/build-plugins.sh` finds them, less `hostile` (the modules
//! broken on purpose for the host's containment tests). Derived from the
//! tree, so a new plugin is tested and benchmarked without a list to edit.

use std::path::Path;

/// Their names (directory names, as the built `NAME.wasm`), sorted.
pub fn shipped() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("Cargo.toml").is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name != "hostile")
        .collect();
    names.sort();
    names
}
