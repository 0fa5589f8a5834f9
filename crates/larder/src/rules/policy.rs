//! What may be stored, and for how long: RFC 9111 rules for a shared cache.
//!
//! This module is pure: it parses `Cache-Control` (and `Pragma`) with a small tokenizer,
//! decides whether a response may be stored and computes its freshness, normalizes `Vary`,
//! reads `Age`, strips hop-by-hop fields and evaluates `If-None-Match`. The caller passes
//! the current time, header values are read as bytes, and no input can make it panic.

use std::time::{Duration, SystemTime};

use http::header::{
    AGE, CACHE_CONTROL, CONNECTION, DATE, ETAG, EXPIRES, IF_NONE_MATCH, PRAGMA, PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION, SET_COOKIE, TE, TRAILER, TRANSFER_ENCODING, UPGRADE, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::reason::Uncacheable;

/// Request Cache-Control (RFC 9111 §5.2.1), plus `Pragma: no-cache` when no Cache-Control is present (§5.4).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RequestDirectives {
    pub(crate) no_store: bool,
    pub(crate) no_cache: bool,
    pub(crate) max_age: Option<Duration>,
    pub(crate) only_if_cached: bool,
}

/// Response Cache-Control (RFC 9111 §5.2.2, RFC 5861).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ResponseDirectives {
    pub(crate) no_store: bool,
    /// Bare or with field names: both count.
    pub(crate) no_cache: bool,
    /// Bare or with field names: both count.
    pub(crate) private: bool,
    pub(crate) public: bool,
    pub(crate) must_revalidate: bool,
    pub(crate) proxy_revalidate: bool,
    pub(crate) must_understand: bool,
    /// An invalid value (`max-age=abc`) is kept as zero: invalid freshness means stale (§4.2.1).
    pub(crate) max_age: Option<Duration>,
    /// Same treatment of invalid values as `max_age`.
    pub(crate) s_maxage: Option<Duration>,
    pub(crate) stale_while_revalidate: Option<Duration>,
    pub(crate) stale_if_error: Option<Duration>,
    /// Duplicate max-age/s-maxage with different values: the response is stale (§4.2.1).
    pub(crate) conflicting: bool,
    /// Read from a targeted field (RFC 9213), which also sets `Expires` aside.
    pub(crate) targeted: bool,
}

/// What the route configured (all optional).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RouteTtl {
    /// Freshness used when the response gives no explicit freshness (no s-maxage, max-age or Expires).
    pub(crate) ttl: Option<Duration>,
    /// When true, `ttl` replaces whatever the response says (the response's no-store/private/no-cache still forbid storing).
    pub(crate) override_response: bool,
    /// Defaults for the stale windows when the response does not state them.
    pub(crate) stale_while_revalidate: Option<Duration>,
    pub(crate) stale_if_error: Option<Duration>,
    /// The rule's TTL for this response's status (`Rule::cache_status`): stores a status
    /// otherwise stored only with explicit freshness, and replaces `ttl` for it.
    pub(crate) status_ttl: Option<Duration>,
}

/// Everything `decide` needs about one exchange.
pub(crate) struct Candidate<'a> {
    pub(crate) status: StatusCode,
    pub(crate) response_headers: &'a HeaderMap,
    pub(crate) request: RequestDirectives,
    /// The entry is keyed by one user's scope (a private cache for that user): `private` responses may be stored.
    pub(crate) user_scoped: bool,
    /// The request carried credentials on a rule neither user-scoped nor shared: only a
    /// response that says `public` or `s-maxage` may be stored (§3.5).
    pub(crate) credentialed: bool,
    pub(crate) route: RouteTtl,
    /// Current time, for `Expires` against `Date`.
    pub(crate) now: SystemTime,
}

/// How long a stored response stays usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lifetimes {
    /// Freshness lifetime (§4.2.1).
    pub(crate) lifetime: Duration,
    /// Age the response already had when received (§4.2.3): the larger of the `Age` header and
    /// the apparent age (now - `Date`); invalid or absent values count as zero.
    pub(crate) initial_age: Duration,
    pub(crate) stale_while_revalidate: Duration,
    pub(crate) stale_if_error: Duration,
    /// True when stale use is forbidden: must-revalidate, proxy-revalidate, or s-maxage present
    /// (§5.2.2.10 implies proxy-revalidate). When true, both stale windows are zero.
    pub(crate) must_revalidate: bool,
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Store(Lifetimes),
    /// Not stored, for this reason.
    Skip(Uncacheable),
}

/// Vary (§4.1): header names, lower-cased, de-duplicated and sorted, across all Vary lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Vary {
    None,
    /// `*`, or a member that is not a valid field name: the response can never be matched.
    Any,
    Names(Vec<HeaderName>),
}

/// Largest delta-seconds we represent (RFC 9111 §1.2.2: 2^31 at least; we clamp to u32::MAX).
const MAX_DELTA_SECONDS: u64 = u32::MAX as u64;

/// A directive's argument as written.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Arg {
    Absent,
    /// Token or unquoted quoted-string.
    Value(Vec<u8>),
    /// `name=` with nothing usable, an unterminated quote, or trailing junk.
    Malformed,
}

#[derive(Debug)]
struct Directive {
    /// Lower-cased (directive names are case-insensitive, §5.2).
    name: String,
    arg: Arg,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn skip_ows(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && (s[i] == b' ' || s[i] == b'\t') {
        i += 1;
    }
    i
}

/// Index just past the next list separator at or after `i`, stepping over quoted strings.
fn skip_element(s: &[u8], mut i: usize) -> usize {
    let mut quoted = false;
    while i < s.len() {
        match s[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b',' if !quoted => return i + 1,
            _ => {}
        }
        i += 1;
    }
    s.len()
}

/// Parses a quoted-string starting at the opening quote; returns its content and the index past the closing quote.
fn quoted_string(s: &[u8], start: usize) -> Option<(Vec<u8>, usize)> {
    let mut value = Vec::new();
    let mut i = start + 1;
    loop {
        match *s.get(i)? {
            b'"' => return Some((value, i + 1)),
            b'\\' => {
                value.push(*s.get(i + 1)?);
                i += 2;
            }
            b => {
                value.push(b);
                i += 1;
            }
        }
    }
}

/// Appends the directives of one `#cache-directive` list line (RFC 9111 §5.2, RFC 9110 §5.6.1).
fn parse_directives(s: &[u8], out: &mut Vec<Directive>) {
    let mut i = 0;
    while i < s.len() {
        while i < s.len() && (s[i] == b' ' || s[i] == b'\t' || s[i] == b',') {
            i += 1;
        }
        let start = i;
        while i < s.len() && is_tchar(s[i]) {
            i += 1;
        }
        if i == start {
            // Not a directive name: drop this element.
            i = skip_element(s, i);
            continue;
        }
        let name = s[start..i]
            .iter()
            .map(|b| char::from(b.to_ascii_lowercase()))
            .collect();
        let mut j = skip_ows(s, i);
        let mut arg = Arg::Absent;
        if s.get(j) == Some(&b'=') {
            j = skip_ows(s, j + 1);
            if s.get(j) == Some(&b'"') {
                match quoted_string(s, j) {
                    Some((value, end)) => {
                        arg = Arg::Value(value);
                        j = end;
                    }
                    None => {
                        arg = Arg::Malformed;
                        j = s.len();
                    }
                }
            } else {
                let value_start = j;
                while j < s.len() && is_tchar(s[j]) {
                    j += 1;
                }
                arg = if j == value_start {
                    Arg::Malformed
                } else {
                    Arg::Value(s[value_start..j].to_vec())
                };
            }
        }
        j = skip_ows(s, j);
        if j < s.len() && s[j] != b',' {
            arg = Arg::Malformed;
        }
        out.push(Directive { name, arg });
        i = skip_element(s, j);
    }
}

/// All directives of every line of `name`, in order (several lines form one list, RFC 9110 §5.3).
fn directives(headers: &HeaderMap, name: &HeaderName) -> Vec<Directive> {
    let mut out = Vec::new();
    for value in headers.get_all(name) {
        parse_directives(value.as_bytes(), &mut out);
    }
    out
}

/// delta-seconds (§1.2.2): digits only, saturating at [`MAX_DELTA_SECONDS`].
fn delta_seconds(digits: &[u8]) -> Option<Duration> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let secs = digits.iter().fold(0u64, |acc, d| {
        acc.saturating_mul(10)
            .saturating_add(u64::from(d - b'0'))
            .min(MAX_DELTA_SECONDS)
    });
    Some(Duration::from_secs(secs))
}

fn arg_seconds(arg: &Arg) -> Option<Duration> {
    match arg {
        Arg::Value(v) => delta_seconds(v),
        Arg::Absent | Arg::Malformed => None,
    }
}

/// Parses request Cache-Control, falling back to `Pragma: no-cache` only when Cache-Control is absent (§5.4).
pub(crate) fn request_directives(headers: &HeaderMap) -> RequestDirectives {
    let mut rd = RequestDirectives::default();
    if headers.is_empty() {
        return rd;
    }
    let mut seen_max_age = false;
    for d in directives(headers, &CACHE_CONTROL) {
        match d.name.as_str() {
            "no-store" => rd.no_store = true,
            "no-cache" => rd.no_cache = true,
            "only-if-cached" => rd.only_if_cached = true,
            // First occurrence wins; an invalid request max-age is ignored.
            "max-age" if !seen_max_age => {
                seen_max_age = true;
                rd.max_age = arg_seconds(&d.arg);
            }
            _ => {}
        }
    }
    if !headers.contains_key(CACHE_CONTROL)
        && directives(headers, &PRAGMA)
            .iter()
            .any(|d| d.name == "no-cache")
    {
        rd.no_cache = true;
    }
    rd
}

/// Records a max-age/s-maxage occurrence; a second, different value marks the response stale (§4.2.1).
fn record_lifetime(slot: &mut Option<Duration>, arg: &Arg, conflicting: &mut bool) {
    // RFC 9111 §4.2.1: invalid freshness information is treated as stale.
    let value = arg_seconds(arg).unwrap_or(Duration::ZERO);
    match slot {
        None => *slot = Some(value),
        Some(first) if *first != value => *conflicting = true,
        Some(_) => {}
    }
}

/// Parses response Cache-Control across all its lines.
pub(crate) fn response_directives(headers: &HeaderMap) -> ResponseDirectives {
    let mut rd = ResponseDirectives::default();
    let (mut seen_swr, mut seen_sie) = (false, false);
    for d in directives(headers, &CACHE_CONTROL) {
        match d.name.as_str() {
            "no-store" => rd.no_store = true,
            // RFC 9111 §5.2.2.4/§5.2.2.7: the qualified forms are treated like the bare ones.
            "no-cache" => rd.no_cache = true,
            "private" => rd.private = true,
            "public" => rd.public = true,
            "must-revalidate" => rd.must_revalidate = true,
            "proxy-revalidate" => rd.proxy_revalidate = true,
            "must-understand" => rd.must_understand = true,
            "max-age" => record_lifetime(&mut rd.max_age, &d.arg, &mut rd.conflicting),
            "s-maxage" => record_lifetime(&mut rd.s_maxage, &d.arg, &mut rd.conflicting),
            "stale-while-revalidate" if !seen_swr => {
                seen_swr = true;
                rd.stale_while_revalidate = arg_seconds(&d.arg);
            }
            "stale-if-error" if !seen_sie => {
                seen_sie = true;
                rd.stale_if_error = arg_seconds(&d.arg);
            }
            _ => {}
        }
    }
    rd
}

/// `Larder-Cache-Control`: directives for this cache alone (RFC 9213's targeted fields).
pub const LARDER_CACHE_CONTROL: HeaderName = HeaderName::from_static("larder-cache-control");
/// `CDN-Cache-Control` (RFC 9213 §3): directives for the shared caches of a CDN, which this
/// cache honours too.
pub const CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");

/// The targeted fields this cache reads, first first (RFC 9213 §2.1's target list).
const TARGETS: [HeaderName; 2] = [LARDER_CACHE_CONTROL, CDN_CACHE_CONTROL];

/// The directives that decide for this cache (RFC 9213 §2.1): those of the first field of
/// [`TARGETS`] that is present, valid and not empty, and then `Cache-Control` and `Expires`
/// are set aside; else `Cache-Control`'s.
pub(crate) fn effective_directives(headers: &HeaderMap) -> ResponseDirectives {
    TARGETS
        .iter()
        .find_map(|name| targeted(headers, name))
        .unwrap_or_else(|| response_directives(headers))
}

/// The directives of the targeted field `name`, if it is present, parses as a Structured
/// Field Dictionary (RFC 9651; its lines joined) and is not empty. A field that does not parse
/// is ignored as a whole (RFC 9213 §2.1); a directive whose value has the wrong type is
/// ignored alone, except that `no-cache` and `private` with any value count (their qualified
/// forms are treated like the bare ones, as in `Cache-Control`).
fn targeted(headers: &HeaderMap, name: &HeaderName) -> Option<ResponseDirectives> {
    let mut lines = headers.get_all(name).iter();
    let first = lines.next()?;
    let mut joined = first.as_bytes().to_vec();
    for line in lines {
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(line.as_bytes());
    }
    let dictionary: sfv::Dictionary = sfv::Parser::new(&joined).parse().ok()?;
    if dictionary.is_empty() {
        return None;
    }
    let mut rd = ResponseDirectives {
        targeted: true,
        ..ResponseDirectives::default()
    };
    for (key, entry) in &dictionary {
        let item = match entry {
            sfv::ListEntry::Item(item) => Some(&item.bare_item),
            sfv::ListEntry::InnerList(_) => None,
        };
        let flag = item.and_then(sfv::BareItem::as_boolean) == Some(true);
        let seconds = || {
            let n = i64::from(item?.as_integer()?);
            let n = u64::try_from(n).ok()?.min(MAX_DELTA_SECONDS);
            Some(Duration::from_secs(n))
        };
        match key.as_str() {
            "no-store" => rd.no_store |= flag,
            "no-cache" => rd.no_cache |= flag || item.is_none_or(|i| i.as_boolean().is_none()),
            "private" => rd.private |= flag || item.is_none_or(|i| i.as_boolean().is_none()),
            "public" => rd.public |= flag,
            "must-revalidate" => rd.must_revalidate |= flag,
            "proxy-revalidate" => rd.proxy_revalidate |= flag,
            "must-understand" => rd.must_understand |= flag,
            "max-age" => rd.max_age = seconds().or(rd.max_age),
            "s-maxage" => rd.s_maxage = seconds().or(rd.s_maxage),
            "stale-while-revalidate" => {
                rd.stale_while_revalidate = seconds().or(rd.stale_while_revalidate);
            }
            "stale-if-error" => rd.stale_if_error = seconds().or(rd.stale_if_error),
            _ => {}
        }
    }
    Some(rd)
}

/// How a status code may be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatusClass {
    /// Heuristically cacheable and safe to cache on the route's ttl alone.
    RouteTtl,
    /// Stored only when the response itself states freshness.
    ExplicitOnly,
    Never,
}

fn status_class(status: StatusCode) -> StatusClass {
    match status.as_u16() {
        // RFC 9111 §3: only final, complete responses; 206 and 304 are not stand-alone responses.
        100..=199 | 206 | 304 => StatusClass::Never,
        // Credentials challenges and server failures are never cached, whatever they say.
        401 | 403 | 407 => StatusClass::Never,
        501 => StatusClass::ExplicitOnly,
        500..=599 => StatusClass::Never,
        // RFC 9110 §15.1 heuristically cacheable; success and redirects may use the route ttl.
        200 | 203 | 204 | 300 | 301 | 308 => StatusClass::RouteTtl,
        // CPDoS defense: a route ttl alone never stores an error or other page.
        200..=499 => StatusClass::ExplicitOnly,
        _ => StatusClass::Never,
    }
}

/// Whether responses with `status` are never stored, whatever they or the rule say.
pub(crate) fn never_stored(status: StatusCode) -> bool {
    status_class(status) == StatusClass::Never
}

/// Statuses whose caching requirements we implement, for `must-understand` (§5.2.2.3).
fn understood(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

fn http_date(value: &HeaderValue) -> Option<SystemTime> {
    httpdate::parse_http_date(value.to_str().ok()?).ok()
}

/// `Expires - Date` (§4.2.1); invalid or conflicting Expires means already expired (§5.3).
fn expires_lifetime(headers: &HeaderMap, now: SystemTime) -> Duration {
    let mut values = headers.get_all(EXPIRES).iter();
    let Some(first) = values.next() else {
        return Duration::ZERO;
    };
    // RFC 9111 §4.2.1: several differing Expires lines make the response stale.
    if values.any(|v| v != first) {
        return Duration::ZERO;
    }
    let Some(expires) = http_date(first) else {
        return Duration::ZERO;
    };
    let date = headers.get(DATE).and_then(http_date).unwrap_or(now);
    expires
        .duration_since(date)
        .unwrap_or(Duration::ZERO)
        .min(Duration::from_secs(MAX_DELTA_SECONDS))
}

/// Why RFC 9111 (or this cache) forbids storing the response at all, in the order checked.
fn forbidden(ex: &Candidate<'_>, cc: &ResponseDirectives) -> Option<Uncacheable> {
    let headers = ex.response_headers;
    // RFC 9111 §5.2.1.5
    if ex.request.no_store {
        return Some(Uncacheable::RequestNoStore);
    }
    // RFC 9111 §5.2.2.3: must-understand lets a cache that knows the status ignore no-store,
    // and forbids storing a status it does not know.
    if cc.must_understand && !understood(ex.status) {
        return Some(Uncacheable::MustUnderstand);
    }
    // RFC 9111 §5.2.2.5
    if cc.no_store && !cc.must_understand {
        return Some(Uncacheable::NoStore);
    }
    // RFC 9111 §5.2.2.7: a private response may only go in a cache scoped to its user.
    if cc.private && !ex.user_scoped {
        return Some(Uncacheable::Private);
    }
    // RFC 9111 §3.5: a response to a request with credentials is stored for others only
    // when it says a shared cache may store it.
    if ex.credentialed && !cc.public && cc.s_maxage.is_none() {
        return Some(Uncacheable::Credentials);
    }
    // RFC 9111 §7.3 leaves this to the cache: we never store a Set-Cookie.
    if headers.contains_key(SET_COOKIE) {
        return Some(Uncacheable::SetCookie);
    }
    // RFC 9111 §4.1: Vary: * (or an unparseable Vary) never matches a later request.
    if vary(headers) == Vary::Any {
        return Some(Uncacheable::VaryStar);
    }
    // RFC 9111 §5.2.2.4: no-cache requires revalidation on every use: possible only with
    // a validator of the origin's (see `decide`), and for a status stored by default.
    if cc.no_cache && !(has_validator(headers) && status_class(ex.status) == StatusClass::RouteTtl)
    {
        return Some(Uncacheable::NoCache);
    }
    None
}

/// The freshness lifetime (RFC 9111 §4.2.1, in order of precedence for a shared cache), or
/// why the status or the lack of freshness forbids storing.
fn lifetime(ex: &Candidate<'_>, cc: &ResponseDirectives) -> Result<Duration, Uncacheable> {
    let headers = ex.response_headers;
    // RFC 9213 §2.1: a targeted field sets `Expires` aside, as it does `Cache-Control`.
    let has_expires = !cc.targeted && headers.contains_key(EXPIRES);
    let explicit = cc.s_maxage.is_some() || cc.max_age.is_some() || has_expires;
    let class = status_class(ex.status);
    match class {
        StatusClass::Never => return Err(Uncacheable::Status),
        StatusClass::ExplicitOnly if !explicit => {
            return ex.route.status_ttl.ok_or(Uncacheable::Status);
        }
        StatusClass::ExplicitOnly | StatusClass::RouteTtl => {}
    }
    let route_override = ex.route.override_response && class == StatusClass::RouteTtl;
    if let Some(ttl) = ex.route.ttl.filter(|_| route_override) {
        return Ok(ttl);
    }
    if cc.conflicting {
        return Ok(Duration::ZERO);
    }
    // RFC 9111 §5.2.2.10: s-maxage overrides max-age for a shared cache.
    if let Some(lifetime) = cc.s_maxage.or(cc.max_age) {
        return Ok(lifetime);
    }
    if has_expires {
        return Ok(expires_lifetime(headers, ex.now));
    }
    ex.route.ttl.ok_or(Uncacheable::NoFreshness)
}

/// Whether a stored response with `headers` may answer a request with credentials: it said
/// `public` or `s-maxage` (RFC 9111 §3.5).
pub(crate) fn shared_with_credentials(headers: &HeaderMap) -> bool {
    let cc = effective_directives(headers);
    cc.public || cc.s_maxage.is_some()
}

/// Decides whether a response may be stored by a shared cache and, if so, its freshness.
pub(crate) fn decide(ex: &Candidate<'_>) -> Decision {
    let headers = ex.response_headers;
    let cc = effective_directives(headers);
    if let Some(reason) = forbidden(ex, &cc) {
        return Decision::Skip(reason);
    }
    // RFC 9111 §5.2.2.4: a `no-cache` response with a validator is stored, stale from the
    // start: every use revalidates it with the origin (a `304` costs no body).
    if cc.no_cache {
        return Decision::Store(Lifetimes {
            lifetime: Duration::ZERO,
            initial_age: Duration::ZERO,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            must_revalidate: true,
        });
    }
    let lifetime = match lifetime(ex, &cc) {
        Ok(lifetime) => lifetime,
        Err(reason) => return Decision::Skip(reason),
    };
    // RFC 9111 §4.2.3: the age on arrival is the larger of the upstream caches' Age and the
    // apparent age (now - Date); both count against the lifetime.
    let apparent_age = headers
        .get(DATE)
        .and_then(http_date)
        .and_then(|date| ex.now.duration_since(date).ok())
        .unwrap_or(Duration::ZERO);
    let initial_age = age(headers).unwrap_or(Duration::ZERO).max(apparent_age);
    if lifetime <= initial_age {
        return Decision::Skip(Uncacheable::ZeroTtl);
    }

    // RFC 9111 §5.2.2.10: s-maxage implies proxy-revalidate; RFC 5861 §4: stale windows
    // never override must-revalidate.
    let must_revalidate = cc.must_revalidate || cc.proxy_revalidate || cc.s_maxage.is_some();
    let window = |response: Option<Duration>, route: Option<Duration>| {
        if must_revalidate {
            Duration::ZERO
        } else {
            response.or(route).unwrap_or(Duration::ZERO)
        }
    };
    Decision::Store(Lifetimes {
        lifetime,
        initial_age,
        stale_while_revalidate: window(cc.stale_while_revalidate, ex.route.stale_while_revalidate),
        stale_if_error: window(cc.stale_if_error, ex.route.stale_if_error),
        must_revalidate,
    })
}

/// Vary (§4.1) across all lines; an invalid member counts as `*` so the response is never stored.
pub(crate) fn vary(headers: &HeaderMap) -> Vary {
    let mut names: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(VARY) {
        for member in value.as_bytes().split(|&b| b == b',') {
            let member = member.trim_ascii();
            if member.is_empty() {
                continue;
            }
            if member == b"*" {
                return Vary::Any;
            }
            // from_bytes lower-cases, so `Accept-Language` and `accept-language` are one name.
            match HeaderName::from_bytes(member) {
                Ok(name) if !names.contains(&name) => names.push(name),
                Ok(_) => {}
                Err(_) => return Vary::Any,
            }
        }
    }
    if names.is_empty() {
        return Vary::None;
    }
    // Order carries no meaning (§4.1), so sort to give one canonical form for keys.
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    Vary::Names(names)
}

/// Age header (§5.1): first list member of the first line, non-negative integer seconds, else None.
pub(crate) fn age(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(AGE)?;
    let first = value.as_bytes().split(|&b| b == b',').next()?;
    delta_seconds(first.trim_ascii())
}

/// Removes hop-by-hop fields before storing (RFC 9111 §3.1, RFC 9110 §7.6.1), plus `Age`
/// (regenerated on reuse).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|member| HeaderName::from_bytes(member.trim_ascii()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    let fixed = [
        CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        PROXY_AUTHENTICATE,
        PROXY_AUTHORIZATION,
        TE,
        TRAILER,
        TRANSFER_ENCODING,
        UPGRADE,
        AGE,
    ];
    for name in fixed {
        headers.remove(name);
    }
}

/// Parses one entity-tag (RFC 9110 §8.8.3) at `i`; returns its opaque part and the index after it.
fn entity_tag(s: &[u8], i: usize) -> Option<(&[u8], usize)> {
    let start = if s[i..].starts_with(b"W/") { i + 2 } else { i };
    if s.get(start) != Some(&b'"') {
        return None;
    }
    let open = start + 1;
    let close = open + s.get(open..)?.iter().position(|&b| b == b'"')?;
    let opaque = &s[open..close];
    // etagc = %x21 / %x23-7E / obs-text
    if !opaque
        .iter()
        .all(|&b| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80)
    {
        return None;
    }
    Some((opaque, close + 1))
}

/// If-None-Match evaluation with weak comparison (RFC 9110 §13.1.2) over every request line.
/// `*` matches any; malformed lists (including `*` mixed with tags) never match.
pub(crate) fn if_none_match(if_none_match: &HeaderMap, etag: &HeaderValue) -> bool {
    if !if_none_match.contains_key(IF_NONE_MATCH) {
        return false;
    }
    let stored = etag.as_bytes().trim_ascii();
    let ours = match entity_tag(stored, 0) {
        Some((opaque, end)) if end == stored.len() => opaque,
        _ => return false,
    };
    let mut star = false;
    let mut matched = false;
    let mut tags = 0usize;
    for value in if_none_match.get_all(IF_NONE_MATCH) {
        let s = value.as_bytes();
        let mut i = 0;
        loop {
            while i < s.len() && (s[i] == b' ' || s[i] == b'\t' || s[i] == b',') {
                i += 1;
            }
            if i >= s.len() {
                break;
            }
            if s[i] == b'*' {
                star = true;
                i += 1;
            } else {
                let Some((opaque, end)) = entity_tag(s, i) else {
                    return false;
                };
                tags += 1;
                matched |= opaque == ours;
                i = end;
            }
            i = skip_ows(s, i);
            if i < s.len() && s[i] != b',' {
                return false;
            }
        }
    }
    if star {
        return tags == 0;
    }
    matched
}

/// Whether the headers carry a gRPC status other than OK: a failed call, which HTTP reports
/// as 200 (in a Trailers-Only response the status comes in the headers).
pub(crate) fn grpc_failed(headers: &HeaderMap) -> bool {
    headers.get("grpc-status").is_some_and(|s| s != "0")
}

/// Whether a response carries a validator of the origin's (`ETag` or `Last-Modified`).
fn has_validator(headers: &HeaderMap) -> bool {
    headers.contains_key(ETAG) || headers.contains_key(http::header::LAST_MODIFIED)
}

/// Makes a request to the origin conditional on a stored response's validators (RFC 9111
/// §4.3.1): `If-None-Match` with its `ETag`, `If-Modified-Since` with its `Last-Modified`.
pub(crate) fn add_validators(
    headers: &mut HeaderMap,
    (etag, modified): (Option<&HeaderValue>, Option<&HeaderValue>),
) {
    if let Some(etag) = etag {
        headers.insert(IF_NONE_MATCH, etag.clone());
    }
    if let Some(modified) = modified {
        headers.insert(http::header::IF_MODIFIED_SINCE, modified.clone());
    }
}

/// A stored response's header fields updated from a `304`'s (RFC 9111 §3.2 and §4.3.4): each
/// field the `304` carries replaces the stored one, except `Content-Length` (the stored body's
/// length stands) and hop-by-hop fields.
pub(crate) fn updated_headers(stored: &HeaderMap, not_modified: &HeaderMap) -> HeaderMap {
    let mut fresh = not_modified.clone();
    strip_hop_by_hop(&mut fresh);
    // The fields that describe the stored body stay its own (§3.2 lets a cache keep them).
    for name in [
        http::header::CONTENT_LENGTH,
        http::header::CONTENT_TYPE,
        http::header::CONTENT_ENCODING,
        http::header::CONTENT_RANGE,
    ] {
        fresh.remove(name);
    }
    let mut headers = stored.clone();
    for name in fresh.keys() {
        headers.remove(name);
    }
    for (name, value) in &fresh {
        headers.append(name, value.clone());
    }
    headers
}

/// Removes the client's validators before the cache asks the origin for a whole response to
/// store: a 304 meant for one client's copy would leave nothing to store (RFC 9111 §4.3.1 lets
/// a cache send its own validators instead). The client still gets a correct full response.
pub(crate) fn strip_validators(headers: &mut HeaderMap) {
    headers.remove(IF_NONE_MATCH);
    headers.remove(http::header::IF_MODIFIED_SINCE);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    const NOW_SECS: u64 = 1_700_000_000;
    const DATE_NOW: &str = "Tue, 14 Nov 2023 22:13:20 GMT";
    const DATE_PLUS_60: &str = "Tue, 14 Nov 2023 22:14:20 GMT";
    const DATE_MINUS_60: &str = "Tue, 14 Nov 2023 22:12:20 GMT";

    type Pairs = &'static [(&'static str, &'static str)];

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW_SECS)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("test header name"),
                HeaderValue::from_str(value).expect("test header value"),
            );
        }
        map
    }

    fn lines_of(name: &'static str, lines: &[&'static str]) -> HeaderMap {
        let pairs: Vec<(&str, &str)> = lines.iter().map(|l| (name, *l)).collect();
        headers(&pairs)
    }

    const fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    const NO_ROUTE: RouteTtl = RouteTtl {
        ttl: None,
        override_response: false,
        stale_while_revalidate: None,
        stale_if_error: None,
        status_ttl: None,
    };
    const STATUS_30: RouteTtl = RouteTtl {
        ttl: Some(secs(30)),
        status_ttl: Some(secs(30)),
        ..NO_ROUTE
    };
    const ROUTE_300: RouteTtl = RouteTtl {
        ttl: Some(secs(300)),
        ..NO_ROUTE
    };
    const ROUTE_300_OVERRIDE: RouteTtl = RouteTtl {
        override_response: true,
        ..ROUTE_300
    };
    const ROUTE_STALE: RouteTtl = RouteTtl {
        stale_while_revalidate: Some(secs(5)),
        stale_if_error: Some(secs(50)),
        ..NO_ROUTE
    };

    const fn store(lifetime: u64, initial_age: u64, swr: u64, sie: u64, mr: bool) -> Decision {
        Decision::Store(Lifetimes {
            lifetime: secs(lifetime),
            initial_age: secs(initial_age),
            stale_while_revalidate: secs(swr),
            stale_if_error: secs(sie),
            must_revalidate: mr,
        })
    }

    const fn skip(reason: Uncacheable) -> Decision {
        Decision::Skip(reason)
    }

    struct DecideCase {
        name: &'static str,
        status: u16,
        headers: Pairs,
        request_no_store: bool,
        user_scoped: bool,
        credentialed: bool,
        route: RouteTtl,
        want: Decision,
    }

    const fn case(
        name: &'static str,
        status: u16,
        headers: Pairs,
        route: RouteTtl,
        want: Decision,
    ) -> DecideCase {
        DecideCase {
            name,
            status,
            headers,
            request_no_store: false,
            user_scoped: false,
            credentialed: false,
            route,
            want,
        }
    }

    const fn credentialed(c: DecideCase) -> DecideCase {
        DecideCase {
            credentialed: true,
            ..c
        }
    }

    const fn user_scoped(c: DecideCase) -> DecideCase {
        DecideCase {
            user_scoped: true,
            ..c
        }
    }

    const fn request_no_store(c: DecideCase) -> DecideCase {
        DecideCase {
            request_no_store: true,
            ..c
        }
    }

    const MAX60: Pairs = &[("cache-control", "max-age=60")];

    #[rustfmt::skip]
    const DECIDE: &[DecideCase] = &[
        request_no_store(case("request no-store skips", 200, MAX60, NO_ROUTE, skip(Uncacheable::RequestNoStore))),
        case("response no-store skips", 200, &[("cache-control", "no-store, max-age=60")], NO_ROUTE, skip(Uncacheable::NoStore)),
        case("must-understand with understood status ignores no-store", 200, &[("cache-control", "must-understand, no-store, max-age=60")], NO_ROUTE, store(60, 0, 0, 0, false)),
        case("must-understand with unknown status skips", 302, &[("cache-control", "must-understand, no-store, max-age=60")], NO_ROUTE, skip(Uncacheable::MustUnderstand)),
        case("private in shared cache skips", 200, &[("cache-control", "private, max-age=60")], NO_ROUTE, skip(Uncacheable::Private)),
        case("private with field names skips", 200, &[("cache-control", "private=\"x-user\", max-age=60")], NO_ROUTE, skip(Uncacheable::Private)),
        user_scoped(case("private in user-scoped cache stores", 200, &[("cache-control", "private, max-age=60")], NO_ROUTE, store(60, 0, 0, 0, false))),
        case("404 with a status ttl is stored", 404, &[], STATUS_30, store(30, 0, 0, 0, false)),
        case("404 with a status ttl keeps its own max-age", 404, MAX60, STATUS_30, store(60, 0, 0, 0, false)),
        case("404 without a status ttl is not stored", 404, &[], ROUTE_300, skip(Uncacheable::Status)),
        credentialed(case("credentials without public skip", 200, MAX60, ROUTE_300, skip(Uncacheable::Credentials))),
        credentialed(case("credentials with public store", 200, &[("cache-control", "public, max-age=60")], NO_ROUTE, store(60, 0, 0, 0, false))),
        credentialed(case("credentials with s-maxage store", 200, &[("cache-control", "s-maxage=30")], NO_ROUTE, store(30, 0, 0, 0, true))),
        credentialed(case("credentials with public but private skip", 200, &[("cache-control", "public, private, max-age=60")], NO_ROUTE, skip(Uncacheable::Private))),
        user_scoped(case("set-cookie skips even user-scoped", 200, &[("cache-control", "max-age=60"), ("set-cookie", "a=b")], NO_ROUTE, skip(Uncacheable::SetCookie))),
        case("vary star on a later line skips", 200, &[("cache-control", "max-age=60"), ("vary", "accept"), ("vary", "accept-encoding, *")], NO_ROUTE, skip(Uncacheable::VaryStar)),
        case("vary names store", 200, &[("cache-control", "max-age=60"), ("vary", "Accept-Encoding")], NO_ROUTE, store(60, 0, 0, 0, false)),
        case("bare no-cache skips", 200, &[("cache-control", "no-cache, max-age=60")], ROUTE_300, skip(Uncacheable::NoCache)),
        case("no-cache with field names skips", 200, &[("cache-control", "no-cache=\"set-cookie, x-a\", max-age=60")], NO_ROUTE, skip(Uncacheable::NoCache)),
        case("206 never stored", 206, MAX60, NO_ROUTE, skip(Uncacheable::Status)),
        case("304 never stored", 304, MAX60, NO_ROUTE, skip(Uncacheable::Status)),
        case("1xx never stored", 103, MAX60, NO_ROUTE, skip(Uncacheable::Status)),
        case("401 never stored even with max-age", 401, MAX60, NO_ROUTE, skip(Uncacheable::Status)),
        case("403 never stored even with max-age", 403, MAX60, NO_ROUTE, skip(Uncacheable::Status)),
        case("407 never stored even with max-age", 407, MAX60, NO_ROUTE, skip(Uncacheable::Status)),
        case("500 never stored even with max-age", 500, MAX60, NO_ROUTE, skip(Uncacheable::Status)),
        case("503 never stored even with max-age and route ttl", 503, MAX60, ROUTE_300, skip(Uncacheable::Status)),
        case("501 stored with explicit freshness", 501, MAX60, NO_ROUTE, store(60, 0, 0, 0, false)),
        case("404 not stored on route ttl alone", 404, &[], ROUTE_300, skip(Uncacheable::Status)),
        case("404 stored with max-age", 404, MAX60, ROUTE_300, store(60, 0, 0, 0, false)),
        case("410 stored with expires", 410, &[("date", DATE_NOW), ("expires", DATE_PLUS_60)], NO_ROUTE, store(60, 0, 0, 0, false)),
        case("302 not stored on route ttl alone", 302, &[], ROUTE_300, skip(Uncacheable::Status)),
        case("302 stored with max-age", 302, MAX60, NO_ROUTE, store(60, 0, 0, 0, false)),
        case("200 uses route ttl without explicit freshness", 200, &[], ROUTE_300, store(300, 0, 0, 0, false)),
        case("301 uses route ttl", 301, &[], ROUTE_300, store(300, 0, 0, 0, false)),
        case("200 without any freshness skips", 200, &[("cache-control", "public")], NO_ROUTE, skip(Uncacheable::NoFreshness)),
        case("s-maxage beats max-age and forbids stale", 200, &[("cache-control", "max-age=10, s-maxage=100, stale-while-revalidate=30")], NO_ROUTE, store(100, 0, 0, 0, true)),
        case("max-age beats expires", 200, &[("cache-control", "max-age=10"), ("date", DATE_NOW), ("expires", DATE_PLUS_60)], NO_ROUTE, store(10, 0, 0, 0, false)),
        case("expires minus date, the date counting as apparent age", 200, &[("date", DATE_MINUS_60), ("expires", DATE_PLUS_60)], NO_ROUTE, store(120, 60, 0, 0, false)),
        case("expires without date uses now", 200, &[("expires", DATE_PLUS_60)], NO_ROUTE, store(60, 0, 0, 0, false)),
        case("expires beats route ttl", 200, &[("expires", DATE_PLUS_60)], ROUTE_300, store(60, 0, 0, 0, false)),
        case("invalid expires is already expired", 200, &[("expires", "0")], ROUTE_300, skip(Uncacheable::ZeroTtl)),
        case("past expires is already expired", 200, &[("date", DATE_NOW), ("expires", DATE_MINUS_60)], NO_ROUTE, skip(Uncacheable::ZeroTtl)),
        case("conflicting expires lines are stale", 200, &[("expires", DATE_PLUS_60), ("expires", DATE_NOW)], NO_ROUTE, skip(Uncacheable::ZeroTtl)),
        case("route override replaces max-age", 200, &[("cache-control", "max-age=10")], ROUTE_300_OVERRIDE, store(300, 0, 0, 0, false)),
        case("route override replaces max-age=0", 200, &[("cache-control", "max-age=0")], ROUTE_300_OVERRIDE, store(300, 0, 0, 0, false)),
        case("route override does not apply to error statuses", 404, &[("cache-control", "max-age=10")], ROUTE_300_OVERRIDE, store(10, 0, 0, 0, false)),
        case("route override still respects no-store", 200, &[("cache-control", "no-store")], ROUTE_300_OVERRIDE, skip(Uncacheable::NoStore)),
        case("conflicting max-age is stale", 200, &[("cache-control", "max-age=60, max-age=120")], ROUTE_300, skip(Uncacheable::ZeroTtl)),
        case("invalid max-age is stale, not route ttl", 200, &[("cache-control", "max-age=abc")], ROUTE_300, skip(Uncacheable::ZeroTtl)),
        case("age header is initial age", 200, &[("cache-control", "max-age=60"), ("age", "20")], NO_ROUTE, store(60, 20, 0, 0, false)),
        case("age at lifetime skips", 200, &[("cache-control", "max-age=60"), ("age", "60")], NO_ROUTE, skip(Uncacheable::ZeroTtl)),
        case("max-age=0 skips", 200, &[("cache-control", "max-age=0")], NO_ROUTE, skip(Uncacheable::ZeroTtl)),
        case("response stale windows", 200, &[("cache-control", "max-age=60, stale-while-revalidate=30, stale-if-error=300")], ROUTE_STALE, store(60, 0, 30, 300, false)),
        case("route stale defaults", 200, MAX60, ROUTE_STALE, store(60, 0, 5, 50, false)),
        case("must-revalidate zeroes stale windows", 200, &[("cache-control", "max-age=60, must-revalidate, stale-if-error=300")], ROUTE_STALE, store(60, 0, 0, 0, true)),
        case("proxy-revalidate zeroes stale windows", 200, &[("cache-control", "max-age=60, proxy-revalidate")], ROUTE_STALE, store(60, 0, 0, 0, true)),
        case("directives combine across lines", 200, &[("cache-control", "max-age=60"), ("cache-control", "private")], NO_ROUTE, skip(Uncacheable::Private)),
    ];

    #[test]
    fn test_dates_are_consistent() {
        assert_eq!(httpdate::fmt_http_date(now()), DATE_NOW);
    }

    #[test]
    fn decide_follows_rules_in_order() {
        for c in DECIDE {
            let response_headers = headers(c.headers);
            let ex = Candidate {
                status: StatusCode::from_u16(c.status).expect("test status"),
                response_headers: &response_headers,
                request: RequestDirectives {
                    no_store: c.request_no_store,
                    ..RequestDirectives::default()
                },
                user_scoped: c.user_scoped,
                credentialed: c.credentialed,
                route: c.route,
                now: now(),
            };
            assert_eq!(decide(&ex), c.want, "case: {}", c.name);
        }
    }

    const RD: ResponseDirectives = ResponseDirectives {
        no_store: false,
        no_cache: false,
        private: false,
        public: false,
        must_revalidate: false,
        proxy_revalidate: false,
        must_understand: false,
        max_age: None,
        s_maxage: None,
        stale_while_revalidate: None,
        stale_if_error: None,
        conflicting: false,
        targeted: false,
    };
    const MAX_SECS: Duration = secs(u32::MAX as u64);

    #[rustfmt::skip]
    const RESPONSE: &[(&str, &[&str], ResponseDirectives)] = &[
        ("plain max-age", &["max-age=60"], ResponseDirectives { max_age: Some(secs(60)), ..RD }),
        ("names are case-insensitive", &["MAX-AGE=60, Public"], ResponseDirectives { max_age: Some(secs(60)), public: true, ..RD }),
        ("quoted value accepted", &["max-age=\"5\""], ResponseDirectives { max_age: Some(secs(5)), ..RD }),
        ("whitespace tolerated", &["  max-age = 60 ,\tpublic  "], ResponseDirectives { max_age: Some(secs(60)), public: true, ..RD }),
        ("non-numeric is stale", &["max-age=abc"], ResponseDirectives { max_age: Some(Duration::ZERO), ..RD }),
        ("negative is stale", &["max-age=-1"], ResponseDirectives { max_age: Some(Duration::ZERO), ..RD }),
        ("missing value is stale", &["max-age, s-maxage="], ResponseDirectives { max_age: Some(Duration::ZERO), s_maxage: Some(Duration::ZERO), ..RD }),
        ("trailing junk is stale", &["max-age=5 junk, public"], ResponseDirectives { max_age: Some(Duration::ZERO), public: true, ..RD }),
        ("overflow saturates", &["max-age=99999999999999999999"], ResponseDirectives { max_age: Some(MAX_SECS), ..RD }),
        ("differing duplicate conflicts, first kept", &["max-age=60, max-age=120"], ResponseDirectives { max_age: Some(secs(60)), conflicting: true, ..RD }),
        ("equal duplicate is fine", &["max-age=60", "max-age=\"60\""], ResponseDirectives { max_age: Some(secs(60)), ..RD }),
        ("s-maxage conflict across lines", &["s-maxage=1", "s-maxage=2"], ResponseDirectives { s_maxage: Some(secs(1)), conflicting: true, ..RD }),
        ("other duplicates: first wins", &["stale-if-error=1, stale-if-error=2, stale-while-revalidate=3"], ResponseDirectives { stale_if_error: Some(secs(1)), stale_while_revalidate: Some(secs(3)), ..RD }),
        ("comma inside quoted field names", &["no-cache=\"set-cookie, x-a\", private=\"x-b\", max-age=5"], ResponseDirectives { no_cache: true, private: true, max_age: Some(secs(5)), ..RD }),
        ("unterminated quote ends the line", &["no-cache=\"set-cookie, max-age=5"], ResponseDirectives { no_cache: true, ..RD }),
        ("empty elements and unknown directives ignored", &[",, ,foo=bar, \"junk\", must-understand,,no-store,"], ResponseDirectives { must_understand: true, no_store: true, ..RD }),
        ("revalidate flags", &["must-revalidate", "proxy-revalidate"], ResponseDirectives { must_revalidate: true, proxy_revalidate: true, ..RD }),
        ("not a substring search", &["x-no-store, private-ish=1, max-agent=5"], RD),
    ];

    #[test]
    fn response_directives_parse() {
        for (name, lines, want) in RESPONSE {
            let got = response_directives(&lines_of("cache-control", lines));
            assert_eq!(&got, want, "case: {name}");
        }
    }

    #[test]
    fn targeted_fields_join_their_lines_and_take_structured_values() {
        let map = lines_of(
            "cdn-cache-control",
            &["max-age=60", "must-revalidate, no-cache=(\"x-a\")"],
        );
        let got = effective_directives(&map);
        assert_eq!(
            got,
            ResponseDirectives {
                max_age: Some(secs(60)),
                must_revalidate: true,
                no_cache: true,
                targeted: true,
                ..ResponseDirectives::default()
            }
        );
        // `public=?0` is false; a string where an integer belongs is ignored.
        let got = effective_directives(&lines_of(
            "larder-cache-control",
            &["public=?0, s-maxage=\"9\""],
        ));
        assert_eq!(
            got,
            ResponseDirectives {
                targeted: true,
                ..ResponseDirectives::default()
            }
        );
        // Not a dictionary (a bare comma): the field is ignored, Cache-Control decides.
        let mut map = lines_of("cdn-cache-control", &[","]);
        map.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=5"));
        assert_eq!(effective_directives(&map).max_age, Some(secs(5)));
        assert!(!effective_directives(&map).targeted);
    }

    #[test]
    fn response_directives_survive_garbage_bytes() {
        let raw: &[u8] = b"max-age=60, \xff\xfe=\x80, public, s-maxage=\"\xc3\x28\"";
        let mut map = HeaderMap::new();
        map.append(
            CACHE_CONTROL,
            HeaderValue::from_bytes(raw).expect("obs-text is allowed"),
        );
        let got = response_directives(&map);
        assert_eq!(got.max_age, Some(secs(60)));
        assert!(got.public);
        assert_eq!(got.s_maxage, Some(Duration::ZERO));
    }

    const RQ: RequestDirectives = RequestDirectives {
        no_store: false,
        no_cache: false,
        max_age: None,
        only_if_cached: false,
    };

    type RequestCase = (&'static str, Pairs, RequestDirectives);

    #[rustfmt::skip]
    const REQUEST: &[RequestCase] = &[
        ("no-store, any case", &[("cache-control", "No-Store")], RequestDirectives { no_store: true, ..RQ }),
        ("no-cache and max-age across lines", &[("cache-control", "no-cache"), ("cache-control", "max-age=0")], RequestDirectives { no_cache: true, max_age: Some(Duration::ZERO), ..RQ }),
        ("only-if-cached", &[("cache-control", "only-if-cached")], RequestDirectives { only_if_cached: true, ..RQ }),
        ("invalid max-age ignored", &[("cache-control", "max-age=soon")], RQ),
        ("pragma no-cache without cache-control", &[("pragma", "No-Cache")], RequestDirectives { no_cache: true, ..RQ }),
        ("pragma ignored when cache-control present", &[("pragma", "no-cache"), ("cache-control", "max-age=5")], RequestDirectives { max_age: Some(secs(5)), ..RQ }),
    ];

    #[test]
    fn request_directives_parse() {
        for (name, pairs, want) in REQUEST {
            assert_eq!(request_directives(&headers(pairs)), *want, "case: {name}");
        }
    }

    enum WantVary {
        None,
        Any,
        Names(&'static [&'static str]),
    }

    #[rustfmt::skip]
    const VARY_CASES: &[(&str, &[&str], WantVary)] = &[
        ("absent", &[], WantVary::None),
        ("empty members", &[" , "], WantVary::None),
        ("case and whitespace normalized, duplicates removed", &["Accept-Language", " accept-language , Accept"], WantVary::Names(&["accept", "accept-language"])),
        ("star anywhere", &["accept", "user-agent, *"], WantVary::Any),
        ("invalid name is any", &["accept, bad name"], WantVary::Any),
    ];

    #[test]
    fn vary_normalizes() {
        for (name, lines, want) in VARY_CASES {
            let want = match want {
                WantVary::None => Vary::None,
                WantVary::Any => Vary::Any,
                WantVary::Names(names) => {
                    Vary::Names(names.iter().map(|n| HeaderName::from_static(n)).collect())
                }
            };
            assert_eq!(vary(&lines_of("vary", lines)), want, "case: {name}");
        }
    }

    const AGE_CASES: &[(&[&str], Option<u64>)] = &[
        (&[], None),
        (&["10"], Some(10)),
        (&[" 7 "], Some(7)),
        (&["abc"], None),
        (&["-3"], None),
        (&[""], None),
        (&["1, 2"], Some(1)),
        (&["4", "9"], Some(4)),
        (&["99999999999999999999"], Some(u32::MAX as u64)),
    ];

    #[test]
    fn age_parses_first_member() {
        for (lines, want) in AGE_CASES {
            assert_eq!(
                age(&lines_of("age", lines)),
                want.map(secs),
                "lines: {lines:?}"
            );
        }
    }

    #[test]
    fn strip_hop_by_hop_removes_listed_and_fixed_fields() {
        let mut map = headers(&[
            ("connection", "x-foo, close"),
            ("connection", "X-Bar"),
            ("x-foo", "1"),
            ("x-bar", "2"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authenticate", "Basic"),
            ("proxy-authorization", "Basic eA=="),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("age", "5"),
            ("content-type", "text/plain"),
            ("etag", "\"v1\""),
        ]);
        strip_hop_by_hop(&mut map);
        let mut left: Vec<&str> = map.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "etag"]);
    }

    #[rustfmt::skip]
    const INM: &[(&str, &[&str], &str, bool)] = &[
        ("absent never matches", &[], "\"a\"", false),
        ("strong equal", &["\"abc\""], "\"abc\"", true),
        ("weak request vs strong etag", &["W/\"abc\""], "\"abc\"", true),
        ("strong request vs weak etag", &["\"abc\""], "W/\"abc\"", true),
        ("different tags", &["\"abc\""], "\"abd\"", false),
        ("star matches any", &["*"], "W/\"x\"", true),
        ("list member", &["\"a\", W/\"b\" ,\"c\""], "\"b\"", true),
        ("across lines", &["\"a\"", "\"b\""], "\"b\"", true),
        ("unquoted is malformed", &["abc"], "\"abc\"", false),
        ("malformed list never matches", &["\"a\", junk"], "\"a\"", false),
        ("lower-case w/ is malformed", &["w/\"a\""], "\"a\"", false),
        ("star mixed with tags is malformed", &["*, \"a\""], "\"a\"", false),
        ("tags without separator", &["\"a\"\"b\""], "\"a\"", false),
        ("unterminated tag", &["\"a"], "\"a\"", false),
        ("malformed stored etag", &["\"abc\""], "abc", false),
    ];

    #[test]
    fn if_none_match_uses_weak_comparison() {
        for (name, lines, etag, want) in INM {
            let etag = HeaderValue::from_str(etag).expect("test etag");
            let got = if_none_match(&lines_of("if-none-match", lines), &etag);
            assert_eq!(got, *want, "case: {name}");
        }
    }
}
