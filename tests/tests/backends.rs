//! Runtime backend control through the daemon (`fulcrum backend ...`,
//! `fulcrum vip list`) with real traffic: a drained backend gets no new
//! flow while its established ones are served, an added one gets traffic,
//! both survive a reload and a restart through the state file, and
//! `fulcrum backend reset` restores the file's pool. Root only.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use fulcrum::control::api::{Request, Response, Status};
use fulcrum_tests::daemon::{self, LabMode};
use fulcrum_tests::{Lab, VIP4, ask_held, http_get, in_netns, require_root};

const SERVER: &str = env!("CARGO_BIN_EXE_lab-server");
const T: Duration = Duration::from_secs(3);
const VIP: &str = "198.18.100.1:80/tcp";

/// VIP4 port 80 in dsr (a restarted full-NAT balancer may hand out
/// source ports its backends still hold in TIME_WAIT) over the lab's first two backends (weights
/// `w2` for the second); runtime changes kept in `state`.
fn config(lab: &Lab, socket: &str, state: &Path, w2: u16) -> String {
    let b: Vec<String> = lab.backends.iter().map(|h| h.iface().v4.to_string()).collect();
    format!(
        "[daemon]\ncontrol_socket = \"{socket}\"\nstate_file = \"{}\"\n\n{}\n[[vip]]\naddress = \"{VIP4}\"\nprotocol = \"tcp\"\nport = 80\nmode = \"dsr\"\n\n[[vip.backend]]\naddress = \"{}\"\n\n[[vip.backend]]\naddress = \"{}\"\nweight = {w2}\n",
        state.display(),
        daemon::interfaces(lab),
        b[0],
        b[1]
    )
}

/// The backends' names answering `n` new connections.
fn answers(lab: &Lab, n: usize, when: &str) -> Vec<String> {
    in_netns(&lab.client.ns, || {
        (0..n)
            .map(|i| {
                let (status, body) = http_get(SocketAddr::new(IpAddr::V4(VIP4), 80), "/", T).unwrap_or_else(|e| panic!("{when}: connection {i}: {e}"));
                assert_eq!(status, 200, "{when}: connection {i}");
                String::from_utf8_lossy(&body).trim().to_string()
            })
            .collect()
    })
    .expect("client namespace")
}

fn count(names: &[String], name: &str) -> usize {
    names.iter().filter(|n| *n == name).count()
}

fn cli(args: &[&str], socket: &Path) -> (Option<i32>, String, String) {
    let mut all = args.to_vec();
    all.extend(["--socket", socket.to_str().unwrap_or_default()]);
    daemon::cli(&all)
}

fn ok(args: &[&str], socket: &Path) -> String {
    let (code, out, err) = cli(args, socket);
    assert_eq!(code, Some(0), "fulcrum {args:?}: {out}{err}");
    out
}

fn status(socket: &Path) -> Status {
    match daemon::ask(socket, Request::Status) {
        Response::Status(s) => s,
        r => panic!("status: {r:?}"),
    }
}

/// The runtime column of each backend of the VIP: (name, weight, runtime).
fn pool(socket: &Path) -> Vec<(String, u16, Option<String>)> {
    let s = status(socket);
    let v = s.vips.iter().find(|v| v.name == VIP).expect("the VIP");
    v.backends.iter().map(|b| (b.name.clone(), b.weight, b.runtime.clone())).collect()
}

#[test]
fn drain_add_survive_reload_and_restart_and_reset_clears() {
    require_root();
    let mut lab = Lab::new(LabMode::Dsr.topology()).expect("lab");
    let _ = daemon::prepare(&mut lab, LabMode::Dsr, SERVER.as_ref()).expect("set-up");
    let state = std::env::temp_dir().join(format!("fulcrum-lab-state-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&state);
    let socket_path = daemon::control_socket();
    let socket = Path::new(&socket_path);
    let (b1, b3) = (lab.backends[0].iface().v4.to_string(), lab.backends[2].iface().v4.to_string());
    let text = config(&lab, &socket_path, &state, 1);
    let (d, file) = daemon::start(&lab, &text).expect("daemon");

    let list = ok(&["vip", "list"], socket);
    assert!(list.contains(VIP) && list.contains(&b1) && !list.contains(&b3), "{list}");

    // Idle connections on both backends, then backend 1 drains.
    let mut open: Vec<TcpStream> =
        in_netns(&lab.client.ns, || (0..16).map(|_| TcpStream::connect_timeout(&SocketAddr::new(IpAddr::V4(VIP4), 80), T).expect("connect")).collect())
            .expect("client namespace");
    let out = ok(&["backend", "drain", VIP, &b1], socket);
    assert!(out.contains("1 backend changed") && out.contains(&format!("{VIP} backend {b1} weight 1 -> 0")), "{out}");
    assert_eq!(count(&answers(&lab, 60, "drained"), "backend1"), 0, "a drained backend got new flows");
    let served = ask_held(&mut open, T);
    assert!(count(&served, "backend1") > 0, "no established connection was on backend1: {served:?}");

    // Added: it gets traffic, checked as the file's backends are.
    ok(&["backend", "add", VIP, &b3, "--weight", "2"], socket);
    let names = answers(&lab, 60, "added");
    assert!(count(&names, "backend3") > 10 && count(&names, "backend1") == 0, "{names:?}");
    let expected = vec![
        (b1.clone(), 0, Some("drained".to_string())),
        (lab.backends[1].iface().v4.to_string(), 1, None),
        (b3.clone(), 2, Some("added, weight 2".to_string())),
    ];
    assert_eq!(pool(socket), expected);
    let (code, _, err) = cli(&["backend", "add", VIP, "198.18.100.1"], socket);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("backend 198.18.100.1 (set by `fulcrum backend`): address 198.18.100.1 is the VIP's own"), "{err}");
    let (code, _, err) = cli(&["backend", "drain", VIP, "198.18.0.99"], socket);
    assert!(code == Some(1) && err.contains("has no backend 198.18.0.99"), "{err}");
    let (code, _, err) = cli(&["backend", "drain", "198.18.100.1:81/tcp", &b3], socket);
    assert!(code == Some(1) && err.contains("no vip 198.18.100.1:81/tcp"), "{err}");
    assert_eq!(pool(socket), expected, "refused changes change nothing");

    // A reload with another change to the file keeps the runtime ones.
    file.write(&config(&lab, &socket_path, &state, 3));
    ok(&["reload"], socket);
    let mut after_reload = expected.clone();
    after_reload[1].1 = 3;
    assert_eq!(pool(socket), after_reload);
    let names = answers(&lab, 40, "reloaded");
    assert!(count(&names, "backend3") > 0 && count(&names, "backend1") == 0, "{names:?}");
    let shown = ok(&["status"], socket);
    assert!(shown.contains(&format!("runtime changes: 2 backends (kept in {};", state.display())), "{shown}");

    // So does a restart.
    daemon::stop(d).expect("stop");
    let (code, out, err) = daemon::cli(&["check-config", file.path_str()]);
    assert!(code == Some(0) && out.contains("with runtime changes to 2 backends"), "{out}{err}");
    let (d, _again) = daemon::start(&lab, &config(&lab, &socket_path, &state, 3)).expect("daemon again");
    assert_eq!(pool(socket), after_reload);
    let names = answers(&lab, 40, "restarted");
    assert!(count(&names, "backend3") > 0 && count(&names, "backend1") == 0, "{names:?}");

    // Reset: the file's pool again, and no state file.
    let out = ok(&["backend", "reset"], socket);
    assert!(out.contains("1 backend removed, 1 backend changed"), "{out}");
    assert!(!state.exists(), "the state file stays after a reset");
    let names = answers(&lab, 60, "reset");
    assert!(count(&names, "backend1") > 0 && count(&names, "backend3") == 0, "{names:?}");
    daemon::stop(d).expect("stop");
    let _ = std::fs::remove_file(&state);
}
