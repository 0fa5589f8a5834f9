//! The `pagination` scenario: each user walks pages 1..3 of its chat sessions, creates a
//! session, and walks them again. Every page read after the write must show it (the total
//! grew, and the new session leads page 1): one stale page, a page the write did not
//! invalidate, is an error.

use std::time::Instant;

use goose::prelude::*;
use serde_json::json;

use super::{dashboard::session_ids, next_iteration, record, record_load, send, state};

/// The pages walked, in order: `(path, name)`.
pub(crate) const PAGES: [(&str, &str); 3] = [
    ("/api/chat/sessions?page=1", "sessions page 1"),
    ("/api/chat/sessions?page=2", "sessions page 2"),
    ("/api/chat/sessions?page=3", "sessions page 3"),
];

/// The name of one walk (pages, write, pages) in the records.
pub(crate) const WALK: &str = "pagination walk";

/// The name of the write.
pub(crate) const CREATE: &str = "write: create session";

/// Walks the pages, creates a session, walks them again checking every page is fresh.
pub(crate) async fn walk_pages(user: &mut GooseUser) -> TransactionResult {
    let started = Instant::now();
    let mut ok = true;
    let mut total_before: Option<i64> = None;
    for (path, name) in PAGES {
        let reply = send(user, GooseMethod::Get, path, name, None, 200).await?;
        if let Some(total) = reply.json().as_ref().and_then(total) {
            total_before = Some(total_before.map_or(total, |t: i64| t.max(total)));
        }
        ok &= record(user, reply, None);
    }
    let (tag, iteration, shared) = {
        let st = state(user)?;
        (st.user, st.iteration, st.shared)
    };
    let title = format!("Load test user {tag}, walk {iteration}");
    let reply = send(
        user,
        GooseMethod::Post,
        "/api/chat/sessions",
        CREATE,
        Some(json!({ "title": title })),
        201,
    )
    .await?;
    let created = reply
        .json()
        .and_then(|s| s.get("id").and_then(serde_json::Value::as_i64));
    ok &= record(user, reply, None);
    for (page, (path, name)) in PAGES.into_iter().enumerate() {
        let reply = send(user, GooseMethod::Get, path, name, None, 200).await?;
        let check = reply.json().and_then(|body| {
            let seen = total(&body);
            if let (Some(before), Some(seen)) = (total_before, seen)
                && seen <= before
            {
                return Some(format!(
                    "{name}: stale after creating a session: total {seen}, was {before} before it"
                ));
            }
            // Another user on the same account may have created one since.
            if page == 0
                && !shared
                && let Some(id) = created
                && session_ids(&body).first() != Some(&id)
            {
                return Some(format!(
                    "{name}: stale after creating a session: session {id} does not lead page 1"
                ));
            }
            None
        });
        ok &= record(user, reply, check);
    }
    record_load(user, WALK, started, Instant::now(), ok);
    next_iteration(super::state_mut(user)?);
    Ok(())
}

fn total(page: &serde_json::Value) -> Option<i64> {
    page.get("total").and_then(serde_json::Value::as_i64)
}
