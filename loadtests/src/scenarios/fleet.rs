//! The `fleet` scenario: the dashboard workload over a fleet of 1, 2 and 4 instances
//! (`--instances`) on the tiered store, all over one 3-master Redis Cluster that the runner
//! starts (the test kit's) and one SQLite file.
//!
//! For each fleet size N, the runner starts N in-process dashboards with a fresh key
//! namespace (so one size never sees another's entries), then, after a warm-up that is not
//! counted, measures `--run-time`:
//!
//! - **Readers.** Each of `--users` users (one account each) loads its dashboard (the 11
//!   reads of the `dashboard` scenario) every `--period` on a fixed schedule, spread evenly
//!   over the period; its requests go round-robin over the instances (request `j` of user
//!   `u` to instance `(u + j) mod N`), so every instance serves every user. Every request
//!   carries the same `Host` (`dashboard.fleet.test`), as a load balancer would forward it:
//!   the cache's keys include the authority, and each instance listens on a port of its own.
//! - **Writes.** `--write-share` of all requests are writes, made between two loads at a
//!   seeded random time through a random instance: each renames the user's session (the
//!   first its page 1 listed) with a title that carries the run and the write's number, as
//!   the `consistency` scenario's writers do. The user sends back the latest
//!   `larder-consistency` token on all its later requests.
//! - **Stale reads.** Right after a write's response the user reads the session back
//!   through another instance (pages 1..3, with the token); every later sessions page the
//!   user reads in its loads is checked the same way. A read sent after a write's response
//!   that shows an older title is stale (after one, the user polls every 2 ms, up to 2 s).
//!   The run fails on any.
//! - **Propagation to the last instance.** After every write an observer (the same
//!   account, without the token) polls every instance every 2 ms until each shows the new
//!   title: the delay from the write's response to the first fresh read *sent* to the
//!   slowest instance is the propagation delay (its L1 is the last to drop the old page).
//! - **Redis operations per master.** `INFO commandstats` of each master just before and
//!   just after the measured run; the difference of `calls` summed over every command but
//!   connection and cluster housekeeping (`info`, `ping`, `cluster`, `client`, `hello`,
//!   `config`, `command`, `select`) is that master's work, and its share of the three is
//!   printed (target: the busiest at most `--target-busiest-master-share`, 40%).
//!
//! Plain tokio tasks and one reqwest client, as in the `consistency` scenario. Exit 1 on a
//! stale read or a failed request (the masters' spread is reported PASS or FAIL, and does
//! not set the exit status).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use example_dashboard::StoreKind;
use larder_testkit::RedisCluster;
use reqwest::{
    Method,
    header::{AUTHORIZATION, HOST},
};
use serde::Serialize;
use serde_json::json;
use tokio::task::JoinHandle;

use crate::{
    cli::{Args, Store},
    endpoint::{LocalSetup, Target},
    goals::{self, Check},
    record::{CacheOutcome, Latency},
    scenarios::{
        consistency::{Outcomes, TOKEN},
        dashboard::{READS, session_ids},
        readback::{
            self, CONVERGE_WITHIN, PAGES, POLL_EVERY, error_summary, lat, ms, pct, verdict,
        },
    },
    workload::Workload,
};

/// The `Host` of every request, whichever instance it goes to, as behind a load balancer: the
/// cache's keys include the authority, and each in-process instance has a port of its own.
const FLEET_HOST: &str = "dashboard.fleet.test";
/// A load that starts this much after it was due is counted late.
const LATE: Duration = Duration::from_millis(10);
/// Time between spawning a phase's users and its first load being due.
const LAUNCH: Duration = Duration::from_millis(200);
/// Salts of the two phases' random numbers.
const WARM_UP: u64 = 1;
const MEASURED: u64 = 2;
/// The commands left out of a master's count: connection and cluster housekeeping (the
/// subcommands of `client`, `cluster`, `config` and `command` go with them).
pub(crate) const HOUSEKEEPING: [&str; 8] = [
    "info", "ping", "cluster", "client", "hello", "config", "command", "select",
];
/// The slot ranges of the test kit's masters, in the order of its nodes.
const SLOTS: [&str; 3] = ["0-5460", "5461-10922", "10923-16383"];

/// What a request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum What {
    /// One of a dashboard load's reads.
    Read,
    /// A rename.
    Write,
    /// A user's read of its session right after its write (with the token).
    Checked,
    /// An observer's poll (no token).
    Observer,
}

/// One request.
#[derive(Debug, Clone, Copy)]
struct Req {
    what: What,
    instance: usize,
    latency: Duration,
    cache: CacheOutcome,
    ok: bool,
}

/// One answer, read to its last byte.
struct Reply {
    req: Req,
    /// The body, when the status was a success; else why not.
    body: Result<Vec<u8>, String>,
    /// The `larder-consistency` header of the answer.
    token: Option<String>,
}

/// Who sends a request: the bearer header, and the consistency token if any.
#[derive(Debug, Clone, Copy)]
struct Who<'a> {
    auth: &'a str,
    token: Option<&'a str>,
}

/// What every task of one fleet size shares.
struct Shared {
    client: reqwest::Client,
    /// The instances' base URLs.
    urls: Vec<String>,
    cache_name: String,
    /// Marks this fleet size's titles.
    nonce: String,
    workload: Arc<Workload>,
}

impl Shared {
    /// Sends one request to instance `instance` as `who`.
    async fn send(
        &self,
        (what, instance): (What, usize),
        method: Method,
        path: &str,
        who: Who<'_>,
        body: Option<serde_json::Value>,
    ) -> Reply {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.urls[instance]))
            .header(HOST, FLEET_HOST)
            .header(AUTHORIZATION, who.auth);
        if let Some(token) = who.token {
            request = request.header(TOKEN, token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let sent = Instant::now();
        let (cache, token, body) = match request.send().await {
            Ok(response) => {
                let status = response.status();
                let header = |name: &str| {
                    response
                        .headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                let cache =
                    CacheOutcome::parse(header("cache-status").as_deref(), &self.cache_name);
                let token = header(TOKEN);
                let body = match response.bytes().await {
                    Ok(body) if status.is_success() => Ok(body.to_vec()),
                    Ok(body) => Err(format!(
                        "status {status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(200)])
                    )),
                    Err(e) => Err(format!("reading the body: {e}")),
                };
                (cache, token, body)
            }
            Err(e) => (CacheOutcome::None, None, Err(e.to_string())),
        };
        let body = body.map_err(|e| format!("instance {}: {path}: {e}", instance + 1));
        Reply {
            req: Req {
                what,
                instance,
                latency: sent.elapsed(),
                cache,
                ok: body.is_ok(),
            },
            body,
            token,
        }
    }

    /// The title of write `k` of `user`.
    fn title(&self, user: usize, k: u64) -> String {
        readback::title("fleet", &self.nonce, user, k)
    }

    /// Which write of `user` `title` is (0 for any other title).
    fn write_number(&self, user: usize, title: &str) -> u64 {
        readback::write_number("fleet", &self.nonce, user, title)
    }

    /// Looks for session `sid` on pages 1..3 of `instance` as `who`; the requests go into
    /// `requests`.
    async fn find(
        &self,
        to: (What, usize),
        who: Who<'_>,
        sid: i64,
        requests: &mut Vec<Req>,
    ) -> Result<Option<String>, String> {
        for page in 1..=PAGES {
            let path = format!("/api/chat/sessions?page={page}");
            let reply = self.send(to, Method::GET, &path, who, None).await;
            requests.push(reply.req);
            let body = reply.body?;
            if let Some(title) = title_of(&body, sid) {
                return Ok(Some(title));
            }
        }
        Ok(None)
    }
}

/// The title of session `sid` on a sessions page, if it is there.
fn title_of(page: &[u8], sid: i64) -> Option<String> {
    readback::title_on(&serde_json::from_slice(page).ok()?, sid)
}

/// One user, kept from the warm-up to the measured run of one fleet size.
struct User {
    index: usize,
    auth: String,
    /// The session it renames (page 1's first, at its first load).
    sid: Option<i64>,
    /// The latest token its writes were answered with.
    token: Option<String>,
    /// Its last write answered, and when the answer arrived.
    last_write: Option<(u64, Instant)>,
    /// Writes made (the next is `writes + 1`).
    writes: u64,
    /// The instance of its next read.
    next_instance: usize,
}

/// What one user did in one phase.
#[derive(Default)]
struct UserRun {
    requests: Vec<Req>,
    errors: Vec<String>,
    write_latency: Vec<Duration>,
    writes: usize,
    with_token: usize,
    stale_ages: Vec<Duration>,
    writes_with_stale: usize,
    never_seen: usize,
    loads: usize,
    late_loads: usize,
    observers: Vec<JoinHandle<Observation>>,
}

/// What one observer saw of one write on every instance.
#[derive(Debug, Default)]
struct Observation {
    /// Per instance: from the write's response to sending the first read that showed it.
    seen_after: Vec<Option<Duration>>,
    requests: Vec<Req>,
    errors: Vec<String>,
}

impl Observation {
    /// When the slowest instance showed the write; `None` if one never did within 2 s.
    fn last(&self) -> Option<Duration> {
        self.seen_after
            .iter()
            .try_fold(Duration::ZERO, |max, seen| seen.map(|s| max.max(s)))
    }
}

/// One phase of one user: `loads` dashboard loads from `epoch` on its schedule, with the
/// writes planned between them; observers only when `observe`.
async fn user_phase(
    shared: Arc<Shared>,
    mut user: User,
    epoch: Instant,
    loads: u64,
    salt: u64,
    observe: bool,
) -> (User, UserRun) {
    let mut run = UserRun::default();
    let workload = Arc::clone(&shared.workload);
    let n = shared.urls.len();
    let mut rng = workload.rng(user.index, salt);
    let first_due = epoch + workload.offset(user.index);
    let period = workload.period;
    for load in 0..loads {
        let due = first_due + period * u32::try_from(load).unwrap_or(u32::MAX);
        tokio::time::sleep_until(due.into()).await;
        let started = Instant::now();
        run.loads += 1;
        run.late_loads += usize::from(started.saturating_duration_since(due) > LATE);
        for (path, name) in READS {
            let instance = user.next_instance;
            user.next_instance = (user.next_instance + 1) % n;
            let sent = Instant::now();
            let who = Who {
                auth: &user.auth,
                token: user.token.as_deref(),
            };
            let reply = shared
                .send((What::Read, instance), Method::GET, path, who, None)
                .await;
            run.requests.push(reply.req);
            let body = match reply.body {
                Ok(body) => body,
                Err(e) => {
                    run.errors.push(format!("{name}: {e}"));
                    continue;
                }
            };
            if !path.starts_with("/api/chat/sessions") {
                continue;
            }
            if user.sid.is_none() && name == "sessions page 1" {
                let page: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                user.sid = session_ids(&page).first().copied();
            }
            // Every sessions page the user reads must show its last write.
            if let (Some(sid), Some((k, written))) = (user.sid, user.last_write)
                && let Some(title) = title_of(&body, sid)
                && shared.write_number(user.index, &title) < k
            {
                run.stale_ages.push(sent.saturating_duration_since(written));
            }
        }
        // The writes planned before the next load, at their seeded times.
        let planned = workload.plan_writes(&mut rng);
        let now = Instant::now();
        let next_due = due + period;
        let window = next_due
            .saturating_duration_since(now)
            .saturating_sub(period / 4);
        for w in planned {
            tokio::time::sleep_until((now + window.mul_f64(w.at)).into()).await;
            write(&shared, &mut user, &mut run, &mut rng, observe).await;
        }
    }
    (user, run)
}

/// One rename through a random instance, then the user's read of it through another.
async fn write(
    shared: &Arc<Shared>,
    user: &mut User,
    run: &mut UserRun,
    rng: &mut fastrand::Rng,
    observe: bool,
) {
    let n = shared.urls.len();
    let Some(sid) = user.sid else {
        run.errors
            .push("rename: no session to rename (page 1 did not load)".to_owned());
        return;
    };
    let k = user.writes + 1;
    user.writes = k;
    let instance = rng.usize(..n);
    let who = Who {
        auth: &user.auth,
        token: user.token.as_deref(),
    };
    let reply = shared
        .send(
            (What::Write, instance),
            Method::PUT,
            &format!("/api/chat/sessions/{sid}"),
            who,
            Some(json!({ "title": shared.title(user.index, k) })),
        )
        .await;
    // The write's response has arrived, body and all: every read from now must show it.
    let written = Instant::now();
    run.requests.push(reply.req);
    if let Err(e) = reply.body {
        run.errors.push(format!("rename: {e}"));
        return;
    }
    run.writes += 1;
    run.write_latency.push(reply.req.latency);
    if let Some(token) = reply.token {
        run.with_token += 1;
        user.token = Some(token);
    }
    user.last_write = Some((k, written));
    if observe {
        run.observers.push(tokio::spawn(observe_write(
            Arc::clone(shared),
            user.auth.clone(),
            user.index,
            sid,
            k,
            written,
        )));
    }
    // Read it back through another instance, with the token.
    let reader = if n > 1 {
        (instance + 1 + rng.usize(..n - 1)) % n
    } else {
        instance
    };
    let mut stale = false;
    loop {
        let sent = Instant::now();
        let who = Who {
            auth: &user.auth,
            token: user.token.as_deref(),
        };
        let found = shared
            .find((What::Checked, reader), who, sid, &mut run.requests)
            .await;
        match found {
            Ok(Some(title)) if shared.write_number(user.index, &title) >= k => break,
            Ok(Some(_)) => {
                stale = true;
                if readback::stale_read(sent - written, &mut run.stale_ages, &mut run.never_seen)
                    .await
                {
                    break;
                }
            }
            Ok(None) => {
                run.errors.push(format!(
                    "instance {}: session {sid} is on none of pages 1..{PAGES}",
                    reader + 1
                ));
                break;
            }
            Err(e) => {
                run.errors.push(e);
                break;
            }
        }
    }
    run.writes_with_stale += usize::from(stale);
}

/// Another client of the same account, without the token: polls every instance until each
/// shows write `k`.
async fn observe_write(
    shared: Arc<Shared>,
    auth: String,
    user: usize,
    sid: i64,
    k: u64,
    written: Instant,
) -> Observation {
    let pollers: Vec<_> = (0..shared.urls.len())
        .map(|instance| {
            let shared = Arc::clone(&shared);
            let auth = auth.clone();
            tokio::spawn(async move {
                let mut requests = Vec::new();
                loop {
                    let sent = Instant::now();
                    let who = Who {
                        auth: &auth,
                        token: None,
                    };
                    match shared
                        .find((What::Observer, instance), who, sid, &mut requests)
                        .await
                    {
                        Ok(Some(title)) if shared.write_number(user, &title) >= k => {
                            return (Some(sent - written), requests, None);
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => {
                            let e = format!(
                                "instance {} (observer): session {sid} is on none of pages 1..{PAGES}",
                                instance + 1
                            );
                            return (None, requests, Some(e));
                        }
                        Err(e) => return (None, requests, Some(format!("(observer) {e}"))),
                    }
                    if written.elapsed() + POLL_EVERY >= CONVERGE_WITHIN {
                        return (None, requests, None);
                    }
                    tokio::time::sleep(POLL_EVERY).await;
                }
            })
        })
        .collect();
    let mut observation = Observation::default();
    for poller in pollers {
        match poller.await {
            Ok((seen, requests, error)) => {
                observation.seen_after.push(seen);
                observation.requests.extend(requests);
                observation.errors.extend(error);
            }
            Err(e) => {
                observation.seen_after.push(None);
                observation
                    .errors
                    .push(format!("an observer task failed: {e}"));
            }
        }
    }
    observation
}

/// Every user's run of one phase, and the observers'.
struct PhaseOutput {
    runs: Vec<UserRun>,
    observations: Vec<Observation>,
    /// From the first load being due to the last request (observers too) answered.
    elapsed: Duration,
}

/// Runs one phase of every user (and waits for their observers).
async fn phase(
    shared: &Arc<Shared>,
    users: Vec<User>,
    loads: u64,
    salt: u64,
    observe: bool,
) -> anyhow::Result<(Vec<User>, PhaseOutput)> {
    let epoch = Instant::now() + LAUNCH;
    let tasks: Vec<_> = users
        .into_iter()
        .map(|user| {
            tokio::spawn(user_phase(
                Arc::clone(shared),
                user,
                epoch,
                loads,
                salt,
                observe,
            ))
        })
        .collect();
    let mut users = Vec::new();
    let mut runs = Vec::new();
    let mut observations = Vec::new();
    for task in tasks {
        let (user, mut run) = task.await.context("a user task failed")?;
        for observer in std::mem::take(&mut run.observers) {
            observations.push(observer.await.context("an observer task failed")?);
        }
        users.push(user);
        runs.push(run);
    }
    Ok((
        users,
        PhaseOutput {
            runs,
            observations,
            elapsed: epoch.elapsed(),
        },
    ))
}

/// `calls` per command from an `INFO commandstats` reply (`cmdstat_get:calls=3,...`;
/// subcommands as `client|setname`).
pub(crate) fn command_calls(info: &str) -> BTreeMap<String, u64> {
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// Whether `command` (`get`, `client|setname`) is housekeeping, left out of the counts.
pub(crate) fn is_housekeeping(command: &str) -> bool {
    let base = command.split('|').next().unwrap_or(command);
    HOUSEKEEPING.contains(&base)
}

/// One master's share of the Redis operations of a run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct MasterOps {
    /// 1, 2, 3, in slot order.
    pub(crate) master: usize,
    /// Its port on 127.0.0.1.
    pub(crate) port: u16,
    /// Its slots.
    pub(crate) slots: &'static str,
    /// Calls of every command but housekeeping during the measured run.
    pub(crate) calls: u64,
    /// `calls` over the three masters' calls.
    pub(crate) share: f64,
    /// Its commands, busiest first, with their calls.
    pub(crate) commands: Vec<(String, u64)>,
}

/// The masters' shares from `INFO commandstats` before and after (one per master).
pub(crate) fn master_ops(
    ports: &[u16],
    before: &[BTreeMap<String, u64>],
    after: &[BTreeMap<String, u64>],
) -> Vec<MasterOps> {
    let mut masters: Vec<MasterOps> = ports
        .iter()
        .zip(before.iter().zip(after))
        .enumerate()
        .map(|(i, (&port, (before, after)))| {
            let mut commands: Vec<(String, u64)> = after
                .iter()
                .filter(|(name, _)| !is_housekeeping(name))
                .map(|(name, &calls)| {
                    let was = before.get(name).copied().unwrap_or(0);
                    (name.clone(), calls.saturating_sub(was))
                })
                .filter(|(_, calls)| *calls > 0)
                .collect();
            commands.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            MasterOps {
                master: i + 1,
                port,
                slots: SLOTS.get(i).copied().unwrap_or("?"),
                calls: commands.iter().map(|c| c.1).sum(),
                share: 0.0,
                commands,
            }
        })
        .collect();
    let total: u64 = masters.iter().map(|m| m.calls).sum();
    for m in &mut masters {
        m.share = if total == 0 {
            0.0
        } else {
            m.calls as f64 / total as f64
        };
    }
    masters
}

/// `INFO commandstats` of every master, parsed.
async fn commandstats(cluster: &Arc<RedisCluster>) -> anyhow::Result<Vec<BTreeMap<String, u64>>> {
    let cluster = Arc::clone(cluster);
    tokio::task::spawn_blocking(move || {
        cluster
            .nodes()
            .iter()
            .map(|node| command_calls(&node.cli(&["INFO", "commandstats"])))
            .collect()
    })
    .await
    .context("read INFO commandstats of the masters")
}

/// The figures of one fleet size's measured run, as `summary.json` has them.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Figures {
    /// Instances in the fleet.
    pub(crate) instances: usize,
    /// Every request of the measured run: loads' reads, writes, checked reads, observers.
    pub(crate) requests: usize,
    /// Requests per second over the measured run.
    pub(crate) throughput: f64,
    /// Requests per instance.
    pub(crate) requests_per_instance: Vec<usize>,
    /// Dashboard loads, and those that started more than 10 ms after they were due.
    pub(crate) loads: usize,
    pub(crate) late_loads: usize,
    /// The loads' reads.
    pub(crate) reads: usize,
    /// What the cache said of them.
    pub(crate) read_outcomes: Outcomes,
    /// Of the loads' reads, hits (fresh or stale) over all.
    pub(crate) hit_rate: Option<f64>,
    /// Latency of the loads' reads, to the last byte.
    pub(crate) read_latency: Latency,
    /// Of the hits alone.
    pub(crate) hit_latency: Latency,
    /// Renames answered with a success, their latency and how many carried a token.
    pub(crate) writes: usize,
    pub(crate) write_latency: Latency,
    pub(crate) writes_with_token: usize,
    /// The users' reads of their write through another instance (with the token).
    pub(crate) checked_reads: usize,
    pub(crate) checked_outcomes: Outcomes,
    /// Reads sent after a write's response, with the token, that showed an older title.
    pub(crate) stale_reads: usize,
    pub(crate) writes_with_stale_reads: usize,
    pub(crate) writes_never_seen_by_writer: usize,
    pub(crate) stale_age: Latency,
    /// Writes observed on every instance.
    pub(crate) observed_writes: usize,
    /// From the write's response to the first fresh read sent to the slowest instance.
    pub(crate) propagation_to_last: Latency,
    /// Observed writes some instance did not show within 2 s.
    pub(crate) not_converged: usize,
    pub(crate) observer_reads: usize,
    /// Failed requests, and up to ten distinct messages with their counts.
    pub(crate) errors: usize,
    pub(crate) error_examples: Vec<String>,
    /// The warm-up's requests, failures and stale reads (not in the figures above, but a
    /// failure or a stale read there fails the run too).
    pub(crate) warm_up_requests: usize,
    pub(crate) warm_up_errors: usize,
    pub(crate) warm_up_stale_reads: usize,
    /// Redis operations per master during the measured run.
    pub(crate) masters: Vec<MasterOps>,
    /// The busiest master's share.
    pub(crate) busiest_master_share: Option<f64>,
    /// The measured run, in seconds.
    pub(crate) elapsed_s: f64,
}

impl Figures {
    fn of(
        instances: usize,
        measured: &PhaseOutput,
        warm_up: &PhaseOutput,
        masters: Vec<MasterOps>,
    ) -> Figures {
        let runs = &measured.runs;
        let observations = &measured.observations;
        let all = || {
            runs.iter()
                .flat_map(|r| &r.requests)
                .chain(observations.iter().flat_map(|o| &o.requests))
        };
        let sum = |f: fn(&UserRun) -> usize| runs.iter().map(f).sum::<usize>();
        let of_kind = |what: What| {
            let mut outcomes = Outcomes::default();
            for r in all().filter(|r| r.what == what) {
                outcomes.add(r.cache);
            }
            outcomes
        };
        let read_outcomes = of_kind(What::Read);
        let reads = read_outcomes.total();
        let mut requests_per_instance = vec![0; instances];
        for r in all() {
            if let Some(n) = requests_per_instance.get_mut(r.instance) {
                *n += 1;
            }
        }
        let (errors, error_examples) = error_summary(
            runs.iter()
                .flat_map(|r| &r.errors)
                .chain(observations.iter().flat_map(|o| &o.errors)),
        );
        let requests = all().count();
        let elapsed = measured.elapsed.as_secs_f64();
        let warm_requests = warm_up.runs.iter().map(|r| r.requests.len()).sum::<usize>();
        Figures {
            instances,
            requests,
            throughput: if elapsed > 0.0 {
                requests as f64 / elapsed
            } else {
                0.0
            },
            requests_per_instance,
            loads: sum(|r| r.loads),
            late_loads: sum(|r| r.late_loads),
            reads,
            read_outcomes,
            hit_rate: (reads > 0).then(|| read_outcomes.hits as f64 / reads as f64),
            read_latency: Latency::of(
                all()
                    .filter(|r| r.what == What::Read && r.ok)
                    .map(|r| r.latency),
            ),
            hit_latency: Latency::of(
                all()
                    .filter(|r| r.what == What::Read && r.ok && r.cache.is_hit())
                    .map(|r| r.latency),
            ),
            writes: sum(|r| r.writes),
            write_latency: Latency::of(runs.iter().flat_map(|r| r.write_latency.iter().copied())),
            writes_with_token: sum(|r| r.with_token),
            checked_reads: of_kind(What::Checked).total(),
            checked_outcomes: of_kind(What::Checked),
            stale_reads: sum(|r| r.stale_ages.len()),
            writes_with_stale_reads: sum(|r| r.writes_with_stale),
            writes_never_seen_by_writer: sum(|r| r.never_seen),
            stale_age: Latency::of(runs.iter().flat_map(|r| r.stale_ages.iter().copied())),
            observed_writes: observations.len(),
            propagation_to_last: Latency::of(observations.iter().filter_map(Observation::last)),
            not_converged: observations
                .iter()
                .filter(|o| o.last().is_none() && o.errors.is_empty())
                .count(),
            observer_reads: of_kind(What::Observer).total(),
            errors,
            error_examples,
            warm_up_requests: warm_requests,
            warm_up_errors: warm_up.runs.iter().map(|r| r.errors.len()).sum(),
            warm_up_stale_reads: warm_up.runs.iter().map(|r| r.stale_ages.len()).sum(),
            busiest_master_share: (masters.iter().any(|m| m.calls > 0))
                .then(|| masters.iter().map(|m| m.share).fold(0.0, f64::max)),
            masters,
            elapsed_s: elapsed,
        }
    }

    /// No stale read and no failed request, in the measured run or its warm-up.
    pub(crate) fn passed(&self) -> bool {
        self.stale_reads == 0
            && self.errors == 0
            && self.warm_up_stale_reads == 0
            && self.warm_up_errors == 0
            && self.requests > 0
    }

    /// The block printed after the fleet size's run.
    pub(crate) fn block(&self) -> String {
        let mut out = String::new();
        let w = 46;
        let mut row = |name: &str, value: String| {
            let _ = writeln!(out, "{name:<w$} {value}");
        };
        row(
            "requests",
            format!(
                "{}   {:.0}/s over {:.1}s; per instance {}",
                self.requests,
                self.throughput,
                self.elapsed_s,
                self.requests_per_instance
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(" / ")
            ),
        );
        row(
            "dashboard reads (round-robin over instances)",
            format!(
                "{}   hit rate {} ({})",
                self.reads,
                pct(self.read_outcomes.hits, self.reads),
                self.read_outcomes.describe()
            ),
        );
        row(
            "  latency, ms (to the last byte)",
            format!(
                "avg {}  p50 {}  p99 {}; hits p99 {}",
                ms(self.read_latency.avg_ms),
                ms(self.read_latency.p50_ms),
                ms(self.read_latency.p99_ms),
                ms(self.hit_latency.p99_ms)
            ),
        );
        row(
            "  loads started late (>10 ms)",
            format!("{} of {}", self.late_loads, self.loads),
        );
        row(
            "writes (renames through a random instance)",
            format!(
                "{}   avg {} ms, p99 {} ms; {} answered with a {TOKEN} token",
                self.writes,
                ms(self.write_latency.avg_ms),
                ms(self.write_latency.p99_ms),
                self.writes_with_token
            ),
        );
        row(
            "checked reads (another instance, token)",
            format!(
                "{}   hit rate {} ({})",
                self.checked_reads,
                pct(self.checked_outcomes.hits, self.checked_reads),
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
            "propagation to the last instance, ms",
            format!(
                "{}; {} not converged within 2 s; {} observer reads",
                lat(&self.propagation_to_last),
                self.not_converged,
                self.observer_reads
            ),
        );
        row(
            "Redis operations per master",
            match self.busiest_master_share {
                Some(busiest) => format!(
                    "{} calls; busiest master {:.1}%",
                    self.masters.iter().map(|m| m.calls).sum::<u64>(),
                    busiest * 100.0
                ),
                None => "none counted".to_owned(),
            },
        );
        for m in &self.masters {
            row(
                &format!("  master {} (:{}, slots {})", m.master, m.port, m.slots),
                format!(
                    "{:>8} calls {:>6.1}%   {}",
                    m.calls,
                    m.share * 100.0,
                    m.commands
                        .iter()
                        .take(4)
                        .map(|(c, n)| format!("{c} {n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        row(
            "failed requests",
            format!(
                "{}   (warm-up: {} requests, {} failed, {} stale)",
                self.errors, self.warm_up_requests, self.warm_up_errors, self.warm_up_stale_reads
            ),
        );
        for e in &self.error_examples {
            row("  error", e.clone());
        }
        out
    }
}

/// The table of every fleet size, as markdown (printed and written to `summary.md`).
pub(crate) fn table(all: &[Figures]) -> String {
    let mut out = String::from(
        "| instances | requests | req/s | hit rate | read avg / p99 ms | stale | failed | propagation to last L1 p50 / p99 / max ms | master shares | busiest |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for f in all {
        let p = &f.propagation_to_last;
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {} | {} / {} | {} | {} | {} | {} | {} |",
            f.instances,
            f.requests,
            f.throughput,
            pct(f.read_outcomes.hits, f.reads),
            ms(f.read_latency.avg_ms),
            ms(f.read_latency.p99_ms),
            f.stale_reads + f.warm_up_stale_reads,
            f.errors + f.warm_up_errors,
            if p.count == 0 {
                "-".to_owned()
            } else {
                format!("{} / {} / {}", ms(p.p50_ms), ms(p.p99_ms), ms(p.max_ms))
            },
            f.masters
                .iter()
                .map(|m| format!("{:.1}%", m.share * 100.0))
                .collect::<Vec<_>>()
                .join(" / "),
            f.busiest_master_share
                .map_or("-".to_owned(), |b| format!("{:.1}%", b * 100.0)),
        );
    }
    out
}

/// The checks of every fleet size: failed requests and stale reads (which set the exit
/// status), and the busiest master's share (reported only).
pub(crate) fn checks(args: &Args, all: &[Figures]) -> Vec<(Check, bool)> {
    let mut checks = Vec::new();
    for f in all {
        let n = f.instances;
        let requests = f.requests + f.warm_up_requests;
        let errors = f.errors + f.warm_up_errors;
        checks.push((
            Check {
                name: format!("N={n}: failed requests"),
                target: "0".into(),
                observed: format!("{errors} of {requests}"),
                passed: errors == 0 && f.requests > 0,
            },
            true,
        ));
        let stale = f.stale_reads + f.warm_up_stale_reads;
        checks.push((
            Check {
                name: format!("N={n}: stale reads"),
                target: "0".into(),
                observed: format!("{stale} after {} writes", f.writes),
                passed: stale == 0,
            },
            true,
        ));
        let target = args.target_busiest_master_share;
        checks.push((
            Check {
                name: format!("N={n}: busiest master's share (reported)"),
                target: format!("<= {:.0}%", target * 100.0),
                observed: f
                    .busiest_master_share
                    .map_or("none".into(), |b| format!("{:.1}%", b * 100.0)),
                passed: f.busiest_master_share.is_some_and(|b| b <= target),
            },
            false,
        ));
    }
    checks
}

/// Runs the scenario `args` describes, writing `summary.json` and `summary.md` into `dir`.
/// Returns whether it passed (no stale read, no failed request).
pub(crate) async fn run(args: &Args, dir: &Path, started: Instant) -> anyhow::Result<bool> {
    anyhow::ensure!(args.users > 0, "--users must be at least 1");
    anyhow::ensure!(
        !args.instances.is_empty() && args.instances.iter().all(|n| (1..=16).contains(n)),
        "--instances must list fleet sizes from 1 to 16"
    );
    if args.host.is_some() || args.baseline_host.is_some() {
        bail!("--scenario fleet starts its own instances and Redis Cluster: it runs locally only");
    }
    if args.redis_url.is_some() {
        bail!("--scenario fleet starts a Redis Cluster of its own: leave out --redis-url");
    }
    let store = match args.store {
        Store::Tiered => StoreKind::Tiered,
        Store::Redis => StoreKind::Redis,
        Store::Memory => bail!(
            "--scenario fleet needs a store the instances share: --store tiered (the default) or redis"
        ),
    };
    let workload = Arc::new(Workload::new(args));
    if workload.sharing.iter().any(|&n| n > 1) {
        bail!(
            "--scenario fleet needs one account per user: --distribution uniform and --accounts at least --users"
        );
    }
    let warm_loads = loads_in(args.warm_up, args.period);
    let measured_loads = loads_in(args.run_time, args.period);
    let store_text = match store {
        StoreKind::Tiered => "the tiered store (each instance its own in-process L1)",
        _ => "the Redis store",
    };
    println!(
        "scenario fleet: fleets of {} instances in turn, on {store_text} over one 3-master Redis Cluster (started here) and one SQLite file ({} ms per query, a pool of {} per instance); a fresh key namespace per fleet size.",
        args.instances
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        args.db_latency_ms,
        args.db_pool
    );
    println!(
        "{} users over {} accounts (one each, seed {}); every {:.1}s each user loads its dashboard (11 reads, round-robin over the instances), then renames its session {:.3} times on average ({}% of requests) through a random instance and reads it back through another with its {TOKEN} token (stale if older); an observer without the token polls every instance every {} ms until all show each write.",
        args.users,
        args.accounts,
        args.seed,
        args.period.as_secs_f64(),
        workload.writes_per_load,
        args.write_share * 100.0,
        POLL_EVERY.as_millis()
    );
    println!(
        "per fleet size: warm-up {warm_loads} loads per user ({:.0}s, not counted), then {measured_loads} loads per user ({:.0}s measured); Redis operations per master: INFO commandstats before and after the measured run, all commands but {}.",
        args.warm_up.as_secs_f64(),
        args.run_time.as_secs_f64(),
        HOUSEKEEPING.join("/")
    );
    println!("reports: {}\n", dir.display());

    let cluster = Arc::new(
        tokio::task::spawn_blocking(|| {
            let cluster = RedisCluster::start();
            cluster.wait_ready(Duration::from_secs(20));
            cluster
        })
        .await
        .context("start a 3-master Redis Cluster (is redis-server installed?)")?,
    );
    let ports: Vec<u16> = cluster.nodes().iter().map(|n| n.port()).collect();
    println!(
        "Redis Cluster: masters at {}",
        cluster
            .nodes()
            .iter()
            .zip(SLOTS)
            .map(|(n, slots)| format!("127.0.0.1:{} (slots {slots})", n.port()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let (db_dir, database_url) = readback::sqlite_database("loadtests-fleet-")?;

    let mut all = Vec::new();
    for &n in &args.instances {
        let setup = LocalSetup {
            store,
            db_latency_ms: args.db_latency_ms,
            db_pool: args.db_pool,
            redis_url: Some(cluster.urls().join(",")),
            redis_cluster: true,
            namespace: format!(
                "loadtests-fleet-{}-{n}-{:08x}",
                std::process::id(),
                fastrand::u32(..)
            ),
            database_url: Some(database_url.clone()),
        };
        let mut targets = Vec::new();
        for _ in 0..n {
            // The first instance ever started creates and seeds the database.
            targets.push(Target::start(&setup).await?);
        }
        println!(
            "N={n}: {}",
            targets
                .iter()
                .map(|t| t.url.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let shared = Arc::new(Shared {
            client: readback::client()?,
            urls: targets.iter().map(|t| t.url.clone()).collect(),
            cache_name: args.cache_name.clone(),
            nonce: format!("{:08x}", fastrand::u32(..)),
            workload: Arc::clone(&workload),
        });
        let users = (0..args.users)
            .map(|index| User {
                index,
                auth: format!("Bearer {}", workload.key(index)),
                sid: None,
                token: None,
                last_write: None,
                writes: 0,
                next_instance: index % n,
            })
            .collect();
        let t = Instant::now();
        let (users, warm_up) = phase(&shared, users, warm_loads, WARM_UP, false).await?;
        println!(
            "  warm-up: {warm_loads} loads per user in {:.1}s (not counted)",
            t.elapsed().as_secs_f64()
        );
        let before = commandstats(&cluster).await?;
        let (_, measured) = phase(&shared, users, measured_loads, MEASURED, true).await?;
        let after = commandstats(&cluster).await?;
        for target in targets {
            target.stop().await;
        }
        let figures = Figures::of(n, &measured, &warm_up, master_ops(&ports, &before, &after));
        println!(
            "  measured: {measured_loads} loads per user in {:.1}s",
            figures.elapsed_s
        );
        println!("{}", figures.block());
        all.push(figures);
    }
    let _ = tokio::task::spawn_blocking(move || drop(cluster)).await;
    drop(db_dir);

    let table = table(&all);
    println!("{table}");
    let checks = checks(args, &all);
    let passed = all.iter().all(Figures::passed);
    let rendered = goals::render(&checks.iter().map(|(c, _)| c.clone()).collect::<Vec<_>>());
    println!("{rendered}");
    println!(
        "{} in {:.0}s; written to {}: summary.json, summary.md",
        verdict(
            passed,
            all.iter()
                .any(|f| f.stale_reads + f.warm_up_stale_reads > 0)
        ),
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    let summary = json!({
        "passed": passed,
        "scenario": args.scenario,
        "setup": {
            "store": args.store,
            "instances": args.instances,
            "users": args.users,
            "accounts": workload.accounts,
            "seed": args.seed,
            "period_s": args.period.as_secs_f64(),
            "burst": args.burst,
            "write_share": args.write_share,
            "writes_per_load": workload.writes_per_load,
            "warm_up_s": args.warm_up.as_secs_f64(),
            "warm_up_loads": warm_loads,
            "run_time_s": args.run_time.as_secs_f64(),
            "measured_loads": measured_loads,
            "db_latency_ms": args.db_latency_ms,
            "db_pool": args.db_pool,
            "redis_cluster_masters": ports,
            "poll_every_ms": POLL_EVERY.as_secs_f64() * 1e3,
            "converge_within_s": CONVERGE_WITHIN.as_secs_f64(),
            "token_header": TOKEN,
            "housekeeping_commands": HOUSEKEEPING,
        },
        "definitions": {
            "requests": "every request of the measured run: the loads' reads, the renames, the users' checked reads and the observers' polls",
            "hit_rate": "of the loads' reads: hits (Cache-Status hit, from the L1 or from Redis) over all",
            "stale_read": "a sessions page read by the user that wrote, with its latest token, sent after the write's response had arrived, that shows its session with an older title (the checked reads right after a write, and every sessions page of its later loads)",
            "propagation_to_last": "from the write's response arriving to the observer (same account, no token) sending its first read that showed the new title to the slowest instance; polls every 2 ms, so an upper bound within a poll",
            "master_share": "per master, the difference of INFO commandstats calls between the start and the end of the measured run, summed over every command but the housekeeping ones, over the three masters' sum",
        },
        "fleets": all,
        "targets": checks.iter().map(|(c, enforced)| json!({"check": c, "sets_exit_status": enforced})).collect::<Vec<_>>(),
        "table": table,
        "elapsed_s": started.elapsed().as_secs_f64(),
    });
    readback::write_summary(dir, &summary)?;
    let mut markdown = format!(
        "# loadtests --scenario fleet\n\n{} users, {} ms per query, {}% writes, {:.0}s measured per fleet size, {} store over one 3-master Redis Cluster.\n\n{table}\n",
        args.users,
        args.db_latency_ms,
        args.write_share * 100.0,
        args.run_time.as_secs_f64(),
        match store {
            StoreKind::Tiered => "tiered",
            _ => "Redis",
        },
    );
    for f in &all {
        let _ = write!(
            markdown,
            "## {} instance{}\n\n```text\n{}```\n\n",
            f.instances,
            if f.instances == 1 { "" } else { "s" },
            f.block()
        );
    }
    let _ = write!(markdown, "```text\n{rendered}```\n");
    let path = dir.join("summary.md");
    std::fs::write(&path, markdown).with_context(|| format!("write {}", path.display()))?;
    Ok(passed)
}

/// Loads per user in `time` (at least one).
fn loads_in(time: Duration, period: Duration) -> u64 {
    (time.as_secs_f64() / period.as_secs_f64()).ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "# Commandstats\r\n\
        cmdstat_get:calls=120,usec=300,usec_per_call=2.50,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_evalsha:calls=30,usec=90,usec_per_call=3.00,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_ping:calls=500,usec=100,usec_per_call=0.20,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_cluster|slots:calls=4,usec=40,usec_per_call=10.00,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_client|setinfo:calls=6,usec=6,usec_per_call=1.00,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_info:calls=2,usec=50,usec_per_call=25.00,rejected_calls=0,failed_calls=0\r\n";

    #[test]
    fn commandstats_are_read_per_command() {
        let calls = command_calls(INFO);
        assert_eq!(calls["get"], 120);
        assert_eq!(calls["cluster|slots"], 4);
        assert_eq!(calls.len(), 6);
        assert!(is_housekeeping("cluster|slots") && is_housekeeping("info"));
        assert!(!is_housekeeping("get") && !is_housekeeping("publish"));
    }

    #[test]
    fn masters_share_the_calls_of_the_run_without_housekeeping() {
        let before = [command_calls(INFO), BTreeMap::new(), command_calls(INFO)];
        let mut busy = command_calls(INFO);
        *busy.get_mut("get").unwrap() += 60;
        *busy.get_mut("ping").unwrap() += 1000;
        let mut quiet = BTreeMap::new();
        quiet.insert("set".to_owned(), 20);
        quiet.insert("info".to_owned(), 9);
        let mut third = command_calls(INFO);
        *third.get_mut("evalsha").unwrap() += 20;
        let after = [busy, quiet, third];
        let masters = master_ops(&[7000, 7001, 7002], &before, &after);
        assert_eq!(
            masters.iter().map(|m| m.calls).collect::<Vec<_>>(),
            [60, 20, 20]
        );
        assert!((masters[0].share - 0.6).abs() < 1e-9);
        assert_eq!(masters[0].commands, [("get".to_owned(), 60)]);
        assert_eq!(masters[1].slots, "5461-10922");
        let idle = master_ops(&[1, 2, 3], &before, &before);
        assert!(idle.iter().all(|m| m.calls == 0 && m.share == 0.0));
    }

    fn run_with(runs: Vec<UserRun>, observations: Vec<Observation>) -> PhaseOutput {
        PhaseOutput {
            runs,
            observations,
            elapsed: Duration::from_secs(2),
        }
    }

    fn req(what: What, instance: usize, cache: CacheOutcome) -> Req {
        Req {
            what,
            instance,
            latency: Duration::from_millis(1),
            cache,
            ok: true,
        }
    }

    #[test]
    fn a_stale_read_fails_the_fleet_and_propagation_is_the_slowest_instance() {
        let user = UserRun {
            requests: vec![
                req(What::Read, 0, CacheOutcome::Hit),
                req(What::Read, 1, CacheOutcome::Hit),
                req(What::Read, 0, CacheOutcome::Miss),
                req(What::Write, 1, CacheOutcome::Bypass),
                req(What::Checked, 0, CacheOutcome::Miss),
            ],
            writes: 1,
            stale_ages: vec![Duration::from_millis(3)],
            writes_with_stale: 1,
            ..UserRun::default()
        };
        let observations = vec![
            Observation {
                seen_after: vec![
                    Some(Duration::from_millis(1)),
                    Some(Duration::from_millis(4)),
                ],
                requests: vec![req(What::Observer, 1, CacheOutcome::Hit)],
                errors: vec![],
            },
            Observation {
                seen_after: vec![Some(Duration::from_millis(1)), None],
                requests: vec![],
                errors: vec![],
            },
        ];
        let f = Figures::of(
            2,
            &run_with(vec![user], observations),
            &run_with(vec![], vec![]),
            vec![],
        );
        assert_eq!(
            (f.requests, f.reads, f.checked_reads, f.observer_reads),
            (6, 3, 1, 1)
        );
        assert_eq!(f.requests_per_instance, [3, 3]);
        assert!((f.hit_rate.unwrap() - 2.0 / 3.0).abs() < 1e-9);
        assert!((f.throughput - 3.0).abs() < 1e-9);
        assert_eq!(f.stale_reads, 1);
        assert_eq!(f.propagation_to_last.count, 1);
        assert_eq!(f.propagation_to_last.max_ms, 4.0);
        assert_eq!(f.not_converged, 1);
        assert_eq!(f.busiest_master_share, None);
        assert!(!f.passed());
        assert!(f.block().contains("STALE reads (must be 0)"));
        let clean = UserRun {
            requests: vec![req(What::Read, 0, CacheOutcome::Hit)],
            ..UserRun::default()
        };
        let f = Figures::of(
            1,
            &run_with(vec![clean], vec![]),
            &run_with(vec![], vec![]),
            vec![],
        );
        assert!(f.passed());
        assert!(table(&[f]).contains("| 1 | 1 |"));
    }

    #[test]
    fn titles_carry_the_fleet_and_the_write() {
        let shared = Shared {
            client: reqwest::Client::new(),
            urls: vec![],
            cache_name: "larder".into(),
            nonce: "0badcafe".into(),
            workload: Arc::new(Workload::new(&<Args as clap::Parser>::parse_from([
                "loadtests",
            ]))),
        };
        assert_eq!(shared.write_number(3, &shared.title(3, 17)), 17);
        assert_eq!(shared.write_number(4, &shared.title(3, 17)), 0);
        assert_eq!(shared.write_number(3, "Quarterly revenue review"), 0);
        let page =
            json!({"sessions": [{"id": 5, "title": shared.title(3, 2)}, {"id": 6, "title": "x"}]});
        let page = serde_json::to_vec(&page).unwrap();
        assert_eq!(title_of(&page, 5), Some(shared.title(3, 2)));
        assert_eq!(title_of(&page, 7), None);
    }
}
