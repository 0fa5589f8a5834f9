//! The response future of [`Cache`](crate::Cache).

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use http::Response;
use pin_project_lite::pin_project;

use crate::middleware::{
    body::CacheBody,
    respond,
    status::{CacheStatus, XCache},
};

pub(crate) type BoxResponseFuture<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<CacheBody<B>>, E>> + Send + 'static>>;

pin_project! {
    /// Response future for [`Cache`](crate::Cache).
    ///
    /// A hit from an in-process store is ready at once, without allocating. A bypass polls
    /// the service's own future, boxed: service futures are large (axum's is 320 bytes), and
    /// a small response future keeps every move of it cheap on the hit path. Misses, writes and
    /// network-store lookups run as one boxed task, which costs nothing next to the call they
    /// wait for.
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        state: FutureState<F, B, E>,
    }
}

pin_project! {
    #[project = FutureStateProj]
    enum FutureState<F, B, E> {
        Forward { future: Pin<Box<F>>, status: CacheStatus, x_cache: XCache },
        Ready { response: Option<Response<CacheBody<B>>> },
        Boxed { future: BoxResponseFuture<B, E> },
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    pub(crate) fn forward(future: F, status: CacheStatus, x_cache: XCache) -> Self {
        ResponseFuture {
            state: FutureState::Forward {
                future: Box::pin(future),
                status,
                x_cache,
            },
        }
    }

    pub(crate) fn ready(response: Response<CacheBody<B>>) -> Self {
        ResponseFuture {
            state: FutureState::Ready {
                response: Some(response),
            },
        }
    }

    pub(crate) fn boxed(future: BoxResponseFuture<B, E>) -> Self {
        ResponseFuture {
            state: FutureState::Boxed { future },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<CacheBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.state.project() {
            FutureStateProj::Forward {
                future,
                status,
                x_cache,
            } => {
                let response = ready!(future.as_mut().poll(cx))?;
                Poll::Ready(Ok(respond::passed_through(response, *status, *x_cache)))
            }
            FutureStateProj::Ready { response } => Poll::Ready(Ok(response
                .take()
                .expect("ResponseFuture polled after completion"))),
            FutureStateProj::Boxed { future } => future.as_mut().poll(cx),
        }
    }
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match &self.state {
            FutureState::Forward { .. } => "ResponseFuture::Forward",
            FutureState::Ready { .. } => "ResponseFuture::Ready",
            FutureState::Boxed { .. } => "ResponseFuture::Boxed",
        })
    }
}
