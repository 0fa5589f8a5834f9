//! Phase 2, lookup: what the store holds for a key, and whether it may be served now.
//!
//! The store has already hidden what invalidations made unreachable; this phase judges what
//! is left by the request: its `Vary` variant (RFC 9111 §4.1) and its freshness (§4.2), with
//! the stale windows of RFC 5861.

use std::{sync::Arc, time::Duration};

use http::HeaderMap;

use crate::{
    CacheKey, Entry, engine::breaker::Op, entry::Freshness, handle::CacheState, reason::Fwd,
    stats::RouteStats, store,
};

/// What a lookup found, judged for one request.
pub(crate) enum Found {
    /// Fresh for `ttl` more seconds.
    Fresh { entry: Arc<Entry>, ttl: u64 },
    /// Stale by `by`, inside its stale-while-revalidate window.
    Revalidate { entry: Arc<Entry>, by: Duration },
    /// Nothing usable; `stale` may still serve if the service fails (stale-if-error), and
    /// `revalidate`, a stale entry with the origin's validators, may be revalidated with a
    /// conditional request (RFC 9111 §4.3.1) instead of fetched again.
    Miss {
        stale: Option<Arc<Entry>>,
        revalidate: Option<Arc<Entry>>,
        fwd: Fwd,
    },
}

/// Judges what the store returned for `key` at `now_ms`, for a request with `headers`.
pub(crate) fn judge(
    entry: Option<Arc<Entry>>,
    key: &CacheKey,
    headers: &HeaderMap,
    now_ms: u64,
) -> Found {
    let Some(entry) = entry else {
        return Found::Miss {
            stale: None,
            revalidate: None,
            fwd: Fwd::Miss,
        };
    };
    if !vary_matches(&entry, key, headers) {
        return Found::Miss {
            stale: None,
            revalidate: None,
            fwd: Fwd::VaryMiss,
        };
    }
    match entry.freshness(now_ms) {
        Freshness::Fresh { ttl } => Found::Fresh { entry, ttl },
        Freshness::Stale {
            by,
            revalidate: true,
            ..
        } => Found::Revalidate { entry, by },
        // Also past `must-revalidate` (and every use of a `no-cache` response): a stale
        // entry is never served unvalidated, but it can be revalidated.
        Freshness::Stale { if_error, .. } => Found::Miss {
            revalidate: entry.validators().map(|_| Arc::clone(&entry)),
            stale: if_error.then_some(entry),
            fwd: Fwd::Stale,
        },
    }
}

/// RFC 9111 §4.1: the request's values of the headers the response varies on must match
/// those of the request that stored it.
pub(crate) fn vary_matches(entry: &Entry, key: &CacheKey, headers: &HeaderMap) -> bool {
    match &entry.vary {
        None => true,
        Some((names, digest)) => key.variant(names, headers).digest() == digest,
    }
}

/// Reads `key` through the breaker (a failure is a miss, counted against `stats`), for a
/// client with consistency token `after`.
pub(crate) async fn read(
    shared: &CacheState,
    stats: &RouteStats,
    key: &CacheKey,
    after: Option<u64>,
) -> Option<Arc<Entry>> {
    let fut = store::read_after(&*shared.store, key, after);
    shared
        .breaker
        .call(stats, Op::Get, fut)
        .await
        .ok()?
        .visible()
}

/// A fresh entry, as judged at `now_ms`.
pub(crate) struct Fresh {
    pub(crate) entry: Arc<Entry>,
    pub(crate) ttl: u64,
    pub(crate) now_ms: u64,
}

/// Reads `key` again and judges it now: the entry if it may be served fresh.
pub(crate) async fn read_fresh(
    shared: &CacheState,
    stats: &RouteStats,
    key: &CacheKey,
    after: Option<u64>,
    headers: &HeaderMap,
) -> Option<Fresh> {
    let entry = read(shared, stats, key, after).await;
    let now_ms = shared.clock.now_ms();
    match judge(entry, key, headers, now_ms) {
        Found::Fresh { entry, ttl } => Some(Fresh { entry, ttl, now_ms }),
        Found::Revalidate { .. } | Found::Miss { .. } => None,
    }
}
