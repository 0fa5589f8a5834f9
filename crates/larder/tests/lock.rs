//! The cross-instance fill lock, against a real redis-server.

#![cfg(feature = "redis")]

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, body::Body, routing::get};
use http::Request;
use http_body_util::BodyExt;
use larder::{CacheHandle, Rule, store::RedisStore};
use larder_testkit::RedisServer;
use tower::ServiceExt;

async fn instance(url: &str, calls: &Arc<AtomicUsize>, lock: bool) -> Router {
    let store = RedisStore::builder(url)
        .namespace("t")
        .build()
        .await
        .unwrap();
    let mut builder = CacheHandle::builder(store).namespace("t").x_cache();
    if lock {
        builder = builder.distributed_lock(Duration::from_secs(3));
    }
    let cache = builder.build();
    let c = Arc::clone(calls);
    Router::new().route(
        "/report",
        get(move || {
            c.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "expensive report"
            }
        })
        .layer(cache.layer(Rule::new("report").ttl(Duration::from_secs(60)))),
    )
}

async fn load(app: Router) -> String {
    let res = app
        .oneshot(Request::get("/report").body(Body::empty()).unwrap())
        .await
        .unwrap();
    String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_with_200_concurrent_misses_make_one_origin_call() {
    let redis = RedisServer::restricted();
    let calls = Arc::new(AtomicUsize::new(0));
    let a = instance(&redis.url(), &calls, true).await;
    let b = instance(&redis.url(), &calls, true).await;
    let tasks: Vec<_> = (0..200)
        .map(|i| tokio::spawn(load(if i % 2 == 0 { a.clone() } else { b.clone() })))
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), "expensive report");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // The lock was released after the write (compare-and-delete), not left to expire.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(redis.cli(&["--scan", "--pattern", "t:l:*"]).trim(), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_lock_each_instance_calls_once() {
    let redis = RedisServer::restricted();
    let calls = Arc::new(AtomicUsize::new(0));
    let a = instance(&redis.url(), &calls, false).await;
    let b = instance(&redis.url(), &calls, false).await;
    let tasks: Vec<_> = (0..200)
        .map(|i| tokio::spawn(load(if i % 2 == 0 { a.clone() } else { b.clone() })))
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), "expensive report");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "in-process single-flight only"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holder_costs_at_most_the_bounded_wait() {
    let redis = RedisServer::restricted();
    let calls = Arc::new(AtomicUsize::new(0));
    let store = RedisStore::builder(redis.url())
        .namespace("t")
        .build()
        .await
        .unwrap();
    let cache = CacheHandle::builder(store)
        .namespace("t")
        .distributed_lock(Duration::from_millis(400))
        .build();
    let c = Arc::clone(&calls);
    let app = Router::new().route(
        "/report",
        get(move || {
            c.fetch_add(1, Ordering::SeqCst);
            async { "report" }
        })
        .layer(cache.layer(Rule::new("report").ttl(Duration::from_secs(60)))),
    );
    // Fill once to learn the entry's key, then purge and plant a lock whose holder never
    // comes back (as if its process died mid-call).
    assert_eq!(load(app.clone()).await, "report");
    cache.purge().await.unwrap();
    let keys = redis.cli(&["--scan", "--pattern", "t:e:*"]);
    let hex = keys.trim().rsplit(':').next().unwrap().to_owned();
    redis.cli(&["SET", &format!("t:l:{hex}"), "dead-holder", "PX", "60000"]);
    let waited = std::time::Instant::now();
    assert_eq!(load(app).await, "report");
    let took = waited.elapsed();
    assert!(
        took >= Duration::from_millis(380),
        "it waited for the holder: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "but not forever: {took:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // A holder whose lock was taken over never deletes the other's lock.
    assert_eq!(
        redis.cli(&["GET", &format!("t:l:{hex}")]).trim(),
        "dead-holder"
    );
}

/// A key whose response proved uncacheable leads no flight, and takes no fill lock either:
/// its misses go to the service side by side instead of queueing behind one another's lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misses_of_a_key_known_to_be_uncacheable_take_no_fill_lock() {
    // `INFO` is a @dangerous command: this server is not the locked-down kind.
    let redis = RedisServer::start();
    let store = RedisStore::builder(redis.url())
        .namespace("t")
        .build()
        .await
        .unwrap();
    let cache = CacheHandle::builder(store)
        .namespace("t")
        .distributed_lock(Duration::from_secs(3))
        .build();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let app = Router::new().route(
        "/report",
        get(move || {
            c.fetch_add(1, Ordering::SeqCst);
            async { ([("set-cookie", "session=1")], "for one client") }
        })
        .layer(cache.layer(Rule::new("report").ttl(Duration::from_secs(60)))),
    );
    assert_eq!(load(app.clone()).await, "for one client");
    let before = redis.command_calls("set");
    let tasks: Vec<_> = (0..20).map(|_| tokio::spawn(load(app.clone()))).collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), "for one client");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 21);
    assert_eq!(
        redis.command_calls("set"),
        before,
        "no lock taken, nothing stored"
    );
}
