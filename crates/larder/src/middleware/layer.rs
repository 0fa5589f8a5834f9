//! The tower [`Layer`] that wraps a service in a [`Cache`].

use std::sync::Arc;

use http::{Method, request::Parts};
use tower_layer::Layer;

use crate::{
    BodyKeyLayer, Cache, CacheHandle, CacheKey, RequestBodyDigest, Rule, Rules, StoreError,
    body_key::KeyedRoutes,
    phase::classify,
    rules::{
        route::{self, Route, RouteSet, Selection},
        tags,
    },
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

    /// The key this layer would store the response to `request` under (the request's head:
    /// `Request::into_parts().0`, or one built with `Request::get(url).body(())`), or `None`
    /// when no rule covers it or its rule's user scope names no user for it. The key is that
    /// of a `GET` (a stored `GET` also answers `HEAD`); a `POST` cached by body needs the
    /// [`RequestBodyDigest`] extension a [`BodyKeyLayer`] adds.
    ///
    /// What goes into a key: the handle's namespace, the method, the authority (`Host`, unless
    /// [`KeyOptions::ignore_authority`](crate::KeyOptions::ignore_authority)), the path, the
    /// query as the rule's [`KeyOptions`](crate::KeyOptions) keep it, the headers it varies
    /// on, the user, and the application's key parts. So build the request as clients send it,
    /// `Host` included, with the full path. (Under `Router::nest`, a request built by hand
    /// carries no `OriginalUri`: a layer whose patterns are written without the nest's prefix
    /// then matches only the path as the nested router sees it, so give it that path, or write
    /// the patterns with the prefix.)
    pub fn key_for(&self, request: &Parts) -> Option<CacheKey> {
        let (route, scope) = self.route_and_user(request)?;
        let digest = (request.method == Method::POST && route.rule.posts_by_body)
            .then(|| request.extensions.get::<RequestBodyDigest>())
            .flatten();
        let shared = &self.handle.shared;
        Some(classify::key(
            shared,
            route,
            request,
            scope.as_deref(),
            digest,
        ))
    }

    /// Invalidates what this layer stored for `request`'s URL, as a successful write to it
    /// would (RFC 9111 §4.4): every stored response of its path, whatever its query or
    /// variant, for the request's user on a user-scoped rule, for everyone otherwise. It is an
    /// invalidation like [`CacheHandle::invalidate_tags`]: a fill that started before it
    /// cannot store what it hid, it reaches the other instances (the backplane, the token),
    /// and it refills what [`Rule::refill_after_write`] covers. Returns `Ok(false)` when no
    /// rule covers the request, or its rule's user scope names no user for it.
    ///
    /// ```
    /// # async fn purge(layer: larder::CacheLayer) -> Result<(), larder::StoreError> {
    /// let (request, ()) = http::Request::get("https://shop.example/api/items/7")
    ///     .body(())
    ///     .unwrap()
    ///     .into_parts();
    /// layer.invalidate_request(&request).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn invalidate_request(&self, request: &Parts) -> Result<bool, StoreError> {
        let Some((_, scope)) = self.route_and_user(request) else {
            return Ok(false);
        };
        let path = route::request_path(&request.uri, &request.extensions);
        let tag = tags::of_path(scope.as_deref(), path);
        self.handle.invalidate_tags([tag]).await?;
        Ok(true)
    }

    /// The route of `request` and its user (`None` on a rule without a user scope); `None`
    /// when no rule covers it, or its rule's user scope names no user for it.
    fn route_and_user(&self, request: &Parts) -> Option<(&Arc<Route>, Option<String>)> {
        let (route, _) = self.routes.find(&request.uri, &request.extensions)?;
        let user = match &route.rule.scope {
            Some(s) => Some(s.scope(request)?),
            None => None,
        };
        Some((route, user))
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = Cache<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Cache::new(inner, self.handle.clone(), Arc::clone(&self.routes))
    }
}
