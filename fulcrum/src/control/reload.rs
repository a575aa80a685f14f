//! What a reload may change, found by comparing the running configuration
//! with the new one. Pure, so that every rule is tested without a lab.
//!
//! Interfaces, sockets and XDP attachments are set up at start, the
//! connection tables sized and timed then: those sections need a restart.
//! VIPs and backends change live.

use std::fmt::Debug;

use fulcrum_config as cfg;
use fulcrum_dataplane::services::backend_name;
use serde::{Deserialize, Serialize};

/// The fields that differ between `old` and `new` and cannot change
/// while the daemon runs, each as "daemon.metrics_listen: A -> B".
pub fn needs_restart(old: &cfg::Config, new: &cfg::Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = |name: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{name}: {a} -> {b}"));
        }
    };
    let dbg = |v: &dyn Debug| format!("{v:?}");
    let (d, n) = (&old.daemon, &new.daemon);
    field("daemon.control_socket", dbg(&d.control_socket), dbg(&n.control_socket));
    field("daemon.metrics_listen", d.metrics_listen.to_string(), n.metrics_listen.to_string());
    field("daemon.state_file", dbg(&d.state_file), dbg(&n.state_file));
    field("daemon.xdp_mode", dbg(&d.xdp_mode), dbg(&n.xdp_mode));
    field("daemon.poll", dbg(&d.poll), dbg(&n.poll));
    field("daemon.workers", dbg(&d.workers), dbg(&n.workers));
    field("interface", interfaces(&old.topology).join(", "), interfaces(&new.topology).join(", "));
    field("limits.connections_per_worker", old.limits.connections_per_worker.to_string(), new.limits.connections_per_worker.to_string());
    field("limits.snat_ports", old.limits.snat_ports.to_string(), new.limits.snat_ports.to_string());
    field("limits.half_open_per_vip", old.limits.half_open_per_vip.to_string(), new.limits.half_open_per_vip.to_string());
    field("limits.syn_proxy_above", old.limits.syn_proxy_above.to_string(), new.limits.syn_proxy_above.to_string());
    let (t, u) = (&old.timeouts, &new.timeouts);
    field("timeouts.tcp_syn", dbg(&t.tcp_syn), dbg(&u.tcp_syn));
    field("timeouts.tcp_established", dbg(&t.tcp_established), dbg(&u.tcp_established));
    field("timeouts.tcp_closing", dbg(&t.tcp_closing), dbg(&u.tcp_closing));
    field("timeouts.udp", dbg(&t.udp), dbg(&u.udp));
    field("timeouts.snat_reuse", dbg(&t.snat_reuse), dbg(&u.snat_reuse));
    // The plugin runtime is made once, with these limits.
    let (p, q) = (&old.plugins, &new.plugins);
    field("plugins.max_module_bytes", p.max_module_bytes.to_string(), q.max_module_bytes.to_string());
    field("plugins.max_functions", p.max_functions.to_string(), q.max_functions.to_string());
    field("plugins.compile_timeout", dbg(&p.compile_timeout), dbg(&q.compile_timeout));
    out
}

/// The topology as the operator wrote it: "eth0 (one-arm)".
pub fn interfaces(t: &cfg::Topology) -> Vec<String> {
    let one = |i: &cfg::Interface, role: &str| match i.mtu {
        Some(mtu) => format!("{} ({role}, mtu {mtu})", i.name),
        None => format!("{} ({role})", i.name),
    };
    match t {
        cfg::Topology::OneArm(i) => vec![one(i, "one-arm")],
        cfg::Topology::Inline { client, server } => vec![one(client, "client"), one(server, "server")],
    }
}

/// What a reload changes, for the operator: VIPs by name, backends as
/// "VIP backend NAME", changes with their old and new values.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    pub vips_added: Vec<String>,
    pub vips_removed: Vec<String>,
    /// Mode, scheduler, persistence or health of a VIP that stays.
    pub vips_changed: Vec<String>,
    pub backends_added: Vec<String>,
    pub backends_removed: Vec<String>,
    /// Weight or static MAC, or health check, of a backend that stays.
    pub backends_changed: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }

    /// "2 VIPs added, 1 backend changed", or "no change".
    pub fn summary(&self) -> String {
        let parts: Vec<String> = [
            (self.vips_added.len(), "VIP", "added"),
            (self.vips_removed.len(), "VIP", "removed"),
            (self.vips_changed.len(), "VIP", "changed"),
            (self.backends_added.len(), "backend", "added"),
            (self.backends_removed.len(), "backend", "removed"),
            (self.backends_changed.len(), "backend", "changed"),
        ]
        .into_iter()
        .filter(|(n, ..)| *n > 0)
        .map(|(n, what, how)| format!("{n} {what}{} {how}", if n == 1 { "" } else { "s" }))
        .collect();
        if parts.is_empty() { "no change".into() } else { parts.join(", ") }
    }

    /// Every change, one per line.
    pub fn details(&self) -> Vec<String> {
        let tagged = |list: &[String], tag: &str| list.iter().map(|s| format!("{tag} {s}")).collect::<Vec<_>>();
        [
            tagged(&self.vips_added, "+ vip"),
            tagged(&self.vips_removed, "- vip"),
            tagged(&self.vips_changed, "~ vip"),
            tagged(&self.backends_added, "+ backend"),
            tagged(&self.backends_removed, "- backend"),
            tagged(&self.backends_changed, "~ backend"),
        ]
        .concat()
    }
}

/// The service changes from `old` to `new` (the sections `needs_restart`
/// checks are assumed equal).
pub fn changes(old: &cfg::Config, new: &cfg::Config) -> Changes {
    let mut c = Changes::default();
    let key = |v: &cfg::Vip| (v.address, v.protocol, v.port);
    let bkey = |b: &cfg::Backend| (b.address, b.port);
    let bname = |v: &cfg::Vip, b: &cfg::Backend| format!("{} backend {}", v.name(), backend_name(b.address, b.port));
    for v in &new.vips {
        let Some(o) = old.vips.iter().find(|o| key(o) == key(v)) else {
            c.vips_added.push(v.name());
            continue;
        };
        let what = |n: &str, a: &dyn Debug, b: &dyn Debug| {
            let (a, b) = (format!("{a:?}"), format!("{b:?}"));
            (a != b).then(|| format!("{} {n}: {a} -> {b}", v.name()))
        };
        c.vips_changed.extend(
            [
                what("mode", &o.mode, &v.mode),
                what("scheduler", &o.scheduler, &v.scheduler),
                what("persistence", &o.persistence, &v.persistence),
                what("health", &o.health, &v.health),
            ]
            .into_iter()
            .flatten(),
        );
        for b in &v.backends {
            let Some(ob) = o.backends.iter().find(|ob| bkey(ob) == bkey(b)) else {
                c.backends_added.push(bname(v, b));
                continue;
            };
            if ob.weight != b.weight {
                c.backends_changed.push(format!("{} weight {} -> {}", bname(v, b), ob.weight, b.weight));
            }
            if ob.mac != b.mac || ob.check != b.check {
                c.backends_changed.push(format!("{} {}", bname(v, b), if ob.mac != b.mac { "mac" } else { "health check" }));
            }
        }
        c.backends_removed.extend(o.backends.iter().filter(|ob| !v.backends.iter().any(|b| bkey(b) == bkey(ob))).map(|ob| bname(o, ob)));
    }
    c.vips_removed.extend(old.vips.iter().filter(|o| !new.vips.iter().any(|v| key(v) == key(o))).map(cfg::Vip::name));
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[[interface]]
name = "lb0"
role = "one-arm"

[[vip]]
address = "198.18.0.100"
protocol = "tcp"
port = 80
mode = "full-nat"
snat = "198.18.0.2"

[[vip.backend]]
address = "198.18.0.11"

[[vip.backend]]
address = "198.18.0.12"
"#;

    fn config(text: &str) -> cfg::Config {
        cfg::parse(text, "fulcrum.toml").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn daemon_interfaces_limits_and_timeouts_need_a_restart() {
        let old = config(BASE);
        let new = config(&format!(
            "[daemon]\nmetrics_listen = \"127.0.0.1:9200\"\nworkers = 2\n[limits]\nsnat_ports = \"2000-3000\"\n[timeouts]\nudp = \"1m\"\n{}",
            BASE.replace("name = \"lb0\"", "name = \"lb1\"\nmtu = 1400")
        ));
        assert_eq!(
            needs_restart(&old, &new),
            [
                "daemon.metrics_listen: 127.0.0.1:7780 -> 127.0.0.1:9200",
                "daemon.workers: Auto -> Count(2)",
                "interface: lb0 (one-arm) -> lb1 (one-arm, mtu 1400)",
                "limits.snat_ports: 1024-65535 -> 2000-3000",
                "timeouts.udp: 300s -> 60s",
            ]
        );
        assert!(needs_restart(&old, &old).is_empty());
        assert!(changes(&old, &old).is_empty());
        assert_eq!(changes(&old, &old).summary(), "no change");
    }

    #[test]
    fn vips_and_backends_added_removed_and_changed() {
        let old = config(BASE);
        let new = config(&format!(
            "{}\n[[vip]]\naddress = \"198.18.0.101\"\nprotocol = \"udp\"\nport = 53\nmode = \"dsr\"\nbackend = []\n",
            BASE.replace("address = \"198.18.0.12\"", "address = \"198.18.0.13\"\nport = 8080\n[[vip.backend]]\naddress = \"198.18.0.12\"\nweight = 0")
                .replace("full-nat\"\nsnat = \"198.18.0.2\"", "nat\"")
        ));
        let c = changes(&old, &new);
        assert_eq!(c.vips_added, ["198.18.0.101:53/udp"]);
        assert_eq!(c.vips_changed, ["198.18.0.100:80/tcp mode: FullNat { snat: [198.18.0.2] } -> Nat"]);
        assert_eq!(c.backends_added, ["198.18.0.100:80/tcp backend 198.18.0.13:8080"]);
        assert_eq!(c.backends_changed, ["198.18.0.100:80/tcp backend 198.18.0.12 weight 1 -> 0"]);
        assert_eq!(c.summary(), "1 VIP added, 1 VIP changed, 1 backend added, 1 backend changed");
        let back = changes(&new, &old);
        assert_eq!(back.vips_removed, ["198.18.0.101:53/udp"]);
        assert_eq!(back.backends_removed, ["198.18.0.100:80/tcp backend 198.18.0.13:8080"]);
        assert_eq!(
            back.details()[..2],
            ["- vip 198.18.0.101:53/udp".to_string(), "~ vip 198.18.0.100:80/tcp mode: Nat -> FullNat { snat: [198.18.0.2] }".into()]
        );
    }
}
