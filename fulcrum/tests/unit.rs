//! The shipped systemd units are ones systemd accepts: `systemd-analyze
//! verify` on each, with its commands pointed at the binary just built.

use std::process::Command;

/// `systemd-analyze verify` of the unit at `path` (from the repository's
/// root); its text.
fn verify(path: &str) -> String {
    let unit = std::fs::read_to_string(format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))).expect(path);
    let name = path.rsplit('/').next().expect("a file name");
    let dir = std::env::temp_dir().join(format!("fulcrum-unit-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let copy = dir.join(name);
    std::fs::write(&copy, unit.replace("/usr/local/bin/fulcrum", env!("CARGO_BIN_EXE_fulcrum"))).expect("the unit");
    let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&copy).output().expect("systemd-analyze (scripts/setup.sh installs systemd)");
    let _ = std::fs::remove_dir_all(&dir);
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify {path}: {}\n{said}", out.status);
    unit
}

#[test]
fn the_systemd_unit_verifies() {
    let unit = verify("config/fulcrum.service");
    assert!(unit.contains("Type=notify") && unit.contains("ExecReload=/usr/local/bin/fulcrum reload"), "{unit}");
}

#[test]
fn the_ha_watcher_unit_verifies_and_writes_the_file_keepalived_tracks() {
    let unit = verify("config/examples/ha/fulcrum-ha-watch.service");
    let keepalived = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/examples/ha/keepalived.conf")).expect("keepalived.conf");
    let file = keepalived.lines().find_map(|l| l.trim().strip_prefix("file ")).expect("a track_file in keepalived.conf").trim_matches('"');
    assert!(unit.contains(&format!("ha watch --file {file} ")), "the watcher should write {file}:\n{unit}");
}
