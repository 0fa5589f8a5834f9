//! Keys whose responses proved uncacheable, so that later misses skip the flight.
//!
//! A request that follows a flight waits for the leader's response before it can ask the
//! service itself; when the response cannot be shared (too big, `Set-Cookie`, `no-store`...)
//! that wait is pure loss. Like pingora-cache's `CacheablePredictor`, the layer remembers such
//! keys for a while ([`FORGET_AFTER`]) and their misses go to the service at once, each on its
//! own. A remembered miss may still store its response: a key that turns cacheable again is
//! forgotten as soon as one of its responses is stored.

use std::time::Duration;

use crate::reason::Uncacheable;

/// How long a key is remembered as uncacheable.
pub(crate) const FORGET_AFTER: Duration = Duration::from_secs(30);

/// The most keys remembered; the least recently used go first.
const CAPACITY: u64 = 16 * 1024;

/// Keys remembered as uncacheable, by key digest.
#[derive(Debug)]
pub(crate) struct Predictor {
    keys: moka::sync::Cache<[u8; 32], Uncacheable>,
}

impl Default for Predictor {
    fn default() -> Self {
        Predictor {
            keys: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(FORGET_AFTER)
                .build(),
        }
    }
}

impl Predictor {
    /// Why the key's last response was not stored, if it was not and that is recent.
    pub(crate) fn uncacheable(&self, digest: &[u8; 32]) -> Option<Uncacheable> {
        self.keys.get(digest)
    }

    /// Remembers that the key's response was not stored, for `reason`. Only reasons that are
    /// the response's own way of being are remembered: not the request's (`no-store`, `HEAD`,
    /// an unfilled tag, credentials), and not a failure that may pass (a 5xx, a gRPC error, a 429 or 401
    /// status), during which coalescing matters most.
    pub(crate) fn remember(&self, digest: [u8; 32], reason: Uncacheable) {
        let lasting = match reason {
            Uncacheable::TooBig
            | Uncacheable::SetCookie
            | Uncacheable::NoStore
            | Uncacheable::Private
            | Uncacheable::VaryStar
            | Uncacheable::NoCache
            | Uncacheable::NoFreshness
            | Uncacheable::ZeroTtl
            | Uncacheable::MustUnderstand
            | Uncacheable::TooManyVariants => true,
            Uncacheable::RequestNoStore
            | Uncacheable::Head
            | Uncacheable::TagUnresolved
            | Uncacheable::Credentials
            | Uncacheable::Status
            | Uncacheable::GrpcStatus
            | Uncacheable::ServerError => false,
        };
        if lasting {
            self.keys.insert(digest, reason);
        }
    }

    /// Forgets the key: one of its responses was stored.
    pub(crate) fn forget(&self, digest: &[u8; 32]) {
        self.keys.invalidate(digest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_response_reasons_and_forgets_on_store() {
        let p = Predictor::default();
        p.remember([1; 32], Uncacheable::TooBig);
        p.remember([2; 32], Uncacheable::RequestNoStore);
        p.remember([3; 32], Uncacheable::GrpcStatus);
        assert_eq!(p.uncacheable(&[1; 32]), Some(Uncacheable::TooBig));
        assert_eq!(p.uncacheable(&[2; 32]), None, "a request's own reason");
        assert_eq!(p.uncacheable(&[3; 32]), None, "a failure that may pass");
        p.forget(&[1; 32]);
        assert_eq!(p.uncacheable(&[1; 32]), None);
    }
}
