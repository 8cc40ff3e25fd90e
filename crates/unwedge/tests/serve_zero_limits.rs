//! Zero turns a watchdog limit off, in the environment and in the builder, and so it does for
//! the idle timeout: a zero stall limit used to make the process Wedged from startup, a zero
//! hang limit wedged it 0.1 s into any request, and a zero `abort_when_wedged` exited 70 at
//! the first wedge.
//!
//! Each test runs this test binary as a real worker process (see `support`) on
//! `127.0.0.1:0`, holds a request in flight (or, for the idle timeout, a silent connection
//! open) past the limit that would otherwise apply, and probes `/livez` meanwhile.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use support::Worker;
use unwedge::Server;

/// A gate the slow handlers wait at until `GET /release` opens it.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    fn open(&self) {
        *self.0 .0.lock().unwrap() = true;
        self.0 .1.notify_all();
    }

    /// Blocks the thread until the gate opens (one long poll: a blocked-poll stall).
    fn wait_blocking(&self) {
        let mut open = self.0 .0.lock().unwrap();
        while !*open {
            open = self.0 .1.wait(open).unwrap();
        }
    }

    fn is_open(&self) -> bool {
        *self.0 .0.lock().unwrap()
    }
}

/// `GET /block` blocks its thread until released, `GET /wait` waits (yielding) until
/// released; `GET /release` releases both.
fn app() -> Router {
    let gate = Gate::default();
    Router::new()
        .route(
            "/block",
            get({
                let gate = gate.clone();
                move || async move {
                    eprintln!("TEST: request in flight");
                    tokio::task::block_in_place(|| gate.wait_blocking());
                    "released"
                }
            }),
        )
        .route(
            "/wait",
            get({
                let gate = gate.clone();
                move || async move {
                    eprintln!("TEST: request in flight");
                    while !gate.is_open() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    "released"
                }
            }),
        )
        .route(
            "/release",
            get(move || async move {
                gate.open();
                "ok"
            }),
        )
}

/// The idle timeout the builder sets in mode `low-idle`, far below the 30 s default.
const LOW_IDLE: Duration = Duration::from_millis(300);

/// The worker: the builder's limits are low (so that the default is not what is turned
/// off), or zero in mode `zero`.
fn maybe_worker() {
    let Some(mode) = support::worker_mode() else {
        return;
    };
    let server = match mode.as_str() {
        "low" => Server::new()
            .stall_limit(Duration::from_millis(500))
            .hang_limit(Duration::from_secs(1))
            .abort_when_wedged(Duration::from_millis(500)),
        "low-no-abort" => Server::new()
            .stall_limit(Duration::from_millis(500))
            .hang_limit(Duration::from_secs(1)),
        "zero" => Server::new()
            .stall_limit(Duration::ZERO)
            .hang_limit(Duration::ZERO)
            .abort_when_wedged(Duration::ZERO),
        "low-idle" => Server::new().idle_timeout(LOW_IDLE),
        other => panic!("unknown mode {other}"),
    };
    support::run_worker(|| server.serve(app()))
}

/// Holds `GET path` in flight for `hold`, probing `/livez` every 50 ms; then releases it.
/// Returns every probe's status, and checks that the request got its answer and that the
/// worker is still alive.
fn probe_while_in_flight(w: &mut Worker, path: &str, hold: Duration) -> Vec<u16> {
    let slow = w.get_in_background(path);
    w.expect("TEST: request in flight", Duration::from_secs(20));
    let began = Instant::now();
    let mut probes = Vec::new();
    while began.elapsed() < hold {
        assert_eq!(w.exited(), None, "the worker exited; stderr:\n{}", w.log());
        probes.push(w.get("/livez").0);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(w.get("/release").0, 200, "{}", w.log());
    let (status, body) = slow.join().unwrap();
    assert_eq!(status, 200, "{body}\nstderr:\n{}", w.log());
    assert_eq!(w.exited(), None, "the worker exited; stderr:\n{}", w.log());
    probes
}

/// Stops the worker: it drains and exits 0.
fn stop(mut w: Worker) {
    w.sigterm();
    let code = w.wait_exit(Duration::from_secs(30));
    assert_eq!(code, 0, "{}", w.log());
}

/// `UNWEDGE_STALL_LIMIT=0` over a builder's 500 ms: a request blocking its thread for 3 s
/// (past both and the 2 s default) leaves `/livez` at 200 throughout.
#[test]
fn a_stall_limit_of_zero_turns_the_stall_checks_off() {
    maybe_worker();
    let mut w = Worker::start(
        "a_stall_limit_of_zero_turns_the_stall_checks_off",
        "low-no-abort",
        &[("UNWEDGE_STALL_LIMIT", "0"), ("UNWEDGE_HANG_LIMIT", "60s")],
    );
    let probes = probe_while_in_flight(&mut w, "/block", Duration::from_secs(3));
    assert!(probes.len() > 5, "{probes:?}");
    assert!(probes.iter().all(|s| *s == 200), "{probes:?}\n{}", w.log());
    assert!(!w.log().contains("wedged"), "{}", w.log());
    stop(w);
}

/// `UNWEDGE_HANG_LIMIT=0` over a builder's 1 s: a request waiting for 2.5 s leaves `/livez`
/// at 200 throughout.
#[test]
fn a_hang_limit_of_zero_turns_the_no_progress_check_off() {
    maybe_worker();
    let mut w = Worker::start(
        "a_hang_limit_of_zero_turns_the_no_progress_check_off",
        "low-no-abort",
        &[("UNWEDGE_HANG_LIMIT", "0")],
    );
    let probes = probe_while_in_flight(&mut w, "/wait", Duration::from_millis(2500));
    assert!(probes.len() > 5, "{probes:?}");
    assert!(probes.iter().all(|s| *s == 200), "{probes:?}\n{}", w.log());
    assert!(!w.log().contains("wedged"), "{}", w.log());
    stop(w);
}

/// `UNWEDGE_ABORT_WHEN_WEDGED=0` over a builder's 500 ms: the worker is wedged (no progress
/// for the builder's 1 s hang limit, `/livez` 503) and does not exit; once the request is
/// answered it is healthy again.
#[test]
fn an_abort_when_wedged_of_zero_never_exits() {
    maybe_worker();
    let mut w = Worker::start(
        "an_abort_when_wedged_of_zero_never_exits",
        "low",
        &[("UNWEDGE_ABORT_WHEN_WEDGED", "0")],
    );
    let probes = probe_while_in_flight(&mut w, "/wait", Duration::from_secs(3));
    // Wedged from about 1 s on, for 2 s: four times the builder's abort_when_wedged.
    assert!(
        probes.iter().filter(|s| **s == 503).count() >= 5,
        "{probes:?}\n{}",
        w.log()
    );
    assert!(probes.iter().all(|s| *s == 200 || *s == 503), "{probes:?}");
    // Healthy again once the request completed (the watchdog looks every 50 ms at most).
    let until = Instant::now() + Duration::from_secs(10);
    while w.get("/livez").0 != 200 {
        assert!(Instant::now() < until, "still not live:\n{}", w.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    stop(w);
}

/// Zero in the builder, no variables: a request blocking its thread for 3 s (past the 2 s
/// default stall limit, and any hang limit of 0) leaves `/livez` at 200 throughout.
#[test]
fn zero_limits_in_the_builder_turn_the_checks_off() {
    maybe_worker();
    let mut w = Worker::start(
        "zero_limits_in_the_builder_turn_the_checks_off",
        "zero",
        &[],
    );
    let probes = probe_while_in_flight(&mut w, "/block", Duration::from_secs(3));
    assert!(probes.len() > 5, "{probes:?}");
    assert!(probes.iter().all(|s| *s == 200), "{probes:?}\n{}", w.log());
    assert!(!w.log().contains("wedged"), "{}", w.log());
    stop(w);
}

/// Connects to the worker and sends nothing for up to `limit`: the connection, and whether
/// the worker closed it meanwhile (end of file or reset).
fn silent_for(w: &Worker, limit: Duration) -> (TcpStream, bool) {
    let mut s = TcpStream::connect(w.addr.expect("listening")).expect("connect");
    s.set_read_timeout(Some(limit)).unwrap();
    let closed = match s.read(&mut [0u8; 64]) {
        Ok(0) => true,
        Ok(n) => panic!("the worker sent {n} bytes to a connection that sent nothing"),
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    };
    (s, closed)
}

/// `UNWEDGE_IDLE_TIMEOUT=0` over a builder's 300 ms: a connection that sends nothing stays
/// open for 3 s (ten builder periods), then is served when it speaks. Without the variable the
/// builder's 300 ms closes such a connection, so a zero that were ignored, or that fell back
/// to the builder's value, fails here. (One that fell back to the 30 s default would not:
/// telling that apart takes over 30 s.)
#[test]
fn an_idle_timeout_of_zero_turns_the_idle_timeout_off() {
    maybe_worker();
    let test = "an_idle_timeout_of_zero_turns_the_idle_timeout_off";
    let w = Worker::start(test, "low-idle", &[]);
    let (_, closed) = silent_for(&w, Duration::from_secs(10));
    assert!(
        closed,
        "the builder's idle timeout of {LOW_IDLE:?} left a silent connection open for 10 s"
    );
    drop(w);

    let mut w = Worker::start(test, "low-idle", &[("UNWEDGE_IDLE_TIMEOUT", "0")]);
    let (mut silent, closed) = silent_for(&w, Duration::from_secs(3));
    assert!(
        !closed,
        "a silent connection was closed with UNWEDGE_IDLE_TIMEOUT=0\n{}",
        w.log()
    );
    // Still served when it finally speaks.
    silent
        .write_all(b"GET /release HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut answer = String::new();
    let _ = silent.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "{answer:?}\n{}",
        w.log()
    );
    stop(w);
}
