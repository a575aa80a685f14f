//! A minimal epoll(7) wrapper: the health thread waits on every socket of
//! every check in flight at once, and wakes only for those that are ready.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// What a registration waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interest {
    Read,
    Write,
}

pub struct Poller {
    epoll: OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Poller {
    /// Reports at most `batch` events per `wait`.
    pub fn new(batch: usize) -> io::Result<Poller> {
        // SAFETY: plain epoll_create1; the descriptor is owned from here on.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Poller { epoll, events: vec![libc::epoll_event { events: 0, u64: 0 }; batch.max(1)] })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        let flags = match interest {
            Interest::Read => libc::EPOLLIN,
            Interest::Write => libc::EPOLLOUT,
        };
        let mut ev = libc::epoll_event { events: flags as u32, u64: token };
        // SAFETY: `ev` is live for the call; epoll copies it.
        if unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn add(&self, fd: &OwnedFd, token: u64, interest: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd.as_raw_fd(), token, interest)
    }

    pub fn modify(&self, fd: &OwnedFd, token: u64, interest: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd.as_raw_fd(), token, interest)
    }

    /// Waits up to `timeout` (rounded up to a millisecond) for readiness:
    /// the tokens of the sockets ready (or in error: the owner finds out
    /// reading, writing or asking SO_ERROR). Closing a socket removes its
    /// registration.
    pub fn wait(&mut self, timeout: Duration) -> io::Result<impl Iterator<Item = u64> + '_> {
        let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        // SAFETY: `events` has room for the count passed.
        let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), self.events.as_mut_ptr(), self.events.len() as i32, ms) };
        let n = match n {
            n if n >= 0 => n as usize,
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => 0,
            _ => return Err(io::Error::last_os_error()),
        };
        Ok(self.events[..n].iter().map(|e| e.u64))
    }
}
