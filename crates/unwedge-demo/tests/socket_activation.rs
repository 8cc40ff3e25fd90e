//! Under systemd's own socket activator (the real peer of the `LISTEN_FDS` protocol).

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use rustix::process::Signal;
use support::*;

const ACTIVATE: &str = "/usr/bin/systemd-socket-activate";

#[test]
fn serves_on_the_socket_from_systemd_socket_activate() {
    if !Path::new(ACTIVATE).exists() {
        skip(&format!(
            "{ACTIVATE} is not installed (apt-get install systemd)"
        ));
        return;
    }
    run_test(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        // A free port: systemd-socket-activate binds it itself.
        let port = loopback_listener().1.port();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let stderr_path = dir.path().join("activate.stderr");
        let mut child = tokio::process::Command::new(ACTIVATE)
            .arg("-l")
            .arg(addr.to_string())
            // UNWEDGE_LISTEN would be used only without an inherited socket: make that fail.
            .arg("-E")
            .arg("UNWEDGE_LISTEN=127.0.0.1:1")
            .arg("-E")
            .arg("RUST_LOG=debug")
            .arg(BIN)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        let stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();

        // It listens at once and starts the service on the first connection.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let (status, body) = loop {
            match http(addr, "GET", "/stats").await {
                Ok(r) => break r,
                Err(e) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "no answer on {addr}: {e}; stderr:\n{}",
                        stderr()
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        // systemd-socket-activate execs the service in place: same pid, LISTEN_PID matches.
        assert_eq!(v["pid"], pid);
        assert!(stderr().contains("using inherited socket"), "{}", stderr());
        assert_eq!(http(addr, "GET", "/livez").await.unwrap().0, 200);

        rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).unwrap(),
            Signal::TERM,
        )
        .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .expect("exit after SIGTERM")
            .unwrap();
        assert_eq!(status.code(), Some(0), "stderr:\n{}", stderr());
    });
}
