//! The engine: workers (closed model) or a scheduler (open model), one hyper HTTP/1.1
//! connection per in-flight request.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::{CONNECTION, HOST};
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::{schedule, ConnectionMode, LoadConfig, LoadModel, RequestSpec, StatusClass};
use crate::outcome::{classify_error, error_chain, FailureKind};
use crate::report::{empty_histogram, LatencySummary, LoadReport, Progress, RequestCounts, Sample};
use crate::LoadError;

type Sender = SendRequest<Full<Bytes>>;

const SHARDS: usize = 16;
const SAMPLES_PER_KIND: usize = 3;
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// A run in progress: watch its counters, stop it early, or wait for its report.
///
/// Dropping a `Running` does not stop the run; call [`stop`](Self::stop) for that.
#[derive(Debug)]
pub struct Running {
    progress: watch::Receiver<Progress>,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<LoadReport>,
}

impl Running {
    /// A watch channel of the counters, updated every 100 ms and once at the end
    /// (`done == true`).
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// Stops issuing requests; those in flight still finish (each within the timeout).
    pub fn stop(&self) {
        self.shared.stop();
    }

    /// Waits for the run to end and returns its report.
    pub async fn finish(self) -> LoadReport {
        self.task.await.expect("the load run task never panics")
    }
}

/// Starts a run on the current tokio runtime and returns at once.
///
/// ```no_run
/// # async fn demo() -> Result<(), unwedge_load::LoadError> {
/// use std::time::Duration;
/// let config = unwedge_load::LoadConfig::new("http://127.0.0.1:3000/")?
///     .concurrency(8)
///     .duration(Duration::from_secs(10));
/// let running = unwedge_load::start(config)?;
/// let mut progress = running.progress();
/// while progress.changed().await.is_ok() {
///     let p = progress.borrow_and_update().clone();
///     eprintln!("{} requests, {} unexpected", p.total, p.unexpected_failures());
///     if p.done { break; }
/// }
/// println!("{}", running.finish().await);
/// # Ok(()) }
/// ```
pub fn start(config: LoadConfig) -> Result<Running, LoadError> {
    config.validate()?;
    let specs = config.mix();
    let order = schedule(&specs);
    let (tx, rx) = watch::channel(Progress::default());
    let started = Instant::now();
    let shared = Arc::new(Shared {
        addr: config.target.addr(),
        host: HeaderValue::from_str(config.target.host()).map_err(|_| {
            LoadError::Config(format!(
                "host `{}` is not a valid header",
                config.target.host()
            ))
        })?,
        counts: (0..specs.len()).map(|_| SpecCounters::default()).collect(),
        specs,
        order,
        started,
        deadline: config.duration.and_then(|d| started.checked_add(d)),
        count: config.count,
        issued: AtomicU64::new(0),
        stopped: AtomicBool::new(false),
        stop_notify: Notify::new(),
        by_status: (0..1000).map(|_| AtomicU64::new(0)).collect(),
        failures: Default::default(),
        finished: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        connections: AtomicU64::new(0),
        histograms: (0..SHARDS).map(|_| Mutex::new(empty_histogram())).collect(),
        samples: Mutex::new(Vec::new()),
        config,
    });
    let task = tokio::spawn(drive(shared.clone(), tx));
    Ok(Running {
        progress: rx,
        shared,
        task,
    })
}

/// Runs a load to its end and returns the report.
///
/// ```no_run
/// # async fn demo() -> Result<(), unwedge_load::LoadError> {
/// let config = unwedge_load::LoadConfig::new("http://127.0.0.1:3000/")?.count(1000);
/// let report = unwedge_load::run(config).await?;
/// assert_eq!(report.unexpected_failures(), 0, "{report}");
/// # Ok(()) }
/// ```
pub async fn run(config: LoadConfig) -> Result<LoadReport, LoadError> {
    Ok(start(config)?.finish().await)
}

#[derive(Debug, Default)]
struct SpecCounters {
    total: AtomicU64,
    ok: AtomicU64,
    expected: AtomicU64,
    unexpected: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    config: LoadConfig,
    addr: SocketAddr,
    host: HeaderValue,
    specs: Vec<RequestSpec>,
    counts: Vec<SpecCounters>,
    order: Vec<usize>,
    started: Instant,
    deadline: Option<Instant>,
    count: Option<u64>,
    issued: AtomicU64,
    stopped: AtomicBool,
    stop_notify: Notify,
    /// Responses by status code (index = code: every code hyper reads, 100–999).
    by_status: Vec<AtomicU64>,
    /// ok, expected, unexpected status, then one per [`FailureKind`].
    failures: [AtomicU64; 7],
    finished: AtomicU64,
    in_flight: AtomicU64,
    connections: AtomicU64,
    histograms: Vec<Mutex<Histogram<u64>>>,
    samples: Mutex<Vec<Sample>>,
}

const OK: usize = 0;
const EXPECTED: usize = 1;
const UNEXPECTED_STATUS: usize = 2;
const FAILURE_BASE: usize = 3;

/// What one exchange ended with.
enum Outcome {
    Response(u16),
    Failed(FailureKind, String),
}

impl Shared {
    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.stop_notify.notify_waiters();
    }

    fn over(&self) -> bool {
        self.stopped.load(Ordering::Relaxed) || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Takes the next request slot, or `None` when a bound is reached.
    fn claim(&self) -> Option<usize> {
        if self.over() {
            return None;
        }
        let i = self.issued.fetch_add(1, Ordering::Relaxed);
        if self.count.is_some_and(|n| i >= n) {
            return None;
        }
        Some(self.order[(i % self.order.len() as u64) as usize])
    }

    fn request(&self, spec: &RequestSpec) -> Request<Full<Bytes>> {
        let mut builder = Request::builder()
            .method(spec.method().clone())
            .uri(spec.path())
            .header(HOST, self.host.clone());
        if self.config.connections == ConnectionMode::Fresh {
            builder = builder.header(CONNECTION, HeaderValue::from_static("close"));
        }
        for (name, value) in spec.headers() {
            builder = builder.header(name, value);
        }
        builder
            .body(Full::new(spec.body_bytes().clone()))
            .expect("method and path were checked when the config was validated")
    }

    async fn connect(&self) -> Result<Sender, Outcome> {
        let stream = TcpStream::connect(self.addr).await.map_err(failed)?;
        self.connections.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(failed)?;
        // Errors of the connection itself surface through `send_request`.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// One request/response on `conn` (opening one if needed). Leaves `conn` `None` unless the
    /// connection can carry another request.
    async fn exchange(&self, conn: &mut Option<Sender>, spec: &RequestSpec) -> Outcome {
        if let Some(sender) = conn.as_mut() {
            // A connection the server closed while idle: open another, nothing was sent.
            if sender.ready().await.is_err() {
                *conn = None;
            }
        }
        let mut sender = match conn.take() {
            Some(s) => s,
            None => match self.connect().await {
                Ok(s) => s,
                Err(outcome) => return outcome,
            },
        };
        let response = match sender.send_request(self.request(spec)).await {
            Ok(r) => r,
            Err(e) => return failed(e),
        };
        let status = response.status().as_u16();
        let close = response
            .headers()
            .get(CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        if let Err(e) = response.into_body().collect().await {
            return failed(e);
        }
        if self.config.connections == ConnectionMode::KeepAlive && !close {
            *conn = Some(sender);
        }
        Outcome::Response(status)
    }

    /// Runs one request with the timeout and records it, latency counted from `since`.
    async fn one(
        &self,
        conn: &mut Option<Sender>,
        spec_index: usize,
        since: Instant,
        shard: usize,
    ) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let spec = &self.specs[spec_index];
        let outcome =
            match tokio::time::timeout(self.config.timeout, self.exchange(conn, spec)).await {
                Ok(o) => o,
                Err(_) => {
                    *conn = None;
                    Outcome::Failed(
                        FailureKind::Timeout,
                        format!("no complete response within {:?}", self.config.timeout),
                    )
                }
            };
        let latency = since.elapsed();
        self.record(spec_index, outcome, latency, shard);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    fn record(&self, spec_index: usize, outcome: Outcome, latency: Duration, shard: usize) {
        let spec = &self.specs[spec_index];
        let counts = &self.counts[spec_index];
        counts.total.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Outcome::Response(status) => {
                self.by_status[usize::from(status).min(999)].fetch_add(1, Ordering::Relaxed);
                let micros = u64::try_from(latency.as_micros())
                    .unwrap_or(u64::MAX)
                    .max(1);
                self.histograms[shard % SHARDS]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .saturating_record(micros);
                match spec.classify(status) {
                    StatusClass::Ok => {
                        self.failures[OK].fetch_add(1, Ordering::Relaxed);
                        counts.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    StatusClass::ExpectedFailure => {
                        self.failures[EXPECTED].fetch_add(1, Ordering::Relaxed);
                        counts.expected.fetch_add(1, Ordering::Relaxed);
                    }
                    StatusClass::Unexpected => {
                        self.failures[UNEXPECTED_STATUS].fetch_add(1, Ordering::Relaxed);
                        counts.unexpected.fetch_add(1, Ordering::Relaxed);
                        self.sample("status", spec, format!("status {status}"));
                    }
                }
            }
            Outcome::Failed(kind, message) => {
                self.failures[FAILURE_BASE + kind.index()].fetch_add(1, Ordering::Relaxed);
                counts.unexpected.fetch_add(1, Ordering::Relaxed);
                self.sample(&kind.to_string(), spec, message);
            }
        }
        // Last, so that `finished` never runs ahead of the counters above.
        self.finished.fetch_add(1, Ordering::Release);
    }

    fn sample(&self, kind: &str, spec: &RequestSpec, message: String) {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples.iter().filter(|s| s.kind == kind).count() < SAMPLES_PER_KIND {
            samples.push(Sample {
                kind: kind.to_owned(),
                request: spec.name().to_owned(),
                message,
            });
        }
    }

    fn progress(&self, done: bool) -> Progress {
        let total = self.finished.load(Ordering::Acquire);
        let f = |i: usize| self.failures[i].load(Ordering::Relaxed);
        Progress {
            elapsed: self.started.elapsed(),
            total,
            ok: f(OK),
            expected_failures: f(EXPECTED),
            unexpected_statuses: f(UNEXPECTED_STATUS),
            refused: f(FAILURE_BASE + FailureKind::Refused.index()),
            reset: f(FAILURE_BASE + FailureKind::Reset.index()),
            timeout: f(FAILURE_BASE + FailureKind::Timeout.index()),
            other: f(FAILURE_BASE + FailureKind::Other.index()),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            connections_opened: self.connections.load(Ordering::Relaxed),
            done,
        }
    }

    fn report(&self) -> LoadReport {
        let p = self.progress(true);
        let mut histogram = empty_histogram();
        for h in &self.histograms {
            histogram
                .add(&*h.lock().unwrap_or_else(|p| p.into_inner()))
                .expect("histograms share bounds");
        }
        let by_status: BTreeMap<u16, u64> = self
            .by_status
            .iter()
            .enumerate()
            .filter_map(|(code, n)| {
                let n = n.load(Ordering::Relaxed);
                (n > 0).then_some((code as u16, n))
            })
            .collect();
        let mut by_request = BTreeMap::new();
        for (spec, c) in self.specs.iter().zip(&self.counts) {
            let entry: &mut RequestCounts = by_request.entry(spec.name().to_owned()).or_default();
            entry.total += c.total.load(Ordering::Relaxed);
            entry.ok += c.ok.load(Ordering::Relaxed);
            entry.expected_failures += c.expected.load(Ordering::Relaxed);
            entry.unexpected_failures += c.unexpected.load(Ordering::Relaxed);
        }
        let elapsed = p.elapsed;
        LoadReport {
            target: self.config.target.to_string(),
            model: self.config.model.to_string(),
            connections: self.config.connections,
            elapsed,
            total: p.total,
            ok: p.ok,
            expected_failures: p.expected_failures,
            unexpected_statuses: p.unexpected_statuses,
            refused: p.refused,
            reset: p.reset,
            timeout: p.timeout,
            other: p.other,
            by_status,
            by_request,
            connections_opened: p.connections_opened,
            requests_per_sec: if elapsed.is_zero() {
                0.0
            } else {
                p.total as f64 / elapsed.as_secs_f64()
            },
            latency: LatencySummary::from_histogram(&histogram),
            samples: self
                .samples
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            histogram,
        }
    }
}

fn failed(e: impl std::error::Error + 'static) -> Outcome {
    Outcome::Failed(classify_error(&e), error_chain(&e))
}

async fn drive(shared: Arc<Shared>, progress: watch::Sender<Progress>) -> LoadReport {
    let ticker = {
        let shared = shared.clone();
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                progress.send_replace(shared.progress(false));
            }
        })
    };
    match shared.config.model {
        LoadModel::Concurrency(n) => closed(&shared, n).await,
        LoadModel::Rate {
            per_sec,
            max_in_flight,
        } => open(&shared, per_sec, max_in_flight).await,
    }
    ticker.abort();
    let report = shared.report();
    progress.send_replace(shared.progress(true));
    report
}

async fn closed(shared: &Arc<Shared>, workers: usize) {
    let mut set = JoinSet::new();
    for id in 0..workers {
        let shared = shared.clone();
        set.spawn(async move {
            let mut conn = None;
            while let Some(spec) = shared.claim() {
                shared.one(&mut conn, spec, Instant::now(), id).await;
            }
        });
    }
    while set.join_next().await.is_some() {}
}

async fn open(shared: &Arc<Shared>, per_sec: f64, max_in_flight: usize) {
    let interval = Duration::from_secs_f64(1.0 / per_sec);
    let pool: Arc<Mutex<Vec<Sender>>> = Arc::default();
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let mut set = JoinSet::new();
    let mut n: u32 = 0;
    while let Some(intended) = shared.started.checked_add(interval.saturating_mul(n)) {
        n = n.saturating_add(1);
        // Not past the deadline: no request starts after it, and the run ends at it.
        let wake = shared.deadline.map_or(intended, |d| intended.min(d));
        if wake > Instant::now() {
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = shared.stop_notify.notified() => {}
            }
        }
        let Some(spec) = shared.claim() else { break };
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = shared.stop_notify.notified() => break,
        };
        let shared = shared.clone();
        let pool = pool.clone();
        set.spawn(async move {
            let mut conn = take_ready(&pool);
            shared.one(&mut conn, spec, intended, n as usize).await;
            if let Some(sender) = conn {
                pool.lock().unwrap_or_else(|p| p.into_inner()).push(sender);
            }
            drop(permit);
        });
        // Reap finished tasks so the set does not grow with the run.
        while set.try_join_next().is_some() {}
    }
    while set.join_next().await.is_some() {}
}

/// An idle pooled connection that can take a request now, if any.
fn take_ready(pool: &Mutex<Vec<Sender>>) -> Option<Sender> {
    let mut pool = pool.lock().unwrap_or_else(|p| p.into_inner());
    while let Some(sender) = pool.pop() {
        if sender.is_ready() {
            return Some(sender);
        }
    }
    None
}
