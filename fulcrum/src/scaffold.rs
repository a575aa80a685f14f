//! `fulcrum plugin new NAME`: a scheduler plugin crate that builds outside
//! fulcrum's repository and offline. The SDK it depends on is the one this
//! binary was built with, written into the crate (`fulcrum-plugin-sdk/`,
//! a path dependency): it has no dependencies of its own, so
//! `cargo build --offline` needs nothing from a registry, and the plugin
//! speaks exactly the ABI of the daemon that made it.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::Error;

/// The SDK's files, as the crate `plugin-sdk/` holds them (its manifest is
/// written apart: the repository's inherits from the workspace).
const SDK_FILES: [(&str, &str); 8] = [
    ("README.md", include_str!("../../plugin-sdk/README.md")),
    ("ABI.md", include_str!("../../plugin-sdk/ABI.md")),
    ("src/lib.rs", include_str!("../../plugin-sdk/src/lib.rs")),
    ("src/abi.rs", include_str!("../../plugin-sdk/src/abi.rs")),
    ("src/backends.rs", include_str!("../../plugin-sdk/src/backends.rs")),
    ("src/health.rs", include_str!("../../plugin-sdk/src/health.rs")),
    ("src/rt.rs", include_str!("../../plugin-sdk/src/rt.rs")),
    ("src/testing.rs", include_str!("../../plugin-sdk/src/testing.rs")),
];

/// Where the SDK goes inside the new crate.
const SDK_DIR: &str = "fulcrum-plugin-sdk";

/// The shipped plugins' build settings (the workspace's
/// `[profile.wasm-release]`), as the new crate's release profile.
const RELEASE_PROFILE: &str = "\
# As fulcrum's shipped plugins are built: small, fast, and a panic is a
# trap rather than unwinding machinery.
[profile.release]
opt-level = 3
lto = true
codegen-units = 1
panic = \"abort\"
debug = false
strip = true
";

/// The shipped plugins' wasm32 build flags (the repository's
/// `.cargo/config.toml`).
const CARGO_CONFIG: &str = "\
# A 64 KiB shadow stack instead of rustc's 1 MiB, as fulcrum's shipped
# plugins: a module's initial memory (stack + statics) is what every
# instance of it maps and resets. The stack sits first, so an overflow runs
# below address 0 and traps.
[target.wasm32-unknown-unknown]
rustflags = [\"-C\", \"link-arg=-zstack-size=65536\"]
";

/// Creates the crate `dir/name`; returns its path. Refuses a name cargo
/// would not take and a directory that exists.
pub fn new_plugin(name: &str, dir: &Path) -> Result<PathBuf, Error> {
    check_name(name)?;
    let root = dir.join(name);
    if root.exists() {
        return Err(Error::Refused(format!("{} exists: choose another name or --dir", root.display())));
    }
    let files = files(name);
    for (path, text) in &files {
        let path = root.join(path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(Error::system(format!("creating {}", parent.display())))?;
        }
        fs::write(&path, text).map_err(Error::system(format!("writing {}", path.display())))?;
    }
    Ok(root)
}

/// A crate name cargo takes, that is also a plain file stem (the daemon
/// names a plugin by its file).
fn check_name(name: &str) -> Result<(), Error> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    match ok {
        true => Ok(()),
        false => Err(Error::Refused(format!("plugin name {name:?}: use lowercase letters, digits, - and _, starting with a letter (at most 64)"))),
    }
}

/// Every file of the new crate: path (relative to it) and contents.
fn files(name: &str) -> Vec<(String, String)> {
    let (version, edition, rust) = (env!("CARGO_PKG_VERSION"), "2024", env!("CARGO_PKG_RUST_VERSION"));
    let manifest = format!(
        "[package]
name = \"{name}\"
version = \"0.1.0\"
edition = \"{edition}\"
rust-version = \"{rust}\"
publish = false

[lib]
# cdylib: the .wasm module; rlib: the native unit tests.
crate-type = [\"cdylib\", \"rlib\"]

[dependencies]
# The SDK of fulcrum {version}, which wrote this crate: no dependencies of
# its own, so the crate builds offline.
fulcrum-plugin-sdk = {{ path = \"{SDK_DIR}\" }}

[dev-dependencies]
# Again, with the unit-test helpers (fulcrum_plugin_sdk::testing).
fulcrum-plugin-sdk = {{ path = \"{SDK_DIR}\", features = [\"testing\"] }}

# A workspace of its own, wherever the crate is.
[workspace]

{RELEASE_PROFILE}"
    );
    let sdk_manifest = format!(
        "[package]
name = \"fulcrum-plugin-sdk\"
description = \"Guest side of fulcrum's WebAssembly scheduling plugins (from fulcrum {version})\"
version = \"{version}\"
edition = \"{edition}\"
rust-version = \"{rust}\"
license = \"{}\"
publish = false

# No dependencies on purpose: every plugin build compiles this crate, and the
# ABI must not drift with a third-party crate's layout.
[dependencies]

[features]
testing = []
",
        env!("CARGO_PKG_LICENSE")
    );
    let readme = format!(
        "# {name}

A fulcrum scheduling plugin: `src/lib.rs` picks the backend of each new
flow (ABI: `{SDK_DIR}/ABI.md`; SDK guide: `{SDK_DIR}/README.md`).

    cargo test                                                # the unit tests, natively
    cargo build --release --target wasm32-unknown-unknown    # add --offline without network
    fulcrum plugin check target/wasm32-unknown-unknown/release/{stem}.wasm
    fulcrum plugin test  target/wasm32-unknown-unknown/release/{stem}.wasm --max-pick 5us --max-declines 1%
    fulcrum plugin load --persist --vip 198.18.0.100:80/tcp target/wasm32-unknown-unknown/release/{stem}.wasm
",
        stem = name.replace('-', "_")
    );
    let mut out = vec![
        ("Cargo.toml".to_string(), manifest),
        ("src/lib.rs".to_string(), EXAMPLE.to_string()),
        ("README.md".to_string(), readme),
        (".gitignore".to_string(), "/target\n".to_string()),
        (".cargo/config.toml".to_string(), CARGO_CONFIG.to_string()),
        (format!("{SDK_DIR}/Cargo.toml"), sdk_manifest),
    ];
    out.extend(SDK_FILES.iter().map(|(path, text)| (format!("{SDK_DIR}/{path}"), text.to_string())));
    out
}

/// The new crate's scheduler: the shipped weighted least connections,
/// with its tests, for the author to change.
const EXAMPLE: &str = include_str!("../../plugins/weighted-least-connections/src/lib.rs");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_release_profile_is_the_shipped_plugins_one() {
        let workspace = include_str!("../../Cargo.toml");
        let shipped = workspace.split("[profile.wasm-release]\n").nth(1).expect("the workspace's [profile.wasm-release]");
        let settings: Vec<&str> = shipped.lines().take_while(|l| !l.trim().is_empty()).filter(|l| !l.starts_with("inherits")).collect();
        assert!(!settings.is_empty());
        for line in settings {
            assert!(RELEASE_PROFILE.lines().any(|l| l == line), "{line} is not in the scaffold's profile:\n{RELEASE_PROFILE}");
        }
    }

    #[test]
    fn the_wasm_build_flags_are_the_shipped_plugins_ones() {
        let repo = include_str!("../../.cargo/config.toml");
        let flags = CARGO_CONFIG.lines().find(|l| l.starts_with("rustflags")).expect("rustflags");
        assert!(repo.contains(&format!("[target.wasm32-unknown-unknown]\n{flags}\n")), "{flags} differs from the repository's");
    }

    #[test]
    fn the_sdk_files_are_all_of_the_crates_sources() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-sdk/src");
        let mut on_disk: Vec<String> = fs::read_dir(&dir).unwrap().map(|e| format!("src/{}", e.unwrap().file_name().to_string_lossy())).collect();
        on_disk.sort();
        let mut embedded: Vec<String> = SDK_FILES.iter().filter(|(p, _)| p.starts_with("src/")).map(|(p, _)| p.to_string()).collect();
        embedded.sort();
        assert_eq!(embedded, on_disk);
    }

    #[test]
    fn names_cargo_would_refuse_are_refused() {
        for bad in ["", "My", "1st", "a b", "../x", "a/b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in ["my-scheduler", "ab_2"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
    }
}
