//! `serve()`'s `/livez` tells a client on this host why it fails, and a client on another
//! host only that it does: the reason names other clients' requests (method and path).
//!
//! The worker is a real process (see `support`) listening on `0.0.0.0:0`; the "other host" is
//! this machine's own non-loopback address, which the worker sees as the client's.

mod support;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use axum::routing;
use axum::Router;
use support::{get, Worker};
use unwedge::Server;

fn maybe_worker() {
    if support::worker_mode().is_none() {
        return;
    }
    let app = Router::new().route(
        "/orders/{who}",
        routing::get(|| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            "late"
        }),
    );
    support::run_worker(|| Server::new().serve(app))
}

/// This machine's address on the interface of its default route, if it has one.
fn own_non_loopback_ip() -> Option<IpAddr> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    // TEST-NET-3: only picks the route; nothing is sent.
    s.connect("203.0.113.7:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[test]
fn livez_withholds_the_reason_from_clients_on_other_hosts() {
    maybe_worker();
    let Some(ip) = own_non_loopback_ip() else {
        println!("SKIPPED (this environment): this machine has no non-loopback address");
        return;
    };
    let mut w = Worker::start(
        "livez_withholds_the_reason_from_clients_on_other_hosts",
        "wedge",
        &[
            ("UNWEDGE_LISTEN", "0.0.0.0:0"),
            ("UNWEDGE_HANG_LIMIT", "1s"),
        ],
    );
    let port = w.addr.unwrap().port();
    let (local, remote) = (
        SocketAddr::from(([127, 0, 0, 1], port)),
        SocketAddr::new(ip, port),
    );
    let _slow = std::thread::spawn(move || get(local, "/orders/alice@example.com"));
    // Wedged once the request is older than the hang limit.
    let deadline = Instant::now() + Duration::from_secs(20);
    let here = loop {
        let (status, res) = get(local, "/livez");
        if status == 503 {
            break res;
        }
        assert!(
            Instant::now() < deadline,
            "never wedged: {res}\n{}",
            w.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // The route, not the e-mail address in the path: the reason goes to the log, STATUS=
    // and from there to the supervisor's status page and alerts.
    assert!(here.contains("oldest GET /orders/{param}"), "{here}");
    assert!(!here.contains("alice"), "{here}");
    assert!(!w.log().contains("alice"), "{}", w.log());
    for path in ["/livez", "/readyz"] {
        let (status, there) = get(remote, path);
        assert_eq!(status, 503, "{there}");
        assert!(there.contains("\"state\":\"wedged\""), "{there}");
        assert!(there.contains("withheld"), "{there}");
        assert!(
            !there.contains("alice"),
            "{path} told another host: {there}"
        );
    }
    // A proxy on this host connects from loopback for a client anywhere: what it forwarded
    // is not local.
    for header in [
        "X-Forwarded-For: 198.51.100.7",
        "Forwarded: for=198.51.100.7",
        "X-Real-IP: 198.51.100.7",
        "Via: 1.1 proxy",
    ] {
        let proxied = get_with(local, "/livez", header);
        assert!(proxied.starts_with("HTTP/1.1 503"), "{proxied}");
        assert!(proxied.contains("withheld"), "{header}: {proxied}");
        assert!(!proxied.contains("alice"), "{header}: {proxied}");
    }
}

/// `GET path` with one more header line, over a new connection: the whole response.
fn get_with(addr: SocketAddr, path: &str, header: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{header}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}
