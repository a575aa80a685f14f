//! Process-level system calls: the control socket's, the daemon's main
//! loop's, and those the lab and the perf harness make (namespaces,
//! signals, clocks), so that their `unsafe` blocks live here too.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

/// Blocks until one of `fds` is readable, a signal interrupts or
/// `timeout` (if any) passes. Negative
/// descriptors are ignored (poll(2) skips them), so optional ones can be
/// passed as -1.
pub fn wait_readable<const N: usize>(fds: [RawFd; N], timeout: Option<Duration>) {
    let mut polled = fds.map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
    let ms = timeout.map_or(-1, |t| libc::c_int::try_from(t.as_millis()).unwrap_or(libc::c_int::MAX));
    // SAFETY: `polled` is N valid pollfd entries that outlive the call;
    // an error (EINTR from a signal) just returns, which is what callers
    // want: they look at what woke them.
    unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, ms) };
}

/// Binds a Unix stream socket at `path` created with mode 0600: the umask
/// is narrowed around bind(2), so nobody else can connect between the bind
/// and a chmod. The umask is process-wide: call this while no other thread
/// creates files.
pub fn bind_private(path: &Path) -> io::Result<UnixListener> {
    // SAFETY: umask has no preconditions.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    bound
}

/// Whether the process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Sends `signal` to process `pid`.
pub fn kill(pid: u32, signal: i32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: kill(2) takes plain integers.
    if unsafe { libc::kill(pid, signal) } == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Moves the calling thread into the network namespace `ns` (an open
/// /run/netns/NAME or /proc/PID/ns/net).
pub fn enter_netns(ns: &File) -> io::Result<()> {
    // SAFETY: setns(2) on a descriptor `ns` keeps open for the call; it
    // changes only this thread's namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// CLOCK_MONOTONIC in ns: the clock of BPF's `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The kernel's clock ticks per second (the unit of /proc/PID/stat times).
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}
