//! The [`Cache`] service: each request's life, top-down.
//!
//! [`classify`] decides from the request alone whether the cache takes part (a read gets its
//! key, a write will invalidate, anything else bypasses); a read is looked up ([`lookup`]) and
//! then answered by the [`Exchange`]: a hit, a follower of another request's call, or a leader
//! whose response fills the store as it streams ([`fill`](crate::phase::fill)). Writes go to
//! the service and invalidate their tags before they are answered ([`write`](crate::phase::write)).

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http::{Request, Response, request::Parts};
use http_body::Body;
use tower_service::Service;
use tracing::Instrument;

use crate::{
    CacheHandle,
    engine::{breaker::Op, refill},
    middleware::{body::CacheBody, future::ResponseFuture, status::CacheStatus},
    phase::{
        classify::{self, Class, Intent, ReadRequest},
        exchange::{self, Exchange},
        lookup::{self, Found},
        write::Write,
    },
    reason::{Bypass, Fwd, StaleUse},
    rules::route::{self, Params, Route, RouteSet},
    stats::Outcome,
    store::{self, Read, StoreFuture},
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

/// The request body must have a `Default` (empty) value, which
/// [`Rule::refill_after_write`](crate::Rule::refill_after_write) sends when it replays a
/// `GET`: axum's, tonic's and http-body-util's bodies all have one (wrap hyper's `Incoming`
/// in `axum::body::Body` or map it to a boxed body).
impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Cache<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Default + Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<CacheBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // Response times count from here (see `RouteStats::took`).
        let started = Instant::now();
        let (inner, handle) = (&mut self.inner, &self.handle);
        let Some((route, params)) = self.routes.find(req.uri(), req.extensions()) else {
            handle.shared.stats.unmatched();
            return bypass(inner, handle, req, Bypass::NoRule);
        };
        let (parts, body) = req.into_parts();
        match classify::classify(&handle.shared, route, &parts) {
            Class::Read(read) => {
                // What a miss needs to leave a refill behind (see `Replayer`).
                let refill = (route.rule.refill && parts.method == http::Method::GET)
                    .then_some(&self.routes);
                let request = (params, read, parts, body);
                self::read(inner, handle, route, request, (refill, started))
            }
            Class::Bypass(reason) => {
                route.stats.record(Outcome::Bypass);
                bypass(inner, handle, Request::from_parts(parts, body), reason)
            }
            Class::Outage(key) => {
                let shared = &handle.shared;
                let now = shared.clock.now_ms();
                let copy = shared
                    .store
                    .read_during_outage(&key, now)
                    .filter(|(entry, _)| lookup::vary_matches(entry, &key, &parts.headers));
                let Some((entry, since)) = copy else {
                    route.stats.record(Outcome::Bypass);
                    let req = Request::from_parts(parts, body);
                    return bypass(inner, handle, req, Bypass::StoreUnavailable);
                };
                let status = CacheStatus::Stale {
                    by: since.as_secs().max(1),
                    used: StaleUse::Outage,
                };
                let (method, headers) = (&parts.method, &parts.headers);
                let at = (now, Some(started));
                let response = exchange::serve(shared, route, &entry, method, headers, status, at);
                ResponseFuture::ready(response)
            }
            Class::Write { scope } => {
                route.stats.record(Outcome::Write);
                let write = Write {
                    handle: handle.clone(),
                    route: Arc::clone(route),
                    scope,
                    params,
                    path: route::request_path(&parts.uri, &parts.extensions).to_owned(),
                };
                let span = tracing::debug_span!("larder.write", route = %route.rule.name);
                let req = Request::from_parts(parts, body);
                let future = write.forward_then_invalidate(take(inner), req);
                ResponseFuture::boxed(Box::pin(future.instrument(span)))
            }
        }
    }
}

/// The service that was made ready, leaving a fresh clone in its place: a request that goes
/// to the service takes it; a hit never touches it (nor pays for the clone).
fn take<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}

/// Forwards a request the cache does not take part in.
fn bypass<S, ReqBody, B>(
    inner: &mut S,
    handle: &CacheHandle,
    req: Request<ReqBody>,
    reason: Bypass,
) -> ResponseFuture<S::Future, B, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<B>> + Clone,
{
    let status = CacheStatus::bypass(reason);
    ResponseFuture::forward(take(inner).call(req), status, handle.shared.x_cache)
}

/// Looks a read up and answers it. An in-process store answers at once, and a fresh entry is
/// served from borrowed state, nothing cloned but the entry's parts; a network store's lookup
/// and what follows run as one task.
fn read<S, ReqBody, B>(
    inner: &mut S,
    handle: &CacheHandle,
    route: &Arc<Route>,
    (params, read, parts, body): (Params, ReadRequest, Parts, ReqBody),
    (refill, started): (Option<&Arc<RouteSet>>, Instant),
) -> ResponseFuture<S::Future, B, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Default + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
{
    let shared = &handle.shared;
    if read.intent == Intent::Reload {
        let found = Found::Miss {
            stale: None,
            revalidate: None,
            fwd: Fwd::Request,
        };
        let now = shared.clock.now_ms();
        let mut exchange = Exchange::new(handle, route, params, read, (None, Some(started)));
        exchange.refill = refill.map(|routes| Replayer::seed(inner, handle, routes));
        return exchange.answer(found, now, take(inner), parts, body);
    }
    let mut store_call = store::read_after(&*shared.store, &read.key, read.after);
    let Some(result) = store_call.try_ready() else {
        let looked_up = Some(tokio::time::Instant::now());
        let exchange = Exchange::new(handle, route, params, read, (looked_up, Some(started)));
        let refill = refill.map(Arc::clone);
        return read_later(exchange, store_call, take(inner), (parts, body), refill);
    };
    let entry = match result {
        Ok(read) => read.visible(),
        Err(e) => {
            route.stats.error();
            tracing::warn!(error = %e, "cache lookup failed");
            None
        }
    };
    let entry = entry.filter(|e| !read.credentialed || e.shared_with_credentials());
    let now = shared.clock.now_ms();
    match lookup::judge(entry, &read.key, &parts.headers, now) {
        Found::Fresh { entry, ttl } => {
            let status = CacheStatus::Hit { ttl };
            let response = exchange::serve(
                shared,
                route,
                &entry,
                &parts.method,
                &parts.headers,
                status,
                (now, Some(started)),
            );
            if refill.is_some() {
                shared.refills.touch(read.key.digest());
            }
            if let Some(then) = exchange::after_hit(route, &entry, now) {
                // Answered: what the hit sets off runs in the background, untimed.
                let exchange = Exchange::new(handle, route, params, read, (None, None));
                exchange.set_off(then, entry, take(inner), parts, body);
            }
            ResponseFuture::ready(response)
        }
        found => {
            let mut exchange = Exchange::new(handle, route, params, read, (None, Some(started)));
            if let Some(routes) = refill {
                exchange.refill = Some(Replayer::seed(inner, handle, routes));
            }
            exchange.answer(found, now, take(inner), parts, body)
        }
    }
}

/// The rest of a read whose store call is under way (a network store), as one task.
fn read_later<S, ReqBody, B>(
    mut exchange: Exchange,
    store_call: StoreFuture<Read>,
    mut inner: S,
    (parts, body): (Parts, ReqBody),
    refill: Option<Arc<RouteSet>>,
) -> ResponseFuture<S::Future, B, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Default + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
{
    let span = tracing::debug_span!("larder.lookup", route = %exchange.route.rule.name);
    ResponseFuture::boxed(Box::pin(
        async move {
            let shared = &exchange.handle.shared;
            let stats = &exchange.route.stats;
            let read = shared.breaker.call(stats, Op::Get, store_call).await;
            let entry = read.ok().and_then(Read::visible);
            let entry = entry.filter(|e| !exchange.credentialed || e.shared_with_credentials());
            // Taken after the lookup: it saw every invalidation that completed before.
            exchange.since = shared.store.stamp();
            let now = shared.clock.now_ms();
            let found = lookup::judge(entry, &exchange.key, &parts.headers, now);
            if let Some(routes) = &refill {
                if let Found::Fresh { .. } = found {
                    shared.refills.touch(exchange.key.digest());
                } else {
                    let handle = exchange.handle.clone();
                    exchange.refill = Some(Replayer::seed(&mut inner, &handle, routes));
                }
            }
            exchange.answer(found, now, inner, parts, body).await
        }
        .instrument(span),
    ))
}

/// Sends a refill's request through the cache it came from (see
/// [`Rule::refill_after_write`](crate::Rule::refill_after_write)): a clone of the service a
/// miss asked, behind a lock because a service need not be `Sync`, and the cache's state by a
/// weak reference, so that the records the cache keeps do not keep the cache alive.
struct Replayer<S, ReqBody> {
    inner: std::sync::Mutex<S>,
    shared: std::sync::Weak<crate::handle::CacheState>,
    routes: Arc<RouteSet>,
    _body: std::marker::PhantomData<fn() -> ReqBody>,
}

impl<S, ReqBody, B> Replayer<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Default + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
{
    /// A replayer over a clone of the service a miss is about to ask.
    fn seed(
        inner: &mut S,
        handle: &CacheHandle,
        routes: &Arc<RouteSet>,
    ) -> Arc<dyn refill::Replay> {
        Arc::new(Replayer {
            inner: std::sync::Mutex::new(inner.clone()),
            shared: Arc::downgrade(&handle.shared),
            routes: Arc::clone(routes),
            _body: std::marker::PhantomData,
        })
    }
}

impl<S, ReqBody, B> refill::Replay for Replayer<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Default + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
{
    fn replay(&self, head: refill::Head) -> Pin<Box<dyn Future<Output = bool> + Send>> {
        let inner = match self.inner.lock() {
            Ok(inner) => inner.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        // The cache is gone: nothing to refill.
        let Some(shared) = self.shared.upgrade() else {
            return Box::pin(std::future::ready(false));
        };
        let handle = CacheHandle {
            shared,
            after: None,
        };
        let mut cache = Cache::new(inner, handle, Arc::clone(&self.routes));
        let req: Request<ReqBody> = head.into_request();
        Box::pin(async move {
            if std::future::poll_fn(|cx| cache.poll_ready(cx))
                .await
                .is_err()
            {
                return false;
            }
            let Ok(response) = cache.call(req).await else {
                return false;
            };
            // The entry is stored as the body streams: read it to its end.
            let ok = !response.status().is_server_error();
            let mut body = std::pin::pin!(response.into_body());
            while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
                if frame.is_err() {
                    return false;
                }
            }
            ok
        })
    }
}
