//! The `Cache-Status` (RFC 9211) and `X-Cache` headers that tell a client what the cache did.

use std::fmt::Write;

use http::{HeaderMap, HeaderName, HeaderValue};

pub(crate) const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
pub(crate) const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// What the cache did with one request, as written in `Cache-Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheStatus {
    /// Served fresh: `larder; hit; ttl=N`.
    Hit { ttl: u64 },
    /// Served stale: `larder; hit; ttl=-N; detail=...` (a negative ttl means stale, RFC 9211 §2.5).
    Stale { by: u64, detail: &'static str },
    /// Forwarded: `larder; fwd=REASON[; stored][; collapsed][; detail=...]`.
    Forward {
        fwd: &'static str,
        stored: bool,
        collapsed: bool,
        detail: Option<&'static str>,
    },
}

impl CacheStatus {
    pub(crate) fn bypass(detail: &'static str) -> Self {
        CacheStatus::Forward {
            fwd: "bypass",
            stored: false,
            collapsed: false,
            detail: Some(detail),
        }
    }

    pub(crate) fn miss(fwd: &'static str, stored: bool, detail: Option<&'static str>) -> Self {
        CacheStatus::Forward {
            fwd,
            stored,
            collapsed: false,
            detail,
        }
    }

    fn x_cache(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            CacheStatus::Hit { .. } => "HIT",
            CacheStatus::Stale { .. } => "STALE",
            CacheStatus::Forward {
                fwd: "bypass" | "method",
                ..
            } => "BYPASS",
            CacheStatus::Forward { .. } => "MISS",
        })
    }

    fn value(self) -> HeaderValue {
        let mut s = String::with_capacity(48);
        s.push_str("larder; ");
        // Writing to a String cannot fail.
        let _ = match self {
            CacheStatus::Hit { ttl } => write!(s, "hit; ttl={ttl}"),
            CacheStatus::Stale { by, detail } => write!(s, "hit; ttl=-{by}; detail={detail}"),
            CacheStatus::Forward {
                fwd,
                stored,
                collapsed,
                detail,
            } => {
                let _ = write!(s, "fwd={fwd}");
                if stored {
                    s.push_str("; stored");
                }
                if collapsed {
                    s.push_str("; collapsed");
                }
                match detail {
                    Some(d) => write!(s, "; detail={d}"),
                    None => Ok(()),
                }
            }
        };
        HeaderValue::try_from(s).unwrap_or_else(|_| HeaderValue::from_static("larder"))
    }

    /// Appends `Cache-Status` after any upstream cache's (RFC 9211 §2: the last member is the
    /// cache closest to the user) and, when enabled, sets `X-Cache`.
    pub(crate) fn apply(self, headers: &mut HeaderMap, x_cache: bool) {
        headers.append(&CACHE_STATUS, self.value());
        if x_cache {
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
        CacheStatus::Hit { ttl: 287 }.apply(&mut h, true);
        assert_eq!(h.get_all(&CACHE_STATUS).iter().count(), 1);
        assert_eq!(h[&CACHE_STATUS], "larder; hit; ttl=287");
        assert_eq!(h[&X_CACHE], "HIT");
        h.clear();
        CacheStatus::miss("miss", true, None).apply(&mut h, true);
        assert_eq!(h[&CACHE_STATUS], "larder; fwd=miss; stored");
        assert_eq!(h[&X_CACHE], "MISS");
        h.clear();
        CacheStatus::bypass("credentials").apply(&mut h, false);
        assert_eq!(h[&CACHE_STATUS], "larder; fwd=bypass; detail=credentials");
        h.clear();
        CacheStatus::Stale {
            by: 3,
            detail: "stale-while-revalidate",
        }
        .apply(&mut h, true);
        assert_eq!(
            h[&CACHE_STATUS],
            "larder; hit; ttl=-3; detail=stale-while-revalidate"
        );
        assert_eq!(h[&X_CACHE], "STALE");
    }

    #[test]
    fn ours_is_appended_after_upstream_caches() {
        let mut h = HeaderMap::new();
        h.insert(&CACHE_STATUS, HeaderValue::from_static("origin-cache; hit"));
        CacheStatus::Hit { ttl: 1 }.apply(&mut h, false);
        let all: Vec<_> = h.get_all(&CACHE_STATUS).iter().collect();
        assert_eq!(all, ["origin-cache; hit", "larder; hit; ttl=1"]);
    }
}
