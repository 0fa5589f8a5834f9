//! The `outage` scenario: the `dashboard` workload (the same transactions) while the runner
//! stops the Redis behind the cache a third of the way into the run and starts it again at
//! two thirds. The cache must never turn its own failure into a failed response: requests
//! bypass it while Redis is away (counted from `Cache-Status: ...; fwd=bypass`), and any
//! failed response is an error of the run. The run's reads are also counted per second
//! (hit, bypass, other miss) around the two events, to show when the cache came back.

use std::time::{Duration, Instant};

use larder_testkit::RedisServer;

use crate::timeline::Mark;

/// The label of the event "the redis-server was killed".
pub(crate) const STOPPED: &str = "redis stopped";
/// The label of the event "the redis-server answers `PING` again".
pub(crate) const RUNNING: &str = "redis running again";

/// Stops `redis` a third of `run_time` after `epoch` (when the run's first load is due) and
/// starts it again two thirds after, on a task; its result is the server back and the two
/// events, timed on the same clock as the run's requests.
pub(crate) fn inject(
    mut redis: RedisServer,
    epoch: Instant,
    run_time: Duration,
) -> tokio::task::JoinHandle<anyhow::Result<(RedisServer, Vec<Mark>)>> {
    tokio::spawn(async move {
        let mut marks = Vec::new();
        tokio::time::sleep_until((epoch + run_time / 3).into()).await;
        let (server, began, at) = tokio::task::spawn_blocking(move || {
            let began = Instant::now();
            redis.stop();
            (redis, began, Instant::now())
        })
        .await?;
        redis = server;
        marks.push(Mark {
            label: STOPPED,
            began,
            at,
        });
        tokio::time::sleep_until((epoch + run_time * 2 / 3).into()).await;
        let (server, began, at) = tokio::task::spawn_blocking(move || {
            let began = Instant::now();
            // Returns once the new server answers PING.
            redis.restart();
            (redis, began, Instant::now())
        })
        .await?;
        redis = server;
        marks.push(Mark {
            label: RUNNING,
            began,
            at,
        });
        Ok((redis, marks))
    })
}
