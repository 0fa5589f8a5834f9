//! A store written outside the crate reports what it holds and its invalidation records; the
//! cache applies the visibility rule. A store that never filters anything still never serves
//! an invalidated entry, and one that loses its records hides entries rather than reviving them.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{Router, body::Body, routing::get};
use http::Request;
use http_body_util::BodyExt;
use larder::{
    CacheHandle, CacheKey, Entry, Rule, StoreFuture,
    store::{Entries, Invalidation, Marks, Read, Store},
};
use tower::ServiceExt;

/// Entries in a map, returned as stored: no filtering at all.
#[derive(Default)]
struct NaiveStore {
    entries: Mutex<HashMap<[u8; 32], Arc<Entry>>>,
    tags: Mutex<HashMap<String, u64>>,
    clock: AtomicU64,
    /// Report no tag records, as a store that lost them (evicted, expired) would.
    lose_records: bool,
}

impl NaiveStore {
    fn read(&self, key: &CacheKey) -> Read {
        let entry = self.entries.lock().unwrap().get(key.digest()).cloned();
        let newest = self.clock.load(Ordering::SeqCst);
        let marks = match &entry {
            Some(e) if !self.lose_records && newest > e.born() => {
                let tags = self.tags.lock().unwrap();
                Marks::tag_stamps(0, e.tags().map(|t| tags.get(t).copied().unwrap_or(0)))
            }
            _ => Marks::newest_tag_invalidation(0, newest),
        };
        Read::new(entry, marks)
    }
}

impl Entries for NaiveStore {
    fn name(&self) -> &'static str {
        "naive"
    }

    fn get(&self, key: &CacheKey) -> StoreFuture<Read> {
        StoreFuture::ready(Ok(self.read(key)))
    }

    fn get_many(&self, keys: &[CacheKey]) -> StoreFuture<Vec<Read>> {
        StoreFuture::ready(Ok(keys.iter().map(|k| self.read(k)).collect()))
    }

    fn put(&self, key: CacheKey, entry: Arc<Entry>) -> StoreFuture<()> {
        self.entries.lock().unwrap().insert(*key.digest(), entry);
        StoreFuture::ready(Ok(()))
    }

    fn remove(&self, key: &CacheKey) -> StoreFuture<()> {
        self.entries.lock().unwrap().remove(key.digest());
        StoreFuture::ready(Ok(()))
    }
}

impl Invalidation for NaiveStore {
    fn stamp(&self) -> u64 {
        self.clock.load(Ordering::SeqCst)
    }

    fn invalidate_tags(&self, tags: Vec<String>) -> StoreFuture<()> {
        let stamp = self.clock.fetch_add(1, Ordering::SeqCst) + 1;
        let mut records = self.tags.lock().unwrap();
        for tag in tags {
            records.insert(tag, stamp);
        }
        StoreFuture::ready(Ok(()))
    }

    fn purge(&self) -> StoreFuture<()> {
        self.entries.lock().unwrap().clear();
        StoreFuture::ready(Ok(()))
    }
}

impl Store for NaiveStore {}

fn app(cache: &CacheHandle, tag: &'static str) -> Router {
    let calls = Arc::new(AtomicU64::new(0));
    Router::new().route(
        "/r",
        get(move || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move { format!("v{n}") }
        })
        .layer(cache.layer(Rule::new("r").ttl(Duration::from_secs(60)).tag(tag))),
    )
}

async fn body_of(app: &Router) -> String {
    let res = app
        .clone()
        .oneshot(Request::get("/r").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn a_store_that_never_filters_never_serves_an_invalidated_entry() {
    let cache = CacheHandle::new(NaiveStore::default());
    let app = app(&cache, "data");
    assert_eq!(body_of(&app).await, "v0");
    assert_eq!(body_of(&app).await, "v0", "a hit");
    cache.invalidate_tags(["other"]).await.unwrap();
    assert_eq!(
        body_of(&app).await,
        "v0",
        "another tag's invalidation hides nothing"
    );
    cache.invalidate_tags(["data"]).await.unwrap();
    assert_eq!(
        body_of(&app).await,
        "v1",
        "the store returned it; the cache hid it"
    );
    assert_eq!(
        body_of(&app).await,
        "v1",
        "the new entry is born after the invalidation"
    );
}

#[tokio::test]
async fn a_store_that_loses_its_records_hides_entries_rather_than_reviving_them() {
    let store = NaiveStore {
        lose_records: true,
        ..NaiveStore::default()
    };
    let cache = CacheHandle::new(store);
    let app = app(&cache, "data");
    assert_eq!(body_of(&app).await, "v0");
    cache.invalidate_tags(["other"]).await.unwrap();
    // Without the tag's record the cache cannot tell: the entry is hidden, never served stale.
    assert_eq!(body_of(&app).await, "v1");
    assert_eq!(
        body_of(&app).await,
        "v1",
        "born after the last invalidation: a hit"
    );
}
