//! The `outage` scenario: the `dashboard` workload (the same transactions) while the runner
//! stops the Redis behind the cache a third of the way into the run and starts it again at
//! two thirds. The cache must never turn its own failure into a failed response: requests
//! bypass it while Redis is away (counted from `Cache-Status: ...; fwd=bypass`), and any
//! failed response is an error of the run.

use std::time::{Duration, Instant};

use larder_testkit::RedisServer;

/// Stops `redis` after a third of `run_time` and starts it again after two thirds, on a
/// task; its result is the server back and what happened when.
pub(crate) fn inject(
    mut redis: RedisServer,
    run_time: Duration,
) -> tokio::task::JoinHandle<anyhow::Result<(RedisServer, Vec<String>)>> {
    tokio::spawn(async move {
        let start = Instant::now();
        let mut events = Vec::new();
        tokio::time::sleep(run_time / 3).await;
        redis = tokio::task::spawn_blocking(move || {
            redis.stop();
            redis
        })
        .await?;
        events.push(format!(
            "redis stopped at {:.1}s",
            start.elapsed().as_secs_f64()
        ));
        tokio::time::sleep(run_time / 3).await;
        redis = tokio::task::spawn_blocking(move || {
            redis.restart();
            redis
        })
        .await?;
        events.push(format!(
            "redis running again at {:.1}s",
            start.elapsed().as_secs_f64()
        ));
        Ok((redis, events))
    })
}
