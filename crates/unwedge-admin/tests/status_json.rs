//! `/status` over a real socket: the JSON is the supervisor's view, field for field.

mod common;

use std::sync::Arc;

use common::{get, sample_view};
use unwedge_admin::{AdminServer, Metrics, Record, StatusSource, StatusView, WorkerState};

#[tokio::test]
async fn status_json_round_trips() {
    let view = sample_view("index out of bounds: the len is 3 but the index is 7");
    let served = view.clone();
    let server = AdminServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        StatusSource::from_fn(move || served.clone()),
        Arc::new(Metrics::new("0.1.0-test")),
    )
    .await
    .unwrap()
    .spawn();
    let resp = get(server.local_addr(), "/status").await;
    assert_eq!(resp.status, 200);
    assert!(resp
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let back: StatusView = serde_json::from_str(&resp.body).unwrap();
    assert_eq!(back, view);

    // The fields a script would read are where the docs say.
    let json: serde_json::Value = serde_json::from_str(&resp.body).unwrap();
    assert_eq!(json["workers"][0]["pid"], 4242);
    assert_eq!(json["workers"][0]["state"], "ready");
    assert_eq!(json["workers"][1]["state"], "starting");
    assert_eq!(json["restarts"][0]["reason"], "exit_code");
    assert_eq!(json["reports"][0]["kind"], "panic");
    assert_eq!(json["reports"][0]["report"]["request"]["path"], "/cart");
    assert_eq!(json["reports"][1]["kind"], "exit");
    assert_eq!(json["reports"][1]["code"], 70);
    assert!(matches!(&back.reports[1], Record::Exit(e) if e.code == Some(70)));
    assert_eq!(back.workers[0].state, WorkerState::Ready);
    server.shutdown().await;
}

#[tokio::test]
async fn status_follows_a_watch_channel() {
    let (tx, rx) = tokio::sync::watch::channel(sample_view("first"));
    let server = AdminServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        rx.into(),
        Arc::new(Metrics::new("0.1.0-test")),
    )
    .await
    .unwrap()
    .spawn();
    let addr = server.local_addr();
    let first: StatusView = serde_json::from_str(&get(addr, "/status").await.body).unwrap();
    assert_eq!(first.workers[1].pid, Some(4243));

    tx.send_modify(|v| {
        v.workers[1].pid = Some(5000);
        v.workers[1].state = WorkerState::Ready;
    });
    let second: StatusView = serde_json::from_str(&get(addr, "/status").await.body).unwrap();
    assert_eq!(second.workers[1].pid, Some(5000));
    assert_eq!(second.ready_workers(), 2);
    server.shutdown().await;
}
