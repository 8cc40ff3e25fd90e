//! The built-in demo and test worker for unwedge: every way a request can panic or hang, on
//! purpose, served by [`unwedge::serve()`]. The `unwedge` CLI re-executes it as
//! `unwedge demo-service`, and the supervisor's tests use it as their worker.
//!
//! | route | what it does |
//! | --- | --- |
//! | `GET /` | `ok` |
//! | `GET /slow?ms=N` | sleeps N ms (asynchronously), then answers; with `&long=1` it is marked [long on purpose](unwedge::watchdog::long_request) |
//! | `POST /panic` | panics, touching no state: recovered under `Auto` |
//! | `POST /tx-panic` | panics inside a [`Tx`] update: rolled back, recovered under `Auto` |
//! | `POST /poison` | panics while holding an [`unwedge::Mutex`]: poisoned, graceful crash under `Auto` |
//! | `GET /export` | a streamed body (rows 20 ms apart) that panics after its second row, once the head and the first rows are sent: the client sees an error, never a whole-looking answer; with `?whole=1` it ends after its third row |
//! | `GET /block?ms=N` | `std::thread::sleep` inside async: blocks a runtime thread (watchdog: stall) |
//! | `GET /stuck-lock` | waits on a `Mutex` that a task holds forever (watchdog: lock wait, names the holder) |
//! | `GET /deadlock` | A then B here, B then A in a task: a deadlock between two `Mutex`es |
//! | `GET /stats` | JSON: pid, counters, health |
//! | `/bytecache/…` | `examples/bytecache`: the seed's ByteCache on [`Tx`] (`PUT /bytecache/cache/burn` panics mid-update) |
//! | `/comments/…` | `examples/comments`: the seed's AddComment on [`unwedge::Mutex`] |
//!
//! Configuration is the environment's (see [`unwedge::serve()`]); `UNWEDGE_LOCK_TIMEOUT` sets
//! the lock wait limit (default 10 s).
//!
//! ```no_run
//! # async fn demo() -> std::process::ExitCode {
//! unwedge_demo::run().await
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

use std::collections::HashMap;
use std::process::{ExitCode, Termination};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use unwedge::{Mutex, Tx};

/// The demo's state: a transactional counter and three unwedge mutexes to misuse.
#[derive(Debug)]
struct Demo {
    counter: Tx<Counter>,
    poisonable: Mutex<u64>,
    stuck: Arc<Mutex<()>>,
    stuck_holder: OnceLock<()>,
    lock_a: Arc<Mutex<u64>>,
    lock_b: Arc<Mutex<u64>>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
struct Counter {
    requests: u64,
    /// `/slow` requests whose handler is running: tests await it instead of sleeping.
    slow_in_flight: u64,
    tx_panics_rolled_back: u64,
}

/// The demo's routes (see the [crate docs](crate)), with fresh state.
///
/// ```
/// let app: axum::Router = unwedge_demo::app();
/// # let _ = app;
/// ```
pub fn app() -> Router {
    let demo = Arc::new(Demo {
        counter: Tx::named("demo-counter", Counter::default()),
        poisonable: Mutex::named("demo-poisonable", 0),
        stuck: Arc::new(Mutex::named("demo-stuck", ())),
        stuck_holder: OnceLock::new(),
        lock_a: Arc::new(Mutex::named("demo-a", 0)),
        lock_b: Arc::new(Mutex::named("demo-b", 0)),
    });
    Router::new()
        .route("/", get(root))
        .route("/slow", get(slow))
        .route("/panic", post(panic_plain))
        .route("/tx-panic", post(tx_panic))
        .route("/poison", post(poison))
        .route("/export", get(export))
        .route("/block", get(block))
        .route("/stuck-lock", get(stuck_lock))
        .route("/deadlock", get(deadlock))
        .route("/stats", get(stats))
        .with_state(demo)
        .nest("/bytecache", example_bytecache::app())
        .nest("/comments", example_comments::app())
}

/// Serves [`app`] with [`unwedge::serve()`] and the environment's configuration; returns the
/// exit code (0 after a graceful shutdown, 2 for bad configuration; a graceful crash exits
/// the process with 70 from inside `serve`).
pub async fn run() -> ExitCode {
    if let Some(limit) = std::env::var("UNWEDGE_LOCK_TIMEOUT")
        .ok()
        .filter(|v| !v.is_empty())
    {
        match humantime_like(&limit) {
            Some(d) if d > Duration::ZERO && d <= Duration::from_secs(86_400) => {
                unwedge::sync::set_default_wait_limit(d)
            }
            _ => {
                eprintln!("error: invalid UNWEDGE_LOCK_TIMEOUT={limit:?}: expected a duration such as 10s or 500ms");
                return ExitCode::from(2);
            }
        }
    }
    unwedge::serve(app()).await.report()
}

/// `500ms`, `2s`, or bare seconds.
fn humantime_like(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Some(ms) = v.strip_suffix("ms") {
        return ms.trim().parse().ok().map(Duration::from_millis);
    }
    let secs = v.strip_suffix('s').unwrap_or(v).trim();
    secs.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

/// Logs to stderr, `RUST_LOG` or `info`.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn millis(q: &HashMap<String, String>) -> Result<u64, (StatusCode, String)> {
    match q.get("ms") {
        None => Ok(1000),
        Some(v) => v.parse::<u64>().ok().filter(|ms| *ms <= 3_600_000).ok_or((
            StatusCode::BAD_REQUEST,
            format!("ms={v:?}: expected 0..=3600000\n"),
        )),
    }
}

async fn root(State(demo): State<Arc<Demo>>) -> &'static str {
    demo.counter.update(|c| c.requests += 1);
    "ok\n"
}

async fn slow(
    State(demo): State<Arc<Demo>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<String, (StatusCode, String)> {
    let ms = millis(&q)?;
    if q.contains_key("long") {
        unwedge::watchdog::long_request();
    }
    demo.counter.update(|c| c.slow_in_flight += 1);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    demo.counter.update(|c| c.slow_in_flight -= 1);
    Ok(format!("slept {ms} ms\n"))
}

/// `GET /export`: rows streamed 20 ms apart; the stream panics after its second row
/// (`?whole=1`: three rows, then the end).
async fn export(Query(q): Query<HashMap<String, String>>) -> axum::body::Body {
    let whole = q.get("whole").is_some_and(|v| v == "1");
    let rows = futures_util::stream::unfold(1u32, move |n| async move {
        if n > 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match n {
            1 | 2 => Some((Ok::<_, std::io::Error>(format!("row {n}\n")), n + 1)),
            3 if whole => Some((Ok(format!("row {n}\n")), n + 1)),
            3 => panic!("demo: the export failed half-way"),
            _ => None,
        }
    });
    axum::body::Body::from_stream(rows)
}

async fn panic_plain() -> &'static str {
    panic!("demo: a plain panic, no state touched")
}

async fn tx_panic(State(demo): State<Arc<Demo>>) -> &'static str {
    demo.counter.update(|c| {
        c.tx_panics_rolled_back += 1;
        panic!("demo: panic inside a Tx update (rolled back)")
    })
}

async fn poison(State(demo): State<Arc<Demo>>) -> String {
    let mut guard = match demo.poisonable.lock().await {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    *guard += 1;
    panic!("demo: panic while holding mutex `demo-poisonable` (poisoned)")
}

async fn block(Query(q): Query<HashMap<String, String>>) -> Result<String, (StatusCode, String)> {
    let ms = millis(&q)?;
    // On purpose: blocking code in async holds a runtime thread.
    std::thread::sleep(Duration::from_millis(ms));
    Ok(format!("blocked a runtime thread for {ms} ms\n"))
}

async fn stuck_lock(State(demo): State<Arc<Demo>>) -> &'static str {
    if demo.stuck_holder.set(()).is_ok() {
        let (held_tx, held_rx) = tokio::sync::oneshot::channel();
        let stuck = demo.stuck.clone();
        let mut held_tx = Some(held_tx);
        drop(unwedge::spawn("demo-stuck-holder", move || {
            let stuck = stuck.clone();
            let held_tx = held_tx.take();
            async move {
                let _guard = stuck.lock().await;
                if let Some(tx) = held_tx {
                    let _ = tx.send(());
                }
                std::future::pending::<()>().await
            }
        }));
        let _ = held_rx.await;
    }
    let _guard = demo.stuck.lock().await;
    "got the stuck lock (should not happen)\n"
}

async fn deadlock(State(demo): State<Arc<Demo>>) -> &'static str {
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let (a, b) = (demo.lock_a.clone(), demo.lock_b.clone());
    drop(unwedge::spawn("demo-deadlock-b-then-a", {
        let barrier = barrier.clone();
        let (a, b) = (a.clone(), b.clone());
        move || {
            let (barrier, a, b) = (barrier.clone(), a.clone(), b.clone());
            async move {
                let _b = b.lock().await;
                barrier.wait().await;
                let _a = a.lock().await;
            }
        }
    }));
    let _a = a.lock().await;
    barrier.wait().await;
    let _b = b.lock().await;
    "no deadlock (should not happen)\n"
}

async fn stats(State(demo): State<Arc<Demo>>) -> Json<serde_json::Value> {
    let h = unwedge::health();
    Json(serde_json::json!({
        "pid": std::process::id(),
        "state": *demo.counter.read(),
        "health": h.state,
        "reason": h.reason,
        "panics_total": h.panics_total,
    }))
}
