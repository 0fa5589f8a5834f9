//! The `Cache-Status` (RFC 9211) and `X-Cache` headers that tell a client what the cache did.

use std::sync::OnceLock;

use arrayvec::ArrayVec;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::{
    reason::{Bypass, Detail, Fwd, StaleUse},
    stats::Outcome,
};

pub(crate) const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
pub(crate) const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// How many per-second header values are made once, for the whole process.
const NUMBERED: u64 = 1024;

/// The header values `prefix` followed by 0, 1, ... `NUMBERED - 1`, made at first use in one
/// allocation kept for the life of the process (about 25 KiB for `larder; hit; ttl=`), so that
/// a hit's `Cache-Status` and `Age` cost neither an allocation nor formatting: cloning a value
/// made from a `&'static str` copies a pointer.
pub(crate) fn numbered(
    table: &'static OnceLock<Box<[HeaderValue]>>,
    prefix: &str,
    n: u64,
) -> Option<HeaderValue> {
    let values = table.get_or_init(|| {
        let mut all = String::new();
        let mut ends = Vec::with_capacity(NUMBERED as usize);
        let mut num = itoa::Buffer::new();
        for i in 0..NUMBERED {
            all.push_str(prefix);
            all.push_str(num.format(i));
            ends.push(all.len());
        }
        let all: &'static str = Box::leak(all.into_boxed_str());
        let mut start = 0;
        ends.into_iter()
            .map(|end| {
                let value = HeaderValue::from_static(&all[start..end]);
                start = end;
                value
            })
            .collect()
    });
    values.get(usize::try_from(n).ok()?).cloned()
}

/// A `Cache-Status` member being written: the longest is about 80 bytes, and a part that
/// would not fit is left out rather than cut.
#[derive(Default)]
struct Member(ArrayVec<u8, 128>);

impl Member {
    fn push(&mut self, part: &[u8]) {
        let _ = self.0.try_extend_from_slice(part);
    }

    fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Which of this cache's headers responses carry: `Cache-Status` always, and `X-Cache: HIT |
/// MISS | STALE | BYPASS` (which the seeds' tools read) when asked; or none of them, nor the
/// `ETag` the cache derives ([`Hidden`](Self::Hidden)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum XCache {
    Omit,
    Send,
    /// Neither `Cache-Status` nor `X-Cache`, nor a derived `ETag`.
    Hidden,
}

/// What the cache did with one request, as written in `Cache-Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheStatus {
    /// Served fresh: `larder; hit; ttl=N`.
    Hit { ttl: u64 },
    /// Served stale: `larder; hit; ttl=-N; detail=...` (a negative ttl means stale, RFC 9211 §2.5).
    Stale { by: u64, used: StaleUse },
    /// Forwarded, and its response stored: `larder; fwd=REASON; stored`.
    Stored { fwd: Fwd },
    /// A stale entry revalidated: the service answered a conditional request `304`, and the
    /// entry, refreshed, answered (and was stored again): `larder; fwd=REASON; fwd-status=304;
    /// stored`.
    Revalidated { fwd: Fwd },
    /// Answered with another request's response: `larder; fwd=REASON; collapsed[; detail=...]`.
    Collapsed { fwd: Fwd, detail: Option<Detail> },
    /// Forwarded, not stored: `larder; fwd=REASON[; detail=...]`.
    Forward { fwd: Fwd, detail: Option<Detail> },
}

impl CacheStatus {
    pub(crate) fn bypass(reason: Bypass) -> Self {
        CacheStatus::Forward {
            fwd: Fwd::Bypass,
            detail: Some(Detail::Bypass(reason)),
        }
    }

    /// Forwarded, not stored, for `detail`.
    pub(crate) fn forward(fwd: Fwd, detail: impl Into<Option<Detail>>) -> Self {
        CacheStatus::Forward {
            fwd,
            detail: detail.into(),
        }
    }

    /// The statistics outcome this status counts as.
    pub(crate) fn outcome(self) -> Outcome {
        match self {
            CacheStatus::Hit { .. } => Outcome::Hit,
            CacheStatus::Stale { .. } => Outcome::Stale,
            CacheStatus::Collapsed { .. } => Outcome::Collapsed,
            CacheStatus::Forward {
                fwd: Fwd::Bypass | Fwd::Method,
                ..
            } => Outcome::Bypass,
            CacheStatus::Stored { .. }
            | CacheStatus::Revalidated { .. }
            | CacheStatus::Forward { .. } => Outcome::Miss,
        }
    }

    fn x_cache(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            CacheStatus::Hit { .. } => "HIT",
            CacheStatus::Stale { .. } => "STALE",
            CacheStatus::Revalidated { .. } => "REVALIDATED",
            CacheStatus::Forward {
                fwd: Fwd::Bypass | Fwd::Method,
                ..
            } => "BYPASS",
            CacheStatus::Stored { .. }
            | CacheStatus::Collapsed { .. }
            | CacheStatus::Forward { .. } => "MISS",
        })
    }

    /// The `Cache-Status` member, written on the stack: the only allocation is the header
    /// value's own copy.
    fn value(self) -> HeaderValue {
        static HITS: OnceLock<Box<[HeaderValue]>> = OnceLock::new();
        if let CacheStatus::Hit { ttl } = self {
            if let Some(value) = numbered(&HITS, "larder; hit; ttl=", ttl) {
                return value;
            }
        }
        let mut out = Member::default();
        let mut num = itoa::Buffer::new();
        out.push(b"larder; ");
        match self {
            CacheStatus::Hit { ttl } => {
                out.push(b"hit; ttl=");
                out.push(num.format(ttl).as_bytes());
            }
            CacheStatus::Stale { by, used } => {
                out.push(b"hit; ttl=-");
                out.push(num.format(by).as_bytes());
                out.push(b"; detail=");
                out.push(used.as_str().as_bytes());
            }
            CacheStatus::Stored { fwd } => {
                out.push(b"fwd=");
                out.push(fwd.as_str().as_bytes());
                out.push(b"; stored");
            }
            CacheStatus::Revalidated { fwd } => {
                out.push(b"fwd=");
                out.push(fwd.as_str().as_bytes());
                out.push(b"; fwd-status=304; stored");
            }
            CacheStatus::Collapsed { fwd, detail } | CacheStatus::Forward { fwd, detail } => {
                out.push(b"fwd=");
                out.push(fwd.as_str().as_bytes());
                if matches!(self, CacheStatus::Collapsed { .. }) {
                    out.push(b"; collapsed");
                }
                if let Some(d) = detail {
                    out.push(b"; detail=");
                    out.push(d.as_str().as_bytes());
                }
            }
        }
        HeaderValue::from_bytes(out.as_bytes())
            .unwrap_or_else(|_| HeaderValue::from_static("larder"))
    }

    /// Writes this cache's `Cache-Status` member over the last one in `headers` (the
    /// placeholder a served-headers template ends with) and, when enabled, sets `X-Cache`.
    pub(crate) fn fill(self, headers: &mut HeaderMap, x_cache: XCache) {
        if x_cache == XCache::Hidden {
            // Take the placeholder out, and keep the upstream caches' members.
            let mut members: Vec<HeaderValue> =
                headers.get_all(&CACHE_STATUS).iter().cloned().collect();
            members.pop();
            headers.remove(&CACHE_STATUS);
            for member in members {
                headers.append(&CACHE_STATUS, member);
            }
            return;
        }
        match headers.entry(&CACHE_STATUS) {
            http::header::Entry::Occupied(mut members) => {
                if let Some(ours) = members.iter_mut().last() {
                    *ours = self.value();
                }
            }
            http::header::Entry::Vacant(slot) => {
                slot.insert(self.value());
            }
        }
        if x_cache == XCache::Send {
            headers.insert(&X_CACHE, self.x_cache());
        }
    }

    /// Appends `Cache-Status` after any upstream cache's (RFC 9211 §2: the last member is the
    /// cache closest to the user) and, when enabled, sets `X-Cache`.
    pub(crate) fn apply(self, headers: &mut HeaderMap, x_cache: XCache) {
        if x_cache == XCache::Hidden {
            return;
        }
        headers.append(&CACHE_STATUS, self.value());
        if x_cache == XCache::Send {
            headers.insert(&X_CACHE, self.x_cache());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_follow_rfc_9211() {
        let mut h = HeaderMap::new();
        CacheStatus::Hit { ttl: 287 }.apply(&mut h, XCache::Send);
        assert_eq!(h.get_all(&CACHE_STATUS).iter().count(), 1);
        assert_eq!(h[&CACHE_STATUS], "larder; hit; ttl=287");
        assert_eq!(h[&X_CACHE], "HIT");
        h.clear();
        CacheStatus::Stored { fwd: Fwd::Miss }.apply(&mut h, XCache::Send);
        assert_eq!(h[&CACHE_STATUS], "larder; fwd=miss; stored");
        assert_eq!(h[&X_CACHE], "MISS");
        h.clear();
        CacheStatus::bypass(Bypass::NoUser).apply(&mut h, XCache::Omit);
        assert_eq!(h[&CACHE_STATUS], "larder; fwd=bypass; detail=no-user");
        h.clear();
        CacheStatus::Stale {
            by: 3,
            used: StaleUse::WhileRevalidate,
        }
        .apply(&mut h, XCache::Send);
        assert_eq!(
            h[&CACHE_STATUS],
            "larder; hit; ttl=-3; detail=stale-while-revalidate"
        );
        assert_eq!(h[&X_CACHE], "STALE");
    }

    #[test]
    fn fill_overwrites_only_our_placeholder() {
        let mut h = HeaderMap::new();
        h.append(&CACHE_STATUS, HeaderValue::from_static("origin-cache; hit"));
        h.append(&CACHE_STATUS, HeaderValue::from_static("larder"));
        CacheStatus::Hit { ttl: 9 }.fill(&mut h, XCache::Send);
        let all: Vec<_> = h.get_all(&CACHE_STATUS).iter().collect();
        assert_eq!(all, ["origin-cache; hit", "larder; hit; ttl=9"]);
        assert_eq!(h[&X_CACHE], "HIT");
        // Without a placeholder, fill adds the member.
        let mut h = HeaderMap::new();
        CacheStatus::Hit { ttl: 1 }.fill(&mut h, XCache::Omit);
        assert_eq!(h[&CACHE_STATUS], "larder; hit; ttl=1");
        assert!(!h.contains_key(&X_CACHE));
    }

    #[test]
    fn hit_members_are_the_same_from_the_table_and_past_it() {
        for ttl in [0, 1, 599, NUMBERED - 1, NUMBERED, 86_400, u64::MAX] {
            assert_eq!(
                CacheStatus::Hit { ttl }.value(),
                format!("larder; hit; ttl={ttl}").as_str(),
            );
        }
        static T: OnceLock<Box<[HeaderValue]>> = OnceLock::new();
        assert_eq!(numbered(&T, "", NUMBERED - 1).unwrap(), "1023");
        assert!(numbered(&T, "", NUMBERED).is_none());
    }

    #[test]
    fn the_longest_member_is_written_whole() {
        let status = CacheStatus::Collapsed {
            fwd: Fwd::VaryMiss,
            detail: Some(Detail::Uncacheable(
                crate::reason::Uncacheable::MustUnderstand,
            )),
        };
        assert_eq!(
            status.value(),
            "larder; fwd=vary-miss; collapsed; detail=must-understand"
        );
        let stale = CacheStatus::Stale {
            by: u64::MAX,
            used: StaleUse::WhileRevalidate,
        };
        assert_eq!(
            stale.value(),
            "larder; hit; ttl=-18446744073709551615; detail=stale-while-revalidate"
        );
    }

    #[test]
    fn ours_is_appended_after_upstream_caches() {
        let mut h = HeaderMap::new();
        h.insert(&CACHE_STATUS, HeaderValue::from_static("origin-cache; hit"));
        CacheStatus::Hit { ttl: 1 }.apply(&mut h, XCache::Omit);
        let all: Vec<_> = h.get_all(&CACHE_STATUS).iter().collect();
        assert_eq!(all, ["origin-cache; hit", "larder; hit; ttl=1"]);
    }
}
