//! The tower [`Layer`] that wraps a service in a [`Cache`].

use std::sync::Arc;

use tower_layer::Layer;

use crate::{Cache, CacheHandle, Rules, route::RouteSet};

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

impl<S> Layer<S> for CacheLayer {
    type Service = Cache<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Cache::new(inner, self.handle.clone(), Arc::clone(&self.routes))
    }
}
