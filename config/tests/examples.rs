//! Every file in examples/ validates (a new example is covered by being
//! there), and each shows what its name says.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use fulcrum_config::{Config, HttpProbe, LAB, Mode, Probe, Protocol, Scheduler, Topology, load, parse};

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&dir).expect("examples/").map(|e| e.expect("entry").path()).filter(|p| p.extension().is_some_and(|e| e == "toml")).collect();
    files.sort();
    files
}

fn example(name: &str) -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(name);
    load(&path).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_example_validates() {
    let files = examples();
    assert!(files.len() >= 8, "examples/ lost files: {files:?}");
    let failures: Vec<String> = files.iter().filter_map(|f| load(f).err()).map(|e| e.to_string()).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The documentation ranges only: 198.18.0.0/15 and 2001:db8::/32.
#[test]
fn examples_use_only_test_addresses() {
    let ok = |a: &IpAddr| match a {
        IpAddr::V4(v4) => v4.octets()[0] == 198 && (v4.octets()[1] & 0xfe) == 18,
        IpAddr::V6(v6) => v6.segments()[0] == 0x2001 && v6.segments()[1] == 0x0db8,
    };
    for file in examples() {
        let c = load(&file).expect("valid");
        for vip in &c.vips {
            let mut addrs = vec![vip.address];
            match &vip.mode {
                Mode::FullNat { snat } => addrs.extend(snat),
                Mode::Ipip { source } | Mode::Gue { source, .. } => addrs.push(source.address),
                Mode::Nat | Mode::Dsr => {}
            }
            for b in &vip.backends {
                addrs.push(b.address);
                addrs.extend(b.check.as_ref().map(|c| c.address));
            }
            for a in addrs {
                assert!(ok(&a), "{}: {a} is outside 198.18.0.0/15 and 2001:db8::/32", file.display());
            }
        }
    }
}

#[test]
fn each_example_shows_its_mode() {
    let modes = |c: &Config| c.vips.iter().map(|v| v.mode.clone()).collect::<Vec<_>>();
    let nat = example("nat-inline.toml");
    assert!(matches!(nat.topology, Topology::Inline { .. }));
    assert!(modes(&nat).iter().all(|m| *m == Mode::Nat));
    assert!(nat.vips[0].backends.iter().any(|b| b.weight == 0), "shows a drain");

    let full = example("full-nat-one-arm.toml");
    assert!(matches!(full.topology, Topology::OneArm(_)));
    assert!(modes(&full).iter().all(|m| matches!(m, Mode::FullNat { .. })));
    assert!(full.vips.iter().any(|v| v.backends.is_empty()), "shows an explicitly empty pool");

    let dsr = example("dsr-one-arm.toml");
    assert!(modes(&dsr).iter().all(|m| *m == Mode::Dsr));
    assert!(dsr.vips.iter().any(|v| v.port == 0), "shows an all-ports VIP");
    assert!(dsr.vips[0].backends.iter().all(|b| b.mac.is_some()));

    assert!(modes(&example("ipip.toml")).iter().all(|m| matches!(m, Mode::Ipip { .. })));
    let gue = example("gue.toml");
    assert!(modes(&gue).iter().all(|m| matches!(m, Mode::Gue { port, .. } if port.get() == 6080)));

    let v6 = example("ipv6.toml");
    assert!(v6.vips.iter().filter(|v| v.address.is_ipv6()).count() >= 2);

    let hp = example("health-persistence-plugin.toml");
    let web = &hp.vips[0];
    assert!(matches!(&web.scheduler, Scheduler::Plugin(p) if p.ends_with("target/plugins/least-connections.wasm")));
    assert!(web.persistence.is_some());
    assert!(web.health.as_ref().is_some_and(|h| h.plugin.is_some()));
    let checks: Vec<&Probe> = web.backends.iter().map(|b| &b.check.as_ref().expect("checked").probe).collect();
    assert!(matches!(checks[0], Probe::Http(HttpProbe { port: 80, content: Some(_), .. })));
    assert!(matches!(checks[2], Probe::Http(HttpProbe { port: 8081, .. })), "a per-backend override");
    assert_eq!(hp.vips[1].backends[1].check.as_ref().map(|c| c.address.to_string()).as_deref(), Some("198.18.1.22"));
}

/// The embedded default the demo uses: one-arm full-NAT 198.18.100.1:80/tcp
/// over the lab's three backends on its balancer's "eth0", and UDP echo on
/// port 7.
#[test]
fn lab_default() {
    let lab = parse(LAB, "lab.toml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(lab, example("lab.toml"));
    assert!(matches!(&lab.topology, Topology::OneArm(i) if i.name == "eth0"));
    let names: Vec<String> = lab.vips.iter().map(|v| v.name()).collect();
    assert_eq!(names, ["198.18.100.1:80/tcp", "198.18.100.1:7/udp"]);
    for vip in &lab.vips {
        assert!(matches!(vip.mode, Mode::FullNat { .. }));
        let backends: Vec<String> = vip.backends.iter().map(|b| b.address.to_string()).collect();
        assert_eq!(backends, ["198.18.0.11", "198.18.0.12", "198.18.0.13"]);
    }
    assert_eq!(lab.vips[1].protocol, Protocol::Udp);
}

/// The HA pair's two files validate and differ only in who is who.
#[test]
fn the_ha_pair_examples_mirror_each_other() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ha");
    let [a, b] = ["fulcrum-a.toml", "fulcrum-b.toml"].map(|f| load(&dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}")));
    let (sa, sb) = (a.sync.clone().expect("a: [sync]"), b.sync.clone().expect("b: [sync]"));
    assert_eq!((sa.peers.as_slice(), sb.peers.as_slice()), (&[sb.listen][..], &[sa.listen][..]));
    assert_eq!(sa.key, sb.key);
    assert_eq!(Config { sync: None, ..a }, Config { sync: None, ..b });
}

/// The scale-out node announces its VIPs through ExaBGP and drains on
/// SIGTERM; dsr, so any node places a flow on the same backend.
#[test]
fn the_ecmp_node_example_announces_and_drains() {
    let c = load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ecmp/fulcrum.toml")).unwrap_or_else(|e| panic!("{e}"));
    let bgp = c.bgp.expect("[bgp]");
    assert_eq!((bgp.speaker, bgp.next_hop), (fulcrum_config::Speaker::ExaBgp, None));
    assert!(c.daemon.shutdown_grace.is_some());
    assert!(c.vips.iter().all(|v| v.mode == Mode::Dsr));
}

/// The full-NAT fleet node owns one of its VIP's SNAT addresses and syncs
/// with every other node, all forwarding.
#[test]
fn the_full_nat_fleet_example_owns_one_snat_address_and_syncs() {
    let c = load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ecmp/fulcrum-full-nat.toml")).unwrap_or_else(|e| panic!("{e}"));
    let own = c.bgp.expect("[bgp]").snat_own;
    let Mode::FullNat { snat } = &c.vips[0].mode else { panic!("a full-NAT VIP: {:?}", c.vips[0].mode) };
    assert_eq!((own.len(), snat.len()), (1, 3));
    assert!(snat.contains(&own[0]));
    let sync = c.sync.expect("[sync]");
    assert_eq!((sync.role, sync.peers.len()), (fulcrum_config::HaRole::Master, 2));
}
