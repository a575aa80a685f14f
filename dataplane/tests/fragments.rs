//! IP fragments of a datagram to a VIP: the first carries the ports and is
//! placed like any packet; the later ones follow it to the same backend,
//! rewritten the same way, in every mode and both IP versions; NAT return
//! traffic too. A later fragment that comes before its first is placed by
//! its addresses, and the first follows it.

use std::net::IpAddr;
use std::sync::Arc;

use fulcrum_dataplane::flow::parse;
use fulcrum_dataplane::forward::tunnel::{Encap, GUE_DEFAULT_PORT};
use fulcrum_dataplane::wire::{IpProtocol, checksum};
use fulcrum_dataplane::{Backend, DropReason, Engine, EngineConfig, Interface, Mode, Services, SynProxy, Verdict, VipSpec};
use fulcrum_testing::frame::{L4, LB_MAC, PacketBuilder, fragments};
use fulcrum_testing::one_vip::{backend, ip, process};

const VIP4: &str = "198.18.0.100";
const VIP6: &str = "2001:db8:100::64";
const SNAT4: &str = "198.18.0.200";
const SNAT6: &str = "2001:db8::c8";

fn vip(v6: bool) -> IpAddr {
    ip(if v6 { VIP6 } else { VIP4 })
}

fn client(v6: bool) -> IpAddr {
    ip(if v6 { "2001:db8::1" } else { "198.18.0.1" })
}

/// Backend `i` in the VIP's family.
fn backend_in(i: u8, v6: bool) -> Backend {
    let b = backend(i, 1);
    if v6 { Backend { addr: IpAddr::from([0x2001, 0xdb8, 1, 0, 0, 0, 0, u16::from(i)]), ..b } } else { b }
}

/// An engine with a UDP VIP on port 7 over three backends.
fn engine(mode: Mode, v6: bool) -> Engine {
    let spec = VipSpec {
        addr: vip(v6),
        proto: IpProtocol::UDP,
        port: 7,
        mode,
        backends: vec![0, 1, 2],
        persistence_ms: None,
        reset_on_down: false,
        syn_proxy: SynProxy::Off,
    };
    let backends = (1..=3).map(|i| Some(backend_in(i, v6))).collect();
    let s = Services::new(vec![Interface { mac: LB_MAC, mtu: 9000 }], vec![Some(spec)], backends).unwrap();
    Engine::new(EngineConfig { table_capacity: 1024, ..EngineConfig::default() }, Arc::new(s)).unwrap()
}

fn run(e: &mut Engine, f: &[u8]) -> (Verdict, Vec<u8>) {
    process(e, f, 1000)
}

/// A UDP datagram of `len` payload bytes (byte i is i % 251), with its
/// UDP checksum, as fragments of at most 1232 bytes of IP payload.
fn datagram(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, len: usize, id: u32) -> Vec<Vec<u8>> {
    let mut d = PacketBuilder::udp(src, sport, dst, dport).payload(&(0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>());
    d.l4 = L4::Udp { src_port: sport, dst_port: dport, checksum: true };
    fragments(&d.frame(), 1232, id)
}

/// The IP packet of a frame, past any tunnel header the engine added.
fn inner_ip<'a>(out: &'a [u8], mode: &Mode) -> &'a [u8] {
    let ip = &out[14..];
    let hlen = |p: &[u8]| if p[0] >> 4 == 6 { 40 } else { usize::from(p[0] & 0xf) * 4 };
    match mode {
        Mode::Tunnel { encap: Encap::Ipip, .. } => &ip[hlen(ip)..],
        Mode::Tunnel { encap: Encap::Gue { .. }, .. } => &ip[hlen(ip) + 8..],
        _ => ip,
    }
}

/// Reassembles the UDP datagram from forwarded fragments (in order) and
/// checks its checksum against the addresses it now carries.
fn reassembled_checksum_ok(ips: &[&[u8]]) -> bool {
    let v6 = ips[0][0] >> 4 == 6;
    let skip = if v6 { 48 } else { 20 };
    let udp: Vec<u8> = ips.iter().flat_map(|p| p[skip..].iter().copied()).collect();
    let (src, dst) = if v6 { (&ips[0][8..24], &ips[0][24..40]) } else { (&ips[0][12..16], &ips[0][16..20]) };
    checksum::checksum(&udp, checksum::pseudo_header(src, dst, IpProtocol::UDP, udp.len() as u32)) == 0
}

fn modes(v6: bool) -> Vec<Mode> {
    let tunnel_src = if v6 { ip("2001:db8:ff::") } else { ip("198.18.200.0") };
    let prefix = if v6 { 96 } else { 24 };
    vec![
        Mode::Nat { snat: vec![] },
        Mode::Nat { snat: vec![ip(if v6 { SNAT6 } else { SNAT4 })] },
        Mode::Dsr,
        Mode::Tunnel { encap: Encap::Ipip, source: tunnel_src, source_prefix: prefix },
        Mode::Tunnel { encap: Encap::Gue { port: GUE_DEFAULT_PORT }, source: tunnel_src, source_prefix: prefix },
    ]
}

#[test]
fn every_fragment_of_a_datagram_reaches_the_backend_of_its_first() {
    for v6 in [false, true] {
        for mode in modes(v6) {
            let mut e = engine(mode.clone(), v6);
            let frags = datagram(client(v6), 5000, vip(v6), 7, 4000, 0x1234);
            assert_eq!(frags.len(), 4, "4000 bytes in pieces of 1232");
            let outs: Vec<(Verdict, Vec<u8>)> = frags.iter().map(|f| run(&mut e, f)).collect();
            assert!(outs.iter().all(|(v, _)| *v == Verdict::Tx(0)), "{mode:?} v6={v6}: {:?}", outs.iter().map(|o| o.0).collect::<Vec<_>>());
            let macs: Vec<u8> = outs.iter().map(|(_, f)| f[5]).collect();
            assert!(macs.iter().all(|&m| m == macs[0]), "{mode:?} v6={v6}: fragments went to backends {macs:?}");
            let ips: Vec<&[u8]> = outs.iter().map(|(_, f)| inner_ip(f, &mode)).collect();
            assert!(reassembled_checksum_ok(&ips), "{mode:?} v6={v6}: the datagram's checksum no longer verifies");
            if !v6 {
                assert!(ips.iter().all(|p| checksum::checksum(&p[..20], 0) == 0), "{mode:?}: an IPv4 header checksum is wrong");
            }
            if let Mode::Nat { snat } = &mode {
                let b = backend_in(macs[0], v6).addr;
                for p in &ips {
                    let (src, dst) = if v6 { (&p[8..24], &p[24..40]) } else { (&p[12..16], &p[16..20]) };
                    let octets = |a: IpAddr| match a {
                        IpAddr::V4(a) => a.octets().to_vec(),
                        IpAddr::V6(a) => a.octets().to_vec(),
                    };
                    assert_eq!(dst, octets(b), "{mode:?} v6={v6}: a fragment's destination");
                    assert_eq!(src, octets(snat.first().copied().unwrap_or(client(v6))), "{mode:?} v6={v6}: a fragment's source");
                }
            }
            assert_eq!(e.stats().fragments_followed.get(), 3, "{mode:?} v6={v6}");
        }
    }
}

#[test]
fn fragmented_nat_replies_reach_the_client() {
    for v6 in [false, true] {
        let snat = ip(if v6 { SNAT6 } else { SNAT4 });
        let mut e = engine(Mode::Nat { snat: vec![snat] }, v6);
        let (v, out) = run(&mut e, &PacketBuilder::udp(client(v6), 5000, vip(v6), 7).payload(b"ping").frame());
        assert_eq!(v, Verdict::Tx(0));
        let p = parse(&out).unwrap();
        let (b, port) = (p.key.dst_ip(), p.key.src_port);
        let replies = datagram(b, 7, snat, port, 4000, 0x77);
        let outs: Vec<(Verdict, Vec<u8>)> = replies.iter().map(|f| run(&mut e, f)).collect();
        assert!(outs.iter().all(|(v, _)| *v == Verdict::Tx(0)), "v6={v6}: {:?}", outs.iter().map(|o| o.0).collect::<Vec<_>>());
        let ips: Vec<&[u8]> = outs.iter().map(|(_, f)| &f[14..]).collect();
        assert!(reassembled_checksum_ok(&ips), "v6={v6}");
        for p in &ips {
            let dst = if v6 { &p[24..40] } else { &p[16..20] };
            let want = match client(v6) {
                IpAddr::V4(a) => a.octets().to_vec(),
                IpAddr::V6(a) => a.octets().to_vec(),
            };
            assert_eq!(dst, want, "v6={v6}: a reply fragment's destination");
        }
    }
}

#[test]
fn later_fragments_that_come_first_are_placed_and_the_first_follows_them() {
    for v6 in [false, true] {
        for mode in modes(v6) {
            let mut e = engine(mode.clone(), v6);
            let frags = datagram(client(v6), 5000, vip(v6), 7, 4000, 9);
            // The last fragment first (some stacks send them so), then the
            // others in order.
            let order = [3, 0, 1, 2];
            let outs: Vec<(Verdict, Vec<u8>)> = order.iter().map(|&i| run(&mut e, &frags[i])).collect();
            if mode == (Mode::Nat { snat: vec![ip(if v6 { SNAT6 } else { SNAT4 })] }) {
                // Full-NAT chooses the source with the first fragment's
                // flow: what came before it cannot be rewritten yet.
                assert_eq!(outs[0].0, Verdict::Drop(DropReason::Fragment), "v6={v6}");
                assert_eq!(e.stats().vip_drops[0].get(DropReason::Fragment), 1);
                assert!(outs[1..].iter().all(|(v, _)| *v == Verdict::Tx(0)), "v6={v6}: the rest goes with the first");
                continue;
            }
            assert!(outs.iter().all(|(v, _)| *v == Verdict::Tx(0)), "{mode:?} v6={v6}: {:?}", outs.iter().map(|o| o.0).collect::<Vec<_>>());
            let macs: Vec<&[u8]> = outs.iter().map(|(_, f)| &f[..6]).collect();
            assert!(macs.iter().all(|&m| m == macs[0]), "{mode:?} v6={v6}: fragments went to backends {macs:?}");
            assert_eq!(e.stats().fragments_placed.get(), 1, "{mode:?} v6={v6}");
            assert_eq!(e.stats().fragments_followed.get(), 2, "{mode:?} v6={v6}");
            let mut ips: Vec<&[u8]> = outs.iter().map(|(_, f)| inner_ip(f, &mode)).collect();
            ips.rotate_left(1);
            assert!(reassembled_checksum_ok(&ips), "{mode:?} v6={v6}: the datagram reassembles with a valid checksum");
        }
    }
}

#[test]
fn a_later_fragment_for_no_vip_leaves_nothing() {
    for v6 in [false, true] {
        let mut e = engine(Mode::Dsr, v6);
        let stray = datagram(client(v6), 5000, ip(if v6 { "2001:db8:100::65" } else { "198.18.0.101" }), 7, 4000, 9);
        assert_eq!(run(&mut e, &stray[2]).0, Verdict::Pass, "not for a VIP: the kernel's");
        let frags = datagram(client(v6), 5000, vip(v6), 7, 4000, 9);
        let mut tcp_frag = frags[2].clone();
        // The same fragment claiming TCP: no TCP VIP there.
        let proto_at = if v6 { 14 + 40 } else { 14 + 9 };
        tcp_frag[proto_at] = 6;
        if !v6 {
            tcp_frag[24..26].fill(0);
            let c = checksum::checksum(&tcp_frag[14..34], 0);
            tcp_frag[24..26].copy_from_slice(&c.to_be_bytes());
        }
        assert_eq!(run(&mut e, &tcp_frag).0, Verdict::Drop(DropReason::Fragment), "v6={v6}");
        assert_eq!(e.table().len(), 0);
    }
}
