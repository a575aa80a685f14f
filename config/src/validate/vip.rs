//! `[[vip]]`: each service, its mode, persistence and pool of backends,
//! and the checks across VIPs (duplicates, full-NAT source addresses, the
//! engine's id space).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU16;
use std::ops::Range;
use std::time::Duration;

use fulcrum_dataplane::forward::tunnel::GUE_DEFAULT_PORT;
use toml::Spanned;
use toml::de::DeValue;

use super::Checker;
use super::health::HealthTemplate;
use super::timeouts::IDLE_TIMEOUT;
use super::values::{first_seen, optional};
use crate::model::*;
use crate::raw::*;

const DEFAULT_PERSISTENCE: Duration = Duration::from_secs(300);
/// The most full-NAT source addresses of one VIP (a /26, or a /122 in
/// IPv6): each costs every worker 16 bytes per port of its share (about
/// 1 MiB in all with the full port range), for the quarantine's records.
pub(crate) const MAX_SNAT_ADDRS: usize = 64;
/// The most VIPs, and backends in all, the engine can number (u16 ids).
const MAX_IDS: usize = u16::MAX as usize;

/// What a backend's checks need to know of its VIP; `None` where the VIP's
/// own value was wrong (already reported).
struct VipFacts<'a> {
    ctx: &'a str,
    address: Option<IpAddr>,
    port: Option<u16>,
    mode: Option<ModeName>,
    snat: &'a [IpAddr],
    health: Option<&'a HealthTemplate>,
    /// Its backend entries set at runtime (`fulcrum backend`).
    runtime: &'a [usize],
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

impl Checker<'_> {
    pub(super) fn vips(&mut self, section: Option<Spanned<DeValue<'_>>>) -> Option<Vec<Vip>> {
        let mut vips = Vec::new();
        let mut seen = Seen::default();
        let entries = section.map_or(Some(Vec::new()), |s| self.entries(s, "", "vip"));
        let mut ok = entries.is_some();
        for (i, entry) in entries.unwrap_or_default().into_iter().enumerate() {
            let span = entry.span();
            let backends = entry.get_ref().as_table().and_then(|t| t.get("backend")).cloned();
            let fallback = format!("vip {}", i + 1);
            let mark = self.r.errors.len();
            let Some(raw) = self.de::<RawVip>(entry, &fallback) else {
                ok = false;
                // Still report what is wrong in the shapes of its backends.
                for (j, entry) in backends.and_then(|b| self.entries(b, &fallback, "vip.backend")).unwrap_or_default().into_iter().enumerate() {
                    self.de::<RawBackend>(entry, &format!("{fallback}, backend {}", j + 1));
                }
                continue;
            };
            let runtime = self.runtime.iter().find(|(v, _)| *v == i).map(|(_, b)| b.clone()).unwrap_or_default();
            match self.vip(raw, span, backends, &fallback, mark, &mut seen, &runtime) {
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

    /// `mark`: where the errors of this VIP start, to be named after it
    /// once its name is known.
    #[allow(clippy::too_many_arguments)]
    fn vip(
        &mut self,
        raw: RawVip,
        span: Range<usize>,
        backends: Option<Spanned<DeValue<'_>>>,
        fallback: &str,
        mark: usize,
        seen: &mut Seen,
        runtime: &[usize],
    ) -> Option<Vip> {
        let address = self.required(fallback, "address", &raw.address, span.clone()).and_then(|v| self.unicast(fallback, "address", v));
        let protocol = self.required(fallback, "protocol", &raw.protocol, span.clone()).and_then(|v| self.keyword(fallback, "protocol", v));
        let port = optional(&raw.port, |v| self.int(fallback, "port", v, 0..=u16::MAX)).map(|p| p.unwrap_or(0));
        let (ctx, unique) = match (address, protocol, port) {
            (Some(a), Some(proto), Some(p)) => {
                let ctx = format!("vip {}", vip_name(a, proto, p));
                let line = self.r.line(span.start);
                let first = first_seen(&mut seen.vips, (a, proto, p), line);
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
        let mode = mode_name.clone().and_then(|(m, mode_span)| self.mode(ctx, &raw, m, mode_span, address, seen));
        let scheduler = optional(&raw.scheduler, |v| match self.text(ctx, "scheduler", v)? {
            "maglev" => Some(Scheduler::Maglev),
            _ => self.plugin(ctx, "scheduler", v, "\"maglev\" or ").map(Scheduler::Plugin),
        })
        .map(|s| s.unwrap_or(Scheduler::Maglev));
        let syn_proxy = self.syn_proxy(ctx, &raw, protocol, mode_name.as_ref().map(|(m, _)| *m));
        let persistence = optional(&raw.persistence, |p| {
            let kind = self.required(ctx, "persistence.kind", &p.get_ref().kind, p.span()).and_then(|v| self.keyword(ctx, "persistence.kind", v));
            let timeout = self.duration(ctx, "persistence.timeout", &p.get_ref().timeout, DEFAULT_PERSISTENCE, IDLE_TIMEOUT);
            Some(Persistence { kind: kind?, timeout: timeout? })
        });
        let health = raw.health.as_ref().map(|h| self.vip_health(ctx, h, protocol, port, mode_name.as_ref().map(|(m, _)| *m)));
        let facts = VipFacts {
            ctx,
            address,
            port,
            mode: mode_name.map(|(m, _)| m),
            snat: match &mode {
                Some(Mode::FullNat { snat }) => snat,
                _ => &[],
            },
            health: health.as_ref().map(|(_, template)| template),
            runtime,
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
            syn_proxy: syn_proxy?,
            persistence: persistence?,
            health: health?,
            backends: backends?,
        })
        .filter(|_| unique)
    }

    /// Only TCP VIPs in nat modes can answer SYNs themselves; they do when
    /// flooded unless told otherwise.
    fn syn_proxy(&mut self, ctx: &str, raw: &RawVip, protocol: Option<Protocol>, mode: Option<ModeName>) -> Option<SynProxy> {
        let nat_tcp = protocol == Some(Protocol::Tcp) && matches!(mode, Some(ModeName::Nat | ModeName::FullNat));
        match &raw.syn_proxy {
            None => Some(if nat_tcp { SynProxy::Auto } else { SynProxy::Off }),
            Some(v) => match self.keyword(ctx, "syn_proxy", v)? {
                SynProxy::Off => Some(SynProxy::Off),
                _ if protocol.is_some() && mode.is_some() && !nat_tcp => {
                    self.fail(v.span(), ctx, "syn_proxy answers TCP SYNs for NAT flows: only for tcp VIPs in mode nat or full-nat")
                }
                on => Some(on),
            },
        }
    }

    /// `mode_span` is where the mode was set, for what it is missing.
    fn mode(&mut self, ctx: &str, raw: &RawVip, mode: ModeName, mode_span: Range<usize>, vip: Option<IpAddr>, seen: &mut Seen) -> Option<Mode> {
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
                let v = required("snat", &raw.snat, "the balancer addresses that backends reply to (one, a list, or a prefix)")?;
                let snat = self.snat(ctx, &v, vip)?;
                seen.snats.extend(snat.iter().map(|(a, span)| (*a, span.clone(), ctx.to_string())));
                Some(Mode::FullNat { snat: snat.into_iter().map(|(a, _)| a).collect() })
            }
            Ipip | Gue => {
                let v = required("tunnel_source", &raw.tunnel_source, "the prefix outer source addresses are taken from, like \"198.18.200.0/24\"");
                let source = v.and_then(|v| {
                    let p = self.prefix(ctx, "tunnel_source", &v)?;
                    self.same_family(ctx, "tunnel_source", v.span(), p.address, &p, vip).then_some(p)
                });
                let port = optional(&raw.gue_port, |v| self.int(ctx, "gue_port", v, 1..=u16::MAX)).map(|p| p.unwrap_or(GUE_DEFAULT_PORT));
                match mode {
                    Ipip => source.map(|source| Mode::Ipip { source }),
                    _ => Some(Mode::Gue { source: source?, port: NonZeroU16::new(port?)? }),
                }
            }
        };
        result.filter(|_| ok)
    }

    /// `snat`: one address, a list of them, or a prefix (each of its
    /// addresses), of the VIP's family and none the VIP's own; each with
    /// where it was written.
    fn snat(&mut self, ctx: &str, v: &Spanned<Scalar>, vip: Option<IpAddr>) -> Option<Vec<(IpAddr, Range<usize>)>> {
        let addrs: Vec<(IpAddr, Range<usize>)> = match v.get_ref() {
            Scalar::Text(s) if s.contains('/') => {
                let p = self.prefix(ctx, "snat", v)?;
                let host_bits = u32::from(if p.address.is_ipv4() { 32 } else { 128 } - p.len);
                if host_bits > MAX_SNAT_ADDRS.ilog2() {
                    return self.fail(v.span(), ctx, format!("snat {p} is too wide: at most {MAX_SNAT_ADDRS} addresses (a /26, or a /122 in IPv6)"));
                }
                prefix_addresses(p).map(|a| (a, v.span())).collect()
            }
            Scalar::Text(_) => vec![(self.unicast(ctx, "snat", v)?, v.span())],
            Scalar::List(items) if (1..=MAX_SNAT_ADDRS).contains(&items.len()) => {
                let mut ok = true;
                let mut addrs = Vec::with_capacity(items.len());
                let mut lines = HashMap::new();
                for item in items {
                    let Some(a) = self.unicast(ctx, "snat", item) else {
                        ok = false;
                        continue;
                    };
                    if let Some(first) = first_seen(&mut lines, a, self.r.line(item.span().start)) {
                        ok = false;
                        self.r.error(item.span(), ctx, format!("snat {a} is listed twice (first at line {first})"));
                    }
                    addrs.push((a, item.span()));
                }
                ok.then_some(addrs)?
            }
            Scalar::List(items) => {
                return self.fail(v.span(), ctx, format!("snat must list 1 to {MAX_SNAT_ADDRS} addresses, got {}", items.len()));
            }
            other => return self.fail(v.span(), ctx, format!("snat must be an address, a list of addresses or a prefix like \"198.18.9.0/29\", got {other}")),
        };
        if let Some((a, span)) = addrs.iter().find(|(a, _)| Some(*a) == vip) {
            return self.fail(span.clone(), ctx, format!("snat {a} is the VIP's own address: use a balancer address that serves no VIP"));
        }
        // The first address of the wrong family says it for all.
        match addrs.iter().find(|(a, _)| vip.is_some_and(|v| v.is_ipv4() != a.is_ipv4())) {
            Some((a, span)) => {
                self.same_family(ctx, "snat", span.clone(), *a, a, vip);
                None
            }
            None => Some(addrs),
        }
    }

    fn backends(&mut self, vip: &VipFacts<'_>, value: Spanned<DeValue<'_>>) -> Option<Vec<Backend>> {
        let mut ok = true;
        let mut pool = Vec::new();
        // Address and effective port -> backend number and line.
        let mut seen: HashMap<SocketAddr, (usize, usize)> = HashMap::new();
        for (j, entry) in self.entries(value, vip.ctx, "vip.backend")?.into_iter().enumerate() {
            // A runtime backend's errors point at its VIP's line: name it.
            let ctx = match entry.get_ref().get("address").and_then(|a| a.get_ref().as_str()) {
                Some(a) if vip.runtime.contains(&j) => format!("{}, backend {a} (set by `fulcrum backend`)", vip.ctx),
                _ => format!("{}, backend {}", vip.ctx, j + 1),
            };
            let span = entry.span();
            let Some(b) = self.de::<RawBackend>(entry, &ctx).and_then(|raw| self.backend(vip, &raw, &ctx, span.clone())) else {
                ok = false;
                continue;
            };
            if let Some(vip_port) = vip.port {
                let end = SocketAddr::new(b.address, if b.port == 0 { vip_port } else { b.port });
                let line = self.r.line(span.start);
                if let Some((first, first_line)) = first_seen(&mut seen, end, (j + 1, line)) {
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
            if vip.snat.contains(&a) {
                return self.fail(v.span(), ctx, format!("address {a} is a snat address of the VIP"));
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
}

/// Every address of `p`, in order (its length is checked to be short).
fn prefix_addresses(p: Prefix) -> impl Iterator<Item = IpAddr> {
    let count = 1u128 << (if p.address.is_ipv4() { 32 } else { 128 } - u32::from(p.len));
    (0..count).map(move |i| match p.address {
        IpAddr::V4(a) => IpAddr::V4(std::net::Ipv4Addr::from(u32::from(a) + i as u32)),
        IpAddr::V6(a) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(a) + i)),
    })
}
