//! ICMP echo checks: one raw socket per address family for every backend
//! (root, or CAP_NET_RAW, which the daemon has anyway for AF_XDP). The
//! kernel filters the sockets down to echo replies (ICMP_FILTER,
//! ICMP6_FILTER); a reply is matched to its check by source address,
//! identifier (the check's slot) and sequence number. A check through the
//! VIP sends its request as a frame of [`DataPath`], addressed to the VIP,
//! from the balancer's own address, which the backend answers from the VIP.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use fulcrum_dataplane::flow::key::addr16;
use fulcrum_dataplane::wire::{IpProtocol, checksum};
use fulcrum_io::epoll::{Interest, Poller};
use fulcrum_io::sock;

use super::Failure;
use super::data_path::{DataPath, Senders};

const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;
/// Socket options of raw ICMP sockets (linux/icmp.h, linux/icmpv6.h).
const SOL_RAW: libc::c_int = 255;
const ICMP_FILTER: libc::c_int = 1;
const ICMP6_FILTER: libc::c_int = 1;
const PAYLOAD: &[u8; 16] = b"fulcrum health\0\0";

/// An echo request in flight, as its reply will show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Echo {
    from: IpAddr,
    id: u16,
    seq: u16,
}

pub struct Icmp {
    /// By family: [IPv4, IPv6].
    socks: [Option<OwnedFd>; 2],
    waiting: HashMap<Echo, usize>,
    by_slot: Vec<Option<Echo>>,
    seq: u16,
    /// Packet sockets of checks through the data path.
    senders: Senders,
}

impl Icmp {
    /// Opens the sockets of the families asked for, registered with
    /// `tokens[family]`.
    pub fn open(families: [bool; 2], slots: usize, poller: &Poller, tokens: [u64; 2]) -> io::Result<Icmp> {
        let mut socks = [None, None];
        for (v6, wanted) in [false, true].into_iter().zip(families) {
            if !wanted {
                continue;
            }
            let fd = if v6 {
                let fd = sock::socket(true, libc::SOCK_RAW, libc::IPPROTO_ICMPV6)?;
                // struct icmp6_filter: a set bit blocks that type.
                let mut block = [u32::MAX; 8];
                block[usize::from(ECHO_REPLY_V6 >> 5)] &= !(1 << (ECHO_REPLY_V6 & 31));
                sock::set_opt(&fd, libc::IPPROTO_ICMPV6, ICMP6_FILTER, &block)?;
                fd
            } else {
                let fd = sock::socket(false, libc::SOCK_RAW, libc::IPPROTO_ICMP)?;
                sock::set_opt(&fd, SOL_RAW, ICMP_FILTER, &!(1u32 << ECHO_REPLY_V4))?;
                fd
            };
            poller.add(&fd, tokens[usize::from(v6)], Interest::Read)?;
            socks[usize::from(v6)] = Some(fd);
        }
        Ok(Icmp { socks, waiting: HashMap::new(), by_slot: vec![None; slots], seq: 0, senders: Senders::default() })
    }

    /// Sends `slot`'s echo request to `to`, through `via` when given (`to`
    /// is then the VIP).
    pub fn start(&mut self, slot: usize, to: IpAddr, via: Option<&Arc<DataPath>>) -> Result<(), Failure> {
        let v6 = to.is_ipv6();
        // The reply comes to this family's socket either way.
        let fd = self.socks[usize::from(v6)].as_ref().ok_or(Failure::Os(libc::EAFNOSUPPORT))?;
        self.seq = self.seq.wrapping_add(1);
        let echo = Echo { from: to, id: slot as u16, seq: self.seq };
        let mut msg = [0u8; 8 + PAYLOAD.len()];
        msg[0] = if v6 { ECHO_REQUEST_V6 } else { ECHO_REQUEST_V4 };
        msg[4..6].copy_from_slice(&echo.id.to_be_bytes());
        msg[6..8].copy_from_slice(&echo.seq.to_be_bytes());
        msg[8..].copy_from_slice(PAYLOAD);
        // The kernel fills the ICMPv6 checksum of what the socket sends
        // (it needs the source).
        if !v6 {
            let c = checksum::checksum(&msg, 0);
            msg[2..4].copy_from_slice(&c.to_be_bytes());
        }
        match via {
            Some(path) => {
                let src = sock::route_source(path.backend)?;
                let proto = if v6 { IpProtocol::ICMPV6 } else { IpProtocol::ICMP };
                if v6 {
                    let c = checksum::checksum(&msg, checksum::pseudo_header(&addr16(src), &addr16(to), proto, msg.len() as u32));
                    msg[2..4].copy_from_slice(&c.to_be_bytes());
                }
                self.senders.send(path, src, proto, &msg)?;
            }
            None => sock::send_to(fd, &msg, to)?,
        }
        self.waiting.insert(echo, slot);
        self.by_slot[slot] = Some(echo);
        Ok(())
    }

    /// Reads the replies queued on the `v6` socket; the checks they pass.
    pub fn ready(&mut self, v6: bool, done: &mut Vec<(usize, Result<(), Failure>)>) {
        let Some(fd) = &self.socks[usize::from(v6)] else { return };
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = sock::recv_from(fd, &mut buf) {
            // IPv4 raw sockets deliver the IP header too.
            let at = if v6 { 0 } else { usize::from(buf[0] & 0x0f) * 4 };
            let Some(msg) = buf[..n].get(at..at + 8) else { continue };
            if msg[0] != if v6 { ECHO_REPLY_V6 } else { ECHO_REPLY_V4 } {
                continue;
            }
            let echo = Echo { from, id: u16::from_be_bytes([msg[4], msg[5]]), seq: u16::from_be_bytes([msg[6], msg[7]]) };
            if let Some(slot) = self.waiting.remove(&echo) {
                self.by_slot[slot] = None;
                done.push((slot, Ok(())));
            }
        }
    }

    /// Forgets `slot`'s request (timed out).
    pub fn abandon(&mut self, slot: usize) {
        if let Some(echo) = self.by_slot[slot].take() {
            self.waiting.remove(&echo);
        }
    }
}
