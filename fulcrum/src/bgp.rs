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
//!
//! On a full-NAT fleet (`bgp.snat_own`) the backends' replies go to SNAT
//! addresses, one set per node: each node announces its own as the best
//! route and its peers' as a backup ([`Preference::Backup`], a worse
//! MED). The routers then send a node's return traffic to it while it
//! announces, and spread it over the survivors (which hold its flows
//! through sync) once it is gone or draining.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fulcrum_config as cfg;
use fulcrum_dataplane::services::{Mode, Services};

use crate::control::api::{Request, Response};
use crate::control::client;
use crate::error::Error;

/// How often the helper asks the daemon: a withdrawal reaches the speaker
/// within this of the daemon deciding it (or dying).
pub const POLL: Duration = Duration::from_millis(100);

/// The MED of a backup route: worse than a best route's (none, read as
/// 0), and the same on every node so that the routers merge the backups
/// into one multipath route.
pub const BACKUP_MED: u32 = 100;

/// How a route is announced. `Best` sorts first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Preference {
    /// Plainly: the routers use it, and spread over all nodes that do.
    Best,
    /// With `BACKUP_MED`: used only while no node announces it as best.
    Backup,
}

/// The routes to announce: the address of every VIP with a backend that
/// is up and takes new flows (weight above 0); on a full-NAT fleet
/// (`Services::shares_snat`) also such VIPs' SNAT addresses, this node's
/// own as best and its peers' as backup.
pub fn announced(services: &Services) -> BTreeMap<IpAddr, Preference> {
    let mut routes = BTreeMap::new();
    let up = |v: &&fulcrum_dataplane::services::Vip| v.spec.backends.iter().filter_map(|&b| services.backend(b)).any(|b| b.spec.up && b.spec.weight > 0);
    for (_, v) in services.vips().filter(|(_, v)| up(v)) {
        routes.insert(v.spec.addr, Preference::Best);
        let Mode::Nat { snat } = &v.spec.mode else { continue };
        if !services.shares_snat() {
            continue;
        }
        // `v.snat` holds the positions of `snat`, in its order.
        for (&addr, pos) in snat.iter().zip(&v.snat) {
            let pref = if v.snat_new.contains(pos) { Preference::Best } else { Preference::Backup };
            routes.entry(addr).and_modify(|p: &mut Preference| *p = (*p).min(pref)).or_insert(pref);
        }
    }
    routes
}

/// A BGP speaker, through its own interface: fulcrum never speaks BGP.
pub trait Speaker {
    /// Announces `addr`, or changes how it is announced.
    fn announce(&mut self, addr: IpAddr, pref: Preference) -> io::Result<()>;
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

    fn send(&mut self, verb: &str, addr: IpAddr, pref: Preference) -> io::Result<()> {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        let next_hop = self.next_hop.map_or_else(|| "self".to_string(), |a| a.to_string());
        let med = match pref {
            Preference::Best => String::new(),
            Preference::Backup => format!(" med {BACKUP_MED}"),
        };
        writeln!(self.out, "{verb} route {addr}/{len} next-hop {next_hop}{med}")?;
        // ExaBGP acts on a line when it arrives: never leave one buffered.
        self.out.flush()
    }
}

impl<W: Write> Speaker for ExaBgp<W> {
    fn announce(&mut self, addr: IpAddr, pref: Preference) -> io::Result<()> {
        self.send("announce", addr, pref)
    }

    fn withdraw(&mut self, addr: IpAddr) -> io::Result<()> {
        self.send("withdraw", addr, Preference::Best)
    }
}

/// What a speaker announces, kept so that only changes are sent.
pub struct Announcer<S> {
    speaker: S,
    announced: BTreeMap<IpAddr, Preference>,
}

impl<S: Speaker> Announcer<S> {
    pub fn new(speaker: S) -> Self {
        Announcer { speaker, announced: BTreeMap::new() }
    }

    /// Withdraws what is no longer wanted, then announces what is new or
    /// wanted with another preference (the speaker replaces the route).
    /// A route is counted as sent only once the speaker took it, so a
    /// failure is tried again on the next call.
    pub fn set(&mut self, wanted: &BTreeMap<IpAddr, Preference>) -> io::Result<()> {
        let gone: Vec<IpAddr> = self.announced.keys().filter(|a| !wanted.contains_key(a)).copied().collect();
        for a in gone {
            self.speaker.withdraw(a)?;
            self.announced.remove(&a);
            tracing::info!("bgp: withdrew {a}");
        }
        for (&a, &pref) in wanted {
            if self.announced.get(&a) != Some(&pref) {
                self.speaker.announce(a, pref)?;
                self.announced.insert(a, pref);
                tracing::info!("bgp: announced {a} ({pref:?})");
            }
        }
        Ok(())
    }
}

/// What the daemon at `socket` wants announced; nothing if it is not
/// running, refuses, or does not answer within `timeout`.
fn wanted(socket: &Path, timeout: Duration) -> Result<BTreeMap<IpAddr, Preference>, Error> {
    match client::request_within(socket, &Request::Routes, timeout)? {
        Response::Routes(r) => {
            let backup = r.backup.into_iter().map(|a| (a, Preference::Backup));
            Ok(backup.chain(r.announce.into_iter().map(|a| (a, Preference::Best))).collect())
        }
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
                BTreeMap::new()
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

    use fulcrum_dataplane::services::{Backend, Interface, SynProxy, VipSpec};
    use fulcrum_dataplane::wire::IpProtocol;

    use super::*;

    /// A speaker that records what it was told, and fails when asked to.
    #[derive(Default)]
    struct Recorder {
        lines: Vec<String>,
        fail: bool,
    }

    impl Speaker for Recorder {
        fn announce(&mut self, addr: IpAddr, pref: Preference) -> io::Result<()> {
            if self.fail {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            self.lines.push(match pref {
                Preference::Best => format!("+{addr}"),
                Preference::Backup => format!("+{addr} backup"),
            });
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

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(198, 18, 100, last))
    }

    fn best(addrs: &[IpAddr]) -> BTreeMap<IpAddr, Preference> {
        addrs.iter().map(|&a| (a, Preference::Best)).collect()
    }

    #[test]
    fn only_changes_reach_the_speaker_and_failures_are_retried() {
        let (a, b) = (v4(1), v4(2));
        let mut an = Announcer::new(Recorder::default());
        an.set(&best(&[a, b])).unwrap();
        an.set(&best(&[a, b])).unwrap();
        an.set(&best(&[b])).unwrap();
        assert_eq!(an.speaker.lines, ["+198.18.100.1", "+198.18.100.2", "-198.18.100.1"]);
        an.speaker.fail = true;
        assert!(an.set(&best(&[])).is_err());
        an.speaker.fail = false;
        an.set(&best(&[])).unwrap();
        assert_eq!(an.speaker.lines.last().map(String::as_str), Some("-198.18.100.2"));
    }

    #[test]
    fn a_route_whose_preference_changes_is_announced_again() {
        let mut an = Announcer::new(Recorder::default());
        an.set(&[(v4(1), Preference::Backup)].into()).unwrap();
        an.set(&[(v4(1), Preference::Backup)].into()).unwrap();
        an.set(&best(&[v4(1)])).unwrap();
        an.set(&[(v4(1), Preference::Backup)].into()).unwrap();
        assert_eq!(an.speaker.lines, ["+198.18.100.1 backup", "+198.18.100.1", "+198.18.100.1 backup"]);
    }

    #[test]
    fn exabgp_gets_one_flushed_text_command_per_route() {
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1));
        let mut out = Vec::new();
        let mut s = ExaBgp::new(&mut out, None);
        s.announce(v4(1), Preference::Best).unwrap();
        s.withdraw(v6).unwrap();
        s.announce(v4(2), Preference::Backup).unwrap();
        let mut fixed = ExaBgp::new(Vec::new(), Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2))));
        fixed.announce(v4(1), Preference::Best).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "announce route 198.18.100.1/32 next-hop self\nwithdraw route 2001:db8:100::1/128 next-hop self\nannounce route 198.18.100.2/32 next-hop self med 100\n"
        );
        assert_eq!(String::from_utf8(fixed.out).unwrap(), "announce route 198.18.100.1/32 next-hop 198.18.0.2\n");
    }

    /// A full-NAT VIP (.1) over SNAT addresses .11-.13 and another (.2)
    /// over .13 and .14, each with one backend, up or not.
    fn fleet(up: [bool; 2]) -> Services {
        let vip = |last: u8, port: u16, snat: Vec<IpAddr>| VipSpec {
            addr: v4(last),
            proto: IpProtocol::TCP,
            port,
            mode: Mode::Nat { snat },
            backends: vec![u16::from(last) - 1],
            persistence_ms: None,
            reset_on_down: false,
            syn_proxy: SynProxy::Off,
        };
        let backend =
            |i: u8, up: bool| Backend { addr: IpAddr::V4(Ipv4Addr::new(198, 18, 1, i)), port: 80, weight: 1, up, next_hop: [2, 0, 0, 0, 1, i], iface: 0 };
        Services::new(
            vec![Interface { mac: [2, 0, 0, 0, 0, 1], mtu: 1500 }],
            vec![Some(vip(1, 80, vec![v4(11), v4(12), v4(13)])), Some(vip(2, 80, vec![v4(13), v4(14)]))],
            vec![Some(backend(1, up[0])), Some(backend(2, up[1]))],
        )
        .unwrap()
    }

    #[test]
    fn a_fleet_node_announces_its_own_snat_addresses_as_best_and_its_peers_as_backup() {
        use Preference::{Backup, Best};
        // Without owners, SNAT addresses are left to the operator.
        assert_eq!(announced(&fleet([true, true])), best(&[v4(1), v4(2)]));
        let own = fleet([true, true]).with_snat_own(&[v4(12), v4(13)]).unwrap();
        let expected = [(v4(1), Best), (v4(2), Best), (v4(11), Backup), (v4(12), Best), (v4(13), Best), (v4(14), Backup)];
        assert_eq!(announced(&own), expected.into());
        // A VIP not announced takes its SNAT addresses along, unless
        // another announced VIP shares them.
        let down = fleet([true, false]).with_snat_own(&[v4(12), v4(13)]).unwrap();
        assert_eq!(announced(&down), [(v4(1), Best), (v4(11), Backup), (v4(12), Best), (v4(13), Best)].into());
    }
}
