//! What the control plane reports, shared by the control thread (which
//! reloads) and the metrics thread (which only reads): the services in
//! force, every worker's counters, the reload history. The workers never
//! touch the locks here: they write their own atomics, read from here.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use fulcrum_dataplane::Shared;
use fulcrum_dataplane::flow::key::ip_from16;
use fulcrum_dataplane::packet::DropReason;
use fulcrum_dataplane::sched::readings::Readings;
use fulcrum_dataplane::services::{Services, backend_name, vip_name};
use fulcrum_dataplane::stats::{self, Stats};
use fulcrum_health::HealthStats;

use fulcrum_io::afxdp::XskWatch;

use super::api::{BackendStats, CheckCounters, LastReload, Reloads, SocketReport, StatsReport, SyncReport, Traffic, VipStats, WorkerReport, brief};
use super::human;
use super::plugins::{self, Slots};
use crate::ha::sync::SyncCounters;
use crate::ha::{Ha, WorkerSync};
use crate::workers::WorkerStats;

pub struct Telemetry {
    services: Mutex<Arc<Services>>,
    /// The health checks' counters, when any VIP has checks.
    health: Mutex<Option<Arc<HealthStats>>>,
    workers: Vec<(Arc<Stats>, Arc<WorkerStats>)>,
    /// The workers' connections, byte rates and handshake times per
    /// backend, and the workers' clock they are timed by.
    readings: Arc<Readings>,
    clock: Instant,
    table_capacity: u64,
    reloads: Mutex<Reloads>,
    /// The pair's role and the sync thread's counters, with `[sync]`.
    sync: Mutex<Option<(Arc<Ha>, Arc<SyncCounters>)>>,
    /// Set once a drain started: the balancer wants no new traffic.
    draining: AtomicBool,
    /// The VIPs' scheduler plugins.
    plugins: Mutex<Slots>,
    /// The workers' AF_XDP sockets (worker, socket), whose kernel counters
    /// each report reads.
    sockets: Vec<(usize, XskWatch)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data: a panic elsewhere cannot leave it half-updated.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn traffic(t: &[&stats::Traffic]) -> Traffic {
    let sum = |f: fn(&stats::Traffic) -> u64| t.iter().map(|t| f(t)).sum();
    Traffic {
        packets: sum(|t| t.packets.get()),
        bytes: sum(|t| t.bytes.get()),
        new_flows: sum(|t| t.new_flows.get()),
        resets: sum(|t| t.resets.get()),
        moved_clients: sum(|t| t.moved_clients.get()),
    }
}

impl Telemetry {
    pub fn new(
        services: Arc<Services>,
        workers: Vec<(Arc<Stats>, Arc<WorkerStats>)>,
        sockets: Vec<(usize, XskWatch)>,
        shared: &Shared,
        table_capacity: u64,
    ) -> Telemetry {
        Telemetry {
            services: Mutex::new(services),
            health: Mutex::default(),
            workers,
            readings: Arc::clone(&shared.readings),
            clock: shared.epoch,
            table_capacity,
            // The configuration in force was loaded now.
            reloads: Mutex::new(Reloads { last_applied_at: human::now(), ..Reloads::default() }),
            sync: Mutex::default(),
            draining: AtomicBool::new(false),
            plugins: Mutex::default(),
            sockets,
        }
    }

    /// Each socket's ring counters as the kernel has them now (one
    /// getsockopt each; a socket whose counters cannot be read is left out
    /// and logged).
    fn socket_reports(&self) -> Vec<SocketReport> {
        self.sockets
            .iter()
            .filter_map(|(worker, w)| match w.counters() {
                Ok(c) => Some(SocketReport {
                    worker: *worker,
                    interface: w.ifname.clone(),
                    queue: w.queue,
                    zero_copy: w.zero_copy(),
                    rx_dropped: c.rx_dropped,
                    rx_ring_full: c.rx_ring_full,
                    fill_ring_empty: c.fill_ring_empty,
                    rx_invalid: c.rx_invalid,
                    tx_invalid: c.tx_invalid,
                    tx_ring_empty: c.tx_ring_empty,
                }),
                Err(e) => {
                    tracing::warn!("AF_XDP statistics: {e}");
                    None
                }
            })
            .collect()
    }

    /// Whether the balancer takes new traffic: its workers run and its
    /// programs are attached (the metrics endpoint is served only from
    /// then on), and no drain has started.
    pub fn ready(&self) -> bool {
        !self.draining.load(Relaxed)
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Relaxed);
    }

    pub fn set_plugins(&self, slots: Slots) {
        *lock(&self.plugins) = slots;
    }

    pub fn set_sync(&self, ha: Arc<Ha>, counters: Arc<SyncCounters>) {
        *lock(&self.sync) = Some((ha, counters));
    }

    fn sync_report(&self) -> Option<SyncReport> {
        let (ha, c) = lock(&self.sync).clone()?;
        let workers = |f: fn(&WorkerSync) -> u64| ha.lanes.iter().map(|l| f(&l.counts)).sum::<u64>();
        let entries = [
            ("out", "sent", c.entries_sent.load(Relaxed)),
            ("out", "lost", workers(|w| w.export_lost.get())),
            ("in", "received", c.entries_received.load(Relaxed)),
            ("in", "imported", workers(|w| w.imported.get())),
            ("in", "refused", workers(|w| w.import_refused.get())),
            ("in", "lost", c.inbound_lost.load(Relaxed)),
        ];
        let dropped = [("unauthenticated", &c.unauthenticated), ("unknown_peer", &c.unknown_peer), ("malformed", &c.malformed), ("mismatched", &c.mismatched)];
        Some(SyncReport {
            role: ha.role().as_str().into(),
            entries: entries.iter().map(|&(d, r, n)| (d.into(), r.into(), n)).collect(),
            datagrams_dropped: dropped.iter().map(|(r, n)| (r.to_string(), n.load(Relaxed))).collect(),
            datagrams_sent: c.datagrams_sent.load(Relaxed),
            bytes_sent: c.bytes_sent.load(Relaxed),
            lag_buckets: c.lag_buckets.iter().map(|b| b.load(Relaxed)).collect(),
            lag_sum_ms: c.lag_sum_ms.load(Relaxed),
        })
    }

    pub fn set_services(&self, services: Arc<Services>) {
        *lock(&self.services) = services;
    }

    pub fn set_health(&self, health: Option<Arc<HealthStats>>) {
        *lock(&self.health) = health;
    }

    pub fn services(&self) -> Arc<Services> {
        Arc::clone(&lock(&self.services))
    }

    /// Counts a reload; `status` shows the message of the last one, kept
    /// brief (`api::brief`).
    pub fn reloaded(&self, applied: bool, message: &str) {
        let mut r = lock(&self.reloads);
        *if applied { &mut r.applied } else { &mut r.refused } += 1;
        let at = human::now();
        if applied {
            r.last_applied_at = at;
        }
        r.last = Some(LastReload { at, applied, message: brief(message) });
    }

    /// Packets of every VIP in force, both directions, over the workers:
    /// what a drain watches to see the VIPs' traffic stop.
    pub fn vip_packets(&self) -> u64 {
        let services = self.services();
        services.vips().flat_map(|(id, _)| self.workers.iter().map(move |(s, _)| s.vips[usize::from(id)].packets.get())).sum()
    }

    pub fn reloads(&self) -> Reloads {
        lock(&self.reloads).clone()
    }

    /// The counters of the VIPs and backends in force, summed over the
    /// workers (ids are stable, so a VIP's counts span reloads), and each
    /// worker's own.
    pub fn stats(&self) -> StatsReport {
        let services = self.services();
        let health = lock(&self.health).clone();
        let engines: Vec<&Stats> = self.workers.iter().map(|(s, _)| &**s).collect();
        let slots = lock(&self.plugins).clone();
        let vips = services
            .vips()
            .map(|(id, vip)| {
                let i = usize::from(id);
                let drops = DropReason::ALL
                    .iter()
                    .map(|&r| (r.label().to_string(), engines.iter().map(|s| s.vip_drops[i].get(r)).sum::<u64>()))
                    .filter(|(_, n)| *n > 0)
                    .collect();
                let backends = vip
                    .spec
                    .backends
                    .iter()
                    .filter_map(|&bid| {
                        let b = services.backend(bid)?;
                        let j = usize::from(bid);
                        let state = match (b.spec.up, b.spec.weight) {
                            (false, _) => "down",
                            (true, 0) => "draining",
                            (true, _) => "up",
                        };
                        let checks = health.as_ref().and_then(|h| h.backend(bid)).map(|c| CheckCounters {
                            passed: c.passed.get(),
                            failed: c.failed.get(),
                            went_down: c.went_down.get(),
                            went_up: c.went_up.get(),
                            rtt_us: c.rtt_us.load(std::sync::atomic::Ordering::Relaxed),
                            durations: c.durations.iter().map(stats::Counter::get).collect(),
                            duration_sum_us: c.duration_sum_us.get(),
                        });
                        let load = self.readings.load(bid);
                        let now_ms = (self.clock.elapsed().as_millis()) as u32;
                        Some(BackendStats {
                            name: backend_name(b.spec.addr, b.spec.port),
                            state: state.into(),
                            weight: b.spec.weight,
                            traffic: traffic(&engines.iter().map(|s| &s.backends[j]).collect::<Vec<_>>()),
                            active: load.active,
                            pending: load.pending,
                            bytes_per_sec: self.readings.rate(bid),
                            handshake_rtt_us: self.readings.handshake(bid, now_ms),
                            checks,
                        })
                    })
                    .collect();
                let name = vip_name(ip_from16(&vip.addr), vip.spec.proto, vip.spec.port);
                let plugin = plugins::vip_report(&slots, id);
                VipStats { name, traffic: traffic(&engines.iter().map(|s| &s.vips[i]).collect::<Vec<_>>()), drops, backends, plugin }
            })
            .collect();
        let drops: BTreeMap<String, u64> = DropReason::ALL.iter().map(|&r| (r.label().to_string(), engines.iter().map(|s| s.drops.get(r)).sum())).collect();
        let workers = self
            .workers
            .iter()
            .map(|(e, w)| WorkerReport {
                polls: w.polls.get(),
                busy_polls: w.busy_polls.get(),
                frames: w.frames.get(),
                batch_sizes: w.batch_sizes.counts().to_vec(),
                handed_out: w.handed_out.get(),
                handed_in: w.handed_in.get(),
                handoff_lost: w.handoff_lost.get(),
                unsteerable: w.unsteerable.get(),
                connections: e.connections.get(),
                connections_capacity: self.table_capacity,
                evictions: e.evictions.get(),
                expirations: e.expirations.get(),
            })
            .collect();
        StatsReport {
            vips,
            drops,
            passed: engines.iter().map(|s| s.passed.get()).sum(),
            // The engine's own check (a scheduler's answer out of range or
            // ineligible) and every plugin fault, which the plugin host
            // contains before the engine sees an answer.
            scheduler_faults: engines.iter().map(|s| s.scheduler_faults.get()).sum::<u64>() + plugins::faults(&slots),
            fragments_followed: engines.iter().map(|s| s.fragments_followed.get()).sum(),
            fragments_placed: engines.iter().map(|s| s.fragments_placed.get()).sum(),
            syns_without_state: engines.iter().map(|s| s.syns_without_state.get()).sum(),
            syn_cookies_sent: engines.iter().map(|s| s.syn_cookies_sent.get()).sum(),
            syn_cookies_accepted: engines.iter().map(|s| s.syn_cookies_accepted.get()).sum(),
            health_checks_late: health.as_ref().map_or(0, |h| h.late.get()),
            workers,
            sockets: self.socket_reports(),
            sync: self.sync_report(),
        }
    }
}
