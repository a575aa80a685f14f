//! The lab itself: topology, servers, and cleanup even on panic. Root only.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use fulcrum_tests::{Lab, Topology, VIP4, http_get, in_netns, require_root, udp_echo};

const T: Duration = Duration::from_secs(5);

fn namespaces(lab: &Lab) -> Vec<String> {
    std::iter::once(lab.bridge_ns.clone()).chain(lab.hosts().map(|h| h.ns.clone())).collect()
}

fn gone(names: &[String]) -> bool {
    names.iter().all(|n| !Path::new("/run/netns").join(n).exists())
}

#[test]
fn servers_answer_with_their_name_bytes_and_echo() {
    require_root();
    for topology in [Topology::OneArm, Topology::Inline] {
        let mut lab = Lab::new(topology).expect("lab");
        lab.start_servers(env!("CARGO_BIN_EXE_lab-server").as_ref()).expect("servers");
        // In inline the client reaches no backend directly: ask from another backend.
        let from = &lab.backends[2].ns;
        for b in &lab.backends {
            for ip in [IpAddr::V4(b.iface().v4), IpAddr::V6(b.iface().v6)] {
                let (status, body) = in_netns(from, || http_get(SocketAddr::new(ip, 80), "/", T)).unwrap().unwrap();
                assert_eq!((status, body), (200, format!("{}\n", b.name).into_bytes()), "{ip}");
                let (echo, src) = in_netns(from, || udp_echo(SocketAddr::new(ip, 7), b"ping", T)).unwrap().unwrap();
                assert_eq!((echo.as_slice(), src), (&b"ping"[..], SocketAddr::new(ip, 7)));
            }
        }
        let ip = IpAddr::V4(lab.backends[0].iface().v4);
        let n = 10 << 20;
        let (status, body) = in_netns(from, || http_get(SocketAddr::new(ip, 80), &format!("/bytes/{n}"), T)).unwrap().unwrap();
        assert_eq!(status, 200);
        assert_eq!(body.len(), n);
        assert!(body.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8), "10 MB arrive intact");
        let (status, _) = in_netns(from, || http_get(SocketAddr::new(ip, 80), "/nope", T)).unwrap().unwrap();
        assert_eq!(status, 404);
    }
}

#[test]
fn the_client_routes_vips_to_the_balancer() {
    require_root();
    for topology in [Topology::OneArm, Topology::Inline] {
        let lab = Lab::new(topology).expect("lab");
        let route = lab.exec(&lab.client.ns, &["ip", "route", "get", &VIP4.to_string()]).expect("route");
        assert!(route.contains(&format!("via {}", lab.balancer.iface().v4)), "{route}");
        for b in &lab.backends {
            let route = lab.exec(&b.ns, &["ip", "route", "get", &VIP4.to_string()]).expect("route");
            let via = lab.balancer.ifaces.last().expect("iface").v4;
            assert!(route.contains(&format!("via {via}")), "{route}");
        }
    }
}

#[test]
fn everything_is_removed_on_drop_and_on_panic() {
    require_root();
    let lab = Lab::new(Topology::Inline).expect("lab");
    let names = namespaces(&lab);
    assert!(!gone(&names));
    let server = lab.spawn(&lab.backends[0].ns, &["sleep", "60"]).expect("spawn");
    let pid = server.pid();
    drop(server);
    drop(lab);
    assert!(gone(&names), "namespaces removed");
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "processes killed");

    let mut names = Vec::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = Lab::new(Topology::OneArm).expect("lab");
        names = namespaces(&lab);
        panic!("a failing test");
    }));
    assert!(result.is_err());
    assert!(!names.is_empty() && gone(&names), "removed on unwind");
}

#[test]
fn xdp_pass_programs_attach_to_the_balancers_peers() {
    require_root();
    for topology in [Topology::OneArm, Topology::Inline] {
        let mut lab = Lab::new(topology).expect("lab");
        lab.xdp_pass_on_peers(fulcrum_io::XdpMode::Native).expect("attach");
        let peer = match topology {
            Topology::OneArm => (lab.bridge_ns.clone(), "p1"),
            Topology::Inline => (lab.client.ns.clone(), "eth0"),
        };
        let link = lab.exec(&peer.0, &["ip", "link", "show", "dev", peer.1]).expect("ip link");
        assert!(link.contains("xdp"), "{link}");
        let bal = lab.balancer.iface().v4.to_string();
        lab.exec(&lab.client.ns, &["ping", "-c", "1", "-W", "2", &bal]).expect("traffic still flows");
    }
}
