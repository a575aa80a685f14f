//! The kernel's neighbour table as it changes (rtnetlink): where replies
//! to a client go on the link. A dump of the current entries first, then
//! every change, so a reader that applies events in order holds the
//! kernel's view.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Duration;

use fulcrum_dataplane::types::Mac;
use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState};
use netlink_sys::Socket;
use netlink_sys::protocols::NETLINK_ROUTE;

/// One change of the kernel's neighbour table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Neighbour {
    /// `addr` on interface `ifindex` is at `mac` (reachable, stale,
    /// permanent...: the kernel would send to it).
    Known { ifindex: u32, addr: IpAddr, mac: Mac },
    /// The kernel no longer knows where `addr` is (failed, deleted).
    Gone { ifindex: u32, addr: IpAddr },
}

/// A subscription to neighbour events.
pub struct NeighbourWatch {
    socket: Socket,
    buf: Vec<u8>,
}

/// Receive buffer: a dump arrives in datagrams of a few pages each.
const RECV_BUFFER: usize = 1 << 16;

impl NeighbourWatch {
    /// Subscribes, then asks for a dump of the current entries. `recv`
    /// returns at the latest after `poll`, so its caller can stop.
    pub fn open(poll: Duration) -> io::Result<NeighbourWatch> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.add_membership(libc::RTNLGRP_NEIGH)?;
        set_recv_timeout(socket.as_fd(), poll)?;
        let mut dump = NetlinkMessage::from(RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default()));
        dump.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        dump.finalize();
        let mut request = vec![0u8; dump.buffer_len()];
        dump.serialize(&mut request);
        socket.send(&request, 0)?;
        Ok(NeighbourWatch { socket, buf: Vec::with_capacity(RECV_BUFFER) })
    }

    /// Appends the events of one datagram to `out`; nothing if none came
    /// within the poll time.
    pub fn recv(&mut self, out: &mut Vec<Neighbour>) -> io::Result<()> {
        self.buf.clear();
        match self.socket.recv(&mut self.buf, 0) {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted) => return Ok(()),
            Err(e) => return Err(e),
        }
        let mut at = 0;
        while at < self.buf.len() {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[at..]).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let len = msg.header.length as usize;
            if len == 0 {
                break;
            }
            at += len.next_multiple_of(4);
            if let NetlinkPayload::InnerMessage(m) = msg.payload {
                match m {
                    RouteNetlinkMessage::NewNeighbour(n) => out.extend(event(&n, false)),
                    RouteNetlinkMessage::DelNeighbour(n) => out.extend(event(&n, true)),
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

fn event(n: &NeighbourMessage, deleted: bool) -> Option<Neighbour> {
    let ifindex = n.header.ifindex;
    let addr = n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    })?;
    let mac = n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(b) => <Mac>::try_from(b.as_slice()).ok(),
        _ => None,
    });
    let usable = matches!(
        n.header.state,
        NeighbourState::Reachable | NeighbourState::Stale | NeighbourState::Delay | NeighbourState::Probe | NeighbourState::Permanent | NeighbourState::Noarp
    );
    match mac {
        Some(mac) if usable && !deleted => Some(Neighbour::Known { ifindex, addr, mac }),
        _ => Some(Neighbour::Gone { ifindex, addr }),
    }
}

fn set_recv_timeout(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval { tv_sec: timeout.as_secs() as libc::time_t, tv_usec: libc::suseconds_t::from(timeout.subsec_micros()) };
    // SAFETY: `tv` is a live timeval of the size passed, `fd` an open socket.
    let rc =
        unsafe { libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&raw const tv).cast(), size_of::<libc::timeval>() as libc::socklen_t) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}
