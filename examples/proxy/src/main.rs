//! `larder-proxy`: a caching reverse proxy. The first line on stdout is
//! `listening on http://ADDR`, with the real address (useful with `--listen 127.0.0.1:0`).

use std::io::Write as _;

use anyhow::Context;
use clap::Parser;
use example_proxy::{Config, app, serve};
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
    let (router, _cache) = app(&config).await?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{addr}")?;
        out.flush()?;
    }
    tracing::info!(origin = %config.origin, store = ?config.store, rules = ?config.rules, "proxy ready");
    tokio::select! {
        served = serve(listener, router) => served,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
