//! Serving a listening socket (the control socket, the metrics endpoint)
//! with one thread per connection, so that no client waits for another:
//! a cap on the connections served at once, a deadline for reading the
//! whole request (not per read: a client sending a byte now and then is
//! cut off all the same), a cap on its size, and a deadline for writing
//! the whole answer. A connection over the cap gets a fixed answer, sent
//! without waiting, and is closed.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::error::Error;

/// A connected stream whose reads and writes can time out.
pub trait Stream: Read + Write + Send + 'static {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()>;
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()>;
    fn set_nonblocking(&self, on: bool) -> io::Result<()>;
}

/// A listening socket.
pub trait Listen: Send + 'static {
    type Conn: Stream;
    fn accept_conn(&self) -> io::Result<Self::Conn>;
}

macro_rules! stream {
    ($stream:ty, $listener:ty) => {
        impl Stream for $stream {
            fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
                <$stream>::set_read_timeout(self, t)
            }
            fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
                <$stream>::set_write_timeout(self, t)
            }
            fn set_nonblocking(&self, on: bool) -> io::Result<()> {
                <$stream>::set_nonblocking(self, on)
            }
        }

        impl Listen for $listener {
            type Conn = $stream;
            fn accept_conn(&self) -> io::Result<$stream> {
                self.accept().map(|(conn, _)| conn)
            }
        }
    };
}

stream!(UnixStream, UnixListener);
stream!(TcpStream, TcpListener);

/// How an endpoint bounds its clients.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Names the endpoint's threads and log lines.
    pub name: &'static str,
    /// Connections served at once; more are answered `busy` and closed.
    pub max_connections: usize,
    /// For the whole request, from the accept.
    pub request_timeout: Duration,
    /// The longest request read; a longer one is refused.
    pub max_request: usize,
    /// For writing the whole answer.
    pub write_timeout: Duration,
}

/// Counts the connections being served; a slot is given back when its
/// `Permit` drops (also when the handler panics).
struct Permit(Arc<AtomicUsize>);

impl Permit {
    fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Permit> {
        count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).ok().map(|_| Permit(Arc::clone(count)))
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Small: a handler parses a request, waits for its answer and writes it.
const STACK: usize = 256 * 1024;

/// Accepts connections on `listener` on a thread of its own until the
/// process exits; each one is served by `handle(conn, deadline)` on a new
/// thread, `deadline` being when its request must have arrived.
pub fn serve<L: Listen>(listener: L, limits: Limits, busy: &'static [u8], handle: impl Fn(L::Conn, Instant) + Send + Sync + 'static) -> Result<(), Error> {
    let handle = Arc::new(handle);
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name(format!("{}-accept", limits.name))
        .spawn(move || {
            loop {
                let mut conn = match listener.accept_conn() {
                    Ok(c) => c,
                    Err(e) => {
                        // EMFILE and the like: do not spin on them.
                        tracing::warn!("{}: accept: {e}", limits.name);
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                };
                let deadline = Instant::now() + limits.request_timeout;
                let Some(permit) = Permit::take(&active, limits.max_connections) else {
                    // A fresh socket's send buffer is empty: this never
                    // waits, and nothing is read.
                    let _ = conn.set_nonblocking(true).and_then(|()| conn.write_all(busy));
                    tracing::debug!("{}: {} connections already, refused one", limits.name, limits.max_connections);
                    continue;
                };
                let handle = Arc::clone(&handle);
                let spawned = std::thread::Builder::new().name(limits.name.into()).stack_size(STACK).spawn(move || {
                    let _permit = permit;
                    handle(conn, deadline);
                });
                if let Err(e) = spawned {
                    tracing::warn!("{}: cannot start a connection thread: {e}", limits.name);
                }
            }
        })
        .map(drop)
        .map_err(Error::system(format!("starting the {} thread", limits.name)))
}

/// What a client sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// `complete` said so, or the client closed its side: the bytes.
    Request(Vec<u8>),
    /// More than the limit without being complete.
    TooLarge,
    /// Not complete by the deadline.
    TimedOut,
}

/// Reads from `conn` until `complete(bytes so far)`, the end of the
/// stream, `max` bytes or `deadline`, whichever comes first.
pub fn read_request(conn: &mut impl Stream, deadline: Instant, max: usize, complete: impl Fn(&[u8]) -> bool) -> io::Result<Received> {
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if complete(&req) {
            return Ok(Received::Request(req));
        }
        if req.len() > max {
            return Ok(Received::TooLarge);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Received::TimedOut);
        }
        conn.set_read_timeout(Some(left))?;
        match conn.read(&mut buf[..(max + 1 - req.len()).min(4096)]) {
            Ok(0) => return Ok(Received::Request(req)),
            Ok(n) => req.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return Ok(Received::TimedOut),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Writes all of `bytes` by `deadline`, however slowly the client reads.
pub fn write_answer(conn: &mut impl Stream, mut bytes: &[u8], deadline: Instant) -> io::Result<()> {
    while !bytes.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        conn.set_write_timeout(Some(left))?;
        match conn.write(bytes) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(b: &[u8]) -> bool {
        b.contains(&b'\n')
    }

    #[test]
    fn the_deadline_is_for_the_whole_request() {
        let (mut server, mut client) = UnixStream::pair().unwrap();
        let writer = std::thread::spawn(move || {
            // A byte every 100 ms: each read is quick, the request is not.
            for _ in 0..10 {
                if client.write_all(b" ").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let t = Instant::now();
        let got = read_request(&mut server, t + Duration::from_millis(350), 1024, line).unwrap();
        assert_eq!(got, Received::TimedOut);
        assert!(t.elapsed() < Duration::from_millis(600), "{:?}", t.elapsed());
        drop(server);
        writer.join().unwrap();
    }

    #[test]
    fn requests_end_at_the_line_the_limit_or_the_end_of_stream() {
        let soon = || Instant::now() + Duration::from_secs(2);
        let (mut server, mut client) = UnixStream::pair().unwrap();
        client.write_all(b"{\"request\":\"stats\"}\n").unwrap();
        assert_eq!(read_request(&mut server, soon(), 1024, line).unwrap(), Received::Request(b"{\"request\":\"stats\"}\n".to_vec()));
        client.write_all(&[b'x'; 100]).unwrap();
        assert_eq!(read_request(&mut server, soon(), 64, line).unwrap(), Received::TooLarge);
        let (mut server, mut client) = UnixStream::pair().unwrap();
        client.write_all(b"half").unwrap();
        drop(client);
        assert_eq!(read_request(&mut server, soon(), 64, line).unwrap(), Received::Request(b"half".to_vec()));
    }

    #[test]
    fn permits_are_capped_and_given_back() {
        let count = Arc::new(AtomicUsize::new(0));
        let (a, b) = (Permit::take(&count, 2), Permit::take(&count, 2));
        assert!(a.is_some() && b.is_some());
        assert!(Permit::take(&count, 2).is_none());
        drop(a);
        assert!(Permit::take(&count, 2).is_some());
        assert_eq!(count.load(Ordering::Relaxed), 1);
    }
}
