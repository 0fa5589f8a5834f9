//! Cache keys: what makes two requests share a stored response.
//!
//! A key is a BLAKE3 digest over length-prefixed parts (namespace, format version, method,
//! authority, path, query, varying headers, user scope, and the request body's digest under
//! [`Rule::cache_posts_by_body`](crate::Rule::cache_posts_by_body)), each prefixed by a kind
//! byte and its length as an LEB128 varint, so distinct inputs cannot collide by
//! concatenation (`("a:b", "c")` against `("a", "b:c")`) and a huge URL still gives a 32-byte
//! key. A short readable label (method and path, sanitized) travels with the digest for logs and
//! Redis key prefixes; it never decides equality.
//!
//! Query strings are parsed the way axum's `Query` extractor parses them
//! (`application/x-www-form-urlencoded`: `&` separates pairs, `;` does not), so two URLs that
//! differ only in percent-encoding give the same key exactly when the handler sees the same values.

use std::{fmt, sync::Arc};

use arrayvec::{ArrayString, ArrayVec};
use http::{HeaderMap, HeaderName, Method, request::Parts};

/// The version of the key format. Bumping it makes every stored entry unreachable.
///
/// 2: lengths and counts are LEB128 varints, so a usual request's key is one BLAKE3 block.
pub(crate) const KEY_FORMAT: u8 = 2;

/// Longest readable label kept beside the digest.
const LABEL_MAX: usize = 64;

/// A key's readable label, kept inline: building a key allocates nothing.
type Label = ArrayString<LABEL_MAX>;

/// How many bytes of key parts are gathered before they go to BLAKE3: a usual request's parts
/// fit, so its key is one call to `blake3::hash` over one buffer.
const HASH_BUFFER: usize = 256;

/// Query parameters dropped by default: click and campaign trackers that never change a response.
const TRACKING: &[&str] = &[
    "fbclid", "gclid", "dclid", "gbraid", "wbraid", "msclkid", "mc_cid", "mc_eid", "yclid", "_ga",
];

/// A finished cache key: a digest plus a readable label.
///
/// Equality and hashing use the digest only.
#[derive(Clone)]
pub struct CacheKey {
    digest: [u8; 32],
    label: Label,
    /// For the key of one `Vary` variant: the digest of the URL's key it derives from.
    base: Option<[u8; 32]>,
}

impl CacheKey {
    /// The 32-byte digest that identifies the entry.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// A short, sanitized, human-readable prefix (`GET /api/user/me`), for logs and key prefixes.
    /// It contains only `[A-Za-z0-9/._:-]` and never `{` or `}` (Redis Cluster hash tags).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The digest as 64 lower-case hex characters.
    pub fn hex(&self) -> String {
        hex::encode(self.digest)
    }

    /// A key for a typed (cache-aside) value: namespace plus the caller's key string.
    pub(crate) fn typed(namespace: &str, key: &str) -> Self {
        let mut h = PartHasher::new(namespace, b"typed");
        h.part(key.as_bytes());
        h.finish(label(key))
    }

    /// The key of the variant of `self` selected by the request's values of `names`
    /// (secondary key for `Vary`, RFC 9111 §4.1). Of a variant's key, the variant of the URL's
    /// key it derives from: the same for every key of the URL.
    pub(crate) fn variant(&self, names: &[HeaderName], headers: &HeaderMap) -> Self {
        let base = self.base.unwrap_or(self.digest);
        let mut h = PartHasher::new("", b"variant");
        h.part(&base);
        for name in names {
            h.part(name.as_str().as_bytes());
            header_values(&mut h, headers, name);
        }
        CacheKey {
            digest: h.finish_digest(),
            label: self.label,
            base: Some(base),
        }
    }

    /// The key of the variant whose digest is `digest` (an entry's `Vary` digest), of the
    /// URL whose key is `self`.
    pub(crate) fn with_variant_digest(&self, digest: [u8; 32]) -> Self {
        CacheKey {
            digest,
            label: self.label,
            base: Some(self.base.unwrap_or(self.digest)),
        }
    }

    /// For a variant's key, the digest of its URL's key.
    pub(crate) fn base(&self) -> Option<&[u8; 32]> {
        self.base.as_ref()
    }

    /// The URL's key: `self`, or the key a variant's derives from.
    pub(crate) fn url_key(&self) -> CacheKey {
        CacheKey {
            digest: self.base.unwrap_or(self.digest),
            label: self.label,
            base: None,
        }
    }
}

impl PartialEq for CacheKey {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest
    }
}

impl Eq for CacheKey {}

impl std::hash::Hash for CacheKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.digest.hash(state);
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({} #{})", self.label, &self.hex()[..16])
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.label, &self.hex()[..16])
    }
}

/// How the query string takes part in the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueryMode {
    /// Parameters in the order the client sent them (the safe default: a handler may care).
    #[default]
    Ordered,
    /// Parameters sorted by name then value: `?a=1&b=2` and `?b=2&a=1` share an entry.
    Sorted,
    /// The query string is left out of the key entirely.
    Ignored,
}

/// The page parameters of a paginated list.
///
/// Each page is its own entry; the page parameters are always part of the key (even when an
/// allow list leaves them out), and a missing parameter counts as its default, so `?` and
/// `?page=1&per_page=20` share one entry when the defaults are 1 and 20.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pagination {
    page: Box<str>,
    per_page: Option<Box<str>>,
    default_page: Option<Box<str>>,
    default_per_page: Option<Box<str>>,
}

impl Pagination {
    /// Pages selected by the query parameter `page`.
    pub fn new(page: &str) -> Self {
        Pagination {
            page: page.into(),
            per_page: None,
            default_page: None,
            default_per_page: None,
        }
    }

    /// The query parameter that sets the page size.
    pub fn per_page(mut self, name: &str) -> Self {
        self.per_page = Some(name.into());
        self
    }

    /// The values the handler uses when the parameters are absent.
    pub fn defaults(mut self, page: impl fmt::Display, per_page: impl fmt::Display) -> Self {
        self.default_page = Some(page.to_string().into());
        self.default_per_page = Some(per_page.to_string().into());
        self
    }

    fn is_param(&self, name: &str) -> bool {
        *self.page == *name || self.per_page.as_deref() == Some(name)
    }
}

/// Which parts of a request make up its key.
#[derive(Debug, Clone, Default)]
pub struct KeyOptions {
    query: QueryMode,
    allow: Option<Vec<Box<str>>>,
    deny: Vec<Box<str>>,
    keep_tracking: bool,
    ignore_authority: bool,
    headers: Vec<HeaderName>,
    pagination: Option<Pagination>,
    parts: Vec<KeyPart>,
}

/// A part of the key computed from the request by the application (see [`KeyOptions::part`]).
#[derive(Clone)]
struct KeyPart {
    name: Box<str>,
    value: Arc<KeyPartFn>,
}

type KeyPartFn = dyn Fn(&Parts) -> Option<String> + Send + Sync;

impl fmt::Debug for KeyPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPart({:?})", self.name)
    }
}

impl KeyOptions {
    /// Default options: ordered query, tracking parameters dropped, authority included.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets how the query string takes part in the key.
    pub fn query(mut self, mode: QueryMode) -> Self {
        self.query = mode;
        self
    }

    /// Only these query parameters take part in the key (plus the page parameters).
    ///
    /// Only name parameters the handler ignores otherwise: a parameter left out of the key
    /// that changes the response lets one client's response reach another.
    pub fn allow_params<I, T>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        self.allow = Some(names.into_iter().map(|n| n.as_ref().into()).collect());
        self
    }

    /// These query parameters never take part in the key (cache busters the handler ignores).
    pub fn deny_params<I, T>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        self.deny
            .extend(names.into_iter().map(|n| n.as_ref().into()));
        self
    }

    /// Keeps `utm_*`, `gclid`, `fbclid` and the other tracking parameters in the key
    /// (they are dropped by default).
    pub fn keep_tracking_params(mut self) -> Self {
        self.keep_tracking = true;
        self
    }

    /// Leaves the request authority (`Host`) out of the key. Only for services that answer
    /// the same way on every host name.
    pub fn ignore_authority(mut self) -> Self {
        self.ignore_authority = true;
        self
    }

    /// Makes the values of these request headers part of the key, so that each value gets its
    /// own entry (declare here what the response's `Vary` names, to keep all variants).
    pub fn vary_on<I>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = HeaderName>,
    {
        self.headers.extend(names);
        self.headers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        self.headers.dedup();
        self
    }

    /// Declares the page parameters of a paginated list.
    pub fn paginate(mut self, pagination: Pagination) -> Self {
        self.pagination = Some(pagination);
        self
    }

    /// Adds a part of the key that the application computes from the request: a tenant, a
    /// feature flag, a region, anything the response depends on that the URL does not show,
    /// read from an extension that a middleware in front of the cache inserted, or from a
    /// header. Each distinct value gets its own entries; `None` is a value too (the requests
    /// without one share their entries). `name` tells parts apart (two parts with different
    /// names never collide).
    ///
    /// Use this, not a [`UserScope`](crate::UserScope), for what is not a user: a user scope
    /// also decides whether `private` responses may be stored and whether a request with no
    /// user is cached at all.
    ///
    /// ```
    /// use larder::{KeyOptions, Rule};
    ///
    /// #[derive(Clone)]
    /// struct Tenant(String);
    ///
    /// let rule = Rule::new("catalogue").key(
    ///     KeyOptions::new().part("tenant", |req| {
    ///         req.extensions.get::<Tenant>().map(|t| t.0.clone())
    ///     }),
    /// );
    /// # let _ = rule;
    /// ```
    pub fn part<F>(mut self, name: &str, value: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.parts.push(KeyPart {
            name: name.into(),
            value: Arc::new(value),
        });
        self
    }

    /// These options with what a rule added to its own (its pages and its parts), for a rule
    /// that takes the handle's default options.
    pub(crate) fn with_rule_parts(mut self, rule: &KeyOptions) -> Self {
        if rule.pagination.is_some() {
            self.pagination = rule.pagination.clone();
        }
        self.parts.extend(rule.parts.iter().cloned());
        self
    }

    /// These options, after `earlier` ones of the same rule: `earlier`'s parts come first, and
    /// its pages stay unless these set their own.
    pub(crate) fn keeping(mut self, earlier: &KeyOptions) -> Self {
        if self.pagination.is_none() {
            self.pagination = earlier.pagination.clone();
        }
        let mut parts = earlier.parts.clone();
        parts.append(&mut self.parts);
        self.parts = parts;
        self
    }

    fn keeps(&self, name: &str) -> bool {
        if self.deny.iter().any(|d| **d == *name) {
            return false;
        }
        if let Some(allow) = &self.allow {
            return allow.iter().any(|a| **a == *name);
        }
        self.keep_tracking || !is_tracking(name)
    }

    /// Builds the key of an HTTP request.
    pub(crate) fn build(&self, input: &KeyInput<'_>) -> CacheKey {
        let mut h = PartHasher::new(input.namespace, b"http");
        h.part(input.method.as_str().as_bytes());
        match (self.ignore_authority, input.authority) {
            // Host names are case-insensitive (RFC 3986 §3.2.2); most arrive lower-case.
            (false, Some(a)) if a.bytes().any(|b| b.is_ascii_uppercase()) => {
                h.some(a.to_ascii_lowercase().as_bytes())
            }
            (false, Some(a)) => h.some(a.as_bytes()),
            _ => h.none(),
        }
        h.part(normalize_percent(input.path).as_bytes());
        self.hash_query(&mut h, input.query);
        for name in &self.headers {
            h.part(name.as_str().as_bytes());
            header_values(&mut h, input.headers, name);
        }
        match input.scope {
            Some(s) => h.some(s.as_bytes()),
            None => h.none(),
        }
        match input.body {
            Some(d) => h.some(d),
            None => h.none(),
        }
        // Appended only when there are some, so the keys of rules without any are unchanged
        // (the parts' kind bytes keep the two kinds of keys apart).
        if !self.parts.is_empty() {
            h.count(self.parts.len());
            for part in &self.parts {
                h.part(part.name.as_bytes());
                match input.request.and_then(|r| (part.value)(r)) {
                    Some(v) => h.some(v.as_bytes()),
                    None => h.none(),
                }
            }
        }
        h.finish(label_of(&[
            input.method.as_str().as_bytes(),
            b":",
            input.path.as_bytes(),
        ]))
    }

    fn hash_query(&self, h: &mut PartHasher, query: Option<&str>) {
        if self.pagination.is_none() && query.is_none_or(str::is_empty) {
            // The same as parsing nothing: no parameters (or none kept, when ignored).
            match self.query {
                QueryMode::Ignored => h.none(),
                QueryMode::Ordered | QueryMode::Sorted => h.count(0),
            }
            return;
        }
        if self.query == QueryMode::Ignored {
            h.none();
            if let Some(p) = &self.pagination {
                self.hash_pages(h, p, query);
            }
            return;
        }
        let raw = query.unwrap_or("");
        let mut pairs: Vec<(std::borrow::Cow<'_, str>, std::borrow::Cow<'_, str>)> =
            query_pairs(raw)
                .filter(|(name, _)| {
                    !self.pagination.as_ref().is_some_and(|p| p.is_param(name)) && self.keeps(name)
                })
                .collect();
        if self.query == QueryMode::Sorted {
            pairs.sort();
        }
        h.count(pairs.len());
        for (name, value) in &pairs {
            h.part(name.as_bytes());
            h.part(value.as_bytes());
        }
        if let Some(p) = &self.pagination {
            self.hash_pages(h, p, query);
        }
    }

    fn hash_pages(&self, h: &mut PartHasher, p: &Pagination, query: Option<&str>) {
        let pairs = || query_pairs(query.unwrap_or(""));
        hash_page_param(h, pairs, &p.page, p.default_page.as_deref());
        match &p.per_page {
            Some(name) => hash_page_param(h, pairs, name, p.default_per_page.as_deref()),
            None => h.none(),
        }
    }
}

/// A page parameter's value, or its default. Given more than once (`?page=3&page=1`), every
/// value is part of the key: such a request never shares an entry with one that names a
/// single page, since the handler may well reject it.
fn hash_page_param<'q, I>(
    h: &mut PartHasher,
    pairs: impl Fn() -> I,
    param: &str,
    default: Option<&str>,
) where
    I: Iterator<Item = (std::borrow::Cow<'q, str>, std::borrow::Cow<'q, str>)>,
{
    let mut values = pairs().filter(|(n, _)| n == param).map(|(_, v)| v);
    let first = values.next();
    if values.next().is_some() {
        let all: Vec<_> = pairs()
            .filter(|(n, _)| n == param)
            .map(|(_, v)| v)
            .collect();
        h.count(all.len());
        for v in &all {
            h.part(v.as_bytes());
        }
        return;
    }
    match first.as_deref().or(default) {
        Some(v) => h.some(v.as_bytes()),
        None => h.none(),
    }
}

/// The parts of a request that a key is built from.
pub(crate) struct KeyInput<'a> {
    pub(crate) namespace: &'a str,
    pub(crate) method: &'a Method,
    pub(crate) authority: Option<&'a str>,
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) scope: Option<&'a str>,
    /// The digest of the request body, for rules that cache POSTs by their body.
    pub(crate) body: Option<&'a [u8; 32]>,
    /// The request, for the application's key parts ([`KeyOptions::part`]).
    pub(crate) request: Option<&'a Parts>,
}

/// The query's name/value pairs as `application/x-www-form-urlencoded` defines them (what
/// `form_urlencoded::parse` gives: `&` separates, empty pieces are skipped, the first `=`
/// splits, `+` and `%XX` are decoded, invalid UTF-8 is replaced). Pieces with nothing to decode,
/// the usual case, are borrowed as they are instead of going through the decoder.
fn query_pairs(
    raw: &str,
) -> impl Iterator<Item = (std::borrow::Cow<'_, str>, std::borrow::Cow<'_, str>)> {
    use std::borrow::Cow;
    raw.split('&').filter(|p| !p.is_empty()).map(|piece| {
        if piece.bytes().any(|b| b == b'%' || b == b'+') {
            form_urlencoded::parse(piece.as_bytes())
                .next()
                .unwrap_or((Cow::Borrowed(""), Cow::Borrowed("")))
        } else {
            let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
            (Cow::Borrowed(name), Cow::Borrowed(value))
        }
    })
}

fn is_tracking(name: &str) -> bool {
    name.starts_with("utm_") || TRACKING.contains(&name)
}

/// Hashes a sequence of parts, each prefixed by a kind byte and its length.
///
/// The parts are gathered in a buffer on the stack and hashed in one call; longer inputs move
/// to the heap, still to be hashed in one call (BLAKE3 hashes a long input many chunks at a
/// time, but a stream of small updates one block at a time).
struct PartHasher {
    buf: ArrayVec<u8, HASH_BUFFER>,
    spill: Option<Vec<u8>>,
}

impl PartHasher {
    fn new(namespace: &str, kind: &[u8]) -> Self {
        let mut h = PartHasher {
            buf: ArrayVec::new(),
            spill: None,
        };
        h.part(b"larder");
        h.write(&[KEY_FORMAT]);
        h.part(namespace.as_bytes());
        h.part(kind);
        h
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        if let Some(spill) = &mut self.spill {
            spill.extend_from_slice(bytes);
        } else if self.buf.try_extend_from_slice(bytes).is_err() {
            let mut spill = Vec::with_capacity((HASH_BUFFER + bytes.len()) * 2);
            spill.extend_from_slice(&self.buf);
            spill.extend_from_slice(bytes);
            self.spill = Some(spill);
        }
    }

    /// A kind byte then `n` as an LEB128 varint (a prefix code, so the parts stay
    /// unambiguous), in one write.
    #[inline]
    fn head(&mut self, kind: u8, n: usize) {
        let mut head = [kind; 11];
        let mut n = n as u64;
        let mut len = 1;
        loop {
            let low = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                head[len] = low;
                len += 1;
                break;
            }
            head[len] = low | 0x80;
            len += 1;
        }
        self.write(&head[..len]);
    }

    #[inline]
    fn part(&mut self, bytes: &[u8]) {
        self.head(1, bytes.len());
        self.write(bytes);
    }

    fn some(&mut self, bytes: &[u8]) {
        self.write(&[2]);
        self.part(bytes);
    }

    fn none(&mut self) {
        self.write(&[3]);
    }

    fn count(&mut self, n: usize) {
        self.head(4, n);
    }

    fn finish_digest(self) -> [u8; 32] {
        let input = self.spill.as_deref().unwrap_or(&self.buf);
        *blake3::hash(input).as_bytes()
    }

    fn finish(self, label: Label) -> CacheKey {
        CacheKey {
            base: None,
            digest: self.finish_digest(),
            label,
        }
    }
}

/// Absent, present-but-empty and present are three different things (RFC 9111 §4.1).
fn header_values(h: &mut PartHasher, headers: &HeaderMap, name: &HeaderName) {
    let mut values = headers.get_all(name).iter().peekable();
    if values.peek().is_none() {
        h.none();
        return;
    }
    let values: Vec<&[u8]> = values.map(|v| trim(v.as_bytes())).collect();
    h.count(values.len());
    for v in values {
        h.part(v);
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

/// Upper-cases the hex digits of percent escapes (RFC 3986 §6.2.2.1); nothing else changes,
/// because the router matched the path as sent.
pub(crate) fn normalize_percent(path: &str) -> std::borrow::Cow<'_, str> {
    let b = path.as_bytes();
    if !b.contains(&b'%') {
        return std::borrow::Cow::Borrowed(path);
    }
    let escape_at = |i: usize| {
        b[i] == b'%'
            && i + 2 < b.len()
            && b[i + 1].is_ascii_hexdigit()
            && b[i + 2].is_ascii_hexdigit()
    };
    let needs = (0..b.len())
        .any(|i| escape_at(i) && (b[i + 1].is_ascii_lowercase() || b[i + 2].is_ascii_lowercase()));
    if !needs {
        return std::borrow::Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    let mut copied = 0;
    for i in 0..b.len() {
        if i >= copied && escape_at(i) {
            out.push_str(&path[copied..i]);
            out.push('%');
            out.push(b[i + 1].to_ascii_uppercase() as char);
            out.push(b[i + 2].to_ascii_uppercase() as char);
            copied = i + 3;
        }
    }
    out.push_str(&path[copied..]);
    std::borrow::Cow::Owned(out)
}

fn label(text: &str) -> Label {
    label_of(&[text.as_bytes()])
}

/// The label of `pieces` one after the other: every byte outside `[A-Za-z0-9/._:-]` (each
/// byte of a multi-byte character too) becomes `_`, and it stops at [`LABEL_MAX`] bytes.
fn label_of(pieces: &[&[u8]]) -> Label {
    let mut buf = [0u8; LABEL_MAX];
    let mut len = 0;
    for piece in pieces {
        let take = piece.len().min(LABEL_MAX - len);
        for (to, &b) in buf[len..len + take].iter_mut().zip(&piece[..take]) {
            *to = match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'/' | b'.' | b'_' | b':' | b'-' => b,
                _ => b'_',
            };
        }
        len += take;
    }
    // Only ASCII was written, and no more than the label holds.
    std::str::from_utf8(&buf[..len])
        .ok()
        .and_then(|s| Label::from(s).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    fn key(opts: &KeyOptions, path: &str, query: Option<&str>, scope: Option<&str>) -> CacheKey {
        key_with_body(opts, &Method::GET, path, query, scope, None)
    }

    fn key_with_body(
        opts: &KeyOptions,
        method: &Method,
        path: &str,
        query: Option<&str>,
        scope: Option<&str>,
        body: Option<&[u8; 32]>,
    ) -> CacheKey {
        opts.build(&KeyInput {
            namespace: "t",
            method,
            authority: Some("example.com"),
            path,
            query,
            headers: &HeaderMap::new(),
            scope,
            body,
            request: None,
        })
    }

    #[test]
    fn body_digests_are_a_part_of_their_own() {
        let o = KeyOptions::new();
        let empty = *blake3::hash(b"").as_bytes();
        let post = |body| key_with_body(&o, &Method::POST, "/rpc", None, None, body);
        // No body, the empty body's digest, and a GET are three different keys.
        assert_ne!(post(None), post(Some(&empty)));
        assert_ne!(
            post(Some(&empty)),
            key_with_body(&o, &Method::GET, "/rpc", None, None, Some(&empty))
        );
        assert_ne!(key(&o, "/rpc", None, None), post(None));
    }

    #[test]
    fn application_parts_are_keyed_by_name_and_value() {
        let with = |opts: &KeyOptions, req: &Parts| {
            opts.build(&KeyInput {
                namespace: "t",
                method: &Method::GET,
                authority: Some("example.com"),
                path: "/r",
                query: None,
                headers: &HeaderMap::new(),
                scope: None,
                body: None,
                request: Some(req),
            })
        };
        let header = |name: &'static str| {
            move |req: &Parts| {
                req.headers
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_owned())
            }
        };
        let request = |tenant: Option<&str>| {
            let mut b = http::Request::get("/r");
            if let Some(t) = tenant {
                b = b.header("x-tenant", t);
            }
            b.body(()).unwrap().into_parts().0
        };
        let plain = KeyOptions::new();
        let tenant = KeyOptions::new().part("tenant", header("x-tenant"));
        let region = KeyOptions::new().part("region", header("x-tenant"));
        let (acme, globex, none) = (
            request(Some("acme")),
            request(Some("globex")),
            request(None),
        );
        // A rule without parts keys as it always did, whatever the request carries.
        assert_eq!(with(&plain, &acme), key(&plain, "/r", None, None));
        assert_eq!(with(&tenant, &acme), with(&tenant, &request(Some("acme"))));
        assert_ne!(with(&tenant, &acme), with(&tenant, &globex));
        // No value is a value of its own, and not the key of a rule without parts.
        assert_ne!(with(&tenant, &none), with(&tenant, &acme));
        assert_ne!(with(&tenant, &none), with(&plain, &none));
        // The same value under another name is another key.
        assert_ne!(with(&tenant, &acme), with(&region, &acme));
    }

    #[test]
    fn concatenation_does_not_collide() {
        let o = KeyOptions::new();
        assert_ne!(
            key(&o, "/a", Some("b:c=d"), Some("e")),
            key(&o, "/a", Some("b"), Some(":c=de"))
        );
        assert_ne!(
            key(&o, "/a:b", None, Some("c")),
            key(&o, "/a", None, Some("b:c"))
        );
        assert_ne!(key(&o, "/x", None, None), key(&o, "/x", None, Some("")));
        assert_ne!(
            key(&o, "/x", Some("a=1&b=2"), None),
            key(&o, "/x", Some("a=1%26b%3D2"), None)
        );
    }

    #[test]
    fn query_order_matters_unless_sorted() {
        let o = KeyOptions::new();
        assert_ne!(
            key(&o, "/l", Some("a=1&b=2"), None),
            key(&o, "/l", Some("b=2&a=1"), None)
        );
        let s = KeyOptions::new().query(QueryMode::Sorted);
        assert_eq!(
            key(&s, "/l", Some("a=1&b=2"), None),
            key(&s, "/l", Some("b=2&a=1"), None)
        );
    }

    #[test]
    fn semicolon_is_not_a_separator() {
        let o = KeyOptions::new();
        assert_ne!(
            key(&o, "/l", Some("a=1;cb=evil"), None),
            key(&o, "/l", Some("a=1"), None)
        );
    }

    #[test]
    fn percent_encoding_that_decodes_alike_shares_a_key() {
        let o = KeyOptions::new();
        assert_eq!(
            key(&o, "/l", Some("q=%41"), None),
            key(&o, "/l", Some("q=A"), None)
        );
        assert_eq!(key(&o, "/a%2fb", None, None), key(&o, "/a%2Fb", None, None));
    }

    #[test]
    fn tracking_params_dropped_and_lists_apply() {
        let o = KeyOptions::new();
        assert_eq!(
            key(&o, "/l", Some("a=1&utm_source=x&gclid=y"), None),
            key(&o, "/l", Some("a=1"), None)
        );
        let keep = KeyOptions::new().keep_tracking_params();
        assert_ne!(
            key(&keep, "/l", Some("a=1&utm_source=x"), None),
            key(&keep, "/l", Some("a=1"), None)
        );
        let deny = KeyOptions::new().deny_params(["cb"]);
        assert_eq!(
            key(&deny, "/l", Some("cb=1&a=2"), None),
            key(&deny, "/l", Some("a=2&cb=9"), None)
        );
        let allow = KeyOptions::new().allow_params(["q"]);
        assert_eq!(
            key(&allow, "/l", Some("q=1&z=2"), None),
            key(&allow, "/l", Some("q=1"), None)
        );
        assert_ne!(
            key(&allow, "/l", Some("q=1"), None),
            key(&allow, "/l", Some("q=2"), None)
        );
    }

    #[test]
    fn pages_are_distinct_and_defaults_fold() {
        let o = KeyOptions::new()
            .allow_params(["q"])
            .paginate(Pagination::new("page").per_page("per_page").defaults(1, 20));
        let p1 = key(&o, "/s", Some("page=1"), None);
        assert_eq!(p1, key(&o, "/s", None, None));
        assert_eq!(p1, key(&o, "/s", Some("per_page=20&page=1"), None));
        assert_ne!(p1, key(&o, "/s", Some("page=2"), None));
        assert_ne!(p1, key(&o, "/s", Some("page=1&per_page=50"), None));
    }

    #[test]
    fn a_page_given_twice_shares_no_entry_with_one_page() {
        let o = KeyOptions::new().paginate(Pagination::new("page").per_page("per_page"));
        let twice = key(&o, "/s", Some("page=3&page=1"), None);
        for single in ["page=3", "page=1", "", "page=31"] {
            assert_ne!(twice, key(&o, "/s", Some(single), None), "{single}");
        }
        assert_ne!(twice, key(&o, "/s", Some("page=1&page=3"), None));
        assert_ne!(
            key(&o, "/s", Some("per_page=5&per_page=50"), None),
            key(&o, "/s", Some("per_page=5"), None)
        );
    }

    #[test]
    fn users_and_hosts_are_distinct() {
        let o = KeyOptions::new();
        assert_ne!(
            key(&o, "/me", None, Some("1")),
            key(&o, "/me", None, Some("2"))
        );
        let other_host = o.build(&KeyInput {
            namespace: "t",
            method: &Method::GET,
            authority: Some("tenant-b.example.com"),
            path: "/me",
            query: None,
            headers: &HeaderMap::new(),
            scope: None,
            body: None,
            request: None,
        });
        assert_ne!(key(&o, "/me", None, None), other_host);
    }

    #[test]
    fn varied_header_absent_empty_and_values_differ() {
        let o = KeyOptions::new().vary_on([http::header::ACCEPT_LANGUAGE]);
        let build = |v: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(v) = v {
                h.insert(
                    http::header::ACCEPT_LANGUAGE,
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            o.build(&KeyInput {
                namespace: "t",
                method: &Method::GET,
                authority: None,
                path: "/",
                query: None,
                headers: &h,
                scope: None,
                body: None,
                request: None,
            })
        };
        let keys = [
            build(None),
            build(Some("")),
            build(Some("en")),
            build(Some("fr")),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(build(Some(" en ")), build(Some("en")));
    }

    #[test]
    fn huge_url_gives_short_sanitized_label() {
        let path = format!("/{}{{tag}}", "x".repeat(10_000));
        let k = key(&KeyOptions::new(), &path, Some(&"q=1&".repeat(5_000)), None);
        assert!(k.label().len() <= LABEL_MAX);
        assert!(!k.label().contains('{') && !k.label().contains('}'));
        assert_eq!(k.hex().len(), 64);
    }

    /// The same parts encoded the obvious way, into one `Vec`, for comparison.
    fn reference_digest(parts: &[Vec<u8>]) -> [u8; 32] {
        let mut out = Vec::new();
        for p in parts {
            out.push(1);
            let mut n = p.len() as u64;
            loop {
                let low = (n & 0x7f) as u8;
                n >>= 7;
                if n == 0 {
                    out.push(low);
                    break;
                }
                out.push(low | 0x80);
            }
            out.extend_from_slice(p);
        }
        *blake3::hash(&out).as_bytes()
    }

    #[test]
    fn buffered_and_spilled_parts_hash_like_one_buffer() {
        // Around the buffer's size and the varint's byte boundaries (127/128, 16383/16384).
        for sizes in [
            vec![0, 1, 127],
            vec![128, 100, 27],
            vec![HASH_BUFFER - 2, 1],
            vec![HASH_BUFFER - 1, HASH_BUFFER, HASH_BUFFER + 1],
            vec![16_383, 16_384, 3],
            vec![5, 100_000, 5],
        ] {
            let parts: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| (0..n).map(|j| (i * 31 + j) as u8).collect())
                .collect();
            let mut h = PartHasher {
                buf: ArrayVec::new(),
                spill: None,
            };
            for p in &parts {
                h.part(p);
            }
            assert_eq!(
                h.finish_digest(),
                reference_digest(&parts),
                "sizes {sizes:?}"
            );
        }
    }

    #[test]
    fn query_pairs_match_form_urlencoded() {
        for raw in [
            "",
            "&&",
            "a=1&b=2",
            "a=1&&b",
            "=x&y=",
            "a=1=2&b==",
            "q=caf%C3%A9&x=a+b&%41=%zz",
            "bad=%FF%FE&plus=+&name+with=sp%20ace",
            "k=v&k=w",
            ";a=1;b=2",
        ] {
            let ours: Vec<_> = query_pairs(raw).collect();
            let theirs: Vec<_> = form_urlencoded::parse(raw.as_bytes()).collect();
            assert_eq!(ours, theirs, "{raw:?}");
        }
    }

    proptest! {
        #[test]
        fn query_pairs_match_form_urlencoded_on_any_query(raw in "[a-z=&%+0-9A-F;]{0,40}") {
            let ours: Vec<_> = query_pairs(&raw).collect();
            let theirs: Vec<_> = form_urlencoded::parse(raw.as_bytes()).collect();
            prop_assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn a_usual_request_key_fits_one_blake3_block() {
        let mut h = PartHasher::new("", b"http");
        h.part(b"GET");
        h.some(b"example.com");
        h.part(b"/api/report");
        h.count(0);
        h.none();
        h.none();
        assert!(h.spill.is_none());
        assert!(h.buf.len() <= 64, "{} bytes", h.buf.len());
    }

    proptest! {
        #[test]
        fn distinct_inputs_give_distinct_keys(
            a in proptest::collection::vec(".{0,12}", 3),
            b in proptest::collection::vec(".{0,12}", 3),
            bodies in proptest::collection::vec(proptest::option::of(proptest::collection::vec(0u8..4, 0..3)), 2),
        ) {
            let o = KeyOptions::new().keep_tracking_params();
            let mk = |p: &[String], body: &Option<Vec<u8>>| {
                let path = format!("/{}", p[0]);
                // The query is compared as decoded pairs, so build it from encoded parts.
                let q: String = form_urlencoded::Serializer::new(String::new()).append_pair("k", &p[1]).finish();
                let digest = body.as_deref().map(|b| *blake3::hash(b).as_bytes());
                let k = key_with_body(&o, &Method::POST, &path, Some(&q), Some(&p[2]), digest.as_ref());
                (k, (path, p[1].clone(), p[2].clone()))
            };
            let (ka, ia) = mk(&a, &bodies[0]);
            let (kb, ib) = mk(&b, &bodies[1]);
            // Paths differing only in percent-hex case are the same resource.
            let same = normalize_percent(&ia.0) == normalize_percent(&ib.0)
                && ia.1 == ib.1
                && ia.2 == ib.2
                && bodies[0] == bodies[1];
            prop_assert_eq!(ka == kb, same);
        }

        #[test]
        fn body_digests_distinguish_keys(a in proptest::collection::vec(any::<u8>(), 0..16), b in proptest::collection::vec(any::<u8>(), 0..16)) {
            let o = KeyOptions::new();
            let mk = |body: &[u8]| {
                let digest = *blake3::hash(body).as_bytes();
                key_with_body(&o, &Method::POST, "/catalog.v1.Catalog/GetItem", None, None, Some(&digest))
            };
            prop_assert_eq!(mk(&a) == mk(&b), a == b);
        }

        #[test]
        fn typed_keys_distinct(a in ".{0,40}", b in ".{0,40}") {
            prop_assert_eq!(CacheKey::typed("n", &a) == CacheKey::typed("n", &b), a == b);
        }
    }
}
