//! `POST` reads keyed by their body (`Rule::cache_posts_by_body` behind a `BodyKeyLayer`).

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use larder::{CacheHandle, CacheLayer, KeyedBody, MemoryStore, RequestBodyDigest, Rule, Rules};
use tokio::sync::Semaphore;
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};

// Tests with a TTL in their assertions run on a paused clock, so `ttl=60` is exact.

const GET: &str = "/items.v1.Items/Get";
const UPDATE: &str = "/items.v1.Items/Update";

fn layer(cache: &CacheHandle) -> CacheLayer {
    cache.layer_with(
        Rules::new()
            .route(
                GET,
                Rule::new("get")
                    .ttl(Duration::from_secs(60))
                    .cache_posts_by_body(),
            )
            .route(UPDATE, Rule::new("update")),
    )
}

/// The origin: `Get` echoes its body and tags it `item:{body}`; `Update` names the tag
/// `item:{body}` to invalidate, and fails the gRPC way (HTTP 200, Trailers-Only
/// `grpc-status: 5`) when the body is `missing`. `gate` holds `Get` calls until it has a permit.
#[derive(Clone)]
struct Origin {
    calls: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
}

impl Origin {
    fn new() -> Self {
        Origin {
            calls: Arc::new(AtomicUsize::new(0)),
            gate: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn service<B>(
        &self,
    ) -> impl Service<
        Request<B>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
    where
        B: Body<Data = Bytes, Error: std::fmt::Debug> + Send + 'static,
    {
        let origin = self.clone();
        service_fn(move |req: Request<B>| {
            let origin = origin.clone();
            async move {
                origin.calls.fetch_add(1, Ordering::SeqCst);
                let path = req.uri().path().to_owned();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let id = String::from_utf8(body.to_vec()).unwrap();
                let mut res = Response::builder().header("larder-tags", format!("item:{id}"));
                if path == GET {
                    let _permit = origin.gate.acquire().await.unwrap();
                } else if id == "missing" {
                    res = res.header("grpc-status", "5");
                }
                Ok::<_, Infallible>(res.body(Full::new(body)).unwrap())
            }
        })
    }
}

fn post(path: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// Sends `req`; returns `Cache-Status` and the body.
async fn send<S, B>(svc: &S, req: Request<Full<Bytes>>) -> (String, Bytes)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible> + Clone,
    B: Body<Data = Bytes, Error: std::fmt::Debug>,
{
    let res = svc.clone().oneshot(req).await.unwrap();
    let status = res.headers()["cache-status"].to_str().unwrap().to_owned();
    assert!(
        !res.headers().contains_key("larder-tags"),
        "the tag header never leaves the layer"
    );
    (status, res.into_body().collect().await.unwrap().to_bytes())
}

#[tokio::test(start_paused = true)]
async fn posts_are_cached_by_their_body() {
    let cache = CacheHandle::new(MemoryStore::default());
    let layer = layer(&cache);
    let origin = Origin::new();
    let svc = ServiceBuilder::new()
        .layer(layer.body_key_layer())
        .layer(layer)
        .service(origin.service());

    let miss = send(&svc, post(GET, "1")).await;
    assert_eq!(miss, ("larder; fwd=miss; stored".into(), "1".into()));
    let hit = send(&svc, post(GET, "1")).await;
    assert_eq!(hit, ("larder; hit; ttl=60".into(), "1".into()));
    let other = send(&svc, post(GET, "2")).await;
    assert_eq!(other, ("larder; fwd=miss; stored".into(), "2".into()));
    assert_eq!(origin.calls(), 2);
    let stats = &cache.stats().routes["get"];
    assert_eq!((stats.hits, stats.misses, stats.stored), (1, 2, 2));
}

#[tokio::test(start_paused = true)]
async fn a_keyed_post_and_a_get_are_different_entries() {
    let cache = CacheHandle::new(MemoryStore::default());
    let layer = layer(&cache);
    let origin = Origin::new();
    let svc = ServiceBuilder::new()
        .layer(layer.body_key_layer())
        .layer(layer)
        .service(origin.service());
    let get = || Request::get(GET).body(Full::new(Bytes::new())).unwrap();
    assert_eq!(send(&svc, get()).await.0, "larder; fwd=miss; stored");
    assert_eq!(
        send(&svc, post(GET, "")).await.0,
        "larder; fwd=miss; stored"
    );
    assert_eq!(send(&svc, get()).await.0, "larder; hit; ttl=60");
    assert_eq!(send(&svc, post(GET, "")).await.0, "larder; hit; ttl=60");
    assert_eq!(origin.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_write_invalidates_the_tags_its_handler_names() {
    let cache = CacheHandle::new(MemoryStore::default());
    let layer = layer(&cache);
    let origin = Origin::new();
    let svc = ServiceBuilder::new()
        .layer(layer.body_key_layer())
        .layer(layer)
        .service(origin.service());
    send(&svc, post(GET, "1")).await;
    send(&svc, post(GET, "2")).await;

    let (status, _) = send(&svc, post(UPDATE, "1")).await;
    assert_eq!(status, "larder; fwd=method; detail=invalidated");
    assert_eq!(
        send(&svc, post(GET, "1")).await.0,
        "larder; fwd=miss; stored"
    );
    assert_eq!(send(&svc, post(GET, "2")).await.0, "larder; hit; ttl=60");
    assert_eq!(origin.calls(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_trailers_only_grpc_error_invalidates_nothing() {
    let cache = CacheHandle::new(MemoryStore::default());
    let layer = layer(&cache);
    let origin = Origin::new();
    let svc = ServiceBuilder::new()
        .layer(layer.body_key_layer())
        .layer(layer)
        .service(origin.service());
    send(&svc, post(GET, "missing")).await;
    let (status, _) = send(&svc, post(UPDATE, "missing")).await;
    assert_eq!(status, "larder; fwd=method");
    assert_eq!(
        send(&svc, post(GET, "missing")).await.0,
        "larder; hit; ttl=60"
    );
}

#[tokio::test(start_paused = true)]
async fn a_post_without_a_digest_is_forwarded_and_invalidates_nothing() {
    let cache = CacheHandle::new(MemoryStore::default());
    let layer = layer(&cache);
    let origin = Origin::new();
    let keyed = ServiceBuilder::new()
        .layer(layer.body_key_layer())
        .layer(layer.clone())
        .service(origin.service());
    // The same cache layer with nothing in front to read bodies.
    let unkeyed = layer.layer(origin.service());
    send(&keyed, post(GET, "1")).await;
    for _ in 0..2 {
        let (status, body) = send(&unkeyed, post(GET, "1")).await;
        assert_eq!(status, "larder; fwd=bypass; detail=body-not-keyed");
        assert_eq!(body, "1");
    }
    assert_eq!(send(&keyed, post(GET, "1")).await.0, "larder; hit; ttl=60");
    assert_eq!(origin.calls(), 3);
    assert_eq!(cache.stats().routes["get"].bypasses, 2);
}

#[tokio::test(start_paused = true)]
async fn a_body_over_the_limit_is_forwarded_whole() {
    let cache = CacheHandle::new(MemoryStore::default());
    let layer = layer(&cache);
    let origin = Origin::new();
    let svc = ServiceBuilder::new()
        .layer(layer.body_key_layer().max_size(4))
        .layer(layer)
        .service(origin.service());
    for _ in 0..2 {
        let (status, body) = send(&svc, post(GET, "123456")).await;
        assert_eq!(status, "larder; fwd=bypass; detail=body-not-keyed");
        assert_eq!(body, "123456");
    }
    assert_eq!(
        send(&svc, post(GET, "1234")).await.0,
        "larder; fwd=miss; stored"
    );
    assert_eq!(origin.calls(), 3);
}

#[tokio::test(flavor = "current_thread")]
async fn concurrent_identical_posts_make_one_call() {
    let cache = CacheHandle::new(MemoryStore::default());
    let layer = layer(&cache);
    let origin = Origin::new();
    let svc = ServiceBuilder::new()
        .layer(layer.body_key_layer())
        .layer(layer)
        .service(origin.service());
    // Hold every origin call until all the requests have been sent.
    let permits = origin.gate.available_permits();
    origin.gate.forget_permits(permits);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move { send(&svc, post(GET, "7")).await })
        })
        .collect();
    // On this single-threaded runtime, yielding once lets every spawned task run until it
    // waits: the leader on the gate, the others on the leader.
    tokio::task::yield_now().await;
    origin.gate.add_permits(Semaphore::MAX_PERMITS);
    let mut collapsed = 0;
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(body, "7");
        collapsed += usize::from(status.contains("collapsed"));
    }
    assert_eq!(origin.calls(), 1);
    assert_eq!(collapsed, 49);
}

/// A body that must not be read.
struct Untouchable;

impl Body for Untouchable {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        panic!("this body should not have been read")
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::new()
    }
}

#[tokio::test(start_paused = true)]
async fn a_cache_reads_only_the_bodies_it_keys() {
    let cache = CacheHandle::new(MemoryStore::default());
    let layer = layer(&cache);
    // Reports whether the request came with a digest; never reads the body.
    let svc = layer.body_key_layer().layer(service_fn(
        |req: Request<KeyedBody<Untouchable>>| async move {
            Ok::<_, Infallible>(req.extensions().get::<RequestBodyDigest>().is_some())
        },
    ));
    let req = |method: &str, path: &str| {
        Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/grpc")
            .body(Untouchable)
            .unwrap()
    };
    // A write, a streaming call to an unlisted method, a GET: none is read.
    for (method, path) in [
        ("POST", UPDATE),
        ("POST", "/items.v1.Items/Watch"),
        ("GET", GET),
    ] {
        assert!(!svc.clone().oneshot(req(method, path)).await.unwrap());
    }
    // The keyed read is.
    let read = layer.body_key_layer().layer(service_fn(
        |req: Request<KeyedBody<Full<Bytes>>>| async move {
            Ok::<_, Infallible>(req.extensions().get::<RequestBodyDigest>().copied())
        },
    ));
    let digest = read.oneshot(post(GET, "1")).await.unwrap();
    assert_eq!(digest, Some(RequestBodyDigest::of(b"1")));
}
