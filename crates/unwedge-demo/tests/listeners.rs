//! Protocols and socket kinds: HTTP/2 (prior knowledge) on the inherited TCP socket, HTTP/1.1
//! on a Unix socket bound from `UNWEDGE_LISTEN`.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustix::process::Signal;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[test]
fn serves_http2_with_prior_knowledge() {
    run_test(Duration::from_secs(30), async {
        let dir = tempfile::tempdir().unwrap();
        let mut notify = Notify::bind(dir.path(), "notify.sock");
        let (listener, addr) = loopback_listener();
        let mut worker = spawn_worker(
            dir.path(),
            "w",
            Some(&listener),
            &[("NOTIFY_SOCKET", notify.path.to_str().unwrap())],
        );
        notify
            .expect("READY=1", Duration::from_secs(20), line_is("READY=1"))
            .await;
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        for path in ["/", "/livez"] {
            let req = http::Request::get(format!("http://{addr}{path}"))
                .body(Empty::<Bytes>::new())
                .unwrap();
            let res = sender.send_request(req).await.unwrap();
            assert_eq!(res.version(), http::Version::HTTP_2);
            assert_eq!(res.status(), 200, "{path}");
            let body = res.into_body().collect().await.unwrap().to_bytes();
            assert!(!body.is_empty());
        }
        worker.signal(Signal::TERM);
        assert_eq!(
            worker.wait_exit(Duration::from_secs(10)).await.code(),
            Some(0)
        );
    });
}

#[test]
fn serves_on_a_unix_socket_from_unwedge_listen_and_removes_it() {
    run_test(Duration::from_secs(30), async {
        let dir = tempfile::tempdir().unwrap();
        let mut notify = Notify::bind(dir.path(), "notify.sock");
        let path = dir.path().join("app.sock");
        let listen = format!("unix:{}", path.display());
        let mut worker = spawn_worker(
            dir.path(),
            "w",
            None,
            &[
                ("UNWEDGE_LISTEN", &listen),
                ("NOTIFY_SOCKET", notify.path.to_str().unwrap()),
            ],
        );
        let (_, ready) = notify
            .expect("READY=1", Duration::from_secs(20), line_is("READY=1"))
            .await;
        assert!(ready.contains(&format!("serving on {listen}")), "{ready}");
        // Open to a proxy running as another user (connecting needs write permission).
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o666);
        let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.ends_with("ok\n"), "{out}");
        worker.signal(Signal::TERM);
        assert_eq!(
            worker.wait_exit(Duration::from_secs(10)).await.code(),
            Some(0)
        );
        assert!(!path.exists(), "the socket file is removed on exit");
    });
}
