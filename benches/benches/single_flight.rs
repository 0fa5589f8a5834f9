//! 200 concurrent requests for one cold key: one round spawns 200 `oneshot` calls of a URI
//! nobody has asked for before and waits for all of them. The origin takes 1 ms (a sleep), so
//! the requests overlap. Without a cache every request calls the origin; through Larder one
//! does and the others share its response (single-flight). After each bench the file prints
//! how many origin calls a round made on average.
//!
//! On the Redis store a few requests of a round can still call the origin: the leader's
//! flight ends when its response is ready, the Redis write lands a round trip later, and a
//! request whose lookup misses in between starts a new flight.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    http::{Uri, header},
    routing::{MethodRouter, get},
};
use benches::{BODY_LEN, ROUTE, config, fetch, json_body, redis_store, runtime};
use bytes::Bytes;
use criterion::Criterion;
use larder::{CacheHandle, MemoryStore, Rule};
use larder_testkit::RedisServer;
use tokio::task::JoinSet;

const CONCURRENCY: usize = 200;

/// The route's handler: counts its calls, then answers after 1 ms.
fn slow_origin(body: Bytes, calls: Arc<AtomicU64>) -> MethodRouter {
    get(move || {
        calls.fetch_add(1, Ordering::Relaxed);
        let body = body.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            ([(header::CONTENT_TYPE, "application/json")], body)
        }
    })
}

/// One round: `CONCURRENCY` requests for a new key, all at once.
async fn round(app: Router, counter: Arc<AtomicU64>) {
    let n = counter.fetch_add(1, Ordering::Relaxed);
    let uri: Uri = format!("{ROUTE}?n={n}").parse().expect("a URI");
    let mut set = JoinSet::new();
    for _ in 0..CONCURRENCY {
        let app = app.clone();
        let uri = uri.clone();
        set.spawn(async move { fetch(&app, uri).await });
    }
    while let Some(done) = set.join_next().await {
        assert_eq!(done.expect("a request task"), BODY_LEN);
    }
}

fn single_flight(c: &mut Criterion) {
    let rt = runtime();
    let redis = RedisServer::start();
    let body = json_body(BODY_LEN);
    let rule = || Rule::new("report").ttl(Duration::from_secs(600));

    let memory = CacheHandle::builder(MemoryStore::new(64 * 1024 * 1024)).build();
    let redis_cache = rt.block_on(redis_store(&redis.url(), "flight"));
    let redis_cache = CacheHandle::builder(redis_cache)
        .namespace("flight")
        .build();
    let cases: [(&str, Option<&CacheHandle>); 3] = [
        ("uncached", None),
        ("memory", Some(&memory)),
        ("redis", Some(&redis_cache)),
    ];

    let mut g = c.benchmark_group("single_flight_200");
    for (name, cache) in cases {
        let calls = Arc::new(AtomicU64::new(0));
        let route = slow_origin(body.clone(), Arc::clone(&calls));
        let route = match cache {
            Some(cache) => route.layer(cache.layer(rule())),
            None => route,
        };
        let app = Router::new().route(ROUTE, route);
        let rounds = Arc::new(AtomicU64::new(0));

        rt.block_on(round(app.clone(), Arc::clone(&rounds)));
        let first = calls.load(Ordering::Relaxed);
        // The memory store holds the entry before the leader's flight ends. The Redis store
        // writes after the response, so a request whose lookup answers between the two
        // becomes a new leader: a few origin calls per round, printed below.
        if name == "memory" {
            assert_eq!(
                first, 1,
                "{name}: one cold round called the origin {first} times"
            );
        }

        g.bench_function(name, |b| {
            b.to_async(&rt)
                .iter(|| round(app.clone(), Arc::clone(&rounds)))
        });
        let (calls, rounds) = (
            calls.load(Ordering::Relaxed),
            rounds.load(Ordering::Relaxed),
        );
        println!(
            "single_flight_200/{name}: {:.2} origin calls per round of {CONCURRENCY} ({calls} in {rounds} rounds)",
            calls as f64 / rounds as f64
        );
    }
    g.finish();

    drop((memory, redis_cache));
    drop(rt);
    drop(redis);
}

// `criterion_group!` would define an undocumented `pub fn`; this is what it and
// `criterion_main!` expand to.
fn main() {
    let mut c = config();
    single_flight(&mut c);
    c.final_summary();
}
