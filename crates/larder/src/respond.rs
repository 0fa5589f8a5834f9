//! Responses built from stored entries: hits, `304 Not Modified`, and `HEAD`.

use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};

use crate::{Entry, body::CacheBody, policy, status::CacheStatus};

/// The fields a 304 carries: those a 200 would have that describe the representation
/// (RFC 9110 §15.4.5).
const NOT_MODIFIED_FIELDS: [header::HeaderName; 6] = [
    header::CACHE_CONTROL,
    header::CONTENT_LOCATION,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::VARY,
];

/// Serves `entry` to a request with `method` and `headers`.
pub(crate) fn from_entry<B>(
    entry: &Entry,
    method: &Method,
    headers: &HeaderMap,
    now_ms: u64,
    status: CacheStatus,
    x_cache: bool,
) -> Response<CacheBody<B>> {
    // RFC 9111 §5.1: Age is generated on reuse, replacing any upstream value.
    let age = HeaderValue::from(entry.age(now_ms).as_secs());
    // RFC 9111 §4.3.2: answer If-None-Match from a stored 200.
    if entry.status == StatusCode::OK && policy::if_none_match(headers, &entry.etag) {
        let mut out = HeaderMap::with_capacity(8);
        for name in NOT_MODIFIED_FIELDS {
            for v in entry.headers.get_all(&name) {
                out.append(name.clone(), v.clone());
            }
        }
        if !out.contains_key(header::ETAG) {
            out.insert(header::ETAG, entry.etag.clone());
        }
        out.insert(header::AGE, age);
        status.apply(&mut out, x_cache);
        let mut response = Response::new(CacheBody::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        *response.headers_mut() = out;
        return response;
    }
    let mut out = entry.headers.clone();
    out.insert(header::AGE, age);
    status.apply(&mut out, x_cache);
    // RFC 9110 §9.3.2: HEAD gets the GET response's fields and no content.
    let body = if method == Method::HEAD {
        CacheBody::empty()
    } else {
        CacheBody::replay(entry.body.clone(), entry.trailers.clone())
    };
    let mut response = Response::new(body);
    *response.status_mut() = entry.status;
    *response.headers_mut() = out;
    response
}

/// A response with no body, for `only-if-cached` misses (RFC 9111 §5.2.1.7).
pub(crate) fn gateway_timeout<B>(status: CacheStatus, x_cache: bool) -> Response<CacheBody<B>> {
    let mut response = Response::new(CacheBody::empty());
    *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    status.apply(response.headers_mut(), x_cache);
    response
}
