//! Phase 3, exchange: a read is answered from what the lookup found (hit), with another
//! request's response (follow a flight), or by the service while the store is filled (lead).
//!
//! Every answer from an entry goes through [`serve`]. A miss takes its turn with the
//! [coalescer](crate::engine::coalesce): it leads a flight, follows one (sharing its entry
//! when the visibility rule allows), or asks alone for an [`Alone`] reason; keys that proved
//! uncacheable lead no flight at all (the [predictor](crate::engine::predictor)). A leader may
//! also take the cross-instance fill lock, then asks the service and hands the response to the
//! [fill](super::fill) phase.

use std::{sync::Arc, time::Instant};

use bytes::Bytes;
use http::{
    HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header, request::Parts, response,
};
use http_body::Body;
use tower_service::Service;
use tracing::Instrument;

use crate::{
    CacheHandle, CacheKey, Entry,
    engine::{
        coalesce::{Lead, Recheck, Ticket, Turn},
        lock::{self, LockHeld, LockOutcome},
        refill,
    },
    entry::Freshness,
    handle::CacheState,
    middleware::{
        body::CacheBody,
        future::ResponseFuture,
        respond,
        status::{CacheStatus, XCache},
    },
    phase::{
        audit,
        classify::ReadRequest,
        fill::{self, Asked, Fill},
        lookup::{self, Found},
    },
    reason::{Alone, Detail, Fwd, StaleUse, Uncacheable},
    rules::{
        policy::{self, RequestDirectives},
        route::{self, Params, Route},
    },
    stats::Outcome,
};

type Reply<B, E> = Result<Response<CacheBody<B>>, E>;

/// Answers a request (its `method` and `headers`) from `entry` at `now_ms`, with `status`,
/// and counts it, with its response time when the request `started` (a client's request):
/// the one way an entry is served (hits, stale, shared and re-read entries).
pub(crate) fn serve<B>(
    shared: &CacheState,
    route: &Route,
    entry: &Entry,
    method: &Method,
    headers: &HeaderMap,
    status: CacheStatus,
    (now_ms, started): (u64, Option<Instant>),
) -> Response<CacheBody<B>> {
    route.stats.answered(status.outcome(), started);
    respond::from_entry(entry, method, headers, now_ms, status, shared.x_cache)
}

/// What a hit of `entry` sets off in the background, as its rule asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterHit {
    /// Early refresh (XFetch) wants the entry refreshed now.
    Refresh,
    /// The hit was drawn for an audit (see [`audit`]).
    Audit,
}

/// Whether a hit of `entry` at `now_ms` sets anything off: a refresh first, else an audit.
/// Two branches for a rule that asks for neither.
pub(crate) fn after_hit(route: &Route, entry: &Entry, now_ms: u64) -> Option<AfterHit> {
    let refresh = route
        .rule
        .early_refresh
        .is_some_and(|beta| entry.refresh_early(now_ms, beta));
    if refresh {
        Some(AfterHit::Refresh)
    } else if audit::due(route, now_ms) {
        Some(AfterHit::Audit)
    } else {
        None
    }
}

/// One cacheable request, from its lookup to its response.
pub(crate) struct Exchange {
    pub(crate) handle: CacheHandle,
    pub(crate) route: Arc<Route>,
    pub(crate) key: CacheKey,
    pub(crate) scope: Option<String>,
    pub(crate) params: Params,
    pub(crate) directives: RequestDirectives,
    /// The store's stamp when the request started, after its lookup: what a shared entry
    /// must have been born at or after (see the coalescer).
    pub(crate) since: u64,
    /// The client's consistency token (see [`ReadRequest::after`]).
    pub(crate) after: Option<u64>,
    /// When the lookup of a network store started (`None`: the store answered at once, so no
    /// write can have crossed it).
    pub(crate) looked_up: Option<tokio::time::Instant>,
    /// For a rule that refills after writes, how to send this request again (set on a miss).
    pub(crate) refill: Option<Arc<dyn refill::Replay>>,
    /// When a client's request arrived at the layer (`None` for what runs in the background:
    /// refreshes, what a hit sets off): its response time is counted.
    pub(crate) started: Option<Instant>,
    /// A stale entry with the origin's validators: the service is asked conditionally, and a
    /// `304` refreshes it instead of sending the body again (RFC 9111 §4.3).
    pub(crate) revalidating: Option<Arc<Entry>>,
    /// The service answered `304` and the entry was refreshed: its `Cache-Status` says so.
    revalidated: bool,
    /// The refreshed entry's tags: the stale one's (the origin's `larder-tags` are not sent
    /// again with a `304`).
    kept_tags: Option<Box<[Box<str>]>>,
    /// See [`ReadRequest::credentialed`].
    pub(crate) credentialed: bool,
}

impl Exchange {
    /// The exchange of a classified read of `route` (`looked_up`: when a network store's
    /// lookup started). Its stamp is the store's now, after an in-process lookup.
    pub(crate) fn new(
        handle: &CacheHandle,
        route: &Arc<Route>,
        params: Params,
        read: ReadRequest,
        (looked_up, started): (Option<tokio::time::Instant>, Option<Instant>),
    ) -> Self {
        Exchange {
            handle: handle.clone(),
            route: Arc::clone(route),
            key: read.key,
            scope: read.scope,
            params,
            directives: read.directives,
            // A client that saw an invalidation is never answered with what it hid.
            since: handle.shared.store.stamp().max(read.after.unwrap_or(0)),
            after: read.after,
            looked_up,
            refill: None,
            started,
            revalidating: None,
            revalidated: false,
            kept_tags: None,
            credentialed: read.credentialed,
        }
    }

    /// Serves what the lookup found at `now_ms`, or goes to the service.
    pub(crate) fn answer<S, ReqBody, B>(
        mut self,
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
        ReqBody: Default + Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
    {
        match found {
            Found::Fresh { entry, ttl } => {
                let status = CacheStatus::Hit { ttl };
                let then = after_hit(&self.route, &entry, now_ms);
                // Decoded for this request alone (a network store's hit): moved, not copied.
                let entry = match (then, Arc::try_unwrap(entry)) {
                    (None, Ok(owned)) => {
                        self.route.stats.answered(status.outcome(), self.started);
                        let (method, headers) = (&parts.method, &parts.headers);
                        let x_cache = self.handle.shared.x_cache;
                        return ResponseFuture::ready(respond::from_owned_entry(
                            owned, method, headers, now_ms, status, x_cache,
                        ));
                    }
                    (_, Ok(owned)) => Arc::new(owned),
                    (_, Err(shared)) => shared,
                };
                let response = self.serve(&entry, &parts.method, &parts.headers, status, now_ms);
                if let Some(then) = then {
                    self.set_off(then, entry, inner, parts, body);
                }
                ResponseFuture::ready(response)
            }
            Found::Revalidate { entry, by } => {
                let status = CacheStatus::Stale {
                    by: by.as_secs(),
                    used: StaleUse::WhileRevalidate,
                };
                let response = self.serve(&entry, &parts.method, &parts.headers, status, now_ms);
                // Refreshed conditionally when the origin gave a validator (not a POST keyed
                // by its body: a conditional POST means something else).
                self.revalidating = entry
                    .validators()
                    .filter(|_| parts.method != Method::POST)
                    .map(|_| Arc::clone(&entry));
                self.refresh(inner, parts, body);
                ResponseFuture::ready(response)
            }
            Found::Miss {
                stale,
                revalidate,
                fwd,
            } => {
                // A HEAD is answered by the origin itself: only a GET revalidates the entry.
                self.revalidating = revalidate.filter(|_| parts.method == Method::GET);
                let span = tracing::debug_span!("larder.miss", route = %self.route.rule.name, key = %self.key, fwd = fwd.as_str());
                ResponseFuture::boxed(Box::pin(
                    self.miss(inner, parts, body, stale, fwd).instrument(span),
                ))
            }
        }
    }

    fn serve<B>(
        &self,
        entry: &Entry,
        method: &Method,
        headers: &HeaderMap,
        status: CacheStatus,
        now_ms: u64,
    ) -> Response<CacheBody<B>> {
        let shared = &self.handle.shared;
        let at = (now_ms, self.started);
        serve(shared, &self.route, entry, method, headers, status, at)
    }

    /// Counts the response time of a miss, once the service's response is at hand.
    fn took_miss(&self) {
        if let Some(started) = self.started {
            self.route.stats.took(Outcome::Miss, started);
        }
    }

    /// The store had nothing usable: follow a flight, or lead one (or ask alone).
    async fn miss<S, ReqBody, B>(
        self,
        inner: S,
        mut parts: Parts,
        body: ReqBody,
        stale: Option<Arc<Entry>>,
        fwd: Fwd,
    ) -> Reply<B, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<B>> + Send + 'static,
        S::Future: Send + 'static,
        ReqBody: Default,
        B: Body<Data = Bytes> + Send + 'static,
    {
        let shared = &self.handle.shared;
        if self.directives.only_if_cached {
            self.route.stats.answered(Outcome::Miss, self.started);
            let status = CacheStatus::forward(fwd, Detail::Alone(Alone::OnlyIfCached));
            return Ok(respond::gateway_timeout(status, shared.x_cache));
        }
        // Requests whose response cannot serve others do not lead or follow a flight.
        if let Some(alone) = alone(&parts, self.directives) {
            self.route.stats.record(Outcome::Miss);
            let status = CacheStatus::forward(fwd, Detail::Alone(alone));
            return self.forward(inner, parts, body, stale, status).await;
        }
        // A key that proved uncacheable leads no flight: nobody would wait for it usefully.
        // Nor does a request with credentials (on a rule neither user-scoped nor shared):
        // what it is answered may be for it alone, and what others are answered not for it.
        let lead = if self.credentialed || shared.predictor.uncacheable(self.key.digest()).is_some()
        {
            None
        } else {
            match self.take_turn(&parts, fwd).await {
                Ok(lead) => Some(lead),
                Err(Answered::Served(response)) => return Ok(response),
                Err(Answered::Alone(why)) => {
                    self.route.stats.record(Outcome::Miss);
                    let status = CacheStatus::forward(fwd, Detail::Alone(why));
                    return self.forward(inner, parts, body, stale, status).await;
                }
            }
        };
        let lock = match self.fill_lock(&lead, &parts, fwd).await {
            Ok(lock) => lock,
            Err(response) => return Ok(response),
        };
        self.route.stats.record(Outcome::Miss);
        policy::strip_validators(&mut parts.headers);
        self.ask_conditionally(&mut parts.headers);
        let req = Request::from_parts(parts, body);
        self.lead(lead, lock, inner, req, stale, fwd).await
    }

    /// The request's headers as the client sent them (less its validators): without those
    /// this cache added to ask conditionally, which must never answer the client (a stale
    /// entry served on an error would otherwise be a `304` to a client that asked for none).
    fn clients_headers(&self, sent: &HeaderMap) -> HeaderMap {
        let mut headers = sent.clone();
        if self.revalidating.is_some() {
            policy::strip_validators(&mut headers);
        }
        headers
    }

    /// Makes the request to the service conditional on the stale entry being revalidated, if
    /// any (its validators replace the client's, already removed).
    fn ask_conditionally(&self, headers: &mut HeaderMap) {
        if let Some(validators) = self.revalidating.as_ref().and_then(|e| e.validators()) {
            policy::add_validators(headers, validators);
        }
    }

    /// Takes this request's turn with the coalescer: `Ok` to lead, or how it was answered.
    async fn take_turn<B>(&self, parts: &Parts, fwd: Fwd) -> Result<Lead, Answered<B>> {
        let shared = &self.handle.shared;
        let recheck = match self.looked_up {
            // An in-process store's lookup is not timed: any plain miss counts.
            None if fwd == Fwd::Miss => Recheck::Always,
            None => Recheck::Never,
            Some(at) => Recheck::IfWrittenSince(at),
        };
        let ticket = Ticket {
            since: self.since,
            wait: shared.collapse_timeout,
            recheck,
        };
        let (stats, key, headers) = (&*self.route.stats, &self.key, &parts.headers);
        let reread = move || async move {
            let fresh = lookup::read_fresh(shared, stats, key, self.after, headers).await?;
            Some((Arc::clone(&fresh.entry), fresh))
        };
        let digest = *self.key.digest();
        match shared.coalescer.take_turn(digest, ticket, reread).await {
            Turn::Lead(lead) => Ok(lead),
            Turn::Shared(entry) if lookup::vary_matches(&entry, &self.key, &parts.headers) => {
                let status = CacheStatus::Collapsed { fwd, detail: None };
                let now = shared.clock.now_ms();
                let response = self.serve(&entry, &parts.method, &parts.headers, status, now);
                Err(Answered::Served(response))
            }
            Turn::Shared(_) => Err(Answered::Alone(Alone::Uncollapsible)),
            Turn::Found {
                value: fresh,
                waited,
            } => {
                // After following a flight, the answer came from another request's call
                // (through the store): shared, as `Turn::Shared` is, and timed as a miss.
                let status = if waited {
                    CacheStatus::Collapsed { fwd, detail: None }
                } else {
                    CacheStatus::Hit { ttl: fresh.ttl }
                };
                let response = self.serve(
                    &fresh.entry,
                    &parts.method,
                    &parts.headers,
                    status,
                    fresh.now_ms,
                );
                Err(Answered::Served(response))
            }
            Turn::Alone(why) => Err(Answered::Alone(why)),
        }
    }

    /// Across instances: one of them fills, the others wait for its entry (bounded). `Err`
    /// when another instance's entry answered the request.
    async fn fill_lock<B>(
        &self,
        lead: &Option<Lead>,
        parts: &Parts,
        fwd: Fwd,
    ) -> Result<Option<LockHeld>, Response<CacheBody<B>>> {
        let shared = &self.handle.shared;
        // A miss that leads no flight (its key proved uncacheable) takes no lock either:
        // nobody would wait for it usefully.
        let (Some(wait), Some(lead)) = (shared.lock_wait, lead) else {
            return Ok(None);
        };
        let usable = |e: &Entry| {
            lookup::vary_matches(e, &self.key, &parts.headers)
                && matches!(e.freshness(shared.clock.now_ms()), Freshness::Fresh { .. })
        };
        let (breaker, typed, key) = (&shared.breaker, &shared.typed, &self.key);
        match lock::acquire(breaker, typed, key, self.after, wait, usable).await {
            LockOutcome::Call(held) => Ok(held),
            LockOutcome::Found(entry) => {
                lead.land(Arc::clone(&entry));
                let status = CacheStatus::Collapsed {
                    fwd,
                    detail: Some(Detail::OtherInstance),
                };
                let now = shared.clock.now_ms();
                Err(self.serve(&entry, &parts.method, &parts.headers, status, now))
            }
        }
    }

    /// Starts what a hit set off: its refresh or its audit.
    pub(crate) fn set_off<S, ReqBody, B>(
        self,
        then: AfterHit,
        entry: Arc<Entry>,
        inner: S,
        parts: Parts,
        body: ReqBody,
    ) where
        S: Service<Request<ReqBody>, Response = Response<B>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ReqBody: Default + Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
    {
        match then {
            AfterHit::Refresh => self.refresh(inner, parts, body),
            AfterHit::Audit => {
                let (handle, route, key) = (&self.handle, &self.route, &self.key);
                audit::spawn(handle, route, key, entry, inner, parts, body);
            }
        }
    }

    /// Serves a stale entry now and refreshes it in the background, once.
    pub(crate) fn refresh<S, ReqBody, B>(mut self, inner: S, mut parts: Parts, body: ReqBody)
    where
        S: Service<Request<ReqBody>, Response = Response<B>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ReqBody: Default + Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
    {
        let coalescer = &self.handle.shared.coalescer;
        let Some(lead) = coalescer.try_lead(*self.key.digest()) else {
            return;
        };
        // The entry answers GET: refresh it with a GET even when a HEAD found it stale.
        if parts.method == Method::HEAD {
            parts.method = Method::GET;
        }
        policy::strip_validators(&mut parts.headers);
        self.ask_conditionally(&mut parts.headers);
        // The client was answered: the refresh's call is not its response time.
        self.started = None;
        tokio::spawn(async move {
            let req = Request::from_parts(parts, body);
            let refreshed = self.lead(Some(lead), None, inner, req, None, Fwd::Stale);
            if let Ok(response) = refreshed.await {
                // Reading the body to its end is what stores it.
                let _ = http_body_util::BodyExt::collect(response.into_body()).await;
            }
        });
    }

    /// Asks the service (leading the flight `lead`, if any) and hands what may be stored to
    /// the fill phase.
    async fn lead<S, ReqBody, B>(
        mut self,
        lead: Option<Lead>,
        lock: Option<LockHeld>,
        mut inner: S,
        req: Request<ReqBody>,
        stale: Option<Arc<Entry>>,
        fwd: Fwd,
    ) -> Reply<B, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<B>>,
        ReqBody: Default,
        B: Body<Data = Bytes>,
    {
        let shared = &self.handle.shared;
        let refill = self.refill.take().map(|replay| refill::Seed {
            head: refill::Head {
                method: req.method().clone(),
                uri: req.uri().clone(),
                version: req.version(),
                headers: req.headers().clone(),
                extensions: req.extensions().clone(),
            },
            replay,
        });
        let mut asked = Origin {
            // Taken before the call: an invalidation from now on hides what this call returns.
            born: shared.store.stamp(),
            started: tokio::time::Instant::now(),
            method: req.method().clone(),
            headers: self.clients_headers(req.headers()),
            path: route::request_path(req.uri(), req.extensions()).to_owned(),
        };
        // A conditional request may have to be sent again without its conditions (a 304
        // that does not select the stored response): keep what it takes.
        let again = self.revalidating.as_ref().map(|_| refill::Head {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: asked.headers.clone(),
            extensions: req.extensions().clone(),
        });
        let mut response = inner.call(req).await;
        if let Some(entry) = self.revalidating.take() {
            response = match response {
                // RFC 9111 §4.3.4: the stale entry is still good; refreshed with the 304's
                // headers, it answers this request and is stored again, no body sent twice.
                Ok(r) if r.status() == StatusCode::NOT_MODIFIED && selects(&entry, r.headers()) => {
                    // Its body is the stale entry's: an invalidation after that entry was
                    // read still hides it (never revived by a validator too coarse to see
                    // the write), and its tags (the origin's among them) stay.
                    asked.born = asked.born.min(entry.born);
                    self.kept_tags = Some(entry.tags.clone());
                    let (parts, body) = refreshed(&entry, r.into_parts().0, shared.clock.now());
                    self.took_miss();
                    self.revalidated = true;
                    return Ok(self.record(parts, body, asked, (lead, lock, refill), fwd));
                }
                // A 304 for another representation (§4.3.4): ask again, unconditionally.
                Ok(r) if r.status() == StatusCode::NOT_MODIFIED => match again {
                    Some(head) => match std::future::poll_fn(|cx| inner.poll_ready(cx)).await {
                        Ok(()) => inner.call(head.into_request()).await,
                        Err(e) => Err(e),
                    },
                    None => Ok(r),
                },
                other => other,
            };
        }
        match response {
            Ok(r) if !r.status().is_server_error() => {
                let (parts, body) = r.into_parts();
                let body = if self.wants_whole_body(&parts, &body) {
                    Incoming::read_whole(body).await
                } else {
                    Incoming::Stream(body)
                };
                self.took_miss();
                Ok(self.record(parts, body, asked, (lead, lock, refill), fwd))
            }
            failed => {
                // RFC 5861 §4: stale-if-error. `lead` drops: followers ask for themselves.
                if let Some(entry) = &stale {
                    return Ok(self.serve_stale_if_error(entry, &asked.method, &asked.headers));
                }
                self.took_miss();
                let status =
                    CacheStatus::forward(fwd, Detail::Uncacheable(Uncacheable::ServerError));
                failed.map(|r| respond::passed_through(r, status, shared.x_cache))
            }
        }
    }

    /// Whether the origin's response is read whole before it is answered, so that a first
    /// response already carries the `ETag` its hits will: a 200 without one, of a known and
    /// small length (at most [`WHOLE_BODY_MAX`] and the rule's limit), unless the handle
    /// hides what the cache adds.
    fn wants_whole_body<B: Body>(&self, parts: &response::Parts, body: &B) -> bool {
        self.handle.shared.x_cache != XCache::Hidden
            && parts.status == StatusCode::OK
            && !parts.headers.contains_key(header::ETAG)
            && body.size_hint().exact().is_some_and(|n| {
                n > 0 && n <= WHOLE_BODY_MAX && n <= self.route.max_body_size as u64
            })
    }

    /// Hands the origin's response to the fill phase: copied into the entry as it streams to
    /// the client (or all at once, read whole), or passed on with the reason it is not stored
    /// (the followers are told).
    fn record<B: Body<Data = Bytes>>(
        mut self,
        mut parts: response::Parts,
        body: Incoming<B>,
        origin: Origin,
        (lead, lock, refill): (Option<Lead>, Option<LockHeld>, Option<refill::Seed>),
        fwd: Fwd,
    ) -> Response<CacheBody<B>> {
        let shared = &self.handle.shared;
        let asked = Asked {
            route: &self.route,
            key: &self.key,
            scope: self.scope.as_deref(),
            params: &self.params,
            directives: self.directives,
            method: &origin.method,
            headers: &origin.headers,
            path: &origin.path,
            born: origin.born,
            now: shared.clock.now(),
            credentialed: self.credentialed,
        };
        let prepared = match &body {
            Incoming::Whole { broken: true, .. } => Err(Uncacheable::ServerError),
            _ => fill::prepare(&asked, &mut parts, body.size_hint()),
        };
        let mut entry = match prepared {
            Ok(mut entry) => {
                if let Some(kept) = self.kept_tags.take() {
                    merge_tags(&mut entry, kept);
                }
                entry
            }
            Err(reason) => {
                if let Some(lead) = &lead {
                    lead.uncacheable();
                }
                shared.predictor.remember(*self.key.digest(), reason);
                CacheStatus::forward(fwd, Detail::Uncacheable(reason))
                    .apply(&mut parts.headers, shared.x_cache);
                return Response::from_parts(parts, body.into_cache_body());
            }
        };
        // Say `stored` only when the length is known to fit (a stream of unknown length may
        // still turn out too big after the headers have left) and the store is taking writes
        // (a network store's write lands after the headers have left; a failing one would
        // not take it).
        let known = parts.headers.contains_key(header::CONTENT_LENGTH)
            || body.size_hint().exact().is_some();
        // Read whole: the ETag its hits will carry goes out with this first response too
        // (never read whole when the handle hides it).
        if let Incoming::Whole { data, .. } = &body {
            let etag = fill::give_etag(&mut entry, data, false);
            parts.headers.insert(header::ETAG, etag);
        }
        let status = if known && shared.breaker.healthy() {
            if self.revalidated {
                CacheStatus::Revalidated { fwd }
            } else {
                CacheStatus::Stored { fwd }
            }
        } else {
            CacheStatus::forward(fwd, None)
        };
        status.apply(&mut parts.headers, shared.x_cache);
        let limit = self.route.max_body_size;
        let mut fill = Fill {
            handle: self.handle.clone(),
            key: self.key,
            entry,
            stats: Arc::clone(&self.route.stats),
            lead,
            lock,
            started: origin.started,
            refill,
            varies: Arc::clone(&self.route.varies),
        };
        match body {
            Incoming::Stream(body) => {
                Response::from_parts(parts, CacheBody::recording(body, fill, limit))
            }
            Incoming::Whole { data, trailers, .. } => {
                if let Some(t) = &trailers {
                    fill.trailers(t.clone());
                }
                fill.finish(vec![data.clone()]);
                Response::from_parts(parts, CacheBody::replay(data, trailers.as_ref()))
            }
        }
    }

    /// RFC 5861 §4: the service failed and a stale entry may stand in for its response.
    fn serve_stale_if_error<B>(
        &self,
        entry: &Entry,
        method: &Method,
        headers: &HeaderMap,
    ) -> Response<CacheBody<B>> {
        let now = self.handle.now_ms();
        let by = entry.age(now).saturating_sub(entry.lifetime).as_secs();
        let status = CacheStatus::Stale {
            by,
            used: StaleUse::IfError,
        };
        // Counted stale, timed as a miss: it waited for the service to fail.
        self.took_miss();
        let shared = &self.handle.shared;
        serve(
            shared,
            &self.route,
            entry,
            method,
            headers,
            status,
            (now, None),
        )
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
        self.took_miss();
        Ok(respond::passed_through(
            result?,
            status,
            self.handle.shared.x_cache,
        ))
    }
}

/// Whether a `304` selects the stored `entry` (RFC 9111 §4.3.4): it carries no `ETag`, or
/// the one the entry has.
fn selects(entry: &Entry, not_modified: &HeaderMap) -> bool {
    match not_modified.get(header::ETAG) {
        None => true,
        Some(etag) => entry.headers.get(header::ETAG) == Some(etag),
    }
}

/// Adds `kept` to the entry's tags (those it lacks).
fn merge_tags(entry: &mut Entry, kept: Box<[Box<str>]>) {
    let mut tags = entry.tags.to_vec();
    for tag in kept {
        if !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    entry.tags = tags.into_boxed_slice();
}

/// The response a `304` stands for: the stored one, its headers updated with the `304`'s
/// (RFC 9111 §4.3.4), with the stored body, whole.
fn refreshed<B>(
    entry: &Entry,
    mut not_modified: response::Parts,
    now: std::time::SystemTime,
) -> (response::Parts, Incoming<B>) {
    // A 304 without a `Date` is dated on receipt (RFC 9110 §6.6.1): the stored one would
    // make the refreshed entry look as old as the stale one.
    if !not_modified.headers.contains_key(header::DATE) {
        let now = httpdate::fmt_http_date(now);
        if let Ok(now) = HeaderValue::from_str(&now) {
            not_modified.headers.insert(header::DATE, now);
        }
    }
    not_modified.status = entry.status;
    not_modified.headers = policy::updated_headers(&entry.headers, &not_modified.headers);
    let body = Incoming::Whole {
        data: entry.body.clone(),
        trailers: entry.trailers.clone(),
        broken: false,
    };
    (not_modified, body)
}

/// The longest body read whole before its response is answered (see
/// [`Exchange::wants_whole_body`]).
const WHOLE_BODY_MAX: u64 = 64 * 1024;

/// The origin's body: streamed, or read whole before the response is answered.
enum Incoming<B> {
    Stream(B),
    /// All of it (`broken`: it failed before its end, and `data` is what came).
    Whole {
        data: Bytes,
        trailers: Option<HeaderMap>,
        broken: bool,
    },
}

impl<B: Body<Data = Bytes>> Incoming<B> {
    /// Reads `body` to its end. A body that fails is kept as far as it came, marked broken:
    /// it is answered truncated (as it would have streamed) and never stored.
    async fn read_whole(body: B) -> Self {
        let mut body = std::pin::pin!(body);
        let mut chunks = Vec::new();
        let mut trailers = None;
        let mut broken = false;
        while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            match frame {
                Ok(frame) => match frame.into_data() {
                    Ok(data) => chunks.push(data),
                    Err(frame) => trailers = frame.into_trailers().ok().or(trailers),
                },
                Err(_) => {
                    broken = true;
                    break;
                }
            }
            if body.is_end_stream() {
                break;
            }
        }
        Incoming::Whole {
            // One frame (the usual small body) is kept as it came, not copied.
            data: fill::concat(chunks),
            trailers,
            broken,
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Incoming::Stream(body) => body.size_hint(),
            Incoming::Whole { data, .. } => http_body::SizeHint::with_exact(data.len() as u64),
        }
    }

    /// The body answered without storing it.
    fn into_cache_body(self) -> CacheBody<B> {
        match self {
            Incoming::Stream(body) => CacheBody::stream(body),
            Incoming::Whole { data, trailers, .. } => CacheBody::replay(data, trailers.as_ref()),
        }
    }
}

/// The leader's request as the origin was asked it.
struct Origin {
    born: u64,
    started: tokio::time::Instant,
    method: Method,
    headers: HeaderMap,
    path: String,
}

/// How a miss was answered without leading.
enum Answered<B> {
    /// From an entry (shared by the leader, or read again from the store).
    Served(Response<CacheBody<B>>),
    /// It asks the service itself, for this reason.
    Alone(Alone),
}

/// Why a request's response cannot serve others, so it neither leads nor follows a flight.
fn alone(parts: &Parts, directives: RequestDirectives) -> Option<Alone> {
    if parts.method == Method::HEAD {
        Some(Alone::Head)
    } else if directives.no_store {
        Some(Alone::RequestNoStore)
    } else if parts.headers.contains_key(header::IF_MATCH)
        || parts.headers.contains_key(header::IF_UNMODIFIED_SINCE)
    {
        // Preconditions the origin must judge (RFC 9110 §13.2): never answered from a copy.
        Some(Alone::Precondition)
    } else {
        None
    }
}
