//! AF_XDP backend, through xsk-rs (libxdp).
//!
//! One [`XskIo`] serves one rx queue id on one or more interfaces (one
//! worker). Its sockets share one UMEM: in the inline topology a frame
//! received on the client-side interface is transmitted on the server-side
//! one without a copy, and since one worker owns both sockets a single free
//! list feeds every fill ring, with no cross-thread traffic. The kernel
//! requires each (interface, queue) to have its own fill and completion
//! rings, which libxdp sets up. The cost: the second and later sockets
//! inherit the first one's copy/zero-copy mode (XDP_SHARED_UMEM), so
//! interfaces of one worker must agree on zero-copy support.
//!
//! UMEM layout: FRAME_SIZE (2048) chunks; the kernel writes a received frame
//! at HEADROOM (256) into its chunk. xsk-rs descriptors always point at that
//! offset, so a frame the engine moved (start != HEADROOM, e.g. after
//! prepending a tunnel header) is moved back to HEADROOM before it is put on
//! the TX ring: one memmove of the frame, only for such frames.
//!
//! Rings are handled in batches: completions are reaped and fill rings
//! topped up on every `recv`/`send`; need_wakeup is honoured; copy-mode TX
//! takes at most 32 descriptors per sendto(), so TX is kicked until the ring
//! drains or the kernel stops making progress.

use std::num::NonZeroU32;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::thread;
use std::time::Duration;

use xsk_rs::config::{BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

use super::frame::{Chunk, FRAME_SIZE, FrameMem, FrameRef, HEADROOM, PortId};
use super::sys::{self, Privilege};
use super::{IoError, PacketIo};

/// Number of rx queues of `ifname`: open one `XskIo` per queue, since the
/// steering program redirects a frame only to its own queue's socket.
pub fn rx_queue_count(ifname: &str) -> Result<u32, IoError> {
    sys::rx_queue_count(ifname)
}

/// Sizes of one worker's AF_XDP resources.
#[derive(Clone, Copy, Debug)]
pub struct XskConfig {
    /// UMEM frames per interface; at least `ring_size`.
    pub frames_per_port: u32,
    /// Entries of each ring (rx, tx, fill, completion); a power of two.
    pub ring_size: u32,
    /// Most frames one `recv` returns.
    pub batch: usize,
    /// Try zero-copy first (refused on veth), then copy mode.
    pub zero_copy: bool,
    /// Ask the kernel for preferred busy polling of the sockets' device
    /// queues: the owner then spins (`PacketIo::spin`) instead of sleeping.
    pub busy_poll: Option<BusyPoll>,
}

impl Default for XskConfig {
    fn default() -> Self {
        XskConfig { frames_per_port: 4096, ring_size: 2048, batch: 64, zero_copy: true, busy_poll: None }
    }
}

/// Preferred busy polling (`SO_PREFER_BUSY_POLL`): the application's
/// receive and send calls run the device queue's NAPI poll, up to `budget`
/// frames and `usecs` of spinning, and the kernel holds its interrupts
/// back while the application keeps polling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusyPoll {
    pub usecs: u32,
    pub budget: u16,
}

impl Default for BusyPoll {
    /// The values of the kernel's AF_XDP busy-polling example (xdpsock).
    fn default() -> Self {
        BusyPoll { usecs: 20, budget: 64 }
    }
}

/// Counters of one `XskIo`, all ports together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XskStats {
    pub rx: u64,
    pub tx: u64,
    /// Frames recycled because a TX ring was full.
    pub tx_ring_full: u64,
    /// Frames recycled because their bounds or port were invalid.
    pub tx_invalid: u64,
}

/// One AF_XDP socket as another thread sees it: a duplicate of its
/// descriptor, so that its kernel counters and options are read (one
/// getsockopt each) without the worker that polls it making any call.
/// The socket lives as long as either descriptor.
#[derive(Debug)]
pub struct XskWatch {
    pub ifname: String,
    pub queue: u32,
    fd: OwnedFd,
}

/// What the kernel counted on one socket's rings since it was bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingCounters {
    /// Received frames dropped for other reasons (e.g. larger than a frame).
    pub rx_dropped: u64,
    /// Received frames dropped because the RX ring was full (the worker
    /// does not keep up).
    pub rx_ring_full: u64,
    /// Received frames dropped because the fill ring had no buffer.
    pub fill_ring_empty: u64,
    /// Invalid descriptors on the RX / fill side and on the TX ring.
    pub rx_invalid: u64,
    pub tx_invalid: u64,
    /// Times the kernel found the TX ring empty when it looked for frames.
    pub tx_ring_empty: u64,
}

impl XskWatch {
    pub fn counters(&self) -> Result<RingCounters, IoError> {
        let s = sys::xsk_statistics(self.fd.as_fd()).map_err(|source| IoError::Ring { ifname: self.ifname.clone(), queue: self.queue, source })?;
        Ok(RingCounters {
            rx_dropped: s.rx_dropped,
            rx_ring_full: s.rx_ring_full,
            fill_ring_empty: s.rx_fill_ring_empty_descs,
            rx_invalid: s.rx_invalid_descs,
            tx_invalid: s.tx_invalid_descs,
            tx_ring_empty: s.tx_ring_empty_descs,
        })
    }

    /// Whether the socket runs in zero-copy mode, as the kernel says now.
    pub fn zero_copy(&self) -> bool {
        sys::xsk_is_zero_copy(self.fd.as_raw_fd())
    }
}

/// Bind retries on EBUSY: the previous socket of a queue is released by
/// the kernel shortly after close().
const BIND_RETRIES: u32 = 8;
const BIND_BACKOFF: Duration = Duration::from_millis(10);

struct Port {
    ifname: String,
    queue: u32,
    /// The kernel took the busy-polling options.
    busy_poll: bool,
    rx: RxQueue,
    tx: TxQueue,
    fq: FillQueue,
    cq: CompQueue,
    zero_copy: bool,
}

impl Port {
    fn ring_error(&self, source: std::io::Error) -> IoError {
        IoError::Ring { ifname: self.ifname.clone(), queue: self.queue, source }
    }
}

/// AF_XDP sockets of one rx queue id on one or more interfaces.
pub struct XskIo {
    ports: Vec<Port>,
    /// One descriptor per chunk, pointing at HEADROOM; copied to the rings.
    descs: Vec<FrameDesc>,
    free: Vec<u32>,
    scratch: Vec<FrameDesc>,
    pollfds: Vec<libc::pollfd>,
    batch: usize,
    ring_size: u32,
    next_port: usize,
    stats: XskStats,
    mem: FrameMem,
    umem: Umem,
}

impl XskIo {
    /// Binds one socket per interface (port i = `ifnames[i]`) to rx queue
    /// `queue`, sharing one UMEM, and fills the fill rings. Frames reach
    /// the sockets only once they are registered with the steering program
    /// of their interface (`SteerProgram::register_socket`).
    pub fn open(ifnames: &[&str], queue: u32, cfg: &XskConfig) -> Result<XskIo, IoError> {
        let what = format!("opening AF_XDP sockets on {} queue {queue}", ifnames.join(","));
        sys::check_privilege(&what, Privilege::AfXdp)?;
        if ifnames.is_empty() || ifnames.len() > usize::from(PortId::MAX) + 1 {
            return Err(IoError::InvalidArgument(format!("{} interfaces: expected 1 to 256", ifnames.len())));
        }
        for name in ifnames {
            sys::ifindex(name)?;
        }
        let ring = QueueSize::new(cfg.ring_size).map_err(|e| IoError::InvalidArgument(format!("ring size: {e}")))?;
        if cfg.frames_per_port < cfg.ring_size || cfg.batch == 0 {
            return Err(IoError::InvalidArgument(format!(
                "frames per port ({}) below the ring size ({}), or an empty batch",
                cfg.frames_per_port, cfg.ring_size
            )));
        }
        let frames = cfg
            .frames_per_port
            .checked_mul(ifnames.len() as u32)
            .and_then(NonZeroU32::new)
            .ok_or_else(|| IoError::InvalidArgument("too many UMEM frames".into()))?;

        let umem_cfg = UmemConfig::builder()
            .frame_size(FrameSize::new(FRAME_SIZE as u32).map_err(|e| IoError::Umem { detail: e.to_string() })?)
            .fill_queue_size(ring)
            .comp_queue_size(ring)
            .frame_headroom(0)
            .build()
            .map_err(|e| IoError::Umem { detail: e.to_string() })?;
        let (umem, mut descs) = Umem::new(umem_cfg, frames, false).map_err(|e| IoError::wrap(&e, what.clone(), |detail| IoError::Umem { detail }))?;
        if descs.iter().enumerate().any(|(i, d)| d.addr() != i * FRAME_SIZE + HEADROOM) {
            return Err(IoError::Umem { detail: "unexpected xsk-rs frame layout".into() });
        }
        // xsk-rs has no accessor for the UMEM's base address. Chunk 0's
        // (empty) frame headroom starts there; the region is one mmap that
        // lives as long as `umem`, which this value owns.
        // SAFETY: descs[0] belongs to `umem`, and nothing else accesses it.
        let base = unsafe { umem.headroom_mut(&mut descs[0]).contents_mut().as_mut_ptr() };
        let base = NonNull::new(base).ok_or_else(|| IoError::Umem { detail: "null UMEM".into() })?;
        // SAFETY: the region holds `frames` chunks and is only accessed
        // through chunk tokens from now on (descriptors carry no access).
        let mem = unsafe { FrameMem::new(base, frames.get()) };

        let mut ports = Vec::with_capacity(ifnames.len());
        for name in ifnames {
            ports.push(bind(&umem, name, queue, cfg, ports.is_empty())?);
        }
        let pollfds = ports.iter().map(|p| libc::pollfd { fd: p.rx.fd().as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
        let mut io = XskIo {
            ports,
            descs,
            free: (0..mem.chunks()).rev().collect(),
            scratch: Vec::with_capacity(cfg.ring_size as usize),
            pollfds,
            batch: cfg.batch,
            ring_size: cfg.ring_size,
            next_port: 0,
            stats: XskStats::default(),
            mem,
            umem,
        };
        for p in 0..io.ports.len() {
            io.refill(p)?;
        }
        Ok(io)
    }

    /// The socket of `port`, for `SteerProgram::register_socket`.
    pub fn socket_fd(&self, port: PortId) -> Option<RawFd> {
        self.ports.get(usize::from(port)).map(|p| p.rx.fd().as_raw_fd())
    }

    /// Whether the kernel took the busy-polling options on every socket.
    pub fn is_busy_polling(&self) -> bool {
        self.ports.iter().all(|p| p.busy_poll)
    }

    /// Whether `port`'s socket runs in zero-copy mode.
    pub fn is_zero_copy(&self, port: PortId) -> bool {
        self.ports.get(usize::from(port)).is_some_and(|p| p.zero_copy)
    }

    pub fn stats(&self) -> XskStats {
        self.stats
    }

    /// A watch on each socket (port order), for another thread to read
    /// the kernel's counters while this one polls.
    pub fn watches(&self) -> Result<Vec<XskWatch>, IoError> {
        self.ports
            .iter()
            .map(|p| {
                // SAFETY: the socket's descriptor is open while `p` lives,
                // and the borrow ends with this statement; the duplicate
                // is a descriptor of its own.
                let fd = unsafe { BorrowedFd::borrow_raw(p.rx.fd().as_raw_fd()) }.try_clone_to_owned().map_err(|e| p.ring_error(e))?;
                Ok(XskWatch { ifname: p.ifname.clone(), queue: p.queue, fd })
            })
            .collect()
    }

    fn chunk_of(desc: &FrameDesc) -> u32 {
        (desc.addr() / FRAME_SIZE) as u32
    }

    /// Completed TX descriptors go back to the free list.
    fn reap(&mut self) {
        for p in &mut self.ports {
            loop {
                self.scratch.clear();
                self.scratch.resize(self.batch.max(64), FrameDesc::default());
                // SAFETY: the descriptors only receive addresses of this UMEM.
                let n = unsafe { p.cq.consume(&mut self.scratch) };
                self.free.extend(self.scratch[..n].iter().map(Self::chunk_of));
                if n < self.scratch.len() {
                    break;
                }
            }
        }
    }

    /// Tops up `port`'s fill ring from the free list.
    fn refill(&mut self, port: usize) -> Result<(), IoError> {
        let p = &mut self.ports[port];
        let n = (p.fq.nb_free_exact() as usize).min(self.free.len());
        if n > 0 {
            self.scratch.clear();
            let start = self.free.len() - n;
            self.scratch.extend(self.free[start..].iter().map(|&c| self.descs[c as usize]));
            // SAFETY: free chunks belong to this UMEM and to no ring.
            // The reservation is all or nothing, and `n` slots are free.
            let produced = unsafe { p.fq.produce(&self.scratch) };
            if produced == n {
                self.free.truncate(start);
            }
        }
        if p.fq.needs_wakeup() {
            let (fq, rx) = (&p.fq, &mut p.rx);
            fq.wakeup(rx.fd_mut(), 0).map_err(|e| p.ring_error(e))?;
        }
        Ok(())
    }

    /// Kicks `port`'s TX until its ring is empty or the kernel stops
    /// taking descriptors (device queue or completion ring full: the next
    /// call retries).
    fn kick(&mut self, port: usize) -> Result<(), IoError> {
        let size = self.ring_size;
        let mut stalled = false;
        loop {
            let p = &mut self.ports[port];
            if p.zero_copy && !p.tx.needs_wakeup() {
                return Ok(());
            }
            let pending = size - p.tx.nb_free_exact();
            if pending == 0 {
                return Ok(());
            }
            p.tx.wakeup().map_err(|e| p.ring_error(e))?;
            if size - p.tx.nb_free_exact() < pending {
                stalled = false;
                continue;
            }
            if stalled {
                return Ok(());
            }
            // No progress: free completion slots once, then try again.
            stalled = true;
            self.reap();
        }
    }
}

/// Sets the busy-polling options on an AF_XDP socket. Whether the kernel
/// took them: one without `SO_PREFER_BUSY_POLL` (before 5.11) refuses
/// with ENOPROTOOPT, and the socket then works as without.
fn set_busy_poll(fd: RawFd, bp: BusyPoll) -> std::io::Result<bool> {
    let opts = [(libc::SO_PREFER_BUSY_POLL, 1), (libc::SO_BUSY_POLL, bp.usecs as libc::c_int), (libc::SO_BUSY_POLL_BUDGET, libc::c_int::from(bp.budget))];
    for (name, value) in opts {
        let value: libc::c_int = value;
        // SAFETY: `value` is a live c_int of the length passed; `fd` is
        // this socket's, open for the call.
        let rc = unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, name, (&raw const value).cast(), size_of::<libc::c_int>() as libc::socklen_t) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOPROTOOPT) {
                return Ok(false);
            }
            return Err(e);
        }
    }
    Ok(true)
}

/// Binds one socket, zero-copy first if asked, retrying on EBUSY.
fn bind(umem: &Umem, ifname: &str, queue: u32, cfg: &XskConfig, first: bool) -> Result<Port, IoError> {
    let iface: Interface = ifname.parse().map_err(|_| IoError::InvalidArgument(format!("`{ifname}` is not a valid interface name")))?;
    let ring = QueueSize::new(cfg.ring_size).map_err(|e| IoError::InvalidArgument(format!("ring size: {e}")))?;
    // Later sockets share the first one's UMEM and inherit its mode.
    let modes: &[BindFlags] = if first && cfg.zero_copy { &[BindFlags::XDP_ZEROCOPY, BindFlags::XDP_COPY] } else { &[BindFlags::XDP_COPY] };
    let mut last = None;
    // Zero-copy refused (EOPNOTSUPP on veth, or another error): copy mode.
    for mode in modes {
        let config = SocketConfig::builder()
            .rx_queue_size(ring)
            .tx_queue_size(ring)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(*mode | BindFlags::XDP_USE_NEED_WAKEUP)
            .build();
        let mut backoff = BIND_BACKOFF;
        for attempt in 0..=BIND_RETRIES {
            // SAFETY: INHIBIT_PROG_LOAD is set, as Socket::new requires when
            // a UMEM is shared.
            match unsafe { Socket::new(config, umem, &iface, queue) } {
                Ok((tx, rx, Some((fq, cq)))) => {
                    let fd = rx.fd().as_raw_fd();
                    let zero_copy = sys::xsk_is_zero_copy(fd);
                    let busy_poll = match cfg.busy_poll {
                        Some(bp) => set_busy_poll(fd, bp).map_err(|source| IoError::Socket { ifname: ifname.to_owned(), queue, source })?,
                        None => false,
                    };
                    return Ok(Port { ifname: ifname.to_owned(), queue, busy_poll, rx, tx, fq, cq, zero_copy });
                }
                Ok((_, _, None)) => {
                    return Err(IoError::InvalidArgument(format!("{ifname} queue {queue} is opened twice in one worker")));
                }
                Err(e) => {
                    let io = super::error::root_io_error(&e).unwrap_or_else(|| std::io::Error::other(e.to_string()));
                    let code = io.raw_os_error();
                    if code == Some(libc::EPERM) {
                        return Err(IoError::NotPermitted { what: format!("binding AF_XDP to {ifname}") });
                    }
                    last = Some(io);
                    if code == Some(libc::EBUSY) && attempt < BIND_RETRIES {
                        thread::sleep(backoff);
                        backoff *= 2;
                        continue;
                    }
                    break;
                }
            }
        }
    }
    Err(IoError::Socket { ifname: ifname.to_owned(), queue, source: last.unwrap_or_else(|| std::io::Error::other("bind failed")) })
}

impl PacketIo for XskIo {
    fn recv(&mut self, out: &mut Vec<FrameRef>) -> Result<usize, IoError> {
        self.reap();
        let nports = self.ports.len();
        let mut got = 0;
        for k in 0..nports {
            let p = (self.next_port + k) % nports;
            self.refill(p)?;
            let room = self.batch - got;
            if room == 0 {
                break;
            }
            self.scratch.clear();
            self.scratch.resize(room, FrameDesc::default());
            // SAFETY: descriptors of this UMEM's rx ring.
            let n = unsafe { self.ports[p].rx.consume(&mut self.scratch) };
            for d in &self.scratch[..n] {
                out.push(FrameRef { chunk: self.mem.token(Self::chunk_of(d)), start: d.addr() % FRAME_SIZE, len: d.lengths().data(), port: p as PortId });
            }
            got += n;
        }
        self.next_port = (self.next_port + 1) % nports;
        self.stats.rx += got as u64;
        Ok(got)
    }

    fn buffer<'a>(&'a self, chunk: &'a mut Chunk) -> Option<&'a mut [u8]> {
        self.mem.buffer(chunk)
    }

    fn send(&mut self, frames: &mut Vec<FrameRef>) -> Result<usize, IoError> {
        self.reap();
        let mut queued = 0;
        for port in 0..self.ports.len() {
            self.scratch.clear();
            for f in frames.iter_mut().filter(|f| usize::from(f.port) == port) {
                let Some(chunk) = self.mem.index(&f.chunk) else {
                    self.stats.tx_invalid += 1;
                    continue;
                };
                if !f.in_bounds() || HEADROOM + f.len > FRAME_SIZE {
                    self.stats.tx_invalid += 1;
                    self.free.push(chunk);
                    continue;
                }
                if f.start != HEADROOM {
                    let (start, len) = (f.start, f.len);
                    if let Some(buf) = self.mem.buffer(&mut f.chunk) {
                        buf.copy_within(start..start + len, HEADROOM);
                    }
                }
                let mut d = self.descs[chunk as usize];
                // SAFETY: `d` is this UMEM's descriptor for a chunk we own;
                // only its length is written.
                unsafe { self.umem.data_mut(&mut d).cursor().set_pos(f.len) };
                self.scratch.push(d);
            }
            if self.scratch.is_empty() {
                continue;
            }
            let p = &mut self.ports[port];
            let free_slots = p.tx.nb_free_exact() as usize;
            let n = self.scratch.len().min(free_slots);
            // SAFETY: chunks we own, of this UMEM; they return through the
            // completion ring.
            let produced = unsafe { p.tx.produce(&self.scratch[..n]) };
            self.stats.tx_ring_full += (self.scratch.len() - produced) as u64;
            self.free.extend(self.scratch[produced..].iter().map(Self::chunk_of));
            queued += produced;
            self.kick(port)?;
        }
        let nports = self.ports.len();
        for f in frames.iter().filter(|f| usize::from(f.port) >= nports) {
            self.stats.tx_invalid += 1;
            if let Some(chunk) = self.mem.index(&f.chunk) {
                self.free.push(chunk);
            }
        }
        frames.clear();
        self.stats.tx += queued as u64;
        Ok(queued)
    }

    fn alloc(&mut self) -> Option<FrameRef> {
        let index = self.free.pop()?;
        Some(FrameRef { chunk: self.mem.token(index), start: HEADROOM, len: 0, port: 0 })
    }

    fn recycle(&mut self, frames: &mut Vec<FrameRef>) {
        for f in frames.drain(..) {
            if let Some(chunk) = self.mem.index(&f.chunk) {
                self.free.push(chunk);
            }
        }
    }

    /// A zero-length non-blocking recvfrom on each socket: with busy
    /// polling set, the kernel runs the device queue's poll in it.
    fn spin(&mut self) -> Result<(), IoError> {
        for p in &self.ports {
            // SAFETY: a zero-length receive into no buffer, on this
            // socket's descriptor; the kernel writes nothing.
            let rc = unsafe { libc::recvfrom(p.rx.fd().as_raw_fd(), std::ptr::null_mut(), 0, libc::MSG_DONTWAIT, std::ptr::null_mut(), std::ptr::null_mut()) };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if !matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR | libc::EBUSY | libc::ENETDOWN | libc::ENOBUFS)) {
                    return Err(p.ring_error(e));
                }
            }
        }
        Ok(())
    }

    fn wait(&mut self, timeout: Duration) -> Result<(), IoError> {
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `pollfds` is a valid array of its length.
        let rc = unsafe { libc::poll(self.pollfds.as_mut_ptr(), self.pollfds.len() as libc::nfds_t, ms) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(self.ports[0].ring_error(e));
            }
        }
        Ok(())
    }
}
