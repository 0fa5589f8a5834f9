//! The app the Redis tests share: one cached route (`/api/metrics/{category}`, 15 min, tag
//! `metrics`) that counts its origin calls, a handle on any store, one GET, and polling.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, body::Body, routing::get};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use larder::{CacheHandle, Rule, Store};
use tower::ServiceExt;

/// A handle in namespace `t` with `X-Cache` on and a 300 ms store deadline.
pub fn handle(store: impl Store) -> CacheHandle {
    CacheHandle::builder(store)
        .x_cache()
        .namespace("t")
        .store_timeout(Duration::from_millis(300))
        .build()
}

/// The cached metrics route; each origin call bumps `calls` and shows its number in the body.
pub fn app(cache: &CacheHandle, calls: &Arc<AtomicUsize>) -> Router {
    let c = Arc::clone(calls);
    Router::new().route(
        "/api/metrics/{category}",
        get(move || {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move { format!("{{\"revenue\":42,\"n\":{n}}}") }
        })
        .layer(
            cache.layer(
                Rule::new("metrics")
                    .ttl(Duration::from_secs(900))
                    .tag("metrics"),
            ),
        ),
    )
}

/// Status, `X-Cache`, `Cache-Status` and body of one GET.
pub async fn get_once(app: &Router, uri: &str) -> (StatusCode, String, String, String) {
    let res = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let x = res.headers()["x-cache"].to_str().unwrap().to_owned();
    let cache_status = res.headers()["cache-status"].to_str().unwrap().to_owned();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        x,
        cache_status,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

/// How long a condition polled by [`eventually`] may take.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// Polls `check` until it returns `Some`, at most [`DEADLINE`]; `None` if it never did.
pub async fn eventually<T, F, Fut>(mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
