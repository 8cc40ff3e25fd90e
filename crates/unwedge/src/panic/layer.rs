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
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use pin_project_lite::pin_project;
use serde::Serialize;
use tower::{Layer, Service};

use super::context::{self, Scope};
use super::policy::{decide, Budget, Policy};
use super::report::{Action, PanicReport, RequestInfo};
use super::sink::{emit, ReportSink};

/// The error type of the boxed response body: the inner body's error, or [`BodyPanicked`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body [`PanicService`] answers with.
pub type PanicBody = UnsyncBoxBody<Bytes, BoxError>;

/// The request id header, read from requests and echoed on every response.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest `x-request-id` taken from a client; longer ones are replaced by a generated id.
pub const MAX_REQUEST_ID_LEN: usize = 128;

type Responder = Arc<dyn Fn(&ResponseContext<'_>) -> Response<Bytes> + Send + Sync>;

#[derive(Clone)]
struct Config {
    policy: Policy,
    expose_details: bool,
    capture_headers: bool,
    budget: Arc<Budget>,
    sinks: Vec<Arc<dyn ReportSink>>,
    responder: Option<Responder>,
}

/// Tower middleware that catches a handler's panic, answers `500`, records a
/// [`PanicReport`] and applies a [`Policy`].
///
/// - Catches panics in the inner service's `call`, while its response future is polled, and
///   while the response body is polled (the body then ends with an error: the status line is
///   already sent, so the client sees a truncated response).
/// - Answers `500` with `content-type: application/problem+json` and
///   `{"type":"about:blank","title":"Internal Server Error","status":500,"request_id":"…"}`.
///   The panic message is added as `"detail"` only with [`expose_details(true)`](Self::expose_details);
///   [`respond_with`](Self::respond_with) replaces the answer entirely.
/// - Every response carries `x-request-id`: the client's, when it sent a sane one (at most
///   [`MAX_REQUEST_ID_LEN`] bytes of `A-Z a-z 0-9 - _ . : / + = @`), a generated one otherwise.
/// - Every report goes to a `tracing` event (target `unwedge::panic`, level error; the
///   backtrace at debug), to this layer's [sinks](Self::sink), to the
///   [process-wide sinks](crate::panic::add_sink) and to [`health`](crate::health).
/// - [`Policy::Crash`], or [`Policy::Auto`] when a [`Mutex`](crate::Mutex) was poisoned or the
///   [budget](Self::budget) is spent, calls [`request_crash`](crate::health::request_crash):
///   the panicking request still gets its 500, and the process turns Tainted.
///   [`serve`](crate::serve) then drains and exits with code 70; without `serve()`, await
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
            .field("capture_headers", &self.config.capture_headers)
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
        Self::with_policy(Policy::Auto)
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
                capture_headers: true,
                budget: Arc::new(Budget::new(5, Duration::from_secs(10))),
                sinks: Vec::new(),
                responder: None,
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// The policy this layer applies.
    pub fn policy(&self) -> Policy {
        self.config.policy
    }

    /// Whether the panic message goes to the client as the problem's `"detail"` (default:
    /// false; turn it on only where clients may see internals, e.g. in development).
    ///
    /// ```
    /// let dev = unwedge::PanicLayer::new().expose_details(cfg!(debug_assertions));
    /// # let _ = dev;
    /// ```
    pub fn expose_details(self, expose: bool) -> Self {
        self.edit(|c| c.expose_details = expose)
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
    pub fn sink(self, sink: Arc<dyn ReportSink>) -> Self {
        self.edit(|c| c.sinks.push(sink))
    }

    /// Whether reports include the request headers (default: true; sensitive values are
    /// always redacted). Capturing clones the header map for every request; turn it off
    /// when that matters more than the headers of a rare panic.
    pub fn capture_headers(self, capture: bool) -> Self {
        self.edit(|c| c.capture_headers = capture)
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
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'static str,
    status: u16,
    request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

/// The default answer to a panic: `500`, `application/problem+json` (RFC 9457), with
/// `"detail"` (the panic message) only when `ctx.expose_details`. Handy inside a custom
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
        detail: ctx.expose_details.then_some(ctx.report.message.as_str()),
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

/// The service [`PanicLayer`] wraps around an inner service. See [`PanicLayer`].
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
    type Response = Response<PanicBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let mut ctx = RequestCtx::new(&self.config, &req);
        let inner = &mut self.inner;
        let called = context::with_scope(&ctx.scope, || {
            catch_unwind(AssertUnwindSafe(move || inner.call(req)))
        });
        match called {
            Ok(fut) => ResponseFuture {
                state: State::Polling { fut },
                ctx: Some(ctx),
            },
            Err(payload) => ResponseFuture {
                state: State::Panicked {
                    res: Some(ctx.panic_response(payload)),
                },
                ctx: None,
            },
        }
    }
}

pin_project! {
    /// The response future of [`PanicService`].
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
        ctx: Option<RequestCtx>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Polling { #[pin] fut: F },
        Panicked { res: Option<Response<PanicBody>> },
        Done,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Output = Result<Response<PanicBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        match this.state.as_mut().project() {
            StateProj::Polling { fut } => {
                let ctx = this
                    .ctx
                    .as_ref()
                    .expect("ResponseFuture polled after completion");
                let polled = context::with_scope(&ctx.scope, || {
                    catch_unwind(AssertUnwindSafe(|| fut.poll(cx)))
                });
                match polled {
                    Ok(Poll::Pending) => Poll::Pending,
                    Ok(Poll::Ready(result)) => {
                        this.state.set(State::Done);
                        let ctx = this.ctx.take().expect("checked above");
                        Poll::Ready(result.map(|res| ctx.finish(res)))
                    }
                    Err(payload) => {
                        let mut ctx = this.ctx.take().expect("checked above");
                        // Report first: dropping the future must not overwrite the capture.
                        let res = ctx.panic_response(payload);
                        let mut state = this.state;
                        let dropped = context::with_scope(&ctx.scope, || {
                            catch_unwind(AssertUnwindSafe(|| state.set(State::Done)))
                        });
                        if dropped.is_err() {
                            // A panicking `Drop`: leave no stale capture for the next panic.
                            let _ = context::take();
                        }
                        Poll::Ready(Ok(res))
                    }
                }
            }
            StateProj::Panicked { res } => {
                let res = res.take().expect("ResponseFuture polled after completion");
                this.state.set(State::Done);
                Poll::Ready(Ok(res))
            }
            StateProj::Done => panic!("ResponseFuture polled after completion"),
        }
    }
}

/// What the layer keeps of a request so that it can report a panic after the request itself
/// has moved into the inner service. Method, path and id live in one string, the scope's
/// label `METHOD /path (request ID)`: one allocation per request instead of four.
struct RequestCtx {
    config: Arc<Config>,
    scope: Arc<Scope>,
    /// `label[..method_end]` is the method.
    method_end: usize,
    /// `label[method_end + 1..path_end]` is the path.
    path_end: usize,
    /// The client's own id, echoed as it came; `None` when the id was generated (or taken).
    echo: Option<HeaderValue>,
    /// Boxed: the context is moved around with every response; most requests never panic.
    headers: Option<Box<HeaderMap>>,
    #[cfg(feature = "axum")]
    matched: Option<axum::extract::MatchedPath>,
}

const ID_PREFIX: &str = " (request ";

impl RequestCtx {
    fn new<B>(config: &Arc<Config>, req: &Request<B>) -> Self {
        let echo = req
            .headers()
            .get(X_REQUEST_ID)
            .filter(|v| is_sane_request_id(v.as_bytes()))
            .cloned();
        let generated;
        let id = match &echo {
            // Sane ids are ASCII.
            Some(v) => v.to_str().unwrap_or(""),
            None => {
                generated = generate_request_id();
                std::str::from_utf8(&generated).expect("hex digits")
            }
        };
        let (method, path) = (req.method().as_str(), req.uri().path());
        let label = concat(&[method, " ", path, ID_PREFIX, id, ")"]);
        RequestCtx {
            config: config.clone(),
            scope: Scope::new(label),
            method_end: method.len(),
            path_end: method.len() + 1 + path.len(),
            echo,
            headers: (config.capture_headers && !req.headers().is_empty())
                .then(|| Box::new(req.headers().clone())),
            #[cfg(feature = "axum")]
            matched: req
                .extensions()
                .get::<axum::extract::MatchedPath>()
                .cloned(),
        }
    }

    fn method(&self) -> &str {
        &self.scope.label[..self.method_end]
    }

    fn path(&self) -> &str {
        &self.scope.label[self.method_end + 1..self.path_end]
    }

    fn request_id(&self) -> &str {
        let label = &self.scope.label;
        &label[self.path_end + ID_PREFIX.len()..label.len() - 1]
    }

    /// The `x-request-id` response header value.
    fn id_header(&mut self) -> HeaderValue {
        self.echo.take().unwrap_or_else(|| {
            HeaderValue::from_str(self.request_id()).expect("request ids are valid header values")
        })
    }

    /// `METHOD /route`: axum's matched route when there is one (bounded cardinality), the
    /// path otherwise.
    fn route(&self) -> String {
        #[cfg(feature = "axum")]
        if let Some(m) = &self.matched {
            return format!("{} {}", self.method(), m.as_str());
        }
        format!("{} {}", self.method(), self.path())
    }

    fn finish<B>(mut self, res: Response<B>) -> Response<PanicBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (mut parts, body) = res.into_parts();
        parts.headers.insert(X_REQUEST_ID, self.id_header());
        let body = CatchBody {
            inner: body,
            ctx: Some(self),
        };
        Response::from_parts(parts, UnsyncBoxBody::new(body))
    }

    /// Reports the panic just caught on this thread and applies the policy.
    fn report(&self, payload: Box<dyn Any + Send>) -> PanicReport {
        let captured = context::take();
        if !captured
            .scope
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s, &self.scope))
        {
            // Only possible when the hook did not see this panic: the capture is a stub.
            tracing::debug!(target: "unwedge::panic", request_id = self.request_id(), "panic capture from another scope");
        }
        let message = context::payload_message(&*payload);
        // Dropping a payload runs arbitrary code; it must not unwind out of the layer.
        let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
        let mut report = PanicReport::from_captured(captured);
        if report.message != message {
            // The hook did not see this panic (not installed, or replaced): trust the payload.
            report.message = message;
        }
        let mut req = Request::new(());
        *req.method_mut() = Method::from_bytes(self.method().as_bytes()).unwrap_or_default();
        *req.uri_mut() = Uri::try_from(self.path()).unwrap_or_default();
        if let Some(headers) = &self.headers {
            *req.headers_mut() = (**headers).clone();
        }
        report.request = Some(RequestInfo::from_request(&req, self.request_id()));
        let decision = decide(
            self.config.policy,
            &report.rolled_back,
            &report.poisoned,
            Some(&self.config.budget),
        );
        let crash = (decision.action == Action::Crash)
            .then(|| format!("panic in {}: {}", self.route(), decision.reason));
        report.decision = Some(decision);
        emit(&report, &self.config.sinks, &self.route());
        if let Some(reason) = crash {
            crate::health::request_crash(reason);
        }
        report
    }

    fn panic_response(&mut self, payload: Box<dyn Any + Send>) -> Response<PanicBody> {
        let report = self.report(payload);
        let rc = ResponseContext {
            request_id: self.request_id(),
            report: &report,
            expose_details: self.config.expose_details,
        };
        let res = match &self.config.responder {
            Some(f) => {
                catch_unwind(AssertUnwindSafe(|| f(&rc))).unwrap_or_else(|_| problem_response(&rc))
            }
            None => problem_response(&rc),
        };
        let (mut parts, body) = res.into_parts();
        parts.headers.insert(X_REQUEST_ID, self.id_header());
        let body = Full::new(body).map_err(|never| match never {});
        Response::from_parts(parts, UnsyncBoxBody::new(body))
    }
}

/// Concatenates into an `Arc<str>` with one allocation (through a stack buffer when short).
fn concat(parts: &[&str]) -> Arc<str> {
    const STACK: usize = 192;
    let total: usize = parts.iter().map(|p| p.len()).sum();
    if total > STACK {
        return Arc::from(parts.concat());
    }
    let mut buf = [0u8; STACK];
    let mut n = 0;
    for p in parts {
        buf[n..n + p.len()].copy_from_slice(p.as_bytes());
        n += p.len();
    }
    Arc::from(std::str::from_utf8(&buf[..n]).expect("str slices concatenate to UTF-8"))
}

fn is_sane_request_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_LEN
        && id.iter().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'+' | b'=' | b'@')
        })
}

/// 16 hex digits: a per-process random seed mixed with a counter (unique within the process,
/// unpredictable across processes).
fn generate_request_id() -> [u8; 16] {
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // splitmix64: a bijection, so distinct counters give distinct ids.
    let mut z = seed.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 16];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = HEX[((z >> (60 - 4 * i)) & 0xf) as usize];
    }
    buf
}

/// The error a response body ends with when polling it panicked.
#[derive(Debug, Clone)]
pub struct BodyPanicked {
    request_id: String,
}

impl BodyPanicked {
    /// The id of the request whose response body panicked.
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
    struct CatchBody<B> {
        #[pin]
        inner: B,
        // None once the body has panicked: it is never polled again.
        ctx: Option<RequestCtx>,
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
        let this = self.project();
        let Some(ctx) = this.ctx.as_ref() else {
            return Poll::Ready(None);
        };
        let inner = this.inner;
        let polled = context::with_scope(&ctx.scope, || {
            catch_unwind(AssertUnwindSafe(|| inner.poll_frame(cx)))
        });
        match polled {
            Ok(Poll::Ready(Some(Err(e)))) => Poll::Ready(Some(Err(e.into()))),
            Ok(Poll::Ready(Some(Ok(frame)))) => Poll::Ready(Some(Ok(frame))),
            Ok(Poll::Ready(None)) => Poll::Ready(None),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => {
                let ctx = this.ctx.take().expect("checked above");
                ctx.report(payload);
                Poll::Ready(Some(Err(Box::new(BodyPanicked {
                    request_id: ctx.request_id().to_owned(),
                }))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ctx.is_none()
            || catch_unwind(AssertUnwindSafe(|| self.inner.is_end_stream())).unwrap_or(false)
    }

    fn size_hint(&self) -> SizeHint {
        if self.ctx.is_none() {
            return SizeHint::with_exact(0);
        }
        catch_unwind(AssertUnwindSafe(|| self.inner.size_hint())).unwrap_or_default()
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
    fn request_id_sanitizing() {
        assert!(is_sane_request_id(b"abc-123_x.y:z/+=@"));
        assert!(!is_sane_request_id(b""));
        assert!(!is_sane_request_id(b"has space"));
        assert!(!is_sane_request_id(b"<script>"));
        assert!(!is_sane_request_id(&[b'a'; MAX_REQUEST_ID_LEN + 1]));
    }
}
