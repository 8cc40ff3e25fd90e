//! `serve()` inside a test: `Server::listener` serves on a socket the caller bound (its port
//! known before), `Server::shutdown_on` stops it as SIGTERM would: a request in flight
//! finishes, the listener is closed, `serve()` returns `Outcome::Stopped`.

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use unwedge::serve::Outcome;
use unwedge::{HealthState, Server};

/// `GET path` on a new connection: the whole response (30 s at most).
async fn get_text(addr: std::net::SocketAddr, path: &str) -> String {
    tokio::time::timeout(Duration::from_secs(30), get_text_now(addr, path))
        .await
        .unwrap_or_else(|_| panic!("GET {path}: no answer within 30 s"))
}

async fn get_text_now(addr: std::net::SocketAddr, path: &str) -> String {
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut res = String::new();
    conn.read_to_string(&mut res).await.unwrap();
    res
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_a_given_listener_stops_when_asked_and_finishes_its_requests() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (started_tx, started) = tokio::sync::mpsc::channel::<()>(1);
    // The slow request is held here until the drain has begun, however long the stop takes.
    let gate = Arc::new(Semaphore::new(0));
    let app = Router::new().route("/", get(|| async { "hello" })).route(
        "/slow",
        get({
            let gate = gate.clone();
            move || {
                let (started_tx, gate) = (started_tx.clone(), gate.clone());
                async move {
                    started_tx.send(()).await.unwrap();
                    gate.acquire().await.unwrap().forget();
                    "slow done"
                }
            }
        }),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(
        Server::new()
            .listener(listener)
            // Ignored: the given listener wins.
            .bind("127.0.0.1:1")
            .shutdown_on(async {
                let _ = stopped.await;
            })
            .exit_on_crash(false)
            .serve(app),
    );
    let res = get_text(addr, "/").await;
    assert!(
        res.starts_with("HTTP/1.1 200") && res.ends_with("hello"),
        "{res}"
    );

    let slow = tokio::spawn(get_text(addr, "/slow"));
    let mut started = started;
    tokio::time::timeout(Duration::from_secs(30), started.recv())
        .await
        .expect("the slow request began within 30 s")
        .expect("the slow request began");
    let mut health = unwedge::health::subscribe();
    stop.send(()).unwrap();

    // The stop has begun: the listener is closed and the health is Draining, while the request
    // is still held in its handler.
    tokio::time::timeout(
        Duration::from_secs(30),
        health.wait_for(|(state, _)| *state == HealthState::Draining),
    )
    .await
    .expect("no Draining within 30 s of the stop")
    .expect("health sender lives forever");
    let refused = TcpStream::connect(addr).await;
    assert!(refused.is_err(), "still accepting while draining");
    // A serve() that returned now would abandon the request: it must wait for it.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut server)
            .await
            .is_err(),
        "serve() returned with a request in flight"
    );

    gate.add_permits(1);
    let res = slow.await.unwrap();
    assert!(
        res.starts_with("HTTP/1.1 200") && res.ends_with("slow done"),
        "the request in flight was cut: {res}"
    );
    let outcome = tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("serve() returned")
        .unwrap();
    assert!(matches!(outcome, Outcome::Stopped), "{outcome:?}");
}

/// `max_connections` is for all listeners together: a listener waiting in `accept` holds no
/// slot, so with a limit of one and two listeners, each serves its client in turn (a slot
/// held by the idle listener left the other serving nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_is_shared_by_the_listeners_not_held_by_an_idle_one() {
    let one = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let two = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (a, b) = (one.local_addr().unwrap(), two.local_addr().unwrap());
    let app = Router::new().route("/", get(|| async { "hello" }));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        Server::new()
            .listener(one)
            .listener(two)
            .max_connections(1)
            .shutdown_on(async {
                let _ = stopped.await;
            })
            .exit_on_crash(false)
            .serve(app),
    );
    for addr in [a, b, a, b] {
        let res = get_text(addr, "/").await;
        assert!(res.ends_with("hello"), "{addr}: {res}");
    }
    stop.send(()).unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("serve() returns")
        .unwrap();
    assert!(matches!(outcome, Outcome::Stopped), "{outcome:?}");
}

/// Two servers in one process: stopping one leaves the other's answers kept alive (review: a
/// process-wide count of stopping servers made every HTTP/1 answer of the other say
/// `Connection: close`, for good when the stopped one left a connection behind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_one_server_leaves_the_others_answers_kept_alive() {
    let la = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let lb = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (a, b) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
    // A's request in flight holds A's drain until released.
    let (entered_tx, entered) = tokio::sync::oneshot::channel::<()>();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let hold = Arc::new(std::sync::Mutex::new(Some((entered_tx, released))));
    let app_a = Router::new().route(
        "/hold",
        get(move || {
            let hold = hold.lock().unwrap().take();
            async move {
                let (entered, released) = hold.expect("one /hold");
                entered.send(()).unwrap();
                let _ = released.await;
                "held"
            }
        }),
    );
    let app_b = Router::new().route("/", get(|| async { "hello" }));
    let (stop_a, stopped_a) = tokio::sync::oneshot::channel::<()>();
    let (stop_b, stopped_b) = tokio::sync::oneshot::channel::<()>();
    let server = |l, stopped: tokio::sync::oneshot::Receiver<()>| {
        Server::new()
            .listener(l)
            .shutdown_on(async {
                let _ = stopped.await;
            })
            .exit_on_crash(false)
    };
    let server_a = tokio::spawn(server(la, stopped_a).serve(app_a));
    let server_b = tokio::spawn(server(lb, stopped_b).serve(app_b));
    let held = tokio::spawn(get_text(a, "/hold"));
    entered.await.unwrap();
    stop_a.send(()).unwrap();
    // A is draining (it stops, then says so).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while unwedge::health().state != HealthState::Draining {
        assert!(std::time::Instant::now() < deadline, "A never drained");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // B's answer on a kept-alive connection, while A drains.
    let mut s = TcpStream::connect(b).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"hello") {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("B answers")
            .unwrap();
        assert!(n > 0, "B closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(
        !text.contains("connection: close"),
        "stopping A closed B's connection:\n{text}"
    );
    release.send(()).unwrap();
    assert!(held.await.unwrap().ends_with("held"));
    let outcome = tokio::time::timeout(Duration::from_secs(30), server_a)
        .await
        .expect("A returns")
        .unwrap();
    assert!(matches!(outcome, Outcome::Stopped), "{outcome:?}");
    stop_b.send(()).unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(30), server_b).await;
}

/// A stream for `GET /export`: a first part, then (`fail`) a panic half-way, or the rest.
fn export(fail: bool) -> axum::body::Body {
    let parts = futures_util::stream::unfold(0u8, move |n| async move {
        match n {
            0 => Some((Ok::<_, std::io::Error>(bytes::Bytes::from("part one\n")), 1)),
            1 => {
                // Flushed first: the client has the head and the first part.
                tokio::time::sleep(Duration::from_millis(50)).await;
                assert!(!fail, "the export failed half-way");
                Some((Ok(bytes::Bytes::from("part two\n")), 2))
            }
            _ => None,
        }
    });
    axum::body::Body::from_stream(parts)
}

/// Reads `conn` to its end: what came, and whether it ended with a reset rather than a close.
async fn read_to_end_or_reset(conn: &mut TcpStream) -> (String, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(30), conn.read(&mut buf))
            .await
            .expect("the connection ended within 30 s")
        {
            Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), false),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (String::from_utf8_lossy(&got).into_owned(), true)
            }
            Err(e) => panic!("reading: {e}"),
        }
    }
}

/// An HTTP/1.0 client gets a streamed body delimited by the close of the connection: when
/// the stream panics half-way, the connection is reset, so that the truncated answer is an
/// error (nginx in front speaks HTTP/1.0 to its upstreams by default), where a plain close
/// made it look whole. A whole stream still ends with a plain close, and HTTP/1.1 keeps its
/// own sign (no last chunk).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_stream_that_panics_half_way_resets_the_connection() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/export", get(|| async { export(true) }))
        .route("/whole", get(|| async { export(false) }));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        Server::new()
            .listener(listener)
            .policy(unwedge::Policy::Recover)
            .shutdown_on(async {
                let _ = stopped.await;
            })
            .exit_on_crash(false)
            .serve(app),
    );
    for (version, path) in [("1.0", "/export"), ("1.0", "/whole"), ("1.1", "/export")] {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/{version}\r\nHost: x\r\nConnection: close\r\n\r\n");
        conn.write_all(req.as_bytes()).await.unwrap();
        let (got, reset) = read_to_end_or_reset(&mut conn).await;
        assert!(got.contains(" 200 OK\r\n"), "{version} {path}: {got}");
        assert!(got.contains("part one"), "{version} {path}: {got}");
        match (version, path) {
            ("1.0", "/export") => {
                assert!(
                    reset,
                    "a truncated HTTP/1.0 answer ended like a whole one: {got}"
                );
                assert!(!got.contains("part two"), "{got}");
            }
            ("1.0", _) => {
                assert!(!reset, "a whole HTTP/1.0 answer was reset: {got}");
                assert!(got.ends_with("part one\npart two\n"), "{got}");
            }
            _ => {
                // Chunked: the last chunk (`0\r\n\r\n`) is missing, whatever ends it.
                assert!(got.contains("transfer-encoding: chunked"), "{got}");
                assert!(!got.ends_with("0\r\n\r\n"), "{got}");
            }
        }
    }
    stop.send(()).unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("serve() returned")
        .unwrap();
    assert!(matches!(outcome, Outcome::Stopped), "{outcome:?}");
}
