//! The system calls of the control socket and the daemon's main loop.

use std::io;
use std::os::fd::RawFd;
use std::os::unix::net::UnixListener;
use std::path::Path;

/// Blocks until one of `fds` is readable or a signal interrupts. Negative
/// descriptors are ignored (poll(2) skips them), so optional ones can be
/// passed as -1.
pub fn wait_readable<const N: usize>(fds: [RawFd; N]) {
    let mut polled = fds.map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
    // SAFETY: `polled` is N valid pollfd entries that outlive the call;
    // an error (EINTR from a signal) just returns, which is what callers
    // want: they look at what woke them.
    unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, -1) };
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
