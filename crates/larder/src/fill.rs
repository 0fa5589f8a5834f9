//! Filling the store from a miss: the entry under construction while its body streams.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, header};

use crate::{
    CacheHandle, CacheKey, Entry,
    flight::{FlightGuard, Landing},
    lock::LockHeld,
    stats::RouteStats,
};

/// An entry waiting for its body. Dropping it unfinished ends its flight without storing.
pub(crate) struct Fill {
    pub(crate) handle: CacheHandle,
    pub(crate) key: CacheKey,
    /// Everything but the body and `stored_at`.
    pub(crate) entry: Entry,
    pub(crate) stats: Arc<RouteStats>,
    pub(crate) guard: Option<FlightGuard>,
    /// The cross-instance fill lock, released once the entry is written.
    pub(crate) lock: Option<LockHeld>,
    /// When the origin call started: the fill time feeds early refresh.
    pub(crate) started: tokio::time::Instant,
}

impl Fill {
    pub(crate) fn trailers(&mut self, trailers: HeaderMap) {
        self.entry.trailers = Some(trailers);
    }

    pub(crate) fn finish(mut self, chunks: Vec<Bytes>) {
        // gRPC reports failure in trailers with HTTP 200: only grpc-status 0 is stored.
        if self
            .entry
            .trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .is_some_and(|s| s != "0")
        {
            if let Some(guard) = self.guard.take() {
                guard.land(Landing::Uncacheable);
            }
            return;
        }
        let body = concat(chunks);
        if self.entry.etag.is_empty() {
            let etag = derive_etag(&body);
            self.entry.headers.insert(header::ETAG, etag.clone());
            self.entry.etag = etag;
        }
        // The stored representation has a known length; HEAD hits need it in the headers.
        // (Not with trailers: over HTTP/1.1 those need chunked encoding.)
        if self.entry.trailers.is_none()
            && !self.entry.headers.contains_key(header::CONTENT_LENGTH)
            && !self.entry.headers.contains_key(header::TRANSFER_ENCODING)
        {
            self.entry
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        self.entry.body = body;
        self.entry.stored_at = self.handle.now_ms();
        self.entry.fill_time = self.started.elapsed();
        let entry = Arc::new(self.entry);
        // Followers are answered now; the flight is held until the entry is in the store.
        let guard = self.guard.take();
        if let Some(guard) = &guard {
            guard.land(Landing::Stored(Arc::clone(&entry)));
        }
        self.handle
            .put_then_release(&self.stats, self.key, entry, self.lock.take(), guard);
        self.stats.stored();
    }
}

fn concat(mut chunks: Vec<Bytes>) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => {
            let mut buf = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
            for c in chunks {
                buf.extend_from_slice(&c);
            }
            buf.freeze()
        }
    }
}

/// A strong validator derived from the body (RFC 9110 §8.8.3): equal bodies, equal tags.
pub(crate) fn derive_etag(body: &[u8]) -> HeaderValue {
    let hash = blake3::hash(body);
    let hex = hash.to_hex();
    let mut s = String::with_capacity(34);
    s.push('"');
    s.push_str(&hex[..32]);
    s.push('"');
    HeaderValue::try_from(s).unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}
