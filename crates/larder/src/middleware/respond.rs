//! Responses built from stored entries: hits, `304 Not Modified`, and `HEAD`.

use std::sync::OnceLock;

use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};

use crate::{
    Entry,
    middleware::{
        body::CacheBody,
        status::{CACHE_STATUS, CacheStatus, XCache},
    },
    rules::policy,
};

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

/// The `Age` value of `secs`: made once for the process below 1,024 s (see
/// [`numbered`](crate::middleware::status::numbered)), formatted above.
fn age_value(secs: u64) -> HeaderValue {
    static AGES: OnceLock<Box<[HeaderValue]>> = OnceLock::new();
    crate::middleware::status::numbered(&AGES, "", secs).unwrap_or_else(|| HeaderValue::from(secs))
}

/// Serves `entry` to a request with `method` and `headers`.
pub(crate) fn from_entry<B>(
    entry: &Entry,
    method: &Method,
    headers: &HeaderMap,
    now_ms: u64,
    status: CacheStatus,
    x_cache: XCache,
) -> Response<CacheBody<B>> {
    // RFC 9111 §5.1: Age is generated on reuse, replacing any upstream value.
    let age = age_value(entry.age(now_ms).as_secs());
    // RFC 9111 §4.3.2: answer If-None-Match from a stored 200.
    if entry.status == StatusCode::OK && policy::if_none_match(headers, &entry.etag) {
        let mut out = HeaderMap::with_capacity(8);
        for name in NOT_MODIFIED_FIELDS {
            for v in entry.headers.get_all(&name) {
                out.append(name.clone(), v.clone());
            }
        }
        if !out.contains_key(header::ETAG) && x_cache != XCache::Hidden {
            out.insert(header::ETAG, entry.etag.clone());
        }
        out.insert(header::AGE, age);
        status.apply(&mut out, x_cache);
        let mut response = Response::new(CacheBody::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        *response.headers_mut() = out;
        return response;
    }
    // Kept with the entry from its second hit (an in-process store's entry serves many).
    let mut out = entry.hit_headers.get_or_make(|| template(entry));
    // Both overwrite the template's placeholders in place.
    out.insert(header::AGE, age);
    status.fill(&mut out, x_cache);
    let body = entry.body.clone();
    full(method, entry.status, out, body, entry.trailers.as_ref())
}

/// A full response: `headers` and, unless the request is a `HEAD` (RFC 9110 §9.3.2: the GET
/// response's fields and no content), `body` and `trailers`.
fn full<B>(
    method: &Method,
    code: StatusCode,
    headers: HeaderMap,
    body: bytes::Bytes,
    trailers: Option<&HeaderMap>,
) -> Response<CacheBody<B>> {
    let body = if method == Method::HEAD {
        CacheBody::empty()
    } else {
        CacheBody::replay(body, trailers)
    };
    let mut response = Response::new(body);
    *response.status_mut() = code;
    *response.headers_mut() = headers;
    response
}

/// Serves an entry nobody else holds (just decoded from a network store): its headers and body
/// move into the response instead of being copied, as [`from_entry`] would.
pub(crate) fn from_owned_entry<B>(
    entry: Entry,
    method: &Method,
    headers: &HeaderMap,
    now_ms: u64,
    status: CacheStatus,
    x_cache: XCache,
) -> Response<CacheBody<B>> {
    if entry.status == StatusCode::OK && policy::if_none_match(headers, &entry.etag) {
        return from_entry(&entry, method, headers, now_ms, status, x_cache);
    }
    let age = age_value(entry.age(now_ms).as_secs());
    let Entry {
        status: code,
        headers: mut out,
        body,
        trailers,
        ..
    } = entry;
    out.insert(header::AGE, age);
    status.apply(&mut out, x_cache);
    full(method, code, out, body, trailers.as_ref())
}

/// The headers every full response from `entry` starts from: the stored headers, then `Age`
/// and this cache's `Cache-Status` member as placeholders, last.
fn template(entry: &Entry) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(entry.headers.len() + 2);
    for (name, value) in &entry.headers {
        out.append(name.clone(), value.clone());
    }
    out.insert(header::AGE, HeaderValue::from_static("0"));
    out.append(CACHE_STATUS, HeaderValue::from_static("larder"));
    out
}

/// A response of the service, passed through: the handler's tag header removed, `status`
/// written.
pub(crate) fn passed_through<B>(
    response: Response<B>,
    status: CacheStatus,
    x_cache: XCache,
) -> Response<CacheBody<B>> {
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(crate::TAGS_HEADER);
    status.apply(&mut parts.headers, x_cache);
    Response::from_parts(parts, CacheBody::stream(body))
}

/// A response with no body, for `only-if-cached` misses (RFC 9111 §5.2.1.7).
pub(crate) fn gateway_timeout<B>(status: CacheStatus, x_cache: XCache) -> Response<CacheBody<B>> {
    let mut response = Response::new(CacheBody::empty());
    *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    status.apply(response.headers_mut(), x_cache);
    response
}
