//! Checks of single values that every section uses: types, ranges,
//! keywords, durations, addresses, prefixes, MACs, plugin paths, statuses.
//! Each reports its own error and returns `None` on failure.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::{Range, RangeInclusive};
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::Checker;
use crate::model::*;
use crate::raw::*;

impl Checker<'_> {
    pub(super) fn fail<T>(&mut self, span: Range<usize>, ctx: &str, message: impl Into<String>) -> Option<T> {
        self.r.error(span, ctx, message);
        None
    }

    /// A field the table must set; `span` is the table's.
    pub(super) fn required<'v>(&mut self, ctx: &str, field: &str, v: &'v Field, span: Range<usize>) -> Option<&'v Spanned<Scalar>> {
        if v.is_none() {
            self.r.error(span, ctx, format!("{field} is required"));
        }
        v.as_ref()
    }

    pub(super) fn text<'v>(&mut self, ctx: &str, field: &str, v: &'v Spanned<Scalar>) -> Option<&'v str> {
        match v.get_ref() {
            Scalar::Text(s) => Some(s),
            other => self.fail(v.span(), ctx, format!("{field} must be a string, got {other}")),
        }
    }

    pub(super) fn int<T>(&mut self, ctx: &str, field: &str, v: &Spanned<Scalar>, range: RangeInclusive<T>) -> Option<T>
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

    pub(super) fn flag(&mut self, ctx: &str, field: &str, v: &Spanned<Scalar>) -> Option<bool> {
        match v.get_ref() {
            Scalar::Bool(b) => Some(*b),
            other => self.fail(v.span(), ctx, format!("{field} must be true or false, got {other}")),
        }
    }

    pub(super) fn keyword<T: Keyword>(&mut self, ctx: &str, field: &str, v: &Spanned<Scalar>) -> Option<T> {
        match v.get_ref() {
            Scalar::Text(s) if let Some(k) = T::from_name(s) => Some(k),
            other => self.fail(v.span(), ctx, format!("{field} must be one of {}, got {other}", T::choices())),
        }
    }

    /// A human duration ("30s", "15m", "1h 30m"), parsed by humantime.
    pub(super) fn duration(&mut self, ctx: &str, field: &str, v: &Field, default: Duration, range: RangeInclusive<Duration>) -> Option<Duration> {
        let Some(v) = v else {
            return Some(default);
        };
        const LIKE: &str = "a duration string such as \"30s\", \"15m\" or \"1h 30m\"";
        let s = match v.get_ref() {
            Scalar::Text(s) => s,
            // A bare number has no unit to guess from: say so, rather than
            // only that a string was expected.
            Scalar::Int(n) => return self.fail(v.span(), ctx, format!("{field} must be {LIKE}, got the number {n} without a unit (\"{n}s\" is {n} seconds)")),
            other => return self.fail(v.span(), ctx, format!("{field} must be {LIKE}, got {other}")),
        };
        let human = humantime::format_duration;
        match humantime::parse_duration(s) {
            Ok(d) if range.contains(&d) => Some(d),
            Ok(d) => self.fail(v.span(), ctx, format!("{field} must be between {} and {}, got {}", human(*range.start()), human(*range.end()), human(d))),
            Err(e) => self.fail(v.span(), ctx, format!("{field} must be {LIKE}, got {s:?} ({e})")),
        }
    }

    pub(super) fn unicast(&mut self, ctx: &str, field: &str, v: &Spanned<Scalar>) -> Option<IpAddr> {
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
    pub(super) fn same_family(&mut self, ctx: &str, field: &str, span: Range<usize>, a: IpAddr, shown: &dyn fmt::Display, vip: Option<IpAddr>) -> bool {
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
    pub(super) fn prefix(&mut self, ctx: &str, field: &str, v: &Spanned<Scalar>) -> Option<Prefix> {
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
    pub(super) fn mac(&mut self, ctx: &str, v: &Spanned<Scalar>) -> Option<[u8; 6]> {
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
    pub(super) fn plugin(&mut self, ctx: &str, field: &str, v: &Spanned<Scalar>, alternatives: &str) -> Option<PathBuf> {
        let s = self.text(ctx, field, v)?;
        match s.strip_suffix(".wasm") {
            Some(stem) if !stem.is_empty() && !stem.ends_with('/') => Some(self.base.join(s)),
            _ => self.fail(v.span(), ctx, format!("{field} must be {alternatives}a path to a .wasm plugin, got {s:?}")),
        }
    }

    /// `200` or "200-399", within 100..=599.
    pub(super) fn status(&mut self, ctx: &str, v: &Spanned<Scalar>) -> Option<StatusRange> {
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

/// Records `value` for `key` unless `key` was seen before; then returns
/// the value recorded first, for a duplicate's message to name the first
/// occurrence (`HashMap::insert` would replace it, and a third duplicate
/// would name the second).
pub(super) fn first_seen<K: Hash + Eq, V: Copy>(seen: &mut HashMap<K, V>, key: K, value: V) -> Option<V> {
    match seen.entry(key) {
        Entry::Occupied(first) => Some(*first.get()),
        Entry::Vacant(slot) => {
            slot.insert(value);
            None
        }
    }
}

/// `Some(None)` for an absent field, `None` for one that failed `check`.
pub(super) fn optional<S, T>(v: &Option<Spanned<S>>, check: impl FnOnce(&Spanned<S>) -> Option<T>) -> Option<Option<T>> {
    match v {
        None => Some(None),
        Some(v) => check(v).map(Some),
    }
}

/// "first-last", both u16.
pub(super) fn parse_range(s: &str) -> Option<(u16, u16)> {
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
