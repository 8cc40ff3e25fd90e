//! A test harness acting as the supervisor: notify socket, inherited listener, real child
//! processes (killed on drop), raw HTTP/1.1 over real TCP.
//!
//! Passing the listener as fd 3 without `pre_exec`: the listener's close-on-exec flag is
//! cleared, and the worker is started through `bash -c 'exec 3<&N N<&-; export LISTEN_PID=$$;
//! exec "$0"' BIN`: bash moves the socket to fd 3 and sets `LISTEN_PID` to its own pid, which
//! the `exec` hands to the worker. (nextest runs each test in its own process, so no other
//! test's child can inherit the socket in between.)
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixDatagram};
use tokio::sync::mpsc;

pub const BIN: &str = env!("CARGO_BIN_EXE_unwedge-demo-service");

/// Runs an async test body on a multi-thread runtime with a hard timeout.
pub fn run_test<F: Future<Output = ()>>(limit: Duration, body: F) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("test runtime");
    rt.block_on(async {
        tokio::time::timeout(limit, body)
            .await
            .unwrap_or_else(|_| panic!("test timed out after {limit:?}"))
    });
}

/// The supervisor's end of `NOTIFY_SOCKET`.
pub struct Notify {
    pub path: PathBuf,
    rx: mpsc::UnboundedReceiver<(Instant, String)>,
    pub seen: Vec<(Instant, String)>,
}

impl Notify {
    pub fn bind(dir: &Path, name: &str) -> Notify {
        let path = dir.join(name);
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        Notify::reading(sock, path)
    }

    /// An abstract socket (`NOTIFY_SOCKET=@name`); `path` is then `@name`.
    pub fn bind_abstract(name: &str) -> Notify {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name).expect("name");
        let sock = std::os::unix::net::UnixDatagram::bind_addr(&addr).expect("bind abstract");
        sock.set_nonblocking(true).expect("nonblocking");
        let sock = UnixDatagram::from_std(sock).expect("tokio socket");
        Notify::reading(sock, PathBuf::from(format!("@{name}")))
    }

    /// Starts reading `sock` (e.g. one left unread until now).
    pub fn reading(sock: UnixDatagram, path: PathBuf) -> Notify {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 128 * 1024];
            while let Ok(n) = sock.recv(&mut buf).await {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if tx.send((Instant::now(), msg)).is_err() {
                    break;
                }
            }
        });
        Notify {
            path,
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a datagram with a line matching `pred`; panics (showing all messages) on
    /// timeout.
    pub async fn expect(
        &mut self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> (Instant, String) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some((at, msg))) => {
                    self.seen.push((at, msg.clone()));
                    if msg.lines().any(&pred) {
                        return (at, msg);
                    }
                }
                Ok(None) => panic!("notify socket closed while waiting for {what}"),
                Err(_) => panic!(
                    "no {what} within {limit:?}; messages so far: {:#?}",
                    self.seen.iter().map(|(_, m)| m).collect::<Vec<_>>()
                ),
            }
        }
    }

    /// Collects every datagram that arrives within `window`.
    pub async fn collect_for(&mut self, window: Duration) -> Vec<(Instant, String)> {
        let deadline = tokio::time::Instant::now() + window;
        let mut out = Vec::new();
        while let Ok(Some((at, msg))) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            self.seen.push((at, msg.clone()));
            out.push((at, msg));
        }
        out
    }
}

pub fn line_is(prefix: &'static str) -> impl Fn(&str) -> bool {
    move |l: &str| l.starts_with(prefix)
}

/// A worker process, killed on drop.
pub struct Worker {
    pub child: tokio::process::Child,
    pub pid: u32,
    pub stderr_path: PathBuf,
}

/// A demo worker holding the only copy of a fresh loopback listener (once it closes it,
/// connections are refused), with its notify socket in `dir`, after its `READY=1`.
pub async fn sole_worker(dir: &Path) -> (Worker, Notify, SocketAddr) {
    sole_worker_with(dir, &[]).await
}

/// [`sole_worker`] with `env` added.
pub async fn sole_worker_with(dir: &Path, env: &[(&str, &str)]) -> (Worker, Notify, SocketAddr) {
    let mut notify = Notify::bind(dir, "notify.sock");
    let (listener, addr) = loopback_listener();
    let mut vars = vec![("NOTIFY_SOCKET", notify.path.to_str().unwrap())];
    vars.extend_from_slice(env);
    let worker = spawn_worker(dir, "w", Some(&listener), &vars);
    drop(listener);
    notify
        .expect("READY=1", Duration::from_secs(20), line_is("READY=1"))
        .await;
    (worker, notify, addr)
}

/// Starts the demo service. `listener`: passed as fd 3 with `LISTEN_FDS=1` and the child's
/// own `LISTEN_PID`. `env`: extra variables (e.g. `NOTIFY_SOCKET`).
pub fn spawn_worker(
    dir: &Path,
    tag: &str,
    listener: Option<&TcpListener>,
    env: &[(&str, &str)],
) -> Worker {
    spawn_worker_fd(dir, tag, listener.map(|l| l.as_fd()), env)
}

/// [`spawn_worker`] with any socket as fd 3 (e.g. one that does not listen).
pub fn spawn_worker_fd(
    dir: &Path,
    tag: &str,
    listener: Option<BorrowedFd<'_>>,
    env: &[(&str, &str)],
) -> Worker {
    let stderr_path = dir.join(format!("{tag}.stderr"));
    let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
    let mut cmd = tokio::process::Command::new("/usr/bin/bash");
    cmd.arg("-c");
    // `UNWEDGE_TEST_ULIMIT=N` in `env`: the worker starts with a soft open-file limit of N;
    // `UNWEDGE_TEST_NOFILE=N`: with soft and hard limits of N (it cannot raise it).
    let ulimit = if env.iter().any(|(k, _)| *k == "UNWEDGE_TEST_ULIMIT") {
        "ulimit -Sn \"$UNWEDGE_TEST_ULIMIT\" && "
    } else if env.iter().any(|(k, _)| *k == "UNWEDGE_TEST_NOFILE") {
        "ulimit -n \"$UNWEDGE_TEST_NOFILE\" && "
    } else {
        ""
    };
    match listener {
        Some(l) => {
            let fd = l.as_raw_fd();
            rustix::io::fcntl_setfd(l, rustix::io::FdFlags::empty()).expect("clear CLOEXEC");
            let moves = if fd == 3 {
                String::new()
            } else {
                format!("exec 3<&{fd} {fd}<&-; ")
            };
            cmd.arg(format!("{moves}{ulimit}export LISTEN_PID=$$; exec \"$0\""));
            cmd.env("LISTEN_FDS", "1");
        }
        None => {
            cmd.arg(format!("{ulimit}exec \"$0\""));
            cmd.env_remove("LISTEN_FDS");
        }
    }
    cmd.arg(BIN);
    for var in [
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "UNWEDGE_LISTEN",
        "UNWEDGE_POLICY",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr))
        .kill_on_drop(true);
    let child = cmd.spawn().expect("spawn worker");
    if let Some(l) = listener {
        rustix::io::fcntl_setfd(l, rustix::io::FdFlags::CLOEXEC).expect("restore CLOEXEC");
    }
    let pid = child.id().expect("child pid");
    Worker {
        child,
        pid,
        stderr_path,
    }
}

impl Worker {
    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid as i32).expect("pid");
        rustix::process::kill_process(pid, sig).expect("kill");
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits for the exit; panics with the worker's stderr on timeout.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.expect("wait"),
            Err(_) => panic!(
                "worker {} did not exit within {limit:?}; stderr:\n{}",
                self.pid,
                self.stderr()
            ),
        }
    }
}

pub fn loopback_listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    (l, addr)
}

/// One request on a fresh connection (`Connection: close`): status and body.
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Polls `GET /stats` until `pred` holds (an awaited event, not a guess).
pub async fn wait_stats(addr: SocketAddr, what: &str, pred: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok((200, body)) = http(addr, "GET", "/stats").await {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) {
                if pred(&v) {
                    return;
                }
            }
        }
        assert!(Instant::now() < deadline, "stats never showed {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
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
