//! High availability: a balancer pair moves its addresses with keepalived
//! (VRRP), and fulcrum keeps the flows: each daemon sends the other every
//! flow it creates or changes and refreshes the busy ones (`sync`), so the
//! one that takes over carries on every connection.
//!
//! Workers and the sync thread meet in `Ha`: per worker, a lock-free
//! bounded ring out (the worker pushes after each batch, never blocking,
//! never making a system call) and one in (the sync thread routes each
//! received flow to the worker of the index that owns it on the sender),
//! and the role, which the workers read once per poll.

pub mod sync;
pub mod watch;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use crossbeam_queue::ArrayQueue;
use fulcrum_config::HaRole;
use fulcrum_dataplane::engine::Engine;
use fulcrum_dataplane::flow::sync::SyncEntry;
use fulcrum_dataplane::stats::Counter;

/// Flows one worker may have waiting to be sent or imported: tens of
/// milliseconds of a busy worker's new flows.
const RING: usize = 1 << 14;
/// Imported flows one worker takes per poll, so a bulk resync arriving
/// cannot stall its packets.
const IMPORTS_PER_POLL: usize = 256;

/// A flow on its way out, stamped (ms on the daemon's sync clock) when
/// the worker pushed it, for the lag.
pub type Outgoing = (SyncEntry, u32);

/// What a worker counts of the sync (its only writer).
#[derive(Debug, Default)]
pub struct WorkerSync {
    pub exported: Counter,
    /// Flows not sent because the ring out was full.
    pub export_lost: Counter,
    pub imported: Counter,
    /// Flows refused: VIP, backend or SNAT address unknown here.
    pub import_refused: Counter,
}

/// One worker's side.
pub struct Lane {
    pub out: ArrayQueue<Outgoing>,
    pub inbound: ArrayQueue<SyncEntry>,
    /// Set by the sync thread: a peer (re)started, send it everything.
    pub bulk: AtomicBool,
    pub counts: WorkerSync,
}

/// The pair's shared state: the role and the workers' lanes.
pub struct Ha {
    role: AtomicU8,
    pub lanes: Vec<Lane>,
    /// The sync thread's clock, which stamps outgoing flows.
    pub clock: Instant,
    /// Role changes, for the status.
    pub role_changes: AtomicU64,
    /// A master told to step aside (`fulcrum ha role backup` by hand)
    /// until the next role change: its `fulcrum status` fails, so that
    /// keepalived, which still holds the addresses, hands them over.
    standing_down: AtomicBool,
}

fn role_byte(r: HaRole) -> u8 {
    match r {
        HaRole::Master => 0,
        HaRole::Backup => 1,
        HaRole::Fault => 2,
    }
}

fn role_of(b: u8) -> HaRole {
    match b {
        0 => HaRole::Master,
        1 => HaRole::Backup,
        _ => HaRole::Fault,
    }
}

impl Ha {
    pub fn new(workers: usize, role: HaRole) -> Arc<Ha> {
        let lanes = (0..workers)
            .map(|_| Lane { out: ArrayQueue::new(RING), inbound: ArrayQueue::new(RING), bulk: AtomicBool::new(false), counts: WorkerSync::default() })
            .collect();
        Arc::new(Ha {
            role: AtomicU8::new(role_byte(role)),
            lanes,
            clock: Instant::now(),
            role_changes: AtomicU64::new(0),
            standing_down: AtomicBool::new(false),
        })
    }

    pub fn role(&self) -> HaRole {
        role_of(self.role.load(Relaxed))
    }

    /// Sets the role; the previous one.
    pub fn set_role(&self, role: HaRole) -> HaRole {
        let old = self.role.swap(role_byte(role), Relaxed);
        if old != role_byte(role) {
            self.role_changes.fetch_add(1, Relaxed);
        }
        role_of(old)
    }

    /// Records a role change made: a master demoted stands down until the
    /// next one. keepalived's notify that follows (it let the addresses go)
    /// reaches a balancer that is no longer master, and ends it.
    pub fn note_role_change(&self, previous: HaRole, role: HaRole) {
        self.standing_down.store(previous == HaRole::Master && role != HaRole::Master, Relaxed);
    }

    pub fn standing_down(&self) -> bool {
        self.standing_down.load(Relaxed)
    }

    /// Asks every worker for a bulk resync.
    pub fn request_bulk(&self) {
        for l in &self.lanes {
            l.bulk.store(true, Relaxed);
        }
    }

    pub fn now_ms(&self) -> u32 {
        self.clock.elapsed().as_millis() as u32
    }

    /// A worker's turn, after each batch: sends what its engine exports
    /// (changes and refreshes only while master; a bulk resync whatever
    /// the role) and imports what peers sent.
    pub fn poll_worker(&self, worker: usize, engine: &mut Engine, now: u32) {
        let Some(lane) = self.lanes.get(worker) else { return };
        if lane.bulk.swap(false, Relaxed) {
            engine.start_bulk_sync();
        }
        let stamp = self.now_ms();
        let c = &lane.counts;
        engine.export_sync(now, self.role() == HaRole::Master, |e| match lane.out.push((*e, stamp)) {
            Ok(()) => {
                c.exported.inc();
                true
            }
            Err(_) => {
                c.export_lost.inc();
                false
            }
        });
        for _ in 0..IMPORTS_PER_POLL {
            let Some(e) = lane.inbound.pop() else { break };
            match engine.import(now, &e) {
                Ok(()) => c.imported.inc(),
                Err(_) => c.import_refused.inc(),
            }
        }
    }
}
