//! The shared handle: one store, its statistics and flights, cloned into every layer.

use std::{fmt, sync::Arc, time::Duration};

use crate::{
    CacheKey, KeyOptions, StatsSnapshot,
    engine::{
        breaker::{Breaker, BreakerSettings, Deferred, Op},
        clock::Clock,
        coalesce::Coalescer,
        journal::Journal,
        predictor::Predictor,
        refill::{self, Refills},
    },
    middleware::status::XCache,
    stats::{Gauges, RouteStats, Stats},
    store::{MemoryStore, Store, StoreError},
};

const DEFAULT_MAX_BODY: usize = 8 * 1024 * 1024;
const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(250);
const DEFAULT_COLLAPSE_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_BREAKER_THRESHOLD: u32 = 3;
const DEFAULT_BREAKER_OPEN_FOR: Duration = Duration::from_millis(500);

/// A cache: a store plus the statistics, single-flight state and settings that every layer
/// built from it shares. Cloning is cheap (an `Arc`).
///
/// ```
/// use std::time::Duration;
/// use larder::{CacheHandle, MemoryStore, Rule};
///
/// let cache = CacheHandle::builder(MemoryStore::new(64 * 1024 * 1024))
///     .namespace("dashboard")
///     .x_cache()
///     .build();
/// let layer = cache.layer(Rule::new("profile").ttl(Duration::from_secs(300)));
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct CacheHandle {
    pub(crate) shared: Arc<CacheState>,
    /// The consistency token this handle's typed reads honour (see [`CacheHandle::reading_after`]).
    pub(crate) after: Option<u64>,
}

/// What every layer and typed call of one cache shares.
pub(crate) struct CacheState {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) namespace: Box<str>,
    pub(crate) clock: Clock,
    pub(crate) stats: Stats,
    /// The one coalescer of every entry point (layers, refreshes, typed calls).
    pub(crate) coalescer: Arc<Coalescer>,
    /// Keys whose responses proved uncacheable: their misses skip the flight.
    pub(crate) predictor: Predictor,
    pub(crate) collapse_timeout: Duration,
    pub(crate) max_body_size: usize,
    pub(crate) x_cache: XCache,
    pub(crate) reloads: Reloads,
    /// Every store call goes through it: deadline, failure counting, deferred invalidations.
    pub(crate) breaker: Breaker,
    /// How long a miss waits for another instance's fill; `None` when the lock is off.
    pub(crate) lock_wait: Option<Duration>,
    /// Counters for calls that belong to no route (typed values, admin calls).
    pub(crate) typed: Arc<RouteStats>,
    /// What rules with `refill_after_write` ask again after a write.
    pub(crate) refills: Refills,
    /// The URLs whose responses vary, and their variants stored (bounded).
    pub(crate) variants: crate::engine::variants::Variants,
    /// The TTL of rules that set none ([`CacheHandleBuilder::default_ttl`]).
    pub(crate) default_ttl: Option<Duration>,
    /// The key options of rules that set none ([`CacheHandleBuilder::default_key`]).
    pub(crate) default_key: Option<KeyOptions>,
}

impl CacheState {
    /// The figures of the gauges, read from the store and the breaker (no counters).
    fn gauges(&self) -> Gauges {
        Gauges {
            store_available: self.breaker.available(),
            pending_invalidations: self.breaker.pending(),
            usage: self.store.usage(),
        }
    }

    /// Sets the gauges from `gauges`.
    fn report(&self, gauges: &Gauges) {
        crate::stats::report_gauges(self.store.name(), &self.namespace, gauges);
    }
}

/// How often the gauges are set from the handle's state.
const GAUGES_EVERY: Duration = Duration::from_secs(1);

/// Sets the gauges every [`GAUGES_EVERY`] while the handle lives (it holds it weakly).
fn report_gauges_in_background(state: std::sync::Weak<CacheState>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(GAUGES_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(state) = state.upgrade() else {
                return;
            };
            state.report(&state.gauges());
        }
    });
}

/// What a request's `no-cache` or `max-age=0` (a browser reload) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reloads {
    /// Served from the cache like any request (the default).
    Ignore,
    /// A miss: the origin is asked (RFC 9111 §5.2.1).
    Honor,
}

/// Builds a [`CacheHandle`].
pub struct CacheHandleBuilder {
    store: Arc<dyn Store>,
    namespace: Box<str>,
    store_timeout: Duration,
    collapse_timeout: Duration,
    max_body_size: usize,
    x_cache: XCache,
    reloads: Reloads,
    breaker_threshold: u32,
    breaker_open_for: Duration,
    journal: Option<std::path::PathBuf>,
    lock_wait: Option<Duration>,
    refill_rate: u32,
    refill_concurrency: usize,
    refill_window: Duration,
    default_ttl: Option<Duration>,
    default_key: Option<KeyOptions>,
}

impl CacheHandle {
    /// A cache over `store` with the default settings.
    pub fn new(store: impl Store) -> Self {
        Self::builder(store).build()
    }

    /// A cache over a default [`MemoryStore`] (256 MiB).
    pub fn in_memory() -> Self {
        Self::new(MemoryStore::default())
    }

    /// Starts a builder over `store`.
    pub fn builder(store: impl Store) -> CacheHandleBuilder {
        CacheHandleBuilder {
            store: Arc::new(store),
            namespace: "larder".into(),
            store_timeout: DEFAULT_STORE_TIMEOUT,
            collapse_timeout: DEFAULT_COLLAPSE_TIMEOUT,
            max_body_size: DEFAULT_MAX_BODY,
            x_cache: XCache::Omit,
            reloads: Reloads::Ignore,
            breaker_threshold: DEFAULT_BREAKER_THRESHOLD,
            breaker_open_for: DEFAULT_BREAKER_OPEN_FOR,
            journal: None,
            lock_wait: None,
            refill_rate: refill::DEFAULT_RATE,
            refill_concurrency: refill::DEFAULT_CONCURRENCY,
            refill_window: refill::WINDOW,
            default_ttl: None,
            default_key: None,
        }
    }

    /// Makes every entry carrying one of `tags` unreachable, in this process and (with a
    /// shared store) on every instance.
    pub async fn invalidate_tags<I, T>(&self, tags: I) -> Result<(), StoreError>
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        let tags: Vec<String> = tags.into_iter().map(Into::into).collect();
        if tags.is_empty() {
            return Ok(());
        }
        let result = self.invalidate(&self.shared.typed, tags).await;
        if result.is_ok() {
            self.shared.typed.invalidated();
        }
        result
    }

    /// Runs an invalidation (or a purge) to its end even if the caller's future is dropped
    /// (a client that gave up on its write): a network store's call runs as its own task,
    /// and a failure is deferred there. An in-process store's answer is at hand at once.
    async fn apply(
        &self,
        stats: &Arc<RouteStats>,
        op: Op,
        mut fut: crate::StoreFuture<()>,
        deferred: Option<Vec<String>>,
    ) -> Result<(), StoreError> {
        let settle = move |handle: &CacheHandle, result: &Result<(), StoreError>| {
            if result.is_err() {
                handle.shared.breaker.defer(match &deferred {
                    Some(tags) => Deferred::Tags(tags),
                    None => Deferred::Purge,
                });
            }
        };
        let result = match fut.try_ready() {
            Some(ready) => {
                let ready = crate::StoreFuture::ready(ready);
                let result = self.shared.breaker.call(stats, op, ready).await;
                settle(self, &result);
                result
            }
            None => {
                let (handle, stats) = (self.clone(), Arc::clone(stats));
                let task = tokio::spawn(async move {
                    let result = handle.shared.breaker.call(&stats, op, fut).await;
                    settle(&handle, &result);
                    result
                });
                task.await.unwrap_or_else(|e| {
                    Err(StoreError::new(
                        crate::StoreErrorKind::Backend,
                        format!("the invalidation task failed: {e}"),
                    ))
                })
            }
        };
        if result.is_err() {
            // Other instances' local copies (a tiered store's L1) stop trusting themselves
            // within this long of losing the store: only then may the write be answered.
            let lease = self.shared.store.l1_lease();
            if !lease.is_zero() {
                tokio::time::sleep(lease).await;
            }
        }
        result
    }

    /// Invalidates `tags`; if the store cannot take it now, the invalidation is kept and the
    /// store is not read until it has been applied.
    pub(crate) async fn invalidate(
        &self,
        stats: &Arc<RouteStats>,
        tags: Vec<String>,
    ) -> Result<(), StoreError> {
        // Kept for the refills only when a rule has left records to refill.
        let refill = self.shared.refills.may_have_records().then(|| tags.clone());
        let fut = self.shared.store.invalidate_tags(tags.clone());
        let result = self.apply(stats, Op::Invalidate, fut, Some(tags)).await;
        if let (Ok(()), Some(tags)) = (&result, refill) {
            // Started now that the invalidation is complete: a refill can only store what the
            // write left. The records are searched in the background, not before the answer.
            let handle = self.clone();
            tokio::spawn(async move { handle.shared.refills.after_invalidation(&tags) });
        }
        result
    }

    /// Removes one entry from the store (and this instance's L1).
    ///
    /// This is a removal, not an invalidation: unlike [`invalidate_tags`](Self::invalidate_tags)
    /// it does not stop a fill that started before it from storing what it had read, and on
    /// the tiered store the other instances' L1 copies stay until their L1 lifetime ends. To
    /// drop what a write replaced, with every guarantee of the consistency contract, invalidate
    /// a tag: the entry's own (give a typed value a tag of its key), or, for an HTTP
    /// response, its URL's with [`CacheLayer::invalidate_request`](crate::CacheLayer::invalidate_request).
    pub async fn invalidate_key(&self, key: &CacheKey) -> Result<(), StoreError> {
        let fut = self.shared.store.remove(key);
        self.shared
            .breaker
            .call(&self.shared.typed, Op::Remove, fut)
            .await
    }

    /// Makes every entry unreachable. If the store cannot take it now, the purge is kept and
    /// the store is not read until it has been applied.
    pub async fn purge(&self) -> Result<(), StoreError> {
        let fut = self.shared.store.purge();
        self.apply(&self.shared.typed, Op::Purge, fut, None).await
    }

    /// The same cache, for the typed reads of a request that carries a consistency token
    /// (see [`consistency_token`](crate::consistency_token)): they are answered only from
    /// where the invalidation the client saw is known, so a client reads its own write on
    /// every instance of a tiered store. `None` gives the plain handle.
    ///
    /// ```
    /// # async fn demo(cache: larder::CacheHandle, headers: http::HeaderMap) {
    /// let cache = cache.reading_after(larder::consistency_token(&headers));
    /// let profile: Option<String> = cache.get("profile:7").await;
    /// # let _ = profile; }
    /// ```
    pub fn reading_after(&self, token: Option<u64>) -> CacheHandle {
        CacheHandle {
            shared: Arc::clone(&self.shared),
            after: token,
        }
    }

    /// The token to hand a client after an invalidation made from code, so that it reads
    /// what it wrote on every instance (send it in the [`CONSISTENCY_HEADER`](crate::CONSISTENCY_HEADER)
    /// response header, as declarative writes do). `None` for stores that need none.
    pub fn consistency_token(&self) -> Option<u64> {
        self.shared.store.consistency_token()
    }

    /// The key of a typed value stored with [`get_or_insert_with`](Self::get_or_insert_with).
    pub fn key(&self, key: &str) -> CacheKey {
        CacheKey::typed(&self.shared.namespace, key)
    }

    /// A copy of the statistics: the counters, what the store holds here and whether it is
    /// used. The same figures are gauges of the `metrics` facade (`larder_store_available`,
    /// `larder_pending_invalidations`, `larder_entries`, `larder_bytes`), set every second
    /// while a tokio runtime runs the handle's background task, and at each call of this.
    pub fn stats(&self) -> StatsSnapshot {
        let shared = &self.shared;
        let gauges = shared.gauges();
        shared.report(&gauges);
        let mut stats = shared.stats.snapshot();
        stats.refills = shared.refills.snapshot();
        stats.usage = gauges.usage;
        stats.store_available = gauges.store_available;
        stats.pending_invalidations = gauges.pending_invalidations;
        stats
    }

    /// Starts the statistics again from nothing: every route's counters and response times,
    /// the unmatched requests and the refills' outcomes, as [`stats`](Self::stats) shows them
    /// (handy after a warm-up, or to measure one period). What the store holds is not touched,
    /// nor the `metrics` series: counters there only grow, as Prometheus expects (a scraper
    /// takes rates).
    pub fn reset_stats(&self) {
        self.shared.stats.reset();
        self.shared.refills.reset_counts();
    }

    /// The store behind this cache.
    pub fn store(&self) -> &dyn Store {
        &*self.shared.store
    }

    /// Whether the cache is using its store: `false` while the circuit breaker is open
    /// (requests then bypass the cache and go straight to the service). For health checks.
    pub fn is_store_available(&self) -> bool {
        self.store_available()
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.shared.clock.now_ms()
    }

    /// Whether the store may be used now (the circuit breaker is closed and no invalidation
    /// is waiting to be replayed).
    pub(crate) fn store_available(&self) -> bool {
        self.shared.breaker.closed()
    }
}

impl fmt::Debug for CacheHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheHandle")
            .field("store", &self.shared.store.name())
            .field("namespace", &self.shared.namespace)
            .finish()
    }
}

impl CacheHandleBuilder {
    /// The TTL of every rule of this handle's layers that sets none with
    /// [`Rule::ttl`](crate::Rule::ttl): used when a response states no freshness of its own.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }

    /// The key options of every rule of this handle's layers that sets none with
    /// [`Rule::key`](crate::Rule::key) (for example `KeyOptions::new().query(QueryMode::Sorted)`
    /// for the whole service). A rule's [`paginate`](crate::Rule::paginate) and
    /// [`key_part`](crate::Rule::key_part) are kept on top of them.
    pub fn default_key(mut self, key: KeyOptions) -> Self {
        self.default_key = Some(key);
        self
    }

    /// The prefix of every key, so several applications can share one store (default `larder`).
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The deadline of each call to a network store (default 250 ms). A call that misses it
    /// counts as an error and the request goes to the service.
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.store_timeout = timeout;
        self
    }

    /// How long a request waits for another request's identical call before asking the
    /// service itself (default 10 s).
    pub fn collapse_timeout(mut self, timeout: Duration) -> Self {
        self.collapse_timeout = timeout;
        self
    }

    /// Bodies larger than this stream through and are not stored (default 8 MiB).
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.max_body_size = bytes;
        self
    }

    /// Also send `X-Cache: HIT | MISS | STALE | BYPASS` (off by default; `Cache-Status` is
    /// sent unless [`hide_cache_headers`](Self::hide_cache_headers)).
    pub fn x_cache(mut self) -> Self {
        self.x_cache = XCache::Send;
        self
    }

    /// Sends none of the headers the cache adds: no `Cache-Status`, no `X-Cache`, and no
    /// `ETag` derived from a stored body (an `ETag` the service sent is kept, and a stored
    /// response still answers `If-None-Match` with its own validator). For services that do
    /// not show their caching to external clients; over gRPC these headers are the call's
    /// response metadata, hidden the same way. The statistics and metrics still count every
    /// outcome. The tiered store's `larder-consistency` token is not a report but a function
    /// (read-your-writes) and is still sent on writes.
    pub fn hide_cache_headers(mut self) -> Self {
        self.x_cache = XCache::Hidden;
        self
    }

    /// Treat a request's `Cache-Control: no-cache` or `max-age=0` as a miss, as RFC 9111
    /// §5.2.1 asks (off by default, as in most reverse proxies: a reload would otherwise reach
    /// the origin whenever a client wants).
    pub fn honor_request_no_cache(mut self) -> Self {
        self.reloads = Reloads::Honor;
        self
    }

    /// Open the circuit breaker after this many consecutive failed store calls (default 3),
    /// and probe the store again after `open_for` (default 500 ms, doubling up to 1 s).
    pub fn circuit_breaker(mut self, threshold: u32, open_for: Duration) -> Self {
        self.breaker_threshold = threshold;
        self.breaker_open_for = open_for;
        self
    }

    /// Keeps invalidations that cannot reach the store in a journal file at `path`, so they
    /// survive a restart of this process (off by default; only useful with a store shared by
    /// several processes). A write whose invalidation fails is answered only once the journal
    /// holds it, synced to disk; a cache built over a journal that still holds invalidations
    /// does not read the store until it has purged the namespace (see "Consistency" in the
    /// README). One journal per process: two caches must not share a file.
    pub fn journal(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.journal = Some(path.into());
        self
    }

    /// Makes concurrent misses for one key across instances call the service once: the first
    /// instance takes a lock in the store and fills the entry; the others wait at most `wait`
    /// for it, then call the service themselves. Only for stores shared by several processes
    /// (Redis, tiered); off by default.
    pub fn distributed_lock(mut self, wait: Duration) -> Self {
        self.lock_wait = Some(wait);
        self
    }

    /// Bounds the refills of rules with
    /// [`refill_after_write`](crate::Rule::refill_after_write): at most `per_second` replays
    /// a second (default 200; a write that invalidates more drops the rest, counted as
    /// `refills_dropped`) and `concurrent` at once (default 8).
    pub fn refill_limits(mut self, per_second: u32, concurrent: usize) -> Self {
        self.refill_rate = per_second;
        self.refill_concurrency = concurrent;
        self
    }

    /// How long after its last read an entry of a rule with
    /// [`refill_after_write`](crate::Rule::refill_after_write) is still refilled after a
    /// write (default 5 minutes; at most 10,000 entries are remembered).
    pub fn refill_window(mut self, window: Duration) -> Self {
        self.refill_window = window;
        self
    }

    /// Builds the handle.
    ///
    /// # Panics
    ///
    /// If a [`journal`](Self::journal) was asked for and its file cannot be opened or
    /// created: running without it would silently drop what it is there to keep. Use
    /// [`try_build`](Self::try_build) to handle that error.
    pub fn build(self) -> CacheHandle {
        match self.try_build() {
            Ok(handle) => handle,
            Err(e) => panic!("larder: cannot open the invalidation journal: {e}"),
        }
    }

    /// Builds the handle, or says why its journal cannot be opened.
    pub fn try_build(self) -> std::io::Result<CacheHandle> {
        let journal = match &self.journal {
            Some(path) => Some(Journal::open(path)?),
            None => None,
        };
        let stats = Stats::default();
        let typed = stats.route(&Arc::from("typed"));
        let breaker = Breaker::new(
            Arc::clone(&self.store),
            &self.namespace,
            BreakerSettings {
                threshold: self.breaker_threshold,
                open_for: self.breaker_open_for,
                timeout: self.store_timeout,
            },
            journal,
        );
        crate::stats::describe();
        let handle = CacheHandle {
            after: None,
            shared: Arc::new(CacheState {
                store: self.store,
                namespace: self.namespace,
                clock: Clock::new(),
                stats,
                coalescer: Arc::new(Coalescer::default()),
                predictor: Predictor::default(),
                collapse_timeout: self.collapse_timeout,
                max_body_size: self.max_body_size,
                x_cache: self.x_cache,
                reloads: self.reloads,
                breaker,
                lock_wait: self.lock_wait,
                typed,
                refills: Refills::new(
                    self.refill_rate,
                    self.refill_concurrency,
                    self.refill_window,
                ),
                variants: Default::default(),
                default_ttl: self.default_ttl,
                default_key: self.default_key,
            }),
        };
        report_gauges_in_background(Arc::downgrade(&handle.shared));
        Ok(handle)
    }
}

impl fmt::Debug for CacheHandleBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheHandleBuilder")
            .field("store", &self.store.name())
            .field("namespace", &self.namespace)
            .finish()
    }
}
