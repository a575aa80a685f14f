//! The null AF_XDP forwarder: the baseline fulcrum is measured against.
//!
//! Steers one VIP into AF_XDP sockets (one per rx queue of `--in`), rewrites
//! each frame's destination to one backend (MACs, destination IP, IPv4
//! header and L4 checksums updated incrementally, RFC 1624) and transmits it
//! on `--out` (default: `--in`, one-arm). No flow state, no scheduling.
//! Prints `ready ...` once attached and a counter summary on SIGINT/SIGTERM.
//!
//! null-fwd --in IF [--out IF] --vip IP --proto udp|tcp --port N
//!          --backend-ip IP --backend-mac MAC [--mode native|generic|auto]
//!          [--copy]

use std::net::IpAddr;
use std::process::exit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::thread;
use std::time::Duration;

use fulcrum_dataplane::wire::{IpProtocol, checksum};
use fulcrum_io::afxdp::{self, XskConfig, XskIo, XskStats};
use fulcrum_io::netinfo::{iface_mac, parse_mac};
use fulcrum_io::xdp::SteerProgram;
use fulcrum_io::{FrameRef, IoError, PacketIo, PortId, XdpMode};

/// Set by SIGINT or SIGTERM; the workers stop at their next poll.
static STOP: LazyLock<Arc<AtomicBool>> = LazyLock::new(|| Arc::new(AtomicBool::new(false)));

struct Args {
    ifin: String,
    ifout: String,
    vip: IpAddr,
    proto: u8,
    port: u16,
    backend: IpAddr,
    backend_mac: [u8; 6],
    mode: XdpMode,
    zero_copy: bool,
    /// Spin with preferred busy polling instead of sleeping when idle (as
    /// fulcrum's `daemon.poll = "busy"`).
    busy: bool,
}

const USAGE: &str = "usage: null-fwd --in IF [--out IF] --vip IP --proto udp|tcp --port N \
                     --backend-ip IP --backend-mac MAC [--mode native|generic|auto] [--copy] [--busy]";

fn parse_args() -> Result<Args, String> {
    let (mut ifin, mut ifout, mut vip, mut proto, mut port, mut backend, mut mac) = (None, None, None, None, None, None, None);
    let (mut mode, mut zero_copy, mut busy) = (XdpMode::Auto, true, false);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--copy" || flag == "--busy" {
            (zero_copy, busy) = (zero_copy && flag != "--copy", busy || flag == "--busy");
            continue;
        }
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |what: &str| format!("{flag}: `{v}` is not {what}");
        match flag.as_str() {
            "--in" => ifin = Some(v.clone()),
            "--out" => ifout = Some(v.clone()),
            "--vip" => vip = Some(v.parse::<IpAddr>().map_err(|_| bad("an IP address"))?),
            "--backend-ip" => backend = Some(v.parse::<IpAddr>().map_err(|_| bad("an IP address"))?),
            "--backend-mac" => mac = Some(parse_mac(&v).ok_or_else(|| bad("a MAC address"))?),
            "--port" => port = Some(v.parse::<u16>().map_err(|_| bad("a port"))?),
            "--proto" => {
                proto = Some(match v.as_str() {
                    "tcp" => 6,
                    "udp" => 17,
                    _ => return Err(bad("tcp or udp")),
                })
            }
            "--mode" => mode = v.parse().map_err(|e: IoError| e.to_string())?,
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    let need = |name: &str| format!("{name} is required");
    let ifin: String = ifin.ok_or_else(|| need("--in"))?;
    let (vip, backend) = (vip.ok_or_else(|| need("--vip"))?, backend.ok_or_else(|| need("--backend-ip"))?);
    if vip.is_ipv4() != backend.is_ipv4() {
        return Err("--vip and --backend-ip must be the same IP version".into());
    }
    Ok(Args {
        ifout: ifout.unwrap_or_else(|| ifin.clone()),
        ifin,
        vip,
        proto: proto.ok_or_else(|| need("--proto"))?,
        port: port.ok_or_else(|| need("--port"))?,
        backend,
        backend_mac: mac.ok_or_else(|| need("--backend-mac"))?,
        mode,
        zero_copy,
        busy,
    })
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("null-fwd: {e}\n{USAGE}");
        exit(2)
    });
    match run(&args) {
        Ok(per_queue) => {
            let sum = |f: fn(&XskStats) -> u64| per_queue.iter().map(f).sum::<u64>();
            let rx: Vec<String> = per_queue.iter().map(|s| s.rx.to_string()).collect();
            println!(
                "null-fwd: rx={} tx={} tx_ring_full={} tx_invalid={} rx_per_queue={}",
                sum(|s| s.rx),
                sum(|s| s.tx),
                sum(|s| s.tx_ring_full),
                sum(|s| s.tx_invalid),
                rx.join(",")
            );
        }
        Err(e) => {
            eprintln!("null-fwd: error: {e}");
            exit(1)
        }
    }
}

/// Forwards until SIGINT/SIGTERM; the counters of each queue's worker.
fn run(args: &Args) -> Result<Vec<XskStats>, IoError> {
    let mut steer = SteerProgram::attach(&args.ifin, args.mode)?;
    steer.add_vip(args.vip, IpProtocol(args.proto), args.port)?;
    let one_arm = args.ifin == args.ifout;
    let ifnames: Vec<&str> = if one_arm { vec![&args.ifin] } else { vec![&args.ifin, &args.ifout] };
    let out_port: PortId = if one_arm { 0 } else { 1 };
    let src_mac = iface_mac(&args.ifout).map_err(|_| IoError::NoSuchInterface { ifname: args.ifout.clone() })?;

    let cfg = XskConfig { zero_copy: args.zero_copy, busy_poll: args.busy.then(afxdp::BusyPoll::default), ..XskConfig::default() };
    let queues = afxdp::rx_queue_count(&args.ifin)?;
    let mut workers = Vec::new();
    for q in 0..queues {
        let io = XskIo::open(&ifnames, q, &cfg)?;
        if let Some(fd) = io.socket_fd(0) {
            steer.register_socket(q, fd)?;
        }
        workers.push(io);
    }
    let zc = workers.iter().all(|w| w.is_zero_copy(0));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&STOP)).map_err(|e| IoError::InvalidArgument(format!("installing a signal handler: {e}")))?;
    }
    let busy_poll = args.busy && workers.iter().all(|w| w.is_busy_polling());
    println!("ready queues={queues} mode={} zero_copy={zc} busy_poll={busy_poll}", steer.mode());

    let rewrite = Rewrite { backend: args.backend, dst_mac: args.backend_mac, src_mac, out_port };
    let busy = args.busy;
    let handles: Vec<_> = workers.into_iter().map(|io| thread::spawn(move || forward(io, rewrite, busy))).collect();
    handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(IoError::InvalidArgument("worker panicked".into())))).collect()
}

#[derive(Clone, Copy)]
struct Rewrite {
    backend: IpAddr,
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    out_port: PortId,
}

fn forward(mut io: XskIo, rw: Rewrite, busy: bool) -> Result<XskStats, IoError> {
    let (mut rx, mut tx, mut dropped) = (Vec::with_capacity(64), Vec::with_capacity(64), Vec::<FrameRef>::new());
    while !STOP.load(Ordering::Relaxed) {
        if io.recv(&mut rx)? == 0 {
            match busy {
                true => io.spin()?,
                false => io.wait(Duration::from_millis(10))?,
            }
            continue;
        }
        for mut f in rx.drain(..) {
            let (start, len) = (f.start, f.len);
            let ok = io.buffer(&mut f.chunk).is_some_and(|b| rw.apply(&mut b[start..start + len]));
            if ok {
                f.port = rw.out_port;
                tx.push(f);
            } else {
                dropped.push(f);
            }
        }
        io.send(&mut tx)?;
        io.recycle(&mut dropped);
    }
    Ok(io.stats())
}

impl Rewrite {
    /// Points `frame` at the backend; false if it is not IP of the
    /// backend's family or is cut short.
    fn apply(&self, frame: &mut [u8]) -> bool {
        if frame.len() < 14 {
            return false;
        }
        let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
        let ok = match (ethertype, self.backend) {
            (0x0800, IpAddr::V4(b)) => rewrite_v4(&mut frame[14..], &b.octets()),
            (0x86dd, IpAddr::V6(b)) => rewrite_v6(&mut frame[14..], &b.octets()),
            _ => false,
        };
        if ok {
            frame[0..6].copy_from_slice(&self.dst_mac);
            frame[6..12].copy_from_slice(&self.src_mac);
        }
        ok
    }
}

fn rewrite_v4(ip: &mut [u8], new: &[u8; 4]) -> bool {
    if ip.len() < 20 {
        return false;
    }
    let ihl = usize::from(ip[0] & 0xf) * 4;
    if ihl < 20 || ip.len() < ihl {
        return false;
    }
    let old: [u8; 4] = [ip[16], ip[17], ip[18], ip[19]];
    let first_fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff == 0;
    if first_fragment {
        fix_l4(ip[9], &mut ip[ihl..], &old, new, false);
    }
    let check = u16::from_be_bytes([ip[10], ip[11]]);
    ip[10..12].copy_from_slice(&checksum::update(check, &old, new).to_be_bytes());
    ip[16..20].copy_from_slice(new);
    true
}

fn rewrite_v6(ip: &mut [u8], new: &[u8; 16]) -> bool {
    if ip.len() < 40 {
        return false;
    }
    let mut old = [0u8; 16];
    old.copy_from_slice(&ip[24..40]);
    fix_l4(ip[6], &mut ip[40..], &old, new, true);
    ip[24..40].copy_from_slice(new);
    true
}

/// Updates the TCP/UDP checksum for a changed pseudo-header address.
fn fix_l4(proto: u8, l4: &mut [u8], old: &[u8], new: &[u8], v6: bool) {
    let at = match proto {
        6 => 16,
        17 => 6,
        _ => return,
    };
    if l4.len() < at + 2 {
        return;
    }
    let check = u16::from_be_bytes([l4[at], l4[at + 1]]);
    if proto == 17 && check == 0 && !v6 {
        return; // IPv4 UDP without checksum
    }
    let mut c = checksum::update(check, old, new);
    if proto == 17 && c == 0 {
        c = 0xffff;
    }
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_update_matches_recomputation() {
        let mut hdr = [0x45u8, 0, 0, 28, 0, 1, 0, 0, 64, 17, 0, 0, 198, 18, 0, 1, 198, 18, 100, 1];
        let c = checksum::checksum(&hdr, 0);
        hdr[10..12].copy_from_slice(&c.to_be_bytes());
        assert!(rewrite_v4(&mut hdr, &[198, 18, 0, 11]));
        assert_eq!(checksum::checksum(&hdr, 0), 0, "header checksum verifies");
        assert_eq!(&hdr[16..20], &[198, 18, 0, 11]);
    }

    #[test]
    fn short_or_foreign_frames_are_refused() {
        let rw = Rewrite { backend: "198.18.0.11".parse().unwrap(), dst_mac: [0; 6], src_mac: [0; 6], out_port: 0 };
        assert!(!rw.apply(&mut [0u8; 10]));
        let mut arp = [0u8; 60];
        arp[12] = 0x08;
        arp[13] = 0x06;
        assert!(!rw.apply(&mut arp));
        let mut v6 = [0u8; 60];
        v6[12] = 0x86;
        v6[13] = 0xdd;
        assert!(!rw.apply(&mut v6), "IPv6 frame, IPv4 backend");
        assert_eq!(parse_mac("02:f1:00:00:0b:00"), Some([2, 0xf1, 0, 0, 0xb, 0]));
        assert_eq!(parse_mac("02:f1:00"), None);
    }
}
