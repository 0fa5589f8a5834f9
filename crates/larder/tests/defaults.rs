//! Defaults on the handle (`default_ttl`, `default_key`) and statuses cached for a time of
//! their own (`Rule::cache_status`: a 404 for 30 s), through the layer.

mod support;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::Path,
    http::{HeaderMap, StatusCode},
    routing::get,
};
use http::Request;
use http_body_util::BodyExt;
use larder::{CacheHandle, KeyOptions, MemoryStore, Pagination, Rule};
use tower::ServiceExt;

/// Whether `status` is a hit with `ttl` seconds left (or one less: a second may turn meanwhile).
fn hit_with_ttl(status: &str, ttl: u64) -> bool {
    status
        .strip_prefix("larder; hit; ttl=")
        .and_then(|n| n.parse::<u64>().ok())
        .is_some_and(|n| n == ttl || n + 1 == ttl)
}

async fn send(app: &Router, method: &str, uri: &str, host: &str) -> (StatusCode, String, String) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", host)
        .body(Body::empty())
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let cache_status = res.headers()["cache-status"].to_str().unwrap().to_owned();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        cache_status,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

/// `/r` answering `#N` (N counts the calls), behind `rule`.
fn counted(cache: &CacheHandle, rule: Rule) -> Router {
    let calls = Arc::new(AtomicUsize::new(0));
    Router::new().route(
        "/r",
        get(move |headers: HeaderMap| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let host = headers["host"].to_str().unwrap().to_owned();
            async move { format!("{host} #{n}") }
        })
        .layer(cache.layer(rule)),
    )
}

#[tokio::test]
async fn the_handles_default_ttl_fills_in_for_rules_without_one() {
    let cache = CacheHandle::builder(MemoryStore::default())
        .default_ttl(Duration::from_secs(120))
        .build();
    let app = counted(&cache, Rule::new("plain"));
    assert_eq!(
        send(&app, "GET", "/r", "a").await.1,
        "larder; fwd=miss; stored"
    );
    let (_, status, _) = send(&app, "GET", "/r", "a").await;
    assert!(hit_with_ttl(&status, 120), "{status}");
    let own = counted(&cache, Rule::new("own").ttl(Duration::from_secs(7)));
    send(&own, "GET", "/r?own", "a").await;
    let status = send(&own, "GET", "/r?own", "a").await.1;
    assert!(hit_with_ttl(&status, 7), "{status}");

    // Without a default, a rule without a TTL stores only what states its freshness.
    let bare = CacheHandle::new(MemoryStore::default());
    let app = counted(&bare, Rule::new("plain"));
    assert_eq!(
        send(&app, "GET", "/r", "a").await.1,
        "larder; fwd=miss; detail=no-freshness"
    );
}

#[tokio::test]
async fn the_handles_default_key_applies_to_rules_without_key_options_and_keeps_their_pages() {
    let cache = CacheHandle::builder(MemoryStore::default())
        .default_ttl(Duration::from_secs(60))
        .default_key(KeyOptions::new().ignore_authority())
        .build();
    // The default leaves the host out: two host names share the entry.
    let app = counted(&cache, Rule::new("any-host"));
    assert_eq!(send(&app, "GET", "/r", "a.example").await.2, "a.example #1");
    assert_eq!(send(&app, "GET", "/r", "b.example").await.2, "a.example #1");
    // A rule's own key options win: per host again.
    let app = counted(&cache, Rule::new("per-host").key(KeyOptions::new()));
    assert_eq!(
        send(&app, "GET", "/r?x", "a.example").await.2,
        "a.example #1"
    );
    assert_eq!(
        send(&app, "GET", "/r?x", "b.example").await.2,
        "b.example #2"
    );
    // A rule that only paginates takes the default and keeps its pages.
    let app = counted(
        &cache,
        Rule::new("pages").paginate(Pagination::new("page").defaults(1, 10)),
    );
    assert_eq!(
        send(&app, "GET", "/r?page=1", "a.example").await.2,
        "a.example #1"
    );
    assert_eq!(
        send(&app, "GET", "/r", "b.example").await.2,
        "a.example #1",
        "page 1 is the default"
    );
    assert_eq!(
        send(&app, "GET", "/r?page=2", "b.example").await.2,
        "b.example #2"
    );
}

/// `/items/{id}`: 404 until the item is created with `PUT`.
fn items(cache: &CacheHandle, rule: Rule) -> (Router, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let created: Arc<Mutex<Vec<u32>>> = Arc::default();
    let (c, read, write) = (Arc::clone(&calls), Arc::clone(&created), created);
    let app = Router::new().route(
        "/items/{id}",
        get(move |Path(id): Path<u32>| {
            c.fetch_add(1, Ordering::SeqCst);
            let found = read.lock().unwrap().contains(&id);
            async move {
                if found {
                    (StatusCode::OK, format!("item {id}"))
                } else {
                    (StatusCode::NOT_FOUND, "no such item".to_owned())
                }
            }
        })
        .put(move |Path(id): Path<u32>| {
            write.lock().unwrap().push(id);
            async { StatusCode::NO_CONTENT }
        })
        .layer(cache.layer(rule)),
    );
    (app, calls)
}

#[tokio::test]
async fn a_404_is_cached_for_its_own_time_and_a_write_to_its_path_clears_it() {
    let cache = CacheHandle::new(MemoryStore::default());
    let rule = Rule::new("item")
        .ttl(Duration::from_secs(300))
        .cache_status(StatusCode::NOT_FOUND, Duration::from_secs(30));
    let (app, calls) = items(&cache, rule);
    let (status, cache_status, _) = send(&app, "GET", "/items/1", "a").await;
    assert_eq!(
        (status, cache_status.as_str()),
        (StatusCode::NOT_FOUND, "larder; fwd=miss; stored")
    );
    let (status, cache_status, body) = send(&app, "GET", "/items/1", "a").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(hit_with_ttl(&cache_status, 30), "{cache_status}");
    assert_eq!(body, "no such item");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Creating the item (a write to the same path) invalidates the cached 404.
    assert_eq!(
        send(&app, "PUT", "/items/1", "a").await.0,
        StatusCode::NO_CONTENT
    );
    let (status, _, body) = send(&app, "GET", "/items/1", "a").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "item 1"));
    let (_, cache_status, _) = send(&app, "GET", "/items/1", "a").await;
    assert!(
        hit_with_ttl(&cache_status, 300),
        "the 200 takes the rule's TTL: {cache_status}"
    );

    // Without cache_status, a 404 is not stored on the rule's TTL alone.
    let (app, calls) = items(&cache, Rule::new("plain").ttl(Duration::from_secs(300)));
    for _ in 0..2 {
        let (_, cache_status, _) = send(&app, "GET", "/items/9", "b").await;
        assert_eq!(cache_status, "larder; fwd=miss; detail=status");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
#[should_panic(expected = "status 503 Service Unavailable is never stored")]
fn a_status_that_is_never_stored_cannot_be_given_a_ttl() {
    let cache = CacheHandle::new(MemoryStore::default());
    let _ = cache.layer(
        Rule::new("r").cache_status(StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(5)),
    );
}

/// `hide_cache_headers`: no `Cache-Status`, no `X-Cache`, no derived `ETag` on a miss, a hit or
/// a 304; the service's own `ETag` and an upstream cache's `Cache-Status` pass; the statistics
/// still count.
#[tokio::test]
async fn hidden_cache_headers_never_reach_the_client() {
    use axum::http::header;
    let cache = CacheHandle::builder(MemoryStore::default())
        .x_cache()
        .hide_cache_headers()
        .default_ttl(Duration::from_secs(60))
        .build();
    let app = Router::new()
        .route("/plain", get(|| async { "plain" }))
        .route(
            "/tagged",
            get(|| async {
                (
                    [
                        (header::ETAG, "\"v1\""),
                        (
                            header::HeaderName::from_static("cache-status"),
                            "upstream; hit",
                        ),
                    ],
                    "tagged",
                )
            }),
        )
        .layer(
            cache.layer_with(
                larder::Rules::new()
                    .route("/plain", Rule::new("plain"))
                    .route("/tagged", Rule::new("tagged")),
            ),
        );
    let call = |uri: &'static str, inm: Option<&'static str>| {
        let app = app.clone();
        async move {
            let mut req = Request::get(uri);
            if let Some(v) = inm {
                req = req.header(header::IF_NONE_MATCH, v);
            }
            let res = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
            let (status, headers) = (res.status(), res.headers().clone());
            // A miss is stored as its body is read.
            res.into_body().collect().await.unwrap();
            (status, headers)
        }
    };
    for _ in 0..2 {
        let (status, h) = call("/plain", None).await;
        assert_eq!(status, StatusCode::OK);
        for name in ["cache-status", "x-cache", "etag"] {
            assert!(!h.contains_key(name), "{name}: {h:?}");
        }
        let (_, h) = call("/tagged", None).await;
        assert_eq!(h["etag"], "\"v1\"");
        let upstream: Vec<_> = h.get_all("cache-status").iter().collect();
        assert_eq!(upstream, ["upstream; hit"], "only the upstream member");
        assert!(!h.contains_key("x-cache"));
    }
    let (status, h) = call("/tagged", Some("\"v1\"")).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(!h.contains_key("x-cache"));
    let stats = cache.stats();
    assert_eq!((stats.total.hits, stats.total.misses), (3, 2), "{stats:?}");
}

/// A first response read whole (a 200 of known, small length without an ETag of its own)
/// already carries the ETag its hits will, so a client can revalidate from its first answer;
/// a streamed body of unknown length gets it from its first hit on.
#[tokio::test]
async fn a_miss_carries_the_etag_its_hits_will() {
    use axum::http::header;
    let cache = CacheHandle::builder(MemoryStore::default())
        .default_ttl(Duration::from_secs(60))
        .build();
    let app = Router::new()
        .route("/small", get(|| async { "small body" }))
        .route(
            "/streamed",
            get(|| async { Body::new(support::Chunks::new(8, 4)) }),
        )
        .layer(
            cache.layer_with(
                larder::Rules::new()
                    .route("/small", Rule::new("small"))
                    .route("/streamed", Rule::new("streamed")),
            ),
        );
    let call = |uri: &'static str, inm: Option<String>| {
        let app = app.clone();
        async move {
            let mut req = Request::get(uri);
            if let Some(v) = inm {
                req = req.header(header::IF_NONE_MATCH, v);
            }
            let res = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
            let (status, headers) = (res.status(), res.headers().clone());
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (status, headers, body)
        }
    };
    let (status, miss, body) = call("/small", None).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"small body"[..]));
    assert_eq!(miss["cache-status"], "larder; fwd=miss; stored");
    let etag = miss["etag"].to_str().unwrap().to_owned();
    let (_, hit, _) = call("/small", None).await;
    assert_eq!(hit["etag"], etag.as_str(), "the hit's ETag is the miss's");
    let (status, _, body) = call("/small", Some(etag)).await;
    assert_eq!(
        status,
        StatusCode::NOT_MODIFIED,
        "revalidated from the first answer"
    );
    assert!(body.is_empty());

    let (_, miss, body) = call("/streamed", None).await;
    assert_eq!(body.len(), 8);
    assert!(
        !miss.contains_key("etag"),
        "a streamed miss goes out before its end"
    );
    let (_, hit, _) = call("/streamed", None).await;
    assert!(hit.contains_key("etag"));
}

/// A body of known length that breaks while it is read whole: answered as far as it came,
/// never stored.
#[tokio::test]
async fn a_body_read_whole_that_breaks_is_not_stored() {
    struct Breaks(bool);
    impl http_body::Body for Breaks {
        type Data = bytes::Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
            if self.0 {
                return std::task::Poll::Ready(Some(Err(std::io::Error::other("reset"))));
            }
            self.0 = true;
            std::task::Poll::Ready(Some(Ok(http_body::Frame::data(bytes::Bytes::from_static(
                b"half",
            )))))
        }
        fn size_hint(&self) -> http_body::SizeHint {
            http_body::SizeHint::with_exact(8)
        }
    }
    let cache = CacheHandle::builder(MemoryStore::default())
        .default_ttl(Duration::from_secs(60))
        .build();
    let app = Router::new().route(
        "/r",
        get(|| async { Body::new(Breaks(false)) }).layer(cache.layer(Rule::new("r"))),
    );
    for _ in 0..2 {
        let res = app
            .clone()
            .oneshot(Request::get("/r").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(
            res.headers()["cache-status"],
            "larder; fwd=miss; detail=server-error"
        );
        assert!(!res.headers().contains_key("etag"));
    }
    assert_eq!(cache.stats().total.stored, 0);
}
