//! Hit, miss, stale, bypass and error counts per route, as a snapshot and through `metrics`.
//!
//! Every outcome is counted twice: in lock-free per-route counters that
//! [`CacheHandle::stats`](crate::CacheHandle::stats) reads, and as
//! `larder_requests_total{route, outcome}` through the [`metrics`] facade, so any recorder
//! (Prometheus, StatsD) sees them. A route registers its outcome counters with the recorder
//! once, at its first request, and keeps the handles, and every metric is described when the
//! first handle is built: install the recorder before building the handle. Store call latency is the histogram (registered at the first store call)
//! `larder_store_seconds{store, op}` (network stores only; in-process calls are not timed).
//!
//! Response times are kept per route for hits and for misses ([`latency`]): in the snapshot as
//! quantiles, and as the histogram `larder_response_seconds{route, served}`, recorded for every
//! client response. What a histogram costs is the recorder's: metrics-exporter-prometheus keeps
//! each sample until its upkeep drains it (`install()` runs it every few seconds; a recorder
//! built with `build_recorder()` needs `run_upkeep()` called on a timer, or its memory grows).

mod latency;

use std::{
    collections::BTreeMap,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Instant,
};

pub use latency::LatencySnapshot;
use latency::{Counts, Latency};

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
    /// A write (an unsafe method) forwarded to the service, invalidating when it succeeds.
    Write,
}

impl Outcome {
    const ALL: [Outcome; 6] = [
        Outcome::Hit,
        Outcome::Stale,
        Outcome::Miss,
        Outcome::Collapsed,
        Outcome::Bypass,
        Outcome::Write,
    ];

    /// Whether a response of this outcome waited for the service (its own call or another
    /// request's): its time counts with the misses, else with the hits.
    fn waited(self) -> bool {
        matches!(self, Outcome::Miss | Outcome::Collapsed)
    }

    fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Stale => "stale",
            Outcome::Miss => "miss",
            Outcome::Collapsed => "collapsed",
            Outcome::Bypass => "bypass",
            Outcome::Write => "write",
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
    writes: AtomicU64,
    stored: AtomicU64,
    errors: AtomicU64,
    invalidations: AtomicU64,
    audits: AtomicU64,
    audit_mismatches: AtomicU64,
    /// `larder_requests_total{route, outcome}` per outcome (in [`Outcome::ALL`]'s order),
    /// registered at the first request so the hit path does not build a metric key each time.
    outcomes: OnceLock<[metrics::Counter; 6]>,
    /// Response times of responses answered from an entry (fresh or stale).
    hit_latency: Latency,
    /// Response times of responses that waited for the service (a miss, a shared call).
    miss_latency: Latency,
    /// `larder_response_seconds{route, served}`: hits, then misses.
    latency_metrics: OnceLock<[metrics::Histogram; 2]>,
}

impl RouteStats {
    pub(crate) fn record(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Hit => &self.hits,
            Outcome::Stale => &self.stale,
            Outcome::Miss => &self.misses,
            Outcome::Collapsed => &self.collapsed,
            Outcome::Bypass => &self.bypasses,
            Outcome::Write => &self.writes,
        };
        counter.fetch_add(1, Relaxed);
        let counters = self.outcomes.get_or_init(|| {
            Outcome::ALL.map(|o| {
                metrics::counter!("larder_requests_total", "route" => Arc::clone(&self.name), "outcome" => o.as_str())
            })
        });
        counters[outcome as usize].increment(1);
    }

    /// Counts the time of a response of `outcome` to a request that arrived at `started`.
    pub(crate) fn took(&self, outcome: Outcome, started: Instant) {
        let took = started.elapsed();
        let waited = outcome.waited();
        let latency = if waited {
            &self.miss_latency
        } else {
            &self.hit_latency
        };
        latency.record(took);
        let histograms = self.latency_metrics.get_or_init(|| {
            ["hit", "miss"].map(|served| {
                metrics::histogram!("larder_response_seconds", "route" => Arc::clone(&self.name), "served" => served)
            })
        });
        histograms[usize::from(waited)].record(took.as_secs_f64());
    }

    /// Counts a response of `outcome` and, for a client's request (`started`), its time.
    pub(crate) fn answered(&self, outcome: Outcome, started: Option<Instant>) {
        self.record(outcome);
        if let Some(started) = started {
            self.took(outcome, started);
        }
    }

    /// Zeroes the counters and the response times (not what was sent to `metrics`).
    fn reset(&self) {
        for counter in [
            &self.hits,
            &self.stale,
            &self.misses,
            &self.collapsed,
            &self.bypasses,
            &self.writes,
            &self.stored,
            &self.errors,
            &self.invalidations,
            &self.audits,
            &self.audit_mismatches,
        ] {
            counter.store(0, Relaxed);
        }
        self.hit_latency.reset();
        self.miss_latency.reset();
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
            writes: self.writes.load(Relaxed),
            stored: self.stored.load(Relaxed),
            errors: self.errors.load(Relaxed),
            invalidations: self.invalidations.load(Relaxed),
            audits: self.audits.load(Relaxed),
            audit_mismatches: self.audit_mismatches.load(Relaxed),
            hit_rate: 0.0,
            hit_latency: self.hit_latency.snapshot(),
            miss_latency: self.miss_latency.snapshot(),
        };
        s.hit_rate = s.rate();
        s
    }
}

/// The counters of every route of a handle.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    routes: DashMap<Arc<str>, Arc<RouteStats>>,
    /// Requests through a layer that no rule covered (`detail=no-rule`).
    unmatched: AtomicU64,
    unmatched_counter: OnceLock<metrics::Counter>,
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

    /// The counters of a typed call's category, created on first use.
    pub(crate) fn category(&self, name: &Arc<str>) -> Arc<RouteStats> {
        match self.routes.get(&**name) {
            Some(stats) => Arc::clone(&stats),
            None => self.route(name),
        }
    }

    /// Counts a request that no rule of its layer covered.
    pub(crate) fn unmatched(&self) {
        self.unmatched.fetch_add(1, Relaxed);
        self.unmatched_counter
            .get_or_init(|| metrics::counter!("larder_unmatched_requests_total"))
            .increment(1);
    }

    /// Zeroes every route's counters and response times and the unmatched count.
    pub(crate) fn reset(&self) {
        for route in self.routes.iter() {
            route.value().reset();
        }
        self.unmatched.store(0, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let (mut hits, mut misses) = (Counts::default(), Counts::default());
        let routes: BTreeMap<String, RouteSnapshot> = self
            .routes
            .iter()
            .map(|r| {
                r.value().hit_latency.add_to(&mut hits);
                r.value().miss_latency.add_to(&mut misses);
                (r.key().to_string(), r.value().snapshot())
            })
            .collect();
        let mut total = RouteSnapshot {
            hit_latency: hits.snapshot(),
            miss_latency: misses.snapshot(),
            ..RouteSnapshot::default()
        };
        for r in routes.values() {
            total.hits += r.hits;
            total.stale += r.stale;
            total.misses += r.misses;
            total.collapsed += r.collapsed;
            total.bypasses += r.bypasses;
            total.writes += r.writes;
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
            unmatched: self.unmatched.load(Relaxed),
            refills: crate::RefillSnapshot::default(),
            usage: None,
            store_available: true,
            pending_invalidations: 0,
        }
    }
}

/// A copy of the counters at one moment, from [`CacheHandle::stats`](crate::CacheHandle::stats).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct StatsSnapshot {
    /// All routes together.
    pub total: RouteSnapshot,
    /// Per route, by rule name. Typed cache-aside calls count under their options'
    /// [`category`](crate::EntryOptions::category) (`typed` when they name none), and so do
    /// the invalidations made with the handle (`invalidate_tags`, admin routes) under `typed`.
    pub routes: BTreeMap<String, RouteSnapshot>,
    /// Requests through a layer that no rule covered (`Cache-Status: ...; detail=no-rule`):
    /// a route left out of a [`Rules`](crate::Rules) by mistake shows here.
    pub unmatched: u64,
    /// Refills after writes ([`Rule::refill_after_write`](crate::Rule::refill_after_write));
    /// a refill's call to the service also counts as a miss of its route.
    pub refills: crate::RefillSnapshot,
    /// What the store holds in this process, when it can tell (the memory store; the tiered
    /// store's L1 and its reads by level).
    pub usage: Option<crate::store::Usage>,
    /// Whether the store is being used: false while the circuit breaker is open or
    /// invalidations wait for the store's recovery (requests then bypass it).
    pub store_available: bool,
    /// Invalidations the store did not take, waiting for its recovery purge.
    pub pending_invalidations: u64,
}

/// Describes every metric (`# HELP` in Prometheus) to the recorder installed now, once per
/// process (at the first handle built).
pub(crate) fn describe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
        describe_counter!(
            "larder_requests_total",
            "Requests through the cache by rule (route) and outcome: hit, stale, miss, collapsed (shared another request's call), bypass, write."
        );
        describe_counter!(
            "larder_unmatched_requests_total",
            "Requests through a cache layer that no rule covered (Cache-Status detail=no-rule)."
        );
        describe_counter!("larder_stored_total", "Responses and typed values written to the store, by rule.");
        describe_counter!(
            "larder_store_errors_total",
            "Store calls that failed or timed out, by rule (each was answered by the service)."
        );
        describe_counter!(
            "larder_invalidations_total",
            "Invalidations: by successful writes, by rule; route=\"typed\" counts those made from code."
        );
        describe_counter!(
            "larder_audit_mismatches_total",
            "Audited hits whose entry differed from the service's answer: stale entries, by rule."
        );
        describe_counter!(
            "larder_deferred_invalidations_total",
            "Invalidations the store did not take, kept for its recovery purge."
        );
        describe_counter!("larder_breaker_opened_total", "Times the store's circuit breaker opened.");
        describe_counter!(
            "larder_outage_purges_total",
            "Recovery purges after an outage with deferred invalidations."
        );
        describe_counter!(
            "larder_refills_total",
            "Refills after writes by outcome: done, failed, dropped."
        );
        describe_counter!(
            "larder_tiered_reads_total",
            "Tiered store reads by where they were answered: l1 (this process) or l2 (Redis)."
        );
        describe_histogram!(
            "larder_response_seconds",
            Unit::Seconds,
            "Response times by rule (route) and how they were served: hit (from an entry, fresh or stale) or miss (waited for the service); to the response's head."
        );
        describe_histogram!(
            "larder_store_seconds",
            Unit::Seconds,
            "Duration of network store calls by store and operation."
        );
        describe_histogram!(
            "larder_backplane_delay_seconds",
            Unit::Seconds,
            "Delay from an invalidation's publication to its arrival at this L1."
        );
        describe_gauge!(
            "larder_store_available",
            "1 while the store is used, 0 while requests bypass it (breaker open, or invalidations pending)."
        );
        describe_gauge!(
            "larder_pending_invalidations",
            "Invalidations waiting for the store's recovery purge."
        );
        describe_gauge!("larder_entries", "Entries held in this process (memory store, tiered L1).");
        describe_gauge!(
            "larder_bytes",
            Unit::Bytes,
            "Bytes held in this process (memory store, tiered L1), as the capacity counts them."
        );
    });
}

/// What the gauges show: whether the store is used, the invalidations waiting for it, and
/// what it holds in this process.
pub(crate) struct Gauges {
    pub(crate) store_available: bool,
    pub(crate) pending_invalidations: u64,
    pub(crate) usage: Option<crate::store::Usage>,
}

/// Sets the gauges, labelled with the store's name and the handle's namespace (two handles in
/// one process report apart).
pub(crate) fn report_gauges(store: &'static str, namespace: &str, gauges: &Gauges) {
    let labels = [
        ("store", store.to_owned()),
        ("namespace", namespace.to_owned()),
    ];
    let available = if gauges.store_available { 1.0 } else { 0.0 };
    metrics::gauge!("larder_store_available", &labels).set(available);
    metrics::gauge!("larder_pending_invalidations", &labels)
        .set(gauges.pending_invalidations as f64);
    if let Some(usage) = &gauges.usage {
        metrics::gauge!("larder_entries", &labels).set(usage.entries as f64);
        metrics::gauge!("larder_bytes", &labels).set(usage.bytes as f64);
    }
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
    /// Not cacheable (a `Range` request, a user-scoped rule's request naming no user, the
    /// store unavailable...).
    pub bypasses: u64,
    /// Writes (unsafe methods) forwarded to the service; those that succeeded invalidated.
    pub writes: u64,
    /// Responses written to the store.
    pub stored: u64,
    /// Store calls that failed or timed out (each one was served from the service instead).
    pub errors: u64,
    /// Invalidations: by successful writes through the route; under `typed`, those made from
    /// code ([`CacheHandle::invalidate_tags`](crate::CacheHandle::invalidate_tags)).
    pub invalidations: u64,
    /// Hits audited against the service (see [`Rule::audit`](crate::Rule::audit)).
    pub audits: u64,
    /// Audits whose answer differed from the entry served: stale entries, a rule that misses
    /// an invalidation.
    pub audit_mismatches: u64,
    /// `(hits + stale) / (hits + stale + misses + collapsed)`, or 0 before any lookup.
    pub hit_rate: f64,
    /// Response times of hits and stale responses (answered from an entry): from the
    /// request's arrival at the layer to the response's head; for a typed call, its length.
    pub hit_latency: LatencySnapshot,
    /// Response times of misses and of requests that shared another's call (they waited for
    /// the service). A refill's replay is counted like a client's request: here when it calls
    /// the service, with the hits when it finds the entry already filled.
    pub miss_latency: LatencySnapshot,
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
