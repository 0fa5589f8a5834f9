//! The tower [`Layer`] that wraps a service in a [`Cache`].

use std::sync::Arc;

use tower_layer::Layer;

use crate::{BodyKeyLayer, Cache, CacheHandle, Rules, body_key::KeyedRoutes, route::RouteSet};

/// Applies a [`Cache`] to a service. Built by [`CacheHandle::layer`] (one rule) or
/// [`CacheHandle::layer_with`] (rules by path); cheap to clone.
#[derive(Debug, Clone)]
pub struct CacheLayer {
    handle: CacheHandle,
    routes: Arc<RouteSet>,
}

impl CacheLayer {
    pub(crate) fn new(handle: CacheHandle, rules: Rules, single: bool) -> Self {
        let routes = Arc::new(RouteSet::new(&handle, rules, single));
        CacheLayer { handle, routes }
    }
}

impl CacheLayer {
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
