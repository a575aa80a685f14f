//! The health thread: when each check runs, what its result means, and
//! the transitions it reports.
//!
//! Every backend's check starts every `interval` (fixed rate; the first
//! ones are spread over one interval so they do not come in bursts) and
//! fails if undecided after `timeout` (shorter than the interval, so one
//! backend has at most one check in flight). One timer heap holds every
//! start and deadline; the thread sleeps in epoll until the next timer or
//! socket event. A result updates the backend's streaks and its VIP's
//! policy decides its state; a change is counted, sent on the transitions
//! channel (the control plane applies it and logs it) and reflected in the
//! pool rows later policies see.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, unbounded};
use fulcrum_config::{HealthCheck, Probe};
use fulcrum_dataplane::health_policy::{BackendHealth, CheckResult, HealthState, Observation, Policy};
use fulcrum_dataplane::sched::{BackendState, Latencies};
use fulcrum_dataplane::stats::Counter;
use fulcrum_dataplane::types::{BackendId, VipId};
use fulcrum_io::epoll::Poller;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

use super::data_path::DataPath;
use super::datagram::{DatagramCheck, Datagrams, DnsCheck};
use super::half_open::HalfOpen;
use super::http::HttpCheck;
use super::icmp::Icmp;
use super::stream::Streams;
use super::tls::{TlsConfigs, server_name};
use super::{Failure, HealthError};

/// Tokens of the shared raw sockets, by family; stream sockets use their
/// slot number.
const ICMP_TOKENS: [u64; 2] = [u64::MAX - 3, u64::MAX - 2];
const SYN_TOKENS: [u64; 2] = [u64::MAX - 1, u64::MAX];
/// How long the thread sleeps at most, so that it sees `stop`.
const MAX_WAIT: Duration = Duration::from_millis(100);
/// A check that starts later than this after its time counts as late.
const LATE: Duration = Duration::from_millis(10);
/// Socket events handled per wake-up.
const EVENTS: usize = 256;

/// One checked backend of a pool.
pub struct Member {
    pub backend: BackendId,
    /// Its Maglev ident (the `id` of its scheduler row).
    pub ident: u64,
    /// The configured weight, which the native policy restores.
    pub weight: u16,
    /// Its state to begin with: up, unless it was down before a reload.
    pub up: bool,
    pub check: HealthCheck,
    /// How the VIP's packets reach it, for a check `through_vip`.
    pub via: Option<DataPath>,
}

/// A VIP's checked backends, in pool order, and its policy.
pub struct Pool {
    pub vip: VipId,
    pub policy: Box<dyn Policy>,
    pub members: Vec<Member>,
}

/// A backend's state changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub vip: VipId,
    pub backend: BackendId,
    pub state: HealthState,
    pub was: HealthState,
    /// Consecutive passes (now up) or failures (now down) that led here.
    pub streak: u32,
    /// Why the last check failed, when it went down.
    pub failure: Option<Failure>,
}

/// Upper bounds (µs) of the buckets of checks' durations: Prometheus's
/// default buckets from 0.5 ms to 10 s.
pub const DURATION_BOUNDS_US: [u64; 13] = [500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 10_000_000];

/// Counters of one backend's checks (the health thread is their only
/// writer).
#[derive(Debug, Default)]
pub struct CheckStats {
    pub passed: Counter,
    pub failed: Counter,
    pub went_up: Counter,
    pub went_down: Counter,
    /// Smoothed latency of passed checks (1/8 of each new sample); 0 until
    /// one passed.
    pub rtt_us: AtomicU32,
    /// Every finished check's duration (passed or failed; a timeout counts
    /// its timeout) by bucket of `DURATION_BOUNDS_US`, not cumulative; the
    /// last bucket holds those above every bound.
    pub durations: [Counter; DURATION_BOUNDS_US.len() + 1],
    pub duration_sum_us: Counter,
}

impl CheckStats {
    fn record(&self, us: u32) {
        let at = DURATION_BOUNDS_US.partition_point(|&b| b < u64::from(us));
        self.durations[at].inc();
        self.duration_sum_us.add(u64::from(us));
    }
}

/// Counters of the health thread, for status output and metrics.
#[derive(Debug)]
pub struct HealthStats {
    /// By backend id; `None` for backends without a check.
    backends: Box<[Option<CheckStats>]>,
    /// Checks that started more than 10 ms after their time.
    pub late: Counter,
    /// The most any check started after its time.
    pub lag_max_us: AtomicU64,
}

impl HealthStats {
    pub fn backend(&self, id: BackendId) -> Option<&CheckStats> {
        self.backends.get(usize::from(id))?.as_ref()
    }
}

/// The running health thread. Dropping it stops the thread.
pub struct HealthMonitor {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    transitions: Receiver<Transition>,
    /// Readable while transitions wait (a byte per transition), so that
    /// a control loop can poll it with its other descriptors.
    wake: UnixStream,
    stats: Arc<HealthStats>,
}

impl HealthMonitor {
    /// Opens the sockets the checks need (raw ones and the nftables rule
    /// for half-open checks, on this thread, so that failures are reported
    /// here) and starts the thread.
    /// Each passed check's smoothed time also goes to `latencies`, where
    /// the workers hand it to schedulers.
    pub fn start(pools: Vec<Pool>, latencies: Arc<Latencies>) -> Result<HealthMonitor, HealthError> {
        let (tx, transitions) = unbounded();
        let (wake, notify) = UnixStream::pair().map_err(HealthError::system("health checks: socket pair"))?;
        for s in [&wake, &notify] {
            s.set_nonblocking(true).map_err(HealthError::system("health checks: socket pair"))?;
        }
        let runner = Runner::new(pools, tx, notify, latencies)?;
        let (stop, stats) = (Arc::new(AtomicBool::new(false)), Arc::clone(&runner.stats));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("fulcrum-health".into())
            .spawn(move || runner.run(&flag))
            .map_err(HealthError::system("starting the health thread"))?;
        Ok(HealthMonitor { stop, thread: Some(thread), transitions, wake, stats })
    }

    /// Transitions in the order they happened.
    pub fn transitions(&self) -> &Receiver<Transition> {
        &self.transitions
    }

    /// Readable when transitions are waiting; `take_transitions` clears it.
    pub fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// The transitions waiting, without blocking.
    pub fn take_transitions(&self) -> Vec<Transition> {
        // Cleared first: a transition sent meanwhile leaves its byte.
        let mut buf = [0u8; 256];
        while matches!((&self.wake).read(&mut buf), Ok(n) if n > 0) {}
        self.transitions.try_iter().collect()
    }

    pub fn stats(&self) -> &Arc<HealthStats> {
        &self.stats
    }
}

impl Drop for HealthMonitor {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a slot's check sends, prepared once.
enum Prepared {
    /// To the backend, or to the VIP through the backend's data path.
    Icmp(IpAddr, Option<Arc<DataPath>>),
    Connect(SocketAddr),
    /// To the backend, or to the VIP through the backend's data path.
    HalfOpen(SocketAddr, Option<Arc<DataPath>>),
    Http(SocketAddr, HttpCheck),
    Https(SocketAddr, HttpCheck, Arc<ClientConfig>, ServerName<'static>),
    Datagram(SocketAddr, DatagramCheck),
}

impl Prepared {
    fn new(check: &HealthCheck, via: Option<DataPath>, tls: &mut TlsConfigs) -> Result<Prepared, HealthError> {
        let to = |port| SocketAddr::new(check.address, port);
        Ok(match &check.probe {
            Probe::Icmp => match via {
                Some(path) => Prepared::Icmp(path.vip, Some(Arc::new(path))),
                None => Prepared::Icmp(check.address, None),
            },
            Probe::TcpConnect { port } => Prepared::Connect(to(*port)),
            Probe::TcpHalfOpen { port } => match via {
                Some(path) => Prepared::HalfOpen(SocketAddr::new(path.vip, *port), Some(Arc::new(path))),
                None => Prepared::HalfOpen(to(*port), None),
            },
            Probe::Http(h) => {
                let http = HttpCheck::new(to(h.port), &h.path, h.status, h.content.as_deref(), h.host.as_deref());
                match &h.tls {
                    None => Prepared::Http(to(h.port), http),
                    Some(t) => Prepared::Https(to(h.port), http, tls.get(&t.verify)?, server_name(t.server_name.as_deref(), check.address)?),
                }
            }
            Probe::Udp { port, payload, expect } => {
                Prepared::Datagram(to(*port), DatagramCheck::Udp { payload: payload[..].into(), expect: expect.as_deref().map(Into::into) })
            }
            Probe::Dns { port, name, record, expect_address } => {
                Prepared::Datagram(to(*port), DatagramCheck::Dns(DnsCheck::new(name, *record, *expect_address)?))
            }
        })
    }
}

/// One checked backend.
struct Slot {
    pool: usize,
    /// Row in the pool.
    index: usize,
    backend: BackendId,
    weight: u16,
    interval: Duration,
    timeout: Duration,
    rise: u8,
    fall: u8,
    probe: Prepared,
    health: BackendHealth,
    /// When the next check is due.
    due: Instant,
    /// The check in flight: its number and start.
    attempt: u32,
    started: Option<Instant>,
    last_failure: Option<Failure>,
}

struct PoolState {
    vip: VipId,
    policy: Box<dyn Policy>,
    rows: Vec<BackendState>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Start,
    /// The check with this attempt number runs out of time.
    Deadline(u32),
}

struct Runner {
    slots: Vec<Slot>,
    pools: Vec<PoolState>,
    poller: Poller,
    streams: Streams,
    datagrams: Datagrams,
    icmp: Option<Icmp>,
    half_open: Option<HalfOpen>,
    timers: BinaryHeap<Reverse<(Instant, usize, Timer)>>,
    transitions: Sender<Transition>,
    notify: UnixStream,
    stats: Arc<HealthStats>,
    latencies: Arc<Latencies>,
    /// Scratch: ready tokens, finished checks.
    ready: Vec<u64>,
    done: Vec<(usize, Result<(), Failure>)>,
}

impl Runner {
    fn new(pools: Vec<Pool>, transitions: Sender<Transition>, notify: UnixStream, latencies: Arc<Latencies>) -> Result<Runner, HealthError> {
        let now = Instant::now();
        let n: usize = pools.iter().map(|p| p.members.len()).sum();
        if n > usize::from(u16::MAX) + 1 {
            return Err(HealthError::TooManyBackends { count: n, max: usize::from(u16::MAX) + 1 });
        }
        let (mut slots, mut states) = (Vec::with_capacity(n), Vec::with_capacity(pools.len()));
        let mut tls = TlsConfigs::new(n);
        for (p, pool) in pools.into_iter().enumerate() {
            let mut rows = Vec::with_capacity(pool.members.len());
            for (index, m) in pool.members.into_iter().enumerate() {
                let state = HealthState { up: m.up, weight: m.weight };
                rows.push(BackendState { id: m.ident, weight: u32::from(m.weight), up: m.up, ..BackendState::default() });
                // Spread the first checks over one interval.
                let due = now + m.check.interval.mul_f64(slots.len() as f64 / n as f64);
                let c = &m.check;
                slots.push(Slot {
                    pool: p,
                    index,
                    backend: m.backend,
                    weight: m.weight,
                    interval: c.interval,
                    timeout: c.timeout,
                    rise: c.rise,
                    fall: c.fall,
                    probe: Prepared::new(c, m.via, &mut tls)?,
                    health: BackendHealth::new(state),
                    due,
                    attempt: 0,
                    started: None,
                    last_failure: None,
                });
            }
            states.push(PoolState { vip: pool.vip, policy: pool.policy, rows });
        }
        let families = |f: fn(&Prepared) -> Option<IpAddr>| {
            let mut fam = [false; 2];
            for a in slots.iter().filter_map(|s| f(&s.probe)) {
                fam[usize::from(a.is_ipv6())] = true;
            }
            fam
        };
        let icmp_families = families(|p| if let Prepared::Icmp(a, _) = p { Some(*a) } else { None });
        let syn_families = families(|p| if let Prepared::HalfOpen(a, _) = p { Some(a.ip()) } else { None });
        let poller = Poller::new(EVENTS).map_err(HealthError::system("health checks: epoll"))?;
        let icmp = match icmp_families {
            [false, false] => None,
            f => Some(Icmp::open(f, n, &poller, ICMP_TOKENS).map_err(HealthError::system("ICMP checks: raw socket"))?),
        };
        let half_open = match syn_families {
            [false, false] => None,
            f => Some(HalfOpen::open(f, n, &poller, SYN_TOKENS)?),
        };
        let mut backends: Vec<Option<CheckStats>> = Vec::new();
        for s in &slots {
            let id = usize::from(s.backend);
            backends.resize_with(backends.len().max(id + 1), || None);
            backends[id] = Some(CheckStats::default());
        }
        let stats = Arc::new(HealthStats { backends: backends.into(), late: Counter::default(), lag_max_us: AtomicU64::new(0) });
        let timers = slots.iter().enumerate().map(|(i, s)| Reverse((s.due, i, Timer::Start))).collect();
        Ok(Runner {
            streams: Streams::new(n),
            datagrams: Datagrams::new(n),
            slots,
            pools: states,
            poller,
            icmp,
            half_open,
            timers,
            transitions,
            notify,
            stats,
            latencies,
            ready: Vec::with_capacity(EVENTS),
            done: Vec::new(),
        })
    }

    fn run(mut self, stop: &AtomicBool) {
        while !stop.load(Relaxed) {
            let now = Instant::now();
            while let Some(&Reverse((at, slot, timer))) = self.timers.peek()
                && at <= now
            {
                self.timers.pop();
                match timer {
                    Timer::Start => self.start(slot, now),
                    Timer::Deadline(attempt) if self.slots[slot].attempt == attempt => self.time_out(slot),
                    Timer::Deadline(_) => {}
                }
            }
            let next = self.timers.peek().map_or(MAX_WAIT, |Reverse((at, _, _))| at.saturating_duration_since(Instant::now()));
            match self.poller.wait(next.min(MAX_WAIT)) {
                Ok(ready) => self.ready.extend(ready),
                Err(e) => {
                    tracing::error!("health checks: epoll_wait: {e}");
                    std::thread::sleep(MAX_WAIT);
                }
            }
            let mut ready = std::mem::take(&mut self.ready);
            for token in ready.drain(..) {
                self.dispatch(token);
            }
            self.ready = ready;
        }
    }

    /// Starts `slot`'s check and schedules its deadline and next start.
    fn start(&mut self, slot: usize, now: Instant) {
        if self.slots[slot].started.is_some() {
            // Still in flight a whole interval later (the thread fell far
            // behind): that one failed.
            self.time_out(slot);
        }
        let s = &mut self.slots[slot];
        let lag = now.saturating_duration_since(s.due);
        if lag > LATE {
            self.stats.late.inc();
        }
        self.stats.lag_max_us.fetch_max(lag.as_micros() as u64, Relaxed);
        s.attempt = s.attempt.wrapping_add(1);
        s.started = Some(now);
        // Fixed rate; if a whole interval behind, from now on.
        s.due += s.interval;
        if s.due <= now {
            s.due = now + s.interval;
        }
        self.timers.push(Reverse((s.due, slot, Timer::Start)));
        self.timers.push(Reverse((now + s.timeout, slot, Timer::Deadline(s.attempt))));
        let started = match &s.probe {
            Prepared::Icmp(to, via) => self.icmp.as_mut().map_or(Err(Failure::Os(libc::EAFNOSUPPORT)), |c| c.start(slot, *to, via.as_ref())),
            Prepared::HalfOpen(to, via) => self.half_open.as_mut().map_or(Err(Failure::Os(libc::EAFNOSUPPORT)), |c| c.start(slot, *to, via.as_ref())),
            Prepared::Connect(to) | Prepared::Http(to, _) => self.streams.start(slot, *to, None, &self.poller),
            Prepared::Https(to, _, config, name) => match ClientConnection::new(Arc::clone(config), name.clone()) {
                Ok(tls) => self.streams.start(slot, *to, Some(tls), &self.poller),
                Err(_) => Err(Failure::Tls),
            },
            // The attempt number tells a DNS answer from a late one.
            Prepared::Datagram(to, check) => self.datagrams.start(slot, *to, check, s.attempt as u16, &self.poller),
        };
        if let Err(f) = started {
            self.finish(slot, Err(f));
        }
    }

    fn time_out(&mut self, slot: usize) {
        if self.slots[slot].started.is_none() {
            return;
        }
        match self.slots[slot].probe {
            Prepared::Icmp(..) => self.icmp.iter_mut().for_each(|c| c.abandon(slot)),
            Prepared::HalfOpen(..) => self.half_open.iter_mut().for_each(|c| c.abandon(slot)),
            Prepared::Connect(_) | Prepared::Http(..) | Prepared::Https(..) => self.streams.abandon(slot),
            Prepared::Datagram(..) => self.datagrams.abandon(slot),
        }
        self.finish(slot, Err(Failure::Timeout));
    }

    fn dispatch(&mut self, token: u64) {
        if let Some(slot) = usize::try_from(token).ok().filter(|&t| t < self.slots.len()) {
            let result = match &self.slots[slot].probe {
                Prepared::Datagram(_, check) => self.datagrams.ready(slot, check),
                Prepared::Http(_, check) | Prepared::Https(_, check, ..) => self.streams.ready(slot, Some(check), &self.poller),
                _ => self.streams.ready(slot, None, &self.poller),
            };
            if let Some(result) = result {
                self.finish(slot, result);
            }
            return;
        }
        let mut done = std::mem::take(&mut self.done);
        if let Some(family) = ICMP_TOKENS.iter().position(|&t| t == token)
            && let Some(c) = self.icmp.as_mut()
        {
            c.ready(family == 1, &mut done);
        } else if let Some(family) = SYN_TOKENS.iter().position(|&t| t == token)
            && let Some(c) = self.half_open.as_mut()
        {
            c.ready(family == 1, &mut done);
        }
        for (slot, result) in done.drain(..) {
            self.finish(slot, result);
        }
        self.done = done;
    }

    /// A check of `slot` ended: records it and applies the policy.
    fn finish(&mut self, slot: usize, result: Result<(), Failure>) {
        let s = &mut self.slots[slot];
        let Some(started) = s.started.take() else { return };
        let check = CheckResult { ok: result.is_ok(), latency_us: u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX) };
        s.health.count(check);
        let Some(stats) = self.stats.backend(s.backend) else { return };
        stats.record(check.latency_us);
        let pool = &mut self.pools[s.pool];
        match result {
            Ok(()) => {
                stats.passed.inc();
                let rtt = &mut pool.rows[s.index].rtt_us;
                *rtt = if *rtt == 0 { check.latency_us.max(1) } else { ((u64::from(*rtt) * 7 + u64::from(check.latency_us)) / 8) as u32 };
                stats.rtt_us.store(*rtt, Relaxed);
                self.latencies.set(s.backend, *rtt);
            }
            Err(f) => {
                stats.failed.inc();
                s.last_failure = Some(f);
            }
        }
        let seen = Observation { index: s.index, check, health: s.health, configured_weight: s.weight, rise: s.rise, fall: s.fall };
        let state = pool.policy.decide(&seen, &pool.rows);
        let was = s.health.state;
        if state == was {
            return;
        }
        s.health.state = state;
        let row = &mut pool.rows[s.index];
        (row.up, row.weight) = (state.up, u32::from(state.weight));
        match (was.up, state.up) {
            (false, true) => stats.went_up.inc(),
            (true, false) => stats.went_down.inc(),
            _ => {}
        }
        let streak = if state.up { s.health.successes } else { s.health.failures };
        let failure = if state.up { None } else { s.last_failure };
        // The receiver only goes with the monitor; a full socket buffer
        // means the control loop has bytes enough to wake up.
        let _ = self.transitions.send(Transition { vip: pool.vip, backend: s.backend, state, was, streak, failure });
        let _ = (&self.notify).write(&[1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_the_first_bucket_that_holds_them() {
        let s = CheckStats::default();
        for us in [0, 500, 501, 9_999, 10_000_000, 10_000_001, u32::MAX] {
            s.record(us);
        }
        let counts: Vec<u64> = s.durations.iter().map(Counter::get).collect();
        assert_eq!(counts, [2, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(s.duration_sum_us.get(), 500 + 501 + 9_999 + 10_000_000 + 10_000_001 + u64::from(u32::MAX));
    }
}
