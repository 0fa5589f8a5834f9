//! Single-flight: concurrent misses for one key make one call to the service.

mod support;

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, body::Body, routing::get};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use larder::{CacheHandle, MemoryStore, Rule};
use tower::{Layer, ServiceExt, service_fn, util::BoxCloneService};

fn cache() -> CacheHandle {
    CacheHandle::builder(MemoryStore::default())
        .x_cache()
        .build()
}

fn get_req(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

/// Sends a request and reads the whole body, as a server does for its client. (A leader's
/// entry lands when its body has streamed to the end; followers wait for that, at most the
/// collapse timeout.)
/// An origin answering `v{n}` to its `n`th call (from 0), which holds call `held` until
/// `release` is notified; `calls` counts the calls.
fn held_origin(held: usize) -> (Arc<AtomicUsize>, Arc<tokio::sync::Notify>, HeldOrigin) {
    let calls = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Notify::new());
    let svc = {
        let (calls, release) = (Arc::clone(&calls), Arc::clone(&release));
        service_fn(move |_req: Request<Body>| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            let release = Arc::clone(&release);
            async move {
                if n == held {
                    release.notified().await;
                }
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("v{n}")))))
            }
        })
    };
    (calls, release, BoxCloneService::new(svc))
}

/// The service [`held_origin`] returns.
type HeldOrigin = BoxCloneService<Request<Body>, Response<Full<Bytes>>, Infallible>;

async fn fetch<S, E>(svc: S) -> Result<(StatusCode, Bytes), E>
where
    S: tower::Service<
            Request<Body>,
            Response = Response<larder::CacheBody<Full<Bytes>>>,
            Error = E,
        >,
{
    let res = svc.oneshot(get_req("/r")).await?;
    let status = res.status();
    Ok((status, res.into_body().collect().await.unwrap().to_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_misses_make_exactly_one_inner_call() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let cache = cache();
    let app = Router::new().route(
        "/slow",
        get(move || {
            c.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "expensive"
            }
        })
        .layer(cache.layer(Rule::new("slow").ttl(Duration::from_secs(60)))),
    );
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move {
                let res = app.oneshot(get_req("/slow")).await.unwrap();
                let status = res.headers()["cache-status"].to_str().unwrap().to_owned();
                let body = res.into_body().collect().await.unwrap().to_bytes();
                (status, body)
            })
        })
        .collect();
    let mut collapsed = 0;
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(body, "expensive");
        if status.contains("collapsed") {
            collapsed += 1;
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(
        collapsed > 900,
        "{collapsed} requests shared the leader's response"
    );
    let stats = cache.stats().routes["slow"].clone();
    assert_eq!(stats.misses + stats.collapsed + stats.hits, 1000);
    assert_eq!(stats.misses, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_of_an_unshareable_response_ask_for_themselves() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let cache = cache();
    let app = Router::new().route(
        "/cookie",
        get(move || {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                ([("set-cookie", format!("session={n}"))], format!("for {n}"))
            }
        })
        .layer(cache.layer(Rule::new("cookie").ttl(Duration::from_secs(60)))),
    );
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move {
                let res = app.oneshot(get_req("/cookie")).await.unwrap();
                let cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
                let body = res.into_body().collect().await.unwrap().to_bytes();
                (cookie, body)
            })
        })
        .collect();
    let mut cookies = std::collections::HashSet::new();
    for t in tasks {
        let (cookie, body) = t.await.unwrap();
        // Each response is the one its own call produced: nobody got another's cookie.
        assert_eq!(
            cookie.trim_start_matches("session="),
            std::str::from_utf8(&body)
                .unwrap()
                .trim_start_matches("for ")
        );
        cookies.insert(cookie);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 20);
    assert_eq!(cookies.len(), 20);
}

/// A service whose first call fails (as a connection-level error), later calls succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_leader_never_leaves_followers_waiting() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let svc = service_fn(move |_req: Request<Body>| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if n == 0 {
                Err("origin down")
            } else {
                Ok(Response::new(Full::new(Bytes::from_static(b"recovered"))))
            }
        }
    });
    let cache = cache();
    let svc = cache
        .layer(Rule::new("r").ttl(Duration::from_secs(60)))
        .layer(svc);
    let first = tokio::spawn(fetch(svc.clone()));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let followers: Vec<_> = (0..50).map(|_| tokio::spawn(fetch(svc.clone()))).collect();
    assert!(
        first.await.unwrap().is_err(),
        "the leader's own error is returned unchanged"
    );
    let all = tokio::time::timeout(Duration::from_secs(5), async {
        let mut ok = 0;
        for f in followers {
            let (_, body) = f.await.unwrap().unwrap();
            assert_eq!(body, "recovered");
            ok += 1;
        }
        ok
    })
    .await
    .expect("followers finished");
    assert_eq!(all, 50);
    // One failed call, then one follower led a new flight that everyone else shared.
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_leader_never_leaves_followers_waiting() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let svc = service_fn(move |_req: Request<Body>| {
        c.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"done"))))
        }
    });
    let cache = cache();
    let svc = cache
        .layer(Rule::new("r").ttl(Duration::from_secs(60)))
        .layer(svc);
    let leader = tokio::spawn(fetch(svc.clone()));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let followers: Vec<_> = (0..10).map(|_| tokio::spawn(fetch(svc.clone()))).collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    leader.abort();
    tokio::time::timeout(Duration::from_secs(5), async {
        for f in followers {
            let (status, body) = f.await.unwrap().unwrap();
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body, "done");
        }
    })
    .await
    .expect("followers finished");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_drops_the_body_releases_followers() {
    let svc = service_fn(|_req: Request<Body>| async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"payload"))))
    });
    let cache = cache();
    let svc = cache
        .layer(Rule::new("r").ttl(Duration::from_secs(60)))
        .layer(svc);
    let follower = {
        let svc = svc.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            svc.oneshot(get_req("/r")).await
        })
    };
    // The leader gets its response, then drops the body unread.
    let leader = svc.clone().oneshot(get_req("/r")).await.unwrap();
    drop(leader);
    let res = tokio::time::timeout(Duration::from_secs(5), follower)
        .await
        .expect("not stuck")
        .unwrap()
        .unwrap();
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        "payload"
    );
}

/// The visibility rule holds for followers: a request that starts after an invalidation has
/// completed is never answered with the response of a flight whose origin call started
/// before it (it goes back to the store, which hides that response, and asks again).
#[tokio::test]
async fn a_request_after_an_invalidation_is_not_answered_by_an_older_flight() {
    // The first call read the data before the write below.
    let (calls, release, svc) = held_origin(0);
    let cache = cache();
    let svc = cache
        .layer(Rule::new("r").ttl(Duration::from_secs(60)).tag("data"))
        .layer(svc);

    // A's origin call starts, then a write completes, then B starts.
    let a = tokio::spawn(fetch(svc.clone()));
    tokio::task::yield_now().await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "A is at the origin");
    cache.invalidate_tags(["data"]).await.unwrap();
    let b = tokio::spawn(svc.clone().oneshot(get_req("/r")));
    // On this single-threaded runtime one yield runs B until it waits on A's flight.
    tokio::task::yield_now().await;
    release.notify_one();

    let (_, a_body) = a.await.unwrap().unwrap();
    assert_eq!(a_body, "v0", "A gets what its own call returned");
    let b = b.await.unwrap().unwrap();
    let status = b.headers()["cache-status"].to_str().unwrap().to_owned();
    let b_body = b.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        b_body, "v1",
        "B started after the invalidation: not the older flight's response ({status})"
    );
    assert!(!status.contains("collapsed"), "{status}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// A leader whose body outgrows the size limit releases its followers at once (they ask the
/// service concurrently, not one after another), and the key's next misses skip the flight.
/// Time is paused: the elapsed times are exact, not measured.
#[tokio::test(start_paused = true)]
async fn a_body_over_the_limit_releases_followers_at_once_and_later_misses_skip_the_flight() {
    const ORIGIN: Duration = Duration::from_millis(100);
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let svc = service_fn(move |_req: Request<Body>| {
        c.fetch_add(1, Ordering::SeqCst);
        async {
            tokio::time::sleep(ORIGIN).await;
            // 64 KiB of unknown length: too big only once it has streamed past the limit.
            Ok::<_, Infallible>(Response::new(support::Chunks::new(64 * 1024, 4096)))
        }
    });
    let cache = CacheHandle::builder(MemoryStore::default())
        .max_body_size(16 * 1024)
        .build();
    let svc = cache
        .layer(Rule::new("big").ttl(Duration::from_secs(60)))
        .layer(svc);
    let wave = |svc: larder::Cache<_>| async move {
        let started = tokio::time::Instant::now();
        let tasks: Vec<_> = (0..5)
            .map(|_| {
                let svc = svc.clone();
                tokio::spawn(async move {
                    let res = svc.oneshot(get_req("/big")).await.unwrap();
                    let status = res.headers()["cache-status"].to_str().unwrap().to_owned();
                    let body = res.into_body().collect().await.unwrap().to_bytes();
                    assert_eq!(body.len(), 64 * 1024);
                    status
                })
            })
            .collect();
        let mut statuses = Vec::new();
        for t in tasks {
            statuses.push(t.await.unwrap());
        }
        (started.elapsed(), statuses)
    };

    let (first, statuses) = wave(svc.clone()).await;
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    assert!(
        first < 3 * ORIGIN,
        "the leader's followers asked together: {first:?} ({statuses:?})"
    );
    let (second, statuses) = wave(svc).await;
    assert_eq!(calls.load(Ordering::SeqCst), 10);
    assert!(
        second < 2 * ORIGIN,
        "no request waited for another: {second:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|s| !s.contains("collapsed") && !s.contains("uncollapsible")),
        "{statuses:?}"
    );
    assert_eq!(cache.stats().routes["big"].stored, 0);
}

/// The same for a background refresh: a request that starts after an invalidation does not
/// get what a stale-while-revalidate refresh that started before it computed.
#[tokio::test(start_paused = true)]
async fn a_request_after_an_invalidation_is_not_answered_by_an_older_refresh() {
    // The refresh read the data before the write below.
    let (calls, release, svc) = held_origin(1);
    let cache = cache();
    let rule = Rule::new("r")
        .ttl(Duration::from_secs(1))
        .stale_while_revalidate(Duration::from_secs(60))
        .tag("data");
    let svc = cache.layer(rule).layer(svc);

    assert_eq!(fetch(svc.clone()).await.unwrap().1, "v0");
    tokio::time::advance(Duration::from_secs(2)).await;
    // Stale: served at once, and a refresh (call 1) starts in the background.
    assert_eq!(fetch(svc.clone()).await.unwrap().1, "v0");
    tokio::task::yield_now().await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the refresh is at the origin"
    );
    cache.invalidate_tags(["data"]).await.unwrap();
    let after = tokio::spawn(fetch(svc.clone()));
    tokio::task::yield_now().await; // it misses and waits on the refresh's flight
    release.notify_one();
    let (_, body) = after.await.unwrap().unwrap();
    assert_eq!(
        body, "v2",
        "not the refresh that started before the invalidation"
    );
}
