//! `unwedge run` with its admin endpoint, report directory and alerts, end to end: the real
//! binary, real `unwedge demo-service` workers, real sockets on 127.0.0.1, real signals.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    admin_addr, another_program, fixture, get, http, http_as, proc_state, python_has, run_split,
    run_to_end, skip, Sup, BIN, LONG,
};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// Hard limit of every test.
const TEST_LIMIT: Duration = Duration::from_secs(60);

async fn limited<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_LIMIT, f)
        .await
        .expect("test took longer than its hard limit");
}

/// `unwedge run … --admin 127.0.0.1:0 … -- unwedge demo-service`.
fn start(workers: &str, extra: &[&str]) -> Sup {
    let mut args = vec![
        "run",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        workers,
        "--admin",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", BIN, "demo-service"]);
    Sup::start(&args)
}

async fn status(admin: SocketAddr) -> Value {
    let (code, body) = get(admin, "/status").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body}"))
}

/// Waits until `/status` satisfies `ok`; returns that status.
async fn status_until(
    sup: &Sup,
    admin: SocketAddr,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + LONG;
    loop {
        let s = status(admin).await;
        if ok(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "/status never showed {what}: {s}\nlog:\n{}",
            sup.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn ready_pids(s: &Value) -> Vec<i32> {
    s["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["state"] == "ready")
        .map(|w| w["pid"].as_i64().unwrap() as i32)
        .collect()
}

/// Kills leftover workers (reparented after the supervisor was SIGKILLed).
fn kill_workers(pids: &[i32]) {
    for &p in pids {
        let is_demo = std::fs::read(format!("/proc/{p}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains("demo-service"))
            .unwrap_or(false);
        if is_demo {
            let _ = killpg(Pid::from_raw(p), Signal::SIGKILL);
        }
    }
}

// ---- a webhook receiver on 127.0.0.1 ----

#[derive(Debug, Clone)]
struct Received {
    at: Instant,
    body: Value,
}

#[derive(Clone)]
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
    connections: Arc<Mutex<usize>>,
    notify: Arc<Notify>,
}

impl Receiver {
    /// `hang`: read each request and never answer.
    async fn start(hang: bool) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let r = Receiver {
            addr: listener.local_addr().unwrap(),
            got: Arc::default(),
            connections: Arc::default(),
            notify: Arc::default(),
        };
        let rx = r.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                *rx.connections.lock().unwrap() += 1;
                rx.notify.notify_waiters();
                let rx = rx.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        // One request: headers, then Content-Length bytes of body.
                        let head_end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            let mut chunk = [0u8; 4096];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map(|v| v.trim().parse().unwrap())
                            .unwrap_or(0);
                        while buf.len() < head_end + len {
                            let mut chunk = [0u8; 4096];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let body: Value =
                            serde_json::from_slice(&buf[head_end..head_end + len]).unwrap();
                        buf.drain(..head_end + len);
                        rx.got.lock().unwrap().push(Received {
                            at: Instant::now(),
                            body,
                        });
                        rx.notify.notify_waiters();
                        if hang {
                            // Hold the connection, answer nothing.
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            return;
                        }
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                        if s.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        r
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn kinds(&self) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.body["event"]["kind"].as_str().unwrap_or("?").to_owned())
            .collect()
    }

    /// Waits for the first alert `ok` accepts.
    async fn wait_for(&self, what: &str, ok: impl Fn(&Value) -> bool) -> Received {
        let deadline = Instant::now() + LONG;
        loop {
            let notified = self.notify.notified();
            if let Some(r) = self.got.lock().unwrap().iter().find(|r| ok(&r.body)) {
                return r.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no alert {what}; got {:?}", self.kinds());
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), notified).await;
        }
    }

    /// Waits for the `n`-th (1-based) alert of `kind`.
    async fn wait_kind(&self, kind: &str, n: usize) -> Received {
        let deadline = Instant::now() + LONG;
        loop {
            let notified = self.notify.notified();
            {
                let got = self.got.lock().unwrap();
                if let Some(r) = got
                    .iter()
                    .filter(|r| r.body["event"]["kind"] == kind)
                    .nth(n - 1)
                {
                    return r.clone();
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {kind} alert #{n}; got {:?}",
                self.kinds()
            );
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), notified).await;
        }
    }
}

// ---- /status ----

#[tokio::test]
async fn status_json_matches_the_real_workers() {
    limited(async {
        let sup = start("2", &[]);
        let admin = admin_addr(&sup).await;
        let logged = sup.wait_ready(0, 2).await;
        let s = status_until(&sup, admin, "2 ready workers", |s| ready_pids(s).len() == 2).await;
        assert_eq!(s["supervisor"]["pid"], sup.pid);
        assert_eq!(s["supervisor"]["gave_up"], false);
        let mut pids = ready_pids(&s);
        pids.sort();
        let mut logged_sorted = logged.clone();
        logged_sorted.sort();
        assert_eq!(pids, logged_sorted, "{s}");
        let mut ids: Vec<&str> = s["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["id"].as_str().unwrap())
            .collect();
        ids.sort();
        assert_eq!(ids, ["w1", "w2"]);
        // Each worker's resident memory, as the kernel counts it.
        for w in s["workers"].as_array().unwrap() {
            let pid = w["pid"].as_i64().unwrap() as i32;
            let rss = w["memory_bytes"].as_u64().unwrap_or(0);
            let now = unwedge_supervisor::memory::worker_bytes(pid).unwrap();
            assert!(rss > 1 << 20, "{w}");
            assert!(rss.abs_diff(now) < 64 << 20, "{rss} vs {now} now: {w}");
        }
        let (_, metrics) = get(admin, "/metrics").await;
        assert!(
            metrics.contains("unwedge_worker_resident_bytes{worker=\"w1\"} "),
            "{metrics}"
        );
        for pid in &pids {
            // A live child of this supervisor, running the demo service.
            let (_, ppid) = proc_state(*pid).expect("worker pid is alive");
            assert_eq!(ppid, sup.pid, "pid {pid} is not the supervisor's child");
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
            assert!(
                String::from_utf8_lossy(&cmdline).contains("demo-service"),
                "pid {pid} runs {:?}",
                String::from_utf8_lossy(&cmdline)
            );
        }
        assert_eq!(get(admin, "/readyz").await.0, 200);
        assert_eq!(get(admin, "/livez").await.0, 200);

        // A crash shows as a new pid in the same slot, the old one's exit and its report.
        let from = sup.mark();
        let addr = sup.addr().await;
        let _ = http(addr, "POST", "/poison").await;
        sup.wait_line(from, &["exit status 70"]).await;
        let exit_pid = |s: &Value| {
            s["reports"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["kind"] == "exit")
                .map(|r| r["pid"].as_i64().unwrap() as i32)
        };
        let s = status_until(
            &sup,
            admin,
            "the replacement ready and the exit recorded",
            |s| {
                exit_pid(s).is_some_and(|p| !ready_pids(s).contains(&p)) && ready_pids(s).len() == 2
            },
        )
        .await;
        let poisoned = exit_pid(&s).unwrap();
        assert!(pids.contains(&poisoned), "{s}");
        let exit = s["reports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["kind"] == "exit")
            .unwrap();
        assert_eq!(exit["pid"], poisoned);
        assert_eq!(exit["code"], 70);
        let slot = exit["worker"].as_str().unwrap();
        let w = s["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["id"] == slot && w["state"] == "ready")
            .unwrap();
        assert_eq!(w["restarts"], 1, "{s}");
        assert_eq!(w["last_exit"]["code"], 70, "{s}");
        assert!(
            w["last_report"]
                .as_str()
                .is_some_and(|r| r.contains("POST /poison")),
            "{s}"
        );
        assert!(s["restarts"].as_array().unwrap().len() == 1, "{s}");
    })
    .await;
}

// ---- /metrics ----

const PARSE_METRICS: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        out[f"{s.name}{{{labels}}}"] = s.value
print(json.dumps(out))
"#;

/// `/metrics` in the Prometheus text format (what a client that does not ask for OpenMetrics
/// gets): each sample line's series, as written there (`name{label="value",…}`, or `name`
/// alone), → its value. Read without a parser: the tests of what the counters say run
/// wherever the supervisor does; that the format parses is checked by its own tests.
async fn samples(admin: SocketAddr) -> HashMap<String, f64> {
    let (code, text) = get(admin, "/metrics").await;
    assert_eq!(code, 200, "{text}");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Scrapes until [`samples`] satisfies `ok`; returns those samples.
async fn samples_until(
    admin: SocketAddr,
    what: &str,
    ok: impl Fn(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    let deadline = Instant::now() + LONG;
    loop {
        let m = samples(admin).await;
        if ok(&m) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "/metrics never showed {what}: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of `series` in samples `m`, which must have it.
fn val(m: &HashMap<String, f64>, series: &str) -> f64 {
    *m.get(series)
        .unwrap_or_else(|| panic!("no sample {series} in {m:?}"))
}

/// `/metrics`, parsed by Prometheus' own Python parser (prometheus_client):
/// `name{label=value,…}` → value.
async fn scrape(admin: SocketAddr) -> HashMap<String, f64> {
    let (code, text) = get(admin, "/metrics").await;
    assert_eq!(code, 200);
    let mut child = tokio::process::Command::new("python3")
        .args(["-c", PARSE_METRICS])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(LONG, child.wait_with_output())
        .await
        .expect("parser hung")
        .unwrap();
    assert!(
        out.status.success(),
        "prometheus_client rejects /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn metrics_counters_move_after_a_crash_and_a_hang() {
    limited(async {
        // 3 s: heartbeats every 1.5 s leave a loaded box room, so that the one hang counted
        // is the one this test makes (how soon it is found is not the point here).
        let sup = start("2", &["--watchdog", "3s", "--dump-grace", "100ms"]);
        let admin = admin_addr(&sup).await;
        sup.wait_ready(0, 2).await;
        let m = samples_until(admin, "2 ready workers", |m| {
            m.get(r#"unwedge_workers{state="ready"}"#) == Some(&2.0)
        })
        .await;
        assert_eq!(
            val(&m, r#"unwedge_restarts_total{reason="exit_code"}"#),
            0.0
        );
        assert_eq!(
            val(&m, r#"unwedge_hangs_detected_total{kind="watchdog"}"#),
            0.0
        );
        assert_eq!(val(&m, r#"unwedge_build_info{version="0.1.0"}"#), 1.0);

        // A crash: a poisoned lock, a graceful crash with exit 70, a replacement.
        let from = sup.mark();
        let _ = http(sup.addr().await, "POST", "/poison").await;
        sup.wait_line(from, &["exit status 70"]).await;
        let crash_restarts = |m: &HashMap<String, f64>| {
            // exit_code, or tainted when the supervisor saw STATUS=tainted first.
            m.get(r#"unwedge_restarts_total{reason="exit_code"}"#)
                .unwrap_or(&0.0)
                + m.get(r#"unwedge_restarts_total{reason="tainted"}"#)
                    .unwrap_or(&0.0)
        };
        let m = samples_until(admin, "the crash counted", |m| {
            crash_restarts(m) == 1.0
                && m.get("unwedge_crash_to_ready_seconds_count") == Some(&1.0)
                && m.get(r#"unwedge_workers{state="ready"}"#) == Some(&2.0)
        })
        .await;
        assert_eq!(val(&m, r#"unwedge_panics_total{route="/poison"}"#), 1.0);
        assert_eq!(
            val(&m, "unwedge_reports_written_total"),
            0.0,
            "no report dir"
        );

        // A hang: SIGSTOP a worker; no heartbeat within 3 s.
        let stopped = ready_pids(&status(admin).await)[0];
        let from = sup.mark();
        kill(Pid::from_raw(stopped), Signal::SIGSTOP).unwrap();
        sup.wait_line(from, &[&format!("pid {stopped} is hung")])
            .await;
        let m = samples_until(admin, "the hang counted", |m| {
            m.get(r#"unwedge_hangs_detected_total{kind="watchdog"}"#) == Some(&1.0)
                && m.get(r#"unwedge_restarts_total{reason="hang"}"#) == Some(&1.0)
                && m.get("unwedge_crash_to_ready_seconds_count") == Some(&2.0)
        })
        .await;
        assert_eq!(crash_restarts(&m), 1.0);
        assert_eq!(val(&m, r#"unwedge_alerts_sent_total{sink="webhook"}"#), 0.0);
    })
    .await;
}

// ---- alerts ----

#[tokio::test]
async fn webhook_gets_exactly_one_alert_per_event() {
    limited(async {
        let hook = Receiver::start(false).await;
        let url = hook.url();
        // 3 s: heartbeats every 1.5 s leave a loaded box room, so that the only worker_hung
        // is the one this test makes (how soon it is found is not the point here).
        let mut sup = start(
            "2",
            &[
                "--watchdog",
                "3s",
                "--dump-grace",
                "100ms",
                "--alert-webhook",
                &url,
            ],
        );
        let admin = admin_addr(&sup).await;
        sup.wait_ready(0, 2).await;
        let pids =
            ready_pids(&status_until(&sup, admin, "2 ready", |s| ready_pids(s).len() == 2).await);

        // A poisoned lock: the worker says it is tainted (before it says STOPPING=1) and
        // crashes with exit 70. One alert, `state_tainted`; its exit is no second one.
        let _ = http(sup.addr().await, "POST", "/poison").await;
        let first = hook.wait_for("about the poisoned worker", |_| true).await;
        let ev = &first.body["event"];
        let first_kind = ev["kind"].as_str().unwrap().to_owned();
        let poisoned = ev["pid"].as_i64().unwrap() as i32;
        assert!(pids.contains(&poisoned), "{ev}");
        let text = first.body["text"].as_str().unwrap();
        assert_eq!(first_kind, "state_tainted", "{ev}");
        assert!(text.contains("poisoned"), "{text}");
        // The tainted worker is no longer listed as ready as soon as it said so (it used to be
        // until its STOPPING=1, and this test then froze a leaving worker, never found hung).
        let s = status(admin).await;
        assert!(!ready_pids(&s).contains(&poisoned), "{s}");
        status_until(&sup, admin, "2 ready again", |s| ready_pids(s).len() == 2).await;

        // A hang: one worker_hung, and its SIGKILL is no second (crash) alert.
        let stopped = ready_pids(&status(admin).await)[0];
        let from = sup.mark();
        kill(Pid::from_raw(stopped), Signal::SIGSTOP).unwrap();
        let Ok(hung) = tokio::time::timeout(
            LONG - Duration::from_secs(2),
            hook.wait_kind("worker_hung", 1),
        )
        .await
        else {
            panic!("pid {stopped} frozen, no worker_hung alert\n{}", sup.log());
        };
        assert_eq!(hung.body["event"]["pid"], stopped);
        sup.wait_line(from, &[&format!("pid {stopped} killed by SIGKILL")])
            .await;
        status_until(&sup, admin, "2 ready again", |s| {
            ready_pids(s).len() == 2 && !ready_pids(s).contains(&stopped)
        })
        .await;

        // Stopping flushes every queued alert: after the exit, nothing more can arrive.
        sup.signal(Signal::SIGTERM);
        let st = sup.wait_exit(LONG).await;
        assert_eq!(st.code(), Some(0), "{}", sup.log());
        assert_eq!(
            hook.kinds(),
            [first_kind.as_str(), "worker_hung"],
            "{}",
            sup.log()
        );
    })
    .await;
}

#[tokio::test]
async fn hanging_webhook_does_not_delay_the_replacement() {
    limited(async {
        let hook = Receiver::start(true).await;
        let url = hook.url();
        let sup = start("2", &["--alert-webhook", &url]);
        let admin = admin_addr(&sup).await;
        let pids = sup.wait_ready(0, 2).await;
        for (i, pid) in pids.iter().enumerate() {
            let from = sup.mark();
            kill(Pid::from_raw(*pid), Signal::SIGKILL).unwrap();
            let line = sup
                .wait_line(from, &[" ready in ", "after the crash"])
                .await;
            let ms = common::ms_before(&line, " after the crash");
            // Not held by the alert: a delivery attempt to this webhook blocks 5 s, and the
            // replacement (restart delay 10 ms, then its start-up) needs far less than 4 s,
            // even on a loaded box.
            assert!(ms < 4000.0, "replacement took {ms} ms: {line}");
            // The alert did go out, and is stuck in the receiver that never answers.
            hook.wait_kind("worker_crashed", i + 1).await;
        }
        assert!(*hook.connections.lock().unwrap() >= 1);
        assert_eq!(ready_pids(&status(admin).await).len(), 2, "{}", sup.log());
    })
    .await;
}

/// Crash → webhook delivery through the real supervisor: SIGKILL a worker, time until the
/// receiver has the `worker_crashed` alert. Printed, not asserted (figures go in docs).
/// Crashes of the crash loop [`crash_loop`] runs: more than a sink's delivery slots (4).
const CRASHES: usize = 8;

/// `unwedge run` (its admin endpoint on port 0) with `flags`, of a worker that exits with 1,
/// 2, … [`CRASHES`] (one distinct alert each: none is de-duplicated), then serves no more but
/// stays; and its admin address.
async fn crash_loop(flags: &[&str], dir: &std::path::Path) -> (Sup, SocketAddr) {
    let script = format!(
        "n=$(cat {f} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {f}; \
         if [ $n -le {CRASHES} ]; then exit $n; fi; exec sleep 1000",
        f = dir.join("count").display()
    );
    let mut args = vec![
        "--admin",
        "127.0.0.1:0",
        "--ready",
        "none",
        "--restart-delay",
        "1ms",
        "--restart-delay-max",
        "5ms",
    ];
    args.extend_from_slice(flags);
    let sup = Sup::run(&args, &["sh", "-c", &script]);
    let admin = admin_addr(&sup).await;
    (sup, admin)
}

/// The value of `series` (`name{label="value"}`) in `/metrics`, 0 when absent.
async fn sample(admin: SocketAddr, series: &str) -> f64 {
    samples(admin).await.get(series).copied().unwrap_or(0.0)
}

/// A webhook that accepts and never answers holds its own delivery slots only: every crash of
/// a crash loop reaches `--alert-exec` at once, while the webhook's first deliveries are still
/// waiting for an answer (they fail only after 4 attempts of 5 s).
#[tokio::test]
async fn a_hanging_webhook_does_not_hold_back_alert_exec() {
    limited(async {
        let hook = Receiver::start(true).await;
        let url = hook.url();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("alerts");
        std::fs::create_dir(&out).unwrap();
        // Each command writes its event to a file of its own (several run at once).
        let exec = format!(
            "cat > \"{o}/$$.tmp\" && mv \"{o}/$$.tmp\" \"{o}/$$.json\"",
            o = out.display()
        );
        let (sup, admin) = crash_loop(
            &["--alert-webhook", &url, "--alert-exec", &exec],
            dir.path(),
        )
        .await;
        let summaries = || -> Vec<String> {
            std::fs::read_dir(&out)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .map(|p| {
                    let event: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
                    event["summary"].to_string()
                })
                .collect()
        };
        let deadline = Instant::now() + LONG;
        while summaries().len() < CRASHES {
            assert!(
                Instant::now() < deadline,
                "--alert-exec got {:?} of {CRASHES} crashes; log:\n{}",
                summaries(),
                sup.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // ... while the webhook still hangs: not one of its deliveries ended yet.
        let webhook_failed = sample(admin, r#"unwedge_alerts_failed_total{sink="webhook"}"#).await;
        assert_eq!(
            webhook_failed, 0.0,
            "the webhook's deliveries gave up already"
        );
        assert!(hook.got.lock().unwrap().len() >= 4, "{:?}", hook.kinds());
        let last = format!("\"w1: exit {CRASHES}\"");
        assert!(summaries().contains(&last), "{:?}", summaries());
    })
    .await;
}

/// SIGKILLs, when dropped, the `sleep`s whose pids a file lists (one a line).
struct SleepsListedIn(std::path::PathBuf);

impl Drop for SleepsListedIn {
    fn drop(&mut self) {
        let listed = std::fs::read_to_string(&self.0).unwrap_or_default();
        for pid in listed.lines().filter_map(|l| l.trim().parse().ok()) {
            drop(common::Stray {
                pid,
                program: b"sleep",
            });
        }
    }
}

/// And the other way round: an `--alert-exec` command that never exits holds its own delivery
/// slots only; every crash reaches the webhook while the first commands still run (they are
/// killed after 10 s).
#[tokio::test]
async fn a_hanging_alert_exec_does_not_hold_back_the_webhook() {
    limited(async {
        let hook = Receiver::start(false).await;
        let url = hook.url();
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        // Dropped after the supervisor: whatever it left running goes.
        let _commands = SleepsListedIn(pids.clone());
        let exec = format!("echo $$ >> '{}'; exec sleep 600", pids.display());
        let (mut sup, admin) = crash_loop(
            &["--alert-webhook", &url, "--alert-exec", &exec],
            dir.path(),
        )
        .await;
        hook.wait_kind("worker_crashed", CRASHES).await;
        // ... while the commands still run: not one of them ended yet.
        let exec_failed = sample(admin, r#"unwedge_alerts_failed_total{sink="exec"}"#).await;
        assert_eq!(exec_failed, 0.0, "the commands were killed already");
        assert_eq!(
            sample(admin, r#"unwedge_alerts_sent_total{sink="webhook"}"#).await,
            CRASHES as f64
        );
        // A supervisor that stops ends the commands still running.
        sup.signal(Signal::SIGTERM);
        sup.wait_exit(LONG).await;
        let listed = std::fs::read_to_string(&pids).unwrap();
        for pid in listed.lines().filter_map(|l| l.trim().parse().ok()) {
            let command = common::Stray {
                pid,
                program: b"sleep",
            };
            assert!(
                !command.runs_program(),
                "pid {pid} still runs:\n{}",
                sup.log()
            );
        }
    })
    .await;
}

#[tokio::test]
async fn alert_latency_crash_to_webhook() {
    limited(async {
        let hook = Receiver::start(false).await;
        let url = hook.url();
        let dir = tempfile::tempdir().unwrap();
        let dir_s = dir.path().to_str().unwrap().to_owned();
        let sup = start(
            "4",
            &["--alert-webhook", &url, "--report-dir", &dir_s],
        );
        let pids = sup.wait_ready(0, 4).await;
        let mut ms = Vec::new();
        let mut split = Vec::new();
        for (i, pid) in pids.iter().enumerate() {
            let from = sup.mark();
            let t0 = Instant::now();
            let wall0 = std::time::SystemTime::now();
            kill(Pid::from_raw(*pid), Signal::SIGKILL).unwrap();
            let r = hook.wait_kind("worker_crashed", i + 1).await;
            assert_eq!(r.body["event"]["pid"], *pid);
            ms.push((r.at - t0).as_secs_f64() * 1000.0);
            // Where the time went (millisecond clock): reaped + stderr closed, then fsynced.
            let since = |t: &Value| {
                let t = rfc3339(t.as_str().unwrap());
                t.duration_since(wall0).unwrap_or_default().as_millis()
            };
            split.push((
                since(&r.body["event"]["details"]["time"]),
                since(&r.body["event"]["time"]),
            ));
            sup.wait_line(from, &[" ready in ", "after the crash"]).await;
        }
        eprintln!(
            "alert latency, SIGKILL of a worker -> webhook received (report fsynced first), ms: {ms:.2?}; \
             (exit recorded, alert queued) at ms: {split:?}"
        );
    })
    .await;
}

/// Parses an RFC 3339 time as the supervisor writes them (through `unwedge_admin::Record`).
fn rfc3339(t: &str) -> std::time::SystemTime {
    let r: unwedge_admin::Record = serde_json::from_value(serde_json::json!({
        "kind": "exit", "time": t, "worker": null, "pid": null, "code": null, "signal": null,
        "last_stderr_lines": []
    }))
    .unwrap();
    r.system_time().unwrap()
}

// ---- report directory ----

/// A small ext4 image loop-mounted on a temporary directory, which the test can freeze
/// (`fsfreeze`: every write into it waits, as on a hung NFS mount or a stalled volume). Thawed
/// and unmounted when dropped.
struct FrozenFs {
    dir: tempfile::TempDir,
    mnt: std::path::PathBuf,
}

impl FrozenFs {
    /// `None` (said as a skip of this environment) without root, loop devices or the tools.
    fn mount() -> Option<FrozenFs> {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let run = |cmd: &str, args: &[&std::ffi::OsStr]| {
            std::process::Command::new(cmd)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let ok = std::fs::File::create(&img)
            .and_then(|f| f.set_len(16 << 20))
            .is_ok()
            && run("mkfs.ext4", &["-q".as_ref(), img.as_os_str()])
            && run(
                "mount",
                &[
                    "-o".as_ref(),
                    "loop".as_ref(),
                    img.as_os_str(),
                    mnt.as_os_str(),
                ],
            );
        if !ok {
            common::skip_env(
                "cannot loop-mount an ext4 image (needs root, loop devices, mkfs.ext4)",
            );
            return None;
        }
        Some(FrozenFs { dir, mnt })
    }

    fn reports(&self) -> String {
        self.mnt.join("reports").to_str().unwrap().to_owned()
    }

    fn freeze(&self, frozen: bool) {
        let flag = if frozen { "-f" } else { "-u" };
        let st = std::process::Command::new("fsfreeze")
            .arg(flag)
            .arg(&self.mnt)
            .status()
            .expect("fsfreeze");
        assert!(st.success(), "fsfreeze {flag} failed");
    }
}

impl Drop for FrozenFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("fsfreeze")
            .arg("-u")
            .arg(&self.mnt)
            .stderr(Stdio::null())
            .status();
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.mnt)
            .status();
        let _ = &self.dir;
    }
}

/// A report directory that stops answering (here frozen with `fsfreeze`, as a hung NFS mount
/// or a stalled volume would) holds back no alert: the crash's `worker_crashed` and the
/// `gave_up` after it are delivered (review: none was, every alert waited behind the write of
/// the crash's report, and `gave_up` was lost at exit).
#[tokio::test]
async fn a_report_directory_that_stops_answering_holds_back_no_alert() {
    limited(async {
        let Some(fs) = FrozenFs::mount() else {
            return;
        };
        let hook = Receiver::start(false).await;
        let url = hook.url();
        let reports = fs.reports();
        let mut sup = start(
            "1",
            &[
                "--max-restarts",
                "0",
                "--alert-webhook",
                &url,
                "--report-dir",
                &reports,
            ],
        );
        let pids = sup.wait_ready(0, 1).await;
        fs.freeze(true);
        kill(Pid::from_raw(pids[0]), Signal::SIGKILL).unwrap();
        hook.wait_kind("worker_crashed", 1).await;
        hook.wait_kind("gave_up", 1).await;
        // The write still waits in the kernel: the supervisor's exit completes once it can.
        fs.freeze(false);
        let st = sup.wait_exit(LONG).await;
        assert_eq!(st.code(), Some(3), "{}", sup.log());
        assert!(
            sup.log().contains("the report directory does not answer"),
            "{}",
            sup.log()
        );
    })
    .await;
}

#[tokio::test]
async fn report_is_on_disk_when_the_supervisor_is_killed_right_after_a_crash() {
    limited(async {
        let hook = Receiver::start(true).await;
        let url = hook.url();
        let dir = tempfile::tempdir().unwrap();
        let dir_s = dir.path().to_str().unwrap().to_owned();
        let mut sup = start("2", &["--alert-webhook", &url, "--report-dir", &dir_s]);
        let admin = admin_addr(&sup).await;
        let pids = sup.wait_ready(0, 2).await;
        let _ = status_until(&sup, admin, "2 ready", |s| ready_pids(s).len() == 2).await;
        // A worker killed: its exit record is durable before its alert goes out.
        let killed = pids[0];
        kill(Pid::from_raw(killed), Signal::SIGKILL).unwrap();
        hook.wait_for("about the killed worker", |b| b["event"]["pid"] == killed)
            .await;
        // A poisoned lock: its panic report is durable before any alert about it.
        let _ = http(sup.addr().await, "POST", "/poison").await;
        let alert = hook
            .wait_for("about the poisoned worker", |b| b["event"]["pid"] != killed)
            .await;
        // The moment that alert is out, the supervisor dies without any chance to flush.
        sup.signal(Signal::SIGKILL);
        let st = sup.wait_exit(LONG).await;
        assert_eq!(st.code(), None, "killed");
        let crashed = alert.body["event"]["pid"].as_i64().unwrap() as i32;
        let mut all = pids.clone();
        all.extend(sup.ready_pids(0));
        kill_workers(&all);

        let (code, out) = run_to_end(&["reports", "--dir", &dir_s, "--json"]).await;
        assert_eq!(code, 0, "{out}");
        let records: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        let panic = records
            .iter()
            .find(|r| r["kind"] == "panic")
            .unwrap_or_else(|| panic!("no panic record: {out}"));
        assert_eq!(panic["report"]["request"]["path"], "/poison");
        assert_eq!(panic["report"]["pid"], crashed);
        let exit = |pid: i32| {
            records
                .iter()
                .find(|r| r["kind"] == "exit" && r["pid"] == pid)
        };
        let killed_exit =
            exit(killed).unwrap_or_else(|| panic!("no exit record of {killed}: {out}"));
        assert_eq!(killed_exit["signal"], 9);
        // The worker's last stderr lines are in its exit record (its start-up log here).
        let stderr = killed_exit["last_stderr_lines"].as_array().unwrap();
        assert!(
            stderr
                .iter()
                .any(|l| l.as_str().unwrap().contains("serving")),
            "the worker's last stderr lines: {stderr:?}"
        );
        // The poisoned worker said it is tainted before it left: that is the alert.
        assert_eq!(
            alert.body["event"]["kind"], "state_tainted",
            "{}",
            alert.body
        );
        // The table too.
        let (code, table) = run_to_end(&["reports", "--dir", &dir_s]).await;
        assert_eq!(code, 0);
        assert!(table.starts_with("TIME"), "{table}");
        assert!(
            table.contains("POST /poison") && table.contains("signal 9"),
            "{table}"
        );
    })
    .await;
}

// ---- loopback by default ----

#[tokio::test]
async fn admin_binds_loopback_unless_told() {
    limited(async {
        // A bare port is bound on 127.0.0.1 only.
        let sup = Sup::start(&[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "0",
            "--",
            BIN,
            "demo-service",
        ]);
        let admin = admin_addr(&sup).await;
        assert_eq!(admin.ip().to_string(), "127.0.0.1");
        assert_eq!(get(admin, "/livez").await.0, 200);
        let other: SocketAddr = format!("127.0.0.2:{}", admin.port()).parse().unwrap();
        let e = tokio::net::TcpStream::connect(other).await;
        assert!(e.is_err(), "admin answered on {other}");
        drop(sup);

        // No --admin at all: the default 127.0.0.1:9090 (which another supervisor on this
        // machine may hold: then a warning, not a failure).
        let sup = Sup::start(&["run", "--listen", "127.0.0.1:0", "--", BIN, "demo-service"]);
        let line = tokio::select! {
            l = sup.wait_line(0, &["admin listening on http://"]) => l,
            l = sup.wait_line(0, &["no admin endpoint"]) => l,
        };
        assert!(line.contains("127.0.0.1:9090"), "{line}");
        if line.contains("listening") {
            let e = tokio::net::TcpStream::connect("127.0.0.2:9090").await;
            assert!(e.is_err(), "the default admin answered on 127.0.0.2");
        }
        sup.wait_ready(0, 1).await;
    })
    .await;
}

/// The supervisor's event loop stuck (its thread frozen: here by ptrace, in life a bug or a
/// blocking call) while the admin endpoint, on a thread of its own, still answers: `/livez`
/// and `/readyz` fail, saying so, instead of answering from the last state the loop
/// published (a worker killed meanwhile still "ready", and nothing to replace it), and pass
/// again once the loop runs. This is what makes `/livez` the backstop for a stuck
/// supervisor (docs/kubernetes.md).
#[tokio::test]
async fn a_stuck_event_loop_fails_livez_and_readyz() {
    limited(async {
        let sup = start("1", &[]);
        let admin = admin_addr(&sup).await;
        let _ = status_until(&sup, admin, "1 ready", |s| ready_pids(s).len() == 1).await;
        assert_eq!(get(admin, "/livez").await.0, 200);
        // Frozen with PTRACE_SEIZE + PTRACE_INTERRUPT: the main thread only (the loop's), for
        // 20 s; the admin's thread goes on.
        let freeze = "import ctypes, os, sys, time\n\
            libc = ctypes.CDLL(None, use_errno=True)\n\
            libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]\n\
            tid = int(sys.argv[1])\n\
            if libc.ptrace(0x4206, tid, None, None) or libc.ptrace(0x4207, tid, None, None):\n\
            \x20   sys.exit('ptrace: ' + os.strerror(ctypes.get_errno()))\n\
            os.waitpid(tid, 0x40000000)\n\
            print('frozen', flush=True)\n\
            time.sleep(20)\n\
            libc.ptrace(17, tid, None, None)";
        let mut frozen = tokio::process::Command::new("python3")
            .args(["-c", freeze, &sup.pid.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let out = frozen.stdout.take().unwrap();
        let said = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(out))
            .next_line()
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        if !said.contains("frozen") {
            let mut err = String::new();
            let _ = frozen.stderr.take().unwrap().read_to_string(&mut err).await;
            return common::skip_env(&format!("cannot freeze a thread here: {err}"));
        }
        let until = Instant::now() + Duration::from_secs(18);
        let (code, body) = loop {
            let (code, body) = get(admin, "/livez").await;
            if code != 200 || Instant::now() > until {
                break (code, body);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(code, 503, "/livez while the loop is frozen: {body}");
        assert!(body.contains("event loop has not run"), "{body}");
        let (code, body) = get(admin, "/readyz").await;
        assert_eq!(code, 503, "/readyz while the loop is frozen: {body}");
        let _ = frozen.wait().await;
        let _ = status_until(&sup, admin, "live again", |s| {
            s["supervisor"]["loop_age_secs"].as_f64().is_some_and(|a| a < 5.0)
        })
        .await;
        assert_eq!(get(admin, "/livez").await.0, 200);
    })
    .await;
}

/// `--admin [::]:P` answers on IPv4 too, whatever `net.ipv6.bindv6only` says: as the
/// supervisor's listening sockets do, and as the check that refuses `--listen 0.0.0.0:P`
/// beside it assumes. Run in a network namespace of its own, with the setting on.
#[tokio::test]
async fn an_admin_endpoint_on_every_ipv6_address_answers_on_ipv4_too() {
    limited(async {
        for tool in ["unshare", "nsenter", "ip"] {
            if common::which(tool).is_none() {
                return skip(&format!("{tool} (apt-get install util-linux iproute2)"));
            }
        }
        if !std::path::Path::new("/proc/sys/net/ipv6").exists() {
            return common::skip_env("no IPv6 in this kernel");
        }
        let own_net = std::process::Command::new("unshare")
            .args(["--net", "true"])
            .stderr(Stdio::null())
            .status();
        if !own_net.is_ok_and(|s| s.success()) {
            return common::skip_env("no network namespace of its own (needs root)");
        }
        let script = format!(
            "echo 1 >/proc/sys/net/ipv6/bindv6only && ip link set lo up && exec {BIN} run \
             --listen 127.0.0.1:8080 --admin '[::]:9090' --ready none -- sleep 1000"
        );
        let sup = Sup::start_program("unshare", &["--net", "sh", "-c", &script], &[]);
        sup.wait_ready(0, 1).await;
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net=/proc/{}/ns/net", sup.pid))
            .args(["python3", "-c"])
            .arg("import urllib.request as u; print(u.urlopen('http://127.0.0.1:9090/status', timeout=10).read().decode())")
            .output()
            .unwrap();
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            sup.log()
        );
        let status: Value = serde_json::from_str(&body).expect(&body);
        assert_eq!(status["workers"].as_array().map(Vec::len), Some(1), "{body}");
    })
    .await;
}

/// DNS rebinding, through the real supervisor: a page whose name an attacker resolves to
/// 127.0.0.1 makes a browser on this machine ask the loopback admin for `/status` with that
/// name as `Host`; it is refused with 421 on `/`, `/status` and `/metrics`, while requests for
/// 127.0.0.1, localhost or [::1] are answered and `unwedge status` reads the endpoint as before.
#[tokio::test]
async fn the_loopback_admin_refuses_a_name_rebound_to_it() {
    limited(async {
        let sup = start("1", &[]);
        let admin = admin_addr(&sup).await;
        sup.wait_ready(0, 1).await;
        let port = admin.port();
        for path in ["/", "/status", "/metrics"] {
            let rebound = format!("rebind.attacker.example:{port}");
            let (code, body) = http_as(admin, &rebound, "GET", path).await.unwrap();
            assert_eq!(code, 421, "{path}: {body}");
            assert!(!body.contains("w1"), "{path}: {body}");
            for host in [
                format!("127.0.0.1:{port}"),
                format!("localhost:{port}"),
                format!("[::1]:{port}"),
            ] {
                let (code, body) = http_as(admin, &host, "GET", path).await.unwrap();
                assert_eq!(code, 200, "{host} {path}: {body}");
            }
        }
        let (code, out, err) = unwedge_status(admin, &[]).await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("workers: 1 ready of 1"), "{out}");
    })
    .await;
}

// ---- bad input ----

#[tokio::test]
async fn bad_observability_options_are_one_line_errors() {
    limited(async {
        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let busy_addr = busy.local_addr().unwrap().to_string();
        let cases: [(&[&str], i32, &str); 6] = [
            (
                &["--alert-webhook", "hooks.example.com/x"],
                2,
                "invalid --alert-webhook URL \"hooks.example.com/…\"",
            ),
            (&["--alert-webhook", "ftp://h/x"], 2, "unsupported scheme"),
            (&["--admin", "nonsense"], 2, "invalid --admin \"nonsense\""),
            (&["--report-max-bytes", "ten"], 2, "invalid size \"ten\""),
            (
                &["--report-dir", "/proc/unwedge-reports"],
                1,
                "cannot write crash reports to /proc/unwedge-reports",
            ),
            (
                &["--admin", &busy_addr],
                1,
                "cannot bind the admin endpoint on",
            ),
        ];
        for (flags, want_code, want) in cases {
            let mut args = vec!["run", "--listen", "127.0.0.1:0"];
            args.extend_from_slice(flags);
            args.extend_from_slice(&["--", BIN, "demo-service"]);
            let (code, out) = run_to_end(&args).await;
            assert_eq!(code, want_code, "{flags:?}: {out}");
            let errors: Vec<&str> = out.lines().filter(|l| l.contains("error")).collect();
            assert_eq!(errors.len(), 1, "{flags:?}: one error line: {out}");
            assert!(errors[0].contains(want), "{flags:?}: {out}");
            assert!(!out.contains("panicked"), "{flags:?}: {out}");
            assert!(
                !out.contains(" ready in "),
                "{flags:?}: a worker started: {out}"
            );
        }
        drop(busy);
        // `unwedge reports` without a directory to read.
        let (code, out) = run_to_end(&["reports", "--dir", "/nonexistent/unwedge"]).await;
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("/nonexistent/unwedge"), "{out}");
    })
    .await;
}

/// An unusable `--alert-webhook` URL is refused with one line that says what is wrong and
/// where, without quoting what may be a credential: user info, the path (a Slack-style hook's
/// secret) or the query (`?token=`), whatever made the URL unusable. Also through a config
/// file (`check-config`).
#[tokio::test]
async fn an_unusable_webhook_url_is_refused_without_quoting_its_credentials() {
    limited(async {
        // (URL, what the error must say); every secret has "s3" or "t0k3n" in it.
        let cases = [
            // Does not parse: a space in the host.
            (
                "https://alice:s3cr3t@hooks example.com/services/T0/B0/s3cr3t?token=t0k3n",
                "\"https://…@hooks example.com/…\": invalid uri character",
            ),
            // Parses, but its port is out of range.
            (
                "https://alice:s3cr3t@hooks.example.com:99999/services/T0/B0/s3cr3t?token=t0k3n",
                "\"https://…@hooks.example.com:99999/…\": invalid port",
            ),
            // Does not parse: a space in the query.
            (
                "http://hooks.example.com/hook?token=t0k3n t0k3n",
                "\"http://hooks.example.com/…\": invalid uri character",
            ),
            // A password with a slash and a question mark in it: it parses as host `alice`,
            // port `s3`.
            (
                "http://alice:s3/cr?3t@hooks.example.com/x?token=t0k3n",
                "\"http://…@hooks.example.com/…\": invalid port",
            ),
            // Parses, but an unsupported scheme.
            (
                "ftp://alice:s3cr3t@files.example.com/s3cr3t?token=t0k3n",
                "\"ftp://…@files.example.com/…\": unsupported scheme \"ftp\"",
            ),
            // No host.
            (
                "http://alice:s3cr3t@/hook?token=t0k3n",
                "\"http://…@/…\": invalid authority",
            ),
            // No scheme.
            (
                "alice:s3cr3t@hooks.example.com/hook?token=t0k3n",
                "\"…@hooks.example.com/…\": expected an absolute URL",
            ),
        ];
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("unwedge.toml");
        for (url, want) in cases {
            let args = [
                "run",
                "--listen",
                "127.0.0.1:0",
                "--alert-webhook",
                url,
                "--",
                BIN,
                "demo-service",
            ];
            let (code, out, err) = run_split(&args).await;
            assert_eq!(code, 2, "{url}: {err}{out}");
            assert_eq!(err.trim().lines().count(), 1, "{url}: one line: {err}");
            assert!(
                err.contains(&format!("invalid --alert-webhook URL {want}")),
                "{url}: {err}"
            );
            for secret in ["alice", "s3", "t0k3n", "T0", "hook?", "token"] {
                assert!(!err.contains(secret), "{url}: {secret:?} quoted: {err}");
            }
            assert!(
                !out.contains("s3") && !out.contains("t0k3n"),
                "{url}: {out}"
            );

            let toml = format!("alert-webhook = {url:?}\ncommand = [{BIN:?}, \"demo-service\"]\n");
            std::fs::write(&file, toml).unwrap();
            let (code, out, err) = run_split(&["check-config", file.to_str().unwrap()]).await;
            assert_eq!(code, 2, "{url}: {err}{out}");
            assert!(err.contains(want), "{url}: {err}");
            assert!(
                !err.contains("s3") && !err.contains("t0k3n"),
                "{url}: {err}"
            );
        }
    })
    .await;
}

// ---- giving up ----

#[tokio::test]
async fn gave_up_alert_is_delivered_before_the_supervisor_exits() {
    limited(async {
        let hook = Receiver::start(false).await;
        let url = hook.url();
        let mut sup = start("1", &["--max-restarts", "0", "--alert-webhook", &url]);
        let pids = sup.wait_ready(0, 1).await;
        kill(Pid::from_raw(pids[0]), Signal::SIGKILL).unwrap();
        let st = sup.wait_exit(LONG).await;
        assert_eq!(st.code(), Some(3), "{}", sup.log());
        // No waiting: the supervisor flushed its alerts before it exited.
        let kinds = hook.kinds();
        assert!(
            kinds.contains(&"gave_up".to_owned()),
            "{kinds:?}\n{}",
            sup.log()
        );
        assert!(kinds.contains(&"worker_crashed".to_owned()), "{kinds:?}");
    })
    .await;
}

#[tokio::test]
async fn giving_up_with_a_hanging_webhook_still_exits_in_bounded_time() {
    limited(async {
        let hook = Receiver::start(true).await;
        let url = hook.url();
        let mut sup = start("1", &["--max-restarts", "0", "--alert-webhook", &url]);
        let pids = sup.wait_ready(0, 1).await;
        let t0 = Instant::now();
        kill(Pid::from_raw(pids[0]), Signal::SIGKILL).unwrap();
        // The flush waits 5 s at most; generous bound on top.
        let st = sup.wait_exit(Duration::from_secs(15)).await;
        assert_eq!(st.code(), Some(3), "{}", sup.log());
        assert!(t0.elapsed() < Duration::from_secs(15));
        hook.wait_kind("gave_up", 1).await;
    })
    .await;
}

/// A worker that never starts (it exits before it is ready, again and again) makes the
/// supervisor give up after `--max-restarts` failed starts in a row, and everything that says
/// why (the log line, the `gave_up` alert, `/status`, `/livez`, `unwedge status`) says that,
/// not that a restart intensity was exceeded.
#[tokio::test]
async fn giving_up_after_failed_starts_says_so_everywhere() {
    limited(async {
        let hook = Receiver::start(false).await;
        let url = hook.url();
        // w1 exits at once; w2 starts fine and ignores SIGTERM, so the supervisor stays (for
        // --stop-timeout) after giving up and its endpoint can be asked.
        let script = "if [ \"$UNWEDGE_WORKER\" = w1 ]; then echo cannot start >&2; exit 1; fi; \
                      trap '' TERM; exec sleep 1000";
        let mut sup = Sup::run(
            &[
                "--workers",
                "2",
                "--admin",
                "127.0.0.1:0",
                "--max-restarts",
                "3",
                "--restart-delay",
                "1ms",
                "--restart-delay-max",
                "5ms",
                "--stop-timeout",
                "30s",
                "--alert-webhook",
                &url,
            ],
            &["sh", "-c", script],
        );
        let admin = admin_addr(&sup).await;
        let why = "worker w1 failed to start 4 times in a row (limit 3)";
        let misleading = ["intensity", "restarts within", "too many restarts"];

        let s = status_until(&sup, admin, "gave_up", |s| {
            s["supervisor"]["gave_up"] == true
        })
        .await;
        let reason = s["supervisor"]["gave_up_reason"]
            .as_str()
            .unwrap_or_default();
        assert!(reason.starts_with(why), "{s}");
        let (code, body) = get(admin, "/livez").await;
        assert_eq!(code, 503, "{body}");
        assert!(body.contains(why), "{body}");
        let (code, out, err) = unwedge_status(admin, &[]).await;
        assert_eq!(code, 1, "{out}{err}");
        assert!(out.contains(&format!("GAVE UP: {why}")), "{out}");
        for text in [reason, &body, &out] {
            for m in misleading {
                assert!(!text.contains(m), "{m:?} in {text}");
            }
        }

        // The rest once w2 is gone.
        let w2 = s["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["id"] == "w2")
            .and_then(|w| w["pid"].as_i64())
            .unwrap_or_else(|| panic!("no w2 in {s}"));
        kill(Pid::from_raw(w2 as i32), Signal::SIGKILL).unwrap();
        assert_eq!(sup.wait_exit(LONG).await.code(), Some(3), "{}", sup.log());
        let log = sup.log();
        let line = log
            .lines()
            .find(|l| l.contains("giving up: "))
            .unwrap_or_else(|| panic!("no giving up line: {log}"));
        assert!(
            line.contains(&format!("giving up: {why}; the last: ")),
            "{line}"
        );
        let alert = hook.wait_kind("gave_up", 1).await.body;
        let text = alert["text"].as_str().unwrap();
        assert!(
            text.starts_with(&format!("unwedge: gave up: {why}")),
            "{alert}"
        );
        assert!(
            alert["event"]["summary"].as_str().unwrap().starts_with(why),
            "{alert}"
        );
        for text in [line, text] {
            for m in misleading {
                assert!(!text.contains(m), "{m:?} in {text}");
            }
        }
    })
    .await;
}

// ---- the config file ----

#[tokio::test]
async fn config_file_takes_the_observability_keys() {
    limited(async {
        let hook = Receiver::start(false).await;
        let dir = tempfile::tempdir().unwrap();
        let reports = dir.path().join("reports");
        let file = dir.path().join("unwedge.toml");
        let toml = format!(
            "listen = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\nreport-dir = {:?}\n\
             report-max-bytes = \"1M\"\nalert-webhook = {:?}\ncommand = [{:?}, \"demo-service\"]\n",
            reports.to_str().unwrap(),
            hook.url(),
            BIN
        );
        std::fs::write(&file, &toml).unwrap();
        let (code, out) = run_to_end(&["check-config", file.to_str().unwrap()]).await;
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("admin = \"127.0.0.1:0\""), "{out}");

        let sup = Sup::start(&["run", "--config", file.to_str().unwrap()]);
        let admin = admin_addr(&sup).await;
        let pids = sup.wait_ready(0, 1).await;
        kill(Pid::from_raw(pids[0]), Signal::SIGKILL).unwrap();
        hook.wait_kind("worker_crashed", 1).await;
        let (code, out) =
            run_to_end(&["reports", "--dir", reports.to_str().unwrap(), "--json"]).await;
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("\"signal\":9"), "{out}");
        assert_eq!(get(admin, "/livez").await.0, 200);

        // A bad value in the file is a usage error for check-config too.
        std::fs::write(&file, toml.replace(&hook.url(), "hooks.example.com")).unwrap();
        let (code, out) = run_to_end(&["check-config", file.to_str().unwrap()]).await;
        assert_eq!(code, 2, "{out}");
        assert!(out.contains("invalid --alert-webhook URL"), "{out}");
    })
    .await;
}

// ---- de-duplication and the exec sink ----

#[tokio::test]
async fn a_crash_loop_alerts_once_and_alert_exec_gets_the_event() {
    limited(async {
        let hook = Receiver::start(false).await;
        let url = hook.url();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("alerts.jsonl");
        // One JSON event per line: the event on stdin, then a newline.
        let exec = format!("cat >> '{}' && echo >> '{}'", out.display(), out.display());
        let mut sup = start("1", &["--alert-webhook", &url, "--alert-exec", &exec]);
        let admin = admin_addr(&sup).await;
        for round in 0..2 {
            let pid = *sup.wait_ready(0, round + 1).await.last().unwrap();
            let from = sup.mark();
            kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
            sup.wait_line(from, &[" ready in ", "after the crash"])
                .await;
        }
        // The same event twice (`w1: killed by SIGKILL`) within the window: one alert.
        samples_until(admin, "the second crash de-duplicated", |m| {
            m.get(r#"unwedge_alerts_dropped_total{reason="duplicate"}"#) == Some(&1.0)
        })
        .await;
        sup.signal(Signal::SIGTERM);
        assert_eq!(sup.wait_exit(LONG).await.code(), Some(0), "{}", sup.log());
        assert_eq!(hook.kinds(), ["worker_crashed"]);
        let lines = std::fs::read_to_string(&out).unwrap();
        let events: Vec<Value> = lines
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(events.len(), 1, "{lines}");
        assert_eq!(events[0]["kind"], "worker_crashed");
        assert_eq!(events[0]["worker"], "w1");
        assert_eq!(events[0]["details"]["signal"], 9);
    })
    .await;
}

/// The same bug on two ids of one route (`/users/1001`, `/users/1002`) pages once: the alert's
/// de-duplication key has the route template, not the raw path (review: one page per crash,
/// ~20 a minute for ever, while `/metrics` already counted them as one route).
#[tokio::test]
async fn the_same_panic_on_two_ids_of_a_route_pages_once() {
    limited(async {
        let hook = Receiver::start(false).await;
        let url = hook.url();
        let (mut sup, addr, admin) = python_worker(&["--alert-webhook", &url]).await;
        for (round, id) in [1001, 1002].into_iter().enumerate() {
            if round > 0 {
                sup.wait_ready(0, round + 1).await;
            }
            let report = serde_json::json!({
                "message": "index out of bounds: the len is 3 but the index is 7",
                "location": "src/users.rs:42:9",
                "request": {"method": "GET", "path": format!("/users/{id}"), "request_id": format!("r{id}")},
            });
            send_report(&sup, addr, admin, &report).await;
            let from = sup.mark();
            let _ = get(addr, "/exit?code=70").await;
            sup.wait_line(from, &[" ready in ", "after the crash"]).await;
        }
        samples_until(admin, "the second crash de-duplicated", |m| {
            m.get(r#"unwedge_alerts_dropped_total{reason="duplicate"}"#) == Some(&1.0)
        })
        .await;
        sup.signal(Signal::SIGTERM);
        assert_eq!(sup.wait_exit(LONG).await.code(), Some(0), "{}", sup.log());
        assert_eq!(hook.kinds(), ["worker_crashed"]);
    })
    .await;
}

/// The supervisor reaps orphans of its workers (it is their subreaper), but an `--alert-exec`
/// command is waited for by the alerter: it used to be reaped first, so that delivered alerts
/// were counted as failed ("No child processes"). A process such a command leaves running is
/// an orphan of the supervisor's own session: reaped once it exits, not left a zombie.
#[tokio::test]
async fn alert_exec_commands_keep_their_exit_status_and_leave_no_zombie() {
    limited(async {
        let tmp = tempfile::tempdir().unwrap();
        let count = tmp.path().join("count");
        // Six distinct crashes (exit 1 … 6: six alerts, no duplicates), then it serves.
        let worker = format!(
            "n=$(cat {f} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {f}; \
             [ $n -le 6 ] && exit $n; exec sleep 1000",
            f = count.display()
        );
        // Delivered (exit 0), leaving a short-lived process behind.
        let exec = "cat > /dev/null; sleep 0.3 &";
        let mut sup = Sup::run(
            &[
                "--admin",
                "127.0.0.1:0",
                "--ready",
                "none",
                "--restart-delay",
                "1ms",
                "--alert-exec",
                exec,
            ],
            &["sh", "-c", &worker],
        );
        let admin = admin_addr(&sup).await;
        let m = samples_until(admin, "six alerts delivered", |m| {
            m.get(r#"unwedge_alerts_sent_total{sink="exec"}"#) == Some(&6.0)
        })
        .await;
        assert_eq!(
            m.get(r#"unwedge_alerts_failed_total{sink="exec"}"#),
            Some(&0.0),
            "{}",
            sup.log()
        );
        // The `sleep 0.3` each left: exited by now (or soon), and reaped.
        let deadline = Instant::now() + LONG;
        loop {
            let zombies: Vec<i32> = unwedge_supervisor::procfs::children(sup.pid)
                .into_iter()
                .filter(|&c| unwedge_supervisor::procfs::stat(c).is_some_and(|s| !s.alive()))
                .collect();
            let sleeping = std::fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .any(|p| {
                    unwedge_supervisor::procfs::stat(p).is_some_and(|s| s.ppid == sup.pid)
                        && unwedge_supervisor::procfs::command_line(p)
                            .is_some_and(|c| c == "sleep 0.3")
                });
            if zombies.is_empty() && !sleeping {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "zombies of the supervisor: {zombies:?}\n{}",
                sup.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!sup.log().contains("No child processes"), "{}", sup.log());
        sup.signal(Signal::SIGTERM);
        assert_eq!(sup.wait_exit(LONG).await.code(), Some(0), "{}", sup.log());
    })
    .await;
}

// ---- the status page of a real supervisor, in a real browser ----

const CHROMIUM: &str = "/usr/bin/chromium";

/// `chromium --headless --dump-dom URL` (bounded), host resolution off but for 127.0.0.1.
async fn dump_dom(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(["--dump-dom", url])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chromium finished within a minute")
    .expect("chromium ran");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn chromium_shows_the_real_crash_on_the_status_page() {
    if !std::path::Path::new(CHROMIUM).exists() {
        skip(&format!(
            "{CHROMIUM} not installed (apt-get install chromium)"
        ));
        return;
    }
    limited(async {
        let sup = start("2", &[]);
        let admin = admin_addr(&sup).await;
        sup.wait_ready(0, 2).await;
        let s = poison_and_wait_for_the_replacement(&sup, admin).await;
        let dom = dump_dom(&format!("http://{admin}/")).await;
        // Workers as rows, with their real pids.
        assert_eq!(dom.matches("<tr class=\"worker\">").count(), 2, "{dom}");
        for pid in ready_pids(&s) {
            assert!(
                dom.contains(&format!("<td>{pid}</td>")),
                "pid {pid}:\n{dom}"
            );
        }
        // The crashed worker's report: request, message, location, backtrace.
        assert!(dom.contains("POST /poison"), "{dom}");
        assert!(dom.contains("demo-poisonable"), "{dom}");
        assert!(dom.contains("crates/unwedge-demo/src/lib.rs"), "{dom}");
        assert!(
            dom.contains("<details><summary>backtrace</summary>"),
            "{dom}"
        );
        assert!(dom.contains("exit 70"), "{dom}");
        // The restart chart has its point.
        assert!(dom.contains("1 restart in the last hour"), "{dom}");
        let svg_start = dom.find("<svg").expect("an inline svg chart");
        let svg = &dom[svg_start..dom[svg_start..].find("</svg>").unwrap() + svg_start];
        assert_eq!(svg.matches("<circle").count(), 1, "{svg}");
    })
    .await;
}

// ---- reload ----

#[tokio::test]
async fn reload_shows_the_new_generation_and_counts_its_restarts() {
    limited(async {
        let sup = start("2", &[]);
        let admin = admin_addr(&sup).await;
        let old = sup.wait_ready(0, 2).await;
        let from = sup.mark();
        sup.signal(Signal::SIGHUP);
        sup.wait_line(from, &["generation 2 ready"]).await;
        let s = status_until(&sup, admin, "only generation 2", |s| {
            let w = s["workers"].as_array().unwrap();
            w.len() == 2
                && w.iter()
                    .all(|w| w["generation"] == 2 && w["state"] == "ready")
        })
        .await;
        for pid in ready_pids(&s) {
            assert!(!old.contains(&pid), "old pid {pid} still listed: {s}");
        }
        let m = samples_until(admin, "two reload restarts", |m| {
            m.get(r#"unwedge_restarts_total{reason="reload"}"#) == Some(&2.0)
        })
        .await;
        assert_eq!(
            val(&m, r#"unwedge_restarts_total{reason="exit_code"}"#),
            0.0
        );
        assert_eq!(
            s["reports"].as_array().unwrap().len(),
            0,
            "a reload is no crash: {s}"
        );
    })
    .await;
}

// ---- the default report directory under systemd ----

#[tokio::test]
async fn reports_default_to_the_systemd_state_directory() {
    limited(async {
        let state = tempfile::tempdir().unwrap();
        let state_s = state.path().to_str().unwrap().to_owned();
        let sup = Sup::demo_env(&["--admin", "off"], &[("STATE_DIRECTORY", &state_s)]);
        let expected = state.path().join("reports");
        sup.wait_line(0, &[&format!("crash reports go to {}", expected.display())])
            .await;
        let pid = sup.wait_ready(0, 1).await[0];
        let from = sup.mark();
        kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
        sup.wait_line(from, &[" ready in ", "after the crash"])
            .await;
        // `unwedge reports` finds the same directory; the record may still be on its way
        // (it is written after the restart is scheduled), so ask until it is there.
        let deadline = Instant::now() + LONG;
        loop {
            let out = tokio::time::timeout(
                LONG,
                tokio::process::Command::new(BIN)
                    .args(["reports", "--json"])
                    .env("STATE_DIRECTORY", &state_s)
                    .kill_on_drop(true)
                    .output(),
            )
            .await
            .unwrap()
            .unwrap();
            assert!(out.status.success(), "{out:?}");
            let text = String::from_utf8_lossy(&out.stdout);
            if text.contains(&format!("\"pid\":{pid}")) {
                assert!(text.contains("\"signal\":9"), "{text}");
                break;
            }
            assert!(Instant::now() < deadline, "no record of {pid}: {text}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Without it and without --dir: a usage error.
        let out = tokio::process::Command::new(BIN)
            .arg("reports")
            .env_remove("STATE_DIRECTORY")
            .kill_on_drop(true)
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("give --dir DIR"));
        // `--admin off`: no admin endpoint at all.
        assert!(!sup.log().contains("admin listening"), "{}", sup.log());
    })
    .await;
}

// ---- a worker that does not stop in time ----

/// A worker that ignores SIGTERM during a reload is SIGKILLed after `--stop-timeout`, and
/// that is not silent: one `stop_timed_out` alert naming it, and the metric counts it
/// (its requests in flight were cut off; an operator needs to know).
#[tokio::test]
async fn a_worker_killed_at_the_stop_timeout_is_alerted_and_counted() {
    limited(async {
        let hook = Receiver::start(false).await;
        let url = hook.url();
        let sup = Sup::python(
            &[
                "--admin",
                "127.0.0.1:0",
                "--stop-timeout",
                "300ms",
                "--alert-webhook",
                &url,
            ],
            &[("FIXTURE_IGNORE_TERM", "1")],
        );
        let admin = admin_addr(&sup).await;
        let old = sup.wait_ready(0, 1).await;
        let m = samples(admin).await;
        assert_eq!(val(&m, "unwedge_stop_timeouts_total"), 0.0);

        let from = sup.mark();
        sup.signal(Signal::SIGHUP);
        let alert = hook.wait_kind("stop_timed_out", 1).await;
        let event = &alert.body["event"];
        assert_eq!(event["worker"], "w1", "{event}");
        assert_eq!(event["pid"], old[0], "{event}");
        let waited = event["details"]["waited_secs"].as_f64().unwrap();
        assert!((0.29..10.0).contains(&waited), "{event}");
        let line = sup
            .wait_line(from, &["did not stop within", "--stop-timeout"])
            .await;
        assert!(line.contains(&format!("pid {}", old[0])), "{line}");
        samples_until(admin, "the stop timeout counted", |m| {
            m.get("unwedge_stop_timeouts_total") == Some(&1.0)
        })
        .await;
        // The new generation serves; the alert was the only one.
        sup.wait_line(from, &["generation 2 ready"]).await;
        assert_eq!(hook.kinds(), vec!["stop_timed_out".to_owned()]);
    })
    .await;
}

/// The SIGKILL the supervisor sends at `--stop-timeout` is its own doing, not a crash: no `exit`
/// record in the report directory, `/status` or `unwedge status` (a bare `signal 9` there reads
/// as someone's `kill -9`); its `stop_timed_out` alert says what happened. A real SIGKILL of
/// the next worker is still recorded, and as it comes later, it shows that the first exit was
/// handled (events are handled in order).
#[tokio::test]
async fn a_worker_killed_at_the_stop_timeout_writes_no_crash_record() {
    limited(async {
        let dir = tempfile::tempdir().unwrap();
        let reports = dir.path().join("reports");
        let sup = Sup::python(
            &[
                "--admin",
                "127.0.0.1:0",
                "--stop-timeout",
                "300ms",
                "--report-dir",
                reports.to_str().unwrap(),
            ],
            &[("FIXTURE_IGNORE_TERM", "1")],
        );
        let admin = admin_addr(&sup).await;
        let old = sup.wait_ready(0, 1).await[0];

        let from = sup.mark();
        sup.signal(Signal::SIGHUP);
        let line = sup
            .wait_line(from, &["did not stop within", "--stop-timeout"])
            .await;
        assert!(line.contains(&format!("pid {old}")), "{line}");
        sup.wait_line(from, &[&format!("pid {old} killed by SIGKILL")])
            .await;
        let new = status_until(&sup, admin, "the new generation ready", |s| {
            s["supervisor"]["generation"] == 2 && ready_pids(s).len() == 1
        })
        .await;
        let new = ready_pids(&new)[0];

        // A crash nobody asked for after it: recorded.
        kill(Pid::from_raw(new), Signal::SIGKILL).unwrap();
        let s = status_until(
            &sup,
            admin,
            "the crash recorded, its replacement ready",
            |s| {
                ready_pids(s).len() == 1
                    && s["reports"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|r| r["kind"] == "exit" && r["pid"] == new)
            },
        )
        .await;
        let exits: Vec<&Value> = s["reports"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["kind"] == "exit")
            .collect();
        assert_eq!(exits.len(), 1, "only the real crash: {s}");
        let on_disk = std::fs::read_to_string(reports.join("reports.jsonl")).unwrap();
        assert_eq!(on_disk.lines().count(), 1, "{on_disk}");
        assert!(on_disk.contains(&format!("\"pid\":{new}")), "{on_disk}");
        let (code, out, err) = unwedge_status(admin, &[]).await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(!out.contains(&old.to_string()), "{out}");
    })
    .await;
}

// ---- unwedge reload --wait ----

/// `unwedge run -c FILE` (FILE holding `config`) on a fresh socket with an admin endpoint, once
/// its first worker is ready: the supervisor and the admin address.
async fn supervisor_with_config(file: &std::path::Path, config: &str) -> (Sup, SocketAddr) {
    std::fs::write(file, config).unwrap();
    let sup = Sup::start(&[
        "run",
        "-c",
        file.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ]);
    let admin = admin_addr(&sup).await;
    sup.wait_ready(0, 1).await;
    (sup, admin)
}

/// Poisons one of the 2 demo workers of `sup` (`POST /poison`: exit 70) and waits until its
/// replacement is ready and the exit is in `/status`; returns that status.
async fn poison_and_wait_for_the_replacement(sup: &Sup, admin: SocketAddr) -> Value {
    let from = sup.mark();
    let _ = http(sup.addr().await, "POST", "/poison").await;
    sup.wait_line(from, &["exit status 70"]).await;
    status_until(
        sup,
        admin,
        "the replacement ready and the exit recorded",
        |s| {
            ready_pids(s).len() == 2
                && s["reports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r["kind"] == "exit")
        },
    )
    .await
}

/// `unwedge status --admin ADMIN [extra]`: (exit code, stdout, stderr).
async fn unwedge_status(admin: SocketAddr, extra: &[&str]) -> (i32, String, String) {
    let admin = admin.to_string();
    let mut args = vec!["status", "--admin", &admin];
    args.extend_from_slice(extra);
    run_split(&args).await
}

/// `unwedge status` prints what an operator on the host needs: the real workers, then a crash
/// with its restart and report; it exits 0 while the supervisor serves and 1 when it cannot be
/// reached.
#[tokio::test]
async fn unwedge_status_shows_the_workers_and_a_crash() {
    limited(async {
        let sup = start("2", &[]);
        let admin = admin_addr(&sup).await;
        let pids = sup.wait_ready(0, 2).await;
        status_until(&sup, admin, "2 ready workers", |s| ready_pids(s).len() == 2).await;
        let (code, out, err) = unwedge_status(admin, &[]).await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(
            out.starts_with(&format!(
                "unwedge {}, pid {}, up ",
                env!("CARGO_PKG_VERSION"),
                sup.pid
            )),
            "{out}"
        );
        assert!(out.contains("\ngeneration 1 serving\n"), "{out}");
        assert!(out.contains("\nworkers: 2 ready of 2\n"), "{out}");
        for pid in &pids {
            assert!(
                out.contains(&format!(" {pid}    1  ready ")),
                "{pid}: {out}"
            );
        }
        assert!(out.contains("\nrecent restarts: none\n"), "{out}");

        poison_and_wait_for_the_replacement(&sup, admin).await;
        let (code, out, err) = unwedge_status(admin, &[]).await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(
            out.contains("recent restarts: 1 (tainted 1); the last: w"),
            "{out}"
        );
        assert!(out.contains("  exit 70  "), "the slot's last exit: {out}");
        assert!(out.contains("recent reports ("), "{out}");
        assert!(out.contains("exit 70\n"), "the exit record: {out}");

        // The JSON is /status itself.
        let (code, out, _) = unwedge_status(admin, &["--json"]).await;
        assert_eq!(code, 0);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["supervisor"]["pid"], sup.pid);

        // Nobody there: exit 1 with one clear line.
        drop(sup);
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let nobody = closed.local_addr().unwrap();
        drop(closed);
        let (code, out, err) = unwedge_status(nobody, &[]).await;
        assert_eq!(code, 1, "{out}{err}");
        assert!(
            err.starts_with(&format!(
                "unwedge: error: cannot reach the admin endpoint at {nobody}"
            )),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    })
    .await;
}

/// With no worker ready yet, `unwedge status` says the generation is starting: it said
/// `generation 1 serving` over `workers: 0 ready of 1, 1 starting`.
#[tokio::test]
async fn unwedge_status_says_a_generation_with_no_ready_worker_is_starting() {
    limited(async {
        let sup = Sup::python(
            &["--admin", "127.0.0.1:0", "--ready-timeout", "1m"],
            &[("FIXTURE_NO_READY", "1")],
        );
        let admin = admin_addr(&sup).await;
        status_until(&sup, admin, "a worker starting", |s| {
            s["workers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w["state"] == "starting" && !w["pid"].is_null())
        })
        .await;
        let (_, out, err) = unwedge_status(admin, &[]).await;
        assert!(out.contains("\ngeneration 1 starting\n"), "{out}{err}");
        assert!(
            out.contains("\nworkers: 0 ready of 1, 1 starting\n"),
            "{out}{err}"
        );
        assert!(!out.contains("serving"), "{out}");
    })
    .await;
}

/// `unwedge reload --pid PID --wait --admin ADMIN`: (exit code, stdout, stderr).
async fn reload_wait(pid: i32, admin: SocketAddr) -> (i32, String, String) {
    reload_wait_timeout(pid, admin, "2m").await
}

/// `reload_wait` with `--timeout TIMEOUT`.
async fn reload_wait_timeout(pid: i32, admin: SocketAddr, timeout: &str) -> (i32, String, String) {
    let (pid, admin) = (pid.to_string(), admin.to_string());
    run_split(&[
        "reload",
        "--pid",
        &pid,
        "--wait",
        "--admin",
        &admin,
        "--timeout",
        timeout,
    ])
    .await
}

/// `unwedge reload --wait` tells a deploy script whether the reload worked: exit 0 once the new
/// generation serves, exit 1 with the reason when the file is broken or the new workers fail.
#[tokio::test]
async fn reload_wait_reports_the_outcome() {
    limited(async {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("unwedge.toml");
        let demo = format!("command = [{BIN:?}, \"demo-service\"]\n");
        let (sup, admin) = supervisor_with_config(&file, &format!("workers = 1\n{demo}")).await;

        // Two workers now: succeeds once both serve.
        std::fs::write(&file, format!("workers = 2\n{demo}")).unwrap();
        let (code, out, err) = reload_wait(sup.pid, admin).await;
        assert_eq!(code, 0, "{out}{err}");
        assert_eq!(out.trim(), "reloaded: generation 2 serves");
        let s = status(admin).await;
        assert_eq!(s["supervisor"]["generation"], 2, "{s}");
        assert_eq!(
            s["workers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|w| w["generation"] == 2)
                .count(),
            2,
            "{s}"
        );

        // A broken file: refused, exit 1 with the reason.
        std::fs::write(&file, "workers = \"many\"\n").unwrap();
        let (code, out, err) = reload_wait(sup.pid, admin).await;
        assert_eq!(code, 1, "{out}{err}");
        assert!(
            err.contains("reload failed: generation 3: refused: invalid config file"),
            "{err}"
        );
        assert!(err.contains("generation 2 keeps serving"), "{err}");

        // New workers that exit at once: the reload fails, the old ones serve.
        std::fs::write(&file, "command = [\"/bin/false\"]\n").unwrap();
        let (code, out, err) = reload_wait(sup.pid, admin).await;
        assert_eq!(code, 1, "{out}{err}");
        // Its own number, not the refused reload's: one generation, one outcome.
        assert!(err.contains("reload failed: generation 4: "), "{err}");
        assert!(err.contains("exit status 1"), "{err}");
        assert_eq!(status(admin).await["supervisor"]["generation"], 2);

        // Another process's pid: refused before any signal is sent.
        let mut other = another_program().await;
        let other_pid = other.id().unwrap();
        let (code, _, err) = reload_wait(other_pid as i32, admin).await;
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains(&format!("pid {other_pid} is not an unwedge supervisor")),
            "{err}"
        );
        // Another supervisor's pid with this one's admin address: refused too, unsignalled.
        let second = start("1", &[]);
        second.wait_ready(0, 1).await;
        let mark = second.mark();
        let (code, _, err) = reload_wait(second.pid, admin).await;
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains(&format!("belongs to pid {}, not {}", sup.pid, second.pid)),
            "{err}"
        );
        assert_eq!(
            second
                .log()
                .lines()
                .skip(mark)
                .filter(|l| l.contains("SIGHUP"))
                .count(),
            0
        );
        assert!(
            other.try_wait().unwrap().is_none(),
            "the other process got SIGHUP"
        );
    })
    .await;
}

/// Two Python workers that say READY=1 (`extra` config lines: the reload mode), then a reload
/// to a command whose workers never do: `reload --wait` says it failed at `--ready-timeout`,
/// generation 1 still serves and its old workers answer. Returns the supervisor, the old
/// workers and the log's mark before the reload.
async fn a_reload_to_silent_workers(extra: &str) -> (Sup, Vec<i32>, usize) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("unwedge.toml");
    let py = fixture("worker.py");
    let py = py.to_str().unwrap();
    // 3 s: each python worker must say READY=1 by then (over 0.3 s on a loaded machine).
    let common = format!("workers = 2\nready-timeout = \"3s\"\ndump-grace = \"100ms\"\n{extra}");
    let (sup, admin) =
        supervisor_with_config(&file, &format!("{common}command = [{py:?}]\n")).await;
    let old = sup.wait_ready(0, 2).await;
    let addr = sup.addr().await;
    std::fs::write(
        &file,
        format!("{common}command = [\"env\", \"FIXTURE_NO_READY=1\", {py:?}]\n"),
    )
    .unwrap();
    let m = sup.mark();
    let (code, out, err) = reload_wait(sup.pid, admin).await;
    assert_eq!(code, 1, "{out}{err}\nlog:\n{}", sup.log());
    assert!(err.contains("reload failed: generation 2"), "{err}");
    assert!(err.contains("ready_timeout"), "{err}");
    assert!(err.contains("generation 1 keeps serving"), "{err}");
    assert!(!sup.log_since(m).contains("taking it as ready"));
    assert_eq!(status(admin).await["supervisor"]["generation"], 1);
    // Past the ready timeout, the old workers answer.
    for _ in 0..10 {
        let (code, body) = get(addr, "/").await;
        assert_eq!(code, 200, "{body}");
        let pid: i32 = body.trim().trim_start_matches("ok ").parse().unwrap();
        assert!(old.contains(&pid), "answered by {pid}, not by {old:?}");
    }
    (sup, old, m)
}

/// A reload to a command whose workers say no READY=1 (a start that hangs, waiting for a
/// database), after a generation that did, fails under the default `--ready auto` at
/// `--ready-timeout`: `unwedge reload --wait` says so and exits 1, and the old workers keep
/// serving. The new workers used to be taken as ready (they have the socket in an epoll set)
/// and the old ones stopped, while `reload --wait` reported success.
#[tokio::test]
async fn a_reload_to_workers_that_never_say_ready_fails_after_ones_that_did() {
    limited(async {
        let (sup, _, m) = a_reload_to_silent_workers("").await;
        let hung = sup.wait_line(m, &["is hung (ready_timeout"]).await;
        assert!(
            hung.contains("workers of this service said it before"),
            "{hung}"
        );
    })
    .await;
}

/// A reload is refused, the running generation kept, when the file asks for what a reload
/// cannot do or the next start would refuse: `ready = "port"` with a `port-env` that only a
/// restart applies (its port probe would reach the shared socket, which always answers, and
/// take a worker that serves nothing for ready: every request then hung while `reload --wait`
/// said success), and settings only a restart applies that are invalid (the next start, a
/// crash or a reboot, would exit 2 with the service down).
#[tokio::test]
async fn a_reload_to_what_it_cannot_apply_or_a_start_would_refuse_is_refused() {
    limited(async {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("unwedge.toml");
        let demo = format!("command = [{BIN:?}, \"demo-service\"]\n");
        std::fs::write(&file, format!("listen = [\"127.0.0.1:0\"]\n{demo}")).unwrap();
        let sup = Sup::start(&[
            "run",
            "-c",
            file.to_str().unwrap(),
            "--admin",
            "127.0.0.1:0",
        ]);
        let admin = admin_addr(&sup).await;
        let old = sup.wait_ready(0, 1).await;
        let addr = sup.addr().await;
        for (what, config) in [
            (
                "`ready = \"port\"` needs `port-env`",
                "port-env = \"PORT\"\nready = \"port\"\ncommand = [\"sleep\", \"1000\"]\n"
                    .to_owned(),
            ),
            (
                "--report-max-bytes",
                format!("listen = [\"127.0.0.1:0\"]\nreport-max-bytes = \"lots\"\n{demo}"),
            ),
            (
                "ftp://nope",
                format!("listen = [\"127.0.0.1:0\"]\nalert-webhook = \"ftp://nope\"\n{demo}"),
            ),
        ] {
            std::fs::write(&file, config).unwrap();
            let (code, out, err) = reload_wait(sup.pid, admin).await;
            assert_eq!(code, 1, "{what}: {out}{err}\nlog:\n{}", sup.log());
            assert!(err.contains("refused"), "{what}: {err}");
            assert!(err.contains(what), "{what}: {err}");
            assert!(err.contains("generation 1 keeps serving"), "{err}");
            assert_eq!(status(admin).await["supervisor"]["generation"], 1);
            let (code, body) = get(addr, "/").await;
            assert_eq!(code, 200, "{what}: {body}");
        }
        let s = status(admin).await;
        assert_eq!(s["workers"][0]["pid"], old[0], "{s}");
    })
    .await;
}

/// `reload --wait` to a supervisor that is stopping says so at once (exit 1), instead of
/// waiting out the drain and then saying the supervisor exited; the SIGHUP is logged, not
/// silently dropped. `/status` says `stopping`.
#[tokio::test]
async fn a_reload_asked_of_a_stopping_supervisor_fails_at_once() {
    limited(async {
        let py = fixture("worker.py");
        let mut sup = Sup::start_env(
            &[
                "run",
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--",
                py.to_str().unwrap(),
            ],
            &[("FIXTURE_DRAIN_MS", "20000")],
        );
        let admin = admin_addr(&sup).await;
        let worker = sup.wait_ready(0, 1).await[0];
        assert_eq!(status(admin).await["supervisor"]["stopping"], false);
        sup.signal(Signal::SIGTERM);
        status_until(&sup, admin, "stopping", |s| {
            s["supervisor"]["stopping"] == true
        })
        .await;
        let m = sup.mark();
        let (code, out, err) = reload_wait(sup.pid, admin).await;
        assert_eq!(code, 1, "{out}{err}");
        assert!(err.contains("is stopping; it takes no reload"), "{err}");
        // Said while the drain still runs.
        assert!(common::running(sup.pid), "{}", sup.log());
        // A bare SIGHUP is logged.
        sup.signal(Signal::SIGHUP);
        sup.wait_line(m, &["SIGHUP: no reload, the supervisor is stopping"])
            .await;
        // The drain cut short: the supervisor ends with its worker, leaving nothing behind.
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(worker), Signal::SIGKILL).unwrap();
        assert!(sup.wait_exit(LONG).await.code().is_some(), "{}", sup.log());
    })
    .await;
}

/// `a_reload_to_workers_that_never_say_ready_fails_after_ones_that_did` under
/// `--reload-mode rolling`: the first slot's silent replacement fails the reload at
/// `--ready-timeout` before any old worker is stopped, so both old workers still run.
#[tokio::test]
async fn a_rolling_reload_to_workers_that_never_say_ready_fails_after_ones_that_did() {
    limited(async {
        let (sup, old, _) = a_reload_to_silent_workers("reload-mode = \"rolling\"\n").await;
        for pid in &old {
            assert!(
                common::running(*pid),
                "old worker {pid} was stopped:\n{}",
                sup.log()
            );
        }
    })
    .await;
}

/// A reload requested while another is still starting is not lost: one more reload follows
/// the first, with the configuration as it is then, and `reload --wait` reports that one, not
/// the outcome of the reload that started before its signal (which runs the older settings).
#[tokio::test]
async fn a_reload_requested_during_a_reload_follows_it() {
    limited(async {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("unwedge.toml");
        let demo = format!("command = [{BIN:?}, \"demo-service\"]\n");
        let (sup, admin) = supervisor_with_config(&file, &demo).await;

        // Deploy 1: a version that starts only once deploy 2 has been asked for.
        let go = dir.path().join("go");
        std::fs::write(
            &file,
            format!(
                "command = [\"/bin/sh\", \"-c\", \"while [ ! -e '{}' ]; do sleep 0.05; done; exec \\\"$0\\\" demo-service\", {BIN:?}]\n",
                go.display()
            ),
        )
        .unwrap();
        let from = sup.mark();
        sup.signal(Signal::SIGHUP);
        sup.wait_line(from, &["reloading: starting generation 2"])
            .await;

        // Deploy 2, while generation 2 is still starting: two workers of the plain demo.
        std::fs::write(&file, format!("workers = 2\n{demo}")).unwrap();
        let release = async {
            sup.wait_line(from, &["another reload follows it"]).await;
            std::fs::write(&go, "").unwrap();
        };
        let ((code, out, err), ()) = tokio::join!(reload_wait(sup.pid, admin), release);
        assert_eq!(code, 0, "{out}{err}");
        assert_eq!(out.trim(), "reloaded: generation 3 serves", "{}", sup.log());
        sup.wait_line(from, &["generation 2 ready"]).await;
        sup.wait_line(from, &["queued reload: reloading: starting generation 3"])
            .await;
        let s = status(admin).await;
        assert_eq!(s["supervisor"]["generation"], 3, "{s}");
        assert_eq!(s["supervisor"]["reload_requests"], 2, "{s}");
        assert_eq!(s["supervisor"]["last_reload"]["requests"], 2, "{s}");
        let gen3 = s["workers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["generation"] == 3)
            .count();
        assert_eq!(gen3, 2, "{s}");
    })
    .await;
}

/// `unwedge reload --wait` does not wait out its timeout for a supervisor that died meanwhile.
#[tokio::test]
async fn reload_wait_ends_when_the_supervisor_dies() {
    limited(async {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("unwedge.toml");
        let (mut sup, admin) =
            supervisor_with_config(&file, &format!("command = [{BIN:?}, \"demo-service\"]\n"))
                .await;
        // The new generation never says READY=1: the reload stays in progress.
        std::fs::write(
            &file,
            "ready = \"notify\"\nready-timeout = \"60s\"\ncommand = [\"/bin/sleep\", \"600\"]\n",
        )
        .unwrap();
        let from = sup.mark();
        let started = Instant::now();
        let wait = reload_wait(sup.pid, admin);
        let kill_it = async {
            sup.wait_line(from, &["reloading: starting generation 2"])
                .await;
            sup.signal(Signal::SIGKILL);
            sup.wait_exit(LONG).await;
        };
        let ((code, _, err), ()) = tokio::join!(wait, kill_it);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("exited before the reload finished"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{:?}",
            started.elapsed()
        );
    })
    .await;
}

/// `reload --wait --timeout` counts from the last sign of progress: a rolling reload of 4 slots
/// whose workers take 1.5 s each to start lasts over 6 s, longer than the timeout (4 s, slack
/// for a loaded machine's starts), and is waited for;
/// one whose new worker never gets ready is given up after the timeout.
#[tokio::test]
async fn reload_wait_follows_a_long_rolling_reload_and_gives_up_on_a_stuck_one() {
    limited(async {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("unwedge.toml");
        let plain = format!(
            "workers = 4\nreload-mode = \"rolling\"\ncommand = [{BIN:?}, \"demo-service\"]\n"
        );
        let (sup, admin) = supervisor_with_config(&file, &plain).await;
        sup.wait_ready(0, 4).await;
        std::fs::write(
            &file,
            format!(
                "workers = 4\nreload-mode = \"rolling\"\ncommand = [\"/bin/sh\", \"-c\", \"sleep 1.5; exec \\\"$0\\\" demo-service\", {BIN:?}]\n"
            ),
        )
        .unwrap();
        let started = Instant::now();
        let (code, out, err) = reload_wait_timeout(sup.pid, admin, "4s").await;
        let took = started.elapsed();
        assert_eq!(code, 0, "{out}{err}\n{}", sup.log());
        assert_eq!(out.trim(), "reloaded: generation 2 serves");
        assert!(took > Duration::from_secs(4), "{took:?}: not longer than the timeout");

        // Generation 3 never says READY=1 (and has a minute to): nothing moves after it starts.
        std::fs::write(
            &file,
            "workers = 4\nreload-mode = \"rolling\"\nready = \"notify\"\nready-timeout = \"60s\"\ncommand = [\"/bin/sleep\", \"600\"]\n",
        )
        .unwrap();
        let started = Instant::now();
        let (code, _, err) = reload_wait_timeout(sup.pid, admin, "1s").await;
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("no progress of it, for 1s"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
    })
    .await;
}

// ---- what a worker sends is not trusted ----

/// `unwedge run --workers 1 --admin 127.0.0.1:0 <flags> -- tests/fixtures/worker.py`, once its
/// worker is ready: (supervisor, shared socket, admin address).
async fn python_worker(flags: &[&str]) -> (Sup, SocketAddr, SocketAddr) {
    let mut all = vec!["--workers", "1", "--admin", "127.0.0.1:0"];
    all.extend_from_slice(flags);
    let sup = Sup::python(&all, &[]);
    let admin = admin_addr(&sup).await;
    let addr = sup.addr().await;
    sup.wait_ready(0, 1).await;
    (sup, addr, admin)
}

/// Makes the Python worker send `report` as its `UNWEDGE_REPORT=` (as any worker may, redacted
/// or not), and waits until `/status` lists it (by its `request_id`).
/// Where a report is stored and shown: `/status`, the report directory's `reports.jsonl` and
/// `unwedge reports --json` of it, each named.
async fn stored_and_shown(admin: SocketAddr, dir: &std::path::Path) -> [(&'static str, String); 3] {
    let (_, status) = get(admin, "/status").await;
    let file = std::fs::read_to_string(dir.join("reports.jsonl")).unwrap();
    let (code, listed, err) =
        run_split(&["reports", "--dir", dir.to_str().unwrap(), "--json"]).await;
    assert_eq!(code, 0, "{err}");
    [
        ("/status", status),
        ("reports.jsonl", file),
        ("unwedge reports --json", listed),
    ]
}

async fn send_report(sup: &Sup, addr: SocketAddr, admin: SocketAddr, report: &Value) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("report.json");
    std::fs::write(&file, serde_json::to_string(report).unwrap()).unwrap();
    let (code, body) = get(addr, &format!("/report?file={}", file.display())).await;
    assert_eq!(code, 200, "{body}");
    let id = report["request"]["request_id"].clone();
    status_until(sup, admin, "the report", |s| {
        s["reports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["report"]["request"]["request_id"] == id)
    })
    .await
}

/// `promtool check metrics` on `text` (the Prometheus text format, what `/metrics` answers a
/// client that does not ask for OpenMetrics): it must parse, all of it (lint findings, exit
/// status 3, are fine). `false` (after saying why) when promtool is not installed.
async fn promtool_parses(text: &str) -> bool {
    let mut cmd = tokio::process::Command::new("promtool");
    cmd.args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let Ok(mut child) = cmd.spawn() else {
        skip("promtool not found (apt-get install prometheus)");
        return false;
    };
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(LONG, child.wait_with_output())
        .await
        .expect("promtool hung")
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        matches!(out.status.code(), Some(0 | 3)) && !said.contains("parsing error"),
        "promtool cannot parse /metrics ({:?}): {said}\n{text}",
        out.status
    );
    true
}

/// A panic report whose request path holds `"`, `\`, a line break and an escape sequence (the
/// http crate accepts `"` and `\` in paths): `/metrics` still parses for promtool and for
/// prometheus_client's parser, then and at the next scrape, and the route is counted under a
/// percent-encoded label.
#[tokio::test]
async fn a_panic_on_a_hostile_path_leaves_metrics_parseable() {
    limited(async {
        let (sup, addr, admin) = python_worker(&[]).await;
        let path = "/files/a\"b\\c\nd\u{1b}[2J";
        let report = serde_json::json!({
            "message": "boom", "location": "src/files.rs:1:2",
            "request": {"method": "GET", "path": path, "request_id": "hostile-1", "headers": {}},
        });
        send_report(&sup, addr, admin, &report).await;
        for _ in 0..2 {
            let (code, text) = get(admin, "/metrics").await;
            assert_eq!(code, 200);
            let checked = promtool_parses(&text).await;
            assert!(
                text.contains(r#"unwedge_panics_total{route="/files/a%22b%5Cc%0Ad%1B[2J"} 1"#),
                "{text}"
            );
            if python_has("prometheus_client") {
                // prometheus_client's parser too (both formats, the strict OpenMetrics
                // parser included: unwedge-admin's metrics_scrape).
                let m = scrape(admin).await;
                assert_eq!(
                    m.get("unwedge_panics_total{route=/files/a%22b%5Cc%0Ad%1B[2J}"),
                    Some(&1.0),
                    "{m:?}"
                );
            } else {
                skip("python3 cannot import prometheus_client (pip install prometheus-client)");
                if !checked {
                    return;
                }
            }
        }
    })
    .await;
}

/// Reports without a route template (a worker whose layer sits outside its router, or not in
/// Rust): panics on `/users/17/orders` and `/users/4242/orders` count under one `route` label
/// with the id replaced, one on `/users/ann@example.com/orders` under another, and no id is
/// a label anyone scraping can read.
#[tokio::test]
async fn panics_on_paths_with_ids_count_by_route_not_by_id() {
    limited(async {
        let (sup, addr, admin) = python_worker(&[]).await;
        for (i, user) in ["17", "4242", "ann@example.com"].into_iter().enumerate() {
            let report = serde_json::json!({
                "message": "boom", "location": "src/users.rs:1:2",
                "request": {"method": "GET", "path": format!("/users/{user}/orders"),
                            "request_id": format!("user-{i}"), "headers": {}},
            });
            send_report(&sup, addr, admin, &report).await;
        }
        let (code, text) = get(admin, "/metrics").await;
        assert_eq!(code, 200);
        assert!(
            text.contains(r#"unwedge_panics_total{route="/users/{int}/orders"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"unwedge_panics_total{route="/users/{param}/orders"} 1"#),
            "{text}"
        );
        assert!(!text.contains("/users/17"), "{text}");
        assert!(!text.contains("ann@example.com"), "{text}");
    })
    .await;
}

/// A worker that does not redact sends `Cookie`, `authorization`, `Proxy-Authorization` and
/// `SET-COOKIE` headers in its report, and a path and a `Referer` with a token in their query:
/// none shows anywhere (`/status`, `/metrics`, the report file, `unwedge reports --json`), the
/// report file is `0600` and the directory the supervisor created `0700`.
#[tokio::test]
async fn credentials_a_worker_sends_are_redacted_everywhere() {
    use std::os::unix::fs::PermissionsExt;
    limited(async {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("reports");
        let dir_s = dir.to_str().unwrap().to_owned();
        let (sup, addr, admin) = python_worker(&["--report-dir", &dir_s]).await;
        let report = serde_json::json!({
            "message": "boom", "location": "src/x.rs:1:2",
            "request": {"method": "GET", "path": "/account?token=SECRET-QUERY#SECRET-FRAGMENT",
                "request_id": "creds-1", "headers": {
                "Cookie": "session=SECRET-COOKIE",
                "Referer": "https://shop.example/reset?token=SECRET-REFERER",
                "authorization": "Bearer SECRET-AUTH",
                "Proxy-Authorization": "Basic SECRET-PROXY",
                "SET-COOKIE": "id=SECRET-SET",
                "User-Agent": "curl/8",
            }},
        });
        let s = send_report(&sup, addr, admin, &report).await;
        let (_, metrics) = get(admin, "/metrics").await;
        for (what, text) in &stored_and_shown(admin, &dir).await {
            assert!(
                !text.contains("SECRET"),
                "{what} shows a credential: {text}"
            );
            assert!(
                text.contains("curl/8") && text.contains("https://shop.example/reset"),
                "{what} lost the other headers: {text}"
            );
        }
        assert!(!metrics.contains("SECRET"), "{metrics}");
        assert!(metrics.contains(r#"route="/account""#), "{metrics}");
        let headers = s["reports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["report"]["request"]["request_id"] == "creds-1")
            .unwrap()["report"]["request"]["headers"]
            .clone();
        for name in [
            "Cookie",
            "authorization",
            "Proxy-Authorization",
            "SET-COOKIE",
        ] {
            assert_eq!(headers[name], "<redacted>", "{headers}");
        }
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join("reports.jsonl")), 0o600);
        assert_eq!(mode(&dir), 0o700);
    })
    .await;
}

/// A worker's `STATUS=` text quoting a credential (`Authorization: Bearer …`, a URL's
/// `user:password@`, a `?token=`): redacted in the log, `/status`, the status page and
/// `unwedge status`, as a report is. It was shown as sent.
#[tokio::test]
async fn credentials_in_a_workers_status_text_are_redacted_everywhere() {
    limited(async {
        let dir = tempfile::tempdir().unwrap();
        let go = dir.path().join("taint");
        // Then, once `go` exists, a tainted status (which the supervisor logs) with a secret.
        let worker = common::notify_worker(&format!(
            "s.sendto(b'READY=1', to)\n\
             s.sendto(b'STATUS=serving; upstream said Authorization: Bearer SECRET-AUTH via \
             https://bob:SECRET-PW@db.example/x?token=SECRET-QUERY', to)\n\
             while not os.path.exists({go:?}): time.sleep(0.02)\n\
             s.sendto(b'STATUS=tainted: Cookie: session=SECRET-COOKIE', to)\n\
             time.sleep(600)\n",
            go = go.display().to_string(),
        ));
        let sup = Sup::run(
            &["--ready", "notify", "--admin", "127.0.0.1:0"],
            &["python3", "-c", &worker],
        );
        let admin = admin_addr(&sup).await;
        sup.wait_ready(0, 1).await;
        let s = status_until(&sup, admin, "the worker's status", |s| {
            s["workers"][0]["status"].is_string()
        })
        .await;
        let shown = s["workers"][0]["status"].as_str().unwrap().to_owned();
        assert!(shown.starts_with("serving; upstream said"), "{shown}");
        let (_, page) = get(admin, "/").await;
        assert!(page.contains("serving; upstream said"), "{page}");
        let admin_s = admin.to_string();
        let (code, text, err) = run_split(&["status", "--admin", &admin_s]).await;
        assert_eq!(code, 0, "{err}");
        assert!(text.contains("STATUS"), "{text}");
        std::fs::write(&go, "").unwrap();
        let tainted = sup.wait_line(0, &["is tainted (tainted: Cookie:"]).await;
        assert!(!tainted.contains("SECRET"), "{tainted}");
        for (what, shown) in [
            ("/status", s.to_string()),
            ("the page", page),
            ("unwedge status", text),
            // But for the command's own lines (`starting 1 worker(s): python3 -c …`), which
            // hold the secrets it sends.
            (
                "the log",
                sup.log()
                    .lines()
                    .filter(|l| !l.contains("s.sendto("))
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
        ] {
            assert!(
                !shown.contains("SECRET"),
                "{what} shows a credential: {shown}"
            );
        }
    })
    .await;
}

/// A worker that does not scrub its panic message sends one quoting a request's `{:?}`
/// (`HeaderMap {"authorization": "Bearer …", "cookie": "…"}`), and a backtrace, a
/// `decision.reason`, a `thread` and a field of its own with an `Authorization: Bearer …`
/// line: no credential shows in the report file, `/status`, the page, `unwedge status`,
/// `unwedge reports` (text and JSON) or the `worker_crashed` alert that quotes the panic.
#[tokio::test]
async fn credentials_in_a_workers_panic_message_and_backtrace_are_redacted_everywhere() {
    limited(async {
        let hook = Receiver::start(false).await;
        let url = hook.url();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("reports");
        let dir_s = dir.to_str().unwrap().to_owned();
        let (sup, addr, admin) =
            python_worker(&["--report-dir", &dir_s, "--alert-webhook", &url]).await;
        let report = serde_json::json!({
            "message": "unexpected request Request { method: GET, uri: /pay, headers: \
                HeaderMap {\"authorization\": \"Bearer MSGSECRET\", \"cookie\": \"sid=COOKIESECRET\", \
                \"host\": \"shop\"} }",
            "location": "src/pay.rs:7:9",
            "thread": "worker Authorization: Bearer THREADSECRET",
            "backtrace": "0: pay::handle\n   headers: Authorization: Bearer BTSECRET\n1: main",
            "decision": {"action": "crash", "reason": "saw Authorization: Bearer REASONSECRET"},
            "extra": {"seen": ["Set-Cookie: id=EXTRASECRET"]},
            "request": {"method": "GET", "path": "/pay", "request_id": "msg-creds-1",
                "headers": {"User-Agent": "curl/8"}},
        });
        let s = send_report(&sup, addr, admin, &report).await;
        let got = s["reports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["report"]["request"]["request_id"] == "msg-creds-1")
            .unwrap()["report"]
            .clone();
        let message = got["message"].as_str().unwrap();
        assert!(
            message.contains(r#""authorization": "[redacted]", "cookie": "[redacted]""#),
            "{message}"
        );
        assert!(message.contains(r#""host": "shop""#), "{message}");
        assert_eq!(got["location"], "src/pay.rs:7:9");
        let _ = http(addr, "GET", "/exit?code=70").await;
        let alert = hook.wait_kind("worker_crashed", 1).await.body.to_string();
        assert!(alert.contains("unexpected request"), "{alert}");
        let (_, raw_status) = get(admin, "/status").await;
        let (_, page) = get(admin, "/").await;
        let file = std::fs::read_to_string(dir.join("reports.jsonl")).unwrap();
        let admin_s = admin.to_string();
        // Exit 1 while the crashed worker's replacement starts: the text is what matters.
        let (_, status_text, err) = run_split(&["status", "--admin", &admin_s]).await;
        assert!(status_text.contains("unexpected request"), "{status_text}{err}");
        let (code, listed, err) = run_split(&["reports", "--dir", &dir_s]).await;
        assert_eq!(code, 0, "{err}");
        let (code, listed_json, err) = run_split(&["reports", "--dir", &dir_s, "--json"]).await;
        assert_eq!(code, 0, "{err}");
        for (what, text) in [
            ("/status", &raw_status),
            ("/", &page),
            ("reports.jsonl", &file),
            ("unwedge status", &status_text),
            ("unwedge reports", &listed),
            ("unwedge reports --json", &listed_json),
            ("the alert", &alert),
        ] {
            assert!(
                !text.contains("SECRET"),
                "{what} shows a credential: {text}"
            );
        }
        for (what, text) in [
            ("/status", &raw_status),
            ("reports.jsonl", &file),
            ("unwedge reports --json", &listed_json),
        ] {
            assert!(text.contains("[redacted]"), "{what}: {text}");
            assert!(text.contains("pay::handle"), "{what} lost the backtrace: {text}");
        }
    })
    .await;
}

/// Reports as large as their cut allows are kept for `/status` and the page within a byte
/// budget (512 KiB, the newest always), not 50 of them whatever their size: each unread
/// `/status` answer holds a copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_history_is_bounded_in_bytes_too() {
    limited(async {
        let (sup, addr, admin) = python_worker(&[]).await;
        let mut last = Value::Null;
        for i in 0..30 {
            let report = serde_json::json!({
                "message": "m".repeat(8 * 1024), "backtrace": "f".repeat(32 * 1024),
                "request": {"method": "GET", "path": "/big", "request_id": format!("big-{i}")},
            });
            last = send_report(&sup, addr, admin, &report).await;
        }
        let reports = last["reports"].as_array().unwrap();
        let bytes = serde_json::to_string(reports).unwrap().len();
        assert!(
            bytes <= 600 * 1024,
            "{} reports, {bytes} bytes",
            reports.len()
        );
        assert!(reports.len() < 30, "{} reports kept", reports.len());
        assert!(
            reports
                .iter()
                .any(|r| r["report"]["request"]["request_id"] == "big-29"),
            "the newest report is kept"
        );
    })
    .await;
}

/// A worker sends a report as big as its notify socket sends (a 68 000-byte message, a
/// 52 000-byte backtrace, a 20 000-byte header, 200 headers, a list of 1 000 numbers): the
/// supervisor keeps the first 8 KiB of the message ending `…<truncated>` (as the `unwedge`
/// library cuts its own), the first 32 KiB of the backtrace, the first 2 KiB of the header, 64
/// of the headers and items, the whole report some tens of KiB, in `/status` and the report
/// directory alike; the credentials written across the cuts show nowhere.
#[tokio::test]
async fn a_workers_huge_report_is_cut_to_a_bounded_size_after_its_credentials_are_hidden() {
    const MARK: &str = "…<truncated>";
    limited(async {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("reports");
        let dir_s = dir.to_str().unwrap().to_owned();
        let (sup, addr, admin) = python_worker(&["--report-dir", &dir_s]).await;
        // A token written across the message's 8 KiB cut, a URL's password across the
        // backtrace's 32 KiB one.
        let message = format!(
            "{} headers: {{\"authorization\": \"Bearer CUTSECRET-0123456789\"}} then Bearer \
             CUTSECRET-0123456789 {}",
            "a".repeat(8 * 1024 - 40),
            "b".repeat(60_000)
        );
        let backtrace = format!(
            "{}postgres://app:BTSECRET-0123456789@db/app {}",
            "f".repeat(32 * 1024 - 20),
            "g".repeat(20_000)
        );
        let mut headers = serde_json::Map::new();
        headers.insert("User-Agent".into(), "curl/8".into());
        headers.insert("X-Big".into(), "z".repeat(20_000).into());
        for i in 0..200 {
            headers.insert(format!("X-H-{i:03}"), "v".repeat(30).into());
        }
        let report = serde_json::json!({
            "message": message, "backtrace": backtrace, "location": "src/x.rs:1:2",
            "numbers": (0..1000).collect::<Vec<u32>>(),
            "request": {"method": "GET", "path": "/big", "request_id": "huge-1",
                "headers": headers},
        });
        assert!(serde_json::to_string(&report).unwrap().len() > 150_000);
        let s = send_report(&sup, addr, admin, &report).await;
        let got = s["reports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["report"]["request"]["request_id"] == "huge-1")
            .unwrap()["report"]
            .clone();
        for (what, text) in &stored_and_shown(admin, &dir).await {
            assert!(
                !text.contains("SECRET"),
                "{what} shows a credential: {text:.300}"
            );
            // 50 such reports are what the history keeps.
            assert!(text.len() < 100_000, "{what} holds {} bytes", text.len());
            assert!(text.contains(MARK), "{what}: {text:.300}");
        }
        let message = got["message"].as_str().unwrap();
        assert!(message.len() <= 8 * 1024 + MARK.len(), "{}", message.len());
        assert!(
            message.ends_with(MARK),
            "{:.100}",
            &message[message.len() - 100..]
        );
        assert!(message.starts_with(&"a".repeat(8 * 1024 - 40)));
        let shown = r#"headers: {"authorization": "[redacted]"#;
        assert!(message.contains(shown), "{}", &message[8 * 1024 - 60..]);
        let backtrace = got["backtrace"].as_str().unwrap();
        assert!(
            backtrace.len() <= 32 * 1024 + MARK.len(),
            "{}",
            backtrace.len()
        );
        assert!(backtrace.ends_with(MARK));
        assert!(backtrace.starts_with(&"f".repeat(32 * 1024 - 20)));
        let headers = got["request"]["headers"].as_object().unwrap();
        assert!(headers.len() <= 64, "{}", headers.len());
        assert_eq!(headers["User-Agent"], "curl/8");
        let big = headers["X-Big"].as_str().unwrap();
        assert!(
            big.len() <= 2 * 1024 + MARK.len() && big.ends_with(MARK),
            "{}",
            big.len()
        );
        assert!(got["numbers"].as_array().unwrap().len() <= 64);
        assert_eq!(got["location"], "src/x.rs:1:2");
        assert_eq!(got["request"]["path"], "/big");
        let stored = serde_json::to_string(&got).unwrap().len();
        assert!(stored < 80_000, "{stored} bytes kept");
    })
    .await;
}

/// A worker that does not clean URLs sends a `Referer` with user info
/// (`https://user:hunter2@example.com/x`), and another URL header with some: the password
/// shows neither in `/status`, the page nor the report file, where the URL is
/// `https://…@example.com/x`.
#[tokio::test]
async fn credentials_in_a_referers_user_info_are_cut_everywhere() {
    limited(async {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("reports");
        let dir_s = dir.to_str().unwrap().to_owned();
        let (sup, addr, admin) = python_worker(&["--report-dir", &dir_s]).await;
        let report = serde_json::json!({
            "message": "boom", "location": "src/x.rs:1:2",
            "request": {"method": "GET", "path": "/account", "request_id": "userinfo-1",
                "headers": {"Referer": "https://user:hunter2@example.com/x?y=1",
                            "X-Original-URL": "http://admin:hunter2@intranet.example/"}},
        });
        send_report(&sup, addr, admin, &report).await;
        let (_, raw_status) = get(admin, "/status").await;
        let (_, page) = get(admin, "/").await;
        let file = std::fs::read_to_string(dir.join("reports.jsonl")).unwrap();
        for (what, text) in [
            ("/status", &raw_status),
            ("reports.jsonl", &file),
            ("/", &page),
        ] {
            assert!(
                !text.contains("hunter2"),
                "{what} shows the password: {text}"
            );
            assert!(!text.contains("user:"), "{what} shows the user: {text}");
            assert!(text.contains("https://…@example.com/x"), "{what}: {text}");
        }
    })
    .await;
}

/// A worker that logs a request's credentials to stderr just before it dies (a JSON log line
/// with an `authorization`, a `Cookie:` header line, a `cookie=` key-value log): its exit
/// record keeps its last stderr lines but with those values `[redacted]`, in `/status`, the
/// report file and the `worker_crashed` alert alike; the other lines are as written.
#[tokio::test]
async fn credentials_a_dying_worker_wrote_to_stderr_are_not_reported() {
    limited(async {
        let hook = Receiver::start(false).await;
        let url = hook.url();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("reports");
        let dir_s = dir.to_str().unwrap().to_owned();
        let count = tmp.path().join("count");
        // The first run logs and exits 1; its replacement serves.
        let worker = format!(
            r#"n=$(cat {f} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {f}
            if [ $n -eq 1 ]; then
              echo '{{"level":"error","authorization": "Bearer sk_live_SECRET1","path":"/pay"}}' >&2
              echo 'Cookie: session=SECRET2; theme=dark' >&2
              echo 'request failed cookie=SECRET3 user=bob' >&2
              echo 'connection reset by peer' >&2
              exit 1
            fi
            exec sleep 1000"#,
            f = count.display()
        );
        let sup = Sup::run(
            &[
                "--admin",
                "127.0.0.1:0",
                "--ready",
                "none",
                "--restart-delay",
                "1ms",
                "--report-dir",
                &dir_s,
                "--alert-webhook",
                &url,
            ],
            &["sh", "-c", &worker],
        );
        let admin = admin_addr(&sup).await;
        let s = status_until(&sup, admin, "the exit record", |s| {
            s["reports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["kind"] == "exit" && r["code"] == 1)
        })
        .await;
        let exit = s["reports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["kind"] == "exit")
            .unwrap()
            .clone();
        assert_eq!(
            exit["last_stderr_lines"],
            serde_json::json!([
                r#"{"level":"error","authorization": "[redacted]","path":"/pay"}"#,
                "Cookie: [redacted]",
                "request failed cookie=[redacted]",
                "connection reset by peer",
            ]),
            "{exit}"
        );
        let alert = hook.wait_kind("worker_crashed", 1).await;
        let (_, raw_status) = get(admin, "/status").await;
        let (_, page) = get(admin, "/").await;
        let file = std::fs::read_to_string(dir.join("reports.jsonl")).unwrap();
        let alert = alert.body.to_string();
        for (what, text) in [
            ("/status", &raw_status),
            ("/", &page),
            ("reports.jsonl", &file),
            ("the alert", &alert),
        ] {
            assert!(
                !text.contains("SECRET"),
                "{what} shows a credential: {text}"
            );
            assert!(text.contains("connection reset by peer"), "{what}: {text}");
        }
    })
    .await;
}

/// A panic message is often the client's choice: in the webhook's Slack-style `text`,
/// `<!channel>` and `<https://…|Runbook>` arrive escaped (`&lt;!channel&gt;`), so Slack neither
/// notifies the channel nor shows a link; the structured `event` keeps the summary as it is.
#[tokio::test]
async fn slack_markup_in_a_panic_message_reaches_the_webhook_escaped() {
    limited(async {
        let hook = Receiver::start(false).await;
        let url = hook.url();
        let (sup, addr, admin) = python_worker(&["--alert-webhook", &url]).await;
        let message = "<!channel> see <https://evil.example/x|Runbook> & retry";
        let report = serde_json::json!({
            "message": message, "location": "src/x.rs:1:2",
            "request": {"method": "GET", "path": "/x", "request_id": "slack-1", "headers": {}},
        });
        send_report(&sup, addr, admin, &report).await;
        let _ = http(addr, "GET", "/exit?code=70").await;
        let got = hook.wait_kind("worker_crashed", 1).await;
        let text = got.body["text"].as_str().unwrap();
        assert!(
            text.contains(
                "&lt;!channel&gt; see &lt;https://evil.example/x|Runbook&gt; &amp; retry"
            ),
            "{text}"
        );
        assert!(!text.contains(['<', '>']), "{text}");
        let summary = got.body["event"]["summary"].as_str().unwrap();
        assert!(summary.contains(message), "{summary}");
    })
    .await;
}

/// A crash loop whose every crash is a distinct alert (exit 1, 2, 3, …) spends the rate limit
/// (20 a minute) before the supervisor gives up: the `gave_up` alert still reaches the webhook.
#[tokio::test]
async fn gave_up_alert_survives_a_crash_loop_that_spent_the_rate_limit() {
    limited(async {
        let hook = Receiver::start(false).await;
        let url = hook.url();
        let tmp = tempfile::tempdir().unwrap();
        let count = tmp.path().join("count");
        let crash = format!(
            "n=$(cat {f} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {f}; exit $n",
            f = count.display()
        );
        let mut sup = Sup::run(
            &[
                "--workers",
                "1",
                "--admin",
                "off",
                "--restart-delay",
                "1ms",
                "--restart-delay-max",
                "5ms",
                "--max-restarts",
                "25",
                "--within",
                "60s",
                "--alert-webhook",
                &url,
            ],
            &["sh", "-c", &crash],
        );
        let st = sup.wait_exit(LONG).await;
        assert_eq!(st.code(), Some(3), "{}", sup.log());
        // The supervisor flushed its alerts before it exited.
        let kinds = hook.kinds();
        let crashes = kinds.iter().filter(|k| *k == "worker_crashed").count();
        assert_eq!(crashes, 20, "the rate limit was spent: {kinds:?}");
        assert!(
            kinds.contains(&"gave_up".to_owned()),
            "{kinds:?}\n{}",
            sup.log()
        );
    })
    .await;
}

/// `unwedge reports` over a file with a line that is not UTF-8 and a torn one: the records
/// are listed, and the skipped lines are said (on stderr with `--json`, whose stdout stays
/// JSON lines).
#[tokio::test]
async fn unwedge_reports_lists_around_unreadable_lines() {
    limited(async {
        let tmp = tempfile::tempdir().unwrap();
        let exit = r#"{"kind":"exit","time":"2026-11-29T01:00:00.000Z","worker":"w1","pid":41,"code":70,"signal":null,"last_stderr_lines":[]}"#;
        let mut bytes = format!("{exit}\n").into_bytes();
        bytes.extend_from_slice(b"\xff\xfe not a record\n");
        bytes.extend_from_slice(exit.replace("41", "42").as_bytes());
        bytes.extend_from_slice(b"\n{\"kind\":\"exit\",\"ti");
        std::fs::write(tmp.path().join("reports.jsonl"), bytes).unwrap();
        let dir = tmp.path().to_str().unwrap();
        let (code, out, err) = run_split(&["reports", "--dir", dir, "--json"]).await;
        assert_eq!(code, 0, "{err}");
        let pids: Vec<i64> = out
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["pid"].as_i64().unwrap())
            .collect();
        assert_eq!(pids, [41, 42]);
        assert!(err.contains("2 unreadable line(s)"), "{err}");
        let (code, out, err) = run_split(&["reports", "--dir", dir]).await;
        assert_eq!(code, 0, "{err}");
        assert_eq!(out.lines().count(), 4, "{out}");
        assert!(out.contains("(2 unreadable line(s) skipped"), "{out}");
    })
    .await;
}

/// `unwedge reports --dir D` with `D/reports.jsonl` a FIFO waited for a writer for ever: a
/// report file that is not a regular one (a FIFO, a link to a device) is refused, one line,
/// exit 2.
#[tokio::test]
async fn unwedge_reports_refuses_a_report_file_that_is_not_a_regular_one() {
    limited(async {
        let tmp = tempfile::tempdir().unwrap();
        let current = tmp.path().join("reports.jsonl");
        nix::unistd::mkfifo(&current, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let dir = tmp.path().to_str().unwrap();
        let (code, out, err) = tokio::time::timeout(
            Duration::from_secs(10),
            run_split(&["reports", "--dir", dir]),
        )
        .await
        .expect("unwedge reports still waits for the FIFO");
        let want = format!(
            "unwedge: error: cannot read {}: a FIFO, not a regular file",
            current.display()
        );
        assert_eq!(code, 2, "{err}");
        assert!(err.starts_with(&want), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert_eq!(out, "");
        // A rotated file linked to /dev/zero (no newline, ever) is refused too.
        std::fs::remove_file(&current).unwrap();
        std::os::unix::fs::symlink("/dev/zero", tmp.path().join("reports.1.jsonl")).unwrap();
        let (code, _, err) = run_split(&["reports", "--dir", dir, "--json"]).await;
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains("reports.1.jsonl: a device, not a regular file"),
            "{err}"
        );
    })
    .await;
}

/// A webhook that cannot be reached: the failure is logged with the webhook's origin and the
/// cause (the connection was refused), never with its path, which for Slack-style hooks is
/// the credential.
#[tokio::test]
async fn a_failing_webhook_is_logged_without_its_secret_path() {
    limited(async {
        // A port nothing listens on.
        let closed = common::free_loopback_addr();
        let url = format!("http://{closed}/services/T000/B000/SECRETTOKEN");
        let (sup, addr, _admin) = python_worker(&["--alert-webhook", &url]).await;
        let mark = sup.mark();
        let _ = http(addr, "GET", "/exit?code=3").await;
        let line = sup.wait_line(mark, &["alert webhook failed"]).await;
        assert!(line.contains(&format!("http://{closed}")), "{line}");
        assert!(
            line.to_ascii_lowercase().contains("connection refused"),
            "{line}"
        );
        assert!(!sup.log().contains("SECRETTOKEN"), "{}", sup.log());
    })
    .await;
}

/// An `--alert-exec` command that fails is logged by its first word only (`false …`): its
/// arguments may hold a token, which appears nowhere in the supervisor's log, nor in what
/// `check-config` prints of the same setting in a config file.
#[tokio::test]
async fn a_failing_alert_command_is_logged_without_its_arguments() {
    limited(async {
        let exec = "false --header 'Authorization: Bearer SECRET-EXEC-TOKEN'";
        let (sup, addr, _admin) = python_worker(&["--alert-exec", exec]).await;
        let mark = sup.mark();
        let _ = http(addr, "GET", "/exit?code=3").await;
        let line = sup.wait_line(mark, &["alert command failed"]).await;
        assert!(line.contains("command=false …"), "{line}");
        assert!(line.contains("exit status: 1"), "{line}");
        assert!(!sup.log().contains("SECRET"), "{}", sup.log());

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("unwedge.toml");
        let toml = format!("alert-exec = {exec:?}\ncommand = [{BIN:?}, \"demo-service\"]\n");
        std::fs::write(&file, toml).unwrap();
        let (code, out, err) = run_split(&["check-config", file.to_str().unwrap()]).await;
        assert_eq!(code, 0, "{err}{out}");
        assert!(out.contains("\n# alert-exec: false … (set; "), "{out}");
        assert!(
            !out.contains("SECRET") && !err.contains("SECRET"),
            "{err}{out}"
        );
    })
    .await;
}

/// A reload from 3 workers to 1: once the old generation has drained and exited, the removed
/// slots leave `/status`, `/readyz` and the per-worker metrics (they are not waiting for a
/// replacement, as a crashed slot is); so do the slots of a reload that failed.
#[tokio::test]
async fn slots_a_reload_removed_leave_the_status_and_the_metrics() {
    limited(async {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("unwedge.toml");
        let worker = format!("command = [{:?}]\n", common::fixture("worker.py"));
        let (sup, admin) = supervisor_with_config(&file, &format!("workers = 3\n{worker}")).await;
        let s = status_until(&sup, admin, "3 ready workers", |s| ready_pids(s).len() == 3).await;
        let old = ready_pids(&s);

        std::fs::write(&file, format!("workers = 1\n{worker}")).unwrap();
        let (code, out, err) = reload_wait(sup.pid, admin).await;
        assert_eq!(code, 0, "{out}{err}\n{}", sup.log());
        // The old workers exit (drained), and the supervisor sees each exit.
        for pid in &old {
            sup.wait_line(0, &[&format!(" pid {pid} "), "exit"]).await;
        }
        // Events are handled in order: once a report sent after those exits shows, the exits
        // have been taken into account.
        let addr = sup.addr().await;
        let report = serde_json::json!({
            "message": "after the reload", "location": "src/x.rs:1:2",
            "request": {"method": "GET", "path": "/", "request_id": "after-reload", "headers": {}},
        });
        let s = send_report(&sup, addr, admin, &report).await;
        let workers = s["workers"].as_array().unwrap();
        assert_eq!(workers.len(), 1, "{s}");
        assert_eq!(
            (&workers[0]["id"], &workers[0]["state"]),
            (&"w1".into(), &"ready".into()),
            "{s}"
        );
        let (code, body) = get(admin, "/readyz").await;
        assert_eq!((code, body.as_str()), (200, "1 of 1 workers ready\n"));
        let (_, metrics) = get(admin, "/metrics").await;
        assert!(
            metrics.contains(r#"unwedge_worker_restarts{worker="w1"}"#),
            "{metrics}"
        );
        assert!(
            !metrics.contains(r#"worker="w2""#) && !metrics.contains(r#"worker="w3""#),
            "{metrics}"
        );
        assert!(
            metrics.contains(r#"unwedge_workers{state="exited"} 0"#),
            "{metrics}"
        );

        // A reload to 3 workers that exit at once fails: its slots w2 and w3 never served and
        // leave with their generation.
        std::fs::write(&file, "workers = 3\ncommand = [\"/bin/false\"]\n").unwrap();
        let (code, out, err) = reload_wait(sup.pid, admin).await;
        assert_eq!(code, 1, "{out}{err}");
        let report = serde_json::json!({
            "message": "after the failed reload", "location": "src/x.rs:1:2",
            "request": {"method": "GET", "path": "/", "request_id": "after-failure", "headers": {}},
        });
        let s = send_report(&sup, addr, admin, &report).await;
        let ids: Vec<&str> = s["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["w1"], "{s}");
        // The serving w1's row does not show the failed generation's `exit 1` as its last exit
        // (that was another process, of a generation that never served).
        let w1 = &s["workers"][0];
        assert_eq!(w1["state"], "ready", "{s}");
        assert_ne!(w1["last_exit"]["code"], 1, "{s}");
    })
    .await;
}

/// A request its handler marks long on purpose (`unwedge::watchdog::long_request`, the demo's
/// `/slow?long=1`) leaves a quiet worker live past the hang limit; the same request unmarked
/// makes it Wedged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_marked_long_does_not_wedge_a_quiet_worker() {
    limited(async {
        let sup = Sup::demo_env(
            &["--workers", "1", "--admin", "off"],
            &[("UNWEDGE_HANG_LIMIT", "1s")],
        );
        sup.wait_ready(0, 1).await;
        let addr = sup.addr().await;
        let long = tokio::spawn(get(addr, "/slow?ms=4000&long=1"));
        // Twice the limit and more: live all along.
        let until = Instant::now() + Duration::from_millis(2500);
        while Instant::now() < until {
            let (code, body) = get(addr, "/livez").await;
            assert_eq!(code, 200, "{body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(long.await.unwrap().0, 200);
        assert!(!sup.log().contains("state=wedged"), "{}", sup.log());
        // Unmarked, the same wait is a hang once older than the limit: the worker says it is
        // wedged and the supervisor replaces it.
        let from = sup.mark();
        let _plain = tokio::spawn(http(addr, "GET", "/slow?ms=8000"));
        sup.wait_line(from, &["is hung", "no progress", "oldest GET /slow"])
            .await;
    })
    .await;
}

/// Notify lines that are not `KEY=value` (ignored, the rest of their message used) are counted
/// on `/metrics` as `unwedge_notify_malformed_total`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_notify_lines_are_counted_on_metrics() {
    limited(async {
        let worker = "import os, socket, time\n\
             s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
             to = os.environ['NOTIFY_SOCKET']\n\
             s.sendto(b'READY=1\\nStatus-Detail=warming done', to)\n\
             s.sendto(b'STATUS=serving\\nnot an assignment\\nnor this', to)\n\
             time.sleep(1000)\n";
        let sup = Sup::start(&[
            "run",
            "--admin",
            "127.0.0.1:0",
            "--ready",
            "notify",
            "--",
            "python3",
            "-c",
            worker,
        ]);
        let admin = admin_addr(&sup).await;
        sup.wait_ready(0, 1).await;
        let deadline = Instant::now() + LONG;
        loop {
            let (code, body) = get(admin, "/metrics").await;
            assert_eq!(code, 200, "{body}");
            if body.contains("unwedge_notify_malformed_total 3") {
                break;
            }
            assert!(Instant::now() < deadline, "{body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// An admin endpoint bound off loopback (`0.0.0.0:P` in a container) answers whoever reaches
/// it, without authentication: the start says so, once; on loopback it does not.
#[tokio::test]
async fn an_admin_endpoint_off_loopback_is_warned_about() {
    limited(async {
        for (admin, warned) in [("0.0.0.0:0", true), ("127.0.0.1:0", false)] {
            let sup = Sup::run(&["--admin", admin], &[BIN, "demo-service"]);
            sup.wait_ready(0, 1).await;
            let addr = admin_addr(&sup).await;
            // The endpoint is up; the warning, when there is one, came right after that line.
            assert_eq!(get(addr, "/livez").await.0, 200);
            let log = sup.log();
            assert_eq!(
                log.matches("is not on loopback: whoever reaches it reads panic messages")
                    .count(),
                usize::from(warned),
                "{admin}: {log}"
            );
        }
    })
    .await;
}

/// A worker that sends crash reports faster than the report directory takes them has the
/// excess dropped, and that is logged at most once a second, the drops summed (it was one
/// ERROR line per report taken: 1,500 lines in 4 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_crash_reports_are_logged_at_most_once_a_second() {
    limited(async {
        let dir = tempfile::tempdir().unwrap();
        let reports = dir.path().join("reports");
        let flood = common::notify_worker(
            "s.sendto(b'READY=1', to)\n\
             end = time.time() + 3\n\
             while time.time() < end:\n    \
                 s.sendto(b'UNWEDGE_REPORT={\"message\":\"flood\"}', to)\n\
             print('flood %s' % 'over', flush=True)\n\
             time.sleep(1000)\n",
        );
        let mut sup = Sup::run(
            &[
                "--admin",
                "off",
                "--ready",
                "notify",
                "--report-dir",
                reports.to_str().unwrap(),
            ],
            &["python3", "-c", &flood],
        );
        sup.wait_ready(0, 1).await;
        let started = Instant::now();
        sup.wait_line(0, &["flood over"]).await;
        sup.signal(Signal::SIGTERM);
        sup.wait_exit(LONG).await;
        let elapsed = started.elapsed();
        let log = sup.log();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("crash report(s) dropped"))
            .collect();
        if lines.is_empty() {
            common::skip_env("no crash report dropped: the report directory kept up");
            return;
        }
        // One a second, one when the flood began and one for the rest at the end.
        let most = elapsed.as_secs() as usize + 2;
        assert!(
            lines.len() <= most,
            "{} lines in {elapsed:?}:\n{}",
            lines.len(),
            lines.join("\n")
        );
        println!("{} drop line(s) in {elapsed:?}: {lines:?}", lines.len());
    })
    .await;
}
