//! Configuration: every option of `unwedge run`, as command-line flags and as a TOML file.
//!
//! [`Options`] is both the clap argument group and the file format (every field optional);
//! [`Config::resolve`] layers flags over the file over the defaults and validates the result.
//!
//! ```
//! use unwedge_supervisor::config::{Config, Options, Workers};
//!
//! let file: Options = toml::from_str(r#"
//!     workers = 2
//!     restart-delay = "20ms"
//!     command = ["my-server", "--flag"]
//! "#).unwrap();
//! let flags = Options { workers: Some(Workers::Count(3)), ..Options::default() };
//! let config = Config::resolve(Some(file), flags, Vec::new()).unwrap();
//! assert_eq!(config.workers, 3);
//! assert_eq!(config.restart_delay, std::time::Duration::from_millis(20));
//! assert_eq!(config.command, ["my-server", "--flag"]);
//! ```

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, FilePosition};
use crate::run_as::RunAs;

/// How the supervisor decides that a worker is ready to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ReadyMode {
    /// `READY=1` over `NOTIFY_SOCKET`; in `--port-env` mode also the worker's port accepting a
    /// connection. A worker that said neither within `--ready-timeout`: with `--port-env`, a
    /// failed start; with shared sockets, if still running, taken as ready (with a warning) only
    /// while no worker has ever said `READY=1` (a failed start once one has), and a reload's
    /// worker only if the passed socket is in an epoll set of its processes.
    #[default]
    Auto,
    /// Only `READY=1` counts; no `READY=1` within `--ready-timeout` is a failed start.
    Notify,
    /// The first successful `--probe` (or `GET /`) answer.
    Probe,
    /// The worker's own port accepts a TCP connection (`--port-env` mode only).
    Port,
    /// The worker (or a process it forked) waits for connections on a passed socket in an
    /// event loop: the socket is in one of its `epoll` sets, as nginx, Go, Node, asyncio and
    /// tokio servers have it (shared sockets only: without `--listen` or sockets from systemd
    /// it is a usage error). For servers without sd_notify.
    Accept,
    /// Ready as soon as it is started.
    None,
}

/// How many workers to run: `--workers 4`, `--workers auto`; in the file `workers = 4` or
/// `workers = "auto"`.
///
/// ```
/// use unwedge_supervisor::config::Workers;
///
/// assert_eq!("4".parse::<Workers>(), Ok(Workers::Count(4)));
/// assert_eq!("auto".parse::<Workers>(), Ok(Workers::Auto));
/// assert!("0".parse::<Workers>().is_err());
/// assert!(Workers::Auto.count() >= 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// This many (at least 1).
    Count(u32),
    /// One per CPU this process may run on: [`std::thread::available_parallelism`], which
    /// honours the CPU affinity mask and a cgroup CPU quota (a Kubernetes CPU limit of `2`
    /// gives 2), at most [`MAX_WORKERS`].
    Auto,
}

impl Workers {
    /// The number of workers this stands for, resolved now (`Auto` asks the kernel each time:
    /// a reload picks up a changed CPU quota).
    pub fn count(self) -> u32 {
        match self {
            Workers::Count(n) => n,
            Workers::Auto => std::thread::available_parallelism()
                .map_or(1, |n| u32::try_from(n.get()).unwrap_or(MAX_WORKERS))
                .min(MAX_WORKERS),
        }
    }
}

impl FromStr for Workers {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(Workers::Auto);
        }
        match s.parse::<u32>() {
            Ok(0) => Err("--workers must be at least 1".into()),
            Ok(n) => Ok(Workers::Count(n)),
            Err(_) => Err(format!(
                "--workers `{s}` is not a number of workers or `auto`"
            )),
        }
    }
}

impl fmt::Display for Workers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workers::Count(n) => write!(f, "{n}"),
            Workers::Auto => f.write_str("auto"),
        }
    }
}

impl Serialize for Workers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Workers::Count(n) => s.serialize_u32(*n),
            Workers::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Workers;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of workers or \"auto\"")
            }

            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Workers, E> {
                if n < 1 {
                    // In the file: its position names the key.
                    return Err(E::custom("must be at least 1"));
                }
                // Above `MAX_WORKERS` is refused by `Config::resolve`, with the number.
                Ok(Workers::Count(u32::try_from(n).unwrap_or(u32::MAX)))
            }

            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Workers, E> {
                self.visit_i64(i64::try_from(n).unwrap_or(i64::MAX))
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Workers, E> {
                s.parse()
                    .map_err(|e: String| E::custom(in_file_words("workers", &e)))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// How a reload replaces the workers: `--reload-mode rolling`, `reload-mode = "rolling"`.
///
/// ```
/// use unwedge_supervisor::config::{Config, Options, ReloadMode};
///
/// let file: Options = toml::from_str("reload-mode = \"rolling\"\ncommand = [\"srv\"]").unwrap();
/// let config = Config::resolve(Some(file), Options::default(), Vec::new()).unwrap();
/// assert_eq!(config.reload_mode, ReloadMode::Rolling);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ReloadMode {
    /// The whole new generation starts next to the old one; the old one is stopped once every
    /// new worker is ready. The fastest, and an all-or-nothing switch; needs room for both
    /// generations at once.
    #[default]
    All,
    /// One slot at a time: a new worker starts, and once it is ready the old one of its slot
    /// is stopped and, once that one has exited, the next slot's new worker starts. At most one
    /// worker more than usual runs for the reload, draining ones included: each new worker
    /// waits until the old ones the reload stopped, and those a reload just before left
    /// draining, have exited (not for a worker stopping meanwhile on its own, a crash or a
    /// hang, which is replaced as any time). For workers
    /// too big to run twice; generations are mixed while it lasts, and a failure puts the old
    /// generation back in the slots already switched.
    Rolling,
}

/// Format of the supervisor's log and of the worker output it passes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `[w1 pid 123] line` for worker output, human-readable supervisor lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Every option of `unwedge run`, each optional: used for the flags and for the config file.
///
/// Field names are the long flag names; in the file they are written in kebab-case
/// (`restart-delay = "10ms"`). Unknown keys in the file are an error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Options {
    /// Listening socket, bound once and passed to every worker (repeatable):
    /// `host:port`, `:port` (all interfaces) or `unix:/path`.
    #[arg(long, value_name = "ADDR", help_heading = "Sockets")]
    #[serde(
        default,
        deserialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub listen: Vec<String>,

    /// Give each worker its own free port in this environment variable instead of passing
    /// sockets (for servers that bind their own port; restarts are then not loss-free). The
    /// ports are in `unwedge status` and `/status`; a crashed worker's restart keeps its port
    /// when it is still free. Not a variable the supervisor sets for workers (`NOTIFY_SOCKET`,
    /// `LISTEN_FDS`, `PATH`, …).
    #[arg(long, value_name = "NAME", help_heading = "Sockets")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_env: Option<String>,

    /// Permissions of the `unix:` sockets the supervisor binds, in octal: who may connect
    /// (connecting needs write permission). As systemd's `SocketMode=` [default: 0666, access
    /// left to the directory].
    #[arg(long, value_name = "MODE", help_heading = "Sockets")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_mode: Option<String>,

    /// Group of the `unix:` sockets the supervisor binds (a name or a gid), e.g. the web
    /// server's with `--socket-mode 0660`. As systemd's `SocketGroup=` [default: the
    /// supervisor's].
    #[arg(long, value_name = "GROUP", help_heading = "Sockets")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_group: Option<String>,

    /// Number of worker processes, at most 1024, or `auto`: one per CPU this process may use
    /// (its CPU affinity and cgroup CPU quota, e.g. a Kubernetes CPU limit) [default: 1].
    #[arg(long, short = 'w', value_name = "N|auto", help_heading = "Workers")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<Workers>,

    /// Delay before the first restart of a worker; doubles on each crash [default: 10ms].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Restart policy")]
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub restart_delay: Option<Duration>,

    /// Upper bound of the restart delay [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Restart policy")]
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub restart_delay_max: Option<Duration>,

    /// Uptime after which a worker's restart delay is reset [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Restart policy")]
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub stable_after: Option<Duration>,

    /// Restart intensity: more than this many restarts within `--within`, or a worker that
    /// failed to start (exited or was killed before it was ready) more than this many times
    /// in a row in one slot, however long that took, and the supervisor stops every worker and
    /// exits with status 3 [default: 20, or twice --workers when that is more: one event that
    /// ends every worker once, such as a request that crashes each, must not end the service].
    #[arg(long, value_name = "R", help_heading = "Restart policy")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_restarts: Option<u32>,

    /// Window of the restart intensity [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Restart policy")]
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub within: Option<Duration>,

    /// Heartbeat deadline: a worker that sent `WATCHDOG=1` once and then stays silent this
    /// long is hung. Passed to workers as `WATCHDOG_USEC`. At least 1ms (a shorter one is a
    /// usage error); `0` turns it off, as systemd's `WatchdogSec=0`; a worker may set its own
    /// with `WATCHDOG_USEC=` [default: off].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Hang detection")]
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub watchdog: Option<Duration>,

    /// HTTP path to GET periodically through the worker's port (`--port-env`) or the
    /// shared socket (percent-encoded, as in a request line: `/caf%C3%A9`);
    /// `--probe-failures` failures in a row mean hung.
    #[arg(long, value_name = "PATH", help_heading = "Hang detection")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe: Option<String>,

    /// Time a probe may take [default: 1s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Hang detection")]
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub probe_timeout: Option<Duration>,

    /// Time between probes of one worker, at least 10ms [default: 1s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Hang detection")]
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub probe_interval: Option<Duration>,

    /// Failed probes in a row that make a worker hung, at least 1 [default: 3].
    #[arg(long, value_name = "N", help_heading = "Hang detection")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_failures: Option<u32>,

    /// Signal sent to a hung worker first, so it can dump its state (SIGQUIT makes Go print
    /// every goroutine; SIGABRT gives a core) [default: SIGQUIT].
    #[arg(long, value_name = "SIGNAL", help_heading = "Hang detection")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dump_signal: Option<String>,

    /// Time between the dump signal and SIGKILL; also the time a worker that said it is
    /// tainted, and not that it is stopping, has before SIGTERM [default: 1s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Hang detection")]
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub dump_grace: Option<Duration>,

    /// How readiness is decided [default: auto].
    #[arg(long, value_enum, value_name = "MODE", help_heading = "Workers")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready: Option<ReadyMode>,

    /// How a reload replaces the workers [default: all].
    #[arg(long, value_enum, value_name = "MODE", help_heading = "Workers")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reload_mode: Option<ReloadMode>,

    /// Time a new worker has to become ready; a worker may ask for more with
    /// `EXTEND_TIMEOUT_USEC=` [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Workers")]
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub ready_timeout: Option<Duration>,

    /// Signal that asks a worker to stop gracefully (finish its requests and exit), sent to
    /// its process group: SIGTERM suits most servers; SIGQUIT for nginx, php-fpm and unicorn
    /// (their SIGTERM is a fast stop that drops the requests in flight), SIGWINCH for Apache
    /// httpd (graceful-stop). As systemd's `KillSignal=` [default: SIGTERM].
    #[arg(long, value_name = "SIGNAL", help_heading = "Workers")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,

    /// Time workers have to exit after the stop signal before SIGKILL; also the time a worker
    /// that said STOPPING=1 on its own has to finish before the stop signal; a worker may ask
    /// for more with `EXTEND_TIMEOUT_USEC=`; more than 0 [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Workers")]
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub stop_timeout: Option<Duration>,

    /// Run the workers as this user (a name or a uid), with its groups, `HOME`, `USER` and
    /// `SHELL`; the supervisor itself stays root (it needs to be root for it). As systemd's
    /// `User=` [default: the supervisor's user].
    #[arg(long, value_name = "USER", help_heading = "Workers")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,

    /// Run the workers with this group (a name or a gid) instead of the user's primary group.
    /// As systemd's `Group=`.
    #[arg(long, value_name = "GROUP", help_heading = "Workers")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,

    /// Memory limit of a worker: a worker whose resident memory (its process's RSS; with child
    /// processes, the PSS of its process tree) grows above SIZE (`512M`, `2G`) is replaced
    /// gracefully: its replacement starts, and once it is
    /// ready the old worker gets SIGTERM and drains, before the kernel's OOM killer cuts its
    /// requests. `auto`: 90 % of this process's cgroup memory limit (a container's, a unit's
    /// `MemoryMax=`) shared by the workers and one more for a replacement [default: none].
    #[arg(long, value_name = "SIZE|auto", help_heading = "Workers")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<MemoryLimit>,

    /// Replace each worker gracefully once it has run this long (`1h`, `30m`; at least 1s;
    /// `0` for never), as gunicorn's `--max-requests`, uWSGI's `max-worker-lifetime` or
    /// php-fpm's `pm.max_requests`: a slow leak or fragmentation never builds up. Its
    /// replacement starts first; the worker stops once the replacement is ready. Each worker's
    /// lifetime is up to 10 % shorter, at random, so that workers started together are not
    /// replaced together [default: never].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Workers")]
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_lifetime: Option<Duration>,

    /// Log format [default: text].
    #[arg(long, value_enum, value_name = "FORMAT", help_heading = "Output")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,

    /// Write the supervisor's pid to this file (for `unwedge reload --pidfile`).
    #[arg(long, value_name = "FILE", help_heading = "Output")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pidfile: Option<PathBuf>,

    /// Admin endpoint (`/metrics`, `/status`, `/livez`, `/readyz` and the status page):
    /// `HOST:PORT`, a port alone (bound on 127.0.0.1), or `off` [default: 127.0.0.1:9090;
    /// if that default port is taken, a warning and no admin endpoint].
    #[arg(long, value_name = "ADDR|off", help_heading = "Observability")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,

    /// Directory where every panic report and abnormal worker exit is appended (fsynced JSON
    /// lines; `unwedge reports` lists them), or `off` [default: `$STATE_DIRECTORY/reports`
    /// when systemd sets `StateDirectory=`, else off].
    #[arg(long, value_name = "DIR|off", help_heading = "Observability")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_dir: Option<PathBuf>,

    /// Rotate the report file when it would grow past this size (`4096`, `512K`, `10M`)
    /// [default: 10M].
    #[arg(long, value_name = "SIZE", help_heading = "Observability")]
    #[serde(
        default,
        deserialize_with = "size_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub report_max_bytes: Option<String>,

    /// POST every alert (worker crashed, hung or tainted, gave up, reload failed) as JSON
    /// with a Slack-compatible `text` field to this `http://` or `https://` URL.
    #[arg(long, value_name = "URL", help_heading = "Observability")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert_webhook: Option<String>,

    /// Run this command with `sh -c` for every alert, the event JSON on its stdin and the
    /// kind in `$UNWEDGE_ALERT_KIND` (killed after 10s).
    #[arg(long, value_name = "CMD", help_heading = "Observability")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert_exec: Option<String>,

    /// The worker command (file only; on the command line it follows `--`).
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
}

impl Options {
    /// Reads and parses a config file. A file that is not a regular one (a FIFO, directory,
    /// socket or device) is refused at once, a [`ConfigError::Usage`] naming it, rather than
    /// waited on: a FIFO without a writer would block the caller for ever. So is one larger
    /// than [`MAX_CONFIG_BYTES`] (1 MiB), before it is read.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = read_config_text(path, Fifo::Refuse)?;
        Self::from_toml(&text).map_err(|(at, reason)| ConfigError::Invalid {
            path: path.to_owned(),
            at,
            reason,
        })
    }

    /// Parses a config file's text; an error is one line, with where it is when known.
    ///
    /// ```
    /// use unwedge_supervisor::Options;
    ///
    /// let (at, reason) = Options::from_toml("workers = 2\nstop-timeout = 30\n").unwrap_err();
    /// assert_eq!(at.unwrap().to_string(), "line 2, column 16, key stop-timeout");
    /// assert_eq!(reason, "a duration needs a unit, as in \"10ms\" or \"2s\"");
    /// ```
    pub fn from_toml(text: &str) -> Result<Self, (Option<FilePosition>, String)> {
        toml::from_str(text).map_err(|e| {
            let at = e.span().map(|span| FilePosition::of(text, span.start));
            // Syntax errors come as two lines: `invalid array` and `expected `]``.
            let reason = e.message().trim().lines().collect::<Vec<_>>().join(", ");
            (at, reason)
        })
    }

    /// This as a config file that names every setting, in the order of `unwedge run --help`:
    /// each one set as `key = value` (`  # off` after a `0` that means off), each unset one as
    /// a comment saying what that means (`# pidfile: none`). Read back, it gives `self`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use unwedge_supervisor::Options;
    ///
    /// let o = Options { watchdog: Some(Duration::ZERO), command: vec!["srv".into()], ..Options::default() };
    /// let text = o.to_toml();
    /// assert!(text.contains("watchdog = \"0\"  # off\n"), "{text}");
    /// assert!(text.contains("# pidfile: none\n"), "{text}");
    /// assert_eq!(toml::from_str::<Options>(&text).unwrap(), o);
    /// ```
    pub fn to_toml(&self) -> String {
        let table = match toml::Table::try_from(self) {
            Ok(t) => t,
            Err(e) => return format!("# cannot print: {e}\n"),
        };
        let flags = <Options as clap::Args>::augment_args(clap::Command::new("unwedge"));
        let mut keys: Vec<&str> = flags.get_arguments().filter_map(|a| a.get_long()).collect();
        keys.push("command");
        // Any key the flags do not name (none today) still gets printed, last.
        keys.extend(
            table
                .keys()
                .map(String::as_str)
                .filter(|k| !keys.contains(k))
                .collect::<Vec<_>>(),
        );
        let mut out = String::new();
        for key in keys {
            let Some(value) = table.get(key) else {
                out.push_str(&format!("# {key}: {}\n", unset_means(key)));
                continue;
            };
            // `check-config` runs in `ExecStartPre=` and deploy pipelines: its output goes to
            // journals and CI logs, where a webhook's token must not.
            if let Some(shown) = (key == "alert-webhook")
                .then(|| value.as_str().and_then(secret_url_shown))
                .flatten()
            {
                out.push_str(&format!(
                    "# alert-webhook: {shown} (set; not printed whole: the user part, path or \
                     query of a webhook URL is often its secret)\n"
                ));
                continue;
            }
            if let Some(shown) = (key == "alert-exec")
                .then(|| value.as_str().and_then(secret_command_shown))
                .flatten()
            {
                out.push_str(&format!(
                    "# alert-exec: {shown} (set; not printed whole: a command's arguments may \
                     hold a token)\n"
                ));
                continue;
            }
            let mut one = toml::Table::new();
            one.insert(key.to_owned(), value.clone());
            match toml::to_string(&one) {
                Ok(line) => out.push_str(line.trim_end()),
                Err(e) => out.push_str(&format!("# {key}: cannot print: {e}")),
            }
            if ["watchdog", "max-lifetime"].contains(&key) && value.as_str() == Some("0") {
                out.push_str("  # off");
            }
            out.push('\n');
        }
        out
    }

    /// `self` with every field that `over` sets replaced by `over`'s value.
    pub fn overlay(mut self, over: Options) -> Options {
        macro_rules! take {
            ($($f:ident),*) => { $( if over.$f.is_some() { self.$f = over.$f; } )* };
        }
        take!(
            port_env,
            socket_mode,
            socket_group,
            workers,
            restart_delay,
            restart_delay_max,
            stable_after,
            max_restarts,
            within,
            watchdog,
            probe,
            probe_timeout,
            probe_interval,
            probe_failures,
            dump_signal,
            dump_grace,
            ready,
            reload_mode,
            ready_timeout,
            stop_signal,
            stop_timeout,
            user,
            group,
            max_memory,
            max_lifetime,
            log_format,
            pidfile,
            admin,
            report_dir,
            report_max_bytes,
            alert_webhook,
            alert_exec
        );
        if !over.listen.is_empty() {
            self.listen = over.listen;
        }
        if !over.command.is_empty() {
            self.command = over.command;
        }
        self
    }
}

/// `url` as `scheme://host[:port]/…` when it has a user part, a path or a query (where a
/// webhook keeps its token); `None` when it has none of them, or does not parse.
fn secret_url_shown(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let authority = uri.authority()?;
    let user = authority.as_str().contains('@');
    let path = !matches!(uri.path(), "" | "/");
    if !(user || path || uri.query().is_some()) {
        return None;
    }
    let port = authority
        .port()
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    Some(format!(
        "{}://{}{}{port}/…",
        uri.scheme_str().unwrap_or("http"),
        if user { "…@" } else { "" },
        authority.host()
    ))
}

/// An `--alert-exec` command as its first word and `…` (`curl …`) when it has more, whose
/// arguments may hold a token; `…` alone when its first word sets a variable (`TOKEN=… cmd`);
/// `None` for one word, which is printed as it is. The supervisor's log shows it the same way.
fn secret_command_shown(cmd: &str) -> Option<String> {
    let mut words = cmd.split_whitespace();
    let first = words.next()?;
    if first.contains('=') {
        return Some("…".to_owned());
    }
    words.next().map(|_| format!("{first} …"))
}

/// `--max-restarts` when not given: 20, or twice the number of workers when that is more, so
/// that one event that ends every worker once (a request that crashes each of them, the OOM
/// killer taking the whole group) is not enough to give up and stop the service.
///
/// ```
/// use unwedge_supervisor::config::default_max_restarts;
/// assert_eq!(default_max_restarts(4), 20);
/// assert_eq!(default_max_restarts(24), 48);
/// ```
pub fn default_max_restarts(workers: usize) -> u32 {
    u32::try_from(workers.saturating_mul(2))
        .unwrap_or(u32::MAX)
        .max(20)
}

/// What an unset key of the config file means, for [`Options::to_toml`].
fn unset_means(key: &str) -> &'static str {
    match key {
        "listen" => "none (sockets only if systemd passes some)",
        "port-env" | "probe" | "max-memory" | "pidfile" | "alert-webhook" | "alert-exec" => "none",
        "socket-group" => "the supervisor's group",
        "user" => "the supervisor's",
        "group" => "the user's primary group (without `user`, the supervisor's)",
        "admin" => {
            "127.0.0.1:9090, the default (if that port is taken: a warning and no admin endpoint)"
        }
        "report-dir" => {
            "the default: $STATE_DIRECTORY/reports when systemd sets StateDirectory=, else off"
        }
        "report-max-bytes" => "10M, the default",
        "command" => "none: give it to `unwedge run` after `--`",
        _ => "the default",
    }
}

/// A `--listen` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A unix stream socket path.
    Unix(PathBuf),
}

/// Whether TCP addresses `a` and `b` cannot both be bound: the same port (not 0, which
/// picks a free one) on the same address, or on all interfaces and any one of them (`[::]`
/// takes IPv4 too: the supervisor's IPv6 sockets are dual-stack).
///
/// ```
/// use unwedge_supervisor::config::overlaps;
/// let a = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
/// assert!(overlaps(&a("0.0.0.0:8080"), &a("127.0.0.1:8080")));
/// assert!(overlaps(&a("[::]:8080"), &a("127.0.0.1:8080")));
/// assert!(!overlaps(&a("127.0.0.1:8080"), &a("127.0.0.2:8080")));
/// assert!(!overlaps(&a("0.0.0.0:8080"), &a("[::1]:8080")));
/// assert!(!overlaps(&a("127.0.0.1:0"), &a("127.0.0.1:0")));
/// ```
pub fn overlaps(a: &SocketAddr, b: &SocketAddr) -> bool {
    // All interfaces of `x`'s family (IPv6's covers IPv4's as well) take `y`.
    let covers =
        |x: &SocketAddr, y: &SocketAddr| x.ip().is_unspecified() && (x.is_ipv6() || y.is_ipv4());
    a.port() == b.port() && a.port() != 0 && (a.ip() == b.ip() || covers(a, b) || covers(b, a))
}

impl FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("`unix:` needs a path, as in unix:/run/app.sock".into());
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        let spec = if s.starts_with(':') {
            format!("0.0.0.0{s}")
        } else {
            s.to_owned()
        };
        if let Ok(addr) = spec.parse::<SocketAddr>() {
            return Ok(ListenAddr::Tcp(addr));
        }
        match spec.to_socket_addrs() {
            Ok(mut addrs) => addrs
                .next()
                .map(ListenAddr::Tcp)
                .ok_or_else(|| format!("`{s}` resolves to no address")),
            // A bare port: the usual slip, answered with what was probably meant.
            Err(_) if s.parse::<u16>().is_ok() => Err(format!(
                "`{s}` is not host:port or unix:/path: `127.0.0.1:{s}` for this machine only, \
                 `:{s}` for every interface"
            )),
            Err(e) => Err(format!("`{s}` is not host:port or unix:/path ({e})")),
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// The effective configuration of a supervisor: defaults, then the file, then the flags.
#[derive(Debug, Clone)]
pub struct Config {
    /// Sockets to bind and pass on (empty: none, unless systemd passed some).
    pub listen: Vec<ListenAddr>,
    /// `--port-env` variable name.
    pub port_env: Option<String>,
    /// Mode of the `unix:` sockets bound (`--socket-mode`).
    pub socket_mode: u32,
    /// Group of the `unix:` sockets bound (`--socket-group` as given, and its gid).
    pub socket_group: Option<(String, u32)>,
    /// Number of workers (at least 1; `--workers auto` resolved when the configuration was).
    pub workers: usize,
    /// Whether [`workers`](Self::workers) came from `--workers auto`.
    pub workers_auto: bool,
    /// First restart delay.
    pub restart_delay: Duration,
    /// Restart delay bound.
    pub restart_delay_max: Duration,
    /// Uptime that resets the restart delay.
    pub stable_after: Duration,
    /// Restart intensity: at most this many restarts…
    pub max_restarts: u32,
    /// …within this window.
    pub within: Duration,
    /// Heartbeat deadline (`WATCHDOG_USEC`).
    pub watchdog: Option<Duration>,
    /// Probe path.
    pub probe: Option<String>,
    /// Probe timeout.
    pub probe_timeout: Duration,
    /// Probe interval.
    pub probe_interval: Duration,
    /// Failed probes in a row that mean hung.
    pub probe_failures: u32,
    /// Signal sent to a hung worker before SIGKILL.
    pub dump_signal: Signal,
    /// Time between dump signal and SIGKILL; a tainted worker's time before SIGTERM.
    pub dump_grace: Duration,
    /// Readiness mode.
    pub ready: ReadyMode,
    /// How a reload replaces the workers.
    pub reload_mode: ReloadMode,
    /// Time a worker has to become ready.
    pub ready_timeout: Duration,
    /// Signal that asks a worker to stop gracefully (`--stop-signal`).
    pub stop_signal: Signal,
    /// Time workers have to stop after the stop signal; a worker leaving on its own
    /// (`STOPPING=1`) has it before the stop signal too.
    pub stop_timeout: Duration,
    /// Who the workers run as (`--user`, `--group`; `None`: the supervisor's user).
    pub run_as: Option<RunAs>,
    /// A worker using more resident memory than this many bytes is replaced gracefully.
    pub max_memory: Option<u64>,
    /// Whether [`max_memory`](Self::max_memory) came from `--max-memory auto`.
    pub max_memory_auto: bool,
    /// A worker that has run this long is replaced gracefully (`--max-lifetime`).
    pub max_lifetime: Option<Duration>,
    /// Log format.
    pub log_format: LogFormat,
    /// Pid file to write.
    pub pidfile: Option<PathBuf>,
    /// `--admin` as given (`None`: the default); the binary parses it with
    /// `unwedge_admin::parse_admin_addr`.
    pub admin: Option<String>,
    /// `--report-dir` as given (`None`: the default, `off`: none).
    pub report_dir: Option<PathBuf>,
    /// `--report-max-bytes` as given; the binary parses it with [`parse_size`].
    pub report_max_bytes: Option<String>,
    /// `--alert-webhook` URL.
    pub alert_webhook: Option<String>,
    /// `--alert-exec` command.
    pub alert_exec: Option<String>,
    /// The worker command and its arguments (never empty).
    pub command: Vec<String>,
}

impl Config {
    /// Layers `flags` over `file` over the defaults, with `command` (from after `--`)
    /// replacing the file's command when not empty, and validates the result.
    pub fn resolve(
        file: Option<Options>,
        flags: Options,
        command: Vec<String>,
    ) -> Result<Config, ConfigError> {
        Self::from_options(layered(file.unwrap_or_default(), flags, command)).map_err(|r| match r {
            Refused::Setting { flag, .. } => ConfigError::Usage(flag),
            Refused::Other(e) => e,
        })
    }

    fn from_options(o: Options) -> Result<Config, Refused> {
        let usage = |m: String| Refused::Other(ConfigError::Usage(m));
        if o.command.is_empty() {
            return Err(usage(
                "no worker command: give it after `--`, as in `unwedge run -- ./server`".into(),
            ));
        }
        if o.workers == Some(Workers::Count(0)) {
            return Err(Refused::setting(
                "workers",
                "--workers must be at least 1".into(),
            ));
        }
        if let Some(n) = o.workers.map(Workers::count).filter(|&n| n > MAX_WORKERS) {
            return Err(Refused::setting(
                "workers",
                format!("--workers {n} is more than {MAX_WORKERS}, the most one supervisor runs"),
            ));
        }
        if o.port_env.is_some() && !o.listen.is_empty() {
            return Err(usage(
                "--listen and --port-env cannot be used together".into(),
            ));
        }
        if let Some(name) = &o.port_env {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                return Err(Refused::setting(
                    "port-env",
                    format!("--port-env `{name}` is not a variable name"),
                ));
            }
            if is_worker_var(name) {
                return Err(Refused::setting(
                    "port-env",
                    format!(
                        "--port-env {name} is a variable the supervisor sets (or needs) for \
                         every worker; name another, as in `--port-env PORT`"
                    ),
                ));
            }
        }
        let listen = o
            .listen
            .iter()
            .map(|s| {
                s.parse::<ListenAddr>()
                    .map_err(|e| Refused::setting("listen", format!("--listen: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Bound twice, the second bind found the address taken by the supervisor itself (exit
        // 1, naming it as the holder). Port 0 twice is two ports.
        if let Some(twice) = listen.iter().enumerate().find_map(|(i, a)| {
            let port_0 = matches!(a, ListenAddr::Tcp(t) if t.port() == 0);
            (!port_0 && listen[..i].contains(a)).then_some(a)
        }) {
            return Err(Refused::setting(
                "listen",
                format!("--listen {twice} is given twice"),
            ));
        }
        // Overlapping: the same port on all interfaces and on one of them (`:8080` and
        // `127.0.0.1:8080`). The second bind failed the same way.
        let tcp: Vec<&SocketAddr> = listen
            .iter()
            .filter_map(|l| match l {
                ListenAddr::Tcp(a) => Some(a),
                ListenAddr::Unix(_) => None,
            })
            .collect();
        if let Some((b, a)) = tcp.iter().enumerate().find_map(|(i, a)| {
            let b = tcp[..i].iter().find(|b| overlaps(a, b))?;
            Some((b, a))
        }) {
            let why = "overlap (the same port, and one of them on all interfaces): list only one";
            return Err(Refused::Setting {
                key: "listen",
                flag: format!("--listen {b} and --listen {a} {why}"),
                file: format!("{b} and {a} {why}"),
            });
        }
        let dump_signal = match &o.dump_signal {
            Some(s) => parse_signal(s)
                .map_err(|e| Refused::setting("dump-signal", format!("--dump-signal: {e}")))?,
            None => Signal::SIGQUIT,
        };
        let stop_signal = match &o.stop_signal {
            Some(s) => match parse_signal(s)
                .map_err(|e| Refused::setting("stop-signal", format!("--stop-signal: {e}")))?
            {
                sig @ (Signal::SIGSTOP
                | Signal::SIGTSTP
                | Signal::SIGTTIN
                | Signal::SIGTTOU
                | Signal::SIGCONT) => {
                    return Err(Refused::setting(
                        "stop-signal",
                        format!(
                            "--stop-signal {}: pauses or resumes a process, never stops it",
                            sig.as_str()
                        ),
                    ))
                }
                sig => sig,
            },
            None => Signal::SIGTERM,
        };
        if let Some(p) = &o.probe {
            check_probe_path(p).map_err(|e| Refused::setting("probe", e))?;
        }
        let ready = o.ready.unwrap_or_default();
        if ready == ReadyMode::Port && o.port_env.is_none() {
            return Err(usage("--ready port needs --port-env".into()));
        }
        if ready == ReadyMode::Accept && o.port_env.is_some() {
            return Err(usage(
                "--ready accept watches the shared sockets; with --port-env use --ready port"
                    .into(),
            ));
        }
        let restart_delay = o.restart_delay.unwrap_or(Duration::from_millis(10));
        let restart_delay_max = o.restart_delay_max.unwrap_or(Duration::from_secs(5));
        if restart_delay_max < restart_delay {
            return Err(usage(
                "--restart-delay-max is smaller than --restart-delay".into(),
            ));
        }
        let nonzero = |d: Option<Duration>, def: Duration, name: &'static str| match d {
            Some(d) if d.is_zero() => Err(Refused::setting(
                name,
                format!("--{name} must be more than 0"),
            )),
            Some(d) => Ok(d),
            None => Ok(def),
        };
        if o.stop_timeout.is_some_and(|d| d.is_zero()) {
            // Not "off", as `--watchdog 0`: 0 would SIGKILL every worker on every stop.
            let why = "would SIGKILL every worker as soon as it is asked to stop: give the time \
                       workers have to finish their requests, as";
            return Err(Refused::Setting {
                key: "stop-timeout",
                flag: format!(
                    "--stop-timeout 0 {why} `--stop-timeout 30s` (`stop-timeout = \"30s\"` in \
                     the config file)"
                ),
                file: format!("0 {why} `stop-timeout = \"30s\"`"),
            });
        }
        let watchdog = match o.watchdog {
            Some(d) if d.is_zero() => None,
            // Workers get it in whole microseconds: under 1 µs it is `WATCHDOG_USEC=0`, which
            // they refuse (a crash loop); under 1 ms no worker can keep up with it.
            Some(d) if d < MIN_WATCHDOG => {
                let why = "is under 1ms, the shortest watchdog (0 turns it off)";
                let shown = humantime::format_duration(d);
                return Err(Refused::Setting {
                    key: "watchdog",
                    flag: format!("--watchdog {shown} {why}"),
                    file: format!("{shown} {why}"),
                });
            }
            d => d,
        };
        Ok(Config {
            listen,
            port_env: o.port_env,
            socket_mode: match &o.socket_mode {
                Some(m) => parse_mode(m).map_err(|e| {
                    Refused::setting("socket-mode", format!("--socket-mode {m}: {e}"))
                })?,
                None => DEFAULT_SOCKET_MODE,
            },
            socket_group: match o.socket_group {
                Some(g) => {
                    let gid = crate::run_as::lookup_group(&g).map_err(|e| {
                        Refused::setting("socket-group", e.replacen("--group", "--socket-group", 1))
                    })?;
                    Some((g, gid))
                }
                None => None,
            },
            workers: o.workers.map_or(1, Workers::count) as usize,
            workers_auto: o.workers == Some(Workers::Auto),
            restart_delay,
            restart_delay_max,
            stable_after: o.stable_after.unwrap_or(Duration::from_secs(30)),
            max_restarts: o.max_restarts.unwrap_or_else(|| {
                default_max_restarts(o.workers.map_or(1, Workers::count) as usize)
            }),
            within: nonzero(o.within, Duration::from_secs(60), "within")?,
            watchdog,
            probe: o.probe,
            probe_timeout: nonzero(o.probe_timeout, Duration::from_secs(1), "probe-timeout")?,
            probe_interval: match o.probe_interval {
                // Back to back, a probe costs the supervisor and an idle worker a core's fifth
                // each: no health check needs that.
                Some(d) if d < MIN_PROBE_INTERVAL => {
                    let why = "is under 10ms, the shortest probe interval";
                    let shown = humantime::format_duration(d);
                    return Err(Refused::Setting {
                        key: "probe-interval",
                        flag: format!("--probe-interval {shown} {why}"),
                        file: format!("{shown} {why}"),
                    });
                }
                d => d.unwrap_or(Duration::from_secs(1)),
            },
            probe_failures: match o.probe_failures {
                Some(0) => {
                    let why = "give the number of failed probes in a row that make a worker \
                               hung, at least 1";
                    return Err(Refused::Setting {
                        key: "probe-failures",
                        flag: format!(
                            "--probe-failures 0: {why} (`probe-failures = 3` in the config file)"
                        ),
                        file: format!("0: {why}, as `probe-failures = 3`"),
                    });
                }
                n => n.unwrap_or(3),
            },
            dump_signal,
            dump_grace: o.dump_grace.unwrap_or(Duration::from_secs(1)),
            ready,
            reload_mode: o.reload_mode.unwrap_or_default(),
            ready_timeout: nonzero(o.ready_timeout, Duration::from_secs(10), "ready-timeout")?,
            stop_signal,
            stop_timeout: o.stop_timeout.unwrap_or(Duration::from_secs(30)),
            run_as: RunAs::resolve(o.user.as_deref(), o.group.as_deref()).map_err(usage)?,
            max_memory: match o.max_memory {
                Some(MemoryLimit::Bytes(0)) => {
                    return Err(Refused::setting(
                        "max-memory",
                        "--max-memory must be more than 0".into(),
                    ))
                }
                Some(MemoryLimit::Bytes(b)) => Some(b),
                Some(MemoryLimit::Auto) => {
                    let limit = crate::oom::OomCounter::for_this_process().and_then(|c| c.limit());
                    let workers = o.workers.map_or(1, Workers::count);
                    Some(
                        auto_memory(limit, workers)
                            .map_err(|e| Refused::setting("max-memory", e))?,
                    )
                }
                None => None,
            },
            max_memory_auto: o.max_memory == Some(MemoryLimit::Auto),
            max_lifetime: match o.max_lifetime {
                Some(d) if d.is_zero() => None,
                Some(d) if d < MIN_LIFETIME => {
                    return Err(Refused::setting(
                        "max-lifetime",
                        format!(
                            "--max-lifetime {}: too short (at least 1s): workers would be \
                             replaced as fast as they start",
                            humantime::format_duration(d)
                        ),
                    ))
                }
                d => d,
            },
            log_format: o.log_format.unwrap_or_default(),
            pidfile: match o.pidfile {
                // Refused from the command line by clap; from the file it passed check-config
                // and failed `run` (exit 1).
                Some(p) if p.as_os_str().is_empty() => {
                    return Err(Refused::setting(
                        "pidfile",
                        "--pidfile: an empty path; give a file, or leave it out".into(),
                    ))
                }
                p => p,
            },
            admin: o.admin,
            report_dir: o.report_dir,
            report_max_bytes: o.report_max_bytes,
            alert_webhook: o.alert_webhook,
            alert_exec: o.alert_exec,
            command: o.command,
        })
    }

    /// The effective configuration as a complete [`Options`], e.g. to print it as TOML: every
    /// field set, normalised (`report-max-bytes = "10Mi"` gives `10M`), `0` for what is off
    /// (`watchdog`, `max-lifetime`), except the ones with no value that says off or the default
    /// (`pidfile`, `user`, `max-memory`, `admin`, …), which stay unset.
    pub fn to_options(&self) -> Options {
        Options {
            listen: self.listen.iter().map(ToString::to_string).collect(),
            port_env: self.port_env.clone(),
            socket_mode: Some(format!("{:04o}", self.socket_mode)),
            socket_group: self.socket_group.as_ref().map(|(g, _)| g.clone()),
            workers: Some(Workers::Count(self.workers as u32)),
            restart_delay: Some(self.restart_delay),
            restart_delay_max: Some(self.restart_delay_max),
            stable_after: Some(self.stable_after),
            max_restarts: Some(self.max_restarts),
            within: Some(self.within),
            watchdog: Some(self.watchdog.unwrap_or(Duration::ZERO)),
            probe: self.probe.clone(),
            probe_timeout: Some(self.probe_timeout),
            probe_interval: Some(self.probe_interval),
            probe_failures: Some(self.probe_failures),
            dump_signal: Some(self.dump_signal.as_str().to_owned()),
            dump_grace: Some(self.dump_grace),
            ready: Some(self.ready),
            reload_mode: Some(self.reload_mode),
            ready_timeout: Some(self.ready_timeout),
            stop_signal: Some(self.stop_signal.as_str().to_owned()),
            stop_timeout: Some(self.stop_timeout),
            user: self.run_as.as_ref().and_then(|r| r.user.clone()),
            group: self.run_as.as_ref().and_then(|r| r.group.clone()),
            max_memory: self.max_memory.map(MemoryLimit::Bytes),
            max_lifetime: Some(self.max_lifetime.unwrap_or(Duration::ZERO)),
            log_format: Some(self.log_format),
            pidfile: self.pidfile.clone(),
            admin: self.admin.clone(),
            report_dir: self.report_dir.clone(),
            report_max_bytes: self
                .report_max_bytes
                .as_ref()
                .map(|s| parse_size(s).map_or_else(|_| s.clone(), format_size)),
            alert_webhook: self.alert_webhook.clone(),
            alert_exec: self.alert_exec.clone(),
            command: self.command.clone(),
        }
    }

    /// The effective configuration as TOML, as `unwedge check-config` prints it: every
    /// setting, those left unset as a comment saying what that means (see
    /// [`Options::to_toml`]).
    pub fn to_toml(&self) -> String {
        self.to_options().to_toml()
    }
}

/// `flags` over `file`, with `command` (from after `--`) replacing the file's when not empty.
fn layered(file: Options, flags: Options, command: Vec<String>) -> Options {
    let mut o = file.overlay(flags);
    if !command.is_empty() {
        o.command = command;
    }
    o
}

/// Why [`Config::from_options`] refused: a value of one setting, named by its key so that a
/// config file's value can be pointed at, or anything else (settings that do not go together).
enum Refused {
    /// One setting's value cannot be used.
    Setting {
        /// Its key in the file (the long flag without `--`).
        key: &'static str,
        /// Said of the flag: `--workers 2000 is more than 1024, …`.
        flag: String,
        /// Said of the file's value, whose position names the key: `2000 is more than …`.
        file: String,
    },
    /// Anything else.
    Other(ConfigError),
}

impl Refused {
    /// `flag` (which starts `--KEY`) of setting `key`; said of the file without the `--KEY`.
    fn setting(key: &'static str, flag: String) -> Refused {
        Refused::Setting {
            key,
            file: in_file_words(key, &flag),
            flag,
        }
    }
}

/// A message about flag `--KEY` said of the file's value instead (where the file position
/// names the key): without its leading `--KEY` and `: `.
fn in_file_words(key: &str, flag: &str) -> String {
    match flag.strip_prefix("--").and_then(|m| m.strip_prefix(key)) {
        Some(rest) if rest.starts_with([' ', ':']) => {
            rest.trim_start_matches(':').trim_start().to_owned()
        }
        _ => flag.to_owned(),
    }
}

/// A config file, read and parsed: its options, and its text, to say where in it a value
/// that cannot be used is.
///
/// ```
/// use unwedge_supervisor::config::{ConfigFile, Options};
///
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("big.toml");
/// std::fs::write(&path, "command = [\"srv\"]\nworkers = 2000\n").unwrap();
/// let file = ConfigFile::read(&path).unwrap();
/// let e = file.resolve(Options::default(), Vec::new()).unwrap_err().to_string();
/// assert!(e.ends_with("big.toml, line 2, column 11, key workers: 2000 is more than 1024, \
///                      the most one supervisor runs"), "{e}");
/// ```
#[derive(Debug, Clone)]
pub struct ConfigFile {
    path: PathBuf,
    text: String,
    options: Options,
}

impl ConfigFile {
    /// Reads and parses the file at `path` (as [`Options::from_file`]); a FIFO, device or
    /// directory is refused at once (a usage error) rather than waited on, and so is a file
    /// larger than [`MAX_CONFIG_BYTES`] (1 MiB).
    pub fn read(path: &Path) -> Result<ConfigFile, ConfigError> {
        Self::parse(path, read_config_text(path, Fifo::Refuse)?)
    }

    /// As [`ConfigFile::read`], but a FIFO is read, waiting as long as it takes (until it is
    /// written): for a reload, which reads on a thread of its own. A device, directory or
    /// socket is refused as by [`ConfigFile::read`], and so is more than [`MAX_CONFIG_BYTES`]:
    /// a config path switched to a link to `/dev/zero` before a SIGHUP had the reload's
    /// thread read it into memory until the supervisor, and every worker with it, was killed
    /// for want of memory.
    pub fn read_waiting(path: &Path) -> Result<ConfigFile, ConfigError> {
        Self::parse(path, read_config_text(path, Fifo::Wait)?)
    }

    fn parse(path: &Path, text: String) -> Result<ConfigFile, ConfigError> {
        let options = Options::from_toml(&text).map_err(|(at, reason)| ConfigError::Invalid {
            path: path.to_owned(),
            at,
            reason,
        })?;
        Ok(ConfigFile {
            path: path.to_owned(),
            text,
            options,
        })
    }

    /// What the file sets.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// [`Config::resolve`] with this file under `flags`: a value of the file that cannot be
    /// used is a [`ConfigError::Invalid`] naming its line, column and key (the same value
    /// given as a flag is said as the flag).
    pub fn resolve(self, flags: Options, command: Vec<String>) -> Result<Config, ConfigError> {
        let flag_keys = toml::Table::try_from(&flags).unwrap_or_default();
        Config::from_options(layered(self.options, flags, command)).map_err(|r| match r {
            Refused::Setting { key, file, .. } if !flag_keys.contains_key(key) => {
                ConfigError::Invalid {
                    at: value_position(&self.text, key),
                    path: self.path,
                    reason: file,
                }
            }
            Refused::Setting { flag, .. } => ConfigError::Usage(flag),
            Refused::Other(e) => e,
        })
    }
}

/// Where the value of top-level `key` starts in config file `text`, if it is set there.
fn value_position(text: &str, key: &str) -> Option<FilePosition> {
    let table: std::collections::BTreeMap<String, toml::Spanned<toml::Value>> =
        toml::from_str(text).ok()?;
    let span = table.get(key)?.span();
    Some(FilePosition::of(text, span.start))
}

/// Checks a `--probe` path, which goes as it is into the request line `GET PATH HTTP/1.1`: it
/// starts with `/`, and holds only what a request line may carry (no spaces, control or
/// non-ASCII characters: those are percent-encoded; a `%` starts an escape such as `%20`),
/// and no `#fragment`, which is never sent. The error suggests the percent-encoded path.
///
/// ```
/// use unwedge_supervisor::config::check_probe_path;
///
/// assert!(check_probe_path("/healthz?full=1").is_ok());
/// assert!(check_probe_path("/caf%C3%A9").is_ok());
/// let e = check_probe_path("/ü bad").unwrap_err();
/// assert!(e.contains("give `/%C3%BC%20bad`"), "{e}");
/// assert!(check_probe_path("healthz").unwrap_err().contains("starting with `/`"));
/// ```
pub fn check_probe_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("--probe `{p}` must be a path starting with `/`"));
    }
    if let Some((_, fragment)) = p.split_once('#') {
        return Err(format!(
            "--probe `{p}`: a `#{fragment}` is never sent to a server; leave it out"
        ));
    }
    let bytes = p.as_bytes();
    let bad_escape = bytes.iter().enumerate().any(|(i, &b)| {
        b == b'%'
            && !bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    });
    if p.is_ascii() && !bad_escape && p.parse::<http::uri::PathAndQuery>().is_ok() {
        return Ok(());
    }
    let mut encoded = String::with_capacity(p.len() * 3);
    for (i, &b) in bytes.iter().enumerate() {
        let keep = b.is_ascii_alphanumeric()
            || b"-._~!$&'()*+,;=:@/?".contains(&b)
            || (b == b'%'
                && bytes
                    .get(i + 1..i + 3)
                    .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)));
        if keep {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    Err(format!(
        "--probe `{}` cannot go into an HTTP request line (spaces, control and non-ASCII \
         characters must be percent-encoded): give `{encoded}`",
        p.escape_debug()
    ))
}

/// Parses a duration such as `10ms`, `1.5s`, `2m 30s` (humantime syntax; a bare `0` is zero),
/// at most [`MAX_DURATION`] (a year).
///
/// ```
/// use std::time::Duration;
/// use unwedge_supervisor::config::parse_duration;
/// assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
/// assert_eq!(parse_duration("2m 30s"), Ok(Duration::from_secs(150)));
/// assert!(parse_duration("soon").unwrap_err().contains("is not a duration"));
/// assert!(parse_duration("18446744073709551615s").unwrap_err().contains("at most 365 days"));
/// ```
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    // `1.5s` directly, else humantime; a value too large for a `Duration` is too long as well.
    let d = match t.strip_suffix('s').and_then(|n| n.parse::<f64>().ok()) {
        Some(secs) if secs.is_finite() && secs >= 0.0 => {
            Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
        }
        _ => humantime::parse_duration(t)
            .map_err(|e| format!("`{s}` is not a duration such as 10ms, 2s, 1m ({e})"))?,
    };
    if d > MAX_DURATION {
        return Err(format!(
            "`{s}` is too long: at most 365 days (a duration such as 10ms, 2s, 1m)"
        ));
    }
    Ok(d)
}

/// The variables the supervisor sets for every worker (or that the worker's start needs:
/// `PATH` finds its command), which `--port-env` must not name: the port would replace them,
/// or they the port.
const WORKER_VARS: &[&str] = &[
    "PATH",
    // NOTIFY_SOCKET, WATCHDOG_*, LISTEN_*: systemd's names, in `SYSTEMD_VARS` (below).
    "UNWEDGE_WORKER",
    "UNWEDGE_GENERATION",
    crate::shim::SHIM_FDS_ENV,
    crate::shim::SHIM_PARENT_ENV,
    crate::shim::SHIM_NOFILE_ENV,
    crate::run_as::SHIM_CREDENTIALS_ENV,
    // Set from the user's entry with `--user`.
    "USER",
    "LOGNAME",
    "HOME",
    "SHELL",
];

/// Whether `name` is one of [`WORKER_VARS`] (or systemd's, which workers never see).
fn is_worker_var(name: &str) -> bool {
    WORKER_VARS.contains(&name) || crate::systemd::SYSTEMD_VARS.contains(&name)
}

/// The largest config file read: 1 MiB. A config file is a few kilobytes; a bigger one is
/// something else at that path (a log, an image, a link to `/dev/zero` switched in before a
/// reload), and reading it whole took gigabytes of memory and tens of seconds before a word
/// was said.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// What [`read_config_text`] does with a FIFO at the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fifo {
    /// Refused at once: `run` and `check-config` would wait for a writer for ever, before a
    /// word is said.
    Refuse,
    /// Read once written: a reload reads on a thread of its own, and waits as it would on a
    /// network mount that hangs.
    Wait,
}

/// The text of the config file at `path`: the one reading of it, at the start, by
/// `check-config` and at a reload. A regular file (or, for a reload, a FIFO: see [`Fifo`])
/// of at most [`MAX_CONFIG_BYTES`]; anything else is refused, a usage error naming it: a
/// directory, socket or device (`/dev/zero` would be read for ever) by its type, checked on the
/// opened file (opened without waiting for a FIFO's writer unless [`Fifo::Wait`]), and a
/// larger file before it is read, or once that much was read from what grew or has no size.
fn read_config_text(path: &Path, fifo: Fifo) -> Result<String, ConfigError> {
    use std::io::Read;
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::fs::OpenOptionsExt;
    let unreadable = |e: std::io::Error| ConfigError::Unreadable {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let not_regular = |kind: std::fs::FileType| {
        let what = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "a device"
        };
        ConfigError::Usage(format!(
            "config file {} is {what}, not a regular file",
            path.display()
        ))
    };
    let too_big = || {
        ConfigError::Usage(format!(
            "config file {} is larger than 1 MiB ({MAX_CONFIG_BYTES} bytes), the most a config \
             file may hold",
            path.display()
        ))
    };
    let allowed =
        |kind: std::fs::FileType| kind.is_file() || (fifo == Fifo::Wait && kind.is_fifo());
    // Waiting for a FIFO's writer, a device is not opened at all (its open may wait too).
    if fifo == Fifo::Wait {
        if let Ok(m) = std::fs::metadata(path) {
            if !allowed(m.file_type()) {
                return Err(not_regular(m.file_type()));
            }
        }
    }
    let flags = match fifo {
        Fifo::Refuse => nix::fcntl::OFlag::O_NONBLOCK.bits(),
        Fifo::Wait => 0,
    };
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
    {
        Ok(file) => file,
        // A unix socket cannot be opened at all (ENXIO, "No such device or address"): say
        // what it is instead.
        Err(e) => {
            return Err(match std::fs::metadata(path) {
                Ok(m) if !m.is_file() && !m.is_dir() => not_regular(m.file_type()),
                _ => unreadable(e),
            })
        }
    };
    let meta = file.metadata().map_err(unreadable)?;
    if !allowed(meta.file_type()) {
        return Err(not_regular(meta.file_type()));
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(too_big());
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(too_big());
    }
    // Not UTF-8 is an invalid file (exit 2, as the docs say), not an unreadable one: said
    // where, as for any other error in the file.
    String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let before = std::str::from_utf8(&e.as_bytes()[..valid]).unwrap_or_default();
        let mut at = FilePosition::of(before, valid);
        // A bad byte in a comment belongs to no key (the nearest key above it would mislead).
        let line = &before[before.rfind('\n').map_or(0, |i| i + 1)..];
        if line.trim_start().starts_with('#') {
            at.key = None;
        }
        ConfigError::Invalid {
            path: path.to_owned(),
            at: Some(at),
            reason: "not UTF-8 (a config file is TOML, which is UTF-8 text)".into(),
        }
    })
}

/// The shortest `--probe-interval`.
pub const MIN_PROBE_INTERVAL: Duration = Duration::from_millis(10);

/// The shortest `--watchdog` (other than 0, off).
pub const MIN_WATCHDOG: Duration = Duration::from_millis(1);

/// The longest duration [`parse_duration`] takes: a longer one is a typo, not a timeout
/// (and would overflow the clock's deadlines).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// The most workers one supervisor runs: `--workers` above it is a usage error (a typo such
/// as `--workers 10000` would otherwise fork that many processes).
pub const MAX_WORKERS: u32 = 1024;

/// `--max-memory`: a size, or `auto` (a share of the cgroup's memory limit).
///
/// ```
/// use unwedge_supervisor::config::MemoryLimit;
/// assert_eq!("512M".parse::<MemoryLimit>(), Ok(MemoryLimit::Bytes(512 << 20)));
/// assert_eq!("auto".parse::<MemoryLimit>(), Ok(MemoryLimit::Auto));
/// assert!("lots".parse::<MemoryLimit>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryLimit {
    /// This many bytes per worker.
    Bytes(u64),
    /// 90 % of this process's cgroup memory limit, shared by the workers and one more (a
    /// replacement overlaps its predecessor): see [`auto_memory`].
    Auto,
}

impl FromStr for MemoryLimit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().eq_ignore_ascii_case("auto") {
            return Ok(MemoryLimit::Auto);
        }
        parse_size(s).map(MemoryLimit::Bytes)
    }
}

impl Serialize for MemoryLimit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MemoryLimit::Bytes(n) => s.serialize_str(&format_size(*n)),
            MemoryLimit::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for MemoryLimit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_any(SizeVisitor { auto: true })? {
            SizeRaw::Text(t) => t.parse().map_err(serde::de::Error::custom),
            SizeRaw::Bytes(n) => Ok(MemoryLimit::Bytes(n)),
        }
    }
}

/// A size in the config file: text (`"10M"`, `"auto"`) or a number of bytes.
enum SizeRaw {
    Text(String),
    Bytes(u64),
}

/// Reads a [`SizeRaw`]; anything else (a negative number, a boolean) is an error that says
/// what a size looks like.
struct SizeVisitor {
    /// Whether `"auto"` is a size here (`max-memory`).
    auto: bool,
}

impl serde::de::Visitor<'_> for SizeVisitor {
    type Value = SizeRaw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a size such as \"512K\" or \"10M\", or a number of bytes")?;
        if self.auto {
            f.write_str(", or \"auto\"")?;
        }
        Ok(())
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<SizeRaw, E> {
        Ok(SizeRaw::Text(s.to_owned()))
    }

    fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<SizeRaw, E> {
        Ok(SizeRaw::Bytes(n))
    }

    fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<SizeRaw, E> {
        u64::try_from(n)
            .map(SizeRaw::Bytes)
            .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(n), &self))
    }
}

/// The share of a cgroup memory limit `--max-memory auto` gives each of `workers` workers: 90 %
/// of it (the rest for the supervisor and the page cache) divided by `workers + 1` (a
/// replacement runs next to its predecessor until it is ready). An error without a limit.
///
/// ```
/// use unwedge_supervisor::config::auto_memory;
/// assert_eq!(auto_memory(Some(200 << 20), 2), Ok(60 << 20));
/// assert!(auto_memory(None, 2).unwrap_err().contains("no memory limit"));
/// ```
pub fn auto_memory(limit: Option<u64>, workers: u32) -> Result<u64, String> {
    let limit = limit.ok_or_else(|| {
        "--max-memory auto: this process has no memory limit to share (no cgroup memory.max or \
         memory.limit_in_bytes: a container or unit without a memory limit); give a size"
            .to_owned()
    })?;
    let each = limit / 10 * 9 / (u64::from(workers) + 1);
    if each < 1 << 20 {
        return Err(format!(
            "--max-memory auto: the memory limit ({}) leaves less than 1M per worker",
            human_size(limit)
        ));
    }
    Ok(each)
}

/// The shortest `--max-lifetime`.
pub const MIN_LIFETIME: Duration = Duration::from_secs(1);

/// The default `--socket-mode`: anyone may connect, as systemd's `SocketMode=` default; the
/// directory the socket is in decides who reaches it.
pub const DEFAULT_SOCKET_MODE: u32 = 0o666;

/// Parses a file mode in octal (`0660`, `660`, `0o660`), permission bits only.
///
/// ```
/// use unwedge_supervisor::config::parse_mode;
/// assert_eq!(parse_mode("0660"), Ok(0o660));
/// assert!(parse_mode("0999").is_err());
/// assert!(parse_mode("4755").is_err()); // setuid and friends mean nothing on a socket
/// ```
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    let mode = u32::from_str_radix(digits, 8)
        .ok()
        .filter(|_| !digits.is_empty() && digits.len() <= 4)
        .ok_or_else(|| "not an octal mode such as 0660".to_owned())?;
    if mode > 0o777 {
        return Err("only permission bits (at most 0777)".into());
    }
    Ok(mode)
}

/// Parses a signal name (`SIGQUIT`, `QUIT`, `quit`) or number.
pub fn parse_signal(s: &str) -> Result<Signal, String> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("`{s}` is not a signal number"));
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).map_err(|_| format!("`{s}` is not a signal name such as SIGQUIT"))
}

/// Parses a size: a number of bytes, optionally followed by `K`, `M` or `G` (powers of 1024;
/// `KiB`, `MB`, and Kubernetes' `Mi`, … are accepted too). For `--max-memory` and
/// `--report-max-bytes`.
///
/// ```
/// use unwedge_supervisor::config::parse_size;
///
/// assert_eq!(parse_size("4096"), Ok(4096));
/// assert_eq!(parse_size("10M"), Ok(10 * 1024 * 1024));
/// assert_eq!(parse_size("1 GiB"), Ok(1 << 30));
/// assert_eq!(parse_size("200Mi"), Ok(200 << 20)); // as in a Kubernetes memory limit
/// assert!(parse_size("ten").is_err());
/// ```
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected a number of bytes like 10M"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" | "ki" => 1 << 10,
        "m" | "mb" | "mib" | "mi" => 1 << 20,
        "g" | "gb" | "gib" | "gi" => 1 << 30,
        other => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {other:?} (use K, M or G)"
            ))
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("invalid size {s:?}: too large"))
}

/// `bytes` as [`parse_size`] reads it back, in the largest unit that divides it (`512M`).
///
/// ```
/// use unwedge_supervisor::config::{format_size, parse_size};
///
/// assert_eq!(format_size(512 << 20), "512M");
/// assert_eq!(format_size(1000), "1000");
/// assert_eq!(parse_size(&format_size(3 << 30)), Ok(3 << 30));
/// ```
pub fn format_size(bytes: u64) -> String {
    for (unit, shift) in [("G", 30), ("M", 20), ("K", 10)] {
        if bytes != 0 && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// `bytes` for people, to one decimal in the largest unit that fits: `170.4M`, `2.0G`, `512B`.
///
/// ```
/// assert_eq!(unwedge_supervisor::config::human_size(178_675_712), "170.4M");
/// ```
pub fn human_size(bytes: u64) -> String {
    for (unit, shift) in [("G", 30), ("M", 20), ("K", 10)] {
        if bytes >= 1 << shift {
            return format!("{:.1}{unit}", bytes as f64 / (1u64 << shift) as f64);
        }
    }
    format!("{bytes}B")
}

/// `listen = "127.0.0.1:8080"` as well as `listen = ["127.0.0.1:8080", "unix:/run/a.sock"]`.
/// A size in the file as text (`"10M"`) or a number of bytes (`1048576`), as `max-memory`
/// takes it; kept as text, parsed where the flag's value is.
fn size_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Some(
        match d.deserialize_any(SizeVisitor { auto: false })? {
            SizeRaw::Text(t) => t,
            SizeRaw::Bytes(n) => n.to_string(),
        },
    ))
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an address such as \"127.0.0.1:8080\", or a list of them")
        }

        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Vec<String>, E> {
            Ok(vec![s.to_owned()])
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Vec<String>, A::Error> {
            let mut out = Vec::new();
            while let Some(s) = seq.next_element()? {
                out.push(s);
            }
            Ok(out)
        }
    }
    d.deserialize_any(Visitor)
}

mod opt_duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            // `0`, as the flags take it (humantime would say `0s`).
            Some(d) if d.is_zero() => s.serialize_str("0"),
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Secs(u64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(t) => super::parse_duration(&t)
                .map(Some)
                .map_err(serde::de::Error::custom),
            Raw::Secs(0) => Ok(Some(Duration::ZERO)),
            Raw::Secs(_) => Err(serde::de::Error::custom(
                "a duration needs a unit, as in \"10ms\" or \"2s\"",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file() {
        let file: Options = toml::from_str(
            "workers = 4\nwatchdog = \"2s\"\nlisten = [\"127.0.0.1:0\"]\ncommand = [\"a\"]",
        )
        .unwrap();
        let flags = Options {
            workers: Some(Workers::Count(2)),
            ..Options::default()
        };
        let c = Config::resolve(Some(file), flags, vec!["b".into()]).unwrap();
        assert_eq!(c.workers, 2);
        assert_eq!(c.watchdog, Some(Duration::from_secs(2)));
        assert_eq!(c.command, ["b"]);
        assert_eq!(c.listen.len(), 1);
    }

    #[test]
    fn observability_keys_in_the_file() {
        let file: Options = toml::from_str(
            "admin = \"off\"\nreport-dir = \"/tmp/r\"\nreport-max-bytes = \"1M\"\n\
             alert-webhook = \"http://127.0.0.1:1/h\"\nalert-exec = \"true\"\ncommand = [\"a\"]",
        )
        .unwrap();
        let flags = Options {
            admin: Some("9100".into()),
            ..Options::default()
        };
        let c = Config::resolve(Some(file), flags, vec![]).unwrap();
        assert_eq!(c.admin.as_deref(), Some("9100"));
        assert_eq!(c.report_dir, Some(PathBuf::from("/tmp/r")));
        assert_eq!(c.report_max_bytes.as_deref(), Some("1M"));
        assert_eq!(c.alert_webhook.as_deref(), Some("http://127.0.0.1:1/h"));
        assert_eq!(c.alert_exec.as_deref(), Some("true"));
        // Printed without the webhook's path (its secret, often): read back, all but it.
        let text = c.to_toml();
        assert!(
            text.contains("# alert-webhook: http://127.0.0.1:1/… (set; not printed whole"),
            "{text}"
        );
        assert!(!text.contains("/h\""), "{text}");
        let back: Options = toml::from_str(&text).unwrap();
        let mut without = c.to_options();
        without.alert_webhook = None;
        assert_eq!(back, without);
    }

    #[test]
    fn an_alert_command_is_printed_without_its_arguments() {
        let file: Options = toml::from_str(
            "alert-exec = 'curl -H \"Authorization: Bearer s3cr3t\" https://h/x'\n\
             command = [\"a\"]",
        )
        .unwrap();
        let c = Config::resolve(Some(file), Options::default(), vec![]).unwrap();
        let text = c.to_toml();
        assert!(
            text.contains("\n# alert-exec: curl … (set; not printed whole"),
            "{text}"
        );
        assert!(!text.contains("s3cr3t"), "{text}");
        assert_eq!(
            secret_command_shown("TOKEN=s3cr3t notify").as_deref(),
            Some("…")
        );
        // Nothing to hide: printed as it is.
        assert_eq!(secret_command_shown("/usr/local/bin/page-oncall"), None);
    }

    #[test]
    fn report_max_bytes_in_the_file_is_a_size_or_a_number_of_bytes() {
        let read = |text: &str| toml::from_str::<Options>(text).map(|o| o.report_max_bytes);
        assert_eq!(
            read("report-max-bytes = 1048576"),
            Ok(Some("1048576".into()))
        );
        assert_eq!(read("report-max-bytes = \"10M\""), Ok(Some("10M".into())));
        assert_eq!(read(""), Ok(None));
        for bad in ["report-max-bytes = -1", "report-max-bytes = true"] {
            let e = read(bad).unwrap_err().to_string();
            assert!(e.contains("a size such as \"512K\""), "{bad}: {e}");
        }
        let e = toml::from_str::<Options>("max-memory = -1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("or \"auto\""), "{e}");
    }

    #[test]
    fn a_webhook_url_is_printed_without_its_secrets() {
        let shown = |url: &str| secret_url_shown(url);
        assert_eq!(
            shown("https://alice:s3cr3t@hooks.example.com:8443/services/T0/B0/x?token=t"),
            Some("https://…@hooks.example.com:8443/…".into())
        );
        assert_eq!(
            shown("https://hooks.slack.com/services/T0/B0/secret"),
            Some("https://hooks.slack.com/…".into())
        );
        // Nothing secret to hide: printed as it is.
        assert_eq!(shown("http://127.0.0.1:9000/"), None);
        assert_eq!(shown("http://alerts.internal"), None);
    }

    #[test]
    fn workers_auto_is_one_per_available_cpu() {
        let cpus = std::thread::available_parallelism().unwrap().get();
        for (file, flag) in [
            ("workers = \"auto\"\ncommand = [\"a\"]", None),
            ("workers = 7\ncommand = [\"a\"]", Some("auto")),
        ] {
            let file: Options = toml::from_str(file).unwrap();
            let flags = Options {
                workers: flag.map(|f| f.parse().unwrap()),
                ..Options::default()
            };
            let c = Config::resolve(Some(file), flags, vec![]).unwrap();
            assert_eq!(c.workers, cpus.min(MAX_WORKERS as usize));
            assert!(c.workers_auto);
            // The effective configuration names the number it resolved to.
            assert!(c.to_toml().contains(&format!("workers = {}\n", c.workers)));
        }
        let c = Config::resolve(None, Options::default(), vec!["a".into()]).unwrap();
        assert_eq!((c.workers, c.workers_auto), (1, false));
    }

    #[test]
    fn bad_worker_counts_are_clear() {
        for (text, needle) in [
            ("0", "at least 1"),
            ("-3", "not a number of workers or `auto`"),
            ("many", "not a number of workers or `auto`"),
            ("", "not a number of workers or `auto`"),
        ] {
            let e = text.parse::<Workers>().unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
        assert_eq!("AUTO".parse::<Workers>(), Ok(Workers::Auto));
        for (file, needle) in [
            ("workers = 0", "at least 1"),
            ("workers = -1", "at least 1"),
            ("workers = \"many\"", "not a number of workers or `auto`"),
            ("workers = 1.5", "a number of workers or \"auto\""),
        ] {
            let e = toml::from_str::<Options>(file).unwrap_err();
            assert!(e.message().contains(needle), "{file}: {e}");
        }
        let huge: Options = toml::from_str("workers = 99999999999\ncommand = [\"a\"]").unwrap();
        let e = Config::resolve(Some(huge), Options::default(), vec![]).unwrap_err();
        assert!(e.to_string().contains("more than 1024"), "{e}");
    }

    #[test]
    fn max_memory_from_flags_and_file() {
        let file: Options = toml::from_str("max-memory = \"512M\"\ncommand = [\"a\"]").unwrap();
        let c = Config::resolve(Some(file), Options::default(), vec![]).unwrap();
        assert_eq!(c.max_memory, Some(512 << 20));
        assert!(
            c.to_toml().contains("max-memory = \"512M\"\n"),
            "{}",
            c.to_toml()
        );
        let bytes: Options = toml::from_str("max-memory = 1000000\ncommand = [\"a\"]").unwrap();
        let c = Config::resolve(Some(bytes), Options::default(), vec![]).unwrap();
        assert_eq!(c.max_memory, Some(1_000_000));
        assert_eq!(format_size(1_000_000), "1000000");
        assert_eq!(parse_size(&format_size(3 << 30)), Ok(3 << 30));
        let zero = Options {
            max_memory: Some(MemoryLimit::Bytes(0)),
            ..Options::default()
        };
        assert!(matches!(
            Config::resolve(None, zero, vec!["a".into()]),
            Err(ConfigError::Usage(m)) if m.contains("--max-memory must be more than 0")
        ));
        let e = toml::from_str::<Options>("max-memory = \"lots\"").unwrap_err();
        assert!(e.message().contains("invalid size \"lots\""), "{e}");
    }

    /// Every reading of a config file is bounded: more than [`MAX_CONFIG_BYTES`] is refused
    /// (a usage error) before it is read, and a reload's reading (which waits for a FIFO)
    /// refuses a device such as `/dev/zero`, which it read until memory ran out.
    #[test]
    fn a_config_file_is_read_up_to_1_mib_and_never_from_a_device() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.toml");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_CONFIG_BYTES + 1)
            .unwrap();
        let too_big = format!(
            "config file {} is larger than 1 MiB (1048576 bytes), the most a config file may hold",
            big.display()
        );
        for e in [
            Options::from_file(&big).unwrap_err(),
            ConfigFile::read(&big).unwrap_err(),
            ConfigFile::read_waiting(&big).unwrap_err(),
        ] {
            assert!(matches!(e, ConfigError::Usage(_)), "{e:?}");
            assert_eq!(e.to_string(), too_big);
        }
        let e = ConfigFile::read_waiting(Path::new("/dev/zero")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "config file /dev/zero is a device, not a regular file"
        );
        std::fs::write(
            &big,
            format!("{}\n", "#".repeat(MAX_CONFIG_BYTES as usize - 1)),
        )
        .unwrap();
        assert!(ConfigFile::read_waiting(&big).is_ok());
    }

    /// `Options::from_file` on a FIFO with no writer blocked for ever (the CLI refused FIFOs
    /// before calling it, the public API did not): a FIFO, directory, socket or device is
    /// refused at once, naming it.
    #[test]
    fn from_file_refuses_what_is_not_a_regular_file_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.toml");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success(), "mkfifo: {made}");
        let sock = dir.path().join("sock.toml");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let cases = [
            (fifo, "a FIFO"),
            (dir.path().to_owned(), "a directory"),
            (sock, "a socket"),
            ("/dev/null".into(), "a device"),
        ];
        for (path, what) in cases {
            // On a thread of its own: without the fix the FIFO's read never returns, and the
            // test fails rather than hangs.
            let (tx, rx) = std::sync::mpsc::channel();
            let p = path.clone();
            std::thread::spawn(move || {
                let _ = tx.send(Options::from_file(&p).map(|_| ()));
            });
            let result = rx
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("from_file({}) still waits", path.display()));
            let e = result.unwrap_err();
            assert!(matches!(e, ConfigError::Usage(_)), "{e:?}");
            assert_eq!(e.exit_code(), 2);
            assert_eq!(
                e.to_string(),
                format!(
                    "config file {} is {what}, not a regular file",
                    path.display()
                )
            );
        }
        // A regular file still reads.
        let file = dir.path().join("u.toml");
        std::fs::write(&file, "workers = 3\n").unwrap();
        assert_eq!(
            Options::from_file(&file).unwrap().workers,
            Some(Workers::Count(3))
        );
    }

    #[test]
    fn file_errors_name_the_line_column_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.toml");
        let error = |text: &str| {
            std::fs::write(&big, text).unwrap();
            let e = Options::from_file(&big).unwrap_err().to_string();
            let prefix = format!("invalid config file {}, ", big.display());
            assert!(e.starts_with(&prefix), "{e}");
            assert_eq!(e.lines().count(), 1, "one line: {e}");
            e[prefix.len()..].to_owned()
        };
        assert_eq!(
            error("workers = 2\nwatchdog = \"2s\"\nstop-timeout = 30\n"),
            "line 3, column 16, key stop-timeout: a duration needs a unit, as in \"10ms\" or \"2s\""
        );
        assert_eq!(
            error("listen = 8080\n"),
            "line 1, column 10, key listen: invalid type: integer `8080`, expected an address \
             such as \"127.0.0.1:8080\", or a list of them"
        );
        // A truncated array: where the file ends, the key that opened it.
        assert_eq!(
            error("workers = 2\ncommand = [\"a\",\n"),
            "line 3, column 1, key command: invalid array, expected `]`"
        );
        // Inside an array over several lines: the key that opened it.
        assert_eq!(
            error("command = [\n  \"a\",\n  5,\n]\n"),
            "line 3, column 3, key command: invalid type: integer `5`, expected a string"
        );
        assert!(error("\n  wrokers = 2\n")
            .starts_with("line 2, column 3, key wrokers: unknown field `wrokers`"));
        assert!(
            error("\"stop-timeout\" = 30\n").starts_with("line 1, column 18, key stop-timeout: ")
        );
        assert!(error("[server]\nport = 1\n")
            .starts_with("line 1, column 2, key server: unknown field `server`"));
    }

    #[test]
    fn listen_takes_one_address_or_a_list() {
        let one: Options = toml::from_str("listen = \"127.0.0.1:8080\"").unwrap();
        assert_eq!(one.listen, ["127.0.0.1:8080"]);
        let many: Options = toml::from_str("listen = [\":80\", \"unix:/run/a.sock\"]").unwrap();
        assert_eq!(many.listen, [":80", "unix:/run/a.sock"]);
        let c = Config::resolve(Some(one), Options::default(), vec!["a".into()]).unwrap();
        let back: Options = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c.to_options());
    }

    #[test]
    fn unknown_key_is_rejected() {
        let e = toml::from_str::<Options>("wrokers = 2").unwrap_err();
        assert!(e.message().contains("unknown field"), "{e}");
    }

    #[test]
    fn bad_values_are_usage_errors() {
        let cmd = || vec!["x".to_string()];
        for o in [
            Options {
                workers: Some(Workers::Count(0)),
                ..Options::default()
            },
            Options {
                dump_signal: Some("SIGNOPE".into()),
                ..Options::default()
            },
            Options {
                listen: vec!["nonsense".into()],
                ..Options::default()
            },
            Options {
                probe: Some("healthz".into()),
                ..Options::default()
            },
            Options {
                listen: vec!["127.0.0.1:1".into()],
                port_env: Some("PORT".into()),
                ..Options::default()
            },
        ] {
            assert!(matches!(
                Config::resolve(None, o, cmd()),
                Err(ConfigError::Usage(_))
            ));
        }
        assert!(matches!(
            Config::resolve(None, Options::default(), vec![]),
            Err(ConfigError::Usage(_))
        ));
    }

    #[test]
    fn a_bare_port_is_answered_with_the_addresses_meant() {
        let e = "8080".parse::<ListenAddr>().unwrap_err();
        assert_eq!(
            e,
            "`8080` is not host:port or unix:/path: `127.0.0.1:8080` for this machine only, \
             `:8080` for every interface"
        );
        assert!(":8080".parse::<ListenAddr>().is_ok());
        let e = "nonsense".parse::<ListenAddr>().unwrap_err();
        assert!(
            e.starts_with("`nonsense` is not host:port or unix:/path ("),
            "{e}"
        );
    }

    #[test]
    fn stop_signal_is_a_signal_that_stops() {
        let with = |s: &str| {
            let o = Options {
                stop_signal: Some(s.into()),
                ..Options::default()
            };
            Config::resolve(None, o, vec!["x".into()])
        };
        assert_eq!(
            Config::resolve(None, Options::default(), vec!["x".into()])
                .unwrap()
                .stop_signal,
            Signal::SIGTERM
        );
        assert_eq!(with("quit").unwrap().stop_signal, Signal::SIGQUIT);
        assert_eq!(with("SIGWINCH").unwrap().stop_signal, Signal::SIGWINCH);
        assert!(matches!(
            with("SIGSTOP"),
            Err(ConfigError::Usage(m)) if m == "--stop-signal SIGSTOP: pauses or resumes a process, never stops it"
        ));
        assert!(matches!(
            with("SIGNOPE"),
            Err(ConfigError::Usage(m)) if m.starts_with("--stop-signal: `SIGNOPE` is not a signal name")
        ));
        let text = with("SIGQUIT").unwrap().to_toml();
        assert!(text.contains("stop-signal = \"SIGQUIT\""), "{text}");
    }

    #[test]
    fn max_lifetime_is_off_at_zero_and_at_least_a_second() {
        let with = |d: Duration| {
            let o = Options {
                max_lifetime: Some(d),
                ..Options::default()
            };
            Config::resolve(None, o, vec!["x".into()])
        };
        assert_eq!(with(Duration::ZERO).unwrap().max_lifetime, None);
        let hour = with(Duration::from_secs(3600)).unwrap();
        assert_eq!(hour.max_lifetime, Some(Duration::from_secs(3600)));
        assert!(hour.to_toml().contains("max-lifetime = \"1h\""));
        assert!(matches!(
            with(Duration::from_millis(10)),
            Err(ConfigError::Usage(m)) if m.starts_with("--max-lifetime 10ms: too short (at least 1s)")
        ));
    }

    #[test]
    fn user_and_group_are_looked_up_and_printed_as_given() {
        let o = Options {
            user: Some("nobody".into()),
            group: Some("0".into()),
            ..Options::default()
        };
        let c = Config::resolve(None, o, vec!["x".into()]).unwrap();
        let r = c.run_as.as_ref().unwrap();
        assert_eq!((r.uid.is_some(), r.gid), (true, 0));
        let text = c.to_toml();
        assert!(text.contains("user = \"nobody\"\ngroup = \"0\""), "{text}");
        let o = Options {
            user: Some("no-such-user-here".into()),
            ..Options::default()
        };
        assert!(matches!(
            Config::resolve(None, o, vec!["x".into()]),
            Err(ConfigError::Usage(m)) if m == "--user no-such-user-here: no such user"
        ));
    }

    #[test]
    fn effective_config_round_trips() {
        let c = Config::resolve(None, Options::default(), vec!["srv".into()]).unwrap();
        let text = c.to_toml();
        let back: Options = toml::from_str(&text).unwrap();
        assert_eq!(back, c.to_options());
        assert!(text.contains("restart-delay = \"10ms\""), "{text}");
    }

    #[test]
    fn the_effective_config_names_every_setting_and_reads_back_the_same() {
        let full: Options = toml::from_str(
            "listen = \":8080\"\nworkers = 2\nwatchdog = \"2s\"\nprobe = \"/livez\"\n\
             max-memory = \"1024Mi\"\nmax-lifetime = \"1h\"\npidfile = \"/run/u.pid\"\n\
             admin = \"off\"\nreport-dir = \"/r\"\nreport-max-bytes = \"10Mi\"\n\
             alert-exec = \"logger\"\ncommand = [\"srv\", \"a\\nb\"]\n",
        )
        .unwrap();
        for file in [Options::default(), full] {
            let c = Config::resolve(Some(file), Options::default(), vec!["srv".into()]).unwrap();
            let text = c.to_toml();
            let flags = <Options as clap::Args>::augment_args(clap::Command::new("t"));
            for key in flags.get_arguments().filter_map(|a| a.get_long()) {
                let set = format!("\n{key} = ");
                let unset = format!("\n# {key}: ");
                let text = format!("\n{text}");
                assert!(text.contains(&set) || text.contains(&unset), "{key}:{text}");
            }
            let back: Options = toml::from_str(&text).unwrap();
            assert_eq!(back, c.to_options());
            let again = Config::resolve(Some(back), Options::default(), vec![]).unwrap();
            assert_eq!(again.to_toml(), text);
        }
        let c = Config::resolve(None, Options::default(), vec!["srv".into()]).unwrap();
        let text = c.to_toml();
        for line in [
            "watchdog = \"0\"  # off\n",
            "# pidfile: none\n",
            "# max-memory: none\n",
        ] {
            assert!(text.contains(line), "{line:?} not in:\n{text}");
        }
        let o = Options {
            report_max_bytes: Some("10Mi".into()),
            ..Options::default()
        };
        let c = Config::resolve(None, o, vec!["srv".into()]).unwrap();
        assert!(c.to_toml().contains("report-max-bytes = \"10M\"\n"));
    }

    #[test]
    fn durations_and_signals_parse() {
        assert_eq!(parse_duration("10ms").unwrap(), Duration::from_millis(10));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_signal("quit").unwrap(), Signal::SIGQUIT);
        assert_eq!(parse_signal("SIGABRT").unwrap(), Signal::SIGABRT);
        assert_eq!(parse_signal("9").unwrap(), Signal::SIGKILL);
    }

    use proptest::prelude::*;

    /// Text of a config file or a flag's value: TOML's and the parsers' separators, digits,
    /// units, multibyte characters (at every offset), CR, NUL.
    fn config_text(len: std::ops::Range<usize>) -> impl Strategy<Value = String> {
        const PIECES: &[&str] = &[
            "workers",
            "stop-timeout",
            "listen",
            "a",
            " ",
            "=",
            "\"",
            "'",
            "[",
            "]",
            "{",
            "}",
            ",",
            ".",
            ":",
            "#",
            "\n",
            "\r\n",
            "\r",
            "\0",
            "\\",
            "0",
            "1",
            "9",
            "99999999999999999999",
            "1.5",
            "e",
            "-",
            "s",
            "ms",
            "m",
            "h",
            "d",
            "y",
            "K",
            "Mi",
            "G",
            "%",
            "?",
            "/",
            "é",
            "日本",
            "🦀",
        ];
        proptest::collection::vec(prop::sample::select(PIECES), len).prop_map(|p| p.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// A config file of any text: an error (or a configuration), never a panic; the
        /// error is one line, and its position is in the file.
        #[test]
        fn any_config_file_gives_a_one_line_error(text in config_text(0..40)) {
            if let Err((at, reason)) = Options::from_toml(&text) {
                prop_assert!(!reason.contains('\n'), "{reason:?}");
                if let Some(at) = at {
                    prop_assert!(at.line >= 1 && at.line <= text.split('\n').count());
                    prop_assert!(at.column >= 1);
                    prop_assert!(at.key.is_none_or(|k| !k.contains('\n')));
                }
            }
        }

        /// Any flag value: a value or an error, never a panic; a duration is never over
        /// MAX_DURATION (the clock's deadlines would overflow).
        #[test]
        fn any_flag_value_parses_or_is_refused(text in config_text(0..8)) {
            if let Ok(d) = parse_duration(&text) {
                prop_assert!(d <= MAX_DURATION, "{text:?}: {d:?}");
            }
            let _ = parse_size(&text);
            let _ = parse_mode(&text);
            let _ = parse_signal(&text);
            let _ = text.parse::<MemoryLimit>();
            let _ = text.parse::<Workers>();
            let _ = check_probe_path(&text);
        }

        /// The percent-encoded path the error suggests for a `--probe` that cannot go into a
        /// request line is one that can.
        #[test]
        fn a_suggested_probe_path_is_accepted(text in config_text(0..12)) {
            let path = format!("/{}", text.replace('#', ""));
            if let Err(e) = check_probe_path(&path) {
                let suggested = e.split("give `").nth(1).and_then(|s| s.strip_suffix('`'));
                let suggested = suggested.unwrap_or_else(|| panic!("no suggestion: {e}"));
                prop_assert_eq!(check_probe_path(suggested), Ok(()));
            }
        }
    }
}
