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
