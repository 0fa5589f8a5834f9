//! Where entries live: the store traits and their implementations.
//!
//! A store does three separate jobs, each its own trait:
//!
//! - [`Entries`]: keeps [`Entry`] values by [`CacheKey`]. Each read returns a [`Read`], the
//!   entry as stored plus the [`Marks`] of the store's invalidation records for it; the cache
//!   applies the visibility rule to it (see [`Read::visible`]), so no store applies it, and
//!   none can get it wrong.
//! - [`Invalidation`]: the invalidation clock. [`Invalidation::invalidate_tags`] costs the
//!   same whether a tag marks one entry or a million, because entries record the store's
//!   [`stamp`](Invalidation::stamp) from before their origin call, and a read's marks hide
//!   every entry born before one of its tags was invalidated.
//! - [`FillLock`]: the cross-instance fill lock, offered only by stores that several
//!   processes share ([`Store::fill_lock`]).
//!
//! [`Store`] is what a [`CacheHandle`](crate::CacheHandle) takes: entries and invalidation,
//! and the fill lock if there is one. Store calls return a [`StoreFuture`], which is either
//! already complete (an in-process store answers without allocating or suspending) or a
//! boxed future (a network store). The layer puts a deadline only on the second kind, and
//! treats every [`StoreError`] as a miss.
//!
//! A store outside the process can keep entries in the versioned envelope of
//! [`codec`](crate::codec), as the Redis store does.

mod memory;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
mod tiered;
mod visibility;

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

#[cfg(feature = "redis")]
pub use self::redis::{EvictionPolicy, RedisStore, RedisStoreBuilder};
pub use memory::{MemoryStore, MemoryStoreBuilder};
#[cfg(feature = "redis")]
pub use tiered::{TieredStore, TieredStoreBuilder};
pub use visibility::{Marks, Read};

use crate::{CacheKey, Entry};

/// Keeps entries by key: the data.
pub trait Entries: Send + Sync + 'static {
    /// A short name for logs and statistics (`"memory"`, `"redis"`).
    fn name(&self) -> &'static str;

    /// Reads one entry, with the marks that decide whether it may be seen.
    fn get(&self, key: &CacheKey) -> StoreFuture<Read>;

    /// Reads one entry for a client that has seen the invalidation stamped `after` (its
    /// consistency token, see [`Invalidation::consistency_token`]): a store whose local copies
    /// may lag behind (a tiered store's L1) answers from where that invalidation is known.
    /// The default is [`get`](Self::get), right for every store whose reads all see the
    /// same records.
    fn get_after(&self, key: &CacheKey, after: u64) -> StoreFuture<Read> {
        let _ = after;
        self.get(key)
    }

    /// Reads many entries at once (one round trip for a network store), one [`Read`] per key
    /// in order.
    fn get_many(&self, keys: &[CacheKey]) -> StoreFuture<Vec<Read>>;

    /// Reads many entries for a client that has seen the invalidation stamped `after` (see
    /// [`get_after`](Self::get_after)); the default is [`get_many`](Self::get_many).
    fn get_many_after(&self, keys: &[CacheKey], after: u64) -> StoreFuture<Vec<Read>> {
        let _ = after;
        self.get_many(keys)
    }

    /// Stores an entry. A store may drop it instead when its marks already hide it.
    fn put(&self, key: CacheKey, entry: Arc<Entry>) -> StoreFuture<()>;

    /// Removes one entry.
    fn remove(&self, key: &CacheKey) -> StoreFuture<()>;
}

/// The invalidation clock and its records.
pub trait Invalidation: Send + Sync + 'static {
    /// The current invalidation stamp. An entry whose origin call started at stamp `s` is
    /// hidden by any invalidation of one of its tags that happens after `s` was read.
    fn stamp(&self) -> u64;

    /// Makes every entry carrying one of `tags` unreachable, at a cost that does not grow
    /// with the number of entries: records the tags' invalidation with a new stamp, which
    /// later reads report in their [`Marks`].
    fn invalidate_tags(&self, tags: Vec<String>) -> StoreFuture<()>;

    /// Makes every entry unreachable (raises the purge floor of later reads' marks).
    fn purge(&self) -> StoreFuture<()>;

    /// What a client must carry to read its own writes on every instance, taken after a
    /// write's invalidation: `Some` for a store whose instances keep local copies that learn
    /// of invalidations later (a tiered store's L1), `None` (the default) when every read
    /// sees the same records. The layer sends it in the `larder-consistency` response header
    /// and honours it in the request header of the same name.
    fn consistency_token(&self) -> Option<u64> {
        None
    }

    /// How long another instance may still answer from its local copies after the shared
    /// store stops answering it (a tiered store's L1 lease; zero, the default, for stores
    /// without local copies). A write whose invalidation fails is answered only this long
    /// after, so that no copy the invalidation should have hidden outlives its answer.
    fn l1_lease(&self) -> Duration {
        Duration::ZERO
    }
}

/// The cross-instance fill lock: one instance fills a missing key, the others wait for it.
pub trait FillLock: Send + Sync + 'static {
    /// Tries to take the lock for `key` for at most `ttl`; `Some(token)` when taken.
    fn try_lock(&self, key: &CacheKey, ttl: Duration) -> StoreFuture<Option<String>>;

    /// Releases a lock taken with `try_lock`, only if `token` still holds it.
    fn unlock(&self, key: &CacheKey, token: String) -> StoreFuture<()>;
}

/// A store a [`CacheHandle`](crate::CacheHandle) can use: entries and their invalidation, and
/// a fill lock if several processes share it.
pub trait Store: Entries + Invalidation {
    /// The fill lock, for a store that several processes share; `None` (the default) for a
    /// store that serves one process, whose in-process single-flight is enough.
    fn fill_lock(&self) -> Option<&dyn FillLock> {
        None
    }

    /// What the store holds in this process, if it can tell (`None`, the default, for a
    /// store that holds nothing here, such as Redis).
    fn usage(&self) -> Option<Usage> {
        None
    }

    /// Whether [`read_during_outage`](Self::read_during_outage) may answer (the tiered store
    /// built with `serve_l1_during_outage`).
    fn serves_during_outage(&self) -> bool {
        false
    }

    /// While the store is unavailable (the cache's circuit is open): an entry this process
    /// still holds for `key`, fresh at `now_ms`, and how long the store has been unheard
    /// from. `None` (the default): requests go to the service.
    fn read_during_outage(&self, key: &CacheKey, now_ms: u64) -> Option<(Arc<Entry>, Duration)> {
        let _ = (key, now_ms);
        None
    }

    /// Told when an invalidation could not be delivered and waits for the store's recovery:
    /// a store that keeps copies in this process drops them (the default does nothing).
    fn lost_invalidation(&self) {}
}

/// What a store holds in this process: in [`CacheHandle::stats`](crate::CacheHandle::stats)
/// and as the gauges `larder_entries` and `larder_bytes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// Entries held (the memory store's, or the tiered store's L1).
    pub entries: u64,
    /// Their weight in bytes (bodies, headers and tags), as the capacity counts it.
    pub bytes: u64,
    /// On the tiered store: reads answered from the L1 (`larder_tiered_reads_total{level="l1"}`).
    pub l1_reads: Option<u64>,
    /// On the tiered store: reads that went to Redis (`larder_tiered_reads_total{level="l2"}`).
    pub l2_reads: Option<u64>,
}

/// A read of `key` for a client with consistency token `after`, if it carries one (see
/// [`Entries::get_after`]).
pub(crate) fn read_after(
    store: &dyn Store,
    key: &CacheKey,
    after: Option<u64>,
) -> StoreFuture<Read> {
    match after {
        Some(after) => store.get_after(key, after),
        None => store.get(key),
    }
}

/// The error a store reports. The layer never turns it into an error response: it counts it,
/// logs it, and serves from the origin.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
}

/// What went wrong in a store call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The call did not finish before its deadline.
    Timeout,
    /// The backend could not be reached or answered with an error.
    Backend,
    /// A stored value could not be decoded.
    Corrupt,
    /// The circuit breaker is open; the backend was not called.
    Unavailable,
    /// A value could not be encoded for the store.
    Encode,
}

impl fmt::Display for StoreErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreErrorKind::Timeout => "timeout",
            StoreErrorKind::Backend => "backend",
            StoreErrorKind::Corrupt => "corrupt",
            StoreErrorKind::Unavailable => "unavailable",
            StoreErrorKind::Encode => "encode",
        })
    }
}

impl StoreError {
    /// A new error.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        StoreError {
            kind,
            message: message.into(),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'static>>;

/// The result of a store call: ready at once, or a boxed future.
#[must_use = "futures do nothing unless polled"]
pub struct StoreFuture<T> {
    inner: Progress<T>,
}

enum Progress<T> {
    Ready(Option<Result<T, StoreError>>),
    Pending(BoxFuture<T>),
}

impl<T> StoreFuture<T> {
    /// A call that has already finished.
    pub fn ready(result: Result<T, StoreError>) -> Self {
        StoreFuture {
            inner: Progress::Ready(Some(result)),
        }
    }

    /// A call still under way.
    pub fn pending<F>(future: F) -> Self
    where
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        StoreFuture {
            inner: Progress::Pending(Box::pin(future)),
        }
    }

    /// Takes the result if the call finished at once.
    pub(crate) fn try_ready(&mut self) -> Option<Result<T, StoreError>> {
        match &mut self.inner {
            Progress::Ready(r) => r.take(),
            Progress::Pending(_) => None,
        }
    }
}

// The ready value is never pinned and the pending future is boxed.
impl<T> Unpin for StoreFuture<T> {}

impl<T> Future for StoreFuture<T> {
    type Output = Result<T, StoreError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().inner {
            Progress::Ready(r) => {
                Poll::Ready(r.take().expect("StoreFuture polled after completion"))
            }
            Progress::Pending(f) => f.as_mut().poll(cx),
        }
    }
}

impl<T> fmt::Debug for StoreFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.inner {
            Progress::Ready(_) => "StoreFuture::Ready",
            Progress::Pending(_) => "StoreFuture::Pending",
        })
    }
}
