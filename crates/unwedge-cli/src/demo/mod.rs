//! `unwedge demo` and `unwedge chaos`: the supervisor (in-process, through the library) with
//! workers of the built-in demo service (this binary, re-executed as `unwedge demo-service`),
//! driven by the in-process load client while panics, a poisoning panic, a deadlock, `kill -9`,
//! `SIGSTOP` and reloads are injected; the demo runs the same scenario against an axum +
//! `CatchPanicLayer` service for comparison. See `docs/demo.md`.

/// `println!` that ignores a closed stdout (`unwedge demo | head`) instead of panicking.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

/// `print!` that ignores a closed stdout.
macro_rules! outp {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($t)*);
    }};
}

pub(crate) mod client;
mod compare;
mod scenario;
mod table;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use unwedge_supervisor::{Config, Control, Event, Handle, ListenAddr, Options, Supervisor};

/// Flags of `unwedge demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// How long the traffic runs.
    #[arg(long, default_value = "20s", value_parser = parse_demo_duration)]
    duration: Duration,
    /// Exit 1 unless the unwedge side had no unexpected failure, refused or reset connection
    /// and no invariant violation, and the comparison side showed its corruption.
    #[arg(long)]
    check: bool,
    /// Leave the supervisor and its workers running afterwards, until Ctrl-C.
    #[arg(long)]
    keep: bool,
    /// Worker processes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    workers: u32,
    /// Concurrent load clients per side.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    concurrency: u32,
    /// Skip the axum + CatchPanicLayer comparison.
    #[arg(long)]
    no_compare: bool,
}

/// Flags of `unwedge chaos`.
#[derive(Debug, clap::Args)]
pub(crate) struct ChaosArgs {
    /// How long the soak runs.
    #[arg(long, default_value = "60s", value_parser = parse_demo_duration)]
    duration: Duration,
    /// Exit 1 unless: zero invariant violations, zero unexpected failures, zero refused, zero
    /// lost reports, supervisor RSS growth under 5 MB.
    #[arg(long)]
    check: bool,
    /// Worker processes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(2..=16))]
    workers: u32,
    /// Concurrent load clients.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    concurrency: u32,
    /// Mean time between injected faults.
    #[arg(long, default_value = "1500ms", value_parser = parse_demo_duration)]
    every: Duration,
    /// Random seed (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
}

fn parse_demo_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (e.g. 20s, 1m)"))?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(24 * 3600) {
        return Err(format!("`{s}`: expected between 100ms and 24h"));
    }
    Ok(d)
}

/// Every supervisor event, with the instant it happened (an alert hook: never lags).
pub(crate) type EventLog = Arc<Mutex<Vec<(Instant, Event)>>>;

/// A supervisor built (sockets bound) but not yet running.
struct Prepared {
    supervisor: Supervisor,
    observe: crate::observe::Settings,
    handle: Handle,
    addr: SocketAddr,
    events: EventLog,
    dir: PathBuf,
}

/// Binds and configures the supervisor. Runs before any thread exists.
fn prepare(workers: u32, what: &str) -> Result<Prepared, String> {
    // A new directory of a random name, ours only (0700), kept for the user to read: never
    // one another local user could have made first, with links to files of ours in it.
    let dir = tempfile::Builder::new()
        .prefix(&format!("unwedge-{what}-"))
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir()
        .map_err(|e| {
            let tmp = std::env::temp_dir();
            format!("cannot create a directory in {}: {e}", tmp.display())
        })?
        .keep();
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let worker_log = dir.join("workers.log");
    let sup_log = dir.join("supervisor.log");
    // The workers' output (panic messages, the deadlock dump) goes to a file, not the screen.
    // `exec` keeps the pid that the exec shim gave LISTEN_PID.
    let command = vec![
        "/bin/sh".to_owned(),
        "-c".to_owned(),
        "UNWEDGE_LOCK_TIMEOUT=1s exec \"$0\" demo-service >>\"$1\" 2>&1".to_owned(),
        exe.to_string_lossy().into_owned(),
        worker_log.to_string_lossy().into_owned(),
    ];
    let options = Options {
        listen: vec!["127.0.0.1:0".to_owned()],
        workers: Some(unwedge_supervisor::config::Workers::Count(workers)),
        watchdog: Some(Duration::from_secs(1)),
        dump_grace: Some(Duration::from_millis(500)),
        restart_delay_max: Some(Duration::from_millis(250)),
        max_restarts: Some(10_000),
        stop_timeout: Some(Duration::from_secs(5)),
        admin: Some("127.0.0.1:0".to_owned()),
        report_dir: Some(dir.join("reports")),
        ..Options::default()
    };
    let config = Config::resolve(None, options, command).map_err(|e| e.to_string())?;
    let observe = crate::observe::Settings::from_config(&config)?;
    let file = std::fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&sup_log)
        .map_err(|e| format!("cannot open {}: {e}", sup_log.display()))?;
    // As `unwedge run`'s (a filter that names nothing of the supervisor keeps its warnings
    // and errors), but tower-http's lines off by default: the demo's own server logs them.
    let (filter, warning) = match std::env::var_os(crate::log_filter::LOG_ENV) {
        None => (
            tracing_subscriber::EnvFilter::new("info,tower_http=off"),
            None,
        ),
        value => crate::log_filter::log_filter(value),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Mutex::new(file))
        .with_ansi(false)
        .with_target(false)
        .try_init();
    if let Some(warning) = warning {
        tracing::warn!("{warning}");
    }
    let events: EventLog = Arc::new(Mutex::new(Vec::new()));
    let log = events.clone();
    let supervisor = Supervisor::new(config)
        .map_err(|e| e.to_string())?
        .with_alert_hook(move |e: &Event| {
            // The report itself (a few kB with its backtrace) is the report directory's
            // business: the analysis only needs that it happened.
            let e = match e {
                Event::Report { worker, pid, .. } => Event::Report {
                    worker: worker.clone(),
                    pid: *pid,
                    json: String::new(),
                },
                e => e.clone(),
            };
            log.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((Instant::now(), e));
        });
    let addr = supervisor
        .local_addrs()
        .into_iter()
        .find_map(|a| match a {
            ListenAddr::Tcp(a) => Some(a),
            ListenAddr::Unix(_) => None,
        })
        .ok_or("the supervisor has no TCP address")?;
    let handle = supervisor.handle();
    Ok(Prepared {
        supervisor,
        observe,
        handle,
        addr,
        events,
        dir,
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    crate::out::eprint_line(format_args!("unwedge: error: {msg}"));
    ExitCode::from(1)
}

/// Waits until `n` workers of the serving generation are ready.
async fn wait_ready(handle: &Handle, n: usize, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let s = handle.snapshot();
        let ready = s
            .workers
            .iter()
            .filter(|w| {
                w.generation == s.generation && w.state == unwedge_supervisor::WorkerState::Ready
            })
            .count();
        if ready >= n {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// On drop (the demo panicked or returned early without [`stop`]), SIGKILLs every worker's
/// process group, so that no worker outlives the in-process supervisor.
struct KillWorkersOnDrop(Handle);

impl Drop for KillWorkersOnDrop {
    fn drop(&mut self) {
        for w in self.0.snapshot().workers {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(w.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Stops the supervisor and waits for it, then for the last reports (bounded).
async fn stop(
    handle: &Handle,
    task: tokio::task::JoinHandle<
        Result<unwedge_supervisor::Outcome, unwedge_supervisor::StartError>,
    >,
    observer: crate::observe::Observer,
) {
    handle.send(Control::Stop);
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    observer.finish().await;
}

/// The run ended early: stops the supervisor; exit status 130 after Ctrl-C, 143 after
/// SIGTERM, else 1 with the error.
async fn interrupted_or_fail(
    e: String,
    handle: &Handle,
    task: tokio::task::JoinHandle<
        Result<unwedge_supervisor::Outcome, unwedge_supervisor::StartError>,
    >,
    observer: crate::observe::Observer,
) -> ExitCode {
    let signalled = match e.as_str() {
        scenario::INTERRUPTED => Some(("interrupted", 130)),
        scenario::TERMINATED => Some(("terminated", 143)),
        _ => None,
    };
    if let Some((word, _)) = signalled {
        out!("\n{word}: stopping the supervisor and its workers");
    }
    stop(handle, task, observer).await;
    match signalled {
        Some((_, code)) => ExitCode::from(code),
        None => fail(e),
    }
}

/// Prepares the supervisor, then runs `main` on a fresh runtime and shuts it down promptly.
fn run_in_runtime<F, Fut>(workers: u32, what: &str, main: F) -> ExitCode
where
    F: FnOnce(Prepared) -> Fut,
    Fut: std::future::Future<Output = ExitCode>,
{
    compare::install_quiet_panic_hook();
    let prepared = match prepare(workers, what) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(e),
    };
    let code = rt.block_on(main(prepared));
    rt.shutdown_timeout(Duration::from_millis(200));
    code
}

/// A supervisor running in this process, its workers ready.
struct Running {
    handle: Handle,
    addr: SocketAddr,
    events: EventLog,
    dir: PathBuf,
    admin: Option<SocketAddr>,
    observer: crate::observe::Observer,
    task: tokio::task::JoinHandle<
        Result<unwedge_supervisor::Outcome, unwedge_supervisor::StartError>,
    >,
    _guard: KillWorkersOnDrop,
}

/// Starts the admin endpoint and report directory (as `unwedge run` has them), runs the
/// supervisor and waits (20 s at most) for `workers` ready workers; `who` names them in the
/// error.
async fn launch(p: Prepared, workers: u32, who: &str) -> Result<Running, ExitCode> {
    let Prepared {
        supervisor,
        observe,
        handle,
        addr,
        events,
        dir,
    } = p;
    let (supervisor, observer) =
        crate::observe::start(observe, supervisor, crate::log_lines_dropped)
            .await
            .map_err(|e| fail(e.message))?;
    let admin = observer.admin_addr();
    let _guard = KillWorkersOnDrop(handle.clone());
    let task = tokio::spawn(supervisor.run());
    if !wait_ready(&handle, workers as usize, Duration::from_secs(20)).await {
        stop(&handle, task, observer).await;
        return Err(fail(format!(
            "{who} did not become ready within 20 s; see {}",
            dir.display()
        )));
    }
    Ok(Running {
        handle,
        addr,
        events,
        dir,
        admin,
        observer,
        task,
        _guard,
    })
}

/// `unwedge demo`.
pub(crate) fn demo(args: DemoArgs) -> ExitCode {
    let workers = args.workers;
    run_in_runtime(workers, "demo", |p| demo_main(args, p))
}

async fn demo_main(args: DemoArgs, p: Prepared) -> ExitCode {
    let Running {
        handle,
        addr,
        events,
        dir,
        admin,
        observer,
        task,
        _guard,
    } = match launch(p, args.workers, "the demo workers").await {
        Ok(r) => r,
        Err(code) => return code,
    };
    out!(
        "unwedge demo: {} workers of the demo service under the supervisor",
        args.workers
    );
    out!("  service:     http://{addr}/");
    match admin {
        Some(a) => out!("  status page: http://{a}/"),
        None => out!(
            "  status page: unavailable (see {}/supervisor.log)",
            dir.display()
        ),
    }
    out!(
        "  reports:     unwedge reports --dir {}/reports",
        dir.display()
    );
    out!(
        "  logs:        {}/supervisor.log, workers.log",
        dir.display()
    );
    let cmp_addr = if args.no_compare {
        None
    } else {
        match compare::spawn().await {
            Ok(a) => {
                out!("  comparison:  http://{a}/ (axum + CatchPanicLayer, in this process)");
                Some(a)
            }
            Err(e) => {
                stop(&handle, task, observer).await;
                return fail(format!("cannot bind the comparison service: {e}"));
            }
        }
    };
    out!(
        "running {} of mixed traffic ({} clients per side) with injected faults…\n",
        humantime::format_duration(args.duration),
        args.concurrency
    );
    let plan = scenario::demo_plan(args.duration);
    let sides = scenario::run_demo(
        scenario::Target {
            addr,
            handle: Some(handle.clone()),
            events: events.clone(),
            workers: args.workers as usize,
        },
        cmp_addr,
        args.duration,
        args.concurrency as usize,
        plan,
    )
    .await;
    let sides = match sides {
        Ok(s) => s,
        Err(e) => return interrupted_or_fail(e, &handle, task, observer).await,
    };
    let settled = wait_ready(&handle, args.workers as usize, Duration::from_secs(10)).await;
    let snapshot = handle.snapshot();
    let log = events.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let analysis = table::analyse(&sides.unwedge, &log, &snapshot.counters);
    let cmp_analysis = sides
        .compare
        .as_ref()
        .map(|c| table::analyse(c, &[], &snapshot.counters));
    out!();
    outp!(
        "{}",
        table::render(&analysis, cmp_analysis.as_ref(), args.workers, settled)
    );
    let mut problems = table::problems(&analysis, settled);
    if let Some(c) = &cmp_analysis {
        problems.extend(table::comparison_problems(c));
    }
    if args.keep {
        out!(
            "\nstill running: http://{addr}/ — press Ctrl-C to stop the supervisor and its workers"
        );
        let _ = task.await;
        observer.finish().await;
    } else {
        stop(&handle, task, observer).await;
    }
    check_outcome(args.check, &problems)
}

/// With `--check`: prints the verdict and fails (exit 1) on any problem; without, succeeds.
fn check_outcome(check: bool, problems: &[String]) -> ExitCode {
    if !check {
        return ExitCode::SUCCESS;
    }
    if problems.is_empty() {
        out!("\ncheck: passed");
        return ExitCode::SUCCESS;
    }
    for p in problems {
        out!("check failed: {p}");
    }
    ExitCode::from(1)
}

/// `unwedge chaos`.
pub(crate) fn chaos(args: ChaosArgs) -> ExitCode {
    let workers = args.workers;
    run_in_runtime(workers, "chaos", |p| chaos_main(args, p))
}

async fn chaos_main(args: ChaosArgs, p: Prepared) -> ExitCode {
    let Running {
        handle,
        addr,
        events,
        dir,
        admin,
        observer,
        task,
        _guard,
    } = match launch(p, args.workers, "the workers").await {
        Ok(r) => r,
        Err(code) => return code,
    };
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    out!(
        "unwedge chaos: {} workers on http://{addr}/, {} of load, a fault every ~{} (seed {seed})",
        args.workers,
        humantime::format_duration(args.duration),
        humantime::format_duration(args.every),
    );
    out!("  logs: {}/supervisor.log, workers.log", dir.display());
    if let Some(a) = admin {
        out!("  status page: http://{a}/");
    }
    // Memory: this whole process (supervisor, load client, bookkeeping), after a warm-up
    // and at the end; the supervisor's own growth can only be smaller.
    let warmup = (args.duration / 10).clamp(Duration::from_secs(2), args.duration / 2);
    let rss_warm = tokio::spawn(async move {
        tokio::time::sleep(warmup).await;
        table::rss_kb()
    });
    // And every tenth of the run, to tell a leak (steady growth) from a plateau.
    let rss_trend = {
        let every = args.duration / 10;
        tokio::spawn(async move {
            let mut v = Vec::new();
            for _ in 0..10 {
                tokio::time::sleep(every).await;
                v.push(table::rss_kb().unwrap_or(0));
            }
            v
        })
    };
    let plan = scenario::chaos_plan(args.duration, args.every, seed);
    let result = scenario::run_chaos(
        scenario::Target {
            addr,
            handle: Some(handle.clone()),
            events: events.clone(),
            workers: args.workers as usize,
        },
        args.duration,
        args.concurrency as usize,
        plan,
    )
    .await;
    let result = match result {
        Ok(r) => r,
        Err(e) => return interrupted_or_fail(e, &handle, task, observer).await,
    };
    let settled = wait_ready(&handle, args.workers as usize, Duration::from_secs(10)).await;
    let rss_after = table::rss_kb();
    let rss_before = rss_warm.await.ok().flatten();
    let snapshot = handle.snapshot();
    let log = events.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let analysis = table::analyse(&result, &log, &snapshot.counters);
    stop(&handle, task, observer).await;
    // Every panic answered 500 must have its report on disk.
    let on_disk = unwedge_admin::read_reports(&dir.join("reports"), None)
        .map(|records| {
            records
                .iter()
                .filter(|r| matches!(r, unwedge_admin::Record::Panic(_)))
                .count() as u64
        })
        .ok();
    let trend = if rss_trend.is_finished() {
        rss_trend.await.unwrap_or_default()
    } else {
        rss_trend.abort();
        Vec::new()
    };
    let mem = table::Memory {
        warm: rss_before,
        end: rss_after,
        trend,
    };
    out!();
    outp!("{}", table::render_chaos(&analysis, &mem, on_disk, settled));
    let mut problems = table::problems(&analysis, settled);
    problems.extend(table::chaos_problems(&analysis, &mem, on_disk));
    check_outcome(args.check, &problems)
}
