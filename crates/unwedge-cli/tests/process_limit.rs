//! The supervisor out of processes (its cgroup's `pids.max` reached: systemd's `TasksMax=`, a
//! pod's pid limit): a worker it cannot start is retried, not counted as a failed start, and
//! the log says what is short and what to raise. Needs root and a writable `pids` cgroup (v1,
//! or v2 with the controller); elsewhere it says so and passes.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A child `pids` cgroup of this process's, removed (its processes killed) when dropped.
struct PidsCgroup(PathBuf);

impl PidsCgroup {
    /// A new cgroup with no limit yet, or why there cannot be one here.
    fn new() -> Result<PidsCgroup, String> {
        if !nix::unistd::Uid::effective().is_root() {
            return Err("needs root".into());
        }
        let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
        // v1: `N:pids:/path`; v2: `0::/path` with the controller enabled there.
        let parent = own
            .lines()
            .find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, ctl, path) = (f.next()?, f.next()?, f.next()?);
                ctl.split(',')
                    .any(|c| c == "pids")
                    .then(|| PathBuf::from(format!("/sys/fs/cgroup/pids{path}")))
            })
            .or_else(|| {
                let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
                let dir = PathBuf::from(format!("/sys/fs/cgroup{path}"));
                let ctl = std::fs::read_to_string(dir.join("cgroup.subtree_control")).ok()?;
                ctl.split_whitespace().any(|c| c == "pids").then_some(dir)
            })
            .ok_or("no pids cgroup")?;
        // Unique even across PID namespaces (a pid repeats there), and across runs.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = parent.join(format!("unwedge-pids-test-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let cg = PidsCgroup(dir);
        cg.set_max("max")
            .map_err(|e| format!("cannot set pids.max: {e}"))?;
        Ok(cg)
    }

    fn procs(&self) -> PathBuf {
        self.0.join("cgroup.procs")
    }

    /// Sets `pids.max` (lower than the count in it: nothing new may start).
    fn set_max(&self, max: &str) -> std::io::Result<()> {
        std::fs::write(self.0.join("pids.max"), max)
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        let _ = self.set_max("max");
        remove_cgroup(&self.0);
    }
}

/// SIGTERM, and the supervisor exits 0: nothing left behind by the shortage.
async fn stops_cleanly(sup: &mut Sup) {
    sup.signal(Signal::SIGTERM);
    assert_eq!(sup.wait_exit(LONG).await.code(), Some(0), "{}", sup.log());
}

/// A new cgroup, or `None` after saying why there is none here.
fn cgroup_or_skip() -> Option<PidsCgroup> {
    PidsCgroup::new()
        .map_err(|why| {
            skip_env(&format!(
                "no pids cgroup to limit here ({why}): run the tests as root on a machine whose \
                 pids cgroup (v1, or v2 with the pids controller) is writable"
            ))
        })
        .ok()
}

/// `unwedge run --workers 2 … <extra> -- worker.py` in `cg`.
fn two_workers_in(cg: &PidsCgroup, extra: &[&str]) -> Sup {
    let py = fixture("worker.py");
    // The shell joins the cgroup (its path as `$0`, quoted), then execs the supervisor.
    let procs = cg.procs();
    let mut args = vec![
        "-c",
        "echo $$ > \"$0\" && exec \"$@\"",
        procs.to_str().expect("a UTF-8 cgroup path"),
        BIN,
        "run",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "off",
        "--workers",
        "2",
        "--max-restarts",
        "2",
        "--restart-delay",
        "10ms",
        "--restart-delay-max",
        "100ms",
    ];
    args.extend_from_slice(extra);
    args.extend(["--", py.to_str().unwrap()]);
    Sup::start_program("sh", &args, &[])
}

/// Two workers serve; the cgroup's process limit drops below what runs and one worker is
/// killed: its replacement cannot be forked (`EAGAIN`). The supervisor says it is short of
/// processes and names the limits to raise, retries without counting failed starts (so it
/// does not give up: `--max-restarts 2`), the other worker is left running, and once the
/// limit is raised the replacement starts, is ready, and the service answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_processes_is_retried_and_named() {
    let Some(cg) = cgroup_or_skip() else { return };
    tokio::time::timeout(Duration::from_secs(90), async {
        let mut sup = two_workers_in(&cg, &[]);
        let pids = sup.wait_ready(0, 2).await;
        let addr = sup.addr().await;
        cg.set_max("1").unwrap();
        let from = sup.mark();
        kill(Pid::from_raw(pids[0]), Signal::SIGKILL).unwrap();
        let line = sup
            .wait_line(from, &["cannot start worker", "short of processes"])
            .await;
        assert!(line.contains("TasksMax="), "{line}");
        assert!(line.contains("pids.max"), "{line}");
        assert!(line.contains("not counted as a failed start"), "{line}");
        // More retries than --max-restarts allows failed starts, and no giving up.
        for _ in 0..3 {
            sup.wait_line(sup.mark(), &["short of processes"]).await;
        }
        assert!(!sup.log().contains("giving up"), "{}", sup.log());
        // The other worker is left alone (it may not serve: a thread per request is a task
        // the limit refuses it too).
        kill(Pid::from_raw(pids[1]), None).expect("the other worker still runs");
        let raised = sup.mark();
        cg.set_max("max").unwrap();
        sup.wait_ready(raised, 1).await;
        assert_eq!(get(addr, "/").await.0, 200, "log:\n{}", sup.log());
        stops_cleanly(&mut sup).await;
    })
    .await
    .expect("test timed out");
}

/// A reload whose new workers cannot be forked (the limit fits the serving generation, not a
/// second one beside it) fails, naming the shortage; the serving generation goes on, alone,
/// and a reload once the limit is raised succeeds. Before, each start was retried as a worker
/// of the *serving* generation: a third and fourth old worker ran, the reload never ended
/// nor failed, and every later reload only queued behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_short_of_processes_fails_and_the_serving_generation_goes_on() {
    let Some(cg) = cgroup_or_skip() else { return };
    tokio::time::timeout(Duration::from_secs(90), async {
        let mut sup = two_workers_in(&cg, &[]);
        let pids = sup.wait_ready(0, 2).await;
        let addr = sup.addr().await;
        cg.set_max("1").unwrap();
        let from = sup.mark();
        sup.signal(Signal::SIGHUP);
        let line = sup.wait_line(from, &["reload failed"]).await;
        assert!(line.contains("short of processes"), "{line}");
        assert!(line.contains("generation 1 keeps serving"), "{line}");
        for pid in &pids {
            kill(Pid::from_raw(*pid), None).expect("a worker of the serving generation ended");
        }
        let raised = sup.mark();
        cg.set_max("max").unwrap();
        sup.signal(Signal::SIGHUP);
        sup.wait_line(raised, &["generation 3 ready"]).await;
        let new = sup.wait_ready(raised, 2).await;
        assert!(new.iter().all(|p| !pids.contains(p)), "{}", sup.log());
        assert_eq!(get(addr, "/").await.0, 200, "log:\n{}", sup.log());
        // Two workers, not the four of a reload that never ended.
        let log = sup.log_since(from);
        assert_eq!(log.matches(" ready in ").count(), 2, "{log}");
        stops_cleanly(&mut sup).await;
    })
    .await
    .expect("test timed out");
}

/// A crash while the supervisor cannot start a thread (its process limit reached) has no
/// report written, and the log says why; the crashes after it are recorded as before. Before,
/// the writing thread came from tokio's blocking pool, which panics when it cannot start one:
/// the task that writes reports and sends alerts ended, and nothing was recorded again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_that_cannot_get_a_thread_stops_no_later_one() {
    let Some(cg) = cgroup_or_skip() else { return };
    tokio::time::timeout(Duration::from_secs(90), async {
        let dir = tempfile::tempdir().unwrap();
        let dir_s = dir.path().to_str().unwrap().to_owned();
        let mut sup = two_workers_in(&cg, &["--report-dir", &dir_s]);
        let pids = sup.wait_ready(0, 2).await;
        cg.set_max("1").unwrap();
        let from = sup.mark();
        kill(Pid::from_raw(pids[0]), Signal::SIGKILL).unwrap();
        let line = sup.wait_line(from, &["crash report not written"]).await;
        assert!(line.contains("cannot start a thread"), "{line}");
        let raised = sup.mark();
        cg.set_max("max").unwrap();
        sup.wait_ready(raised, 1).await;
        kill(Pid::from_raw(pids[1]), Signal::SIGKILL).unwrap();
        let deadline = std::time::Instant::now() + LONG;
        loop {
            let (code, out) = run_to_end(&["reports", "--dir", &dir_s, "--json"]).await;
            assert_eq!(code, 0, "{out}");
            let recorded = out.lines().any(|l| {
                l.contains("\"kind\":\"exit\"") && l.contains(&format!("\"pid\":{}", pids[1]))
            });
            if recorded {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no report of the crash after the shortage: {out}\n{}",
                sup.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stops_cleanly(&mut sup).await;
    })
    .await
    .expect("test timed out");
}
