//! Response times in the statistics: per rule, hits apart from misses, on an in-process store
//! and on Redis; typed calls per category; a background refresh is not a client's time; and
//! the statistics start again from nothing when reset.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use larder::{CacheHandle, EntryOptions, MemoryStore, Rule};
use tower::{Layer, Service, ServiceExt, service_fn};

/// How long the origin takes to answer.
const ORIGIN: Duration = Duration::from_millis(30);

/// A service behind `cache` with one rule, `items`, whose origin takes [`ORIGIN`] (real time)
/// and counts its calls; `ttl` and `swr` are the rule's freshness and stale-while-revalidate.
fn service(
    cache: &CacheHandle,
    calls: &Arc<AtomicUsize>,
    ttl: Duration,
    swr: Duration,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<impl http_body::Body<Data = Bytes, Error = impl std::fmt::Debug>>,
    Error = Infallible,
> + Clone {
    let calls = Arc::clone(calls);
    let origin = service_fn(move |_req: Request<Full<Bytes>>| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(ORIGIN).await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("v{n}")))))
        }
    });
    let rule = Rule::new("items").ttl(ttl).stale_while_revalidate(swr);
    cache.layer(rule).layer(origin)
}

async fn get<S, B>(svc: &S, uri: &str) -> String
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible> + Clone,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let res = svc
        .clone()
        .oneshot(Request::get(uri).body(Full::default()).unwrap())
        .await
        .unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

/// Three misses (three URLs) and six hits: the misses' times hold the origin's, the hits'
/// do not, and every counted lookup has its time.
async fn hits_and_misses_are_timed_apart(cache: CacheHandle) {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = service(&cache, &calls, Duration::from_secs(60), Duration::ZERO);
    for round in 0..3 {
        for item in 0..3 {
            get(&svc, &format!("/items/{item}")).await;
        }
        if round == 0 {
            // A miss is stored as its body is read; a network store's write lands after.
            let mut tries = 0;
            while cache.stats().routes["items"].stored < 3 && tries < 200 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                tries += 1;
            }
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let stats = cache.stats();
    let items = &stats.routes["items"];
    assert_eq!((items.misses, items.hits), (3, 6), "{items:?}");
    assert_eq!(items.miss_latency.count, 3, "{items:?}");
    assert_eq!(items.hit_latency.count, 6, "{items:?}");
    let origin_ms = ORIGIN.as_secs_f64() * 1000.0;
    let miss = &items.miss_latency;
    // A quantile is its bucket's midpoint: within 12.5% of the time it stands for.
    assert!(miss.p50_ms >= origin_ms * 0.875, "{miss:?}");
    assert!(
        miss.average_ms >= origin_ms && miss.max_ms >= origin_ms,
        "{miss:?}"
    );
    let hit = &items.hit_latency;
    assert!(
        hit.max_ms < origin_ms,
        "a hit never waits for the origin: {hit:?}"
    );
    assert!(
        hit.p50_ms <= hit.p95_ms && hit.p95_ms <= hit.max_ms,
        "{hit:?}"
    );
    // The total is every route's times together.
    assert_eq!(stats.total.miss_latency.count, 3);
    assert_eq!(stats.total.hit_latency.count, 6);
    assert_eq!(stats.total.miss_latency.max_ms, miss.max_ms);

    cache.reset_stats();
    let stats = cache.stats();
    let items = &stats.routes["items"];
    assert_eq!(
        (items.misses, items.hits, items.stored),
        (0, 0, 0),
        "{items:?}"
    );
    assert_eq!(items.hit_latency, Default::default());
    assert_eq!(stats.total.miss_latency, Default::default());
    // What the store holds is not touched: the next read is still a hit, counted afresh.
    get(&svc, "/items/0").await;
    let items = &cache.stats().routes["items"];
    assert_eq!((items.hits, items.hit_latency.count), (1, 1), "{items:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn on_the_memory_store_hits_and_misses_are_timed_apart() {
    hits_and_misses_are_timed_apart(CacheHandle::new(MemoryStore::default())).await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn on_redis_hits_and_misses_are_timed_apart() {
    let server = larder_testkit::RedisServer::start();
    let store = larder::store::RedisStore::builder(server.url())
        .namespace("times")
        .build()
        .await
        .unwrap();
    hits_and_misses_are_timed_apart(CacheHandle::new(store)).await;
}

/// A stale entry is answered at once (a hit's time) and its refresh runs in the background:
/// the refresh's call to the origin is nobody's response time.
#[tokio::test(start_paused = true)]
async fn a_background_refresh_is_not_a_clients_response_time() {
    let cache = CacheHandle::new(MemoryStore::default());
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = service(
        &cache,
        &calls,
        Duration::from_secs(1),
        Duration::from_secs(60),
    );
    assert_eq!(get(&svc, "/items/1").await, "v0");
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(get(&svc, "/items/1").await, "v0", "stale, served at once");
    // Let the refresh reach the origin and finish.
    let mut tries = 0;
    while cache.stats().routes["items"].stored < 2 && tries < 1000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        tries += 1;
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the refresh called the origin"
    );
    let items = &cache.stats().routes["items"];
    // A refresh is not counted as a miss either.
    assert_eq!((items.misses, items.stale), (1, 1), "{items:?}");
    assert_eq!(
        (items.miss_latency.count, items.hit_latency.count),
        (1, 1),
        "the first request's miss and the stale answer, not the refresh: {items:?}"
    );
}

#[tokio::test]
async fn typed_calls_count_under_their_category() {
    let cache = CacheHandle::new(MemoryStore::default());
    let assistant = EntryOptions::new(Duration::from_secs(1800))
        .tag("assistant:7")
        .category("assistant");
    let reply = EntryOptions::new(Duration::from_secs(86_400)).category("ai_reply");
    let plain = EntryOptions::new(Duration::from_secs(60));
    for _ in 0..3 {
        let _: String = cache
            .get_or_insert_with("assistant:7", &assistant, || async {
                tokio::time::sleep(ORIGIN).await;
                Ok::<_, Infallible>("config".to_owned())
            })
            .await
            .unwrap();
    }
    for _ in 0..2 {
        let items = [("reply:1", &reply), ("reply:2", &reply), ("other", &plain)];
        let _: Vec<u32> = cache
            .get_many_or_insert_with(&items, |missing| async move {
                Ok::<_, Infallible>(missing.iter().map(|&i| i as u32).collect())
            })
            .await
            .unwrap();
    }
    let stats = cache.stats();
    let a = &stats.routes["assistant"];
    assert_eq!((a.misses, a.hits, a.stored), (1, 2, 1), "{a:?}");
    assert_eq!((a.miss_latency.count, a.hit_latency.count), (1, 2), "{a:?}");
    assert!(
        a.miss_latency.max_ms >= ORIGIN.as_secs_f64() * 1000.0,
        "a miss's time holds its computation: {a:?}"
    );
    let r = &stats.routes["ai_reply"];
    assert_eq!((r.misses, r.hits, r.stored), (2, 2, 2), "{r:?}");
    assert_eq!((r.miss_latency.count, r.hit_latency.count), (2, 2), "{r:?}");
    let t = &stats.routes["typed"];
    assert_eq!((t.misses, t.hits, t.stored), (1, 1, 1), "{t:?}");
    assert!(!stats.routes.contains_key("assistant:7"));
}
