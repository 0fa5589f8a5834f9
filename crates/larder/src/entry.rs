//! The stored form of a response: status, headers, body, trailers and freshness.

use std::{
    sync::{
        OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

/// A stored response (or a typed value, stored as a 200 with a JSON body).
///
/// Entries are immutable and shared as `Arc<Entry>`: a hit clones the `Arc`, never the body.
#[derive(Debug, Clone)]
pub struct Entry {
    pub(crate) status: StatusCode,
    /// Headers as the origin sent them, less hop-by-hop fields and the tag header.
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) trailers: Option<HeaderMap>,
    /// The origin's ETag, or a strong one derived from the body.
    pub(crate) etag: HeaderValue,
    /// When it was stored, in Unix milliseconds.
    pub(crate) stored_at: u64,
    /// The store's invalidation stamp taken before the origin was asked: an invalidation after
    /// this stamp makes the entry unreachable, even if the entry was written after it.
    pub(crate) born: u64,
    pub(crate) lifetime: Duration,
    pub(crate) initial_age: Duration,
    pub(crate) stale_while_revalidate: Duration,
    pub(crate) stale_if_error: Duration,
    pub(crate) must_revalidate: bool,
    /// How long the origin took to produce it (XFetch's delta).
    pub(crate) fill_time: Duration,
    pub(crate) tags: Box<[Box<str>]>,
    /// Request header names from the response's `Vary`, and the digest of the values the
    /// storing request had for them (RFC 9111 §4.1).
    pub(crate) vary: Option<(Box<[HeaderName]>, [u8; 32])>,
    /// Not part of the stored form (never encoded, never read by a store): the headers a hit
    /// starts from, `headers` followed by `Age` and a `Cache-Status` placeholder, kept by the
    /// layer from the entry's second hit, so each later hit of an entry that an in-process
    /// store holds clones them without growing and overwrites the placeholders in place.
    pub(crate) hit_headers: SecondUse<HeaderMap>,
}

/// A value made at its second use and kept: an entry read from a network store is served
/// once and never pays for it; one an in-process store holds is served many times.
#[derive(Debug, Default)]
pub(crate) struct SecondUse<T> {
    value: OnceLock<T>,
    used: AtomicBool,
}

impl<T: Clone> SecondUse<T> {
    /// The value: a clone of the kept one, or one made by `make` (kept from the second use).
    pub(crate) fn get_or_make(&self, make: impl FnOnce() -> T) -> T {
        if let Some(value) = self.value.get() {
            return value.clone();
        }
        if self.used.swap(true, Ordering::Relaxed) {
            self.value.get_or_init(make).clone()
        } else {
            make()
        }
    }
}

impl<T: Clone> Clone for SecondUse<T> {
    fn clone(&self) -> Self {
        SecondUse {
            value: self.value.clone(),
            used: AtomicBool::new(self.used.load(Ordering::Relaxed)),
        }
    }
}

/// How usable an entry is at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freshness {
    /// Fresh for this many more whole seconds.
    Fresh { ttl: u64 },
    /// Stale by this long; `revalidate` and `if_error` say whether the stale windows allow use.
    Stale {
        by: Duration,
        revalidate: bool,
        if_error: bool,
    },
}

impl Entry {
    /// The response status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stored headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The stored body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The stored trailers, if the response had any.
    pub fn trailers(&self) -> Option<&HeaderMap> {
        self.trailers.as_ref()
    }

    /// Whether this entry may answer a request with credentials on a rule that is neither
    /// user-scoped nor shared: its response said `public` or `s-maxage` (RFC 9111 §3.5).
    pub(crate) fn shared_with_credentials(&self) -> bool {
        crate::rules::policy::shared_with_credentials(&self.headers)
    }

    /// The tags the entry carries.
    pub fn tags(&self) -> impl Iterator<Item = &str> {
        self.tags.iter().map(|t| &**t)
    }

    /// The store stamp taken before the origin was asked (see [`Invalidation::stamp`](crate::store::Invalidation::stamp)).
    pub fn born(&self) -> u64 {
        self.born
    }

    /// The validators the origin gave (`ETag`, `Last-Modified`), with which a stale copy is
    /// revalidated (RFC 9111 §4.3.1); `None` when it gave neither (the cache's own derived
    /// `ETag` is not the origin's to compare).
    pub(crate) fn validators(&self) -> Option<(Option<&HeaderValue>, Option<&HeaderValue>)> {
        let etag = self
            .headers
            .get(http::header::ETAG)
            .filter(|etag| !is_derived(etag));
        let modified = self.headers.get(http::header::LAST_MODIFIED);
        (etag.is_some() || modified.is_some()).then_some((etag, modified))
    }

    /// How long a store should keep the entry from now: the rest of its freshness plus the
    /// longest of its stale windows and, when the origin gave a validator, a revalidation
    /// window (its lifetime, at least five minutes): a stale copy then costs a `304`
    /// instead of the whole body.
    pub fn time_to_keep(&self, now_ms: u64) -> Duration {
        let revalidation = if self.validators().is_some() {
            self.lifetime.max(REVALIDATION_KEEP)
        } else {
            Duration::ZERO
        };
        let total = self.lifetime.saturating_sub(self.initial_age)
            + self
                .stale_while_revalidate
                .max(self.stale_if_error)
                .max(revalidation);
        total.saturating_sub(Duration::from_millis(now_ms.saturating_sub(self.stored_at)))
    }

    /// The entry's current age (RFC 9111 §4.2.3).
    pub(crate) fn age(&self, now_ms: u64) -> Duration {
        self.initial_age + Duration::from_millis(now_ms.saturating_sub(self.stored_at))
    }

    pub(crate) fn freshness(&self, now_ms: u64) -> Freshness {
        let age = self.age(now_ms);
        if age < self.lifetime {
            return Freshness::Fresh {
                ttl: (self.lifetime - age).as_secs(),
            };
        }
        let by = age - self.lifetime;
        Freshness::Stale {
            by,
            revalidate: !self.must_revalidate && by < self.stale_while_revalidate,
            if_error: !self.must_revalidate && by < self.stale_if_error,
        }
    }

    /// XFetch (Vattani et al., VLDB 2015): refresh a fresh entry early with a probability that
    /// rises as its expiry nears, scaled by how long it takes to recompute: when
    /// `ttl_left <= fill_time * beta * -ln(rand)`. One refresh per key runs at a time.
    pub(crate) fn refresh_early(&self, now_ms: u64, beta: f64) -> bool {
        let age = self.age(now_ms);
        if age >= self.lifetime || self.fill_time.is_zero() {
            return false;
        }
        let left = (self.lifetime - age).as_secs_f64();
        let draw = 1.0 - fastrand::f64(); // in (0, 1]: ln is finite
        left <= self.fill_time.as_secs_f64() * beta * -draw.ln()
    }

    /// Approximate memory held by the entry, for byte-bounded stores.
    pub fn weight(&self) -> u32 {
        let headers = |h: &HeaderMap| {
            h.iter()
                .map(|(n, v)| n.as_str().len() + v.len() + 32)
                .sum::<usize>()
        };
        let size = 256
            + self.body.len()
            // Twice: the hit headers made at the first hit are a second map of the same fields.
            + 2 * headers(&self.headers)
            + self.trailers.as_ref().map_or(0, headers)
            + self.tags.iter().map(|t| t.len() + 16).sum::<usize>();
        u32::try_from(size).unwrap_or(u32::MAX)
    }
}

/// The shortest time a stale entry with an origin validator is kept for revalidation.
pub(crate) const REVALIDATION_KEEP: Duration = Duration::from_secs(5 * 60);

/// How a derived `ETag`'s opaque tag starts: the cache knows its own from the origin's.
const DERIVED: &str = "\"larder:";

/// Whether `etag` is one [`derive_etag`] made (not the origin's).
pub(crate) fn is_derived(etag: &HeaderValue) -> bool {
    etag.as_bytes().starts_with(DERIVED.as_bytes())
}

/// A strong validator derived from the body (RFC 9110 §8.8.3): equal bodies, equal tags;
/// `"larder:` and 32 hex digits of its BLAKE3 hash.
pub(crate) fn derive_etag(body: &[u8]) -> HeaderValue {
    let hash = blake3::hash(body);
    let hex = hash.to_hex();
    let mut s = String::with_capacity(DERIVED.len() + 33);
    s.push_str(DERIVED);
    s.push_str(&hex[..32]);
    s.push('"');
    HeaderValue::try_from(s).unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

#[cfg(test)]
impl Entry {
    /// An empty 200, fresh for a minute, for unit tests.
    pub(crate) fn for_tests() -> Self {
        Entry {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            trailers: None,
            etag: HeaderValue::from_static("\"t\""),
            stored_at: 0,
            born: 0,
            lifetime: Duration::from_secs(60),
            initial_age: Duration::ZERO,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            must_revalidate: false,
            fill_time: Duration::ZERO,
            tags: Box::new([]),
            vary: None,
            hit_headers: SecondUse::default(),
        }
    }
}
