//! Refill after a write ([`Rule::refill_after_write`](crate::Rule::refill_after_write)): the
//! entries a write invalidates that clients read recently are asked of the service again, in
//! the background, so that the next read is a hit instead of a trip to the database.
//!
//! Each fill of such a rule leaves a [`Record`] here: the request's head (its credentials
//! included: it stays in this process's memory, never in a shared store), the entry's tags,
//! and a [`Replay`] that sends a request through the same cache. Hits keep a record alive
//! ([`Refills::touch`]); one that nobody read for [`WINDOW`] is forgotten. Once an
//! invalidation has completed ([`Refills::after_invalidation`]), the records carrying one of
//! its tags are replayed: each replay is a read like any other (looked up, then asked of the
//! service on a miss, coalesced with the clients' reads of the same key, stored as they
//! would be), started after the invalidation, so it can only store what the write left.
//! Replays are bounded: at most `rate` a second, `concurrency` at a time, and 16 waiting for
//! each of those (the others are dropped and counted). A record holds the service and the
//! cache's state weakly (see the layer's `Replayer`), so records do not keep a dropped cache
//! alive through the layer; a service that itself holds the handle (an axum state with it)
//! stays alive until its records are forgotten.

use std::{
    collections::HashSet,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use http::{HeaderMap, Method, Uri, Version};

/// How long a record lives without a hit: "read recently".
pub(crate) const WINDOW: Duration = Duration::from_secs(5 * 60);
/// The most records kept (least recently read go first).
const CAPACITY: u64 = 10_000;
/// Replays that may wait for each one running at once.
const BACKLOG_PER_SLOT: usize = 16;
/// Default: replays a second, and at once.
pub(crate) const DEFAULT_RATE: u32 = 200;
pub(crate) const DEFAULT_CONCURRENCY: usize = 8;

/// A request as the client sent it, to send again.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    /// What the layers in front put there (a router's path parameters, the authenticated
    /// user): the service and the user scope read them again.
    pub(crate) extensions: http::Extensions,
}

impl Head {
    /// The request again, with an empty body.
    pub(crate) fn into_request<B: Default>(self) -> http::Request<B> {
        let mut request = http::Request::new(B::default());
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers;
        *request.extensions_mut() = self.extensions;
        request
    }
}

/// Sends a request through the cache it came from and reads the response to its end (the
/// fill completes as the body streams); `false` when the service failed.
pub(crate) trait Replay: Send + Sync {
    fn replay(&self, head: Head) -> Pin<Box<dyn Future<Output = bool> + Send>>;
}

/// What a fill of a refilled rule leaves for the next write.
pub(crate) struct Seed {
    pub(crate) head: Head,
    pub(crate) replay: Arc<dyn Replay>,
}

struct Record {
    tags: Box<[Box<str>]>,
    head: Head,
    replay: Arc<dyn Replay>,
}

/// What became of the refills of [`Rule::refill_after_write`](crate::Rule::refill_after_write),
/// in [`StatsSnapshot::refills`](crate::StatsSnapshot::refills).
#[derive(Debug, Clone, Copy, Default, serde::Serialize, PartialEq, Eq)]
pub struct RefillSnapshot {
    /// Replays the service answered (whether or not they had to call it: a client's read may
    /// have refilled the entry first).
    pub done: u64,
    /// Replays the service failed (an error or a 5xx): the entry stays a miss.
    pub failed: u64,
    /// Replays not started because a write invalidated more than the rate allows.
    pub dropped: u64,
    /// Entries remembered for a refill now (approximate).
    pub remembered: u64,
}

/// The records, the limits, and what became of the replays.
pub(crate) struct Refills {
    records: moka::sync::Cache<[u8; 32], Arc<Record>>,
    /// Set by the first record.
    recorded: std::sync::atomic::AtomicBool,
    rate: f64,
    bucket: Mutex<(f64, Instant)>,
    running: Arc<tokio::sync::Semaphore>,
    /// Replays started and not finished (running or waiting to), and the most allowed: past
    /// it a replay is dropped, so slow replays under steady writes cannot pile up.
    backlog: Arc<std::sync::atomic::AtomicUsize>,
    max_backlog: usize,
    /// Replays that completed (the service answered), failed, or were dropped by the rate.
    done: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    dropped: AtomicU64,
}

impl std::fmt::Debug for Refills {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refills")
            .field("records", &self.records.entry_count())
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

impl Refills {
    pub(crate) fn new(rate: u32, concurrency: usize, window: Duration) -> Self {
        let rate = f64::from(rate.max(1));
        Refills {
            records: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_idle(window)
                .build(),
            recorded: std::sync::atomic::AtomicBool::new(false),
            rate,
            bucket: Mutex::new((rate, Instant::now())),
            running: Arc::new(tokio::sync::Semaphore::new(concurrency.max(1))),
            backlog: Arc::default(),
            max_backlog: concurrency.max(1) * BACKLOG_PER_SLOT,
            done: Arc::default(),
            failed: Arc::default(),
            dropped: AtomicU64::new(0),
        }
    }

    /// Remembers how to ask again for the entry just stored under `digest`.
    pub(crate) fn record(&self, digest: [u8; 32], tags: &[Box<str>], seed: Seed) {
        if tags.is_empty() {
            // Nothing can invalidate it but a purge, which refills nothing.
            return;
        }
        if !self.recorded.load(Ordering::Relaxed) {
            self.recorded.store(true, Ordering::Relaxed);
        }
        self.records.insert(
            digest,
            Arc::new(Record {
                tags: tags.into(),
                head: seed.head,
                replay: seed.replay,
            }),
        );
    }

    /// Whether any rule has left a record since the cache was built (a cache without
    /// `refill_after_write` rules never searches).
    pub(crate) fn may_have_records(&self) -> bool {
        self.recorded.load(Ordering::Relaxed)
    }

    /// A hit on the entry under `digest`: its record stays.
    pub(crate) fn touch(&self, digest: &[u8; 32]) {
        let _ = self.records.get(digest);
    }

    /// What became of the replays so far.
    pub(crate) fn snapshot(&self) -> RefillSnapshot {
        RefillSnapshot {
            done: self.done.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            remembered: self.records.entry_count(),
        }
    }

    /// Zeroes what became of the replays (not what is remembered).
    pub(crate) fn reset_counts(&self) {
        for counter in [&self.done, &self.failed, &self.dropped] {
            counter.store(0, Ordering::Relaxed);
        }
    }

    /// Takes one replay from the rate's bucket.
    fn admit(&self) -> bool {
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let (tokens, last) = *bucket;
        let tokens = (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.rate);
        if tokens >= 1.0 {
            *bucket = (tokens - 1.0, now);
            true
        } else {
            *bucket = (tokens, now);
            false
        }
    }

    /// After an invalidation of `tags` has completed: replays every record that carries one
    /// of them, in the background. Returns how many were started.
    pub(crate) fn after_invalidation(&self, tags: &[String]) -> usize {
        if tags.is_empty() {
            return 0;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return 0;
        };
        let wanted: HashSet<&str> = tags.iter().map(String::as_str).collect();
        let mut started = 0;
        for (_, record) in self.records.iter() {
            if !record.tags.iter().any(|t| wanted.contains(&**t)) {
                continue;
            }
            if self.backlog.load(Ordering::Relaxed) >= self.max_backlog || !self.admit() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("larder_refills_total", "outcome" => "dropped").increment(1);
                continue;
            }
            started += 1;
            self.backlog.fetch_add(1, Ordering::Relaxed);
            let backlog = Arc::clone(&self.backlog);
            let running = Arc::clone(&self.running);
            let (done, failed) = (Arc::clone(&self.done), Arc::clone(&self.failed));
            runtime.spawn(async move {
                let ok = match running.acquire_owned().await {
                    Ok(_permit) => record.replay.replay(record.head.clone()).await,
                    Err(_) => false,
                };
                backlog.fetch_sub(1, Ordering::Relaxed);
                let outcome = if ok { "done" } else { "failed" };
                if ok { &done } else { &failed }.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("larder_refills_total", "outcome" => outcome).increment(1);
            });
        }
        started
    }
}
