//! Hang detection seen from the supervisor: `STATUS=wedged: …`, heartbeats that stop, and
//! `/livez` failing. Each test prints the detection latency (`FIGURE …`): the time from
//! sending the request to the `STATUS=wedged` datagram, minus the configured limit.

mod support;

use std::time::{Duration, Instant};

use rustix::process::Signal;
use support::*;

fn wedged(l: &str) -> bool {
    l.starts_with("STATUS=wedged")
}

async fn start(env: &[(&str, &str)]) -> (tempfile::TempDir, Notify, Worker, std::net::SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let mut notify = Notify::bind(dir.path(), "notify.sock");
    let (listener, addr) = loopback_listener();
    let mut all = vec![
        ("NOTIFY_SOCKET", notify.path.to_str().unwrap().to_owned()),
        ("WATCHDOG_USEC", "200000".to_owned()),
    ];
    all.extend(env.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let env: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let worker = spawn_worker(dir.path(), "w", Some(&listener), &env);
    notify
        .expect("READY=1", Duration::from_secs(20), line_is("READY=1"))
        .await;
    notify
        .expect("WATCHDOG=1", Duration::from_secs(5), line_is("WATCHDOG=1"))
        .await;
    (dir, notify, worker, addr)
}

/// How long after the configured limit a `STATUS=wedged` may come: the watchdog checks every
/// few tens of milliseconds, but a loaded CI machine can delay its thread, the datagram and
/// this test's reader by seconds.
const WEDGED_SLACK: Duration = Duration::from_secs(5);

/// How long a request held on purpose (`/block`, `/slow`) lasts: longer than the limit plus
/// [`WEDGED_SLACK`] with room to spare, so the wedge is still on while the test looks at it.
const HOLD_MS: u64 = 8000;

/// A prober's timeout (a kubelet's default `timeoutSeconds`): no answer within it is a failure.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

fn no_heartbeat(msgs: &[(Instant, String)]) -> bool {
    !msgs
        .iter()
        .any(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1"))
}

#[test]
fn blocked_runtime_thread_is_wedged_heartbeats_stop_livez_fails() {
    run_test(Duration::from_secs(60), async {
        let limit = Duration::from_secs(1);
        let (_dir, mut notify, mut worker, addr) = start(&[("UNWEDGE_STALL_LIMIT", "1s")]).await;

        let sent = Instant::now();
        let block =
            tokio::spawn(async move { http(addr, "GET", &format!("/block?ms={HOLD_MS}")).await });
        let (at, status) = notify
            .expect("STATUS=wedged", limit + WEDGED_SLACK, wedged)
            .await;
        let latency = at - sent;
        // The blocked poll names the request; the canary (when it sat on the blocked thread)
        // may see the stall a tick earlier. Either is the first wedge; the request is named
        // soon after in any case.
        if !status.contains("GET /block has blocked a runtime thread") {
            assert!(status.contains("runtime stalled"), "{status}");
            notify
                .expect(
                    "STATUS=wedged naming GET /block",
                    limit + WEDGED_SLACK,
                    |l| wedged(l) && l.contains("GET /block has blocked a runtime thread"),
                )
                .await;
        }
        eprintln!(
            "FIGURE stall_detect_over_limit_ms={:.1}",
            (latency.as_secs_f64() - limit.as_secs_f64()) * 1e3
        );
        // The canary checks in every 20 ms: it may fire up to one period before the limit,
        // and a stall counts from its last check-in, which a loaded machine may have delayed
        // before the request was sent: 300 ms of slack, still far from a watchdog that fires
        // at half its limit.
        assert!(
            latency + Duration::from_millis(300) >= limit,
            "wedged before the limit: {latency:?}"
        );

        // /livez fails as a prober sees it (a kubelet: 1 s timeout, which counts as a failure):
        // 503 `wedged` when the worker's other runtime thread answers, or no answer in time when
        // the blocked thread holds up the whole runtime (it can: the other worker may sleep
        // while I/O waits for the blocked one). Never 200.
        let probe = tokio::time::timeout(PROBE_TIMEOUT, http(addr, "GET", "/livez")).await;
        match probe {
            Ok(Ok((code, body))) => {
                assert_eq!(
                    code, 503,
                    "/livez passed while a thread was blocked: {body}"
                );
                assert!(body.contains("wedged"), "{body}");
            }
            Ok(Err(e)) => panic!("/livez while blocked: {e}"),
            Err(_) => eprintln!("/livez: no answer within {PROBE_TIMEOUT:?} while blocked"),
        }
        let quiet = notify.collect_for(Duration::from_millis(600)).await;
        assert!(no_heartbeat(&quiet), "heartbeats while wedged: {quiet:?}");

        // The block ends: healthy again, heartbeats resume.
        notify
            .expect(
                "STATUS=healthy",
                Duration::from_millis(HOLD_MS) + Duration::from_secs(5),
                line_is("STATUS=healthy"),
            )
            .await;
        notify
            .expect("WATCHDOG=1", Duration::from_secs(2), line_is("WATCHDOG=1"))
            .await;
        assert_eq!(block.await.unwrap().unwrap().0, 200);
        // And /livez passes again (so a probe that got no answer above was the block's doing).
        let (code, body) =
            tokio::time::timeout(Duration::from_secs(10), http(addr, "GET", "/livez"))
                .await
                .expect("no answer to /livez within 10 s after the block")
                .expect("/livez");
        assert_eq!(code, 200, "{body}");
        worker.signal(Signal::TERM);
        assert_eq!(
            worker.wait_exit(Duration::from_secs(10)).await.code(),
            Some(0)
        );
    });
}

#[test]
fn request_stuck_on_a_lock_is_wedged_with_the_holder_named() {
    run_test(Duration::from_secs(60), async {
        let limit = Duration::from_secs(1);
        let (_dir, mut notify, _worker, addr) = start(&[
            ("UNWEDGE_LOCK_TIMEOUT", "1s"),
            ("UNWEDGE_HANG_LIMIT", "30s"),
        ])
        .await;
        let sent = Instant::now();
        let _stuck = tokio::spawn(async move { http(addr, "GET", "/stuck-lock").await });
        let (at, status) = notify
            .expect("STATUS=wedged", limit + WEDGED_SLACK, wedged)
            .await;
        assert!(status.contains("demo-stuck"), "{status}");
        assert!(
            status.contains("held by task demo-stuck-holder"),
            "{status}"
        );
        eprintln!(
            "FIGURE lock_wait_detect_over_limit_ms={:.1}",
            ((at - sent).as_secs_f64() - limit.as_secs_f64()) * 1e3
        );
        let quiet = notify.collect_for(Duration::from_millis(600)).await;
        assert!(no_heartbeat(&quiet), "heartbeats while wedged: {quiet:?}");
        let (code, body) = http(addr, "GET", "/livez").await.unwrap();
        assert_eq!(code, 503, "{body}");
    });
}

#[test]
fn requests_making_no_progress_are_wedged_then_clear() {
    run_test(Duration::from_secs(60), async {
        let limit = Duration::from_secs(1);
        let (_dir, mut notify, _worker, addr) = start(&[("UNWEDGE_HANG_LIMIT", "1s")]).await;
        let sent = Instant::now();
        let slow =
            tokio::spawn(async move { http(addr, "GET", &format!("/slow?ms={HOLD_MS}")).await });
        let (at, status) = notify
            .expect("STATUS=wedged", limit + WEDGED_SLACK, wedged)
            .await;
        assert!(status.contains("no progress"), "{status}");
        assert!(status.contains("GET /slow"), "{status}");
        eprintln!(
            "FIGURE no_progress_detect_over_limit_ms={:.1}",
            ((at - sent).as_secs_f64() - limit.as_secs_f64()) * 1e3
        );
        notify
            .expect(
                "STATUS=healthy",
                Duration::from_millis(HOLD_MS) + Duration::from_secs(5),
                line_is("STATUS=healthy"),
            )
            .await;
        assert_eq!(slow.await.unwrap().unwrap().0, 200);
    });
}

/// The seed's server2 answers a health probe while every request that needs the state hangs:
/// probes answered meanwhile are no progress of the app, or a prober (a supervisor, a
/// kubelet) would hide the hang it is there to find.
#[test]
fn health_probes_answered_meanwhile_are_no_progress() {
    run_test(Duration::from_secs(60), async {
        let limit = Duration::from_secs(1);
        let (_dir, mut notify, _worker, addr) = start(&[("UNWEDGE_HANG_LIMIT", "1s")]).await;
        let slow =
            tokio::spawn(async move { http(addr, "GET", &format!("/slow?ms={HOLD_MS}")).await });
        let answered = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let probing = tokio::spawn({
            let answered = answered.clone();
            async move {
                loop {
                    if matches!(http(addr, "GET", "/readyz").await, Ok((200, _))) {
                        answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    // Pacing, not waiting for anything: a probe every 50 ms.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        let (_, status) = notify
            .expect("STATUS=wedged", limit + WEDGED_SLACK, wedged)
            .await;
        assert!(status.contains("no progress"), "{status}");
        assert!(status.contains("GET /slow"), "{status}");
        let answered = answered.load(std::sync::atomic::Ordering::Relaxed);
        assert!(answered >= 3, "only {answered} probes answered meanwhile");
        probing.abort();
        assert_eq!(slow.await.unwrap().unwrap().0, 200);
    });
}

#[test]
fn deadlock_between_two_mutexes_is_wedged_at_once() {
    run_test(Duration::from_secs(60), async {
        let (_dir, mut notify, _worker, addr) = start(&[("UNWEDGE_HANG_LIMIT", "30s")]).await;
        let sent = Instant::now();
        let _dl = tokio::spawn(async move { http(addr, "GET", "/deadlock").await });
        let (at, status) = notify
            .expect("STATUS=wedged", Duration::from_secs(5), wedged)
            .await;
        assert!(status.contains("deadlock"), "{status}");
        eprintln!(
            "FIGURE deadlock_detect_ms={:.1}",
            (at - sent).as_secs_f64() * 1e3
        );
    });
}

#[test]
fn abort_when_wedged_exits_70() {
    run_test(Duration::from_secs(60), async {
        let (_dir, _notify, mut worker, addr) = start(&[
            ("UNWEDGE_STALL_LIMIT", "500ms"),
            ("UNWEDGE_ABORT_WHEN_WEDGED", "500ms"),
        ])
        .await;
        let sent = Instant::now();
        let _block = tokio::spawn(async move { http(addr, "GET", "/block?ms=30000").await });
        let status = worker.wait_exit(Duration::from_secs(10)).await;
        assert_eq!(status.code(), Some(70), "stderr:\n{}", worker.stderr());
        // No lower bound on the elapsed time: on a starved CI machine the canary itself can be
        // late before /block arrives, which is a real (if load-made) stall.
        let _ = sent;
        assert!(worker.stderr().contains("abort_when_wedged"));
        assert!(
            worker.stderr().contains("wedged for 500ms"),
            "{}",
            worker.stderr()
        );
    });
}

/// What `unwedge run` does to a hung worker before SIGKILL: SIGQUIT. The worker writes its
/// state (health, requests in flight, the blocking poll, the oldest request) to stderr from
/// its own thread, even with a runtime thread blocked, then dies of SIGQUIT (closing its copy
/// of the socket at once, as before the handler existed).
#[test]
fn sigquit_dumps_the_state_then_dies_of_sigquit() {
    use std::os::unix::process::ExitStatusExt;
    run_test(Duration::from_secs(60), async {
        let (_dir, mut notify, mut worker, addr) = start(&[("UNWEDGE_STALL_LIMIT", "1s")]).await;
        let _block = tokio::spawn(async move { http(addr, "GET", "/block?ms=20000").await });
        notify
            .expect("STATUS=wedged", Duration::from_secs(5), |l| {
                wedged(l) && l.contains("GET /block")
            })
            .await;
        worker.signal(Signal::QUIT);
        let status = worker.wait_exit(Duration::from_secs(10)).await;
        let stderr = worker.stderr();
        assert_eq!(
            status.signal(),
            Some(Signal::QUIT.as_raw()),
            "{status:?}\n{stderr}"
        );
        let dump: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("unwedge dump: "))
            .collect();
        let text = dump.join("\n");
        assert!(text.contains("SIGQUIT: state of pid"), "{stderr}");
        assert!(text.contains("health: wedged: "), "{text}");
        assert!(text.contains("requests in flight: 1;"), "{text}");
        assert!(
            text.contains("polling now for") && text.contains("s: GET /block"),
            "{text}"
        );
        assert!(text.contains("oldest request: GET /block for"), "{text}");
    });
}

/// A drain takes no new requests, so a busy worker turns quiet at SIGTERM: its long request in
/// flight must not read as "no progress", or a supervisor kills the worker mid-drain and cuts
/// the very request the drain is for (review: `STATUS=wedged` 2 s into the drain, then SIGQUIT).
#[test]
fn a_drain_does_not_turn_a_busy_worker_wedged() {
    run_test(Duration::from_secs(60), async {
        let (_dir, mut notify, mut worker, addr) = start(&[("UNWEDGE_HANG_LIMIT", "1s")]).await;
        // Busy: requests complete one after another until the drain refuses them.
        let busy = tokio::spawn(async move {
            let mut done = 0u32;
            while let Ok((200, _)) = http(addr, "GET", "/").await {
                done += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            done
        });
        let slow = tokio::spawn(async move { http(addr, "GET", "/slow?ms=5000").await });
        // The slow request is older than the hang limit by the end of this, but others complete.
        let before = notify.collect_for(Duration::from_millis(1500)).await;
        assert!(
            !before.iter().any(|(_, m)| m.lines().any(wedged)),
            "wedged while busy, before the drain: {before:?}"
        );
        worker.signal(Signal::TERM);
        // The slow request has ~3.5 s left; the drain finishes it, then the worker exits.
        let during = notify.collect_for(Duration::from_secs(5)).await;
        assert!(
            !during.iter().any(|(_, m)| m.lines().any(wedged)),
            "a drain turned the worker wedged: {during:?}"
        );
        let (code, _) = slow.await.unwrap().expect("the slow request is answered");
        assert_eq!(code, 200);
        assert_eq!(
            worker.wait_exit(Duration::from_secs(10)).await.code(),
            Some(0)
        );
        assert!(
            busy.await.unwrap() > 5,
            "the worker was not busy before the drain"
        );
    });
}
