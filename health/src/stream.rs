//! TCP connect and HTTP checks: one nonblocking connection per check.
//!
//! Connect: the handshake completes, then the socket is closed, which
//! sends the FIN. HTTP: once connected, the request is written and the
//! response read until [`HttpCheck::judge`] decides; closing with unread
//! data left makes the kernel answer with a RST, which is fine for a check.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use fulcrum_io::epoll::{Interest, Poller};
use fulcrum_io::sock;

use super::Failure;
use super::http::{HttpCheck, Judgement, MAX_RESPONSE};

enum Stage {
    Connecting,
    /// Request bytes written so far.
    Sending(usize),
    Receiving,
}

struct Conn {
    fd: OwnedFd,
    stage: Stage,
    /// Response bytes read so far.
    have: usize,
}

/// The connections in flight, by check slot (the slot is also the epoll
/// token), and each slot's response buffer (`MAX_RESPONSE` bytes, made on
/// its first HTTP check and kept).
pub struct Streams {
    conns: Vec<Option<Conn>>,
    bufs: Vec<Box<[u8]>>,
}

impl Streams {
    pub fn new(slots: usize) -> Streams {
        Streams { conns: (0..slots).map(|_| None).collect(), bufs: (0..slots).map(|_| Box::default()).collect() }
    }

    /// Starts connecting to `to` for `slot`.
    pub fn start(&mut self, slot: usize, to: SocketAddr, poller: &Poller) -> Result<(), Failure> {
        let fd = sock::socket(to.is_ipv6(), libc::SOCK_STREAM, 0)?;
        // Connected at once or not, writability says the handshake is over.
        sock::connect(&fd, to)?;
        poller.add(&fd, slot as u64, Interest::Write)?;
        self.conns[slot] = Some(Conn { fd, stage: Stage::Connecting, have: 0 });
        Ok(())
    }

    /// `slot`'s socket is ready: the check's result once it is decided
    /// (the connection is then closed).
    pub fn ready(&mut self, slot: usize, http: Option<&HttpCheck>, poller: &Poller) -> Option<Result<(), Failure>> {
        let conn = self.conns.get_mut(slot)?.as_mut()?;
        let result = conn.advance(slot as u64, http, &mut self.bufs[slot], poller)?;
        self.conns[slot] = None;
        Some(result)
    }

    /// Drops `slot`'s connection (timed out).
    pub fn abandon(&mut self, slot: usize) {
        self.conns[slot] = None;
    }
}

impl Conn {
    fn advance(&mut self, token: u64, http: Option<&HttpCheck>, buf: &mut Box<[u8]>, poller: &Poller) -> Option<Result<(), Failure>> {
        loop {
            match self.stage {
                Stage::Connecting => {
                    match sock::take_error(&self.fd) {
                        Ok(None) => {}
                        Ok(Some(e)) | Err(e) => return Some(Err(e.into())),
                    }
                    if http.is_none() {
                        return Some(Ok(()));
                    }
                    if buf.is_empty() {
                        *buf = vec![0; MAX_RESPONSE].into();
                    }
                    self.stage = Stage::Sending(0);
                }
                Stage::Sending(sent) => {
                    let request = http.map_or(&[][..], HttpCheck::request);
                    match sock::write(&self.fd, &request[sent..]) {
                        Ok(n) if sent + n < request.len() => self.stage = Stage::Sending(sent + n),
                        Ok(_) => {
                            if let Err(e) = poller.modify(&self.fd, token, Interest::Read) {
                                return Some(Err(e.into()));
                            }
                            self.stage = Stage::Receiving;
                            return None;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                        Err(e) => return Some(Err(e.into())),
                    }
                }
                Stage::Receiving => return self.receive(http?, buf),
            }
        }
    }

    /// Reads what arrived; the result once the response decides it.
    fn receive(&mut self, http: &HttpCheck, buf: &mut [u8]) -> Option<Result<(), Failure>> {
        let verdict = |j| match j {
            Judgement::Pending => None,
            Judgement::Pass => Some(Ok(())),
            Judgement::Fail(f) => Some(Err(f)),
        };
        loop {
            match sock::read(&self.fd, &mut buf[self.have..]) {
                Ok(0) => return verdict(http.judge(&buf[..self.have], true)),
                Ok(n) => {
                    self.have += n;
                    let full = self.have == buf.len();
                    if let Some(r) = verdict(http.judge(&buf[..self.have], full)) {
                        return Some(r);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                // A reset after a complete answer still counts.
                Err(e) => return Some(if http.judge(&buf[..self.have], true) == Judgement::Pass { Ok(()) } else { Err(e.into()) }),
            }
        }
    }
}
