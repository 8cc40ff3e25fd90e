//! Talking to the supervisor over `NOTIFY_SOCKET` (the sd_notify protocol).
//!
//! Messages sent, one datagram each:
//!
//! | message | when |
//! | --- | --- |
//! | `READY=1` + `STATUS=serving on …` (+ `WATCHDOG=1` with `WATCHDOG_USEC`) | the listeners accept |
//! | `STATUS=<state>[: reason]` | the health registry changes state |
//! | `WATCHDOG=1` | every half of `WATCHDOG_USEC`, only while Healthy or Draining |
//! | `STOPPING=1` | graceful shutdown or graceful crash begins |
//! | `UNWEDGE_REPORT=<json>` | a panic was caught (see [`encode_report`]) |
//!
//! `NOTIFY_SOCKET` may be a socket path or an abstract name (`@name`), as sd_notify(3) says.
//! Messages are sent by one thread, in order, from a bounded queue: a receiver that stops
//! reading never blocks a request or the watchdog (see [`Notifier`]).

use std::fmt::Write as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use crate::PanicReport;

/// The largest `UNWEDGE_REPORT=` datagram sent, in bytes. Unix datagrams can be larger, but a
/// receiver's buffer may not be; 60 KB leaves room under the common 64 KiB limits.
pub const MAX_REPORT_BYTES: usize = 60_000;

/// How many messages may wait for the socket before new ones are dropped.
const QUEUE: usize = 256;

/// How long one datagram may wait for room in the receiver's queue.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// Where `NOTIFY_SOCKET` points: a path, or an abstract name (`@name`).
#[derive(Debug, Clone)]
pub(crate) struct Target {
    addr: SocketAddr,
    shown: String,
}

impl Target {
    /// A socket path (absolute).
    pub(crate) fn path(path: &str) -> std::io::Result<Self> {
        Ok(Target {
            addr: SocketAddr::from_pathname(path)?,
            shown: path.to_owned(),
        })
    }

    /// An abstract socket: `name` without the leading `@`.
    pub(crate) fn abstract_name(name: &str) -> std::io::Result<Self> {
        use std::os::linux::net::SocketAddrExt;
        Ok(Target {
            addr: SocketAddr::from_abstract_name(name.as_bytes())?,
            shown: format!("@{name}"),
        })
    }
}

/// Sends notify messages without ever blocking the thread that has something to say.
///
/// A datagram to a receiver whose queue is full blocks the sender (Linux queues at most
/// `net.unix.max_dgram_qlen` datagrams, 10 by default, per receiver). A supervisor that stops
/// reading must not freeze a request thread sending a panic report, nor the watchdog thread
/// sending `WATCHDOG=1`: so every message goes into a bounded queue (in order) and one thread,
/// `unwedge-notify`, sends them, each waiting at most [`SEND_TIMEOUT`] for room. A full queue
/// drops the new message (counted, logged once per outage). A socket that vanished is logged
/// once per outage, never fatal.
#[derive(Debug)]
pub(crate) struct Notifier {
    target: Option<Target>,
    queue: Option<SyncSender<Vec<u8>>>,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    /// Queued or being sent.
    pending: AtomicUsize,
    dropped: AtomicU64,
    /// A drop was logged and no message was sent since.
    dropping: AtomicBool,
    failing: AtomicBool,
}

impl Notifier {
    /// A notifier sending to `target` (`None`: sends nothing). Starts the sending thread.
    pub(crate) fn new(target: Option<Target>) -> Self {
        let shared = Arc::new(Shared::default());
        let queue = target.as_ref().and_then(|t| start_sender(t, &shared));
        Notifier {
            target,
            queue,
            shared,
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// Queues one datagram; returns whether it was queued (not whether it was delivered).
    pub(crate) fn send(&self, states: &[NotifyState<'_>]) -> bool {
        self.queue_bytes(datagram(states).into_bytes())
    }

    fn queue_bytes(&self, msg: Vec<u8>) -> bool {
        let Some(queue) = &self.queue else {
            return false;
        };
        self.shared.pending.fetch_add(1, Ordering::SeqCst);
        match queue.try_send(msg) {
            Ok(()) => true,
            Err(e) => {
                self.shared.pending.fetch_sub(1, Ordering::SeqCst);
                let dropped = self.shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if matches!(e, TrySendError::Full(_))
                    && !self.shared.dropping.swap(true, Ordering::Relaxed)
                {
                    tracing::warn!(
                        socket = %self.shown(),
                        dropped,
                        "NOTIFY_SOCKET is not being read: {QUEUE} messages wait; dropping new ones (logged once until it reads again)"
                    );
                }
                false
            }
        }
    }

    fn shown(&self) -> &str {
        self.target.as_ref().map_or("", |t| t.shown.as_str())
    }

    /// Waits until every queued message was sent (or given up on), at most `limit`; returns
    /// whether the queue is empty.
    pub(crate) fn flush(&self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        while self.shared.pending.load(Ordering::SeqCst) > 0 {
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    pub(crate) fn status(&self, status: &str) -> bool {
        self.send(&[NotifyState::Status(&one_line(status))])
    }

    pub(crate) fn report(&self, report: &PanicReport) -> bool {
        if !self.enabled() {
            return false;
        }
        self.queue_bytes(encode_report(report).into_bytes())
    }
}

/// The socket and the thread that sends the queued messages; `None` (logged) if either
/// cannot be made.
fn start_sender(target: &Target, shared: &Arc<Shared>) -> Option<SyncSender<Vec<u8>>> {
    let sock = match UnixDatagram::unbound().and_then(|s| {
        s.set_write_timeout(Some(SEND_TIMEOUT))?;
        Ok(s)
    }) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(socket = %target.shown, error = %e, "cannot create a socket for NOTIFY_SOCKET; serving continues without it");
            return None;
        }
    };
    let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE);
    let (to, shared) = (target.clone(), shared.clone());
    let spawned = std::thread::Builder::new()
        .name("unwedge-notify".into())
        .spawn(move || {
            // Ends when the notifier (the only sender) is dropped and the queue is empty.
            for msg in rx {
                deliver(&sock, &to, &shared, &msg);
                shared.pending.fetch_sub(1, Ordering::SeqCst);
            }
        });
    match spawned {
        Ok(_) => Some(tx),
        Err(e) => {
            tracing::warn!(socket = %target.shown, error = %e, "cannot start the notify thread; serving continues without NOTIFY_SOCKET");
            None
        }
    }
}

fn deliver(sock: &UnixDatagram, target: &Target, shared: &Shared, msg: &[u8]) {
    match sock.send_to_addr(msg, &target.addr) {
        Ok(_) => {
            if shared.failing.swap(false, Ordering::Relaxed) {
                tracing::info!(socket = %target.shown, "notify socket reachable again");
            }
            // Drops end once the queue has drained (this message was the last one).
            if shared.pending.load(Ordering::SeqCst) <= 1
                && shared.dropping.swap(false, Ordering::Relaxed)
            {
                tracing::info!(
                    socket = %target.shown,
                    dropped = shared.dropped.load(Ordering::Relaxed),
                    "NOTIFY_SOCKET is being read again"
                );
            }
        }
        Err(e) => {
            if !shared.failing.swap(true, Ordering::Relaxed) {
                let why = if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) {
                    format!("its queue stayed full for {SEND_TIMEOUT:?}")
                } else {
                    e.to_string()
                };
                tracing::warn!(
                    socket = %target.shown,
                    error = %why,
                    "cannot send to NOTIFY_SOCKET; serving continues without it (logged once)"
                );
            }
        }
    }
}

/// The notifier of the current (latest) `serve()`: panic reports go there, and
/// [`exit_now`](super::exit_now) flushes it.
static CURRENT: OnceLock<RwLock<Option<Arc<Notifier>>>> = OnceLock::new();

/// Makes `notifier` the current one; the first call also registers the panic-report sink
/// that forwards to whichever is current.
pub(crate) fn set_current(notifier: &Arc<Notifier>) {
    let mut first = false;
    let slot = CURRENT.get_or_init(|| {
        first = true;
        RwLock::new(None)
    });
    *slot.write().unwrap_or_else(|p| p.into_inner()) = Some(notifier.clone());
    if first {
        crate::panic::add_sink(Arc::new(|report: &PanicReport| {
            if let Some(n) = current() {
                n.report(report);
            }
        }));
    }
}

pub(crate) fn current() -> Option<Arc<Notifier>> {
    CURRENT
        .get()
        .and_then(|s| s.read().unwrap_or_else(|p| p.into_inner()).clone())
}

/// One notify datagram: each state on a line of its own.
fn datagram(states: &[NotifyState<'_>]) -> String {
    let mut msg = String::new();
    for s in states {
        let _ = writeln!(msg, "{s}");
    }
    msg
}

/// Longest `STATUS=` value sent, in bytes (longer ones are cut, with `…`): systemd reads a
/// notify datagram into 4 KiB and ignores a longer one whole, the `STOPPING=1` or `READY=1`
/// sent with it included; and a reason can name a client's path (up to 64 KiB).
pub(crate) const MAX_STATUS: usize = 1024;

/// Notify messages are newline-separated `KEY=value` lines: a value must be one line, and a
/// `STATUS=` value at most [`MAX_STATUS`] bytes.
pub(crate) fn one_line(s: &str) -> String {
    let end = crate::text::floor_char_boundary(s, MAX_STATUS);
    let mut line = s[..end].replace(['\n', '\r'], " ");
    if end < s.len() {
        line.push('…');
    }
    line
}

/// Encodes a panic report as the one-line notify message `UNWEDGE_REPORT=<json>`.
///
/// The JSON is the [`PanicReport`] serialized with serde. When the message would exceed
/// [`MAX_REPORT_BYTES`], fields are cut in this order until it fits: the backtrace, then the
/// request headers, then the request's method and path (each to its first KiB: a client's
/// choice, a path up to 64 KiB), then the message (truncated on a character boundary, down to
/// nothing if need be). The JSON then carries `"truncated": [...]` naming what was cut, so a
/// report is never dropped silently. The other fields (location, thread and task names, the
/// names of the states involved, the route, the request id) are short and never cut.
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
    const MARK: &str = crate::panic::context::CUT_MARK;
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
        for (field, name) in [("method", "request.method"), ("path", "request.path")] {
            if let Some(text) = value.get_mut("request").and_then(|r| r.get_mut(field)) {
                if shorten(text, MAX_REQUEST_TEXT, MARK) {
                    cut.push(name);
                }
            }
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
        let room = budget.saturating_sub(others + MARK.len());
        let msg = value["message"].as_str().unwrap_or("").to_owned();
        // JSON escaping can grow text: shrink until the encoded form fits.
        let mut end = crate::text::floor_char_boundary(&msg, room);
        loop {
            let candidate = format!("{}{MARK}", &msg[..end]);
            value["message"] = serde_json::Value::String(candidate);
            value["truncated"] = serde_json::json!(cut);
            if fits(&value) || end == 0 {
                break;
            }
            end = crate::text::floor_char_boundary(&msg, end.saturating_sub(end / 8 + 1));
        }
    }
    let json = serde_json::to_string(&value).unwrap_or_else(|_| "{}".into());
    format!("{PREFIX}{json}")
}

/// Most bytes of a request's method or path kept in a report cut to fit (see
/// [`encode_report`]).
const MAX_REQUEST_TEXT: usize = 1024;

/// Cuts a JSON string longer than `max` bytes to its first `max` (on a character boundary)
/// and `mark`; returns whether it did.
fn shorten(text: &mut serde_json::Value, max: usize, mark: &str) -> bool {
    match text.as_str() {
        Some(s) if s.len() > max => {
            *text = format!("{}{mark}", &s[..crate::text::floor_char_boundary(s, max)]).into();
            true
        }
        _ => false,
    }
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

    #[test]
    fn a_clients_long_path_or_method_is_cut_to_fit() {
        let mut r = report("boom", None);
        let req = r.request.as_mut().unwrap();
        req.path = format!("/{}", "p".repeat(60_000));
        let line = encode_report(&r);
        assert!(line.len() <= MAX_REPORT_BYTES, "{}", line.len());
        let v: serde_json::Value =
            serde_json::from_str(line.strip_prefix("UNWEDGE_REPORT=").unwrap()).unwrap();
        assert_eq!(v["message"], "boom");
        assert!(v["request"]["path"]
            .as_str()
            .unwrap()
            .ends_with("…<truncated>"));
        assert_eq!(
            v["truncated"],
            serde_json::json!(["request.headers", "request.path"])
        );
        let req = r.request.as_mut().unwrap();
        req.path = "/x".into();
        req.method = "M".repeat(70_000);
        let line = encode_report(&r);
        assert!(line.len() <= MAX_REPORT_BYTES, "{}", line.len());
        assert!(line.contains(r#""message":"boom""#));
    }

    #[test]
    fn a_crash_in_a_request_with_a_long_path_still_tells_systemd_it_stops() {
        let reason = format!("panic in GET /{}: policy is crash", "p".repeat(65_000));
        let status =
            crate::watchdog::status_text(crate::HealthState::Tainted, Some(&reason), "127.0.0.1:1");
        assert!(status.starts_with("tainted: panic in GET /ppp"), "{status}");
        // As serve() sends a crash: its reason, then STOPPING=1, in one datagram.
        let msg = datagram(&[NotifyState::Status(&status), NotifyState::Stopping]);
        assert!(msg.len() <= 4096, "{} bytes", msg.len());
        assert!(msg.ends_with("\nSTOPPING=1\n"));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Text with the hard cases (multibyte UTF-8, characters JSON escapes, control
        /// characters, newlines), sometimes after a run of `a`s that puts the next piece at
        /// and around `near`.
        fn text(near: usize) -> impl Strategy<Value = String> {
            let piece = prop::sample::select(vec![
                "a", "é", "日本", "🦀", "\"", "\\", "%", "@", "\n", "\r", "\0", "\u{1f}", "\u{7f}",
                "\u{2028}", "…",
            ]);
            let pad = prop_oneof![Just(0), 1usize..64, near.saturating_sub(64)..near + 64];
            (pad, prop::collection::vec(piece, 0..10))
                .prop_map(|(pad, pieces)| "a".repeat(pad) + &pieces.concat())
        }

        /// What a client can put in a request path: `http::Uri` takes up to 65 534 bytes of
        /// visible ASCII, `"`, `{` and `}` included.
        fn path() -> impl Strategy<Value = String> {
            let piece = prop::sample::select(vec!["/", "a", "%E9", "\"", "{}", "@", ":"]);
            let len = prop_oneof![Just(0usize), 1usize..64, 59_000usize..65_534];
            (len, prop::collection::vec(piece, 0..6))
                .prop_map(|(len, pieces)| format!("/{}{}", "p".repeat(len), pieces.concat()))
        }

        fn report() -> impl Strategy<Value = PanicReport> {
            let headers = prop::collection::btree_map("[a-z-]{1,12}", text(1024), 0..8);
            // hyper takes any token as a method, as long as its request head buffer.
            let method = prop_oneof![
                Just("GET".to_owned()),
                "[A-Z]{1,64}",
                (59_000usize..70_000).prop_map(|n| "M".repeat(n)),
            ];
            let request = (method, path(), headers).prop_map(|(method, path, headers)| {
                serde_json::json!({"method": method, "path": path, "request_id": "r",
                    "headers": headers})
            });
            (
                text(MAX_REPORT_BYTES),
                proptest::option::of(text(MAX_REPORT_BYTES)),
                proptest::option::of(request),
            )
                .prop_map(|(message, backtrace, request)| {
                    serde_json::from_value(serde_json::json!({"time": "t", "pid": 1,
                        "message": message, "location": "src/x.rs:1:2", "thread": null,
                        "backtrace": backtrace, "request": request, "task": null,
                        "rolled_back": ["cache"], "poisoned": [], "decision": null}))
                    .expect("a report")
                })
        }

        proptest! {
            #![proptest_config(crate::text::proptest_config(256))]

            /// Any report whose text comes from clients or handlers: the notify message is
            /// one line within `MAX_REPORT_BYTES`, its JSON parses back to a report, and the
            /// message is the original or a start of it marked as cut.
            #[test]
            fn a_report_message_is_one_line_of_json_within_the_datagram_limit(
                r in report(),
            ) {
                let line = encode_report(&r);
                prop_assert!(line.len() <= MAX_REPORT_BYTES, "{} bytes", line.len());
                prop_assert!(!line.contains(['\n', '\r']));
                let json = line.strip_prefix("UNWEDGE_REPORT=").expect("prefix");
                let back: PanicReport = serde_json::from_str(json).expect("parses back");
                match back.message.strip_suffix("…<truncated>") {
                    Some(kept) if back.message != r.message => {
                        prop_assert!(r.message.starts_with(kept));
                    }
                    _ => prop_assert_eq!(&back.message, &r.message),
                }
            }

            /// Any status text (a health reason names a client's path): `STATUS=` gets one
            /// line of at most `MAX_STATUS` bytes and `…`, the text's start.
            #[test]
            fn a_status_is_one_line_within_its_limit(s in text(MAX_STATUS)) {
                let line = one_line(&s);
                let whole = s.replace(['\n', '\r'], " ");
                prop_assert!(!line.contains(['\n', '\r']));
                if s.len() <= MAX_STATUS {
                    prop_assert_eq!(line, whole);
                } else {
                    let kept = line.strip_suffix('…').expect("a cut is marked");
                    prop_assert!(kept.len() <= MAX_STATUS && kept.len() > MAX_STATUS - 4);
                    prop_assert!(whole.starts_with(kept));
                }
            }
        }
    }
}
