//! Operations routes: health, cache statistics, Prometheus metrics, the admin routes and
//! the origin's own counters.

use std::fmt::Write as _;

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
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

/// `GET /_cache/stats`: hits, misses, stale, bypasses, errors and hit rate per route.
pub async fn stats(State(app): State<Dashboard>) -> Response {
    let stats = app.cache.as_ref().map(|c| c.stats());
    Json(json!({ "store": app.store, "stats": stats })).into_response()
}

/// `GET /metrics`: the same figures and the origin's, in the Prometheus text format.
pub async fn prometheus(State(app): State<Dashboard>) -> Response {
    let mut out = String::new();
    if let Some(cache) = &app.cache {
        let snapshot = cache.stats();
        out.push_str(
            "# HELP larder_requests_total Requests through the cache by route and outcome.\n",
        );
        out.push_str("# TYPE larder_requests_total counter\n");
        for (route, s) in &snapshot.routes {
            for (outcome, n) in [
                ("hit", s.hits),
                ("stale", s.stale),
                ("miss", s.misses),
                ("collapsed", s.collapsed),
                ("bypass", s.bypasses),
            ] {
                let _ = writeln!(
                    out,
                    "larder_requests_total{{route=\"{}\",outcome=\"{outcome}\"}} {n}",
                    escape(route)
                );
            }
        }
        for (name, help, pick) in [
            (
                "larder_stored_total",
                "Responses stored.",
                (|s: &larder::RouteSnapshot| s.stored) as fn(&_) -> u64,
            ),
            (
                "larder_store_errors_total",
                "Store calls that failed or timed out.",
                |s| s.errors,
            ),
            (
                "larder_invalidations_total",
                "Invalidations made by writes.",
                |s| s.invalidations,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (route, s) in &snapshot.routes {
                let _ = writeln!(out, "{name}{{route=\"{}\"}} {}", escape(route), pick(s));
            }
        }
        out.push_str(
            "# HELP larder_hit_ratio Hits over lookups, by route.\n# TYPE larder_hit_ratio gauge\n",
        );
        for (route, s) in &snapshot.routes {
            let _ = writeln!(
                out,
                "larder_hit_ratio{{route=\"{}\"}} {}",
                escape(route),
                s.hit_rate
            );
        }
        let _ = writeln!(
            out,
            "# HELP larder_store_available 1 while the cache uses its store.\n# TYPE larder_store_available gauge\nlarder_store_available {}",
            u8::from(cache.is_store_available())
        );
    }
    let origin = app.db.stats();
    let _ = writeln!(
        out,
        "# HELP dashboard_db_queries_total Database round trips.\n# TYPE dashboard_db_queries_total counter\n\
         dashboard_db_queries_total {}\n\
         # HELP dashboard_db_connections_in_use Pool connections held now.\n# TYPE dashboard_db_connections_in_use gauge\n\
         dashboard_db_connections_in_use {}\n\
         # HELP dashboard_db_max_connections_in_use Most pool connections held at once.\n# TYPE dashboard_db_max_connections_in_use gauge\n\
         dashboard_db_max_connections_in_use {}",
        origin.queries, origin.connections_in_use, origin.max_connections_in_use
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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
