//! The [`Cache`] service: classifies each request and serves it from the store or the service.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, header, request::Parts};
use http_body::Body;
use tower_service::Service;
use tracing::Instrument;

use crate::{
    CacheHandle, CacheKey, Entry, RequestBodyDigest,
    body::CacheBody,
    entry::Freshness,
    future::ResponseFuture,
    key::KeyInput,
    miss::{self, Exchange},
    policy, respond,
    route::{Route, RouteSet},
    stats::Outcome,
    status::CacheStatus,
};

/// A response cache in front of a service. Built by a [`CacheLayer`](crate::CacheLayer).
///
/// `GET` and `HEAD` requests that a rule covers (and `POST`s keyed by their body, see
/// [`Rule::cache_posts_by_body`](crate::Rule::cache_posts_by_body)) are answered from the store
/// when a usable entry exists; other requests go to the service, and successful writes
/// invalidate their rule's tags. Every response carries `Cache-Status`. Failures of the cache itself never
/// become errors: the service answers instead.
///
/// A hit does not call the inner service, so whatever its `poll_ready` reserved (a
/// `ConcurrencyLimit` permit, a `Buffer` slot) stays with this `Cache` until its next call or
/// until it is dropped. axum and hyper clone the service for each request and drop the clone
/// afterwards, so nothing is held there; a long-lived `Cache` in front of such a service holds
/// one reservation between requests.
#[derive(Debug, Clone)]
pub struct Cache<S> {
    inner: S,
    handle: CacheHandle,
    routes: Arc<RouteSet>,
}

impl<S> Cache<S> {
    pub(crate) fn new(inner: S, handle: CacheHandle, routes: Arc<RouteSet>) -> Self {
        Cache {
            inner,
            handle,
            routes,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the cache, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The handle this cache serves from.
    pub fn handle(&self) -> &CacheHandle {
        &self.handle
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Cache<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<CacheBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // A request that goes to the service takes the one that was made ready and leaves a
        // fresh clone in its place; a hit never touches it (nor pays for the clone).
        let mut take_inner = || {
            let clone = self.inner.clone();
            std::mem::replace(&mut self.inner, clone)
        };
        let x_cache = self.handle.shared.x_cache;

        let Some((route, params)) = self.routes.find(req.uri().path()) else {
            return ResponseFuture::forward(
                take_inner().call(req),
                CacheStatus::bypass("no-rule"),
                x_cache,
            );
        };
        let (parts, body) = req.into_parts();

        // Under `cache_posts_by_body`, a POST is a read keyed by the digest of its body.
        let digest = if parts.method == Method::POST && route.rule.posts_by_body {
            match parts.extensions.get::<RequestBodyDigest>() {
                Some(digest) => Some(*digest),
                None => {
                    route.stats.record(Outcome::Bypass);
                    return ResponseFuture::forward(
                        take_inner().call(Request::from_parts(parts, body)),
                        CacheStatus::bypass("body-not-keyed"),
                        x_cache,
                    );
                }
            }
        } else {
            None
        };

        if digest.is_none() && parts.method != Method::GET && parts.method != Method::HEAD {
            route.stats.record(Outcome::Bypass);
            if !is_write(&parts.method) {
                let req = Request::from_parts(parts, body);
                return ResponseFuture::forward(
                    take_inner().call(req),
                    CacheStatus::bypass("method"),
                    x_cache,
                );
            }
            let scope = route.rule.scope.as_ref().and_then(|s| s.scope(&parts));
            let write = miss::Write {
                handle: self.handle.clone(),
                route: Arc::clone(route),
                scope,
                params,
                path: parts.uri.path().to_owned(),
            };
            let req = Request::from_parts(parts, body);
            let span = tracing::debug_span!("larder.write", route = %write.route.rule.name);
            return ResponseFuture::boxed(Box::pin(write.run(take_inner(), req).instrument(span)));
        }

        let bypass = |route: &crate::route::Route, detail| {
            route.stats.record(Outcome::Bypass);
            CacheStatus::bypass(detail)
        };
        // A Range request wants part of a representation, and 206s are never stored.
        if parts.headers.contains_key(header::RANGE) {
            let status = bypass(route, "range");
            return ResponseFuture::forward(
                take_inner().call(Request::from_parts(parts, body)),
                status,
                x_cache,
            );
        }
        // A GET with content ("fat GET") could change the response without changing the key.
        if digest.is_none() && has_content(&parts.headers) {
            let status = bypass(route, "request-body");
            return ResponseFuture::forward(
                take_inner().call(Request::from_parts(parts, body)),
                status,
                x_cache,
            );
        }
        let scope = match &route.rule.scope {
            Some(s) => match s.scope(&parts) {
                Some(user) => Some(user),
                None => {
                    let status = bypass(route, "no-user");
                    return ResponseFuture::forward(
                        take_inner().call(Request::from_parts(parts, body)),
                        status,
                        x_cache,
                    );
                }
            },
            // RFC 9111 §3.5: a response to a request with credentials is for that user only.
            None if parts.headers.contains_key(header::AUTHORIZATION)
                || parts.headers.contains_key(header::COOKIE) =>
            {
                let status = bypass(route, "credentials");
                return ResponseFuture::forward(
                    take_inner().call(Request::from_parts(parts, body)),
                    status,
                    x_cache,
                );
            }
            None => None,
        };

        // The store is failing (or invalidations wait to be replayed): go straight to the
        // service, with no store call and no wait.
        if !self.handle.store_available() {
            let status = bypass(route, "store-unavailable");
            return ResponseFuture::forward(
                take_inner().call(Request::from_parts(parts, body)),
                status,
                x_cache,
            );
        }

        let directives = policy::request_directives(&parts.headers);
        let shared = &self.handle.shared;
        let key = route.rule.key.build(&KeyInput {
            namespace: &shared.namespace,
            // A stored GET answers HEAD (RFC 9110 §9.3.2); a HEAD never stores. A POST's
            // entry answers only the same POST.
            method: if digest.is_some() {
                &Method::POST
            } else {
                &Method::GET
            },
            authority: authority(&parts),
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: &parts.headers,
            scope: scope.as_deref(),
            body: digest.as_ref().map(RequestBodyDigest::as_bytes),
        });
        let exchange = |key, looked_up| Exchange {
            handle: self.handle.clone(),
            route: Arc::clone(route),
            key,
            scope,
            params,
            directives,
            looked_up,
        };

        // Reloads (`no-cache`, `max-age=0`) are honoured only when configured: by default a
        // client cannot make the origin do work the cache was put there to save.
        if shared.honor_request_no_cache
            && (directives.no_cache || directives.max_age == Some(std::time::Duration::ZERO))
        {
            let found = Found::Miss {
                stale: None,
                fwd: "request",
            };
            return exchange(key, None).resolve(
                found,
                self.handle.now_ms(),
                take_inner(),
                parts,
                body,
            );
        }

        let mut lookup = shared.store.get(&key);
        let Some(result) = lookup.try_ready() else {
            let exchange = exchange(key, Some(tokio::time::Instant::now()));
            let inner = take_inner();
            let span = tracing::debug_span!("larder.lookup", route = %exchange.route.rule.name);
            return ResponseFuture::boxed(Box::pin(
                async move {
                    let stats = &exchange.route.stats;
                    let entry = exchange
                        .handle
                        .run(stats, "get", lookup)
                        .await
                        .unwrap_or(None);
                    let now = exchange.handle.now_ms();
                    let found = evaluate(entry, &exchange.key, &parts.headers, now);
                    exchange.resolve(found, now, inner, parts, body).await
                }
                .instrument(span),
            ));
        };
        // An in-process store answered at once.
        let entry = result.unwrap_or_else(|e| {
            route.stats.error();
            tracing::warn!(error = %e, "cache lookup failed");
            None
        });
        let now = self.handle.now_ms();
        match evaluate(entry, &key, &parts.headers, now) {
            // The hit path: served from borrowed state, nothing cloned but the entry's parts.
            Found::Fresh(entry, ttl) => {
                let (response, refresh) = hit(route, &key, &entry, ttl, &parts, now, x_cache);
                if refresh {
                    exchange(key, None).refresh(take_inner(), parts, body);
                }
                ResponseFuture::ready(response)
            }
            found => exchange(key, None).resolve(found, now, take_inner(), parts, body),
        }
    }
}

impl Exchange {
    /// Serves what the lookup found at `now_ms`, or goes to the service.
    fn resolve<S, ReqBody, B>(
        self,
        found: Found,
        now_ms: u64,
        inner: S,
        parts: Parts,
        body: ReqBody,
    ) -> ResponseFuture<S::Future, B, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<B>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ReqBody: Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
    {
        match found {
            Found::Fresh(entry, ttl) => {
                let x_cache = self.handle.shared.x_cache;
                let (response, refresh) =
                    hit(&self.route, &self.key, &entry, ttl, &parts, now_ms, x_cache);
                if refresh {
                    self.refresh(inner, parts, body);
                }
                ResponseFuture::ready(response)
            }
            Found::Revalidate(entry, by) => {
                self.route.stats.record(Outcome::Stale);
                let status = CacheStatus::Stale {
                    by: by.as_secs(),
                    detail: "stale-while-revalidate",
                };
                let response = self.serve_at(&entry, &parts, status, now_ms);
                self.refresh(inner, parts, body);
                ResponseFuture::ready(response)
            }
            Found::Miss { stale, fwd } => {
                let span = tracing::debug_span!("larder.miss", route = %self.route.rule.name, key = %self.key, fwd);
                ResponseFuture::boxed(Box::pin(
                    self.miss(inner, parts, body, stale, fwd).instrument(span),
                ))
            }
        }
    }
}

/// Serves a fresh `entry` (`ttl` seconds left) at `now_ms` and counts the hit; the flag says
/// whether early refresh (XFetch) wants the entry refreshed in the background now.
pub(crate) fn hit<B>(
    route: &Route,
    key: &CacheKey,
    entry: &Entry,
    ttl: u64,
    parts: &Parts,
    now_ms: u64,
    x_cache: bool,
) -> (Response<CacheBody<B>>, bool) {
    route.stats.record(Outcome::Hit);
    tracing::trace!(route = %route.rule.name, key = %key, ttl, "cache hit");
    let response = respond::from_entry(
        entry,
        &parts.method,
        &parts.headers,
        now_ms,
        CacheStatus::Hit { ttl },
        x_cache,
    );
    let refresh = route
        .rule
        .early_refresh
        .is_some_and(|beta| entry.refresh_early(now_ms, beta));
    (response, refresh)
}

/// What a lookup found.
pub(crate) enum Found {
    Fresh(Arc<Entry>, u64),
    /// Stale, inside its stale-while-revalidate window.
    Revalidate(Arc<Entry>, std::time::Duration),
    /// Nothing usable; `stale` may still serve if the service fails (stale-if-error).
    Miss {
        stale: Option<Arc<Entry>>,
        fwd: &'static str,
    },
}

pub(crate) fn evaluate(
    entry: Option<Arc<Entry>>,
    key: &CacheKey,
    headers: &HeaderMap,
    now_ms: u64,
) -> Found {
    let Some(entry) = entry else {
        return Found::Miss {
            stale: None,
            fwd: "miss",
        };
    };
    if !vary_matches(&entry, key, headers) {
        return Found::Miss {
            stale: None,
            fwd: "vary-miss",
        };
    }
    match entry.freshness(now_ms) {
        Freshness::Fresh { ttl } => Found::Fresh(entry, ttl),
        Freshness::Stale {
            by,
            revalidate: true,
            ..
        } => Found::Revalidate(entry, by),
        Freshness::Stale { if_error, .. } => Found::Miss {
            stale: if_error.then_some(entry),
            fwd: "stale",
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

/// Unsafe methods (RFC 9110 §9.2.1) are the writes that invalidate.
fn is_write(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

fn has_content(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

fn authority(parts: &Parts) -> Option<&str> {
    parts.uri.authority().map(|a| a.as_str()).or_else(|| {
        parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}
