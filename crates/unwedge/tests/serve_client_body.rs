//! A handler waiting for its client's request body waits on the client, not on itself:
//! `serve()`'s watchdog does not take a quiet process for wedged because one client uploads
//! slowly or stops half-way (it would be replaced, with every request in flight). A handler
//! that stopped reading its body and waits on itself is still found.
//!
//! The worker is a real process (see `support`) with a hang limit of 300 ms.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::routing;
use axum::Router;
use http_body_util::BodyExt;
use support::Worker;
use unwedge::Server;

const HANG_LIMIT: &str = "300ms";

fn maybe_worker() {
    if support::worker_mode().is_none() {
        return;
    }
    let app = Router::new()
        // Reads the whole body: its length.
        .route(
            "/upload",
            routing::put(|req: Request| async move {
                match Bytes::from_request(req, &()).await {
                    Ok(b) => b.len().to_string(),
                    Err(e) => format!("error: {e}"),
                }
            }),
        )
        // Waits for its body briefly, gives up on it, keeps it, and waits on itself for ever.
        .route(
            "/abandon",
            routing::put(|req: Request| async move {
                let mut body: Body = req.into_body();
                tokio::select! {
                    biased;
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = body.frame() => {}
                }
                std::future::pending::<()>().await;
                drop(body);
                "never"
            }),
        );
    support::run_worker(|| Server::new().serve(app))
}

/// Sends the head of `PUT path` with a 1000-byte body, and `first` of it.
fn begin_upload(addr: SocketAddr, path: &str, first: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!("PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(first).unwrap();
    s
}

/// `/livez` answers 200 now.
#[track_caller]
fn assert_live(w: &mut Worker, when: &str) {
    let (status, res) = w.get("/livez");
    assert_eq!(status, 200, "{when}: {res}\n{}", w.log());
}

#[test]
fn a_slow_or_stalled_upload_does_not_wedge_a_quiet_process() {
    maybe_worker();
    support::own_process();
    let mut w = Worker::start(
        "a_slow_or_stalled_upload_does_not_wedge_a_quiet_process",
        "body",
        &[("UNWEDGE_HANG_LIMIT", HANG_LIMIT)],
    );
    let addr = w.addr.unwrap();

    // A client trickling its body, a byte every 100 ms for 2 s (the only request in
    // flight, older than the hang limit for most of it): live throughout.
    let mut slow = begin_upload(addr, "/upload", b"a");
    let mut sent = 1;
    while sent < 20 {
        std::thread::sleep(Duration::from_millis(100));
        slow.write_all(b"b").unwrap();
        sent += 1;
        assert_live(&mut w, &format!("{sent} bytes of the body trickled in"));
    }

    // Then it stops sending for 2 s (more than six hang limits): still live.
    let stalled = Instant::now();
    while stalled.elapsed() < Duration::from_secs(2) {
        assert_live(&mut w, "the upload stalled");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The rest arrives: the request completes with the whole body.
    slow.write_all(&[b'c'; 980]).unwrap();
    let mut res = String::new();
    let mut buf = [0u8; 512];
    while !res.ends_with("1000") {
        let n = slow.read(&mut buf).unwrap();
        assert!(n > 0, "closed without the answer: {res:?}");
        res.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    assert_live(&mut w, "the upload completed");

    // A handler that stopped reading its body and waits on itself is wedged: the watchdog
    // still sees it (and this test's watchdog was watching all along).
    let _abandoned = begin_upload(addr, "/abandon", b"");
    let deadline = Instant::now() + Duration::from_secs(20);
    let reason = loop {
        let (status, res) = w.get("/livez");
        if status == 503 {
            break res;
        }
        assert!(
            Instant::now() < deadline,
            "a handler waiting on itself was never found: {res}\n{}",
            w.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(reason.contains("oldest PUT /abandon"), "{reason}");
}
