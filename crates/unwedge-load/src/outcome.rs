//! How a request that got no response failed.

use std::error::Error as StdError;
use std::fmt;
use std::io;

use serde::{Deserialize, Serialize};

/// Why a request got no HTTP response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureKind {
    /// The connection was refused (`ECONNREFUSED`): nothing listening, or a full queue.
    Refused,
    /// The connection was reset or closed before a complete response (`ECONNRESET`,
    /// `EPIPE`, end of file mid-message, or the request canceled because the connection
    /// closed before it was written).
    Reset,
    /// No complete response within the per-request timeout.
    Timeout,
    /// Anything else (the samples in the report say what).
    Other,
}

impl FailureKind {
    /// All kinds, in report order.
    pub const ALL: [FailureKind; 4] = [
        FailureKind::Refused,
        FailureKind::Reset,
        FailureKind::Timeout,
        FailureKind::Other,
    ];

    pub(crate) fn index(self) -> usize {
        match self {
            FailureKind::Refused => 0,
            FailureKind::Reset => 1,
            FailureKind::Timeout => 2,
            FailureKind::Other => 3,
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureKind::Refused => "refused",
            FailureKind::Reset => "reset",
            FailureKind::Timeout => "timeout",
            FailureKind::Other => "other",
        })
    }
}

/// Classifies an error by walking its source chain: the first `std::io::Error` with a
/// telling kind, or `hyper::Error` flag, decides.
///
/// ```
/// use std::io;
/// use unwedge_load::{classify_error, FailureKind};
/// let e = io::Error::from(io::ErrorKind::ConnectionRefused);
/// assert_eq!(classify_error(&e), FailureKind::Refused);
/// let e = io::Error::new(io::ErrorKind::Other, io::Error::from(io::ErrorKind::BrokenPipe));
/// assert_eq!(classify_error(&e), FailureKind::Reset);
/// ```
pub fn classify_error(err: &(dyn StdError + 'static)) -> FailureKind {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            match io.kind() {
                io::ErrorKind::ConnectionRefused => return FailureKind::Refused,
                io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof => return FailureKind::Reset,
                io::ErrorKind::TimedOut => return FailureKind::Timeout,
                _ => {}
            }
            // `io::Error::source()` skips the wrapped error itself; look inside it.
            if let Some(inner) = io.get_ref() {
                let kind = classify_error(inner);
                if kind != FailureKind::Other {
                    return kind;
                }
            }
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() || h.is_closed() {
                return FailureKind::Reset;
            }
            if h.is_timeout() {
                return FailureKind::Timeout;
            }
        }
        current = e.source();
    }
    FailureKind::Other
}

/// `err: source: source…` on one line.
pub(crate) fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut s = err.to_string();
    let mut current = err.source();
    while let Some(e) = current {
        let text = e.to_string();
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        current = e.source();
    }
    s
}
