//! `[sync]`: flow sync with the other balancer of a pair.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use toml::Spanned;
use toml::de::DeValue;

use super::Checker;
use super::values::{first_seen, optional};
use crate::model::*;
use crate::raw::*;

/// Shorter keys are guessable; HMAC-SHA256 takes any length.
const MIN_KEY_LEN: usize = 16;

impl Checker<'_> {
    pub(super) fn sync(&mut self, section: Option<Spanned<DeValue<'_>>>, workers: Option<&Workers>) -> Option<Option<Sync>> {
        let ctx = "sync";
        let Some(section) = section else { return Some(None) };
        let span = section.span();
        let raw: RawSync = self.de(section, ctx)?;
        let listen = self.required(ctx, "listen", &raw.listen, span.clone()).and_then(|v| {
            let s = self.text(ctx, "listen", v)?;
            match s.parse::<SocketAddr>() {
                Ok(a) if a.port() != 0 && !a.ip().is_unspecified() => Some(a),
                _ => self.fail(v.span(), ctx, format!("listen must be this balancer's address and a port (not 0) like \"198.18.0.2:7788\", got {s:?}")),
            }
        });
        let peers = optional(&raw.peers, |v| {
            let list = match v.get_ref() {
                Scalar::List(list) if !list.is_empty() => list,
                other => {
                    return self.fail(v.span(), ctx, format!("peers must be a non-empty array of addresses and ports like [\"198.18.0.3:7788\"], got {other}"));
                }
            };
            let mut seen = HashMap::new();
            let mut peers = Vec::new();
            for (i, p) in list.iter().enumerate() {
                let field = format!("peers[{i}]");
                let addr = self.text(ctx, &field, p).and_then(|s| match s.parse::<SocketAddr>() {
                    Ok(a) if a.port() != 0 && !a.ip().is_unspecified() && !a.ip().is_multicast() => Some(a),
                    _ => self.fail(p.span(), ctx, format!("{field} must be a unicast address and a port like \"198.18.0.3:7788\", got {s:?}")),
                });
                match addr {
                    Some(a) if let Some(first) = first_seen(&mut seen, a, i) => {
                        self.r.error(p.span(), ctx, format!("{field}: {a} is listed twice (also peers[{first}])"));
                        peers.push(None);
                    }
                    a => peers.push(a),
                }
            }
            peers.into_iter().collect::<Option<Vec<_>>>()
        });
        let group = optional(&raw.group, |v| {
            let s = self.text(ctx, "group", v)?;
            match s.parse::<IpAddr>() {
                Ok(IpAddr::V4(g)) if g.is_multicast() => Some(g),
                _ => self.fail(v.span(), ctx, format!("group must be an IPv4 multicast address like \"239.18.0.1\", got {s:?}")),
            }
        });
        let key = self.required(ctx, "key", &raw.key, span.clone()).and_then(|v| {
            let s = self.text(ctx, "key", v)?;
            match s.len() >= MIN_KEY_LEN {
                true => Some(s.as_bytes().to_vec()),
                false => {
                    self.fail(v.span(), ctx, format!("key must be at least {MIN_KEY_LEN} bytes (a shared secret, the same on both balancers), got {}", s.len()))
                }
            }
        });
        let role = optional(&raw.role, |v| self.keyword(ctx, "role", v)).map(Option::unwrap_or_default);
        let (listen, peers, group, key, role) = (listen?, peers?, group?, key?, role?);
        let peers = peers.unwrap_or_default();
        match (peers.is_empty(), group) {
            (true, None) => return self.fail(span, ctx, "set peers (unicast) or group (multicast): the balancers sync with no one"),
            (false, Some(_)) => return self.fail(span, ctx, "set peers (unicast) or group (multicast), not both"),
            _ => {}
        }
        if group.is_some() && !listen.is_ipv4() {
            return self.fail(span, ctx, "group (IPv4 multicast) needs an IPv4 listen address");
        }
        // A flow goes to the peer's worker of the same index and keeps its
        // full-NAT source port, whose range is shared out among the
        // workers: both balancers must run the same number.
        if let Some(Workers::Auto) = workers {
            return self.fail(span, ctx, "sync needs daemon.workers (or daemon.cores) set, the same on both balancers: flows go to the peer's worker of the same index, and limits.snat_ports is shared out among the workers");
        }
        Some(Some(Sync { listen, peers, group, key, role }))
    }
}
