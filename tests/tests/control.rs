//! The control plane tells the truth: a refused reload changes nothing
//! anywhere (traffic shares over real requests, status), a fixed file then
//! applies; `status` names the scheduler in force; plugin files are read
//! bounded and never echoed; every line the control socket cannot parse
//! gets a JSON error. Root only; the plugins come from
//! scripts/build-plugins.sh.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fulcrum::control::api::{Request, Response, Status, VipStatus};
use fulcrum_tests::daemon::{self, LabMode, SNAT4};
use fulcrum_tests::{Lab, VIP4, http_get, in_netns, require_root};

const SERVER: &str = env!("CARGO_BIN_EXE_lab-server");
const T: Duration = Duration::from_secs(3);
const VIP: &str = "198.18.100.1:80/tcp";
/// New connections per share measurement: 30 per backend when all three
/// take flows.
const REQUESTS: usize = 90;

fn plugin(name: &str) -> PathBuf {
    daemon::plugin_module(name)
}

fn status(socket: &Path) -> Status {
    match daemon::ask(socket, Request::Status) {
        Response::Status(s) => s,
        r => panic!("status: {r:?}"),
    }
}

fn vip_status(socket: &Path) -> VipStatus {
    status(socket).vips.into_iter().find(|v| v.name == VIP).expect("the VIP in status")
}

/// A directory of test files, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("fulcrum-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Dir(dir)
    }

    fn file(&self, name: &str, contents: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, contents).expect("test file");
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One full-NAT TCP VIP on port 80 over the lab's backends with `weights`;
/// `vip_extra` after its keys, `more_backends` after its backends.
fn one_vip(lab: &Lab, socket: &str, weights: [u16; 3], vip_extra: &str, more_backends: &str) -> String {
    let mut c = format!("[daemon]\ncontrol_socket = \"{socket}\"\n\n{}", daemon::interfaces(lab));
    c += &format!("[[vip]]\naddress = \"{VIP4}\"\nprotocol = \"tcp\"\nport = 80\nmode = \"full-nat\"\nsnat = \"{SNAT4}\"\n{vip_extra}\n");
    for (b, w) in lab.backends.iter().zip(weights) {
        c += &format!("[[vip.backend]]\naddress = \"{}\"\nweight = {w}\n", b.iface().v4);
    }
    c + more_backends
}

/// New connections to the VIP, counted by the backend that answered.
fn shares(lab: &Lab) -> HashMap<String, usize> {
    in_netns(&lab.client.ns, || {
        let mut by = HashMap::new();
        for i in 0..REQUESTS {
            let (code, body) = http_get(SocketAddr::new(IpAddr::V4(VIP4), 80), "/", T).unwrap_or_else(|e| panic!("request {i}: {e}"));
            assert_eq!(code, 200, "request {i}");
            *by.entry(String::from_utf8_lossy(&body).trim().to_string()).or_insert(0) += 1;
        }
        by
    })
    .expect("client namespace")
}

fn reload(socket: &Path) -> (Option<i32>, String, String) {
    daemon::cli(&["reload", "--socket", socket.to_str().unwrap()])
}

/// Each preparation step fails in turn (a scheduler file that is not
/// WebAssembly, a backend whose neighbour never answers, a health-policy
/// file that is not WebAssembly), each together with a weight change that
/// would drain the third backend: every reload is refused, the third
/// backend keeps its share of new connections, and `status` is what it
/// was. Then the scheduler file is fixed in place and the same
/// configuration applies; a plugin rebuilt in place is a change too.
#[test]
fn a_refused_reload_changes_nothing_and_a_fixed_file_applies() {
    require_root();
    let mut lab = Lab::new(LabMode::FullNat.topology()).expect("lab");
    let _none = daemon::prepare(&mut lab, LabMode::FullNat, SERVER.as_ref()).expect("set-up");
    let dir = Dir::new("refused");
    let socket_path = daemon::control_socket();
    let config = one_vip(&lab, &socket_path, [1, 1, 1], "", "");
    let (d, file) = daemon::start(&lab, &config).expect("daemon");
    let socket = daemon::socket_of(&config);
    let third = lab.backends[2].name.clone();
    let before = vip_status(&socket);
    assert_eq!((before.scheduler.as_str(), before.scheduler_generation), ("maglev", None));
    let s = shares(&lab);
    assert!(s.get(&third).copied().unwrap_or(0) >= REQUESTS / 6, "all backends serve at first: {s:?}");

    let sched = dir.file("sched.wasm", b"root:x:0:0:root:/root:/bin/bash\n");
    let policy = dir.file("policy.wasm", b"not a module\n");
    let scheduler = format!("scheduler = \"{}\"\n", sched.display());
    let health =
        format!("[vip.health]\nkind = \"tcp-connect\"\ninterval = \"500ms\"\ntimeout = \"300ms\"\nrise = 2\nfall = 2\npolicy = \"{}\"\n", policy.display());
    // On the lab's network, but no host has it: no neighbour answer.
    let nobody = "[[vip.backend]]\naddress = \"198.18.0.250\"\n";
    let failing = [
        ("a scheduler file that is not WebAssembly", one_vip(&lab, &socket_path, [1, 1, 0], &scheduler, ""), "not a WebAssembly module"),
        ("a backend without a neighbour", one_vip(&lab, &socket_path, [1, 1, 0], "", nobody), "198.18.0.250"),
        ("a health-policy file that is not WebAssembly", one_vip(&lab, &socket_path, [1, 1, 0], &health, ""), "health policy"),
    ];
    for (n, (what, config, reason)) in failing.iter().enumerate() {
        file.write(config);
        let (code, out, err) = reload(&socket);
        assert_eq!(code, Some(1), "{what}: refused: {out}{err}");
        assert!(err.contains(reason), "{what}: {err}");
        assert!(!err.contains("root:x") && !err.contains("0x72"), "{what}: the file's contents are echoed: {err}");
        let st = status(&socket);
        assert_eq!(st.reloads.refused, n as u64 + 1, "{what}");
        assert_eq!(st.vips, vec![before.clone()], "{what}: status changed");
        let s = shares(&lab);
        assert!(s.get(&third).copied().unwrap_or(0) >= REQUESTS / 6, "{what}: the weight change reached the data path: {s:?}");
    }

    // The scheduler file fixed in place: the same configuration applies,
    // and status names the plugin.
    std::fs::copy(plugin("round-robin"), &sched).expect("fix the plugin");
    file.write(&failing[0].1);
    let (code, out, err) = reload(&socket);
    assert_eq!(code, Some(0), "{out}{err}");
    let after = vip_status(&socket);
    assert_eq!((after.scheduler.as_str(), after.scheduler_generation), ("sched", Some(1)), "{after:?}");
    assert_eq!(after.backends.iter().map(|b| b.weight).collect::<Vec<_>>(), [1, 1, 0]);
    let s = shares(&lab);
    assert_eq!(s.get(&third), None, "drained: {s:?}");

    // Rebuilt in place: broken (refused, the plugin in force stays), then
    // a good one (applied as a change, generation 2).
    std::fs::write(&sched, b"\0asm garbage").expect("break the plugin");
    let (code, _, err) = reload(&socket);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(vip_status(&socket), after);
    std::fs::copy(plugin("least-connections"), &sched).expect("rebuild the plugin");
    let (code, out, err) = reload(&socket);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("the file changed"), "{out}");
    assert_eq!(vip_status(&socket).scheduler_generation, Some(2));
    let text = daemon::cli(&["status", "--socket", socket.to_str().unwrap()]).1;
    assert!(text.contains("sched (generation 2, "), "{text}");
    daemon::stop(d).expect("stop");
}

/// One raw line to the control socket; the answer line.
fn raw(socket: &Path, line: &[u8]) -> String {
    let mut c = UnixStream::connect(socket).expect("connect");
    c.set_read_timeout(Some(T)).expect("timeout");
    c.write_all(line).expect("send");
    let mut answer = String::new();
    BufReader::new(&c).read_line(&mut answer).expect("an answer line");
    answer
}

/// `plugin load` of a FIFO, a device, a file that is not WebAssembly and
/// one above the size limit: each refused at once, saying why, never
/// quoting the file. `status` names a loaded plugin and its generation.
/// Lines that are no request get a JSON error. A reload refused with a
/// very long reason keeps `status` short.
#[test]
fn plugin_files_are_bounded_status_is_honest_and_bad_lines_get_errors() {
    require_root();
    let mut lab = Lab::new(LabMode::FullNat.topology()).expect("lab");
    let _none = daemon::prepare(&mut lab, LabMode::FullNat, SERVER.as_ref()).expect("set-up");
    let dir = Dir::new("inputs");
    let socket_path = daemon::control_socket();
    let config = one_vip(&lab, &socket_path, [1, 1, 1], "", "");
    let (d, file) = daemon::start(&lab, &config).expect("daemon");
    let socket = daemon::socket_of(&config);
    let load = |path: &Path| {
        let t = Instant::now();
        let r = daemon::cli(&["plugin", "load", "--vip", VIP, path.to_str().unwrap(), "--socket", socket.to_str().unwrap()]);
        (r, t.elapsed())
    };

    let fifo = dir.0.join("fifo.wasm");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let big = dir.file("big.wasm", b"\0asm\x01\0\0\0");
    std::fs::OpenOptions::new().write(true).open(&big).and_then(|f| f.set_len(65 << 20)).expect("a sparse 65 MiB file");
    let secret = dir.file("shadow", b"root:$6$salt$hash:19000:0:99999:7:::\n");
    for (path, reason) in [
        (fifo.as_path(), "not a regular file (a FIFO)"),
        (Path::new("/dev/zero"), "not a regular file (a character device)"),
        (big.as_path(), "too large"),
        (secret.as_path(), "not a WebAssembly module"),
    ] {
        let ((code, out, err), took) = load(path);
        assert_eq!(code, Some(1), "{}: {out}{err}", path.display());
        assert!(err.contains(reason), "{}: {err}", path.display());
        assert!(!err.contains("root:") && !err.contains("0x72"), "{}: contents echoed: {err}", path.display());
        assert!(took < Duration::from_secs(3), "{}: took {took:?}", path.display());
    }
    assert_eq!(vip_status(&socket).scheduler, "maglev");

    let ((code, out, err), _) = load(&plugin("round-robin"));
    assert_eq!(code, Some(0), "{out}{err}");
    let v = vip_status(&socket);
    assert_eq!((v.scheduler.as_str(), v.scheduler_generation), ("round-robin", Some(1)), "{v:?}");
    let (_, text, _) = daemon::cli(&["status", "--socket", socket.to_str().unwrap()]);
    assert!(text.lines().any(|l| l.starts_with(VIP) && l.contains("round-robin (generation 1, ")), "{text}");
    let (_, json, _) = daemon::cli(&["status", "--json", "--socket", socket.to_str().unwrap()]);
    assert!(json.contains("\"scheduler\": \"round-robin\"") && json.contains("\"scheduler_generation\": 1"), "{json}");

    // Whatever the line, a JSON error comes back.
    for line in [&b"not json\n"[..], b"\xff\xfe\xfd\n", b"{\"request\":\"explode\"}\n", b"{\"request\":\"status\"\n"] {
        let answer = raw(&socket, line);
        assert!(answer.starts_with("{\"error\":\"bad request: ") && answer.ends_with("\"}\n"), "{:?}: {answer:?}", String::from_utf8_lossy(line));
    }
    let answer = raw(&socket, &vec![b' '; 100 * 1024]);
    assert!(answer.starts_with("{\"error\":\"request longer than"), "{answer}");

    // A reason of hundreds of lines (and a long value) stays short in status.
    let mut broken = config.clone();
    for i in 0..300 {
        broken += &format!("[[vip.backend]]\naddress = \"{i}{}\"\n", "x".repeat(3000));
    }
    file.write(&broken);
    let (code, _, err) = reload(&socket);
    assert_eq!(code, Some(1));
    assert!(err.len() < 16 * 1024, "{} bytes of refusal", err.len());
    let st = status(&socket);
    let last = st.reloads.last.expect("the refused reload");
    assert!(last.message.lines().count() <= 21 && last.message.len() < 16 * 1024, "{}", last.message);
    let (_, json, _) = daemon::cli(&["status", "--json", "--socket", socket.to_str().unwrap()]);
    assert!(json.len() < 32 * 1024, "{} bytes of status", json.len());
    daemon::stop(d).expect("stop");
}
