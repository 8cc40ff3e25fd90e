//! The admin side of the unwedge supervisor: what operators see and hear.
//!
//! - [`Metrics`]: Prometheus metrics (`unwedge_*`), encoded with `prometheus-client`, served in
//!   both exposition formats ([`exposition`]).
//! - [`StatusView`]: the supervisor's state (workers, restarts, recent reports) as JSON;
//!   [`render_text`] prints it for a terminal (`unwedge status`).
//! - [`AdminServer`]: `GET /metrics`, `/status`, `/livez`, `/readyz` and a status page at `/`,
//!   on a loopback address unless told otherwise ([`parse_admin_addr`]).
//! - [`ReportDir`]: panic reports and abnormal exits appended as fsynced JSON lines, rotated
//!   by size; [`print_reports`] is `unwedge reports`.
//! - [`Alerter`]: webhook and exec alerts from their own task: de-duplicated, rate limited,
//!   retried, and never blocking the caller.
//!
//! The supervisor owns the state; this crate only needs a [`StatusView`] when asked (a
//! closure or a `watch` channel, see [`StatusSource`]) and calls to the `record_*` methods
//! of [`Metrics`].
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use unwedge_admin::*;
//!
//! let metrics = Arc::new(Metrics::new(env!("CARGO_PKG_VERSION")));
//! let (status_tx, status_rx) =
//!     tokio::sync::watch::channel(StatusView::new(SupervisorInfo::new("0.1.0", std::process::id())));
//! let admin = AdminServer::bind(DEFAULT_ADMIN_ADDR, status_rx.into(), metrics.clone()).await?.spawn();
//! let reports = ReportDir::open(ReportDirConfig::new("/var/lib/unwedge/reports"))?;
//! let alerter = Alerter::new(AlertConfig::new().webhook("http://127.0.0.1:9000/hook"), metrics.clone())?;
//!
//! // A worker died: make the report durable first, then count and alert.
//! let exit = ExitRecord::new(Some("w1"), Some(4242), ExitStatus { code: None, signal: Some(9) });
//! reports.append(&Record::Exit(exit.clone()))?;
//! metrics.record_restart(RestartReason::Signal);
//! alerter.send(AlertEvent::new(AlertKind::WorkerCrashed, "w1 killed by signal 9"));
//! # drop((status_tx, admin)); Ok(()) }
//! ```
//!
//! # Features
//!
//! - `https` (default): `https://` alert webhooks, with rustls (ring) and the system's root
//!   certificates (`SSL_CERT_FILE` / `SSL_CERT_DIR` override them). Without it, an https
//!   webhook URL is rejected at start-up.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod alert;
pub mod exposition;
mod metrics;
mod page;
mod process;
mod reports;
mod server;
mod status;
mod text;

pub use alert::{
    parse_webhook_url, AlertConfig, AlertError, AlertEvent, AlertKind, Alerter,
    RESERVED_ALERT_SLOTS,
};
pub use metrics::{HangKind, Metrics, CONTENT_TYPE, MAX_ROUTE_LABELS, MAX_ROUTE_LABEL_BYTES};
pub use page::{render_page, REDACTED_HEADERS};
pub use reports::{print_reports, read_reports, ReportDir, ReportDirConfig, ReportError};
pub use server::{
    parse_admin_addr, AdminError, AdminHandle, AdminServer, Detail, StatusSource,
    ADMIN_CONNECTION_LIFETIME, ADMIN_HEADER_TIMEOUT, ADMIN_MAX_REQUESTS_PER_CONNECTION,
    DEFAULT_ADMIN_ADDR, MAX_ADMIN_CONNECTIONS,
};
pub use status::{
    rfc3339, ExitRecord, ExitStatus, PanicRecord, Record, ReloadOutcome, RestartEvent,
    RestartReason, StatusView, SupervisorInfo, WorkerState, WorkerView, LOOP_STALL_LIMIT,
    MAX_REPORT_BACKTRACE, MAX_REPORT_FRAMES, MAX_REPORT_ITEMS, MAX_REPORT_OTHER, MAX_REPORT_TEXT,
    REDACTED,
};
pub use text::render_text;
