//! Per-core poll loops. A worker owns the I/O of one rx queue (its sockets
//! on every interface) and one `Engine` with its connection-table shard. It
//! polls in batches, takes control messages and frames handed over by other
//! workers between batches, and hands on NAT return traffic it does not own.
//! Everything crossing threads goes through bounded crossbeam channels:
//! preallocated, lock-free, nothing allocated per packet.

mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, bounded};
use fulcrum_dataplane::engine::{Engine, EngineConfig, FlowRow, Shared};
use fulcrum_dataplane::sched::Scheduler;
use fulcrum_dataplane::services::Services;
use fulcrum_dataplane::stats::Stats;
use fulcrum_dataplane::types::VipId;
use fulcrum_io::{IoError, PacketIo};

use crate::error::Error;
use crate::ha::Ha;

pub use worker::{BATCH_BUCKETS, Handoff, Worker, WorkerStats};

/// Frames one worker may have waiting from the others.
const HANDOFF_QUEUE: usize = 1024;
const CONTROL_QUEUE: usize = 64;

/// A change the control plane sends to every worker.
pub enum Control {
    /// A service snapshot and its generation, which the worker reports in
    /// `WorkerStats::generation` once it runs it.
    Services(Arc<Services>, u64),
    /// A VIP's scheduler for new flows (`None`: back to Maglev).
    Scheduler(VipId, Option<Box<dyn Scheduler>>),
    /// An operator's listing of a VIP's flows (of one client address).
    /// The answer names the worker.
    Flows { vip: VipId, client: Option<[u8; 16]>, limit: usize, reply: Sender<(u16, Vec<FlowRow>)> },
}

/// Builds a worker's scheduler: each worker needs its own instance.
pub type SchedulerFactory = dyn Fn(u16) -> Option<Box<dyn Scheduler>> + Send + Sync;

/// A worker and the sender of its control messages.
pub type Wired<I> = (Worker<I>, Sender<Control>);

/// Running workers and the handles the control plane keeps.
pub struct Dataplane {
    stop: Arc<AtomicBool>,
    control: Vec<Sender<Control>>,
    /// Of the last publication (the initial services are generation 0).
    generation: AtomicU64,
    threads: Vec<JoinHandle<Result<(), IoError>>>,
    /// Per worker: the engine's counters and the loop's own.
    pub stats: Vec<(Arc<Stats>, Arc<WorkerStats>)>,
}

impl Dataplane {
    /// Wires the workers together (worker i gets `ios[i]`) without
    /// starting them: the caller decides where they run.
    /// `shared`: the tables all workers use (see `Shared`); the control
    /// plane keeps its own handle on them to write the neighbours.
    pub fn workers<I: PacketIo>(ios: Vec<I>, cfg: EngineConfig, services: &Arc<Services>, shared: &Shared) -> Result<Vec<Wired<I>>, Error> {
        let n = u16::try_from(ios.len()).map_err(|_| Error::Refused(format!("{} workers: at most {}", ios.len(), u16::MAX)))?;
        let (inboxes, mailboxes): (Vec<_>, Vec<_>) = (0..n)
            .map(|_| {
                let (tx, rx) = bounded::<Handoff>(HANDOFF_QUEUE);
                (tx, rx)
            })
            .unzip();
        let peers: Arc<[Sender<Handoff>]> = inboxes.into();
        ios.into_iter()
            .zip(mailboxes)
            .enumerate()
            .map(|(i, (io, inbox))| {
                let engine = Engine::with_shared(EngineConfig { worker: i as u16, workers: n, ..cfg }, Arc::clone(services), shared)?;
                let (ctl_tx, ctl_rx) = bounded(CONTROL_QUEUE);
                Ok((Worker::new(i as u16, io, engine, inbox, Arc::clone(&peers), ctl_rx, shared.epoch), ctl_tx))
            })
            .collect()
    }

    /// Starts one thread per worker; worker i is pinned to CPU `cpus[i]`
    /// when given. With `ha`, the workers sync their flows through it.
    /// `busy`: the workers spin instead of sleeping when idle.
    pub fn start<I: PacketIo + Send + 'static>(
        ios: Vec<I>,
        cfg: EngineConfig,
        services: &Arc<Services>,
        shared: &Shared,
        cpus: &[usize],
        ha: Option<&Arc<Ha>>,
        busy: bool,
    ) -> Result<Dataplane, Error> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut dp = Dataplane { stop: Arc::clone(&stop), control: Vec::new(), generation: AtomicU64::new(0), threads: Vec::new(), stats: Vec::new() };
        for (i, (mut worker, ctl)) in Self::workers(ios, cfg, services, shared)?.into_iter().enumerate() {
            if let Some(ha) = ha {
                worker.set_ha(Arc::clone(ha));
            }
            dp.stats.push((Arc::clone(worker.engine_stats()), Arc::clone(worker.stats())));
            dp.control.push(ctl);
            let (stop, core) = (Arc::clone(&stop), cpus.get(i).map(|&id| core_affinity::CoreId { id }));
            let thread = std::thread::Builder::new()
                .name(format!("fulcrum-w{i}"))
                .spawn(move || {
                    if let Some(core) = core
                        && !core_affinity::set_for_current(core)
                    {
                        tracing::warn!(worker = i, cpu = core.id, "could not pin the worker");
                    }
                    worker.run(&stop, busy)
                })
                .map_err(Error::system(format!("starting worker {i}")))?;
            dp.threads.push(thread);
        }
        Ok(dp)
    }

    /// Publishes a new service snapshot to every worker; its generation.
    pub fn publish(&self, services: &Arc<Services>) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        for c in &self.control {
            // A full queue means the worker is far behind; the next
            // publication carries the newest snapshot anyway.
            let _ = c.try_send(Control::Services(Arc::clone(services), generation));
        }
        generation
    }

    /// Waits up to `timeout` until every worker runs publication
    /// `generation` or a later one; the workers that do not.
    pub fn wait_applied(&self, generation: u64, timeout: Duration) -> Result<(), Vec<usize>> {
        let deadline = Instant::now() + timeout;
        loop {
            let behind: Vec<usize> = self.stats.iter().enumerate().filter(|(_, (_, w))| w.generation.get() < generation).map(|(i, _)| i).collect();
            if behind.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(behind);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Up to `limit` flows of `vip` from every worker's table, with the
    /// worker that holds each; a worker that does not answer within
    /// `timeout` (busy, or its queue full) is left out.
    pub fn flows(&self, vip: VipId, client: Option<[u8; 16]>, limit: usize, timeout: Duration) -> Vec<(usize, FlowRow)> {
        let (tx, rx) = bounded(self.control.len());
        let asked: Vec<usize> =
            (0..self.control.len()).filter(|&i| self.control[i].try_send(Control::Flows { vip, client, limit, reply: tx.clone() }).is_ok()).collect();
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        for _ in &asked {
            let Ok((worker, rows)) = rx.recv_deadline(deadline) else { break };
            out.extend(rows.into_iter().map(|r| (usize::from(worker), r)));
        }
        out.sort_by_key(|&(w, r)| (w, r.key.src, r.key.src_port));
        out.truncate(limit);
        out
    }

    /// Gives every worker its own instance of a VIP's scheduler.
    pub fn set_scheduler(&self, vip: VipId, make: &SchedulerFactory) {
        for (i, c) in self.control.iter().enumerate() {
            let _ = c.try_send(Control::Scheduler(vip, make(i as u16)));
        }
    }

    /// Stops the workers and waits for them; the first worker error.
    pub fn stop(self) -> Result<(), IoError> {
        self.stop.store(true, Ordering::Relaxed);
        let mut first = Ok(());
        for t in self.threads {
            let r = t.join().unwrap_or_else(|_| Err(IoError::InvalidArgument("a worker panicked".into())));
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}
