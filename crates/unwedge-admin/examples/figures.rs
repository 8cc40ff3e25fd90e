//! Measures the figures in docs/observability.md: `/metrics` scrape time with 64 workers'
//! worth of series, alert latency from `send` to webhook delivery on loopback, and the
//! status page's weight.
//!
//! Run with:
//! ```sh
//! cargo run --release -p unwedge-admin --example figures
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use unwedge_admin::*;

const WORKERS: u32 = 64;

fn big_view() -> StatusView {
    let now = SystemTime::now();
    let mut sup = SupervisorInfo::new("0.1.0", std::process::id());
    sup.uptime_secs = 86_400.0;
    sup.listen = vec!["0.0.0.0:8080".into()];
    let mut v = StatusView::new(sup);
    for i in 0..WORKERS {
        let state = WorkerState::ALL[i as usize % WorkerState::ALL.len()];
        let mut w = WorkerView::new(format!("w{}", i + 1), Some(10_000 + i), state);
        w.uptime_secs = 100.0 + f64::from(i);
        w.restarts = u64::from(i % 7);
        w.last_exit = Some(ExitStatus {
            code: Some(70),
            signal: None,
        });
        w.last_report = Some(format!("\"boom {i}\" at src/routes.rs:{i}:5 (GET /r/{i})"));
        v.workers.push(w);
    }
    for i in 0..300u64 {
        v.restarts.push(RestartEvent {
            time: rfc3339(now - Duration::from_secs(i * 11)),
            worker: format!("w{}", i % u64::from(WORKERS) + 1),
            reason: RestartReason::ALL[i as usize % 5],
        });
    }
    let backtrace: String = (0..40)
        .map(|f| {
            format!("  {f}: app::module::function_{f}\n             at ./src/module.rs:{f}:9\n")
        })
        .collect();
    for i in 0..200 {
        let report = serde_json::json!({
            "time": rfc3339(now), "pid": 10_000 + i, "message": format!("index {i} out of range for slice of length 3"),
            "location": "src/routes.rs:42:9", "thread": "tokio-runtime-worker", "backtrace": backtrace,
            "request": {"method": "GET", "path": format!("/r/{i}"), "request_id": format!("req-{i}"),
                "headers": {"accept": "*/*", "user-agent": "load/1", "authorization": "<redacted>"}},
            "task": null, "rolled_back": ["cache"], "poisoned": [],
            "decision": {"action": "recover", "reason": "state rolled back"}
        });
        v.reports.push(Record::Panic(PanicRecord::new(
            Some(&format!("w{}", i % WORKERS + 1)),
            report,
        )));
    }
    v
}

fn percentiles(mut d: Vec<Duration>) -> String {
    d.sort();
    let p = |q: f64| d[((d.len() as f64 - 1.0) * q).round() as usize];
    format!(
        "median {:?}, p99 {:?}, max {:?} (n={})",
        p(0.5),
        p(0.99),
        d[d.len() - 1],
        d.len()
    )
}

#[tokio::main]
async fn main() {
    // --- /metrics with 64 workers' worth of series
    let metrics = Arc::new(Metrics::new("0.1.0"));
    for i in 0..WORKERS {
        metrics.record_panic(&format!("/r/{i}"));
        metrics.record_restart(RestartReason::ALL[i as usize % 5]);
        metrics.record_hang(HangKind::Watchdog);
        metrics.record_crash_to_ready(Duration::from_micros(500 + u64::from(i) * 300));
    }
    let view = big_view();
    metrics.observe_status(&view);
    let text = metrics.encode();
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    let mut encode = Vec::new();
    for _ in 0..2000 {
        let t = Instant::now();
        metrics.observe_status(&view);
        std::hint::black_box(metrics.encode());
        encode.push(t.elapsed());
    }
    println!(
        "metrics: {series} series, {} bytes; observe_status+encode in process: {}",
        text.len(),
        percentiles(encode)
    );

    // As the supervisor would: the view published on a watch channel, read in place.
    let (_status_tx, status_rx) = tokio::sync::watch::channel(view.clone());
    let server = AdminServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        StatusSource::from_watch(status_rx),
        metrics.clone(),
    )
    .await
    .unwrap()
    .spawn();
    let base = format!("http://{}", server.local_addr());
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut scrape = Vec::new();
    for _ in 0..1000 {
        let t = Instant::now();
        let resp = client
            .get(format!("{base}/metrics").parse().unwrap())
            .await
            .unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        scrape.push(t.elapsed());
        assert!(body.len() > 1000);
    }
    println!(
        "GET /metrics over loopback (keep-alive, 64 workers): {}",
        percentiles(scrape)
    );

    // --- status page weight
    let page = render_page(&view);
    let small = render_page(&{
        let mut v = view.clone();
        v.workers.truncate(2);
        v.reports.truncate(2);
        v
    });
    println!(
        "status page: {} bytes with 64 workers and 200 reports of 40-frame backtraces \
         (budget cut), {} bytes with 2 workers and 2 reports",
        page.len(),
        small.len()
    );
    let mut render = Vec::new();
    for _ in 0..500 {
        let t = Instant::now();
        let resp = client
            .get(format!("{base}/").parse().unwrap())
            .await
            .unwrap();
        std::hint::black_box(resp.into_body().collect().await.unwrap().to_bytes());
        render.push(t.elapsed());
    }
    println!(
        "GET / over loopback (64 workers, 200 reports): {}",
        percentiles(render)
    );
    server.shutdown().await;

    // --- alert latency: send() → the receiver's handler runs
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let app = Router::new().route(
        "/hook",
        post(move |_body: Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(Instant::now());
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut config = AlertConfig::new().webhook(url);
    config.rate_limit = 100_000;
    let alerter = Alerter::new(config, Arc::new(Metrics::new("0.1.0"))).unwrap();
    let mut latency = Vec::new();
    for i in 0..500 {
        let event = AlertEvent::new(AlertKind::WorkerCrashed, format!("worker {i} crashed"))
            .with_worker(format!("w{i}"), Some(10_000 + i));
        let t = Instant::now();
        assert!(alerter.send(event));
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("delivered")
            .unwrap();
        latency.push(got - t);
    }
    println!(
        "alert latency send() → webhook handler (loopback): {}",
        percentiles(latency)
    );
}
