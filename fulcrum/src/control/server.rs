//! `fulcrum run`: the control thread. It owns the `Daemon` and waits, in
//! one poll(2), for a signal (SIGINT / SIGTERM stop, SIGHUP reloads), a
//! connection on the control socket or health transitions; so a reload,
//! whether by signal or by request, and the health changes run on this
//! thread and never concurrently with one another.
//! Scrapes are served by the metrics thread; the workers run on their own.

use std::fs::DirBuilder;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use super::api::{Request, Response};
use super::daemon::Daemon;
use super::metrics;
use crate::error::Error;

/// A client must send its request within this time: the control thread
/// serves one connection at a time.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_REQUEST: u64 = 64 * 1024;

/// Runs the balancer with the configuration file at `path` until SIGINT or
/// SIGTERM; prints its counters on the way out.
pub fn run(path: &Path) -> Result<(), Error> {
    let config = super::load_config(path)?;
    let signals = Signals::install()?;
    // Both sockets first: a second daemon, or a port in use, is refused
    // before anything is attached to the interfaces.
    let control = ControlSocket::bind(&config.daemon.control_socket)?;
    let scrape = metrics::bind(config.daemon.metrics_listen)?;
    let metrics_listen = config.daemon.metrics_listen;
    let mut daemon = Daemon::start(path, config)?;
    metrics::serve(scrape, daemon.telemetry())?;
    tracing::info!(socket = %control.path.display(), metrics = %metrics_listen, "control socket and metrics endpoint ready");
    println!("ready workers={} xdp_mode={}", daemon.workers, daemon.xdp_mode);
    while !signals.stop.load(Ordering::SeqCst) {
        signals.wait(&control.listener, daemon.health_fd());
        daemon.apply_health();
        if signals.hup.swap(false, Ordering::SeqCst) {
            tracing::info!("SIGHUP: reloading");
            // Logged and counted by `reload`.
            let _ = daemon.reload();
        }
        control.serve_waiting(&mut daemon);
    }
    tracing::info!("stopping");
    print!("{}", daemon.summary());
    daemon.stop()
}

/// Flags set by the signals, and a socket pair whose read end becomes
/// readable when one arrives (to wake the poll).
struct Signals {
    stop: Arc<AtomicBool>,
    hup: Arc<AtomicBool>,
    wake: UnixStream,
}

impl Signals {
    fn install() -> Result<Signals, Error> {
        let err = |e| Error::System { what: "installing signal handlers".into(), source: e };
        let (stop, hup) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let (wake, notify) = UnixStream::pair().map_err(err)?;
        wake.set_nonblocking(true).map_err(err)?;
        for (sig, flag) in [(SIGINT, &stop), (SIGTERM, &stop), (SIGHUP, &hup)] {
            // The flag first: signal-hook runs actions in registration
            // order, so the flag is set when the poll wakes.
            signal_hook::flag::register(sig, Arc::clone(flag)).map_err(err)?;
            signal_hook::low_level::pipe::register(sig, notify.try_clone().map_err(err)?).map_err(err)?;
        }
        Ok(Signals { stop, hup, wake })
    }

    /// Blocks until a signal arrives, `listener` has a connection or
    /// `health` (health transitions waiting) is readable.
    fn wait(&self, listener: &UnixListener, health: Option<RawFd>) {
        fulcrum_io::unix::wait_readable([listener.as_raw_fd(), self.wake.as_raw_fd(), health.unwrap_or(-1)]);
        let mut buf = [0u8; 64];
        while matches!((&self.wake).read(&mut buf), Ok(n) if n > 0) {}
    }
}

/// The control socket: root only, removed on exit.
struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    /// Creates the directory if needed (0700), refuses if another daemon
    /// answers on `path`, removes a stale socket, and binds with mode 0600.
    fn bind(path: &Path) -> Result<ControlSocket, Error> {
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
        listener.set_nonblocking(true).map_err(what)?;
        Ok(ControlSocket { listener, path: path.to_path_buf() })
    }

    /// Answers every connection waiting, one request each.
    fn serve_waiting(&self, daemon: &mut Daemon) {
        loop {
            match self.listener.accept() {
                Ok((conn, _)) => {
                    if let Err(e) = answer(conn, daemon) {
                        tracing::debug!("control connection: {e}");
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!("control socket accept: {e}");
                    return;
                }
            }
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn answer(conn: UnixStream, daemon: &mut Daemon) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    conn.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new((&conn).take(MAX_REQUEST)).read_line(&mut line)?;
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(Request::Status) => Response::Status(daemon.status()),
        Ok(Request::Stats) => Response::Stats(daemon.telemetry().stats()),
        Ok(Request::Reload) => {
            tracing::info!("reload requested on the control socket");
            daemon.reload().map_or_else(|e| Response::Error(e.to_string()), Response::Reloaded)
        }
        Ok(Request::PluginLoad { vip, path }) => daemon.load_plugin(&vip, &path).map_or_else(|e| Response::Error(e.to_string()), Response::PluginLoaded),
        Err(e) => Response::Error(format!("bad request {:?}: {e}", line.trim_end())),
    };
    let mut out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
    out.push(b'\n');
    (&conn).write_all(&out)
}
