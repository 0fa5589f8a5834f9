//! Matching a request to its rule, and the per-rule state a layer keeps.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use http::{Extensions, Uri};

use crate::{CacheHandle, Rule, Rules, stats::RouteStats};

/// The request's path as the application routes it. Under axum's `Router::nest` the nested
/// router's services see the path without the nest's prefix; keys, path tags and rules use
/// the full path the client asked (axum's `OriginalUri`), so two nested routers never share
/// entries. Elsewhere, the URI's path.
pub(crate) fn request_path<'a>(uri: &'a Uri, extensions: &'a Extensions) -> &'a str {
    #[cfg(feature = "axum")]
    if let Some(original) = extensions.get::<axum::extract::OriginalUri>() {
        return original.0.path();
    }
    let _ = extensions;
    uri.path()
}

/// The route pattern axum matched (`MatchedPath`), with the nest's prefix.
fn matched_pattern(extensions: &Extensions) -> Option<&str> {
    #[cfg(feature = "axum")]
    if let Some(matched) = extensions.get::<axum::extract::MatchedPath>() {
        return Some(matched.as_str());
    }
    let _ = extensions;
    None
}

/// The most patterns a per-route layer keeps a compiled matcher for (one route usually has
/// one; past this they are compiled per request).
const MATCHERS: usize = 64;

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
    /// Whether a response of this rule that varies was stored: its requests then look for
    /// their URL among those known to vary (see [`crate::engine::variants`]).
    pub(crate) varies: Arc<AtomicBool>,
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
    /// pattern supplies path parameters. Without one, the pattern axum matched does, through
    /// matchers compiled once per pattern.
    One(
        Arc<Route>,
        Option<matchit::Router<()>>,
        dashmap::DashMap<Box<str>, matchit::Router<()>>,
    ),
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
            .map(|mut rule| {
                // The handle's defaults, for what the rule leaves unset.
                let shared = &handle.shared;
                if rule.ttl.is_none() {
                    rule.ttl = shared.default_ttl;
                }
                if let (false, Some(default)) = (rule.key_explicit, &shared.default_key) {
                    rule.key = default.clone().with_rule_parts(&rule.key);
                }
                // A per-route layer without a pattern takes its parameters from the route
                // axum matched, known only per request.
                rule.validate(
                    cfg!(feature = "axum") && selection == Selection::One && rule.pattern.is_none(),
                );
                let needs_params = rule
                    .tags
                    .iter()
                    .chain(&rule.invalidates)
                    .any(|t| t.vars().any(|v| v != "user"));
                Arc::new(Route {
                    stats: handle.shared.stats.route(&rule.name),
                    max_body_size: rule.max_body_size.unwrap_or(handle.shared.max_body_size),
                    needs_params,
                    audit_gate: AuditGate::default(),
                    varies: Default::default(),
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
            return RouteSet::One(route, matcher, dashmap::DashMap::new());
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

    /// The rule of a request and, when its templates need them, the path parameters. `None`
    /// when no rule's pattern matches, or a single rule's own pattern does not.
    ///
    /// [`Rules`] patterns are matched against the full path ([`request_path`]) and, under
    /// `Router::nest`, against the path the nested router sees if the full one matches none:
    /// patterns may be written either way. A per-route layer with no pattern of its own takes
    /// its parameters from the route axum matched (`MatchedPath`); with neither, templates
    /// that name parameters cannot be filled and the response is not stored
    /// (`detail=tag-unresolved`).
    pub(crate) fn find(&self, uri: &Uri, extensions: &Extensions) -> Option<(&Arc<Route>, Params)> {
        let path = request_path(uri, extensions);
        match self {
            RouteSet::One(route, _, _) if !route.needs_params => Some((route, Vec::new())),
            RouteSet::One(route, Some(m), _) => {
                let matched = at_either(m, path, uri.path())?;
                Some((route, collect(&matched.params)))
            }
            RouteSet::One(route, None, compiled) => {
                let params = matched_pattern(extensions)
                    .and_then(|pattern| params_of(compiled, pattern, path))
                    .unwrap_or_default();
                Some((route, params))
            }
            RouteSet::Many(router, routes) => {
                let matched = at_either(router, path, uri.path())?;
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

    /// The rule of a request, as [`find`](Self::find) picks it, without collecting parameters.
    pub(crate) fn rule(&self, uri: &Uri, extensions: &Extensions) -> Option<&Rule> {
        match self {
            RouteSet::One(route, Some(m), _) if route.needs_params => {
                at_either(m, request_path(uri, extensions), uri.path())?;
                Some(&route.rule)
            }
            RouteSet::One(route, _, _) => Some(&route.rule),
            RouteSet::Many(router, routes) => {
                let matched = at_either(router, request_path(uri, extensions), uri.path())?;
                Some(&routes[*matched.value].rule)
            }
        }
    }
}

/// `full` matched by `router`, or (under a nest) `nested`, the path the nested router sees.
fn at_either<'r, 'p, T>(
    router: &'r matchit::Router<T>,
    full: &'p str,
    nested: &'p str,
) -> Option<matchit::Match<'r, 'p, &'r T>> {
    match router.at(full) {
        Ok(m) => Some(m),
        Err(_) if full != nested => router.at(nested).ok(),
        Err(_) => None,
    }
}

/// The parameters of `path` under axum's `pattern`, through a matcher compiled once per
/// pattern (at most [`MATCHERS`] kept).
fn params_of(
    compiled: &dashmap::DashMap<Box<str>, matchit::Router<()>>,
    pattern: &str,
    path: &str,
) -> Option<Params> {
    if let Some(m) = compiled.get(pattern) {
        return m.at(path).ok().map(|matched| collect(&matched.params));
    }
    let mut m = matchit::Router::new();
    m.insert(pattern, ()).ok()?;
    let params = m.at(path).ok().map(|matched| collect(&matched.params));
    if compiled.len() < MATCHERS {
        compiled.insert(pattern.into(), m);
    }
    params
}

fn collect(params: &matchit::Params<'_, '_>) -> Params {
    params
        .iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}
