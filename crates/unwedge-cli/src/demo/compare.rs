//! The comparison column: what most axum services do today. The same routes as the demo
//! service, in-process, behind `tower_http::catch_panic::CatchPanicLayer`, with a
//! `tokio::sync::Mutex` around the seed's ByteCache and a `std::sync::Mutex` around the app
//! state (`lock().unwrap()`). A panic becomes a 500 and the process keeps serving — with
//! whatever state the panic left behind.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use example_bytecache::{ByteCache, Put};
use tower_http::catch_panic::CatchPanicLayer;

#[derive(Debug, Default)]
struct AppState {
    hits: u64,
    comments: Vec<String>,
}

#[derive(Debug)]
struct Cmp {
    /// One lock around the app state, as in most services: `lock().unwrap()` everywhere.
    state: std::sync::Mutex<AppState>,
    cache: tokio::sync::Mutex<ByteCache>,
    counter: tokio::sync::Mutex<u64>,
    lock_a: Arc<tokio::sync::Mutex<()>>,
    lock_b: Arc<tokio::sync::Mutex<()>>,
}

/// Panics in this module and in the ByteCache are the demo's own: counted, not printed.
pub(crate) static QUIET_PANICS: AtomicU64 = AtomicU64::new(0);

/// Keeps the comparison service's panics (thousands of them, on purpose) off the terminal;
/// any other panic is printed as usual.
pub(crate) fn install_quiet_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let file = info.location().map(|l| l.file()).unwrap_or("");
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        let ours = file.contains("demo/compare.rs")
            || file.contains("bytecache")
            || (msg.starts_with("index out of bounds")
                && std::thread::current().name() == Some("tokio-runtime-worker"));
        if ours {
            QUIET_PANICS.fetch_add(1, Ordering::Relaxed);
            return;
        }
        default(info)
    }));
}

/// The comparison app.
pub(crate) fn app() -> Router {
    let cmp = Arc::new(Cmp {
        state: std::sync::Mutex::new(AppState::default()),
        cache: tokio::sync::Mutex::new(ByteCache::new(example_bytecache::DEFAULT_MAX_SIZE)),
        counter: tokio::sync::Mutex::new(0),
        lock_a: Arc::new(tokio::sync::Mutex::new(())),
        lock_b: Arc::new(tokio::sync::Mutex::new(())),
    });
    Router::new()
        .route("/", get(root))
        .route("/tx-panic", post(tx_panic))
        .route("/poison", post(poison))
        .route("/comments/comments", get(list_comments).post(add_comment))
        .route("/deadlock", get(deadlock))
        .route("/bytecache/cache/{key}", get(get_entry).put(put_entry))
        .route("/bytecache/stats", get(stats))
        .with_state(cmp)
        .layer(CatchPanicLayer::new())
}

/// Serves [`app`] on 127.0.0.1 port 0; returns the address.
pub(crate) async fn spawn() -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app()).await;
    });
    Ok(addr)
}

async fn root(State(cmp): State<Arc<Cmp>>) -> &'static str {
    cmp.state.lock().unwrap().hits += 1;
    "ok\n"
}

async fn tx_panic(State(cmp): State<Arc<Cmp>>) -> &'static str {
    let mut n = cmp.counter.lock().await;
    *n += 1;
    panic!("compare: a panic mid-update (nothing rolls it back)")
}

async fn poison(State(cmp): State<Arc<Cmp>>) -> &'static str {
    let mut s = cmp.state.lock().unwrap();
    s.hits += 1;
    panic!("compare: a panic while holding the std Mutex (poisoned)")
}

/// The seed's `AddComment`: indexes one past the end while holding the lock.
async fn add_comment(State(cmp): State<Arc<Cmp>>, text: String) -> &'static str {
    let mut s = cmp.state.lock().unwrap();
    let n = s.comments.len();
    // "Oops... Happens to all of us": one past the end.
    s.comments[n] = text;
    "added\n"
}

async fn list_comments(State(cmp): State<Arc<Cmp>>) -> String {
    cmp.state.lock().unwrap().comments.join("\n")
}

async fn deadlock(State(cmp): State<Arc<Cmp>>) -> &'static str {
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let (a, b) = (cmp.lock_a.clone(), cmp.lock_b.clone());
    tokio::spawn({
        let barrier = barrier.clone();
        let (a, b) = (a.clone(), b.clone());
        async move {
            let _b = b.lock().await;
            barrier.wait().await;
            let _a = a.lock().await;
        }
    });
    let _a = a.lock().await;
    barrier.wait().await;
    let _b = b.lock().await;
    "no deadlock (should not happen)\n"
}

async fn put_entry(State(cmp): State<Arc<Cmp>>, Path(key): Path<String>, body: Bytes) -> Response {
    // The guard is dropped by the unwinding panic: `curr_size` stays bumped.
    let put = cmp.cache.lock().await.put(&key, body);
    match put {
        Put::Stored => StatusCode::CREATED.into_response(),
        Put::Exists => (StatusCode::CONFLICT, "key exists\n").into_response(),
        Put::Full => (StatusCode::INSUFFICIENT_STORAGE, "cache full\n").into_response(),
    }
}

async fn get_entry(State(cmp): State<Arc<Cmp>>, Path(key): Path<String>) -> Response {
    match cmp.cache.lock().await.get(&key) {
        Some(data) => data.into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn stats(State(cmp): State<Arc<Cmp>>) -> Json<example_bytecache::Stats> {
    Json(cmp.cache.lock().await.stats())
}
