//! The tunnel decapsulation program on a backend: IPIP, IP6IP6 and GUE
//! carrying a UDP datagram to the backend's echo server, whose answer goes
//! straight back to the client (as in tunnel/L3 DSR mode). The lab's
//! kernel has no ipip/fou modules, so without the program nothing answers.
//! Root only.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use fulcrum_dataplane::forward::tunnel::GUE_DEFAULT_PORT as GUE_PORT;
use fulcrum_io::XdpMode;
use fulcrum_io::xdp::DecapProgram;
use fulcrum_tests::{Lab, Topology, in_netns, require_root};

const T: Duration = Duration::from_millis(700);

fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn sum16(data: &[u8]) -> u32 {
    data.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]))).sum()
}

/// An IP packet carrying a UDP datagram, checksums computed.
fn udp_packet(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let ulen = 8 + payload.len();
    let mut udp = Vec::with_capacity(ulen);
    udp.extend_from_slice(&src.port().to_be_bytes());
    udp.extend_from_slice(&dst.port().to_be_bytes());
    udp.extend_from_slice(&(ulen as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let (mut pkt, pseudo) = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
            ip[2..4].copy_from_slice(&((20 + ulen) as u16).to_be_bytes());
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let c = fold(sum16(&ip));
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            let pseudo = sum16(&s.octets()) + sum16(&d.octets()) + 17 + ulen as u32;
            (ip, pseudo)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut ip = vec![0x60, 0, 0, 0, 0, 0, 17, 64];
            ip[4..6].copy_from_slice(&(ulen as u16).to_be_bytes());
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let pseudo = sum16(&s.octets()) + sum16(&d.octets()) + 17 + ulen as u32;
            (ip, pseudo)
        }
        _ => panic!("mixed families"),
    };
    let c = match fold(pseudo + sum16(&udp)) {
        0 => 0xffff,
        c => c,
    };
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    pkt.extend_from_slice(&udp);
    pkt
}

/// Sends `payload` in a raw IP packet of protocol `proto` to `dst`: the
/// kernel adds the outer header.
fn raw_send(dst: IpAddr, proto: i32, payload: &[u8]) {
    let fd = fulcrum_io::sock::socket(dst.is_ipv6(), libc::SOCK_RAW, proto).expect("raw socket");
    fulcrum_io::sock::send_to(&fd, payload, dst).expect("send the raw packet");
}

#[derive(Clone, Copy, Debug)]
enum Tunnel {
    /// IPIP (protocol 4) or IP6IP6 (41), by the family of the addresses.
    Ip,
    Gue,
}

/// Tunnels a datagram from the client to `backend`'s echo server; the echo
/// if one comes back to the client within T.
fn tunnel_echo(lab: &Lab, backend: IpAddr, tunnel: Tunnel, payload: &str) -> Option<Vec<u8>> {
    let client = if backend.is_ipv4() { IpAddr::V4(lab.client.iface().v4) } else { IpAddr::V6(lab.client.iface().v6) };
    in_netns(&lab.client.ns, || {
        let sock = UdpSocket::bind(SocketAddr::new(client, 0)).expect("bind");
        sock.set_read_timeout(Some(T)).expect("timeout");
        let inner = udp_packet(sock.local_addr().expect("addr"), SocketAddr::new(backend, 7), payload.as_bytes());
        match tunnel {
            Tunnel::Ip => raw_send(backend, if backend.is_ipv4() { 4 } else { 41 }, &inner),
            Tunnel::Gue => {
                let outer = UdpSocket::bind(SocketAddr::new(client, 0)).expect("bind");
                outer.send_to(&inner, SocketAddr::new(backend, GUE_PORT)).expect("send");
            }
        }
        let mut buf = [0u8; 2048];
        sock.recv_from(&mut buf).ok().map(|(n, _)| buf[..n].to_vec())
    })
    .expect("netns")
}

#[test]
fn ipip_ip6ip6_and_gue_are_decapsulated() {
    require_root();
    let mut lab = Lab::new(Topology::OneArm).expect("lab");
    lab.start_servers(env!("CARGO_BIN_EXE_lab-server").as_ref()).expect("servers");
    let b1 = lab.backends[0].clone();
    let (v4, v6) = (IpAddr::V4(b1.iface().v4), IpAddr::V6(b1.iface().v6));

    assert_eq!(tunnel_echo(&lab, v4, Tunnel::Ip, "before"), None, "no kernel ipip: nothing answers");

    let decap = in_netns(&b1.ns, || DecapProgram::attach("eth0", XdpMode::Native, GUE_PORT)).expect("netns").expect("attach decap");
    assert_eq!(decap.mode(), XdpMode::Native);
    for (addr, tunnel) in [(v4, Tunnel::Ip), (v4, Tunnel::Gue), (v6, Tunnel::Ip), (v6, Tunnel::Gue)] {
        let msg = format!("{tunnel:?} to {addr}");
        let echo = (0..3).find_map(|_| tunnel_echo(&lab, addr, tunnel, &msg));
        assert_eq!(echo.as_deref(), Some(msg.as_bytes()), "{msg}");
    }
    // Plain traffic still reaches the backend untouched.
    let plain = in_netns(&lab.client.ns, || fulcrum_tests::udp_echo(SocketAddr::new(v4, 7), b"plain", T)).expect("netns").expect("plain echo");
    assert_eq!(plain.0, b"plain");
}
