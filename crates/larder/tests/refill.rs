//! Refill after a write ([`Rule::refill_after_write`]): the entries a write invalidated that
//! clients read recently are asked again in the background, so the next read is a hit; the
//! refill starts after the invalidation (it can only store what the write left), shares the
//! flight with clients' reads, replays a user's request with that user's credentials from
//! process memory only, and is bounded.

#![cfg(feature = "redis")]

mod support;

use std::{
    collections::HashMap,
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
    routing::{get, post},
};
use http::{HeaderMap, Request, header::AUTHORIZATION};
use http_body_util::BodyExt;
use larder::{
    CONSISTENCY_HEADER, CacheHandle, MemoryStore, Rule, Store, UserScope,
    store::{RedisStore, TieredStore},
};
use larder_testkit::RedisServer;
use support::metrics_app::eventually;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// The "database": one version per item, and the origin calls made.
#[derive(Clone, Default)]
struct Db {
    versions: Arc<Mutex<HashMap<u32, u64>>>,
    /// Origin calls of `/item/{id}` that started, and that read the version.
    entered: Arc<AtomicUsize>,
    reads: Arc<AtomicUsize>,
    /// When set, a call waits for a permit before it reads the version, or after.
    before: Arc<Mutex<Option<Arc<Semaphore>>>>,
    after: Arc<Mutex<Option<Arc<Semaphore>>>>,
}

async fn pass(gate: &Mutex<Option<Arc<Semaphore>>>) {
    let gate = gate.lock().unwrap().clone();
    if let Some(gate) = gate {
        gate.acquire().await.unwrap().forget();
    }
}

fn gate(at: &Mutex<Option<Arc<Semaphore>>>) -> Arc<Semaphore> {
    let gate = Arc::new(Semaphore::new(0));
    *at.lock().unwrap() = Some(Arc::clone(&gate));
    gate
}

/// `GET /item/{id}` (refilled after writes, tag `item:{id}`) answers `v{version}`; `POST
/// /item/{id}/write` bumps the version and invalidates `item:{id}`. `GET /me` answers the
/// caller's name (per user, tag `user:{name}`); `POST /me/write` invalidates the caller's tag.
fn app(cache: &CacheHandle, db: &Db) -> Router {
    let (read, write) = (db.clone(), db.clone());
    let me_reads = db.reads.clone();
    Router::new()
        .route(
            "/item/{id}",
            get(move |Path(id): Path<u32>| {
                let db = read.clone();
                async move {
                    db.entered.fetch_add(1, Ordering::SeqCst);
                    pass(&db.before).await;
                    let v = db.versions.lock().unwrap().get(&id).copied().unwrap_or(0);
                    db.reads.fetch_add(1, Ordering::SeqCst);
                    pass(&db.after).await;
                    format!("v{v}")
                }
            })
            .layer(
                cache.layer(
                    Rule::new("item")
                        .path("/item/{id}")
                        .ttl(Duration::from_secs(300))
                        .tag("item:{id}")
                        .refill_after_write(),
                ),
            ),
        )
        .route(
            "/item/{id}/write",
            post(move |Path(id): Path<u32>| {
                let mut versions = write.versions.lock().unwrap();
                let v = versions.entry(id).or_insert(0);
                *v += 1;
                let v = *v;
                async move { format!("v{v}") }
            })
            .layer(
                cache.layer(
                    Rule::new("item_write")
                        .path("/item/{id}/write")
                        .invalidates(["item:{id}"]),
                ),
            ),
        )
        .route(
            "/me",
            get(move |headers: HeaderMap| {
                me_reads.fetch_add(1, Ordering::SeqCst);
                let user = user_of(&headers).to_owned();
                async move { format!("hello {user}") }
            })
            .layer(
                cache.layer(
                    Rule::new("me")
                        .path("/me")
                        .ttl(Duration::from_secs(300))
                        .user_scope(UserScope::from_fn(|parts| {
                            Some(user_of(&parts.headers).to_owned())
                        }))
                        .tag("user:{user}")
                        .refill_after_write(),
                ),
            ),
        )
        .route(
            "/me/write",
            post(|| async { "ok" }).layer(
                cache.layer(
                    Rule::new("me_write")
                        .path("/me/write")
                        .user_scope(UserScope::from_fn(|parts| {
                            Some(user_of(&parts.headers).to_owned())
                        }))
                        .invalidates(["user:{user}"]),
                ),
            ),
        )
}

/// The user a bearer token names (`Bearer token-of-<user>`).
fn user_of(headers: &HeaderMap) -> &str {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer token-of-"))
        .unwrap_or("nobody")
}

fn handle(store: impl Store) -> CacheHandle {
    CacheHandle::builder(store).x_cache().namespace("r").build()
}

struct Answer {
    x: String,
    body: String,
    token: Option<String>,
}

async fn send(app: &Router, method: &str, uri: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let x = res
        .headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let token = res
        .headers()
        .get(CONSISTENCY_HEADER)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Answer {
        x,
        body: String::from_utf8(body.to_vec()).unwrap(),
        token,
    }
}

/// Waits until `n` refills have completed.
async fn refilled(cache: &CacheHandle, n: u64) {
    eventually(|| async { (cache.stats().refills.done >= n).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("{n} refills did not complete: {:?}", cache.stats().refills));
}

async fn stores() -> (RedisServer, Vec<(&'static str, CacheHandle)>) {
    let server = RedisServer::start();
    let redis = RedisStore::builder(server.url())
        .namespace("r")
        .build()
        .await
        .unwrap();
    let tiered = TieredStore::builder(
        RedisStore::builder(server.url())
            .namespace("r2")
            .build()
            .await
            .unwrap(),
    )
    .build();
    eventually(|| async { tiered.is_coherent().then_some(()) })
        .await
        .expect("the backplane subscribed");
    let caches = vec![
        ("memory", handle(MemoryStore::default())),
        ("redis", handle(redis)),
        ("tiered", handle(tiered)),
    ];
    (server, caches)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refills_what_clients_read_so_the_next_read_is_a_fresh_hit() {
    let (_server, caches) = stores().await;
    for (name, cache) in caches {
        let db = Db::default();
        let app = app(&cache, &db);
        assert_eq!(send(&app, "GET", "/item/1", &[]).await.x, "MISS", "{name}");
        assert_eq!(send(&app, "GET", "/item/1", &[]).await.x, "HIT", "{name}");
        // Never read: nothing to refill.
        let wrote = send(&app, "POST", "/item/1/write", &[]).await;
        assert_eq!(wrote.body, "v1");
        refilled(&cache, 1).await;
        let read = send(&app, "GET", "/item/1", &[]).await;
        assert_eq!(
            (read.x.as_str(), read.body.as_str()),
            ("HIT", "v1"),
            "{name}: the refill stored what the write left"
        );
        assert_eq!(
            db.reads.load(Ordering::SeqCst),
            2,
            "{name}: one fill, one refill"
        );
        let stats = cache.stats();
        assert_eq!(stats.refills.failed + stats.refills.dropped, 0, "{name}");
        // An item nobody read is not refilled.
        send(&app, "POST", "/item/2/write", &[]).await;
        assert_eq!(cache.stats().refills.done, 1, "{name}");
    }
}

/// Clients' reads while the refill's origin call is in flight join it (one origin call), and
/// what a refill read before a later write is never served after that write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refill_shares_its_flight_and_never_stores_over_a_later_write() {
    let (_server, caches) = stores().await;
    let mut collapsed = 0;
    for (name, cache) in caches {
        let db = Db::default();
        let arrived = Arc::new(AtomicUsize::new(0));
        let app = {
            let arrived = Arc::clone(&arrived);
            app(&cache, &db).layer(tower::layer::layer_fn(move |svc| {
                let arrived = Arc::clone(&arrived);
                tower::util::MapRequest::new(svc, move |req: Request<Body>| {
                    arrived.fetch_add(1, Ordering::SeqCst);
                    req
                })
            }))
        };
        send(&app, "GET", "/item/1", &[]).await;
        let before = gate(&db.before);
        send(&app, "POST", "/item/1/write", &[]).await;
        // The refill is held in the origin, before it reads the database.
        eventually(|| async { (db.entered.load(Ordering::SeqCst) == 2).then_some(()) })
            .await
            .unwrap_or_else(|| panic!("{name}: no refill"));
        let sent = arrived.load(Ordering::SeqCst);
        let readers: Vec<_> = (0..10)
            .map(|_| {
                let app = app.clone();
                tokio::spawn(async move {
                    let res = app
                        .oneshot(Request::get("/item/1").body(Body::empty()).unwrap())
                        .await
                        .unwrap();
                    let status = res.headers()["cache-status"].to_str().unwrap().to_owned();
                    let body = res.into_body().collect().await.unwrap().to_bytes();
                    (status, body)
                })
            })
            .collect();
        eventually(|| async { (arrived.load(Ordering::SeqCst) == sent + 10).then_some(()) })
            .await
            .unwrap();
        // Enough for every reader too: one that did not join would call the origin itself.
        before.add_permits(100);
        for reader in readers {
            let (status, body) = reader.await.unwrap();
            assert_eq!(body, "v1", "{name}");
            // Joined the flight, or (a network store's lookup still on its way when the
            // refill landed) read what it stored: either way, no call of its own.
            assert!(
                status.contains("collapsed") || status.contains("hit"),
                "{name}: {status}"
            );
            collapsed += usize::from(status.contains("collapsed"));
        }
        refilled(&cache, 1).await;
        assert_eq!(
            db.reads.load(Ordering::SeqCst),
            2,
            "{name}: fill + one shared refill"
        );

        // Write 2's refill reads v2, then is held; write 3 lands; then write 2's refill stores
        // v2. A read after write 3 must not see it.
        let after = gate(&db.after);
        send(&app, "POST", "/item/1/write", &[]).await;
        eventually(|| async { (db.reads.load(Ordering::SeqCst) == 3).then_some(()) })
            .await
            .unwrap_or_else(|| panic!("{name}: no refill after write 2"));
        let before = gate(&db.before);
        let wrote = send(&app, "POST", "/item/1/write", &[]).await;
        assert_eq!(wrote.body, "v3");
        after.add_permits(1);
        refilled(&cache, 2).await;
        // Write 3's refill waited for that older flight instead of sharing it; now it leads.
        eventually(|| async { (db.entered.load(Ordering::SeqCst) == 4).then_some(()) })
            .await
            .unwrap_or_else(|| panic!("{name}: no refill after write 3"));
        let token = wrote.token.clone().unwrap_or_default();
        let reader = {
            let app = app.clone();
            tokio::spawn(async move {
                send(
                    &app,
                    "GET",
                    "/item/1",
                    &[(CONSISTENCY_HEADER.as_str(), &token)],
                )
                .await
            })
        };
        before.add_permits(100);
        after.add_permits(100);
        let read = reader.await.unwrap();
        assert_eq!(
            read.body, "v3",
            "{name}: a refill stored over a later write"
        );
        refilled(&cache, 3).await;
    }
    assert!(collapsed > 0, "no reader joined a refill's flight");
}

/// Two users read their own page; a write of user a refills a's page with a's credentials
/// (a reads "hello a" as a hit), leaves b's alone, and nothing of the request reaches Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_page_is_refilled_as_that_user_and_no_credential_reaches_redis() {
    let (server, caches) = stores().await;
    for (name, cache) in caches {
        let db = Db::default();
        let app = app(&cache, &db);
        let (a, b) = (
            [("authorization", "Bearer token-of-a")],
            [("authorization", "Bearer token-of-b")],
        );
        assert_eq!(send(&app, "GET", "/me", &a).await.body, "hello a");
        assert_eq!(send(&app, "GET", "/me", &b).await.body, "hello b");
        let before = db.reads.load(Ordering::SeqCst);
        send(&app, "POST", "/me/write", &a).await;
        refilled(&cache, 1).await;
        assert_eq!(
            db.reads.load(Ordering::SeqCst),
            before + 1,
            "{name}: a's page only"
        );
        let read = send(&app, "GET", "/me", &a).await;
        assert_eq!(
            (read.x.as_str(), read.body.as_str()),
            ("HIT", "hello a"),
            "{name}"
        );
        let read = send(&app, "GET", "/me", &b).await;
        assert_eq!(
            (read.x.as_str(), read.body.as_str()),
            ("HIT", "hello b"),
            "{name}"
        );
    }
    let dump = server.cli(&["--scan"]);
    for key in dump.lines().filter(|k| !k.is_empty()) {
        let value = server.cli(&["GET", key]);
        assert!(
            !value.contains("token-of-") && !key.contains("token-of-"),
            "a credential reached Redis under {key}"
        );
    }
}

/// At most `per_second` refills start for one write; the others are dropped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refills_are_bounded_by_their_rate() {
    let cache = CacheHandle::builder(MemoryStore::default())
        .x_cache()
        .refill_limits(3, 1)
        .build();
    let app = Router::new().route(
        "/item/{id}",
        get(move |Path(id): Path<u32>| async move { format!("item {id}") }).layer(
            cache.layer(
                Rule::new("item")
                    .path("/item/{id}")
                    .ttl(Duration::from_secs(300))
                    .tag("all")
                    .refill_after_write(),
            ),
        ),
    );
    for i in 0..10 {
        send(&app, "GET", &format!("/item/{i}"), &[]).await;
    }
    cache.invalidate_tags(["all"]).await.unwrap();
    let counted = eventually(|| async {
        let r = cache.stats().refills;
        (r.done + r.dropped == 10).then_some(r)
    })
    .await
    .unwrap_or_else(|| panic!("{:?}", cache.stats().refills));
    assert_eq!((counted.done, counted.dropped), (3, 7), "{counted:?}");
    let hits = futures_hits(&app, 10).await;
    assert_eq!(hits, 3, "the three refilled items hit, the others miss");
}

async fn futures_hits(app: &Router, n: u32) -> usize {
    let mut hits = 0;
    for i in 0..n {
        if send(app, "GET", &format!("/item/{i}"), &[]).await.x == "HIT" {
            hits += 1;
        }
    }
    hits
}
