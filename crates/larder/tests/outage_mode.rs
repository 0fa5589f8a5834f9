//! The tiered store's opt-in degraded mode (`serve_l1_during_outage`): during a Redis outage
//! the L1 answers, marked `detail=outage`, for at most its window; this instance's own writes
//! stay exact; without the mode everything goes to the service.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, body::Body, routing::get};
use http::Request;
use http_body_util::BodyExt;
use larder::{
    CacheHandle, Rule, Rules,
    store::{RedisStore, TieredStore},
};
use larder_testkit::RedisServer;
use support::metrics_app::eventually;
use tower::ServiceExt;

async fn send(app: &Router, method: &str, uri: &str) -> (String, String) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.headers()["cache-status"].to_str().unwrap().to_owned();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (String::from_utf8(body.to_vec()).unwrap(), status)
}

/// `/items` answers `items #N` (N counts the calls); `POST /items` invalidates `items`.
fn app(cache: &CacheHandle) -> Router {
    let calls = Arc::new(AtomicUsize::new(0));
    Router::new()
        .route(
            "/items",
            get(move || {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                async move { format!("items #{n}") }
            })
            .post(|| async { "created" }),
        )
        .layer(
            cache.layer_with(
                Rules::new().route(
                    "/items",
                    Rule::new("items")
                        .ttl(Duration::from_secs(300))
                        .tag("items")
                        .invalidates(["items"]),
                ),
            ),
        )
}

/// A tiered cache over `server`, with the outage mode's `window` if any, whose breaker opens
/// at the first failure; once its L1 holds `/items`.
async fn warmed(
    server: &RedisServer,
    window: Option<Duration>,
) -> (TieredStore, CacheHandle, Router) {
    let l2 = RedisStore::builder(server.url())
        .namespace("outage-mode")
        .response_timeout(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    let mut builder = TieredStore::builder(l2);
    if let Some(window) = window {
        builder = builder.serve_l1_during_outage(window);
    }
    let store = support::coherent(builder.build()).await;
    let cache = CacheHandle::builder(store.clone())
        .circuit_breaker(1, Duration::from_secs(60))
        .build();
    let app = app(&cache);
    assert_eq!(send(&app, "GET", "/items").await.0, "items #1");
    eventually(|| async {
        send(&app, "GET", "/items")
            .await
            .1
            .contains("; hit; ttl=")
            .then_some(())
    })
    .await
    .expect("a hit from the L1");
    (store, cache, app)
}

/// Stops Redis and waits until the cache knows: the backplane is lost and a read that had to
/// ask Redis opened the breaker.
async fn outage(server: &mut RedisServer, store: &TieredStore, cache: &CacheHandle, app: &Router) {
    server.stop();
    eventually(|| async { (!store.is_coherent()).then_some(()) })
        .await
        .expect("the L1 lease ran out");
    eventually(|| async {
        send(app, "GET", "/items").await;
        (!cache.is_store_available()).then_some(())
    })
    .await
    .expect("the breaker opened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_an_outage_the_l1_answers_marked_outage_until_a_local_write() {
    let mut server = RedisServer::start();
    let (store, cache, app) = warmed(&server, Some(Duration::from_secs(30))).await;
    outage(&mut server, &store, &cache, &app).await;
    for _ in 0..5 {
        let (body, status) = send(&app, "GET", "/items").await;
        assert_eq!(body, "items #1", "the L1's copy: {status}");
        assert!(
            status.starts_with("larder; hit; ttl=-") && status.ends_with("; detail=outage"),
            "{status}"
        );
    }
    assert!(cache.stats().routes["items"].stale >= 5);
    // Never to a request with credentials (the rule does not share with it), nor to a client
    // that carries a consistency token (it saw an invalidation the L1 may not have).
    for (name, value) in [("cookie", "sid=1"), ("larder-consistency", "1")] {
        let req = Request::get("/items")
            .header(name, value)
            .body(Body::empty())
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        assert_eq!(
            res.headers()["cache-status"],
            "larder; fwd=bypass; detail=store-unavailable",
            "{name}"
        );
    }

    // This instance's write cannot reach Redis: its L1 is emptied, never read past the write.
    assert_eq!(send(&app, "POST", "/items").await.0, "created");
    let (body, status) = send(&app, "GET", "/items").await;
    assert_ne!(body, "items #1", "the write replaced it");
    assert_eq!(status, "larder; fwd=bypass; detail=store-unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_window_or_without_the_mode_the_service_answers() {
    let mut server = RedisServer::start();
    let (store, cache, app) = warmed(&server, Some(Duration::from_secs(1))).await;
    outage(&mut server, &store, &cache, &app).await;
    // Within the window (or it has just passed, on a slow machine): either the copy, marked,
    // or the service.
    let (_, status) = send(&app, "GET", "/items").await;
    assert!(
        status.ends_with("detail=outage") || status.ends_with("detail=store-unavailable"),
        "{status}"
    );
    // Past the window the copy is never served.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..3 {
        let (body, status) = send(&app, "GET", "/items").await;
        assert_ne!(body, "items #1", "{status}");
        assert_eq!(status, "larder; fwd=bypass; detail=store-unavailable");
    }

    let mut server = RedisServer::start();
    let (store, cache, app) = warmed(&server, None).await;
    outage(&mut server, &store, &cache, &app).await;
    let (body, status) = send(&app, "GET", "/items").await;
    assert_ne!(body, "items #1");
    assert_eq!(status, "larder; fwd=bypass; detail=store-unavailable");
}
