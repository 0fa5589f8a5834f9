//! Hit, miss, stale, bypass and error counts per route, as a snapshot and through `metrics`.
//!
//! Every outcome is counted twice: in lock-free per-route counters that
//! [`CacheHandle::stats`](crate::CacheHandle::stats) reads, and as
//! `larder_requests_total{route, outcome}` through the [`metrics`] facade, so any recorder
//! (Prometheus, StatsD) sees them. A route registers its outcome counters with the recorder
//! once, at its first request, and keeps the handles: install the recorder before serving. Store call latency is the histogram (registered at the first store call)
//! `larder_store_seconds{store, op}` (network stores only; in-process calls are not timed).

use std::{
    collections::BTreeMap,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use dashmap::DashMap;
use serde::Serialize;

/// What happened to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Hit,
    Stale,
    Miss,
    Collapsed,
    Bypass,
}

impl Outcome {
    const ALL: [Outcome; 5] = [
        Outcome::Hit,
        Outcome::Stale,
        Outcome::Miss,
        Outcome::Collapsed,
        Outcome::Bypass,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Stale => "stale",
            Outcome::Miss => "miss",
            Outcome::Collapsed => "collapsed",
            Outcome::Bypass => "bypass",
        }
    }
}

/// Counters of one route.
#[derive(Debug, Default)]
pub(crate) struct RouteStats {
    name: Arc<str>,
    hits: AtomicU64,
    stale: AtomicU64,
    misses: AtomicU64,
    collapsed: AtomicU64,
    bypasses: AtomicU64,
    stored: AtomicU64,
    errors: AtomicU64,
    invalidations: AtomicU64,
    audits: AtomicU64,
    audit_mismatches: AtomicU64,
    /// `larder_requests_total{route, outcome}` per outcome (in [`Outcome::ALL`]'s order),
    /// registered at the first request so the hit path does not build a metric key each time.
    outcomes: OnceLock<[metrics::Counter; 5]>,
}

impl RouteStats {
    pub(crate) fn record(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Hit => &self.hits,
            Outcome::Stale => &self.stale,
            Outcome::Miss => &self.misses,
            Outcome::Collapsed => &self.collapsed,
            Outcome::Bypass => &self.bypasses,
        };
        counter.fetch_add(1, Relaxed);
        let counters = self.outcomes.get_or_init(|| {
            Outcome::ALL.map(|o| {
                metrics::counter!("larder_requests_total", "route" => Arc::clone(&self.name), "outcome" => o.as_str())
            })
        });
        counters[outcome as usize].increment(1);
    }

    pub(crate) fn stored(&self) {
        self.stored.fetch_add(1, Relaxed);
        metrics::counter!("larder_stored_total", "route" => Arc::clone(&self.name)).increment(1);
    }

    pub(crate) fn error(&self) {
        self.errors.fetch_add(1, Relaxed);
        metrics::counter!("larder_store_errors_total", "route" => Arc::clone(&self.name))
            .increment(1);
    }

    /// Counts an audit, and whether its answer differed from the entry served.
    pub(crate) fn audited(&self, mismatch: bool) -> u64 {
        self.audits.fetch_add(1, Relaxed);
        if !mismatch {
            return 0;
        }
        metrics::counter!("larder_audit_mismatches_total", "route" => Arc::clone(&self.name))
            .increment(1);
        self.audit_mismatches.fetch_add(1, Relaxed) + 1
    }

    pub(crate) fn invalidated(&self) {
        self.invalidations.fetch_add(1, Relaxed);
        metrics::counter!("larder_invalidations_total", "route" => Arc::clone(&self.name))
            .increment(1);
    }

    fn snapshot(&self) -> RouteSnapshot {
        let mut s = RouteSnapshot {
            hits: self.hits.load(Relaxed),
            stale: self.stale.load(Relaxed),
            misses: self.misses.load(Relaxed),
            collapsed: self.collapsed.load(Relaxed),
            bypasses: self.bypasses.load(Relaxed),
            stored: self.stored.load(Relaxed),
            errors: self.errors.load(Relaxed),
            invalidations: self.invalidations.load(Relaxed),
            audits: self.audits.load(Relaxed),
            audit_mismatches: self.audit_mismatches.load(Relaxed),
            hit_rate: 0.0,
        };
        s.hit_rate = s.rate();
        s
    }
}

/// The counters of every route of a handle.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    routes: DashMap<Arc<str>, Arc<RouteStats>>,
}

impl Stats {
    /// The counters of `route`, created on first use. Layers look them up once, when built.
    pub(crate) fn route(&self, route: &Arc<str>) -> Arc<RouteStats> {
        self.routes
            .entry(Arc::clone(route))
            .or_insert_with(|| {
                Arc::new(RouteStats {
                    name: Arc::clone(route),
                    ..RouteStats::default()
                })
            })
            .clone()
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let routes: BTreeMap<String, RouteSnapshot> = self
            .routes
            .iter()
            .map(|r| (r.key().to_string(), r.value().snapshot()))
            .collect();
        let mut total = RouteSnapshot::default();
        for r in routes.values() {
            total.hits += r.hits;
            total.stale += r.stale;
            total.misses += r.misses;
            total.collapsed += r.collapsed;
            total.bypasses += r.bypasses;
            total.stored += r.stored;
            total.errors += r.errors;
            total.invalidations += r.invalidations;
            total.audits += r.audits;
            total.audit_mismatches += r.audit_mismatches;
        }
        total.hit_rate = total.rate();
        StatsSnapshot {
            total,
            routes,
            refills: crate::RefillSnapshot::default(),
        }
    }
}

/// A copy of the counters at one moment, from [`CacheHandle::stats`](crate::CacheHandle::stats).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct StatsSnapshot {
    /// All routes together.
    pub total: RouteSnapshot,
    /// Per route, by rule name (typed cache-aside calls count under `typed`).
    pub routes: BTreeMap<String, RouteSnapshot>,
    /// Refills after writes ([`Rule::refill_after_write`](crate::Rule::refill_after_write));
    /// a refill's call to the service also counts as a miss of its route.
    pub refills: crate::RefillSnapshot,
}

/// The counters of one route.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RouteSnapshot {
    /// Served from a fresh entry.
    pub hits: u64,
    /// Served from a stale entry (stale-while-revalidate or stale-if-error).
    pub stale: u64,
    /// Forwarded to the service because no usable entry existed.
    pub misses: u64,
    /// Waited for another request's call to the service and shared its response.
    pub collapsed: u64,
    /// Not cacheable (credentials without a user scope, a write, a `Range` request...).
    pub bypasses: u64,
    /// Responses written to the store.
    pub stored: u64,
    /// Store calls that failed or timed out (each one was served from the service instead).
    pub errors: u64,
    /// Writes that invalidated tags.
    pub invalidations: u64,
    /// Hits audited against the service (see [`Rule::audit`](crate::Rule::audit)).
    pub audits: u64,
    /// Audits whose answer differed from the entry served: stale entries, a rule that misses
    /// an invalidation.
    pub audit_mismatches: u64,
    /// `(hits + stale) / (hits + stale + misses + collapsed)`, or 0 before any lookup.
    pub hit_rate: f64,
}

impl RouteSnapshot {
    fn rate(&self) -> f64 {
        let served = self.hits + self.stale;
        let lookups = served + self.misses + self.collapsed;
        if lookups == 0 {
            0.0
        } else {
            served as f64 / lookups as f64
        }
    }
}
