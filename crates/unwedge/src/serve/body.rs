//! The request body `serve()` hands the app: hyper's, watched for the watchdog.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::watchdog::now_ns;

pin_project! {
    /// The body of a request that [`serve`](crate::serve()) hands the app: hyper's
    /// [`Incoming`](hyper::body::Incoming), with the same frames (its errors in a
    /// [`BodyError`]), watched so that the [watchdog](crate::watchdog) can tell a handler waiting for its
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
    /// the handler meanwhile. Drop the body when giving up on it (or read it into a future
    /// of its own, `timeout(d, body.collect())`): one found empty in the very poll that gives
    /// up on it (`timeout(d, body.frame())`, an unbiased `select!`), and kept, counts as
    /// waiting until something wakes the handler, and a wait older than twice the idle
    /// timeout is taken for one left behind. Not told apart: a handler that polls its body *while* it works
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
    /// Over HTTP/1, a client that sends no body bytes for the idle timeout
    /// ([`Server::idle_timeout`](crate::Server::idle_timeout), 30 s by default) while the
    /// handler waits for them ends the body with an error ([`BodyError::is_timeout`], and the
    /// same error on every later poll): the request fails (axum's extractors answer `400`)
    /// and, once the handler drops the unfinished body, hyper closes the connection. So
    /// clients stalling uploads cannot hold connections, and the requests reading from them,
    /// for ever (nginx's `client_body_timeout`, tower-http's `RequestBodyTimeoutLayer`). Only
    /// time the handler spends waiting for bytes counts: a handler that has not read its body
    /// yet (it waits for a permit first) is not bounded by it. A client trickling bytes resets
    /// it with each one: bound the whole body read as well (`tokio::time::timeout` around it,
    /// answering `408`) where that matters. A request long on purpose (a streaming upload
    /// whose client may be quiet for minutes) calls
    /// [`long_request`](crate::watchdog::long_request), which turns it off for its body.
    /// HTTP/2 bodies are not timed: the connection's flow-control window, which its streams
    /// share, may be what holds a client back (another stream's handler not reading yet).
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
        // Boxed: a request without a body (most) moves a pointer, not the timer's state.
        wait: Option<Box<WaitMark>>,
    }
}

/// The error of an [`Incoming`] body: hyper's, or the client sent no body bytes for the
/// idle timeout while the handler waited for them.
///
/// ```
/// fn answer(e: &unwedge::serve::BodyError) -> http::StatusCode {
///     if e.is_timeout() {
///         http::StatusCode::REQUEST_TIMEOUT
///     } else {
///         http::StatusCode::BAD_REQUEST
///     }
/// }
/// # let _ = answer;
/// ```
#[derive(Debug)]
pub struct BodyError(BodyErrorKind);

#[derive(Debug)]
enum BodyErrorKind {
    Hyper(hyper::Error),
    TimedOut(Duration),
}

impl BodyError {
    /// The client sent no body bytes for the idle timeout while the handler waited.
    pub fn is_timeout(&self) -> bool {
        matches!(self.0, BodyErrorKind::TimedOut(_))
    }

    /// hyper's error, when it is one (not a timeout).
    pub fn into_hyper(self) -> Option<hyper::Error> {
        match self.0 {
            BodyErrorKind::Hyper(e) => Some(e),
            BodyErrorKind::TimedOut(_) => None,
        }
    }
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            BodyErrorKind::Hyper(e) => e.fmt(f),
            BodyErrorKind::TimedOut(d) => write!(
                f,
                "the client sent no request body bytes for {d:?} (the idle timeout)"
            ),
        }
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.0 {
            BodyErrorKind::Hyper(e) => e.source(),
            BodyErrorKind::TimedOut(_) => None,
        }
    }
}

impl From<hyper::Error> for BodyError {
    fn from(e: hyper::Error) -> Self {
        BodyError(BodyErrorKind::Hyper(e))
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
    /// When the current wait began ([`now_ns`]).
    waiting_since: AtomicU64,
    /// How long a wait may hide its request from the no-progress check, in ns: twice the idle
    /// timeout (a body still polled would have timed out by then: the mark is one a handler
    /// left behind when it gave up on its body without dropping it); `u64::MAX` without one.
    stale_after: u64,
    /// The request called [`long_request`](crate::watchdog::long_request): its body is not
    /// timed (nor does its wait age out).
    untimed: AtomicBool,
}

impl Shared {
    /// The wait has ended now. (`resumed` first: a watchdog that sees the wait over, with
    /// acquire, sees when it ended.)
    fn wait_ends(&self) {
        self.resumed.store(now_ns(), Ordering::Relaxed);
        self.state.store(NOT_WAITING, Ordering::Release);
    }

    /// The body's poll found nothing: the request waits on its client, found `state` (in its
    /// own poll or elsewhere).
    fn wait_begins(&self, state: u8) {
        if self.state.load(Ordering::Relaxed) == NOT_WAITING {
            self.waiting_since.store(now_ns(), Ordering::Relaxed);
        }
        self.state.store(state, Ordering::Release);
    }
}

/// The body's side: marks the waits (a body dropped waits no more), and times them.
#[derive(Debug)]
struct WaitMark {
    shared: Arc<Shared>,
    /// The idle timeout and the runtime of `serve()`, whose timers the body's uses wherever
    /// it is polled (`None`: not timed).
    idle: Option<(Duration, tokio::runtime::Handle)>,
    /// Armed at the first wait (boxed: only a body that waits pays for it), re-armed at the
    /// first wait after each frame.
    timer: Option<Pin<Box<Sleep>>>,
    /// A frame came since the timer was armed.
    rearm: bool,
    /// The timer ran out: the body ends with that error, whatever comes later.
    timed_out: Option<Duration>,
}

impl WaitMark {
    /// The body's poll returned `Pending`: whether the client has now been silent for the
    /// whole idle timeout (polls the timer, which wakes the task when it runs out).
    fn silent_too_long(&mut self, cx: &mut Context<'_>) -> Option<Duration> {
        let (idle, handle) = self.idle.as_ref()?;
        if self.shared.untimed.load(Ordering::Relaxed) {
            self.timer = None;
            return None;
        }
        match &mut self.timer {
            Some(t) if self.rearm => {
                // A timeout too long for the clock (`Duration::MAX` as "none") never runs out.
                let at = Instant::now().checked_add(*idle)?;
                t.as_mut().reset(at);
            }
            Some(_) => {}
            None => {
                let _runtime = handle.enter();
                self.timer = Some(Box::pin(tokio::time::sleep(*idle)));
            }
        }
        self.rearm = false;
        let timer = self.timer.as_mut()?;
        if timer.as_mut().poll(cx).is_ready() {
            self.timed_out = Some(*idle);
            self.timer = None;
            return Some(*idle);
        }
        None
    }
}

impl Drop for WaitMark {
    fn drop(&mut self) {
        if self.shared.state.load(Ordering::Relaxed) != NOT_WAITING {
            self.shared.wait_ends();
        }
    }
}

/// The watchdog's side of a request's [`Incoming`]: whether the request waits on its client,
/// and since when it does not.
#[derive(Debug, Clone)]
pub(crate) struct ClientWait(Arc<Shared>);

impl ClientWait {
    /// The request's handler is waiting for body bytes at `now` (a wait older than twice the
    /// idle timeout is one left behind: not counted).
    pub(crate) fn waiting(&self, now: u64) -> bool {
        let s = &self.0;
        s.state.load(Ordering::Acquire) != NOT_WAITING
            && (now.saturating_sub(s.waiting_since.load(Ordering::Relaxed)) <= s.stale_after
                || s.untimed.load(Ordering::Relaxed))
    }

    /// The request is long on purpose ([`long_request`](crate::watchdog::long_request)): its
    /// client may be silent for as long as it likes.
    pub(crate) fn untime(&self) {
        self.0.untimed.store(true, Ordering::Relaxed);
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
        if s.state.load(Ordering::Relaxed) == IN_OWN_POLL {
            // `resumed` first (see `Shared::wait_ends`); if the exchange fails (a task the
            // body was given to found it empty meanwhile), the age is only a little younger.
            s.resumed.store(now_ns(), Ordering::Relaxed);
            let _ = s.state.compare_exchange(
                IN_OWN_POLL,
                NOT_WAITING,
                Ordering::Release,
                Ordering::Relaxed,
            );
        }
    }
}

impl Incoming {
    /// Wraps hyper's body; the [`ClientWait`] is `None` when the body is complete already (a
    /// `GET`: nothing to watch, no allocation). `idle`: the idle timeout (`None`: not timed),
    /// on the current runtime's timers.
    pub(crate) fn watched(
        inner: hyper::body::Incoming,
        idle: Option<Duration>,
    ) -> (Self, Option<ClientWait>) {
        if inner.is_end_stream() {
            return (Incoming { inner, wait: None }, None);
        }
        let idle = idle.and_then(|d| Some((d, tokio::runtime::Handle::try_current().ok()?)));
        let stale_after = idle.as_ref().map_or(u64::MAX, |(d, _)| {
            u64::try_from(d.as_nanos().saturating_mul(2)).unwrap_or(u64::MAX)
        });
        let shared = Arc::new(Shared {
            state: AtomicU8::new(NOT_WAITING),
            resumed: AtomicU64::new(0),
            request: AtomicU64::new(0),
            waiting_since: AtomicU64::new(0),
            stale_after,
            untimed: AtomicBool::new(false),
        });
        let wait = ClientWait(shared.clone());
        (
            Incoming {
                inner,
                wait: Some(Box::new(WaitMark {
                    shared,
                    idle,
                    timer: None,
                    rearm: false,
                    timed_out: None,
                })),
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
    type Error = BodyError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.project();
        if let Some(idle) = this.wait.as_ref().and_then(|m| m.timed_out) {
            return Poll::Ready(Some(Err(BodyError(BodyErrorKind::TimedOut(idle)))));
        }
        let out = this.inner.poll_frame(cx);
        if let Some(mark) = this.wait {
            if out.is_pending() {
                if let Some(idle) = mark.silent_too_long(cx) {
                    mark.shared.wait_ends();
                    let e = BodyError(BodyErrorKind::TimedOut(idle));
                    return Poll::Ready(Some(Err(e)));
                }
                let shared = &mark.shared;
                let own = crate::watchdog::polling(shared.request.load(Ordering::Relaxed));
                shared.wait_begins(if own { IN_OWN_POLL } else { ELSEWHERE });
            } else {
                mark.rearm = true;
                if matches!(out, Poll::Ready(None)) {
                    mark.timer = None; // the end: nothing to wake the task for
                }
                if mark.shared.state.load(Ordering::Relaxed) != NOT_WAITING {
                    mark.shared.wait_ends();
                }
            }
        }
        out.map(|f| f.map(|f| f.map_err(BodyError::from)))
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
