//! PanicLayer over a real socket: catching, answering, reporting, deciding.
//!
//! Each test runs in its own process under `cargo nextest run`, so the process-wide health
//! registry and crash signal start clean in each; the tests that rely on that, or change the
//! panic hook or the `tracing` subscriber, check it first (`support::own_process!`). The apps
//! are axum routers that mount `unwedge::probe::router`: the file needs the (default) `axum`
//! feature.
#![cfg(feature = "axum")]

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use unwedge::panic::{Action, ReportSink};
use unwedge::{PanicLayer, PanicReport, Policy, Tx};

const LIMIT: Duration = Duration::from_secs(30);

/// Runs `f` with a hard timeout.
async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test took longer than its hard limit")
}

/// Serves `app` on 127.0.0.1:0; the listener is bound (accepting) when this returns.
async fn start(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: String,
}

async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let res = client.request(req).await.expect("request failed");
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("body failed").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

/// `keep` got one report: of the panic `message` raised at line `line` of this file, which
/// poisoned `bytecache` and was decided a crash.
fn assert_sole_crash_report(keep: &Keep, message: &str, line: u32) {
    let reports = keep.all();
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert_eq!(r.message, message);
    assert_eq!(r.poisoned, ["bytecache"]);
    let at = r.location.as_deref().unwrap_or("");
    let line = format!("panic_layer.rs:{line}:");
    assert!(at.contains(&line), "{at}, not {line}");
    assert_eq!(r.decision.as_ref().unwrap().action, Action::Crash);
}

/// A sink that keeps every report.
#[derive(Default, Clone)]
struct Keep(Arc<StdMutex<Vec<PanicReport>>>);

impl ReportSink for Keep {
    fn report(&self, report: &PanicReport) {
        self.0.lock().unwrap().push(report.clone());
    }
}

impl Keep {
    fn all(&self) -> Vec<PanicReport> {
        self.0.lock().unwrap().clone()
    }
}

fn assert_problem(a: &Answer) -> serde_json::Value {
    assert_eq!(
        a.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "body: {}",
        a.body
    );
    assert_eq!(
        a.headers["content-type"], "application/problem+json",
        "headers: {:?}",
        a.headers
    );
    let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(v["type"], "about:blank");
    assert_eq!(v["title"], "Internal Server Error");
    assert_eq!(v["status"], 500);
    assert_eq!(
        v["request_id"].as_str().unwrap(),
        a.headers["x-request-id"].to_str().unwrap()
    );
    v
}

// ---------------------------------------------------------------------------------------
// The seed's comments scenario, with the state on a Tx.

fn comments_app(comments: Arc<Tx<Vec<String>>>, layer: PanicLayer) -> Router {
    Router::new()
        .route(
            "/comments",
            get(|State(c): State<Arc<Tx<Vec<String>>>>| async move { c.read().join(",") }).post(
                |State(c): State<Arc<Tx<Vec<String>>>>, text: String| async move {
                    c.update(|list| {
                        if list.last() != Some(&text) {
                            list.push(text);
                        }
                        list.len().to_string()
                    })
                },
            ),
        )
        .route(
            "/comments/buggy",
            post(
                |State(c): State<Arc<Tx<Vec<String>>>>, text: String| async move {
                    c.update(|list| {
                        list.push(text); // half of the change is made…
                        let last = &list[list.len()]; // Oops... Happens to all of us.
                        last.clone()
                    })
                },
            ),
        )
        .with_state(comments)
        .layer(layer)
}

#[tokio::test]
async fn comments_out_of_range_panic_answers_500_and_rolls_back() {
    support::own_process!();
    within(async {
        let comments = Arc::new(Tx::named("comments", vec!["first".to_owned()]));
        let keep = Keep::default();
        let app = comments_app(
            comments.clone(),
            PanicLayer::new().sink(Arc::new(keep.clone())),
        );
        let addr = start(app).await;

        let a = send(addr, "POST", "/comments", &[], "second").await;
        assert_eq!(a.status, 200);
        let before = comments.read();

        let a = send(addr, "POST", "/comments/buggy", &[], "third").await;
        let problem = assert_problem(&a);
        assert!(problem.get("detail").is_none(), "{}", a.body);
        assert!(!a.body.contains("index out of bounds"), "{}", a.body);
        assert!(!a.body.contains("third"), "{}", a.body);

        // The state is exactly the pre-panic state: the half-made push was rolled back.
        assert_eq!(*comments.read(), *before);
        assert_eq!(*comments.read(), ["first", "second"]);
        assert_eq!(comments.rollbacks(), 1);

        // The next request works, and the service is still up and healthy.
        let a = send(addr, "POST", "/comments", &[], "fourth").await;
        assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "3"));
        let a = send(addr, "GET", "/comments", &[], "").await;
        assert_eq!(a.body, "first,second,fourth");
        assert_eq!(unwedge::health().state, unwedge::HealthState::Healthy);
        assert_eq!(unwedge::health::crash_reason(), None);

        let reports = keep.all();
        assert_eq!(reports.len(), 1);
        let r = &reports[0];
        assert!(r.message.contains("index out of bounds"), "{}", r.message);
        assert_eq!(r.rolled_back, ["comments"]);
        assert!(r.poisoned.is_empty());
        let d = r.decision.as_ref().unwrap();
        assert_eq!(d.action, Action::Recover);
        assert_eq!(d.reason, "state rolled back: `comments`");
        let req = r.request.as_ref().unwrap();
        assert_eq!(
            (req.method.as_str(), req.path.as_str()),
            ("POST", "/comments/buggy")
        );
        assert_eq!(unwedge::health().panics_by_route["POST /comments/buggy"], 1);
    })
    .await
}

#[tokio::test]
async fn expose_details_puts_the_message_in_detail() {
    within(async {
        let comments = Arc::new(Tx::named("comments", vec!["a".to_owned()]));
        let addr = start(comments_app(
            comments,
            PanicLayer::new().expose_details(true),
        ))
        .await;
        let a = send(addr, "POST", "/comments/buggy", &[], "x").await;
        let problem = assert_problem(&a);
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains("index out of bounds"), "{detail}");
    })
    .await
}

// ---------------------------------------------------------------------------------------
// The ByteCache "burn" scenario, on an unwedge Mutex.

#[derive(Default)]
struct ByteCache {
    max_size: usize,
    cache: HashMap<String, Bytes>,
    curr_size: usize,
}

type Cache = Arc<unwedge::Mutex<ByteCache>>;

async fn cache_put(State(c): State<Cache>, Path(key): Path<String>, data: Bytes) -> StatusCode {
    let mut cache = match c.lock().await {
        Ok(guard) => guard,
        Err(_poisoned) => return StatusCode::CONFLICT,
    };
    if cache.cache.contains_key(&key) || cache.curr_size + data.len() > cache.max_size {
        return StatusCode::FORBIDDEN;
    }
    cache.curr_size += data.len();
    if key == "burn" {
        panic!("some programmers just want to watch the world burn");
    }
    cache.cache.insert(key, data);
    StatusCode::CREATED
}

fn cache_app(cache: Cache, layer: PanicLayer) -> Router {
    Router::new()
        .route("/cache/{key}", put(cache_put))
        .route("/hello", get(|| async { "hello" }))
        .with_state(cache)
        .layer(layer)
        .merge(unwedge::probe::router())
}

fn new_cache() -> Cache {
    Arc::new(unwedge::Mutex::named(
        "bytecache",
        ByteCache {
            max_size: 10,
            ..ByteCache::default()
        },
    ))
}

/// A section that poisons `m` half-way, its panic caught by the handler itself.
async fn poison_and_catch(m: &unwedge::Mutex<u32>) {
    use futures_util::FutureExt;
    let section = async {
        let mut g = m.lock().await.unwrap();
        *g += 1;
        if *g > 0 {
            panic!("half-way through");
        }
    };
    let caught = std::panic::AssertUnwindSafe(section).catch_unwind().await;
    assert!(caught.is_err());
}

/// The poison of `m`, by a panic the app caught itself, was decided: a crash asked for.
async fn assert_caught_poison_decided(m: &unwedge::Mutex<u32>, name: &str) {
    let reason = unwedge::health::crash_requested().await;
    assert_eq!(
        reason,
        format!("mutex `{name}` poisoned by a panic the app caught itself")
    );
    assert!(m.is_poisoned());
    assert_eq!(unwedge::health().state, unwedge::HealthState::Tainted);
}

/// tower-http's `CatchPanicLayer` inside the `PanicLayer` (or a handler's own `catch_unwind`)
/// catches a panic that poisoned an `unwedge::Mutex`: the PanicLayer sees no panic, yet the
/// mutex is poisoned, so the policy decides it as it would have decided the panic (under Auto,
/// a crash) instead of leaving every later `lock()` an error on a process that looks healthy.
#[tokio::test]
async fn a_mutex_poisoned_by_a_panic_the_app_caught_itself_is_decided_by_the_policy() {
    support::own_process!();
    within(async {
        let m = Arc::new(unwedge::Mutex::named("inner", 0u32));
        let app = Router::new()
            .route(
                "/inner",
                post(|State(m): State<Arc<unwedge::Mutex<u32>>>| async move {
                    let mut g = m.lock().await.unwrap();
                    *g += 1;
                    if *g > 0 {
                        panic!("half-way through");
                    }
                    "unreachable"
                }),
            )
            .with_state(m.clone())
            .layer(tower_http::catch_panic::CatchPanicLayer::new())
            .layer(PanicLayer::new());
        let addr = start(app).await;
        // CatchPanicLayer answered it.
        assert_eq!(send(addr, "POST", "/inner", &[], "").await.status, 500);
        assert_caught_poison_decided(&m, "inner").await;
    })
    .await
}

/// The same, but the handler repairs the mutex itself right after catching the panic
/// (`into_inner`, fix, `clear_poison`) before it answers: nothing is left to decide, and no
/// crash is requested.
#[tokio::test]
async fn a_mutex_the_app_repaired_after_catching_its_panic_is_not_decided() {
    support::own_process!();
    within(async {
        let m = Arc::new(unwedge::Mutex::named("repaired", 0u32));
        let app = Router::new()
            .route(
                "/inner",
                post(|State(m): State<Arc<unwedge::Mutex<u32>>>| async move {
                    poison_and_catch(&m).await;
                    let mut g = m.lock().await.expect_err("poisoned").into_inner();
                    *g = 0; // the invariant back
                    m.clear_poison();
                    drop(g);
                    "repaired"
                }),
            )
            .with_state(m.clone())
            .layer(PanicLayer::new());
        let addr = start(app).await;
        let res = send(addr, "POST", "/inner", &[], "").await;
        assert_eq!(res.status, 200);
        assert!(!m.is_poisoned());
        assert_eq!(unwedge::health::crash_reason(), None);
        assert_eq!(unwedge::health().state, unwedge::HealthState::Healthy);
    })
    .await
}

/// A handler that catches a panic poisoning a mutex, then waits (an `.await` that pends: a
/// log write, another lock) before it repairs the mutex: the repair comes before the request
/// ends, so nothing is left to decide. A mutex another handler leaves poisoned after such a
/// wait is decided when its request ends, by the policy (under Auto, a crash).
#[tokio::test]
async fn a_caught_poison_is_decided_when_the_request_ends_not_when_it_waits() {
    support::own_process!();
    within(async {
        type Locks = (Arc<unwedge::Mutex<u32>>, Arc<unwedge::Mutex<u32>>);
        /// Then waits: the request yields to the runtime before going on.
        async fn poison_catch_and_wait(m: &unwedge::Mutex<u32>) {
            poison_and_catch(m).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let repaired = Arc::new(unwedge::Mutex::named("repaired-later", 0u32));
        let left = Arc::new(unwedge::Mutex::named("left-poisoned", 0u32));
        let app = Router::new()
            .route(
                "/repair",
                post(|State((m, _)): State<Locks>| async move {
                    poison_catch_and_wait(&m).await;
                    let mut g = m.lock().await.expect_err("poisoned").into_inner();
                    *g = 0; // the invariant back
                    m.clear_poison();
                    drop(g);
                    "repaired"
                }),
            )
            .route(
                "/leave",
                post(|State((_, m)): State<Locks>| async move {
                    poison_catch_and_wait(&m).await;
                    "left"
                }),
            )
            .with_state((repaired.clone(), left.clone()))
            .layer(PanicLayer::new());
        let addr = start(app).await;

        let res = send(addr, "POST", "/repair", &[], "").await;
        assert_eq!(res.status, 200, "{}", res.body);
        assert!(!repaired.is_poisoned());
        assert_eq!(unwedge::health::crash_reason(), None);
        assert_eq!(unwedge::health().state, unwedge::HealthState::Healthy);

        let res = send(addr, "POST", "/leave", &[], "").await;
        assert_eq!(res.status, 200, "{}", res.body);
        assert_caught_poison_decided(&left, "left-poisoned").await;
    })
    .await
}

/// Serves `GET /hang`, whose handler poisons the mutex `name` and catches the panic, then waits
/// for ever, and `GET /other`; sends `GET /hang` and returns once the handler waits: the
/// server's address, the mutex, and the connection `/hang` waits on.
async fn start_caught_then_waiting(
    name: &str,
) -> (SocketAddr, Arc<unwedge::Mutex<u32>>, tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let m = Arc::new(unwedge::Mutex::named(name, 0u32));
    let entered = Arc::new(tokio::sync::Notify::new());
    let app = Router::new()
        .route(
            "/hang",
            get(
                |State((m, entered)): State<(
                    Arc<unwedge::Mutex<u32>>,
                    Arc<tokio::sync::Notify>,
                )>| async move {
                    poison_and_catch(&m).await;
                    entered.notify_one();
                    std::future::pending::<()>().await;
                },
            ),
        )
        .route("/other", get(|| async { "other" }))
        .with_state((m.clone(), entered.clone()))
        .layer(PanicLayer::new());
    let addr = start(app).await;
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    entered.notified().await;
    (addr, m, client)
}

/// A request whose handler caught a panic that poisoned a mutex and then waits for ever is
/// cancelled by its client: the poison it left is decided when its future is dropped.
#[tokio::test]
async fn a_caught_poison_of_a_request_cancelled_while_it_waits_is_decided() {
    support::own_process!();
    within(async {
        let (_, m, client) = start_caught_then_waiting("cancelled-holder").await;
        drop(client);
        assert_caught_poison_decided(&m, "cancelled-holder").await;
    })
    .await
}

/// A request that caught a panic poisoning a mutex and goes on for ever (a long poll, a
/// stream) does not keep the poison undecided for its life: past the grace given for a
/// repair, the next poll of any request decides it while the long one still runs.
#[tokio::test]
async fn a_caught_poison_of_a_request_that_goes_on_is_decided_after_the_grace() {
    support::own_process!();
    within(async {
        let (addr, m, mut long) = start_caught_then_waiting("long-poll").await;
        let caught = Instant::now();
        // Other requests go on being served; one of them, past the grace, decides.
        while unwedge::health::crash_reason().is_none() {
            assert_eq!(send(addr, "GET", "/other", &[], "").await.status, 200);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            caught.elapsed() >= Duration::from_millis(900),
            "decided {:?} after the catch, before the grace for a repair",
            caught.elapsed()
        );
        assert_caught_poison_decided(&m, "long-poll").await;
        // The long request was not ended for it.
        let mut byte = [0u8; 1];
        use tokio::io::AsyncReadExt;
        assert!(
            tokio::time::timeout(Duration::from_millis(100), long.read(&mut byte))
                .await
                .is_err(),
            "the long request was answered"
        );
    })
    .await
}

/// The grace for a repair counts from each poison: a request that repaired a first one and
/// poisons the mutex again later gets the whole grace for its second repair, however old the
/// first poison is, while other requests are served meanwhile.
#[tokio::test]
async fn each_caught_poison_gets_its_own_grace() {
    support::own_process!();
    within(async {
        let m = Arc::new(unwedge::Mutex::named("poisoned-twice", 0u32));
        async fn repair(m: &unwedge::Mutex<u32>) {
            let mut g = m.lock().await.expect_err("poisoned").into_inner();
            *g = 0;
            m.clear_poison();
        }
        let app = Router::new()
            .route(
                "/twice",
                post(|State(m): State<Arc<unwedge::Mutex<u32>>>| async move {
                    poison_and_catch(&m).await;
                    repair(&m).await;
                    tokio::time::sleep(Duration::from_millis(700)).await;
                    // 700 ms after the first poison: the second waits its own grace.
                    poison_and_catch(&m).await;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    repair(&m).await;
                    "repaired twice"
                }),
            )
            .route("/other", get(|| async { "other" }))
            .with_state(m.clone())
            .layer(PanicLayer::new());
        let addr = start(app).await;
        let twice = tokio::spawn(async move { send(addr, "POST", "/twice", &[], "").await });
        // Other requests polled all along: each looks for poisons past their grace.
        while !twice.is_finished() {
            assert_eq!(send(addr, "GET", "/other", &[], "").await.status, 200);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let res = twice.await.unwrap();
        assert_eq!(res.status, 200, "{}", res.body);
        assert_eq!(unwedge::health::crash_reason(), None);
        assert!(!m.is_poisoned());
    })
    .await
}

/// A response body whose stream catches a panic that poisoned a mutex (its own
/// `catch_unwind`, in a cleanup run when the body is dropped): no poll of anything follows on
/// that thread, yet the poison is decided when the response ends.
#[tokio::test]
async fn a_caught_poison_while_the_body_streams_is_decided_when_the_response_ends() {
    support::own_process!();
    within(async {
        use futures_util::StreamExt;
        use std::panic::AssertUnwindSafe;
        /// Cleans up when the body is dropped; the cleanup panics half-way and catches it.
        struct Cleanup(Arc<unwedge::Mutex<u32>>);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let caught = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    let _g = self.0.try_lock().unwrap();
                    panic!("half-way through the cleanup");
                }));
                assert!(caught.is_err());
            }
        }
        let m = Arc::new(unwedge::Mutex::named("streamed", 0u32));
        let app = Router::new()
            .route(
                "/stream",
                get(|State(m): State<Arc<unwedge::Mutex<u32>>>| async move {
                    let cleanup = Cleanup(m);
                    let chunks = futures_util::stream::iter(["one ", "two"]).map(move |chunk| {
                        let _ = &cleanup;
                        Ok::<_, Infallible>(chunk)
                    });
                    Body::from_stream(chunks)
                }),
            )
            .with_state(m.clone())
            .layer(PanicLayer::new());
        let addr = start(app).await;
        let res = send(addr, "GET", "/stream", &[], "").await;
        assert_eq!(res.status, 200, "{}", res.body);
        assert_eq!(res.body, "one two");
        assert_caught_poison_decided(&m, "streamed").await;
    })
    .await
}

/// A `Mutex` remembers its holder (for reports of long waits and deadlocks), but not once the
/// holder's request has ended: the request's id, a client's header shared with the server's
/// read buffer (hyper's is the whole buffer of the connection), goes with the request.
#[tokio::test]
async fn a_mutex_does_not_keep_the_request_that_last_held_it() {
    use tower::ServiceExt;
    /// The bytes of the client's request id; `alive` counts who still holds them.
    struct Buffer {
        _alive: Arc<()>,
        bytes: Vec<u8>,
    }
    impl AsRef<[u8]> for Buffer {
        fn as_ref(&self) -> &[u8] {
            &self.bytes
        }
    }
    let alive = Arc::new(());
    let id = http::HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(Buffer {
        _alive: alive.clone(),
        bytes: b"req-from-the-proxy".to_vec(),
    }))
    .unwrap();
    let m = Arc::new(unwedge::Mutex::named("last-holder", 0u32));
    let app = Router::new()
        .route(
            "/",
            get(|State(m): State<Arc<unwedge::Mutex<u32>>>| async move {
                *m.lock().await.unwrap() += 1;
                "counted"
            }),
        )
        .with_state(m.clone())
        .layer(PanicLayer::new());
    let req = http::Request::get("/")
        .header("x-request-id", id)
        .body(Body::empty())
        .unwrap();
    let res = within(app.oneshot(req)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    drop(res);
    // Before anything else locks the mutex (the next holder would replace the last one).
    assert_eq!(
        Arc::strong_count(&alive),
        1,
        "the ended request's id (and the buffer it shares) is still held"
    );
    assert_eq!(*m.lock().await.unwrap(), 1);
}

#[tokio::test]
async fn bytecache_burn_poisons_the_mutex_and_auto_requests_a_crash() {
    support::own_process!();
    within(async {
        let keep = Keep::default();
        let addr = start(cache_app(
            new_cache(),
            PanicLayer::new().sink(Arc::new(keep.clone())),
        ))
        .await;
        assert_eq!(send(addr, "GET", "/livez", &[], "").await.status, 200);
        assert_eq!(send(addr, "PUT", "/cache/a", &[], "12").await.status, 201);

        let a = send(addr, "PUT", "/cache/burn", &[], "123").await;
        assert_problem(&a);
        assert!(!a.body.contains("burn"), "{}", a.body);

        let reason = unwedge::health::crash_requested().await;
        assert!(reason.contains("`bytecache` poisoned"), "{reason}");
        assert_eq!(unwedge::health().state, unwedge::HealthState::Tainted);

        let live = send(addr, "GET", "/livez", &[], "").await;
        assert_eq!(live.status, 503, "{}", live.body);
        assert!(live.body.contains("tainted"), "{}", live.body);
        assert!(live.body.contains("bytecache"), "{}", live.body);

        // Counted by axum's matched route, not by the raw path.
        assert_eq!(unwedge::health().panics_by_route["PUT /cache/{key}"], 1);
        assert!(reason.starts_with("panic in PUT /cache/{key}"), "{reason}");
        let r = &keep.all()[0];
        assert_eq!(r.poisoned, ["bytecache"]);
        assert_eq!(r.request.as_ref().unwrap().path, "/cache/burn");
        // The report carries the template too: the supervisor counts panics by it.
        assert_eq!(
            r.request.as_ref().unwrap().route.as_deref(),
            Some("/cache/{key}")
        );
        assert_eq!(r.decision.as_ref().unwrap().action, Action::Crash);
    })
    .await
}

#[tokio::test]
async fn bytecache_burn_under_recover_keeps_serving_and_lock_reports_poison() {
    support::own_process!();
    within(async {
        let cache = new_cache();
        let addr = start(cache_app(
            cache.clone(),
            PanicLayer::with_policy(Policy::Recover),
        ))
        .await;
        let a = send(addr, "PUT", "/cache/burn", &[], "123").await;
        assert_problem(&a);

        // Still serving…
        assert_eq!(send(addr, "GET", "/hello", &[], "").await.body, "hello");
        // …and the next lock() says the data may be half-updated instead of trusting it.
        assert_eq!(send(addr, "PUT", "/cache/b", &[], "1").await.status, 409);
        assert!(cache.is_poisoned());
        let err = cache
            .lock()
            .await
            .err()
            .expect("lock() must report the poison");
        assert!(err.to_string().contains("bytecache"), "{err}");
        // The burn left curr_size counted with no entry: exactly what the poison warns of.
        assert_eq!(err.get_ref().curr_size, 3);
        assert!(err.get_ref().cache.is_empty());
        assert_eq!(unwedge::health::crash_reason(), None);
    })
    .await
}

type Ledger = Arc<unwedge::Mutex<[i64; 2]>>;

/// A `commit_or_poison` section left by cancellation (the client disconnected mid-section):
/// the app that runs it with `with_policy(policy)`; the section tells `entered` once it
/// wrote, then waits for ever. Returns the mutex, once poisoned.
async fn cancelled_section_app(layer: PanicLayer) -> Ledger {
    let ledger = Arc::new(unwedge::Mutex::named("ledger", [100i64, 0]));
    let entered = Arc::new(tokio::sync::Notify::new());
    let app = Router::new()
        .route(
            "/transfer",
            post(
                |State((l, entered)): State<(Ledger, Arc<tokio::sync::Notify>)>| async move {
                    let mut section = l.lock().await.unwrap().commit_or_poison();
                    section[0] -= 10;
                    entered.notify_one();
                    std::future::pending::<()>().await;
                    section[1] += 10;
                    drop(section.commit());
                },
            ),
        )
        .with_state((ledger.clone(), entered.clone()))
        .layer(layer);
    let addr = start(app).await;
    // A client that sends the request and goes away once the section has begun.
    use tokio::io::AsyncWriteExt;
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"POST /transfer HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    entered.notified().await;
    drop(client);
    while !ledger.is_poisoned() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    ledger
}

/// The section's poison is decided by the layer's own policy, as a panic in that request
/// would be: `Recover` keeps the process serving, the mutex poisoned for repair.
#[tokio::test]
async fn a_section_cancelled_under_a_recover_layer_leaves_the_process_serving() {
    support::own_process!();
    within(async {
        let ledger = cancelled_section_app(PanicLayer::with_policy(Policy::Recover)).await;
        let Err(err) = ledger.lock().await else {
            panic!("the section's mutex is not poisoned")
        };
        assert_eq!(**err.get_ref(), [90, 0]);
        assert_eq!(unwedge::health::crash_reason(), None);
        assert_eq!(unwedge::health().state, unwedge::HealthState::Healthy);
    })
    .await
}

/// With `PanicLayer::new()` (no policy given) the process-wide policy decides: `Auto`'s
/// graceful crash for a poisoned mutex.
#[tokio::test]
async fn a_section_cancelled_under_a_default_layer_follows_the_process_policy() {
    support::own_process!();
    within(async {
        let ledger = cancelled_section_app(PanicLayer::new()).await;
        assert!(ledger.is_poisoned());
        let reason = unwedge::health::crash_requested().await;
        assert!(reason.contains("`ledger` poisoned"), "{reason}");
    })
    .await
}

/// A cancelled request whose future's `Drop` panics while it holds a mutex: that panic is
/// the request's, reported (message, poisoned mutex) and decided by the layer's policy:
/// `Auto` crashes for the poisoned mutex. Nothing is lost for want of a response to answer.
#[tokio::test]
async fn a_panic_in_the_drop_of_a_cancelled_request_is_reported_and_decided() {
    support::own_process!();
    struct Fails;
    impl Drop for Fails {
        fn drop(&mut self) {
            panic!("cleanup of a cancelled request failed");
        }
    }
    within(async {
        let keep = Keep::default();
        let m = Arc::new(unwedge::Mutex::named("drop-held", 0u32));
        let entered = Arc::new(tokio::sync::Notify::new());
        let app = Router::new()
            .route(
                "/hold",
                get(
                    |State((m, entered)): State<(
                        Arc<unwedge::Mutex<u32>>,
                        Arc<tokio::sync::Notify>,
                    )>| async move {
                        let mut guard = m.lock().await.unwrap();
                        // Dropped first (declared last): panics while the guard is held.
                        let _fails = Fails;
                        *guard += 1;
                        entered.notify_one();
                        std::future::pending::<()>().await;
                    },
                ),
            )
            .with_state((m.clone(), entered.clone()))
            .layer(PanicLayer::new().sink(Arc::new(keep.clone())));
        let addr = start(app).await;
        use tokio::io::AsyncWriteExt;
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        entered.notified().await;
        drop(client);
        let reason = unwedge::health::crash_requested().await;
        assert!(reason.contains("`drop-held` poisoned"), "{reason}");
        assert!(m.is_poisoned());
        let reports = keep.all();
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert_eq!(reports[0].message, "cleanup of a cancelled request failed");
        assert_eq!(reports[0].poisoned, ["drop-held"]);
        assert_eq!(reports[0].request.as_ref().unwrap().path, "/hold");
    })
    .await
}

// ---------------------------------------------------------------------------------------
// The panic budget.

#[tokio::test]
async fn six_panics_in_ten_seconds_under_auto_request_a_crash() {
    support::own_process!();
    within(async {
        // Untracked state: a std lock that unwedge cannot see.
        let hits = Arc::new(StdMutex::new(0u64));
        let app = Router::new()
            .route(
                "/hit",
                post(|State(h): State<Arc<StdMutex<u64>>>| async move {
                    let mut n = h.lock().unwrap_or_else(|p| p.into_inner());
                    *n += 1;
                    if *n > 0 {
                        panic!("hit {n}");
                    }
                    "unreachable"
                }),
            )
            .with_state(hits)
            .layer(PanicLayer::new());
        let addr = start(app).await;
        for i in 1..=5 {
            assert_problem(&send(addr, "POST", "/hit", &[], "").await);
            assert_eq!(unwedge::health::crash_reason(), None, "after panic {i}");
        }
        assert_problem(&send(addr, "POST", "/hit", &[], "").await);
        let reason = unwedge::health::crash_requested().await;
        assert!(reason.contains("panic budget spent"), "{reason}");
        assert_eq!(unwedge::health().panics_total, 6);
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Where the panic happens: call, future after an await, body.

#[tokio::test]
async fn panic_after_an_await_is_caught_like_one_in_call() {
    support::own_process!();
    within(async {
        let keep = Keep::default();
        let app = Router::new()
            .route(
                "/late",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    tokio::task::yield_now().await;
                    if true {
                        panic!("after the await");
                    }
                    "unreachable"
                }),
            )
            .layer(PanicLayer::new().sink(Arc::new(keep.clone())));
        let addr = start(app).await;
        assert_problem(&send(addr, "GET", "/late", &[], "").await);
        let r = &keep.all()[0];
        assert_eq!(r.message, "after the await");
        assert!(r.location.as_deref().unwrap().contains("panic_layer.rs"));
        assert_eq!(
            r.decision.as_ref().unwrap().reason,
            "no unwedge state rolled back or poisoned"
        );
    })
    .await
}

/// A hyper 1 server (no axum) whose service panics in `call`, before returning its future.
#[tokio::test]
async fn panic_in_call_is_caught_with_a_hyper_server() {
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;
    use tower::Layer;

    within(async {
        let keep = Keep::default();
        let layer = PanicLayer::new().sink(Arc::new(keep.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let svc = layer.layer(tower::service_fn(
                    |req: http::Request<hyper::body::Incoming>| {
                        if req.uri().path() == "/boom" {
                            panic!("in call");
                        }
                        async {
                            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from("ok"))))
                        }
                    },
                ));
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc)),
                );
            }
        });
        let a = send(addr, "GET", "/boom", &[], "").await;
        assert_problem(&a);
        assert_eq!(keep.all()[0].message, "in call");
        let a = send(addr, "GET", "/fine", &[("x-request-id", "hyper-1")], "").await;
        assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "ok"));
        // Successful responses pass through untouched by default.
        assert!(!a.headers.contains_key("x-request-id"), "{:?}", a.headers);
    })
    .await
}

/// A guard the response body owns panics when the body is dropped (after its last chunk was
/// sent, or when the client goes away): reported like a panic while it is polled, and the
/// server goes on.
#[tokio::test]
async fn a_panic_while_a_response_body_is_dropped_is_reported() {
    struct PanicsOnDrop;
    impl Drop for PanicsOnDrop {
        fn drop(&mut self) {
            panic!("body guard dropped");
        }
    }
    within(async {
        let keep = Keep::default();
        let app = Router::new()
            .route(
                "/guarded",
                get(|| async {
                    let guard = PanicsOnDrop;
                    let chunks = futures_util::stream::iter(0..2).map(move |i| {
                        let _owned = &guard;
                        Ok::<_, Infallible>(Bytes::from(format!("chunk {i}\n")))
                    });
                    Body::from_stream(chunks)
                }),
            )
            .route("/hello", get(|| async { "hello" }))
            .layer(PanicLayer::with_policy(unwedge::Policy::Recover).sink(Arc::new(keep.clone())));
        let addr = start(app).await;
        let a = send(addr, "GET", "/guarded", &[("x-request-id", "drop-1")], "").await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.body, "chunk 0\nchunk 1\n");
        let deadline = Instant::now() + Duration::from_secs(10);
        while keep.all().is_empty() {
            assert!(
                Instant::now() < deadline,
                "the panic in the body's drop was not reported"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let reports = keep.all();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].message, "body guard dropped");
        let request = reports[0].request.as_ref().unwrap();
        assert_eq!(
            (request.path.as_str(), request.request_id.as_str()),
            ("/guarded", "drop-1")
        );
        assert_eq!(send(addr, "GET", "/hello", &[], "").await.body, "hello");
    })
    .await
}

#[tokio::test]
async fn panic_inside_a_streaming_body_is_caught_and_reported() {
    within(async {
        let keep = Keep::default();
        let app = Router::new()
            .route(
                "/stream",
                get(|| async {
                    // The pause lets hyper send the head and the first chunk before the panic.
                    let chunks = futures_util::stream::iter(0..3).then(|i| async move {
                        if i > 0 {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        if i == 2 {
                            panic!("in the body");
                        }
                        Ok::<_, Infallible>(Bytes::from(format!("chunk {i}\n")))
                    });
                    Body::from_stream(chunks)
                }),
            )
            .route("/hello", get(|| async { "hello" }))
            .layer(PanicLayer::new().sink(Arc::new(keep.clone())));
        let addr = start(app).await;

        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let res = client
            .get(format!("http://{addr}/stream").parse().unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "the status line left before the panic");
        let body = res.into_body().collect().await;
        assert!(body.is_err(), "a body that panicked must not look complete");

        let reports = keep.all();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].message, "in the body");
        assert_eq!(reports[0].request.as_ref().unwrap().path, "/stream");
        assert_eq!(send(addr, "GET", "/hello", &[], "").await.body, "hello");
    })
    .await
}

use futures_util::StreamExt as _;

// ---------------------------------------------------------------------------------------
// Reports: redaction, request ids.

#[derive(Clone, Default)]
struct LogBuf(Arc<StdMutex<Vec<u8>>>);

impl LogBuf {
    /// Everything this test process logs (`tracing`, every level), from now on.
    fn capture() -> LogBuf {
        let logs = LogBuf::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .init();
        logs
    }

    /// Asserts that the panic with request id `logged_id` was logged and that no secret is in
    /// the reports' JSON, the health registry, the logs or the answers' bodies; returns the
    /// logs.
    fn assert_none_of(
        &self,
        secrets: &[&str],
        reports: &str,
        bodies: &[&str],
        logged_id: &str,
    ) -> String {
        let from_health = serde_json::to_string(&unwedge::health()).unwrap();
        let logged = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        assert!(
            logged.contains(logged_id),
            "the event must be logged: {logged}"
        );
        for secret in secrets {
            assert!(!reports.contains(secret), "{secret} in reports {reports}");
            assert!(!from_health.contains(secret), "{secret} in health");
            assert!(!logged.contains(secret), "{secret} in logs {logged}");
            assert!(
                !bodies.iter().any(|b| b.contains(secret)),
                "{secret} in an answer"
            );
        }
        logged
    }
}

impl std::io::Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn authorization_and_cookies_never_reach_the_report_or_the_logs() {
    support::own_process!();
    let logs = LogBuf::capture();
    within(async {
        let keep = Keep::default();
        let app = Router::new()
            .route(
                "/private",
                get(|| async {
                    if true {
                        panic!("denied");
                    }
                }),
            )
            .layer(PanicLayer::new().sink(Arc::new(keep.clone())));
        let addr = start(app).await;
        let a = send(
            addr,
            "GET",
            "/private?token=querysecret",
            &[
                ("authorization", "Bearer s3cr3t-bearer"),
                ("proxy-authorization", "Basic s3cr3t-proxy"),
                ("cookie", "session=s3cr3t-cookie"),
                ("x-request-id", "redaction-1"),
            ],
            "",
        )
        .await;
        assert_problem(&a);

        let report = &keep.all()[0];
        let json = serde_json::to_string(report).unwrap();
        let logged =
            logs.assert_none_of(&["s3cr3t", "querysecret"], &json, &[&a.body], "redaction-1");
        assert!(logged.contains("denied"), "{logged}");
        let headers = &report.request.as_ref().unwrap().headers;
        assert_eq!(headers["authorization"], unwedge::panic::REDACTED);
        assert_eq!(headers["cookie"], unwedge::panic::REDACTED);
        assert_eq!(headers["proxy-authorization"], unwedge::panic::REDACTED);
    })
    .await
}

/// A panic message built from a request can be anything: a megabyte is kept cut (8 KiB and a
/// mark) in the report, the log and the health registry; a newline or an escape sequence in
/// it is written escaped, so it cannot forge a log line or drive a terminal.
#[tokio::test]
async fn a_huge_or_multiline_panic_message_is_cut_and_logged_escaped() {
    support::own_process!();
    let logs = LogBuf::capture();
    within(async {
        let keep = Keep::default();
        let app = Router::new()
            .route(
                "/huge",
                get(|| async {
                    let huge = "A".repeat(1 << 20);
                    if true {
                        panic!("{huge}");
                    }
                }),
            )
            .route(
                "/lines",
                get(|| async {
                    if true {
                        panic!("bad input\nERROR forged entry \x1b[31mred\r");
                    }
                }),
            )
            .layer(PanicLayer::with_policy(unwedge::Policy::Recover).sink(Arc::new(keep.clone())));
        let addr = start(app).await;
        assert_problem(&send(addr, "GET", "/huge", &[], "").await);
        assert_problem(&send(addr, "GET", "/lines", &[], "").await);

        let reports = keep.all();
        let huge = &reports[0].message;
        assert!(huge.len() <= 8 * 1024 + 64, "{} bytes kept", huge.len());
        assert!(huge.starts_with("AAAA") && huge.ends_with("…<truncated>"));
        assert_eq!(
            reports[1].message, "bad input\nERROR forged entry \x1b[31mred\r",
            "the report keeps the message as written"
        );
        let registry = serde_json::to_string(&unwedge::health()).unwrap();
        assert!(
            !registry.contains(&"A".repeat(9 * 1024)),
            "the registry keeps the cut message"
        );

        let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        assert!(logged.len() < 200 * 1024, "{} bytes logged", logged.len());
        assert!(
            logged.contains(r"bad input\nERROR forged entry \u{1b}[31mred\r"),
            "{logged}"
        );
        for line in logged.lines() {
            assert!(
                !line.starts_with("ERROR forged"),
                "a forged log line: {logged}"
            );
        }
        assert!(
            !logged.contains('\x1b') && !logged.contains('\r'),
            "{logged:?}"
        );
    })
    .await
}

#[tokio::test]
async fn an_api_key_header_listed_for_reports_is_shown_redacted() {
    support::own_process!();
    let logs = LogBuf::capture();
    within(async {
        let keep = Keep::default();
        let app = Router::new()
            .route(
                "/",
                get(|| async {
                    if true {
                        panic!("denied");
                    }
                }),
            )
            .layer(
                PanicLayer::new()
                    .report_headers([
                        http::header::HOST,
                        http::HeaderName::from_static("x-api-key"),
                        http::HeaderName::from_static("x-auth-token"),
                    ])
                    .sink(Arc::new(keep.clone())),
            );
        let addr = start(app).await;
        let a = send(
            addr,
            "GET",
            "/",
            &[
                ("x-api-key", "s3cr3t-key"),
                ("x-auth-token", "s3cr3t-token"),
                ("x-request-id", "api-key-1"),
            ],
            "",
        )
        .await;
        assert_problem(&a);
        let report = &keep.all()[0];
        let json = serde_json::to_string(report).unwrap();
        logs.assert_none_of(&["s3cr3t"], &json, &[&a.body], "api-key-1");
        let headers = &report.request.as_ref().unwrap().headers;
        assert_eq!(headers["x-api-key"], unwedge::panic::REDACTED);
        assert_eq!(headers["x-auth-token"], unwedge::panic::REDACTED);
        assert!(headers["host"].starts_with("127.0.0.1:"), "{headers:?}");
    })
    .await
}

#[tokio::test]
async fn credentials_a_panic_message_quotes_never_reach_the_report_the_logs_or_the_client() {
    support::own_process!();
    let logs = LogBuf::capture();
    within(async {
        let keep = Keep::default();
        let app = Router::new()
            .route(
                "/debug",
                // The common `panic!("unexpected request {req:?}")`: `http::Request`'s `Debug`
                // prints its `HeaderMap` as `{"authorization": "Bearer …", "cookie": "…"}`.
                get(|req: http::Request<Body>| async move {
                    let shown = format!("{req:?}");
                    if true {
                        panic!("unexpected request {shown}");
                    }
                }),
            )
            .route(
                "/text",
                get(|| async {
                    if true {
                        panic!("refused Authorization: Bearer LIBSECRET3 cookie=LIBCOOKIE3");
                    }
                }),
            )
            .layer(
                PanicLayer::new()
                    .expose_details(true)
                    .sink(Arc::new(keep.clone())),
            );
        let addr = start(app).await;
        let debug = send(
            addr,
            "GET",
            "/debug",
            &[
                ("authorization", "Bearer LIBSECRET"),
                ("cookie", "sid=LIBCOOKIE"),
                ("x-api-key", "LIBAPIKEY"),
                ("x-request-id", "msg-cred-1"),
            ],
            "",
        )
        .await;
        let text = send(addr, "GET", "/text", &[], "").await;
        let detail = assert_problem(&debug)["detail"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            detail.contains(r#""authorization": "[redacted]""#),
            "{detail}"
        );
        assert!(detail.contains(r#""cookie": "[redacted]""#), "{detail}");
        assert!(detail.contains(r#""x-api-key": "[redacted]""#), "{detail}");
        assert_eq!(
            assert_problem(&text)["detail"],
            "refused Authorization: [redacted]"
        );

        let reports = keep.all();
        assert_eq!(reports.len(), 2);
        assert!(reports[0]
            .message
            .starts_with("unexpected request Request {"));
        let json = serde_json::to_string(&reports).unwrap();
        let bodies = [debug.body.as_str(), text.body.as_str()];
        let logged = logs.assert_none_of(
            &["LIBSECRET", "LIBCOOKIE", "LIBAPIKEY"],
            &json,
            &bodies,
            "msg-cred-1",
        );
        assert!(logged.contains("unexpected request"), "{logged}");
    })
    .await
}

#[tokio::test]
async fn a_url_password_in_a_panic_message_never_reaches_the_report_the_logs_or_the_client() {
    support::own_process!();
    let logs = LogBuf::capture();
    within(async {
        let keep = Keep::default();
        let app = Router::new()
            .route(
                "/db",
                get(|| async {
                    let password = "s3cret-pg";
                    if true {
                        // A `String` payload.
                        panic!("failed to connect to postgres://app:{password}@db:5432/app");
                    }
                }),
            )
            .route(
                "/cache",
                get(|| async {
                    if true {
                        // A `&str` payload.
                        panic!("error: REDIS://:hunter2-cache@cache:6379 refused");
                    }
                }),
            )
            .route(
                "/b64",
                get(|| async {
                    // A generated (base64) password, not percent-encoded: `/`, `+`, `=`.
                    let password = "Ab3/x+Yz9Q==";
                    if true {
                        panic!("connect postgres://app:{password}@db:5432/app");
                    }
                }),
            )
            .layer(
                PanicLayer::new()
                    .expose_details(true)
                    .sink(Arc::new(keep.clone())),
            );
        let addr = start(app).await;
        let db = send(addr, "GET", "/db", &[("x-request-id", "url-1")], "").await;
        let cache = send(addr, "GET", "/cache", &[], "").await;
        let b64 = send(addr, "GET", "/b64", &[], "").await;
        assert_eq!(
            assert_problem(&b64)["detail"],
            "connect postgres://…@db:5432/app"
        );
        assert_eq!(
            assert_problem(&db)["detail"],
            "failed to connect to postgres://…@db:5432/app"
        );
        assert_eq!(
            assert_problem(&cache)["detail"],
            "error: REDIS://…@cache:6379 refused"
        );

        let reports = keep.all();
        assert_eq!(reports.len(), 3);
        assert_eq!(
            reports[0].message,
            "failed to connect to postgres://…@db:5432/app"
        );
        assert_eq!(reports[1].message, "error: REDIS://…@cache:6379 refused");
        assert_eq!(reports[2].message, "connect postgres://…@db:5432/app");
        let json = serde_json::to_string(&reports).unwrap();
        let bodies = [db.body.as_str(), cache.body.as_str(), b64.body.as_str()];
        let logged = logs.assert_none_of(
            &["s3cret-pg", "hunter2-cache", "Ab3/x+Yz9Q=="],
            &json,
            &bodies,
            "url-1",
        );
        assert!(logged.contains("postgres://…@db:5432/app"), "{logged}");
    })
    .await
}

#[tokio::test]
async fn request_id_is_set_on_the_500_and_only_echoed_on_success_when_asked() {
    within(async {
        let comments = Arc::new(Tx::named("comments", vec!["a".to_owned()]));
        let addr = start(comments_app(comments, PanicLayer::new())).await;
        let a = send(addr, "GET", "/comments", &[("x-request-id", "abc-1")], "").await;
        assert_eq!(a.status, StatusCode::OK);
        assert!(!a.headers.contains_key("x-request-id"), "{:?}", a.headers);
        // A panic without a client id: a generated one, in the header and the problem.
        let a = send(addr, "POST", "/comments/buggy", &[], "b").await;
        let id = a.headers["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(id.len(), 16, "{id}");
        assert_eq!(assert_problem(&a)["request_id"], id.as_str());
    })
    .await
}

#[tokio::test]
async fn request_id_is_echoed_generated_or_replaced() {
    within(async {
        let comments = Arc::new(Tx::named("comments", vec!["a".to_owned()]));
        let addr = start(comments_app(
            comments,
            PanicLayer::new().echo_request_id(true),
        ))
        .await;

        let a = send(addr, "GET", "/comments", &[("x-request-id", "abc-123")], "").await;
        assert_eq!(
            (a.status, &a.headers["x-request-id"]),
            (StatusCode::OK, &"abc-123".parse().unwrap())
        );

        let a = send(
            addr,
            "POST",
            "/comments/buggy",
            &[("x-request-id", "abc-456")],
            "b",
        )
        .await;
        assert_eq!(assert_problem(&a)["request_id"], "abc-456");

        let a = send(addr, "GET", "/comments", &[], "").await;
        let generated = a.headers["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(generated.len(), 16, "{generated}");
        let b = send(addr, "GET", "/comments", &[], "").await;
        assert_ne!(b.headers["x-request-id"], generated.as_str());

        let long = "x".repeat(unwedge::panic::MAX_REQUEST_ID_LEN + 1);
        for bad in ["has spaces", "<script>", long.as_str()] {
            let a = send(addr, "GET", "/comments", &[("x-request-id", bad)], "").await;
            let got = a.headers["x-request-id"].to_str().unwrap();
            assert_ne!(got, bad);
            assert_eq!(got.len(), 16);
        }
    })
    .await
}

#[tokio::test]
async fn crash_policy_requests_a_crash_even_when_the_state_rolled_back() {
    support::own_process!();
    within(async {
        let comments = Arc::new(Tx::named("comments", vec!["a".to_owned()]));
        let layer = PanicLayer::with_policy(Policy::Crash);
        let addr = start(comments_app(comments.clone(), layer)).await;
        assert_problem(&send(addr, "POST", "/comments/buggy", &[], "b").await);
        let reason = unwedge::health::crash_requested().await;
        assert!(reason.contains("policy crash"), "{reason}");
        assert_eq!(*comments.read(), ["a"]);
        // The crash is the server's to carry out; until then, requests are still answered.
        assert_eq!(send(addr, "GET", "/comments", &[], "").await.body, "a");
    })
    .await
}

#[tokio::test]
async fn a_custom_responder_replaces_the_answer_and_keeps_the_request_id() {
    within(async {
        let comments = Arc::new(Tx::named("comments", vec!["a".to_owned()]));
        let layer = PanicLayer::new().respond_with(|ctx| {
            let mut res = http::Response::new(Bytes::from(format!("oops {}", ctx.request_id)));
            *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            res
        });
        let addr = start(comments_app(comments, layer)).await;
        let a = send(
            addr,
            "POST",
            "/comments/buggy",
            &[("x-request-id", "r-9")],
            "b",
        )
        .await;
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(a.body, "oops r-9");
        assert_eq!(a.headers["x-request-id"], "r-9");
    })
    .await
}

/// The layer reuses a finished request's scope for the next request on the same thread: a
/// report must describe its own request only (no id, header, redaction mark or path of an
/// earlier one).
#[tokio::test]
async fn a_report_carries_nothing_of_an_earlier_request() {
    within(async {
        let keep = Keep::default();
        let long_ok = format!("/ok/{}", "a".repeat(100));
        let app = Router::new()
            .route("/ok/{rest}", get(|| async { "ok" }))
            .route(
                "/boom",
                get(|| async {
                    if true {
                        panic!("boom");
                    }
                }),
            )
            .layer(PanicLayer::with_policy(Policy::Recover).sink(Arc::new(keep.clone())));
        let addr = start(app).await;
        // Earlier requests, one with a long path, with an id, a reported header and a
        // redacted one.
        for path in [long_ok.as_str(), "/ok/short"] {
            let a = send(
                addr,
                "GET",
                path,
                &[
                    ("x-request-id", "earlier-id"),
                    ("user-agent", "earlier-agent"),
                    ("referer", "http://earlier.example/"),
                    ("authorization", "Bearer earlier-secret"),
                ],
                "",
            )
            .await;
            assert_eq!(a.status, StatusCode::OK);
        }
        let a = send(addr, "GET", "/boom", &[("accept", "text/plain")], "").await;
        assert_problem(&a);

        let reports = keep.all();
        assert_eq!(reports.len(), 1);
        let request = reports[0].request.as_ref().expect("a request report");
        assert_eq!(request.method, "GET");
        assert_eq!(request.path, "/boom");
        assert_ne!(request.request_id, "earlier-id");
        assert_eq!(
            request.request_id,
            a.headers["x-request-id"].to_str().unwrap()
        );
        assert_eq!(
            request.headers.get("accept").map(String::as_str),
            Some("text/plain")
        );
        for gone in ["user-agent", "referer", "authorization"] {
            assert!(
                !request.headers.contains_key(gone),
                "{gone} of an earlier request in {:?}",
                request.headers
            );
        }
        let json = serde_json::to_string(&reports[0]).unwrap();
        for earlier in [
            "earlier-id",
            "earlier-agent",
            "earlier.example",
            "earlier-secret",
        ] {
            assert!(!json.contains(earlier), "{earlier} in {json}");
        }
    })
    .await
}

/// A panic caught by someone else earlier on this thread (here a `catch_unwind` outside any
/// request, after rolling back a `Tx`) must not lend its location, time or rolled-back state
/// to a later request's panic that the hook does not see (`resume_unwind`, as tokio's
/// `JoinError::into_panic` idiom and rayon re-raise panics).
#[tokio::test]
async fn a_resumed_panic_is_not_reported_with_an_earlier_caught_panics_details() {
    support::own_process!();
    use tower::ServiceExt;
    within(async {
        let stale = Tx::named("stale-tx", 0u32);
        let earlier = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            stale.update(|_| panic!("earlier, caught elsewhere"));
        }));
        assert!(earlier.is_err());

        let keep = Keep::default();
        let app = Router::new()
            .route(
                "/resume",
                get(|| async {
                    if true {
                        std::panic::resume_unwind(Box::new("resumed"));
                    }
                }),
            )
            .layer(PanicLayer::new().sink(Arc::new(keep.clone())));
        // Polled on this very thread (a current-thread runtime): where the stale capture is.
        let res = app
            .oneshot(http::Request::get("/resume").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let reports = keep.all();
        assert_eq!(reports.len(), 1);
        let r = &reports[0];
        assert_eq!(r.message, "resumed");
        assert!(r.rolled_back.is_empty(), "{:?}", r.rolled_back);
        assert!(
            !r.location
                .as_deref()
                .unwrap_or("")
                .contains("panic_layer.rs"),
            "the earlier panic's location: {:?}",
            r.location
        );
        assert_eq!(r.decision.as_ref().unwrap().action, Action::Recover);
        assert_eq!(
            r.decision.as_ref().unwrap().reason,
            "no unwedge state rolled back or poisoned"
        );
    })
    .await
}

/// Sets a panic hook that counts the panics it sees in `seen`, installs unwedge's hook over it
/// (unwedge's chains to it), and returns an app whose `/boom` panics under a `Recover` layer.
fn boom_app_under_a_counting_hook(seen: &'static std::sync::atomic::AtomicUsize) -> Router {
    std::panic::set_hook(Box::new(move |_| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }));
    unwedge::install();
    Router::new()
        .route(
            "/boom",
            get(|| async {
                if true {
                    panic!("boom");
                }
            }),
        )
        .layer(PanicLayer::with_policy(Policy::Recover))
}

/// With no `tracing` subscriber the report (a `tracing` event) would reach nobody: the hook
/// the application installed before unwedge's still sees a request's panic.
#[tokio::test]
async fn without_a_tracing_subscriber_the_previous_hook_still_sees_a_request_panic() {
    support::own_process!();
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::ServiceExt;
    static SEEN: AtomicUsize = AtomicUsize::new(0);
    within(async {
        assert!(
            !tracing::dispatcher::has_been_set(),
            "this test needs no subscriber"
        );
        let app = boom_app_under_a_counting_hook(&SEEN);
        let res = app
            .oneshot(http::Request::get("/boom").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(SEEN.load(Ordering::SeqCst), 1);
    })
    .await
}

/// A hook the application installed before unwedge's (a crash reporter) is chained for every
/// request's panic, whether the report's event is filtered out (`my_app=info`, a common
/// production filter) or logged. (std's own hook is not chained but replaced: see
/// `panic_hook_line.rs`.)
#[tokio::test]
async fn the_previous_hook_sees_a_requests_panic_whether_or_not_the_report_is_logged() {
    support::own_process!();
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::ServiceExt;
    use tracing_subscriber::layer::SubscriberExt;
    static SEEN: AtomicUsize = AtomicUsize::new(0);
    within(async {
        let app = boom_app_under_a_counting_hook(&SEEN);
        let boom = || http::Request::get("/boom").body(Body::empty()).unwrap();
        let subscriber = |filter: &str| {
            tracing_subscriber::registry()
                .with(tracing_subscriber::EnvFilter::new(filter))
                .with(tracing_subscriber::fmt::layer().with_writer(std::io::sink))
        };
        // The current-thread runtime polls the handler on this thread, under this default.
        let only_my_app = tracing::subscriber::set_default(subscriber("my_app=info"));
        let res = app.clone().oneshot(boom()).await.unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(SEEN.load(Ordering::SeqCst), 1, "filtered out");
        drop(only_my_app);
        let _with_unwedge =
            tracing::subscriber::set_default(subscriber("my_app=info,unwedge=error"));
        let res = app.oneshot(boom()).await.unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(SEEN.load(Ordering::SeqCst), 2, "logged");
    })
    .await
}

/// A value whose `Drop` runs code that panics and catches its own panic (a logging or cleanup
/// library guarding itself): while the handler's panic unwinds, that second panic starts a
/// capture of its own. The report is still the handler's panic, with the mutex it poisoned,
/// so `Auto` still crashes.
/// A response of an inner `PanicLayer` (its body guarded) held by a handler that then panics
/// with a mutex held: the body, dropped while that panic unwinds, leaves its report alone
/// (the mutex poisoned, the location), so `Auto` still crashes.
#[tokio::test(flavor = "current_thread")]
async fn a_guarded_body_dropped_while_a_panic_unwinds_keeps_that_panics_report() {
    support::own_process!();
    use std::sync::atomic::{AtomicU32, Ordering};
    use tower::ServiceExt;
    static PANIC_LINE: AtomicU32 = AtomicU32::new(0);
    within(async {
        let keep = Keep::default();
        let cache = new_cache();
        let inner = Router::new()
            .route("/", get(|| async { "inner" }))
            .layer(PanicLayer::with_policy(unwedge::Policy::Recover));
        let app = Router::new()
            .route(
                "/burn",
                get(|State(c): State<Cache>| async move {
                    // Dropped last: after the guard below poisoned the mutex.
                    let _held = inner
                        .oneshot(http::Request::get("/").body(Body::empty()).unwrap())
                        .await
                        .unwrap();
                    let mut guard = c.lock().await.unwrap();
                    guard.curr_size += 1;
                    if guard.curr_size > 0 {
                        PANIC_LINE.store(line!() + 1, Ordering::Relaxed);
                        panic!("the outer handler's panic");
                    }
                }),
            )
            .with_state(cache.clone())
            .layer(PanicLayer::new().sink(Arc::new(keep.clone())));
        let res = app
            .oneshot(http::Request::get("/burn").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(cache.is_poisoned());
        assert_sole_crash_report(
            &keep,
            "the outer handler's panic",
            PANIC_LINE.load(Ordering::Relaxed),
        );
    })
    .await
}

#[tokio::test]
async fn a_panic_caught_inside_a_drop_while_unwinding_keeps_the_first_panics_report() {
    support::own_process!();
    use std::sync::atomic::{AtomicU32, Ordering};
    use tower::ServiceExt;
    static PANIC_LINE: AtomicU32 = AtomicU32::new(0);
    struct GuardedCleanup;
    impl Drop for GuardedCleanup {
        fn drop(&mut self) {
            let _ = std::panic::catch_unwind(|| panic!("cleanup failed, and caught"));
        }
    }
    within(async {
        let keep = Keep::default();
        let cache = new_cache();
        let app = Router::new()
            .route(
                "/burn",
                get(|State(c): State<Cache>| async move {
                    // Dropped last: after the guard below poisoned the mutex.
                    let _cleanup = GuardedCleanup;
                    let mut guard = c.lock().await.unwrap();
                    guard.curr_size += 1;
                    if guard.curr_size > 0 {
                        PANIC_LINE.store(line!() + 1, Ordering::Relaxed);
                        panic!("the handler's own panic");
                    }
                }),
            )
            .with_state(cache.clone())
            .layer(PanicLayer::new().sink(Arc::new(keep.clone())));
        // Polled on this very thread (a current-thread runtime): hook, guards and catch.
        let res = app
            .oneshot(http::Request::get("/burn").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(cache.is_poisoned());
        assert_sole_crash_report(
            &keep,
            "the handler's own panic",
            PANIC_LINE.load(Ordering::Relaxed),
        );
        let reason = unwedge::health::crash_requested().await;
        assert!(reason.contains("`bytecache` poisoned"), "{reason}");
    })
    .await
}
