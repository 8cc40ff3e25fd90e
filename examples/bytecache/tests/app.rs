//! Drives the ByteCache app through `PanicLayer` (as `unwedge::serve` runs it): in process
//! with `oneshot`, and over a real socket on 127.0.0.1:0.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

const LIMIT: Duration = Duration::from_secs(30);

fn served(max_size: usize) -> Router {
    example_bytecache::app_with_max_size(max_size).layer(unwedge::PanicLayer::new())
}

async fn call(app: &Router, method: &str, uri: &str, body: &'static [u8]) -> (StatusCode, Vec<u8>) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::from(body))
        .unwrap();
    let res = tokio::time::timeout(LIMIT, app.clone().oneshot(req))
        .await
        .expect("request hung")
        .unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (status, bytes.to_vec())
}

async fn stats(app: &Router) -> Value {
    let (status, body) = call(app, "GET", "/stats", b"").await;
    assert_eq!(status, StatusCode::OK);
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn the_seed_scenario_leaves_the_cache_consistent() {
    let app = served(5);
    assert_eq!(
        call(&app, "PUT", "/cache/watch", b"w").await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        call(&app, "PUT", "/cache/it", b"i").await.0,
        StatusCode::CREATED
    );
    let (status, body) = call(&app, "PUT", "/cache/burn", b"brn").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        !String::from_utf8_lossy(&body).contains("watch the world burn"),
        "panic message leaked to the client"
    );

    assert_eq!(
        stats(&app).await,
        json!({"max_size": 5, "curr_size": 2, "actual_size": 2, "entries": {"it": 1, "watch": 1}})
    );
    // Still accepts writes up to its real capacity (the Go original refuses them forever).
    assert_eq!(
        call(&app, "PUT", "/cache/more", b"abc").await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        call(&app, "PUT", "/cache/full", b"x").await.0,
        StatusCode::INSUFFICIENT_STORAGE
    );
    assert_eq!(
        call(&app, "GET", "/cache/more", b"").await,
        (StatusCode::OK, b"abc".to_vec())
    );
    assert_eq!(
        call(&app, "GET", "/cache/burn", b"").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&app, "PUT", "/cache/it", b"j").await.0,
        StatusCode::CONFLICT
    );
    // The rolled-back update means the state is clean: the Auto policy keeps serving.
    assert_eq!(unwedge::health::crash_reason(), None);
}

#[tokio::test]
async fn default_size_is_1024() {
    let app = example_bytecache::app().layer(unwedge::PanicLayer::new());
    assert_eq!(stats(&app).await["max_size"], 1024);
}

/// One HTTP/1.1 request over a fresh connection; returns status and body.
async fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn over_a_real_socket() {
    tokio::time::timeout(LIMIT, async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, served(5)).await });

        assert_eq!(http(addr, "PUT", "/cache/watch", "w").await.0, 201);
        assert_eq!(http(addr, "PUT", "/cache/it", "i").await.0, 201);
        assert_eq!(http(addr, "PUT", "/cache/burn", "brn").await.0, 500);
        let (status, body) = http(addr, "GET", "/stats", "").await;
        assert_eq!(status, 200);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (v["curr_size"].clone(), v["actual_size"].clone()),
            (json!(2), json!(2))
        );
        // The server is still up and the connection after a panic works.
        assert_eq!(
            http(addr, "GET", "/cache/watch", "").await,
            (200, "w".to_owned())
        );
        server.abort();
    })
    .await
    .expect("test took longer than its hard limit");
}
