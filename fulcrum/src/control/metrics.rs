//! Prometheus text exposition (format 0.0.4) on `daemon.metrics_listen`.
//!
//! A minimal HTTP/1.1 responder: Prometheus sends one `GET /metrics` per
//! scrape, so a bounded request read and `Connection: close` are all it
//! needs, without bringing in an HTTP stack. Connections are served
//! concurrently (`conn`), so a client that connects and says nothing
//! delays no scrape. The counters are read from the workers' atomics (see
//! `Telemetry`); a scrape costs the packet path nothing.

use std::fmt::Write as _;
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fulcrum_health::DURATION_BOUNDS_US;

use super::api::{Reloads, SocketReport, StatsReport, SyncReport, Traffic};
use super::backends::parse_vip;
use super::conn::{self, Limits, Received};
use super::telemetry::Telemetry;
use crate::error::Error;
use crate::ha::sync::LAG_BUCKETS_MS;

/// A scraper sends one short request: the whole of it within 2 s, at most
/// 8 KiB; 64 scrapes at once are far more than any Prometheus set-up.
pub const LIMITS: Limits =
    Limits { name: "fulcrum-metrics", max_connections: 64, request_timeout: Duration::from_secs(2), max_request: 8192, write_timeout: Duration::from_secs(5) };

const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\nConnection: close\r\n\r\n";

/// Binds `addr` (before the daemon starts, so a port in use is a clear
/// start-up error).
pub fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr).map_err(Error::system(format!("metrics endpoint daemon.metrics_listen {addr}")))
}

/// Serves scrapes until the process exits.
pub fn serve(listener: TcpListener, telemetry: Arc<Telemetry>) -> Result<(), Error> {
    conn::serve(listener, LIMITS, BUSY, move |conn, deadline| {
        if let Err(e) = answer(conn, deadline, &telemetry) {
            tracing::debug!("metrics scrape: {e}");
        }
    })
}

fn answer(mut conn: TcpStream, deadline: Instant, telemetry: &Telemetry) -> std::io::Result<()> {
    let req = match conn::read_request(&mut conn, deadline, LIMITS.max_request, |r| r.windows(4).any(|w| w == b"\r\n\r\n"))? {
        Received::Request(r) => r,
        Received::TooLarge => return respond(conn, "431 Request Header Fields Too Large", "text/plain; charset=utf-8", "request too large\n"),
        Received::TimedOut => return respond(conn, "408 Request Timeout", "text/plain; charset=utf-8", "request not complete in time\n"),
    };
    let line = String::from_utf8_lossy(&req);
    let mut words = line.split_whitespace();
    let (status, kind, body) = match (words.next(), words.next().map(|p| p.split('?').next().unwrap_or(p))) {
        (Some("GET"), Some("/metrics")) => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", render(&telemetry.stats(), &telemetry.reloads())),
        // Answered by the process: it is alive (a liveness probe).
        (Some("GET"), Some("/healthz")) => ("200 OK", "text/plain; charset=utf-8", "ok\n".into()),
        // Served once the workers run and the programs are attached; a
        // drain makes the balancer unready (a readiness probe).
        (Some("GET"), Some("/ready")) if telemetry.ready() => ("200 OK", "text/plain; charset=utf-8", "ready\n".into()),
        (Some("GET"), Some("/ready")) => ("503 Service Unavailable", "text/plain; charset=utf-8", "draining\n".into()),
        (Some("GET"), Some("/")) => ("200 OK", "text/plain; charset=utf-8", "fulcrum: /metrics, /ready, /healthz\n".into()),
        (Some("GET"), _) => ("404 Not Found", "text/plain; charset=utf-8", "not found: try /metrics, /ready or /healthz\n".into()),
        _ => ("405 Method Not Allowed", "text/plain; charset=utf-8", "GET /metrics only\n".into()),
    };
    respond(conn, status, kind, &body)
}

fn respond(mut conn: TcpStream, status: &str, kind: &str, body: &str) -> std::io::Result<()> {
    let head = format!("HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    let deadline = Instant::now() + LIMITS.write_timeout;
    conn::write_answer(&mut conn, &[head.as_bytes(), body.as_bytes()].concat(), deadline)
}

/// One metric family: its HELP and TYPE lines, then its samples.
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn new<'a>(out: &'a mut String, name: &str, kind: &str, help: &str) -> Family<'a> {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        Family { out }
    }

    /// `labels` as `name="value"` pairs already joined by commas. Label
    /// values here are addresses, ports, numbers and fixed words: nothing
    /// that needs escaping.
    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) -> &mut Self {
        let _ = if labels.is_empty() { writeln!(self.out, "{name} {value}") } else { writeln!(self.out, "{name}{{{labels}}} {value}") };
        self
    }
}

/// A VIP's labels: its name as `fulcrum status` writes it (`vip`), and
/// its parts (`address`, `port`, `protocol`; port "*" for every port) to
/// select and group by.
fn vip_labels(name: &str) -> String {
    match parse_vip(name) {
        Some((address, protocol, port)) => {
            let port = if port == 0 { "*".to_string() } else { port.to_string() };
            format!("vip=\"{name}\",address=\"{address}\",port=\"{port}\",protocol=\"{protocol}\"")
        }
        None => format!("vip=\"{name}\""),
    }
}

/// The exposition: per VIP and backend (labels `vip`, `backend`, summed
/// over the workers), drops by reason, per worker (label `worker`),
/// reloads. Counter names end in `_total`.
pub fn render(s: &StatsReport, reloads: &Reloads) -> String {
    let mut out = String::new();
    let name = "fulcrum_build_info";
    Family::new(&mut out, name, "gauge", "Always 1; the version of the running daemon in a label.").sample(
        name,
        &format!("version=\"{}\"", env!("CARGO_PKG_VERSION")),
        1,
    );
    let name = "fulcrum_config_last_reload_successful";
    let successful = reloads.last.as_ref().is_none_or(|l| l.applied);
    Family::new(&mut out, name, "gauge", "1 unless the last reload was refused (the configuration in force is then not the file's).").sample(
        name,
        "",
        u8::from(successful),
    );
    let name = "fulcrum_config_last_reload_success_timestamp_seconds";
    Family::new(&mut out, name, "gauge", "When the configuration in force was put in force (start or last reload applied), in Unix seconds.").sample(
        name,
        "",
        reloads.last_applied_at,
    );
    type Of = fn(&Traffic) -> u64;
    let traffic: [(&str, &str, Of); 5] = [
        ("packets", "Packets forwarded, both directions", |t| t.packets),
        ("bytes", "Bytes forwarded (frames as received), both directions", |t| t.bytes),
        ("new_flows", "Flows created (connections, UDP flows)", |t| t.new_flows),
        ("resets", "Established flows answered with a RST because their backend went down", |t| t.resets),
        ("moved_clients", "Sticky clients moved off a backend that was down (under a backend: the clients it lost)", |t| t.moved_clients),
    ];
    for (what, help, get) in traffic {
        let name = format!("fulcrum_vip_{what}_total");
        let mut f = Family::new(&mut out, &name, "counter", &format!("{help}, per VIP."));
        for v in &s.vips {
            f.sample(&name, &vip_labels(&v.name), get(&v.traffic));
        }
        let name = format!("fulcrum_backend_{what}_total");
        let mut f = Family::new(&mut out, &name, "counter", &format!("{help}, per backend of a VIP."));
        for v in &s.vips {
            for b in &v.backends {
                f.sample(&name, &format!("{},backend=\"{}\"", vip_labels(&v.name), b.name), get(&b.traffic));
            }
        }
    }
    backend_health(&mut out, s);
    vip_plugins(&mut out, s);
    sockets(&mut out, s);
    let name = "fulcrum_vip_drops_total";
    let mut f = Family::new(&mut out, name, "counter", "Frames for a VIP dropped, per VIP and reason (reasons seen so far).");
    for v in &s.vips {
        for (reason, n) in &v.drops {
            f.sample(name, &format!("{},reason=\"{reason}\"", vip_labels(&v.name)), n);
        }
    }
    let name = "fulcrum_drops_total";
    let mut f = Family::new(&mut out, name, "counter", "Frames dropped, per reason, whether or not tied to a VIP.");
    for (reason, n) in &s.drops {
        f.sample(name, &format!("reason=\"{reason}\""), n);
    }
    // The daemon-wide counters without labels.
    for (name, help, value) in [
        ("fulcrum_passed_total", "Frames handed to the kernel (not balanced traffic).", s.passed),
        ("fulcrum_scheduler_faults_total", "Plugin scheduler picks that failed; those flows went to Maglev.", s.scheduler_faults),
        ("fulcrum_fragments_followed_total", "IP fragments after the first, sent where their datagram's first fragment went.", s.fragments_followed),
        (
            "fulcrum_fragments_placed_total",
            "IP fragments after the first that came before it, placed by their addresses; the rest of the datagram followed.",
            s.fragments_placed,
        ),
        ("fulcrum_syns_without_state_total", "SYNs of dsr and tunnel VIPs at their half-open cap, forwarded by Maglev without an entry.", s.syns_without_state),
        ("fulcrum_syn_cookies_sent_total", "SYNs of nat and full-nat VIPs answered with a SYN cookie by the SYN proxy.", s.syn_cookies_sent),
        ("fulcrum_syn_cookies_accepted_total", "Client ACKs that returned a valid SYN cookie and opened a flow.", s.syn_cookies_accepted),
        (
            "fulcrum_health_checks_late_total",
            "Health checks started more than 10 ms after their time (the health thread falling behind).",
            s.health_checks_late,
        ),
    ] {
        Family::new(&mut out, name, "counter", help).sample(name, "", value);
    }

    type Get = fn(&super::api::WorkerReport) -> u64;
    let per_worker: [(&str, &str, &str, Get); 10] = [
        ("fulcrum_worker_polls_total", "counter", "Poll-loop iterations.", |w| w.polls),
        ("fulcrum_worker_busy_polls_total", "counter", "Poll-loop iterations that found frames (busy ratio: rate of this / rate of polls).", |w| w.busy_polls),
        ("fulcrum_worker_frames_total", "counter", "Frames processed.", |w| w.frames),
        ("fulcrum_worker_handed_out_total", "counter", "Frames handed to the worker owning their flow.", |w| w.handed_out),
        ("fulcrum_worker_handed_in_total", "counter", "Frames received from other workers.", |w| w.handed_in),
        ("fulcrum_worker_handoff_lost_total", "counter", "Handoffs lost to a full queue or a lack of buffers.", |w| w.handoff_lost),
        ("fulcrum_worker_unsteerable_total", "counter", "Frames steered to fulcrum that were not for it (dropped).", |w| w.unsteerable),
        ("fulcrum_connections", "gauge", "Connection-table entries in use (a NAT flow takes two).", |w| w.connections),
        ("fulcrum_connection_evictions_total", "counter", "Connection-table entries evicted to make room.", |w| w.evictions),
        ("fulcrum_connection_expirations_total", "counter", "Connection-table entries removed when idle too long.", |w| w.expirations),
    ];
    for (name, kind, help, get) in per_worker {
        let mut f = Family::new(&mut out, name, kind, help);
        for (i, w) in s.workers.iter().enumerate() {
            f.sample(name, &format!("worker=\"{i}\""), get(w));
        }
    }
    let name = "fulcrum_connections_capacity";
    let mut f = Family::new(&mut out, name, "gauge", "Connection-table capacity.");
    for (i, w) in s.workers.iter().enumerate() {
        f.sample(name, &format!("worker=\"{i}\""), w.connections_capacity);
    }
    let name = "fulcrum_worker_batch_size";
    let mut f = Family::new(&mut out, name, "histogram", "Frames per busy poll.");
    for (i, w) in s.workers.iter().enumerate() {
        let mut cumulative = 0;
        for (b, n) in w.batch_sizes.iter().enumerate() {
            cumulative += n;
            f.sample(&format!("{name}_bucket"), &format!("worker=\"{i}\",le=\"{}\"", 1u64 << b), cumulative);
        }
        f.sample(&format!("{name}_bucket"), &format!("worker=\"{i}\",le=\"+Inf\""), cumulative);
        f.sample(&format!("{name}_sum"), &format!("worker=\"{i}\""), w.frames);
        f.sample(&format!("{name}_count"), &format!("worker=\"{i}\""), w.busy_polls);
    }
    if let Some(sync) = &s.sync {
        render_sync(&mut out, sync);
    }
    let name = "fulcrum_reloads_total";
    Family::new(&mut out, name, "counter", "Configuration reloads, applied or refused.").sample(name, "result=\"applied\"", reloads.applied).sample(
        name,
        "result=\"refused\"",
        reloads.refused,
    );
    out
}

/// The role of a balancer pair and its flow sync.
fn render_sync(out: &mut String, s: &SyncReport) {
    let name = "fulcrum_ha_role";
    let mut f = Family::new(out, name, "gauge", "1 for the role this balancer of an HA pair has (master forwards the VIPs), 0 for the others.");
    for role in ["master", "backup", "fault"] {
        f.sample(name, &format!("role=\"{role}\""), u8::from(s.role == role));
    }
    let name = "fulcrum_sync_entries_total";
    let mut f = Family::new(out, name, "counter", "Flow entries synced with the peer, by direction and result.");
    for (direction, result, n) in &s.entries {
        f.sample(name, &format!("direction=\"{direction}\",result=\"{result}\""), n);
    }
    let name = "fulcrum_sync_datagrams_dropped_total";
    let mut f = Family::new(out, name, "counter", "Sync datagrams dropped, by reason.");
    for (reason, n) in &s.datagrams_dropped {
        f.sample(name, &format!("reason=\"{reason}\""), n);
    }
    let name = "fulcrum_sync_bytes_sent_total";
    Family::new(out, name, "counter", "Sync bytes sent (UDP payloads, per destination).").sample(name, "", s.bytes_sent);
    let name = "fulcrum_sync_lag_seconds";
    let mut f = Family::new(out, name, "histogram", "Time from a worker's flow change to its datagram leaving.");
    let mut cumulative = 0;
    for (i, n) in s.lag_buckets.iter().enumerate() {
        cumulative += n;
        let le = LAG_BUCKETS_MS.get(i).map_or_else(|| "+Inf".to_string(), |ms| (*ms as f64 / 1000.0).to_string());
        f.sample(&format!("{name}_bucket"), &format!("le=\"{le}\""), cumulative);
    }
    f.sample(&format!("{name}_sum"), "", s.lag_sum_ms as f64 / 1000.0);
    f.sample(&format!("{name}_count"), "", cumulative);
}

/// Per VIP with a scheduler plugin: which one is in force, what it did
/// and what went wrong.
fn vip_plugins(out: &mut String, s: &StatsReport) {
    let plugins = || s.vips.iter().filter_map(|v| Some((vip_labels(&v.name), v.plugin.as_ref()?)));
    let name = "fulcrum_vip_plugin_info";
    let mut f = Family::new(out, name, "gauge", "The scheduler plugin in force (labels plugin, hash); the value is its generation.");
    for (labels, p) in plugins() {
        f.sample(name, &format!("{labels},plugin=\"{}\",hash=\"{}\"", p.name, p.hash), p.generation);
    }
    let name = "fulcrum_vip_plugin_picks_total";
    let mut f = Family::new(out, name, "counter", "New flows the scheduler plugin was asked to place.");
    for (labels, p) in plugins() {
        f.sample(name, &labels, p.picks);
    }
    let name = "fulcrum_vip_plugin_fallbacks_total";
    let mut f = Family::new(out, name, "counter", "New flows native Maglev placed instead of the plugin, by reason.");
    for (labels, p) in plugins() {
        for (reason, n) in &p.fallbacks {
            f.sample(name, &format!("{labels},reason=\"{reason}\""), n);
        }
    }
    let name = "fulcrum_vip_plugin_faults_total";
    let mut f = Family::new(out, name, "counter", "Scheduler plugin faults, by kind.");
    for (labels, p) in plugins() {
        for (kind, n) in &p.faults {
            f.sample(name, &format!("{labels},kind=\"{kind}\""), n);
        }
    }
    let name = "fulcrum_vip_plugin_quarantined";
    let mut f = Family::new(out, name, "gauge", "1 while the plugin in force is quarantined (its new flows go to native Maglev).");
    for (labels, p) in plugins() {
        f.sample(name, &labels, u8::from(p.quarantined));
    }
    let name = "fulcrum_vip_plugin_instantiations_total";
    let mut f = Family::new(out, name, "counter", "Plugin instances the workers ran.");
    for (labels, p) in plugins() {
        f.sample(name, &labels, p.instantiations);
    }
    let name = "fulcrum_vip_plugin_batches_total";
    let mut f = Family::new(out, name, "counter", "lb_pick_batch calls: a chunk's new flows placed in one call.");
    for (labels, p) in plugins() {
        f.sample(name, &labels, p.batches);
    }
    let name = "fulcrum_vip_plugin_pick_p99_seconds";
    let mut f = Family::new(
        out,
        name,
        "gauge",
        "99th percentile of a pick's cost on the worker (one lb_pick in eight is timed, and every batch at its cost per flow).",
    );
    for (labels, ns) in plugins().filter_map(|(l, p)| Some((l, p.pick_p99_ns?))) {
        f.sample(name, &labels, ns as f64 / 1e9);
    }
    let name = "fulcrum_vip_plugin_last_fault_timestamp_seconds";
    let mut f = Family::new(out, name, "gauge", "When the plugin in force last faulted (Unix time).");
    for (labels, at) in plugins().filter_map(|(l, p)| Some((l, p.last_fault.as_ref()?.at))) {
        f.sample(name, &labels, at);
    }
}

/// Per backend of a VIP: whether it takes new flows, its weight in force,
/// its connections, byte rate and handshake time, and its health checks
/// (backends of VIPs with checks only).
fn backend_health(out: &mut String, s: &StatsReport) {
    let backends = || s.vips.iter().flat_map(|v| v.backends.iter().map(move |b| (format!("{},backend=\"{}\"", vip_labels(&v.name), b.name), b)));
    let name = "fulcrum_backend_up";
    let mut f = Family::new(out, name, "gauge", "1 if the backend is up (draining included), 0 if its health checks took it down.");
    for (labels, b) in backends() {
        f.sample(name, &labels, u8::from(b.state != "down"));
    }
    let name = "fulcrum_backend_weight";
    let mut f = Family::new(out, name, "gauge", "The backend's weight in force (0: draining).");
    for (labels, b) in backends() {
        f.sample(name, &labels, b.weight);
    }
    let name = "fulcrum_backend_connections";
    let mut f = Family::new(out, name, "gauge", "Connections the daemon holds to the backend: active (established TCP, live UDP) and pending (half-open TCP).");
    for (labels, b) in backends() {
        f.sample(name, &format!("{labels},state=\"active\""), b.active).sample(name, &format!("{labels},state=\"pending\""), b.pending);
    }
    let name = "fulcrum_backend_bytes_per_second";
    let mut f = Family::new(out, name, "gauge", "Bytes per second to and from the backend, smoothed over about a second.");
    for (labels, b) in backends() {
        f.sample(name, &labels, b.bytes_per_sec);
    }
    let name = "fulcrum_backend_handshake_seconds";
    let mut f = Family::new(out, name, "gauge", "Smoothed TCP handshake time the balancer measures (nat and full-nat VIPs; while measured in the last 10 s).");
    for (labels, us) in backends().filter_map(|(l, b)| Some((l, b.handshake_rtt_us?))) {
        f.sample(name, &labels, f64::from(us) / 1e6);
    }
    let name = "fulcrum_health_checks_total";
    let mut f = Family::new(out, name, "counter", "Health checks completed, by result.");
    for (labels, c) in backends().filter_map(|(l, b)| Some((l, b.checks.as_ref()?))) {
        f.sample(name, &format!("{labels},result=\"passed\""), c.passed).sample(name, &format!("{labels},result=\"failed\""), c.failed);
    }
    let name = "fulcrum_health_transitions_total";
    let mut f = Family::new(out, name, "counter", "Health transitions, by the state reached.");
    for (labels, c) in backends().filter_map(|(l, b)| Some((l, b.checks.as_ref()?))) {
        f.sample(name, &format!("{labels},to=\"down\""), c.went_down).sample(name, &format!("{labels},to=\"up\""), c.went_up);
    }
    let name = "fulcrum_health_check_seconds";
    let mut f = Family::new(out, name, "gauge", "Smoothed duration of the backend's passing health checks (0 before the first).");
    for (labels, c) in backends().filter_map(|(l, b)| Some((l, b.checks.as_ref()?))) {
        f.sample(name, &labels, f64::from(c.rtt_us) / 1e6);
    }
    let name = "fulcrum_health_check_duration_seconds";
    let mut f = Family::new(out, name, "histogram", "Duration of every finished health check, passed or failed (a timeout counts its timeout).");
    for (labels, c) in backends().filter_map(|(l, b)| Some((l, b.checks.as_ref()?))) {
        let mut cumulative = 0;
        for (i, n) in c.durations.iter().enumerate() {
            cumulative += n;
            let le = DURATION_BOUNDS_US.get(i).map_or_else(|| "+Inf".to_string(), |us| (*us as f64 / 1e6).to_string());
            f.sample(&format!("{name}_bucket"), &format!("{labels},le=\"{le}\""), cumulative);
        }
        f.sample(&format!("{name}_sum"), &labels, c.duration_sum_us as f64 / 1e6);
        f.sample(&format!("{name}_count"), &labels, cumulative);
    }
}

/// Per AF_XDP socket (labels `worker`, `interface`, `queue`): whether it
/// runs zero-copy and what the kernel dropped or found wrong on its rings.
fn sockets(out: &mut String, s: &StatsReport) {
    let labels = |k: &SocketReport| format!("worker=\"{}\",interface=\"{}\",queue=\"{}\"", k.worker, k.interface, k.queue);
    let name = "fulcrum_xsk_zero_copy";
    let mut f = Family::new(out, name, "gauge", "1 if the AF_XDP socket runs in zero-copy mode, 0 in copy mode (XDP_OPTIONS).");
    for k in &s.sockets {
        f.sample(name, &labels(k), u8::from(k.zero_copy));
    }
    let name = "fulcrum_xsk_rx_drops_total";
    let mut f = Family::new(
        out,
        name,
        "counter",
        "Frames the kernel dropped before the AF_XDP socket's worker saw them, by reason: rx_ring_full (the worker did not keep up), fill_ring_empty (no free buffer), invalid (bad descriptor), other.",
    );
    for k in &s.sockets {
        let l = labels(k);
        for (reason, n) in [("rx_ring_full", k.rx_ring_full), ("fill_ring_empty", k.fill_ring_empty), ("invalid", k.rx_invalid), ("other", k.rx_dropped)] {
            f.sample(name, &format!("{l},reason=\"{reason}\""), n);
        }
    }
    let name = "fulcrum_xsk_tx_invalid_total";
    let mut f = Family::new(out, name, "counter", "Invalid descriptors the kernel found on the AF_XDP socket's TX ring (frames not sent).");
    for k in &s.sockets {
        f.sample(name, &labels(k), k.tx_invalid);
    }
    let name = "fulcrum_xsk_tx_ring_empty_total";
    let mut f = Family::new(out, name, "counter", "Times the kernel found the AF_XDP socket's TX ring empty when it looked for frames to send.");
    for k in &s.sockets {
        f.sample(name, &labels(k), k.tx_ring_empty);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::api::{BackendStats, CheckCounters, LastReload, PluginFault, PluginReport, VipStats, WorkerReport};

    #[test]
    fn exposition_format() {
        let s = StatsReport {
            vips: vec![VipStats {
                name: "198.18.0.100:80/tcp".into(),
                traffic: Traffic { packets: 10, bytes: 600, new_flows: 2, resets: 1, moved_clients: 0 },
                drops: [("no_backend".to_string(), 1)].into(),
                backends: vec![BackendStats {
                    name: "198.18.0.11:8080".into(),
                    state: "down".into(),
                    weight: 3,
                    traffic: Traffic { packets: 10, bytes: 600, new_flows: 2, resets: 1, moved_clients: 0 },
                    active: 4,
                    pending: 1,
                    bytes_per_sec: 2500,
                    handshake_rtt_us: Some(250),
                    checks: Some(CheckCounters {
                        passed: 7,
                        failed: 3,
                        went_down: 1,
                        went_up: 0,
                        rtt_us: 1500,
                        durations: vec![2, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3],
                        duration_sum_us: 30_004_200,
                    }),
                }],
                plugin: Some(PluginReport {
                    name: "least-connections".into(),
                    hash: "00000000000000ab".into(),
                    generation: 2,
                    picks: 9,
                    declines: 1,
                    fallbacks: [("declined".to_string(), 1), ("preparing".to_string(), 2)].into(),
                    faults: [("trap".to_string(), 3)].into(),
                    quarantined: true,
                    last_fault: Some(PluginFault { message: "`lb_pick` trapped".into(), at: 1_700_000_000 }),
                    instantiations: 4,
                    batches: 3,
                    pick_p99_ns: Some(1500),
                }),
            }],
            drops: [("no_backend".to_string(), 1), ("truncated".to_string(), 0)].into(),
            workers: vec![WorkerReport {
                polls: 9,
                busy_polls: 3,
                frames: 6,
                batch_sizes: vec![1, 1, 1, 0, 0, 0, 0],
                connections_capacity: 1024,
                ..WorkerReport::default()
            }],
            sockets: vec![SocketReport { worker: 0, interface: "eth0".into(), queue: 1, rx_ring_full: 12, tx_invalid: 2, ..SocketReport::default() }],
            ..StatsReport::default()
        };
        let last = Some(LastReload { at: 1_700_000_100, applied: false, message: "no".into() });
        let text = render(&s, &Reloads { applied: 4, refused: 1, last_applied_at: 1_700_000_000, last });
        for line in [
            "# TYPE fulcrum_vip_new_flows_total counter",
            "fulcrum_vip_new_flows_total{vip=\"198.18.0.100:80/tcp\",address=\"198.18.0.100\",port=\"80\",protocol=\"tcp\"} 2",
            "fulcrum_backend_bytes_total{vip=\"198.18.0.100:80/tcp\",address=\"198.18.0.100\",port=\"80\",protocol=\"tcp\",backend=\"198.18.0.11:8080\"} 600",
            "fulcrum_vip_drops_total{vip=\"198.18.0.100:80/tcp\",address=\"198.18.0.100\",port=\"80\",protocol=\"tcp\",reason=\"no_backend\"} 1",
            "fulcrum_vip_resets_total{vip=\"198.18.0.100:80/tcp\",address=\"198.18.0.100\",port=\"80\",protocol=\"tcp\"} 1",
            "fulcrum_backend_up{vip=\"198.18.0.100:80/tcp\",address=\"198.18.0.100\",port=\"80\",protocol=\"tcp\",backend=\"198.18.0.11:8080\"} 0",
            "fulcrum_backend_weight{vip=\"198.18.0.100:80/tcp\",address=\"198.18.0.100\",port=\"80\",protocol=\"tcp\",backend=\"198.18.0.11:8080\"} 3",
            "fulcrum_backend_connections{vip=\"198.18.0.100:80/tcp\",address=\"198.18.0.100\",port=\"80\",protocol=\"tcp\",backend=\"198.18.0.11:8080\",state=\"active\"} 4",
            "fulcrum_backend_connections{vip=\"198.18.0.100:80/tcp\",address=\"198.18.0.100\",port=\"80\",protocol=\"tcp\",backend=\"198.18.0.11:8080\",state=\"pending\"} 1",
            "fulcrum_backend_bytes_per_second{vip=\"198.18.0.100:80/tcp\",address=\"198.18.0.100\",port=\"80\",protocol=\"tcp\",backend=\"198.18.0.11:8080\"} 2500",
            "fulcrum_backend_handshake_seconds{vip=\"198.18.0.100:80/tcp\",address=\"198.18.0.100\",port=\"80\",protocol=\"tcp\",backend=\"198.18.0.11:8080\"} 0.00025",
            "fulcrum_health_checks_total{vip=\"198.18.0.100:80/tcp\",address=\"198.18.0.100\",port=\"80\",protocol=\"tcp\",backend=\"198.18.0.11:8080\",result=\"failed\"} 3",
            "fulcrum_health_transitions_total{vip=\"198.18.0.100:80/tcp\",address=\"198.18.0.100\",port=\"80\",protocol=\"tcp\",backend=\"198.18.0.11:8080\",to=\"down\"} 1",
            "fulcrum_health_check_seconds{vip=\"198.18.0.100:80/tcp\",address=\"198.18.0.100\",port=\"80\",protocol=\"tcp\",backend=\"198.18.0.11:8080\"} 0.0015",
            "fulcrum_health_check_duration_seconds_bucket{vip=\"198.18.0.100:80/tcp\",address=\"198.18.0.100\",port=\"80\",protocol=\"tcp\",backend=\"198.18.0.11:8080\",le=\"0.0005\"} 2",
            "fulcrum_health_check_duration_seconds_bucket{vip=\"198.18.0.100:80/tcp\",address=\"198.18.0.100\",port=\"80\",protocol=\"tcp\",backend=\"198.18.0.11:8080\",le=\"0.001\"} 7",
            "fulcrum_health_check_duration_seconds_bucket{vip=\"198.18.0.100:80/tcp\",address=\"198.18.0.100\",port=\"80\",protocol=\"tcp\",backend=\"198.18.0.11:8080\",le=\"10\"} 7",
            "fulcrum_health_check_duration_seconds_bucket{vip=\"198.18.0.100:80/tcp\",address=\"198.18.0.100\",port=\"80\",protocol=\"tcp\",backend=\"198.18.0.11:8080\",le=\"+Inf\"} 10",
            "fulcrum_health_check_duration_seconds_sum{vip=\"198.18.0.100:80/tcp\",address=\"198.18.0.100\",port=\"80\",protocol=\"tcp\",backend=\"198.18.0.11:8080\"} 30.0042",
            "fulcrum_health_check_duration_seconds_count{vip=\"198.18.0.100:80/tcp\",address=\"198.18.0.100\",port=\"80\",protocol=\"tcp\",backend=\"198.18.0.11:8080\"} 10",
            "fulcrum_xsk_zero_copy{worker=\"0\",interface=\"eth0\",queue=\"1\"} 0",
            "fulcrum_xsk_rx_drops_total{worker=\"0\",interface=\"eth0\",queue=\"1\",reason=\"rx_ring_full\"} 12",
            "fulcrum_xsk_rx_drops_total{worker=\"0\",interface=\"eth0\",queue=\"1\",reason=\"fill_ring_empty\"} 0",
            "fulcrum_xsk_tx_invalid_total{worker=\"0\",interface=\"eth0\",queue=\"1\"} 2",
            "fulcrum_drops_total{reason=\"truncated\"} 0",
            "fulcrum_worker_busy_polls_total{worker=\"0\"} 3",
            "fulcrum_connections_capacity{worker=\"0\"} 1024",
            "fulcrum_worker_batch_size_bucket{worker=\"0\",le=\"1\"} 1",
            "fulcrum_worker_batch_size_bucket{worker=\"0\",le=\"4\"} 3",
            "fulcrum_worker_batch_size_bucket{worker=\"0\",le=\"+Inf\"} 3",
            "fulcrum_worker_batch_size_sum{worker=\"0\"} 6",
            "fulcrum_reloads_total{result=\"refused\"} 1",
            concat!("fulcrum_build_info{version=\"", env!("CARGO_PKG_VERSION"), "\"} 1"),
            "fulcrum_config_last_reload_successful 0",
            "fulcrum_config_last_reload_success_timestamp_seconds 1700000000",
            "fulcrum_vip_plugin_info{vip=\"198.18.0.100:80/tcp\",address=\"198.18.0.100\",port=\"80\",protocol=\"tcp\",plugin=\"least-connections\",hash=\"00000000000000ab\"} 2",
            "fulcrum_vip_plugin_picks_total{vip=\"198.18.0.100:80/tcp\",address=\"198.18.0.100\",port=\"80\",protocol=\"tcp\"} 9",
            "fulcrum_vip_plugin_fallbacks_total{vip=\"198.18.0.100:80/tcp\",address=\"198.18.0.100\",port=\"80\",protocol=\"tcp\",reason=\"preparing\"} 2",
            "fulcrum_vip_plugin_faults_total{vip=\"198.18.0.100:80/tcp\",address=\"198.18.0.100\",port=\"80\",protocol=\"tcp\",kind=\"trap\"} 3",
            "fulcrum_vip_plugin_quarantined{vip=\"198.18.0.100:80/tcp\",address=\"198.18.0.100\",port=\"80\",protocol=\"tcp\"} 1",
            "fulcrum_vip_plugin_instantiations_total{vip=\"198.18.0.100:80/tcp\",address=\"198.18.0.100\",port=\"80\",protocol=\"tcp\"} 4",
            "fulcrum_vip_plugin_last_fault_timestamp_seconds{vip=\"198.18.0.100:80/tcp\",address=\"198.18.0.100\",port=\"80\",protocol=\"tcp\"} 1700000000",
            "fulcrum_vip_plugin_batches_total{vip=\"198.18.0.100:80/tcp\",address=\"198.18.0.100\",port=\"80\",protocol=\"tcp\"} 3",
            "fulcrum_vip_plugin_pick_p99_seconds{vip=\"198.18.0.100:80/tcp\",address=\"198.18.0.100\",port=\"80\",protocol=\"tcp\"} 0.0000015",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        // Every sample belongs to the family declared just before it.
        let mut family = String::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap().to_string();
            } else if !l.starts_with('#') {
                assert!(l.starts_with(&family), "{l} outside {family}");
            }
        }
    }
}
