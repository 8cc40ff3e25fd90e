//! [`PanicLayer`]: catch a handler's panic, answer 500, report it, and apply the policy.
//!
//! ```
//! use axum::{routing::get, Router};
//! use unwedge::{PanicLayer, Policy};
//!
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(PanicLayer::with_policy(Policy::Auto));
//! # let _ = app;
//! ```

use std::any::Any;
use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use pin_project_lite::pin_project;
use serde::Serialize;
use tower::{Layer, Service};

use super::context::{self, Scope};
use super::policy::{decide, Budget, Policy};
use super::report::{is_grpc, CapturedHeaders, HeaderClasses, REPORTED_HEADERS};
use super::report::{Action, PanicReport, RequestInfo};
use super::sink::{emit, ReportSink};

/// The error type of the boxed response body: the inner body's error, or [`BodyPanicked`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request id header: read from requests, set on the `500` answering a panic (and on every
/// response with [`PanicLayer::echo_request_id`]).
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest `x-request-id` taken from a client; longer ones are replaced by a generated id.
pub const MAX_REQUEST_ID_LEN: usize = 128;

type Responder = Arc<dyn Fn(&ResponseContext<'_>) -> Response<Bytes> + Send + Sync>;

#[derive(Clone)]
struct Config {
    policy: Policy,
    expose_details: bool,
    echo_request_id: bool,
    capture_headers: bool,
    /// The report headers (with the redacted names and `x-request-id`), prepared for lookups.
    header_classes: HeaderClasses,
    budget: Arc<Budget>,
    sinks: Vec<Arc<dyn ReportSink>>,
    responder: Option<Responder>,
    /// Called when a response this layer passes through answers a panic another `PanicLayer`
    /// inside it handled (see [`Handled`]): with this layer's policy and the inner one's.
    /// Set by `serve()` for its own layer.
    on_inner_panic: Option<fn(outer: Policy, inner: Policy)>,
    /// The policy was chosen ([`PanicLayer::with_policy`]), not `new()`'s default.
    policy_given: bool,
}

/// Marks the `500` a [`PanicLayer`] answered a panic with, in the response's extensions: a
/// layer outside it learns that the panic was handled (and decided) inside.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Handled {
    /// The policy of the layer that handled it.
    pub(crate) policy: Policy,
}

/// Tower middleware that catches a handler's panic, answers `500`, records a
/// [`PanicReport`] and applies a [`Policy`].
///
/// - Catches panics in the inner service's `call`, while its response future is polled, and
///   while the response body is polled (the body then ends with an error: the status line is
///   already sent, so the client sees a truncated response) or dropped (a guard it owns:
///   reported, the response already sent).
/// - Answers `500` with `content-type: application/problem+json` and
///   `{"type":"about:blank","title":"Internal Server Error","status":500,"request_id":"…"}`.
///   A gRPC request (HTTP/2 with `content-type: application/grpc…`) gets gRPC's answer
///   instead, `grpc-status: 13` (INTERNAL) ([`grpc_error_response`]).
///   The panic message (its first KiB) is added as `"detail"` only with
///   [`expose_details(true)`](Self::expose_details);
///   [`respond_with`](Self::respond_with) replaces the answer entirely.
/// - The `500` carries `x-request-id` (and the problem its `request_id`): the client's, when
///   it sent a sane one (at most [`MAX_REQUEST_ID_LEN`] bytes of `A-Z a-z 0-9 - _ . : / + = @`),
///   a generated one otherwise; the same id is in the report. Other responses pass through
///   untouched unless [`echo_request_id(true)`](Self::echo_request_id).
/// - Every report goes to a `tracing` event (target `unwedge::panic`, level error; the
///   backtrace at debug), to this layer's [sinks](Self::sink), to the
///   [process-wide sinks](crate::panic::add_sink) and to [`health`](crate::health()).
/// - [`Policy::Crash`], or [`Policy::Auto`] when a [`Mutex`](crate::Mutex) was poisoned or the
///   [budget](Self::budget) is spent, calls [`request_crash`](crate::health::request_crash):
///   the panicking request still gets its 500, and the process turns Tainted.
///   [`serve`](crate::serve()) then drains and exits with code 70; without `serve()`, await
///   [`crash_requested`](crate::health::crash_requested) yourself.
///
/// The layer installs unwedge's [panic hook](crate::install) when it is built.
///
/// # What it cannot catch
/// A panic with `panic = "abort"`, a panic while a panic is unwinding (abort), a panic in a
/// task the handler spawned itself (use [`spawn`](crate::spawn)), stack overflow and OOM.
///
/// ```
/// use std::time::Duration;
/// use unwedge::{PanicLayer, Policy};
///
/// let layer = PanicLayer::with_policy(Policy::Auto)
///     .budget(5, Duration::from_secs(10)) // the default: a 6th panic within 10 s crashes
///     .expose_details(false); // the default: the panic message never reaches the client
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct PanicLayer {
    config: Arc<Config>,
}

impl fmt::Debug for PanicLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PanicLayer")
            .field("policy", &self.config.policy)
            .field("expose_details", &self.config.expose_details)
            .field("echo_request_id", &self.config.echo_request_id)
            .field("capture_headers", &self.config.capture_headers)
            .field("report_headers", &self.config.header_classes.wanted())
            .field("budget_max_panics", &self.config.budget.max)
            .field("budget_window", &self.config.budget.window)
            .field("sinks", &self.config.sinks.len())
            .field("custom_response", &self.config.responder.is_some())
            .finish()
    }
}

impl Default for PanicLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl PanicLayer {
    /// A layer with [`Policy::Auto`].
    ///
    /// ```
    /// let layer = unwedge::PanicLayer::new();
    /// # let _ = layer;
    /// ```
    pub fn new() -> Self {
        Self::with_policy(Policy::Auto).edit(|c| c.policy_given = false)
    }

    /// A layer with the given policy.
    ///
    /// ```
    /// let layer = unwedge::PanicLayer::with_policy(unwedge::Policy::Recover);
    /// # let _ = layer;
    /// ```
    pub fn with_policy(policy: Policy) -> Self {
        super::hook::install();
        PanicLayer {
            config: Arc::new(Config {
                policy,
                expose_details: false,
                echo_request_id: false,
                capture_headers: true,
                header_classes: HeaderClasses::new(&REPORTED_HEADERS, &X_REQUEST_ID),
                budget: Arc::new(Budget::new(5, Duration::from_secs(10))),
                sinks: Vec::new(),
                responder: None,
                on_inner_panic: None,
                policy_given: true,
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// The policy this layer applies.
    ///
    /// ```
    /// use unwedge::{PanicLayer, Policy};
    /// assert_eq!(PanicLayer::new().policy(), Policy::Auto);
    /// assert_eq!(PanicLayer::with_policy(Policy::Crash).policy(), Policy::Crash);
    /// ```
    pub fn policy(&self) -> Policy {
        self.config.policy
    }

    /// The policy given to [`with_policy`](Self::with_policy); `None` for `new()`'s default
    /// (`serve()` then applies the process-wide one).
    pub(crate) fn given_policy(&self) -> Option<Policy> {
        self.config.policy_given.then_some(self.config.policy)
    }

    /// Whether the panic message goes to the client as the problem's `"detail"` (default:
    /// false; turn it on only where clients may see internals, e.g. in development). The
    /// detail is at most 1 KiB of the message (a `…` marks a cut), the user and password of
    /// a URL in it shown `…@` as in the report.
    ///
    /// ```
    /// let dev = unwedge::PanicLayer::new().expose_details(cfg!(debug_assertions));
    /// # let _ = dev;
    /// ```
    pub fn expose_details(self, expose: bool) -> Self {
        self.edit(|c| c.expose_details = expose)
    }

    /// Whether every response carries `x-request-id`, not only the `500` answering a panic
    /// (default: false). On: the client's id is echoed, or a generated one is set, on every
    /// response, which costs a header insert (and, without a client id, a small allocation)
    /// per request. Off, successful responses pass through untouched, as with tower-http's
    /// `CatchPanicLayer`; to give every request an id anyway, put tower-http's
    /// `SetRequestIdLayer` outside this layer (this layer then reads and reports that id)
    /// and its `PropagateRequestIdLayer` to echo it.
    ///
    /// ```
    /// let layer = unwedge::PanicLayer::new().echo_request_id(true);
    /// # let _ = layer;
    /// ```
    pub fn echo_request_id(self, echo: bool) -> Self {
        self.edit(|c| c.echo_request_id = echo)
    }

    /// The panic budget of [`Policy::Auto`]: more than `max_panics` panics within `window`
    /// crash the process, so that state unwedge cannot see (a std or tokio lock) cannot rot
    /// for long. Default: 5 in 10 s. Clones of a layer share one budget; calling this gives
    /// the layer a fresh one.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let strict = unwedge::PanicLayer::new().budget(0, Duration::from_secs(60)); // any panic crashes
    /// # let _ = strict;
    /// ```
    pub fn budget(self, max_panics: u32, window: Duration) -> Self {
        self.edit(|c| c.budget = Arc::new(Budget::new(max_panics, window)))
    }

    /// Adds a sink that receives this layer's reports (besides the
    /// [process-wide sinks](crate::panic::add_sink)).
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use futures_util::FutureExt;
    /// use tower::{Layer, ServiceExt};
    ///
    /// let messages = Arc::new(Mutex::new(Vec::<String>::new()));
    /// let sink = {
    ///     let messages = messages.clone();
    ///     move |r: &unwedge::PanicReport| messages.lock().unwrap().push(r.message.clone())
    /// };
    /// let svc = unwedge::PanicLayer::new().sink(Arc::new(sink)).layer(tower::service_fn(
    ///     |req: http::Request<()>| async move {
    ///         if req.uri().path() == "/boom" { panic!("boom") }
    ///         Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
    ///     },
    /// ));
    /// let req = http::Request::get("/boom").body(()).unwrap();
    /// let res = svc.oneshot(req).now_or_never().unwrap().unwrap();
    /// assert_eq!(res.status(), 500);
    /// assert_eq!(*messages.lock().unwrap(), ["boom"]);
    /// ```
    pub fn sink(self, sink: Arc<dyn ReportSink>) -> Self {
        self.edit(|c| c.sinks.push(sink))
    }

    /// Whether reports include request headers (default: true): the values of the
    /// [`report_headers`](Self::report_headers), and the [`REDACTED_HEADERS`] the request
    /// carried, each with the value [`REDACTED`]. Capturing costs a look at each request
    /// header's name and a copy of the values kept (into one buffer, on the stack while they
    /// are short); turn it off when that matters more than the headers of a rare panic.
    ///
    /// [`REDACTED_HEADERS`]: crate::panic::REDACTED_HEADERS
    /// [`REDACTED`]: crate::panic::REDACTED
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use futures_util::FutureExt;
    /// use tower::{Layer, ServiceExt};
    ///
    /// let headers = Arc::new(Mutex::new(None));
    /// let sink = {
    ///     let headers = headers.clone();
    ///     move |r: &unwedge::PanicReport| {
    ///         *headers.lock().unwrap() = r.request.as_ref().map(|req| req.headers.clone())
    ///     }
    /// };
    /// let layer = unwedge::PanicLayer::new().capture_headers(false).sink(Arc::new(sink));
    /// let svc = layer.layer(tower::service_fn(|req: http::Request<()>| async move {
    ///     if req.uri().path() == "/boom" { panic!("boom") }
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
    /// }));
    /// let req = http::Request::get("/boom").header("user-agent", "curl/8").body(()).unwrap();
    /// let _ = svc.oneshot(req).now_or_never().unwrap().unwrap();
    /// assert_eq!(headers.lock().unwrap().as_ref().map(|h| h.len()), Some(0));
    /// ```
    pub fn capture_headers(self, capture: bool) -> Self {
        self.edit(|c| c.capture_headers = capture)
    }

    /// The request headers whose values a report shows (the first value of each); default:
    /// [`REPORTED_HEADERS`](crate::panic::REPORTED_HEADERS). The
    /// [`REDACTED_HEADERS`](crate::panic::REDACTED_HEADERS) stay redacted even when listed
    /// here, and so do the other names
    /// [`unwedge_redact::is_credential_name`] knows (`x-api-key`, `x-auth-token`, …: listed,
    /// they are shown as [`REDACTED`](crate::panic::REDACTED)).
    ///
    /// ```
    /// use http::header::{HeaderName, HOST, USER_AGENT};
    /// let layer = unwedge::PanicLayer::new().report_headers([
    ///     HOST,
    ///     USER_AGENT,
    ///     HeaderName::from_static("x-tenant"),
    /// ]);
    /// # let _ = layer;
    /// ```
    pub fn report_headers(self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        let names: Vec<HeaderName> = names.into_iter().collect();
        self.edit(|c| c.header_classes = HeaderClasses::new(&names, &X_REQUEST_ID))
    }

    /// Replaces the `500` answer. `f` gets the request id and the report (with the decision)
    /// and returns the response; the layer adds `x-request-id` to it.
    ///
    /// ```
    /// use unwedge::panic::ResponseContext;
    /// let layer = unwedge::PanicLayer::new().respond_with(|ctx: &ResponseContext<'_>| {
    ///     http::Response::builder()
    ///         .status(503)
    ///         .body(format!("sorry, request {} failed", ctx.request_id).into())
    ///         .unwrap()
    /// });
    /// # let _ = layer;
    /// ```
    pub fn respond_with<F>(self, f: F) -> Self
    where
        F: Fn(&ResponseContext<'_>) -> Response<Bytes> + Send + Sync + 'static,
    {
        self.edit(|c| c.responder = Some(Arc::new(f)))
    }
}

impl PanicLayer {
    /// The same layer with `policy` (for `serve()`, whose environment can override it).
    pub(crate) fn replace_policy(self, policy: Policy) -> Self {
        self.edit(|c| c.policy = policy)
    }

    /// Calls `f` when a panic answered by another `PanicLayer` inside this one passes through.
    pub(crate) fn on_inner_panic(self, f: fn(outer: Policy, inner: Policy)) -> Self {
        self.edit(|c| c.on_inner_panic = Some(f))
    }
}

impl<S> Layer<S> for PanicLayer {
    type Service = PanicService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PanicService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// What a custom responder (see [`PanicLayer::respond_with`]) gets to build the answer from.
///
/// ```
/// use futures_util::FutureExt;
/// use http_body_util::BodyExt;
/// use tower::{Layer, ServiceExt};
/// use unwedge::panic::ResponseContext;
///
/// let layer = unwedge::PanicLayer::new().respond_with(|ctx: &ResponseContext<'_>| {
///     let text = if ctx.expose_details {
///         ctx.report.message.clone()
///     } else {
///         format!("request {} failed", ctx.request_id)
///     };
///     http::Response::builder().status(500).body(text.into()).unwrap()
/// });
/// let svc = layer.layer(tower::service_fn(|req: http::Request<()>| async move {
///     if req.uri().path() == "/boom" { panic!("boom") }
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
/// }));
/// let req = http::Request::get("/boom").header("x-request-id", "req-7").body(()).unwrap();
/// let res = svc.oneshot(req).now_or_never().unwrap().unwrap();
/// let body = res.into_body().collect().now_or_never().unwrap().unwrap().to_bytes();
/// assert_eq!(body, "request req-7 failed");
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct ResponseContext<'a> {
    /// The id echoed in `x-request-id`.
    pub request_id: &'a str,
    /// The full report, decision included. Never put it in a response unless clients may
    /// see internals.
    pub report: &'a PanicReport,
    /// The layer's [`expose_details`](PanicLayer::expose_details) setting.
    pub expose_details: bool,
    /// The request was gRPC (HTTP/2 with `content-type: application/grpc…`, not gRPC-Web):
    /// its client reads the outcome from `grpc-status`, not from the HTTP status (see
    /// [`grpc_error_response`]).
    pub grpc: bool,
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'static str,
    status: u16,
    request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<std::borrow::Cow<'a, str>>,
}

/// The default answer to a panic: `500`, `application/problem+json` (RFC 9457), with
/// `"detail"` (the panic message: at most 1 KiB of it, a `…` marking a cut) only when
/// `ctx.expose_details`. Handy inside a custom
/// responder that only adds to it:
///
/// ```
/// let layer = unwedge::PanicLayer::new().respond_with(|ctx| {
///     let mut res = unwedge::panic::problem_response(ctx);
///     res.headers_mut().insert("retry-after", http::HeaderValue::from_static("1"));
///     res
/// });
/// # let _ = layer;
/// ```
pub fn problem_response(ctx: &ResponseContext<'_>) -> Response<Bytes> {
    let problem = Problem {
        kind: "about:blank",
        title: "Internal Server Error",
        status: 500,
        request_id: ctx.request_id,
        detail: ctx
            .expose_details
            .then(|| crate::text::cut_marked(&ctx.report.message, MAX_PROBLEM_DETAIL)),
    };
    let body = serde_json::to_vec(&problem).expect("a struct of strings serializes");
    let mut res = Response::new(Bytes::from(body));
    *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    res.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// The default answer to a panic in a gRPC request ([`ResponseContext::grpc`]): gRPC's own
/// error, `grpc-status: 13` (INTERNAL) with a `grpc-message` naming the request id (and the
/// panic message only when `ctx.expose_details`), as a trailers-only response (HTTP `200`,
/// `content-type: application/grpc`, no body), which every gRPC client reads as a failed call
/// with that status. (An HTTP `500` would reach it as `UNKNOWN`, "grpc-status header
/// missing".)
///
/// ```
/// let layer = unwedge::PanicLayer::new().respond_with(|ctx| {
///     if ctx.grpc {
///         return unwedge::panic::grpc_error_response(ctx);
///     }
///     http::Response::builder()
///         .status(500)
///         .body("sorry".into())
///         .unwrap()
/// });
/// # let _ = layer;
/// ```
pub fn grpc_error_response(ctx: &ResponseContext<'_>) -> Response<Bytes> {
    let mut res = Response::new(Bytes::new());
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.extend(grpc_status(
        ctx.request_id,
        ctx.expose_details.then_some(&*ctx.report.message),
    ));
    res
}

/// `grpc-status: 13` (INTERNAL) and its `grpc-message`: `Internal Server Error (request ID)`,
/// then `: DETAIL` if given (its first [`MAX_GRPC_DETAIL`] bytes), percent-encoded as gRPC
/// wants (bytes outside printable ASCII, and `%`).
fn grpc_status(request_id: &str, detail: Option<&str>) -> http::HeaderMap {
    let mut text = format!("Internal Server Error (request {request_id})");
    if let Some(d) = detail {
        let cut = crate::text::floor_char_boundary(d, MAX_GRPC_DETAIL);
        text.push_str(": ");
        text.push_str(&d[..cut]);
        if cut < d.len() {
            text.push('…');
        }
    }
    let mut encoded = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b' '..=b'~' if b != b'%' => encoded.push(char::from(b)),
            _ => encoded.push_str(&format!("%{b:02X}")),
        }
    }
    let mut h = http::HeaderMap::with_capacity(2);
    h.insert("grpc-status", HeaderValue::from_static("13"));
    if let Ok(v) = HeaderValue::from_str(&encoded) {
        h.insert("grpc-message", v);
    }
    h
}

/// Most bytes of a panic message in a `grpc-message` (with `expose_details`): percent-encoding
/// may triple them, and gRPC clients refuse metadata past 8 to 16 KiB (RESOURCE_EXHAUSTED
/// instead of the INTERNAL the call ended with).
const MAX_GRPC_DETAIL: usize = 1024;

/// Most bytes of a panic message in a problem's `"detail"` (with `expose_details`), the `…`
/// marking a cut included: a client gets what it needs to report the error, as from gRPC's
/// [`MAX_GRPC_DETAIL`], not a whole dump a handler panicked with.
const MAX_PROBLEM_DETAIL: usize = 1024;

/// The service [`PanicLayer`] wraps around an inner service. See [`PanicLayer`].
///
/// ```
/// use futures_util::FutureExt;
/// use tower::{Layer, ServiceExt};
///
/// let handler = tower::service_fn(|req: http::Request<()>| async move {
///     if req.uri().path() == "/boom" { panic!("boom") }
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
/// });
/// let svc: unwedge::panic::PanicService<_> = unwedge::PanicLayer::new().layer(handler);
/// let req = http::Request::get("/boom").body(()).unwrap();
/// let res = svc.clone().oneshot(req).now_or_never().unwrap().unwrap();
/// assert_eq!(res.status(), 500);
/// assert!(res.headers().contains_key("x-request-id"));
/// let res = svc.oneshot(http::Request::new(())).now_or_never().unwrap().unwrap();
/// assert_eq!(res.status(), 200); // the next request is served
/// ```
#[derive(Clone)]
pub struct PanicService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S: fmt::Debug> fmt::Debug for PanicService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PanicService")
            .field("inner", &self.inner)
            .field("policy", &self.config.policy)
            .finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for PanicService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<PanicBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // As `PanicLayer::guard_call`, with the inner `call` in the closure itself: measured,
        // going through `guard_call` moves the future once more.
        let mut ctx = RequestCtx::new(&self.config, &req);
        let inner = &mut self.inner;
        let called = context::with_scope_in(&mut ctx.scope, || {
            catch_unwind(AssertUnwindSafe(move || inner.call(req)))
        });
        match called {
            Ok(fut) => ResponseFuture {
                state: State::Polling { fut },
                ctx: Some(ctx),
            },
            Err(payload) => ResponseFuture::panicked(ctx, payload),
        }
    }
}

impl PanicLayer {
    /// For `serve()`, which guards its app without wrapping it in a [`PanicService`] (one
    /// future less per request): `call` (the app's `call`) runs in a new scope for `req`,
    /// its panic caught, and the future it returns is polled as [`PanicService`]'s is.
    #[inline]
    pub(crate) fn guard_call<ReqB, F, ResB>(
        &self,
        req: Request<ReqB>,
        call: impl FnOnce(Request<ReqB>) -> F,
    ) -> ResponseFuture<F, ResB> {
        let mut ctx = RequestCtx::new(&self.config, &req);
        let called = context::with_scope_in(&mut ctx.scope, || {
            catch_unwind(AssertUnwindSafe(move || call(req)))
        });
        match called {
            Ok(fut) => ResponseFuture {
                state: State::Polling { fut },
                ctx: Some(ctx),
            },
            Err(payload) => ResponseFuture::panicked(ctx, payload),
        }
    }
}

pin_project! {
    /// The response future of [`PanicService`].
    ///
    /// A panic while it is polled (the handler's `async` body, after an `.await`) is caught
    /// too:
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use tower::{Layer, Service, ServiceExt};
    ///
    /// let handler = tower::service_fn(|req: http::Request<()>| async move {
    ///     tokio::task::yield_now().await;
    ///     if req.uri().path() == "/boom" { panic!("boom, after an await") }
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
    /// });
    /// let mut svc = unwedge::PanicLayer::new().layer(handler);
    /// let req = http::Request::get("/boom").body(()).unwrap();
    /// let fut: unwedge::panic::ResponseFuture<_, _> = svc.ready().await.unwrap().call(req);
    /// assert_eq!(fut.await.unwrap().status(), 500);
    /// # }
    /// ```
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
        ctx: Option<RequestCtx>,
    }

    impl<F, B> PinnedDrop for ResponseFuture<F, B> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            let polling = matches!(this.state.as_mut().project(), StateProj::Polling { .. });
            // Dropped while another panic unwinds (a sibling in a `join!`), or with what a
            // caught one left behind (an outer layer's `drop_after_panic`): plain drop, so
            // that the capture of that panic stays for whoever catches it, its poisons its.
            if context::panicking() {
                return;
            }
            let Some(ctx) = this.ctx.as_mut().filter(|_| polling) else {
                return;
            };
            // Cancelled (the client went away, a timeout): the handler's future is dropped in
            // the request's scope, as it is polled, so that what its drop does (a
            // `CommitGuard` left uncommitted poisons its mutex) is the request's, decided by
            // this layer's policy. A `Drop` that panics there is that request's panic:
            // reported and decided as one in a poll (nobody is left to answer).
            if let Err(payload) = set_in_scope(this.state, State::Done, ctx) {
                let _ = ctx.report(payload);
            }
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Polling { #[pin] fut: F },
        // Boxed: the rare path must not make every request's future larger.
        Panicked { res: Option<Box<Response<PanicBody<B>>>> },
        Done,
    }
}

impl<F, B> ResponseFuture<F, B> {
    /// The future of a request whose `call` panicked: it answers the panic.
    fn panicked(mut ctx: RequestCtx, payload: Box<dyn Any + Send>) -> Self {
        ResponseFuture {
            state: State::Panicked {
                res: Some(Box::new(ctx.panic_response(payload))),
            },
            ctx: None,
        }
    }
}

/// Sets `place` to `to` in the request's scope, the old value's panic caught: what its `Drop`
/// does (a mutex poisoned, a panic) is the request's. For the handler's future, dropped when
/// cancelled, and for the response body, dropped when done.
fn set_in_scope<T>(
    mut place: Pin<&mut T>,
    to: T,
    ctx: &mut RequestCtx,
) -> Result<(), Box<dyn Any + Send>> {
    context::with_scope_in(&mut ctx.scope, || {
        catch_unwind(AssertUnwindSafe(|| place.set(to)))
    })
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, ResB, E> Future for ResponseFuture<F, ResB>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Output = Result<Response<PanicBody<ResB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        match this.state.as_mut().project() {
            StateProj::Polling { .. } => {
                let ctx = this
                    .ctx
                    .as_mut()
                    .expect("ResponseFuture polled after completion");
                let mut state = this.state.as_mut();
                let polled = context::with_scope_in(&mut ctx.scope, || {
                    catch_unwind(AssertUnwindSafe(|| {
                        let StateProj::Polling { fut } = state.as_mut().project() else {
                            unreachable!("matched above")
                        };
                        let result = std::task::ready!(fut.poll(cx));
                        // Done, the future is dropped in the request's scope too, as when it
                        // is cancelled or panics: what it still holds (a `CommitGuard` left
                        // uncommitted, in a hand-written future) is the request's, decided by
                        // this layer's policy, and a `Drop` that panics is its panic.
                        state.set(State::Done);
                        Poll::Ready(result)
                    }))
                });
                match polled {
                    Ok(Poll::Pending) => Poll::Pending,
                    Ok(Poll::Ready(result)) => {
                        // Poisons by panics the app caught itself: decided now.
                        context::settle_caught();
                        let ctx = this.ctx.take().expect("checked above");
                        if let Some(scope) = &ctx.scope {
                            scope.settle_caught();
                        }
                        Poll::Ready(result.map(|res| ctx.finish(res)))
                    }
                    Err(payload) => {
                        let mut ctx = this.ctx.take().expect("checked above");
                        // Dropped first, as the unwinding would have: a guard a hand-written
                        // future holds poisons its mutex, in this panic's report. A `Drop`
                        // that panics adds a capture of its own, whose poisons the report
                        // lists too (`take_for` picks this panic's by its message).
                        let dropped = context::drop_after_panic(|| {
                            set_in_scope(this.state, State::Done, &mut ctx)
                        });
                        let res = ctx.panic_response(payload);
                        if let Err(second) = dropped {
                            let _ = catch_unwind(AssertUnwindSafe(move || drop(second)));
                        }
                        Poll::Ready(Ok(res))
                    }
                }
            }
            StateProj::Panicked { res } => {
                let res = res.take().expect("ResponseFuture polled after completion");
                this.state.set(State::Done);
                Poll::Ready(Ok(*res))
            }
            StateProj::Done => panic!("ResponseFuture polled after completion"),
        }
    }
}

/// What the layer keeps of a request so that it can report a panic after the request itself
/// has moved into the inner service, in the request's [`Scope`]: one allocation per request.
/// Everything is turned into text only when read (a panic report, a lock holder's name).
#[derive(Debug)]
pub(crate) struct RequestScope {
    /// The policy given to the layer (`None`: `new()`'s default, the process-wide one).
    policy: Option<Policy>,
    method: Method,
    path: RequestPath,
    id: RequestId,
    headers: CapturedHeaders,
    #[cfg(feature = "axum")]
    matched: Option<axum::extract::MatchedPath>,
}

impl RequestScope {
    /// The policy given to the layer the request runs under, if one was (see
    /// [`PanicLayer::with_policy`]): what decides a poison that is not a panic, such as a
    /// [`CommitGuard`](crate::CommitGuard) dropped uncommitted.
    pub(crate) fn policy(&self) -> Option<Policy> {
        self.policy
    }

    fn request_id(&self) -> IdText<'_> {
        match &self.id {
            // Sane ids are ASCII.
            RequestId::Client(v) => IdText::Client(v.to_str().unwrap_or_default()),
            RequestId::Generated(n) => IdText::Generated(request_id_text(*n)),
        }
    }

    /// The `x-request-id` response header value.
    fn id_header(&self) -> HeaderValue {
        match &self.id {
            RequestId::Client(v) => v.clone(),
            RequestId::Generated(n) => generated_id_value(&request_id_text(*n)),
        }
    }

    fn grpc(&self) -> bool {
        self.headers.grpc
    }

    /// `METHOD /route`: axum's matched route when there is one, the path with its identifiers
    /// replaced by placeholders otherwise (`GET /users/{int}`; see
    /// [`unwedge_redact::route_template`]).
    fn route(&self) -> String {
        #[cfg(feature = "axum")]
        if let Some(m) = &self.matched {
            return format!("{} {}", self.method, m.as_str());
        }
        let template = unwedge_redact::route_template(self.path.as_str());
        format!("{} {template}", self.method)
    }

    fn info(&self, config: &Config) -> RequestInfo {
        RequestInfo {
            method: self.method.as_str().to_owned(),
            path: self.path.as_str().to_owned(),
            request_id: self.request_id().as_str().to_owned(),
            headers: self.headers.to_map(config.header_classes.wanted()),
            #[cfg(feature = "axum")]
            route: self.matched.as_ref().map(|m| m.as_str().to_owned()),
            #[cfg(not(feature = "axum"))]
            route: None,
        }
    }
}

/// `GET /comments/42 (request 3f2a…)`.
impl fmt::Display for RequestScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} (request {})",
            self.method,
            self.path.as_str(),
            self.request_id().as_str()
        )
    }
}

#[derive(Debug)]
enum RequestId {
    /// The client's own id, echoed as it came.
    Client(HeaderValue),
    /// A number from [`next_request_number`], turned into text only when read.
    Generated(u64),
}

/// A request id as text: borrowed from the client's header, or formatted from a number.
enum IdText<'a> {
    Client(&'a str),
    Generated([u8; 16]),
}

impl IdText<'_> {
    fn as_str(&self) -> &str {
        match self {
            IdText::Client(s) => s,
            // Hex digits.
            IdText::Generated(hex) => std::str::from_utf8(hex).unwrap_or_default(),
        }
    }
}

/// The request path (no query), inline when short: no allocation for most requests.
#[derive(Debug)]
enum RequestPath {
    Inline { len: u8, buf: [u8; INLINE_PATH] },
    Heap(Box<str>),
}

const INLINE_PATH: usize = 62;

impl RequestPath {
    fn new(path: &str) -> Self {
        if path.len() <= INLINE_PATH {
            let mut buf = [0; INLINE_PATH];
            buf[..path.len()].copy_from_slice(path.as_bytes());
            RequestPath::Inline {
                len: path.len() as u8,
                buf,
            }
        } else {
            RequestPath::Heap(path.into())
        }
    }

    /// Refills it with `path` (in place when both are short).
    fn set(&mut self, path: &str) {
        match self {
            RequestPath::Inline { len, buf } if path.len() <= INLINE_PATH => {
                buf[..path.len()].copy_from_slice(path.as_bytes());
                *len = path.len() as u8;
            }
            _ => *self = RequestPath::new(path),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // Copied from a `str` whole.
            RequestPath::Inline { len, buf } => {
                std::str::from_utf8(&buf[..*len as usize]).unwrap_or_default()
            }
            RequestPath::Heap(path) => path,
        }
    }
}

/// What the response future and the response body carry: the layer's configuration and the
/// request's scope.
struct RequestCtx {
    config: Arc<Config>,
    /// `None` only while it is this thread's current scope (moved in for each poll and back).
    scope: Option<Arc<Scope>>,
}

thread_local! {
    /// Scopes of requests that ended on this thread, nobody else holding them, emptied and
    /// kept for the next requests: a request's scope then costs no allocation.
    static SPARE_SCOPES: std::cell::RefCell<Vec<Arc<Scope>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Spare scopes kept per thread (a burst of concurrent requests beyond it allocates).
const MAX_SPARE_SCOPES: usize = 64;

/// Gives the request's scope back for reuse when nothing else holds it (a lock holder, a
/// report); it keeps no reference into the request (its id header, its matched route).
impl Drop for RequestCtx {
    fn drop(&mut self) {
        let Some(mut scope) = self.scope.take() else {
            return;
        };
        // The request's end (also when it was cancelled): what it left to decide, now; with
        // the scope to itself (most requests), without a lock or an atomic operation.
        let Some(unique) = Arc::get_mut(&mut scope) else {
            scope.settle_caught();
            return;
        };
        unique.settle_caught_unique();
        let Some(r) = unique.as_request_mut() else {
            return;
        };
        r.id = RequestId::Generated(0);
        r.headers.clear();
        #[cfg(feature = "axum")]
        {
            r.matched = None;
        }
        let _ = SPARE_SCOPES.try_with(|s| {
            if let Ok(mut spare) = s.try_borrow_mut() {
                if spare.len() < MAX_SPARE_SCOPES {
                    spare.push(scope);
                }
            }
        });
    }
}

impl RequestCtx {
    fn new<B>(config: &Arc<Config>, req: &Request<B>) -> Self {
        #[cfg(feature = "axum")]
        let matched = req
            .extensions()
            .get::<axum::extract::MatchedPath>()
            .cloned();
        // A spare scope of an earlier request is refilled in place; a new one is filled in
        // its allocation: the headers are copied straight into the scope either way.
        let mut scope = match SPARE_SCOPES.try_with(|s| s.try_borrow_mut().ok()?.pop()) {
            Ok(Some(scope)) => scope,
            _ => Scope::request(RequestScope {
                policy: None,
                method: Method::GET,
                path: RequestPath::Inline {
                    len: 0,
                    buf: [0; INLINE_PATH],
                },
                id: RequestId::Generated(0),
                headers: CapturedHeaders::default(),
                #[cfg(feature = "axum")]
                matched: None,
            }),
        };
        if let Some(r) = Arc::get_mut(&mut scope).and_then(Scope::as_request_mut) {
            r.policy = config.policy_given.then_some(config.policy);
            r.method = req.method().clone();
            r.path.set(req.uri().path());
            #[cfg(feature = "axum")]
            {
                r.matched = matched;
            }
            let all = req.headers();
            let client_id = if config.capture_headers {
                r.headers.capture(all, &config.header_classes)
            } else {
                r.headers.grpc = all.get(CONTENT_TYPE).is_some_and(|v| is_grpc(v.as_bytes()));
                all.get(X_REQUEST_ID)
            };
            // gRPC runs over HTTP/2: an HTTP/1 exchange cannot carry its trailers (hyper drops
            // them), so one with gRPC's content type is answered as any HTTP/1 request.
            r.headers.grpc &= req.version() == http::Version::HTTP_2;
            r.id = match client_id {
                Some(v) if is_sane_request_id(v.as_bytes()) => RequestId::Client(v.clone()),
                _ => RequestId::Generated(next_request_number()),
            };
        }
        RequestCtx {
            config: config.clone(),
            scope: Some(scope),
        }
    }

    fn request(&self) -> Option<&RequestScope> {
        self.scope.as_deref().and_then(Scope::as_request)
    }

    fn request_id(&self) -> IdText<'_> {
        self.request()
            .map_or(IdText::Client(""), RequestScope::request_id)
    }

    fn id_header(&self) -> HeaderValue {
        match self.request() {
            Some(r) => r.id_header(),
            // Unreachable: the scope is always back after a poll.
            None => generated_id_value(&generate_request_id()),
        }
    }

    fn finish<B>(self, res: Response<B>) -> Response<PanicBody<B>> {
        let (mut parts, body) = res.into_parts();
        if let Some(f) = self.config.on_inner_panic {
            if let Some(inner) = parts.extensions.get::<Handled>() {
                f(self.config.policy, inner.policy);
            }
        }
        if self.config.echo_request_id {
            parts.headers.insert(X_REQUEST_ID, self.id_header());
        }
        let body = CatchBody {
            inner: Some(body),
            ctx: Some(self),
        };
        Response::from_parts(
            parts,
            PanicBody {
                kind: Either::Left(body),
            },
        )
    }

    /// Reports the panic just caught on this thread and applies the policy.
    fn report(&self, payload: Box<dyn Any + Send>) -> PanicReport {
        let captured = context::take_for(&*payload);
        // Decided here, with this panic: not again at the request's end.
        if let Some(scope) = &self.scope {
            scope.forget_caught(&captured.poisoned);
        }
        let ours = match (&captured.scope, &self.scope) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        if !ours {
            // Only possible when the hook did not see this panic: the capture is a stub.
            tracing::debug!(target: "unwedge::panic", request_id = self.request_id().as_str(), "panic capture from another scope");
        }
        let message = context::payload_message(&*payload);
        // Dropping a payload runs arbitrary code; it must not unwind out of the layer.
        let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
        let mut report = PanicReport::from_captured(captured);
        if report.message != message {
            // The hook did not see this panic (not installed, or replaced): trust the payload.
            report.message = message;
        }
        report.request = self.request().map(|r| r.info(&self.config));
        let route = self
            .request()
            .map_or_else(|| "<unknown request>".to_owned(), RequestScope::route);
        let decision = decide(
            self.config.policy,
            &report.rolled_back,
            &report.poisoned,
            Some(&self.config.budget),
        );
        let crash = (decision.action == Action::Crash)
            .then(|| format!("panic in {route}: {}", decision.reason));
        report.decision = Some(decision);
        emit(&report, &self.config.sinks, &route);
        if let Some(reason) = crash {
            crate::health::request_crash(reason);
        }
        report
    }

    fn panic_response<B>(&mut self, payload: Box<dyn Any + Send>) -> Response<PanicBody<B>> {
        let report = self.report(payload);
        let id = self.request_id();
        let rc = ResponseContext {
            request_id: id.as_str(),
            report: &report,
            expose_details: self.config.expose_details,
            grpc: self.request().is_some_and(RequestScope::grpc),
        };
        let default = |rc: &ResponseContext<'_>| match rc.grpc {
            true => grpc_error_response(rc),
            false => problem_response(rc),
        };
        let res = match &self.config.responder {
            Some(f) => catch_unwind(AssertUnwindSafe(|| f(&rc))).unwrap_or_else(|_| default(&rc)),
            None => default(&rc),
        };
        let (mut parts, body) = res.into_parts();
        parts.headers.insert(X_REQUEST_ID, self.id_header());
        parts.extensions.insert(Handled {
            policy: self.config.policy,
        });
        Response::from_parts(
            parts,
            PanicBody {
                kind: Either::Right(Full::new(body)),
            },
        )
    }
}

fn is_sane_request_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_LEN
        && id.iter().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'+' | b'=' | b'@')
        })
}

/// A fresh generated id: see [`next_request_number`] and [`request_id_text`].
fn generate_request_id() -> [u8; 16] {
    request_id_text(next_request_number())
}

/// A number unique within the process, for a request that came without an id. Each thread
/// takes numbers from the process-wide counter in blocks, so threads do not contend on one
/// cache line for every request; the text is made only when the id is read.
fn next_request_number() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    const BLOCK: u64 = 1024;
    thread_local! {
        /// `(next, end)`: this thread's block of numbers.
        static LOCAL: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
    }
    LOCAL
        .try_with(|local| {
            let (mut next, mut end) = local.get();
            if next == end {
                next = COUNTER.fetch_add(BLOCK, Ordering::Relaxed);
                end = next + BLOCK;
            }
            local.set((next + 1, end));
            next
        })
        // A block of one: still disjoint from every other block.
        .unwrap_or_else(|_| COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// 16 hex digits: a per-process random seed mixed with the request's number (unique within
/// the process, unpredictable across processes).
fn request_id_text(n: u64) -> [u8; 16] {
    static SEED: OnceLock<u64> = OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    });
    // splitmix64: a bijection, so distinct numbers give distinct ids.
    let mut z = seed.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    hex16(z)
}

/// `z` as 16 lower-case hex digits, a byte (two digits) at a time.
fn hex16(z: u64) -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 16];
    for (i, pair) in buf.chunks_exact_mut(2).enumerate() {
        let byte = (z >> (56 - 8 * i)) as u8;
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
    buf
}

/// A generated id as a header value. (A copy: 16 bytes in their own allocation were measured
/// cheaper than slices of a shared per-thread buffer of ids.)
fn generated_id_value(hex: &[u8; 16]) -> HeaderValue {
    HeaderValue::from_bytes(hex).expect("hex digits are a valid header value")
}

/// The error a response body ends with when polling it panicked.
///
/// ```
/// use futures_util::{FutureExt, StreamExt};
/// use http_body_util::{BodyExt, StreamBody};
/// use tower::{Layer, ServiceExt};
/// use unwedge::panic::BodyPanicked;
///
/// let handler = tower::service_fn(|_req: http::Request<()>| async {
///     let frames = futures_util::stream::iter([()]).map(
///         |()| -> Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible> {
///             panic!("encoder bug")
///         },
///     );
///     Ok::<_, std::convert::Infallible>(http::Response::new(StreamBody::new(frames)))
/// });
/// let svc = unwedge::PanicLayer::new().layer(handler);
/// let res = svc.oneshot(http::Request::new(())).now_or_never().unwrap().unwrap();
/// assert_eq!(res.status(), 200); // sent before the body panicked
/// let err = res.into_body().collect().now_or_never().unwrap().unwrap_err();
/// assert!(err.is::<BodyPanicked>());
/// ```
#[derive(Debug, Clone)]
pub struct BodyPanicked {
    request_id: String,
}

impl BodyPanicked {
    /// The id of the request whose response body panicked.
    ///
    /// ```
    /// use futures_util::{FutureExt, StreamExt};
    /// use http_body_util::{BodyExt, StreamBody};
    /// use tower::{Layer, ServiceExt};
    ///
    /// let handler = tower::service_fn(|_req: http::Request<()>| async {
    ///     let frames = futures_util::stream::iter([()]).map(
    ///         |()| -> Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible> {
    ///             panic!("encoder bug")
    ///         },
    ///     );
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(StreamBody::new(frames)))
    /// });
    /// let svc = unwedge::PanicLayer::new().layer(handler);
    /// let req = http::Request::get("/export").header("x-request-id", "req-9").body(()).unwrap();
    /// let res = svc.oneshot(req).now_or_never().unwrap().unwrap();
    /// let err = res.into_body().collect().now_or_never().unwrap().unwrap_err();
    /// let panicked = err.downcast_ref::<unwedge::panic::BodyPanicked>().unwrap();
    /// assert_eq!(panicked.request_id(), "req-9"); // the id in the report, to find it
    /// ```
    pub fn request_id(&self) -> &str {
        &self.request_id
    }
}

impl fmt::Display for BodyPanicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the response body panicked (request {})",
            self.request_id
        )
    }
}

impl std::error::Error for BodyPanicked {}

pin_project! {
    /// The response body [`PanicService`] answers with: the inner service's body, whose
    /// polling is guarded like the handler (a panic ends it with [`BodyPanicked`]), or the
    /// layer's own answer to a panic. Not boxed: wrap it in a box yourself when a single type
    /// is needed (e.g. `http_body_util::BodyExt::boxed_unsync`).
    ///
    /// ```
    /// use bytes::Bytes;
    /// use futures_util::FutureExt;
    /// use http_body_util::{BodyExt, Full};
    /// use tower::{Layer, ServiceExt};
    ///
    /// let svc = unwedge::PanicLayer::new().layer(tower::service_fn(|_req: http::Request<()>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from("ok"))))
    /// }));
    /// let res = svc.oneshot(http::Request::new(())).now_or_never().unwrap().unwrap();
    /// let body = res.into_body().collect().now_or_never().unwrap().unwrap().to_bytes();
    /// assert_eq!(body, "ok");
    /// ```
    pub struct PanicBody<B> {
        // The inner body, guarded; or the layer's answer to a panic.
        #[pin]
        kind: Either<CatchBody<B>, Full<Bytes>>,
    }
}

impl<B> fmt::Debug for PanicBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Either::Left(_) => "inner",
            Either::Right(_) => "panic answer",
        };
        f.debug_struct("PanicBody").field("kind", &kind).finish()
    }
}

impl<B> Body for PanicBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.project().kind.poll_frame(cx)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.kind.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.kind.size_hint()
    }
}

pin_project! {
    struct CatchBody<B> {
        // `None` once dropped (see the `PinnedDrop`).
        #[pin]
        inner: Option<B>,
        // None once the body has panicked: it is never polled again.
        ctx: Option<RequestCtx>,
    }

    // A body is dropped when it is done, or when the client went away mid-stream: a panic in
    // its `Drop` (a guard it owns) is reported like one in `poll_frame`, instead of unwinding
    // into the server's connection task unseen.
    impl<B> PinnedDrop for CatchBody<B> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped while another panic unwinds (a handler outside this layer held the
            // response, or an outer layer's `drop_after_panic` drops it): entering the scope
            // would clear that panic's capture, and a second panic here aborts anyway. The
            // body is dropped as it is.
            if context::panicking() {
                return;
            }
            let this = this.project();
            let Some(ctx) = this.ctx.as_mut() else {
                return;
            };
            if let Err(payload) = set_in_scope(this.inner, None, ctx) {
                let ctx = this.ctx.take().expect("checked above");
                ctx.report(payload);
            }
        }
    }
}

impl<B> Body for CatchBody<B>
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
        let mut this = self.project();
        let Some(ctx) = this.ctx.as_mut() else {
            return Poll::Ready(None);
        };
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            return Poll::Ready(None);
        };
        let polled = context::with_scope_in(&mut ctx.scope, || {
            catch_unwind(AssertUnwindSafe(|| inner.poll_frame(cx)))
        });
        match polled {
            Ok(Poll::Ready(Some(Err(e)))) => Poll::Ready(Some(Err(e.into()))),
            Ok(Poll::Ready(Some(Ok(frame)))) => Poll::Ready(Some(Ok(frame))),
            Ok(Poll::Ready(None)) => Poll::Ready(None),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => {
                // The body dropped first, as the unwinding would have (see
                // `context::drop_after_panic`): a guard it holds poisons its mutex, in this
                // panic's report.
                let dropped =
                    context::drop_after_panic(|| set_in_scope(this.inner.as_mut(), None, ctx));
                let ctx = this.ctx.take().expect("checked above");
                let report = ctx.report(payload);
                if let Err(second) = dropped {
                    let _ = catch_unwind(AssertUnwindSafe(move || drop(second)));
                }
                let request_id = ctx.request_id();
                if ctx.request().is_some_and(RequestScope::grpc) {
                    // gRPC ends a call with its status in the trailers: the client gets
                    // INTERNAL after the messages it had, not a broken stream.
                    let detail = ctx.config.expose_details.then_some(&*report.message);
                    let trailers = grpc_status(request_id.as_str(), detail);
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Poll::Ready(Some(Err(Box::new(BodyPanicked {
                    request_id: request_id.as_str().to_owned(),
                }))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let Some(inner) = self.inner.as_ref().filter(|_| self.ctx.is_some()) else {
            return true;
        };
        catch_unwind(AssertUnwindSafe(|| inner.is_end_stream())).unwrap_or(false)
    }

    fn size_hint(&self) -> SizeHint {
        let Some(inner) = self.inner.as_ref().filter(|_| self.ctx.is_some()) else {
            return SizeHint::with_exact(0);
        };
        catch_unwind(AssertUnwindSafe(|| inner.size_hint())).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_distinct_hex() {
        let a = generate_request_id();
        let b = generate_request_id();
        assert_ne!(a, b);
        assert!(a.iter().all(u8::is_ascii_hexdigit));
    }

    #[test]
    fn hex16_matches_format() {
        for z in [0, 1, 0x0123_4567_89ab_cdef, u64::MAX, 0xf00d_0000_0000_beef] {
            assert_eq!(hex16(z), format!("{z:016x}").as_bytes(), "{z:x}");
        }
    }

    #[test]
    fn generated_ids_are_distinct_across_threads() {
        let ids = || {
            (0..2_000)
                .map(|_| generate_request_id())
                .collect::<Vec<_>>()
        };
        let other = std::thread::spawn(ids).join().expect("thread");
        let mut all: Vec<[u8; 16]> = ids().into_iter().chain(other).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 4_000);
    }

    #[test]
    fn request_id_sanitizing() {
        assert!(is_sane_request_id(b"abc-123_x.y:z/+=@"));
        assert!(!is_sane_request_id(b""));
        assert!(!is_sane_request_id(b"has space"));
        assert!(!is_sane_request_id(b"<script>"));
        assert!(!is_sane_request_id(&[b'a'; MAX_REQUEST_ID_LEN + 1]));
    }

    /// What [`problem_response`] answers for a panic with `message`.
    fn problem(message: &str, expose_details: bool) -> serde_json::Value {
        let report: PanicReport = serde_json::from_value(serde_json::json!({
            "time": "t", "pid": 1, "message": message, "location": null, "thread": null,
            "backtrace": null, "request": null, "task": null, "rolled_back": [],
            "poisoned": [], "decision": null}))
        .expect("a report");
        let ctx = ResponseContext {
            request_id: "r1",
            report: &report,
            expose_details,
            grpc: false,
        };
        serde_json::from_slice(problem_response(&ctx).body()).expect("JSON")
    }

    #[test]
    fn a_problems_detail_is_the_message_cut_to_a_kib() {
        assert_eq!(problem("boom", true)["detail"], "boom");
        assert!(problem("boom", false).get("detail").is_none());
        let long = format!("{}日本{}", "a".repeat(1020), "b".repeat(5000));
        let detail = problem(&long, true)["detail"]
            .as_str()
            .expect("detail")
            .to_owned();
        assert!(detail.len() <= MAX_PROBLEM_DETAIL, "{} bytes", detail.len());
        let kept = detail.strip_suffix('…').expect("a cut is marked");
        assert_eq!(kept, "a".repeat(1020));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Text that reaches the hard cases: multibyte UTF-8, `%`, quotes, backslashes,
        /// control characters, sometimes after a run of `a`s that puts the next piece at and
        /// around `limit`.
        pub(crate) fn text(limit: usize) -> impl Strategy<Value = String> {
            let piece = prop::sample::select(vec![
                "a", "é", "日本", "🦀", "@", ":", "%", "%4", "%41", "\"", "\\", "/", " ", "\t",
                "\n", "\r", "\0", "\u{7f}", "\u{85}", "\u{2028}", "…",
            ]);
            let pad = prop_oneof![Just(0), 1usize..8, limit.saturating_sub(4)..=limit + 4];
            (pad, prop::collection::vec(piece, 0..10))
                .prop_map(|(pad, pieces)| "a".repeat(pad) + &pieces.concat())
        }

        /// A request id the layer can hold: a client's sane one, or a generated one.
        fn request_id() -> impl Strategy<Value = String> {
            prop_oneof![
                "[A-Za-z0-9._:/+=@-]{1,128}",
                any::<u64>().prop_map(|n| String::from_utf8_lossy(&request_id_text(n)).into()),
            ]
        }

        /// `%XX` decoded; `None` for a `%` not followed by two upper-case hex digits.
        fn percent_decode(s: &str) -> Option<Vec<u8>> {
            let mut out = Vec::new();
            let mut bytes = s.bytes();
            while let Some(b) = bytes.next() {
                if b != b'%' {
                    out.push(b);
                    continue;
                }
                let hex = [bytes.next()?, bytes.next()?];
                if !hex.iter().all(|h| matches!(h, b'0'..=b'9' | b'A'..=b'F')) {
                    return None;
                }
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            Some(out)
        }

        proptest! {
            #![proptest_config(crate::text::proptest_config(512))]

            /// Any panic message: `grpc-message` is there, printable ASCII, valid
            /// percent-encoding that decodes to the id's text, then (only when given) at
            /// most `MAX_GRPC_DETAIL` bytes from the start of the message, `…` if cut.
            #[test]
            fn grpc_message_is_valid_percent_encoding_of_a_bounded_prefix(
                id in request_id(),
                detail in proptest::option::of(text(MAX_GRPC_DETAIL)),
            ) {
                let h = grpc_status(&id, detail.as_deref());
                prop_assert_eq!(h.get("grpc-status").map(HeaderValue::as_bytes), Some(&b"13"[..]));
                let message = h.get("grpc-message").expect("grpc-message");
                let message = message.to_str().expect("printable ASCII");
                let decoded = percent_decode(message).expect("valid percent-encoding");
                let decoded = String::from_utf8(decoded).expect("UTF-8 once decoded");
                let head = format!("Internal Server Error (request {id})");
                let rest = decoded.strip_prefix(&head).expect("starts with the id");
                match &detail {
                    None => prop_assert_eq!(rest, ""),
                    Some(d) => {
                        let shown = rest.strip_prefix(": ").expect("the detail follows");
                        if d.len() <= MAX_GRPC_DETAIL {
                            prop_assert_eq!(shown, d.as_str());
                        } else {
                            let kept = shown.strip_suffix('…').expect("a cut is marked");
                            prop_assert!(d.starts_with(kept), "{kept:?} is not a prefix");
                            // Cut at the last character boundary at or before the limit.
                            prop_assert!((MAX_GRPC_DETAIL - 3..=MAX_GRPC_DETAIL).contains(&kept.len()));
                        }
                    }
                }
            }
        }
    }
}
