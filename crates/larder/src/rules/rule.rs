//! Per-route configuration: what a route caches, for how long, for whom, and what it invalidates.

use std::{fmt, sync::Arc, time::Duration};

use http::{HeaderName, StatusCode, request::Parts};

use crate::rules::key::{KeyOptions, Pagination};

/// How a route finds out which user a request is for.
///
/// A route that serves per-user data must declare one: its entries are then keyed by the
/// user, and requests carrying `Authorization` or `Cookie` may be cached. A request for which
/// the scope returns `None` is not cached at all.
#[derive(Clone)]
pub struct UserScope(Arc<ScopeFn>);

type ScopeFn = dyn Fn(&Parts) -> Option<String> + Send + Sync;

impl UserScope {
    /// The user is whatever `f` says, usually read from an extension that the authentication
    /// middleware inserted.
    pub fn from_fn<F>(f: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        UserScope(Arc::new(f))
    }

    /// The user is the value of a request header set by a trusted proxy or middleware
    /// (never one a client can choose, unless the header is itself the credential).
    pub fn header(name: HeaderName) -> Self {
        Self::from_fn(move |parts| {
            parts
                .headers
                .get(&name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
    }

    /// The user is an extension of type `T` (for example the authenticated user's id),
    /// formatted with `Display`.
    pub fn extension<T>() -> Self
    where
        T: fmt::Display + Send + Sync + 'static,
    {
        Self::from_fn(|parts| parts.extensions.get::<T>().map(ToString::to_string))
    }

    pub(crate) fn scope(&self, parts: &Parts) -> Option<String> {
        (self.0)(parts)
    }
}

/// A test of a request, for [`Rule::bypass_if`] and [`Rule::refresh_if`].
#[derive(Clone)]
pub(crate) struct Predicate(Arc<PredicateFn>);

type PredicateFn = dyn Fn(&Parts) -> bool + Send + Sync;

impl Predicate {
    pub(crate) fn test(&self, parts: &Parts) -> bool {
        (self.0)(parts)
    }
}

impl fmt::Debug for Predicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Predicate(..)")
    }
}

impl fmt::Debug for UserScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UserScope(..)")
    }
}

/// How one route is cached.
///
/// ```
/// use std::time::Duration;
/// use larder::{Pagination, Rule, UserScope};
///
/// let sessions = Rule::new("sessions")
///     .ttl(Duration::from_secs(300))
///     .user_scope(UserScope::header(http::HeaderName::from_static("x-user-id")))
///     .paginate(Pagination::new("page").per_page("per_page").defaults(1, 20))
///     .tag("sessions:{user}");
/// # let _ = sessions;
/// ```
///
/// A rule applies to every method that reaches it: `GET` and `HEAD` are served from the cache,
/// and any other method that succeeds (2xx or 3xx) invalidates the tags named with
/// [`invalidates`](Self::invalidates), the tags its handler names in the
/// [`TAGS_HEADER`](crate::TAGS_HEADER) response header, and the stored responses for its own
/// path (RFC 9111 §4.4), before its response is returned. With
/// [`cache_posts_by_body`](Self::cache_posts_by_body), `POST` is a read instead, keyed by its
/// body (gRPC unary calls, GraphQL queries).
#[derive(Debug, Clone)]
pub struct Rule {
    pub(crate) name: Arc<str>,
    pub(crate) pattern: Option<Box<str>>,
    pub(crate) ttl: Option<Duration>,
    pub(crate) override_ttl: bool,
    pub(crate) stale_while_revalidate: Option<Duration>,
    pub(crate) stale_if_error: Option<Duration>,
    pub(crate) tags: Vec<Template>,
    pub(crate) invalidates: Vec<Template>,
    pub(crate) scope: Option<UserScope>,
    pub(crate) key: KeyOptions,
    pub(crate) max_body_size: Option<usize>,
    pub(crate) early_refresh: Option<f64>,
    /// The fraction of hits audited against the service (see [`Rule::audit`]).
    pub(crate) audit: Option<f64>,
    pub(crate) posts_by_body: bool,
    pub(crate) refill: bool,
    /// One entry for every caller, credentials or not (see [`Rule::shared`]).
    pub(crate) shared: bool,
    /// Reads for which this is true go to the service uncached ([`Rule::bypass_if`]).
    pub(crate) bypass_if: Option<Predicate>,
    /// Reads for which this is true refresh their entry ([`Rule::refresh_if`]).
    pub(crate) refresh_if: Option<Predicate>,
    /// Whether [`Rule::key`] was called (if not, the handle's default key options apply).
    pub(crate) key_explicit: bool,
    /// TTLs of statuses cached without the response stating freshness ([`Rule::cache_status`]).
    pub(crate) status_ttls: Vec<(StatusCode, Duration)>,
}

impl Rule {
    /// A rule named `name` (the label of its statistics and metrics). Without a TTL it stores
    /// only responses that state their own freshness (`Cache-Control: max-age`, `Expires`).
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Rule {
            name: name.into(),
            pattern: None,
            ttl: None,
            override_ttl: false,
            stale_while_revalidate: None,
            stale_if_error: None,
            tags: Vec::new(),
            invalidates: Vec::new(),
            scope: None,
            key: KeyOptions::new(),
            max_body_size: None,
            early_refresh: None,
            audit: None,
            posts_by_body: false,
            refill: false,
            shared: false,
            bypass_if: None,
            refresh_if: None,
            key_explicit: false,
            status_ttls: Vec::new(),
        }
    }

    /// How long a response stays fresh when it does not say so itself.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Makes [`ttl`](Self::ttl) win over the response's `max-age`, `s-maxage` and `Expires`.
    /// `no-store`, `private` and `no-cache` still forbid storing.
    pub fn override_response_ttl(mut self) -> Self {
        self.override_ttl = true;
        self
    }

    /// Serve a stale entry for this long after it expires while one background request
    /// refreshes it, unless the response says otherwise (RFC 5861).
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.stale_while_revalidate = Some(window);
        self
    }

    /// Serve a stale entry for this long after it expires when the service fails
    /// (an error or a 5xx), unless the response says otherwise (RFC 5861).
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = Some(window);
        self
    }

    /// Adds a tag that stored responses carry. `{user}` is replaced by the user scope and
    /// `{name}` by the path parameter `name` of the rule's path (see [`Rules`]).
    pub fn tag(mut self, template: &str) -> Self {
        self.tags.push(Template::parse(template));
        self
    }

    /// Adds several tags at once; see [`tag`](Self::tag).
    pub fn tags<I, T>(mut self, templates: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        self.tags
            .extend(templates.into_iter().map(|t| Template::parse(t.as_ref())));
        self
    }

    /// Tags that a successful write through this rule invalidates, templated like
    /// [`tag`](Self::tag).
    pub fn invalidates<I, T>(mut self, templates: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        self.invalidates
            .extend(templates.into_iter().map(|t| Template::parse(t.as_ref())));
        self
    }

    /// Declares that this route answers every caller alike, signed in or not: requests
    /// carrying `Authorization` or `Cookie` are looked up and stored under the same key as
    /// anonymous ones, so one entry serves everybody (a public page, announcements, a
    /// catalogue in a browser app, where nearly every request carries a session cookie).
    ///
    /// The response still decides: one that says `private` or sets a cookie (`Set-Cookie`)
    /// is never stored, and `Vary: Cookie` keys each cookie apart. Without this setting (and
    /// without a [`user_scope`](Self::user_scope)), a request with credentials is served only
    /// an entry whose response said `public` or `s-maxage`, and its own response is stored
    /// only when it says so (RFC 9111 §3.5); everything else goes to the service uncached.
    ///
    /// ```
    /// use std::time::Duration;
    /// use larder::Rule;
    ///
    /// let announcements = Rule::new("announcements")
    ///     .ttl(Duration::from_secs(60))
    ///     .shared()
    ///     .tag("announcements");
    /// # let _ = announcements;
    /// ```
    ///
    /// Panics (when the layer is built) if the rule also has a user scope: a response is
    /// either the same for everyone or per user.
    pub fn shared(mut self) -> Self {
        self.shared = true;
        self
    }

    /// Sends the reads for which `f` is true to the service, uncached: neither looked up nor
    /// stored (`Cache-Status: larder; fwd=bypass; detail=bypass-if`). Writes still invalidate.
    /// For the requests of an admin tool, a debugging header, a preview mode:
    ///
    /// ```
    /// use larder::Rule;
    ///
    /// let rule = Rule::new("catalogue")
    ///     .bypass_if(|req| req.headers.contains_key("x-preview"));
    /// # let _ = rule;
    /// ```
    pub fn bypass_if<F>(mut self, f: F) -> Self
    where
        F: Fn(&Parts) -> bool + Send + Sync + 'static,
    {
        self.bypass_if = Some(Predicate(Arc::new(f)));
        self
    }

    /// Refreshes the entry of the reads for which `f` is true: the service is asked (as one
    /// flight with concurrent reads of the key) and its response replaces the entry
    /// (`Cache-Status: larder; fwd=request; stored`), whatever
    /// [`honor_request_no_cache`](crate::CacheHandleBuilder::honor_request_no_cache) says for
    /// everyone else. For an operator's "reload" button, or a trusted internal caller:
    ///
    /// ```
    /// use larder::Rule;
    ///
    /// #[derive(Clone)]
    /// struct Admin;
    ///
    /// let rule = Rule::new("report")
    ///     .refresh_if(|req| {
    ///         req.extensions.get::<Admin>().is_some()
    ///             && req.headers.get("cache-control").is_some_and(|v| v == "no-cache")
    ///     });
    /// # let _ = rule;
    /// ```
    pub fn refresh_if<F>(mut self, f: F) -> Self
    where
        F: Fn(&Parts) -> bool + Send + Sync + 'static,
    {
        self.refresh_if = Some(Predicate(Arc::new(f)));
        self
    }

    /// Adds a part of the key computed from the request (a tenant, a region): see
    /// [`KeyOptions::part`]. Unlike [`key`](Self::key), keeps the options set so far.
    pub fn key_part<F>(mut self, name: &str, value: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.key = self.key.part(name, value);
        self
    }

    /// Declares who a request is for; see [`UserScope`].
    pub fn user_scope(mut self, scope: UserScope) -> Self {
        self.scope = Some(scope);
        self
    }

    /// Sets which parts of a request make up its key (instead of the handle's
    /// [`default_key`](crate::CacheHandleBuilder::default_key)). A [`paginate`](Self::paginate)
    /// or [`key_part`](Self::key_part) called before is kept (`key`'s own pages win).
    pub fn key(mut self, key: KeyOptions) -> Self {
        // Pages and key parts set before (`paginate`, `key_part`) are kept.
        let earlier = std::mem::take(&mut self.key);
        self.key = key.keeping(&earlier);
        self.key_explicit = true;
        self
    }

    /// Caches responses with `status` for `ttl` when they state no freshness of their own: a
    /// `404` for 30 seconds, a `410` for a day, a `301` for longer than the rule's TTL. By
    /// default only 200, 203, 204, 300, 301 and 308 take the rule's TTL, and other statuses
    /// are stored only with `Cache-Control: max-age` (or `Expires`), so that an error page
    /// is not served to everyone because a rule had a TTL. A response that states its own
    /// freshness keeps it. Tags, path invalidation and `Vary` apply as to any entry, so a
    /// write that creates the missing resource should invalidate one of the 404's tags (a
    /// write to the same path does).
    ///
    /// ```
    /// use std::time::Duration;
    /// use http::StatusCode;
    /// use larder::Rule;
    ///
    /// let items = Rule::new("item")
    ///     .ttl(Duration::from_secs(300))
    ///     .cache_status(StatusCode::NOT_FOUND, Duration::from_secs(30))
    ///     .tag("items");
    /// # let _ = items;
    /// ```
    ///
    /// Panics (when the layer is built) for a status that is never stored: 1xx, 206, 304,
    /// 401, 403, 407 and 5xx but 501.
    pub fn cache_status(mut self, status: StatusCode, ttl: Duration) -> Self {
        self.status_ttls.retain(|(s, _)| *s != status);
        self.status_ttls.push((status, ttl));
        self
    }

    /// The TTL [`cache_status`](Self::cache_status) gives `status`, if any.
    pub(crate) fn status_ttl(&self, status: StatusCode) -> Option<Duration> {
        self.status_ttls
            .iter()
            .find(|(s, _)| *s == status)
            .map(|&(_, ttl)| ttl)
    }

    /// Declares the page parameters of a paginated list: each page is its own entry, and all
    /// pages carry the rule's tags, so one invalidation clears every page.
    pub fn paginate(mut self, pagination: Pagination) -> Self {
        self.key = self.key.paginate(pagination);
        self
    }

    /// The path template of this rule (`/api/chat/sessions/{sid}`), which names the path
    /// parameters that tags can use. [`Rules`] sets it for you.
    pub fn path(mut self, pattern: &str) -> Self {
        self.pattern = Some(pattern.into());
        self
    }

    /// Refresh hot entries in the background shortly before they expire (XFetch, with
    /// `beta` = 1: the longer the origin takes, the earlier), so a popular key never expires
    /// under load. One refresh per key runs at a time; requests keep getting the fresh entry.
    pub fn early_refresh(self) -> Self {
        self.early_refresh_beta(1.0)
    }

    /// [`early_refresh`](Self::early_refresh) with another `beta`: above 1 refreshes earlier.
    pub fn early_refresh_beta(mut self, beta: f64) -> Self {
        self.early_refresh = Some(beta.max(0.0));
        self
    }

    /// Refills this rule's entries after a write invalidates them: when a write (through a
    /// layer, or [`CacheHandle::invalidate_tags`](crate::CacheHandle::invalidate_tags))
    /// invalidates a tag that entries of this rule read in the last
    /// [`refill_window`](crate::CacheHandleBuilder::refill_window) carry, the layer sends each
    /// such `GET` through the cache again in the background, once the invalidation has
    /// completed, so the next client read is a hit instead of a trip to the service.
    ///
    /// A refill is a read like a client's: it shares the flight with concurrent reads of the
    /// same key, is stored by the same rules, and since it starts after the invalidation it
    /// can only store what the write left. The request is replayed from this process's memory
    /// with the headers the client sent (a user-scoped request keeps its user; nothing of it
    /// is written to a shared store), and refills are bounded
    /// ([`refill_limits`](crate::CacheHandleBuilder::refill_limits)). The instance that made
    /// the write refills; with a shared store the other instances find the refilled entry
    /// there. Each refill is one more call to the service (counted as a miss of the rule,
    /// and as `refills` in [`stats`](crate::CacheHandle::stats)). Off by default.
    pub fn refill_after_write(mut self) -> Self {
        self.refill = true;
        self
    }

    /// Audits this rule's invalidations in production: on a `fraction` of hits (0 to 1; at
    /// most one audit in flight per rule and 10 a second), the layer asks the service again in
    /// the background, as the client's request did, and compares its answer (status and body)
    /// with the entry it just served. A difference means the entry was stale: some write
    /// changed what this route returns without invalidating one of its tags. (A difference
    /// is not counted when an invalidation happened while the audit ran, or the store no
    /// longer serves that entry a store deadline later: a write that invalidated correctly
    /// landed meanwhile.) Each is counted
    /// (`audits` and `audit_mismatches` in [`stats`](crate::CacheHandle::stats),
    /// `larder_audit_mismatches_total{route}`) and the first ten per rule are logged with the
    /// key and the entry's tags. Routes whose bodies differ on every call (a timestamp, a
    /// random id) report every audit as a mismatch: audit the ones that do not.
    pub fn audit(mut self, fraction: f64) -> Self {
        self.audit = Some(fraction.clamp(0.0, 1.0));
        self
    }

    /// Makes `POST` a read: a `POST` whose body was read and hashed by a
    /// [`BodyKeyLayer`](crate::BodyKeyLayer) in front of the cache (it carries a
    /// [`RequestBodyDigest`](crate::RequestBodyDigest)) is looked up and stored like a `GET`,
    /// with the digest as part of its key, single-flighted, counted and marked with
    /// `Cache-Status` the same way. A `POST` without a digest (no body key layer, a body over
    /// its limit, a body that failed) goes to the service uncached, marked
    /// `fwd=bypass; detail=body-not-keyed`, and invalidates nothing. Other methods are unchanged.
    ///
    /// This is how gRPC unary reads are cached: every gRPC call is a `POST` to
    /// `/package.Service/Method` whose body is the request message. Give such rules only to
    /// methods that read; a write must stay under a rule without this setting to invalidate.
    pub fn cache_posts_by_body(mut self) -> Self {
        self.posts_by_body = true;
        self
    }

    /// Bodies larger than this pass through and are not stored (defaults to the handle's limit).
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.max_body_size = Some(bytes);
        self
    }

    /// Checks that every template variable can be filled. Panics on a misconfigured rule,
    /// like a router given an invalid path. `params_per_request`: the rule's path parameters
    /// are known only per request (a per-route layer without [`path`](Self::path) takes them
    /// from axum's `MatchedPath`), so they are not checked here.
    pub(crate) fn validate(&self, params_per_request: bool) {
        for (status, _) in &self.status_ttls {
            assert!(
                !crate::rules::policy::never_stored(*status),
                "larder rule `{}`: status {status} is never stored, cache_status cannot change that",
                self.name
            );
        }
        assert!(
            !(self.shared && self.scope.is_some()),
            "larder rule `{}`: a shared rule has no user scope (its one entry serves every caller)",
            self.name
        );
        let params = self.pattern.as_deref().map(path_params).unwrap_or_default();
        for t in self.tags.iter().chain(&self.invalidates) {
            for var in t.vars() {
                if var == "user" {
                    assert!(
                        self.scope.is_some(),
                        "larder rule `{}`: template `{}` uses {{user}} but the rule has no user scope",
                        self.name,
                        t.source
                    );
                } else if !params_per_request {
                    assert!(
                        params.contains(&var),
                        "larder rule `{}`: template `{}` uses {{{var}}}, which is not a parameter of its path",
                        self.name,
                        t.source
                    );
                }
            }
        }
    }
}

/// Rules matched by request path, for one layer over many routes (a whole axum `Router`,
/// a tonic server).
///
/// Patterns use the router syntax: `/api/chat/sessions/{sid}`, `/files/{*rest}`. A request
/// whose path matches no pattern passes through uncached.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub(crate) rules: Vec<Rule>,
}

impl Rules {
    /// No rules yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies `rule` to requests whose path matches `pattern`.
    pub fn route(mut self, pattern: &str, rule: Rule) -> Self {
        self.rules.push(rule.path(pattern));
        self
    }
}

fn path_params(pattern: &str) -> Vec<&str> {
    pattern
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|p| p.trim_start_matches('*'))
        .collect()
}

/// A tag template such as `sessions:{user}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    source: Box<str>,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(Box<str>),
    Var(Box<str>),
}

impl Template {
    pub(crate) fn parse(source: &str) -> Self {
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(open) = rest.find('{') {
            match rest[open..].find('}') {
                Some(close) => {
                    if open > 0 {
                        parts.push(Part::Literal(rest[..open].into()));
                    }
                    parts.push(Part::Var(rest[open + 1..open + close].into()));
                    rest = &rest[open + close + 1..];
                }
                None => break,
            }
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.into()));
        }
        Template {
            source: source.into(),
            parts,
        }
    }

    pub(crate) fn vars(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(v) => Some(&**v),
            Part::Literal(_) => None,
        })
    }

    /// Fills the template; `None` when a variable has no value for this request.
    pub(crate) fn render(&self, user: Option<&str>, params: &[(String, String)]) -> Option<String> {
        let mut out = String::with_capacity(self.source.len() + 16);
        for part in &self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Var(v) if &**v == "user" => out.push_str(user?),
                Part::Var(v) => out.push_str(&params.iter().find(|(k, _)| k == &**v)?.1),
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_user_and_params() {
        let t = Template::parse("sessions:{user}:{sid}");
        let params = vec![("sid".to_owned(), "7".to_owned())];
        assert_eq!(
            t.render(Some("42"), &params).as_deref(),
            Some("sessions:42:7")
        );
        assert_eq!(t.render(None, &params), None);
        assert_eq!(
            Template::parse("plain").render(None, &[]).as_deref(),
            Some("plain")
        );
        assert_eq!(
            Template::parse("odd{").render(None, &[]).as_deref(),
            Some("odd{")
        );
    }

    #[test]
    #[should_panic(expected = "no user scope")]
    fn user_template_without_scope_is_rejected() {
        Rule::new("r").tag("user:{user}").validate(false);
    }

    #[test]
    #[should_panic(expected = "not a parameter")]
    fn unknown_param_is_rejected() {
        Rule::new("r")
            .path("/a/{id}")
            .tag("a:{sid}")
            .validate(false);
    }

    #[test]
    #[should_panic(expected = "a shared rule has no user scope")]
    fn shared_with_user_scope_is_rejected() {
        Rule::new("r")
            .shared()
            .user_scope(UserScope::header(http::header::AUTHORIZATION))
            .validate(false);
    }

    #[test]
    fn path_params_are_found() {
        assert_eq!(path_params("/a/{id}/b/{*rest}"), vec!["id", "rest"]);
    }
}
