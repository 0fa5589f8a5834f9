//! Several `Vary` variants per URL (RFC 9111 §4.1), each found with one lookup.
//!
//! A response that varies (`Vary: Accept-Language`) is stored under the key of its variant:
//! the URL's key hashed with the storing request's values of the named fields. A route
//! remembers the field names of the first varying response it stores ([`VaryMemo`]), and
//! from then on its requests are looked up under their variant's key directly: no second
//! round trip, and clients that differ in those fields no longer evict each other. Until a
//! route has learned them (or in another process), a request is looked up under the URL's key,
//! where the response is stored too: the entry's own `Vary` check decides, as before.
//!
//! A URL keeps at most [`MAX_VARIANTS`] variants in this process's view ([`VariantSets`]):
//! past them (a header with unbounded values, such as `User-Agent`), a new variant is not
//! stored, so one URL cannot fill the store.

use std::sync::{Arc, Mutex, OnceLock};

use http::HeaderName;

/// The most variants of one URL stored.
pub(crate) const MAX_VARIANTS: usize = 8;

/// The `Vary` field names a route's responses use, once one was stored.
pub(crate) type VaryMemo = Arc<OnceLock<Box<[HeaderName]>>>;

/// The digests of the variants of one URL stored.
type Stored = Arc<Mutex<Vec<[u8; 32]>>>;

/// The URLs with varying responses seen lately, and the variants stored for each.
pub(crate) struct VariantSets {
    sets: moka::sync::Cache<[u8; 32], Stored>,
}

impl Default for VariantSets {
    fn default() -> Self {
        VariantSets {
            sets: moka::sync::Cache::new(100_000),
        }
    }
}

impl VariantSets {
    /// Whether variant `variant` of the URL whose key is `base` may be stored: it is one of
    /// the URL's variants already, or there is room for one more.
    pub(crate) fn admit(&self, base: [u8; 32], variant: [u8; 32]) -> bool {
        let set = self.sets.get_with(base, Default::default);
        let mut set = set.lock().unwrap_or_else(|e| e.into_inner());
        if set.contains(&variant) {
            return true;
        }
        if set.len() >= MAX_VARIANTS {
            return false;
        }
        set.push(variant);
        true
    }
}

impl std::fmt::Debug for VariantSets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VariantSets")
            .field("urls", &self.sets.entry_count())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_keeps_a_bounded_number_of_variants() {
        let sets = VariantSets::default();
        for v in 0..MAX_VARIANTS as u8 {
            assert!(sets.admit([1; 32], [v; 32]));
        }
        assert!(!sets.admit([1; 32], [200; 32]), "one too many");
        assert!(
            sets.admit([1; 32], [0; 32]),
            "a known variant is stored again"
        );
        assert!(
            sets.admit([2; 32], [200; 32]),
            "another URL has its own room"
        );
    }
}
