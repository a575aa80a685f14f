//! TCP connect, HTTP and HTTPS checks: one nonblocking connection per
//! check.
//!
//! Connect: the handshake completes, then the socket is closed, which
//! sends the FIN. HTTP: once connected, the request is written and the
//! response read until [`HttpCheck::judge`] decides; closing with unread
//! data left makes the kernel answer with a RST, which is fine for a check.
//! HTTPS: the request is handed to the TLS session at once (rustls keeps
//! it until the handshake is done), then the socket is pumped through the
//! session, waiting for whichever direction it needs.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use fulcrum_io::epoll::{Interest, Poller};
use fulcrum_io::sock;
use rustls::ClientConnection;

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
    tls: Option<Box<ClientConnection>>,
    /// What the socket is registered for.
    interest: Interest,
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

    /// Starts connecting to `to` for `slot`, to speak through `tls` if
    /// set.
    pub fn start(&mut self, slot: usize, to: SocketAddr, tls: Option<ClientConnection>, poller: &Poller) -> Result<(), Failure> {
        let fd = sock::socket(to.is_ipv6(), libc::SOCK_STREAM, 0)?;
        // Connected at once or not, writability says the handshake is over.
        sock::connect(&fd, to)?;
        poller.add(&fd, slot as u64, Interest::Write)?;
        self.conns[slot] = Some(Conn { fd, stage: Stage::Connecting, have: 0, tls: tls.map(Box::new), interest: Interest::Write });
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
                    self.stage = match (&mut self.tls, http) {
                        (Some(tls), Some(http)) => {
                            // Into the session's buffer: cannot block.
                            if let Err(e) = tls.writer().write_all(http.request()) {
                                return Some(Err(e.into()));
                            }
                            Stage::Receiving
                        }
                        _ => Stage::Sending(0),
                    };
                }
                Stage::Sending(sent) => {
                    let request = http.map_or(&[][..], HttpCheck::request);
                    match sock::write(&self.fd, &request[sent..]) {
                        Ok(n) if sent + n < request.len() => self.stage = Stage::Sending(sent + n),
                        Ok(_) => {
                            if let Err(e) = self.wait_for(Interest::Read, token, poller) {
                                return Some(Err(e.into()));
                            }
                            self.stage = Stage::Receiving;
                            return None;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                        Err(e) => return Some(Err(e.into())),
                    }
                }
                Stage::Receiving if self.tls.is_some() => return self.receive_tls(token, http?, buf, poller),
                Stage::Receiving => return self.receive(http?, buf),
            }
        }
    }

    /// Registers the socket for `interest` unless it already is.
    fn wait_for(&mut self, interest: Interest, token: u64, poller: &Poller) -> io::Result<()> {
        if self.interest != interest {
            poller.modify(&self.fd, token, interest)?;
            self.interest = interest;
        }
        Ok(())
    }

    /// Moves TLS records both ways and reads what they decrypt to; the
    /// result once the response decides it.
    fn receive_tls(&mut self, token: u64, http: &HttpCheck, buf: &mut [u8], poller: &Poller) -> Option<Result<(), Failure>> {
        loop {
            let tls = self.tls.as_mut()?;
            let mut io = FdIo(&self.fd);
            while tls.wants_write() {
                match tls.write_tls(&mut io) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return self.wait_for(Interest::Write, token, poller).err().map(|e| Err(e.into())),
                    Err(e) => return Some(Err(e.into())),
                }
            }
            let closed = match tls.read_tls(&mut io) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return self.wait_for(Interest::Read, token, poller).err().map(|e| Err(e.into())),
                Err(e) if tls.is_handshaking() => return Some(Err(e.into())),
                // A reset after the response: judge what came.
                Err(_) => true,
            };
            if let Err(e) = tls.process_new_packets() {
                return Some(Err(tls_failure(&e)));
            }
            if closed && tls.is_handshaking() {
                return Some(Err(Failure::Tls));
            }
            loop {
                match tls.reader().read(&mut buf[self.have..]) {
                    Ok(n) if n > 0 => {
                        self.have += n;
                        if let Some(r) = verdict(http.judge(&buf[..self.have], self.have == buf.len())) {
                            return Some(r);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // The peer's close_notify, a close without it, or a
                    // full buffer: no more will come.
                    _ => return verdict(http.judge(&buf[..self.have], true)),
                }
            }
            if closed {
                return verdict(http.judge(&buf[..self.have], true));
            }
        }
    }

    /// Reads what arrived; the result once the response decides it.
    fn receive(&mut self, http: &HttpCheck, buf: &mut [u8]) -> Option<Result<(), Failure>> {
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

/// A TLS error as a check's failure: a certificate the checker does not
/// trust (or the server's alert about the handshake's certificates) apart
/// from the rest.
fn tls_failure(e: &rustls::Error) -> Failure {
    match e {
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => Failure::Certificate,
        _ => Failure::Tls,
    }
}

/// The socket as rustls reads and writes records.
struct FdIo<'a>(&'a OwnedFd);

impl Read for FdIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        sock::read(self.0, buf)
    }
}

impl Write for FdIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        sock::write(self.0, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A judgement as a check's result, once it is one.
fn verdict(j: Judgement) -> Option<Result<(), Failure>> {
    match j {
        Judgement::Pending => None,
        Judgement::Pass => Some(Ok(())),
        Judgement::Fail(f) => Some(Err(f)),
    }
}
