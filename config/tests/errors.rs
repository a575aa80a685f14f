//! What operators see when a config is wrong: the file, the line, the
//! field and what was expected, for every problem in the file at once.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fulcrum_config::*;

/// One interface (lines 1-3), so that a test's own text starts at line 4.
const HEAD: &str = "[[interface]]\nname = \"lb0\"\nrole = \"one-arm\"\n";
/// A full-NAT VIP at lines 4-9; a test's text after it starts at line 10.
const VIP: &str = "[[vip]]\naddress = \"198.18.0.100\"\nprotocol = \"tcp\"\nport = 80\nmode = \"full-nat\"\nsnat = \"198.18.0.2\"\n";

fn check(text: &str) -> Result<Config, Vec<String>> {
    parse(text, "fulcrum.toml").map_err(|e| e.iter().map(ToString::to_string).collect())
}

/// The errors for HEAD + `text`.
fn errors(text: &str) -> Vec<String> {
    match check(&format!("{HEAD}{text}")) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e,
    }
}

fn valid(text: &str) -> Config {
    check(&format!("{HEAD}{text}")).unwrap_or_else(|e| panic!("{}", e.join("\n")))
}

/// `VIP` with `extra` appended (its first line is 10).
fn vip(extra: &str) -> Vec<String> {
    errors(&format!("{VIP}{extra}"))
}

#[test]
fn the_issues_example_word_for_word() {
    let text = format!("{HEAD}\n{VIP}[[vip.backend]]\naddress = \"198.18.0.11\"\n[[vip.backend]]\nweight = 70000\naddress = \"198.18.0.12\"\n");
    assert_eq!(check(&text).unwrap_err(), ["fulcrum.toml:14: vip 198.18.0.100:80/tcp, backend 2: weight must be 0..=65535, got 70000"]);
}

#[test]
fn every_error_is_reported_in_line_order() {
    let text = r#"[daemon]
xdp_mode = "fast"
poll = "spin"
workers = 0

[[interface]]
name = "lb0"
role = "one-arm"
mtu = 100

[timeouts]
udp = "5 parsecs"
tcp_syn = "0s"

[[vip]]
address = "198.18.0.100"
protocol = "tcp"
port = 80
mode = "dsr"
snat = "198.18.0.2"

[[vip.backend]]
address = "198.18.0.11"
port = 8080
wieght = 2

[[vip.backend]]
address = "2001:db8::12"
weight = -1
"#;
    assert_eq!(
        check(text).unwrap_err(),
        [
            r#"fulcrum.toml:2: daemon: xdp_mode must be one of "native", "generic", "auto", got "fast""#,
            r#"fulcrum.toml:3: daemon: poll must be one of "adaptive", "busy", got "spin""#,
            "fulcrum.toml:4: daemon: workers must be 1..=1024, got 0",
            "fulcrum.toml:9: interface lb0: mtu must be 1280..=9216, got 100",
            r#"fulcrum.toml:12: timeouts: udp must be a duration string such as "30s", "15m" or "1h 30m", got "5 parsecs" (unknown time unit "parsecs", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations))"#,
            "fulcrum.toml:13: timeouts: tcp_syn must be between 1s and 7days, got 0s",
            "fulcrum.toml:20: vip 198.18.0.100:80/tcp: snat is only for mode full-nat, not dsr",
            "fulcrum.toml:24: vip 198.18.0.100:80/tcp, backend 1: port must be omitted or 80: mode dsr delivers the client's packet unchanged, got 8080",
            "fulcrum.toml:25: vip 198.18.0.100:80/tcp, backend 1: unknown field `wieght`, expected one of `address`, `port`, `weight`, `mac`, `health`",
            "fulcrum.toml:28: vip 198.18.0.100:80/tcp, backend 2: address 2001:db8::12 is IPv6 but the VIP is IPv4: all addresses of a VIP are of one family",
            "fulcrum.toml:29: vip 198.18.0.100:80/tcp, backend 2: weight must be 0..=65535, got -1",
        ]
    );
}

/// A file wrong throughout shows its first problems and counts the rest;
/// all of them stay available.
#[test]
fn long_error_lists_are_cut_after_the_first_twenty() {
    let backends = |n: usize| -> String { (0..n).map(|i| format!("[[vip.backend]]\naddress = \"198.18.1.{i}\"\nweight = 70000\n")).collect() };
    let line = |i: usize| format!("fulcrum.toml:{}: vip 198.18.0.100:80/tcp, backend {}: weight must be 0..=65535, got 70000", 12 + 3 * i, i + 1);
    let all = |n: usize| parse(&format!("{HEAD}{VIP}{}", backends(n)), "fulcrum.toml").unwrap_err();

    assert_eq!(ConfigErrors::MAX_SHOWN, 20);
    let e = all(25);
    assert_eq!(e.len(), 25);
    let mut expected: Vec<String> = (0..20).map(line).collect();
    expected.push("... and 5 more problems".into());
    assert_eq!(e.to_string(), expected.join("\n"));
    assert_eq!(format!("{e:#}"), (0..25).map(line).collect::<Vec<_>>().join("\n"));
    assert_eq!(e.iter().count(), 25);

    let e = all(21);
    assert_eq!(e.to_string().lines().last(), Some("... and 1 more problem"));
    assert_eq!(e.to_string().lines().count(), 21);
    let e = all(20);
    assert_eq!(e.to_string(), (0..20).map(line).collect::<Vec<_>>().join("\n"));
}

#[test]
fn toml_syntax_errors_have_lines() {
    let errors = check("[daemon]\nworkers = \n\n[[vip]\n").unwrap_err();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].starts_with("fulcrum.toml:2: TOML syntax: "), "{errors:?}");
    assert!(errors[1].starts_with("fulcrum.toml:4: TOML syntax: "), "{errors:?}");
}

#[test]
fn unknown_keys_anywhere_are_errors_with_their_line() {
    let e = errors(&format!(
        "[metrics]\nlisten = 1\n[daemon]\nsocket = \"/x\"\n{VIP}colour = \"blue\"\nhealth = {{ kind = \"icmp\", every = \"1s\" }}\n[[vip.backend]]\naddress = \"198.18.0.11\"\nhealth = {{ prot = 1 }}\n"
    ));
    assert_eq!(
        e,
        [
            "fulcrum.toml:4: unknown section `metrics`, expected one of `daemon`, `interface`, `limits`, `timeouts`, `plugins`, `vip`, `sync`, `bgp`",
            "fulcrum.toml:7: daemon: unknown field `socket`, expected one of `control_socket`, `metrics_listen`, `state_file`, `xdp_mode`, `poll`, `workers`, `cores`, `shutdown_grace`",
            "fulcrum.toml:14: vip 198.18.0.100:80/tcp: unknown field `colour`, expected one of `address`, `protocol`, `port`, `mode`, `snat`, `tunnel_source`, `gue_port`, `scheduler`, `syn_proxy`, `persistence`, `health`, `backend`",
            "fulcrum.toml:15: vip 198.18.0.100:80/tcp: health: unknown field `every`, expected one of `kind`, `interval`, `timeout`, `rise`, `fall`, `path`, `expect_status`, `expect_content`, `host`, `sni`, `verify`, `ca_file`, `payload`, `payload_hex`, `expect_reply`, `expect_reply_hex`, `query_name`, `query_type`, `expect_address`, `address`, `port`, `on_down`, `policy`, `through_vip`",
            "fulcrum.toml:18: vip 198.18.0.100:80/tcp, backend 1: health: unknown field `prot`, expected one of `kind`, `interval`, `timeout`, `rise`, `fall`, `path`, `expect_status`, `expect_content`, `host`, `sni`, `verify`, `ca_file`, `payload`, `payload_hex`, `expect_reply`, `expect_reply_hex`, `query_name`, `query_type`, `expect_address`, `address`, `port`, `on_down`, `policy`, `through_vip`",
        ]
    );
}

/// A name echoed from the file cannot forge another `FILE:LINE:` line or
/// send a terminal escape: control characters are shown escaped.
#[test]
fn names_from_the_file_are_escaped() {
    let text = format!("\"\\u001b[2Jx\\ny\" = 1\n{HEAD}[daemon]\n\"a\\nfulcrum.toml:1: forged\\u001b[31m\" = 1\n");
    let all = parse(&text, "fulcrum.toml").unwrap_err().to_string();
    assert_eq!(
        all,
        [
            "fulcrum.toml:1: unknown section `\\u{1b}[2Jx\\ny`, expected one of `daemon`, `interface`, `limits`, `timeouts`, `plugins`, `vip`, `sync`, `bgp`",
            "fulcrum.toml:6: daemon: unknown field `a\\nfulcrum.toml:1: forged\\u{1b}[31m`, expected one of `control_socket`, `metrics_listen`, `state_file`, `xdp_mode`, `poll`, `workers`, `cores`, `shutdown_grace`",
        ]
        .join("\n")
    );
    assert_eq!(all.lines().count(), 2);
    assert!(!all.contains('\u{1b}'));
    // Values were always shown quoted and escaped; that stays as it was.
    assert_eq!(
        vip("scheduler = \"a\\u001b[0m\\\\b\"\nbackend = []\n"),
        [r#"fulcrum.toml:10: vip 198.18.0.100:80/tcp: scheduler must be "maglev" or a path to a .wasm plugin, got "a\u{1b}[0m\\b""#]
    );
}

#[test]
fn values_of_the_wrong_type_name_the_field_and_what_it_takes() {
    let e = errors(
        "[[vip]]\naddress = 5\nprotocol = \"tcp\"\nport = \"80\"\nmode = true\nbackend = []\n[limits]\nsnat_ports = [1, 2]\n[timeouts]\nudp = 1979-05-27\n",
    );
    assert_eq!(
        e,
        [
            "fulcrum.toml:5: vip 1: address must be a string, got 5",
            r#"fulcrum.toml:7: vip 1: port must be an integer 0..=65535, got "80""#,
            r#"fulcrum.toml:8: vip 1: mode must be one of "nat", "full-nat", "dsr", "ipip", "gue", got a boolean"#,
            "fulcrum.toml:11: limits: snat_ports must be a string, got an array",
            r#"fulcrum.toml:13: timeouts: udp must be a duration string such as "30s", "15m" or "1h 30m", got a date-time"#,
        ]
    );
    assert_eq!(
        errors("[[vip]]\nhealth = 3\nbackend = [1]\n"),
        [
            "fulcrum.toml:5: vip 1: health: invalid type: integer `3`, expected a table ([vip.health])",
            "fulcrum.toml:6: vip 1, backend 1: invalid type: integer `1`, expected a table ([[vip.backend]])",
        ]
    );
    assert_eq!(check(&format!("vip = 1\n{HEAD}")), Err(vec!["fulcrum.toml:1: vip must be an array of tables ([[vip]]), got an integer".to_string()]));
}

/// `[vip]` for `[[vip]]` is the likely slip; TOML itself only says
/// "duplicate key" or that a table is not an array.
#[test]
fn a_single_table_where_an_array_of_tables_belongs_says_so() {
    let hint = |line: usize, name: &str| format!("[{name}] at line {line} is a single table: write [[{name}]] (an array of tables) for each one");
    assert_eq!(errors("[vip]\naddress = \"198.18.0.1\"\n"), ["fulcrum.toml:4: vip must be an array of tables: write [[vip]] for each one, not [vip]"]);
    assert_eq!(errors("[vip]\naddress = \"198.18.0.1\"\n[vip]\nport = 1\n"), [format!("fulcrum.toml:6: TOML syntax: duplicate key; {}", hint(4, "vip"))]);
    assert_eq!(
        errors("[[vip]]\naddress = \"198.18.0.1\"\n[ vip ] # the web\nport = 1\n"),
        [format!("fulcrum.toml:6: TOML syntax: duplicate key; {}", hint(6, "vip"))]
    );
    assert_eq!(errors("[vip]\naddress = \"198.18.0.1\"\n[[vip]]\nport = 1\n"), [format!("fulcrum.toml:6: TOML syntax: duplicate key; {}", hint(4, "vip"))]);
    assert_eq!(errors("[interface]\nname = \"lb1\"\n"), [format!("fulcrum.toml:4: TOML syntax: duplicate key; {}", hint(4, "interface"))]);
    // Alone, and nothing else said: not "no interface" besides.
    assert_eq!(
        check("[interface]\nname = \"lb0\"\nrole = \"one-arm\"\n"),
        Err(vec!["fulcrum.toml:1: interface must be an array of tables: write [[interface]] for each one, not [interface]".to_string()])
    );
    assert_eq!(
        vip("[vip.backend]\naddress = \"198.18.0.11\"\n"),
        ["fulcrum.toml:10: vip 198.18.0.100:80/tcp: vip.backend must be an array of tables: write [[vip.backend]] for each one, not [vip.backend]"]
    );
    assert_eq!(
        vip("[vip.backend]\naddress = \"198.18.0.11\"\n[[vip.backend]]\naddress = \"198.18.0.12\"\n"),
        [format!("fulcrum.toml:12: TOML syntax: duplicate key; {}", hint(10, "vip.backend"))]
    );
    // A genuine duplicate of a single table gets no such hint.
    assert_eq!(vip("[vip.health]\nkind = \"icmp\"\n[vip.health]\n"), ["fulcrum.toml:12: TOML syntax: duplicate key"]);
}

/// A bare number has no unit: the message says a duration is a string
/// with one.
#[test]
fn bare_numbers_for_durations_say_what_a_duration_looks_like() {
    let like = r#"a duration string such as "30s", "15m" or "1h 30m""#;
    assert_eq!(
        errors("[timeouts]\ntcp_syn = 30\n"),
        [format!(r#"fulcrum.toml:5: timeouts: tcp_syn must be {like}, got the number 30 without a unit ("30s" is 30 seconds)"#)]
    );
    assert_eq!(
        vip("health = { kind = \"icmp\", interval = 2 }\nbackend = []\n"),
        [format!(r#"fulcrum.toml:10: vip 198.18.0.100:80/tcp: health.interval must be {like}, got the number 2 without a unit ("2s" is 2 seconds)"#)]
    );
    assert_eq!(
        vip("persistence = { kind = \"source-ip\", timeout = 1.5 }\nbackend = []\n"),
        [format!("fulcrum.toml:10: vip 198.18.0.100:80/tcp: persistence.timeout must be {like}, got a float")]
    );
}

#[test]
fn required_fields() {
    assert_eq!(
        errors("[[vip]]\nport = 80\n[[vip.backend]]\nport = 81\n"),
        [
            "fulcrum.toml:4: vip 1: address is required",
            "fulcrum.toml:4: vip 1: protocol is required",
            "fulcrum.toml:4: vip 1: mode is required",
            "fulcrum.toml:6: vip 1, backend 1: address is required",
        ]
    );
}

#[test]
fn addresses_must_be_unicast_and_of_the_vips_family() {
    let e = vip(concat!(
        "[[vip.backend]]\naddress = \"0.0.0.0\"\n",
        "[[vip.backend]]\naddress = \"224.0.0.1\"\n",
        "[[vip.backend]]\naddress = \"127.0.0.1\"\n",
        "[[vip.backend]]\naddress = \"198.18.0.256\"\n",
        "[[vip.backend]]\naddress = \"198.18.0.100\"\n",
        "[[vip.backend]]\naddress = \"198.18.0.2\"\n",
    ));
    assert_eq!(
        e,
        [
            "fulcrum.toml:11: vip 198.18.0.100:80/tcp, backend 1: address must be a unicast address, got 0.0.0.0 (unspecified)",
            "fulcrum.toml:13: vip 198.18.0.100:80/tcp, backend 2: address must be a unicast address, got 224.0.0.1 (multicast)",
            "fulcrum.toml:15: vip 198.18.0.100:80/tcp, backend 3: address must be a unicast address, got 127.0.0.1 (loopback)",
            r#"fulcrum.toml:17: vip 198.18.0.100:80/tcp, backend 4: address must be an IPv4 or IPv6 address, got "198.18.0.256""#,
            "fulcrum.toml:19: vip 198.18.0.100:80/tcp, backend 5: address 198.18.0.100 is the VIP's own",
            "fulcrum.toml:21: vip 198.18.0.100:80/tcp, backend 6: address 198.18.0.2 is a snat address of the VIP",
        ]
    );
    let families = errors(concat!(
        "[[vip]]\naddress = \"2001:db8::100\"\nprotocol = \"tcp\"\nmode = \"full-nat\"\nsnat = \"198.18.0.2\"\nbackend = []\n",
        "[[vip]]\naddress = \"2001:db8::100\"\nprotocol = \"udp\"\nmode = \"gue\"\ntunnel_source = \"198.18.200.0/24\"\nbackend = []\n",
        "[[vip]]\naddress = \"::ffff:198.18.0.1\"\nprotocol = \"udp\"\nmode = \"nat\"\nbackend = []\n",
    ));
    assert_eq!(
        families,
        [
            "fulcrum.toml:8: vip [2001:db8::100]:*/tcp: snat 198.18.0.2 is IPv4 but the VIP is IPv6: all addresses of a VIP are of one family",
            "fulcrum.toml:14: vip [2001:db8::100]:*/udp: tunnel_source 198.18.200.0/24 is IPv4 but the VIP is IPv6: all addresses of a VIP are of one family",
            "fulcrum.toml:17: vip 3: address must be a unicast address, got ::ffff:198.18.0.1 (IPv4-mapped: write the IPv4 address)",
        ]
    );
}

#[test]
fn mode_fields_are_required_by_their_mode_and_forbidden_elsewhere() {
    let e = errors(concat!(
        "[[vip]]\naddress = \"198.18.0.100\"\nprotocol = \"tcp\"\nmode = \"full-nat\"\nbackend = []\n",
        "[[vip]]\naddress = \"198.18.0.101\"\nprotocol = \"tcp\"\nmode = \"nat\"\nsnat = \"198.18.0.2\"\ntunnel_source = \"198.18.200.0/24\"\ngue_port = 6080\nbackend = []\n",
        "[[vip]]\naddress = \"198.18.0.102\"\nprotocol = \"tcp\"\nmode = \"ipip\"\nbackend = []\n",
        "[[vip]]\naddress = \"198.18.0.103\"\nprotocol = \"tcp\"\nmode = \"full-nat\"\nsnat = \"198.18.0.103\"\nbackend = []\n",
    ));
    assert_eq!(
        e,
        [
            "fulcrum.toml:7: vip 198.18.0.100:*/tcp: mode full-nat needs snat: the balancer addresses that backends reply to (one, a list, or a prefix)",
            "fulcrum.toml:13: vip 198.18.0.101:*/tcp: snat is only for mode full-nat, not nat",
            "fulcrum.toml:14: vip 198.18.0.101:*/tcp: tunnel_source is only for mode ipip and gue, not nat",
            "fulcrum.toml:15: vip 198.18.0.101:*/tcp: gue_port is only for mode gue, not nat",
            r#"fulcrum.toml:20: vip 198.18.0.102:*/tcp: mode ipip needs tunnel_source: the prefix outer source addresses are taken from, like "198.18.200.0/24""#,
            "fulcrum.toml:26: vip 198.18.0.103:*/tcp: snat 198.18.0.103 is the VIP's own address: use a balancer address that serves no VIP",
        ]
    );
}

#[test]
fn snat_may_not_be_another_vips_address() {
    let e = errors(&format!("{VIP}backend = []\n[[vip]]\naddress = \"198.18.0.2\"\nprotocol = \"udp\"\nmode = \"nat\"\nbackend = []\n"));
    assert_eq!(
        e,
        ["fulcrum.toml:9: vip 198.18.0.100:80/tcp: snat 198.18.0.2 is the address of vip 198.18.0.2:*/udp: use a balancer address that serves no VIP"]
    );
}

#[test]
fn snat_is_an_address_a_list_or_a_prefix() {
    let full_nat =
        |vip: &str, snat: &str| valid(&format!("[[vip]]\naddress = \"{vip}\"\nprotocol = \"tcp\"\nmode = \"full-nat\"\nsnat = {snat}\nbackend = []\n"));
    let snat = |c: Config| match &c.vips[0].mode {
        Mode::FullNat { snat } => snat.iter().map(ToString::to_string).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(snat(full_nat("198.18.0.100", r#""198.18.0.2""#)), ["198.18.0.2"]);
    assert_eq!(snat(full_nat("198.18.0.100", r#"["198.18.0.2", "198.18.9.1"]"#)), ["198.18.0.2", "198.18.9.1"]);
    assert_eq!(snat(full_nat("198.18.0.100", r#""198.18.9.0/30""#)), ["198.18.9.0", "198.18.9.1", "198.18.9.2", "198.18.9.3"]);
    assert_eq!(snat(full_nat("2001:db8::100", r#""2001:db8:9::/127""#)), ["2001:db8:9::", "2001:db8:9::1"]);
    assert_eq!(snat(full_nat("198.18.0.100", r#""198.18.9.0/26""#)).len(), 64);
    assert_eq!(snat(full_nat("2001:db8::100", r#""2001:db8:9::/122""#)).len(), 64);
}

#[test]
fn snat_lists_and_prefixes_are_checked_address_by_address() {
    let full_nat = |n: u8, vip: &str, snat: &str| {
        format!("[[vip]]\naddress = \"{vip}\"\nprotocol = \"tcp\"\nport = {n}\nmode = \"full-nat\"\nsnat = {snat}\nbackend = []\n")
    };
    let many: Vec<String> = (0..65).map(|i| format!("\"198.18.9.{i}\"")).collect();
    let e = errors(
        &[
            full_nat(1, "198.18.0.100", r#""198.18.9.0/25""#),
            full_nat(2, "2001:db8::100", r#""2001:db8:9::/64""#),
            full_nat(3, "198.18.0.100", "[]"),
            full_nat(4, "198.18.0.100", &format!("[{}]", many.join(", "))),
            full_nat(5, "198.18.0.100", r#"["198.18.9.1", "2001:db8::1"]"#),
            full_nat(6, "198.18.0.100", r#"["198.18.9.1", "198.18.0.100"]"#),
            full_nat(7, "198.18.0.100", r#"["198.18.9.1", "198.18.9.1"]"#),
            full_nat(8, "198.18.0.100", r#"["198.18.9.1", "224.0.0.1", 5]"#),
            full_nat(9, "198.18.0.100", r#""198.18.9.1/29""#),
            full_nat(10, "198.18.0.100", "true"),
            full_nat(11, "198.18.0.100", r#""198.18.0.96/29""#),
        ]
        .concat(),
    );
    assert_eq!(
        e,
        [
            r#"fulcrum.toml:9: vip 198.18.0.100:1/tcp: snat 198.18.9.0/25 is too wide: at most 64 addresses (a /26, or a /122 in IPv6)"#,
            r#"fulcrum.toml:16: vip [2001:db8::100]:2/tcp: snat 2001:db8:9::/64 is too wide: at most 64 addresses (a /26, or a /122 in IPv6)"#,
            "fulcrum.toml:23: vip 198.18.0.100:3/tcp: snat must list 1 to 64 addresses, got 0",
            "fulcrum.toml:30: vip 198.18.0.100:4/tcp: snat must list 1 to 64 addresses, got 65",
            "fulcrum.toml:37: vip 198.18.0.100:5/tcp: snat 2001:db8::1 is IPv6 but the VIP is IPv4: all addresses of a VIP are of one family",
            "fulcrum.toml:44: vip 198.18.0.100:6/tcp: snat 198.18.0.100 is the VIP's own address: use a balancer address that serves no VIP",
            "fulcrum.toml:51: vip 198.18.0.100:7/tcp: snat 198.18.9.1 is listed twice (first at line 51)",
            "fulcrum.toml:58: vip 198.18.0.100:8/tcp: snat must be a unicast address, got 224.0.0.1 (multicast)",
            "fulcrum.toml:58: vip 198.18.0.100:8/tcp: snat must be a string, got 5",
            "fulcrum.toml:65: vip 198.18.0.100:9/tcp: snat 198.18.9.1/29 has bits set after the first 29: did you mean 198.18.9.0/29?",
            r#"fulcrum.toml:72: vip 198.18.0.100:10/tcp: snat must be an address, a list of addresses or a prefix like "198.18.9.0/29", got a boolean"#,
            "fulcrum.toml:79: vip 198.18.0.100:11/tcp: snat 198.18.0.100 is the VIP's own address: use a balancer address that serves no VIP",
        ]
    );
    // Every address of a list or prefix is checked against the other
    // VIPs' addresses and the VIP's backends.
    let e = errors(concat!(
        "[[vip]]\naddress = \"198.18.0.100\"\nprotocol = \"tcp\"\nmode = \"full-nat\"\nsnat = \"198.18.9.0/29\"\n",
        "[[vip.backend]]\naddress = \"198.18.9.2\"\n",
        "[[vip]]\naddress = \"198.18.9.5\"\nprotocol = \"udp\"\nmode = \"full-nat\"\nsnat = [\"198.18.8.1\", \"198.18.9.5\"]\nbackend = []\n",
        "[[vip]]\naddress = \"198.18.8.1\"\nprotocol = \"udp\"\nmode = \"nat\"\nbackend = []\n",
    ));
    assert_eq!(
        e,
        [
            "fulcrum.toml:8: vip 198.18.0.100:*/tcp: snat 198.18.9.5 is the address of vip 198.18.9.5:*/udp: use a balancer address that serves no VIP",
            "fulcrum.toml:10: vip 198.18.0.100:*/tcp, backend 1: address 198.18.9.2 is a snat address of the VIP",
            "fulcrum.toml:15: vip 198.18.9.5:*/udp: snat 198.18.9.5 is the VIP's own address: use a balancer address that serves no VIP",
        ]
    );
}

#[test]
fn tunnel_source_is_a_prefix_without_host_bits() {
    let tunnel =
        |source: &str| format!("[[vip]]\naddress = \"198.18.0.100\"\nprotocol = \"udp\"\nmode = \"gue\"\ntunnel_source = \"{source}\"\nbackend = []\n");
    assert_eq!(
        errors(&tunnel("198.18.200.7/24")),
        ["fulcrum.toml:8: vip 198.18.0.100:*/udp: tunnel_source 198.18.200.7/24 has bits set after the first 24: did you mean 198.18.200.0/24?"]
    );
    assert_eq!(
        errors(&tunnel("198.18.200.0/33")),
        [r#"fulcrum.toml:8: vip 198.18.0.100:*/udp: tunnel_source must be a prefix like "198.18.200.0/24" or "2001:db8:200::/64", got "198.18.200.0/33""#]
    );
    assert_eq!(errors(&tunnel("0.0.0.0/0")), ["fulcrum.toml:8: vip 198.18.0.100:*/udp: tunnel_source must be a unicast prefix, got 0.0.0.0/0 (unspecified)"]);
    let c = valid(&tunnel("198.18.200.9"));
    assert_eq!(c.vips[0].mode, Mode::Gue { source: Prefix { address: "198.18.200.9".parse().unwrap(), len: 32 }, port: 6080.try_into().unwrap() });
}

#[test]
fn ports_backends_keep_when_packets_are_delivered_unchanged() {
    let mode = |m: &str, vip_port: &str, backend_port: u16| {
        let extra = if m == "ipip" || m == "gue" { "tunnel_source = \"198.18.200.0/24\"\n" } else { "" };
        errors(&format!(
            "[[vip]]\naddress = \"198.18.0.100\"\nprotocol = \"tcp\"\n{vip_port}mode = \"{m}\"\n{extra}[[vip.backend]]\naddress = \"198.18.0.11\"\nport = {backend_port}\n"
        ))
    };
    for m in ["dsr", "ipip", "gue"] {
        let e = mode(m, "port = 80\n", 8080);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].ends_with(&format!("backend 1: port must be omitted or 80: mode {m} delivers the client's packet unchanged, got 8080")), "{e:?}");
    }
    assert_eq!(
        mode("nat", "", 8080),
        ["fulcrum.toml:10: vip 198.18.0.100:*/tcp, backend 1: port must be omitted: the VIP serves every port and each flow keeps its own, got 8080"]
    );
    // Naming the VIP's own port is keeping it.
    valid("[[vip]]\naddress = \"198.18.0.100\"\nprotocol = \"tcp\"\nport = 80\nmode = \"dsr\"\n[[vip.backend]]\naddress = \"198.18.0.11\"\nport = 80\n");
}

#[test]
fn duplicates() {
    let e = errors(&format!(
        "{VIP}[[vip.backend]]\naddress = \"198.18.0.11\"\n[[vip.backend]]\naddress = \"198.18.0.11\"\nport = 80\n[[vip.backend]]\naddress = \"198.18.0.11\"\nport = 81\n{VIP}backend = []\n"
    ));
    assert_eq!(
        e,
        [
            "fulcrum.toml:12: vip 198.18.0.100:80/tcp, backend 2: 198.18.0.11:80 is already backend 1 (line 10)",
            "fulcrum.toml:18: vip 198.18.0.100:80/tcp: defined twice (first at line 4)",
        ]
    );
    // The same address on another protocol or port is another VIP.
    let c = valid(&format!("{VIP}backend = []\n{}backend = []\n", VIP.replace("tcp", "udp")));
    assert_eq!(c.vips.len(), 2);
}

/// The third and later duplicates name the first, as the second does.
#[test]
fn every_duplicate_names_the_first() {
    let backend = "[[vip.backend]]\naddress = \"198.18.0.11\"\n";
    let e = errors(&format!("{VIP}{backend}{backend}{backend}{VIP}backend = []\n{VIP}backend = []\n"));
    assert_eq!(
        e,
        [
            "fulcrum.toml:12: vip 198.18.0.100:80/tcp, backend 2: 198.18.0.11:80 is already backend 1 (line 10)",
            "fulcrum.toml:14: vip 198.18.0.100:80/tcp, backend 3: 198.18.0.11:80 is already backend 1 (line 10)",
            "fulcrum.toml:16: vip 198.18.0.100:80/tcp: defined twice (first at line 4)",
            "fulcrum.toml:23: vip 198.18.0.100:80/tcp: defined twice (first at line 4)",
        ]
    );
    let lb0 = "[[interface]]\nname = \"lb0\"\nrole = \"one-arm\"\n";
    assert_eq!(
        check(&format!("{lb0}{lb0}{lb0}")).unwrap_err(),
        ["fulcrum.toml:5: interface lb0: declared twice (first at line 2)", "fulcrum.toml:8: interface lb0: declared twice (first at line 2)"]
    );
    assert_eq!(
        errors("[daemon]\ncores = [1, 1, 1]\n"),
        ["fulcrum.toml:5: daemon: cores[1]: CPU 1 is listed twice (also cores[0])", "fulcrum.toml:5: daemon: cores[2]: CPU 1 is listed twice (also cores[0])"]
    );
}

#[test]
fn an_empty_pool_must_be_explicit() {
    assert_eq!(
        vip(""),
        ["fulcrum.toml:4: vip 198.18.0.100:80/tcp: no backend: add [[vip.backend]] entries, or write `backend = []` for an empty pool on purpose"]
    );
    assert!(valid(&format!("{VIP}backend = []\n")).vips[0].backends.is_empty());
}

#[test]
fn backend_fields() {
    let e = vip(
        "[[vip.backend]]\naddress = \"198.18.0.11\"\nport = 65536\nweight = 65536\nmac = \"02:00:00:00:00\"\n[[vip.backend]]\naddress = \"198.18.0.12\"\nmac = \"03:00:00:00:00:01\"\n",
    );
    assert_eq!(
        e,
        [
            "fulcrum.toml:12: vip 198.18.0.100:80/tcp, backend 1: port must be 0..=65535, got 65536",
            "fulcrum.toml:13: vip 198.18.0.100:80/tcp, backend 1: weight must be 0..=65535, got 65536",
            r#"fulcrum.toml:14: vip 198.18.0.100:80/tcp, backend 1: mac must be six pairs of hex digits like "02:00:00:00:00:0b", got "02:00:00:00:00""#,
            r#"fulcrum.toml:17: vip 198.18.0.100:80/tcp, backend 2: mac must be a unicast address other than all zeros, got "03:00:00:00:00:01""#,
        ]
    );
    let c = valid(&format!("{VIP}[[vip.backend]]\naddress = \"198.18.0.11\"\nweight = 0\nmac = \"02:AB:cd:00:00:0b\"\n"));
    let b = &c.vips[0].backends[0];
    assert_eq!((b.port, b.weight, b.mac), (0, 0, Some([0x02, 0xab, 0xcd, 0, 0, 0x0b])));
}

#[test]
fn vip_fields() {
    let e = errors(concat!(
        "[[vip]]\naddress = \"198.18.0.100\"\nprotocol = \"sctp\"\nport = 80\nmode = \"nat\"\nbackend = []\n",
        "[[vip]]\naddress = \"198.18.0.100\"\nprotocol = \"tcp\"\nport = 70000\nmode = \"dnat\"\nbackend = []\n",
        "[[vip]]\naddress = \"198.18.0.101\"\nprotocol = \"udp\"\nmode = \"gue\"\ntunnel_source = \"198.18.200.0/24\"\ngue_port = 0\nscheduler = \"round-robin\"\nbackend = []\n",
        "[[vip]]\naddress = \"198.18.0.102\"\nprotocol = \"tcp\"\nmode = \"nat\"\npersistence = { kind = \"cookie\", timeout = \"forever\" }\nbackend = []\n",
    ));
    assert_eq!(
        e,
        [
            r#"fulcrum.toml:6: vip 1: protocol must be one of "tcp", "udp", got "sctp""#,
            "fulcrum.toml:13: vip 2: port must be 0..=65535, got 70000",
            r#"fulcrum.toml:14: vip 2: mode must be one of "nat", "full-nat", "dsr", "ipip", "gue", got "dnat""#,
            "fulcrum.toml:21: vip 198.18.0.101:*/udp: gue_port must be 1..=65535, got 0",
            r#"fulcrum.toml:22: vip 198.18.0.101:*/udp: scheduler must be "maglev" or a path to a .wasm plugin, got "round-robin""#,
            r#"fulcrum.toml:28: vip 198.18.0.102:*/tcp: persistence.kind must be one of "source-ip", got "cookie""#,
            r#"fulcrum.toml:28: vip 198.18.0.102:*/tcp: persistence.timeout must be a duration string such as "30s", "15m" or "1h 30m", got "forever" (expected number at 0)"#,
        ]
    );
    let c = valid(&format!("{VIP}persistence = {{ kind = \"source-ip\" }}\nbackend = []\n"));
    assert_eq!(c.vips[0].persistence, Some(Persistence { kind: PersistenceKind::SourceIp, timeout: Duration::from_secs(300) }));
}

#[test]
fn health_checks() {
    let e = vip(concat!(
        "[vip.health]\n",
        "kind = \"tcp-connect\"\n",
        "interval = \"1s\"\n",
        "timeout = \"1s\"\n",
        "rise = 0\n",
        "fall = 256\n",
        "path = \"/\"\n",
        "expect_content = \"ok\"\n",
        "address = \"198.18.1.1\"\n",
        "[[vip.backend]]\naddress = \"198.18.0.11\"\n",
    ));
    assert_eq!(
        e,
        [
            "fulcrum.toml:13: vip 198.18.0.100:80/tcp: health.timeout (1s) must be shorter than health.interval (1s)",
            "fulcrum.toml:14: vip 198.18.0.100:80/tcp: health.rise must be 1..=255, got 0",
            "fulcrum.toml:15: vip 198.18.0.100:80/tcp: health.fall must be 1..=255, got 256",
            "fulcrum.toml:16: vip 198.18.0.100:80/tcp: health.path does not apply to kind tcp-connect (only to the http and https kinds)",
            "fulcrum.toml:17: vip 198.18.0.100:80/tcp: health.expect_content does not apply to kind tcp-connect (only to http-content and https-content)",
            "fulcrum.toml:18: vip 198.18.0.100:80/tcp: health.address is per backend: set it in that backend's health table",
        ]
    );
    let e =
        vip(concat!("health = { kind = \"http-content\", path = \"/a b\", expect_status = \"399-200\" }\n", "[[vip.backend]]\naddress = \"198.18.0.11\"\n",));
    assert_eq!(
        e,
        [
            "fulcrum.toml:10: vip 198.18.0.100:80/tcp: kind http-content needs health.expect_content: the string the body must contain",
            r#"fulcrum.toml:10: vip 198.18.0.100:80/tcp: health.path must start with '/' and hold no spaces or control characters, got "/a b""#,
            r#"fulcrum.toml:10: vip 198.18.0.100:80/tcp: health.expect_status must be a code like 200 or a range like "200-399" within 100..=599, got "399-200""#,
        ]
    );
    assert_eq!(
        vip("health = { kind = \"icmp\", port = 80 }\nbackend = []\n"),
        ["fulcrum.toml:10: vip 198.18.0.100:80/tcp: health.port does not apply to kind icmp (only to every kind but icmp)"]
    );
    assert_eq!(
        vip("health = { interval = \"1s\" }\nbackend = []\n"),
        [
            r#"fulcrum.toml:10: vip 198.18.0.100:80/tcp: health.kind is required: one of "icmp", "tcp-connect", "tcp-half-open", "http-status", "http-content", "https-status", "https-content", "udp", "dns""#
        ]
    );
}

#[test]
fn https_udp_and_dns_checks_resolve() {
    let one = |health: &str| {
        let c = valid(&format!("{VIP}health = {{ {health} }}\n[[vip.backend]]\naddress = \"198.18.0.11\"\n"));
        c.vips[0].backends[0].check.clone().unwrap().probe
    };
    let https = |host: Option<&str>, server_name: Option<&str>, verify| {
        let status = StatusRange { first: 200, last: 399 };
        let tls = Some(Tls { server_name: server_name.map(Into::into), verify });
        Probe::Http(HttpProbe { port: 443, path: "/".into(), status, content: None, host: host.map(Into::into), tls })
    };
    // The SNI is the Host header's name unless set; an address sends none.
    assert_eq!(one("kind = \"https-status\", port = 443"), https(None, None, TlsVerify::SystemRoots));
    assert_eq!(
        one("kind = \"https-status\", port = 443, host = \"www.lab.test:8443\", ca_file = \"/etc/lab-ca.pem\""),
        https(Some("www.lab.test:8443"), Some("www.lab.test"), TlsVerify::CaFile("/etc/lab-ca.pem".into()))
    );
    assert_eq!(
        one("kind = \"https-status\", port = 443, host = \"198.18.0.11\", sni = \"api.lab.test\", verify = false"),
        https(Some("198.18.0.11"), Some("api.lab.test"), TlsVerify::Off)
    );
    assert_eq!(
        one("kind = \"udp\", port = 7, payload_hex = \"70696E67\", expect_reply = \"ping\""),
        Probe::Udp { port: 7, payload: b"ping".to_vec(), expect: Some(b"ping".to_vec()) }
    );
    assert_eq!(one("kind = \"udp\", payload = \"x\""), Probe::Udp { port: 80, payload: b"x".to_vec(), expect: None });
    assert_eq!(
        one("kind = \"dns\", port = 53, query_name = \"www.lab.test.\", expect_address = \"198.18.5.5\""),
        Probe::Dns { port: 53, name: "www.lab.test".into(), record: DnsType::A, expect_address: Some("198.18.5.5".parse().unwrap()) }
    );
    assert_eq!(
        one("kind = \"dns\", port = 53, query_name = \"lab.test\", query_type = \"MX\""),
        Probe::Dns { port: 53, name: "lab.test".into(), record: DnsType::Mx, expect_address: None }
    );
}

#[test]
fn https_udp_and_dns_check_errors_name_the_field() {
    let e = |health: &str| vip(&format!("health = {{ {health} }}\nbackend = []\n"));
    let at = "fulcrum.toml:10: vip 198.18.0.100:80/tcp:";
    assert_eq!(
        e("kind = \"http-status\", verify = false, payload = \"x\""),
        [
            format!("{at} health.verify does not apply to kind http-status (only to https-status and https-content)"),
            format!("{at} health.payload does not apply to kind http-status (only to udp)"),
        ]
    );
    assert_eq!(
        e("kind = \"https-status\", verify = \"no\", host = \"a b\", sni = \"198.18.0.11\""),
        [
            format!("{at} health.host must be 1 to 255 characters without spaces or control characters, got \"a b\""),
            format!("{at} health.verify must be true or false, got \"no\""),
            format!("{at} health.sni must be a DNS name like \"www.example.com\" (no address, no port), got \"198.18.0.11\""),
        ]
    );
    assert_eq!(
        e("kind = \"https-content\", verify = false, ca_file = \"ca.pem\""),
        [
            format!("{at} kind https-content needs health.expect_content: the string the body must contain"),
            format!("{at} health.ca_file is not used with health.verify = false: remove one of them"),
        ]
    );
    assert_eq!(
        e("kind = \"udp\", expect_reply_hex = \"abc\", query_name = \"x\""),
        [
            format!("{at} health.query_name does not apply to kind udp (only to dns)"),
            format!("{at} kind udp needs health.payload or health.payload_hex: what to send"),
            format!("{at} health.expect_reply_hex must be pairs of hex digits like \"0a1b2c\", got \"abc\""),
        ]
    );
    assert_eq!(
        e("kind = \"udp\", payload = \"x\", payload_hex = \"78\", expect_reply = \"\""),
        [format!("{at} health.payload and health.payload_hex give one value two ways: set one"), format!("{at} health.expect_reply must not be empty"),]
    );
    assert_eq!(
        e("kind = \"dns\", query_type = \"AXFR\", expect_address = \"2001:db8::1\""),
        [
            format!("{at} kind dns needs health.query_name: the name to ask for"),
            format!("{at} health.query_type must be one of \"A\", \"AAAA\", \"CNAME\", \"MX\", \"NS\", \"PTR\", \"SOA\", \"SRV\", \"TXT\", got \"AXFR\""),
        ]
    );
    assert_eq!(
        e("kind = \"dns\", query_name = \"bad..name\", expect_address = \"2001:db8::1\""),
        [
            format!("{at} health.query_name must be a DNS name like \"www.example.com\", got \"bad..name\""),
            format!("{at} health.expect_address 2001:db8::1 cannot be in the answer to a query of type A: use query_type \"A\" for IPv4, \"AAAA\" for IPv6"),
        ]
    );
}

#[test]
fn health_resolves_per_backend_with_defaults_and_overrides() {
    let c = valid(&format!(
        "{VIP}health = {{ kind = \"http-status\", interval = \"300ms\" }}\n[[vip.backend]]\naddress = \"198.18.0.11\"\nport = 8080\n[[vip.backend]]\naddress = \"198.18.0.12\"\nhealth = {{ address = \"198.18.1.12\", port = 9000, path = \"/ready\", expect_status = 204, rise = 5 }}\n"
    ));
    let vip = &c.vips[0];
    assert_eq!(vip.health, Some(HealthPolicy { on_down: OnDown::Keep, plugin: None }));
    let default = StatusRange { first: 200, last: 399 };
    let first = vip.backends[0].check.clone().unwrap();
    assert_eq!(
        first,
        HealthCheck {
            address: "198.18.0.11".parse().unwrap(),
            probe: Probe::Http(HttpProbe { port: 8080, path: "/".into(), status: default, content: None, host: None, tls: None }),
            through_vip: false,
            interval: Duration::from_millis(300),
            // Half the interval, being shorter than the 1s default.
            timeout: Duration::from_millis(150),
            rise: 2,
            fall: 3,
        }
    );
    let second = vip.backends[1].check.clone().unwrap();
    assert_eq!(second.address.to_string(), "198.18.1.12");
    assert_eq!(
        second.probe,
        Probe::Http(HttpProbe { port: 9000, path: "/ready".into(), status: StatusRange { first: 204, last: 204 }, content: None, host: None, tls: None })
    );
    assert_eq!((second.rise, second.fall, second.interval), (5, 3, Duration::from_millis(300)));
}

#[test]
fn through_vip_only_for_half_open_and_icmp_checks_of_dsr_and_tunnel_vips() {
    let dsr = |proto: &str, health: &str| format!("[[vip]]\naddress = \"198.18.0.100\"\nprotocol = \"{proto}\"\nport = 80\nmode = \"dsr\"\n{health}");
    let ok = valid(&dsr("tcp", "health = { kind = \"tcp-half-open\", through_vip = true }\n[[vip.backend]]\naddress = \"198.18.0.11\"\n"));
    let check = ok.vips[0].backends[0].check.clone().unwrap();
    assert!(check.through_vip);
    assert_eq!(check.probe, Probe::TcpHalfOpen { port: 80 });
    let plain = valid(&dsr("tcp", "health = { kind = \"tcp-half-open\" }\n[[vip.backend]]\naddress = \"198.18.0.11\"\n"));
    assert!(!plain.vips[0].backends[0].check.as_ref().unwrap().through_vip, "off unless set");
    assert_eq!(
        vip("health = { kind = \"tcp-half-open\", through_vip = true }\nbackend = []\n"),
        [
            "fulcrum.toml:10: vip 198.18.0.100:80/tcp: health.through_vip applies to dsr, ipip and gue VIPs (whose backends own the VIP), not to mode full-nat: nat checks already go where flows go"
        ]
    );
    assert_eq!(
        errors(&dsr("udp", "health = { kind = \"tcp-half-open\", through_vip = true }\nbackend = []\n")),
        ["fulcrum.toml:9: vip 198.18.0.100:80/udp: health.through_vip of a udp VIP needs kind icmp: a tcp-half-open check is a TCP SYN to the VIP's port"]
    );
    let udp = valid(&dsr("udp", "health = { kind = \"icmp\", through_vip = true }\n[[vip.backend]]\naddress = \"198.18.0.11\"\n"));
    assert_eq!(udp.vips[0].backends[0].check.as_ref().map(|c| (c.through_vip, c.probe.clone())), Some((true, Probe::Icmp)));
    assert_eq!(
        errors(&dsr("tcp", "health = { kind = \"http-status\", through_vip = true }\nbackend = []\n")),
        [
            "fulcrum.toml:9: vip 198.18.0.100:80/tcp: health.through_vip needs kind tcp-half-open or icmp, got http-status: the check is sent as raw frames, a bare SYN or an echo request"
        ]
    );
    assert_eq!(
        errors(&dsr("tcp", "health = { kind = \"tcp-half-open\", through_vip = \"yes\" }\nbackend = []\n")),
        [r#"fulcrum.toml:9: vip 198.18.0.100:80/tcp: health.through_vip must be true or false, got "yes""#]
    );
    assert_eq!(
        errors(&dsr(
            "tcp",
            "health = { kind = \"tcp-half-open\", through_vip = true }\n[[vip.backend]]\naddress = \"198.18.0.11\"\nhealth = { address = \"198.18.1.11\", through_vip = false }\n"
        )),
        [
            "fulcrum.toml:12: vip 198.18.0.100:80/tcp, backend 1: health.through_vip is set for the whole VIP, not per backend",
            "fulcrum.toml:12: vip 198.18.0.100:80/tcp, backend 1: health.address does not apply with health.through_vip: the check goes to the VIP, through this backend's data path",
        ]
    );
}

#[test]
fn health_overrides_are_checked_against_the_vips_check() {
    let e = vip(concat!(
        "[vip.health]\nkind = \"tcp-connect\"\ninterval = \"100ms\"\nrise = 0\n",
        "[[vip.backend]]\naddress = \"198.18.0.11\"\nhealth = { kind = \"icmp\", on_down = \"reset\", path = \"/\", timeout = \"2s\" }\n",
        "[[vip.backend]]\naddress = \"198.18.0.12\"\nhealth = { rise = 1 }\n",
    ));
    assert_eq!(
        e,
        [
            // Reported once, not again for each backend.
            "fulcrum.toml:13: vip 198.18.0.100:80/tcp: health.rise must be 1..=255, got 0",
            "fulcrum.toml:16: vip 198.18.0.100:80/tcp, backend 1: health.kind is set for the whole VIP, not per backend",
            "fulcrum.toml:16: vip 198.18.0.100:80/tcp, backend 1: health.on_down is set for the whole VIP, not per backend",
            "fulcrum.toml:16: vip 198.18.0.100:80/tcp, backend 1: health.timeout (2s) must be shorter than health.interval (100ms)",
            "fulcrum.toml:16: vip 198.18.0.100:80/tcp, backend 1: health.path does not apply to kind tcp-connect (only to the http and https kinds)",
        ]
    );
    assert_eq!(
        vip("[[vip.backend]]\naddress = \"198.18.0.11\"\nhealth = { port = 81 }\n"),
        ["fulcrum.toml:12: vip 198.18.0.100:80/tcp, backend 1: health overrides need a health check on the VIP ([vip.health])"]
    );
}

#[test]
fn health_and_the_vips_protocol_and_ports() {
    let all_ports = "[[vip]]\naddress = \"198.18.0.100\"\nprotocol = \"udp\"\nmode = \"dsr\"\n";
    assert_eq!(
        errors(&format!("{all_ports}health = {{ kind = \"tcp-connect\", on_down = \"reset\" }}\n[[vip.backend]]\naddress = \"198.18.0.11\"\n")),
        [
            "fulcrum.toml:8: vip 198.18.0.100:*/udp: health.port is required: the VIP serves every port",
            r#"fulcrum.toml:8: vip 198.18.0.100:*/udp: health.on_down = "reset" answers with a TCP RST: only for tcp VIPs"#,
        ]
    );
    let c = valid(&format!("{all_ports}health = {{ kind = \"icmp\" }}\n[[vip.backend]]\naddress = \"198.18.0.11\"\n"));
    assert_eq!(c.vips[0].backends[0].check.as_ref().map(|c| &c.probe), Some(&Probe::Icmp));
}

#[test]
fn interfaces_make_one_topology() {
    let iface = |name: &str, role: &str| format!("[[interface]]\nname = \"{name}\"\nrole = \"{role}\"\n");
    let topo = |text: &str| check(text).map(|c| c.topology);
    assert_eq!(topo(""), Err(vec![no_interface()]));
    assert_eq!(
        topo(&[iface("eth0", "client"), iface("eth1", "server")].concat()),
        Ok(Topology::Inline { client: Interface { name: "eth0".into(), mtu: None }, server: Interface { name: "eth1".into(), mtu: None } })
    );
    assert_eq!(topo(&iface("eth0", "client")), Err(vec![format!("fulcrum.toml:3: interface eth0: an inline topology needs both sides: {HOW}")]));
    assert_eq!(
        topo(&[iface("lb0", "one-arm"), iface("eth1", "server")].concat()),
        Err(vec![format!("fulcrum.toml:6: interface eth1: cannot be combined with the one-arm interface lb0: {HOW}")])
    );
    assert_eq!(
        topo(&[iface("lb0", "one-arm"), iface("lb1", "one-arm"), iface("lb0", "client"), iface("a/b", "middle")].concat()),
        Err(vec![
            "fulcrum.toml:6: interface lb1: a second interface with role one-arm (the first is lb0): fulcrum serves one topology".to_string(),
            "fulcrum.toml:8: interface lb0: declared twice (first at line 2)".to_string(),
            r#"fulcrum.toml:11: interface 4: name must be a Linux interface name (1 to 15 bytes, no '/', ':' or spaces), got "a/b""#.to_string(),
            r#"fulcrum.toml:12: interface 4: role must be one of "one-arm", "client", "server", got "middle""#.to_string(),
        ])
    );
}

const HOW: &str = r#"declare one [[interface]] with role = "one-arm", or one with role = "client" and one with role = "server""#;

fn no_interface() -> String {
    format!("fulcrum.toml: no interface: {HOW}")
}

#[test]
fn daemon_and_limits() {
    let e = errors(concat!(
        "[daemon]\ncontrol_socket = \"fulcrum.sock\"\nmetrics_listen = \"127.0.0.1\"\nworkers = 3\ncores = [2, 3]\n",
        "[limits]\nconnections_per_worker = 100\nsnat_ports = \"2000-1000\"\n",
    ));
    assert_eq!(
        e,
        [
            r#"fulcrum.toml:5: daemon: control_socket must be an absolute path of at most 107 bytes, got "fulcrum.sock""#,
            r#"fulcrum.toml:6: daemon: metrics_listen must be an address and a port (not 0) like "127.0.0.1:7780" or "[::1]:7780", got "127.0.0.1""#,
            "fulcrum.toml:7: daemon: workers (3) must equal the number of cores (2), or be omitted",
            "fulcrum.toml:10: limits: connections_per_worker must be 1024..=268435456, got 100",
            r#"fulcrum.toml:11: limits: snat_ports must be a range like "1024-65535" with 1 <= first <= last, got "2000-1000""#,
        ]
    );
    assert_eq!(errors("[daemon]\ncores = [1, 1]\n"), ["fulcrum.toml:5: daemon: cores[1]: CPU 1 is listed twice (also cores[0])"]);
    assert_eq!(errors("[daemon]\ncores = []\n"), ["fulcrum.toml:5: daemon: cores must be a non-empty array of CPU numbers like [2, 3], got an array"]);
    assert_eq!(
        errors("[daemon]\nworkers = 4\n[limits]\nsnat_ports = \"0-3\"\n"),
        [r#"fulcrum.toml:7: limits: snat_ports must be a range like "1024-65535" with 1 <= first <= last, got "0-3""#]
    );
    assert_eq!(
        errors("[daemon]\nworkers = 4\n[limits]\nsnat_ports = \"1-3\"\n"),
        [r#"fulcrum.toml:7: limits: snat_ports 1-3 has 3 ports, fewer than the 4 workers that share it"#]
    );
    let c =
        valid("[daemon]\ncores = [3, 2]\nmetrics_listen = \"[::1]:9200\"\nxdp_mode = \"native\"\npoll = \"busy\"\n[limits]\nsnat_ports = \"40000-40003\"\n");
    assert_eq!(c.daemon.workers, Workers::Pinned(vec![3, 2]));
    assert_eq!(c.daemon.metrics_listen.to_string(), "[::1]:9200");
    assert_eq!(c.daemon.xdp_mode, XdpMode::Native);
    assert_eq!(c.daemon.poll, Poll::Busy);
    assert_eq!(c.limits.snat_ports, PortRange { first: 40000, last: 40003 });
}

#[test]
fn defaults() {
    let c = valid("");
    assert_eq!(
        c,
        Config {
            daemon: Daemon {
                control_socket: "/run/fulcrum/control.sock".into(),
                metrics_listen: "127.0.0.1:7780".parse().unwrap(),
                state_file: "/var/lib/fulcrum/state.json".into(),
                xdp_mode: XdpMode::Auto,
                poll: Poll::Adaptive,
                workers: Workers::Auto,
                shutdown_grace: None,
            },
            topology: Topology::OneArm(Interface { name: "lb0".into(), mtu: None }),
            limits: Limits {
                connections_per_worker: 1 << 20,
                snat_ports: PortRange { first: 1024, last: 65535 },
                half_open_per_vip: 1 << 18,
                syn_proxy_above: 1024
            },
            timeouts: Timeouts {
                tcp_syn: Duration::from_secs(30),
                tcp_established: Duration::from_secs(900),
                tcp_closing: Duration::from_secs(60),
                udp: Duration::from_secs(300),
                snat_reuse: Duration::from_secs(60),
            },
            plugins: Plugins { max_module_bytes: 8 << 20, max_functions: 10_000, compile_timeout: Duration::from_secs(5) },
            vips: vec![],
            sync: None,
            bgp: None,
        }
    );
    let vip = valid(&format!("{VIP}[[vip.backend]]\naddress = \"198.18.0.11\"\n")).vips.remove(0);
    assert_eq!((vip.scheduler, vip.persistence, vip.health), (Scheduler::Maglev, None, None));
    assert_eq!((vip.backends[0].port, vip.backends[0].weight), (0, 1));
    assert_eq!(valid("[timeouts]\nudp = \"1h 30m\"\n").timeouts.udp, Duration::from_secs(5400));
}

#[test]
fn plugin_paths_resolve_against_the_config_files_directory() {
    let text = format!("{HEAD}{VIP}scheduler = \"plugins/wlc.wasm\"\nhealth = {{ kind = \"icmp\", policy = \"/opt/fulcrum/health.wasm\" }}\nbackend = []\n");
    let c = parse(&text, "/etc/fulcrum/fulcrum.toml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.vips[0].scheduler, Scheduler::Plugin(PathBuf::from("/etc/fulcrum/plugins/wlc.wasm")));
    assert_eq!(c.vips[0].health.as_ref().and_then(|h| h.plugin.clone()), Some(PathBuf::from("/opt/fulcrum/health.wasm")));
    // A bare file name: relative to the working directory.
    let c = parse(&text, "fulcrum.toml").unwrap();
    assert_eq!(c.vips[0].scheduler, Scheduler::Plugin(PathBuf::from("plugins/wlc.wasm")));
    assert_eq!(
        vip("health = { kind = \"icmp\", policy = \"plugins/\" }\nscheduler = \".wasm\"\nbackend = []\n"),
        [
            r#"fulcrum.toml:10: vip 198.18.0.100:80/tcp: health.policy must be a path to a .wasm plugin, got "plugins/""#,
            r#"fulcrum.toml:11: vip 198.18.0.100:80/tcp: scheduler must be "maglev" or a path to a .wasm plugin, got ".wasm""#,
        ]
    );
}

#[test]
fn load_reads_the_file_and_names_it() {
    let dir = std::env::temp_dir().join(format!("fulcrum-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("fulcrum.toml");
    std::fs::write(&path, format!("{HEAD}{VIP}scheduler = \"wlc.wasm\"\nbackend = []\n")).unwrap();
    let loaded = load(&path);
    std::fs::write(&path, format!("[daemon]\nworkers = 0\n{HEAD}")).unwrap();
    let broken = load(&path).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(loaded.unwrap().vips[0].scheduler, Scheduler::Plugin(dir.join("wlc.wasm")));
    assert_eq!(broken.0[0].to_string(), format!("{}:2: daemon: workers must be 1..=1024, got 0", path.display()));

    let missing = load(Path::new("/nonexistent/fulcrum.toml")).unwrap_err();
    assert_eq!(missing.to_string(), "/nonexistent/fulcrum.toml: cannot read: No such file or directory (os error 2)");
    assert_eq!(missing.0[0].line, None);
}

#[test]
fn check_files_names_each_plugin_that_cannot_be_opened() {
    let dir = std::env::temp_dir().join(format!("fulcrum-config-files-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("sub.wasm")).unwrap();
    std::fs::write(dir.join("wlc.wasm"), b"\0asm").unwrap();
    let text = |sched: &str, policy: &str| format!("{HEAD}{VIP}scheduler = \"{sched}\"\nhealth = {{ kind = \"icmp\", policy = \"{policy}\" }}\nbackend = []\n");
    let origin = dir.join("fulcrum.toml").display().to_string();
    let ok = parse(&text("wlc.wasm", "wlc.wasm"), &origin).unwrap();
    let bad = parse(&text("missing.wasm", "sub.wasm"), &origin).unwrap();
    let forged = parse(&text("x\\n/etc/fulcrum.toml:1: \\u001b[1mforged.wasm", "wlc.wasm"), &origin).unwrap();
    let forged = check_files(&forged, &origin).unwrap_err().to_string();
    let (ok, bad) = (check_files(&ok, &origin), check_files(&bad, &origin).unwrap_err().to_string());
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(ok, Ok(()));
    let d = dir.display();
    assert_eq!(
        bad,
        format!(
            "{origin}: vip 198.18.0.100:80/tcp: scheduler: cannot open plugin {d}/missing.wasm: No such file or directory (os error 2)\n\
             {origin}: vip 198.18.0.100:80/tcp: health.policy: cannot open plugin {d}/sub.wasm: not a regular file (a directory)"
        )
    );
    assert_eq!(
        forged,
        format!(
            "{origin}: vip 198.18.0.100:80/tcp: scheduler: cannot open plugin {d}/x\\n/etc/fulcrum.toml:1: \\u{{1b}}[1mforged.wasm: No such file or directory (os error 2)"
        )
    );
}

#[test]
fn too_many_backends_for_the_engines_ids() {
    let pool: String = (0..=u16::MAX as u32).map(|i| format!("[[vip.backend]]\naddress = \"198.19.{}.{}\"\n", i >> 8, i & 0xff)).collect();
    let e = errors(&format!("{}{pool}", VIP.replace("198.18.0.2", "198.18.0.3")));
    assert_eq!(e, ["fulcrum.toml: 1 VIPs and 65536 backends in all: at most 65535 of each"]);
}

/// A reload compares configs: equal text gives an equal config, and any
/// change shows.
#[test]
fn configs_compare_for_reload() {
    let text = format!("{VIP}[[vip.backend]]\naddress = \"198.18.0.11\"\n");
    assert_eq!(valid(&text), valid(&format!("# a comment\n{text}")));
    assert_ne!(valid(&text), valid(&format!("{text}weight = 2\n")));
}

#[test]
fn syn_proxy_defaults_to_auto_for_nat_tcp_and_is_refused_elsewhere() {
    let backend = "[[vip.backend]]\naddress = \"198.18.0.11\"\n";
    let c = valid(&format!("{VIP}{backend}[limits]\nsyn_proxy_above = 64\n"));
    assert_eq!((c.vips[0].syn_proxy, c.limits.syn_proxy_above), (SynProxy::Auto, 64));
    let c = valid(&format!("{VIP}syn_proxy = \"always\"\n{backend}"));
    assert_eq!(c.vips[0].syn_proxy, SynProxy::Always);
    let dsr = "[[vip]]\naddress = \"198.18.0.100\"\nprotocol = \"tcp\"\nport = 80\nmode = \"dsr\"\n";
    assert_eq!(valid(&format!("{dsr}{backend}")).vips[0].syn_proxy, SynProxy::Off);
    assert_eq!(valid(&format!("{dsr}syn_proxy = \"off\"\n{backend}")).vips[0].syn_proxy, SynProxy::Off);
    assert_eq!(
        errors(&format!("{dsr}syn_proxy = \"always\"\n{backend}")),
        ["fulcrum.toml:9: vip 198.18.0.100:80/tcp: syn_proxy answers TCP SYNs for NAT flows: only for tcp VIPs in mode nat or full-nat"]
    );
    assert_eq!(
        vip(&format!("syn_proxy = \"sometimes\"\n{backend}")),
        [r#"fulcrum.toml:10: vip 198.18.0.100:80/tcp: syn_proxy must be one of "off", "auto", "always", got "sometimes""#]
    );
    assert_eq!(vip(&format!("{backend}[limits]\nsyn_proxy_above = 0\n")), ["fulcrum.toml:13: limits: syn_proxy_above must be 1..=268435456, got 0"]);
}

#[test]
fn sync_names_the_field_and_needs_the_workers_set() {
    let d = "[daemon]\nworkers = 2\n";
    let ok = valid(&format!("{d}[sync]\nlisten = \"198.18.0.2:7788\"\npeers = [\"198.18.0.3:7788\"]\nkey = \"0123456789abcdef\"\n"));
    let s = ok.sync.unwrap();
    assert_eq!((s.listen.to_string(), s.peers.len(), s.role), ("198.18.0.2:7788".into(), 1, HaRole::Backup));
    assert_eq!(
        errors("[sync]\nlisten = \"198.18.0.2:7788\"\npeers = [\"198.18.0.3:7788\"]\nkey = \"0123456789abcdef\"\n"),
        [
            "fulcrum.toml:4: sync: sync needs daemon.workers (or daemon.cores) set, the same on both balancers: flows go to the peer's worker of the same index, and limits.snat_ports is shared out among the workers"
        ]
    );
    assert_eq!(
        errors(&format!("{d}[sync]\nlisten = \"198.18.0.2\"\npeers = [\"198.18.0.3:7788\", \"198.18.0.3:7788\"]\nkey = \"short\"\nrole = \"boss\"\n")),
        [
            "fulcrum.toml:7: sync: listen must be this balancer's address and a port (not 0) like \"198.18.0.2:7788\", got \"198.18.0.2\"",
            "fulcrum.toml:8: sync: peers[1]: 198.18.0.3:7788 is listed twice (also peers[0])",
            "fulcrum.toml:9: sync: key must be at least 16 bytes (a shared secret, the same on both balancers), got 5",
            "fulcrum.toml:10: sync: role must be one of \"master\", \"backup\", \"fault\", got \"boss\"",
        ]
    );
    assert_eq!(
        errors(&format!("{d}[sync]\nlisten = \"198.18.0.2:7788\"\nkey = \"0123456789abcdef\"\n")),
        ["fulcrum.toml:6: sync: set peers (unicast) or group (multicast): the balancers sync with no one"]
    );
}

#[test]
fn bgp_and_the_shutdown_grace_name_the_field() {
    let c = valid("[daemon]\nshutdown_grace = \"30s\"\n[bgp]\nspeaker = \"exabgp\"\n");
    assert_eq!(c.daemon.shutdown_grace, Some(Duration::from_secs(30)));
    assert_eq!(c.bgp, Some(Bgp { speaker: Speaker::ExaBgp, next_hop: None, timeout: Duration::from_millis(500), snat_own: Vec::new() }));
    let c = valid("[bgp]\nspeaker = \"exabgp\"\nnext_hop = \"198.18.0.2\"\ntimeout = \"1s\"\n");
    assert_eq!(c.bgp.map(|b| (b.next_hop, b.timeout)), Some((Some("198.18.0.2".parse().unwrap()), Duration::from_secs(1))));
    assert_eq!(
        errors("[daemon]\nshutdown_grace = 30\n[bgp]\nspeaker = \"bird\"\nnext_hop = \"me\"\ntimeout = \"10s\"\n"),
        [
            "fulcrum.toml:5: daemon: shutdown_grace must be a duration string such as \"30s\", \"15m\" or \"1h 30m\", got the number 30 without a unit (\"30s\" is 30 seconds)",
            "fulcrum.toml:7: bgp: speaker must be one of \"exabgp\", got \"bird\"",
            "fulcrum.toml:8: bgp: next_hop must be \"self\" or this balancer's address, got \"me\"",
            "fulcrum.toml:9: bgp: timeout must be between 200ms and 3s, got 10s",
        ]
    );
    assert_eq!(
        errors("[bgp]\nnext_hop = \"224.0.0.1\"\n"),
        ["fulcrum.toml:4: bgp: speaker is required", "fulcrum.toml:5: bgp: next_hop must be a unicast address, got 224.0.0.1 (multicast)",]
    );
}

#[test]
fn plugin_compile_limits_name_the_field() {
    let c = valid("[plugins]\nmax_module_bytes = 1048576\nmax_functions = 500\ncompile_timeout = \"2s\"\n");
    assert_eq!(c.plugins, Plugins { max_module_bytes: 1 << 20, max_functions: 500, compile_timeout: Duration::from_secs(2) });
    assert_eq!(
        errors("[plugins]\nmax_module_bytes = \"8M\"\nmax_functions = 0\ncompile_timeout = \"1h\"\nmax_memory = 1\n"),
        [
            "fulcrum.toml:5: plugins: max_module_bytes must be an integer 1024..=67108864, got \"8M\"",
            "fulcrum.toml:6: plugins: max_functions must be 1..=1000000, got 0",
            "fulcrum.toml:7: plugins: compile_timeout must be between 100ms and 10m, got 1h",
            "fulcrum.toml:8: plugins: unknown field `max_memory`, expected one of `max_module_bytes`, `max_functions`, `compile_timeout`",
        ]
    );
}

#[test]
fn snat_own_names_addresses_of_the_vips_and_leaves_each_one() {
    // Two full-NAT VIPs sharing a fleet's addresses .2-.4, one with .5 too.
    let vips = format!(
        "{}backend = []\n{}backend = []\n",
        VIP.replace("\"198.18.0.2\"", "[\"198.18.0.2\", \"198.18.0.3\", \"198.18.0.4\"]"),
        VIP.replace("port = 80", "port = 81").replace("\"198.18.0.2\"", "[\"198.18.0.4\", \"198.18.0.5\"]")
    );
    let c = valid(&format!("{vips}[bgp]\nspeaker = \"exabgp\"\nsnat_own = [\"198.18.0.3\", \"198.18.0.4\"]\n"));
    assert_eq!(c.bgp.unwrap().snat_own, ["198.18.0.3".parse::<IpAddr>().unwrap(), "198.18.0.4".parse().unwrap()]);
    let one = valid(&format!("{vips}[bgp]\nspeaker = \"exabgp\"\nsnat_own = \"198.18.0.4\"\n"));
    assert_eq!(one.bgp.unwrap().snat_own.len(), 1);
    let bgp = |own: &str| errors(&format!("{vips}[bgp]\nspeaker = \"exabgp\"\nsnat_own = {own}\n"));
    assert_eq!(
        bgp("[\"198.18.0.3\", \"198.18.0.9\", \"198.18.0.3\"]"),
        [
            "fulcrum.toml:20: bgp: snat_own 198.18.0.9 is no full-nat VIP's snat address: list the addresses of every node in each VIP's snat",
            "fulcrum.toml:20: bgp: snat_own lists 198.18.0.3 twice",
        ]
    );
    assert_eq!(
        bgp("\"198.18.0.2\""),
        ["fulcrum.toml:20: bgp: snat_own has none of vip 198.18.0.100:81/tcp's snat addresses: this node could open none of its flows"]
    );
    assert_eq!(bgp("[]"), ["fulcrum.toml:20: bgp: snat_own must be an address or a non-empty list of addresses, got an array"]);
}
