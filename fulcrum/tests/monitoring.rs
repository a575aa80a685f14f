//! The shipped Grafana dashboard and Prometheus alert rules
//! (`config/monitoring/`) name only metrics the daemon exports: every
//! `fulcrum_*` name in them is a family of the exposition (or a
//! histogram's `_bucket` / `_sum` / `_count` series), rendered from a
//! report that has every optional part (health checks, handshake times,
//! flow sync).

use std::collections::BTreeSet;
use std::path::PathBuf;

use fulcrum::control::api::{BackendStats, CheckCounters, Reloads, StatsReport, SyncReport, VipStats, WorkerReport};
use fulcrum::control::metrics::render;

fn exported() -> BTreeSet<String> {
    let s = StatsReport {
        vips: vec![VipStats {
            name: "198.18.100.1:80/tcp".into(),
            backends: vec![BackendStats {
                name: "198.18.0.11".into(),
                state: "up".into(),
                handshake_rtt_us: Some(100),
                checks: Some(CheckCounters::default()),
                ..BackendStats::default()
            }],
            ..VipStats::default()
        }],
        workers: vec![WorkerReport::default()],
        sync: Some(SyncReport { role: "master".into(), lag_buckets: vec![0, 0], ..SyncReport::default() }),
        ..StatsReport::default()
    };
    render(&s, &Reloads::default()).lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next().map(str::to_string)).collect()
}

/// Every `fulcrum_...` token of `text`.
fn names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("fulcrum_") {
        // A token only: not the tail of a longer identifier.
        let before = rest[..i].chars().next_back();
        let len = rest[i..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len() - i);
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.insert(rest[i..i + len].to_string());
        }
        rest = &rest[i + len..];
    }
    out
}

#[test]
fn dashboard_and_alerts_use_only_exported_metrics() {
    let families = exported();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/monitoring");
    for file in ["grafana-dashboard.json", "alerts.yml"] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let used = names(&text);
        assert!(used.len() >= 10, "{file} uses only {used:?}");
        for name in &used {
            let family = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s).filter(|f| families.contains(*f))).unwrap_or(name);
            assert!(families.contains(family), "{file} uses {name}, which the daemon does not export; it exports {families:?}");
        }
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("grafana-dashboard.json")).unwrap()).expect("the dashboard is JSON");
    assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() >= 10));
}
