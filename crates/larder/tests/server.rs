//! The layer behind a real hyper server on a free port, called over loopback.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, routing::get};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use larder::{CacheHandle, MemoryStore, Rule};

#[tokio::test]
async fn a_real_server_serves_misses_hits_heads_and_304s() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let cache = CacheHandle::builder(MemoryStore::default())
        .x_cache()
        .build();
    let app = Router::new().route(
        "/api/metrics/{category}",
        get(move || {
            c.fetch_add(1, Ordering::SeqCst);
            async { ([("content-type", "application/json")], "{\"revenue\":42}") }
        })
        .layer(cache.layer(Rule::new("metrics").ttl(Duration::from_secs(900)))),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let url = format!("http://{addr}/api/metrics/finance");
    let call = |method: Method, etag: Option<String>| {
        let mut req = Request::builder().method(method).uri(&url);
        if let Some(e) = etag {
            req = req.header("if-none-match", e);
        }
        client.request(req.body(Empty::new()).unwrap())
    };

    let miss = call(Method::GET, None).await.unwrap();
    assert_eq!(miss.headers()["x-cache"], "MISS");
    assert_eq!(miss.headers()["cache-status"], "larder; fwd=miss; stored");
    let body1 = miss.into_body().collect().await.unwrap().to_bytes();

    let hit = call(Method::GET, None).await.unwrap();
    assert_eq!(hit.headers()["x-cache"], "HIT");
    assert_eq!(hit.headers()["content-length"], body1.len().to_string());
    let etag = hit.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(hit.into_body().collect().await.unwrap().to_bytes(), body1);

    let head = call(Method::HEAD, None).await.unwrap();
    assert_eq!(head.headers()["x-cache"], "HIT");
    assert_eq!(head.headers()["content-length"], body1.len().to_string());
    assert!(
        head.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty()
    );

    let not_modified = call(Method::GET, Some(etag.clone())).await.unwrap();
    assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(not_modified.headers()["etag"], etag.as_str());
    assert!(
        not_modified
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty()
    );

    let other = call(Method::GET, Some("\"something-else\"".into()))
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::OK);

    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one origin call served all of them"
    );
    server.abort();
}
