//! The sync thread: every few milliseconds it sends the flows the workers
//! pushed, in datagrams of `flow::sync`'s format, to each peer (unicast)
//! or to the group (multicast); it receives the peers' and hands each flow
//! to its worker. Every datagram carries an HMAC-SHA256 of its bytes under
//! the pair's shared key: whoever can reach the port could otherwise plant
//! flows (a reply path, a source port) in the balancer's tables. A datagram
//! that fails it, comes from an address that is no peer, or says the
//! sender runs other workers or SNAT ports is dropped and counted.
//!
//! Each daemon says hello every second with a boot id drawn at start; a
//! peer heard with a new boot id (it started, or restarted) gets a bulk
//! resync of every live flow.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fulcrum_config as cfg;
use fulcrum_dataplane::flow::sync::{self as wire, ENTRY_LEN, HEADER_LEN, Header, Kind, SyncEntry};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::Ha;
use crate::control::api::{HaStatus, PeerStatus};
use crate::error::Error;

type HmacSha256 = Hmac<Sha256>;
const TAG_LEN: usize = 32;
/// Entries per datagram: header, entries and tag within a 1500-byte MTU
/// (IPv4 and UDP headers take 28).
const PER_DATAGRAM: usize = (1500 - 28 - HEADER_LEN - TAG_LEN) / ENTRY_LEN;
const MAX_DATAGRAM: usize = HEADER_LEN + PER_DATAGRAM * ENTRY_LEN + TAG_LEN;
const _: () = assert!(MAX_DATAGRAM + 28 <= 1500 && PER_DATAGRAM >= 14);
/// How long flows wait to be batched, at most.
const FLUSH: Duration = Duration::from_millis(2);
const HELLO: Duration = Duration::from_secs(1);
/// How long after first hearing a peer its bulk resync may take to
/// arrive (a million flows: about 1000 exports of 1024 slots per worker).
const SETTLE: Duration = Duration::from_millis(500);
/// How long a starting daemon waits for peers it does not hear: past two
/// hellos, a peer is down.
const GIVE_UP: Duration = Duration::from_secs(3);
/// Upper bounds (ms) of the lag histogram's buckets; the last is +Inf.
/// Fine below 10 ms, where the target lies: the status's p99 is a
/// bucket's bound.
pub const LAG_BUCKETS_MS: [u64; 12] = [1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 50, 1000];

/// What the sync thread counts.
#[derive(Debug, Default)]
pub struct SyncCounters {
    pub entries_sent: AtomicU64,
    pub entries_received: AtomicU64,
    pub datagrams_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub datagrams_received: AtomicU64,
    /// Datagrams dropped: wrong HMAC, from no peer, malformed, or from a
    /// peer whose workers or SNAT ports differ.
    pub unauthenticated: AtomicU64,
    pub unknown_peer: AtomicU64,
    pub malformed: AtomicU64,
    pub mismatched: AtomicU64,
    /// Received flows dropped because their worker's ring was full.
    pub inbound_lost: AtomicU64,
    /// Datagrams missing in a peer's sequence.
    pub gaps: AtomicU64,
    pub send_errors: AtomicU64,
    /// Time from a worker's push to the datagram leaving, per flow.
    pub lag_buckets: [AtomicU64; LAG_BUCKETS_MS.len() + 1],
    pub lag_sum_ms: AtomicU64,
}

struct Peer {
    addr: SocketAddr,
    boot_id: Option<u64>,
    last_seq: u32,
    last_heard: Option<Instant>,
    /// When it was first heard (`settled`).
    first_heard: Option<Instant>,
    received: u64,
    problem: Option<String>,
}

impl Peer {
    fn new(addr: SocketAddr) -> Peer {
        Peer { addr, boot_id: None, last_seq: 0, last_heard: None, first_heard: None, received: 0, problem: None }
    }
}

/// The running sync thread and what `status` and the metrics read.
pub struct Sync {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub counters: Arc<SyncCounters>,
    peers: Arc<Mutex<Vec<Peer>>>,
    listen: SocketAddr,
    ha: Arc<Ha>,
    started: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What both sides must agree on, from this daemon's configuration.
#[derive(Clone, Copy)]
pub struct Shape {
    pub workers: u16,
    pub snat_ports: (u16, u16),
}

fn boot_id() -> u64 {
    let mut b = [0u8; 8];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    match random {
        Ok(()) => u64::from_ne_bytes(b),
        // The time and pid differ between two starts just as well.
        Err(_) => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64) ^ u64::from(std::process::id()),
    }
}

struct Sockets {
    send: UdpSocket,
    /// Multicast: the group's own socket; unicast: `send` receives too.
    recv: Option<UdpSocket>,
    destinations: Vec<SocketAddr>,
}

fn sockets(c: &cfg::Sync) -> Result<Sockets, Error> {
    let send = UdpSocket::bind(c.listen).map_err(Error::system(format!("sync.listen {}", c.listen)))?;
    let Some(group) = c.group else {
        return Ok(Sockets { send, recv: None, destinations: c.peers.clone() });
    };
    let IpAddr::V4(local) = c.listen.ip() else { return Err(Error::Refused("sync.group needs an IPv4 sync.listen".into())) };
    let port = c.listen.port();
    let recv = UdpSocket::bind((group, port)).map_err(Error::system(format!("sync.group {group}:{port}")))?;
    recv.join_multicast_v4(&group, &local).map_err(Error::system(format!("joining sync.group {group} on {local}")))?;
    send.set_multicast_loop_v4(false).map_err(Error::system("sync: multicast loop"))?;
    send.set_multicast_ttl_v4(1).map_err(Error::system("sync: multicast TTL"))?;
    Ok(Sockets { send, recv: Some(recv), destinations: vec![SocketAddr::from((group, port))] })
}

impl Sync {
    pub fn start(c: &cfg::Sync, shape: Shape, ha: Arc<Ha>) -> Result<Sync, Error> {
        let socks = sockets(c)?;
        for s in std::iter::once(&socks.send).chain(&socks.recv) {
            s.set_nonblocking(true).map_err(Error::system("sync socket: non-blocking"))?;
        }
        let counters = Arc::new(SyncCounters::default());
        let peers = Arc::new(Mutex::new(c.peers.iter().map(|&addr| Peer::new(addr)).collect::<Vec<_>>()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut t = Thread {
            socks,
            multicast: c.group.is_some(),
            key: c.key.clone(),
            shape,
            boot_id: boot_id(),
            seq: 0,
            ha: Arc::clone(&ha),
            counters: Arc::clone(&counters),
            peers: Arc::clone(&peers),
            batch: Vec::with_capacity(PER_DATAGRAM),
            buf: vec![0; MAX_DATAGRAM],
            greet: false,
        };
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new().name("fulcrum-sync".into()).spawn(move || t.run(&flag)).map_err(Error::system("starting the sync thread"))?;
        tracing::info!(listen = %c.listen, peers = ?c.peers, group = ?c.group, role = ha.role().as_str(), "flow sync started");
        Ok(Sync { stop, thread: Some(thread), counters, peers, listen: c.listen, ha, started: Instant::now() })
    }

    /// Whether this daemon can be expected to hold its peers' flows: each
    /// peer was first heard at least `SETTLE` ago (it sends everything
    /// live when it hears this daemon's first hello, which goes out at
    /// start), or `GIVE_UP` passed since start (a peer that is down
    /// must not keep this one out of the fleet). A node joining a fleet
    /// waits for this before it is announced, so the flows the routers
    /// move to it do not arrive before their entries.
    pub fn settled(&self) -> bool {
        let since_start = self.started.elapsed();
        since_start >= GIVE_UP || (since_start >= SETTLE && lock(&self.peers).iter().all(|p| p.first_heard.is_some_and(|t| t.elapsed() >= SETTLE)))
    }

    pub fn status(&self) -> HaStatus {
        let c = &self.counters;
        let peers = lock(&self.peers)
            .iter()
            .map(|p| PeerStatus {
                addr: p.addr.to_string(),
                last_heard_ms: p.last_heard.map(|t| t.elapsed().as_millis() as u64),
                entries_received: p.received,
                problem: p.problem.clone(),
            })
            .collect();
        HaStatus {
            role: self.ha.role().as_str().into(),
            standing_down: self.ha.standing_down(),
            listen: self.listen.to_string(),
            entries_sent: c.entries_sent.load(Relaxed),
            entries_received: c.entries_received.load(Relaxed),
            bytes_sent: c.bytes_sent.load(Relaxed),
            lag_p99_ms: lag_quantile(&c.lag_buckets, 0.99),
            peers,
        }
    }
}

/// The upper bound of the bucket holding quantile `q` (None: no flows).
pub fn lag_quantile(buckets: &[AtomicU64], q: f64) -> Option<u64> {
    let counts: Vec<u64> = buckets.iter().map(|b| b.load(Relaxed)).collect();
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let want = (total as f64 * q).ceil() as u64;
    let mut seen = 0;
    for (i, n) in counts.iter().enumerate() {
        seen += n;
        if seen >= want {
            return Some(LAG_BUCKETS_MS.get(i).copied().unwrap_or(u64::MAX));
        }
    }
    None
}

impl Drop for Sync {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Thread {
    socks: Sockets,
    multicast: bool,
    key: Vec<u8>,
    shape: Shape,
    boot_id: u64,
    seq: u32,
    ha: Arc<Ha>,
    counters: Arc<SyncCounters>,
    peers: Arc<Mutex<Vec<Peer>>>,
    batch: Vec<SyncEntry>,
    buf: Vec<u8>,
    /// A peer (re)started: a hello goes now, not at the next interval, so
    /// that it has heard this node within milliseconds (`Sync::settled`:
    /// a joining node waits to have heard every peer).
    greet: bool,
}

impl Thread {
    fn run(&mut self, stop: &AtomicBool) {
        let (mut last_flush, mut last_hello) = (Instant::now(), None::<Instant>);
        let mut rbuf = vec![0u8; 65536];
        while !stop.load(Relaxed) {
            if std::mem::take(&mut self.greet) || last_hello.is_none_or(|t| t.elapsed() >= HELLO) {
                self.send(Kind::Hello, 0);
                last_hello = Some(Instant::now());
            }
            let fd = self.socks.recv.as_ref().unwrap_or(&self.socks.send).as_raw_fd();
            fulcrum_io::unix::wait_readable([fd], Some(FLUSH.saturating_sub(last_flush.elapsed())));
            loop {
                let sock = self.socks.recv.as_ref().unwrap_or(&self.socks.send);
                match sock.recv_from(&mut rbuf) {
                    Ok((n, from)) => self.receive(&rbuf[..n], from),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tracing::debug!("sync receive: {e}");
                        break;
                    }
                }
            }
            if last_flush.elapsed() >= FLUSH {
                self.flush();
                last_flush = Instant::now();
            }
        }
    }

    /// Sends everything the workers pushed.
    fn flush(&mut self) {
        let now = self.ha.now_ms();
        for w in 0..self.ha.lanes.len() {
            while let Some((e, stamp)) = self.ha.lanes[w].out.pop() {
                // Pushed after `now` was read: no lag (a wrapping clock).
                let lag = (now.wrapping_sub(stamp) as i32).max(0) as u64;
                let bucket = LAG_BUCKETS_MS.iter().position(|&b| lag <= b).unwrap_or(LAG_BUCKETS_MS.len());
                self.counters.lag_buckets[bucket].fetch_add(1, Relaxed);
                self.counters.lag_sum_ms.fetch_add(lag, Relaxed);
                self.batch.push(e);
                if self.batch.len() == PER_DATAGRAM {
                    self.send(Kind::Entries, PER_DATAGRAM);
                }
            }
        }
        if !self.batch.is_empty() {
            self.send(Kind::Entries, self.batch.len());
        }
    }

    /// Sends a hello, or the batch of `n` entries, to every destination.
    fn send(&mut self, kind: Kind, n: usize) {
        let header = Header { kind, boot_id: self.boot_id, seq: self.seq, workers: self.shape.workers, snat_ports: self.shape.snat_ports, count: 0 };
        self.seq = self.seq.wrapping_add(1);
        let len = wire::encode(header, &self.batch[..n], &mut self.buf);
        let tag = mac(&self.key, &self.buf[..len]);
        self.buf[len..len + TAG_LEN].copy_from_slice(&tag);
        for &to in &self.socks.destinations {
            match self.socks.send.send_to(&self.buf[..len + TAG_LEN], to) {
                Ok(_) => {
                    self.counters.datagrams_sent.fetch_add(1, Relaxed);
                    self.counters.bytes_sent.fetch_add((len + TAG_LEN) as u64, Relaxed);
                }
                Err(e) => {
                    self.counters.send_errors.fetch_add(1, Relaxed);
                    tracing::debug!("sync send to {to}: {e}");
                }
            }
        }
        self.counters.entries_sent.fetch_add(n as u64, Relaxed);
        self.batch.clear();
    }

    fn receive(&mut self, datagram: &[u8], from: SocketAddr) {
        let c = &self.counters;
        c.datagrams_received.fetch_add(1, Relaxed);
        let mut peers = lock(&self.peers);
        let known = peers.iter().position(|p| p.addr == from);
        if known.is_none() && !self.multicast {
            c.unknown_peer.fetch_add(1, Relaxed);
            return;
        }
        let Some(body_len) = datagram.len().checked_sub(TAG_LEN) else {
            c.malformed.fetch_add(1, Relaxed);
            return;
        };
        let (body, tag) = datagram.split_at(body_len);
        if !verify(&self.key, body, tag) {
            c.unauthenticated.fetch_add(1, Relaxed);
            return;
        }
        let (header, entries) = match wire::decode(body) {
            Ok(d) => d,
            Err(e) => {
                c.malformed.fetch_add(1, Relaxed);
                tracing::debug!("sync datagram from {from}: {e}");
                return;
            }
        };
        if header.boot_id == self.boot_id {
            return;
        }
        let i = known.unwrap_or_else(|| {
            peers.push(Peer::new(from));
            peers.len() - 1
        });
        let peer = &mut peers[i];
        peer.last_heard = Some(Instant::now());
        peer.first_heard = peer.first_heard.or(peer.last_heard);
        if header.workers != self.shape.workers || header.snat_ports != self.shape.snat_ports {
            c.mismatched.fetch_add(1, Relaxed);
            if peer.problem.is_none() {
                let problem = format!(
                    "peer runs {} workers and SNAT ports {}-{}, this balancer {} and {}-{}: its flows are refused; set daemon.workers and limits.snat_ports the same on both",
                    header.workers, header.snat_ports.0, header.snat_ports.1, self.shape.workers, self.shape.snat_ports.0, self.shape.snat_ports.1
                );
                tracing::error!(peer = %from, "{problem}");
                peer.problem = Some(problem);
            }
            return;
        }
        peer.problem = None;
        if peer.boot_id != Some(header.boot_id) {
            // A peer heard for the first time, or restarted: it holds
            // nothing of ours.
            tracing::info!(peer = %from, "sync peer (re)started: sending it every live flow");
            peer.boot_id = Some(header.boot_id);
            self.ha.request_bulk();
            self.greet = true;
        } else if header.seq.wrapping_sub(peer.last_seq) > 1 {
            c.gaps.fetch_add(u64::from(header.seq.wrapping_sub(peer.last_seq) - 1), Relaxed);
        }
        peer.last_seq = header.seq;
        peer.received += entries.len() as u64;
        c.entries_received.fetch_add(entries.len() as u64, Relaxed);
        drop(peers);
        for e in entries {
            let pushed = self.ha.lanes.get(usize::from(e.worker)).is_some_and(|l| l.inbound.push(e).is_ok());
            if !pushed {
                c.inbound_lost.fetch_add(1, Relaxed);
            }
        }
    }
}

fn mac(key: &[u8], body: &[u8]) -> [u8; TAG_LEN] {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    m.update(body);
    m.finalize().into_bytes().into()
}

/// In constant time, as `hmac` compares.
fn verify(key: &[u8], body: &[u8], tag: &[u8]) -> bool {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    m.update(body);
    m.verify_slice(tag).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_fits_the_mtu_and_the_tag_binds_every_byte() {
        let body = b"some bytes";
        let tag = mac(b"0123456789abcdef", body);
        assert!(verify(b"0123456789abcdef", body, &tag));
        assert!(!verify(b"0123456789abcdeX", body, &tag));
        assert!(!verify(b"0123456789abcdef", b"some byteS", &tag));
    }
}
