//! [`render_text`]: the status as a terminal shows it (`unwedge status`), for an operator on the
//! host who has no browser at hand.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::reports::{cut, visible, write_records};
use crate::status::{StatusView, WorkerState};

/// Width of the STATUS column (a longer `STATUS=` text is cut, marked with `…`).
const STATUS_WIDTH: usize = 24;

/// Reports listed at the end, the most recent ones.
const REPORTS_SHOWN: usize = 5;

/// `view` as plain text: the supervisor, the serving generation and the last reload, one line
/// per worker, the restarts by reason and the latest reports.
///
/// ```
/// use unwedge_admin::{render_text, StatusView, SupervisorInfo, WorkerState, WorkerView};
///
/// let mut view = StatusView::new(SupervisorInfo::new("0.1.0", 42));
/// view.supervisor.listen = vec!["127.0.0.1:8080".into()];
/// view.workers.push(WorkerView::new("w1", Some(43), WorkerState::Ready));
/// let text = render_text(&view);
/// assert!(text.starts_with("unwedge 0.1.0, pid 42, up 0s, listening on 127.0.0.1:8080\n"));
/// assert!(text.contains("workers: 1 ready of 1\n"));
/// assert!(text.contains("\nw1            43    1  ready "));
/// ```
pub fn render_text(view: &StatusView) -> String {
    let mut t = String::new();
    let s = &view.supervisor;
    let ports = view.workers.iter().any(|w| w.port.is_some());
    let listen = if s.listen.is_empty() && ports {
        "no shared socket: each worker on a port of its own".to_owned()
    } else if s.listen.is_empty() {
        "no sockets of its own".to_owned()
    } else {
        format!("listening on {}", visible(&s.listen.join(", ")))
    };
    let _ = writeln!(
        t,
        "unwedge {}, pid {}, up {}, {listen}",
        visible(&s.version),
        s.pid,
        secs(s.uptime_secs)
    );
    if s.gave_up {
        let why = s
            .gave_up_reason
            .as_deref()
            .map(|r| format!("{}; ", visible(r)))
            .unwrap_or_default();
        let _ = writeln!(
            t,
            "GAVE UP: {why}the supervisor is stopping every worker and exits 3"
        );
    }
    // Serving only once a worker is ready.
    let serving = if view.ready_workers() > 0 {
        "serving"
    } else if view.count(WorkerState::Starting) > 0 {
        "starting"
    } else {
        "not serving: no worker ready"
    };
    let _ = write!(t, "generation {} {serving}", s.generation);
    if s.reloading {
        let _ = write!(t, "; a reload is starting generation {}", s.generation + 1);
    }
    match &s.last_reload {
        Some(r) if r.ok => {
            let _ = write!(
                t,
                "; last reload: generation {} at {}",
                r.generation,
                visible(&r.at)
            );
        }
        Some(r) => {
            let _ = write!(
                t,
                "; LAST RELOAD FAILED: generation {} at {}: {}",
                r.generation,
                visible(&r.at),
                visible(r.reason.as_deref().unwrap_or("unknown"))
            );
        }
        None => {}
    }
    t.push('\n');

    let mut counts: Vec<String> = WorkerState::ALL
        .iter()
        .filter(|&&st| st != WorkerState::Ready)
        .filter_map(|&st| match view.count(st) {
            0 => None,
            n => Some(format!("{n} {st}")),
        })
        .collect();
    counts.insert(
        0,
        format!("{} ready of {}", view.ready_workers(), view.workers.len()),
    );
    let _ = writeln!(t, "workers: {}", counts.join(", "));
    let mut stopped_hard = Vec::new();
    if s.stop_timeouts > 0 {
        stopped_hard.push(format!(
            "{} worker(s) SIGKILLed at --stop-timeout",
            s.stop_timeouts
        ));
    }
    if s.leftover_processes > 0 {
        stopped_hard.push(format!(
            "{} leftover process(es) of exited workers stopped",
            s.leftover_processes
        ));
    }
    if !stopped_hard.is_empty() {
        let _ = writeln!(t, "since the start: {}", stopped_hard.join("; "));
    }
    if !view.workers.is_empty() {
        // The PORT column only in `--port-env` mode.
        let port_cell = |p: Option<u16>| {
            if ports {
                format!(
                    "{:>5}  ",
                    p.map_or_else(|| "-".to_owned(), |p| p.to_string())
                )
            } else {
                String::new()
            }
        };
        // The STATUS column only when a worker said one (`STATUS=`).
        let statuses = view.workers.iter().any(|w| w.status.is_some());
        let status_cell = |s: Option<&str>| {
            if statuses {
                format!(
                    "{:<STATUS_WIDTH$}  ",
                    s.map_or_else(|| "-".to_owned(), |s| cut(&visible(s), STATUS_WIDTH))
                )
            } else {
                String::new()
            }
        };
        let _ = writeln!(
            t,
            "{:<6}  {:>8}  {}{:>3}  {:<8}  {:>10}  {:>11}  {:>8}  {:<9}  {}LAST REPORT",
            "ID",
            "PID",
            if ports { " PORT  " } else { "" },
            "GEN",
            "STATE",
            "UPTIME",
            "MEMORY",
            "RESTARTS",
            "LAST EXIT",
            if statuses {
                format!("{:<STATUS_WIDTH$}  ", "STATUS")
            } else {
                String::new()
            },
        );
        for w in &view.workers {
            let _ = writeln!(
                t,
                "{:<6}  {:>8}  {}{:>3}  {:<8}  {:>10}  {:>11}  {:>8}  {:<9}  {}{}",
                visible(&w.id),
                w.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                port_cell(w.port),
                w.generation,
                w.state.as_str(),
                secs(w.uptime_secs),
                crate::status::mib(w.memory_bytes),
                w.restarts,
                w.last_exit
                    .map_or_else(|| "-".to_owned(), |e| e.to_string()),
                status_cell(w.status.as_deref()),
                w.last_report
                    .as_deref()
                    .map_or_else(|| "-".to_owned(), |r| cut(&visible(r), 100)),
            );
        }
    }

    if let Some(last) = view.restarts.last() {
        let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &view.restarts {
            *by_reason.entry(r.reason.as_str()).or_default() += 1;
        }
        let reasons: Vec<String> = by_reason.iter().map(|(r, n)| format!("{r} {n}")).collect();
        let _ = writeln!(
            t,
            "recent restarts: {} ({}); the last: {} {} at {}",
            view.restarts.len(),
            reasons.join(", "),
            visible(&last.worker),
            last.reason,
            visible(&last.time)
        );
    } else {
        let _ = writeln!(t, "recent restarts: none");
    }

    if view.reports.is_empty() {
        let _ = writeln!(t, "recent reports: none");
    } else {
        let shown = &view.reports[view.reports.len().saturating_sub(REPORTS_SHOWN)..];
        let _ = writeln!(
            t,
            "recent reports ({} of {}, oldest first):",
            shown.len(),
            view.reports.len()
        );
        let mut table = Vec::new();
        if write_records(shown, &mut table).is_ok() {
            t.push_str(&String::from_utf8_lossy(&table));
        }
    }
    // The fields a worker chose are made visible above; this catches any other string of a
    // /status that reached us (an endpoint is not necessarily ours): one line per line.
    t.split('\n').map(visible).collect::<Vec<_>>().join("\n")
}

/// Whole seconds, as `1h 2m 3s`.
fn secs(s: f64) -> String {
    let whole = if s.is_finite() && s > 0.0 {
        s as u64
    } else {
        0
    };
    humantime::format_duration(Duration::from_secs(whole)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{
        ExitRecord, ExitStatus, PanicRecord, Record, ReloadOutcome, RestartEvent, RestartReason,
        SupervisorInfo, WorkerView,
    };

    fn view() -> StatusView {
        let mut v = StatusView::new(SupervisorInfo::new("0.1.0", 4000));
        v.supervisor.uptime_secs = 3725.9;
        v.supervisor.listen = vec!["0.0.0.0:8080".into(), "unix:/run/app.sock".into()];
        v.supervisor.generation = 2;
        let mut w1 = WorkerView::new("w1", Some(4001), WorkerState::Ready);
        w1.generation = 2;
        w1.uptime_secs = 61.0;
        w1.memory_bytes = Some(178_675_712);
        let mut w2 = WorkerView::new("w2", Some(4002), WorkerState::Draining);
        w2.restarts = 3;
        w2.last_exit = Some(ExitStatus {
            code: Some(70),
            signal: None,
        });
        w2.last_report = Some("\"cart total overflowed\"\nat src/cart.rs:88:17".into());
        v.workers = vec![w1, w2];
        v.restarts = vec![
            RestartEvent::now("w2", RestartReason::ExitCode),
            RestartEvent::now("w2", RestartReason::Signal),
            RestartEvent::now("w1", RestartReason::ExitCode),
        ];
        let report = serde_json::json!({
            "time": "2026-11-29T01:00:00.000Z", "pid": 4002, "message": "cart total overflowed",
            "request": {"method": "POST", "path": "/cart/items", "request_id": "r1"},
        });
        v.reports = vec![
            Record::Panic(PanicRecord::new(Some("w2"), report)),
            Record::Exit(ExitRecord::new(
                Some("w2"),
                Some(4002),
                ExitStatus {
                    code: None,
                    signal: Some(9),
                },
            )),
        ];
        v
    }

    #[test]
    fn shows_the_supervisor_the_workers_the_restarts_and_the_reports() {
        let text = render_text(&view());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "unwedge 0.1.0, pid 4000, up 1h 2m 5s, listening on 0.0.0.0:8080, unix:/run/app.sock"
        );
        assert_eq!(lines[1], "generation 2 serving");
        assert_eq!(lines[2], "workers: 1 ready of 2, 1 draining");
        assert!(lines[3].starts_with("ID"), "{text}");
        assert!(
            lines[4].starts_with("w1          4001    2  ready"),
            "{text}"
        );
        assert!(lines[4].ends_with("  -"), "{text}");
        assert!(lines[4].contains("1m 1s    170.4 MiB  "), "{text}");
        assert!(
            lines[5].contains("0s            -  "),
            "unknown memory: {text}"
        );
        // The report summary stays on its worker's line.
        assert!(
            lines[5].ends_with("exit 70    \"cart total overflowed\" at src/cart.rs:88:17"),
            "{text}"
        );
        assert!(lines[5].contains("       3  "), "{text}");
        assert!(
            lines[6].starts_with(
                "recent restarts: 3 (exit_code 2, signal 1); the last: w1 exit_code at "
            ),
            "{text}"
        );
        assert_eq!(lines[7], "recent reports (2 of 2, oldest first):");
        assert!(lines[8].starts_with("TIME"), "{text}");
        assert!(lines[9].contains("POST /cart/items"), "{text}");
        assert!(lines[9].ends_with("cart total overflowed"), "{text}");
        assert!(lines[10].ends_with("signal 9"), "{text}");
        assert_eq!(lines.len(), 11, "{text}");
    }

    /// A worker's `STATUS=` text in a column of its own, cut to its width; no column while no
    /// worker said one.
    #[test]
    fn what_workers_say_of_themselves_is_a_column() {
        let mut v = view();
        v.workers[0].status = Some("warming caches 40%".into());
        v.workers[1].status = Some("a status far longer than the column is wide".into());
        let text = render_text(&v);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[3].ends_with("LAST EXIT  STATUS                    LAST REPORT"),
            "{text}"
        );
        assert!(
            lines[4].ends_with("  -          warming caches 40%        -"),
            "{text}"
        );
        assert!(
            lines[5].contains("exit 70    a status far longer tha…  \"cart"),
            "{text}"
        );
        let plain = render_text(&view());
        assert!(!plain.contains("STATUS"), "{plain}");
    }

    #[test]
    fn flags_what_needs_attention() {
        let mut v = view();
        v.supervisor.gave_up = true;
        v.supervisor.gave_up_reason = Some("worker w1 failed to start 21 times in a row".into());
        v.supervisor.reloading = true;
        v.supervisor.last_reload = Some(ReloadOutcome::now(
            2,
            Some("worker w1 exit status 1".into()),
        ));
        let text = render_text(&v);
        assert!(
            text.contains("\nGAVE UP: worker w1 failed to start 21 times in a row; the supervisor"),
            "{text}"
        );
        assert!(
            text.contains("generation 2 serving; a reload is starting generation 3; LAST RELOAD FAILED: generation 2 at "),
            "{text}"
        );
        assert!(text.contains(": worker w1 exit status 1\n"), "{text}");
        assert!(!text.contains("since the start"), "{text}");
        v.supervisor.stop_timeouts = 1;
        v.supervisor.leftover_processes = 3;
        let text = render_text(&v);
        assert!(
            text.contains("\nsince the start: 1 worker(s) SIGKILLed at --stop-timeout; 3 leftover process(es) of exited workers stopped\n"),
            "{text}"
        );
    }

    /// `--port-env` mode: no shared socket, each worker's port in a column of its own.
    #[test]
    fn workers_on_ports_of_their_own_show_them() {
        let mut v = view();
        v.supervisor.listen.clear();
        v.workers[0].port = Some(34629);
        let text = render_text(&v);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].ends_with(", no shared socket: each worker on a port of its own"),
            "{text}"
        );
        assert!(
            lines[3].starts_with("ID           PID   PORT  GEN  STATE"),
            "{text}"
        );
        assert!(
            lines[4].starts_with("w1          4001  34629    2  ready"),
            "{text}"
        );
        assert!(
            lines[5].starts_with("w2          4002      -    1  draining"),
            "{text}"
        );
        // Without ports, no column.
        assert!(!render_text(&view()).contains(" PORT "));
    }

    #[test]
    fn an_empty_supervisor_says_so() {
        let v = StatusView::new(SupervisorInfo::new("0.1.0", 1));
        let text = render_text(&v);
        assert_eq!(
            text,
            "unwedge 0.1.0, pid 1, up 0s, no sockets of its own\n\
             generation 1 not serving: no worker ready\n\
             workers: 0 ready of 0\n\
             recent restarts: none\n\
             recent reports: none\n"
        );
    }

    /// Serving only once a worker is ready: starting before, not serving when every worker
    /// is gone or going.
    #[test]
    fn a_generation_with_no_ready_worker_is_not_serving() {
        let mut v = view();
        v.workers[0].state = WorkerState::Starting;
        assert!(render_text(&v).contains("\ngeneration 2 starting\n"));
        v.workers[0].state = WorkerState::Exited;
        assert!(render_text(&v).contains("\ngeneration 2 not serving: no worker ready\n"));
    }

    /// Escape sequences a worker put in a panic message, a path, its STATUS or a reload
    /// reason: retitle the terminal (OSC), clear the screen (CSI, and its one-byte C1 form),
    /// reorder the text (RLO). None reaches the terminal; each shows as an escape.
    #[test]
    fn escape_sequences_from_workers_never_reach_the_terminal() {
        let evil = "pwn\u{1b}]0;owned\u{7}\u{1b}[2J\u{9b}2J\u{7f}\u{202e}txt.exe\r\nnext";
        let mut v = view();
        v.workers[1].last_report = Some(evil.into());
        v.workers[1].id = format!("w{evil}");
        v.supervisor.last_reload = Some(ReloadOutcome::now(2, Some(evil.into())));
        let report = serde_json::json!({
            "time": evil, "pid": 4002, "message": evil,
            "request": {"method": "GET", "path": format!("/{evil}"), "request_id": "r1"},
        });
        v.reports
            .push(Record::Panic(PanicRecord::new(Some(evil), report)));
        let text = render_text(&v);
        assert!(
            !text
                .chars()
                .any(|c| c != '\n' && (c.is_control() || c == '\u{202e}')),
            "{text:?}"
        );
        assert!(
            text.contains(r"pwn\x1b]0;owned\x07\x1b[2J\x9b2J\x7f\u{202e}txt.exe  next"),
            "{text}"
        );
        // The lines are the view's own: none was added by a line break in a field.
        assert_eq!(
            text.lines().count(),
            render_text(&view()).lines().count() + 1,
            "{text}"
        );
    }

    #[test]
    fn only_the_latest_reports_are_listed() {
        let mut v = view();
        let exit = |n: i32| {
            Record::Exit(ExitRecord::new(
                Some("w1"),
                Some(5000),
                ExitStatus {
                    code: Some(n),
                    signal: None,
                },
            ))
        };
        v.reports = (1..=8).map(exit).collect();
        let text = render_text(&v);
        assert!(
            text.contains("recent reports (5 of 8, oldest first):"),
            "{text}"
        );
        assert!(!text.contains("exit 3\n"), "{text}");
        assert!(
            text.contains("exit 4\n") && text.contains("exit 8\n"),
            "{text}"
        );
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever a worker put in a field `unwedge status` prints (C0 and C1 controls, ESC
        /// sequences, bidirectional controls, line breaks, multibyte characters), no control
        /// character reaches the terminal and no line is added.
        #[test]
        fn no_worker_text_reaches_the_terminal_raw(
            evil in proptest::collection::vec(
                proptest::collection::vec(
                    prop::sample::select(&[
                        "a", " ", "\u{1b}", "\u{7}", "\u{7f}", "\u{85}", "\u{9b}", "\u{202e}",
                        "\u{2066}", "\u{61c}", "\r", "\n", "\t", "\0", "é", "日本", "🦀",
                    ][..]),
                    0..40,
                )
                .prop_map(|p| p.concat()),
                6,
            ),
        ) {
            let mut v = view();
            v.workers[1].last_report = Some(evil[0].clone());
            v.workers[1].id = evil[1].clone();
            v.supervisor.last_reload = Some(ReloadOutcome::now(2, Some(evil[2].clone())));
            let report = serde_json::json!({
                "time": evil[3], "pid": 4002, "message": evil[4],
                "request": {"method": "GET", "path": format!("/{}", evil[5]), "request_id": "r1"},
            });
            v.reports.push(Record::Panic(PanicRecord::new(Some(&evil[3]), report)));
            let text = render_text(&v);
            let bidi = ['\u{202e}', '\u{2066}', '\u{61c}'];
            prop_assert!(!text.chars().any(|c| c != '\n' && (c.is_control() || bidi.contains(&c))), "{text:?}");
            prop_assert_eq!(text.lines().count(), render_text(&view()).lines().count() + 1);
        }
    }
}
