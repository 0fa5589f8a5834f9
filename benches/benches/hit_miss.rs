//! Hit and miss paths in process: one axum route returning a 2 KiB JSON body, called with
//! `oneshot` and read to the end, with no cache (the floor), and through Larder on the
//! in-process `MemoryStore`, the `RedisStore` and the `TieredStore` (L1 in process, L2 in
//! Redis). A raw `GET` of the stored bytes with the same Redis client is the floor of a Redis
//! hit. Redis is a throwaway `redis-server` started by `larder-testkit`.
//!
//! After criterion's figures, each hit path is timed again against its floor in interleaved
//! rounds (`benches::paired`), and the median ratio is printed: the ratios the targets are
//! about, without the drift of a shared machine between two benches.
//!
//! A miss asks for a key never seen before (`?n=<counter>`; the query is part of the key), so
//! it pays for the origin call, the copy of the body and the store write. The Redis store
//! writes after the response has gone, so its miss figure excludes the write's round trip.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use axum::http::Uri;
use benches::{
    BODY_LEN, ROUTE, app, config, fetch, json_body, only_key, paired, print_paired,
    redis_connection, redis_store, runtime, tiered_store, warm,
};
use criterion::Criterion;
use larder::{CacheHandle, MemoryStore, Rule};
use larder_testkit::RedisServer;

fn rule() -> Rule {
    Rule::new("report").ttl(Duration::from_secs(600))
}

/// A URI no request has used before.
fn fresh_uri(counter: &AtomicU64) -> Uri {
    let n = counter.fetch_add(1, Ordering::Relaxed);
    format!("{ROUTE}?n={n}").parse().expect("a URI")
}

/// A `GET` of `key` with the same Redis client the store uses: the floor of a Redis hit.
async fn raw_get(mut conn: redis::aio::ConnectionManager, key: &str) -> usize {
    let value: Vec<u8> = redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("GET");
    value.len()
}

fn hit_miss(c: &mut Criterion) {
    let rt = runtime();
    let redis = RedisServer::start();
    let url = redis.url();
    let body = json_body(BODY_LEN);
    let uri: Uri = ROUTE.parse().expect("a URI");
    let counter = AtomicU64::new(0);

    let plain = app(body.clone(), None);

    let memory = CacheHandle::builder(MemoryStore::new(64 * 1024 * 1024)).build();
    let memory = app(body.clone(), Some(memory.layer(rule())));
    rt.block_on(warm(&memory, &uri));

    let tiered = rt.block_on(tiered_store(&url, "tiered"));
    let tiered = CacheHandle::builder(tiered).namespace("tiered").build();
    let tiered = app(body.clone(), Some(tiered.layer(rule())));
    rt.block_on(warm(&tiered, &uri));

    let redis_cache = rt.block_on(redis_store(&url, "redis"));
    let redis_cache = CacheHandle::builder(redis_cache).namespace("redis").build();
    let redis_app = app(body.clone(), Some(redis_cache.layer(rule())));
    rt.block_on(warm(&redis_app, &uri));
    let mut conn = rt.block_on(redis_connection(&url));
    let stored = rt.block_on(only_key(&mut conn, "redis:e:*"));

    let mut g = c.benchmark_group("hit");
    g.bench_function("uncached", |b| {
        b.to_async(&rt).iter(|| fetch(&plain, uri.clone()))
    });
    g.bench_function("memory", |b| {
        b.to_async(&rt).iter(|| fetch(&memory, uri.clone()))
    });
    g.bench_function("tiered", |b| {
        b.to_async(&rt).iter(|| fetch(&tiered, uri.clone()))
    });
    g.bench_function("redis", |b| {
        b.to_async(&rt).iter(|| fetch(&redis_app, uri.clone()))
    });
    g.bench_function("redis_raw_get", |b| {
        b.to_async(&rt).iter(|| raw_get(conn.clone(), &stored))
    });
    g.finish();

    // The same hit paths against their floors, interleaved round by round (`benches::paired`).
    let names = ["paired/hit/memory", "paired/hit/tiered", "paired/hit/redis"];
    if let Some(smoke) = benches::paired_run(&names) {
        let (rounds, calls) = if smoke { (1, 10) } else { (21, 2_000) };
        for (name, app) in [("hit/memory", &memory), ("hit/tiered", &tiered)] {
            let p = paired(
                &rt,
                rounds,
                calls,
                || fetch(&plain, uri.clone()),
                || fetch(app, uri.clone()),
            );
            print_paired(name, "hit/uncached", &p, rounds, calls);
        }
        let calls = if smoke { 10 } else { 100 };
        let p = paired(
            &rt,
            rounds,
            calls,
            || raw_get(conn.clone(), &stored),
            || fetch(&redis_app, uri.clone()),
        );
        print_paired("hit/redis", "hit/redis_raw_get", &p, rounds, calls);
    }

    let mut g = c.benchmark_group("miss");
    g.bench_function("memory", |b| {
        b.to_async(&rt).iter(|| fetch(&memory, fresh_uri(&counter)))
    });
    g.bench_function("tiered", |b| {
        b.to_async(&rt).iter(|| fetch(&tiered, fresh_uri(&counter)))
    });
    g.bench_function("redis", |b| {
        b.to_async(&rt)
            .iter(|| fetch(&redis_app, fresh_uri(&counter)))
    });
    g.finish();

    // The stores' background tasks end with the runtime, before the server goes.
    drop((plain, memory, tiered, redis_app, redis_cache, conn));
    drop(rt);
    drop(redis);
}

// `criterion_group!` would define an undocumented `pub fn`; this is what it and
// `criterion_main!` expand to.
fn main() {
    let mut c = config();
    hit_miss(&mut c);
    c.final_summary();
}
