//! Entry encoding and decoding (`larder::codec`, the envelope a Redis store keeps) for bodies
//! of 200 B, 2 KiB, 64 KiB and 1 MiB.
//!
//! The codec has no switch: it compresses with LZ4 every payload over
//! `codec::COMPRESS_OVER` (1 KiB). So the 200 B body is the uncompressed path, and each size
//! is timed with a JSON body (compresses well) and with random bytes (LZ4 runs but cannot
//! shrink them). The entries are real ones: the responses of an axum route, captured as the
//! layer hands them to the store. Decoding is timed with `codec::decode_bytes`, as the Redis
//! store reads (the body and header values become slices of the value, not copies). The file
//! prints each envelope's size.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    http::{Uri, header},
    routing::get,
};
use benches::{ROUTE, config, fetch, json_body, runtime};
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use larder::{
    CacheHandle, CacheKey, Entry, MemoryStore, Rule, Store, StoreFuture, codec,
    store::{Entries, Invalidation, Read},
};

/// An entry as the layer hands it to the store.
type Stored = (CacheKey, Arc<Entry>);

/// A memory store that keeps a copy of the last entry written, to get real entries out of
/// the layer.
#[derive(Clone, Default)]
struct Capture {
    inner: MemoryStore,
    last: Arc<Mutex<Option<Stored>>>,
}

impl Entries for Capture {
    fn name(&self) -> &'static str {
        "capture"
    }

    fn get(&self, key: &CacheKey) -> StoreFuture<Read> {
        self.inner.get(key)
    }

    fn get_many(&self, keys: &[CacheKey]) -> StoreFuture<Vec<Read>> {
        self.inner.get_many(keys)
    }

    fn put(&self, key: CacheKey, entry: Arc<Entry>) -> StoreFuture<()> {
        *self.last.lock().expect("not poisoned") = Some((key.clone(), Arc::clone(&entry)));
        self.inner.put(key, entry)
    }

    fn remove(&self, key: &CacheKey) -> StoreFuture<()> {
        self.inner.remove(key)
    }
}

impl Invalidation for Capture {
    fn stamp(&self) -> u64 {
        self.inner.stamp()
    }

    fn invalidate_tags(&self, tags: Vec<String>) -> StoreFuture<()> {
        self.inner.invalidate_tags(tags)
    }

    fn purge(&self) -> StoreFuture<()> {
        self.inner.purge()
    }
}

impl Store for Capture {}

/// `len` bytes that LZ4 cannot compress (xorshift64).
fn random_body(len: usize) -> Bytes {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

/// The entry the layer stores for a response with `body`.
fn capture(rt: &tokio::runtime::Runtime, body: Bytes, content_type: &'static str) -> Stored {
    let store = Capture::default();
    let cache = CacheHandle::builder(store.clone()).build();
    let len = body.len();
    let app = Router::new().route(
        ROUTE,
        get(move || {
            let body = body.clone();
            async move { ([(header::CONTENT_TYPE, content_type)], body) }
        })
        .layer(cache.layer(Rule::new("report").ttl(Duration::from_secs(600)))),
    );
    let uri: Uri = ROUTE.parse().expect("a URI");
    assert_eq!(rt.block_on(fetch(&app, uri)), len);
    let captured = store.last.lock().expect("not poisoned").take();
    let (key, entry) = captured.expect("the layer stored the response");
    assert_eq!(entry.body().len(), len);
    (key, entry)
}

fn codec(c: &mut Criterion) {
    let rt = runtime();
    let sizes = [
        ("200B", 200),
        ("2KiB", 2 * 1024),
        ("64KiB", 64 * 1024),
        ("1MiB", 1024 * 1024),
    ];
    let mut g = c.benchmark_group("codec");
    for (size, len) in sizes {
        let bodies = [
            ("json", json_body(len), "application/json"),
            ("random", random_body(len), "application/octet-stream"),
        ];
        for (kind, body, content_type) in bodies {
            let (key, entry) = capture(&rt, body, content_type);
            let encoded = codec::encode(&key, &entry);
            let decoded = codec::decode(&key, &encoded).expect("decodes");
            assert_eq!(decoded.body(), entry.body());
            // The flags byte follows the magic and the version; bit 0 is LZ4.
            let lz4 = encoded[5] & 1 != 0;
            println!(
                "codec/{kind}/{size}: body {len} B, envelope {} B ({})",
                encoded.len(),
                if lz4 { "LZ4" } else { "not compressed" }
            );
            g.throughput(Throughput::Bytes(len as u64));
            let id = format!("{kind}/{size}");
            g.bench_with_input(BenchmarkId::new("encode", &id), &entry, |b, entry| {
                b.iter(|| codec::encode(&key, entry))
            });
            // As the Redis store does: the value read is handed over, not copied.
            g.bench_with_input(BenchmarkId::new("decode", &id), &encoded, |b, encoded| {
                b.iter(|| codec::decode_bytes(&key, encoded.clone()).expect("decodes"))
            });
        }
    }
    g.finish();
}

// `criterion_group!` would define an undocumented `pub fn`; this is what it and
// `criterion_main!` expand to.
fn main() {
    let mut c = config();
    codec(&mut c);
    c.final_summary();
}
