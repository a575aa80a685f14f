//! Keeps the kernel's own RST out of half-open checks.
//!
//! The half-open check's SYN comes from a raw socket, so when the SYN-ACK
//! arrives the kernel finds no connection for it and answers with a RST of
//! its own, beside the one the checker sends. An nftables rule in the
//! daemon's network namespace drops TCP RSTs leaving from the checker's
//! source ports unless they carry the checker's socket mark (SO_MARK on
//! its raw sockets):
//!
//! ```text
//! table inet fulcrum_health {
//!     chain output {
//!         type filter hook output priority filter; policy accept;
//!         meta mark != 0x666c6863 tcp sport 61000-64999 tcp flags & rst == rst counter drop
//!     }
//! }
//! ```
//!
//! Why nftables: dropping the SYN-ACK on input would hide it from the raw
//! socket too (raw sockets get their copy after the input hook), and no
//! socket option stops the kernel's reset. The ports are above Linux's
//! default ephemeral range (32768-60999), so no ordinary connection of the
//! host uses them; widen `ip_local_port_range` over them and its RSTs from
//! those ports would be dropped too (add the range to
//! `net.ipv4.ip_local_reserved_ports` to be safe).
//!
//! Its counter shows how many RSTs it kept back (`nft list table inet
//! fulcrum_health`). The table is created when half-open checks are
//! configured and deleted when the last checker using it goes (a reload
//! may run a new checker before the old one stops); a table left by a
//! killed daemon is replaced at the next start (it only ever drops those
//! RSTs).

use std::io::Write;
use std::ops::RangeInclusive;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, Weak};

use super::{HealthError, NftFailure};

/// The checker's source ports.
pub const PORTS: RangeInclusive<u16> = 61000..=64999;
/// The mark of the checker's own packets ("flhc").
pub const MARK: u32 = 0x666c_6863;
const TABLE: &str = "inet fulcrum_health";

/// The installed rule; removed when the last holder drops it.
pub struct RstGuard(());

/// The rule while any checker holds it.
static INSTALLED: Mutex<Weak<RstGuard>> = Mutex::new(Weak::new());

fn nft(script: &str) -> Result<(), NftFailure> {
    let run = || -> std::io::Result<std::process::Output> {
        let mut child = Command::new("nft").args(["-f", "-"]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
        child.stdin.take().map(|mut i| i.write_all(script.as_bytes())).transpose()?;
        child.wait_with_output()
    };
    match run() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(NftFailure::Refused(String::from_utf8_lossy(&out.stderr).trim().into())),
        Err(e) => Err(NftFailure::Run(e)),
    }
}

impl RstGuard {
    /// The rule, installed unless a checker holds it already.
    pub fn acquire() -> Result<Arc<RstGuard>, HealthError> {
        let mut installed = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(guard) = installed.upgrade() {
            return Ok(guard);
        }
        let guard = Arc::new(Self::install()?);
        *installed = Arc::downgrade(&guard);
        Ok(guard)
    }

    fn install() -> Result<RstGuard, HealthError> {
        // Declaring the table first makes the delete succeed whether or
        // not an old one exists; all in one transaction.
        let script = format!(
            "table {TABLE}\ndelete table {TABLE}\ntable {TABLE} {{\n\tchain output {{\n\t\ttype filter hook output priority filter; policy accept;\n\t\tmeta mark != {MARK:#x} tcp sport {}-{} tcp flags & rst == rst counter drop\n\t}}\n}}\n",
            PORTS.start(),
            PORTS.end()
        );
        nft(&script).map_err(|detail| HealthError::Nft { what: "half-open checks: installing the nftables rule that drops the kernel's RSTs", detail })?;
        Ok(RstGuard(()))
    }
}

impl Drop for RstGuard {
    fn drop(&mut self) {
        // Under the lock, and only if no new guard installed it again.
        let installed = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
        if installed.upgrade().is_some() {
            return;
        }
        if let Err(e) = nft(&format!("delete table {TABLE}\n")) {
            tracing::warn!("half-open checks: removing the nftables table {TABLE}: {e}");
        }
    }
}
