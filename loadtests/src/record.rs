//! The runner's own per-request records: latency to the last byte of the body, time to the
//! first byte, what the cache said, and whether the request succeeded.
//!
//! goose keeps its own metrics (time to the response headers only, goose#614), which go
//! into its HTML and JSON reports; the table and the targets are computed from these
//! records instead, so that latency includes the body and hits and misses can be told apart.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// What a request was, for the table's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    /// A cacheable read (`GET`).
    Read,
    /// A write that invalidates (`POST`, `PUT`).
    Write,
    /// A whole dashboard load: every read of one iteration, timed from its scheduled start.
    Load,
}

/// What the cache said about a response, from its `Cache-Status` header (RFC 9211).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CacheOutcome {
    /// Served fresh from the cache (`larder; hit`).
    Hit,
    /// Served stale from the cache (`larder; hit; ttl=-N`).
    Stale,
    /// Forwarded and filled (`larder; fwd=miss`, `fwd=stale`, ...).
    Miss,
    /// Served by another request's fill (`fwd=miss; collapsed`): no query of its own.
    Collapsed,
    /// Forwarded without caching (`fwd=bypass`): no rule, store down, a write.
    Bypass,
    /// No `Cache-Status` from this cache (the baseline, or a route outside the cache).
    None,
}

impl CacheOutcome {
    /// Reads the `Cache-Status` header value for the cache called `cache` (a response may
    /// carry one entry per cache, comma-separated, the one nearest the origin first).
    pub(crate) fn parse(header: Option<&str>, cache: &str) -> CacheOutcome {
        let Some(header) = header else {
            return CacheOutcome::None;
        };
        let Some(entry) = header.split(',').map(str::trim).find(|entry| {
            entry
                .split(';')
                .next()
                .is_some_and(|name| name.trim().trim_matches('"') == cache)
        }) else {
            return CacheOutcome::None;
        };
        let mut hit = false;
        let mut stale = false;
        let mut fwd = None;
        let mut collapsed = false;
        for param in entry.split(';').skip(1).map(str::trim) {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            match key {
                "hit" => hit = true,
                "ttl" => stale = value.starts_with('-'),
                "fwd" => fwd = Some(value.trim_matches('"')),
                "collapsed" => collapsed = true,
                _ => {}
            }
        }
        match (hit, fwd) {
            (true, _) if stale => CacheOutcome::Stale,
            (true, _) => CacheOutcome::Hit,
            (false, Some("bypass")) => CacheOutcome::Bypass,
            (false, Some(_)) if collapsed => CacheOutcome::Collapsed,
            (false, Some(_)) => CacheOutcome::Miss,
            (false, None) => CacheOutcome::None,
        }
    }

    /// Whether the response came out of the cache (fresh or stale).
    pub(crate) fn is_hit(self) -> bool {
        matches!(self, CacheOutcome::Hit | CacheOutcome::Stale)
    }
}

/// One measured request (or dashboard load).
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    /// The named request (`profile`, `sessions page 2`, ...), or `dashboard load`.
    pub(crate) name: &'static str,
    /// Read, write or whole load.
    pub(crate) kind: Kind,
    /// Which iteration (dashboard load) of that user it belongs to, from 0.
    pub(crate) iteration: u64,
    /// When the request was sent (for a load, when its first request was), on the same
    /// clock as the run's schedule and its events (the timeline of the `outage` scenario).
    pub(crate) sent: Instant,
    /// From sending the request to the last byte of the body; for a load, from its
    /// scheduled start to the last byte of its last read.
    pub(crate) latency: Duration,
    /// From sending the request to the response headers (goose's figure); for a load, how
    /// late it started against its schedule.
    pub(crate) first_byte: Duration,
    /// What the cache said.
    pub(crate) cache: CacheOutcome,
    /// Whether it succeeded (status as expected, body read, checks passed).
    pub(crate) ok: bool,
    /// Why not, when it failed.
    pub(crate) error: Option<String>,
}

/// The records of one phase (a warm-up or a measured run), filled by every user.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    samples: Mutex<Vec<Sample>>,
}

impl Recorder {
    /// Adds one record.
    pub(crate) fn push(&self, sample: Sample) {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(sample);
    }

    /// Every record so far.
    pub(crate) fn take(&self) -> Vec<Sample> {
        std::mem::take(&mut *self.samples.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Latency figures over a set of samples, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub(crate) struct Latency {
    /// How many samples.
    pub(crate) count: usize,
    /// Mean.
    pub(crate) avg_ms: f64,
    /// Median.
    pub(crate) p50_ms: f64,
    /// 95th percentile.
    pub(crate) p95_ms: f64,
    /// 99th percentile.
    pub(crate) p99_ms: f64,
    /// Largest.
    pub(crate) max_ms: f64,
}

impl Latency {
    /// The figures of `durations` (nearest-rank percentiles over the exact values).
    pub(crate) fn of(durations: impl IntoIterator<Item = Duration>) -> Latency {
        let mut ms: Vec<f64> = durations
            .into_iter()
            .map(|d| d.as_secs_f64() * 1e3)
            .collect();
        if ms.is_empty() {
            return Latency::default();
        }
        ms.sort_by(f64::total_cmp);
        let sum: f64 = ms.iter().sum();
        Latency {
            count: ms.len(),
            avg_ms: sum / ms.len() as f64,
            p50_ms: percentile(&ms, 0.50),
            p95_ms: percentile(&ms, 0.95),
            p99_ms: percentile(&ms, 0.99),
            max_ms: ms[ms.len() - 1],
        }
    }
}

/// The nearest-rank percentile `p` (0..=1) of sorted, non-empty `values`.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_status_is_read_for_our_cache_only() {
        let parse = |h| CacheOutcome::parse(Some(h), "larder");
        assert_eq!(parse("larder; hit; ttl=287"), CacheOutcome::Hit);
        assert_eq!(parse("larder; fwd=miss; stored"), CacheOutcome::Miss);
        assert_eq!(
            parse("larder; hit; ttl=-3; detail=stale-while-revalidate"),
            CacheOutcome::Stale
        );
        assert_eq!(
            parse("larder; fwd=bypass; detail=store-unavailable"),
            CacheOutcome::Bypass
        );
        assert_eq!(
            parse("larder; fwd=miss; collapsed"),
            CacheOutcome::Collapsed
        );
        assert_eq!(
            parse(r#"larder; fwd=miss; stored; detail="2 of 9 parts""#),
            CacheOutcome::Miss
        );
        // A CDN in front says hit; ours said miss.
        assert_eq!(
            parse("larder; fwd=miss; stored, cdn; hit"),
            CacheOutcome::Miss
        );
        assert_eq!(parse("cdn; hit"), CacheOutcome::None);
        assert_eq!(CacheOutcome::parse(None, "larder"), CacheOutcome::None);
    }

    #[test]
    fn percentiles_are_nearest_rank_over_exact_values() {
        let lat = Latency::of((1..=100).map(Duration::from_millis));
        assert_eq!(lat.count, 100);
        assert_eq!(lat.p50_ms, 50.0);
        assert_eq!(lat.p95_ms, 95.0);
        assert_eq!(lat.p99_ms, 99.0);
        assert_eq!(lat.max_ms, 100.0);
        assert!((lat.avg_ms - 50.5).abs() < 1e-9);
        assert_eq!(Latency::of([]).count, 0);
        assert_eq!(Latency::of([Duration::from_millis(7)]).p99_ms, 7.0);
    }
}
