//! The tags of a stored response and of a write: the rule's templates, the handler's
//! [`TAGS_HEADER`], and the tag of the request's own path (RFC 9111 §4.4).

use http::{HeaderMap, HeaderName};

use crate::{
    reason::Uncacheable,
    rules::route::{Params, Route},
};

/// The response header in which a handler may name extra tags for its response
/// (comma-separated). The layer removes it before the response leaves.
pub const TAGS_HEADER: HeaderName = HeaderName::from_static("larder-tags");

/// The tags an entry carries: the rule's, the handler's, and its path's.
pub(crate) fn of_entry(
    route: &Route,
    scope: Option<&str>,
    params: &Params,
    handler: Vec<String>,
    path: &str,
) -> Result<Box<[Box<str>]>, Uncacheable> {
    let mut tags = Vec::with_capacity(route.rule.tags.len() + handler.len() + 1);
    for t in &route.rule.tags {
        match t.render(scope, params) {
            Some(tag) => tags.push(tag.into_boxed_str()),
            None => return Err(Uncacheable::TagUnresolved),
        }
    }
    tags.extend(handler.into_iter().map(String::into_boxed_str));
    tags.push(of_path(scope, path).into_boxed_str());
    Ok(tags.into_boxed_slice())
}

/// The tags a successful write invalidates: the handler's, the rule's, and its path's.
pub(crate) fn of_write(
    route: &Route,
    scope: Option<&str>,
    params: &Params,
    handler: Vec<String>,
    path: &str,
) -> Vec<String> {
    let mut tags = handler;
    for t in &route.rule.invalidates {
        match t.render(scope, params) {
            Some(tag) => tags.push(tag),
            None => {
                tracing::warn!(rule = %route.rule.name, "an invalidation tag could not be filled for this request")
            }
        }
    }
    tags.push(of_path(scope, path));
    tags
}

/// Removes the handler's tag header and returns its tags.
pub(crate) fn take_from_handler(headers: &mut HeaderMap) -> Vec<String> {
    let mut tags = Vec::new();
    while let Some(v) = headers.remove(TAGS_HEADER) {
        if let Ok(s) = v.to_str() {
            tags.extend(
                s.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned),
            );
        }
    }
    tags
}

/// The tag every stored response carries for its own path, so a write to the path
/// invalidates it (RFC 9111 §4.4). Scoped by user, so one user's write leaves others' entries.
pub(crate) fn of_path(scope: Option<&str>, path: &str) -> String {
    // As the key sees it: `%2f` and `%2F` are one path, and one tag.
    let path = crate::rules::key::normalize_percent(path);
    let scope = scope.unwrap_or("");
    let mut tag = String::with_capacity(16 + scope.len() + path.len());
    tag.push_str("larder:uri:");
    tag.push_str(&scope.len().to_string());
    tag.push(':');
    tag.push_str(scope);
    tag.push_str(&path);
    tag
}
