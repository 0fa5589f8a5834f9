//! Bodies for tests: chunked streams of fresh allocations, trailers, and failures.

#![allow(dead_code, unreachable_pub)]

pub mod metrics_app;

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame};

/// `total` bytes in `chunk`-byte frames, each a new allocation, then optional trailers,
/// optionally failing after `fail_after` frames. No size hint: like a chunked response.
pub struct Chunks {
    pub left: usize,
    pub chunk: usize,
    pub trailers: Option<HeaderMap>,
    pub fail_after: Option<usize>,
    pub sent: usize,
}

impl Chunks {
    pub fn new(total: usize, chunk: usize) -> Self {
        Chunks {
            left: total,
            chunk,
            trailers: None,
            fail_after: None,
            sent: 0,
        }
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.fail_after == Some(self.sent) {
            return Poll::Ready(Some(Err(std::io::Error::other("origin reset"))));
        }
        if self.left == 0 {
            return Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))));
        }
        let n = self.left.min(self.chunk);
        self.left -= n;
        self.sent += 1;
        let fill = (self.sent % 251) as u8;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![fill; n])))))
    }
}

/// `store` once its backplane has subscribed (its L1 is in use), within [`metrics_app::DEADLINE`].
pub async fn coherent(store: larder::store::TieredStore) -> larder::store::TieredStore {
    metrics_app::eventually(|| async { store.is_coherent().then_some(()) })
        .await
        .expect("the backplane subscribed");
    store
}

/// Waits until `n` entries (all routes together) have landed in `cache`'s store: a network
/// store writes after the response has been sent.
pub async fn landed(cache: &larder::CacheHandle, n: u64) {
    metrics_app::eventually(|| async { (cache.stats().total.stored >= n).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("{n} entries did not land: {:?}", cache.stats().total));
}
