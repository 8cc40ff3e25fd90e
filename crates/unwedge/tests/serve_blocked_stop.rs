//! A stop while a request handler blocks its thread (blocking code in async: a lock, a
//! `std::thread::sleep`, a loop). The process must still exit: after the drain deadline when
//! the runtime can run `serve()`, and even when every runtime thread is blocked.
//!
//! Each test re-runs this test binary as the worker (`UNWEDGE_TEST_WORKER` selects the mode):
//! a real process, a real SIGTERM, a real `#[tokio::main]`-style runtime that is dropped (and
//! waits for its threads) when `serve()` returns.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use support::Worker;

/// The worker: serves `/block` (blocks a thread for two minutes) and `/crash` (requests a
/// graceful crash) on `UNWEDGE_LISTEN`, on a runtime with `threads` worker threads (0:
/// current-thread), and drops the runtime normally when `serve()` returns, as `#[tokio::main]`
/// does. With `exit_on_crash` off, a crash returns from `serve()` too.
fn worker(threads: usize, exit_on_crash: bool) -> ! {
    worker_blocking(threads, exit_on_crash, false)
}

/// [`worker`], its `/block` handing the sleep to the blocking pool (`spawn_blocking`) when
/// `pool` is set.
fn worker_blocking(threads: usize, exit_on_crash: bool, pool: bool) -> ! {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let rt = if threads == 0 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    }
    .enable_all()
    .build()
    .unwrap();
    let app = Router::new()
        .route(
            "/block",
            get(move || async move {
                eprintln!("TEST: blocking now");
                if pool {
                    // No runtime thread blocks: the request waits in no poll, for a blocking-
                    // pool thread, which dropping the runtime waits for.
                    tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_secs(120)))
                        .await
                        .unwrap();
                } else if threads == 0 {
                    // The only runtime thread: nothing of the runtime runs any more.
                    std::thread::sleep(Duration::from_secs(120));
                } else {
                    // The worker thread hands its work to another and blocks, as a synchronous
                    // call wrapped for async does: the runtime goes on (and `serve()` with it),
                    // but the request cannot be cancelled, and dropping the runtime waits for it.
                    tokio::task::block_in_place(|| std::thread::sleep(Duration::from_secs(120)));
                }
                "done"
            }),
        )
        .route(
            "/crash",
            get(|| async {
                unwedge::health::request_crash("the test asked for a crash");
                "crashing"
            }),
        );
    let server = unwedge::Server::new().exit_on_crash(exit_on_crash);
    let outcome = rt.block_on(server.serve(app));
    eprintln!("TEST: serve returned {outcome:?}");
    drop(rt);
    eprintln!("TEST: runtime dropped");
    std::process::exit(i32::from(outcome.exit_code()))
}

fn maybe_worker() {
    match support::worker_mode().as_deref() {
        None => {}
        Some("crash-returns") => worker(2, false),
        Some("spawn-blocking") => worker_blocking(2, true, true),
        Some("carry-on") => carry_on(),
        Some(threads) => worker(threads.parse().unwrap(), true),
    }
}

/// Sends `GET /block` on a connection kept open (its answer never comes).
fn block_a_thread(sock: &Path) -> std::os::unix::net::UnixStream {
    use std::io::Write;
    let until = Instant::now() + Duration::from_secs(20);
    let mut s = loop {
        match std::os::unix::net::UnixStream::connect(sock) {
            Ok(s) => break s,
            Err(e) => {
                assert!(Instant::now() < until, "the worker never listened: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    s.write_all(b"GET /block HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    s
}

/// Runs the worker of `test` with `threads`, blocks a thread with `GET /block`, sends SIGTERM
/// and waits for the exit: its code and everything it logged.
fn stop_while_blocked(test: &str, threads: usize) -> (i32, String) {
    stop_while_blocked_by(test, &threads.to_string(), |_, w| w.sigterm())
}

/// Runs the worker of `test` in `mode`, blocks a thread with `GET /block`, stops it with
/// `stop` (given the socket and the worker) and waits for the exit: its code and everything it
/// logged.
fn stop_while_blocked_by(
    test: &str,
    mode: &str,
    stop: impl FnOnce(&Path, &Worker),
) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("w.sock");
    let sock_text = sock.to_str().expect("a UTF-8 path");
    let mut w = Worker::spawn(
        test,
        mode,
        &[
            ("UNWEDGE_LISTEN", sock_text),
            ("UNWEDGE_SHUTDOWN_TIMEOUT", "1s"),
            ("UNWEDGE_CRASH_TIMEOUT", "1s"),
        ],
    );
    let _conn = block_a_thread(&sock);
    w.expect("TEST: blocking now", Duration::from_secs(20));
    stop(&sock, &w);
    let code = w.wait_exit(Duration::from_secs(30));
    (code, w.seen.join("\n"))
}

/// A request blocking its thread inside `block_in_place`: `serve()` sees the signal, drains
/// until its deadline (1 s) and returns; the request cannot be cancelled, so dropping the
/// runtime would wait for ever. The exit backstop ends the process with the stop's code, 0.
#[test]
fn a_stop_with_a_handler_blocking_its_thread_still_exits() {
    maybe_worker();
    let (code, log) =
        stop_while_blocked("a_stop_with_a_handler_blocking_its_thread_still_exits", 2);
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("TEST: serve returned Stopped"), "{log}");
    assert!(log.contains("has blocked its thread for"), "{log}");
    assert!(!log.contains("TEST: runtime dropped"), "{log}");
}

/// A request waiting for `spawn_blocking` work (the way the docs recommend to block): no
/// runtime thread blocks and no poll runs, so `serve()` returns at its deadline, and then
/// dropping the runtime waits for the blocking-pool thread. The process exits all the same,
/// with 0 (review: it stayed up, deaf to SIGTERM, until a SIGKILL).
#[test]
fn a_stop_with_a_handler_waiting_for_spawn_blocking_work_still_exits() {
    maybe_worker();
    let (code, log) = stop_while_blocked_by(
        "a_stop_with_a_handler_waiting_for_spawn_blocking_work_still_exits",
        "spawn-blocking",
        |_, w| w.sigterm(),
    );
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("TEST: serve returned Stopped"), "{log}");
    assert!(
        log.contains("waiting for blocking work (spawn_blocking)"),
        "{log}"
    );
    assert!(!log.contains("TEST: runtime dropped"), "{log}");
}

/// The worker of [`a_program_going_on_after_dropping_its_runtime_is_left_alone`]: `/block`
/// awaits for two minutes (cancellable), and after `serve()` returns the program drops its
/// runtime and goes on for 7 s, then exits with 3.
fn carry_on() -> ! {
    let rt = support::worker_runtime("info");
    let app = Router::new().route(
        "/block",
        get(|| async {
            eprintln!("TEST: blocking now");
            tokio::time::sleep(Duration::from_secs(120)).await;
            "done"
        }),
    );
    let outcome = rt.block_on(unwedge::Server::new().serve(app));
    eprintln!("TEST: serve returned {outcome:?}");
    drop(rt);
    eprintln!("TEST: runtime dropped");
    // Past the backstop's 2 s after `serve()` returned, and its 2 s of watching after that.
    std::thread::sleep(Duration::from_secs(7));
    eprintln!("TEST: went on");
    std::process::exit(3)
}

/// Requests abandoned at the drain deadline, then a program that drops its runtime (at once:
/// nothing blocks it) and goes on: the exit backstop leaves it alone (review: it took the
/// finished drop for one stuck on blocking work and exited 0 two seconds later).
#[test]
fn a_program_going_on_after_dropping_its_runtime_is_left_alone() {
    maybe_worker();
    let (code, log) = stop_while_blocked_by(
        "a_program_going_on_after_dropping_its_runtime_is_left_alone",
        "carry-on",
        |_, w| w.sigterm(),
    );
    assert_eq!(code, 3, "{log}");
    assert!(log.contains("TEST: runtime dropped"), "{log}");
    assert!(log.contains("TEST: went on"), "{log}");
}

/// The only runtime thread blocked: `serve()` never even sees the signal. The watchdog
/// thread, which saw it, ends the process once the drain deadline (1 s) and a second have
/// passed.
#[test]
fn a_stop_with_every_runtime_thread_blocked_still_exits() {
    maybe_worker();
    let (code, log) = stop_while_blocked("a_stop_with_every_runtime_thread_blocked_still_exits", 0);
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("graceful shutdown did not finish"), "{log}");
}

/// A graceful crash with `exit_on_crash(false)` while a request blocks its thread: `serve()`
/// returns `Crashed` after the crash deadline (1 s), dropping the runtime would wait for ever,
/// and the backstop ends the process with the crash's code, 70, never 0 (a service manager
/// restarting on failure only would leave a tainted process down).
#[test]
fn a_crash_returned_to_main_with_a_handler_blocking_its_thread_exits_70() {
    maybe_worker();
    let (code, log) = stop_while_blocked_by(
        "a_crash_returned_to_main_with_a_handler_blocking_its_thread_exits_70",
        "crash-returns",
        |sock, _| {
            use std::io::{Read, Write};
            let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
            s.write_all(b"GET /crash HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut res = String::new();
            let _ = s.read_to_string(&mut res);
            assert!(res.contains("crashing"), "{res}");
        },
    );
    assert_eq!(code, 70, "{log}");
    assert!(log.contains("TEST: serve returned Crashed"), "{log}");
    assert!(log.contains("has blocked its thread for"), "{log}");
    assert!(!log.contains("TEST: runtime dropped"), "{log}");
}
