//! Load from the lab's client: floods of forged TCP segments from random
//! sources, and real clients opening connections in a loop meanwhile.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fulcrum_io::sock::FrameSender;
use fulcrum_testing::frame::PacketBuilder;

use crate::{Lab, LabError, http_get, in_netns};

/// A flood of forged TCP segments to one VIP (any mode: the frames go to
/// the balancer's client-side MAC), each from a random source address in
/// 198.19.0.0/16 (2001:db8:ff00::/48 for an IPv6 VIP) and a random port.
#[derive(Clone, Copy, Debug)]
pub struct Flood {
    pub target: SocketAddr,
    /// The TCP flags of every segment: SYN, ACK, RST, ...
    pub flags: u8,
    pub frames: u32,
    /// About this many frames a second.
    pub rate: u32,
}

/// Frames sent between two looks at the clock.
const PACE_EVERY: u32 = 64;

impl Flood {
    /// Sends the flood from the client's namespace and interface; returns
    /// when all are sent.
    pub fn send(&self, lab: &Lab) -> Result<(), LabError> {
        let (ifc, lb_mac) = (lab.client.iface().clone(), lab.balancer.ifaces[0].mac);
        let sent = in_netns(&lab.client.ns, || {
            let sender = FrameSender::open(&ifc.name)?;
            // xorshift64: spread sources, the same ones on every run.
            let mut x = 0x9e37_79b9_7f4a_7c15_u64 ^ u64::from(self.flags);
            let start = Instant::now();
            for i in 0..self.frames {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let [a, b, c, d, p, q, ..] = x.to_be_bytes();
                let src = match self.target {
                    SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(198, 19, a, b)),
                    SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xff00, 0, 0, 0, u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]))),
                };
                let port = 1024 + u16::from_be_bytes([p, q]) % 64_512;
                let frame = PacketBuilder::tcp(src, port, self.target.ip(), self.target.port(), self.flags).macs(ifc.mac, lb_mac).frame();
                sender.send(&frame)?;
                if i % PACE_EVERY == 0 {
                    let due = Duration::from_secs_f64(f64::from(i) / f64::from(self.rate.max(1)));
                    if let Some(ahead) = due.checked_sub(start.elapsed()) {
                        std::thread::sleep(ahead);
                    }
                }
            }
            Ok::<_, std::io::Error>(())
        });
        sent.and_then(|r| r).map_err(|e| LabError(format!("flooding {} from {}: {e}", self.target, lab.client.ns)))
    }
}

/// What real clients got: requests answered 200, and the others.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub ok: u64,
    pub failed: u64,
    /// The first few failures, for the message.
    pub errors: Vec<String>,
}

const KEPT_ERRORS: usize = 10;

impl Tally {
    fn add(&mut self, other: Tally) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.errors.extend(other.errors);
        self.errors.truncate(KEPT_ERRORS);
    }
}

/// Sets the flag when dropped: the clients stop even when `during`
/// panics (their scope would wait for them forever).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Runs `during` while `clients` real clients in the client's namespace
/// each request `GET /` from `target` on a new connection, one after the
/// other (each may take `timeout`); what `during` returned and what the
/// clients got.
pub fn with_clients<T>(lab: &Lab, target: SocketAddr, clients: usize, timeout: Duration, during: impl FnOnce() -> T) -> (T, Tally) {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let loops: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(|| {
                    in_netns(&lab.client.ns, || {
                        let mut t = Tally::default();
                        while !stop.load(Ordering::Relaxed) {
                            match http_get(target, "/", timeout) {
                                Ok((200, _)) => t.ok += 1,
                                other => {
                                    t.failed += 1;
                                    if t.errors.len() < KEPT_ERRORS {
                                        t.errors.push(format!("{other:?}"));
                                    }
                                }
                            }
                        }
                        t
                    })
                    .expect("entering the client's namespace")
                })
            })
            .collect();
        let guard = StopOnDrop(&stop);
        let out = during();
        drop(guard);
        let mut total = Tally::default();
        for l in loops {
            total.add(l.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
        (out, total)
    })
}
