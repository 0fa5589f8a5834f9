//! The audit, after a hit: for a sampled hit of a rule with [`Rule::audit`](crate::Rule::audit),
//! the service is asked again in the background, as the client's request did, and its answer
//! is compared with the entry served. A difference is a stale entry: some write changed what
//! the route returns without invalidating one of its tags, the commonest bug of a cache's
//! rules. It is counted per rule and the first ones are logged.
//!
//! A write that *does* invalidate may land while an audit runs: the origin then answers with
//! the new data while the entry was right when served. So a difference counts only if, a store
//! deadline after the answer, no invalidation has happened since the audit started and the
//! store still serves the entry that was compared; otherwise the audit is inconclusive.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response, request::Parts};
use http_body::Body;
use http_body_util::BodyExt;
use tower_service::Service;

use crate::{
    CacheHandle, CacheKey, Entry,
    phase::lookup,
    rules::{policy, route::Route},
};

/// How many mismatches of a rule are logged; the rest are counted.
const LOGGED: u64 = 10;

/// Whether this hit of `route` is audited: drawn with the rule's fraction, one audit of the
/// rule at a time, at a bounded rate. Costs one branch when the rule has no audit.
pub(crate) fn due(route: &Route, now_ms: u64) -> bool {
    match route.rule.audit {
        None => false,
        Some(fraction) => fastrand::f64() < fraction && route.audit_gate.try_open(now_ms),
    }
}

/// Asks the service again for the request `parts` + `body` that `entry` answered, in the
/// background, and compares. `inner` is the service made ready for this request.
pub(crate) fn spawn<S, ReqBody, B>(
    handle: &CacheHandle,
    route: &Arc<Route>,
    key: &CacheKey,
    entry: Arc<Entry>,
    mut inner: S,
    mut parts: Parts,
    body: ReqBody,
) where
    S: Service<Request<ReqBody>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
{
    // The entry answers GET; the origin must send the whole representation to compare.
    if parts.method == Method::HEAD {
        parts.method = Method::GET;
    }
    policy::strip_validators(&mut parts.headers);
    let (handle, route, key) = (handle.clone(), Arc::clone(route), key.clone());
    let started = handle.shared.store.stamp();
    tokio::spawn(async move {
        // The service's error type need not be `Send`: let it go before the next await.
        let answer = inner.call(Request::from_parts(parts, body)).await.ok();
        if let Some(response) = answer {
            let status = response.status();
            if let Some(body) = read_whole(response.into_body(), route.max_body_size).await {
                let differs = status != entry.status || body != entry.body;
                if !differs || still_served(&handle, &route, &key, &entry, started).await {
                    count(&route, &key, &entry, status, differs);
                }
            }
        }
        route.audit_gate.close();
    });
}

/// Whether, a store deadline from now, no invalidation has happened since `started` and the
/// store still serves `entry` for `key`: a difference is then the rule's, not a write's that
/// landed during the audit.
async fn still_served(
    handle: &CacheHandle,
    route: &Route,
    key: &CacheKey,
    entry: &Entry,
    started: u64,
) -> bool {
    let shared = &handle.shared;
    tokio::time::sleep(shared.breaker.timeout()).await;
    let now = lookup::read(shared, &route.stats, key, None).await;
    let same = now.is_some_and(|e| e.born == entry.born && e.stored_at == entry.stored_at);
    same && shared.store.stamp() == started
}

/// An audit's outcome: counted, and the first mismatches logged.
fn count(route: &Route, key: &CacheKey, entry: &Entry, status: http::StatusCode, mismatch: bool) {
    let n = route.stats.audited(mismatch);
    if mismatch && n <= LOGGED {
        tracing::warn!(
            rule = %route.rule.name,
            key = %key,
            tags = ?entry.tags,
            served = entry.status.as_u16(),
            origin = status.as_u16(),
            "cache audit: the service answers differently from the entry just served; a write \
             may change this route without invalidating one of its tags"
        );
    }
}

/// The whole body, or `None` when it fails or outgrows `limit` (nothing to compare then).
async fn read_whole<B: Body<Data = Bytes>>(body: B, limit: usize) -> Option<Bytes> {
    let mut body = std::pin::pin!(body);
    let mut out = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.ok()?.into_data() {
            if out.len() + data.len() > limit {
                return None;
            }
            out.extend_from_slice(&data);
        }
    }
    Some(out.freeze())
}
