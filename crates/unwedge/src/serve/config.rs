//! Reading `serve()`'s configuration from the environment, strictly: a malformed value is an
//! error naming the variable and the value, never a silent default.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::notify::Target;
use super::ServeError;

/// Where to listen: a TCP address or a Unix socket path.
///
/// Parsed from `host:port` (`127.0.0.1:8080`, `[::1]:8080`, `localhost:8080`) or
/// `unix:/path/to.sock` (also any string starting with `/`).
///
/// ```
/// use unwedge::serve::ListenAddr;
/// let tcp: ListenAddr = "127.0.0.1:8080".parse().unwrap();
/// let unix: ListenAddr = "unix:/run/app.sock".parse().unwrap();
/// assert_eq!(tcp.to_string(), "127.0.0.1:8080");
/// assert_eq!(unix.to_string(), "unix:/run/app.sock");
/// assert!("8080".parse::<ListenAddr>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ListenAddr {
    /// A TCP `host:port`; the host is resolved when binding.
    Tcp(String),
    /// A Unix stream socket path.
    Unix(PathBuf),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => f.write_str(a),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl std::str::FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("`unix:` needs a path".into());
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        if s.starts_with('/') {
            return Ok(ListenAddr::Unix(PathBuf::from(s)));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| "expected host:port or unix:/path".to_owned())?;
        if host.is_empty() {
            return Err("missing host (use 0.0.0.0:PORT to listen on all interfaces)".into());
        }
        port.parse::<u16>()
            .map_err(|_| format!("`{port}` is not a port number"))?;
        Ok(ListenAddr::Tcp(s.to_owned()))
    }
}

impl From<std::net::SocketAddr> for ListenAddr {
    fn from(a: std::net::SocketAddr) -> Self {
        ListenAddr::Tcp(a.to_string())
    }
}

impl From<&str> for ListenAddr {
    /// Parses the address; an unparsable one is kept as it is and fails when `serve()` starts,
    /// with the parser's message ([`ServeError::Usage`](super::ServeError::Usage), exit code 2).
    ///
    /// ```
    /// use unwedge::serve::ListenAddr;
    /// assert_eq!(ListenAddr::from("unix:/run/app.sock"), ListenAddr::Unix("/run/app.sock".into()));
    /// assert_eq!("unix:".parse::<ListenAddr>(), Err("`unix:` needs a path".to_owned()));
    /// ```
    fn from(s: &str) -> Self {
        s.parse().unwrap_or_else(|_| ListenAddr::Tcp(s.to_owned()))
    }
}

/// Reads an environment variable; `None` when unset or empty. A non-UTF-8 value is an error.
pub(crate) fn var(name: &'static str) -> Result<Option<String>, ServeError> {
    match std::env::var_os(name) {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => v
            .into_string()
            .map(Some)
            .map_err(|v: OsString| ServeError::bad_env(name, v.to_string_lossy(), "not UTF-8")),
    }
}

/// The longest duration taken from the environment: a longer one is a typo, not a deadline.
pub(crate) const MAX_ENV_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// A duration from the environment: `30s`, `500ms`, `1m 30s` (humantime), or bare seconds;
/// at most [`MAX_ENV_DURATION`] (a year).
pub(crate) fn duration(name: &'static str) -> Result<Option<Duration>, ServeError> {
    let Some(v) = var(name)? else { return Ok(None) };
    // Bare seconds, else humantime; a value too large for a `Duration` is too long as well.
    let d = match v.trim().parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => {
            Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
        }
        _ => humantime::parse_duration(v.trim()).map_err(|e| {
            ServeError::bad_env(
                name,
                &v,
                format!("not a duration ({e}); try `30s` or `500ms`"),
            )
        })?,
    };
    if d > MAX_ENV_DURATION {
        return Err(ServeError::bad_env(
            name,
            &v,
            "longer than a year; try `30s` or `500ms`",
        ));
    }
    Ok(Some(d))
}

/// The inherited-socket protocol: `LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`.
#[derive(Debug, Default)]
pub(crate) struct Activation {
    /// How many fds (from 3) are ours; 0 when not socket-activated.
    pub(crate) count: usize,
    pub(crate) names: Vec<String>,
}

pub(crate) fn activation() -> Result<Activation, ServeError> {
    let Some(fds) = var("LISTEN_FDS")? else {
        return Ok(Activation::default());
    };
    let count: usize = fds
        .trim()
        .parse()
        .ok()
        .filter(|n| *n <= 4096)
        .ok_or_else(|| ServeError::bad_env("LISTEN_FDS", &fds, "not a number of sockets"))?;
    match var("LISTEN_PID")? {
        // systemd always sets it; tools such as systemfd leave it out: accept that too.
        None => {}
        Some(pid) => {
            let pid_num: u32 = pid
                .trim()
                .parse()
                .map_err(|_| ServeError::bad_env("LISTEN_PID", &pid, "not a process id"))?;
            if pid_num != std::process::id() {
                tracing::info!(
                    listen_pid = pid_num,
                    pid = std::process::id(),
                    "LISTEN_PID names another process: ignoring LISTEN_FDS (they were meant for it)"
                );
                return Ok(Activation::default());
            }
        }
    }
    let names = match var("LISTEN_FDNAMES")? {
        None => Vec::new(),
        Some(n) => {
            let names: Vec<String> = n.split(':').map(str::to_owned).collect();
            if names.len() != count {
                return Err(ServeError::bad_env(
                    "LISTEN_FDNAMES",
                    &n,
                    format!("names {} sockets but LISTEN_FDS={count}", names.len()),
                ));
            }
            names
        }
    };
    Ok(Activation { count, names })
}

/// `NOTIFY_SOCKET`: an absolute socket path, or `@name` for an abstract socket (sd_notify(3)).
/// `vsock:` addresses are refused: this crate does not speak AF_VSOCK.
pub(crate) fn notify_socket() -> Result<Option<Target>, ServeError> {
    let Some(v) = var("NOTIFY_SOCKET")? else {
        return Ok(None);
    };
    let bad = |why: &str| ServeError::bad_env("NOTIFY_SOCKET", &v, why);
    if let Some(name) = v.strip_prefix('@') {
        // sockaddr_un.sun_path: 108 bytes, the first one the NUL that marks it abstract.
        if name.is_empty() || name.len() > 107 {
            return Err(bad(
                "an abstract socket name must be 1 to 107 bytes after the @",
            ));
        }
        return Target::abstract_name(name)
            .map(Some)
            .map_err(|e| bad(&e.to_string()));
    }
    if v.starts_with("vsock") {
        return Err(bad(
            "AF_VSOCK notify sockets are not supported; use a socket path or @name",
        ));
    }
    if !v.starts_with('/') {
        return Err(bad("not an absolute socket path (nor an abstract @name)"));
    }
    // sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
    if v.len() > 107 {
        return Err(bad("path longer than 107 bytes"));
    }
    Target::path(&v).map(Some).map_err(|e| bad(&e.to_string()))
}

/// `WATCHDOG_USEC` (and `WATCHDOG_PID`): the heartbeat interval the supervisor expects.
pub(crate) fn watchdog_usec() -> Result<Option<Duration>, ServeError> {
    let Some(v) = var("WATCHDOG_USEC")? else {
        return Ok(None);
    };
    let usec: u64 = v.trim().parse().ok().filter(|u| *u > 0).ok_or_else(|| {
        ServeError::bad_env("WATCHDOG_USEC", &v, "not a positive number of microseconds")
    })?;
    if Duration::from_micros(usec) > MAX_ENV_DURATION {
        // systemd's "infinity" (u64::MAX) included: `sd_watchdog_enabled` refuses it too.
        return Err(ServeError::bad_env(
            "WATCHDOG_USEC",
            &v,
            "longer than a year of microseconds",
        ));
    }
    if let Some(pid) = var("WATCHDOG_PID")? {
        let pid_num: u32 = pid
            .trim()
            .parse()
            .map_err(|_| ServeError::bad_env("WATCHDOG_PID", &pid, "not a process id"))?;
        if pid_num != std::process::id() {
            return Ok(None);
        }
    }
    Ok(Some(Duration::from_micros(usec)))
}

/// `UNWEDGE_LISTEN`: comma-separated addresses.
pub(crate) fn listen() -> Result<Vec<ListenAddr>, ServeError> {
    let Some(v) = var("UNWEDGE_LISTEN")? else {
        return Ok(Vec::new());
    };
    v.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.parse::<ListenAddr>()
                .map_err(|why| ServeError::bad_env("UNWEDGE_LISTEN", &v, why))
        })
        .collect()
}

/// `UNWEDGE_POLICY`.
pub(crate) fn policy() -> Result<Option<crate::Policy>, ServeError> {
    // Blank is unset, as for `Policy::from_env`.
    let Some(v) = var("UNWEDGE_POLICY")?.filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    v.trim()
        .parse::<crate::Policy>()
        .map(Some)
        .map_err(|_| ServeError::bad_env("UNWEDGE_POLICY", &v, "expected recover, crash or auto"))
}

/// `UNWEDGE_BACKTRACE`: `1` (the default, symbols within 2 ms), `full` or `0`. The panic hook
/// reads it itself (and cannot fail); checked here so that a typo is an error, not the
/// default.
pub(crate) fn backtrace() -> Result<(), ServeError> {
    let name = crate::panic::BACKTRACE_ENV;
    let Some(v) = var(name)? else { return Ok(()) };
    crate::panic::BacktraceMode::parse(&v)
        .map(drop)
        .ok_or_else(|| ServeError::bad_env(name, &v, "expected 1 (symbols within 2 ms), full or 0"))
}

/// A count from the environment (`UNWEDGE_MAX_CONNECTIONS`): a whole number, `0` included.
pub(crate) fn count(name: &'static str) -> Result<Option<usize>, ServeError> {
    let Some(v) = var(name)? else { return Ok(None) };
    v.trim()
        .parse::<usize>()
        .map(Some)
        .map_err(|_| ServeError::bad_env(name, &v, "expected a whole number (0 for no limit)"))
}

/// `UNWEDGE_HEALTH_ROUTES=0` turns the `/livez` `/readyz` routes off.
pub(crate) fn flag(name: &'static str) -> Result<Option<bool>, ServeError> {
    let Some(v) = var(name)? else { return Ok(None) };
    match v.trim() {
        "1" | "true" | "yes" | "on" => Ok(Some(true)),
        "0" | "false" | "no" | "off" => Ok(Some(false)),
        _ => Err(ServeError::bad_env(
            name,
            &v,
            "expected 1, true, yes or on, or 0, false, no or off",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addr_parses_tcp_and_unix() {
        assert_eq!(
            "[::1]:80".parse::<ListenAddr>(),
            Ok(ListenAddr::Tcp("[::1]:80".into()))
        );
        assert_eq!(
            "/tmp/s.sock".parse::<ListenAddr>(),
            Ok(ListenAddr::Unix("/tmp/s.sock".into()))
        );
        assert!(":80".parse::<ListenAddr>().is_err());
        assert!("host:http".parse::<ListenAddr>().is_err());
        assert!("unix:".parse::<ListenAddr>().is_err());
    }
}
