//! Forged frames against the daemon on the lab: another host on the
//! client's segment sends one TCP frame of each kind with the real
//! client's address and a source port, from a MAC of its own; then the
//! real client (curl, the kernel's TCP) connects from each of those ports.
//! Every connection must succeed. Root only.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use fulcrum_dataplane::wire::tcp::{ACK, FIN, PSH, RST, SYN, URG};
use fulcrum_testing::frame::PacketBuilder;
use fulcrum_tests::daemon::{self, LabMode};
use fulcrum_tests::{Lab, VIP4, in_netns, require_root};

const SERVER: &str = env!("CARGO_BIN_EXE_lab-server");
/// The forger's MAC: on the client's segment, not the client's.
const FORGER_MAC: [u8; 6] = [0x02, 0x66, 0, 0, 0, 0x01];
const FIRST_PORT: u16 = 45_000;

/// One frame of each kind the forger sends: flags, TTL, whether the TCP
/// checksum is broken.
const FORGED: [(u8, u8, bool); 9] = [
    (SYN, 64, false),
    (SYN | FIN, 64, false),
    (0, 64, false),
    (FIN | PSH | URG, 64, false),
    (ACK, 64, false),
    (RST, 64, false),
    (SYN, 64, true),
    (SYN, 1, false),
    (SYN, 0, false),
];

fn forged_frame(client: Ipv4Addr, port: u16, lb_mac: [u8; 6], (flags, ttl, bad_checksum): (u8, u8, bool)) -> Vec<u8> {
    let mut f = PacketBuilder::tcp(IpAddr::V4(client), port, IpAddr::V4(VIP4), 80, flags).macs(FORGER_MAC, lb_mac).ttl(ttl).frame();
    if bad_checksum {
        // The TCP checksum of an option-less IPv4 frame: bytes 50 and 51.
        f[50] ^= 0x5a;
    }
    f
}

fn forged_frames_do_not_take_over_client_ports(mode: LabMode) {
    require_root();
    let mut lab = Lab::new(mode.topology()).expect("lab");
    let _decap = daemon::prepare(&mut lab, mode, SERVER.as_ref()).expect("backend set-up");
    let (d, _config) = daemon::start(&lab, &daemon::config(&lab, mode, "")).expect("daemon");
    let client = lab.client.iface().clone();
    let lb_mac = lab.balancer.ifaces[0].mac;
    // The client has been on the network before (the balancer's kernel
    // knows its MAC), as any client whose address is worth forging.
    let url = format!("http://{VIP4}/");
    lab.exec(&lab.client.ns, &["curl", "-sS", "-o", "/dev/null", "-m", "3", &url]).expect("a first request");
    in_netns(&lab.client.ns, || {
        let sender = fulcrum_io::sock::FrameSender::open(&client.name).expect("a packet socket");
        for (i, kind) in FORGED.into_iter().enumerate() {
            let port = FIRST_PORT + i as u16;
            sender.send(&forged_frame(client.v4, port, lb_mac, kind)).expect("inject a forged frame");
        }
    })
    .expect("netns");
    // What the forged frames set going (replies to the forger, the
    // client kernel's RSTs) settles.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut failed = Vec::new();
    for (i, kind) in FORGED.iter().enumerate() {
        let port = (FIRST_PORT + i as u16).to_string();
        let out = lab.exec(&lab.client.ns, &["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-m", "3", "--local-port", &port, &url]);
        if !matches!(&out, Ok(code) if code.trim() == "200") {
            failed.push(format!("port {port} after {kind:?}: {out:?}"));
        }
    }
    let summary = daemon::stop(d).expect("daemon stop");
    assert!(failed.is_empty(), "{mode:?}: connections failed after forged frames:\n{}\n{summary}", failed.join("\n"));
    if mode != LabMode::Dsr {
        // NAT modes refuse the stray segments, and name why.
        for reason in ["no_state=", "invalid_flags=", "ttl_exceeded="] {
            assert!(summary.contains(reason), "{mode:?}: no {reason} drops counted:\n{summary}");
        }
    }
}

#[test]
fn forged_frames_do_not_take_over_client_ports_full_nat() {
    forged_frames_do_not_take_over_client_ports(LabMode::FullNat);
}

#[test]
fn forged_frames_do_not_take_over_client_ports_nat() {
    forged_frames_do_not_take_over_client_ports(LabMode::Nat);
}

#[test]
fn forged_frames_do_not_take_over_client_ports_dsr() {
    forged_frames_do_not_take_over_client_ports(LabMode::Dsr);
}

/// A 4,000-byte UDP datagram, fragmented by the client's kernel (MTU
/// 1500), through the daemon to the backends' UDP echo and back: it must
/// arrive whole (the echo is the proof: the backend reassembled it) and
/// come back whole, in every mode and family.
fn fragmented_udp_arrives_whole(mode: LabMode, vips: &[IpAddr]) {
    require_root();
    let mut lab = Lab::new(mode.topology()).expect("lab");
    let _decap = daemon::prepare(&mut lab, mode, SERVER.as_ref()).expect("backend set-up");
    let (d, _config) = daemon::start(&lab, &daemon::config(&lab, mode, "")).expect("daemon");
    let payload: Vec<u8> = (0..4000).map(|i| (i % 251) as u8).collect();
    let mut failed = Vec::new();
    for &vip in vips {
        for i in 0..5 {
            // A lost datagram (a tunnel's first too-big answer lowers the
            // client's path MTU) is retried once, as a UDP client would.
            let echo =
                (0..2).find_map(|_| in_netns(&lab.client.ns, || fulcrum_tests::udp_echo(SocketAddr::new(vip, 7), &payload, Duration::from_secs(2))).ok()?.ok());
            match echo {
                Some((data, from)) if data == payload && from.ip() == vip => {}
                other => failed.push(format!("{vip} datagram {i}: {:?}", other.map(|(d, f)| (d.len(), f)))),
            }
        }
    }
    // At MTU 1500 each 4008-byte datagram (UDP header included) is three
    // fragments: two follow the first (the answers too, in nat modes).
    let followed = daemon::metric(&daemon::scrape(&lab), "fulcrum_fragments_followed_total", &[]);
    let summary = daemon::stop(d).expect("daemon stop");
    assert!(failed.is_empty(), "{mode:?}: fragmented datagrams lost:\n{}\n{summary}", failed.join("\n"));
    assert!(followed >= (2 * 5 * vips.len()) as f64, "{mode:?}: {followed} fragments followed\n{summary}");
}

#[test]
fn fragmented_udp_arrives_whole_full_nat() {
    fragmented_udp_arrives_whole(LabMode::FullNat, &[IpAddr::V4(VIP4), IpAddr::V6(fulcrum_tests::VIP6)]);
}

#[test]
fn fragmented_udp_arrives_whole_nat() {
    fragmented_udp_arrives_whole(LabMode::Nat, &[IpAddr::V4(VIP4), IpAddr::V6(fulcrum_tests::VIP6)]);
}

#[test]
fn fragmented_udp_arrives_whole_dsr() {
    fragmented_udp_arrives_whole(LabMode::Dsr, &[IpAddr::V4(VIP4), IpAddr::V6(fulcrum_tests::VIP6)]);
}

#[test]
fn fragmented_udp_arrives_whole_ipip() {
    fragmented_udp_arrives_whole(LabMode::Ipip, &[IpAddr::V4(VIP4)]);
}

#[test]
fn fragmented_udp_arrives_whole_gue() {
    fragmented_udp_arrives_whole(LabMode::Gue, &[IpAddr::V4(VIP4)]);
}

/// Requests from the client through the VIP: how many each backend
/// served, and how many failed.
fn requests(lab: &Lab, n: usize) -> (std::collections::HashMap<String, usize>, usize) {
    fulcrum_tests::http_answers(&lab.client.ns, SocketAddr::new(IpAddr::V4(VIP4), 80), n, Duration::from_secs(2)).expect("netns")
}

#[test]
fn a_backend_whose_mac_changes_keeps_getting_its_flows() {
    require_root();
    let mode = LabMode::Dsr;
    let mut lab = Lab::new(mode.topology()).expect("lab");
    let _decap = daemon::prepare(&mut lab, mode, SERVER.as_ref()).expect("backend set-up");
    let (d, _config) = daemon::start(&lab, &daemon::config(&lab, mode, "")).expect("daemon");
    let (before, failed) = requests(&lab, 60);
    assert_eq!(failed, 0, "{before:?}");
    // The server behind backend1's address is replaced (a new NIC): it
    // announces its new MAC (gratuitous ARP), as Linux does with
    // arp_notify.
    let b1 = lab.backends[0].clone();
    let eth0 = b1.iface().name.clone();
    lab.exec(&b1.ns, &["sysctl", "-qw", &format!("net.ipv4.conf.{eth0}.arp_notify=1")]).expect("arp_notify");
    lab.exec(&b1.ns, &["ip", "link", "set", "dev", &eth0, "address", "02:aa:bb:cc:dd:01"]).expect("new MAC");
    std::thread::sleep(Duration::from_millis(500));
    let (after, failed) = requests(&lab, 90);
    let summary = daemon::stop(d).expect("daemon stop");
    assert_eq!(failed, 0, "requests failed after backend1's MAC changed: {after:?}\n{summary}");
    assert!(after.get(&b1.name).copied().unwrap_or(0) >= 10, "backend1 gets no flows any more: {after:?}\n{summary}");
}
