//! Purge and warm by URL: `CacheLayer::key_for`, `CacheLayer::invalidate_request`, `warm`
//! through a whole router, and a worker that only has Redis invalidating for a fleet of
//! tiered instances (`RedisStoreBuilder::publish_invalidations`).

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::{Path, Request},
    http::StatusCode,
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};
use http::request::Parts;
use http_body_util::BodyExt;
use larder::{
    CacheHandle, CacheLayer, MemoryStore, Rule, Rules, UserScope,
    store::{RedisStore, TieredStore},
};
use larder_testkit::RedisServer;
use support::metrics_app::eventually;
use tower::ServiceExt;

/// The user a request is for (`x-user`), checked by a middleware in front of the cache.
#[derive(Clone)]
struct User(String);

async fn auth(mut req: Request, next: Next) -> Response {
    match req.headers().get("x-user").and_then(|v| v.to_str().ok()) {
        Some(u) => {
            let user = User(u.to_owned());
            req.extensions_mut().insert(user);
            next.run(req).await
        }
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}

fn rules() -> Rules {
    Rules::new()
        .route(
            "/items/{id}",
            Rule::new("item")
                .ttl(Duration::from_secs(60))
                .tag("item:{id}"),
        )
        .route(
            "/me",
            Rule::new("me")
                .ttl(Duration::from_secs(60))
                .user_scope(UserScope::from_fn(|p| {
                    p.extensions.get::<User>().map(|u| u.0.clone())
                })),
        )
}

/// The app: `/items/{id}`, `/me` (per user) and `/uncached`, behind `layer` and the auth
/// middleware. Bodies count the origin's calls.
fn app(layer: CacheLayer, calls: &Arc<AtomicUsize>) -> Router {
    let (a, b, c) = (Arc::clone(calls), Arc::clone(calls), Arc::clone(calls));
    Router::new()
        .route(
            "/items/{id}",
            get(move |Path(id): Path<u32>| {
                let n = a.fetch_add(1, Ordering::SeqCst) + 1;
                async move { format!("item {id} #{n}") }
            }),
        )
        .route(
            "/me",
            get(move |req: Request| {
                let n = b.fetch_add(1, Ordering::SeqCst) + 1;
                let user = req.extensions().get::<User>().unwrap().0.clone();
                async move { format!("me {user} #{n}") }
            }),
        )
        .route(
            "/uncached",
            get(move || {
                c.fetch_add(1, Ordering::SeqCst);
                async { "plain" }
            }),
        )
        .layer(layer)
        .layer(axum::middleware::from_fn(auth))
}

fn request(uri: &str, user: &str) -> Request<Body> {
    http::Request::get(uri)
        .header("host", "shop.example")
        .header("x-user", user)
        .body(Body::empty())
        .unwrap()
}

/// The head of a request as the cache sees it: after the middleware named its user.
fn head(uri: &str, user: &str) -> Parts {
    let mut head = request(uri, user).into_parts().0;
    head.extensions.insert(User(user.to_owned()));
    head
}

async fn send(app: &Router, uri: &str, user: &str) -> (String, String) {
    let res = app.clone().oneshot(request(uri, user)).await.unwrap();
    let status = res
        .headers()
        .get("cache-status")
        .map_or(String::new(), |v| v.to_str().unwrap().to_owned());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (String::from_utf8(body.to_vec()).unwrap(), status)
}

async fn stores(server: &RedisServer, ns: &str) -> Vec<(&'static str, CacheHandle)> {
    let redis = RedisStore::builder(server.url())
        .namespace(ns)
        .build()
        .await
        .unwrap();
    vec![
        ("memory", CacheHandle::new(MemoryStore::default())),
        ("redis", CacheHandle::new(redis)),
    ]
}

#[tokio::test]
async fn key_for_names_the_stored_entry_and_invalidate_request_clears_one_url() {
    let server = RedisServer::start();
    for (store, cache) in stores(&server, "purge").await {
        let layer = cache.layer_with(rules());
        let calls = Arc::new(AtomicUsize::new(0));
        let app = app(layer.clone(), &calls);
        for (uri, user) in [
            ("/items/7", "ann"),
            ("/items/8", "ann"),
            ("/me", "ann"),
            ("/me", "bob"),
        ] {
            send(&app, uri, user).await;
        }
        support::landed(&cache, 4).await;

        // The key of a request is the entry's: removing it makes that URL, only, miss.
        let key = layer
            .key_for(&head("/items/7", "ann"))
            .expect("a rule covers it");
        assert_eq!(
            Some(&key),
            layer.key_for(&head("/items/7", "bob")).as_ref(),
            "{store}: not per user"
        );
        let mut other_host = head("/items/7", "ann");
        other_host
            .headers
            .insert("host", "admin.example".parse().unwrap());
        assert_ne!(
            layer.key_for(&other_host),
            Some(key.clone()),
            "{store}: the host is part of it"
        );
        assert_ne!(
            layer.key_for(&head("/me", "ann")),
            layer.key_for(&head("/me", "bob"))
        );
        assert_eq!(layer.key_for(&head("/uncached", "ann")), None);
        cache.invalidate_key(&key).await.unwrap();
        assert!(
            send(&app, "/items/7", "ann").await.1.contains("fwd=miss"),
            "{store}"
        );
        assert!(
            send(&app, "/items/8", "ann").await.1.contains("; hit"),
            "{store}"
        );

        // A URL purge: the next read of that URL misses, for that user only on a per-user route.
        support::landed(&cache, 5).await;
        assert!(
            layer
                .invalidate_request(&head("/items/8", "ann"))
                .await
                .unwrap()
        );
        assert!(
            send(&app, "/items/8", "bob").await.1.contains("fwd=miss"),
            "{store}"
        );
        assert!(layer.invalidate_request(&head("/me", "ann")).await.unwrap());
        assert!(
            send(&app, "/me", "ann").await.1.contains("fwd=miss"),
            "{store}"
        );
        assert!(
            send(&app, "/me", "bob").await.1.contains("; hit"),
            "{store}"
        );
        assert!(
            !layer
                .invalidate_request(&head("/uncached", "ann"))
                .await
                .unwrap()
        );
    }
}

#[tokio::test]
async fn warm_sends_requests_through_the_whole_router_so_clients_then_hit() {
    let server = RedisServer::start();
    for (store, cache) in stores(&server, "warm").await {
        let calls = Arc::new(AtomicUsize::new(0));
        let app = app(cache.layer_with(rules()), &calls);
        let list = || {
            [
                ("/items/1", "ann"),
                ("/items/2", "ann"),
                ("/me", "ann"),
                ("/me", "bob"),
                ("/uncached", "ann"),
            ]
            .map(|(uri, user)| request(uri, user))
        };
        let report = larder::warm(app.clone(), list(), 3).await;
        assert_eq!((report.stored, report.hits), (4, 0), "{store}: {report:?}");
        assert_eq!(report.not_stored.len(), 1, "{store}: {report:?}");
        assert_eq!(report.not_stored[0].1, "larder; fwd=bypass; detail=no-rule");
        assert!(report.failed.is_empty());
        support::landed(&cache, 4).await;
        let origin = calls.load(Ordering::SeqCst);
        for (uri, user) in [
            ("/items/1", "ann"),
            ("/items/2", "bob"),
            ("/me", "ann"),
            ("/me", "bob"),
        ] {
            let (body, status) = send(&app, uri, user).await;
            assert!(
                status.contains("; hit"),
                "{store}: {uri} for {user}: {status}"
            );
            if uri == "/me" {
                assert!(body.starts_with(&format!("me {user} ")), "{store}: {body}");
            }
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            origin,
            "{store}: the clients asked nothing"
        );
        let again = larder::warm(app.clone(), list(), 3).await;
        assert_eq!((again.stored, again.hits), (0, 4), "{store}: {again:?}");
        // A request the middleware rejects is reported with its status.
        let anonymous = http::Request::get("/items/1").body(Body::empty()).unwrap();
        let report = larder::warm(app, [anonymous], 1).await;
        assert_eq!(report.not_stored[0].1, "401 Unauthorized");
    }
}

/// A fleet runs the tiered store; a worker with only a Redis store (the same namespaces)
/// invalidates a tag: with `publish_invalidations`, every instance's L1 hears of it and the
/// next reads miss.
#[tokio::test]
async fn a_worker_with_only_redis_invalidates_for_a_tiered_fleet() {
    let server = RedisServer::start();
    let tiered = || async {
        let l2 = RedisStore::builder(server.url())
            .namespace("fleet")
            .build()
            .await
            .unwrap();
        let store = support::coherent(TieredStore::builder(l2).build()).await;
        CacheHandle::builder(store).namespace("shop").build()
    };
    let (a, b) = (tiered().await, tiered().await);
    let worker = RedisStore::builder(server.url())
        .namespace("fleet")
        .publish_invalidations()
        .build()
        .await
        .unwrap();
    let worker = CacheHandle::builder(worker).namespace("shop").build();
    let calls = Arc::new(AtomicUsize::new(0));
    let (app_a, app_b) = (
        app(a.layer_with(rules()), &calls),
        app(b.layer_with(rules()), &calls),
    );
    send(&app_a, "/items/5", "ann").await;
    support::landed(&a, 1).await;
    // Both instances now hold it in their L1.
    for app in [&app_a, &app_b] {
        eventually(|| async {
            send(app, "/items/5", "ann")
                .await
                .1
                .contains("; hit")
                .then_some(())
        })
        .await
        .expect("a hit");
        assert!(send(app, "/items/5", "ann").await.1.contains("; hit"));
    }
    worker.invalidate_tags(["item:5"]).await.unwrap();
    for (name, app) in [("a", &app_a), ("b", &app_b)] {
        eventually(|| async {
            send(app, "/items/5", "ann")
                .await
                .1
                .contains("fwd=miss")
                .then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("instance {name} never heard of the worker's invalidation"));
    }
}
