//! Where the admin endpoint listens, and what happens when it cannot.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{get, sample_view};
use unwedge_admin::{
    parse_admin_addr, AdminError, AdminServer, Metrics, StatusSource, DEFAULT_ADMIN_ADDR,
};

fn source() -> StatusSource {
    let view = sample_view("boom");
    StatusSource::from_fn(move || view.clone())
}

#[test]
fn default_and_port_only_are_loopback() {
    assert!(DEFAULT_ADMIN_ADDR.ip().is_loopback());
    assert_eq!(DEFAULT_ADMIN_ADDR.port(), 9090);
    let port_only = parse_admin_addr("0").unwrap().unwrap();
    assert!(port_only.ip().is_loopback());
    assert_eq!(parse_admin_addr("off").unwrap(), None);
    assert_eq!(parse_admin_addr("OFF").unwrap(), None);
    assert_eq!(
        parse_admin_addr("localhost:9100").unwrap(),
        Some("127.0.0.1:9100".parse().unwrap())
    );
    assert_eq!(
        parse_admin_addr("[::1]:9100").unwrap(),
        Some("[::1]:9100".parse().unwrap())
    );
    let err = parse_admin_addr("example:90x").unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid --admin \"example:90x\": expected off, PORT, HOST:PORT or [IPv6]:PORT"
    );
}

/// The address a port-only `--admin` binds answers on 127.0.0.1 and on no other local
/// address. 127.0.0.2 is also this host (all of 127/8 is), so a server bound to 0.0.0.0
/// would answer there: the check can fail. (The host's LAN address would do too, but test
/// traffic stays on loopback here.)
#[tokio::test]
async fn admin_is_not_reachable_on_another_local_address() {
    let addr = parse_admin_addr("0").unwrap().unwrap();
    let server = AdminServer::bind(addr, source(), Arc::new(Metrics::new("t")))
        .await
        .unwrap()
        .spawn();
    let port = server.local_addr().port();
    assert_eq!(get(server.local_addr(), "/livez").await.status, 200);

    let other: SocketAddr = ([127, 0, 0, 2], port).into();
    let attempt = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(other),
    )
    .await
    .expect("connect attempt finished");
    assert!(attempt.is_err(), "admin endpoint reachable on {other}");

    // The control: bound to every address, the same probe connects.
    let all = AdminServer::bind(
        "0.0.0.0:0".parse().unwrap(),
        source(),
        Arc::new(Metrics::new("t")),
    )
    .await
    .unwrap()
    .spawn();
    let other: SocketAddr = ([127, 0, 0, 2], all.local_addr().port()).into();
    assert_eq!(get(other, "/livez").await.status, 200);
    server.shutdown().await;
    all.shutdown().await;
}

#[tokio::test]
async fn port_in_use_is_a_clear_error() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap();
    let err = AdminServer::bind(addr, source(), Arc::new(Metrics::new("t")))
        .await
        .unwrap_err();
    assert!(matches!(err, AdminError::Bind { .. }));
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("cannot bind the admin endpoint on {addr}: ")),
        "{msg}"
    );
    assert!(msg.contains("in use"), "{msg}");
    assert!(msg.contains("--admin off"), "{msg}");
}
