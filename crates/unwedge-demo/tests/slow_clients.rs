//! Connections that send nothing, trickle a request head (slowloris) or sit idle are closed
//! after one to two idle periods instead of holding a task and a file descriptor forever.
//! That `0` turns the idle timeout off is tested in `unwedge`'s `tests/serve_zero_limits.rs`,
//! over a low builder value: the demo has only the 30 s default, which a few seconds' wait
//! cannot tell from "off".

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A demo worker on a fresh loopback socket with `UNWEDGE_IDLE_TIMEOUT=timeout`.
async fn worker(dir: &std::path::Path, timeout: &str) -> (Worker, SocketAddr) {
    let (worker, _notify, addr) = sole_worker_with(dir, &[("UNWEDGE_IDLE_TIMEOUT", timeout)]).await;
    (worker, addr)
}

/// Reads until the server closes the connection (EOF or reset), at most `limit`; returns
/// what it sent and when it closed, or `None` if it was still open at `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<(Instant, Vec<u8>)> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let mut buf = [0u8; 1024];
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some((Instant::now(), got)),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends `head` one byte every 50 ms (reading whatever comes back) and asserts that the
/// server closes the connection before the last byte, within 5 s.
async fn assert_trickle_cut(s: &mut TcpStream, head: &[u8], what: &str) {
    let start = Instant::now();
    for b in head {
        if s.write_all(&[*b]).await.is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await
        {
            let took = start.elapsed();
            assert!(took < Duration::from_secs(5), "{what} cut after {took:?}");
            return;
        }
    }
    panic!("{what} of {} bytes was never cut", head.len());
}

/// A connection that sent one complete request (its answer is left unread).
async fn served_once(addr: SocketAddr) -> TcpStream {
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    client
}

#[test]
fn silent_trickling_and_idle_connections_are_closed_after_the_idle_timeout() {
    run_test(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let (_worker, addr) = worker(dir.path(), "300ms").await;

        // Connects and sends nothing.
        let start = Instant::now();
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let (at, _) = closed_within(&mut silent, Duration::from_secs(10))
            .await
            .expect("a silent connection stayed open");
        assert!(at - start >= Duration::from_millis(250), "{:?}", at - start);

        // Trickles a request head, one byte every 50 ms, never finishing it.
        let head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        let mut slow = TcpStream::connect(addr).await.unwrap();
        assert_trickle_cut(&mut slow, head, "a trickled first head").await;

        // After one request, a trickled second head is cut as well.
        let mut client = served_once(addr).await;
        assert_trickle_cut(&mut client, head, "a trickled second head").await;

        // A prompt client is served, and its idle keep-alive connection closed later.
        let mut client = served_once(addr).await;
        let (_, got) = closed_within(&mut client, Duration::from_secs(10))
            .await
            .expect("the idle keep-alive connection stayed open");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    });
}

/// An HTTP/2 frame: 24-bit length, type, flags, stream id, payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HTTP/2 client that makes one request and then answers nothing (no PING acknowledgement:
/// a peer that vanished, or one holding connections on purpose) is closed after the idle
/// timeout all the same. It was held for ever (review): the idle close is HTTP/2's graceful
/// GOAWAY, which waits for the peer to acknowledge a PING, so such clients kept their
/// connections, and their connection slots, until the process exited.
#[test]
fn an_http2_client_that_acknowledges_nothing_is_closed_after_the_idle_timeout() {
    run_test(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let (_worker, addr) = worker(dir.path(), "1s").await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(h2_frame(4, 0, 0, &[])); // SETTINGS, empty
                                              // HEADERS, END_STREAM | END_HEADERS: GET http / with :authority "x" (HPACK).
        hello.extend(h2_frame(1, 0x5, 1, &[0x82, 0x86, 0x84, 0x41, 0x01, b'x']));
        client.write_all(&hello).await.unwrap();
        let start = Instant::now();
        let (at, got) = closed_within(&mut client, Duration::from_secs(20))
            .await
            .expect("a silent HTTP/2 connection stayed open 20 s with an idle timeout of 1 s");
        // It was served first: a HEADERS frame (type 1) on stream 1 came back.
        assert!(
            got.windows(9)
                .any(|w| w[3] == 1 && w[5..9] == 1u32.to_be_bytes()),
            "no response HEADERS frame in {got:?}"
        );
        eprintln!("closed {:?} after the request", at - start);
    });
}

/// A request that takes longer than several idle periods is answered in full: the idle timeout
/// closes connections that deliver nothing, not slow requests.
#[test]
fn a_slow_request_outlives_the_idle_timeout() {
    run_test(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let (_worker, addr) = worker(dir.path(), "200ms").await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET /slow?ms=3000 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (_, got) = closed_within(&mut client, Duration::from_secs(20))
            .await
            .expect("the connection stayed open");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.ends_with("slept 3000 ms\n"), "{text}");
        // The connection closed after its answer: no keep-alive after an idle period passed.
        assert!(
            text.to_ascii_lowercase().contains("connection: close"),
            "{text}"
        );
    });
}

/// SIGTERM while a client trickles its first request head: the connection gets the first
/// request's grace (500 ms), then is closed; it does not hold the drain until the shutdown
/// deadline (hyper's graceful shutdown would wait for the whole head).
#[test]
fn a_trickled_first_head_does_not_hold_the_drain_until_its_deadline() {
    use rustix::process::Signal;
    run_test(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let (mut worker, _notify, addr) =
            sole_worker_with(dir.path(), &[("UNWEDGE_SHUTDOWN_TIMEOUT", "30s")]).await;
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        // Connections are accepted in order: once a later one is answered, the slow one is
        // the worker's.
        let mut later = served_once(addr).await;
        let mut buf = [0u8; 64];
        let n = later.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        drop(later);
        let trickle = tokio::spawn(async move {
            while slow.write_all(b"a").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let signalled = Instant::now();
        worker.signal(Signal::TERM);
        let status = worker.wait_exit(Duration::from_secs(40)).await;
        let took = signalled.elapsed();
        trickle.abort();
        assert_eq!(status.code(), Some(0), "stderr:\n{}", worker.stderr());
        assert!(
            took < Duration::from_secs(10),
            "the drain took {took:?} (deadline 30 s):\n{}",
            worker.stderr()
        );
    });
}

/// A client that sends part of a `PUT` body and then nothing: the bytecache app bounds the
/// whole body read (`BODY_TIMEOUT`, 5 s), so the client gets a `408` within the watchdog's hang
/// limit (10 s) and the process stays live, instead of holding its request for as long as it
/// likes. (`serve()`'s watchdog does not count a request waiting for its body as hung either:
/// `unwedge/tests/serve_client_body.rs`.)
#[test]
fn a_stalled_upload_gets_408_before_the_hang_limit_and_the_process_stays_live() {
    run_test(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let (_worker, _notify, addr) = sole_worker(dir.path()).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        let sent = Instant::now();
        client
            .write_all(
                b"PUT /bytecache/cache/k HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc",
            )
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(30), client.read(&mut buf))
            .await
            .expect("no answer to a stalled upload within 30 s")
            .unwrap();
        let took = sent.elapsed();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(
            took < Duration::from_secs(10),
            "answered after {took:?}, past the 10 s hang limit"
        );
        let (status, body) = http(addr, "GET", "/livez").await.unwrap();
        assert_eq!(status, 200, "{body}");
    });
}

/// Reads one HTTP/1 response (head, then a `Content-Length` body) from a kept-alive connection.
async fn read_response(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if got.len() >= end + 4 + len {
                return String::from_utf8_lossy(&got).into_owned();
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
            .await
            .expect("no response within 20 s")
            .unwrap();
        assert!(
            n > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
}

/// A request in progress when the drain begins, answered within the drain's keep-alive grace,
/// says `Connection: close`: the connection closes right after the grace, and a client that
/// reused it then got EOF (review). The close was decided when the request arrived.
#[test]
fn an_answer_given_after_the_drain_began_says_connection_close() {
    use rustix::process::Signal;
    run_test(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let (worker, mut notify, addr) =
            sole_worker_with(dir.path(), &[("UNWEDGE_SHUTDOWN_TIMEOUT", "30s")]).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        // Served once, so the connection is established and read from.
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let first = read_response(&mut client).await;
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        assert!(!first.to_ascii_lowercase().contains("connection: close"));
        // In progress for 800 ms; the drain begins at once, its grace is 1 s.
        client
            .write_all(b"GET /slow?ms=800 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // Not a wait for readiness: a request read only after the drain began is marked at its
        // arrival, and passes either way. The pause makes the case under test, a request
        // already running when the drain begins, the usual one.
        tokio::time::sleep(Duration::from_millis(200)).await;
        worker.signal(Signal::TERM);
        notify
            .expect("STOPPING=1", Duration::from_secs(10), |l| {
                l.starts_with("STOPPING=1")
            })
            .await;
        let answer = read_response(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "an answer given during the drain is kept alive:\n{answer}"
        );
    });
}
