//! A batch read of 10 typed values (`CacheHandle::get_many`, one store call: one `MGET` on
//! Redis) against 10 `CacheHandle::get` calls one after the other, on the `MemoryStore`, the
//! `RedisStore` and the `TieredStore` (whose L1 answers both).

use std::time::Duration;

use benches::{config, redis_store, runtime, tiered_store};
use criterion::Criterion;
use larder::{CacheHandle, EntryOptions, MemoryStore};
use larder_testkit::RedisServer;

const KEYS: [&str; 10] = [
    "metrics:42:finance",
    "metrics:42:sales",
    "metrics:42:support",
    "metrics:42:marketing",
    "metrics:42:product",
    "chat:42:stats",
    "profile:42",
    "connectors:42",
    "sessions:42:1",
    "sessions:42:2",
];

/// Stores a 200-byte string under each of [`KEYS`] and waits until all are readable.
async fn fill(cache: &CacheHandle) {
    let value = "v".repeat(200);
    let options = EntryOptions::new(Duration::from_secs(3600));
    for key in KEYS {
        cache
            .insert(key, &value, &options, cache.read_stamp())
            .await
            .expect("insert");
    }
    for _ in 0..100 {
        let got: Vec<Option<String>> = cache.get_many(&KEYS).await;
        if got.iter().all(|v| v.as_deref() == Some(value.as_str())) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the values never became readable");
}

fn batch(c: &mut Criterion) {
    let rt = runtime();
    let redis = RedisServer::start();
    let url = redis.url();

    let memory = CacheHandle::new(MemoryStore::new(64 * 1024 * 1024));
    let redis_cache = CacheHandle::builder(rt.block_on(redis_store(&url, "batch")))
        .namespace("batch")
        .build();
    let tiered = CacheHandle::builder(rt.block_on(tiered_store(&url, "batch-tiered")))
        .namespace("batch-tiered")
        .build();

    let mut g = c.benchmark_group("read_10");
    for (name, cache) in [
        ("memory", &memory),
        ("redis", &redis_cache),
        ("tiered", &tiered),
    ] {
        rt.block_on(fill(cache));
        g.bench_function(format!("{name}/get_many"), |b| {
            b.to_async(&rt).iter(|| async {
                let got: Vec<Option<String>> = cache.get_many(&KEYS).await;
                assert!(got.iter().all(Option::is_some));
            })
        });
        g.bench_function(format!("{name}/get_x10"), |b| {
            b.to_async(&rt).iter(|| async {
                for key in KEYS {
                    let got: Option<String> = cache.get(key).await;
                    assert!(got.is_some());
                }
            })
        });
    }
    g.finish();

    drop((memory, redis_cache, tiered));
    drop(rt);
    drop(redis);
}

// `criterion_group!` would define an undocumented `pub fn`; this is what it and
// `criterion_main!` expand to.
fn main() {
    let mut c = config();
    batch(&mut c);
    c.final_summary();
}
