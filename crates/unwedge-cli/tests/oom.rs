//! A worker killed by the kernel's OOM killer is named as such: the supervisor runs in a
//! memory cgroup with a 200 MiB limit and a worker allocates 400 MiB. Needs root and a
//! writable memory cgroup (v1 `memory` controller or v2 with it enabled); elsewhere it says so
//! and passes.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use unwedge_supervisor::oom::OomCounter;

/// A child memory cgroup of this process's, removed (its processes killed) when dropped.
struct Cgroup(PathBuf);

impl Cgroup {
    /// A new cgroup with `limit` bytes of memory, or why there cannot be one here.
    fn new(limit: u64) -> Result<Cgroup, String> {
        if !nix::unistd::Uid::effective().is_root() {
            return Err("needs root".into());
        }
        let counter = OomCounter::for_this_process().ok_or("no OOM counter")?;
        let parent = counter
            .file()
            .parent()
            .filter(|d| d.starts_with("/sys/fs/cgroup"))
            .ok_or("no memory cgroup (only the machine's count)")?;
        let v2 = counter.file().ends_with("memory.events");
        let dir = parent.join(format!("unwedge-oom-test-{}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let cg = Cgroup(dir);
        let file = if v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        std::fs::write(cg.0.join(file), limit.to_string())
            .map_err(|e| format!("cannot set {file}: {e}"))?;
        if v2 {
            // No swap to escape to.
            let _ = std::fs::write(cg.0.join("memory.swap.max"), "0");
        } else {
            let _ = std::fs::write(cg.0.join("memory.memsw.limit_in_bytes"), limit.to_string());
        }
        Ok(cg)
    }

    fn procs(&self) -> PathBuf {
        self.0.join("cgroup.procs")
    }

    /// Changes the memory limit, as a pod resize or `systemctl set-property` does.
    fn set_limit(&self, limit: u64) {
        let v2 = self.0.join("memory.max").exists();
        let file = if v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        if !v2 {
            // v1 wants the memory+swap limit at least the memory limit: lower it after.
            std::fs::write(self.0.join(file), limit.to_string()).unwrap();
            let _ = std::fs::write(
                self.0.join("memory.memsw.limit_in_bytes"),
                limit.to_string(),
            );
        } else {
            std::fs::write(self.0.join(file), limit.to_string()).unwrap();
        }
    }
}

/// A cgroup limited to 200 MiB, or `None` (after saying why) where none can be made.
fn limited_cgroup() -> Option<Cgroup> {
    match Cgroup::new(200 << 20) {
        Ok(cg) => Some(cg),
        Err(why) => {
            skip_env(&format!(
                "no memory cgroup to limit here ({why}): run the tests as root on a machine whose \
                 memory cgroup (v1, or v2 with the memory controller) is writable"
            ));
            None
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        remove_cgroup(&self.0);
    }
}

/// `unwedge run --listen 127.0.0.1:0 --workers 2 <flags> -- worker.py`, started inside `cg`
/// (its shell joins the cgroup, then execs the supervisor: every worker is in it too).
fn start_in(cg: &Cgroup, flags: &[&str]) -> Sup {
    let py = fixture("worker.py");
    start_command_in(cg, flags, &[py.to_str().unwrap()])
}

/// [`start_in`] with another worker command.
fn start_command_in(cg: &Cgroup, flags: &[&str], command: &[&str]) -> Sup {
    let join = format!("echo $$ > {} && exec \"$@\"", cg.procs().display());
    let mut args = vec!["-c", &join, "sh", BIN, "run", "--listen", "127.0.0.1:0"];
    args.extend(["--workers", "2"]);
    args.extend_from_slice(flags);
    args.push("--");
    args.extend_from_slice(command);
    Sup::start_program("sh", &args, &[])
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_the_oom_killer_kills_is_named_and_counted_apart_from_a_kill_9() {
    let Some(cg) = limited_cgroup() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let alerts = dir.path().join("alerts.jsonl");
    // One JSON event per line: the event on stdin, then a newline.
    let exec = format!("cat >> '{0}' && echo >> '{0}'", alerts.display());
    let mut sup = start_in(&cg, &["--admin", "127.0.0.1:0", "--alert-exec", &exec]);
    let pids = sup.wait_ready(0, 2).await;
    let addr = sup.addr().await;
    let admin = admin_addr(&sup).await;
    let in_cgroup = std::fs::read_to_string(cg.procs()).unwrap();
    assert!(
        in_cgroup.lines().any(|l| l.trim() == pids[0].to_string()),
        "the workers run in the limited cgroup: {in_cgroup}"
    );

    // An ordinary kill -9: a signal, not the OOM killer.
    let mark = sup.mark();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pids[0]), Signal::SIGKILL).unwrap();
    let line = sup
        .wait_line(mark, &[&format!("pid {} killed by SIGKILL after", pids[0])])
        .await;
    assert!(!line.contains("out of memory"), "{line}");
    sup.wait_ready(mark, 1).await;

    // A worker that grows past the cgroup's limit: killed by the kernel, and said so.
    let mark = sup.mark();
    let grown = get_raw(addr, "/grow?mb=400").await;
    assert!(
        grown.is_err() || !grown.as_ref().unwrap().starts_with("HTTP/1.0 200"),
        "{grown:?}"
    );
    let named = sup
        .wait_line(
            mark,
            &["was killed by the kernel's OOM killer: out of memory"],
        )
        .await;
    assert!(
        named.contains("the memory limit of the supervisor's cgroup is 200.0M"),
        "{named}"
    );
    assert!(named.contains("--max-memory below that limit"), "{named}");
    let victim = pid_in(&named).unwrap();
    sup.wait_line(
        mark,
        &[
            &format!("pid {victim} killed by SIGKILL (out of memory: the kernel's OOM killer)"),
            "restarting in",
        ],
    )
    .await;
    sup.wait_ready(mark, 1).await;
    assert_eq!(get(addr, "/").await.0, 200);

    // The crash alert says it, and carries the flag.
    let deadline = std::time::Instant::now() + LONG;
    let event = loop {
        let text = std::fs::read_to_string(&alerts).unwrap_or_default();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| e["pid"] == victim);
        if let Some(e) = found {
            break e;
        }
        assert!(std::time::Instant::now() < deadline, "no alert: {text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(event["kind"], "worker_crashed", "{event}");
    assert_eq!(event["details"]["oom_killed"], true, "{event}");
    let summary = event["summary"].as_str().unwrap_or_default();
    assert!(summary.contains("OOM killer"), "{event}");

    let (_, text) = get(admin, "/metrics").await;
    assert_eq!(
        metric(&text, r#"unwedge_restarts_total{reason="oom"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, r#"unwedge_restarts_total{reason="signal"}"#),
        Some(1.0),
        "{text}"
    );
    sup.signal(Signal::SIGTERM);
    assert_eq!(sup.wait_exit(LONG).await.code(), Some(0), "{}", sup.log());
    drop(cg);
}

/// `GET path` as raw text, or the error (a worker killed mid-request resets the connection).
async fn get_raw(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    http(addr, "GET", path)
        .await
        .map(|(status, body)| format!("HTTP/1.0 {status} {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_max_memory_the_cgroup_cannot_hold_is_pointed_out() {
    let Some(cg) = limited_cgroup() else {
        return;
    };
    let start = |max: &str| start_in(&cg, &["--admin", "off", "--max-memory", max]);
    // 3 × 100M (two workers, one more during a replacement) > 200M: said at start.
    let mut sup = start("100M");
    let line = sup
        .wait_line(0, &["--max-memory 100M for 2 worker(s), and one more"])
        .await;
    assert!(line.contains("adds up to 300.0M"), "{line}");
    assert!(
        line.contains("limit of the supervisor's cgroup (200.0M)"),
        "{line}"
    );
    assert!(line.contains("set --max-memory at most 66.7M"), "{line}");
    sup.wait_ready(0, 2).await;
    sup.signal(Signal::SIGTERM);
    assert_eq!(sup.wait_exit(LONG).await.code(), Some(0), "{}", sup.log());

    // check-config, run in the same cgroup, says it too (a deploy gate sees it).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("unwedge.toml");
    std::fs::write(
        &file,
        "workers = 2\nmax-memory = \"100M\"\ncommand = [\"/bin/true\"]\n",
    )
    .unwrap();
    let join = format!("echo $$ > {} && exec \"$@\"", cg.procs().display());
    let mut check = tokio::process::Command::new("sh");
    check.args([
        "-c",
        &join,
        "sh",
        BIN,
        "check-config",
        file.to_str().unwrap(),
    ]);
    let out = output_of(check).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("unwedge: warning: --max-memory 100M for 2 worker(s)")
            && err.contains("set --max-memory at most 66.7M"),
        "{err}"
    );

    // 3 × 60M fits: nothing said.
    let mut sup = start("60M");
    sup.wait_ready(0, 2).await;
    sup.signal(Signal::SIGTERM);
    assert_eq!(sup.wait_exit(LONG).await.code(), Some(0), "{}", sup.log());
    assert!(!sup.log().contains("adds up to"), "{}", sup.log());
    drop(cg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_memory_auto_shares_the_cgroup_limit_among_the_workers() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("unwedge.toml");
    std::fs::write(
        &file,
        "workers = 2\nmax-memory = \"auto\"\ncommand = [\"/bin/true\"]\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    // Here, outside a limited cgroup: either this process has a limit to share, or auto is an
    // error that says there is none.
    let (code, out) = run_to_end(&["check-config", file]).await;
    match OomCounter::for_this_process().and_then(|c| c.limit()) {
        None => {
            assert_eq!(code, 2, "{out}");
            assert!(
                out.contains("key max-memory: auto: this process has no memory limit"),
                "{out}"
            );
        }
        Some(_) => assert_eq!(code, 0, "{out}"),
    }

    let Some(cg) = limited_cgroup() else {
        return;
    };
    // In a 200 MiB cgroup: 90 % of it for 2 workers and one replacement.
    let join = format!("echo $$ > {} && exec \"$@\"", cg.procs().display());
    let mut check = tokio::process::Command::new("sh");
    check.args(["-c", &join, "sh", BIN, "check-config", file]);
    let out = output_of(check).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("max-memory = \"60M\""), "{text}");

    let mut sup = start_in(&cg, &["--admin", "off", "--max-memory", "auto"]);
    sup.wait_line(0, &["--max-memory auto: 60.0M per worker"])
        .await;
    sup.wait_ready(0, 2).await;
    assert!(!sup.log().contains("adds up to"), "{}", sup.log());
    // The limit lowered to 100 MiB while it runs (a pod resized in place): auto follows, 30M.
    let mark = sup.mark();
    cg.set_limit(100 << 20);
    let line = sup
        .wait_line(
            mark,
            &["--max-memory auto: the cgroup's memory limit is now 100.0M"],
        )
        .await;
    assert!(line.contains("30.0M per worker (was 60.0M)"), "{line}");
    sup.signal(Signal::SIGTERM);
    assert_eq!(sup.wait_exit(LONG).await.code(), Some(0), "{}", sup.log());
    drop(cg);
}

/// A preforking server's own process killed for memory: the worker lives on, so no restart,
/// but the supervisor says it and counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_kill_of_a_workers_child_is_said_and_counted() {
    let Some(cg) = limited_cgroup() else {
        return;
    };
    let py = fixture("worker.py");
    // Worker w1 starts a child that outgrows the cgroup, then serves; w2 just serves.
    let script = format!(
        "if [ \"$UNWEDGE_WORKER\" = w1 ]; then python3 -c 'b = bytearray(400 << 20)'; fi; \
         exec {}",
        py.display()
    );
    let mut sup = start_command_in(
        &cg,
        &["--admin", "127.0.0.1:0", "--ready", "notify"],
        &["sh", "-c", &script],
    );
    let admin = admin_addr(&sup).await;
    let line = sup
        .wait_line(
            0,
            &["the kernel's OOM killer killed 1 process(es) of the supervisor's cgroup that was not a worker"],
        )
        .await;
    assert!(
        line.contains("the cgroup's memory limit is 200.0M"),
        "{line}"
    );
    sup.wait_ready(0, 2).await;
    let log = sup.log();
    assert!(!log.contains("restarting in"), "{log}");
    assert!(
        !log.contains("was killed by the kernel's OOM killer"),
        "{log}"
    );
    let (_, text) = get(admin, "/metrics").await;
    assert_eq!(
        metric(&text, "unwedge_oom_killed_other_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, r#"unwedge_restarts_total{reason="oom"}"#),
        Some(0.0),
        "{text}"
    );
    sup.signal(Signal::SIGTERM);
    assert_eq!(sup.wait_exit(LONG).await.code(), Some(0), "{}", sup.log());
    drop(cg);
}
