//! Announcing the VIPs to routers through a BGP speaker (`[bgp]`).
//!
//! The daemon decides what to announce ([`announced`]): every VIP address
//! while it runs, is not draining, and one of the address's VIPs has a
//! backend up with a weight. A helper the speaker runs ([`run_exabgp`])
//! asks the daemon for that set over the control socket several times a
//! second and hands the differences to the speaker through its own
//! interface ([`Speaker`]). A daemon that is gone or silent past
//! `bgp.timeout` is taken for dead or hung and everything is withdrawn,
//! so the routers stop sending traffic to a node whose balancer cannot
//! forward it, long before a BGP hold time would expire.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fulcrum_config as cfg;
use fulcrum_dataplane::services::Services;

use crate::control::api::{Request, Response};
use crate::control::client;
use crate::error::Error;

/// How often the helper asks the daemon: a withdrawal reaches the speaker
/// within this of the daemon deciding it (or dying).
pub const POLL: Duration = Duration::from_millis(100);

/// The VIP addresses to announce: those with at least one VIP whose pool
/// has a backend that is up and takes new flows (weight above 0).
pub fn announced(services: &Services) -> BTreeSet<IpAddr> {
    services
        .vips()
        .filter(|(_, v)| v.spec.backends.iter().filter_map(|&b| services.backend(b)).any(|b| b.spec.up && b.spec.weight > 0))
        .map(|(_, v)| v.spec.addr)
        .collect()
}

/// A BGP speaker, through its own interface: fulcrum never speaks BGP.
pub trait Speaker {
    fn announce(&mut self, addr: IpAddr) -> io::Result<()>;
    fn withdraw(&mut self, addr: IpAddr) -> io::Result<()>;
}

/// ExaBGP's API: text commands on the standard output of a process ExaBGP
/// runs (`process ... { run ...; encoder text; }`), one per line.
pub struct ExaBgp<W: Write> {
    out: W,
    next_hop: Option<IpAddr>,
}

impl<W: Write> ExaBgp<W> {
    pub fn new(out: W, next_hop: Option<IpAddr>) -> Self {
        ExaBgp { out, next_hop }
    }

    fn send(&mut self, verb: &str, addr: IpAddr) -> io::Result<()> {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        let next_hop = self.next_hop.map_or_else(|| "self".to_string(), |a| a.to_string());
        writeln!(self.out, "{verb} route {addr}/{len} next-hop {next_hop}")?;
        // ExaBGP acts on a line when it arrives: never leave one buffered.
        self.out.flush()
    }
}

impl<W: Write> Speaker for ExaBgp<W> {
    fn announce(&mut self, addr: IpAddr) -> io::Result<()> {
        self.send("announce", addr)
    }

    fn withdraw(&mut self, addr: IpAddr) -> io::Result<()> {
        self.send("withdraw", addr)
    }
}

/// What a speaker announces, kept so that only changes are sent.
pub struct Announcer<S> {
    speaker: S,
    announced: BTreeSet<IpAddr>,
}

impl<S: Speaker> Announcer<S> {
    pub fn new(speaker: S) -> Self {
        Announcer { speaker, announced: BTreeSet::new() }
    }

    /// Withdraws what is no longer wanted, then announces what is new.
    /// An address is counted as sent only once the speaker took it, so a
    /// failure is tried again on the next call.
    pub fn set(&mut self, wanted: &BTreeSet<IpAddr>) -> io::Result<()> {
        for &a in self.announced.clone().difference(wanted) {
            self.speaker.withdraw(a)?;
            self.announced.remove(&a);
            tracing::info!("bgp: withdrew {a}");
        }
        for &a in wanted.difference(&self.announced.clone()) {
            self.speaker.announce(a)?;
            self.announced.insert(a);
            tracing::info!("bgp: announced {a}");
        }
        Ok(())
    }
}

/// What the daemon at `socket` wants announced; nothing if it is not
/// running, refuses, or does not answer within `timeout`.
fn wanted(socket: &Path, timeout: Duration) -> Result<BTreeSet<IpAddr>, Error> {
    match client::request_within(socket, &Request::Routes, timeout)? {
        Response::Routes(r) => Ok(r.announce.into_iter().collect()),
        Response::Error(e) => Err(Error::Refused(e)),
        other => Err(Error::Refused(format!("unexpected answer to routes: {other:?}"))),
    }
}

/// `fulcrum bgp exabgp`: the process ExaBGP runs. Keeps ExaBGP's routes
/// equal to what the daemon of `config` wants, until ExaBGP closes the
/// helper's standard input (it stopped) or its output.
pub fn run_exabgp(config: &cfg::Config) -> Result<(), Error> {
    let Some(bgp) = &config.bgp else {
        return Err(Error::Refused("no [bgp] in the configuration: nothing to announce".into()));
    };
    let socket = &config.daemon.control_socket;
    let closed = Arc::new(AtomicBool::new(false));
    {
        let closed = Arc::clone(&closed);
        std::thread::Builder::new()
            .name("fulcrum-bgp-stdin".into())
            .spawn(move || {
                // ExaBGP writes nothing unless asked to; the pipe closes
                // when it exits.
                let _ = io::copy(&mut io::stdin().lock(), &mut io::sink());
                closed.store(true, Ordering::SeqCst);
            })
            .map_err(Error::system("starting the helper's input thread"))?;
    }
    let mut announcer = Announcer::new(ExaBgp::new(io::stdout().lock(), bgp.next_hop));
    let mut healthy = true;
    while !closed.load(Ordering::SeqCst) {
        let tick = Instant::now();
        let wanted = match wanted(socket, bgp.timeout) {
            Ok(w) => {
                if !healthy {
                    tracing::info!("bgp: fulcrum answers again");
                }
                healthy = true;
                w
            }
            Err(e) => {
                if healthy {
                    tracing::warn!("bgp: withdrawing every VIP: {e}");
                }
                healthy = false;
                BTreeSet::new()
            }
        };
        announcer.set(&wanted).map_err(Error::system("writing to ExaBGP"))?;
        std::thread::sleep(POLL.saturating_sub(tick.elapsed()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    /// A speaker that records what it was told, and fails when asked to.
    #[derive(Default)]
    struct Recorder {
        lines: Vec<String>,
        fail: bool,
    }

    impl Speaker for Recorder {
        fn announce(&mut self, addr: IpAddr) -> io::Result<()> {
            if self.fail {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            self.lines.push(format!("+{addr}"));
            Ok(())
        }

        fn withdraw(&mut self, addr: IpAddr) -> io::Result<()> {
            if self.fail {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            self.lines.push(format!("-{addr}"));
            Ok(())
        }
    }

    fn set(addrs: &[IpAddr]) -> BTreeSet<IpAddr> {
        addrs.iter().copied().collect()
    }

    #[test]
    fn only_changes_reach_the_speaker_and_failures_are_retried() {
        let (a, b) = (IpAddr::V4(Ipv4Addr::new(198, 18, 100, 1)), IpAddr::V4(Ipv4Addr::new(198, 18, 100, 2)));
        let mut an = Announcer::new(Recorder::default());
        an.set(&set(&[a, b])).unwrap();
        an.set(&set(&[a, b])).unwrap();
        an.set(&set(&[b])).unwrap();
        assert_eq!(an.speaker.lines, ["+198.18.100.1", "+198.18.100.2", "-198.18.100.1"]);
        an.speaker.fail = true;
        assert!(an.set(&set(&[])).is_err());
        an.speaker.fail = false;
        an.set(&set(&[])).unwrap();
        assert_eq!(an.speaker.lines.last().map(String::as_str), Some("-198.18.100.2"));
    }

    #[test]
    fn exabgp_gets_one_flushed_text_command_per_route() {
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1));
        let mut out = Vec::new();
        let mut s = ExaBgp::new(&mut out, None);
        s.announce(IpAddr::V4(Ipv4Addr::new(198, 18, 100, 1))).unwrap();
        s.withdraw(v6).unwrap();
        let mut fixed = ExaBgp::new(Vec::new(), Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2))));
        fixed.announce(IpAddr::V4(Ipv4Addr::new(198, 18, 100, 1))).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "announce route 198.18.100.1/32 next-hop self\nwithdraw route 2001:db8:100::1/128 next-hop self\n");
        assert_eq!(String::from_utf8(fixed.out).unwrap(), "announce route 198.18.100.1/32 next-hop 198.18.0.2\n");
    }
}
