//! `Server::before_exit`: `serve()` ends a crashed process with `process::exit(70)`, which runs
//! no destructors, so a buffered log writer (`tracing_appender::non_blocking`) would lose its
//! last lines; the hook runs first.
//!
//! Each test runs this test binary as a real worker process (see `support`) on
//! `127.0.0.1:0`.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use support::Worker;
use unwedge::{Policy, Server};

const MARK: &str = "UNWEDGE_TEST_MARK";
const LOG: &str = "UNWEDGE_TEST_LOG";

fn app() -> Router {
    Router::new().route(
        "/panic",
        get(|| async {
            panic!("boom before exit");
            #[allow(unreachable_code)]
            ""
        }),
    )
}

/// Mode `flush`: logs through `tracing_appender::non_blocking` into `$UNWEDGE_TEST_LOG` and
/// drops its guard in the hook, which then writes `$UNWEDGE_TEST_MARK`. Mode `hang`: a hook
/// that never returns. Both crash on any panic.
fn maybe_worker() {
    let Some(mode) = support::worker_mode() else {
        return;
    };
    let mark = PathBuf::from(std::env::var_os(MARK).unwrap());
    let server = Server::new().policy(Policy::Crash);
    match mode.as_str() {
        "flush" => {
            let (rt, server) = logging_to_file(server, mark);
            let outcome = rt.block_on(server.serve(app()));
            panic!("serve() returned {outcome:?} instead of exiting");
        }
        // As `flush`, but a SIGTERM's shutdown: serve() returns and the process ends as
        // `main` returning would (statics are not dropped).
        "stop" => {
            let (rt, server) = logging_to_file(server, mark);
            let outcome = rt.block_on(server.serve(app()));
            drop(rt);
            std::process::exit(i32::from(outcome.exit_code()))
        }
        // A retry: a first serve() that fails to start (its hook runs), then one that serves
        // and crashes: its own hook runs before the exit.
        "retry" => {
            let first = PathBuf::from(format!("{}.first", mark.display()));
            let rt = logging_to_stderr();
            let failed = rt.block_on(
                Server::new()
                    .bind("unix:")
                    .before_exit(move || std::fs::write(&first, "first hook ran").unwrap())
                    .serve(app()),
            );
            assert_eq!(failed.exit_code(), 2, "{failed:?}");
            let outcome = rt.block_on(server.before_exit(marks(mark)).serve(app()));
            panic!("serve() returned {outcome:?} instead of exiting");
        }
        // Two at once: B serves (its hook queued at its first poll) while A fails to start
        // and returns: A's end must not run B's hook; B crashes, and its hook runs then.
        "concurrent" => {
            let rt = logging_to_stderr();
            rt.block_on(async move {
                let mut b = Box::pin(server.before_exit(marks(mark.clone())).serve(app()));
                assert!(futures_util::poll!(b.as_mut()).is_pending());
                let a = Server::new()
                    .bind("unix:")
                    .before_exit(|| eprintln!("TEST: A's hook ran"))
                    .serve(app())
                    .await;
                assert_eq!(a.exit_code(), 2, "{a:?}");
                eprintln!("TEST: A returned; B's hook ran: {}", mark.exists());
                let outcome = b.await;
                panic!("serve() returned {outcome:?} instead of exiting");
            })
        }
        "hang" => support::run_worker(|| {
            server
                .before_exit(move || {
                    std::fs::write(&mark, "hook began").unwrap();
                    std::thread::sleep(Duration::from_secs(3600));
                })
                .serve(app())
        }),
        other => panic!("unknown mode {other}"),
    }
}

/// Logs to stderr (the test reads it); the runtime to serve on.
fn logging_to_stderr() -> tokio::runtime::Runtime {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    tokio::runtime::Runtime::new().unwrap()
}

/// A hook that writes "hook ran" into `mark`.
fn marks(mark: PathBuf) -> impl FnOnce() + Send + 'static {
    move || std::fs::write(&mark, "hook ran").unwrap()
}

/// The worker's hook wrote "hook ran" into `mark`.
#[track_caller]
fn assert_hook_ran(w: &mut Worker, mark: &std::path::Path) {
    assert_eq!(
        std::fs::read_to_string(mark).ok().as_deref(),
        Some("hook ran"),
        "{}",
        w.log()
    );
}

/// Logs through `tracing_appender::non_blocking` into `$UNWEDGE_TEST_LOG`; `server`'s hook
/// drops the writer's guard, then writes "hook ran" into `mark`.
fn logging_to_file(server: Server, mark: PathBuf) -> (tokio::runtime::Runtime, Server) {
    let file = std::fs::File::create(std::env::var_os(LOG).unwrap()).unwrap();
    let (writer, guard) = tracing_appender::non_blocking(file);
    tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(false)
        .init();
    let server = server.before_exit(move || {
        drop(guard);
        std::fs::write(&mark, "hook ran").unwrap();
    });
    (tokio::runtime::Runtime::new().unwrap(), server)
}

/// The worker crashes (exit 70); the hook ran before the exit, and the lines queued in the
/// non-blocking writer, the panic report and the exit line among them, reached the file.
#[test]
fn a_graceful_crash_runs_the_before_exit_hook_first() {
    maybe_worker();
    let dir = tempfile::tempdir().unwrap();
    let (mark, log) = (dir.path().join("mark"), dir.path().join("log"));
    let mut w = Worker::spawn(
        "a_graceful_crash_runs_the_before_exit_hook_first",
        "flush",
        &[(MARK, mark.to_str().unwrap()), (LOG, log.to_str().unwrap())],
    );
    // The port is in the log file, written off-thread: wait for the line.
    let until = Instant::now() + Duration::from_secs(20);
    let addr = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(addr) = text
            .split_whitespace()
            .find_map(|f| f.strip_prefix("addr="))
        {
            break addr.parse().unwrap();
        }
        assert!(Instant::now() < until, "no serving line: {text}");
        assert_eq!(w.exited(), None, "{}", w.log());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(support::get(addr, "/panic").0, 500);
    assert_eq!(w.wait_exit(Duration::from_secs(30)), 70, "{}", w.log());
    assert_eq!(std::fs::read_to_string(&mark).unwrap(), "hook ran");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("boom before exit"), "{text}");
    assert!(
        text.contains("graceful crash: exiting with code 70"),
        "{text}"
    );
}

/// A hook that never returns cannot keep a crashed worker alive: it exits 70 about 5 s
/// later, saying why.
#[test]
fn a_before_exit_hook_that_hangs_does_not_stop_the_exit() {
    maybe_worker();
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("mark");
    let mut w = Worker::start(
        "a_before_exit_hook_that_hangs_does_not_stop_the_exit",
        "hang",
        &[(MARK, mark.to_str().unwrap())],
    );
    assert_eq!(w.get("/panic").0, 500);
    assert_eq!(w.wait_exit(Duration::from_secs(30)), 70, "{}", w.log());
    assert_eq!(std::fs::read_to_string(&mark).unwrap(), "hook began");
    let log = w.log();
    assert!(
        log.contains("before_exit hook has not returned after 5s"),
        "{log}"
    );
}

/// A SIGTERM's graceful shutdown: `serve()` returns `Stopped`, and the hook (which holds the
/// log writer's guard) ran before it did, so the last lines reached the file.
#[test]
fn a_graceful_shutdown_runs_the_before_exit_hook_before_serve_returns() {
    maybe_worker();
    let dir = tempfile::tempdir().unwrap();
    let (mark, log) = (dir.path().join("mark"), dir.path().join("log"));
    let mut w = Worker::spawn(
        "a_graceful_shutdown_runs_the_before_exit_hook_before_serve_returns",
        "stop",
        &[(MARK, mark.to_str().unwrap()), (LOG, log.to_str().unwrap())],
    );
    let until = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(" serving ")
    {
        assert!(Instant::now() < until, "no serving line");
        assert_eq!(w.exited(), None, "{}", w.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    w.sigterm();
    assert_eq!(w.wait_exit(Duration::from_secs(30)), 0, "{}", w.log());
    assert_eq!(std::fs::read_to_string(&mark).unwrap(), "hook ran");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("graceful shutdown complete"), "{text}");
}

/// A start that fails (a malformed `UNWEDGE_HANG_LIMIT`: exit 2): `serve()` returns `Failed`,
/// and the hook ran before it did, as the docs promise for every return.
#[test]
fn a_failed_start_runs_the_before_exit_hook_before_serve_returns() {
    maybe_worker();
    let dir = tempfile::tempdir().unwrap();
    let (mark, log) = (dir.path().join("mark"), dir.path().join("log"));
    let mut w = Worker::spawn(
        "a_failed_start_runs_the_before_exit_hook_before_serve_returns",
        "stop",
        &[
            (MARK, mark.to_str().unwrap()),
            (LOG, log.to_str().unwrap()),
            ("UNWEDGE_HANG_LIMIT", "soon"),
        ],
    );
    assert_eq!(w.wait_exit(Duration::from_secs(30)), 2, "{}", w.log());
    assert_hook_ran(&mut w, &mark);
}

/// A retry in one process: a first `serve()` fails to start and runs its hook; the second
/// serves, crashes (exit 70), and its own hook runs before the exit (before, the first run
/// spent the process's one run and the second hook never ran).
#[test]
fn a_serve_after_a_failed_one_runs_its_own_hook() {
    maybe_worker();
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("mark");
    let mut w = Worker::start(
        "a_serve_after_a_failed_one_runs_its_own_hook",
        "retry",
        &[(MARK, mark.to_str().unwrap())],
    );
    assert_eq!(w.get("/panic").0, 500);
    assert_eq!(w.wait_exit(Duration::from_secs(30)), 70, "{}", w.log());
    let first = dir.path().join("mark.first");
    assert_eq!(std::fs::read_to_string(first).unwrap(), "first hook ran");
    assert_hook_ran(&mut w, &mark);
}

/// Two `serve()`s at once in one process: the one that fails to start runs its own hook,
/// not the other's (which still serves, its log writer in use); the other crashes later and
/// runs its own.
#[test]
fn a_serve_ending_runs_its_own_hook_not_another_running_ones() {
    maybe_worker();
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("mark");
    let mut w = Worker::start(
        "a_serve_ending_runs_its_own_hook_not_another_running_ones",
        "concurrent",
        &[(MARK, mark.to_str().unwrap())],
    );
    w.expect("TEST: A's hook ran", Duration::from_secs(20));
    let line = w.expect("TEST: A returned", Duration::from_secs(20));
    assert!(line.ends_with("B's hook ran: false"), "{line}");
    assert_eq!(w.get("/panic").0, 500);
    assert_eq!(w.wait_exit(Duration::from_secs(30)), 70, "{}", w.log());
    assert_hook_ran(&mut w, &mark);
}
