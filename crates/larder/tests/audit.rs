//! The audit finds a rule that forgets an invalidation: a write through a route that does not
//! name the list's tag leaves the list's entry stale, and sampled hits asked again of the
//! service show it. A rule that invalidates correctly is never reported.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    routing::{get, post},
};
use http::Request;
use http_body_util::BodyExt;
use larder::{CacheHandle, MemoryStore, Rule};
use tower::ServiceExt;

/// A list behind `GET /list` (cached, tag `list`, every hit audited) and `POST /items`, which
/// adds to it and invalidates `invalidates`.
fn app(cache: &CacheHandle, invalidates: &[&str]) -> Router {
    let items = Arc::new(Mutex::new(vec!["a".to_owned()]));
    let (read, write) = (Arc::clone(&items), items);
    Router::new()
        .route(
            "/list",
            get(move || {
                let list = read.lock().unwrap().join(",");
                async move { list }
            })
            .layer(
                cache.layer(
                    Rule::new("list")
                        .ttl(Duration::from_secs(60))
                        .tag("list")
                        .audit(1.0),
                ),
            ),
        )
        .route(
            "/items",
            post(move || {
                write.lock().unwrap().push("b".to_owned());
                async { "added" }
            })
            .layer(cache.layer(Rule::new("items").invalidates(invalidates.iter().copied()))),
        )
}

async fn call(app: &Router, method: &str, uri: &str) -> String {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

/// Reads `/list` until `done` holds for the list rule's counters (at most 5 s).
async fn read_until(app: &Router, cache: &CacheHandle, done: impl Fn(u64, u64) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let body = call(app, "GET", "/list").await;
        let stats = cache.stats().routes["list"].clone();
        if done(stats.audits, stats.audit_mismatches) {
            return body;
        }
        assert!(tokio::time::Instant::now() < deadline, "{stats:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_forgets_a_tag_is_found_by_the_audit() {
    let cache = CacheHandle::new(MemoryStore::default());
    let app = app(&cache, &[]); // the bug: the write names no tag
    assert_eq!(call(&app, "GET", "/list").await, "a");
    read_until(&app, &cache, |audits, _| audits >= 1).await;
    assert_eq!(cache.stats().routes["list"].audit_mismatches, 0);

    call(&app, "POST", "/items").await;
    let served = read_until(&app, &cache, |_, mismatches| mismatches >= 1).await;
    assert_eq!(
        served, "a",
        "the stale entry was served, and the audit saw it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_that_invalidates_correctly_is_never_reported() {
    let cache = CacheHandle::new(MemoryStore::default());
    let app = app(&cache, &["list"]);
    assert_eq!(call(&app, "GET", "/list").await, "a");
    read_until(&app, &cache, |audits, _| audits >= 1).await;
    call(&app, "POST", "/items").await;
    assert_eq!(call(&app, "GET", "/list").await, "a,b");
    let audited = cache.stats().routes["list"].audits;
    read_until(&app, &cache, |audits, _| audits >= audited + 2).await;
    assert_eq!(cache.stats().routes["list"].audit_mismatches, 0);
}
