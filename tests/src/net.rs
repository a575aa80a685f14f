//! Running code inside a lab namespace, and the tiny clients tests use there.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::thread;
use std::time::Duration;

/// Runs `f` on a thread that has entered network namespace `ns`: sockets
/// it creates, interfaces it names and programs it attaches are those of
/// `ns`. A panic in `f` is propagated.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    thread::scope(|s| {
        let handle = s.spawn(|| {
            let file = File::open(format!("/run/netns/{ns}"))?;
            fulcrum_io::unix::enter_netns(&file)?;
            Ok(f())
        });
        handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// `GET path` over a new connection; the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<(u16, Vec<u8>)> {
    http_request(addr, path, &[], timeout).map(|r| (r.status, r.body))
}

/// An HTTP response as [`http_request`] read it.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// The status line and headers.
    pub head: String,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// `GET path` over a new connection with `headers` ("Name: value") added.
pub fn http_request(addr: SocketAddr, path: &str, headers: &[&str], timeout: Duration) -> io::Result<HttpResponse> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n")?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no end of HTTP headers"))?;
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad status line: {head}")))?;
    Ok(HttpResponse { status, head, body: resp.split_off(split + 4) })
}

/// Asks `/` on each connection opened earlier (kept open, say, across a
/// drain or a flood): the name each lab server answered with. Panics on a
/// connection that is not served, which is what the callers test.
pub fn ask_held(conns: &mut [TcpStream], timeout: Duration) -> Vec<String> {
    conns
        .iter_mut()
        .enumerate()
        .map(|(i, s)| {
            let mut resp = String::new();
            let asked = s
                .set_read_timeout(Some(timeout))
                .and_then(|()| s.write_all(b"GET / HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n"))
                .and_then(|()| s.read_to_string(&mut resp));
            assert!(asked.is_ok() && resp.starts_with("HTTP/1.1 200 OK"), "held connection {i} is not served: {asked:?} {resp:?}");
            resp.rsplit("\r\n\r\n").next().unwrap_or_default().trim().to_string()
        })
        .collect()
}

/// Sends `payload` to `addr` over UDP and waits for one datagram back;
/// the reply and the address it came from.
pub fn udp_echo(addr: SocketAddr, payload: &[u8], timeout: Duration) -> io::Result<(Vec<u8>, SocketAddr)> {
    let bind: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
    let sock = UdpSocket::bind(bind)?;
    sock.set_read_timeout(Some(timeout))?;
    sock.send_to(payload, addr)?;
    let mut buf = vec![0u8; 65536];
    let (n, from) = sock.recv_from(&mut buf)?;
    buf.truncate(n);
    Ok((buf, from))
}

/// `n` HTTP requests for `/` to `addr` from namespace `ns`, each on a new
/// connection: how many each lab server (by the name it answers with)
/// served, and how many failed (no answer in `timeout`, or not 200).
pub fn http_answers(ns: &str, addr: SocketAddr, n: usize, timeout: Duration) -> io::Result<(HashMap<String, usize>, usize)> {
    in_netns(ns, || {
        let (mut by_name, mut failed) = (HashMap::new(), 0);
        for _ in 0..n {
            match http_get(addr, "/", timeout) {
                Ok((200, body)) => *by_name.entry(String::from_utf8_lossy(&body).trim().to_string()).or_insert(0) += 1,
                _ => failed += 1,
            }
        }
        (by_name, failed)
    })
}
