//! A `serve()` future dropped before it returns (a `tokio::select!`, a `timeout`: cancelled,
//! not stopped through `shutdown_on` or a signal) leaves nothing of itself running: its
//! watchdog thread and canary task end, its `before_exit` hook is dropped unrun, readiness
//! goes back to false, its listener is closed and its connections are closed.
//!
//! Before, the watchdog thread looped for ever and the canary ticked every 20 ms, the hook
//! (and what it held) stayed queued until the process exited, and readiness stayed true:
//! 200 such futures dropped left 200 threads and every hook's memory behind.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use unwedge::Server;

/// Upper bound for each wait: generous, the machine may be loaded.
const LIMIT: Duration = Duration::from_secs(30);

/// The threads of this process named `unwedge-watchdog` (Linux keeps 15 bytes of a name).
fn watchdog_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end().starts_with("unwedge-watchdo"))
        .count()
}

/// Polls `done` every 10 ms until it holds; panics naming `what` after [`LIMIT`].
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + LIMIT;
    while !done() {
        assert!(Instant::now() < until, "{what}: not within {LIMIT:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One keep-alive `GET path` on `conn`: the response's status line and body.
async fn get_on(conn: &mut TcpStream, path: &str) -> (String, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed before the whole response");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().unwrap())
                })
                .expect("a Content-Length");
            if body.len() >= len {
                let status = head.lines().next().unwrap().to_owned();
                return (status, body.to_owned());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_serve_future_leaves_no_thread_task_hook_or_readiness_behind() {
    support::own_process!();
    assert_eq!(watchdog_threads(), 0, "a watchdog thread before serve()");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let held = Arc::new(());
    let ran = Arc::new(AtomicBool::new(false));
    let hook = {
        let (held, ran) = (held.clone(), ran.clone());
        move || {
            ran.store(true, Ordering::SeqCst);
            drop(held);
        }
    };
    let app = Router::new().route("/", get(|| async { "hello" }));
    let serve = Server::new()
        .listener(listener)
        .before_exit(hook)
        // Not what closes the connection below: without the fix it stays open.
        .idle_timeout(None)
        .exit_on_crash(false)
        .serve(app);

    // Serving and ready, on a keep-alive connection kept open across the drop.
    let client = async {
        let mut conn = TcpStream::connect(addr).await.expect("connect");
        let (status, body) = get_on(&mut conn, "/").await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert_eq!(body, "hello");
        // Readiness is said just after the accept loops start: wait for it, not for a time.
        let until = Instant::now() + LIMIT;
        loop {
            let (status, _) = get_on(&mut conn, "/readyz").await;
            if status.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(Instant::now() < until, "/readyz: {status} for {LIMIT:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Named once it runs: awaited, not assumed.
        eventually("serve()'s watchdog thread runs", || watchdog_threads() == 1).await;
        conn
    };
    let mut conn = tokio::select! {
        outcome = serve => panic!("serve() returned: {outcome:?}"),
        conn = tokio::time::timeout(LIMIT, client) => conn.expect("serving and ready"),
    };
    // The serve() future is dropped now, at the end of the select!.

    assert!(!unwedge::health().ready, "still ready after the drop");
    assert!(
        !ran.load(Ordering::SeqCst),
        "the hook ran: serve() did not exit"
    );
    assert_eq!(
        Arc::strong_count(&held),
        1,
        "the before_exit hook (and what it holds) is still queued"
    );
    // The accept loop's task is aborted: its listener closes when the runtime drops it.
    let until = Instant::now() + LIMIT;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < until,
            "still accepting {LIMIT:?} after the drop"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eventually("the watchdog thread ends", || watchdog_threads() == 0).await;
    // The connection is closed (after its keep-alive grace), not served until its client
    // leaves.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(LIMIT, conn.read_to_end(&mut rest)).await;
    assert!(
        read.is_ok(),
        "the connection is still open {LIMIT:?} after the drop"
    );
    // No task of serve()'s is left on the runtime (the canary ticked for ever).
    let metrics = tokio::runtime::Handle::current().metrics();
    eventually("serve()'s tasks end", || metrics.num_alive_tasks() == 0).await;
}

/// A wedge raised by a `serve()`'s watchdog ends with that watchdog. Before, a `serve()`
/// dropped (or stopped at its drain's deadline) while a request hung left
/// `watchdog:no-progress` in the process's health for good: Wedged, `/livez` failing and no
/// heartbeats, after the request ended and for every later `serve()` of the process. And two
/// `serve()`s at once have sources of their own: one clearing its wedge leaves the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedge_does_not_outlive_the_serve_whose_watchdog_raised_it() {
    support::own_process!();
    let hanging = |path: &'static str| {
        let app = Router::new().route(
            path,
            get(|| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                "late"
            }),
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let serve = Server::new()
            .listener(listener)
            .hang_limit(Duration::from_millis(300))
            .exit_on_crash(false)
            .serve(app);
        (addr, tokio::spawn(serve))
    };
    let hang = |addr, path: &str| {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        async move {
            let mut conn = TcpStream::connect(addr).await.unwrap();
            conn.write_all(req.as_bytes()).await.unwrap();
            conn
        }
    };
    let reason = || unwedge::health().reason.unwrap_or_default();
    let wedged = || unwedge::health().state == unwedge::HealthState::Wedged;

    // Two at once, each wedged by a request of its own that hangs. (The reason shown is the
    // second's once it has one: its source, `watchdog#2:no-progress`, sorts first.)
    let (a, serve_a) = hanging("/hang-a");
    let _conn_a = hang(a, "/hang-a").await;
    eventually("A raises its wedge", || reason().contains("GET /hang-a")).await;
    let (b, serve_b) = hanging("/hang-b");
    let _conn_b = hang(b, "/hang-b").await;
    eventually("B raises its wedge", || reason().contains("GET /hang-b")).await;
    eventually("both watchdogs run", || watchdog_threads() == 2).await;
    // A dropped: its wedge goes with its watchdog; B's stays.
    serve_a.abort();
    let _ = serve_a.await;
    eventually("A's watchdog ends", || watchdog_threads() == 1).await;
    assert!(wedged(), "B's wedge went with A's: {:?}", unwedge::health());
    assert!(reason().contains("GET /hang-b"), "{}", reason());
    // B dropped too: nothing watches any more, and nothing is wedged.
    serve_b.abort();
    let _ = serve_b.await;
    eventually("the watchdog threads end", || watchdog_threads() == 0).await;
    assert!(
        !wedged(),
        "a wedge outlived its watchdog: {:?}",
        unwedge::health()
    );
}
