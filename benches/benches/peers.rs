//! The hit path of Larder beside the other Rust cache layers, on the same router (one axum
//! route at `/api/report`) and the same 2 KiB JSON body, called with `oneshot` and read to the
//! end, each set up as its docs show with its in-memory store, and with Redis where it has one:
//!
//! * Larder: `MemoryStore` and `RedisStore`.
//! * tower-http-cache 0.6: `InMemoryBackend` (moka) and `RedisBackend`, behind axum's
//!   `HandleErrorLayer` (its error type is `BoxError`). It requires a `Sync` response body,
//!   which axum's handler bodies are not, so its origin is a `tower::service_fn` returning
//!   `Full<Bytes>` mounted with `route_service`; a hit never calls it.
//! * http-cache-tower-server 0.2: `MokaManager`, behind `HandleErrorLayer` as in its axum
//!   example, with `default_ttl` and `cache_by_default` in place of a `Cache-Control` header.
//! * axum-response-cache 0.5: `CacheLayer::with_lifespan` (a `cached::TtlCache` in a mutex),
//!   with `add_response_headers` so hits keep the `Content-Type`, as Larder's do.
//!
//! hitbox-tower is left out: its dependencies pin `regex` below 1.13 and `thiserror` at or
//! below 2.0.18, under the versions this workspace locks (see README.md).
//!
//! Before timing, each layer's set-up checks that repeated requests no longer reach the origin.
//! After criterion's figures, each peer is timed against Larder on the same store in
//! interleaved rounds (`benches::paired`); a ratio above 1 means the peer's hit costs more.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    BoxError, Router,
    body::Body,
    error_handling::HandleErrorLayer,
    http::{Request, Response, StatusCode, Uri, header},
    routing::{MethodRouter, get},
};
use benches::{
    BODY_LEN, ROUTE, config, fetch, json_body, paired, print_paired, redis_connection, redis_store,
    runtime,
};
use bytes::Bytes;
use criterion::Criterion;
use http_body_util::Full;
use larder::{CacheHandle, MemoryStore, Rule};
use larder_testkit::RedisServer;
use tower::ServiceBuilder;

const TTL: Duration = Duration::from_secs(600);

/// The route's handler, counting its calls.
fn origin(body: Bytes, calls: Arc<AtomicU64>) -> MethodRouter {
    get(move || {
        calls.fetch_add(1, Ordering::Relaxed);
        let body = body.clone();
        async move { ([(header::CONTENT_TYPE, "application/json")], body) }
    })
}

/// The same handler as a plain tower service with a `Sync` body, for tower-http-cache.
fn origin_service(
    body: Bytes,
    calls: Arc<AtomicU64>,
) -> impl tower::Service<
    Request<Body>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ Sync
+ 'static {
    tower::service_fn(move |_req: Request<Body>| {
        calls.fetch_add(1, Ordering::Relaxed);
        let body = body.clone();
        async move {
            let res = Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(body))
                .expect("a response");
            Ok::<_, Infallible>(res)
        }
    })
}

async fn cache_error(err: BoxError) -> (StatusCode, String) {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("cache error: {err}"),
    )
}

/// Sends `uri` until the origin stops being called, and panics if it never does.
async fn warm(name: &str, app: &Router, uri: &Uri, calls: &AtomicU64) {
    for _ in 0..50 {
        assert_eq!(fetch(app, uri.clone()).await, BODY_LEN, "{name}: body");
        let before = calls.load(Ordering::Relaxed);
        for _ in 0..5 {
            assert_eq!(fetch(app, uri.clone()).await, BODY_LEN, "{name}: body");
        }
        if calls.load(Ordering::Relaxed) == before {
            return;
        }
        // Redis-backed layers may write after the response.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{name}: requests still reach the origin");
}

/// The route behind tower-http-cache on `backend`, as its docs set it up: the layer with a TTL,
/// behind `HandleErrorLayer` (its error type is `BoxError`), over the `Sync`-bodied origin.
fn tower_http_cache_app<B>(backend: B, body: Bytes, calls: Arc<AtomicU64>) -> Router
where
    B: tower_http_cache::backend::CacheBackend,
{
    let layer = tower_http_cache::CacheLayer::builder(backend)
        .ttl(TTL)
        .build();
    let service = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(cache_error))
        .layer(layer)
        .service(origin_service(body, calls));
    Router::new().route_service(ROUTE, service)
}

fn peers(c: &mut Criterion) {
    let rt = runtime();
    let redis = RedisServer::start();
    let url = redis.url();
    let body = json_body(BODY_LEN);
    let uri: Uri = ROUTE.parse().expect("a URI");
    let rule = || Rule::new("report").ttl(TTL);

    let mut apps: Vec<(&str, Router, Arc<AtomicU64>)> = Vec::new();
    let mut add = |name, make: &dyn Fn(Arc<AtomicU64>) -> Router| {
        let calls = Arc::new(AtomicU64::new(0));
        apps.push((name, make(Arc::clone(&calls)), calls));
    };

    add("uncached", &|calls| {
        Router::new().route(ROUTE, origin(body.clone(), calls))
    });

    let larder_memory = CacheHandle::builder(MemoryStore::new(64 * 1024 * 1024)).build();
    add("larder/memory", &|calls| {
        Router::new().route(
            ROUTE,
            origin(body.clone(), calls).layer(larder_memory.layer(rule())),
        )
    });

    add("tower-http-cache/memory", &|calls| {
        let backend = tower_http_cache::prelude::InMemoryBackend::new(10_000);
        tower_http_cache_app(backend, body.clone(), calls)
    });

    add("http-cache-tower-server/moka", &|calls| {
        let options = http_cache_tower_server::ServerCacheOptions {
            default_ttl: Some(TTL),
            cache_by_default: true,
            ..Default::default()
        };
        let layer =
            http_cache_tower_server::ServerCacheLayer::new(http_cache::MokaManager::default())
                .with_options(options);
        Router::new().route(
            ROUTE,
            origin(body.clone(), calls).layer(
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(cache_error))
                    .layer(layer),
            ),
        )
    });

    add("axum-response-cache/memory", &|calls| {
        let layer = axum_response_cache::CacheLayer::with_lifespan(TTL).add_response_headers();
        Router::new().route(ROUTE, origin(body.clone(), calls).layer(layer))
    });

    let larder_redis = rt.block_on(redis_store(&url, "peers"));
    let larder_redis = CacheHandle::builder(larder_redis)
        .namespace("peers")
        .build();
    add("larder/redis", &|calls| {
        Router::new().route(
            ROUTE,
            origin(body.clone(), calls).layer(larder_redis.layer(rule())),
        )
    });

    let conn = rt.block_on(redis_connection(&url));
    add("tower-http-cache/redis", &|calls| {
        let backend = tower_http_cache::prelude::RedisBackend::new(conn.clone());
        tower_http_cache_app(backend, body.clone(), calls)
    });

    let mut g = c.benchmark_group("peers_hit");
    for (name, app, calls) in &apps {
        if *name != "uncached" {
            rt.block_on(warm(name, app, &uri, calls));
        }
        g.bench_function(*name, |b| b.to_async(&rt).iter(|| fetch(app, uri.clone())));
    }
    g.finish();

    // Each peer against Larder on the same store, interleaved round by round.
    let app_of = |name: &str| {
        &apps
            .iter()
            .find(|(n, _, _)| *n == name)
            .expect("a layer of that name")
            .1
    };
    let smoke = benches::paired_run(&["paired/peers"]);
    let rounds = if smoke == Some(true) { 1 } else { 21 };
    for (larder, peer, calls) in [
        ("larder/memory", "axum-response-cache/memory", 2_000),
        ("larder/memory", "tower-http-cache/memory", 2_000),
        ("larder/memory", "http-cache-tower-server/moka", 200),
        ("larder/redis", "tower-http-cache/redis", 100),
    ]
    .into_iter()
    .filter(|_| smoke.is_some())
    {
        let calls = if smoke == Some(true) { 10 } else { calls };
        let (ours, theirs) = (app_of(larder), app_of(peer));
        let p = paired(
            &rt,
            rounds,
            calls,
            || fetch(ours, uri.clone()),
            || fetch(theirs, uri.clone()),
        );
        print_paired(peer, larder, &p, rounds, calls);
    }

    drop(apps);
    drop((larder_memory, larder_redis, conn));
    drop(rt);
    drop(redis);
}

// `criterion_group!` would define an undocumented `pub fn`; this is what it and
// `criterion_main!` expand to.
fn main() {
    let mut c = config();
    peers(&mut c);
    c.final_summary();
}
