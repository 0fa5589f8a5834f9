//! Warming the cache through the service: requests sent the way clients send them, so each
//! fills exactly the entry a client's request would find.

use std::{fmt, sync::Arc};

use http::{Request, Response, Uri};
use http_body::Body;
use tokio::{sync::Semaphore, task::JoinSet};
use tower_service::Service;

use crate::middleware::status::CACHE_STATUS;

/// What [`warm`] did with each request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WarmReport {
    /// Responses this warm-up stored (`Cache-Status: ...; stored`).
    pub stored: usize,
    /// Requests the cache already answered (`hit`).
    pub hits: usize,
    /// Requests answered but not stored, with why: their `Cache-Status` (`larder;
    /// fwd=bypass; detail=no-rule`, `...; detail=status`...), or their status code when the
    /// response has none (no cache layer on the path).
    pub not_stored: Vec<(Uri, String)>,
    /// Requests the service failed (an error, or a body that broke off), with the error.
    pub failed: Vec<(Uri, String)>,
}

/// Sends each of `requests` through `service`, at most `concurrency` at a time, and reads each
/// response to its end (a response is stored as its body streams). `service` is the one
/// clients reach: a whole axum `Router` (its authentication and other middleware included),
/// or the [`Cache`](crate::Cache) service itself. Give each request what a client would send:
/// the `Host` (it is part of the key unless
/// [`KeyOptions::ignore_authority`](crate::KeyOptions::ignore_authority)) and, on per-user
/// routes, the user's credentials. With
/// [`hide_cache_headers`](crate::CacheHandleBuilder::hide_cache_headers) there is no
/// `Cache-Status` to read: every answer is reported in `not_stored` with its status code.
///
/// ```
/// # async fn run() {
/// use std::time::Duration;
/// use axum::{Router, body::Body, routing::get};
/// use larder::{CacheHandle, Rule};
///
/// let cache = CacheHandle::in_memory();
/// let app: Router = Router::new().route(
///     "/report",
///     get(|| async { "the report" }).layer(cache.layer(Rule::new("report").ttl(Duration::from_secs(60)))),
/// );
/// let requests = ["/report"].map(|uri| {
///     http::Request::get(uri).header("host", "app.example").body(Body::empty()).unwrap()
/// });
/// let report = larder::warm(app, requests, 4).await;
/// assert_eq!(report.stored, 1);
/// # }
/// ```
pub async fn warm<S, B, ResBody, I>(service: S, requests: I, concurrency: usize) -> WarmReport
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: fmt::Display + Send + 'static,
    B: Send + 'static,
    ResBody: Body + Send + 'static,
    ResBody::Error: fmt::Display,
    I: IntoIterator<Item = Request<B>>,
{
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for request in requests {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            break;
        };
        let service = service.clone();
        tasks.spawn(async move {
            let uri = request.uri().clone();
            let outcome = send(service, request).await;
            drop(permit);
            (uri, outcome)
        });
    }
    let mut report = WarmReport::default();
    while let Some(joined) = tasks.join_next().await {
        let Ok((uri, outcome)) = joined else {
            continue;
        };
        match outcome {
            Ok(Outcome::Hit) => report.hits += 1,
            Ok(Outcome::Stored) => report.stored += 1,
            Ok(Outcome::NotStored(why)) => report.not_stored.push((uri, why)),
            Err(e) => report.failed.push((uri, e)),
        }
    }
    report
}

enum Outcome {
    Hit,
    Stored,
    NotStored(String),
}

async fn send<S, B, ResBody>(mut service: S, request: Request<B>) -> Result<Outcome, String>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: fmt::Display,
    ResBody: Body,
    ResBody::Error: fmt::Display,
{
    std::future::poll_fn(|cx| service.poll_ready(cx))
        .await
        .map_err(|e| e.to_string())?;
    let response = service.call(request).await.map_err(|e| e.to_string())?;
    // This cache's member is the last one (an upstream cache's come first).
    let status = response
        .headers()
        .get_all(CACHE_STATUS)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let code = response.status();
    let mut body = std::pin::pin!(response.into_body());
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        match frame {
            Ok(_) => {}
            Err(e) => return Err(format!("the body broke off: {e}")),
        }
    }
    Ok(match status {
        Some(s) if s.contains("; hit") => Outcome::Hit,
        Some(s) if s.contains("; stored") => Outcome::Stored,
        Some(s) => Outcome::NotStored(s),
        None => Outcome::NotStored(code.to_string()),
    })
}
