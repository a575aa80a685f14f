//! `fulcrum ha watch`: tells keepalived within a fraction of a second that
//! this balancer cannot hold the addresses.
//!
//! keepalived's own checks are too slow for that: a `vrrp_script` runs at
//! most once a second and waits its whole timeout on a hung daemon, so a
//! hang cost 1-2 s before the peer took over, and the clients' doubling
//! retransmission timeout made it 2-3.5 s per connection. The watcher asks
//! the daemon every `every` and writes the verdict to a file keepalived
//! tracks (`track_file` with weight 0: 0 is fit, anything else a fault),
//! which keepalived reads as soon as it changes (inotify). A daemon that is
//! gone, does not answer within `timeout`, or stands down after `fulcrum
//! ha role backup` is unfit.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGINT, SIGTERM};

use crate::control::api::{Request, Response};
use crate::control::client;
use crate::error::Error;

/// Why the daemon at `socket` cannot hold the addresses; `Ok` when it
/// can: it answers `status` within `timeout` and is not standing down.
pub fn fit(socket: &Path, timeout: Duration) -> Result<(), Error> {
    match client::request_within(socket, &Request::Status, timeout)? {
        Response::Status(s) if s.standing_down() => Err(Error::Refused("standing down (`fulcrum ha role backup` on the master)".into())),
        Response::Status(_) => Ok(()),
        Response::Error(e) => Err(Error::Refused(e)),
        other => Err(Error::Refused(format!("unexpected answer to status: {other:?}"))),
    }
}

/// Keeps `file` at "0" while the daemon at `socket` is fit and "1" while
/// it is not, asking every `every`, until SIGTERM or SIGINT; then writes
/// "1": a watcher that stopped vouches for nothing. The file is checked on
/// every round, not only on a change, because keepalived rewrites it at
/// start (`init_file ... overwrite`).
pub fn run(socket: &Path, file: &Path, every: Duration, timeout: Duration) -> Result<(), Error> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGTERM, SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).map_err(Error::system("installing the watcher's signal handlers"))?;
    }
    let mut was_fit = None;
    while !stop.load(Ordering::Relaxed) {
        let tick = Instant::now();
        let verdict = fit(socket, timeout);
        let now_fit = verdict.is_ok();
        if was_fit != Some(now_fit) {
            match &verdict {
                Ok(()) => tracing::info!("ha watch: fulcrum on {} is fit to be master", socket.display()),
                Err(e) => tracing::warn!("ha watch: fulcrum on {} is unfit: {e}", socket.display()),
            }
            was_fit = Some(now_fit);
        }
        write_verdict(file, now_fit)?;
        std::thread::sleep(every.saturating_sub(tick.elapsed()));
    }
    tracing::info!("ha watch: stopped; {} says unfit", file.display());
    write_verdict(file, false)
}

/// Writes the verdict unless the file already holds it, by renaming a
/// complete file over it so keepalived never reads half a write.
fn write_verdict(file: &Path, fit: bool) -> Result<(), Error> {
    let want = if fit { "0\n" } else { "1\n" };
    if fs::read_to_string(file).is_ok_and(|s| s == want) {
        return Ok(());
    }
    let mut tmp = PathBuf::from(file);
    tmp.as_mut_os_string().push(".tmp");
    fs::write(&tmp, want).map_err(Error::system(format!("writing {}", tmp.display())))?;
    fs::rename(&tmp, file).map_err(Error::system(format!("renaming {} to {}", tmp.display(), file.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gone_daemon_is_unfit_and_the_file_says_so_once() {
        let dir = std::env::temp_dir().join(format!("fulcrum-watch-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("none.sock");
        assert!(matches!(fit(&socket, Duration::from_millis(100)), Err(Error::NotRunning { .. })));
        let file = dir.join("alive");
        write_verdict(&file, false).unwrap();
        assert_eq!(fs::read_to_string(&file).unwrap(), "1\n");
        // keepalived's init_file rewrites it; the next round restores it.
        fs::write(&file, "0\n").unwrap();
        write_verdict(&file, false).unwrap();
        assert_eq!(fs::read_to_string(&file).unwrap(), "1\n");
        write_verdict(&file, true).unwrap();
        assert_eq!(fs::read_to_string(&file).unwrap(), "0\n");
        fs::remove_dir_all(&dir).unwrap();
    }
}
