//! Serves the admin endpoint with made-up data: a look at the status page without a supervisor.
//!
//! Run with:
//! ```sh
//! cargo run -p unwedge-admin --example demo -- 127.0.0.1:9090
//! # then open http://127.0.0.1:9090/ ; Ctrl-C to stop
//! ```

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use unwedge_admin::{
    rfc3339, AdminServer, ExitRecord, ExitStatus, Metrics, PanicRecord, Record, RestartEvent,
    RestartReason, StatusSource, StatusView, SupervisorInfo, WorkerState, WorkerView,
};

fn view(started: SystemTime) -> StatusView {
    let now = SystemTime::now();
    let ago = |s: u64| rfc3339(now - Duration::from_secs(s));
    let mut sup = SupervisorInfo::new(env!("CARGO_PKG_VERSION"), std::process::id());
    sup.uptime_secs = now
        .duration_since(started)
        .unwrap_or_default()
        .as_secs_f64()
        + 3300.0;
    sup.listen = vec!["0.0.0.0:8080".into()];
    let mut v = StatusView::new(sup);
    let states = [
        (WorkerState::Ready, 3100.0, 0, None),
        (WorkerState::Ready, 1250.0, 2, Some((Some(70), None))),
        (WorkerState::Starting, 0.04, 5, Some((None, Some(9)))),
        (WorkerState::Draining, 14.0, 1, Some((Some(70), None))),
    ];
    for (i, (state, up, restarts, exit)) in states.into_iter().enumerate() {
        let mut w = WorkerView::new(format!("w{}", i + 1), Some(31000 + i as u32 * 7), state);
        w.uptime_secs = up;
        w.restarts = restarts;
        w.generation = if state == WorkerState::Draining { 1 } else { 2 };
        w.last_exit = exit.map(|(code, signal)| ExitStatus { code, signal });
        w.memory_bytes = (state != WorkerState::Starting).then_some((40 + 3 * i as u64) << 20);
        if i == 1 {
            w.last_report =
                Some(r#""cart total overflowed" at src/cart.rs:88:17 (POST /cart/items)"#.into());
        }
        v.workers.push(w);
    }
    for (s, worker, reason) in [
        (3000, "w2", RestartReason::ExitCode),
        (2400, "w3", RestartReason::Hang),
        (1260, "w2", RestartReason::ExitCode),
        (900, "w4", RestartReason::Reload),
        (600, "w3", RestartReason::Signal),
        (590, "w3", RestartReason::Signal),
        (580, "w3", RestartReason::Signal),
        (30, "w3", RestartReason::Tainted),
    ] {
        v.restarts.push(RestartEvent {
            time: ago(s),
            worker: worker.into(),
            reason,
        });
    }
    let report = serde_json::json!({
        "time": ago(1261), "pid": 30995, "message": "cart total overflowed: 18446744073709551615 + 1",
        "location": "src/cart.rs:88:17", "thread": "tokio-runtime-worker",
        "backtrace": "   0: std::panicking::begin_panic\n   1: shop::cart::Cart::add\n             at ./src/cart.rs:88:17\n   2: shop::routes::add_item::{{closure}}\n             at ./src/routes.rs:41:5\n   3: unwedge::panic::layer::CatchFuture::poll",
        "request": {"method": "POST", "path": "/cart/items", "request_id": "01J9Z3K8W6",
            "headers": {"content-type": "application/json", "authorization": "<redacted>", "user-agent": "shop-web/3.2"}},
        "task": null, "rolled_back": [], "poisoned": ["cart"],
        "decision": {"action": "crash", "reason": "mutex `cart` poisoned"}
    });
    let mut p = PanicRecord::new(Some("w2"), report);
    p.time = ago(1261);
    v.reports.push(Record::Panic(p));
    let mut e = ExitRecord::new(
        Some("w3"),
        Some(31014),
        ExitStatus {
            code: None,
            signal: Some(9),
        },
    );
    e.time = ago(600);
    e.last_stderr_lines = vec!["allocating 2.1 GiB for report export".into()];
    v.reports.push(Record::Exit(e));
    let report = serde_json::json!({
        "time": ago(31), "pid": 31014, "message": "lock `sessions` held for 5.0s by GET /export (req 01J9Z4…)",
        "location": null, "thread": "unwedge-watchdog", "backtrace": null, "request": null,
        "task": "watchdog", "rolled_back": [], "poisoned": [],
        "decision": {"action": "crash", "reason": "wedged: lock wait over limit"}
    });
    let mut p = PanicRecord::new(Some("w3"), report);
    p.time = ago(31);
    v.reports.push(Record::Panic(p));
    v
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9090".into());
    let addr = unwedge_admin::parse_admin_addr(&addr)?.ok_or("admin is off")?;
    let started = SystemTime::now();
    let metrics = Arc::new(Metrics::new(env!("CARGO_PKG_VERSION")));
    let server =
        AdminServer::bind(addr, StatusSource::from_fn(move || view(started)), metrics).await?;
    println!("status page on http://{}/", server.local_addr());
    let handle = server.spawn();
    tokio::signal::ctrl_c().await?;
    handle.shutdown().await;
    Ok(())
}
