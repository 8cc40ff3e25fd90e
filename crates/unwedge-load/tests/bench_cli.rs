//! The `unwedge-bench` binary, run for real: `load` against a real server, bad input, the
//! hidden serve subcommands, and a short `overhead` run.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_unwedge-bench");

/// Every test ends within this, whatever happens.
async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test took longer than 60 s")
}

fn bench() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.kill_on_drop(true).stdin(Stdio::null());
    cmd
}

async fn hello_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "hello" }))
        .route(
            "/boom",
            axum::routing::get(|| async { axum::http::StatusCode::INTERNAL_SERVER_ERROR }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn load_prints_a_json_report() {
    within(async {
        let addr = hello_server().await;
        let out = bench()
            .args([
                "load",
                "--url",
                &format!("http://{addr}/boom"),
                "-n",
                "40",
                "-c",
                "4",
            ])
            .args(["--expect-failure", "500", "--json"])
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["total"], 40);
        assert_eq!(report["expected_failures"], 40);
        assert_eq!(report["by_status"]["500"], 40);
    })
    .await;
}

#[tokio::test]
async fn load_check_fails_on_unexpected_failures() {
    within(async {
        let addr = free_addr(); // nothing listens: every request is refused
        let out = bench()
            .args([
                "load",
                "--url",
                &format!("http://{addr}/"),
                "-n",
                "5",
                "--check",
            ])
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("refused 5"), "{text}");
    })
    .await;
}

#[tokio::test]
async fn bad_input_exits_2_with_one_line() {
    within(async {
        for args in [
            vec!["load", "--url", "http://192.0.2.1:80/", "-n", "1"],
            vec!["load", "--url", "ftp://127.0.0.1/", "-n", "1"],
            vec!["load", "--url", "http://127.0.0.1:1/", "-c", "0", "-n", "1"],
            vec!["load", "--url", "http://127.0.0.1:1/", "--duration", "soon"],
            // Out of the clock's range (review: panics, exit 101).
            vec![
                "load",
                "--url",
                "http://127.0.0.1:1/",
                "-r",
                "1e-300",
                "-n",
                "1",
            ],
            vec![
                "load",
                "--url",
                "http://127.0.0.1:1/",
                "-d",
                "9223372036854775807s",
            ],
            // Nothing to run; a status no response can have.
            vec!["load", "--url", "http://127.0.0.1:1/", "-n", "0"],
            vec![
                "load",
                "--url",
                "http://127.0.0.1:1/",
                "-n",
                "1",
                "--expect-failure",
                "999",
            ],
            vec!["serve-bare", "--listen", "0.0.0.0:0"],
            // The flag parser's own errors too.
            vec!["load", "--bogus"],
            vec!["load", "--url", "http://127.0.0.1:1/", "-c", "x"],
            vec!["no-such-command"],
        ] {
            let out = bench().args(&args).output().await.unwrap();
            assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.starts_with("error"), "{args:?}: {err}");
            assert!(!err.contains("panicked"), "{args:?}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        }
    })
    .await;
}

#[tokio::test]
async fn every_serve_subcommand_serves_hello() {
    within(async {
        for sub in ["serve-bare", "serve-catchpanic", "serve-unwedge"] {
            let addr = free_addr();
            let mut child = bench()
                .args([sub, "--listen", &addr.to_string(), "--threads", "1"])
                .env_remove("LISTEN_FDS")
                .env_remove("UNWEDGE_LISTEN")
                .env_remove("NOTIFY_SOCKET")
                .spawn()
                .unwrap();
            // Await the event: the port accepts.
            while tokio::net::TcpStream::connect(addr).await.is_err() {
                assert!(child.try_wait().unwrap().is_none(), "{sub} exited early");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let config = unwedge_load::LoadConfig::from_addr(addr).unwrap().count(20);
            let report = unwedge_load::run(config).await.unwrap();
            assert_eq!(report.ok, 20, "{sub}: {report}");
            // Only unwedge::serve mounts the health routes: proof the stack is the one named.
            let livez = unwedge_load::RequestSpec::get("/livez")
                .ok_status(200)
                .ok_status(404);
            let config = unwedge_load::LoadConfig::from_addr(addr)
                .unwrap()
                .request(livez)
                .count(1);
            let report = unwedge_load::run(config).await.unwrap();
            let expected = if sub == "serve-unwedge" { 200 } else { 404 };
            assert_eq!(report.status(expected), 1, "{sub}: {report}");
            child.kill().await.unwrap();
        }
    })
    .await;
}

#[tokio::test]
async fn overhead_prints_a_table_with_three_servers() {
    within(async {
        let out = bench()
            .args([
                "overhead",
                "--rounds",
                "1",
                "--duration",
                "300ms",
                "--warmup",
                "0s",
            ])
            .args(["--no-wrk", "--no-supervisor", "--json"])
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        for row in [
            "| axum::serve (bare) |",
            "| axum::serve + CatchPanicLayer |",
            "| unwedge::serve |",
        ] {
            assert!(text.contains(row), "missing {row}:\n{text}");
        }
        assert!(text.contains("Command: `"), "{text}");
    })
    .await;
}
