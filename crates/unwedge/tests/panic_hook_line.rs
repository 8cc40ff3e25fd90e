//! What unwedge's panic hook leaves on stderr, in a real worker process: std's line for a
//! panic no report covers, with the message's credentials hidden; nothing of std's where the
//! report is logged; and a hook the application set before unwedge's, run for every panic.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use support::Worker;
use unwedge::{PanicLayer, Policy, Server};

const BEARER: &str = "SECRETbearer0x7f3a";
const PASSWORD: &str = "SECRETpw9q2";

fn message() -> String {
    format!("bad request: Authorization: Bearer {BEARER}, db postgres://app:{PASSWORD}@db/x")
}

/// `/secret` panics in the handler; `/thread` has a thread of its own panic (outside any
/// request) and answers `ok`; `/task` starts an `unwedge::spawn` task whose first run panics.
fn routes() -> Router {
    Router::new()
        .route(
            "/secret",
            get(|| async {
                panic!("{}", message());
                #[allow(unreachable_code)]
                ""
            }),
        )
        .route(
            "/thread",
            get(|| async {
                let side = std::thread::Builder::new()
                    .name("side".into())
                    .spawn(|| panic!("{}", message()))
                    .unwrap();
                assert!(side.join().is_err());
                "ok"
            }),
        )
        .route(
            "/task",
            get(|| async {
                static FAILED: AtomicBool = AtomicBool::new(false);
                drop(unwedge::spawn("once", || async {
                    if !FAILED.swap(true, Ordering::SeqCst) {
                        panic!("task's first run fails");
                    }
                }));
                "started"
            }),
        )
}

fn maybe_worker() {
    let Some(mode) = support::worker_mode() else {
        return;
    };
    let serve = || Server::new().panic_layer(PanicLayer::with_policy(Policy::Recover));
    match mode.as_str() {
        // A common production filter: the app's own logs, not unwedge's report event.
        "filtered" => {
            support::run_worker_logging("info,unwedge::panic=off", || serve().serve(routes()))
        }
        "logged" => support::run_worker(|| serve().serve(routes())),
        // A crash reporter's hook, set before serve() installs unwedge's.
        "app-hook" => {
            std::panic::set_hook(Box::new(|info| {
                let at = info.location().map(|l| l.line()).unwrap_or(0);
                eprintln!("APP HOOK saw a panic at line {at}");
            }));
            support::run_worker(|| serve().serve(routes()))
        }
        // A crash reporter set up after unwedge's hook, passing each panic on (Sentry's way).
        "reporter-after" => {
            unwedge::install();
            let unwedges = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                eprintln!("REPORTER saw a panic");
                unwedges(info);
            }));
            support::run_worker(|| serve().serve(routes()))
        }
        other => panic!("unknown mode {other}"),
    }
}

fn assert_no_secret(log: &str) {
    assert!(!log.contains(BEARER), "{log}");
    assert!(!log.contains(PASSWORD), "{log}");
}

/// The report's event filtered out: a request's panic and a panic outside any request each
/// print std's line (thread, location, message), the credentials in the message hidden.
#[test]
fn std_line_without_the_report_hides_the_messages_credentials() {
    maybe_worker();
    let mut w = Worker::start(
        "std_line_without_the_report_hides_the_messages_credentials",
        "filtered",
        &[],
    );
    assert_eq!(w.get("/secret").0, 500);
    assert_eq!(w.get("/thread").0, 200);
    let limit = Duration::from_secs(10);
    let first = w.expect("panicked at", limit);
    assert!(first.contains("panic_hook_line.rs"), "{first}");
    w.expect("bad request: Authorization: [redacted]", limit);
    let second = w.expect("panicked at", limit);
    assert!(second.starts_with("thread 'side' panicked at"), "{second}");
    w.expect("bad request: Authorization: [redacted]", limit);
    let log = w.log();
    assert!(
        !log.contains("panic caught"),
        "the report is filtered out: {log}"
    );
    assert_no_secret(&log);
}

/// The report's event logged: it replaces std's line for the request's panic (redacted as
/// well); the panic outside any request still gets the line.
#[test]
fn the_logged_report_replaces_std_line_for_a_requests_panic() {
    maybe_worker();
    let mut w = Worker::start(
        "the_logged_report_replaces_std_line_for_a_requests_panic",
        "logged",
        &[],
    );
    assert_eq!(w.get("/secret").0, 500);
    w.expect("panic caught", Duration::from_secs(10));
    assert_eq!(w.get("/thread").0, 200);
    let line = w.expect("panicked at", Duration::from_secs(10));
    assert!(line.starts_with("thread 'side' panicked at"), "{line}");
    w.expect(
        "bad request: Authorization: [redacted]",
        Duration::from_secs(10),
    );
    let log = w.log();
    // Written before the report, so it would be in the log by now.
    assert_eq!(log.matches("panicked at").count(), 1, "{log}");
    assert_no_secret(&log);
}

/// A hook the application set before unwedge's runs for a panic in a request and in an
/// `unwedge::spawn` task, and the request's report is logged all the same.
#[test]
fn a_hook_set_before_unwedges_sees_request_and_task_panics() {
    maybe_worker();
    let mut w = Worker::start(
        "a_hook_set_before_unwedges_sees_request_and_task_panics",
        "app-hook",
        &[],
    );
    let limit = Duration::from_secs(10);
    assert_eq!(w.get("/secret").0, 500);
    w.expect("APP HOOK saw a panic", limit);
    w.expect("panic caught", limit);
    assert_eq!(w.get("/task").0, 200);
    w.expect("APP HOOK saw a panic", limit);
    w.expect("task's first run fails", limit);
    assert_eq!(w.exited(), None, "{}", w.log());
}

/// The documented order for a crash reporter: unwedge's hook first, the reporter's passing
/// panics on to it. The reporter sees the request's panic, the report is logged, and no raw
/// line with the secret reaches stderr; a panic outside requests gets the redacted line.
#[test]
fn a_reporter_installed_after_unwedge_leaks_nothing() {
    maybe_worker();
    let mut w = Worker::start(
        "a_reporter_installed_after_unwedge_leaks_nothing",
        "reporter-after",
        &[],
    );
    let limit = Duration::from_secs(10);
    assert_eq!(w.get("/secret").0, 500);
    w.expect("REPORTER saw a panic", limit);
    w.expect("panic caught", limit);
    assert_eq!(w.get("/thread").0, 200);
    w.expect("REPORTER saw a panic", limit);
    let line = w.expect("panicked at", limit);
    assert!(line.starts_with("thread 'side' panicked at"), "{line}");
    w.expect("bad request: Authorization: [redacted]", limit);
    let log = w.log();
    assert_eq!(log.matches("panicked at").count(), 1, "{log}");
    assert_no_secret(&log);
}
