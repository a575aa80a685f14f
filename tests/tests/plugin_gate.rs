//! `fulcrum plugin test` as a deploy gate, through the CLI as CI runs it:
//! for each gate, a plugin that passes and one that fails, the exit code
//! (0 passed, 5 a gate failed), the failures on stderr, and `--json`.
//! No root needed; the modules come from scripts/build-plugins.sh.

use fulcrum_tests::daemon::{cli, plugin_module};
use serde_json::Value;

/// `fulcrum plugin test NAME.wasm --flows 2000 ARGS`: exit code, stdout,
/// stderr.
fn gate(name: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let path = plugin_module(name);
    let mut all = vec!["plugin", "test", path.to_str().unwrap(), "--flows", "2000"];
    all.extend_from_slice(args);
    cli(&all)
}

fn passes(name: &str, args: &[&str]) {
    let (code, out, err) = gate(name, args);
    assert_eq!(code, Some(0), "{name} {args:?}:\n{out}{err}");
    assert!(out.ends_with("gates: passed\n"), "{out}");
}

/// Fails with exit code 5, each failure on stderr naming `gate`.
fn fails(name: &str, args: &[&str], gate_name: &str) -> String {
    let (code, out, err) = gate(name, args);
    assert_eq!(code, Some(5), "{name} {args:?}:\n{out}{err}");
    assert!(out.contains("gates: FAILED\n") && out.contains(&format!("  {gate_name}: ")), "{out}");
    assert!(err.contains(&format!("fulcrum: plugin {name} failed")) && err.contains(&format!("{gate_name}: ")), "{err}");
    out
}

#[test]
fn faults_and_quarantine_fail_the_gate() {
    // The hostile modules' control picks row 0 whatever its health: fine
    // while row 0 is up, a fault per flow once it fails.
    passes("hostile-slow-update", &["--fail", "1"]);
    passes("round-robin", &[]);
    let out = fails("hostile-slow-update", &["--fail", "0"], "faults");
    assert!(out.contains("plugin faults: ") && out.contains("(ineligible ") && out.contains("quarantined: yes\n"), "{out}");
    assert!(out.contains("  quarantine: the plugin was quarantined"), "{out}");
}

#[test]
fn declines_fail_the_gate_above_the_threshold() {
    passes("round-robin", &["--max-declines", "0%"]);
    // Without the flag, declining is the plugin's right.
    passes("hostile-silent-decline", &[]);
    let out = fails("hostile-silent-decline", &["--max-declines", "5%"], "declines");
    assert!(out.contains("declined: 4000 of 4000 picks (100.00%)"), "{out}");
}

#[test]
fn pick_and_update_costs_are_reported_and_gated() {
    let (code, out, _) = gate("maglev", &["--max-pick", "10ms", "--max-update", "500ms"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("pick cost: p50 ") && out.contains(" over 4000 calls\n"), "{out}");
    assert!(out.contains("update cost (CPU): p50 ") && out.contains(" over 50 calls\n"), "{out}");
    assert!(out.contains("batch cost per flow (64 flows a call): p50 "), "{out}");
    // An ABI version 1 module is asked one flow per call.
    let (_, out, _) = gate("hostile-silent-decline", &[]);
    assert!(out.contains("batch cost: no lb_pick_batch (ABI version 1: one call per flow)\n"), "{out}");
    // No pick costs a nanosecond.
    fails("maglev", &["--max-pick", "1ns"], "pick cost");
    passes("round-robin", &["--max-update", "1ms"]);
    // About 10 ms per update: legal, but not within a 1 ms budget.
    fails("hostile-slow-update", &["--fail", "1", "--max-update", "1ms"], "update cost");
}

#[test]
fn json_reports_costs_and_failed_gates_for_ci() {
    let (code, out, _) = gate("hostile-silent-decline", &["--json", "--max-declines", "50%", "--max-pick", "10ms"]);
    assert_eq!(code, Some(5), "{out}");
    let r: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}:\n{out}"));
    assert_eq!((r["plugin"].as_str(), r["picks"].as_u64(), r["declines"].as_u64()), (Some("hostile-silent-decline"), Some(4000), Some(4000)));
    let failed = r["failed_gates"].as_array().expect("failed_gates");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].as_str().unwrap().starts_with("declines: 100.00% of picks declined"), "{failed:?}");
    let cost = &r["pick_cost"];
    assert!(cost["calls"].as_u64() == Some(4000) && cost["p50_ns"].as_u64() > Some(0) && cost["p99_ns"].as_u64() >= cost["p50_ns"].as_u64(), "{cost}");
    assert!(r["update_cost"].is_null() && r["batch_cost"].is_null() && r["quarantined"] == Value::Bool(false), "{out}");
    let (code, out, _) = gate("least-connections", &["--json"]);
    assert_eq!(code, Some(0), "{out}");
    let r: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}:\n{out}"));
    let batch = &r["batch_cost"];
    assert!(batch["calls"].as_u64() == Some(50) && batch["p50_ns"].as_u64() > Some(0), "{batch}");
    // The batches' picks are not the passes': the declines gate judges those.
    assert_eq!(r["picks"].as_u64(), Some(4000), "{out}");
}

#[test]
fn exit_codes_are_documented_in_help() {
    let (code, out, _) = cli(&["plugin", "test", "--help"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("Exit codes: 0 the plugin passed every gate;") && out.contains("5 it loads but failed a gate"), "{out}");
}
