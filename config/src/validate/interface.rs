//! `[[interface]]`: one or two, whose roles make the topology.

use std::collections::HashMap;
use std::ops::RangeInclusive;

use toml::Spanned;
use toml::de::DeValue;

use super::Checker;
use super::values::{first_seen, optional};
use crate::model::*;
use crate::raw::*;

/// IPv6's minimum MTU up to the usual jumbo frame.
const MTU: RangeInclusive<u16> = 1280..=9216;

impl Checker<'_> {
    pub(super) fn topology(&mut self, section: Option<Spanned<DeValue<'_>>>) -> Option<Topology> {
        const HOW: &str = "declare one [[interface]] with role = \"one-arm\", or one with role = \"client\" and one with role = \"server\"";
        // By role (in the order of `Role`'s variants): the interface and
        // where its role was set.
        let mut slots: [Option<(Interface, usize)>; 3] = Default::default();
        let mut names: HashMap<String, usize> = HashMap::new();
        let entries = section.map_or(Some(Vec::new()), |s| self.entries(s, "", "interface"));
        // Not an array (reported): then "no interface" would be noise.
        let mut ok = entries.is_some();
        for (i, entry) in entries.unwrap_or_default().into_iter().enumerate() {
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
            let name = name.and_then(|(name, name_span)| match first_seen(&mut names, name.clone(), self.r.line(name_span.start)) {
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
}

fn valid_ifname(name: &str) -> bool {
    (1..=15).contains(&name.len()) && name != "." && name != ".." && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}
