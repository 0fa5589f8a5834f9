//! Phase 1, classify: whether the cache may answer a request at all, and under which key.
//!
//! Decided from the request alone, before any store call: a write is forwarded and then
//! invalidates; a read the rule covers gets its key; anything else bypasses the cache with a
//! [`Bypass`] reason.

use std::time::Duration;

use http::{HeaderMap, Method, header, request::Parts};

use crate::{
    CacheKey, RequestBodyDigest,
    handle::{CacheState, Reloads},
    middleware::consistency,
    reason::Bypass,
    rules::{
        key::KeyInput,
        policy::{self, RequestDirectives},
        route::{self, Route},
    },
};

/// What the cache does with a request.
pub(crate) enum Class {
    /// Not cached: forwarded untouched.
    Bypass(Bypass),
    /// A write: forwarded, and when it succeeds its tags are invalidated before it is answered.
    Write { scope: Option<String> },
    /// A read the store may answer.
    Read(ReadRequest),
    /// A read while the store is unavailable, on a store that may still answer it from this
    /// process's copy (see `Store::read_during_outage`); otherwise it bypasses the cache.
    Outage(CacheKey),
}

/// A read the store may answer.
pub(crate) struct ReadRequest {
    pub(crate) key: CacheKey,
    pub(crate) scope: Option<String>,
    pub(crate) directives: RequestDirectives,
    pub(crate) intent: Intent,
    /// The client's consistency token: it has seen the invalidation of this stamp.
    pub(crate) after: Option<u64>,
    /// The request carries credentials on a rule that is neither user-scoped nor shared:
    /// only an entry its response declared `public` or `s-maxage` may answer it, it neither
    /// leads nor follows a flight, and its response is stored only if declared so (§3.5).
    pub(crate) credentialed: bool,
}

/// Whether the store is read for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Intent {
    /// Look the key up.
    Lookup,
    /// A reload (`no-cache`, `max-age=0`) with [`Reloads::Honor`]: ask the origin, and store.
    Reload,
}

/// Classifies a request that `route` covers.
#[inline]
pub(crate) fn classify(shared: &CacheState, route: &Route, parts: &Parts) -> Class {
    // Under `cache_posts_by_body`, a POST is a read keyed by the digest of its body.
    let digest = if parts.method == Method::POST && route.rule.posts_by_body {
        match parts.extensions.get::<RequestBodyDigest>() {
            Some(digest) => Some(digest),
            None => return Class::Bypass(Bypass::BodyNotKeyed),
        }
    } else {
        None
    };
    if digest.is_none() && parts.method != Method::GET && parts.method != Method::HEAD {
        if !is_write(&parts.method) {
            return Class::Bypass(Bypass::Method);
        }
        let scope = route.rule.scope.as_ref().and_then(|s| s.scope(parts));
        return Class::Write { scope };
    }
    if route.rule.bypass_if.as_ref().is_some_and(|p| p.test(parts)) {
        return Class::Bypass(Bypass::Predicate);
    }
    // A Range request wants part of a representation, and 206s are never stored.
    if parts.headers.contains_key(header::RANGE) {
        return Class::Bypass(Bypass::Range);
    }
    // A GET with content ("fat GET") could change the response without changing the key.
    if digest.is_none() && has_content(&parts.headers) {
        return Class::Bypass(Bypass::RequestBody);
    }
    let (scope, credentialed) = match &route.rule.scope {
        Some(s) => match s.scope(parts) {
            Some(user) => (Some(user), false),
            None => return Class::Bypass(Bypass::NoUser),
        },
        None if route.rule.shared => (None, false),
        // RFC 9111 §3.5: a response to a request with credentials is for that user only,
        // unless it says it may be shared.
        None => (
            None,
            parts.headers.contains_key(header::AUTHORIZATION)
                || parts.headers.contains_key(header::COOKIE),
        ),
    };
    let directives = policy::request_directives(&parts.headers);
    // Reloads are honoured only when configured: by default a client cannot make the origin
    // do work the cache was put there to save.
    let reload = directives.no_cache || directives.max_age == Some(Duration::ZERO);
    let forced = route
        .rule
        .refresh_if
        .as_ref()
        .is_some_and(|p| p.test(parts));
    let refresh = forced || (reload && shared.reloads == Reloads::Honor);
    // The store is failing (or invalidations wait to be replayed): go straight to the
    // service, with no store call and no wait.
    if !shared.breaker.closed() {
        // The degraded mode answers only what a lookup could: not a request with credentials
        // on a rule that may not share with it, nor one whose client saw an invalidation (its
        // token), nor one that asks for a refresh.
        let plain = digest.is_none()
            && !credentialed
            && !refresh
            && consistency::token(&parts.headers).is_none();
        if plain && shared.store.serves_during_outage() {
            let key = key(shared, route, parts, scope.as_deref(), None);
            return Class::Outage(variant(shared, route, key, parts));
        }
        return Class::Bypass(Bypass::StoreUnavailable);
    }

    let key = key(shared, route, parts, scope.as_deref(), digest);
    let key = variant(shared, route, key, parts);
    let intent = if refresh {
        Intent::Reload
    } else {
        Intent::Lookup
    };
    Class::Read(ReadRequest {
        key,
        scope,
        directives,
        intent,
        after: consistency::token(&parts.headers),
        credentialed,
    })
}

/// The key of a read: the digest of a POST's body stands for its content.
#[inline]
pub(crate) fn key(
    shared: &CacheState,
    route: &Route,
    parts: &Parts,
    scope: Option<&str>,
    digest: Option<&RequestBodyDigest>,
) -> CacheKey {
    route.rule.key.build(&KeyInput {
        namespace: &shared.namespace,
        // A stored GET answers HEAD (RFC 9110 §9.3.2); a HEAD never stores. A POST's
        // entry answers only the same POST.
        method: if digest.is_some() {
            &Method::POST
        } else {
            &Method::GET
        },
        authority: authority(parts),
        path: route::request_path(&parts.uri, &parts.extensions),
        query: parts.uri.query(),
        headers: &parts.headers,
        scope,
        body: digest.map(RequestBodyDigest::as_bytes),
        request: Some(parts),
    })
}

/// The key of the request's variant, when its URL is known to vary (an atomic load for a
/// rule whose responses never did).
#[inline]
fn variant(shared: &CacheState, route: &Route, key: CacheKey, parts: &Parts) -> CacheKey {
    if route.varies.load(std::sync::atomic::Ordering::Relaxed) {
        shared.variants.select(key, &parts.headers)
    } else {
        key
    }
}

/// Unsafe methods (RFC 9110 §9.2.1) are the writes that invalidate.
fn is_write(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

fn has_content(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

fn authority(parts: &Parts) -> Option<&str> {
    parts.uri.authority().map(|a| a.as_str()).or_else(|| {
        parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}
