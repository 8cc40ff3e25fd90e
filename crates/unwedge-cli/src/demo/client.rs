//! A tiny HTTP/1.1 client for the demo's own requests (injections, writes, invariant samples):
//! one fresh connection per request, `Connection: close`, the whole answer read, every
//! failure classified like `unwedge-load` does (refused, reset, timeout, other).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What one request got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// A complete response: status and body.
    Status(u16, String),
    /// `ECONNREFUSED`.
    Refused,
    /// Reset, or closed before a complete response head.
    Reset,
    /// No complete response within the timeout.
    Timeout,
    /// Anything else.
    Other(String),
}

impl Reply {
    /// The status, if there was a response.
    pub(crate) fn status(&self) -> Option<u16> {
        match self {
            Reply::Status(s, _) => Some(*s),
            _ => None,
        }
    }

    /// Short text for logs and tables.
    pub(crate) fn describe(&self) -> String {
        match self {
            Reply::Status(s, _) => format!("{s}"),
            Reply::Refused => "refused".into(),
            Reply::Reset => "reset".into(),
            Reply::Timeout => "timeout".into(),
            Reply::Other(e) => format!("error: {e}"),
        }
    }
}

/// Sends one request and reads the whole response.
pub(crate) async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Reply {
    match tokio::time::timeout(timeout, exchange(addr, method, path, body)).await {
        Err(_) => Reply::Timeout,
        Ok(r) => r,
    }
}

async fn exchange(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Reply {
    let mut stream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => return classify(&e),
    };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    if let Err(e) = stream.write_all(&out).await {
        return classify(&e);
    }
    let mut buf = Vec::with_capacity(1024);
    if let Err(e) = stream.read_to_end(&mut buf).await {
        // A reset after a complete response head still counts as the response.
        if let Some(r) = parse(&buf) {
            return r;
        }
        return classify(&e);
    }
    parse(&buf).unwrap_or(Reply::Reset)
}

fn parse(buf: &[u8]) -> Option<Reply> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let status = head.split(' ').nth(1)?.parse::<u16>().ok()?;
    let body = String::from_utf8_lossy(&buf[end + 4..]).into_owned();
    Some(Reply::Status(status, body))
}

fn classify(e: &std::io::Error) -> Reply {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => Reply::Refused,
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => Reply::Reset,
        TimedOut => Reply::Timeout,
        _ => Reply::Other(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_body() {
        let r = parse(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok");
        assert_eq!(r, Some(Reply::Status(201, "ok".into())));
        assert_eq!(parse(b"HTTP/1.1 20"), None);
    }
}
