//! Every database read and write the API makes. Each function is one round trip: it takes
//! one [`Lease`](crate::db::Lease), so it pays the configured latency once.

use serde::{Deserialize, Serialize};
use sqlx::{Acquire, Row, any::AnyRow};

use crate::{
    db::Db,
    error::ApiError,
    seed::{CATEGORIES, PROVIDERS},
};

/// `GET /api/user/me`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// The user's id.
    pub id: i64,
    /// Display name.
    pub name: String,
    /// Email address.
    pub email: String,
    /// `free`, `pro` or `team`.
    pub plan: String,
    /// Credits left; each chat message spends some.
    pub credits: i64,
}

/// One platform in `GET /api/connectors/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Connector {
    /// The platform (`stripe`, `shopify`, ...).
    pub provider: String,
    /// Whether it is connected now.
    pub connected: bool,
    /// The connected account, if any.
    pub account: Option<String>,
    /// When it last changed (Unix seconds), if ever.
    pub updated_at: Option<i64>,
    /// Its last data sync (`POST /api/connectors/{provider}/sync`), if any.
    pub last_sync: Option<crate::sync::LastSync>,
}

/// `GET /api/connectors/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectorStatus {
    /// How many platforms are connected.
    pub connected: usize,
    /// Every platform, connected or not.
    pub connectors: Vec<Connector>,
}

/// One figure in `GET /api/metrics/{category}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// Its name (`revenue`, `churn_rate`, ...).
    pub name: String,
    /// Its value.
    pub value: f64,
    /// Change against the previous period, in percent.
    pub change_pct: f64,
}

/// `GET /api/metrics/{category}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoryMetrics {
    /// `finance`, `marketing`, `operations`, `sales` or `strategy`.
    pub category: String,
    /// The period the figures cover.
    pub period: String,
    /// The figures.
    pub metrics: Vec<Metric>,
}

/// `GET /api/chat/stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatStats {
    /// Chat sessions.
    pub sessions: i64,
    /// Messages in them (the user's and the replies).
    pub messages: i64,
    /// Credits spent on messages.
    pub credits_used: i64,
}

/// A chat session as lists and search show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// Its id.
    pub id: i64,
    /// Its title.
    pub title: String,
    /// Created (Unix seconds).
    pub created_at: i64,
    /// Last changed or written to (Unix seconds).
    pub updated_at: i64,
    /// Messages in it.
    pub message_count: i64,
}

/// `GET /api/chat/sessions?page=&per_page=`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionPage {
    /// This page (from 1).
    pub page: i64,
    /// Sessions per page.
    pub per_page: i64,
    /// Sessions in all.
    pub total: i64,
    /// Pages in all.
    pub total_pages: i64,
    /// This page's sessions, most recently updated first.
    pub sessions: Vec<Session>,
}

/// `GET /api/chat/search?q=`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchResults {
    /// The query as given.
    pub query: String,
    /// Sessions whose title or messages contain it (at most 20, most recent first).
    pub sessions: Vec<Session>,
}

/// A stored chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Its id.
    pub id: i64,
    /// Its session.
    pub session_id: i64,
    /// `user` or `assistant`.
    pub role: String,
    /// Its text.
    pub content: String,
    /// Credits it cost.
    pub credits: i64,
    /// Written (Unix seconds).
    pub created_at: i64,
}

/// The answer to `POST /api/chat/sessions/{sid}/messages`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exchange {
    /// The user's message.
    pub message: Message,
    /// The assistant's reply.
    pub reply: Message,
    /// Credits left after this message.
    pub credits_remaining: i64,
}

const SESSION_COLUMNS: &str = "s.id, s.title, s.created_at, s.updated_at, \
     (SELECT COUNT(*) FROM messages m WHERE m.session_id = s.id)";

fn session(row: &AnyRow) -> Result<Session, sqlx::Error> {
    Ok(Session {
        id: row.try_get(0)?,
        title: row.try_get(1)?,
        created_at: row.try_get(2)?,
        updated_at: row.try_get(3)?,
        message_count: row.try_get(4)?,
    })
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The user's profile and credits.
pub async fn profile(db: &Db, user: i64) -> Result<Profile, ApiError> {
    let mut conn = db.lease().await?;
    let row = sqlx::query("SELECT id, name, email, plan, credits FROM users WHERE id = $1")
        .bind(user)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    Ok(Profile {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        email: row.try_get(2)?,
        plan: row.try_get(3)?,
        credits: row.try_get(4)?,
    })
}

/// Every platform and whether the user has connected it.
pub async fn connector_status(db: &Db, user: i64) -> Result<ConnectorStatus, ApiError> {
    let mut conn = db.lease().await?;
    // One round trip: the connections and their last syncs.
    let rows = sqlx::query(
        "SELECT c.provider, c.connected, c.account, c.updated_at, \
         s.status, s.rows_read, s.started_at, s.finished_at \
         FROM connections c LEFT JOIN syncs s ON s.user_id = c.user_id AND s.provider = c.provider \
         WHERE c.user_id = $1",
    )
    .bind(user)
    .fetch_all(&mut *conn)
    .await?;
    let mut connectors: Vec<Connector> = PROVIDERS
        .iter()
        .map(|p| Connector {
            provider: (*p).to_owned(),
            connected: false,
            account: None,
            updated_at: None,
            last_sync: None,
        })
        .collect();
    for row in rows {
        let provider: String = row.try_get(0)?;
        if let Some(c) = connectors.iter_mut().find(|c| c.provider == provider) {
            c.connected = row.try_get::<i64, _>(1)? != 0;
            c.account = row.try_get(2)?;
            c.updated_at = Some(row.try_get(3)?);
            c.last_sync = crate::sync::last_sync(&row)?;
        }
    }
    Ok(ConnectorStatus {
        connected: connectors.iter().filter(|c| c.connected).count(),
        connectors,
    })
}

/// Connects `provider` (which must be one of [`PROVIDERS`]) under `account`.
pub async fn connect(
    db: &Db,
    user: i64,
    provider: &str,
    account: &str,
) -> Result<Connector, ApiError> {
    let mut conn = db.lease().await?;
    let at = now();
    sqlx::query(
        "INSERT INTO connections (user_id, provider, connected, account, updated_at) \
         VALUES ($1, $2, 1, $3, $4) ON CONFLICT (user_id, provider) \
         DO UPDATE SET connected = 1, account = excluded.account, updated_at = excluded.updated_at",
    )
    .bind(user)
    .bind(provider)
    .bind(account)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(Connector {
        provider: provider.to_owned(),
        connected: true,
        account: Some(account.to_owned()),
        updated_at: Some(at),
        // What the status shows; connecting neither starts nor forgets a sync.
        last_sync: None,
    })
}

/// Disconnects `provider`, or every platform with `None`. Returns how many were connected.
pub async fn disconnect(db: &Db, user: i64, provider: Option<&str>) -> Result<u64, ApiError> {
    let mut conn = db.lease().await?;
    let done = match provider {
        Some(p) => {
            sqlx::query(
                "UPDATE connections SET connected = 0, account = NULL, updated_at = $3 \
                 WHERE user_id = $1 AND provider = $2 AND connected = 1",
            )
            .bind(user)
            .bind(p)
            .bind(now())
            .execute(&mut *conn)
            .await?
        }
        None => {
            sqlx::query(
                "UPDATE connections SET connected = 0, account = NULL, updated_at = $2 \
                 WHERE user_id = $1 AND connected = 1",
            )
            .bind(user)
            .bind(now())
            .execute(&mut *conn)
            .await?
        }
    };
    Ok(done.rows_affected())
}

/// The figures of one category (which must be one of [`CATEGORIES`]).
pub async fn metrics(db: &Db, user: i64, category: &str) -> Result<CategoryMetrics, ApiError> {
    debug_assert!(CATEGORIES.contains(&category));
    let mut conn = db.lease().await?;
    let rows = sqlx::query(
        "SELECT name, value, change_pct FROM metrics WHERE user_id = $1 AND category = $2 ORDER BY name",
    )
    .bind(user)
    .bind(category)
    .fetch_all(&mut *conn)
    .await?;
    let metrics = rows
        .iter()
        .map(|row| {
            Ok(Metric {
                name: row.try_get(0)?,
                value: row.try_get(1)?,
                change_pct: row.try_get(2)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()?;
    Ok(CategoryMetrics {
        category: category.to_owned(),
        period: "last_30_days".to_owned(),
        metrics,
    })
}

/// Session, message and credit counts.
pub async fn chat_stats(db: &Db, user: i64) -> Result<ChatStats, ApiError> {
    let mut conn = db.lease().await?;
    let row = sqlx::query(
        "SELECT (SELECT COUNT(*) FROM sessions WHERE user_id = $1), \
                (SELECT COUNT(*) FROM messages WHERE user_id = $1), \
                (SELECT CAST(COALESCE(SUM(credits), 0) AS BIGINT) FROM messages WHERE user_id = $1)",
    )
    .bind(user)
    .fetch_one(&mut *conn)
    .await?;
    Ok(ChatStats {
        sessions: row.try_get(0)?,
        messages: row.try_get(1)?,
        credits_used: row.try_get(2)?,
    })
}

/// One page of the user's sessions, most recently updated first.
pub async fn sessions(
    db: &Db,
    user: i64,
    page: i64,
    per_page: i64,
) -> Result<SessionPage, ApiError> {
    let mut conn = db.lease().await?;
    let total: i64 = sqlx::query("SELECT COUNT(*) FROM sessions WHERE user_id = $1")
        .bind(user)
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
    let rows = sqlx::query(&format!(
        "SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.user_id = $1 \
         ORDER BY s.updated_at DESC, s.id DESC LIMIT $2 OFFSET $3"
    ))
    .bind(user)
    .bind(per_page)
    .bind((page - 1) * per_page)
    .fetch_all(&mut *conn)
    .await?;
    Ok(SessionPage {
        page,
        per_page,
        total,
        total_pages: (total + per_page - 1) / per_page,
        sessions: rows.iter().map(session).collect::<Result<_, _>>()?,
    })
}

/// Sessions whose title or messages contain `query` (case-insensitive).
pub async fn search(db: &Db, user: i64, query: &str) -> Result<SearchResults, ApiError> {
    let escaped = query
        .to_lowercase()
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    let pattern = format!("%{escaped}%");
    let mut conn = db.lease().await?;
    let rows = sqlx::query(&format!(
        "SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.user_id = $1 AND \
         (LOWER(s.title) LIKE $2 ESCAPE '\\' OR EXISTS (SELECT 1 FROM messages m \
          WHERE m.session_id = s.id AND LOWER(m.content) LIKE $2 ESCAPE '\\')) \
         ORDER BY s.updated_at DESC, s.id DESC LIMIT 20"
    ))
    .bind(user)
    .bind(pattern)
    .fetch_all(&mut *conn)
    .await?;
    Ok(SearchResults {
        query: query.to_owned(),
        sessions: rows.iter().map(session).collect::<Result<_, _>>()?,
    })
}

/// Creates a session.
pub async fn create_session(db: &Db, user: i64, title: &str) -> Result<Session, ApiError> {
    let mut conn = db.lease().await?;
    let at = now();
    let id: i64 = sqlx::query(
        "INSERT INTO sessions (user_id, title, created_at, updated_at) VALUES ($1, $2, $3, $3) RETURNING id",
    )
    .bind(user)
    .bind(title)
    .bind(at)
    .fetch_one(&mut *conn)
    .await?
    .try_get(0)?;
    Ok(Session {
        id,
        title: title.to_owned(),
        created_at: at,
        updated_at: at,
        message_count: 0,
    })
}

/// Renames one of the user's sessions.
pub async fn rename_session(
    db: &Db,
    user: i64,
    sid: i64,
    title: &str,
) -> Result<Session, ApiError> {
    let mut conn = db.lease().await?;
    let updated = sqlx::query(
        "UPDATE sessions SET title = $3, updated_at = $4 WHERE id = $1 AND user_id = $2",
    )
    .bind(sid)
    .bind(user)
    .bind(title)
    .bind(now())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if updated == 0 {
        return Err(ApiError::NotFound("session"));
    }
    let row = sqlx::query(&format!(
        "SELECT {SESSION_COLUMNS} FROM sessions s WHERE s.id = $1"
    ))
    .bind(sid)
    .fetch_one(&mut *conn)
    .await?;
    Ok(session(&row)?)
}

/// Deletes one of the user's sessions and its messages.
pub async fn delete_session(db: &Db, user: i64, sid: i64) -> Result<(), ApiError> {
    let mut conn = db.lease().await?;
    let mut tx = conn.begin().await?;
    let deleted = sqlx::query("DELETE FROM sessions WHERE id = $1 AND user_id = $2")
        .bind(sid)
        .bind(user)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if deleted == 0 {
        return Err(ApiError::NotFound("session"));
    }
    sqlx::query("DELETE FROM messages WHERE session_id = $1")
        .bind(sid)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Deletes message `mid` of the user's session `sid`; 404 unless it is there.
pub async fn delete_message(db: &Db, user: i64, sid: i64, mid: i64) -> Result<(), ApiError> {
    let mut conn = db.lease().await?;
    let deleted = sqlx::query(
        "DELETE FROM messages WHERE id = $1 AND session_id = $2 AND user_id = $3 \
         AND EXISTS (SELECT 1 FROM sessions s WHERE s.id = $2 AND s.user_id = $3)",
    )
    .bind(mid)
    .bind(sid)
    .bind(user)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if deleted == 0 {
        return Err(ApiError::NotFound("message"));
    }
    Ok(())
}

/// What a message costs: one credit, plus one per started 200 characters after the first.
pub fn message_cost(content: &str) -> i64 {
    1 + (content.chars().count() as i64 - 1).max(0) / 200
}

/// Writes the user's message and the assistant's reply, and spends the message's credits.
pub async fn post_message(
    db: &Db,
    user: i64,
    sid: i64,
    content: &str,
) -> Result<Exchange, ApiError> {
    let cost = message_cost(content);
    let mut conn = db.lease().await?;
    let mut tx = conn.begin().await?;
    // Spend first: the row lock serialises concurrent messages of one user on PostgreSQL,
    // and SQLite's write lock does the same.
    let credits: i64 = sqlx::query(
        "UPDATE users SET credits = credits - $2 WHERE id = $1 AND credits >= $2 RETURNING credits",
    )
    .bind(user)
    .bind(cost)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(ApiError::PaymentRequired)?
    .try_get(0)?;
    let at = now();
    let touched = sqlx::query("UPDATE sessions SET updated_at = $3 WHERE id = $1 AND user_id = $2")
        .bind(sid)
        .bind(user)
        .bind(at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if touched == 0 {
        return Err(ApiError::NotFound("session"));
    }
    let reply_text = format!(
        "Noted: {} characters about your business.",
        content.chars().count()
    );
    let mut written = Vec::with_capacity(2);
    for (role, text, credits) in [
        ("user", content, cost),
        ("assistant", reply_text.as_str(), 0),
    ] {
        let id: i64 = sqlx::query(
            "INSERT INTO messages (session_id, user_id, role, content, credits, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(sid)
        .bind(user)
        .bind(role)
        .bind(text)
        .bind(credits)
        .bind(at)
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        written.push(Message {
            id,
            session_id: sid,
            role: role.to_owned(),
            content: text.to_owned(),
            credits,
            created_at: at,
        });
    }
    tx.commit().await?;
    let reply = written.pop().expect("two messages written");
    let message = written.pop().expect("two messages written");
    Ok(Exchange {
        message,
        reply,
        credits_remaining: credits,
    })
}

/// API keys and the users they belong to, read once on start (authentication stays local,
/// as a JWT check would).
pub async fn api_keys(db: &Db) -> anyhow::Result<std::collections::HashMap<String, i64>> {
    let mut conn = db.raw().await?;
    let rows = sqlx::query("SELECT key, user_id FROM api_keys")
        .fetch_all(&mut *conn)
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}

/// One announcement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Announcement {
    /// Its id.
    pub id: i64,
    /// Its title.
    pub title: String,
    /// Its text.
    pub body: String,
    /// When it was published, in Unix seconds.
    pub published_at: i64,
}

/// `GET /api/announcements`: the same for every caller, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Announcements {
    /// The newest 20.
    pub announcements: Vec<Announcement>,
}

/// The newest announcements (one query).
pub async fn announcements(db: &Db) -> Result<Announcements, ApiError> {
    let mut conn = db.lease().await?;
    let rows = sqlx::query(
        "SELECT id, title, body, published_at FROM announcements \
         ORDER BY published_at DESC, id DESC LIMIT 20",
    )
    .fetch_all(&mut *conn)
    .await?;
    let announcements = rows
        .iter()
        .map(|row| {
            Ok(Announcement {
                id: row.try_get(0)?,
                title: row.try_get(1)?,
                body: row.try_get(2)?,
                published_at: row.try_get(3)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()?;
    Ok(Announcements { announcements })
}
