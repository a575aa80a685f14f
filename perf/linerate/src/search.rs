//! RFC 2544 section 26.1 throughput: a binary search for the highest rate a
//! device forwards with at most a given loss. Pure logic, so it is tested
//! on a simulated device; the harness feeds it real trials.
//!
//! A rate that fails is tried once more before the search moves below it
//! (as FD.io's MLRsearch repeats trials): on shared machines another
//! program can stall the device for tens of milliseconds, and one such
//! stall should not decide the result. A device that really loses frames
//! at a rate fails both trials.

/// One trial: frames offered at a rate for a while, and what arrived.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Trial {
    /// The rate asked of the generator, frames per second.
    pub offered: f64,
    /// Frames the generator actually sent.
    pub sent: u64,
    pub received: u64,
    pub secs: f64,
}

impl Trial {
    /// Lost frames as a share of those sent (0 when none were sent).
    pub fn loss(&self) -> f64 {
        if self.sent == 0 { 0.0 } else { self.sent.saturating_sub(self.received) as f64 / self.sent as f64 }
    }

    pub fn sent_rate(&self) -> f64 {
        self.sent as f64 / self.secs.max(f64::MIN_POSITIVE)
    }

    pub fn received_rate(&self) -> f64 {
        self.received as f64 / self.secs.max(f64::MIN_POSITIVE)
    }
}

/// The search for one loss tolerance. Ask `next` for the rate of the next
/// trial and `record` its outcome until `next` returns None.
#[derive(Clone, Debug)]
pub struct Search {
    tolerance: f64,
    max: f64,
    budget: u32,
    trials: u32,
    /// Highest offered rate that passed, and the best passing trial.
    pass: f64,
    best: Option<Trial>,
    /// Lowest offered rate that failed.
    fail: f64,
    /// A rate that failed once and is tried again.
    retry: Option<f64>,
}

/// Stop once the bracket is this narrow, relative to the maximum.
const RESOLUTION: f64 = 0.01;

impl Search {
    /// Searches 0..=`max` frames per second, passing trials that lose at
    /// most `tolerance` (0.0, or 0.001 for 0.1%), at `trials` rates at
    /// most (a failing rate takes two trials).
    pub fn new(max: f64, tolerance: f64, trials: u32) -> Search {
        Search { tolerance, max, budget: trials, trials: 0, pass: 0.0, best: None, fail: max, retry: None }
    }

    /// The rate of the next trial: the maximum first (RFC 2544 starts at
    /// the medium's maximum), then halfway between the highest pass and
    /// the lowest failure.
    pub fn next(&self) -> Option<f64> {
        if self.retry.is_some() {
            self.retry
        } else if self.trials == self.budget || self.pass >= self.max || self.fail - self.pass <= RESOLUTION * self.max {
            None
        } else if self.trials == 0 {
            Some(self.max)
        } else {
            Some((self.pass + self.fail) / 2.0)
        }
    }

    pub fn passes(&self, t: &Trial) -> bool {
        t.sent > 0 && t.loss() <= self.tolerance
    }

    pub fn record(&mut self, t: Trial) {
        if !self.passes(&t) && self.retry.is_none() {
            self.retry = Some(t.offered);
            return;
        }
        self.retry = None;
        self.trials += 1;
        if self.passes(&t) {
            // A pass at the top settles it: the device kept up with all the
            // generator could send.
            self.pass = if t.offered >= self.max { self.max } else { t.offered };
            if self.best.is_none_or(|b| t.received_rate() > b.received_rate()) {
                self.best = Some(t);
            }
        } else {
            self.fail = t.offered;
        }
    }

    /// The best passing trial, if any passed.
    pub fn best(&self) -> Option<Trial> {
        self.best
    }

    /// Whether the device passed at the top of the range: the result is
    /// then the generator's limit, not the device's.
    pub fn at_max(&self) -> bool {
        self.pass >= self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device that forwards up to `capacity` frames per second and
    /// loses a small extra share `leak` of frames above `knee`.
    fn device(capacity: f64, knee: f64, leak: f64) -> impl Fn(f64) -> Trial {
        move |rate| {
            let sent = rate as u64;
            let mut received = (rate.min(capacity)) as u64;
            if rate > knee {
                received -= (received as f64 * leak) as u64;
            }
            Trial { offered: rate, sent, received, secs: 1.0 }
        }
    }

    fn run(search: &mut Search, dev: &impl Fn(f64) -> Trial) -> u32 {
        let mut n = 0;
        while let Some(rate) = search.next() {
            search.record(dev(rate));
            n += 1;
        }
        n
    }

    #[test]
    fn finds_the_zero_loss_rate_within_the_resolution() {
        let dev = device(412_345.0, 1e12, 0.0);
        let mut s = Search::new(1_000_000.0, 0.0, 20);
        let trials = run(&mut s, &dev);
        let best = s.best().unwrap().received_rate();
        assert!(best <= 412_345.0 && best > 412_345.0 - 10_000.0, "{best}");
        assert!(trials <= 18, "{trials} trials: at most 9 rates, a failing one tried twice");
        assert!(!s.at_max());
    }

    #[test]
    fn a_tolerance_accepts_small_loss_that_zero_loss_refuses() {
        // Above 300k the device loses 0.05%: within 0.1%, not within 0.
        let dev = device(500_000.0, 300_000.0, 0.0005);
        let (mut zero, mut tenth) = (Search::new(1e6, 0.0, 20), Search::new(1e6, 0.001, 20));
        run(&mut zero, &dev);
        run(&mut tenth, &dev);
        let (z, t) = (zero.best().unwrap().offered, tenth.best().unwrap().offered);
        assert!(z <= 300_000.0 && z > 290_000.0, "zero loss {z}");
        assert!(t <= 500_000.0 && t > 490_000.0, "0.1% loss {t}");
    }

    #[test]
    fn one_stalled_trial_does_not_decide_but_two_do() {
        // Every other trial is hit by a stall that loses 1% of the frames.
        let dev = device(400_000.0, 1e12, 0.0);
        let stalls = std::cell::Cell::new(0u32);
        let flaky = |rate: f64| {
            let mut t = dev(rate);
            stalls.set(stalls.get() + 1);
            if stalls.get() % 2 == 1 {
                t.received -= t.received / 100;
            }
            t
        };
        let mut s = Search::new(1_000_000.0, 0.0, 20);
        run(&mut s, &flaky);
        let best = s.best().unwrap().offered;
        assert!(best <= 400_000.0 && best > 390_000.0, "{best}");
        // A device that loses at every trial fails at once after the retry.
        let mut s = Search::new(1_000_000.0, 0.0, 3);
        assert_eq!(run(&mut s, &device(0.0, 1e12, 0.0)), 6, "3 rates, each tried twice");
    }

    #[test]
    fn a_device_faster_than_the_range_passes_at_once() {
        let mut s = Search::new(1e6, 0.0, 10);
        assert_eq!(run(&mut s, &device(5e6, 1e12, 0.0)), 1);
        assert!(s.at_max());
        assert_eq!(s.best().unwrap().offered, 1e6);
    }

    #[test]
    fn the_trial_budget_bounds_the_search_and_nothing_passing_is_none() {
        let mut s = Search::new(1e6, 0.0, 4);
        assert_eq!(run(&mut s, &device(0.0, 1e12, 0.0)), 8);
        assert!(s.best().is_none());
        // No frame sent is no evidence of forwarding.
        assert!(!s.passes(&Trial { offered: 1.0, sent: 0, received: 0, secs: 1.0 }));
    }
}
