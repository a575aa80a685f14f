//! The control protocol: one JSON request per line on the control socket,
//! one JSON response line back, then the daemon closes the connection.
//!
//! ```text
//! {"request":"status"}        -> {"status":{...}}
//! {"request":"stats"}         -> {"stats":{...}}
//! {"request":"reload"}        -> {"reloaded":{...}}    or {"error":"..."}
//! {"request":"plugin_load","vip":"198.18.0.100:80/tcp","path":"/x.wasm"}
//!                             -> {"plugin_loaded":{...}} or {"error":"..."}
//! {"request":"routes"}        -> {"routes":{"announce":["198.18.100.1"],"draining":false}}
//! {"request":"drain"}         -> {"draining":{...}}
//! {"request":"backend","vip":"198.18.100.1:80/tcp","backend":"198.18.0.14","change":{"op":"add","weight":2}}
//!                             -> {"backends_changed":{...}} or {"error":"..."}
//!                                (ops: add, remove, weight, drain, undrain)
//! {"request":"backend_reset"} -> {"backends_changed":{...}}
//! {"request":"vip_list"}      -> {"vips":[...]}
//! ```
//!
//! A new request is one more `Request` variant (its fields next to the
//! tag) and usually one more `Response` variant. The types are also what
//! `fulcrum status --json` and `fulcrum stats --json` print.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use fulcrum_dataplane::services::backend_name;
use serde::{Deserialize, Serialize};

pub use super::backends::BackendChange;
use super::human;
use super::reload::Changes;
use fulcrum_config::BackendOverride;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    Status,
    Stats,
    /// Re-read the configuration file the daemon was started with.
    Reload,
    /// Compile, check and smoke-test a scheduler plugin, then swap it in
    /// for the VIP's new flows ("198.18.0.100:80/tcp").
    PluginLoad {
        vip: String,
        path: std::path::PathBuf,
        /// Also record it in the state file, to be loaded at every reload
        /// and restart in place of the file's scheduler.
        #[serde(default)]
        persist: bool,
    },
    /// Drop the VIP's persisted plugin: the file's scheduler again.
    PluginForget {
        vip: String,
    },
    /// Set the role of this balancer of an HA pair ("master", "backup",
    /// "fault"), as keepalived's notify scripts do.
    HaRole {
        role: String,
    },
    /// The VIP addresses a BGP speaker should announce now (what the
    /// speaker's helper asks several times a second).
    Routes,
    /// Withdraw the VIPs, keep forwarding until their traffic stops or
    /// the grace ends, then exit.
    Drain,
    /// Change one backend of a VIP at runtime; kept in the state file
    /// across reloads and restarts.
    Backend {
        vip: String,
        /// "198.18.0.11" or "198.18.0.11:8080".
        backend: String,
        change: BackendChange,
    },
    /// Drop every runtime change: the file's backends again.
    BackendReset,
    /// The VIPs in force with their pools.
    VipList,
    /// Up to `limit` of a VIP's flows in the connection tables (of one
    /// client address, if given).
    Flows {
        vip: String,
        client: Option<std::net::IpAddr>,
        limit: usize,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Status(Status),
    Stats(StatsReport),
    Reloaded(ReloadReport),
    PluginLoaded(PluginLoaded),
    HaRole(RoleChange),
    Routes(Routes),
    Draining(Draining),
    BackendsChanged(BackendsChanged),
    Vips(Vec<VipStatus>),
    Flows(Vec<FlowEntry>),
    Error(String),
}

/// A runtime change to the backends, applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendsChanged {
    pub state_file: String,
    /// What the workers run differently now (nothing for a drain of a
    /// backend already at weight 0).
    pub changes: Changes,
    /// Every runtime change in force now.
    pub overrides: Vec<BackendOverride>,
}

/// What a BGP speaker should announce: nothing while the daemon drains.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routes {
    /// Announced as the best route (VIPs, this node's own SNAT addresses).
    pub announce: Vec<std::net::IpAddr>,
    /// Announced as a backup (peers' SNAT addresses on a full-NAT fleet).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backup: Vec<std::net::IpAddr>,
    pub draining: bool,
}

/// A drain under way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Draining {
    /// The daemon exits at the latest this long after the drain started.
    pub grace_secs: u64,
    /// Since the drain started.
    pub elapsed_ms: u64,
    /// Whether the speaker has been told to withdraw (always, without
    /// `[bgp]`).
    pub withdrawn: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleChange {
    pub previous: String,
    pub role: String,
}

/// The balancer's part in an HA pair (with `[sync]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaStatus {
    /// "master", "backup" or "fault".
    pub role: String,
    /// Demoted by hand from master: `fulcrum status` fails until
    /// keepalived's next notify, so that keepalived moves the addresses.
    pub standing_down: bool,
    pub listen: String,
    pub entries_sent: u64,
    pub entries_received: u64,
    /// Datagrams' bytes (UDP payload, HMAC included), hellos too.
    pub bytes_sent: u64,
    /// Time flows waited between a worker and the wire, 99th percentile
    /// (upper bound of its histogram bucket); none before the first.
    pub lag_p99_ms: Option<u64>,
    pub peers: Vec<PeerStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub addr: String,
    /// Since its last datagram; none if never heard.
    pub last_heard_ms: Option<u64>,
    pub entries_received: u64,
    /// Why its flows are refused (workers or SNAT ports differ).
    pub problem: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginLoaded {
    pub vip: String,
    pub plugin: String,
    /// Counts the plugins published for the VIP.
    pub generation: u64,
    /// The state file it was recorded in (`--persist`); `None`: it lasts
    /// until the daemon restarts.
    #[serde(default)]
    pub persisted: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    /// The configuration file, as given to `fulcrum run`.
    pub config: String,
    pub uptime_secs: u64,
    pub workers: usize,
    pub xdp_mode: String,
    /// "eth0 (one-arm)".
    pub interfaces: Vec<String>,
    pub metrics_listen: String,
    /// Where the runtime changes to the backends are kept.
    #[serde(default)]
    pub state_file: String,
    /// The runtime changes in force (`fulcrum backend`), laid over the
    /// file; `fulcrum backend reset` drops them.
    #[serde(default)]
    pub overrides: Vec<BackendOverride>,
    pub reloads: Reloads,
    pub vips: Vec<VipStatus>,
    /// With `[sync]`.
    #[serde(default)]
    pub ha: Option<HaStatus>,
    /// With `[bgp]`: what the speaker is asked to announce.
    #[serde(default)]
    /// Boxed: rare, and it would make every `Response` larger.
    pub bgp: Option<Box<Routes>>,
    /// While the daemon drains.
    #[serde(default)]
    pub draining: Option<Draining>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reloads {
    pub applied: u64,
    pub refused: u64,
    /// When the configuration in force was put in force (start or the
    /// last reload applied), in seconds since the Unix epoch.
    #[serde(default)]
    pub last_applied_at: u64,
    pub last: Option<LastReload>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastReload {
    /// Seconds since the Unix epoch.
    pub at: u64,
    pub applied: bool,
    /// What changed, or why it was refused.
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipStatus {
    /// "198.18.0.100:80/tcp".
    pub name: String,
    /// "full-nat", "dsr", ... as in the configuration.
    pub mode: String,
    /// The scheduler the workers run for new flows: "maglev", or the
    /// name of the plugin in force (from the configuration or `fulcrum
    /// plugin load`).
    pub scheduler: String,
    /// The plugin's generation (plugins published for this VIP so far);
    /// none for Maglev.
    #[serde(default)]
    pub scheduler_generation: Option<u64>,
    /// The plugin module's hash (16 hex digits), telling builds apart.
    #[serde(default)]
    pub scheduler_hash: Option<String>,
    /// The plugin faulted too often: new flows go to native Maglev until
    /// a new version is loaded.
    #[serde(default)]
    pub quarantined: bool,
    /// A digest of the VIP's Maglev table (16 hex digits): nodes whose
    /// digests are equal place every flow on the same backend.
    #[serde(default)]
    pub maglev_digest: String,
    pub backends: Vec<BackendStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStatus {
    /// "198.18.0.11" or "198.18.0.11:8080".
    pub name: String,
    pub weight: u16,
    /// What runtime changes made of it ("added, weight 2", "drained").
    #[serde(default)]
    pub runtime: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    pub config: String,
    pub changes: Changes,
}

/// Counters summed over the workers, and each worker's own.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReport {
    pub vips: Vec<VipStats>,
    /// Every drop by reason (all reasons listed), VIP or not.
    pub drops: BTreeMap<String, u64>,
    /// Frames given back to the kernel.
    pub passed: u64,
    /// Plugin scheduler picks that failed (the flow fell back to Maglev).
    pub scheduler_faults: u64,
    /// IP fragments after the first that followed their first fragment.
    #[serde(default)]
    pub fragments_followed: u64,
    /// IP fragments after the first that came before it, placed by their
    /// addresses (the first then followed them).
    #[serde(default)]
    pub fragments_placed: u64,
    /// SYNs of dsr / tunnel VIPs at their half-open cap, forwarded
    /// without an entry.
    #[serde(default)]
    pub syns_without_state: u64,
    /// SYNs of nat VIPs answered with a SYN cookie; client ACKs that
    /// returned a valid one.
    #[serde(default)]
    pub syn_cookies_sent: u64,
    #[serde(default)]
    pub syn_cookies_accepted: u64,
    /// Health checks that started more than 10 ms after their time: the
    /// health thread falling behind.
    #[serde(default)]
    pub health_checks_late: u64,
    pub workers: Vec<WorkerReport>,
    /// The workers' AF_XDP sockets.
    #[serde(default)]
    pub sockets: Vec<SocketReport>,
    /// Flow sync of a balancer pair, with `[sync]`.
    #[serde(default)]
    pub sync: Option<SyncReport>,
}

/// The flow sync's counters, summed over the workers and the sync thread.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncReport {
    /// "master", "backup" or "fault".
    pub role: String,
    /// Flows by direction ("out", "in") and result: out sent / lost (a
    /// full ring), in received / imported / refused (unknown VIP,
    /// backend or SNAT address) / lost (a full ring).
    pub entries: Vec<(String, String, u64)>,
    /// Datagrams dropped by reason: unauthenticated, unknown_peer,
    /// malformed, mismatched (other workers or SNAT ports).
    pub datagrams_dropped: Vec<(String, u64)>,
    pub datagrams_sent: u64,
    pub bytes_sent: u64,
    /// Flows by time from a worker to the wire: counts per bucket
    /// (`LAG_BUCKETS_MS`, then +Inf), not cumulative.
    pub lag_buckets: Vec<u64>,
    pub lag_sum_ms: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Established flows answered with a RST because their backend went
    /// down (`on_down = "reset"`).
    #[serde(default)]
    pub resets: u64,
    /// Sticky clients moved to another backend because theirs was down
    /// (session persistence); under a backend, the clients it lost.
    #[serde(default)]
    pub moved_clients: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipStats {
    pub name: String,
    #[serde(flatten)]
    pub traffic: Traffic,
    /// Drops counted against this VIP, by reason (non-zero only).
    pub drops: BTreeMap<String, u64>,
    pub backends: Vec<BackendStats>,
    /// The scheduler plugin in force, if any, and what it did.
    #[serde(default)]
    pub plugin: Option<PluginReport>,
}

/// A VIP's scheduler plugin as the workers run it: counts summed over the
/// workers since the VIP's first plugin (they span versions), the rest
/// of the version in force.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginReport {
    pub name: String,
    /// The module's hash (16 hex digits).
    pub hash: String,
    pub generation: u64,
    /// New flows the plugin was asked to place.
    pub picks: u64,
    /// Of those, the ones it declined (-1).
    pub declines: u64,
    /// Of those, the ones native Maglev placed, by why: declined, fault,
    /// quarantined, preparing (its instance was being prepared off the
    /// worker), over_capacity, unavailable.
    pub fallbacks: BTreeMap<String, u64>,
    /// Faults by kind: trap, budget (fuel or CPU time), bad_index,
    /// ineligible, bad_health, instantiate.
    pub faults: BTreeMap<String, u64>,
    pub quarantined: bool,
    pub last_fault: Option<PluginFault>,
    /// Instances the workers ran.
    pub instantiations: u64,
    /// `lb_pick_batch` calls: a worker asks for all the new flows of a
    /// chunk of frames in one (picks / batches: new flows per call).
    pub batches: u64,
    /// The 99th percentile of a pick's cost on the worker (ns; one
    /// `lb_pick` in eight is timed, and every batch at its cost per flow),
    /// once one was.
    pub pick_p99_ns: Option<u64>,
}

impl PluginReport {
    /// One line for `fulcrum stats`: what the plugin did, and what went
    /// wrong if anything did.
    pub fn summary(&self) -> String {
        let nonzero = |m: &BTreeMap<String, u64>| m.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k}={n}")).collect::<Vec<_>>().join(" ");
        let mut line = format!(
            "plugin {} (generation {}, {}): {} picks, {} batch calls, {} instantiations, fallbacks: {}, faults: {}",
            self.name,
            self.generation,
            self.hash,
            self.picks,
            self.batches,
            self.instantiations,
            Some(nonzero(&self.fallbacks)).filter(|s| !s.is_empty()).unwrap_or_else(|| "none".into()),
            Some(nonzero(&self.faults)).filter(|s| !s.is_empty()).unwrap_or_else(|| "none".into()),
        );
        if let Some(ns) = self.pick_p99_ns {
            let _ = write!(line, ", pick p99 {:?}", Duration::from_nanos(ns));
        }
        if self.quarantined {
            line.push_str(", QUARANTINED");
        }
        if let Some(f) = &self.last_fault {
            let _ = write!(line, "; last fault at {}: {}", f.at, f.message);
        }
        line
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginFault {
    pub message: String,
    /// Seconds since the Unix epoch.
    pub at: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStats {
    pub name: String,
    /// "up", "down" (health checks) or "draining" (weight 0).
    pub state: String,
    /// In force: the configured one, or a health policy's.
    pub weight: u32,
    /// Both directions: return traffic counts under the backend too.
    #[serde(flatten)]
    pub traffic: Traffic,
    /// Connections the daemon holds to it: established TCP and live UDP,
    /// and half-open TCP (SYN seen).
    #[serde(default)]
    pub active: u32,
    #[serde(default)]
    pub pending: u32,
    /// Both directions, smoothed over about a second.
    #[serde(default)]
    pub bytes_per_sec: u64,
    /// The smoothed TCP handshake time the workers measure (nat modes),
    /// while fresh.
    #[serde(default)]
    pub handshake_rtt_us: Option<u32>,
    /// Its health checks, when its VIP has them.
    pub checks: Option<CheckCounters>,
}

/// A backend's health checks since the checks (re)started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckCounters {
    pub passed: u64,
    pub failed: u64,
    pub went_down: u64,
    pub went_up: u64,
    /// Smoothed time a passing check takes; 0 before the first.
    pub rtt_us: u32,
    /// Every finished check's duration by bucket (bounds in
    /// `fulcrum_health::DURATION_BOUNDS_US`, one more for the rest), not
    /// cumulative, and their sum.
    #[serde(default)]
    pub durations: Vec<u64>,
    #[serde(default)]
    pub duration_sum_us: u64,
}

/// One AF_XDP socket (a worker's, on one interface) and what the kernel
/// counted on its rings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketReport {
    pub worker: usize,
    pub interface: String,
    pub queue: u32,
    /// Zero-copy (the driver's own buffers) rather than copy mode.
    pub zero_copy: bool,
    pub rx_dropped: u64,
    pub rx_ring_full: u64,
    pub fill_ring_empty: u64,
    pub rx_invalid: u64,
    pub tx_invalid: u64,
    pub tx_ring_empty: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerReport {
    pub polls: u64,
    /// Polls that found frames.
    pub busy_polls: u64,
    pub frames: u64,
    /// Busy polls by batch size: entry i counts batches of at most 2^i
    /// frames (and more than 2^(i-1)).
    pub batch_sizes: Vec<u64>,
    pub handed_out: u64,
    pub handed_in: u64,
    pub handoff_lost: u64,
    pub unsteerable: u64,
    pub connections: u64,
    pub connections_capacity: u64,
    pub evictions: u64,
    pub expirations: u64,
}

impl WorkerReport {
    /// Share of polls that found work, since start.
    pub fn busy_ratio(&self) -> f64 {
        if self.polls == 0 { 0.0 } else { self.busy_polls as f64 / self.polls as f64 }
    }

    /// Mean frames per busy poll, since start.
    pub fn mean_batch(&self) -> f64 {
        if self.busy_polls == 0 { 0.0 } else { self.frames as f64 / self.busy_polls as f64 }
    }
}

/// Error and reload messages as the daemon keeps and sends them: the
/// first `MAX_LINES` lines, each cut at `MAX_LINE` characters, then how
/// many lines were left out. A refusal can list thousands of problems (or
/// quote a long value): `status` repeats the last one every time.
pub fn brief(message: &str) -> String {
    const MAX_LINES: usize = 20;
    const MAX_LINE: usize = 300;
    let mut out = String::new();
    for line in message.lines().take(MAX_LINES) {
        if !out.is_empty() {
            out.push('\n');
        }
        match line.char_indices().nth(MAX_LINE) {
            Some((cut, _)) => {
                out.push_str(&line[..cut]);
                out.push_str(" ...");
            }
            None => out.push_str(line),
        }
    }
    match message.lines().count().saturating_sub(MAX_LINES) {
        0 => {}
        1 => out.push_str("\n... and 1 more line"),
        more => {
            let _ = write!(out, "\n... and {more} more lines");
        }
    }
    out
}

/// Columns two spaces apart; the first `left` left-aligned (names), the
/// others right-aligned (numbers).
fn table(rows: &[Vec<String>], left: usize) -> String {
    table_with(rows, |c| c < left)
}

/// `table` with the columns `left(c)` says left-aligned.
fn table_with(rows: &[Vec<String>], left: impl Fn(usize) -> bool) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(String::len).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> =
            r.iter().enumerate().map(|(c, v)| if left(c) { format!("{v:<w$}", w = width[c]) } else { format!("{v:>w$}", w = width[c]) }).collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out
}

fn row(cells: &[&dyn std::fmt::Display]) -> Vec<String> {
    cells.iter().map(ToString::to_string).collect()
}

impl Status {
    /// A master demoted by hand that keepalived has not yet moved away
    /// from: it reports itself unfit so that keepalived does.
    pub fn standing_down(&self) -> bool {
        self.ha.as_ref().is_some_and(|h| h.standing_down)
    }

    /// What `fulcrum status` prints, now.
    pub fn table(&self) -> String {
        self.table_at(human::now())
    }

    /// What `fulcrum status` prints at `now` (Unix seconds): times as
    /// UTC dates with how long ago, durations as "3h12m".
    pub fn table_at(&self, now: u64) -> String {
        let mut out = format!(
            "fulcrum {} (pid {}), up {}, config {}\nworkers {}, xdp {} on {}, metrics on {}\n",
            self.version,
            self.pid,
            human::duration(self.uptime_secs),
            self.config,
            self.workers,
            self.xdp_mode,
            self.interfaces.join(", "),
            self.metrics_listen
        );
        let r = &self.reloads;
        let _ = write!(out, "configuration in force since {}", human::at(r.last_applied_at, now));
        let _ = write!(out, "\nreloads: {} applied, {} refused", r.applied, r.refused);
        if let Some(l) = &r.last {
            let _ =
                write!(out, "; last {} {}: {}", if l.applied { "applied" } else { "refused" }, human::at(l.at, now), l.message.lines().next().unwrap_or(""));
        }
        out.push('\n');
        if let Some(ha) = &self.ha {
            let lag = ha.lag_p99_ms.map_or_else(|| "-".into(), |l| format!("<={l}ms"));
            let down = if ha.standing_down { " (standing down: keepalived should hand the addresses over)" } else { "" };
            let _ = writeln!(
                out,
                "ha: role {}{down}, sync on {}, entries sent {} ({} bytes), received {}, lag p99 {lag}",
                ha.role, ha.listen, ha.entries_sent, ha.bytes_sent, ha.entries_received
            );
            for p in &ha.peers {
                let heard = p.last_heard_ms.map_or_else(|| "never heard".into(), |ms| format!("last heard {ms} ms ago"));
                let _ = writeln!(
                    out,
                    "  peer {}: {heard}, entries received {}{}",
                    p.addr,
                    p.entries_received,
                    p.problem.as_ref().map_or_else(String::new, |e| format!("; {e}"))
                );
            }
        }
        if let Some(r) = &self.bgp {
            let list: Vec<String> = r.announce.iter().map(ToString::to_string).chain(r.backup.iter().map(|a| format!("{a} (backup)"))).collect();
            let _ = writeln!(out, "bgp: announce {}", if list.is_empty() { "nothing".into() } else { list.join(", ") });
        }
        if let Some(d) = &self.draining {
            let withdrawn = if d.withdrawn { "withdrawn" } else { "not yet withdrawn" };
            let _ = writeln!(out, "draining for {} ({withdrawn}), exits within {}", human::duration(d.elapsed_ms / 1000), human::duration(d.grace_secs));
        }
        if !self.overrides.is_empty() {
            let _ = writeln!(out, "runtime changes: {} backends (kept in {}; `fulcrum backend reset` drops them)", self.overrides.len(), self.state_file);
        }
        // Those not in a pool: removed, or of a VIP or backend the file no
        // longer has.
        for o in &self.overrides {
            let shown = self.vips.iter().any(|v| v.name == o.vip && v.backends.iter().any(|b| b.name == backend_name(o.address, o.port)));
            if !shown {
                let _ = writeln!(out, "  vip {} backend {}: {}", o.vip, backend_name(o.address, o.port), o.describe());
            }
        }
        out.push('\n');
        out + &vips_table(&self.vips)
    }
}

/// One flow of a connection table, for `fulcrum flows`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowEntry {
    /// The worker whose table holds it.
    pub worker: usize,
    /// "198.18.0.1:40000" or "[2001:db8::1]:40000".
    pub client: String,
    pub backend: String,
    /// "half-open", "established", "closing" or "udp".
    pub state: String,
    /// Since its last packet.
    pub idle_ms: u32,
}

/// What `fulcrum flows` prints.
pub fn flows_table(flows: &[FlowEntry]) -> String {
    let mut rows = vec![row(&[&"WORKER", &"CLIENT", &"BACKEND", &"STATE", &"IDLE MS"])];
    rows.extend(flows.iter().map(|f| row(&[&f.worker, &f.client, &f.backend, &f.state, &f.idle_ms])));
    let mut out = table_with(&rows, |c| (1..=3).contains(&c));
    let _ = writeln!(out, "{} flows", flows.len());
    out
}

/// VIPs and their backends with weights and runtime changes: `fulcrum
/// status` and `fulcrum vip list`.
pub fn vips_table(vips: &[VipStatus]) -> String {
    let mut rows = vec![row(&[&"VIP / BACKEND", &"MODE", &"SCHEDULER", &"TABLE", &"WEIGHT", &"RUNTIME"])];
    for v in vips {
        let mut scheduler = match (v.scheduler_generation, &v.scheduler_hash) {
            (Some(g), Some(h)) => format!("{} (generation {g}, {h})", v.scheduler),
            _ => v.scheduler.clone(),
        };
        if v.quarantined {
            scheduler.push_str(" QUARANTINED: maglev");
        }
        // Eight hex digits tell tables apart at a glance; --json has all 16.
        let table = v.maglev_digest.get(..8).unwrap_or(&v.maglev_digest);
        rows.push(row(&[&v.name, &v.mode, &scheduler, &table, &"", &""]));
        rows.extend(v.backends.iter().map(|b| row(&[&format!("  {}", b.name), &"", &"", &"", &b.weight, &b.runtime.as_deref().unwrap_or("")])));
    }
    // Names, then weights right-aligned, then what runtime changes did.
    table_with(&rows, |c| c != 4)
}

impl StatsReport {
    /// What `fulcrum stats --watch` prints: per VIP and backend, the
    /// connections now and the rates since `before`, `secs` earlier.
    pub fn rates_table(&self, before: &StatsReport, secs: f64) -> String {
        let per_sec = |now: u64, then: u64| format!("{:.0}", now.saturating_sub(then) as f64 / secs.max(1e-3));
        let mut rows = vec![row(&[&"VIP / BACKEND", &"STATE", &"ACTIVE", &"PENDING", &"PACKETS/S", &"BYTES/S", &"NEW/S", &"DROPS/S"])];
        for v in &self.vips {
            let old = before.vips.iter().find(|o| o.name == v.name);
            let traffic = |t: &Traffic, o: Option<&Traffic>| {
                let o = o.cloned().unwrap_or_default();
                (per_sec(t.packets, o.packets), per_sec(t.bytes, o.bytes), per_sec(t.new_flows, o.new_flows))
            };
            let (p, b, n) = traffic(&v.traffic, old.map(|o| &o.traffic));
            let drops = per_sec(v.drops.values().sum(), old.map_or(0, |o| o.drops.values().sum()));
            let (active, pending) = (v.backends.iter().map(|b| u64::from(b.active)).sum::<u64>(), v.backends.iter().map(|b| u64::from(b.pending)).sum::<u64>());
            rows.push(row(&[&v.name, &"", &active, &pending, &p, &b, &n, &drops]));
            for be in &v.backends {
                let old = old.and_then(|o| o.backends.iter().find(|x| x.name == be.name)).map(|x| &x.traffic);
                let (p, b, n) = traffic(&be.traffic, old);
                rows.push(row(&[&format!("  {}", be.name), &be.state, &be.active, &be.pending, &p, &b, &n, &""]));
            }
        }
        table(&rows, 2)
    }

    /// What `fulcrum stats` prints.
    pub fn table(&self) -> String {
        let mut rows = vec![row(&[
            &"VIP / BACKEND",
            &"STATE",
            &"ACTIVE",
            &"PENDING",
            &"BYTES/S",
            &"PACKETS",
            &"BYTES",
            &"NEW FLOWS",
            &"DROPS",
            &"RESETS",
            &"MOVED",
            &"CHECKS OK/FAILED",
        ])];
        for v in &self.vips {
            let t = &v.traffic;
            let sum = |f: fn(&BackendStats) -> u64| v.backends.iter().map(f).sum::<u64>();
            let (active, pending, rate) = (sum(|b| u64::from(b.active)), sum(|b| u64::from(b.pending)), sum(|b| b.bytes_per_sec));
            let drops = v.drops.values().sum::<u64>();
            rows.push(row(&[&v.name, &"", &active, &pending, &rate, &t.packets, &t.bytes, &t.new_flows, &drops, &t.resets, &t.moved_clients, &""]));
            rows.extend(v.backends.iter().map(|b| {
                let t = &b.traffic;
                let checks = b.checks.as_ref().map_or(String::new(), |c| format!("{}/{}", c.passed, c.failed));
                let name = format!("  {}", b.name);
                row(&[&name, &b.state, &b.active, &b.pending, &b.bytes_per_sec, &t.packets, &t.bytes, &t.new_flows, &"", &t.resets, &t.moved_clients, &checks])
            }));
        }
        let mut out = table(&rows, 2);
        let reasons = |drops: &BTreeMap<String, u64>| drops.iter().filter(|(_, n)| **n > 0).map(|(r, n)| format!("{r}={n}")).collect::<Vec<_>>().join(" ");
        let drops = reasons(&self.drops);
        let _ = write!(out, "\ndrops: {}", if drops.is_empty() { "none" } else { &drops });
        // Which VIP they hit, e.g. one out of full-NAT sources.
        for v in self.vips.iter().filter(|v| v.drops.values().any(|&n| n > 0)) {
            let _ = write!(out, "\n  vip {}: {}", v.name, reasons(&v.drops));
        }
        for v in &self.vips {
            if let Some(p) = &v.plugin {
                let _ = write!(out, "\n  vip {}: {}", v.name, p.summary());
            }
        }
        let _ = writeln!(
            out,
            "\npassed to the kernel: {}, scheduler faults: {}, fragments followed: {}, SYNs past the half-open cap: {}, SYN cookies sent/accepted: {}/{}\n",
            self.passed, self.scheduler_faults, self.fragments_followed, self.syns_without_state, self.syn_cookies_sent, self.syn_cookies_accepted
        );
        let mut rows = vec![row(&[
            &"WORKER",
            &"POLLS",
            &"BUSY",
            &"FRAMES",
            &"BATCH",
            &"CONNECTIONS",
            &"EVICTED",
            &"EXPIRED",
            &"HANDED OUT",
            &"HANDED IN",
            &"LOST",
            &"UNSTEERABLE",
        ])];
        for (i, w) in self.workers.iter().enumerate() {
            rows.push(row(&[
                &i,
                &w.polls,
                &format!("{:.1}%", 100.0 * w.busy_ratio()),
                &w.frames,
                &format!("{:.1}", w.mean_batch()),
                &format!("{}/{}", w.connections, w.connections_capacity),
                &w.evictions,
                &w.expirations,
                &w.handed_out,
                &w.handed_in,
                &w.handoff_lost,
                &w.unsteerable,
            ]));
        }
        out += &table(&rows, 1);
        if self.sockets.is_empty() {
            return out;
        }
        let mut rows = vec![row(&[&"SOCKET", &"WORKER", &"MODE", &"RX RING FULL", &"FILL EMPTY", &"RX INVALID", &"RX OTHER", &"TX INVALID", &"TX EMPTY"])];
        for k in &self.sockets {
            let mode = if k.zero_copy { "zero-copy" } else { "copy" };
            let name = format!("{} queue {}", k.interface, k.queue);
            rows.push(row(&[&name, &k.worker, &mode, &k.rx_ring_full, &k.fill_ring_empty, &k.rx_invalid, &k.rx_dropped, &k.tx_invalid, &k.tx_ring_empty]));
        }
        out + "\n" + &table(&rows, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_shows_durations_and_times_for_people() {
        // 2026-12-04 18:00:01 UTC, then a refused reload 4 minutes later.
        let applied = 1_796_407_201;
        let status = Status {
            version: "0.1.0".into(),
            pid: 7,
            config: "/etc/fulcrum.toml".into(),
            uptime_secs: 3 * 3600 + 12 * 60 + 5,
            reloads: Reloads {
                applied: 1,
                refused: 1,
                last_applied_at: applied,
                last: Some(LastReload { at: applied + 240, applied: false, message: "fulcrum.toml:9: bad\nmore".into() }),
            },
            draining: Some(Draining { withdrawn: true, grace_secs: 30, elapsed_ms: 12_500 }),
            ..Status::default()
        };
        let text = status.table_at(applied + 300);
        assert!(text.starts_with("fulcrum 0.1.0 (pid 7), up 3h12m, config /etc/fulcrum.toml\n"), "{text}");
        assert!(text.contains("configuration in force since 2026-12-04 18:00:01 UTC (5m ago)\n"), "{text}");
        assert!(text.contains("reloads: 1 applied, 1 refused; last refused 2026-12-04 18:04:01 UTC (1m ago): fulcrum.toml:9: bad\n"), "{text}");
        assert!(text.contains("draining for 12s (withdrawn), exits within 30s\n"), "{text}");
    }

    #[test]
    fn requests_and_responses_on_the_wire() {
        assert_eq!(serde_json::to_string(&Request::Reload).unwrap(), r#"{"request":"reload"}"#);
        assert_eq!(serde_json::from_str::<Request>(r#"{"request":"stats"}"#).unwrap(), Request::Stats);
        let e = serde_json::from_str::<Request>(r#"{"request":"explode"}"#).unwrap_err().to_string();
        assert!(e.contains("unknown variant `explode`"), "{e}");
        assert_eq!(serde_json::to_string(&Response::Error("no".into())).unwrap(), r#"{"error":"no"}"#);
        let stats = Response::Stats(StatsReport {
            vips: vec![VipStats {
                name: "198.18.0.100:80/tcp".into(),
                traffic: Traffic { packets: 3, bytes: 180, new_flows: 1, ..Traffic::default() },
                ..VipStats::default()
            }],
            ..StatsReport::default()
        });
        let line = serde_json::to_string(&stats).unwrap();
        assert!(line.starts_with(r#"{"stats":{"vips":[{"name":"198.18.0.100:80/tcp","packets":3,"bytes":180,"new_flows":1,"#), "{line}");
        assert_eq!(serde_json::from_str::<Response>(&line).unwrap(), stats);
    }

    #[test]
    fn stats_name_the_vips_drops_by_reason() {
        let vip = |name: &str, drops: &[(&str, u64)]| VipStats {
            name: name.into(),
            drops: drops.iter().map(|&(r, n)| (r.to_string(), n)).collect(),
            ..VipStats::default()
        };
        let stats = StatsReport {
            vips: vec![vip("198.18.0.100:80/tcp", &[("snat_exhausted", 7), ("no_state", 0)]), vip("198.18.0.101:80/tcp", &[("no_state", 0)])],
            drops: [("snat_exhausted".to_string(), 7), ("truncated".to_string(), 2)].into(),
            ..StatsReport::default()
        };
        let text = stats.table();
        assert!(text.contains("\ndrops: snat_exhausted=7 truncated=2\n  vip 198.18.0.100:80/tcp: snat_exhausted=7\npassed to the kernel"), "{text}");
        assert!(!text.contains("vip 198.18.0.101"), "{text}");
    }

    #[test]
    fn messages_are_kept_brief() {
        assert_eq!(brief("one\ntwo"), "one\ntwo");
        let many: String = (0..25).map(|i| format!("line {i}\n")).collect();
        let b = brief(&many);
        assert_eq!(b.lines().count(), 21, "{b}");
        assert!(b.starts_with("line 0\n") && b.ends_with("line 19\n... and 5 more lines"), "{b}");
        let long = "é".repeat(100_000);
        assert_eq!(brief(&long).chars().count(), 304);
    }

    #[test]
    fn tables_align_their_columns() {
        let rows = vec![row(&[&"VIP", &"PACKETS"]), row(&[&"198.18.0.100:80/tcp", &12345]), row(&[&"  198.18.0.11", &7])];
        assert_eq!(table(&rows, 1), "VIP                  PACKETS\n198.18.0.100:80/tcp    12345\n  198.18.0.11              7\n");
        assert_eq!(table(&rows, 2), "VIP                  PACKETS\n198.18.0.100:80/tcp  12345\n  198.18.0.11        7\n");
    }
}
