//! Real frames through AF_XDP: the null forwarder on a namespace lab.
//! Root only (the lab needs CAP_NET_ADMIN): fails with a clear message
//! otherwise.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use fulcrum_tests::{Lab, Proc, Topology, VIP4, VIP6, http_get, in_netns, require_root, udp_echo};

const SERVER: &str = env!("CARGO_BIN_EXE_lab-server");
const NULL_FWD: &str = env!("CARGO_BIN_EXE_null-fwd");
const T: Duration = Duration::from_secs(2);

fn xdp_attached(lab: &Lab, dev: &str) -> bool {
    let out = lab.exec(&lab.balancer.ns, &["ip", "link", "show", "dev", dev]).expect("ip link show");
    out.contains("xdp")
}

/// Host traffic to the balancer's own address: TCP (HTTP) and ICMP.
fn host_traffic_works(lab: &Lab) {
    for ip in [IpAddr::V4(lab.balancer.iface().v4), IpAddr::V6(lab.balancer.iface().v6)] {
        let (status, body) = in_netns(&lab.client.ns, || http_get(SocketAddr::new(ip, 80), "/", T))
            .expect("netns")
            .unwrap_or_else(|e| panic!("HTTP to the balancer's own address {ip}: {e}"));
        assert_eq!((status, body.as_slice()), (200, &b"balancer\n"[..]));
        lab.exec(&lab.client.ns, &["ping", "-c", "1", "-W", "2", &ip.to_string()]).unwrap_or_else(|e| panic!("ping {ip}: {e}"));
    }
}

/// `n` UDP echoes to `vip:7` answered by `backend` (retrying a lost one).
fn echoes_via(lab: &Lab, vip: IpAddr, backend: IpAddr, n: usize) {
    for i in 0..n {
        let payload = format!("datagram {i}");
        let answer = (0..3).find_map(|_| in_netns(&lab.client.ns, || udp_echo(SocketAddr::new(vip, 7), payload.as_bytes(), T)).expect("netns").ok());
        let (reply, from) = answer.unwrap_or_else(|| panic!("no echo for datagram {i} to {vip}"));
        assert_eq!(reply, payload.as_bytes());
        assert_eq!(from, SocketAddr::new(backend, 7), "answered by the backend the forwarder picked");
    }
}

fn start_forwarder(lab: &Lab, args: &[&str]) -> Proc {
    let mut full = vec![NULL_FWD];
    full.extend_from_slice(args);
    let fwd = lab.spawn(&lab.balancer.ns, &full).expect("spawn null-fwd");
    let ready = fwd.wait_for_line(|l| l.starts_with("ready"), Duration::from_secs(10)).unwrap_or_else(|| panic!("null-fwd did not start:\n{}", fwd.output()));
    assert!(ready.contains(&format!("queues={} ", lab.queues)), "one socket per rx queue: {ready}");
    fwd
}

fn wait_detached(lab: &Lab, dev: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while xdp_attached(lab, dev) {
        assert!(Instant::now() < deadline, "XDP program still attached to {dev} after the forwarder exited");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn one_arm(mode: &str, stop: i32) {
    require_root();
    let mut lab = Lab::new(Topology::OneArm).expect("lab");
    lab.start_servers(SERVER.as_ref()).expect("servers");
    let bal = lab.spawn(&lab.balancer.ns, &[SERVER, "--name", "balancer", "--http", "80"]).expect("spawn");
    bal.wait_for_line(|l| l.starts_with("ready"), T).expect("balancer server ready");
    host_traffic_works(&lab);

    let b1 = lab.backends[0].iface().clone();
    let mut fwd = start_forwarder(
        &lab,
        &[
            "--in",
            "eth0",
            "--vip",
            &VIP4.to_string(),
            "--proto",
            "udp",
            "--port",
            "7",
            "--backend-ip",
            &b1.v4.to_string(),
            "--backend-mac",
            &b1.mac_string(),
            "--mode",
            mode,
        ],
    );
    assert!(xdp_attached(&lab, "eth0"), "steering program attached");
    echoes_via(&lab, IpAddr::V4(VIP4), IpAddr::V4(b1.v4), 50);
    host_traffic_works(&lab);

    fwd.signal(stop);
    let status = fwd.wait_timeout(Duration::from_secs(5)).expect("null-fwd exits");
    if stop == libc::SIGTERM {
        assert!(status.success(), "clean exit on SIGTERM:\n{}", fwd.output());
        let summary = fwd.wait_for_line(|l| l.starts_with("null-fwd: rx="), T).expect("summary");
        assert!(!summary.contains("rx=0 ") && !summary.contains("tx=0 "), "{summary}");
    }
    wait_detached(&lab, "eth0");
    host_traffic_works(&lab);
    let unsteered = in_netns(&lab.client.ns, || udp_echo(SocketAddr::new(IpAddr::V4(VIP4), 7), b"x", T)).expect("netns");
    assert!(unsteered.is_err(), "without the forwarder nothing answers on the VIP");
}

#[test]
fn one_arm_native_sigterm_detaches() {
    one_arm("native", libc::SIGTERM);
}

#[test]
fn one_arm_generic_sigkill_detaches() {
    one_arm("generic", libc::SIGKILL);
}

/// IPv6, received on the client side and sent on the server side: the two
/// sockets of each worker share one UMEM.
#[test]
fn inline_ipv6_across_two_interfaces() {
    require_root();
    let mut lab = Lab::new(Topology::Inline).expect("lab");
    lab.start_servers(SERVER.as_ref()).expect("servers");
    // Echo replies go back to the client through the balancer's kernel.
    lab.exec(&lab.balancer.ns, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]).expect("sysctl");
    let b2 = lab.backends[1].iface().clone();
    let mut fwd = start_forwarder(
        &lab,
        &[
            "--in",
            "eth0",
            "--out",
            "eth1",
            "--vip",
            &VIP6.to_string(),
            "--proto",
            "udp",
            "--port",
            "7",
            "--backend-ip",
            &b2.v6.to_string(),
            "--backend-mac",
            &b2.mac_string(),
            "--mode",
            "auto",
        ],
    );
    echoes_via(&lab, IpAddr::V6(VIP6), IpAddr::V6(b2.v6), 50);

    // The client's veth spreads its 50 flows over its tx queues, which are
    // the balancer's rx queues: every queue's socket must have forwarded.
    // (Through the one-arm bridge every frame arrives on queue 0.)
    fwd.signal(libc::SIGTERM);
    assert!(fwd.wait_timeout(Duration::from_secs(5)).is_some_and(|s| s.success()), "{}", fwd.output());
    let summary = fwd.wait_for_line(|l| l.starts_with("null-fwd: rx="), T).expect("summary");
    let per_queue = summary.rsplit("rx_per_queue=").next().unwrap_or_default();
    assert_eq!(per_queue.split(',').count(), lab.queues as usize, "{summary}");
    assert!(per_queue.split(',').all(|n| n != "0"), "{summary}");
}

#[test]
fn bad_arguments_and_privileges_give_clear_errors() {
    require_root();
    let lab = Lab::new(Topology::OneArm).expect("lab");
    let b1 = lab.backends[0].iface().clone();
    let args = |ifname: &'static str| {
        vec![
            NULL_FWD.to_string(),
            "--in".into(),
            ifname.into(),
            "--vip".into(),
            VIP4.to_string(),
            "--proto".into(),
            "udp".into(),
            "--port".into(),
            "7".into(),
            "--backend-ip".into(),
            b1.v4.to_string(),
            "--backend-mac".into(),
            b1.mac_string(),
        ]
    };
    let run = |argv: Vec<String>| {
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut p = lab.spawn(&lab.balancer.ns, &argv).expect("spawn");
        let status = p.wait_timeout(Duration::from_secs(10)).expect("exits");
        (status, p.output())
    };

    let (status, out) = run(args("nope0"));
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("no such network interface: nope0"), "{out}");

    let mut unprivileged =
        vec!["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"].into_iter().map(String::from).collect::<Vec<_>>();
    unprivileged.extend(args("eth0"));
    let (status, out) = run(unprivileged);
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("operation not permitted; run as root"), "{out}");
    assert!(!out.contains("panicked"), "{out}");
}
