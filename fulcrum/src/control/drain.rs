//! A drain (`fulcrum drain`, or SIGTERM with `daemon.shutdown_grace`): the
//! VIPs are withdrawn from the routers first, the balancer forwards on
//! while their traffic still arrives (the routers move it to other nodes,
//! which place it on the same backends), and it exits once that traffic
//! has stopped or the grace is over.

use std::time::{Duration, Instant};

use super::api::Draining;

/// No VIP packet for this long after the withdrawal: the routers have
/// moved every flow away. Longer than a router takes to apply an update,
/// shorter than any client's retransmission backoff.
pub const QUIET: Duration = Duration::from_secs(1);

/// The grace of `fulcrum drain` when `daemon.shutdown_grace` is not set.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

pub struct Drain {
    started: Instant,
    grace: Duration,
    /// When the speaker was first told to withdraw.
    withdrawn: Option<Instant>,
    /// The VIPs' packet count last seen, and when it last changed.
    packets: u64,
    changed: Instant,
}

impl Drain {
    /// `withdrawn`: no speaker has anything to withdraw (no `[bgp]`).
    pub fn start(now: Instant, grace: Duration, withdrawn: bool, packets: u64) -> Drain {
        Drain { started: now, grace, withdrawn: withdrawn.then_some(now), packets, changed: now }
    }

    /// The speaker has been told to withdraw every VIP.
    pub fn withdrawn(&mut self, now: Instant) {
        self.withdrawn.get_or_insert(now);
    }

    /// Whether the daemon may exit, given the VIPs' packet count now:
    /// the grace is over, or no packet arrived for `QUIET` since the
    /// withdrawal.
    pub fn done(&mut self, now: Instant, packets: u64) -> bool {
        if packets != self.packets {
            self.packets = packets;
            self.changed = now;
        }
        if now.duration_since(self.started) >= self.grace {
            return true;
        }
        self.withdrawn.is_some_and(|w| now.duration_since(self.changed.max(w)) >= QUIET)
    }

    pub fn report(&self, now: Instant) -> Draining {
        Draining {
            grace_secs: self.grace.as_secs(),
            elapsed_ms: u64::try_from(now.duration_since(self.started).as_millis()).unwrap_or(u64::MAX),
            withdrawn: self.withdrawn.is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn exits_once_traffic_stopped_after_the_withdrawal() {
        let t0 = Instant::now();
        let mut d = Drain::start(t0, Duration::from_secs(30), false, 100);
        // Quiet, but the routers still have the route: wait.
        assert!(!d.done(t0 + 2 * QUIET, 100));
        d.withdrawn(t0 + 2 * QUIET);
        // Traffic goes on arriving for a while after the withdrawal.
        assert!(!d.done(t0 + 2 * QUIET + 500 * MS, 150));
        assert!(!d.done(t0 + 3 * QUIET + 400 * MS, 150));
        assert!(d.done(t0 + 3 * QUIET + 500 * MS, 150));
        assert!(d.report(t0 + QUIET).withdrawn);
    }

    #[test]
    fn the_grace_bounds_a_drain_whose_traffic_never_stops() {
        let t0 = Instant::now();
        let mut d = Drain::start(t0, 5 * QUIET, true, 0);
        for i in 1..5 {
            assert!(!d.done(t0 + i * QUIET, u64::from(i)), "{i}");
        }
        assert!(d.done(t0 + 5 * QUIET, 99));
        // Without a speaker, quiet alone ends it.
        let mut d = Drain::start(t0, Duration::from_secs(30), true, 7);
        assert!(d.done(t0 + QUIET, 7));
    }
}
