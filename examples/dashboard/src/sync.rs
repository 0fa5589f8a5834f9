//! Connector data syncs: a background job whose completion invalidates what it changed
//! (seed 001: "Data Extraction Completes: `last_sync_status` updated, cache invalidated").
//!
//! `POST /api/connectors/{provider}/sync` records a sync as `running` and answers `202` at
//! once (its route's rule invalidates `connectors:{user}`, so the status shows it running);
//! the job then extracts the platform's data away from any request, records the sync as
//! `ok` with the rows it read, and invalidates `connectors:{user}` itself: no request is
//! there to do it. The connector status (its route and the dashboard's `connectors` part)
//! shows each provider's last sync.

use std::{sync::Arc, time::Duration};

use axum::{
    Extension, Json,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Serialize;
use serde_json::json;
use sqlx::Row;
use tokio::sync::watch;

use crate::{Dashboard, auth::UserId, db::Db, error::ApiError, queries::now, seed::PROVIDERS};

/// The table of syncs: one row per user and provider, the last sync.
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS syncs (user_id BIGINT NOT NULL, \
    provider TEXT NOT NULL, sync_id BIGINT NOT NULL, status TEXT NOT NULL, \
    rows_read BIGINT NOT NULL, started_at BIGINT NOT NULL, finished_at BIGINT, \
    PRIMARY KEY (user_id, provider))";

/// A new sync's id: a job records its result only while its sync is the provider's last (a
/// sync started again meanwhile is not marked done by the older job).
fn sync_id() -> i64 {
    static LAST: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    // Increasing within this process, even if the clock steps back or two syncs start in
    // the same nanosecond.
    let mut last = LAST.load(std::sync::atomic::Ordering::Relaxed);
    loop {
        let next = nanos.max(last + 1);
        match LAST.compare_exchange_weak(
            last,
            next,
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        ) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// A provider's last sync, as the connector status shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct LastSync {
    /// `running` or `ok`.
    pub status: String,
    /// Rows the sync read (0 while it runs).
    pub rows: i64,
    /// When it started (Unix seconds).
    pub started_at: i64,
    /// When it finished, once it has.
    pub finished_at: Option<i64>,
}

/// The syncs of this process: how long one takes, and how many have finished (a test or an
/// operator waits on it instead of sleeping).
#[derive(Clone)]
pub struct Syncs {
    duration: Duration,
    finished: Arc<watch::Sender<u64>>,
}

impl Syncs {
    /// Syncs that each take `duration` (the platform's API stands behind it).
    pub fn new(duration: Duration) -> Syncs {
        Syncs {
            duration,
            finished: Arc::new(watch::Sender::new(0)),
        }
    }

    /// Waits until at least `n` syncs have finished (invalidation included).
    pub async fn finished(&self, n: u64) {
        let mut rx = self.finished.subscribe();
        let _ = rx.wait_for(|done| *done >= n).await;
    }

    /// Syncs finished so far.
    pub fn finished_count(&self) -> u64 {
        *self.finished.borrow()
    }
}

/// `POST /api/connectors/{provider}/sync`: 202 with the sync started; 404 for an unknown
/// provider, 400 for one the user has not connected.
pub async fn start(
    State(app): State<Dashboard>,
    Extension(user): Extension<UserId>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let provider = PROVIDERS
        .iter()
        .find(|p| **p == name)
        .copied()
        .ok_or(ApiError::NotFound("provider"))?;
    let user = user.0;
    let started_at = now();
    let mut conn = app.db.lease().await?;
    let connected: Option<i64> = sqlx::query_scalar(
        "SELECT connected FROM connections WHERE user_id = $1 AND provider = $2",
    )
    .bind(user)
    .bind(provider)
    .fetch_optional(&mut *conn)
    .await?;
    if connected.unwrap_or(0) == 0 {
        return Err(ApiError::BadRequest(format!(
            "{provider} is not connected: connect it first"
        )));
    }
    let id = sync_id();
    sqlx::query(
        "INSERT INTO syncs (user_id, provider, sync_id, status, rows_read, started_at, finished_at) \
         VALUES ($1, $2, $4, 'running', 0, $3, NULL) ON CONFLICT (user_id, provider) DO UPDATE \
         SET sync_id = $4, status = 'running', rows_read = 0, started_at = $3, finished_at = NULL",
    )
    .bind(user)
    .bind(provider)
    .bind(started_at)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    drop(conn);
    // The job outlives the request: the write's own invalidation (its rule) covers the
    // `running` state, the job's covers what it finds.
    tokio::spawn(run(app.clone(), user, provider, id));
    let body = json!({ "provider": provider, "status": "running", "started_at": started_at });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// The job: extracts (waits as long as a platform's API would), records the result, then
/// invalidates the user's connector status, on every instance through the store.
async fn run(app: Dashboard, user: i64, provider: &'static str, id: i64) {
    tokio::time::sleep(app.syncs.duration).await;
    let rows = 100 + (user * 7 + provider.len() as i64 * 13) % 900;
    if let Err(e) = finish(&app.db, (user, provider, id), rows).await {
        tracing::error!(error = %e, user, provider, "the sync could not be recorded");
    }
    // After the write: a read that starts from now on sees it.
    if let Some(cache) = &app.cache {
        if let Err(e) = cache.invalidate_tags([format!("connectors:{user}")]).await {
            tracing::warn!(error = %e, user, "could not invalidate the connector status now; the cache replays it");
        }
    }
    app.syncs.finished.send_modify(|n| *n += 1);
}

/// Records sync `id`'s result, unless a newer sync of the provider replaced it.
async fn finish(
    db: &Db,
    (user, provider, id): (i64, &str, i64),
    rows: i64,
) -> Result<(), sqlx::Error> {
    let mut conn = db.lease().await?;
    sqlx::query(
        "UPDATE syncs SET status = 'ok', rows_read = $3, finished_at = $4 \
         WHERE user_id = $1 AND provider = $2 AND sync_id = $5",
    )
    .bind(user)
    .bind(provider)
    .bind(rows)
    .bind(now())
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The last sync in a row of the connector status (columns 4 to 7: status, rows read,
/// started, finished; all null when the provider was never synced).
pub fn last_sync(row: &sqlx::any::AnyRow) -> Result<Option<LastSync>, sqlx::Error> {
    let Some(status) = row.try_get::<Option<String>, _>(4)? else {
        return Ok(None);
    };
    Ok(Some(LastSync {
        status,
        rows: row.try_get(5)?,
        started_at: row.try_get(6)?,
        finished_at: row.try_get(7)?,
    }))
}
