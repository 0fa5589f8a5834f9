//! The circuit breaker in front of the store, and the invalidations it must not forget.
//!
//! After `threshold` consecutive failed store calls the breaker opens: the cache stops calling
//! the store (no timers, no waits; requests go straight to the service, marked
//! `fwd=bypass; detail=store-unavailable`) and one background task probes the store, backing off
//! from `open_for` up to 1 s. An invalidation that cannot be written is queued (up to
//! `max_pending` tags; past that, the whole namespace will be purged instead) and opens the
//! breaker at once: while anything is queued the store is not read, so no entry the queue covers
//! can be served. The probe replays the queue, and only then closes the breaker.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

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

/// What a deferred invalidation covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deferred {
    /// These tags only.
    Tags,
    /// Every entry of the namespace.
    Purge,
}

/// The breaker's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BreakerSettings {
    pub(crate) threshold: u32,
    pub(crate) open_for: Duration,
    pub(crate) max_pending: usize,
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
    /// Set while invalidations wait in `pending`: the store is not read meanwhile.
    has_pending: AtomicBool,
    failures: AtomicU32,
    probing: AtomicBool,
    pending: Mutex<Pending>,
}

#[derive(Debug, Default)]
struct Pending {
    tags: HashSet<String>,
    /// Too many to keep, or a purge failed: purge the namespace on recovery.
    purge: bool,
}

impl Breaker {
    pub(crate) fn new(store: Arc<dyn Store>, namespace: &str, settings: BreakerSettings) -> Self {
        Breaker {
            inner: Arc::new(BreakerState {
                store,
                namespace: namespace.into(),
                settings: BreakerSettings {
                    threshold: settings.threshold.max(1),
                    ..settings
                },
                open: AtomicBool::new(false),
                has_pending: AtomicBool::new(false),
                failures: AtomicU32::new(0),
                probing: AtomicBool::new(false),
                pending: Mutex::new(Pending::default()),
            }),
        }
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

    /// Whether the store may be called (the breaker is closed and no invalidation waits to
    /// be replayed).
    pub(crate) fn closed(&self) -> bool {
        !self.inner.open.load(Ordering::Acquire) && !self.inner.has_pending.load(Ordering::Acquire)
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
                metrics::histogram!("larder_store_seconds", "store" => inner.store.name(), "op" => op.as_str())
                    .record(started.elapsed().as_secs_f64());
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

    /// Keeps invalidations that did not reach the store, and stops reading it until they do.
    pub(crate) fn defer(&self, tags: Vec<String>, what: Deferred) {
        let inner = &self.inner;
        {
            let mut p = inner.pending.lock().unwrap_or_else(|e| e.into_inner());
            if what == Deferred::Purge {
                p.purge = true;
            }
            for t in tags {
                if p.tags.len() >= inner.settings.max_pending {
                    p.purge = true;
                    p.tags.clear();
                    break;
                }
                if !p.purge {
                    p.tags.insert(t);
                }
            }
            inner.has_pending.store(true, Ordering::Release);
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
        if !inner.probing.swap(true, Ordering::AcqRel) {
            tokio::spawn(probe(Arc::downgrade(inner)));
        }
    }
}

impl BreakerState {
    /// Takes the queue; `has_pending` stays set until the replay has succeeded.
    fn take_pending(&self) -> Pending {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn queue_empty(&self) -> bool {
        let p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.tags.is_empty() && !p.purge
    }

    fn restore_pending(&self, back: Pending) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.purge |= back.purge;
        p.tags.extend(back.tags);
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

/// Probes the store until it answers, replays deferred invalidations, then closes the breaker.
/// Stops when the cache is dropped.
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
        let pending = s.take_pending();
        let replayed = if pending.purge {
            tokio::time::timeout(timeout, s.store.purge()).await
        } else if pending.tags.is_empty() {
            Ok(Ok(()))
        } else {
            let tags = pending.tags.iter().cloned().collect();
            tokio::time::timeout(timeout, s.store.invalidate_tags(tags)).await
        };
        if matches!(replayed, Ok(Ok(()))) {
            if !s.queue_empty() {
                // More invalidations were deferred while the replay ran: replay them too.
                wait = Duration::ZERO;
                continue;
            }
            s.failures.store(0, Ordering::Release);
            s.has_pending.store(false, Ordering::Release);
            s.open.store(false, Ordering::Release);
            s.probing.store(false, Ordering::Release);
            tracing::info!(store = s.store.name(), "cache store back: circuit closed");
            // A deferral that raced with the lines above finds `probing` unset and trips again.
            if !s.queue_empty() {
                s.has_pending.store(true, Ordering::Release);
                Breaker { inner: s }.trip();
            }
            return;
        }
        s.restore_pending(pending);
    }
}
