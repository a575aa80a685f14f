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
    pub(super) fn bgp(&mut self, section: Option<Spanned<DeValue<'_>>>) -> Option<Option<Bgp>> {
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
        Some(Some(Bgp { speaker: speaker?, next_hop: next_hop?, timeout: timeout? }))
    }
}
