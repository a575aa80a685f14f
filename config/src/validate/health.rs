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
}

/// A `Probe` before its port is known.
#[derive(Clone)]
enum Shape {
    Icmp,
    TcpConnect,
    TcpHalfOpen,
    Http { path: String, status: StatusRange, content: Option<String> },
}

impl Checker<'_> {
    /// The VIP-wide part of `health`, and the check every backend starts from.
    pub(super) fn vip_health(
        &mut self,
        ctx: &str,
        h: &Spanned<RawHealth>,
        protocol: Option<Protocol>,
        port: Option<u16>,
    ) -> (Option<HealthPolicy>, HealthTemplate) {
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
