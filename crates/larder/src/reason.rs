//! Why the cache did what it did, as enums: control flow reads them, and `as_str()` gives the
//! token written in `Cache-Status` (RFC 9211), statistics and logs (as pingora-cache's
//! `NoCacheReason` does).
//!
//! - [`Fwd`]: why a request went to the service (RFC 9211 §2.2 `fwd`).
//! - [`Bypass`]: why the classify phase did not cache a request at all.
//! - [`Uncacheable`]: why a response was not stored.
//! - [`Alone`]: why a miss did not share another request's call.
//! - [`StaleUse`]: which window allowed a stale entry to be served.
//! - [`Detail`]: any of them, as the `detail` parameter.

/// Why a request was forwarded to the service (RFC 9211 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fwd {
    /// The cache was not used for this request.
    Bypass,
    /// The method is not one the cache answers (a write).
    Method,
    /// Nothing was stored for the key.
    Miss,
    /// An entry was stored for another variant (`Vary`).
    VaryMiss,
    /// The stored entry was stale.
    Stale,
    /// The request asked for a fresh response (`no-cache`, honoured by configuration).
    Request,
}

impl Fwd {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Fwd::Bypass => "bypass",
            Fwd::Method => "method",
            Fwd::Miss => "miss",
            Fwd::VaryMiss => "vary-miss",
            Fwd::Stale => "stale",
            Fwd::Request => "request",
        }
    }
}

/// Why a request is not cached at all (decided before any store call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bypass {
    /// No rule of the layer covers the path.
    NoRule,
    /// A `POST` cached by body reached the layer without a [`BodyKeyLayer`](crate::BodyKeyLayer) digest.
    BodyNotKeyed,
    /// A method that is neither a read nor a write (`OPTIONS`, `TRACE`).
    Method,
    /// A `Range` request: 206s are never stored.
    Range,
    /// A `GET` with content, which could change the response without changing the key.
    RequestBody,
    /// The rule has a user scope and the request names no user.
    NoUser,
    /// The store is failing, or invalidations wait to be replayed (the breaker is open).
    StoreUnavailable,
    /// The rule's [`bypass_if`](crate::Rule::bypass_if) said so.
    Predicate,
}

impl Bypass {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Bypass::NoRule => "no-rule",
            Bypass::BodyNotKeyed => "body-not-keyed",
            Bypass::Method => "method",
            Bypass::Range => "range",
            Bypass::RequestBody => "request-body",
            Bypass::NoUser => "no-user",
            Bypass::StoreUnavailable => "store-unavailable",
            Bypass::Predicate => "bypass-if",
        }
    }
}

/// Why a response was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Uncacheable {
    /// The request said `no-store` (RFC 9111 §5.2.1.5).
    RequestNoStore,
    /// `must-understand` with a status this cache does not know (§5.2.2.3).
    MustUnderstand,
    /// The response said `no-store` (§5.2.2.5).
    NoStore,
    /// `private` without a user scope (§5.2.2.7).
    Private,
    /// A `Set-Cookie` is never stored.
    SetCookie,
    /// `Vary: *` or an unparseable `Vary` (§4.1).
    VaryStar,
    /// `no-cache`: every use would need revalidation (§5.2.2.4).
    NoCache,
    /// A status not cacheable by default, without explicit freshness.
    Status,
    /// Neither the response nor the rule gives a lifetime.
    NoFreshness,
    /// Already stale on arrival.
    ZeroTtl,
    /// A `HEAD` response has no content to answer a `GET` with.
    Head,
    /// The body is larger than the rule's limit.
    TooBig,
    /// A gRPC call that failed (`grpc-status` other than 0).
    GrpcStatus,
    /// A new `Vary` variant of a URL that has as many as it may keep.
    TooManyVariants,
    /// A tag template could not be filled for this request.
    TagUnresolved,
    /// The service failed (a 5xx or an error).
    ServerError,
    /// The request carried `Authorization` or `Cookie` on a rule with neither a user scope
    /// nor [`Rule::shared`](crate::Rule::shared), and the response did not say `public` or
    /// `s-maxage` (RFC 9111 §3.5).
    Credentials,
}

impl Uncacheable {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Uncacheable::RequestNoStore => "request-no-store",
            Uncacheable::MustUnderstand => "must-understand",
            Uncacheable::NoStore => "no-store",
            Uncacheable::Private => "private",
            Uncacheable::SetCookie => "set-cookie",
            Uncacheable::VaryStar => "vary-star",
            Uncacheable::NoCache => "no-cache",
            Uncacheable::Status => "status",
            Uncacheable::NoFreshness => "no-freshness",
            Uncacheable::ZeroTtl => "zero-ttl",
            Uncacheable::Head => "head",
            Uncacheable::TooBig => "too-big",
            Uncacheable::GrpcStatus => "grpc-status",
            Uncacheable::TooManyVariants => "too-many-variants",
            Uncacheable::TagUnresolved => "tag-unresolved",
            Uncacheable::ServerError => "server-error",
            Uncacheable::Credentials => "credentials",
        }
    }
}

/// Why a miss asked the service itself instead of sharing another request's call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alone {
    /// `only-if-cached` and nothing usable: answered 504 without asking.
    OnlyIfCached,
    /// A `HEAD` miss: its response cannot serve a `GET`.
    Head,
    /// The request said `no-store`.
    RequestNoStore,
    /// Preconditions the origin must judge (RFC 9110 §13.2).
    Precondition,
    /// A flight's entry was written but not found in the store, several times.
    WritePending,
    /// The leader's response could not be shared (uncacheable, or another variant).
    Uncollapsible,
    /// Leaders went away without an answer, several times.
    LeaderLost,
    /// The leader took longer than the collapse timeout.
    CollapseTimeout,
}

impl Alone {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Alone::OnlyIfCached => "only-if-cached",
            Alone::Head => "head",
            Alone::RequestNoStore => "request-no-store",
            Alone::Precondition => "precondition",
            Alone::WritePending => "write-pending",
            Alone::Uncollapsible => "uncollapsible",
            Alone::LeaderLost => "leader-lost",
            Alone::CollapseTimeout => "collapse-timeout",
        }
    }
}

/// Which stale window allowed serving a stale entry (RFC 5861).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StaleUse {
    /// Served while a background refresh runs.
    WhileRevalidate,
    /// Served because the service failed.
    IfError,
    /// Served from this process's copy while the store is unavailable
    /// (`serve_l1_during_outage`).
    Outage,
}

impl StaleUse {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            StaleUse::WhileRevalidate => "stale-while-revalidate",
            StaleUse::IfError => "stale-if-error",
            StaleUse::Outage => "outage",
        }
    }
}

/// The `detail` parameter of a forwarded request's `Cache-Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detail {
    /// Not cached at all.
    Bypass(Bypass),
    /// Asked the service, and the response was not stored.
    Uncacheable(Uncacheable),
    /// Asked the service without sharing a call.
    Alone(Alone),
    /// Served the entry another instance stored while this one waited on the fill lock.
    OtherInstance,
    /// A write whose tags were invalidated before it was answered.
    Invalidated,
    /// A write whose invalidation the store could not take now; it is kept for replay.
    InvalidationDeferred,
}

impl Detail {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Detail::Bypass(b) => b.as_str(),
            Detail::Uncacheable(u) => u.as_str(),
            Detail::Alone(a) => a.as_str(),
            Detail::OtherInstance => "other-instance",
            Detail::Invalidated => "invalidated",
            Detail::InvalidationDeferred => "invalidation-deferred",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_rfc_9211_tokens() {
        let all = [
            Detail::Bypass(Bypass::StoreUnavailable).as_str(),
            Detail::Uncacheable(Uncacheable::RequestNoStore).as_str(),
            Detail::Alone(Alone::CollapseTimeout).as_str(),
            Detail::InvalidationDeferred.as_str(),
            Fwd::VaryMiss.as_str(),
            StaleUse::WhileRevalidate.as_str(),
        ];
        for token in all {
            assert!(
                token.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'),
                "{token}"
            );
        }
    }
}
