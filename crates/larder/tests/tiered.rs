//! The tiered store (L1 in process, L2 in Redis) and its invalidation backplane.

#![cfg(feature = "redis")]

use std::time::Duration;

use larder::{
    CacheHandle, EntryOptions,
    store::{RedisStore, TieredStore},
};
use larder_testkit::{Proxy, ProxyMode, RedisServer};

async fn tiered(url: &str) -> TieredStore {
    let l2 = RedisStore::builder(url)
        .namespace("t")
        .build()
        .await
        .unwrap();
    let store = TieredStore::builder(l2).build();
    for _ in 0..100 {
        if store.is_coherent() {
            return store;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the backplane never subscribed to {url}");
}

fn handle(store: TieredStore) -> CacheHandle {
    CacheHandle::builder(store).namespace("t").build()
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_hits_do_not_touch_redis_and_invalidations_reach_every_l1() {
    let redis = RedisServer::restricted();
    let proxy = Proxy::start(redis.addr()).await;
    let a = handle(tiered(&redis.url()).await);
    let b_store = tiered(&redis.url_via(proxy.addr())).await;
    let b = handle(b_store.clone());
    let opts = EntryOptions::new(Duration::from_secs(60)).tag("user:7");

    let v: Result<u32, ()> = a
        .get_or_insert_with("profile:7", &opts, || async { Ok(1) })
        .await;
    assert_eq!(v, Ok(1));
    settle().await;
    // B reads it from Redis once, then from its L1.
    assert_eq!(b.get::<u32>("profile:7").await, Some(1));
    let sent = proxy.bytes_to_server();
    for _ in 0..20 {
        assert_eq!(b.get::<u32>("profile:7").await, Some(1));
    }
    assert_eq!(
        proxy.bytes_to_server(),
        sent,
        "L1 hits sent nothing to Redis"
    );

    // An invalidation through A reaches B's L1 (within the pub/sub delivery time).
    a.invalidate_tags(["user:7"]).await.unwrap();
    let mut gone = false;
    for _ in 0..50 {
        if b.get::<u32>("profile:7").await.is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(gone, "B's L1 still served an entry invalidated through A");
    // And a purge too.
    let v: Result<u32, ()> = b
        .get_or_insert_with("profile:7", &opts, || async { Ok(2) })
        .await;
    assert_eq!(v, Ok(2));
    settle().await;
    assert_eq!(a.get::<u32>("profile:7").await, Some(2));
    b.purge().await.unwrap();
    let mut gone = false;
    for _ in 0..50 {
        if a.get::<u32>("profile:7").await.is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(gone, "A's L1 still served an entry purged through B");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_backplane_takes_the_l1_out_of_use_and_clears_it() {
    let redis = RedisServer::restricted();
    let proxy = Proxy::start(redis.addr()).await;
    let store = tiered(&redis.url_via(proxy.addr())).await;
    let cache = handle(store.clone());
    let opts = EntryOptions::new(Duration::from_secs(60));
    cache
        .insert("k", &1u32, &opts, cache.read_stamp())
        .await
        .unwrap();
    settle().await;
    assert_eq!(cache.get::<u32>("k").await, Some(1));

    proxy.set_mode(ProxyMode::Refuse);
    proxy.drop_connections();
    let mut lost = false;
    for _ in 0..100 {
        if !store.is_coherent() {
            lost = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(lost, "the backplane noticed the lost connection");
    // Redis unreachable and the L1 not trusted: a miss, never a stale L1 hit.
    assert_eq!(cache.get::<u32>("k").await, None);

    proxy.set_mode(ProxyMode::Pass);
    let mut back = false;
    for _ in 0..200 {
        if store.is_coherent() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(back, "the backplane came back");
    // The entry is still in Redis; the L1 fills again from it.
    let mut found = None;
    for _ in 0..50 {
        found = cache.get::<u32>("k").await;
        if found.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(found, Some(1));
}

/// While an invalidation waits to be replayed, typed reads do not use the L1 either: the L1
/// still holds what the invalidation will hide (the timed-out call never cleared it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_reads_skip_the_l1_while_an_invalidation_waits_for_redis() {
    let redis = RedisServer::restricted();
    let cache = CacheHandle::builder(tiered(&redis.url()).await)
        .namespace("t")
        .store_timeout(Duration::from_millis(100))
        .circuit_breaker(1, Duration::from_millis(200))
        .build();
    let opts = EntryOptions::new(Duration::from_secs(60)).tag("user:7");
    let v: Result<u32, ()> = cache
        .get_or_insert_with("profile:7", &opts, || async { Ok(1) })
        .await;
    assert_eq!(v, Ok(1));
    settle().await;
    assert_eq!(cache.get::<u32>("profile:7").await, Some(1), "an L1 hit");

    redis.pause();
    assert!(cache.invalidate_tags(["user:7"]).await.is_err(), "deferred");
    assert_eq!(
        cache.get::<u32>("profile:7").await,
        None,
        "not the L1's copy"
    );
    let fresh: Result<u32, ()> = cache
        .get_or_insert_with("profile:7", &opts, || async { Ok(2) })
        .await;
    assert_eq!(fresh, Ok(2), "computed again, not the invalidated value");
    redis.resume();
}
