//! No client can hold the daemon: with 50 idle connections and one that
//! trickles a byte every 1.5 s held open on the control socket and on the
//! metrics endpoint (reopened whenever the daemon cuts them off),
//! `fulcrum stats`, a reload, a scrape and SIGTERM each complete within a
//! second, and a backend killed meanwhile is taken out by its health check
//! on time. Root only.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fulcrum_tests::daemon::{self, LabMode, SNAT4};
use fulcrum_tests::{Lab, VIP4, http_get, in_netns, require_root};

const SERVER: &str = env!("CARGO_BIN_EXE_lab-server");
const IDLE: usize = 50;
const TRICKLE: Duration = Duration::from_millis(1500);
const INTERVAL_MS: u64 = 200;
const TIMEOUT_MS: u64 = 150;
const FALL: u64 = 2;
/// From a backend's death to its last failed check, at most.
const FALL_TIME: Duration = Duration::from_millis(FALL * INTERVAL_MS + TIMEOUT_MS);
const SECOND: Duration = Duration::from_secs(1);

/// A connection the holder can poll without blocking.
trait Held: Read + Write + Sized {
    fn nonblocking(self) -> std::io::Result<Self>;
}

impl Held for UnixStream {
    fn nonblocking(self) -> std::io::Result<Self> {
        self.set_nonblocking(true).map(|()| self)
    }
}

impl Held for TcpStream {
    fn nonblocking(self) -> std::io::Result<Self> {
        self.set_nonblocking(true).map(|()| self)
    }
}

/// Whether the daemon closed (or answered, then closed) the connection.
fn closed(c: &mut impl Held) -> bool {
    let mut buf = [0u8; 512];
    !matches!(c.read(&mut buf), Err(e) if e.kind() == ErrorKind::WouldBlock)
}

/// Holds `IDLE` connections that say nothing and one that sends `byte`
/// every `TRICKLE`, reopening any the daemon cuts off, until `stop`; how
/// many times they were reopened.
fn hold<S: Held>(connect: impl Fn() -> std::io::Result<S>, byte: u8, stop: &AtomicBool) -> usize {
    let open = || connect().and_then(Held::nonblocking).ok();
    let mut idle: Vec<Option<S>> = (0..IDLE).map(|_| open()).collect();
    let mut trickler = open();
    let mut sent = Instant::now();
    let mut reopened = 0;
    while !stop.load(Ordering::Relaxed) {
        for slot in idle.iter_mut().chain(std::iter::once(&mut trickler)) {
            if slot.as_mut().is_none_or(closed) {
                *slot = open();
                reopened += 1;
            }
        }
        if sent.elapsed() >= TRICKLE {
            if let Some(t) = &mut trickler
                && t.write_all(&[byte]).is_err()
            {
                trickler = None;
            }
            sent = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reopened
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    (f(), t.elapsed())
}

#[test]
fn idle_and_trickling_clients_hold_neither_the_control_plane_nor_the_health_checks() {
    require_root();
    let mut lab = Lab::new(LabMode::FullNat.topology()).expect("lab");
    let _none = daemon::prepare(&mut lab, LabMode::FullNat, SERVER.as_ref()).expect("set-up");
    let health = format!("\n[vip.health]\nkind = \"tcp-connect\"\ninterval = \"{INTERVAL_MS}ms\"\ntimeout = \"{TIMEOUT_MS}ms\"\nrise = 2\nfall = {FALL}\n");
    let config = daemon::config_with(&lab, LabMode::FullNat, |vip, proto| if vip.is_ipv4() && proto == "tcp" { health.clone() } else { String::new() });
    let (d, file) = daemon::start(&lab, &config).expect("daemon");
    let socket = daemon::socket_of(&config);
    let socket_arg = socket.to_str().unwrap().to_string();
    let (balancer, client) = (lab.balancer.ns.clone(), lab.client.ns.clone());
    let metrics = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7780);
    let vip = SocketAddr::new(IpAddr::V4(VIP4), 80);
    let dead = lab.backends[2].iface().v4;
    let first = lab.backends[0].iface().v4;
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let control_holder = s.spawn(|| hold(|| UnixStream::connect(&socket), b' ', &stop));
        let metrics_holder = s.spawn(|| in_netns(&balancer, || hold(|| TcpStream::connect(metrics), b'G', &stop)).expect("balancer namespace"));
        let stopper = StopOnDrop(&stop);
        // Long enough for the daemon to cut off the first set and for the
        // holders to reopen them.
        std::thread::sleep(Duration::from_millis(2500));

        let ((code, out, err), stats) = timed(|| daemon::cli(&["stats", "--socket", &socket_arg]));
        assert_eq!(code, Some(0), "{out}{err}");
        let (scraped, scrape) = timed(|| in_netns(&balancer, || http_get(metrics, "/metrics", SECOND * 5)).expect("netns"));
        assert!(matches!(scraped, Ok((200, _))), "{scraped:?}");
        file.write(&format!(
            "{config}\n[[vip]]\naddress = \"{VIP4}\"\nprotocol = \"tcp\"\nport = 8080\nmode = \"full-nat\"\nsnat = \"{SNAT4}\"\n[[vip.backend]]\naddress = \"{first}\"\nport = 80\n"
        ));
        let ((code, out, err), reload) = timed(|| daemon::cli(&["reload", "--socket", &socket_arg]));
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(out.contains("1 VIP added"), "{out}");

        // A backend dies: its check takes it down, and new connections
        // stop failing, within the check's fall time and a second.
        let killed = Instant::now();
        lab.stop_server(2);
        let last_failure = in_netns(&client, || {
            let mut last = None;
            while killed.elapsed() < FALL_TIME + SECOND * 3 {
                if !matches!(http_get(vip, "/", SECOND), Ok((200, _))) {
                    last = Some(killed.elapsed());
                }
            }
            last
        })
        .expect("client namespace");
        let needle = format!("health: vip {VIP4}:80/tcp backend {dead} is down");
        assert!(d.wait_for_line(|l| l.contains(&needle), SECOND).is_some(), "no `{needle}`:\n{}", d.output());
        let last_failure = last_failure.unwrap_or_default();
        assert!(last_failure <= FALL_TIME + SECOND, "requests failed until {last_failure:?} after the kill");

        let (stopped, sigterm) = timed(|| daemon::stop(d));
        let out = stopped.expect("stop");
        drop(stopper);
        let (control_reopened, metrics_reopened) = (control_holder.join().expect("holder"), metrics_holder.join().expect("holder"));
        println!(
            "with {IDLE} idle and 1 trickling clients on each endpoint: stats {stats:?}, scrape {scrape:?}, reload {reload:?}, \
             requests failing until {last_failure:?} after the kill, SIGTERM {sigterm:?}; connections cut off and reopened: \
             control {control_reopened}, metrics {metrics_reopened}"
        );
        for (what, took) in [("stats", stats), ("a scrape", scrape), ("a reload", reload), ("SIGTERM", sigterm)] {
            assert!(took < SECOND, "{what} took {took:?}");
        }
        assert!(
            control_reopened >= IDLE && metrics_reopened >= IDLE,
            "the daemon cuts off clients that send no request: {control_reopened} {metrics_reopened}"
        );
        assert!(out.contains("reload applied"), "{out}");
    });
    assert!(!Path::new(&socket).exists());
}
