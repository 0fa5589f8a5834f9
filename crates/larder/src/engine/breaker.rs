//! The circuit breaker in front of the store, and what it does when the store returns.
//!
//! After `threshold` consecutive failed store calls the breaker opens: the cache stops calling
//! the store (no timers, no waits; requests go straight to the service, marked
//! `fwd=bypass; detail=store-unavailable`) and one background task probes the store, backing off
//! from `open_for` up to 1 s. An invalidation that cannot be written opens the breaker at once,
//! and is written to the journal first when there is one (see [`journal`](super::journal)).
//!
//! **The outage epoch.** While this instance could not reach the store, another instance may
//! have written and failed to invalidate (its invalidation waits in its own memory or journal,
//! and it may be down), and this instance cannot know which tags it touched. So when the probe
//! finds the store back, it purges the namespace (raises the purge floor) before the breaker
//! closes: an instance that saw an outage never serves an entry stored before it. The cost is a
//! cold cache after each outage an instance sees; the alternative is serving what a write
//! replaced. Deferred invalidations are covered by that purge, and the journal is cleared only
//! once it has landed.
use std::{
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use super::journal::Journal;

use crate::{
    CacheKey,
    stats::RouteStats,
    store::{Store, StoreError, StoreErrorKind, StoreFuture},
};

/// The longest wait between two probes: once the store is back, hits resume within about
/// this long.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A store call, named for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Get,
    GetMany,
    Put,
    Remove,
    Invalidate,
    Purge,
    Lock,
    Unlock,
}

impl Op {
    const ALL: [Op; 8] = [
        Op::Get,
        Op::GetMany,
        Op::Put,
        Op::Remove,
        Op::Invalidate,
        Op::Purge,
        Op::Lock,
        Op::Unlock,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::GetMany => "get_many",
            Op::Put => "put",
            Op::Remove => "remove",
            Op::Invalidate => "invalidate",
            Op::Purge => "purge",
            Op::Lock => "lock",
            Op::Unlock => "unlock",
        }
    }
}

/// What a deferred invalidation covered (the recovery purge covers either).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deferred<'a> {
    /// These tags.
    Tags(&'a [String]),
    /// Every entry of the namespace.
    Purge,
}

/// The breaker's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BreakerSettings {
    pub(crate) threshold: u32,
    pub(crate) open_for: Duration,
    /// The deadline of every call to a network store.
    pub(crate) timeout: Duration,
}

/// The store behind its deadline and circuit breaker. Cloning shares it.
#[derive(Clone)]
pub(crate) struct Breaker {
    inner: Arc<BreakerState>,
}

struct BreakerState {
    store: Arc<dyn Store>,
    /// The namespace of the probe's key.
    namespace: Box<str>,
    settings: BreakerSettings,
    open: AtomicBool,
    /// Set from a deferred invalidation until the recovery purge has landed: the store is not
    /// read meanwhile.
    has_pending: AtomicBool,
    /// Invalidations deferred since the store last recovered (the recovery purge covers them).
    pending: AtomicU64,
    /// How many invalidations were deferred, so a recovery knows whether one came in while
    /// it purged.
    deferrals: AtomicU64,
    failures: AtomicU32,
    probing: AtomicBool,
    journal: Option<Journal>,
    /// `larder_store_seconds{store, op}` per op (in [`Op::ALL`]'s order), registered with the
    /// recorder at the first network call, so a call does not build a metric key each time.
    latency: std::sync::OnceLock<[metrics::Histogram; 8]>,
}

impl Breaker {
    /// A breaker over `store`. With a `journal` that holds invalidations from an earlier run,
    /// the store is not read until the recovery purge has landed.
    pub(crate) fn new(
        store: Arc<dyn Store>,
        namespace: &str,
        settings: BreakerSettings,
        journal: Option<(Journal, bool)>,
    ) -> Self {
        let pending = journal.as_ref().is_some_and(|(_, pending)| *pending);
        if let Some((journal, true)) = &journal {
            tracing::warn!(
                journal = %journal.path().display(),
                "invalidations from an earlier run were not applied: the cache store is not read until the namespace is purged"
            );
        }
        let breaker = Breaker {
            inner: Arc::new(BreakerState {
                store,
                namespace: namespace.into(),
                settings: BreakerSettings {
                    threshold: settings.threshold.max(1),
                    ..settings
                },
                open: AtomicBool::new(pending),
                has_pending: AtomicBool::new(pending),
                pending: AtomicU64::new(u64::from(pending)),
                deferrals: AtomicU64::new(0),
                failures: AtomicU32::new(0),
                probing: AtomicBool::new(false),
                journal: journal.map(|(j, _)| j),
                latency: std::sync::OnceLock::new(),
            }),
        };
        if pending {
            // Without a runtime here, the first request starts it (see `call` and `closed`).
            breaker.probe_soon();
        }
        breaker
    }

    /// The store behind the breaker.
    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The deadline of each network store call.
    pub(crate) fn timeout(&self) -> Duration {
        self.inner.settings.timeout
    }

    /// Whether the store looks well enough to promise a write: closed, and the last call
    /// did not fail.
    pub(crate) fn healthy(&self) -> bool {
        self.closed() && self.inner.failures.load(Ordering::Acquire) == 0
    }

    /// Whether the breaker lets store calls through, without starting a probe (for gauges).
    pub(crate) fn available(&self) -> bool {
        !self.inner.open.load(Ordering::Acquire) && !self.inner.has_pending.load(Ordering::Acquire)
    }

    /// How many invalidations wait for the store's recovery purge.
    pub(crate) fn pending(&self) -> u64 {
        self.inner.pending.load(Ordering::Acquire)
    }

    /// Whether the store may be called (the breaker is closed and no invalidation waits to
    /// be replayed).
    pub(crate) fn closed(&self) -> bool {
        let closed = !self.inner.open.load(Ordering::Acquire)
            && !self.inner.has_pending.load(Ordering::Acquire);
        if !closed {
            self.probe_soon();
        }
        closed
    }

    /// Runs a store call under the store deadline. Calls that finished at once (in-process
    /// stores) get no timer; while the breaker is open the call is not made at all. Failures
    /// are counted against `stats`, feed the breaker, and are returned.
    pub(crate) async fn call<T>(
        &self,
        stats: &RouteStats,
        op: Op,
        mut fut: StoreFuture<T>,
    ) -> Result<T, StoreError> {
        let inner = &self.inner;
        // Open, or invalidations wait to be replayed: not even an answer already at hand (a
        // tiered store's L1) is used, since it may be one of those the replay will hide.
        if !self.closed() {
            return Err(StoreError::new(StoreErrorKind::Unavailable, "circuit open"));
        }
        let result = match fut.try_ready() {
            Some(r) => r,
            None => {
                let timeout = inner.settings.timeout;
                let started = tokio::time::Instant::now();
                let r = match tokio::time::timeout(timeout, fut).await {
                    Ok(r) => r,
                    Err(_) => Err(StoreError::new(
                        StoreErrorKind::Timeout,
                        format!("{} took longer than {timeout:?}", op.as_str()),
                    )),
                };
                let latency = inner.latency.get_or_init(|| {
                    let store = inner.store.name();
                    Op::ALL.map(|op| {
                        metrics::histogram!("larder_store_seconds", "store" => store, "op" => op.as_str())
                    })
                });
                latency[op as usize].record(started.elapsed().as_secs_f64());
                match &r {
                    Ok(_) => inner.failures.store(0, Ordering::Release),
                    // A value that is not ours says nothing about the store's health.
                    Err(e) if e.kind() == StoreErrorKind::Corrupt => {}
                    Err(_) => self.failure(),
                }
                r
            }
        };
        if let Err(e) = &result {
            stats.error();
            tracing::warn!(store = inner.store.name(), op = op.as_str(), error = %e, "cache store call failed");
        }
        result
    }

    /// Counts a failure; opens the breaker at the threshold.
    fn failure(&self) {
        let n = self.inner.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= self.inner.settings.threshold {
            self.trip();
        }
    }

    /// Records an invalidation that did not reach the store (in the journal, synced, when
    /// there is one) and stops reading the store until the recovery purge has landed.
    pub(crate) fn defer(&self, what: Deferred<'_>) {
        let inner = &self.inner;
        inner.deferrals.fetch_add(1, Ordering::AcqRel);
        inner.pending.fetch_add(1, Ordering::AcqRel);
        inner.has_pending.store(true, Ordering::Release);
        // Copies kept in this process (an L1 read during an outage) must not outlive it.
        inner.store.lost_invalidation();
        if let Some(journal) = &inner.journal {
            let (tags, purge) = match what {
                Deferred::Tags(tags) => (tags, false),
                Deferred::Purge => (&[][..], true),
            };
            if let Err(e) = journal.record(tags, purge) {
                tracing::error!(journal = %journal.path().display(), error = %e,
                    "could not journal a deferred invalidation: it is lost if this process stops before the store returns");
            }
        }
        metrics::counter!("larder_deferred_invalidations_total").increment(1);
        self.trip();
    }

    fn trip(&self) {
        let inner = &self.inner;
        if !inner.open.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                store = inner.store.name(),
                "cache store unavailable: circuit open, requests bypass it"
            );
            metrics::counter!("larder_breaker_opened_total").increment(1);
        }
        self.probe_soon();
    }

    /// Starts the probe unless one runs (and a runtime is at hand).
    fn probe_soon(&self) {
        let inner = &self.inner;
        if inner.probing.load(Ordering::Acquire) {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            if !inner.probing.swap(true, Ordering::AcqRel) {
                runtime.spawn(probe(Arc::downgrade(inner)));
            }
        }
    }
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("store", &self.inner.store.name())
            .field("closed", &self.closed())
            .finish()
    }
}

/// Probes the store until it answers, purges the namespace (the outage epoch), clears the
/// journal, then closes the breaker. Stops when the cache is dropped.
async fn probe(inner: Weak<BreakerState>) {
    let Some(open_for) = inner.upgrade().map(|s| s.settings.open_for) else {
        return;
    };
    let mut wait = open_for;
    loop {
        tokio::time::sleep(wait).await;
        let Some(s) = inner.upgrade() else {
            return;
        };
        wait = (wait * 2).min(MAX_BACKOFF).max(open_for.min(MAX_BACKOFF));
        let timeout = s.settings.timeout;
        let probe_key = CacheKey::typed(&s.namespace, "larder:probe");
        let answered = tokio::time::timeout(timeout, s.store.get(&probe_key)).await;
        if !matches!(answered, Ok(Ok(_))) {
            continue;
        }
        let deferrals = s.deferrals.load(Ordering::Acquire);
        let purged = tokio::time::timeout(timeout, s.store.purge()).await;
        if !matches!(purged, Ok(Ok(()))) {
            continue;
        }
        // An invalidation deferred while the purge ran may postdate it: purge again.
        let current = || s.deferrals.load(Ordering::Acquire) == deferrals;
        let cleared = match &s.journal {
            Some(journal) => match journal.clear_if(current) {
                Ok(cleared) => cleared,
                Err(e) => {
                    // Not a race: try again after the usual wait, not at once.
                    tracing::error!(journal = %journal.path().display(), error = %e, "could not clear the journal");
                    continue;
                }
            },
            None => current(),
        };
        if !cleared {
            wait = Duration::ZERO;
            continue;
        }
        metrics::counter!("larder_outage_purges_total").increment(1);
        s.failures.store(0, Ordering::Release);
        s.pending.store(0, Ordering::Release);
        s.has_pending.store(false, Ordering::Release);
        s.open.store(false, Ordering::Release);
        s.probing.store(false, Ordering::Release);
        tracing::info!(
            store = s.store.name(),
            "cache store back: namespace purged (entries from before the outage are not served), circuit closed"
        );
        // A deferral that raced with the lines above finds `probing` unset and trips again.
        if !current() {
            s.has_pending.store(true, Ordering::Release);
            Breaker { inner: s }.trip();
        }
        return;
    }
}
