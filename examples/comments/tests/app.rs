//! Drives the comments app through `PanicLayer` (as `unwedge::serve` runs it): in process with
//! `oneshot`, and over a real socket on 127.0.0.1:0.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

const LIMIT: Duration = Duration::from_secs(30);

fn served() -> Router {
    example_comments::app().layer(unwedge::PanicLayer::new())
}

async fn call(
    app: &Router,
    method: &str,
    body: &'static str,
) -> (StatusCode, Option<String>, String) {
    let req = Request::builder()
        .method(method)
        .uri("/comments")
        .body(Body::from(body))
        .unwrap();
    let res = tokio::time::timeout(LIMIT, app.clone().oneshot(req))
        .await
        .expect("request hung: the mutex stayed locked")
        .unwrap();
    let status = res.status();
    let retry = res
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (status, retry, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn panic_while_locked_poisons_instead_of_hanging() {
    let app = served();
    let (status, _, body) = call(&app, "POST", "stub").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        !body.contains("index out of bounds"),
        "panic message leaked: {body}"
    );

    // Go's server2.go hangs here forever; unwedge answers at once.
    for method in ["POST", "GET"] {
        let (status, retry, body) = call(&app, method, "stub").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{method}: {body}");
        assert_eq!(retry.as_deref(), Some("1"));
        assert!(!body.contains("index out of bounds"));
    }
    // The Auto policy saw the poisoning and asked for a graceful crash.
    let reason = unwedge::health::crash_reason().expect("crash requested");
    assert!(reason.contains("comments"), "{reason}");
    assert_eq!(unwedge::health().state, unwedge::HealthState::Tainted);
}

/// One HTTP/1.1 request over a fresh connection; returns the status code.
async fn http(addr: std::net::SocketAddr, method: &str) -> u16 {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} /comments HTTP/1.1\r\nhost: test\r\nconnection: close\r\ncontent-length: 4\r\n\r\nstub"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    String::from_utf8_lossy(&raw)[9..12].parse().unwrap()
}

#[tokio::test]
async fn over_a_real_socket() {
    tokio::time::timeout(LIMIT, async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, served()).await });
        assert_eq!(http(addr, "POST").await, 500);
        assert_eq!(http(addr, "POST").await, 503);
        assert_eq!(http(addr, "GET").await, 503);
        server.abort();
    })
    .await
    .expect("a request hung: the mutex stayed locked");
}
