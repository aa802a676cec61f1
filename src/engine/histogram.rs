//! A fixed-bucket latency histogram kept by the core (no clock: every
//! observation is a duration computed from inputs). It owns the bucket
//! bounds and the counts; the shell only prints them (Prometheus `_bucket`,
//! `_sum`, `_count`). It never allocates after construction.

use crate::time::Duration;

/// Upper bounds of the buckets, in nanoseconds: 1 ms … 10 s (then +Inf).
pub const BOUNDS_NS: [u64; 13] = [
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Histogram {
    /// Observations at or below each bound (not cumulative); the last slot
    /// counts those above every bound.
    pub counts: [u64; BOUNDS_NS.len() + 1],
    pub sum_ns: u64,
    pub count: u64,
}

impl Histogram {
    pub fn observe(&mut self, d: Duration) {
        let ns = d.as_nanos();
        let slot = BOUNDS_NS.iter().position(|b| ns <= *b).unwrap_or(BOUNDS_NS.len());
        self.counts[slot] += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
        self.count += 1;
    }

    /// `(upper bound in seconds, cumulative count)` per bucket, `+Inf` last.
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let bounds = BOUNDS_NS.iter().map(|b| *b as f64 / 1e9).chain(std::iter::once(f64::INFINITY));
        bounds.zip(self.counts.iter().scan(0u64, |acc, n| {
            *acc += n;
            Some(*acc)
        }))
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_ns as f64 / 1e9
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_end_with_inf() {
        let mut h = Histogram::default();
        for ms in [0, 1, 2, 30, 20_000] {
            h.observe(Duration::from_millis(ms));
        }
        let c: Vec<(f64, u64)> = h.cumulative().collect();
        assert_eq!(c[0], (0.001, 2));
        assert_eq!(c[1], (0.0025, 3));
        assert_eq!(c[5], (0.05, 4));
        assert_eq!(*c.last().unwrap(), (f64::INFINITY, 5));
        assert_eq!((h.count, h.sum_ns), (5, 20_033_000_000));
    }
}
