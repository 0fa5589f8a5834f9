//! What a run is pointed at: the dashboard example started in this process on a free port,
//! or a deployed one (`--host`). Both are read the same way afterwards, over HTTP:
//! `/_origin/stats` for the database's work and `/_cache/stats` for the cache's.

use std::time::Duration;

use anyhow::Context;
use example_dashboard::{Config, StoreKind, app, connect};
use larder_testkit::RedisServer;
use serde::{Deserialize, Serialize};

/// A dashboard to load.
pub(crate) struct Target {
    /// Its base URL.
    pub(crate) url: String,
    /// What it is, for the report (`in-process, no cache`, `https://...`).
    pub(crate) description: String,
    /// The token of its admin routes, when known.
    admin_token: Option<String>,
    /// The in-process server, stopped when this drops.
    server: Option<tokio::task::JoinHandle<()>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    /// The redis-server the in-process dashboard uses, when this runner started it.
    pub(crate) redis: Option<RedisServer>,
    /// A client for the stats routes.
    client: reqwest::Client,
}

/// What `/_origin/stats` says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OriginStats {
    /// Database round trips served.
    pub(crate) queries: u64,
    /// The most pool connections held at once.
    pub(crate) max_connections_in_use: u64,
    /// The pool's bound.
    #[serde(default)]
    pub(crate) pool_size: u64,
}

/// How the in-process dashboard is set up.
#[derive(Debug, Clone)]
pub(crate) struct LocalSetup {
    /// The store (`None`: the uncached baseline).
    pub(crate) store: StoreKind,
    /// Latency per database round trip.
    pub(crate) db_latency_ms: u64,
    /// Pool size.
    pub(crate) db_pool: u32,
    /// Redis to use instead of starting one.
    pub(crate) redis_url: Option<String>,
    /// `redis_url` is a Redis Cluster: its nodes, comma-separated (the dashboard's
    /// `--redis-cluster`).
    pub(crate) redis_cluster: bool,
    /// Key namespace (a fresh one per run, so a shared Redis holds no old entries).
    pub(crate) namespace: String,
    /// The database (`sqlite://PATH?mode=rwc`, for instances sharing one); `None`: a new
    /// SQLite file in a temporary directory of the dashboard's own.
    pub(crate) database_url: Option<String>,
}

impl Target {
    /// Starts the dashboard in this process on a free loopback port: a new SQLite database
    /// in a temporary directory (created and seeded), the store `setup` names (starting a
    /// redis-server for `redis` and `tiered` unless a URL is given).
    pub(crate) async fn start(setup: &LocalSetup) -> anyhow::Result<Target> {
        let mut redis = None;
        let redis_url = match (setup.store, &setup.redis_url) {
            (StoreKind::Redis | StoreKind::Tiered, None) => {
                let server = tokio::task::spawn_blocking(RedisServer::start)
                    .await
                    .context("start a redis-server (is redis-server installed?)")?;
                let url = server.url();
                redis = Some(server);
                url
            }
            (_, Some(url)) => url.clone(),
            (_, None) => Config::defaults().redis_url,
        };
        let admin_token = format!("loadtests-{:016x}", fastrand::u64(..));
        let mut config = Config::defaults();
        config.addr = "127.0.0.1:0".into();
        config.store = setup.store;
        config.redis_url = redis_url;
        config.redis_cluster = setup.redis_cluster && setup.redis_url.is_some();
        config.db_latency_ms = setup.db_latency_ms;
        config.db_pool = setup.db_pool;
        config.admin_token = Some(admin_token.clone());
        config.namespace = setup.namespace.clone();
        config.database_url = setup.database_url.clone();
        let dashboard = connect(&config)
            .await
            .context("start the dashboard example")?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let served = axum::serve(listener, app(dashboard))
                .with_graceful_shutdown(async {
                    let _ = stop.await;
                })
                .await;
            if let Err(e) = served {
                eprintln!("the in-process dashboard stopped: {e}");
            }
        });
        let store = match (setup.store, config.redis_cluster) {
            (StoreKind::None, _) => "no cache (--store none)",
            (StoreKind::Memory, _) => "Larder, in-process store",
            (StoreKind::Redis, false) => "Larder, Redis store",
            (StoreKind::Redis, true) => "Larder, Redis store on a Redis Cluster",
            (StoreKind::Tiered, false) => "Larder, tiered store (in-process L1 + Redis)",
            (StoreKind::Tiered, true) => "Larder, tiered store (in-process L1 + Redis Cluster)",
        };
        Ok(Target {
            url: format!("http://{addr}"),
            description: format!(
                "in-process dashboard, {store}; SQLite, {} ms per query, pool of {}",
                setup.db_latency_ms, setup.db_pool
            ),
            admin_token: Some(admin_token),
            server: Some(server),
            shutdown: Some(shutdown),
            redis,
            client: client()?,
        })
    }

    /// A deployed dashboard at `url`.
    pub(crate) fn remote(url: &str, admin_token: Option<String>) -> anyhow::Result<Target> {
        Ok(Target {
            url: url.trim_end_matches('/').to_owned(),
            description: format!("deployed dashboard at {url}"),
            admin_token,
            server: None,
            shutdown: None,
            redis: None,
            client: client()?,
        })
    }

    /// `GET /_origin/stats`, or `None` when the target has no such route.
    pub(crate) async fn origin_stats(&self) -> Option<OriginStats> {
        self.get_json("/_origin/stats").await
    }

    /// `GET path` decoded as JSON; `None` when it fails, is not a success, or does not decode.
    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Option<T> {
        let response = self
            .client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    }

    /// `POST /_origin/stats/reset` with the admin token; false when it could not be done.
    pub(crate) async fn reset_origin_stats(&self) -> bool {
        let Some(token) = &self.admin_token else {
            return false;
        };
        self.client
            .post(format!("{}/_origin/stats/reset", self.url))
            .bearer_auth(token)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// `GET /_cache/stats`, as it is.
    pub(crate) async fn cache_stats(&self) -> Option<serde_json::Value> {
        self.get_json("/_cache/stats").await
    }

    /// Stops the in-process server (a deployed one is left alone).
    pub(crate) async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(mut server) = self.server.take() {
            // Idle keep-alive connections may hold a graceful shutdown: then cut it short.
            if tokio::time::timeout(Duration::from_secs(2), &mut server)
                .await
                .is_err()
            {
                server.abort();
            }
        }
    }
}

fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?)
}
