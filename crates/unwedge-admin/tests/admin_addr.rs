//! Where the admin endpoint listens, and what happens when it cannot.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{get, get_as, sample_view};
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

/// DNS rebinding: a page on `rebind.attacker.example`, whose name the attacker then resolves to
/// 127.0.0.1, makes the operator's browser send requests to the loopback admin with that
/// `Host`. They are refused with 421 on every route; requests for an IP address or localhost
/// (what a browser, curl or `unwedge status` on this machine send) are answered, and so is one
/// without `Host` (HTTP/1.0).
#[tokio::test]
async fn a_loopback_admin_answers_only_requests_for_this_machine() {
    let server = AdminServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        source(),
        Arc::new(Metrics::new("t")),
    )
    .await
    .unwrap()
    .spawn_thread()
    .unwrap();
    let addr = server.local_addr();
    let port = addr.port();
    for path in ["/", "/status", "/metrics", "/livez"] {
        for host in [
            format!("rebind.attacker.example:{port}"),
            "rebind.attacker.example".to_owned(),
            format!("localhost.attacker.example:{port}"),
        ] {
            let r = get_as(addr, &host, path).await;
            assert_eq!(r.status, 421, "{host} {path}: {}", r.head);
            assert!(r.body.contains("DNS rebinding"), "{}", r.body);
            assert!(!r.body.contains("boom"), "{}", r.body);
        }
        for host in [
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            format!("LOCALHOST:{port}"),
            format!("[::1]:{port}"),
            "app.localhost".to_owned(),
        ] {
            let r = get_as(addr, &host, path).await;
            assert_eq!(r.status, 200, "{host} {path}: {}", r.head);
        }
    }
    // HTTP/1.0 without a Host header.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /status HTTP/1.0\r\n\r\n").await.unwrap();
    let mut got = String::new();
    tokio::time::timeout(common::LIMIT, s.read_to_string(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert!(got.starts_with("HTTP/1.0 200"), "{got}");
    server.shutdown().await;
}

/// An admin the operator bound to every interface (a container, where Prometheus scrapes the
/// pod's IP, or a Service's DNS name) answers whatever `Host` it is asked for on this host's
/// other addresses; over loopback, which it takes too, a name rebound to 127.0.0.1 by a web
/// page in a browser here is refused as on an admin bound to 127.0.0.1.
#[tokio::test]
async fn an_admin_on_every_interface_answers_any_host_but_a_rebound_one_over_loopback() {
    let server = AdminServer::bind(
        "0.0.0.0:0".parse().unwrap(),
        source(),
        Arc::new(Metrics::new("t")),
    )
    .await
    .unwrap()
    .spawn();
    let port = server.local_addr().port();
    let loopback: SocketAddr = ([127, 0, 0, 1], port).into();
    for path in ["/", "/status", "/metrics"] {
        let r = get_as(loopback, "rebind.attacker.example:9090", path).await;
        assert_eq!(r.status, 421, "{path}: {}", r.head);
        assert_eq!(get(loopback, path).await.status, 200, "{path}");
    }
    // The address this host would reach others from (a UDP "connection" sends nothing).
    let udp = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    let own = udp
        .connect("192.0.2.1:9")
        .and_then(|()| udp.local_addr())
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified());
    let Some(own) = own else {
        println!("SKIPPED (this environment): no address but loopback");
        return server.shutdown().await;
    };
    for path in ["/", "/status", "/metrics"] {
        let r = get_as(
            (own, port).into(),
            "unwedge-admin.monitoring.svc:9090",
            path,
        )
        .await;
        assert_eq!(r.status, 200, "{path} on {own}: {}", r.head);
    }
    server.shutdown().await;
}

/// `/status`, `/metrics` and the page hold panic messages and request paths: no cache keeps
/// them and no browser sniffs them into another type.
#[tokio::test]
async fn status_metrics_and_page_are_neither_cached_nor_sniffed() {
    let server = AdminServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        source(),
        Arc::new(Metrics::new("t")),
    )
    .await
    .unwrap()
    .spawn();
    for path in ["/", "/status", "/metrics"] {
        let r = get(server.local_addr(), path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(
            r.header("cache-control").as_deref(),
            Some("no-store"),
            "{path}"
        );
        assert_eq!(
            r.header("x-content-type-options").as_deref(),
            Some("nosniff"),
            "{path}"
        );
    }
    server.shutdown().await;
}
