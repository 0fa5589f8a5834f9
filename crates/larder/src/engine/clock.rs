//! The cache's clock: wall time in milliseconds that follows tokio's clock.
//!
//! Entries record when they were stored as Unix milliseconds (they may travel to Redis and be
//! read by another instance), but freshness must be testable with `tokio::time::pause()`. The
//! clock reads the wall time once, then advances with `tokio::time::Instant`, so a paused test
//! clock moves every TTL exactly and a real one tracks the wall clock.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    wall_ms: u64,
    base: Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        let wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Clock {
            wall_ms,
            base: Instant::now(),
        }
    }

    /// Milliseconds since the Unix epoch.
    pub(crate) fn now_ms(&self) -> u64 {
        self.wall_ms + self.base.elapsed().as_millis() as u64
    }

    /// The same instant as a `SystemTime` (for `Expires` and `Date`).
    pub(crate) fn now(&self) -> SystemTime {
        UNIX_EPOCH + std::time::Duration::from_millis(self.now_ms())
    }
}
