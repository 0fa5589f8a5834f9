//! What happens when the store cannot answer: single-flight, storing, stale-if-error, and
//! the invalidations of writes.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, header, request::Parts};
use http_body::Body;
use tower_service::Service;

use crate::{
    CacheHandle, CacheKey, Entry, TAGS_HEADER,
    body::{CacheBody, Recorder},
    fill::Fill,
    flight::{self, FlightGuard, Join, Landing},
    lock::{self, LockHeld},
    policy::{self, Decision, RequestDirectives},
    respond,
    route::{Params, Route},
    service::{Found, evaluate, hit, vary_matches},
    stats::Outcome,
    status::CacheStatus,
};

/// How many times a request follows a leader that went away before it asks the service itself.
const MAX_FOLLOWS: usize = 3;

/// One cacheable request, from lookup to response.
pub(crate) struct Exchange {
    pub(crate) handle: CacheHandle,
    pub(crate) route: Arc<Route>,
    pub(crate) key: CacheKey,
    pub(crate) scope: Option<String>,
    pub(crate) params: Params,
    pub(crate) directives: RequestDirectives,
    /// When the lookup of a network store started (`None`: the store answered at once, so no
    /// write can have crossed it).
    pub(crate) looked_up: Option<tokio::time::Instant>,
}

type Reply<B, E> = Result<Response<CacheBody<B>>, E>;

impl Exchange {
    /// Serves `entry` now.
    pub(crate) fn serve<B>(
        &self,
        entry: &Entry,
        parts: &Parts,
        status: CacheStatus,
    ) -> Response<CacheBody<B>> {
        self.serve_at(entry, parts, status, self.handle.now_ms())
    }

    /// Serves `entry` as of `now_ms` (the time its lookup was judged at).
    pub(crate) fn serve_at<B>(
        &self,
        entry: &Entry,
        parts: &Parts,
        status: CacheStatus,
        now_ms: u64,
    ) -> Response<CacheBody<B>> {
        respond::from_entry(
            entry,
            &parts.method,
            &parts.headers,
            now_ms,
            status,
            self.handle.shared.x_cache,
        )
    }

    fn x_cache(&self) -> bool {
        self.handle.shared.x_cache
    }

    /// Whether an entry may have reached the store since this request's lookup judged it a
    /// miss: an in-process store's lookup is not timed, so any plain miss counts (a reload or
    /// a stale entry does not); a network store's lookup counts when a write of this key
    /// completed after it started.
    fn write_may_have_crossed_lookup(&self, fwd: &str) -> bool {
        match self.looked_up {
            None => fwd == "miss",
            Some(since) => self
                .handle
                .shared
                .flights
                .written_since(self.key.digest(), since),
        }
    }

    /// Reads the store again; the entry and its response if it now holds a fresh one.
    async fn reread<B>(&self, parts: &Parts) -> Option<(Arc<Entry>, Response<CacheBody<B>>)> {
        let stats = &self.route.stats;
        let store = &self.handle.shared.store;
        let entry = self
            .handle
            .run(stats, "get", store.get(&self.key))
            .await
            .unwrap_or(None);
        let now = self.handle.now_ms();
        let Found::Fresh(entry, ttl) = evaluate(entry, &self.key, &parts.headers, now) else {
            return None;
        };
        let x_cache = self.handle.shared.x_cache;
        let (response, _) = hit(&self.route, &self.key, &entry, ttl, parts, now, x_cache);
        Some((entry, response))
    }

    /// The store had nothing usable.
    pub(crate) async fn miss<S, ReqBody, B>(
        self,
        inner: S,
        parts: Parts,
        body: ReqBody,
        stale: Option<Arc<Entry>>,
        fwd: &'static str,
    ) -> Reply<B, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<B>> + Send + 'static,
        S::Future: Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
    {
        if self.directives.only_if_cached {
            self.route.stats.record(Outcome::Miss);
            let status = CacheStatus::miss(fwd, false, Some("only-if-cached"));
            return Ok(respond::gateway_timeout(status, self.x_cache()));
        }
        // Requests whose response cannot serve others do not lead or follow a flight.
        let solo = if parts.method == http::Method::HEAD {
            Some("head")
        } else if self.directives.no_store {
            Some("request-no-store")
        } else if parts.headers.contains_key(header::IF_MATCH)
            || parts.headers.contains_key(header::IF_UNMODIFIED_SINCE)
        {
            // Preconditions the origin must judge (RFC 9110 §13.2): never answered from a copy.
            Some("precondition")
        } else {
            None
        };
        if let Some(detail) = solo {
            self.route.stats.record(Outcome::Miss);
            let status = CacheStatus::miss(fwd, false, Some(detail));
            return self.forward(inner, parts, body, stale, status).await;
        }

        let mut follows = 0;
        let guard = loop {
            match self.handle.shared.flights.join(*self.key.digest()) {
                Join::Leader(guard) => {
                    // An entry may have reached the store after this request's lookup: read
                    // again, holding the guard so that no other flight starts meanwhile, and
                    // land what is there for any follower.
                    if self.write_may_have_crossed_lookup(fwd) {
                        if let Some((entry, response)) = self.reread(&parts).await {
                            guard.land(Landing::Stored(entry));
                            return Ok(response);
                        }
                    }
                    break guard;
                }
                Join::Follower(slot) if flight::landed(&slot) => {
                    // Its entry is on its way to the store: wait for the write, then read
                    // the store as any request would (an invalidation since then counts).
                    let wait = self.handle.shared.collapse_timeout;
                    let _ = tokio::time::timeout(wait, flight::released(slot)).await;
                    if let Some((_, response)) = self.reread(&parts).await {
                        return Ok(response);
                    }
                    if follows < MAX_FOLLOWS {
                        follows += 1;
                        continue;
                    }
                    self.route.stats.record(Outcome::Miss);
                    let status = CacheStatus::miss(fwd, false, Some("write-pending"));
                    return self.forward(inner, parts, body, stale, status).await;
                }
                Join::Follower(slot) => {
                    let waited = tokio::time::timeout(
                        self.handle.shared.collapse_timeout,
                        flight::wait(slot),
                    )
                    .await;
                    let detail = match waited {
                        Ok(Some(Landing::Stored(entry)))
                            if vary_matches(&entry, &self.key, &parts.headers) =>
                        {
                            self.route.stats.record(Outcome::Collapsed);
                            let status = CacheStatus::Forward {
                                fwd,
                                stored: false,
                                collapsed: true,
                                detail: None,
                            };
                            return Ok(self.serve(&entry, &parts, status));
                        }
                        Ok(Some(_)) => "uncollapsible",
                        // The leader went away without an answer: try to lead.
                        Ok(None) if follows < MAX_FOLLOWS => {
                            follows += 1;
                            continue;
                        }
                        Ok(None) => "leader-lost",
                        Err(_) => "collapse-timeout",
                    };
                    self.route.stats.record(Outcome::Miss);
                    let status = CacheStatus::miss(fwd, false, Some(detail));
                    return self.forward(inner, parts, body, stale, status).await;
                }
            }
        };
        // Across instances: one of them fills, the others wait for its entry (bounded).
        let lock = match self.handle.shared.lock_wait {
            None => None,
            Some(wait) => {
                let usable = |e: &Entry| {
                    vary_matches(e, &self.key, &parts.headers)
                        && matches!(
                            e.freshness(self.handle.now_ms()),
                            crate::entry::Freshness::Fresh { .. }
                        )
                };
                match lock::acquire(&self.handle, &self.key, wait, usable).await {
                    lock::Fill::Call(held) => held,
                    lock::Fill::Found(entry) => {
                        guard.land(Landing::Stored(Arc::clone(&entry)));
                        self.route.stats.record(Outcome::Collapsed);
                        let status = CacheStatus::Forward {
                            fwd,
                            stored: false,
                            collapsed: true,
                            detail: Some("other-instance"),
                        };
                        return Ok(self.serve(&entry, &parts, status));
                    }
                }
            }
        };
        self.route.stats.record(Outcome::Miss);
        let mut parts = parts;
        strip_validators(&mut parts.headers);
        self.lead(guard, lock, inner, parts, body, stale, fwd).await
    }

    /// Serves a stale entry now and refreshes it in the background, once.
    pub(crate) fn refresh<S, ReqBody, B>(self, inner: S, mut parts: Parts, body: ReqBody)
    where
        S: Service<Request<ReqBody>, Response = Response<B>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ReqBody: Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
    {
        let Join::Leader(guard) = self.handle.shared.flights.join(*self.key.digest()) else {
            return;
        };
        // The entry answers GET: refresh it with a GET even when a HEAD found it stale.
        if parts.method == http::Method::HEAD {
            parts.method = http::Method::GET;
        }
        strip_validators(&mut parts.headers);
        tokio::spawn(async move {
            if let Ok(response) = self
                .lead(guard, None, inner, parts, body, None, "stale")
                .await
            {
                // Reading the body to its end is what stores it.
                let _ = http_body_util::BodyExt::collect(response.into_body()).await;
            }
        });
    }

    /// Asks the service as the leader of the flight for this key, and stores what may be stored.
    #[allow(clippy::too_many_arguments)]
    async fn lead<S, ReqBody, B>(
        self,
        guard: FlightGuard,
        lock: Option<LockHeld>,
        mut inner: S,
        parts: Parts,
        body: ReqBody,
        stale: Option<Arc<Entry>>,
        fwd: &'static str,
    ) -> Reply<B, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<B>>,
        B: Body<Data = Bytes>,
    {
        let shared = &self.handle.shared;
        // Taken before the call: an invalidation from now on hides what this call returns.
        let born = shared.store.stamp();
        let request_headers = parts.headers.clone();
        let method = parts.method.clone();
        let path = parts.uri.path().to_owned();
        let started = tokio::time::Instant::now();
        let result = inner.call(Request::from_parts(parts, body)).await;
        let response = match result {
            Ok(r) if !r.status().is_server_error() => r,
            failed => {
                // RFC 5861 §4: stale-if-error. `guard` drops: followers ask for themselves.
                if let Some(entry) = &stale {
                    return Ok(self.serve_stale_if_error(entry, &method, &request_headers));
                }
                return failed.map(|r| {
                    let (mut p, b) = r.into_parts();
                    p.headers.remove(TAGS_HEADER);
                    CacheStatus::miss(fwd, false, Some("server-error"))
                        .apply(&mut p.headers, self.x_cache());
                    Response::from_parts(p, CacheBody::stream(b))
                });
            }
        };
        let (mut rparts, rbody) = response.into_parts();
        let handler_tags = take_tags(&mut rparts.headers);

        let decision = policy::decide(&policy::Exchange {
            status: rparts.status,
            response_headers: &rparts.headers,
            request: self.directives,
            user_scoped: self.scope.is_some(),
            route: policy::RouteTtl {
                ttl: self.route.rule.ttl,
                override_response: self.route.rule.override_ttl,
                stale_while_revalidate: self.route.rule.stale_while_revalidate,
                stale_if_error: self.route.rule.stale_if_error,
            },
            now: shared.clock.now(),
        });
        let fresh = match decision {
            // A HEAD response has no content: it must never become a GET's entry.
            Decision::Store(_) if method == http::Method::HEAD => Err("head"),
            Decision::Store(fresh) => self.check_extra(&rparts, &rbody).map(|()| fresh),
            Decision::Skip(detail) => Err(detail),
        };
        let tags = fresh.and_then(|fresh| self.tags(handler_tags, &path).map(|t| (fresh, t)));
        let (fresh, tags) = match tags {
            Ok(ok) => ok,
            Err(detail) => {
                guard.land(Landing::Uncacheable);
                CacheStatus::miss(fwd, false, Some(detail))
                    .apply(&mut rparts.headers, self.x_cache());
                return Ok(Response::from_parts(rparts, CacheBody::stream(rbody)));
            }
        };

        let vary = match policy::vary(&rparts.headers) {
            policy::Vary::Names(names) => {
                let digest = *self.key.variant(&names, &request_headers).digest();
                Some((names.into_boxed_slice(), digest))
            }
            _ => None,
        };
        let mut headers = rparts.headers.clone();
        policy::strip_hop_by_hop(&mut headers);
        let etag = headers
            .get(header::ETAG)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static(""));
        let entry = Entry {
            status: rparts.status,
            headers,
            body: Bytes::new(),
            trailers: None,
            etag,
            stored_at: 0,
            born,
            lifetime: fresh.lifetime,
            initial_age: fresh.initial_age,
            stale_while_revalidate: fresh.stale_while_revalidate,
            stale_if_error: fresh.stale_if_error,
            must_revalidate: fresh.must_revalidate,
            fill_time: Duration::ZERO,
            tags,
            vary,
            served: Default::default(),
        };
        let limit = self.route.max_body_size;
        // Say `stored` only when the length is known to fit; a stream of unknown length may
        // still turn out too big after the headers have left.
        let known = rparts.headers.contains_key(header::CONTENT_LENGTH)
            || rbody.size_hint().exact().is_some();
        CacheStatus::miss(fwd, known, None).apply(&mut rparts.headers, self.x_cache());
        let fill = Fill {
            handle: self.handle.clone(),
            key: self.key,
            entry,
            stats: Arc::clone(&self.route.stats),
            guard: Some(guard),
            lock,
            started,
        };
        Ok(Response::from_parts(
            rparts,
            CacheBody::recording(rbody, Recorder::new(fill, limit)),
        ))
    }

    /// Limits that RFC 9111 does not cover: size and gRPC status.
    fn check_extra<B: Body>(
        &self,
        parts: &http::response::Parts,
        body: &B,
    ) -> Result<(), &'static str> {
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .or(body.size_hint().upper());
        if declared.is_some_and(|n| n > self.route.max_body_size as u64) {
            return Err("too-big");
        }
        // A Trailers-Only gRPC error carries grpc-status in the headers, with HTTP 200.
        if grpc_failed(&parts.headers) {
            return Err("grpc-status");
        }
        Ok(())
    }

    /// The entry's tags: the rule's, the handler's, and the one for its path (RFC 9111 §4.4).
    fn tags(&self, handler: Vec<String>, path: &str) -> Result<Box<[Box<str>]>, &'static str> {
        let mut tags = Vec::with_capacity(self.route.rule.tags.len() + handler.len() + 1);
        for t in &self.route.rule.tags {
            match t.render(self.scope.as_deref(), &self.params) {
                Some(tag) => tags.push(tag.into_boxed_str()),
                None => return Err("tag-unresolved"),
            }
        }
        tags.extend(handler.into_iter().map(String::into_boxed_str));
        tags.push(uri_tag(self.scope.as_deref(), path).into_boxed_str());
        Ok(tags.into_boxed_slice())
    }

    fn serve_stale_if_error<B>(
        &self,
        entry: &Entry,
        method: &http::Method,
        headers: &HeaderMap,
    ) -> Response<CacheBody<B>> {
        self.route.stats.record(Outcome::Stale);
        let now = self.handle.now_ms();
        let by = entry.age(now).saturating_sub(entry.lifetime).as_secs();
        let status = CacheStatus::Stale {
            by,
            detail: "stale-if-error",
        };
        respond::from_entry(entry, method, headers, now, status, self.x_cache())
    }

    /// Forwards without storing (stale-if-error still applies).
    async fn forward<S, ReqBody, B>(
        self,
        mut inner: S,
        parts: Parts,
        body: ReqBody,
        stale: Option<Arc<Entry>>,
        status: CacheStatus,
    ) -> Reply<B, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<B>>,
    {
        let method = parts.method.clone();
        let headers = stale.as_ref().map(|_| parts.headers.clone());
        let result = inner.call(Request::from_parts(parts, body)).await;
        if let (Some(entry), Some(headers)) = (&stale, &headers) {
            if result
                .as_ref()
                .map_or(true, |r| r.status().is_server_error())
            {
                return Ok(self.serve_stale_if_error(entry, &method, headers));
            }
        }
        let (mut p, b) = result?.into_parts();
        p.headers.remove(TAGS_HEADER);
        status.apply(&mut p.headers, self.x_cache());
        Ok(Response::from_parts(p, CacheBody::stream(b)))
    }
}

/// Removes the client's validators before the cache asks the origin for a whole response to
/// store: a 304 meant for one client's copy would leave nothing to store (RFC 9111 §4.3.1 lets
/// a cache send its own validators instead). The client still gets a correct full response.
fn strip_validators(headers: &mut HeaderMap) {
    headers.remove(header::IF_NONE_MATCH);
    headers.remove(header::IF_MODIFIED_SINCE);
}

/// Whether the headers carry a gRPC status other than OK (a Trailers-Only response).
fn grpc_failed(headers: &HeaderMap) -> bool {
    headers.get("grpc-status").is_some_and(|s| s != "0")
}

/// Removes the handler's tag header and returns its tags.
fn take_tags(headers: &mut HeaderMap) -> Vec<String> {
    let mut tags = Vec::new();
    while let Some(v) = headers.remove(TAGS_HEADER) {
        if let Ok(s) = v.to_str() {
            tags.extend(
                s.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned),
            );
        }
    }
    tags
}

/// The tag every stored response carries for its own path, so a write to the path
/// invalidates it (RFC 9111 §4.4). Scoped by user, so one user's write leaves others' entries.
fn uri_tag(scope: Option<&str>, path: &str) -> String {
    let scope = scope.unwrap_or("");
    let mut tag = String::with_capacity(16 + scope.len() + path.len());
    tag.push_str("larder:uri:");
    tag.push_str(&scope.len().to_string());
    tag.push(':');
    tag.push_str(scope);
    tag.push_str(path);
    tag
}

/// A write: forwarded, and when it succeeds its tags are invalidated before it is answered.
pub(crate) struct Write {
    pub(crate) handle: CacheHandle,
    pub(crate) route: Arc<Route>,
    pub(crate) scope: Option<String>,
    pub(crate) params: Params,
    pub(crate) path: String,
}

impl Write {
    pub(crate) async fn run<S, ReqBody, B>(
        self,
        mut inner: S,
        req: Request<ReqBody>,
    ) -> Reply<B, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<B>>,
    {
        let response = inner.call(req).await?;
        let (mut parts, body) = response.into_parts();
        let handler_tags = take_tags(&mut parts.headers);
        let mut detail = None;
        // RFC 9111 §4.4: only a successful (2xx or 3xx) response invalidates. A gRPC call
        // fails with HTTP 200: a Trailers-Only error (grpc-status in the headers, how tonic
        // answers a handler's `Err`) invalidates nothing. A status that arrives in trailers
        // is known only after the response has left, so such a failure still invalidates:
        // one refill too many, never a stale read.
        let succeeded = parts.status.is_success() || parts.status.is_redirection();
        if succeeded && !grpc_failed(&parts.headers) {
            let mut tags = handler_tags;
            for t in &self.route.rule.invalidates {
                match t.render(self.scope.as_deref(), &self.params) {
                    Some(tag) => tags.push(tag),
                    None => {
                        tracing::warn!(rule = %self.route.rule.name, "an invalidation tag could not be filled for this request")
                    }
                }
            }
            tags.push(uri_tag(self.scope.as_deref(), &self.path));
            // A failure is deferred (see `breaker.rs`): the store is not read until it is applied.
            self.route.stats.invalidated();
            detail = Some(
                match self.handle.invalidate(&self.route.stats, tags).await {
                    Ok(()) => "invalidated",
                    Err(_) => "invalidation-deferred",
                },
            );
        }
        let status = CacheStatus::Forward {
            fwd: "method",
            stored: false,
            collapsed: false,
            detail,
        };
        status.apply(&mut parts.headers, self.handle.shared.x_cache);
        Ok(Response::from_parts(parts, CacheBody::stream(body)))
    }
}
