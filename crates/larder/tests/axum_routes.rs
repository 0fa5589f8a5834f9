#![cfg(feature = "axum")]
//! Routes as axum sees them: a per-route layer takes its path parameters from `MatchedPath`
//! (no `.path(...)` repeated), `Rules` work under `Router::nest` (patterns written with or
//! without the nest's prefix), and two nested routers never share entries.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, body::Body, extract::Path, routing::get};
use http::Request;
use http_body_util::BodyExt;
use larder::{CacheHandle, MemoryStore, Rule, Rules};
use tower::ServiceExt;

async fn send(app: &Router, uri: &str) -> (String, String) {
    let res = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.headers()["cache-status"].to_str().unwrap().to_owned();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (String::from_utf8(body.to_vec()).unwrap(), status)
}

fn counted(calls: &Arc<AtomicUsize>, label: &'static str) -> axum::routing::MethodRouter {
    let calls = Arc::clone(calls);
    get(move |Path(id): Path<u32>| {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        async move { format!("{label} {id} #{n}") }
    })
}

fn item_rule() -> Rule {
    Rule::new("item")
        .ttl(Duration::from_secs(60))
        .tag("item:{id}")
}

/// `cache.layer(rule)` on `/items/{id}` with a tag `item:{id}` and no `.path(...)`: the tag is
/// filled from the route axum matched, so invalidating `item:7` clears item 7 only.
#[tokio::test]
async fn a_per_route_layer_fills_its_templates_from_the_matched_route() {
    let cache = CacheHandle::new(MemoryStore::default());
    let calls = Arc::new(AtomicUsize::new(0));
    let app = Router::new().route(
        "/items/{id}",
        counted(&calls, "item").layer(cache.layer(item_rule())),
    );
    for id in [7, 8] {
        let (_, status) = send(&app, &format!("/items/{id}")).await;
        assert_eq!(status, "larder; fwd=miss; stored", "item {id}");
        assert!(
            send(&app, &format!("/items/{id}"))
                .await
                .1
                .contains("; hit")
        );
    }
    cache.invalidate_tags(["item:7"]).await.unwrap();
    assert_eq!(send(&app, "/items/7").await.0, "item 7 #3");
    assert_eq!(
        send(&app, "/items/8").await.0,
        "item 8 #2",
        "item 8 untouched"
    );

    // The same under a nest: the matched route carries the prefix, and so do the keys.
    let calls = Arc::new(AtomicUsize::new(0));
    let inner = Router::new().route(
        "/items/{id}",
        counted(&calls, "nested").layer(cache.layer(item_rule())),
    );
    let app = Router::new().nest("/shop", inner);
    assert_eq!(
        send(&app, "/shop/items/7").await.1,
        "larder; fwd=miss; stored"
    );
    assert!(send(&app, "/shop/items/7").await.1.contains("; hit"));
    cache.invalidate_tags(["item:7"]).await.unwrap();
    assert_eq!(send(&app, "/shop/items/7").await.0, "nested 7 #2");
}

/// `Rules` on a nested router: patterns with the nest's prefix and patterns without it both
/// match (before, both gave `detail=no-rule`).
#[tokio::test]
async fn rules_match_under_a_nest_with_or_without_the_prefix() {
    for pattern in ["/api/items/{id}", "/items/{id}"] {
        let cache = CacheHandle::new(MemoryStore::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let inner = Router::new()
            .route("/items/{id}", counted(&calls, "item"))
            .layer(cache.layer_with(Rules::new().route(pattern, item_rule())));
        let app = Router::new().nest("/api", inner);
        let (_, status) = send(&app, "/api/items/3").await;
        assert_eq!(status, "larder; fwd=miss; stored", "{pattern}");
        assert!(
            send(&app, "/api/items/3").await.1.contains("; hit"),
            "{pattern}"
        );
        cache.invalidate_tags(["item:3"]).await.unwrap();
        assert_eq!(send(&app, "/api/items/3").await.0, "item 3 #2", "{pattern}");
    }
}

/// Two nested routers with the same inner routes behind one cache: `/v1/items/1` and
/// `/v2/items/1` are different resources and never answer for each other (the keys use the
/// full path, not the path the nested router sees).
#[tokio::test]
async fn two_nests_never_share_entries() {
    let cache = CacheHandle::new(MemoryStore::default());
    let calls = Arc::new(AtomicUsize::new(0));
    let version = |label: &'static str| {
        Router::new()
            .route("/items/{id}", counted(&calls, label))
            .layer(cache.layer(Rule::new("item").ttl(Duration::from_secs(60))))
    };
    let app = Router::new()
        .nest("/v1", version("v1"))
        .nest("/v2", version("v2"));
    assert_eq!(send(&app, "/v1/items/1").await.0, "v1 1 #1");
    assert_eq!(send(&app, "/v2/items/1").await.0, "v2 1 #2");
    for _ in 0..2 {
        assert_eq!(send(&app, "/v1/items/1").await.0, "v1 1 #1");
        assert_eq!(send(&app, "/v2/items/1").await.0, "v2 1 #2");
    }
}

/// A per-route layer with its own `.path(...)` under a nest: its pattern matches the full path
/// or the nested one, so its templates fill and its writes invalidate.
#[tokio::test]
async fn a_per_route_layer_with_its_own_path_works_under_a_nest() {
    let cache = CacheHandle::new(MemoryStore::default());
    let calls = Arc::new(AtomicUsize::new(0));
    let inner = Router::new().route(
        "/items/{id}",
        counted(&calls, "item").layer(cache.layer(item_rule().path("/items/{id}"))),
    );
    let app = Router::new().nest("/api", inner);
    assert_eq!(
        send(&app, "/api/items/4").await.1,
        "larder; fwd=miss; stored"
    );
    assert!(send(&app, "/api/items/4").await.1.contains("; hit"));
    cache.invalidate_tags(["item:4"]).await.unwrap();
    assert_eq!(send(&app, "/api/items/4").await.0, "item 4 #2");
}

/// Keys fold `%2f` and `%2F` into one path; so do the path tags that writes invalidate.
#[tokio::test]
async fn a_write_to_a_path_invalidates_it_however_its_escapes_are_cased() {
    let cache = CacheHandle::new(MemoryStore::default());
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let app = Router::new().route(
        "/files/{name}",
        get(move || {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            async move { format!("file #{n}") }
        })
        .put(|| async { "saved" })
        .layer(cache.layer(Rule::new("file").ttl(Duration::from_secs(60)))),
    );
    assert_eq!(send(&app, "/files/a%2fb").await.0, "file #1");
    assert_eq!(send(&app, "/files/a%2Fb").await.0, "file #1", "one key");
    let put = Request::put("/files/a%2Fb").body(Body::empty()).unwrap();
    let res = app.clone().oneshot(put).await.unwrap();
    assert_eq!(
        res.headers()["cache-status"],
        "larder; fwd=method; detail=invalidated"
    );
    assert_eq!(
        send(&app, "/files/a%2fb").await.0,
        "file #2",
        "the write reached it"
    );
}
