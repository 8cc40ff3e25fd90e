//! [`serve`]: the worker runtime. Runs any tower `Service` (an axum `Router` as it is) on
//! hyper 1, HTTP/1.1 and HTTP/2, and speaks the protocols that systemd and the unwedge
//! supervisor use.
//!
//! ```no_run
//! use axum::{routing::get, Router};
//!
//! #[tokio::main]
//! async fn main() -> unwedge::serve::Outcome {
//!     let app = Router::new().route("/", get(|| async { "hello" }));
//!     unwedge::serve(app).await
//! }
//! ```
//!
//! # What it does
//!
//! - **Listeners**: the sockets inherited through `LISTEN_FDS` / `LISTEN_PID` /
//!   `LISTEN_FDNAMES` (systemd socket activation, the unwedge supervisor); else the
//!   comma-separated addresses of `UNWEDGE_LISTEN` (`127.0.0.1:8080`, `unix:/run/app.sock`);
//!   else the builder's [`Server::bind`] addresses; else `127.0.0.1:8080`. A `LISTEN_PID`
//!   naming another process means the sockets are not ours: they are ignored.
//! - **Middleware**: [`PanicLayer`](crate::PanicLayer) ([`Server::panic_layer`] configures
//!   it, [`Server::without_panic_layer`] turns it off; its policy: `UNWEDGE_POLICY`, else
//!   [`Server::policy`], else the one given to the layer's `PanicLayer::with_policy`, else the
//!   process-wide one), and `GET /livez`,
//!   `GET /readyz` answered before the app ([`Server::without_health_routes`]); the
//!   [`watchdog`] tracks every other request (a probe answered is no progress of the app:
//!   probes must not hide a hang).
//! - **Request bodies**: the app gets `Request<`[`Incoming`]`>`, hyper's body watched, so that
//!   a handler waiting for its client's body is not taken for a hung one (an axum `Router`
//!   takes it as it is; a hyper-style service names [`Incoming`] instead of hyper's).
//! - **sd_notify** over `NOTIFY_SOCKET`: `READY=1` once accepting, `STATUS=` on every health
//!   change, `WATCHDOG=1` with `READY=1` and then every half of `WATCHDOG_USEC` only while
//!   Healthy or Draining,
//!   `STOPPING=1`, and each panic report as `UNWEDGE_REPORT=<json>` ([`encode_report`]). A
//!   socket that vanished is logged once; serving continues.
//! - **Graceful shutdown** on SIGTERM or SIGINT: stop accepting, finish the requests in flight
//!   (a connection accepted but not read yet gets 500 ms for its request, an idle keep-alive
//!   one 1 s for one more, answered with `Connection: close`) within the shutdown timeout (default 30 s, [`Server::shutdown_timeout`],
//!   `UNWEDGE_SHUTDOWN_TIMEOUT`), return [`Outcome::Stopped`] (exit code 0). A second signal
//!   ends the drain at once. A request that blocks its thread cannot stop the stop: if one is
//!   still inside one poll 2 s after `serve()` returned (dropping the runtime would wait for it
//!   for ever), or if the runtime's drop has waited 2 s for `spawn_blocking` work of a request
//!   abandoned at the deadline, or if `serve()` cannot even run (every runtime thread blocked)
//!   one second past the shutdown timeout, the process exits with 0 from a thread of its own. Dropping the
//!   `serve()` future instead cancels it, without a drain ([`Server::serve`] says what ends
//!   with it).
//! - **Graceful crash** when the panic policy asks for one
//!   ([`health::request_crash`]): close this process's listeners
//!   at once (sibling workers sharing the socket take the new connections), finish the
//!   requests in flight within the crash timeout (default 5 s, [`Server::crash_timeout`],
//!   `UNWEDGE_CRASH_TIMEOUT`), then **exit the process with code 70** (`EX_SOFTWARE`). It says
//!   `STATUS=tainted: <reason>` then `STOPPING=1`; a SIGTERM during its drain lets the drain
//!   go on, a second signal ends it.
//! - **State dump on SIGQUIT**, the signal `unwedge run` sends a worker it found hung before
//!   it kills it: from its own thread (a stalled runtime cannot stop it), the health state and
//!   reason, the requests in flight, the poll blocking a runtime thread and the oldest
//!   request go to stderr as `unwedge dump: …` lines; then the process dies of SIGQUIT, as
//!   without the handler (also after `serve()` returned: the handler stays installed).
//! - **Idle and slow connections are closed**: a connection that delivers no request for a
//!   whole idle period (default 30 s, [`Server::idle_timeout`], `UNWEDGE_IDLE_TIMEOUT`) is shut
//!   down gracefully (at once when idle, after its request in progress otherwise), so clients
//!   that connect and send nothing, trickle a request head (slowloris) or keep idle keep-alive
//!   connections hold them for one to two periods, not forever; an HTTP/1 request body whose
//!   client sends nothing for a period while the handler waits for it ends with an error
//!   ([`BodyError`]), so a stalled upload does not hold its request for ever either.
//! - **Open-file limit**: the soft `RLIMIT_NOFILE` is raised to the hard one (at most 2²⁰) at start, as Go's
//!   runtime does ([`Server::raise_fd_limit`]): the usual 1024 is too few connections.
//!
//! # How the process exits
//!
//! `serve()` returns an [`Outcome`], which is a [`Termination`]: return it from `main`.
//! A graceful shutdown returns [`Outcome::Stopped`] (exit 0); bad configuration returns
//! [`Outcome::Failed`] (the error printed on stderr, exit 2 for a malformed environment
//! variable or [`Server::bind`] address, 1 for a socket that cannot be bound). A graceful crash does **not** return: after
//! draining it calls [`std::process::exit`]`(70)` itself, because a tainted process must not
//! go on and a thread blocked forever would keep the tokio runtime from shutting down.
//! [`Server::exit_on_crash`]`(false)` returns [`Outcome::Crashed`] instead (exit code 70 when
//! returned from `main`).
//!
//! **Buffered logs.** [`std::process::exit`] runs no destructors: a log writer that buffers
//! and flushes when its guard drops (`tracing_appender::non_blocking`'s `WorkerGuard`, a
//! `BufWriter`, an OpenTelemetry exporter) loses its last lines, the panic report among
//! them, when `serve()` exits the process itself. Either register the flush with
//! [`Server::before_exit`] (run before every exit `serve()` makes: crash, `abort_when_wedged`,
//! the backstops), or use [`Server::exit_on_crash`]`(false)` and return the [`Outcome`] from
//! `main`, so that the guard drops first:
//!
//! ```no_run
//! # async fn run() -> unwedge::serve::Outcome {
//! # let app = axum::Router::new();
//! let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
//! tracing_subscriber::fmt().with_writer(writer).init();
//! unwedge::Server::new()
//!     .before_exit(move || drop(guard)) // flushes the queued lines
//!     .serve(app)
//!     .await
//! # }
//! ```
//!
//! # Environment
//!
//! The environment overrides the builder, the builder overrides the defaults. Every malformed
//! value is an error naming the variable and the value ([`Outcome::Failed`], exit code 2).
//!
//! | variable | meaning |
//! | --- | --- |
//! | `LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES` | inherited sockets (fd 3, 4, …) |
//! | `UNWEDGE_LISTEN` | addresses to bind when no socket is inherited |
//! | `NOTIFY_SOCKET` | the supervisor's notify socket (an absolute path) |
//! | `WATCHDOG_USEC`, `WATCHDOG_PID` | heartbeat interval expected by the supervisor |
//! | `UNWEDGE_POLICY` | `recover`, `crash` or `auto` |
//! | `UNWEDGE_SHUTDOWN_TIMEOUT`, `UNWEDGE_CRASH_TIMEOUT` | drain deadlines (`30s`, `500ms`, or seconds); `0` is not off but a zero-length drain: the requests in flight are abandoned at once |
//! | `UNWEDGE_STALL_LIMIT` | runtime-stall and blocked-poll limit of the [`watchdog`] (default 2 s); `0` turns both checks off |
//! | `UNWEDGE_HANG_LIMIT` | no-progress limit of the [`watchdog`] (default 10 s); `0` turns the check off (requests that legitimately run longer) |
//! | `UNWEDGE_ABORT_WHEN_WEDGED` | exit 70 after being wedged this long; `0` for never; unset: [`Server::abort_when_wedged`] (never by default) |
//! | `UNWEDGE_HEALTH_ROUTES` | `0` to leave `/livez` `/readyz` to the app |
//! | `UNWEDGE_IDLE_TIMEOUT` | idle period after which a connection without requests is closed; `0` for none |
//! | `UNWEDGE_MAX_CONNECTIONS` | connections served at once, more wait in the listen backlog (default: seven eighths of the open-file limit); `0` for no limit |
//! | `UNWEDGE_BACKTRACE` | `1` (default: symbols within 2 ms, else raw frames), `full` or `0` (none) |
//!
//! The guide `docs/systemd-worker.md` shows unit files and the supervisor side.

pub(crate) mod body;
mod config;
mod dump;
mod front;
pub(crate) mod notify;

mod limits;
mod listeners;
mod socket;
mod stop;

use std::fmt;
use std::io::Write;
use std::process::{ExitCode, Termination};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sd_notify::NotifyState;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tower::Service;

pub use body::{BodyError, Incoming};
pub use config::ListenAddr;

/// The client's address, in the extensions of each request of a TCP connection when
/// [`Server::connect_info`] is on (with the `axum` feature, so is
/// `axum::extract::ConnectInfo<SocketAddr>`, for its extractor).
///
/// # Examples
///
/// ```
/// use unwedge::serve::ClientAddr;
///
/// // A tower/hyper service reads it from the request:
/// fn client(req: &http::Request<()>) -> Option<std::net::SocketAddr> {
///     req.extensions().get::<ClientAddr>().map(|c| c.0)
/// }
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(ClientAddr("127.0.0.1:50000".parse().unwrap()));
/// assert_eq!(client(&req).unwrap().port(), 50000);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub std::net::SocketAddr);
pub use notify::{encode_report, MAX_REPORT_BYTES};

use crate::health;
use crate::watchdog::{self, Tracker, Watchdog};
use crate::Policy;
use front::Stack;
use listeners::{Listener, Stream};
use notify::Notifier;

/// The boxed error type of response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The exit code of a graceful crash: `EX_SOFTWARE` from `sysexits.h`.
pub const EXIT_CRASH: u8 = 70;
/// The exit code for bad configuration (a malformed environment variable or builder setting).
pub const EXIT_USAGE: u8 = 2;

/// The default deadline for finishing requests in flight on SIGTERM/SIGINT.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// The default deadline for finishing requests in flight in a graceful crash.
pub const DEFAULT_CRASH_TIMEOUT: Duration = Duration::from_secs(5);
/// The default idle timeout of a connection: see [`Server::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The address bound when nothing else says where to listen (loopback only).
pub const DEFAULT_ADDR: &str = "127.0.0.1:8080";

/// Why [`serve`] could not start.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use unwedge::serve::{Outcome, ServeError};
/// let app = axum::Router::new();
/// match unwedge::Server::new().bind("unix:").serve(app).await {
///     Outcome::Failed(ServeError::Usage(why)) => assert!(why.contains("needs a path"), "{why}"),
///     other => panic!("{other:?}"),
/// }
/// # }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum ServeError {
    /// An environment variable holds a value that cannot be used (exit code 2).
    BadEnv {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// A socket could not be bound or used (exit code 1).
    Listen(String),
    /// A setting given to the builder cannot be used, e.g. an address
    /// [`Server::bind`] cannot parse (exit code 2).
    Usage(String),
}

impl ServeError {
    pub(crate) fn bad_env(
        name: &'static str,
        value: impl fmt::Display,
        why: impl fmt::Display,
    ) -> Self {
        ServeError::BadEnv {
            name,
            value: value.to_string(),
            why: why.to_string(),
        }
    }

    /// The process exit code this error calls for: 2 for bad configuration, 1 otherwise.
    ///
    /// ```
    /// use unwedge::serve::ServeError;
    /// assert_eq!(ServeError::Usage("invalid Server::bind(\"8080\")".into()).exit_code(), 2);
    /// assert_eq!(ServeError::Listen("address in use".into()).exit_code(), 1);
    /// ```
    pub fn exit_code(&self) -> u8 {
        match self {
            ServeError::BadEnv { .. } | ServeError::Usage(_) => EXIT_USAGE,
            ServeError::Listen(_) => 1,
        }
    }
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::BadEnv { name, value, why } => write!(f, "invalid {name}={value:?}: {why}"),
            ServeError::Listen(msg) | ServeError::Usage(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for ServeError {}

/// How [`serve`] ended. Return it from `main`: it is a [`Termination`] with the right exit
/// code.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use unwedge::serve::Outcome;
/// let app = axum::Router::new();
/// let outcome = unwedge::Server::new().bind("8080").serve(app).await; // no host: bad usage
/// assert!(matches!(outcome, Outcome::Failed(_)));
/// assert_eq!(outcome.exit_code(), 2); // what `main` exits with when it returns it
/// # }
/// ```
#[derive(Debug)]
#[must_use = "return the Outcome from main, or call `std::process::Termination::report` on it (which prints why serve() failed), so the supervisor sees why the process ended"]
#[non_exhaustive]
pub enum Outcome {
    /// Graceful shutdown after SIGTERM/SIGINT (exit code 0).
    Stopped,
    /// A graceful crash, returned only with [`Server::exit_on_crash`]`(false)` (exit code 70).
    Crashed {
        /// Why the crash was requested.
        reason: String,
    },
    /// `serve` could not start (exit code 2 for bad configuration, 1 otherwise).
    Failed(ServeError),
}

impl Outcome {
    /// The process exit code for this outcome: 0, 70, 2 or 1. It prints nothing: a
    /// [`Failed`](Outcome::Failed) outcome's reason is printed (on stderr) by returning the
    /// `Outcome` from `main`, or by [`Termination::report`], which then gives this code.
    ///
    /// ```
    /// assert_eq!(unwedge::serve::Outcome::Stopped.exit_code(), 0);
    /// ```
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Stopped => 0,
            Outcome::Crashed { .. } => EXIT_CRASH,
            Outcome::Failed(e) => e.exit_code(),
        }
    }
}

impl Termination for Outcome {
    fn report(self) -> ExitCode {
        if let Outcome::Failed(e) = &self {
            eprintln!("error: {e}");
        }
        ExitCode::from(self.exit_code())
    }
}

/// Serves `app` with the defaults and the environment's configuration; see the
/// [module docs](self). The same as `Server::new().serve(app)` (and cancelled the same way
/// when the future is dropped: see [`Server::serve`]).
///
/// ```no_run
/// # async fn run() -> unwedge::serve::Outcome {
/// let app = axum::Router::new();
/// unwedge::serve(app).await
/// # }
/// ```
pub async fn serve<S, B>(app: S) -> Outcome
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    Server::new().serve(app).await
}

/// Builder for [`serve`]: addresses, policy, deadlines and watchdog limits.
///
/// ```no_run
/// use std::time::Duration;
/// # async fn run() -> unwedge::serve::Outcome {
/// # let app = axum::Router::new();
/// unwedge::Server::new()
///     .bind("127.0.0.1:3000")
///     .policy(unwedge::Policy::Auto)
///     .shutdown_timeout(Duration::from_secs(10))
///     .stall_limit(Duration::from_secs(1))
///     .serve(app)
///     .await
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Server {
    addrs: Vec<ListenAddr>,
    policy: Option<Policy>,
    panic_layer: bool,
    /// The layer given to [`Server::panic_layer`].
    layer: Option<crate::PanicLayer>,
    health_routes: bool,
    shutdown_timeout: Duration,
    crash_timeout: Duration,
    stall_limit: Option<Duration>,
    hang_limit: Option<Duration>,
    abort_when_wedged: Option<Duration>,
    exit_on_crash: bool,
    idle_timeout: Option<Duration>,
    /// `None`: the default, from the open-file limit; `Some(None)`: no limit.
    max_connections: Option<Option<usize>>,
    raise_fd_limit: bool,
    /// [`Server::before_exit`]'s hook.
    before_exit: Shared<ExitHook>,
    connect_info: bool,
    /// [`Server::listener`]'s sockets.
    listeners: Shared<Vec<std::net::TcpListener>>,
    /// [`Server::shutdown_on`]'s future.
    shutdown: Shared<ShutdownFuture>,
}

/// What the builder's clones share and the first `serve()` takes: what cannot be cloned (a
/// socket, a future, a hook run once).
struct Shared<T>(Arc<std::sync::Mutex<Option<T>>>);

impl<T> Shared<T> {
    fn set(&mut self, value: T) {
        *self = Shared(Arc::new(std::sync::Mutex::new(Some(value))));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<T>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self) -> Option<T> {
        self.lock().take()
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared(self.0.clone())
    }
}

impl<T> Default for Shared<T> {
    fn default() -> Self {
        Shared(Arc::default())
    }
}

impl<T> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.lock().is_some() {
            "Some(..)"
        } else {
            "None"
        })
    }
}

type ShutdownFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A hook run before `serve()` exits the process itself.
type ExitHook = Box<dyn FnOnce() + Send>;

impl Default for Server {
    fn default() -> Self {
        Self::new()
    }
}

impl Server {
    /// The defaults: listen where the environment says (else `127.0.0.1:8080`), the policy
    /// `UNWEDGE_POLICY` names, else the process-wide one (Auto unless
    /// [`set_policy`](crate::panic::set_policy) changed it), health routes on, shutdown 30 s,
    /// crash 5 s, stall 2 s, hang 10 s.
    ///
    /// ```
    /// let server = unwedge::Server::new(); // the same as `Server::default()`
    /// # let _ = server;
    /// ```
    pub fn new() -> Self {
        Server {
            addrs: Vec::new(),
            policy: None,
            panic_layer: true,
            layer: None,
            health_routes: true,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            crash_timeout: DEFAULT_CRASH_TIMEOUT,
            stall_limit: Some(watchdog::DEFAULT_STALL_LIMIT),
            hang_limit: Some(watchdog::DEFAULT_HANG_LIMIT),
            abort_when_wedged: None,
            exit_on_crash: true,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            max_connections: None,
            raise_fd_limit: true,
            before_exit: Shared::default(),
            connect_info: false,
            listeners: Shared::default(),
            shutdown: Shared::default(),
        }
    }

    /// Serves on `listener`, a socket already bound, instead of any address (inherited
    /// sockets, `UNWEDGE_LISTEN` and [`Server::bind`] are then not used). With
    /// [`Server::shutdown_on`] it runs `serve()` inside a test: bind `127.0.0.1:0`, read the
    /// port, serve, stop. A `serve()` takes the listeners of its builder (and of its clones):
    /// closed when it stops accepting.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use axum::{routing::get, Router};
    /// use tokio::io::{AsyncReadExt, AsyncWriteExt};
    ///
    /// let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    /// let addr = listener.local_addr().unwrap();
    /// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    /// let app = Router::new().route("/", get(|| async { "hello" }));
    /// let server = tokio::spawn(
    ///     unwedge::Server::new()
    ///         .listener(listener)
    ///         .shutdown_on(async { let _ = stopped.await; })
    ///         .exit_on_crash(false) // a test process must not exit
    ///         .serve(app),
    /// );
    /// let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    /// conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    /// let mut res = String::new();
    /// conn.read_to_string(&mut res).await.unwrap();
    /// assert!(res.starts_with("HTTP/1.1 200") && res.ends_with("hello"), "{res}");
    /// stop.send(()).unwrap();
    /// assert!(matches!(server.await.unwrap(), unwedge::serve::Outcome::Stopped));
    /// # }
    /// ```
    pub fn listener(self, listener: std::net::TcpListener) -> Self {
        self.listeners
            .lock()
            .get_or_insert_with(Vec::new)
            .push(listener);
        self
    }

    /// Starts the graceful shutdown when `signal` completes, as SIGTERM does (stop accepting,
    /// finish the requests in flight within the shutdown timeout, return
    /// [`Outcome::Stopped`]); SIGTERM and SIGINT still work too. For a server embedded in a
    /// larger program, or a test (see [`Server::listener`]). Clones of this builder share the
    /// future (as they share [`Server::listener`]'s sockets): the first `serve()` takes it.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> unwedge::serve::Outcome {
    /// # let app = axum::Router::new();
    /// let stop = std::sync::Arc::new(tokio::sync::Notify::new());
    /// let stopper = stop.clone(); // `stopper.notify_one()` from elsewhere stops it
    /// # let _ = stopper;
    /// unwedge::Server::new()
    ///     .shutdown_on(async move { stop.notified().await })
    ///     .serve(app)
    ///     .await
    /// # }
    /// ```
    pub fn shutdown_on(
        mut self,
        signal: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Self {
        self.shutdown.set(Box::pin(signal));
        self
    }

    /// Adds an address to bind when no socket is inherited and `UNWEDGE_LISTEN` is unset.
    /// A string that is no address (`"unix:"`, `"8080"`) makes `serve()` fail at start, with
    /// [`ServeError::Usage`] (exit code 2): `invalid Server::bind("unix:"): `unix:` needs a
    /// path`.
    ///
    /// ```
    /// let server = unwedge::Server::new().bind("127.0.0.1:3000").bind("unix:/tmp/app.sock");
    /// # let _ = server;
    /// ```
    pub fn bind(mut self, addr: impl Into<ListenAddr>) -> Self {
        self.addrs.push(addr.into());
        self
    }

    /// The panic policy of the layer and of [`spawn`](crate::spawn)ed tasks. The first of
    /// these that is set decides: `UNWEDGE_POLICY`, this, the policy of the layer given to
    /// [`Server::panic_layer`], the process-wide [`policy`](crate::panic::policy)
    /// ([`Policy::Auto`] by default).
    ///
    /// ```
    /// let server = unwedge::Server::new().policy(unwedge::Policy::Recover);
    /// # let _ = server;
    /// ```
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = Some(policy);
        self
    }

    /// The [`PanicLayer`](crate::PanicLayer) `serve()` guards the app with, configured as you
    /// like (budget, sinks, [`respond_with`](crate::PanicLayer::respond_with),
    /// [`expose_details`](crate::PanicLayer::expose_details), report headers, …). A policy given
    /// with `PanicLayer::with_policy` applies unless `UNWEDGE_POLICY` or [`Server::policy`] says
    /// otherwise; a `PanicLayer::new()` leaves the choice to them and the process-wide policy.
    ///
    /// Give the layer here, **not** also to the app (`Router::layer`): a `PanicLayer` inside
    /// the app catches the panics first and decides with its own policy, and `serve()`'s
    /// never sees them (it logs a warning at the first such panic). To keep a layer inside
    /// the app (it reports axum's route templates, `GET /users/{id}`, where `serve()`'s
    /// layer, outside the router, sees paths), use [`Server::without_panic_layer`] instead.
    ///
    /// ```
    /// use std::time::Duration;
    /// use unwedge::{PanicLayer, Policy};
    /// let layer = PanicLayer::with_policy(Policy::Auto)
    ///     .budget(2, Duration::from_secs(60))
    ///     .echo_request_id(true);
    /// let server = unwedge::Server::new().panic_layer(layer);
    /// # let _ = server;
    /// ```
    pub fn panic_layer(mut self, layer: crate::PanicLayer) -> Self {
        self.panic_layer = true;
        self.layer = Some(layer);
        self
    }

    /// Serves the app without `serve()`'s [`PanicLayer`](crate::PanicLayer): bring your own
    /// inside the app, e.g. `Router::layer` for route templates in reports and metrics.
    /// `UNWEDGE_POLICY` then still sets the process-wide policy (tasks), not your layer's:
    /// build it with [`Policy::from_env`] to follow the variable.
    ///
    /// Your layer must wrap every route: axum's `Router::layer` wraps only the routes added
    /// before it, so call it last. A panic in a route it does not wrap reaches hyper's task
    /// for the connection: the client gets no answer, and no report or policy decision follows.
    ///
    /// ```no_run
    /// use axum::{routing::get, Router};
    /// use unwedge::{PanicLayer, Policy};
    /// # async fn run() -> unwedge::serve::Outcome {
    /// let policy = match Policy::from_env() {
    ///     Ok(p) => p.unwrap_or_default(),
    ///     Err(e) => { eprintln!("error: {e}"); std::process::exit(2) }
    /// };
    /// let app = Router::new()
    ///     .route("/users/{id}", get(|| async { "user" }))
    ///     .layer(PanicLayer::with_policy(policy)); // reports say `GET /users/{id}`
    /// unwedge::Server::new().without_panic_layer().serve(app).await
    /// # }
    /// ```
    pub fn without_panic_layer(mut self) -> Self {
        self.panic_layer = false;
        self
    }

    /// Gives each request of a TCP connection the client's address, as `axum::serve` does
    /// for an app made with `into_make_service_with_connect_info`: the extension
    /// [`ClientAddr`], and with the `axum` feature `axum::extract::ConnectInfo<SocketAddr>`,
    /// so that the `ConnectInfo` extractor works (without this it answers 500, "Missing
    /// request extension"). Off by default: it costs each request a small allocation. Behind
    /// a reverse proxy the address is the proxy's (read `X-Forwarded-For` or `Forwarded`
    /// from the proxy you trust instead); a `unix:` socket's connections get none.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::net::SocketAddr;
    /// use axum::{extract::ConnectInfo, routing::get, Router};
    ///
    /// async fn whoami(ConnectInfo(client): ConnectInfo<SocketAddr>) -> String {
    ///     format!("you are {client}\n")
    /// }
    /// # async fn run() -> unwedge::serve::Outcome {
    /// let app = Router::new().route("/whoami", get(whoami));
    /// unwedge::Server::new().connect_info().serve(app).await
    /// # }
    /// ```
    pub fn connect_info(mut self) -> Self {
        self.connect_info = true;
        self
    }

    /// Leaves `/livez` and `/readyz` to the app.
    ///
    /// ```
    /// use axum::{routing::get, Router};
    /// // The app mounts unwedge's own probes where it likes (they fail when wedged or tainted;
    /// // a `/livez` that always says "alive" would hide both).
    /// let app: Router = Router::new()
    ///     .route("/livez", get(|| async { unwedge::probe::livez() }))
    ///     .route("/readyz", get(|| async { unwedge::probe::readyz() }));
    /// let server = unwedge::Server::new().without_health_routes(); // the app's answer
    /// # let _ = (app, server);
    /// ```
    pub fn without_health_routes(mut self) -> Self {
        self.health_routes = false;
        self
    }

    /// Deadline for finishing requests in flight after SIGTERM/SIGINT (default 30 s). Zero is
    /// a zero-length drain, not "no deadline": the requests in flight are abandoned at once.
    ///
    /// ```
    /// use std::time::Duration;
    /// // Below systemd's `TimeoutStopSec=` (90 s by default), which kills what is left.
    /// let server = unwedge::Server::new().shutdown_timeout(Duration::from_secs(60));
    /// # let _ = server;
    /// ```
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Deadline for finishing requests in flight in a graceful crash (default 5 s). Zero is a
    /// zero-length drain: the requests in flight are abandoned and the process exits at once.
    ///
    /// ```
    /// use std::time::Duration;
    /// let server = unwedge::Server::new().crash_timeout(Duration::from_secs(2)); // exit 70 sooner
    /// # let _ = server;
    /// ```
    pub fn crash_timeout(mut self, timeout: Duration) -> Self {
        self.crash_timeout = timeout;
        self
    }

    /// Runtime-stall and blocked-poll limit of the [`watchdog`] (default 2 s): the process is
    /// Wedged when the runtime does not run a canary task, or one poll of a request does not
    /// return, for this long. `None` or zero turns both checks off (`UNWEDGE_STALL_LIMIT=0`
    /// does the same and wins over the builder).
    ///
    /// ```
    /// use std::time::Duration;
    /// let server = unwedge::Server::new().stall_limit(Duration::from_millis(500));
    /// let unwatched = unwedge::Server::new().stall_limit(None); // or Duration::ZERO
    /// # let _ = (server, unwatched);
    /// ```
    pub fn stall_limit(mut self, limit: impl Into<Option<Duration>>) -> Self {
        self.stall_limit = limit.into().filter(|d| !d.is_zero());
        self
    }

    /// No-progress limit of the [`watchdog`] (default 10 s): the process is Wedged when
    /// requests are in flight, the oldest for longer than this, and none completed within it.
    /// `None` or zero turns the check off, for services whose requests legitimately run
    /// longer (`UNWEDGE_HANG_LIMIT=0` does the same and wins over the builder).
    ///
    /// ```
    /// use std::time::Duration;
    /// let reports = unwedge::Server::new().hang_limit(Duration::from_secs(120));
    /// let long_polls = unwedge::Server::new().hang_limit(None); // or Duration::ZERO
    /// # let _ = (reports, long_polls);
    /// ```
    pub fn hang_limit(mut self, limit: impl Into<Option<Duration>>) -> Self {
        self.hang_limit = limit.into().filter(|d| !d.is_zero());
        self
    }

    /// Exit with code 70 once the process has been wedged for `after`: for deployments
    /// without a supervisor that would kill it. Off by default; `None` or zero keeps it off
    /// (`UNWEDGE_ABORT_WHEN_WEDGED=0` turns it off and wins over the builder).
    ///
    /// ```
    /// use std::time::Duration;
    /// let server = unwedge::Server::new().abort_when_wedged(Duration::from_secs(30));
    /// # let _ = server;
    /// ```
    pub fn abort_when_wedged(mut self, after: impl Into<Option<Duration>>) -> Self {
        self.abort_when_wedged = after.into().filter(|d| !d.is_zero());
        self
    }

    /// How long a connection may go without delivering a request (default 30 s). Checked
    /// once per period: a connection that delivered no new request during a whole period is
    /// shut down gracefully, at once when idle, after its request in progress otherwise. So a
    /// client that connects and sends nothing, trickles a request head (slowloris) or keeps an
    /// idle keep-alive connection holds it for 1 to 2 periods, not forever. The same period
    /// bounds an HTTP/1 request body: a client that sends no body bytes for that long while
    /// the handler waits for them ends its body with an error ([`BodyError::is_timeout`]; see
    /// [`Incoming`] for what is and is not timed). `None` (or zero)
    /// keeps connections as long as clients do, as `axum::serve` does: only behind a proxy
    /// that bounds them already.
    ///
    /// ```
    /// use std::time::Duration;
    /// let server = unwedge::Server::new().idle_timeout(Duration::from_secs(60));
    /// # let _ = server;
    /// ```
    pub fn idle_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.idle_timeout = timeout.into();
        self
    }

    /// How many connections are served at once (all listeners together); `None` (or zero)
    /// for no limit. At the limit `serve()` stops accepting until a connection closes: new
    /// ones wait in the kernel's listen backlog instead of taking the last file descriptors,
    /// which the app needs for its own files and upstream connections (and whose lack fails
    /// `accept` for everyone anyway). Reaching it is logged, at most once per 10 s. A
    /// connection upgraded to another protocol (a WebSocket: `101 Switching Protocols`) leaves
    /// the count when it is upgraded: the app holds it from then on, and bounds such
    /// connections itself.
    ///
    /// Default: seven eighths of the open-file limit (after
    /// [`raise_fd_limit`](Self::raise_fd_limit)), leaving the rest, at least 32, to the app.
    /// Environment: `UNWEDGE_MAX_CONNECTIONS` (`0` for no limit).
    ///
    /// ```
    /// let server = unwedge::Server::new().max_connections(10_000);
    /// # let _ = server;
    /// ```
    pub fn max_connections(mut self, limit: impl Into<Option<usize>>) -> Self {
        self.max_connections = Some(limit.into().filter(|&n| n > 0));
        self
    }

    /// Whether `serve()` raises the process's soft open-file limit (`RLIMIT_NOFILE`) to its
    /// hard limit (at most 2²⁰, 1 048 576) at start, as Go's runtime does (default: true). Every connection is a file
    /// descriptor, and the usual soft limit of 1024 fails `accept` long before the machine is
    /// short of anything. Child processes inherit the raised limit: turn this off if the
    /// service runs programs that use `select()`.
    ///
    /// ```
    /// let server = unwedge::Server::new().raise_fd_limit(false);
    /// # let _ = server;
    /// ```
    pub fn raise_fd_limit(mut self, raise: bool) -> Self {
        self.raise_fd_limit = raise;
        self
    }

    /// Whether a graceful crash ends with [`std::process::exit`]`(70)` (the default) or returns
    /// [`Outcome::Crashed`].
    ///
    /// `process::exit` runs no destructors: a log writer flushed by its guard's drop
    /// (`tracing_appender::non_blocking`) loses its last lines, the panic report among them.
    /// Flush it in [`Server::before_exit`], or turn this off and return the [`Outcome`] from
    /// `main` (the guard, held in `main`, drops before the process exits with 70):
    ///
    /// ```no_run
    /// #[tokio::main]
    /// async fn main() -> unwedge::serve::Outcome {
    ///     let (writer, _guard) = tracing_appender::non_blocking(std::io::stderr());
    ///     tracing_subscriber::fmt().with_writer(writer).init();
    ///     let app = axum::Router::new();
    ///     unwedge::Server::new().exit_on_crash(false).serve(app).await
    /// }
    /// ```
    ///
    /// A request still blocking its thread 2 s after `serve()` returned makes `serve()`'s
    /// backstop exit the process anyway (see the [module docs](self)); `before_exit` covers
    /// that exit too.
    pub fn exit_on_crash(mut self, exit: bool) -> Self {
        self.exit_on_crash = exit;
        self
    }

    /// Runs `hook` before `serve()` ends the process itself with [`std::process::exit`],
    /// which runs no destructors: after a graceful crash's drain (exit 70), when wedged for
    /// [`abort_when_wedged`](Self::abort_when_wedged) (70), and in the backstops that end a
    /// stop or a crash the runtime cannot finish (0 or 70). Flush buffered logs or telemetry
    /// here (drop a `tracing_appender` `WorkerGuard`). When `serve()` returns instead (a
    /// SIGTERM's graceful shutdown, [`exit_on_crash(false)`](Self::exit_on_crash), a start
    /// that failed) it runs just before: what it holds would otherwise never be dropped. When
    /// the `serve()` future is dropped before it returns (cancelled by a `select!` or a
    /// timeout: neither `serve()` nor the process exited), the hook is dropped without
    /// running, and what it holds with it (a `WorkerGuard` flushes when dropped anyway).
    ///
    /// It runs once, on its own thread (the exit may come from the watchdog's thread while
    /// runtime threads are blocked); the exit waits for it at most 5 s, so a hook that blocks
    /// cannot keep a crashed process alive. A panic in it is logged and the exit goes on. Each
    /// `serve()` runs its own hook at its own end (a retry after a failed start; two servers
    /// at once), and an exit runs every hook not run yet. After the hook ran, a backstop exit also writes its reason to stderr
    /// directly (the hook may have shut the log writer down).
    ///
    /// ```no_run
    /// # async fn run() -> unwedge::serve::Outcome {
    /// # let app = axum::Router::new();
    /// let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    /// tracing_subscriber::fmt().with_writer(writer).init();
    /// unwedge::Server::new()
    ///     .before_exit(move || drop(guard))
    ///     .serve(app)
    ///     .await
    /// # }
    /// ```
    pub fn before_exit(mut self, hook: impl FnOnce() + Send + 'static) -> Self {
        self.before_exit.set(Box::new(hook));
        self
    }

    /// Serves `app` until SIGTERM/SIGINT or a graceful crash; see the [module docs](self).
    ///
    /// ```no_run
    /// use axum::{routing::get, Router};
    ///
    /// #[tokio::main]
    /// async fn main() -> unwedge::serve::Outcome {
    ///     let app = Router::new().route("/", get(|| async { "hello" }));
    ///     unwedge::Server::new().bind("127.0.0.1:3000").serve(app).await
    /// }
    /// ```
    ///
    /// # Cancellation
    ///
    /// Dropping the future before it returns (a `tokio::select!` branch that lost, a
    /// `tokio::time::timeout`) cancels it: no drain, no `STOPPING=1`, no [`Outcome`]. What it
    /// started ends with it: its listeners close, its connections are told to stop as in a
    /// drain (a request in progress is still answered), its watchdog thread and canary task
    /// end, readiness goes back to false, and its [`before_exit`](Self::before_exit) hook is
    /// dropped without running (dropping what it holds). Requests still in flight finish on
    /// their own. To stop it gracefully and wait for the drain, use
    /// [`shutdown_on`](Self::shutdown_on) instead.
    pub async fn serve<S, B>(self, app: S) -> Outcome
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError> + Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        // The hook first: a start that fails returns through it too. Queued until this
        // serve() returns or the process exits; dropped unrun with the future (see `Queued`).
        let mut hook = Queued(self.before_exit.take().map(set_before_exit));
        let outcome = match self.run(app).await {
            Ok(outcome) => outcome,
            // Reported once, by `Outcome`'s `Termination` (or the caller).
            Err(e) => {
                tracing::debug!(error = %e, "serve: cannot start");
                Outcome::Failed(e)
            }
        };
        // The hook holds what `main` would have dropped (a log writer's guard): it runs now,
        // not never (a static is not dropped when `main` returns). Only this serve()'s: another
        // one running meanwhile keeps its own until it ends.
        if let Some(id) = hook.0.take() {
            run_before_exit(Some(id));
        }
        outcome
    }

    async fn run<S, B>(self, app: S) -> Result<Outcome, ServeError>
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError> + Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        // Configuration first, so that a malformed variable fails before any side effect.
        let activation = config::activation()?;
        let notify_target = config::notify_socket()?;
        let watchdog_usec = config::watchdog_usec()?;
        let env_listen = config::listen()?;
        // `From<&str>` keeps an address it cannot parse as it was: say why, in the parser's
        // words, whether or not it would be bound.
        for addr in &self.addrs {
            if let ListenAddr::Tcp(a) = addr {
                if let Err(why) = a.parse::<ListenAddr>() {
                    return Err(ServeError::Usage(format!(
                        "invalid Server::bind({a:?}): {why}"
                    )));
                }
            }
        }
        // Environment, builder, the given layer's, then the process-wide policy; tasks follow
        // the same.
        let policy = config::policy()?
            .or(self.policy)
            .or(self
                .layer
                .as_ref()
                .and_then(crate::PanicLayer::given_policy))
            .unwrap_or_else(crate::panic::policy);
        crate::panic::set_policy(policy);
        let shutdown_timeout =
            config::duration("UNWEDGE_SHUTDOWN_TIMEOUT")?.unwrap_or(self.shutdown_timeout);
        let crash_timeout =
            config::duration("UNWEDGE_CRASH_TIMEOUT")?.unwrap_or(self.crash_timeout);
        // Zero is off, for these as for the idle timeout: a zero limit would be reached at
        // once (Wedged from the start, or exit 70 at the first wedge).
        let stall_limit = off_when_zero(config::duration("UNWEDGE_STALL_LIMIT")?, self.stall_limit);
        let hang_limit = off_when_zero(config::duration("UNWEDGE_HANG_LIMIT")?, self.hang_limit);
        let abort_after = off_when_zero(
            config::duration("UNWEDGE_ABORT_WHEN_WEDGED")?,
            self.abort_when_wedged,
        );
        let health_routes = config::flag("UNWEDGE_HEALTH_ROUTES")?.unwrap_or(self.health_routes);
        config::backtrace()?;
        let idle_timeout =
            off_when_zero(config::duration("UNWEDGE_IDLE_TIMEOUT")?, self.idle_timeout);
        let max_connections = config::count("UNWEDGE_MAX_CONNECTIONS")?
            .map(|n| Some(n).filter(|&n| n > 0))
            .or(self.max_connections);

        if self.raise_fd_limit {
            if let Some((from, to)) = limits::raise_nofile() {
                tracing::debug!(from, to, "raised the open-file limit");
            }
        }
        // After the raise: the default is a share of the limit the process ends up with.
        // Past tokio's semaphore maximum (2^61 - 1, far beyond any descriptor limit) a limit
        // is the same as none; tokio would panic on it.
        let max_connections = max_connections
            .unwrap_or_else(limits::default_max_connections)
            .map(|n| n.min(tokio::sync::Semaphore::MAX_PERMITS));
        if let Some(n) = max_connections {
            tracing::debug!(max_connections = n, "connection limit");
        }

        // Signals before anything can be ready, so an early SIGTERM is not lost.
        let mut signals = Signals::new()?;

        let given = self.listeners.take().unwrap_or_default();
        let listeners = if !given.is_empty() {
            listeners::from_std(given)?
        } else if activation.count > 0 {
            listeners::inherited(&activation)?
        } else if !env_listen.is_empty() {
            bind_all(&env_listen, "UNWEDGE_LISTEN").await?
        } else if !self.addrs.is_empty() {
            bind_all(&self.addrs, "Server::bind").await?
        } else {
            bind_all(&[ListenAddr::from(DEFAULT_ADDR)], "default address").await?
        };
        let serving_on = listeners
            .iter()
            .map(Listener::describe)
            .collect::<Vec<_>>()
            .join(", ");

        let notifier = Arc::new(Notifier::new(notify_target));
        notify::set_current(&notifier);

        let tracker = Tracker::new();
        dump::install(&tracker);
        let guard = self.panic_layer.then(|| {
            self.layer
                .clone()
                .unwrap_or_default()
                .replace_policy(policy)
                .on_inner_panic(front::inner_layer_handled_a_panic)
        });
        let service = build_service(app, guard, health_routes, tracker.clone())
            .with_connect_info(self.connect_info)
            .with_body_idle_timeout(idle_timeout);

        if stall_limit.is_none() {
            tracing::info!(
                "stall limit 0: the watchdog's runtime-stall and blocked-poll checks are off"
            );
        }
        if hang_limit.is_none() {
            tracing::info!("hang limit 0: the watchdog's no-progress check is off");
        }
        // Seen by the watchdog thread even when no runtime thread is free to see the signal.
        let stop_signal = StopSignalFlag::register();
        let watchdog = Watchdog::start(
            watchdog::Config {
                stall_limit,
                hang_limit,
                abort_after,
                heartbeat: watchdog_usec.map(|u| u / 2),
                crash_backstop: crash_timeout.saturating_add(Duration::from_secs(1)),
                stop_backstop: shutdown_timeout.saturating_add(Duration::from_secs(1)),
                stop_signal: stop_signal.flag.clone(),
                serving_on: serving_on.clone(),
            },
            tracker.clone(),
            notifier.clone(),
        );

        let stop = stop::Stop::default();
        // Undoes what a return below undoes when the future is dropped before it returns.
        let mut cancelled = Cancelled {
            stop: stop.clone(),
            ready: false,
        };
        // Every connection task holds a clone of `alive`: the drain is over when all are gone.
        let (alive, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
        let mut accepting = tokio::task::JoinSet::new();
        // One permit per connection served, shared by every listener.
        let slots = max_connections.map(|n| (Arc::new(tokio::sync::Semaphore::new(n)), n));
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // No hyper timer: its header read timeout re-arms a timer for every request (measured:
        // +1 650 instructions per request, +11 %); `Conn::idle_timeout` checks once a period.
        builder.http1().header_read_timeout(None);
        // HTTP/2 keep-alive PINGs, the one way to tell a peer that stopped answering (gone, or
        // holding connections on purpose): the idle close and the drain shut an HTTP/2
        // connection down gracefully, which waits for the peer to acknowledge a PING, and
        // without these such a peer kept its connection (and its connection slot) for ever.
        // A peer silent for a ping interval (the idle timeout, between 1 s and 30 s) that does
        // not answer within the same time (20 s at most) is disconnected.
        let ping = idle_timeout
            .unwrap_or(DEFAULT_IDLE_TIMEOUT)
            .clamp(Duration::from_secs(1), DEFAULT_IDLE_TIMEOUT);
        builder
            .http2()
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(ping)
            .keep_alive_timeout(ping.min(Duration::from_secs(20)));
        for listener in listeners {
            accepting.spawn(accept_loop(
                listener,
                service.clone(),
                Conn {
                    builder: builder.clone(),
                    idle_timeout,
                    slots: slots.clone(),
                },
                alive.clone(),
                stop.clone(),
            ));
        }

        // The log line first: whoever acts on READY=1 (a supervisor that may kill this
        // process a moment later) finds it already written.
        tracing::info!(
            addr = %serving_on,
            policy = policy.as_str(),
            pid = std::process::id(),
            "serving"
        );
        health::set_ready(true);
        cancelled.ready = true;
        let state = health::health().state;
        let status = watchdog::status_text(state, None, &serving_on);
        // With heartbeats expected, the first goes with READY=1 (the watchdog thread's first
        // may come a moment before or after): a supervisor that watches heartbeats only from a
        // worker's first one then watches this worker from the moment it is ready, and one
        // that freezes right after READY=1 is still found hung.
        if watchdog_usec.is_some() && state.is_live() {
            notifier.send(&[
                NotifyState::Ready,
                NotifyState::Status(&status),
                NotifyState::Watchdog,
            ]);
        } else {
            notifier.send(&[NotifyState::Ready, NotifyState::Status(&status)]);
        }

        // Run until a signal, the `shutdown_on` future, or a crash request.
        let mut shutdown = self.shutdown.take();
        let asked = async {
            match shutdown.as_mut() {
                Some(f) => f.await,
                None => std::future::pending().await,
            }
        };
        let crash = tokio::select! {
            name = signals.recv() => {
                tracing::info!(signal = name, "graceful shutdown: finishing requests in flight (deadline {shutdown_timeout:?})");
                None
            }
            () = asked => {
                tracing::info!("graceful shutdown (Server::shutdown_on): finishing requests in flight (deadline {shutdown_timeout:?})");
                None
            }
            reason = health::crash_requested() => {
                tracing::error!(reason = %reason, "graceful crash: closing listeners, finishing requests in flight (deadline {crash_timeout:?})");
                Some(reason)
            }
        };

        // Stop accepting at once: each accept loop drops its listener (its copy of the fd).
        // Idle keep-alive connections may still bring one request each (answered with
        // `Connection: close`): closing them at once would race with a client reusing them.
        stop.stop(KEEP_ALIVE_GRACE);
        while accepting.join_next().await.is_some() {}
        health::set_ready(false);
        cancelled.ready = false;
        if crash.is_none() {
            health::set_draining();
        }
        // A crash says `tainted` (a crash request taints the health) *before* STOPPING=1, in
        // the same datagram: a supervisor then always learns why the worker leaves first,
        // whichever of this and the health watcher's own STATUS= it reads first.
        match &crash {
            None => {
                notifier.send(&[
                    NotifyState::Stopping,
                    NotifyState::Status("draining: graceful shutdown"),
                ]);
            }
            Some(r) => {
                let tainted =
                    watchdog::status_text(health::HealthState::Tainted, Some(r), &serving_on);
                notifier.send(&[NotifyState::Status(&tainted), NotifyState::Stopping]);
            }
        }

        // Drain. A crash requested while shutting down shortens the deadline; a second
        // signal ends the drain now.
        let started = Instant::now();
        let deadline = if crash.is_some() {
            crash_timeout
        } else {
            shutdown_timeout
        };
        drop(alive);
        let drained = all_closed.recv();
        tokio::pin!(drained);
        // A crash's drain began without a signal: the first signal during it (a supervisor's
        // or systemd's SIGTERM, asking for what is already happening) lets it go on; a second
        // one ends it, as after a SIGTERM-initiated drain.
        let mut signals_to_end = if crash.is_some() { 2 } else { 1 };
        let mut crash = crash;
        let mut deadline_at = deadline_in(deadline);
        loop {
            tokio::select! {
                _ = &mut drained => {
                    tracing::info!(elapsed = ?started.elapsed(), "all connections finished");
                    break;
                }
                () = tokio::time::sleep_until(deadline_at) => {
                    tracing::warn!(
                        in_flight = tracker.in_flight(),
                        "deadline of {deadline:?} reached: abandoning the requests still in flight"
                    );
                    break;
                }
                name = signals.recv() => {
                    signals_to_end -= 1;
                    if signals_to_end > 0 {
                        tracing::info!(signal = name, in_flight = tracker.in_flight(), "already crashing gracefully: the drain goes on (a second signal ends it now)");
                        continue;
                    }
                    tracing::warn!(signal = name, in_flight = tracker.in_flight(), "second signal: stopping now");
                    break;
                }
                reason = health::crash_requested(), if crash.is_none() => {
                    tracing::error!(reason = %reason, "graceful crash requested while shutting down");
                    deadline_at = deadline_at.min(deadline_in(crash_timeout));
                    crash = Some(reason);
                }
            }
        }
        watchdog.stop();
        if tracker.in_flight() > 0 {
            exit_backstop(tracker.clone(), crash.is_some());
        }

        match crash {
            Some(reason) if self.exit_on_crash => {
                tracing::error!(reason = %reason, elapsed = ?started.elapsed(), "graceful crash: exiting with code 70");
                exit_now(EXIT_CRASH)
            }
            Some(reason) => {
                notifier.flush(NOTIFY_FLUSH);
                Ok(Outcome::Crashed { reason })
            }
            None => {
                tracing::info!("graceful shutdown complete");
                notifier.flush(NOTIFY_FLUSH);
                Ok(Outcome::Stopped)
            }
        }
    }
}

/// What `serve()`'s future undoes when it is dropped before it returns (a `select!`, a
/// timeout: cancelled, not stopped), as a return would: the readiness it set goes back to
/// false, and its connections are told to stop as in a drain (see [`spawn_connection`]),
/// instead of being served until their clients leave. The accept loops (and their
/// listeners) end with their `JoinSet`, the watchdog with its [`Watchdog`]'s drop, the
/// signal flag with its own. Nothing waits: the requests still in flight finish on their
/// own, and the health is not set Draining (the process is not shutting down).
struct Cancelled {
    stop: stop::Stop,
    /// `serve()` said ready and has not said otherwise since.
    ready: bool,
}

impl Drop for Cancelled {
    fn drop(&mut self) {
        // After a return: stopped already (a second stop changes nothing), and not ready.
        self.stop.stop(KEEP_ALIVE_GRACE);
        if self.ready {
            health::set_ready(false);
        }
    }
}

/// The id of a `serve()`'s [`Server::before_exit`] hook while it is queued. Taken when
/// `serve()` returns, to run the hook; dropped with the future before that (cancelled: the
/// process did not exit, and neither did `serve()`), it takes the hook off the queue and
/// drops it unrun, here, so that what it holds is dropped now, not at the next exit.
struct Queued(Option<u64>);

impl Drop for Queued {
    fn drop(&mut self) {
        if let Some(id) = self.0.take() {
            // Outside the queue's lock: what the hook holds may take its time to drop (a log
            // writer's guard flushes).
            drop(take_before_exit(Some(id)));
        }
    }
}

/// The environment's value when set (zero: off), else the builder's; zero is off either way.
fn off_when_zero(env: Option<Duration>, builder: Option<Duration>) -> Option<Duration> {
    env.map_or(builder, Some).filter(|d| !d.is_zero())
}

/// `d` from now; a duration too long for the clock (`Duration::MAX` as "no deadline") is
/// about thirty years from now instead of a panic.
fn deadline_in(d: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 24 * 3600))
}

/// How long a request abandoned at the drain deadline may go on blocking its thread after
/// `serve()` returns before the process exits: see [`exit_backstop`].
const EXIT_BACKSTOP: Duration = Duration::from_secs(2);

/// Requests were abandoned at the drain deadline. Those that yield are cancelled when the
/// runtime is dropped; one that blocks its thread (a lock, a sleep, a loop) cannot be, and
/// dropping a runtime waits for its threads, for ever: `#[tokio::main]` would never return,
/// and its signal handlers would swallow every later SIGTERM. So a thread watches: if a
/// request is still inside one poll [`EXIT_BACKSTOP`] after `serve()` returned, it says so
/// and exits the process (0 after a stop, 70 after a crash). A process that exits normally
/// meanwhile ends the thread with it.
///
/// A request waiting for work it handed to the blocking pool (`spawn_blocking`) is in no poll,
/// yet dropping the runtime waits for that work too. So the thread then watches the runtime
/// for up to [`RUNTIME_WATCH`]: once its drop has begun (a task spawned on it is cancelled at
/// once) and has not finished (threads of the runtime, known by tokio's default thread name,
/// still run) [`EXIT_BACKSTOP`] later, it exits the same way. A program that goes on after
/// `serve()` returned, with its runtime alive or after dropping it, is left alone.
fn exit_backstop(tracker: Arc<Tracker>, crashing: bool) {
    let runtime = tokio::runtime::Handle::current();
    let code = if crashing { EXIT_CRASH } else { 0 };
    let exit = move |why: String| -> ! {
        tracing::error!("{why}");
        // The before_exit hook ran when serve() returned: it may have shut the log writer
        // down (its guard dropped), and this line is the only one that says why.
        if BEFORE_EXIT_RAN.load(std::sync::atomic::Ordering::Relaxed) {
            eprintln!("unwedge: {}", crate::text::Escaped(&why));
        }
        exit_now(code)
    };
    let spawned = std::thread::Builder::new()
        .name("unwedge-exit-backstop".into())
        .spawn(move || {
            // The watchdog has stopped: keep the requests' coarse clock moving, so that a poll
            // begun meanwhile (the runtime may go on serving) is timed from when it began.
            let until = Instant::now() + EXIT_BACKSTOP;
            while Instant::now() < until {
                tracker.tick(crate::watchdog::now_ns());
                std::thread::sleep(Duration::from_millis(10));
            }
            let blocked_for = EXIT_BACKSTOP - Duration::from_millis(100);
            if let Some((d, label)) = tracker.polling_longer_than(blocked_for) {
                exit(format!(
                    "{label} has blocked its thread for {:.1}s, past the drain deadline: the runtime cannot shut down; exiting with code {code}",
                    d.as_secs_f64()
                ));
            }
            drop(tracker);
            let watch_until = Instant::now() + RUNTIME_WATCH;
            let mut dropping_since: Option<Instant> = None;
            while Instant::now() < watch_until {
                std::thread::sleep(Duration::from_millis(100));
                // Shut down, and not done: a finished drop has joined the runtime's threads (a
                // program going on after it is left alone).
                if !(runtime_shut_down(&runtime) && threads_named(&RUNTIME_THREADS)) {
                    dropping_since = None;
                    continue;
                }
                let since = *dropping_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= EXIT_BACKSTOP {
                    exit(format!(
                        "the runtime has been shutting down for {:.1}s, waiting for blocking work (spawn_blocking) of a request abandoned at the drain deadline; exiting with code {code}",
                        since.elapsed().as_secs_f64()
                    ));
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the exit backstop thread");
    }
}

/// How long [`exit_backstop`] watches for a runtime whose drop waits for blocking work.
const RUNTIME_WATCH: Duration = Duration::from_secs(60);

/// The names the kernel shows (`comm`, cut to 15 bytes) for the threads of a tokio runtime
/// built with the default thread name (`#[tokio::main]`'s; `tokio-rt-worker` now,
/// `tokio-runtime-worker` before tokio 1.44): its workers and its blocking pool, the
/// `spawn_blocking` work included. (The thread that called `block_on` may be any; a runtime
/// given another name is never taken for one whose drop is stuck.)
const RUNTIME_THREADS: [&str; 2] = ["tokio-rt-worker", "tokio-runtime-w"];

/// Whether a thread of this process other than the calling one has one of the kernel names
/// `comms`.
fn threads_named(comms: &[&str]) -> bool {
    let me = rustix::thread::gettid().as_raw_nonzero().get().to_string();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return false;
    };
    tasks.flatten().any(|t| {
        t.file_name().to_str() != Some(me.as_str())
            && std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| comms.contains(&c.trim_end()))
    })
}

/// Whether `runtime` is shut down or its drop has begun: a task spawned on it is then
/// cancelled at once. (One that has not run within 50 ms: a live runtime, busy or blocked.)
fn runtime_shut_down(runtime: &tokio::runtime::Handle) -> bool {
    let probe = runtime.spawn(async {});
    let until = Instant::now() + Duration::from_millis(50);
    while !probe.is_finished() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(1));
    }
    if !probe.is_finished() {
        probe.abort();
        return false;
    }
    matches!(
        futures_util::FutureExt::now_or_never(probe),
        Some(Err(e)) if e.is_cancelled()
    )
}

/// How long an exit waits for the notify messages still queued (a report, `STOPPING=1`).
const NOTIFY_FLUSH: Duration = Duration::from_secs(1);

/// How long an exit waits for the [`Server::before_exit`] hook.
const BEFORE_EXIT_LIMIT: Duration = Duration::from_secs(5);

/// The hooks of [`Server::before_exit`] not run yet (one per `serve()` that was given one,
/// with its id), for whichever thread exits.
static BEFORE_EXIT: std::sync::Mutex<Vec<(u64, ExitHook)>> = std::sync::Mutex::new(Vec::new());

/// A hook has run: what is logged after it may go nowhere (its log writer's guard dropped).
static BEFORE_EXIT_RAN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Queues `hook`; its id, for [`run_before_exit`].
fn set_before_exit(hook: ExitHook) -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    BEFORE_EXIT
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((id, hook));
    id
}

/// Takes the [`Server::before_exit`] hook `only` off the queue, or every queued one (`None`),
/// in the order they were queued.
fn take_before_exit(only: Option<u64>) -> Vec<ExitHook> {
    let mut queued = BEFORE_EXIT.lock().unwrap_or_else(|p| p.into_inner());
    let (taken, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut *queued)
        .into_iter()
        .partition(|(id, _)| only.is_none_or(|only| *id == only));
    *queued = keep;
    taken.into_iter().map(|(_, hook)| hook).collect()
}

/// Runs the [`Server::before_exit`] hook `only` (the end of its `serve()`), or every hook not
/// run yet (`None`: the process exits), in the order given, on a thread of their own, waiting
/// for them at most [`BEFORE_EXIT_LIMIT`]; a second exit (another thread's) waits for the
/// first one's run. Each hook runs once.
fn run_before_exit(only: Option<u64>) {
    static RUNNING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _running = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
    {
        let hooks = take_before_exit(only);
        if hooks.is_empty() {
            return;
        }
        BEFORE_EXIT_RAN.store(true, std::sync::atomic::Ordering::Relaxed);
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("unwedge-before-exit".into())
            .spawn(move || {
                for hook in hooks {
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(hook)).is_err() {
                        tracing::error!("the before_exit hook panicked");
                    }
                }
                let _ = done.send(());
            });
        match spawned {
            Ok(_) => {
                if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    finished.recv_timeout(BEFORE_EXIT_LIMIT)
                {
                    tracing::error!(
                        "the before_exit hook has not returned after {BEFORE_EXIT_LIMIT:?}: exiting without it"
                    );
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot start the before_exit hook's thread"),
        }
    }
}

/// Flushes what can be flushed (the notify queue, the [`Server::before_exit`] hook, stdout,
/// stderr) and exits the process.
pub(crate) fn exit_now(code: u8) -> ! {
    if let Some(n) = notify::current() {
        n.flush(NOTIFY_FLUSH);
    }
    run_before_exit(None);
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(i32::from(code))
}

async fn bind_all(addrs: &[ListenAddr], origin: &str) -> Result<Vec<Listener>, ServeError> {
    let mut out = Vec::with_capacity(addrs.len());
    for a in addrs {
        out.push(listeners::bind(a, origin).await?);
    }
    Ok(out)
}

/// A flag set by SIGTERM and SIGINT, besides tokio's handlers (signal-hook chains them);
/// unregistered when dropped (when `serve()` returns).
struct StopSignalFlag {
    flag: Arc<std::sync::atomic::AtomicBool>,
    ids: Vec<signal_hook::SigId>,
}

impl StopSignalFlag {
    fn register() -> Self {
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ids = [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT]
            .into_iter()
            .filter_map(|sig| match signal_hook::flag::register(sig, flag.clone()) {
                Ok(id) => Some(id),
                Err(e) => {
                    tracing::warn!(signal = sig, error = %e, "cannot watch the signal from the watchdog thread");
                    None
                }
            })
            .collect();
        StopSignalFlag { flag, ids }
    }
}

impl Drop for StopSignalFlag {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

/// SIGTERM and SIGINT as one stream.
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn new() -> Result<Self, ServeError> {
        let install = |kind| {
            signal(kind)
                .map_err(|e| ServeError::Listen(format!("cannot install signal handler: {e}")))
        };
        Ok(Signals {
            term: install(SignalKind::terminate())?,
            int: install(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// The whole stack: health routes, request tracking, the panic guard, the app.
fn build_service<S: 'static>(
    #[allow(unused_mut)] mut app: S,
    guard: Option<crate::PanicLayer>,
    health_routes: bool,
    tracker: Arc<Tracker>,
) -> Stack<S> {
    #[cfg(feature = "axum")]
    prepare_router(&mut app);
    Stack::new(app, guard, health_routes, tracker)
}

/// Prepares an axum `Router` for serving once, as `axum::serve` does (`with_state(())`):
/// unprepared, a `Router` turns a handler into a route again for every request it routes to
/// that handler (a clone of the boxed handler and an allocation each time).
#[cfg(feature = "axum")]
fn prepare_router<S: 'static>(app: &mut S) {
    if let Some(router) = (app as &mut dyn std::any::Any).downcast_mut::<axum::Router>() {
        let unprepared = std::mem::replace(router, axum::Router::new());
        *router = unprepared.with_state(());
    }
}

/// At most one "accept failed" (or "at the connection limit") line per this long.
const ACCEPT_ERROR_EVERY: Duration = Duration::from_secs(10);

/// Something said at most once per [`ACCEPT_ERROR_EVERY`] (see `accept_loop`).
#[derive(Default)]
struct Seldom {
    last: Option<tokio::time::Instant>,
    /// Times it happened since it was last said.
    unsaid: u64,
}

impl Seldom {
    /// It happened: `Some(times not said since the last time)` when it is to be said now.
    fn due(&mut self) -> Option<u64> {
        let now = tokio::time::Instant::now();
        match self.last {
            Some(at) if now.duration_since(at) < ACCEPT_ERROR_EVERY => {
                self.unsaid += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.unsaid))
            }
        }
    }
}

/// How long a connection that has not sent its first request yet is still read after
/// shutdown begins: it was accepted, so its request is probably on the wire already, and
/// closing it now would reset it.
const FIRST_REQUEST_GRACE: Duration = Duration::from_millis(500);

/// How long an idle keep-alive connection may still bring one more request after shutdown or a
/// graceful crash begins: closing it at once would race with a client (or a client's pool)
/// reusing it, and reset that request. Measured: 100 ms still lost requests of pooled
/// connections on a loaded machine, 1 s none.
const KEEP_ALIVE_GRACE: Duration = Duration::from_millis(1000);

/// How connections are served.
#[derive(Clone)]
struct Conn {
    builder: auto::Builder<TokioExecutor>,
    /// A connection that delivered no new request in one such period is closed gracefully.
    idle_timeout: Option<Duration>,
    /// [`Server::max_connections`]: a permit per connection, and how many there are; `None`
    /// for no limit.
    slots: Option<(Arc<tokio::sync::Semaphore>, usize)>,
}

async fn accept_loop<S, RB>(
    listener: Listener,
    service: Stack<S>,
    conn: Conn,
    alive: tokio::sync::mpsc::Sender<()>,
    stop: stop::Stop,
) where
    S: Service<Request<Incoming>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    // Accept failures (EMFILE and friends) and the connection limit are said seldom: when the
    // process is out of descriptors or at its limit, every connection closed lets one accept
    // succeed before the next fails or waits, which must not write a line each.
    let (mut failures, mut at_limit) = (Seldom::default(), Seldom::default());
    let mut stopped = std::pin::pin!(stop.stopped());
    loop {
        // At the limit, wait for a free slot before accepting: new connections wait in the
        // listen backlog. The slot is taken once a connection is accepted, so that a listener
        // idle in `accept` holds none (the limit is for all listeners together).
        if let Some((slots, n)) = &conn.slots {
            if slots.available_permits() == 0 {
                if at_limit.due().is_some() {
                    tracing::warn!(
                        addr = %listener,
                        "at the connection limit ({n}): new connections wait in the listen backlog until one closes"
                    );
                }
                tokio::select! {
                    biased;
                    _ = stopped.as_mut() => break,
                    free = slots.acquire() => drop(free),
                }
            }
        }
        let stream = tokio::select! {
            biased;
            _ = stopped.as_mut() => break,
            r = listener.accept() => r,
        };
        // Its slot (another listener may have taken the one that was free: then this
        // connection, accepted, waits for the next).
        let slot = match (&stream, &conn.slots) {
            (Ok(_), Some((slots, _))) => match slots.clone().try_acquire_owned() {
                Ok(slot) => Some(slot),
                Err(_) => tokio::select! {
                    biased;
                    _ = stopped.as_mut() => break,
                    slot = slots.clone().acquire_owned() => slot.ok(),
                },
            },
            _ => None,
        };
        match stream {
            Ok(Stream::Tcp(s, peer)) => {
                let svc = service.clone();
                spawn_connection(s, Some(peer), svc, &conn, &stop, (alive.clone(), slot));
            }
            Ok(Stream::Unix(s)) => {
                spawn_connection(
                    s,
                    None,
                    service.clone(),
                    &conn,
                    &stop,
                    (alive.clone(), slot),
                );
            }
            Err(e) => {
                if let Some(unsaid) = failures.due() {
                    tracing::warn!(
                        addr = %listener,
                        error = %e,
                        "accept failed; retrying ({unsaid} more failures since the last such line)"
                    );
                }
                // Back off briefly instead of spinning.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    tracing::debug!(addr = %listener, "listener closed");
    drop(listener);
}

/// Serves one connection; on shutdown, lets it finish gracefully: a connection that has not
/// sent its first request gets [`FIRST_REQUEST_GRACE`] to send it, an idle keep-alive one the
/// grace carried by the stop signal for one more; then hyper's graceful shutdown answers the
/// request in progress (HTTP/1.1 with `Connection: close`, HTTP/2 with GOAWAY) and closes.
fn spawn_connection<I, S, RB>(
    io: I,
    peer: Option<std::net::SocketAddr>,
    service: Stack<S>,
    how: &Conn,
    stop: &stop::Stop,
    // Held while the connection lives: the drain's count, and its connection slot.
    alive: (
        tokio::sync::mpsc::Sender<()>,
        Option<tokio::sync::OwnedSemaphorePermit>,
    ),
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + std::os::fd::AsFd + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    let mut stopped = stop.stopped();
    let calls = Arc::new(Calls::new(stop.flag()));
    let svc = service.connection(calls.clone(), peer);
    let conn = how
        .builder
        .serve_connection_with_upgrades(TokioIo::new(socket::Socket::new(io, calls.clone())), svc)
        .into_owned();
    let idle_timeout = how.idle_timeout;
    tokio::spawn(async move {
        let _alive = alive;
        tokio::pin!(conn);
        // One timer per connection and period, none per request: a connection that delivered
        // no new request in a whole period (one that sends nothing, trickles a request head,
        // or sits idle between requests) is closed.
        let idle = idle_check(&calls, idle_timeout);
        let stopping = tokio::select! {
            r = conn.as_mut() => Err(r),
            grace = &mut stopped => Ok(grace),
            delivered = idle => {
                tracing::debug!("no request for the idle timeout; closing the connection");
                if delivered == 0 {
                    // Never a whole request head: nothing to finish (and hyper's graceful
                    // shutdown would wait for the first head).
                    return;
                }
                // At once when idle (a trickled head included), after the request in progress
                // otherwise: hyper knows which.
                conn.as_mut().graceful_shutdown();
                Err(conn.as_mut().await)
            }
        };
        let result = match stopping {
            Err(finished) => finished,
            Ok(keep_alive_grace) => {
                let at_stop = calls.count();
                let grace = if at_stop == 0 {
                    FIRST_REQUEST_GRACE
                } else {
                    keep_alive_grace
                };
                let until = tokio::time::Instant::now() + grace;
                let mut finished = None;
                while calls.count() == at_stop && tokio::time::Instant::now() < until {
                    tokio::select! {
                        r = conn.as_mut() => { finished = Some(r); break; }
                        () = calls.notify.notified() => {}
                        () = tokio::time::sleep_until(until) => {}
                    }
                }
                match finished {
                    Some(r) => r,
                    // Still no whole request head after the grace (a client trickling one, or
                    // silent): nothing to finish, and hyper's graceful shutdown would wait for
                    // the head, holding the drain until its deadline.
                    None if calls.count() == 0 => return,
                    None => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                }
            }
        };
        if let Err(e) = result {
            if calls.reset_on_close(&*e) {
                tracing::debug!(error = %e, "an HTTP/1.0 answer failed in its body: resetting the connection");
            } else {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        // `conn`, and the socket with it, dropped here: reset if said above.
    });
}

/// Resolves, with the number of requests delivered so far, once a whole `period` passed
/// without a new request on the connection counted by `calls`; never without a period.
///
/// Polled at every wake-up of its connection's task (each request, each chunk), so it polls
/// its timer only to arm it: after that, a wake-up costs one load of the timer's state (polling
/// the timer cost ~120 instructions per request). The timer keeps the task's waker it got
/// when armed (a task's waker does not change), so the deadline still wakes the task. The
/// arming poll is exempt from tokio's task budget (see inside).
async fn idle_check(calls: &Calls, period: Option<Duration>) -> u64 {
    let Some(period) = period else {
        return std::future::pending().await;
    };
    let sleep = tokio::time::sleep(period);
    tokio::pin!(sleep);
    let mut armed = false;
    let mut seen = calls.count();
    std::future::poll_fn(|cx| loop {
        if !armed {
            // Out of the task's budget: a budget-exhausted poll would return Pending without
            // creating the timer, and then nothing would ever wake this connection for it.
            let mut arm = std::pin::pin!(tokio::task::coop::unconstrained(sleep.as_mut()));
            if std::future::Future::poll(arm.as_mut(), cx).is_pending() {
                armed = true;
                return std::task::Poll::Pending;
            }
        } else if !sleep.is_elapsed() {
            return std::task::Poll::Pending;
        }
        let now = calls.count();
        if now == seen {
            return std::task::Poll::Ready(now);
        }
        seen = now;
        sleep.as_mut().reset(deadline_in(period));
        armed = false;
    })
    .await
}

/// How many requests a connection has delivered, with a wake-up for each once `serve()` is
/// stopping (none before: a request costs one counter increment and one load).
#[derive(Debug)]
struct Calls {
    count: std::sync::atomic::AtomicU64,
    notify: tokio::sync::Notify,
    /// `serve()`'s stop signal, set before any connection task sees it.
    stop: stop::StopFlag,
    /// An HTTP/1.0 request came on the connection: its answer's body, when a stream, ends
    /// with the connection's close (see [`socket`]).
    http10: std::sync::atomic::AtomicBool,
    /// Reset the socket when it is dropped ([`Calls::reset_on_close`]).
    reset: std::sync::atomic::AtomicBool,
}

impl Calls {
    fn new(stop: stop::StopFlag) -> Self {
        Calls {
            count: Default::default(),
            notify: Default::default(),
            stop,
            http10: Default::default(),
            reset: Default::default(),
        }
    }

    /// After the connection ended with `error`: whether its socket is reset rather than
    /// closed. So when an answer to an HTTP/1.0 request failed in its body (a panic, a
    /// stream's error): that body is delimited by the close, and a plain close would make
    /// the truncated answer look whole (see [`socket`]).
    fn reset_on_close(&self, error: &(dyn std::error::Error + 'static)) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let body_failed = std::iter::successors(Some(error), |e| e.source()).any(|e| {
            e.is::<crate::panic::BodyPanicked>()
                || e.downcast_ref::<hyper::Error>()
                    .is_some_and(hyper::Error::is_user)
        });
        let reset = body_failed && self.http10.load(Relaxed);
        if reset {
            self.reset.store(true, Relaxed);
        }
        reset
    }

    fn count(&self) -> u64 {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Counts a request; returns whether `serve()` is stopping (the answer must then close
    /// the connection).
    fn mark(&self) -> bool {
        // SeqCst on both sides (count then stop flag here; the drain reads the count only
        // after its `Stopped` saw the flag): either this sees the flag and notifies, or the
        // drain sees the new count.
        self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let stopping = self.stop.is_set();
        if stopping {
            // notify_one stores a permit when nobody waits yet: a waiter cannot miss it (a
            // stale permit only wakes the drain to check the count again).
            self.notify.notify_one();
        }
        stopping
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_deadline_too_far_for_the_clock_saturates() {
        let now = tokio::time::Instant::now();
        assert!(deadline_in(Duration::MAX) > now + Duration::from_secs(20 * 365 * 24 * 3600));
        let soon = deadline_in(Duration::from_secs(5));
        assert!(soon >= now + Duration::from_secs(5) && soon < now + Duration::from_secs(60));
    }
}
