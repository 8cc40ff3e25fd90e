//! systemd integration without systemd: the test plays systemd's part, with a notify socket
//! of its own and a listening socket passed by socket activation (LISTEN_FDS/LISTEN_PID).

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::*;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::signal::Signal;

/// "systemd"'s notify socket in `dir`: its path (for `NOTIFY_SOCKET`) and the socket, read
/// with a 100 ms timeout.
fn systemd_notify_socket(dir: &std::path::Path) -> (std::path::PathBuf, UnixDatagram) {
    let path = dir.join("notify");
    let sd = UnixDatagram::bind(&path).unwrap();
    sd.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    (path, sd)
}

fn recv_until(sock: &UnixDatagram, needle: &str, got: &mut Vec<String>) -> String {
    let deadline = Instant::now() + LONG;
    let mut buf = vec![0u8; 4096];
    loop {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} from the supervisor; got {got:?}"
        );
        if let Ok(n) = sock.recv(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            got.push(m.clone());
            if m.contains(needle) {
                return m;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifies_systemd_and_serves_its_socket() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let (notify_path, sd) = systemd_notify_socket(dir.path());

        // "systemd" binds the socket and activates the service with it: the exec shim plays
        // the part of systemd's fork+exec, setting LISTEN_FDS=1 and LISTEN_PID to the pid of
        // `unwedge run`.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        fcntl(&listener, FcntlArg::F_SETFD(FdFlag::empty())).unwrap();
        let fd = listener.as_raw_fd().to_string();
        let sup = Sup::start_env(
            &[
                "exec-shim",
                "--",
                BIN,
                "run",
                "--workers",
                "2",
                "--",
                BIN,
                "demo-service",
            ],
            &[
                ("UNWEDGE_SHIM_FDS", fd.as_str()),
                ("LISTEN_FDNAMES", "web"),
                ("NOTIFY_SOCKET", notify_path.to_str().unwrap()),
                ("WATCHDOG_USEC", "200000"),
            ],
        );
        drop(listener);
        let mut got = Vec::new();
        let ready = recv_until(&sd, "READY=1", &mut got);
        assert!(ready.contains("STATUS=2/2 workers ready"), "{ready}");
        // The workers serve the socket systemd passed (the supervisor bound nothing).
        assert_eq!(get(addr, "/").await.0, 200);
        let start = sup.wait_line(0, &["starting 2 worker(s)"]).await;
        assert!(start.contains(&format!("(sockets: {addr})")), "{start}");

        // Heartbeats to systemd while workers are healthy (every half of WATCHDOG_USEC).
        recv_until(&sd, "WATCHDOG=1", &mut got);
        recv_until(&sd, "WATCHDOG=1", &mut got);

        sup.signal(Signal::SIGHUP);
        let reloading = recv_until(&sd, "RELOADING=1", &mut got);
        assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
        recv_until(&sd, "READY=1", &mut got);
        assert_eq!(get(addr, "/").await.0, 200);
        // Each generation's ready workers are counted apart: never more ready than it runs
        // (old and new both ready for a moment used to read `3/2 workers ready`).
        for status in got
            .iter()
            .flat_map(|m| m.lines())
            .filter_map(|l| l.strip_prefix("STATUS="))
        {
            for part in status.split("; ") {
                let counts = part
                    .split_whitespace()
                    .find(|w| w.contains('/'))
                    .unwrap_or("0/0");
                let (ready, of) = counts.split_once('/').unwrap();
                let (ready, of): (u32, u32) = (ready.parse().unwrap(), of.parse().unwrap());
                assert!(ready <= of, "STATUS={status}");
            }
        }

        sup.signal(Signal::SIGTERM);
        recv_until(&sd, "STOPPING=1", &mut got);
        // Workers never see systemd's variables.
        assert!(!sup.log().contains(notify_path.to_str().unwrap()));
    })
    .await
    .expect("test timed out");
}

/// A worker that asks the supervisor for more time to start (`EXTEND_TIMEOUT_USEC=`) while
/// systemd waits for the supervisor's own `READY=1`: the supervisor asks systemd for as much,
/// or systemd's `TimeoutStartSec=` would kill the whole service the worker was waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_request_for_more_time_reaches_systemd_while_it_waits() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let (notify_path, sd) = systemd_notify_socket(dir.path());
        // It starts for 3.5 s, 2 s allowed (a loaded machine's Python may take over a second
        // to send its first message: the worker before it is then replaced, as it should be).
        let worker = notify_worker(
            "s.sendto(b'EXTEND_TIMEOUT_USEC=30000000', to)\n\
             time.sleep(3.5)\n\
             s.sendto(b'READY=1', to)\n\
             time.sleep(1000)\n",
        );
        let sup = Sup::start_env(
            &[
                "run",
                "--admin",
                "off",
                "--ready",
                "notify",
                "--ready-timeout",
                "2s",
                "--",
                "python3",
                "-c",
                &worker,
            ],
            &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())],
        );
        let mut got = Vec::new();
        recv_until(&sd, "EXTEND_TIMEOUT_USEC=30000000", &mut got);
        recv_until(&sd, "READY=1", &mut got);
        // The worker that asked was granted the time: it, not a replacement, is ready.
        let asked = sup
            .wait_line(0, &["asked for more time for its start"])
            .await;
        let pid = pid_in(&asked).expect("a pid");
        assert_eq!(sup.wait_ready(0, 1).await, [pid], "{}", sup.log());
        // Once systemd has its READY=1, a worker's request is the supervisor's business only.
        assert_eq!(
            got.iter()
                .filter(|m| m.contains("EXTEND_TIMEOUT_USEC"))
                .count(),
            1,
            "{got:?}"
        );
    })
    .await
    .expect("test timed out");
}

/// `WATCHDOG_USEC=1` for the supervisor itself (`WatchdogSec=1us`, a typo) had it send
/// `WATCHDOG=1` every half microsecond, which is every turn of its event loop: a spinning
/// supervisor and a flood of datagrams to systemd. The interval has a floor (10 ms), with a
/// warning saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_watchdog_usec_for_the_supervisor_does_not_flood_systemd() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let (notify_path, sd) = systemd_notify_socket(dir.path());
        let sup = Sup::start_env(
            &[
                "run",
                "--admin",
                "off",
                "--listen",
                "127.0.0.1:0",
                "--",
                BIN,
                "demo-service",
            ],
            &[
                ("NOTIFY_SOCKET", notify_path.to_str().unwrap()),
                ("WATCHDOG_USEC", "1"),
            ],
        );
        let mut got = Vec::new();
        recv_until(&sd, "READY=1", &mut got);
        // Heartbeats go on (a worker is ready), at most one per 10 ms: 100 in a second, and
        // three times that for slack. Sent every half microsecond, it was thousands.
        let (mut heartbeats, mut buf) = (0, vec![0u8; 4096]);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(1) {
            if let Ok(n) = sd.recv(&mut buf) {
                heartbeats += String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .filter(|l| *l == "WATCHDOG=1")
                    .count();
            }
        }
        assert!(heartbeats >= 1, "no WATCHDOG=1 in a second");
        assert!(heartbeats <= 300, "{heartbeats} WATCHDOG=1 in a second");
        // Said once, at the start.
        let warning = sup
            .wait_line(
                0,
                &["WATCHDOG_USEC=1 (systemd's WatchdogSec= for this service)"],
            )
            .await;
        assert!(
            warning.contains("WATCHDOG=1 goes to systemd every 10ms"),
            "{warning}"
        );
    })
    .await
    .expect("test timed out");
}

/// A `NOTIFY_SOCKET` whose receiver never reads (a stuck or stale process bound to it): its
/// queue fills after `net.unix.max_dgram_qlen` datagrams (10 by default), and a blocking send
/// of the next `WATCHDOG=1` froze the supervisor's event loop for good: a SIGKILLed worker
/// was neither reaped nor replaced, SIGTERM went unheard. Messages that find no room are
/// dropped now, with a warning; the supervisor goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_socket_nobody_reads_does_not_freeze_the_supervisor() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        // Bound, never read.
        let (notify_path, _deaf) = systemd_notify_socket(dir.path());
        let mut sup = Sup::demo_env(
            &["--admin", "off"],
            &[
                ("NOTIFY_SOCKET", notify_path.to_str().unwrap()),
                // A heartbeat every 10 ms: the queue is full 0.1 s after the first worker is ready.
                ("WATCHDOG_USEC", "20000"),
            ],
        );
        let first = sup.wait_ready(0, 1).await[0];
        // The drop is logged once the queue is full. A frozen supervisor logs nothing more:
        // waited for at most 5 s (500 heartbeats), then the kill below shows what is wrong.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !sup.log().contains("is not being read") && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mark = sup.mark();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(first), Signal::SIGKILL).unwrap();
        let replacement = sup.wait_ready(mark, 1).await[0];
        assert_ne!(replacement, first);
        let warning = sup
            .wait_line(0, &["systemd's NOTIFY_SOCKET=", "is not being read"])
            .await;
        assert!(warning.contains("WATCHDOG=1"), "{warning}");
        // Said at most once a minute, however many heartbeats were dropped.
        assert_eq!(sup.log().matches("is not being read").count(), 1);

        sup.signal(Signal::SIGTERM);
        let status = sup.wait_exit(Duration::from_secs(10)).await;
        assert_eq!(status.code(), Some(0), "{}", sup.log());
    })
    .await
    .expect("test timed out");
}

/// `NOTIFY_SOCKET=@name` is an abstract socket (sd_notify(3)), as systemd may give it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abstract_notify_socket_is_notified() {
    use std::os::linux::net::SocketAddrExt;
    tokio::time::timeout(Duration::from_secs(60), async {
        let name = format!("unwedge-test-notify-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sd = UnixDatagram::bind_addr(&addr).unwrap();
        sd.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let _sup = Sup::demo_env(
            &["--admin", "off"],
            &[("NOTIFY_SOCKET", format!("@{name}").as_str())],
        );
        let mut got = Vec::new();
        let ready = recv_until(&sd, "READY=1", &mut got);
        assert!(ready.contains("STATUS=1/1 workers ready"), "{ready}");
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_systemd_socket_activate_passes_its_socket_through() {
    let Some(activate) = [
        "/usr/bin/systemd-socket-activate",
        "/bin/systemd-socket-activate",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).is_file()) else {
        skip("systemd-socket-activate not installed (apt-get install systemd)");
        return;
    };
    tokio::time::timeout(Duration::from_secs(60), async {
        let addr = free_loopback_addr();
        let py = fixture("worker.py");
        // The supervisor's log, for the failure messages.
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut cmd = tokio::process::Command::new(activate);
        cmd.arg("-l")
            .arg(addr.to_string())
            .arg("--fdname=web")
            .args([BIN, "run", "--workers", "2", "--", py.to_str().unwrap()])
            .env_remove("NOTIFY_SOCKET")
            .stdout(std::process::Stdio::null())
            .stderr(log.reopen().unwrap())
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap();
        let _show = ShowLogOnFailure(log.path().to_owned());
        let log = || std::fs::read_to_string(log.path()).unwrap_or_default();
        let sup_pid = child.id().unwrap() as i32; // it execs unwedge: same pid
                                                  // Wait for systemd-socket-activate to bind; then the socket is systemd's, and the
                                                  // first answer comes once a worker is up.
        let deadline = Instant::now() + LONG;
        let (status, body) = loop {
            match http(addr, "GET", "/env").await {
                Ok(r) => break r,
                Err(e)
                    if e.kind() == std::io::ErrorKind::ConnectionRefused
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Err(e) => panic!("GET /env: {e}"),
            }
        };
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("LISTEN_FDS=1 LISTEN_FDNAMES=web"), "{body}");
        let pid: i32 = body
            .split_whitespace()
            .next()
            .unwrap()
            .strip_prefix("pid=")
            .unwrap()
            .parse()
            .unwrap();
        assert!(body.contains(&format!("LISTEN_PID={pid} ")), "{body}");
        assert_eq!(
            proc_state(pid).map(|s| s.1),
            Some(sup_pid),
            "worker is a child of the supervisor"
        );
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(sup_pid), Signal::SIGTERM).unwrap();
        let status = child.wait().await.unwrap();
        assert_eq!(status.code(), Some(0), "{}", log());
    })
    .await
    .expect("test timed out");
}

/// Runs `prefix… unwedge run --admin none -- true` with `env`: (exit code, stderr).
async fn run_activated(prefix: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let argv: Vec<&str> = prefix
        .iter()
        .copied()
        .chain([BIN, "run", "--admin", "none", "--", "true"])
        .collect();
    let mut cmd = tokio::process::Command::new(argv[0]);
    cmd.args(&argv[1..])
        .env_remove("NOTIFY_SOCKET")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(LONG, cmd.output())
        .await
        .expect("unwedge did not finish")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[track_caller]
fn assert_one_line_error(code: i32, want: i32, err: &str, needle: &str) {
    assert_eq!(code, want, "exit code; stderr:\n{err}");
    assert!(err.contains(needle), "{needle:?} not in:\n{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line:\n{err}");
    assert!(!err.contains("panicked"), "panic:\n{err}");
}

/// Bad socket activation (a unit file's mistake, a wrapper passing the wrong fds) is a
/// one-line error before any worker starts, never a panic, and never an fd this process does
/// not own taken and closed as a socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_socket_activation_is_a_clear_error() {
    // Bad variables: usage errors.
    for (env, needle) in [
        (
            &[("LISTEN_FDS", "abc")][..],
            "invalid LISTEN_FDS=\"abc\": not a number of sockets",
        ),
        (
            &[("LISTEN_FDS", "100000000000")][..],
            "invalid LISTEN_FDS=\"100000000000\"",
        ),
        (
            &[("LISTEN_FDS", "1"), ("LISTEN_PID", "me")][..],
            "invalid LISTEN_PID=\"me\": not a process id",
        ),
        (
            &[("LISTEN_FDS", "1"), ("LISTEN_FDNAMES", "web:admin")][..],
            "names 2 sockets but LISTEN_FDS=1",
        ),
    ] {
        let (code, err) = run_activated(&[], env).await;
        assert_one_line_error(code, 2, &err, needle);
    }

    // fd 3 closed (by the shell, whatever the test harness leaves open).
    let (code, err) = run_activated(
        &["/bin/sh", "-c", "exec 3<&-; exec \"$@\"", "sh"],
        &[("LISTEN_FDS", "1")],
    )
    .await;
    assert_one_line_error(
        code,
        1,
        &err,
        "cannot use inherited fd 3 (LISTEN_FDS=1, name listen0): not open",
    );

    // fd 3 a file, then a connected (not listening) socket: the exec shim places them at 3
    // and sets LISTEN_FDS=1 and LISTEN_PID, as systemd would.
    let file = tempfile::tempfile().unwrap();
    let (stream, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
    fcntl(&file, FcntlArg::F_SETFD(FdFlag::empty())).unwrap();
    fcntl(&stream, FcntlArg::F_SETFD(FdFlag::empty())).unwrap();
    for (fd, needle) in [
        (file.as_raw_fd(), "(LISTEN_FDS=1, name web): not a socket"),
        (
            stream.as_raw_fd(),
            "(LISTEN_FDS=1, name web): a stream socket that is not listening",
        ),
    ] {
        let fd = fd.to_string();
        let (code, err) = run_activated(
            &[BIN, "exec-shim", "--"],
            &[("UNWEDGE_SHIM_FDS", fd.as_str()), ("LISTEN_FDNAMES", "web")],
        )
        .await;
        assert_one_line_error(code, 1, &err, needle);
    }
}

/// `LISTEN_FDS` with a `LISTEN_PID` naming another process (variables a parent forgot to
/// remove) are not ours: the supervisor binds `--listen` and takes no fd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_fds_meant_for_another_process_are_ignored() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let sup = Sup::demo_env(
            &["--admin", "none"],
            &[("LISTEN_FDS", "1"), ("LISTEN_PID", "1")],
        );
        let line = sup.wait_line(0, &["starting 1 worker(s)"]).await;
        assert!(line.contains("(sockets: 127.0.0.1:"), "{line}");
        sup.wait_ready(0, 1).await;
        assert_eq!(get(sup.addr().await, "/").await.0, 200);
        assert!(!sup.log().contains("inherited fd"), "{}", sup.log());
    })
    .await
    .expect("test timed out");
}

/// Prints the supervisor's log file when the test fails (any assertion, any timeout).
struct ShowLogOnFailure(std::path::PathBuf);

impl Drop for ShowLogOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.0).unwrap_or_default();
            eprintln!("supervisor log:\n{log}");
        }
    }
}
