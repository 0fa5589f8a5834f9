//! Key building for a short and an 8 KiB URL.
//!
//! The HTTP key builder is internal to the layer, so it is timed two ways through the public
//! API: `CacheHandle::key` (the typed key: namespace plus the string, into a BLAKE3 digest),
//! and a `MemoryStore` hit through the layer for each URL beside the same URL without a
//! cache. The difference between the two URLs' hits, less the difference between their
//! uncached calls, is what the longer URL costs the key (query parsing and hashing).

use std::time::Duration;

use axum::http::Uri;
use benches::{BODY_LEN, ROUTE, app, config, fetch, json_body, runtime, warm};
use criterion::{BenchmarkId, Criterion};
use larder::{CacheHandle, MemoryStore, Rule};

/// A URL of exactly `len` bytes: the route plus a query of 40 parameters with long values.
fn long_url(len: usize) -> String {
    let mut url = format!("{ROUTE}?");
    let mut i = 0;
    while url.len() < len {
        if i > 0 {
            url.push('&');
        }
        url.push_str(&format!("filter{i}="));
        i += 1;
        let room = len.saturating_sub(url.len()).min(200);
        url.extend(std::iter::repeat_n('x', room));
    }
    url.truncate(len);
    url
}

fn key(c: &mut Criterion) {
    let rt = runtime();
    let short = format!("{ROUTE}?account=42&range=30d");
    let long = long_url(8 * 1024);
    assert_eq!(long.len(), 8 * 1024);
    let urls = [("short", short), ("8KiB", long)];

    let cache = CacheHandle::builder(MemoryStore::new(64 * 1024 * 1024)).build();
    let body = json_body(BODY_LEN);
    let plain = app(body.clone(), None);
    let cached = app(
        body,
        Some(cache.layer(Rule::new("report").ttl(Duration::from_secs(600)))),
    );

    let mut g = c.benchmark_group("key");
    for (name, url) in &urls {
        g.bench_with_input(BenchmarkId::new("typed", name), url, |b, url| {
            b.iter(|| cache.key(url))
        });
    }
    for (name, url) in &urls {
        let uri: Uri = url.parse().expect("a URI");
        rt.block_on(warm(&cached, &uri));
        g.bench_with_input(BenchmarkId::new("uncached", name), &uri, |b, uri| {
            b.to_async(&rt).iter(|| fetch(&plain, uri.clone()))
        });
        g.bench_with_input(BenchmarkId::new("memory_hit", name), &uri, |b, uri| {
            b.to_async(&rt).iter(|| fetch(&cached, uri.clone()))
        });
    }
    g.finish();
}

// `criterion_group!` would define an undocumented `pub fn`; this is what it and
// `criterion_main!` expand to.
fn main() {
    let mut c = config();
    key(&mut c);
    c.final_summary();
}
