//! `/metrics` over a real socket, parsed by Prometheus' own Python parsers.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::{get, have, output, sample_view};
use unwedge_admin::{
    AdminServer, HangKind, Metrics, RestartReason, StatusSource, StatusView, WorkerState,
};

/// `(sample name, sorted labels) -> value`, as parsed by `prometheus_client`.
type Samples = HashMap<(String, Vec<(String, String)>), f64>;
/// One sample as the Python script prints it: `[name, [[label, value], …], value]`.
type RawSample = (String, Vec<(String, String)>, f64);

const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families as prom
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
text = sys.stdin.read()
out = {}
for parser in (prom, om):
    samples = []
    for family in parser(text):
        for s in family.samples:
            samples.append([s.name, sorted(s.labels.items()), s.value])
    out[parser.__module__] = samples
print(json.dumps(out))
"#;

/// Parses an exposition with both the Prometheus text parser and the strict OpenMetrics
/// parser; `None` (after printing why) when python3 or `prometheus_client` is missing.
async fn parse(text: &str) -> Option<Samples> {
    if !have("python3") {
        println!("SKIP: python3 not found");
        return None;
    }
    let mut probe = tokio::process::Command::new("python3");
    probe.args(["-c", "import prometheus_client"]);
    if !output(probe, None).await.status.success() {
        println!("SKIP: python module prometheus_client missing (pip install prometheus_client)");
        return None;
    }
    let mut cmd = tokio::process::Command::new("python3");
    cmd.args(["-c", PARSE]);
    let out = output(cmd, Some(text.as_bytes())).await;
    assert!(
        out.status.success(),
        "prometheus_client rejected the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: HashMap<String, Vec<RawSample>> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(parsed.len(), 2, "both parsers ran");
    let mut by_parser = parsed.into_values().map(|samples| {
        samples
            .into_iter()
            .map(|(name, labels, value)| ((name, labels), value))
            .collect::<Samples>()
    });
    let a = by_parser.next().unwrap();
    let b = by_parser.next().unwrap();
    for (k, v) in &a {
        if k.0.ends_with("_created") {
            continue;
        }
        assert_eq!(b.get(k), Some(v), "parsers disagree on {k:?}");
    }
    Some(a)
}

fn value(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    labels.sort();
    *samples
        .get(&(name.to_owned(), labels.clone()))
        .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
}

#[tokio::test]
async fn counters_move_after_a_crash_and_a_hang() {
    let metrics = Arc::new(Metrics::new("0.1.0-test"));
    let view = sample_view("boom");
    let server = AdminServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        StatusSource::from_fn(move || view.clone()),
        metrics.clone(),
    )
    .await
    .unwrap()
    .spawn();
    let addr = server.local_addr();

    let before = get(addr, "/metrics").await;
    assert_eq!(before.status, 200);
    assert!(
        before
            .header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{}",
        before.head
    );
    let Some(before) = parse(&before.body).await else {
        return;
    };
    assert_eq!(
        value(
            &before,
            "unwedge_restarts_total",
            &[("reason", "exit_code")]
        ),
        0.0
    );
    assert_eq!(
        value(&before, "unwedge_build_info", &[("version", "0.1.0-test")]),
        1.0
    );

    // A crash: the panic report, the restart, the replacement's READY after 12 ms.
    metrics.record_panic("/cart");
    metrics.record_restart(RestartReason::ExitCode);
    metrics.record_crash_to_ready(std::time::Duration::from_millis(12));
    // A hang: missed heartbeats, killed, replaced.
    metrics.record_hang(HangKind::Watchdog);
    metrics.record_restart(RestartReason::Hang);

    let after = parse(&get(addr, "/metrics").await.body).await.unwrap();
    assert_eq!(
        value(&after, "unwedge_restarts_total", &[("reason", "exit_code")]),
        1.0
    );
    assert_eq!(
        value(&after, "unwedge_restarts_total", &[("reason", "hang")]),
        1.0
    );
    assert_eq!(
        value(&after, "unwedge_panics_total", &[("route", "/cart")]),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "unwedge_hangs_detected_total",
            &[("kind", "watchdog")]
        ),
        1.0
    );
    assert_eq!(
        value(&after, "unwedge_crash_to_ready_seconds_count", &[]),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "unwedge_crash_to_ready_seconds_bucket",
            &[("le", "0.016")]
        ),
        1.0
    );
    // Gauges derived from the status view at scrape time.
    assert_eq!(value(&after, "unwedge_workers", &[("state", "ready")]), 1.0);
    assert_eq!(
        value(&after, "unwedge_workers", &[("state", "starting")]),
        1.0
    );
    assert_eq!(value(&after, "unwedge_workers", &[("state", "hung")]), 0.0);
    assert_eq!(value(&after, "unwedge_uptime_seconds", &[]), 3725.0);
    assert_eq!(
        value(&after, "unwedge_worker_restarts", &[("worker", "w1")]),
        1.0
    );
    server.shutdown().await;
}

#[tokio::test]
async fn livez_and_readyz_follow_the_status() {
    let metrics = Arc::new(Metrics::new("0.1.0-test"));
    let (tx, rx) = tokio::sync::watch::channel(sample_view("boom"));
    let server = AdminServer::bind("127.0.0.1:0".parse().unwrap(), rx.into(), metrics)
        .await
        .unwrap()
        .spawn();
    let addr = server.local_addr();
    assert_eq!(get(addr, "/livez").await.status, 200);
    let ready = get(addr, "/readyz").await;
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (200, "1 of 2 workers ready\n")
    );

    tx.send_modify(|v: &mut StatusView| {
        for w in &mut v.workers {
            w.state = WorkerState::Draining;
        }
    });
    assert_eq!(get(addr, "/readyz").await.status, 503);
    assert_eq!(get(addr, "/livez").await.status, 200, "draining is alive");

    tx.send_modify(|v: &mut StatusView| v.supervisor.gave_up = true);
    let live = get(addr, "/livez").await;
    assert_eq!(live.status, 503);
    assert!(live.body.contains("gave up"));
    assert_eq!(get(addr, "/nope").await.status, 404);
    server.shutdown().await;
}
