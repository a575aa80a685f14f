//! The shipped systemd unit is one systemd accepts: `systemd-analyze
//! verify` on it, with its commands pointed at the binary just built.

use std::process::Command;

#[test]
fn the_systemd_unit_verifies() {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/fulcrum.service")).expect("config/fulcrum.service");
    assert!(unit.contains("Type=notify") && unit.contains("ExecReload=/usr/local/bin/fulcrum reload"), "{unit}");
    let dir = std::env::temp_dir().join(format!("fulcrum-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let path = dir.join("fulcrum.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/fulcrum", env!("CARGO_BIN_EXE_fulcrum"))).expect("the unit");
    let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&path).output().expect("systemd-analyze (scripts/setup.sh installs systemd)");
    let _ = std::fs::remove_dir_all(&dir);
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {}\n{said}", out.status);
}
