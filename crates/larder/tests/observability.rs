//! What an operator reads off `CacheHandle::stats` (and the same gauges and counters of the
//! `metrics` facade): writes as their own outcome, requests no rule covered, invalidations
//! made from code, what the store holds here (memory store, tiered L1, reads by level), and
//! whether the store is used, with the invalidations waiting for it during an outage.

mod support;

use std::time::Duration;

use axum::{
    Router,
    body::Body,
    routing::{get, post},
};
use http::Request;
use http_body_util::BodyExt;
use larder::{
    CacheHandle, MemoryStore, Rule, Rules,
    store::{RedisStore, TieredStore},
};
use larder_testkit::RedisServer;
use support::metrics_app::eventually;
use tower::ServiceExt;

async fn send(app: &Router, method: &str, uri: &str) -> String {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res
        .headers()
        .get("cache-status")
        .map_or(String::new(), |v| v.to_str().unwrap().to_owned());
    res.into_body().collect().await.unwrap();
    status
}

fn app(cache: &CacheHandle) -> Router {
    Router::new()
        .route(
            "/items",
            get(|| async { "items" }).post(|| async { "created" }),
        )
        .route("/other", post(|| async { "not covered" }))
        .layer(
            cache.layer_with(
                Rules::new().route(
                    "/items",
                    Rule::new("items")
                        .ttl(Duration::from_secs(60))
                        .invalidates(["items"]),
                ),
            ),
        )
}

#[tokio::test]
async fn writes_unmatched_requests_code_invalidations_and_the_memory_stores_usage_are_counted() {
    let cache = CacheHandle::new(MemoryStore::default());
    let app = app(&cache);
    send(&app, "GET", "/items").await;
    send(&app, "GET", "/items").await;
    assert_eq!(
        send(&app, "POST", "/items").await,
        "larder; fwd=method; detail=invalidated"
    );
    assert_eq!(
        send(&app, "POST", "/other").await,
        "larder; fwd=bypass; detail=no-rule"
    );
    cache.invalidate_tags(["items"]).await.unwrap();
    let stats = cache.stats();
    let items = &stats.routes["items"];
    assert_eq!(
        (items.hits, items.misses, items.writes, items.bypasses),
        (1, 1, 1, 0),
        "{items:?}"
    );
    assert_eq!(items.invalidations, 1, "the write's");
    assert_eq!(
        stats.routes["typed"].invalidations, 1,
        "the one made from code"
    );
    assert_eq!(stats.unmatched, 1);
    assert!(stats.store_available);
    assert_eq!(stats.pending_invalidations, 0);
    let usage = stats.usage.expect("the memory store tells what it holds");
    assert_eq!(usage.entries, 1);
    assert!(usage.bytes >= 5, "{usage:?}");
    assert_eq!((usage.l1_reads, usage.l2_reads), (None, None));
}

#[tokio::test]
async fn the_tiered_store_tells_l1_from_l2_reads_and_an_outage_shows_in_the_stats() {
    let mut server = RedisServer::start();
    let l2 = RedisStore::builder(server.url())
        .namespace("obs")
        .response_timeout(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    let store = support::coherent(TieredStore::builder(l2).build()).await;
    let cache = CacheHandle::builder(store)
        .circuit_breaker(1, Duration::from_secs(60))
        .build();
    let app = app(&cache);
    send(&app, "GET", "/items").await;
    eventually(|| async {
        send(&app, "GET", "/items")
            .await
            .contains("; hit")
            .then_some(())
    })
    .await
    .expect("a hit");
    for _ in 0..5 {
        assert!(send(&app, "GET", "/items").await.contains("; hit"));
    }
    let usage = cache
        .stats()
        .usage
        .expect("the tiered store tells what its L1 holds");
    assert_eq!(usage.entries, 1);
    let (l1, l2) = (usage.l1_reads.unwrap(), usage.l2_reads.unwrap());
    assert!(l1 >= 5, "the last hits came from the L1: {usage:?}");
    assert!(l2 >= 1, "the first read went to Redis: {usage:?}");

    // Redis goes away: an invalidation cannot land, the store is no longer used.
    server.stop();
    assert!(cache.invalidate_tags(["items"]).await.is_err());
    let stats = cache.stats();
    assert!(!stats.store_available);
    assert_eq!(stats.pending_invalidations, 1);
    assert_eq!(
        send(&app, "GET", "/items").await,
        "larder; fwd=bypass; detail=store-unavailable"
    );
}
