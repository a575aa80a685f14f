//! `[timeouts]`: idle timeouts of connection-table entries.

use std::ops::RangeInclusive;
use std::time::Duration;

use toml::Spanned;
use toml::de::DeValue;

use super::Checker;
use crate::model::*;
use crate::raw::*;

/// Connection-table and persistence timeouts: at least a second, and
/// within the engine's u32 milliseconds.
pub(super) const IDLE_TIMEOUT: RangeInclusive<Duration> = Duration::from_secs(1)..=Duration::from_secs(7 * 86400);

impl Checker<'_> {
    pub(super) fn timeouts(&mut self, section: Option<Spanned<DeValue<'_>>>) -> Option<Timeouts> {
        let ctx = "timeouts";
        let raw: RawTimeouts = self.section(section, ctx)?;
        // The engine's defaults: short for half-open flows (SYN floods must
        // not fill the table), long for established ones.
        let mut field = |name, v: &Field, default| self.duration(ctx, name, v, Duration::from_secs(default), IDLE_TIMEOUT);
        let tcp_syn = field("tcp_syn", &raw.tcp_syn, 30);
        let tcp_established = field("tcp_established", &raw.tcp_established, 900);
        let tcp_closing = field("tcp_closing", &raw.tcp_closing, 60);
        let udp = field("udp", &raw.udp, 300);
        // Linux keeps TIME_WAIT 60 s (TCP_TIMEWAIT_LEN).
        let snat_reuse = field("snat_reuse", &raw.snat_reuse, 60);
        Some(Timeouts { tcp_syn: tcp_syn?, tcp_established: tcp_established?, tcp_closing: tcp_closing?, udp: udp?, snat_reuse: snat_reuse? })
    }
}
