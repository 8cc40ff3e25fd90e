//! [`Metrics`]: the supervisor's Prometheus metrics, every name prefixed `unwedge_` but the
//! standard `process_*` ones of the supervisor's own process.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::process::{ProcessCollector, WorkerCpu};
use crate::status::{RestartReason, StatusView, WorkerState, WorkerView};

/// The content type of [`Metrics::encode`]'s output (OpenMetrics text, which Prometheus
/// scrapes natively); [`Metrics::encode_text`]'s is
/// [`TEXT_CONTENT_TYPE`](crate::exposition::TEXT_CONTENT_TYPE).
pub const CONTENT_TYPE: &str = crate::exposition::OPENMETRICS_CONTENT_TYPE;

type Labels = Vec<(&'static str, String)>;

/// Most distinct `route` labels of `unwedge_panics_total`; the rest count as `other`.
pub const MAX_ROUTE_LABELS: usize = 100;

/// Longest `route` label value of `unwedge_panics_total`, in bytes; a longer route is cut
/// (and ends with `…`).
pub const MAX_ROUTE_LABEL_BYTES: usize = 200;

/// `route` made safe as a label value: `prometheus-client` writes label values as they are,
/// so a `"`, a `\` or a line break in a request path (the http crate accepts `"` and `\`)
/// would end the value early and break every later scrape. Those, `%`-style, become
/// `%22`, `%5C`, and `%XX` for each byte of any control character (C0, DEL, C1); the result
/// is cut to [`MAX_ROUTE_LABEL_BYTES`] on a character boundary.
fn route_label(route: &str) -> String {
    const ELLIPSIS: char = '…';
    let mut out = String::with_capacity(route.len().min(MAX_ROUTE_LABEL_BYTES));
    // Where `out` may be cut so that the ellipsis fits: never inside an escape.
    let mut fits = 0;
    for c in route.chars() {
        if c == '"' || c == '\\' || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
        if out.len() > MAX_ROUTE_LABEL_BYTES {
            out.truncate(fits);
            out.push(ELLIPSIS);
            return out;
        }
        if out.len() + ELLIPSIS.len_utf8() <= MAX_ROUTE_LABEL_BYTES {
            fits = out.len();
        }
    }
    out
}

/// A kind of hang detection: the `kind` label of `unwedge_hangs_detected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HangKind {
    /// Missed `WATCHDOG=1` heartbeats.
    Watchdog,
    /// Failed HTTP probes.
    Probe,
    /// The worker said it is wedged (`STATUS=wedged: …`): a stalled runtime, a lock wait
    /// over its limit, a deadlock, stuck requests; its reason is in the log line and the
    /// `worker_hung` alert.
    Wedged,
    /// The worker did not become ready within the ready timeout.
    ReadyTimeout,
}

impl HangKind {
    /// Every kind.
    pub const ALL: [HangKind; 4] = [
        HangKind::Watchdog,
        HangKind::Probe,
        HangKind::Wedged,
        HangKind::ReadyTimeout,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            HangKind::Watchdog => "watchdog",
            HangKind::Probe => "probe",
            HangKind::Wedged => "wedged",
            HangKind::ReadyTimeout => "ready_timeout",
        }
    }
}

/// Every metric the supervisor exports.
///
/// Cheap to record from any thread (atomics behind the scenes); share it as `Arc<Metrics>`.
/// Per-state and per-worker gauges and the uptime are refreshed from a [`StatusView`] with
/// [`Metrics::observe_status`], which the admin server does on every scrape.
///
/// ```
/// use unwedge_admin::{Metrics, RestartReason};
///
/// let metrics = Metrics::new("0.1.0");
/// metrics.record_restart(RestartReason::Signal);
/// metrics.record_panic("/cart");
/// let text = metrics.encode();
/// assert!(text.contains(r#"unwedge_restarts_total{reason="signal"} 1"#));
/// assert!(text.contains(r#"unwedge_panics_total{route="/cart"} 1"#));
/// assert!(text.contains(r#"unwedge_build_info{version="0.1.0"} 1"#));
/// ```
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    workers: Family<Labels, Gauge>,
    worker_uptime: Family<Labels, Gauge<f64, AtomicU64>>,
    worker_restarts: Family<Labels, Gauge>,
    worker_memory: Family<Labels, Gauge>,
    worker_ids: Mutex<BTreeSet<String>>,
    /// Route labels of `panics` so far (at most [`MAX_ROUTE_LABELS`]).
    panic_routes: Mutex<BTreeSet<String>>,
    restarts: Family<Labels, Counter>,
    panics: Family<Labels, Counter>,
    hangs: Family<Labels, Counter>,
    crash_to_ready: Histogram,
    uptime: Gauge<f64, AtomicU64>,
    gave_up: Gauge,
    notify_forged: Counter,
    notify_malformed: Counter,
    alerts_sent: Family<Labels, Counter>,
    alerts_failed: Family<Labels, Counter>,
    alerts_dropped: Family<Labels, Counter>,
    reports_written: Counter,
    reports_failed: Counter,
    stop_timeouts: Counter,
    leftover_processes: Counter,
    oom_killed_other: Counter,
    log_lines_dropped: Counter,
    worker_cpu: WorkerCpu,
}

impl Metrics {
    /// A registry with every metric at zero; `version` goes into `unwedge_build_info`.
    pub fn new(version: &str) -> Self {
        // The standard `process_*` names have no prefix; everything else is `unwedge_…`.
        let mut root = Registry::default();
        root.register_collector(Box::new(ProcessCollector));
        let registry = root.sub_registry_with_prefix("unwedge");
        let m = Metrics {
            registry: Registry::default(),
            workers: Family::default(),
            worker_uptime: Family::default(),
            worker_restarts: Family::default(),
            worker_memory: Family::default(),
            worker_ids: Mutex::new(BTreeSet::new()),
            panic_routes: Mutex::new(BTreeSet::new()),
            restarts: Family::default(),
            panics: Family::default(),
            hangs: Family::default(),
            // 1 ms … ~33 s
            crash_to_ready: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            uptime: Gauge::default(),
            gave_up: Gauge::default(),
            notify_forged: Counter::default(),
            notify_malformed: Counter::default(),
            alerts_sent: Family::default(),
            alerts_failed: Family::default(),
            alerts_dropped: Family::default(),
            reports_written: Counter::default(),
            reports_failed: Counter::default(),
            stop_timeouts: Counter::default(),
            leftover_processes: Counter::default(),
            oom_killed_other: Counter::default(),
            log_lines_dropped: Counter::default(),
            worker_cpu: WorkerCpu::default(),
        };
        registry.register_collector(Box::new(m.worker_cpu.clone()));
        registry.register(
            "build",
            "unwedge build information",
            Info::new(vec![("version", version.to_owned())]),
        );
        registry.register_with_unit(
            "uptime",
            "Seconds since the supervisor started",
            Unit::Seconds,
            m.uptime.clone(),
        );
        registry.register(
            "gave_up",
            "1 once the supervisor gave up (a worker failed to start more than --max-restarts times in a row, or the restart intensity was exceeded)",
            m.gave_up.clone(),
        );
        registry.register("workers", "Workers by state", m.workers.clone());
        registry.register_with_unit(
            "worker_uptime",
            "Seconds since each worker's current process started",
            Unit::Seconds,
            m.worker_uptime.clone(),
        );
        registry.register(
            "worker_restarts",
            "Restarts of each worker slot",
            m.worker_restarts.clone(),
        );
        registry.register_with_unit(
            "worker_resident",
            "Memory of each worker's current process as --max-memory counts it (RSS; with child processes, the PSS of its process tree)",
            Unit::Bytes,
            m.worker_memory.clone(),
        );
        registry.register("restarts", "Worker restarts by reason", m.restarts.clone());
        registry.register(
            "panics",
            "Panic reports received from workers, by route",
            m.panics.clone(),
        );
        registry.register(
            "hangs_detected",
            "Hung workers detected, by detection kind",
            m.hangs.clone(),
        );
        registry.register_with_unit(
            "crash_to_ready",
            "Time from a worker's end to its replacement's READY",
            Unit::Seconds,
            m.crash_to_ready.clone(),
        );
        registry.register(
            "notify_forged",
            "Notify messages ignored because they came from a process that is not a worker",
            m.notify_forged.clone(),
        );
        registry.register(
            "notify_malformed",
            "Notify lines ignored because they are not KEY=value assignments (the rest of their \
             message is used), and empty or unreadable notify datagrams",
            m.notify_malformed.clone(),
        );
        registry.register(
            "alerts_sent",
            "Alerts delivered, by sink",
            m.alerts_sent.clone(),
        );
        registry.register(
            "alerts_failed",
            "Alerts that could not be delivered after retries, by sink",
            m.alerts_failed.clone(),
        );
        registry.register(
            "alerts_dropped",
            "Alerts not sent: reason is duplicate, rate_limited or queue_full",
            m.alerts_dropped.clone(),
        );
        registry.register(
            "reports_written",
            "Records appended to the report directory",
            m.reports_written.clone(),
        );
        registry.register(
            "reports_failed",
            "Records that could not be written to the report directory",
            m.reports_failed.clone(),
        );
        registry.register(
            "stop_timeouts",
            "Workers sent SIGKILL because they did not stop within --stop-timeout (their requests in flight were cut off)",
            m.stop_timeouts.clone(),
        );
        registry.register(
            "leftover_processes",
            "Processes found still running in the process group of a worker that exited, and stopped (SIGTERM, then SIGKILL after --stop-timeout)",
            m.leftover_processes.clone(),
        );
        registry.register(
            "oom_killed_other",
            "Processes of the supervisor's cgroup that were not workers (a worker's own children) killed by the kernel's OOM killer",
            m.oom_killed_other.clone(),
        );
        registry.register(
            "log_lines_dropped",
            "Supervisor log lines dropped because stderr did not keep up",
            m.log_lines_dropped.clone(),
        );
        // Every known label value shows up at 0 before it first happens: increase() needs a
        // sample before the first event, or the first crash or hang never alerts.
        for state in WorkerState::ALL {
            m.workers
                .get_or_create(&vec![("state", state.as_str().to_owned())])
                .set(0);
        }
        for reason in RestartReason::ALL {
            m.restarts
                .get_or_create(&vec![("reason", reason.as_str().to_owned())])
                .inc_by(0);
        }
        for kind in HangKind::ALL {
            m.hangs
                .get_or_create(&vec![("kind", kind.as_str().to_owned())])
                .inc_by(0);
        }
        for sink in ["webhook", "exec"] {
            let labels = vec![("sink", sink.to_owned())];
            m.alerts_sent.get_or_create(&labels).inc_by(0);
            m.alerts_failed.get_or_create(&labels).inc_by(0);
        }
        for reason in ["duplicate", "rate_limited", "queue_full"] {
            m.alerts_dropped
                .get_or_create(&vec![("reason", reason.to_owned())])
                .inc_by(0);
        }
        Metrics {
            registry: root,
            ..m
        }
    }

    /// Counts one restart.
    pub fn record_restart(&self, reason: RestartReason) {
        self.restarts
            .get_or_create(&vec![("reason", reason.as_str().to_owned())])
            .inc();
    }

    /// Counts one panic report; `route` is the request path (or `task:NAME`, or `unknown`).
    /// At most [`MAX_ROUTE_LABELS`] routes get a series of their own; panics on further routes
    /// count under `route="other"` (a raw path is the client's choice, and every label value is
    /// a series Prometheus keeps). The label value is made safe first: `"`, `\` and control
    /// characters are percent-encoded (`%22`, `%5C`, `%0A`, …), and a route longer than
    /// [`MAX_ROUTE_LABEL_BYTES`] is cut, so no request path can break the exposition.
    pub fn record_panic(&self, route: &str) {
        let route = route_label(route);
        let route = {
            let mut seen = self.panic_routes.lock().unwrap_or_else(|p| p.into_inner());
            if seen.contains(&route) || seen.len() < MAX_ROUTE_LABELS {
                seen.insert(route.clone());
                route
            } else {
                "other".to_owned()
            }
        };
        self.panics.get_or_create(&vec![("route", route)]).inc();
    }

    /// Counts one hung worker.
    pub fn record_hang(&self, kind: HangKind) {
        self.hangs
            .get_or_create(&vec![("kind", kind.as_str().to_owned())])
            .inc();
    }

    /// Observes the time from a worker's end to its replacement's READY.
    pub fn record_crash_to_ready(&self, elapsed: std::time::Duration) {
        self.crash_to_ready.observe(elapsed.as_secs_f64());
    }

    /// Counts `n` forged (ignored) notify messages.
    pub fn record_notify_forged(&self, n: u64) {
        self.notify_forged.inc_by(n);
    }

    /// Counts `n` notify lines that were not assignments (ignored).
    ///
    /// ```
    /// let m = unwedge_admin::Metrics::new("0.1.0");
    /// m.record_notify_malformed(2);
    /// assert!(m.encode().contains("unwedge_notify_malformed_total 2"));
    /// ```
    pub fn record_notify_malformed(&self, n: u64) {
        self.notify_malformed.inc_by(n);
    }

    /// Counts one alert delivered to `sink` (`webhook`, `exec`).
    pub fn record_alert_sent(&self, sink: &str) {
        self.alerts_sent
            .get_or_create(&vec![("sink", sink.to_owned())])
            .inc();
    }

    /// Counts one alert `sink` failed to deliver after its retries.
    pub fn record_alert_failed(&self, sink: &str) {
        self.alerts_failed
            .get_or_create(&vec![("sink", sink.to_owned())])
            .inc();
    }

    /// Counts one alert not sent at all (`duplicate`, `rate_limited`, `queue_full`).
    pub fn record_alert_dropped(&self, reason: &str) {
        self.alerts_dropped
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }

    /// Counts one record written to (`ok`) or lost by the report directory.
    pub fn record_report_written(&self, ok: bool) {
        if ok {
            self.reports_written.inc();
        } else {
            self.reports_failed.inc();
        }
    }

    /// Counts one worker killed because it did not stop within `--stop-timeout`.
    pub fn record_stop_timeout(&self) {
        self.stop_timeouts.inc();
    }

    /// Counts `n` processes a worker left running in its process group when it exited.
    pub fn record_leftover_processes(&self, n: u64) {
        self.leftover_processes.inc_by(n);
    }

    /// Counts processes of the supervisor's cgroup that were not workers, killed by the OOM
    /// killer.
    pub fn record_oom_killed_other(&self, n: u64) {
        self.oom_killed_other.inc_by(n);
    }

    /// Counts `n` more supervisor log lines dropped (its log queue was full).
    pub fn record_log_lines_dropped(&self, n: u64) {
        self.log_lines_dropped.inc_by(n);
    }

    /// Sets the workers-by-state, per-worker and uptime gauges from `view`. The per-worker
    /// series are one per slot: of its process that serves (the ready one, else the newest).
    pub fn observe_status(&self, view: &StatusView) {
        for state in WorkerState::ALL {
            let n = i64::try_from(view.count(state)).unwrap_or(i64::MAX);
            self.workers
                .get_or_create(&vec![("state", state.as_str().to_owned())])
                .set(n);
        }
        // Workers come and go (scale down): drop the series of slots that are gone, without
        // clearing the others (a concurrent scrape would miss them).
        let current: BTreeSet<String> = view.workers.iter().map(|w| w.id.clone()).collect();
        let mut seen = self.worker_ids.lock().unwrap_or_else(|e| e.into_inner());
        for gone in seen.difference(&current) {
            let labels = vec![("worker", gone.clone())];
            self.worker_uptime.remove(&labels);
            self.worker_restarts.remove(&labels);
            self.worker_memory.remove(&labels);
        }
        *seen = current;
        drop(seen);
        let shown = serving_per_slot(&view.workers);
        for w in &shown {
            let labels = vec![("worker", w.id.clone())];
            self.worker_uptime.get_or_create(&labels).set(w.uptime_secs);
            self.worker_restarts
                .get_or_create(&labels)
                .set(i64::try_from(w.restarts).unwrap_or(i64::MAX));
            match w.memory_bytes {
                Some(b) => {
                    self.worker_memory
                        .get_or_create(&labels)
                        .set(i64::try_from(b).unwrap_or(i64::MAX));
                }
                None => {
                    self.worker_memory.remove(&labels);
                }
            }
        }
        self.worker_cpu.observe(
            shown
                .iter()
                .filter_map(|w| Some((w.id.clone(), w.pid?)))
                .collect(),
        );
        self.uptime.set(view.supervisor.uptime_secs);
        self.gave_up.set(i64::from(view.supervisor.gave_up));
    }

    /// The OpenMetrics text exposition of every metric (see [`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        encode(&mut out, &self.registry).expect("encoding metrics into a String");
        out
    }

    /// The same metrics in the Prometheus text format (`text/plain; version=0.0.4`), for
    /// scrapers that do not ask for OpenMetrics (see [`crate::exposition`]).
    ///
    /// ```
    /// let m = unwedge_admin::Metrics::new("1.2.3");
    /// let text = m.encode_text();
    /// assert!(text.contains("# TYPE unwedge_build_info gauge\n"));
    /// assert!(text.contains("# TYPE unwedge_restarts_total counter\n"));
    /// assert!(!text.contains("# EOF"));
    /// ```
    pub fn encode_text(&self) -> String {
        crate::exposition::openmetrics_to_text(&self.encode())
    }
}

/// One process per worker slot, for the series labelled by slot: the one that serves (ready),
/// else the newest (latest generation, then started last). Two processes share a slot while
/// one replaces the other (a reload, a `--max-memory` or `--max-lifetime` rotation, a tainted
/// or hung worker): both would write the same series, a duplicate in the exposition, and the
/// gauges would show whichever came last, the replacement still starting rather than the
/// worker over its memory limit.
fn serving_per_slot(workers: &[WorkerView]) -> Vec<&WorkerView> {
    let rank = |w: &WorkerView| (w.state == WorkerState::Ready, w.generation);
    let mut by_slot: std::collections::BTreeMap<&str, &WorkerView> = Default::default();
    for w in workers {
        by_slot
            .entry(w.id.as_str())
            .and_modify(|kept| {
                let newer = rank(w) > rank(kept)
                    || (rank(w) == rank(kept) && w.uptime_secs < kept.uptime_secs);
                if newer {
                    *kept = w;
                }
            })
            .or_insert(w);
    }
    by_slot.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{SupervisorInfo, WorkerView};

    #[test]
    fn panic_route_labels_are_bounded() {
        let m = Metrics::new("t");
        for i in 0..MAX_ROUTE_LABELS + 20 {
            m.record_panic(&format!("/items/{i}"));
        }
        m.record_panic("/items/0");
        let text = m.encode();
        let series = text
            .lines()
            .filter(|l| l.starts_with("unwedge_panics_total{"))
            .count();
        assert_eq!(series, MAX_ROUTE_LABELS + 1, "{text}");
        assert!(
            text.contains(r#"unwedge_panics_total{route="other"} 20"#),
            "{text}"
        );
        assert!(
            text.contains(r#"unwedge_panics_total{route="/items/0"} 2"#),
            "{text}"
        );
    }

    /// Every `unwedge_panics_total` sample's label value, read strictly: `{route="` … `"} N`
    /// with no `"`, `\\` or line break inside, so no escape handling is needed to read it.
    fn route_values(text: &str) -> Vec<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix("unwedge_panics_total{route=\""))
            .map(|rest| {
                let (value, after) = rest.split_once('"').expect("a closed label value");
                assert!(after.starts_with("} "), "label value ends early: {rest}");
                assert!(!value.contains('\\'), "{value}");
                value.to_owned()
            })
            .collect()
    }

    #[test]
    fn hostile_routes_cannot_break_the_exposition() {
        let m = Metrics::new("t");
        m.record_panic("/files/a\"b\\c");
        m.record_panic("/x\ny\r\u{1b}[2J\u{7f}\u{85}é");
        m.record_panic(&"/long/\"".repeat(1000));
        m.record_panic(&"/long/\"".repeat(1000));
        let text = m.encode();
        let mut values = route_values(&text);
        values.sort();
        assert_eq!(values.len(), 3, "{text}");
        assert_eq!(values[0], "/files/a%22b%5Cc");
        assert!(values[1].starts_with("/long/%22/long/%22"), "{values:?}");
        let cut = values[1].strip_suffix('…').expect("cut and marked");
        assert!(
            cut.ends_with("/long/%22") || cut.ends_with("/long/"),
            "cut in an escape: {values:?}"
        );
        assert!(values[1].len() <= MAX_ROUTE_LABEL_BYTES, "{values:?}");
        assert_eq!(values[2], "/x%0Ay%0D%1B[2J%7F%C2%85é");
        assert!(text.contains("…\"} 2\n"), "{text}");
        // No line of the exposition but its own kinds: every line a comment or a sample.
        for line in text.lines() {
            assert!(
                line.starts_with('#')
                    || line
                        .rsplit_once(' ')
                        .is_some_and(|(_, v)| v.parse::<f64>().is_ok()),
                "{line:?}"
            );
        }
    }

    /// The value of the sample line that starts with `series ` in `text`.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn the_supervisor_and_each_worker_session_report_their_cpu_and_memory() {
        let m = Metrics::new("t");
        // The standard process collector's names, unprefixed.
        let text = m.encode();
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            let v = sample(&text, name).unwrap_or_else(|| panic!("no {name} in {text}"));
            // A fresh test process may not have used a clock tick of CPU yet.
            assert!(v > 0.0 || name == "process_cpu_seconds_total", "{name} {v}");
        }
        assert!(
            text.contains("# TYPE process_cpu_seconds counter"),
            "{text}"
        );

        // A worker (leading its session, as the shim makes every worker) whose child burns
        // CPU in a process group of its own (a shell's background job with job control): the
        // session's time is counted.
        let worker = std::process::Command::new("setsid")
            .args([
                "sh",
                "-c",
                "python3 -c 'import os; os.setpgid(0, 0); any(iter(int, 1))' & wait",
            ])
            .spawn()
            .unwrap();
        let pid = worker.id();
        // Stopped whatever happens below: a spinning process must not outlive the test.
        struct Session(std::process::Child);
        impl Drop for Session {
            fn drop(&mut self) {
                kill_session(self.0.id());
                let _ = self.0.wait();
            }
        }
        let worker = Session(worker);
        let mut view = StatusView::new(SupervisorInfo::new("t", 1));
        view.workers
            .push(WorkerView::new("w1", Some(pid), WorkerState::Ready));
        let series = r#"unwedge_worker_cpu_seconds_total{worker="w1"}"#;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let seconds = loop {
            m.observe_status(&view);
            // None until `setsid` has made the session (it runs a moment after the spawn).
            let v = sample(&m.encode(), series).unwrap_or(0.0);
            if v >= 0.2 || std::time::Instant::now() > deadline {
                break v;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert!(seconds >= 0.2, "{seconds}");
        // Scrapes closer together than CPU_SCAN_INTERVAL share one pass over /proc: the same
        // sum, though the child spins on (5 clock ticks in 50 ms).
        let t = std::time::Instant::now();
        let first = sample(&m.encode(), series).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let second = sample(&m.encode(), series).unwrap();
        if t.elapsed() < crate::process::CPU_SCAN_INTERVAL {
            assert_eq!(first, second);
        }
        drop(worker);
        // Gone from the view: gone from the scrape.
        view.workers.clear();
        m.observe_status(&view);
        assert_eq!(sample(&m.encode(), series), None);
    }

    /// SIGKILL to every process of session `sid`.
    fn kill_session(sid: u32) {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                continue;
            };
            // Field 6 of proc(5), the fourth after the command name.
            if rest.split_whitespace().nth(3) == Some(&sid.to_string()) {
                if let Some(p) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
            }
        }
    }

    #[test]
    fn per_worker_series_follow_the_workers() {
        let m = Metrics::new("t");
        let mut view = StatusView::new(SupervisorInfo::new("t", 1));
        for id in 1..=3 {
            let mut w = WorkerView::new(format!("w{id}"), Some(10 + id), WorkerState::Ready);
            w.memory_bytes = Some(u64::from(id) << 20);
            view.workers.push(w);
        }
        m.observe_status(&view);
        let text = m.encode();
        assert!(text.contains(r#"unwedge_worker_restarts{worker="w3"} 0"#));
        assert!(
            text.contains(r#"unwedge_worker_resident_bytes{worker="w3"} 3145728"#),
            "{text}"
        );
        view.workers.truncate(1);
        view.workers[0].memory_bytes = None;
        m.observe_status(&view);
        let text = m.encode();
        assert!(text.contains(r#"unwedge_worker_restarts{worker="w1"} 0"#));
        assert!(!text.contains(r#"worker="w3""#), "{text}");
        // A process whose memory could not be read has no value, not a stale one.
        assert!(!text.contains("unwedge_worker_resident_bytes{"), "{text}");
        assert!(text.contains(r#"unwedge_workers{state="ready"} 1"#));
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Any route a worker reports (a raw path is the client's choice) becomes a label
        /// value of at most MAX_ROUTE_LABEL_BYTES with no `"`, `\` or control character: it
        /// cannot end its value early or break the scrape.
        #[test]
        fn any_route_is_a_safe_bounded_label(
            route in proptest::collection::vec(
                prop::sample::select(&[
                    "a", "/", "{", "}", "%", "\"", "\\", "\n", "\r", "\0", "\u{1b}", "\u{85}", "é",
                    "日本", "🦀",
                ][..]),
                0..260,
            ),
        ) {
            let label = route_label(&route.concat());
            prop_assert!(label.len() <= MAX_ROUTE_LABEL_BYTES, "{}", label.len());
            prop_assert!(!label.contains(|c: char| c == '"' || c == '\\' || c.is_control()));
        }
    }
}
