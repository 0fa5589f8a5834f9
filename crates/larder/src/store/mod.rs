//! Where entries live: the [`Store`] trait and its implementations.
//!
//! A store keeps [`Entry`] values by [`CacheKey`] and makes tagged entries unreachable in one
//! step: [`Store::invalidate_tags`] costs the same whether a tag marks one entry or a million,
//! because entries record the store's [`stamp`](Store::stamp) from before their origin call and
//! a read hides every entry born before one of its tags was invalidated.
//!
//! Store calls return a [`StoreFuture`], which is either already complete (an in-process store
//! answers without allocating or suspending) or a boxed future (a network store). The layer puts
//! a deadline only on the second kind, and treats every [`StoreError`] as a miss.

mod memory;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
mod tiered;

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

#[cfg(feature = "redis")]
pub use self::redis::{RedisStore, RedisStoreBuilder};
pub use memory::{MemoryStore, MemoryStoreBuilder};
#[cfg(feature = "redis")]
pub use tiered::{TieredStore, TieredStoreBuilder};

use crate::{CacheKey, Entry};

/// A backend for entries.
///
/// Implementations check entries' tags and [`Entry::born`] on read: `get` never returns an
/// entry that an invalidation made unreachable.
pub trait Store: Send + Sync + 'static {
    /// A short name for logs and statistics (`"memory"`, `"redis"`).
    fn name(&self) -> &'static str;

    /// The current invalidation stamp. An entry whose origin call started at stamp `s` is
    /// hidden by any invalidation of one of its tags that happens after `s` was read.
    fn stamp(&self) -> u64;

    /// Reads one entry.
    fn get(&self, key: &CacheKey) -> StoreFuture<Option<Arc<Entry>>>;

    /// Reads many entries at once (one round trip for a network store).
    fn get_many(&self, keys: &[CacheKey]) -> StoreFuture<Vec<Option<Arc<Entry>>>>;

    /// Stores an entry. A store drops the entry instead if its tags were invalidated after it
    /// was born.
    fn put(&self, key: CacheKey, entry: Arc<Entry>) -> StoreFuture<()>;

    /// Removes one entry.
    fn remove(&self, key: &CacheKey) -> StoreFuture<()>;

    /// Makes every entry carrying one of `tags` unreachable, at a cost that does not grow
    /// with the number of entries.
    fn invalidate_tags(&self, tags: Vec<String>) -> StoreFuture<()>;

    /// Makes every entry unreachable.
    fn purge(&self) -> StoreFuture<()>;

    /// Tries to take the cross-instance fill lock for `key` for at most `ttl`; `Some(token)`
    /// when taken. Stores that serve one process need no lock: the default always grants it.
    fn try_lock(&self, key: &CacheKey, ttl: std::time::Duration) -> StoreFuture<Option<String>> {
        let _ = (key, ttl);
        StoreFuture::ready(Ok(Some(String::new())))
    }

    /// Releases a lock taken with `try_lock`, only if `token` still holds it.
    fn unlock(&self, key: &CacheKey, token: String) -> StoreFuture<()> {
        let _ = (key, token);
        StoreFuture::ready(Ok(()))
    }

    /// Whether `try_lock` coordinates several processes (so taking it is worth a round trip).
    fn shares_locks(&self) -> bool {
        false
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
}

impl fmt::Display for StoreErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreErrorKind::Timeout => "timeout",
            StoreErrorKind::Backend => "backend",
            StoreErrorKind::Corrupt => "corrupt",
            StoreErrorKind::Unavailable => "unavailable",
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
    inner: Inner<T>,
}

enum Inner<T> {
    Ready(Option<Result<T, StoreError>>),
    Pending(BoxFuture<T>),
}

impl<T> StoreFuture<T> {
    /// A call that has already finished.
    pub fn ready(result: Result<T, StoreError>) -> Self {
        StoreFuture {
            inner: Inner::Ready(Some(result)),
        }
    }

    /// A call still under way.
    pub fn pending<F>(future: F) -> Self
    where
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        StoreFuture {
            inner: Inner::Pending(Box::pin(future)),
        }
    }

    /// Takes the result if the call finished at once.
    pub(crate) fn try_ready(&mut self) -> Option<Result<T, StoreError>> {
        match &mut self.inner {
            Inner::Ready(r) => r.take(),
            Inner::Pending(_) => None,
        }
    }
}

// The ready value is never pinned and the pending future is boxed.
impl<T> Unpin for StoreFuture<T> {}

impl<T> Future for StoreFuture<T> {
    type Output = Result<T, StoreError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().inner {
            Inner::Ready(r) => Poll::Ready(r.take().expect("StoreFuture polled after completion")),
            Inner::Pending(f) => f.as_mut().poll(cx),
        }
    }
}

impl<T> fmt::Debug for StoreFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.inner {
            Inner::Ready(_) => "StoreFuture::Ready",
            Inner::Pending(_) => "StoreFuture::Pending",
        })
    }
}
