//! Health checks, off the data path.
//!
//! One thread (`fulcrum-health`, [`monitor`]) runs every check of every
//! backend: nonblocking sockets, one epoll set, a timer heap; no check
//! blocks another. Per backend it keeps the configured interval, timeout
//! and rise/fall streaks, asks the VIP's health policy
//! (`fulcrum_dataplane::health_policy::Policy`: the native rise/fall rule
//! or a plugin) what a result means, and reports transitions to the
//! control plane, which publishes new services to the workers. Nothing
//! here runs per packet. The sockets and the epoll set are fulcrum-io's.
//!
//! The checks, one module each:
//! - [`icmp`]: ICMP / ICMPv6 echo over one raw socket per family.
//! - [`stream`]: TCP connect (three-way handshake, then FIN) and, over the
//!   same connection driver, the HTTP checks of [`http`] (a status in a
//!   range; optionally a string in the body).
//!   Over TLS ([`tls`], rustls) for the https kinds.
//! - [`datagram`]: UDP request and reply, and DNS queries.
//! - [`half_open`]: SYN from a raw socket, SYN-ACK expected, RST sent back
//!   by the checker; [`rst_guard`] keeps the kernel's own RST (it knows no
//!   such connection) off the wire with an nftables rule.
//! - [`data_path`]: with `through_vip`, the echo requests, SYNs and RSTs
//!   of the checks above go to the VIP as frames of the data path.

pub mod data_path;
pub mod datagram;
pub mod half_open;
pub mod http;
pub mod icmp;
pub mod monitor;
pub mod rst_guard;
pub mod stream;
pub mod tls;

use std::{fmt, io};

pub use data_path::{DataPath, NextHop, Tunnel};
pub use fulcrum_io::sock::route_source;
pub use monitor::{CheckStats, DURATION_BOUNDS_US, HealthMonitor, HealthStats, Member, Pool, Transition};

/// Why the health checks cannot start.
#[derive(Debug)]
pub enum HealthError {
    /// A socket, epoll set or thread the checks need: what it was for.
    System {
        what: &'static str,
        source: io::Error,
    },
    /// The nftables rule of half-open checks (`rst_guard`).
    Nft {
        what: &'static str,
        detail: NftFailure,
    },
    TooManyBackends {
        count: usize,
        max: usize,
    },
    /// The certificates https checks verify against could not be loaded.
    Roots {
        what: String,
        why: String,
    },
    /// An https check's server name is not one rustls accepts.
    ServerName(String),
    /// A dns check's query could not be encoded.
    DnsQuery {
        name: String,
        source: simple_dns::SimpleDnsError,
    },
    /// rustls refused the client configuration.
    Tls(rustls::Error),
}

/// How running `nft` failed.
#[derive(Debug)]
pub enum NftFailure {
    /// It could not be run (not installed?).
    Run(io::Error),
    /// It ran and refused the script.
    Refused(String),
}

impl fmt::Display for NftFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NftFailure::Run(e) => write!(f, "cannot run nft (package nftables): {e}"),
            NftFailure::Refused(stderr) => write!(f, "nft failed: {stderr}"),
        }
    }
}

impl fmt::Display for HealthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HealthError::System { what, source } => write!(f, "{what}: {source}"),
            HealthError::Nft { what, detail } => write!(f, "{what}: {detail}"),
            HealthError::TooManyBackends { count, max } => write!(f, "{count} health-checked backends: at most {max}"),
            HealthError::Roots { what, why } => write!(f, "https checks: cannot load {what}: {why}"),
            HealthError::ServerName(n) => write!(f, "https checks: {n:?} is not a valid server name"),
            HealthError::DnsQuery { name, source } => write!(f, "dns checks: cannot encode a query for {name:?}: {source}"),
            HealthError::Tls(e) => write!(f, "https checks: {e}"),
        }
    }
}

impl std::error::Error for HealthError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HealthError::System { source, .. } | HealthError::Nft { detail: NftFailure::Run(source), .. } => Some(source),
            HealthError::DnsQuery { source, .. } => Some(source),
            HealthError::Tls(e) => Some(e),
            _ => None,
        }
    }
}

impl HealthError {
    /// A `map_err` adapter for system calls made for `what`.
    pub(crate) fn system(what: &'static str) -> impl FnOnce(io::Error) -> HealthError {
        move |source| HealthError::System { what, source }
    }
}

/// Why a check failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No answer within the timeout.
    Timeout,
    /// A system call failed or the peer refused or reset: the errno.
    Os(i32),
    /// The HTTP status was outside the expected range.
    Status(u16),
    /// The HTTP body lacked the expected string.
    ContentMissing,
    /// The answer was not an HTTP response, or ended before its status.
    BadResponse,
    /// The server's certificate did not verify (unknown issuer, wrong
    /// name, expired).
    Certificate,
    /// The TLS handshake or session failed otherwise.
    Tls,
    /// A udp check's reply did not begin with the expected bytes.
    UnexpectedReply,
    /// A DNS answer's RCODE was not NOERROR: the RCODE.
    DnsRcode(u8),
    /// The DNS answer lacked the expected address.
    DnsAddressMissing,
    /// The reply was not a DNS message.
    BadDnsReply,
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        Failure::Os(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Timeout => f.write_str("timed out"),
            Failure::Os(e) => write!(f, "{}", io::Error::from_raw_os_error(*e)),
            Failure::Status(s) => write!(f, "HTTP status {s}"),
            Failure::ContentMissing => f.write_str("expected content missing"),
            Failure::BadResponse => f.write_str("not an HTTP response"),
            Failure::Certificate => f.write_str("TLS certificate not trusted"),
            Failure::Tls => f.write_str("TLS handshake failed"),
            Failure::UnexpectedReply => f.write_str("unexpected reply"),
            Failure::DnsRcode(r) => {
                const NAMES: [&str; 6] = ["NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED"];
                match NAMES.get(usize::from(*r)) {
                    Some(name) => write!(f, "DNS answer {name}"),
                    None => write!(f, "DNS answer RCODE {r}"),
                }
            }
            Failure::DnsAddressMissing => f.write_str("expected address not in the DNS answer"),
            Failure::BadDnsReply => f.write_str("not a DNS answer"),
        }
    }
}
