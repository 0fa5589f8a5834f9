//! Larder: a response cache for tower services (axum, tonic, hyper).
//!
//! A [`CacheHandle`] owns a [`Store`] (the in-process [`MemoryStore`] by default); each
//! [`CacheLayer`] built from it caches the responses of the routes it wraps, by the [`Rule`]
//! it was given: for how long, for which user, with which tags, one entry per page.
//! Successful writes invalidate tags before they answer, so a client that reads after its
//! own write never sees the old data.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use larder::{CacheHandle, Rule};
//!
//! let cache = CacheHandle::in_memory();
//! let app: Router = Router::new().route(
//!     "/api/metrics/{category}",
//!     get(|| async { "{\"revenue\": 42}" })
//!         .layer(cache.layer(Rule::new("metrics").ttl(Duration::from_secs(900)).tag("metrics"))),
//! );
//! # let _ = app;
//! ```
//!
//! # What is stored
//!
//! The rules of RFC 9111 for a shared cache: only `GET` (a stored `GET` also answers
//! `HEAD`; a `POST` is a read only under [`Rule::cache_posts_by_body`]), only statuses cacheable by default (error statuses only with explicit
//! freshness), never a response with `Set-Cookie`, `no-store`, `no-cache`, `Vary: *`, or
//! `private` unless the rule has a [`UserScope`]. A request with `Authorization` or
//! `Cookie` is not cached unless the rule has a user scope, and then its entries are keyed by
//! the user. The response's `max-age`, `s-maxage`, `Expires`, `stale-while-revalidate` and
//! `stale-if-error` are honoured, and [`Rule::ttl`] fills in when they are absent (or replaces
//! them with [`Rule::override_response_ttl`]). `Vary` is honoured. Hits carry `Age`; every
//! entry has an `ETag` (the origin's, or a strong one derived from the body) and
//! `If-None-Match` on a hit gets `304`. Requests' `no-store` and `only-if-cached` are honoured;
//! their `no-cache` and `max-age=0` (a browser reload) are not unless
//! [`CacheHandleBuilder::honor_request_no_cache`] says so, because a client should not be able
//! to make the origin do the work the cache exists to save.
//!
//! # Keys
//!
//! Namespace, format version, method, authority, path, query (in order, or sorted with
//! [`QueryMode::Sorted`]; allow and deny lists; tracking parameters dropped), the values of
//! headers named with [`KeyOptions::vary_on`], and the user scope, each length-prefixed into
//! a BLAKE3 digest. See [`KeyOptions`] and [`Pagination`].
//!
//! # Tags and invalidation
//!
//! A rule's tags are templates (`sessions:{user}`, `session:{sid}`); a handler can add tags
//! in the [`TAGS_HEADER`] response header, which the layer removes. A successful write
//! through a rule invalidates its [`Rule::invalidates`] tags and its own path's entries
//! before its response is returned; [`CacheHandle::invalidate_tags`] does the same from code.
//! Invalidation costs one write per tag whatever the number of entries: entries record the
//! store's stamp from before their origin call, and a read hides an entry older than the last
//! invalidation of any of its tags.
//!
//! # Stampedes, bodies, failures
//!
//! Concurrent misses for one key make one call to the service; the others wait for it and
//! share its response, or ask for themselves if it cannot be shared or its leader fails.
//! A miss streams to the client while it is copied; bodies over the size limit pass through
//! and are not stored; trailers are stored and replayed (gRPC). A failing store never fails a
//! request: lookups that fail are misses, and the error is counted in [`CacheHandle::stats`].
//!
//! # gRPC and other `POST` reads
//!
//! Every gRPC call is a `POST` to `/package.Service/Method`. A rule with
//! [`Rule::cache_posts_by_body`] caches such a read keyed by its request message, once a
//! [`BodyKeyLayer`] in front of the cache has read and hashed the body (see [`body_key`]).
//! Only responses whose `grpc-status` is 0 are stored, whether it comes in the trailers or in
//! the headers of a Trailers-Only response; hits replay the trailers. Write methods stay under
//! rules without the setting and invalidate the tags their handler names in [`TAGS_HEADER`].
//!
//! # Visible status
//!
//! Every response through a layer carries `Cache-Status` (RFC 9211), such as
//! `larder; hit; ttl=287` or `larder; fwd=miss; stored`, and optionally
//! `X-Cache: HIT | MISS | STALE | BYPASS`.

pub mod body_key;
pub mod codec;
mod engine;
mod entry;
mod handle;
mod middleware;
mod phase;
mod reason;
mod rules;
mod stats;
pub mod store;
mod typed;

pub use body_key::{BodyKey, BodyKeyLayer, KeyedBody, RequestBodyDigest};
pub use entry::Entry;
pub use handle::{CacheHandle, CacheHandleBuilder, TAGS_HEADER};
pub use middleware::{body::CacheBody, future::ResponseFuture, layer::CacheLayer, service::Cache};
pub use rules::{
    key::{CacheKey, KeyOptions, Pagination, QueryMode},
    rule::{Rule, Rules, UserScope},
};
pub use stats::{RouteSnapshot, StatsSnapshot};
pub use store::{MemoryStore, Store, StoreError, StoreErrorKind, StoreFuture};
pub use typed::EntryOptions;

// The README's examples compile and run as doc-tests (they use the Redis store).
#[cfg(all(doctest, feature = "redis"))]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
