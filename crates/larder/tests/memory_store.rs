//! The in-process store on its own: its byte bound and how long it keeps an entry.

use std::time::Duration;

use larder::{CacheHandle, EntryOptions, MemoryStore};

#[tokio::test]
async fn entries_are_bounded_by_bytes_and_the_newest_stay_readable() {
    let store = MemoryStore::new(256 * 1024);
    let cache = CacheHandle::builder(store.clone()).build();
    let opts = EntryOptions::new(Duration::from_secs(3600));
    let value = "x".repeat(8 * 1024);
    for i in 0..200 {
        cache
            .insert(&format!("k{i}"), &value, &opts, cache.read_stamp())
            .await
            .unwrap();
        assert!(
            store.weighted_size() <= 256 * 1024,
            "{} bytes after {i} inserts",
            store.weighted_size()
        );
    }
    // 200 values of 8 KiB in 256 KiB: most went, and what is held fits.
    assert!(store.entry_count() < 40, "{} entries", store.entry_count());
    let held = held_count(&cache, 200).await;
    assert!(held > 0 && held as u64 == store.entry_count(), "{held}");
}

async fn held_count(cache: &CacheHandle, n: usize) -> usize {
    let mut held = 0;
    for i in 0..n {
        if cache.get::<String>(&format!("k{i}")).await.is_some() {
            held += 1;
        }
    }
    held
}

#[tokio::test]
async fn an_entry_of_a_large_share_of_the_capacity_is_kept() {
    // quick_cache keeps no entry heavier than one of its shards: the store sizes them so that
    // a large entry is not silently dropped (it was, for 200 KiB in 1 MiB, on 8 shards).
    for (capacity, size) in [
        (1024 * 1024, 200 * 1024),
        (4 * 1024 * 1024, 2 * 1024 * 1024),
    ] {
        let store = MemoryStore::new(capacity);
        let cache = CacheHandle::builder(store.clone()).build();
        let opts = EntryOptions::new(Duration::from_secs(3600));
        cache
            .insert("big", &"x".repeat(size), &opts, cache.read_stamp())
            .await
            .unwrap();
        assert_eq!(
            cache.get::<String>("big").await.map(|v| v.len()),
            Some(size),
            "{size} bytes in a {capacity}-byte store"
        );
        assert_eq!(store.entry_count(), 1);
    }
    // 8 MiB (the layer's default body limit) in the default 256 MiB store.
    let store = MemoryStore::default();
    let cache = CacheHandle::builder(store.clone()).build();
    let opts = EntryOptions::new(Duration::from_secs(3600));
    cache
        .insert("8mib", &"y".repeat(8 << 20), &opts, cache.read_stamp())
        .await
        .unwrap();
    assert!(cache.get::<String>("8mib").await.is_some());
}

#[tokio::test]
async fn max_ttl_bounds_how_long_an_entry_is_kept_whatever_its_ttl() {
    let store = MemoryStore::builder()
        .max_ttl(Duration::from_millis(100))
        .build();
    let cache = CacheHandle::builder(store.clone()).build();
    let opts = EntryOptions::new(Duration::from_secs(3600));
    cache
        .insert("k", &42u32, &opts, cache.read_stamp())
        .await
        .unwrap();
    assert_eq!(cache.get::<u32>("k").await, Some(42));
    assert_eq!(store.entry_count(), 1);
    // Real time: the store's keep time does not follow a paused test clock.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(cache.get::<u32>("k").await, None);
    assert_eq!(store.entry_count(), 0, "dropped when read past its time");
}

#[tokio::test]
async fn an_entry_is_kept_for_its_stale_windows_then_dropped() {
    let store = MemoryStore::new(1024 * 1024);
    let cache = CacheHandle::builder(store.clone()).build();
    // A typed value has no stale windows: it is kept for its TTL only.
    cache
        .insert(
            "short",
            &1u8,
            &EntryOptions::new(Duration::from_millis(80)),
            cache.read_stamp(),
        )
        .await
        .unwrap();
    assert_eq!(cache.get::<u8>("short").await, Some(1));
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(cache.get::<u8>("short").await, None);
    assert_eq!(store.entry_count(), 0);
}

#[tokio::test]
async fn an_entry_read_after_its_tag_was_invalidated_is_dropped() {
    let store = MemoryStore::default();
    let cache = CacheHandle::builder(store.clone()).build();
    let tagged = EntryOptions::new(Duration::from_secs(3600)).tag("t");
    cache
        .insert("a", &1u32, &tagged, cache.read_stamp())
        .await
        .unwrap();
    cache
        .insert(
            "b",
            &2u32,
            &EntryOptions::new(Duration::from_secs(3600)),
            cache.read_stamp(),
        )
        .await
        .unwrap();
    assert_eq!(store.entry_count(), 2);
    cache.invalidate_tags(["t"]).await.unwrap();
    assert_eq!(cache.get::<u32>("a").await, None);
    assert_eq!(cache.get::<u32>("b").await, Some(2));
    // It will never be served again: reading it let the memory go.
    assert_eq!(store.entry_count(), 1);
}
