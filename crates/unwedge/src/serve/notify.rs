//! Talking to the supervisor over `NOTIFY_SOCKET` (the sd_notify protocol).
//!
//! Messages sent, one datagram each:
//!
//! | message | when |
//! | --- | --- |
//! | `READY=1` + `STATUS=serving on …` | the listeners accept |
//! | `STATUS=<state>[: reason]` | the health registry changes state |
//! | `WATCHDOG=1` | every half of `WATCHDOG_USEC`, only while Healthy or Draining |
//! | `STOPPING=1` | graceful shutdown or graceful crash begins |
//! | `UNWEDGE_REPORT=<json>` | a panic was caught (see [`encode_report`]) |

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use sd_notify::NotifyState;

use crate::PanicReport;

/// The largest `UNWEDGE_REPORT=` datagram sent, in bytes. Unix datagrams can be larger, but a
/// receiver's buffer may not be; 60 KB leaves room under the common 64 KiB limits.
pub const MAX_REPORT_BYTES: usize = 60_000;

/// Sends notify messages; a socket that vanished is logged once per outage, never fatal.
#[derive(Debug)]
pub(crate) struct Notifier {
    path: Option<PathBuf>,
    failing: AtomicBool,
}

impl Notifier {
    pub(crate) fn new(path: Option<PathBuf>) -> Self {
        Notifier {
            path,
            failing: AtomicBool::new(false),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.path.is_some()
    }

    /// Sends one datagram; returns whether it was delivered.
    pub(crate) fn send(&self, states: &[NotifyState<'_>]) -> bool {
        let Some(path) = &self.path else { return false };
        match sd_notify::notify(false, states) {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(socket = %path.display(), "notify socket reachable again");
                }
                true
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        socket = %path.display(),
                        error = %e,
                        "cannot send to NOTIFY_SOCKET; serving continues without it (logged once)"
                    );
                }
                false
            }
        }
    }

    pub(crate) fn status(&self, status: &str) -> bool {
        self.send(&[NotifyState::Status(&one_line(status))])
    }

    pub(crate) fn report(&self, report: &PanicReport) -> bool {
        if !self.enabled() {
            return false;
        }
        let line = encode_report(report);
        self.send(&[NotifyState::Custom(&line)])
    }
}

/// Notify messages are newline-separated `KEY=value` lines: a value must be one line.
pub(crate) fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// Encodes a panic report as the one-line notify message `UNWEDGE_REPORT=<json>`.
///
/// The JSON is the [`PanicReport`] serialized with serde. When the message would exceed
/// [`MAX_REPORT_BYTES`], fields are cut in this order until it fits: the backtrace, then the
/// request headers, then the message (truncated on a character boundary). The JSON then
/// carries `"truncated": [...]` naming what was cut, so a report is never dropped silently.
///
/// ```
/// # use unwedge::PanicReport;
/// # let report: PanicReport = serde_json::from_str(r#"{"time":"t","pid":1,
/// #  "message":"boom","location":null,"thread":null,"backtrace":null,"request":null,
/// #  "task":null,"rolled_back":[],"poisoned":[],"decision":null}"#).unwrap();
/// let line = unwedge::serve::encode_report(&report);
/// assert!(line.starts_with("UNWEDGE_REPORT={"));
/// assert!(!line.contains('\n'));
/// ```
pub fn encode_report(report: &PanicReport) -> String {
    const PREFIX: &str = "UNWEDGE_REPORT=";
    let budget = MAX_REPORT_BYTES - PREFIX.len();
    let mut value = match serde_json::to_value(report) {
        Ok(v) => v,
        Err(e) => serde_json::json!({ "message": format!("<report not serializable: {e}>") }),
    };
    let mut cut: Vec<&str> = Vec::new();
    let fits = |v: &serde_json::Value| serde_json::to_string(v).map_or(0, |s| s.len()) <= budget;
    if !fits(&value) {
        if let Some(obj) = value.as_object_mut() {
            if obj.get("backtrace").is_some_and(|b| !b.is_null()) {
                obj.insert("backtrace".into(), serde_json::Value::Null);
                cut.push("backtrace");
                obj.insert("truncated".into(), serde_json::json!(cut));
            }
        }
    }
    if !fits(&value) {
        if let Some(req) = value.get_mut("request").and_then(|r| r.as_object_mut()) {
            req.insert("headers".into(), serde_json::json!({}));
            cut.push("request.headers");
        }
        if let Some(obj) = value.as_object_mut() {
            obj.insert("truncated".into(), serde_json::json!(cut));
        }
    }
    if !fits(&value) {
        cut.push("message");
        let others = {
            let mut v = value.clone();
            v["message"] = serde_json::Value::String(String::new());
            v["truncated"] = serde_json::json!(cut);
            serde_json::to_string(&v).map_or(0, |s| s.len())
        };
        const MARK: &str = "…<truncated>";
        let room = budget.saturating_sub(others + MARK.len());
        let msg = value["message"].as_str().unwrap_or("").to_owned();
        // JSON escaping can grow text: shrink until the encoded form fits.
        let mut end = floor_char_boundary(&msg, room);
        loop {
            let candidate = format!("{}{MARK}", &msg[..end]);
            value["message"] = serde_json::Value::String(candidate);
            value["truncated"] = serde_json::json!(cut);
            if fits(&value) || end == 0 {
                break;
            }
            end = floor_char_boundary(&msg, end.saturating_sub(end / 8 + 1));
        }
    }
    let json = serde_json::to_string(&value).unwrap_or_else(|_| "{}".into());
    format!("{PREFIX}{json}")
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(message: &str, backtrace: Option<&str>) -> PanicReport {
        let mut v = serde_json::json!({"time":"t","pid":1,"message":message,"location":null,
            "thread":null,"backtrace":backtrace,"request":{"method":"GET","path":"/x",
            "request_id":"r","headers":{"user-agent":"x".repeat(1000)}},
            "task":null,"rolled_back":[],"poisoned":[],"decision":null});
        v["message"] = serde_json::Value::String(message.into());
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn small_report_is_sent_whole() {
        let line = encode_report(&report("boom", Some("bt")));
        let v: serde_json::Value =
            serde_json::from_str(line.strip_prefix("UNWEDGE_REPORT=").unwrap()).unwrap();
        assert_eq!(v["backtrace"], "bt");
        assert!(v.get("truncated").is_none());
    }

    #[test]
    fn huge_backtrace_is_dropped_first() {
        let line = encode_report(&report("boom", Some(&"frame\n".repeat(20_000))));
        assert!(line.len() <= MAX_REPORT_BYTES);
        let v: serde_json::Value =
            serde_json::from_str(line.strip_prefix("UNWEDGE_REPORT=").unwrap()).unwrap();
        assert_eq!(v["message"], "boom");
        assert!(v["backtrace"].is_null());
        assert_eq!(v["truncated"], serde_json::json!(["backtrace"]));
    }

    #[test]
    fn huge_message_is_truncated_with_marker() {
        let msg = "é\"".repeat(100_000);
        let line = encode_report(&report(&msg, Some("bt")));
        assert!(line.len() <= MAX_REPORT_BYTES, "{}", line.len());
        assert!(!line.contains('\n'));
        let v: serde_json::Value =
            serde_json::from_str(line.strip_prefix("UNWEDGE_REPORT=").unwrap()).unwrap();
        assert!(v["message"].as_str().unwrap().ends_with("…<truncated>"));
        assert!(v["message"].as_str().unwrap().len() > 30_000);
        assert_eq!(
            v["truncated"],
            serde_json::json!(["backtrace", "request.headers", "message"])
        );
    }
}
