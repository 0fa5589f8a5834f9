//! The assistant of seed 004 (ChatbotAI): an assistant's configuration and data sources, the
//! schema derived from them, a thread's context, and the model's streamed reply to a message.
//!
//! The three reads go through the typed API (cache-aside, as the seed's code did), each value
//! stored with its owner: whatever the cache returns, the handler answers 404 unless the
//! caller owns it. The reply is cached by the HTTP layer, keyed by user, path and a hash of
//! the request body (`Rule::cache_posts_by_body`, see [`crate::cache::rules`]): the seed's
//! `message:{threadId}:{contentHash}`. Threads are the chat sessions.

use std::future::Future;

use axum::{
    Extension, Json,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use larder::{CacheHandle, EntryOptions};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sqlx::Row;

use crate::{
    Dashboard,
    auth::UserId,
    cache::{Loads, marked},
    db::Db,
    error::ApiError,
    ttls::RouteTtls,
};

// The lifetimes (assistant data 30 min, schema 1 h, thread context 2 h, replies 24 h) are
// in `crate::ttls`, where configuration may change them or switch them off.
/// Messages of a thread's context: its last 20.
pub const CONTEXT_MESSAGES: i64 = 20;
/// Longest accepted message to the assistant, in characters.
pub const MAX_CONTENT: usize = 8000;
/// Longest assistant id accepted in a path.
const MAX_ID: usize = 64;

/// One data source of an assistant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSource {
    /// Its name (`finance_metrics`).
    pub name: String,
    /// Its column names.
    pub columns: Vec<String>,
}

/// `GET /api/assistants/{aid}`: an assistant's configuration and data sources.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assistant {
    /// Its id (`asst_42`).
    pub id: String,
    /// The user who owns it.
    pub user_id: i64,
    /// Its display name.
    pub name: String,
    /// Its system instructions.
    pub instructions: String,
    /// The model it answers with.
    pub model: String,
    /// Last changed (Unix seconds).
    pub updated_at: i64,
    /// Its data sources, by name.
    pub sources: Vec<DataSource>,
}

/// One table of [`Schema`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaTable {
    /// The table (a data source's name).
    pub name: String,
    /// Its columns, in order, without blanks or repeats.
    pub columns: Vec<String>,
}

/// `GET /api/assistants/{aid}/schema`: the schema derived from an assistant's sources.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schema {
    /// The assistant's id.
    pub assistant: String,
    /// One table per data source.
    pub tables: Vec<SchemaTable>,
}

/// One message of a [`ThreadContext`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreadMessage {
    /// `user` or `assistant`.
    pub role: String,
    /// Its text.
    pub content: String,
    /// Written (Unix seconds).
    pub created_at: i64,
}

/// `GET /api/assistants/{aid}/threads/{sid}`: a thread's last messages, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreadContext {
    /// The thread (chat session) id.
    pub thread: i64,
    /// Its last [`CONTEXT_MESSAGES`] messages, oldest first.
    pub messages: Vec<ThreadMessage>,
}

/// A cached value and the user it belongs to: the typed keys are not per user, so every read
/// checks the owner before answering.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Owned<T> {
    owner: i64,
    value: T,
}

impl<T> Owned<T> {
    /// The value, if `user` owns it; 404 otherwise (the same answer as for no such thing).
    fn for_user(self, user: UserId, what: &'static str) -> Result<T, ApiError> {
        if self.owner == user.0 {
            Ok(self.value)
        } else {
            Err(ApiError::NotFound(what))
        }
    }
}

/// A typed value's options: its configured TTL (see [`RouteTtls`]), counted under the
/// category of the same name; `None` when its caching is configured off.
fn entry(ttls: &RouteTtls, name: &'static str) -> Option<EntryOptions> {
    ttls.get(name)
        .map(|ttl| EntryOptions::new(ttl).category(name))
}

/// The typed key and options of an assistant's data: `assistant:{aid}`, 30 min, tagged
/// `assistant:{aid}`, category `assistant`.
pub fn assistant_entry(aid: &str, ttls: &RouteTtls) -> (String, Option<EntryOptions>) {
    let options = entry(ttls, "assistant").map(|o| o.tag(format!("assistant:{aid}")));
    (format!("assistant:{aid}"), options)
}

/// The typed key and options of an assistant's schema: `schema:{aid}`, 1 h, tagged
/// `assistant:{aid}`, category `schema`.
pub fn schema_entry(aid: &str, ttls: &RouteTtls) -> (String, Option<EntryOptions>) {
    let options = entry(ttls, "schema").map(|o| o.tag(format!("assistant:{aid}")));
    (format!("schema:{aid}"), options)
}

/// The typed key and options of a thread's context: `thread_ctx:{sid}`, 2 h, tagged
/// `thread:{sid}` and `assistant:{aid}`, category `thread_context`.
pub fn thread_entry(aid: &str, sid: i64, ttls: &RouteTtls) -> (String, Option<EntryOptions>) {
    let options = entry(ttls, "thread_context").map(|o| {
        o.tag(format!("thread:{sid}"))
            .tag(format!("assistant:{aid}"))
    });
    (format!("thread_ctx:{sid}"), options)
}

/// The body of `POST /api/assistants/{aid}/threads/{sid}/reply`.
#[derive(Debug, Deserialize)]
pub struct ReplyBody {
    /// The user's message, 1 to 8000 characters.
    pub content: String,
}

/// `GET /api/assistants/{aid}`: the assistant's configuration and data sources, if the
/// caller owns it (404 otherwise).
pub async fn assistant(
    State(app): State<Dashboard>,
    Extension(user): Extension<UserId>,
    Path(aid): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let aid = assistant_id(&aid)?;
    let cache = reader(&app, &headers);
    let (owned, loads) = read_assistant(&app, cache.as_ref(), aid).await?;
    let assistant = owned.for_user(user, "assistant")?;
    Ok(marked(Json(assistant), cache.is_some(), loads, 1))
}

/// `GET /api/assistants/{aid}/schema`: the tables and columns of the assistant's sources,
/// if the caller owns it (404 otherwise).
pub async fn schema(
    State(app): State<Dashboard>,
    Extension(user): Extension<UserId>,
    Path(aid): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let aid = assistant_id(&aid)?;
    let cache = reader(&app, &headers);
    let (key, options) = schema_entry(aid, &app.ttls);
    let (owned, loads) = read_through(cache.as_ref(), &key, options.as_ref(), || {
        load_schema(&app.db, aid)
    })
    .await?;
    let schema = owned.for_user(user, "assistant")?;
    Ok(marked(Json(schema), cache.is_some(), loads, 1))
}

/// `GET /api/assistants/{aid}/threads/{sid}`: the thread's last 20 messages, if the caller
/// owns both the assistant and the thread (404 otherwise). Reads the assistant's data, then
/// (once its owner is checked) the context; `Cache-Status` is a hit when both were.
pub async fn thread(
    State(app): State<Dashboard>,
    Extension(user): Extension<UserId>,
    Path((aid, sid)): Path<(String, i64)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let aid = assistant_id(&aid)?;
    let cache = reader(&app, &headers);
    let (_, context, loads) = owned_thread(&app, cache.as_ref(), user, aid, sid).await?;
    Ok(marked(Json(context), cache.is_some(), loads, 2))
}

/// `POST /api/assistants/{aid}/threads/{sid}/reply` `{"content": "..."}`: the assistant's
/// reply, streamed by the model as server-sent events (`text/event-stream`), if the caller
/// owns the assistant and the thread (404 otherwise; 400 for an empty or too long message).
///
/// No side effects: the cache layer answers a repeated message without calling this (its
/// rule caches `POST`s by body). Saving the exchange is `POST /api/chat/sessions/{sid}/messages`.
pub async fn reply(
    State(app): State<Dashboard>,
    Extension(user): Extension<UserId>,
    Path((aid, sid)): Path<(String, i64)>,
    headers: HeaderMap,
    Json(body): Json<ReplyBody>,
) -> Result<Response, ApiError> {
    let content = body.content.trim();
    if content.is_empty() || content.chars().count() > MAX_CONTENT {
        return Err(ApiError::BadRequest(format!(
            "`content` must be 1 to {MAX_CONTENT} characters"
        )));
    }
    let aid = assistant_id(&aid)?;
    let cache = reader(&app, &headers);
    let (assistant, context, _) = owned_thread(&app, cache.as_ref(), user, aid, sid).await?;
    let stream = app.model.reply(&assistant, &context, content);
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        )],
        stream,
    )
        .into_response())
}

/// A path's assistant id, if it can be one (else 404: there is no such assistant).
fn assistant_id(aid: &str) -> Result<&str, ApiError> {
    let plausible = !aid.is_empty()
        && aid.len() <= MAX_ID
        && aid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plausible {
        Ok(aid)
    } else {
        Err(ApiError::NotFound("assistant"))
    }
}

/// The cache for a request's typed reads (from where its consistency token is known), if any.
fn reader(app: &Dashboard, headers: &HeaderMap) -> Option<CacheHandle> {
    app.cache
        .as_ref()
        .map(|c| c.reading_after(larder::consistency_token(headers)))
}

/// Reads `key` through the cache (cache-aside), or straight from `load` without one (or
/// when its caching is configured off: no `options`). Returns the value and how it was read.
async fn read_through<T, F, Fut>(
    cache: Option<&CacheHandle>,
    key: &str,
    options: Option<&EntryOptions>,
    load: F,
) -> Result<(T, Loads), ApiError>
where
    T: Serialize + DeserializeOwned,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    let (Some(cache), Some(options)) = (cache, options) else {
        let uncached = Loads {
            loaded: 1,
            uncached: 1,
        };
        return Ok((load().await?, uncached));
    };
    let mut loads = Loads::default();
    let value = cache
        .get_or_insert_with(key, options, || {
            loads.loaded = 1;
            load()
        })
        .await?;
    Ok((value, loads))
}

async fn read_assistant(
    app: &Dashboard,
    cache: Option<&CacheHandle>,
    aid: &str,
) -> Result<(Owned<Assistant>, Loads), ApiError> {
    let (key, options) = assistant_entry(aid, &app.ttls);
    read_through(cache, &key, options.as_ref(), || {
        load_assistant(&app.db, aid)
    })
    .await
}

/// The caller's assistant and thread context (404 unless the caller owns both), and how they
/// were read. The assistant is checked first: a context is never read (nor cached under the
/// assistant's tag) for a caller who does not own the assistant of the path.
async fn owned_thread(
    app: &Dashboard,
    cache: Option<&CacheHandle>,
    user: UserId,
    aid: &str,
    sid: i64,
) -> Result<(Assistant, ThreadContext, Loads), ApiError> {
    let (assistant, first) = read_assistant(app, cache, aid).await?;
    let assistant = assistant.for_user(user, "assistant")?;
    let (key, options) = thread_entry(aid, sid, &app.ttls);
    let (context, second) =
        read_through(cache, &key, options.as_ref(), || load_thread(&app.db, sid)).await?;
    let context = context.for_user(user, "thread")?;
    Ok((assistant, context, first + second))
}

/// An assistant's sources, with its columns split.
fn source(name: String, columns: &str) -> DataSource {
    DataSource {
        name,
        columns: columns
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect(),
    }
}

/// The assistant's row and its sources (one round trip). Not found: an error, so nothing is
/// cached for an id that may exist later.
async fn load_assistant(db: &Db, aid: &str) -> Result<Owned<Assistant>, ApiError> {
    let mut conn = db.lease().await?;
    let rows = sqlx::query(
        "SELECT a.id, a.user_id, a.name, a.instructions, a.model, a.updated_at, s.name, s.columns \
         FROM assistants a LEFT JOIN assistant_sources s ON s.assistant_id = a.id \
         WHERE a.id = $1 ORDER BY s.name",
    )
    .bind(aid)
    .fetch_all(&mut *conn)
    .await?;
    let first = rows.first().ok_or(ApiError::NotFound("assistant"))?;
    let mut assistant = Assistant {
        id: first.try_get(0)?,
        user_id: first.try_get(1)?,
        name: first.try_get(2)?,
        instructions: first.try_get(3)?,
        model: first.try_get(4)?,
        updated_at: first.try_get(5)?,
        sources: Vec::with_capacity(rows.len()),
    };
    for row in &rows {
        let name: Option<String> = row.try_get(6)?;
        let columns: Option<String> = row.try_get(7)?;
        if let (Some(name), Some(columns)) = (name, columns) {
            assistant.sources.push(source(name, &columns));
        }
    }
    Ok(Owned {
        owner: assistant.user_id,
        value: assistant,
    })
}

/// The schema of the assistant's sources (one round trip): a table per source, its columns
/// in order without blanks or repeats.
async fn load_schema(db: &Db, aid: &str) -> Result<Owned<Schema>, ApiError> {
    let mut conn = db.lease().await?;
    let rows = sqlx::query(
        "SELECT a.user_id, s.name, s.columns FROM assistants a \
         LEFT JOIN assistant_sources s ON s.assistant_id = a.id WHERE a.id = $1 ORDER BY s.name",
    )
    .bind(aid)
    .fetch_all(&mut *conn)
    .await?;
    let first = rows.first().ok_or(ApiError::NotFound("assistant"))?;
    let owner: i64 = first.try_get(0)?;
    let mut tables = Vec::with_capacity(rows.len());
    for row in &rows {
        let name: Option<String> = row.try_get(1)?;
        let columns: Option<String> = row.try_get(2)?;
        if let (Some(name), Some(columns)) = (name, columns) {
            let DataSource { name, columns } = source(name, &columns);
            let mut unique: Vec<String> = Vec::with_capacity(columns.len());
            for column in columns {
                if !unique.contains(&column) {
                    unique.push(column);
                }
            }
            tables.push(SchemaTable {
                name,
                columns: unique,
            });
        }
    }
    Ok(Owned {
        owner,
        value: Schema {
            assistant: aid.to_owned(),
            tables,
        },
    })
}

/// The session's owner and its last [`CONTEXT_MESSAGES`] messages (one round trip).
async fn load_thread(db: &Db, sid: i64) -> Result<Owned<ThreadContext>, ApiError> {
    let mut conn = db.lease().await?;
    let rows = sqlx::query(
        "SELECT s.user_id, m.role, m.content, m.created_at FROM sessions s \
         LEFT JOIN messages m ON m.session_id = s.id WHERE s.id = $1 \
         ORDER BY m.created_at DESC, m.id DESC LIMIT $2",
    )
    .bind(sid)
    .bind(CONTEXT_MESSAGES)
    .fetch_all(&mut *conn)
    .await?;
    let first = rows.first().ok_or(ApiError::NotFound("thread"))?;
    let owner: i64 = first.try_get(0)?;
    let mut messages = Vec::with_capacity(rows.len());
    for row in rows.iter().rev() {
        let role: Option<String> = row.try_get(1)?;
        let content: Option<String> = row.try_get(2)?;
        let created_at: Option<i64> = row.try_get(3)?;
        if let (Some(role), Some(content), Some(created_at)) = (role, content, created_at) {
            messages.push(ThreadMessage {
                role,
                content,
                created_at,
            });
        }
    }
    Ok(Owned {
        owner,
        value: ThreadContext {
            thread: sid,
            messages,
        },
    })
}
