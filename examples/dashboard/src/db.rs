//! The database: SQLite (embedded, the default) or PostgreSQL behind one bounded pool, with
//! a fixed latency added to every round trip to stand for a remote database.

use std::{
    ops::{Deref, DerefMut},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use anyhow::{Context, bail};
use serde::Serialize;
use sqlx::{
    Any, AnyConnection, AnyPool, Executor,
    any::{AnyPoolOptions, install_default_drivers},
    pool::PoolConnection,
};

/// Which database engine a [`Db`] talks to (their SQL differs in a few places).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Embedded SQLite: a file, or `sqlite::memory:`.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// What `/_origin/stats` reports: how hard the database was worked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OriginStats {
    /// Database round trips served (each one paid the configured latency).
    pub queries: u64,
    /// The most pool connections held at once.
    pub max_connections_in_use: u64,
    /// Pool connections held now.
    pub connections_in_use: u64,
    /// The pool's bound (`--db-pool`).
    pub pool_size: u32,
}

/// The pool, the simulated latency and the counters behind `/_origin/stats`. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    pool: AnyPool,
    backend: Backend,
    latency: Duration,
    pool_size: u32,
    queries: AtomicU64,
    in_use: AtomicU64,
    max_in_use: AtomicU64,
    // The default database lives in a temporary directory that goes away with the process.
    _dir: Option<tempfile::TempDir>,
}

impl Db {
    /// Connects to `url` (`sqlite://PATH`, `sqlite::memory:`, `postgres://...`), or, with
    /// `None`, to a new SQLite file in a temporary directory. The pool holds at most
    /// `pool_size` connections; every [`lease`](Self::lease) waits `latency`.
    pub async fn connect(
        url: Option<&str>,
        pool_size: u32,
        latency: Duration,
    ) -> anyhow::Result<Db> {
        install_default_drivers();
        anyhow::ensure!(pool_size > 0, "--db-pool must be at least 1");
        let (url, backend, dir) = match url {
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("larder-dashboard-")
                    .tempdir()
                    .context("create a temporary directory for the SQLite database")?;
                let path = dir.path().join("dashboard.db");
                let url = format!("sqlite://{}?mode=rwc", path.display());
                (url, Backend::Sqlite, Some(dir))
            }
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                (url.to_owned(), Backend::Postgres, None)
            }
            Some("sqlite::memory:" | "sqlite://:memory:") => {
                // The Any driver parses the URL again for every connection, and `:memory:`
                // would give each its own database: name one shared in-memory database.
                static NEXT: AtomicU64 = AtomicU64::new(0);
                let n = NEXT.fetch_add(1, Relaxed);
                let url = format!(
                    "sqlite:file:larder-dashboard-{}-{n}?mode=memory&cache=shared",
                    std::process::id()
                );
                (url, Backend::Sqlite, None)
            }
            // A file that does not exist yet is created (SQLite's `mode=rwc`), as the help
            // says, unless the URL names a mode of its own.
            Some(url) if url.starts_with("sqlite:") && !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                (format!("{url}{sep}mode=rwc"), Backend::Sqlite, None)
            }
            Some(url) if url.starts_with("sqlite:") => (url.to_owned(), Backend::Sqlite, None),
            Some(other) => bail!(
                "unsupported database URL {other:?}: expected sqlite://PATH, sqlite::memory: or postgres://..."
            ),
        };
        let mut options = AnyPoolOptions::new()
            .max_connections(pool_size)
            .acquire_timeout(Duration::from_secs(60));
        if backend == Backend::Sqlite {
            // An in-memory database lives as long as one connection to it: keep them.
            options = options
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        Ok(())
                    })
                });
        }
        let pool = options
            .connect(&url)
            .await
            .with_context(|| format!("connect to the database at {}", redact(&url)))?;
        Ok(Db {
            inner: Arc::new(Inner {
                pool,
                backend,
                latency,
                pool_size,
                queries: AtomicU64::new(0),
                in_use: AtomicU64::new(0),
                max_in_use: AtomicU64::new(0),
                _dir: dir,
            }),
        })
    }

    /// The engine behind the pool.
    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// Takes a pool connection for one round trip: waits for a free connection, then the
    /// configured latency, and counts one query. The connection goes back when the lease drops.
    pub async fn lease(&self) -> Result<Lease, sqlx::Error> {
        let conn = self.inner.pool.acquire().await?;
        let lease = Lease {
            conn,
            inner: Arc::clone(&self.inner),
        };
        let held = self.inner.in_use.fetch_add(1, Relaxed) + 1;
        self.inner.max_in_use.fetch_max(held, Relaxed);
        self.inner.queries.fetch_add(1, Relaxed);
        tokio::time::sleep(self.inner.latency).await;
        Ok(lease)
    }

    /// A connection without the simulated latency or the counters, for schema and seed data.
    pub(crate) async fn raw(&self) -> Result<PoolConnection<Any>, sqlx::Error> {
        self.inner.pool.acquire().await
    }

    /// The counters behind `/_origin/stats`.
    pub fn stats(&self) -> OriginStats {
        OriginStats {
            queries: self.inner.queries.load(Relaxed),
            max_connections_in_use: self.inner.max_in_use.load(Relaxed),
            connections_in_use: self.inner.in_use.load(Relaxed),
            pool_size: self.inner.pool_size,
        }
    }

    /// Sets the query count to zero and the most-connections mark to what is held now, so a
    /// load test can leave its warm-up out.
    pub fn reset_stats(&self) {
        self.inner.queries.store(0, Relaxed);
        self.inner
            .max_in_use
            .store(self.inner.in_use.load(Relaxed), Relaxed);
    }
}

/// A pool connection held for one round trip; see [`Db::lease`].
pub struct Lease {
    conn: PoolConnection<Any>,
    inner: Arc<Inner>,
}

impl Deref for Lease {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        &self.conn
    }
}

impl DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.conn
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.inner.in_use.fetch_sub(1, Relaxed);
    }
}

/// `url` with its password replaced, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}://{user}:***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_printed() {
        assert_eq!(
            redact("postgres://app:hunter2@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redact("sqlite::memory:"), "sqlite::memory:");
    }

    #[tokio::test]
    async fn a_sqlite_file_that_does_not_exist_yet_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        let url = format!("sqlite://{}", path.display());
        let db = Db::connect(Some(&url), 1, Duration::ZERO)
            .await
            .expect("a new file is created");
        let mut a = db.raw().await.unwrap();
        a.execute("CREATE TABLE t (x BIGINT)").await.unwrap();
        assert!(path.exists());
    }

    #[tokio::test]
    async fn one_in_memory_database_is_shared_by_the_whole_pool() {
        let db = Db::connect(Some("sqlite::memory:"), 3, Duration::ZERO)
            .await
            .unwrap();
        let mut a = db.lease().await.unwrap();
        let mut b = db.lease().await.unwrap();
        a.execute("CREATE TABLE t (x BIGINT)").await.unwrap();
        a.execute("INSERT INTO t VALUES (7)").await.unwrap();
        let row = sqlx::query("SELECT x FROM t")
            .fetch_one(&mut *b)
            .await
            .unwrap();
        assert_eq!(sqlx::Row::get::<i64, _>(&row, 0), 7);
        // A second database is another database.
        let other = Db::connect(Some("sqlite::memory:"), 1, Duration::ZERO)
            .await
            .unwrap();
        let mut c = other.lease().await.unwrap();
        assert!(c.execute("SELECT x FROM t").await.is_err());
    }

    #[tokio::test]
    async fn a_lease_counts_one_query_and_the_most_connections_held() {
        let db = Db::connect(Some("sqlite::memory:"), 4, Duration::ZERO)
            .await
            .unwrap();
        let a = db.lease().await.unwrap();
        let b = db.lease().await.unwrap();
        drop(a);
        drop(b);
        let _c = db.lease().await.unwrap();
        let stats = db.stats();
        assert_eq!(stats.queries, 3);
        assert_eq!(stats.max_connections_in_use, 2);
        assert_eq!(stats.connections_in_use, 1);
        db.reset_stats();
        assert_eq!(db.stats().queries, 0);
        assert_eq!(db.stats().max_connections_in_use, 1);
    }
}
