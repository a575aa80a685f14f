//! What the daemon learns from the kernel: interface MACs, MTUs and
//! addresses, and the L2 next hop towards each backend.

use std::net::{IpAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};
use std::{fmt, io, thread};

use fulcrum_dataplane::types::Mac;

/// How long a backend's next hop may take to answer ARP / ND.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);
/// The discard port: the packet that makes the kernel resolve a neighbour
/// goes there, so no service on the backend sees it.
const DISCARD_PORT: u16 = 9;

/// What the kernel could not tell, or told that rules a backend out.
#[derive(Debug)]
pub enum NetError {
    NoSuchInterface {
        iface: String,
        source: io::Error,
    },
    /// A sysfs attribute that does not parse.
    Unreadable {
        iface: String,
        what: &'static str,
        value: String,
    },
    /// `ip` could not be run at all.
    Command {
        cmd: String,
        source: io::Error,
    },
    /// `ip` ran and failed.
    CommandFailed {
        cmd: String,
        stderr: String,
    },
    NotThrough {
        addr: IpAddr,
        iface: String,
        route: String,
    },
    /// L2 DSR needs the backend on the link, not behind a router.
    Routed {
        addr: IpAddr,
        gateway: String,
        iface: String,
    },
    BadGateway {
        addr: IpAddr,
        gateway: String,
    },
    NoNeighbour {
        hop: IpAddr,
        iface: String,
        addr: IpAddr,
    },
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetError::NoSuchInterface { iface, .. } => write!(f, "no such network interface: {iface}"),
            NetError::Unreadable { iface, what, value } => write!(f, "interface {iface}: unreadable {what} {value:?}"),
            NetError::Command { cmd, source } => write!(f, "running `{cmd}`: {source} (install iproute2)"),
            NetError::CommandFailed { cmd, stderr } => write!(f, "`{cmd}`: {stderr}"),
            NetError::NotThrough { addr, iface, route } => write!(f, "{addr} is not reached through {iface} (route: {route})"),
            NetError::Routed { addr, gateway, iface } => {
                write!(f, "{addr} is routed via {gateway}, not on the link of {iface}: L2 DSR needs it on-link")
            }
            NetError::BadGateway { addr, gateway } => write!(f, "unreadable gateway {gateway} for {addr}"),
            NetError::NoNeighbour { hop, iface, addr } => write!(f, "no ARP / neighbour answer from {hop} on {iface} (next hop towards {addr})"),
        }
    }
}

impl std::error::Error for NetError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NetError::NoSuchInterface { source, .. } | NetError::Command { source, .. } => Some(source),
            _ => None,
        }
    }
}

pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

pub fn format_mac(m: &Mac) -> String {
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
}

fn sysfs(iface: &str, what: &str) -> Result<String, NetError> {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/{what}")).map_err(|source| NetError::NoSuchInterface { iface: iface.into(), source })
}

fn unreadable(iface: &str, what: &'static str, value: &str) -> NetError {
    NetError::Unreadable { iface: iface.into(), what, value: value.trim().into() }
}

/// The interface's index (the kernel's, as neighbour events name it), in
/// the calling thread's network namespace.
pub fn iface_index(iface: &str) -> Result<u32, NetError> {
    crate::sys::ifindex(iface).map_err(|e| NetError::NoSuchInterface { iface: iface.into(), source: io::Error::new(io::ErrorKind::NotFound, e.to_string()) })
}

pub fn iface_mac(iface: &str) -> Result<Mac, NetError> {
    let s = sysfs(iface, "address")?;
    parse_mac(&s).ok_or_else(|| unreadable(iface, "MAC address", &s))
}

/// The MTU, capped at 65535: a larger one (loopback's 65536) never limits
/// a frame the engine sends.
pub fn iface_mtu(iface: &str) -> Result<u16, NetError> {
    let s = sysfs(iface, "mtu")?;
    let mtu: u32 = s.trim().parse().map_err(|_| unreadable(iface, "MTU", &s))?;
    Ok(u16::try_from(mtu).unwrap_or(u16::MAX))
}

fn ip(args: &[&str]) -> Result<String, NetError> {
    let cmd = || format!("ip {}", args.join(" "));
    let out = Command::new("ip").args(args).output().map_err(|source| NetError::Command { cmd: cmd(), source })?;
    if !out.status.success() {
        return Err(NetError::CommandFailed { cmd: cmd(), stderr: String::from_utf8_lossy(&out.stderr).trim().into() });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The interface's own addresses (not link-local), which must keep
/// reaching the kernel.
pub fn iface_addrs(iface: &str) -> Result<Vec<IpAddr>, NetError> {
    let out = ip(&["-o", "addr", "show", "dev", iface])?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.find(|&t| t == "inet" || t == "inet6")?;
            w.next()?.split('/').next()?.parse::<IpAddr>().ok()
        })
        .filter(|a| !matches!(a, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80))
        .collect())
}

/// The MAC of the next hop towards `addr` out of `iface`: `addr` itself
/// when on-link, else its gateway. Resolves it through the kernel (a
/// datagram to the discard port makes it ARP / solicit) if not yet known.
/// `on_link` refuses a routed next hop (L2 DSR needs the backend itself).
pub fn next_hop_mac(addr: IpAddr, iface: &str, on_link: bool) -> Result<Mac, NetError> {
    let route = ip(&["route", "get", &addr.to_string()])?;
    let words: Vec<&str> = route.split_whitespace().collect();
    let after = |key: &str| words.iter().position(|&w| w == key).and_then(|i| words.get(i + 1)).copied();
    if after("dev") != Some(iface) {
        return Err(NetError::NotThrough { addr, iface: iface.into(), route: route.trim().into() });
    }
    let hop = match after("via") {
        Some(gw) if on_link => return Err(NetError::Routed { addr, gateway: gw.into(), iface: iface.into() }),
        Some(gw) => gw.parse::<IpAddr>().map_err(|_| NetError::BadGateway { addr, gateway: gw.into() })?,
        None => addr,
    };
    let deadline = Instant::now() + RESOLVE_TIMEOUT;
    loop {
        if let Some(mac) = neighbour(hop, iface)? {
            return Ok(mac);
        }
        if Instant::now() > deadline {
            return Err(NetError::NoNeighbour { hop, iface: iface.into(), addr });
        }
        poke(hop);
        thread::sleep(Duration::from_millis(50));
    }
}

fn neighbour(addr: IpAddr, iface: &str) -> Result<Option<Mac>, NetError> {
    let out = ip(&["neigh", "show", &addr.to_string(), "dev", iface])?;
    let words: Vec<&str> = out.split_whitespace().collect();
    let failed = words.iter().any(|&w| w == "FAILED" || w == "INCOMPLETE");
    Ok(words.iter().position(|&w| w == "lladdr").and_then(|i| words.get(i + 1)).and_then(|m| parse_mac(m)).filter(|_| !failed))
}

fn poke(addr: IpAddr) {
    let bind = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    if let Ok(s) = UdpSocket::bind(bind) {
        let _ = s.send_to(&[], (addr, DISCARD_PORT));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_and_print() {
        assert_eq!(parse_mac("02:f1:00:00:0b:0a\n"), Some([2, 0xf1, 0, 0, 0xb, 0xa]));
        assert_eq!(format_mac(&[2, 0xf1, 0, 0, 0xb, 0xa]), "02:f1:00:00:0b:0a");
        for bad in ["02:f1:00", "02:f1:00:00:0b:0a:01", "2:f1:0:0:b:a", "zz:f1:00:00:0b:0a", ""] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn loopback_is_known_to_the_kernel() {
        assert_eq!(iface_mac("lo").unwrap(), [0; 6]);
        assert_eq!(iface_mtu("lo").unwrap(), u16::MAX);
        let missing = iface_mac("no-such-if0").unwrap_err();
        assert!(matches!(&missing, NetError::NoSuchInterface { iface, .. } if iface == "no-such-if0"), "{missing:?}");
        assert_eq!(missing.to_string(), "no such network interface: no-such-if0");
    }
}
