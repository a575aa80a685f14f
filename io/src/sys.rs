//! The few raw system calls the I/O layer makes itself.

use std::ffi::CString;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::IoError;

const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// What an operation needs beyond an ordinary user.
#[derive(Clone, Copy)]
pub(crate) enum Privilege {
    /// Load BPF programs and attach them to an interface.
    AttachXdp,
    /// Create AF_XDP sockets.
    AfXdp,
}

/// Fails early with `NotPermitted` instead of a bare EPERM from deep inside
/// a library. If /proc is unreadable, lets the kernel decide.
pub(crate) fn check_privilege(what: &str, p: Privilege) -> Result<(), IoError> {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return Ok(());
    };
    let Some(eff) = status.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok()) else {
        return Ok(());
    };
    let has = |cap: u32| eff & (1 << cap) != 0;
    let ok = match p {
        Privilege::AttachXdp => has(CAP_NET_ADMIN) && (has(CAP_BPF) || has(CAP_SYS_ADMIN)),
        Privilege::AfXdp => has(CAP_NET_RAW),
    };
    if ok { Ok(()) } else { Err(IoError::NotPermitted { what: what.to_owned() }) }
}

/// The interface's index, with a clear error for a bad or unknown name.
pub(crate) fn ifindex(ifname: &str) -> Result<u32, IoError> {
    // IFNAMSIZ is 16 with the NUL; '/' and whitespace are never valid.
    if ifname.is_empty() || ifname.len() >= 16 || ifname.bytes().any(|b| b == b'/' || b.is_ascii_whitespace()) {
        return Err(IoError::InvalidArgument(format!("`{ifname}` is not a valid interface name")));
    }
    let c = CString::new(ifname).map_err(|_| IoError::InvalidArgument(format!("`{ifname}` is not a valid interface name")))?;
    // SAFETY: `c` is a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(IoError::NoSuchInterface { ifname: ifname.to_owned() }),
        i => Ok(i),
    }
}

/// Attaches an XDP program with BPF_LINK_CREATE. The link lives as long as
/// the returned fd: when the process exits, even by SIGKILL, the kernel
/// closes it and the program is detached. (aya's `Xdp::attach` silently
/// falls back to a netlink attach, which would survive a crash.)
pub(crate) fn xdp_link_create(prog: BorrowedFd<'_>, ifindex: u32, flags: u32) -> io::Result<OwnedFd> {
    const BPF_LINK_CREATE: libc::c_long = 28;
    const BPF_XDP: u32 = 37;
    // The link_create member of union bpf_attr, up to `flags`; the kernel
    // zeroes what a shorter attr leaves out.
    #[repr(C)]
    struct LinkCreate {
        prog_fd: u32,
        target_ifindex: u32,
        attach_type: u32,
        flags: u32,
    }
    let attr = LinkCreate { prog_fd: prog.as_raw_fd() as u32, target_ifindex: ifindex, attach_type: BPF_XDP, flags };
    // SAFETY: `attr` is a valid bpf_attr prefix of the size passed.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_CREATE, &attr as *const LinkCreate, size_of::<LinkCreate>()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Whether a bound AF_XDP socket runs in zero-copy mode (XDP_OPTIONS).
pub(crate) fn xsk_is_zero_copy(fd: i32) -> bool {
    const XDP_OPTIONS_ZEROCOPY: u32 = 1;
    let mut flags = 0u32;
    let mut len = size_of::<u32>() as libc::socklen_t;
    // SAFETY: `flags` and `len` are valid for writes of the sizes given.
    let rc = unsafe { libc::getsockopt(fd, libc::SOL_XDP, libc::XDP_OPTIONS, (&mut flags as *mut u32).cast(), &mut len) };
    rc == 0 && flags & XDP_OPTIONS_ZEROCOPY != 0
}

/// An AF_XDP socket's kernel counters (XDP_STATISTICS); fields a kernel
/// older than 5.9 does not fill stay 0.
pub(crate) fn xsk_statistics(fd: BorrowedFd<'_>) -> io::Result<libc::xdp_statistics> {
    // SAFETY: all-zero is a valid xdp_statistics (six u64).
    let mut st: libc::xdp_statistics = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::xdp_statistics>() as libc::socklen_t;
    // SAFETY: `st` and `len` are valid for writes of the sizes given; the
    // kernel writes at most `len` bytes.
    let rc = unsafe { libc::getsockopt(fd.as_raw_fd(), libc::SOL_XDP, libc::XDP_STATISTICS, (&raw mut st).cast(), &mut len) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(st) }
}

/// Number of rx queues of an interface (ETHTOOL_GCHANNELS: rx + combined
/// channels); 1 when the driver does not report channels.
pub(crate) fn rx_queue_count(ifname: &str) -> Result<u32, IoError> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GCHANNELS: u32 = 0x3c;
    #[repr(C)]
    #[derive(Default)]
    struct Channels {
        cmd: u32,
        max_rx: u32,
        max_tx: u32,
        max_other: u32,
        max_combined: u32,
        rx_count: u32,
        tx_count: u32,
        other_count: u32,
        combined_count: u32,
    }
    /// struct ifreq with the ifr_data member (40 bytes on 64-bit).
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        data: *mut Channels,
        _pad: [u8; 16],
    }
    ifindex(ifname)?;
    let mut ch = Channels { cmd: ETHTOOL_GCHANNELS, ..Default::default() };
    let mut req = IfReq { name: [0; 16], data: &mut ch, _pad: [0; 16] };
    req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
    // SAFETY: plain socket(2); closed by OwnedFd.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(IoError::InvalidArgument(format!("socket for ethtool: {}", io::Error::last_os_error())));
    }
    // SAFETY: `raw` is a new fd owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: `req` is a valid ifreq whose data points to a live ethtool_channels.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &mut req as *mut IfReq) };
    if rc < 0 {
        return Ok(1);
    }
    Ok((ch.rx_count + ch.combined_count).max(1))
}

/// Every address configured on this network namespace's interfaces.
pub(crate) fn host_addresses() -> io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned; addresses
        // are sockaddr_in/sockaddr_in6 as their family says.
        unsafe {
            let ifa = &*cur;
            if !ifa.ifa_addr.is_null() {
                match i32::from((*ifa.ifa_addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
            cur = ifa.ifa_next;
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// The calling thread's CPU time (CLOCK_THREAD_CPUTIME_ID).
pub fn thread_cpu_time() -> std::time::Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked() {
        assert!(matches!(ifindex(""), Err(IoError::InvalidArgument(_))));
        assert!(matches!(ifindex("a/b"), Err(IoError::InvalidArgument(_))));
        assert!(matches!(ifindex("0123456789abcdef"), Err(IoError::InvalidArgument(_))));
        assert!(matches!(ifindex("nul\0"), Err(IoError::InvalidArgument(_))));
        assert!(matches!(ifindex("fulcrum-nope0"), Err(IoError::NoSuchInterface { .. })));
        assert!(ifindex("lo").is_ok());
        assert!(rx_queue_count("lo").unwrap() >= 1);
        assert!(matches!(rx_queue_count("fulcrum-nope0"), Err(IoError::NoSuchInterface { .. })));
    }

    #[test]
    fn loopback_addresses_are_listed() {
        let addrs = host_addresses().unwrap();
        assert!(addrs.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }
}
