//! [`StatusView`]: the supervisor's state as the admin endpoint shows it.
//!
//! The supervisor builds one of these whenever asked (or publishes one on a `watch` channel);
//! `/status` serves it as JSON, `/` renders it as HTML, `/metrics` derives the per-state
//! gauges from it, and `/livez` and `/readyz` answer from it.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use unwedge_redact::looks_like_password;

/// Everything the admin endpoint shows, at one instant.
///
/// ```
/// use unwedge_admin::{StatusView, SupervisorInfo, WorkerState, WorkerView};
///
/// let mut view = StatusView::new(SupervisorInfo::new("0.1.0", 42));
/// view.workers.push(WorkerView::new("w1", Some(43), WorkerState::Ready));
/// assert!(view.is_ready());
/// assert!(view.is_live());
/// let json = serde_json::to_string(&view).unwrap();
/// assert_eq!(serde_json::from_str::<StatusView>(&json).unwrap(), view);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StatusView {
    /// When this view was taken, RFC 3339 UTC (see [`rfc3339`]); the page's chart ends here.
    pub generated_at: String,
    /// The supervisor process itself.
    pub supervisor: SupervisorInfo,
    /// Every worker slot, current generation first or in any order the supervisor likes.
    pub workers: Vec<WorkerView>,
    /// Recent restarts, oldest first (the page charts the last hour).
    pub restarts: Vec<RestartEvent>,
    /// Recent reports, oldest first: panic reports sent by workers and abnormal exits.
    pub reports: Vec<Record>,
}

impl StatusView {
    /// An empty view of a supervisor with no workers yet, taken now.
    pub fn new(supervisor: SupervisorInfo) -> Self {
        StatusView {
            generated_at: rfc3339(SystemTime::now()),
            supervisor,
            workers: Vec::new(),
            restarts: Vec::new(),
            reports: Vec::new(),
        }
    }

    /// `true` when at least one worker is [`WorkerState::Ready`] and the event loop is not
    /// stuck ([`SupervisorInfo::loop_stuck`]: the view is that old): what `/readyz` answers.
    pub fn is_ready(&self) -> bool {
        self.ready_workers() > 0 && !self.supervisor.loop_stuck()
    }

    /// `false` when the supervisor has given up, or its event loop is stuck
    /// ([`SupervisorInfo::loop_stuck`]): what `/livez` answers.
    pub fn is_live(&self) -> bool {
        !self.supervisor.gave_up && !self.supervisor.loop_stuck()
    }

    /// How many workers are ready.
    pub fn ready_workers(&self) -> usize {
        self.workers
            .iter()
            .filter(|w| w.state == WorkerState::Ready)
            .count()
    }

    /// How many workers are in `state`.
    pub fn count(&self, state: WorkerState) -> usize {
        self.workers.iter().filter(|w| w.state == state).count()
    }
}

/// The supervisor process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SupervisorInfo {
    /// unwedge's version.
    pub version: String,
    /// The supervisor's pid.
    pub pid: u32,
    /// Seconds since the supervisor started.
    pub uptime_secs: f64,
    /// `true` once the supervisor gave up and is stopping for good.
    pub gave_up: bool,
    /// Why it gave up, once it did: `worker w1 failed to start 21 times in a row (limit 20);
    /// the last: …`, or `21 restarts within 1m (limit 20); the last: …`.
    #[serde(default)]
    pub gave_up_reason: Option<String>,
    /// The addresses it listens on for the workers (`127.0.0.1:8080`, `unix:/run/app.sock`).
    pub listen: Vec<String>,
    /// The generation serving (1 at start, +1 per reload that completed).
    #[serde(default)]
    pub generation: u64,
    /// Whether a reload is in progress.
    #[serde(default)]
    pub reloading: bool,
    /// How the last reload ended, if there was one.
    #[serde(default)]
    pub last_reload: Option<ReloadOutcome>,
    /// Reload requests received (SIGHUP). `unwedge reload --wait` reads it before its signal
    /// and waits for a `last_reload` whose [`requests`](ReloadOutcome::requests) is above it.
    #[serde(default)]
    pub reload_requests: u64,
    /// Workers SIGKILLed because they did not exit within `--stop-timeout` of being asked to
    /// stop: their requests in flight were cut off.
    #[serde(default)]
    pub stop_timeouts: u64,
    /// Processes found still running in the process group of a worker that exited (its
    /// forked children), and stopped by the supervisor.
    #[serde(default)]
    pub leftover_processes: u64,
    /// Whether the supervisor is stopping (SIGTERM, SIGINT, giving up): it takes no reload,
    /// and exits once its workers have.
    #[serde(default)]
    pub stopping: bool,
    /// Seconds since the supervisor's event loop last ran (it runs at least once a second).
    /// Past [`LOOP_STALL_LIMIT`] the loop is stuck: nothing restarts workers or detects hangs,
    /// and the rest of this view is that old; `/livez` and `/readyz` fail.
    #[serde(default)]
    pub loop_age_secs: f64,
}

/// How long the supervisor's event loop may go without running before `/livez` and
/// `/readyz` fail: ten times the longest it waits between two runs.
///
/// ```
/// assert_eq!(unwedge_admin::LOOP_STALL_LIMIT.as_secs(), 10);
/// ```
pub const LOOP_STALL_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How a reload ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ReloadOutcome {
    /// The generation it started (serving now when `ok`, torn down otherwise).
    pub generation: u64,
    /// Whether the new generation became ready and serves.
    pub ok: bool,
    /// Why it failed (or was refused: a config file that does not parse).
    pub reason: Option<String>,
    /// When it ended, RFC 3339 UTC.
    pub at: String,
    /// It answers every reload request up to this number (a request made during a reload
    /// is answered by the next one).
    #[serde(default)]
    pub requests: u64,
}

impl ReloadOutcome {
    /// A reload that ended now: `reason` is `None` when it succeeded.
    ///
    /// ```
    /// let ok = unwedge_admin::ReloadOutcome::now(2, None);
    /// assert!(ok.ok);
    /// let failed = unwedge_admin::ReloadOutcome::now(3, Some("worker w1 exit status 1".into()));
    /// assert!(!failed.ok);
    /// ```
    pub fn now(generation: u64, reason: Option<String>) -> Self {
        ReloadOutcome {
            generation,
            ok: reason.is_none(),
            reason,
            at: rfc3339(SystemTime::now()),
            requests: 0,
        }
    }

    /// The outcome, answering the reload requests up to `requests`.
    ///
    /// ```
    /// let ok = unwedge_admin::ReloadOutcome::now(2, None).answering(3);
    /// assert_eq!(ok.requests, 3);
    /// ```
    pub fn answering(mut self, requests: u64) -> Self {
        self.requests = requests;
        self
    }
}

impl SupervisorInfo {
    /// A supervisor that just started, has not given up and listens nowhere yet.
    pub fn new(version: impl Into<String>, pid: u32) -> Self {
        SupervisorInfo {
            version: version.into(),
            pid,
            uptime_secs: 0.0,
            gave_up: false,
            gave_up_reason: None,
            listen: Vec::new(),
            generation: 1,
            reloading: false,
            last_reload: None,
            reload_requests: 0,
            stop_timeouts: 0,
            leftover_processes: 0,
            stopping: false,
            loop_age_secs: 0.0,
        }
    }

    /// Whether the event loop has not run for [`LOOP_STALL_LIMIT`].
    ///
    /// ```
    /// let mut info = unwedge_admin::SupervisorInfo::new("0.1.0", 1);
    /// info.loop_age_secs = 0.4;
    /// assert!(!info.loop_stuck());
    /// info.loop_age_secs = unwedge_admin::LOOP_STALL_LIMIT.as_secs_f64() + 1.0;
    /// assert!(info.loop_stuck());
    /// ```
    pub fn loop_stuck(&self) -> bool {
        self.stuck_for().is_some()
    }

    /// How long the event loop has not run, when that makes it stuck ([`Self::loop_stuck`]).
    pub(crate) fn stuck_for(&self) -> Option<f64> {
        (self.loop_age_secs > LOOP_STALL_LIMIT.as_secs_f64()).then_some(self.loop_age_secs)
    }
}

/// One worker slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WorkerView {
    /// The slot's name, stable across restarts (the supervisor's `w1` … `wN`).
    pub id: String,
    /// The current process, if one is running.
    pub pid: Option<u32>,
    /// Reload generation this process belongs to (starts at 1, +1 per reload).
    pub generation: u64,
    /// Where the worker is in its life.
    pub state: WorkerState,
    /// Seconds since the current process started.
    pub uptime_secs: f64,
    /// How many times this slot was restarted.
    pub restarts: u64,
    /// How the previous process in this slot ended.
    pub last_exit: Option<ExitStatus>,
    /// One-line summary of the last report this slot sent (see `PanicReport::summary`).
    pub last_report: Option<String>,
    /// Memory of the current process as `--max-memory` counts it (its RSS; with child
    /// processes, the PSS of its process tree), in bytes, when it was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// The port of its own it was given (the supervisor's `--port-env` mode), where a balancer
    /// in front sends its traffic. A restart of a crashed worker keeps its slot's port when it
    /// is still free; a replacement that overlaps its predecessor (a reload, a hung or
    /// tainted worker's) gets another one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The last `STATUS=` text the process sent over the notify socket, as `systemctl
    /// status` shows a service's: an `unwedge::serve` worker's health (`healthy`,
    /// `tainted: …`), or whatever a server says of itself (`warming caches 40%`). `None`
    /// until it sends one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

impl WorkerView {
    /// A worker in `state`, generation 1, no restarts yet.
    pub fn new(id: impl Into<String>, pid: Option<u32>, state: WorkerState) -> Self {
        WorkerView {
            id: id.into(),
            pid,
            generation: 1,
            state,
            uptime_secs: 0.0,
            restarts: 0,
            last_exit: None,
            last_report: None,
            memory_bytes: None,
            port: None,
            status: None,
        }
    }
}

/// Memory as the status page and `unwedge status` show it: `170.4 MiB`, or `-` when unknown.
pub(crate) fn mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(
        || "-".to_owned(),
        |b| format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
    )
}

/// Where a worker is in its life. Serialized in lower case (`"ready"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Started, not ready yet.
    Starting,
    /// Said `READY=1` (or passed its probe): serving.
    Ready,
    /// Told to stop (reload, shutdown, or its own graceful crash): finishing in-flight work.
    Draining,
    /// Missed heartbeats or probes: being dumped and killed.
    Hung,
    /// Reported poisoned state or a wedge: being replaced.
    Tainted,
    /// Gone, not restarted (yet).
    Exited,
}

impl WorkerState {
    /// Every state, in life order.
    pub const ALL: [WorkerState; 6] = [
        WorkerState::Starting,
        WorkerState::Ready,
        WorkerState::Draining,
        WorkerState::Hung,
        WorkerState::Tainted,
        WorkerState::Exited,
    ];

    /// The lower-case name used in JSON, labels and CSS classes.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Starting => "starting",
            WorkerState::Ready => "ready",
            WorkerState::Draining => "draining",
            WorkerState::Hung => "hung",
            WorkerState::Tainted => "tainted",
            WorkerState::Exited => "exited",
        }
    }
}

impl fmt::Display for WorkerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a process ended: an exit code or a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// The exit code, when it exited.
    pub code: Option<i32>,
    /// The signal number, when a signal killed it.
    pub signal: Option<i32>,
}

impl fmt::Display for ExitStatus {
    /// `exit 70`, `signal 9`, or `unknown`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (_, Some(sig)) => write!(f, "signal {sig}"),
            (Some(code), None) => write!(f, "exit {code}"),
            (None, None) => f.write_str("unknown"),
        }
    }
}

/// Why a worker was restarted: the `reason` label of `unwedge_restarts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartReason {
    /// It exited by itself (code 70 after a fatal panic, or any other code).
    ExitCode,
    /// A signal killed it (OOM killer, `kill -9`, a segfault).
    Signal,
    /// It stopped heartbeating or answering probes and was killed.
    Hang,
    /// It reported poisoned state or a wedge and was replaced.
    Tainted,
    /// A reload replaced it with a new generation.
    Reload,
    /// Its resident memory grew above `--max-memory`; it was replaced gracefully.
    Memory,
    /// The kernel's OOM killer killed it: its cgroup's (or the machine's) memory ran out.
    Oom,
    /// It reached `--max-lifetime` and was replaced gracefully.
    Lifetime,
}

impl RestartReason {
    /// Every reason.
    pub const ALL: [RestartReason; 8] = [
        RestartReason::ExitCode,
        RestartReason::Signal,
        RestartReason::Hang,
        RestartReason::Tainted,
        RestartReason::Reload,
        RestartReason::Memory,
        RestartReason::Oom,
        RestartReason::Lifetime,
    ];

    /// The snake-case name used in JSON and labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartReason::ExitCode => "exit_code",
            RestartReason::Signal => "signal",
            RestartReason::Hang => "hang",
            RestartReason::Tainted => "tainted",
            RestartReason::Reload => "reload",
            RestartReason::Memory => "memory",
            RestartReason::Oom => "oom",
            RestartReason::Lifetime => "lifetime",
        }
    }
}

impl fmt::Display for RestartReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One restart, for the restarts-over-time chart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartEvent {
    /// When the replacement was started, RFC 3339 UTC.
    pub time: String,
    /// The worker slot.
    pub worker: String,
    /// Why.
    pub reason: RestartReason,
}

impl RestartEvent {
    /// A restart of `worker` for `reason`, happening now.
    pub fn now(worker: impl Into<String>, reason: RestartReason) -> Self {
        RestartEvent {
            time: rfc3339(SystemTime::now()),
            worker: worker.into(),
            reason,
        }
    }
}

/// One line of the report directory, and one entry of [`StatusView::reports`].
///
/// Serialized with a `kind` tag: `{"kind":"panic",…}` or `{"kind":"exit",…}`.
///
/// ```
/// use unwedge_admin::{Record, PanicRecord};
///
/// let report = serde_json::json!({"time": "2026-01-01T00:00:00.000Z", "pid": 7, "message": "boom"});
/// let record = Record::Panic(PanicRecord::new(Some("w1"), report));
/// let line = serde_json::to_string(&record).unwrap();
/// assert!(line.starts_with(r#"{"kind":"panic""#));
/// assert_eq!(record.message(), "boom");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Record {
    /// A panic report a worker sent.
    Panic(PanicRecord),
    /// A worker that ended abnormally (non-zero exit, signal, killed as hung).
    Exit(ExitRecord),
}

impl Record {
    /// When the supervisor recorded it, RFC 3339 UTC.
    pub fn time(&self) -> &str {
        match self {
            Record::Panic(p) => &p.time,
            Record::Exit(e) => &e.time,
        }
    }

    /// [`Record::time`] parsed, if it parses.
    pub fn system_time(&self) -> Option<SystemTime> {
        humantime::parse_rfc3339_weak(self.time()).ok()
    }

    /// The worker slot, if known.
    pub fn worker(&self) -> Option<&str> {
        match self {
            Record::Panic(p) => p.worker.as_deref(),
            Record::Exit(e) => e.worker.as_deref(),
        }
    }

    /// The process id, if known.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Record::Panic(p) => p
                .report
                .get("pid")
                .and_then(|v| v.as_u64())
                .and_then(|v| u32::try_from(v).ok()),
            Record::Exit(e) => e.pid,
        }
    }

    /// Redacts the credentials it may hold (see [`PanicRecord::redact`] and
    /// [`ExitRecord::redact`]); returns whether anything was changed. For records read back
    /// from a file older than the redaction (`unwedge reports` does it).
    ///
    /// ```
    /// use unwedge_admin::{ExitRecord, ExitStatus, Record};
    ///
    /// let mut exit = ExitRecord::new(Some("w1"), Some(42), ExitStatus { code: Some(1), signal: None });
    /// exit.last_stderr_lines = vec!["Cookie: session=abc".into()];
    /// let mut record = Record::Exit(exit);
    /// assert!(record.redact());
    /// let Record::Exit(exit) = record else { unreachable!() };
    /// assert_eq!(exit.last_stderr_lines, ["Cookie: [redacted]"]);
    /// ```
    pub fn redact(&mut self) -> bool {
        match self {
            Record::Panic(p) => p.redact(),
            Record::Exit(e) => e.redact(),
        }
    }

    /// The panic message, or `exit 70` / `signal 9` for an exit.
    pub fn message(&self) -> String {
        match self {
            Record::Panic(p) => p.str_field("message").unwrap_or("").to_owned(),
            Record::Exit(e) if e.oom_killed => format!("{} (out of memory)", e.status()),
            Record::Exit(e) => e.status().to_string(),
        }
    }
}

/// The text that replaces the value of a credential header (as the `unwedge` library
/// writes it).
pub const REDACTED: &str = "<redacted>";

/// Cleans a string value that is a URL or a path of what may carry a credential: its user info
/// (`https://user:pw@host/x` becomes `https://…@host/x`), its query and its fragment
/// (`?token=…`, `#access_token=…`). Returns whether it changed anything.
fn clean_url(value: &mut serde_json::Value) -> bool {
    let Some(s) = value.as_str() else {
        return false;
    };
    let (scheme, user, rest) = split_userinfo(s, UserInfoEnd::Authority);
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    if user.is_none() && end == rest.len() {
        return false;
    }
    let user = if user.is_some() { "…@" } else { "" };
    *value = serde_json::Value::String(format!("{scheme}{user}{}", &rest[..end]));
    true
}

/// Where [`split_userinfo`] looks for the end of a URL's user info.
#[derive(Debug, Clone, Copy)]
pub(crate) enum UserInfoEnd {
    /// The last `@` before the first `/`, `?` or `#`, where the authority of a URL that parses
    /// ends: an `@` in the path or query (`/@alice`, `?next=a@b`) is left alone. When there is
    /// none there but what comes before that first `/ ? #` reads as `user:password`
    /// ([`looks_like_password`]: a `:` not followed by a port), the last `@` of all: a
    /// password with an unencoded `/`, `?` or `#` (`app:Ab3/x+Yz==@db`, base64's `/`).
    Authority,
    /// The last `@` anywhere: in a URL that may not parse, a password may hold `/`, `?` or
    /// `@`, so everything before it is taken for user info.
    LastAt,
}

/// Splits `url` into its `scheme://` (empty without one), its user info without the `@`
/// (`None` without one) and the rest, which starts with the host.
///
/// One rule for what quotes a URL: the errors and logs about a webhook, and the cleaning of
/// the URLs a worker's report holds.
pub(crate) fn split_userinfo(url: &str, end: UserInfoEnd) -> (&str, Option<&str>, &str) {
    let is_scheme = |s: &str| {
        s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    };
    let (scheme, rest) = match url.split_once("://") {
        Some((s, rest)) if is_scheme(s) => (&url[..s.len() + 3], rest),
        _ => ("", url),
    };
    let at = match end {
        UserInfoEnd::Authority => {
            let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
            match authority.rfind('@') {
                None if looks_like_password(authority) => rest.rfind('@'),
                at => at,
            }
        }
        UserInfoEnd::LastAt => rest.rfind('@'),
    };
    match at {
        Some(at) => (scheme, Some(&rest[..at]), &rest[at + 1..]),
        None => (scheme, None, rest),
    }
}

/// `text` (a panic message, a line of stderr) with the user info of every URL in it cut as
/// [`clean_url`] cuts a URL field's (`scheme://…@host`; the rules:
/// [`unwedge_redact::hide_url_userinfo`]); `None` when it holds no such URL.
fn hide_userinfo_in_text(text: &str) -> Option<String> {
    unwedge_redact::hide_url_userinfo(text)
}

/// The marks of a cut: the `unwedge` library's for a report field cut to fit a notify
/// datagram, and the plain ellipsis.
const CUT_MARKS: [&str; 2] = [unwedge_redact::CUT_MARK, "…"];

/// Stderr lines this long (or longer) may have been cut: the supervisor keeps the first KiB of
/// a line (give or take the 3 bytes of a character cut in two).
const CUT_LINE_MIN: usize = 1024 - 3;

/// `text`, which was cut (at its end, before `marks`, if any), with a URL the cut fell in
/// shown `scheme://…`: when the text ends inside a URL's authority, or past the first `/`, `?`
/// or `#` of a URL whose authority reads as `user:password` ([`looks_like_password`]), the
/// `@` that shows where the password ends may be past the cut (or be one inside the
/// password), so nothing of it is kept. `None` when the text does not end inside such a URL.
fn hide_cut_authority(text: &str) -> Option<String> {
    let (body, mark) = CUT_MARKS
        .iter()
        .find_map(|m| text.strip_suffix(m).map(|b| (b, *m)))
        .unwrap_or((text, ""));
    // Cut already (`scheme://…`): left as it is.
    let i = unwedge_redact::cut_inside_url(body).filter(|&i| &body[i..] != "…")?;
    Some(format!("{}…{mark}", &body[..i]))
}

/// Longest `backtrace` a stored report keeps, in bytes (its text, or the strings of a list of
/// frames together): the `unwedge` library's fit its 60 000-byte reports.
pub const MAX_REPORT_BACKTRACE: usize = 32 * 1024;

/// Longest string a stored report keeps in a field other than `message` and `backtrace` (a
/// header value, a path, a field unknown here), in bytes.
pub const MAX_REPORT_TEXT: usize = 2 * 1024;

/// Bytes of a stored report outside its `message` and `backtrace`: strings and names
/// together, each value counted 16 bytes more. Past it, what is left of a
/// report's fields (in the order of their names) is dropped.
pub const MAX_REPORT_OTHER: usize = 24 * 1024;

/// Most entries a list or object of a stored report keeps (a `backtrace`'s list of frames:
/// [`MAX_REPORT_FRAMES`]).
pub const MAX_REPORT_ITEMS: usize = 64;

/// Most frames a `backtrace` sent as a list keeps (as many as the `unwedge` library captures).
pub const MAX_REPORT_FRAMES: usize = 256;

/// Longest name of an object's field a stored report keeps, in bytes.
const MAX_REPORT_NAME: usize = 128;

/// Deepest nesting a stored report keeps: a list or object deeper is shown as the cut mark.
const MAX_REPORT_DEPTH: usize = 8;

/// What a value counts against a budget besides its text.
const NODE_COST: usize = 16;

/// How a part of a report is cut.
struct Bound {
    /// Longest string.
    text: usize,
    /// Most entries of a list or object.
    items: usize,
}

/// Cuts `report` (a worker's, its credentials hidden already) to a bounded size (see
/// [`PanicRecord::new`]). Returns whether anything was cut.
fn bound_report(report: &mut serde_json::Value) -> bool {
    let other = Bound {
        text: MAX_REPORT_TEXT,
        items: MAX_REPORT_ITEMS,
    };
    let mut budget = MAX_REPORT_OTHER;
    let serde_json::Value::Object(map) = report else {
        // Not an object (a report that is not JSON is kept as its text): a message.
        let whole = Bound {
            text: unwedge_redact::MAX_MESSAGE,
            items: MAX_REPORT_ITEMS,
        };
        return bound_value(report, &whole, &mut budget, 0);
    };
    let mut cut = false;
    if let Some(message) = map.get_mut("message") {
        let mut room = usize::MAX;
        let bound = Bound {
            text: unwedge_redact::MAX_MESSAGE,
            items: MAX_REPORT_ITEMS,
        };
        // Text is what a message is: anything else gets the budget of the other fields.
        let budget = match message {
            serde_json::Value::String(_) => &mut room,
            _ => &mut budget,
        };
        cut |= bound_value(message, &bound, budget, 1);
    }
    if let Some(backtrace) = map.get_mut("backtrace") {
        let mut room = MAX_REPORT_BACKTRACE;
        let bound = Bound {
            text: MAX_REPORT_BACKTRACE,
            items: MAX_REPORT_FRAMES,
        };
        cut |= bound_value(backtrace, &bound, &mut room, 1);
    }
    let fields = std::mem::take(map);
    let mut kept = 0;
    for (name, mut value) in fields {
        if !matches!(name.as_str(), "message" | "backtrace") {
            if kept >= other.items || budget == 0 {
                cut = true;
                continue;
            }
            kept += 1;
            budget = budget.saturating_sub(name.len() + NODE_COST);
            cut |= bound_value(&mut value, &other, &mut budget, 1);
        }
        let name = match cut_text(&name, MAX_REPORT_NAME) {
            Some(short) => {
                cut = true;
                short
            }
            None => name,
        };
        map.entry(name).or_insert(value);
    }
    cut
}

/// Cuts `value` to `bound`, each string to what is left of `budget` too, taking what it keeps
/// from `budget`. Returns whether anything was cut.
fn bound_value(
    value: &mut serde_json::Value,
    bound: &Bound,
    budget: &mut usize,
    depth: usize,
) -> bool {
    let mark = || serde_json::Value::String(unwedge_redact::CUT_MARK.to_owned());
    match value {
        serde_json::Value::String(text) => {
            let max = bound.text.min(budget.saturating_sub(NODE_COST));
            let short = cut_text(text, max);
            let cut = short.is_some();
            if let Some(short) = short {
                // Cut inside a URL's authority, it keeps only its `scheme://…`, as a field its
                // worker cut does.
                *text = hide_cut_authority(&short).unwrap_or(short);
            }
            *budget = budget.saturating_sub(text.len() + NODE_COST);
            cut
        }
        serde_json::Value::Array(_) | serde_json::Value::Object(_) if depth >= MAX_REPORT_DEPTH => {
            *value = mark();
            *budget = budget.saturating_sub(NODE_COST);
            true
        }
        serde_json::Value::Array(items) => {
            *budget = budget.saturating_sub(NODE_COST);
            let mut cut = false;
            let mut kept = 0;
            for item in items.iter_mut() {
                if kept >= bound.items || *budget == 0 {
                    break;
                }
                kept += 1;
                cut |= bound_value(item, bound, budget, depth + 1);
            }
            if kept < items.len() {
                items.truncate(kept);
                cut = true;
            }
            cut
        }
        serde_json::Value::Object(map) => {
            *budget = budget.saturating_sub(NODE_COST);
            let fields = std::mem::take(map);
            let mut cut = fields.len() > bound.items;
            for (name, mut item) in fields.into_iter().take(bound.items) {
                if *budget == 0 {
                    cut = true;
                    break;
                }
                let name = match cut_text(&name, MAX_REPORT_NAME) {
                    Some(short) => {
                        cut = true;
                        short
                    }
                    None => name,
                };
                *budget = budget.saturating_sub(name.len() + NODE_COST);
                cut |= bound_value(&mut item, bound, budget, depth + 1);
                map.entry(name).or_insert(item);
            }
            cut
        }
        _ => {
            *budget = budget.saturating_sub(NODE_COST);
            false
        }
    }
}

/// `text` cut to `max` bytes on a character boundary, [`CUT_MARK`](unwedge_redact::CUT_MARK)
/// appended; `None` when it is no longer, or is that long and ends with the mark already
/// (cut by its worker: the `unwedge` library cuts a message to the same length).
fn cut_text(text: &str, max: usize) -> Option<String> {
    let mark = unwedge_redact::CUT_MARK;
    if text.len() <= max || (text.ends_with(mark) && text.len() <= max + mark.len()) {
        return None;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Some(format!("{}{mark}", &text[..end]))
}

/// A panic report a worker sent, as received but for its credentials.
///
/// `report` is the worker's `PanicReport` JSON, kept as a raw value so that workers of another
/// unwedge version (or another language) are still shown: fields the page reads are `time`,
/// `pid`, `message`, `location`, `thread`, `backtrace`, `request{method,path,request_id,headers}`,
/// `task`, `rolled_back`, `poisoned`, `decision{action,reason}`.
///
/// Any worker may send a report, and not every one redacts: [`new`](Self::new) replaces the
/// values of credential headers in `request.headers` (the
/// [`REDACTED_HEADERS`](crate::REDACTED_HEADERS) and the others
/// [`is_credential_name`](unwedge_redact::is_credential_name) knows: `X-Api-Key`,
/// `X-Auth-Token`, …; names in any case) with [`REDACTED`], cuts the user info, query and fragment off `request.path`
/// and URL headers (`https://user:pw@host/x?token=…` becomes `https://…@host/x`), and the user
/// info off every URL in the `message` (`postgres://app:pw@db/x` becomes `postgres://…@db/x`),
/// so that `/status`, the report directory, alerts and the `route` label of `/metrics` never
/// hold them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PanicRecord {
    /// When the supervisor received it, RFC 3339 UTC.
    pub time: String,
    /// The worker slot that sent it.
    pub worker: Option<String>,
    /// The report itself.
    pub report: serde_json::Value,
}

impl PanicRecord {
    /// A report from `worker`, received now, its credential headers redacted (see
    /// [`redact`](Self::redact)) and then cut to a bounded size, whatever the worker sent (a
    /// notify datagram may hold 256 KiB): the `message` to
    /// [`MAX_MESSAGE`](unwedge_redact::MAX_MESSAGE) bytes, the `backtrace` to
    /// [`MAX_REPORT_BACKTRACE`], every other string to [`MAX_REPORT_TEXT`], all of them
    /// together to [`MAX_REPORT_OTHER`] and each list or object to [`MAX_REPORT_ITEMS`] entries
    /// (a cut string ends with [`CUT_MARK`](unwedge_redact::CUT_MARK)): one stored report
    /// is at most some 70 KiB, and the history, `/status` and the report directory hold 50.
    ///
    /// ```
    /// use unwedge_admin::PanicRecord;
    ///
    /// let report = serde_json::json!({"request": {"path": "/", "headers": {
    ///     "Cookie": "session=s3cret", "user-agent": "curl/8"}}});
    /// let r = PanicRecord::new(Some("w1"), report);
    /// assert_eq!(r.report["request"]["headers"]["Cookie"], "<redacted>");
    /// assert_eq!(r.report["request"]["headers"]["user-agent"], "curl/8");
    ///
    /// let report = serde_json::json!({"request": {"path": "/reset?token=s3cret"}});
    /// assert_eq!(PanicRecord::new(None, report).report["request"]["path"], "/reset");
    ///
    /// let report = serde_json::json!({"request": {"path": "/", "headers": {
    ///     "Referer": "https://alice:s3cret@shop.example/cart?token=s3cret"}}});
    /// let r = PanicRecord::new(None, report);
    /// assert_eq!(r.report["request"]["headers"]["Referer"], "https://…@shop.example/cart");
    ///
    /// let report = serde_json::json!({"message": "no DB at postgres://app:s3cret@db/app?x=1"});
    /// let r = PanicRecord::new(None, report);
    /// assert_eq!(r.report["message"], "no DB at postgres://…@db/app?x=1");
    /// ```
    pub fn new(worker: Option<&str>, report: serde_json::Value) -> Self {
        let mut r = PanicRecord {
            time: rfc3339(SystemTime::now()),
            worker: worker.map(str::to_owned),
            report,
        };
        r.redact();
        // Cut after hiding: what was hidden in a whole field stays hidden in its start.
        bound_report(&mut r.report);
        r
    }

    /// Replaces the value of every credential header in `request.headers` (a
    /// [`REDACTED_HEADERS`](crate::REDACTED_HEADERS) one, `X-Api-Key`, `X-Auth-Token`, …:
    /// [`is_credential_name`](unwedge_redact::is_credential_name)) with [`REDACTED`], whatever
    /// the case of its name: in a JSON object
    /// (`{"Cookie": "…"}`, the `unwedge` library's form) or a list of `[name, value]` pairs;
    /// and cuts the user info (everything between `scheme://` and the last `@` before the
    /// first `/`, `?` or `#`, or the last `@` of all when what precedes that first `/ ? #`
    /// reads as `user:password`; shown as `…@`), the query and
    /// the fragment off `request.path`,
    /// `request.route`, a `Referer` header's value and any header value starting with a URL
    /// scheme (`https://`, `HTTPS://`, `wss://`),
    /// as the `unwedge` library reports them (each value of a list, as Go's `http.Header` has);
    /// the user info of a URL anywhere in any other header value is cut as in the `message`
    /// (`1.2.3.4, postgres://a:pw@db/x` becomes `1.2.3.4, postgres://…@db/x`).
    /// In the top-level `message` (free text: a worker's panic message may quote a URL it
    /// failed to reach), it cuts the user info of every URL, as the `unwedge` library does:
    /// a URL is found by its `scheme://` (any scheme, any case), its user info ends at the last
    /// `@` before the first `/`, `?`, `#`, whitespace, control character, `"`, `<` or `>` (or,
    /// for a password with an unencoded `/ ? #`, at the URL's last `@`: see
    /// `hide_userinfo_in_text`), and is shown `…`; the rest of the message, a URL's query
    /// included, is left as written.
    /// A message its worker cut (ending `…<truncated>` or `…`, or named in `truncated`) that
    /// ends inside a URL's authority keeps only its `scheme://…`: the end of a password is
    /// past the cut.
    /// `request.headers` may also be a list of `[name, value]` pairs or of
    /// `{"name": …, "value": …}` objects (HAR, OpenTelemetry).
    /// Anywhere in the report, at any depth, the value of a key that is a credential's name
    /// (Go's `request.header`, `{"db": {"password": …}}`) and the `value` of an object whose
    /// `name` or `key` is one become `<redacted>`, whatever their type but `null` and
    /// booleans. Every other string of the report, header values included (the `message`,
    /// `backtrace`, `location`, `thread`, `decision.reason`, a field unknown here), then has
    /// the value after each `Authorization`, `Proxy-Authorization`, `Cookie` or `Set-Cookie`
    /// name replaced by `[redacted]`, and the user info of each URL cut, as a stderr line
    /// has (see [`ExitRecord::redact`]): a worker's `panic!("{req:?}")` quotes
    /// `{"authorization": "Bearer …"}`.
    /// Returns whether anything was changed.
    pub fn redact(&mut self) -> bool {
        let secret = |name: &str| unwedge_redact::is_credential_name(name_only(name));
        // As the `unwedge` library tells a URL header: the `Referer`, or a value with a scheme
        // (any, in any case: `HTTPS://`, `wss://`).
        let is_url = |name: &str, value: &serde_json::Value| {
            name.trim().eq_ignore_ascii_case("referer")
                || value
                    .as_str()
                    .is_some_and(|v| !split_userinfo(v, UserInfoEnd::Authority).0.is_empty())
        };
        let redacted = || serde_json::Value::String(REDACTED.to_owned());
        let mut changed = false;
        // Cut by its worker (an older unwedge cut it before hiding anything), a message may
        // end inside a URL's user info.
        let message_cut = self.report.get("truncated").is_some_and(|t| {
            t.as_array()
                .is_some_and(|a| a.iter().any(|f| f.as_str() == Some("message")))
        });
        if let Some(serde_json::Value::String(message)) = self.report.get_mut("message") {
            let cut = CUT_MARKS.iter().any(|m| message.ends_with(m)) || message_cut;
            if let Some(hidden) = cut.then(|| hide_cut_authority(message)).flatten() {
                *message = hidden;
                changed = true;
            }
            if let Some(hidden) = hide_userinfo_in_text(message) {
                *message = hidden;
                changed = true;
            }
        }
        changed |= scrub_report_strings(&mut self.report);
        let Some(request) = self.report.get_mut("request") else {
            return changed;
        };
        // The route template too: any worker may send one, and it is the metrics label.
        for field in ["path", "route"] {
            if let Some(v) = request.get_mut(field) {
                changed |= clean_url(v);
            }
        }
        let Some(headers) = request.get_mut("headers") else {
            return changed;
        };
        let mut one = |name: &str, value: &mut serde_json::Value| {
            if secret(name) {
                if value.as_str() != Some(REDACTED) {
                    *value = redacted();
                    changed = true;
                }
                return;
            }
            // Go's `http.Header` holds a list of values for each name.
            let values = match value {
                serde_json::Value::Array(values) => values.iter_mut().collect(),
                value => vec![value],
            };
            for value in values {
                if is_url(name, value) {
                    changed |= clean_url(value);
                }
                // A URL inside any value, not only at its start (`ua https://u:pw@x/`, an
                // `X-Forwarded-For`'s `1.2.3.4, postgres://a:pw@db`), loses its user info as
                // a message's does; one a cut value ends in keeps only its `scheme://…`.
                if let serde_json::Value::String(text) = value {
                    if CUT_MARKS.iter().any(|m| text.ends_with(m)) {
                        if let Some(hidden) = hide_cut_authority(text) {
                            *text = hidden;
                            changed = true;
                        }
                    }
                    if let Some(hidden) = hide_userinfo_in_text(text) {
                        *text = hidden;
                        changed = true;
                    }
                }
            }
        };
        match headers {
            serde_json::Value::Object(map) => {
                for (name, value) in map.iter_mut() {
                    one(name, value);
                }
            }
            serde_json::Value::Array(pairs) => {
                for pair in pairs.iter_mut() {
                    match pair {
                        serde_json::Value::Array(pair) => {
                            if let [serde_json::Value::String(name), value, ..] = &mut pair[..] {
                                one(name, value);
                            }
                        }
                        // HAR's and OpenTelemetry's `{"name": …, "value": …}`.
                        serde_json::Value::Object(pair) => {
                            let name = pair_name(pair).map(str::to_owned);
                            if let (Some(name), Some(value)) = (name, pair_value(pair)) {
                                one(&name, value);
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        changed
    }

    /// A top-level string field of the report (`message`, `location`, …).
    pub fn str_field(&self, name: &str) -> Option<&str> {
        self.report.get(name).and_then(|v| v.as_str())
    }

    /// The `route` label for `unwedge_panics_total`: the request's route template (`route`,
    /// sent by a `PanicLayer` inside an axum `Router`), else its path with the identifiers in
    /// it replaced by placeholders ([`unwedge_redact::route_template`]: one label per
    /// handler, and no user's id in a label anyone scraping can read); `task:NAME` for a
    /// background task, or `unknown`.
    ///
    /// ```
    /// use unwedge_admin::PanicRecord;
    ///
    /// let r = PanicRecord::new(None, serde_json::json!({"request": {"path": "/cart"}}));
    /// assert_eq!(r.route(), "/cart");
    /// let r = PanicRecord::new(None, serde_json::json!({"request": {"path": "/cart/917"}}));
    /// assert_eq!(r.route(), "/cart/{int}");
    /// let request = serde_json::json!({"path": "/users/42", "route": "/users/{id}"});
    /// let r = PanicRecord::new(None, serde_json::json!({ "request": request }));
    /// assert_eq!(r.route(), "/users/{id}");
    /// // Cleaned as the path is: a worker's route is a label anyone scraping can read.
    /// let request = serde_json::json!({"path": "/x", "route": "/reset?token=abc"});
    /// let r = PanicRecord::new(None, serde_json::json!({ "request": request }));
    /// assert_eq!(r.route(), "/reset");
    /// let r = PanicRecord::new(None, serde_json::json!({"task": "cleanup"}));
    /// assert_eq!(r.route(), "task:cleanup");
    /// ```
    pub fn route(&self) -> String {
        let request = self.report.get("request");
        // The route template a layer inside an axum `Router` saw (bounded), else the path.
        let field = |name| request.and_then(|r| r.get(name)).and_then(|p| p.as_str());
        if let Some(route) = field("route") {
            return route.to_owned();
        }
        if let Some(path) = field("path") {
            return unwedge_redact::route_template(path).into_owned();
        }
        match self.str_field("task") {
            Some(task) => format!("task:{task}"),
            None => "unknown".to_owned(),
        }
    }

    /// `GET /path` of the request the panic hit, if it hit one.
    pub fn request_line(&self) -> Option<String> {
        let req = self.report.get("request")?.as_object()?;
        let method = req.get("method").and_then(|v| v.as_str()).unwrap_or("?");
        let path = req.get("path").and_then(|v| v.as_str()).unwrap_or("?");
        Some(format!("{method} {path}"))
    }
}

/// A worker that ended abnormally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ExitRecord {
    /// When the supervisor saw it end, RFC 3339 UTC.
    pub time: String,
    /// The worker slot.
    pub worker: Option<String>,
    /// The process id.
    pub pid: Option<u32>,
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal number, when a signal killed it.
    pub signal: Option<i32>,
    /// The last lines it wrote to stderr (the supervisor keeps a small ring of them), as
    /// written but for credentials (see [`redact`](Self::redact)).
    pub last_stderr_lines: Vec<String>,
    /// The kernel's OOM killer killed it (out of memory).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub oom_killed: bool,
}

impl ExitRecord {
    /// An exit of `pid` in slot `worker`, seen now.
    pub fn new(worker: Option<&str>, pid: Option<u32>, status: ExitStatus) -> Self {
        ExitRecord {
            time: rfc3339(SystemTime::now()),
            worker: worker.map(str::to_owned),
            pid,
            code: status.code,
            signal: status.signal,
            last_stderr_lines: Vec::new(),
            oom_killed: false,
        }
    }

    /// Replaces, in each of [`last_stderr_lines`](Self::last_stderr_lines), the value that
    /// follows an `Authorization`, `Proxy-Authorization`, `Cookie` or `Set-Cookie` name with
    /// `[redacted]`; returns whether anything was changed. A worker that logs a request's
    /// headers just before it dies must not put them in reports, `/status` and alerts.
    ///
    /// A name counts in any case, not inside a longer word (`xcookie`), optionally quoted, when
    /// `:` or `=` follows it (spaces and a closing quote allowed before and spaces after). Its
    /// value is the quoted string that follows (`"…"`, `'…'`, or `\"…\"` inside a JSON string;
    /// in a list, `["a=1", "id=x"]`, every one of them),
    /// or else everything up to the next `"` or the end of the line: `,` and `;` do not end
    /// it, since cookies and some schemes hold them, nor does a quoted parameter in it (a `"`
    /// right after `=`: Digest's `response="…"`, a cookie's `a="…"`).
    ///
    /// It also cuts the user info of every URL in a line, as in a report's `message` (see
    /// [`PanicRecord::redact`]): `error: redis://:hunter2@cache:6379 refused` becomes
    /// `error: redis://…@cache:6379 refused`; a line as long as the tail keeps (1 KiB, so
    /// perhaps cut) that ends inside a URL's authority keeps only its `scheme://…`. Nothing
    /// else in the line is changed.
    ///
    /// ```
    /// use unwedge_admin::{ExitRecord, ExitStatus};
    ///
    /// let mut exit = ExitRecord::new(Some("w1"), Some(7), ExitStatus { code: Some(1), signal: None });
    /// exit.last_stderr_lines = vec![
    ///     r#"{"level":"error","authorization": "Bearer sk_live_abc","path":"/pay"}"#.into(),
    ///     "Cookie: session=abc; theme=dark".into(),
    ///     "error: redis://:hunter2@cache:6379 refused".into(),
    ///     "connection reset by peer".into(),
    /// ];
    /// assert!(exit.redact());
    /// assert_eq!(exit.last_stderr_lines, [
    ///     r#"{"level":"error","authorization": "[redacted]","path":"/pay"}"#,
    ///     "Cookie: [redacted]",
    ///     "error: redis://…@cache:6379 refused",
    ///     "connection reset by peer",
    /// ]);
    /// ```
    pub fn redact(&mut self) -> bool {
        let mut changed = false;
        for line in &mut self.last_stderr_lines {
            // A line the tail cut may end inside a URL's user info (the supervisor now keeps
            // none of it; a report file an older one wrote may).
            if line.len() >= CUT_LINE_MIN {
                if let Some(hidden) = hide_cut_authority(line) {
                    *line = hidden;
                    changed = true;
                }
            }
            if let Some(scrubbed) = scrub_credentials(line) {
                *line = scrubbed;
                changed = true;
            }
        }
        changed
    }

    /// Code and signal together.
    pub fn status(&self) -> ExitStatus {
        ExitStatus {
            code: self.code,
            signal: self.signal,
        }
    }
}

/// Hides the credentials anywhere in a report, at any depth: the value of every key that is a
/// credential's name ([`unwedge_redact::is_credential_name`]: `authorization`, `cookie`,
/// `x-api-key`, `client_secret`, …), whatever its type (a string, Go's list of values, an
/// object), becomes [`REDACTED`]; so does the `value` of an object that names a credential
/// under `name` or `key` (a header as HAR and OpenTelemetry write it,
/// `{"name": "Authorization", "value": "…"}`); and every other string (keys are left as they
/// are) has [`scrub_credentials`] applied: the `message` (a worker's `panic!("{req:?}")`
/// prints its headers), `backtrace`, `location`, `thread`, `decision.reason`, the values of
/// `request.headers`, and any field an unknown worker sends. `null` and booleans are left:
/// they are no credential. Each string is scanned once; the walk uses its own stack (no
/// recursion), so its cost is linear in the report's size whatever its depth. Returns whether
/// anything was changed.
fn scrub_report_strings(report: &mut serde_json::Value) -> bool {
    let mut changed = false;
    let mut stack = vec![report];
    while let Some(value) = stack.pop() {
        match value {
            serde_json::Value::String(s) => {
                if let Some(scrubbed) = scrub_credentials(s) {
                    *s = scrubbed;
                    changed = true;
                }
            }
            serde_json::Value::Array(values) => stack.extend(values.iter_mut()),
            serde_json::Value::Object(map) => {
                let named_secret = pair_name(map)
                    .is_some_and(|n| unwedge_redact::is_credential_name(name_only(n)));
                for (key, v) in map.iter_mut() {
                    let secret = unwedge_redact::is_credential_name(name_only(key))
                        || (named_secret && key.eq_ignore_ascii_case("value"));
                    if secret {
                        changed |= hide_value(v);
                    } else {
                        stack.push(v);
                    }
                }
            }
            _ => {}
        }
    }
    changed
}

/// The header name of an object that holds one header under keys of its own (`name` or
/// `key`, any case, beside a `value`), as HAR and OpenTelemetry write headers.
fn pair_name(pair: &serde_json::Map<String, serde_json::Value>) -> Option<&str> {
    pair.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("name") || k.eq_ignore_ascii_case("key"))
        .and_then(|(_, v)| v.as_str())
}

/// The `value` (any case) of a header object (see [`pair_name`]).
fn pair_value(
    pair: &mut serde_json::Map<String, serde_json::Value>,
) -> Option<&mut serde_json::Value> {
    pair.iter_mut()
        .find(|(k, _)| k.eq_ignore_ascii_case("value"))
        .map(|(_, v)| v)
}

/// Replaces a credential's value, whatever its type but `null` and booleans, by
/// [`REDACTED`]; returns whether it changed.
fn hide_value(value: &mut serde_json::Value) -> bool {
    match value {
        serde_json::Value::Null | serde_json::Value::Bool(_) => false,
        serde_json::Value::String(s) if s == REDACTED || s == "[redacted]" => false,
        _ => {
            *value = serde_json::Value::String(REDACTED.to_owned());
            true
        }
    }
}

/// A header or field name as a credential check reads it: without the blanks and control
/// characters around it (`"Authorization\u{0}"`, which a crafted report may send, is still
/// `Authorization`).
fn name_only(name: &str) -> &str {
    name.trim_matches(|c: char| c.is_whitespace() || c.is_control())
}

/// `line` with the value after each credential name replaced by `[redacted]` and the user
/// info of each URL cut ([`unwedge_redact::redact_text`]; the rules: [`ExitRecord::redact`]);
/// `None` when it has neither.
fn scrub_credentials(line: &str) -> Option<String> {
    unwedge_redact::redact_text(line)
}

/// Formats a time as RFC 3339 in UTC with milliseconds, like `PanicReport::time`.
///
/// ```
/// let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_500);
/// assert_eq!(unwedge_admin::rfc3339(t), "1970-01-01T00:00:01.500Z");
/// ```
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// How long before `now` the RFC 3339 time `t` was; `None` if `t` does not parse, zero if
/// `t` is in the future.
pub(crate) fn age(t: &str, now: SystemTime) -> Option<Duration> {
    let t = humantime::parse_rfc3339_weak(t).ok()?;
    Some(now.duration_since(t).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::{
        clean_url, ExitRecord, ExitStatus, PanicRecord, Record, StatusView, SupervisorInfo,
        CUT_LINE_MIN,
    };

    const MARK: &str = unwedge_redact::CUT_MARK;

    #[test]
    fn a_report_is_cut_to_a_bounded_size_whatever_its_shape() {
        // Deep, wide, long names, long strings, and a message that is a number.
        let mut deep = serde_json::json!("x");
        for _ in 0..100 {
            deep = serde_json::json!([deep]);
        }
        let wide: serde_json::Map<String, serde_json::Value> = (0..10_000)
            .map(|i| (format!("{i:0>300}"), serde_json::json!("y".repeat(100))))
            .collect();
        let report = serde_json::json!({
            "message": 42, "deep": deep, "wide": wide,
            "frames": vec!["z".repeat(1000); 1000],
            "backtrace": vec![serde_json::json!({"fn": "f".repeat(500)}); 10_000],
        });
        assert!(serde_json::to_string(&report).unwrap().len() > 5_000_000);
        let r = PanicRecord::new(None, report);
        let kept = serde_json::to_string(&r.report).unwrap().len();
        assert!(kept < 80_000, "{kept}");
        assert_eq!(r.report["message"], 42);
        assert!(r.report["backtrace"].as_array().unwrap().len() <= 256);
        // A report that is text, not JSON, is a message.
        let text = serde_json::Value::String("t".repeat(100_000));
        let r = PanicRecord::new(None, text);
        assert_eq!(r.report.as_str().unwrap().len(), 8 * 1024 + MARK.len());
    }

    #[test]
    fn a_message_the_unwedge_library_cut_is_kept_as_it_is() {
        let message = format!("{}{MARK}", "é".repeat(4 * 1024));
        let r = PanicRecord::new(None, serde_json::json!({ "message": message }));
        assert_eq!(r.report["message"], message.as_str());
        // One byte more is cut, on a character boundary.
        let message = format!("{}{MARK}", "é".repeat(4 * 1024 + 1));
        let r = PanicRecord::new(None, serde_json::json!({ "message": message }));
        let kept = r.report["message"].as_str().unwrap();
        assert_eq!(kept, format!("{}{MARK}", "é".repeat(4 * 1024)));
    }

    #[test]
    fn a_message_cut_inside_a_urls_authority_keeps_only_its_scheme() {
        // Hidden first (`postgres://…@db`), then cut inside the host: nothing of it is kept.
        let message = format!(
            "{} postgres://app:s3cret@database/app",
            "m".repeat(8 * 1024 - 16)
        );
        let r = PanicRecord::new(None, serde_json::json!({ "message": message }));
        let kept = r.report["message"].as_str().unwrap();
        assert!(!kept.contains("s3cret"), "{kept}");
        assert!(kept.ends_with(&format!(" postgres://…{MARK}")), "{kept}");
    }

    #[test]
    fn urls_lose_their_user_info_query_and_fragment() {
        for (url, cleaned) in [
            (
                "https://user:hunter2@example.com/x",
                "https://…@example.com/x",
            ),
            ("https://user@example.com#f", "https://…@example.com"),
            ("http://u:p@a@h:8080/x?t=1", "http://…@h:8080/x"),
            ("u:hunter2@example.com/x", "…@example.com/x"),
            ("/reset?token=x#y", "/reset"),
            // An `@` past the authority is no user info.
            (
                "https://example.com/@alice?next=a@b",
                "https://example.com/@alice",
            ),
            // But a password with an unencoded `/`, `?` or `#` is: what precedes the first
            // `/ ? #` reads as `user:password`, not `host:port`.
            (
                "https://app:Ab3/x+Yz9Q==@example.com/x?t=1",
                "https://…@example.com/x",
            ),
            ("https://u:a?b#c@example.com/x#f", "https://…@example.com/x"),
            ("wss://:pw/x@h", "wss://…@h"),
            (
                "https://example.com:8080/a@b?c=d",
                "https://example.com:8080/a@b",
            ),
        ] {
            let mut v = serde_json::Value::from(url);
            assert!(clean_url(&mut v), "{url}");
            assert_eq!(v, cleaned, "{url}");
        }
        for clean in [
            "https://example.com/x",
            "/cart",
            "https://example.com/@alice",
            "https://example.com/users/me@x.org",
            "https://example.com:8080/a@b",
            "http://[::1]/a@b",
            "",
        ] {
            let mut v = serde_json::Value::from(clean);
            assert!(!clean_url(&mut v), "{clean}");
            assert_eq!(v, clean);
        }
    }

    /// Review: a report's headers in shapes other than `request.headers` {name: value} kept
    /// their credentials: HAR's and OpenTelemetry's list of `{name, value}` objects, Go's
    /// `request.header` field, a credential key deeper in any field, and a credential quoted
    /// inside another header's value.
    #[test]
    fn credentials_in_every_header_shape_of_a_report_are_redacted() {
        let report = serde_json::json!({
            "message": "boom",
            "request": {
                "method": "GET", "path": "/a",
                "headers": [
                    {"name": "Authorization", "value": "Bearer LEAK1"},
                    {"Name": "cookie", "Value": ["sid=LEAK2"]},
                    {"name": "X-Thing", "value": "Authorization: Bearer LEAK6"},
                    {"name": "accept", "value": "*/*"},
                ],
                "header": {"Authorization": ["Bearer LEAK3"], "Cookie": ["sid=LEAK4"],
                    "Accept": ["*/*"]},
            },
            "context": {"db": {"password": "LEAK7", "user": "app", "tls": true},
                "upstream": [{"key": "X-Api-Key", "value": "LEAK8"}],
                "session": {"Set-Cookie": {"sid": "LEAK9"}, "client_secret": 12345},
                "token_expired": false, "csrf_token": null},
        });
        let r = PanicRecord::new(None, report);
        let text = serde_json::to_string(&r.report).unwrap();
        assert!(!text.contains("LEAK"), "{text}");
        assert_eq!(
            r.report["request"]["headers"],
            serde_json::json!([
                {"name": "Authorization", "value": "<redacted>"},
                {"Name": "cookie", "Value": "<redacted>"},
                {"name": "X-Thing", "value": "Authorization: [redacted]"},
                {"name": "accept", "value": "*/*"},
            ])
        );
        assert_eq!(
            r.report["request"]["header"],
            serde_json::json!({"Authorization": "<redacted>", "Cookie": "<redacted>",
                "Accept": ["*/*"]})
        );
        assert_eq!(
            r.report["context"],
            serde_json::json!({"db": {"password": "<redacted>", "user": "app", "tls": true},
                "upstream": [{"key": "X-Api-Key", "value": "<redacted>"}],
                "session": {"Set-Cookie": "<redacted>", "client_secret": "<redacted>"},
                "token_expired": false, "csrf_token": null})
        );
        // Read back and redacted again: as it is.
        let mut again = r.clone();
        assert!(!again.redact());
    }

    /// Go's `http.Header` as JSON: a list of values for each name (found by
    /// `a_report_never_keeps_a_credential`).
    #[test]
    fn url_headers_in_lists_are_cleaned() {
        let url = "https://user:Q$@0?token=Q$#Q$";
        let report = serde_json::json!({"request": {"headers": {
            "ReFERER": [url], "x-original-url": [url, "https://h/x"], "accept": ["*/*"]}}});
        let r = PanicRecord::new(None, report);
        assert_eq!(
            r.report["request"]["headers"],
            serde_json::json!({"ReFERER": ["https://…@0"],
                "x-original-url": ["https://…@0", "https://h/x"], "accept": ["*/*"]})
        );
    }

    /// A worker in another language reports the headers it was given: API keys and tokens,
    /// not only the four `unwedge` redacts, are hidden.
    #[test]
    fn api_key_and_token_headers_of_any_worker_are_redacted() {
        let report = serde_json::json!({"request": {"headers": {
            "X-Api-Key": "KEYSECRET1", "HTTP_X_AUTH_TOKEN": ["KEYSECRET2"],
            "x-request-id": "r-1", "accept": "*/*"}}});
        let r = PanicRecord::new(None, report);
        assert_eq!(
            r.report["request"]["headers"],
            serde_json::json!({"X-Api-Key": super::REDACTED, "HTTP_X_AUTH_TOKEN": super::REDACTED,
                "x-request-id": "r-1", "accept": "*/*"})
        );
    }

    /// Django's and Angular's CSRF tokens, session ids, DPoP proofs, and a credential's name
    /// with a control character stuck to it (a crafted report) are hidden too.
    #[test]
    fn session_csrf_and_disguised_credential_headers_are_redacted() {
        let report = serde_json::json!({"request": {"headers": {
            "X-CSRFToken": "S1", "X-XSRF-TOKEN": "S2", "X-Session-Id": "S3", "sessionid": "S4",
            "DPoP": "S5", "Authorization\u{0}": "Bearer S6", " cookie\t": "S7",
            "x-request-id": "r-1"}}});
        let r = PanicRecord::new(None, report);
        let headers = &r.report["request"]["headers"];
        for (name, value) in headers.as_object().unwrap() {
            let hidden = name != "x-request-id";
            assert_eq!(value == super::REDACTED, hidden, "{name}: {value}");
        }
    }

    #[test]
    fn a_url_password_inside_any_header_value_is_cut() {
        let cut = format!("ua {} https://uu:CUTSECRET…", "a".repeat(990));
        let report = serde_json::json!({"request": {"headers": {
            "User-Agent": "ua https://uu:UASECRET@x.y/",
            "X-Forwarded-For": "1.2.3.4, postgres://a:XFFSECRET@db/x",
            "x-forwarded-list": ["1.2.3.4", "5.6.7.8, redis://:LISTSECRET@cache:6379"],
            "Referer": "https://a.example/x https://u:REFSECRET@b/",
            "x-cut": cut,
            "x-plain": "ua https://x.y/@z and http://h:8080/a@b"}}});
        let r = PanicRecord::new(None, report);
        assert_eq!(
            r.report["request"]["headers"],
            serde_json::json!({
                "User-Agent": "ua https://…@x.y/",
                "X-Forwarded-For": "1.2.3.4, postgres://…@db/x",
                "x-forwarded-list": ["1.2.3.4", "5.6.7.8, redis://…@cache:6379"],
                "Referer": "https://a.example/x https://…@b/",
                "x-cut": format!("ua {} https://……", "a".repeat(990)),
                "x-plain": "ua https://x.y/@z and http://h:8080/a@b"})
        );
    }

    #[test]
    fn url_headers_with_any_scheme_in_any_case_are_cleaned() {
        let report = serde_json::json!({"request": {"headers": {
            "x-origin": "HTTPS://u:S3cret@h/x?token=S3cret",
            "x-upstream": ["wss://u:S3cret@h/ws"],
            "x-note": "not a url: S3cret"}}});
        let r = PanicRecord::new(None, report);
        assert_eq!(
            r.report["request"]["headers"],
            serde_json::json!({"x-origin": "HTTPS://…@h/x",
                "x-upstream": ["wss://…@h/ws"], "x-note": "not a url: S3cret"})
        );
    }

    /// Messages with a URL's user info, as cut; those without, as written.
    const MESSAGES: &[(&str, &str)] = &[
        (
            "failed to connect to postgres://app:s3cret@db/x",
            "failed to connect to postgres://…@db/x",
        ),
        (
            "error: redis://:hunter2@cache:6379 refused",
            "error: redis://…@cache:6379 refused",
        ),
        (
            "POSTGRES://App:s3cret@DB/x?sslmode=require",
            "POSTGRES://…@DB/x?sslmode=require",
        ),
        // Several URLs, the last one at the very end of the text.
        (
            r#"tried https://a:s3cret@one/x, then ("wss://b:s3cret@two") and ftp://c:s3cret@three"#,
            r#"tried https://…@one/x, then ("wss://…@two") and ftp://…@three"#,
        ),
        // The last `@` of the authority ends the user info; `:`, `'` and `)` may be in it.
        ("amqp://u:p:a@ss@mq/vh", "amqp://…@mq/vh"),
        (
            "dsn='mysql://root:s'3)c:r@db:3306/app'",
            "dsn='mysql://…@db:3306/app'",
        ),
        // Multibyte text around it, and in it.
        (
            "échec: postgres://é:日本s3cret@hôte/ü — réessayez",
            "échec: postgres://…@hôte/ü — réessayez",
        ),
        ("日本postgres://u:s3cret@db", "日本postgres://…@db"),
        // A password with an unencoded `/`, `?` or `#` (base64, a DSN built with `format!`):
        // what precedes the first `/ ? #` reads as `user:password`, so the user info runs to
        // the URL's last `@` (found by review: it was shown whole).
        (
            "connect postgres://app:Ab3/x+Yz9Q==@db:5432/app",
            "connect postgres://…@db:5432/app",
        ),
        (
            "mysql://u:a?b#c@db/x?y=1 failed",
            "mysql://…@db/x?y=1 failed",
        ),
        ("redis://:pw/with/slash@cache:6379", "redis://…@cache:6379"),
        ("amqp://u:/starts/with/slash@mq/vh", "amqp://…@mq/vh"),
        ("amqp://u:a/b@c@mq/vh", "amqp://…@mq/vh"),
        (
            "(\"postgres://app:é/日本@db/x\", postgres://app:Ab3/x@db2)",
            "(\"postgres://…@db/x\", postgres://…@db2)",
        ),
        // A `://` inside such a password is part of it.
        ("ftp://u:a/b://c:d/e@h/x", "ftp://…@h/x"),
        // No user info: an `@` past the authority (a host, a `host:port`, an IPv6 literal
        // before the first `/`), an e-mail, no scheme, cut already.
        (
            "see https://example.com/users/me@x.org",
            "see https://example.com/users/me@x.org",
        ),
        (
            "https://example.com:8080/a@b and http://[::1]:8080/a@b, http://[::1]/a@b",
            "https://example.com:8080/a@b and http://[::1]:8080/a@b, http://[::1]/a@b",
        ),
        (
            "http://a:b/c, no `@` after it",
            "http://a:b/c, no `@` after it",
        ),
        (
            "GET https://host/@alice?next=a@b#c@d failed",
            "GET https://host/@alice?next=a@b#c@d failed",
        ),
        (
            "see https://host/x, mail bob@example.com",
            "see https://host/x, mail bob@example.com",
        ),
        ("1://u:p@h and ://u:p@h", "1://u:p@h and ://u:p@h"),
        ("cut already: https://…@db/x", "cut already: https://…@db/x"),
    ];

    #[test]
    fn a_url_password_in_a_reports_message_is_cut() {
        for &(message, shown) in MESSAGES {
            let mut r = PanicRecord::new(None, serde_json::json!({ "message": message }));
            assert_eq!(r.report["message"], shown, "{message}");
            assert!(!r.redact(), "a second redaction changes nothing: {message}");
            let mut r = PanicRecord {
                report: serde_json::json!({ "message": message }),
                ..r
            };
            assert_eq!(r.redact(), message != shown, "{message}");
        }
        // Any other field holding text has its URLs' user info cut too (as a stderr line's);
        // a message that is not text is left as it is.
        let r = PanicRecord::new(
            None,
            serde_json::json!({"location": "a://u:p@h", "message": 7}),
        );
        assert_eq!(
            r.report,
            serde_json::json!({"location": "a://…@h", "message": 7})
        );
    }

    use super::scrub_credentials;

    fn scrubbed(line: &str) -> String {
        scrub_credentials(line).unwrap_or_else(|| line.to_owned())
    }

    /// Found by review: each `://` scanned the rest of the text, and `a://a://…` (a worker's
    /// 200 KiB report message) took seconds of the observer's time.
    #[test]
    fn many_schemes_in_one_text_are_scanned_once() {
        let text = "a://".repeat(50_000) + "u:s3cret@h";
        let started = std::time::Instant::now();
        // Redacted as a report read back from a file is (one received is cut to 8 KiB too).
        let mut r = PanicRecord::new(None, serde_json::json!({}));
        r.report = serde_json::json!({ "message": text });
        assert!(r.redact());
        let message = r.report["message"].as_str().unwrap().to_owned();
        assert!(message.ends_with("a://…@h") && !message.contains("s3cret"));
        assert!(!r.redact());
        // Each authority reads as `user:password` and the `@` that would end it is looked for
        // once for the whole run, not once for each `://`.
        let text = "a://b:c/".repeat(50_000) + " mail x@y";
        r.report = serde_json::json!({ "message": text });
        assert!(!r.redact());
        assert_eq!(r.report["message"], text);
        assert!(!r.redact());
        // Linear: milliseconds; the quadratic scan took minutes in a debug build.
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }

    /// Found by review: a message its worker cut (an older unwedge cuts before it hides) or a
    /// stderr line an older supervisor cut may end inside a URL's user info, with no `@` left
    /// to tell where the password ends.
    #[test]
    fn a_url_cut_inside_its_user_info_keeps_none_of_it() {
        for (report, shown) in [
            (
                serde_json::json!({"message": "no DB at postgres://app:S3CRET…<truncated>"}),
                "no DB at postgres://……<truncated>",
            ),
            (
                serde_json::json!({"message": "no DB at postgres://app:S3CRET…"}),
                "no DB at postgres://……",
            ),
            // An `@` inside the password, the cut after it.
            (
                serde_json::json!({"message": "at amqp://u:S3C@RET", "truncated": ["message"]}),
                "at amqp://…",
            ),
            // Not cut: the whole authority is there, its user info hidden as usual.
            (
                serde_json::json!({"message": "at amqp://u:S3C@RET"}),
                "at amqp://…@RET",
            ),
            // Cut after the authority ended: left as it is.
            (
                serde_json::json!({"message": "GET https://db/x/y…<truncated>"}),
                "GET https://db/x/y…<truncated>",
            ),
            (
                serde_json::json!({"message": "GET https://db:8080/x/y…<truncated>"}),
                "GET https://db:8080/x/y…<truncated>",
            ),
            // Cut inside a password with a `/` (or after an `@` inside it): the authority
            // reads as `user:password`.
            (
                serde_json::json!({"message": "no DB at postgres://app:Ab3/x+Y…<truncated>"}),
                "no DB at postgres://……<truncated>",
            ),
            (
                serde_json::json!({"message": "at amqp://u:a/b@c", "truncated": ["message"]}),
                "at amqp://…",
            ),
        ] {
            let r = PanicRecord::new(None, report.clone());
            assert_eq!(r.report["message"], shown, "{report}");
        }
        let before = "x".repeat(CUT_LINE_MIN - 30);
        let mut exit = ExitRecord::new(
            None,
            None,
            ExitStatus {
                code: Some(1),
                signal: None,
            },
        );
        exit.last_stderr_lines = vec![
            format!("{before} connect postgres://app:S3CRET"),
            format!("{before} connect postgres://app:Ab3/x+Y"),
            "short: postgres://app:S3CRET".into(),
        ];
        assert!(exit.redact());
        assert_eq!(
            exit.last_stderr_lines,
            [
                format!("{before} connect postgres://…"),
                format!("{before} connect postgres://…"),
                // A short line was not cut: no `@`, so no user info.
                "short: postgres://app:S3CRET".into(),
            ]
        );
    }

    #[test]
    fn credentials_in_any_string_of_a_report_are_scrubbed() {
        let report = serde_json::json!({
            "message": r#"unexpected request Request { headers: {"authorization": "Bearer S1", "cookie": "sid=S2", "host": "h"} }"#,
            "backtrace": "0: f\n  Authorization: Bearer S3\n1: main",
            "location": "src/a.rs:1:2 cookie=S4",
            "thread": "t Proxy-Authorization: Basic S5",
            "decision": {"action": "crash", "reason": "Set-Cookie: id=S6"},
            "extra": [{"deep": ["Authorization: Bearer S7"]}],
            "request": {"path": "/x", "headers": {"User-Agent": "curl/8"}},
        });
        let r = PanicRecord::new(None, report);
        assert_eq!(
            r.report["message"],
            r#"unexpected request Request { headers: {"authorization": "[redacted]", "cookie": "[redacted]", "host": "h"} }"#
        );
        assert_eq!(r.report["backtrace"], "0: f\n  Authorization: [redacted]");
        assert_eq!(r.report["location"], "src/a.rs:1:2 cookie=[redacted]");
        assert_eq!(r.report["thread"], "t Proxy-Authorization: [redacted]");
        assert_eq!(r.report["decision"]["reason"], "Set-Cookie: [redacted]");
        assert_eq!(r.report["decision"]["action"], "crash");
        assert_eq!(r.report["extra"][0]["deep"][0], "Authorization: [redacted]");
        assert_eq!(r.report["request"]["headers"]["User-Agent"], "curl/8");
        let stored = serde_json::to_string(&r).unwrap();
        for secret in ["S1", "S2", "S3", "S4", "S5", "S6", "S7"] {
            assert!(!stored.contains(secret), "{secret}: {stored}");
        }
        // A report with none is left as it is.
        let report = serde_json::json!({"message": "no cookie, sorry", "thread": "main"});
        let mut r = PanicRecord::new(None, report.clone());
        assert_eq!(r.report, report);
        assert!(!r.redact());
    }

    #[test]
    fn a_url_password_in_a_stderr_line_is_cut() {
        for &(line, shown) in MESSAGES {
            assert_eq!(scrubbed(line), shown, "{line}");
            assert_eq!(scrub_credentials(line).is_some(), line != shown, "{line}");
        }
        // With a credential header in the same line.
        assert_eq!(
            scrubbed(r#"{"msg":"GET postgres://u:s3cret@db failed","authorization":"Basic x"}"#),
            r#"{"msg":"GET postgres://…@db failed","authorization":"[redacted]"}"#
        );
    }

    #[test]
    fn credentials_in_json_ish_lines_are_scrubbed() {
        for (line, want) in [
            (
                r#"{"authorization": "Bearer sk_live_abc", "path": "/pay"}"#,
                r#"{"authorization": "[redacted]", "path": "/pay"}"#,
            ),
            (
                r#"{"headers":{"Cookie":"a=1; b=2","Set-Cookie":"id=3"}}"#,
                r#"{"headers":{"Cookie":"[redacted]","Set-Cookie":"[redacted]"}}"#,
            ),
            // A quote escaped inside the value does not end it.
            (
                r#"{"proxy-authorization": "Basic a\"b", "x": 1}"#,
                r#"{"proxy-authorization": "[redacted]", "x": 1}"#,
            ),
            // Python's repr of a dict.
            (
                "{'Authorization': 'Bearer x', 'Host': 'h'}",
                "{'Authorization': '[redacted]', 'Host': 'h'}",
            ),
            // JSON inside a JSON string (a log line's message).
            (
                r#"{"msg":"headers {\"authorization\":\"Bearer x\"}"}"#,
                r#"{"msg":"headers {\"authorization\":\"[redacted]\"}"}"#,
            ),
        ] {
            assert_eq!(scrubbed(line), want, "{line}");
        }
    }

    #[test]
    fn credentials_in_header_lines_and_key_value_logs_are_scrubbed() {
        for (line, want) in [
            // Review: a header as an object (the key `value` was hidden, not the cookie), a
            // Rust `Debug` of one, tab- and blank-separated dumps.
            (
                r#"{"name":"Cookie","value":"sid=S12"}"#,
                r#"{"name":"Cookie","value":"[redacted]"}"#,
            ),
            (
                r#"[{"name": "Authorization", "value": "Bearer S1"}, {"name": "host", "value": "h"}]"#,
                r#"[{"name": "Authorization", "value": "[redacted]"}, {"name": "host", "value": "h"}]"#,
            ),
            (
                r#"{"msg":"h {\"name\":\"cookie\",\"value\":\"sid=S\"}"}"#,
                r#"{"msg":"h {\"name\":\"cookie\",\"value\":\"[redacted]\"}"}"#,
            ),
            (
                r#"Header { name: "authorization", value: "Bearer S11" }"#,
                r#"Header { name: "authorization", value: "[redacted]" }"#,
            ),
            ("authorization\tBearer S15", "authorization\t[redacted]"),
            ("cookie\tsid=S", "cookie\t[redacted]"),
            (
                "request: Authorization Bearer S08",
                "request: Authorization [redacted]",
            ),
            (
                "proxy-authorization basic dXNlcjpw",
                "proxy-authorization [redacted]",
            ),
            // Prose stays.
            (
                "missing authorization header",
                "missing authorization header",
            ),
            ("the cookie jar is empty", "the cookie jar is empty"),
            (
                "Authorization: Bearer sk_live_abc",
                "Authorization: [redacted]",
            ),
            ("cookie: session=abc; theme=dark", "cookie: [redacted]"),
            ("  SET-COOKIE:id=3, Path=/", "  SET-COOKIE:[redacted]"),
            (
                "request failed cookie=session-abc user=bob",
                "request failed cookie=[redacted]",
            ),
            (
                "level=error authorization=\"Bearer x\" took=3ms",
                "level=error authorization=\"[redacted]\" took=3ms",
            ),
            (
                "msg=\"got Authorization: Bearer x\" level=warn",
                "msg=\"got Authorization: [redacted]\" level=warn",
            ),
            ("map[Cookie:[a=1] Accept:[*/*]]", "map[Cookie:[[redacted]"),
            // Go's http.Header as JSON: a list of values.
            (
                r#"{"Authorization":["Bearer sk_live_x"],"Accept":["*/*"]}"#,
                r#"{"Authorization":["[redacted]"],"Accept":["*/*"]}"#,
            ),
            // Every value of a list: Go's `Set-Cookie` often has several (found by
            // `a_planted_credential_never_survives_the_scrubber`).
            (
                r#"{"authorization":["=", "Bearer Q~", "a"],"Accept":["*/*"]}"#,
                r#"{"authorization":["[redacted]"],"Accept":["*/*"]}"#,
            ),
            (
                "{'Set-Cookie': ['a=1; Path=/', 'id=s3cret']}",
                "{'Set-Cookie': ['[redacted]']}",
            ),
            // Quoted parameters inside a value (found by
            // `a_planted_credential_never_survives_the_scrubber`).
            (
                r#"authorization: Digest username="bob", realm="a=b", response="QA""#,
                "authorization: [redacted]",
            ),
            (
                r#"Cookie: theme="dark"; session=s3cret"#,
                "Cookie: [redacted]",
            ),
            (
                r#"{"msg":"Cookie: theme=\"dark\"; session=s3cret","level":"warn"}"#,
                r#"{"msg":"Cookie: [redacted]","level":"warn"}"#,
            ),
            (
                r#"{"msg":"headers {\"authorization\":\"Digest username=\\\"bob\\\", response=\\\"QA\\\"\"}"}"#,
                r#"{"msg":"headers {\"authorization\":\"[redacted]\"}"}"#,
            ),
            // Python (and ASGI's bytes) header pairs.
            (
                "[('authorization', 'Bearer x'), ('host', 'h')]",
                "[('authorization', '[redacted]'), ('host', 'h')]",
            ),
            (
                "[(b'authorization', b'Bearer x'), (b'host', b'h')]",
                "[(b'authorization', b'[redacted]'), (b'host', b'h')]",
            ),
            // Ruby (a Rack env, `inspect`), PHP (`print_r`) and CGI names, and a scheme's
            // quoted credentials: each leaked (all or part of) its value.
            (
                r#"{"HTTP_AUTHORIZATION"=>"Bearer E8", "PATH_INFO"=>"/"}"#,
                r#"{"HTTP_AUTHORIZATION"=>"[redacted]", "PATH_INFO"=>"/"}"#,
            ),
            (
                r#"{authorization => "E11", host => "h"}"#,
                r#"{authorization => "[redacted]", host => "h"}"#,
            ),
            (
                r#"Authorization: Basic "E20" E20b"#,
                "Authorization: [redacted]",
            ),
            (
                r#"{"msg":"Authorization: Basic \"E20\" E20b","level":"warn"}"#,
                r#"{"msg":"Authorization: [redacted]","level":"warn"}"#,
            ),
            ("    [HTTP_COOKIE] => E9", "    [HTTP_COOKIE] => [redacted]"),
            (
                "[HTTP_AUTHORIZATION]=>Bearer E10",
                "[HTTP_AUTHORIZATION]=>[redacted]",
            ),
            ("HTTP_COOKIE=sid=E12 HTTP_HOST=h", "HTTP_COOKIE=[redacted]"),
            // A name in prose, not a pair: left alone.
            ("no cookie, sorry", "no cookie, sorry"),
        ] {
            assert_eq!(scrubbed(line), want, "{line}");
        }
    }

    #[test]
    fn lines_without_credentials_are_left_as_written() {
        for line in [
            "thread 'main' panicked at src/main.rs:4:5: boom",
            "connection reset by peer (authorization server unreachable)",
            "cookies=3 xcookie=1 cookie_jar: full",
            "Authorization:",
            "naïve café: ünïcode, cookie",
            "",
        ] {
            assert_eq!(scrub_credentials(line), None, "{line}");
        }
    }

    use proptest::prelude::*;

    /// Text around a credential: multibyte characters (at every byte offset, since lengths
    /// vary), the separators the scrubber reads, quotes, `\r`, NUL; never `Q`, which marks a
    /// secret.
    fn noise(max: usize) -> impl Strategy<Value = String> {
        const PIECES: &[&str] = &[
            "a", "k", "z", "0", "9", " ", " ", "é", "日本", "🦀", "=", ":", "@", "\"", "'", "{",
            "}", "(", ")", "[", "]", ",", ";", "\\", "\r", "\0", "\t", "b'", "\\\"",
        ];
        proptest::collection::vec(prop::sample::select(PIECES), 0..max).prop_map(|p| p.concat())
    }

    /// A secret as it may be written: `Q` and then token characters, some multibyte.
    fn secret() -> impl Strategy<Value = String> {
        const PIECES: &[&str] = &[
            "A", "z", "0", "_", ".", "~", "+", "/", "=", "-", "é", "日", "🦀",
        ];
        proptest::collection::vec(prop::sample::select(PIECES), 1..24)
            .prop_map(|p| format!("Q{}", p.concat()))
    }

    /// One of the names, in any letter case.
    fn credential_name() -> impl Strategy<Value = String> {
        (
            prop::sample::select(unwedge_redact::CREDENTIAL_NAMES.to_vec()),
            any::<u64>(),
        )
            .prop_map(|(name, case)| {
                name.chars()
                    .enumerate()
                    .map(|(i, c)| match case >> (i % 64) & 1 {
                        1 => c.to_ascii_uppercase(),
                        _ => c,
                    })
                    .collect()
            })
    }

    /// `secret` as the value of `name` in each shape a worker's stderr writes it.
    ///
    /// `scheme` is how the value begins: `Bearer S`, or with quoted parameters before the
    /// secret, as Digest authorization and quoted cookie values have them (quotes escaped as
    /// the shape escapes them).
    fn planted(name: &str, secret: &str, shape: usize, scheme: usize, others: &[String]) -> String {
        let value = match scheme {
            0 => format!("Bearer {secret}"),
            1 => format!(r#"Digest username="bob", realm="a=b", response="{secret}""#),
            _ => format!(r#"theme="dark"; session={secret}"#),
        };
        let json = value.replace('"', r#"\""#);
        let list = |q: &str, value: &str| {
            let mut values: Vec<String> = others.iter().map(|o| format!("{q}{o}{q}")).collect();
            values.insert(others.len() / 2, format!("{q}{value}{q}"));
            values.join(", ")
        };
        match shape {
            0 => format!(r#"{{"level":"error","{name}":"{json}","path":"/x"}}"#),
            1 => format!(r#"{{"{name}" : "{json}"}}"#),
            2 => format!("{name}: {value}"),
            3 => format!("request failed {name}={value} user=bob"),
            4 => format!("level=error {name}=\"{json}\" took=3ms"),
            5 => format!(r#"{{"{name}":[{}],"Accept":["*/*"]}}"#, list("\"", &json)),
            6 => format!("map[{name}:[{value}] Accept:[*/*]]"),
            7 => format!("[(b'{name}', b'{value}'), (b'host', b'h')]"),
            8 => format!("[('{name}', '{value}'), ('host', 'h')]"),
            9 => format!("{{'{name}': '{value}', 'Host': 'h'}}"),
            // JSON in a JSON string: its quotes escaped once more.
            10 => format!(
                r#"{{"msg":"headers {{\"{name}\":\"{}\"}}"}}"#,
                value.replace('"', r#"\\\""#)
            ),
            11 => format!("{{'{name}': [{}]}}", list("'", &value)),
            // Ruby: a Rack env (CGI names), `inspect` of a hash with symbol keys.
            12 => format!(r#"{{"HTTP_{name}"=>"{json}", "PATH_INFO"=>"/"}}"#),
            13 => format!(r#"{{{name} => "{json}", host => "h"}}"#),
            // PHP's `print_r`.
            14 => format!("Array\n(\n    [HTTP_{name}] => {value}\n)"),
            // A scheme's credentials quoted, and more after them.
            _ => format!(r#"{name}: Basic "{secret}" {secret}"#),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// A credential in any supported shape, any case, anywhere in a line, never reaches a
        /// report, `/status` or an alert.
        #[test]
        fn a_planted_credential_never_survives_the_scrubber(
            name in credential_name(),
            secret in secret(),
            shape in 0..16usize,
            scheme in 0..3usize,
            others in proptest::collection::vec("[a-z0-9=;]{1,8}", 0..3),
            before in noise(12),
            sep in prop::sample::select(vec!["", " ", "\t", ",", "{", "(", "\""]),
            after in noise(12),
        ) {
            // A name right after a letter or digit is inside a word (`xcookie`): not a name.
            let before = if before.ends_with(|c: char| c.is_ascii_alphanumeric()) && sep.is_empty() {
                format!("{before} ")
            } else {
                format!("{before}{sep}")
            };
            let line = format!("{before}{}{after}", planted(&name, &secret, shape, scheme, &others));
            let out = scrubbed(&line);
            prop_assert!(!out.contains(&secret), "{line:?} gave {out:?}");
        }

        /// A URL's password (`:`, `@`, `'`, `)`, `%`, multibyte characters in it) anywhere in
        /// a line, in any scheme of any case, JSON-escaped or not, whatever text surrounds it,
        /// never reaches a report, `/status` or an alert.
        #[test]
        fn a_planted_url_password_never_survives_the_scrubber(
            before in noise(12),
            sep in prop::sample::select(vec![" ", "\t", "(", "\"", "'", "<", "=", "é", "\\\""]),
            scheme in "[A-PR-Za-z][A-PR-Za-z0-9+.-]{0,8}",
            user in "[a-z0-9é]{0,6}",
            secret in "Q[A-Za-z0-9._~!$&'()*+,;=%:@/?#é日-]{1,16}",
            host in "[a-z0-9.-]{1,12}(:[0-9]{1,5})?",
            tail in "(/[a-z0-9._@é日-]{0,8}){0,2}(\\?[a-z=@&]{0,8})?",
            after in noise(12),
            escaped in any::<bool>(),
        ) {
            // Or JSON-escaped, as Go's and PHP's encoders write URLs: `postgres:\/\/u:pw@db\/app`.
            let esc = |s: &str| if escaped { s.replace('/', "\\/") } else { s.to_owned() };
            let secret = esc(&secret);
            let line = format!("{before}{sep}{scheme}:{}{user}:{secret}@{host}{}{after}", esc("//"), esc(&tail));
            let out = scrubbed(&line);
            prop_assert!(!out.contains(&secret), "{line:?} gave {out:?}");
        }

        /// Any text: no panic, and a line that names no credential is left as written.
        #[test]
        fn the_scrubber_takes_any_line(line in noise(200), name in credential_name(), at in any::<prop::sample::Index>()) {
            prop_assert_eq!(scrub_credentials(&line), None);
            let mut cut = at.index(line.len() + 1);
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            let with_name = format!("{}{name}{}", &line[..cut], &line[cut..]);
            let _ = scrub_credentials(&with_name);
        }
    }

    /// A URL holding `secret` as its password, in its query and in its fragment; `host` and
    /// `path` may hold multibyte characters and `@` (in the path, which stays).
    fn secret_url(scheme: &str, host: &str, path: &str, secret: &str) -> String {
        format!("{scheme}user:{secret}@{host}{path}?token={secret}#{secret}")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// A report's credentials (credential headers in any case, user info, query and
        /// fragment of its path, route and URL headers, the user info of a URL in its
        /// message), in every form a worker may send its headers (an object of strings, Go's
        /// object of lists, a list of pairs), never reach what is stored or shown.
        #[test]
        fn a_report_never_keeps_a_credential(
            secret in "Q[A-Za-z0-9._~!$&'()*+,;=%/?#-]{1,16}",
            scheme in prop::sample::select(vec!["https://", "http://", "HTTPS://", ""]),
            host in "[a-z0-9.-]{1,12}(:[0-9]{1,5})?",
            path in "(/[a-z0-9._@é日-]{0,8}){0,3}",
            name in credential_name(),
            referer in "[Rr][Ee][Ff][Ee][Rr][Ee][Rr]",
            form in 0..3usize,
        ) {
            let url = secret_url(scheme, &host, &path, &secret);
            let http_url = secret_url("https://", &host, &path, &secret);
            let headers = [
                (name.as_str(), format!("Bearer {secret}")),
                (referer.as_str(), url.clone()),
                ("x-original-url", http_url),
            ];
            let headers = match form {
                0 => serde_json::Value::Object(
                    headers.iter().map(|(n, v)| (n.to_string(), v.as_str().into())).collect(),
                ),
                1 => serde_json::Value::Object(
                    headers.iter().map(|(n, v)| (n.to_string(), serde_json::json!([v]))).collect(),
                ),
                _ => headers.iter().map(|(n, v)| serde_json::json!([n, v])).collect(),
            };
            // In free text: its user info cut, its query left as written (the message here
            // has none).
            let scheme = if scheme.is_empty() { "postgres://" } else { scheme };
            let message = format!("é failed: {scheme}user:{secret}@{host}{path} — retry");
            let report = serde_json::json!({"message": message, "request": {
                "method": "GET", "path": url, "route": url, "headers": headers}});
            let record = Record::Panic(PanicRecord::new(Some("w1"), report));
            let stored = serde_json::to_string(&record).unwrap();
            prop_assert!(!stored.contains(&secret), "{stored}");
            let mut view = StatusView::new(SupervisorInfo::new("0.1.0", 1));
            view.reports.push(record);
            prop_assert!(!crate::render_page(&view).contains(&secret));
        }
    }
}
