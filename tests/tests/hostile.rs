//! Forged frames against the daemon on the lab: another host on the
//! client's segment sends one TCP frame of each kind with the real
//! client's address and a source port, from a MAC of its own; then the
//! real client (curl, the kernel's TCP) connects from each of those ports.
//! Every connection must succeed. Root only.

use std::net::{IpAddr, Ipv4Addr};

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
    in_netns(&lab.client.ns, || {
        for (i, kind) in FORGED.into_iter().enumerate() {
            let port = FIRST_PORT + i as u16;
            fulcrum_io::sock::send_frame(&client.name, &forged_frame(client.v4, port, lb_mac, kind)).expect("inject a forged frame");
        }
    })
    .expect("netns");
    // What the forged frames set going (replies to the forger, the
    // client kernel's RSTs) settles.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut failed = Vec::new();
    for (i, kind) in FORGED.iter().enumerate() {
        let port = (FIRST_PORT + i as u16).to_string();
        let url = format!("http://{VIP4}/");
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
