//! Every example configuration (config/examples) runs on the namespace
//! lab and carries traffic. The lab has its own interface names and
//! addresses, so each example is adapted by plain text substitutions,
//! listed here per file; everything else runs as written. Root only.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use fulcrum::control::api::{Request, Response};
use fulcrum_tests::daemon::{self, LabMode, examples_dir};
use fulcrum_tests::{Lab, http_get, in_netns, require_root, udp_echo};

const SERVER: &str = env!("CARGO_BIN_EXE_lab-server");
const T: Duration = Duration::from_secs(3);

/// What a client sends through a VIP of an example.
enum Probe {
    Http(&'static str, u16),
    Udp(&'static str, u16),
}

struct Example {
    file: &'static str,
    /// The backends' set-up, for each mode the example uses (the first
    /// decides the topology).
    modes: &'static [LabMode],
    /// Example text -> lab text, beyond the interface names, the control
    /// socket, the worker count and the plugins' directory.
    replace: &'static [(&'static str, &'static str)],
    /// Extra ports for the backends' servers.
    serve: &'static [&'static str],
    probes: &'static [Probe],
}

const VIP4: &str = "\"198.18.100.1\"";
const SNAT4: &str = "\"198.18.0.200\"";

const EXAMPLES: &[Example] = &[
    Example {
        file: "dsr-one-arm.toml",
        modes: &[LabMode::Dsr],
        replace: &[("\"198.18.0.100\"", VIP4), ("02:00:00:00:00:0b", "02:f1:00:00:0b:00"), ("02:00:00:00:00:0c", "02:f1:00:00:0c:00")],
        serve: &[],
        probes: &[Probe::Http("198.18.100.1", 80), Probe::Udp("198.18.100.1", 7)],
    },
    Example {
        file: "full-nat-one-arm.toml",
        modes: &[LabMode::FullNat],
        replace: &[("\"198.18.0.100\"", VIP4), ("\"198.18.0.2\"", SNAT4)],
        serve: &["--http", "8443"],
        probes: &[Probe::Http("198.18.100.1", 443)],
    },
    Example {
        file: "gue.toml",
        modes: &[LabMode::Gue],
        replace: &[("\"198.18.0.100\"", VIP4), ("\"198.19.20.11\"", "\"198.18.0.11\""), ("\"198.19.20.12\"", "\"198.18.0.12\"")],
        serve: &["--udp", "443"],
        probes: &[Probe::Udp("198.18.100.1", 443)],
    },
    Example {
        file: "health-persistence-plugin.toml",
        modes: &[LabMode::FullNat],
        // The checks must pass on the lab servers: their pages, their
        // names for content, TCP on the DNS port for the half-open check.
        replace: &[
            ("\"198.18.0.100\"", VIP4),
            ("\"198.18.0.2\"", SNAT4),
            ("\"198.18.0.21\"", "\"198.18.0.11\""),
            ("\"198.18.0.22\"", "\"198.18.0.12\""),
            ("\"198.18.1.22\"", "\"198.18.0.12\""),
            ("\"/healthz\"", "\"/\""),
            ("\"/status\"", "\"/\""),
            ("expect_content = \"ok\"", "expect_content = \"backend\""),
        ],
        serve: &["--udp", "53", "--http", "53", "--http", "8081"],
        probes: &[Probe::Http("198.18.100.1", 80), Probe::Udp("198.18.100.1", 53)],
    },
    Example {
        file: "ipip.toml",
        modes: &[LabMode::Ipip],
        replace: &[
            ("\"198.18.0.100\"", VIP4),
            ("\"198.19.10.11\"", "\"198.18.0.11\""),
            ("\"198.19.10.12\"", "\"198.18.0.12\""),
            ("\"198.19.11.13\"", "\"198.18.0.13\""),
        ],
        serve: &[],
        probes: &[Probe::Http("198.18.100.1", 80)],
    },
    Example {
        file: "ipv6.toml",
        modes: &[LabMode::FullNat, LabMode::Ipip],
        replace: &[
            ("\"2001:db8::100\"", "\"2001:db8:100::1\""),
            ("\"2001:db8::2\"", "\"2001:db8::c8\""),
            ("\"2001:db8:1::11\"", "\"2001:db8::11\""),
            ("\"2001:db8:1::12\"", "\"2001:db8::12\""),
            ("\"198.18.0.100\"", VIP4),
            ("\"198.18.0.2\"", SNAT4),
        ],
        serve: &["--http", "443"],
        probes: &[Probe::Http("2001:db8:100::1", 443), Probe::Http("2001:db8:100::1", 80), Probe::Http("198.18.100.1", 80)],
    },
    Example {
        file: "lab.toml",
        modes: &[LabMode::FullNat],
        replace: &[],
        serve: &[],
        probes: &[Probe::Http("198.18.100.1", 80), Probe::Udp("198.18.100.1", 7)],
    },
    Example {
        file: "nat-inline.toml",
        modes: &[LabMode::Nat],
        replace: &[
            ("\"lb-client\"", "\"eth0\""),
            ("\"lb-server\"", "\"eth1\""),
            ("\"198.18.0.100\"", VIP4),
            ("\"198.19.0.11\"", "\"198.18.2.11\""),
            ("\"198.19.0.12\"", "\"198.18.2.12\""),
            ("\"198.19.0.13\"", "\"198.18.2.13\""),
            ("\"198.19.0.21\"", "\"198.18.2.11\""),
            ("\"198.19.0.22\"", "\"198.18.2.12\""),
        ],
        serve: &["--http", "8080", "--udp", "53"],
        probes: &[Probe::Http("198.18.100.1", 80), Probe::Udp("198.18.100.1", 53)],
    },
];

/// The example's text for `lab`: its substitutions, then the lab's own.
fn adapt(e: &Example, lab: &Lab) -> String {
    let mut text = std::fs::read_to_string(examples_dir().join(e.file)).expect("example");
    for (from, to) in e.replace {
        assert!(text.contains(from), "{}: no {from} to replace", e.file);
        text = text.replace(from, to);
    }
    daemon::example_for_lab(&text, lab)
}

fn run(e: &Example) {
    let mut lab = Lab::new(e.modes[0].topology()).expect("lab");
    let mut decap = Vec::new();
    for &m in e.modes {
        decap.extend(daemon::prepare_hosts(&mut lab, m).expect("host set-up"));
    }
    daemon::start_servers(&mut lab, SERVER.as_ref(), e.modes.iter().any(|m| m.owns_vip()), e.serve).expect("servers");
    let config = adapt(e, &lab);
    let (d, _file) = daemon::start(&lab, &config).unwrap_or_else(|err| panic!("{}: {err}", e.file));
    for p in e.probes {
        for i in 0..5 {
            let r = in_netns(&lab.client.ns, || match *p {
                Probe::Http(a, port) => http_get(SocketAddr::new(a.parse::<IpAddr>().unwrap(), port), "/", T).map(|(s, _)| s == 200),
                Probe::Udp(a, port) => udp_echo(SocketAddr::new(a.parse::<IpAddr>().unwrap(), port), b"x", T).map(|(echo, _)| echo == b"x"),
            })
            .expect("netns");
            assert!(
                matches!(r, Ok(true)),
                "{}: probe {i} of {}: {r:?}\n{config}",
                e.file,
                match p {
                    Probe::Http(a, port) | Probe::Udp(a, port) => format!("{a} port {port}"),
                }
            );
        }
    }
    let vips = fulcrum_config::parse(&config, e.file).expect("valid").vips.len();
    match daemon::ask(&daemon::socket_of(&config), Request::Status) {
        Response::Status(s) => assert_eq!(s.vips.len(), vips, "{}", e.file),
        r => panic!("{r:?}"),
    }
    daemon::stop(d).unwrap_or_else(|err| panic!("{}: {err}", e.file));
}

#[test]
fn every_example_runs_in_the_lab() {
    require_root();
    let mut files: Vec<String> = std::fs::read_dir(examples_dir())
        .expect("config/examples")
        .map(|f| f.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".toml"))
        .collect();
    files.sort();
    let covered: Vec<&str> = EXAMPLES.iter().map(|e| e.file).collect();
    assert_eq!(files, covered, "every example needs its lab adaptation here");
    for e in EXAMPLES {
        run(e);
    }
}
