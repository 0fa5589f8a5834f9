//! The Redis store over `rediss://` against real TLS redis-server processes (certificates from
//! a throwaway CA made by the test kit).

#![cfg(feature = "redis-tls")]

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use http::StatusCode;
use larder::{
    EntryOptions,
    store::{Entries, RedisStore, TieredStore},
};
use larder_testkit::{Proxy, RedisServer};
use support::metrics_app::{app, eventually, get_once, handle};

/// A TLS server's `rediss://` URL and the PEM of its CA.
fn tls_of(redis: &RedisServer) -> (String, Vec<u8>) {
    (
        redis.tls_url().expect("a TLS server"),
        redis.ca_cert_pem().expect("a TLS server").to_vec(),
    )
}

async fn store(url: &str, ca: &[u8]) -> RedisStore {
    RedisStore::builder(url)
        .namespace("t")
        .tls_root_certificate(ca)
        .build()
        .await
        .unwrap()
}

/// Waits until Redis holds `n` entries of namespace `t` (writes do not hold up responses).
async fn entries_stored(redis: &RedisServer, n: usize) {
    let found = eventually(|| async {
        let keys = redis.cli(&["KEYS", "t:e:*"]);
        (keys.lines().count() >= n).then_some(())
    })
    .await;
    assert!(found.is_some(), "{n} entries were never written to Redis");
}

async fn coherent(store: TieredStore) -> TieredStore {
    let ready = eventually(|| async { store.is_coherent().then_some(()) }).await;
    assert!(ready.is_some(), "the backplane never subscribed over TLS");
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_then_a_hit_then_a_tag_invalidation_over_tls() {
    let redis = RedisServer::builder().tls().start();
    let (url, ca) = tls_of(&redis);
    assert!(url.starts_with("rediss://"), "{url}");
    let cache = handle(store(&url, &ca).await);
    let calls = Arc::new(AtomicUsize::new(0));
    let app = app(&cache, &calls);

    let (status, x, cache_status, body) = get_once(&app, "/api/metrics/finance").await;
    assert_eq!((status, x.as_str()), (StatusCode::OK, "MISS"));
    assert!(cache_status.contains("fwd=miss"), "{cache_status}");
    assert_eq!(body, "{\"revenue\":42,\"n\":0}");
    entries_stored(&redis, 1).await;

    let (status, x, cache_status, body) = get_once(&app, "/api/metrics/finance").await;
    assert_eq!((status, x.as_str()), (StatusCode::OK, "HIT"));
    assert!(cache_status.starts_with("larder; hit"), "{cache_status}");
    assert_eq!(
        body, "{\"revenue\":42,\"n\":0}",
        "served from Redis over TLS"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    cache.invalidate_tags(["metrics"]).await.unwrap();
    let (_, x, _, body) = get_once(&app, "/api/metrics/finance").await;
    assert_eq!(x, "MISS", "the tag invalidation went through");
    assert_eq!(body, "{\"revenue\":42,\"n\":1}");
    assert_eq!(cache.stats().total.errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiered_store_over_tls_sends_invalidations_to_every_l1() {
    let redis = RedisServer::builder().tls().start();
    let (url, ca) = tls_of(&redis);
    // B reaches the TLS port through a byte-counting TCP proxy (TLS runs end to end through
    // it, and the certificate's 127.0.0.1 still matches).
    let proxy = Proxy::start(
        format!("127.0.0.1:{}", redis.tls_port().unwrap())
            .parse()
            .unwrap(),
    )
    .await;
    let proxied = format!("rediss://127.0.0.1:{}/", proxy.addr().port());
    let a_store = coherent(TieredStore::builder(store(&url, &ca).await).build()).await;
    let b_store = coherent(TieredStore::builder(store(&proxied, &ca).await).build()).await;
    let (a, b) = (handle(a_store), handle(b_store));
    let opts = EntryOptions::new(Duration::from_secs(60)).tag("user:7");

    let v: Result<u32, ()> = a
        .get_or_insert_with("profile:7", &opts, || async { Ok(1) })
        .await;
    assert_eq!(v, Ok(1));
    // B reads it from Redis once (when A's write has landed), then from its L1.
    let read = eventually(|| async { b.get::<u32>("profile:7").await }).await;
    assert_eq!(read, Some(1));
    let sent = proxy.bytes_to_server();
    for _ in 0..20 {
        assert_eq!(b.get::<u32>("profile:7").await, Some(1));
    }
    assert_eq!(
        proxy.bytes_to_server(),
        sent,
        "L1 hits sent nothing to Redis"
    );

    // Only the backplane can clear B's L1 before its entry's 60 s are up.
    a.invalidate_tags(["user:7"]).await.unwrap();
    let gone =
        eventually(|| async { b.get::<u32>("profile:7").await.is_none().then_some(()) }).await;
    assert!(
        gone.is_some(),
        "B's L1 still served an entry invalidated through A"
    );
    assert_eq!(a.stats().total.errors + b.stats().total.errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_ca_fails_the_connection_and_the_layer_bypasses() {
    let redis = RedisServer::builder().tls().start();
    let unrelated = RedisServer::builder().tls().start();
    let (url, _) = tls_of(&redis);
    let (_, wrong_ca) = tls_of(&unrelated);
    // A single node connects lazily: building succeeds, using it fails.
    let store = store(&url, &wrong_ca).await;
    let cache = handle(store.clone());
    let error = store
        .get(&cache.key("k"))
        .await
        .expect_err("a certificate from another CA is refused");
    assert!(
        error.to_string().to_lowercase().contains("certificate"),
        "{error}"
    );

    let calls = Arc::new(AtomicUsize::new(0));
    let app = app(&cache, &calls);
    let mut bypassed = 0;
    for i in 0..10 {
        let (status, x, cache_status, body) = get_once(&app, "/api/metrics/finance").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, format!("{{\"revenue\":42,\"n\":{i}}}"));
        assert_ne!(x, "HIT");
        if cache_status.contains("fwd=bypass") {
            bypassed += 1;
        }
    }
    assert!(
        bypassed > 0,
        "the breaker opened: requests bypass the store"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 10, "every request was served");
    assert!(cache.stats().total.errors > 0, "the failures were counted");
    assert_eq!(redis.cli(&["DBSIZE"]).trim(), "0", "nothing reached Redis");
}

#[tokio::test]
async fn rediss_without_a_root_certificate_verifies_against_the_public_roots() {
    let redis = RedisServer::builder().tls().start();
    let (url, _) = tls_of(&redis);
    // No setter: the public (webpki) roots, which do not include the test kit's private CA.
    let store = RedisStore::builder(url.as_str())
        .namespace("t")
        .build()
        .await
        .unwrap();
    let cache = handle(store.clone());
    let error = store
        .get(&cache.key("k"))
        .await
        .expect_err("a private CA is not a public root");
    assert!(
        error.to_string().to_lowercase().contains("certificate"),
        "{error}"
    );
}

#[tokio::test]
async fn a_root_certificate_needs_pem_and_a_rediss_url() {
    let redis = RedisServer::builder().tls().start();
    let (url, ca) = tls_of(&redis);
    let plain = RedisStore::builder(redis.url())
        .tls_root_certificate(ca.as_slice())
        .build()
        .await;
    assert!(plain.is_err(), "a CA with a redis:// URL is refused");
    let not_pem = RedisStore::builder(url.as_str())
        .tls_root_certificate(b"not a certificate".as_slice())
        .build()
        .await;
    assert!(
        not_pem.is_err(),
        "a root certificate that is not PEM is refused"
    );
    let cluster_plain = RedisStore::cluster([redis.url()])
        .tls_root_certificate(ca)
        .build()
        .await;
    assert!(
        cluster_plain.is_err(),
        "a Cluster with a CA needs rediss:// URLs too"
    );
}
