//! The status page: one server-rendered HTML document, no JavaScript, no external assets.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use crate::status::{age, ExitRecord, PanicRecord, Record, StatusView, WorkerState};

/// Header names whose values the page never shows, even if a worker forgot to redact them.
pub const REDACTED_HEADERS: &[&str] = unwedge_redact::CREDENTIAL_HEADERS;

/// The page stops adding reports, and a report its headers and backtrace, once it is this
/// large, so it stays under 50 KB: what a report adds past it is bounded (its other fields,
/// each cut to its own maximum of escaped bytes, ~9 KiB in all).
const PAGE_BUDGET: usize = 40 * 1024;
/// Longest backtrace shown per report, in bytes of HTML.
const BACKTRACE_MAX: usize = 4 * 1024;
/// Longest single string shown (messages, header values, stderr lines), in bytes of HTML
/// (escaped: a `"` takes six).
const FIELD_MAX: usize = 1024;
/// Most entries of a report's list (`rolled_back`, `poisoned`) shown.
const LIST_MAX: usize = 16;
/// Most stderr lines shown per exit.
const STDERR_LINES_MAX: usize = 20;
/// The chart's window and bucket width.
const CHART_WINDOW: Duration = Duration::from_secs(3600);
const CHART_BUCKETS: usize = 60;

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}\
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.1em;margin:1.4em 0 .5em}\
table{border-collapse:collapse}td,th{padding:.25em .7em;border-bottom:1px solid #ddd;text-align:left}\
.st{display:inline-block;padding:0 .5em;border-radius:3px;color:#fff;font-weight:600}\
.ready{background:#2e7d32}.starting{background:#1565c0}.draining{background:#8d6e00}\
.hung{background:#c62828}.tainted{background:#6a1b9a}.exited{background:#616161}\
.badge{padding:.1em .6em;border-radius:3px;color:#fff;font-weight:600}.ok{background:#2e7d32}.bad{background:#c62828}\
.report{background:#fff;border:1px solid #ddd;border-left:4px solid #c62828;padding:.5em .8em;margin:.6em 0}\
.report.exit{border-left-color:#616161}.msg{font-weight:600;white-space:pre-wrap;word-break:break-word}\
pre{background:#f3f3f3;padding:.5em;overflow-x:auto;font-size:12px}.meta{color:#555}\
svg{background:#fff;border:1px solid #ddd}";

/// Renders the status page for `view`.
///
/// Every string that came from a worker is HTML-escaped; values of [`REDACTED_HEADERS`] and
/// of the other credential headers ([`is_credential_name`](unwedge_redact::is_credential_name):
/// `X-Api-Key`, …) are never shown; long fields are truncated and old reports left off so the page stays under
/// 50 KB. It refreshes itself every 5 s with `<meta http-equiv="refresh">`.
///
/// ```
/// use unwedge_admin::{render_page, PanicRecord, Record, StatusView, SupervisorInfo};
///
/// let mut view = StatusView::new(SupervisorInfo::new("0.1.0", 1));
/// let report = serde_json::json!({"message": "<script>alert(1)</script>", "pid": 2});
/// view.reports.push(Record::Panic(PanicRecord::new(Some("w1"), report)));
/// let html = render_page(&view);
/// assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
/// assert!(!html.contains("<script>"));
/// ```
pub fn render_page(view: &StatusView) -> String {
    let now =
        humantime::parse_rfc3339_weak(&view.generated_at).unwrap_or_else(|_| SystemTime::now());
    let mut h = String::with_capacity(16 * 1024);
    let sup = &view.supervisor;
    let ready = view.ready_workers();
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"5\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>unwedge: {ready}/{total} ready</title><style>{STYLE}</style></head><body>",
        total = view.workers.len()
    );
    let (badge, class) = if sup.gave_up {
        ("gave up", "bad")
    } else if ready > 0 {
        ("serving", "ok")
    } else {
        ("not ready", "bad")
    };
    let _ = write!(
        h,
        "<header><h1>unwedge <span class=\"badge {class}\" id=\"health\">{badge}</span></h1>\
         <div class=\"meta\">version {} · supervisor pid {} · up {} · listening on {} · \
         as of {}</div></header>",
        esc(&sup.version),
        sup.pid,
        secs(sup.uptime_secs),
        if sup.listen.is_empty() && view.workers.iter().any(|w| w.port.is_some()) {
            "a port per worker".to_owned()
        } else if sup.listen.is_empty() {
            "nothing".to_owned()
        } else {
            esc(&sup.listen.join(", "))
        },
        esc(&view.generated_at),
    );
    if let Some(reason) = sup.gave_up_reason.as_deref().filter(|_| sup.gave_up) {
        let _ = write!(
            h,
            "<p id=\"gave-up\">Gave up: {}; every worker is being stopped and the supervisor \
             exits with status 3.</p>",
            esc(reason)
        );
    }
    reload_line(&mut h, sup);

    workers_table(&mut h, view);
    chart(&mut h, view, now);

    let _ = write!(h, "<section id=\"reports\"><h2>Recent reports</h2>");
    if view.reports.is_empty() {
        h.push_str("<p>No panics or abnormal exits recorded.</p>");
    }
    for (shown, record) in view.reports.iter().rev().enumerate() {
        if h.len() > PAGE_BUDGET {
            let _ = write!(
                h,
                "<p class=\"meta\">{} older reports left off: see <a href=\"/status\">/status</a> \
                 or <code>unwedge reports</code>.</p>",
                view.reports.len() - shown
            );
            break;
        }
        match record {
            Record::Panic(p) => panic_report(&mut h, p, now),
            Record::Exit(e) => exit_report(&mut h, e, now),
        }
    }
    h.push_str(
        "</section><footer class=\"meta\"><p>JSON: <a href=\"/status\">/status</a> · \
         Prometheus: <a href=\"/metrics\">/metrics</a> · <a href=\"/livez\">/livez</a> · \
         <a href=\"/readyz\">/readyz</a></p></footer></body></html>\n",
    );
    h
}

/// The serving generation, and how the last reload ended (a failed one stands out: the
/// deploy did not happen).
fn reload_line(h: &mut String, sup: &crate::status::SupervisorInfo) {
    let _ = write!(
        h,
        "<div class=\"meta\" id=\"reload\">generation {}",
        sup.generation
    );
    if sup.reloading {
        h.push_str(" · reload in progress");
    }
    match &sup.last_reload {
        Some(r) if r.ok => {
            let _ = write!(h, " · last reload ok ({})", esc(&r.at));
        }
        Some(r) => {
            let _ = write!(
                h,
                " · <span class=\"badge bad\">last reload failed</span> generation {} at {}: {}",
                r.generation,
                esc(&r.at),
                esc(r.reason.as_deref().unwrap_or("unknown"))
            );
        }
        None => {}
    }
    h.push_str("</div>");
}

fn workers_table(h: &mut String, view: &StatusView) {
    h.push_str("<section id=\"workers\"><h2>Workers</h2>");
    if view.workers.is_empty() {
        h.push_str("<p>No workers.</p></section>");
        return;
    }
    let counts: Vec<String> = WorkerState::ALL
        .iter()
        .filter_map(|&s| match view.count(s) {
            0 => None,
            n => Some(format!("{n} {s}")),
        })
        .collect();
    let _ = write!(h, "<p class=\"meta\">{}</p>", counts.join(" · "));
    // The port column only in `--port-env` mode.
    let ports = view.workers.iter().any(|w| w.port.is_some());
    // The status column only when a worker said one (`STATUS=`).
    let statuses = view.workers.iter().any(|w| w.status.is_some());
    let _ = write!(
        h,
        "<table><thead><tr><th>worker</th><th>pid</th>{}<th>generation</th><th>state</th>\
         <th>uptime</th><th>memory</th><th>restarts</th><th>last exit</th>{}<th>last report</th></tr></thead><tbody>",
        if ports { "<th>port</th>" } else { "" },
        if statuses { "<th>status</th>" } else { "" },
    );
    for w in &view.workers {
        let port = match (ports, w.port) {
            (false, _) => String::new(),
            (true, Some(p)) => format!("<td class=\"port\">{p}</td>"),
            (true, None) => "<td class=\"port\">-</td>".to_owned(),
        };
        let status = match (statuses, w.status.as_deref()) {
            (false, _) => String::new(),
            (true, Some(t)) => format!("<td class=\"status\">{}</td>", esc_trunc(t, 120)),
            (true, None) => "<td class=\"status\">-</td>".to_owned(),
        };
        let _ = write!(
            h,
            "<tr class=\"worker\"><td>{}</td><td>{}</td>{port}<td>{}</td>\
             <td><span class=\"st {s}\">{s}</span></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>{status}<td>{}</td></tr>",
            esc_trunc(&w.id, 64),
            w.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
            w.generation,
            secs(w.uptime_secs),
            crate::status::mib(w.memory_bytes),
            w.restarts,
            w.last_exit.map_or_else(|| "-".to_owned(), |e| e.to_string()),
            w.last_report.as_deref().map_or_else(|| "-".to_owned(), |r| esc_trunc(r, 200)),
            s = w.state.as_str(),
        );
    }
    h.push_str("</tbody></table></section>");
}

/// Restarts per minute over the last hour, as an inline SVG line with a dot per busy minute.
fn chart(h: &mut String, view: &StatusView, now: SystemTime) {
    let bucket = CHART_WINDOW / CHART_BUCKETS as u32;
    let mut counts = [0u32; CHART_BUCKETS];
    for r in &view.restarts {
        let Some(a) = age(&r.time, now) else { continue };
        if a < CHART_WINDOW {
            let i = CHART_BUCKETS - 1 - (a.as_secs() / bucket.as_secs()) as usize;
            counts[i] += 1;
        }
    }
    let total: u32 = counts.iter().sum();
    let mut by_reason: Vec<(crate::status::RestartReason, u32)> = Vec::new();
    for r in &view.restarts {
        if age(&r.time, now).is_some_and(|a| a < CHART_WINDOW) {
            match by_reason.iter_mut().find(|(reason, _)| *reason == r.reason) {
                Some((_, n)) => *n += 1,
                None => by_reason.push((r.reason, 1)),
            }
        }
    }
    let reasons = if by_reason.is_empty() {
        String::new()
    } else {
        let parts: Vec<String> = by_reason.iter().map(|(r, n)| format!("{n} {r}")).collect();
        format!(": {}", parts.join(", "))
    };
    let max = counts.iter().copied().max().unwrap_or(0).max(1);
    let (w, ht, left, top, bottom) = (720.0, 160.0, 40.0, 10.0, 20.0);
    let plot_w = w - left - 10.0;
    let plot_h = ht - top - bottom;
    let x = |i: usize| left + plot_w * (i as f64 + 0.5) / CHART_BUCKETS as f64;
    let y = |c: u32| top + plot_h * (1.0 - f64::from(c) / f64::from(max));
    let _ = write!(
        h,
        "<section id=\"restarts\"><h2>Restarts per minute, last hour</h2>\
         <p class=\"meta\" id=\"restart-summary\">{total} restart{} in the last hour{reasons}</p>\
         <svg id=\"restart-chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{ht}\" \
         viewBox=\"0 0 {w} {ht}\" role=\"img\" aria-label=\"{total} restarts in the last hour\">\
         <line x1=\"{left}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#999\"/>\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{b}\" stroke=\"#999\"/>\
         <text x=\"{tx}\" y=\"{ty}\" font-size=\"11\" text-anchor=\"end\">{max}</text>\
         <text x=\"{tx}\" y=\"{b}\" font-size=\"11\" text-anchor=\"end\">0</text>\
         <text x=\"{left}\" y=\"{lb}\" font-size=\"11\">-60 min</text>\
         <text x=\"{mid}\" y=\"{lb}\" font-size=\"11\" text-anchor=\"middle\">-30 min</text>\
         <text x=\"{r}\" y=\"{lb}\" font-size=\"11\" text-anchor=\"end\">now</text>",
        if total == 1 { "" } else { "s" },
        b = top + plot_h,
        r = left + plot_w,
        tx = left - 4.0,
        ty = top + 8.0,
        lb = ht - 4.0,
        mid = left + plot_w / 2.0,
    );
    let points: Vec<String> = counts
        .iter()
        .enumerate()
        .map(|(i, &c)| format!("{:.1},{:.1}", x(i), y(c)))
        .collect();
    let _ = write!(
        h,
        "<polyline fill=\"none\" stroke=\"#c62828\" stroke-width=\"1.5\" points=\"{}\"/>",
        points.join(" ")
    );
    for (i, &c) in counts.iter().enumerate() {
        if c > 0 {
            let _ = write!(
                h,
                "<circle class=\"point\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"#c62828\">\
                 <title>{c} restart{} {} min ago</title></circle>",
                x(i),
                y(c),
                if c == 1 { "" } else { "s" },
                CHART_BUCKETS - 1 - i,
            );
        }
    }
    h.push_str("</svg></section>");
}

fn panic_report(h: &mut String, p: &PanicRecord, now: SystemTime) {
    let r = &p.report;
    let s = |name: &str| r.get(name).and_then(|v| v.as_str());
    let _ =
        write!(
        h,
        "<article class=\"report panic\"><div class=\"meta\">panic · {} · worker {} · pid {}</div>",
        when(&p.time, now),
        esc(p.worker.as_deref().unwrap_or("?")),
        r.get("pid").and_then(|v| v.as_u64()).map_or_else(|| "?".to_owned(), |v| v.to_string()),
    );
    if let Some(req) = r.get("request").and_then(|v| v.as_object()) {
        let f = |name: &str| req.get(name).and_then(|v| v.as_str()).unwrap_or("?");
        let _ = write!(
            h,
            "<div class=\"request\"><code>{} {}</code> <span class=\"meta\">request id {}</span></div>",
            esc_trunc(f("method"), 32),
            esc_trunc(f("path"), FIELD_MAX),
            esc_trunc(f("request_id"), 128),
        );
    } else if let Some(task) = s("task") {
        let _ = write!(
            h,
            "<div class=\"request\">task <code>{}</code></div>",
            esc_trunc(task, 256)
        );
    }
    let _ = write!(
        h,
        "<div class=\"msg\">{}</div>",
        esc_trunc(s("message").unwrap_or("(no message)"), FIELD_MAX)
    );
    if let Some(loc) = s("location") {
        let _ = write!(h, "<div>at <code>{}</code>", esc_trunc(loc, 256));
        if let Some(thread) = s("thread") {
            let _ = write!(h, " on thread <code>{}</code>", esc_trunc(thread, 128));
        }
        h.push_str("</div>");
    }
    let list = |name: &str| -> Vec<String> {
        let all = r.get(name).and_then(|v| v.as_array());
        let all = all.map_or(&[][..], Vec::as_slice);
        let mut shown: Vec<String> = all
            .iter()
            .filter_map(|v| v.as_str())
            .take(LIST_MAX)
            .map(|s| esc_trunc(s, 128))
            .collect();
        if all.len() > LIST_MAX {
            shown.push(format!("… {} more", all.len() - LIST_MAX));
        }
        shown
    };
    let (rolled, poisoned) = (list("rolled_back"), list("poisoned"));
    if !rolled.is_empty() {
        let _ = write!(h, "<div>rolled back: {}</div>", rolled.join(", "));
    }
    if !poisoned.is_empty() {
        let _ = write!(
            h,
            "<div>poisoned: <strong>{}</strong></div>",
            poisoned.join(", ")
        );
    }
    if let Some(d) = r.get("decision").and_then(|v| v.as_object()) {
        let f = |name: &str| d.get(name).and_then(|v| v.as_str()).unwrap_or("?");
        let _ = write!(
            h,
            "<div>decision: <strong>{}</strong> ({})</div>",
            esc_trunc(f("action"), 32),
            esc_trunc(f("reason"), 256)
        );
    }
    if let Some(headers) = r
        .get("request")
        .and_then(|v| v.get("headers"))
        .and_then(|v| v.as_object())
        .filter(|m| !m.is_empty())
    {
        h.push_str("<details><summary>request headers</summary><table>");
        for (shown, (name, value)) in headers.iter().take(64).enumerate() {
            // 64 headers of 384 bytes each would take most of the page by themselves.
            if h.len() > PAGE_BUDGET {
                let _ = write!(
                    h,
                    "<tr><td class=\"meta\" colspan=\"2\">{} more left off: see \
                     <a href=\"/status\">/status</a></td></tr>",
                    headers.len() - shown
                );
                break;
            }
            let value = if unwedge_redact::is_credential_name(name.trim()) {
                "<redacted>".to_owned()
            } else {
                value
                    .as_str()
                    .map_or_else(|| value.to_string(), str::to_owned)
            };
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td></tr>",
                esc_trunc(name, 128),
                esc_trunc(&value, 256)
            );
        }
        h.push_str("</table></details>");
    }
    if let Some(bt) = s("backtrace").filter(|_| h.len() > PAGE_BUDGET) {
        let _ = write!(
            h,
            "<div class=\"meta\">backtrace ({} bytes) left off: see <a href=\"/status\">/status</a></div>",
            bt.len()
        );
    } else if let Some(bt) = s("backtrace") {
        let _ = write!(
            h,
            "<details><summary>backtrace</summary><pre>{}</pre></details>",
            esc_trunc(bt, BACKTRACE_MAX)
        );
    }
    h.push_str("</article>");
}

fn exit_report(h: &mut String, e: &ExitRecord, now: SystemTime) {
    let _ = write!(
        h,
        "<article class=\"report exit\"><div class=\"meta\">abnormal exit · {} · worker {} · pid {}</div>\
         <div class=\"msg\">{}</div>",
        when(&e.time, now),
        esc(e.worker.as_deref().unwrap_or("?")),
        e.pid.map_or_else(|| "?".to_owned(), |p| p.to_string()),
        e.status(),
    );
    if !e.last_stderr_lines.is_empty() {
        let skip = e.last_stderr_lines.len().saturating_sub(STDERR_LINES_MAX);
        let lines: Vec<String> = e.last_stderr_lines[skip..]
            .iter()
            .map(|l| esc_trunc(l, 300))
            .collect();
        let _ = write!(
            h,
            "<details><summary>last stderr lines</summary><pre>{}</pre></details>",
            lines.join("\n")
        );
    }
    h.push_str("</article>");
}

/// `2026-01-01T00:00:00.000Z (3m 2s ago)`.
fn when(t: &str, now: SystemTime) -> String {
    match age(t, now) {
        Some(a) => format!(
            "{} ({} ago)",
            esc(t),
            humantime::format_duration(Duration::from_secs(a.as_secs()))
        ),
        None => esc(t),
    }
}

fn secs(s: f64) -> String {
    let s = if s.is_finite() && s > 0.0 {
        s as u64
    } else {
        0
    };
    humantime::format_duration(Duration::from_secs(s)).to_string()
}

/// `s` escaped ([`esc`]) and cut to at most `max` bytes of escaped text, on a character
/// boundary (so never inside `&quot;`), the cut marked with how many bytes of `s` are left
/// off: what a field takes of the page is bounded whatever it holds (escaping makes a `"`
/// six bytes).
fn esc_trunc(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max) + 24);
    for (at, c) in s.char_indices() {
        let escaped = escape(c);
        let len = escaped.map_or(c.len_utf8(), str::len);
        if out.len() + len > max {
            let _ = write!(out, "… ({} bytes more)", s.len() - at);
            return out;
        }
        match escaped {
            Some(e) => out.push_str(e),
            None => out.push(c),
        }
    }
    out
}

/// The character reference `c` is written as, if it needs one.
fn escape(c: char) -> Option<&'static str> {
    match c {
        '&' => Some("&amp;"),
        '<' => Some("&lt;"),
        '>' => Some("&gt;"),
        '"' => Some("&quot;"),
        '\'' => Some("&#39;"),
        _ => None,
    }
}

/// Escapes text for HTML element content and double-quoted attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match escape(c) {
            Some(e) => out.push_str(e),
            None => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{RestartEvent, RestartReason, SupervisorInfo};

    #[test]
    fn one_restart_draws_one_point() {
        let mut view = StatusView::new(SupervisorInfo::new("0.1.0", 1));
        view.restarts
            .push(RestartEvent::now("w1", RestartReason::Signal));
        let html = render_page(&view);
        assert_eq!(html.matches("<circle").count(), 1);
        assert!(html.contains("1 restart in the last hour"));
    }

    /// `--port-env` mode: each worker's port in a column of its own, and no "listening on
    /// nothing".
    #[test]
    fn workers_on_ports_of_their_own_show_them() {
        use crate::status::{WorkerState, WorkerView};
        let mut view = StatusView::new(SupervisorInfo::new("0.1.0", 1));
        let mut w1 = WorkerView::new("w1", Some(2), WorkerState::Ready);
        w1.port = Some(34629);
        view.workers = vec![w1, WorkerView::new("w2", None, WorkerState::Exited)];
        let html = render_page(&view);
        assert!(html.contains("listening on a port per worker"), "{html}");
        assert!(html.contains("<th>pid</th><th>port</th>"), "{html}");
        assert!(
            html.contains("<td>2</td><td class=\"port\">34629</td>"),
            "{html}"
        );
        assert!(
            html.contains("<td>-</td><td class=\"port\">-</td>"),
            "{html}"
        );
        view.workers[0].port = None;
        let html = render_page(&view);
        assert!(!html.contains("<th>port</th>"), "{html}");
        assert!(html.contains("listening on nothing"), "{html}");
    }

    /// A worker's `STATUS=` text in a column of its own, escaped and cut; no column while no
    /// worker said one.
    #[test]
    fn what_workers_say_of_themselves_is_shown_escaped() {
        use crate::status::{WorkerState, WorkerView};
        let mut view = StatusView::new(SupervisorInfo::new("0.1.0", 1));
        let mut w1 = WorkerView::new("w1", Some(2), WorkerState::Ready);
        w1.status = Some("warming <caches> 40%".into());
        let mut w2 = WorkerView::new("w2", Some(3), WorkerState::Ready);
        w2.status = Some("x".repeat(500));
        view.workers = vec![w1, w2, WorkerView::new("w3", None, WorkerState::Exited)];
        let html = render_page(&view);
        assert!(html.contains("<th>last exit</th><th>status</th>"), "{html}");
        assert!(
            html.contains("<td class=\"status\">warming &lt;caches&gt; 40%</td>"),
            "{html}"
        );
        assert!(html.contains("<td class=\"status\">-</td>"), "{html}");
        assert!(!html.contains(&"x".repeat(200)), "not cut: {html}");
        for w in &mut view.workers {
            w.status = None;
        }
        let html = render_page(&view);
        assert!(!html.contains("<th>status</th>"), "{html}");
    }

    #[test]
    fn a_failed_reload_is_shown_with_its_reason() {
        let mut info = SupervisorInfo::new("0.1.0", 1);
        info.generation = 2;
        info.last_reload = Some(crate::status::ReloadOutcome::now(
            3,
            Some("worker w1 exit status 1 <boom>".into()),
        ));
        let html = render_page(&StatusView::new(info));
        assert!(html.contains("generation 2"), "{html}");
        assert!(
            html.contains("last reload failed</span> generation 3"),
            "{html}"
        );
        assert!(
            html.contains("worker w1 exit status 1 &lt;boom&gt;"),
            "escaped: {html}"
        );
    }

    #[test]
    fn giving_up_is_shown_with_its_reason() {
        let mut info = SupervisorInfo::new("0.1.0", 1);
        info.gave_up = true;
        info.gave_up_reason = Some("worker w1 failed to start 4 times in a row <x>".into());
        let html = render_page(&StatusView::new(info));
        assert!(html.contains(">gave up</span>"), "{html}");
        assert!(
            html.contains("Gave up: worker w1 failed to start 4 times in a row &lt;x&gt;;"),
            "{html}"
        );
    }

    #[test]
    fn sensitive_headers_are_redacted_again() {
        let mut view = StatusView::new(SupervisorInfo::new("0.1.0", 1));
        let report = serde_json::json!({"message": "m", "request": {"method": "GET", "path": "/",
            "request_id": "r", "headers": {"Cookie": "session=hunter2", "accept": "*/*"}}});
        view.reports
            .push(Record::Panic(PanicRecord::new(None, report)));
        let html = render_page(&view);
        assert!(!html.contains("hunter2"));
        assert!(html.contains("&lt;redacted&gt;"));
    }

    #[test]
    fn credential_headers_are_hidden_even_in_a_record_not_redacted() {
        let mut view = StatusView::new(SupervisorInfo::new("0.1.0", 1));
        let report = serde_json::json!({"message": "m", "request": {"method": "GET", "path": "/",
            "headers": {"X-Api-Key": "KEYSECRET", "Authorization": "Bearer BEARERSECRET",
            "accept": "*/*"}}});
        view.reports.push(Record::Panic(PanicRecord {
            time: "2026-01-01T00:00:00Z".into(),
            worker: None,
            report,
        }));
        let html = render_page(&view);
        assert!(!html.contains("KEYSECRET"), "{html}");
        assert!(!html.contains("BEARERSECRET"), "{html}");
        assert!(html.contains("*/*"), "{html}");
    }

    #[test]
    fn page_stays_under_50_kb_with_huge_reports() {
        let mut view = StatusView::new(SupervisorInfo::new("0.1.0", 1));
        for _ in 0..200 {
            let report = serde_json::json!({"message": "x".repeat(10_000), "backtrace": "y".repeat(100_000)});
            view.reports
                .push(Record::Panic(PanicRecord::new(Some("w1"), report)));
        }
        let html = render_page(&view);
        assert!(html.len() < 50 * 1024, "{} bytes", html.len());
        assert!(html.contains("older reports left off"));
    }

    /// Review: fields made of `"`, six bytes once escaped, made a 156 KB page (they were cut
    /// before escaping, and a report's headers and backtrace added to a page already at its
    /// budget).
    #[test]
    fn page_stays_under_50_kb_whatever_its_reports_hold() {
        let q = |n: usize| "\"".repeat(n);
        let headers: serde_json::Map<String, serde_json::Value> = (0..64)
            .map(|i| (format!("h{i:02}{}", q(200)), serde_json::json!(q(400))))
            .collect();
        let worst = serde_json::json!({
            "message": q(2000), "backtrace": q(10_000), "location": q(400), "thread": q(200),
            "request": {"method": q(40), "path": format!("/{}", q(2000)), "request_id": q(200),
                "headers": headers},
            "rolled_back": vec![q(200); 20], "poisoned": vec![q(200); 20],
            "decision": {"action": q(40), "reason": q(400)},
        });
        let mut exit = ExitRecord::new(
            Some("w1"),
            Some(3),
            ExitStatus {
                code: Some(1),
                signal: None,
            },
        );
        exit.last_stderr_lines = vec![q(400); 20];
        // Exits and panics in every order, so that each kind of record comes at the budget.
        for exits_first in 0..8 {
            let mut view = StatusView::new(SupervisorInfo::new("0.1.0", 1));
            for w in 0..8 {
                let mut worker =
                    WorkerView::new(format!("w{w}{}", q(100)), Some(2), WorkerState::Ready);
                worker.last_report = Some(q(300));
                view.workers.push(worker);
            }
            for _ in 0..8 {
                // As a report file of an older supervisor may hold it: not cut when received.
                let mut record = PanicRecord::new(Some("w1"), serde_json::json!({}));
                record.report = worst.clone();
                view.reports.push(Record::Panic(record));
            }
            // The last records are shown first.
            for _ in 0..exits_first {
                view.reports.push(Record::Exit(exit.clone()));
            }
            let html = render_page(&view);
            assert!(
                html.len() < 50 * 1024,
                "{exits_first}: {} bytes",
                html.len()
            );
            assert!(html.contains("older reports left off"));
            if exits_first == 0 {
                // The report that reached the budget shows some of its headers only.
                assert!(html.contains("more left off: see"), "{html}");
            }
        }
    }

    /// Found by `long_lists_in_a_report_keep_the_page_small`.
    #[test]
    fn a_report_with_thousands_of_rolled_back_entries_is_shown_in_part() {
        let mut view = StatusView::new(SupervisorInfo::new("0.1.0", 1));
        let report = serde_json::json!({"message": "m", "rolled_back": vec!["cart_total"; 5000],
            "poisoned": vec!["sessions"; 5000]});
        // As a report file of an older supervisor holds it: one received now keeps 64.
        let mut record = PanicRecord::new(Some("w1"), serde_json::json!({}));
        record.report = report;
        view.reports.push(Record::Panic(record));
        let html = render_page(&view);
        assert!(html.len() < 50 * 1024, "{} bytes", html.len());
        assert!(html.contains("cart_total, … 4984 more"), "{html}");
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(esc_trunc("héllo", 2), "h… (5 bytes more)");
    }

    use crate::status::{ExitStatus, ReloadOutcome, WorkerView};
    use proptest::prelude::*;

    /// Text a worker may send: HTML's special characters, multibyte characters (so that the
    /// cut lengths fall at and around them), line breaks, NUL.
    fn worker_text(len: std::ops::Range<usize>) -> impl Strategy<Value = String> {
        const PIECES: &[&str] = &[
            "a", "b", "c", "x", " ", "<", ">", "\"", "&", "'", "é", "日本", "🦀", "\r", "\n", "\0",
        ];
        proptest::collection::vec(prop::sample::select(PIECES), len).prop_map(|p| p.concat())
    }

    /// A view in which every string a worker (or a supervisor of another version, through
    /// `/status`) chose is one of `t`, each passed through `f`.
    fn view_of(t: &[String], f: impl Fn(&str) -> String) -> StatusView {
        let t: Vec<String> = t.iter().map(|s| f(s)).collect();
        let mut info = SupervisorInfo::new(t[0].clone(), 1);
        info.listen = vec![t[1].clone(), t[2].clone()];
        info.gave_up = true;
        info.gave_up_reason = Some(t[3].clone());
        info.last_reload = Some(ReloadOutcome::now(2, Some(t[4].clone())));
        // The same instants in every view made.
        const T: &str = "2026-01-01T00:00:00.000Z";
        if let Some(r) = info.last_reload.as_mut() {
            r.at = T.into();
        }
        let mut view = StatusView::new(info);
        view.generated_at = "2026-01-01T00:01:00.000Z".into();
        let mut w = WorkerView::new(t[5].clone(), Some(2), WorkerState::Ready);
        w.last_report = Some(t[6].clone());
        view.workers.push(w);
        let mut restart = RestartEvent::now(t[7].clone(), RestartReason::Hang);
        restart.time = T.into();
        view.restarts.push(restart);
        let report = serde_json::json!({
            "pid": 2, "message": t[8], "location": t[9], "thread": t[10],
            "backtrace": t[11], "rolled_back": [t[12], t[13]], "poisoned": [t[14]],
            "decision": {"action": t[15], "reason": t[16]},
            "request": {"method": t[17], "path": t[18], "request_id": t[19],
                // (Names sorted the same way whatever the text: an object keeps its keys sorted.)
                "headers": {format!("a{}", t[20]): t[21], "b": t[22]}},
        });
        let mut panic = PanicRecord::new(Some(&t[23]), report);
        panic.time = T.into();
        view.reports.push(Record::Panic(panic));
        let mut exit = ExitRecord::new(
            Some(&t[24]),
            Some(3),
            ExitStatus {
                code: Some(1),
                signal: None,
            },
        );
        exit.time = T.into();
        exit.last_stderr_lines = vec![t[25].clone(), t[26].clone()];
        view.reports.push(Record::Exit(exit));
        view
    }

    /// `view_of`'s 27 strings, each at most as long as its field on the page shows uncut: the
    /// most pieces (of at most 6 bytes escaped: `&quot;`, `日本`) for each.
    fn uncut_worker_texts() -> Vec<BoxedStrategy<String>> {
        const PIECES_MAX: [usize; 27] = [
            80, 80, 80, 80, 80,  // version, listen, gave_up_reason, reload reason: not cut
            10,  // worker id: 64 bytes
            33,  // last_report: 200
            80,  // a restart's worker: not shown
            170, // message: 1024
            42,  // location: 256
            21,  // thread: 128
            300, // backtrace: 4096
            21, 21, 21,  // list entries: 128
            5,   // decision.action: 32
            42,  // decision.reason: 256
            5,   // method: 32
            170, // path: 1024
            21,  // request_id: 128
            21,  // a header name (after its `a`): 128
            42, 42, // header values: 256
            80, 80, // the records' workers: not cut
            49, 49, // stderr lines: 300
        ];
        PIECES_MAX
            .iter()
            .map(|&n| worker_text(0..n + 1).boxed())
            .collect()
    }

    /// `html` with each character reference `esc` writes read back as `x`.
    fn unescaped_as_x(html: &str) -> String {
        let mut out = String::with_capacity(html.len());
        let mut rest = html;
        while let Some(at) = rest.find('&') {
            out.push_str(&rest[..at]);
            let entity = ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;"]
                .into_iter()
                .find(|e| rest[at..].starts_with(e));
            match entity {
                Some(e) => {
                    out.push('x');
                    rest = &rest[at + e.len()..];
                }
                None => {
                    out.push('&');
                    rest = &rest[at + 1..];
                }
            }
        }
        out + rest
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Every string a worker chose reaches the page escaped, once: the page is the one it
        /// would be with `x` in place of each `<`, `>`, `"`, `&` and `'` (whose escapes are
        /// read back as `x`), and nothing else differs. A special character that slipped
        /// through, or one escaped twice, shows.
        ///
        /// Each string is short enough that its field is not cut: a field is cut on its
        /// escaped length, so the page with `x`s would keep more of it.
        /// `a_cut_field_is_escaped_once_and_within_its_bound` checks the cut.
        #[test]
        fn worker_text_is_escaped_once_everywhere(t in uncut_worker_texts()) {
            let html = render_page(&view_of(&t, |s| s.to_owned()));
            prop_assert!(!html.contains("older reports left off"), "over budget: adjust the lengths");
            let plain = render_page(&view_of(&t, |s| s.replace(['<', '>', '"', '&', '\''], "x")));
            prop_assert_eq!(unescaped_as_x(&html), plain);
        }

        /// A field cut for the page is a prefix of its escaped text that ends between two
        /// characters (never inside `&quot;`), as long as its bound allows and no longer, and
        /// says how many bytes of the text it left off.
        #[test]
        fn a_cut_field_is_escaped_once_and_within_its_bound(
            text in worker_text(0..200),
            max in 0..800usize,
        ) {
            let shown = esc_trunc(&text, max);
            let (kept, left_off) = match shown.strip_suffix(" bytes more)").and_then(|s| s.rsplit_once("… (")) {
                Some((kept, n)) => (kept, n.parse::<usize>().unwrap()),
                None => (shown.as_str(), 0),
            };
            let end = text.len() - left_off;
            prop_assert!(text.is_char_boundary(end));
            prop_assert_eq!(kept, esc(&text[..end]));
            prop_assert!(kept.len() <= max, "{} > {max}", kept.len());
            if let Some(next) = text[end..].chars().next() {
                prop_assert!(kept.len() + esc(&next.to_string()).len() > max, "cut too early");
            }
        }

        /// However long the lists a report holds (`rolled_back`, `poisoned`: any worker may
        /// send thousands of entries), the page stays under 50 KB.
        #[test]
        fn long_lists_in_a_report_keep_the_page_small(
            (rolled, n) in (worker_text(1..12), 0..5000usize),
            (poisoned, m) in (worker_text(1..12), 0..5000usize),
        ) {
            let (rolled, poisoned) = (vec![rolled; n], vec![poisoned; m]);
            let mut view = StatusView::new(SupervisorInfo::new("0.1.0", 1));
            let report = serde_json::json!({"message": "m", "rolled_back": rolled, "poisoned": poisoned});
            view.reports.push(Record::Panic(PanicRecord::new(Some("w1"), report)));
            let html = render_page(&view);
            prop_assert!(html.len() < 50 * 1024, "{} bytes", html.len());
        }
    }
}
