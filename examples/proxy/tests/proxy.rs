//! The proxy over a real origin (an HTTP server on a free port): hits, revalidation with
//! `304`, targeted cache control, several variants per URL, writes and tags that
//! invalidate, an origin that is down, and Redis shared by two proxies.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    routing,
};
use example_proxy::{Config, StoreKind, app};

/// What the origin has done: calls, the page's version, the last `If-None-Match` it saw.
#[derive(Clone, Default)]
struct Seen {
    calls: Arc<AtomicU64>,
    version: Arc<AtomicU64>,
    if_none_match: Arc<Mutex<Vec<Option<String>>>>,
}

async fn page(State(seen): State<Seen>, headers: HeaderMap) -> axum::response::Response {
    let n = seen.calls.fetch_add(1, Ordering::SeqCst) + 1;
    let version = seen.version.load(Ordering::SeqCst);
    let etag = format!("\"v{version}\"");
    let inm = headers
        .get("if-none-match")
        .map(|v| v.to_str().unwrap().to_owned());
    seen.if_none_match.lock().unwrap().push(inm.clone());
    let head = [
        ("etag", etag.clone()),
        ("cache-control", "max-age=1".into()),
    ];
    if inm.as_deref() == Some(etag.as_str()) {
        return (StatusCode::NOT_MODIFIED, head).into_response();
    }
    (head, format!("page v{version} #{n}")).into_response()
}

async fn write_page(State(seen): State<Seen>) -> &'static str {
    seen.version.fetch_add(1, Ordering::SeqCst);
    "written"
}

async fn lang(State(seen): State<Seen>, headers: HeaderMap) -> impl IntoResponse {
    let n = seen.calls.fetch_add(1, Ordering::SeqCst) + 1;
    let lang = headers
        .get("accept-language")
        .map_or("-", |v| v.to_str().unwrap())
        .to_owned();
    (
        [("vary", "Accept-Language"), ("cache-control", "max-age=60")],
        format!("hello {lang} #{n}"),
    )
}

async fn cdn(State(seen): State<Seen>) -> impl IntoResponse {
    let n = seen.calls.fetch_add(1, Ordering::SeqCst) + 1;
    (
        [
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=60"),
        ],
        format!("cdn #{n}"),
    )
}

async fn tagged(State(seen): State<Seen>) -> impl IntoResponse {
    let n = seen.calls.fetch_add(1, Ordering::SeqCst) + 1;
    (
        [("larder-tags", "catalog"), ("cache-control", "max-age=60")],
        format!("catalog #{n}"),
    )
}

async fn host(headers: HeaderMap) -> impl IntoResponse {
    let seen = |name: &str| {
        headers
            .get(name)
            .map_or("-".to_owned(), |v| v.to_str().unwrap().to_owned())
    };
    (
        [("cache-control", "max-age=60")],
        format!(
            "host={} x-forwarded-host={} forwarded={} connection-named={}",
            seen("host"),
            seen("x-forwarded-host"),
            seen("forwarded"),
            seen("x-private-hop")
        ),
    )
}

/// Starts the origin on a free port: its URL and what it sees.
async fn origin() -> (String, Seen) {
    let seen = Seen::default();
    let router = Router::new()
        .route("/page", routing::get(page).post(write_page))
        .route("/lang", routing::get(lang))
        .route("/cdn", routing::get(cdn))
        .route("/tagged", routing::get(tagged))
        .route("/host", routing::get(host))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, seen)
}

fn config(origin: &str) -> Config {
    Config {
        listen: "127.0.0.1:0".into(),
        origin: origin.to_owned(),
        rules: vec!["/=origin".into()],
        store: StoreKind::Memory,
        redis_url: "redis://127.0.0.1:6379/".into(),
        namespace: "proxy".into(),
        memory_mb: 64,
        admin_token: Some("s3cret".into()),
    }
}

/// Starts a proxy for `config` on a free port: its URL.
async fn proxy(config: Config) -> String {
    let (router, _cache) = app(&config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(example_proxy::serve(listener, router));
    url
}

struct Answer {
    status: u16,
    x_cache: String,
    cache_status: String,
    body: String,
}

async fn get_with(url: &str, headers: &[(&str, &str)]) -> Answer {
    let client = reqwest::Client::new();
    let mut req = client.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.unwrap();
    let header = |name: &str| {
        res.headers()
            .get(name)
            .map_or(String::new(), |v| v.to_str().unwrap().to_owned())
    };
    let (status, x_cache, cache_status) = (
        res.status().as_u16(),
        header("x-cache"),
        header("cache-status"),
    );
    Answer {
        status,
        x_cache,
        cache_status,
        body: res.text().await.unwrap(),
    }
}

async fn get(url: &str) -> Answer {
    get_with(url, &[]).await
}

/// Reads `url` until it is a hit (a write may land just after its response).
async fn until_hit(url: &str, headers: &[(&str, &str)]) -> Answer {
    for _ in 0..200 {
        let answer = get_with(url, headers).await;
        if answer.x_cache == "HIT" {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{url} never became a hit");
}

#[tokio::test]
async fn a_stale_page_is_revalidated_with_a_304_and_a_write_through_the_proxy_invalidates_it() {
    let (origin_url, seen) = origin().await;
    let proxy_url = proxy(config(&origin_url)).await;
    let page = format!("{proxy_url}/page");
    let first = get(&page).await;
    assert_eq!((first.status, first.x_cache.as_str()), (200, "MISS"));
    assert_eq!(first.body, "page v0 #1");
    let hit = get(&page).await;
    assert_eq!(
        (hit.x_cache.as_str(), hit.body.as_str()),
        ("HIT", "page v0 #1")
    );
    // Past max-age=1: the proxy asks with If-None-Match, the origin answers 304, and the
    // stored body answers (not sent again).
    let revalidated = loop {
        let answer = get(&page).await;
        if answer.x_cache != "HIT" {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        revalidated.x_cache, "REVALIDATED",
        "{}",
        revalidated.cache_status
    );
    assert_eq!(
        revalidated.cache_status,
        "larder; fwd=stale; fwd-status=304; stored"
    );
    assert_eq!(revalidated.body, "page v0 #1");
    assert_eq!(
        seen.if_none_match
            .lock()
            .unwrap()
            .last()
            .cloned()
            .flatten()
            .as_deref(),
        Some("\"v0\"")
    );
    // A POST through the proxy invalidates the path: the next read is the new version.
    let client = reqwest::Client::new();
    let wrote = client.post(&page).send().await.unwrap();
    assert_eq!(wrote.status(), 200);
    assert_eq!(
        wrote.headers()["cache-status"],
        "larder; fwd=method; detail=invalidated"
    );
    let after = get(&page).await;
    assert_eq!(after.x_cache, "MISS");
    assert!(after.body.starts_with("page v1 "), "{}", after.body);
}

#[tokio::test]
async fn targeted_cache_control_and_variants_and_tags_work_through_the_proxy() {
    let (origin_url, seen) = origin().await;
    let proxy_url = proxy(config(&origin_url)).await;
    // CDN-Cache-Control: max-age=60 wins over Cache-Control: no-store.
    let cdn = format!("{proxy_url}/cdn");
    assert_eq!(get(&cdn).await.x_cache, "MISS");
    assert_eq!(until_hit(&cdn, &[]).await.body, "cdn #1");
    // Two Accept-Language variants both hit.
    let lang = format!("{proxy_url}/lang");
    let en = get_with(&lang, &[("accept-language", "en")]).await;
    let fr = get_with(&lang, &[("accept-language", "fr")]).await;
    assert_eq!((en.x_cache.as_str(), fr.x_cache.as_str()), ("MISS", "MISS"));
    assert_eq!(
        until_hit(&lang, &[("accept-language", "en")]).await.body,
        en.body
    );
    assert_eq!(
        until_hit(&lang, &[("accept-language", "fr")]).await.body,
        fr.body
    );
    // The origin's `larder-tags` header: invalidating the tag drops the entry.
    let tagged = format!("{proxy_url}/tagged");
    get(&tagged).await;
    until_hit(&tagged, &[]).await;
    let calls = seen.calls.load(Ordering::SeqCst);
    let client = reqwest::Client::new();
    let purge = |body: serde_json::Value, token: &'static str| {
        client
            .post(format!("{proxy_url}/_larder/invalidate"))
            .header("authorization", format!("Bearer {token}"))
            .json(&body)
            .send()
    };
    assert_eq!(
        purge(serde_json::json!({ "tags": ["catalog"] }), "nope")
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        purge(serde_json::json!({ "tags": ["catalog"] }), "s3cret")
            .await
            .unwrap()
            .status(),
        200
    );
    let after = get(&tagged).await;
    assert_eq!(after.x_cache, "MISS");
    assert_eq!(seen.calls.load(Ordering::SeqCst), calls + 1);
    // A purge by path drops every variant of it.
    assert_eq!(
        purge(serde_json::json!({ "paths": ["/lang"] }), "s3cret")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        get_with(&lang, &[("accept-language", "en")]).await.x_cache,
        "MISS"
    );
    assert_eq!(
        get_with(&lang, &[("accept-language", "fr")]).await.x_cache,
        "MISS"
    );
}

#[tokio::test]
async fn an_origin_that_is_down_is_a_502_and_nothing_is_stored() {
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let proxy_url = proxy(config(&dead)).await;
    for _ in 0..2 {
        let answer = get(&format!("{proxy_url}/page")).await;
        assert_eq!(answer.status, 502, "{}", answer.body);
        assert!(answer.body.contains("did not answer"), "{}", answer.body);
        assert_ne!(answer.x_cache, "HIT");
    }
}

#[tokio::test]
async fn two_proxies_on_one_redis_share_entries() {
    let server = larder_testkit::RedisServer::start();
    let (origin_url, seen) = origin().await;
    let on_redis = || Config {
        store: StoreKind::Redis,
        redis_url: server.url(),
        namespace: "shared".into(),
        ..config(&origin_url)
    };
    let a = proxy(on_redis()).await;
    let b = proxy(on_redis()).await;
    let first = get(&format!("{a}/cdn")).await;
    assert_eq!(first.x_cache, "MISS");
    // Once A's entry is in Redis (A reads it back as a hit), B's first read is a hit too.
    until_hit(&format!("{a}/cdn"), &[]).await;
    let from_b = get(&format!("{b}/cdn")).await;
    assert_eq!(
        (from_b.x_cache.as_str(), from_b.body.as_str()),
        ("HIT", first.body.as_str())
    );
    assert_eq!(seen.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn bad_flags_are_refused_with_a_clear_error() {
    for (origin, rules, want) in [
        ("ftp://x", vec!["/=origin"], "only http://"),
        ("not a url", vec!["/=origin"], "not a URL"),
        ("http://127.0.0.1:1", vec!["api=1h"], "must be a path"),
        ("http://127.0.0.1:1", vec!["/api=soon"], "expected a TTL"),
    ] {
        let config = Config {
            rules: rules.into_iter().map(str::to_owned).collect(),
            ..config(origin)
        };
        let error = match app(&config).await {
            Ok(_) => panic!("{origin} {:?}: accepted", config.rules),
            Err(e) => e.to_string(),
        };
        assert!(error.contains(want), "{origin} {:?}: {error}", config.rules);
    }
}

/// The key leaves the host out, so nothing host-dependent reaches the origin: a client's
/// `Host`, `X-Forwarded-Host` and `Forwarded` are not passed on (a cached link built from an
/// attacker's host would reach everyone), nor hop-by-hop fields.
#[tokio::test]
async fn client_host_fields_and_hop_by_hop_fields_never_reach_the_origin() {
    let (origin_url, _) = origin().await;
    let proxy_url = proxy(config(&origin_url)).await;
    let answer = get_with(
        &format!("{proxy_url}/host"),
        &[
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "host=evil.example"),
            ("connection", "x-private-hop"),
            ("x-private-hop", "1"),
        ],
    )
    .await;
    let origin_host = origin_url.trim_start_matches("http://");
    assert_eq!(
        answer.body,
        format!("host={origin_host} x-forwarded-host=- forwarded=- connection-named=-")
    );
}
