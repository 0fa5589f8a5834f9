//! Phase 4, fill: the entry made from the leader's response, its body recorded while it
//! streams to the client, and its write to the store.
//!
//! [`prepare`] decides whether the response may be stored (RFC 9111, the rule's limits, gRPC
//! status, tags) and makes the entry without its body. The body is copied as it streams (see
//! [`CacheBody`](crate::CacheBody)) into a [`Fill`], which at the end lands the flight for the
//! followers and [`write`]s the entry. A fill that ends any other way tells the followers: too
//! big or a failed gRPC call is uncacheable (they ask for themselves at once, and the key is
//! remembered so later misses skip the flight); a broken or dropped body abandons the flight.

use std::{sync::Arc, time::SystemTime};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, header, response};
use http_body::SizeHint;

use crate::{
    CacheHandle, CacheKey, Entry,
    engine::{breaker::Op, coalesce::Lead, lock::LockHeld, refill},
    entry::derive_etag,
    middleware::status::XCache,
    reason::Uncacheable,
    rules::{
        policy::{self, Decision, Lifetimes, RequestDirectives, RouteTtl},
        route::{Params, Route},
        tags,
    },
    stats::RouteStats,
};

/// What the leader asked, for deciding how its response is stored.
pub(crate) struct Asked<'a> {
    pub(crate) route: &'a Route,
    pub(crate) key: &'a CacheKey,
    pub(crate) scope: Option<&'a str>,
    pub(crate) params: &'a Params,
    pub(crate) directives: RequestDirectives,
    pub(crate) method: &'a Method,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) path: &'a str,
    /// The store's stamp taken before the origin call: the entry's birth stamp.
    pub(crate) born: u64,
    pub(crate) now: SystemTime,
    /// See [`ReadRequest::credentialed`](crate::phase::classify::ReadRequest::credentialed).
    pub(crate) credentialed: bool,
}

/// The entry `response` would be stored as, all but its body; or why it is not stored.
/// Removes the handler's tag header from `response`.
pub(crate) fn prepare(
    asked: &Asked<'_>,
    response: &mut response::Parts,
    body: SizeHint,
) -> Result<Entry, Uncacheable> {
    let handler_tags = tags::take_from_handler(&mut response.headers);
    let lifetimes = lifetimes(asked, response, body)?;
    let tags = tags::of_entry(
        asked.route,
        asked.scope,
        asked.params,
        handler_tags,
        asked.path,
    )?;
    let vary = match policy::vary(&response.headers) {
        policy::Vary::Names(names) => {
            let digest = *asked.key.variant(&names, asked.headers).digest();
            Some((names.into_boxed_slice(), digest))
        }
        _ => None,
    };
    let mut headers = response.headers.clone();
    policy::strip_hop_by_hop(&mut headers);
    let etag = headers
        .get(header::ETAG)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static(""));
    Ok(Entry {
        status: response.status,
        headers,
        body: Bytes::new(),
        trailers: None,
        etag,
        stored_at: 0,
        born: asked.born,
        lifetime: lifetimes.lifetime,
        initial_age: lifetimes.initial_age,
        stale_while_revalidate: lifetimes.stale_while_revalidate,
        stale_if_error: lifetimes.stale_if_error,
        must_revalidate: lifetimes.must_revalidate,
        fill_time: std::time::Duration::ZERO,
        tags,
        vary,
        hit_headers: Default::default(),
    })
}

/// How long the response may be used, by RFC 9111 and the rule; or why it is not stored.
fn lifetimes(
    asked: &Asked<'_>,
    response: &response::Parts,
    body: SizeHint,
) -> Result<Lifetimes, Uncacheable> {
    let rule = &asked.route.rule;
    let decision = policy::decide(&policy::Candidate {
        status: response.status,
        response_headers: &response.headers,
        request: asked.directives,
        user_scoped: asked.scope.is_some(),
        credentialed: asked.credentialed,
        route: RouteTtl {
            ttl: rule.status_ttl(response.status).or(rule.ttl),
            override_response: rule.override_ttl,
            stale_while_revalidate: rule.stale_while_revalidate,
            stale_if_error: rule.stale_if_error,
            status_ttl: rule.status_ttl(response.status),
        },
        now: asked.now,
    });
    let lifetimes = match decision {
        // A HEAD response has no content: it must never become a GET's entry.
        Decision::Store(_) if *asked.method == Method::HEAD => return Err(Uncacheable::Head),
        Decision::Store(lifetimes) => lifetimes,
        Decision::Skip(reason) => return Err(reason),
    };
    let declared = response
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .or(body.upper());
    if declared.is_some_and(|n| n > asked.route.max_body_size as u64) {
        return Err(Uncacheable::TooBig);
    }
    // A Trailers-Only gRPC error carries grpc-status in the headers, with HTTP 200.
    if policy::grpc_failed(&response.headers) {
        return Err(Uncacheable::GrpcStatus);
    }
    Ok(lifetimes)
}

/// An entry waiting for its body. Dropping it unfinished abandons its flight without storing.
pub(crate) struct Fill {
    pub(crate) handle: CacheHandle,
    pub(crate) key: CacheKey,
    /// Everything but the body and `stored_at`.
    pub(crate) entry: Entry,
    pub(crate) stats: Arc<RouteStats>,
    /// The flight this fill answers (`None` for a miss that leads no flight).
    pub(crate) lead: Option<Lead>,
    /// The cross-instance fill lock, released once the entry is written.
    pub(crate) lock: Option<LockHeld>,
    /// When the origin call started: the fill time feeds early refresh.
    pub(crate) started: tokio::time::Instant,
    /// How to ask for this entry again after a write (rules that refill after writes).
    pub(crate) refill: Option<refill::Seed>,
    /// Set when a response of the route that varies is stored (see `engine::variants`).
    pub(crate) varies: Arc<std::sync::atomic::AtomicBool>,
}

impl Fill {
    pub(crate) fn trailers(&mut self, trailers: HeaderMap) {
        self.entry.trailers = Some(trailers);
    }

    /// The body outgrew the limit: nothing is stored, the followers ask for themselves now,
    /// and the key's next misses skip the flight.
    pub(crate) fn too_big(self) {
        self.uncacheable(Uncacheable::TooBig);
    }

    fn uncacheable(mut self, reason: Uncacheable) {
        if let Some(lead) = self.lead.take() {
            lead.uncacheable();
        }
        self.handle
            .shared
            .predictor
            .remember(*self.key.digest(), reason);
    }

    pub(crate) fn finish(mut self, chunks: Vec<Bytes>) {
        // gRPC reports failure in trailers with HTTP 200: only grpc-status 0 is stored.
        if self
            .entry
            .trailers
            .as_ref()
            .is_some_and(policy::grpc_failed)
        {
            return self.uncacheable(Uncacheable::GrpcStatus);
        }
        // Where a response that varies goes (see `engine::variants`).
        let mut also = None;
        let variants = &self.handle.shared.variants;
        if let Some((names, digest)) = &self.entry.vary {
            self.varies
                .store(true, std::sync::atomic::Ordering::Relaxed);
            let url = variants.learn(*self.key.url_key().digest(), names);
            let looked_up_by_url = self.key.base().is_none();
            if url.admit(*digest) {
                let variant = self.key.with_variant_digest(*digest);
                if looked_up_by_url {
                    // Also under the URL's key: where a process that has not seen it vary
                    // looks.
                    also = Some(variant);
                } else {
                    // Under the variant's key for the fields it varies on now.
                    self.key = variant;
                }
            } else if !looked_up_by_url {
                // A new variant of a URL that has all it may keep.
                return self.uncacheable(Uncacheable::TooManyVariants);
            }
        } else if let Some(url) = self.key.base().copied() {
            // The URL no longer varies: its entry goes under the URL's key, where its next
            // lookups go.
            variants.forget(&url);
            self.key = self.key.url_key();
        }
        let body = concat(chunks);
        let hidden = self.handle.shared.x_cache == XCache::Hidden;
        give_etag(&mut self.entry, &body, hidden);
        // The stored representation has a known length; HEAD hits need it in the headers.
        // (Not with trailers: over HTTP/1.1 those need chunked encoding.)
        if self.entry.trailers.is_none()
            && !self.entry.headers.contains_key(header::CONTENT_LENGTH)
            && !self.entry.headers.contains_key(header::TRANSFER_ENCODING)
        {
            self.entry
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        self.entry.body = body;
        self.entry.stored_at = self.handle.now_ms();
        self.entry.fill_time = self.started.elapsed();
        let entry = Arc::new(self.entry);
        // Followers are answered now; the flight is held until the entry is in the store.
        let lead = self.lead.take();
        if let Some(lead) = &lead {
            lead.land(Arc::clone(&entry));
        }
        self.handle.shared.predictor.forget(self.key.digest());
        if let Some(seed) = self.refill.take() {
            let refills = &self.handle.shared.refills;
            refills.record(*self.key.digest(), &entry.tags, seed);
        }
        if let Some(variant) = also {
            write(
                &self.handle,
                &self.stats,
                variant,
                Arc::clone(&entry),
                None,
                None,
            );
        }
        write(
            &self.handle,
            &self.stats,
            self.key,
            entry,
            self.lock.take(),
            lead,
        );
    }
}

/// Writes an entry without making the caller wait for a network store, then releases the
/// fill lock (so the instances waiting on it find the entry) and ends the flight (so the
/// requests that joined it late read the entry from the store). The entry is counted as
/// stored only once the store has taken it.
pub(crate) fn write(
    handle: &CacheHandle,
    stats: &Arc<RouteStats>,
    key: CacheKey,
    entry: Arc<Entry>,
    lock: Option<LockHeld>,
    lead: Option<Lead>,
) {
    let shared = &handle.shared;
    if !shared.breaker.closed() {
        return;
    }
    let mut fut = shared.store.put(key, entry);
    match fut.try_ready() {
        Some(Ok(())) => stats.stored(),
        Some(Err(e)) => {
            stats.error();
            tracing::warn!(error = %e, "cache store write failed");
        }
        None => {
            let handle = handle.clone();
            let stats = Arc::clone(stats);
            tokio::spawn(async move {
                let breaker = &handle.shared.breaker;
                // Failures are counted and logged by the breaker.
                let stored = breaker.call(&stats, Op::Put, fut).await.is_ok();
                if stored {
                    stats.stored();
                }
                if let Some(lead) = lead.filter(|_| stored) {
                    lead.written(breaker.timeout());
                }
                if let Some(lock) = lock {
                    lock.release().await;
                }
            });
        }
    }
}

/// Gives `entry` the strong `ETag` derived from `body` when the origin sent none, and returns
/// the entry's `ETag`. It is sent with the entry, unless the handle hides what the cache adds
/// (`hidden`: the entry still answers `If-None-Match` with it).
pub(crate) fn give_etag(entry: &mut Entry, body: &[u8], hidden: bool) -> HeaderValue {
    if entry.etag.is_empty() {
        let etag = derive_etag(body);
        if !hidden {
            entry.headers.insert(header::ETAG, etag.clone());
        }
        entry.etag = etag;
    }
    entry.etag.clone()
}

pub(crate) fn concat(mut chunks: Vec<Bytes>) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => {
            let mut buf = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
            for c in chunks {
                buf.extend_from_slice(&c);
            }
            buf.freeze()
        }
    }
}
