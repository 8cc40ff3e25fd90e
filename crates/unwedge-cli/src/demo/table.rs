//! What the run means: failures attributed, latencies from the supervisor's events, the
//! final tables and the `--check` verdicts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use unwedge_load::{LoadReport, Progress};
use unwedge_supervisor::{Counters, Event};

use super::client::Reply;
use super::scenario::{Action, Own, Record, SideResult};

/// Requests in flight on a worker that is SIGKILLed (by `kill -9`, or by the supervisor after
/// a hang) are lost: the margin after the worker's exit within which a failure counts so.
const KILL_MARGIN: Duration = Duration::from_millis(300);

/// How long before the demo saw the supervisor's hang verdict its kill may already have cut
/// requests: the supervisor signals the worker and then publishes the event, which the demo's
/// subscriber takes when its task next runs (tens of milliseconds later on a loaded machine:
/// a request reset 10 ms "before" the verdict failed CI once).
const HANG_EVENT_LAG: Duration = Duration::from_millis(200);

/// One side's figures.
#[derive(Debug, Clone)]
pub(crate) struct Analysis {
    pub(crate) load: LoadReport,
    pub(crate) own: Own,
    pub(crate) injected: Vec<Record>,
    /// Failures without a response (reset, timeout, other) inside a kill window.
    pub(crate) lost_to_kill: u64,
    /// Failures without a response (reset, timeout, other) outside every kill window.
    pub(crate) reset_unattributed: u64,
    pub(crate) timeout_unattributed: u64,
    pub(crate) other_unattributed: u64,
    pub(crate) refused: u64,
    /// When the failures outside every kill window happened, for the reader of a failed
    /// `--check` to find them in the event log: `reset at 6.15–6.20s (load)`.
    pub(crate) unattributed_at: Vec<String>,
    pub(crate) restarts: BTreeMap<&'static str, u64>,
    pub(crate) hang_latency: Vec<(Action, Duration)>,
    pub(crate) crash_to_ready: Vec<Duration>,
    pub(crate) reports: u64,
    pub(crate) panics_answered: u64,
    pub(crate) injected_panics_unanswered: u64,
    /// The injected panics not answered 500 (outside kill windows), described.
    pub(crate) unanswered: Vec<String>,
    pub(crate) reloads: u64,
}

fn fails(p: &Progress) -> (u64, u64, u64) {
    (p.reset, p.timeout, p.other)
}

/// Attributes failures, reads latencies from the event log.
pub(crate) fn analyse(
    side: &SideResult,
    log: &[(Instant, Event)],
    counters: &Counters,
) -> Analysis {
    let supervised = !log.is_empty();
    let exit_of = |pid: i32, after: Instant| {
        log.iter().find_map(|(t, e)| match e {
            Event::WorkerExited { pid: p, .. } if *p == pid && *t >= after => Some(*t),
            _ => None,
        })
    };
    // Kill windows: from the signal (or the supervisor's hang verdict) until the worker is
    // gone, plus a margin.
    let mut windows: Vec<(Instant, Instant)> = Vec::new();
    for r in &side.injected {
        if let (Action::Kill9 | Action::Stop, Some(pid)) = (r.action, r.pid) {
            let end = exit_of(pid, r.at).unwrap_or(r.at + Duration::from_secs(5));
            windows.push((r.at, end + KILL_MARGIN));
        }
    }
    let mut hang_latency = Vec::new();
    for (t, e) in log {
        if let Event::Hung { pid, .. } = e {
            let end = exit_of(*pid, *t).unwrap_or(*t + Duration::from_secs(5));
            let start = t.checked_sub(HANG_EVENT_LAG).unwrap_or(*t);
            windows.push((start, end + KILL_MARGIN));
        }
    }
    for r in &side.injected {
        let pid_match = |p: i32| r.pid.is_none_or(|x| x == p);
        if matches!(r.action, Action::Deadlock | Action::Stop) && r.skipped.is_none() {
            if let Some(t) = log.iter().find_map(|(t, e)| match e {
                Event::Hung { pid, .. } if *t >= r.at && pid_match(*pid) => Some(*t),
                _ => None,
            }) {
                hang_latency.push((r.action, t - r.at));
            }
        }
    }
    windows.sort();
    let mut merged: Vec<(Instant, Instant)> = Vec::new();
    for w in windows {
        match merged.last_mut() {
            Some(last) if w.0 <= last.1 => last.1 = last.1.max(w.1),
            _ => merged.push(w),
        }
    }
    // The load client's failures are known per interval between two progress samples (every
    // 50 ms), with the run's start (nothing failed yet) and its final totals as the first and
    // last: an interval is a kill window's when it lies between the samples bracketing the
    // window (the last one at or before its start, the first one at or after its end).
    let mut samples: Vec<(Option<Instant>, (u64, u64, u64))> = vec![(None, (0, 0, 0))];
    samples.extend(side.progress.iter().map(|(t, p)| (Some(*t), fails(p))));
    let totals = (side.load.reset, side.load.timeout, side.load.other);
    samples.push((None, totals));
    let real = &side.progress;
    let mut covered = vec![false; samples.len() - 1];
    for (ws, we) in &merged {
        // Indices into `samples` (1 + an index into `real`).
        let first = real.partition_point(|(t, _)| t <= ws); // 0: the virtual start
        let last = 1 + real.partition_point(|(t, _)| t < we); // past `real`: the totals
        for c in &mut covered[first..last] {
            *c = true;
        }
    }
    let secs = |t: Instant| t.saturating_duration_since(side.start).as_secs_f64();
    let (mut in_reset, mut in_timeout, mut in_other) = (0, 0, 0);
    let (mut out_reset, mut out_timeout, mut out_other) = (0, 0, 0);
    let mut unattributed_at = Vec::new();
    for (i, pair) in samples.windows(2).enumerate() {
        let ((s, b), (e, a)) = (pair[0], pair[1]);
        let n = (
            a.0.saturating_sub(b.0),
            a.1.saturating_sub(b.1),
            a.2.saturating_sub(b.2),
        );
        if covered[i] {
            (in_reset, in_timeout, in_other) = (in_reset + n.0, in_timeout + n.1, in_other + n.2);
            continue;
        }
        (out_reset, out_timeout, out_other) = (out_reset + n.0, out_timeout + n.1, out_other + n.2);
        let when = match (s, e) {
            (Some(s), Some(e)) => format!("at {:.2}–{:.2}s", secs(s), secs(e)),
            (None, Some(e)) => format!("before {:.2}s", secs(e)),
            (Some(s), None) => format!("after {:.2}s", secs(s)),
            (None, None) => "during the run".into(),
        };
        for (kind, n) in [("reset", n.0), ("timeout", n.1), ("other failure", n.2)] {
            if n > 0 {
                unattributed_at.push(format!("{n} {kind} {when} (load)"));
            }
        }
    }
    let in_window = |t: Instant| merged.iter().any(|(s, e)| t >= *s && t <= *e);
    let mut own_lost = 0;
    let (mut own_reset, mut own_timeout, mut own_other, mut own_refused) = (0, 0, 0, 0);
    for (t, r) in &side.own.failures {
        match r {
            Reply::Refused => own_refused += 1,
            _ if in_window(*t) => own_lost += 1,
            r => {
                match r {
                    Reply::Reset => own_reset += 1,
                    Reply::Timeout => own_timeout += 1,
                    _ => own_other += 1,
                }
                unattributed_at.push(format!(
                    "{} at {:.2}s (own request)",
                    r.describe(),
                    secs(*t)
                ));
            }
        }
    }
    let crash_to_ready = log
        .iter()
        .filter_map(|(_, e)| match e {
            Event::WorkerReady {
                crash_to_ready: Some(c),
                ..
            } => Some(*c),
            _ => None,
        })
        .collect();
    let injected_500 = side
        .injected
        .iter()
        .filter(|r| r.action.panics() && r.reply.as_ref().and_then(Reply::status) == Some(500))
        .count() as u64;
    // An injected panic whose request died with a killed worker is lost like any other
    // request in flight there; any other answer than 500 is a problem.
    let mut injected_lost = 0;
    let mut unanswered = Vec::new();
    for r in side.injected.iter().filter(|r| r.action.panics()) {
        match (&r.reply, r.done_at) {
            (Some(rep), _) if rep.status() == Some(500) => {}
            (Some(rep), Some(t)) if rep.status().is_none() && in_window(t) => injected_lost += 1,
            (rep, _) => unanswered.push(format!(
                "{} at {:.2}s: {}",
                r.action.short(),
                (r.at - side.start).as_secs_f64(),
                rep.as_ref()
                    .map(Reply::describe)
                    .unwrap_or_else(|| "no answer".into())
            )),
        }
    }
    let injected_panics_unanswered = unanswered.len() as u64;
    let restarts = if supervised {
        counters
            .restarts
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect()
    } else {
        BTreeMap::new()
    };
    Analysis {
        load: side.load.clone(),
        own: side.own.clone(),
        injected: side.injected.clone(),
        lost_to_kill: in_reset + in_timeout + in_other + own_lost + injected_lost,
        unanswered,
        reset_unattributed: out_reset + own_reset,
        timeout_unattributed: out_timeout + own_timeout,
        other_unattributed: out_other + own_other,
        refused: side.load.refused + own_refused,
        unattributed_at,
        restarts,
        hang_latency,
        crash_to_ready,
        reports: if supervised { counters.reports } else { 0 },
        panics_answered: side.load.expected_failures + injected_500,
        injected_panics_unanswered,
        reloads: if supervised { counters.reloads } else { 0 },
    }
}

pub(crate) fn n(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn median_max(v: &[Duration]) -> String {
    if v.is_empty() {
        return "–".into();
    }
    let mut v = v.to_vec();
    v.sort();
    if v.len() == 1 {
        return ms(v[0]);
    }
    format!(
        "{} median, {} max (n={})",
        ms(v[v.len() / 2]),
        ms(v[v.len() - 1]),
        v.len()
    )
}

fn unexpected_statuses(a: &Analysis) -> u64 {
    a.load.unexpected_statuses + a.own.writes_unexpected + a.own.sample_unexpected
}

/// Every 5xx status, expected ones included.
fn by_status_text(r: &LoadReport) -> String {
    let parts: Vec<String> = r
        .by_status
        .iter()
        .filter(|(s, _)| **s >= 500)
        .map(|(s, c)| format!("{s}: {}", n(*c)))
        .collect();
    parts.join(", ")
}

fn restarts_text(a: &Analysis) -> String {
    if a.restarts.is_empty() {
        return "none".into();
    }
    a.restarts
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn injected_text(a: &Analysis, action: Action) -> String {
    let rs: Vec<&Record> = a.injected.iter().filter(|r| r.action == action).collect();
    if rs.is_empty() {
        return "–".into();
    }
    rs.iter()
        .map(|r| {
            if let Some(s) = r.skipped {
                return format!("skipped ({s})");
            }
            match (&r.reply, action) {
                (_, Action::Kill9 | Action::Stop | Action::Reload) => "done".into(),
                (None, _) => "no answer, ever".into(),
                (Some(rep), _) => rep.describe(),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The demo's table: unwedge, and the comparison if it ran.
pub(crate) fn render(a: &Analysis, c: Option<&Analysis>, workers: u32, settled: bool) -> String {
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let na = || "–".to_string();
    let mut row = |k: &str, u: String, cmp: String| rows.push((k.to_owned(), u, cmp));
    let cv = |f: &dyn Fn(&Analysis) -> String| c.map(f).unwrap_or_else(na);
    row(
        "requests (load client)",
        n(a.load.total),
        cv(&|c| n(c.load.total)),
    );
    row("ok", n(a.load.ok), cv(&|c| n(c.load.ok)));
    row(
        "expected 500s from injected panics",
        n(a.panics_answered),
        cv(&|c| n(c.panics_answered)),
    );
    row(
        "unexpected failures (status)",
        n(unexpected_statuses(a)),
        cv(&|c| {
            let s = by_status_text(&c.load);
            if s.is_empty() {
                n(unexpected_statuses(c))
            } else {
                format!("{} (5xx: {s})", n(unexpected_statuses(c)))
            }
        }),
    );
    row("refused", n(a.refused), cv(&|c| n(c.refused)));
    row(
        "reset",
        n(a.reset_unattributed),
        cv(&|c| n(c.reset_unattributed)),
    );
    row(
        "timeout / other",
        format!(
            "{} / {}",
            n(a.timeout_unattributed),
            n(a.other_unattributed)
        ),
        cv(&|c| {
            format!(
                "{} / {}",
                n(c.timeout_unattributed),
                n(c.other_unattributed)
            )
        }),
    );
    row(
        "lost with a killed worker",
        n(a.lost_to_kill),
        cv(&|_| "–".into()),
    );
    row(
        "invariant samples / violations",
        format!("{} / {}", n(a.own.samples), n(a.own.violations)),
        cv(&|c| {
            let first = c
                .own
                .first_violation
                .map(|t| format!(", from {:.1}s", t.as_secs_f64()))
                .unwrap_or_default();
            format!(
                "{} / {} (+{} phantom bytes{first})",
                n(c.own.samples),
                n(c.own.violations),
                n(c.own.max_phantom)
            )
        }),
    );
    row(
        "unique-key writes ok / refused (507)",
        format!("{} / {}", n(a.own.writes_ok), n(a.own.writes_full)),
        cv(&|c| format!("{} / {}", n(c.own.writes_ok), n(c.own.writes_full))),
    );
    row(
        "poisoning panic (AddComment)",
        injected_text(a, Action::Comments),
        cv(&|c| injected_text(c, Action::Comments)),
    );
    row(
        "GET / failed (any reason)",
        n(a.load
            .by_request
            .get("GET /")
            .map(|r| r.unexpected_failures)
            .unwrap_or(0)),
        cv(&|c| {
            n(c.load
                .by_request
                .get("GET /")
                .map(|r| r.unexpected_failures)
                .unwrap_or(0))
        }),
    );
    row(
        "deadlock (GET /deadlock)",
        match a.hang_latency.iter().find(|(k, _)| *k == Action::Deadlock) {
            Some((_, d)) => format!("detected in {}, replaced", ms(*d)),
            None => format!("not detected ({})", injected_text(a, Action::Deadlock)),
        },
        cv(&|c| format!("{} (nobody notices)", injected_text(c, Action::Deadlock))),
    );
    row(
        "kill -9 of a worker",
        injected_text(a, Action::Kill9),
        cv(&|_| "n/a (one process: it would be down)".into()),
    );
    row(
        "restarts by reason",
        restarts_text(a),
        cv(&|_| "n/a".into()),
    );
    row(
        "crash-to-ready",
        median_max(&a.crash_to_ready),
        cv(&|_| "n/a".into()),
    );
    row(
        "panic reports (supervisor)",
        format!("{} for {} panics", n(a.reports), n(a.panics_answered)),
        cv(&|_| "only a log line".into()),
    );
    let w0 = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
    let w1 = rows
        .iter()
        .map(|r| r.1.chars().count())
        .max()
        .unwrap_or(0)
        .max(28);
    let mut out = String::new();
    let h1 = format!("unwedge ({workers} workers)");
    let _ = writeln!(
        out,
        "| {:w0$} | {:w1$} | {}",
        "",
        h1,
        if c.is_some() {
            "axum + CatchPanicLayer (tokio/std locks) |"
        } else {
            "|"
        }
    );
    let _ = writeln!(
        out,
        "| {} | {} | {}",
        "-".repeat(w0),
        "-".repeat(w1),
        if c.is_some() { "--- |" } else { "|" }
    );
    for (k, u, cmp) in &rows {
        if c.is_some() {
            let _ = writeln!(out, "| {k:w0$} | {u:w1$} | {cmp} |");
        } else {
            let _ = writeln!(out, "| {k:w0$} | {u:w1$} |");
        }
    }
    let _ = writeln!(
        out,
        "\n{:.1} s, {:.0} req/s per side; latency p50 {} p99 {} (unwedge side).{}",
        a.load.elapsed.as_secs_f64(),
        a.load.requests_per_sec,
        unwedge_load::fmt_us(a.load.latency.p50_us),
        unwedge_load::fmt_us(a.load.latency.p99_us),
        if settled {
            ""
        } else {
            " Workers were NOT all ready again 10 s after the run."
        }
    );
    let _ = writeln!(
        out,
        "\"lost with a killed worker\": requests in flight on a worker at the moment it was \
         SIGKILLed (kill -9, or the supervisor ending a hung worker); no server can answer those."
    );
    out
}

/// This process's RSS in kB after the warm-up and at the end.
#[derive(Debug, Clone)]
pub(crate) struct Memory {
    pub(crate) warm: Option<u64>,
    pub(crate) end: Option<u64>,
    /// kB at each tenth of the run.
    pub(crate) trend: Vec<u64>,
}

/// The soak's table.
pub(crate) fn render_chaos(
    a: &Analysis,
    mem: &Memory,
    on_disk: Option<u64>,
    settled: bool,
) -> String {
    let (rss_before, rss_after) = (mem.warm, mem.end);
    let mut out = String::new();
    let count = |k: Action| {
        a.injected
            .iter()
            .filter(|r| r.action == k && r.skipped.is_none())
            .count()
    };
    let skipped = a.injected.iter().filter(|r| r.skipped.is_some()).count();
    let faults: Vec<String> = [
        Action::Poison,
        Action::Comments,
        Action::TxPanic,
        Action::Burn,
        Action::Deadlock,
        Action::Kill9,
        Action::Stop,
        Action::Reload,
    ]
    .iter()
    .map(|k| format!("{} {}", k.short(), count(*k)))
    .collect();
    let rows: Vec<(&str, String)> = vec![
        ("duration", format!("{:.1} s", a.load.elapsed.as_secs_f64())),
        (
            "faults injected",
            format!(
                "{} ({} skipped: <2 workers ready)",
                faults.join(", "),
                skipped
            ),
        ),
        (
            "requests (load client)",
            format!("{} ({:.0}/s)", n(a.load.total), a.load.requests_per_sec),
        ),
        ("ok", n(a.load.ok)),
        ("expected 500s from injected panics", n(a.panics_answered)),
        ("unexpected failures (status)", n(unexpected_statuses(a))),
        ("refused", n(a.refused)),
        ("reset (not a killed worker's)", n(a.reset_unattributed)),
        (
            "timeout / other",
            format!(
                "{} / {}",
                n(a.timeout_unattributed),
                n(a.other_unattributed)
            ),
        ),
        ("lost with a killed worker", n(a.lost_to_kill)),
        (
            "invariant samples / violations",
            format!("{} / {}", n(a.own.samples), n(a.own.violations)),
        ),
        (
            "unique-key writes ok / refused",
            format!("{} / {}", n(a.own.writes_ok), n(a.own.writes_full)),
        ),
        (
            "injected panics not answered 500",
            n(a.injected_panics_unanswered),
        ),
        (
            "panics answered 500 / reports received / on disk",
            format!(
                "{} / {} / {}",
                n(a.panics_answered),
                n(a.reports),
                on_disk.map(n).unwrap_or_else(|| "unreadable".into())
            ),
        ),
        ("restarts by reason", restarts_text(a)),
        ("reloads", n(a.reloads)),
        (
            "hang detection (deadlock)",
            median_max(&lat(a, Action::Deadlock)),
        ),
        (
            "hang detection (SIGSTOP)",
            median_max(&lat(a, Action::Stop)),
        ),
        ("crash-to-ready", median_max(&a.crash_to_ready)),
        (
            "process RSS after warm-up / end",
            match (rss_before, rss_after) {
                (Some(b), Some(e)) => format!(
                    "{:.1} MB / {:.1} MB ({:+.1} MB)",
                    b as f64 / 1024.0,
                    e as f64 / 1024.0,
                    (e as f64 - b as f64) / 1024.0
                ),
                _ => "unknown".into(),
            },
        ),
        (
            "process RSS at each tenth of the run",
            mem.trend
                .iter()
                .map(|k| format!("{:.1}", *k as f64 / 1024.0))
                .collect::<Vec<_>>()
                .join(" ")
                + " MB",
        ),
        (
            "all workers ready at the end",
            if settled { "yes".into() } else { "NO".into() },
        ),
    ];
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let _ = writeln!(out, "| {:w0$} | unwedge chaos |", "");
    let _ = writeln!(out, "| {} | --- |", "-".repeat(w0));
    for (k, v) in rows {
        let _ = writeln!(out, "| {k:w0$} | {v} |");
    }
    out
}

fn lat(a: &Analysis, k: Action) -> Vec<Duration> {
    a.hang_latency
        .iter()
        .filter(|(x, _)| *x == k)
        .map(|(_, d)| *d)
        .collect()
}

/// Why the unwedge side fails `--check` (empty: it passes).
pub(crate) fn problems(a: &Analysis, settled: bool) -> Vec<String> {
    let mut p = Vec::new();
    let u = unexpected_statuses(a);
    if u > 0 {
        p.push(format!(
            "{u} unexpected status(es) ({})",
            by_status_text(&a.load)
        ));
    }
    if a.refused > 0 {
        p.push(format!("{} refused connection(s)", a.refused));
    }
    if a.reset_unattributed > 0 {
        p.push(format!(
            "{} reset connection(s) outside any kill window",
            a.reset_unattributed
        ));
    }
    if a.timeout_unattributed + a.other_unattributed > 0 {
        p.push(format!(
            "{} timeout(s) and {} other failure(s)",
            a.timeout_unattributed, a.other_unattributed
        ));
    }
    if !a.unattributed_at.is_empty() {
        const SHOWN: usize = 8;
        let mut when = a.unattributed_at[..a.unattributed_at.len().min(SHOWN)].join("; ");
        if a.unattributed_at.len() > SHOWN {
            let _ = write!(when, "; … {} more", a.unattributed_at.len() - SHOWN);
        }
        let samples: Vec<String> = a
            .load
            .samples
            .iter()
            .filter(|s| s.kind != "status")
            .map(|s| format!("{} {}: {}", s.kind, s.request, s.message))
            .collect();
        if !samples.is_empty() {
            let _ = write!(
                when,
                " (the load client's first failures of each kind, in a window or not: {})",
                samples.join("; ")
            );
        }
        p.push(format!(
            "failures outside kill windows, timed as the event lines above: {when}"
        ));
    }
    if a.own.violations > 0 {
        p.push(format!("{} invariant violation(s)", a.own.violations));
    }
    if a.own.writes_full > 0 {
        p.push(format!(
            "{} unique-key write(s) refused (507)",
            a.own.writes_full
        ));
    }
    if a.injected_panics_unanswered > 0 {
        p.push(format!(
            "{} injected panic request(s) not answered 500: {}",
            a.injected_panics_unanswered,
            a.unanswered.join("; ")
        ));
    }
    if a.own.samples == 0 {
        p.push("no invariant sample was taken".into());
    }
    if !settled {
        p.push("the workers were not all ready again after the run".into());
    }
    for r in &a.injected {
        if r.skipped.is_some() {
            continue;
        }
        match r.action {
            Action::Deadlock if !a.hang_latency.iter().any(|(k, _)| *k == Action::Deadlock) => {
                p.push("the deadlock was not detected".into())
            }
            _ => {}
        }
    }
    p.dedup();
    p
}

/// Why the comparison fails to make the demo's point.
pub(crate) fn comparison_problems(c: &Analysis) -> Vec<String> {
    let mut p = Vec::new();
    if c.own.violations == 0 {
        p.push(
            "the comparison service showed no corruption (curr_size == actual_size throughout)"
                .into(),
        );
    }
    let cascade = c
        .load
        .by_request
        .get("GET /")
        .map(|r| r.unexpected_failures)
        .unwrap_or(0);
    if cascade == 0 {
        p.push("the comparison service showed no poison cascade (GET / never failed)".into());
    }
    p
}

/// The soak's extra checks.
pub(crate) fn chaos_problems(a: &Analysis, mem: &Memory, on_disk: Option<u64>) -> Vec<String> {
    let (rss_before, rss_after) = (mem.warm, mem.end);
    let mut p = Vec::new();
    if a.panics_answered == 0 {
        p.push("no panic was answered 500: the report checks tested nothing (run longer)".into());
    }
    match on_disk {
        None => p.push("cannot read the report directory".into()),
        Some(d) if d < a.panics_answered => p.push(format!(
            "{} report(s) missing on disk: {d} for {} panics answered 500",
            a.panics_answered - d,
            a.panics_answered
        )),
        Some(_) => {}
    }
    if a.reports < a.panics_answered {
        p.push(format!(
            "{} lost report(s): {} reports for {} panics answered 500",
            a.panics_answered - a.reports,
            a.reports,
            a.panics_answered
        ));
    }
    if let (Some(b), Some(e)) = (rss_before, rss_after) {
        if e > b + 5 * 1024 {
            p.push(format!("RSS grew by {} kB (limit 5 MB)", e - b));
        }
    }
    p
}

/// This process's resident set size, in kB (`VmRSS` of `/proc/self/status`).
pub(crate) fn rss_kb() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use unwedge_load::LatencySummary;

    /// A load report with these failure counts (and nothing else).
    fn load(reset: u64) -> LoadReport {
        serde_json::from_value(serde_json::json!({
            "target": "http://127.0.0.1:1", "model": "concurrency 1",
            "connections": "keep-alive", "elapsed": 10.0,
            "total": 1000 + reset, "ok": 1000, "expected_failures": 0,
            "unexpected_statuses": 0, "refused": 0, "reset": reset, "timeout": 0, "other": 0,
            "by_status": {}, "by_request": {}, "connections_opened": 1,
            "requests_per_sec": 100.0,
            "latency": serde_json::to_value(LatencySummary::default()).unwrap(),
            "samples": [],
        }))
        .expect("a LoadReport")
    }

    /// A run of 10 s that started at `t0`: progress samples every 100 ms, the resets counted
    /// by the sample after each of `resets_at` (seconds from the start).
    fn side(t0: Instant, resets_at: &[f64], injected: Vec<Record>) -> SideResult {
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        let progress = (0..=100)
            .map(|i| {
                let t = f64::from(i) / 10.0;
                let reset = resets_at.iter().filter(|r| **r <= t).count() as u64;
                (
                    at(t),
                    Progress {
                        reset,
                        ..Progress::default()
                    },
                )
            })
            .collect();
        SideResult {
            start: t0,
            load: load(resets_at.len() as u64),
            progress,
            own: Own {
                samples: 100,
                ..Own::default()
            },
            injected,
        }
    }

    fn kill9(t0: Instant, at: f64, pid: i32) -> Record {
        Record {
            at: t0 + Duration::from_secs_f64(at),
            action: Action::Kill9,
            pid: Some(pid),
            reply: None,
            done_at: None,
            skipped: None,
        }
    }

    fn panic(t0: Instant, at: f64, status: u16) -> Record {
        let at = t0 + Duration::from_secs_f64(at);
        Record {
            at,
            action: Action::Burn,
            pid: None,
            reply: Some(Reply::Status(status, String::new())),
            done_at: Some(at + Duration::from_millis(5)),
            skipped: None,
        }
    }

    fn exited(t0: Instant, at: f64, pid: i32) -> (Instant, Event) {
        let e = Event::WorkerExited {
            worker: "w1".into(),
            pid,
            code: None,
            signal: Some(9),
            requested: false,
            by_stop_signal: false,
            oom_killed: false,
        };
        (t0 + Duration::from_secs_f64(at), e)
    }

    #[test]
    fn a_reset_while_a_killed_worker_dies_is_excused_one_outside_is_a_problem() {
        let t0 = Instant::now();
        // kill -9 at 2.0 s, the worker gone at 2.1 s: its window ends at 2.4 s.
        let log = [exited(t0, 2.1, 42)];
        let inside = side(t0, &[2.05], vec![kill9(t0, 2.0, 42)]);
        let a = analyse(&inside, &log, &Counters::default());
        assert_eq!((a.lost_to_kill, a.reset_unattributed), (1, 0));
        assert!(problems(&a, true).is_empty(), "{:?}", problems(&a, true));

        // The same reset a second after the worker's exit: nothing excuses it.
        let outside = side(t0, &[3.1], vec![kill9(t0, 2.0, 42)]);
        let a = analyse(&outside, &log, &Counters::default());
        assert_eq!((a.lost_to_kill, a.reset_unattributed), (0, 1));
        let p = problems(&a, true);
        assert!(
            p.iter()
                .any(|m| m.contains("1 reset connection(s) outside any kill window")),
            "{p:?}"
        );
        // And when, to find it in the event log.
        assert!(
            p.iter().any(|m| m.contains("1 reset at 3.00–3.10s (load)")),
            "{p:?}"
        );
        // Inside the window, no time is listed.
        assert!(analyse(&inside, &log, &Counters::default())
            .unattributed_at
            .is_empty());

        // No kill at all.
        let a = analyse(&side(t0, &[5.0], vec![]), &log, &Counters::default());
        assert_eq!(a.reset_unattributed, 1);

        // After the last progress sample: in the final totals only, still listed.
        let a = analyse(&side(t0, &[10.5], vec![]), &log, &Counters::default());
        assert_eq!(a.reset_unattributed, 1);
        assert_eq!(a.unattributed_at, ["1 reset after 10.00s (load)"]);

        // Two windows with no sample between them (the first ends, margin included, at
        // 2.32 s, the second begins at 2.35 s; samples at 2.3 and 2.4 s) share the interval
        // between those samples: its reset is counted once, not once per window.
        let close = side(t0, &[2.35], vec![kill9(t0, 2.01, 42), kill9(t0, 2.35, 43)]);
        let exits = [exited(t0, 2.02, 42), exited(t0, 2.36, 43)];
        let a = analyse(&close, &exits, &Counters::default());
        assert_eq!((a.lost_to_kill, a.reset_unattributed), (1, 0));
    }

    /// The supervisor kills a hung worker, then publishes its verdict, which the demo sees a
    /// little later: a request cut by that kill just before the demo saw the verdict is lost
    /// to it; one cut well before is not excused.
    #[test]
    fn a_reset_just_before_a_hang_verdict_is_seen_is_lost_to_the_kill() {
        let t0 = Instant::now();
        let hung = |at: f64| {
            let e = Event::Hung {
                worker: "w2".into(),
                pid: 43,
                kind: unwedge_supervisor::HangKind::Wedged,
                detail: "deadlock".into(),
                stopping: false,
            };
            (t0 + Duration::from_secs_f64(at), e)
        };
        let log = [hung(1.29), exited(t0, 1.30, 43)];
        let mut run = side(t0, &[], vec![]);
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        run.own.failures = vec![(at(1.28), Reply::Reset)];
        let a = analyse(&run, &log, &Counters::default());
        assert!(a.unattributed_at.is_empty(), "{:?}", a.unattributed_at);
        assert!(problems(&a, true).is_empty(), "{:?}", problems(&a, true));

        run.own.failures = vec![(at(0.9), Reply::Reset)];
        let a = analyse(&run, &log, &Counters::default());
        assert_eq!(a.unattributed_at, ["reset at 0.90s (own request)"]);
    }

    #[test]
    fn a_kill_whose_exit_was_never_seen_excuses_five_seconds_only() {
        let t0 = Instant::now();
        let early = side(t0, &[6.0], vec![kill9(t0, 2.0, 42)]);
        let a = analyse(&early, &[], &Counters::default());
        assert_eq!((a.lost_to_kill, a.reset_unattributed), (1, 0));
        let late = side(t0, &[8.0], vec![kill9(t0, 2.0, 42)]);
        let a = analyse(&late, &[], &Counters::default());
        assert_eq!((a.lost_to_kill, a.reset_unattributed), (0, 1));
    }

    #[test]
    fn an_injected_panic_not_answered_500_is_a_problem() {
        let t0 = Instant::now();
        let run = side(t0, &[], vec![panic(t0, 1.0, 500), panic(t0, 2.0, 200)]);
        let a = analyse(&run, &[], &Counters::default());
        assert_eq!((a.panics_answered, a.injected_panics_unanswered), (1, 1));
        let p = problems(&a, true);
        assert!(
            p.iter()
                .any(|m| m.contains("1 injected panic request(s) not answered 500: burn at 2.00s")),
            "{p:?}"
        );
    }

    #[test]
    fn the_soak_fails_on_a_missing_report_and_when_no_panic_was_answered() {
        let t0 = Instant::now();
        let mem = Memory {
            warm: Some(10_000),
            end: Some(10_100),
            trend: Vec::new(),
        };
        let run = side(t0, &[], vec![panic(t0, 1.0, 500), panic(t0, 2.0, 500)]);
        let counters = Counters {
            reports: 2,
            ..Counters::default()
        };
        let a = analyse(&run, &[exited(t0, 9.0, 1)], &counters);
        assert_eq!(a.panics_answered, 2);
        assert!(chaos_problems(&a, &mem, Some(2)).is_empty());
        // One report on disk short.
        let p = chaos_problems(&a, &mem, Some(1));
        assert_eq!(
            p,
            ["1 report(s) missing on disk: 1 for 2 panics answered 500"]
        );
        assert_eq!(
            chaos_problems(&a, &mem, None),
            ["cannot read the report directory"]
        );
        // One report short on the supervisor's side.
        let counters = Counters {
            reports: 1,
            ..Counters::default()
        };
        let a = analyse(&run, &[exited(t0, 9.0, 1)], &counters);
        let p = chaos_problems(&a, &mem, Some(2));
        assert_eq!(p, ["1 lost report(s): 1 reports for 2 panics answered 500"]);
        // Nothing panicked: the report checks would pass for nothing.
        let a = analyse(
            &side(t0, &[], vec![]),
            &[exited(t0, 9.0, 1)],
            &Counters::default(),
        );
        let p = chaos_problems(&a, &mem, Some(0));
        assert!(
            p.iter().any(|m| m.contains("no panic was answered")),
            "{p:?}"
        );
        // Memory that grew by more than 5 MB.
        let grown = Memory {
            warm: Some(10_000),
            end: Some(16_000),
            trend: Vec::new(),
        };
        let a = analyse(
            &run,
            &[exited(t0, 9.0, 1)],
            &Counters {
                reports: 2,
                ..Counters::default()
            },
        );
        let p = chaos_problems(&a, &grown, Some(2));
        assert_eq!(p, ["RSS grew by 6000 kB (limit 5 MB)"]);
    }
}
