//! What the `consistency` and `fleet` scenarios share: a writer renames its session with a
//! numbered title and reads it back (stale reads and their age), observers poll for the new
//! title, and the end of the run is summed up, printed and written out.

use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::Context;

use crate::record::Latency;

/// Time between two polls of a writer (after a stale read) or an observer.
pub(crate) const POLL_EVERY: Duration = Duration::from_millis(2);
/// How long a writer or an observer waits for a write to show.
pub(crate) const CONVERGE_WITHIN: Duration = Duration::from_secs(2);
/// The pages searched for the session (a rename moves it to the top of page 1).
pub(crate) const PAGES: u32 = 3;

/// The title of write `k` of `user` in the run marked `nonce` of `scenario`.
pub(crate) fn title(scenario: &str, nonce: &str, user: usize, k: u64) -> String {
    format!("{scenario} {nonce} user {user} write {k}")
}

/// Which write of `user` `title` is (0 for any other title, run or scenario).
pub(crate) fn write_number(scenario: &str, nonce: &str, user: usize, title: &str) -> u64 {
    title
        .strip_prefix(&format!("{scenario} {nonce} user {user} write "))
        .and_then(|k| k.parse().ok())
        .unwrap_or(0)
}

/// The title of session `sid` on a sessions page, if it is there.
pub(crate) fn title_on(page: &serde_json::Value, sid: i64) -> Option<String> {
    page.get("sessions")?
        .as_array()?
        .iter()
        .find(|s| s.get("id").and_then(serde_json::Value::as_i64) == Some(sid))
        .map(|s| {
            s.get("title")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned()
        })
}

/// Counts a stale read `age` after the write's response into `stale_ages`; returns whether
/// the writer gives up on seeing its write (counted in `never_seen`), else waits a poll.
pub(crate) async fn stale_read(
    age: Duration,
    stale_ages: &mut Vec<Duration>,
    never_seen: &mut usize,
) -> bool {
    stale_ages.push(age);
    if age >= CONVERGE_WITHIN {
        *never_seen += 1;
        return true;
    }
    tokio::time::sleep(POLL_EVERY).await;
    false
}

/// How many errors there were, and up to ten distinct messages with their counts, most
/// frequent first.
pub(crate) fn error_summary<'a>(all: impl IntoIterator<Item = &'a String>) -> (usize, Vec<String>) {
    let mut messages = BTreeMap::<&str, usize>::new();
    for e in all {
        *messages.entry(e.as_str()).or_default() += 1;
    }
    let errors = messages.values().sum();
    let mut messages: Vec<_> = messages.into_iter().collect();
    messages.sort_by_key(|m| std::cmp::Reverse(m.1));
    let examples = messages
        .into_iter()
        .take(10)
        .map(|(m, n)| format!("{n}x {m}"))
        .collect();
    (errors, examples)
}

/// Milliseconds with 2, 1 or 0 decimals.
pub(crate) fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// `n` of `of` as a percentage, `-` of none.
pub(crate) fn pct(n: usize, of: usize) -> String {
    if of == 0 {
        "-".to_owned()
    } else {
        format!("{:.1}%", n as f64 * 100.0 / of as f64)
    }
}

/// `p50 .. p99 .. max .. (n=..)`, `-` of none.
pub(crate) fn lat(l: &Latency) -> String {
    if l.count == 0 {
        "-".to_owned()
    } else {
        format!(
            "p50 {}  p99 {}  max {}  (n={})",
            ms(l.p50_ms),
            ms(l.p99_ms),
            ms(l.max_ms),
            l.count
        )
    }
}

/// A client for the run's requests.
pub(crate) fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?)
}

/// A new temporary directory (`prefix`...) and the URL of a SQLite file in it.
pub(crate) fn sqlite_database(prefix: &str) -> anyhow::Result<(tempfile::TempDir, String)> {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .context("create a temporary directory for the SQLite database")?;
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("dashboard.db").display()
    );
    Ok((dir, url))
}

/// Writes `summary` as pretty JSON to `dir/summary.json`.
pub(crate) fn write_summary(dir: &Path, summary: &serde_json::Value) -> anyhow::Result<()> {
    let path = dir.join("summary.json");
    std::fs::write(&path, serde_json::to_vec_pretty(summary)?)
        .with_context(|| format!("write {}", path.display()))
}

/// The verdict printed at the end of a run.
pub(crate) fn verdict(passed: bool, stale_reads: bool) -> &'static str {
    if passed {
        "PASS: no stale read, no failed request"
    } else if stale_reads {
        "FAIL: stale reads"
    } else {
        "FAIL: failed requests"
    }
}
