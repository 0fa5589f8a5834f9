//! Stampede protection across instances: a fill lock in the shared store.
//!
//! In-process single-flight makes one call per key per process; with
//! [`CacheHandleBuilder::distributed_lock`](crate::CacheHandleBuilder::distributed_lock) the
//! leader of each process also takes a lock in the store (`SET NX PX` with a token). The
//! instance that gets it calls the service and releases the lock (compare-and-delete) once its
//! entry is written; the others poll the store for that entry. The lock only saves work, it
//! guarantees nothing: if it cannot be taken, or its holder dies, or the wait runs out, the
//! request calls the service itself.

use std::{sync::Arc, time::Duration};

use crate::{
    CacheKey, Entry,
    engine::breaker::{Breaker, Op},
    stats::RouteStats,
    store::{Read, read_after},
};

const POLL_EVERY: Duration = Duration::from_millis(20);

/// A fill lock held by this process; released when dropped (or explicitly, after the write).
pub(crate) struct LockHeld {
    breaker: Breaker,
    /// Where failures of the lock's own calls are counted.
    stats: Arc<RouteStats>,
    key: CacheKey,
    token: Option<String>,
}

impl LockHeld {
    pub(crate) async fn release(mut self) {
        if let Some(token) = self.token.take() {
            unlock(&self.breaker, &self.stats, &self.key, token).await;
        }
    }
}

async fn unlock(breaker: &Breaker, stats: &RouteStats, key: &CacheKey, token: String) {
    if let Some(fill_lock) = breaker.store().fill_lock() {
        let fut = fill_lock.unlock(key, token);
        let _ = breaker.call(stats, Op::Unlock, fut).await;
    }
}

impl Drop for LockHeld {
    fn drop(&mut self) {
        let Some(token) = self.token.take() else {
            return;
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let breaker = self.breaker.clone();
            let stats = Arc::clone(&self.stats);
            let key = self.key.clone();
            rt.spawn(async move { unlock(&breaker, &stats, &key, token).await });
        }
    }
}

/// What the lock step decided.
pub(crate) enum LockOutcome {
    /// Call the service (holding the lock, if one was taken).
    Call(Option<LockHeld>),
    /// Another instance filled the entry while this one waited.
    Found(Arc<Entry>),
}

/// Takes the fill lock for `key`, or waits (at most `wait`) for the instance that holds it to
/// store `key`; `usable` says whether a stored entry may answer this request.
pub(crate) async fn acquire(
    breaker: &Breaker,
    stats: &Arc<RouteStats>,
    key: &CacheKey,
    after: Option<u64>,
    wait: Duration,
    usable: impl Fn(&Entry) -> bool,
) -> LockOutcome {
    let store = breaker.store();
    let Some(fill_lock) = store.fill_lock() else {
        return LockOutcome::Call(None);
    };
    let deadline = tokio::time::Instant::now() + wait;
    // The lock outlives the wait a little, so a slow holder is not joined by everyone at once.
    let ttl = wait + Duration::from_secs(1);
    loop {
        let taken = breaker
            .call(stats, Op::Lock, fill_lock.try_lock(key, ttl))
            .await;
        match taken {
            Ok(Some(token)) => {
                return LockOutcome::Call(Some(LockHeld {
                    breaker: breaker.clone(),
                    stats: Arc::clone(stats),
                    key: key.clone(),
                    token: Some(token),
                }));
            }
            // The store is in trouble: no lock, no waiting.
            Err(_) => return LockOutcome::Call(None),
            Ok(None) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return LockOutcome::Call(None);
        }
        tokio::time::sleep(POLL_EVERY).await;
        let fut = read_after(&**store, key, after);
        let read = breaker.call(stats, Op::Get, fut).await;
        if let Some(entry) = read.ok().and_then(Read::visible) {
            if usable(&entry) {
                return LockOutcome::Found(entry);
            }
        }
    }
}
