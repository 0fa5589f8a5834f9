//! The tiered store: an in-process L1 in front of Redis (L2), kept coherent by a backplane.
//!
//! Reads try the L1 first and fill it from Redis on a miss; writes go to both. Entries carry
//! birth stamps from Redis's invalidation clock, and the L1 records every invalidation with the
//! clock value Redis gave it, so one comparison means the same thing in both tiers. Each
//! invalidation is published on `{ns}:bus` in the same atomic step as its clock tick, so every
//! instance's backplane task applies invalidations to its L1 in stamp order, and knows up to
//! which stamp it has applied them all.
//!
//! What the L1 answers, and when:
//!
//! - **Only while it can vouch for itself.** The backplane pings Redis every 100 ms on its
//!   subscribed connection; the L1 is read only within [`L1_LEASE`] (300 ms) of sending a ping
//!   that was answered. When Redis or the connection stops answering, the L1 stops answering
//!   within the lease, and it is cleared before it is used again. A write whose invalidation
//!   fails is answered only after the lease (see [`Invalidation::l1_lease`]), so no other
//!   instance's L1 serves what that write replaced after the write's answer.
//! - **To the client that wrote, never older than its write.** A write's answer carries a
//!   consistency token (the stamp of its invalidation); a read that brings it back is answered
//!   from the L1 only once this instance has applied every invalidation up to that stamp, and
//!   from Redis before then ([`Entries::get_after`]).
//! - **To every other client, within the propagation delay**: from Redis's publish to the
//!   backplane's apply, recorded in the `larder_backplane_delay_seconds` histogram (and
//!   measured end to end by the `consistency` load test).
//!
//! When the backplane connection is lost the L1 is not read until the backplane has subscribed
//! again, and then it is cleared. L1 entries are also kept at most [`TieredStore::builder`]'s
//! `l1_max_ttl` (60 s by default).

use std::{
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use tokio::sync::watch;

use super::{
    Entries, FillLock, Invalidation, MemoryStore, Read, RedisStore, Store, StoreError, StoreFuture,
    Usage, redis::BusMessage,
};
use crate::{CacheKey, Entry};

/// How often the backplane proves that Redis still answers it.
const PING_EVERY: Duration = Duration::from_millis(100);
/// How long after sending a ping that was answered the L1 may still be read.
pub(crate) const L1_LEASE: Duration = Duration::from_millis(300);
const RETRY_AFTER: Duration = Duration::from_millis(200);
/// How long after subscribing the L1 takes only entries born since (longer than any store
/// deadline, after which an invalidation that was under way has landed or failed).
const SETTLE: Duration = Duration::from_secs(2);

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
    /// Nanoseconds after `epoch` until which the L1 may be read (the lease).
    trusted_until: AtomicU64,
    epoch: Instant,
    /// Every invalidation stamped at or below this has been applied to the L1.
    applied: AtomicU64,
    /// Entries born before this are not copied into the L1: an invalidation published before
    /// the backplane subscribed was missed, and its records may still be on their way to
    /// Redis. Raised to the clock at subscription, and lowered to 0 once [`SETTLE`] has passed
    /// (by then every such invalidation has landed or failed, and a failed one ends in a
    /// purge that is published).
    fill_floor: AtomicU64,
    /// Reads by where they were answered.
    reads: Reads,
    /// How long after Redis was last heard from the L1 may still answer during an outage
    /// ([`TieredStoreBuilder::serve_l1_during_outage`]); `None`: not at all.
    outage_window: Option<Duration>,
    /// Set when an invalidation could not be delivered, until the backplane subscribes again
    /// (and the L1 is emptied): a read from Redis under way then may have put back an entry
    /// the invalidation hid, so the outage mode does not read the L1 meanwhile.
    lost: AtomicBool,
    /// Dropped with the store, which stops the backplane task.
    _stop: watch::Sender<()>,
}

/// Builds a [`TieredStore`].
#[derive(Debug)]
pub struct TieredStoreBuilder {
    l2: RedisStore,
    l1_capacity: u64,
    l1_max_ttl: Duration,
    outage_window: Option<Duration>,
}

impl TieredStore {
    /// A tiered store over `l2`, with a 64 MiB L1 whose entries live at most 60 s.
    pub fn builder(l2: RedisStore) -> TieredStoreBuilder {
        TieredStoreBuilder {
            l2,
            l1_capacity: 64 * 1024 * 1024,
            l1_max_ttl: Duration::from_secs(60),
            outage_window: None,
        }
    }

    /// Whether the L1 is in use: the backplane is subscribed and Redis answered it within the
    /// lease.
    pub fn is_coherent(&self) -> bool {
        let s = &self.shared;
        s.coherent.load(Ordering::Acquire)
            && s.nanos_now() < s.trusted_until.load(Ordering::Acquire)
    }

    /// The stamp up to which this instance's L1 has applied every invalidation.
    pub fn applied_stamp(&self) -> u64 {
        self.shared.applied.load(Ordering::Acquire)
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

    /// Reads `key` from Redis and copies a visible entry into the L1.
    fn read_l2(&self, key: &CacheKey) -> StoreFuture<Read> {
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

    /// Reads `keys` from Redis in one call and copies the visible entries into the L1.
    fn read_l2_many(
        &self,
        keys: Vec<CacheKey>,
    ) -> impl Future<Output = Result<Vec<Read>, StoreError>> + Send + 'static {
        let this = self.clone();
        let l2 = self.shared.l2.get_many(&keys);
        async move {
            let reads = l2.await?;
            for (key, read) in keys.iter().zip(&reads) {
                if let Some(e) = read.visible_entry() {
                    this.l1_fill(key, e);
                }
            }
            Ok(reads)
        }
    }

    fn l1_fill(&self, key: &CacheKey, entry: &Arc<Entry>) {
        if self.is_coherent() && entry.born >= self.shared.fill_floor.load(Ordering::Acquire) {
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

    /// A degraded mode for Redis outages, off by default: for at most `window` after Redis
    /// was last heard from on the backplane (its pings), the cache serves what this instance's L1 holds (entries still
    /// fresh by their own lifetime), marked `Cache-Status: larder; hit; ttl=-N; detail=outage`
    /// (N: seconds since Redis was last heard from), instead of sending every request to the
    /// service. Past `window`, or for what the L1 does not hold, requests go to the service as
    /// without it.
    ///
    /// **The trade**: this relaxes the consistency contract. Another instance's write during
    /// the outage cannot reach this L1 (its invalidation waits for Redis, or is published on a
    /// backplane this instance no longer hears), so for up to `window` this instance may serve
    /// what such a write replaced. Requests with credentials on rules that may not share with
    /// them, requests carrying a consistency token and forced refreshes are never answered so. This instance's own
    /// writes stay exact: an invalidation it cannot deliver empties its L1 at once. When
    /// Redis is back the L1 is emptied before it is read again, as without this mode. Use it
    /// where an answer a few seconds old beats a flood of requests on the service during an
    /// outage (a catalogue, public pages), not for what a user just changed elsewhere.
    pub fn serve_l1_during_outage(mut self, window: Duration) -> Self {
        self.outage_window = Some(window);
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
            trusted_until: AtomicU64::new(0),
            epoch: Instant::now(),
            applied: AtomicU64::new(0),
            fill_floor: AtomicU64::new(u64::MAX),
            reads: Reads::default(),
            outage_window: self.outage_window,
            lost: AtomicBool::new(false),
            _stop: stop,
        });
        tokio::spawn(backplane(Arc::downgrade(&shared), stopped));
        TieredStore { shared }
    }
}

impl TieredState {
    fn nanos_now(&self) -> u64 {
        self.nanos_at(Instant::now())
    }

    fn nanos_at(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Redis answered a ping sent at `sent`: the L1 may be read until `sent` + the lease. If
    /// the lease had run out, the L1 may have missed an invalidation that was never published
    /// (one deferred by a writer that lost Redis): it is cleared first.
    fn renew(&self, sent: Instant) {
        let now = self.nanos_now();
        if now >= self.trusted_until.load(Ordering::Acquire) {
            self.l1.clear();
        }
        let until = self.nanos_at(sent + L1_LEASE);
        self.trusted_until.fetch_max(until, Ordering::AcqRel);
    }

    /// Applies one backplane message to the L1.
    fn apply(&self, payload: &[u8]) {
        let m = match serde_json::from_slice::<BusMessage>(payload) {
            Ok(m) => m,
            // Unknown traffic on our channel: assume the worst.
            Err(_) => {
                self.l1.clear();
                return;
            }
        };
        if m.purge {
            self.l1.purge_at(m.stamp);
        } else if !m.tags.is_empty() {
            self.l1.invalidate_at(&m.tags, m.stamp);
        }
        // Messages arrive in stamp order, so every invalidation up to this stamp published
        // since the subscription has been applied (and what was published before it is
        // covered by the clear and the fill floor).
        self.applied.fetch_max(m.stamp, Ordering::AcqRel);
        if !m.sync {
            let delay = Duration::from_millis(RedisStore::now_ms().saturating_sub(m.sent_ms));
            metrics::histogram!("larder_backplane_delay_seconds").record(delay.as_secs_f64());
        }
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
                s.fill_floor.store(u64::MAX, Ordering::Release);
                s.l1.clear();
                s.lost.store(false, Ordering::Release);
                s.applied.store(0, Ordering::Release);
                s.coherent.store(true, Ordering::Release);
                s.renew(Instant::now());
                // Every invalidation stamped at or below the clock now was published before
                // the sync message; those the subscription missed cannot hide entries born
                // since, the only ones the L1 takes until they have all landed.
                match s.l2.publish_sync().await {
                    Ok(clock) => s.fill_floor.store(clock, Ordering::Release),
                    Err(e) => {
                        tracing::debug!(error = %e, "cache backplane could not publish its sync")
                    }
                }
                tracing::info!("cache backplane subscribed; L1 in use");
            }
            let settle = tokio::time::sleep(SETTLE);
            tokio::pin!(settle);
            let mut settled = false;
            let mut ping = tokio::time::interval(PING_EVERY);
            ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    message = messages.next() => {
                        let Some(message) = message else { break };
                        let Some(s) = shared.upgrade() else { break };
                        s.apply(message.get_payload_bytes());
                    }
                    () = &mut settle, if !settled => {
                        settled = true;
                        let Some(s) = shared.upgrade() else { break };
                        s.fill_floor.store(0, Ordering::Release);
                    }
                    _ = ping.tick() => {
                        // A subscribed connection answers PING with an array (RESP2): any
                        // answer will do.
                        let sent = Instant::now();
                        let alive = tokio::time::timeout(L1_LEASE, sink.ping::<redis::Value>()).await;
                        if !matches!(alive, Ok(Ok(_))) {
                            break;
                        }
                        let Some(s) = shared.upgrade() else { break };
                        s.renew(sent);
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
                // Kept for the outage mode (it reads it only within its window); emptied
                // when the backplane subscribes again, as it is without the mode.
                if s.outage_window.is_none() {
                    s.l1.clear();
                }
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
        match self.l1_get(key) {
            Some(read) => {
                self.shared.reads.count(1, 0);
                StoreFuture::ready(Ok(read))
            }
            None => {
                self.shared.reads.count(0, 1);
                self.read_l2(key)
            }
        }
    }

    fn get_after(&self, key: &CacheKey, after: u64) -> StoreFuture<Read> {
        if self.applied_stamp() >= after {
            return self.get(key);
        }
        // This L1 has not yet applied the invalidation the client saw: ask Redis.
        self.read_l2(key)
    }

    fn get_many(&self, keys: &[CacheKey]) -> StoreFuture<Vec<Read>> {
        let mut found: Vec<Option<Read>> = keys.iter().map(|k| self.l1_get(k)).collect();
        let missing: Vec<usize> = (0..keys.len()).filter(|&i| found[i].is_none()).collect();
        let l2 = missing.len() as u64;
        self.shared.reads.count(keys.len() as u64 - l2, l2);
        if missing.is_empty() {
            return StoreFuture::ready(Ok(found.into_iter().flatten().collect()));
        }
        let wanted: Vec<CacheKey> = missing.iter().map(|&i| keys[i].clone()).collect();
        let l2 = self.read_l2_many(wanted);
        StoreFuture::pending(async move {
            for (i, read) in missing.into_iter().zip(l2.await?) {
                found[i] = Some(read);
            }
            Ok(found
                .into_iter()
                .map(|r| r.unwrap_or_else(Read::miss))
                .collect())
        })
    }

    fn get_many_after(&self, keys: &[CacheKey], after: u64) -> StoreFuture<Vec<Read>> {
        if self.applied_stamp() >= after {
            return self.get_many(keys);
        }
        StoreFuture::pending(self.read_l2_many(keys.to_vec()))
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

    fn consistency_token(&self) -> Option<u64> {
        Some(self.stamp())
    }

    fn l1_lease(&self) -> Duration {
        L1_LEASE
    }
}

/// TieredState by every instance: Redis's fill lock.
impl Store for TieredStore {
    fn fill_lock(&self) -> Option<&dyn FillLock> {
        Some(&self.shared.l2)
    }

    fn serves_during_outage(&self) -> bool {
        self.shared.outage_window.is_some()
    }

    fn read_during_outage(&self, key: &CacheKey, now_ms: u64) -> Option<(Arc<Entry>, Duration)> {
        let s = &self.shared;
        let window = s.outage_window?;
        if self.is_coherent() || s.lost.load(Ordering::Acquire) {
            return None;
        }
        let now = s.nanos_now();
        let trusted_until = s.trusted_until.load(Ordering::Acquire);
        if trusted_until == 0 {
            // Never coherent since it started: nothing in it was ever checked.
            return None;
        }
        // The lease ran `L1_LEASE` past the ping Redis last answered: heard from then.
        let heard = trusted_until.saturating_sub(u64::try_from(L1_LEASE.as_nanos()).unwrap_or(0));
        let since = Duration::from_nanos(now.saturating_sub(heard));
        if since > window {
            return None;
        }
        let entry = s.l1.read(key).visible()?;
        matches!(
            entry.freshness(now_ms),
            crate::entry::Freshness::Fresh { .. }
        )
        .then_some((entry, since))
    }

    fn lost_invalidation(&self) {
        // An invalidation that did not reach Redis: nothing in the L1 may answer any more
        // (the flag first: a read under way may fill the L1 again after the clear).
        self.shared.lost.store(true, Ordering::Release);
        self.shared.l1.clear();
    }

    fn usage(&self) -> Option<Usage> {
        let l1 = self.shared.l1.usage()?;
        Some(Usage {
            l1_reads: Some(self.shared.reads.l1.load(Ordering::Relaxed)),
            l2_reads: Some(self.shared.reads.l2.load(Ordering::Relaxed)),
            ..l1
        })
    }
}

/// Reads of a tiered store by where they were answered.
#[derive(Debug, Default)]
struct Reads {
    l1: AtomicU64,
    l2: AtomicU64,
    /// `larder_tiered_reads_total{level}`, registered at the first read.
    counters: std::sync::OnceLock<[metrics::Counter; 2]>,
}

impl Reads {
    fn count(&self, l1: u64, l2: u64) {
        let [c1, c2] = self.counters.get_or_init(|| {
            ["l1", "l2"]
                .map(|level| metrics::counter!("larder_tiered_reads_total", "level" => level))
        });
        if l1 > 0 {
            self.l1.fetch_add(l1, Ordering::Relaxed);
            c1.increment(l1);
        }
        if l2 > 0 {
            self.l2.fetch_add(l2, Ordering::Relaxed);
            c2.increment(l2);
        }
    }
}
