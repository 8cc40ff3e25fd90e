//! The worker pool and its event loop: spawning, reaping, restarting, hang detection,
//! reload and stop. Everything that changes state happens in one task, so no lock is held
//! across decisions; the outside world sees [`Snapshot`]s and [`Event`]s.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{broadcast, mpsc};

use crate::config::{Config, ListenAddr, ReadyMode, ReloadMode};
use crate::error::StartError;
use crate::events::{
    AlertHook, Counters, Event, ExitInfo, HangKind, RestartReason, Snapshot, WorkerInfo,
    WorkerState,
};
use crate::notify::{self, NotifyMessage, NotifySocket};
use crate::output::{self, Stream};
use crate::policy::{Backoff, Intensity};
use crate::probe;
use crate::reconfig::{self, ConfigSource};
use crate::run_as::{RunAs, SHIM_CREDENTIALS_ENV};
use crate::shim::{SHIM_FDS_ENV, SHIM_NOFILE_ENV, SHIM_PARENT_ENV};
use crate::socket::{self, Listener};
use crate::systemd::{Systemd, SYSTEMD_VARS};

/// Exit status after the restart intensity was exceeded.
pub const EXIT_GAVE_UP: u8 = 3;

/// How [`Supervisor::run`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Stopped on request; `clean` is false when a worker had to be SIGKILLed.
    Stopped {
        /// Every worker exited within `--stop-timeout`.
        clean: bool,
    },
    /// The restart intensity was exceeded.
    GaveUp {
        /// What was exceeded.
        reason: String,
    },
}

impl Outcome {
    /// The process exit status for this outcome: 0 clean stop, 1 forced stop, 3 gave up.
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Stopped { clean: true } => 0,
            Outcome::Stopped { clean: false } => 1,
            Outcome::GaveUp { .. } => EXIT_GAVE_UP,
        }
    }
}

/// A request to a running supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Control {
    /// Same as SIGHUP.
    Reload,
    /// Same as SIGTERM.
    Stop,
}

/// A cloneable handle on a running (or about to run) supervisor.
#[derive(Debug, Clone)]
pub struct Handle {
    events: broadcast::Sender<Event>,
    snapshot: Arc<Mutex<Snapshot>>,
    control: mpsc::UnboundedSender<Control>,
}

impl Handle {
    /// Subscribes to events (a slow subscriber loses the oldest ones, see
    /// [`broadcast`]; use an [`AlertHook`] to see every one).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// A copy of the current state.
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Asks the supervisor to reload or stop; false if it has ended.
    pub fn send(&self, c: Control) -> bool {
        self.control.send(c).is_ok()
    }
}

/// The supervisor: sockets bound, command checked, ready to [`run`](Supervisor::run).
pub struct Supervisor {
    config: Config,
    listeners: Vec<Listener>,
    shared_probe: Option<ListenAddr>,
    shim: PathBuf,
    systemd: Systemd,
    hooks: Vec<Arc<dyn AlertHook>>,
    handle: Handle,
    control_rx: mpsc::UnboundedReceiver<Control>,
    reload_source: Option<ConfigSource>,
    /// The soft open-file limit the supervisor was started with, when it raised its own.
    nofile: Option<u64>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Supervisor {
    /// Checks the command, takes systemd's sockets or binds `--listen`, and registers as
    /// child subreaper. Call it before starting any thread (it edits the environment).
    pub fn new(config: Config) -> Result<Self, StartError> {
        let program = &config.command[0];
        socket::check_command(program)?;
        if let Some(r) = &config.run_as {
            r.check_permitted().map_err(StartError::Usage)?;
        }
        let systemd = Systemd::from_env();
        let inherited = socket::from_systemd();
        socket::forget_systemd_env();
        let inherited = inherited?;
        let listeners = if !inherited.is_empty() {
            if !config.listen.is_empty() {
                tracing::warn!(
                    "using the {} socket(s) passed by systemd; --listen is ignored",
                    inherited.len()
                );
            }
            inherited
        } else {
            let unix = socket::UnixAccess {
                mode: config.socket_mode,
                gid: config.socket_group.as_ref().map(|&(_, gid)| gid),
            };
            socket::bind_all(&config.listen, unix)?
        };
        if config.port_env.is_some() && !listeners.is_empty() {
            return Err(StartError::Usage(
                "--port-env cannot be used with passed sockets".into(),
            ));
        }
        let shared_probe = listeners
            .iter()
            .find_map(|l| l.local.as_ref())
            .map(socket::probe_target);
        reconfig::check_probe_target(&config, shared_probe.as_ref()).map_err(StartError::Usage)?;
        let shim =
            std::env::current_exe().map_err(|e| StartError::setup("find the unwedge binary", e))?;
        // Two pipes per worker, the sockets, the admin's connections: more than the usual
        // 1024 with a few hundred workers. Workers get the original limit back (the shim).
        let nofile = crate::shim::raise_nofile();
        if std::process::id() != 1 {
            if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
                tracing::warn!(
                    "cannot become child subreaper ({e}); orphans of workers go to init"
                );
            }
        }
        let (events, _) = broadcast::channel(1024);
        let (control, control_rx) = mpsc::unbounded_channel();
        let snapshot = Arc::new(Mutex::new(Snapshot {
            generation: 1,
            ready: false,
            reloading: false,
            reload_requests: 0,
            stopping: false,
            workers: Vec::new(),
            counters: Counters::default(),
            started_at: SystemTime::now(),
        }));
        Ok(Supervisor {
            config,
            listeners,
            shared_probe,
            shim,
            systemd,
            hooks: Vec::new(),
            handle: Handle {
                events,
                snapshot,
                control,
            },
            control_rx,
            reload_source: None,
            nofile,
        })
    }

    /// Adds a hook that sees every event synchronously (alerts).
    pub fn with_alert_hook(mut self, hook: impl AlertHook) -> Self {
        self.hooks.push(Arc::new(hook));
        self
    }

    /// Where each reload gets the new generation's configuration (e.g. the config file read
    /// again). Without one, a reload restarts the workers as they are. What a reload can
    /// change and what it keeps: [`reconfig`](crate::reconfig). An `Err` refuses the reload
    /// (logged, [`Event::ReloadFailed`]); the running workers go on.
    ///
    /// ```no_run
    /// # fn f(config: unwedge_supervisor::Config) -> Result<(), unwedge_supervisor::StartError> {
    /// use unwedge_supervisor::{Config, Options, Supervisor};
    /// let file = std::path::PathBuf::from("/etc/unwedge.toml");
    /// let supervisor = Supervisor::new(config)?.reload_config_with(move || {
    ///     let options = Options::from_file(&file).map_err(|e| e.to_string())?;
    ///     Config::resolve(Some(options), Options::default(), Vec::new()).map_err(|e| e.to_string())
    /// });
    /// # let _ = supervisor; Ok(()) }
    /// ```
    pub fn reload_config_with(
        mut self,
        source: impl FnMut() -> Result<Config, String> + Send + 'static,
    ) -> Self {
        self.reload_source = Some(Box::new(source));
        self
    }

    /// A handle for events, snapshots and control.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// The addresses the supervisor listens on (after binding; port 0 resolved).
    pub fn local_addrs(&self) -> Vec<ListenAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local.clone())
            .collect()
    }

    /// Runs until stopped (SIGTERM/SIGINT or [`Control::Stop`]) or the restart intensity is
    /// exceeded. Must run inside a tokio runtime with signal handling.
    ///
    /// Workers are killed (SIGKILL) when the thread that started them exits (Linux's
    /// `PR_SET_PDEATHSIG` follows the parent thread): run it on the main thread or on a
    /// runtime's worker threads, which live as long as the supervisor, not inside
    /// `spawn_blocking` (those threads end when idle).
    pub async fn run(self) -> Result<Outcome, StartError> {
        let owner = self.config.run_as.as_ref().and_then(RunAs::socket_owner);
        let mut notify = NotifySocket::bind_for(owner)
            .map_err(|e| StartError::setup("create the notify socket", e))?;
        let sig = |k: SignalKind, name: &str| {
            signal(k).map_err(|e| StartError::setup(format!("handle {name}"), e))
        };
        let mut sigchld = sig(SignalKind::child(), "SIGCHLD")?;
        let mut sigterm = sig(SignalKind::terminate(), "SIGTERM")?;
        let mut sigint = sig(SignalKind::interrupt(), "SIGINT")?;
        let mut sighup = sig(SignalKind::hangup(), "SIGHUP")?;
        let mut sigusr1 = sig(SignalKind::user_defined1(), "SIGUSR1")?;
        let mut sigusr2 = sig(SignalKind::user_defined2(), "SIGUSR2")?;
        if let Some(p) = &self.config.pidfile {
            crate::pidfile::claim(p)?;
        }
        let pidfile = self.config.pidfile.clone();
        let (probe_tx, mut probe_rx) = mpsc::unbounded_channel();
        let mut control_rx = self.control_rx;
        let now = Instant::now();
        let n = self.config.workers;
        let mut pool = Pool {
            slots: (0..n).map(|_| Slot::new(&self.config)).collect(),
            intensity: Intensity::new(self.config.max_restarts, self.config.within),
            config: Arc::new(self.config),
            reload_source: self.reload_source,
            nofile: self.nofile,
            listeners: self.listeners,
            shared_probe: self.shared_probe,
            shim: self.shim,
            notify_path: notify.path().to_owned(),
            systemd: self.systemd,
            hooks: self.hooks,
            handle: self.handle,
            workers: HashMap::new(),
            counters: Counters::default(),
            active_gen: 1,
            next_gen: 1,
            reload: None,
            reload_requests: 0,
            reload_pending: false,
            next_memory_check: now + MEMORY_CHECK_INTERVAL,
            stopping: false,
            leftovers: Vec::new(),
            daemons: Vec::new(),
            stop_deadline: None,
            forced: false,
            gave_up: None,
            first_ready: false,
            probe_tx,
            next_sd_watchdog: None,
            last_sd_status: String::new(),
            bind_hint_given: Default::default(),
            listener_inodes: Vec::new(),
            oom: crate::oom::OomCounter::for_this_process().and_then(crate::oom::OomWatch::new),
        };
        pool.listener_inodes = pool
            .listeners
            .iter()
            .filter_map(|l| {
                let fd = std::os::fd::AsRawFd::as_raw_fd(&l.fd);
                std::fs::metadata(format!("/proc/self/fd/{fd}")).ok()
            })
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .collect();
        pool.next_sd_watchdog = pool.systemd.watchdog_interval().map(|i| now + i);
        if let (true, Some(each)) = (pool.config.max_memory_auto, pool.config.max_memory) {
            tracing::info!(
                "--max-memory auto: {} per worker (90 % of this cgroup's memory limit, shared by \
                 {n} worker(s) and one replacement)",
                crate::config::human_size(each)
            );
        }
        if let Some(oom) = &pool.oom {
            warn_if_over_cgroup_limit(&pool.config, oom.limit());
            if oom.kills_as_a_group() {
                tracing::warn!(
                    "this cgroup has memory.oom.group set (Kubernetes 1.28 and later on cgroup \
                     v2, systemd's OOMPolicy=kill): an OOM kill of any worker kills every \
                     process here, the supervisor included, and connections are refused until \
                     it is restarted; keep workers under the memory limit with --max-memory, or \
                     have single processes killed (the kubelet's singleProcessOOMKill, \
                     OOMPolicy=continue)"
                );
            }
        }
        tracing::info!(
            "starting {n} worker(s){}{}: {}{}",
            if pool.config.workers_auto {
                " (--workers auto: one per available CPU)"
            } else {
                ""
            },
            match pool.config.run_as.as_ref().filter(|r| r.switches()) {
                Some(r) => format!(" as {}", r.describe()),
                None => String::new(),
            },
            pool.config.command.join(" "),
            pool.describe_sockets()
        );
        for slot in 0..n {
            pool.spawn(slot, 1, None);
        }
        let mut buf = vec![0u8; 256 * 1024];
        let mut next_notify_check = Instant::now() + NOTIFY_CHECK_INTERVAL;
        let mut notify_broken = false;
        let outcome = loop {
            pool.publish();
            if let Some(o) = pool.finished() {
                break o;
            }
            let deadline = pool.next_deadline().min(next_notify_check);
            tokio::select! {
                // Reaped below, whichever branch ran.
                _ = sigchld.recv() => {}
                _ = sigterm.recv() => pool.begin_stop("SIGTERM"),
                _ = sigint.recv() => pool.begin_stop("SIGINT"),
                _ = sighup.recv() => pool.begin_reload("SIGHUP"),
                _ = sigusr1.recv() => pool.forward(Signal::SIGUSR1),
                _ = sigusr2.recv() => pool.forward(Signal::SIGUSR2),
                Some(c) = control_rx.recv() => match c {
                    Control::Reload => pool.begin_reload("request"),
                    Control::Stop => pool.begin_stop("request"),
                },
                r = notify.recv(&mut buf) => match r {
                    Ok(d) => pool.on_datagram(d),
                    Err(e) => tracing::warn!("notify socket: {e}"),
                },
                Some(p) = probe_rx.recv() => pool.on_probe(p),
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
            if Instant::now() >= next_notify_check {
                next_notify_check = Instant::now() + NOTIFY_CHECK_INTERVAL;
                pool.find_daemons();
                pool.tick_oom(Instant::now());
                match notify.heal(&mut buf) {
                    Ok(None) => notify_broken = false,
                    Ok(Some(queued)) => {
                        notify_broken = false;
                        tracing::warn!(
                            "the notify socket {} was removed (a temporary file cleaner?); bound it again",
                            notify.path().display()
                        );
                        for d in queued {
                            pool.on_datagram(d);
                        }
                    }
                    Err(e) if !notify_broken => {
                        notify_broken = true;
                        tracing::error!(
                            "the notify socket {} was removed and cannot be bound again: {e}; \
                             workers cannot report readiness or heartbeats",
                            notify.path().display()
                        );
                    }
                    Err(_) => {}
                }
            }
            // Whichever branch woke the loop: a worker may exit while a timer or another
            // datagram is handled.
            pool.reap(&notify, &mut buf);
            pool.on_timers(Instant::now());
        };
        pool.publish();
        if let Some(p) = pidfile {
            crate::pidfile::release(&p);
        }
        Ok(outcome)
    }
}

#[derive(Debug)]
struct Pending {
    at: Instant,
    /// The crash it replaces (for crash-to-ready); `None` for a planned replacement.
    crash_at: Option<Instant>,
}

#[derive(Debug)]
struct Slot {
    backoff: Backoff,
    restarts: u32,
    last_exit: Option<ExitInfo>,
    pending: Option<Pending>,
}

impl Slot {
    fn new(c: &Config) -> Slot {
        Slot {
            backoff: Backoff::new(c.restart_delay, c.restart_delay_max, c.stable_after),
            restarts: 0,
            last_exit: None,
            pending: None,
        }
    }
}

#[derive(Debug)]
struct Worker {
    slot: usize,
    pid: i32,
    /// The configuration it was started with: its readiness, heartbeat and probe settings.
    config: Arc<Config>,
    generation: u64,
    started: Instant,
    started_wall: SystemTime,
    ready_at: Option<Instant>,
    state: WorkerState,
    /// Its exit must not cause a restart (stop, reload, or already replaced).
    stop_requested: bool,
    /// When it was first asked to stop, found hung, or said it was leaving.
    stop_since: Option<Instant>,
    /// It said STOPPING=1 on its own: replaced already, its restart reason is counted at exit.
    leaving: bool,
    last_watchdog: Option<Instant>,
    probe_failures: u32,
    next_probe: Instant,
    probe_inflight: bool,
    port: Option<u16>,
    status: Option<String>,
    last_report: Option<String>,
    kill_at: Option<Instant>,
    /// Stop signal due (a tainted worker that has not left on its own by then, a worker over
    /// `--max-memory` whose replacement is not ready by then).
    term_at: Option<Instant>,
    /// Over `--max-memory`: it serves on until its slot's replacement is ready, then gets
    /// the stop signal.
    retire_when_replaced: bool,
    crash_at: Option<Instant>,
    /// With children and `--max-memory`: when their PSS may be measured again (a page-table
    /// walk of the whole tree, so its cost sets the pace; see [`Pool::check_memory`]).
    next_pss: Instant,
    /// The last PSS measured, used until the next one.
    last_pss: Option<u64>,
    /// When it has run its `--max-lifetime` (less up to 10 %, at random).
    retire_at: Option<Instant>,
}

#[derive(Debug)]
struct ProbeResult {
    pid: i32,
    ready_check: bool,
    outcome: Result<(), String>,
}

#[derive(Debug)]
struct Reload {
    generation: u64,
    /// It answers the reload requests up to this number.
    requests: u64,
    /// One slot at a time (`--reload-mode rolling`).
    rolling: bool,
    /// The next slot to start a new worker in.
    next_slot: usize,
    /// The old worker whose exit the next slot waits for.
    waiting_for: Option<i32>,
    /// The new generation's configuration, when it changed.
    config: Option<Arc<Config>>,
}

/// The process group of a worker that exited and left processes of it running (forked
/// children, a preforking server's workers): they hold copies of the listening sockets, so
/// they may still accept connections with the exited worker's code and state, and would keep
/// the port bound after the supervisor stops.
#[derive(Debug)]
struct Leftover {
    worker: String,
    /// The group id: the exited worker's pid.
    pgid: i32,
    /// When the group gets SIGKILL if anything of it still runs.
    kill_at: Instant,
}

struct Pool {
    /// The serving generation's configuration (a reload's candidates have their own).
    config: Arc<Config>,
    reload_source: Option<ConfigSource>,
    /// See [`Supervisor`]'s field.
    nofile: Option<u64>,
    listeners: Vec<Listener>,
    shared_probe: Option<ListenAddr>,
    shim: PathBuf,
    notify_path: PathBuf,
    systemd: Systemd,
    hooks: Vec<Arc<dyn AlertHook>>,
    handle: Handle,
    slots: Vec<Slot>,
    intensity: Intensity,
    workers: HashMap<i32, Worker>,
    counters: Counters,
    active_gen: u64,
    next_gen: u64,
    reload: Option<Reload>,
    /// Reload requests received (see [`Snapshot::reload_requests`]).
    reload_requests: u64,
    /// A reload was requested while one was in progress: another follows it.
    reload_pending: bool,
    /// When the workers' resident memory is next compared with their `--max-memory`.
    next_memory_check: Instant,
    /// Process groups of exited workers that still had processes running: sent the stop
    /// signal, SIGKILL at their deadline.
    leftovers: Vec<Leftover>,
    /// Processes that went into the background (a session of their own, adopted by the
    /// supervisor: a worker's daemon): stopped with the supervisor.
    daemons: Vec<i32>,
    stopping: bool,
    stop_deadline: Option<Instant>,
    forced: bool,
    gave_up: Option<String>,
    first_ready: bool,
    probe_tx: mpsc::UnboundedSender<ProbeResult>,
    next_sd_watchdog: Option<Instant>,
    last_sd_status: String,
    /// A worker that failed to start was found binding an address itself (said once).
    bind_hint_given: Arc<std::sync::atomic::AtomicBool>,
    /// The inodes of `listeners`, as a worker's `/proc` shows them.
    listener_inodes: Vec<u64>,
    /// The kernel's count of OOM kills in the workers' cgroup, to tell why a worker got a
    /// SIGKILL nobody here sent.
    oom: Option<crate::oom::OomWatch>,
}

/// Fast polling of a starting worker's port or probe (readiness).
const READY_POLL: Duration = Duration::from_millis(5);

/// Polling of a starting worker's event loop for the passed socket (`--ready accept`): a look
/// at `/proc` for each of its processes.
const ACCEPT_POLL: Duration = Duration::from_millis(20);

/// How often the notify socket's file is checked (and bound again if it was removed).
const NOTIFY_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How often the workers' resident memory is compared with `--max-memory`.
const MEMORY_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Warns when `--max-memory` cannot act before the OOM killer: the workers, each allowed up
/// to it, and one more while a replacement overlaps, would need more than the memory limit of
/// the supervisor's cgroup (`limit`), so the kernel would kill a worker (cutting its requests)
/// before any of them reached the limit that replaces it gracefully.
fn warn_if_over_cgroup_limit(config: &Config, limit: Option<u64>) {
    let (Some(each), Some(limit)) = (config.max_memory, limit) else {
        return;
    };
    let n = config.workers as u64 + 1;
    let total = each.saturating_mul(n);
    if total > limit {
        tracing::warn!(
            "--max-memory {} for {} worker(s), and one more during a replacement, adds up to {}, \
             over the memory limit of the supervisor's cgroup ({}): the kernel's OOM killer \
             would kill a worker before --max-memory replaces it gracefully; set --max-memory \
             at most {}",
            crate::config::format_size(each),
            config.workers,
            crate::config::human_size(total),
            crate::config::human_size(limit),
            crate::config::human_size(limit / n)
        );
    }
}

/// `lifetime` less up to 10 % of it, at random: workers started together (at start, at a
/// reload) are not all replaced at once.
fn jittered(lifetime: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    // A randomly keyed hash: random enough to spread restarts, no dependency.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    let fraction = (h.finish() % 1_000) as f64 / 10_000.0; // 0 … 0.0999
    lifetime.mul_f64(1.0 - fraction)
}

/// The most queued notify datagrams read before a reap (a flood must not delay it long).
const MAX_DRAINED: usize = 256;

/// Whether a starting worker under `c` is watched for waiting on the passed sockets (their
/// `inodes`): `--ready accept`.
fn watches_for_accept(c: &Config, inodes: &[u64]) -> bool {
    c.ready == ReadyMode::Accept && !inodes.is_empty()
}

/// Whether readiness under `c` is found by polling (a port, a probe) rather than told.
fn needs_poll(c: &Config) -> bool {
    match c.ready {
        ReadyMode::Probe => true,
        ReadyMode::Port => true,
        ReadyMode::Auto => c.port_env.is_some(),
        ReadyMode::Notify | ReadyMode::None | ReadyMode::Accept => false,
    }
}

/// Worker `w`'s memory as `--max-memory` compares it with `limit`
/// ([`memory::worker_bytes_against`](crate::memory::worker_bytes_against)): the PSS of a tree
/// is measured only when the cheap RSS sum is over the limit, and at most once per 20 times
/// its last measurement took (at least 1 s apart), so the walk of a big tree's page tables
/// (~12 ms per GiB) costs the supervisor's loop at most ~5 % of its time; in between, the last
/// PSS stands.
fn worker_memory(w: &mut Worker, limit: u64, now: Instant) -> Option<u64> {
    let precise = now >= w.next_pss;
    let started = Instant::now();
    let (bytes, is_precise) = crate::memory::worker_bytes_against(w.pid, limit, precise)?;
    if is_precise && precise {
        w.next_pss = crate::memory::next_measurement(now, started.elapsed());
        w.last_pss = Some(bytes);
    } else if !is_precise && bytes > limit {
        // Over by the RSS sum, not measured precisely this time: the last PSS stands.
        return w.last_pss;
    }
    Some(bytes)
}

/// `12, 13, 14` (the first 8, then `…`).
fn list_pids(pids: &[i32]) -> String {
    let mut text: Vec<String> = pids.iter().take(8).map(i32::to_string).collect();
    if pids.len() > 8 {
        text.push("…".to_owned());
    }
    text.join(", ")
}

/// Why a worker that ignored its SIGTERM may have, when `/proc` shows a known cause.
fn stuck_hint(pid: i32) -> &'static str {
    match crate::procfs::wchan(pid).as_deref() {
        // A blocking accept() goes on after a signal handler ran (Python retries it), so a
        // handler that sets a flag is seen at the next connection. Workers sharing a socket
        // get there easily: each is woken for a connection only one of them gets.
        Some("inet_csk_accept") => {
            "; it waits in a blocking accept(), so a SIGTERM handler that sets a flag is seen \
             only when a connection comes: set the listening socket non-blocking (see Sockets \
             in docs/supervisor.md)"
        }
        _ => "",
    }
}

fn slot_id(slot: usize) -> String {
    format!("w{}", slot + 1)
}

impl Pool {
    /// The addresses of the sockets the workers are passed.
    fn socket_addrs(&self) -> Vec<String> {
        self.listeners
            .iter()
            .map(|l| l.local.as_ref().map_or(l.name.clone(), ToString::to_string))
            .collect()
    }

    fn describe_sockets(&self) -> String {
        if let Some(v) = &self.config.port_env {
            return format!(" (own port per worker in ${v})");
        }
        let addrs = self.socket_addrs();
        if addrs.is_empty() {
            String::new()
        } else {
            format!(" (sockets: {})", addrs.join(", "))
        }
    }

    fn emit(&self, e: Event) {
        for h in &self.hooks {
            h.on_event(&e);
        }
        let _ = self.handle.events.send(e);
    }

    /// Starts a worker in `slot`; a failure to spawn counts as a failed start.
    fn spawn(&mut self, slot: usize, generation: u64, crash_at: Option<Instant>) {
        match self.try_spawn(slot, generation, crash_at) {
            Ok(()) => {}
            Err(e) => {
                tracing::error!("{}: cannot start worker: {e}", slot_id(slot));
                if self
                    .reload
                    .as_ref()
                    .is_some_and(|r| r.generation == generation)
                {
                    self.reload_failed(format!("cannot start worker: {e}"));
                } else {
                    self.counters
                        .restarts
                        .entry(RestartReason::FailedStart)
                        .and_modify(|c| *c += 1)
                        .or_insert(1);
                    self.schedule_restart(
                        slot,
                        RestartReason::FailedStart,
                        Some(Instant::now()),
                        Duration::ZERO,
                        "could not be started",
                    );
                }
            }
        }
    }

    fn try_spawn(
        &mut self,
        slot: usize,
        generation: u64,
        crash_at: Option<Instant>,
    ) -> std::io::Result<()> {
        let id = slot_id(slot);
        let config = match &self.reload {
            Some(Reload {
                generation: g,
                config: Some(c),
                ..
            }) if *g == generation => c.clone(),
            _ => self.config.clone(),
        };
        let port = match &config.port_env {
            Some(_) => Some(socket::free_port()?),
            None => None,
        };
        let command = &config.command;
        // Every worker starts through the shim: it places the sockets and ties the worker's
        // life to ours.
        let mut cmd = Command::new(&self.shim);
        cmd.arg("exec-shim")
            .arg("--")
            .args(command)
            .env(SHIM_FDS_ENV, socket::shim_fds(&self.listeners))
            .env(SHIM_PARENT_ENV, std::process::id().to_string());
        if let Some(n) = self.nofile {
            cmd.env(SHIM_NOFILE_ENV, n.to_string());
        }
        for v in SYSTEMD_VARS {
            cmd.env_remove(v);
        }
        if !self.listeners.is_empty() {
            cmd.env("LISTEN_FDNAMES", socket::fd_names(&self.listeners));
        }
        cmd.env("NOTIFY_SOCKET", &self.notify_path);
        if let Some(w) = config.watchdog {
            cmd.env("WATCHDOG_USEC", w.as_micros().to_string());
        }
        if let (Some(var), Some(p)) = (&config.port_env, port) {
            cmd.env(var, p.to_string());
        }
        if let Some(r) = config.run_as.as_ref().filter(|r| r.switches()) {
            cmd.env(SHIM_CREDENTIALS_ENV, r.shim_value());
            for (k, v) in r.env() {
                cmd.env(k, v);
            }
        }
        cmd.env("UNWEDGE_WORKER", &id)
            .env("UNWEDGE_GENERATION", generation.to_string());
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn()?;
        let pid = child.id() as i32;
        let fmt = self.config.log_format;
        if let Some(out) = child.stdout.take() {
            let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(out))?;
            output::forward(rx, id.clone(), pid, Stream::Stdout, fmt);
        }
        if let Some(err) = child.stderr.take() {
            let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(err))?;
            output::forward(rx, id.clone(), pid, Stream::Stderr, fmt);
        }
        drop(child); // reaped by `reap` (waitpid), not by std
        let now = Instant::now();
        let ready_now = config.ready == ReadyMode::None;
        let retire_at = config.max_lifetime.map(|l| now + jittered(l));
        self.workers.insert(
            pid,
            Worker {
                slot,
                pid,
                config,
                generation,
                started: now,
                started_wall: SystemTime::now(),
                ready_at: None,
                state: WorkerState::Starting,
                stop_requested: false,
                stop_since: None,
                leaving: false,
                last_watchdog: None,
                probe_failures: 0,
                next_probe: now + READY_POLL,
                probe_inflight: false,
                port,
                status: None,
                last_report: None,
                kill_at: None,
                term_at: None,
                retire_when_replaced: false,
                crash_at,
                next_pss: now,
                last_pss: None,
                retire_at,
            },
        );
        tracing::debug!("{id} pid {pid} started (generation {generation})");
        if generation > 1 && crash_at.is_none() {
            tracing::info!("{id} pid {pid} started (generation {generation})");
        }
        self.emit(Event::WorkerStarted {
            worker: id,
            pid,
            generation,
        });
        if ready_now {
            self.mark_ready(pid);
        }
        Ok(())
    }

    fn mark_ready(&mut self, pid: i32) {
        self.mark_ready_because(pid, "");
    }

    /// [`Self::mark_ready`], saying `why` (`" (…)"`) in its log line.
    fn mark_ready_because(&mut self, pid: i32, why: &str) {
        let now = Instant::now();
        let Some(w) = self.workers.get_mut(&pid) else {
            return;
        };
        if w.ready_at.is_some() || w.stop_requested {
            return;
        }
        w.ready_at = Some(now);
        w.state = WorkerState::Ready;
        w.next_probe = now + w.config.probe_interval;
        w.probe_failures = 0;
        let startup = now - w.started;
        let crash_to_ready = w.crash_at.map(|c| now - c);
        let (slot, generation) = (w.slot, w.generation);
        if let Some(d) = crash_to_ready {
            let v = &mut self.counters.crash_to_ready;
            if v.len() >= 1024 {
                v.remove(0);
            }
            v.push(d);
        }
        let port = w.port.map(|p| format!(", port {p}")).unwrap_or_default();
        match crash_to_ready {
            Some(c) => tracing::info!(
                "{} pid {pid} ready in {} ({} after the crash{port}){why}",
                slot_id(slot),
                fmt_dur(startup),
                fmt_dur(c)
            ),
            None => tracing::info!(
                "{} pid {pid} ready in {}{}{why}",
                slot_id(slot),
                fmt_dur(startup),
                if port.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", &port[2..])
                }
            ),
        }
        self.emit(Event::WorkerReady {
            worker: slot_id(slot),
            pid,
            startup,
            crash_to_ready,
        });
        // Workers of this slot over their memory limit served until now: they go.
        self.stop_replaced(slot, pid, "", |o| o.retire_when_replaced);
        if let Some(r) = self.reload.as_ref().filter(|r| r.generation == generation) {
            let wanted = r.config.as_ref().unwrap_or(&self.config).workers;
            if r.rolling {
                self.roll_on(slot, pid, generation);
            }
            let ready = self
                .workers
                .values()
                .filter(|w| w.generation == generation && w.ready_at.is_some())
                .count();
            if ready == wanted {
                self.complete_reload();
            }
        } else if !self.first_ready && generation == self.active_gen {
            let ready = self
                .workers
                .values()
                .filter(|w| w.generation == generation && w.ready_at.is_some())
                .count();
            if ready == self.config.workers {
                self.first_ready = true;
                tracing::info!("all {} worker(s) ready", self.config.workers);
                self.systemd.ready(&self.status_line());
                self.last_sd_status = self.status_line();
            }
        }
    }

    /// Schedules a replacement for `slot` (backoff, intensity).
    fn schedule_restart(
        &mut self,
        slot: usize,
        reason: RestartReason,
        crash_at: Option<Instant>,
        uptime: Duration,
        why: &str,
    ) {
        if self.stopping {
            return;
        }
        let now = Instant::now();
        if let Err(e) = self.intensity.record(now) {
            self.give_up(e.to_string());
            return;
        }
        let s = &mut self.slots[slot];
        let delay = s.backoff.next_delay(uptime);
        s.restarts += 1;
        let at = now + delay;
        // A slot already waiting keeps the earlier start.
        if s.pending.as_ref().map_or(true, |p| at < p.at) {
            s.pending = Some(Pending { at, crash_at });
        }
        tracing::warn!("{} {why}; restarting in {}", slot_id(slot), fmt_dur(delay));
        self.emit(Event::RestartScheduled {
            worker: slot_id(slot),
            reason,
            delay,
        });
    }

    fn count_restart(&mut self, reason: RestartReason) {
        *self.counters.restarts.entry(reason).or_insert(0) += 1;
    }

    fn give_up(&mut self, reason: String) {
        if self.stopping {
            return;
        }
        tracing::error!(
            "giving up: {reason} (--max-restarts {} --within {}); stopping all workers, exit status {EXIT_GAVE_UP}",
            self.config.max_restarts,
            fmt_dur(self.config.within)
        );
        self.emit(Event::GaveUp {
            reason: reason.clone(),
        });
        self.gave_up = Some(reason);
        self.begin_stop("restart intensity exceeded");
    }

    fn terminate(&mut self, pid: i32, timeout: Duration) {
        let now = Instant::now();
        if let Some(w) = self.workers.get_mut(&pid) {
            w.stop_requested = true;
            w.stop_since.get_or_insert(now);
            w.term_at = None;
            if w.state != WorkerState::Hung {
                w.state = WorkerState::Stopping;
                let _ = killpg(Pid::from_raw(pid), w.config.stop_signal);
                let at = now + timeout;
                w.kill_at = Some(w.kill_at.map_or(at, |k| k.min(at)));
            }
        }
    }

    fn begin_stop(&mut self, why: &str) {
        if self.stopping {
            tracing::warn!("{why} again: killing all workers now");
            for pid in self.workers.keys() {
                let _ = killpg(Pid::from_raw(*pid), Signal::SIGKILL);
            }
            for l in self.leftovers.drain(..) {
                let _ = killpg(Pid::from_raw(l.pgid), Signal::SIGKILL);
            }
            for d in &self.daemons {
                let _ = kill(Pid::from_raw(*d), Signal::SIGKILL);
            }
            self.forced = true;
            return;
        }
        tracing::info!("{why}: stopping {} worker(s)", self.workers.len());
        self.stopping = true;
        self.systemd.stopping();
        for s in &mut self.slots {
            s.pending = None;
        }
        self.reload = None;
        self.reload_pending = false;
        let timeout = self.config.stop_timeout;
        let pids: Vec<i32> = self.workers.keys().copied().collect();
        for pid in pids {
            self.terminate(pid, timeout);
        }
        let deadline = Instant::now() + timeout;
        for l in &mut self.leftovers {
            l.kill_at = l.kill_at.min(deadline);
        }
        // Our children (adopted), so their pids cannot be reused before we reap them.
        for d in &self.daemons {
            let _ = kill(Pid::from_raw(*d), self.config.stop_signal);
        }
        self.stop_deadline = Some(deadline);
    }

    /// After worker `pid` (the leader of its process group) exited: processes of its group
    /// still running get the stop signal now and SIGKILL after `--stop-timeout` (at the stop
    /// deadline when the supervisor is stopping), as systemd does with a unit's processes. They would
    /// otherwise hold the listening sockets (accepting with the exited worker's code and state,
    /// keeping the port bound after the supervisor stops) and their memory.
    fn end_group(&mut self, id: &str, pid: i32) {
        // No group left (the common case) costs one syscall; only a group that still has
        // members, perhaps only zombies, costs a look at every process.
        if killpg(Pid::from_raw(pid), None::<Signal>).is_err() {
            return;
        }
        let members = crate::procfs::group_members(pid);
        if members.is_empty() {
            return;
        }
        let stop_signal = self.config.stop_signal;
        let _ = killpg(Pid::from_raw(pid), stop_signal);
        let now = Instant::now();
        let kill_at = match self.stop_deadline {
            Some(d) => d.min(now + self.config.stop_timeout),
            // The stop's deadline has passed: no more time for anyone.
            None if self.stopping => now,
            None => now + self.config.stop_timeout,
        };
        tracing::warn!(
            "{id} pid {pid} exited and left {} process(es) of its group running (pid {}); \
             sending them {}, SIGKILL in {}",
            members.len(),
            list_pids(&members),
            stop_signal.as_str(),
            fmt_dur(kill_at - now)
        );
        self.counters.leftover_processes += members.len() as u64;
        self.emit(Event::LeftoverProcesses {
            worker: id.to_owned(),
            pid,
            pids: members,
        });
        self.leftovers.push(Leftover {
            worker: id.to_owned(),
            pgid: pid,
            kill_at,
        });
    }

    /// SIGKILL to the leftover groups whose deadline passed, if anything of them still runs.
    fn kill_leftovers(&mut self, now: Instant) {
        self.forget_ended_leftovers();
        let (due, waiting): (Vec<Leftover>, Vec<Leftover>) = std::mem::take(&mut self.leftovers)
            .into_iter()
            .partition(|l| l.kill_at <= now);
        self.leftovers = waiting;
        for l in due {
            // Only a group with live members exists, so its id cannot name another one yet.
            let members = crate::procfs::group_members(l.pgid);
            if members.is_empty() {
                self.leftover_ended(&l);
                continue;
            }
            tracing::warn!(
                "{} pid {}: {} leftover process(es) did not stop after {} (pid {}); sending SIGKILL",
                l.worker,
                l.pgid,
                members.len(),
                self.config.stop_signal.as_str(),
                list_pids(&members)
            );
            let _ = killpg(Pid::from_raw(l.pgid), Signal::SIGKILL);
            if self.stopping {
                self.forced = true;
            }
            // Dying now: a rolling reload need not wait for the reap.
            self.roll_after_exit(l.pgid);
        }
    }

    /// Drops the leftover groups whose last process is gone (reaped by us, or by another
    /// member of the group): `killpg` with no signal finds no process of the group.
    fn forget_ended_leftovers(&mut self) {
        if self.leftovers.is_empty() {
            return;
        }
        let (live, ended): (Vec<Leftover>, Vec<Leftover>) = std::mem::take(&mut self.leftovers)
            .into_iter()
            .partition(|l| killpg(Pid::from_raw(l.pgid), None::<Signal>).is_ok());
        self.leftovers = live;
        for l in ended {
            self.leftover_ended(&l);
        }
    }

    fn leftover_ended(&mut self, l: &Leftover) {
        tracing::info!(
            "{} pid {}: its leftover processes have exited",
            l.worker,
            l.pgid
        );
        // The slot's old worker is only now entirely gone: a rolling reload's next step.
        self.roll_after_exit(l.pgid);
    }

    fn forward(&self, sig: Signal) {
        for pid in self.workers.keys() {
            let _ = kill(Pid::from_raw(*pid), sig);
        }
    }

    fn finished(&self) -> Option<Outcome> {
        if !self.stopping
            || !self.workers.is_empty()
            || !self.leftovers.is_empty()
            || !self.daemons.is_empty()
        {
            return None;
        }
        Some(match &self.gave_up {
            Some(r) => Outcome::GaveUp { reason: r.clone() },
            None => {
                tracing::info!("all workers stopped");
                Outcome::Stopped {
                    clean: !self.forced,
                }
            }
        })
    }

    /// A reload request: a reload now, or, during one, another one right after it.
    fn begin_reload(&mut self, why: &str) {
        if self.stopping {
            return;
        }
        self.reload_requests += 1;
        if let Some(r) = &self.reload {
            // Started before this request, it may run an older command or configuration
            // than the one this request is about: one more reload follows it.
            if !self.reload_pending {
                tracing::info!(
                    "{why}: generation {} is still starting; another reload follows it",
                    r.generation
                );
            }
            self.reload_pending = true;
            return;
        }
        self.start_reload(why);
    }

    /// After a reload ended: the reload requested meanwhile, if any.
    fn start_pending_reload(&mut self) {
        if std::mem::take(&mut self.reload_pending) && !self.stopping {
            self.start_reload("queued reload");
        }
    }

    fn start_reload(&mut self, why: &str) {
        let requests = self.reload_requests;
        self.systemd.reloading();
        let new_config = match self.new_config() {
            Ok(c) => c,
            Err(reason) => {
                let generation = self.next_gen.max(self.active_gen) + 1;
                tracing::error!(
                    "{why}: reload refused: {reason}; generation {} keeps serving",
                    self.active_gen
                );
                self.counters.reloads_failed += 1;
                self.emit(Event::ReloadFailed {
                    generation,
                    reason: format!("refused: {reason}"),
                    requests,
                });
                self.systemd.ready(&self.status_line());
                return;
            }
        };
        self.next_gen = self.next_gen.max(self.active_gen) + 1;
        let generation = self.next_gen;
        let workers = new_config
            .as_ref()
            .map_or(self.config.workers, |c| c.workers);
        let rolling =
            new_config.as_deref().unwrap_or(&self.config).reload_mode == ReloadMode::Rolling;
        tracing::info!(
            "{why}: reloading: starting generation {generation}{}",
            if rolling {
                " (rolling: one worker at a time)"
            } else {
                ""
            }
        );
        while self.slots.len() < workers {
            let c = new_config.as_deref().unwrap_or(&self.config);
            self.slots.push(Slot::new(c));
        }
        // Rolling: the first slot now, each next one once the one before is ready.
        let first = if rolling { workers.min(1) } else { workers };
        self.reload = Some(Reload {
            generation,
            requests,
            config: new_config,
            rolling,
            next_slot: first,
            waiting_for: None,
        });
        for slot in 0..first {
            if self.reload.is_none() {
                break;
            }
            self.spawn(slot, generation, None);
        }
    }

    /// A rolling reload's worker in `slot` is ready: the slot's old worker goes, and once it
    /// has exited (so that at most one worker more than usual runs), the next slot's new
    /// worker starts.
    fn roll_on(&mut self, slot: usize, pid: i32, generation: u64) {
        let old = self.stop_replaced(slot, pid, &format!(" of generation {generation}"), |o| {
            o.generation != generation && !o.stop_requested
        });
        match (old.first(), self.reload.as_mut()) {
            (Some(&old), Some(r)) => r.waiting_for = Some(old),
            _ => self.roll_next(),
        }
    }

    /// The other workers of `slot` that `which` picks are replaced by `pid`, ready now: each
    /// gets the stop signal (and SIGKILL after its `--stop-timeout`). Returns their pids.
    fn stop_replaced(
        &mut self,
        slot: usize,
        pid: i32,
        by: &str,
        which: impl Fn(&Worker) -> bool,
    ) -> Vec<i32> {
        let old: Vec<(i32, Duration)> = self
            .workers
            .values()
            .filter(|o| o.slot == slot && o.pid != pid && which(o))
            .map(|o| (o.pid, o.config.stop_timeout))
            .collect();
        for &(old, stop_timeout) in &old {
            tracing::info!(
                "{} pid {old}: replaced by pid {pid}{by}; stopping it",
                slot_id(slot)
            );
            self.terminate(old, stop_timeout);
        }
        old.into_iter().map(|(old, _)| old).collect()
    }

    /// A rolling reload's next slot: its new worker starts, if slots remain.
    fn roll_next(&mut self) {
        let Some(r) = self.reload.as_mut().filter(|r| r.rolling) else {
            return;
        };
        let generation = r.generation;
        let wanted = r.config.as_ref().unwrap_or(&self.config).workers;
        let next = r.next_slot;
        if next < wanted {
            r.next_slot += 1;
            self.spawn(next, generation, None);
        }
    }

    /// `pid` exited: if a rolling reload waited for it, the next slot's turn, once the
    /// processes it left in its group are gone too (a shell wrapper without `exec` exits at
    /// SIGTERM while its server still drains: at most one worker more than usual means the
    /// server too).
    fn roll_after_exit(&mut self, pid: i32) {
        if self.leftovers.iter().any(|l| l.pgid == pid) {
            return;
        }
        if let Some(r) = self.reload.as_mut().filter(|r| r.waiting_for == Some(pid)) {
            r.waiting_for = None;
            self.roll_next();
        }
    }

    /// The next generation's configuration from the reload source: `None` when there is no
    /// source or nothing a reload applies changed.
    fn new_config(&mut self) -> Result<Option<Arc<Config>>, String> {
        let Some(source) = self.reload_source.as_mut() else {
            return Ok(None);
        };
        let (new, changes) =
            reconfig::prepare(&self.config, source()?, self.shared_probe.as_ref())?;
        if changes.is_empty() {
            tracing::info!("reload: configuration unchanged");
            return Ok(None);
        }
        tracing::info!("reload: new configuration: {}", changes.join(", "));
        if let Some(oom) = &self.oom {
            warn_if_over_cgroup_limit(&new, oom.limit());
        }
        Ok(Some(Arc::new(new)))
    }

    fn complete_reload(&mut self) {
        let Some(r) = self.reload.take() else { return };
        if let Some(c) = r.config {
            // The new generation's settings become the supervisor's: its restart policy and
            // timeouts, the number of workers replaced on a crash.
            for s in &mut self.slots {
                s.backoff = Backoff::new(c.restart_delay, c.restart_delay_max, c.stable_after);
            }
            self.intensity = Intensity::new(c.max_restarts, c.within);
            self.config = c;
        }
        let old: Vec<i32> = self
            .workers
            .values()
            .filter(|w| w.generation != r.generation)
            .map(|w| w.pid)
            .collect();
        self.active_gen = r.generation;
        for s in &mut self.slots {
            s.pending = None;
        }
        tracing::info!(
            "generation {} ready; stopping {} old worker(s)",
            r.generation,
            old.len()
        );
        let timeout = self.config.stop_timeout;
        for pid in old {
            self.terminate(pid, timeout);
        }
        self.counters.reloads += 1;
        self.first_ready = true;
        self.emit(Event::Reloaded {
            generation: r.generation,
            requests: r.requests,
        });
        self.systemd.ready(&self.status_line());
        self.start_pending_reload();
    }

    fn reload_failed(&mut self, reason: String) {
        let Some(r) = self.reload.take() else { return };
        tracing::error!(
            "reload failed: generation {} {reason}; tearing it down, generation {} keeps serving",
            r.generation,
            self.active_gen
        );
        let new: Vec<i32> = self
            .workers
            .values()
            .filter(|w| w.generation == r.generation)
            .map(|w| w.pid)
            .collect();
        let timeout = self.config.stop_timeout.min(Duration::from_secs(5));
        for pid in new {
            self.terminate(pid, timeout);
        }
        if r.rolling {
            // The slots already switched lost their old worker: the serving generation again.
            for slot in 0..self.config.workers {
                let serving = self.workers.values().any(|w| {
                    w.slot == slot && w.generation == self.active_gen && !w.stop_requested
                });
                if !serving && self.slots[slot].pending.is_none() {
                    tracing::info!(
                        "{}: starting generation {} again in it",
                        slot_id(slot),
                        self.active_gen
                    );
                    self.spawn(slot, self.active_gen, None);
                }
            }
        }
        self.counters.reloads_failed += 1;
        self.emit(Event::ReloadFailed {
            generation: r.generation,
            reason,
            requests: r.requests,
        });
        self.systemd.ready(&self.status_line());
        self.start_pending_reload();
    }

    fn is_candidate(&self, generation: u64) -> bool {
        self.reload
            .as_ref()
            .is_some_and(|r| r.generation == generation)
    }

    /// Reaps every exited child: workers are handled, other pids are orphans we adopted.
    ///
    /// A worker's last words come first: each exited child is found without being reaped
    /// (`WNOWAIT`), the notify queue is read, and only then is the child reaped. Everything it
    /// sent before it exited is in the queue by then (a datagram is queued before `sendto`
    /// returns), so none of it is read after the reap, when its pid names no worker. (Reading
    /// the queue before looking for exits would miss a worker that sends and exits in
    /// between.)
    fn reap(&mut self, notify: &notify::NotifySocket, buf: &mut [u8]) {
        let exited = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        while let Ok(found) = waitid(Id::All, exited) {
            let Some(pid) = found.pid() else {
                break; // none exited
            };
            for d in notify.drain_queued(buf, MAX_DRAINED) {
                self.on_datagram(d);
            }
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => self.on_exit(pid.as_raw(), Some(code), None),
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    self.on_exit(pid.as_raw(), None, Some(sig as i32))
                }
                // Seen exited a moment ago: not expected; do not spin on it.
                _ => break,
            }
            self.roll_after_exit(pid.as_raw());
        }
    }

    fn on_exit(&mut self, pid: i32, code: Option<i32>, signal: Option<i32>) {
        let Some(w) = self.workers.remove(&pid) else {
            self.counters.orphans_reaped += 1;
            tracing::debug!("reaped orphan pid {pid}");
            // The last of a leftover group?
            self.forget_ended_leftovers();
            self.daemons.retain(|&d| d != pid);
            return;
        };
        let id = slot_id(w.slot);
        self.worker_exited(w, pid, code, signal);
        self.end_group(&id, pid);
        self.find_daemons();
    }

    /// Processes that went into the background out of a worker. A daemon forks, starts a
    /// session of its own (`setsid`) and lets its parent exit: out of the worker's process
    /// group, it is re-parented to the supervisor (the subreaper). Such a command cannot be
    /// supervised (its "worker" exits at once, the server runs on unseen), so say it plainly,
    /// once per process; they are stopped with the supervisor. Looked for at each worker's
    /// exit and every second (a daemon may call `setsid` only after its parent exited):
    /// one read of the supervisor's children lists. (As PID 1 in a container, a background
    /// process left by a `kubectl exec` is adopted too: named the same way, and stopped with
    /// the container as it would be anyway.)
    fn find_daemons(&mut self) {
        let me = std::process::id() as i32;
        let Ok(session) = nix::unistd::getsid(None).map(Pid::as_raw) else {
            return;
        };
        for child in crate::procfs::children(me) {
            if self.workers.contains_key(&child) || self.daemons.contains(&child) {
                continue;
            }
            if !crate::procfs::stat(child).is_some_and(|s| s.alive() && s.sid != session) {
                continue;
            }
            let command = crate::procfs::command_line(child).unwrap_or_default();
            tracing::warn!(
                "pid {child} (`{command}`) went into the background (a session of its own, \
                 adopted by the supervisor): if a worker's command daemonizes, it cannot be \
                 supervised; run it in the foreground (e.g. nginx's `daemon off;`, redis's \
                 `--daemonize no`). It is stopped with the supervisor"
            );
            if self.stopping {
                // Found during the stop (the stop must not wait for it forever): the stop
                // signal until the stop deadline, SIGKILL once it has passed.
                let sig = if self.stop_deadline.is_some() {
                    self.config.stop_signal
                } else {
                    Signal::SIGKILL
                };
                let _ = kill(Pid::from_raw(child), sig);
            }
            self.daemons.push(child);
        }
    }

    fn worker_exited(&mut self, w: Worker, pid: i32, code: Option<i32>, signal: Option<i32>) {
        let now = Instant::now();
        // A SIGKILL nobody here sent (not a stop, not a hang): the OOM killer's, most often.
        let oom = (signal == Some(Signal::SIGKILL as i32) && !w.stop_requested)
            .then(|| self.oom.as_mut()?.explain_sigkill(now))
            .flatten();
        let info = ExitInfo {
            code,
            signal,
            at: SystemTime::now(),
            requested: w.stop_requested,
            oom_killed: oom.is_some(),
        };
        let id = slot_id(w.slot);
        let uptime = now - w.started;
        self.slots[w.slot].last_exit = Some(info);
        // Held before the event: an observer may take the tail for a crash report.
        let failed_start_tail = (w.ready_at.is_none() && !w.stop_requested && !self.stopping)
            .then(|| output::StderrTail::of(pid))
            .flatten();
        self.emit(Event::WorkerExited {
            worker: id.clone(),
            pid,
            code,
            signal,
            requested: w.stop_requested,
            by_stop_signal: w.stop_requested && signal == Some(w.config.stop_signal as i32),
            oom_killed: oom.is_some(),
        });
        let reason = if w.ready_at.is_none() {
            RestartReason::FailedStart
        } else {
            match (code, signal) {
                (Some(0), _) => RestartReason::Exit,
                (Some(_), _) => RestartReason::Crash,
                _ if oom.is_some() => RestartReason::Oom,
                _ => RestartReason::Signal,
            }
        };
        if let Some(k) = &oom {
            self.explain_oom(&w, pid, k);
        }
        if w.stop_requested || self.stopping {
            if w.leaving && !self.stopping {
                self.count_restart(reason);
                tracing::info!("{id} pid {pid} {info} (already replaced)");
            } else {
                tracing::info!("{id} pid {pid} {info}");
            }
            if self.is_candidate(w.generation) {
                self.reload_failed(format!("worker {id} {info}"));
            }
            return;
        }
        if self.is_candidate(w.generation) {
            tracing::warn!("{id} pid {pid} of the new generation {info} before it was ready");
            self.reload_failed(format!("worker {id} {info}"));
            return;
        }
        if w.generation < self.active_gen {
            return;
        }
        self.count_restart(reason);
        let why = if reason == RestartReason::FailedStart {
            if let Some(tail) = failed_start_tail {
                self.hint_if_it_binds_itself(&w, pid, tail);
            }
            format!("pid {pid} {info} before it was ready (failed start)")
        } else {
            format!("pid {pid} {info} after {}", fmt_dur(uptime))
        };
        self.schedule_restart(w.slot, reason, Some(now), uptime, &why);
    }

    /// Samples the OOM kill count; says so when the kernel killed processes that were not
    /// workers (a worker's children: a preforking server's own workers, which it replaces
    /// itself, unseen otherwise).
    fn tick_oom(&mut self, now: Instant) {
        let Some(oom) = &mut self.oom else {
            return;
        };
        let count = oom.tick(now);
        if count == 0 {
            return;
        }
        let limit = match oom.limit() {
            Some(l) => format!(
                " (the cgroup's memory limit is {})",
                crate::config::human_size(l)
            ),
            None => String::new(),
        };
        tracing::warn!(
            "the kernel's OOM killer killed {count} process(es) of the supervisor's cgroup that \
             {} not a worker: a worker's own child (a preforking server's process) or another \
             process sharing the cgroup; see the kernel log (`dmesg`) for which{limit}",
            if count == 1 { "was" } else { "were" }
        );
        self.counters.oom_killed_other += count;
        self.emit(Event::OomKilledOther { count });
    }

    /// Says what the OOM killer's count showed, the limit that ran out, and what to do.
    fn explain_oom(&self, w: &Worker, pid: i32, k: &crate::oom::OomKill) {
        let id = slot_id(w.slot);
        let limit = match k.limit {
            Some(l) => format!(
                "; the memory limit of the supervisor's cgroup is {}",
                crate::config::human_size(l)
            ),
            None => String::new(),
        };
        let advice = match (w.config.max_memory, k.limit) {
            (None, Some(_)) => {
                "; --max-memory below that limit (leaving room for the other workers) replaces \
                 a growing worker gracefully, before the kernel cuts its requests"
            }
            (None, None) => {
                "; --max-memory replaces a growing worker gracefully, before the kernel cuts \
                 its requests"
            }
            (Some(_), _) => "",
        };
        tracing::warn!(
            "{id} pid {pid} was killed by the kernel's OOM killer: out of memory (oom_kill {} \
             -> {} in {}){limit}{advice}",
            k.count.0,
            k.count.1,
            k.file.display()
        );
    }

    /// A worker that failed to start and said an address is in use most likely binds the
    /// address the supervisor holds for it, instead of taking the socket it was passed: says
    /// so, once, when its stderr shows it (read off the loop, the lines may still come).
    fn hint_if_it_binds_itself(&self, w: &Worker, pid: i32, tail: output::StderrTail) {
        let given = &self.bind_hint_given;
        if w.config.port_env.is_some()
            || self.listeners.is_empty()
            || given.load(std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let given = given.clone();
        let id = slot_id(w.slot);
        let held = self.socket_addrs().join(", ");
        tokio::spawn(async move {
            let lines = tail.lines(Duration::from_millis(500)).await;
            let Some(line) = lines.iter().find(|l| output::says_address_in_use(l)) else {
                return;
            };
            if given.swap(true, std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            tracing::warn!(
                "{id} pid {pid} said `{}`: it seems to bind its address itself, while the \
                 supervisor holds {held} and passes it as fd 3 (LISTEN_FDS); make the command \
                 take the passed socket (see \"Taking the socket in your server\" in \
                 docs/supervisor.md), or give each worker a port of its own with --port-env",
                line.trim()
            );
        });
    }

    /// A worker taken as ready without a word (or not ready in time), with sockets of its own
    /// listening, most likely ignores the socket it was passed: nothing accepts the
    /// connections queued on it. Says so (one look at `/proc` per such worker). `tree` is the
    /// worker and its descendants.
    fn warn_if_it_listens_elsewhere(&self, pid: i32, tree: &[i32]) {
        if self.listeners.is_empty() {
            return;
        }
        let own: Vec<String> = crate::procfs::tcp_listening(tree)
            .into_iter()
            .filter(|(inode, _)| !self.listener_inodes.contains(inode))
            .map(|(_, addr)| addr.to_string())
            .collect();
        if own.is_empty() {
            return;
        }
        let id = self
            .workers
            .get(&pid)
            .map_or_else(String::new, |w| slot_id(w.slot));
        tracing::warn!(
            "{id} pid {pid} listens on {} itself, not on the socket it was passed: \
             connections to {} wait unanswered; make the command take the passed socket (see \
             \"Taking the socket in your server\" in docs/supervisor.md), or give each worker \
             a port of its own with --port-env",
            own.join(", "),
            self.socket_addrs().join(", ")
        );
    }

    fn worker_for_sender(&self, pid: i32) -> Option<i32> {
        if self.workers.contains_key(&pid) {
            return Some(pid);
        }
        // A worker's own children share its process group (the group id is the worker pid).
        let pgid = crate::procfs::stat(pid)?.pgid;
        self.workers.contains_key(&pgid).then_some(pgid)
    }

    fn on_datagram(&mut self, d: notify::Datagram) {
        let Some(bytes) = d.bytes else {
            self.counters.malformed_notify += 1;
            tracing::debug!("notify datagram too large; ignored");
            return;
        };
        let Some(pid) = d.pid.and_then(|p| self.worker_for_sender(p)) else {
            self.counters.forged_notify += 1;
            tracing::debug!("notify message from pid {:?}, not a worker; ignored", d.pid);
            return;
        };
        let msgs = match notify::parse(&bytes) {
            Ok(m) => m,
            Err(e) => {
                self.counters.malformed_notify += 1;
                tracing::debug!("from pid {pid}: {e}; ignored");
                return;
            }
        };
        for m in msgs {
            self.on_message(pid, m);
        }
    }

    fn on_message(&mut self, pid: i32, m: NotifyMessage) {
        let now = Instant::now();
        let Some(w) = self.workers.get_mut(&pid) else {
            return;
        };
        let id = slot_id(w.slot);
        match m {
            NotifyMessage::Ready => self.mark_ready(pid),
            NotifyMessage::Watchdog => {
                if w.last_watchdog.is_none() {
                    if let Some(limit) = w.config.watchdog {
                        tracing::info!(
                            "{id} pid {pid} sends heartbeats: hung if silent for {}",
                            fmt_dur(limit)
                        );
                    }
                }
                w.last_watchdog = Some(now);
            }
            NotifyMessage::Status(s) => {
                w.status = Some(s.clone());
                match notify::unhealthy_status(&s) {
                    // Also while it stops: a wedged worker will not finish its drain, and the
                    // wedge (dumped, reported) is worth more than a silent `--stop-timeout`.
                    Some("wedged") => self.hung(pid, HangKind::Wedged, &s),
                    Some(_) if !w.stop_requested => {
                        let (slot, uptime, generation) = (w.slot, now - w.started, w.generation);
                        // An unwedge worker crashes gracefully by itself, and a signal would
                        // cut its drain short: SIGTERM only if it is still there later.
                        // It is leaving: no longer counted or shown as ready.
                        w.stop_requested = true;
                        w.stop_since.get_or_insert(now);
                        w.state = WorkerState::Stopping;
                        w.term_at = Some(now + w.config.dump_grace);
                        self.count_restart(RestartReason::Tainted);
                        tracing::warn!("{id} pid {pid} is tainted ({s}); replacing it");
                        self.emit(Event::Tainted {
                            worker: id,
                            pid,
                            status: s,
                        });
                        if self.is_candidate(generation) {
                            self.reload_failed("a new worker is tainted".into());
                        } else if generation == self.active_gen {
                            self.schedule_restart(
                                slot,
                                RestartReason::Tainted,
                                Some(now),
                                uptime,
                                "is tainted",
                            );
                        }
                    }
                    _ => {}
                }
            }
            NotifyMessage::Stopping if self.stopping => {}
            NotifyMessage::Stopping if w.stop_requested => {
                // Said tainted, now leaving on its own: its drain gets `--stop-timeout`, not
                // the `--dump-grace` meant for a tainted worker that does not leave (a signal
                // would cut an `unwedge::serve` worker's drain short).
                // A pending SIGTERM is the tainted one: a hung or SIGTERMed worker has a
                // SIGKILL deadline instead (`kill_at`), and keeps it.
                if w.term_at.is_some() {
                    w.term_at = Some(now + self.config.stop_timeout);
                }
            }
            NotifyMessage::Stopping => {
                // Leaving on its own (a graceful crash): start the replacement now,
                // while it drains; the reason is counted when it exits. It has
                // `--stop-timeout` to go, then SIGTERM, then SIGKILL after another.
                let (slot, uptime, generation) = (w.slot, now - w.started, w.generation);
                w.stop_requested = true;
                w.stop_since.get_or_insert(now);
                w.leaving = true;
                w.state = WorkerState::Stopping;
                w.term_at = Some(now + self.config.stop_timeout);
                tracing::info!("{id} pid {pid} is stopping on its own; starting its replacement");
                if self.is_candidate(generation) {
                    self.reload_failed(format!("worker {id} stopped before the reload completed"));
                } else if generation == self.active_gen {
                    self.schedule_restart(
                        slot,
                        RestartReason::Exit,
                        Some(now),
                        uptime,
                        "is stopping",
                    );
                }
            }
            NotifyMessage::Report(json) => {
                w.last_report = Some(json.clone());
                self.counters.reports += 1;
                self.emit(Event::Report {
                    worker: id,
                    pid,
                    json,
                });
            }
            NotifyMessage::Reloading | NotifyMessage::Other(_) => {}
        }
    }

    /// A hung worker: dump signal now, SIGKILL after `--dump-grace`, replacement scheduled.
    ///
    /// A worker already stopping (drained by a reload or a stop, leaving on its own, replaced)
    /// is dumped and killed the same way, sooner than its stop deadline, but is not restarted
    /// (what replaces it is already decided) nor counted as a restart.
    fn hung(&mut self, pid: i32, kind: HangKind, detail: &str) {
        let now = Instant::now();
        let Some(w) = self.workers.get_mut(&pid) else {
            return;
        };
        if w.state == WorkerState::Hung {
            return;
        }
        let (grace, sig) = (w.config.dump_grace, w.config.dump_signal);
        let was_ready = w.ready_at.is_some();
        let retiring = w.stop_requested;
        w.state = WorkerState::Hung;
        w.stop_requested = true;
        w.stop_since.get_or_insert(now);
        // A stop deadline already sooner than the dump's grace stays.
        let kill_at = w.kill_at.map_or(now + grace, |k| k.min(now + grace));
        w.kill_at = Some(kill_at);
        let (slot, uptime, generation) = (w.slot, now - w.started, w.generation);
        let id = slot_id(slot);
        *self.counters.hangs.entry(kind).or_insert(0) += 1;
        if !retiring {
            self.count_restart(if was_ready {
                RestartReason::Hang
            } else {
                RestartReason::FailedStart
            });
        }
        tracing::warn!(
            "{id} pid {pid} is hung ({}: {detail}){}; sending {}, SIGKILL in {}",
            kind.as_str(),
            if retiring { " while stopping" } else { "" },
            sig.as_str(),
            fmt_dur(kill_at.saturating_duration_since(now))
        );
        let _ = kill(Pid::from_raw(pid), sig);
        self.emit(Event::Hung {
            worker: id,
            pid,
            kind,
            stopping: retiring,
        });
        if retiring {
            return;
        }
        if self.is_candidate(generation) {
            self.reload_failed(format!("worker {} hung ({})", slot_id(slot), kind.as_str()));
        } else if generation == self.active_gen {
            self.schedule_restart(slot, RestartReason::Hang, Some(now), uptime, "hung");
        }
    }

    /// Replaces the serving workers whose resident memory is above their `--max-memory`.
    /// Not during a reload, which replaces them all anyway.
    fn check_memory(&mut self, now: Instant) {
        if self.reload.is_some() {
            return;
        }
        let active_gen = self.active_gen;
        let over: Vec<(i32, u64, u64)> = self
            .workers
            .values_mut()
            .filter(|w| !w.stop_requested && w.ready_at.is_some())
            .filter(|w| w.generation == active_gen)
            .filter_map(|w| {
                let limit = w.config.max_memory?;
                let bytes = worker_memory(w, limit, now)?;
                (bytes > limit).then_some((w.pid, bytes, limit))
            })
            .collect();
        for (pid, rss, limit) in over {
            self.over_memory(pid, rss, limit, now);
        }
    }

    /// A worker over its memory limit: its replacement starts now; it serves on until the
    /// replacement is ready (SIGTERM then), or until the replacement had time enough to be.
    fn over_memory(&mut self, pid: i32, rss: u64, limit: u64, now: Instant) {
        let Some(w) = self.workers.get_mut(&pid) else {
            return;
        };
        let (slot, uptime) = (w.slot, now - w.started);
        let id = slot_id(slot);
        w.stop_requested = true;
        w.stop_since.get_or_insert(now);
        w.retire_when_replaced = true;
        w.term_at = Some(now + w.config.restart_delay_max + w.config.ready_timeout);
        tracing::warn!(
            "{id} pid {pid} uses {} of memory, over --max-memory {}; starting its replacement, \
             then stopping it",
            crate::config::human_size(rss),
            crate::config::format_size(limit)
        );
        self.count_restart(RestartReason::Memory);
        self.emit(Event::MemoryLimit {
            worker: id,
            pid,
            rss,
            limit,
        });
        self.schedule_restart(
            slot,
            RestartReason::Memory,
            // Planned, not a crash: no crash-to-ready time.
            None,
            uptime,
            "is over --max-memory",
        );
    }

    /// Whether `w` may be replaced for its age now: a ready worker of the serving generation,
    /// with no reload under way (a reload replaces it anyway) and its slot not starting
    /// another already.
    fn may_retire(&self, w: &Worker) -> bool {
        w.ready_at.is_some()
            && w.generation == self.active_gen
            && self.reload.is_none()
            && self.slots[w.slot].pending.is_none()
    }

    /// A worker that ran its `--max-lifetime`: replaced as one over `--max-memory` is (its
    /// replacement starts now; it serves on until the replacement is ready), but planned: not
    /// against the restart intensity, no backoff, no alert.
    fn past_lifetime(&mut self, pid: i32, now: Instant) {
        let Some(w) = self.workers.get_mut(&pid) else {
            return;
        };
        let (slot, uptime) = (w.slot, now - w.started);
        let limit = w.config.max_lifetime.unwrap_or_default();
        w.stop_requested = true;
        w.stop_since.get_or_insert(now);
        w.retire_when_replaced = true;
        w.retire_at = None;
        w.term_at = Some(now + w.config.restart_delay_max + w.config.ready_timeout);
        let id = slot_id(slot);
        tracing::info!(
            "{id} pid {pid} has run {} (--max-lifetime {}); starting its replacement, then \
             stopping it",
            fmt_dur(uptime),
            humantime::format_duration(limit)
        );
        self.count_restart(RestartReason::Lifetime);
        let s = &mut self.slots[slot];
        s.restarts += 1;
        s.pending = Some(Pending {
            at: now,
            crash_at: None,
        });
        self.emit(Event::RestartScheduled {
            worker: id,
            reason: RestartReason::Lifetime,
            delay: Duration::ZERO,
        });
    }

    fn on_probe(&mut self, p: ProbeResult) {
        let shared_many = self.config.port_env.is_none() && self.config.workers > 1;
        let Some(w) = self.workers.get_mut(&p.pid) else {
            return;
        };
        let failures = w.config.probe_failures;
        w.probe_inflight = false;
        if w.stop_requested {
            return;
        }
        if p.ready_check {
            if p.outcome.is_ok() {
                self.mark_ready(p.pid);
            }
            return;
        }
        match p.outcome {
            Ok(()) => w.probe_failures = 0,
            Err(e) => {
                w.probe_failures += 1;
                let (n, id) = (w.probe_failures, slot_id(w.slot));
                tracing::warn!("{id} pid {}: probe failed ({n}/{failures}): {e}", p.pid);
                if n >= failures {
                    if shared_many {
                        // Through a shared socket the probe cannot tell which worker failed.
                        w.probe_failures = 0;
                        tracing::error!(
                            "probe through the shared socket failed {n} times in a row; cannot tell which \
                             worker is hung (use --watchdog, or --port-env for per-worker probes)"
                        );
                    } else {
                        self.hung(p.pid, HangKind::Probe, &e);
                    }
                }
            }
        }
    }

    fn probe_target(&self, w: &Worker) -> Option<ListenAddr> {
        match w.port {
            Some(port) => Some(ListenAddr::Tcp(([127, 0, 0, 1], port).into())),
            None => self.shared_probe.clone(),
        }
    }

    fn start_probe(&self, w: &Worker, ready_check: bool) {
        let Some(target) = self.probe_target(w) else {
            return;
        };
        let tx = self.probe_tx.clone();
        let pid = w.pid;
        let c = &w.config;
        let timeout = c.probe_timeout;
        let use_http = !ready_check || c.ready == ReadyMode::Probe || c.probe.is_some();
        let path = c.probe.clone().unwrap_or_else(|| "/".into());
        let port_only = ready_check && matches!(c.ready, ReadyMode::Port | ReadyMode::Auto);
        tokio::spawn(async move {
            let outcome = if port_only || !use_http {
                if probe::connects(&target, timeout).await {
                    Ok(())
                } else {
                    Err("not accepting connections".to_owned())
                }
            } else {
                probe::probe(&target, &path, timeout)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            };
            let _ = tx.send(ProbeResult {
                pid,
                ready_check,
                outcome,
            });
        });
    }

    fn on_timers(&mut self, now: Instant) {
        // Workers that ran their --max-lifetime.
        let due: Vec<i32> = self
            .workers
            .values()
            .filter(|w| !w.stop_requested && !self.stopping && self.may_retire(w))
            .filter(|w| w.retire_at.is_some_and(|t| t <= now))
            .map(|w| w.pid)
            .collect();
        for pid in due {
            self.past_lifetime(pid, now);
        }
        // Pending starts.
        for slot in 0..self.slots.len() {
            if self.slots[slot]
                .pending
                .as_ref()
                .is_some_and(|p| p.at <= now)
            {
                let p = self.slots[slot].pending.take().expect("checked");
                let gen = self.active_gen;
                self.spawn(slot, gen, p.crash_at);
            }
        }
        // Kill deadlines.
        let stop_over = self.stop_deadline.is_some_and(|d| d <= now);
        let mut timed_out = Vec::new();
        for w in self.workers.values_mut() {
            if w.kill_at.is_some_and(|k| k <= now) || (stop_over && w.kill_at.is_some()) {
                w.kill_at = None;
                let id = slot_id(w.slot);
                if w.state == WorkerState::Hung {
                    tracing::warn!("{id} pid {}: sending SIGKILL", w.pid);
                } else {
                    if self.stopping {
                        self.forced = true;
                    }
                    let waited = now - w.stop_since.unwrap_or(now);
                    tracing::warn!(
                        "{id} pid {}: did not stop within {} (--stop-timeout); sending SIGKILL{}",
                        w.pid,
                        fmt_dur(waited),
                        stuck_hint(w.pid)
                    );
                    timed_out.push((id, w.pid, waited));
                }
                let _ = killpg(Pid::from_raw(w.pid), Signal::SIGKILL);
            }
        }
        for (worker, pid, waited) in timed_out {
            self.counters.stop_timeouts += 1;
            self.emit(Event::StopTimedOut {
                worker,
                pid,
                waited,
            });
        }
        if stop_over {
            self.stop_deadline = None;
            for d in &self.daemons {
                tracing::warn!("pid {d} (went into the background): did not stop within --stop-timeout; sending SIGKILL");
                let _ = kill(Pid::from_raw(*d), Signal::SIGKILL);
                self.forced = true;
            }
        }
        self.kill_leftovers(now);
        let stop_timeout = self.config.stop_timeout;
        for w in self.workers.values_mut() {
            if w.term_at.is_some_and(|t| t <= now) {
                w.term_at = None;
                if w.state != WorkerState::Hung && w.kill_at.is_none() {
                    tracing::warn!(
                        "{} pid {}: still running; sending {}",
                        slot_id(w.slot),
                        w.pid,
                        w.config.stop_signal.as_str()
                    );
                    w.state = WorkerState::Stopping;
                    let _ = killpg(Pid::from_raw(w.pid), w.config.stop_signal);
                    w.kill_at = Some(now + stop_timeout);
                }
            }
        }
        if self.stopping {
            return;
        }
        if now >= self.next_memory_check {
            self.next_memory_check = now + MEMORY_CHECK_INTERVAL;
            self.check_memory(now);
        }
        // Readiness timeouts, heartbeats, probes.
        let mut hung: Vec<(i32, HangKind, String)> = Vec::new();
        let mut assume_ready = Vec::new();
        let mut accepting = Vec::new();
        let mut probes = Vec::new();
        let inodes = &self.listener_inodes;
        for w in self.workers.values_mut() {
            if w.stop_requested {
                continue;
            }
            let c = &w.config;
            if w.ready_at.is_none() {
                if now >= w.started + c.ready_timeout {
                    let msg = format!("not ready after {}", fmt_dur(c.ready_timeout));
                    if c.ready == ReadyMode::Auto && c.port_env.is_none() {
                        assume_ready.push((w.pid, c.ready_timeout));
                    } else {
                        hung.push((w.pid, HangKind::ReadyTimeout, msg));
                    }
                } else if needs_poll(c) && !w.probe_inflight && w.next_probe <= now {
                    w.probe_inflight = true;
                    w.next_probe = now + READY_POLL;
                    probes.push((w.pid, true));
                } else if watches_for_accept(c, inodes) && w.next_probe <= now {
                    w.next_probe = now + ACCEPT_POLL;
                    let tree = crate::procfs::descendants(w.pid, 64);
                    if crate::procfs::epoll_watches_any(&tree, inodes) {
                        accepting.push(w.pid);
                    }
                }
                continue;
            }
            if let (Some(limit), Some(last)) = (c.watchdog, w.last_watchdog) {
                if now >= last + limit {
                    hung.push((
                        w.pid,
                        HangKind::Watchdog,
                        format!("no WATCHDOG=1 for {}", fmt_dur(now - last)),
                    ));
                    continue;
                }
            }
            if c.probe.is_some() && !w.probe_inflight && w.next_probe <= now {
                w.probe_inflight = true;
                w.next_probe = now + c.probe_interval;
                probes.push((w.pid, false));
            }
        }
        for pid in accepting {
            self.mark_ready_because(pid, " (it waits for connections on the passed socket)");
        }
        for (pid, limit) in assume_ready {
            let tree = crate::procfs::descendants(pid, 64);
            if crate::procfs::epoll_watches_any(&tree, &self.listener_inodes) {
                tracing::warn!(
                    "pid {pid} sent no READY=1 within {}; taking it as ready: it waits for \
                     connections on the passed socket, so --ready accept would have found it \
                     ready then, without this wait",
                    fmt_dur(limit)
                );
            } else {
                tracing::warn!(
                    "pid {pid} sent no READY=1 within {}; taking it as ready (use --ready to \
                     choose)",
                    fmt_dur(limit)
                );
            }
            self.warn_if_it_listens_elsewhere(pid, &tree);
            self.mark_ready(pid);
        }
        for (pid, kind, msg) in hung {
            if kind == HangKind::ReadyTimeout {
                let tree = crate::procfs::descendants(pid, 64);
                self.warn_if_it_listens_elsewhere(pid, &tree);
            }
            self.hung(pid, kind, &msg);
        }
        for (pid, ready_check) in probes {
            if let Some(w) = self.workers.get(&pid) {
                self.start_probe(w, ready_check);
            }
        }
        // systemd watchdog and status.
        if let Some(at) = self.next_sd_watchdog {
            if at <= now {
                if self.workers.values().any(|w| w.state == WorkerState::Ready) {
                    self.systemd.watchdog();
                }
                self.next_sd_watchdog = self.systemd.watchdog_interval().map(|i| now + i);
            }
        }
        if self.systemd.enabled() && self.first_ready {
            let s = self.status_line();
            if s != self.last_sd_status {
                self.systemd.status(&s);
                self.last_sd_status = s;
            }
        }
    }

    fn next_deadline(&self) -> Instant {
        let now = Instant::now();
        let inodes = &self.listener_inodes;
        let mut d = now + Duration::from_secs(3600);
        let mut at = |t: Instant| d = d.min(t);
        for s in &self.slots {
            if let Some(p) = &s.pending {
                at(p.at);
            }
        }
        if let Some(s) = self.stop_deadline {
            at(s);
        }
        for l in &self.leftovers {
            at(l.kill_at);
        }
        if let Some(s) = self.next_sd_watchdog {
            at(s);
        }
        if self.workers.values().any(|w| w.config.max_memory.is_some()) {
            at(self.next_memory_check);
        }
        for w in self.workers.values() {
            if let Some(k) = w.kill_at {
                at(k);
            }
            if let Some(t) = w.term_at {
                at(t);
            }
            if w.stop_requested || self.stopping {
                continue;
            }
            if let Some(t) = w.retire_at.filter(|_| self.may_retire(w)) {
                at(t);
            }
            let c = &w.config;
            if w.ready_at.is_none() {
                at(w.started + c.ready_timeout);
                if (needs_poll(c) && !w.probe_inflight) || watches_for_accept(c, inodes) {
                    at(w.next_probe);
                }
                continue;
            }
            if let (Some(limit), Some(last)) = (c.watchdog, w.last_watchdog) {
                at(last + limit);
            }
            if c.probe.is_some() && !w.probe_inflight {
                at(w.next_probe);
            }
        }
        d.max(now)
    }

    fn status_line(&self) -> String {
        let ready = self
            .workers
            .values()
            .filter(|w| w.state == WorkerState::Ready)
            .count();
        let restarts: u64 = self.counters.restarts.values().sum();
        format!(
            "{ready}/{} workers ready, generation {}, {restarts} restarts",
            self.config.workers, self.active_gen
        )
    }

    fn publish(&self) {
        let mut workers: Vec<WorkerInfo> = self
            .workers
            .values()
            .map(|w| WorkerInfo {
                id: slot_id(w.slot),
                pid: w.pid,
                generation: w.generation,
                state: w.state,
                started_at: w.started_wall,
                restarts: self.slots[w.slot].restarts,
                last_exit: self.slots[w.slot].last_exit,
                status: w.status.clone(),
                last_report: w.last_report.clone(),
                port: w.port,
            })
            .collect();
        workers.sort_by(|a, b| (a.generation, &a.id, a.pid).cmp(&(b.generation, &b.id, b.pid)));
        let snap = Snapshot {
            generation: self.active_gen,
            ready: self.first_ready,
            reloading: self.reload.is_some(),
            reload_requests: self.reload_requests,
            stopping: self.stopping,
            workers,
            counters: self.counters.clone(),
            started_at: self
                .handle
                .snapshot
                .lock()
                .map(|s| s.started_at)
                .unwrap_or_else(|_| SystemTime::now()),
        };
        *self
            .handle
            .snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = snap;
    }
}

fn fmt_dur(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.1}ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{:.2}s", d.as_secs_f64())
    }
}
