//! Who may share an entry: requests with `Authorization` or `Cookie` on a shared rule, on a
//! rule with neither a user scope nor `shared` (RFC 9111 §3.5: only `public` or `s-maxage`
//! responses are shared), concurrently with anonymous callers, on every store.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, body::Body, http::HeaderMap, routing::get};
use http::{Request, header};
use http_body_util::BodyExt;
use larder::{
    CacheHandle, MemoryStore, Rule,
    store::{RedisStore, TieredStore},
};
use larder_testkit::RedisServer;
use support::metrics_app::eventually;
use tower::ServiceExt;

/// Who a request is from, as the origin sees it.
fn caller(headers: &HeaderMap) -> String {
    for name in [header::AUTHORIZATION, header::COOKIE] {
        if let Some(v) = headers.get(&name) {
            return v.to_str().unwrap().to_owned();
        }
    }
    "anonymous".to_owned()
}

/// A route that answers `caller:N` with `cache_control`, after `delay`, counting its calls.
fn route_app(
    cache: &CacheHandle,
    rule: Rule,
    cache_control: &'static str,
    delay: Duration,
) -> (Router, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let handler = move |headers: HeaderMap| {
        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            tokio::time::sleep(delay).await;
            (
                [(header::CACHE_CONTROL, cache_control)],
                format!("{}:{n}", caller(&headers)),
            )
        }
    };
    let router = Router::new().route("/page", get(handler).layer(cache.layer(rule)));
    (router, calls)
}

#[derive(Clone, Copy)]
enum Who {
    Anonymous,
    Bearer(u32),
    Cookie(u32),
}

fn request(who: Who) -> Request<Body> {
    request_to("/page", who)
}

fn request_to(uri: &str, who: Who) -> Request<Body> {
    let b = Request::get(uri);
    let b = match who {
        Who::Anonymous => b,
        Who::Bearer(u) => b.header(header::AUTHORIZATION, format!("Bearer user-{u}")),
        Who::Cookie(u) => b.header(header::COOKIE, format!("sid=user-{u}")),
    };
    b.body(Body::empty()).unwrap()
}

/// The body and `Cache-Status` of one request to `/page`.
async fn send(app: &Router, who: Who) -> (String, String) {
    send_to(app, "/page", who).await
}

/// The body and `Cache-Status` of one request to `uri`.
async fn send_to(app: &Router, uri: &str, who: Who) -> (String, String) {
    let res = app.clone().oneshot(request_to(uri, who)).await.unwrap();
    let status = res.headers()["cache-status"].to_str().unwrap().to_owned();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (String::from_utf8(body.to_vec()).unwrap(), status)
}

/// Sends until the answer is a hit (a network store writes after the response is sent).
async fn until_hit(app: &Router, uri: &str, who: Who) -> String {
    eventually(|| async {
        let (body, status) = send_to(app, uri, who).await;
        status.contains("; hit").then_some(body)
    })
    .await
    .expect("the entry became a hit")
}

/// Waits until `n` entries of rule `name` have landed in the store (a network store writes
/// after the response is sent).
async fn landed(cache: &CacheHandle, name: &str, n: u64) {
    eventually(|| async {
        let stored = cache.stats().routes.get(name).map_or(0, |r| r.stored);
        (stored >= n).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("{n} entries of {name} did not land"));
}

/// Each store the rules are checked on: memory, Redis, tiered over Redis.
async fn stores(server: &RedisServer, ns: &str) -> Vec<(&'static str, CacheHandle)> {
    let redis = |ns: String| async move {
        RedisStore::builder(server.url())
            .namespace(ns)
            .build()
            .await
            .unwrap()
    };
    let tiered =
        support::coherent(TieredStore::builder(redis(format!("{ns}-t")).await).build()).await;
    vec![
        (
            "memory",
            CacheHandle::builder(MemoryStore::default()).build(),
        ),
        (
            "redis",
            CacheHandle::builder(redis(format!("{ns}-r")).await).build(),
        ),
        ("tiered", CacheHandle::builder(tiered).build()),
    ]
}

fn rule() -> Rule {
    Rule::new("page").ttl(Duration::from_secs(60))
}

/// A shared rule: anonymous, bearer and cookie callers share one entry; the origin is asked
/// once. A `private` answer is never stored, so never shared.
#[tokio::test]
async fn a_shared_rule_serves_one_entry_to_anonymous_bearer_and_cookie_callers() {
    let server = RedisServer::start();
    for (store, cache) in stores(&server, "shared").await {
        let (app, calls) = route_app(&cache, rule().shared(), "max-age=60", Duration::ZERO);
        let (first, status) = send(&app, Who::Bearer(1)).await;
        assert_eq!(first, "Bearer user-1:1", "{store}");
        assert!(status.contains("stored"), "{store}: {status}");
        landed(&cache, "page", 1).await;
        for who in [Who::Anonymous, Who::Cookie(2), Who::Bearer(3)] {
            assert_eq!(until_hit(&app, "/page", who).await, first, "{store}");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{store}: one origin call");

        let (app, calls) = app_private(&cache);
        for who in [
            Who::Cookie(1),
            Who::Cookie(2),
            Who::Anonymous,
            Who::Cookie(1),
        ] {
            let (body, status) = send_to(&app, "/page?private", who).await;
            assert!(body.starts_with(&caller_of(who)), "{store}: {body}");
            assert_eq!(status, "larder; fwd=miss; detail=private", "{store}");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 4, "{store}");
    }
}

fn app_private(cache: &CacheHandle) -> (Router, Arc<AtomicUsize>) {
    route_app(
        cache,
        Rule::new("private").ttl(Duration::from_secs(60)).shared(),
        "private",
        Duration::ZERO,
    )
}

fn caller_of(who: Who) -> String {
    caller(request(who).headers())
}

/// Without `shared` or a user scope: an anonymous entry that does not say `public` never
/// answers a caller with credentials, whose own answer is not stored; a `public` answer to a
/// caller with credentials is stored and serves everyone.
#[tokio::test]
async fn without_shared_only_public_responses_cross_between_callers() {
    let server = RedisServer::start();
    for (store, cache) in stores(&server, "plain").await {
        let (app, _) = route_app(&cache, rule(), "max-age=60", Duration::ZERO);
        assert_eq!(send(&app, Who::Anonymous).await.0, "anonymous:1");
        landed(&cache, "page", 1).await;
        assert_eq!(
            until_hit(&app, "/page", Who::Anonymous).await,
            "anonymous:1",
            "{store}"
        );
        for (n, who) in [Who::Bearer(1), Who::Cookie(2), Who::Bearer(1)]
            .into_iter()
            .enumerate()
        {
            let (body, status) = send(&app, who).await;
            assert_eq!(body, format!("{}:{}", caller_of(who), n + 2), "{store}");
            assert_eq!(status, "larder; fwd=miss; detail=credentials", "{store}");
        }
        // The anonymous entry is still there, untouched by the callers with credentials.
        assert_eq!(send(&app, Who::Anonymous).await.0, "anonymous:1", "{store}");

        let (app, calls) = route_app(
            &cache,
            Rule::new("public").ttl(Duration::from_secs(60)),
            "public, max-age=60",
            Duration::ZERO,
        );
        let (first, status) = send_to(&app, "/page?public", Who::Cookie(1)).await;
        assert!(status.contains("stored"), "{store}: {status}");
        landed(&cache, "public", 1).await;
        for who in [Who::Anonymous, Who::Bearer(2), Who::Cookie(3)] {
            assert_eq!(until_hit(&app, "/page?public", who).await, first, "{store}");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{store}");
    }
}

/// Concurrency: callers with credentials and anonymous ones ask a cold key at once, on a
/// slow origin, many rounds. An anonymous caller is only ever answered an anonymous body
/// (never one made for a caller with credentials, which neither leads nor follows the
/// anonymous flight), and a caller with credentials only its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_never_receive_each_others_answers() {
    let server = RedisServer::start();
    for (store, cache) in stores(&server, "race").await {
        for round in 0..10 {
            // A query of its own per round: every round starts cold.
            let (app, _) = route_app(&cache, rule(), "max-age=60", Duration::from_millis(30));
            let mut tasks = Vec::new();
            for i in 0..12u32 {
                let who = match i % 3 {
                    0 => Who::Anonymous,
                    1 => Who::Bearer(i),
                    _ => Who::Cookie(i),
                };
                let app = app.clone();
                tasks.push(tokio::spawn(async move {
                    let mut req = request(who);
                    *req.uri_mut() = format!("/page?round={round}").parse().unwrap();
                    let res = app.oneshot(req).await.unwrap();
                    let body = res.into_body().collect().await.unwrap().to_bytes();
                    (who, String::from_utf8(body.to_vec()).unwrap())
                }));
            }
            for task in tasks {
                let (who, body) = task.await.unwrap();
                let expected = caller_of(who);
                assert_eq!(
                    body.rsplit_once(':').unwrap().0,
                    expected,
                    "{store} round {round}: {expected} was answered {body}"
                );
            }
        }
    }
}
