//! Running `serve()` in a real child process: the test binary re-runs itself with
//! `UNWEDGE_TEST_WORKER` set, and the child serves on `127.0.0.1:0`; the parent reads the
//! port from the `serving` log line and talks HTTP/1.1 over real TCP.
//!
//! Each test file includes this with `mod support;` and uses the parts it needs; tests that
//! change process-wide state start with [`own_process!`].
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// For a test that changes process-wide state (the health registry, the panic policy, the
/// panic hook, the `tracing` subscriber) or needs it fresh, as its first statement: the test
/// goes on only where it has its process to itself. Under `cargo nextest run` (one process per
/// test) it always does. Under `cargo test` the tests of a file share one process and would
/// fail each other in confusing ways (a panic count of 7 for 6, a crash reason from another
/// test), so the test is run again alone, in a child process of this test binary, fails as
/// that run failed, and otherwise returns here with its work done by the child.
#[allow(unused_macros)] // each test file includes this module, not all call it
macro_rules! own_process {
    () => {
        if !$crate::support::alone() {
            return;
        }
    };
}
#[allow(unused_imports)]
pub(crate) use own_process;

/// The variable a re-run of this binary for one test gets (see [`own_process!`]).
const ALONE: &str = "UNWEDGE_TEST_ALONE";

/// Whether the calling test has its process to itself; if it does not, runs it alone in a
/// child process first (see [`own_process!`]).
#[track_caller]
pub fn alone() -> bool {
    let nextest = std::env::var_os("NEXTEST").is_some()
        && std::env::var("NEXTEST_EXECUTION_MODE").as_deref() == Ok("process-per-test");
    if nextest || std::env::var_os(ALONE).is_some() {
        return true;
    }
    // libtest names each test's thread after the test.
    let thread = std::thread::current();
    let name = match thread.name() {
        Some(name) if name != "main" => name,
        _ => panic!(
            "this test changes process-wide state and cannot tell its name to run alone: \
             run it with `cargo nextest run` (one process per test)"
        ),
    };
    let out = Command::new(std::env::current_exe().expect("the test binary's path"))
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(ALONE, name)
        .stdin(Stdio::null())
        .output()
        .expect("re-running the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // A name that matched no test would pass with nothing run.
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "`{name}` changes process-wide state and ran alone in a child process of the test \
         binary, which failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    false
}

/// The variable that turns the test binary into a worker; its value selects the mode.
pub const MODE: &str = "UNWEDGE_TEST_WORKER";

/// The worker's mode when this process is a worker.
pub fn worker_mode() -> Option<String> {
    std::env::var(MODE).ok()
}

/// Worker side: logs to stderr (no colours), runs `serve` on a runtime with two worker
/// threads, drops the runtime and reports the outcome as `#[tokio::main]` returning it from
/// `main` would (its `Termination` prints a failure's one line), and exits with its code.
pub fn run_worker<F>(serve: impl FnOnce() -> F) -> !
where
    F: std::future::Future<Output = unwedge::serve::Outcome>,
{
    run_worker_logging("info", serve)
}

/// [`run_worker`], logging what `filter` (a `RUST_LOG`-style directive list) lets through.
pub fn run_worker_logging<F>(filter: &str, serve: impl FnOnce() -> F) -> !
where
    F: std::future::Future<Output = unwedge::serve::Outcome>,
{
    let rt = worker_runtime(filter);
    let outcome = rt.block_on(serve());
    eprintln!("TEST: serve returned {outcome:?}");
    drop(rt);
    let code = outcome.exit_code();
    let _ = std::process::Termination::report(outcome);
    std::process::exit(i32::from(code))
}

/// Worker side: logs what `filter` lets through to stderr (no colours) and builds a runtime
/// with two worker threads, for a worker that does more than [`run_worker`] around `serve()`.
pub fn worker_runtime(filter: &str) -> tokio::runtime::Runtime {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A worker process and its stderr, line by line.
pub struct Worker {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
    pub addr: Option<SocketAddr>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Worker {
    /// Runs the test `test` of this binary as a worker in `mode`, listening on
    /// `127.0.0.1:0`, with `env` added; waits for its `serving` line (20 s at most).
    pub fn start(test: &str, mode: &str, env: &[(&str, &str)]) -> Worker {
        let mut w = Worker::spawn(test, mode, env);
        let line = w.expect(" serving ", Duration::from_secs(20));
        let addr = line
            .split_whitespace()
            .find_map(|field| field.strip_prefix("addr="))
            .unwrap_or_else(|| panic!("no addr= in {line:?}"));
        w.addr = Some(addr.parse().unwrap());
        w
    }

    /// As [`Worker::start`], without waiting for anything.
    pub fn spawn(test: &str, mode: &str, env: &[(&str, &str)]) -> Worker {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(MODE, mode)
            .env("UNWEDGE_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC");
        for var in [
            "UNWEDGE_POLICY",
            "UNWEDGE_STALL_LIMIT",
            "UNWEDGE_HANG_LIMIT",
            "UNWEDGE_ABORT_WHEN_WEDGED",
            "UNWEDGE_SHUTDOWN_TIMEOUT",
            "UNWEDGE_CRASH_TIMEOUT",
            "UNWEDGE_IDLE_TIMEOUT",
        ] {
            cmd.env_remove(var);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Worker {
            child,
            lines,
            seen: Vec::new(),
            addr: None,
        }
    }

    /// Waits for a stderr line containing `what`, and returns it.
    pub fn expect(&mut self, what: &str, limit: Duration) -> String {
        let until = Instant::now() + limit;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(what) {
                        return line;
                    }
                }
                Err(_) => panic!("no {what:?} within {limit:?}; stderr:\n{}", self.log()),
            }
        }
    }

    /// Everything logged so far (what has arrived is read first).
    pub fn log(&mut self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        self.seen.join("\n")
    }

    /// The exit code, if the worker has exited.
    pub fn exited(&mut self) -> Option<i32> {
        self.child
            .try_wait()
            .unwrap()
            .map(|s| s.code().unwrap_or(-1))
    }

    /// Waits for the exit (at most `limit`); its code (-1 for a signal).
    pub fn wait_exit(&mut self, limit: Duration) -> i32 {
        let until = Instant::now() + limit;
        loop {
            if let Some(code) = self.exited() {
                while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(1)) {
                    self.seen.push(line);
                }
                return code;
            }
            assert!(
                Instant::now() < until,
                "still running after {limit:?}; stderr:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn sigterm(&self) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    }

    /// Polls `/livez` (every 50 ms, 20 s at most) until it fails: the 503 response.
    #[track_caller]
    pub fn wait_livez_fails(&mut self, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, res) = self.get("/livez");
            if status == 503 {
                return res;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: /livez never failed: {res}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET path` on a new connection: the status and the whole response.
    pub fn get(&self, path: &str) -> (u16, String) {
        get(self.addr.expect("listening"), path)
    }

    /// `GET path` on a new connection, answered on another thread.
    pub fn get_in_background(&self, path: &str) -> std::thread::JoinHandle<(u16, String)> {
        let addr = self.addr.expect("listening");
        let path = path.to_owned();
        std::thread::spawn(move || get(addr, &path))
    }
}

/// `GET path` over a new TCP connection (`Connection: close`, 30 s at most): the status (0
/// when the connection ended without an answer) and the whole response.
pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out).into_owned();
    let status = out
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, out)
}

/// A test whose peer (a program, a Python module) is missing says so and returns; under
/// `UNWEDGE_REQUIRE_PEERS=1` (`.ci/run`, which installs every peer) it fails instead.
pub fn skip(missing: &str) {
    let required = std::env::var_os("UNWEDGE_REQUIRE_PEERS").is_some_and(|v| v == "1");
    assert!(
        !required,
        "UNWEDGE_REQUIRE_PEERS=1, and a peer of this test is missing: {missing}"
    );
    println!("SKIPPED: {missing}");
}
