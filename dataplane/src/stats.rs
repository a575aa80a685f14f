//! Per-worker counters. Each worker is the only writer of its own `Stats`;
//! the control plane reads them from another thread and sums workers.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::packet::DropReason;

/// A counter with one writer: a relaxed load and store, no locked
/// read-modify-write on the packet path, yet safe to read concurrently.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A level with one writer (a size, not a count of events), set rather
/// than added to; read like a `Counter`.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    #[inline]
    pub fn set(&self, n: u64) {
        self.0.store(n, Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A histogram with one writer and power-of-two buckets: bucket `i`
/// counts values in `(2^(i-1), 2^i]` (bucket 0: 0 and 1), the last one
/// every value above too. Coarse, but one `leading_zeros` and one store.
#[derive(Debug)]
pub struct Log2Histogram<const N: usize>([Counter; N]);

impl<const N: usize> Default for Log2Histogram<N> {
    fn default() -> Self {
        Log2Histogram(std::array::from_fn(|_| Counter::default()))
    }
}

impl<const N: usize> Log2Histogram<N> {
    #[inline]
    pub fn record(&self, value: u64) {
        let bucket = (u64::BITS - value.saturating_sub(1).leading_zeros()) as usize;
        self.0[bucket.min(N - 1)].inc();
    }

    /// Counts per bucket, not cumulative.
    pub fn counts(&self) -> [u64; N] {
        self.0.each_ref().map(Counter::get)
    }

    /// Adds `other`'s counts to this one's (its writer's job).
    pub fn merge(&self, other: &Self) {
        for (to, from) in self.0.iter().zip(&other.0) {
            to.add(from.get());
        }
    }
}

/// The `q` quantile (0..=1) of a [`Log2Histogram`]'s `counts`, placed
/// linearly within its bucket as Prometheus' `histogram_quantile` does;
/// `None` with nothing counted. The last bucket's values count as its
/// lower bound's double.
pub fn log2_quantile(counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    for (i, &n) in counts.iter().enumerate() {
        if n > 0 && (below + n) as f64 >= rank {
            let (low, high) = if i == 0 { (0.0, 1.0) } else { ((1u64 << (i - 1)) as f64, (1u64 << i) as f64) };
            return Some(low + (high - low) * ((rank - below as f64) / n as f64).max(0.0));
        }
        below += n;
    }
    None
}

/// Traffic of one VIP or one backend.
#[derive(Debug, Default)]
pub struct Traffic {
    pub packets: Counter,
    pub bytes: Counter,
    pub new_flows: Counter,
    /// Established flows ended with a RST to the client because their
    /// backend went down (VIP `on_down = "reset"`).
    pub resets: Counter,
    /// Sticky clients moved to another backend because theirs was down or
    /// gone (session persistence); on a backend, the clients it lost.
    pub moved_clients: Counter,
}

impl Traffic {
    #[inline]
    pub fn packet(&self, bytes: usize) {
        self.packets.inc();
        self.bytes.add(bytes as u64);
    }
}

/// One counter per drop reason.
#[derive(Debug)]
pub struct Drops([Counter; DropReason::COUNT]);

impl Default for Drops {
    fn default() -> Self {
        Drops(std::array::from_fn(|_| Counter::default()))
    }
}

impl Drops {
    #[inline]
    pub fn count(&self, reason: DropReason) {
        self.0[reason as usize].inc();
    }

    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason as usize].get()
    }

    pub fn total(&self) -> u64 {
        self.0.iter().map(Counter::get).sum()
    }
}

/// Everything one worker counts. Sized once for the most VIP and backend
/// ids the engine accepts, so a reload never reallocates under a reader.
#[derive(Debug)]
pub struct Stats {
    pub vips: Box<[Traffic]>,
    pub vip_drops: Box<[Drops]>,
    /// Return traffic (backend to client) counts here too, under the
    /// backend that sent it.
    pub backends: Box<[Traffic]>,
    /// Every drop, whether or not the frame could be tied to a VIP.
    pub drops: Drops,
    /// Frames handed to the kernel.
    pub passed: Counter,
    /// Plugin schedulers that failed a pick (the flow fell back to Maglev).
    pub scheduler_faults: Counter,
    /// IP fragments after the first, sent where their first went (those
    /// whose first was not seen are drops, `fragment`).
    pub fragments_followed: Counter,
    /// IP fragments after the first that came before it, placed by their
    /// addresses alone (the first then follows them).
    pub fragments_placed: Counter,
    /// SYNs of dsr or tunnel VIPs at their half-open cap, forwarded by
    /// Maglev without an entry.
    pub syns_without_state: Counter,
    /// SYNs of nat VIPs answered with a SYN cookie, and ACKs that returned
    /// a valid one and opened a flow (those that did not are `no_state`
    /// drops).
    pub syn_cookies_sent: Counter,
    pub syn_cookies_accepted: Counter,
    /// The connection table, copied from it once per batch (the table
    /// itself is the worker's alone): live entries, and entries removed
    /// to make room or because they timed out (peers included).
    pub connections: Gauge,
    pub evictions: Gauge,
    pub expirations: Gauge,
}

impl Stats {
    pub fn new(max_vips: usize, max_backends: usize) -> Self {
        let many = |n: usize| (0..n).map(|_| Traffic::default()).collect();
        Stats {
            vips: many(max_vips),
            vip_drops: (0..max_vips).map(|_| Drops::default()).collect(),
            backends: many(max_backends),
            drops: Drops::default(),
            passed: Counter::default(),
            scheduler_faults: Counter::default(),
            fragments_followed: Counter::default(),
            fragments_placed: Counter::default(),
            syns_without_state: Counter::default(),
            syn_cookies_sent: Counter::default(),
            syn_cookies_accepted: Counter::default(),
            connections: Gauge::default(),
            evictions: Gauge::default(),
            expirations: Gauge::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log2_buckets_hold_the_values_up_to_their_power_of_two() {
        let h = Log2Histogram::<5>::default();
        for v in [0, 1, 2, 3, 4, 5, 8, 9, 16, 17, 1000] {
            h.record(v);
        }
        // 0,1 | 2 | 3,4 | 5,8 | 9,16,17,1000 (the last holds the rest)
        assert_eq!(h.counts(), [2, 1, 2, 2, 4]);
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        assert_eq!(log2_quantile(&[0, 0, 0], 0.99), None);
        // 100 values in (512, 1024]: the median lies halfway.
        let mut counts = [0u64; 12];
        counts[10] = 100;
        assert_eq!(log2_quantile(&counts, 0.5), Some(768.0));
        assert_eq!(log2_quantile(&counts, 1.0), Some(1024.0));
        // 99 small values and one large: p99 is still small, p100 is not.
        counts[10] = 0;
        counts[3] = 99;
        counts[11] = 1;
        assert_eq!(log2_quantile(&counts, 0.99), Some(8.0));
        assert_eq!(log2_quantile(&counts, 1.0), Some(2048.0));
    }
}
