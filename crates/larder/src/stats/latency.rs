//! Response times of one route: a lock-free histogram that answers quantiles.
//!
//! Times are counted in microseconds into log-linear buckets (four per power of two, as HDR
//! histograms do with two significant bits): recording is one `leading_zeros` and three
//! relaxed atomic additions, with no lock and no allocation, so the hit path pays a few
//! nanoseconds. A quantile is read as its bucket's midpoint, within 12.5% of the true value.
//! `hdrhistogram` records through `&mut` (a lock or per-thread recorders would be needed), and
//! the `metrics` recorders keep every sample until they are drained, so neither fits a counter
//! that every request of a route touches and a snapshot reads at any time.

use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use serde::Serialize;

/// Sub-buckets per power of two (two significant bits).
const SUB: u32 = 4;
/// Octaves of buckets: times up to 2^37 µs (about 38 hours); longer ones fall in the last bucket.
const OCTAVES: u32 = 36;
/// Buckets in all.
const BUCKETS: usize = (OCTAVES * SUB) as usize;

/// The bucket of `micros`: exact below 4 µs, then four per power of two.
fn bucket(micros: u64) -> usize {
    if micros < u64::from(SUB) {
        return micros as usize;
    }
    let msb = 63 - micros.leading_zeros();
    let sub = (micros >> (msb - 2)) & u64::from(SUB - 1);
    (((msb - 1) * SUB) as usize + sub as usize).min(BUCKETS - 1)
}

/// The smallest value of bucket `i`, and the width of the bucket.
fn bounds(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < u64::from(SUB) {
        return (i, 1);
    }
    let msb = i / u64::from(SUB) + 1;
    let sub = i % u64::from(SUB);
    let width = 1u64 << (msb - 2);
    ((1u64 << msb) + sub * width, width)
}

/// Response times of one route and outcome.
pub(crate) struct Latency {
    buckets: Box<[AtomicU64; BUCKETS]>,
    count: AtomicU64,
    sum_micros: AtomicU64,
    max_micros: AtomicU64,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            buckets: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
            max_micros: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Latency")
            .field("count", &self.count.load(Relaxed))
            .finish_non_exhaustive()
    }
}

impl Latency {
    /// Counts one response that took `took`.
    pub(crate) fn record(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket(micros)].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(micros, Relaxed);
        self.max_micros.fetch_max(micros, Relaxed);
    }

    /// Starts again from nothing.
    pub(crate) fn reset(&self) {
        for b in self.buckets.iter() {
            b.store(0, Relaxed);
        }
        self.count.store(0, Relaxed);
        self.sum_micros.store(0, Relaxed);
        self.max_micros.store(0, Relaxed);
    }

    /// Adds this histogram's counts to `into` (the total of several routes).
    pub(crate) fn add_to(&self, into: &mut Counts) {
        for (sum, b) in into.buckets.iter_mut().zip(self.buckets.iter()) {
            *sum += b.load(Relaxed);
        }
        into.sum_micros += self.sum_micros.load(Relaxed);
        into.max_micros = into.max_micros.max(self.max_micros.load(Relaxed));
    }

    pub(crate) fn snapshot(&self) -> LatencySnapshot {
        let mut counts = Counts::default();
        self.add_to(&mut counts);
        counts.snapshot()
    }
}

/// Plain counts of one or several histograms, read at one moment.
pub(crate) struct Counts {
    buckets: [u64; BUCKETS],
    sum_micros: u64,
    max_micros: u64,
}

impl Default for Counts {
    fn default() -> Self {
        Counts {
            buckets: [0; BUCKETS],
            sum_micros: 0,
            max_micros: 0,
        }
    }
}

impl Counts {
    /// The figures of these counts. The count is the buckets' sum (read with them, so the
    /// quantiles always agree with it).
    pub(crate) fn snapshot(&self) -> LatencySnapshot {
        let count: u64 = self.buckets.iter().sum();
        if count == 0 {
            return LatencySnapshot::default();
        }
        let quantile = |q: f64| {
            // The rank of the quantile, from 1: the smallest value with at least q of them
            // at or below it.
            let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
            let mut seen = 0;
            for (i, n) in self.buckets.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    let (low, width) = bounds(i);
                    let mid = low as f64 + (width as f64 - 1.0) / 2.0;
                    // Never above the largest time seen (a bucket's midpoint may be).
                    return mid.min(self.max_micros as f64) / 1000.0;
                }
            }
            self.max_micros as f64 / 1000.0
        };
        LatencySnapshot {
            count,
            average_ms: self.sum_micros as f64 / count as f64 / 1000.0,
            p50_ms: quantile(0.50),
            p95_ms: quantile(0.95),
            p99_ms: quantile(0.99),
            max_ms: self.max_micros as f64 / 1000.0,
        }
    }
}

/// Response times of one route (or all of them) at one moment, in milliseconds: from the
/// request's arrival at the cache layer to its response's head (a body that streams after it
/// is not counted), or the length of a typed call. Quantiles are within 12.5% of the true
/// value (a histogram of four buckets per power of two); average and maximum are exact.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LatencySnapshot {
    /// Responses counted.
    pub count: u64,
    /// Mean time.
    pub average_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Longest.
    pub max_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_falls_in_the_bucket_whose_bounds_hold_it() {
        for v in (0..5000).chain([1 << 20, (1 << 20) + 12345, 1 << 35]) {
            let (low, width) = bounds(bucket(v));
            assert!(low <= v && v < low + width, "{v}: {low}+{width}");
            // Two significant bits: a bucket is at most a quarter of its values wide.
            assert!(width == 1 || width * 4 <= low, "{v}: {low}+{width}");
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        // Buckets follow each other with no gap.
        for i in 1..BUCKETS {
            let (low, _) = bounds(i);
            let (prev, width) = bounds(i - 1);
            assert_eq!(prev + width, low, "bucket {i}");
        }
    }

    #[test]
    fn quantiles_average_and_max_follow_the_times_recorded() {
        let l = Latency::default();
        assert_eq!(l.snapshot(), LatencySnapshot::default());
        // 90 fast responses (1 ms) and 10 slow ones (200 ms).
        for _ in 0..90 {
            l.record(Duration::from_millis(1));
        }
        for _ in 0..10 {
            l.record(Duration::from_millis(200));
        }
        let s = l.snapshot();
        assert_eq!(s.count, 100);
        assert!((s.average_ms - 20.9).abs() < 1e-9, "{s:?}");
        assert!((s.p50_ms - 1.0).abs() <= 0.125, "{s:?}");
        assert!((s.p95_ms - 200.0).abs() <= 25.0, "{s:?}");
        assert!(s.p99_ms <= s.max_ms && s.p95_ms <= s.p99_ms, "{s:?}");
        assert_eq!(s.max_ms, 200.0);
        l.reset();
        assert_eq!(l.snapshot(), LatencySnapshot::default());
    }

    #[test]
    fn the_total_of_two_histograms_is_their_union() {
        let (a, b) = (Latency::default(), Latency::default());
        a.record(Duration::from_micros(10));
        b.record(Duration::from_micros(30_000));
        b.record(Duration::from_micros(30_000));
        let mut counts = Counts::default();
        a.add_to(&mut counts);
        b.add_to(&mut counts);
        let s = counts.snapshot();
        assert_eq!(s.count, 3);
        assert!((s.p50_ms - 30.0).abs() <= 30.0 / 8.0, "{s:?}");
        assert_eq!(s.max_ms, 30.0);
    }
}
