//! The tower [`Layer`] that wraps a service in a [`Cache`].

use std::sync::Arc;

use tower_layer::Layer;

use crate::{
    BodyKeyLayer, Cache, CacheHandle, Rule, Rules,
    body_key::KeyedRoutes,
    rules::route::{RouteSet, Selection},
};

/// Applies a [`Cache`] to a service. Built by [`CacheHandle::layer`] (one rule) or
/// [`CacheHandle::layer_with`] (rules by path); cheap to clone.
#[derive(Debug, Clone)]
pub struct CacheLayer {
    handle: CacheHandle,
    routes: Arc<RouteSet>,
}

impl CacheHandle {
    /// A layer that caches every request through it by `rule`: the form for one axum route
    /// (`get(handler).layer(cache.layer(rule))`).
    ///
    /// Tag templates may name the route's path parameters (`item:{id}` on `/items/{id}`)
    /// without repeating the path in [`Rule::path`]: with the `axum` feature (on by default)
    /// the layer reads the route axum matched (`MatchedPath`). Elsewhere (a tonic server, a
    /// plain tower stack), give the rule its [`path`](Rule::path); a template it cannot fill
    /// leaves the response unstored (`Cache-Status: ...; detail=tag-unresolved`).
    ///
    /// ```
    /// use std::time::Duration;
    /// use axum::{Router, extract::Path, routing::get};
    /// use larder::{CacheHandle, Rule};
    ///
    /// let cache = CacheHandle::in_memory();
    /// let app: Router = Router::new().route(
    ///     "/items/{id}",
    ///     get(|Path(id): Path<u32>| async move { format!("item {id}") })
    ///         .layer(cache.layer(Rule::new("item").ttl(Duration::from_secs(60)).tag("item:{id}"))),
    /// );
    /// # let _ = app;
    /// ```
    ///
    /// # Panics
    ///
    /// When a tag template names `{user}` without a user scope, or a path parameter that
    /// the rule's own [`path`](Rule::path) does not have.
    pub fn layer(&self, rule: Rule) -> CacheLayer {
        CacheLayer::new(self.clone(), Rules { rules: vec![rule] }, Selection::One)
    }

    /// A layer that picks a rule by request path: the form for a whole router or a tonic
    /// server. Requests matching no rule pass through (`detail=no-rule`).
    ///
    /// Under axum's `Router::nest`, the nested router's services see paths without the nest's
    /// prefix; with the `axum` feature (on by default) the layer matches patterns against the
    /// full path first, then the stripped one, so patterns may be written either way, and
    /// keys and path tags always use the full path (two nested routers never share entries).
    ///
    /// ```
    /// use std::time::Duration;
    /// use axum::{Router, routing::get};
    /// use larder::{CacheHandle, Rule, Rules, UserScope};
    ///
    /// let cache = CacheHandle::in_memory();
    /// let rules = Rules::new()
    ///     .route("/api/items/{id}", Rule::new("item").ttl(Duration::from_secs(60)).tag("item:{id}"))
    ///     .route(
    ///         "/api/me",
    ///         Rule::new("me")
    ///             .ttl(Duration::from_secs(300))
    ///             .user_scope(UserScope::header(http::HeaderName::from_static("x-user-id"))),
    ///     )
    ///     .route("/api/items", Rule::new("items").invalidates(["items"]));
    /// let api = Router::new()
    ///     .route("/items/{id}", get(|| async { "an item" }))
    ///     .route("/me", get(|| async { "me" }))
    ///     .layer(cache.layer_with(rules));
    /// let app: Router = Router::new().nest("/api", api);
    /// # let _ = app;
    /// ```
    ///
    /// # Panics
    ///
    /// As [`layer`](Self::layer), and when two patterns conflict.
    pub fn layer_with(&self, rules: Rules) -> CacheLayer {
        CacheLayer::new(self.clone(), rules, Selection::ByPath)
    }
}

impl CacheLayer {
    fn new(handle: CacheHandle, rules: Rules, selection: Selection) -> Self {
        let routes = Arc::new(RouteSet::new(&handle, rules, selection));
        CacheLayer { handle, routes }
    }

    /// A [`BodyKeyLayer`] that reads the bodies of the `POST`s this layer caches by body
    /// ([`Rule::cache_posts_by_body`](crate::Rule::cache_posts_by_body)) and no others. Put it
    /// in front of this layer; see [`body_key`](crate::body_key).
    pub fn body_key_layer(&self) -> BodyKeyLayer<KeyedRoutes> {
        BodyKeyLayer::with_predicate(KeyedRoutes::new(Arc::clone(&self.routes)))
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = Cache<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Cache::new(inner, self.handle.clone(), Arc::clone(&self.routes))
    }
}
