//! One worker's poll loop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use fulcrum_dataplane::engine::Engine;
use fulcrum_dataplane::packet::{DropReason, Packet, Verdict};
use fulcrum_dataplane::stats::{Counter, Gauge, Log2Histogram, Stats};
use fulcrum_io::{FRAME_SIZE, FrameRef, HEADROOM, IoError, PacketIo, PortId};

use super::Control;
use crate::ha::Ha;

/// Frames processed together: one `recv` batch plus handed-over frames.
const BATCH: usize = 64;
/// Batch-size histogram buckets: up to 1, 2, 4, ... `BATCH` frames.
pub const BATCH_BUCKETS: usize = BATCH.trailing_zeros() as usize + 1;
/// How long an idle worker sleeps in `wait` before polling again.
const IDLE_WAIT: Duration = Duration::from_millis(1);

/// A frame handed from one worker to another, by value: the workers' UMEMs
/// are their own, so the bytes travel (a rare path: NAT return traffic that
/// RSS put on another queue).
pub struct Handoff {
    len: u16,
    port: PortId,
    /// Workers that already looked for the flow.
    hops: u8,
    bytes: [u8; FRAME_SIZE - HEADROOM],
}

/// What one worker's loop counts (the engine counts the packets).
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub polls: Counter,
    /// Polls that found frames.
    pub busy_polls: Counter,
    pub frames: Counter,
    /// Busy polls by frames in the batch: bucket i counts batches of
    /// 2^(i-1) + 1 ..= 2^i frames (bucket 0: one frame).
    pub batch_sizes: Log2Histogram<BATCH_BUCKETS>,
    pub handed_out: Counter,
    pub handed_in: Counter,
    /// Handoffs lost to a full queue or a lack of free buffers.
    pub handoff_lost: Counter,
    /// Frames the engine would give the kernel but that AF_XDP already
    /// took from it: the steering program should not have redirected them.
    pub unsteerable: Counter,
    /// The generation of the services this worker runs (see
    /// `Dataplane::publish`).
    pub generation: Gauge,
}

pub struct Worker<I> {
    id: u16,
    io: I,
    engine: Engine,
    inbox: Receiver<Handoff>,
    peers: Arc<[Sender<Handoff>]>,
    control: Receiver<Control>,
    stats: Arc<WorkerStats>,
    rx: Vec<FrameRef>,
    /// Per frame of `rx`: how many workers already looked (0 = received here).
    hops: Vec<u8>,
    tx: Vec<FrameRef>,
    dropped: Vec<FrameRef>,
    /// Shared by the workers (the sticky table's times are compared
    /// across them).
    clock: Instant,
    /// Flow sync with the other balancer of a pair, if configured.
    ha: Option<Arc<Ha>>,
}

impl<I: PacketIo> Worker<I> {
    pub(super) fn new(
        id: u16,
        io: I,
        engine: Engine,
        inbox: Receiver<Handoff>,
        peers: Arc<[Sender<Handoff>]>,
        control: Receiver<Control>,
        clock: Instant,
    ) -> Self {
        Worker {
            id,
            io,
            engine,
            inbox,
            peers,
            control,
            stats: Arc::default(),
            rx: Vec::with_capacity(BATCH),
            hops: Vec::with_capacity(BATCH),
            tx: Vec::with_capacity(BATCH),
            dropped: Vec::with_capacity(BATCH),
            clock,
            ha: None,
        }
    }

    /// Syncs this worker's flows through `ha` (its lane is the worker's id).
    pub fn set_ha(&mut self, ha: Arc<Ha>) {
        self.ha = Some(ha);
    }

    pub fn engine_stats(&self) -> &Arc<Stats> {
        self.engine.stats()
    }

    pub fn stats(&self) -> &Arc<WorkerStats> {
        &self.stats
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn io_mut(&mut self) -> &mut I {
        &mut self.io
    }

    /// Polls until `stop` is set. After a round without frames, `busy`
    /// spins on (giving the device a poll of its own), else it sleeps
    /// until a frame comes or `IDLE_WAIT` passes.
    pub fn run(mut self, stop: &AtomicBool, busy: bool) -> Result<(), IoError> {
        while !stop.load(Ordering::Relaxed) {
            if !self.poll()? {
                match busy {
                    true => self.io.spin()?,
                    false => self.io.wait(IDLE_WAIT)?,
                }
            }
        }
        Ok(())
    }

    /// One iteration: control messages, one batch of received and handed
    /// frames through the engine, transmit. Whether any frame was seen.
    pub fn poll(&mut self) -> Result<bool, IoError> {
        self.apply_control();
        self.stats.polls.inc();
        // Microseconds, for the handshake times the engine measures.
        let now_us = self.clock.elapsed().as_micros() as u64;
        let now = (now_us / 1000) as u32;
        self.io.recv(&mut self.rx)?;
        self.hops.resize(self.rx.len(), 0);
        self.take_handoffs();
        let n = self.rx.len();
        if n > 0 {
            self.stats.busy_polls.inc();
            self.stats.frames.add(n as u64);
            self.stats.batch_sizes.record(n as u64);
        }
        // With nothing received the engine still runs its expiry step.
        let verdicts = self.run_engine(now_us);
        if let Some(ha) = &self.ha {
            ha.poll_worker(usize::from(self.id), &mut self.engine, now);
        }
        for ((mut f, hops), (verdict, start, len)) in self.rx.drain(..).zip(self.hops.drain(..)).zip(verdicts) {
            match verdict {
                Verdict::Tx(port) => {
                    (f.start, f.len, f.port) = (start, len, port);
                    self.tx.push(f);
                    continue;
                }
                Verdict::Pass => self.stats.unsteerable.inc(),
                Verdict::Drop(_) => {}
                Verdict::Handoff(owner) => {
                    let relay = Relay { peers: &self.peers, stats: &self.stats, engine: self.engine.stats(), id: self.id };
                    relay.hand_on(&self.io, &mut f, hops, owner);
                }
            }
            self.dropped.push(f);
        }
        self.io.send(&mut self.tx)?;
        self.io.recycle(&mut self.dropped);
        Ok(n > 0)
    }

    fn apply_control(&mut self) {
        while let Ok(msg) = self.control.try_recv() {
            match msg {
                Control::Services(s, generation) => match self.engine.set_services(s) {
                    Ok(()) => self.stats.generation.set(generation),
                    Err(e) => tracing::error!(worker = self.id, "new services refused: {e}"),
                },
                Control::Scheduler(vip, sched) => self.engine.set_scheduler(vip, sched),
                Control::Flows { vip, client, limit, reply } => {
                    let now = self.clock.elapsed().as_millis() as u32;
                    let _ = reply.try_send((self.id, self.engine.flows(vip, client, now, limit)));
                }
            }
        }
    }

    /// Copies waiting handed-over frames into free buffers of this worker.
    fn take_handoffs(&mut self) {
        while self.rx.len() < BATCH {
            let Ok(h) = self.inbox.try_recv() else { break };
            self.stats.handed_in.inc();
            let Some(mut f) = self.io.alloc() else {
                self.stats.handoff_lost.inc();
                continue;
            };
            let len = usize::from(h.len);
            if let Some(buf) = self.io.buffer(&mut f.chunk) {
                buf[HEADROOM..HEADROOM + len].copy_from_slice(&h.bytes[..len]);
            }
            (f.len, f.port) = (len, h.port);
            self.rx.push(f);
            self.hops.push(h.hops);
        }
    }

    /// Runs the batch through the engine; per frame the verdict and the
    /// frame's new bounds.
    fn run_engine(&mut self, now_us: u64) -> [(Verdict, usize, usize); BATCH] {
        let mut out = [(Verdict::Pass, 0, 0); BATCH];
        let io = &self.io;
        let mut batch: [Packet; BATCH] = std::array::from_fn(|_| Packet::default());
        let n = self.rx.len().min(BATCH);
        let workers = self.peers.len();
        for ((pkt, f), &hops) in batch.iter_mut().zip(self.rx.iter_mut()).zip(&self.hops) {
            let (start, len, port) = (f.start, f.len, f.port);
            if let Some(buf) = io.buffer(&mut f.chunk) {
                *pkt = Packet::new(buf, start, len, port);
                pkt.handed_round = usize::from(hops) + 1 >= workers;
            }
        }
        self.engine.process_us(now_us, &mut batch[..n]);
        for (o, p) in out.iter_mut().zip(&batch[..n]) {
            *o = (p.verdict, p.start, p.len);
        }
        out
    }
}

/// What handing a frame on needs of its worker.
struct Relay<'a> {
    peers: &'a [Sender<Handoff>],
    stats: &'a WorkerStats,
    engine: &'a Stats,
    id: u16,
}

impl Relay<'_> {
    /// Sends a frame without local state to the worker that may hold its
    /// flow: the known owner, else the next worker in turn until all have
    /// looked; then it is dropped as having no state.
    fn hand_on<I: PacketIo>(&self, io: &I, f: &mut FrameRef, hops: u8, owner: Option<u16>) {
        let workers = self.peers.len();
        let to = match owner {
            Some(w) if hops == 0 => usize::from(w),
            None if usize::from(hops) + 1 < workers => (usize::from(self.id) + 1) % workers,
            _ => {
                self.engine.drops.count(DropReason::NoState);
                return;
            }
        };
        let (start, len) = (f.start, f.len.min(FRAME_SIZE - HEADROOM));
        let Some(buf) = io.buffer(&mut f.chunk) else { return };
        let mut h = Handoff { len: len as u16, port: f.port, hops: hops + 1, bytes: [0; FRAME_SIZE - HEADROOM] };
        h.bytes[..len].copy_from_slice(&buf[start..start + len]);
        let sent = self.peers.get(to).is_some_and(|p| p.try_send(h).is_ok());
        if sent { self.stats.handed_out.inc() } else { self.stats.handoff_lost.inc() }
    }
}
