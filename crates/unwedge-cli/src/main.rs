//! The `unwedge` command: a supervisor that keeps HTTP servers serving.
//!
//! ```text
//! $ unwedge run --listen 127.0.0.1:8080 --workers 2 --watchdog 2s -- ./my-server
//! $ unwedge run --port-env PORT --probe / -- go run server.go
//! $ unwedge check-config unwedge.toml
//! $ unwedge reload --pidfile /run/unwedge.pid
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use miette::IntoDiagnostic;
use unwedge_supervisor::{Config, ConfigFile, LogFormat, Options, Supervisor};

mod check_config;
mod log_filter;
mod observe;

mod demo;
mod out;
mod reload;
mod status;
mod usage;

/// Keeps HTTP servers serving: sockets held across restarts, workers restarted in
/// milliseconds, hung workers found and replaced.
#[derive(Debug, Parser)]
#[command(name = "unwedge", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

// Each `$ unwedge …` example is a paragraph of its own: clap joins the lines of a paragraph.
#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run CMD as a pool of supervised workers.
    ///
    /// $ unwedge run --listen 127.0.0.1:8080 --workers 2 -- ./server --flag
    ///
    /// The sockets are bound once and passed to every worker as fd 3, 4, … with LISTEN_FDS,
    /// LISTEN_FDNAMES and LISTEN_PID (systemd socket activation); workers report READY=1 and
    /// WATCHDOG=1 over NOTIFY_SOCKET. SIGHUP reloads with zero downtime, SIGTERM/SIGINT stop.
    /// Exit status: 0 stopped cleanly, 1 error or a worker had to be killed, 2 usage,
    /// 3 gave up (restart intensity exceeded, or a worker failed to start more than
    /// --max-restarts times in a row).
    Run(Box<RunArgs>),
    /// Validate a config file (as a start would: the command, the report directory, the
    /// addresses bound and released at once) and print the effective configuration.
    ///
    /// $ unwedge check-config unwedge.toml
    CheckConfig {
        /// The TOML file (keys are the long flag names of `unwedge run`).
        file: PathBuf,
    },
    /// Ask a running supervisor to reload (sends SIGHUP); with --wait, wait for the outcome.
    ///
    /// $ unwedge reload --pidfile /run/unwedge.pid
    ///
    /// $ unwedge reload --pidfile /run/unwedge.pid --wait    # exit 1 if the reload failed
    ///
    /// $ unwedge reload    # in a container whose pid 1 is `unwedge run`
    ///
    /// Only an `unwedge run` process is signalled: without --pid or --pidfile, pid 1 when it is
    /// one (exit 2 otherwise); a pid that is another program is refused (exit 1).
    Reload {
        /// Pid of the supervisor [default: 1, when pid 1 is an unwedge supervisor].
        #[arg(long, conflicts_with = "pidfile")]
        pid: Option<i32>,
        /// File with the pid of the supervisor (see `unwedge run --pidfile`).
        #[arg(long, value_name = "FILE")]
        pidfile: Option<PathBuf>,
        /// Wait until the new generation serves (exit 0) or the reload failed or was refused
        /// (exit 1, with the reason), as the supervisor's admin endpoint reports it.
        #[arg(long)]
        wait: bool,
        /// The supervisor's admin endpoint, for --wait (as `unwedge run --admin` takes it: a
        /// port alone is on 127.0.0.1).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090", value_parser = status::parse_admin_target, requires = "wait")]
        admin: std::net::SocketAddr,
        /// How long --wait waits without a sign of progress (a reload starting, a worker of
        /// the new generation starting or becoming ready, an old one stopping): a rolling
        /// reload of many slots may take longer in all.
        #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = unwedge_supervisor::config::parse_duration, requires = "wait")]
        timeout: std::time::Duration,
    },
    /// Show a running supervisor's workers, reloads, restarts and latest reports, from its
    /// admin endpoint. Exit 0 when it serves (a worker ready), 1 otherwise.
    ///
    /// $ unwedge status
    ///
    /// $ unwedge status --admin 127.0.0.1:9100 --json
    Status {
        /// The supervisor's admin endpoint, as `unwedge run --admin` takes it (a port alone is
        /// on 127.0.0.1).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090", value_parser = status::parse_admin_target)]
        admin: std::net::SocketAddr,
        /// Print `/status` as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// See unwedge survive panics, a poisoned lock, a deadlock and kill -9 under load, next to
    /// axum + CatchPanicLayer.
    ///
    /// $ unwedge demo                          # 20 s, then a table
    ///
    /// $ unwedge demo --duration 3s --check    # what CI runs
    Demo(demo::DemoArgs),
    /// Chaos soak: random panics, kill -9, SIGSTOP and reloads under continuous load.
    ///
    /// $ unwedge chaos --duration 10m --check
    Chaos(demo::ChaosArgs),
    /// List the crash reports `unwedge run --report-dir DIR` wrote, oldest first.
    ///
    /// $ unwedge reports --dir /var/lib/unwedge/reports --since 1h
    ///
    /// $ unwedge reports --json | jq -r 'select(.kind=="panic") | .report.backtrace'
    Reports {
        /// The report directory [default: $STATE_DIRECTORY/reports, as `unwedge run` uses
        /// under systemd].
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Only reports from the last DURATION (`10m`, `1h`, `2d`).
        #[arg(long, value_name = "DURATION", value_parser = unwedge_supervisor::config::parse_duration)]
        since: Option<std::time::Duration>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Internal: the demo worker (every way a request can panic or hang), for tests and demos.
    #[command(hide = true)]
    DemoService,
    /// Internal: sets LISTEN_PID to its own pid and execs the command.
    #[command(hide = true)]
    ExecShim {
        /// The command.
        #[arg(last = true)]
        command: Vec<String>,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Config file (TOML); flags given on the command line override it.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    options: Options,
    /// The worker command and its arguments, after `--`.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

fn main() -> miette::Result<ExitCode> {
    let args: Vec<OsString> = std::env::args_os().collect();
    // The shim runs for every worker start: keep it first and minimal.
    if args.get(1).is_some_and(|a| a == "exec-shim") {
        let rest: Vec<String> = args[2..]
            .iter()
            .skip_while(|a| *a == "--")
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let err = unwedge_supervisor::shim::exec(&rest);
        crate::out::eprint_line(format_args!("unwedge: {err}"));
        return Ok(ExitCode::from(127));
    }
    let mut cmd = Cli::command();
    let args = usage::attach_negative_values(&cmd, args);
    let cli = match cmd
        .try_get_matches_from_mut(&args)
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(c) => c,
        Err(e) => return Ok(usage::report(&e, &cmd, &args)),
    };
    match cli.command {
        Cmd::Run(a) => run(*a),
        Cmd::CheckConfig { file } => check_config::check_config(file),
        Cmd::Reload {
            pid,
            pidfile,
            wait,
            admin,
            timeout,
        } => Ok(reload::reload(pid, pidfile, wait, admin, timeout)),
        Cmd::Demo(a) => Ok(demo::demo(a)),
        Cmd::Chaos(a) => Ok(demo::chaos(a)),
        Cmd::Status { admin, json } => Ok(status::status(admin, json)),
        Cmd::Reports { dir, since, json } => reports(dir, since, json),
        Cmd::DemoService => demo_service(),
        Cmd::ExecShim { .. } => Ok(ExitCode::from(2)),
    }
}

fn fail(msg: impl std::fmt::Display, code: u8) -> miette::Result<ExitCode> {
    crate::out::eprint_line(format_args!("unwedge: error: {msg}"));
    Ok(ExitCode::from(code))
}

fn run(a: RunArgs) -> miette::Result<ExitCode> {
    // First: until a handler exists, a SIGHUP (a reload asked for as the service starts)
    // would end the supervisor.
    if let Err(e) = unwedge_supervisor::catch_signals_early() {
        return fail(format_args!("cannot handle SIGHUP: {e}"), 1);
    }
    let file = match &a.config {
        Some(p) => match ConfigFile::read(p) {
            Ok(f) => Some(f),
            Err(e) => return fail(&e, e.exit_code()),
        },
        None => None,
    };
    // Kept for reloads: the file is read again, under the same flags and command.
    let (flags, command) = (a.options.clone(), a.command.clone());
    let resolved = match file {
        Some(f) => f.resolve(a.options, a.command),
        None => Config::resolve(None, a.options, a.command),
    };
    let config = match resolved {
        Ok(c) => c,
        Err(e) => return fail(&e, e.exit_code()),
    };
    let observe = match observe::Settings::from_config(&config) {
        Ok(s) => s,
        Err(e) => return fail(e, 2),
    };
    init_logging(config.log_format);
    // Before any thread exists: reads and removes systemd's variables, binds sockets.
    let mut supervisor = match Supervisor::new(config) {
        Ok(s) => s,
        Err(e) => return fail(&e, e.exit_code()),
    };
    if let Some(path) = a.config {
        // SIGHUP reads the file again: the new generation runs with what it says now.
        supervisor = supervisor.reload_config_with(move || {
            let file = ConfigFile::read_waiting(&path).map_err(|e| e.to_string())?;
            let config = file
                .resolve(flags.clone(), command.clone())
                .map_err(|e| e.to_string())?;
            // The settings only a restart applies (admin, reports, alerts) are checked all the
            // same: the next start (a crash, a reboot) reads this file and would refuse it,
            // with the service down.
            observe::Settings::from_config(&config)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(config)
        });
    }
    // Kept to the end: dropping it flushes the queued log lines (for at most a second).
    let _log_flush = log_off_thread();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .into_diagnostic()?;
    let result = rt.block_on(async {
        // Report directory, alerts and admin endpoint before any worker starts: a bad
        // environment is one line and exit status 1.
        let (supervisor, observer) =
            match observe::start(observe, supervisor, log_lines_dropped).await {
                Ok(s) => s,
                Err(e) => return fail(e.message, e.code),
            };
        let outcome = supervisor.run().await;
        // Bounded: the last reports written, the alerts (gave_up included) flushed.
        observer.finish().await;
        match outcome {
            Ok(outcome) => Ok(ExitCode::from(outcome.exit_code())),
            Err(e) => fail(&e, e.exit_code()),
        }
    });
    // A report write that never returns (a hung network file system) was given up on by
    // `finish`; dropping the runtime would wait for its thread for ever, and the exit status
    // (3 after giving up, which an orchestrator acts on) with it.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    result
}

/// The most log lines waiting to be written; beyond, new ones are dropped.
const LOG_QUEUE_LINES: usize = 8192;

/// Where the supervisor's own log lines go once [`log_off_thread`] ran: a queue written to
/// stderr by a thread of its own.
static LOG_QUEUE: std::sync::OnceLock<tracing_appender::non_blocking::NonBlocking> =
    std::sync::OnceLock::new();

/// Log lines dropped so far because the queue was full (0 before [`log_off_thread`]).
pub(crate) fn log_lines_dropped() -> u64 {
    LOG_QUEUE
        .get()
        .map_or(0, |q| q.error_counter().dropped_lines() as u64)
}

/// The supervisor's log writer: straight to stderr until [`log_off_thread`], then the queue.
fn log_writer() -> tracing_subscriber::fmt::writer::EitherWriter<
    tracing_appender::non_blocking::NonBlocking,
    std::io::Stderr,
> {
    use tracing_subscriber::fmt::writer::EitherWriter;
    match LOG_QUEUE.get() {
        Some(queue) => EitherWriter::A(queue.clone()),
        None => EitherWriter::B(std::io::stderr()),
    }
}

/// From now on, log lines are queued and written to stderr by a thread of their own: a stalled
/// stderr (a full pipe, a journal that does not read) must never stop the supervisor's event
/// loop, which restarts workers and detects hangs. When more than [`LOG_QUEUE_LINES`] lines
/// wait, new ones are dropped. Starts a thread: call it after [`Supervisor::new`] (which edits the
/// environment, before any thread may exist).
fn log_off_thread() -> tracing_appender::non_blocking::WorkerGuard {
    let (queue, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        // Its queue is allocated (and touched) whole: the default 128 000 lines cost ~4 MB of
        // RSS. A supervisor logs a few lines per event; 8 192 waiting lines are plenty.
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .lossy(true)
        .thread_name("unwedge-log")
        .finish(std::io::stderr());
    let _ = LOG_QUEUE.set(queue);
    guard
}

/// The supervisor's logger, filtered by `UNWEDGE_LOG` (see [`log_filter`]: its warnings and
/// errors are kept unless the filter names them).
fn init_logging(format: LogFormat) {
    let (filter, warning) = log_filter::log_filter(std::env::var_os(log_filter::LOG_ENV));
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(log_writer)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
    if let Some(warning) = warning {
        tracing::warn!("{warning}");
    }
}

fn reports(
    dir: Option<PathBuf>,
    since: Option<std::time::Duration>,
    json: bool,
) -> miette::Result<ExitCode> {
    let Some(dir) = dir.or_else(observe::default_report_dir) else {
        return fail(
            "give --dir DIR (the directory `unwedge run --report-dir` writes to)",
            2,
        );
    };
    let mut out = std::io::stdout().lock();
    match unwedge_admin::print_reports(&dir, since, json, &mut out) {
        Ok(0) => Ok(ExitCode::SUCCESS),
        Ok(skipped) => {
            if json {
                // The table says it on stdout; JSON lines cannot.
                crate::out::eprint_line(format_args!(
                    "unwedge: {skipped} unreadable line(s) in {} skipped (torn by a crash mid-write, or not records)",
                    dir.display()
                ));
            }
            Ok(ExitCode::SUCCESS)
        }
        // As a config file that is a FIFO: what `--dir` holds is no report file.
        Err(e @ unwedge_admin::ReportError::NotRegular { .. }) => fail(e, 2),
        Err(e) => fail(e, 1),
    }
}

fn demo_service() -> miette::Result<ExitCode> {
    unwedge_demo::init_tracing();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .into_diagnostic()?;
    let code = rt.block_on(unwedge_demo::run());
    // A handler may still block a runtime thread (that is what /block is for): don't wait.
    rt.shutdown_background();
    Ok(code)
}
