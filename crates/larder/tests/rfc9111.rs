//! RFC 9111 (HTTP caching) through an axum router: what is stored, what is reused, and how.
//!
//! The table sends each request twice through a fresh router and cache and checks the
//! handler's call count (1 = stored and reused) and `Cache-Status` on both responses. The
//! tests after it cover what one table row cannot: time (`Age`, expiry, stale windows),
//! `Vary`, validators, `HEAD`, hop-by-hop fields and invalidation by writes.

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use axum::{
    Router,
    body::Body,
    http::{HeaderMap, HeaderName, Method, Request, Response, StatusCode, header},
    routing::any,
};
use http_body::Body as HttpBody;
use http_body_util::BodyExt;
use larder::{CacheHandle, KeyOptions, MemoryStore, Rule, UserScope};
use tower::{Layer, Service, ServiceExt, service_fn};

type Pairs = &'static [(&'static str, &'static str)];

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn cache() -> CacheHandle {
    CacheHandle::builder(MemoryStore::default())
        .x_cache()
        .build()
}

/// Replaces the date placeholders `{now}`, `{now+N}` and `{now-N}` with HTTP dates.
fn render(value: &str) -> String {
    let Some(inner) = value.strip_prefix("{now").and_then(|v| v.strip_suffix('}')) else {
        return value.to_owned();
    };
    let now = SystemTime::now();
    let at = if let Some(n) = inner.strip_prefix('+') {
        now + secs(n.parse().unwrap())
    } else if let Some(n) = inner.strip_prefix('-') {
        now - secs(n.parse().unwrap())
    } else {
        now
    };
    httpdate::fmt_http_date(at)
}

fn request(method: &str, uri: &str, headers: &[(&str, &str)], body: &'static str) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        b = b.header(*name, render(value));
    }
    b.body(Body::from(body)).unwrap()
}

fn get_req(uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    request("GET", uri, headers, "")
}

/// A response as the client saw it, body read to the end (which is what stores a miss).
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn cache_status(&self) -> &str {
        self.headers
            .get_all("cache-status")
            .iter()
            .next_back()
            .map(|v| v.to_str().unwrap())
            .unwrap_or("<none>")
    }

    fn x_cache(&self) -> &str {
        self.headers
            .get("x-cache")
            .map(|v| v.to_str().unwrap())
            .unwrap_or("<none>")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn age(&self) -> u64 {
        self.header("age")
            .expect("a hit carries Age")
            .parse()
            .unwrap()
    }

    /// The `ttl=` of a `larder; hit; ttl=N` status.
    fn hit_ttl(&self) -> i64 {
        let s = self.cache_status();
        let rest = s
            .strip_prefix("larder; hit; ttl=")
            .unwrap_or_else(|| panic!("not a hit: {s}"));
        rest.split(';').next().unwrap().parse().unwrap()
    }
}

async fn send<S, B>(svc: &S, req: Request<Body>) -> Reply
where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone,
    B: HttpBody,
    B::Error: std::fmt::Debug,
{
    let res = svc.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

// ---------------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------------

/// What two identical requests should show.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// A miss that stores (`larder; fwd=miss; stored`), then a hit (`larder; hit; ttl=N`, N
    /// being `ttl` or one less) with the first body: the handler ran once.
    Stored { ttl: u64 },
    /// Both requests reach the handler and both responses carry this `Cache-Status`.
    Forwarded(&'static str),
    /// The cache answers both without calling the handler.
    Answered {
        status: u16,
        cache_status: &'static str,
    },
}

const fn stored(ttl: u64) -> Expect {
    Expect::Stored { ttl }
}

const fn fwd(cache_status: &'static str) -> Expect {
    Expect::Forwarded(cache_status)
}

#[derive(Debug, Clone, Copy)]
struct Case {
    name: &'static str,
    /// The rule's TTL in seconds.
    ttl: Option<u64>,
    /// Whether the rule has a user scope (the `x-user` request header).
    user_scope: bool,
    /// Whether the rule is [`Rule::shared`].
    shared: bool,
    method: &'static str,
    request: Pairs,
    request_body: &'static str,
    status: u16,
    response: Pairs,
    expect: Expect,
}

const fn case(
    name: &'static str,
    ttl: Option<u64>,
    status: u16,
    response: Pairs,
    expect: Expect,
) -> Case {
    Case {
        name,
        ttl,
        user_scope: false,
        shared: false,
        method: "GET",
        request: &[],
        request_body: "",
        status,
        response,
        expect,
    }
}

impl Case {
    const fn req(self, request: Pairs) -> Self {
        Case { request, ..self }
    }

    const fn method(self, method: &'static str) -> Self {
        Case { method, ..self }
    }

    const fn body(self, request_body: &'static str) -> Self {
        Case {
            request_body,
            ..self
        }
    }

    const fn user_scoped(self) -> Self {
        Case {
            user_scope: true,
            ..self
        }
    }

    const fn shared(self) -> Self {
        Case {
            shared: true,
            ..self
        }
    }
}

const T60: Option<u64> = Some(60);
const NO_TTL: Option<u64> = None;
const MAX60: Pairs = &[("cache-control", "max-age=60")];
const NONE: Pairs = &[];
const ALICE: Pairs = &[("x-user", "alice")];

#[rustfmt::skip]
const CASES: &[Case] = &[
    // Freshness: the route's TTL, the response's own, and which wins.
    case("200 with route ttl is stored", T60, 200, NONE, stored(60)),
    case("200 without ttl or freshness is not stored", NO_TTL, 200, NONE, fwd("larder; fwd=miss; detail=no-freshness")),
    case("public alone is not freshness", NO_TTL, 200, &[("cache-control", "public")], fwd("larder; fwd=miss; detail=no-freshness")),
    case("max-age without route ttl is stored", NO_TTL, 200, MAX60, stored(60)),
    case("max-age beats the route ttl", Some(300), 200, &[("cache-control", "max-age=30")], stored(30)),
    case("s-maxage beats max-age", NO_TTL, 200, &[("cache-control", "s-maxage=30, max-age=60")], stored(30)),
    case("s-maxage=0 beats max-age=60", NO_TTL, 200, &[("cache-control", "s-maxage=0, max-age=60")], fwd("larder; fwd=miss; detail=zero-ttl")),
    case("max-age=0 is not stored even with a route ttl", T60, 200, &[("cache-control", "max-age=0")], fwd("larder; fwd=miss; detail=zero-ttl")),
    case("upstream Age counts against max-age", NO_TTL, 200, &[("cache-control", "max-age=60"), ("age", "20")], stored(40)),
    case("upstream Age past max-age is not stored", NO_TTL, 200, &[("cache-control", "max-age=60"), ("age", "70")], fwd("larder; fwd=miss; detail=zero-ttl")),
    case("Expires in the past is not stored", NO_TTL, 200, &[("date", "{now}"), ("expires", "{now-60}")], fwd("larder; fwd=miss; detail=zero-ttl")),
    case("Expires in the past beats the route ttl", T60, 200, &[("date", "{now}"), ("expires", "{now-60}")], fwd("larder; fwd=miss; detail=zero-ttl")),
    case("invalid Expires means already expired", T60, 200, &[("expires", "0")], fwd("larder; fwd=miss; detail=zero-ttl")),
    case("Expires in the future with a Date is stored", NO_TTL, 200, &[("date", "{now}"), ("expires", "{now+60}")], stored(60)),
    // Directives that forbid storing.
    case("no-store is not stored", T60, 200, &[("cache-control", "no-store, max-age=60")], fwd("larder; fwd=miss; detail=no-store")),
    case("no-cache is not stored", T60, 200, &[("cache-control", "no-cache, max-age=60")], fwd("larder; fwd=miss; detail=no-cache")),
    case("must-understand lets a known status ignore no-store", NO_TTL, 200, &[("cache-control", "must-understand, no-store, max-age=60")], stored(60)),
    case("private is not stored in a shared cache", T60, 200, &[("cache-control", "private, max-age=60")], fwd("larder; fwd=miss; detail=private")),
    case("private is stored with a user scope", T60, 200, &[("cache-control", "private, max-age=60")], stored(60)).user_scoped().req(ALICE),
    case("Set-Cookie is not stored", T60, 200, &[("cache-control", "max-age=60"), ("set-cookie", "sid=1")], fwd("larder; fwd=miss; detail=set-cookie")),
    case("Set-Cookie is not stored with a user scope either", T60, 200, &[("set-cookie", "sid=1")], fwd("larder; fwd=miss; detail=set-cookie")).user_scoped().req(ALICE),
    case("Vary: * is not stored", T60, 200, &[("vary", "*")], fwd("larder; fwd=miss; detail=vary-star")),
    case("Vary: * on a second line is not stored", T60, 200, &[("vary", "accept"), ("vary", "accept-encoding, *")], fwd("larder; fwd=miss; detail=vary-star")),
    // Statuses.
    case("404 with route ttl only is not stored", T60, 404, NONE, fwd("larder; fwd=miss; detail=status")),
    case("404 with max-age is stored", T60, 404, MAX60, stored(60)),
    case("410 with Expires is stored", NO_TTL, 410, &[("date", "{now}"), ("expires", "{now+60}")], stored(60)),
    case("201 with route ttl only is not stored", T60, 201, NONE, fwd("larder; fwd=miss; detail=status")),
    case("301 with route ttl is stored", T60, 301, &[("location", "/elsewhere")], stored(60)),
    case("302 with route ttl only is not stored", T60, 302, &[("location", "/elsewhere")], fwd("larder; fwd=miss; detail=status")),
    case("302 with max-age is stored", NO_TTL, 302, &[("location", "/elsewhere"), ("cache-control", "max-age=60")], stored(60)),
    case("500 with max-age is not stored", T60, 500, MAX60, fwd("larder; fwd=miss; detail=server-error")),
    case("503 with max-age is not stored", T60, 503, MAX60, fwd("larder; fwd=miss; detail=server-error")),
    case("401 with max-age is not stored", T60, 401, MAX60, fwd("larder; fwd=miss; detail=status")),
    case("403 with max-age is not stored", T60, 403, MAX60, fwd("larder; fwd=miss; detail=status")),
    case("206 with max-age is not stored", T60, 206, &[("cache-control", "max-age=60"), ("content-range", "bytes 0-5/10")], fwd("larder; fwd=miss; detail=status")),
    // Methods.
    case("a successful POST is not stored and invalidates", T60, 200, MAX60, fwd("larder; fwd=method; detail=invalidated")).method("POST"),
    case("a failed POST neither stores nor invalidates", T60, 400, MAX60, fwd("larder; fwd=method")).method("POST"),
    case("DELETE is a write", T60, 204, NONE, fwd("larder; fwd=method; detail=invalidated")).method("DELETE"),
    case("OPTIONS is passed through", T60, 200, MAX60, fwd("larder; fwd=bypass; detail=method")).method("OPTIONS"),
    // Request directives.
    case("request no-store: the response is not stored", T60, 200, MAX60, fwd("larder; fwd=miss; detail=request-no-store")).req(&[("cache-control", "no-store")]),
    case("request only-if-cached on a miss is a 504", T60, 200, MAX60, Expect::Answered { status: 504, cache_status: "larder; fwd=miss; detail=only-if-cached" }).req(&[("cache-control", "only-if-cached")]),
    case("request no-cache is not honoured by default", T60, 200, NONE, stored(60)).req(&[("cache-control", "no-cache")]),
    case("request max-age=0 is not honoured by default", T60, 200, NONE, stored(60)).req(&[("cache-control", "max-age=0")]),
    case("request Pragma: no-cache is not honoured by default", T60, 200, NONE, stored(60)).req(&[("pragma", "no-cache")]),
    // Requests the cache stays out of.
    // Credentials (RFC 9111 §3.5): without a user scope or a shared rule, only a response
    // that says public or s-maxage is stored, and only such an entry answers them.
    case("Authorization without a user scope: max-age alone is not stored", T60, 200, MAX60, fwd("larder; fwd=miss; detail=credentials")).req(&[("authorization", "Bearer x")]),
    case("Cookie without a user scope: a route ttl alone is not stored", T60, 200, NONE, fwd("larder; fwd=miss; detail=credentials")).req(&[("cookie", "sid=1")]),
    case("Authorization and a public response is stored", NO_TTL, 200, &[("cache-control", "public, max-age=60")], stored(60)).req(&[("authorization", "Bearer x")]),
    case("Cookie and an s-maxage response is stored", NO_TTL, 200, &[("cache-control", "s-maxage=60")], stored(60)).req(&[("cookie", "sid=1")]),
    case("Cookie and public, private is not stored", T60, 200, &[("cache-control", "public, private")], fwd("larder; fwd=miss; detail=private")).req(&[("cookie", "sid=1")]),
    case("a shared rule stores for a request with Cookie", T60, 200, NONE, stored(60)).shared().req(&[("cookie", "sid=1")]),
    case("a shared rule stores for a request with Authorization", T60, 200, MAX60, stored(60)).shared().req(&[("authorization", "Bearer x")]),
    case("a shared rule never stores a private response", T60, 200, &[("cache-control", "private")], fwd("larder; fwd=miss; detail=private")).shared().req(&[("cookie", "sid=1")]),
    case("a shared rule never stores a Set-Cookie", T60, 200, &[("set-cookie", "sid=2")], fwd("larder; fwd=miss; detail=set-cookie")).shared().req(&[("cookie", "sid=1")]),
    case("Authorization with a user scope is stored", T60, 200, NONE, stored(60)).user_scoped().req(&[("x-user", "alice"), ("authorization", "Bearer x")]),
    case("a user-scoped rule bypasses requests without a user", T60, 200, MAX60, fwd("larder; fwd=bypass; detail=no-user")).user_scoped(),
    // Targeted fields (RFC 9213): the first of Larder-Cache-Control and CDN-Cache-Control that
    // is present, valid and not empty decides, and Cache-Control and Expires are set aside.
    case("CDN-Cache-Control wins over Cache-Control: no-store", NO_TTL, 200, &[("cache-control", "no-store"), ("cdn-cache-control", "max-age=60")], stored(60)),
    case("Larder-Cache-Control wins over CDN-Cache-Control", NO_TTL, 200, &[("cdn-cache-control", "max-age=600"), ("larder-cache-control", "max-age=60")], stored(60)),
    case("a targeted no-store wins over Cache-Control: max-age", T60, 200, &[("cache-control", "max-age=600"), ("cdn-cache-control", "no-store")], fwd("larder; fwd=miss; detail=no-store")),
    case("a targeted field that does not parse is ignored", NO_TTL, 200, &[("larder-cache-control", "max-age=\"60"), ("cdn-cache-control", "max-age=30")], stored(30)),
    case("an empty targeted field is ignored", NO_TTL, 200, &[("cdn-cache-control", ""), ("cache-control", "max-age=60")], stored(60)),
    case("a targeted field sets Expires aside", NO_TTL, 200, &[("expires", "{now+3600}"), ("cdn-cache-control", "public")], fwd("larder; fwd=miss; detail=no-freshness")),
    case("a targeted max-age of the wrong type is ignored alone", T60, 200, &[("cdn-cache-control", "max-age=?1"), ("cache-control", "max-age=600")], stored(60)),
    case("a targeted private is stored only under a user scope", T60, 200, &[("cdn-cache-control", "private")], fwd("larder; fwd=miss; detail=private")),
    case("a targeted private under a user scope is stored", T60, 200, &[("larder-cache-control", "private, max-age=60")], stored(60)).user_scoped().req(&[("x-user", "alice")]),
    case("Authorization and a targeted public response is stored", NO_TTL, 200, &[("cdn-cache-control", "public, max-age=60")], stored(60)).req(&[("authorization", "Bearer x")]),
    case("Range bypasses", T60, 206, &[("content-range", "bytes 0-0/6")], fwd("larder; fwd=bypass; detail=range")).req(&[("range", "bytes=0-0")]),
    case("a GET with a body bypasses", T60, 200, MAX60, fwd("larder; fwd=bypass; detail=request-body")).req(&[("content-length", "5")]).body("hello"),
];

/// A router whose handler answers with the case's status and headers and a numbered body.
fn case_app(c: &Case, calls: Arc<AtomicUsize>) -> Router {
    let cache = cache();
    let mut rule = Rule::new("rfc");
    if let Some(ttl) = c.ttl {
        rule = rule.ttl(secs(ttl));
    }
    if c.user_scope {
        rule = rule.user_scope(UserScope::header(HeaderName::from_static("x-user")));
    }
    if c.shared {
        rule = rule.shared();
    }
    let (status, headers) = (c.status, c.response);
    let handler = move || {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let mut b = Response::builder().status(status);
            for (name, value) in headers {
                b = b.header(*name, render(value));
            }
            b.body(Body::from(format!("body-{n}"))).unwrap()
        }
    };
    Router::new().route("/r", any(handler).layer(cache.layer(rule)))
}

/// Header names a hit regenerates or adds; every other header must be the origin's.
const REGENERATED: [&str; 5] = ["age", "cache-status", "x-cache", "etag", "content-length"];

async fn check(c: &Case) {
    let calls = Arc::new(AtomicUsize::new(0));
    let app = case_app(c, Arc::clone(&calls));
    let req = || request(c.method, "/r", c.request, c.request_body);
    let first = send(&app, req()).await;
    let second = send(&app, req()).await;
    let name = c.name;
    let calls = calls.load(Ordering::SeqCst);
    match c.expect {
        Expect::Stored { ttl } => {
            assert_eq!(calls, 1, "{name}: handler calls");
            assert_eq!(first.cache_status(), "larder; fwd=miss; stored", "{name}");
            assert_eq!(first.x_cache(), "MISS", "{name}");
            let got = second.hit_ttl();
            let ttl = ttl as i64;
            assert!(
                got == ttl || got == ttl - 1,
                "{name}: hit ttl {got}, want {ttl}: {second:?}"
            );
            assert_eq!(second.x_cache(), "HIT", "{name}");
            assert_eq!(second.status, first.status, "{name}");
            assert_eq!(second.status.as_u16(), c.status, "{name}");
            assert_eq!(
                (&*first.body, &*second.body),
                ("body-1", "body-1"),
                "{name}"
            );
            assert!(
                second.headers.contains_key("age"),
                "{name}: a hit carries Age"
            );
            assert!(!second.headers.contains_key("set-cookie"), "{name}");
            for (k, v) in &first.headers {
                if !REGENERATED.contains(&k.as_str()) {
                    let hit: Vec<_> = second.headers.get_all(k).iter().collect();
                    assert!(hit.contains(&v), "{name}: hit lost `{k}: {v:?}`");
                }
            }
        }
        Expect::Forwarded(status) => {
            assert_eq!(calls, 2, "{name}: handler calls");
            let x_cache = if status.starts_with("larder; fwd=bypass")
                || status.starts_with("larder; fwd=method")
            {
                "BYPASS"
            } else {
                "MISS"
            };
            for (i, r) in [&first, &second].into_iter().enumerate() {
                assert_eq!(r.cache_status(), status, "{name}: response {}", i + 1);
                assert_eq!(r.x_cache(), x_cache, "{name}: response {}", i + 1);
                assert_eq!(r.status.as_u16(), c.status, "{name}");
            }
            assert_eq!(
                (&*first.body, &*second.body),
                ("body-1", "body-2"),
                "{name}"
            );
        }
        Expect::Answered {
            status,
            cache_status,
        } => {
            assert_eq!(calls, 0, "{name}: handler calls");
            for r in [&first, &second] {
                assert_eq!(r.status.as_u16(), status, "{name}");
                assert_eq!(r.cache_status(), cache_status, "{name}");
                assert_eq!(r.body, "", "{name}");
            }
        }
    }
}

#[tokio::test]
async fn rfc9111_storage_table() {
    for c in CASES {
        check(c).await;
    }
}

// ---------------------------------------------------------------------------------------------
// An origin whose answer a test can change between requests
// ---------------------------------------------------------------------------------------------

struct Answer {
    status: u16,
    headers: Vec<(&'static str, String)>,
    label: &'static str,
}

/// A handler that counts its calls; its body is `LABEL n=N lang=L`, where L is the request's
/// `Accept-Language` in brackets, or `<absent>`. It answers `304` to an `If-None-Match` equal
/// to its `ETag`.
#[derive(Clone)]
struct Origin {
    calls: Arc<AtomicUsize>,
    answer: Arc<Mutex<Answer>>,
}

impl Origin {
    fn new(status: u16, headers: &[(&'static str, &str)]) -> Self {
        Origin {
            calls: Arc::new(AtomicUsize::new(0)),
            answer: Arc::new(Mutex::new(Answer {
                status,
                headers: headers.iter().map(|(k, v)| (*k, render(v))).collect(),
                label: "v1",
            })),
        }
    }

    /// Replaces (or adds) a header of the answer.
    fn set_header(&self, name: &'static str, value: &str) {
        let mut a = self.answer.lock().unwrap();
        a.headers.retain(|(k, _)| *k != name);
        a.headers.push((name, value.to_owned()));
    }

    fn set(&self, status: u16, label: &'static str) {
        let mut a = self.answer.lock().unwrap();
        a.status = status;
        a.label = label;
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The answer to one request. A `HEAD` gets no content when `head_has_no_body` (as an
    /// origin should, RFC 9110 §9.3.2).
    fn respond(
        &self,
        method: &Method,
        headers: &HeaderMap,
        head_has_no_body: bool,
    ) -> Response<Body> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let a = self.answer.lock().unwrap();
        let lang = match headers.get(header::ACCEPT_LANGUAGE) {
            Some(v) => format!("[{}]", v.to_str().unwrap()),
            None => "<absent>".to_owned(),
        };
        let mut b = Response::builder().status(a.status);
        for (k, v) in &a.headers {
            b = b.header(*k, v);
        }
        // A conditional request that matches the current ETag gets 304 (RFC 9110 §13.1.2).
        let etag = a.headers.iter().find(|(k, _)| *k == "etag").map(|(_, v)| v);
        let inm = headers
            .get(header::IF_NONE_MATCH)
            .map(|v| v.to_str().unwrap());
        if etag.is_some() && inm == etag.map(String::as_str) {
            return b.status(304).body(Body::empty()).unwrap();
        }
        let body = if head_has_no_body && method == Method::HEAD {
            Body::empty()
        } else {
            Body::from(format!("{} n={n} lang={lang}", a.label))
        };
        b.body(body).unwrap()
    }

    fn router(&self, cache: &CacheHandle, rule: Rule) -> Router {
        let origin = self.clone();
        let handler = move |method: Method, headers: HeaderMap| {
            let origin = origin.clone();
            async move { origin.respond(&method, &headers, false) }
        };
        Router::new().route("/r", any(handler).layer(cache.layer(rule)))
    }
}

fn rule60() -> Rule {
    Rule::new("r").ttl(secs(60))
}

// ---------------------------------------------------------------------------------------------
// Users and writes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn private_responses_with_a_user_scope_are_keyed_by_user() {
    let origin = Origin::new(200, &[("cache-control", "private, max-age=60")]);
    let cache = cache();
    let rule = rule60().user_scope(UserScope::header(HeaderName::from_static("x-user")));
    let app = origin.router(&cache, rule);
    let alice = send(&app, get_req("/r", &[("x-user", "alice")])).await;
    let bob = send(&app, get_req("/r", &[("x-user", "bob")])).await;
    assert_eq!(alice.cache_status(), "larder; fwd=miss; stored");
    assert_eq!(bob.cache_status(), "larder; fwd=miss; stored");
    assert_ne!(alice.body, bob.body);
    let alice2 = send(&app, get_req("/r", &[("x-user", "alice")])).await;
    let bob2 = send(&app, get_req("/r", &[("x-user", "bob")])).await;
    assert_eq!(alice2.x_cache(), "HIT");
    assert_eq!(bob2.x_cache(), "HIT");
    assert_eq!(alice2.body, alice.body);
    assert_eq!(bob2.body, bob.body);
    assert_eq!(origin.calls(), 2);
}

#[tokio::test]
async fn set_cookie_is_never_replayed() {
    // The origin sets a cookie on its first answer only: that answer is not stored, the
    // next one is, and no hit carries the cookie.
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let cache = cache();
    let handler = move || {
        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let mut b = Response::builder().header("cache-control", "max-age=60");
            if n == 1 {
                b = b.header("set-cookie", "sid=secret");
            }
            b.body(Body::from(format!("n={n}"))).unwrap()
        }
    };
    let app = Router::new().route("/r", any(handler).layer(cache.layer(rule60())));
    let first = send(&app, get_req("/r", &[])).await;
    assert_eq!(first.cache_status(), "larder; fwd=miss; detail=set-cookie");
    assert_eq!(first.header("set-cookie"), Some("sid=secret"));
    let second = send(&app, get_req("/r", &[])).await;
    assert_eq!(second.cache_status(), "larder; fwd=miss; stored");
    for _ in 0..3 {
        let hit = send(&app, get_req("/r", &[])).await;
        assert_eq!(hit.x_cache(), "HIT");
        assert_eq!(hit.body, "n=2");
        assert!(!hit.headers.contains_key("set-cookie"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_successful_write_invalidates_the_paths_get_entry() {
    let origin = Origin::new(200, &[("cache-control", "max-age=60")]);
    let cache = cache();
    let app = origin.router(&cache, rule60());
    assert_eq!(
        send(&app, get_req("/r", &[])).await.cache_status(),
        "larder; fwd=miss; stored"
    );
    assert_eq!(send(&app, get_req("/r", &[])).await.x_cache(), "HIT");

    // A failed write (4xx) leaves the entry (RFC 9111 §4.4: only non-error statuses).
    origin.set(409, "conflict");
    let failed = send(&app, request("POST", "/r", &[], "x")).await;
    assert_eq!(failed.status, StatusCode::CONFLICT);
    assert_eq!(failed.cache_status(), "larder; fwd=method");
    assert_eq!(send(&app, get_req("/r", &[])).await.x_cache(), "HIT");
    assert_eq!(origin.calls(), 2);

    // A successful write, even to another query of the path, invalidates it.
    origin.set(200, "v2");
    let write = send(&app, request("POST", "/r?action=rename", &[], "x")).await;
    assert_eq!(
        write.cache_status(),
        "larder; fwd=method; detail=invalidated"
    );
    assert_eq!(write.x_cache(), "BYPASS");
    let after = send(&app, get_req("/r", &[])).await;
    assert_eq!(after.cache_status(), "larder; fwd=miss; stored");
    assert!(after.body.starts_with("v2 "), "{after:?}");
    assert_eq!(origin.calls(), 4);
    assert_eq!(send(&app, get_req("/r", &[])).await.body, after.body);
}

// ---------------------------------------------------------------------------------------------
// Request directives
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn request_no_store_is_not_stored_and_the_next_request_misses() {
    let origin = Origin::new(200, &[("cache-control", "max-age=60")]);
    let cache = cache();
    let app = origin.router(&cache, rule60());
    let r = send(&app, get_req("/r", &[("cache-control", "no-store")])).await;
    assert_eq!(
        r.cache_status(),
        "larder; fwd=miss; detail=request-no-store"
    );
    let plain = send(&app, get_req("/r", &[])).await;
    assert_eq!(plain.cache_status(), "larder; fwd=miss; stored");
    // A stored response may still answer a no-store request (§5.2.1.5 forbids storing only).
    let again = send(&app, get_req("/r", &[("cache-control", "no-store")])).await;
    assert_eq!(again.x_cache(), "HIT");
    assert_eq!(again.body, plain.body);
    assert_eq!(origin.calls(), 2);
}

#[tokio::test]
async fn only_if_cached_is_answered_from_a_stored_entry() {
    let origin = Origin::new(200, &[("cache-control", "max-age=60")]);
    let cache = cache();
    let app = origin.router(&cache, rule60());
    let miss = send(&app, get_req("/r", &[("cache-control", "only-if-cached")])).await;
    assert_eq!(miss.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(origin.calls(), 0);
    let stored = send(&app, get_req("/r", &[])).await;
    let hit = send(&app, get_req("/r", &[("cache-control", "only-if-cached")])).await;
    assert_eq!(hit.status, StatusCode::OK);
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(hit.body, stored.body);
    assert_eq!(origin.calls(), 1);
}

// ---------------------------------------------------------------------------------------------
// Time: Age, expiry
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn age_on_a_hit_counts_the_time_since_storing() {
    let origin = Origin::new(200, &[("cache-control", "max-age=60")]);
    let cache = cache();
    let app = origin.router(&cache, Rule::new("r"));
    send(&app, get_req("/r", &[])).await;
    tokio::time::advance(secs(10)).await;
    let hit = send(&app, get_req("/r", &[])).await;
    assert_eq!(hit.x_cache(), "HIT");
    assert!(hit.age() >= 10, "{hit:?}");
    assert_eq!(hit.age(), 10);
    assert_eq!(hit.hit_ttl(), 50);
}

#[tokio::test(start_paused = true)]
async fn age_on_a_hit_includes_the_upstream_age() {
    // RFC 9111 §4.2.3: an Age from the origin's side counts in the entry's age.
    let origin = Origin::new(200, &[("cache-control", "max-age=60"), ("age", "5")]);
    let cache = cache();
    let app = origin.router(&cache, Rule::new("r"));
    let miss = send(&app, get_req("/r", &[])).await;
    assert_eq!(miss.cache_status(), "larder; fwd=miss; stored");
    tokio::time::advance(secs(10)).await;
    let hit = send(&app, get_req("/r", &[])).await;
    assert_eq!(hit.x_cache(), "HIT");
    assert!(hit.age() >= 15, "{hit:?}");
    assert_eq!(
        hit.headers.get_all("age").iter().count(),
        1,
        "one Age line, regenerated"
    );
    assert_eq!(hit.hit_ttl(), 45);
}

#[tokio::test(start_paused = true)]
async fn hits_keep_upstream_cache_status_members_and_age_past_100_seconds() {
    // RFC 9211 §2: members of caches nearer the origin come first; ours is last, once.
    let origin = Origin::new(
        200,
        &[
            ("cache-control", "max-age=600"),
            ("cache-status", "origin-cache; hit"),
        ],
    );
    let cache = cache();
    let app = origin.router(&cache, Rule::new("r"));
    let miss = send(&app, get_req("/r", &[])).await;
    let members = |r: &Reply| -> Vec<String> {
        r.headers
            .get_all("cache-status")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        members(&miss),
        ["origin-cache; hit", "larder; fwd=miss; stored"]
    );
    for (wait, age, ttl) in [(3, 3, 597), (97, 100, 500), (150, 250, 350)] {
        tokio::time::advance(secs(wait)).await;
        let hit = send(&app, get_req("/r", &[])).await;
        assert_eq!(
            members(&hit),
            [
                "origin-cache; hit".to_owned(),
                format!("larder; hit; ttl={ttl}")
            ]
        );
        assert_eq!(hit.age(), age, "{hit:?}");
        assert_eq!(hit.headers.get_all("age").iter().count(), 1);
    }
    assert_eq!(origin.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_entry_expires_after_its_ttl() {
    let origin = Origin::new(200, &[]);
    let cache = cache();
    let app = origin.router(&cache, Rule::new("r").ttl(secs(30)));
    send(&app, get_req("/r", &[])).await;
    tokio::time::advance(secs(29)).await;
    let hit = send(&app, get_req("/r", &[])).await;
    assert_eq!(hit.cache_status(), "larder; hit; ttl=1");
    assert_eq!(origin.calls(), 1);
    tokio::time::advance(secs(2)).await;
    let expired = send(&app, get_req("/r", &[])).await;
    assert_eq!(expired.cache_status(), "larder; fwd=stale; stored");
    assert_eq!(expired.x_cache(), "MISS");
    assert_eq!(origin.calls(), 2);
    assert!(expired.body.contains("n=2"), "{expired:?}");
    assert_eq!(send(&app, get_req("/r", &[])).await.x_cache(), "HIT");
}

#[tokio::test(start_paused = true)]
async fn expires_is_relative_to_the_origins_date() {
    // Expires - Date = 60 s, but the Date is an hour old: the response's apparent age
    // (RFC 9111 §4.2.3: response_time - date_value) is 3600 s, so it is stale on arrival.
    let origin = Origin::new(200, &[("date", "{now-3600}"), ("expires", "{now-3540}")]);
    let cache = cache();
    let app = origin.router(&cache, Rule::new("r"));
    let first = send(&app, get_req("/r", &[])).await;
    let second = send(&app, get_req("/r", &[])).await;
    assert_ne!(
        second.x_cache(),
        "HIT",
        "served an hour-old response as fresh: {first:?}"
    );
    assert_eq!(origin.calls(), 2);
}

// ---------------------------------------------------------------------------------------------
// Vary
// ---------------------------------------------------------------------------------------------

/// Accept-Language values: en, fr, absent, empty.
const LANGS: [Option<&str>; 4] = [Some("en"), Some("fr"), None, Some("")];

fn lang_req(lang: Option<&str>) -> Request<Body> {
    match lang {
        Some(l) => get_req("/r", &[("accept-language", l)]),
        None => get_req("/r", &[]),
    }
}

fn lang_of(body: &str) -> &str {
    body.split(" lang=").nth(1).unwrap()
}

fn want_lang(lang: Option<&str>) -> String {
    lang.map_or_else(|| "<absent>".to_owned(), |l| format!("[{l}]"))
}

#[tokio::test]
async fn vary_declared_in_the_key_keeps_one_entry_per_value() {
    let origin = Origin::new(
        200,
        &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
    );
    let cache = cache();
    let rule = Rule::new("r").key(KeyOptions::new().vary_on([header::ACCEPT_LANGUAGE]));
    let app = origin.router(&cache, rule);
    for lang in LANGS {
        let r = send(&app, lang_req(lang)).await;
        assert_eq!(r.cache_status(), "larder; fwd=miss; stored", "{lang:?}");
        assert_eq!(lang_of(&r.body), want_lang(lang));
    }
    for _ in 0..2 {
        for lang in LANGS {
            let r = send(&app, lang_req(lang)).await;
            assert_eq!(r.x_cache(), "HIT", "{lang:?}: {r:?}");
            assert_eq!(lang_of(&r.body), want_lang(lang), "{lang:?}");
        }
    }
    assert_eq!(origin.calls(), 4);
}

#[tokio::test]
async fn vary_not_declared_keeps_a_variant_per_value_and_never_serves_another() {
    let origin = Origin::new(
        200,
        &[("cache-control", "max-age=60"), ("vary", "accept-language")],
    );
    let cache = cache();
    let app = origin.router(&cache, Rule::new("r"));
    // Every order of the four values, twice: whatever the one slot holds, no request gets
    // another value's body.
    let order = [0, 0, 1, 0, 2, 2, 3, 1, 3, 3, 2, 0, 1, 1];
    for i in order {
        let lang = LANGS[i];
        let r = send(&app, lang_req(lang)).await;
        assert_eq!(lang_of(&r.body), want_lang(lang), "{lang:?}: {r:?}");
    }
    // Each value has its own variant: one origin call per value, and every one a hit now.
    assert_eq!(origin.calls(), LANGS.len());
    for lang in LANGS {
        let r = send(&app, lang_req(lang)).await;
        assert_eq!(r.x_cache(), "HIT", "{lang:?}");
        assert_eq!(lang_of(&r.body), want_lang(lang));
    }
}

// ---------------------------------------------------------------------------------------------
// Validators
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn if_none_match_on_a_hit_gets_304() {
    let origin = Origin::new(200, &[("cache-control", "max-age=60"), ("etag", "\"v1\"")]);
    let cache = cache();
    let app = origin.router(&cache, Rule::new("r"));
    let stored = send(&app, get_req("/r", &[])).await;
    assert_eq!(stored.header("etag"), Some("\"v1\""));

    for inm in ["\"v1\"", "W/\"v1\"", "\"v0\", \"v1\"", "*"] {
        let r = send(&app, get_req("/r", &[("if-none-match", inm)])).await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{inm}");
        assert_eq!(r.body, "", "{inm}");
        assert_eq!(r.header("etag"), Some("\"v1\""), "{inm}");
        assert_eq!(r.header("cache-control"), Some("max-age=60"), "{inm}");
        assert_eq!(r.x_cache(), "HIT", "{inm}");
    }
    let other = send(&app, get_req("/r", &[("if-none-match", "\"v2\"")])).await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(other.body, stored.body);
    assert_eq!(other.x_cache(), "HIT");
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn an_entry_without_an_etag_gets_a_derived_strong_one() {
    let origin = Origin::new(200, &[("cache-control", "max-age=60")]);
    let cache = cache();
    let app = origin.router(&cache, Rule::new("r"));
    send(&app, get_req("/r", &[])).await;
    let hit = send(&app, get_req("/r", &[])).await;
    let etag = hit.header("etag").expect("derived etag").to_owned();
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() > 2,
        "{etag}"
    );
    assert_eq!(
        send(&app, get_req("/r", &[])).await.header("etag"),
        Some(&*etag)
    );
    let r = send(&app, get_req("/r", &[("if-none-match", &etag)])).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert_eq!(r.header("etag"), Some(&*etag));
    assert_eq!(origin.calls(), 1);
}

// ---------------------------------------------------------------------------------------------
// HEAD
// ---------------------------------------------------------------------------------------------

/// The cache directly over a tower service that answers `HEAD` without content.
fn head_aware_service(
    origin: &Origin,
    cache: &CacheHandle,
    rule: Rule,
) -> larder::Cache<
    impl Service<
        Request<Body>,
        Response = Response<Body>,
        Error = Infallible,
        Future = impl Send + 'static,
    > + Clone
    + Send
    + 'static,
> {
    let origin = origin.clone();
    let svc = service_fn(move |req: Request<Body>| {
        let res = origin.respond(req.method(), req.headers(), true);
        async move { Ok::<_, Infallible>(res) }
    });
    cache.layer(rule).layer(svc)
}

// A paused clock: the compared headers include `Age` and the TTL, which tick with time.
#[tokio::test(start_paused = true)]
async fn head_after_a_stored_get_is_a_hit_without_content() {
    let origin = Origin::new(
        200,
        &[
            ("cache-control", "max-age=60"),
            ("content-type", "text/plain"),
        ],
    );
    let cache = cache();
    let svc = head_aware_service(&origin, &cache, Rule::new("r"));
    let get = send(&svc, get_req("/r", &[])).await;
    let get_hit = send(&svc, get_req("/r", &[])).await;
    let head = send(&svc, request("HEAD", "/r", &[], "")).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.x_cache(), "HIT");
    assert_eq!(head.body, "");
    assert_eq!(head.headers, get_hit.headers);
    assert_eq!(get.body, get_hit.body);
    assert_eq!(origin.calls(), 1);
}

// A paused clock: the compared headers include `Age` and the TTL, which tick with time.
#[tokio::test(start_paused = true)]
async fn head_after_a_stored_get_through_axum_keeps_the_get_headers() {
    let origin = Origin::new(
        200,
        &[
            ("cache-control", "max-age=60"),
            ("content-type", "text/plain"),
        ],
    );
    let cache = cache();
    let app = origin.router(&cache, Rule::new("r"));
    send(&app, get_req("/r", &[])).await;
    let get_hit = send(&app, get_req("/r", &[])).await;
    let head = send(&app, request("HEAD", "/r", &[], "")).await;
    assert_eq!(head.x_cache(), "HIT");
    assert_eq!(head.body, "");
    assert_eq!(origin.calls(), 1);
    // RFC 9110 §9.3.2: the same fields as a GET, Content-Length included.
    assert_eq!(head.headers, get_hit.headers);
}

#[tokio::test]
async fn head_on_a_miss_does_not_store() {
    let origin = Origin::new(200, &[("cache-control", "max-age=60")]);
    let cache = cache();
    let svc = head_aware_service(&origin, &cache, Rule::new("r"));
    let head = send(&svc, request("HEAD", "/r", &[], "")).await;
    assert_eq!(head.cache_status(), "larder; fwd=miss; detail=head");
    assert_eq!(head.body, "");
    let get = send(&svc, get_req("/r", &[])).await;
    assert_eq!(get.cache_status(), "larder; fwd=miss; stored");
    assert!(get.body.contains("n=2"), "{get:?}");
    let hit = send(&svc, get_req("/r", &[])).await;
    assert_eq!(hit.body, get.body);
    assert_eq!(origin.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_head_that_triggers_a_background_refresh_does_not_store_an_empty_body() {
    let origin = Origin::new(
        200,
        &[("cache-control", "max-age=1, stale-while-revalidate=60")],
    );
    let cache = cache();
    let svc = head_aware_service(&origin, &cache, Rule::new("r"));
    let get = send(&svc, get_req("/r", &[])).await;
    assert!(get.body.starts_with("v1 n=1"));
    tokio::time::advance(secs(5)).await;
    origin.set(200, "v2");
    let head = send(&svc, request("HEAD", "/r", &[], "")).await;
    assert_eq!(head.x_cache(), "STALE");
    tokio::time::sleep(Duration::from_millis(10)).await;
    let after = send(&svc, get_req("/r", &[])).await;
    assert!(
        !after.body.is_empty(),
        "a GET got an empty body from an entry refreshed by a HEAD: {after:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Hop-by-hop fields
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn hop_by_hop_fields_are_not_replayed() {
    let origin = Origin::new(
        200,
        &[
            ("cache-control", "max-age=60"),
            ("connection", "x-foo"),
            ("x-foo", "1"),
            ("keep-alive", "timeout=5"),
            ("x-kept", "yes"),
        ],
    );
    let cache = cache();
    let app = origin.router(&cache, Rule::new("r"));
    send(&app, get_req("/r", &[])).await;
    let hit = send(&app, get_req("/r", &[])).await;
    assert_eq!(hit.x_cache(), "HIT");
    for name in ["connection", "x-foo", "keep-alive"] {
        assert!(!hit.headers.contains_key(name), "{name} replayed: {hit:?}");
    }
    assert_eq!(hit.header("x-kept"), Some("yes"));
}

// ---------------------------------------------------------------------------------------------
// Stale windows (RFC 5861)
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn stale_if_error_serves_the_stale_entry_when_the_origin_fails() {
    let origin = Origin::new(200, &[("cache-control", "max-age=1, stale-if-error=60")]);
    let cache = cache();
    let app = origin.router(&cache, Rule::new("r"));
    let fresh = send(&app, get_req("/r", &[])).await;
    tokio::time::advance(secs(5)).await;
    origin.set(503, "down");
    let stale = send(&app, get_req("/r", &[])).await;
    assert_eq!(stale.status, StatusCode::OK);
    assert_eq!(stale.body, fresh.body);
    assert_eq!(stale.x_cache(), "STALE");
    assert_eq!(
        stale.cache_status(),
        "larder; hit; ttl=-4; detail=stale-if-error"
    );
    assert_eq!(origin.calls(), 2);
    // Once the origin is back, its answer replaces the stale entry.
    origin.set(200, "v2");
    let back = send(&app, get_req("/r", &[])).await;
    assert_eq!(back.cache_status(), "larder; fwd=stale; stored");
    assert!(back.body.starts_with("v2 "));
}

#[tokio::test(start_paused = true)]
async fn must_revalidate_forbids_stale_if_error() {
    let origin = Origin::new(
        200,
        &[(
            "cache-control",
            "max-age=1, stale-if-error=60, must-revalidate",
        )],
    );
    let cache = cache();
    let app = origin.router(&cache, Rule::new("r"));
    send(&app, get_req("/r", &[])).await;
    tokio::time::advance(secs(5)).await;
    origin.set(503, "down");
    let failed = send(&app, get_req("/r", &[])).await;
    assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(failed.body.starts_with("down "));
    assert_eq!(
        failed.cache_status(),
        "larder; fwd=stale; detail=server-error"
    );
    assert_eq!(failed.x_cache(), "MISS");
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_ends_with_its_window() {
    let origin = Origin::new(200, &[("cache-control", "max-age=1, stale-if-error=10")]);
    let cache = cache();
    let app = origin.router(&cache, Rule::new("r"));
    send(&app, get_req("/r", &[])).await;
    tokio::time::advance(secs(20)).await;
    origin.set(503, "down");
    let failed = send(&app, get_req("/r", &[])).await;
    assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(start_paused = true)]
async fn stale_while_revalidate_serves_stale_and_refreshes_once_in_the_background() {
    let origin = Origin::new(
        200,
        &[("cache-control", "max-age=1, stale-while-revalidate=60")],
    );
    let cache = cache();
    let app = origin.router(&cache, Rule::new("r"));
    let fresh = send(&app, get_req("/r", &[])).await;
    tokio::time::advance(secs(5)).await;
    origin.set(200, "v2");
    // Two stale requests before the refresh runs: both served at once, one refresh.
    for _ in 0..2 {
        let stale = send(&app, get_req("/r", &[])).await;
        assert_eq!(stale.body, fresh.body);
        assert_eq!(stale.x_cache(), "STALE");
        assert_eq!(
            stale.cache_status(),
            "larder; hit; ttl=-4; detail=stale-while-revalidate"
        );
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(origin.calls(), 2, "exactly one background refresh");
    let hit = send(&app, get_req("/r", &[])).await;
    assert_eq!(hit.x_cache(), "HIT");
    assert!(hit.body.starts_with("v2 "), "{hit:?}");
    assert_eq!(origin.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_conditional_request_that_triggers_a_refresh_still_refreshes_the_entry() {
    // The client's If-None-Match is answered from the stale entry (304); the background
    // refresh is the cache's own request and must bring back a full response to store.
    let origin = Origin::new(
        200,
        &[
            ("cache-control", "max-age=1, stale-while-revalidate=60"),
            ("etag", "\"v1\""),
        ],
    );
    let cache = cache();
    let app = origin.router(&cache, Rule::new("r"));
    send(&app, get_req("/r", &[])).await;
    tokio::time::advance(secs(5)).await;
    let cond = send(&app, get_req("/r", &[("if-none-match", "\"v1\"")])).await;
    assert_eq!(cond.status, StatusCode::NOT_MODIFIED);
    assert_eq!(cond.x_cache(), "STALE");
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(origin.calls(), 2, "one background refresh");
    let next = send(&app, get_req("/r", &[])).await;
    assert_eq!(next.x_cache(), "HIT", "the refresh did not store: {next:?}");
}

// ---------------------------------------------------------------------------------------------
// Revalidation (RFC 9111 §4.3): a stale entry with the origin's validators costs a 304
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_304_refreshes_the_entry_and_its_headers() {
    let origin = Origin::new(
        200,
        &[
            ("cache-control", "max-age=10"),
            ("etag", "\"v1\""),
            ("x-version", "1"),
        ],
    );
    let cache = cache();
    let app = origin.router(&cache, Rule::new("r"));
    let first = send(&app, get_req("/r", &[])).await;
    assert_eq!(first.cache_status(), "larder; fwd=miss; stored");
    tokio::time::advance(secs(11)).await;
    // The origin's answer changed a header, not the representation (same ETag).
    origin.set_header("x-version", "2");
    let revalidated = send(&app, get_req("/r", &[])).await;
    assert_eq!(origin.calls(), 2, "one conditional request");
    assert_eq!(revalidated.status, StatusCode::OK);
    assert_eq!(
        revalidated.cache_status(),
        "larder; fwd=stale; fwd-status=304; stored"
    );
    assert_eq!(revalidated.x_cache(), "REVALIDATED");
    assert_eq!(
        revalidated.body, first.body,
        "the stored body, not sent again"
    );
    assert_eq!(revalidated.headers["x-version"], "2", "the 304's headers");
    assert_eq!(revalidated.headers["etag"], "\"v1\"");
    // Fresh again for the 304's max-age (dated on receipt, to the second), with the updated
    // headers.
    let hit = send(&app, get_req("/r", &[])).await;
    let status = hit.cache_status();
    assert!(
        status == "larder; hit; ttl=10" || status == "larder; hit; ttl=9",
        "{status}"
    );
    assert_eq!(hit.headers["x-version"], "2");
    assert_eq!(hit.body, first.body);
    assert_eq!(origin.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn must_revalidate_after_expiry_sends_a_conditional_request() {
    let origin = Origin::new(
        200,
        &[
            ("cache-control", "max-age=5, must-revalidate"),
            ("etag", "\"a\""),
        ],
    );
    let cache = cache();
    let app = origin.router(&cache, Rule::new("r"));
    let first = send(&app, get_req("/r", &[])).await;
    tokio::time::advance(secs(6)).await;
    let second = send(&app, get_req("/r", &[])).await;
    assert_eq!(second.x_cache(), "REVALIDATED", "{second:?}");
    assert_eq!(second.body, first.body);
    assert_eq!(origin.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_changed_representation_after_expiry_is_fetched_whole() {
    let origin = Origin::new(200, &[("cache-control", "max-age=5"), ("etag", "\"v1\"")]);
    let cache = cache();
    let app = origin.router(&cache, Rule::new("r"));
    send(&app, get_req("/r", &[])).await;
    tokio::time::advance(secs(6)).await;
    origin.set_header("etag", "\"v2\"");
    origin.set(200, "v2");
    let changed = send(&app, get_req("/r", &[])).await;
    assert_eq!(changed.cache_status(), "larder; fwd=stale; stored");
    assert!(changed.body.starts_with("v2 n=2"), "{changed:?}");
    let hit = send(&app, get_req("/r", &[])).await;
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(hit.body, changed.body);
}

#[tokio::test(start_paused = true)]
async fn a_no_cache_response_with_a_validator_is_revalidated_on_every_use() {
    let origin = Origin::new(200, &[("cache-control", "no-cache"), ("etag", "\"n\"")]);
    let cache = cache();
    let app = origin.router(&cache, Rule::new("r").ttl(secs(60)));
    let first = send(&app, get_req("/r", &[])).await;
    assert_eq!(first.cache_status(), "larder; fwd=miss; stored");
    for calls in [2, 3] {
        let again = send(&app, get_req("/r", &[])).await;
        assert_eq!(again.x_cache(), "REVALIDATED", "{again:?}");
        assert_eq!(again.body, first.body);
        assert_eq!(origin.calls(), calls, "every use asks the origin");
    }
}

/// An origin that gives only `Last-Modified`: the cache asks with `If-Modified-Since`.
#[tokio::test(start_paused = true)]
async fn last_modified_alone_is_revalidated_with_if_modified_since() {
    const MODIFIED: &str = "Tue, 14 Nov 2023 22:13:20 GMT";
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (c, s) = (Arc::clone(&calls), Arc::clone(&seen));
    let origin = service_fn(move |req: Request<Body>| {
        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
        let since = req.headers().get(header::IF_MODIFIED_SINCE).cloned();
        s.lock().unwrap().push(since.clone());
        async move {
            let b = Response::builder()
                .header("cache-control", "max-age=5")
                .header("last-modified", MODIFIED);
            let response = if since.is_some_and(|v| v == MODIFIED) {
                b.status(304).body(Body::empty())
            } else {
                b.body(Body::from(format!("body-{n}")))
            };
            Ok::<_, Infallible>(response.unwrap())
        }
    });
    let cache = cache();
    let svc = cache.layer(Rule::new("r")).layer(origin);
    let first = send(&svc, get_req("/r", &[])).await;
    tokio::time::advance(secs(6)).await;
    let second = send(&svc, get_req("/r", &[])).await;
    assert_eq!(second.x_cache(), "REVALIDATED", "{second:?}");
    assert_eq!(
        (first.body.as_str(), second.body.as_str()),
        ("body-1", "body-1")
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0], None, "the first request was not conditional");
    assert_eq!(seen[1].as_ref().unwrap(), MODIFIED);
}

/// An origin for the revalidation corner cases: `ETag` from `etag` (changeable), a 304 to a
/// matching `If-None-Match` shaped by `not_modified` (its headers), `larder-tags: product`
/// on full answers only; counts its calls.
#[derive(Clone)]
struct Conditional {
    calls: Arc<AtomicUsize>,
    etag: Arc<Mutex<&'static str>>,
    not_modified: Arc<Mutex<Vec<(&'static str, &'static str)>>>,
}

impl Conditional {
    fn new() -> Self {
        Conditional {
            calls: Arc::new(AtomicUsize::new(0)),
            etag: Arc::new(Mutex::new("\"a\"")),
            // No `Date` (this test's clock is paused: the cache's clock advances, the wall
            // clock does not); the cache dates the 304 on receipt.
            not_modified: Arc::new(Mutex::new(vec![("etag", "\"a\"")])),
        }
    }

    fn service(
        &self,
        cache: &CacheHandle,
    ) -> impl Service<
        Request<Body>,
        Response = Response<impl HttpBody<Data = bytes::Bytes, Error = impl std::fmt::Debug>>,
        Error = Infallible,
    > + Clone {
        let this = self.clone();
        let origin = service_fn(move |req: Request<Body>| {
            let n = this.calls.fetch_add(1, Ordering::SeqCst) + 1;
            let etag = *this.etag.lock().unwrap();
            let inm = req.headers().get("if-none-match").cloned();
            let not_modified = this.not_modified.lock().unwrap().clone();
            async move {
                if inm.is_some_and(|v| v == "\"a\"") {
                    let mut b = Response::builder().status(304);
                    for (k, v) in not_modified {
                        b = b.header(k, render(v));
                    }
                    return Ok::<_, Infallible>(b.body(Body::empty()).unwrap());
                }
                let r = Response::builder()
                    .header("cache-control", "max-age=5")
                    .header("etag", etag)
                    .header("larder-tags", "product")
                    .body(Body::from(format!("body {etag} #{n}")))
                    .unwrap();
                Ok(r)
            }
        });
        cache.layer(Rule::new("r")).layer(origin)
    }
}

/// The origin's `larder-tags` come with a full answer, not with a 304: the refreshed entry
/// keeps them, so invalidating the tag still hides it.
#[tokio::test(start_paused = true)]
async fn a_refreshed_entry_keeps_the_origins_tags() {
    let origin = Conditional::new();
    let cache = cache();
    let svc = origin.service(&cache);
    let first = send(&svc, get_req("/r", &[])).await;
    tokio::time::advance(secs(6)).await;
    let revalidated = send(&svc, get_req("/r", &[])).await;
    assert_eq!(revalidated.x_cache(), "REVALIDATED");
    assert_eq!(revalidated.body, first.body);
    cache.invalidate_tags(["product"]).await.unwrap();
    let after = send(&svc, get_req("/r", &[])).await;
    assert_eq!(after.x_cache(), "MISS", "the tag still hides it: {after:?}");
    assert_eq!(origin.calls.load(Ordering::SeqCst), 3);
}

/// A 304 that names another representation (another strong ETag) does not select the stored
/// one (§4.3.4): the cache asks again, unconditionally, and stores the new answer.
#[tokio::test(start_paused = true)]
async fn a_304_for_another_representation_is_asked_again_unconditionally() {
    let origin = Conditional::new();
    *origin.not_modified.lock().unwrap() = vec![("etag", "\"b\"")];
    let cache = cache();
    let svc = origin.service(&cache);
    send(&svc, get_req("/r", &[])).await;
    tokio::time::advance(secs(6)).await;
    *origin.etag.lock().unwrap() = "\"b\"";
    let again = send(&svc, get_req("/r", &[])).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body, "body \"b\" #3", "{again:?}");
    assert_eq!(again.cache_status(), "larder; fwd=stale; stored");
    assert_eq!(
        origin.calls.load(Ordering::SeqCst),
        3,
        "the 304, then the whole answer"
    );
}

/// A 304 without `Date` is dated on receipt: the refreshed entry is fresh, not as old as the
/// stale one.
#[tokio::test(start_paused = true)]
async fn a_304_without_a_date_refreshes_the_entry() {
    let origin = Conditional::new();
    *origin.not_modified.lock().unwrap() = vec![("etag", "\"a\"")];
    let cache = cache();
    let svc = origin.service(&cache);
    // The full answer is dated: it ages with the clock.
    send(&svc, get_req("/r", &[])).await;
    tokio::time::advance(secs(6)).await;
    let revalidated = send(&svc, get_req("/r", &[])).await;
    assert_eq!(revalidated.x_cache(), "REVALIDATED", "{revalidated:?}");
    let hit = send(&svc, get_req("/r", &[])).await;
    assert_eq!(hit.x_cache(), "HIT", "{hit:?}");
    assert_eq!(origin.calls.load(Ordering::SeqCst), 2);
}
