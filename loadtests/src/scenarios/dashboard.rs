//! The `dashboard` scenario: each user loads its dashboard the way the seeds' front ends do
//! (profile, connector status, five metric categories, chat statistics, sessions pages
//! 1..3, one request after the other), then sometimes writes (posts a message, renames a
//! session, connects a platform), which invalidates part of what it just read. The next
//! read of that data must show the write: a stale one is an error.

use std::time::Instant;

use example_dashboard::seed::{CATEGORIES, PROVIDERS};
use goose::prelude::*;
use serde_json::json;

use super::{next_iteration, record, record_load, send, state, state_mut};
use crate::workload::{PlannedWrite, WriteKind};

/// The reads of one dashboard load, in order: `(path, name)`.
pub(crate) const READS: [(&str, &str); 11] = [
    ("/api/user/me", "profile"),
    ("/api/connectors/status", "connector status"),
    ("/api/metrics/finance", "metrics finance"),
    ("/api/metrics/marketing", "metrics marketing"),
    ("/api/metrics/operations", "metrics operations"),
    ("/api/metrics/sales", "metrics sales"),
    ("/api/metrics/strategy", "metrics strategy"),
    ("/api/chat/stats", "chat stats"),
    ("/api/chat/sessions?page=1", "sessions page 1"),
    ("/api/chat/sessions?page=2", "sessions page 2"),
    ("/api/chat/sessions?page=3", "sessions page 3"),
];

// The workload's arithmetic (writes per load) counts these reads, five of them metrics.
const _: () = assert!(READS.len() == crate::workload::DASHBOARD_READS && CATEGORIES.len() == 5);

/// The name of a whole load in the records.
pub(crate) const LOAD: &str = "dashboard load";

/// Loads the dashboard (11 reads), records each read and the whole load, and plans the
/// writes to make before the next load.
pub(crate) async fn load_dashboard(user: &mut GooseUser) -> TransactionResult {
    let started = Instant::now();
    let mut ok = true;
    for (path, name) in READS {
        let reply = send(user, GooseMethod::Get, path, name, None, 200).await?;
        let check = match name {
            "profile" => check_profile(state_mut(user)?, reply.json()),
            "connector status" => check_connectors(state_mut(user)?, reply.json()),
            "sessions page 1" => {
                if let Some(body) = reply.json() {
                    state_mut(user)?.session_ids = session_ids(&body);
                }
                None
            }
            _ => None,
        };
        ok &= record(user, reply, check);
    }
    record_load(user, LOAD, started, Instant::now(), ok);
    let st = state_mut(user)?;
    let workload = std::sync::Arc::clone(&st.phase.workload);
    st.planned = workload.plan_writes(&mut st.rng);
    let now = Instant::now();
    st.wake_at = match st.planned.first() {
        None => now,
        Some(first) => {
            // Between now and the next load, keeping a quarter of the period free so the
            // write ends before the next load is due.
            let next_due = st.due_time(st.iteration + 1);
            let window = next_due
                .saturating_duration_since(now)
                .saturating_sub(workload.period / 4);
            now + window.mul_f64(first.at)
        }
    };
    Ok(())
}

/// Makes the writes planned by the last load, then schedules the next load.
pub(crate) async fn write(user: &mut GooseUser) -> TransactionResult {
    let planned = std::mem::take(&mut state_mut(user)?.planned);
    for w in planned {
        write_one(user, w).await?;
    }
    next_iteration(state_mut(user)?);
    Ok(())
}

async fn write_one(user: &mut GooseUser, w: PlannedWrite) -> TransactionResult {
    let name = w.kind.name();
    let st = state(user)?;
    let session = (!st.session_ids.is_empty())
        .then(|| st.session_ids[(w.pick % st.session_ids.len() as u64) as usize]);
    let (tag, iteration) = (st.user, st.iteration);
    let (path, body, expect) = match (w.kind, session) {
        (WriteKind::Message, Some(sid)) => (
            format!("/api/chat/sessions/{sid}/messages"),
            json!({ "content": format!("How did revenue move this week? (load test user {tag}, load {iteration})") }),
            201,
        ),
        (WriteKind::Rename, Some(sid)) => (
            format!("/api/chat/sessions/{sid}"),
            json!({ "title": format!("Renamed by load test user {tag}, load {iteration}") }),
            200,
        ),
        (WriteKind::Connect, _) => {
            let provider = PROVIDERS[(w.pick % PROVIDERS.len() as u64) as usize];
            (format!("/api/connectors/{provider}"), json!({}), 200)
        }
        (WriteKind::Message | WriteKind::Rename, None) => {
            // Page 1 failed to load: the write cannot be made, which is an error of the run.
            let reply = send(
                user,
                GooseMethod::Get,
                "/api/chat/sessions?page=1",
                "sessions page 1",
                None,
                200,
            )
            .await?;
            record(user, reply, Some(format!("{name}: no session to write to")));
            return Ok(());
        }
    };
    let method = match w.kind {
        WriteKind::Rename => GooseMethod::Put,
        _ => GooseMethod::Post,
    };
    let reply = send(user, method, &path, name, Some(body), expect).await?;
    if reply.ok() {
        let answer = reply.json();
        let st = state_mut(user)?;
        match w.kind {
            WriteKind::Message => {
                st.expect.credits_at_most = answer
                    .as_ref()
                    .and_then(|a| a.get("credits_remaining"))
                    .and_then(serde_json::Value::as_i64);
            }
            WriteKind::Connect => {
                st.expect.connected =
                    Some(PROVIDERS[(w.pick % PROVIDERS.len() as u64) as usize].to_owned());
            }
            WriteKind::Rename => {}
        }
    }
    record(user, reply, None);
    Ok(())
}

/// The profile must be the key's account, and after a message its credits must show it.
fn check_profile(st: &mut super::UserState, body: Option<serde_json::Value>) -> Option<String> {
    let body = body?;
    if st.phase.check_user_ids
        && body.get("id").and_then(serde_json::Value::as_i64) != Some(st.account as i64)
    {
        return Some(format!(
            "profile: the body is not account {}'s: {body}",
            st.account
        ));
    }
    let credits = body.get("credits").and_then(serde_json::Value::as_i64);
    let owed = st.expect.credits_at_most.take();
    if let (Some(at_most), Some(credits)) = (owed, credits)
        && credits > at_most
    {
        return Some(format!(
            "profile: stale after a message: {credits} credits, the message left {at_most}"
        ));
    }
    None
}

/// After connecting a platform, the connector status must show it connected.
fn check_connectors(st: &mut super::UserState, body: Option<serde_json::Value>) -> Option<String> {
    let body = body?;
    let provider = st.expect.connected.take()?;
    let connected = body
        .get("connectors")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| {
            c.get("provider").and_then(serde_json::Value::as_str) == Some(&provider)
                && c.get("connected").and_then(serde_json::Value::as_bool) == Some(true)
        });
    (!connected).then(|| format!("connector status: stale after connecting {provider}"))
}

/// The ids of the sessions on a page.
pub(crate) fn session_ids(page: &serde_json::Value) -> Vec<i64> {
    page.get("sessions")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("id").and_then(serde_json::Value::as_i64))
        .collect()
}
