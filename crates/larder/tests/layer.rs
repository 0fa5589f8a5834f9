//! The layer through an axum router (`oneshot`): hits, users, writes, pages, rules by path.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::{Path, Query, State},
    http::{HeaderMap, Request, StatusCode},
    response::IntoResponse,
    routing::get,
};
use http_body_util::BodyExt;
use larder::{CacheHandle, MemoryStore, Pagination, Rule, Rules, TAGS_HEADER, UserScope};
use tower::ServiceExt;

fn cache() -> CacheHandle {
    CacheHandle::builder(MemoryStore::default())
        .x_cache()
        .build()
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, String) {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

fn get_req(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn as_user(method: &str, uri: &str, user: u32) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer demo-key-{user}"))
        .body(Body::empty())
        .unwrap()
}

/// The user named by a `Bearer demo-key-N` token (a stand-in for an auth middleware).
fn bearer_user() -> UserScope {
    UserScope::from_fn(|parts| {
        let token = parts.headers.get("authorization")?.to_str().ok()?;
        token.strip_prefix("Bearer demo-key-").map(str::to_owned)
    })
}

fn x_cache(h: &HeaderMap) -> &str {
    h["x-cache"].to_str().unwrap()
}

#[tokio::test]
async fn miss_then_hit_returns_same_body_headers_and_status() {
    let cache = cache();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let app = Router::new().route(
        "/r",
        get(move || {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                (
                    [("content-type", "application/json"), ("x-origin", "yes")],
                    format!("{{\"n\":{n}}}"),
                )
            }
        })
        .layer(cache.layer(Rule::new("r").ttl(Duration::from_secs(60)))),
    );
    let (s1, h1, b1) = send(&app, get_req("/r")).await;
    let (s2, h2, b2) = send(&app, get_req("/r")).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
    assert_eq!(b1, b2);
    assert_eq!(h1["cache-status"], "larder; fwd=miss; stored");
    assert_eq!(x_cache(&h1), "MISS");
    assert!(
        h2["cache-status"]
            .to_str()
            .unwrap()
            .starts_with("larder; hit; ttl=")
    );
    assert_eq!(x_cache(&h2), "HIT");
    for name in ["content-type", "x-origin"] {
        assert_eq!(h1[name], h2[name], "{name} differs on the hit");
    }
    assert!(h2.contains_key("etag"), "every stored entry has an ETag");
    assert_eq!(h2["age"], "0");
    let stats = cache.stats();
    assert_eq!(stats.routes["r"].hits, 1);
    assert_eq!(stats.routes["r"].misses, 1);
}

#[tokio::test(start_paused = true)]
async fn entries_expire_after_their_ttl() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let cache = cache();
    let app = Router::new().route(
        "/r",
        get(move || {
            c.fetch_add(1, Ordering::SeqCst);
            async { "v" }
        })
        .layer(cache.layer(Rule::new("r").ttl(Duration::from_secs(300)))),
    );
    send(&app, get_req("/r")).await;
    tokio::time::advance(Duration::from_secs(299)).await;
    let (_, h, _) = send(&app, get_req("/r")).await;
    assert_eq!(h["cache-status"], "larder; hit; ttl=1");
    assert_eq!(h["age"], "299");
    tokio::time::advance(Duration::from_secs(2)).await;
    let (_, h, _) = send(&app, get_req("/r")).await;
    assert_eq!(x_cache(&h), "MISS");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn two_users_never_see_each_others_entries() {
    let cache = cache();
    let app = Router::new().route(
        "/api/user/me",
        get(|headers: HeaderMap| async move {
            let auth = headers["authorization"].to_str().unwrap().to_owned();
            format!("{{\"me\":\"{auth}\"}}")
        })
        .layer(
            cache.layer(
                Rule::new("me")
                    .ttl(Duration::from_secs(300))
                    .user_scope(bearer_user())
                    .tag("user:{user}"),
            ),
        ),
    );
    for round in 0..2 {
        for user in [1, 2, 3] {
            let (_, h, body) = send(&app, as_user("GET", "/api/user/me", user)).await;
            assert_eq!(body, format!("{{\"me\":\"Bearer demo-key-{user}\"}}"));
            assert_eq!(x_cache(&h), if round == 0 { "MISS" } else { "HIT" });
        }
    }
    // Without a user scope, a response that does not say `public` is never shared among
    // callers with credentials.
    let app = Router::new().route(
        "/shared",
        get(|headers: HeaderMap| async move { format!("{:?}", headers.get("authorization")) })
            .layer(cache.layer(Rule::new("unscoped").ttl(Duration::from_secs(300)))),
    );
    let (_, h, a) = send(&app, as_user("GET", "/shared", 1)).await;
    assert_eq!(h["cache-status"], "larder; fwd=miss; detail=credentials");
    let (_, _, b) = send(&app, as_user("GET", "/shared", 2)).await;
    assert_ne!(a, b);
    // A scoped rule caches nothing for a request it cannot attribute to a user.
    let app = Router::new().route(
        "/api/user/me",
        get(|| async { "anonymous" }).layer(
            cache.layer(
                Rule::new("me")
                    .ttl(Duration::from_secs(300))
                    .user_scope(bearer_user()),
            ),
        ),
    );
    let (_, h, _) = send(&app, get_req("/api/user/me")).await;
    assert_eq!(h["cache-status"], "larder; fwd=bypass; detail=no-user");
}

/// A tiny per-user store of chat sessions, to check invalidation end to end.
#[derive(Clone, Default)]
struct Db {
    sessions: Arc<Mutex<HashMap<String, Vec<String>>>>,
    reads: Arc<AtomicUsize>,
}

fn user_of(headers: &HeaderMap) -> String {
    headers["authorization"]
        .to_str()
        .unwrap()
        .trim_start_matches("Bearer demo-key-")
        .to_owned()
}

async fn list_sessions(
    State(db): State<Db>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> String {
    db.reads.fetch_add(1, Ordering::SeqCst);
    let page: usize = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
    let per_page: usize = q.get("per_page").and_then(|p| p.parse().ok()).unwrap_or(2);
    let all = db
        .sessions
        .lock()
        .unwrap()
        .get(&user_of(&headers))
        .cloned()
        .unwrap_or_default();
    let page: Vec<_> = all
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .cloned()
        .collect();
    serde_json::json!({ "total": all.len(), "sessions": page }).to_string()
}

async fn create_session(
    State(db): State<Db>,
    headers: HeaderMap,
    body: String,
) -> impl IntoResponse {
    db.sessions
        .lock()
        .unwrap()
        .entry(user_of(&headers))
        .or_default()
        .insert(0, body);
    StatusCode::CREATED
}

async fn rename_session(
    State(db): State<Db>,
    headers: HeaderMap,
    Path(sid): Path<usize>,
    body: String,
) -> StatusCode {
    let mut all = db.sessions.lock().unwrap();
    match all.get_mut(&user_of(&headers)).and_then(|s| s.get_mut(sid)) {
        Some(s) => {
            *s = body;
            StatusCode::NO_CONTENT
        }
        None => StatusCode::NOT_FOUND,
    }
}

fn sessions_app(cache: &CacheHandle, db: Db) -> Router {
    let list = Rule::new("sessions")
        .ttl(Duration::from_secs(300))
        .user_scope(bearer_user())
        .paginate(Pagination::new("page").per_page("per_page").defaults(1, 2))
        .tag("sessions:{user}");
    let write = Rule::new("sessions_write")
        .user_scope(bearer_user())
        .invalidates(["sessions:{user}", "stats:{user}"]);
    Router::new()
        .route(
            "/api/chat/sessions",
            // `MethodRouter::layer` wraps every method added so far: give each its own layer.
            get(list_sessions)
                .layer(cache.layer(list))
                .merge(axum::routing::post(create_session).layer(cache.layer(write.clone()))),
        )
        .route(
            "/api/chat/sessions/{sid}",
            axum::routing::put(rename_session).layer(cache.layer(write)),
        )
        .with_state(db)
}

fn with_body(method: &str, uri: &str, user: u32, body: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer demo-key-{user}"))
        .body(Body::from(body.to_owned()))
        .unwrap()
}

#[tokio::test]
async fn a_write_invalidates_its_tags_and_the_next_read_is_a_miss_with_new_data() {
    let cache = cache();
    let db = Db::default();
    for i in 0..6 {
        db.sessions
            .lock()
            .unwrap()
            .entry("1".into())
            .or_default()
            .push(format!("s{i}"));
    }
    let app = sessions_app(&cache, db.clone());

    let (_, h, before) = send(&app, as_user("GET", "/api/chat/sessions", 1)).await;
    assert_eq!(x_cache(&h), "MISS");
    let (_, h, _) = send(&app, as_user("GET", "/api/chat/sessions", 1)).await;
    assert_eq!(x_cache(&h), "HIT");

    let (status, h, _) = send(&app, with_body("POST", "/api/chat/sessions", 1, "new")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(h["cache-status"], "larder; fwd=method; detail=invalidated");

    let (_, h, after) = send(&app, as_user("GET", "/api/chat/sessions", 1)).await;
    assert_eq!(x_cache(&h), "MISS");
    assert_ne!(before, after);
    assert!(after.contains("\"new\""), "{after}");
    assert!(after.contains("\"total\":7"));
}

#[tokio::test]
async fn pages_are_separate_entries_and_one_write_clears_them_all() {
    let cache = cache();
    let db = Db::default();
    for user in ["1", "2"] {
        for i in 0..6 {
            db.sessions
                .lock()
                .unwrap()
                .entry(user.into())
                .or_default()
                .push(format!("u{user}s{i}"));
        }
    }
    let app = sessions_app(&cache, db.clone());
    let pages = [
        "/api/chat/sessions?page=1",
        "/api/chat/sessions?page=2",
        "/api/chat/sessions?page=3",
    ];
    let mut first = Vec::new();
    for p in pages {
        let (_, h, body) = send(&app, as_user("GET", p, 1)).await;
        assert_eq!(x_cache(&h), "MISS", "{p}");
        first.push(body);
    }
    assert_eq!(first.len(), 3);
    assert!(
        first[0] != first[1] && first[1] != first[2],
        "pages are distinct entries"
    );
    // The default page and explicit defaults are one entry.
    let (_, h, _) = send(
        &app,
        as_user("GET", "/api/chat/sessions?per_page=2&page=1", 1),
    )
    .await;
    assert_eq!(x_cache(&h), "HIT");
    // User 2's pages are cached too, and must survive user 1's write.
    for p in pages {
        send(&app, as_user("GET", p, 2)).await;
    }
    // Rename session 3 (on page 2) as user 1.
    let (status, _, _) = send(&app, with_body("PUT", "/api/chat/sessions/3", 1, "renamed")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for (i, p) in pages.iter().enumerate() {
        let (_, h, body) = send(&app, as_user("GET", p, 1)).await;
        assert_eq!(
            x_cache(&h),
            "MISS",
            "page {} of user 1 was invalidated",
            i + 1
        );
        if i == 1 {
            assert!(body.contains("renamed"), "{body}");
        }
        let (_, h, _) = send(&app, as_user("GET", p, 2)).await;
        assert_eq!(x_cache(&h), "HIT", "user 2's page {} is untouched", i + 1);
    }
    // A failed write invalidates nothing.
    let (status, h, _) = send(&app, with_body("PUT", "/api/chat/sessions/99", 1, "x")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(h["cache-status"], "larder; fwd=method");
    let (_, h, _) = send(&app, as_user("GET", pages[0], 1)).await;
    assert_eq!(x_cache(&h), "HIT");
}

#[tokio::test]
async fn rules_by_path_fill_tags_from_path_parameters() {
    let cache = cache();
    let version = Arc::new(AtomicUsize::new(0));
    let v = Arc::clone(&version);
    let v2 = Arc::clone(&version);
    let rules = Rules::new()
        .route(
            "/docs/{id}",
            Rule::new("doc")
                .ttl(Duration::from_secs(60))
                .tag("doc:{id}"),
        )
        .route(
            "/docs/{id}/edit",
            Rule::new("doc_edit").invalidates(["doc:{id}"]),
        );
    let app = Router::new()
        .route(
            "/docs/{id}",
            get(move |Path(id): Path<u32>| {
                let n = v.load(Ordering::SeqCst);
                async move { format!("doc {id} v{n}") }
            }),
        )
        .route(
            "/docs/{id}/edit",
            axum::routing::post(move || {
                v2.fetch_add(1, Ordering::SeqCst);
                async { StatusCode::OK }
            }),
        )
        .route("/other", get(|| async { "other" }))
        .layer(cache.layer_with(rules));

    assert_eq!(send(&app, get_req("/docs/1")).await.2, "doc 1 v0");
    assert_eq!(send(&app, get_req("/docs/2")).await.2, "doc 2 v0");
    send(
        &app,
        Request::post("/docs/1/edit").body(Body::empty()).unwrap(),
    )
    .await;
    let (_, h, body) = send(&app, get_req("/docs/1")).await;
    assert_eq!((x_cache(&h), body.as_str()), ("MISS", "doc 1 v1"));
    let (_, h, body) = send(&app, get_req("/docs/2")).await;
    assert_eq!((x_cache(&h), body.as_str()), ("HIT", "doc 2 v0"));
    // No rule, no caching; the response still says so.
    let (_, h, _) = send(&app, get_req("/other")).await;
    assert_eq!(h["cache-status"], "larder; fwd=bypass; detail=no-rule");
}

#[tokio::test]
async fn handler_tags_are_used_and_stripped() {
    let cache = cache();
    let app = Router::new().route(
        "/r",
        get(|| async { ([("larder-tags", "report, finance ")], "data") })
            .layer(cache.layer(Rule::new("r").ttl(Duration::from_secs(60)))),
    );
    let (_, h, _) = send(&app, get_req("/r")).await;
    assert!(
        !h.contains_key(TAGS_HEADER),
        "the tag header never leaves the layer"
    );
    assert_eq!(x_cache(&send(&app, get_req("/r")).await.1), "HIT");
    cache.invalidate_tags(["finance"]).await.unwrap();
    let (_, h, _) = send(&app, get_req("/r")).await;
    assert_eq!(x_cache(&h), "MISS");
    assert!(!h.contains_key(TAGS_HEADER));
    cache.purge().await.unwrap();
    assert_eq!(x_cache(&send(&app, get_req("/r")).await.1), "MISS");
}

#[tokio::test]
async fn a_tag_invalidated_during_a_miss_is_not_stored() {
    // The origin reads old data, then a write invalidates, then the old data would be stored:
    // the entry's birth stamp predates the invalidation, so it never becomes visible.
    let cache = cache();
    let gate = Arc::new(tokio::sync::Notify::new());
    let entered = Arc::new(tokio::sync::Notify::new());
    let (g, e) = (Arc::clone(&gate), Arc::clone(&entered));
    let app = Router::new().route(
        "/r",
        get(move || {
            let (g, e) = (Arc::clone(&g), Arc::clone(&e));
            async move {
                e.notify_one();
                g.notified().await;
                "old"
            }
        })
        .layer(cache.layer(Rule::new("r").ttl(Duration::from_secs(60)).tag("t"))),
    );
    let a = app.clone();
    let read = tokio::spawn(async move { send(&a, get_req("/r")).await });
    entered.notified().await;
    cache.invalidate_tags(["t"]).await.unwrap();
    gate.notify_one();
    read.await.unwrap();
    // The next read is a miss: the "old" response was not stored (or is hidden).
    let app2 = app.clone();
    let next = tokio::spawn(async move { send(&app2, get_req("/r")).await });
    entered.notified().await;
    gate.notify_one();
    let (_, h, _) = next.await.unwrap();
    assert_eq!(x_cache(&h), "MISS");
}

#[tokio::test(start_paused = true)]
async fn hot_entries_are_refreshed_once_before_they_expire() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let cache = cache();
    let app = Router::new().route(
        "/hot",
        get(move || {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                // The origin takes 200 ms: XFetch's delta.
                tokio::time::sleep(Duration::from_millis(200)).await;
                format!("v{n}")
            }
        })
        .layer(
            cache.layer(
                Rule::new("hot")
                    .ttl(Duration::from_secs(10))
                    .early_refresh(),
            ),
        ),
    );
    assert_eq!(send(&app, get_req("/hot")).await.2, "v0");
    // Far from expiry (9 s left for a 0.2 s recompute) nothing is refreshed.
    tokio::time::advance(Duration::from_secs(1)).await;
    for _ in 0..100 {
        let (_, h, body) = send(&app, get_req("/hot")).await;
        assert_eq!((x_cache(&h), body.as_str()), ("HIT", "v0"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // The entry was stored at 0.2 s: now 1.2 s. At 10.15 s it has 50 ms left, and each hit
    // triggers with probability e^(-0.05/0.2) = 0.78; one refresh runs.
    tokio::time::advance(Duration::from_millis(8_950)).await;
    for _ in 0..20 {
        let (_, h, body) = send(&app, get_req("/hot")).await;
        assert_eq!(
            (x_cache(&h), body.as_str()),
            ("HIT", "v0"),
            "requests keep the fresh entry"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2, "exactly one early refresh");
    // Past the old expiry: still a hit, on the refreshed entry.
    tokio::time::advance(Duration::from_secs(1)).await;
    let (_, h, body) = send(&app, get_req("/hot")).await;
    assert_eq!((x_cache(&h), body.as_str()), ("HIT", "v1"));
}
