//! Warm-up through the routes: the requests a user's client sends when it opens the
//! dashboard, sent through the whole service (authentication, the cache layer, the handlers)
//! with [`larder::warm`], so each fills exactly the entry that client's request will find.
//!
//! `POST /_cache/warmup` (admin) warms the users and assistants it names; `--warmup LIST`
//! (`CACHE_WARMUP`, seed 003) warms a list of users at start-up. The dashboard's keys leave the
//! host out (`KeyOptions::ignore_authority`): a warm-up fills what clients read whatever name
//! they reach the service by.

use axum::{
    Json, Router,
    body::Body,
    http::{HeaderMap, HeaderValue, Request, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::json;

use crate::{Dashboard, error::ApiError, seed::CATEGORIES};

/// Most users or assistants one warm-up call may name.
pub const MAX_WARMUP: usize = 100;
/// Requests sent at once (the database pool is shared with clients).
const CONCURRENCY: usize = 4;

/// The body of `POST /_cache/warmup`: users whose pages to warm, and assistants (by id,
/// `asst_<user>`) whose data and schema to warm. Either may be left out.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupBody {
    /// Users (1..=1000).
    #[serde(default)]
    pub users: Vec<i64>,
    /// Assistant ids.
    #[serde(default)]
    pub assistants: Vec<String>,
}

/// The pages a user's client reads when it opens the dashboard: profile, connectors, the
/// five metric categories, chat statistics, the first page of sessions, the combined
/// dashboard, and the user's assistant with its schema. (A search depends on what is typed:
/// it is not warmed.)
pub fn user_pages(user: i64) -> Vec<String> {
    let mut pages = vec![
        "/api/user/me".to_owned(),
        "/api/connectors/status".to_owned(),
    ];
    pages.extend(CATEGORIES.iter().map(|c| format!("/api/metrics/{c}")));
    pages.extend([
        "/api/chat/stats".to_owned(),
        "/api/chat/sessions".to_owned(),
        "/api/dashboard".to_owned(),
    ]);
    pages.extend(assistant_pages(&format!("asst_{user}")));
    pages
}

/// An assistant's data and schema.
pub fn assistant_pages(assistant: &str) -> [String; 2] {
    [
        format!("/api/assistants/{assistant}"),
        format!("/api/assistants/{assistant}/schema"),
    ]
}

/// The owner of assistant `asst_<user>`.
fn owner(assistant: &str) -> Option<i64> {
    assistant.strip_prefix("asst_")?.parse().ok()
}

/// An API key of `user`, as their client sends it.
fn key_of(app: &Dashboard, user: i64) -> Option<&str> {
    app.keys
        .iter()
        .filter(|(_, u)| **u == user)
        .map(|(k, _)| k.as_str())
        .min()
}

/// The requests that warm `users` and `assistants`, each with its owner's key and `host`
/// (what clients send; the dashboard's keys leave it out, `KeyOptions::ignore_authority`,
/// so any host fills the entries every client reads). Unknown users and assistants are an
/// error.
pub fn requests(
    app: &Dashboard,
    users: &[i64],
    assistants: &[String],
    host: Option<&HeaderValue>,
) -> Result<Vec<Request<Body>>, ApiError> {
    let mut pages: Vec<(i64, String)> = Vec::new();
    for &user in users {
        pages.extend(user_pages(user).into_iter().map(|p| (user, p)));
    }
    for assistant in assistants {
        let user = owner(assistant).ok_or(ApiError::NotFound("assistant"))?;
        pages.extend(assistant_pages(assistant).into_iter().map(|p| (user, p)));
    }
    let mut requests = Vec::with_capacity(pages.len() + 1);
    // The public announcements, once.
    requests.push(request("/api/announcements", None, host)?);
    for (user, page) in pages {
        let key = key_of(app, user).ok_or(ApiError::NotFound("user"))?;
        requests.push(request(&page, Some(key), host)?);
    }
    Ok(requests)
}

fn request(
    uri: &str,
    key: Option<&str>,
    host: Option<&HeaderValue>,
) -> Result<Request<Body>, ApiError> {
    let mut builder = Request::get(uri);
    if let Some(key) = key {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    if let Some(host) = host {
        builder = builder.header(header::HOST, host);
    }
    builder
        .body(Body::empty())
        .map_err(|e| ApiError::BadRequest(format!("cannot warm {uri}: {e}")))
}

/// Warms `users` and `assistants` through `service` (the dashboard's routes); the report as
/// JSON: what was stored, already cached, answered without being stored (and why), failed.
pub async fn run(
    app: &Dashboard,
    service: Router,
    users: &[i64],
    assistants: &[String],
    host: Option<&HeaderValue>,
) -> Result<serde_json::Value, ApiError> {
    let requests = requests(app, users, assistants, host)?;
    let sent = requests.len();
    let report = larder::warm(service, requests, CONCURRENCY).await;
    let listed = |list: &[(axum::http::Uri, String)]| {
        list.iter()
            .map(|(uri, why)| json!({ "uri": uri.to_string(), "why": why }))
            .collect::<Vec<_>>()
    };
    Ok(json!({
        "users": users.len(),
        "assistants": assistants.len(),
        "requests": sent,
        "stored": report.stored,
        "already_cached": report.hits,
        "not_stored": listed(&report.not_stored),
        "failed": listed(&report.failed),
    }))
}

/// `POST /_cache/warmup` (admin): `{"users": [1, 2], "assistants": ["asst_3"]}`; the
/// warm-up's requests carry this request's `Host`.
pub async fn handle(
    app: Dashboard,
    service: Router,
    headers: HeaderMap,
    body: Option<Json<WarmupBody>>,
) -> Response {
    if let Err(denied) = crate::ops::admin(&app, &headers) {
        return denied.into_response();
    }
    let Some(Json(body)) = body else {
        return ApiError::BadRequest(
            "expected a JSON body: {\"users\": [1, 2, 3], \"assistants\": [\"asst_1\"]}".into(),
        )
        .into_response();
    };
    let users_ok = body
        .users
        .iter()
        .all(|u| (1..=crate::seed::USERS).contains(u));
    if body.users.len() > MAX_WARMUP || body.assistants.len() > MAX_WARMUP || !users_ok {
        return ApiError::BadRequest(format!(
            "name at most {MAX_WARMUP} `users` in 1..={} and {MAX_WARMUP} `assistants`",
            crate::seed::USERS
        ))
        .into_response();
    }
    if app.cache.is_none() {
        return Json(json!({ "stored": 0, "reason": "no cache (--store none)" })).into_response();
    }
    match run(
        &app,
        service,
        &body.users,
        &body.assistants,
        headers.get(header::HOST),
    )
    .await
    {
        Ok(report) => Json(report).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Reads `--warmup`: user ids and ranges, comma-separated (`1-50,77`).
pub fn parse_users(list: &str) -> Result<Vec<i64>, String> {
    let mut users = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (from, to) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let parse = |s: &str| {
            s.parse::<i64>()
                .ok()
                .filter(|u| (1..=crate::seed::USERS).contains(u))
                .ok_or_else(|| format!("`{s}` is not a user in 1..={}", crate::seed::USERS))
        };
        let (from, to) = (parse(from)?, parse(to)?);
        if from > to {
            return Err(format!("`{part}`: the range is empty"));
        }
        users.extend(from..=to);
    }
    users.sort_unstable();
    users.dedup();
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::parse_users;

    #[test]
    fn warmup_lists_take_ids_and_ranges() {
        assert_eq!(parse_users("1-3, 7,2").unwrap(), [1, 2, 3, 7]);
        assert_eq!(parse_users("").unwrap(), Vec::<i64>::new());
        assert!(parse_users("0").is_err());
        assert!(parse_users("5-2").is_err());
        assert!(parse_users("1-x").is_err());
    }
}
