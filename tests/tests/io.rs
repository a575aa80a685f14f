//! The io module used directly in the balancer's namespace, with real
//! frames on a lab: what the steering program redirects into the AF_XDP
//! sockets, rebinding, errors, and frames grown into the headroom (tunnel
//! encapsulation) on their way out. Root only.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fulcrum_dataplane::forward::tunnel::GUE_DEFAULT_PORT as GUE_PORT;
use fulcrum_dataplane::wire::IpProtocol;
use fulcrum_io::afxdp::{XskConfig, XskIo};
use fulcrum_io::xdp::{DecapProgram, ReturnTraffic, SteerProgram};
use fulcrum_io::{IoError, PacketIo, XdpMode};
use fulcrum_tests::{Lab, Topology, VIP4, VIP6, in_netns, require_root, udp_echo};

const UDP: IpProtocol = IpProtocol::UDP;
const SNAT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
/// A network only reachable through the balancer (from backend1).
const FAR: Ipv4Addr = Ipv4Addr::new(198, 18, 50, 1);

/// What a steered frame was: the UDP payload, or `icmp<type>`.
fn classify(frame: &[u8]) -> String {
    let (proto, l4) = match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 => (frame[23], &frame[14 + usize::from(frame[14] & 0xf) * 4..]),
        0x86dd => (frame[20], &frame[54..]),
        t => return format!("ethertype {t:#x}"),
    };
    match proto {
        17 => String::from_utf8_lossy(&l4[8..]).into_owned(),
        1 => format!("icmp{}", l4[0]),
        p => format!("proto{p}"),
    }
}

fn send_udp(ns: &str, from_port: u16, to: SocketAddr, marker: &str) {
    in_netns(ns, || {
        let bind: SocketAddr = if to.is_ipv4() { ([0, 0, 0, 0], from_port).into() } else { (IpAddr::from([0u16; 8]), from_port).into() };
        let s = UdpSocket::bind(bind).expect("bind");
        s.send_to(marker.as_bytes(), to).expect("send");
    })
    .expect("netns");
}

/// An ICMP "port unreachable" sent to the VIP, quoting a datagram the VIP
/// sent from port 7, as a router would for a DSR reply.
fn send_icmp_error_to_vip(lab: &Lab) {
    let client = lab.client.iface().v4;
    let mut quoted = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0];
    quoted.extend_from_slice(&VIP4.octets());
    quoted.extend_from_slice(&client.octets());
    quoted.extend_from_slice(&[0, 7, 0x9c, 0x40, 0, 8, 0, 0]); // UDP 7 -> 40000
    let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&quoted);
    let c = fulcrum_dataplane::wire::checksum::checksum(&icmp, 0);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    in_netns(&lab.client.ns, || {
        let fd = fulcrum_io::sock::socket(false, libc::SOCK_RAW, libc::IPPROTO_ICMP).expect("raw socket");
        fulcrum_io::sock::send_to(&fd, &icmp, IpAddr::V4(VIP4)).expect("send the ICMP error");
    })
    .expect("netns");
}

#[test]
fn only_vips_and_nat_return_traffic_are_steered() {
    require_root();
    let lab = Lab::new(Topology::OneArm).expect("lab");
    let bal = lab.balancer.iface().clone();
    let b1 = lab.backends[0].iface().clone();
    lab.exec(&lab.balancer.ns, &["ip", "addr", "add", &format!("{SNAT}/32"), "dev", "eth0"]).expect("SNAT address");
    lab.exec(&lab.backends[0].ns, &["ip", "route", "add", &format!("{FAR}/32"), "via", &bal.v4.to_string()]).expect("route");

    let (steer, mut workers) = in_netns(&lab.balancer.ns, || -> Result<_, IoError> {
        let mut steer = SteerProgram::attach("eth0", XdpMode::Native)?;
        steer.add_vip(IpAddr::V4(VIP4), UDP, 7)?;
        steer.add_vip(IpAddr::V6(VIP6), UDP, 0)?;
        steer.add_return(ReturnTraffic::ToSnat { addr: IpAddr::V4(SNAT), proto: UDP, port: 5000 })?;
        steer.add_return(ReturnTraffic::FromBackend { addr: IpAddr::V4(b1.v4), proto: UDP, port: 7 })?;
        let mut workers = Vec::new();
        for q in 0..lab.queues {
            let io = XskIo::open(&["eth0"], q, &XskConfig::default())?;
            steer.register_socket(q, io.socket_fd(0).expect("port 0"))?;
            workers.push(io);
        }
        Ok((steer, workers))
    })
    .expect("netns")
    .expect("steering set up");
    assert_eq!(steer.mode(), XdpMode::Native);

    let c = &lab.client.ns;
    let b1ns = &lab.backends[0].ns;
    send_udp(c, 0, (VIP4, 7).into(), "vip4:7");
    send_udp(c, 0, (VIP4, 8).into(), "vip4:8 (other port)");
    send_udp(c, 0, (VIP6, 1234).into(), "vip6:any");
    send_udp(c, 0, (SNAT, 5000).into(), "snat:5000");
    send_udp(c, 0, (SNAT, 5001).into(), "snat:5001 (other port)");
    send_udp(b1ns, 7, (FAR, 9).into(), "backend:7 -> client");
    send_udp(b1ns, 8, (FAR, 9).into(), "backend:8 (other port)");
    send_udp(b1ns, 7, (bal.v4, 9).into(), "backend:7 -> host (health check reply)");
    send_udp(c, 0, (bal.v4, 7).into(), "host:7");
    send_icmp_error_to_vip(&lab);
    // TCP to a UDP VIP, and ICMP echo to the VIP: not steered.
    let _ = in_netns(c, || TcpStream::connect_timeout(&(VIP4, 7).into(), Duration::from_millis(300)));
    let _ = lab.exec(c, &["ping", "-c", "1", "-W", "1", &VIP4.to_string()]);

    let mut seen = BTreeSet::new();
    let mut frames = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        for io in &mut workers {
            io.recv(&mut frames).expect("recv");
            for f in &mut frames {
                let (start, len) = (f.start, f.len);
                let buf = io.buffer(&mut f.chunk).expect("own frame");
                seen.insert(classify(&buf[start..start + len]));
            }
            io.recycle(&mut frames);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let expected: BTreeSet<String> = ["vip4:7", "vip6:any", "snat:5000", "backend:7 -> client", "icmp3"].into_iter().map(String::from).collect();
    assert_eq!(seen, expected);
    drop(workers);
    drop(steer);
}

#[test]
fn sockets_rebind_at_once_and_a_busy_queue_is_a_clear_error() {
    require_root();
    let lab = Lab::new(Topology::OneArm).expect("lab");
    in_netns(&lab.balancer.ns, || {
        for _ in 0..5 {
            let io = XskIo::open(&["eth0"], 0, &XskConfig::default()).expect("rebind right after close");
            assert!(!io.is_zero_copy(0), "veth has no zero-copy: copy mode fallback");
        }
        let _held = XskIo::open(&["eth0"], 0, &XskConfig::default()).expect("open");
        let err = XskIo::open(&["eth0"], 0, &XskConfig::default()).err().expect("queue already bound");
        assert!(matches!(&err, IoError::Socket { source, .. } if source.raw_os_error() == Some(libc::EBUSY)), "{err}");

        let err = XskIo::open(&["nope0"], 0, &XskConfig::default()).err().expect("no interface");
        assert_eq!(err.to_string(), "no such network interface: nope0");
        let err = SteerProgram::attach("eth0 ", XdpMode::Auto).err().expect("bad name");
        assert!(matches!(err, IoError::InvalidArgument(_)), "{err}");

        let _first = SteerProgram::attach("eth0", XdpMode::Generic).expect("attach");
        let err = SteerProgram::attach("eth0", XdpMode::Generic).err().expect("second program");
        assert!(err.to_string().contains("another XDP program is attached to eth0"), "{err}");
    })
    .expect("netns");
}

/// Tunnel mode through the io layer: the balancer prepends an outer IPv4
/// header in the frame's headroom (IPIP) and sends it to backend1, whose
/// decapsulation program hands the inner datagram (to the VIP, which
/// backend1 owns on its loopback) to the echo server.
#[test]
fn headers_prepended_in_the_headroom_are_sent() {
    require_root();
    let mut lab = Lab::new(Topology::OneArm).expect("lab");
    lab.start_servers(env!("CARGO_BIN_EXE_lab-server").as_ref()).expect("servers");
    let bal = lab.balancer.iface().clone();
    let b1 = lab.backends[0].clone();
    lab.exec(&b1.ns, &["ip", "addr", "add", &format!("{VIP4}/32"), "dev", "lo"]).expect("VIP on lo");
    let _decap = in_netns(&b1.ns, || DecapProgram::attach("eth0", XdpMode::Native, GUE_PORT)).expect("netns").expect("decap");
    let (_steer, workers) = in_netns(&lab.balancer.ns, || -> Result<_, IoError> {
        let mut steer = SteerProgram::attach("eth0", XdpMode::Native)?;
        steer.add_vip(IpAddr::V4(VIP4), UDP, 7)?;
        let mut workers = Vec::new();
        for q in 0..lab.queues {
            let io = XskIo::open(&["eth0"], q, &XskConfig::default())?;
            steer.register_socket(q, io.socket_fd(0).expect("port 0"))?;
            workers.push(io);
        }
        Ok((steer, workers))
    })
    .expect("netns")
    .expect("steering set up");

    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for mut io in workers {
            let (stop, bal, b1) = (&stop, &bal, b1.iface());
            s.spawn(move || {
                let (mut rx, mut tx) = (Vec::new(), Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    io.recv(&mut rx).expect("recv");
                    for mut f in rx.drain(..) {
                        let buf = io.buffer(&mut f.chunk).expect("own frame");
                        let inner_len = f.len - 14;
                        let start = f.start - 20;
                        buf.copy_within(f.start..f.start + 12, start); // MACs; EtherType stays IPv4
                        buf[start..start + 6].copy_from_slice(&b1.mac);
                        buf[start + 6..start + 12].copy_from_slice(&bal.mac);
                        buf[start + 12..start + 14].copy_from_slice(&[0x08, 0x00]);
                        let mut ip = [0x45, 0, 0, 0, 0, 0, 0, 0, 64, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                        ip[2..4].copy_from_slice(&((20 + inner_len) as u16).to_be_bytes());
                        ip[12..16].copy_from_slice(&bal.v4.octets());
                        ip[16..20].copy_from_slice(&b1.v4.octets());
                        let c = fulcrum_dataplane::wire::checksum::checksum(&ip, 0);
                        ip[10..12].copy_from_slice(&c.to_be_bytes());
                        buf[start + 14..start + 34].copy_from_slice(&ip);
                        f.start = start;
                        f.len += 20;
                        tx.push(f);
                    }
                    io.send(&mut tx).expect("send");
                    io.wait(Duration::from_millis(5)).expect("wait");
                }
            });
        }
        for i in 0..20 {
            let msg = format!("tunnelled {i}");
            let echo =
                (0..3).find_map(|_| in_netns(&lab.client.ns, || udp_echo((VIP4, 7).into(), msg.as_bytes(), Duration::from_secs(1))).expect("netns").ok());
            assert_eq!(echo.map(|e| e.0).as_deref(), Some(msg.as_bytes()));
        }
        stop.store(true, Ordering::Relaxed);
    });
}

#[test]
fn neighbour_events_follow_the_kernels_table() {
    use fulcrum_io::netlink::{Neighbour, NeighbourWatch};
    require_root();
    let lab = Lab::new(Topology::OneArm).expect("lab");
    let eth0 = lab.balancer.iface().name.clone();
    let ifindex = in_netns(&lab.balancer.ns, || fulcrum_io::netinfo::iface_index(&eth0)).expect("netns").expect("ifindex");
    let addr: IpAddr = "198.18.0.99".parse().unwrap();
    let (known, gone) = in_netns(&lab.balancer.ns, || {
        let mut watch = NeighbourWatch::open(Duration::from_millis(100)).expect("netlink");
        let mut events = Vec::new();
        let mut until = |want: &dyn Fn(&Neighbour) -> bool| {
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                watch.recv(&mut events).expect("recv");
                if let Some(e) = events.iter().find(|e| want(e)) {
                    return Some(*e);
                }
            }
            None
        };
        lab.exec(&lab.balancer.ns, &["ip", "neigh", "replace", "198.18.0.99", "lladdr", "02:00:00:00:00:99", "dev", &eth0]).expect("ip neigh");
        let known = until(&|e| matches!(e, Neighbour::Known { addr: a, .. } if *a == addr));
        lab.exec(&lab.balancer.ns, &["ip", "neigh", "del", "198.18.0.99", "dev", &eth0]).expect("ip neigh del");
        let gone = until(&|e| matches!(e, Neighbour::Gone { addr: a, .. } if *a == addr));
        (known, gone)
    })
    .expect("netns");
    assert_eq!(known, Some(Neighbour::Known { ifindex, addr, mac: [2, 0, 0, 0, 0, 0x99] }));
    assert_eq!(gone, Some(Neighbour::Gone { ifindex, addr }));
}
