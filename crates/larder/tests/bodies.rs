//! Bodies: size limits, trailers, gRPC status, broken streams.

mod support;

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use larder::{CacheHandle, MemoryStore, Rule};
use support::Chunks;
use tower::{Layer, Service, ServiceExt, service_fn};

fn cache(store: &MemoryStore) -> CacheHandle {
    CacheHandle::builder(store.clone()).x_cache().build()
}

fn req() -> Request<()> {
    Request::get("/r").body(()).unwrap()
}

fn trailers(status: &str) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from_str(status).unwrap());
    t.insert("x-checksum", HeaderValue::from_static("abc"));
    t
}

/// Counts calls; answers with the body `make` builds.
fn counted<B, F>(
    calls: &Arc<AtomicUsize>,
    make: F,
) -> impl Service<Request<()>, Response = Response<B>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static
where
    F: Fn() -> B + Clone + Send + 'static,
    B: Send + 'static,
{
    let calls = Arc::clone(calls);
    service_fn(move |_req: Request<()>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let make = make.clone();
        async move { Ok::<_, Infallible>(Response::new(make())) }
    })
}

#[tokio::test]
async fn trailers_survive_a_hit() {
    let store = MemoryStore::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = counted(&calls, || {
        let mut c = Chunks::new(3000, 1000);
        c.trailers = Some(trailers("0"));
        c
    });
    let svc = cache(&store)
        .layer(Rule::new("r").ttl(Duration::from_secs(60)))
        .layer(svc);
    for expected in ["MISS", "HIT"] {
        let res = svc.clone().oneshot(req()).await.unwrap();
        assert_eq!(res.headers()["x-cache"], expected);
        let collected = res.into_body().collect().await.unwrap();
        let t = collected.trailers().cloned().expect("trailers present");
        assert_eq!(t["grpc-status"], "0");
        assert_eq!(t["x-checksum"], "abc");
        assert_eq!(collected.to_bytes().len(), 3000);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_grpc_error_in_trailers_is_not_stored() {
    let store = MemoryStore::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = counted(&calls, || {
        let mut c = Chunks::new(10, 10);
        c.trailers = Some(trailers("5"));
        c
    });
    let svc = cache(&store)
        .layer(Rule::new("r").ttl(Duration::from_secs(60)))
        .layer(svc);
    for _ in 0..2 {
        let res = svc.clone().oneshot(req()).await.unwrap();
        let t = res
            .into_body()
            .collect()
            .await
            .unwrap()
            .trailers()
            .cloned()
            .unwrap();
        assert_eq!(t["grpc-status"], "5", "the error still reaches the client");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_grpc_error_in_trailers_only_headers_is_not_stored() {
    let store = MemoryStore::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let svc = service_fn(move |_req: Request<()>| {
        c.fetch_add(1, Ordering::SeqCst);
        async {
            let mut res = Response::new(Full::new(Bytes::new()));
            res.headers_mut()
                .insert("grpc-status", HeaderValue::from_static("5"));
            Ok::<_, Infallible>(res)
        }
    });
    let svc = cache(&store)
        .layer(Rule::new("r").ttl(Duration::from_secs(60)))
        .layer(svc);
    let res = svc.clone().oneshot(req()).await.unwrap();
    assert_eq!(
        res.headers()["cache-status"],
        "larder; fwd=miss; detail=grpc-status"
    );
    svc.oneshot(req()).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_body_over_the_limit_is_delivered_whole_and_not_stored() {
    let store = MemoryStore::default();
    let calls = Arc::new(AtomicUsize::new(0));
    // Known length over the limit: not even recorded.
    let svc = counted(&calls, || Full::new(Bytes::from(vec![7u8; 4096])));
    let svc = cache(&store)
        .layer(
            Rule::new("r")
                .ttl(Duration::from_secs(60))
                .max_body_size(1024),
        )
        .layer(svc);
    let res = svc.clone().oneshot(req()).await.unwrap();
    assert_eq!(
        res.headers()["cache-status"],
        "larder; fwd=miss; detail=too-big"
    );
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes().len(),
        4096
    );
    // Unknown length that turns out too big: recorded, then dropped past the limit.
    let calls2 = Arc::new(AtomicUsize::new(0));
    let svc2 = counted(&calls2, || Chunks::new(4096, 512));
    let svc2 = cache(&store)
        .layer(
            Rule::new("r2")
                .ttl(Duration::from_secs(60))
                .max_body_size(1024),
        )
        .layer(svc2);
    for _ in 0..2 {
        let res = svc2.clone().oneshot(req()).await.unwrap();
        assert_eq!(
            res.into_body().collect().await.unwrap().to_bytes().len(),
            4096
        );
    }
    assert_eq!(calls2.load(Ordering::SeqCst), 2);
    assert_eq!(store.entry_count(), 0);
}

#[tokio::test]
async fn a_broken_body_is_never_stored() {
    let store = MemoryStore::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = counted(&calls, || {
        let mut c = Chunks::new(10_000, 1000);
        c.fail_after = Some(3);
        c
    });
    let svc = cache(&store)
        .layer(Rule::new("r").ttl(Duration::from_secs(60)))
        .layer(svc);
    for _ in 0..2 {
        let res = svc.clone().oneshot(req()).await.unwrap();
        assert!(
            res.into_body().collect().await.is_err(),
            "the client sees the failure"
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(store.entry_count(), 0);
}
