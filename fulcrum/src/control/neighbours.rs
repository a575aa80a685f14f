//! Keeps the workers' neighbour table (`dataplane::flow::neighbours`) in
//! step with the kernel's for the daemon's interfaces: a thread of its own,
//! `fulcrum-neigh`, applies rtnetlink neighbour events (a dump first), so
//! replies to a client go where the network says it is. It also passes
//! every address whose MAC it learns to the control thread (`take_known`),
//! which moves on-link backends whose MAC changed.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, unbounded};
use fulcrum_dataplane::flow::key::addr16;
use fulcrum_dataplane::flow::neighbours::Neighbours;
use fulcrum_dataplane::types::Mac;
use fulcrum_io::netlink::{Neighbour, NeighbourWatch};

use crate::error::Error;

/// How often the thread looks at its stop flag when no event comes.
const POLL: Duration = Duration::from_millis(200);

/// The running thread; stops when dropped.
pub struct NeighbourSync {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    known: Receiver<(IpAddr, Mac)>,
    /// Readable when `known` has news.
    wake: UnixStream,
}

impl NeighbourSync {
    /// Subscribes (on this thread, so a failure is a start-up error) and
    /// starts applying the events of interfaces `ifindexes` to `table`.
    pub fn start(ifindexes: HashSet<u32>, table: Arc<Neighbours>) -> Result<NeighbourSync, Error> {
        let mut watch = NeighbourWatch::open(POLL).map_err(Error::system("subscribing to the kernel's neighbour events"))?;
        let (wake, mut notify) = UnixStream::pair().map_err(Error::system("neighbour events: socket pair"))?;
        for s in [&wake, &notify] {
            s.set_nonblocking(true).map_err(Error::system("neighbour events: socket pair"))?;
        }
        let (tx, known) = unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("fulcrum-neigh".into())
            .spawn(move || {
                let mut events = Vec::new();
                while !flag.load(Ordering::Relaxed) {
                    if let Err(e) = watch.recv(&mut events) {
                        // Replies then fall back to the frames' own source
                        // MACs until the daemon restarts.
                        tracing::error!("neighbour events: {e}: replies now follow the clients' frames");
                        return;
                    }
                    let before = tx.len();
                    for e in events.drain(..) {
                        apply(&table, &ifindexes, &tx, e);
                    }
                    if tx.len() > before {
                        // Full means a wake-up is pending already.
                        let _ = notify.write(&[1]);
                    }
                }
            })
            .map_err(Error::system("starting the neighbour thread"))?;
        Ok(NeighbourSync { stop, thread: Some(thread), known, wake })
    }

    /// Readable when addresses with a (new or confirmed) MAC wait.
    pub fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// The addresses the kernel learnt a MAC for since the last call.
    pub fn take_known(&self) -> Vec<(IpAddr, Mac)> {
        let mut buf = [0u8; 64];
        while matches!((&self.wake).read(&mut buf), Ok(n) if n > 0) {}
        self.known.try_iter().collect()
    }
}

fn apply(table: &Neighbours, ifindexes: &HashSet<u32>, known: &Sender<(IpAddr, Mac)>, e: Neighbour) {
    match e {
        Neighbour::Known { ifindex, addr, mac } if ifindexes.contains(&ifindex) => {
            table.set(&addr16(addr), mac);
            let _ = known.send((addr, mac));
        }
        Neighbour::Gone { ifindex, addr } if ifindexes.contains(&ifindex) => table.remove(&addr16(addr)),
        _ => {}
    }
}

impl Drop for NeighbourSync {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
