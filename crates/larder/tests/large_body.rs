//! A 50 MiB streamed body passes through uncached, and the layer never holds it whole.
//! (Alone in its binary: it measures this process's peak memory.)

mod support;

use std::{convert::Infallible, time::Duration};

use http::{Request, Response};
use http_body_util::BodyExt;
use larder::{CacheHandle, MemoryStore, Rule};
use support::Chunks;
use tower::{Layer, ServiceExt, service_fn};

/// Peak resident memory of this process, in bytes (Linux `VmHWM`).
fn peak_rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<usize>()
        .unwrap()
        * 1024
}

#[tokio::test]
async fn a_50_mib_streamed_body_passes_through_uncached_with_bounded_memory() {
    const TOTAL: usize = 50 * 1024 * 1024;
    let store = MemoryStore::default();
    let cache = CacheHandle::builder(store.clone()).x_cache().build();
    let svc = service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Chunks::new(TOTAL, 64 * 1024)))
    });
    let svc = cache
        .layer(Rule::new("big").ttl(Duration::from_secs(60)))
        .layer(svc);

    let before = peak_rss();
    let res = svc
        .clone()
        .oneshot(Request::get("/big").body(()).unwrap())
        .await
        .unwrap();
    // The length was unknown when the headers left, so the cache did not promise to store.
    assert_eq!(res.headers()["cache-status"], "larder; fwd=miss");
    let mut body = res.into_body();
    let mut received = 0;
    while let Some(frame) = body.frame().await {
        received += frame.unwrap().into_data().map_or(0, |d| d.len());
    }
    assert_eq!(received, TOTAL, "the client got every byte");
    let growth = peak_rss().saturating_sub(before);
    assert!(
        growth < 24 * 1024 * 1024,
        "peak memory grew by {} MiB while streaming 50 MiB (limit 8 MiB copied at most)",
        growth / (1024 * 1024)
    );
    assert_eq!(store.entry_count(), 0);
    let res = svc
        .oneshot(Request::get("/big").body(()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.headers()["x-cache"], "MISS");
}
