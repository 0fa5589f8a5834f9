//! The tiered store: an in-process L1 in front of Redis (L2), kept coherent by a backplane.
//!
//! Reads try the L1 first and fill it from Redis on a miss; writes go to both. Entries carry
//! birth stamps from Redis's invalidation clock, and the L1 records every invalidation with the
//! clock value Redis gave it, so one comparison means the same thing in both tiers. Each
//! invalidation is published on `{ns}:bus`; every instance's backplane task applies it to its L1
//! within the pub/sub delivery time. When the backplane connection is lost (or its liveness ping
//! fails) the L1 cannot know what it missed: it is not read until the backplane has subscribed
//! again, and then it is cleared. L1 entries are also kept at most [`TieredStore::builder`]'s
//! `l1_max_ttl` (60 s by default), which bounds staleness if a partition hides messages from a
//! connection that still looks alive.

use std::{
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;
use tokio::sync::watch;

use super::{
    Entries, FillLock, Invalidation, MemoryStore, Read, RedisStore, Store, StoreFuture,
    redis::BusMessage,
};
use crate::{CacheKey, Entry};

const PING_EVERY: Duration = Duration::from_secs(1);
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// An in-process L1 ([`MemoryStore`]) in front of a [`RedisStore`].
///
/// ```no_run
/// # async fn demo() -> Result<(), larder::StoreError> {
/// use larder::{CacheHandle, store::{RedisStore, TieredStore}};
///
/// let l2 = RedisStore::builder("redis://cache:6379/").build().await?;
/// let cache = CacheHandle::new(TieredStore::builder(l2).l1_capacity(64 * 1024 * 1024).build());
/// # let _ = cache; Ok(()) }
/// ```
#[derive(Clone)]
pub struct TieredStore {
    shared: Arc<TieredState>,
}

struct TieredState {
    l1: MemoryStore,
    l2: RedisStore,
    /// True while the backplane is subscribed: only then may the L1 be read.
    coherent: AtomicBool,
    /// Dropped with the store, which stops the backplane task.
    _stop: watch::Sender<()>,
}

/// Builds a [`TieredStore`].
#[derive(Debug)]
pub struct TieredStoreBuilder {
    l2: RedisStore,
    l1_capacity: u64,
    l1_max_ttl: Duration,
}

impl TieredStore {
    /// A tiered store over `l2`, with a 64 MiB L1 whose entries live at most 60 s.
    pub fn builder(l2: RedisStore) -> TieredStoreBuilder {
        TieredStoreBuilder {
            l2,
            l1_capacity: 64 * 1024 * 1024,
            l1_max_ttl: Duration::from_secs(60),
        }
    }

    /// Whether the L1 is in use (the backplane is subscribed).
    pub fn is_coherent(&self) -> bool {
        self.shared.coherent.load(Ordering::Acquire)
    }

    /// The L1's read of `key`, if the L1 is in use and holds an entry its marks let be seen.
    fn l1_get(&self, key: &CacheKey) -> Option<Read> {
        if !self.is_coherent() {
            return None;
        }
        let read = self.shared.l1.read(key);
        // The same rule the cache applies: an entry the L1's records hide is read from Redis.
        read.is_visible().then_some(read)
    }

    fn l1_fill(&self, key: &CacheKey, entry: &Arc<Entry>) {
        if self.is_coherent() {
            self.shared.l1.insert(key, Arc::clone(entry));
        }
    }
}

impl TieredStoreBuilder {
    /// The L1's size in bytes.
    pub fn l1_capacity(mut self, bytes: u64) -> Self {
        self.l1_capacity = bytes;
        self
    }

    /// The longest an entry stays in the L1 before it is read from Redis again.
    pub fn l1_max_ttl(mut self, ttl: Duration) -> Self {
        self.l1_max_ttl = ttl;
        self
    }

    /// Builds the store and starts its backplane task (on the current tokio runtime).
    pub fn build(self) -> TieredStore {
        let l1 = MemoryStore::builder()
            .max_capacity(self.l1_capacity)
            .max_ttl(self.l1_max_ttl)
            .build();
        let (stop, stopped) = watch::channel(());
        let shared = Arc::new(TieredState {
            l1,
            l2: self.l2,
            coherent: AtomicBool::new(false),
            _stop: stop,
        });
        tokio::spawn(backplane(Arc::downgrade(&shared), stopped));
        TieredStore { shared }
    }
}

/// Subscribes to the invalidation channel and applies what arrives to the L1, forever
/// reconnecting; clears the L1 whenever it may have missed something.
async fn backplane(shared: Weak<TieredState>, mut stopped: watch::Receiver<()>) {
    let Some((client, channel)) = shared.upgrade().map(|s| s.l2.backplane()) else {
        return;
    };
    loop {
        let session = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            let (mut sink, mut messages) = pubsub.split();
            // Subscribed: whatever was published before this point may have been missed.
            if let Some(s) = shared.upgrade() {
                s.l1.clear();
                s.coherent.store(true, Ordering::Release);
                tracing::info!("cache backplane subscribed; L1 in use");
            }
            let start = tokio::time::Instant::now() + PING_EVERY;
            let mut ping = tokio::time::interval_at(start, PING_EVERY);
            loop {
                tokio::select! {
                    message = messages.next() => {
                        let Some(message) = message else { break };
                        let Some(s) = shared.upgrade() else { break };
                        match serde_json::from_slice::<BusMessage>(message.get_payload_bytes()) {
                            Ok(m) if m.purge => s.l1.purge_at(m.stamp),
                            Ok(m) => s.l1.invalidate_at(&m.tags, m.stamp),
                            // Unknown traffic on our channel: assume the worst.
                            Err(_) => s.l1.clear(),
                        }
                    }
                    _ = ping.tick() => {
                        // A subscribed connection answers PING with an array (RESP2): any answer will do.
                        let alive = tokio::time::timeout(PING_EVERY, sink.ping::<redis::Value>()).await;
                        if !matches!(alive, Ok(Ok(_))) {
                            break;
                        }
                    }
                }
            }
            Ok::<(), redis::RedisError>(())
        };
        tokio::select! {
            result = session => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "cache backplane could not subscribe");
                }
            }
            _ = stopped.changed() => return,
        }
        match shared.upgrade() {
            Some(s) => {
                if s.coherent.swap(false, Ordering::AcqRel) {
                    tracing::warn!("cache backplane lost; L1 unused until it is back");
                }
                s.l1.clear();
            }
            None => return,
        }
        tokio::time::sleep(RETRY_AFTER).await;
    }
}

impl std::fmt::Debug for TieredStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TieredStore")
            .field("l1", &self.shared.l1)
            .field("l2", &self.shared.l2)
            .field("coherent", &self.is_coherent())
            .finish()
    }
}

impl Entries for TieredStore {
    fn name(&self) -> &'static str {
        "tiered"
    }

    fn get(&self, key: &CacheKey) -> StoreFuture<Read> {
        if let Some(read) = self.l1_get(key) {
            return StoreFuture::ready(Ok(read));
        }
        let this = self.clone();
        let key = key.clone();
        let l2 = self.shared.l2.get(&key);
        StoreFuture::pending(async move {
            let read = l2.await?;
            if let Some(e) = read.visible_entry() {
                this.l1_fill(&key, e);
            }
            Ok(read)
        })
    }

    fn get_many(&self, keys: &[CacheKey]) -> StoreFuture<Vec<Read>> {
        let mut found: Vec<Option<Read>> = keys.iter().map(|k| self.l1_get(k)).collect();
        let missing: Vec<usize> = (0..keys.len()).filter(|&i| found[i].is_none()).collect();
        if missing.is_empty() {
            return StoreFuture::ready(Ok(found.into_iter().flatten().collect()));
        }
        let this = self.clone();
        let wanted: Vec<CacheKey> = missing.iter().map(|&i| keys[i].clone()).collect();
        let l2 = self.shared.l2.get_many(&wanted);
        StoreFuture::pending(async move {
            let reads = l2.await?;
            for ((i, key), read) in missing.into_iter().zip(&wanted).zip(reads) {
                if let Some(e) = read.visible_entry() {
                    this.l1_fill(key, e);
                }
                found[i] = Some(read);
            }
            Ok(found
                .into_iter()
                .map(|r| r.unwrap_or_else(Read::miss))
                .collect())
        })
    }

    fn put(&self, key: CacheKey, entry: Arc<Entry>) -> StoreFuture<()> {
        self.l1_fill(&key, &entry);
        self.shared.l2.put(key, entry)
    }

    fn remove(&self, key: &CacheKey) -> StoreFuture<()> {
        self.shared.l1.delete(key);
        self.shared.l2.remove(key)
    }
}

impl Invalidation for TieredStore {
    fn stamp(&self) -> u64 {
        self.shared.l2.stamp()
    }

    fn invalidate_tags(&self, tags: Vec<String>) -> StoreFuture<()> {
        let this = self.clone();
        StoreFuture::pending(async move {
            match this.shared.l2.invalidate_stamped(tags.clone()).await {
                // Applied here at once; the backplane brings it to the other instances.
                Ok(stamp) => {
                    this.shared.l1.invalidate_at(&tags, stamp);
                    Ok(())
                }
                // Redis did not take it: the handle defers it and stops reading until it is
                // replayed; drop the L1 so nothing it covers survives the outage here.
                Err(e) => {
                    this.shared.l1.clear();
                    Err(e)
                }
            }
        })
    }

    fn purge(&self) -> StoreFuture<()> {
        let this = self.clone();
        StoreFuture::pending(async move {
            match this.shared.l2.purge_stamped().await {
                Ok(stamp) => {
                    this.shared.l1.purge_at(stamp);
                    Ok(())
                }
                Err(e) => {
                    this.shared.l1.clear();
                    Err(e)
                }
            }
        })
    }
}

/// TieredState by every instance: Redis's fill lock.
impl Store for TieredStore {
    fn fill_lock(&self) -> Option<&dyn FillLock> {
        Some(&self.shared.l2)
    }
}
