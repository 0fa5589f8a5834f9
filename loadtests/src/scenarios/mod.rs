//! The goose transactions of the scenarios, and what they share: the phase being run (its
//! workload, schedule and records), each user's state, pacing, and one helper that sends a
//! named request and records it.
//!
//! Users are paced on a fixed schedule: load `k` of user `u` is due at `epoch + offset(u) +
//! k * period` (offsets spread evenly over one period, or all zero with `--burst`), and a
//! slow server cannot delay the next load's start time. A load's latency is measured from when it was due (as wrk2 does),
//! so coordinated omission is accounted for: a load that starts late because the previous
//! one was slow carries that wait in its latency.

pub(crate) mod consistency;
pub(crate) mod dashboard;
pub(crate) mod fleet;
pub(crate) mod outage;
pub(crate) mod pagination;
pub(crate) mod readback;

use std::{
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use goose::{goose::GooseResponse, prelude::*};
use reqwest::header::{AUTHORIZATION, HeaderName};

use crate::{
    record::{CacheOutcome, Kind, Recorder, Sample},
    workload::{PlannedWrite, Workload},
};

/// One phase: a warm-up or a measured run, against one host.
#[derive(Debug)]
pub(crate) struct Phase {
    /// The workload (the same in every phase of a benchmark).
    pub(crate) workload: Arc<Workload>,
    /// Where the records go.
    pub(crate) recorder: Recorder,
    /// When the first load is due.
    pub(crate) epoch: Instant,
    /// Picks this phase's random numbers (the warm-up's differ from the run's, but the
    /// baseline's and the cached run's are the same).
    pub(crate) salt: u64,
    /// The cache's name in `Cache-Status`.
    pub(crate) cache_name: String,
    /// Whether `/api/user/me` must answer the id of the key's account (true for the
    /// in-process dashboard's `demo-key-{n}`).
    pub(crate) check_user_ids: bool,
}

static PHASE: RwLock<Option<Arc<Phase>>> = RwLock::new(None);

/// Makes `phase` the one users join from now on.
pub(crate) fn set_phase(phase: Arc<Phase>) {
    *PHASE.write().unwrap_or_else(|e| e.into_inner()) = Some(phase);
}

fn current_phase() -> Result<Arc<Phase>, Box<TransactionError>> {
    PHASE
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .ok_or_else(|| Box::new(TransactionError::Custom("no phase is set".into())))
}

/// What one user keeps between transactions.
#[derive(Clone)]
pub(crate) struct UserState {
    pub(crate) phase: Arc<Phase>,
    /// 0-based goose user number.
    pub(crate) user: usize,
    /// `Bearer demo-key-N`.
    pub(crate) auth: String,
    /// The account number (`N`).
    pub(crate) account: u64,
    /// Whether another user has the same account (then exact freshness checks relax).
    pub(crate) shared: bool,
    /// This user's random numbers for this phase.
    pub(crate) rng: fastrand::Rng,
    /// The current iteration (dashboard load), from 0.
    pub(crate) iteration: u64,
    /// When the next pacing transaction should wake up.
    pub(crate) wake_at: Instant,
    /// When the current iteration's load was due.
    pub(crate) due: Instant,
    /// When this user's first load was due.
    pub(crate) first_due: Instant,
    /// Ids of the sessions on the last page 1 read.
    pub(crate) session_ids: Vec<i64>,
    /// The writes to make before the next load.
    pub(crate) planned: Vec<PlannedWrite>,
    /// What the next reads must show after this user's writes.
    pub(crate) expect: Expectations,
}

/// Freshness checks owed after a write: the next read of the same data must show it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Expectations {
    /// After a message: the profile's credits at most this.
    pub(crate) credits_at_most: Option<i64>,
    /// After connecting a platform: the connector status shows it connected.
    pub(crate) connected: Option<String>,
}

impl UserState {
    /// The due time of iteration `k`.
    pub(crate) fn due_time(&self, k: u64) -> Instant {
        self.first_due + self.phase.workload.period * u32::try_from(k).unwrap_or(u32::MAX)
    }
}

/// `on_start`: takes this user's account and key from the workload and schedules its
/// first load.
pub(crate) async fn login(user: &mut GooseUser) -> TransactionResult {
    let phase = current_phase()?;
    let index = user.weighted_users_index;
    let workload = &phase.workload;
    if index >= workload.accounts.len() {
        return Err(Box::new(TransactionError::Custom(format!(
            "user {index} has no account in a workload of {} users",
            workload.accounts.len()
        ))));
    }
    let rng = workload.rng(index, phase.salt);
    let first_due = phase.epoch + workload.offset(index);
    let state = UserState {
        auth: format!("Bearer {}", workload.key(index)),
        account: workload.accounts[index],
        shared: workload.sharing[index] > 1,
        user: index,
        rng,
        iteration: 0,
        wake_at: first_due,
        due: first_due,
        first_due,
        session_ids: Vec::new(),
        planned: Vec::new(),
        expect: Expectations::default(),
        phase,
    };
    user.set_session_data(state);
    Ok(())
}

/// Sleeps until the user's next scheduled instant (a load, or a write between loads).
pub(crate) async fn pace(user: &mut GooseUser) -> TransactionResult {
    let wake_at = state(user)?.wake_at;
    tokio::time::sleep_until(wake_at.into()).await;
    Ok(())
}

/// The user's state, set by [`login`].
pub(crate) fn state(user: &GooseUser) -> Result<&UserState, Box<TransactionError>> {
    user.get_session_data::<UserState>()
        .ok_or_else(|| Box::new(TransactionError::Custom("user has no state".into())))
}

/// The user's state, mutably.
pub(crate) fn state_mut(user: &mut GooseUser) -> Result<&mut UserState, Box<TransactionError>> {
    user.get_session_data_mut::<UserState>()
        .ok_or_else(|| Box::new(TransactionError::Custom("user has no state".into())))
}

/// A response, read to its last byte, not yet recorded.
pub(crate) struct Reply {
    request: goose::metrics::GooseRequestMetric,
    name: &'static str,
    kind: Kind,
    sent: Instant,
    latency: Duration,
    first_byte: Duration,
    /// What the cache said.
    pub(crate) cache: CacheOutcome,
    /// The body, when the status was the expected one.
    pub(crate) body: Option<Vec<u8>>,
    error: Option<String>,
}

impl Reply {
    /// The body as JSON, when there is one.
    pub(crate) fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(self.body.as_deref()?).ok()
    }

    /// Whether the status was the expected one and the body arrived.
    pub(crate) fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// Sends one request as this user (its bearer key, an optional JSON body), reads the body
/// to the end, and returns it unrecorded, so that checks on the body can still fail it.
pub(crate) async fn send(
    user: &mut GooseUser,
    method: GooseMethod,
    path: &str,
    name: &'static str,
    json: Option<serde_json::Value>,
    expect: u16,
) -> Result<Reply, Box<TransactionError>> {
    let (auth, cache_name) = {
        let st = state(user)?;
        (st.auth.clone(), st.phase.cache_name.clone())
    };
    let kind = if matches!(method, GooseMethod::Get) {
        Kind::Read
    } else {
        Kind::Write
    };
    let mut builder = user
        .get_request_builder(&method, path)?
        .header(AUTHORIZATION, auth);
    if let Some(json) = &json {
        builder = builder.json(json);
    }
    let request = GooseRequest::builder()
        .method(method)
        .path(path)
        .name(name)
        .expect_status_code(expect)
        .set_request_builder(builder)
        .build();
    let started = Instant::now();
    let GooseResponse { request, response } = user.request(request).await?;
    let first_byte = started.elapsed();
    let (cache, body, error) = match response {
        Ok(response) => {
            let status = response.status();
            let cache = CacheOutcome::parse(
                response
                    .headers()
                    .get(HeaderName::from_static("cache-status"))
                    .and_then(|v| v.to_str().ok()),
                &cache_name,
            );
            match response.bytes().await {
                Ok(body) if status.as_u16() == expect => (cache, Some(body.to_vec()), None),
                Ok(body) => {
                    let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
                    (
                        cache,
                        None,
                        Some(format!("{name}: status {status}: {text}")),
                    )
                }
                Err(e) => (cache, None, Some(format!("{name}: reading the body: {e}"))),
            }
        }
        Err(e) => (CacheOutcome::None, None, Some(format!("{name}: {e}"))),
    };
    Ok(Reply {
        request,
        name,
        kind,
        sent: started,
        latency: started.elapsed(),
        first_byte,
        cache,
        body,
        error,
    })
}

/// Records `reply`, failing it (in goose's metrics too) with `check` when a check on its
/// body failed. Returns whether it succeeded.
pub(crate) fn record(user: &mut GooseUser, mut reply: Reply, check: Option<String>) -> bool {
    let error = reply.error.take().or(check);
    if let Some(error) = &error
        && reply.request.success
    {
        // Always an `Err`; the request is marked failed in goose's metrics.
        let _ = user.set_failure(error, &mut reply.request, None, None);
    }
    let Ok(st) = state(user) else { return false };
    let ok = error.is_none();
    st.phase.recorder.push(Sample {
        name: reply.name,
        kind: reply.kind,
        iteration: st.iteration,
        sent: reply.sent,
        latency: reply.latency,
        first_byte: reply.first_byte,
        cache: reply.cache,
        ok,
        error,
    });
    ok
}

/// Records a whole load of the current iteration: from when it was due to `end`.
pub(crate) fn record_load(
    user: &GooseUser,
    name: &'static str,
    started: Instant,
    end: Instant,
    ok: bool,
) {
    let Ok(st) = state(user) else { return };
    st.phase.recorder.push(Sample {
        name,
        kind: Kind::Load,
        iteration: st.iteration,
        sent: started,
        latency: end.saturating_duration_since(st.due),
        first_byte: started.saturating_duration_since(st.due),
        cache: CacheOutcome::None,
        ok,
        error: None,
    });
}

/// Ends an iteration: the next load is due one period after this one.
pub(crate) fn next_iteration(st: &mut UserState) {
    st.iteration += 1;
    st.due = st.due_time(st.iteration);
    st.wake_at = st.due;
}
