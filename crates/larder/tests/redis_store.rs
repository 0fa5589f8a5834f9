//! The Redis store against real redis-server processes started by the test kit.

#![cfg(feature = "redis")]

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::Router;
use http::StatusCode;
use larder::{CacheHandle, EntryOptions, codec, store::RedisStore};
use larder_testkit::{RedisCluster, RedisServer};
use support::metrics_app::{app, get_once, handle};

async fn store(url: &str) -> RedisStore {
    RedisStore::builder(url)
        .namespace("t")
        .build()
        .await
        .unwrap()
}

/// Waits until a spawned store write has landed (writes do not hold up the response).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn two_instances_share_entries_and_invalidations() {
    let redis = RedisServer::restricted();
    let a = handle(store(&redis.url()).await);
    let b = handle(store(&redis.url()).await);
    let calls = Arc::new(AtomicUsize::new(0));
    let (app_a, app_b) = (app(&a, &calls), app(&b, &calls));

    assert_eq!(get_once(&app_a, "/api/metrics/finance").await.1, "MISS");
    settle().await;
    let (_, x, _, body) = get_once(&app_b, "/api/metrics/finance").await;
    assert_eq!(
        (x.as_str(), body.as_str()),
        ("HIT", "{\"revenue\":42,\"n\":0}")
    );

    b.invalidate_tags(["metrics"]).await.unwrap();
    let (_, x, _, body) = get_once(&app_a, "/api/metrics/finance").await;
    assert_eq!(
        x, "MISS",
        "an invalidation through one instance is seen by the other at once"
    );
    assert!(body.ends_with("\"n\":1}"));
    settle().await;
    assert_eq!(get_once(&app_b, "/api/metrics/finance").await.1, "HIT");

    a.purge().await.unwrap();
    assert_eq!(get_once(&app_b, "/api/metrics/finance").await.1, "MISS");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn typed_values_batch_reads_and_tags() {
    let redis = RedisServer::restricted();
    let cache = handle(store(&redis.url()).await);
    let opts = EntryOptions::new(Duration::from_secs(60)).tag("user:1");
    for (k, v) in [("a", 1u32), ("b", 2), ("c", 3)] {
        let got: Result<u32, ()> = cache
            .get_or_insert_with(k, &opts, || async move { Ok(v) })
            .await;
        assert_eq!(got, Ok(v));
    }
    settle().await;
    let many: Vec<Option<u32>> = cache.get_many(&["a", "missing", "c", "b"]).await;
    assert_eq!(many, vec![Some(1), None, Some(3), Some(2)]);
    // Large values are compressed on the way in and read back whole.
    let big = "x".repeat(100_000);
    cache
        .insert("big", &big, &opts, cache.read_stamp())
        .await
        .unwrap();
    settle().await;
    assert_eq!(
        cache.get::<String>("big").await.as_deref(),
        Some(big.as_str())
    );
    let key = cache.key("big");
    let raw = redis.cli(&["STRLEN", &format!("t:e:{}:{}", key.label(), key.hex())]);
    assert!(
        raw.trim().parse::<usize>().unwrap() < 10_000,
        "stored compressed: {raw}"
    );

    cache.invalidate_tags(["user:1"]).await.unwrap();
    let many: Vec<Option<u32>> = cache.get_many(&["a", "b", "c"]).await;
    assert_eq!(many, vec![None, None, None]);
}

#[tokio::test]
async fn garbage_truncated_foreign_and_old_values_are_misses() {
    let redis = RedisServer::restricted();
    let cache = handle(store(&redis.url()).await);
    cache
        .insert(
            "k",
            &"value",
            &EntryOptions::new(Duration::from_secs(60)),
            cache.read_stamp(),
        )
        .await
        .unwrap();
    cache
        .insert(
            "other",
            &"other",
            &EntryOptions::new(Duration::from_secs(60)),
            cache.read_stamp(),
        )
        .await
        .unwrap();
    settle().await;
    let key = cache.key("k");
    let redis_key = format!("t:e:{}:{}", key.label(), key.hex());
    assert_eq!(cache.get::<String>("k").await.as_deref(), Some("value"));

    let other = cache.key("other");
    let seed = entry_for_test().await;
    let good = codec::encode(&key, &seed);
    let mut old = good.to_vec();
    old[4] = 0;
    let truncated = good[..good.len() / 2].to_vec();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"\x00\xffnot an entry".to_vec()),
        ("json", b"{\"value\": 1}".to_vec()),
        ("old format", old),
        ("truncated", truncated),
        ("another key's entry", codec::encode(&other, &seed).to_vec()),
    ];
    let errors_before = cache.stats().total.errors;
    for (name, bytes) in &cases {
        set_raw(&redis, &redis_key, bytes).await;
        assert_eq!(
            cache.get::<String>("k").await,
            None,
            "{name} must be a miss"
        );
    }
    assert_eq!(
        cache.stats().total.errors - errors_before,
        cases.len() as u64,
        "each is counted"
    );
}

/// A valid entry, produced the way the cache produces one (a typed value).
async fn entry_for_test() -> larder::Entry {
    use larder::store::Entries;
    let store = larder::MemoryStore::default();
    let cache = CacheHandle::new(store.clone());
    cache
        .insert(
            "seed",
            &"seed",
            &EntryOptions::new(Duration::from_secs(60)),
            cache.read_stamp(),
        )
        .await
        .unwrap();
    let read = store.get(&cache.key("seed")).await.unwrap();
    let entry = read.visible().unwrap();
    (*entry).clone()
}

async fn set_raw(redis: &RedisServer, key: &str, value: &[u8]) {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_acl_user_without_dangerous_commands_runs_the_store() {
    // With and without pub/sub channels (`&*`; Redis 7 grants none by default): a plain
    // Redis store publishes nothing, so it needs none.
    for rules in [
        "~* &* +@all -@dangerous",
        "~* resetchannels +@all -@dangerous",
    ] {
        acl_user_runs_the_store(rules).await;
    }
}

async fn acl_user_runs_the_store(rules: &str) {
    let redis = RedisServer::builder()
        .acl_user("larder", "s3cret", rules)
        .start();
    let denied = redis.cli_as("larder", "s3cret", &["KEYS", "*"]);
    assert!(
        denied.contains("NOPERM"),
        "KEYS is refused for this user: {denied}"
    );
    let cache = handle(store(&redis.url_for("larder", "s3cret")).await);
    let calls = Arc::new(AtomicUsize::new(0));
    let app = app(&cache, &calls);
    assert_eq!(get_once(&app, "/api/metrics/sales").await.1, "MISS");
    settle().await;
    assert_eq!(get_once(&app, "/api/metrics/sales").await.1, "HIT");
    cache.invalidate_tags(["metrics"]).await.unwrap();
    cache.purge().await.unwrap();
    assert_eq!(get_once(&app, "/api/metrics/sales").await.1, "MISS");
    assert_eq!(cache.stats().total.errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_traffic_never_fails_a_request_and_hits_resume_after_restart() {
    let mut redis = RedisServer::restricted();
    let cache = handle(store(&redis.url()).await);
    let calls = Arc::new(AtomicUsize::new(0));
    let app = app(&cache, &calls);
    get_once(&app, "/api/metrics/finance").await;
    settle().await;

    let mut ok = 0;
    for i in 0..1000 {
        if i == 200 {
            redis.stop();
        }
        let (status, _, _, body) = get_once(
            &app,
            &format!("/api/metrics/{}", ["finance", "sales"][i % 2]),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.starts_with("{\"revenue\":42"), "{body}");
        ok += 1;
    }
    assert_eq!(ok, 1000);
    assert!(cache.stats().total.errors > 0, "the outage was noticed");

    redis.restart();
    // The connection comes back by itself: no new store, no restart of the service.
    let mut hit = false;
    for _ in 0..50 {
        get_once(&app, "/api/metrics/marketing").await;
        settle().await;
        if get_once(&app, "/api/metrics/marketing").await.1 == "HIT" {
            hit = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(hit, "hits resumed after Redis came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_spreads_keys_and_keeps_tags_and_batches_working() {
    let cluster = RedisCluster::start();
    let store = RedisStore::cluster(cluster.restricted_urls())
        .namespace("t")
        .build()
        .await
        .unwrap();
    let cache = handle(store);
    let keys: Vec<String> = (0..60).map(|i| format!("k{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        let opts = EntryOptions::new(Duration::from_secs(60)).tag(format!("group:{}", i % 3));
        cache
            .insert(k, &i, &opts, cache.read_stamp())
            .await
            .unwrap();
    }
    settle().await;
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let all: Vec<Option<usize>> = cache.get_many(&refs).await;
    assert_eq!(all, (0..60).map(Some).collect::<Vec<_>>());
    // Keys landed on every master.
    for node in cluster.nodes() {
        let n: usize = node.cli(&["DBSIZE"]).trim().parse().unwrap();
        assert!(n > 5, "node {} holds {n} keys", node.port());
    }
    cache.invalidate_tags(["group:1"]).await.unwrap();
    let all: Vec<Option<usize>> = cache.get_many(&refs).await;
    for (i, v) in all.iter().enumerate() {
        assert_eq!(v.is_some(), i % 3 != 1, "key {i}");
    }
    cache.purge().await.unwrap();
    assert!(
        cache
            .get_many::<usize>(&refs)
            .await
            .iter()
            .all(Option::is_none)
    );
    assert_eq!(cache.stats().total.errors, 0);
}

/// Operations a node ran (every command but those of tests, `INFO`, and the client's own
/// housekeeping).
fn operations(node: &RedisServer) -> u64 {
    const HOUSEKEEPING: [&str; 9] = [
        "info", "cluster", "ping", "client", "hello", "command", "config", "select", "readonly",
    ];
    node.cli(&["INFO", "commandstats"])
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(":calls=")?;
            let calls: u64 = rest.split(',').next()?.parse().ok()?;
            (!HOUSEKEEPING.contains(&name.split('|').next()?)).then_some(calls)
        })
        .sum()
}

/// Uniform reads over a 3-master Cluster: each lookup is one command on one master (the
/// entry, its shard's floor and its shard's clock share a slot), and no master takes more than
/// 40% of the operations. Before the namespace was sharded, every lookup also read `t:floor`
/// and `t:clock` on the masters that hold them: 4 commands a lookup instead of 2, and those
/// two masters ran 41% and 43% of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_reads_are_one_command_each_spread_evenly_over_the_masters() {
    let cluster = RedisCluster::start();
    let store = RedisStore::cluster(cluster.urls())
        .namespace("t")
        .build()
        .await
        .unwrap();
    let cache = handle(store);
    let keys: Vec<String> = (0..300).map(|i| format!("page:{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        let opts = EntryOptions::new(Duration::from_secs(60)).tag(format!("item:{i}"));
        cache
            .insert(k, &i, &opts, cache.read_stamp())
            .await
            .unwrap();
    }
    // One invalidation, so the clocks have moved since some entries were born (their tags
    // are then read too: spread as well).
    cache.invalidate_tags(["item:7"]).await.unwrap();
    for k in &keys {
        cache.get::<usize>(k).await;
    }
    let before: Vec<u64> = cluster.nodes().iter().map(operations).collect();
    let mgets_before: u64 = cluster
        .nodes()
        .iter()
        .map(|n| n.command_calls("mget"))
        .sum();
    let rounds = 3;
    for _ in 0..rounds {
        for (i, k) in keys.iter().enumerate() {
            let expected = (i != 7).then_some(i);
            assert_eq!(cache.get::<usize>(k).await, expected, "{k}");
        }
    }
    let ops: Vec<u64> = cluster
        .nodes()
        .iter()
        .zip(&before)
        .map(|(n, b)| operations(n) - b)
        .collect();
    let mgets: u64 = cluster
        .nodes()
        .iter()
        .map(|n| n.command_calls("mget"))
        .sum::<u64>()
        - mgets_before;
    let total: u64 = ops.iter().sum();
    let shares: Vec<f64> = ops.iter().map(|&o| o as f64 / total as f64).collect();
    eprintln!(
        "{} lookups: {total} operations ({mgets} MGET), per master {ops:?}, shares {shares:.3?}",
        rounds * keys.len()
    );
    // Every entry was born before the invalidation moved the clocks: its tag's record is
    // read too (one more MGET, on the record's master).
    assert_eq!(
        mgets,
        2 * (rounds * keys.len()) as u64,
        "one MGET for the entry and its shard's marks, one for its tag"
    );
    for (node, share) in cluster.nodes().iter().zip(&shares) {
        assert!(
            (0.25..=0.40).contains(share),
            "master {} ran {share:.3} of the operations",
            node.port()
        );
    }
    assert_eq!(cache.stats().total.errors, 0);
}

/// On a Cluster, Redis may evict a shard's copy of the clock or its purge floor like any key:
/// invalidated and purged entries stay hidden.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_shards_whose_clock_or_floor_was_evicted_never_revive_entries() {
    let cluster = RedisCluster::start();
    let evict_everywhere =
        |pattern: &str| -> usize { cluster.nodes().iter().map(|n| evict(n, pattern)).sum() };
    let store = RedisStore::cluster(cluster.urls())
        .namespace("t")
        .build()
        .await
        .unwrap();
    let cache = handle(store);
    let opts = EntryOptions::new(Duration::from_secs(60)).tag("t");
    let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
    for k in &keys {
        cache
            .insert(k, &1u32, &opts, cache.read_stamp())
            .await
            .unwrap();
    }
    cache.invalidate_tags(["t"]).await.unwrap();
    // The tag records and every clock (the shards' and the invalidations' own) lost.
    assert!(evict_everywhere("t:t:*") > 0);
    assert!(
        evict_everywhere("t:*clock") >= 17,
        "16 shards and the clock"
    );
    for k in &keys {
        assert_eq!(
            cache.get::<u32>(k).await,
            None,
            "{k} revived by lost clocks"
        );
    }
    // The purge floors.
    for k in &keys {
        cache
            .insert(k, &2u32, &opts, cache.read_stamp())
            .await
            .unwrap();
    }
    assert_eq!(cache.get::<u32>(&keys[0]).await, Some(2), "stored again");
    cache.purge().await.unwrap();
    assert_eq!(evict_everywhere("t:*floor"), 16, "every shard's floor");
    for k in &keys {
        assert_eq!(
            cache.get::<u32>(k).await,
            None,
            "{k} revived by a lost purge"
        );
    }
    cache
        .insert("new", &3u32, &opts, cache.read_stamp())
        .await
        .unwrap();
    assert_eq!(cache.get::<u32>("new").await, Some(3), "served again");
    assert_eq!(cache.stats().total.errors, 0);
}

/// Redis behind a fault proxy, a cache over it, and one entry already a hit.
async fn warm_behind_proxy() -> (RedisServer, larder_testkit::Proxy, CacheHandle, Router) {
    let redis = RedisServer::restricted();
    let proxy = larder_testkit::Proxy::start(redis.addr()).await;
    let cache = handle(store(&redis.url_via(proxy.addr())).await);
    let app = app(&cache, &Arc::new(AtomicUsize::new(0)));
    get_once(&app, "/api/metrics/finance").await;
    settle().await;
    assert_eq!(get_once(&app, "/api/metrics/finance").await.1, "HIT");
    (redis, proxy, cache, app)
}

async fn timed_get(app: &Router, uri: &str) -> (Duration, StatusCode, String) {
    let started = std::time::Instant::now();
    let (status, x, _, _) = get_once(app, uri).await;
    (started.elapsed(), status, x)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_paused_redis_never_holds_a_request_past_the_deadline() {
    let (redis, proxy, _cache, app) = warm_behind_proxy().await;

    // 2 s slower: the 300 ms deadline (plus a margin for this shared machine) bounds every request.
    proxy.set_latency(Duration::from_secs(2));
    let mut worst = Duration::ZERO;
    for i in 0..30 {
        let (took, status, _) = timed_get(
            &app,
            &format!("/api/metrics/{}", ["finance", "sales", "strategy"][i % 3]),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        worst = worst.max(took);
    }
    assert!(
        worst < Duration::from_millis(300 + 700),
        "worst request took {worst:?}"
    );
    // Once the breaker is open, requests do not touch Redis at all.
    let (_, _, x) = timed_get(&app, "/api/metrics/finance").await;
    assert_eq!(x, "BYPASS");
    let accepted = proxy.accepted();
    let sent = proxy.bytes_to_server();
    for _ in 0..20 {
        get_once(&app, "/api/metrics/operations").await;
    }
    assert_eq!(proxy.accepted(), accepted);
    assert!(
        proxy.bytes_to_server() - sent < 200,
        "only the background probe may talk to Redis"
    );

    // Paused (SIGSTOP): the same bound.
    proxy.set_latency(Duration::ZERO);
    redis.pause();
    for _ in 0..10 {
        let (took, status, _) = timed_get(&app, "/api/metrics/marketing").await;
        assert_eq!(status, StatusCode::OK);
        assert!(took < Duration::from_millis(1000), "took {took:?}");
    }
    redis.resume();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_invalidated_while_redis_is_unreachable_is_not_served_after_recovery() {
    let (_redis, proxy, cache, app) = warm_behind_proxy().await;

    // Redis keeps the entry, but this instance cannot reach it when the write happens.
    proxy.set_mode(larder_testkit::ProxyMode::Refuse);
    proxy.drop_connections();
    assert!(
        cache.invalidate_tags(["metrics"]).await.is_err(),
        "the caller learns it was deferred"
    );
    let (_, x, _, _) = get_once(&app, "/api/metrics/finance").await;
    assert_eq!(x, "BYPASS", "nothing is read while an invalidation waits");

    proxy.set_mode(larder_testkit::ProxyMode::Pass);
    let mut recovered = false;
    for _ in 0..100 {
        let (_, x, _, body) = get_once(&app, "/api/metrics/finance").await;
        assert_ne!(
            x, "HIT",
            "served the entry invalidated during the outage: {body}"
        );
        if x == "MISS" {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        recovered,
        "the store came back and the deferred invalidation was replayed"
    );
    settle().await;
    assert_eq!(get_once(&app, "/api/metrics/finance").await.1, "HIT");
}

/// Requests that miss while the leader's response is on its way to Redis: before the fix, each
/// one whose lookup came back after the leader landed started a second origin call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_that_miss_while_the_leaders_write_is_on_its_way_call_the_origin_once() {
    use axum::routing::get;

    let redis = RedisServer::restricted();
    let proxy = larder_testkit::Proxy::start(redis.addr()).await;
    let cache = handle(store(&redis.url_via(proxy.addr())).await);
    // Every Redis round trip takes at least 40 ms, so lookups sent during the origin call
    // come back around the time the leader lands and its write starts.
    proxy.set_latency(Duration::from_millis(20));
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let app = Router::new().route(
        "/slow",
        get(move || {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                format!("call {n}")
            }
        })
        .layer(cache.layer(larder::Rule::new("slow").ttl(Duration::from_secs(60)))),
    );

    // One request every 5 ms for 250 ms: before, during and after the origin call and the
    // write that follows it.
    let mut requests = Vec::new();
    for _ in 0..50 {
        let app = app.clone();
        requests.push(tokio::spawn(async move { get_once(&app, "/slow").await }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut collapsed_or_hit = 0;
    for r in requests {
        let (status, x, cache_status, body) = r.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "call 0", "{cache_status}");
        if x == "HIT" || cache_status.contains("collapsed") {
            collapsed_or_hit += 1;
        }
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one origin call for 50 requests"
    );
    assert_eq!(collapsed_or_hit, 49);
}

/// The visibility rule holds for followers across instances: after an invalidation through
/// instance B has completed, a request to instance A that joins a flight A started before it
/// is not answered with that flight's response (its lookup saw the invalidation's clock; it
/// reads the store again, which hides the older response, and asks the origin).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_after_another_instances_invalidation_is_not_answered_by_an_older_flight() {
    use axum::routing::get;

    // `INFO` is a @dangerous command: this server is not the locked-down kind.
    let redis = RedisServer::start();
    let a = handle(store(&redis.url()).await);
    let b = handle(store(&redis.url()).await);
    let calls = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Notify::new());
    let (c, r) = (Arc::clone(&calls), Arc::clone(&release));
    let app = Router::new().route(
        "/r",
        get(move || {
            let n = c.fetch_add(1, Ordering::SeqCst);
            let release = Arc::clone(&r);
            async move {
                if n == 0 {
                    // The first call read the data before B's write.
                    release.notified().await;
                }
                format!("v{n}")
            }
        })
        .layer(
            a.layer(
                larder::Rule::new("r")
                    .ttl(Duration::from_secs(60))
                    .tag("data"),
            ),
        ),
    );

    let first = tokio::spawn({
        let app = app.clone();
        async move { get_once(&app, "/r").await }
    });
    support::metrics_app::eventually(|| async {
        (calls.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await
    .expect("the first request is at the origin");
    b.invalidate_tags(["data"]).await.unwrap();
    let before = redis.command_calls("mget");
    let second = tokio::spawn({
        let app = app.clone();
        async move { get_once(&app, "/r").await }
    });
    // Its lookup has been answered; what is left before it follows the flight is CPU work.
    support::metrics_app::eventually(|| async {
        (redis.command_calls("mget") > before).then_some(())
    })
    .await
    .expect("the second request looked the key up");
    tokio::time::sleep(Duration::from_millis(50)).await;
    release.notify_one();

    let (_, _, _, body) = first.await.unwrap();
    assert_eq!(body, "v0");
    let (status, _, cache_status, body) = second.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body, "v1",
        "started after the invalidation: not the older flight's response ({cache_status})"
    );
    assert!(!cache_status.contains("collapsed"), "{cache_status}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// `insert` returns once Redis has the value: a read right after it, on another instance,
/// finds it; and a value read before another instance's invalidation is not stored as fresh.
#[tokio::test]
async fn insert_lands_before_it_returns_and_keeps_its_read_stamp() {
    let redis = RedisServer::restricted();
    let a = handle(store(&redis.url()).await);
    let b = handle(store(&redis.url()).await);
    let opts = EntryOptions::new(Duration::from_secs(60)).tag("t");
    a.insert("k", &1u32, &opts, a.read_stamp()).await.unwrap();
    let got: Vec<Option<u32>> = b.get_many(&["k"]).await;
    assert_eq!(got, [Some(1)], "no wait between the write and the read");

    // A reads a value from its source, B invalidates its tag, A inserts what it read.
    let _ = a.get::<u32>("k").await; // A's clock is current
    let read_at = a.read_stamp();
    b.invalidate_tags(["t"]).await.unwrap();
    a.insert("k", &2u32, &opts, read_at).await.unwrap();
    assert_eq!(
        b.get::<u32>("k").await,
        None,
        "born before the invalidation"
    );
    assert_eq!(a.get::<u32>("k").await, None);
}

/// During an outage a miss does not say `stored`, and nothing is counted as stored, since
/// nothing was; and once Redis is back, hits resume within about a second (the probe's
/// backoff is bounded), however long the outage lasted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_reported_as_it_is_and_hits_resume_promptly_after_it() {
    use std::time::Instant;

    let mut redis = RedisServer::restricted();
    let cache = CacheHandle::builder(store(&redis.url()).await)
        .x_cache()
        .namespace("t")
        .store_timeout(Duration::from_millis(300))
        // The breaker stays closed for the first misses: they still try the store.
        .circuit_breaker(1000, Duration::from_millis(100))
        .build();
    let calls = Arc::new(AtomicUsize::new(0));
    let app = app(&cache, &calls);
    redis.stop();
    for category in ["finance", "sales", "marketing"] {
        let (status, x, cache_status, _) =
            get_once(&app, &format!("/api/metrics/{category}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(x, "MISS");
        assert!(!cache_status.contains("stored"), "{cache_status}");
    }
    support::metrics_app::eventually(|| async { (cache.stats().total.errors >= 6).then_some(()) })
        .await
        .expect("each lookup and each write failed");
    assert_eq!(cache.stats().total.stored, 0, "nothing was stored");

    // A long outage with the breaker open: the probe has backed off as far as it goes (with
    // a 5 s ceiling, the next probe after 7 s of outage would come at 11.3 s).
    let open = CacheHandle::builder(store(&redis.url()).await)
        .x_cache()
        .namespace("t")
        .store_timeout(Duration::from_millis(300))
        .circuit_breaker(1, Duration::from_millis(100))
        .build();
    let app = support::metrics_app::app(&open, &calls);
    let _ = get_once(&app, "/api/metrics/finance").await;
    assert!(!open.is_store_available(), "the breaker opened");
    tokio::time::sleep(Duration::from_secs(7)).await;
    redis.restart();
    let back = Instant::now();
    support::metrics_app::eventually(|| async { open.is_store_available().then_some(()) })
        .await
        .expect("the breaker closed");
    let resumed = back.elapsed();
    assert!(
        resumed < Duration::from_millis(2500),
        "the store was used again {resumed:?} after Redis came back"
    );
    let _ = get_once(&app, "/api/metrics/sales").await;
    settle().await;
    assert_eq!(get_once(&app, "/api/metrics/sales").await.1, "HIT");
}

/// Deletes every key matching `pattern`, as Redis's eviction may (`KEYS` is fine in a test on
/// an unrestricted server).
fn evict(redis: &RedisServer, pattern: &str) -> usize {
    let keys: Vec<String> = redis
        .cli(&["KEYS", pattern])
        .lines()
        .map(str::to_owned)
        .filter(|k| !k.is_empty())
        .collect();
    for k in &keys {
        redis.cli(&["DEL", k]);
    }
    keys.len()
}

/// Redis may evict the invalidation records (`allkeys-lru`, `allkeys-random`): a missing
/// record hides the entries it could have hidden, it never revives them. Tag records and the
/// purge floor both.
#[tokio::test]
async fn an_evicted_invalidation_record_hides_entries_instead_of_reviving_them() {
    let redis = RedisServer::start();
    let cache = handle(store(&redis.url()).await);
    let opts = EntryOptions::new(Duration::from_secs(60)).tag("t");
    cache
        .insert("a", &1u32, &opts, cache.read_stamp())
        .await
        .unwrap();
    cache
        .insert("b", &2u32, &opts, cache.read_stamp())
        .await
        .unwrap();
    cache.invalidate_tags(["t"]).await.unwrap();
    assert_eq!(cache.get::<u32>("a").await, None);
    assert!(evict(&redis, "t:t:*") > 0, "the tag records are gone");
    assert_eq!(cache.get::<u32>("a").await, None, "not revived");
    assert_eq!(cache.get::<u32>("b").await, None, "not revived");

    // An entry whose tag was never invalidated, once any invalidation has moved the clock
    // and its record is lost, is hidden too: nothing can say it was not invalidated.
    cache
        .insert("c", &3u32, &opts, cache.read_stamp())
        .await
        .unwrap();
    cache.invalidate_tags(["other"]).await.unwrap();
    assert_eq!(
        cache.get::<u32>("c").await,
        Some(3),
        "its record says it is current"
    );
    evict(&redis, "t:t:*");
    assert_eq!(cache.get::<u32>("c").await, None);

    // The purge floor.
    cache
        .insert("d", &4u32, &opts, cache.read_stamp())
        .await
        .unwrap();
    cache.purge().await.unwrap();
    assert_eq!(evict(&redis, "t:floor"), 1);
    assert_eq!(
        cache.get::<u32>("d").await,
        None,
        "not revived by a lost purge"
    );
    cache
        .insert("e", &5u32, &opts, cache.read_stamp())
        .await
        .unwrap();
    assert_eq!(
        cache.get::<u32>("e").await,
        Some(5),
        "a new entry is served again"
    );

    // The clock: read as missing it once said "nothing invalidated since", and `allkeys-random`
    // brought invalidated entries back that way. Invalidated, then the clock and the tag's
    // record both evicted: hidden.
    cache
        .insert("f", &6u32, &opts, cache.read_stamp())
        .await
        .unwrap();
    cache.invalidate_tags(["t"]).await.unwrap();
    evict(&redis, "t:t:*");
    assert_eq!(evict(&redis, "t:clock"), 1);
    assert_eq!(
        cache.get::<u32>("f").await,
        None,
        "not revived by a lost clock"
    );
}

/// A real eviction: Redis limited to 4 MB under `allkeys-lru` (then `allkeys-random`), 200
/// entries stored and invalidated, then 12 MB of other keys make Redis evict. Before records
/// hid, 16 to 20 of the 200 came back as stale hits. Every one of them must now be a miss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_invalidated_before_redis_evicts_never_come_back() {
    for policy in ["allkeys-lru", "allkeys-random"] {
        let redis = RedisServer::builder()
            .args(["--maxmemory", "4mb", "--maxmemory-policy", policy])
            .start();
        let store = store(&redis.url()).await;
        let reported = store.eviction_policy().await.unwrap();
        assert_eq!(reported.policy, policy);
        assert!(reported.supported());
        let cache = handle(store);
        let page = "x".repeat(2_000);
        for i in 0..200 {
            let opts = EntryOptions::new(Duration::from_secs(300)).tag(format!("sessions:{i}"));
            cache
                .insert(&format!("page:{i}"), &page, &opts, cache.read_stamp())
                .await
                .unwrap();
        }
        for i in 0..200 {
            cache
                .invalidate_tags([format!("sessions:{i}")])
                .await
                .unwrap();
        }
        // Other traffic: 12 MB of keys Redis must make room for.
        let client = redis::Client::open(redis.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let filler = vec![b'y'; 4_000];
        for n in 0..3_000 {
            let _: () = redis::cmd("SET")
                .arg(format!("other:{n}"))
                .arg(&filler)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        let info = redis.cli(&["INFO", "stats"]);
        let evicted: u64 = info
            .lines()
            .find_map(|l| l.strip_prefix("evicted_keys:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap();
        let records_left = redis
            .cli(&["KEYS", "t:t:*"])
            .lines()
            .filter(|l| !l.is_empty())
            .count();
        let entries_left = redis
            .cli(&["KEYS", "t:e:*"])
            .lines()
            .filter(|l| !l.is_empty())
            .count();
        eprintln!(
            "{policy}: {evicted} keys evicted; {entries_left} entries and {records_left} of 200 tag records left"
        );
        assert!(evicted > 300, "Redis evicted only {evicted} keys");
        let mut revived = Vec::new();
        for i in 0..200 {
            if cache.get::<String>(&format!("page:{i}")).await.is_some() {
                revived.push(i);
            }
        }
        assert!(
            revived.is_empty(),
            "{policy}: invalidated entries came back: {revived:?}"
        );
    }
}

/// `noeviction` under a memory limit is the one policy the store does not support (Redis
/// refuses writes once full), and the store says so.
#[tokio::test]
async fn the_store_reports_an_unsupported_eviction_policy() {
    let redis = RedisServer::builder()
        .args(["--maxmemory", "8mb", "--maxmemory-policy", "noeviction"])
        .start();
    let policy = store(&redis.url()).await.eviction_policy().await.unwrap();
    assert_eq!(policy.maxmemory, 8 * 1024 * 1024);
    assert!(!policy.supported());
    let unlimited = RedisServer::start();
    assert!(
        store(&unlimited.url())
            .await
            .eviction_policy()
            .await
            .unwrap()
            .supported()
    );
}

/// A caller that gives up while its invalidation is on its way (a client that closed the
/// connection of its write) does not cancel it: the invalidation runs to its end as its own
/// task. Before, dropping the future dropped the invalidation, and the entry stayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_whose_caller_gives_up_still_lands() {
    let redis = RedisServer::start();
    let proxy = larder_testkit::Proxy::start(redis.addr()).await;
    let reader = handle(store(&redis.url()).await);
    let writer = handle(store(&redis.url_via(proxy.addr())).await);
    let opts = EntryOptions::new(Duration::from_secs(60)).tag("profile");
    reader
        .insert("me", &1u32, &opts, reader.read_stamp())
        .await
        .unwrap();
    assert_eq!(reader.get::<u32>("me").await, Some(1));
    proxy.set_latency(Duration::from_millis(30));
    let gave_up = tokio::time::timeout(
        Duration::from_millis(10),
        writer.invalidate_tags(["profile"]),
    )
    .await;
    assert!(
        gave_up.is_err(),
        "the caller gave up before the invalidation landed"
    );
    let landed = support::metrics_app::eventually(|| async {
        reader.get::<u32>("me").await.is_none().then_some(())
    })
    .await;
    assert!(
        landed.is_some(),
        "the invalidation was dropped with its caller"
    );
}

/// With Redis tracking the purge floor and the clock for it (RESP3 `CLIENT TRACKING BCAST`), a
/// hit is one `GET`; and another instance's invalidation is still seen by the very next read,
/// because Redis pushes it on this connection before the answer of any later command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_is_one_get_and_another_instances_invalidation_is_seen_by_the_next_read() {
    let redis = RedisServer::start();
    let a = handle(store(&redis.url()).await);
    let store_b = store(&redis.url()).await;
    let b = handle(store_b.clone());
    let opts = EntryOptions::new(Duration::from_secs(60)).tag("p");
    a.insert("k", &0u32, &opts, a.read_stamp()).await.unwrap();
    // The first reads turn tracking on (in the background), the next learns the two keys.
    let on = support::metrics_app::eventually(|| async {
        assert_eq!(b.get::<u32>("k").await, Some(0));
        store_b.tracks_floor_and_clock().then_some(())
    })
    .await;
    assert!(on.is_some(), "tracking was turned on");
    assert_eq!(b.get::<u32>("k").await, Some(0));
    let (gets, mgets) = (redis.command_calls("get"), redis.command_calls("mget"));
    for _ in 0..50 {
        assert_eq!(b.get::<u32>("k").await, Some(0));
    }
    let (gets, mgets) = (
        redis.command_calls("get") - gets,
        redis.command_calls("mget") - mgets,
    );
    eprintln!("50 hits: {gets} GET, {mgets} MGET");
    assert_eq!((gets, mgets), (50, 0), "one GET per hit, nothing else");

    for round in 1..=30u32 {
        a.insert("k", &round, &opts, a.read_stamp()).await.unwrap();
        assert_eq!(b.get::<u32>("k").await, Some(round), "round {round}");
        assert_eq!(
            b.get::<u32>("k").await,
            Some(round),
            "round {round}, tracked"
        );
        a.invalidate_tags(["p"]).await.unwrap();
        assert_eq!(
            b.get::<u32>("k").await,
            None,
            "round {round}: B served what A's invalidation hid"
        );
    }
}

/// A reconnection ends tracking (and the pushes with it): the store reads the floor and the
/// clock again, turns tracking on again, and an invalidation made meanwhile is seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_survives_a_dropped_connection() {
    let redis = RedisServer::start();
    let proxy = larder_testkit::Proxy::start(redis.addr()).await;
    let a = handle(store(&redis.url()).await);
    let store_b = store(&redis.url_via(proxy.addr())).await;
    let b = handle(store_b.clone());
    let opts = EntryOptions::new(Duration::from_secs(60)).tag("p");
    a.insert("k", &1u32, &opts, a.read_stamp()).await.unwrap();
    let on = support::metrics_app::eventually(|| async {
        assert_eq!(b.get::<u32>("k").await, Some(1));
        store_b.tracks_floor_and_clock().then_some(())
    })
    .await;
    assert!(on.is_some(), "tracking was turned on");
    assert_eq!(b.get::<u32>("k").await, Some(1));
    proxy.drop_connections();
    a.invalidate_tags(["p"]).await.unwrap();
    // Until B's connection is back its reads fail (misses); none may show the entry.
    let seen = support::metrics_app::eventually(|| async {
        let got = b.get::<u32>("k").await;
        assert_eq!(got, None, "B served what A's invalidation hid");
        b.is_store_available().then_some(())
    })
    .await;
    assert!(seen.is_some());
    a.insert("k", &2u32, &opts, a.read_stamp()).await.unwrap();
    let again = support::metrics_app::eventually(|| async {
        assert_eq!(b.get::<u32>("k").await, Some(2));
        store_b.tracks_floor_and_clock().then_some(())
    })
    .await;
    assert!(again.is_some(), "tracking was turned on again");
    assert_eq!(b.get::<u32>("k").await, Some(2));
    assert_eq!(b.get::<u32>("k").await, Some(2));
    a.invalidate_tags(["p"]).await.unwrap();
    assert_eq!(
        b.get::<u32>("k").await,
        None,
        "tracked again after the reconnection"
    );
}
