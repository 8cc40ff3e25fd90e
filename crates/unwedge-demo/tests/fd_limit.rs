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
        let mut notify = Notify::bind(dir.path(), "notify.sock");
        let (listener, _addr) = loopback_listener();
        // The shell lowers the soft limit, then runs the worker in its place.
        let worker = spawn_worker(
            dir.path(),
            "w",
            Some(&listener),
            &[
                ("NOTIFY_SOCKET", notify.path.to_str().unwrap()),
                ("UNWEDGE_TEST_ULIMIT", "256"),
            ],
        );
        notify
            .expect("READY=1", Duration::from_secs(20), line_is("READY=1"))
            .await;
        let (soft, hard) = nofile(worker.pid);
        assert_eq!(
            soft,
            hard.map(|h| h.min(1 << 20)).or(Some(1 << 20)),
            "soft limit not raised"
        );
        assert_ne!(soft, Some(256));
    });
}
