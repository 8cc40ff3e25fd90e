//! The worker pool and its event loop: spawning, reaping, restarting, hang detection,
//! reload and stop. Everything that changes state happens in one task, so no lock is held
//! across decisions; the outside world sees [`Snapshot`]s and [`Event`]s.
//!
//! This module holds the [`Supervisor`], the pool's state and its event loop; the pool's
//! work is in one submodule per concern: `spawn` (starting workers, readiness, restarts),
//! `exit` (reaping and what an exit means), `messages` (the notify socket), `checks` (hangs,
//! memory, lifetime), `reload`, `stop`, and `timers` (deadlines and what is published).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
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

mod checks;
mod exit;
mod listeners;
mod messages;
mod reload;
mod spawn;
mod stop;
mod timers;

/// Exit status after giving up: the restart intensity was exceeded, or a worker failed to
/// start more than `--max-restarts` times in a row.
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
    /// The restart intensity was exceeded, or a worker failed to start more than
    /// `--max-restarts` times in a row.
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
    shim: crate::shim::ShimBinary,
    systemd: Systemd,
    hooks: Vec<Arc<dyn AlertHook>>,
    handle: Handle,
    control_rx: mpsc::UnboundedReceiver<Control>,
    reload_source: Option<Arc<Mutex<ConfigSource>>>,
    /// The soft open-file limit the supervisor was started with, when it raised its own.
    nofile: Option<u64>,
    /// The `unix:` socket files it bound, removed when it ends (not systemd's: its own).
    _socket_files: socket::OwnSocketFiles,
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
    ///
    /// From here on, a SIGHUP that arrives before [`run`](Self::run) is a reload once `run`
    /// starts, not the end of the process ([`catch_signals_early`](crate::catch_signals_early),
    /// which `main` can call earlier still).
    pub fn new(config: Config) -> Result<Self, StartError> {
        crate::early_signals::catch_signals_early()
            .map_err(|e| StartError::setup("handle SIGHUP", e))?;
        Self::preflight(&config)?;
        let systemd = Systemd::from_env();
        let inherited = socket::from_systemd();
        socket::forget_systemd_env();
        // Every fd the supervisor inherited (the sockets passed just taken, already
        // close-on-exec) goes to no process it starts: workers get theirs through the shim,
        // which marks the rest too; an `--alert-exec` command got them all.
        crate::cloexec::cloexec_from(3);
        let inherited = inherited?;
        let mut socket_files = socket::OwnSocketFiles::default();
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
            let bound = socket::bind_all(&config.listen, unix)?;
            socket_files = socket::OwnSocketFiles::of(&bound);
            bound
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
        reconfig::check_ready_accept(&config, !listeners.is_empty()).map_err(StartError::Usage)?;
        let shim = crate::shim::ShimBinary::this_process()
            .map_err(|e| StartError::setup("find the unwedge binary", e))?;
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
            published: Instant::now(),
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
            _socket_files: socket_files,
        })
    }

    /// The warning `run` gives at start when `config`'s `--max-memory` for every worker, and
    /// one more during a replacement, is over the memory limit of this process's cgroup (the
    /// OOM killer would act before `--max-memory`); `None` when it fits or there is no limit.
    /// For `check-config`, which runs the checks a start makes.
    ///
    /// ```
    /// use unwedge_supervisor::{Config, Options, Supervisor};
    ///
    /// let config = Config::resolve(None, Options::default(), vec!["server".into()]).unwrap();
    /// // No --max-memory: nothing to say.
    /// assert_eq!(Supervisor::memory_limit_warning(&config), None);
    /// ```
    pub fn memory_limit_warning(config: &Config) -> Option<String> {
        over_cgroup_limit(
            config,
            crate::oom::OomCounter::for_this_process().and_then(|c| c.limit()),
        )
    }

    /// The checks of [`Supervisor::new`] that bind, start and change nothing: the worker
    /// command can be run (found, a regular file, executable), and the workers' user can be
    /// switched to. The error is the one `new` would return; `unwedge check-config` runs them.
    /// A `command` left empty (a config file that leaves it to `unwedge run … -- CMD`) is not
    /// checked.
    ///
    /// ```
    /// use unwedge_supervisor::{Config, Options, Supervisor};
    ///
    /// let config = Config::resolve(None, Options::default(), vec!["/bin/sh".into()]).unwrap();
    /// assert!(Supervisor::preflight(&config).is_ok());
    /// let missing = vec!["/nonexistent/server".into()];
    /// let config = Config::resolve(None, Options::default(), missing).unwrap();
    /// let e = Supervisor::preflight(&config).unwrap_err();
    /// assert_eq!(e.exit_code(), 1);
    /// assert!(e.to_string().starts_with("cannot run worker command `/nonexistent/server`"));
    /// ```
    pub fn preflight(config: &Config) -> Result<(), StartError> {
        if let Some(program) = config.command.first() {
            socket::check_command(program)?;
        }
        if let Some(r) = &config.run_as {
            r.check_permitted().map_err(StartError::Usage)?;
        }
        Ok(())
    }

    /// The checks [`Supervisor::new`] makes once it has its sockets, made without them (for
    /// `check-config`): `--ready accept` needs sockets to watch, and a probe (`--probe`,
    /// `--ready probe`) somewhere to go. `passed`: whether sockets will be passed by systemd
    /// (`LISTEN_FDS`); their addresses are not known here, so a probe is taken to reach one.
    pub fn preflight_sockets(config: &Config, passed: bool) -> Result<(), StartError> {
        if passed || !config.listen.is_empty() {
            // Every socket bound for `--listen` has an address a probe can reach.
            return Ok(());
        }
        reconfig::check_probe_target(config, None).map_err(StartError::Usage)?;
        reconfig::check_ready_accept(config, false).map_err(StartError::Usage)
    }

    /// Adds a hook that sees every event synchronously (alerts).
    pub fn with_alert_hook(mut self, hook: impl AlertHook) -> Self {
        self.hooks.push(Arc::new(hook));
        self
    }

    /// Where each reload gets the new generation's configuration (e.g. the config file read
    /// again). Without one, a reload restarts the workers as they are. What a reload can
    /// change and what it keeps: [`reconfig`](crate::reconfig). An `Err` (or a panic) refuses
    /// the reload (logged, [`Event::ReloadFailed`]); the running workers go on. It runs on a
    /// thread of its own, never on the supervisor's event loop: it may block (a slow file
    /// system, a user database) without holding up restarts, hang detection or a stop.
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
        self.reload_source = Some(Arc::new(Mutex::new(Box::new(source))));
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
        let mut sigquit = sig(SignalKind::quit(), "SIGQUIT")?;
        let mut sighup = sig(SignalKind::hangup(), "SIGHUP")?;
        let mut sigusr1 = sig(SignalKind::user_defined1(), "SIGUSR1")?;
        let mut sigusr2 = sig(SignalKind::user_defined2(), "SIGUSR2")?;
        // After the handlers above: what arrived before them (a `kill -HUP` while the
        // configuration was read or the sockets bound) is acted on below, and a signal their
        // streams report counts once its flag says so (see `Flags`).
        let flags = crate::early_signals::Flags::registered();
        let quiet_signals = ignore_fatal_signals()?;
        if let Some(p) = &self.config.pidfile {
            crate::pidfile::claim(p)?;
        }
        let pidfile = self.config.pidfile.clone();
        let (probe_tx, mut probe_rx) = mpsc::unbounded_channel();
        let (prepared_tx, mut prepared_rx) = mpsc::unbounded_channel();
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
            forged_told: Told::default(),
            shared_probe_told: Told::default(),
            probe_unable_told: Told::default(),
            daemon_told: Told::default(),
            relisten_told: Told::default(),
            active_gen: 1,
            next_gen: 1,
            reload: None,
            preparing: None,
            prepared_tx,
            reload_requests: 0,
            reload_pending: false,
            next_memory_check: now + MEMORY_CHECK_INTERVAL,
            stopping: false,
            leftovers: Vec::new(),
            daemons: Vec::new(),
            unclaimed: HashMap::new(),
            own_session: nix::unistd::getsid(None).ok().map(Pid::as_raw),
            stop_deadline: None,
            forced: false,
            gave_up: None,
            first_ready: false,
            speaks_notify: false,
            probe_tx,
            next_sd_watchdog: None,
            last_sd_status: String::new(),
            bind_hint_given: Default::default(),
            listener_inodes: Vec::new(),
            oom: crate::oom::OomCounter::for_this_process().and_then(crate::oom::OomWatch::new),
            stalled_until: None,
            forwarded: Vec::new(),
            forwarded_fatal: Vec::new(),
            forwarded_loop_told: false,
            taint_loop_told: false,
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
        if pool.config.port_env.is_none() && pool.socket_addrs().is_empty() && n > 1 {
            tracing::warn!(
                "no socket to share (no --listen, no --port-env, none from systemd): each of the \
                 {n} workers binds whatever its command binds, and if that is one port, all \
                 but one fail with \"address already in use\"; give --listen ADDR for one \
                 socket all workers serve, or --port-env VAR for a port each"
            );
        }
        for slot in 0..n {
            pool.spawn(slot, 1, None);
        }
        if flags.arrived_early(Signal::SIGHUP) {
            pool.begin_reload("SIGHUP (received while starting)");
        }
        for signal in [Signal::SIGUSR1, Signal::SIGUSR2] {
            if flags.arrived_early(signal) {
                tracing::warn!(
                    "{} received while starting, before any worker ran: dropped",
                    signal.as_str()
                );
            }
        }
        let mut buf = vec![0u8; 256 * 1024];
        let mut next_housekeeping = Instant::now() + HOUSEKEEPING_INTERVAL;
        let mut next_notify_check = Instant::now() + pool.notify_check_interval();
        let mut notify_broken = false;
        let outcome = loop {
            pool.publish();
            if let Some(o) = pool.finished() {
                break o;
            }
            let deadline = pool
                .next_deadline()
                .min(next_notify_check)
                .min(next_housekeeping);
            tokio::select! {
                // Reaped below, whichever branch ran.
                _ = sigchld.recv() => {}
                _ = sigterm.recv() => pool.begin_stop("SIGTERM"),
                _ = sigint.recv() => pool.begin_stop("SIGINT"),
                _ = sigquit.recv() => pool.begin_stop("SIGQUIT"),
                _ = sighup.recv() => if flags.take(Signal::SIGHUP) {
                    pool.begin_reload("SIGHUP");
                },
                _ = sigusr1.recv() => if flags.take(Signal::SIGUSR1) {
                    pool.forward(Signal::SIGUSR1);
                },
                _ = sigusr2.recv() => if flags.take(Signal::SIGUSR2) {
                    pool.forward(Signal::SIGUSR2);
                },
                Some(c) = control_rx.recv() => match c {
                    Control::Reload => pool.begin_reload("request"),
                    Control::Stop => pool.begin_stop("request"),
                },
                r = notify.recv(&mut buf) => match r {
                    Ok(d) => pool.on_datagram(d),
                    Err(e) => tracing::warn!("notify socket: {e}"),
                },
                Some(p) = probe_rx.recv() => pool.on_probe(p),
                Some(p) = prepared_rx.recv() => pool.on_prepared(p),
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
            let woke = Instant::now();
            if woke >= next_housekeeping {
                next_housekeeping = woke + HOUSEKEEPING_INTERVAL;
                pool.find_daemons();
                pool.tick_oom(Instant::now());
                pool.keep_listening("found by the check every second");
            }
            if woke >= next_notify_check {
                next_notify_check = woke + pool.notify_check_interval();
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
                        pool.heartbeats_from_now(Instant::now());
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
            // What the workers said while the loop did not run (heartbeats, READY=1) is read
            // before their deadlines are judged: one datagram per pass left a queue of them
            // unread, and their senders hung.
            for d in notify.drain_queued(&mut buf, MAX_DRAINED) {
                pool.on_datagram(d);
            }
            let now = Instant::now();
            // Behind since the planned wake-up (or since it woke, if earlier): the process was
            // stopped or starved, not its workers.
            let late = now.saturating_duration_since(woke.min(deadline));
            if late >= STALL {
                pool.after_stall(late, now);
            }
            pool.on_timers(now);
        };
        pool.publish();
        for t in quiet_signals {
            t.abort();
        }
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
    /// Workers of this slot that exited (or were killed, or could not be spawned) before they
    /// were ready, in a row: a command that can never start gives up after `--max-restarts` of
    /// them, however slowly the backoff spreads them out.
    failed_starts: u32,
    last_exit: Option<ExitInfo>,
    pending: Option<Pending>,
    /// The port its last worker was given (`--port-env`): its restart gets it again when it
    /// is free, so a balancer's list of ports stays right across crashes.
    port: Option<u16>,
    /// When its workers died of a signal the supervisor forwarded, within `--within`: past
    /// [`FORWARDED_EXEMPT`] of them, such deaths are restarts like any other.
    forwarded_deaths: std::collections::VecDeque<Instant>,
    /// Its tainted workers replaced at once, counted as restarts are (`--max-restarts`
    /// within `--within`): past the limit, a taint restarts as a crash.
    replaced_at_once: Intensity,
}

impl Slot {
    /// Counts a restart and has the slot start a worker now (a start already due sooner
    /// stays): a replacement that takes no backoff.
    fn restart_now(&mut self, now: Instant) {
        self.restarts += 1;
        if self.pending.as_ref().is_none_or(|p| now < p.at) {
            self.pending = Some(Pending {
                at: now,
                crash_at: Some(now),
            });
        }
    }

    fn new(c: &Config) -> Slot {
        Slot {
            backoff: Backoff::new(c.restart_delay, c.restart_delay_max, c.stable_after),
            restarts: 0,
            failed_starts: 0,
            last_exit: None,
            pending: None,
            port: None,
            forwarded_deaths: std::collections::VecDeque::new(),
            replaced_at_once: Intensity::new(c.max_restarts, c.within),
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
    /// Its heartbeat limit: `--watchdog`, or what it asked for (`WATCHDOG_USEC=`).
    watchdog: Option<Duration>,
    probe_failures: u32,
    next_probe: Instant,
    probe_inflight: bool,
    /// When its `--ready-timeout` began: its start, or the end of a stall of the supervisor.
    ready_from: Instant,
    /// It asked for more time to start (`EXTEND_TIMEOUT_USEC=`): not ready before then is no
    /// failure yet.
    ready_extended: Option<Extension>,
    /// It asked for more time while it serves (`EXTEND_TIMEOUT_USEC=`): silent until then is
    /// not hung yet, as systemd extends its watchdog; its next `WATCHDOG=1` ends it.
    heartbeat_extended: Option<Extension>,
    /// It said `STOPPING=1`: it leaves on its own, and may ask for more time to finish.
    said_stopping: bool,
    /// What it last asked more time for, said at `info` once a phase (renewals are `debug`).
    extension_told: Option<Phase>,
    /// The log said it sent a malformed notify line.
    malformed_told: bool,
    /// The log said (at `info`) it set its own heartbeat limit; later changes are `debug`.
    watchdog_told: bool,
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
    /// Its output is read until this is dropped (and [`output::OUTPUT_GRACE`] after): at its
    /// exit, or, when it left processes of its session running, when they ended (they may
    /// still write to it). Taken at its exit.
    output: Option<output::OutputCutoff>,
}

/// What a worker's `EXTEND_TIMEOUT_USEC=` gave it more time for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    Stop,
    Heartbeat,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Start => "its start",
            Phase::Stop => "its stop",
            Phase::Heartbeat => "its heartbeat",
        }
    }
}

/// A deadline a worker moved with `EXTEND_TIMEOUT_USEC=`, and when it asked (a stall of the
/// supervisor moves only what was asked before it).
#[derive(Debug, Clone, Copy)]
struct Extension {
    asked: Instant,
    until: Instant,
}

impl Extension {
    /// `this` moved to `until` if that is later (a new request never shortens the old one).
    fn renewed(this: Option<Extension>, now: Instant, until: Instant) -> Option<Extension> {
        let until = this.map_or(until, |e| e.until.max(until));
        Some(Extension { asked: now, until })
    }

    /// After a stall of the supervisor of `gap` that began at `began`: moved `gap` later if it
    /// was asked before, as the deadlines it moves are.
    fn after_stall(
        this: Option<Extension>,
        gap: Duration,
        began: Option<Instant>,
    ) -> Option<Extension> {
        this.map(|e| match began {
            Some(b) if e.asked >= b => e,
            _ => Extension {
                asked: e.asked,
                until: e.until + gap,
            },
        })
    }
}

impl Worker {
    /// When, still not ready, it has failed to start: `--ready-timeout` after
    /// [`ready_from`](Worker::ready_from), or later if it asked for more time.
    fn ready_deadline(&self) -> Instant {
        let configured = self.ready_from + self.config.ready_timeout;
        self.ready_extended
            .map_or(configured, |e| e.until.max(configured))
    }

    /// When, silent since its last `WATCHDOG=1`, it is hung: its heartbeat limit after that
    /// one, or later if it asked for more time; `None` while its heartbeat is not watched.
    fn heartbeat_deadline(&self) -> Option<Instant> {
        let (limit, last) = (self.watchdog?, self.last_watchdog?);
        let configured = last + limit;
        Some(
            self.heartbeat_extended
                .map_or(configured, |e| e.until.max(configured)),
        )
    }
}

/// A reload's configuration being read on a thread of its own (see [`Pool::start_reload`]).
#[derive(Debug)]
struct Preparing {
    why: String,
    /// It answers the reload requests up to this number.
    requests: u64,
    since: Instant,
}

/// The new configuration a reload's thread read and checked, or why it could not.
type Prepared = Result<reconfig::Prepared, String>;

#[derive(Debug)]
struct ProbeResult {
    pid: i32,
    /// When it was started: a failure of one started before a stall of the supervisor is not
    /// the worker's.
    started: Instant,
    ready_check: bool,
    outcome: Result<(), crate::probe::ProbeError>,
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
    /// The workers the next slot waits for (rolling): those already stopping when the reload
    /// began (a reload just before left them draining) and the old ones it stopped, while
    /// they run (pids; for one that exited and left processes running, its session's id).
    waiting_for: Vec<i32>,
    /// The new generation's configuration, when it changed.
    config: Option<Arc<Config>>,
}

/// The session of a worker that exited and left processes of it running (forked children, a
/// preforking server's workers, a shell's background jobs in groups of their own): they hold
/// copies of the listening sockets, so they may still accept connections with the exited
/// worker's code and state, and would keep the port bound after the supervisor stops.
#[derive(Debug)]
struct Leftover {
    worker: String,
    /// The session id: the exited worker's pid (also its process group's id).
    sid: i32,
    /// When the session's processes get SIGKILL if any still runs.
    kill_at: Instant,
    /// The stop signal they were sent first (the exited worker's own, which a reload may
    /// since have changed for the others).
    signal: Signal,
    /// The exited worker's output, still read while they run (they share its pipes): held,
    /// never read; dropping it ends the reading.
    _output: Option<output::OutputCutoff>,
}

/// Sends `sig` to worker `pid`'s process group; to the worker alone while it has no group of
/// its own yet (the exec shim makes it a session and group leader a moment after the spawn).
fn signal_worker(pid: i32, sig: Signal) -> nix::Result<()> {
    match killpg(Pid::from_raw(pid), sig) {
        Err(nix::errno::Errno::ESRCH) => kill(Pid::from_raw(pid), sig),
        r => r,
    }
}

/// Sends the stop signal `sig` to worker `pid` as [`signal_worker`] does, then SIGCONT, as
/// systemd does after its stop signal: a stopped process (SIGSTOP, `kill -STOP` while
/// debugging, a job stopped by a terminal) cannot act on the stop signal until continued, and
/// would wait out `--stop-timeout` and be SIGKILLed instead of draining.
fn send_stop_signal(pid: i32, sig: Signal) -> nix::Result<()> {
    let sent = signal_worker(pid, sig);
    let _ = signal_worker(pid, Signal::SIGCONT);
    sent
}

/// Sends `sig` to every live process of session `sid`, group by group (a group lies in one
/// session); returns their pids.
fn signal_session(sid: i32, sig: Signal) -> Vec<i32> {
    signal_session_with(sid, &[sig])
}

/// [`signal_session`] with each of `sigs` in turn, from one look at the processes (the stop
/// signal, then SIGCONT).
fn signal_session_with(sid: i32, sigs: &[Signal]) -> Vec<i32> {
    let members = crate::procfs::session_members(sid);
    let mut groups: Vec<i32> = members.iter().map(|(_, s)| s.pgid).collect();
    groups.sort_unstable();
    groups.dedup();
    for g in groups {
        for &sig in sigs {
            let _ = killpg(Pid::from_raw(g), sig);
        }
    }
    members.into_iter().map(|(pid, _)| pid).collect()
}

/// Whether anything of session `sid` (a worker that exited) may still run, cheaply: its
/// worker's process group, or a child of the supervisor in it (a process whose parent exited
/// is the supervisor's child, the subreaper's, so every process of the session is one of those
/// or below one). A zombie not yet reaped counts, until it is.
fn session_may_live(sid: i32) -> bool {
    killpg(Pid::from_raw(sid), None::<Signal>).is_ok()
        || crate::procfs::children(std::process::id() as i32)
            .into_iter()
            .any(|c| crate::procfs::stat(c).is_some_and(|s| s.sid == sid))
}

struct Pool {
    /// The serving generation's configuration (a reload's candidates have their own).
    config: Arc<Config>,
    /// Shared with the thread that reads it at a reload.
    reload_source: Option<Arc<Mutex<ConfigSource>>>,
    /// See [`Supervisor`]'s field.
    nofile: Option<u64>,
    listeners: Vec<Listener>,
    shared_probe: Option<ListenAddr>,
    shim: crate::shim::ShimBinary,
    notify_path: PathBuf,
    systemd: Systemd,
    hooks: Vec<Arc<dyn AlertHook>>,
    handle: Handle,
    slots: Vec<Slot>,
    intensity: Intensity,
    workers: HashMap<i32, Worker>,
    counters: Counters,
    /// The log's last warning of notify messages from a process that is no worker.
    forged_told: Told,
    /// The log's last word that the probe through the shared socket keeps failing.
    shared_probe_told: Told,
    /// A probe could not be made for the supervisor's own shortage (said once a minute).
    probe_unable_told: Told,
    /// The log's last warning of a process that went into the background.
    daemon_told: Told,
    /// The log's last error about a listening socket that could not listen again.
    relisten_told: Told,
    active_gen: u64,
    next_gen: u64,
    reload: Option<Reload>,
    /// A reload waiting for its configuration to be read.
    preparing: Option<Preparing>,
    prepared_tx: mpsc::UnboundedSender<Prepared>,
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
    /// Exited children of the supervisor's own session left to whoever started them (an
    /// `--alert-exec` command's `Child`), with when they were first seen exited: one nobody
    /// claims within [`UNCLAIMED_GRACE`] is an orphan (a process such a command left running)
    /// and is reaped.
    unclaimed: HashMap<i32, Instant>,
    /// The supervisor's own session (it never changes): workers lead sessions of their own,
    /// so a process of this one is a child the supervisor started itself, or one of theirs.
    own_session: Option<i32>,
    stopping: bool,
    stop_deadline: Option<Instant>,
    forced: bool,
    gave_up: Option<String>,
    first_ready: bool,
    /// A worker said `READY=1`, at any time since the supervisor started (any generation,
    /// any command): the service speaks sd_notify, so under `--ready auto` a worker silent
    /// past its `--ready-timeout` has failed to start, rather than being taken as ready. Kept
    /// across reloads, also one that changes the command: a new version of a service that
    /// said READY=1 and now says nothing hangs far more often than it dropped sd_notify, and
    /// the reload that fails leaves the old generation serving.
    speaks_notify: bool,
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
    /// When the event loop last found itself stalled (see [`STALL`]).
    stalled_until: Option<Instant>,
    /// The signals last forwarded to the workers (SIGUSR1, SIGUSR2), with when.
    forwarded: Vec<(Signal, Instant)>,
    /// The forwarded signals workers were found to die of (said once each).
    forwarded_fatal: Vec<Signal>,
    /// Deaths of forwarded signals were found to repeat in a slot (said once).
    forwarded_loop_told: bool,
    /// The log said a slot's taints came too often to be replaced at once.
    taint_loop_told: bool,
}

/// Fast polling of a starting worker's port or probe (readiness).
const READY_POLL: Duration = Duration::from_millis(5);

/// Polling of a starting worker's event loop for the passed socket (`--ready accept`): a look
/// at `/proc` for each of its processes.
const ACCEPT_POLL: Duration = Duration::from_millis(20);

/// How often the notify socket's file is checked (and bound again if it was removed), at
/// most: sooner with a short `--watchdog` (see [`Pool::notify_check_interval`]).
const NOTIFY_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// A worker killed by a signal the supervisor forwarded to it this recently died of it (it
/// does not handle it), rather than crashed.
const FORWARDED_WINDOW: Duration = Duration::from_secs(2);

/// How many deaths of a forwarded signal a slot's workers may have within `--within` and still
/// be restarted at once, uncounted: an operator's `kill -USR1` kills each worker once. More is
/// a loop (a worker signalling the supervisor itself, which forwards it to every worker), and
/// takes the backoff and counts toward giving up like any other restart.
const FORWARDED_EXEMPT: usize = 3;

/// How often daemons, the OOM kill count and the listening sockets are looked at.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);

/// How far behind its own schedule the event loop may fall before it takes itself for stalled
/// (stopped with SIGSTOP, a debugger, a paused VM or frozen cgroup, starved by swapping) and
/// gives the workers fresh deadlines: normally it is a few milliseconds late at most.
const STALL: Duration = Duration::from_secs(1);

/// How often the workers' resident memory is compared with `--max-memory`.
const MEMORY_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Warns when `--max-memory` cannot act before the OOM killer: the workers, each allowed up
/// to it, and one more while a replacement overlaps, would need more than the memory limit of
/// the supervisor's cgroup (`limit`), so the kernel would kill a worker (cutting its requests)
/// before any of them reached the limit that replaces it gracefully.
fn warn_if_over_cgroup_limit(config: &Config, limit: Option<u64>) {
    if let Some(warning) = over_cgroup_limit(config, limit) {
        tracing::warn!("{warning}");
    }
}

/// What [`warn_if_over_cgroup_limit`] says, if anything.
fn over_cgroup_limit(config: &Config, limit: Option<u64>) -> Option<String> {
    let (Some(each), Some(limit)) = (config.max_memory, limit) else {
        return None;
    };
    let n = config.workers as u64 + 1;
    let total = each.saturating_mul(n);
    (total > limit).then(|| {
        format!(
            "--max-memory {} for {} worker(s), and one more during a replacement, adds up to {}, \
             over the memory limit of the supervisor's cgroup ({}): the kernel's OOM killer \
             would kill a worker before --max-memory replaces it gracefully; set --max-memory \
             at most {}",
            crate::config::format_size(each),
            config.workers,
            crate::config::human_size(total),
            crate::config::human_size(limit),
            crate::config::human_size(limit / n)
        )
    })
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

/// How long an exited child of the supervisor's own session is left to whoever started it
/// (see `Pool::unclaimed`): a tokio `Child` reaps its process within moments of the exit.
const UNCLAIMED_GRACE: Duration = Duration::from_secs(2);

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

/// When the log last said something it says at most once an interval (a flood of the same
/// event must not flood the log).
#[derive(Debug, Default, Clone, Copy)]
struct Told(Option<Instant>);

/// How often at most the log repeats a warning about the same kind of event.
const TELL_EVERY: Duration = Duration::from_secs(60);

impl Told {
    /// Whether it was said less than `every` before `now`.
    fn is_quiet(self, now: Instant, every: Duration) -> bool {
        self.0
            .is_some_and(|at| now.saturating_duration_since(at) < every)
    }

    /// Whether to say it at `now`; if so, remembers that it was said.
    fn due(&mut self, now: Instant, every: Duration) -> bool {
        let due = !self.is_quiet(now, every);
        if due {
            self.0 = Some(now);
        }
        due
    }
}

/// Handles the signals whose default action would end the supervisor without a word (and its
/// workers with it): timer signals nobody here asked for (SIGALRM, SIGVTALRM, SIGPROF: a stray
/// `kill`, a library's timer) and other signals the supervisor does not use (SIGPWR, SIGIO,
/// SIGTRAP, SIGSYS, SIGSTKFLT, the realtime signals SIGRTMIN..SIGRTMAX) are logged (the
/// timer signals each time, the others at most once a minute each) and ignored; SIGXFSZ (a write over the file size limit,
/// `RLIMIT_FSIZE`) and SIGXCPU (the CPU time limit's soft part, `RLIMIT_CPU`) are logged once
/// and ignored, so the write fails with `EFBIG` where it is reported. Caught by tokio's
/// handlers (never `SIG_IGN`: workers would inherit that), each read by a task of its own,
/// aborted when the supervisor ends. SIGRTMAX itself is past the signals tokio can register:
/// it gets a handler that does nothing (reset to the default in workers by `exec`, unlike
/// `SIG_IGN`), unlogged.
fn ignore_fatal_signals() -> Result<Vec<tokio::task::JoinHandle<()>>, StartError> {
    use nix::libc;
    // How often each is said at most: every time, once, at most once a minute.
    let (every, once, minute) = (Duration::ZERO, Duration::MAX, TELL_EVERY);
    let mut signals: Vec<(i32, String, Duration)> = [
        (Signal::SIGALRM, every),
        (Signal::SIGVTALRM, every),
        (Signal::SIGPROF, every),
        (Signal::SIGXFSZ, once),
        (Signal::SIGXCPU, once),
        (Signal::SIGPWR, minute),
        (Signal::SIGIO, minute),
        (Signal::SIGTRAP, minute),
        (Signal::SIGSYS, minute),
        (Signal::SIGSTKFLT, minute),
    ]
    .into_iter()
    .map(|(sig, quiet)| (sig as i32, sig.as_str().to_owned(), quiet))
    .collect();
    let (rtmin, rtmax) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    for n in rtmin..rtmax {
        signals.push((n, format!("SIGRTMIN+{}", n - rtmin), minute));
    }
    ignore_rtmax(rtmax);
    let mut tasks = Vec::new();
    for (num, name, quiet) in signals {
        let mut stream = signal(SignalKind::from_raw(num))
            .map_err(|e| StartError::setup(format!("handle {name}"), e))?;
        tasks.push(tokio::spawn(async move {
            let mut told = Told::default();
            while stream.recv().await.is_some() {
                if !told.due(Instant::now(), quiet) {
                    continue;
                }
                match name.as_str() {
                    "SIGXFSZ" => tracing::warn!(
                        "received SIGXFSZ: a write went over the file size limit (RLIMIT_FSIZE, \
                         `ulimit -f`); ignored: such writes fail instead (said once)"
                    ),
                    "SIGXCPU" => tracing::warn!(
                        "received SIGXCPU: the supervisor used up its soft CPU time limit \
                         (RLIMIT_CPU, `ulimit -t`); ignored, but the kernel kills it at the hard \
                         limit (said once)"
                    ),
                    _ if quiet == minute => tracing::warn!(
                        "received {name}, which the supervisor does not use; ignored (its \
                         default action would have ended the supervisor and its workers; said \
                         at most once a minute)"
                    ),
                    _ => tracing::warn!(
                        "received {name}, which the supervisor does not use; ignored (its \
                         default action would have ended the supervisor and its workers)"
                    ),
                }
            }
        }));
    }
    Ok(tasks)
}

/// A handler that does nothing for `SIGRTMAX` (tokio's handlers stop one short of it; nix's
/// `Signal` has no realtime signals, hence libc).
fn ignore_rtmax(rtmax: i32) {
    use nix::libc;
    extern "C" fn nothing(_: libc::c_int) {}
    #[allow(unsafe_code)]
    // SAFETY: installs a handler that touches nothing, for a signal nobody else handles.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = nothing as extern "C" fn(libc::c_int) as usize;
        act.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaction(rtmax, &act, std::ptr::null_mut());
    }
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
}

fn fmt_dur(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.1}ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{:.2}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_for_more_time_never_shortens_the_last_one() {
        let now = Instant::now();
        let long = Extension::renewed(None, now, now + Duration::from_secs(60));
        let short = Extension::renewed(long, now, now + Duration::from_secs(1));
        assert_eq!(short.unwrap().until, now + Duration::from_secs(60));
        let longer = Extension::renewed(short, now, now + Duration::from_secs(90));
        assert_eq!(longer.unwrap().until, now + Duration::from_secs(90));
    }

    /// A stall moves what was asked before it, like the deadlines it moves; what was asked
    /// during it (read after it, before the stall is noticed) is not moved twice.
    #[test]
    fn a_stall_moves_only_what_was_asked_before_it() {
        let began = Instant::now();
        let gap = Duration::from_secs(3600);
        let now = began + gap;
        let five = Duration::from_secs(5);
        let before = Extension::renewed(None, began - five, began + five);
        let moved = Extension::after_stall(before, gap, Some(began)).unwrap();
        assert_eq!(moved.until, began + five + gap);
        let during = Extension::renewed(None, now, now + five);
        let kept = Extension::after_stall(during, gap, Some(began)).unwrap();
        assert_eq!(kept.until, now + five);
        assert!(Extension::after_stall(None, gap, Some(began)).is_none());
    }
}
