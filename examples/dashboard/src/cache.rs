//! How the dashboard caches: the store it runs on and the rules of every route (the HTTP
//! contract's table of TTLs, tags and invalidations, written down once).

use std::time::Duration;

use anyhow::Context;
use larder::{
    CacheHandle, EntryOptions, MemoryStore, Pagination, Rule, Rules, UserScope,
    store::{RedisStore, TieredStore},
};

use crate::auth::UserId;

/// Which store the cache uses (`--store`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// No cache at all: the same routes straight to the database (the baseline).
    None,
    /// The in-process store (the default).
    Memory,
    /// Redis only.
    Redis,
    /// An in-process L1 in front of Redis, kept coherent over pub/sub.
    Tiered,
}

/// Five minutes: profile, connectors, search and session pages.
pub const FIVE_MINUTES: Duration = Duration::from_secs(5 * 60);
/// Ten minutes: chat statistics.
pub const TEN_MINUTES: Duration = Duration::from_secs(10 * 60);
/// Fifteen minutes: business metrics.
pub const FIFTEEN_MINUTES: Duration = Duration::from_secs(15 * 60);
/// The default page size of `/api/chat/sessions`.
pub const DEFAULT_PER_PAGE: i64 = 10;

/// Builds the cache handle for `kind` (`None` for [`StoreKind::None`]).
pub async fn handle(
    kind: StoreKind,
    redis_url: &str,
    namespace: &str,
    memory_bytes: u64,
    journal: Option<&std::path::Path>,
) -> anyhow::Result<Option<CacheHandle>> {
    let builder = match kind {
        StoreKind::None => return Ok(None),
        StoreKind::Memory => CacheHandle::builder(MemoryStore::new(memory_bytes)),
        StoreKind::Redis => CacheHandle::builder(redis(redis_url, namespace).await?),
        StoreKind::Tiered => CacheHandle::builder(
            TieredStore::builder(redis(redis_url, namespace).await?)
                .l1_capacity(memory_bytes)
                .build(),
        ),
    };
    let builder = builder.namespace(namespace).x_cache();
    let builder = match journal {
        Some(path) if kind != StoreKind::Memory => builder.journal(path),
        _ => builder,
    };
    let handle = builder
        .try_build()
        .with_context(|| format!("open the invalidation journal {journal:?}"))?;
    Ok(Some(handle))
}

async fn redis(url: &str, namespace: &str) -> anyhow::Result<RedisStore> {
    RedisStore::builder(url)
        .namespace(namespace)
        .build()
        .await
        .with_context(|| format!("connect to Redis at {url}"))
}

/// The rules of every cached or invalidating route under `/api`; with `audit`, that fraction
/// of each cached route's hits is audited against the database.
pub fn rules(audit: Option<f64>) -> Rules {
    let user = || UserScope::extension::<UserId>();
    let cached = |name: &str, ttl: Duration, tag: &str| {
        let rule = Rule::new(name.to_owned())
            .ttl(ttl)
            .user_scope(user())
            .tag(tag);
        match audit {
            Some(fraction) => rule.audit(fraction),
            None => rule,
        }
    };
    let writes = |name: &str, tags: &[&str]| {
        Rule::new(name.to_owned())
            .user_scope(user())
            .invalidates(tags)
    };
    Rules::new()
        .route(
            "/api/user/me",
            cached("user_me", FIVE_MINUTES, "user:{user}"),
        )
        .route(
            "/api/connectors/status",
            cached("connectors_status", FIVE_MINUTES, "connectors:{user}"),
        )
        .route(
            "/api/connectors/reset",
            writes("connectors_write", &["connectors:{user}"]),
        )
        .route(
            "/api/connectors/{provider}",
            writes("connectors_write", &["connectors:{user}"]),
        )
        .route(
            "/api/metrics/{category}",
            cached("metrics", FIFTEEN_MINUTES, "metrics:{user}"),
        )
        .route(
            "/api/chat/stats",
            cached("chat_stats", TEN_MINUTES, "stats:{user}"),
        )
        .route(
            "/api/chat/search",
            cached("chat_search", FIVE_MINUTES, "search:{user}"),
        )
        .route(
            "/api/chat/sessions",
            cached("chat_sessions", FIVE_MINUTES, "sessions:{user}")
                .paginate(
                    Pagination::new("page")
                        .per_page("per_page")
                        .defaults(1, DEFAULT_PER_PAGE),
                )
                // POST (create) invalidates (titles are searched):
                .invalidates(["stats:{user}", "sessions:{user}", "search:{user}"]),
        )
        // PUT (rename) invalidates these; DELETE also invalidates `stats:{user}`, which its
        // handler does itself (a rule's invalidations are per path, not per method).
        .route(
            "/api/chat/sessions/{sid}",
            writes("session_write", &["sessions:{user}", "search:{user}"]),
        )
        .route(
            "/api/chat/sessions/{sid}/messages",
            // A message moves its session up the list and changes its count, and spends
            // the user's credits.
            writes(
                "message_write",
                &[
                    "stats:{user}",
                    "search:{user}",
                    "user:{user}",
                    "sessions:{user}",
                ],
            ),
        )
}

/// The parts of `/api/dashboard`, read through the typed API in one batch: each is stored
/// under its own key with the TTL and tag of the route that serves the same data, so the
/// same writes invalidate them.
pub fn dashboard_parts(user: i64) -> Vec<(String, EntryOptions)> {
    let opts = |ttl: Duration, tag: String| EntryOptions::new(ttl).tag(tag);
    let mut parts = vec![
        (
            format!("dashboard:{user}:profile"),
            opts(FIVE_MINUTES, format!("user:{user}")),
        ),
        (
            format!("dashboard:{user}:connectors"),
            opts(FIVE_MINUTES, format!("connectors:{user}")),
        ),
    ];
    for category in crate::seed::CATEGORIES {
        parts.push((
            format!("dashboard:{user}:metrics:{category}"),
            opts(FIFTEEN_MINUTES, format!("metrics:{user}")),
        ));
    }
    parts.push((
        format!("dashboard:{user}:stats"),
        opts(TEN_MINUTES, format!("stats:{user}")),
    ));
    parts.push((
        format!("dashboard:{user}:sessions:1"),
        opts(FIVE_MINUTES, format!("sessions:{user}")),
    ));
    parts
}
