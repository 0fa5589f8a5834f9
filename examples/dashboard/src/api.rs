//! The `/api` routes of the HTTP contract (see `../shared/DESIGN.md` and the README).

use axum::{
    Extension, Json,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    Dashboard,
    auth::UserId,
    cache::{DEFAULT_PER_PAGE, Loads, dashboard_parts, marked},
    error::ApiError,
    queries,
    seed::{CATEGORIES, PROVIDERS},
};

/// Longest accepted title, search query or account name, in characters.
const MAX_SHORT_TEXT: usize = 200;
/// Longest accepted message, in characters.
const MAX_MESSAGE: usize = 8000;
/// Largest page size.
pub const MAX_PER_PAGE: i64 = 100;

fn short_text(field: &str, value: &str) -> Result<String, ApiError> {
    let value = value.trim();
    if value.is_empty() || value.chars().count() > MAX_SHORT_TEXT {
        return Err(ApiError::BadRequest(format!(
            "`{field}` must be 1 to {MAX_SHORT_TEXT} characters"
        )));
    }
    Ok(value.to_owned())
}

/// `GET /api/user/me`
pub async fn me(
    State(app): State<Dashboard>,
    Extension(user): Extension<UserId>,
) -> Result<Response, ApiError> {
    Ok(Json(queries::profile(&app.db, user.0).await?).into_response())
}

/// `GET /api/connectors/status`
pub async fn connector_status(
    State(app): State<Dashboard>,
    Extension(user): Extension<UserId>,
) -> Result<Response, ApiError> {
    Ok(Json(queries::connector_status(&app.db, user.0).await?).into_response())
}

/// The optional body of `POST /api/connectors/{provider}`.
#[derive(Debug, Default, Deserialize)]
pub struct ConnectBody {
    /// The account to connect (defaults to one named after the user).
    pub account: Option<String>,
}

fn provider(name: &str) -> Result<&'static str, ApiError> {
    PROVIDERS
        .iter()
        .find(|p| **p == name)
        .copied()
        .ok_or(ApiError::NotFound("provider"))
}

/// `GET /api/announcements`: public, the same for anonymous and signed-in callers.
pub async fn announcements(State(app): State<Dashboard>) -> Result<Response, ApiError> {
    Ok(Json(queries::announcements(&app.db).await?).into_response())
}

/// `POST /api/connectors/{provider}`
pub async fn connect(
    State(app): State<Dashboard>,
    Extension(user): Extension<UserId>,
    Path(name): Path<String>,
    body: Option<Json<ConnectBody>>,
) -> Result<Response, ApiError> {
    let provider = provider(&name)?;
    let account = match body.and_then(|Json(b)| b.account) {
        Some(a) => short_text("account", &a)?,
        None => format!("{provider}-account-{}", user.0),
    };
    let connector = queries::connect(&app.db, user.0, provider, &account).await?;
    Ok(Json(connector).into_response())
}

/// `DELETE /api/connectors/{provider}`
pub async fn disconnect(
    State(app): State<Dashboard>,
    Extension(user): Extension<UserId>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let provider = provider(&name)?;
    let changed = queries::disconnect(&app.db, user.0, Some(provider)).await?;
    Ok(
        Json(json!({ "provider": provider, "connected": false, "changed": changed > 0 }))
            .into_response(),
    )
}

/// `POST /api/connectors/reset`
pub async fn reset_connectors(
    State(app): State<Dashboard>,
    Extension(user): Extension<UserId>,
) -> Result<Response, ApiError> {
    let disconnected = queries::disconnect(&app.db, user.0, None).await?;
    Ok(Json(json!({ "disconnected": disconnected })).into_response())
}

/// `GET /api/metrics/{category}`
pub async fn metrics(
    State(app): State<Dashboard>,
    Extension(user): Extension<UserId>,
    Path(category): Path<String>,
) -> Result<Response, ApiError> {
    let category = CATEGORIES
        .iter()
        .find(|c| **c == category)
        .ok_or(ApiError::NotFound("metric category"))?;
    Ok(Json(queries::metrics(&app.db, user.0, category).await?).into_response())
}

/// `GET /api/chat/stats`
pub async fn chat_stats(
    State(app): State<Dashboard>,
    Extension(user): Extension<UserId>,
) -> Result<Response, ApiError> {
    Ok(Json(queries::chat_stats(&app.db, user.0).await?).into_response())
}

/// The query of `GET /api/chat/search`.
#[derive(Debug, Deserialize)]
pub struct SearchQuery {
    /// What to look for.
    pub q: Option<String>,
}

/// `GET /api/chat/search?q=`
pub async fn search(
    State(app): State<Dashboard>,
    Extension(user): Extension<UserId>,
    Query(query): Query<SearchQuery>,
) -> Result<Response, ApiError> {
    let q = short_text("q", query.q.as_deref().unwrap_or(""))?;
    Ok(Json(queries::search(&app.db, user.0, &q).await?).into_response())
}

/// The query of `GET /api/chat/sessions`.
#[derive(Debug, Deserialize)]
pub struct PageQuery {
    /// The page, from 1 (default 1).
    pub page: Option<i64>,
    /// Sessions per page, 1 to 100 (default 10).
    pub per_page: Option<i64>,
}

/// `GET /api/chat/sessions?page=&per_page=`
pub async fn sessions(
    State(app): State<Dashboard>,
    Extension(user): Extension<UserId>,
    Query(query): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let page = query.page.unwrap_or(1);
    let per_page = query.per_page.unwrap_or(DEFAULT_PER_PAGE);
    if page < 1 || !(1..=MAX_PER_PAGE).contains(&per_page) {
        return Err(ApiError::BadRequest(format!(
            "`page` must be at least 1 and `per_page` 1 to {MAX_PER_PAGE}"
        )));
    }
    Ok(Json(queries::sessions(&app.db, user.0, page, per_page).await?).into_response())
}

/// The body of `POST /api/chat/sessions` and `PUT /api/chat/sessions/{sid}`.
#[derive(Debug, Deserialize)]
pub struct TitleBody {
    /// The session's title.
    pub title: String,
}

/// `POST /api/chat/sessions`: 201 with the new session.
pub async fn create_session(
    State(app): State<Dashboard>,
    Extension(user): Extension<UserId>,
    Json(body): Json<TitleBody>,
) -> Result<Response, ApiError> {
    let title = short_text("title", &body.title)?;
    let session = queries::create_session(&app.db, user.0, &title).await?;
    Ok((StatusCode::CREATED, Json(session)).into_response())
}

/// `PUT /api/chat/sessions/{sid}`
pub async fn rename_session(
    State(app): State<Dashboard>,
    Extension(user): Extension<UserId>,
    Path(sid): Path<i64>,
    Json(body): Json<TitleBody>,
) -> Result<Response, ApiError> {
    let title = short_text("title", &body.title)?;
    Ok(Json(queries::rename_session(&app.db, user.0, sid, &title).await?).into_response())
}

/// `DELETE /api/chat/sessions/{sid}`: 204.
pub async fn delete_session(
    State(app): State<Dashboard>,
    Extension(user): Extension<UserId>,
    Path(sid): Path<i64>,
) -> Result<Response, ApiError> {
    queries::delete_session(&app.db, user.0, sid).await?;
    // The route's rule invalidates `sessions:` and `search:` (shared with PUT); deleting
    // also changes the counts, so `stats:` goes too, and the thread's context and replies
    // (`thread:`), before the response is sent.
    if let Some(cache) = &app.cache {
        let tags = [format!("stats:{}", user.0), format!("thread:{sid}")];
        if let Err(e) = cache.invalidate_tags(tags).await {
            tracing::warn!(error = %e, "could not invalidate chat stats now; the cache replays it");
        }
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The body of `POST /api/chat/sessions/{sid}/messages`.
#[derive(Debug, Deserialize)]
pub struct MessageBody {
    /// The message.
    pub content: String,
}

/// `POST /api/chat/sessions/{sid}/messages`: 201, spends credits.
pub async fn post_message(
    State(app): State<Dashboard>,
    Extension(user): Extension<UserId>,
    Path(sid): Path<i64>,
    Json(body): Json<MessageBody>,
) -> Result<Response, ApiError> {
    let content = body.content.trim();
    if content.is_empty() || content.chars().count() > MAX_MESSAGE {
        return Err(ApiError::BadRequest(format!(
            "`content` must be 1 to {MAX_MESSAGE} characters"
        )));
    }
    let exchange = queries::post_message(&app.db, user.0, sid, content).await?;
    Ok((StatusCode::CREATED, Json(exchange)).into_response())
}

/// `DELETE /api/chat/sessions/{sid}/messages/{mid}`: 204; 404 unless the message is in that
/// session of the caller's. Its rule invalidates the user's chat stats, search and session
/// pages, and the thread (`thread:{sid}`: its context and the assistant's replies in it).
pub async fn delete_message(
    State(app): State<Dashboard>,
    Extension(user): Extension<UserId>,
    Path((sid, mid)): Path<(i64, i64)>,
) -> Result<Response, ApiError> {
    queries::delete_message(&app.db, user.0, sid, mid).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /api/dashboard`: profile, connectors, the five metric categories, chat stats and
/// the first page of sessions in one answer. With a cache, all nine parts are read in one
/// batch (one round trip to Redis) and only the missing ones go to the database, in
/// parallel.
pub async fn dashboard(
    State(app): State<Dashboard>,
    Extension(user): Extension<UserId>,
    headers: http::HeaderMap,
) -> Result<Response, ApiError> {
    let id = user.0;
    let Some(cache) = &app.cache else {
        let parts = load_parts(&app, id, (0..PARTS).collect()).await?;
        return Ok(Json(compose(parts)).into_response());
    };
    // A client that carries its last write's consistency token reads that write here on
    // every instance (the tiered store's L1 answers it only once it knows the invalidation).
    let cache = cache.reading_after(larder::consistency_token(&headers));
    let (values, (loaded, uncached)) = read_dashboard(&app, &cache, id).await?;
    let loads = Loads { loaded, uncached };
    Ok(marked(Json(compose(values)), true, loads, PARTS))
}

/// Reads `user`'s nine dashboard parts through the cache in one batch and loads the missing
/// ones from the database (and those whose caching is configured off, every time). Returns
/// the parts, and how many were loaded and how many of those are not cached.
pub(crate) async fn read_dashboard(
    app: &Dashboard,
    cache: &larder::CacheHandle,
    user: i64,
) -> Result<(Vec<Value>, (usize, usize)), ApiError> {
    let parts = dashboard_parts(user, &app.ttls);
    let (cached, uncached): (Vec<usize>, Vec<usize>) =
        (0..parts.len()).partition(|&i| parts[i].1.is_some());
    let items: Vec<(&str, &larder::EntryOptions)> = cached
        .iter()
        .filter_map(|&i| Some((parts[i].0.as_str(), parts[i].1.as_ref()?)))
        .collect();
    let mut missed = 0;
    let (from_cache, direct) = futures_util::future::try_join(
        cache.get_many_or_insert_with(&items, |missing| {
            missed = missing.len();
            load_parts(app, user, missing.iter().map(|&m| cached[m]).collect())
        }),
        load_parts(app, user, uncached.clone()),
    )
    .await?;
    let mut values = vec![Value::Null; parts.len()];
    for (i, v) in cached.into_iter().zip(from_cache) {
        values[i] = v;
    }
    for (i, v) in uncached.iter().zip(direct) {
        values[*i] = v;
    }
    Ok((values, (missed + uncached.len(), uncached.len())))
}

/// Profile, connectors, five metric categories, stats, sessions page 1.
const PARTS: usize = 9;

/// Loads the dashboard parts named by index, each with its own query, in parallel.
pub(crate) async fn load_parts(
    app: &Dashboard,
    user: i64,
    which: Vec<usize>,
) -> Result<Vec<Value>, ApiError> {
    let db = &app.db;
    let loads = which.into_iter().map(|i| async move {
        let value = match i {
            0 => serde_json::to_value(queries::profile(db, user).await?),
            1 => serde_json::to_value(queries::connector_status(db, user).await?),
            2..=6 => serde_json::to_value(queries::metrics(db, user, CATEGORIES[i - 2]).await?),
            7 => serde_json::to_value(queries::chat_stats(db, user).await?),
            8 => serde_json::to_value(queries::sessions(db, user, 1, DEFAULT_PER_PAGE).await?),
            _ => unreachable!("the dashboard has {PARTS} parts"),
        };
        Ok::<_, ApiError>(value.expect("query results serialize"))
    });
    futures_util::future::try_join_all(loads).await
}

fn compose(mut parts: Vec<Value>) -> Value {
    debug_assert_eq!(parts.len(), PARTS);
    let sessions = parts.pop().unwrap_or_default();
    let stats = parts.pop().unwrap_or_default();
    let metrics: serde_json::Map<String, Value> = CATEGORIES
        .iter()
        .zip(parts.drain(2..))
        .map(|(c, v)| ((*c).to_owned(), v))
        .collect();
    let connectors = parts.pop().unwrap_or_default();
    let profile = parts.pop().unwrap_or_default();
    json!({
        "profile": profile,
        "connectors": connectors,
        "metrics": metrics,
        "chat_stats": stats,
        "recent_sessions": sessions,
    })
}
