//! What the daemon learns from the kernel: interface MACs, MTUs and
//! addresses, and the L2 next hop towards each backend.

use std::net::{IpAddr, UdpSocket};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use fulcrum_dataplane::types::Mac;

/// How long a backend's next hop may take to answer ARP / ND.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);
/// The discard port: the packet that makes the kernel resolve a neighbour
/// goes there, so no service on the backend sees it.
const DISCARD_PORT: u16 = 9;

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

fn sysfs(iface: &str, what: &str) -> Result<String, String> {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/{what}")).map_err(|_| format!("no such network interface: {iface}"))
}

pub fn iface_mac(iface: &str) -> Result<Mac, String> {
    let s = sysfs(iface, "address")?;
    parse_mac(&s).ok_or_else(|| format!("interface {iface}: unreadable MAC address {:?}", s.trim()))
}

/// The MTU, capped at 65535: a larger one (loopback's 65536) never limits
/// a frame the engine sends.
pub fn iface_mtu(iface: &str) -> Result<u16, String> {
    let s = sysfs(iface, "mtu")?;
    let mtu: u32 = s.trim().parse().map_err(|_| format!("interface {iface}: unreadable MTU {:?}", s.trim()))?;
    Ok(u16::try_from(mtu).unwrap_or(u16::MAX))
}

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("running `ip {}`: {e} (install iproute2)", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!("`ip {}`: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The interface's own addresses (not link-local), which must keep
/// reaching the kernel.
pub fn iface_addrs(iface: &str) -> Result<Vec<IpAddr>, String> {
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
pub fn next_hop_mac(addr: IpAddr, iface: &str, on_link: bool) -> Result<Mac, String> {
    let route = ip(&["route", "get", &addr.to_string()])?;
    let words: Vec<&str> = route.split_whitespace().collect();
    let after = |key: &str| words.iter().position(|&w| w == key).and_then(|i| words.get(i + 1)).copied();
    if after("dev") != Some(iface) {
        return Err(format!("{addr} is not reached through {iface} (route: {})", route.trim()));
    }
    let hop = match after("via") {
        Some(gw) if on_link => return Err(format!("{addr} is routed via {gw}, not on the link of {iface}: L2 DSR needs it on-link")),
        Some(gw) => gw.parse::<IpAddr>().map_err(|_| format!("unreadable gateway {gw} for {addr}"))?,
        None => addr,
    };
    let deadline = Instant::now() + RESOLVE_TIMEOUT;
    loop {
        if let Some(mac) = neighbour(hop, iface)? {
            return Ok(mac);
        }
        if Instant::now() > deadline {
            return Err(format!("no ARP / neighbour answer from {hop} on {iface} (next hop towards {addr})"));
        }
        poke(hop);
        thread::sleep(Duration::from_millis(50));
    }
}

fn neighbour(addr: IpAddr, iface: &str) -> Result<Option<Mac>, String> {
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
        assert_eq!(iface_mac("lo"), Ok([0; 6]));
        assert_eq!(iface_mtu("lo"), Ok(u16::MAX));
        assert_eq!(iface_mac("no-such-if0"), Err("no such network interface: no-such-if0".into()));
    }
}
