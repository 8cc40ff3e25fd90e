//! The front of `serve()`'s stack, in one service adapter and one future: answers `/livez`
//! and `/readyz`, tracks every other request for the [watchdog](crate::watchdog), guards the
//! app with the panic layer (unless it is disabled) and marks the panicking request's `500`
//! `Connection: close` once a crash is requested.
//!
//! Not a chain of tower layers: each layer would move the request (264 bytes) and the app's
//! response future (a few hundred bytes for axum's) into its own, and those copies were the
//! largest part of `serve()`'s cost over `axum::serve`. Here the request is looked at by
//! reference, rebuilt once around the watched body ([`Incoming`]) and moved into the app; the
//! app's future is moved into this one.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::{self, Either as FutEither};
use http::{Request, Response};
use http_body::Body;
use http_body_util::{Either, Full};
use pin_project_lite::pin_project;
use tower::Service;

use super::{BoxError, Incoming};
use crate::panic::{PanicBody, ResponseFuture as PanicFuture};
use crate::watchdog::{poll_tracked, Req, Tracker};
use crate::{health, PanicLayer, Policy};

/// What every connection serves: the app, its panic guard and the health routes, and the
/// tracker that counts requests for the watchdog. Cloned for each connection.
#[derive(Debug, Clone)]
pub(crate) struct Stack<S> {
    app: S,
    /// `None` when the panic layer is disabled.
    guard: Option<PanicLayer>,
    health_routes: bool,
    tracker: Arc<Tracker>,
    /// [`Server::connect_info`](super::Server::connect_info).
    connect_info: bool,
    /// How long a request body may go without bytes while the handler waits for them.
    body_idle: Option<std::time::Duration>,
}

impl<S> Stack<S> {
    /// `app` guarded with `guard` (bare when `None`).
    pub(crate) fn new(
        app: S,
        guard: Option<PanicLayer>,
        health_routes: bool,
        tracker: Arc<Tracker>,
    ) -> Self {
        Stack {
            app,
            guard,
            health_routes,
            tracker,
            connect_info: false,
            body_idle: None,
        }
    }

    /// Ends a request body with an error when its client sends nothing for `idle` while the
    /// handler waits for it (`None`: never).
    pub(crate) fn with_body_idle_timeout(mut self, idle: Option<std::time::Duration>) -> Self {
        self.body_idle = idle;
        self
    }

    /// Gives each request the client's address ([`super::ClientAddr`], axum's
    /// `ConnectInfo`) when `on`.
    pub(crate) fn with_connect_info(mut self, on: bool) -> Self {
        self.connect_info = on;
        self
    }

    /// The connection's service, counting its requests in `calls`; `peer` is the client's
    /// address (TCP).
    pub(crate) fn connection(
        self,
        calls: Arc<super::Calls>,
        peer: Option<std::net::SocketAddr>,
    ) -> Conn<S> {
        Conn {
            app: RefCell::new(self.app),
            guard: self.guard,
            health_routes: self.health_routes,
            tracker: self.tracker,
            calls,
            local_client: peer.is_none_or(|p| is_loopback(p.ip())),
            peer: peer.filter(|_| self.connect_info),
            body_idle: self.body_idle,
        }
    }
}

/// A connection's hyper service. hyper calls it from the connection's task, one call at a
/// time (also for HTTP/2, whose streams' futures then run apart from it), so it keeps one
/// instance of the app behind a `RefCell` and calls it in place: no clone of the app per
/// request (hyper-util's `TowerToHyperService` clones the whole tower stack, every layer's
/// handles included, for each request).
pub(crate) struct Conn<S> {
    app: RefCell<S>,
    guard: Option<PanicLayer>,
    health_routes: bool,
    tracker: Arc<Tracker>,
    calls: Arc<super::Calls>,
    /// The client's address, given to each request (`None` unless asked for).
    peer: Option<std::net::SocketAddr>,
    /// The client is on this host (loopback, or a `unix:` socket): the health routes say
    /// why they fail.
    local_client: bool,
    /// See [`Stack::with_body_idle_timeout`].
    body_idle: Option<std::time::Duration>,
}

/// The request came through a proxy (it says so in `Forwarded`, `X-Forwarded-For`,
/// `X-Real-IP` or `Via`): its client may be anywhere, whatever address the proxy connects
/// from.
fn forwarded<B>(req: &Request<B>) -> bool {
    let h = req.headers();
    h.contains_key(http::header::FORWARDED)
        || h.contains_key("x-forwarded-for")
        || h.contains_key("x-real-ip")
        || h.contains_key(http::header::VIA)
}

/// `127.0.0.0/8`, `::1`, and `::ffff:127.x.y.z` (a dual-stack socket's IPv4 client).
fn is_loopback(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
    }
}

/// The app's response future: its own when it was ready at once (axum's `Router` always is),
/// its readiness error, or a `Oneshot` waiting for readiness.
type Called<S, R> = FutEither<
    <S as Service<R>>::Future,
    FutEither<
        future::Ready<Result<<S as Service<R>>::Response, <S as Service<R>>::Error>>,
        // Boxed: the rare path must not make every request's future larger.
        Pin<Box<tower::util::Oneshot<S, R>>>,
    >,
>;

/// Calls `app` now when it is ready at once, else leaves the call to a `Oneshot` that waits
/// for readiness.
///
/// The `Oneshot` gets *this* instance, and the connection keeps a fresh clone: a `poll_ready`
/// that returned `Pending` may have reserved capacity in the instance (tower's
/// `ConcurrencyLimit` queues for a semaphore permit, `Buffer` for a channel slot). A clone
/// starts over and queues behind it, while the permit goes to the reservation nobody polls
/// again: the request would wait forever.
#[inline]
fn call_app<S, R>(app: &mut S, req: R) -> Called<S, R>
where
    S: Service<R> + Clone,
{
    let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
    match app.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => FutEither::Left(app.call(req)),
        Poll::Ready(Err(e)) => FutEither::Right(FutEither::Left(future::err(e))),
        Poll::Pending => {
            let reserved = std::mem::replace(app, app.clone());
            FutEither::Right(FutEither::Right(Box::pin(tower::ServiceExt::oneshot(
                reserved, req,
            ))))
        }
    }
}

impl<S, B> hyper::service::Service<Request<hyper::body::Incoming>> for Conn<S>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ServeBody<B>>;
    type Error = BoxError;
    type Future = ServeFuture<Called<S, Request<Incoming>>, B>;

    fn call(&self, req: Request<hyper::body::Incoming>) -> Self::Future {
        let stopping = self.calls.mark();
        if req.version() <= http::Version::HTTP_10 {
            // Its answer's body, when a stream, ends with the close (see `socket`).
            self.calls
                .http10
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let close = match (req.version() <= http::Version::HTTP_11, stopping) {
            (false, _) => Close::Never, // HTTP/2: hyper's GOAWAY does it
            (true, true) => Close::Always,
            (true, false) => Close::OnCrashError(self.calls.stop.id()),
        };
        if self.health_routes && matches!(*req.method(), http::Method::GET | http::Method::HEAD) {
            // A proxy on this host connects from loopback for clients anywhere: a request it
            // forwarded is not local. (Looked at for the health routes only: four header
            // lookups cost every other request ~6 % of serve()'s instructions.)
            let local = || self.local_client && !forwarded(&req);
            // Not tracked: a probe answered is no progress of the app (nor the panicking
            // request's answer).
            let close = if close == Close::Always {
                Close::Always
            } else {
                Close::Never
            };
            match req.uri().path() {
                "/livez" => {
                    let res = crate::probe::livez_for(local());
                    return ServeFuture::probe(res, close);
                }
                "/readyz" => {
                    let res = crate::probe::readyz_for(local());
                    return ServeFuture::probe(res, close);
                }
                _ => {}
            }
        }
        let (parts, body) = req.into_parts();
        // HTTP/1 only: over HTTP/2 the connection's flow-control window, shared by its
        // streams, may be what holds a client back (another stream's handler not reading).
        let idle = self
            .body_idle
            .filter(|_| parts.version <= http::Version::HTTP_11);
        let (body, client) = Incoming::watched(body, idle);
        let mut req = Request::from_parts(parts, body);
        if let Some(peer) = self.peer {
            let ext = req.extensions_mut();
            ext.insert(super::ClientAddr(peer));
            #[cfg(feature = "axum")]
            ext.insert(axum::extract::ConnectInfo(peer));
        }
        let tracked = self.tracker.begin(&req, client);
        let _call_ends = tracked.call_begins();
        // Only this call borrows the app: hyper does not call again before it returns.
        let mut app = self.app.borrow_mut();
        let app = &mut *app;
        match &self.guard {
            Some(guard) => ServeFuture {
                kind: Kind::Guarded {
                    fut: guard.guard_call(req, |req| call_app(app, req)),
                },
                req: Some(tracked),
                close,
            },
            None => ServeFuture {
                kind: Kind::Plain {
                    fut: call_app(app, req),
                },
                req: Some(tracked),
                close,
            },
        }
    }
}

pin_project! {
    /// The response future of a [`Conn`].
    pub(crate) struct ServeFuture<F, B> {
        #[pin]
        kind: Kind<F, B>,
        // The request as the watchdog tracks it; `None` for a probe and once completed.
        req: Option<Req>,
        close: Close,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B> {
        Guarded { #[pin] fut: PanicFuture<F, B> },
        Plain { #[pin] fut: F },
        Probe { res: Option<Response<Full<Bytes>>> },
    }
}

impl<F, B> ServeFuture<F, B> {
    fn probe(res: Response<Full<Bytes>>, close: Close) -> Self {
        ServeFuture {
            kind: Kind::Probe { res: Some(res) },
            req: None,
            close,
        }
    }
}

impl<F, B, E> Future for ServeFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<ServeBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = match this.kind.project() {
            KindProj::Guarded { fut } => match std::task::ready!(poll_tracked(this.req, fut, cx)) {
                Ok(res) => res.map(Either::Left),
                Err(e) => return Poll::Ready(Err(e.into())),
            },
            KindProj::Plain { fut } => match std::task::ready!(poll_tracked(this.req, fut, cx)) {
                Ok(res) => res.map(|body| Either::Right(Either::Left(body))),
                Err(e) => return Poll::Ready(Err(e.into())),
            },
            KindProj::Probe { res } => {
                let res = res.take().expect("ServeFuture polled after completion");
                res.map(|body| Either::Right(Either::Right(body)))
            }
        };
        Poll::Ready(Ok(this.close.apply(res)))
    }
}

/// Whether an answer says `Connection: close`, so that the client does not reuse a connection
/// about to close. Without it, an answer written in the same poll that delivered the request
/// goes out keep-alive, hyper closes the connection as idle right after, and the client's next
/// request on it is reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// HTTP/2 (GOAWAY is hyper's), or a probe while `serve()` is not stopping.
    Never,
    /// An HTTP/1 request that came while `serve()` was stopping (shutdown or a crash began).
    Always,
    /// An HTTP/1 request: close if it is answered once its `serve()` (the one whose stop
    /// signal has this id) is stopping, or with an error once a crash is requested (the
    /// panicking request's `500`).
    OnCrashError(u64),
}

impl Close {
    fn apply<B>(self, mut res: Response<B>) -> Response<B> {
        let close = match self {
            Close::Never => false,
            Close::Always => true,
            // A drain that began while the request ran: the connection closes after its
            // grace, so a client must not reuse it (hyper's graceful shutdown marks only the
            // answers it sees after the grace).
            Close::OnCrashError(serve) => {
                super::stop::is_stopping(serve)
                    || (res.status().is_server_error() && health::crash_reason().is_some())
            }
        };
        if close {
            res.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        res
    }
}

/// Called by `serve()`'s panic layer when the app answered a panic itself: a `PanicLayer`
/// inside the app caught it and decided with its own policy, and `serve()`'s (the policy the
/// startup line names, `UNWEDGE_POLICY`'s) never sees the app's panics. Said once.
pub(crate) fn inner_layer_handled_a_panic(outer: Policy, inner: Policy) {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    tracing::warn!(
        app_policy = inner.as_str(),
        serve_policy = outer.as_str(),
        "a PanicLayer inside the app (policy {inner}) handled a panic: it decides, not serve()'s own PanicLayer (policy {outer}, the one UNWEDGE_POLICY and Server::policy set), which never sees the app's panics; either remove the app's layer and configure serve()'s with Server::panic_layer(..), or keep the app's and turn serve()'s off with Server::without_panic_layer()"
    );
}

/// The response body of `serve()`: the app's through the panic layer, the app's own (no
/// panic layer), or a probe's.
pub(crate) type ServeBody<B> = Either<PanicBody<B>, Either<B, Full<Bytes>>>;
