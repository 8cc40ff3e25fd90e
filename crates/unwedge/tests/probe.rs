//! `/livez` and `/readyz` over a real socket, following the health registry.

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

const LIMIT: Duration = Duration::from_secs(30);

async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test took longer than its hard limit")
}

async fn get(addr: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let res = client
        .get(format!("http://{addr}{path}").parse().unwrap())
        .await
        .unwrap();
    let status = res.status().as_u16();
    assert_eq!(res.headers()["content-type"], "application/json");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

// `probe::router` is behind the (default) `axum` feature.
#[cfg(feature = "axum")]
#[tokio::test]
async fn axum_router_follows_health() {
    support::own_process!();
    within(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app: axum::Router = unwedge::probe::router();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        let (s, v) = get(addr, "/readyz").await;
        assert_eq!((s, v["reason"].as_str()), (503, Some("not ready yet")));
        assert_eq!(get(addr, "/livez").await.0, 200);

        unwedge::health::set_ready(true);
        let (s, v) = get(addr, "/readyz").await;
        assert_eq!((s, v["status"].as_str()), (200, Some("ok")));

        unwedge::health::set_wedged("lock:db", "waiting for `db` for 12s");
        let (s, v) = get(addr, "/livez").await;
        assert_eq!(s, 503);
        assert_eq!(v["state"], "wedged");
        assert_eq!(v["reason"], "waiting for `db` for 12s");
        assert_eq!(get(addr, "/readyz").await.0, 503);

        unwedge::health::clear_wedged("lock:db");
        assert_eq!(get(addr, "/livez").await.0, 200);
        unwedge::health::set_draining();
        let (s, v) = get(addr, "/readyz").await;
        assert_eq!((s, v["state"].as_str()), (503, Some("draining")));
        assert_eq!(get(addr, "/livez").await.0, 200, "draining is still alive");

        unwedge::health::request_crash("mutex `cache` poisoned");
        let (s, v) = get(addr, "/livez").await;
        assert_eq!((s, v["state"].as_str()), (503, Some("tainted")));
        assert_eq!(v["reason"], "mutex `cache` poisoned");
    })
    .await
}

#[tokio::test]
async fn probes_service_with_a_hyper_server() {
    support::own_process!();
    within(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let svc = hyper_util::service::TowerToHyperService::new(unwedge::probe::Probes);
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc),
                );
            }
        });
        unwedge::health::set_ready(true);
        assert_eq!(get(addr, "/readyz").await.0, 200);
        unwedge::health::set_tainted("test");
        assert_eq!(get(addr, "/livez").await.0, 503);
        assert_eq!(get(addr, "/readyz").await.0, 503);

        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let res = client
            .get(format!("http://{addr}/other").parse().unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), 404);
    })
    .await
}
