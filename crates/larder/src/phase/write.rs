//! The write phase: an unsafe method is forwarded, and when it succeeds its tags are
//! invalidated before it is answered, so a client that reads after its write never sees the
//! old data.

use std::sync::Arc;

use http::{HeaderValue, Request, Response};
use tower_service::Service;

use crate::{
    CacheHandle,
    middleware::{body::CacheBody, consistency::CONSISTENCY_HEADER, status::CacheStatus},
    reason::{Detail, Fwd},
    rules::{
        policy,
        route::{Params, Route},
        tags,
    },
};

/// A write on its way to the service.
pub(crate) struct Write {
    pub(crate) handle: CacheHandle,
    pub(crate) route: Arc<Route>,
    pub(crate) scope: Option<String>,
    pub(crate) params: Params,
    pub(crate) path: String,
}

impl Write {
    /// Forwards the write; if it succeeds, invalidates its tags, then answers.
    pub(crate) async fn forward_then_invalidate<S, ReqBody, B>(
        self,
        mut inner: S,
        req: Request<ReqBody>,
    ) -> Result<Response<CacheBody<B>>, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<B>>,
    {
        let response = inner.call(req).await?;
        let (mut parts, body) = response.into_parts();
        let handler_tags = tags::take_from_handler(&mut parts.headers);
        let mut detail = None;
        // RFC 9111 §4.4: only a successful (2xx or 3xx) response invalidates. A gRPC call
        // fails with HTTP 200: a Trailers-Only error (grpc-status in the headers, how tonic
        // answers a handler's `Err`) invalidates nothing. A status that arrives in trailers
        // is known only after the response has left, so such a failure still invalidates:
        // one refill too many, never a stale read.
        let succeeded = parts.status.is_success() || parts.status.is_redirection();
        if succeeded && !policy::grpc_failed(&parts.headers) {
            let tags = tags::of_write(
                &self.route,
                self.scope.as_deref(),
                &self.params,
                handler_tags,
                &self.path,
            );
            // A failure is deferred (see the breaker): the store is not read until it is applied.
            self.route.stats.invalidated();
            detail = Some(
                match self.handle.invalidate(&self.route.stats, tags).await {
                    Ok(()) => {
                        // What the client carries to read this write on every instance.
                        if let Some(token) = self.handle.consistency_token() {
                            parts
                                .headers
                                .insert(CONSISTENCY_HEADER, HeaderValue::from(token));
                        }
                        Detail::Invalidated
                    }
                    Err(_) => Detail::InvalidationDeferred,
                },
            );
        }
        CacheStatus::forward(Fwd::Method, detail)
            .apply(&mut parts.headers, self.handle.shared.x_cache);
        Ok(Response::from_parts(parts, CacheBody::stream(body)))
    }
}
