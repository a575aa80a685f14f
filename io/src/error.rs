//! The I/O layer's error type: every failure to attach, bind or move frames
//! ends here with a message an operator can act on.

use std::error::Error;
use std::{fmt, io};

use super::XdpMode;

#[derive(Debug)]
pub enum IoError {
    /// Missing privileges (not root, or without CAP_NET_ADMIN/CAP_BPF/CAP_NET_RAW).
    NotPermitted {
        what: String,
    },
    NoSuchInterface {
        ifname: String,
    },
    /// An argument the kernel would reject anyway (bad name, protocol, queue).
    InvalidArgument(String),
    /// The kernel refused a BPF program (verifier, BTF, ...).
    Load {
        program: &'static str,
        detail: String,
    },
    /// BPF_LINK_CREATE refused the XDP attach.
    XdpAttach {
        ifname: String,
        mode: XdpMode,
        source: io::Error,
    },
    /// A BPF map update or lookup failed (e.g. the map is full).
    Map {
        what: String,
        detail: String,
    },
    /// Creating the UMEM failed (mmap, memlock, registration).
    Umem {
        detail: String,
    },
    /// Creating or binding the AF_XDP socket failed.
    Socket {
        ifname: String,
        queue: u32,
        source: io::Error,
    },
    /// poll/sendto on a bound socket failed.
    Ring {
        ifname: String,
        queue: u32,
        source: io::Error,
    },
}

impl IoError {
    /// Wraps a library error (aya, xsk-rs), turning the kernel's EPERM
    /// anywhere in its chain into `NotPermitted`.
    pub(crate) fn wrap(e: &(dyn Error + 'static), what: impl Into<String>, make: impl FnOnce(String) -> IoError) -> IoError {
        match root_io_error(e).and_then(|io| io.raw_os_error()) {
            Some(libc::EPERM) => IoError::NotPermitted { what: what.into() },
            _ => make(chain(e)),
        }
    }
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IoError::NotPermitted { what } => write!(
                f,
                "{what}: operation not permitted; run as root (needs CAP_NET_ADMIN, CAP_BPF or \
                 CAP_SYS_ADMIN, and CAP_NET_RAW)"
            ),
            IoError::NoSuchInterface { ifname } => write!(f, "no such network interface: {ifname}"),
            IoError::InvalidArgument(msg) => write!(f, "invalid argument: {msg}"),
            IoError::Load { program, detail } => {
                write!(f, "the kernel refused BPF program `{program}`: {detail}")
            }
            IoError::XdpAttach { ifname, mode, source } => {
                write!(f, "XDP attach to {ifname} in {mode} mode refused: {source}")?;
                match source.raw_os_error() {
                    Some(libc::EOPNOTSUPP) => {
                        write!(f, " (the driver has no native XDP: use generic or auto mode)")
                    }
                    Some(libc::EBUSY) | Some(libc::EEXIST) => write!(f, " (another XDP program is attached to {ifname}: `ip link set dev {ifname} xdp off`)"),
                    _ => Ok(()),
                }
            }
            IoError::Map { what, detail } => write!(f, "BPF map {what}: {detail}"),
            IoError::Umem { detail } => write!(f, "cannot create the AF_XDP UMEM: {detail}"),
            IoError::Socket { ifname, queue, source } => {
                write!(f, "cannot bind an AF_XDP socket to {ifname} queue {queue}: {source}")?;
                match source.raw_os_error() {
                    Some(libc::EINVAL) => write!(f, " (does {ifname} have rx queue {queue}?)"),
                    Some(libc::EBUSY) => write!(f, " (another socket is bound to that queue)"),
                    _ => Ok(()),
                }
            }
            IoError::Ring { ifname, queue, source } => {
                write!(f, "AF_XDP ring on {ifname} queue {queue}: {source}")
            }
        }
    }
}

impl Error for IoError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            IoError::XdpAttach { source, .. } | IoError::Socket { source, .. } | IoError::Ring { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// An error and all its sources on one line (aya and xsk-rs nest the errno).
fn chain(e: &dyn Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The OS error at the bottom of an error chain, if any.
pub(crate) fn root_io_error(e: &(dyn Error + 'static)) -> Option<io::Error> {
    let mut cur: Option<&(dyn Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<io::Error>()
            && let Some(code) = io.raw_os_error()
        {
            return Some(io::Error::from_raw_os_error(code));
        }
        cur = c.source();
    }
    None
}
