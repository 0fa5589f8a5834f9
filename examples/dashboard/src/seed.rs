//! The schema and the seed data, created on start: 1,000 users with profiles, credits and
//! API keys, their platform connections, business metrics in five categories, and 30 to 40
//! chat sessions each (at least three pages at the default page size) with their messages;
//! one assistant per user (`asst_{id}`) with three data sources (seed 004), whose threads are
//! the chat sessions.

use anyhow::Context;
use sqlx::{Connection, Executor, Row};

use crate::db::{Backend, Db};

/// Users `1..=USERS` exist, with keys `demo-key-<N>`.
pub const USERS: i64 = 1000;
/// The metric categories, in the order the dashboard shows them.
pub const CATEGORIES: [&str; 5] = ["finance", "marketing", "operations", "sales", "strategy"];
/// The platforms a user can connect.
pub const PROVIDERS: [&str; 6] = [
    "google_analytics",
    "hubspot",
    "linkedin",
    "meta_ads",
    "shopify",
    "stripe",
];
/// Credits every seeded user starts with.
pub const STARTING_CREDITS: i64 = 1000;
/// 2026-01-01T00:00:00Z: seeded rows are dated from here.
const EPOCH: i64 = 1_767_225_600;

const METRICS: [(&str, [&str; 4]); 5] = [
    (
        "finance",
        ["revenue", "expenses", "profit_margin", "cash_flow"],
    ),
    (
        "marketing",
        ["site_sessions", "conversion_rate", "cac", "roas"],
    ),
    (
        "operations",
        [
            "orders",
            "fulfilment_hours",
            "return_rate",
            "inventory_turns",
        ],
    ),
    (
        "sales",
        ["deals_won", "pipeline_value", "win_rate", "avg_deal_size"],
    ),
    ("strategy", ["nps", "churn_rate", "market_share", "ltv"]),
];

const TOPICS: [&str; 10] = [
    "revenue",
    "churn",
    "marketing budget",
    "inventory",
    "hiring plan",
    "pricing",
    "forecast",
    "customer feedback",
    "ad spend",
    "cash flow",
];

/// The announcements every caller sees (`GET /api/announcements`), oldest first.
pub const ANNOUNCEMENTS: [(&str, &str); 3] = [
    ("Welcome", "The dashboard now answers from its cache."),
    ("New connectors", "Shopify and Stripe data sync every hour."),
    (
        "Maintenance",
        "The assistant is read-only on Sunday 02:00-03:00 UTC.",
    ),
];

/// How many sessions user `id` starts with: 30 to 40.
pub fn seeded_sessions(id: i64) -> i64 {
    30 + id % 11
}

/// Creates the tables (if missing) and, on an empty database, the seed data.
pub async fn prepare(db: &Db) -> anyhow::Result<()> {
    let mut conn = db.raw().await.context("connect for the schema")?;
    let id_column = match db.backend() {
        Backend::Sqlite => "id INTEGER PRIMARY KEY AUTOINCREMENT",
        Backend::Postgres => "id BIGSERIAL PRIMARY KEY",
    };
    let schema = [
        "CREATE TABLE IF NOT EXISTS users (id BIGINT PRIMARY KEY, name TEXT NOT NULL, \
         email TEXT NOT NULL, plan TEXT NOT NULL, credits BIGINT NOT NULL, created_at BIGINT NOT NULL)"
            .to_owned(),
        "CREATE TABLE IF NOT EXISTS api_keys (key TEXT PRIMARY KEY, user_id BIGINT NOT NULL)".to_owned(),
        "CREATE TABLE IF NOT EXISTS connections (user_id BIGINT NOT NULL, provider TEXT NOT NULL, \
         connected BIGINT NOT NULL, account TEXT, updated_at BIGINT NOT NULL, \
         PRIMARY KEY (user_id, provider))"
            .to_owned(),
        "CREATE TABLE IF NOT EXISTS metrics (user_id BIGINT NOT NULL, category TEXT NOT NULL, \
         name TEXT NOT NULL, value DOUBLE PRECISION NOT NULL, change_pct DOUBLE PRECISION NOT NULL, \
         PRIMARY KEY (user_id, category, name))"
            .to_owned(),
        format!(
            "CREATE TABLE IF NOT EXISTS sessions ({id_column}, user_id BIGINT NOT NULL, \
             title TEXT NOT NULL, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL)"
        ),
        "CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions (user_id, updated_at)".to_owned(),
        format!(
            "CREATE TABLE IF NOT EXISTS messages ({id_column}, session_id BIGINT NOT NULL, \
             user_id BIGINT NOT NULL, role TEXT NOT NULL, content TEXT NOT NULL, \
             credits BIGINT NOT NULL, created_at BIGINT NOT NULL)"
        ),
        "CREATE INDEX IF NOT EXISTS messages_by_session ON messages (session_id)".to_owned(),
        "CREATE INDEX IF NOT EXISTS messages_by_user ON messages (user_id)".to_owned(),
        format!(
            "CREATE TABLE IF NOT EXISTS announcements ({id_column}, title TEXT NOT NULL, \
             body TEXT NOT NULL, published_at BIGINT NOT NULL)"
        ),
        "CREATE TABLE IF NOT EXISTS assistants (id TEXT PRIMARY KEY, user_id BIGINT NOT NULL, \
         name TEXT NOT NULL, instructions TEXT NOT NULL, model TEXT NOT NULL, \
         updated_at BIGINT NOT NULL)"
            .to_owned(),
        "CREATE TABLE IF NOT EXISTS assistant_sources (assistant_id TEXT NOT NULL, \
         name TEXT NOT NULL, columns TEXT NOT NULL)"
            .to_owned(),
        "CREATE INDEX IF NOT EXISTS assistant_sources_by_assistant \
         ON assistant_sources (assistant_id)"
            .to_owned(),
        crate::sync::SCHEMA.to_owned(),
    ];
    for statement in &schema {
        conn.execute(statement.as_str())
            .await
            .with_context(|| format!("create the schema: {statement}"))?;
    }
    // Announcements are seeded on their own: a database made before they existed gets them.
    let announcements: i64 = sqlx::query("SELECT COUNT(*) FROM announcements")
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
    if announcements == 0 {
        for (i, (title, body)) in ANNOUNCEMENTS.iter().enumerate() {
            sqlx::query(
                "INSERT INTO announcements (title, body, published_at) VALUES ($1, $2, $3)",
            )
            .bind(*title)
            .bind(*body)
            .bind(EPOCH + i as i64 * 86_400)
            .execute(&mut *conn)
            .await
            .context("seed the announcements")?;
        }
    }
    // So are the assistants: a database made before they existed gets them.
    let assistants: i64 = sqlx::query("SELECT COUNT(*) FROM assistants")
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
    if assistants == 0 {
        seed_assistants(&mut conn)
            .await
            .context("seed the assistants")?;
    }
    let users: i64 = sqlx::query("SELECT COUNT(*) FROM users")
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
    if users > 0 {
        return Ok(());
    }
    let mut tx = conn.begin().await?;
    for rows in batches(1..=USERS, |id| {
        let plan = ["free", "pro", "team"][(id % 3) as usize];
        format!(
            "({id}, 'Demo User {id}', 'user{id}@example.com', '{plan}', {STARTING_CREDITS}, {})",
            EPOCH + id * 60
        )
    }) {
        tx.execute(
            format!("INSERT INTO users (id, name, email, plan, credits, created_at) VALUES {rows}")
                .as_str(),
        )
        .await?;
    }
    for rows in batches(1..=USERS, |id| format!("('demo-key-{id}', {id})")) {
        tx.execute(format!("INSERT INTO api_keys (key, user_id) VALUES {rows}").as_str())
            .await?;
    }
    let connections = (1..=USERS).flat_map(|id| {
        PROVIDERS
            .iter()
            .enumerate()
            .filter(move |(i, _)| (id + *i as i64) % 3 != 0)
            .map(move |(_, p)| (id, *p))
    });
    for rows in batches(connections, |(id, provider)| {
        format!("({id}, '{provider}', 1, '{provider}-account-{id}', {EPOCH})")
    }) {
        tx.execute(
            format!("INSERT INTO connections (user_id, provider, connected, account, updated_at) VALUES {rows}")
                .as_str(),
        )
        .await?;
    }
    let metrics = (1..=USERS).flat_map(|id| {
        METRICS.iter().flat_map(move |(category, names)| {
            names
                .iter()
                .enumerate()
                .map(move |(k, name)| (id, *category, k as i64, *name))
        })
    });
    for rows in batches(metrics, |(id, category, k, name)| {
        let n = id * 7919 + k * 104_729 + category.len() as i64 * 31;
        let value = (n % 100_000) as f64 / 10.0;
        let change = ((n / 7) % 400 - 200) as f64 / 10.0;
        format!("({id}, '{category}', '{name}', {value:.1}, {change:.1})")
    }) {
        tx.execute(
            format!(
                "INSERT INTO metrics (user_id, category, name, value, change_pct) VALUES {rows}"
            )
            .as_str(),
        )
        .await?;
    }
    // Sessions get ids 1.. in insertion order on both engines (a fresh table), so the
    // messages below can name them without reading them back.
    let sessions = (1..=USERS).flat_map(|id| (0..seeded_sessions(id)).map(move |n| (id, n)));
    for rows in batches(sessions.clone(), |(id, n)| {
        let topic = TOPICS[((id + n) % TOPICS.len() as i64) as usize];
        let at = EPOCH + id * 60 + n * 3600;
        format!("({id}, 'Chat about {topic} #{}', {at}, {at})", n + 1)
    }) {
        tx.execute(
            format!("INSERT INTO sessions (user_id, title, created_at, updated_at) VALUES {rows}")
                .as_str(),
        )
        .await?;
    }
    let messages = sessions.enumerate().flat_map(|(i, (id, n))| {
        let session = i as i64 + 1;
        [(session, id, n, "user"), (session, id, n, "assistant")]
    });
    for rows in batches(messages, |(session, id, n, role)| {
        let topic = TOPICS[((id + n * 3) % TOPICS.len() as i64) as usize];
        let at = EPOCH + id * 60 + n * 3600 + 30;
        let (content, credits) = if role == "user" {
            (format!("How is our {topic} trending this quarter?"), 1)
        } else {
            (
                format!("Your {topic} is up {}% on last quarter.", (id + n) % 17),
                0,
            )
        };
        format!("({session}, {id}, '{role}', '{content}', {credits}, {at})")
    }) {
        tx.execute(
            format!(
                "INSERT INTO messages (session_id, user_id, role, content, credits, created_at) VALUES {rows}"
            )
            .as_str(),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The models the seeded assistants use.
const MODELS: [&str; 3] = ["model-small", "model-medium", "model-large"];

/// The id of user `id`'s assistant.
pub fn assistant_id(user: i64) -> String {
    format!("asst_{user}")
}

/// The data sources of user `id`'s assistant: three of the metric categories (which three
/// depends on the user), each a source named `{category}_metrics` with a `date` column and
/// the category's metrics.
pub fn assistant_sources(user: i64) -> Vec<(String, Vec<&'static str>)> {
    (0..3)
        .map(|k| {
            let (category, names) = METRICS[((user + k) % METRICS.len() as i64) as usize];
            let mut columns = vec!["date"];
            columns.extend(names);
            (format!("{category}_metrics"), columns)
        })
        .collect()
}

/// One assistant per user (`asst_{id}`) with three data sources, in one transaction.
async fn seed_assistants(conn: &mut sqlx::AnyConnection) -> anyhow::Result<()> {
    let mut tx = conn.begin().await?;
    for rows in batches(1..=USERS, |id| {
        let model = MODELS[(id % MODELS.len() as i64) as usize];
        format!(
            "('{}', {id}, 'Analyst of Demo User {id}', 'Answer from the connected data; \
             say which source each figure comes from.', '{model}', {})",
            assistant_id(id),
            EPOCH + id * 60
        )
    }) {
        tx.execute(
            format!(
                "INSERT INTO assistants (id, user_id, name, instructions, model, updated_at) VALUES {rows}"
            )
            .as_str(),
        )
        .await?;
    }
    let sources = (1..=USERS).flat_map(|id| {
        assistant_sources(id)
            .into_iter()
            .map(move |(name, columns)| (id, name, columns.join(",")))
    });
    for rows in batches(sources, |(id, name, columns)| {
        format!("('{}', '{name}', '{columns}')", assistant_id(id))
    }) {
        tx.execute(
            format!("INSERT INTO assistant_sources (assistant_id, name, columns) VALUES {rows}")
                .as_str(),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Renders `items` as `VALUES` lists of at most 500 rows each.
fn batches<I, F>(items: I, row: F) -> Vec<String>
where
    I: IntoIterator,
    F: Fn(I::Item) -> String,
{
    let rows: Vec<String> = items.into_iter().map(row).collect();
    rows.chunks(500).map(|chunk| chunk.join(", ")).collect()
}
