//! Operations routes: health, cache statistics, Prometheus metrics, the admin routes and
//! the origin's own counters.

use std::sync::OnceLock;

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use serde_json::json;

use crate::{Dashboard, auth, error::ApiError};

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

/// `GET /_cache/stats`: per route (rule) and per typed category, hits, misses, stale,
/// bypasses, writes, errors, hit rate and response times of hits and of misses (count,
/// average, p50, p95, p99, max in ms); requests no rule covered; what the store holds here
/// (entries and bytes; on the tiered store, L1 and L2 reads), whether it is used and the
/// invalidations waiting for it; and every route's configured TTL (`null`: off).
pub async fn stats(State(app): State<Dashboard>) -> Response {
    let stats = app.cache.as_ref().map(|c| c.stats());
    Json(json!({ "store": app.store, "stats": stats, "ttls": app.ttls.to_json() })).into_response()
}

/// `POST /_cache/stats/reset` (admin): starts the cache's statistics again from nothing
/// (counters and response times; not the entries, nor the Prometheus counters, which only
/// grow), e.g. after a warm-up.
pub async fn reset_stats(State(app): State<Dashboard>, headers: HeaderMap) -> Response {
    if let Err(denied) = admin(&app, &headers) {
        return denied.into_response();
    }
    let Some(cache) = &app.cache else {
        return Json(json!({ "reset": false, "reason": "no cache (--store none)" }))
            .into_response();
    };
    cache.reset_stats();
    Json(json!({ "reset": true })).into_response()
}

/// The buckets of `larder_response_seconds`, in seconds.
const RESPONSE_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The process's Prometheus recorder of the `metrics` facade, installed at the first call
/// (the dashboard's [`connect`](crate::connect) makes it, before the cache is built, so the
/// cache's counters and descriptions reach it). A process has one global recorder: if another
/// was installed first, `/metrics` renders this one's (empty) registry and says so in a log.
pub fn prometheus_recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        // Response times as histograms (buckets a scraper sums across instances), from
        // 0.1 ms to 5 s: hits fall in the first buckets, misses in the last.
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("larder_response_seconds".into()),
                &RESPONSE_BUCKETS,
            )
            .expect("the buckets are not empty")
            .build_recorder();
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

/// How often the recorder folds the histograms' samples into their buckets.
const UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

/// Drains the recorder every 5 seconds on the current runtime, so that its histograms'
/// samples (one per cached response) do not pile up between scrapes, or without any: a
/// recorder built by `build_recorder()` runs no upkeep of its own.
pub fn spawn_upkeep() {
    tokio::spawn(async {
        let mut tick = tokio::time::interval(UPKEEP);
        loop {
            tick.tick().await;
            prometheus_recorder().run_upkeep();
        }
    });
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
pub(crate) fn admin(app: &Dashboard, headers: &HeaderMap) -> Result<(), ApiError> {
    match &app.admin_token {
        None => Err(ApiError::AdminOff),
        Some(token) if auth::is_admin(headers, token) => Ok(()),
        Some(_) => Err(ApiError::Unauthorized),
    }
}

/// The body of `POST /_cache/invalidate`: any of the fields, together or alone.
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
    /// Assistants whose cached data, schema, thread contexts and replies to drop
    /// (`asst_42`: the tag `assistant:asst_42`).
    #[serde(default)]
    pub assistants: Vec<String>,
    /// Threads (chat sessions) whose cached context and replies to drop (`12`: the tag
    /// `thread:12`).
    #[serde(default)]
    pub threads: Vec<i64>,
}

impl InvalidateBody {
    /// Whether it names nothing to invalidate.
    fn is_empty(&self) -> bool {
        self.tags.is_empty()
            && self.keys.is_empty()
            && !self.all
            && self.assistants.is_empty()
            && self.threads.is_empty()
    }

    /// The tags it names: `tags`, then `assistant:{id}` and `thread:{id}`.
    fn all_tags(&self) -> Vec<String> {
        let assistants = self.assistants.iter().map(|a| format!("assistant:{a}"));
        let threads = self.threads.iter().map(|t| format!("thread:{t}"));
        self.tags
            .iter()
            .cloned()
            .chain(assistants)
            .chain(threads)
            .collect()
    }
}

/// `POST /_cache/invalidate` (admin): `{"tags": [...]}`, `{"keys": [...]}`, `{"all": true}`,
/// `{"assistants": ["asst_1"]}` (tags `assistant:{id}`) or `{"threads": [12]}` (tags
/// `thread:{id}`), alone or together.
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
            "expected a JSON body: {\"tags\": [...]}, {\"keys\": [...]}, {\"assistants\": [...]}, {\"threads\": [...]} or {\"all\": true}".into(),
        )
        .into_response();
    };
    if body.is_empty() {
        return ApiError::BadRequest(
            "name `tags`, `keys`, `assistants`, `threads` or `all: true`".into(),
        )
        .into_response();
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
    let tags = body.all_tags();
    if !tags.is_empty() {
        if let Err(e) = cache.invalidate_tags(tags).await {
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
        "assistants": body.assistants.len(),
        "threads": body.threads.len(),
        "all": body.all,
        "deferred": errors,
    }))
    .into_response()
}

/// What `/_origin/stats` reports: the database's counters and the model's calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct OriginReport {
    /// The database's counters.
    #[serde(flatten)]
    pub db: crate::db::OriginStats,
    /// Calls made to the model stand-in (the assistant's replies that were not hits).
    pub model_calls: u64,
}

fn origin_report(app: &Dashboard) -> OriginReport {
    OriginReport {
        db: app.db.stats(),
        model_calls: app.model.calls(),
    }
}

/// `GET /_origin/stats`: `{"queries": N, "max_connections_in_use": M, ..., "model_calls": C}`.
pub async fn origin_stats(State(app): State<Dashboard>) -> Response {
    Json(origin_report(&app)).into_response()
}

/// `POST /_origin/stats/reset` (admin): zeroes the query count, the connection mark and the
/// model's call count, so a load test can leave its warm-up out.
pub async fn reset_origin_stats(State(app): State<Dashboard>, headers: HeaderMap) -> Response {
    if let Err(denied) = admin(&app, &headers) {
        return denied.into_response();
    }
    app.db.reset_stats();
    app.model.reset_calls();
    Json(origin_report(&app)).into_response()
}
