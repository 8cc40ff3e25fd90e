//! The seed's Go server2 (a panic inside a locked section leaves the mutex locked; the next
//! request hangs forever) under `unwedge run --port-env PORT --probe /`.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_deadlock_is_detected_dumped_and_replaced() {
    let Ok(go) = which_go() else {
        skip("go not installed (apt-get install golang-go)");
        return;
    };
    tokio::time::timeout(Duration::from_secs(120), async {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("server2");
        let build = tokio::process::Command::new(go)
            .args(["build", "-o"])
            .arg(&bin)
            .arg(fixture("server2.go"))
            .env("GOCACHE", dir.path().join("gocache"))
            .env("GOFLAGS", "-mod=mod")
            .env("GO111MODULE", "off")
            .kill_on_drop(true)
            .output()
            .await
            .unwrap();
        assert!(
            build.status.success(),
            "go build: {}",
            String::from_utf8_lossy(&build.stderr)
        );

        let sup = Sup::start(&[
            "run",
            "--port-env",
            "PORT",
            "--probe",
            "/",
            "--probe-interval",
            "200ms",
            "--probe-timeout",
            "500ms",
            "--probe-failures",
            "2",
            "--dump-grace",
            "500ms",
            "--",
            bin.to_str().unwrap(),
        ]);
        let first = sup.wait_ready(0, 1).await[0];
        // The first probe panics inside the locked section (Go recovers, closes the
        // connection); the second one hangs on the mutex: a deadlock, found by the probe.
        let hung = sup
            .wait_line(0, &["is hung (probe", "sending SIGQUIT"])
            .await;
        assert_eq!(pid_in(&hung), Some(first));
        let log_has = |s: &str| {
            sup.log()
                .lines()
                .any(|l| l.starts_with(&format!("[w1 pid {first}]")) && l.contains(s))
        };
        sup.wait_line(0, &[&format!("[w1 pid {first}] goroutine ")])
            .await;
        sup.wait_line(0, &[&format!("[w1 pid {first}] sync.(*Mutex).Lock")])
            .await;
        assert!(log_has("http: panic serving"), "{}", sup.log());
        let ready = sup.wait_line(0, &["after the crash"]).await;
        let second = pid_in(&ready).unwrap();
        assert_ne!(second, first);
        let port: u16 = ready
            .split("port ")
            .nth(1)
            .unwrap()
            .trim_end_matches(')')
            .parse()
            .unwrap();
        // It answers again (server2 answers every request by panicking: the connection is
        // closed at once instead of hanging). A hanging one holds the request until `http`
        // gives up after 5 s: 4 s leaves a loaded box room and still tells them apart.
        let t = std::time::Instant::now();
        let r = http(([127, 0, 0, 1], port).into(), "GET", "/").await;
        assert!(
            t.elapsed() < Duration::from_secs(4),
            "replacement hangs: {r:?}"
        );
    })
    .await
    .expect("test timed out");
}

fn which_go() -> Result<std::path::PathBuf, ()> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([
            std::path::PathBuf::from("/usr/lib/go/bin"),
            std::path::PathBuf::from("/usr/local/go/bin"),
        ])
        .map(|d| d.join("go"))
        .find(|p| p.is_file())
        .ok_or(())
}
