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
//! # Layout
//!
//! ```text
//! lib.rs          this map, the public re-exports
//! handle.rs       CacheHandle: one store and what every layer of it shares; invalidation
//! typed.rs        typed cache-aside (get_or_insert_with, batches) on the same handle
//! entry.rs        Entry, the stored form of a response
//! stats/          the counters per rule and category (mod.rs), response-time histograms
//!                 (latency.rs)
//! reason.rs       why the cache did what it did: Fwd, Bypass, Uncacheable, Alone (as_str())
//! middleware/     the tower surface: layer, service (each request top-down), future, body,
//!                 respond (responses from entries), status (Cache-Status, X-Cache),
//!                 consistency (the larder-consistency token of read-your-writes)
//! phase/          the request's phases: classify -> lookup -> exchange -> fill; write
//! rules/          rule, route (rule by path), key, policy (RFC 9111), tags
//! engine/         coalesce (single-flight), predictor, lock (cross-instance), breaker (and
//!                 the outage epoch), journal (deferred invalidations on disk), clock
//! store/          the Entries, Invalidation and FillLock traits; visibility (the rule, once);
//!                 memory, redis, tiered
//! codec.rs        the envelope of entries in stores outside the process (public)
//! body_key.rs     reading and hashing request bodies, for POST reads (public)
//! warm.rs         warm(): requests sent through the service, as clients send them
//! ```
//!
//! Modules depend downwards only: no two import each other, directly or through others
//! (`tests/module_graph.rs` checks it).
//!
//! # The life of a request
//!
//! 1. [`Cache`]'s `call` finds the request's rule by path (`rules::route`); none: it passes through.
//! 2. **Classify** (`phase::classify`): a write goes to the service and invalidates its rule's
//!    tags before it is answered (`phase::write`); a request the cache must not answer
//!    (`Range`, a user-scoped rule's request naming no user, the store's breaker open...)
//!    bypasses it with a reason; a read gets its key (`rules::key`). A read with credentials
//!    on a rule neither user-scoped nor [shared](Rule::shared) may only be answered by, and
//!    only fill, an entry whose response said `public` or `s-maxage` (RFC 9111 §3.5).
//! 3. **Lookup** (`phase::lookup`): the store returns the entry with its invalidation marks,
//!    the visibility rule hides what an invalidation replaced (`store::visibility`), and the
//!    request judges the rest: its `Vary` variant, fresh, stale within a window, or a miss.
//! 4. **Exchange** (`phase::exchange`): a fresh entry is served (a hit); a stale one within
//!    stale-while-revalidate is served and refreshed in the background. A miss takes its
//!    turn with the coalescer (`engine::coalesce`): it follows a flight in progress and shares
//!    its entry if the visibility rule allows, or reads the store again after it, or leads;
//!    a leader may take the cross-instance fill lock (`engine::lock`), then asks the service.
//! 5. **Fill** (`phase::fill`): the response is judged by RFC 9111 and the rule (`rules::policy`);
//!    a storable one streams to the client while its body is copied; at its end the flight
//!    lands for the followers and the entry is written to the store. An uncacheable one
//!    releases the followers at once, and its key's next misses skip the flight
//!    (`engine::predictor`).
//!
//! Every store call goes through the breaker (`engine::breaker`): a deadline, failures
//! counted, the store skipped while it fails, invalidations kept until they are applied.
//!
//! # What is stored
//!
//! The rules of RFC 9111 for a shared cache: only `GET` (a stored `GET` also answers
//! `HEAD`; a `POST` is a read only under [`Rule::cache_posts_by_body`]), only statuses cacheable by default (error statuses only with explicit
//! freshness), never a response with `Set-Cookie`, `no-store`, `no-cache`, `Vary: *`, or
//! `private` unless the rule has a [`UserScope`]. A request with `Authorization` or
//! `Cookie` is cached per user under a rule with a user scope; under a [shared](Rule::shared)
//! rule it shares the one entry of its URL with every caller; under any other rule it is
//! answered only by an entry whose response said `public` or `s-maxage`, and its own response
//! is stored only if it says so (RFC 9111 §3.5). The response's `max-age`, `s-maxage`, `Expires`, `stale-while-revalidate` and
//! `stale-if-error` are honoured, and [`Rule::ttl`] fills in when they are absent (or replaces
//! them with [`Rule::override_response_ttl`]). `Vary` is honoured. Hits carry `Age`; every
//! entry has an `ETag` (the origin's, or a strong one derived from the body) and
//! `If-None-Match` on a hit gets `304`; a first response (a 200 of known length up to 64 KiB,
//! without an `ETag` of its own) is read whole before it is answered, so it carries the `ETag`
//! its hits will. Requests' `no-store` and `only-if-cached` are honoured;
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
mod warm;

pub use body_key::{BodyKey, BodyKeyLayer, KeyedBody, RequestBodyDigest};
pub use engine::refill::RefillSnapshot;
pub use entry::Entry;
pub use handle::{CacheHandle, CacheHandleBuilder};
pub use middleware::{
    body::CacheBody,
    consistency::{CONSISTENCY_HEADER, token as consistency_token},
    future::ResponseFuture,
    layer::CacheLayer,
    service::Cache,
};
pub use rules::policy::{CDN_CACHE_CONTROL, LARDER_CACHE_CONTROL};
pub use rules::{
    key::{CacheKey, KeyOptions, Pagination, QueryMode},
    rule::{Rule, Rules, UserScope},
    tags::TAGS_HEADER,
};
pub use stats::{LatencySnapshot, RouteSnapshot, StatsSnapshot};
pub use store::{MemoryStore, Store, StoreError, StoreErrorKind, StoreFuture};
pub use typed::{EntryOptions, ReadStamp};
pub use warm::{WarmReport, warm};

// The README's examples compile and run as doc-tests (they use the Redis store).
#[cfg(all(doctest, feature = "redis"))]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
