//! Worker output passed through line by line, prefixed with the worker id
//! (`[w1 pid 123] …`) or as JSON lines (`--log-format json`).

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::sync::{mpsc, watch};

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

/// `json` with DEL and the C1 controls (U+007F to U+009F, which JSON allows raw in a string)
/// written as `\u` escapes: the same value to a JSON reader, and no terminal control (U+009B
/// is CSI) to an operator who reads the log with `cat` or `tail`. They can only be in a string
/// (the keys are the supervisor's own), where an escape means the same character.
fn json_escaped(json: String) -> String {
    let raw = |c: char| ('\u{7f}'..='\u{9f}').contains(&c);
    if !json.chars().any(raw) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        match c {
            c if raw(c) => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
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
        // Its control characters escaped: a worker's output must not drive the terminal its
        // log is read on (clear it, retitle it), nor pass for the supervisor's own lines (a
        // `\r` that returns over its `[w1 pid …]` prefix). JSON escapes those below U+0020 by
        // itself, and `json_escaped` the rest.
        LogFormat::Text => format!(
            "[{worker} pid {pid}] {}\n",
            crate::text::escape_controls(line)
        ),
        LogFormat::Json => {
            let j = JsonLine {
                timestamp: humantime::format_rfc3339_millis(std::time::SystemTime::now())
                    .to_string(),
                worker,
                pid,
                stream,
                line,
            };
            let mut s = json_escaped(serde_json::to_string(&j).unwrap_or_default());
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
                // Our stdout and stderr are often one pipe (a journal stream, `2>&1`), where a
                // long line is written in pieces as the reader frees room: then stderr's lock,
                // which the supervisor's own log writer takes for each of its lines, is held
                // for stdout's lines too, so that no log line lands inside one of them. (Not
                // when they differ: a stalled stdout must not hold up the log on stderr.)
                let one_file = same_file(std::io::stdout().as_fd(), std::io::stderr().as_fd());
                while let Some((stream, line)) = rx.blocking_recv() {
                    // One write per line keeps lines of different workers whole.
                    let _ = match stream {
                        Stream::Stdout => {
                            let _log = one_file.then(|| std::io::stderr().lock());
                            std::io::stdout().lock().write_all(line.as_bytes())
                        }
                        Stream::Stderr => std::io::stderr().lock().write_all(line.as_bytes()),
                    };
                }
            })
            .expect("spawn the output thread");
        tx
    })
}

/// Whether two descriptors are the same open file (device and inode): stdout and stderr on
/// one pipe, one journal socket or one log file.
fn same_file(a: std::os::fd::BorrowedFd<'_>, b: std::os::fd::BorrowedFd<'_>) -> bool {
    match (nix::sys::stat::fstat(a), nix::sys::stat::fstat(b)) {
        (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
        _ => false,
    }
}

/// How many of a worker's last stderr lines are kept for its crash report.
pub const STDERR_TAIL_LINES: usize = 20;
/// Longer stderr lines are cut to this many bytes in the tail.
const TAIL_LINE_MAX: usize = 1024;
/// A closed tail nobody asked for is forgotten after this long.
const TAIL_KEEP: Duration = Duration::from_secs(60);

/// The last stderr lines of one worker process, and whether its stderr has closed.
struct Tail {
    lines: Mutex<VecDeque<String>>,
    closed: watch::Sender<Option<Instant>>,
}

type Tails = Mutex<HashMap<i32, Arc<Tail>>>;

fn tails() -> &'static Tails {
    static TAILS: OnceLock<Tails> = OnceLock::new();
    TAILS.get_or_init(Tails::default)
}

fn new_tail(pid: i32) -> Arc<Tail> {
    let tail = Arc::new(Tail {
        lines: Mutex::new(VecDeque::with_capacity(STDERR_TAIL_LINES)),
        closed: watch::channel(None).0,
    });
    let mut all = tails().lock().unwrap_or_else(|p| p.into_inner());
    // Forget the tails of workers that ended long ago and were never asked for.
    all.retain(|_, t| t.closed.borrow().is_none_or(|at| at.elapsed() < TAIL_KEEP));
    all.insert(pid, tail.clone());
    tail
}

impl Tail {
    fn push(&self, line: &str) {
        let kept = tail_line(line);
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() == STDERR_TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(kept);
    }
}

/// `line` as the tail keeps it: its first [`TAIL_LINE_MAX`] bytes. When that cut falls inside
/// a URL's authority (after `scheme://`, before its end), or past the first `/`, `?` or `#` of
/// a URL whose authority reads as `user:password` ([`looks_like_password`](unwedge_redact::looks_like_password): a password with an
/// unencoded `/`), the kept part ends at `scheme://…`: the `@` that shows where a
/// `user:password` ends is past the cut, so what follows `scheme://` may be the start of a
/// password, which the report's scrubbing (it hides what comes before such an `@`) could not
/// tell.
fn tail_line(line: &str) -> String {
    let cut = crate::text::floor_char_boundary(line, TAIL_LINE_MAX);
    let kept = &line[..cut];
    if cut < line.len() {
        if let Some(i) = unwedge_redact::cut_inside_url(kept) {
            // `…` marks the cut, if it fits in what it replaces: the line stays within
            // TAIL_LINE_MAX.
            let mark = if kept.len() - i >= '…'.len_utf8() {
                "…"
            } else {
                ""
            };
            return format!("{}{mark}", &kept[..i]);
        }
    }
    kept.to_owned()
}

/// The last (up to [`STDERR_TAIL_LINES`]) lines worker `pid` wrote to its stderr, for its
/// crash report; waits up to `wait` for its stderr to close first, so that what it wrote just
/// before it died is included. Forgets them: a second call returns nothing.
pub async fn last_stderr_lines(pid: i32, wait: Duration) -> Vec<String> {
    let Some(tail) = StderrTail::of(pid) else {
        return Vec::new();
    };
    let lines = tail.lines(wait).await;
    tails()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&pid);
    lines
}

/// A hold on the stderr tail of a worker, for reading it later even if
/// [`last_stderr_lines`] took it first.
pub(crate) struct StderrTail(Arc<Tail>);

impl StderrTail {
    /// Worker `pid`'s tail, if it is kept.
    pub(crate) fn of(pid: i32) -> Option<Self> {
        let all = tails().lock().unwrap_or_else(|p| p.into_inner());
        all.get(&pid).cloned().map(StderrTail)
    }

    /// Its lines, once the stderr closed (waiting up to `wait`).
    pub(crate) async fn lines(&self, wait: Duration) -> Vec<String> {
        let mut closed = self.0.closed.subscribe();
        // A grandchild may hold the pipe open: bounded.
        let _ = tokio::time::timeout(wait, closed.wait_for(Option::is_some)).await;
        let lines = self.0.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines.iter().cloned().collect()
    }
}

/// Whether a line of a server's output says that an address it tried to bind is in use
/// (`bind: address already in use`, `[Errno 98] Address already in use`, `EADDRINUSE`, …).
pub(crate) fn says_address_in_use(line: &str) -> bool {
    line.contains("EADDRINUSE") || line.to_ascii_lowercase().contains("address already in use")
}

/// Copies `reader` to our stdout or stderr until EOF (keeping the tail of stderr).
/// Longest line passed on whole; a longer one (a worker writing a blob without newlines) is
/// passed on in pieces of this size (give or take the 3 bytes of a character cut in two, which
/// goes whole into the next piece), so the supervisor's memory does not grow with it.
/// (journald's own limit, `LineMax=`, is 48 KiB.)
pub const MAX_LINE: usize = 16 * 1024;

pub(crate) fn forward<R>(
    reader: R,
    worker: String,
    pid: i32,
    stream: Stream,
    format: LogFormat,
    cutoff: &OutputCutoff,
) where
    R: AsyncRead + Unpin + Send + 'static,
{
    forward_to(
        writer().clone(),
        reader,
        worker,
        pid,
        stream,
        format,
        cutoff.0.subscribe(),
    );
}

/// How long a worker's output is still read after it exited (and the processes of its session
/// it left running ended): its last lines, which its crash record's stderr tail waits for, are
/// in the pipe by then. A process that still holds the pipe after that (a helper that went
/// into a session of its own, `setsid`) does not keep the supervisor's end of it, nor the task
/// that reads it: they would pile up at each restart (two read ends and two tasks each) until
/// the supervisor could not start a worker any more (EMFILE). The helper then gets EPIPE (or
/// SIGPIPE) when it writes to it, as when its reader went away.
pub(crate) const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// The end of the forwarding of one worker's output: when this is dropped (the worker exited,
/// and what it left of its session ended), its stdout and stderr are read for
/// [`OUTPUT_GRACE`] more, then closed.
#[derive(Debug)]
pub(crate) struct OutputCutoff(watch::Sender<Option<Instant>>);

impl OutputCutoff {
    pub(crate) fn new() -> Self {
        OutputCutoff(watch::channel(None).0)
    }
}

impl Drop for OutputCutoff {
    fn drop(&mut self) {
        self.0.send_replace(Some(Instant::now() + OUTPUT_GRACE));
    }
}

/// How much output is still passed on once the cutoff has passed, when the pipe still has
/// some (a helper writing without end would otherwise keep it open): a pipe's capacity.
const AFTER_CUTOFF: usize = 64 * 1024;

/// Returns once the cutoff `rx` was given has passed (never, if it has none).
async fn cut_off(rx: &mut watch::Receiver<Option<Instant>>) {
    let at = match rx.wait_for(Option::is_some).await.map(|at| *at) {
        Ok(at) => at,
        Err(_) => *rx.borrow(),
    };
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// [`forward`], each line sent to `out`, until EOF or the time `cutoff` gives.
fn forward_to<R>(
    out: mpsc::Sender<(Stream, String)>,
    reader: R,
    worker: String,
    pid: i32,
    stream: Stream,
    format: LogFormat,
    mut cutoff: watch::Receiver<Option<Instant>>,
) where
    R: AsyncRead + Unpin + Send + 'static,
{
    let tail = (stream == Stream::Stderr).then(|| new_tail(pid));
    tokio::spawn(async move {
        let mut r = BufReader::new(reader);
        let mut buf = Vec::with_capacity(256);
        // The bytes of a character the last piece of a long line cut: they begin the next.
        let mut carry = Vec::new();
        // Whether this piece goes on with a line a piece before began: the tail keeps each
        // line's beginning only, as a credential's value must stay with its name there.
        let mut continued = false;
        // Bytes read after the cutoff's time passed: what is already in the pipe is still
        // passed on (the forwarding may be behind, a slow stdout), up to this much.
        let mut past_cutoff = 0usize;
        loop {
            buf.clear();
            buf.append(&mut carry);
            let mut piece = (&mut r).take(MAX_LINE as u64);
            // Reading first: at the cutoff, only an empty pipe (or one written to without end,
            // past AFTER_CUTOFF) ends the reading, never lines already in it.
            let read = tokio::select! {
                biased;
                read = piece.read_until(b'\n', &mut buf) => Some(read),
                () = cut_off(&mut cutoff) => None,
            };
            if let (Some(Ok(n)), Some(at)) = (&read, *cutoff.borrow()) {
                if Instant::now() >= at {
                    past_cutoff += n;
                }
            }
            // At the cutoff, a line begun and not ended (its bytes read into `buf`) is passed
            // on as it is, the last one.
            let (n, last) = match read {
                Some(Ok(0) | Err(_)) => break,
                Some(Ok(n)) => (n, false),
                None if buf.is_empty() => break,
                None => (0, true),
            };
            let cut = n == MAX_LINE && buf.last() != Some(&b'\n');
            if cut {
                carry = buf.split_off(buf.len() - unfinished_char(&buf));
            }
            while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                buf.pop();
            }
            let text = String::from_utf8_lossy(&buf);
            if let Some(t) = tail.as_ref().filter(|_| !continued) {
                t.push(&text);
            }
            continued = cut;
            let line = format_line(format, &worker, pid, stream, &text);
            if out.send((stream, line)).await.is_err() || last || past_cutoff > AFTER_CUTOFF {
                break;
            }
        }
        // The read end closes here (`r` dropped), at EOF or at the cutoff.
        drop(r);
        if let Some(t) = &tail {
            t.closed.send_replace(Some(Instant::now()));
        }
    });
}

/// How many bytes at the end of `piece` begin a UTF-8 character they do not finish (0 to 3):
/// a long line is passed on in pieces cut at a byte count, and a character cut in two would
/// show as two U+FFFD, one at the end of a piece and one at the start of the next.
fn unfinished_char(piece: &[u8]) -> usize {
    (piece.len().saturating_sub(3)..piece.len())
        .rev()
        .find(|&i| piece[i] & 0xc0 != 0x80)
        .filter(|&i| std::str::from_utf8(&piece[i..]).is_err_and(|e| e.error_len().is_none()))
        .map_or(0, |i| piece.len() - i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stderr_tail_keeps_the_last_lines_until_asked() {
        let (mut w, r) = tokio::io::duplex(64 * 1024);
        let cutoff = OutputCutoff::new();
        forward(
            r,
            "w9".into(),
            -42,
            Stream::Stderr,
            LogFormat::Text,
            &cutoff,
        );
        let mut text = String::new();
        for i in 0..(STDERR_TAIL_LINES + 5) {
            text.push_str(&format!("line {i}\n"));
        }
        tokio::io::AsyncWriteExt::write_all(&mut w, text.as_bytes())
            .await
            .unwrap();
        drop(w); // EOF: the worker's stderr closed
        let lines = last_stderr_lines(-42, Duration::from_secs(10)).await;
        assert_eq!(lines.len(), STDERR_TAIL_LINES);
        assert_eq!(lines[0], "line 5");
        assert_eq!(
            lines.last().unwrap(),
            &format!("line {}", STDERR_TAIL_LINES + 4)
        );
        assert!(last_stderr_lines(-42, Duration::ZERO).await.is_empty());
    }

    /// `w9`'s output (`pid`, `stream`) forwarded until `cutoff` says (and `OUTPUT_GRACE`
    /// after): the write end, the lines passed on (`cap` at a time) and the cutoff.
    fn forwarding(
        pid: i32,
        stream: Stream,
        cap: usize,
    ) -> (
        tokio::io::DuplexStream,
        mpsc::Receiver<(Stream, String)>,
        OutputCutoff,
    ) {
        let (w, r) = tokio::io::duplex(64 * 1024);
        let (tx, rx) = mpsc::channel(cap);
        let cutoff = OutputCutoff::new();
        let format = LogFormat::Text;
        forward_to(
            tx,
            r,
            "w9".into(),
            pid,
            stream,
            format,
            cutoff.0.subscribe(),
        );
        (w, rx, cutoff)
    }

    /// A pipe a helper of the worker keeps open (a process in a session of its own) is read
    /// for OUTPUT_GRACE after the cutoff, then closed: the line begun is passed on, the tail
    /// is closed, the writer sees its reader gone.
    #[tokio::test]
    async fn a_pipe_held_open_is_closed_after_the_cutoff() {
        let (mut w, mut rx, cutoff) = forwarding(-44, Stream::Stderr, 16);
        tokio::io::AsyncWriteExt::write_all(&mut w, b"last words\nno end")
            .await
            .unwrap();
        assert_eq!(rx.recv().await.unwrap().1, "[w9 pid -44] last words\n");
        drop(cutoff); // the worker exited; `w` stays open
        let mut passed = Vec::new();
        while let Some((_, line)) = rx.recv().await {
            passed.push(line);
        }
        assert_eq!(passed, ["[w9 pid -44] no end\n"]);
        let lines = last_stderr_lines(-44, Duration::ZERO).await;
        assert_eq!(lines, ["last words", "no end"]);
        let wrote = tokio::io::AsyncWriteExt::write_all(&mut w, b"more\n").await;
        assert!(wrote.is_err(), "the reader is gone");
    }

    /// The forwarding is behind (our stdout is slow: one line at a time here) when the cutoff
    /// passes: the lines already in the pipe are all passed on, not cut at random.
    #[tokio::test]
    async fn lines_already_in_the_pipe_at_the_cutoff_are_all_passed_on() {
        let (mut w, mut rx, cutoff) = forwarding(-45, Stream::Stdout, 1);
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        tokio::io::AsyncWriteExt::write_all(&mut w, text.as_bytes())
            .await
            .unwrap();
        drop(cutoff); // the worker exited; `w` (a helper) stays open
        tokio::time::sleep(OUTPUT_GRACE + Duration::from_millis(500)).await;
        let mut passed = 0;
        while let Some((_, line)) = rx.recv().await {
            assert_eq!(line, format!("[w9 pid -45] line {passed}\n"));
            passed += 1;
        }
        assert_eq!(passed, 100);
        drop(w);
    }

    /// A helper that writes without end does not keep the pipe read for ever: past the
    /// cutoff, at most AFTER_CUTOFF more bytes are passed on, then the pipe is closed.
    #[tokio::test]
    async fn a_pipe_written_without_end_is_closed_after_the_cutoff_too() {
        let (mut w, mut rx, cutoff) = forwarding(-46, Stream::Stdout, 16);
        let writer = tokio::spawn(async move {
            let mut wrote = 0usize;
            while tokio::io::AsyncWriteExt::write_all(&mut w, b"spam\n")
                .await
                .is_ok()
            {
                wrote += 5;
                tokio::task::yield_now().await;
            }
            wrote
        });
        drop(cutoff);
        let mut passed = 0usize;
        let drained = tokio::time::timeout(Duration::from_secs(30), async {
            while rx.recv().await.is_some() {
                passed += 1;
            }
        })
        .await;
        assert!(
            drained.is_ok(),
            "still forwarding after 30 s ({passed} lines)"
        );
        let wrote = tokio::time::timeout(Duration::from_secs(30), writer)
            .await
            .expect("the writer sees its reader gone")
            .unwrap();
        assert!(wrote > 0);
    }

    #[tokio::test]
    async fn a_line_without_end_is_passed_on_in_bounded_pieces() {
        let (mut w, r) = tokio::io::duplex(64 * 1024);
        let (tx, mut rx) = mpsc::channel(16);
        let never = watch::channel(None).1;
        forward_to(
            tx,
            r,
            "w9".into(),
            -43,
            Stream::Stderr,
            LogFormat::Text,
            never,
        );
        let blob = "x".repeat(5 * MAX_LINE + 100);
        let writer = tokio::spawn(async move {
            tokio::io::AsyncWriteExt::write_all(&mut w, format!("{blob}\nend\n").as_bytes())
                .await
                .unwrap();
        });
        let mut pieces = Vec::new();
        while let Some((_, line)) = rx.recv().await {
            pieces.push(line);
        }
        writer.await.unwrap();
        assert_eq!(pieces.len(), 7, "5 whole pieces, the rest, and `end`");
        let prefix = "[w9 pid -43] ";
        assert!(pieces[..5]
            .iter()
            .all(|l| l.len() == prefix.len() + MAX_LINE + 1 && l.ends_with("x\n")));
        assert_eq!(pieces[5].len(), prefix.len() + 101);
        assert_eq!(pieces[6], "[w9 pid -43] end\n");
        // The tail keeps the beginning of each line, not each piece (found by
        // `a_credential_value_stays_with_its_name_in_the_tail`: a piece that began inside a
        // credential's value kept it without its name, which the report's scrubber needs).
        let lines = last_stderr_lines(-43, Duration::from_secs(10)).await;
        assert_eq!(lines, ["x".repeat(TAIL_LINE_MAX), "end".into()]);
    }

    /// What a worker that wrote `bytes` to its stderr and exited gave: the text of each
    /// line passed on (pieces of a long one), and the stderr tail kept.
    async fn forwarded(bytes: Vec<u8>) -> (Vec<String>, Vec<String>) {
        // A pid of its own for each call: tails are kept by pid.
        static NEXT: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1000);
        let pid = NEXT.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let (mut w, r) = tokio::io::duplex(64 * 1024);
        let (tx, mut rx) = mpsc::channel(16);
        let never = watch::channel(None).1;
        forward_to(
            tx,
            r,
            "w9".into(),
            pid,
            Stream::Stderr,
            LogFormat::Text,
            never,
        );
        let writer = tokio::spawn(async move {
            tokio::io::AsyncWriteExt::write_all(&mut w, &bytes)
                .await
                .unwrap();
        });
        let prefix = format!("[w9 pid {pid}] ");
        let mut passed = Vec::new();
        while let Some((_, line)) = rx.recv().await {
            let text = line
                .strip_prefix(&prefix)
                .and_then(|l| l.strip_suffix('\n'));
            passed.push(text.unwrap_or_else(|| panic!("{line:?}")).to_owned());
        }
        writer.await.unwrap();
        (
            passed,
            last_stderr_lines(pid, Duration::from_secs(10)).await,
        )
    }

    /// The stderr tail kept of a worker that wrote `bytes` and exited.
    async fn tail_of(bytes: Vec<u8>) -> Vec<String> {
        forwarded(bytes).await.1
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Found by `a_credential_value_stays_with_its_name_in_the_tail`: the cut after 16 KiB
    /// fell between a header's name and its value.
    #[tokio::test]
    async fn a_credential_cut_from_its_name_is_not_kept_alone() {
        let line = format!(
            "{}Authorization: Bearer QQQQQQQQ done\n",
            "x".repeat(MAX_LINE - 20)
        );
        let (pieces, tail) = forwarded(line.into_bytes()).await;
        assert_eq!(pieces[1], "r QQQQQQQQ done");
        assert_eq!(tail, ["x".repeat(TAIL_LINE_MAX)]);
    }

    /// A URL whose `user:password@` the tail's cut falls in keeps no part of it (the `@`
    /// that tells the report's scrubbing where the password ends is past the cut).
    #[tokio::test]
    async fn a_url_cut_inside_its_user_info_keeps_no_part_of_it() {
        let before = "x".repeat(TAIL_LINE_MAX - 40);
        let line = format!(
            "{before} connect postgres://app:{}@db/x failed\n",
            "S".repeat(100)
        );
        let tail = tail_of(line.into_bytes()).await;
        assert_eq!(tail, [format!("{before} connect postgres://…")]);
        // A URL whose authority ended before the cut is kept as it was cut.
        let line = format!("{before} GET https://db.example/{}\n", "p".repeat(100));
        let tail = tail_of(line.clone().into_bytes()).await;
        assert_eq!(tail, [line[..TAIL_LINE_MAX].to_owned()]);
        let line = format!("{before} GET https://db:8080/{}@x\n", "p".repeat(100));
        let tail = tail_of(line.clone().into_bytes()).await;
        assert_eq!(tail, [line[..TAIL_LINE_MAX].to_owned()]);
        // A password with an unencoded `/` (base64): the authority before it reads as
        // `user:password`, its end is past the cut.
        let line = format!(
            "{before} connect postgres://app:Ab3/x+{}@db/x failed\n",
            "S".repeat(100)
        );
        let tail = tail_of(line.into_bytes()).await;
        assert_eq!(tail, [format!("{before} connect postgres://…")]);
    }

    /// A line longer than MAX_LINE is passed on in pieces: a character a cut falls in goes
    /// whole into the next piece (found by `long_lines_are_cut_between_characters`).
    #[tokio::test]
    async fn a_long_line_is_cut_between_characters() {
        let line = format!("x{}", "é".repeat(10_000));
        let (pieces, _) = forwarded(format!("{line}\n").into_bytes()).await;
        assert_eq!(pieces.len(), 2, "{pieces:?}");
        assert!(pieces[1].starts_with("éé"), "{:?}", &pieces[1][..8]);
        assert_eq!(pieces.concat(), line);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// A worker's long lines of text (multibyte characters placed at and around every
        /// cut) are passed on in pieces that make the line again, no character broken into
        /// U+FFFD; each line the tail keeps is at most TAIL_LINE_MAX bytes, on one line.
        #[test]
        fn long_lines_are_cut_between_characters(
            ascii in 0..4usize,
            c in proptest::sample::select(vec!["é", "日", "🦀", "a"]),
            n in 0..(3 * MAX_LINE / 2),
            rest in "[a-zé日🦀\n]{0,64}",
        ) {
            let text = format!("{}{}{rest}\n", "x".repeat(ascii), c.repeat(n / c.len()));
            let (pieces, lines) = runtime().block_on(forwarded(text.clone().into_bytes()));
            let whole: Vec<&str> = text.lines().collect();
            proptest::prop_assert_eq!(pieces.concat(), whole.concat());
            for l in &lines {
                proptest::prop_assert!(!l.contains('\u{fffd}'), "{:?}", l);
                proptest::prop_assert!(l.len() <= TAIL_LINE_MAX && !l.contains('\n'));
            }
        }

        /// A credential in a line longer than MAX_LINE, wherever the cuts fall: a tail line
        /// holding any of its value holds its name (the report's scrubber reads the value
        /// after a name).
        #[test]
        fn a_credential_value_stays_with_its_name_in_the_tail(
            (k, back) in (1..3usize, 0..90usize),
        ) {
            let line = format!("{}Authorization: Bearer QQQQQQQQ done\n", "x".repeat(k * MAX_LINE - back));
            let lines = runtime().block_on(tail_of(line.into_bytes()));
            for l in &lines {
                proptest::prop_assert!(!l.contains('Q') || l.contains("Authorization"), "{:?}", l);
            }
        }

        /// Any bytes at all (not UTF-8, NUL, CR, very long lines): the tail keeps at most
        /// STDERR_TAIL_LINES lines of at most TAIL_LINE_MAX bytes.
        #[test]
        fn any_output_gives_a_bounded_tail(
            seed in proptest::collection::vec(
                proptest::sample::select(vec![
                    &b"a"[..], b"\n", b"\r", b"\0", b"\xc3", b"\xe6\x97", b"\xf0\x9f\xa6",
                    b"\xff", "é".as_bytes(), "日本".as_bytes(), "🦀".as_bytes(), &[b'x'; 100],
                    b"://", b"@",
                ]),
                0..64,
            ),
            times in 1..200usize,
        ) {
            let bytes = seed.concat().repeat(times);
            let lines = runtime().block_on(tail_of(bytes));
            proptest::prop_assert!(lines.len() <= STDERR_TAIL_LINES);
            for l in &lines {
                proptest::prop_assert!(l.len() <= TAIL_LINE_MAX && !l.contains('\n'));
            }
        }
    }

    #[test]
    fn address_in_use_as_servers_say_it() {
        for line in [
            "listen tcp 127.0.0.1:8080: bind: address already in use",
            "OSError: [Errno 98] Address already in use",
            "Error: listen EADDRINUSE: address already in use :::3000",
            "java.net.BindException: Address already in use",
            "Error: Address already in use (os error 98)",
            "nginx: [emerg] bind() to 0.0.0.0:80 failed (98: Address already in use)",
        ] {
            assert!(says_address_in_use(line), "{line}");
        }
        assert!(!says_address_in_use("listening on 127.0.0.1:8080"));
        assert!(!says_address_in_use("GET /address 200"));
    }

    /// A worker's escape sequences and carriage returns are shown, not obeyed: they could
    /// clear the operator's terminal or pass for a line of the supervisor's own.
    #[test]
    fn control_characters_of_a_worker_line_are_escaped_in_text() {
        let line =
            "hello \x1b]0;TITLE\x07 \x1b[2J clear\r2026-01-01T00:00:00Z  INFO fake\u{9b}31m\tend";
        let shown = format_line(LogFormat::Text, "w1", 7, Stream::Stdout, line);
        assert_eq!(
            shown,
            "[w1 pid 7] hello \\x1b]0;TITLE\\x07 \\x1b[2J clear\\x0d2026-01-01T00:00:00Z  \
             INFO fake\\u{9b}31m\tend\n"
        );
        assert!(!shown[..shown.len() - 1]
            .chars()
            .any(|c| c.is_control() && c != '\t'));
        // JSON keeps the line as it was, every control character written as an escape.
        let json = format_line(LogFormat::Json, "w1", 7, Stream::Stdout, line);
        assert!(!json.trim_end().chars().any(char::is_control), "{json}");
        assert!(json.contains(r"fake\u009b31m"), "{json}");
        let j: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(j["line"], line);
        let del = format_line(LogFormat::Json, "w1", 7, Stream::Stdout, "a\u{7f}b");
        assert!(del.contains(r"a\u007fb"), "{del}");
        // Plain text is borrowed as it is.
        assert!(matches!(
            shown_of("plain ünïcode\tline"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    fn shown_of(line: &str) -> std::borrow::Cow<'_, str> {
        crate::text::escape_controls(line)
    }

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
