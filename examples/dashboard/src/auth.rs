//! Bearer-key authentication for `/api`, and the admin token for `/_cache` writes.

use std::{collections::HashMap, fmt, sync::Arc};

use axum::{
    extract::{Request, State},
    http::{HeaderMap, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::error::ApiError;

/// The authenticated user, inserted into the request's extensions before the cache layer
/// runs; the cache keys per-user routes by it (`UserScope::extension::<UserId>()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserId(pub i64);

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// API keys (`demo-key-<N>`) and their users.
pub type ApiKeys = Arc<HashMap<String, i64>>;

/// The bearer token of `Authorization: Bearer <token>`, if well formed.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Middleware: answers 401 (never cached: the cache is inside) unless the request carries a
/// known key, and records who it is for.
pub async fn require_user(
    State(keys): State<ApiKeys>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(user) = bearer(request.headers())
        .and_then(|token| keys.get(token))
        .copied()
    else {
        return ApiError::Unauthorized.into_response();
    };
    request.extensions_mut().insert(UserId(user));
    next.run(request).await
}

/// Whether `headers` carry the admin token. Compares in time independent of where the
/// first difference is.
pub fn is_admin(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = bearer(headers) else {
        return false;
    };
    given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn bearer_tokens_are_parsed_strictly() {
        assert_eq!(bearer(&headers("Bearer demo-key-1")), Some("demo-key-1"));
        assert_eq!(bearer(&headers("bearer demo-key-1")), Some("demo-key-1"));
        assert_eq!(bearer(&headers("Basic ZGVtbw==")), None);
        assert_eq!(bearer(&headers("Bearer ")), None);
        assert_eq!(bearer(&headers("demo-key-1")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn the_admin_token_must_match_exactly() {
        assert!(is_admin(&headers("Bearer s3cret"), "s3cret"));
        assert!(!is_admin(&headers("Bearer s3cre"), "s3cret"));
        assert!(!is_admin(&headers("Bearer s3cret!"), "s3cret"));
        assert!(!is_admin(&HeaderMap::new(), "s3cret"));
    }
}
