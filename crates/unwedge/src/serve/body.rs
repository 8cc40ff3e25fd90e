//! The request body `serve()` hands the app: hyper's, watched for the watchdog.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::watchdog::now_ns;

pin_project! {
    /// The body of a request that [`serve`](crate::serve()) hands the app: hyper's
    /// [`Incoming`](hyper::body::Incoming), with the same frames and the same error type,
    /// watched so that the [watchdog](crate::watchdog) can tell a handler waiting for its
    /// client's body from a handler waiting on itself.
    ///
    /// While the request's handler waits for body bytes that the client has not sent yet, the
    /// request is *waiting on its client*: the no-progress check leaves it out, and once the
    /// wait ends the request's age counts from then, not from its start. So a client that
    /// uploads slowly, or stops half-way, costs its own request and does not get a quiet
    /// process declared wedged (and replaced, with every request in flight), nor does the work
    /// a handler does after a long upload.
    ///
    /// Which polls count: the body polled in the request's own poll waits until the
    /// request's next poll, which says anew (a handler that polled the body, got nothing, and
    /// went on to wait for something else in a later poll is watched again); the body polled
    /// by a task the handler gave it to waits until that task gets a frame, whatever wakes
    /// the handler meanwhile. Not told apart: a handler that polls its body *while* it works
    /// (`select!` or `join!` over the body and its own work, readers that read ahead of what
    /// they return such as multipart parsers and decompressors, `tokio::io::copy` from the
    /// body) counts as waiting on its client while the client sends nothing, even if its own
    /// work hangs meanwhile; the check sees it again once the client sends.
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

/// Not waiting on the client.
const NOT_WAITING: u8 = 0;
/// Waiting: the body's latest poll returned `Pending` inside a poll of its own request.
const IN_OWN_POLL: u8 = 1;
/// Waiting: the body's latest poll returned `Pending` elsewhere (a task the handler gave the
/// body to), which a new poll of the request does not undo.
const ELSEWHERE: u8 = 2;

/// What the body and the watchdog share about one request.
#[derive(Debug)]
struct Shared {
    /// [`NOT_WAITING`], [`IN_OWN_POLL`] or [`ELSEWHERE`].
    state: AtomicU8,
    /// When the request last stopped waiting on its client ([`now_ns`]; 0: it never waited):
    /// its age for the no-progress check counts from then, not from its start, so that a long
    /// upload followed by a moment of work is not taken for a request hung all along.
    resumed: AtomicU64,
    /// The tracked request's id (0: not tracked).
    request: AtomicU64,
}

impl Shared {
    /// The wait, if any, has ended now.
    fn wait_ends(&self) {
        if self.state.swap(NOT_WAITING, Ordering::Relaxed) != NOT_WAITING {
            self.resumed.store(now_ns(), Ordering::Relaxed);
        }
    }
}

/// The body's side: marks the waits; a body dropped waits no more.
#[derive(Debug)]
struct WaitMark(Arc<Shared>);

impl Drop for WaitMark {
    fn drop(&mut self) {
        if self.0.state.load(Ordering::Relaxed) != NOT_WAITING {
            self.0.wait_ends();
        }
    }
}

/// The watchdog's side of a request's [`Incoming`]: whether the request waits on its client,
/// and since when it does not.
#[derive(Debug, Clone)]
pub(crate) struct ClientWait(Arc<Shared>);

impl ClientWait {
    /// The request's handler is waiting for body bytes now.
    pub(crate) fn waiting(&self) -> bool {
        self.0.state.load(Ordering::Relaxed) != NOT_WAITING
    }

    /// When the request last stopped waiting on its client (0: never waited).
    pub(crate) fn resumed(&self) -> u64 {
        self.0.resumed.load(Ordering::Relaxed)
    }

    /// The tracked request's id, so that the body can tell a poll inside its request's own.
    pub(crate) fn set_request(&self, id: u64) {
        self.0.request.store(id, Ordering::Relaxed);
    }

    /// Before a poll of the request's future: a wait its previous poll found is over (this
    /// poll says anew whether it waits); one found elsewhere stands until that body poll
    /// returns a frame.
    #[inline]
    pub(crate) fn poll_begins(&self) {
        let s = &self.0;
        if s.state.load(Ordering::Relaxed) == IN_OWN_POLL
            && s.state
                .compare_exchange(
                    IN_OWN_POLL,
                    NOT_WAITING,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            s.resumed.store(now_ns(), Ordering::Relaxed);
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
        let shared = Arc::new(Shared {
            state: AtomicU8::new(NOT_WAITING),
            resumed: AtomicU64::new(0),
            request: AtomicU64::new(0),
        });
        let wait = ClientWait(shared.clone());
        (
            Incoming {
                inner,
                wait: Some(WaitMark(shared)),
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

/// hyper's body as this type, unwatched (a service written for `serve()` run under plain
/// hyper, or in a test with `serve_connection`).
///
/// ```
/// fn adapt(req: http::Request<hyper::body::Incoming>) -> http::Request<unwedge::serve::Incoming> {
///     req.map(unwedge::serve::Incoming::from)
/// }
/// # let _ = adapt;
/// ```
impl From<hyper::body::Incoming> for Incoming {
    fn from(inner: hyper::body::Incoming) -> Self {
        Incoming { inner, wait: None }
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
        if let Some(WaitMark(shared)) = this.wait {
            if out.is_pending() {
                let own = crate::watchdog::polling(shared.request.load(Ordering::Relaxed));
                let state = if own { IN_OWN_POLL } else { ELSEWHERE };
                shared.state.store(state, Ordering::Relaxed);
            } else if shared.state.load(Ordering::Relaxed) != NOT_WAITING {
                shared.wait_ends();
            }
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
