//! `/metrics` over a real socket, parsed by Prometheus' own Python parsers.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::{get, get_with, have, output, sample_view, skip};
use unwedge_admin::{
    AdminServer, HangKind, Metrics, RestartReason, StatusSource, StatusView, WorkerState,
};

/// `(sample name, sorted labels) -> value`, as parsed by `prometheus_client`.
type Samples = HashMap<(String, Vec<(String, String)>), f64>;
/// One sample as the Python script prints it: `[name, [[label, value], …], value]`.
type RawSample = (String, Vec<(String, String)>, f64);

/// Reads `{"text": …, "openmetrics": …}`: each exposition with its own parser, the
/// Prometheus text one and the strict OpenMetrics one.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families as prom
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
given = json.load(sys.stdin)
out = {}
for key, parser in (("text", prom), ("openmetrics", om)):
    samples = []
    for family in parser(given[key]):
        for s in family.samples:
            samples.append([s.name, sorted(s.labels.items()), s.value])
    out[key] = samples
print(json.dumps(out))
"#;

/// What Prometheus sends.
const PROMETHEUS_ACCEPT: &str = "Accept: application/openmetrics-text;version=1.0.0,\
    application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n";

/// `/metrics` in both formats: as a plain client (`curl`, promtool, most agents) gets it,
/// the Prometheus text format, and as Prometheus gets it, OpenMetrics; each with the
/// content type that names it.
async fn scrape(addr: std::net::SocketAddr) -> (String, String) {
    let text = get(addr, "/metrics").await;
    assert_eq!(text.status, 200);
    assert_eq!(
        text.header("content-type").as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8"),
        "{}",
        text.head
    );
    let om = get_with(addr, &addr.to_string(), "/metrics", PROMETHEUS_ACCEPT).await;
    assert_eq!(om.status, 200);
    assert!(
        om.header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{}",
        om.head
    );
    (text.body, om.body)
}

/// Parses the two expositions of [`scrape`], each with its own parser (both must accept
/// it, and agree on every sample); `None` (after printing why) when python3 or
/// `prometheus_client` is missing.
async fn parse((text, openmetrics): (String, String)) -> Option<Samples> {
    if !have("python3") {
        skip("python3 not found (apt-get install python3)");
        return None;
    }
    let mut probe = tokio::process::Command::new("python3");
    probe.args(["-c", "import prometheus_client"]);
    if !output(probe, None).await.status.success() {
        skip("python3 cannot import prometheus_client (pip install prometheus-client)");
        return None;
    }
    let mut cmd = tokio::process::Command::new("python3");
    cmd.args(["-c", PARSE]);
    let given = serde_json::json!({"text": text, "openmetrics": openmetrics}).to_string();
    let out = output(cmd, Some(given.as_bytes())).await;
    assert!(
        out.status.success(),
        "prometheus_client rejected an exposition: {}\n{text}\n{openmetrics}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut parsed: HashMap<String, Vec<RawSample>> = serde_json::from_slice(&out.stdout).unwrap();
    let mut samples = |format: &str| {
        parsed
            .remove(format)
            .unwrap_or_else(|| panic!("no {format} samples"))
            .into_iter()
            .map(|(name, labels, value)| ((name, labels), value))
            .collect::<Samples>()
    };
    // `a`: the text format's; `b`: OpenMetrics', which may have `_created` samples more.
    let (a, b) = (samples("text"), samples("openmetrics"));
    // The two scrapes are moments apart: the supervisor's own process_* series (its CPU
    // time) may move between them; the unwedge_* ones only when something is recorded.
    for (k, v) in a.iter().filter(|(k, _)| k.0.starts_with("unwedge_")) {
        assert_eq!(b.get(k), Some(v), "the two formats disagree on {k:?}");
    }
    assert_eq!(
        a.keys().collect::<std::collections::BTreeSet<_>>(),
        b.keys()
            .filter(|k| !k.0.ends_with("_created"))
            .collect::<std::collections::BTreeSet<_>>(),
        "the same series in both formats"
    );
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

/// The admin server's `/metrics`, in each exposition format read by its own parser, with
/// samples recorded through [`Metrics`] directly (as the supervisor records a crash and a
/// hang): both formats parse, and the recorded series move. A real supervisor's counters are
/// unwedge-cli's `observe::metrics_counters_move_after_a_crash_and_a_hang`.
#[tokio::test]
async fn both_exposition_formats_parse_and_the_recorded_series_move() {
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

    let Some(before) = parse(scrape(addr).await).await else {
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
    // A client's hostile path: still one well-formed label in both formats.
    metrics.record_panic("/files/a\"b\\c\nd\u{1b}[2J");
    metrics.record_restart(RestartReason::ExitCode);
    metrics.record_crash_to_ready(std::time::Duration::from_millis(12));
    // A hang: missed heartbeats, killed, replaced.
    metrics.record_hang(HangKind::Watchdog);
    metrics.record_restart(RestartReason::Hang);

    let after = parse(scrape(addr).await).await.unwrap();
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
            "unwedge_panics_total",
            &[("route", "/files/a%22b%5Cc%0Ad%1B[2J")]
        ),
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

/// Two processes in one slot, as while one replaces the other (a reload, a memory or lifetime
/// rotation): the per-worker series are the serving one's, once each. Before, each process
/// wrote `unwedge_worker_cpu_seconds_total{worker="w1"}` (a duplicate series, one of them
/// dropped by a parser), and the gauges showed whichever came last: the replacement still
/// starting, not the worker over its memory limit.
#[tokio::test]
async fn a_slot_with_two_processes_has_one_series_of_the_serving_one() {
    // Session leaders, as workers are: their CPU is their session's. Killed when dropped.
    struct Session(std::process::Child);
    impl Drop for Session {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let session = || {
        Session(
            std::process::Command::new("setsid")
                .args(["sleep", "30"])
                .spawn()
                .unwrap(),
        )
    };
    let (old, new) = (session(), session());
    let mut view = StatusView::new(unwedge_admin::SupervisorInfo::new("t", std::process::id()));
    let mut serving = unwedge_admin::WorkerView::new("w1", Some(old.0.id()), WorkerState::Ready);
    serving.generation = 1;
    serving.uptime_secs = 600.0;
    serving.memory_bytes = Some(900_000_000);
    let mut starting =
        unwedge_admin::WorkerView::new("w1", Some(new.0.id()), WorkerState::Starting);
    starting.generation = 2;
    starting.uptime_secs = 0.5;
    starting.memory_bytes = Some(20_000_000);
    // Whatever the order: the snapshot's is by generation, the replacement last.
    for workers in [
        vec![serving.clone(), starting.clone()],
        vec![starting.clone(), serving.clone()],
    ] {
        view.workers = workers;
        let metrics = Metrics::new("t");
        metrics.observe_status(&view);
        let text = metrics.encode();
        let mut seen = std::collections::HashSet::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let series = line.rsplit_once(' ').map_or(line, |(s, _)| s);
            assert!(seen.insert(series.to_owned()), "{series} twice:\n{text}");
        }
        let sample = |series: &str| {
            text.lines()
                .find_map(|l| {
                    l.strip_prefix(series)?
                        .strip_prefix(' ')?
                        .parse::<f64>()
                        .ok()
                })
                .unwrap_or_else(|| panic!("no {series}:\n{text}"))
        };
        assert_eq!(
            sample(r#"unwedge_worker_resident_bytes{worker="w1"}"#),
            900_000_000.0
        );
        assert_eq!(
            sample(r#"unwedge_worker_uptime_seconds{worker="w1"}"#),
            600.0
        );
        assert!(
            text.contains(r#"unwedge_worker_cpu_seconds_total{worker="w1"}"#),
            "{text}"
        );
    }
}
