//! [`PanicReport`]: what one panic did, in a form an operator can read and a machine can parse.

use std::collections::BTreeMap;
use std::time::SystemTime;

use http::header::{
    HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, HOST,
    PROXY_AUTHORIZATION, REFERER, SET_COOKIE, USER_AGENT,
};
use http::HeaderMap;
use serde::{Deserialize, Serialize};

use super::context::Captured;

/// Header names whose values never appear in a report, whatever the configuration says.
pub const REDACTED_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// [`REDACTED_HEADERS`] as header names, in the same order.
static REDACTED_NAMES: [HeaderName; 4] = [AUTHORIZATION, PROXY_AUTHORIZATION, COOKIE, SET_COOKIE];

/// The request headers whose values a [`PanicLayer`](crate::PanicLayer) report shows by
/// default (see [`PanicLayer::report_headers`](crate::PanicLayer::report_headers)):
/// `host`, `user-agent`, `content-type`, `content-length`, `accept`, `referer` and
/// `x-forwarded-for`. Whatever the list, the [`REDACTED_HEADERS`] a request carries are
/// always listed, with the value [`REDACTED`].
pub static REPORTED_HEADERS: [HeaderName; 7] = [
    HOST,
    USER_AGENT,
    CONTENT_TYPE,
    CONTENT_LENGTH,
    ACCEPT,
    REFERER,
    HeaderName::from_static("x-forwarded-for"),
];

/// The text that replaces a redacted header value.
pub const REDACTED: &str = "<redacted>";

/// One panic: where it happened, what request or task it hit, and what it did to the state.
///
/// Serialized with serde (JSON in logs, in the `UNWEDGE_REPORT=` notify message and in the
/// supervisor's report directory). Header values of [`REDACTED_HEADERS`] are always replaced
/// by [`REDACTED`].
///
/// ```
/// # use unwedge::PanicReport;
/// let json = r#"{"time":"2026-01-01T00:00:00.000Z","pid":7,"message":"boom",
///   "location":"src/main.rs:1:1","thread":null,"backtrace":null,"request":null,
///   "task":"cleanup","rolled_back":["cache"],"poisoned":[],"decision":null}"#;
/// let report: PanicReport = serde_json::from_str(json).unwrap();
/// assert_eq!(report.rolled_back, ["cache"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PanicReport {
    /// When the panic started, RFC 3339 in UTC with milliseconds.
    pub time: String,
    /// The process that panicked.
    pub pid: u32,
    /// The panic message (`&str` or `String` payloads; `Box<dyn Any>` otherwise).
    pub message: String,
    /// `file:line:column` of the panic.
    pub location: Option<String>,
    /// Name of the panicking thread, if it has one.
    pub thread: Option<String>,
    /// The backtrace, when captured (see [`install`](crate::install)).
    pub backtrace: Option<String>,
    /// The request being handled, for panics inside a handler.
    pub request: Option<RequestInfo>,
    /// The background task's name, for panics inside [`spawn`](crate::spawn).
    pub task: Option<String>,
    /// Names of the [`Tx`](crate::Tx)s whose update the panic rolled back: they are intact.
    pub rolled_back: Vec<String>,
    /// Names of the [`Mutex`](crate::Mutex)es the panic poisoned: their data may be
    /// half-updated.
    pub poisoned: Vec<String>,
    /// What the policy decided to do about it.
    pub decision: Option<Decision>,
}

/// The request a panic interrupted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RequestInfo {
    /// HTTP method.
    pub method: String,
    /// Request path, without the query string.
    pub path: String,
    /// The request id echoed in the `x-request-id` response header.
    pub request_id: String,
    /// Request headers, sensitive values redacted.
    pub headers: BTreeMap<String, String>,
}

impl RequestInfo {
    /// Describes a request for a report: the path without its query, and the headers with
    /// [`REDACTED_HEADERS`] redacted and non-UTF-8 values shown as `<binary>`.
    ///
    /// ```
    /// # use unwedge::panic::RequestInfo;
    /// let req = http::Request::get("/cart?card=4111")
    ///     .header("authorization", "Bearer secret")
    ///     .body(())
    ///     .unwrap();
    /// let info = RequestInfo::from_request(&req, "req-1");
    /// assert_eq!(info.path, "/cart");
    /// assert_eq!(info.headers["authorization"], "<redacted>");
    /// ```
    pub fn from_request<B>(req: &http::Request<B>, request_id: &str) -> Self {
        let headers = req
            .headers()
            .iter()
            .map(|(name, value)| {
                let shown = if REDACTED_HEADERS.contains(&name.as_str()) {
                    REDACTED.to_owned()
                } else {
                    value.to_str().unwrap_or("<binary>").to_owned()
                };
                (name.as_str().to_owned(), shown)
            })
            .collect();
        RequestInfo {
            method: req.method().to_string(),
            path: req.uri().path().to_owned(),
            request_id: request_id.to_owned(),
            headers,
        }
    }
}

/// The request headers a layer keeps for a report, taken before the request moves into the
/// handler: clones of the wanted values (a reference count each, no copy) and which
/// [`REDACTED_HEADERS`] were present. Turned into text only when a panic is reported.
#[derive(Debug, Default)]
pub(crate) struct CapturedHeaders {
    /// Bit `i` set: `REDACTED_NAMES[i]` was present.
    redacted: u8,
    /// `(i, value)`: the first value of `wanted[i]`.
    values: Vec<(usize, HeaderValue)>,
}

impl CapturedHeaders {
    /// Keeps the first value of each of the `wanted` headers `headers` has, and notes the
    /// redacted ones present (a redacted name in `wanted` is still redacted). Also returns
    /// the first value of `also` (the request id header), found in the same pass.
    pub(crate) fn capture<'h>(
        headers: &'h HeaderMap,
        wanted: &[HeaderName],
        also: &HeaderName,
    ) -> (Self, Option<&'h HeaderValue>) {
        let mut captured = CapturedHeaders::default();
        let mut found = None;
        // One pass over the request's headers, comparing names (a byte compare for the
        // standard ones), is cheaper than a hash lookup for each wanted name.
        for (name, value) in headers {
            if let Some(i) = REDACTED_NAMES.iter().position(|r| r == name) {
                captured.redacted |= 1 << i;
            } else if name == also {
                found = found.or(Some(value));
            } else if let Some(i) = wanted.iter().position(|w| w == name) {
                if captured.values.iter().any(|(j, _)| *j == i) {
                    continue; // a repeated header: keep the first value
                }
                if captured.values.capacity() == 0 {
                    captured
                        .values
                        .reserve_exact(wanted.len().min(headers.keys_len()));
                }
                captured.values.push((i, value.clone()));
            }
        }
        (captured, found)
    }

    /// The headers as a report shows them: redacted ones as [`REDACTED`], non-UTF-8 values
    /// as `<binary>`. `wanted` is the list given to [`capture`](Self::capture).
    pub(crate) fn to_map(&self, wanted: &[HeaderName]) -> BTreeMap<String, String> {
        let mut map = BTreeMap::new();
        for (i, name) in REDACTED_NAMES.iter().enumerate() {
            if self.redacted & (1 << i) != 0 {
                map.insert(name.as_str().to_owned(), REDACTED.to_owned());
            }
        }
        for (i, value) in &self.values {
            if let Some(name) = wanted.get(*i) {
                let shown = value.to_str().unwrap_or("<binary>");
                map.insert(name.as_str().to_owned(), shown.to_owned());
            }
        }
        map
    }
}

/// What a [`Policy`](crate::Policy) decided about one panic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Decision {
    /// `recover` (keep serving) or `crash` (graceful crash of the process).
    pub action: Action,
    /// Why, in a few words: "state rolled back", "mutex `cache` poisoned", "panic budget spent".
    pub reason: String,
}

/// The two things a policy can do about a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Action {
    /// Answer 500 and keep serving.
    Recover,
    /// Answer 500, then drain and exit with code 70.
    Crash,
}

impl PanicReport {
    pub(crate) fn from_captured(c: Captured) -> Self {
        PanicReport {
            time: rfc3339(c.at),
            pid: std::process::id(),
            message: c.message,
            location: c.location,
            thread: c.thread,
            backtrace: c.backtrace.map(|b| b.to_string()),
            request: None,
            task: None,
            rolled_back: c.rolled_back.iter().map(|n| n.to_string()).collect(),
            poisoned: c.poisoned.iter().map(|n| n.to_string()).collect(),
            decision: None,
        }
    }

    /// A short one-line summary: `"boom" at src/x.rs:1:2 (GET /path)`.
    pub fn summary(&self) -> String {
        let mut s = format!("{:?}", self.message);
        if let Some(loc) = &self.location {
            s.push_str(" at ");
            s.push_str(loc);
        }
        if let Some(r) = &self.request {
            s.push_str(&format!(" ({} {})", r.method, r.path));
        } else if let Some(t) = &self.task {
            s.push_str(&format!(" (task {t})"));
        }
        s
    }
}

pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
