//! The `consistency` scenario: does the client that wrote read its write on another
//! instance, and how long do other clients wait to see it?
//!
//! Two dashboard instances, A and B, over one database and one store (in process: two
//! dashboards over the same SQLite file and the same Redis and key namespace, or one for the
//! memory store, whose entries are not shared; deployed: `--host` and `--host-b`). Each of
//! `--users` writers, one account each, picks the first session its page 1 lists and, until
//! `--run-time` is over:
//!
//! 1. renames it through A (`PUT /api/chat/sessions/{sid}`) with a title that carries the
//!    write's number, sending back the latest `larder-consistency` token a write of its own
//!    answered with (when the store sends one);
//! 2. reads it back through B, with that token, twice (`GET /api/chat/sessions?page=1`, and
//!    pages 2 and 3 if the session is not on page 1): a read sent after the write's response
//!    that shows an older title is a **stale read**, counted with its age (from the write's
//!    response to the read being sent); the writer then reads again every 2 ms until it
//!    sees its write (at most 2 s, else the write counts as never seen by its writer);
//! 3. after every 5th write, an observer (another client of the same account, without the
//!    token) polls B every 2 ms until the new title shows: the delay from the write's
//!    response to the first read that shows it is the **propagation delay**; writes it does
//!    not see within 2 s do not converge.
//!
//! The run fails (exit 1) on any stale read or failed request. Plain tokio tasks with one
//! reqwest client: goose's closed loop of named requests fits neither the observers nor the
//! per-user tokens.

use std::{
    fmt::Write as _,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use example_dashboard::StoreKind;
use larder_testkit::RedisServer;
use reqwest::header::AUTHORIZATION;
use serde::Serialize;
use serde_json::json;
use tokio::task::JoinHandle;

use crate::{
    cli::{Args, Store},
    endpoint::{LocalSetup, Target},
    record::{CacheOutcome, Latency},
    scenarios::readback::{
        self, CONVERGE_WITHIN, PAGES, POLL_EVERY, error_summary, lat, ms, pct, verdict,
    },
    workload::Workload,
};

/// The header a write answers with and the client sends back on its later requests.
pub(crate) const TOKEN: &str = "larder-consistency";
/// One write in this many is watched by an observer.
const OBSERVE_EVERY: u64 = 5;
/// Checked reads per write, one after the other: the first usually misses (the write
/// invalidated the page), the second usually hits (what the first stored).
const READS_PER_WRITE: usize = 2;

/// What the run is pointed at, and what to stop afterwards.
struct Instances {
    a: String,
    b: String,
    description: String,
    targets: Vec<Target>,
    redis: Option<RedisServer>,
    _dir: Option<tempfile::TempDir>,
}

impl Instances {
    /// Two in-process dashboards over one new SQLite file and one store (one dashboard for
    /// the memory store).
    async fn local(args: &Args) -> anyhow::Result<Instances> {
        let store = match args.store {
            Store::Memory => StoreKind::Memory,
            Store::Redis => StoreKind::Redis,
            Store::Tiered => StoreKind::Tiered,
        };
        let (dir, database_url) = readback::sqlite_database("loadtests-consistency-")?;
        let mut redis = None;
        let redis_url = match (store, &args.redis_url) {
            (StoreKind::Memory | StoreKind::None, _) => None,
            (_, Some(url)) => Some(url.clone()),
            (_, None) => {
                let server = tokio::task::spawn_blocking(RedisServer::start)
                    .await
                    .context("start a redis-server (is redis-server installed?)")?;
                let url = server.url();
                redis = Some(server);
                Some(url)
            }
        };
        let setup = LocalSetup {
            store,
            db_latency_ms: args.db_latency_ms,
            db_pool: args.db_pool,
            redis_url: redis_url.clone(),
            redis_cluster: false,
            namespace: format!("loadtests-{}-{}", std::process::id(), fastrand::u32(..)),
            database_url: Some(database_url),
        };
        // A creates and seeds the database; B finds it seeded.
        let a = Target::start(&setup).await?;
        let mut targets = vec![a];
        if store != StoreKind::Memory {
            targets.push(Target::start(&setup).await?);
        }
        let (a, b) = (
            targets[0].url.clone(),
            targets[targets.len() - 1].url.clone(),
        );
        let store_text = match store {
            StoreKind::Memory => {
                "memory store: one instance is both A and B (its entries are not shared)"
                    .to_owned()
            }
            StoreKind::Redis => "Redis store: two instances, one redis-server and key namespace".to_owned(),
            _ => "tiered store: two instances, each its own in-process L1, one redis-server and key namespace".to_owned(),
        };
        let description = format!(
            "in-process dashboards, {store_text}{}; one SQLite file, {} ms per query, a pool of {} per instance",
            match (&args.redis_url, store) {
                (Some(url), StoreKind::Redis | StoreKind::Tiered) =>
                    format!(" (--redis-url {url})"),
                _ => String::new(),
            },
            args.db_latency_ms,
            args.db_pool
        );
        Ok(Instances {
            a,
            b,
            description,
            targets,
            redis,
            _dir: Some(dir),
        })
    }

    /// Deployed instances: `--host` (A) and `--host-b` (B, else A again).
    fn remote(host: &str, host_b: Option<&str>) -> Instances {
        let a = host.trim_end_matches('/').to_owned();
        let b = host_b.map_or_else(|| a.clone(), |b| b.trim_end_matches('/').to_owned());
        let description = if a == b {
            format!("deployed dashboard at {a}, both A and B (no --host-b)")
        } else {
            "deployed dashboards (--host is A, --host-b is B)".to_owned()
        };
        Instances {
            a,
            b,
            description,
            targets: Vec::new(),
            redis: None,
            _dir: None,
        }
    }

    async fn stop(mut self) {
        for target in self.targets.drain(..) {
            target.stop().await;
        }
        if let Some(redis) = self.redis.take() {
            let _ = tokio::task::spawn_blocking(move || drop(redis)).await;
        }
    }
}

/// What every task shares.
struct Shared {
    client: reqwest::Client,
    a: String,
    b: String,
    cache_name: String,
    /// Marks this run's titles (a deployed database keeps the last run's).
    nonce: String,
    /// No write starts after this.
    deadline: Instant,
}

/// What `Cache-Status` said of a set of page reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Outcomes {
    /// Served from the cache (fresh or stale: `hit`).
    pub(crate) hits: usize,
    /// Forwarded (`fwd=miss`, `fwd=stale`, ...), with a call of their own.
    pub(crate) misses: usize,
    /// Forwarded, sharing another request's call (`collapsed`).
    pub(crate) collapsed: usize,
    /// Forwarded without the cache (`fwd=bypass`).
    pub(crate) bypasses: usize,
    /// No `Cache-Status` from the cache.
    pub(crate) uncached: usize,
}

impl Outcomes {
    pub(crate) fn add(&mut self, outcome: CacheOutcome) {
        match outcome {
            CacheOutcome::Hit | CacheOutcome::Stale => self.hits += 1,
            CacheOutcome::Miss => self.misses += 1,
            CacheOutcome::Collapsed => self.collapsed += 1,
            CacheOutcome::Bypass => self.bypasses += 1,
            CacheOutcome::None => self.uncached += 1,
        }
    }

    pub(crate) fn merge(&mut self, other: Outcomes) {
        self.hits += other.hits;
        self.misses += other.misses;
        self.collapsed += other.collapsed;
        self.bypasses += other.bypasses;
        self.uncached += other.uncached;
    }

    pub(crate) fn sum<'a>(all: impl IntoIterator<Item = &'a Outcomes>) -> Outcomes {
        let mut sum = Outcomes::default();
        for o in all {
            sum.merge(*o);
        }
        sum
    }

    /// Reads counted.
    pub(crate) fn total(&self) -> usize {
        self.hits + self.misses + self.collapsed + self.bypasses + self.uncached
    }

    /// `N hits, N misses, N collapsed` (and bypasses or no status, if any).
    pub(crate) fn describe(&self) -> String {
        let mut text = format!(
            "{} hits, {} misses, {} collapsed",
            self.hits, self.misses, self.collapsed
        );
        if self.bypasses > 0 {
            let _ = write!(text, ", {} bypasses", self.bypasses);
        }
        if self.uncached > 0 {
            let _ = write!(text, ", {} without Cache-Status", self.uncached);
        }
        text
    }
}

/// What one lookup of the session saw.
struct Lookup {
    /// What the cache said of each page read (1 to 3 of them).
    outcomes: Outcomes,
    /// The session's title; `Ok(None)` when it is on none of the pages.
    title: Result<Option<String>, String>,
}

impl Shared {
    /// Looks for session `sid` on B's pages 1..3 as `auth`, with `token` if any.
    async fn find(&self, auth: &str, sid: i64, token: Option<&str>) -> Lookup {
        let mut lookup = Lookup {
            outcomes: Outcomes::default(),
            title: Ok(None),
        };
        for page in 1..=PAGES {
            let mut request = self
                .client
                .get(format!("{}/api/chat/sessions?page={page}", self.b))
                .header(AUTHORIZATION, auth);
            if let Some(token) = token {
                request = request.header(TOKEN, token);
            }
            let response = match request.send().await {
                Ok(response) => response,
                Err(e) => {
                    lookup.title = Err(format!("B: sessions page {page}: {e}"));
                    return lookup;
                }
            };
            let cache = CacheOutcome::parse(
                response
                    .headers()
                    .get("cache-status")
                    .and_then(|v| v.to_str().ok()),
                &self.cache_name,
            );
            lookup.outcomes.add(cache);
            let status = response.status();
            let body = match response.bytes().await {
                Ok(body) if status.is_success() => body,
                Ok(_) => {
                    lookup.title = Err(format!("B: sessions page {page}: status {status}"));
                    return lookup;
                }
                Err(e) => {
                    lookup.title = Err(format!("B: sessions page {page}: reading the body: {e}"));
                    return lookup;
                }
            };
            let page: serde_json::Value = match serde_json::from_slice(&body) {
                Ok(page) => page,
                Err(e) => {
                    lookup.title = Err(format!("B: sessions page {page}: not JSON: {e}"));
                    return lookup;
                }
            };
            let title = readback::title_on(&page, sid);
            if title.is_some() {
                lookup.title = Ok(title);
                return lookup;
            }
        }
        lookup
    }

    /// The title of write `k` of `user`.
    fn title(&self, user: usize, k: u64) -> String {
        readback::title("consistency", &self.nonce, user, k)
    }

    /// Which write of `user` `title` is (0 for any other title).
    fn write_number(&self, user: usize, title: &str) -> u64 {
        readback::write_number("consistency", &self.nonce, user, title)
    }
}

/// What one writer saw.
#[derive(Debug, Default)]
struct WriterResult {
    writes: usize,
    write_latency: Vec<Duration>,
    with_token: usize,
    checked: Outcomes,
    stale_ages: Vec<Duration>,
    writes_with_stale: usize,
    never_seen: usize,
    errors: Vec<String>,
}

/// What one observer saw.
#[derive(Debug, Default)]
struct Observation {
    /// From the write's response to sending the first read that showed it.
    sent_after: Option<Duration>,
    /// From the write's response to that read's answer.
    answered_after: Option<Duration>,
    /// What the cache said of every read, and of the first.
    outcomes: Outcomes,
    first: Outcomes,
    errors: Vec<String>,
}

/// The session user `user` renames: the first one its page 1 lists, through A.
async fn pick_session(shared: &Shared, auth: &str) -> Result<i64, String> {
    let response = shared
        .client
        .get(format!("{}/api/chat/sessions?page=1", shared.a))
        .header(AUTHORIZATION, auth)
        .send()
        .await
        .map_err(|e| format!("A: sessions page 1: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("A: sessions page 1: status {status}"));
    }
    let page: serde_json::Value = response
        .json()
        .await
        .map_err(|e| format!("A: sessions page 1: {e}"))?;
    crate::scenarios::dashboard::session_ids(&page)
        .first()
        .copied()
        .ok_or_else(|| "A: sessions page 1 lists no session".to_owned())
}

/// One writer: renames its session through A and reads it back through B until the
/// deadline; every `OBSERVE_EVERY`th write gets an observer.
async fn writer(
    shared: Arc<Shared>,
    user: usize,
    key: String,
) -> (WriterResult, Vec<JoinHandle<Observation>>) {
    let mut result = WriterResult::default();
    let mut observers = Vec::new();
    let auth = format!("Bearer {key}");
    let sid = match pick_session(&shared, &auth).await {
        Ok(sid) => sid,
        Err(e) => {
            result.errors.push(e);
            return (result, observers);
        }
    };
    let mut token: Option<String> = None;
    let mut k = 0;
    while Instant::now() < shared.deadline {
        k += 1;
        let mut request = shared
            .client
            .put(format!("{}/api/chat/sessions/{sid}", shared.a))
            .header(AUTHORIZATION, &auth)
            .json(&json!({ "title": shared.title(user, k) }));
        if let Some(token) = &token {
            request = request.header(TOKEN, token);
        }
        let sent = Instant::now();
        let answered = match request.send().await {
            Ok(response) => {
                let status = response.status();
                let returned = response
                    .headers()
                    .get(TOKEN)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                match response.bytes().await {
                    Ok(_) if status.is_success() => Ok(returned),
                    Ok(body) => Err(format!(
                        "A: rename: status {status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(200)])
                    )),
                    Err(e) => Err(format!("A: rename: reading the body: {e}")),
                }
            }
            Err(e) => Err(format!("A: rename: {e}")),
        };
        // The write's response has arrived, body and all: every read from now must show it.
        let written = Instant::now();
        match answered {
            Ok(returned) => {
                if let Some(returned) = returned {
                    result.with_token += 1;
                    token = Some(returned);
                }
            }
            Err(e) => {
                result.errors.push(e);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        }
        result.writes += 1;
        result.write_latency.push(written - sent);
        if k % OBSERVE_EVERY == 0 {
            observers.push(tokio::spawn(observe(
                Arc::clone(&shared),
                auth.clone(),
                user,
                sid,
                k,
                written,
            )));
        }
        let mut stale = false;
        'reads: for _ in 0..READS_PER_WRITE {
            loop {
                let read_sent = Instant::now();
                let lookup = shared.find(&auth, sid, token.as_deref()).await;
                result.checked.merge(lookup.outcomes);
                match lookup.title {
                    Ok(Some(title)) if shared.write_number(user, &title) >= k => break,
                    Ok(Some(_)) => {
                        stale = true;
                        let age = read_sent - written;
                        if readback::stale_read(age, &mut result.stale_ages, &mut result.never_seen)
                            .await
                        {
                            break 'reads;
                        }
                    }
                    Ok(None) => {
                        result
                            .errors
                            .push(format!("B: session {sid} is on none of pages 1..{PAGES}"));
                        break 'reads;
                    }
                    Err(e) => {
                        result.errors.push(e);
                        break 'reads;
                    }
                }
            }
        }
        result.writes_with_stale += usize::from(stale);
    }
    (result, observers)
}

/// Another client of the same account, without the token: polls B until write `k` shows.
async fn observe(
    shared: Arc<Shared>,
    auth: String,
    user: usize,
    sid: i64,
    k: u64,
    written: Instant,
) -> Observation {
    let mut observation = Observation::default();
    loop {
        let sent = Instant::now();
        let lookup = shared.find(&auth, sid, None).await;
        if observation.outcomes.total() == 0 {
            observation.first = lookup.outcomes;
        }
        observation.outcomes.merge(lookup.outcomes);
        match lookup.title {
            Ok(Some(title)) if shared.write_number(user, &title) >= k => {
                observation.sent_after = Some(sent - written);
                observation.answered_after = Some(written.elapsed());
                return observation;
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                observation.errors.push(format!(
                    "B (observer): session {sid} is on none of pages 1..{PAGES}"
                ));
                return observation;
            }
            Err(e) => {
                observation.errors.push(format!("(observer) {e}"));
                return observation;
            }
        }
        if written.elapsed() + POLL_EVERY >= CONVERGE_WITHIN {
            return observation;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// The figures of a run, as `summary.json` has them.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Figures {
    /// Renames answered with a success.
    pub(crate) writes: usize,
    /// Their latency (through A).
    pub(crate) write_latency: Latency,
    /// Of which answered with a `larder-consistency` token.
    pub(crate) writes_with_token: usize,
    /// Page reads through B with the token (the writers' own).
    pub(crate) checked_reads: usize,
    /// What the cache said of them.
    pub(crate) checked_outcomes: Outcomes,
    /// Of which served from the cache.
    pub(crate) checked_read_hits: usize,
    /// `checked_read_hits / checked_reads`.
    pub(crate) checked_hit_rate: Option<f64>,
    /// Reads sent after a write's response that showed an older title.
    pub(crate) stale_reads: usize,
    /// Writes followed by at least one stale read.
    pub(crate) writes_with_stale_reads: usize,
    /// Writes their own writer had not seen within 2 s.
    pub(crate) writes_never_seen_by_writer: usize,
    /// Age of the stale reads: from the write's response to sending the read.
    pub(crate) stale_age: Latency,
    /// Writes an observer watched.
    pub(crate) observed_writes: usize,
    /// From the write's response to sending the observer's first read that showed it.
    pub(crate) propagation: Latency,
    /// From the write's response to that read's answer.
    pub(crate) propagation_answered: Latency,
    /// Observed writes not seen within 2 s.
    pub(crate) not_converged: usize,
    /// The observers' page reads.
    pub(crate) observer_reads: usize,
    /// What the cache said of them.
    pub(crate) observer_outcomes: Outcomes,
    /// What the cache said of each observer's first lookup (often collapsed into the
    /// writer's own read of the same page, sent at the same instant).
    pub(crate) observer_first_outcomes: Outcomes,
    /// Of which served from the cache.
    pub(crate) observer_read_hits: usize,
    /// Failed requests.
    pub(crate) errors: usize,
    /// Up to ten distinct error messages with their counts.
    pub(crate) error_examples: Vec<String>,
    /// How long the run took, in seconds.
    pub(crate) elapsed_s: f64,
}

impl Figures {
    fn of(writers: &[WriterResult], observations: &[Observation], elapsed: Duration) -> Figures {
        let sum = |f: fn(&WriterResult) -> usize| writers.iter().map(f).sum::<usize>();
        let checked = Outcomes::sum(writers.iter().map(|w| &w.checked));
        let observed = Outcomes::sum(observations.iter().map(|o| &o.outcomes));
        let (checked_reads, checked_read_hits) = (checked.total(), checked.hits);
        let (errors, error_examples) = error_summary(
            writers
                .iter()
                .flat_map(|w| &w.errors)
                .chain(observations.iter().flat_map(|o| &o.errors)),
        );
        Figures {
            writes: sum(|w| w.writes),
            write_latency: Latency::of(
                writers.iter().flat_map(|w| w.write_latency.iter().copied()),
            ),
            writes_with_token: sum(|w| w.with_token),
            checked_reads,
            checked_outcomes: checked,
            checked_read_hits,
            checked_hit_rate: (checked_reads > 0)
                .then(|| checked_read_hits as f64 / checked_reads as f64),
            stale_reads: sum(|w| w.stale_ages.len()),
            writes_with_stale_reads: sum(|w| w.writes_with_stale),
            writes_never_seen_by_writer: sum(|w| w.never_seen),
            stale_age: Latency::of(writers.iter().flat_map(|w| w.stale_ages.iter().copied())),
            observed_writes: observations.len(),
            propagation: Latency::of(observations.iter().filter_map(|o| o.sent_after)),
            propagation_answered: Latency::of(observations.iter().filter_map(|o| o.answered_after)),
            not_converged: observations
                .iter()
                .filter(|o| o.sent_after.is_none() && o.errors.is_empty())
                .count(),
            observer_reads: observed.total(),
            observer_outcomes: observed,
            observer_first_outcomes: Outcomes::sum(observations.iter().map(|o| &o.first)),
            observer_read_hits: observed.hits,
            errors,
            error_examples,
            elapsed_s: elapsed.as_secs_f64(),
        }
    }

    /// No stale read and no failed request.
    pub(crate) fn passed(&self) -> bool {
        self.stale_reads == 0 && self.errors == 0 && self.writes > 0
    }

    /// The table printed at the end.
    pub(crate) fn table(&self) -> String {
        let mut out = String::new();
        let w = 46;
        let mut row = |name: &str, value: String| {
            let _ = writeln!(out, "{name:<w$} {value}");
        };
        row(
            "writes (renames through A)",
            format!(
                "{}   avg {} ms, p99 {} ms",
                self.writes,
                ms(self.write_latency.avg_ms),
                ms(self.write_latency.p99_ms)
            ),
        );
        row(
            &format!("  answered with a {TOKEN} token"),
            format!("{} of {}", self.writes_with_token, self.writes),
        );
        row(
            "checked reads (through B, with the token)",
            format!(
                "{}   hit rate {} ({})",
                self.checked_reads,
                pct(self.checked_read_hits, self.checked_reads),
                self.checked_outcomes.describe()
            ),
        );
        row(
            "STALE reads (must be 0)",
            format!(
                "{}   after {} writes; {} writes not seen by their writer within 2 s",
                self.stale_reads, self.writes_with_stale_reads, self.writes_never_seen_by_writer
            ),
        );
        row(
            "  stale age, ms (write answered -> read sent)",
            if self.stale_age.count == 0 {
                "-".to_owned()
            } else {
                format!(
                    "max {}  p99 {}  p50 {}",
                    ms(self.stale_age.max_ms),
                    ms(self.stale_age.p99_ms),
                    ms(self.stale_age.p50_ms)
                )
            },
        );
        row(
            "propagation to other clients (no token)",
            format!(
                "{} writes observed (every {OBSERVE_EVERY}th), polled every {} ms",
                self.observed_writes,
                POLL_EVERY.as_millis()
            ),
        );
        row("  first fresh read sent after, ms", lat(&self.propagation));
        row(
            "  ... and answered after, ms",
            lat(&self.propagation_answered),
        );
        row("  not converged within 2 s", self.not_converged.to_string());
        row(
            "  observer reads",
            format!(
                "{}   hit rate {} ({}); first reads: {}",
                self.observer_reads,
                pct(self.observer_read_hits, self.observer_reads),
                self.observer_outcomes.describe(),
                self.observer_first_outcomes.describe()
            ),
        );
        row("failed requests", self.errors.to_string());
        for e in &self.error_examples {
            row("  error", e.clone());
        }
        out
    }
}

/// Runs the scenario `args` describes, writing `summary.json` into `dir`. Returns whether
/// it passed (no stale read, no failed request).
pub(crate) async fn run(args: &Args, dir: &Path, started: Instant) -> anyhow::Result<bool> {
    anyhow::ensure!(args.users > 0, "--users must be at least 1");
    if args.baseline_host.is_some() {
        bail!("--scenario consistency has no baseline run: leave out --baseline-host");
    }
    let workload = Workload::new(args);
    if workload.sharing.iter().any(|&n| n > 1) {
        bail!(
            "--scenario consistency needs one account per writer: --distribution uniform and --accounts at least --users"
        );
    }
    let instances = match &args.host {
        Some(host) => Instances::remote(host, args.host_b.as_deref()),
        None => Instances::local(args).await?,
    };
    println!(
        "scenario consistency: {} writers, one account each (seed {}), for {:.0}s: each renames one of its sessions through A, then reads it back through B {READS_PER_WRITE} times (page 1; pages 2 and 3 if it is not there) sending back its latest {TOKEN} token (a read showing an older title is stale; after one, it reads again every {} ms, up to 2 s); after every {OBSERVE_EVERY}th write an observer without the token polls B every {} ms (up to 2 s) until the new title shows.",
        args.users,
        args.seed,
        args.run_time.as_secs_f64(),
        POLL_EVERY.as_millis(),
        POLL_EVERY.as_millis(),
    );
    println!("{}", instances.description);
    println!("A: {}\nB: {}", instances.a, instances.b);
    println!("reports: {}\n", dir.display());

    let shared = Arc::new(Shared {
        client: readback::client()?,
        a: instances.a.clone(),
        b: instances.b.clone(),
        cache_name: args.cache_name.clone(),
        nonce: format!("{:08x}", fastrand::u32(..)),
        deadline: Instant::now() + args.run_time,
    });
    let run_started = Instant::now();
    let writers: Vec<_> = (0..args.users)
        .map(|user| tokio::spawn(writer(Arc::clone(&shared), user, workload.key(user))))
        .collect();
    let mut results = Vec::new();
    let mut observations = Vec::new();
    for writer in writers {
        let (result, observers) = writer.await.context("a writer task failed")?;
        results.push(result);
        for observer in observers {
            observations.push(observer.await.context("an observer task failed")?);
        }
    }
    let elapsed = run_started.elapsed();
    let description = instances.description.clone();
    instances.stop().await;

    let figures = Figures::of(&results, &observations, elapsed);
    let passed = figures.passed();
    let table = figures.table();
    println!("{table}");
    println!(
        "{} in {:.0}s (the run {:.1}s); written to {}: summary.json",
        verdict(passed, figures.stale_reads > 0),
        started.elapsed().as_secs_f64(),
        elapsed.as_secs_f64(),
        dir.display()
    );
    let summary = json!({
        "passed": passed,
        "scenario": args.scenario,
        "setup": {
            "store": args.host.is_none().then_some(args.store),
            "host": args.host,
            "host_b": args.host_b,
            "a": shared.a,
            "b": shared.b,
            "description": description,
            "users": args.users,
            "accounts": workload.accounts,
            "seed": args.seed,
            "run_time_s": args.run_time.as_secs_f64(),
            "db_latency_ms": args.db_latency_ms,
            "db_pool": args.db_pool,
            "reads_per_write": READS_PER_WRITE,
            "observe_every": OBSERVE_EVERY,
            "poll_every_ms": POLL_EVERY.as_secs_f64() * 1e3,
            "converge_within_s": CONVERGE_WITHIN.as_secs_f64(),
            "token_header": TOKEN,
        },
        "definitions": {
            "stale_read": "a page read through B, sent after the write's response had arrived, with the writer's latest token, that shows the session with an older title",
            "stale_age": "from the write's response arriving to the stale read being sent",
            "propagation": "from the write's response arriving to the observer (same account, no token) sending its first read of B that showed the new title; polls every 2 ms, so this is an upper bound within a poll of the instant B started answering with it",
            "propagation_answered": "the same, to that read's answer arriving",
        },
        "figures": figures,
        "table": table,
        "elapsed_s": started.elapsed().as_secs_f64(),
    });
    readback::write_summary(dir, &summary)?;
    Ok(passed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_carry_the_run_and_the_write() {
        let shared = Shared {
            client: reqwest::Client::new(),
            a: String::new(),
            b: String::new(),
            cache_name: "larder".into(),
            nonce: "0badcafe".into(),
            deadline: Instant::now(),
        };
        assert_eq!(shared.write_number(3, &shared.title(3, 17)), 17);
        // Another writer's, another run's, the seed's.
        assert_eq!(shared.write_number(4, &shared.title(3, 17)), 0);
        assert_eq!(
            shared.write_number(3, "consistency 00000000 user 3 write 17"),
            0
        );
        assert_eq!(shared.write_number(3, "Quarterly revenue review"), 0);
    }

    #[test]
    fn stale_reads_fail_the_run() {
        let writer = WriterResult {
            writes: 10,
            checked: Outcomes {
                hits: 9,
                misses: 12,
                ..Outcomes::default()
            },
            stale_ages: vec![Duration::from_millis(1), Duration::from_millis(3)],
            writes_with_stale: 1,
            ..WriterResult::default()
        };
        let observations = [
            Observation {
                sent_after: Some(Duration::from_millis(4)),
                answered_after: Some(Duration::from_millis(5)),
                outcomes: Outcomes {
                    hits: 2,
                    collapsed: 1,
                    ..Outcomes::default()
                },
                first: Outcomes {
                    collapsed: 1,
                    ..Outcomes::default()
                },
                errors: vec![],
            },
            Observation::default(),
        ];
        let f = Figures::of(&[writer], &observations, Duration::from_secs(1));
        assert_eq!(f.stale_reads, 2);
        assert_eq!((f.checked_reads, f.checked_read_hits), (21, 9));
        assert_eq!(
            (f.observer_reads, f.observer_first_outcomes.collapsed),
            (3, 1)
        );
        assert_eq!(f.stale_age.max_ms, 3.0);
        assert_eq!(f.not_converged, 1);
        assert_eq!(f.propagation.count, 1);
        assert!(!f.passed());
        assert!(f.table().contains("STALE reads (must be 0)"));
        let clean = WriterResult {
            writes: 10,
            ..WriterResult::default()
        };
        assert!(Figures::of(&[clean], &[], Duration::from_secs(1)).passed());
    }
}
