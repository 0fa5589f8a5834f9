//! `dashboard`: serves the dashboard example. The first line on stdout is
//! `listening on http://ADDR`, with the real address (useful with `--addr 127.0.0.1:0`).

use std::io::Write as _;

use anyhow::Context;
use clap::Parser;
use example_dashboard::{Config, app, connect, warmup};
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
    let router = app(dashboard.clone());
    if let Some(list) = &config.warmup {
        // Checked by `connect`. The keys leave the host out: any `Host` fills what clients read.
        let users = warmup::parse_users(list).map_err(anyhow::Error::msg)?;
        let host = axum::http::HeaderValue::from_str(&addr.to_string())?;
        let service = router.clone();
        tokio::spawn(async move {
            match warmup::run(&dashboard, service, &users, &[], Some(&host)).await {
                Ok(report) => tracing::info!(%report, "start-up warm-up done"),
                Err(e) => tracing::warn!(error = %e, "start-up warm-up failed"),
            }
        });
    }
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
