//! Keys for `POST` requests: read a request body, hash it, and hand it on.
//!
//! # Example
//!
//! ```
//! use std::{convert::Infallible, time::Duration};
//!
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use larder::{CacheHandle, KeyedBody, Rule, Rules};
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! // The service answers with the body it was sent.
//! let echo = service_fn(|req: Request<KeyedBody<Full<bytes::Bytes>>>| async move {
//!     let body = req.into_body().collect().await?.to_bytes();
//!     Ok::<_, Infallible>(Response::new(Full::new(body)))
//! });
//! let cache = CacheHandle::in_memory();
//! let rules = Rules::new().route(
//!     "/catalog.v1.Catalog/GetItem",
//!     Rule::new("get_item").ttl(Duration::from_secs(60)).cache_posts_by_body(),
//! );
//! let layer = cache.layer_with(rules);
//! // The body key layer goes in front of (outside) the cache layer. With tonic:
//! // Server::builder().layer(layer.body_key_layer()).layer(layer).add_service(...)
//! let mut svc = ServiceBuilder::new()
//!     .layer(layer.body_key_layer())
//!     .layer(layer)
//!     .service(echo);
//!
//! for expected in ["larder; fwd=miss; stored", "larder; hit; ttl=60"] {
//!     let req = Request::post("/catalog.v1.Catalog/GetItem")
//!         .header("content-type", "application/grpc")
//!         .body(Full::new(bytes::Bytes::from_static(b"\0\0\0\0\x02\x08\x01")))
//!         .unwrap();
//!     let res = svc.ready().await.unwrap().call(req).await.unwrap();
//!     assert_eq!(res.headers()["cache-status"], expected);
//!     // A miss is stored once its body has been read to the end, as a server does.
//!     res.into_body().collect().await.unwrap();
//! }
//! # }
//! ```
//!
//! # Which requests are read
//!
//! Those the [`Predicate`] selects. [`CacheLayer::body_key_layer`](crate::CacheLayer::body_key_layer)
//! selects exactly the `POST`s that a rule with
//! [`Rule::cache_posts_by_body`](crate::Rule::cache_posts_by_body) covers, and is the one to
//! use in front of a cache. [`BodyKeyLayer::new`] selects every `POST` whose `content-type`
//! starts with `application/grpc`: that includes client-streaming and bidirectional calls,
//! whose bodies may not end until the server has answered, so such a call would wait until its
//! client has sent [`max_size`](BodyKeyLayer::max_size) bytes or closed its stream. Give it a
//! narrower predicate on a service that has such methods.
//!
//! # What is read
//!
//! A selected body is read whole, up to [`max_size`](BodyKeyLayer::max_size) bytes (64 KiB by
//! default; a body whose size hint says it is larger is not read at all). When it ends within
//! the limit, its BLAKE3 digest goes in the request's extensions as a [`RequestBodyDigest`] and
//! the service gets the bytes from memory. A body over the limit, a body that fails, and a body
//! that ends with trailers get no digest; the service still gets every byte that was read,
//! followed by the rest of the stream (or its error). Bodies that are not selected are not
//! touched and cost nothing.

use std::{
    collections::VecDeque,
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, header, request::Parts};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::rules::route::RouteSet;

/// The default [`max_size`](BodyKeyLayer::max_size): larger bodies are not keyed.
const DEFAULT_MAX_SIZE: usize = 64 * 1024;

/// The BLAKE3 digest of a request body, put in the request's extensions by [`BodyKey`] and read
/// by the cache under [`Rule::cache_posts_by_body`](crate::Rule::cache_posts_by_body).
///
/// Other middleware that has the body in hand may insert one itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestBodyDigest([u8; 32]);

impl RequestBodyDigest {
    /// The digest of `body`.
    pub fn of(body: &[u8]) -> Self {
        RequestBodyDigest(*blake3::hash(body).as_bytes())
    }

    /// The 32 bytes of the digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn of_chunks<'a>(chunks: impl IntoIterator<Item = &'a Bytes>) -> Self {
        let mut hasher = blake3::Hasher::new();
        for chunk in chunks {
            hasher.update(chunk);
        }
        RequestBodyDigest(*hasher.finalize().as_bytes())
    }
}

/// Decides which request bodies [`BodyKey`] reads.
///
/// Implemented by [`GrpcRequests`], [`KeyedRoutes`], and closures
/// `Fn(&http::request::Parts) -> bool`.
pub trait Predicate: Clone {
    /// Whether to read and hash the body of the request with these parts.
    fn select(&self, request: &Parts) -> bool;
}

impl<F> Predicate for F
where
    F: Fn(&Parts) -> bool + Clone,
{
    fn select(&self, request: &Parts) -> bool {
        self(request)
    }
}

/// Selects `POST` requests whose `content-type` starts with `application/grpc`: every gRPC
/// call, streaming ones included (see the [module docs](self)).
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcRequests;

impl Predicate for GrpcRequests {
    fn select(&self, request: &Parts) -> bool {
        request.method == Method::POST
            && request
                .headers
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
    }
}

/// Selects the `POST` requests that a [`CacheLayer`](crate::CacheLayer)'s rules cache by body
/// ([`Rule::cache_posts_by_body`](crate::Rule::cache_posts_by_body)). Made by
/// [`CacheLayer::body_key_layer`](crate::CacheLayer::body_key_layer).
#[derive(Debug, Clone)]
pub struct KeyedRoutes {
    routes: std::sync::Arc<RouteSet>,
}

impl KeyedRoutes {
    pub(crate) fn new(routes: std::sync::Arc<RouteSet>) -> Self {
        KeyedRoutes { routes }
    }
}

impl Predicate for KeyedRoutes {
    fn select(&self, request: &Parts) -> bool {
        request.method == Method::POST
            && self
                .routes
                .rule(&request.uri, &request.extensions)
                .is_some_and(|rule| rule.posts_by_body)
    }
}

/// Applies [`BodyKey`] to a service.
///
/// In front of a cache, use [`CacheLayer::body_key_layer`](crate::CacheLayer::body_key_layer);
/// this form is for other setups:
///
/// ```
/// use http::request::Parts;
/// use larder::BodyKeyLayer;
///
/// // The bodies of the calls to one gRPC service, up to 16 KiB.
/// let layer = BodyKeyLayer::new()
///     .max_size(16 * 1024)
///     .predicate(|p: &Parts| p.uri.path().starts_with("/catalog.v1.Catalog/"));
/// # let _ = layer;
/// ```
#[derive(Debug, Clone)]
pub struct BodyKeyLayer<P = GrpcRequests> {
    predicate: P,
    max_size: usize,
}

impl BodyKeyLayer {
    /// Reads the bodies of gRPC requests ([`GrpcRequests`]) up to 64 KiB.
    pub fn new() -> Self {
        BodyKeyLayer {
            predicate: GrpcRequests,
            max_size: DEFAULT_MAX_SIZE,
        }
    }
}

impl Default for BodyKeyLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<P> BodyKeyLayer<P> {
    pub(crate) fn with_predicate(predicate: P) -> Self {
        BodyKeyLayer {
            predicate,
            max_size: DEFAULT_MAX_SIZE,
        }
    }

    /// Bodies longer than this are passed on without a digest (and so are not cached).
    pub fn max_size(mut self, bytes: usize) -> Self {
        self.max_size = bytes;
        self
    }

    /// Replaces the predicate that selects the bodies to read.
    pub fn predicate<Q>(self, predicate: Q) -> BodyKeyLayer<Q>
    where
        Q: Predicate,
    {
        BodyKeyLayer {
            predicate,
            max_size: self.max_size,
        }
    }
}

impl<S, P> Layer<S> for BodyKeyLayer<P>
where
    P: Clone,
{
    type Service = BodyKey<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        BodyKey {
            inner,
            predicate: self.predicate.clone(),
            max_size: self.max_size,
        }
    }
}

/// Reads selected request bodies, puts their [`RequestBodyDigest`] in the request's extensions,
/// and calls the inner service with a [`KeyedBody`]. Built by a [`BodyKeyLayer`].
#[derive(Debug, Clone)]
pub struct BodyKey<S, P = GrpcRequests> {
    inner: S,
    predicate: P,
    max_size: usize,
}

impl<S, P> BodyKey<S, P> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the middleware, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, P, B> Service<Request<B>> for BodyKey<S, P>
where
    S: Service<Request<KeyedBody<B>>> + Clone,
    P: Predicate,
    B: Body<Data = Bytes>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BodyKeyFuture<S::Future, S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (parts, body) = req.into_parts();
        let read = self.predicate.select(&parts)
            && body
                .size_hint()
                .lower()
                .try_into()
                .is_ok_and(|lower: usize| lower <= self.max_size);
        if !read {
            let req = Request::from_parts(parts, KeyedBody::streaming(body));
            return BodyKeyFuture {
                state: KeyingState::Calling {
                    future: self.inner.call(req),
                },
            };
        }
        // Keep the service that was made ready for the call once the body is read.
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        BodyKeyFuture {
            state: KeyingState::Reading {
                reading: Some(Reading {
                    service,
                    parts,
                    body: Box::pin(body),
                    chunks: VecDeque::new(),
                    size: 0,
                    limit: self.max_size,
                }),
            },
        }
    }
}

pin_project! {
    /// Response future of [`BodyKey`]: reads the body if it was selected, then calls the service.
    pub struct BodyKeyFuture<F, S, B> {
        #[pin]
        state: KeyingState<F, S, B>,
    }
}

pin_project! {
    #[project = KeyingStateProj]
    enum KeyingState<F, S, B> {
        Reading { reading: Option<Reading<S, B>> },
        Calling { #[pin] future: F },
    }
}

/// A body being read, and what the call needs once it is.
struct Reading<S, B> {
    service: S,
    parts: Parts,
    body: Pin<Box<B>>,
    chunks: VecDeque<Bytes>,
    size: usize,
    limit: usize,
}

/// How reading a body stopped.
enum ReadEnd<E> {
    /// The body ended (with these trailers, if any).
    Ended(Option<HeaderMap>),
    /// The body grew past the limit.
    TooBig,
    /// The body failed.
    Failed(E),
}

impl<S, B> Reading<S, B>
where
    B: Body<Data = Bytes>,
{
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<ReadEnd<B::Error>> {
        if self.body.is_end_stream() {
            return Poll::Ready(ReadEnd::Ended(None));
        }
        loop {
            let frame = match ready!(self.body.as_mut().poll_frame(cx)) {
                None => return Poll::Ready(ReadEnd::Ended(None)),
                Some(Err(e)) => return Poll::Ready(ReadEnd::Failed(e)),
                Some(Ok(frame)) => frame,
            };
            match frame.into_data() {
                Ok(data) => {
                    self.size = self.size.saturating_add(data.len());
                    if !data.is_empty() {
                        self.chunks.push_back(data);
                    }
                    if self.size > self.limit {
                        return Poll::Ready(ReadEnd::TooBig);
                    }
                }
                // Trailers are the last frame of a body.
                Err(frame) => return Poll::Ready(ReadEnd::Ended(frame.into_trailers().ok())),
            }
            // A body with a known length may never say `None` after its last byte.
            if self.body.is_end_stream() {
                return Poll::Ready(ReadEnd::Ended(None));
            }
        }
    }
}

impl<F, S, B> Future for BodyKeyFuture<F, S, B>
where
    S: Service<Request<KeyedBody<B>>, Future = F>,
    F: Future<Output = Result<S::Response, S::Error>>,
    B: Body<Data = Bytes>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                KeyingStateProj::Reading { reading } => {
                    let read = ready!(
                        reading
                            .as_mut()
                            .expect("BodyKeyFuture polled after completion")
                            .poll_read(cx)
                    );
                    let Some(Reading {
                        mut service,
                        mut parts,
                        body,
                        chunks,
                        ..
                    }) = reading.take()
                    else {
                        unreachable!("checked above");
                    };
                    let body = match read {
                        ReadEnd::Ended(None) => {
                            parts
                                .extensions
                                .insert(RequestBodyDigest::of_chunks(&chunks));
                            KeyedBody::buffered(chunks, None)
                        }
                        // Trailers could change the answer and are not hashed: no key.
                        ReadEnd::Ended(trailers) => KeyedBody::buffered(chunks, trailers),
                        ReadEnd::TooBig => KeyedBody::resumed(chunks, None, Some(body)),
                        ReadEnd::Failed(e) => KeyedBody::resumed(chunks, Some(e), None),
                    };
                    let future = service.call(Request::from_parts(parts, body));
                    this.state.set(KeyingState::Calling { future });
                }
                KeyingStateProj::Calling { future } => return future.poll(cx),
            }
        }
    }
}

impl<F, S, B> fmt::Debug for BodyKeyFuture<F, S, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match &self.state {
            KeyingState::Reading { .. } => "body_key::BodyKeyFuture::Reading",
            KeyingState::Calling { .. } => "body_key::BodyKeyFuture::Calling",
        })
    }
}

pin_project! {
    /// The request body a [`BodyKey`] hands on: the original body untouched when it was not
    /// selected, the bytes it read from memory when it was, or those bytes followed by the rest
    /// of the stream when it stopped reading early.
    pub struct KeyedBody<B>
    where
        B: Body,
    {
        #[pin]
        kind: KeyedBodyKind<B>,
    }
}

pin_project! {
    #[project = KeyedBodyKindProj]
    enum KeyedBodyKind<B>
    where
        B: Body,
    {
        Streaming { #[pin] body: B },
        Buffered { chunks: VecDeque<Bytes>, trailers: Option<HeaderMap> },
        Resumed { prefix: VecDeque<Bytes>, error: Option<B::Error>, rest: Option<Pin<Box<B>>> },
    }
}

impl<B> KeyedBody<B>
where
    B: Body,
{
    /// A body passed on as it is, unread.
    pub fn streaming(body: B) -> Self {
        KeyedBody {
            kind: KeyedBodyKind::Streaming { body },
        }
    }

    fn buffered(chunks: VecDeque<Bytes>, trailers: Option<HeaderMap>) -> Self {
        KeyedBody {
            kind: KeyedBodyKind::Buffered { chunks, trailers },
        }
    }

    fn resumed(
        prefix: VecDeque<Bytes>,
        error: Option<B::Error>,
        rest: Option<Pin<Box<B>>>,
    ) -> Self {
        KeyedBody {
            kind: KeyedBodyKind::Resumed {
                prefix,
                error,
                rest,
            },
        }
    }
}

/// An empty body, read from memory (what a refill sends, see
/// [`Rule::refill_after_write`](crate::Rule::refill_after_write)).
impl<B: Body> Default for KeyedBody<B> {
    fn default() -> Self {
        KeyedBody::buffered(VecDeque::new(), None)
    }
}

impl<B> Body for KeyedBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project().kind.project() {
            KeyedBodyKindProj::Streaming { body } => body.poll_frame(cx),
            KeyedBodyKindProj::Buffered { chunks, trailers } => {
                Poll::Ready(match chunks.pop_front() {
                    Some(data) => Some(Ok(Frame::data(data))),
                    None => trailers.take().map(|t| Ok(Frame::trailers(t))),
                })
            }
            KeyedBodyKindProj::Resumed {
                prefix,
                error,
                rest,
            } => {
                if let Some(data) = prefix.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                if let Some(e) = error.take() {
                    return Poll::Ready(Some(Err(e)));
                }
                match rest {
                    Some(body) => body.as_mut().poll_frame(cx),
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            KeyedBodyKind::Streaming { body } => body.is_end_stream(),
            KeyedBodyKind::Buffered { chunks, trailers } => chunks.is_empty() && trailers.is_none(),
            KeyedBodyKind::Resumed {
                prefix,
                error,
                rest,
            } => {
                prefix.is_empty()
                    && error.is_none()
                    && rest.as_ref().is_none_or(|b| b.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        let len = |chunks: &VecDeque<Bytes>| chunks.iter().map(|c| c.len() as u64).sum::<u64>();
        match &self.kind {
            KeyedBodyKind::Streaming { body } => body.size_hint(),
            KeyedBodyKind::Buffered { chunks, .. } => SizeHint::with_exact(len(chunks)),
            KeyedBodyKind::Resumed { prefix, rest, .. } => {
                let read = len(prefix);
                match rest {
                    None => SizeHint::with_exact(read),
                    Some(body) => {
                        let hint = body.size_hint();
                        let mut out = SizeHint::new();
                        out.set_lower(hint.lower().saturating_add(read));
                        if let Some(upper) = hint.upper() {
                            out.set_upper(upper.saturating_add(read));
                        }
                        out
                    }
                }
            }
        }
    }
}

impl<B> fmt::Debug for KeyedBody<B>
where
    B: Body,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match &self.kind {
            KeyedBodyKind::Streaming { .. } => "KeyedBody::Streaming",
            KeyedBodyKind::Buffered { .. } => "KeyedBody::Buffered",
            KeyedBodyKind::Resumed { .. } => "KeyedBody::Resumed",
        })
    }
}

#[cfg(test)]
mod tests {
    use std::{convert::Infallible, io};

    use http::HeaderValue;
    use http_body_util::BodyExt;
    use tower::{ServiceExt, service_fn};

    use super::*;

    /// A body of given frames and an optional exact size hint.
    struct Frames {
        frames: VecDeque<Result<Frame<Bytes>, io::Error>>,
        hint: Option<u64>,
    }

    impl Frames {
        fn data(chunks: &[&'static str]) -> Self {
            Frames {
                frames: chunks
                    .iter()
                    .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
                    .collect(),
                hint: None,
            }
        }
    }

    impl Body for Frames {
        type Data = Bytes;
        type Error = io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
            Poll::Ready(self.frames.pop_front())
        }

        fn size_hint(&self) -> SizeHint {
            self.hint.map(SizeHint::with_exact).unwrap_or_default()
        }
    }

    /// A body that must not be read.
    struct Untouchable(u64);

    impl Body for Untouchable {
        type Data = Bytes;
        type Error = io::Error;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
            panic!("this body should not have been read")
        }

        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(self.0)
        }
    }

    fn grpc<B>(body: B) -> Request<B> {
        Request::post("/pkg.Svc/Get")
            .header(header::CONTENT_TYPE, "application/grpc+proto")
            .body(body)
            .unwrap()
    }

    /// What the inner service saw: the digest and the debug name of the body kind.
    async fn seen<B>(
        layer: &BodyKeyLayer<impl Predicate>,
        req: Request<B>,
    ) -> (Option<RequestBodyDigest>, String)
    where
        B: Body<Data = Bytes> + Send + 'static,
    {
        let svc = layer.layer(service_fn(|req: Request<KeyedBody<B>>| async move {
            let digest = req.extensions().get::<RequestBodyDigest>().copied();
            Ok::<_, Infallible>((digest, format!("{:?}", req.body())))
        }));
        svc.oneshot(req).await.unwrap()
    }

    /// The digest the inner service saw, and everything it read from the body.
    async fn read_through(
        layer: &BodyKeyLayer,
        body: Frames,
    ) -> (
        Option<RequestBodyDigest>,
        Vec<u8>,
        Option<HeaderMap>,
        Option<io::Error>,
    ) {
        let svc = layer.layer(service_fn(|req: Request<KeyedBody<Frames>>| async move {
            let digest = req.extensions().get::<RequestBodyDigest>().copied();
            let mut body = req.into_body();
            let (mut data, mut trailers, mut error) = (Vec::new(), None, None);
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => match f.into_data() {
                        Ok(d) => data.extend_from_slice(&d),
                        Err(f) => trailers = f.into_trailers().ok(),
                    },
                    Err(e) => error = Some(e),
                }
            }
            Ok::<_, Infallible>((digest, data, trailers, error))
        }));
        svc.oneshot(grpc(body)).await.unwrap()
    }

    #[tokio::test]
    async fn a_selected_body_is_hashed_and_handed_on_whole() {
        let (digest, data, trailers, error) =
            read_through(&BodyKeyLayer::new(), Frames::data(&["ab", "", "cd"])).await;
        assert_eq!(digest, Some(RequestBodyDigest::of(b"abcd")));
        assert_eq!(data, b"abcd");
        assert!(trailers.is_none() && error.is_none());
        let (other, ..) = read_through(&BodyKeyLayer::new(), Frames::data(&["abce"])).await;
        assert_ne!(other, digest);
    }

    #[tokio::test]
    async fn an_empty_body_has_the_empty_digest() {
        let (digest, data, ..) = read_through(&BodyKeyLayer::new(), Frames::data(&[])).await;
        assert_eq!(digest, Some(RequestBodyDigest::of(b"")));
        assert!(data.is_empty());
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_handed_on_whole_without_a_digest() {
        let layer = BodyKeyLayer::new().max_size(3);
        let (digest, data, _, error) =
            read_through(&layer, Frames::data(&["ab", "cd", "ef"])).await;
        assert_eq!(digest, None);
        assert_eq!(data, b"abcdef");
        assert!(error.is_none());
        // At the limit exactly is still keyed.
        let (digest, ..) = read_through(&layer, Frames::data(&["ab", "c"])).await;
        assert_eq!(digest, Some(RequestBodyDigest::of(b"abc")));
    }

    #[tokio::test]
    async fn a_failing_body_hands_on_what_was_read_then_its_error() {
        let mut body = Frames::data(&["ab", "cd"]);
        body.frames.push_back(Err(io::Error::other("client reset")));
        body.frames
            .push_back(Ok(Frame::data(Bytes::from_static(b"never"))));
        let (digest, data, _, error) = read_through(&BodyKeyLayer::new(), body).await;
        assert_eq!(digest, None);
        assert_eq!(data, b"abcd");
        assert_eq!(
            error.expect("the error is handed on").to_string(),
            "client reset"
        );
    }

    #[tokio::test]
    async fn trailers_are_handed_on_and_leave_the_body_unkeyed() {
        let mut body = Frames::data(&["ab"]);
        let mut t = HeaderMap::new();
        t.insert("x-sum", HeaderValue::from_static("1"));
        body.frames.push_back(Ok(Frame::trailers(t.clone())));
        let (digest, data, trailers, _) = read_through(&BodyKeyLayer::new(), body).await;
        assert_eq!(digest, None);
        assert_eq!(data, b"ab");
        assert_eq!(trailers, Some(t));
    }

    #[tokio::test]
    async fn unselected_and_oversized_bodies_are_not_read() {
        let layer = BodyKeyLayer::new();
        let get = Request::get("/pkg.Svc/Get")
            .header(header::CONTENT_TYPE, "application/grpc")
            .body(Untouchable(0))
            .unwrap();
        assert_eq!(
            seen(&layer, get).await,
            (None, "KeyedBody::Streaming".into())
        );
        let json = Request::post("/graphql")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Untouchable(2))
            .unwrap();
        assert_eq!(
            seen(&layer, json).await,
            (None, "KeyedBody::Streaming".into())
        );
        // Selected, but its size hint is over the limit.
        let big = grpc(Untouchable(DEFAULT_MAX_SIZE as u64 + 1));
        assert_eq!(
            seen(&layer, big).await,
            (None, "KeyedBody::Streaming".into())
        );
    }

    #[tokio::test]
    async fn a_closure_selects_bodies() {
        let layer = BodyKeyLayer::new().predicate(|p: &Parts| p.uri.path() == "/graphql");
        let json = Request::post("/graphql")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Frames::data(&["{}"]))
            .unwrap();
        let (digest, kind) = seen(&layer, json).await;
        assert_eq!(digest, Some(RequestBodyDigest::of(b"{}")));
        assert_eq!(kind, "KeyedBody::Buffered");
        assert_eq!(seen(&layer, grpc(Untouchable(5))).await.0, None);
    }

    #[tokio::test]
    async fn a_keyed_body_reports_its_size_and_end() {
        let mut body = Frames::data(&["abc", "de"]);
        body.hint = Some(5);
        let layer = BodyKeyLayer::new();
        let svc = layer.layer(service_fn(|req: Request<KeyedBody<Frames>>| async move {
            let body = req.into_body();
            let hint = body.size_hint().exact();
            let collected = body.collect().await.unwrap().to_bytes();
            Ok::<_, Infallible>((hint, collected))
        }));
        let (hint, collected) = svc.oneshot(grpc(body)).await.unwrap();
        assert_eq!(hint, Some(5));
        assert_eq!(collected, "abcde");
        let mut buffered = KeyedBody::<Frames>::buffered(VecDeque::new(), None);
        assert!(buffered.is_end_stream());
        assert!(
            Pin::new(&mut buffered)
                .poll_frame(&mut Context::from_waker(std::task::Waker::noop()))
                .is_ready()
        );
    }
}
