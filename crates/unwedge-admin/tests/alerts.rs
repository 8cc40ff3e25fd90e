//! Alerts to a real webhook receiver on 127.0.0.1 and to real commands.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use common::LIMIT;
use tokio::sync::mpsc;
use unwedge_admin::{AlertConfig, AlertError, AlertEvent, AlertKind, Alerter, Metrics};

/// A webhook receiver answering `status` and handing every body to the test.
async fn receiver(status: StatusCode) -> (String, mpsc::UnboundedReceiver<serde_json::Value>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new()
        .route(
            "/hook",
            post(
                |State((tx, status)): State<(
                    mpsc::UnboundedSender<serde_json::Value>,
                    StatusCode,
                )>,
                 body: String| async move {
                    let _ = tx.send(serde_json::from_str(&body).expect("JSON body"));
                    status
                },
            ),
        )
        .with_state((tx, status));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

/// A webhook that accepts connections and never answers.
async fn black_hole() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    url
}

/// The value of one sample line of the metrics text, 0 when absent.
fn metric(metrics: &Metrics, series: &str) -> f64 {
    metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn crash(summary: &str) -> AlertEvent {
    AlertEvent::new(AlertKind::WorkerCrashed, summary).with_worker("w1", Some(1234))
}

#[tokio::test]
async fn webhook_gets_exactly_one_alert_per_event() {
    let (url, mut rx) = receiver(StatusCode::OK).await;
    let metrics = Arc::new(Metrics::new("test"));
    let alerter = Alerter::new(AlertConfig::new().webhook(url), metrics.clone()).unwrap();

    assert!(alerter.send(crash("worker 0: exit 70 after panic \"boom\"")));
    assert!(alerter.send(crash("worker 0: exit 70 after panic \"boom\""))); // duplicate
    assert!(alerter.send(AlertEvent::new(
        AlertKind::WorkerHung,
        "worker 1 missed 3 heartbeats"
    )));
    assert!(alerter.send(crash("worker 0: exit 70 after panic \"boom\""))); // duplicate
    assert!(alerter.flush(LIMIT).await, "deliveries finished");

    let first = rx.try_recv().expect("first alert delivered");
    let second = rx.try_recv().expect("second alert delivered");
    assert!(rx.try_recv().is_err(), "duplicates were not suppressed");
    assert_eq!(first["event"]["kind"], "worker_crashed");
    assert_eq!(first["event"]["worker"], "w1");
    assert_eq!(first["event"]["pid"], 1234);
    assert_eq!(
        first["text"],
        "unwedge: worker crashed: worker 0: exit 70 after panic \"boom\""
    );
    assert_eq!(second["event"]["kind"], "worker_hung");
    assert_eq!(
        metric(&metrics, r#"unwedge_alerts_sent_total{sink="webhook"}"#),
        2.0
    );
    assert_eq!(
        metric(
            &metrics,
            r#"unwedge_alerts_dropped_total{reason="duplicate"}"#
        ),
        2.0
    );
}

#[tokio::test]
async fn rate_limit_drops_the_excess() {
    let (url, mut rx) = receiver(StatusCode::OK).await;
    let metrics = Arc::new(Metrics::new("test"));
    let mut config = AlertConfig::new().webhook(url);
    config.rate_limit = 3;
    let alerter = Alerter::new(config, metrics.clone()).unwrap();
    for i in 0..5 {
        assert!(alerter.send(crash(&format!("worker {i} crashed"))));
    }
    assert!(alerter.flush(LIMIT).await);
    let mut got = 0;
    while rx.try_recv().is_ok() {
        got += 1;
    }
    assert_eq!(got, 3);
    assert_eq!(
        metric(
            &metrics,
            r#"unwedge_alerts_dropped_total{reason="rate_limited"}"#
        ),
        2.0
    );
}

#[tokio::test]
async fn webhook_answering_500_is_retried_then_counted_as_failed() {
    let (url, mut rx) = receiver(StatusCode::INTERNAL_SERVER_ERROR).await;
    let metrics = Arc::new(Metrics::new("test"));
    let mut config = AlertConfig::new().webhook(url);
    config.retries = 2;
    config.backoff = Duration::from_millis(10);
    let alerter = Alerter::new(config, metrics.clone()).unwrap();

    assert!(alerter.send(crash("worker 0 crashed")));
    assert!(alerter.flush(LIMIT).await);
    let mut attempts = 0;
    while rx.try_recv().is_ok() {
        attempts += 1;
    }
    assert_eq!(attempts, 3, "one attempt and two retries");
    assert_eq!(
        metric(&metrics, r#"unwedge_alerts_failed_total{sink="webhook"}"#),
        1.0
    );
    assert_eq!(
        metric(&metrics, r#"unwedge_alerts_sent_total{sink="webhook"}"#),
        0.0
    );
}

/// An alert whose delivery failed (the webhook down) silences nothing: the same alert later,
/// within the dedupe window, is delivered once the webhook is back; only then do repeats
/// count as duplicates. Before, the window began when the alert was queued: a crash loop
/// that began while the webhook was down paged nobody until the window ran out.
#[tokio::test]
async fn a_failed_alert_silences_no_later_one() {
    use std::sync::atomic::{AtomicU16, Ordering};
    let (tx, mut rx) = mpsc::unbounded_channel::<u16>();
    let status = Arc::new(AtomicU16::new(500));
    let app = Router::new()
        .route(
            "/hook",
            post(
                |State((tx, status)): State<(mpsc::UnboundedSender<u16>, Arc<AtomicU16>)>| async move {
                    let now = status.load(Ordering::SeqCst);
                    let _ = tx.send(now);
                    StatusCode::from_u16(now).unwrap()
                },
            ),
        )
        .with_state((tx, status.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let metrics = Arc::new(Metrics::new("test"));
    let mut config = AlertConfig::new().webhook(url);
    config.retries = 0;
    let alerter = Alerter::new(config, metrics.clone()).unwrap();
    let sent = |name: &str| {
        metric(
            &metrics,
            &format!("unwedge_alerts_{name}{{sink=\"webhook\"}}"),
        )
    };

    assert!(alerter.send(crash("worker 0 crashed")));
    assert!(alerter.flush(LIMIT).await);
    assert_eq!(rx.recv().await, Some(500));
    assert_eq!(sent("failed_total"), 1.0);

    status.store(200, Ordering::SeqCst);
    assert!(alerter.send(crash("worker 0 crashed")));
    assert!(alerter.flush(LIMIT).await);
    assert_eq!(
        sent("sent_total"),
        1.0,
        "the alert after a failed one was not sent"
    );
    assert_eq!(rx.recv().await, Some(200));
    // Delivered: now the same alert is a duplicate.
    assert!(alerter.send(crash("worker 0 crashed")));
    assert!(alerter.flush(LIMIT).await);
    assert_eq!(sent("sent_total"), 1.0);
    assert_eq!(
        metric(
            &metrics,
            r#"unwedge_alerts_dropped_total{reason="duplicate"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn hanging_webhook_never_blocks_send() {
    let url = black_hole().await;
    let metrics = Arc::new(Metrics::new("test"));
    let mut config = AlertConfig::new().webhook(url);
    config.webhook_timeout = Duration::from_secs(600);
    config.queue = 4;
    config.max_in_flight = 1;
    config.rate_limit = 10_000;
    let alerter = Arc::new(Alerter::new(config, metrics.clone()).unwrap());

    // Sends happen on a plain thread: if one blocked, the deadline below would catch it.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let a = alerter.clone();
    std::thread::spawn(move || {
        let accepted = (0..100)
            .filter(|i| a.send(crash(&format!("worker {i} crashed"))))
            .count();
        done_tx.send(accepted).unwrap();
    });
    let accepted = done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("send() blocked behind a hanging webhook");
    assert!(accepted < 100, "the queue is bounded");
    assert!(accepted >= 4, "the queue accepted {accepted}");
    assert_eq!(
        metric(
            &metrics,
            r#"unwedge_alerts_dropped_total{reason="queue_full"}"#
        ),
        (100 - accepted) as f64
    );
    // Flushing waits for the hanging delivery: it gives up at its own deadline.
    assert!(!alerter.flush(Duration::from_millis(200)).await);
}

#[tokio::test]
async fn exec_gets_the_event_on_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("event.json");
    let metrics = Arc::new(Metrics::new("test"));
    let cmd = format!(
        "cat > '{}' && test \"$UNWEDGE_ALERT_KIND\" = gave_up",
        out.display()
    );
    let alerter = Alerter::new(AlertConfig::new().exec(cmd), metrics.clone()).unwrap();
    alerter.send(AlertEvent::new(AlertKind::GaveUp, "21 restarts in 60s"));
    assert!(alerter.flush(LIMIT).await);
    let event: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(event["kind"], "gave_up");
    assert_eq!(event["summary"], "21 restarts in 60s");
    assert_eq!(
        metric(&metrics, r#"unwedge_alerts_sent_total{sink="exec"}"#),
        1.0
    );
}

#[tokio::test]
async fn hanging_exec_is_killed_with_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("sleep.pid");
    let metrics = Arc::new(Metrics::new("test"));
    let mut config = AlertConfig::new().exec(format!(
        "sleep 600 & echo $! > '{}'; wait",
        pidfile.display()
    ));
    // Time for a loaded machine's `sh` to start its `sleep` and write its pid (a kill before
    // that leaves no pid to check, said below), well under the 600 s the hook would take.
    config.exec_timeout = Duration::from_secs(5);
    let alerter = Alerter::new(config, metrics.clone()).unwrap();
    let t = Instant::now();
    alerter.send(AlertEvent::new(
        AlertKind::ReloadFailed,
        "generation 3 never became ready",
    ));
    assert!(alerter.flush(LIMIT).await);
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "the timeout was not applied"
    );
    assert_eq!(
        metric(&metrics, r#"unwedge_alerts_failed_total{sink="exec"}"#),
        1.0
    );

    // The grandchild went with its process group.
    let pid = std::fs::read_to_string(&pidfile)
        .expect("no pid: the hook was killed before its `sh` even started `sleep` (5 s)")
        .trim()
        .to_owned();
    let deadline = Instant::now() + LIMIT;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit(") ").next().and_then(|s| s.chars().next());
        if matches!(state, None | Some('Z') | Some('X')) {
            break;
        }
        assert!(Instant::now() < deadline, "sleep {pid} survived: {stat}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn failing_exec_is_counted() {
    let metrics = Arc::new(Metrics::new("test"));
    let alerter = Alerter::new(
        AlertConfig::new().exec("echo nope >&2; exit 3"),
        metrics.clone(),
    )
    .unwrap();
    alerter.send(AlertEvent::new(
        AlertKind::StateTainted,
        "worker 0 poisoned `cart`",
    ));
    assert!(alerter.flush(LIMIT).await);
    assert_eq!(
        metric(&metrics, r#"unwedge_alerts_failed_total{sink="exec"}"#),
        1.0
    );
}

#[tokio::test]
async fn bad_configuration_is_a_clear_error() {
    let metrics = Arc::new(Metrics::new("test"));
    for (url, says) in [
        ("not a url", "invalid --alert-webhook URL \"not a url\""),
        ("ftp://example.test/hook", "unsupported scheme"),
        ("127.0.0.1:9000/hook", "expected an absolute URL"),
        ("http://", "invalid --alert-webhook URL"),
    ] {
        let err = Alerter::new(AlertConfig::new().webhook(url), metrics.clone()).unwrap_err();
        assert!(matches!(err, AlertError::BadWebhook { .. }));
        let msg = err.to_string();
        assert!(msg.contains(says), "{url}: {msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
    }
    let err = Alerter::new(AlertConfig::new().exec("  "), metrics).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid --alert-exec: the command is empty"
    );
}

#[test]
fn outside_a_runtime_is_an_error_not_a_panic() {
    let err = Alerter::new(AlertConfig::new(), Arc::new(Metrics::new("test"))).unwrap_err();
    assert!(matches!(err, AlertError::NoRuntime));
}

/// An https webhook receiver on 127.0.0.1 with a certificate from a fresh test CA; returns
/// its URL, the CA in PEM, and the bodies it receives.
#[cfg(feature = "https")]
async fn tls_receiver() -> (String, String, mpsc::UnboundedReceiver<serde_json::Value>) {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioIo;
    use tokio_rustls::rustls;

    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();

    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let body = req.into_body().collect().await?.to_bytes();
                            let _ = tx.send(serde_json::from_slice(&body).expect("JSON body"));
                            Ok::<_, hyper::Error>(hyper::Response::new(Full::new(
                                bytes::Bytes::from("ok"),
                            )))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (url, ca.pem(), rx)
}

#[cfg(feature = "https")]
#[tokio::test]
async fn https_webhook_is_delivered_when_its_certificate_is_trusted() {
    let (url, ca_pem, mut rx) = tls_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    // rustls-native-certs reads the roots from here instead of the system store. Each test
    // runs in its own process under nextest, so this does not leak into other tests.
    std::env::set_var("SSL_CERT_FILE", &ca_file);
    std::env::remove_var("SSL_CERT_DIR");

    let metrics = Arc::new(Metrics::new("test"));
    let alerter = Alerter::new(AlertConfig::new().webhook(url), metrics.clone()).unwrap();
    alerter.send(crash("worker 0 crashed"));
    assert!(alerter.flush(LIMIT).await);
    let got = rx.try_recv().expect("delivered over TLS");
    assert_eq!(got["event"]["kind"], "worker_crashed");
    assert_eq!(
        metric(&metrics, r#"unwedge_alerts_sent_total{sink="webhook"}"#),
        1.0
    );
}

#[cfg(feature = "https")]
#[tokio::test]
async fn https_webhook_with_an_untrusted_certificate_fails() {
    let (url, _ca_pem, mut rx) = tls_receiver().await;
    let metrics = Arc::new(Metrics::new("test"));
    let mut config = AlertConfig::new().webhook(url);
    config.retries = 1;
    config.backoff = Duration::from_millis(10);
    let alerter = match Alerter::new(config, metrics.clone()) {
        Ok(a) => a,
        Err(AlertError::Tls(e)) => {
            common::skip(&format!(
                "this machine has no root certificates ({e}) (apt-get install ca-certificates)"
            ));
            return;
        }
        Err(e) => panic!("{e}"),
    };
    alerter.send(crash("worker 0 crashed"));
    assert!(alerter.flush(LIMIT).await);
    assert!(
        rx.try_recv().is_err(),
        "delivered despite an untrusted certificate"
    );
    assert_eq!(
        metric(&metrics, r#"unwedge_alerts_failed_total{sink="webhook"}"#),
        1.0
    );
}

/// A webhook receiver that hangs on `worker_crashed` alerts (reads them, never answers) and
/// answers every other one with 200, handing its body to the test.
async fn hangs_on_crashes() -> (String, mpsc::UnboundedReceiver<serde_json::Value>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new()
        .route(
            "/hook",
            post(
                |State(tx): State<mpsc::UnboundedSender<serde_json::Value>>,
                 body: String| async move {
                    let event: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
                    if event["event"]["kind"] == "worker_crashed" {
                        std::future::pending::<()>().await;
                    }
                    let _ = tx.send(event);
                    StatusCode::OK
                },
            ),
        )
        .with_state(tx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

/// `gave_up` and `reload_failed` get through what routine alerts exhausted: the rate limit,
/// the de-duplication window, a full queue and every delivery slot held by a hanging webhook.
#[tokio::test]
async fn urgent_alerts_get_through_a_spent_rate_limit_and_a_full_queue() {
    let (url, mut rx) = receiver(StatusCode::OK).await;
    let metrics = Arc::new(Metrics::new("test"));
    let mut config = AlertConfig::new().webhook(url);
    config.rate_limit = 3;
    let alerter = Alerter::new(config, metrics.clone()).unwrap();
    for i in 0..5 {
        assert!(alerter.send(crash(&format!("worker {i}: exit {i}"))));
    }
    for _ in 0..2 {
        assert!(alerter.send(AlertEvent::new(
            AlertKind::ReloadFailed,
            "generation 2: w1 exit 1"
        )));
    }
    assert!(alerter.send(AlertEvent::new(
        AlertKind::GaveUp,
        "restart intensity exceeded"
    )));
    assert!(alerter.flush(LIMIT).await);
    let mut kinds = Vec::new();
    while let Ok(body) = rx.try_recv() {
        kinds.push(body["event"]["kind"].as_str().unwrap().to_owned());
    }
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "gave_up",
            "reload_failed",
            "reload_failed",
            "worker_crashed",
            "worker_crashed",
            "worker_crashed"
        ]
    );
    assert_eq!(
        metric(
            &metrics,
            r#"unwedge_alerts_dropped_total{reason="rate_limited"}"#
        ),
        2.0
    );

    // A webhook hanging on every crash alert: the only delivery slot is held, the queue fills.
    let (url, mut rx) = hangs_on_crashes().await;
    let metrics = Arc::new(Metrics::new("test"));
    let mut config = AlertConfig::new().webhook(url);
    config.queue = 2;
    config.max_in_flight = 1;
    config.webhook_timeout = Duration::from_secs(600);
    let alerter = Alerter::new(config, metrics.clone()).unwrap();
    let accepted = (0..20)
        .filter(|i| alerter.send(crash(&format!("worker {i}: exit {i}"))))
        .count();
    assert!(accepted < 20, "the queue is bounded: {accepted}");
    assert!(alerter.send(AlertEvent::new(
        AlertKind::GaveUp,
        "restart intensity exceeded"
    )));
    let got = tokio::time::timeout(LIMIT, rx.recv())
        .await
        .expect("gave_up delivered while crash alerts hang")
        .unwrap();
    assert_eq!(got["event"]["kind"], "gave_up");
}

/// A webhook that answers 200 with a body of `cap` bytes and more announced; returns its URL
/// and, once the connection is over, how many body bytes it got written before the client
/// hung up (`cap` when the client read all of them).
async fn endless_answer(cap: usize) -> (String, tokio::sync::oneshot::Receiver<usize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        // The request: its head, then the Content-Length it announced.
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        let body_start = loop {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "the request ended early");
            req.extend_from_slice(&buf[..n]);
            if let Some(i) = req.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&req[..body_start]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .expect("a Content-Length")
            .trim()
            .parse()
            .unwrap();
        while req.len() < body_start + length {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "the request body ended early");
            req.extend_from_slice(&buf[..n]);
        }
        conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n")
            .await
            .unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        let mut written = 0;
        while written < cap {
            match conn.write(&chunk).await {
                Ok(n) if n > 0 => written += n,
                _ => break,
            }
        }
        let _ = tx.send(written.min(cap));
    });
    (url, rx)
}

/// Only a webhook answer's status is used: a huge body is not read, let alone held.
#[tokio::test]
async fn a_huge_webhook_answer_is_not_read() {
    // Far more than a loopback connection's socket buffers can absorb.
    const CAP: usize = 64 << 20;
    let (url, written) = endless_answer(CAP).await;
    let metrics = Arc::new(Metrics::new("test"));
    let mut config = AlertConfig::new().webhook(url);
    config.webhook_timeout = Duration::from_secs(600);
    config.retries = 0;
    let alerter = Alerter::new(config, metrics.clone()).unwrap();
    alerter.send(crash("worker 0 crashed"));
    assert!(alerter.flush(LIMIT).await, "the delivery finished");
    assert_eq!(
        metric(&metrics, r#"unwedge_alerts_sent_total{sink="webhook"}"#),
        1.0
    );
    let written = tokio::time::timeout(LIMIT, written)
        .await
        .expect("the receiver saw the client hang up")
        .unwrap();
    assert!(
        written < CAP,
        "the client read the whole {written}-byte answer"
    );
}

/// The peak resident memory of this process (nextest runs each test in its own), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .expect("VmHWM in /proc/self/status");
    kb * 1024
}

/// A command writing 100 MB to stderr: read to its end, its last line kept, none of it held.
#[tokio::test]
async fn a_command_writing_a_flood_to_stderr_is_read_in_bounded_memory() {
    let before = peak_rss();
    let metrics = Arc::new(Metrics::new("test"));
    let alerter = Alerter::new(
        AlertConfig::new().exec("head -c 100000000 /dev/zero >&2; echo done >&2; exit 4"),
        metrics.clone(),
    )
    .unwrap();
    let t = Instant::now();
    alerter.send(crash("worker 0 crashed"));
    assert!(alerter.flush(LIMIT).await);
    assert!(
        t.elapsed() < Duration::from_secs(9),
        "the command's stderr was not drained: it hit the 10 s timeout"
    );
    assert_eq!(
        metric(&metrics, r#"unwedge_alerts_failed_total{sink="exec"}"#),
        1.0
    );
    let grew = peak_rss().saturating_sub(before);
    assert!(grew < 32 << 20, "peak RSS grew by {grew} bytes");
}

/// A command that exits 0 leaving a job in the background, which keeps its stderr open: it
/// succeeded when `sh` exited, and its job is not killed.
#[tokio::test]
async fn a_command_that_exits_leaving_a_background_job_succeeds_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let done = dir.path().join("done");
    let metrics = Arc::new(Metrics::new("test"));
    let mut config =
        AlertConfig::new().exec(format!("(sleep 4; touch '{}') & exit 0", done.display()));
    config.exec_timeout = Duration::from_secs(3);
    let alerter = Alerter::new(config, metrics.clone()).unwrap();
    let t = Instant::now();
    alerter.send(crash("worker 0 crashed"));
    assert!(alerter.flush(LIMIT).await);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "waited {:?} for the background job's stderr",
        t.elapsed()
    );
    assert_eq!(
        metric(&metrics, r#"unwedge_alerts_sent_total{sink="exec"}"#),
        1.0
    );
    assert_eq!(
        metric(&metrics, r#"unwedge_alerts_failed_total{sink="exec"}"#),
        0.0
    );
    // Nor is the job killed at the exit.
    assert!(alerter.close(Duration::from_secs(1)).await);
    let deadline = Instant::now() + LIMIT;
    while !done.exists() {
        assert!(Instant::now() < deadline, "the background job was killed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A webhook URL's `user:password@` is sent as `Authorization: Basic …` (hyper's client
/// drops user info: every alert was refused 401), and the request names no user info.
#[tokio::test]
async fn a_webhook_urls_user_info_is_sent_as_basic_credentials() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let app = Router::new()
        .route(
            "/hook",
            post(
                |State(tx): State<mpsc::UnboundedSender<(String, String)>>,
                 headers: axum::http::HeaderMap| async move {
                    let header = |name| {
                        headers
                            .get(name)
                            .map_or("", |v| v.to_str().unwrap())
                            .to_owned()
                    };
                    let (auth, host) = (header("authorization"), header("host"));
                    let ok = auth == "Basic YWxpY2U6czMvY3JldA==";
                    let _ = tx.send((auth, host));
                    if ok {
                        StatusCode::OK
                    } else {
                        StatusCode::UNAUTHORIZED
                    }
                },
            ),
        )
        .with_state(tx);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let metrics = Arc::new(Metrics::new("test"));
    // `alice:s3/cret`, its `/` percent-encoded.
    let url = format!("http://alice:s3%2Fcret@{addr}/hook");
    let alerter = Alerter::new(AlertConfig::new().webhook(url), metrics.clone()).unwrap();
    alerter.send(crash("worker 0 crashed"));
    assert!(alerter.flush(LIMIT).await);
    let (auth, host) = rx.try_recv().expect("the alert reached the receiver");
    assert_eq!(auth, "Basic YWxpY2U6czMvY3JldA==");
    assert_eq!(host, addr.to_string());
    assert_eq!(
        metric(&metrics, r#"unwedge_alerts_sent_total{sink="webhook"}"#),
        1.0
    );
}
