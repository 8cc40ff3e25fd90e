//! HTTP probes: one `GET PATH HTTP/1.1` with `Connection: close`, healthy on a 2xx or 3xx
//! status within the timeout. Through `--port-env` the probe reaches one worker; through a
//! shared socket it reaches whichever worker accepts.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::ListenAddr;

/// Why a probe failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// No answer within the timeout.
    #[error("no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// Connecting, writing or reading failed.
    #[error("{0}")]
    Io(String),
    /// The answer was not HTTP, or not 2xx/3xx.
    #[error("bad answer: {0}")]
    Status(String),
    /// The supervisor could not make the probe: it is short of descriptors (`EMFILE`,
    /// `ENFILE`), memory or buffers (`ENOMEM`, `ENOBUFS`) or local ports (`EADDRNOTAVAIL`).
    /// Its own shortage, which says nothing of the worker.
    #[error("cannot probe: {0}")]
    Unable(String),
}

impl ProbeError {
    /// A connection's error, [`Unable`](Self::Unable) when it is the supervisor's shortage.
    fn connecting(e: std::io::Error) -> Self {
        use nix::errno::Errno;
        let ours = [
            Errno::EMFILE,
            Errno::ENFILE,
            Errno::ENOMEM,
            Errno::ENOBUFS,
            Errno::EADDRNOTAVAIL,
        ];
        match e.raw_os_error() {
            Some(n) if ours.iter().any(|&errno| errno as i32 == n) => {
                ProbeError::Unable(format!("the supervisor is short of resources ({e})"))
            }
            _ => ProbeError::Io(e.to_string()),
        }
    }
}

/// GETs `path` at `target`; `Ok(status)` for 2xx/3xx.
pub async fn probe(target: &ListenAddr, path: &str, timeout: Duration) -> Result<u16, ProbeError> {
    match tokio::time::timeout(timeout, probe_inner(target, path)).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::Timeout(timeout)),
    }
}

/// Connects to `target` (TCP or unix) and closes: `Ok` when it connects within `timeout`;
/// [`ProbeError::Unable`] when the supervisor could not even try (its own shortage),
/// [`ProbeError::Io`] (refused, unreachable) or [`ProbeError::Timeout`] otherwise.
///
/// ```no_run
/// # async fn f() {
/// use unwedge_supervisor::probe::{connects, ProbeError};
/// let target = "127.0.0.1:8080".parse().unwrap();
/// match connects(&target, std::time::Duration::from_secs(1)).await {
///     Ok(()) => println!("accepting"),
///     Err(ProbeError::Unable(why)) => println!("cannot tell: {why}"),
///     Err(e) => println!("not accepting: {e}"),
/// }
/// # }
/// ```
pub async fn connects(target: &ListenAddr, timeout: Duration) -> Result<(), ProbeError> {
    let fut = async {
        match target {
            ListenAddr::Tcp(a) => tokio::net::TcpStream::connect(a).await.map(drop),
            ListenAddr::Unix(p) => tokio::net::UnixStream::connect(p).await.map(drop),
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.map_err(ProbeError::connecting),
        Err(_) => Err(ProbeError::Timeout(timeout)),
    }
}

async fn probe_inner(target: &ListenAddr, path: &str) -> Result<u16, ProbeError> {
    match target {
        ListenAddr::Tcp(a) => {
            let s = tokio::net::TcpStream::connect(a)
                .await
                .map_err(ProbeError::connecting)?;
            exchange(s, &a.to_string(), path).await
        }
        ListenAddr::Unix(p) => {
            let s = tokio::net::UnixStream::connect(p)
                .await
                .map_err(ProbeError::connecting)?;
            exchange(s, "localhost", path).await
        }
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    host: &str,
    path: &str,
) -> Result<u16, ProbeError> {
    let io = |e: std::io::Error| ProbeError::Io(e.to_string());
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: unwedge-probe\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.map_err(io)?;
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') {
        let n = s.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > 4096 {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or("").trim().to_owned();
    if line.is_empty() {
        return Err(ProbeError::Io("connection closed without an answer".into()));
    }
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| ProbeError::Status(format!("{line:.60}")))?;
    if (200..400).contains(&status) {
        Ok(status)
    } else {
        Err(ProbeError::Status(format!("{line:.60}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn one_shot(answer: &'static str) -> ListenAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut b = [0u8; 512];
            let _ = s.read(&mut b).await;
            if !answer.is_empty() {
                s.write_all(answer.as_bytes()).await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            } else {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
        ListenAddr::Tcp(a)
    }

    #[tokio::test]
    async fn ok_error_and_timeout() {
        let t = one_shot("HTTP/1.1 200 OK\r\n\r\n").await;
        assert_eq!(probe(&t, "/", Duration::from_secs(2)).await, Ok(200));
        let t = one_shot("HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        assert!(matches!(
            probe(&t, "/", Duration::from_secs(2)).await,
            Err(ProbeError::Status(_))
        ));
        let t = one_shot("").await;
        assert!(matches!(
            probe(&t, "/", Duration::from_millis(100)).await,
            Err(ProbeError::Timeout(_))
        ));
    }

    /// What a worker's server answered `answer` to a probe gave.
    fn probed(answer: Vec<u8>) -> Result<u16, ProbeError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
            // The server's side stays open until it has read the request and answered (a
            // side dropped at once would fail the probe's write, every time, before any
            // answer is read).
            let server = tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.ends_with(b"\r\n\r\n") {
                    match theirs.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = theirs.write_all(&answer).await;
            });
            let got = exchange(ours, "localhost", "/healthz").await;
            server.abort();
            got
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Any answer (a status line cut inside a character, bytes that are not UTF-8, no
        /// line break, megabytes): a status from 200 to 399 or an error, never a panic.
        #[test]
        fn any_answer_is_a_status_or_an_error(
            head in proptest::sample::select(vec![
                "HTTP/1.1 ", "HTTP/1.0 2", "HTTP/1.", "http/1.1 ", "",
                "HTTP/1.1 200 OK", "HTTP/1.0 302", "HTTP/1.1 503 ", "HTTP/1.1 404",
            ]),
            rest in proptest::collection::vec(
                proptest::sample::select(vec![
                    &b"2"[..], b"0", b"5", b" ", b"OK", b"\r", b"\n", b"\0", b"\xff", b"\xc3",
                    "é".as_bytes(), "日本".as_bytes(), &[b'x'; 1000],
                ]),
                0..12,
            ),
        ) {
            let mut answer = head.as_bytes().to_vec();
            answer.extend(rest.concat());
            match probed(answer) {
                Ok(status) => proptest::prop_assert!((200..400).contains(&status)),
                // The only failures are the answer's: the exchange itself works (an answer
                // whose first line is empty is the one I/O error).
                Err(ProbeError::Io(e)) => {
                    proptest::prop_assert_eq!(e.as_str(), "connection closed without an answer")
                }
                Err(_) => {}
            }
        }
    }
}
