//! The circuit breaker in front of the store, and the invalidations it must not forget.
//!
//! After `threshold` consecutive failed store calls the breaker opens: the cache stops calling
//! the store (no timers, no waits; requests go straight to the service, marked
//! `fwd=bypass; detail=store-unavailable`) and one background task probes the store, backing off
//! from `open_for` up to 5 s. An invalidation that cannot be written is queued (up to
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

use crate::{CacheKey, handle::Shared};

const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub(crate) struct Breaker {
    open: AtomicBool,
    /// Set while invalidations wait in `pending`: the store is not read meanwhile.
    has_pending: AtomicBool,
    failures: AtomicU32,
    probing: AtomicBool,
    threshold: u32,
    open_for: Duration,
    max_pending: usize,
    pending: Mutex<Pending>,
}

#[derive(Debug, Default)]
struct Pending {
    tags: HashSet<String>,
    /// Too many to keep, or a purge failed: purge the namespace on recovery.
    purge: bool,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, open_for: Duration, max_pending: usize) -> Self {
        Breaker {
            open: AtomicBool::new(false),
            has_pending: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            probing: AtomicBool::new(false),
            threshold: threshold.max(1),
            open_for,
            max_pending,
            pending: Mutex::new(Pending::default()),
        }
    }

    /// Whether the store may be called.
    pub(crate) fn closed(&self) -> bool {
        !self.open.load(Ordering::Acquire) && !self.has_pending.load(Ordering::Acquire)
    }

    pub(crate) fn success(&self) {
        self.failures.store(0, Ordering::Release);
    }

    /// Counts a failure; opens the breaker at the threshold.
    pub(crate) fn failure(&self, shared: &Arc<Shared>) {
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= self.threshold {
            self.trip(shared);
        }
    }

    /// Keeps invalidations that did not reach the store, and stops reading it until they do.
    pub(crate) fn defer(&self, shared: &Arc<Shared>, tags: Vec<String>, purge: bool) {
        {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if purge {
                p.purge = true;
            }
            for t in tags {
                if p.tags.len() >= self.max_pending {
                    p.purge = true;
                    p.tags.clear();
                    break;
                }
                if !p.purge {
                    p.tags.insert(t);
                }
            }
            self.has_pending.store(true, Ordering::Release);
        }
        metrics::counter!("larder_deferred_invalidations_total").increment(1);
        self.trip(shared);
    }

    fn trip(&self, shared: &Arc<Shared>) {
        if !self.open.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                store = shared.store.name(),
                "cache store unavailable: circuit open, requests bypass it"
            );
            metrics::counter!("larder_breaker_opened_total").increment(1);
        }
        if !self.probing.swap(true, Ordering::AcqRel) {
            tokio::spawn(probe(Arc::downgrade(shared)));
        }
    }

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

/// Probes the store until it answers, replays deferred invalidations, then closes the breaker.
/// Stops when the cache is dropped.
async fn probe(shared: Weak<Shared>) {
    let Some(open_for) = shared.upgrade().map(|s| s.breaker.open_for) else {
        return;
    };
    let mut wait = open_for;
    loop {
        tokio::time::sleep(wait).await;
        let Some(s) = shared.upgrade() else {
            return;
        };
        wait = (wait * 2).min(MAX_BACKOFF);
        let probe_key = CacheKey::typed(&s.namespace, "larder:probe");
        let answered = tokio::time::timeout(s.store_timeout, s.store.get(&probe_key)).await;
        if !matches!(answered, Ok(Ok(_))) {
            continue;
        }
        let pending = s.breaker.take_pending();
        let replayed = if pending.purge {
            tokio::time::timeout(s.store_timeout, s.store.purge()).await
        } else if pending.tags.is_empty() {
            Ok(Ok(()))
        } else {
            let tags = pending.tags.iter().cloned().collect();
            tokio::time::timeout(s.store_timeout, s.store.invalidate_tags(tags)).await
        };
        if matches!(replayed, Ok(Ok(()))) {
            let b = &s.breaker;
            if !b.queue_empty() {
                // More invalidations were deferred while the replay ran: replay them too.
                wait = Duration::ZERO;
                continue;
            }
            b.failures.store(0, Ordering::Release);
            b.has_pending.store(false, Ordering::Release);
            b.open.store(false, Ordering::Release);
            b.probing.store(false, Ordering::Release);
            tracing::info!(store = s.store.name(), "cache store back: circuit closed");
            // A deferral that raced with the lines above finds `probing` unset and trips again.
            if !b.queue_empty() {
                b.has_pending.store(true, Ordering::Release);
                b.trip(&s);
            }
            return;
        }
        s.breaker.restore_pending(pending);
    }
}
