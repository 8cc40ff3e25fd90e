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
                eprintln!("TEST: upload began ({:?})", req.version());
                match Bytes::from_request(req, &()).await {
                    Ok(b) => b.len().to_string(),
                    Err(e) => format!("error: {e}"),
                }
            }),
        )
        // Reads the whole body, then works for a while: its length.
        .route(
            "/upload-then-work",
            routing::put(|req: Request| async move {
                eprintln!("TEST: upload began ({:?})", req.version());
                let len = Bytes::from_request(req, &()).await.map_or(0, |b| b.len());
                tokio::time::sleep(Duration::from_millis(250)).await;
                len.to_string()
            }),
        )
        // Gives its body to a task of its own to read, and wakes every 50 ms meanwhile.
        .route(
            "/spawned",
            routing::put(|req: Request| async move {
                eprintln!("TEST: upload began ({:?})", req.version());
                let mut job = tokio::spawn(Bytes::from_request(req, &()));
                let mut tick = tokio::time::interval(Duration::from_millis(50));
                loop {
                    tokio::select! {
                        r = &mut job => break r.unwrap().map_or(0, |b| b.len()).to_string(),
                        _ = tick.tick() => {}
                    }
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
        )
        // Gives up on its body in the very poll that found it empty (`timeout` polls the body
        // first), keeps it, and waits on itself for ever.
        .route(
            "/give-up",
            routing::put(|req: Request| async move {
                let mut body: Body = req.into_body();
                let _ = tokio::time::timeout(Duration::from_millis(50), body.frame()).await;
                std::future::pending::<()>().await;
                drop(body);
                "never"
            }),
        )
        // Gives its body to a task that gives up on it as `/give-up` does, keeps it, and
        // waits on itself for ever; the handler waits for that task.
        .route(
            "/spawned-give-up",
            routing::put(|req: Request| async move {
                let mut body: Body = req.into_body();
                let task = tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_millis(50), body.frame()).await;
                    std::future::pending::<()>().await;
                    drop(body);
                });
                let _ = task.await;
                "never"
            }),
        )
        // A task of its own reads the body; then the handler waits on itself for ever.
        .route(
            "/spawned-then-hang",
            routing::put(|req: Request| async move {
                let len = tokio::spawn(Bytes::from_request(req, &())).await;
                eprintln!("TEST: body read: {:?}", len.map(|b| b.map(|b| b.len())));
                std::future::pending::<()>().await;
                "never"
            }),
        )
        // A streaming upload long on purpose: its client may be quiet for as long as it likes.
        .route(
            "/long-upload",
            routing::put(|req: Request| async move {
                assert!(unwedge::watchdog::long_request());
                eprintln!("TEST: upload began ({:?})", req.version());
                match Bytes::from_request(req, &()).await {
                    Ok(b) => b.len().to_string(),
                    Err(e) => format!("error: {e}"),
                }
            }),
        )
        // Waits on itself for ever (no body): what the watchdog must find.
        .route("/stuck", routing::get(std::future::pending::<&'static str>));
    support::run_worker(|| Server::new().serve(app))
}

/// The worker of the test `test` (this process, when it is the worker), with `env`.
fn body_worker(test: &str, env: &[(&str, &str)]) -> Worker {
    maybe_worker();
    Worker::start(test, "body", env)
}

/// `PUT path` with its client silent from the start, on a worker with an idle timeout of 1 s:
/// its handler, which gives up on the body and hangs, is found.
fn a_given_up_body_is_found(test: &str, path: &str) {
    let mut w = body_worker(
        test,
        &[
            ("UNWEDGE_HANG_LIMIT", HANG_LIMIT),
            ("UNWEDGE_IDLE_TIMEOUT", "1s"),
        ],
    );
    let _given_up = begin_upload(w.addr.unwrap(), path, b"");
    assert_found(&mut w, &format!("PUT {path}"));
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

/// `/livez` turns 503 naming `oldest` within 20 s: the watchdog finds a request hung on
/// itself (the positive control of each test: its watchdog was watching all along).
#[track_caller]
fn assert_found(w: &mut Worker, oldest: &str) {
    let reason = w.wait_livez_fails(&format!("{oldest}, waiting on itself, was never found"));
    assert!(reason.contains(&format!("oldest {oldest}")), "{reason}");
}

/// Sends `GET /stuck` on a connection of its own, kept open (its answer never comes).
fn get_stuck(w: &Worker) -> std::thread::JoinHandle<(u16, String)> {
    w.get_in_background("/stuck")
}

/// `/livez` answers 200 now.
#[track_caller]
fn assert_live(w: &mut Worker, when: &str) {
    let (status, res) = w.get("/livez");
    assert_eq!(status, 200, "{when}: {res}\n{}", w.log());
}

#[test]
fn a_slow_or_stalled_upload_does_not_wedge_a_quiet_process() {
    let mut w = body_worker(
        "a_slow_or_stalled_upload_does_not_wedge_a_quiet_process",
        &[("UNWEDGE_HANG_LIMIT", HANG_LIMIT)],
    );
    let addr = w.addr.unwrap();

    // A client trickling its body, a byte every 100 ms for 2 s (the only request in
    // flight, older than the hang limit for most of it): live throughout.
    let mut slow = begin_upload(addr, "/upload", b"a");
    w.expect("TEST: upload began", Duration::from_secs(20));
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
    assert_found(&mut w, "PUT /abandon");
}

/// A handler that gives up on its body in the very poll that found it empty, keeps it, and
/// waits on itself: its request counts as waiting on the client until something wakes the
/// handler (the body's idle timer, 1 s here, at the latest), then it is found.
#[test]
fn a_handler_giving_up_on_its_body_in_the_same_poll_is_found() {
    a_given_up_body_is_found(
        "a_handler_giving_up_on_its_body_in_the_same_poll_is_found",
        "/give-up",
    );
}

/// The same over HTTP/2 (h2c, prior knowledge): a stream whose client sent part of its body
/// and then nothing waits on its client, and the process stays live; the rest arrives and the
/// request completes.
#[test]
fn a_stalled_http2_upload_does_not_wedge_a_quiet_process() {
    let mut w = body_worker(
        "a_stalled_http2_upload_does_not_wedge_a_quiet_process",
        &[("UNWEDGE_HANG_LIMIT", HANG_LIMIT)],
    );
    // Stalled for 2 s (more than six hang limits), the only request in flight: still live.
    let (status, body) = http2_upload(&mut w, |w| {
        let stalled = Instant::now();
        while stalled.elapsed() < Duration::from_secs(2) {
            assert_live(w, "the HTTP/2 upload stalled");
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    assert_eq!(status, 200, "{body:?}");
    assert_eq!(&body[..], b"1000");
    assert_live(&mut w, "the HTTP/2 upload completed");
    let _stuck = get_stuck(&w);
    assert_found(&mut w, "GET /stuck");
}

/// `PUT /upload` over HTTP/2 (h2c, prior knowledge, hyper's client) with a 1000-byte body:
/// sends 3 bytes, runs `pause` once the worker has the request, then sends the rest; the
/// answer's status and body.
fn http2_upload(w: &mut Worker, pause: impl FnOnce(&mut Worker)) -> (http::StatusCode, Bytes) {
    let addr = w.addr.unwrap();
    // The client's connection runs on the runtime's own thread meanwhile.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((
            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(chunk)),
            rx,
        ))
    });
    let answer = rt.spawn(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let req = http::Request::put(format!("http://{addr}/upload"))
            .header("content-length", "1000")
            .body(http_body_util::StreamBody::new(Box::pin(frames)))
            .unwrap();
        let res = send.send_request(req).await.unwrap();
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, body)
    });
    rt.block_on(tx.send(Bytes::from_static(b"abc"))).unwrap();
    w.expect("TEST: upload began (HTTP/2.0)", Duration::from_secs(20));
    pause(w);
    rt.block_on(tx.send(Bytes::from(vec![b'd'; 997]))).unwrap();
    drop(tx);
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), answer).await })
        .expect("no answer within 30 s")
        .unwrap()
}

/// Sends the rest of a 1000-byte body begun with `sent` bytes, and reads the answer: its
/// status line and body.
fn finish_upload(mut s: TcpStream, sent: usize) -> String {
    s.write_all(&vec![b'z'; 1000 - sent]).unwrap();
    let mut res = String::new();
    let mut buf = [0u8; 512];
    while !res.ends_with("1000") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed without the answer: {res:?}");
        res.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    res
}

/// A request is as old as the time since it last waited for its client: an upload trickled
/// for twice the hang limit (1 s), then 250 ms of work in the handler, never wedges the
/// process (it would at the first tick after the body, the request counted from its start).
#[test]
fn work_after_a_slow_upload_is_timed_from_the_end_of_the_upload() {
    let mut w = body_worker(
        "work_after_a_slow_upload_is_timed_from_the_end_of_the_upload",
        &[("UNWEDGE_HANG_LIMIT", "1s")],
    );
    let mut slow = begin_upload(w.addr.unwrap(), "/upload-then-work", b"a");
    w.expect("TEST: upload began", Duration::from_secs(20));
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(100));
        slow.write_all(b"b").unwrap();
    }
    let res = finish_upload(slow, 21);
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    assert_live(&mut w, "the upload and its work completed");
    let log = w.log();
    assert!(!log.contains("state=wedged"), "{log}");
    let _stuck = get_stuck(&w);
    assert_found(&mut w, "GET /stuck");
}

/// A body read by a task the handler spawned, while the handler wakes every 50 ms: a stalled
/// client still counts as one the request waits on (the handler's own polls do not undo what
/// the reading task found), and the process stays live.
#[test]
fn a_body_read_by_another_task_still_waits_on_the_client() {
    let mut w = body_worker(
        "a_body_read_by_another_task_still_waits_on_the_client",
        &[("UNWEDGE_HANG_LIMIT", HANG_LIMIT)],
    );
    let slow = begin_upload(w.addr.unwrap(), "/spawned", b"abc");
    w.expect("TEST: upload began", Duration::from_secs(20));
    let stalled = Instant::now();
    while stalled.elapsed() < Duration::from_secs(2) {
        assert_live(&mut w, "the upload read by another task stalled");
        std::thread::sleep(Duration::from_millis(50));
    }
    let res = finish_upload(slow, 3);
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    let log = w.log();
    assert!(!log.contains("state=wedged"), "{log}");

    // The task's wait ends when it gets the body: the handler, hung on itself after, is found.
    let slow = begin_upload(w.addr.unwrap(), "/spawned-then-hang", b"abc");
    let stalled = Instant::now();
    while stalled.elapsed() < Duration::from_millis(500) {
        assert_live(&mut w, "the upload read by another task stalled");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut slow = slow;
    slow.write_all(&[b'z'; 997]).unwrap();
    w.expect("TEST: body read: Ok(Ok(1000))", Duration::from_secs(20));
    assert_found(&mut w, "PUT /spawned-then-hang");
}

/// A client silent for the idle timeout (1 s here) while the handler waits for its body: the
/// body ends with an error naming it, the handler answers, and the connection is closed. One
/// trickling a byte every 200 ms for 2 s (two timeouts in all) is not cut: each byte starts
/// the timeout again.
#[test]
fn a_client_silent_for_the_idle_timeout_loses_its_upload() {
    let mut w = body_worker(
        "a_client_silent_for_the_idle_timeout_loses_its_upload",
        &[("UNWEDGE_IDLE_TIMEOUT", "1s")],
    );
    let addr = w.addr.unwrap();

    let mut trickling = begin_upload(addr, "/upload", b"a");
    w.expect("TEST: upload began", Duration::from_secs(20));
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(200));
        trickling.write_all(b"b").unwrap();
    }
    let res = finish_upload(trickling, 11);
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");

    let mut stalled = begin_upload(addr, "/upload", b"abc");
    let since = Instant::now();
    let mut res = Vec::new();
    stalled
        .read_to_end(&mut res)
        .expect("the connection closed within 30 s");
    let took = since.elapsed();
    let res = String::from_utf8_lossy(&res);
    assert!(res.contains("error:"), "{res}");
    assert!(
        res.contains("no request body bytes for 1s (the idle timeout)"),
        "{res}"
    );
    assert!(took >= Duration::from_millis(900), "cut after {took:?}");
    assert_live(&mut w, "after the stalled upload was cut");
}

/// The same in a task the handler gave its body to: nothing polls the body again, so the mark
/// it left stands; a wait older than twice the idle timeout (1 s here) is taken for one left
/// behind, and the request is found.
#[test]
fn a_task_giving_up_on_the_body_it_was_given_is_found() {
    a_given_up_body_is_found(
        "a_task_giving_up_on_the_body_it_was_given_is_found",
        "/spawned-give-up",
    );
}

/// Not cut by the idle timeout (500 ms here): the body of a request that called
/// `long_request()`, its client silent for 1.5 s; and an HTTP/2 body, its client silent as
/// long (over HTTP/2 the connection's flow control may be what holds a client back).
#[test]
fn a_long_request_and_http2_bodies_are_not_cut() {
    let mut w = body_worker(
        "a_long_request_and_http2_bodies_are_not_cut",
        &[("UNWEDGE_IDLE_TIMEOUT", "500ms")],
    );
    let addr = w.addr.unwrap();
    let slow = begin_upload(addr, "/long-upload", b"abc");
    w.expect("TEST: upload began (HTTP/1.1)", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(1500));
    let res = finish_upload(slow, 3);
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");

    let (status, body) = http2_upload(&mut w, |_| std::thread::sleep(Duration::from_millis(1500)));
    assert_eq!(status, 200, "{body:?}");
    assert_eq!(&body[..], b"1000");
}
