//! The typed cache-aside API on `CacheHandle`: `get_or_insert_with`, `get`, `get_many`,
//! `insert`, tags, purge, single-flight and statistics.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use larder::{CacheHandle, EntryOptions, MemoryStore};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

#[derive(Debug, PartialEq, Eq)]
struct Boom(&'static str);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Report {
    id: u32,
    title: String,
    totals: Vec<u64>,
}

fn report(id: u32) -> Report {
    Report {
        id,
        title: format!("report {id}"),
        totals: vec![1, 2, 3],
    }
}

fn cache() -> CacheHandle {
    CacheHandle::new(MemoryStore::default())
}

fn opts() -> EntryOptions {
    EntryOptions::new(Duration::from_secs(60)).tag("t")
}

/// `get_or_insert_with` whose closure counts its runs and returns `value`.
async fn fetch<T>(cache: &CacheHandle, key: &str, calls: &AtomicUsize, value: T) -> T
where
    T: Serialize + serde::de::DeserializeOwned,
{
    cache
        .get_or_insert_with(key, &opts(), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Boom>(value)
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn the_closure_runs_once_for_two_calls() {
    let cache = cache();
    let calls = AtomicUsize::new(0);
    assert_eq!(fetch(&cache, "r:1", &calls, report(1)).await, report(1));
    // The second closure would return something else: the stored value wins.
    assert_eq!(fetch(&cache, "r:1", &calls, report(99)).await, report(1));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(cache.get::<Report>("r:1").await, Some(report(1)));
}

#[tokio::test]
async fn a_different_key_runs_the_closure_again() {
    let cache = cache();
    let calls = AtomicUsize::new(0);
    assert_eq!(fetch(&cache, "a", &calls, 1u32).await, 1);
    assert_eq!(fetch(&cache, "b", &calls, 2u32).await, 2);
    assert_eq!(fetch(&cache, "a", &calls, 3u32).await, 1);
    assert_eq!(fetch(&cache, "b", &calls, 4u32).await, 2);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn invalidating_a_tag_makes_the_next_call_recompute() {
    let cache = cache();
    let calls = AtomicUsize::new(0);
    let other = EntryOptions::new(Duration::from_secs(60)).tag("other");
    fetch(&cache, "k", &calls, 1u32).await;
    cache
        .get_or_insert_with("untouched", &other, || async { Ok::<_, Boom>(7u32) })
        .await
        .unwrap();
    cache.invalidate_tags(["t"]).await.unwrap();
    assert_eq!(cache.get::<u32>("k").await, None);
    assert_eq!(fetch(&cache, "k", &calls, 2u32).await, 2);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // An entry without the tag is kept; the recomputed one is visible.
    assert_eq!(cache.get::<u32>("untouched").await, Some(7));
    assert_eq!(fetch(&cache, "k", &calls, 3u32).await, 2);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn purge_makes_the_next_call_recompute() {
    let cache = cache();
    let calls = AtomicUsize::new(0);
    fetch(&cache, "k", &calls, 1u32).await;
    cache.purge().await.unwrap();
    assert_eq!(cache.get::<u32>("k").await, None);
    assert_eq!(fetch(&cache, "k", &calls, 2u32).await, 2);
    assert_eq!(fetch(&cache, "k", &calls, 3u32).await, 2);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_tag_invalidated_while_the_closure_runs_hides_its_value() {
    // The value was computed from data the invalidation says changed: it is returned to its
    // caller but not kept.
    let cache = cache();
    let c = cache.clone();
    let v = cache
        .get_or_insert_with("k", &opts(), || async move {
            c.invalidate_tags(["t"]).await.unwrap();
            Ok::<_, Boom>(1u32)
        })
        .await
        .unwrap();
    assert_eq!(v, 1);
    assert_eq!(cache.get::<u32>("k").await, None);
}

#[tokio::test]
async fn an_error_is_returned_and_nothing_is_stored() {
    let cache = cache();
    let calls = AtomicUsize::new(0);
    let err = cache
        .get_or_insert_with("k", &opts(), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<u32, _>(Boom("db down"))
        })
        .await;
    assert_eq!(err, Err(Boom("db down")));
    assert_eq!(cache.get::<u32>("k").await, None);
    assert_eq!(fetch(&cache, "k", &calls, 5u32).await, 5);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(cache.stats().routes["typed"].stored, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_calls_run_the_closure_once() {
    let cache = cache();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..200 {
        let cache = cache.clone();
        let calls = Arc::clone(&calls);
        set.spawn(async move {
            cache
                .get_or_insert_with("hot", &opts(), || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, Boom>(report(7))
                })
                .await
        });
    }
    let results = tokio::time::timeout(Duration::from_secs(10), set.join_all())
        .await
        .expect("nobody hangs");
    assert_eq!(results.len(), 200);
    for r in results {
        assert_eq!(r, Ok(report(7)));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let typed = &cache.stats().routes["typed"];
    assert_eq!(typed.misses, 1, "{typed:?}");
    assert_eq!(typed.collapsed + typed.hits, 199, "{typed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_leader_releases_its_followers() {
    let cache = cache();
    let calls = Arc::new(AtomicUsize::new(0));
    let leader = {
        let cache = cache.clone();
        let calls = Arc::clone(&calls);
        tokio::spawn(async move {
            cache
                .get_or_insert_with("k", &opts(), || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Err::<u32, _>(Boom("leader failed"))
                })
                .await
        })
    };
    // Let the leader take the flight before the followers arrive.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut followers = JoinSet::new();
    for _ in 0..20 {
        let cache = cache.clone();
        let calls = Arc::clone(&calls);
        followers.spawn(async move {
            cache
                .get_or_insert_with("k", &opts(), || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok::<_, Boom>(42u32)
                })
                .await
        });
    }
    let (leader, followers) = tokio::time::timeout(Duration::from_secs(5), async {
        (leader.await.unwrap(), followers.join_all().await)
    })
    .await
    .expect("nobody hangs on a failed leader");
    assert_eq!(leader, Err(Boom("leader failed")));
    assert_eq!(followers.len(), 20);
    for f in followers {
        assert_eq!(f, Ok(42));
    }
    let calls = calls.load(Ordering::SeqCst);
    // The leader, then (normally) one follower that leads the next flight for the others.
    assert!((2..=21).contains(&calls), "{calls} closure runs");
    assert_eq!(cache.get::<u32>("k").await, Some(42));
}

#[tokio::test]
async fn get_many_returns_values_in_key_order() {
    let cache = cache();
    let o = opts();
    cache
        .insert("a", &1u32, &o, cache.read_stamp())
        .await
        .unwrap();
    cache
        .insert("c", &3u32, &o, cache.read_stamp())
        .await
        .unwrap();
    cache
        .insert("d", &4u32, &o, cache.read_stamp())
        .await
        .unwrap();
    let got = cache
        .get_many::<u32>(&["d", "b", "a", "c", "zz", "a"])
        .await;
    assert_eq!(got, [Some(4), None, Some(1), Some(3), None, Some(1)]);
    assert!(cache.get_many::<u32>(&[]).await.is_empty());
}

#[tokio::test]
async fn a_value_read_as_an_incompatible_type_is_a_miss() {
    let cache = cache();
    cache
        .insert("k", &report(1), &opts(), cache.read_stamp())
        .await
        .unwrap();
    assert_eq!(cache.get::<u64>("k").await, None);
    assert_eq!(cache.get::<Vec<String>>("k").await, None);
    assert_eq!(cache.get_many::<u64>(&["k"]).await, [None]);
    assert_eq!(cache.get::<Report>("k").await, Some(report(1)));
    // get_or_insert_with with another type recomputes (and replaces the value).
    let calls = AtomicUsize::new(0);
    assert_eq!(fetch(&cache, "k", &calls, 9u64).await, 9);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(cache.get::<u64>("k").await, Some(9));
    assert_eq!(cache.get::<Report>("k").await, None);
}

#[tokio::test(start_paused = true)]
async fn a_value_expires_after_its_ttl() {
    let cache = cache();
    let calls = AtomicUsize::new(0);
    let o = EntryOptions::new(Duration::from_secs(30));
    let run = |v: u32| {
        let calls = &calls;
        let cache = &cache;
        let o = &o;
        async move {
            cache
                .get_or_insert_with("k", o, || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, Boom>(v)
                })
                .await
                .unwrap()
        }
    };
    assert_eq!(run(1).await, 1);
    tokio::time::advance(Duration::from_secs(29)).await;
    assert_eq!(run(2).await, 1);
    assert_eq!(cache.get::<u32>("k").await, Some(1));
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(cache.get::<u32>("k").await, None);
    assert_eq!(run(3).await, 3);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn stats_count_hits_and_misses_under_typed() {
    let cache = cache();
    let calls = AtomicUsize::new(0);
    fetch(&cache, "a", &calls, 1u32).await; // miss, stored
    fetch(&cache, "a", &calls, 1u32).await; // hit
    fetch(&cache, "a", &calls, 1u32).await; // hit
    fetch(&cache, "b", &calls, 2u32).await; // miss, stored
    let typed = cache.stats().routes["typed"].clone();
    assert_eq!(typed.hits, 2, "{typed:?}");
    assert_eq!(typed.misses, 2, "{typed:?}");
    assert_eq!(typed.stored, 2, "{typed:?}");
    assert_eq!(typed.errors, 0, "{typed:?}");
    assert!((typed.hit_rate - 0.5).abs() < 1e-9, "{typed:?}");
    assert_eq!(cache.stats().total.hits, 2);

    // get and get_many count too.
    assert_eq!(cache.get::<u32>("a").await, Some(1));
    assert_eq!(cache.get_many::<u32>(&["a", "nope"]).await, [Some(1), None]);
    let typed = cache.stats().routes["typed"].clone();
    assert_eq!(typed.hits, 4, "{typed:?}");
    assert_eq!(typed.misses, 3, "{typed:?}");
}

#[tokio::test]
async fn get_of_an_absent_key_counts_a_miss() {
    let cache = cache();
    assert_eq!(cache.get::<u32>("absent").await, None);
    let typed = cache.stats().routes["typed"].clone();
    assert_eq!(
        typed.misses, 1,
        "get_many counts this as a miss; get should too: {typed:?}"
    );
}

#[tokio::test]
async fn insert_is_counted_as_stored() {
    let cache = cache();
    cache
        .insert("k", &1u32, &opts(), cache.read_stamp())
        .await
        .unwrap();
    let typed = cache.stats().routes["typed"].clone();
    assert_eq!(typed.stored, 1, "{typed:?}");
}

#[tokio::test]
async fn a_batch_reads_once_and_fills_only_the_missing_keys() {
    let cache = CacheHandle::in_memory();
    let a = EntryOptions::new(Duration::from_secs(60)).tag("a");
    let b = EntryOptions::new(Duration::from_secs(60)).tag("b");
    cache
        .insert("k1", &report(1), &a, cache.read_stamp())
        .await
        .unwrap();

    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&asked);
    let got: Vec<Report> = cache
        .get_many_or_insert_with(
            &[("k1", &a), ("k2", &b), ("k3", &a)],
            |missing| async move {
                seen.lock().unwrap().extend(missing.iter().copied());
                Ok::<_, Boom>(missing.iter().map(|&i| report(i as u32 + 1)).collect())
            },
        )
        .await
        .unwrap();
    assert_eq!(got, vec![report(1), report(2), report(3)]);
    assert_eq!(*asked.lock().unwrap(), vec![1, 2]);

    // Everything is stored now: the closure is not called again.
    let again: Vec<Report> = cache
        .get_many_or_insert_with(&[("k1", &a), ("k2", &b), ("k3", &a)], |_| async {
            Err::<Vec<Report>, _>(Boom("must not run"))
        })
        .await
        .unwrap();
    assert_eq!(again, got);

    // Each key carries its own tags: invalidating `b` drops k2 only.
    cache.invalidate_tags(["b"]).await.unwrap();
    let after: Vec<Option<Report>> = cache.get_many(&["k1", "k2", "k3"]).await;
    assert_eq!(after, vec![Some(report(1)), None, Some(report(3))]);
}

#[tokio::test]
async fn a_batch_value_whose_tag_is_invalidated_while_it_loads_is_not_stored() {
    let cache = CacheHandle::in_memory();
    let opts = EntryOptions::new(Duration::from_secs(60)).tag("sessions:1");
    let writer = cache.clone();
    let got: Vec<Report> = cache
        .get_many_or_insert_with(&[("page1", &opts)], |_| async move {
            // A write lands between the database read and the store.
            writer.invalidate_tags(["sessions:1"]).await.unwrap();
            Ok::<_, Boom>(vec![report(1)])
        })
        .await
        .unwrap();
    assert_eq!(got, vec![report(1)]);
    assert_eq!(cache.get::<Report>("page1").await, None);
}

#[tokio::test]
async fn a_failed_batch_stores_nothing() {
    let cache = CacheHandle::in_memory();
    let opts = EntryOptions::new(Duration::from_secs(60));
    let err = cache
        .get_many_or_insert_with::<Report, _, _, _>(&[("x", &opts)], |_| async {
            Err(Boom("database down"))
        })
        .await
        .unwrap_err();
    assert_eq!(err, Boom("database down"));
    assert_eq!(cache.get::<Report>("x").await, None);
}

/// `insert`'s value was read from its source before a concurrent invalidation: it is not
/// stored as fresh, because its birth stamp is the one taken before the read.
#[tokio::test]
async fn a_value_read_before_an_invalidation_is_not_inserted_as_fresh() {
    let cache = cache();
    let read_at = cache.read_stamp();
    // ... the value is read from the database here; meanwhile a write invalidates its tag.
    cache.invalidate_tags(["t"]).await.unwrap();
    cache
        .insert("k", &report(1), &opts(), read_at)
        .await
        .unwrap();
    assert_eq!(cache.get::<Report>("k").await, None);

    let read_at = cache.read_stamp();
    cache
        .insert("k", &report(2), &opts(), read_at)
        .await
        .unwrap();
    assert_eq!(cache.get::<Report>("k").await, Some(report(2)));
}

/// A value that does not serialize is an error, not a silent no-op.
#[tokio::test]
async fn insert_says_when_the_value_did_not_serialize() {
    let cache = cache();
    let mut bad = std::collections::HashMap::new();
    bad.insert((1, 2), "a map with tuple keys is not JSON");
    let err = cache
        .insert("k", &bad, &opts(), cache.read_stamp())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), larder::StoreErrorKind::Encode);
}

/// A typed call that starts after an invalidation has completed does not share the value of a
/// call whose computation started before it: it computes its own.
#[tokio::test]
async fn a_call_after_an_invalidation_does_not_share_an_older_computation() {
    let cache = cache();
    let release = Arc::new(tokio::sync::Notify::new());
    let first = {
        let (cache, release) = (cache.clone(), Arc::clone(&release));
        tokio::spawn(async move {
            cache
                .get_or_insert_with("k", &opts(), || async move {
                    release.notified().await; // read from the source before the write below
                    Ok::<_, ()>(1u32)
                })
                .await
        })
    };
    tokio::task::yield_now().await; // the first call leads, waiting in its closure
    cache.invalidate_tags(["t"]).await.unwrap();
    let second = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_insert_with("k", &opts(), || async { Ok::<_, ()>(2u32) })
                .await
        })
    };
    tokio::task::yield_now().await; // on this single-threaded runtime: it waits on the flight
    release.notify_one();
    assert_eq!(first.await.unwrap(), Ok(1));
    assert_eq!(
        second.await.unwrap(),
        Ok(2),
        "not the older computation's value"
    );
    assert_eq!(cache.get::<u32>("k").await, Some(2));
}
