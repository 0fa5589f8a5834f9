//! Several `Vary` variants per URL (RFC 9111 §4.1), each found with one lookup.
//!
//! A response that varies (`Vary: Accept-Language`) is stored under the key of its variant:
//! the URL's key hashed with the storing request's values of the named fields. The cache
//! remembers, per URL, the field names its responses vary on ([`Variants`]), and from then on
//! a request for that URL is looked up under its variant's key directly: no second round
//! trip, and clients that differ in those fields no longer evict each other. Until a process
//! has seen a URL vary (or after it forgot), the request is looked up under the URL's key,
//! where the first varying response is stored too: the entry's own `Vary` check decides, as
//! before. A rule whose responses never varied pays one atomic load per request for this.
//!
//! A URL keeps at most [`MAX_VARIANTS`] variants in this process's view: past them (a header
//! with unbounded values, such as `User-Agent`), a new variant is not stored, so one URL
//! cannot fill the store. The view of a URL is forgotten after an hour unused, and replaced
//! when its responses change the fields they vary on, or stop varying.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{HeaderMap, HeaderName};

use crate::CacheKey;

/// The most variants of one URL stored.
pub(crate) const MAX_VARIANTS: usize = 8;

/// How long the view of a URL that nobody asks for is kept.
const IDLE: Duration = Duration::from_secs(3600);

/// What is known of one URL whose responses vary.
pub(crate) struct UrlVariants {
    names: Box<[HeaderName]>,
    stored: Mutex<Vec<[u8; 32]>>,
}

impl UrlVariants {
    /// Whether the variant with digest `variant` may be stored: it is one of the URL's
    /// variants already, or there is room for one more.
    pub(crate) fn admit(&self, variant: [u8; 32]) -> bool {
        let mut stored = self.stored.lock().unwrap_or_else(|e| e.into_inner());
        if stored.contains(&variant) {
            return true;
        }
        if stored.len() >= MAX_VARIANTS {
            return false;
        }
        stored.push(variant);
        true
    }
}

/// The URLs whose responses vary, seen lately.
pub(crate) struct Variants {
    urls: moka::sync::Cache<[u8; 32], Arc<UrlVariants>>,
}

impl Default for Variants {
    fn default() -> Self {
        Variants {
            urls: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(IDLE)
                .build(),
        }
    }
}

impl Variants {
    /// The key a request with `headers` is looked up under: its variant's, when the URL of
    /// `key` is known to vary.
    pub(crate) fn select(&self, key: CacheKey, headers: &HeaderMap) -> CacheKey {
        match self.urls.get(key.digest()) {
            Some(url) => key.variant(&url.names, headers),
            None => key,
        }
    }

    /// Learns that the URL whose key's digest is `url` varies on `names` (replacing what was
    /// known if its responses varied on other fields), and returns what is known of it.
    pub(crate) fn learn(&self, url: [u8; 32], names: &[HeaderName]) -> Arc<UrlVariants> {
        if let Some(known) = self.urls.get(&url) {
            if *known.names == *names {
                return known;
            }
        }
        let known = Arc::new(UrlVariants {
            names: names.into(),
            stored: Mutex::new(Vec::new()),
        });
        self.urls.insert(url, Arc::clone(&known));
        known
    }

    /// Forgets the URL: its responses no longer vary.
    pub(crate) fn forget(&self, url: &[u8; 32]) {
        self.urls.invalidate(url);
    }
}

impl std::fmt::Debug for Variants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Variants")
            .field("urls", &self.urls.entry_count())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_keeps_a_bounded_number_of_variants() {
        let variants = Variants::default();
        let lang = [http::header::ACCEPT_LANGUAGE];
        let url = variants.learn([1; 32], &lang);
        for v in 0..MAX_VARIANTS as u8 {
            assert!(url.admit([v; 32]));
        }
        assert!(!url.admit([200; 32]), "one too many");
        assert!(url.admit([0; 32]), "a known variant is stored again");
        let other = variants.learn([2; 32], &lang);
        assert!(other.admit([200; 32]), "another URL has its own room");
        // The same fields: the same view; other fields: a new one, with room again.
        assert!(!variants.learn([1; 32], &lang).admit([201; 32]));
        let encoding = [http::header::ACCEPT_ENCODING];
        assert!(variants.learn([1; 32], &encoding).admit([201; 32]));
    }
}
