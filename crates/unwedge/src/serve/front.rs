//! The front of `serve()`'s stack: answers `/livez` and `/readyz`, passes everything else to
//! the app (behind the panic layer unless it is disabled), and marks the panicking request's
//! `500` `Connection: close` once a crash is requested.
//!
//! One service, one future and one body type for all of it, so a request pays for no boxed
//! body and no chain of wrapper futures moved into one another.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
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
                Ok(res) => (res.map(|body| ServeBody::Guarded { body }), *http1),
                Err(e) => return Poll::Ready(Err(e.into())),
            },
            FrontProj::Plain { fut, http1 } => match std::task::ready!(fut.poll(cx)) {
                Ok(res) => (res.map(|body| ServeBody::Plain { body }), *http1),
                Err(e) => return Poll::Ready(Err(e.into())),
            },
            FrontProj::Probe { res } => {
                let res = res.take().expect("FrontFuture polled after completion");
                return Poll::Ready(Ok(res.map(|body| ServeBody::Probe { body })));
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

pin_project! {
    /// The response body of [`Front`]: the app's (through the panic layer or not) or a probe's.
    #[project = ServeBodyProj]
    pub(crate) enum ServeBody<B> {
        Guarded { #[pin] body: PanicBody<B> },
        Plain { #[pin] body: B },
        Probe { #[pin] body: Full<Bytes> },
    }
}

impl<B> Body for ServeBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            ServeBodyProj::Guarded { body } => body.poll_frame(cx),
            ServeBodyProj::Plain { body } => body.poll_frame(cx).map_err(Into::into),
            ServeBodyProj::Probe { body } => body
                .poll_frame(cx)
                .map_err(|never: Infallible| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ServeBody::Guarded { body } => body.is_end_stream(),
            ServeBody::Plain { body } => body.is_end_stream(),
            ServeBody::Probe { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ServeBody::Guarded { body } => body.size_hint(),
            ServeBody::Plain { body } => body.size_hint(),
            ServeBody::Probe { body } => body.size_hint(),
        }
    }
}
