//! Set-up shared by Larder's criterion benches: the runtime, the criterion settings, the
//! router with its 2 KiB JSON route, and the Redis-backed stores.
//!
//! Everything here runs outside the timed loops. The benches themselves are in `benches/`,
//! one file per subject; `README.md` beside this crate has the command and the figures.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Body,
    http::{Request, Uri, header},
    routing::{MethodRouter, get},
};
use bytes::Bytes;
use criterion::Criterion;
use http_body_util::BodyExt;
use larder::{
    CacheLayer,
    store::{RedisStore, TieredStore},
};
use tower::ServiceExt;

/// The size of the benchmark route's JSON body.
pub const BODY_LEN: usize = 2 * 1024;

/// The path of the benchmark route.
pub const ROUTE: &str = "/api/report";

/// Criterion settings that keep the whole suite to a few minutes on a 2-core machine:
/// 1 s of warm-up, 2 s of measurement and 30 samples per bench.
pub fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .configure_from_args()
}

/// The runtime the benches drive their futures on, built once outside every timed loop:
/// multi-threaded with two workers, as an axum server on this machine would run.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build the tokio runtime")
}

/// A JSON document of exactly `len` bytes (an array of report rows, padded with spaces),
/// shaped like the dashboard's responses.
pub fn json_body(len: usize) -> Bytes {
    let mut out = String::with_capacity(len + 64);
    out.push('[');
    let mut i = 0u32;
    loop {
        let row = format!(
            "{}{{\"id\":{i},\"account\":\"acct-{:04}\",\"revenue\":{}.{:02},\"status\":\"settled\"}}",
            if i == 0 { "" } else { "," },
            i * 7 % 1000,
            1000 + i * 37,
            i % 100
        );
        if out.len() + row.len() + 1 > len {
            break;
        }
        out.push_str(&row);
        i += 1;
    }
    out.push(']');
    while out.len() < len {
        out.push(' ');
    }
    debug_assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok());
    Bytes::from(out)
}

/// The handler of the benchmark route: `200` with `body` as `application/json`.
pub fn origin(body: Bytes) -> MethodRouter {
    get(move || {
        let body = body.clone();
        async move { ([(header::CONTENT_TYPE, "application/json")], body) }
    })
}

/// A router with one route at [`ROUTE`] returning `body`, behind `layer` when given.
pub fn app(body: Bytes, layer: Option<CacheLayer>) -> Router {
    let route = origin(body);
    let route = match layer {
        Some(layer) => route.layer(layer),
        None => route,
    };
    Router::new().route(ROUTE, route)
}

/// Sends `GET uri` through `app` with `oneshot` and reads the whole body; returns its length.
/// This is what every timed iteration of the HTTP benches does.
pub async fn fetch(app: &Router, uri: Uri) -> usize {
    let req = Request::get(uri)
        .body(Body::empty())
        .expect("a GET request");
    let res = app.clone().oneshot(req).await.expect("infallible router");
    let body = res.into_body().collect().await.expect("body").to_bytes();
    body.len()
}

/// Sends `GET uri` through `app` and returns the `Cache-Status` header (empty when absent)
/// and the body: for the checks the set-up makes before timing anything.
pub async fn probe(app: &Router, uri: Uri) -> (String, Bytes) {
    let req = Request::get(uri)
        .body(Body::empty())
        .expect("a GET request");
    let res = app.clone().oneshot(req).await.expect("infallible router");
    let status = res
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = res.into_body().collect().await.expect("body").to_bytes();
    (status, body)
}

/// Sends `uri` until the cache answers it with a hit, and panics if it never does: a hit
/// bench must time hits.
pub async fn warm(app: &Router, uri: &Uri) {
    for _ in 0..50 {
        let (status, _) = probe(app, uri.clone()).await;
        if status.contains("; hit") {
            return;
        }
        // The Redis store writes after the response; give the write time to land.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{uri} never became a hit");
}

/// Criterion's flags that take a value, so that the value is not taken for a filter.
const VALUE_FLAGS: &[&str] = &[
    "--color",
    "-c",
    "--save-baseline",
    "-s",
    "--baseline",
    "-b",
    "--baseline-lenient",
    "--load-baseline",
    "--sample-size",
    "--warm-up-time",
    "--measurement-time",
    "--nresamples",
    "--noise-threshold",
    "--confidence-level",
    "--significance-level",
    "--profile-time",
    "--plotting-backend",
    "--output-format",
    "--format",
];

/// Whether a run with these arguments (what cargo passes to a bench binary) selects any of
/// `names`: true without a filter, or when a filter is part of one of the names (criterion's
/// filters are substrings, or regular expressions that here are taken as substrings).
pub fn selected(args: &[String], names: &[&str]) -> bool {
    let mut filters = Vec::new();
    let mut skip_value = false;
    for arg in args {
        if skip_value {
            skip_value = false;
        } else if arg.starts_with('-') {
            skip_value = VALUE_FLAGS.contains(&arg.as_str());
        } else {
            filters.push(arg.as_str());
        }
    }
    filters.is_empty() || filters.iter().any(|f| names.iter().any(|n| n.contains(f)))
}

/// How the interleaved comparisons of a bench binary run: `None` when a filter selects none
/// of `names`; otherwise whether this is a smoke run (no `--bench`: `cargo test --benches`),
/// in which one round of 10 calls only shows that the code runs.
pub fn paired_run(names: &[&str]) -> Option<bool> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") || !selected(&args, names) {
        return None;
    }
    Some(!args.iter().any(|a| a == "--bench"))
}

/// The ratio of two paths' costs, measured by interleaving them (see [`paired`]).
#[derive(Debug, Clone, Copy)]
pub struct Paired {
    /// The median time per call of the baseline, over the rounds.
    pub base: Duration,
    /// The median time per call of the path compared with it.
    pub other: Duration,
    /// The median over the rounds of `other / base`, each round's two times taken back to back.
    pub ratio: f64,
    /// The lowest and highest ratio of a round.
    pub range: (f64, f64),
}

/// Times `base` and `other` in `rounds` alternating rounds of `calls` calls each (the order
/// swaps every round) and compares them round by round: on a shared machine whose speed drifts
/// over seconds, two criterion benches timed a minute apart may not see the same machine,
/// but two halves of one round do. Each call's result goes through `black_box`.
pub fn paired<A, FA, B, FB>(
    rt: &tokio::runtime::Runtime,
    rounds: usize,
    calls: usize,
    mut base: A,
    mut other: B,
) -> Paired
where
    A: FnMut() -> FA,
    FA: Future<Output = usize>,
    B: FnMut() -> FB,
    FB: Future<Output = usize>,
{
    let mut time = |which: bool| {
        rt.block_on(async {
            let started = Instant::now();
            for _ in 0..calls {
                let n = if which { other().await } else { base().await };
                std::hint::black_box(n);
            }
            started.elapsed() / calls as u32
        })
    };
    let mut bases = Vec::with_capacity(rounds);
    let mut others = Vec::with_capacity(rounds);
    let mut ratios = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let (b, o) = if round % 2 == 0 {
            let b = time(false);
            (b, time(true))
        } else {
            let o = time(true);
            (time(false), o)
        };
        bases.push(b);
        others.push(o);
        ratios.push(o.as_secs_f64() / b.as_secs_f64().max(1e-12));
    }
    bases.sort();
    others.sort();
    ratios.sort_by(f64::total_cmp);
    Paired {
        base: bases[rounds / 2],
        other: others[rounds / 2],
        ratio: ratios[rounds / 2],
        range: (ratios[0], ratios[rounds - 1]),
    }
}

/// Prints a [`Paired`] result: `paired <other> / <base>: 1.85x (...)`.
pub fn print_paired(other: &str, base: &str, p: &Paired, rounds: usize, calls: usize) {
    println!(
        "paired {other} / {base}: {:.2}x (median of {rounds} interleaved rounds of {calls} calls; \
         rounds {:.2}x-{:.2}x; {:.3?} against {:.3?} per call){}",
        p.ratio,
        p.range.0,
        p.range.1,
        p.other,
        p.base,
        if rounds == 1 {
            " (smoke run: the figures mean nothing)"
        } else {
            ""
        }
    );
}

/// A Redis store at `url` under `namespace`.
pub async fn redis_store(url: &str, namespace: &str) -> RedisStore {
    RedisStore::builder(url)
        .namespace(namespace)
        .build()
        .await
        .expect("connect the Redis store")
}

/// A tiered store (default L1) over a Redis store at `url`, once its backplane is subscribed
/// (before that the L1 is not used).
pub async fn tiered_store(url: &str, namespace: &str) -> TieredStore {
    let store = TieredStore::builder(redis_store(url, namespace).await).build();
    for _ in 0..250 {
        if store.is_coherent() {
            return store;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the tiered store's backplane never subscribed to {url}");
}

/// A plain multiplexed connection to `url` with the same client crate the Redis store uses,
/// for the raw `GET` floor.
pub async fn redis_connection(url: &str) -> redis::aio::ConnectionManager {
    let client = redis::Client::open(url).expect("a Redis URL");
    redis::aio::ConnectionManager::new(client)
        .await
        .expect("connect to Redis")
}

/// The one key under `pattern` in the Redis at `conn` (`KEYS` is fine here: set-up only, on
/// a server the bench started).
pub async fn only_key(conn: &mut redis::aio::ConnectionManager, pattern: &str) -> String {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(conn)
        .await
        .expect("KEYS");
    match keys.as_slice() {
        [key] => key.clone(),
        _ => panic!("expected one key under {pattern}, found {keys:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_body_is_valid_json_of_the_exact_length() {
        for len in [200, BODY_LEN, 64 * 1024] {
            let body = json_body(len);
            assert_eq!(body.len(), len);
            serde_json::from_slice::<serde_json::Value>(&body).unwrap();
        }
    }
}
