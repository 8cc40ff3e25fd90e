//! `/status` over a real socket: the JSON is the supervisor's view, field for field.

mod common;

use std::sync::Arc;

use common::{get, sample_view};
use unwedge_admin::{AdminServer, Detail, Metrics, Record, StatusSource, StatusView, WorkerState};

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

/// Found by review: `/metrics`, `/livez` and `/readyz` took the whole view, its 50 reports of
/// up to 256 KiB each copied for every scrape and probe and thrown away. A source told what a
/// request needs is asked for the brief view by those, and for the full one by `/status` and
/// the page, which still show the reports.
#[tokio::test]
async fn only_status_and_the_page_ask_for_the_reports() {
    let asked: Arc<std::sync::Mutex<Vec<Detail>>> = Arc::default();
    let view = sample_view("index out of bounds: the len is 3 but the index is 7");
    let (log, full) = (asked.clone(), view.clone());
    let source = StatusSource::from_fn_detail(move |detail| {
        log.lock().unwrap().push(detail);
        match detail {
            Detail::Brief => {
                let mut brief = full.clone();
                brief.reports.clear();
                brief.restarts.clear();
                brief
            }
            _ => full.clone(),
        }
    });
    let server = AdminServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        source,
        Arc::new(Metrics::new("0.1.0-test")),
    )
    .await
    .unwrap()
    .spawn();
    let addr = server.local_addr();
    for path in ["/metrics", "/livez", "/readyz"] {
        let resp = get(addr, path).await;
        assert_eq!(resp.status, 200, "{path}: {}", resp.body);
        let asked = std::mem::take(&mut *asked.lock().unwrap());
        assert!(!asked.is_empty(), "{path} did not look at the status");
        assert!(
            asked.iter().all(|d| *d == Detail::Brief),
            "{path} asked for {asked:?}"
        );
    }
    let resp = get(addr, "/readyz").await;
    assert!(resp.body.contains("1 of 2 workers ready"), "{}", resp.body);
    let resp = get(addr, "/metrics").await;
    assert!(
        resp.body.contains("# EOF") || resp.body.contains("# TYPE"),
        "{}",
        resp.body
    );
    asked.lock().unwrap().clear();
    let back: StatusView = serde_json::from_str(&get(addr, "/status").await.body).unwrap();
    assert_eq!(back, view);
    let page = get(addr, "/").await;
    assert!(page.body.contains("index out of bounds"), "{}", page.body);
    assert_eq!(*asked.lock().unwrap(), [Detail::Full, Detail::Full]);
    server.shutdown().await;
}
