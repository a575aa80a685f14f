//! The sink: the XDP count-and-drop program (`SinkProgram`, bpf/sink.c) on
//! every backend of a lab, read as one, with latency percentiles from an
//! hdrhistogram.

use fulcrum_io::XdpMode;
use fulcrum_tests::xdp::{SinkCounts, SinkProgram};
use fulcrum_tests::{Lab, LabError, in_netns};
use hdrhistogram::Histogram;

pub struct Sinks {
    progs: Vec<SinkProgram>,
}

impl Sinks {
    /// Attaches a sink to every backend's interface.
    pub fn attach(lab: &Lab) -> Result<Sinks, LabError> {
        let progs = lab
            .backends
            .iter()
            .map(|b| {
                in_netns(&b.ns, || SinkProgram::attach(&b.iface().name, XdpMode::Auto))
                    .map_err(|e| LabError(format!("entering {}: {e}", b.ns)))?
                    .map_err(|e| LabError(format!("sink on {}: {e}", b.name)))
            })
            .collect::<Result<_, _>>()?;
        Ok(Sinks { progs })
    }

    /// Everything counted so far, all backends together.
    pub fn counts(&self) -> Result<SinkCounts, LabError> {
        let mut all = SinkCounts::default();
        for p in &self.progs {
            all.add(&p.counts().map_err(|e| LabError(format!("reading a sink: {e}")))?);
        }
        Ok(all)
    }
}

/// Latency percentiles in µs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    pub const LABELS: [&str; 5] = ["p50", "p90", "p99", "p99.9", "max"];

    pub fn values(&self) -> [f64; 5] {
        [self.p50, self.p90, self.p99, self.p999, self.max]
    }
}

/// The sink's buckets as an hdrhistogram of ns: each bucket's frames are
/// recorded at its middle (the sink's resolution is 3%).
pub fn histogram(counts: &SinkCounts) -> Histogram<u64> {
    let mut h = Histogram::new_with_bounds(1, 1 << 33, 3).expect("static bounds");
    for (i, &n) in counts.latency.iter().enumerate().filter(|(_, n)| **n > 0) {
        let (low, width) = SinkProgram::bucket_ns(i as u32);
        h.saturating_record_n(low + width / 2, n);
    }
    h
}

pub fn latency(counts: &SinkCounts) -> Latency {
    let h = histogram(counts);
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Latency { p50: us(0.5), p90: us(0.9), p99: us(0.99), p999: us(0.999), max: h.max() as f64 / 1000.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_tile_the_range_and_percentiles_follow_them() {
        let mut end = 0;
        for i in 0..(32 + 27 * 32) {
            let (low, width) = SinkProgram::bucket_ns(i);
            assert_eq!(low, end, "bucket {i} starts where {} ends", i.saturating_sub(1));
            assert!(width * 32 <= low.max(32), "3% resolution at bucket {i}");
            end = low + width;
        }
        assert_eq!(end, 1 << 32);

        // 99 frames at 10 µs and one at 1 ms.
        let buckets = 32 + 27 * 32;
        let mut counts = SinkCounts { latency: vec![0; buckets], ..SinkCounts::default() };
        let bucket = |ns: u64| {
            (0..buckets).find(|&i| {
                let (low, w) = SinkProgram::bucket_ns(i as u32);
                (low..low + w).contains(&ns)
            })
        };
        counts.latency[bucket(10_000).unwrap()] = 99;
        counts.latency[bucket(1_000_000).unwrap()] = 1;
        let l = latency(&counts);
        assert!((l.p50 - 10.0).abs() < 0.4 && (l.p99 - 10.0).abs() < 0.4, "{l:?}");
        assert!((l.max - 1000.0).abs() < 35.0, "{l:?}");
    }
}
