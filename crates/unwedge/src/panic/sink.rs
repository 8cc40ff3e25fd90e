//! Where panic reports go: a structured `tracing` event, the [`ReportSink`]s, the health
//! registry.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, RwLock};

use super::report::{Action, PanicReport};

/// A destination for [`PanicReport`]s besides the `tracing` event every report becomes.
///
/// Sinks are called synchronously on the thread that caught the panic, before the policy's
/// decision takes effect (so a report is out before a crash is requested): keep `report`
/// quick, and hand slow work (network, disk) to a channel. A sink that panics is skipped.
///
/// Any `Fn(&PanicReport) + Send + Sync + 'static` is a sink:
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use unwedge::{PanicLayer, PanicReport};
///
/// let seen = Arc::new(Mutex::new(Vec::<String>::new()));
/// let sink = {
///     let seen = seen.clone();
///     move |r: &PanicReport| seen.lock().unwrap().push(r.summary())
/// };
/// let layer = PanicLayer::new().sink(Arc::new(sink));
/// # let _ = layer;
/// ```
pub trait ReportSink: Send + Sync + 'static {
    /// Receives one report.
    fn report(&self, report: &PanicReport);
}

impl<F> ReportSink for F
where
    F: Fn(&PanicReport) + Send + Sync + 'static,
{
    fn report(&self, report: &PanicReport) {
        self(report)
    }
}

fn global() -> &'static RwLock<Vec<Arc<dyn ReportSink>>> {
    static SINKS: RwLock<Vec<Arc<dyn ReportSink>>> = RwLock::new(Vec::new());
    &SINKS
}

/// Adds a process-wide sink: it receives every report, from every
/// [`PanicLayer`](crate::PanicLayer) and every [`spawn`](crate::spawn)ed task.
/// [`serve`](crate::serve()) adds one that forwards reports to the supervisor.
///
/// ```
/// use std::sync::Arc;
/// unwedge::panic::add_sink(Arc::new(|r: &unwedge::PanicReport| eprintln!("{}", r.summary())));
/// ```
pub fn add_sink(sink: Arc<dyn ReportSink>) {
    global()
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .push(sink);
}

/// Sends `report` everywhere: the tracing event, the layer's `sinks`, the global sinks and
/// the health registry (under `route`).
pub(crate) fn emit(report: &PanicReport, sinks: &[Arc<dyn ReportSink>], route: &str) {
    let route = crate::health::route_key(route);
    let route = route.as_ref();
    trace_event(report, route);
    let global: Vec<Arc<dyn ReportSink>> =
        global().read().unwrap_or_else(|p| p.into_inner()).clone();
    for sink in sinks.iter().chain(global.iter()) {
        // A broken sink must not take the report's other destinations down with it.
        let _ = catch_unwind(AssertUnwindSafe(|| sink.report(report)));
    }
    crate::health::record_panic(route, report.clone());
}

fn trace_event(report: &PanicReport, route: &str) {
    let (action, reason) = match &report.decision {
        Some(d) => (
            match d.action {
                Action::Recover => "recover",
                Action::Crash => "crash",
            },
            d.reason.as_str(),
        ),
        None => ("", ""),
    };
    let (method, path, request_id, headers) = match &report.request {
        Some(r) => (
            r.method.as_str(),
            r.path.as_str(),
            r.request_id.as_str(),
            format!("{:?}", r.headers),
        ),
        None => ("", "", "", String::new()),
    };
    tracing::error!(
        target: "unwedge::panic",
        panic_message = %crate::text::Escaped(&report.message),
        location = report.location.as_deref().unwrap_or(""),
        thread = report.thread.as_deref().unwrap_or(""),
        route,
        method = method,
        path = path,
        request_id,
        headers = %headers,
        task = report.task.as_deref().unwrap_or(""),
        rolled_back = ?report.rolled_back,
        poisoned = ?report.poisoned,
        decision = action,
        decision_reason = reason,
        "panic caught: {}",
        report.summary()
    );
    if let Some(bt) = &report.backtrace {
        tracing::debug!(target: "unwedge::panic", route, request_id, backtrace = %bt, "panic backtrace");
    }
}
