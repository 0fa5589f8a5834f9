//! The hit paths in a plain loop, for instruction counts: a count of instructions does not
//! drift with the load of a shared machine the way time does.
//!
//! ```sh
//! cargo build --release -p benches --example hit_loop
//! B=target/release/examples/hit_loop
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null $B memory 0      # set-up only
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null $B memory 20000  # set-up + 20,000 hits
//! ```
//!
//! The difference of the two totals divided by the number of hits is the cost of one. Modes:
//! `uncached` (the route with no cache), `memory` (a `MemoryStore` hit), `redis` (a
//! `RedisStore` hit) and `raw_get` (a `GET` of the stored value with the same Redis client).
//! Each request is sent with `oneshot` and read to the end, as in `hit_miss.rs`, on a
//! current-thread runtime; Redis is a throwaway `redis-server` started by `larder-testkit`.

use std::time::Duration;

use axum::http::Uri;
use benches::{
    BODY_LEN, ROUTE, app, fetch, json_body, only_key, redis_connection, redis_store, warm,
};
use larder::{CacheHandle, MemoryStore, Rule};
use larder_testkit::RedisServer;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(mode), Some(n)) = (
        args.next(),
        args.next().and_then(|n| n.parse::<usize>().ok()),
    ) else {
        eprintln!("usage: hit_loop uncached|memory|redis|raw_get N");
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let redis = RedisServer::start();
    let url = redis.url();
    let body = json_body(BODY_LEN);
    let uri: Uri = ROUTE.parse().expect("a URI");
    let rule = Rule::new("report").ttl(Duration::from_secs(600));
    let router = match mode.as_str() {
        "uncached" => app(body, None),
        "memory" => {
            let cache = CacheHandle::builder(MemoryStore::new(64 << 20)).build();
            app(body, Some(cache.layer(rule)))
        }
        "redis" | "raw_get" => {
            let store = rt.block_on(redis_store(&url, "redis"));
            let cache = CacheHandle::builder(store).namespace("redis").build();
            app(body, Some(cache.layer(rule)))
        }
        other => {
            eprintln!("unknown mode {other}");
            std::process::exit(2);
        }
    };
    let total = rt.block_on(async {
        if mode != "uncached" {
            warm(&router, &uri).await;
        }
        let mut conn = redis_connection(&url).await;
        let stored = if mode == "raw_get" {
            only_key(&mut conn, "redis:e:*").await
        } else {
            String::new()
        };
        // Warm the allocator and the connection: the set-up run does this too.
        for _ in 0..100 {
            fetch(&router, uri.clone()).await;
        }
        let mut total = 0;
        for _ in 0..n {
            total += if mode == "raw_get" {
                let value: Vec<u8> = redis::cmd("GET")
                    .arg(&stored)
                    .query_async(&mut conn)
                    .await
                    .expect("GET");
                value.len()
            } else {
                fetch(&router, uri.clone()).await
            };
        }
        total
    });
    std::hint::black_box(total);
    drop(rt);
    drop(redis);
}
