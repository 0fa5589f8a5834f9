//! Per-request control: `Rule::bypass_if`, `Rule::refresh_if` and the application's own key
//! parts (`KeyOptions::part`, `Rule::key_part`), on the memory and Redis stores.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, body::Body, extract::Request, middleware::Next, routing::get};
use http::HeaderMap;
use http_body_util::BodyExt;
use larder::{CacheHandle, MemoryStore, Rule, store::RedisStore};
use larder_testkit::RedisServer;
use support::metrics_app::eventually;
use tower::ServiceExt;

/// The tenant a middleware in front of the cache found (from `x-tenant`).
#[derive(Clone)]
struct Tenant(String);

async fn tenant(mut req: Request, next: Next) -> axum::response::Response {
    if let Some(t) = req.headers().get("x-tenant").and_then(|v| v.to_str().ok()) {
        let t = Tenant(t.to_owned());
        req.extensions_mut().insert(t);
    }
    next.run(req).await
}

/// `/r` answers `tenant:N` (N counts the origin's calls), behind `rule` and the tenant
/// middleware.
fn app(cache: &CacheHandle, rule: Rule) -> (Router, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let handler = move |req: Request| {
        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
        let who = req
            .extensions()
            .get::<Tenant>()
            .map_or("none".to_owned(), |t| t.0.clone());
        async move { format!("{who}:{n}") }
    };
    let router = Router::new()
        .route("/r", get(handler).layer(cache.layer(rule)))
        .layer(axum::middleware::from_fn(tenant));
    (router, calls)
}

async fn send(app: &Router, headers: &[(&str, &str)]) -> (String, String) {
    let mut req = http::Request::get("/r");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = cache_status(res.headers());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (String::from_utf8(body.to_vec()).unwrap(), status)
}

fn cache_status(h: &HeaderMap) -> String {
    h["cache-status"].to_str().unwrap().to_owned()
}

/// Sends until a hit answers (a network store writes after the response is sent).
async fn hit(app: &Router, headers: &[(&str, &str)]) -> String {
    eventually(|| async {
        let (body, status) = send(app, headers).await;
        status.contains("; hit").then_some(body)
    })
    .await
    .expect("a hit")
}

async fn stores(server: &RedisServer, ns: &str) -> Vec<(&'static str, CacheHandle)> {
    let redis = RedisStore::builder(server.url())
        .namespace(ns)
        .build()
        .await
        .unwrap();
    vec![
        (
            "memory",
            CacheHandle::builder(MemoryStore::default()).build(),
        ),
        ("redis", CacheHandle::builder(redis).build()),
    ]
}

fn rule() -> Rule {
    Rule::new("r").ttl(Duration::from_secs(60))
}

#[tokio::test]
async fn bypass_if_sends_matching_reads_to_the_service_and_leaves_the_entry_alone() {
    let server = RedisServer::start();
    for (store, cache) in stores(&server, "bypass").await {
        let rule = rule().bypass_if(|req| req.headers.contains_key("x-preview"));
        let (app, calls) = app(&cache, rule);
        assert_eq!(send(&app, &[]).await.0, "none:1");
        assert_eq!(hit(&app, &[]).await, "none:1", "{store}");
        let before = calls.load(Ordering::SeqCst);
        for i in 1..=3 {
            let (body, status) = send(&app, &[("x-preview", "1")]).await;
            assert_eq!(body, format!("none:{}", before + i), "{store}");
            assert_eq!(status, "larder; fwd=bypass; detail=bypass-if", "{store}");
        }
        // The previews neither replaced nor removed the entry.
        let (body, status) = send(&app, &[]).await;
        assert_eq!(
            (body.as_str(), status.contains("; hit")),
            ("none:1", true),
            "{store}"
        );
    }
}

#[tokio::test]
async fn refresh_if_replaces_the_entry_for_everyone_without_honouring_every_reload() {
    let server = RedisServer::start();
    for (store, cache) in stores(&server, "refresh").await {
        let rule = rule().refresh_if(|req| req.headers.contains_key("x-admin-refresh"));
        let (app, calls) = app(&cache, rule);
        assert_eq!(send(&app, &[]).await.0, "none:1");
        assert_eq!(hit(&app, &[]).await, "none:1", "{store}");
        // An ordinary client's reload is not honoured (the handle does not say so).
        let (body, status) = send(&app, &[("cache-control", "no-cache")]).await;
        assert_eq!(body, "none:1", "{store}: {status}");
        // The admin's is: the service is asked, and its answer is the entry from now on.
        let (body, status) = send(&app, &[("x-admin-refresh", "1")]).await;
        assert_eq!(body, "none:2", "{store}");
        assert_eq!(status, "larder; fwd=request; stored", "{store}");
        // A network store writes after the response is sent: the old entry answers until then.
        support::landed(&cache, 2).await;
        assert_eq!(hit(&app, &[]).await, "none:2", "{store}");
        assert_eq!(calls.load(Ordering::SeqCst), 2, "{store}");
    }
}

#[tokio::test]
async fn a_key_part_keeps_each_tenant_apart() {
    let server = RedisServer::start();
    for (store, cache) in stores(&server, "tenant").await {
        let rule = rule().key_part("tenant", |req| {
            req.extensions.get::<Tenant>().map(|t| t.0.clone())
        });
        let (app, calls) = app(&cache, rule);
        let (a, b) = ([("x-tenant", "acme")], [("x-tenant", "globex")]);
        assert_eq!(send(&app, &a).await.0, "acme:1", "{store}");
        assert_eq!(hit(&app, &a).await, "acme:1", "{store}");
        assert_eq!(send(&app, &b).await.0, "globex:2", "{store}");
        assert_eq!(hit(&app, &b).await, "globex:2", "{store}");
        // No tenant is a value of its own.
        assert_eq!(send(&app, &[]).await.0, "none:3", "{store}");
        assert_eq!(hit(&app, &[]).await, "none:3", "{store}");
        assert_eq!(hit(&app, &a).await, "acme:1", "{store}");
        assert_eq!(calls.load(Ordering::SeqCst), 3, "{store}");

        // A part set before `key(...)` is kept by it.
        let rule = Rule::new("r2")
            .ttl(Duration::from_secs(60))
            .key_part("tenant", |req| {
                req.extensions.get::<Tenant>().map(|t| t.0.clone())
            })
            .key(larder::KeyOptions::new().ignore_authority());
        // On a cache of its own, so that no entry of the rule above answers.
        let fresh = CacheHandle::new(MemoryStore::default());
        let (app, _) = crate::app(&fresh, rule);
        assert_eq!(send(&app, &a).await.0, "acme:1", "{store}");
        assert_eq!(send(&app, &b).await.0, "globex:2", "{store}: still apart");
    }
}
