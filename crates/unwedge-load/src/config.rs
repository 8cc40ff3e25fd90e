//! What to send, where, how hard and for how long.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use serde::{Deserialize, Serialize};

use crate::LoadError;

/// The longest duration, timeout or interval between requests a run takes (365 days): a longer
/// one is a typo, and would overflow the clock.
pub const MAX_TIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Where the load goes: a loopback socket address plus the `Host` header to send.
///
/// Only loopback targets exist: [`Target::from_addr`] and [`Target::parse_url`] refuse any
/// other address, so the client cannot be pointed at someone else's server by mistake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    addr: SocketAddr,
    host: String,
    path: String,
}

impl Target {
    /// A target from a socket address; fails unless the address is loopback.
    ///
    /// ```
    /// use unwedge_load::Target;
    /// assert!(Target::from_addr("127.0.0.1:8080".parse().unwrap()).is_ok());
    /// assert!(Target::from_addr("10.0.0.1:8080".parse().unwrap()).is_err());
    /// ```
    pub fn from_addr(addr: SocketAddr) -> Result<Self, LoadError> {
        if !addr.ip().is_loopback() {
            return Err(LoadError::NotLoopback {
                target: addr.to_string(),
            });
        }
        Ok(Target {
            addr,
            host: addr.to_string(),
            path: "/".to_owned(),
        })
    }

    /// A target from an `http://` URL whose host is `127.0.0.1` (any `127.x.y.z`), `[::1]` or
    /// `localhost`. The URL's path (default `/`) is the path of the default request.
    ///
    /// ```
    /// use unwedge_load::Target;
    /// let t = Target::parse_url("http://localhost:3000/hello?x=1").unwrap();
    /// assert_eq!(t.addr().port(), 3000);
    /// assert_eq!(t.path(), "/hello?x=1");
    /// assert!(Target::parse_url("http://example.com/").is_err());
    /// assert!(Target::parse_url("https://127.0.0.1/").is_err());
    /// ```
    pub fn parse_url(url: &str) -> Result<Self, LoadError> {
        let invalid = |reason: &str| LoadError::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(invalid(&format!(
                    "scheme `{other}` is not supported, use http://"
                )))
            }
            None => return Err(invalid("missing scheme, expected http://HOST:PORT/PATH")),
        }
        let authority = uri.authority().ok_or_else(|| invalid("missing host"))?;
        if authority.as_str().contains('@') {
            return Err(invalid("user info is not supported"));
        }
        let host = authority.host();
        let port = authority.port_u16().unwrap_or(80);
        let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            match bare.parse::<IpAddr>() {
                Ok(ip) => ip,
                Err(_) => {
                    return Err(LoadError::NotLoopback {
                        target: host.to_owned(),
                    })
                }
            }
        };
        if !ip.is_loopback() {
            return Err(LoadError::NotLoopback {
                target: host.to_owned(),
            });
        }
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".to_owned());
        Ok(Target {
            addr: SocketAddr::new(ip, port),
            host: authority.as_str().to_owned(),
            path,
        })
    }

    /// The socket address connected to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `Host` header sent.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The path (with query) of the default request: the URL's, or `/`.
    pub fn path(&self) -> &str {
        &self.path
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.host)
    }
}

/// One kind of request in the mix, with how its responses are judged.
///
/// A response is classified, in this order:
/// 1. its status is in [`expect_failure`](Self::expect_failure)'s set → *expected failure*
///    (for example the `500` of a route that panics on purpose);
/// 2. its status is in the ok set (by default any `1xx`–`3xx`, or the statuses given to
///    [`ok_status`](Self::ok_status)) → *ok*;
/// 3. anything else → *unexpected status*.
///
/// ```
/// use unwedge_load::RequestSpec;
/// let spec = RequestSpec::post("/panic", "boom").expect_failure(500).weight(1);
/// assert_eq!(spec.name(), "POST /panic");
/// ```
#[derive(Debug, Clone)]
pub struct RequestSpec {
    name: String,
    method: Method,
    path: String,
    body: Bytes,
    headers: Vec<(HeaderName, HeaderValue)>,
    weight: u32,
    ok: Option<Vec<u16>>,
    expected_failures: Vec<u16>,
}

/// How one response (or failure) counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusClass {
    /// The status is an ok status for this request.
    Ok,
    /// The status is one this request is expected to fail with (an injected panic's `500`).
    ExpectedFailure,
    /// Any other status.
    Unexpected,
}

impl RequestSpec {
    /// A request with any method, to `path` (which may carry a query), no body, weight 1.
    pub fn new(method: Method, path: impl Into<String>) -> Self {
        let path = path.into();
        RequestSpec {
            name: format!("{method} {path}"),
            method,
            path,
            body: Bytes::new(),
            headers: Vec::new(),
            weight: 1,
            ok: None,
            expected_failures: Vec::new(),
        }
    }

    /// A `GET` request.
    pub fn get(path: impl Into<String>) -> Self {
        Self::new(Method::GET, path)
    }

    /// A `POST` request with a body.
    pub fn post(path: impl Into<String>, body: impl Into<Bytes>) -> Self {
        Self::new(Method::POST, path).body(body)
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Adds a header (sent on every request of this kind).
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The relative frequency of this request in the mix (default 1; 0 never sends it).
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// The name used in [`LoadReport::by_request`](crate::LoadReport::by_request)
    /// (default `"METHOD path"`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Renames this request in the report.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Counts `status` as an ok answer. Once called, only the statuses given this way are ok
    /// (instead of any `1xx`–`3xx`).
    pub fn ok_status(mut self, status: u16) -> Self {
        self.ok.get_or_insert_with(Vec::new).push(status);
        self
    }

    /// Counts `status` as an *expected* failure, apart from unexpected ones.
    pub fn expect_failure(mut self, status: u16) -> Self {
        self.expected_failures.push(status);
        self
    }

    /// How a response with `status` to this request counts.
    ///
    /// ```
    /// use unwedge_load::{RequestSpec, StatusClass};
    /// let spec = RequestSpec::get("/").expect_failure(500);
    /// assert_eq!(spec.classify(200), StatusClass::Ok);
    /// assert_eq!(spec.classify(500), StatusClass::ExpectedFailure);
    /// assert_eq!(spec.classify(503), StatusClass::Unexpected);
    /// ```
    pub fn classify(&self, status: u16) -> StatusClass {
        if self.expected_failures.contains(&status) {
            StatusClass::ExpectedFailure
        } else if match &self.ok {
            Some(ok) => ok.contains(&status),
            None => (100..400).contains(&status),
        } {
            StatusClass::Ok
        } else {
            StatusClass::Unexpected
        }
    }

    pub(crate) fn method(&self) -> &Method {
        &self.method
    }
    pub(crate) fn path(&self) -> &str {
        &self.path
    }
    pub(crate) fn body_bytes(&self) -> &Bytes {
        &self.body
    }
    pub(crate) fn headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.headers
    }
    pub(crate) fn weight_value(&self) -> u32 {
        self.weight
    }
}

/// How requests are issued.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadModel {
    /// Closed model: `n` workers, each sends its next request when the previous one ends.
    /// Latency is measured from the actual send, so a stalled server also slows the client
    /// down (coordinated omission): use [`LoadModel::Rate`] for latency figures under stalls.
    Concurrency(usize),
    /// Open model: requests are issued on a fixed schedule (`per_sec` per second) whether or
    /// not earlier ones have answered, at most `max_in_flight` at once (later ones wait, and
    /// their waiting counts in their latency). Latency is measured from the *intended* send
    /// time, so stalls are not hidden.
    Rate {
        /// Requests per second.
        per_sec: f64,
        /// Upper bound on requests in flight at once.
        max_in_flight: usize,
    },
}

impl fmt::Display for LoadModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadModel::Concurrency(n) => write!(f, "concurrency {n}"),
            LoadModel::Rate { per_sec, .. } => write!(f, "rate {per_sec}/s"),
        }
    }
}

/// Whether connections are reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectionMode {
    /// Reuse connections (HTTP/1.1 keep-alive). In [`LoadModel::Concurrency`] each worker
    /// owns one connection and opens a new one only when it is closed or failed.
    KeepAlive,
    /// A new TCP connection per request, sent with `Connection: close`.
    Fresh,
}

impl fmt::Display for ConnectionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConnectionMode::KeepAlive => "keep-alive",
            ConnectionMode::Fresh => "fresh connections",
        })
    }
}

/// A load run: target, request mix, model, connections, bounds and timeout.
///
/// At least one bound ([`duration`](Self::duration) or [`count`](Self::count)) is required,
/// so a run always ends by itself.
///
/// ```
/// use std::time::Duration;
/// use unwedge_load::{LoadConfig, RequestSpec};
///
/// let config = LoadConfig::new("http://127.0.0.1:3000/")?
///     .request(RequestSpec::get("/").weight(9))
///     .request(RequestSpec::post("/panic", "").expect_failure(500))
///     .concurrency(16)
///     .duration(Duration::from_secs(5))
///     .timeout(Duration::from_secs(2));
/// # let _ = config;
/// # Ok::<(), unwedge_load::LoadError>(())
/// ```
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub(crate) target: Target,
    pub(crate) requests: Vec<RequestSpec>,
    pub(crate) model: LoadModel,
    pub(crate) connections: ConnectionMode,
    pub(crate) duration: Option<Duration>,
    pub(crate) count: Option<u64>,
    pub(crate) timeout: Duration,
}

impl LoadConfig {
    /// A config for `url` (loopback `http://` only). Defaults: a `GET` of the URL's path,
    /// concurrency 1, keep-alive, 10 s timeout, no bound yet.
    pub fn new(url: &str) -> Result<Self, LoadError> {
        Ok(Self::for_target(Target::parse_url(url)?))
    }

    /// A config for a loopback socket address (the default request is `GET /`).
    pub fn from_addr(addr: SocketAddr) -> Result<Self, LoadError> {
        Ok(Self::for_target(Target::from_addr(addr)?))
    }

    /// A config for an already checked target.
    pub fn for_target(target: Target) -> Self {
        LoadConfig {
            target,
            requests: Vec::new(),
            model: LoadModel::Concurrency(1),
            connections: ConnectionMode::KeepAlive,
            duration: None,
            count: None,
            timeout: Duration::from_secs(10),
        }
    }

    /// Adds a request to the mix. Without any, the mix is one `GET` of the target's path.
    pub fn request(mut self, spec: RequestSpec) -> Self {
        self.requests.push(spec);
        self
    }

    /// Closed model with `n` concurrent workers.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.model = LoadModel::Concurrency(n);
        self
    }

    /// Open model at `per_sec` requests per second (at most 10 000 in flight; see
    /// [`model`](Self::model) to choose).
    pub fn rate(mut self, per_sec: f64) -> Self {
        self.model = LoadModel::Rate {
            per_sec,
            max_in_flight: 10_000,
        };
        self
    }

    /// Sets the load model.
    pub fn model(mut self, model: LoadModel) -> Self {
        self.model = model;
        self
    }

    /// Keep-alive (`true`, the default) or a fresh connection per request (`false`).
    pub fn keep_alive(mut self, keep_alive: bool) -> Self {
        self.connections = if keep_alive {
            ConnectionMode::KeepAlive
        } else {
            ConnectionMode::Fresh
        };
        self
    }

    /// Sets the connection mode.
    pub fn connections(mut self, mode: ConnectionMode) -> Self {
        self.connections = mode;
        self
    }

    /// Stop issuing requests after `d` (requests in flight then still finish, each within the
    /// timeout).
    pub fn duration(mut self, d: Duration) -> Self {
        self.duration = Some(d);
        self
    }

    /// Issue exactly `n` requests (fewer if the duration bound ends the run first).
    pub fn count(mut self, n: u64) -> Self {
        self.count = Some(n);
        self
    }

    /// Per-request timeout, covering connect, send and reading the whole response.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// The target.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Checks the config; [`crate::run`] and [`crate::start`] call this first. Durations
    /// (the run's, the timeout, the rate's interval) are at most [`MAX_TIME`].
    pub fn validate(&self) -> Result<(), LoadError> {
        let bad = |reason: &str| Err(LoadError::Config(reason.to_owned()));
        if self.duration.is_none() && self.count.is_none() {
            return bad("a load run needs a bound: a duration, a count, or both");
        }
        if self.count == Some(0) {
            return bad("count must be at least 1");
        }
        if self.duration == Some(Duration::ZERO) {
            return bad("duration must be greater than zero");
        }
        if self.timeout.is_zero() {
            return bad("timeout must be greater than zero");
        }
        if self.duration.is_some_and(|d| d > MAX_TIME) || self.timeout > MAX_TIME {
            return bad("duration and timeout must be at most 365 days");
        }
        match self.model {
            LoadModel::Concurrency(0) => return bad("concurrency must be at least 1"),
            LoadModel::Rate {
                per_sec,
                max_in_flight,
            } => {
                if !(per_sec.is_finite() && per_sec > 0.0) {
                    return bad("rate must be a positive number of requests per second");
                }
                if Duration::try_from_secs_f64(1.0 / per_sec).map_or(true, |i| i > MAX_TIME) {
                    return bad("rate must be at least one request per 365 days");
                }
                if max_in_flight == 0 {
                    return bad("max_in_flight must be at least 1");
                }
            }
            LoadModel::Concurrency(_) => {}
        }
        if let Some(s) = self
            .requests
            .iter()
            .flat_map(|r| &r.expected_failures)
            .find(|s| !(100..=599).contains(*s))
        {
            return Err(LoadError::Config(format!(
                "expected failure status {s} is not an HTTP status (100-599)"
            )));
        }
        if !self.requests.is_empty() && self.requests.iter().all(|r| r.weight == 0) {
            return bad("every request in the mix has weight 0");
        }
        for r in &self.requests {
            if !r.path.starts_with('/') || r.path.parse::<http::uri::PathAndQuery>().is_err() {
                return Err(LoadError::Config(format!(
                    "request path `{}` is not a valid absolute path",
                    r.path
                )));
            }
        }
        Ok(())
    }

    /// The request mix as run: the configured one, or the default `GET`.
    pub(crate) fn mix(&self) -> Vec<RequestSpec> {
        if self.requests.is_empty() {
            vec![RequestSpec::get(self.target.path.clone())]
        } else {
            self.requests.clone()
        }
    }
}

/// A weighted, interleaved order of request indices (smooth weighted round robin), so that a
/// mix of 9:1 sends the rare request every tenth time rather than in a block.
pub(crate) fn schedule(specs: &[RequestSpec]) -> Vec<usize> {
    let total: i64 = specs.iter().map(|s| i64::from(s.weight_value())).sum();
    let mut current = vec![0i64; specs.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, s) in current.iter_mut().zip(specs) {
            *c += i64::from(s.weight_value());
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (**c, std::cmp::Reverse(*i)))
            .expect("a mix with positive total weight is not empty");
        current[best] -= total;
        order.push(best);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_interleaves_by_weight() {
        let specs = [
            RequestSpec::get("/a").weight(3),
            RequestSpec::get("/b").weight(1),
        ];
        let order = schedule(&specs);
        assert_eq!(order.len(), 4);
        assert_eq!(order.iter().filter(|&&i| i == 1).count(), 1);
        let specs = [
            RequestSpec::get("/a").weight(0),
            RequestSpec::get("/b").weight(2),
        ];
        assert_eq!(schedule(&specs), vec![1, 1]);
    }

    #[test]
    fn urls_are_checked() {
        assert!(Target::parse_url("http://[::1]:8080/x").is_ok());
        assert!(Target::parse_url("http://127.0.0.2:1/").is_ok());
        assert!(matches!(
            Target::parse_url("http://192.168.1.1:80/"),
            Err(LoadError::NotLoopback { .. })
        ));
        assert!(matches!(
            Target::parse_url("http://localhost.evil.com/"),
            Err(LoadError::NotLoopback { .. })
        ));
        assert!(Target::parse_url("not a url").is_err());
        assert_eq!(Target::parse_url("http://localhost:9").unwrap().path(), "/");
    }

    #[test]
    fn a_bound_is_required() {
        let c = LoadConfig::new("http://127.0.0.1:1/").unwrap();
        assert!(c.validate().is_err());
        assert!(c.clone().count(1).validate().is_ok());
        assert!(c.clone().count(1).concurrency(0).validate().is_err());
        assert!(c.count(1).rate(f64::NAN).validate().is_err());
    }
}
