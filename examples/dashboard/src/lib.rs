//! The dashboard example: the seeds' business dashboard API (profile and credits, platform
//! connectors, business metrics, chat sessions) over a real database, cached by Larder.
//!
//! [`connect`] opens the database (creating and seeding it), the API keys and the cache;
//! [`app`] builds the router from that, so tests drive it with `oneshot` and `main` serves it.
//! The HTTP contract is in the README next to this crate.

pub mod api;
pub mod assistant;
pub mod auth;
pub mod cache;
pub mod db;
pub mod error;
pub mod model;
pub mod ops;
pub mod queries;
pub mod seed;
pub mod sync;
pub mod ttls;
pub mod warmup;

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::State,
    http::HeaderMap,
    middleware,
    routing::{delete, get, post, put},
};
use larder::CacheHandle;

pub use crate::{
    cache::{RedisNodes, StoreKind},
    db::Db,
};

/// Everything the dashboard can be told on its command line (each flag also reads the
/// environment variable named in `--help`).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "dashboard",
    version,
    about = "The Larder dashboard example: an axum API over SQLite or PostgreSQL, cached by Larder."
)]
pub struct Config {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, env = "DASHBOARD_ADDR", default_value = "127.0.0.1:3000")]
    pub addr: String,
    /// Where cached responses live: `none` runs the same routes uncached (the baseline).
    #[arg(long, env = "LARDER_STORE", value_enum, default_value_t = StoreKind::Memory)]
    pub store: StoreKind,
    /// Redis for `--store redis` and `--store tiered` (`redis://`, `rediss://`, with user and
    /// password). With `--redis-cluster`: the cluster's seed nodes, comma-separated
    /// (`redis://10.0.0.1:7000,redis://10.0.0.2:7001`; one reachable node is enough).
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379/")]
    pub redis_url: String,
    /// `--redis-url` is a Redis Cluster: connect with a cluster client, which learns the slot
    /// map from any of the nodes given and follows it (entries, tags and the invalidation
    /// records are spread over the masters; the tiered store's backplane subscribes through
    /// the first node).
    #[arg(long, env = "REDIS_CLUSTER", value_parser = clap::builder::BoolishValueParser::new())]
    pub redis_cluster: bool,
    /// The database: `postgres://...`, `sqlite://PATH` or `sqlite::memory:`; by default a
    /// new SQLite file in a temporary directory.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Latency added to every database round trip, in milliseconds (stands for a remote database).
    #[arg(long, env = "DB_LATENCY_MS", default_value_t = 200)]
    pub db_latency_ms: u64,
    /// Most database connections held at once.
    #[arg(long, env = "DB_POOL", default_value_t = 10)]
    pub db_pool: u32,
    /// How long the model stand-in takes to stream a reply (`POST
    /// /api/assistants/{aid}/threads/{sid}/reply`), in milliseconds, in 8 chunks.
    #[arg(long, env = "MODEL_LATENCY_MS", default_value_t = 400)]
    pub model_latency_ms: u64,
    /// Token for the admin routes (`POST /_cache/invalidate`, `POST /_cache/warmup`,
    /// `POST /_origin/stats/reset`); they are off when it is unset.
    #[arg(long, env = "LARDER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Key namespace in the store (instances sharing a Redis and a namespace share entries).
    #[arg(long, env = "LARDER_NAMESPACE", default_value = "dashboard")]
    pub namespace: String,
    /// Memory for the in-process store (or the tiered store's L1), in MiB.
    #[arg(long, env = "LARDER_MEMORY_MB", default_value_t = 256)]
    pub cache_memory_mb: u64,
    /// Audit this fraction of the hits of every cached route (0 to 1): the database is asked
    /// again in the background and a different answer is counted in `/_cache/stats`
    /// (`audit_mismatches`) and logged: a write that does not invalidate what it changed.
    #[arg(long, env = "LARDER_AUDIT_RATE")]
    pub audit_rate: Option<f64>,
    /// Refill what a user read after that user's write invalidates it, so their next load is
    /// all hits (`Rule::refill_after_write` on every cached route); `--refill false` to leave
    /// the reads after a write to miss.
    #[arg(long, env = "LARDER_REFILL", default_value_t = true, action = clap::ArgAction::Set)]
    pub refill: bool,
    /// A file that keeps invalidations Redis could not take (an outage) across a restart of
    /// this process; `--store redis` and `tiered` only. Each instance needs its own.
    #[arg(long, env = "LARDER_JOURNAL")]
    pub journal: Option<std::path::PathBuf>,
    /// Across instances, one fills a missing entry while the others wait for it, at most
    /// this many milliseconds (`CacheHandleBuilder::distributed_lock`: a lock in Redis);
    /// `--store redis` and `tiered` only. Off by default: each instance fills its own misses.
    #[arg(long, env = "LARDER_FILL_LOCK_MS")]
    pub fill_lock_ms: Option<u64>,
    /// The tiered store's L1 keeps a copy at most this many seconds, however long the
    /// entry's TTL (`TieredStoreBuilder::l1_max_ttl`; seed 000 used 5 minutes).
    #[arg(long, env = "LARDER_L1_TTL_SECS", default_value_t = 300)]
    pub l1_ttl_secs: u64,
    /// Change a cached route's TTL or switch its caching off, by its rule's name:
    /// `metrics=10m`, `chat_search=off` (comma-separated, or the flag repeated). The names and
    /// defaults: user_me 5m, connectors_status 5m, metrics 15m, chat_stats 10m, chat_search
    /// 5m, chat_sessions 5m, announcements 1m, assistant 30m, schema 1h, thread_context 2h,
    /// ai_reply 1d.
    #[arg(long, env = "LARDER_ROUTE_TTL", value_delimiter = ',')]
    pub route_ttl: Vec<String>,
    /// Users whose pages to warm at start-up, through the routes (`1-50,77`; seed 003's
    /// `CACHE_WARMUP`): after the listener is up, in the background.
    #[arg(long, env = "CACHE_WARMUP")]
    pub warmup: Option<String>,
    /// How long a connector's data sync runs (`POST /api/connectors/{provider}/sync`), in
    /// milliseconds.
    #[arg(long, env = "SYNC_MS", default_value_t = 2000)]
    pub sync_ms: u64,
}

impl Config {
    /// The defaults, as if no flag were given and the environment were empty.
    pub fn defaults() -> Config {
        Config {
            addr: "127.0.0.1:3000".into(),
            store: StoreKind::Memory,
            redis_url: "redis://127.0.0.1:6379/".into(),
            redis_cluster: false,
            database_url: None,
            db_latency_ms: 200,
            db_pool: 10,
            model_latency_ms: 400,
            admin_token: None,
            namespace: "dashboard".into(),
            cache_memory_mb: 256,
            audit_rate: None,
            refill: true,
            journal: None,
            fill_lock_ms: None,
            l1_ttl_secs: 300,
            route_ttl: Vec::new(),
            warmup: None,
            sync_ms: 2000,
        }
    }

    /// The Redis of `--store redis|tiered`: `--redis-url`, read as a cluster's seed nodes
    /// with `--redis-cluster`.
    pub fn redis_nodes(&self) -> anyhow::Result<cache::RedisNodes> {
        cache::RedisNodes::parse(&self.redis_url, self.redis_cluster)
    }
}

/// The running dashboard's state: the database, the cache (none for `--store none`), the
/// API keys and the admin token. Cheap to clone.
#[derive(Clone)]
pub struct Dashboard {
    /// The database pool and its counters.
    pub db: Db,
    /// The cache, unless the store is `none`.
    pub cache: Option<CacheHandle>,
    /// Which store the cache uses.
    pub store: StoreKind,
    /// `demo-key-<N>` and the like, and their users.
    pub keys: auth::ApiKeys,
    /// The admin token, if the admin routes are on.
    pub admin_token: Option<Arc<str>>,
    /// The fraction of hits audited, if any (`--audit-rate`).
    pub audit_rate: Option<f64>,
    /// Whether writes refill what they invalidated (`--refill`).
    pub refill: bool,
    /// The model stand-in behind the assistant's replies, and its call count.
    pub model: Arc<model::Model>,
    /// Every cached route's TTL, or off (`--route-ttl`).
    pub ttls: Arc<ttls::RouteTtls>,
    /// The connectors' data syncs running in the background.
    pub syncs: sync::Syncs,
}

/// Opens the database (creating the schema and seed data if it is empty), reads the API
/// keys, and builds the cache `config` asks for.
pub async fn connect(config: &Config) -> anyhow::Result<Dashboard> {
    // Before the cache is built: its counters and their descriptions go to this recorder,
    // drained every few seconds (its histograms keep samples until then).
    ops::prometheus_recorder();
    ops::spawn_upkeep();
    // Wrong settings are reported before the database is opened and seeded.
    let ttls = Arc::new(ttls::RouteTtls::parse(&config.route_ttl)?);
    if let Some(list) = &config.warmup {
        warmup::parse_users(list).map_err(|e| anyhow::anyhow!("--warmup: {e}"))?;
    }
    // A wrong `--redis-url` is reported before the database is opened and seeded (and only
    // when a store uses it).
    let redis = match config.store {
        StoreKind::Redis | StoreKind::Tiered => config.redis_nodes()?,
        StoreKind::None | StoreKind::Memory => RedisNodes::Single(config.redis_url.clone()),
    };
    let db = Db::connect(
        config.database_url.as_deref(),
        config.db_pool,
        Duration::from_millis(config.db_latency_ms),
    )
    .await?;
    seed::prepare(&db).await?;
    let keys = Arc::new(queries::api_keys(&db).await?);
    let cache = cache::handle(config.store, &redis, &cache::Tuning::of(config)).await?;
    Ok(Dashboard {
        db,
        cache,
        store: config.store,
        keys,
        admin_token: config
            .admin_token
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(Arc::from),
        audit_rate: config.audit_rate,
        refill: config.refill,
        model: Arc::new(model::Model::new(Duration::from_millis(
            config.model_latency_ms,
        ))),
        ttls,
        syncs: sync::Syncs::new(Duration::from_millis(config.sync_ms)),
    })
}

/// The router: `/api` behind bearer keys (and the cache layer, unless the store is `none`),
/// and the operations routes.
pub fn app(dashboard: Dashboard) -> Router {
    let mut api = Router::new()
        .route("/api/user/me", get(api::me))
        .route("/api/connectors/status", get(api::connector_status))
        .route("/api/connectors/reset", post(api::reset_connectors))
        .route(
            "/api/connectors/{provider}",
            post(api::connect).delete(api::disconnect),
        )
        .route("/api/connectors/{provider}/sync", post(sync::start))
        .route("/api/metrics/{category}", get(api::metrics))
        .route("/api/chat/stats", get(api::chat_stats))
        .route("/api/chat/search", get(api::search))
        .route(
            "/api/chat/sessions",
            get(api::sessions).post(api::create_session),
        )
        .route(
            "/api/chat/sessions/{sid}",
            put(api::rename_session).delete(api::delete_session),
        )
        .route("/api/chat/sessions/{sid}/messages", post(api::post_message))
        .route(
            "/api/chat/sessions/{sid}/messages/{mid}",
            delete(api::delete_message),
        )
        .route(
            "/api/assistants/{aid}/threads/{sid}/reply",
            post(assistant::reply),
        );
    if let Some(cache) = &dashboard.cache {
        let rules = cache::rules(dashboard.audit_rate, dashboard.refill, &dashboard.ttls);
        let layer = cache.layer_with(rules);
        // The body key layer goes in front of the cache: it reads and hashes the bodies of
        // the POSTs cached by body (the assistant's replies), and no others.
        let body_key = layer.body_key_layer();
        api = api.layer(layer).layer(body_key);
    }
    // The dashboard and the assistant's data read through the typed API themselves; the
    // bearer check runs before all.
    let api = api
        .route("/api/dashboard", get(api::dashboard))
        .route("/api/assistants/{aid}", get(assistant::assistant))
        .route("/api/assistants/{aid}/schema", get(assistant::schema))
        .route(
            "/api/assistants/{aid}/threads/{sid}",
            get(assistant::thread),
        )
        .layer(middleware::from_fn_with_state(
            Arc::clone(&dashboard.keys),
            auth::require_user,
        ));
    // Public: no key needed, one cached entry for every caller.
    let mut public = Router::new().route("/api/announcements", get(api::announcements));
    if let Some(cache) = &dashboard.cache {
        public = public.layer(cache.layer(cache::announcements_rule(&dashboard.ttls)));
    }
    let clients = api.merge(public);
    // A warm-up sends its requests through what clients reach: authentication, the cache
    // layer and the handlers (never through the operations routes).
    let warm_through: Router = clients
        .clone()
        .layer(middleware::map_response(error::json_errors))
        .with_state(dashboard.clone());
    let warm = move |State(app): State<Dashboard>,
                     headers: HeaderMap,
                     body: Option<Json<warmup::WarmupBody>>| {
        warmup::handle(app, warm_through.clone(), headers, body)
    };
    Router::new()
        .merge(clients)
        .route("/_cache/health", get(ops::health))
        .route("/_cache/stats", get(ops::stats))
        .route("/_cache/stats/reset", post(ops::reset_stats))
        .route("/_cache/invalidate", post(ops::invalidate))
        .route("/_cache/warmup", post(warm))
        .route("/metrics", get(ops::prometheus))
        .route("/_origin/stats", get(ops::origin_stats))
        .route("/_origin/stats/reset", post(ops::reset_origin_stats))
        .fallback(|| async { error::ApiError::NotFound("route") })
        .layer(middleware::map_response(error::json_errors))
        .with_state(dashboard)
}
