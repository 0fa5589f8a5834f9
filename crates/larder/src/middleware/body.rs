//! The response body: streamed from the service (and copied on a miss), or replayed from an entry.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::phase::fill::Fill;

pin_project! {
    /// The body of every response that went through the cache layer.
    ///
    /// On a miss the service's body streams to the client frame by frame while the frames
    /// (shared `Bytes`, not copies) and the trailers are kept for the store; past the size limit
    /// the copy is dropped and the rest streams through untouched. A hit replays the stored
    /// body and trailers.
    pub struct CacheBody<B> {
        #[pin]
        kind: BodyKind<B>,
    }
}

pin_project! {
    #[project = BodyKindProj]
    enum BodyKind<B> {
        // Boxed: what a miss records is large, and a small body keeps every move of the
        // response cheap.
        Stream { #[pin] body: B, recorder: Option<Box<Recorder>> },
        Replay { data: Option<Bytes>, trailers: Option<Box<HeaderMap>> },
    }
}

/// What a miss keeps of the body while it streams.
struct Recorder {
    chunks: Vec<Bytes>,
    size: usize,
    limit: usize,
    fill: Fill,
}

impl<B> CacheBody<B> {
    /// The service's body, untouched.
    pub(crate) fn stream(body: B) -> Self {
        CacheBody {
            kind: BodyKind::Stream {
                body,
                recorder: None,
            },
        }
    }

    /// The service's body, copied into `fill` as it streams, up to `limit` bytes.
    pub(crate) fn recording(body: B, fill: Fill, limit: usize) -> Self {
        CacheBody {
            kind: BodyKind::Stream {
                body,
                recorder: Some(Box::new(Recorder {
                    chunks: Vec::new(),
                    size: 0,
                    limit,
                    fill,
                })),
            },
        }
    }

    /// A stored body and its trailers.
    pub(crate) fn replay(data: Bytes, trailers: Option<&HeaderMap>) -> Self {
        CacheBody {
            kind: BodyKind::Replay {
                data: (!data.is_empty()).then_some(data),
                trailers: trailers.map(|t| Box::new(t.clone())),
            },
        }
    }

    /// No body (HEAD, 304, 504).
    pub(crate) fn empty() -> Self {
        CacheBody {
            kind: BodyKind::Replay {
                data: None,
                trailers: None,
            },
        }
    }
}

impl<B> Body for CacheBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project().kind.project() {
            BodyKindProj::Replay { data, trailers } => {
                if let Some(d) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(*t))))
            }
            BodyKindProj::Stream { mut body, recorder } => {
                let frame = ready!(body.as_mut().poll_frame(cx));
                match &frame {
                    Some(Ok(f)) => {
                        if let Some(data) = f.data_ref() {
                            let over = recorder.as_mut().is_some_and(|rec| {
                                rec.size += data.len();
                                rec.size > rec.limit
                            });
                            if over {
                                // Too big to store: stop copying, keep streaming, and
                                // release the followers now.
                                if let Some(rec) = recorder.take() {
                                    rec.fill.too_big();
                                }
                            } else if let Some(rec) = recorder {
                                rec.chunks.push(data.clone());
                            }
                        } else if let Some(t) = f.trailers_ref() {
                            if let Some(rec) = recorder {
                                rec.fill.trailers(t.clone());
                            }
                        }
                    }
                    // A broken body is never stored; dropping the recorder ends its flight.
                    Some(Err(_)) => *recorder = None,
                    None => {
                        if let Some(rec) = recorder.take() {
                            rec.fill.finish(rec.chunks);
                        }
                    }
                }
                // A server stops polling once it has sent Content-Length bytes, so the end
                // may never be seen as `None`: finish as soon as the body says it is over.
                if frame.as_ref().is_some_and(Result::is_ok) && body.is_end_stream() {
                    if let Some(rec) = recorder.take() {
                        rec.fill.finish(rec.chunks);
                    }
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Replay { data, trailers } => data.is_none() && trailers.is_none(),
            // Report the end only after poll_frame has seen it, so the recorder can finish.
            BodyKind::Stream { body, recorder } => recorder.is_none() && body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Replay { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            BodyKind::Stream { body, .. } => body.size_hint(),
        }
    }
}

impl<B> std::fmt::Debug for CacheBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match &self.kind {
            BodyKind::Stream {
                recorder: Some(_), ..
            } => "CacheBody::Recording",
            BodyKind::Stream { .. } => "CacheBody::Stream",
            BodyKind::Replay { .. } => "CacheBody::Replay",
        })
    }
}
