//! The request body `serve()` hands the app: hyper's, watched for the watchdog.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The body of a request that [`serve`](crate::serve()) hands the app: hyper's
    /// [`Incoming`](hyper::body::Incoming), with the same frames and the same error type,
    /// watched so that the [watchdog](crate::watchdog) can tell a handler waiting for its
    /// client's body from a handler waiting on itself.
    ///
    /// While the request's handler waits for body bytes that the client has not sent yet, the
    /// request is *waiting on its client*: the no-progress check leaves it out, so a client
    /// that uploads slowly, or stops half-way, costs its own request and never gets a quiet
    /// process declared wedged (and replaced, with every request in flight). What counts is
    /// the request's latest poll: a handler that polled the body, got nothing, and went on to
    /// wait for something else in a later poll is watched again.
    ///
    /// An app written for hyper's own type changes one import:
    /// `use unwedge::serve::Incoming;` instead of `use hyper::body::Incoming;`, or takes the
    /// inner body with [`Incoming::into_inner`] (no longer watched). An axum `Router` takes
    /// any body: nothing to change.
    ///
    /// Bound the time a handler gives a client for its body anyway
    /// (`tokio::time::timeout` around the read, answering `408`): a client that stops
    /// sending keeps its request, and its connection, until then.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::convert::Infallible;
    ///
    /// use http_body_util::{BodyExt, Full};
    /// use unwedge::serve::Incoming;
    ///
    /// // A hyper-style service: echoes the request body.
    /// async fn echo(
    ///     req: http::Request<Incoming>,
    /// ) -> Result<http::Response<Full<bytes::Bytes>>, Infallible> {
    ///     let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    ///     Ok(http::Response::new(Full::new(body)))
    /// }
    ///
    /// #[tokio::main]
    /// async fn main() -> unwedge::serve::Outcome {
    ///     unwedge::serve(tower::service_fn(echo)).await
    /// }
    /// ```
    #[derive(Debug)]
    pub struct Incoming {
        #[pin]
        inner: hyper::body::Incoming,
        // `None` when the body was already complete (nothing to wait for).
        wait: Option<WaitMark>,
    }
}

/// Set while the body's latest poll returned `Pending`; cleared when it returns a frame, when
/// the request's future begins a poll (see [`ClientWait::poll_begins`]) and when the body is
/// dropped.
#[derive(Debug)]
struct WaitMark(Arc<AtomicBool>);

impl Drop for WaitMark {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// The watchdog's side of a request's [`Incoming`]: whether the request waits on its client.
#[derive(Debug, Clone)]
pub(crate) struct ClientWait(Arc<AtomicBool>);

impl ClientWait {
    /// The request's handler is waiting for body bytes now.
    pub(crate) fn waiting(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Before a poll of the request's future: what it waits on is what this poll says.
    pub(crate) fn poll_begins(&self) {
        if self.0.load(Ordering::Relaxed) {
            self.0.store(false, Ordering::Relaxed);
        }
    }
}

impl Incoming {
    /// Wraps hyper's body; the [`ClientWait`] is `None` when the body is complete already (a
    /// `GET`: nothing to watch, no allocation).
    pub(crate) fn watched(inner: hyper::body::Incoming) -> (Self, Option<ClientWait>) {
        if inner.is_end_stream() {
            return (Incoming { inner, wait: None }, None);
        }
        let flag = Arc::new(AtomicBool::new(false));
        let wait = ClientWait(flag.clone());
        (
            Incoming {
                inner,
                wait: Some(WaitMark(flag)),
            },
            Some(wait),
        )
    }

    /// hyper's body, no longer watched: a handler that then waits for it counts as waiting
    /// on itself.
    ///
    /// ```
    /// fn inner(req: http::Request<unwedge::serve::Incoming>) -> hyper::body::Incoming {
    ///     req.into_body().into_inner()
    /// }
    /// # let _ = inner;
    /// ```
    pub fn into_inner(self) -> hyper::body::Incoming {
        self.inner
    }
}

impl Body for Incoming {
    type Data = Bytes;
    type Error = hyper::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let out = this.inner.poll_frame(cx);
        if let Some(WaitMark(flag)) = this.wait {
            flag.store(out.is_pending(), Ordering::Relaxed);
        }
        out
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
