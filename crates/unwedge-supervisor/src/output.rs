//! Worker output passed through line by line, prefixed with the worker id
//! (`[w1 pid 123] …`) or as JSON lines (`--log-format json`).

use std::io::Write;
use std::sync::OnceLock;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;

use crate::config::LogFormat;

/// Which of the worker's streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

#[derive(Serialize)]
struct JsonLine<'a> {
    timestamp: String,
    worker: &'a str,
    pid: i32,
    stream: Stream,
    line: &'a str,
}

/// Formats one line of worker output (without the trailing newline) for the log.
pub(crate) fn format_line(
    format: LogFormat,
    worker: &str,
    pid: i32,
    stream: Stream,
    line: &str,
) -> String {
    match format {
        LogFormat::Text => format!("[{worker} pid {pid}] {line}\n"),
        LogFormat::Json => {
            let j = JsonLine {
                timestamp: humantime::format_rfc3339_millis(std::time::SystemTime::now())
                    .to_string(),
                worker,
                pid,
                stream,
                line,
            };
            let mut s = serde_json::to_string(&j).unwrap_or_default();
            s.push('\n');
            s
        }
    }
}

/// The writer thread's queue: blocking writes to our stdout/stderr (a slow journal, a full
/// pipe) happen on that thread, never on the supervisor's runtime; a full queue makes the
/// forwarding task wait, which in turn makes the worker wait on its own pipe.
fn writer() -> &'static mpsc::Sender<(Stream, String)> {
    static WRITER: OnceLock<mpsc::Sender<(Stream, String)>> = OnceLock::new();
    WRITER.get_or_init(|| {
        let (tx, mut rx) = mpsc::channel::<(Stream, String)>(4096);
        std::thread::Builder::new()
            .name("unwedge-output".into())
            .spawn(move || {
                while let Some((stream, line)) = rx.blocking_recv() {
                    // One write per line keeps lines of different workers whole.
                    let _ = match stream {
                        Stream::Stdout => std::io::stdout().lock().write_all(line.as_bytes()),
                        Stream::Stderr => std::io::stderr().lock().write_all(line.as_bytes()),
                    };
                }
            })
            .expect("spawn the output thread");
        tx
    })
}

/// Copies `reader` to our stdout or stderr until EOF.
pub(crate) fn forward<R>(reader: R, worker: String, pid: i32, stream: Stream, format: LogFormat)
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let out = writer().clone();
    tokio::spawn(async move {
        let mut r = BufReader::new(reader);
        let mut buf = Vec::with_capacity(256);
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                        buf.pop();
                    }
                    let text = String::from_utf8_lossy(&buf);
                    let line = format_line(format, &worker, pid, stream, &text);
                    if out.send((stream, line)).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_json() {
        assert_eq!(
            format_line(LogFormat::Text, "w1", 7, Stream::Stdout, "hi"),
            "[w1 pid 7] hi\n"
        );
        let j: serde_json::Value = serde_json::from_str(&format_line(
            LogFormat::Json,
            "w2",
            8,
            Stream::Stderr,
            "a \"b\"",
        ))
        .unwrap();
        assert_eq!(j["worker"], "w2");
        assert_eq!(j["stream"], "stderr");
        assert_eq!(j["line"], "a \"b\"");
    }
}
