//! The consistency contract, tried hard on every store: a read issued after a write's answer
//! never shows what the write replaced, with concurrent writers and readers, across instances,
//! through a paused Redis, a writer that dies during the outage, and a writer restarted over
//! its journal. Every instance is a real `redis-server` client; nothing waits on a hopeful
//! sleep: each test polls for the state it needs (a breaker open or closed, a journal empty).

#![cfg(feature = "redis")]

mod support;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, body::Body, extract::Path, routing::get, routing::post};
use http::{HeaderMap, Request};
use http_body_util::BodyExt;
use larder::{
    CONSISTENCY_HEADER, CacheHandle, MemoryStore, Rule, Store,
    store::{RedisStore, TieredStore},
};
use larder_testkit::{Proxy, RedisCluster, RedisServer};
use support::metrics_app::eventually;
use tower::ServiceExt;

/// The "database": one version per item, shared by every instance of the app.
type Db = Arc<Mutex<HashMap<u32, u64>>>;

/// `GET /item/{id}` (cached 5 min, tag `item:{id}`) answers `v{version}`; `POST /item/{id}`
/// bumps the version and invalidates `item:{id}`, answering the new version.
fn app(cache: &CacheHandle, db: &Db) -> Router {
    let (read_db, write_db) = (Arc::clone(db), Arc::clone(db));
    Router::new()
        .route(
            "/item/{id}",
            get(move |Path(id): Path<u32>| {
                let v = read_db.lock().unwrap().get(&id).copied().unwrap_or(0);
                async move { format!("v{v}") }
            })
            .layer(
                cache.layer(
                    Rule::new("item")
                        .path("/item/{id}")
                        .ttl(Duration::from_secs(300))
                        .tag("item:{id}"),
                ),
            ),
        )
        .route(
            "/item/{id}/write",
            post(move |Path(id): Path<u32>| {
                let mut db = write_db.lock().unwrap();
                let v = db.entry(id).or_insert(0);
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
}

fn handle(store: impl Store) -> CacheHandle {
    CacheHandle::builder(store)
        .x_cache()
        .namespace("c")
        .store_timeout(Duration::from_millis(300))
        .build()
}

async fn redis(url: &str) -> RedisStore {
    RedisStore::builder(url)
        .namespace("c")
        .build()
        .await
        .unwrap()
}

async fn tiered(url: &str) -> TieredStore {
    let store = TieredStore::builder(redis(url).await).build();
    eventually(|| async { store.is_coherent().then_some(()) })
        .await
        .expect("the backplane subscribed");
    store
}

/// One answer: `X-Cache`, `Cache-Status`, body, and the consistency token if any.
struct Answer {
    x: String,
    status: String,
    body: String,
    token: Option<String>,
}

impl Answer {
    fn version(&self) -> u64 {
        self.body.trim_start_matches('v').parse().unwrap()
    }
}

async fn send(app: &Router, method: &str, uri: &str, token: Option<&str>) -> Answer {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header(CONSISTENCY_HEADER, t);
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let h: &HeaderMap = res.headers();
    let text = |name: &str| {
        h.get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (x, status) = (text("x-cache"), text("cache-status"));
    let token = h
        .get(CONSISTENCY_HEADER)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Answer {
        x,
        status,
        body: String::from_utf8(body.to_vec()).unwrap(),
        token,
    }
}

/// What a soak saw.
#[derive(Debug, Default)]
struct Soak {
    pairs: usize,
    hits: usize,
    stale: Vec<String>,
}

/// `clients` concurrent clients, each owning one item: write through `writer`, then read
/// through `reader` (sending the token back when `carry_token`), and read a few times more
/// to make hits; every read must show the client's own last write.
async fn soak(
    writer: &Router,
    reader: &Router,
    clients: u32,
    rounds: usize,
    carry_token: bool,
) -> Soak {
    let mut tasks = Vec::new();
    for id in 0..clients {
        let (writer, reader) = (writer.clone(), reader.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen = Soak::default();
            let mut token: Option<String> = None;
            for round in 0..rounds {
                let uri = format!("/item/{id}");
                // Warm the entry so the write has something to replace.
                send(&reader, "GET", &uri, token.as_deref()).await;
                let wrote = send(&writer, "POST", &format!("{uri}/write"), token.as_deref()).await;
                assert!(
                    wrote.status.contains("detail=invalidated"),
                    "{}",
                    wrote.status
                );
                if wrote.token.is_some() && carry_token {
                    token = wrote.token.clone();
                }
                for _ in 0..3 {
                    let read = send(&reader, "GET", &uri, token.as_deref()).await;
                    seen.pairs += 1;
                    if read.x == "HIT" {
                        seen.hits += 1;
                    }
                    if read.version() < wrote.version() {
                        seen.stale.push(format!(
                            "client {id} round {round}: wrote {} then read {} ({})",
                            wrote.body, read.body, read.status
                        ));
                    }
                }
            }
            seen
        }));
    }
    let mut total = Soak::default();
    for t in tasks {
        let s = t.await.unwrap();
        total.pairs += s.pairs;
        total.hits += s.hits;
        total.stale.extend(s.stale);
    }
    total
}

fn assert_never_stale(store: &str, s: &Soak) {
    eprintln!(
        "{store}: {} reads after writes, {} hits, {} stale",
        s.pairs,
        s.hits,
        s.stale.len()
    );
    assert!(s.stale.is_empty(), "{store}: stale reads: {:#?}", s.stale);
    assert!(
        s.hits > 0,
        "{store}: the soak made no hits, so it tried nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_read_your_writes_soak() {
    let db = Db::default();
    let cache = handle(MemoryStore::default());
    let a = app(&cache, &db);
    let s = soak(&a, &a, 16, 60, true).await;
    assert_never_stale("memory", &s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_two_instances_read_your_writes_soak() {
    let server = RedisServer::start();
    let db = Db::default();
    let a = app(&handle(redis(&server.url()).await), &db);
    let b = app(&handle(redis(&server.url()).await), &db);
    let s = soak(&a, &b, 16, 40, true).await;
    assert_never_stale("redis, write via A, read via B", &s);
}

async fn cluster(urls: Vec<String>) -> RedisStore {
    RedisStore::cluster(urls)
        .namespace("c")
        .build()
        .await
        .unwrap()
}

/// On a Cluster each lookup reads its shard's copy of the clock, which an invalidation raises
/// after ticking the clock on another master: two instances still never read behind a write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_two_instances_read_your_writes_soak() {
    let nodes = RedisCluster::start();
    let db = Db::default();
    let a = app(&handle(cluster(nodes.urls()).await), &db);
    let b = app(&handle(cluster(nodes.urls()).await), &db);
    let s = soak(&a, &b, 16, 30, true).await;
    assert_never_stale("redis cluster, write via A, read via B", &s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_over_a_cluster_two_instances_read_your_writes_soak_with_the_token() {
    let nodes = RedisCluster::start();
    let db = Db::default();
    let mut stores = Vec::new();
    for _ in 0..2 {
        let store = TieredStore::builder(cluster(nodes.urls()).await).build();
        eventually(|| async { store.is_coherent().then_some(()) })
            .await
            .expect("the backplane subscribed");
        stores.push(store);
    }
    let b = app(&handle(stores.pop().unwrap()), &db);
    let a = app(&handle(stores.pop().unwrap()), &db);
    let s = soak(&a, &b, 16, 30, true).await;
    assert_never_stale("tiered over a cluster, write via A, read via B", &s);
}

/// The tiered store's L1 learns of another instance's invalidation a little after the write
/// is answered (here B reaches Redis through a proxy that delays every packet by 3 ms, its
/// backplane included): without the token the same soak sees B answer from behind the write;
/// the client that carries the token never is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_store_two_instances_read_your_writes_soak_with_the_token() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.addr()).await;
    proxy.set_latency(Duration::from_millis(3));
    let db = Db::default();
    let a = app(&handle(tiered(&server.url()).await), &db);
    let b = app(&handle(tiered(&server.url_via(proxy.addr())).await), &db);

    let without = soak(&a, &b, 8, 10, false).await;
    eprintln!(
        "tiered without the token: {} reads after writes, {} stale",
        without.pairs,
        without.stale.len()
    );
    assert!(
        !without.stale.is_empty(),
        "the soak cannot tell: B was never behind A"
    );
    let with = soak(&a, &b, 16, 30, true).await;
    assert_never_stale("tiered, write via A, read via B with the token", &with);
}

/// Waits until `cache` uses its store again (probe answered, recovery purge landed).
async fn until_available(cache: &CacheHandle) {
    eventually(|| async { cache.is_store_available().then_some(()) })
        .await
        .expect("the breaker closed");
}

/// Redis paused; instance A writes (its invalidation is deferred) and then dies before Redis
/// returns; instance B saw the outage (its reads timed out). Before the outage epoch, B went
/// back to serving the entry A's write replaced, until its 5-minute TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_saw_an_outage_never_serves_what_a_write_during_it_replaced() {
    let server = RedisServer::start();
    let db = Db::default();
    let cache_a = handle(redis(&server.url()).await);
    let cache_b = handle(redis(&server.url()).await);
    let (a, b) = (app(&cache_a, &db), app(&cache_b, &db));
    send(&b, "GET", "/item/1", None).await;
    eventually(|| async { (send(&b, "GET", "/item/1", None).await.x == "HIT").then_some(()) })
        .await
        .expect("B hits v0");

    server.pause();
    let wrote = send(&a, "POST", "/item/1/write", None).await;
    assert!(
        wrote.status.contains("detail=invalidation-deferred"),
        "{}",
        wrote.status
    );
    drop((a, cache_a)); // the writer is gone, and its pending invalidation with it
    // B's reads time out until its breaker opens: it saw the outage.
    for reads in 0.. {
        if !cache_b.is_store_available() {
            break;
        }
        assert!(reads < 50, "B's breaker never opened");
        let read = send(&b, "GET", "/item/1", None).await;
        assert_eq!(read.body, "v1", "during the outage B asks the origin");
    }
    server.resume();
    until_available(&cache_b).await;
    let first = send(&b, "GET", "/item/1", None).await;
    assert_eq!(
        first.body, "v1",
        "B served what the write replaced: {}",
        first.status
    );
    let again = eventually(|| async {
        let r = send(&b, "GET", "/item/1", None).await;
        (r.x == "HIT").then_some(r)
    })
    .await
    .expect("hits resume");
    assert_eq!(again.body, "v1");
}

/// The writer restarts during the outage over its journal: the new process does not read
/// Redis until it has purged the namespace, and after that purge no instance (here B, which
/// saw nothing of the outage) serves what the write replaced. The journal is then empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_restarted_during_the_outage_applies_its_journal_before_reading() {
    let server = RedisServer::start();
    let dir = std::env::temp_dir().join(format!("larder-consistency-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let journal = dir.join("pending.jsonl");
    let db = Db::default();
    let journaled = |store: RedisStore| {
        CacheHandle::builder(store)
            .x_cache()
            .namespace("c")
            .store_timeout(Duration::from_millis(300))
            .journal(&journal)
            .build()
    };
    let cache_a = journaled(redis(&server.url()).await);
    let cache_b = handle(redis(&server.url()).await);
    let (a, b) = (app(&cache_a, &db), app(&cache_b, &db));
    send(&b, "GET", "/item/7", None).await;
    eventually(|| async { (send(&b, "GET", "/item/7", None).await.x == "HIT").then_some(()) })
        .await
        .expect("B hits v0");

    server.pause();
    let wrote = send(&a, "POST", "/item/7/write", None).await;
    assert!(wrote.status.contains("invalidation-deferred"));
    let held = std::fs::read_to_string(&journal).unwrap();
    assert!(
        held.contains("item:7"),
        "journaled before the answer: {held:?}"
    );
    drop((a, cache_a));
    server.resume();

    // The restarted writer: its journal keeps it off Redis until the purge has landed.
    let cache_a = journaled(redis(&server.url()).await);
    assert!(
        !cache_a.is_store_available(),
        "a pending journal closes the store"
    );
    let a = app(&cache_a, &db);
    let read = send(&a, "GET", "/item/7", None).await;
    assert_eq!((read.x.as_str(), read.body.as_str()), ("BYPASS", "v1"));
    until_available(&cache_a).await;
    assert_eq!(
        std::fs::read_to_string(&journal).unwrap(),
        "",
        "journal cleared"
    );
    let read = send(&b, "GET", "/item/7", None).await;
    assert_eq!(
        read.body, "v1",
        "B after the journal's purge: {}",
        read.status
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Tiered store, Redis paused: B's L1 holds the entry, A writes and its invalidation cannot
/// be published. A answers only after the L1 lease, and B's L1, which Redis stopped
/// answering, has stopped answering by then. Before the lease, B kept serving its L1 copy
/// for up to two seconds (its ping's period and timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiered_l1_does_not_outlive_a_write_made_while_redis_is_paused() {
    let server = RedisServer::start();
    let db = Db::default();
    let cache_a = handle(tiered(&server.url()).await);
    let cache_b = handle(tiered(&server.url()).await);
    let (a, b) = (app(&cache_a, &db), app(&cache_b, &db));
    send(&b, "GET", "/item/3", None).await;
    eventually(|| async {
        let r = send(&b, "GET", "/item/3", None).await;
        (r.x == "HIT").then_some(())
    })
    .await
    .expect("B hits v0 from its L1");

    server.pause();
    let wrote = send(&a, "POST", "/item/3/write", None).await;
    assert!(
        wrote.status.contains("invalidation-deferred"),
        "{}",
        wrote.status
    );
    let read = send(&b, "GET", "/item/3", None).await;
    assert_eq!(
        read.body, "v1",
        "B's L1 served what the write replaced: {}",
        read.status
    );
    server.resume();
    until_available(&cache_b).await;
    until_available(&cache_a).await;
    let read = send(&b, "GET", "/item/3", None).await;
    assert_eq!(read.body, "v1", "after the outage: {}", read.status);
}

/// The typed API on the tiered store: after an invalidation made from code through A, a read
/// through B with A's token never returns what it hid, though B's L1 hears of it 3 ms late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_reads_with_the_token_see_an_invalidation_made_on_another_instance() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.addr()).await;
    proxy.set_latency(Duration::from_millis(3));
    let a = handle(tiered(&server.url()).await);
    let b = handle(tiered(&server.url_via(proxy.addr())).await);
    let opts = larder::EntryOptions::new(Duration::from_secs(300)).tag("profile:1");
    let (mut behind, mut stale) = (0, 0);
    for round in 0..40u32 {
        let old = format!("old-{round}");
        b.insert("profile:1", &old, &opts, b.read_stamp())
            .await
            .unwrap();
        assert_eq!(
            b.get::<String>("profile:1").await.as_deref(),
            Some(old.as_str())
        );
        a.invalidate_tags(["profile:1"]).await.unwrap();
        let token = a.consistency_token();
        assert!(token.is_some(), "a tiered store hands out a token");
        // Without the token first: B's L1 answers at once, before the message has crossed
        // the proxy; the read with the token then must not.
        if b.get::<String>("profile:1").await.is_some() {
            behind += 1;
        }
        let with_token = b.reading_after(token);
        if with_token.get::<String>("profile:1").await.is_some() {
            stale += 1;
        }
    }
    eprintln!(
        "typed, tiered: without the token B was behind {behind} of 40 times; with it {stale}"
    );
    assert_eq!(
        stale, 0,
        "a read with the token returned what the invalidation hid"
    );
    assert!(behind > 0, "B was never behind: the test cannot tell");
}
