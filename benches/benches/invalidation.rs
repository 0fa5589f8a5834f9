//! Tag invalidation with 1, 1,000 and 100,000 entries carrying the tag, on the `MemoryStore`
//! and the `RedisStore` (`CacheHandle::invalidate_tags`, one tag per call); and one call that
//! invalidates 1 or 2,000 tags, on one Redis and on a 3-master Cluster (`invalidate_many_tags`):
//! the tags' records are raised all at once on the multiplexed connection, so 2,000 tags cost
//! about one round trip per node, not one per tag.
//!
//! Larder's stores record an invalidation stamp per tag instead of finding the tagged entries,
//! so the time should not grow with their number. Each store holds its entries before the
//! first invalidation; the set-up checks that they are readable before and unreadable after.
//! Every timed call invalidates the same tag again, which costs what the first call costs
//! (one stamp written), since no store walks its entries.

use std::{sync::Arc, time::Duration};

use benches::{config, redis_store, runtime};
use criterion::{BenchmarkId, Criterion};
use larder::{CacheHandle, EntryOptions, MemoryStore};
use larder_testkit::{RedisCluster, RedisServer};
use tokio::task::JoinSet;

const TAG: &str = "report:all";
const COUNTS: [usize; 3] = [1, 1_000, 100_000];

/// Stores `n` entries tagged [`TAG`] under `k0`..`k{n-1}`: one typed value stored through the
/// handle, then its entry written under each key straight to the store, 1,000 at a time.
async fn populate(cache: &CacheHandle, n: usize) {
    let value = "x".repeat(200);
    let options = EntryOptions::new(Duration::from_secs(3600)).tag(TAG);
    cache
        .insert("seed", &value, &options, cache.read_stamp())
        .await
        .expect("insert");
    let seed = cache.key("seed");
    let mut entry = None;
    for _ in 0..100 {
        entry = cache.store().get(&seed).await.expect("store get").visible();
        if entry.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let entry = entry.expect("the seed entry was stored");
    let mut i = 0;
    while i < n {
        let mut set = JoinSet::new();
        for j in i..(i + 1_000).min(n) {
            set.spawn(
                cache
                    .store()
                    .put(cache.key(&format!("k{j}")), Arc::clone(&entry)),
            );
        }
        while let Some(done) = set.join_next().await {
            done.expect("a put task").expect("put");
        }
        i += 1_000;
    }
    for j in [0, n - 1] {
        let got: Option<String> = cache.get(&format!("k{j}")).await;
        assert_eq!(got.as_deref(), Some(value.as_str()), "k{j} readable before");
    }
}

async fn check_invalidated(cache: &CacheHandle, n: usize) {
    for j in [0, n - 1] {
        let got: Option<String> = cache.get(&format!("k{j}")).await;
        assert_eq!(
            got, None,
            "k{j} still readable after its tag was invalidated"
        );
    }
}

fn invalidation(c: &mut Criterion) {
    let rt = runtime();
    let redis = RedisServer::start();
    let url = redis.url();

    let mut g = c.benchmark_group("invalidate_tag");
    for n in COUNTS {
        let memory = CacheHandle::new(MemoryStore::new(256 * 1024 * 1024));
        let ns = format!("inv{n}");
        let redis_cache = CacheHandle::builder(rt.block_on(redis_store(&url, &ns)))
            .namespace(&ns)
            .store_timeout(Duration::from_secs(5))
            .build();
        for (name, cache) in [("memory", &memory), ("redis", &redis_cache)] {
            rt.block_on(populate(cache, n));
            g.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.to_async(&rt)
                    .iter(|| async { cache.invalidate_tags([TAG]).await.expect("invalidate") })
            });
            // Once more outside criterion, which skips the timed loop under a name filter.
            rt.block_on(cache.invalidate_tags([TAG]))
                .expect("invalidate");
            rt.block_on(check_invalidated(cache, n));
        }
    }
    g.finish();

    let cluster = RedisCluster::start();
    let cluster_cache = CacheHandle::builder(rt.block_on(async {
        larder::store::RedisStore::cluster(cluster.urls())
            .namespace("many")
            .build()
            .await
            .expect("connect the Cluster")
    }))
    .namespace("many")
    .store_timeout(Duration::from_secs(5))
    .build();
    let single_cache = CacheHandle::builder(rt.block_on(redis_store(&url, "many")))
        .namespace("many")
        .store_timeout(Duration::from_secs(5))
        .build();
    let mut g = c.benchmark_group("invalidate_many_tags");
    for tags in [1usize, 2_000] {
        let names: Vec<String> = (0..tags).map(|i| format!("user:{i}")).collect();
        for (name, cache) in [("redis", &single_cache), ("cluster3", &cluster_cache)] {
            g.bench_with_input(BenchmarkId::new(name, tags), &tags, |b, _| {
                b.to_async(&rt).iter(|| async {
                    cache
                        .invalidate_tags(names.iter().cloned())
                        .await
                        .expect("invalidate")
                })
            });
        }
    }
    g.finish();

    drop(rt);
    drop(redis);
    drop(cluster);
}

// `criterion_group!` would define an undocumented `pub fn`; this is what it and
// `criterion_main!` expand to.
fn main() {
    let mut c = config();
    invalidation(&mut c);
    c.final_summary();
}
