//! [`AdminServer`]: `/metrics`, `/status`, `/livez`, `/readyz` and the status page on one
//! address, loopback unless told otherwise; over loopback, only to requests addressed to this
//! machine (a DNS rebinding guard).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::JoinHandle;

use crate::exposition::TEXT_CONTENT_TYPE;
use crate::metrics::{Metrics, CONTENT_TYPE};
use crate::page::render_page;
use crate::status::StatusView;

/// The admin address used when `--admin` is not given.
pub const DEFAULT_ADMIN_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9090);

/// Errors of the admin endpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// `--admin` did not parse.
    #[error("invalid --admin {given:?}: expected off, PORT, HOST:PORT or [IPv6]:PORT")]
    BadAddr {
        /// What was given.
        given: String,
    },
    /// The address could not be bound.
    #[error("cannot bind the admin endpoint on {addr}: {source} (choose another with --admin ADDR, or --admin off)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// Parses `--admin`: `off` (returns `None`), a port alone (bound on `127.0.0.1`),
/// `HOST:PORT` or `[IPv6]:PORT`. Binding all interfaces needs an explicit `0.0.0.0:PORT`.
///
/// ```
/// use unwedge_admin::parse_admin_addr;
///
/// assert_eq!(parse_admin_addr("off").unwrap(), None);
/// assert_eq!(parse_admin_addr("9100").unwrap(), Some("127.0.0.1:9100".parse().unwrap()));
/// assert_eq!(parse_admin_addr("0.0.0.0:9100").unwrap(), Some("0.0.0.0:9100".parse().unwrap()));
/// assert!(parse_admin_addr("localhost:nope").is_err());
/// ```
pub fn parse_admin_addr(s: &str) -> Result<Option<SocketAddr>, AdminError> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("off") || t.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    if let Ok(port) = t.parse::<u16>() {
        return Ok(Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)));
    }
    if let Ok(addr) = t.parse::<SocketAddr>() {
        return Ok(Some(addr));
    }
    if let Some(port) = t
        .strip_prefix("localhost:")
        .and_then(|p| p.parse::<u16>().ok())
    {
        return Ok(Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)));
    }
    Err(AdminError::BadAddr {
        given: s.to_owned(),
    })
}

/// Where the admin server gets the supervisor's current [`StatusView`] from.
#[derive(Clone)]
pub struct StatusSource(Source);

#[derive(Clone)]
enum Source {
    Fn(Arc<dyn Fn(Detail) -> StatusView + Send + Sync>),
    Watch(watch::Receiver<StatusView>),
}

/// What a request needs of the [`StatusView`] (see [`StatusSource::from_fn_detail`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Detail {
    /// All of it: `/status` and the status page.
    Full,
    /// The supervisor and its workers, not the history of restarts and reports (`restarts`
    /// and `reports` may be left empty): `/metrics`, `/livez` and `/readyz`, which a
    /// scraper and a load balancer ask for every few seconds.
    Brief,
}

impl StatusSource {
    /// Calls `f` on every request that needs the status (keep it cheap: clone a snapshot).
    pub fn from_fn(f: impl Fn() -> StatusView + Send + Sync + 'static) -> Self {
        StatusSource(Source::Fn(Arc::new(move |_| f())))
    }

    /// Calls `f` on every request that needs the status, telling it what the request needs:
    /// for [`Detail::Brief`] it need not copy the history of restarts and reports (up to some
    /// megabytes of panic reports, which `/metrics`, `/livez` and `/readyz` never read).
    ///
    /// ```
    /// use unwedge_admin::{Detail, StatusSource, StatusView, SupervisorInfo};
    ///
    /// let source = StatusSource::from_fn_detail(|detail| {
    ///     let mut view = StatusView::new(SupervisorInfo::new("0.1.0", 1));
    ///     if detail == Detail::Full {
    ///         // view.reports = history.reports.clone(); …
    ///     }
    ///     view
    /// });
    /// assert!(source.with_detail(Detail::Brief, |v| v.reports.is_empty()));
    /// ```
    pub fn from_fn_detail(f: impl Fn(Detail) -> StatusView + Send + Sync + 'static) -> Self {
        StatusSource(Source::Fn(Arc::new(f)))
    }

    /// Serves whatever was last published on the channel (read in place, not cloned, for
    /// `/metrics`, `/livez`, `/readyz` and the page).
    pub fn from_watch(rx: watch::Receiver<StatusView>) -> Self {
        StatusSource(Source::Watch(rx))
    }

    /// The current status.
    pub fn get(&self) -> StatusView {
        self.with(StatusView::clone)
    }

    /// Runs `f` on the current status. With a `watch` channel the channel's read lock is held
    /// meanwhile: keep `f` short.
    pub fn with<R>(&self, f: impl FnOnce(&StatusView) -> R) -> R {
        self.with_detail(Detail::Full, f)
    }

    /// Runs `f` on the current status, of which it needs `detail` (with
    /// [`Detail::Brief`], `restarts` and `reports` may be empty). With a `watch` channel
    /// the channel's read lock is held meanwhile: keep `f` short.
    pub fn with_detail<R>(&self, detail: Detail, f: impl FnOnce(&StatusView) -> R) -> R {
        match &self.0 {
            Source::Fn(get) => f(&get(detail)),
            Source::Watch(rx) => f(&rx.borrow()),
        }
    }
}

impl fmt::Debug for StatusSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StatusSource(..)")
    }
}

impl From<watch::Receiver<StatusView>> for StatusSource {
    fn from(rx: watch::Receiver<StatusView>) -> Self {
        StatusSource::from_watch(rx)
    }
}

#[derive(Clone)]
struct AppState {
    status: StatusSource,
    metrics: Arc<Metrics>,
}

/// The admin HTTP endpoint, bound and ready to serve.
///
/// | route | answer |
/// |---|---|
/// | `GET /metrics` | Prometheus: OpenMetrics text when asked (`Accept`), else the text format 0.0.4 |
/// | `GET /status` | the [`StatusView`] as JSON |
/// | `GET /livez` | 200, or 503 once the supervisor gave up or while its event loop is stuck |
/// | `GET /readyz` | 200 while at least one worker is ready, else 503 (also while the loop is stuck) |
/// | `GET /` | the status page (HTML, refreshes every 5 s) |
///
/// Over loopback (a connection to 127.0.0.1 or `[::1]`, also to an endpoint bound to
/// `0.0.0.0`), it answers `421 Misdirected Request` to a request whose `Host` is neither an
/// IP address nor `localhost` (or a name under `.localhost`): a web page whose name an
/// attacker rebinds to 127.0.0.1 (DNS rebinding) cannot have a browser on this machine read
/// the status. A connection to another address (the pod's IP in a container, where Prometheus
/// scrapes it and anything may name it) is answered whatever its `Host`: fence that port.
///
/// ```no_run
/// # async fn f() -> Result<(), unwedge_admin::AdminError> {
/// use std::sync::Arc;
/// use unwedge_admin::{AdminServer, Metrics, StatusSource, StatusView, SupervisorInfo};
///
/// let metrics = Arc::new(Metrics::new("0.1.0"));
/// let source = StatusSource::from_fn(|| StatusView::new(SupervisorInfo::new("0.1.0", std::process::id())));
/// let server = AdminServer::bind(unwedge_admin::DEFAULT_ADMIN_ADDR, source, metrics).await?;
/// println!("admin on http://{}", server.local_addr());
/// let handle = server.spawn();
/// // … later
/// handle.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct AdminServer {
    listener: std::net::TcpListener,
    addr: SocketAddr,
    state: AppStateDebug,
    limits: Limits,
}

/// How long and how much one admin connection may take.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_connections: usize,
    header_timeout: Duration,
    lifetime: Duration,
    max_requests: usize,
}

/// Connections the admin endpoint serves at once by default; more wait in the listen queue
/// until one ends. See [`AdminServer::connection_limits`].
pub const MAX_ADMIN_CONNECTIONS: usize = 256;

/// Longest life of one admin connection by default, whatever it does: then it is asked to
/// close (the response being written may finish within a second) and is closed. A client that
/// pipelines requests and never reads the answers frees its place this way. See
/// [`AdminServer::connection_lifetime`].
pub const ADMIN_CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// Requests one admin connection may make by default; the last answer says
/// `Connection: close`. See [`AdminServer::connection_lifetime`].
pub const ADMIN_MAX_REQUESTS_PER_CONNECTION: usize = 100;

/// Time the response being written gets to finish once a connection's lifetime is over.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Time a connection to the admin endpoint has by default to send a whole request head, from
/// its start and after each response on a kept-alive connection; it is closed otherwise. See
/// [`AdminServer::connection_limits`].
pub const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Time in-flight admin requests get to finish once the server is shut down.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

struct AppStateDebug(AppState);

impl fmt::Debug for AppStateDebug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AppState(..)")
    }
}

/// A non-blocking listening socket on `addr`: `SO_REUSEADDR` (as std's), and for an IPv6
/// address dual-stack whatever `net.ipv6.bindv6only` says, as the supervisor's own sockets
/// are: `--admin [::]:9090` answers on IPv4 too, as its address-overlap check assumes.
fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // As the supervisor's: a kernel that refuses still binds IPv6 (only).
        let _ = socket.set_only_v6(false);
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

impl AdminServer {
    /// Binds `addr` (port 0 picks a free port; see [`local_addr`](Self::local_addr)).
    pub async fn bind(
        addr: SocketAddr,
        status: StatusSource,
        metrics: Arc<Metrics>,
    ) -> Result<Self, AdminError> {
        // A std socket: it is registered with a runtime only where it is served (this task's
        // runtime, or the thread of its own of `spawn_thread`).
        let listener = listen(addr).map_err(|source| AdminError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| AdminError::Bind { addr, source })?;
        Ok(AdminServer {
            listener,
            addr,
            state: AppStateDebug(AppState { status, metrics }),
            limits: Limits {
                max_connections: MAX_ADMIN_CONNECTIONS,
                header_timeout: ADMIN_HEADER_TIMEOUT,
                lifetime: ADMIN_CONNECTION_LIFETIME,
                max_requests: ADMIN_MAX_REQUESTS_PER_CONNECTION,
            },
        })
    }

    /// At most `max_connections` connections at once (more wait in the listen queue), each
    /// closed when it does not send a whole request head within `header_timeout` (counted
    /// from its start, and after each response on a kept-alive one). The supervisor's file
    /// descriptors are shared with its workers' pipes: clients that connect and send nothing,
    /// or trickle a request (slowloris), must not exhaust them when the endpoint is reachable
    /// from other hosts (as in a Kubernetes pod). Defaults: [`MAX_ADMIN_CONNECTIONS`] and
    /// [`ADMIN_HEADER_TIMEOUT`]; zero values are taken as 1 connection and 1 ms.
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use std::time::Duration;
    /// # use unwedge_admin::{AdminServer, Metrics, StatusSource, StatusView, SupervisorInfo};
    /// # async fn demo() -> Result<(), unwedge_admin::AdminError> {
    /// # let status = StatusSource::from_fn(|| StatusView::new(SupervisorInfo::new("0.1.0", 1)));
    /// let server = AdminServer::bind("127.0.0.1:0".parse().unwrap(), status, Arc::new(Metrics::new("0.1.0")))
    ///     .await?
    ///     .connection_limits(64, Duration::from_secs(5));
    /// # let _ = server; Ok(()) }
    /// ```
    pub fn connection_limits(mut self, max_connections: usize, header_timeout: Duration) -> Self {
        self.limits.max_connections = max_connections.max(1);
        self.limits.header_timeout = header_timeout.max(Duration::from_millis(1));
        self
    }

    /// Each connection lives at most `lifetime` and makes at most `max_requests` requests,
    /// whatever it does. Once its lifetime is over it is asked to close, and closed a second
    /// later if the response being written has not gone out by then (a client that pipelines
    /// requests and never reads the answers would otherwise hold its place, one of
    /// [`connection_limits`](Self::connection_limits)'s, for ever); its last allowed request is
    /// answered with `Connection: close`. Defaults: [`ADMIN_CONNECTION_LIFETIME`] and
    /// [`ADMIN_MAX_REQUESTS_PER_CONNECTION`]; zero values are taken as 1 ms and 1 request.
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use std::time::Duration;
    /// # use unwedge_admin::{AdminServer, Metrics, StatusSource, StatusView, SupervisorInfo};
    /// # async fn demo() -> Result<(), unwedge_admin::AdminError> {
    /// # let status = StatusSource::from_fn(|| StatusView::new(SupervisorInfo::new("0.1.0", 1)));
    /// let server = AdminServer::bind("127.0.0.1:0".parse().unwrap(), status, Arc::new(Metrics::new("0.1.0")))
    ///     .await?
    ///     .connection_lifetime(Duration::from_secs(10), 50);
    /// # let _ = server; Ok(()) }
    /// ```
    pub fn connection_lifetime(mut self, lifetime: Duration, max_requests: usize) -> Self {
        self.limits.lifetime = lifetime.max(Duration::from_millis(1));
        self.limits.max_requests = max_requests.max(1);
        self
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The routes, for embedding in another server or for tests with `tower::ServiceExt::oneshot`.
    /// They answer any `Host`: the check an [`AdminServer`] makes depends on the local address
    /// of each connection (loopback or not), which the embedding server knows.
    pub fn router(status: StatusSource, metrics: Arc<Metrics>) -> Router {
        router(AppState { status, metrics })
    }

    /// Serves on the current tokio runtime until the returned handle is shut down or dropped.
    ///
    /// The requests then share the runtime with whatever else it runs: a scraper calling
    /// `/metrics` in a loop takes turns with it. A supervisor serves it on
    /// [`spawn_thread`](Self::spawn_thread) instead.
    pub fn spawn(self) -> AdminHandle {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let app = served_app(self.state.0);
        let (listener, limits) = (self.listener, self.limits);
        let task = tokio::spawn(async move {
            match TcpListener::from_std(listener) {
                Ok(l) => serve(l, app, limits, stop_rx).await,
                Err(e) => tracing::error!(error = %e, "admin endpoint: cannot serve its socket"),
            }
        });
        AdminHandle {
            addr: self.addr,
            stop: Some(stop_tx),
            running: Some(Running::Task(task)),
        }
    }

    /// Serves on a thread of its own (`unwedge-admin`, with a single-threaded tokio runtime)
    /// until the returned handle is shut down or dropped: however hard the endpoint is scraped,
    /// and however long the status source takes (it measures the workers' memory, reads
    /// `/proc`), the caller's runtime does not wait for it. The supervisor's event loop, which
    /// reaps and restarts workers, must not.
    ///
    /// Returns once the thread serves (or could not start: no thread or runtime could be made,
    /// the socket could not be registered).
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    /// use unwedge_admin::{AdminServer, Metrics, StatusSource, StatusView, SupervisorInfo};
    ///
    /// let metrics = Arc::new(Metrics::new("0.1.0"));
    /// let source = StatusSource::from_fn(|| StatusView::new(SupervisorInfo::new("0.1.0", std::process::id())));
    /// let server = AdminServer::bind("127.0.0.1:0".parse()?, source, metrics).await?;
    /// let handle = server.spawn_thread()?;
    /// // … the caller's runtime goes on with its own work; later:
    /// handle.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn spawn_thread(self) -> std::io::Result<AdminHandle> {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (started_tx, started_rx) = std::sync::mpsc::sync_channel::<std::io::Result<()>>(1);
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let app = served_app(self.state.0);
        let (listener, limits) = (self.listener, self.limits);
        std::thread::Builder::new()
            .name("unwedge-admin".into())
            .spawn(move || {
                // Dropped last, when the runtime is gone: `shutdown` waits for it.
                let _done = done_tx;
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(l) => {
                            let _ = started_tx.send(Ok(()));
                            serve(l, app, limits, stop_rx).await;
                        }
                        Err(e) => {
                            let _ = started_tx.send(Err(e));
                        }
                    }
                });
            })?;
        // Microseconds: a runtime is built and the socket registered.
        started_rx.recv().unwrap_or_else(|_| {
            Err(std::io::Error::other(
                "the admin thread ended before it served",
            ))
        })?;
        Ok(AdminHandle {
            addr: self.addr,
            stop: Some(stop_tx),
            running: Some(Running::Thread(done_rx)),
        })
    }
}

/// A running [`AdminServer`]; dropping it stops the server.
#[derive(Debug)]
pub struct AdminHandle {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    running: Option<Running>,
}

/// Where an [`AdminHandle`]'s server runs.
#[derive(Debug)]
enum Running {
    /// A task of the runtime that called [`AdminServer::spawn`].
    Task(JoinHandle<()>),
    /// Its own thread ([`AdminServer::spawn_thread`]): the channel closes when it ended.
    Thread(oneshot::Receiver<()>),
}

impl AdminHandle {
    /// The address served.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets in-flight requests finish, and waits for the server task.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.running.take() {
            Some(Running::Task(task)) => {
                let _ = task.await;
            }
            Some(Running::Thread(done)) => {
                let _ = done.await;
            }
            None => {}
        }
    }
}

impl Drop for AdminHandle {
    /// Stops the server without waiting: a task is aborted, a thread told to finish (its
    /// stop channel closes) and left to end by itself.
    fn drop(&mut self) {
        if let Some(Running::Task(task)) = self.running.take() {
            task.abort();
        }
    }
}

/// Serves `app` on `listener` over HTTP/1.1 until `stop`: at most `max_connections` at once,
/// each closed when a request head takes longer than `header_timeout` (hyper's timer starts
/// when it waits for a head: at the start and between kept-alive requests), when its
/// `lifetime` is over, or after `max_requests` answers.
async fn serve(listener: TcpListener, app: Router, limits: Limits, stop: oneshot::Receiver<()>) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let max = limits.max_connections;
    let permits = Arc::new(Semaphore::new(max));
    // Tells every connection to finish: the server is shutting down.
    let (closing_tx, closing_rx) = watch::channel(false);
    let mut stop = std::pin::pin!(stop);
    let mut error_logged = false;
    loop {
        // A permit first: beyond `max`, connections wait in the kernel's queue, not as open
        // descriptors of this process.
        let permit = tokio::select! {
            _ = stop.as_mut() => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = stop.as_mut() => break,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                error_logged = false;
                stream
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                if !error_logged {
                    tracing::warn!(error = %e, "admin endpoint: accept failed; retrying");
                    error_logged = true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = Counted {
            inner: TowerToHyperService::new(app.clone()),
            served: AtomicUsize::new(0),
            max: limits.max_requests,
            // Unknown: guarded, as over loopback.
            loopback: stream
                .local_addr()
                .map_or(true, |a| a.ip().to_canonical().is_loopback()),
        };
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let mut closing = closing_rx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut conn = std::pin::pin!(conn);
            let grace = tokio::select! {
                ended = conn.as_mut() => {
                    if let Err(e) = ended {
                        tracing::debug!(error = %e, "admin connection ended with an error");
                    }
                    return;
                }
                _ = tokio::time::sleep(limits.lifetime) => CLOSE_GRACE,
                _ = closing.wait_for(|c| *c) => SHUTDOWN_GRACE,
            };
            // Idle: closes at once; answering: finishes that answer, within the grace.
            conn.as_mut().graceful_shutdown();
            if tokio::time::timeout(grace, conn).await.is_err() {
                tracing::debug!("admin connection closed: its answer was not read in time");
            }
        });
    }
    drop(listener);
    // Idle connections close at once, requests in flight get a bounded time to finish: every
    // permit back means every connection is gone.
    let _ = closing_tx.send(true);
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(SHUTDOWN_GRACE + CLOSE_GRACE, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::debug!("admin endpoint: connections still open after the shutdown grace");
    }
}

/// The app, counting the requests of one connection: the last one allowed is answered with
/// `Connection: close`, which makes hyper close the connection after it. Each request of a
/// connection made over loopback carries [`OverLoopback`].
struct Counted {
    inner: TowerToHyperService<Router>,
    served: AtomicUsize,
    max: usize,
    loopback: bool,
}

/// A request's extension: its connection was made to a loopback address (see
/// [`loopback_host_only`]).
#[derive(Clone, Copy)]
struct OverLoopback;

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for Counted {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response, Self::Error>> + Send>>;

    fn call(&self, mut req: http::Request<hyper::body::Incoming>) -> Self::Future {
        let last = self.served.fetch_add(1, Ordering::Relaxed) + 1 >= self.max;
        if self.loopback {
            req.extensions_mut().insert(OverLoopback);
        }
        let answer = self.inner.call(req);
        Box::pin(async move {
            let mut resp = answer.await?;
            if last {
                resp.headers_mut().insert(
                    header::CONNECTION,
                    header::HeaderValue::from_static("close"),
                );
            }
            Ok(resp)
        })
    }
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// [`router`] as a server serves it: over loopback, only to requests addressed to this
/// machine ([`loopback_host_only`]).
fn served_app(state: AppState) -> Router {
    router(state).layer(axum::middleware::from_fn(loopback_host_only))
}

/// Over loopback ([`OverLoopback`]), answers `421 Misdirected Request` to a request with a
/// `Host` that [`names_this_machine`] refuses. A page on `rebind.attacker.example` whose name
/// is made to resolve to 127.0.0.1 reaches the admin from the operator's browser (bound to
/// 127.0.0.1, or to `0.0.0.0`, which takes 127.0.0.1 too), but its requests still say
/// `Host: rebind.attacker.example`. A request without `Host` (HTTP/1.0) is answered.
async fn loopback_host_only(req: Request, next: Next) -> Response {
    let hosts = req.headers().get_all(header::HOST);
    if req.extensions().get::<OverLoopback>().is_none()
        || hosts
            .iter()
            .all(|h| h.to_str().is_ok_and(names_this_machine))
    {
        return next.run(req).await;
    }
    (
        StatusCode::MISDIRECTED_REQUEST,
        [(header::CACHE_CONTROL, "no-store")],
        "misdirected request: over loopback this admin endpoint answers only requests for an IP \
         address or localhost (a guard against DNS rebinding)\n",
    )
        .into_response()
}

/// Whether a `Host` header's value can only be this machine's, as a browser here would send
/// it: an IP address (`127.0.0.1`, `[::1]`), `localhost` or a name under `.localhost` (which
/// RFC 6761 reserves for loopback), in any case, with or without a port. Any other name may be
/// one an attacker controls the DNS of.
fn names_this_machine(host: &str) -> bool {
    let is_port = |p: &str| p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
    if let Some(bracketed) = host.strip_prefix('[') {
        let Some((v6, rest)) = bracketed.split_once(']') else {
            return false;
        };
        let port_ok = rest.is_empty() || rest.strip_prefix(':').is_some_and(is_port);
        return port_ok && v6.parse::<Ipv6Addr>().is_ok();
    }
    // No port, or an empty one (`localhost:`), is valid in a URL's authority.
    let (name, port) = host.rsplit_once(':').unwrap_or((host, ""));
    let name = name.to_ascii_lowercase();
    is_port(port)
        && (name.parse::<Ipv4Addr>().is_ok()
            || name == "localhost"
            || name
                .strip_suffix(".localhost")
                .is_some_and(|sub| !sub.is_empty() && !sub.ends_with('.')))
}

/// Never cached by a browser or a proxy, never sniffed into another type: the status holds
/// panic messages and request paths.
const PRIVATE: [(header::HeaderName, &str); 2] = [
    (header::CACHE_CONTROL, "no-store"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
];

/// OpenMetrics when the scraper asks for it (Prometheus does), else the Prometheus text format.
async fn metrics(State(s): State<AppState>, headers: header::HeaderMap) -> Response {
    s.status
        .with_detail(Detail::Brief, |view| s.metrics.observe_status(view));
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (kind, body) = match crate::exposition::wants_openmetrics(accept) {
        true => (CONTENT_TYPE, s.metrics.encode()),
        false => (TEXT_CONTENT_TYPE, s.metrics.encode_text()),
    };
    (
        PRIVATE,
        [(header::CONTENT_TYPE, kind), (header::VARY, "accept")],
        body,
    )
        .into_response()
}

async fn status(State(s): State<AppState>) -> Response {
    let body = s
        .status
        .with(serde_json::to_vec)
        .expect("a StatusView always serializes");
    (PRIVATE, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// What `/livez` and `/readyz` say of a stuck event loop: the workers may be gone by now, and
/// nothing would replace them.
fn stuck(age: f64) -> (StatusCode, String) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "the supervisor's event loop has not run for {age:.1}s: it restarts no worker and \
             detects no hang\n"
        ),
    )
}

async fn livez(State(s): State<AppState>) -> (StatusCode, String) {
    let (gave_up, reason, stuck_for) = s.status.with_detail(Detail::Brief, |v| {
        (
            v.supervisor.gave_up,
            v.supervisor.gave_up_reason.clone(),
            v.supervisor.stuck_for(),
        )
    });
    match (gave_up, reason, stuck_for) {
        (true, Some(reason), _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("gave up: {reason}\n"),
        ),
        (true, None, _) => (StatusCode::SERVICE_UNAVAILABLE, "gave up\n".into()),
        (false, _, Some(age)) => stuck(age),
        (false, _, None) => (StatusCode::OK, "ok\n".into()),
    }
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, String) {
    let (ready, total, stuck_for) = s.status.with_detail(Detail::Brief, |v| {
        (v.ready_workers(), v.workers.len(), v.supervisor.stuck_for())
    });
    if let Some(age) = stuck_for {
        return stuck(age);
    }
    let msg = format!("{ready} of {total} workers ready\n");
    if ready > 0 {
        (StatusCode::OK, msg)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, msg)
    }
}

async fn page(State(s): State<AppState>) -> impl IntoResponse {
    (
        PRIVATE,
        // Defence in depth: even an escaping bug could not load or run anything.
        [(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'",
        )],
        Html(s.status.with(render_page)),
    )
}

#[cfg(test)]
mod tests {
    use super::names_this_machine;

    #[test]
    fn only_addresses_and_localhost_name_this_machine() {
        for ok in [
            "127.0.0.1",
            "127.0.0.1:9090",
            "10.0.0.7:9090",
            "[::1]",
            "[::1]:9090",
            "[::ffff:127.0.0.1]:1",
            "localhost",
            "LocalHost:9090",
            "app.localhost:9090",
            "localhost:",
        ] {
            assert!(names_this_machine(ok), "{ok}");
        }
        for bad in [
            "rebind.attacker.example",
            "rebind.attacker.example:9090",
            "localhost.attacker.example",
            "127.0.0.1.attacker.example",
            "attacker.example:127.0.0.1",
            "localhost.",
            ".localhost",
            "a..localhost",
            "127.0.0.1:99999x",
            "127.0.0.1:1:2",
            "::1",
            "[::1",
            "[::1]x",
            "[evil]:1",
            "",
        ] {
            assert!(!names_this_machine(bad), "{bad}");
        }
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// A name anyone may register (labels, the last of them not `localhost`; or
        /// `localhost` followed by more labels), in any case, with or without a port, is
        /// refused: a page on it whose DNS answers 127.0.0.1 must not read the admin endpoint.
        #[test]
        fn a_name_anyone_can_register_is_refused(
            labels in proptest::collection::vec("[a-zA-Z0-9-]{1,12}", 1..4),
            tld in "[a-zA-Z][a-zA-Z0-9-]{0,8}",
            localhost_first in any::<bool>(),
            port in proptest::option::of("(:[0-9]{0,5})|(:)"),
        ) {
            prop_assume!(!tld.eq_ignore_ascii_case("localhost"));
            let mut name = labels.join(".");
            if localhost_first {
                name = format!("localhost.{name}");
            }
            let host = format!("{name}.{tld}{}", port.unwrap_or_default());
            prop_assert!(!names_this_machine(&host), "{host}");
        }
    }
}
