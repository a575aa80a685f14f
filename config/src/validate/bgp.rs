//! `[bgp]`: the speaker that announces the VIPs to the routers.

use std::net::IpAddr;
use std::time::Duration;

use toml::Spanned;
use toml::de::DeValue;

use super::Checker;
use super::values::optional;
use crate::model::*;
use crate::raw::*;

/// Three polls of the daemon at the helper's 100 ms pace: one late answer
/// is not a hang.
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);
/// Below a poll there is nothing to wait for; above the shortest BGP hold
/// time (3 s) the router would notice a dead node first anyway.
const TIMEOUTS: std::ops::RangeInclusive<Duration> = Duration::from_millis(200)..=Duration::from_secs(3);

impl Checker<'_> {
    /// `vips`: the VIPs if they are valid, to check `snat_own` against.
    pub(super) fn bgp(&mut self, section: Option<Spanned<DeValue<'_>>>, vips: Option<&[Vip]>) -> Option<Option<Bgp>> {
        let ctx = "bgp";
        let Some(section) = section else { return Some(None) };
        let span = section.span();
        let raw: RawBgp = self.de(section, ctx)?;
        let speaker = self.required(ctx, "speaker", &raw.speaker, span).and_then(|v| self.keyword(ctx, "speaker", v));
        let next_hop = optional(&raw.next_hop, |v| match v.get_ref() {
            Scalar::Text(s) if s == "self" => Some(None),
            Scalar::Text(s) if s.parse::<IpAddr>().is_err() => {
                self.fail(v.span(), ctx, format!("next_hop must be \"self\" or this balancer's address, got {s:?}"))
            }
            _ => self.unicast(ctx, "next_hop", v).map(Some),
        })
        .map(Option::flatten);
        let timeout = self.duration(ctx, "timeout", &raw.timeout, DEFAULT_TIMEOUT, TIMEOUTS);
        let snat_own = optional(&raw.snat_own, |v| self.snat_own(ctx, v, vips?)).map(Option::unwrap_or_default);
        Some(Some(Bgp { speaker: speaker?, next_hop: next_hop?, timeout: timeout?, snat_own: snat_own? }))
    }

    /// `snat_own`: addresses among the full-NAT VIPs' `snat`, leaving each
    /// such VIP one of its own (else this node could open none of its
    /// flows).
    fn snat_own(&mut self, ctx: &str, v: &Spanned<Scalar>, vips: &[Vip]) -> Option<Vec<IpAddr>> {
        let items: Vec<&Spanned<Scalar>> = match v.get_ref() {
            Scalar::List(items) if !items.is_empty() => items.iter().collect(),
            Scalar::Text(_) => vec![v],
            other => return self.fail(v.span(), ctx, format!("snat_own must be an address or a non-empty list of addresses, got {other}")),
        };
        let mut own = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            let Some(a) = self.unicast(ctx, "snat_own", item) else {
                ok = false;
                continue;
            };
            if own.contains(&a) {
                ok = false;
                self.r.error(item.span(), ctx, format!("snat_own lists {a} twice"));
            } else if !vips.iter().any(|vip| snat_of(vip).contains(&a)) {
                ok = false;
                self.r.error(item.span(), ctx, format!("snat_own {a} is no full-nat VIP's snat address: list the addresses of every node in each VIP's snat"));
            }
            own.push(a);
        }
        if let Some(vip) = ok.then(|| vips.iter().find(|vip| !snat_of(vip).is_empty() && !snat_of(vip).iter().any(|a| own.contains(a)))).flatten() {
            return self.fail(v.span(), ctx, format!("snat_own has none of vip {}'s snat addresses: this node could open none of its flows", vip.name()));
        }
        ok.then_some(own)
    }
}

fn snat_of(vip: &Vip) -> &[IpAddr] {
    if let Mode::FullNat { snat } = &vip.mode { snat } else { &[] }
}
