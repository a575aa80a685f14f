//! `fulcrum run`: the control thread and the control socket.
//!
//! The control thread owns the `Daemon` and waits, in one poll(2), for a
//! signal (SIGINT stops, SIGTERM stops or drains, SIGHUP reloads), health
//! transitions and
//! events: requests handed over by the connection threads, and
//! preparations that finished. It never reads from a client and never
//! compiles a plugin or resolves a neighbour: connections are served by
//! threads of their own (`conn`: capped, with a deadline for the whole
//! request), which parse the request, hand it over and wait for the answer
//! with a deadline; reloads and plugin loads are prepared (`prepare`) on
//! a thread of their own, one at a time, and only their commit runs here.
//! So a signal, a health transition or a `stats` is never stuck behind a
//! client or a compile, and a reload (by signal or request) and the health
//! changes are applied on this one thread, never concurrently.
//! Scrapes are served by the metrics threads; the workers run on their own.

use std::collections::VecDeque;
use std::fs::DirBuilder;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, Sender};
use sd_notify::NotifyState;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use fulcrum_config::Overlay;

use super::api::{BackendChange, Request, Response, brief};
use super::backends;
use super::conn::{self, Limits, Received};
use super::daemon::Daemon;
use super::metrics;
use super::prepare::{self, PreparedPlugin, Reload};
use crate::bgp;
use crate::error::Error;

/// A request is one short JSON line: the whole of it within 2 s, at most
/// 64 KiB. 128 connections at once: far more than operators and scripts
/// open, few enough threads to be nothing.
pub const LIMITS: Limits = Limits {
    name: "fulcrum-control",
    max_connections: 128,
    request_timeout: Duration::from_secs(2),
    max_request: 64 * 1024,
    write_timeout: Duration::from_secs(5),
};

/// How long a connection waits for its answer: a reload may resolve
/// neighbours (3 s each at worst) and compile plugins, after another
/// reload queued before it. The CLI waits 120 s.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(100);

const BUSY: &[u8] = b"{\"error\":\"busy: too many control connections at once, try again\"}\n";

/// Runs the balancer with the configuration file at `path` until SIGINT or
/// SIGTERM; prints its counters on the way out.
pub fn run(path: &Path) -> Result<(), Error> {
    let loaded = super::load_config(path)?;
    let config = &loaded.config;
    let (events_tx, events) = crossbeam_channel::unbounded();
    let waker = Waker::new()?;
    let signals = Signals::install(&waker)?;
    // Both sockets first: a second daemon, or a port in use, is refused
    // before anything is attached to the interfaces.
    let (listener, socket) = ControlSocket::bind(&config.daemon.control_socket)?;
    let scrape = metrics::bind(config.daemon.metrics_listen)?;
    let metrics_listen = config.daemon.metrics_listen;
    let daemon = Daemon::start(path, loaded)?;
    metrics::serve(scrape, daemon.telemetry())?;
    let inbox = Inbox { events: events_tx, wake: Arc::clone(&waker.notify) };
    {
        let inbox = inbox.clone();
        conn::serve(listener, LIMITS, BUSY, move |c, deadline| answer(c, deadline, &inbox))?;
    }
    tracing::info!(socket = %socket.path.display(), metrics = %metrics_listen, "control socket and metrics endpoint ready");
    println!("ready workers={} xdp_mode={}", daemon.workers, daemon.xdp_mode);
    notify_systemd(&[NotifyState::Ready]);
    // Under systemd's watchdog: a ping every half its period while this
    // loop runs and every worker polls.
    let watchdog = sd_notify::watchdog_enabled().map(|period| period / 2);
    let mut pinged = Instant::now();
    let mut control = Control { daemon, jobs: VecDeque::new(), preparing: false, inbox };
    while !signals.stop.load(Ordering::SeqCst) {
        // A drain watches the VIPs' traffic, which wakes nothing; the
        // watchdog needs its pings on time.
        let drain = control.daemon.draining().then_some(bgp::POLL);
        let timeout = [drain, watchdog].into_iter().flatten().min();
        fulcrum_io::unix::wait_readable([waker.wait.as_raw_fd(), control.daemon.health_fd().unwrap_or(-1), control.daemon.neighbours_fd()], timeout);
        if let Some(every) = watchdog
            && pinged.elapsed() >= every
        {
            pinged = Instant::now();
            if control.daemon.workers_progressed() {
                notify_systemd(&[NotifyState::Watchdog]);
            } else {
                tracing::error!("a worker stopped polling: no watchdog ping, systemd restarts the daemon");
            }
        }
        waker.drain();
        control.daemon.apply_health();
        control.daemon.apply_neighbours();
        if signals.hup.swap(false, Ordering::SeqCst) {
            tracing::info!("SIGHUP: reloading");
            control.queue(Job::Reload, None);
        }
        if signals.term.swap(false, Ordering::SeqCst) {
            // A second SIGTERM during a drain stops at once.
            if !control.daemon.drains_on_sigterm() || control.daemon.draining() {
                break;
            }
            control.daemon.drain();
        }
        while let Ok(event) = events.try_recv() {
            control.handle(event);
        }
        control.start_next();
        if control.daemon.drained() {
            tracing::info!("drained: the VIPs' traffic stopped or the grace is over");
            break;
        }
    }
    tracing::info!("stopping");
    notify_systemd(&[NotifyState::Stopping]);
    print!("{}", control.daemon.summary());
    control.daemon.stop()
}

/// Tells systemd (`Type=notify`), if it started the daemon; a failure to
/// is logged, never fatal.
fn notify_systemd(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!("telling systemd {state:?}: {e}");
    }
}

/// What the control thread is told.
enum Event {
    /// From a connection thread, with where its answer goes.
    Request(Request, Sender<Response>),
    /// A preparation finished, and who waits for its outcome (nobody for
    /// a SIGHUP).
    Prepared(Outcome, Option<Sender<Response>>),
}

enum Job {
    Reload,
    Plugin {
        vip: String,
        path: PathBuf,
        persist: bool,
    },
    /// Drop a VIP's persisted plugin.
    Forget(String),
    /// A runtime change to one backend; `None`: drop them all.
    Backend(Option<(String, String, BackendChange)>),
}

enum Outcome {
    Reload(Result<Reload, Error>),
    Plugin(Result<PreparedPlugin, Error>),
    /// What was asked, for the log, and the change prepared.
    Backend(String, Result<(Overlay, Reload), Error>),
}

/// Where the connection threads and the preparations post events: a
/// channel, and a byte on the waker so the poll returns.
#[derive(Clone)]
struct Inbox {
    events: Sender<Event>,
    wake: Arc<UnixStream>,
}

impl Inbox {
    fn post(&self, event: Event) {
        if self.events.send(event).is_ok() {
            // Full means a wake-up is pending already.
            let _ = (&*self.wake).write(&[1]);
        }
    }

    /// Hands `req` to the control thread; its answer, or why none came.
    fn ask(&self, req: Request) -> Result<Response, Error> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.post(Event::Request(req, tx));
        rx.recv_timeout(ANSWER_TIMEOUT).map_err(|e| match e {
            RecvTimeoutError::Timeout => {
                Error::TimedOut { what: "no answer from the control thread (the request may still complete: see `fulcrum status`)", after: ANSWER_TIMEOUT }
            }
            RecvTimeoutError::Disconnected => Error::Refused("the daemon is stopping".into()),
        })
    }
}

/// The control thread's state: the daemon, and the reloads and plugin
/// loads waiting to be prepared (one is prepared at a time, from the state
/// the previous one left).
struct Control {
    daemon: Daemon,
    jobs: VecDeque<(Job, Option<Sender<Response>>)>,
    preparing: bool,
    inbox: Inbox,
}

fn error(e: &Error) -> Response {
    Response::Error(brief(&e.to_string()))
}

impl Control {
    fn queue(&mut self, job: Job, reply: Option<Sender<Response>>) {
        // Signals come without anyone waiting: one queued reload serves
        // any number of them.
        let queued = self.jobs.iter().any(|(j, r)| matches!(j, Job::Reload) && r.is_none());
        if !(reply.is_none() && queued) {
            self.jobs.push_back((job, reply));
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Request(Request::Status, reply) => {
                let _ = reply.send(Response::Status(self.daemon.status()));
            }
            Event::Request(Request::Stats, reply) => {
                let _ = reply.send(Response::Stats(self.daemon.telemetry().stats()));
            }
            Event::Request(Request::Reload, reply) => {
                tracing::info!("reload requested on the control socket");
                self.queue(Job::Reload, Some(reply));
            }
            Event::Request(Request::PluginLoad { vip, path, persist }, reply) => self.queue(Job::Plugin { vip, path, persist }, Some(reply)),
            Event::Request(Request::PluginForget { vip }, reply) => self.queue(Job::Forget(vip), Some(reply)),
            Event::Request(Request::Routes, reply) => {
                let _ = reply.send(Response::Routes(self.daemon.routes()));
            }
            Event::Request(Request::Drain, reply) => {
                let _ = reply.send(Response::Draining(self.daemon.drain()));
            }
            Event::Request(Request::Backend { vip, backend, change }, reply) => self.queue(Job::Backend(Some((vip, backend, change))), Some(reply)),
            Event::Request(Request::BackendReset, reply) => self.queue(Job::Backend(None), Some(reply)),
            Event::Request(Request::VipList, reply) => {
                let _ = reply.send(Response::Vips(self.daemon.status().vips));
            }
            Event::Request(Request::Flows { vip, client, limit }, reply) => {
                let _ = reply.send(self.daemon.flows(&vip, client, limit).map_or_else(|e| error(&e), Response::Flows));
            }
            Event::Request(Request::HaRole { role }, reply) => {
                let _ = reply.send(self.daemon.set_role(&role).map_or_else(|e| error(&e), Response::HaRole));
            }
            Event::Prepared(outcome, reply) => {
                self.preparing = false;
                let response = match outcome {
                    Outcome::Reload(r) => self.daemon.finish_reload(r).map(Response::Reloaded),
                    Outcome::Plugin(p) => self.daemon.finish_plugin(p).map(Response::PluginLoaded),
                    Outcome::Backend(what, p) => self.daemon.finish_backends(&what, p).map(Response::BackendsChanged),
                };
                if let Some(reply) = reply {
                    let _ = reply.send(response.unwrap_or_else(|e| error(&e)));
                }
            }
        }
    }

    /// Starts preparing the next job, unless one is being prepared.
    fn start_next(&mut self) {
        if self.preparing {
            return;
        }
        let Some((job, reply)) = self.jobs.pop_front() else { return };
        let base = self.daemon.base();
        let inbox = self.inbox.clone();
        let spawned = std::thread::Builder::new().name("fulcrum-prepare".into()).spawn(move || {
            let outcome = match job {
                Job::Reload => Outcome::Reload(prepare::reload(&base)),
                Job::Plugin { vip, path, persist } => Outcome::Plugin(prepare::plugin(&base, &vip, &path, persist)),
                Job::Forget(vip) => Outcome::Backend(
                    format!("plugin forget of vip {vip}"),
                    prepare::backends(&base, |running, _| prepare::forget(running, &base.overlay, &vip)),
                ),
                // Persisted plugins are no backend change: they stay.
                Job::Backend(None) => Outcome::Backend(
                    "backend reset".into(),
                    prepare::backends(&base, |_, _| Ok(Overlay { schedulers: base.overlay.schedulers.clone(), ..Overlay::default() })),
                ),
                Job::Backend(Some((vip, backend, change))) => {
                    let what = format!("backend {change:?} of vip {vip} backend {backend}");
                    let prepared = prepare::backends(&base, |running, file| backends::apply(running, file, &base.overlay, &vip, &backend, &change));
                    Outcome::Backend(what, prepared)
                }
            };
            inbox.post(Event::Prepared(outcome, reply));
        });
        match spawned {
            Ok(_) => self.preparing = true,
            Err(e) => tracing::error!("cannot start preparing a reload or plugin load: {e}"),
        }
    }
}

/// One connection: its request, handed to the control thread, and the
/// answer. Any line that is not a request gets `{"error":...}`.
fn answer(mut c: UnixStream, deadline: Instant, inbox: &Inbox) {
    let response = match conn::read_request(&mut c, deadline, LIMITS.max_request, |b| b.contains(&b'\n')) {
        Ok(Received::Request(line)) => parse(&line).and_then(|req| inbox.ask(req)),
        Ok(Received::TooLarge) => Err(Error::TooLarge { what: "request", limit: LIMITS.max_request }),
        Ok(Received::TimedOut) => Err(Error::TimedOut { what: "no complete request line", after: LIMITS.request_timeout }),
        Err(e) => {
            tracing::debug!("control connection: {e}");
            return;
        }
    };
    let mut out = serde_json::to_vec(&response.unwrap_or_else(|e| error(&e))).unwrap_or_else(|_| b"{\"error\":\"unencodable answer\"}".to_vec());
    out.push(b'\n');
    if let Err(e) = conn::write_answer(&mut c, &out, Instant::now() + LIMITS.write_timeout) {
        tracing::debug!("control connection: {e}");
    }
}

/// The request on `line` (up to its newline). The message says what is
/// wrong and where, without echoing the line.
fn parse(line: &[u8]) -> Result<Request, Error> {
    let line = line.split(|&b| b == b'\n').next().unwrap_or_default();
    serde_json::from_slice(line).map_err(|source| Error::Json { what: "bad request".into(), source })
}

/// A socket pair whose read end becomes readable when a signal arrives or
/// an event is posted (to wake the poll).
struct Waker {
    wait: UnixStream,
    notify: Arc<UnixStream>,
}

impl Waker {
    fn new() -> Result<Waker, Error> {
        let err = Error::system("creating the control thread's wake-up socket");
        let (wait, notify) = UnixStream::pair().map_err(err)?;
        for s in [&wait, &notify] {
            s.set_nonblocking(true).map_err(Error::system("creating the control thread's wake-up socket"))?;
        }
        Ok(Waker { wait, notify: Arc::new(notify) })
    }

    fn drain(&self) {
        let mut buf = [0u8; 64];
        while matches!((&self.wait).read(&mut buf), Ok(n) if n > 0) {}
    }
}

/// Flags set by the signals; each also wakes the poll.
struct Signals {
    /// SIGINT: stop at once.
    stop: Arc<AtomicBool>,
    /// SIGTERM: drain first when a grace is configured.
    term: Arc<AtomicBool>,
    hup: Arc<AtomicBool>,
}

impl Signals {
    fn install(waker: &Waker) -> Result<Signals, Error> {
        let err = |e| Error::System { what: "installing signal handlers".into(), source: e };
        let (stop, term, hup) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        for (sig, flag) in [(SIGINT, &stop), (SIGTERM, &term), (SIGHUP, &hup)] {
            // The flag first: signal-hook runs actions in registration
            // order, so the flag is set when the poll wakes.
            signal_hook::flag::register(sig, Arc::clone(flag)).map_err(err)?;
            signal_hook::low_level::pipe::register(sig, waker.notify.try_clone().map_err(err)?).map_err(err)?;
        }
        Ok(Signals { stop, term, hup })
    }
}

/// The control socket's path, removed on exit.
struct ControlSocket {
    path: PathBuf,
}

impl ControlSocket {
    /// Creates the directory if needed (0700), refuses if another daemon
    /// answers on `path`, removes a stale socket, and binds with mode 0600.
    fn bind(path: &Path) -> Result<(UnixListener, ControlSocket), Error> {
        let what = |e| Error::System { what: format!("control socket daemon.control_socket {}", path.display()), source: e };
        if let Some(dir) = path.parent() {
            DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(what)?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                if UnixStream::connect(path).is_ok() {
                    return Err(Error::Refused(format!(
                        "another fulcrum is running: it answers on {} (stop it, or give this one another daemon.control_socket)",
                        path.display()
                    )));
                }
                std::fs::remove_file(path).map_err(what)?;
                tracing::info!(socket = %path.display(), "removed a stale control socket");
            }
            Ok(_) => return Err(Error::Refused(format!("{} exists and is not a socket: remove it or choose another daemon.control_socket", path.display()))),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(what(e)),
        }
        // Still single-threaded here, as bind_private's umask needs.
        let listener = fulcrum_io::unix::bind_private(path).map_err(what)?;
        Ok((listener, ControlSocket { path: path.to_path_buf() }))
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_that_are_no_request_are_errors_that_do_not_echo_them() {
        assert_eq!(parse(b"{\"request\":\"stats\"}\n").unwrap(), Request::Stats);
        for bad in [&b"not json\n"[..], b"\xff\xfe secret\n", b"{\"request\":\"explode\"}\n", b""] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("bad request: ") && !e.contains("secret"), "{e}");
        }
    }
}
