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
use unwedge_redact::looks_like_password;

/// Header names whose values never appear in a report, whatever the configuration says.
pub const REDACTED_HEADERS: &[&str] = unwedge_redact::CREDENTIAL_HEADERS;

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
/// by [`REDACTED`], and URLs lose their user and password (`https://…@host`): in the request's
/// headers and in the message.
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
    /// The panic message (`&str` or `String` payloads; `Box<dyn Any>` otherwise). In the
    /// reports unwedge makes, the user and password of every URL in it are shown `…`
    /// (`postgres://app:pw@db/x` as `postgres://…@db/x`); a report deserialized or built by
    /// hand holds what it was given.
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
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use futures_util::FutureExt;
/// use tower::{Layer, ServiceExt};
/// use unwedge::panic::RequestInfo;
///
/// let seen = Arc::new(Mutex::new(None::<RequestInfo>));
/// let sink = {
///     let seen = seen.clone();
///     move |r: &unwedge::PanicReport| *seen.lock().unwrap() = r.request.clone()
/// };
/// let svc = unwedge::PanicLayer::new().sink(Arc::new(sink)).layer(tower::service_fn(
///     |req: http::Request<()>| async move {
///         if req.uri().path().starts_with("/users/") { panic!("no such user") }
///         Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
///     },
/// ));
/// let req = http::Request::get("/users/42?full=1").header("x-request-id", "req-1");
/// let _ = svc.oneshot(req.body(()).unwrap()).now_or_never().unwrap().unwrap();
/// let info = seen.lock().unwrap().take().unwrap();
/// assert_eq!((info.method.as_str(), info.path.as_str()), ("GET", "/users/42"));
/// assert_eq!(info.request_id, "req-1");
/// ```
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
    /// The route the request matched, as its template (`/users/{id}`): axum's
    /// `MatchedPath`, when the layer that caught the panic sat inside the `Router`
    /// (`Router::layer`; the feature `axum`). Bounded where paths are not: the supervisor
    /// counts panics by it (`unwedge_panics_total{route}`) when present, otherwise by `path`
    /// with its identifiers replaced by placeholders (`/users/{int}`, see
    /// [`unwedge_redact::route_template`]), as the health registry does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
}

impl RequestInfo {
    /// Describes a request for a report as a [`PanicLayer`](crate::PanicLayer) does by
    /// default: the path without its query; of the headers, the first value of each of
    /// [`REPORTED_HEADERS`] (a URL's query and fragment cut off, e.g. a `Referer`'s
    /// `?token=…`, and its `user:password@` shown `…@`, as is that of a URL anywhere in any
    /// value) and the [`REDACTED_HEADERS`] present, shown as [`REDACTED`]. Other headers
    /// (`x-api-key`, `x-csrf-token`, …) are left out: their values may be credentials.
    ///
    /// ```
    /// # use unwedge::panic::RequestInfo;
    /// let req = http::Request::get("/cart?card=4111")
    ///     .header("authorization", "Bearer secret")
    ///     .header("referer", "https://shop.example/reset?token=abc")
    ///     .header("x-api-key", "k-123")
    ///     .body(())
    ///     .unwrap();
    /// let info = RequestInfo::from_request(&req, "req-1");
    /// assert_eq!(info.path, "/cart");
    /// assert_eq!(info.headers["authorization"], "<redacted>");
    /// assert_eq!(info.headers["referer"], "https://shop.example/reset");
    /// assert!(!info.headers.contains_key("x-api-key"));
    /// ```
    pub fn from_request<B>(req: &http::Request<B>, request_id: &str) -> Self {
        let mut captured = CapturedHeaders::default();
        captured.capture(
            req.headers(),
            &HeaderClasses::new(&REPORTED_HEADERS, &HeaderName::from_static("x-request-id")),
        );
        let headers = captured.to_map(&REPORTED_HEADERS);
        #[cfg(feature = "axum")]
        let route = req
            .extensions()
            .get::<axum::extract::MatchedPath>()
            .map(|m| m.as_str().to_owned());
        #[cfg(not(feature = "axum"))]
        let route = None;
        RequestInfo {
            method: req.method().to_string(),
            path: req.uri().path().to_owned(),
            request_id: request_id.to_owned(),
            headers,
            route,
        }
    }
}

/// The request headers a layer keeps for a report, taken before the request moves into the
/// handler: the wanted values copied into one buffer (one allocation, no reference count per
/// value: header values share hyper's read buffer, whose count every clone would hit) and
/// which [`REDACTED_HEADERS`] were present. Turned into text only when a panic is reported.
#[derive(Debug)]
pub(crate) struct CapturedHeaders {
    /// Bit `i` set: `REDACTED_NAMES[i]` was present.
    redacted: u8,
    /// Records of `[i as u8, len as u16 (le), value bytes…]`: the first value of `wanted[i]`,
    /// at most [`MAX_CAPTURED_VALUE`] bytes of it; in `inline` while they fit, then in
    /// `spilled` (no allocation for the usual few short headers).
    inline: [u8; INLINE_HEADERS],
    inline_len: u8,
    spilled: Vec<u8>,
    /// The request is gRPC (see [`is_grpc`]): a panic is answered in gRPC's terms.
    pub(crate) grpc: bool,
}

/// Bytes of header records kept without an allocation.
const INLINE_HEADERS: usize = 200;

impl Default for CapturedHeaders {
    fn default() -> Self {
        CapturedHeaders {
            redacted: 0,
            inline: [0; INLINE_HEADERS],
            inline_len: 0,
            spilled: Vec::new(),
            grpc: false,
        }
    }
}

/// Longest header value a report keeps (longer ones are cut, with `…` appended).
pub(crate) const MAX_CAPTURED_VALUE: usize = 1024;

/// What a request header is to the layer, found by [`HeaderClasses::classify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// `REDACTED_NAMES[i]`.
    Redacted(u8),
    /// The request id header.
    Id,
    /// `wanted[i]`.
    Wanted(u8),
    /// `content-type`, when it is not wanted: looked at only to know a gRPC request.
    ContentType,
}

/// The header names a layer looks for, prepared once per configuration so that classifying a
/// request header costs a bit test (by name length) and, for the few names of a wanted
/// length, a short byte compare, instead of a `HeaderName` comparison with every name.
#[derive(Debug, Clone)]
pub(crate) struct HeaderClasses {
    /// Bit `n` set: some name of length `n` (names of 64 bytes and more: bit 63).
    lengths: u64,
    /// In priority order: redacted names, the id header, then the wanted ones (first wins).
    names: Vec<(Box<str>, Class)>,
    /// The wanted names, in the order `Class::Wanted` indexes.
    wanted: Vec<HeaderName>,
    /// `content-type`'s index in `wanted`, if it is wanted (else it is `Class::ContentType`).
    content_type: Option<u8>,
}

impl HeaderClasses {
    /// Classes for the redacted names, `also` (the request id header) and `wanted` (at most
    /// the first 255 of them).
    pub(crate) fn new(wanted: &[HeaderName], also: &HeaderName) -> Self {
        let redacted = REDACTED_NAMES
            .iter()
            .enumerate()
            .map(|(i, n)| (n, Class::Redacted(i as u8)));
        let wanted: Vec<HeaderName> = wanted.iter().take(255).cloned().collect();
        let wanted_classes = wanted
            .iter()
            .enumerate()
            .map(|(i, n)| (n, Class::Wanted(i as u8)));
        let mut names: Vec<(Box<str>, Class)> = Vec::new();
        for (name, class) in redacted.chain([(also, Class::Id)]).chain(wanted_classes) {
            if !names.iter().any(|(n, _)| **n == *name.as_str()) {
                names.push((name.as_str().into(), class));
            }
        }
        let content_type = match names.iter().find(|(n, _)| **n == *"content-type") {
            Some(&(_, Class::Wanted(i))) => Some(i),
            _ => {
                names.push(("content-type".into(), Class::ContentType));
                None
            }
        };
        let lengths = names
            .iter()
            .fold(0u64, |m, (n, _)| m | 1 << n.len().min(63));
        HeaderClasses {
            lengths,
            names,
            wanted,
            content_type,
        }
    }

    /// The wanted names given to [`new`](Self::new) (at most 255).
    pub(crate) fn wanted(&self) -> &[HeaderName] {
        &self.wanted
    }

    #[inline]
    fn classify(&self, name: &HeaderName) -> Option<Class> {
        let name = name.as_str();
        if self.lengths & (1 << name.len().min(63)) == 0 {
            return None;
        }
        self.names
            .iter()
            .find(|(n, _)| n.len() == name.len() && **n == *name)
            .map(|&(_, class)| class)
    }
}

impl CapturedHeaders {
    /// Keeps the first value of each wanted header `headers` has, and notes the redacted
    /// ones present (a redacted name among the wanted ones is still redacted). Also returns
    /// the first value of the id header, found in the same pass.
    pub(crate) fn capture<'h>(
        &mut self,
        headers: &'h HeaderMap,
        classes: &HeaderClasses,
    ) -> Option<&'h HeaderValue> {
        let mut found = None;
        let mut seen = [0u64; 4]; // bit i: wanted[i] already kept
        let mut content_type = None;
        for (name, value) in headers {
            match classes.classify(name) {
                None => {}
                Some(Class::Redacted(i)) => self.redacted |= 1 << i,
                Some(Class::Id) => found = found.or(Some(value)),
                Some(Class::ContentType) => content_type = content_type.or(Some(value)),
                Some(Class::Wanted(i)) => {
                    let (word, bit) = (usize::from(i / 64), 1u64 << (i % 64));
                    if seen[word] & bit != 0 {
                        continue; // a repeated header: keep the first value
                    }
                    seen[word] |= bit;
                    if Some(i) == classes.content_type {
                        content_type = Some(value);
                    }
                    let bytes = value.as_bytes();
                    self.push(i, &bytes[..bytes.len().min(MAX_CAPTURED_VALUE + 1)]);
                }
            }
        }
        self.grpc = content_type.is_some_and(|v| is_grpc(v.as_bytes()));
        found
    }

    /// Forgets every captured header, keeping the spill buffer's allocation for reuse.
    pub(crate) fn clear(&mut self) {
        self.redacted = 0;
        self.grpc = false;
        self.inline_len = 0;
        self.spilled.clear();
    }

    fn push(&mut self, i: u8, value: &[u8]) {
        let [lo, hi] = (value.len() as u16).to_le_bytes();
        let at = usize::from(self.inline_len);
        let end = at + 3 + value.len();
        if self.spilled.is_empty() && end <= INLINE_HEADERS {
            self.inline[at..at + 3].copy_from_slice(&[i, lo, hi]);
            self.inline[at + 3..end].copy_from_slice(value);
            self.inline_len = end as u8;
        } else {
            self.spilled.extend_from_slice(&[i, lo, hi]);
            self.spilled.extend_from_slice(value);
        }
    }

    /// The kept `(i, value)` records.
    fn records(&self) -> impl Iterator<Item = (usize, &[u8])> {
        fn parse(mut rest: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
            std::iter::from_fn(move || {
                let (&[i, lo, hi], tail) = rest.split_first_chunk::<3>()?;
                let len = usize::from(u16::from_le_bytes([lo, hi])).min(tail.len());
                let (value, tail) = tail.split_at(len);
                rest = tail;
                Some((usize::from(i), value))
            })
        }
        parse(&self.inline[..usize::from(self.inline_len)]).chain(parse(&self.spilled))
    }

    /// The headers as a report shows them: redacted ones as [`REDACTED`], values that are
    /// not visible ASCII (what `HeaderValue::to_str` accepts) as `<binary>`. `wanted` is the
    /// list given to [`capture`](Self::capture).
    pub(crate) fn to_map(&self, wanted: &[HeaderName]) -> BTreeMap<String, String> {
        let mut map = BTreeMap::new();
        for (i, name) in REDACTED_NAMES.iter().enumerate() {
            if self.redacted & (1 << i) != 0 {
                map.insert(name.as_str().to_owned(), REDACTED.to_owned());
            }
        }
        for (i, value) in self.records() {
            if let Some(name) = wanted.get(i) {
                // Listed by the user, a credential header (`x-api-key`) is still not shown.
                if unwedge_redact::is_credential_name(name.as_str()) {
                    map.insert(name.as_str().to_owned(), REDACTED.to_owned());
                    continue;
                }
                let (value, cut) = match value.len() > MAX_CAPTURED_VALUE {
                    true => (&value[..MAX_CAPTURED_VALUE], "…"),
                    false => (value, ""),
                };
                let visible = value
                    .iter()
                    .all(|&b| b == b'\t' || (b' '..0x7f).contains(&b));
                let shown = match std::str::from_utf8(value) {
                    Ok(text) if visible => {
                        let shown = match is_url(name, text)
                            .then(|| url_shown(text, !cut.is_empty()))
                        {
                            Some(shown) if shown != text => shown,
                            // A URL inside the value (`ua https://u:pw@x/`, an
                            // `X-Forwarded-For`'s `1.2.3.4, postgres://a:pw@db`): its user
                            // info hidden as a message's; one the cut fell in kept as
                            // `scheme://…` (the `@` ending its password may be past the cut).
                            _ => match (!cut.is_empty()).then(|| hide_cut_url(text)).flatten() {
                                Some(hidden) => hidden.into(),
                                None => format!("{text}{cut}").into(),
                            },
                        };
                        // A credential quoted in another header's value (`ua … Bearer …`).
                        let shown = hide_userinfo_in_text(&shown).into_owned();
                        let shown = unwedge_redact::scrub_credentials(&shown).unwrap_or(shown);
                        match cut.is_empty() {
                            true => shown,
                            false => hide_cut_bearer(&shown),
                        }
                    }
                    _ => "<binary>".to_owned(),
                };
                map.insert(name.as_str().to_owned(), shown);
            }
        }
        map
    }
}

/// `shown` (a header value cut short, ending with `…`) with a `Bearer` token the cut fell in
/// hidden: cut, it may be too short to read as a token (`Bearer abcdefgh…`), and what the cut
/// left of it is still a secret's start.
fn hide_cut_bearer(shown: &str) -> String {
    let text = shown.strip_suffix('…').unwrap_or(shown);
    let token = text
        .bytes()
        .rev()
        .take_while(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
        })
        .count();
    let before = text[..text.len() - token].trim_end_matches([' ', '\t']);
    // Bytes, not a `str` slice: what precedes may end in a multi-byte `…` (review: a slice
    // inside it panicked, in the layer, while it reported a panic).
    let bearer = before.len() >= 6
        && before.len() < text.len() - token
        && before.as_bytes()[before.len() - 6..].eq_ignore_ascii_case(b"bearer");
    match bearer && token > 0 {
        true => format!("{}[redacted]…", &text[..text.len() - token]),
        false => shown.to_owned(),
    }
}

/// Whether a request's `content-type` is gRPC's: `application/grpc`, `application/grpc+proto`
/// (any `+format`) or with parameters; not gRPC-Web (`application/grpc-web…`), whose status
/// travels in the body.
pub(crate) fn is_grpc(content_type: &[u8]) -> bool {
    content_type
        .strip_prefix(b"application/grpc")
        .is_some_and(|rest| matches!(rest.first(), None | Some(b'+' | b';')))
}

/// A header value that is a URL: the `Referer`, or any value starting with a scheme and
/// `://`, in any case (`HTTPS://`, `wss://`).
fn is_url(name: &HeaderName, value: &str) -> bool {
    name == REFERER || value.split_once("://").is_some_and(|(s, _)| is_scheme(s))
}

/// RFC 3986's `scheme`: a letter, then letters, digits, `+`, `-` or `.`.
fn is_scheme(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// A URL as a report shows it: without its query and fragment (where tokens, codes and
/// session ids travel), as the report keeps the request's path, and without the user and
/// password of a `scheme://user:password@host` (shown `scheme://…@host`). The user info ends
/// at the last `@` before the first `/`, `?` or `#`; when there is none there but what comes
/// before that first `/ ? #` reads as `user:password` ([`looks_like_password`]), at the last
/// `@` of the value: a password with an unencoded `/`, `?` or `#` (`…:Ab3/x+Yz==@db`) is
/// hidden too. `cut`: `url` is the start of a longer value, so an authority that runs to its
/// end, or a `user:password` with no `@` left, may have lost the `@` ending it: it is shown
/// `scheme://…`.
fn url_shown(url: &str, cut: bool) -> std::borrow::Cow<'_, str> {
    let base = url.split(['?', '#']).next().unwrap_or("");
    // The scheme is before any `?` or `#`; the user info may run past them.
    let Some(i) = base.find("://") else {
        return base.into();
    };
    let (scheme, rest) = (&url[..i], &url[i + "://".len()..]);
    let end = rest.find(['/', '?', '#']);
    let authority = &rest[..end.unwrap_or(rest.len())];
    let user_end = match authority.rfind('@') {
        Some(at) => Some(at),
        None if looks_like_password(authority) => match rest.rfind('@') {
            Some(at) if !cut => Some(at),
            // The `@` ending the password may be past the cut (or this one inside it).
            _ if cut => return format!("{scheme}://…").into(),
            _ => None,
        },
        None => None,
    };
    if cut && end.is_none() {
        return format!("{scheme}://…").into();
    }
    match user_end {
        Some(at) => {
            let host = &rest[at + 1..];
            let host = host.split(['?', '#']).next().unwrap_or("");
            format!("{scheme}://…@{host}").into()
        }
        None => base.into(),
    }
}

/// `text`, the start of a longer value, with the URL its end falls in shown `scheme://…`
/// ([`unwedge_redact::cut_inside_url`]); `None` when the text does not end inside such a URL.
fn hide_cut_url(text: &str) -> Option<String> {
    unwedge_redact::cut_inside_url(text).map(|i| format!("{}…", &text[..i]))
}

/// `text` (a panic message) with the user and password of every URL in it hidden as
/// [`url_shown`] hides them (`scheme://…@host`; the rules:
/// [`unwedge_redact::hide_url_userinfo`]); borrowed when nothing is hidden.
pub(crate) fn hide_userinfo_in_text(text: &str) -> std::borrow::Cow<'_, str> {
    match unwedge_redact::hide_url_userinfo(text) {
        Some(hidden) => hidden.into(),
        None => text.into(),
    }
}

#[cfg(test)]
mod captured_tests {
    use super::*;

    #[test]
    fn a_url_header_keeps_no_query_or_fragment() {
        let mut h = HeaderMap::new();
        h.append(
            "referer",
            HeaderValue::from_static("https://app.example/reset?token=s3cret#frag"),
        );
        h.append("host", HeaderValue::from_static("app.example"));
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        let wanted = [REFERER, HOST, HeaderName::from_static("x-forwarded-for")];
        let classes = HeaderClasses::new(&wanted, &HeaderName::from_static("x-request-id"));
        let mut c = CapturedHeaders::default();
        c.capture(&h, &classes);
        let map = c.to_map(classes.wanted());
        assert_eq!(map["referer"], "https://app.example/reset");
        assert_eq!(map["host"], "app.example");
        assert_eq!(map["x-forwarded-for"], "10.0.0.1");
        // A relative Referer, and a custom header holding a URL.
        let mut h = HeaderMap::new();
        h.append(
            "referer",
            HeaderValue::from_static("/login?code=oauth-code"),
        );
        h.append(
            "x-return-to",
            HeaderValue::from_static("http://a/b?session=s"),
        );
        let wanted = [REFERER, HeaderName::from_static("x-return-to")];
        let classes = HeaderClasses::new(&wanted, &HeaderName::from_static("x-request-id"));
        let mut c = CapturedHeaders::default();
        c.capture(&h, &classes);
        let map = c.to_map(classes.wanted());
        assert_eq!(map["referer"], "/login");
        // A URL in a relative one's query is the query's: gone with it.
        for url in ["/login?next=https://u:p@h/x", "/login?next=https://u:p/x@h"] {
            assert_eq!(url_shown(url, false), "/login", "{url}");
        }
        assert_eq!(map["x-return-to"], "http://a/b");
        // A user and password in the URL.
        let mut h = HeaderMap::new();
        h.append(
            "referer",
            HeaderValue::from_static("https://user:hunter2@app.example/x@y?t=1"),
        );
        h.append("x-return-to", HeaderValue::from_static("http://u:p@h"));
        let mut c = CapturedHeaders::default();
        c.capture(&h, &classes);
        let map = c.to_map(classes.wanted());
        assert_eq!(map["referer"], "https://…@app.example/x@y");
        assert_eq!(map["x-return-to"], "http://…@h");
    }

    /// A password with an unencoded `/`, `?` or `#` in a URL header is hidden, not shown whole
    /// (`/`) or in part (`?`, `#`: what precedes them was the URL shown); an `@` past a host's
    /// authority leaves it.
    #[test]
    fn a_url_password_with_a_slash_or_a_query_mark_is_hidden() {
        for (url, shown) in [
            (
                "https://app:Ab3/x+Yz9Q==@app.example/p?t=1",
                "https://…@app.example/p",
            ),
            ("https://u:a?b#c@app.example/p#f", "https://…@app.example/p"),
            ("wss://:pw/x@h", "wss://…@h"),
            // Not user info: a host, a port, an IPv6 literal.
            (
                "https://example.com/users/me@x.org",
                "https://example.com/users/me@x.org",
            ),
            (
                "https://example.com:8080/a@b?c@d",
                "https://example.com:8080/a@b",
            ),
            ("http://[::1]/a@b", "http://[::1]/a@b"),
        ] {
            assert_eq!(url_shown(url, false), shown, "{url}");
        }
        // Cut: the `@` ending such a password may be past the cut.
        assert_eq!(url_shown("https://app:Ab3/x+Yz", true), "https://…");
        assert_eq!(url_shown("https://app:Ab3/x@y", true), "https://…");
        assert_eq!(url_shown("https://h:8080/x@y", true), "https://h:8080/x@y");
        let mut h = HeaderMap::new();
        h.append(
            "referer",
            HeaderValue::from_static("https://app:Ab3/x+Yz9Q==@app.example/p"),
        );
        let classes = HeaderClasses::new(&[REFERER], &HeaderName::from_static("x-request-id"));
        let mut c = CapturedHeaders::default();
        c.capture(&h, &classes);
        assert_eq!(
            c.to_map(classes.wanted())["referer"],
            "https://…@app.example/p"
        );
    }

    #[test]
    fn a_url_password_is_hidden_whatever_the_schemes_case() {
        let mut h = HeaderMap::new();
        h.append(
            "user-agent",
            HeaderValue::from_static("HTTPS://:s3cr3tPW@host.example/p"),
        );
        h.append(
            "x-return-to",
            HeaderValue::from_static("wss://u:pw@h/x?t=1"),
        );
        let wanted = [USER_AGENT, HeaderName::from_static("x-return-to")];
        let classes = HeaderClasses::new(&wanted, &HeaderName::from_static("x-request-id"));
        let mut c = CapturedHeaders::default();
        c.capture(&h, &classes);
        let map = c.to_map(classes.wanted());
        assert_eq!(map["user-agent"], "HTTPS://…@host.example/p");
        assert_eq!(map["x-return-to"], "wss://…@h/x");
    }

    /// A URL anywhere in a header value, not only at its start, loses its user info.
    #[test]
    fn a_url_password_inside_any_header_value_is_hidden() {
        let xff = HeaderName::from_static("x-forwarded-for");
        for (name, value, shown) in [
            (
                USER_AGENT,
                "ua https://uu:UASECRET@x.y/".to_owned(),
                "ua https://…@x.y/".to_owned(),
            ),
            (
                xff.clone(),
                "1.2.3.4, postgres://a:XFFSECRET@db/x".to_owned(),
                "1.2.3.4, postgres://…@db/x".to_owned(),
            ),
            (
                REFERER,
                "https://a.example/x https://u:REFSECRET@b/".to_owned(),
                "https://a.example/x https://…@b/".to_owned(),
            ),
            (
                USER_AGENT,
                "ua https://x.y/@z and http://h:8080/a@b".to_owned(),
                "ua https://x.y/@z and http://h:8080/a@b".to_owned(),
            ),
            // A credential quoted in another header (review): hidden as in a message.
            (
                USER_AGENT,
                "ua Bearer SECRETUA12xyz".to_owned(),
                "ua Bearer [redacted]".to_owned(),
            ),
            (
                xff.clone(),
                "1.2.3.4, https://h/cb?code=XFFC0DE".to_owned(),
                "1.2.3.4, https://h/cb?code=[redacted]".to_owned(),
            ),
            // A Bearer token the cut fell in, too short to read as one (review).
            (
                USER_AGENT,
                format!(
                    "{} Bearer abcdefghijklmnop1234567890SECRETTAIL",
                    "x".repeat(1000)
                ),
                format!("{} Bearer [redacted]…", "x".repeat(1000)),
            ),
            // What precedes the cut token ends in the `…` of a URL's hidden user info: no
            // slice inside it (review: the layer panicked while it reported a panic).
            (
                USER_AGENT,
                format!(
                    "{} https://u:p@host abcdefghij{}",
                    "x".repeat(983),
                    "k".repeat(60)
                ),
                format!(
                    "{} https://…@host abcdefghij{}…",
                    "x".repeat(983),
                    "k".repeat(13)
                ),
            ),
            // Cut inside a URL's user info, with no `@` left: the URL is kept as `scheme://…`.
            (
                USER_AGENT,
                format!(
                    "ua {} https://uu:CUTSECRET{}",
                    "a".repeat(990),
                    "s".repeat(40)
                ),
                format!("ua {} https://…", "a".repeat(990)),
            ),
        ] {
            let mut h = HeaderMap::new();
            h.append(&name, HeaderValue::from_str(&value).unwrap());
            let wanted = [name.clone()];
            let classes = HeaderClasses::new(&wanted, &HeaderName::from_static("x-request-id"));
            let mut c = CapturedHeaders::default();
            c.capture(&h, &classes);
            assert_eq!(c.to_map(classes.wanted())[name.as_str()], shown, "{value}");
        }
    }

    #[test]
    fn a_url_password_past_the_cut_is_hidden_too() {
        let url = format!("https://{}:s3cr3tPW@host.example/p", "u".repeat(1020));
        let mut h = HeaderMap::new();
        h.append("referer", HeaderValue::from_str(&url).unwrap());
        let classes = HeaderClasses::new(&[REFERER], &HeaderName::from_static("x-request-id"));
        let mut c = CapturedHeaders::default();
        c.capture(&h, &classes);
        assert_eq!(c.to_map(classes.wanted())["referer"], "https://…");
        // Cut after the authority ended, the URL is shown as before.
        let url = format!("https://u:pw@h/{}", "p".repeat(MAX_CAPTURED_VALUE));
        let mut h = HeaderMap::new();
        h.append("referer", HeaderValue::from_str(&url).unwrap());
        let mut c = CapturedHeaders::default();
        c.capture(&h, &classes);
        let shown = &c.to_map(classes.wanted())["referer"];
        assert!(shown.starts_with("https://…@h/ppp"), "{shown}");
    }

    #[test]
    fn keeps_first_values_of_wanted_headers_and_notes_redacted_ones() {
        let mut h = HeaderMap::new();
        h.append("host", HeaderValue::from_static("example.com"));
        h.append("accept", HeaderValue::from_static("a/b"));
        h.append("accept", HeaderValue::from_static("second"));
        h.append("cookie", HeaderValue::from_static("secret=1"));
        h.append("x-request-id", HeaderValue::from_static("id-1"));
        h.append("user-agent", HeaderValue::from_bytes(b"\xffbin").unwrap());
        let long = "v".repeat(MAX_CAPTURED_VALUE + 10);
        h.append("referer", HeaderValue::from_str(&long).unwrap());
        let wanted = [HOST, ACCEPT, USER_AGENT, REFERER, COOKIE];
        let classes = HeaderClasses::new(&wanted, &HeaderName::from_static("x-request-id"));
        let mut c = CapturedHeaders::default();
        let id = c.capture(&h, &classes);
        assert_eq!(id.unwrap(), "id-1");
        assert!(!c.spilled.is_empty(), "the long referer spills");
        let map = c.to_map(&wanted);
        assert_eq!(map["host"], "example.com");
        assert_eq!(map["accept"], "a/b");
        assert_eq!(map["cookie"], REDACTED);
        assert_eq!(map["user-agent"], "<binary>");
        assert_eq!(map["referer"], format!("{}…", &long[..MAX_CAPTURED_VALUE]));
        assert!(!map.values().any(|v| v.contains("secret")));
        assert_eq!(map.len(), 5);
    }

    #[test]
    fn classify_by_name_not_by_length_alone() {
        let wanted = [HOST, HeaderName::from_static("x-forwarded-for")];
        let classes = HeaderClasses::new(&wanted, &HeaderName::from_static("x-request-id"));
        assert_eq!(classes.classify(&HOST), Some(Class::Wanted(0)));
        // Same length as x-forwarded-for, not wanted.
        assert_eq!(classes.classify(&http::header::ACCEPT_ENCODING), None);
        assert_eq!(classes.classify(&COOKIE), Some(Class::Redacted(2)));
        // A redacted name in the wanted list stays redacted.
        let classes = HeaderClasses::new(&[COOKIE], &HeaderName::from_static("x-request-id"));
        assert_eq!(classes.classify(&COOKIE), Some(Class::Redacted(2)));
        let long = HeaderName::try_from("x-".repeat(40)).unwrap();
        let classes = HeaderClasses::new(
            std::slice::from_ref(&long),
            &HeaderName::from_static("x-request-id"),
        );
        assert_eq!(classes.classify(&long), Some(Class::Wanted(0)));
        assert_eq!(
            classes.classify(&HeaderName::try_from("y-".repeat(40)).unwrap()),
            None
        );
    }

    #[test]
    fn more_than_64_wanted_names_still_keep_only_first_values() {
        let wanted: Vec<HeaderName> = (0..80)
            .map(|i| HeaderName::try_from(format!("x-h{i}")).unwrap())
            .collect();
        let mut h = HeaderMap::new();
        h.append("x-h70", HeaderValue::from_static("first"));
        h.append("x-h70", HeaderValue::from_static("second"));
        let classes = HeaderClasses::new(&wanted, &HeaderName::from_static("x-request-id"));
        let mut c = CapturedHeaders::default();
        let _ = c.capture(&h, &classes);
        assert_eq!(c.to_map(&wanted)["x-h70"], "first");
    }

    #[test]
    fn a_url_password_in_a_message_is_hidden_and_nothing_else() {
        for (message, shown) in [
            (
                "failed to connect to postgres://app:s3cret@db/x",
                "failed to connect to postgres://…@db/x",
            ),
            (
                "error: redis://:hunter2@cache:6379 refused",
                "error: redis://…@cache:6379 refused",
            ),
            ("POSTGRES://App:s3cret@DB/x?a=b", "POSTGRES://…@DB/x?a=b"),
            ("x-db+v2.1://u:s3cret@h", "x-db+v2.1://…@h"),
            // Several URLs, the last one at the very end of the text.
            (
                r#"to https://a:s3cret@one/x, ("wss://b:s3cret@two") or ftp://c:s3cret@three"#,
                r#"to https://…@one/x, ("wss://…@two") or ftp://…@three"#,
            ),
            // The last `@` of the authority ends the user info; `:`, `'` and `)` may be in it.
            ("amqp://u:p:a@ss@mq/vh", "amqp://…@mq/vh"),
            (
                "dsn='mysql://root:s'3)c:r@db:3306/app'",
                "dsn='mysql://…@db:3306/app'",
            ),
            // Multibyte text around it, and in it.
            (
                "échec: postgres://é:日本s3cret@hôte/ü — réessayez",
                "échec: postgres://…@hôte/ü — réessayez",
            ),
            ("日本postgres://u:s3cret@db", "日本postgres://…@db"),
            // A password with an unencoded `/`, `?` or `#` (base64, a DSN built with
            // `format!`): what precedes the first `/ ? #` reads as `user:password`, so the
            // user info runs to the URL's last `@` (found by review: it was shown whole).
            (
                "connect postgres://app:Ab3/x+Yz9Q==@db:5432/app",
                "connect postgres://…@db:5432/app",
            ),
            (
                "mysql://u:a?b#c@db/x?y=1 failed",
                "mysql://…@db/x?y=1 failed",
            ),
            ("redis://:pw/with/slash@cache:6379", "redis://…@cache:6379"),
            ("amqp://u:/starts/with/slash@mq/vh", "amqp://…@mq/vh"),
            ("amqp://u:a/b@c@mq/vh", "amqp://…@mq/vh"),
            (
                "(\"postgres://app:é/日本@db/x\", postgres://app:Ab3/x@db2)",
                "(\"postgres://…@db/x\", postgres://…@db2)",
            ),
            // A `://` inside such a password is part of it.
            ("ftp://u:a/b://c:d/e@h/x", "ftp://…@h/x"),
        ] {
            assert_eq!(hide_userinfo_in_text(message), shown, "{message}");
        }
        // No user info: an `@` past the authority (a host, a `host:port`, an IPv6 literal
        // before the first `/`), an e-mail, no scheme, hidden already.
        for message in [
            "boom",
            "GET https://host/@alice?next=a@b#c@d failed",
            "see https://host/x then mail bob@example.com",
            "https://example.com/users/me@x.org",
            "https://example.com:8080/a@b and http://[::1]:8080/a@b, http://[::1]/a@b",
            "GET http://db:5432?next=a@b#c@d",
            "http://host",
            "http://a:b/c, no `@` after it",
            "1://u:p@h and ://u:p@h: no scheme",
            "a URL hidden already: https://…@db/x",
            "naïve café: ünïcode @ 日本",
            "",
        ] {
            let shown = hide_userinfo_in_text(message);
            assert!(matches!(shown, std::borrow::Cow::Borrowed(_)), "{message}");
            assert_eq!(shown, message);
        }
    }

    /// Linear however many `://` a message holds: each authority is scanned once, and the
    /// `@` that may end a `user:password` with a `/` once for each run of URL text.
    #[test]
    fn many_schemes_in_one_message_are_scanned_once() {
        let started = std::time::Instant::now();
        let text = "a://".repeat(50_000) + "u:s3cret@h";
        let shown = hide_userinfo_in_text(&text);
        assert!(shown.ends_with("a://…@h") && !shown.contains("s3cret"));
        let text = "a://b:c/".repeat(50_000) + " mail x@y";
        assert_eq!(hide_userinfo_in_text(&text), text);
        let text = "a://b:c/x@".repeat(50_000);
        assert_eq!(hide_userinfo_in_text(&text), "a://…@");
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// The password every generated URL and every redacted header carries: no piece of
        /// the other generated text can spell it.
        const SECRET: &str = "s3cr3tPW";

        /// Pieces of header text that reach the hard cases: multibyte UTF-8, separators, a
        /// lone `%`, quotes, backslashes, obs-text bytes that are not UTF-8.
        fn piece() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                Just(&b"a"[..]),
                Just(&b"Z9-."[..]),
                Just("é".as_bytes()),
                Just("日本".as_bytes()),
                Just("🦀".as_bytes()),
                Just(&b"@"[..]),
                Just(&b":"[..]),
                Just(&b"%"[..]),
                Just(&b"\""[..]),
                Just(&b"\\"[..]),
                Just(&b"/"[..]),
                Just(&b"?"[..]),
                Just(&b"#"[..]),
                Just(&b" \t"[..]),
                Just(&b"://"[..]),
                Just(&b"\xff\x80"[..]),
            ]
            .prop_map(<[u8]>::to_vec)
        }

        /// Header value bytes: the pieces, sometimes after a run of `a`s that puts the
        /// next piece at and around the length a report cuts values at.
        fn value() -> impl Strategy<Value = Vec<u8>> {
            let pad = prop_oneof![
                Just(0usize),
                1usize..8,
                (MAX_CAPTURED_VALUE - 4)..=(MAX_CAPTURED_VALUE + 2),
            ];
            (pad, prop::collection::vec(piece(), 0..12)).prop_map(|(pad, pieces)| {
                let mut v = vec![b'a'; pad];
                v.extend(pieces.concat());
                v
            })
        }

        /// A URL with `user:SECRET…@host`: any scheme spelling, a user long enough to put
        /// the password at and past the cut, text after the password and the host.
        fn url_with_password() -> impl Strategy<Value = Vec<u8>> {
            let scheme = prop::sample::select(vec!["http", "https", "HTTPS", "Http", "wss"]);
            let user = prop_oneof![Just(0usize), 1usize..4, 1000usize..1030];
            // `/`, `?` and `#` among the pieces: a password may hold them unencoded.
            let rest = prop::collection::vec(piece(), 0..4).prop_map(|p| p.concat());
            let tail = prop::collection::vec(piece(), 0..6);
            (scheme, user, rest, tail).prop_map(|(scheme, user, rest, tail)| {
                let mut v = format!("{scheme}://{}:{SECRET}", "u".repeat(user)).into_bytes();
                v.extend(rest);
                v.extend(b"@host.example/p");
                v.extend(tail.concat());
                v
            })
        }

        fn header_value(bytes: Vec<u8>) -> HeaderValue {
            HeaderValue::from_bytes(&bytes).expect("generated from valid header bytes")
        }

        proptest! {
            #![proptest_config(crate::text::proptest_config(512))]

            /// Whatever a client sends: a redacted header's value and a URL's password
            /// never reach the serialized report, every value shown is at most the cut
            /// length (and `…`), and is text a log line can carry (no control characters).
            #[test]
            fn a_report_shows_no_secret_and_no_value_past_its_limit(
                values in prop::collection::vec(value(), 8),
                urls in prop::collection::vec(url_with_password(), 3),
                redacted in prop::collection::vec(value(), 4),
            ) {
                let custom = HeaderName::from_static("x-return-to");
                // A redacted name listed among the wanted ones stays redacted.
                let mut wanted = REPORTED_HEADERS.to_vec();
                wanted.extend([custom.clone(), COOKIE, AUTHORIZATION]);
                let mut h = HeaderMap::new();
                for (name, v) in REDACTED_NAMES.iter().zip(redacted) {
                    let mut v = v;
                    v.extend(SECRET.as_bytes());
                    h.append(name.clone(), header_value(v));
                }
                // A URL with a password first in the Referer, in a custom header and in
                // one that is not a URL's usual place; then other values for each name.
                for (name, url) in [REFERER, custom, USER_AGENT].into_iter().zip(urls) {
                    h.append(name, header_value(url));
                }
                for (name, v) in wanted.iter().zip(values) {
                    h.append(name.clone(), header_value(v));
                }
                let classes =
                    HeaderClasses::new(&wanted, &HeaderName::from_static("x-request-id"));
                let mut c = CapturedHeaders::default();
                c.capture(&h, &classes);
                let headers = c.to_map(classes.wanted());
                for name in REDACTED_HEADERS {
                    prop_assert_eq!(headers.get(*name).map(String::as_str), Some(REDACTED));
                }
                for (name, shown) in &headers {
                    prop_assert!(
                        shown.len() <= MAX_CAPTURED_VALUE + "…".len(),
                        "{name}: {} bytes", shown.len()
                    );
                    prop_assert!(!shown.chars().any(|c| c.is_control() && c != '\t'), "{name}: {shown:?}");
                }
                let info = RequestInfo {
                    method: "GET".into(),
                    path: "/".into(),
                    request_id: "r".into(),
                    headers,
                    route: None,
                };
                let json = serde_json::to_string(&info).expect("serializes");
                prop_assert!(!json.contains(SECRET), "{json}");
            }

            /// A URL's password anywhere in a panic message (any scheme spelling, text of
            /// any kind around it, `@`, `:` and multibyte characters in the password) is
            /// never in the message a report shows; the hosts stay, and hiding again
            /// changes nothing.
            #[test]
            fn a_url_password_never_survives_in_a_message(
                before in prop::collection::vec(piece(), 0..8),
                urls in prop::collection::vec(url_with_password(), 1..3),
                after in prop::collection::vec(piece(), 0..8),
            ) {
                let text = |pieces: Vec<Vec<u8>>| {
                    String::from_utf8_lossy(&pieces.concat()).into_owned()
                };
                // A URL in text ends at whitespace, a control character, `"`, `<` or `>`.
                let ends_url = |c: char| c.is_whitespace() || c.is_control() || "\"<>".contains(c);
                // The URL, and whether its host stays: not when its password holds a `/ ? #`
                // before any `@` and an `@` follows the host (the user info runs to it).
                let in_text = |url: Vec<u8>| {
                    let url = String::from_utf8_lossy(&url).into_owned();
                    let (user_info, rest) = url.split_once("@host.example").expect("planted");
                    let user_info: String = user_info.chars().filter(|&c| !ends_url(c)).collect();
                    let after_scheme = &user_info[user_info.find("://").expect("planted") + 3..];
                    let past_authority = after_scheme
                        .split(['/', '?', '#'])
                        .next()
                        .is_some_and(|authority| authority.len() < after_scheme.len() && !authority.contains('@'));
                    let at_after_host = rest.split(ends_url).next().is_some_and(|r| r.contains('@'));
                    (format!("{user_info}@host.example{rest}"), !(past_authority && at_after_host))
                };
                let (urls, kept): (Vec<String>, Vec<bool>) = urls.into_iter().map(in_text).unzip();
                let message = format!("{} {} {}", text(before), urls.join(" "), text(after));
                let shown = hide_userinfo_in_text(&message);
                prop_assert!(!shown.contains(SECRET), "{message:?} gave {shown:?}");
                prop_assert_eq!(
                    shown.matches("@host.example/p").count(),
                    kept.iter().filter(|&&k| k).count(),
                    "{:?} gave {:?}", message, shown
                );
                prop_assert_eq!(hide_userinfo_in_text(&shown), shown.clone(), "hidden once");
            }
        }
    }
}

/// What a [`Policy`](crate::Policy) decided about one panic.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::sync::{Arc, Mutex};
/// use unwedge::panic::{Action, Decision};
///
/// let decisions = Arc::new(Mutex::new(Vec::<Decision>::new()));
/// let seen = decisions.clone();
/// unwedge::panic::add_sink(Arc::new(move |r: &unwedge::PanicReport| {
///     seen.lock().unwrap().extend(r.decision.clone())
/// }));
/// let cart = unwedge::Tx::named("cart", 0);
/// let task = unwedge::task::spawn_once("checkout", async move {
///     cart.update(|n| { *n += 1; panic!("out of stock") })
/// });
/// task.await.unwrap();
/// let decision = &decisions.lock().unwrap()[0];
/// assert_eq!(decision.action, Action::Recover); // the state was rolled back: keep serving
/// assert_eq!(decision.reason, "state rolled back: `cart`");
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Decision {
    /// `recover` (keep serving) or `crash` (graceful crash of the process).
    pub action: Action,
    /// Why, in a few words: "state rolled back", "mutex `cache` poisoned", "panic budget spent".
    pub reason: String,
}

/// The two things a policy can do about a panic.
///
/// In a report's JSON, `"recover"` or `"crash"`:
///
/// ```
/// use unwedge::panic::Action;
/// assert_eq!(serde_json::to_string(&Action::Crash).unwrap(), r#""crash""#);
/// assert_eq!(serde_json::from_str::<Action>(r#""recover""#).unwrap(), Action::Recover);
/// ```
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
        let backtrace = c.backtrace.as_ref().map(|t| {
            let label = format!(
                "{:?} at {}",
                c.message,
                c.location.as_deref().unwrap_or("?")
            );
            t.render(super::hook::backtrace_mode(), &label)
        });
        PanicReport {
            time: rfc3339(c.at),
            pid: std::process::id(),
            message: c.message,
            location: c.location,
            thread: c.thread,
            backtrace,
            request: None,
            task: None,
            rolled_back: c.rolled_back.iter().map(|n| n.to_string()).collect(),
            poisoned: c.poisoned.iter().map(|n| n.to_string()).collect(),
            decision: None,
        }
    }

    /// A short one-line summary: `"boom" at src/x.rs:1:2 (GET /path)`.
    ///
    /// ```
    /// # use unwedge::PanicReport;
    /// let json = r#"{"time":"2026-01-01T00:00:00.000Z","pid":7,"message":"boom",
    ///   "location":"src/main.rs:1:1","thread":null,"backtrace":null,"request":null,
    ///   "task":"cleanup","rolled_back":[],"poisoned":[],"decision":null}"#;
    /// let report: PanicReport = serde_json::from_str(json).unwrap();
    /// assert_eq!(report.summary(), r#""boom" at src/main.rs:1:1 (task cleanup)"#);
    /// ```
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
