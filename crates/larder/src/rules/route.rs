//! Matching a request to its rule, and the per-rule state a layer keeps.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use crate::{CacheHandle, Rule, Rules, stats::RouteStats};

/// A rule ready to serve: its settings, its counters, its body limit.
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) rule: Rule,
    pub(crate) stats: Arc<RouteStats>,
    pub(crate) max_body_size: usize,
    /// Whether any template needs path parameters (if not, matching skips collecting them).
    pub(crate) needs_params: bool,
    /// Lets one audit of this rule run at a time, at most [`AUDITS_PER_SECOND`].
    pub(crate) audit_gate: AuditGate,
}

/// The most audits of one rule started in a second.
pub(crate) const AUDITS_PER_SECOND: u64 = 10;

/// One audit of a rule in flight at a time, and a bounded rate of them.
#[derive(Debug, Default)]
pub(crate) struct AuditGate {
    in_flight: AtomicBool,
    /// When the last audit started, in milliseconds of the cache's clock.
    last_ms: AtomicU64,
}

impl AuditGate {
    /// Takes the gate at `now_ms` if no audit runs and the last one started long enough ago.
    pub(crate) fn try_open(&self, now_ms: u64) -> bool {
        let last = self.last_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) < 1000 / AUDITS_PER_SECOND {
            return false;
        }
        if self.in_flight.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.last_ms.store(now_ms, Ordering::Relaxed);
        true
    }

    /// Lets the next audit in.
    pub(crate) fn close(&self) {
        self.in_flight.store(false, Ordering::Release);
    }
}

/// The rules of one layer.
#[derive(Debug)]
pub(crate) enum RouteSet {
    /// One rule for every request through the layer (per-route layering); an optional
    /// pattern supplies path parameters.
    One(Arc<Route>, Option<matchit::Router<()>>),
    /// Rules picked by path.
    Many(matchit::Router<usize>, Vec<Arc<Route>>),
}

pub(crate) type Params = Vec<(String, String)>;

/// How a layer picks the rule of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Selection {
    /// The layer has one rule, for every request through it.
    One,
    /// The layer picks a rule by path.
    ByPath,
}

impl RouteSet {
    pub(crate) fn new(handle: &CacheHandle, rules: Rules, selection: Selection) -> Self {
        let routes: Vec<Arc<Route>> = rules
            .rules
            .into_iter()
            .map(|rule| {
                rule.validate();
                let needs_params = rule.pattern.is_some()
                    && rule
                        .tags
                        .iter()
                        .chain(&rule.invalidates)
                        .any(|t| t.vars().any(|v| v != "user"));
                Arc::new(Route {
                    stats: handle.shared.stats.route(&rule.name),
                    max_body_size: rule.max_body_size.unwrap_or(handle.shared.max_body_size),
                    needs_params,
                    audit_gate: AuditGate::default(),
                    rule,
                })
            })
            .collect();
        if selection == Selection::One {
            let route = routes.into_iter().next().expect("one rule");
            let matcher = route.rule.pattern.as_deref().map(|p| {
                let mut m = matchit::Router::new();
                m.insert(p, ())
                    .unwrap_or_else(|e| panic!("larder: invalid path `{p}`: {e}"));
                m
            });
            return RouteSet::One(route, matcher);
        }
        let mut router = matchit::Router::new();
        for (i, r) in routes.iter().enumerate() {
            let p = r
                .rule
                .pattern
                .as_deref()
                .expect("Rules::route sets a pattern");
            router
                .insert(p, i)
                .unwrap_or_else(|e| panic!("larder: invalid or conflicting path `{p}`: {e}"));
        }
        RouteSet::Many(router, routes)
    }

    /// The rule for `path` and, when its templates need them, the path parameters.
    /// `Err` when a single rule's pattern does not match (its templates cannot be filled).
    pub(crate) fn find(&self, path: &str) -> Option<(&Arc<Route>, Params)> {
        match self {
            RouteSet::One(route, None) => Some((route, Vec::new())),
            RouteSet::One(route, Some(m)) => {
                if !route.needs_params {
                    return Some((route, Vec::new()));
                }
                let matched = m.at(path).ok()?;
                Some((route, collect(&matched.params)))
            }
            RouteSet::Many(router, routes) => {
                let matched = router.at(path).ok()?;
                let route = &routes[*matched.value];
                let params = if route.needs_params {
                    collect(&matched.params)
                } else {
                    Vec::new()
                };
                Some((route, params))
            }
        }
    }
}

impl RouteSet {
    /// The rule for `path`, as [`find`](Self::find) picks it, without collecting parameters.
    pub(crate) fn rule(&self, path: &str) -> Option<&Rule> {
        match self {
            RouteSet::One(route, Some(m)) if route.needs_params => {
                m.at(path).ok()?;
                Some(&route.rule)
            }
            RouteSet::One(route, _) => Some(&route.rule),
            RouteSet::Many(router, routes) => Some(&routes[*router.at(path).ok()?.value].rule),
        }
    }
}

fn collect(params: &matchit::Params<'_, '_>) -> Params {
    params
        .iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}
