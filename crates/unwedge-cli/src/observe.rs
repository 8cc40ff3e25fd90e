//! `unwedge run`'s observability: the supervisor's events and snapshots wired to
//! `unwedge-admin` (admin endpoint, report directory, metrics, alerts).
//!
//! It lives in the binary, not in `unwedge-supervisor`, so the supervisor library stays free
//! of the HTTP server and TLS stack: the library exposes what happened ([`Event`]s through an
//! [`AlertHook`](unwedge_supervisor::AlertHook), which never lags) and what is
//! ([`Snapshot`](unwedge_supervisor::Snapshot)s), and this module decides what to write, count
//! and tell.
//!
//! The hook only copies each event into an unbounded channel, so the supervisor loop never
//! waits on a disk or a webhook. One task takes the events in order and, per event:
//! appends the record to the report directory (fsync, on a blocking thread), then updates the
//! metrics, then queues the alert (which never waits either, see `Alerter::send`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use unwedge_admin::{
    parse_admin_addr, parse_webhook_url, AdminHandle, AdminServer, AlertConfig, AlertEvent,
    AlertKind, Alerter, Detail, ExitRecord, ExitStatus, HangKind, Metrics, PanicRecord, Record,
    ReportDir, ReportDirConfig, RestartEvent, RestartReason, StatusSource, StatusView,
    SupervisorInfo, WorkerState, WorkerView, ADMIN_HEADER_TIMEOUT, DEFAULT_ADMIN_ADDR,
    MAX_ADMIN_CONNECTIONS,
};
use unwedge_supervisor::{self as sup, Config, Event, Handle, Supervisor};

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// SIGKILL's number, as exit statuses carry it.
const SIGKILL: i32 = nix::sys::signal::Signal::SIGKILL as i32;
/// How long an abnormal exit's record waits for the worker's stderr to close, so that the
/// lines it wrote just before dying are in it.
const STDERR_WAIT: Duration = Duration::from_millis(100);
/// Reports and restarts kept in memory for `/status` and the page.
const KEEP_REPORTS: usize = 50;
/// And at most this many bytes of reports (as JSON), the newest always: each `/status` answer
/// holds a copy until its client has read it, and a worker can make each report as large as
/// its cut allows (~70 KB), 50 of which in each of 256 unread answers would be ~900 MB.
const KEEP_REPORT_BYTES: usize = 512 * 1024;
const KEEP_RESTARTS: usize = 2000;
/// Panic reports waiting for the event task (each up to 60 000 bytes, written one fsync at a
/// time): past this, a worker panicking faster than the disk takes the reports has them
/// dropped, counted as not written, instead of growing the supervisor's memory without bound.
const MAX_QUEUED_REPORTS: usize = 256;
/// Reports dropped (see [`MAX_QUEUED_REPORTS`]) are logged at most this often, summed: a
/// worker flooding reports made one ERROR line per report taken, 1,500 in 4 s.
const DROPS_TOLD_EVERY: Duration = Duration::from_secs(1);
/// Bound on the wait for the last events and alerts when the supervisor ends.
pub(crate) const FLUSH_DEADLINE: Duration = Duration::from_secs(5);

/// How long a crash report's write to the report directory is waited for: see
/// [`Ctx::record`].
const APPEND_LIMIT: Duration = Duration::from_secs(2);

/// The observability options, checked: what `--admin`, `--report-dir`,
/// `--report-max-bytes`, `--alert-webhook` and `--alert-exec` mean.
#[derive(Debug)]
pub(crate) struct Settings {
    admin: Option<SocketAddr>,
    /// `--admin` was given: a port in use is an error, not a warning.
    admin_explicit: bool,
    reports: Option<ReportDirConfig>,
    /// `--report-max-bytes`, or its default.
    report_max_bytes: u64,
    alerts: AlertConfig,
    /// `--workers`: what the workers' pipes and sockets take of the open-file limit.
    workers: usize,
}

/// Admin connections served at once: [`MAX_ADMIN_CONNECTIONS`], or fewer when the open-file
/// limit (`soft`) would not leave enough for `workers` (two pipes, a pidfd and a few sockets
/// each while it starts) and the supervisor's own files: half of what remains after 64 + 8 per
/// worker, at least 8. More connections wait in the listen queue, holding no descriptor, so
/// that idle admin connections can never take the descriptors a worker's restart needs.
pub(crate) fn admin_connections(soft: u64, workers: usize) -> usize {
    let reserve = 64 + 8 * workers as u64;
    let spare = soft.saturating_sub(reserve) / 2;
    usize::try_from(spare)
        .unwrap_or(usize::MAX)
        .clamp(8, MAX_ADMIN_CONNECTIONS)
}

/// The default report directory: `$STATE_DIRECTORY/reports` (systemd's `StateDirectory=`,
/// first entry), if set.
pub(crate) fn default_report_dir() -> Option<PathBuf> {
    let v = std::env::var_os("STATE_DIRECTORY")?;
    let first = v.to_str()?.split(':').next()?.to_owned();
    (!first.is_empty()).then(|| PathBuf::from(first).join("reports"))
}

impl Settings {
    /// The admin address `--admin` asked for (the default one in use is only a warning).
    pub(crate) fn explicit_admin(&self) -> Option<SocketAddr> {
        self.admin.filter(|_| self.admin_explicit)
    }

    /// Parses the options; an error is a usage error (exit status 2).
    pub(crate) fn from_config(c: &Config) -> Result<Settings, String> {
        let (admin, admin_explicit) = match &c.admin {
            None => (Some(DEFAULT_ADMIN_ADDR), false),
            Some(s) => (parse_admin_addr(s).map_err(|e| e.to_string())?, true),
        };
        // The admin endpoint on a listening socket's port: its bind failed after the sockets
        // were bound, naming the supervisor itself as the holder. (The default address, when
        // taken, is only a warning at start.)
        if let (Some(a), true) = (admin, admin_explicit) {
            let clash = c.listen.iter().find_map(|l| match l {
                sup::config::ListenAddr::Tcp(t) if sup::config::overlaps(&a, t) => Some(t),
                _ => None,
            });
            if let Some(l) = clash {
                return Err(format!(
                    "--admin {a} overlaps --listen {l} (the same port): give the admin \
                     endpoint a port of its own"
                ));
            }
        }
        let dir = match &c.report_dir {
            Some(p) if p.as_os_str() == "off" => None,
            Some(p) if p.as_os_str().is_empty() => {
                return Err("--report-dir needs a directory (or `off`)".into())
            }
            Some(p) => Some(p.clone()),
            None => default_report_dir(),
        };
        let max_bytes = match &c.report_max_bytes {
            Some(s) => {
                let n = unwedge_supervisor::config::parse_size(s)
                    .map_err(|e| format!("--report-max-bytes: {e}"))?;
                if n == 0 {
                    return Err("--report-max-bytes must be more than 0".into());
                }
                Some(n)
            }
            None => None,
        };
        let report_max_bytes =
            max_bytes.unwrap_or_else(|| ReportDirConfig::new(PathBuf::new()).max_bytes);
        let reports = dir.map(|d| {
            let mut r = ReportDirConfig::new(d);
            r.max_bytes = report_max_bytes;
            r
        });
        let mut alerts = AlertConfig::new();
        if let Some(url) = &c.alert_webhook {
            parse_webhook_url(url).map_err(|e| e.to_string())?;
            alerts = alerts.webhook(url.clone());
        }
        if let Some(cmd) = &c.alert_exec {
            if cmd.trim().is_empty() {
                return Err("invalid --alert-exec: the command is empty".into());
            }
            alerts = alerts.exec(cmd.clone());
        }
        Ok(Settings {
            admin,
            admin_explicit,
            reports,
            report_max_bytes,
            alerts,
            workers: c.workers,
        })
    }
}

impl Settings {
    /// Puts what these settings resolved to into `c`, for `check-config` to print: the report
    /// directory (the default one under systemd, or `off`) and its file size, normalised, and
    /// the admin address when given (`9100` is `127.0.0.1:9100`). The default admin address is
    /// left unset: given, a port in use would stop the start instead of being a warning.
    pub(crate) fn show_in(&self, c: &mut Config) {
        if self.admin_explicit {
            c.admin = Some(
                self.admin
                    .map_or_else(|| "off".to_owned(), |a| a.to_string()),
            );
        }
        c.report_dir = Some(
            self.reports
                .as_ref()
                .map_or_else(|| PathBuf::from("off"), |r| r.dir.clone()),
        );
        c.report_max_bytes = Some(sup::config::format_size(self.report_max_bytes));
    }

    /// What [`start`] would find wrong in the environment, without binding or leaving
    /// anything: the report directory can be created and written. An error is exit status 1.
    /// The admin address is not bound: a running supervisor may hold it.
    pub(crate) fn check_environment(&self) -> Result<(), String> {
        if let Some(cfg) = &self.reports {
            ReportDir::check(cfg).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// A start-up failure: the message and the exit status.
#[derive(Debug)]
pub(crate) struct StartFailure {
    pub(crate) message: String,
    pub(crate) code: u8,
}

/// The running observability side; [`Observer::finish`] it after `Supervisor::run`.
pub(crate) struct Observer {
    alerter: Arc<Alerter>,
    admin: Option<AdminHandle>,
    task: JoinHandle<()>,
}

/// What the event task learned, for the status view.
#[derive(Default)]
struct History {
    restarts: VecDeque<RestartEvent>,
    reports: VecDeque<Record>,
    /// The size of each of `reports` (as JSON), and their sum.
    report_sizes: VecDeque<usize>,
    report_bytes: usize,
    /// Slot id → one-line summary of its last panic report.
    last_report: HashMap<String, String>,
    /// Slot id → restarts seen (for slots with no process right now).
    slot_restarts: HashMap<String, u64>,
    /// Slot id → how its last process ended.
    last_exit: HashMap<String, ExitStatus>,
    /// Slot id → why its last process ended, for a failed start's restart reason.
    last_cause: HashMap<String, RestartReason>,
    /// Pids already alerted as hung or tainted: their exit is not a second alert.
    hung: HashSet<i32>,
    tainted: HashSet<i32>,
    /// Pids the supervisor SIGKILLed at `--stop-timeout`: alerted as `stop_timed_out`, and
    /// their SIGKILL exit is the supervisor's doing, not a crash to record.
    stop_killed: HashSet<i32>,
    /// Pid → summary of the last panic it reported, for the crash alert.
    /// Each worker's last panic: its summary, and its de-duplication key (see [`panic_key`]).
    last_panic: HashMap<i32, (String, String)>,
    /// How the last reload ended.
    last_reload: Option<unwedge_admin::ReloadOutcome>,
    /// Slot id → the generations its latest processes were started for (a few). A slot a
    /// reload removed (fewer workers) was last started for an older generation than the one
    /// serving, or only for a generation whose reload failed: it is gone, not waiting for a
    /// replacement.
    started_for: HashMap<String, Vec<u64>>,
    /// Generations whose reload failed: their slots were torn down with them.
    failed_generations: HashSet<u64>,
}

struct Shared {
    /// Why the supervisor gave up, once it did.
    gave_up: Mutex<Option<String>>,
    history: Mutex<History>,
}

impl Shared {
    fn history(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn gave_up(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.gave_up.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Opens the report directory, starts the alerter, binds the admin endpoint and hooks the
/// event task onto `supervisor`. Bad environment (unwritable directory, port in use) is
/// exit status 1.
///
/// `log_lines_dropped` tells how many of the supervisor's own log lines were dropped so far
/// (its log queue was full); the metric follows it on each look.
pub(crate) async fn start(
    settings: Settings,
    supervisor: Supervisor,
    log_lines_dropped: impl Fn() -> u64 + Send + Sync + 'static,
) -> Result<(Supervisor, Observer), StartFailure> {
    let env_err = |message: String| StartFailure { message, code: 1 };
    let metrics = Arc::new(Metrics::new(VERSION));
    let reports = match settings.reports {
        Some(cfg) => {
            let dir = ReportDir::open(cfg).map_err(|e| env_err(e.to_string()))?;
            tracing::info!("crash reports go to {}", dir.dir().display());
            Some(Arc::new(dir))
        }
        None => None,
    };
    let alerter = Arc::new(
        Alerter::new(settings.alerts, metrics.clone()).map_err(|e| env_err(e.to_string()))?,
    );
    let shared = Arc::new(Shared {
        gave_up: Mutex::new(None),
        history: Mutex::new(History::default()),
    });
    let handle = supervisor.handle();
    let listen: Vec<String> = supervisor
        .local_addrs()
        .iter()
        .map(ToString::to_string)
        .collect();
    let source = status_source(
        handle.clone(),
        shared.clone(),
        metrics.clone(),
        listen,
        Box::new(log_lines_dropped),
    );
    let admin = match settings.admin {
        None => None,
        Some(addr) => match AdminServer::bind(addr, source, metrics.clone()).await {
            // On a thread of its own: a scraper, a refreshing page or a slow measurement of
            // a worker's memory never delays the event loop that reaps and restarts workers.
            Ok(server) => {
                let addr = server.local_addr();
                // The limit as raised at start (the supervisor takes the hard one).
                let soft =
                    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                        .map_or(u64::MAX, |(soft, _)| soft);
                let connections = admin_connections(soft, settings.workers);
                if connections < MAX_ADMIN_CONNECTIONS {
                    tracing::info!(
                        "the admin endpoint serves {connections} connections at once (open-file \
                         limit {soft} for {} workers); more wait their turn",
                        settings.workers
                    );
                }
                let server = server.connection_limits(connections, ADMIN_HEADER_TIMEOUT);
                match server.spawn_thread() {
                    Ok(admin) => {
                        tracing::info!("admin listening on http://{addr}");
                        if !addr.ip().to_canonical().is_loopback() {
                            tracing::warn!(
                                "the admin endpoint on {addr} is not on loopback: whoever reaches \
                                 it reads panic messages, request paths and backtraces, without \
                                 authentication; fence the port (a firewall, a NetworkPolicy)"
                            );
                        }
                        Some(admin)
                    }
                    Err(e) => {
                        return Err(env_err(format!(
                            "cannot start the admin endpoint's thread: {e}"
                        )))
                    }
                }
            }
            Err(e) if settings.admin_explicit => return Err(env_err(e.to_string())),
            Err(e) => {
                tracing::warn!("no admin endpoint: {e}");
                None
            }
        },
    };
    let (tx, rx) = mpsc::unbounded_channel::<Event>();
    let hook_shared = shared.clone();
    let gate = Arc::new(ReportGate::new(MAX_QUEUED_REPORTS));
    let hook_gate = gate.clone();
    let (hook_metrics, writes_reports) = (metrics.clone(), reports.is_some());
    let supervisor = supervisor.with_alert_hook(move |e: &Event| {
        if let Event::GaveUp { reason } = e {
            // /livez answers from this at once, not after the event task caught up.
            *hook_shared.gave_up() = Some(reason.clone());
        }
        if matches!(e, Event::Report { .. }) && !hook_gate.admit() {
            if writes_reports {
                hook_metrics.record_report_written(false);
            }
            return;
        }
        let _ = tx.send(e.clone());
    });
    let ctx = Ctx {
        reports,
        append_pending: Arc::default(),
        gate,
        drops: Mutex::default(),
        metrics,
        alerter: alerter.clone(),
        shared,
        handle,
    };
    let task = tokio::spawn(ctx.run(rx));
    Ok((
        supervisor,
        Observer {
            alerter,
            admin,
            task,
        },
    ))
}

impl Observer {
    /// The admin endpoint's address, if it is up (`unwedge demo` prints it).
    pub(crate) fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminHandle::local_addr)
    }

    /// After the supervisor ended: lets the event task write and send what is left, flushes
    /// the alerts (the `gave_up` one included), kills the `--alert-exec` commands still
    /// running then, stops the admin endpoint; all bounded.
    pub(crate) async fn finish(self) {
        let deadline = Instant::now() + FLUSH_DEADLINE;
        // The hook (and its sender) went with the supervisor: the task ends once drained.
        let mut task = self.task;
        if tokio::time::timeout_at(deadline.into(), &mut task)
            .await
            .is_err()
        {
            tracing::warn!("crash reports still being written at exit; giving up on them");
            task.abort();
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if !self.alerter.close(left).await {
            tracing::warn!(
                "alerts still being delivered at exit; giving up on them (--alert-exec \
                 commands still running are killed)"
            );
        }
        if let Some(admin) = self.admin {
            admin.shutdown().await;
        }
    }
}

/// Each worker's memory for the views (`/status`, `/metrics`, the page), as `--max-memory`
/// counts it ([`sup::memory::worker_bytes`]), measured again at most once per second, and
/// at most once per 20 times its last measurement took: the PSS of a process tree is a walk of
/// its page tables (~12 ms per GiB), which a page refreshing itself or a scraper must not
/// repeat at will.
#[derive(Default)]
struct MemoryGauge {
    /// pid → (bytes, when it may be measured again).
    by_pid: Mutex<HashMap<i32, (Option<u64>, Instant)>>,
}

impl MemoryGauge {
    fn bytes(&self, pid: i32) -> Option<u64> {
        let now = Instant::now();
        if let Some((bytes, until)) = self.lock().get(&pid) {
            if now < *until {
                return *bytes;
            }
        }
        // Measured without the lock: two views at once may both measure, neither waits.
        let bytes = sup::memory::worker_bytes(pid);
        let until = sup::memory::next_measurement(now, now.elapsed());
        self.lock().insert(pid, (bytes, until));
        bytes
    }

    /// Forgets the pids that are no longer workers.
    fn keep(&self, pids: &HashSet<i32>) {
        self.lock().retain(|pid, _| pids.contains(pid));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, (Option<u64>, Instant)>> {
        self.by_pid.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn status_source(
    handle: Handle,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    listen: Vec<String>,
    log_lines_dropped: Box<dyn Fn() -> u64 + Send + Sync>,
) -> StatusSource {
    let started = Instant::now();
    let forged_seen = AtomicU64::new(0);
    let malformed_seen = AtomicU64::new(0);
    let dropped_seen = AtomicU64::new(0);
    let memory = MemoryGauge::default();
    StatusSource::from_fn_detail(move |detail| {
        let snap = handle.snapshot();
        // Before the history's lock: alerts must not wait for a measurement.
        let memory_of: HashMap<i32, Option<u64>> = snap
            .workers
            .iter()
            .map(|w| (w.pid, memory.bytes(w.pid)))
            .collect();
        memory.keep(&memory_of.keys().copied().collect());
        // The supervisor counts forged and malformed notify messages, the log queue its
        // dropped lines; the metrics follow on each look.
        metrics.record_notify_forged(grown(&forged_seen, snap.counters.forged_notify));
        metrics.record_notify_malformed(grown(&malformed_seen, snap.counters.malformed_notify));
        metrics.record_log_lines_dropped(grown(&dropped_seen, log_lines_dropped()));
        let mut info = SupervisorInfo::new(VERSION, std::process::id());
        info.uptime_secs = started.elapsed().as_secs_f64();
        info.gave_up_reason = shared.gave_up().clone();
        info.gave_up = info.gave_up_reason.is_some();
        info.listen = listen.clone();
        info.generation = snap.generation;
        info.reloading = snap.reloading;
        info.stopping = snap.stopping;
        info.reload_requests = snap.reload_requests;
        info.stop_timeouts = snap.counters.stop_timeouts;
        info.leftover_processes = snap.counters.leftover_processes;
        info.loop_age_secs = snap.published.elapsed().as_secs_f64();
        let h = shared.history();
        info.last_reload = h.last_reload.clone();
        let mut view = StatusView::new(info);
        let now = SystemTime::now();
        for w in &snap.workers {
            let state = match w.state {
                sup::WorkerState::Hung => WorkerState::Hung,
                // Said STATUS=tainted: leaving, whatever it still answers.
                _ if h.tainted.contains(&w.pid) => WorkerState::Tainted,
                sup::WorkerState::Starting => WorkerState::Starting,
                sup::WorkerState::Ready => WorkerState::Ready,
                _ => WorkerState::Draining,
            };
            let mut v = WorkerView::new(w.id.clone(), u32::try_from(w.pid).ok(), state);
            v.generation = w.generation;
            v.uptime_secs = now
                .duration_since(w.started_at)
                .unwrap_or_default()
                .as_secs_f64();
            v.restarts = u64::from(w.restarts);
            v.last_exit = w.last_exit.map(|e| ExitStatus {
                code: e.code,
                signal: e.signal,
            });
            v.last_report = h.last_report.get(&w.id).cloned();
            v.memory_bytes = memory_of.get(&w.pid).copied().flatten();
            v.port = w.port;
            v.status = w.status.clone();
            view.workers.push(v);
        }
        // Slots waiting for their replacement still show, as exited; slots a reload removed
        // (or that only a failed reload had) do not.
        let mut gone: Vec<&String> = h
            .last_exit
            .keys()
            .filter(|id| !snap.workers.iter().any(|w| &&w.id == id))
            .filter(|id| {
                h.started_for.get(*id).is_none_or(|gens| {
                    gens.iter()
                        .any(|g| *g >= snap.generation && !h.failed_generations.contains(g))
                })
            })
            .collect();
        gone.sort();
        for id in gone {
            let mut v = WorkerView::new(id.clone(), None, WorkerState::Exited);
            v.generation = snap.generation;
            v.restarts = h.slot_restarts.get(id).copied().unwrap_or(0);
            v.last_exit = h.last_exit.get(id).copied();
            v.last_report = h.last_report.get(id).cloned();
            view.workers.push(v);
        }
        // Up to 50 reports of some tens of KiB each: copied only for `/status` and the page,
        // not for every scrape of `/metrics` and probe of `/livez` and `/readyz`.
        if detail == Detail::Full {
            view.restarts = h.restarts.iter().cloned().collect();
            view.reports = h.reports.iter().cloned().collect();
        }
        view
    })
}

/// Counts the panic reports queued for the event task, and those dropped because too many
/// were (see [`MAX_QUEUED_REPORTS`]).
#[derive(Debug)]
struct ReportGate {
    limit: usize,
    queued: std::sync::atomic::AtomicUsize,
    dropped: AtomicU64,
}

impl ReportGate {
    fn new(limit: usize) -> Self {
        ReportGate {
            limit,
            queued: std::sync::atomic::AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// One more report to queue: `false` (counted as dropped) when `limit` wait already.
    /// Called by the supervisor's hook only, so load-then-add does not race with itself.
    fn admit(&self) -> bool {
        if self.queued.load(Ordering::Acquire) >= self.limit {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.queued.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// A queued report was taken; returns the reports dropped since the last call.
    fn taken(&self) -> u64 {
        self.queued.fetch_sub(1, Ordering::AcqRel);
        self.dropped.swap(0, Ordering::Relaxed)
    }
}

/// The crash reports dropped and not yet logged, logged at most once per [`DROPS_TOLD_EVERY`].
#[derive(Debug, Default)]
struct DropsTold {
    untold: u64,
    last_told: Option<Instant>,
    /// Reports not written while the report directory had not finished an earlier write.
    stalled: u64,
    stalled_told: Option<Instant>,
}

impl DropsTold {
    /// Counts a report not written behind a stalled write; the count so far, when it is time
    /// to say it again (at most once a second).
    fn stalled(&mut self, now: Instant) -> Option<u64> {
        self.stalled += 1;
        let recent = self
            .stalled_told
            .is_some_and(|t| now.duration_since(t) < DROPS_TOLD_EVERY);
        if recent {
            return None;
        }
        self.stalled_told = Some(now);
        Some(self.stalled)
    }

    /// Adds `dropped`; the drops to log at `now`, if any and if the last line is old enough.
    fn add(&mut self, dropped: u64, now: Instant) -> Option<u64> {
        self.untold += dropped;
        let recent = self
            .last_told
            .is_some_and(|t| now.duration_since(t) < DROPS_TOLD_EVERY);
        if self.untold == 0 || recent {
            return None;
        }
        self.last_told = Some(now);
        Some(std::mem::take(&mut self.untold))
    }

    /// When the drops held back may be logged (none: nothing held back).
    fn due(&self) -> Option<Instant> {
        (self.untold > 0).then(|| {
            self.last_told
                .map_or_else(Instant::now, |t| t + DROPS_TOLD_EVERY)
        })
    }
}

/// Logs `n` crash reports dropped (see [`DropsTold`]).
fn report_drops(n: u64) {
    tracing::error!(
        "{n} crash report(s) dropped: {MAX_QUEUED_REPORTS} were waiting to be written (workers \
         panic faster than the report directory takes them; said at most once a second)"
    );
}

/// How far `total`, a count that only grows, moved since `seen` last saw it. `fetch_max`: two
/// looks at once never move the mark back, so nothing is counted twice.
fn grown(seen: &AtomicU64, total: u64) -> u64 {
    total.saturating_sub(seen.fetch_max(total, Ordering::Relaxed))
}

struct Ctx {
    reports: Option<Arc<ReportDir>>,
    /// A write to `reports` has not returned yet (see [`Ctx::record`]).
    append_pending: Arc<AtomicBool>,
    gate: Arc<ReportGate>,
    drops: Mutex<DropsTold>,
    metrics: Arc<Metrics>,
    alerter: Arc<Alerter>,
    shared: Arc<Shared>,
    handle: Handle,
}

impl Ctx {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Event>) {
        loop {
            // Drops held back are logged once their second is over, even if no report follows.
            let due = self.lock_drops().due();
            let event = match due {
                Some(at) => match tokio::time::timeout_at(at.into(), rx.recv()).await {
                    Ok(event) => event,
                    Err(_) => {
                        self.tell_drops(0);
                        continue;
                    }
                },
                None => rx.recv().await,
            };
            let Some(e) = event else {
                break;
            };
            self.on_event(e).await;
        }
        let rest = std::mem::take(&mut self.lock_drops().untold);
        if rest > 0 {
            report_drops(rest);
        }
    }

    fn lock_drops(&self) -> std::sync::MutexGuard<'_, DropsTold> {
        self.drops.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `dropped` crash reports to those to log, and logs them if it is time.
    fn tell_drops(&self, dropped: u64) {
        let told = self.lock_drops().add(dropped, Instant::now());
        if let Some(n) = told {
            report_drops(n);
        }
    }

    /// Appends to the report directory (durably) and keeps the record for the page.
    ///
    /// A directory that does not answer (a hung NFS mount, a frozen volume) holds up nothing
    /// else: the write is waited for [`APPEND_LIMIT`], after which the events behind it (their
    /// alerts, `gave_up`'s included) go on, and later reports are not written (counted as not
    /// written) until that write has returned.
    async fn record(&self, record: Record) {
        if let Some(dir) = &self.reports {
            let ok = if self.append_pending.load(Ordering::SeqCst) {
                if let Some(n) = self.lock_drops().stalled(Instant::now()) {
                    tracing::error!(
                        "crash report not written: the report directory has not finished an earlier write ({n} reports not written so far)"
                    );
                }
                false
            } else {
                self.append_pending.store(true, Ordering::SeqCst);
                let pending = self.append_pending.clone();
                let (dir, r) = (dir.clone(), record.clone());
                let (done, written) = tokio::sync::oneshot::channel();
                // A thread of its own, whose start may fail: tokio's `spawn_blocking` panics
                // when no thread can be made (the process or thread limit reached, when a
                // crash is likely), and this task would end, writing and alerting nothing
                // for the rest of the supervisor's life.
                let started = std::thread::Builder::new()
                    .name("unwedge-report".into())
                    .spawn(move || {
                        let result = dir.append(&r);
                        pending.store(false, Ordering::SeqCst);
                        let _ = done.send(result);
                    });
                if let Err(e) = started {
                    self.append_pending.store(false, Ordering::SeqCst);
                    tracing::error!(
                        "crash report not written: cannot start a thread to write it ({e})"
                    );
                    self.metrics.record_report_written(false);
                    return self.keep(record);
                }
                match tokio::time::timeout(APPEND_LIMIT, written).await {
                    Ok(Ok(Ok(()))) => true,
                    Ok(Ok(Err(e))) => {
                        tracing::error!("crash report not written: {e}");
                        false
                    }
                    Ok(Err(_)) => {
                        tracing::error!("crash report not written: its writer ended unfinished");
                        false
                    }
                    Err(_) => {
                        tracing::error!(
                            "crash report not written in {APPEND_LIMIT:?}: the report directory does not answer (a hung mount?); not waiting for it, and no report is written until it does"
                        );
                        false
                    }
                }
            };
            self.metrics.record_report_written(ok);
        }
        self.keep(record);
    }

    /// Keeps `record` among the last reports shown by `/status` (within their count and size).
    fn keep(&self, record: Record) {
        let size = serde_json::to_vec(&record).map_or(0, |json| json.len());
        let mut h = self.shared.history();
        h.reports.push_back(record);
        h.report_sizes.push_back(size);
        h.report_bytes += size;
        while h.reports.len() > KEEP_REPORTS
            || (h.report_bytes > KEEP_REPORT_BYTES && h.reports.len() > 1)
        {
            h.reports.pop_front();
            let gone = h.report_sizes.pop_front().unwrap_or(0);
            h.report_bytes -= gone;
        }
    }

    fn alert(&self, event: AlertEvent) {
        self.alerter.send(event);
    }

    async fn on_event(&self, e: Event) {
        match e {
            Event::Report { worker, pid, json } => {
                let dropped = self.gate.taken();
                if dropped > 0 {
                    self.tell_drops(dropped);
                }
                let value = serde_json::from_str(&json).unwrap_or(serde_json::Value::String(json));
                // Redacts the credential headers (any worker may send a report, and not every
                // one redacts): before the report directory, the history and /status see it.
                let rec = PanicRecord::new(Some(&worker), value);
                let route = rec.route();
                let summary = panic_summary(&rec);
                let key = panic_key(&rec, &route);
                self.record(Record::Panic(rec)).await;
                self.metrics.record_panic(&route);
                let mut h = self.shared.history();
                h.last_report.insert(worker, summary.clone());
                h.last_panic.insert(pid, (summary, key));
            }
            Event::WorkerExited {
                worker,
                pid,
                code,
                signal,
                requested,
                by_stop_signal,
                oom_killed,
            } => {
                let how = Ended {
                    code,
                    signal,
                    requested,
                    by_stop_signal,
                    oom_killed,
                };
                self.on_exit(worker, pid, how).await
            }
            Event::Hung {
                worker,
                pid,
                kind,
                detail,
                stopping,
            } => {
                let kind = metric_hang_kind(kind);
                self.metrics.record_hang(kind);
                {
                    let mut h = self.shared.history();
                    h.hung.insert(pid);
                    h.last_cause.insert(worker.clone(), RestartReason::Hang);
                }
                let summary = match kind {
                    HangKind::Watchdog => format!("{worker}: no heartbeat within --watchdog"),
                    HangKind::Probe => format!("{worker}: probes failed"),
                    HangKind::ReadyTimeout => format!("{worker}: not ready within --ready-timeout"),
                    other => format!("{worker}: {}", other.as_str()),
                };
                // The worker's own words (a deadlock names both tasks and both locks) in the
                // summary; repeats of the same kind on the same slot still merge into one
                // alert within the dedupe window, whatever their reasons.
                let key = format!("{}\n{summary}", AlertKind::WorkerHung);
                let summary = match kind {
                    HangKind::Wedged => format!("{summary}: {}", hang_reason(&detail, 160)),
                    _ => summary,
                };
                self.alert(
                    AlertEvent::new(AlertKind::WorkerHung, summary)
                        .with_key(key)
                        .with_worker(&worker, u32::try_from(pid).ok())
                        .with_details(serde_json::json!({
                            "kind": kind.as_str(),
                            "reason": hang_reason(&detail, 1024),
                            "while_stopping": stopping,
                        })),
                );
            }
            Event::Tainted {
                worker,
                pid,
                status,
            } => {
                self.shared.history().tainted.insert(pid);
                let key = format!("{}\n{}", AlertKind::StateTainted, templated(&status));
                self.alert(
                    AlertEvent::new(AlertKind::StateTainted, format!("{worker}: {status}"))
                        .with_key(key)
                        .with_worker(&worker, u32::try_from(pid).ok())
                        .with_details(serde_json::json!({ "status": status })),
                );
            }
            Event::MemoryLimit {
                worker,
                pid,
                rss,
                limit,
            } => {
                let summary = format!(
                    "{worker}: {} of memory, over --max-memory {}; replaced",
                    sup::config::human_size(rss),
                    sup::config::format_size(limit)
                );
                self.alert(
                    AlertEvent::new(AlertKind::MemoryLimit, summary)
                        .with_worker(&worker, u32::try_from(pid).ok())
                        .with_details(
                            serde_json::json!({ "rss_bytes": rss, "limit_bytes": limit }),
                        ),
                );
            }
            Event::RestartScheduled { worker, reason, .. } => {
                let mut h = self.shared.history();
                let reason = match reason {
                    sup::RestartReason::Exit | sup::RestartReason::Crash => RestartReason::ExitCode,
                    sup::RestartReason::Signal => RestartReason::Signal,
                    sup::RestartReason::Hang => RestartReason::Hang,
                    sup::RestartReason::Tainted => RestartReason::Tainted,
                    sup::RestartReason::Memory => RestartReason::Memory,
                    sup::RestartReason::Oom => RestartReason::Oom,
                    sup::RestartReason::Lifetime => RestartReason::Lifetime,
                    _ => h
                        .last_cause
                        .get(&worker)
                        .copied()
                        .unwrap_or(RestartReason::ExitCode),
                };
                self.metrics.record_restart(reason);
                *h.slot_restarts.entry(worker.clone()).or_insert(0) += 1;
                push_restart(&mut h, RestartEvent::now(worker, reason));
            }
            Event::Reloaded {
                generation,
                requests,
                ..
            } => {
                let snap = self.handle.snapshot();
                let mut h = self.shared.history();
                h.last_reload =
                    Some(unwedge_admin::ReloadOutcome::now(generation, None).answering(requests));
                for w in snap.workers.iter().filter(|w| w.generation == generation) {
                    self.metrics.record_restart(RestartReason::Reload);
                    push_restart(&mut h, RestartEvent::now(&w.id, RestartReason::Reload));
                }
            }
            Event::WorkerStarted {
                worker, generation, ..
            } => {
                let mut h = self.shared.history();
                let gens = h.started_for.entry(worker).or_default();
                if !gens.contains(&generation) {
                    // The serving generation and a reload's or two are all that matter.
                    if gens.len() >= 4 {
                        gens.remove(0);
                    }
                    gens.push(generation);
                }
            }
            Event::WorkerReady {
                crash_to_ready: Some(d),
                ..
            } => self.metrics.record_crash_to_ready(d),
            Event::ReloadFailed {
                generation,
                reason,
                requests,
                ..
            } => {
                {
                    let mut h = self.shared.history();
                    h.last_reload = Some(
                        unwedge_admin::ReloadOutcome::now(generation, Some(reason.clone()))
                            .answering(requests),
                    );
                    h.failed_generations.insert(generation);
                }
                self.alert(
                    AlertEvent::new(
                        AlertKind::ReloadFailed,
                        format!("generation {generation}: {reason}"),
                    )
                    .with_details(
                        serde_json::json!({ "generation": generation, "reason": reason }),
                    ),
                )
            }
            Event::StopTimedOut {
                worker,
                pid,
                waited,
            } => {
                self.metrics.record_stop_timeout();
                self.shared.history().stop_killed.insert(pid);
                self.alert(
                    AlertEvent::new(
                        AlertKind::StopTimedOut,
                        format!("{worker}: did not exit within --stop-timeout; killed, its requests in flight were cut off"),
                    )
                    .with_worker(&worker, u32::try_from(pid).ok())
                    .with_details(serde_json::json!({ "waited_secs": waited.as_secs_f64() })),
                );
            }
            Event::LeftoverProcesses { pids, .. } => {
                self.metrics.record_leftover_processes(pids.len() as u64)
            }
            Event::OomKilledOther { count } => self.metrics.record_oom_killed_other(count),
            Event::GaveUp { reason } => self.alert(
                AlertEvent::new(AlertKind::GaveUp, reason.clone())
                    .with_details(serde_json::json!({ "reason": reason })),
            ),
            _ => {}
        }
    }

    async fn on_exit(&self, worker: String, pid: i32, ended: Ended) {
        let Ended {
            code,
            signal,
            requested,
            by_stop_signal,
            oom_killed,
        } = ended;
        let status = ExitStatus { code, signal };
        let stop_signal = by_stop_signal || matches!(signal, Some(15 | 2));
        let (already_alerted, panic, killed_at_stop_timeout) = {
            let mut h = self.shared.history();
            h.last_exit.insert(worker.clone(), status);
            h.last_cause.insert(
                worker.clone(),
                if signal.is_some() {
                    RestartReason::Signal
                } else {
                    RestartReason::ExitCode
                },
            );
            let alerted = h.hung.remove(&pid) | h.tainted.remove(&pid);
            let stop_killed = h.stop_killed.remove(&pid);
            (alerted, h.last_panic.remove(&pid), stop_killed)
        };
        let abnormal = match (code, signal) {
            (Some(0), _) => false,
            (Some(_), _) => true,
            // The stop signal (or SIGTERM/SIGINT) after we asked it to stop is an ordinary
            // stop; the SIGKILL we sent at --stop-timeout is ours too (its `stop_timed_out`
            // alert tells), not a crash: a bare signal 9 in the reports reads as a `kill -9`.
            (None, Some(s)) => {
                !((requested && stop_signal) || (killed_at_stop_timeout && s == SIGKILL))
            }
            (None, None) => false,
        };
        if !abnormal {
            // Nobody will ask for its stderr: let it go.
            let _ = sup::last_stderr_lines(pid, Duration::ZERO).await;
            return;
        }
        let mut rec = ExitRecord::new(Some(&worker), u32::try_from(pid).ok(), status);
        rec.last_stderr_lines = sup::last_stderr_lines(pid, STDERR_WAIT).await;
        // A worker may log a request's headers just before it dies: before the report
        // directory, the history and the alert see its lines.
        rec.redact();
        rec.oom_killed = oom_killed;
        let details = serde_json::to_value(&rec).unwrap_or_default();
        self.record(Record::Exit(rec)).await;
        // A hung or tainted worker was alerted already; a signal after we asked it to stop
        // (not ours: ours return above) is recorded, but no crash alert.
        if already_alerted || (requested && signal.is_some()) {
            return;
        }
        let how = match (code, signal) {
            (Some(c), _) => format!("exit {c}"),
            (_, Some(_)) if oom_killed => {
                "killed by the kernel's OOM killer (out of memory)".into()
            }
            (_, Some(s)) => match nix::sys::signal::Signal::try_from(s) {
                Ok(sig) => format!("killed by {}", sig.as_str()),
                Err(_) => format!("killed by signal {s}"),
            },
            _ => "ended".to_owned(),
        };
        let summary = match &panic {
            Some((p, _)) => format!("{worker}: {how} after panic {p}"),
            None => format!("{worker}: {how}"),
        };
        // One bug pages once per dedupe window, whichever worker hits it and on whichever
        // id in the path: a panic's key leaves the slot out and has the route, not the path.
        // Without a panic there is only the symptom: one key per slot, as the summary.
        let key = match &panic {
            Some((_, k)) => format!("{}\n{how}\n{k}", AlertKind::WorkerCrashed),
            None => format!("{}\n{summary}", AlertKind::WorkerCrashed),
        };
        self.alert(
            AlertEvent::new(AlertKind::WorkerCrashed, summary)
                .with_key(key)
                .with_worker(&worker, u32::try_from(pid).ok())
                .with_details(details),
        );
    }
}

/// How a worker ended, from [`Event::WorkerExited`].
struct Ended {
    code: Option<i32>,
    signal: Option<i32>,
    requested: bool,
    by_stop_signal: bool,
    oom_killed: bool,
}

fn push_restart(h: &mut History, e: RestartEvent) {
    if h.restarts.len() >= KEEP_RESTARTS {
        h.restarts.pop_front();
    }
    h.restarts.push_back(e);
}

/// `"message" at location (METHOD /path)`, like `PanicReport::summary`.
fn panic_summary(r: &PanicRecord) -> String {
    let mut s = format!("{:?}", r.str_field("message").unwrap_or("?"));
    if let Some(loc) = r.str_field("location") {
        s.push_str(&format!(" at {loc}"));
    }
    if let Some(req) = r.request_line() {
        s.push_str(&format!(" ({req})"));
    } else if let Some(task) = r.str_field("task") {
        s.push_str(&format!(" (task {task})"));
    }
    s
}

/// What tells one panic from another for alerts: its message, location, method and route
/// (the template, not the path: `/users/1001` and `/users/1002` are one bug).
fn panic_key(r: &PanicRecord, route: &str) -> String {
    let method = r
        .report
        .get("request")
        .and_then(|q| q.get("method"))
        .and_then(|m| m.as_str())
        .unwrap_or("");
    format!(
        "{:?} at {} ({method} {route})",
        r.str_field("message").unwrap_or("?"),
        r.str_field("location").unwrap_or("?")
    )
}

/// `text` with each path in it (a word starting with `/`) replaced by its route template, so
/// that a worker's `STATUS=tainted: panic in POST /items/7: …` and the same for `/items/8`
/// make one alert.
fn templated(text: &str) -> String {
    text.split(' ')
        .map(|word| {
            let path = word.trim_end_matches([':', ',', ';', ')']);
            if path.starts_with('/') {
                format!(
                    "{}{}",
                    unwedge_redact::route_template(path),
                    &word[path.len()..]
                )
            } else {
                word.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `kind` label of `unwedge_hangs_detected_total` for a hang the supervisor found.
fn metric_hang_kind(kind: sup::HangKind) -> HangKind {
    match kind {
        sup::HangKind::Watchdog => HangKind::Watchdog,
        sup::HangKind::Probe => HangKind::Probe,
        sup::HangKind::ReadyTimeout => HangKind::ReadyTimeout,
        _ => HangKind::Wedged,
    }
}

/// Why a worker was found hung, for people: `detail` (the log line's) without the `wedged: `
/// its `STATUS=` text starts with, on one line, cut to `max` characters (`…` marks a cut).
pub(crate) fn hang_reason(detail: &str, max: usize) -> String {
    let s = detail.strip_prefix("wedged: ").unwrap_or(detail);
    let mut cut: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    if s.chars().nth(max).is_some() {
        cut.push('…');
    }
    cut
}

#[cfg(test)]
mod report_gate_tests {
    use super::{DropsTold, ReportGate, DROPS_TOLD_EVERY};
    use std::time::{Duration, Instant};

    #[test]
    fn drops_are_told_at_most_once_a_second_summed() {
        let mut drops = DropsTold::default();
        let t0 = Instant::now();
        assert_eq!(drops.add(0, t0), None);
        assert_eq!(drops.due(), None);
        assert_eq!(drops.add(3, t0), Some(3));
        // Within the second: held back, summed.
        let ms = Duration::from_millis;
        for i in 1..=100 {
            assert_eq!(drops.add(2, t0 + ms(i * 5)), None);
        }
        assert_eq!(drops.due(), Some(t0 + DROPS_TOLD_EVERY));
        assert_eq!(drops.add(0, t0 + DROPS_TOLD_EVERY), Some(200));
        assert_eq!(drops.due(), None);
    }

    #[test]
    fn reports_past_the_limit_are_dropped_and_counted_until_the_queue_drains() {
        let gate = ReportGate::new(3);
        assert!((0..3).all(|_| gate.admit()));
        assert!(!gate.admit());
        assert!(!gate.admit());
        // The first taken says two were dropped, once.
        assert_eq!(gate.taken(), 2);
        assert_eq!(gate.taken(), 0);
        // Room again: admitted.
        assert!(gate.admit());
        assert!(gate.admit());
        assert!(!gate.admit());
        assert_eq!(gate.taken(), 1);
    }
}

#[cfg(test)]
mod hang_tests {
    use super::{hang_reason, metric_hang_kind, sup, HangKind};

    /// Every `kind` exported is one the supervisor can find (a series that can never move
    /// would be a dashboard's or an alert's silent blind spot), and every kind it finds has
    /// a series of its own.
    #[test]
    fn every_exported_hang_kind_can_be_recorded() {
        let found = [
            sup::HangKind::Watchdog,
            sup::HangKind::Probe,
            sup::HangKind::ReadyTimeout,
            sup::HangKind::Wedged,
        ];
        let recorded: std::collections::BTreeSet<_> = found
            .iter()
            .map(|k| metric_hang_kind(*k).as_str())
            .collect();
        let exported: std::collections::BTreeSet<_> =
            HangKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(recorded, exported);
        for k in found {
            assert_eq!(metric_hang_kind(k).as_str(), k.as_str());
        }
    }

    #[test]
    fn a_hang_reason_is_one_line_without_the_status_prefix_and_cut() {
        assert_eq!(
            hang_reason("wedged: deadlock between\nA and B", 100),
            "deadlock between A and B"
        );
        assert_eq!(hang_reason("probe: timed out", 100), "probe: timed out");
        assert_eq!(hang_reason("wedged: ééé", 2), "éé…");
        // A control character of two bytes shown as one space: nothing was cut.
        assert_eq!(hang_reason("wedged: a\u{85}b", 3), "a b");
    }
}

#[cfg(test)]
mod key_tests {
    use super::templated;

    #[test]
    fn a_tainted_status_is_keyed_by_route_not_by_id() {
        let a = templated("tainted: panic in POST /items/7: mutex `items` poisoned");
        let b = templated("tainted: panic in POST /items/8: mutex `items` poisoned");
        assert_eq!(a, b);
        assert_eq!(
            a,
            "tainted: panic in POST /items/{int}: mutex `items` poisoned"
        );
        // Other routes, other keys; text without paths is kept.
        assert_ne!(
            a,
            templated("tainted: panic in POST /orders/7: mutex `items` poisoned")
        );
        assert_eq!(templated("tainted: by hand"), "tainted: by hand");
    }
}
