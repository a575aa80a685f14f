//! `fulcrum plugin new`: from nothing to a plugin that passes `plugin
//! check` and `plugin test`, outside the repository and offline, as a new
//! author would go. Needs the wasm32 target (scripts/setup.sh), no root.

use std::path::{Path, PathBuf};
use std::process::Command;

use fulcrum_tests::daemon::cli;

/// A directory of its own under the system's temp dir, removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `cargo ARGS --offline` in `dir`, with a target dir of the crate's own;
/// panics with cargo's output if it fails.
fn cargo(dir: &Path, args: &[&str]) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo).args(args).arg("--offline").current_dir(dir).env("CARGO_TARGET_DIR", dir.join("target")).output().expect("running cargo");
    assert!(out.status.success(), "cargo {args:?} in {}:\n{}", dir.display(), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_new_plugin_builds_offline_outside_the_repository_and_passes_check_and_test() {
    let tmp = TempDir(std::env::temp_dir().join(format!("fulcrum-plugin-new-{}", std::process::id())));
    std::fs::create_dir_all(&tmp.0).expect("temp dir");
    let (code, out, err) = cli(&["plugin", "new", "my-scheduler", "--dir", tmp.0.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
    let root = tmp.0.join("my-scheduler");
    assert!(out.starts_with(&format!("created {}", root.display())), "{out}");
    // Not over an existing crate.
    let (code, _, err) = cli(&["plugin", "new", "my-scheduler", "--dir", tmp.0.to_str().unwrap()]);
    assert!(code == Some(1) && err.contains("exists"), "{err}");

    cargo(&root, &["test", "--quiet"]);
    cargo(&root, &["build", "--quiet", "--release", "--target", "wasm32-unknown-unknown"]);
    let wasm = root.join("target/wasm32-unknown-unknown/release/my_scheduler.wasm");
    let wasm = wasm.to_str().unwrap();
    let (code, out, err) = cli(&["plugin", "check", wasm]);
    assert_eq!((code, out.trim_end()), (Some(0), format!("{wasm}: ok").as_str()), "{err}");
    // Least connections per weight, with flows that close: an even spread,
    // no fault, no decline, within a generous cost budget.
    let (code, out, err) = cli(&["plugin", "test", wasm, "--backends", "4", "--flows", "4000", "--max-declines", "0%", "--max-pick", "1ms"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with("plugin my_scheduler: 4000 new flows over 4 backends") && out.ends_with("gates: passed\n"), "{out}");
}
