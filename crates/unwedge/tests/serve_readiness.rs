//! `serve()` with an app that is not always ready (tower's `ConcurrencyLimit`, `Buffer`):
//! the instance whose `poll_ready` reserved capacity is the one that runs the request.
//!
//! In-process, over a Unix socket in a temporary directory (no port to discover).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{Notify, Semaphore};
use tower::{Layer, Service, ServiceBuilder};

/// Hard upper bound for the whole test, and for each step of it.
const LIMIT: Duration = Duration::from_secs(30);
const STEP: Duration = Duration::from_secs(10);

/// Counts `poll_ready` calls (each wakes `polled`): the test awaits "the request has asked
/// for capacity" instead of guessing with a sleep.
#[derive(Clone)]
struct CountReady<S> {
    inner: S,
    count: Arc<AtomicUsize>,
    polled: Arc<Notify>,
}

impl<S: Service<R>, R> Service<R> for CountReady<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.polled.notify_waiters();
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> S::Future {
        self.inner.call(req)
    }
}

async fn get_over(path: &Path, uri: &str) -> String {
    let mut s = UnixStream::connect(path).await.expect("connect");
    let req = format!("GET {uri} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

async fn wait_listening(path: &PathBuf) {
    for _ in 0..500 {
        if UnixStream::connect(path).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("serve() never listened on {}", path.display());
}

/// With `concurrency_limit(1)` and the slot taken, a second connection's request waits for
/// the slot; when the first request ends, the second is answered. (Before the fix it never
/// was: the slot went to the connection's own instance, reserved by a `poll_ready` nobody
/// polled again, while the request ran on a clone queued behind it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_for_a_concurrency_limit_is_answered_when_the_slot_frees() {
    // Each step awaits an event (the slow request entered, the second one asked for the slot);
    // if one never comes, the test fails here instead of hanging.
    tokio::time::timeout(LIMIT, slot_frees())
        .await
        .unwrap_or_else(|_| panic!("the test did not finish within {LIMIT:?}"));
}

async fn slot_frees() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("app.sock");
    let gate = Arc::new(Semaphore::new(0));
    let entered = Arc::new(Notify::new());
    let router = Router::new()
        .route(
            "/slow",
            get({
                let (gate, entered) = (gate.clone(), entered.clone());
                move || async move {
                    entered.notify_one();
                    gate.acquire().await.unwrap().forget();
                    "slow"
                }
            }),
        )
        .route("/fast", get(|| async { "fast" }));
    let count = Arc::new(AtomicUsize::new(0));
    let polled = Arc::new(Notify::new());
    let limited = ServiceBuilder::new().concurrency_limit(1).service(router);
    let app = tower::layer::layer_fn({
        let (count, polled) = (count.clone(), polled.clone());
        move |inner| CountReady {
            inner,
            count: count.clone(),
            polled: polled.clone(),
        }
    })
    .layer(limited);
    tokio::spawn(
        unwedge::serve::Server::new()
            .bind(unwedge::serve::ListenAddr::Unix(sock.clone()))
            .serve(app),
    );
    wait_listening(&sock).await;

    let slow = tokio::spawn({
        let sock = sock.clone();
        async move { get_over(&sock, "/slow").await }
    });
    tokio::time::timeout(STEP, entered.notified())
        .await
        .expect("the slow request never reached its handler");
    // The second request asks for the slot (and is told to wait) before the slot frees.
    let before = count.load(Ordering::SeqCst);
    let fast = tokio::spawn({
        let sock = sock.clone();
        async move { get_over(&sock, "/fast").await }
    });
    tokio::time::timeout(STEP, async {
        while count.load(Ordering::SeqCst) == before {
            let _ = tokio::time::timeout(Duration::from_millis(50), polled.notified()).await;
        }
    })
    .await
    .expect("the second request never asked for the slot");
    gate.add_permits(1);

    let slow = tokio::time::timeout(STEP, slow)
        .await
        .expect("the slow request is answered")
        .unwrap();
    assert!(slow.ends_with("slow"), "{slow}");
    let fast = tokio::time::timeout(STEP, fast)
        .await
        .expect("the waiting request is answered once the slot frees")
        .unwrap();
    assert!(fast.starts_with("HTTP/1.1 200"), "{fast}");
    assert!(fast.ends_with("fast"), "{fast}");
}
