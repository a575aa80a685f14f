//! From the raw file to a `Config`: every check, every default. Each check
//! records its error and goes on, so one run reports everything wrong; a
//! value that failed is `None` and the checks that depend on it are
//! skipped rather than piling up follow-on errors.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::num::NonZeroU16;
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::error::{ConfigErrors, Report};
use crate::model::*;
use crate::raw::*;

/// Where the daemon listens, and the CLI looks, unless told otherwise.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/fulcrum/control.sock";
/// Localhost only: metrics are for a local scraper unless said otherwise.
const DEFAULT_METRICS_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9100));
const DEFAULT_CONNECTIONS_PER_WORKER: u32 = 1 << 20;
const DEFAULT_SNAT_PORTS: PortRange = PortRange { first: 1024, last: 65535 };
const DEFAULT_GUE_PORT: u16 = 6080;

const SECTIONS: &str = "`daemon`, `interface`, `limits`, `timeouts`, `vip`";
/// `sun_path` holds 108 bytes with the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
const MAX_WORKERS: u16 = 1024;
const MAX_CPU: u16 = 8191;
/// IPv6's minimum MTU up to the usual jumbo frame.
const MTU: RangeInclusive<u16> = 1280..=9216;
/// Small tables only thrash; 2^28 entries of 64 bytes are 16 GiB per worker.
const CONNECTIONS: RangeInclusive<u32> = 1024..=1 << 28;
/// Connection-table and persistence timeouts: at least a second, and
/// within the engine's u32 milliseconds.
const IDLE_TIMEOUT: RangeInclusive<Duration> = Duration::from_secs(1)..=Duration::from_secs(7 * 86400);
const CHECK_INTERVAL: RangeInclusive<Duration> = Duration::from_millis(100)..=Duration::from_secs(3600);
const CHECK_TIMEOUT: RangeInclusive<Duration> = Duration::from_millis(10)..=Duration::from_secs(3600);
const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(2);
const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// HAProxy's rise and fall.
const DEFAULT_RISE: u8 = 2;
const DEFAULT_FALL: u8 = 3;
/// Success is 2xx or 3xx, as HAProxy's httpchk.
const DEFAULT_STATUS: StatusRange = StatusRange { first: 200, last: 399 };
const DEFAULT_PERSISTENCE: Duration = Duration::from_secs(300);
/// The most VIPs, and backends in all, the engine can number (u16 ids).
const MAX_IDS: usize = u16::MAX as usize;

pub(crate) fn config(text: &str, origin: &str, base: &Path) -> Result<Config, ConfigErrors> {
    let mut c = Checker { r: Report::new(text, origin), base };
    let (doc, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        c.syntax(syntax);
        return c.r.finish(None);
    }
    let mut sections: [Option<Spanned<DeValue<'_>>>; 5] = Default::default();
    for (key, value) in doc.into_inner() {
        let slot = match key.get_ref().as_ref() {
            "daemon" => 0,
            "interface" => 1,
            "limits" => 2,
            "timeouts" => 3,
            "vip" => 4,
            other => {
                c.r.error(key.span(), "", format!("unknown section `{other}`, expected one of {SECTIONS}"));
                continue;
            }
        };
        sections[slot] = Some(value);
    }
    let [daemon, interfaces, limits, timeouts, vips] = sections;
    let daemon = c.daemon(daemon);
    let topology = c.topology(interfaces);
    let limits = c.limits(limits, daemon.as_ref().map(|d| &d.workers));
    let timeouts = c.timeouts(timeouts);
    let vips = c.vips(vips);
    let config = (|| Some(Config { daemon: daemon?, topology: topology?, limits: limits?, timeouts: timeouts?, vips: vips? }))();
    c.r.finish(config)
}

struct Checker<'a> {
    r: Report<'a>,
    /// Where relative plugin paths start.
    base: &'a Path,
}

/// What a backend's checks need to know of its VIP; `None` where the VIP's
/// own value was wrong (already reported).
struct VipFacts<'a> {
    ctx: &'a str,
    address: Option<IpAddr>,
    port: Option<u16>,
    mode: Option<ModeName>,
    snat: Option<IpAddr>,
    health: Option<&'a HealthTemplate>,
}

/// A VIP's check before it is applied to each backend.
struct HealthTemplate {
    raw: RawHealth,
    /// `None` if the VIP's own check settings were wrong.
    settings: Option<CheckSettings>,
    /// Those errors (line and message), not to be repeated per backend.
    errors: Vec<(Option<usize>, String)>,
}

/// A check's settings apart from its target.
#[derive(Clone)]
struct CheckSettings {
    shape: Shape,
    interval: Duration,
    timeout: Duration,
    rise: u8,
    fall: u8,
    port: Option<u16>,
}

/// A `Probe` before its port is known.
#[derive(Clone)]
enum Shape {
    Icmp,
    TcpConnect,
    TcpHalfOpen,
    Http { path: String, status: StatusRange, content: Option<String> },
}

/// What the checks across VIPs need.
#[derive(Default)]
struct Seen {
    /// Address, protocol and port -> the line of its [[vip]].
    vips: HashMap<(IpAddr, Protocol, u16), usize>,
    /// The first VIP on each address.
    addresses: HashMap<IpAddr, String>,
    /// Each full-NAT source address, where it was set and its VIP.
    snats: Vec<(IpAddr, Range<usize>, String)>,
}

/// Tables and sections.
impl Checker<'_> {
    /// At most one error per line: after the first, the parser's recovery
    /// tends to report follow-on noise.
    fn syntax(&mut self, mut errors: Vec<toml::de::Error>) {
        errors.sort_by_key(|e| e.span().map_or(0, |s| s.start));
        let mut last_line = None;
        for e in errors {
            let span = e.span().unwrap_or(0..0);
            let line = self.r.line(span.start);
            if last_line != Some(line) {
                last_line = Some(line);
                self.r.error(span, "", format!("TOML syntax: {}", e.message()));
            }
        }
    }

    /// Deserializes one table. Every unknown key in it is reported and
    /// dropped, and the rest checked on; a nested table (or the table
    /// itself) of the wrong type is reported too, but then the table counts
    /// as failed (`None`).
    fn de<T: DeserializeOwned>(&mut self, mut value: Spanned<DeValue<'_>>, ctx: &str) -> Option<T> {
        let mut failed = false;
        loop {
            let e = match T::deserialize(ValueDeserializer::from(value.clone())) {
                Ok(t) => return (!failed).then_some(t),
                Err(e) => e,
            };
            let span = e.span().unwrap_or_else(|| value.span());
            let mut path = Vec::new();
            let at_key = locate(value.get_ref(), span.start, &mut path) == Some(true);
            // An unknown key's message names it already.
            let shown = &path[..path.len() - usize::from(at_key)];
            let message = match shown.is_empty() {
                true => e.message().to_string(),
                false => format!("{}: {}", shown.join("."), e.message()),
            };
            self.r.error(span, ctx, message);
            failed |= !at_key;
            if !remove(value.get_mut(), &path) {
                return None;
            }
        }
    }

    /// The entries of an array of tables (`[[name]]`).
    fn entries<'i>(&mut self, value: Spanned<DeValue<'i>>, ctx: &str, name: &str) -> Vec<Spanned<DeValue<'i>>> {
        let span = value.span();
        match value.into_inner() {
            DeValue::Array(a) => a.into_iter().collect(),
            other => {
                let kind = other.type_str();
                let article = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
                self.r.error(span, ctx, format!("{name} must be an array of tables ([[{name}]]), got {article} {kind}"));
                Vec::new()
            }
        }
    }

    fn daemon(&mut self, section: Option<Spanned<DeValue<'_>>>) -> Option<Daemon> {
        let ctx = "daemon";
        let raw: RawDaemon = match section {
            None => RawDaemon::default(),
            Some(v) => self.de(v, ctx)?,
        };
        let control_socket = optional(&raw.control_socket, |v| {
            let s = self.text(ctx, "control_socket", v)?;
            match Path::new(s).is_absolute() && s.len() <= MAX_SOCKET_PATH {
                true => Some(PathBuf::from(s)),
                false => self.fail(v.span(), ctx, format!("control_socket must be an absolute path of at most {MAX_SOCKET_PATH} bytes, got {s:?}")),
            }
        })
        .map(|p| p.unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET)));
        let metrics_listen = optional(&raw.metrics_listen, |v| {
            let s = self.text(ctx, "metrics_listen", v)?;
            match s.parse::<SocketAddr>() {
                Ok(a) if a.port() != 0 => Some(a),
                _ => self.fail(
                    v.span(),
                    ctx,
                    format!("metrics_listen must be an address and a port (not 0) like \"127.0.0.1:9100\" or \"[::1]:9100\", got {s:?}"),
                ),
            }
        })
        .map(|a| a.unwrap_or(DEFAULT_METRICS_LISTEN));
        let xdp_mode = optional(&raw.xdp_mode, |v| self.keyword(ctx, "xdp_mode", v)).map(Option::unwrap_or_default);
        let workers = self.workers(&raw, ctx);
        Some(Daemon { control_socket: control_socket?, metrics_listen: metrics_listen?, xdp_mode: xdp_mode?, workers: workers? })
    }

    fn workers(&mut self, raw: &RawDaemon, ctx: &str) -> Option<Workers> {
        let count = optional(&raw.workers, |v| self.int(ctx, "workers", v, 1..=MAX_WORKERS));
        let cores = optional(&raw.cores, |v| {
            let list = match v.get_ref() {
                Scalar::List(list) if !list.is_empty() => list,
                other => return self.fail(v.span(), ctx, format!("cores must be a non-empty array of CPU numbers like [2, 3], got {other}")),
            };
            let mut seen = HashMap::new();
            let mut cores = Vec::new();
            for (i, v) in list.iter().enumerate() {
                let cpu = self.int(ctx, &format!("cores[{i}]"), v, 0..=MAX_CPU);
                if let Some(cpu) = cpu
                    && let Some(first) = seen.insert(cpu, i)
                {
                    self.r.error(v.span(), ctx, format!("cores[{i}]: CPU {cpu} is listed twice (also cores[{first}])"));
                    cores.push(None);
                } else {
                    cores.push(cpu);
                }
            }
            cores.into_iter().collect::<Option<Vec<u16>>>()
        });
        match (count?, cores?) {
            (None, None) => Some(Workers::Auto),
            (Some(n), None) => NonZeroU16::new(n).map(Workers::Count),
            (None, Some(cores)) => Some(Workers::Pinned(cores)),
            (Some(n), Some(cores)) if usize::from(n) == cores.len() => Some(Workers::Pinned(cores)),
            (Some(n), Some(cores)) => {
                let span = raw.workers.as_ref().map_or(0..0, Spanned::span);
                self.fail(span, ctx, format!("workers ({n}) must equal the number of cores ({}), or be omitted", cores.len()))
            }
        }
    }

    fn topology(&mut self, section: Option<Spanned<DeValue<'_>>>) -> Option<Topology> {
        const HOW: &str = "declare one [[interface]] with role = \"one-arm\", or one with role = \"client\" and one with role = \"server\"";
        let mut ok = true;
        // By role (in the order of `Role`'s variants): the interface and
        // where its role was set.
        let mut slots: [Option<(Interface, usize)>; 3] = Default::default();
        let mut names: HashMap<String, usize> = HashMap::new();
        let entries = section.map(|s| self.entries(s, "", "interface")).unwrap_or_default();
        for (i, entry) in entries.into_iter().enumerate() {
            let span = entry.span();
            let fallback = format!("interface {}", i + 1);
            let mark = self.r.errors.len();
            let Some(raw) = self.de::<RawInterface>(entry, &fallback) else {
                ok = false;
                continue;
            };
            let name = self.required(&fallback, "name", &raw.name, span.clone()).and_then(|v| {
                let name = self.text(&fallback, "name", v)?;
                match valid_ifname(name) {
                    true => Some((name.to_string(), v.span())),
                    false => {
                        self.fail(v.span(), &fallback, format!("name must be a Linux interface name (1 to 15 bytes, no '/', ':' or spaces), got {name:?}"))
                    }
                }
            });
            let ctx = name.as_ref().map_or(fallback, |(n, _)| format!("interface {n}"));
            self.r.rename(mark, &ctx);
            let name = name.and_then(|(name, name_span)| match names.insert(name.clone(), self.r.line(name_span.start)) {
                Some(first) => self.fail(name_span, &ctx, format!("declared twice (first at line {first})")),
                None => Some(name),
            });
            let mtu = optional(&raw.mtu, |v| self.int(&ctx, "mtu", v, MTU.clone()));
            let role = self.required(&ctx, "role", &raw.role, span).and_then(|v| Some((self.keyword::<Role>(&ctx, "role", v)?, v.span())));
            let (Some(name), Some(mtu), Some((role, role_span))) = (name, mtu, role) else {
                ok = false;
                continue;
            };
            match &slots[role as usize] {
                Some((first, _)) => {
                    ok = false;
                    let msg = format!("a second interface with role {role} (the first is {}): fulcrum serves one topology", first.name);
                    self.r.error(role_span, &ctx, msg);
                }
                None => slots[role as usize] = Some((Interface { name, mtu }, role_span.start)),
            }
        }
        let [one_arm, client, server] = slots;
        let topology = match (one_arm, client, server) {
            (Some((i, _)), None, None) => Some(Topology::OneArm(i)),
            (None, Some((client, _)), Some((server, _))) => Some(Topology::Inline { client, server }),
            (Some((one, _)), client, server) => {
                for (other, pos) in client.into_iter().chain(server) {
                    self.r.error(pos..pos, &format!("interface {}", other.name), format!("cannot be combined with the one-arm interface {}: {HOW}", one.name));
                }
                None
            }
            (None, Some((lone, pos)), None) | (None, None, Some((lone, pos))) => {
                self.r.error(pos..pos, &format!("interface {}", lone.name), format!("an inline topology needs both sides: {HOW}"));
                None
            }
            (None, None, None) => {
                if ok {
                    self.r.error_no_line("", format!("no interface: {HOW}"));
                }
                None
            }
        };
        topology.filter(|_| ok)
    }

    fn limits(&mut self, section: Option<Spanned<DeValue<'_>>>, workers: Option<&Workers>) -> Option<Limits> {
        let ctx = "limits";
        let raw: RawLimits = match section {
            None => RawLimits::default(),
            Some(v) => self.de(v, ctx)?,
        };
        let connections_per_worker = optional(&raw.connections_per_worker, |v| self.int(ctx, "connections_per_worker", v, CONNECTIONS.clone()))
            .map(|c| c.unwrap_or(DEFAULT_CONNECTIONS_PER_WORKER));
        let snat_ports = optional(&raw.snat_ports, |v| {
            let s = self.text(ctx, "snat_ports", v)?;
            let ports = match parse_range(s) {
                Some((first, last)) if first >= 1 && first <= last => PortRange { first, last },
                _ => return self.fail(v.span(), ctx, format!("snat_ports must be a range like \"1024-65535\" with 1 <= first <= last, got {s:?}")),
            };
            // Each worker allocates from its own share of the range.
            let workers = match workers {
                Some(Workers::Count(n)) => u32::from(n.get()),
                Some(Workers::Pinned(cores)) => cores.len() as u32,
                _ => 1,
            };
            match ports.count() >= workers {
                true => Some(ports),
                false => self.fail(v.span(), ctx, format!("snat_ports {ports} has {} ports, fewer than the {workers} workers that share it", ports.count())),
            }
        })
        .map(|p| p.unwrap_or(DEFAULT_SNAT_PORTS));
        Some(Limits { connections_per_worker: connections_per_worker?, snat_ports: snat_ports? })
    }

    fn timeouts(&mut self, section: Option<Spanned<DeValue<'_>>>) -> Option<Timeouts> {
        let ctx = "timeouts";
        let raw: RawTimeouts = match section {
            None => RawTimeouts::default(),
            Some(v) => self.de(v, ctx)?,
        };
        // The engine's defaults: short for half-open flows (SYN floods must
        // not fill the table), long for established ones.
        let mut field = |name, v: &Field, default| self.duration(ctx, name, v, Duration::from_secs(default), IDLE_TIMEOUT);
        let tcp_syn = field("tcp_syn", &raw.tcp_syn, 30);
        let tcp_established = field("tcp_established", &raw.tcp_established, 900);
        let tcp_closing = field("tcp_closing", &raw.tcp_closing, 60);
        let udp = field("udp", &raw.udp, 300);
        Some(Timeouts { tcp_syn: tcp_syn?, tcp_established: tcp_established?, tcp_closing: tcp_closing?, udp: udp? })
    }

    fn vips(&mut self, section: Option<Spanned<DeValue<'_>>>) -> Option<Vec<Vip>> {
        let mut ok = true;
        let mut vips = Vec::new();
        let mut seen = Seen::default();
        let entries = section.map(|s| self.entries(s, "", "vip")).unwrap_or_default();
        for (i, entry) in entries.into_iter().enumerate() {
            let span = entry.span();
            let backends = entry.get_ref().as_table().and_then(|t| t.get("backend")).cloned();
            let fallback = format!("vip {}", i + 1);
            let mark = self.r.errors.len();
            let Some(raw) = self.de::<RawVip>(entry, &fallback) else {
                ok = false;
                // Still report what is wrong in the shapes of its backends.
                for (j, entry) in backends.map(|b| self.entries(b, &fallback, "vip.backend")).unwrap_or_default().into_iter().enumerate() {
                    self.de::<RawBackend>(entry, &format!("{fallback}, backend {}", j + 1));
                }
                continue;
            };
            match self.vip(raw, span, backends, &fallback, mark, &mut seen) {
                Some(vip) => vips.push(vip),
                None => ok = false,
            }
        }
        for (snat, span, ctx) in seen.snats {
            if let Some(owner) = seen.addresses.get(&snat) {
                ok = false;
                self.r.error(span, &ctx, format!("snat {snat} is the address of {owner}: use a balancer address that serves no VIP"));
            }
        }
        let total_backends: usize = vips.iter().map(|v| v.backends.len()).sum();
        if vips.len() > MAX_IDS || total_backends > MAX_IDS {
            ok = false;
            self.r.error_no_line("", format!("{} VIPs and {total_backends} backends in all: at most {MAX_IDS} of each", vips.len()));
        }
        ok.then_some(vips)
    }
}

/// VIPs, backends, health checks.
impl Checker<'_> {
    /// `mark`: where the errors of this VIP start, to be named after it
    /// once its name is known.
    fn vip(&mut self, raw: RawVip, span: Range<usize>, backends: Option<Spanned<DeValue<'_>>>, fallback: &str, mark: usize, seen: &mut Seen) -> Option<Vip> {
        let address = self.required(fallback, "address", &raw.address, span.clone()).and_then(|v| self.unicast(fallback, "address", v));
        let protocol = self.required(fallback, "protocol", &raw.protocol, span.clone()).and_then(|v| self.keyword(fallback, "protocol", v));
        let port = optional(&raw.port, |v| self.int(fallback, "port", v, 0..=u16::MAX)).map(|p| p.unwrap_or(0));
        let (ctx, unique) = match (address, protocol, port) {
            (Some(a), Some(proto), Some(p)) => {
                let ctx = format!("vip {}", vip_name(a, proto, p));
                let line = self.r.line(span.start);
                let first = seen.vips.insert((a, proto, p), line);
                if let Some(first) = first {
                    self.r.error(span.clone(), &ctx, format!("defined twice (first at line {first})"));
                }
                seen.addresses.entry(a).or_insert_with(|| ctx.clone());
                (ctx, first.is_none())
            }
            _ => (fallback.to_string(), true),
        };
        let ctx = ctx.as_str();
        self.r.rename(mark, ctx);
        let mode_name = self.required(ctx, "mode", &raw.mode, span.clone()).and_then(|v| Some((self.keyword::<ModeName>(ctx, "mode", v)?, v.span())));
        let mode = mode_name.clone().and_then(|(m, mode_span)| self.mode(ctx, &raw, m, mode_span, address));
        if let (Some(Mode::FullNat { snat }), Some(s)) = (mode, &raw.snat) {
            seen.snats.push((snat, s.span(), ctx.to_string()));
        }
        let scheduler = optional(&raw.scheduler, |v| match self.text(ctx, "scheduler", v)? {
            "maglev" => Some(Scheduler::Maglev),
            _ => self.plugin(ctx, "scheduler", v, "\"maglev\" or ").map(Scheduler::Plugin),
        })
        .map(|s| s.unwrap_or(Scheduler::Maglev));
        let persistence = optional(&raw.persistence, |p| {
            let kind = self.required(ctx, "persistence.kind", &p.get_ref().kind, p.span()).and_then(|v| self.keyword(ctx, "persistence.kind", v));
            let timeout = self.duration(ctx, "persistence.timeout", &p.get_ref().timeout, DEFAULT_PERSISTENCE, IDLE_TIMEOUT);
            Some(Persistence { kind: kind?, timeout: timeout? })
        });
        let health = raw.health.as_ref().map(|h| self.vip_health(ctx, h, protocol, port));
        let facts = VipFacts {
            ctx,
            address,
            port,
            mode: mode_name.map(|(m, _)| m),
            snat: match mode {
                Some(Mode::FullNat { snat }) => Some(snat),
                _ => None,
            },
            health: health.as_ref().map(|(_, template)| template),
        };
        let backends = match backends {
            None => self.fail(span, ctx, "no backend: add [[vip.backend]] entries, or write `backend = []` for an empty pool on purpose"),
            Some(b) => self.backends(&facts, b),
        };
        let health = match health {
            None => Some(None),
            Some((policy, _)) => policy.map(Some),
        };
        Some(Vip {
            address: address?,
            protocol: protocol?,
            port: port?,
            mode: mode?,
            scheduler: scheduler?,
            persistence: persistence?,
            health: health?,
            backends: backends?,
        })
        .filter(|_| unique)
    }

    /// `mode_span` is where the mode was set, for what it is missing.
    fn mode(&mut self, ctx: &str, raw: &RawVip, mode: ModeName, mode_span: Range<usize>, vip: Option<IpAddr>) -> Option<Mode> {
        use ModeName::*;
        let mut ok = true;
        // The fields that belong to some modes only.
        let fields: [(&str, &Field, &[ModeName], &str); 3] = [
            ("snat", &raw.snat, &[FullNat], "full-nat"),
            ("tunnel_source", &raw.tunnel_source, &[Ipip, Gue], "ipip and gue"),
            ("gue_port", &raw.gue_port, &[Gue], "gue"),
        ];
        for (name, field, modes, which) in fields {
            if let Some(field) = field
                && !modes.contains(&mode)
            {
                ok = false;
                self.r.error(field.span(), ctx, format!("{name} is only for mode {which}, not {mode}"));
            }
        }
        let mut required = |name: &str, field: &Field, what: &str| {
            if field.is_none() {
                self.r.error(mode_span.clone(), ctx, format!("mode {mode} needs {name}: {what}"));
            }
            field.clone()
        };
        let result = match mode {
            Nat => Some(Mode::Nat),
            Dsr => Some(Mode::Dsr),
            FullNat => {
                let v = required("snat", &raw.snat, "the balancer address that backends reply to")?;
                let snat = self.unicast(ctx, "snat", &v)?;
                if Some(snat) == vip {
                    return self.fail(v.span(), ctx, format!("snat {snat} is the VIP's own address: use a balancer address that serves no VIP"));
                }
                self.same_family(ctx, "snat", v.span(), snat, &snat, vip).then_some(Mode::FullNat { snat })
            }
            Ipip | Gue => {
                let v = required("tunnel_source", &raw.tunnel_source, "the prefix outer source addresses are taken from, like \"198.18.200.0/24\"");
                let source = v.and_then(|v| {
                    let p = self.prefix(ctx, "tunnel_source", &v)?;
                    self.same_family(ctx, "tunnel_source", v.span(), p.address, &p, vip).then_some(p)
                });
                let port = optional(&raw.gue_port, |v| self.int(ctx, "gue_port", v, 1..=u16::MAX)).map(|p| p.unwrap_or(DEFAULT_GUE_PORT));
                match mode {
                    Ipip => source.map(|source| Mode::Ipip { source }),
                    _ => Some(Mode::Gue { source: source?, port: NonZeroU16::new(port?)? }),
                }
            }
        };
        result.filter(|_| ok)
    }

    fn backends(&mut self, vip: &VipFacts<'_>, value: Spanned<DeValue<'_>>) -> Option<Vec<Backend>> {
        let mut ok = true;
        let mut pool = Vec::new();
        // Address and effective port -> backend number and line.
        let mut seen: HashMap<SocketAddr, (usize, usize)> = HashMap::new();
        for (j, entry) in self.entries(value, vip.ctx, "vip.backend").into_iter().enumerate() {
            let ctx = format!("{}, backend {}", vip.ctx, j + 1);
            let span = entry.span();
            let Some(b) = self.de::<RawBackend>(entry, &ctx).and_then(|raw| self.backend(vip, &raw, &ctx, span.clone())) else {
                ok = false;
                continue;
            };
            if let Some(vip_port) = vip.port {
                let end = SocketAddr::new(b.address, if b.port == 0 { vip_port } else { b.port });
                let line = self.r.line(span.start);
                if let Some((first, first_line)) = seen.insert(end, (j + 1, line)) {
                    ok = false;
                    self.r.error(span, &ctx, format!("{end} is already backend {first} (line {first_line})"));
                }
            }
            pool.push(b);
        }
        ok.then_some(pool)
    }

    fn backend(&mut self, vip: &VipFacts<'_>, raw: &RawBackend, ctx: &str, span: Range<usize>) -> Option<Backend> {
        let address = self.required(ctx, "address", &raw.address, span).and_then(|v| {
            let a = self.unicast(ctx, "address", v)?;
            if Some(a) == vip.address {
                return self.fail(v.span(), ctx, format!("address {a} is the VIP's own"));
            }
            if Some(a) == vip.snat {
                return self.fail(v.span(), ctx, format!("address {a} is the VIP's snat address"));
            }
            self.same_family(ctx, "address", v.span(), a, &a, vip.address).then_some(a)
        });
        let port = optional(&raw.port, |v| {
            let port = self.int(ctx, "port", v, 0..=u16::MAX)?;
            match (vip.port, vip.mode) {
                (Some(0), _) if port != 0 => {
                    self.fail(v.span(), ctx, format!("port must be omitted: the VIP serves every port and each flow keeps its own, got {port}"))
                }
                (Some(p), Some(mode @ (ModeName::Dsr | ModeName::Ipip | ModeName::Gue))) if port != 0 && port != p => {
                    self.fail(v.span(), ctx, format!("port must be omitted or {p}: mode {mode} delivers the client's packet unchanged, got {port}"))
                }
                _ => Some(port),
            }
        })
        .map(|p| p.unwrap_or(0));
        let weight = optional(&raw.weight, |v| self.int(ctx, "weight", v, 0..=u16::MAX)).map(|w| w.unwrap_or(1));
        let mac = optional(&raw.mac, |v| self.mac(ctx, v));
        let check = match (vip.health, &raw.health) {
            (None, None) => Some(None),
            (None, Some(h)) => self.fail(h.span(), ctx, "health overrides need a health check on the VIP ([vip.health])"),
            (Some(template), over) => {
                let serving = port.zip(vip.port).map(|(p, v)| if p == 0 { v } else { p });
                self.backend_check(ctx, template, over.as_ref(), address, serving).map(Some)
            }
        };
        Some(Backend { address: address?, port: port?, weight: weight?, mac: mac?, check: check? })
    }

    /// The VIP-wide part of `health`, and the check every backend starts from.
    fn vip_health(&mut self, ctx: &str, h: &Spanned<RawHealth>, protocol: Option<Protocol>, port: Option<u16>) -> (Option<HealthPolicy>, HealthTemplate) {
        let raw = h.get_ref();
        let mark = self.r.errors.len();
        if raw.kind.is_none() {
            self.r.error(h.span(), ctx, format!("health.kind is required: one of {}", CheckKind::choices()));
        }
        if let Some(a) = &raw.address {
            self.r.error(a.span(), ctx, "health.address is per backend: set it in that backend's health table");
        }
        let settings = self.check_settings(ctx, raw, h.span());
        if port == Some(0) && raw.port.is_none() && settings.as_ref().is_some_and(|s| !matches!(s.shape, Shape::Icmp)) {
            self.r.error(h.span(), ctx, "health.port is required: the VIP serves every port");
        }
        let errors = self.r.errors[mark..].iter().map(|e| (e.line, e.message.clone())).collect();
        let on_down = optional(&raw.on_down, |v| match self.keyword(ctx, "health.on_down", v)? {
            OnDown::Reset if protocol == Some(Protocol::Udp) => {
                self.fail(v.span(), ctx, "health.on_down = \"reset\" answers with a TCP RST: only for tcp VIPs")
            }
            on_down => Some(on_down),
        })
        .map(Option::unwrap_or_default);
        let plugin = optional(&raw.policy, |v| self.plugin(ctx, "health.policy", v, ""));
        let policy = (|| Some(HealthPolicy { on_down: on_down?, plugin: plugin? }))();
        (policy, HealthTemplate { raw: raw.clone(), settings, errors })
    }

    /// A backend's check: the VIP's with this backend's overrides.
    fn backend_check(
        &mut self,
        ctx: &str,
        template: &HealthTemplate,
        over: Option<&Spanned<RawHealth>>,
        address: Option<IpAddr>,
        serving_port: Option<u16>,
    ) -> Option<HealthCheck> {
        let (settings, address) = match over {
            None => (template.settings.clone(), address),
            Some(over) => {
                let o = over.get_ref();
                for (name, field) in [("kind", &o.kind), ("on_down", &o.on_down), ("policy", &o.policy)] {
                    if let Some(field) = field {
                        self.r.error(field.span(), ctx, format!("health.{name} is set for the whole VIP, not per backend"));
                    }
                }
                // Errors in the VIP's own settings were reported once already.
                let mark = self.r.errors.len();
                let o = &RawHealth { kind: None, on_down: None, policy: None, ..o.clone() };
                let settings = self.check_settings(ctx, &template.raw.overridden_by(o), over.span());
                let fresh = self.r.errors.split_off(mark);
                self.r.errors.extend(fresh.into_iter().filter(|e| !template.errors.contains(&(e.line, e.message.clone()))));
                let address = match &o.address {
                    None => address,
                    Some(v) => self.unicast(ctx, "health.address", v),
                };
                (settings, address)
            }
        };
        let s = settings?;
        let port = s.port.or(serving_port)?;
        let probe = match s.shape {
            Shape::Icmp => Probe::Icmp,
            // Reported with the VIP: an all-ports VIP needs health.port.
            _ if port == 0 => return None,
            Shape::TcpConnect => Probe::TcpConnect { port },
            Shape::TcpHalfOpen => Probe::TcpHalfOpen { port },
            Shape::Http { path, status, content } => Probe::Http { port, path, status, content },
        };
        Some(HealthCheck { address: address?, probe, interval: s.interval, timeout: s.timeout, rise: s.rise, fall: s.fall })
    }

    /// Everything in a check but its target; `span` is the health table's.
    fn check_settings(&mut self, ctx: &str, raw: &RawHealth, span: Range<usize>) -> Option<CheckSettings> {
        use CheckKind::*;
        let kind = optional(&raw.kind, |v| self.keyword::<CheckKind>(ctx, "health.kind", v));
        let interval = self.duration(ctx, "health.interval", &raw.interval, DEFAULT_CHECK_INTERVAL, CHECK_INTERVAL);
        // Half the interval when that is shorter, so that a short interval
        // alone makes a valid check.
        let default_timeout = interval.map_or(DEFAULT_CHECK_TIMEOUT, |i| DEFAULT_CHECK_TIMEOUT.min(i / 2));
        let mut timeout = self.duration(ctx, "health.timeout", &raw.timeout, default_timeout, CHECK_TIMEOUT);
        if let (Some(i), Some(t), Some(field)) = (interval, timeout, &raw.timeout)
            && t >= i
        {
            let (t, i) = (humantime::format_duration(t), humantime::format_duration(i));
            timeout = self.fail(field.span(), ctx, format!("health.timeout ({t}) must be shorter than health.interval ({i})"));
        }
        let rise = optional(&raw.rise, |v| self.int(ctx, "health.rise", v, 1..=u8::MAX)).map(|v| v.unwrap_or(DEFAULT_RISE));
        let fall = optional(&raw.fall, |v| self.int(ctx, "health.fall", v, 1..=u8::MAX)).map(|v| v.unwrap_or(DEFAULT_FALL));
        let mut ok = kind.is_some();
        let kind = kind.flatten();
        if let Some(kind) = kind {
            let http = matches!(kind, HttpStatus | HttpContent);
            let only_for = [
                ("path", &raw.path, http, "http-status and http-content"),
                ("expect_status", &raw.expect_status, http, "http-status and http-content"),
                ("expect_content", &raw.expect_content, kind == HttpContent, "http-content"),
                ("port", &raw.port, kind != Icmp, "the tcp and http kinds"),
            ];
            for (name, field, applies, which) in only_for {
                if let Some(field) = field
                    && !applies
                {
                    ok = false;
                    self.r.error(field.span(), ctx, format!("health.{name} does not apply to kind {kind} (only to {which})"));
                }
            }
            if kind == HttpContent && raw.expect_content.is_none() {
                ok = false;
                let at = raw.kind.as_ref().map_or(span, Spanned::span);
                self.r.error(at, ctx, "kind http-content needs health.expect_content: the string the body must contain");
            }
        }
        let path = optional(&raw.path, |v| {
            let p = self.text(ctx, "health.path", v)?;
            match p.starts_with('/') && p.bytes().all(|b| b.is_ascii_graphic()) {
                true => Some(p.to_string()),
                false => self.fail(v.span(), ctx, format!("health.path must start with '/' and hold no spaces or control characters, got {p:?}")),
            }
        })
        .map(|p| p.unwrap_or_else(|| "/".to_string()));
        let status = optional(&raw.expect_status, |v| self.status(ctx, v)).map(|s| s.unwrap_or(DEFAULT_STATUS));
        let content = optional(&raw.expect_content, |v| match self.text(ctx, "health.expect_content", v)? {
            "" => self.fail(v.span(), ctx, "health.expect_content must not be empty"),
            c => Some(c.to_string()),
        });
        let port = optional(&raw.port, |v| self.int(ctx, "health.port", v, 1..=u16::MAX));
        let shape = match kind.filter(|_| ok)? {
            Icmp => Shape::Icmp,
            TcpConnect => Shape::TcpConnect,
            TcpHalfOpen => Shape::TcpHalfOpen,
            HttpStatus | HttpContent => Shape::Http { path: path?, status: status?, content: content? },
        };
        Some(CheckSettings { shape, interval: interval?, timeout: timeout?, rise: rise?, fall: fall?, port: port? })
    }
}

/// Values: each check reports its own error and returns `None` on failure.
impl Checker<'_> {
    fn fail<T>(&mut self, span: Range<usize>, ctx: &str, message: impl Into<String>) -> Option<T> {
        self.r.error(span, ctx, message);
        None
    }

    /// A field the table must set; `span` is the table's.
    fn required<'v>(&mut self, ctx: &str, field: &str, v: &'v Field, span: Range<usize>) -> Option<&'v Spanned<Scalar>> {
        if v.is_none() {
            self.r.error(span, ctx, format!("{field} is required"));
        }
        v.as_ref()
    }

    fn text<'v>(&mut self, ctx: &str, field: &str, v: &'v Spanned<Scalar>) -> Option<&'v str> {
        match v.get_ref() {
            Scalar::Text(s) => Some(s),
            other => self.fail(v.span(), ctx, format!("{field} must be a string, got {other}")),
        }
    }

    fn int<T>(&mut self, ctx: &str, field: &str, v: &Spanned<Scalar>, range: RangeInclusive<T>) -> Option<T>
    where
        T: TryFrom<i64> + PartialOrd + fmt::Display,
    {
        match v.get_ref() {
            Scalar::Int(n) => match T::try_from(*n) {
                Ok(x) if range.contains(&x) => Some(x),
                _ => self.fail(v.span(), ctx, format!("{field} must be {}..={}, got {n}", range.start(), range.end())),
            },
            other => self.fail(v.span(), ctx, format!("{field} must be an integer {}..={}, got {other}", range.start(), range.end())),
        }
    }

    fn keyword<T: Keyword>(&mut self, ctx: &str, field: &str, v: &Spanned<Scalar>) -> Option<T> {
        match v.get_ref() {
            Scalar::Text(s) if let Some(k) = T::from_name(s) => Some(k),
            other => self.fail(v.span(), ctx, format!("{field} must be one of {}, got {other}", T::choices())),
        }
    }

    /// A human duration ("30s", "15m", "1h 30m"), parsed by humantime.
    fn duration(&mut self, ctx: &str, field: &str, v: &Field, default: Duration, range: RangeInclusive<Duration>) -> Option<Duration> {
        let Some(v) = v else {
            return Some(default);
        };
        let s = self.text(ctx, field, v)?;
        let human = humantime::format_duration;
        match humantime::parse_duration(s) {
            Ok(d) if range.contains(&d) => Some(d),
            Ok(d) => self.fail(v.span(), ctx, format!("{field} must be between {} and {}, got {}", human(*range.start()), human(*range.end()), human(d))),
            Err(e) => self.fail(v.span(), ctx, format!("{field} must be a duration like \"30s\", \"15m\" or \"1h 30m\", got {s:?} ({e})")),
        }
    }

    fn unicast(&mut self, ctx: &str, field: &str, v: &Spanned<Scalar>) -> Option<IpAddr> {
        let s = self.text(ctx, field, v)?;
        let Ok(a) = s.parse::<IpAddr>() else {
            return self.fail(v.span(), ctx, format!("{field} must be an IPv4 or IPv6 address, got {s:?}"));
        };
        match not_unicast(a) {
            None => Some(a),
            Some(why) => self.fail(v.span(), ctx, format!("{field} must be a unicast address, got {a} ({why})")),
        }
    }

    /// Whether `a` is of the VIP's family (if known), reporting when not.
    /// `shown` is the value as the message shows it.
    fn same_family(&mut self, ctx: &str, field: &str, span: Range<usize>, a: IpAddr, shown: &dyn fmt::Display, vip: Option<IpAddr>) -> bool {
        let family = |a: IpAddr| if a.is_ipv4() { "IPv4" } else { "IPv6" };
        match vip {
            Some(v) if v.is_ipv4() != a.is_ipv4() => {
                let msg = format!("{field} {shown} is {} but the VIP is {}: all addresses of a VIP are of one family", family(a), family(v));
                self.r.error(span, ctx, msg);
                false
            }
            _ => true,
        }
    }

    /// "198.18.200.0/24"; a bare address is a host prefix.
    fn prefix(&mut self, ctx: &str, field: &str, v: &Spanned<Scalar>) -> Option<Prefix> {
        let s = self.text(ctx, field, v)?;
        let (address, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let parsed = address.parse::<IpAddr>().ok().and_then(|a| {
            let max = if a.is_ipv4() { 32 } else { 128 };
            let len = match len {
                None => max,
                Some(l) => l.parse::<u8>().ok().filter(|&l| l <= max)?,
            };
            Some(Prefix { address: a, len })
        });
        let Some(p) = parsed else {
            return self.fail(v.span(), ctx, format!("{field} must be a prefix like \"198.18.200.0/24\" or \"2001:db8:200::/64\", got {s:?}"));
        };
        if let Some(why) = not_unicast(p.address) {
            return self.fail(v.span(), ctx, format!("{field} must be a unicast prefix, got {p} ({why})"));
        }
        let network = network(p.address, p.len);
        if network != p.address {
            return self.fail(v.span(), ctx, format!("{field} {p} has bits set after the first {}: did you mean {network}/{}?", p.len, p.len));
        }
        Some(p)
    }

    /// "02:00:00:00:00:0b": six pairs of hex digits, unicast, not all zero.
    fn mac(&mut self, ctx: &str, v: &Spanned<Scalar>) -> Option<[u8; 6]> {
        let s = self.text(ctx, "mac", v)?;
        let bytes: Option<Vec<u8>> =
            s.split(':').map(|p| if p.len() == 2 && p.bytes().all(|c| c.is_ascii_hexdigit()) { u8::from_str_radix(p, 16).ok() } else { None }).collect();
        match bytes.and_then(|b| <[u8; 6]>::try_from(b).ok()) {
            None => self.fail(v.span(), ctx, format!("mac must be six pairs of hex digits like \"02:00:00:00:00:0b\", got {s:?}")),
            Some(m) if m[0] & 1 == 1 || m == [0; 6] => self.fail(v.span(), ctx, format!("mac must be a unicast address other than all zeros, got {s:?}")),
            Some(m) => Some(m),
        }
    }

    /// A plugin file, resolved against the config file's directory.
    fn plugin(&mut self, ctx: &str, field: &str, v: &Spanned<Scalar>, alternatives: &str) -> Option<PathBuf> {
        let s = self.text(ctx, field, v)?;
        match s.strip_suffix(".wasm") {
            Some(stem) if !stem.is_empty() && !stem.ends_with('/') => Some(self.base.join(s)),
            _ => self.fail(v.span(), ctx, format!("{field} must be {alternatives}a path to a .wasm plugin, got {s:?}")),
        }
    }

    /// `200` or "200-399", within 100..=599.
    fn status(&mut self, ctx: &str, v: &Spanned<Scalar>) -> Option<StatusRange> {
        let range = match v.get_ref() {
            Scalar::Int(n) => u16::try_from(*n).ok().map(|n| (n, n)),
            Scalar::Text(s) => parse_range(s).or_else(|| s.parse().ok().map(|n| (n, n))),
            _ => None,
        };
        match range {
            Some((first, last)) if 100 <= first && first <= last && last <= 599 => Some(StatusRange { first, last }),
            _ => self.fail(
                v.span(),
                ctx,
                format!("health.expect_status must be a code like 200 or a range like \"200-399\" within 100..=599, got {}", v.get_ref()),
            ),
        }
    }
}

/// `Some(None)` for an absent field, `None` for one that failed `check`.
fn optional<S, T>(v: &Option<Spanned<S>>, check: impl FnOnce(&Spanned<S>) -> Option<T>) -> Option<Option<T>> {
    match v {
        None => Some(None),
        Some(v) => check(v).map(Some),
    }
}

/// Pushes onto `path` the keys leading to the key (`Some(true)`) or value
/// (`Some(false)`) at byte `pos`, an error's position.
fn locate(value: &DeValue<'_>, pos: usize, path: &mut Vec<String>) -> Option<bool> {
    let DeValue::Table(table) = value else {
        return None;
    };
    for (key, v) in table.iter() {
        path.push(key.get_ref().to_string());
        if key.span().contains(&pos) {
            return Some(true);
        }
        // Inner keys first: a standard table's own span is only its header.
        if let Some(at_key) = locate(v.get_ref(), pos, path) {
            return Some(at_key);
        }
        if v.span().contains(&pos) {
            return Some(false);
        }
        path.pop();
    }
    None
}

/// Removes the key at `path`; false if there is none.
fn remove(value: &mut DeValue<'_>, path: &[String]) -> bool {
    let DeValue::Table(table) = value else {
        return false;
    };
    match path {
        [] => false,
        [key] => table.remove(key.as_str()).is_some(),
        [key, rest @ ..] => table.get_mut(key.as_str()).is_some_and(|v| remove(v.get_mut(), rest)),
    }
}

fn valid_ifname(name: &str) -> bool {
    (1..=15).contains(&name.len()) && name != "." && name != ".." && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}

/// "first-last", both u16.
fn parse_range(s: &str) -> Option<(u16, u16)> {
    let (first, last) = s.split_once('-')?;
    Some((first.parse().ok()?, last.parse().ok()?))
}

fn not_unicast(a: IpAddr) -> Option<&'static str> {
    match a {
        _ if a.is_unspecified() => Some("unspecified"),
        _ if a.is_loopback() => Some("loopback"),
        _ if a.is_multicast() => Some("multicast"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("broadcast"),
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => Some("IPv4-mapped: write the IPv4 address"),
        _ => None,
    }
}

/// `a` with the bits after the first `len` cleared.
fn network(a: IpAddr, len: u8) -> IpAddr {
    let len = u32::from(len);
    match a {
        IpAddr::V4(v) => Ipv4Addr::from(u32::from(v) & u32::MAX.checked_shl(32 - len).unwrap_or(0)).into(),
        IpAddr::V6(v) => Ipv6Addr::from(u128::from(v) & u128::MAX.checked_shl(128 - len).unwrap_or(0)).into(),
    }
}
