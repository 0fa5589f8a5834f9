//! Several `Vary` variants per URL: clients with different `Accept-Language` (or
//! `Accept-Encoding`) no longer evict each other, each variant is found with one lookup, a
//! write invalidates them all, and a URL keeps a bounded number of them.

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
use larder::{CacheHandle, MemoryStore, Rule};
use tower::{Layer, Service, ServiceExt, service_fn};

/// A service whose answer varies on `Accept-Language` (`hello <lang> #<call>`), counting its
/// calls; `POST` is a write that invalidates the tag `greeting`.
fn app(
    cache: &CacheHandle,
    calls: &Arc<AtomicUsize>,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<impl http_body::Body<Data = Bytes, Error = impl std::fmt::Debug>>,
    Error = Infallible,
> + Clone {
    let calls = Arc::clone(calls);
    let origin = service_fn(move |req: Request<Full<Bytes>>| {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        let lang = req
            .headers()
            .get("accept-language")
            .map_or("-".to_owned(), |v| v.to_str().unwrap().to_owned());
        async move {
            let response = Response::builder()
                .header("cache-control", "max-age=600")
                .header("vary", "Accept-Language")
                .body(Full::new(Bytes::from(format!("hello {lang} #{n}"))))
                .unwrap();
            Ok::<_, Infallible>(response)
        }
    });
    let rule = Rule::new("greeting")
        .ttl(Duration::from_secs(600))
        .tag("greeting")
        .invalidates(["greeting"]);
    cache.layer(rule).layer(origin)
}

/// `X-Cache` and the body of one request with `method` and `Accept-Language: lang`.
async fn send<S, B>(svc: &S, method: &str, lang: &str) -> (String, String)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible> + Clone,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let req = Request::builder()
        .method(method)
        .uri("/greeting")
        .header("accept-language", lang)
        .body(Full::default())
        .unwrap();
    let res = svc.clone().oneshot(req).await.unwrap();
    let x = res
        .headers()
        .get("x-cache")
        .map_or(String::new(), |v| v.to_str().unwrap().to_owned());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (x, String::from_utf8(body.to_vec()).unwrap())
}

/// Waits until `n` entries have landed (a network store writes after the response).
async fn landed(cache: &CacheHandle, n: u64) {
    for _ in 0..500 {
        if cache.stats().total.stored >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{n} entries did not land: {:?}", cache.stats().total);
}

async fn two_variants_both_hit(cache: CacheHandle) {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = app(&cache, &calls);
    let (x, en) = send(&svc, "GET", "en").await;
    assert_eq!((x.as_str(), en.as_str()), ("MISS", "hello en #1"));
    // Stored under the URL's key and under its variant's.
    landed(&cache, 2).await;
    let (x, fr) = send(&svc, "GET", "fr").await;
    assert_eq!((x.as_str(), fr.as_str()), ("MISS", "hello fr #2"));
    landed(&cache, 3).await;
    for _ in 0..3 {
        assert_eq!(send(&svc, "GET", "en").await, ("HIT".into(), en.clone()));
        assert_eq!(send(&svc, "GET", "fr").await, ("HIT".into(), fr.clone()));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one call per variant");
    // A write invalidates every variant: each is asked again, and then a hit again.
    assert_eq!(send(&svc, "POST", "en").await.0, "BYPASS");
    let (x, en2) = send(&svc, "GET", "en").await;
    assert_eq!((x.as_str(), en2.as_str()), ("MISS", "hello en #4"));
    let (x, fr2) = send(&svc, "GET", "fr").await;
    assert_eq!((x.as_str(), fr2.as_str()), ("MISS", "hello fr #5"));
    landed(&cache, 5).await;
    assert_eq!(send(&svc, "GET", "fr").await, ("HIT".into(), fr2));
    assert_eq!(send(&svc, "GET", "en").await, ("HIT".into(), en2));
}

#[tokio::test]
async fn on_the_memory_store_two_accept_language_variants_both_hit() {
    two_variants_both_hit(
        CacheHandle::builder(MemoryStore::default())
            .x_cache()
            .build(),
    )
    .await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn on_redis_two_accept_language_variants_both_hit() {
    let server = larder_testkit::RedisServer::start();
    let store = larder::store::RedisStore::builder(server.url())
        .namespace("variants")
        .build()
        .await
        .unwrap();
    two_variants_both_hit(CacheHandle::builder(store).x_cache().build()).await;
}

/// Past eight variants of one URL (a header with unbounded values), new ones are answered
/// but not stored; the first eight stay hits.
#[tokio::test]
async fn a_url_keeps_a_bounded_number_of_variants() {
    let cache = CacheHandle::builder(MemoryStore::default())
        .x_cache()
        .build();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = app(&cache, &calls);
    let langs: Vec<String> = (0..12).map(|i| format!("l{i}")).collect();
    for lang in &langs {
        let (_, body) = send(&svc, "GET", lang).await;
        assert!(body.starts_with(&format!("hello {lang} ")), "{body}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 12);
    for (i, lang) in langs.iter().enumerate() {
        let (x, body) = send(&svc, "GET", lang).await;
        assert!(body.starts_with(&format!("hello {lang} ")), "{body}");
        if i < 8 {
            assert_eq!(x, "HIT", "{lang}");
        } else {
            assert_eq!(x, "MISS", "{lang}: past the bound, never stored");
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 16);
}

/// What one URL varies on is that URL's: a URL of the same rule whose responses do not vary
/// keeps one entry for every client.
#[tokio::test]
async fn a_url_that_does_not_vary_keeps_one_entry_beside_one_that_does() {
    let cache = CacheHandle::builder(MemoryStore::default())
        .x_cache()
        .build();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let origin = service_fn(move |req: Request<Full<Bytes>>| {
        c.fetch_add(1, Ordering::SeqCst);
        let varies = req.uri().path() == "/a";
        async move {
            let mut b = Response::builder().header("cache-control", "max-age=600");
            if varies {
                b = b.header("vary", "User-Agent");
            }
            Ok::<_, Infallible>(b.body(Full::new(Bytes::from_static(b"x"))).unwrap())
        }
    });
    let svc = cache
        .layer(Rule::new("all").ttl(Duration::from_secs(600)))
        .layer(origin);
    let get = |path: &'static str, agent: String| {
        let svc = svc.clone();
        async move {
            let req = Request::get(path)
                .header("user-agent", agent)
                .body(Full::default())
                .unwrap();
            let res = svc.oneshot(req).await.unwrap();
            let x = res.headers()["x-cache"].to_str().unwrap().to_owned();
            res.into_body().collect().await.unwrap();
            x
        }
    };
    get("/a", "agent-0".into()).await;
    for i in 0..20 {
        get("/b", format!("agent-{i}")).await;
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "/b is one entry for every agent"
    );
    assert_eq!(get("/b", "agent-99".into()).await, "HIT");
}
