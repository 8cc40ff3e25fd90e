//! Shared by the integration tests: a raw HTTP/1.1 GET over a real socket and sample data.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use unwedge_admin::{
    ExitRecord, ExitStatus, PanicRecord, Record, RestartEvent, RestartReason, StatusView,
    SupervisorInfo, WorkerState, WorkerView,
};

/// Hard upper bound for anything a test awaits.
pub const LIMIT: Duration = Duration::from_secs(30);

pub struct Resp {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

/// `GET path` with `Connection: close`, the whole response read, within [`LIMIT`].
pub async fn get(addr: SocketAddr, path: &str) -> Resp {
    get_as(addr, &addr.to_string(), path).await
}

/// [`get`] with `Host: host`.
pub async fn get_as(addr: SocketAddr, host: &str, path: &str) -> Resp {
    get_with(addr, host, path, "").await
}

/// [`get_as`] with more header lines (`"Accept: …\r\n"`).
pub async fn get_with(addr: SocketAddr, host: &str, path: &str, headers: &str) -> Resp {
    tokio::time::timeout(LIMIT, async {
        let mut s = TcpStream::connect(addr)
            .await
            .expect("connect to admin endpoint");
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        let raw = String::from_utf8(raw).expect("utf-8 response");
        let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
        let status = head[9..12].parse().unwrap();
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_owned()
        };
        Resp {
            status,
            head: head.to_owned(),
            body,
        }
    })
    .await
    .expect("admin endpoint answered in time")
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").expect("chunk size line");
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
}

/// A supervisor with two workers (one ready, one starting after a crash), one restart 90 s
/// ago, a panic report and an abnormal exit.
pub fn sample_view(message: &str) -> StatusView {
    let mut sup = SupervisorInfo::new("0.1.0-test", std::process::id());
    sup.uptime_secs = 3725.0;
    sup.listen = vec!["127.0.0.1:8080".into()];
    let mut view = StatusView::new(sup);
    let mut w0 = WorkerView::new("w1", Some(4242), WorkerState::Ready);
    w0.uptime_secs = 61.0;
    w0.restarts = 1;
    w0.generation = 1;
    w0.last_exit = Some(ExitStatus {
        code: Some(70),
        signal: None,
    });
    w0.last_report = Some(format!("{message:?} at src/cart.rs:42:9 (POST /cart)"));
    let mut w1 = WorkerView::new("w2", Some(4243), WorkerState::Starting);
    w1.uptime_secs = 0.2;
    view.workers = vec![w0, w1];
    // 90 s before the view was taken: in the middle of the chart's "1 min ago" bucket.
    let generated = humantime::parse_rfc3339_weak(&view.generated_at).unwrap();
    let a_minute_ago = generated - Duration::from_secs(90);
    view.restarts.push(RestartEvent {
        time: unwedge_admin::rfc3339(a_minute_ago),
        worker: "w1".into(),
        reason: RestartReason::ExitCode,
    });
    let report = serde_json::json!({
        "time": unwedge_admin::rfc3339(a_minute_ago),
        "pid": 4241,
        "message": message,
        "location": "src/cart.rs:42:9",
        "thread": "tokio-runtime-worker",
        "backtrace": "   0: cart::add\n             at src/cart.rs:42:9\n   1: tokio::runtime::task",
        "request": {"method": "POST", "path": "/cart", "request_id": "req-7f3a",
                    "headers": {"authorization": "Bearer leaked-token", "user-agent": "curl/8"}},
        "task": null,
        "rolled_back": [],
        "poisoned": ["cart"],
        "decision": {"action": "crash", "reason": "mutex `cart` poisoned"}
    });
    view.reports
        .push(Record::Panic(PanicRecord::new(Some("w1"), report)));
    let mut exit = ExitRecord::new(
        Some("w1"),
        Some(4241),
        ExitStatus {
            code: Some(70),
            signal: None,
        },
    );
    exit.last_stderr_lines =
        vec!["thread 'tokio-runtime-worker' panicked at src/cart.rs:42:9".into()];
    view.reports.push(Record::Exit(exit));
    view
}

/// Is `program` on PATH (or an absolute path that exists)?
pub fn have(program: &str) -> bool {
    if program.starts_with('/') {
        return std::path::Path::new(program).exists();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// Whether a missing peer fails the test instead of skipping it: `UNWEDGE_REQUIRE_PEERS=1`,
/// which `.ci/run` exports (a CI that installed every peer must not go green on skipped tests).
pub fn peers_required() -> bool {
    std::env::var_os("UNWEDGE_REQUIRE_PEERS").is_some_and(|v| v == "1")
}

/// A peer this test drives is missing here (a program, a Python module…): `missing` says what
/// and how to install it. Under `UNWEDGE_REQUIRE_PEERS=1` that fails the test; elsewhere it
/// is said, and the caller returns (passing).
#[track_caller]
pub fn skip(missing: &str) {
    assert!(
        !peers_required(),
        "UNWEDGE_REQUIRE_PEERS=1, and a peer of this test is missing: {missing}"
    );
    println!("SKIPPED: {missing}");
}

/// Runs `cmd` (stdin closed) and collects its output, killing it if it takes longer than
/// [`LIMIT`].
pub async fn output(
    mut cmd: tokio::process::Command,
    stdin: Option<&[u8]>,
) -> std::process::Output {
    use std::process::Stdio;
    cmd.kill_on_drop(true)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("command starts");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input).await.unwrap();
        drop(pipe);
    }
    tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .expect("command finished in time")
        .unwrap()
}
