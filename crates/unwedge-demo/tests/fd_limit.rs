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

/// Out of descriptors, with clients coming and going: every connection that closes lets one
/// accept succeed before the next fails again. The failures are said once (with a count of
/// those not said later), not once per closed connection, and the service still answers
/// every client it can hold.
#[test]
fn accept_failures_out_of_descriptors_are_said_once_not_per_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    run_test(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let (worker, _notify, addr) =
            sole_worker_with(dir.path(), &[("UNWEDGE_TEST_NOFILE", "64")]).await;
        // More clients than the worker has descriptors; each sends a request, reports when
        // answered, and holds its connection until told to let go.
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
        let stderr_says = |what: &str| worker.stderr().matches(what).count();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while stderr_says("accept failed") == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no accept failure with 100 clients and 64 descriptors:\n{}",
                worker.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let started = std::time::Instant::now();
        let mut held: Vec<usize> = Vec::new();
        while let Ok(i) = answered.try_recv() {
            held.push(i);
        }
        // 20 times: one client leaves, and one waiting in the backlog is then answered.
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
        let windows = 1 + (started.elapsed().as_secs() / 10) as usize;
        let said = stderr_says("accept failed");
        assert!(
            said <= windows + 1,
            "{said} accept-failure lines for 20 clients leaving:\n{}",
            worker.stderr()
        );
    });
}
