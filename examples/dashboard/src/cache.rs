//! How the dashboard caches: the store it runs on and the rules of every route (the HTTP
//! contract's table of TTLs, tags and invalidations, written down once).

use std::time::Duration;

use anyhow::Context;
use axum::{
    http::{HeaderName, HeaderValue},
    response::{IntoResponse, Response},
};
use larder::{
    CacheHandle, EntryOptions, KeyOptions, MemoryStore, Pagination, Rule, Rules, UserScope,
    store::{RedisStore, TieredStore},
};

use crate::{auth::UserId, ttls::RouteTtls};

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

/// The default page size of `/api/chat/sessions`.
pub const DEFAULT_PER_PAGE: i64 = 10;

/// Where the Redis of `--store redis` and `--store tiered` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisNodes {
    /// One Redis server (`--redis-url URL`).
    Single(String),
    /// A Redis Cluster, reached through any of these seed nodes (`--redis-cluster --redis-url
    /// URL1,URL2,...`): one reachable node is enough to learn the slot map.
    Cluster(Vec<String>),
}

impl RedisNodes {
    /// Reads `--redis-url` (and `--redis-cluster`): a single URL is taken as it is; with
    /// `cluster`, a comma-separated list of seed nodes. Several URLs without `cluster` are
    /// refused rather than read as one.
    pub fn parse(redis_url: &str, cluster: bool) -> anyhow::Result<RedisNodes> {
        if cluster {
            let urls: Vec<String> = redis_url
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect();
            anyhow::ensure!(
                !urls.is_empty(),
                "--redis-cluster needs at least one node in --redis-url"
            );
            return Ok(RedisNodes::Cluster(urls));
        }
        // A comma may belong to a password; a second scheme after one may not.
        if redis_url.contains(",redis://") || redis_url.contains(",rediss://") {
            anyhow::bail!(
                "--redis-url names several nodes ({redis_url}): add --redis-cluster (REDIS_CLUSTER=true) for a Redis Cluster"
            );
        }
        Ok(RedisNodes::Single(redis_url.to_owned()))
    }
}

impl std::fmt::Display for RedisNodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisNodes::Single(url) => write!(f, "Redis at {url}"),
            RedisNodes::Cluster(urls) => write!(f, "Redis Cluster at {}", urls.join(",")),
        }
    }
}

/// Refills after writes: at most this many a second, and at once.
const REFILLS_PER_SECOND: u32 = 100;
const REFILLS_AT_ONCE: usize = 4;

/// How the cache is tuned: what `--namespace`, `--cache-memory-mb`, `--journal`,
/// `--fill-lock-ms` and `--l1-ttl-secs` say.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Key namespace in the store.
    pub namespace: String,
    /// Memory of the in-process store, or of the tiered store's L1.
    pub memory_bytes: u64,
    /// Where invalidations Redis could not take are kept across restarts.
    pub journal: Option<std::path::PathBuf>,
    /// How long an instance waits for another's fill (a lock in the store), if at all.
    pub fill_lock: Option<Duration>,
    /// The longest an L1 copy lives on the tiered store.
    pub l1_ttl: Duration,
}

impl Tuning {
    /// The tuning `config` asks for.
    pub fn of(config: &crate::Config) -> Tuning {
        Tuning {
            namespace: config.namespace.clone(),
            memory_bytes: config.cache_memory_mb << 20,
            journal: config.journal.clone(),
            fill_lock: config.fill_lock_ms.map(Duration::from_millis),
            l1_ttl: Duration::from_secs(config.l1_ttl_secs.max(1)),
        }
    }
}

/// Builds the cache handle for `kind` (`None` for [`StoreKind::None`]); `redis` is used by
/// the `redis` and `tiered` stores only, and so are the journal and the fill lock.
pub async fn handle(
    kind: StoreKind,
    redis: &RedisNodes,
    tuning: &Tuning,
) -> anyhow::Result<Option<CacheHandle>> {
    let namespace = tuning.namespace.as_str();
    let builder = match kind {
        StoreKind::None => return Ok(None),
        StoreKind::Memory => CacheHandle::builder(MemoryStore::new(tuning.memory_bytes)),
        StoreKind::Redis => CacheHandle::builder(redis_store(redis, namespace).await?),
        StoreKind::Tiered => CacheHandle::builder(
            TieredStore::builder(redis_store(redis, namespace).await?)
                .l1_capacity(tuning.memory_bytes)
                .l1_max_ttl(tuning.l1_ttl)
                .build(),
        ),
    };
    // Refills share the database pool with clients: at most 4 at once, so a write that
    // invalidates a user's five pages never holds more than 4 connections for them.
    // The API answers the same on every host name: one entry whatever `Host` a client (or
    // the warm-up) sends, `localhost`, an IP or a domain behind a proxy.
    let mut builder = builder
        .namespace(namespace)
        .x_cache()
        .default_key(KeyOptions::new().ignore_authority())
        .refill_limits(REFILLS_PER_SECOND, REFILLS_AT_ONCE);
    let shared_store = kind != StoreKind::Memory;
    if let (Some(path), true) = (&tuning.journal, shared_store) {
        builder = builder.journal(path);
    }
    if let (Some(wait), true) = (tuning.fill_lock, shared_store) {
        builder = builder.distributed_lock(wait);
    }
    let handle = builder
        .try_build()
        .with_context(|| format!("open the invalidation journal {:?}", tuning.journal))?;
    Ok(Some(handle))
}

async fn redis_store(nodes: &RedisNodes, namespace: &str) -> anyhow::Result<RedisStore> {
    let builder = match nodes {
        RedisNodes::Single(url) => RedisStore::builder(url.as_str()),
        RedisNodes::Cluster(urls) => RedisStore::cluster(urls.iter().map(String::as_str)),
    };
    builder
        .namespace(namespace)
        .build()
        .await
        .with_context(|| format!("connect to {nodes}"))
}

/// A rule named `name` with its configured TTL (see [`RouteTtls`]); a route whose caching is
/// configured off sends every read to the service (`detail=bypass-if`) and still invalidates.
fn configured(name: &str, ttls: &RouteTtls) -> Rule {
    let rule = Rule::new(name.to_owned());
    match ttls.get(name) {
        Some(ttl) => rule.ttl(ttl),
        None => rule.bypass_if(|_| true),
    }
}

/// How long a stale announcement may still be answered while it is refreshed in the
/// background (`stale-while-revalidate`).
pub const ANNOUNCEMENTS_SWR: Duration = Duration::from_secs(30);

/// The rule of `GET /api/announcements`: one entry for every caller, anonymous or signed
/// in (`Rule::shared`: requests with `Authorization` or `Cookie` share it too), 1 minute,
/// tagged `announcements` (an operator invalidates it with `POST /_cache/invalidate`). The
/// hottest route (every page shows it): once expired, it is answered stale for up to 30 s
/// while one request refreshes it, so no reader waits for the database.
pub fn announcements_rule(ttls: &RouteTtls) -> Rule {
    configured("announcements", ttls)
        .stale_while_revalidate(ANNOUNCEMENTS_SWR)
        .shared()
        .tag("announcements")
}

/// The rules of every cached or invalidating route under `/api`; with `audit`, that fraction
/// of each cached route's hits is audited against the database; with `refill`, a write
/// refills the entries of its user that it invalidated.
pub fn rules(audit: Option<f64>, refill: bool, ttls: &RouteTtls) -> Rules {
    let user = || UserScope::extension::<UserId>();
    // Every cached route is per user: a write refills what its user read, so their next
    // dashboard load is all hits.
    let cached = |name: &str, tag: &str| {
        let rule = configured(name, ttls).user_scope(user()).tag(tag);
        let rule = if refill {
            rule.refill_after_write()
        } else {
            rule
        };
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
        .route("/api/user/me", cached("user_me", "user:{user}"))
        .route(
            "/api/connectors/status",
            cached("connectors_status", "connectors:{user}"),
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
            // Read five times by every dashboard load: refreshed early (XFetch) by one
            // request shortly before it expires, so a hot entry never expires under load.
            cached("metrics", "metrics:{user}").early_refresh(),
        )
        .route("/api/chat/stats", cached("chat_stats", "stats:{user}"))
        .route("/api/chat/search", cached("chat_search", "search:{user}"))
        .route(
            "/api/chat/sessions",
            cached("chat_sessions", "sessions:{user}")
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
                    // The thread's context changed: its cached context and replies go.
                    "thread:{sid}",
                ],
            ),
        )
        .route(
            "/api/chat/sessions/{sid}/messages/{mid}",
            // DELETE: the counts and the search change, the session's message count too
            // (its list pages), and the thread's context.
            writes(
                "message_delete",
                &[
                    "stats:{user}",
                    "search:{user}",
                    "sessions:{user}",
                    "thread:{sid}",
                ],
            ),
        )
        .route(
            "/api/connectors/{provider}/sync",
            // Starting a sync shows it running; the job invalidates again when it is done.
            writes("connectors_write", &["connectors:{user}"]),
        )
        .route(
            "/api/assistants/{aid}/threads/{sid}/reply",
            reply_rule(ttls),
        )
}

/// The rule of `POST /api/assistants/{aid}/threads/{sid}/reply`: the `POST` is a read, keyed
/// by user, path and a hash of its body (`cache_posts_by_body`; the router puts the layer's
/// `body_key_layer()` in front of it), the seed's `message:{threadId}:{contentHash}`. 24 hours,
/// tagged `assistant:{aid}` and `thread:{sid}`. Never audited nor refilled: each would be
/// another (paid) model call.
pub fn reply_rule(ttls: &RouteTtls) -> Rule {
    configured("ai_reply", ttls)
        .user_scope(UserScope::extension::<UserId>())
        .tags(["assistant:{aid}", "thread:{sid}"])
        .cache_posts_by_body()
}

/// The parts of `/api/dashboard`, read through the typed API in one batch: each is stored
/// under its own key with the TTL and tag of the route that serves the same data, so the
/// same writes invalidate them, and counted under its own category (`dashboard.metrics`...).
/// A part whose route's caching is configured off has no options: it is read from the
/// database every time.
pub fn dashboard_parts(user: i64, ttls: &RouteTtls) -> Vec<(String, Option<EntryOptions>)> {
    let opts = |route: &str, category: &str, tag: String| {
        ttls.get(route).map(|ttl| {
            EntryOptions::new(ttl)
                .tag(tag)
                .category(category.to_owned())
        })
    };
    let mut parts = vec![
        (
            format!("dashboard:{user}:profile"),
            opts("user_me", "dashboard.profile", format!("user:{user}")),
        ),
        (
            format!("dashboard:{user}:connectors"),
            opts(
                "connectors_status",
                "dashboard.connectors",
                format!("connectors:{user}"),
            ),
        ),
    ];
    for category in crate::seed::CATEGORIES {
        parts.push((
            format!("dashboard:{user}:metrics:{category}"),
            opts("metrics", "dashboard.metrics", format!("metrics:{user}")),
        ));
    }
    parts.push((
        format!("dashboard:{user}:stats"),
        opts("chat_stats", "dashboard.stats", format!("stats:{user}")),
    ));
    parts.push((
        format!("dashboard:{user}:sessions:1"),
        opts(
            "chat_sessions",
            "dashboard.sessions",
            format!("sessions:{user}"),
        ),
    ));
    parts
}

/// How the parts of an answer were read: how many were loaded from the database, and how
/// many of those because their caching is configured off (never stored).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Loads {
    pub(crate) loaded: usize,
    pub(crate) uncached: usize,
}

impl std::ops::Add for Loads {
    type Output = Loads;

    fn add(self, other: Loads) -> Loads {
        Loads {
            loaded: self.loaded + other.loaded,
            uncached: self.uncached + other.uncached,
        }
    }
}

/// `value` as JSON with `Cache-Status` and `X-Cache` when there is a cache: a hit when none of
/// its `parts` was loaded, a bypass when all were loaded because their caching is off, else
/// a miss (`stored` when a loaded part was stored).
pub(crate) fn marked(
    value: impl IntoResponse,
    cached: bool,
    loads: Loads,
    parts: usize,
) -> Response {
    let mut response = value.into_response();
    if !cached {
        return response;
    }
    let Loads { loaded, uncached } = loads;
    let (status, x_cache) = if loaded == 0 {
        ("larder; hit".to_owned(), "HIT")
    } else if uncached == parts {
        ("larder; fwd=bypass; detail=bypass-if".to_owned(), "BYPASS")
    } else {
        let stored = if loaded > uncached { "; stored" } else { "" };
        let detail = if parts > 1 {
            format!("; detail=\"{loaded} of {parts} parts\"")
        } else {
            String::new()
        };
        (format!("larder; fwd=miss{stored}{detail}"), "MISS")
    };
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&status) {
        headers.insert(HeaderName::from_static("cache-status"), v);
    }
    headers.insert(
        HeaderName::from_static("x-cache"),
        HeaderValue::from_static(x_cache),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::RedisNodes;

    #[test]
    fn one_url_is_one_server_and_a_cluster_takes_a_list() {
        let single = RedisNodes::parse("redis://u:p,w@127.0.0.1:6379/", false).unwrap();
        assert_eq!(
            single,
            RedisNodes::Single("redis://u:p,w@127.0.0.1:6379/".into())
        );
        assert_eq!(
            RedisNodes::parse("redis://a:7000, redis://b:7001,", true).unwrap(),
            RedisNodes::Cluster(vec!["redis://a:7000".into(), "redis://b:7001".into()])
        );
        assert_eq!(
            RedisNodes::parse("redis://a:7000", true).unwrap(),
            RedisNodes::Cluster(vec!["redis://a:7000".into()])
        );
        let list = RedisNodes::parse("redis://a:7000,rediss://b:7001", false).unwrap_err();
        assert!(list.to_string().contains("--redis-cluster"), "{list}");
        assert!(RedisNodes::parse(" , ", true).is_err());
    }

    #[test]
    fn the_command_line_names_a_cluster_with_a_flag() {
        use clap::Parser;
        let config = crate::Config::try_parse_from([
            "dashboard",
            "--redis-cluster",
            "--redis-url",
            "redis://a:7000,redis://b:7001",
        ])
        .unwrap();
        assert!(config.redis_cluster);
        assert_eq!(
            config.redis_nodes().unwrap(),
            RedisNodes::Cluster(vec!["redis://a:7000".into(), "redis://b:7001".into()])
        );
        assert!(!crate::Config::defaults().redis_cluster);
    }
}
