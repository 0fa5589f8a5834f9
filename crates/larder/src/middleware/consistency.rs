//! The consistency token: how a client reads its own writes on every instance.
//!
//! With a store whose instances keep local copies (the tiered store's L1), an invalidation
//! reaches other instances a little after the write is answered. So a write's answer carries
//! the stamp of its invalidation in the `larder-consistency` header; a client that sends it
//! back on its next requests is answered by any instance only from where that invalidation is
//! known (see [`Entries::get_after`](crate::store::Entries::get_after)). Stores whose reads
//! all see the same records (memory, Redis) send no token and need none.

use http::{HeaderMap, HeaderName};

/// The header of the consistency token, in a write's response and in later requests.
pub const CONSISTENCY_HEADER: HeaderName = HeaderName::from_static("larder-consistency");

/// The consistency token a request carries in its `larder-consistency` header, if it is a
/// well-formed one (anything else is ignored: a token can only make a read go further than
/// needed, never less far). For a handler's typed reads: see
/// [`CacheHandle::reading_after`](crate::CacheHandle::reading_after).
#[inline]
pub fn token(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get(&CONSISTENCY_HEADER)?;
    std::str::from_utf8(value.as_bytes())
        .ok()?
        .trim()
        .parse()
        .ok()
}
