//! Test harness: the real `unwedge` binary as a child process, its log collected line by
//! line, waits on log lines (never bare sleeps), a tiny HTTP/1.0 client.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// The binary under test (also the demo worker: `unwedge demo-service`).
pub const BIN: &str = env!("CARGO_BIN_EXE_unwedge");

/// Hard limit for every wait.
pub const LONG: Duration = Duration::from_secs(20);

/// A loopback address whose port was free a moment ago (for a child that must be told its
/// port before it starts).
pub fn free_loopback_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A running supervisor.
pub struct Sup {
    pub child: Child,
    pub pid: i32,
    lines: Arc<Mutex<Vec<String>>>,
    /// The tasks reading its stdout and stderr, until they end.
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Sup {
    pub fn start(args: &[&str]) -> Sup {
        Self::start_env(args, &[])
    }

    /// `unwedge run --listen 127.0.0.1:0 <flags> -- tests/fixtures/worker.py` with `env` added:
    /// the Python test worker (see the fixture's header for its routes and switches).
    pub fn python(flags: &[&str], env: &[(&str, &str)]) -> Sup {
        let py = fixture("worker.py");
        let mut args = vec!["run", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(flags);
        args.extend(["--", py.to_str().expect("a UTF-8 path")]);
        Self::start_env(&args, env)
    }

    /// `unwedge run --listen 127.0.0.1:0 <flags> -- <cmd>`.
    #[allow(dead_code)] // Not every test binary uses it.
    pub fn run(flags: &[&str], cmd: &[&str]) -> Sup {
        let mut args = vec!["run", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(flags);
        args.push("--");
        args.extend_from_slice(cmd);
        Self::start(&args)
    }

    /// `unwedge run --listen 127.0.0.1:0 <flags> -- unwedge demo-service`.
    pub fn demo(flags: &[&str]) -> Sup {
        Self::demo_env(flags, &[])
    }

    /// [`Sup::demo`] with `env` set for the supervisor and its workers.
    pub fn demo_env(flags: &[&str], env: &[(&str, &str)]) -> Sup {
        let mut args = vec!["run", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(flags);
        args.extend(["--", BIN, "demo-service"]);
        Self::start_env(&args, env)
    }

    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Sup {
        Self::start_program(BIN, args, env)
    }

    /// `program args…` (which must exec the supervisor in the end, keeping its pid), its
    /// output collected as the supervisor's.
    pub fn start_program(program: &str, args: &[&str], env: &[(&str, &str)]) -> Sup {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn unwedge");
        let pid = child.id().expect("pid") as i32;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        let mut readers = Vec::new();
        for r in [
            Box::new(out) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(err),
        ] {
            let lines = lines.clone();
            readers.push(tokio::spawn(async move {
                let mut r = BufReader::new(r).lines();
                while let Ok(Some(l)) = r.next_line().await {
                    if std::env::var_os("UNWEDGE_TEST_ECHO").is_some() {
                        eprintln!("| {l}");
                    }
                    lines.lock().unwrap().push(l);
                }
            }));
        }
        Sup {
            child,
            pid,
            lines,
            readers,
        }
    }

    /// Number of lines so far (a cursor for [`Sup::wait_line`]).
    pub fn mark(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// The lines from `from` (a [`Sup::mark`]) on.
    pub fn log_since(&self, from: usize) -> String {
        let lines = self.lines.lock().unwrap();
        lines.get(from..).unwrap_or_default().join("\n")
    }

    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// The first line at index >= `from` containing every one of `needles`.
    pub async fn wait_line(&self, from: usize, needles: &[&str]) -> String {
        self.wait_line_within(from, needles, LONG).await
    }

    pub async fn wait_line_within(&self, from: usize, needles: &[&str], limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            {
                let lines = self.lines.lock().unwrap();
                if let Some(l) = lines
                    .iter()
                    .skip(from)
                    .find(|l| needles.iter().all(|n| l.contains(n)))
                {
                    return l.clone();
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "no log line with {needles:?} within {limit:?}; log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits for a line containing `needles` and returns (line, its index).
    pub async fn wait_line_idx(&self, from: usize, needles: &[&str]) -> (String, usize) {
        let l = self.wait_line(from, needles).await;
        let idx = self
            .lines
            .lock()
            .unwrap()
            .iter()
            .skip(from)
            .position(|x| *x == l)
            .unwrap()
            + from;
        (l, idx)
    }

    /// The shared socket address, from the start line.
    pub async fn addr(&self) -> SocketAddr {
        let l = self.wait_line(0, &["(sockets: "]).await;
        let a = l.split("(sockets: ").nth(1).unwrap().trim_end_matches(')');
        a.split(',').next().unwrap().trim().parse().unwrap()
    }

    /// Pids of ready workers seen in lines >= `from`, in order.
    pub fn ready_pids(&self, from: usize) -> Vec<i32> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .skip(from)
            .filter(|l| !l.starts_with('[') && l.contains(" pid ") && l.contains(" ready in "))
            .filter_map(|l| pid_in(l))
            .collect()
    }

    /// Waits until `n` workers have logged ready in lines >= `from`; returns their pids.
    pub async fn wait_ready(&self, from: usize, n: usize) -> Vec<i32> {
        let deadline = Instant::now() + LONG;
        loop {
            let p = self.ready_pids(from);
            if p.len() >= n {
                return p;
            }
            if Instant::now() > deadline {
                panic!("{n} workers not ready; log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid), sig).expect("signal supervisor");
    }

    /// Waits for the supervisor to exit, and for its last lines to be read (its output is
    /// read by tasks that may lag behind the exit).
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let status = match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(s) => s.expect("wait"),
            Err(_) => panic!(
                "supervisor still running after {limit:?}; log:\n{}",
                self.log()
            ),
        };
        for r in self.readers.drain(..) {
            // A worker left behind may hold the pipes open: do not wait for it for long.
            let _ = tokio::time::timeout(Duration::from_secs(5), r).await;
        }
        status
    }
}

impl Drop for Sup {
    fn drop(&mut self) {
        // Workers live in their own process groups: kill them too, not only the supervisor.
        let pids: Vec<i32> = self
            .lines
            .lock()
            .map(|l| l.iter().filter_map(|x| pid_in(x)).collect())
            .unwrap_or_default();
        // Only groups led by a live child of our supervisor: pids are reused quickly
        // (pid_max is often 32768) and a stale one may now belong to another test.
        for p in pids {
            if proc_state(p).is_some_and(|(_, ppid)| ppid == self.pid) {
                let _ = killpg(Pid::from_raw(p), Signal::SIGKILL);
            }
        }
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
    }
}

/// A Python worker speaking sd_notify: `body` runs with `os`, `signal`, `socket`, `sys` and
/// `time` imported, `s` a datagram socket and `to` the supervisor's `NOTIFY_SOCKET`
/// (`s.sendto(b'READY=1', to)`). For `python3 -c`.
#[allow(dead_code)] // Not every test binary uses it.
pub fn notify_worker(body: &str) -> String {
    format!(
        "import os, signal, socket, sys, time\n\
         s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
         to = os.environ['NOTIFY_SOCKET']\n\
         {body}"
    )
}

/// The pid in a supervisor line such as `w1 pid 123 ready in …`.
pub fn pid_in(line: &str) -> Option<i32> {
    let i = line.find(" pid ")?;
    line[i + 5..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The millisecond figure before `needle` in a line (`… (27.8ms after the crash)`).
pub fn ms_before(line: &str, needle: &str) -> f64 {
    let head = &line[..line.find(needle).expect("needle")];
    let tok = head.rsplit(['(', ' ']).find(|t| !t.is_empty()).unwrap();
    if let Some(ms) = tok.strip_suffix("ms") {
        ms.parse().unwrap()
    } else {
        tok.strip_suffix('s').unwrap().parse::<f64>().unwrap() * 1000.0
    }
}

/// The millisecond figure right after `needle` (`restarting in 20.0ms`).
pub fn ms_after(line: &str, needle: &str) -> f64 {
    let tail = &line[line.find(needle).expect("needle") + needle.len()..];
    let tok = tail.split([' ', ')', ',', ';']).next().unwrap();
    if let Some(ms) = tok.strip_suffix("ms") {
        ms.parse().unwrap()
    } else {
        tok.strip_suffix('s').unwrap().parse::<f64>().unwrap() * 1000.0
    }
}

/// One HTTP/1.0 request on a fresh connection, `Host: addr` (as curl sends it; a loopback
/// admin endpoint refuses a name that is not this machine's): (status, body).
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    http_as(addr, &addr.to_string(), method, path).await
}

/// [`http`] with `Host: host`.
pub async fn http_as(
    addr: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
) -> std::io::Result<(u16, String)> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!("{method} {path} HTTP/1.0\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text
            .get(9..12)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("no response: {text:?}"),
                )
            })?;
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "http timeout",
            ))
        })
}

pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// utime + stime of a process, from /proc (None once it is gone).
pub fn cpu_time(pid: i32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    Some(Duration::from_millis(ticks * 1000 / hz))
}

/// (state, ppid) of a process.
pub fn proc_state(pid: i32) -> Option<(char, i32)> {
    unwedge_supervisor::procfs::stat(pid).map(|s| (s.state, s.ppid))
}

/// Runs `unwedge ARGS` to completion: (exit code, stderr then stdout).
pub async fn run_to_end(args: &[&str]) -> (i32, String) {
    let (code, out, err) = run_split(args).await;
    (code, err + &out)
}

/// `sleep 30`, another program, once it runs as such: right after the spawn returns, the
/// kernel may still be setting up its command line (`/proc/PID/cmdline` is empty for that
/// moment).
#[allow(dead_code)] // Not every test binary uses it.
pub async fn another_program() -> tokio::process::Child {
    let child = Command::new("sleep")
        .arg("30")
        .kill_on_drop(true)
        .spawn()
        .expect("spawn sleep");
    let pid = child.id().expect("pid");
    let deadline = Instant::now() + LONG;
    while !std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep")) {
        assert!(Instant::now() < deadline, "sleep never ran");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    child
}

/// Runs `cmd` to completion (stdin empty, [`LONG`] at most, killed if dropped) and returns
/// its output.
pub async fn output_of(mut cmd: Command) -> std::process::Output {
    let program = cmd.as_std().get_program().to_string_lossy().into_owned();
    tokio::time::timeout(LONG, cmd.stdin(Stdio::null()).kill_on_drop(true).output())
        .await
        .unwrap_or_else(|_| panic!("{program} did not finish"))
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// Runs `unwedge ARGS` to completion: (exit code, stdout, stderr).
pub async fn run_split(args: &[&str]) -> (i32, String, String) {
    run_split_env(args, &[]).await
}

/// [`run_to_end`] with `env` added.
#[allow(dead_code)] // Not every test binary uses it.
pub async fn run_to_end_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let (code, out, err) = run_split_env(args, env).await;
    (code, err + &out)
}

/// [`run_split`] with `env` added.
pub async fn run_split_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).envs(env.iter().copied());
    let out = output_of(cmd).await;
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The admin address, from the supervisor's `admin listening on http://ADDR` line.
#[allow(dead_code)] // Not every test binary uses it.
pub async fn admin_addr(sup: &Sup) -> SocketAddr {
    let l = sup.wait_line(0, &["admin listening on http://"]).await;
    l.split("http://").nth(1).unwrap().trim().parse().unwrap()
}

/// Whether process `pid` exists and is not a zombie.
#[allow(dead_code)] // Not every test binary uses it.
pub fn running(pid: i32) -> bool {
    unwedge_supervisor::pidfile::running(pid)
}

/// Waits until process `pid` is gone (or a zombie nobody reaps yet); false after `limit`.
#[allow(dead_code)] // Not every test binary uses it.
pub async fn gone_within(pid: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if !running(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Waits until no connection waits in the accept queue of the TCP listener on `port` (the
/// `rx_queue` `/proc/net/tcp` shows for a listening socket): a connection made before is then
/// in the hands of a process that accepted it. False after `limit`.
#[allow(dead_code)] // Not every test binary uses it.
pub async fn accepted_within(port: u16, limit: Duration) -> bool {
    let backlog = || -> Option<u64> {
        let text = std::fs::read_to_string("/proc/net/tcp").ok()?;
        text.lines().skip(1).find_map(|line| {
            // sl local_address rem_address st tx_queue:rx_queue …
            let f: Vec<&str> = line.split_whitespace().collect();
            let on_port = f
                .get(1)?
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok())
                == Some(port);
            if !on_port || *f.get(3)? != "0A" {
                return None;
            }
            u64::from_str_radix(f.get(4)?.split(':').nth(1)?, 16).ok()
        })
    };
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if backlog() == Some(0) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// Whether `python3` here can import `module` (a peer some tests drive: gunicorn, uvicorn,
/// prometheus_client).
#[allow(dead_code)] // Not every test binary uses it.
pub fn python_has(module: &str) -> bool {
    std::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether a missing peer fails the test instead of skipping it: `UNWEDGE_REQUIRE_PEERS=1`,
/// which `.ci/run` exports (a CI that installed every peer must not go green on skipped tests).
pub fn peers_required() -> bool {
    std::env::var_os("UNWEDGE_REQUIRE_PEERS").is_some_and(|v| v == "1")
}

/// A peer this test drives is missing here (a program, a Python module, root, a memory
/// cgroup…): `missing` says what and how to install it. Under `UNWEDGE_REQUIRE_PEERS=1` that
/// fails the test; elsewhere it is said, and the caller returns (passing).
#[track_caller]
pub fn skip(missing: &str) {
    assert!(
        !peers_required(),
        "UNWEDGE_REQUIRE_PEERS=1, and a peer of this test is missing: {missing}"
    );
    println!("SKIPPED: {missing}");
}

/// Skipped for a fact of this machine that CI does not promise either (said, never a
/// failure, even under `UNWEDGE_REQUIRE_PEERS=1`).
pub fn skip_env(why: &str) {
    println!("SKIPPED (this environment): {why}");
}

/// Removes the cgroup directory `dir` a test made, SIGKILLing what is left in it first
/// (retried for up to 2 s while its processes die).
pub fn remove_cgroup(dir: &std::path::Path) {
    for _ in 0..100 {
        let pids = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if std::fs::remove_dir(dir).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A process left running by a test, SIGKILLed when dropped (if it still runs `program`: its
/// pid may have been reused by then).
pub struct Stray {
    pub pid: i32,
    pub program: &'static [u8],
}

impl Stray {
    pub fn runs_program(&self) -> bool {
        std::fs::read(format!("/proc/{}/cmdline", self.pid))
            .is_ok_and(|c| c.starts_with(self.program))
    }

    /// Waits until the process has exec'd its program (a `sh` that starts it has forked
    /// first), failing with `what` at `deadline`.
    pub async fn until_it_runs(&self, deadline: std::time::Instant, what: &str) {
        while !self.runs_program() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }
}

impl Drop for Stray {
    fn drop(&mut self) {
        if self.runs_program() {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        }
    }
}

/// `program`'s path on `PATH`, if it is there and executable.
#[allow(dead_code)] // Not every test binary uses it.
pub fn which(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
