//! `[limits]`: connection-table capacity and full-NAT source ports.

use std::ops::RangeInclusive;

use toml::Spanned;
use toml::de::DeValue;

use super::Checker;
use super::values::{optional, parse_range};
use crate::model::*;
use crate::raw::*;

const DEFAULT_CONNECTIONS_PER_WORKER: u32 = 1 << 20;
const DEFAULT_SNAT_PORTS: PortRange = PortRange { first: 1024, last: 65535 };
/// Far above the handshakes a worker has in flight for one VIP in normal
/// traffic (1000 new connections a second at 1 s round trip), so that only
/// a flood engages an automatic SYN proxy.
const DEFAULT_SYN_PROXY_ABOVE: u32 = 1024;
/// Small tables only thrash; 2^28 entries of 64 bytes are 16 GiB per worker.
const CONNECTIONS: RangeInclusive<u32> = 1024..=1 << 28;

impl Checker<'_> {
    pub(super) fn limits(&mut self, section: Option<Spanned<DeValue<'_>>>, workers: Option<&Workers>) -> Option<Limits> {
        let ctx = "limits";
        let raw: RawLimits = self.section(section, ctx)?;
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
        let half_open_per_vip = optional(&raw.half_open_per_vip, |v| self.int(ctx, "half_open_per_vip", v, 1..=1 << 28));
        let syn_proxy_above =
            optional(&raw.syn_proxy_above, |v| self.int(ctx, "syn_proxy_above", v, 1..=1 << 28)).map(|n| n.unwrap_or(DEFAULT_SYN_PROXY_ABOVE));
        let connections_per_worker = connections_per_worker?;
        // A quarter of the table by default: a flood of one VIP leaves the
        // rest to established flows.
        let half_open_per_vip = half_open_per_vip?.unwrap_or(connections_per_worker / 4);
        Some(Limits { connections_per_worker, snat_ports: snat_ports?, half_open_per_vip, syn_proxy_above: syn_proxy_above? })
    }
}
