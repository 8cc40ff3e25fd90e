//! `serve()` inside a test: `Server::listener` serves on a socket the caller bound (its port
//! known before), `Server::shutdown_on` stops it as SIGTERM would: a request in flight
//! finishes, the listener is closed, `serve()` returns `Outcome::Stopped`.

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use unwedge::serve::Outcome;
use unwedge::Server;

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
    let app = Router::new().route("/", get(|| async { "hello" })).route(
        "/slow",
        get(move || {
            let started_tx = started_tx.clone();
            async move {
                started_tx.send(()).await.unwrap();
                tokio::time::sleep(Duration::from_millis(500)).await;
                "slow done"
            }
        }),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
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
    started.recv().await.expect("the slow request began");
    stop.send(()).unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("serve() returned")
        .unwrap();
    assert!(matches!(outcome, Outcome::Stopped), "{outcome:?}");
    let res = slow.await.unwrap();
    assert!(
        res.ends_with("slow done"),
        "the request in flight was cut: {res}"
    );
    let refused = TcpStream::connect(addr).await;
    assert!(refused.is_err(), "still accepting after serve() returned");
}
