//! What the supervisor tells the rest of the program: a broadcast of [`Event`]s and a
//! cloneable [`Snapshot`] of its state. The admin endpoint, the status page, the report
//! directory and the alerts build on these; their shapes are stable (new fields and variants
//! may be added, hence `#[non_exhaustive]`).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// Why a worker was hung.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum HangKind {
    /// No `WATCHDOG=1` within `--watchdog` after at least one.
    Watchdog,
    /// `--probe-failures` probes in a row failed.
    Probe,
    /// Not ready within `--ready-timeout`.
    ReadyTimeout,
    /// The worker said `STATUS=…wedged…`.
    Wedged,
}

impl HangKind {
    /// Lower-case name, as used in logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            HangKind::Watchdog => "watchdog",
            HangKind::Probe => "probe",
            HangKind::ReadyTimeout => "ready_timeout",
            HangKind::Wedged => "wedged",
        }
    }
}

/// Why a worker was restarted (replaced).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RestartReason {
    /// It exited with status 0 on its own.
    Exit,
    /// It exited with a non-zero status.
    Crash,
    /// It was killed by a signal nobody asked for.
    Signal,
    /// It exited before it was ready.
    FailedStart,
    /// It was hung (see [`HangKind`]).
    Hang,
    /// It said it is tainted (a poisoned lock; it will crash).
    Tainted,
    /// Its resident memory grew above `--max-memory`.
    Memory,
    /// The kernel's OOM killer killed it (its cgroup's memory limit, or the machine's memory,
    /// ran out; see [`oom`](crate::oom)).
    Oom,
    /// It reached `--max-lifetime` and was replaced gracefully.
    Lifetime,
}

impl RestartReason {
    /// Lower-case name, as used in logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartReason::Exit => "exit",
            RestartReason::Crash => "crash",
            RestartReason::Signal => "signal",
            RestartReason::FailedStart => "failed_start",
            RestartReason::Hang => "hang",
            RestartReason::Tainted => "tainted",
            RestartReason::Memory => "memory",
            RestartReason::Oom => "oom",
            RestartReason::Lifetime => "lifetime",
        }
    }
}

/// Life stage of a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum WorkerState {
    /// Started, not ready yet.
    Starting,
    /// Ready and serving.
    Ready,
    /// Found hung; dump signal sent, SIGKILL pending.
    Hung,
    /// Told to stop (SIGTERM sent): stop, reload, or replaced because tainted.
    Stopping,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ExitInfo {
    /// Exit status, if it exited.
    pub code: Option<i32>,
    /// Signal number, if killed by one.
    pub signal: Option<i32>,
    /// When.
    pub at: SystemTime,
    /// Whether the supervisor had asked it to stop, or it died of a signal the supervisor had
    /// just forwarded to it (SIGUSR1/SIGUSR2, which it does not handle).
    pub requested: bool,
    /// Whether the kernel's OOM killer killed it (see [`oom`](crate::oom)).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub oom_killed: bool,
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit status {c}"),
            (_, Some(s)) => {
                match nix::sys::signal::Signal::try_from(s) {
                    Ok(sig) => write!(f, "killed by {}", sig.as_str())?,
                    Err(_) => write!(f, "killed by signal {s}")?,
                }
                if self.oom_killed {
                    f.write_str(" (out of memory: the kernel's OOM killer)")?;
                }
                Ok(())
            }
            _ => write!(f, "ended"),
        }
    }
}

/// One worker in a [`Snapshot`].
#[derive(Debug, Clone, Serialize)]
pub struct WorkerInfo {
    /// Stable slot id, `w1` … `wN` (a replacement keeps its predecessor's id).
    pub id: String,
    /// Process id.
    pub pid: i32,
    /// Generation (1 at start, +1 per reload).
    pub generation: u64,
    /// Life stage.
    pub state: WorkerState,
    /// Start time.
    pub started_at: SystemTime,
    /// Restarts of this slot so far.
    pub restarts: u32,
    /// How this slot's previous worker ended.
    pub last_exit: Option<ExitInfo>,
    /// Last `STATUS=` text.
    pub status: Option<String>,
    /// Last `UNWEDGE_REPORT` JSON, raw.
    pub last_report: Option<String>,
    /// Its own port (`--port-env` mode).
    pub port: Option<u16>,
}

/// Counters since the supervisor started.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters {
    /// Restarts by reason.
    pub restarts: BTreeMap<RestartReason, u64>,
    /// Hangs by kind.
    pub hangs: BTreeMap<HangKind, u64>,
    /// Notify messages from pids that are not workers (ignored).
    pub forged_notify: u64,
    /// Notify datagrams that could not be parsed (ignored).
    pub malformed_notify: u64,
    /// Orphaned descendants reaped.
    pub orphans_reaped: u64,
    /// Workers sent SIGKILL because they did not stop within `--stop-timeout`
    /// ([`Event::StopTimedOut`]).
    pub stop_timeouts: u64,
    /// Processes found still running in the session of a worker that exited, and stopped
    /// ([`Event::LeftoverProcesses`]).
    pub leftover_processes: u64,
    /// Processes of the supervisor's cgroup that were not workers, killed by the kernel's OOM
    /// killer ([`Event::OomKilledOther`]).
    pub oom_killed_other: u64,
    /// Times a listening TCP socket was found shut down by a worker (no longer listening)
    /// and made to listen again.
    pub listen_restored: u64,
    /// Reloads that completed.
    pub reloads: u64,
    /// Reloads whose new generation failed (old one kept serving).
    pub reloads_failed: u64,
    /// Panic reports received.
    pub reports: u64,
    /// The last (up to 1024) crash-to-ready durations: from a worker's exit or hang to its
    /// replacement being ready.
    pub crash_to_ready: Vec<Duration>,
}

/// A consistent copy of the supervisor's state.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Snapshot {
    /// The serving generation.
    pub generation: u64,
    /// Whether the first generation has become ready.
    pub ready: bool,
    /// Whether a reload is in progress.
    pub reloading: bool,
    /// Reload requests received so far (SIGHUP, [`Control::Reload`]). A request that
    /// arrives during a reload is answered by one more reload after it (several such
    /// requests share it), so that it sees the command and configuration as they are after
    /// the request; each outcome says up to which request it answers.
    ///
    /// [`Control::Reload`]: crate::Control::Reload
    pub reload_requests: u64,
    /// Whether the supervisor is stopping.
    pub stopping: bool,
    /// Live workers (including ones being stopped).
    pub workers: Vec<WorkerInfo>,
    /// Counters.
    pub counters: Counters,
    /// When the supervisor started.
    pub started_at: SystemTime,
    /// When the event loop published this snapshot: it does at least once a second while it
    /// runs, so an old one means the loop is stuck (what the admin's `/livez` looks at).
    #[serde(skip)]
    pub published: std::time::Instant,
}

/// Something that happened, broadcast to subscribers in order.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A worker was started.
    WorkerStarted {
        /// Slot id.
        worker: String,
        /// Pid.
        pid: i32,
        /// Generation.
        generation: u64,
    },
    /// A worker became ready.
    WorkerReady {
        /// Slot id.
        worker: String,
        /// Pid.
        pid: i32,
        /// Time from start to ready.
        startup: Duration,
        /// For a replacement: time from the predecessor's crash or hang to now.
        crash_to_ready: Option<Duration>,
    },
    /// A worker exited.
    WorkerExited {
        /// Slot id.
        worker: String,
        /// Pid.
        pid: i32,
        /// Exit status, if it exited.
        code: Option<i32>,
        /// Signal, if killed by one.
        signal: Option<i32>,
        /// Whether the supervisor had asked it to stop, or it died of a signal the supervisor
        /// had just forwarded to it (SIGUSR1/SIGUSR2, which it does not handle).
        requested: bool,
        /// Whether it was killed by the stop signal (`--stop-signal`) the supervisor sent it:
        /// an ordinary stop, for a worker that does not handle the signal.
        by_stop_signal: bool,
        /// Whether the kernel's OOM killer killed it (see [`oom`](crate::oom)).
        oom_killed: bool,
    },
    /// A worker was found hung and is being replaced (dump signal, then SIGKILL after
    /// `--dump-grace`); one found hung while it stopped is killed the same way, sooner than its
    /// stop deadline, and not replaced again.
    Hung {
        /// Slot id.
        worker: String,
        /// Pid.
        pid: i32,
        /// How it was found.
        kind: HangKind,
        /// What was seen, as in the log line: the worker's own `STATUS=` text for
        /// [`HangKind::Wedged`] (`wedged: deadlock between …`), the probe's error, how long
        /// the heartbeats or the readiness were missed.
        detail: String,
        /// It was stopping already (drained by a reload or a stop, or replaced): killed, not
        /// replaced again.
        stopping: bool,
    },
    /// A worker said it is tainted (poisoned state) and is being replaced.
    Tainted {
        /// Slot id.
        worker: String,
        /// Pid.
        pid: i32,
        /// Its `STATUS=` text.
        status: String,
    },
    /// A worker's resident memory grew above `--max-memory`: its replacement is starting,
    /// and it gets SIGTERM once the replacement is ready.
    MemoryLimit {
        /// Slot id.
        worker: String,
        /// Pid.
        pid: i32,
        /// Its memory as `--max-memory` counts it ([`memory::worker_bytes`](crate::memory::worker_bytes)), in bytes.
        rss: u64,
        /// `--max-memory`, in bytes.
        limit: u64,
    },
    /// A worker sent a panic report.
    Report {
        /// Slot id.
        worker: String,
        /// Pid.
        pid: i32,
        /// The raw `PanicReport` JSON.
        json: String,
    },
    /// A restart was scheduled.
    RestartScheduled {
        /// Slot id.
        worker: String,
        /// Why.
        reason: RestartReason,
        /// Delay before the start.
        delay: Duration,
    },
    /// A reload completed: the new generation serves.
    Reloaded {
        /// The new generation.
        generation: u64,
        /// The reload requests it answers: every one up to this number (see
        /// [`Snapshot::reload_requests`]).
        requests: u64,
    },
    /// A reload failed: its generation was torn down, the old one keeps serving.
    ReloadFailed {
        /// The failed generation.
        generation: u64,
        /// Why.
        reason: String,
        /// The reload requests it answers: every one up to this number (see
        /// [`Snapshot::reload_requests`]).
        requests: u64,
    },
    /// A worker asked to stop (a reload, a replacement, a shutdown, its own graceful crash)
    /// did not exit within `--stop-timeout` and was sent SIGKILL: whatever it was still
    /// serving was cut off. (Not sent for a hung worker: its SIGKILL is part of
    /// [`Event::Hung`].)
    StopTimedOut {
        /// Slot id.
        worker: String,
        /// Pid.
        pid: i32,
        /// Time since it was asked to stop (or said it was stopping).
        waited: Duration,
    },
    /// A worker exited and left processes of its session running (children it forked and did
    /// not stop, in its process group or in groups of their own): they were sent the stop
    /// signal, and get SIGKILL if they still run after `--stop-timeout`. They hold copies of
    /// the listening sockets.
    LeftoverProcesses {
        /// Slot id.
        worker: String,
        /// The exited worker's pid (its session's and group's id).
        pid: i32,
        /// The processes found running in its session.
        pids: Vec<i32>,
    },
    /// The kernel's OOM killer killed processes of the supervisor's cgroup that were not
    /// workers (a worker's own children, or another process sharing the cgroup): the worker
    /// lives on, but whatever that process was doing is lost.
    OomKilledOther {
        /// How many.
        count: u64,
    },
    /// The supervisor gave up: a worker failed to start more than `--max-restarts` times in a
    /// row, or the restart intensity was exceeded. Every worker is being stopped and the
    /// supervisor will exit with status 3.
    GaveUp {
        /// What happened, one line: `worker w1 failed to start 21 times in a row (limit 20);
        /// the last: pid 4242 exit status 1 before it was ready (failed start)`, or `21
        /// restarts within 1m (limit 20); the last: w2 pid 4250 exit status 70 after 2.1s`.
        reason: String,
    },
}

/// Receives every event synchronously, in the supervisor loop (keep it fast; hand work to a
/// task). Unlike a broadcast subscriber it cannot lag, so alerts are never lost, including
/// the final [`Event::GaveUp`].
pub trait AlertHook: Send + Sync + 'static {
    /// Called for each event.
    fn on_event(&self, event: &Event);
}

impl<F: Fn(&Event) + Send + Sync + 'static> AlertHook for F {
    fn on_event(&self, event: &Event) {
        self(event)
    }
}
