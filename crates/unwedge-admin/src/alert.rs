//! [`Alerter`]: tells people when a worker crashed, hung or tainted its state, when the
//! supervisor gave up, and when a reload failed, through a webhook and/or a command.
//!
//! Delivery runs on its own task behind a bounded queue: [`Alerter::send`] never waits, so a
//! slow or dead webhook can never slow a restart. Each sink (the webhook, the command) then
//! has a backlog and delivery slots of its own, so a webhook that never answers cannot hold
//! back the command, nor a command that never exits the webhook. Events that do not fit the
//! queue or a sink's backlog, repeat within the de-duplication window or exceed the rate
//! limit are dropped and counted (`unwedge_alerts_dropped_total{reason}`); deliveries that fail
//! after their retries are logged and counted (`unwedge_alerts_failed_total{sink}`). The alerts
//! that must not be lost ([`AlertKind::is_urgent`]: `gave_up`, `reload_failed`) are never
//! de-duplicated or rate limited, have room of their own in the queue
//! ([`RESERVED_ALERT_SLOTS`]) and do not wait for routine deliveries in flight.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::metrics::Metrics;
use crate::status::{rfc3339, split_userinfo, UserInfoEnd};

/// What happened: the `kind` of an [`AlertEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AlertKind {
    /// A worker exited abnormally (a fatal panic, a signal, a non-zero exit).
    WorkerCrashed,
    /// A worker stopped heartbeating or answering probes and was killed.
    WorkerHung,
    /// A worker reported poisoned state or a wedge and is being replaced.
    StateTainted,
    /// The supervisor gave up (a worker failed to start more than `--max-restarts` times in a
    /// row, or the restart intensity was exceeded: the summary says which): it stops every
    /// worker and exits.
    GaveUp,
    /// A reload's new generation did not become ready; the old one keeps serving.
    ReloadFailed,
    /// A worker asked to stop did not exit within `--stop-timeout` and was killed: the
    /// requests it was still serving were cut off.
    StopTimedOut,
    /// A worker's resident memory grew above `--max-memory` and it is being replaced (a
    /// leak, or a limit set too low).
    MemoryLimit,
}

impl AlertKind {
    /// The snake-case name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::WorkerCrashed => "worker_crashed",
            AlertKind::WorkerHung => "worker_hung",
            AlertKind::StateTainted => "state_tainted",
            AlertKind::GaveUp => "gave_up",
            AlertKind::ReloadFailed => "reload_failed",
            AlertKind::StopTimedOut => "stop_timed_out",
            AlertKind::MemoryLimit => "memory_limit",
        }
    }

    /// Whether an alert of this kind must get through whatever came before it: `gave_up` (the
    /// last thing the supervisor says, often after a crash loop spent the rate limit) and
    /// `reload_failed` (an operator waits for it). These bypass de-duplication and the rate
    /// limit, have [`RESERVED_ALERT_SLOTS`] in the queue that other alerts cannot fill, and are
    /// delivered without waiting for routine deliveries in flight.
    ///
    /// ```
    /// use unwedge_admin::AlertKind;
    ///
    /// assert!(AlertKind::GaveUp.is_urgent());
    /// assert!(!AlertKind::WorkerCrashed.is_urgent());
    /// ```
    pub fn is_urgent(self) -> bool {
        matches!(self, AlertKind::GaveUp | AlertKind::ReloadFailed)
    }

    fn human(self) -> &'static str {
        match self {
            AlertKind::WorkerCrashed => "worker crashed",
            AlertKind::WorkerHung => "worker hung",
            AlertKind::StateTainted => "state tainted",
            // What it gave up on is the summary.
            AlertKind::GaveUp => "gave up",
            AlertKind::ReloadFailed => "reload failed",
            AlertKind::StopTimedOut => "stop timed out, worker killed",
            AlertKind::MemoryLimit => "worker over its memory limit, replaced",
        }
    }
}

impl fmt::Display for AlertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One thing worth telling a person about.
///
/// Two events with the same [`key`](AlertEvent::key) within the de-duplication window make
/// one alert. The key is the kind plus the summary unless set with
/// [`with_key`](AlertEvent::with_key): keep pids and times out of the summary so that a
/// crash loop makes one alert, not one per crash.
///
/// ```
/// use unwedge_admin::{AlertEvent, AlertKind};
///
/// let a = AlertEvent::new(AlertKind::WorkerCrashed, "w1: exit 70 after panic \"boom\"")
///     .with_worker("w1", Some(4242));
/// let b = AlertEvent::new(AlertKind::WorkerCrashed, "w1: exit 70 after panic \"boom\"")
///     .with_worker("w1", Some(4250));
/// assert_eq!(a.key(), b.key());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AlertEvent {
    /// What happened.
    pub kind: AlertKind,
    /// When, RFC 3339 UTC.
    pub time: String,
    /// One line for people.
    pub summary: String,
    /// The worker slot, if the event is about one.
    pub worker: Option<String>,
    /// The worker's pid, if the event is about one.
    pub pid: Option<u32>,
    /// Anything structured: the panic report, the exit record, the reload error.
    pub details: serde_json::Value,
    /// De-duplication key override.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dedupe_key: Option<String>,
}

impl AlertEvent {
    /// An event of `kind` happening now.
    pub fn new(kind: AlertKind, summary: impl Into<String>) -> Self {
        AlertEvent {
            kind,
            time: rfc3339(SystemTime::now()),
            summary: summary.into(),
            worker: None,
            pid: None,
            details: serde_json::Value::Null,
            dedupe_key: None,
        }
    }

    /// Says which worker it is about.
    pub fn with_worker(mut self, worker: impl Into<String>, pid: Option<u32>) -> Self {
        self.worker = Some(worker.into());
        self.pid = pid;
        self
    }

    /// Attaches structured details (a report, an exit record).
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }

    /// Sets the de-duplication key.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.dedupe_key = Some(key.into());
        self
    }

    /// The de-duplication key: the override, or `kind` plus `summary`.
    pub fn key(&self) -> String {
        match &self.dedupe_key {
            Some(k) => k.clone(),
            None => format!("{}\n{}", self.kind, self.summary),
        }
    }

    /// The Slack-compatible one-line `text`, with `&`, `<` and `>` escaped as Slack's markup
    /// asks (`&amp;`, `&lt;`, `&gt;`): a summary quotes panic messages and paths, often the
    /// client's choice, and `<!channel>` or `<https://evil.example|Runbook>` in it must not
    /// notify a channel or make a link.
    ///
    /// ```
    /// use unwedge_admin::{AlertEvent, AlertKind};
    ///
    /// let e = AlertEvent::new(AlertKind::WorkerCrashed, "w1: panic \"<!channel> & co\"");
    /// assert_eq!(e.text(), "unwedge: worker crashed: w1: panic \"&lt;!channel&gt; &amp; co\"");
    /// assert_eq!(e.summary, "w1: panic \"<!channel> & co\"");
    /// ```
    pub fn text(&self) -> String {
        let text = format!("unwedge: {}: {}", self.kind.human(), self.summary);
        text.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    }

    /// The JSON body a webhook receives: `{"text": …, "event": {…}}`: the `text` escaped for
    /// Slack (see [`text`](Self::text)), the `event` as it is.
    pub fn webhook_body(&self) -> serde_json::Value {
        serde_json::json!({ "text": self.text(), "event": self })
    }
}

/// Errors found when the alerter is built from its configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AlertError {
    /// `--alert-webhook` is not a usable URL.
    #[error("invalid --alert-webhook URL {url:?}: {reason}")]
    BadWebhook {
        /// What was given, without anything that may be a credential: user info, path, query
        /// and fragment are each shown as `…` (`https://…@hooks.example.com/…`).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `--alert-exec` is empty.
    #[error("invalid --alert-exec: the command is empty")]
    EmptyExec,
    /// An `https://` webhook, but the system's root certificates could not be loaded.
    #[error("cannot load root certificates for the https --alert-webhook: {0}")]
    Tls(String),
    /// Built outside a tokio runtime.
    #[error("the alerter needs a tokio runtime to run its delivery task")]
    NoRuntime,
}

/// Where alerts go and how hard to try.
///
/// Its `Debug` shows the webhook and the command as logs do, without what may be a
/// credential:
///
/// ```
/// let c = unwedge_admin::AlertConfig::new().webhook("https://bob:s3cr3t@h/s3cr3t");
/// assert!(!format!("{c:?}").contains("s3cr3t"));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct AlertConfig {
    /// `--alert-webhook URL`: POST the JSON event (`https://` needs the `https` feature).
    pub webhook: Option<String>,
    /// `--alert-exec CMD`: run with `sh -c`, the event JSON on stdin.
    pub exec: Option<String>,
    /// Events with the same key within this window make one alert (default 5 min), to each
    /// sink that was given it: one whose delivery failed or was dropped silences nothing.
    pub dedupe_window: Duration,
    /// At most this many alerts per [`rate_period`](Self::rate_period) (default 20).
    pub rate_limit: u32,
    /// See [`rate_limit`](Self::rate_limit) (default 60 s).
    pub rate_period: Duration,
    /// Webhook retries after the first attempt (default 3).
    pub retries: u32,
    /// Delay before the first retry, doubling each time (default 250 ms).
    pub backoff: Duration,
    /// Timeout of one webhook attempt, response included (default 5 s).
    pub webhook_timeout: Duration,
    /// The exec command is killed (its whole process group) if `sh` has not exited after this
    /// (default 10 s). Jobs it left in the background when it exited are not waited for.
    pub exec_timeout: Duration,
    /// Events waiting for delivery, in the queue [`Alerter::send`] fills and then in each
    /// sink's backlog; more are dropped (default 64). Urgent events
    /// ([`AlertKind::is_urgent`]) have [`RESERVED_ALERT_SLOTS`] more of their own.
    pub queue: usize,
    /// Deliveries running at once for each sink (default 4): a webhook that never answers
    /// holds the webhook's only, never the command's, and the other way round.
    pub max_in_flight: usize,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            webhook: None,
            exec: None,
            dedupe_window: Duration::from_secs(300),
            rate_limit: 20,
            rate_period: Duration::from_secs(60),
            retries: 3,
            backoff: Duration::from_millis(250),
            webhook_timeout: Duration::from_secs(5),
            exec_timeout: Duration::from_secs(10),
            queue: 64,
            max_in_flight: 4,
        }
    }
}

impl fmt::Debug for AlertConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlertConfig")
            .field("webhook", &self.webhook.as_deref().map(shown_url))
            .field("exec", &self.exec.as_deref().map(shown_command))
            .field("dedupe_window", &self.dedupe_window)
            .field("rate_limit", &self.rate_limit)
            .field("rate_period", &self.rate_period)
            .field("retries", &self.retries)
            .field("backoff", &self.backoff)
            .field("webhook_timeout", &self.webhook_timeout)
            .field("exec_timeout", &self.exec_timeout)
            .field("queue", &self.queue)
            .field("max_in_flight", &self.max_in_flight)
            .finish()
    }
}

impl AlertConfig {
    /// No sinks, default limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `--alert-webhook`.
    pub fn webhook(mut self, url: impl Into<String>) -> Self {
        self.webhook = Some(url.into());
        self
    }

    /// Sets `--alert-exec`.
    pub fn exec(mut self, cmd: impl Into<String>) -> Self {
        self.exec = Some(cmd.into());
        self
    }
}

/// Checks a webhook URL: `http://` or (with the `https` feature) `https://host[:port][/path]`.
///
/// The error quotes the URL without anything that may be a credential (the user info, and
/// the path and query, where Slack-style hooks and many others carry their secret): a
/// one-line usage error ends up in logs and journals.
///
/// ```
/// assert!(unwedge_admin::parse_webhook_url("http://127.0.0.1:9000/hook").is_ok());
/// let err = unwedge_admin::parse_webhook_url("ftp://bob:s3cr3t@h/s3cr3t?token=s3cr3t");
/// assert_eq!(
///     err.unwrap_err().to_string(),
///     "invalid --alert-webhook URL \"ftp://…@h/…\": unsupported scheme \"ftp\", \
///      expected http:// or https://"
/// );
/// ```
pub fn parse_webhook_url(url: &str) -> Result<Uri, AlertError> {
    let bad = |reason: &str| AlertError::BadWebhook {
        url: shown_url(url),
        reason: reason.to_owned(),
    };
    if !url.contains("://") {
        return Err(bad("expected an absolute URL like http://host:port/path"));
    }
    let uri: Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    match uri.scheme_str() {
        Some("http") => {}
        #[cfg(feature = "https")]
        Some("https") => {}
        #[cfg(not(feature = "https"))]
        Some("https") => {
            return Err(bad(
                "https needs unwedge-admin's `https` feature: point it at an http relay on \
                 this host, or use --alert-exec with curl",
            ))
        }
        Some(other) => {
            return Err(bad(&format!(
                "unsupported scheme {other:?}, expected http:// or https://"
            )))
        }
        None => return Err(bad("expected an absolute URL like http://host:port/path")),
    }
    match uri.host() {
        Some(h) if !h.is_empty() => {}
        _ => return Err(bad("no host")),
    }
    // `http` takes any text for a port (`host:99999`, or `alice:s3` of `alice:s3/cr3t@host`, a
    // password with a slash in it), then sees no port at all: the request would go to port 80.
    let authority = uri.authority().map_or("", |a| a.as_str());
    let host_port = authority.rsplit('@').next().unwrap_or("");
    if let Some((_, port)) = host_port
        .rsplit_once(':')
        .filter(|_| !host_port.ends_with(']'))
    {
        // `host:` with nothing after: port 80 by the URL rules, but far more often a port
        // variable that was not set (`http://$HOST:$PORT/`), and every alert would go astray.
        if port.is_empty() {
            return Err(bad(
                "empty port (an unset variable?): give the port, or no `:` for the scheme's",
            ));
        }
        if port.parse::<u16>().is_err() {
            return Err(bad("invalid port"));
        }
    }
    Ok(uri)
}

/// `uri` without its user info, and the `Authorization: Basic base64(user:password)` header
/// value its user info makes (percent-decoded, as curl sends it; marked sensitive), if it has
/// some.
fn basic_auth(uri: &Uri) -> (Uri, Option<HeaderValue>) {
    let Some((userinfo, host_port)) = uri.authority().and_then(|a| a.as_str().rsplit_once('@'))
    else {
        return (uri.clone(), None);
    };
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let decoded = |s: &str| percent_encoding::percent_decode_str(s).collect::<Vec<u8>>();
    let mut credentials = decoded(user);
    credentials.push(b':');
    credentials.extend(decoded(password));
    let encoded = base64::engine::general_purpose::STANDARD.encode(&credentials);
    let mut value =
        HeaderValue::try_from(format!("Basic {encoded}")).expect("base64 is a valid header value");
    value.set_sensitive(true);
    let mut parts = uri.clone().into_parts();
    parts.authority = Some(
        host_port
            .parse()
            .expect("the host and port of a valid authority are one"),
    );
    let uri = Uri::from_parts(parts).expect("the same URI without its user info is valid");
    (uri, Some(value))
}

/// What an error may quote of webhook URL `url`, which may not parse: its scheme, host and
/// port; user info, path, query and fragment are each replaced by `…`. In a URL that does not
/// parse, user info may hold any character (`/`, `?`, `@`): everything up to the last `@` is
/// taken for it.
fn shown_url(url: &str) -> String {
    let (scheme, user, rest) = split_userinfo(url, UserInfoEnd::LastAt);
    let user = if user.is_some() { "…@" } else { "" };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (host, tail) = rest.split_at(end);
    let tail = tail
        .chars()
        .next()
        .map_or(String::new(), |c| format!("{c}…"));
    format!("{scheme}{user}{host}{tail}")
}

/// Places in the alert queue kept for urgent alerts ([`AlertKind::is_urgent`]): routine
/// alerts filling [`AlertConfig::queue`] cannot take them.
pub const RESERVED_ALERT_SLOTS: usize = 4;

enum Msg {
    Event(AlertEvent),
    Flush(oneshot::Sender<()>),
}

/// Sends [`AlertEvent`]s to the configured sinks from its own task.
///
/// ```no_run
/// # async fn f() -> Result<(), unwedge_admin::AlertError> {
/// use std::sync::Arc;
/// use unwedge_admin::{AlertConfig, AlertEvent, AlertKind, Alerter, Metrics};
///
/// let metrics = Arc::new(Metrics::new("0.1.0"));
/// let alerter = Alerter::new(AlertConfig::new().webhook("http://127.0.0.1:9000/hook"), metrics)?;
/// alerter.send(AlertEvent::new(AlertKind::WorkerHung, "worker 1 missed 3 heartbeats"));
/// alerter.close(std::time::Duration::from_secs(5)).await; // before exiting
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Alerter {
    tx: mpsc::Sender<Msg>,
    /// Urgent events: a queue of their own, taken first.
    urgent: mpsc::Sender<AlertEvent>,
    metrics: Arc<Metrics>,
    commands: Arc<Commands>,
}

/// The `--alert-exec` commands: how many run, and the order to kill them (see
/// [`Alerter::close`]).
#[derive(Debug)]
struct Commands {
    /// Commands started and not yet reaped.
    running: watch::Sender<usize>,
    /// Set at the supervisor's exit: those running are killed, no more are started.
    kill: watch::Sender<bool>,
}

/// How long [`Alerter::close`] waits for the commands it killed to be reaped (they are
/// SIGKILLed: milliseconds).
const KILLED_REAP_WAIT: Duration = Duration::from_millis(500);

impl fmt::Debug for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Msg::Event(e) => f.debug_tuple("Event").field(&e.kind).finish(),
            Msg::Flush(_) => f.write_str("Flush"),
        }
    }
}

impl Alerter {
    /// Checks the configuration and starts the delivery task on the current tokio runtime.
    ///
    /// With no sink configured, events are accepted and dropped.
    pub fn new(config: AlertConfig, metrics: Arc<Metrics>) -> Result<Self, AlertError> {
        let webhook = config
            .webhook
            .as_deref()
            .map(parse_webhook_url)
            .transpose()?;
        // hyper's client sends no user info: it becomes an `Authorization` header.
        let (webhook, webhook_auth) = match webhook.map(|uri| basic_auth(&uri)) {
            Some((uri, auth)) => (Some(uri), auth),
            None => (None, None),
        };
        if let Some(cmd) = &config.exec {
            if cmd.trim().is_empty() {
                return Err(AlertError::EmptyExec);
            }
        }
        let handle = tokio::runtime::Handle::try_current().map_err(|_| AlertError::NoRuntime)?;
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let (urgent, urgent_rx) = mpsc::channel(RESERVED_ALERT_SLOTS);
        let client = WebClient::new(webhook.as_ref())?;
        let commands = Arc::new(Commands {
            running: watch::Sender::new(0),
            kill: watch::Sender::new(false),
        });
        let sinks = Arc::new(Sinks {
            webhook,
            webhook_auth,
            exec: config.exec.clone(),
            client,
            metrics: metrics.clone(),
            config: config.clone(),
            commands: commands.clone(),
            sent: std::sync::Mutex::new(HashMap::new()),
        });
        handle.spawn(Dispatcher::new(&handle, sinks, config).run(rx, urgent_rx));
        Ok(Alerter {
            tx,
            urgent,
            metrics,
            commands,
        })
    }

    /// Queues `event` for delivery and returns at once. Returns `false` (and counts
    /// `queue_full`) when the queue is full or the delivery task is gone. Urgent events
    /// ([`AlertKind::is_urgent`]) have [`RESERVED_ALERT_SLOTS`] of their own.
    pub fn send(&self, event: AlertEvent) -> bool {
        fn full<T>(e: mpsc::error::TrySendError<T>) -> bool {
            matches!(e, mpsc::error::TrySendError::Full(_))
        }
        let kind = event.kind;
        let sent = if kind.is_urgent() {
            self.urgent.try_send(event).map_err(full)
        } else {
            self.tx.try_send(Msg::Event(event)).map_err(full)
        };
        let Err(full) = sent else {
            return true;
        };
        let reason = if full { "queue_full" } else { "closed" };
        tracing::warn!(reason, %kind, "alert dropped");
        self.metrics.record_alert_dropped(reason);
        false
    }

    /// Waits until every event sent before this call was delivered or failed, for at most
    /// `timeout`. Returns `false` on timeout. Before the supervisor exits, call
    /// [`close`](Self::close) instead.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let (done_tx, done_rx) = oneshot::channel();
        tokio::time::timeout(timeout, async {
            if self.tx.send(Msg::Flush(done_tx)).await.is_err() {
                return false;
            }
            done_rx.await.is_ok()
        })
        .await
        .unwrap_or(false)
    }

    /// For the supervisor's exit: [`flush`](Self::flush) for at most `timeout`; then the
    /// `--alert-exec` commands still running are killed (each one's process group) and reaped,
    /// and no more are started, so that none is left behind, re-parented to init, once the
    /// supervisor is gone. A command whose `sh` already exited is done: jobs it left in the
    /// background on purpose (`curl … &`) are not killed. Returns `false` if alerts were still
    /// being delivered.
    pub async fn close(&self, timeout: Duration) -> bool {
        if self.flush(timeout).await {
            return true;
        }
        self.commands.kill.send_replace(true);
        let mut running = self.commands.running.subscribe();
        let _ = tokio::time::timeout(KILLED_REAP_WAIT, running.wait_for(|n| *n == 0)).await;
        false
    }
}

struct Sinks {
    /// The webhook's URL, without its user info.
    webhook: Option<Uri>,
    /// `Authorization: Basic …` made of the webhook URL's user info, if it had some.
    webhook_auth: Option<HeaderValue>,
    exec: Option<String>,
    client: WebClient,
    metrics: Arc<Metrics>,
    config: AlertConfig,
    commands: Arc<Commands>,
    /// When each sink was last given an alert of each key (see [`AlertEvent::key`]): the
    /// same alert is not given to it again within the dedupe window. Forgotten when that
    /// delivery fails: an alert that did not arrive silences nothing.
    sent: std::sync::Mutex<HashMap<(Sink, String), Instant>>,
}

/// A plain HTTP client, or (for `https://` webhooks) one with rustls and the system's roots.
enum WebClient {
    Http(Client<HttpConnector, Full<Bytes>>),
    #[cfg(feature = "https")]
    Https(Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>),
}

impl WebClient {
    fn new(webhook: Option<&Uri>) -> Result<Self, AlertError> {
        let builder = Client::builder(TokioExecutor::new());
        #[cfg(feature = "https")]
        if webhook.is_some_and(|u| u.scheme_str() == Some("https")) {
            // Name the provider: rustls cannot pick one by itself if another crate in the
            // build enables a second one.
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            // The system's roots; SSL_CERT_FILE / SSL_CERT_DIR override them.
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_provider_and_native_roots(provider)
                .map_err(|e| AlertError::Tls(e.to_string()))?
                .https_only()
                .enable_http1()
                .build();
            return Ok(WebClient::Https(builder.build(https)));
        }
        let _ = webhook;
        Ok(WebClient::Http(builder.build(HttpConnector::new())))
    }

    async fn request(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error> {
        match self {
            WebClient::Http(c) => c.request(req).await,
            #[cfg(feature = "https")]
            WebClient::Https(c) => c.request(req).await,
        }
    }
}

/// Urgent deliveries running at once for each sink besides its routine ones.
const URGENT_IN_FLIGHT: usize = 2;

/// The delivery task: takes events in order (urgent ones first), drops duplicates and the
/// excess over the rate limit, and hands each event to every sink's [`Lane`].
///
/// It never waits for a delivery: each sink has its own backlog and its own delivery slots,
/// so a sink that hangs (a webhook that never answers, a command that never exits) holds up
/// its own alerts only, never the other sink's.
struct Dispatcher {
    lanes: Vec<Lane>,
    sinks: Arc<Sinks>,
    config: AlertConfig,
    urgent_tasks: JoinSet<()>,
    recent: VecDeque<Instant>,
}

/// One sink's routine deliveries: a backlog of at most [`AlertConfig::queue`] events, taken
/// in order by a task of its own that runs at most [`AlertConfig::max_in_flight`] deliveries
/// at once; and [`URGENT_IN_FLIGHT`] places of its own for urgent deliveries.
struct Lane {
    sink: Sink,
    tx: mpsc::UnboundedSender<LaneMsg>,
    /// Places in the backlog (an event holds one until its delivery starts): an event that
    /// finds none is dropped for this sink.
    backlog: Arc<Semaphore>,
    urgent_in_flight: Arc<Semaphore>,
}

enum LaneMsg {
    /// An event, its place in the backlog, and when it was queued (its dedupe entry's time).
    Event(Arc<AlertEvent>, OwnedSemaphorePermit, Instant),
    /// Answered once every event before it was delivered or failed.
    Flush(oneshot::Sender<()>),
}

impl Lane {
    /// Starts the lane's task.
    fn start(
        handle: &tokio::runtime::Handle,
        sinks: Arc<Sinks>,
        sink: Sink,
        config: &AlertConfig,
    ) -> Lane {
        let (tx, rx) = mpsc::unbounded_channel();
        let permits = config.max_in_flight.clamp(1, u32::MAX as usize) as u32;
        handle.spawn(Lane::run(sinks, sink, permits, rx));
        Lane {
            sink,
            tx,
            backlog: Arc::new(Semaphore::new(
                config.queue.clamp(1, Semaphore::MAX_PERMITS),
            )),
            urgent_in_flight: Arc::new(Semaphore::new(URGENT_IN_FLIGHT)),
        }
    }

    async fn run(
        sinks: Arc<Sinks>,
        sink: Sink,
        permits: u32,
        mut rx: mpsc::UnboundedReceiver<LaneMsg>,
    ) {
        let in_flight = Arc::new(Semaphore::new(permits as usize));
        while let Some(msg) = rx.recv().await {
            match msg {
                LaneMsg::Event(event, place, queued) => {
                    let Ok(slot) = in_flight.clone().acquire_owned().await else {
                        return;
                    };
                    drop(place);
                    let sinks = sinks.clone();
                    tokio::spawn(async move {
                        // Forgotten unless delivered: also when the delivery panics.
                        let mut pending = Undelivered {
                            sinks: &sinks,
                            sink,
                            key: event.key(),
                            queued,
                            delivered: false,
                        };
                        pending.delivered = sinks.deliver(sink, &event).await;
                        drop(pending);
                        drop(slot);
                    });
                }
                LaneMsg::Flush(done) => {
                    // Holding every slot means every earlier delivery finished.
                    if let Ok(all) = in_flight.acquire_many(permits).await {
                        drop(all);
                    }
                    let _ = done.send(());
                }
            }
        }
    }

    /// Queues a routine delivery of `event`, queued at `queued`; `false` when the backlog is
    /// full.
    fn push(&self, event: &Arc<AlertEvent>, queued: Instant) -> bool {
        let Ok(place) = self.backlog.clone().try_acquire_owned() else {
            return false;
        };
        // The task ends only with the dispatcher, which owns `tx`.
        let _ = self.tx.send(LaneMsg::Event(event.clone(), place, queued));
        true
    }
}

impl Dispatcher {
    fn new(handle: &tokio::runtime::Handle, sinks: Arc<Sinks>, config: AlertConfig) -> Self {
        let lanes = sinks
            .for_event()
            .into_iter()
            .map(|sink| Lane::start(handle, sinks.clone(), sink, &config))
            .collect();
        Dispatcher {
            lanes,
            sinks,
            urgent_tasks: JoinSet::new(),
            recent: VecDeque::new(),
            config,
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Msg>, mut urgent_rx: mpsc::Receiver<AlertEvent>) {
        loop {
            let msg = tokio::select! {
                biased;
                Some(event) = urgent_rx.recv() => {
                    self.start_urgent(event);
                    continue;
                }
                msg = rx.recv() => match msg {
                    Some(msg) => msg,
                    None => break,
                },
            };
            match msg {
                Msg::Event(event) => self.routine(event),
                Msg::Flush(done) => {
                    let mut answers = Vec::with_capacity(self.lanes.len());
                    for lane in &self.lanes {
                        let (tx, rx) = oneshot::channel();
                        if lane.tx.send(LaneMsg::Flush(tx)).is_ok() {
                            answers.push(rx);
                        }
                    }
                    for answer in answers {
                        let _ = answer.await;
                    }
                    while self.urgent_tasks.join_next().await.is_some() {}
                    let _ = done.send(());
                }
            }
        }
        // The alerter is gone: let urgent deliveries already started finish.
        while self.urgent_tasks.join_next().await.is_some() {}
    }

    /// Forgets the alerts sent before the rate limit's window ending `now`.
    fn prune(&mut self, now: Instant) {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.config.rate_period)
        {
            self.recent.pop_front();
        }
    }

    /// Delivers an urgent event at once: no de-duplication, no rate limit, no waiting for
    /// routine deliveries.
    fn start_urgent(&mut self, event: AlertEvent) {
        // Outside the rate limit: neither refused nor counted against routine alerts.
        while self.urgent_tasks.try_join_next().is_some() {}
        let event = Arc::new(event);
        for lane in &self.lanes {
            let (sinks, event, sink) = (self.sinks.clone(), event.clone(), lane.sink);
            let slots = lane.urgent_in_flight.clone();
            self.urgent_tasks.spawn(async move {
                let Ok(_permit) = slots.acquire_owned().await else {
                    return;
                };
                sinks.deliver(sink, &event).await;
            });
        }
    }

    fn routine(&mut self, event: AlertEvent) {
        let now = Instant::now();
        let window = self.config.dedupe_window;
        let key = event.key();
        // The sinks that were not given this alert within the window (or whose delivery of
        // it failed since).
        let due: Vec<usize> = {
            let mut sent = self.sinks.lock_sent();
            sent.retain(|_, t| now.duration_since(*t) < window);
            (0..self.lanes.len())
                .filter(|&i| !sent.contains_key(&(self.lanes[i].sink, key.clone())))
                .collect()
        };
        if due.is_empty() {
            tracing::debug!(kind = %event.kind, "duplicate alert suppressed");
            self.sinks.metrics.record_alert_dropped("duplicate");
            return;
        }
        self.prune(now);
        if self.recent.len() >= self.config.rate_limit as usize {
            tracing::warn!(kind = %event.kind, summary = %event.summary, "alert rate limit reached, alert dropped");
            self.sinks.metrics.record_alert_dropped("rate_limited");
            return;
        }
        self.recent.push_back(now);
        let event = Arc::new(event);
        for lane in due.into_iter().map(|i| &self.lanes[i]) {
            self.sinks.lock_sent().insert((lane.sink, key.clone()), now);
            if !lane.push(&event, now) {
                tracing::warn!(sink = lane.sink.as_str(), kind = %event.kind, "alert dropped: this sink's deliveries are backed up");
                self.sinks.metrics.record_alert_dropped("queue_full");
                self.sinks.forget(lane.sink, &key, now);
            }
        }
    }
}

/// A routine delivery under way: forgets its dedupe entry when dropped undelivered (failed,
/// or its task panicked or was cancelled), so that it silences nothing.
struct Undelivered<'a> {
    sinks: &'a Sinks,
    sink: Sink,
    key: String,
    queued: Instant,
    delivered: bool,
}

impl Drop for Undelivered<'_> {
    fn drop(&mut self) {
        if !self.delivered {
            self.sinks.forget(self.sink, &self.key, self.queued);
        }
    }
}

/// Where an alert goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Sink {
    Webhook,
    Exec,
}

impl Sink {
    /// Its name in metrics and logs.
    fn as_str(self) -> &'static str {
        match self {
            Sink::Webhook => "webhook",
            Sink::Exec => "exec",
        }
    }
}

impl Sinks {
    fn lock_sent(&self) -> std::sync::MutexGuard<'_, HashMap<(Sink, String), Instant>> {
        // Inserts and removes only: poison carries no meaning.
        self.sent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `sink` did not get the alert of `key` queued at `queued` (its delivery failed, or it was
    /// dropped before): the next such alert goes to it, within the dedupe window or not. An
    /// entry of a later alert of that key stays.
    fn forget(&self, sink: Sink, key: &str, queued: Instant) {
        let mut sent = self.lock_sent();
        let entry = (sink, key.to_owned());
        if sent.get(&entry) == Some(&queued) {
            sent.remove(&entry);
        }
    }

    /// The sinks configured.
    fn for_event(&self) -> Vec<Sink> {
        let mut sinks = Vec::with_capacity(2);
        if self.webhook.is_some() {
            sinks.push(Sink::Webhook);
        }
        if self.exec.is_some() {
            sinks.push(Sink::Exec);
        }
        sinks
    }

    /// Delivers `event` to `sink`; whether it was.
    async fn deliver(&self, sink: Sink, event: &AlertEvent) -> bool {
        match sink {
            Sink::Webhook => self.deliver_webhook(event).await,
            Sink::Exec => self.deliver_exec(event).await,
        }
    }

    async fn deliver_webhook(&self, event: &AlertEvent) -> bool {
        let uri = self.webhook.clone().expect("webhook configured");
        let body =
            Bytes::from(serde_json::to_vec(&event.webhook_body()).expect("event serializes"));
        let mut delay = self.config.backoff;
        let mut last_error = String::new();
        for attempt in 0..=self.config.retries {
            if attempt > 0 {
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2);
            }
            let mut req = Request::post(uri.clone());
            if let Some(auth) = &self.webhook_auth {
                req = req.header(http::header::AUTHORIZATION, auth.clone());
            }
            let req = req
                .header(http::header::CONTENT_TYPE, "application/json")
                .header(
                    http::header::USER_AGENT,
                    concat!("unwedge/", env!("CARGO_PKG_VERSION")),
                )
                .body(Full::new(body.clone()))
                .expect("a POST with a valid URI builds");
            let attempt_result = tokio::time::timeout(self.config.webhook_timeout, async {
                let resp = self
                    .client
                    .request(req)
                    .await
                    .map_err(|e| error_chain(&e, &uri))?;
                let status = resp.status();
                discard_answer(resp.into_body()).await;
                Ok::<StatusCode, String>(status)
            })
            .await;
            match attempt_result {
                Ok(Ok(status)) if status.is_success() => {
                    self.metrics.record_alert_sent("webhook");
                    return true;
                }
                Ok(Ok(status)) => {
                    last_error = format!("HTTP {status}");
                    // A 4xx other than 429 will not get better by retrying.
                    if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS {
                        break;
                    }
                }
                Ok(Err(e)) => last_error = e,
                Err(_) => {
                    last_error = format!("no answer within {:?}", self.config.webhook_timeout)
                }
            }
        }
        // Never the path: for Slack-style hooks it is the credential.
        tracing::warn!(webhook = %origin(&uri), kind = %event.kind, error = %last_error, "alert webhook failed");
        self.metrics.record_alert_failed("webhook");
        false
    }

    async fn deliver_exec(&self, event: &AlertEvent) -> bool {
        let cmd = self.exec.as_deref().expect("exec configured");
        match run_exec(cmd, event, self.config.exec_timeout, &self.commands).await {
            Ok(()) => {
                self.metrics.record_alert_sent("exec");
                true
            }
            Err(e) => {
                // Never the whole command: its arguments may hold a token.
                tracing::warn!(command = %shown_command(cmd), kind = %event.kind, error = %e, "alert command failed");
                self.metrics.record_alert_failed("exec");
                false
            }
        }
    }
}

/// What logs may show of an `--alert-exec` command: its first word, followed by ` …` when
/// there is more (`curl …`), since the arguments may hold a token
/// (`-H "Authorization: Bearer …"`); a first word that sets a variable (`TOKEN=… notify`) is
/// shown as `…`.
fn shown_command(cmd: &str) -> String {
    let mut words = cmd.split_whitespace();
    let first = words.next().unwrap_or("");
    let more = if words.next().is_some() { " …" } else { "" };
    if first.contains('=') {
        "…".to_owned()
    } else {
        format!("{first}{more}")
    }
}

/// How much of a webhook's answer is read (and thrown away): only its status is used.
const WEBHOOK_ANSWER_READ: usize = 16 * 1024;

/// How long an `--alert-exec` command's stderr is still read once `sh` exited: a job left
/// in the background may hold it open for ever.
const STDERR_GRACE: Duration = Duration::from_millis(200);

/// How much of an `--alert-exec` command's stderr is kept: its end, for the last line.
const STDERR_KEPT: usize = 4 * 1024;

/// Reads and drops a webhook's answer, at most [`WEBHOOK_ANSWER_READ`] bytes of it: a short
/// answer is read to its end so that the connection can be reused; a longer one is left
/// unread, and dropping `body` then closes the connection, so the supervisor never holds
/// (nor waits for) a body of any size.
async fn discard_answer(mut body: hyper::body::Incoming) {
    let mut read = 0;
    while read <= WEBHOOK_ANSWER_READ {
        match body.frame().await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
            Some(Err(_)) | None => return,
        }
    }
}

/// The end of a stream: the last `keep` bytes written to it.
#[derive(Debug)]
struct Tail {
    buf: VecDeque<u8>,
    keep: usize,
}

impl Tail {
    fn new(keep: usize) -> Self {
        Tail {
            buf: VecDeque::with_capacity(keep),
            keep,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let bytes = &bytes[bytes.len().saturating_sub(self.keep)..];
        let over = (self.buf.len() + bytes.len()).saturating_sub(self.keep);
        self.buf.drain(..over);
        self.buf.extend(bytes);
    }

    /// Reads `from` to its end (or its first error), keeping the last bytes only: the
    /// writer is never blocked on a full pipe, and no amount of output grows memory.
    async fn drain(&mut self, mut from: impl tokio::io::AsyncRead + Unpin) {
        let mut chunk = [0u8; 8192];
        while let Ok(n @ 1..) = from.read(&mut chunk).await {
            self.push(&chunk[..n]);
        }
    }

    /// The last line kept, trimmed.
    fn last_line(&self) -> String {
        let (a, b) = self.buf.as_slices();
        let text = String::from_utf8_lossy(&[a, b].concat()).into_owned();
        text.lines().last().unwrap_or("").trim().to_owned()
    }
}

/// `scheme://host:port` of a webhook URL, what logs may show of it: its path and query (for
/// Slack-style hooks, the credential) and any user info are left out.
fn origin(uri: &Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("http");
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    let host = uri.host().unwrap_or("?");
    format!("{scheme}://{host}:{port}")
}

/// `error` with its causes, `outer: inner: innermost` (hyper's own message alone, `client
/// error (Connect)`, does not say what went wrong), the webhook's path and query replaced
/// by `/…` should a cause quote them.
fn error_chain(error: &(dyn std::error::Error + 'static), uri: &Uri) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let more = e.to_string();
        // Some errors repeat their cause in their own message.
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = e.source();
    }
    match uri.path_and_query().map(|p| p.as_str()) {
        Some(secret) if secret.len() > 1 => text.replace(secret, "/…"),
        _ => text,
    }
}

/// Runs `sh -c CMD` in its own process group with the event on stdin; kills the group on
/// timeout, or when `commands` says the supervisor is exiting, and reaps it. Once `sh`
/// exited, its exit status is the result: jobs it left running in the background are left
/// alone.
async fn run_exec(
    cmd: &str,
    event: &AlertEvent,
    timeout: Duration,
    commands: &Commands,
) -> Result<(), String> {
    let mut kill = commands.kill.subscribe();
    if *kill.borrow() {
        return Err("not run: the supervisor is exiting".to_owned());
    }
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("UNWEDGE_ALERT_KIND", event.kind.as_str())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start sh: {e}"))?;
    commands.running.send_modify(|n| *n += 1);
    // Counted down however this ends (a cancelled delivery too).
    let _running = RunningCommand(&commands.running);
    let pid = child.id();
    let json = serde_json::to_vec(event).expect("event serializes");
    let mut stdin = child.stdin.take().expect("stdin piped");
    let stderr = child.stderr.take().expect("stderr piped");
    // A command that does not read its stdin is fine: ignore EPIPE.
    let mut feed = Box::pin(async move {
        let _ = stdin.write_all(&json).await;
    });
    let mut err = Tail::new(STDERR_KEPT);
    let mut drain = Box::pin(err.drain(stderr));
    let (mut fed, mut drained) = (false, false);
    // Until `sh` exits, not until its stderr closes: a job it left in the background
    // (`curl … &`) may hold stderr open long after.
    let exited = async {
        loop {
            tokio::select! {
                status = child.wait() => break status,
                () = &mut feed, if !fed => fed = true,
                () = &mut drain, if !drained => drained = true,
            }
        }
    };
    // An alerter dropped without `close` kills nothing: that wait never ends.
    let exiting = async {
        if kill.wait_for(|k| *k).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let ended = tokio::select! {
        ended = tokio::time::timeout(timeout, exited) => {
            ended.map_err(|_| format!("timed out after {timeout:?}, killed"))
        }
        () = exiting => Err("still running at the supervisor's exit, killed".to_owned()),
    };
    let status = match ended {
        Ok(status) => status,
        Err(why) => {
            if let Some(pid) = pid
                .and_then(|p| i32::try_from(p).ok())
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            // Reaped here rather than left to the runtime: the supervisor may exit right after.
            let _ = tokio::time::timeout(KILLED_REAP_WAIT, child.wait()).await;
            return Err(why);
        }
    };
    drop(feed);
    let status = status.map_err(|e| e.to_string())?;
    // `sh` exited, its status decides: its stderr gets a moment to end (the last line of a
    // failure), a background job holding it open is not waited for, nor killed.
    if !drained {
        let _ = tokio::time::timeout(STDERR_GRACE, &mut drain).await;
    }
    drop(drain);
    if status.success() {
        Ok(())
    } else {
        Err(format!("{status}: {}", err.last_line()))
    }
}

/// One `--alert-exec` command running: counted in [`Commands::running`] until dropped.
struct RunningCommand<'a>(&'a watch::Sender<usize>);

impl Drop for RunningCommand<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_quote_no_part_of_a_webhook_url_that_may_be_a_credential() {
        for (url, shown) in [
            ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
            ("http://h/", "http://h/…"),
            ("https://u:p@h:1/a/b?t=x#f", "https://…@h:1/…"),
            ("http://h?t=x", "http://h?…"),
            ("http://h#f", "http://h#…"),
            ("http://u:p/a?b#c@h/x", "http://…@h/…"),
            ("u:p@h/x", "…@h/…"),
            ("not a url", "not a url"),
            ("x?u=http://u:p@h/", "…@h/…"),
            ("", ""),
        ] {
            assert_eq!(shown_url(url), shown, "{url}");
        }
    }

    #[test]
    fn a_port_that_is_no_port_is_refused() {
        for ok in [
            "http://h:8080/x",
            "http://h/x",
            "http://[::1]:8080/x",
            "http://[::1]/x",
            "http://u:p@h:1/x",
        ] {
            assert!(parse_webhook_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://h:99999/x",
            "http://h:8o/x",
            "http://alice:s3/cr3t@h/x",
        ] {
            let err = parse_webhook_url(bad).unwrap_err().to_string();
            assert!(err.ends_with(": invalid port"), "{bad}: {err}");
        }
        for empty in ["http://h:/x", "http://127.0.0.1:/x", "http://u:p@h:/x"] {
            let err = parse_webhook_url(empty).unwrap_err().to_string();
            assert!(
                err.contains("empty port (an unset variable?)"),
                "{empty}: {err}"
            );
        }
    }

    #[test]
    fn logs_show_only_the_first_word_of_a_command() {
        for (cmd, shown) in [
            (
                "curl -fsS -H \"Authorization: Bearer s3cr3t\" https://h/x",
                "curl …",
            ),
            (
                "  /usr/local/bin/page-oncall  ",
                "/usr/local/bin/page-oncall",
            ),
            ("TOKEN=s3cr3t notify", "…"),
            ("TOKEN=s3cr3t", "…"),
        ] {
            assert_eq!(shown_command(cmd), shown, "{cmd}");
        }
    }

    #[test]
    fn logs_show_only_the_webhooks_origin() {
        let uri: Uri = "https://hooks.example.com/services/T0/B0/s3cr3t?token=x"
            .parse()
            .unwrap();
        assert_eq!(origin(&uri), "https://hooks.example.com:443");
        let uri: Uri = "http://127.0.0.1:9000/hook/s3cr3t".parse().unwrap();
        assert_eq!(origin(&uri), "http://127.0.0.1:9000");
        let uri: Uri = "http://[::1]/x".parse().unwrap();
        assert_eq!(origin(&uri), "http://[::1]:80");
    }

    #[derive(Debug)]
    struct Quoting(std::io::Error);

    impl fmt::Display for Quoting {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("cannot reach http://h:1/hook/s3cr3t")
        }
    }

    impl std::error::Error for Quoting {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn the_error_chain_is_logged_without_the_path() {
        let uri: Uri = "http://h:1/hook/s3cr3t".parse().unwrap();
        let e = Quoting(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let text = error_chain(&e, &uri);
        assert_eq!(text, "cannot reach http://h:1/…: connection refused");
    }

    #[test]
    fn a_webhook_urls_user_info_becomes_basic_credentials() {
        for (url, bare, auth) in [
            (
                "http://alice:s3cret@h:1/x?y",
                "http://h:1/x?y",
                Some("Basic YWxpY2U6czNjcmV0"),
            ),
            // Percent-decoded, as curl does: `s3/c:r@t`.
            (
                "https://al%69ce:s3%2Fc%3Ar%40t@h/",
                "https://h/",
                Some("Basic YWxpY2U6czMvYzpyQHQ="),
            ),
            ("http://bob@h/", "http://h/", Some("Basic Ym9iOg==")),
            ("http://h:1/x", "http://h:1/x", None),
        ] {
            let (uri, header) = basic_auth(&parse_webhook_url(url).unwrap());
            assert_eq!(uri.to_string(), bare, "{url}");
            assert_eq!(header.as_ref().map(|h| h.to_str().unwrap()), auth, "{url}");
            assert!(header.is_none_or(|h| h.is_sensitive()));
        }
    }

    #[test]
    fn a_tail_keeps_the_last_bytes_only() {
        let mut tail = Tail::new(8);
        tail.push(b"abc");
        tail.push(b"defghij");
        assert_eq!(tail.buf.iter().copied().collect::<Vec<_>>(), b"cdefghij");
        tail.push(&[b'x'; 100]);
        tail.push(b"\nlast\n");
        assert_eq!(tail.buf.len(), 8);
        assert_eq!(tail.last_line(), "last");
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever a summary quotes (a panic message, a path: the client's choice), the text
        /// a chat receives has no `<` or `>` (`<!channel>` would notify everyone, `<url|x>`
        /// make a link), and reads back as the summary.
        #[test]
        fn a_summary_never_makes_chat_markup(summary in "([<>&!|a-z ;]|&amp;|&lt;|é|日本|🦀|\r|\n)*") {
            let text = AlertEvent::new(AlertKind::WorkerCrashed, summary.clone()).text();
            prop_assert!(!text.contains(['<', '>']), "{text}");
            let back = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&");
            prop_assert_eq!(back.strip_prefix("unwedge: worker crashed: "), Some(summary.as_str()));
        }
    }
}
