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

use crate::{CacheHandle, CacheKey, Entry};

const POLL_EVERY: Duration = Duration::from_millis(20);

/// A fill lock held by this process; released when dropped (or explicitly, after the write).
pub(crate) struct LockHeld {
    handle: CacheHandle,
    key: CacheKey,
    token: Option<String>,
}

impl LockHeld {
    pub(crate) async fn release(mut self) {
        if let Some(token) = self.token.take() {
            let fut = self.handle.shared.store.unlock(&self.key, token);
            let _ = self
                .handle
                .run(&self.handle.shared.typed, "unlock", fut)
                .await;
        }
    }
}

impl Drop for LockHeld {
    fn drop(&mut self) {
        let Some(token) = self.token.take() else {
            return;
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let handle = self.handle.clone();
            let key = self.key.clone();
            rt.spawn(async move {
                let fut = handle.shared.store.unlock(&key, token);
                let _ = handle.run(&handle.shared.typed, "unlock", fut).await;
            });
        }
    }
}

/// What the lock step decided.
pub(crate) enum Fill {
    /// Call the service (holding the lock, if one was taken).
    Call(Option<LockHeld>),
    /// Another instance filled the entry while this one waited.
    Found(Arc<Entry>),
}

/// Takes the fill lock for `key`, or waits (at most `wait`) for the instance that holds it to
/// store `key`; `usable` says whether a stored entry may answer this request.
pub(crate) async fn acquire(
    handle: &CacheHandle,
    key: &CacheKey,
    wait: Duration,
    usable: impl Fn(&Entry) -> bool,
) -> Fill {
    let shared = &handle.shared;
    if !shared.store.shares_locks() {
        return Fill::Call(None);
    }
    let deadline = tokio::time::Instant::now() + wait;
    // The lock outlives the wait a little, so a slow holder is not joined by everyone at once.
    let ttl = wait + Duration::from_secs(1);
    loop {
        let taken = handle
            .run(&shared.typed, "lock", shared.store.try_lock(key, ttl))
            .await;
        match taken {
            Ok(Some(token)) => {
                return Fill::Call(Some(LockHeld {
                    handle: handle.clone(),
                    key: key.clone(),
                    token: Some(token),
                }));
            }
            // The store is in trouble: no lock, no waiting.
            Err(_) => return Fill::Call(None),
            Ok(None) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Fill::Call(None);
        }
        tokio::time::sleep(POLL_EVERY).await;
        if let Ok(Some(entry)) = handle
            .run(&shared.typed, "get", shared.store.get(key))
            .await
        {
            if usable(&entry) {
                return Fill::Found(entry);
            }
        }
    }
}
