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
    /// # Panics
    ///
    /// When a tag template names `{user}` without a user scope, or a path parameter that
    /// the rule's path does not have.
    pub fn layer(&self, rule: Rule) -> CacheLayer {
        CacheLayer::new(self.clone(), Rules { rules: vec![rule] }, Selection::One)
    }

    /// A layer that picks a rule by request path: the form for a whole router or a tonic
    /// server. Requests matching no rule pass through.
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
