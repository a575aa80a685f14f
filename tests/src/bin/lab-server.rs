//! The backend server of the lab (std only): HTTP on every `--http PORT`
//! answering `GET /` with its name and `GET /bytes/N` with N bytes
//! (byte i = i % 251, so truncation or corruption shows), and a UDP echo on
//! every `--udp PORT` (both repeatable). Both listen on [::] (IPv4 and IPv6); `--udp-bind ADDR`
//! (repeatable) binds the echo to those addresses instead, as a UDP service
//! behind DSR must so that its answers leave from the VIP. Prints `ready`
//! once bound.
//!
//! With `--health-dir DIR`, `GET /health` answers 200 with the contents of
//! the file DIR/NAME, or 503 while there is no such file: tests change a
//! backend's health answer while its port stays open.
//!
//! With `--delay-ms N`, every HTTP answer waits N ms first: a slow server.
//!
//! `--echo PORT` (repeatable) echoes every TCP connection's bytes back for
//! as long as it stays open: long-lived connections that a failover test
//! watches.
//!
//! lab-server --name NAME [--http PORT]... [--echo PORT]... [--health-dir DIR] [--delay-ms N] [--udp PORT]... [--udp-bind ADDR]...

use std::io::{BufWriter, Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::exit;
use std::thread;
use std::time::Duration;

/// Largest body `GET /bytes/N` serves.
const MAX_BYTES: u64 = 1 << 30;

struct Args {
    name: String,
    http: Vec<u16>,
    echo: Vec<u16>,
    udp: Vec<u16>,
    udp_bind: Vec<IpAddr>,
    health_dir: Option<PathBuf>,
    delay: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut args =
        Args { name: String::new(), http: Vec::new(), echo: Vec::new(), udp: Vec::new(), udp_bind: Vec::new(), health_dir: None, delay: Duration::ZERO };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let port = || value.parse::<u16>().map_err(|_| format!("{flag}: `{value}` is not a port"));
        match flag.as_str() {
            "--name" => args.name = value.clone(),
            "--http" => args.http.push(port()?),
            "--echo" => args.echo.push(port()?),
            "--udp" => args.udp.push(port()?),
            "--udp-bind" => args.udp_bind.push(value.parse().map_err(|_| format!("--udp-bind: `{value}` is not an address"))?),
            "--health-dir" => args.health_dir = Some(PathBuf::from(&value)),
            "--delay-ms" => args.delay = Duration::from_millis(value.parse().map_err(|_| format!("--delay-ms: `{value}` is not a number"))?),
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    if args.name.is_empty() {
        return Err("--name is required".into());
    }
    Ok(args)
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("lab-server: {e}\nusage: lab-server --name NAME [--http PORT]... [--echo PORT]... [--health-dir DIR] [--delay-ms N] [--udp PORT]... [--udp-bind ADDR]...");
        exit(2)
    });
    let mut workers = Vec::new();
    for &port in &args.http {
        let listener = TcpListener::bind(("::", port)).unwrap_or_else(|e| fail("HTTP bind", e));
        let name = args.name.clone();
        let health = args.health_dir.as_ref().map(|d| d.join(&args.name));
        let delay = args.delay;
        workers.push(thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (name, health) = (name.clone(), health.clone());
                thread::spawn(move || {
                    // A client that vanishes mid-request is its own problem.
                    let _ = serve_http(conn, &name, health.as_deref(), delay);
                });
            }
        }));
    }
    for &port in &args.echo {
        let listener = TcpListener::bind(("::", port)).unwrap_or_else(|e| fail("echo bind", e));
        workers.push(thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                thread::spawn(move || echo(conn));
            }
        }));
    }
    let addrs = if args.udp_bind.is_empty() { vec![IpAddr::from([0u16; 8])] } else { args.udp_bind.clone() };
    for &port in &args.udp {
        for &addr in &addrs {
            let sock = UdpSocket::bind((addr, port)).unwrap_or_else(|e| fail("UDP bind", e));
            workers.push(thread::spawn(move || {
                let mut buf = [0u8; 65536];
                loop {
                    if let Ok((n, from)) = sock.recv_from(&mut buf) {
                        let _ = sock.send_to(&buf[..n], from);
                    }
                }
            }));
        }
    }
    println!("ready {}", args.name);
    for w in workers {
        let _ = w.join();
    }
}

/// Until the peer closes or the connection breaks.
fn echo(mut conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = conn.read(&mut buf) {
        if conn.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

fn fail(what: &str, e: std::io::Error) -> ! {
    eprintln!("lab-server: {what}: {e}");
    exit(1)
}

fn serve_http(mut conn: TcpStream, name: &str, health: Option<&std::path::Path>, delay: Duration) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf)?;
        if n == 0 || req.len() > 8192 {
            return Ok(());
        }
        req.extend_from_slice(&buf[..n]);
    }
    thread::sleep(delay);
    let line = String::from_utf8_lossy(&req);
    let path = line.split_whitespace().nth(1).unwrap_or("");
    let mut out = BufWriter::with_capacity(64 * 1024, conn);
    if path == "/" {
        let body = format!("{name}\n");
        write!(out, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
    } else if let (Some(file), "/health") = (health, path) {
        let (status, body) = match std::fs::read(file) {
            Ok(body) => ("200 OK", body),
            Err(_) => ("503 Service Unavailable", b"no health file\n".to_vec()),
        };
        write!(out, "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())?;
        out.write_all(&body)?;
    } else if let Some(n) = path.strip_prefix("/bytes/").and_then(|n| n.parse::<u64>().ok()).filter(|&n| n <= MAX_BYTES) {
        write!(out, "HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n")?;
        let pattern: Vec<u8> = (0..251 * 256).map(|i| (i % 251) as u8).collect();
        let mut left = n;
        while left > 0 {
            let k = left.min(pattern.len() as u64) as usize;
            out.write_all(&pattern[..k])?;
            left -= k as u64;
        }
    } else {
        out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    }
    out.flush()
}
