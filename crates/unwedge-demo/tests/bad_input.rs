//! Bad configuration: one clear line naming the variable and its value, exit code 2; an
//! address in use: a clear error; a vanished notify socket: logged once, serving continues.

mod support;

use std::os::fd::AsFd;
use std::process::Stdio;
use std::time::Duration;

use rustix::process::Signal;
use support::*;

/// Runs the service with `env` and expects it to refuse to start.
async fn refuses(env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = tokio::process::Command::new(BIN);
    for var in [
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "UNWEDGE_LISTEN",
    ] {
        cmd.env_remove(var);
    }
    // Were the bad variable ignored, the service would serve on the default address and
    // the timeout below would fail the test.
    cmd.env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("the service exits instead of serving")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_usage_error(code: i32, stderr: &str, var: &str, value: &str) {
    assert_eq!(code, 2, "stderr:\n{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{stderr}");
    assert!(
        errors[0].contains(&format!("{var}=\"{value}\"")),
        "the error names {var} and {value:?}: {stderr}"
    );
}

/// The variable, its bad value, and the variables it needs to be read at all.
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

#[test]
fn malformed_variables_are_usage_errors_naming_variable_and_value() {
    run_test(Duration::from_secs(60), async {
        let cases: &[Case] = &[
            ("LISTEN_FDS", "two", &[]),
            ("LISTEN_PID", "self", &[("LISTEN_FDS", "1")]),
            ("LISTEN_FDNAMES", "a:b", &[("LISTEN_FDS", "1")]),
            ("NOTIFY_SOCKET", "relative/notify.sock", &[]),
            ("NOTIFY_SOCKET", "@", &[]),
            ("NOTIFY_SOCKET", "vsock:2:1234", &[]),
            ("WATCHDOG_USEC", "-5", &[]),
            ("WATCHDOG_USEC", "0", &[]),
            ("UNWEDGE_LISTEN", "8080", &[]),
            ("UNWEDGE_LISTEN", "127.0.0.1:http", &[]),
            ("UNWEDGE_POLICY", "sometimes", &[]),
            ("UNWEDGE_SHUTDOWN_TIMEOUT", "soon", &[]),
            ("UNWEDGE_CRASH_TIMEOUT", "1e300", &[]),
            ("UNWEDGE_STALL_LIMIT", "18446744073709551615s", &[]),
            ("UNWEDGE_IDLE_TIMEOUT", "forever", &[]),
            ("WATCHDOG_USEC", "18446744073709551615", &[]),
            ("UNWEDGE_BACKTRACE", "yes", &[]),
            ("UNWEDGE_HEALTH_ROUTES", "maybe", &[]),
        ];
        for (var, value, extra) in cases {
            let mut env: Vec<(&str, &str)> = extra.to_vec();
            env.push((var, value));
            let (code, stderr) = refuses(&env).await;
            assert_usage_error(code, &stderr, var, value);
        }
    });
}

#[test]
fn address_in_use_is_a_clear_error() {
    run_test(Duration::from_secs(30), async {
        let (_taken, addr) = loopback_listener();
        let listen = addr.to_string();
        let (code, stderr) = refuses(&[("UNWEDGE_LISTEN", &listen)]).await;
        assert_eq!(code, 1, "stderr:\n{stderr}");
        assert!(
            stderr.contains(&format!(
                "cannot listen on {listen} (UNWEDGE_LISTEN): address already in use"
            )),
            "{stderr}"
        );
    });
}

/// systemd's `Accept=yes` passes a connected socket: `serve()` says so and exits, instead of
/// reporting ready and failing every `accept` forever.
#[test]
fn an_inherited_socket_that_does_not_listen_is_a_clear_error() {
    run_test(Duration::from_secs(30), async {
        let dir = tempfile::tempdir().unwrap();
        let (listener, addr) = loopback_listener();
        let connected = std::net::TcpStream::connect(addr).unwrap();
        let mut worker = spawn_worker_fd(dir.path(), "w", Some(connected.as_fd()), &[]);
        let status = worker.wait_exit(Duration::from_secs(20)).await;
        let stderr = worker.stderr();
        assert_eq!(status.code(), Some(1), "stderr:\n{stderr}");
        assert!(
            stderr.contains(
                "inherited fd 3 (LISTEN_FDS=1) is a connected socket, not a listening one"
            ),
            "{stderr}"
        );
        assert!(stderr.contains("Accept=no"), "{stderr}");
        drop(listener);
    });
}

#[test]
fn listen_pid_of_another_process_leaves_the_sockets_alone() {
    run_test(Duration::from_secs(30), async {
        let dir = tempfile::tempdir().unwrap();
        let mut notify = Notify::bind(dir.path(), "notify.sock");
        let own = loopback_listener().1;
        // LISTEN_FDS=1 with a LISTEN_PID of another process: fd 3 is not ours to take.
        let listen = own.to_string();
        let mut worker = spawn_worker(
            dir.path(),
            "w",
            None,
            &[
                ("LISTEN_FDS", "1"),
                ("LISTEN_PID", "1"),
                ("UNWEDGE_LISTEN", &listen),
                ("NOTIFY_SOCKET", notify.path.to_str().unwrap()),
            ],
        );
        let (_, ready) = notify
            .expect("READY=1", Duration::from_secs(20), line_is("READY=1"))
            .await;
        assert!(ready.contains(&format!("serving on {own}")), "{ready}");
        assert_eq!(http(own, "GET", "/").await.unwrap().0, 200);
        worker.signal(Signal::TERM);
        assert_eq!(
            worker.wait_exit(Duration::from_secs(10)).await.code(),
            Some(0)
        );
    });
}

#[test]
fn vanished_notify_socket_is_logged_once_and_serving_continues() {
    run_test(Duration::from_secs(30), async {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone.sock");
        let (listener, addr) = loopback_listener();
        let listen = gone.to_str().unwrap().to_owned();
        let mut worker = spawn_worker(
            dir.path(),
            "w",
            Some(&listener),
            &[("NOTIFY_SOCKET", &listen), ("WATCHDOG_USEC", "20000")],
        );
        // Many notify messages are attempted (READY, heartbeats every 10 ms, a report).
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while http(addr, "GET", "/").await.map(|r| r.0).ok() != Some(200) {
            assert!(std::time::Instant::now() < deadline, "{}", worker.stderr());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(http(addr, "POST", "/panic").await.unwrap().0, 500);
        let beats_due = std::time::Instant::now() + Duration::from_millis(300);
        while std::time::Instant::now() < beats_due {
            assert_eq!(http(addr, "GET", "/").await.unwrap().0, 200);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        worker.signal(Signal::TERM);
        assert_eq!(
            worker.wait_exit(Duration::from_secs(10)).await.code(),
            Some(0)
        );
        let stderr = worker.stderr();
        assert_eq!(
            stderr.matches("cannot send to NOTIFY_SOCKET").count(),
            1,
            "logged exactly once:\n{stderr}"
        );
    });
}
