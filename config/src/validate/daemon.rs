//! `[daemon]`: the control socket, metrics, XDP mode and workers.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::num::NonZeroU16;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::DeValue;

use super::Checker;
use super::values::{first_seen, optional};
use crate::model::*;
use crate::raw::*;

/// Where the daemon listens, and the CLI looks, unless told otherwise.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/fulcrum/control.sock";
/// Where the daemon keeps the runtime changes to its backends.
pub const DEFAULT_STATE_FILE: &str = "/var/lib/fulcrum/state.json";
/// Localhost only: metrics are for a local scraper unless said otherwise.
/// Port 7780, fulcrum's own: bare-metal nodes run node_exporter on 9100,
/// and Prometheus's list of exporter ports (9100-9999) is full, so any
/// number in it is some exporter's; 7780 is outside it, outside Linux's
/// ephemeral range, and not a registered service port.
const DEFAULT_METRICS_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7780));
/// `sun_path` holds 108 bytes with the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
const MAX_WORKERS: u16 = 1024;
const MAX_CPU: u16 = 8191;
/// Long enough for any connection an operator would wait for; beyond it a
/// stop would look hung to systemd and to people.
const MAX_SHUTDOWN_GRACE: std::ops::RangeInclusive<Duration> = Duration::from_secs(1)..=Duration::from_secs(3600);

impl Checker<'_> {
    pub(super) fn daemon(&mut self, section: Option<Spanned<DeValue<'_>>>) -> Option<Daemon> {
        let ctx = "daemon";
        let raw: RawDaemon = self.section(section, ctx)?;
        let control_socket = optional(&raw.control_socket, |v| {
            let s = self.text(ctx, "control_socket", v)?;
            match Path::new(s).is_absolute() && s.len() <= MAX_SOCKET_PATH {
                true => Some(PathBuf::from(s)),
                false => self.fail(v.span(), ctx, format!("control_socket must be an absolute path of at most {MAX_SOCKET_PATH} bytes, got {s:?}")),
            }
        })
        .map(|p| p.unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET)));
        let metrics_listen = optional(&raw.metrics_listen, |v| {
            let s = self.text(ctx, "metrics_listen", v)?;
            match s.parse::<SocketAddr>() {
                Ok(a) if a.port() != 0 => Some(a),
                _ => self.fail(
                    v.span(),
                    ctx,
                    format!("metrics_listen must be an address and a port (not 0) like \"127.0.0.1:7780\" or \"[::1]:7780\", got {s:?}"),
                ),
            }
        })
        .map(|a| a.unwrap_or(DEFAULT_METRICS_LISTEN));
        let state_file = optional(&raw.state_file, |v| {
            let s = self.text(ctx, "state_file", v)?;
            match Path::new(s).is_absolute() && !s.ends_with('/') {
                true => Some(PathBuf::from(s)),
                false => self.fail(v.span(), ctx, format!("state_file must be the absolute path of a file, got {s:?}")),
            }
        })
        .map(|p| p.unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_FILE)));
        let xdp_mode = optional(&raw.xdp_mode, |v| self.keyword(ctx, "xdp_mode", v)).map(Option::unwrap_or_default);
        let poll = optional(&raw.poll, |v| self.keyword(ctx, "poll", v)).map(Option::unwrap_or_default);
        let workers = self.workers(&raw, ctx);
        let shutdown_grace = optional(&raw.shutdown_grace, |_| self.duration(ctx, "shutdown_grace", &raw.shutdown_grace, Duration::ZERO, MAX_SHUTDOWN_GRACE));
        Some(Daemon {
            control_socket: control_socket?,
            metrics_listen: metrics_listen?,
            state_file: state_file?,
            xdp_mode: xdp_mode?,
            poll: poll?,
            workers: workers?,
            shutdown_grace: shutdown_grace?,
        })
    }

    fn workers(&mut self, raw: &RawDaemon, ctx: &str) -> Option<Workers> {
        let count = optional(&raw.workers, |v| self.int(ctx, "workers", v, 1..=MAX_WORKERS));
        let cores = optional(&raw.cores, |v| {
            let list = match v.get_ref() {
                Scalar::List(list) if !list.is_empty() => list,
                other => return self.fail(v.span(), ctx, format!("cores must be a non-empty array of CPU numbers like [2, 3], got {other}")),
            };
            let mut seen = HashMap::new();
            let mut cores = Vec::new();
            for (i, v) in list.iter().enumerate() {
                let cpu = self.int(ctx, &format!("cores[{i}]"), v, 0..=MAX_CPU);
                if let Some(cpu) = cpu
                    && let Some(first) = first_seen(&mut seen, cpu, i)
                {
                    self.r.error(v.span(), ctx, format!("cores[{i}]: CPU {cpu} is listed twice (also cores[{first}])"));
                    cores.push(None);
                } else {
                    cores.push(cpu);
                }
            }
            cores.into_iter().collect::<Option<Vec<u16>>>()
        });
        match (count?, cores?) {
            (None, None) => Some(Workers::Auto),
            (Some(n), None) => NonZeroU16::new(n).map(Workers::Count),
            (None, Some(cores)) => Some(Workers::Pinned(cores)),
            (Some(n), Some(cores)) if usize::from(n) == cores.len() => Some(Workers::Pinned(cores)),
            (Some(n), Some(cores)) => {
                let span = raw.workers.as_ref().map_or(0..0, Spanned::span);
                self.fail(span, ctx, format!("workers ({n}) must equal the number of cores ({}), or be omitted", cores.len()))
            }
        }
    }
}
