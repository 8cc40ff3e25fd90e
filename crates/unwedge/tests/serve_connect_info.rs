//! `Server::connect_info`: each request of a TCP connection gets the client's address, as
//! axum's `ConnectInfo` extractor and tower services (`ClientAddr`) read it; without it the
//! extractor answers 500.
//!
//! Each test runs this test binary as a real worker process (see `support`) on
//! `127.0.0.1:0`.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::{Extension, Router};
use support::Worker;
use unwedge::serve::ClientAddr;
use unwedge::Server;

fn routes() -> Router {
    Router::new()
        .route(
            "/whoami",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { format!("[{peer}]") }),
        )
        .route(
            "/client",
            get(|Extension(ClientAddr(peer)): Extension<ClientAddr>| async move {
                format!("[{peer}]")
            }),
        )
}

fn maybe_worker() {
    let Some(mode) = support::worker_mode() else {
        return;
    };
    match mode.as_str() {
        "on" => support::run_worker(|| Server::new().connect_info().serve(routes())),
        "off" => support::run_worker(|| Server::new().serve(routes())),
        other => panic!("unknown mode {other}"),
    }
}

/// `GET path` from a connection whose local address is returned with the response.
fn get_from(addr: SocketAddr, path: &str) -> (SocketAddr, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let me = s.local_addr().unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    (me, out)
}

#[test]
fn connect_info_gives_each_request_the_clients_address() {
    maybe_worker();
    let mut w = Worker::start(
        "connect_info_gives_each_request_the_clients_address",
        "on",
        &[],
    );
    let addr = w.addr.unwrap();
    for path in ["/whoami", "/client"] {
        let (me, res) = get_from(addr, path);
        assert!(res.starts_with("HTTP/1.1 200"), "{path}: {res}");
        assert!(
            res.contains(&format!("[{me}]")),
            "{path}: {me} not in {res}"
        );
    }
    w.sigterm();
    assert_eq!(w.wait_exit(Duration::from_secs(30)), 0, "{}", w.log());
}

#[test]
fn without_connect_info_the_extractor_finds_nothing() {
    maybe_worker();
    let mut w = Worker::start(
        "without_connect_info_the_extractor_finds_nothing",
        "off",
        &[],
    );
    let (status, res) = w.get("/whoami");
    assert_eq!(status, 500, "{res}");
    assert!(res.contains("Missing request extension"), "{res}");
    w.sigterm();
    assert_eq!(w.wait_exit(Duration::from_secs(30)), 0, "{}", w.log());
}
