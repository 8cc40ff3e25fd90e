//! The front of `serve()`'s stack: answers `/livez` and `/readyz`, passes everything else to
//! the app (behind the panic layer unless it is disabled), and marks the panicking request's
//! `500` `Connection: close` once a crash is requested.
//!
//! One service, one future and one body type (nested `http_body_util::Either`) for all of
//! it, so a request pays for no boxed body and no chain of wrapper futures moved into one
//! another.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::BoxError;
use crate::panic::{PanicBody, PanicService, ResponseFuture as PanicFuture};
use crate::{health, PanicLayer, Policy};

/// The app, behind the panic layer or not.
#[derive(Debug, Clone)]
enum App<S> {
    Guarded(PanicService<S>),
    Plain(S),
}

/// See the module docs.
#[derive(Debug, Clone)]
pub(crate) struct Front<S> {
    app: App<S>,
    health_routes: bool,
}

impl<S> Front<S> {
    /// `app` behind a [`PanicLayer`] with `policy`, or bare when `policy` is `None`.
    pub(crate) fn new(app: S, policy: Option<Policy>, health_routes: bool) -> Self {
        let app = match policy {
            Some(p) => App::Guarded(PanicLayer::with_policy(p).layer(app)),
            None => App::Plain(app),
        };
        Front { app, health_routes }
    }
}

impl<S, B> Service<Request<Incoming>> for Front<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ServeBody<B>>;
    type Error = BoxError;
    type Future = FrontFuture<S::Future, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match &mut self.app {
            App::Guarded(s) => s.poll_ready(cx).map_err(Into::into),
            App::Plain(s) => s.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        if self.health_routes && matches!(*req.method(), http::Method::GET | http::Method::HEAD) {
            match req.uri().path() {
                "/livez" => return FrontFuture::probe(crate::probe::livez()),
                "/readyz" => return FrontFuture::probe(crate::probe::readyz()),
                _ => {}
            }
        }
        let http1 = req.version() <= http::Version::HTTP_11;
        match &mut self.app {
            App::Guarded(s) => FrontFuture::Guarded {
                fut: s.call(req),
                http1,
            },
            App::Plain(s) => FrontFuture::Plain {
                fut: s.call(req),
                http1,
            },
        }
    }
}

pin_project! {
    /// The response future of [`Front`].
    #[project = FrontProj]
    pub(crate) enum FrontFuture<F, B> {
        Guarded { #[pin] fut: PanicFuture<F, B>, http1: bool },
        Plain { #[pin] fut: F, http1: bool },
        Probe { res: Option<Response<Full<Bytes>>> },
    }
}

impl<F, B> FrontFuture<F, B> {
    fn probe(res: Response<Full<Bytes>>) -> Self {
        FrontFuture::Probe { res: Some(res) }
    }
}

impl<F, B, E> std::future::Future for FrontFuture<F, B>
where
    F: std::future::Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<ServeBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (res, http1) = match self.project() {
            FrontProj::Guarded { fut, http1 } => match std::task::ready!(fut.poll(cx)) {
                Ok(res) => (res.map(Either::Left), *http1),
                Err(e) => return Poll::Ready(Err(e.into())),
            },
            FrontProj::Plain { fut, http1 } => match std::task::ready!(fut.poll(cx)) {
                Ok(res) => (res.map(|body| Either::Right(Either::Left(body))), *http1),
                Err(e) => return Poll::Ready(Err(e.into())),
            },
            FrontProj::Probe { res } => {
                let res = res.take().expect("FrontFuture polled after completion");
                return Poll::Ready(Ok(res.map(|body| Either::Right(Either::Right(body)))));
            }
        };
        Poll::Ready(Ok(close_if_crashing(res, http1)))
    }
}

/// Adds `Connection: close` to an HTTP/1 error response once a crash is requested (the
/// panicking request's `500`), so the client does not reuse a connection that is about to
/// close.
fn close_if_crashing<B>(mut res: Response<B>, http1: bool) -> Response<B> {
    if http1 && res.status().is_server_error() && health::crash_reason().is_some() {
        res.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    res
}

/// The response body of [`Front`]: the app's through the panic layer, the app's own (no
/// panic layer), or a probe's.
pub(crate) type ServeBody<B> = Either<PanicBody<B>, Either<B, Full<Bytes>>>;
