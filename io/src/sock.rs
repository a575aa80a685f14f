//! The socket system calls the checkers make, over libc: every `unsafe`
//! of the health checks is here. Sockets are nonblocking and close on exec.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

fn check_len(rc: isize) -> io::Result<usize> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc as usize) }
}

fn family(v6: bool) -> libc::c_int {
    if v6 { libc::AF_INET6 } else { libc::AF_INET }
}

/// A nonblocking socket of `v6`'s family.
pub fn socket(v6: bool, ty: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned from here on.
    let fd = check(unsafe { libc::socket(family(v6), ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, proto) })?;
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn set_opt<T: Copy>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live T of the length passed.
    check(unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, (value as *const T).cast(), size_of::<T>() as libc::socklen_t) }).map(drop)
}

/// Attaches a classic BPF program: the kernel queues only what it accepts.
pub fn attach_filter(fd: &OwnedFd, prog: &[libc::sock_filter]) -> io::Result<()> {
    let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_ptr().cast_mut() };
    set_opt(fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &fprog)
}

fn to_sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { (&raw mut ss).cast::<libc::sockaddr_in>().write(sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { (&raw mut ss).cast::<libc::sockaddr_in6>().write(sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn from_sockaddr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6 = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(sin6.sin6_port), sin6.sin6_flowinfo, sin6.sin6_scope_id)))
        }
        _ => None,
    }
}

/// Starts connecting; `Ok(false)` while the handshake is in progress.
pub fn connect(fd: &OwnedFd, addr: SocketAddr) -> io::Result<bool> {
    let (ss, len) = to_sockaddr(addr);
    // SAFETY: `ss` holds a valid address of `len` bytes.
    match check(unsafe { libc::connect(fd.as_raw_fd(), (&raw const ss).cast(), len) }) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The error a nonblocking connect ended with (SO_ERROR), if any.
pub fn take_error(fd: &OwnedFd) -> io::Result<Option<io::Error>> {
    let mut err: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err` and `len` are live and sized for SO_ERROR.
    check(unsafe { libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_ERROR, (&raw mut err).cast(), &mut len) })?;
    Ok((err != 0).then(|| io::Error::from_raw_os_error(err)))
}

/// The local address the kernel chose for a socket.
pub fn local_addr(fd: &OwnedFd) -> io::Result<SocketAddr> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `ss` has room for any address; the kernel writes at most `len`.
    check(unsafe { libc::getsockname(fd.as_raw_fd(), (&raw mut ss).cast(), &mut len) })?;
    from_sockaddr(&ss).ok_or_else(|| io::Error::other("getsockname: not an IP address"))
}

pub fn send_to(fd: &OwnedFd, buf: &[u8], to: IpAddr) -> io::Result<()> {
    let (ss, len) = to_sockaddr(SocketAddr::new(to, 0));
    // SAFETY: `buf` and `ss` are live for the call.
    check_len(unsafe { libc::sendto(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0, (&raw const ss).cast(), len) }).map(drop)
}

/// One datagram and its source; `WouldBlock` when none is queued.
pub fn recv_from(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<(usize, IpAddr)> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `buf` and `ss` are live and writable for the lengths passed.
    let n = check_len(unsafe { libc::recvfrom(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0, (&raw mut ss).cast(), &mut len) })?;
    let from = from_sockaddr(&ss).ok_or_else(|| io::Error::other("recvfrom: not an IP address"))?;
    Ok((n, from.ip()))
}

pub fn read(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is live and writable for its length.
    check_len(unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
}

pub fn write(fd: &OwnedFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is live for its length.
    check_len(unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) })
}

/// The source address the kernel would use towards `to` (a connected UDP
/// socket sends nothing).
pub fn route_source(to: IpAddr) -> io::Result<IpAddr> {
    let fd = socket(to.is_ipv6(), libc::SOCK_DGRAM, 0)?;
    connect(&fd, SocketAddr::new(to, 9))?;
    Ok(local_addr(&fd)?.ip())
}

/// Sends whole Ethernet frames, as given, out of one interface (an
/// AF_PACKET socket: the kernel adds nothing). For injecting crafted
/// frames on a lab link, one or a flood of them; opening it needs
/// CAP_NET_RAW.
pub struct FrameSender {
    fd: OwnedFd,
    ifindex: libc::c_int,
}

impl FrameSender {
    pub fn open(ifname: &str) -> io::Result<FrameSender> {
        let ifindex = crate::sys::ifindex(ifname).map_err(|e| io::Error::new(io::ErrorKind::NotFound, e.to_string()))?;
        // Protocol 0: the socket sends only, and receives nothing.
        // SAFETY: plain socket(2); the descriptor is owned from here on.
        let fd = check(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) })?;
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        Ok(FrameSender { fd: unsafe { OwnedFd::from_raw_fd(fd) }, ifindex: ifindex as libc::c_int })
    }

    /// Sends one frame (its first 6 bytes are the destination MAC).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut ll: libc::sockaddr_ll = unsafe { zeroed() };
        ll.sll_family = libc::AF_PACKET as libc::sa_family_t;
        ll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        ll.sll_ifindex = self.ifindex;
        ll.sll_halen = 6;
        ll.sll_addr[..6].copy_from_slice(frame.get(..6).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?);
        let len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `frame` and `ll` are live for the call and `len` is ll's size.
        check_len(unsafe { libc::sendto(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0, (&raw const ll).cast(), len) }).map(drop)
    }
}
