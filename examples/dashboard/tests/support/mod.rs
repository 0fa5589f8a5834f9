//! Drives the dashboard router with `oneshot`, as a client would over HTTP.

#![allow(dead_code)]

use axum::{
    Router,
    body::Body,
    http::{Method, Request, StatusCode, header},
};
use example_dashboard::{Config, Dashboard, StoreKind, app, connect};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

pub(crate) const ADMIN: &str = "admin-secret";
/// The header of the tiered store's consistency token.
pub(crate) const CONSISTENCY: &str = "larder-consistency";

/// A dashboard on an in-memory SQLite database with no added latency, refills off: the
/// reads after a write or an invalidation then show exactly what it invalidated (with
/// refills on, the dashboard's default, they may already be refilled hits; see
/// [`dashboard_refilling`]).
pub(crate) async fn dashboard(store: StoreKind) -> (Dashboard, Router) {
    dashboard_with(config(store)).await
}

/// The configuration of [`dashboard`], to change before starting one.
pub(crate) fn config(store: StoreKind) -> Config {
    Config {
        store,
        database_url: Some("sqlite::memory:".into()),
        db_latency_ms: 0,
        admin_token: Some(ADMIN.into()),
        refill: false,
        ..Config::defaults()
    }
}

/// [`dashboard`] with refills on, as the dashboard runs by default.
pub(crate) async fn dashboard_refilling(store: StoreKind) -> (Dashboard, Router) {
    dashboard_with(Config {
        refill: true,
        ..config(store)
    })
    .await
}

pub(crate) async fn dashboard_with(config: Config) -> (Dashboard, Router) {
    let state = connect(&config).await.expect("the dashboard starts");
    let router = app(state.clone());
    (state, router)
}

/// One answer: status, `Cache-Status`, `X-Cache` and the JSON body (`Null` if empty).
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) cache_status: Option<String>,
    pub(crate) x_cache: Option<String>,
    /// The `larder-consistency` token a write answers with on the tiered store.
    pub(crate) token: Option<String>,
    pub(crate) body: Value,
}

impl Answer {
    pub(crate) fn is_hit(&self) -> bool {
        self.x_cache.as_deref() == Some("HIT")
    }

    pub(crate) fn is_miss(&self) -> bool {
        self.x_cache.as_deref() == Some("MISS")
    }
}

pub(crate) async fn call(
    router: &Router,
    method: Method,
    uri: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> Answer {
    call_with_token(router, method, uri, bearer, body, None).await
}

/// [`call`], sending `token` back in the `larder-consistency` header when there is one.
pub(crate) async fn call_with_token(
    router: &Router,
    method: Method,
    uri: &str,
    bearer: Option<&str>,
    body: Option<Value>,
    token: Option<&str>,
) -> Answer {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = bearer {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if let Some(token) = token {
        request = request.header(CONSISTENCY, token);
    }
    let request = match body {
        Some(json) => request
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json.to_string())),
        None => request.body(Body::empty()),
    }
    .unwrap();
    answer(router, request).await
}

/// A `GET` of `uri` with `headers` (a cookie, a bearer key, none).
pub(crate) async fn get_with(router: &Router, uri: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = Request::builder().uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    answer(router, request.body(Body::empty()).unwrap()).await
}

/// Sends `request` and reads the answer.
async fn answer(router: &Router, request: Request<Body>) -> Answer {
    let uri = request.uri().to_string();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let cache_status = header(response.headers(), "cache-status");
    let x_cache = header(response.headers(), "x-cache");
    let token = header(response.headers(), CONSISTENCY);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{uri}: not JSON ({e}): {bytes:?}"))
    };
    Answer {
        status,
        cache_status,
        x_cache,
        token,
        body,
    }
}

/// The body of a `GET` of `uri` as text (`/metrics`).
pub(crate) async fn get_text(router: &Router, uri: &str) -> String {
    let request = Request::builder().uri(uri).body(Body::empty()).unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

pub(crate) fn key(user: i64) -> String {
    format!("demo-key-{user}")
}

pub(crate) async fn get(router: &Router, uri: &str, user: i64) -> Answer {
    call(router, Method::GET, uri, Some(&key(user)), None).await
}

pub(crate) async fn send(
    router: &Router,
    method: Method,
    uri: &str,
    user: i64,
    body: Value,
) -> Answer {
    call(router, method, uri, Some(&key(user)), Some(body)).await
}

fn header(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(|v| v.to_str().unwrap().to_owned())
}

/// Reads `uri` until `done` says so (a network store writes after the response is sent, and
/// the tiered store's invalidations travel over pub/sub). Panics after `within`.
pub(crate) async fn get_until(
    router: &Router,
    uri: &str,
    user: i64,
    within: std::time::Duration,
    mut done: impl FnMut(&Answer) -> bool,
) -> Answer {
    let deadline = std::time::Instant::now() + within;
    loop {
        let answer = get(router, uri, user).await;
        if done(&answer) {
            return answer;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{uri} for user {user}: the expected answer never came within {within:?}; last {:?}",
            answer.cache_status
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Reads `uri` until it is a hit (at most 5 s).
pub(crate) async fn get_hit(router: &Router, uri: &str, user: i64) -> Answer {
    get_until(
        router,
        uri,
        user,
        std::time::Duration::from_secs(5),
        Answer::is_hit,
    )
    .await
}

/// The id of `user`'s most recently updated session (page 1's first row).
pub(crate) async fn first_session(router: &Router, user: i64) -> i64 {
    get(router, "/api/chat/sessions", user).await.body["sessions"][0]["id"]
        .as_i64()
        .expect("a session id")
}

/// `POST /api/chat/sessions/{sid}/messages` with `content`.
pub(crate) async fn post_message(router: &Router, user: i64, sid: i64, content: &str) -> Answer {
    send(
        router,
        Method::POST,
        &format!("/api/chat/sessions/{sid}/messages"),
        user,
        serde_json::json!({ "content": content }),
    )
    .await
}
