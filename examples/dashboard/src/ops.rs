//! Operations routes: health, cache statistics, Prometheus metrics, the admin routes and
//! the origin's own counters.

use std::sync::OnceLock;

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use serde_json::json;

use crate::{Dashboard, api::read_dashboard, auth, error::ApiError, seed::USERS};

/// `GET /_cache/health`: 200 while the cache uses its store, 503 while it bypasses it
/// (the service still answers; only the cache is degraded).
pub async fn health(State(app): State<Dashboard>) -> Response {
    let available = app.cache.as_ref().is_none_or(|c| c.is_store_available());
    let status = if available {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if available { "ok" } else { "degraded" },
        "store": app.store,
        "store_available": available,
        "database": app.db.backend(),
    });
    (status, Json(body)).into_response()
}

/// `GET /_cache/stats`: hits, misses, stale, bypasses, writes, errors and hit rate per route,
/// requests no rule covered, and what the store holds here (entries and bytes; on the tiered
/// store, L1 and L2 reads), whether it is used and the invalidations waiting for it.
pub async fn stats(State(app): State<Dashboard>) -> Response {
    let stats = app.cache.as_ref().map(|c| c.stats());
    Json(json!({ "store": app.store, "stats": stats })).into_response()
}

/// The process's Prometheus recorder of the `metrics` facade, installed at the first call
/// (the dashboard's [`connect`](crate::connect) makes it, before the cache is built, so the
/// cache's counters and descriptions reach it). A process has one global recorder: if another
/// was installed first, `/metrics` renders this one's (empty) registry and says so in a log.
pub fn prometheus_recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed: /metrics will be empty");
        }
        metrics::describe_counter!(
            "dashboard_db_queries_total",
            "Database round trips of the dashboard's origin."
        );
        metrics::describe_gauge!(
            "dashboard_db_connections_in_use",
            "Pool connections held now."
        );
        metrics::describe_gauge!(
            "dashboard_db_max_connections_in_use",
            "Most pool connections held at once."
        );
        handle
    })
}

/// `GET /metrics`: everything the cache and the origin report through the `metrics` facade,
/// rendered by metrics-exporter-prometheus (with `# HELP` and `# TYPE` lines). The cache's
/// gauges (store available, pending invalidations, entries and bytes) and the database's
/// figures are brought up to date first.
pub async fn prometheus(State(app): State<Dashboard>) -> Response {
    let recorder = prometheus_recorder();
    if let Some(cache) = &app.cache {
        // Sets the cache's gauges as of now.
        let _ = cache.stats();
    }
    let origin = app.db.stats();
    metrics::counter!("dashboard_db_queries_total").absolute(origin.queries);
    metrics::gauge!("dashboard_db_connections_in_use").set(origin.connections_in_use as f64);
    metrics::gauge!("dashboard_db_max_connections_in_use")
        .set(origin.max_connections_in_use as f64);
    recorder.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        recorder.render(),
    )
        .into_response()
}

/// Answers 404 when no admin token is configured (the routes are off) and 401 when the
/// request does not carry it.
fn admin(app: &Dashboard, headers: &HeaderMap) -> Result<(), ApiError> {
    match &app.admin_token {
        None => Err(ApiError::AdminOff),
        Some(token) if auth::is_admin(headers, token) => Ok(()),
        Some(_) => Err(ApiError::Unauthorized),
    }
}

/// The body of `POST /_cache/invalidate`: one of the three fields.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvalidateBody {
    /// Tags to invalidate (`sessions:42`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Typed-API keys to drop (`dashboard:42:profile`).
    #[serde(default)]
    pub keys: Vec<String>,
    /// Everything in the namespace.
    #[serde(default)]
    pub all: bool,
}

/// `POST /_cache/invalidate` (admin): `{"tags": [...]}`, `{"keys": [...]}` or `{"all": true}`.
pub async fn invalidate(
    State(app): State<Dashboard>,
    headers: HeaderMap,
    body: Option<Json<InvalidateBody>>,
) -> Response {
    if let Err(denied) = admin(&app, &headers) {
        return denied.into_response();
    }
    let Some(Json(body)) = body else {
        return ApiError::BadRequest(
            "expected a JSON body: {\"tags\": [...]}, {\"keys\": [...]} or {\"all\": true}".into(),
        )
        .into_response();
    };
    if body.tags.is_empty() && body.keys.is_empty() && !body.all {
        return ApiError::BadRequest("name `tags`, `keys` or `all: true`".into()).into_response();
    }
    let Some(cache) = &app.cache else {
        return Json(json!({ "invalidated": false, "reason": "no cache (--store none)" }))
            .into_response();
    };
    let mut errors = Vec::new();
    if body.all {
        if let Err(e) = cache.purge().await {
            errors.push(e.to_string());
        }
    }
    if !body.tags.is_empty() {
        if let Err(e) = cache.invalidate_tags(&body.tags).await {
            errors.push(e.to_string());
        }
    }
    for key in &body.keys {
        if let Err(e) = cache.invalidate_key(&cache.key(key)).await {
            errors.push(e.to_string());
        }
    }
    // A failed invalidation is kept by the cache and replayed when the store is back; say so.
    Json(json!({
        "invalidated": true,
        "tags": body.tags.len(),
        "keys": body.keys.len(),
        "all": body.all,
        "deferred": errors,
    }))
    .into_response()
}

/// The body of `POST /_cache/warmup`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupBody {
    /// Users whose dashboards to load into the cache (at most 100 per call).
    pub users: Vec<i64>,
}

/// Most users one warm-up call may name.
pub const MAX_WARMUP: usize = 100;

/// `POST /_cache/warmup` (admin): loads the named users' dashboards into the cache.
pub async fn warmup(
    State(app): State<Dashboard>,
    headers: HeaderMap,
    body: Option<Json<WarmupBody>>,
) -> Response {
    if let Err(denied) = admin(&app, &headers) {
        return denied.into_response();
    }
    let Some(Json(body)) = body else {
        return ApiError::BadRequest("expected a JSON body: {\"users\": [1, 2, 3]}".into())
            .into_response();
    };
    if body.users.len() > MAX_WARMUP || body.users.iter().any(|u| !(1..=USERS).contains(u)) {
        return ApiError::BadRequest(format!(
            "`users` must name 0 to {MAX_WARMUP} users in 1..={USERS}"
        ))
        .into_response();
    }
    let Some(cache) = &app.cache else {
        return Json(json!({ "warmed": 0, "reason": "no cache (--store none)" })).into_response();
    };
    let app = &app;
    let warm = body
        .users
        .iter()
        .map(|&user| async move { Ok::<_, ApiError>(read_dashboard(app, cache, user).await?.1) });
    match futures_util::future::try_join_all(warm).await {
        Ok(loaded) => Json(
            json!({ "warmed": body.users.len(), "parts_loaded": loaded.iter().sum::<usize>() }),
        )
        .into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /_origin/stats`: `{"queries": N, "max_connections_in_use": M, ...}`.
pub async fn origin_stats(State(app): State<Dashboard>) -> Response {
    Json(app.db.stats()).into_response()
}

/// `POST /_origin/stats/reset` (admin): zeroes the query count and the connection mark, so
/// a load test can leave its warm-up out.
pub async fn reset_origin_stats(State(app): State<Dashboard>, headers: HeaderMap) -> Response {
    if let Err(denied) = admin(&app, &headers) {
        return denied.into_response();
    }
    app.db.reset_stats();
    Json(app.db.stats()).into_response()
}
