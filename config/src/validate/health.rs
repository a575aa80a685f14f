//! `[vip.health]` and a backend's `health = { ... }`: the VIP's check,
//! and each backend's with its overrides applied.

use std::net::IpAddr;
use std::ops::{Range, RangeInclusive};
use std::time::Duration;

use toml::Spanned;

use super::Checker;
use super::values::optional;
use crate::model::*;
use crate::raw::*;

const CHECK_INTERVAL: RangeInclusive<Duration> = Duration::from_millis(100)..=Duration::from_secs(3600);
const CHECK_TIMEOUT: RangeInclusive<Duration> = Duration::from_millis(10)..=Duration::from_secs(3600);
const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(2);
const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// HAProxy's rise and fall.
const DEFAULT_RISE: u8 = 2;
const DEFAULT_FALL: u8 = 3;
/// Success is 2xx or 3xx, as HAProxy's httpchk.
const DEFAULT_STATUS: StatusRange = StatusRange { first: 200, last: 399 };
/// Most bytes a udp check sends or expects: one datagram under any MTU.
const MAX_PAYLOAD: usize = 1024;

/// A VIP's check before it is applied to each backend.
pub(super) struct HealthTemplate {
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
    through_vip: bool,
}

/// A `Probe` before its port is known.
#[derive(Clone)]
enum Shape {
    Icmp,
    TcpConnect,
    TcpHalfOpen,
    Http { path: String, status: StatusRange, content: Option<String>, host: Option<String>, tls: Option<Tls> },
    Udp { payload: Vec<u8>, expect: Option<Vec<u8>> },
    Dns { name: String, record: DnsType, expect_address: Option<IpAddr> },
}

impl Checker<'_> {
    /// The VIP-wide part of `health`, and the check every backend starts from.
    pub(super) fn vip_health(
        &mut self,
        ctx: &str,
        h: &Spanned<RawHealth>,
        protocol: Option<Protocol>,
        port: Option<u16>,
        mode: Option<ModeName>,
    ) -> (Option<HealthPolicy>, HealthTemplate) {
        let raw = h.get_ref();
        let mark = self.r.errors.len();
        if raw.kind.is_none() {
            self.r.error(h.span(), ctx, format!("health.kind is required: one of {}", CheckKind::choices()));
        }
        if let Some(a) = &raw.address {
            self.r.error(a.span(), ctx, "health.address is per backend: set it in that backend's health table");
        }
        let mut settings = self.check_settings(ctx, raw, h.span());
        if let Some(field) = &raw.through_vip
            && let Some(s) = settings.as_ref().filter(|s| s.through_vip)
            && !self.through_vip_applies(ctx, field.span(), protocol, mode, matches!(s.shape, Shape::Icmp))
        {
            settings = None;
        }
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
    pub(super) fn backend_check(
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
                for (name, field) in [("kind", &o.kind), ("on_down", &o.on_down), ("policy", &o.policy), ("through_vip", &o.through_vip)] {
                    if let Some(field) = field {
                        self.r.error(field.span(), ctx, format!("health.{name} is set for the whole VIP, not per backend"));
                    }
                }
                // Errors in the VIP's own settings were reported once already.
                let mark = self.r.errors.len();
                let o = &RawHealth { kind: None, on_down: None, policy: None, through_vip: None, ..o.clone() };
                let settings = self.check_settings(ctx, &template.raw.overridden_by(o), over.span());
                let fresh = self.r.errors.split_off(mark);
                self.r.errors.extend(fresh.into_iter().filter(|e| !template.errors.contains(&(e.line, e.message.clone()))));
                let address = match &o.address {
                    None => address,
                    Some(v) if template.settings.as_ref().is_some_and(|s| s.through_vip) => self.fail(
                        v.span(),
                        ctx,
                        "health.address does not apply with health.through_vip: the check goes to the VIP, through this backend's data path",
                    ),
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
            Shape::Http { path, status, content, host, tls } => Probe::Http(HttpProbe { port, path, status, content, host, tls }),
            Shape::Udp { payload, expect } => Probe::Udp { port, payload, expect },
            Shape::Dns { name, record, expect_address } => Probe::Dns { port, name, record, expect_address },
        };
        Some(HealthCheck { address: address?, probe, through_vip: s.through_vip, interval: s.interval, timeout: s.timeout, rise: s.rise, fall: s.fall })
    }

    /// Whether `through_vip = true` fits the VIP; reports why not.
    /// (The kind is checked with the other settings.)
    fn through_vip_applies(&mut self, ctx: &str, span: Range<usize>, protocol: Option<Protocol>, mode: Option<ModeName>, icmp: bool) -> bool {
        let why = match (mode, protocol) {
            (Some(m @ (ModeName::Nat | ModeName::FullNat)), _) => {
                format!(
                    "health.through_vip applies to dsr, ipip and gue VIPs (whose backends own the VIP), not to mode {m}: nat checks already go where flows go"
                )
            }
            (_, Some(Protocol::Udp)) if !icmp => {
                "health.through_vip of a udp VIP needs kind icmp: a tcp-half-open check is a TCP SYN to the VIP's port".to_string()
            }
            _ => return true,
        };
        self.r.error(span, ctx, why);
        false
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
            let http = matches!(kind, HttpStatus | HttpContent | HttpsStatus | HttpsContent);
            let https = matches!(kind, HttpsStatus | HttpsContent);
            const HTTP: &str = "the http and https kinds";
            const HTTPS: &str = "https-status and https-content";
            const CONTENT: &str = "http-content and https-content";
            let only_for = [
                ("path", &raw.path, http, HTTP),
                ("expect_status", &raw.expect_status, http, HTTP),
                ("expect_content", &raw.expect_content, matches!(kind, HttpContent | HttpsContent), CONTENT),
                ("host", &raw.host, http, HTTP),
                ("sni", &raw.sni, https, HTTPS),
                ("verify", &raw.verify, https, HTTPS),
                ("ca_file", &raw.ca_file, https, HTTPS),
                ("payload", &raw.payload, kind == Udp, "udp"),
                ("payload_hex", &raw.payload_hex, kind == Udp, "udp"),
                ("expect_reply", &raw.expect_reply, kind == Udp, "udp"),
                ("expect_reply_hex", &raw.expect_reply_hex, kind == Udp, "udp"),
                ("query_name", &raw.query_name, kind == Dns, "dns"),
                ("query_type", &raw.query_type, kind == Dns, "dns"),
                ("expect_address", &raw.expect_address, kind == Dns, "dns"),
                ("port", &raw.port, kind != Icmp, "every kind but icmp"),
            ];
            for (name, field, applies, which) in only_for {
                if let Some(field) = field
                    && !applies
                {
                    ok = false;
                    self.r.error(field.span(), ctx, format!("health.{name} does not apply to kind {kind} (only to {which})"));
                }
            }
            let at = raw.kind.as_ref().map_or(span, Spanned::span);
            let needs = [
                (matches!(kind, HttpContent | HttpsContent) && raw.expect_content.is_none(), "health.expect_content: the string the body must contain"),
                (kind == Udp && raw.payload.is_none() && raw.payload_hex.is_none(), "health.payload or health.payload_hex: what to send"),
                (kind == Dns && raw.query_name.is_none(), "health.query_name: the name to ask for"),
            ];
            for (missing, what) in needs {
                if missing {
                    ok = false;
                    self.r.error(at.clone(), ctx, format!("kind {kind} needs {what}"));
                }
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
        let host = optional(&raw.host, |v| {
            let h = self.text(ctx, "health.host", v)?;
            match !h.is_empty() && h.len() <= 255 && h.bytes().all(|b| b.is_ascii_graphic()) {
                true => Some(h.to_string()),
                false => self.fail(v.span(), ctx, format!("health.host must be 1 to 255 characters without spaces or control characters, got {h:?}")),
            }
        });
        let tls = self.tls(ctx, raw, host.as_ref().and_then(|h| h.as_deref()));
        let payload = self.bytes_field(ctx, ("payload", &raw.payload), ("payload_hex", &raw.payload_hex));
        let expect = self.bytes_field(ctx, ("expect_reply", &raw.expect_reply), ("expect_reply_hex", &raw.expect_reply_hex));
        let dns = self.dns(ctx, raw);
        let port = optional(&raw.port, |v| self.int(ctx, "health.port", v, 1..=u16::MAX));
        let through_vip = optional(&raw.through_vip, |v| match self.flag(ctx, "health.through_vip", v)? {
            true if kind.is_some_and(|k| !matches!(k, TcpHalfOpen | Icmp)) => self.fail(
                v.span(),
                ctx,
                format!(
                    "health.through_vip needs kind tcp-half-open or icmp, got {}: the check is sent as raw frames, a bare SYN or an echo request",
                    kind.map_or("", |k| k.name())
                ),
            ),
            flag => Some(flag),
        })
        .map(|f| f.unwrap_or(false));
        let shape = match kind.filter(|_| ok)? {
            Icmp => Shape::Icmp,
            TcpConnect => Shape::TcpConnect,
            TcpHalfOpen => Shape::TcpHalfOpen,
            HttpStatus | HttpContent => Shape::Http { path: path?, status: status?, content: content?, host: host?, tls: None },
            HttpsStatus | HttpsContent => Shape::Http { path: path?, status: status?, content: content?, host: host?, tls: Some(tls?) },
            Udp => Shape::Udp { payload: payload??, expect: expect? },
            Dns => dns?,
        };
        Some(CheckSettings { shape, interval: interval?, timeout: timeout?, rise: rise?, fall: fall?, port: port?, through_vip: through_vip? })
    }

    /// An https check's TLS settings (also computed, unused, for other
    /// kinds, whose TLS fields were already refused). The SNI defaults to
    /// the Host header's name.
    fn tls(&mut self, ctx: &str, raw: &RawHealth, host: Option<&str>) -> Option<Tls> {
        let verify = optional(&raw.verify, |v| self.flag(ctx, "health.verify", v));
        let ca_file = optional(&raw.ca_file, |v| match self.text(ctx, "health.ca_file", v)? {
            "" => self.fail(v.span(), ctx, "health.ca_file must be a path to PEM certificates, got \"\""),
            path => Some(self.base.join(path)),
        });
        if let (Some(Some(false)), Some(field)) = (verify, &raw.ca_file) {
            return self.fail(field.span(), ctx, "health.ca_file is not used with health.verify = false: remove one of them");
        }
        let sni = optional(&raw.sni, |v| {
            let name = self.text(ctx, "health.sni", v)?;
            match dns_name(name) {
                Some(n) => Some(n.to_string()),
                None => self.fail(v.span(), ctx, format!("health.sni must be a DNS name like \"www.example.com\" (no address, no port), got {name:?}")),
            }
        });
        let from_host = host.and_then(|h| dns_name(h.rsplit_once(':').map_or(h, |(name, port)| if port.parse::<u16>().is_ok() { name } else { h })));
        let server_name = sni?.or_else(|| from_host.map(str::to_string));
        let verify = match (verify?, ca_file?) {
            (Some(false), _) => TlsVerify::Off,
            (_, Some(path)) => TlsVerify::CaFile(path),
            _ => TlsVerify::SystemRoots,
        };
        Some(Tls { server_name, verify })
    }

    /// Bytes given as text or as hex, in one of two fields: `None` when
    /// wrong, `Some(None)` when neither is set.
    fn bytes_field(&mut self, ctx: &str, text: (&str, &Field), hex: (&str, &Field)) -> Option<Option<Vec<u8>>> {
        let (name, v, is_hex) = match (text.1, hex.1) {
            (None, None) => return Some(None),
            (Some(_), Some(h)) => return self.fail(h.span(), ctx, format!("health.{} and health.{} give one value two ways: set one", text.0, hex.0)),
            (Some(v), None) => (text.0, v, false),
            (None, Some(v)) => (hex.0, v, true),
        };
        let field = format!("health.{name}");
        let s = self.text(ctx, &field, v)?;
        let bytes = match is_hex {
            false => s.as_bytes().to_vec(),
            true => match parse_hex(s) {
                Some(b) => b,
                None => return self.fail(v.span(), ctx, format!("{field} must be pairs of hex digits like \"0a1b2c\", got {s:?}")),
            },
        };
        match bytes.len() {
            0 => self.fail(v.span(), ctx, format!("{field} must not be empty")),
            n if n > MAX_PAYLOAD => self.fail(v.span(), ctx, format!("{field} must be at most {MAX_PAYLOAD} bytes, got {n}")),
            _ => Some(Some(bytes)),
        }
    }

    /// A dns check's query (type A unless set) and expected address;
    /// `None` when wrong or without a name (which kind dns reports).
    fn dns(&mut self, ctx: &str, raw: &RawHealth) -> Option<Shape> {
        let name = optional(&raw.query_name, |v| {
            let name = self.text(ctx, "health.query_name", v)?;
            match dns_name(name) {
                Some(n) => Some(n.to_string()),
                None => self.fail(v.span(), ctx, format!("health.query_name must be a DNS name like \"www.example.com\", got {name:?}")),
            }
        });
        let record = optional(&raw.query_type, |v| self.keyword::<DnsType>(ctx, "health.query_type", v)).map(|t| t.unwrap_or(DnsType::A));
        let address = optional(&raw.expect_address, |v| {
            let s = self.text(ctx, "health.expect_address", v)?;
            match s.parse::<IpAddr>() {
                Ok(a) => Some(a),
                Err(_) => self.fail(v.span(), ctx, format!("health.expect_address must be an IPv4 or IPv6 address, got {s:?}")),
            }
        });
        let (record, address) = (record?, address?);
        if let (Some(a), Some(field)) = (address, &raw.expect_address) {
            let fits = match record {
                DnsType::A => a.is_ipv4(),
                DnsType::Aaaa => a.is_ipv6(),
                _ => false,
            };
            if !fits {
                return self.fail(
                    field.span(),
                    ctx,
                    format!("health.expect_address {a} cannot be in the answer to a query of type {record}: use query_type \"A\" for IPv4, \"AAAA\" for IPv6"),
                );
            }
        }
        Some(Shape::Dns { name: name??, record, expect_address: address })
    }
}

/// `name` without a final dot if it is a DNS name (RFC 1035 labels of
/// letters, digits, '-' and '_', at most 253 characters) and not an
/// address.
fn dns_name(name: &str) -> Option<&str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let label = |l: &str| (1..=63).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let ok = (1..=253).contains(&name.len()) && name.split('.').all(label) && name.parse::<IpAddr>().is_err();
    ok.then_some(name)
}

fn parse_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect()
}
