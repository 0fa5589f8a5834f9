//! `dashboard`: serves the dashboard example. The first line on stdout is
//! `listening on http://ADDR`, with the real address (useful with `--addr 127.0.0.1:0`).

use std::io::Write as _;

use anyhow::Context;
use clap::Parser;
use example_dashboard::{Config, app, connect};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = Config::parse();
    let dashboard = connect(&config).await?;
    let listener = tokio::net::TcpListener::bind(&config.addr)
        .await
        .with_context(|| format!("listen on {}", config.addr))?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{addr}")?;
        out.flush()?;
    }
    tracing::info!(
        store = ?config.store,
        redis_cluster = config.redis_cluster,
        database = ?dashboard.db.backend(),
        db_latency_ms = config.db_latency_ms,
        db_pool = config.db_pool,
        admin = dashboard.admin_token.is_some(),
        "dashboard ready"
    );
    axum::serve(listener, app(dashboard))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
