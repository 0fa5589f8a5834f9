//! Typed cache-aside: any serde value (a query result, an AI response) by a string key,
//! sharing the store, tags, single-flight and fallback with the HTTP layer.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    CacheHandle, CacheKey, Entry,
    engine::{
        breaker::Op,
        coalesce::{Lead, Recheck, Ticket, Turn},
    },
    entry::{Freshness, derive_etag},
    phase::fill,
    stats::{Outcome, RouteStats},
    store::{Read, StoreError, StoreErrorKind},
};

/// A moment of the store's invalidation clock, from [`CacheHandle::read_stamp`]: the birth
/// stamp of a value read from its source after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadStamp(u64);

/// How long a typed value stays fresh, which tags it carries, and the category its calls
/// are counted under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryOptions {
    ttl: Duration,
    tags: Vec<String>,
    category: Option<Arc<str>>,
}

impl EntryOptions {
    /// Fresh for `ttl`, with no tags, counted under `typed`.
    pub fn new(ttl: Duration) -> Self {
        EntryOptions {
            ttl,
            tags: Vec::new(),
            category: None,
        }
    }

    /// Adds a tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Counts the calls made with these options under `name` in
    /// [`CacheHandle::stats`](crate::CacheHandle::stats) and the `metrics` series (as the
    /// `route` label): hits, misses, shared calls, values stored and response times, apart
    /// from other values (`assistant`, `ai_reply`, `metrics`). Without it they count under
    /// `typed`. A category may share its name with a rule: their figures then add up.
    ///
    /// ```
    /// # async fn demo() -> Result<(), std::io::Error> {
    /// use std::time::Duration;
    /// use larder::{CacheHandle, EntryOptions};
    ///
    /// let cache = CacheHandle::in_memory();
    /// let opts = EntryOptions::new(Duration::from_secs(1800)).tag("assistant:7").category("assistant");
    /// for _ in 0..2 {
    ///     let _: String = cache
    ///         .get_or_insert_with("assistant:7", &opts, || async { Ok::<_, std::io::Error>("config".into()) })
    ///         .await?;
    /// }
    /// let assistant = &cache.stats().routes["assistant"];
    /// assert_eq!((assistant.misses, assistant.hits), (1, 1));
    /// assert_eq!(assistant.hit_latency.count, 1);
    /// # Ok(()) }
    /// ```
    pub fn category(mut self, name: impl Into<Arc<str>>) -> Self {
        self.category = Some(name.into());
        self
    }
}

impl CacheHandle {
    /// Reads a typed value. A missing, expired, invalidated or undecodable value, or a store
    /// failure, is `None`.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        let started = Instant::now();
        let key = self.key(key);
        let stats = &self.shared.typed;
        let fut = self.store_get(&key);
        let entry = self
            .shared
            .breaker
            .call(stats, Op::Get, fut)
            .await
            .ok()
            .and_then(Read::visible);
        let value = entry.and_then(|e| self.decode(&e));
        let outcome = if value.is_some() {
            Outcome::Hit
        } else {
            Outcome::Miss
        };
        stats.answered(outcome, Some(started));
        value
    }

    /// Reads many typed values in one store call (one round trip for a network store).
    pub async fn get_many<T: DeserializeOwned>(&self, keys: &[&str]) -> Vec<Option<T>> {
        let started = Instant::now();
        let values = self.read_many(keys).await;
        for value in &values {
            let outcome = if value.is_some() {
                Outcome::Hit
            } else {
                Outcome::Miss
            };
            self.shared.typed.answered(outcome, Some(started));
        }
        values
    }

    /// Reads many typed values in one store call, counting nothing but store errors.
    async fn read_many<T: DeserializeOwned>(&self, keys: &[&str]) -> Vec<Option<T>> {
        let cache_keys: Vec<CacheKey> = keys.iter().map(|k| self.key(k)).collect();
        let stats = &self.shared.typed;
        let fut = self.store_get_many(&cache_keys);
        match self.shared.breaker.call(stats, Op::GetMany, fut).await {
            Ok(reads) if reads.len() == keys.len() => reads
                .into_iter()
                .map(|read| read.visible().and_then(|e| self.decode(&e)))
                .collect(),
            _ => keys.iter().map(|_| None).collect(),
        }
    }

    /// The store's invalidation stamp now. Take it *before* reading from its source a value
    /// you will [`insert`](Self::insert): an invalidation after this moment then hides the
    /// value, which may predate it.
    pub fn read_stamp(&self) -> ReadStamp {
        ReadStamp(self.shared.store.stamp())
    }

    /// Stores a typed value read from its source after `read_at` was taken (see
    /// [`read_stamp`](Self::read_stamp)), and returns once the store has taken the write.
    ///
    /// A value read before a concurrent invalidation of one of its tags is never served: the
    /// store keeps it hidden (or drops it), and this still returns `Ok`. An error says the write
    /// did not land: the store failed or is skipped while it fails
    /// ([`StoreErrorKind::Unavailable`]), or the value did not serialize
    /// ([`StoreErrorKind::Encode`]).
    ///
    /// ```
    /// # async fn demo() -> Result<(), larder::StoreError> {
    /// use std::time::Duration;
    /// use larder::{CacheHandle, EntryOptions};
    ///
    /// let cache = CacheHandle::in_memory();
    /// let read_at = cache.read_stamp();
    /// let profile = "{\"credits\": 999}"; // read from the database after the stamp
    /// let opts = EntryOptions::new(Duration::from_secs(300)).tag("user:42");
    /// cache.insert("profile:42", &profile, &opts, read_at).await?;
    /// assert_eq!(cache.get::<String>("profile:42").await.as_deref(), Some(profile));
    /// # Ok(()) }
    /// ```
    pub async fn insert<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        options: &EntryOptions,
        read_at: ReadStamp,
    ) -> Result<(), StoreError> {
        let Some(entry) = self.encode(value, options, read_at.0) else {
            return Err(StoreError::new(
                StoreErrorKind::Encode,
                "the value did not serialize",
            ));
        };
        let stats = &self.stats_of(options);
        let fut = self.shared.store.put(self.key(key), Arc::new(entry));
        self.shared.breaker.call(stats, Op::Put, fut).await?;
        stats.stored();
        Ok(())
    }

    /// Returns the cached value for `key`, or computes it with `f`, stores it and returns it.
    ///
    /// Concurrent calls for one key run `f` once; the others wait for its value. If `f`
    /// fails, its error goes to its caller, nothing is stored, and each waiting caller runs
    /// its own `f`. Store failures only cost the cache: `f` runs and its value is returned.
    ///
    /// ```
    /// # async fn demo() -> Result<(), std::io::Error> {
    /// use std::time::Duration;
    /// use larder::{CacheHandle, EntryOptions};
    ///
    /// let cache = CacheHandle::in_memory();
    /// let opts = EntryOptions::new(Duration::from_secs(900)).tag("metrics:42");
    /// let total: u64 = cache
    ///     .get_or_insert_with("metrics:42:finance", &opts, || async { Ok::<_, std::io::Error>(1234) })
    ///     .await?;
    /// assert_eq!(total, 1234);
    /// # Ok(()) }
    /// ```
    pub async fn get_or_insert_with<T, E, F, Fut>(
        &self,
        key: &str,
        options: &EntryOptions,
        f: F,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let started = Instant::now();
        let cache_key = self.key(key);
        let stats = &self.stats_of(options);
        if let Some(v) = self.read_hit(stats, &cache_key, started).await {
            return Ok(v);
        }
        let lead = match self.take_turn(stats, &cache_key, started).await {
            Ok(value) => return Ok(value),
            Err(lead) => lead,
        };
        stats.record(Outcome::Miss);
        let born = self.shared.store.stamp();
        let value = f().await;
        stats.took(Outcome::Miss, started);
        let value = value?;
        if let Some(entry) = self.encode(&value, options, born) {
            let entry = Arc::new(entry);
            if let Some(lead) = &lead {
                lead.land(Arc::clone(&entry));
            }
            fill::write(self, stats, cache_key, entry, None, lead);
        }
        Ok(value)
    }

    /// The counters of calls made with `options`: their category's, else `typed`.
    fn stats_of(&self, options: &EntryOptions) -> Arc<RouteStats> {
        match &options.category {
            Some(name) => self.shared.stats.category(name),
            None => Arc::clone(&self.shared.typed),
        }
    }

    /// Batch cache-aside: reads every key in one store call (one round trip for a network
    /// store), then calls `f` once with the indices of the keys that missed and stores the
    /// values it returns, each under its own options. Returns one value per key, in order.
    ///
    /// `f` must return exactly one value per index it is given, in the same order. The
    /// invalidation stamp is taken before `f` runs, so a tag invalidated while `f` reads the
    /// database is not stored with the old data. The batch shares the coalescer with
    /// [`get_or_insert_with`](Self::get_or_insert_with): a missing key whose value another
    /// call has just computed is taken from it, and the keys this batch computes are led as
    /// flights that concurrent calls follow. A batch never waits for another call's flight
    /// (two batches waiting on each other would deadlock): a key still being computed
    /// elsewhere is computed by `f` too. If `f` fails, nothing is stored and its error is
    /// returned.
    ///
    /// ```
    /// # async fn demo() -> Result<(), std::io::Error> {
    /// use std::time::Duration;
    /// use larder::{CacheHandle, EntryOptions};
    ///
    /// let cache = CacheHandle::in_memory();
    /// let opts = EntryOptions::new(Duration::from_secs(300)).tag("user:7");
    /// let values: Vec<u32> = cache
    ///     .get_many_or_insert_with(&[("a", &opts), ("b", &opts)], |missing| async move {
    ///         Ok::<_, std::io::Error>(missing.iter().map(|&i| i as u32 * 10).collect())
    ///     })
    ///     .await?;
    /// assert_eq!(values, [0, 10]);
    /// # Ok(()) }
    /// ```
    ///
    /// # Panics
    ///
    /// If `f` returns a different number of values than it was given indices.
    pub async fn get_many_or_insert_with<T, E, F, Fut>(
        &self,
        items: &[(&str, &EntryOptions)],
        f: F,
    ) -> Result<Vec<T>, E>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce(Vec<usize>) -> Fut,
        Fut: Future<Output = Result<Vec<T>, E>>,
    {
        let started = Instant::now();
        let keys: Vec<&str> = items.iter().map(|(k, _)| *k).collect();
        let stats: Vec<Arc<RouteStats>> = items.iter().map(|(_, o)| self.stats_of(o)).collect();
        let mut found: Vec<Option<T>> = self.read_many(&keys).await;
        for (value, stats) in found.iter().zip(&stats) {
            if value.is_some() {
                stats.answered(Outcome::Hit, Some(started));
            }
        }
        let (missing, leads) = self.join_missing(&keys, &stats, &mut found, started);
        if missing.is_empty() {
            return Ok(found.into_iter().flatten().collect());
        }
        let born = self.shared.store.stamp();
        // If `f` fails, the leads drop here: their followers ask for themselves.
        let values = f(missing.clone()).await;
        for &i in &missing {
            stats[i].took(Outcome::Miss, started);
        }
        let values = values?;
        assert_eq!(
            values.len(),
            missing.len(),
            "get_many_or_insert_with: the closure must return one value per missing key"
        );
        for ((i, value), lead) in missing.into_iter().zip(values).zip(leads) {
            let (key, options) = items[i];
            if let Some(entry) = self.encode(&value, options, born) {
                let entry = Arc::new(entry);
                if let Some(lead) = &lead {
                    lead.land(Arc::clone(&entry));
                }
                fill::write(self, &stats[i], self.key(key), entry, None, lead);
            }
            found[i] = Some(value);
        }
        Ok(found.into_iter().flatten().collect())
    }

    /// For each key of a batch that missed: another call's value if one has just landed
    /// (filled into `found`), else the key's index and its flight if this batch may lead it.
    fn join_missing<T: DeserializeOwned>(
        &self,
        keys: &[&str],
        stats: &[Arc<RouteStats>],
        found: &mut [Option<T>],
        started: Instant,
    ) -> (Vec<usize>, Vec<Option<Lead>>) {
        let since = self.since();
        let (mut missing, mut leads) = (Vec::new(), Vec::new());
        for (i, slot) in found.iter_mut().enumerate() {
            if slot.is_some() {
                continue;
            }
            let digest = *self.key(keys[i]).digest();
            match self.shared.coalescer.lead_or_peek(digest, since) {
                // Another call's value, born after every invalidation this batch must see.
                Some(Err(entry)) => {
                    if let Some(value) = self.decode(&entry) {
                        stats[i].answered(Outcome::Collapsed, Some(started));
                        *slot = Some(value);
                        continue;
                    }
                    leads.push(None);
                }
                Some(Ok(lead)) => leads.push(Some(lead)),
                None => leads.push(None),
            }
            stats[i].record(Outcome::Miss);
            missing.push(i);
        }
        (missing, leads)
    }

    /// Takes a typed call's turn with the coalescer: `Ok` with another call's value, or
    /// `Err` to compute it (leading the flight, if it may).
    async fn take_turn<T: DeserializeOwned>(
        &self,
        stats: &RouteStats,
        key: &CacheKey,
        started: Instant,
    ) -> Result<T, Option<Lead>> {
        let ticket = Ticket {
            since: self.since(),
            wait: self.shared.collapse_timeout,
            recheck: Recheck::Never,
        };
        let reread = || async {
            let entry = self.read_entry(stats, key).await?;
            let value = self.decode(&entry)?;
            Some((entry, value))
        };
        match self
            .shared
            .coalescer
            .take_turn(*key.digest(), ticket, reread)
            .await
        {
            Turn::Lead(lead) => Err(Some(lead)),
            Turn::Found { value, waited } => {
                // After following a flight: another call computed it.
                let outcome = if waited {
                    Outcome::Collapsed
                } else {
                    Outcome::Hit
                };
                stats.answered(outcome, Some(started));
                Ok(value)
            }
            Turn::Shared(entry) => match self.decode(&entry) {
                Some(value) => {
                    stats.answered(Outcome::Collapsed, Some(started));
                    Ok(value)
                }
                None => Err(None),
            },
            Turn::Alone(_) => Err(None),
        }
    }

    /// A store read of `key`, from where this handle's consistency token is known.
    fn store_get(&self, key: &CacheKey) -> crate::StoreFuture<crate::store::Read> {
        crate::store::read_after(&*self.shared.store, key, self.after)
    }

    fn store_get_many(&self, keys: &[CacheKey]) -> crate::StoreFuture<Vec<crate::store::Read>> {
        match self.after {
            Some(after) => self.shared.store.get_many_after(keys, after),
            None => self.shared.store.get_many(keys),
        }
    }

    /// What an entry shared from another call must have been born at or after.
    fn since(&self) -> u64 {
        self.shared.store.stamp().max(self.after.unwrap_or(0))
    }

    fn is_fresh(&self, entry: &Entry) -> bool {
        matches!(entry.freshness(self.now_ms()), Freshness::Fresh { .. })
    }

    /// Reads `key` from the store through the breaker (a failure counted against `stats`).
    async fn read_entry(&self, stats: &RouteStats, key: &CacheKey) -> Option<Arc<Entry>> {
        let fut = self.store_get(key);
        self.shared
            .breaker
            .call(stats, Op::Get, fut)
            .await
            .ok()?
            .visible()
    }

    /// Reads `key` from the store; its value if there is a usable one (counted as a hit of
    /// `stats`, with the time since `started`).
    async fn read_hit<T: DeserializeOwned>(
        &self,
        stats: &RouteStats,
        key: &CacheKey,
        started: Instant,
    ) -> Option<T> {
        let entry = self.read_entry(stats, key).await?;
        let value = self.decode(&entry)?;
        stats.answered(Outcome::Hit, Some(started));
        Some(value)
    }

    fn decode<T: DeserializeOwned>(&self, entry: &Entry) -> Option<T> {
        if !self.is_fresh(entry) {
            return None;
        }
        serde_json::from_slice(&entry.body)
            .map_err(|e| tracing::warn!(error = %e, "a cached typed value did not decode; treating it as a miss"))
            .ok()
    }

    fn encode<T: Serialize>(&self, value: &T, options: &EntryOptions, born: u64) -> Option<Entry> {
        let body = match serde_json::to_vec(value) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::warn!(error = %e, "a typed value did not serialize; not caching it");
                return None;
            }
        };
        let etag = derive_etag(&body);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::ETAG, etag.clone());
        Some(Entry {
            status: StatusCode::OK,
            headers,
            body,
            trailers: None,
            etag,
            stored_at: self.now_ms(),
            born,
            lifetime: options.ttl,
            initial_age: Duration::ZERO,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            must_revalidate: false,
            fill_time: Duration::ZERO,
            tags: options.tags.iter().map(|t| t.as_str().into()).collect(),
            vary: None,
            hit_headers: Default::default(),
        })
    }
}
