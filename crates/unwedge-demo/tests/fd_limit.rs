//! `serve()` raises the soft open-file limit to the hard one, as Go's runtime does: a worker
//! started with the usual low soft limit can hold as many connections as the hard limit lets.

mod support;

use std::time::Duration;

use support::*;

/// (soft, hard) "Max open files" of a process, from /proc; `None` for "unlimited".
fn nofile(pid: u32) -> (Option<u64>, Option<u64>) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut f = line["Max open files".len()..].split_whitespace();
    let parse = |v: &str| v.parse().ok();
    (parse(f.next().unwrap()), parse(f.next().unwrap()))
}

#[test]
fn a_low_soft_open_file_limit_is_raised_to_the_hard_one() {
    run_test(Duration::from_secs(30), async {
        let dir = tempfile::tempdir().unwrap();
        // The shell lowers the soft limit, then runs the worker in its place.
        let (worker, _notify, _addr) =
            sole_worker_with(dir.path(), &[("UNWEDGE_TEST_ULIMIT", "256")]).await;
        let (soft, hard) = nofile(worker.pid);
        assert_eq!(
            soft,
            hard.map(|h| h.min(1 << 20)).or(Some(1 << 20)),
            "soft limit not raised"
        );
        assert_ne!(soft, Some(256));
    });
}

/// A worker started with `env`; 100 clients each send a request and hold their connection;
/// once `first` appears in the worker's stderr, 20 times one client leaves and one waiting in
/// the backlog is answered. Returns the worker's stderr and how long the 20 rounds took.
async fn clients_come_and_go(env: &[(&str, &str)], first: &str) -> (String, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let (worker, _notify, addr) = sole_worker_with(dir.path(), env).await;
    let (answered_tx, mut answered) = tokio::sync::mpsc::unbounded_channel();
    let mut let_go = Vec::new();
    for i in 0..100 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (go, gone) = tokio::sync::oneshot::channel::<()>();
        let_go.push(Some(go));
        let answered_tx = answered_tx.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            if matches!(s.read(&mut buf).await, Ok(n) if n > 0) {
                let _ = answered_tx.send(i);
                let _ = gone.await;
            }
        });
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !worker.stderr().contains(first) {
        assert!(
            std::time::Instant::now() < deadline,
            "no {first:?} with 100 clients:\n{}",
            worker.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = std::time::Instant::now();
    let mut held: Vec<usize> = Vec::new();
    while let Ok(i) = answered.try_recv() {
        held.push(i);
    }
    for _ in 0..20 {
        let i = match held.pop() {
            Some(i) => i,
            None => tokio::time::timeout(Duration::from_secs(10), answered.recv())
                .await
                .expect("a held client")
                .unwrap(),
        };
        let_go[i].take().unwrap().send(()).unwrap();
        let next = tokio::time::timeout(Duration::from_secs(10), answered.recv())
            .await
            .expect("a client waiting in the backlog is answered once one leaves")
            .unwrap();
        held.push(next);
    }
    (worker.stderr(), started.elapsed())
}

/// Out of descriptors (no connection limit), with clients coming and going: every connection
/// that closes lets one accept succeed before the next fails again. The failures are said once
/// (with a count of those not said later), not once per closed connection, and the service
/// still answers every client it can hold.
#[test]
fn accept_failures_out_of_descriptors_are_said_once_not_per_connection() {
    run_test(Duration::from_secs(60), async {
        let env = [
            ("UNWEDGE_TEST_NOFILE", "64"),
            ("UNWEDGE_MAX_CONNECTIONS", "0"),
        ];
        let (stderr, took) = clients_come_and_go(&env, "accept failed").await;
        let windows = 1 + (took.as_secs() / 10) as usize;
        let said = stderr.matches("accept failed").count();
        assert!(
            said <= windows + 1,
            "{said} accept-failure lines for 20 clients leaving:\n{stderr}"
        );
    });
}

/// The default connection limit (seven eighths of the open-file limit) keeps the process from
/// running out of descriptors: with 100 clients and 64 descriptors, 32 are served at once, the
/// others wait in the backlog and are served as clients leave, and `accept` never fails.
#[test]
fn the_default_connection_limit_keeps_descriptors_for_the_app() {
    run_test(Duration::from_secs(60), async {
        let env = [("UNWEDGE_TEST_NOFILE", "64")];
        let (stderr, _) = clients_come_and_go(&env, "at the connection limit (32)").await;
        assert!(!stderr.contains("accept failed"), "{stderr}");
        assert_eq!(
            stderr.matches("at the connection limit").count(),
            1,
            "said once per 10 s:\n{stderr}"
        );
    });
}

/// `UNWEDGE_MAX_CONNECTIONS` sets the limit: the fifth client waits until one of four leaves.
#[test]
fn max_connections_from_the_environment_holds_the_fifth_client_back() {
    run_test(Duration::from_secs(60), async {
        let env = [("UNWEDGE_MAX_CONNECTIONS", "4")];
        let (stderr, _) = clients_come_and_go(&env, "at the connection limit (4)").await;
        assert!(!stderr.contains("accept failed"), "{stderr}");
    });
}

/// A malformed `UNWEDGE_MAX_CONNECTIONS` is a usage error naming it (exit 2), not the default.
#[test]
fn a_malformed_max_connections_is_a_usage_error() {
    run_test(Duration::from_secs(30), async {
        let dir = tempfile::tempdir().unwrap();
        let mut worker = spawn_worker(
            dir.path(),
            "w",
            None,
            &[("UNWEDGE_MAX_CONNECTIONS", "lots")],
        );
        let status = worker.wait_exit(Duration::from_secs(20)).await;
        assert_eq!(status.code(), Some(2), "stderr:\n{}", worker.stderr());
        assert!(
            worker.stderr().contains("UNWEDGE_MAX_CONNECTIONS"),
            "{}",
            worker.stderr()
        );
    });
}

/// A limit past what tokio's semaphore holds (`usize::MAX`, 2^61) is no limit: it made the
/// worker panic at start (exit 101) with tokio's "a semaphore may not have more than
/// MAX_PERMITS permits" (review).
#[test]
fn a_huge_max_connections_is_no_limit_not_a_panic() {
    run_test(Duration::from_secs(30), async {
        let dir = tempfile::tempdir().unwrap();
        let huge = usize::MAX.to_string();
        let (_worker, _notify, addr) =
            sole_worker_with(dir.path(), &[("UNWEDGE_MAX_CONNECTIONS", huge.as_str())]).await;
        let (code, _) = http(addr, "GET", "/").await.expect("GET /");
        assert_eq!(code, 200);
    });
}
