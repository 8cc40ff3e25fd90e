//! Worker output passed on by the real supervisor, read back the way a journal reads it:
//! the supervisor's stdout and stderr on one pipe.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::BIN;

/// Stops the supervisor when the test ends, passed or failed: SIGTERM, SIGKILL after 10 s.
struct StopOnDrop(std::process::Child);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `unwedge run -- python3 -c WORKER` (debug log: each junk notify line is a log line), its
/// stdout and stderr to these pipes; stopped when dropped.
fn supervise(worker: &str, stdout: std::io::PipeWriter, stderr: std::io::PipeWriter) -> StopOnDrop {
    let child = Command::new(BIN)
        .args(["run", "--listen", "127.0.0.1:0", "--admin", "off", "--"])
        .args(["python3", "-c", worker])
        .env("UNWEDGE_LOG", "debug")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("spawn unwedge");
    StopOnDrop(child)
}

/// A worker line this long is written by the supervisor in pieces once the pipe is full.
const BIG: usize = 12_000;

/// With stdout and stderr on one slow pipe (journald's stream, `2>&1 | logger`), a long line of
/// a worker's stdout is never cut by one of the supervisor's own log lines: each comes out
/// whole, on a line of its own.
#[test]
fn long_worker_lines_and_the_supervisors_log_lines_stay_whole_on_one_pipe() {
    // The worker writes long lines to its stdout while sending junk to the notify socket, one
    // datagram at a time: each is one debug line of the supervisor's own log (on stderr).
    let worker = format!(
        r#"
import os, socket, sys, threading
def junk():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    for i in range(3000):
        s.sendto(b"junk line %d" % i, os.environ["NOTIFY_SOCKET"])
threading.Thread(target=junk, daemon=True).start()
line = "x" * {BIG} + "\n"
for _ in range(300):
    sys.stdout.write(line)
    sys.stdout.flush()
sys.stdout.write("worker-%s\n" % "done")  # not in the logged command line
sys.stdout.flush()
threading.Event().wait(60)
"#
    );
    let (mut reader, writer) = std::io::pipe().expect("a pipe");
    let _stop = supervise(&worker, writer.try_clone().expect("dup the pipe"), writer);

    // A slow reader, on a thread of its own (a read may block): the pipe stays full, so the
    // long lines are written in pieces. It reads on to the end after the test has what it
    // needs: a supervisor blocked on a full pipe could not stop.
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = reader.read(&mut buf) {
            let _ = tx.send(buf[..n].to_vec());
            std::thread::sleep(Duration::from_micros(300));
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    let done = |out: &[u8]| {
        out[out.len().saturating_sub(4096 + 11)..]
            .windows(11)
            .any(|w| w == b"worker-done")
    };
    while !done(&out) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(chunk) => out.extend_from_slice(&chunk),
            Err(_) => break, // the deadline, or the supervisor's output ended
        }
    }

    let text = String::from_utf8_lossy(&out);
    assert!(
        text.contains("worker-done"),
        "the worker's output did not all arrive within 60 s"
    );
    let xs = "x".repeat(BIG);
    let (mut whole, mut junk_lines) = (0, 0);
    for line in text.lines() {
        if line.contains("xxxxxxxx") {
            let (prefix, rest) = line.split_once("] ").unwrap_or(("", line));
            assert!(
                prefix.starts_with("[w1 pid ") && rest == xs,
                "a worker line was cut or mixed with another line ({} bytes): {}…{}",
                line.len(),
                &line[..line.len().min(120)],
                &line[line.len().saturating_sub(200)..]
            );
            whole += 1;
        } else if line.contains("junk line") {
            junk_lines += 1;
        }
    }
    assert_eq!(whole, 300, "every long line arrives, whole");
    assert!(
        junk_lines > 0,
        "the supervisor logged while the worker wrote (else this test checks nothing)"
    );
}

/// Stdout and stderr on two pipes, and nobody reading stdout (a stalled log collector for the
/// workers' output): the supervisor's own log on stderr goes on (its lines about hangs and
/// restarts must not wait for the workers' output).
#[test]
fn a_stalled_stdout_does_not_hold_up_the_supervisors_log_on_stderr() {
    // Fills stdout's pipe, then sends junk notify lines, each a debug line of the log.
    let worker = r#"
import os, socket, sys, threading, time
def junk():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    for i in range(600):
        s.sendto(b"junk line %d" % i, os.environ["NOTIFY_SOCKET"])
        time.sleep(0.005)
threading.Thread(target=junk, daemon=True).start()
line = "x" * 1000 + "\n"
while True:
    sys.stdout.write(line)
    sys.stdout.flush()
"#;
    let (_stalled, out_w) = std::io::pipe().expect("a pipe");
    let (err_r, err_w) = std::io::pipe().expect("a pipe");
    let stop = supervise(worker, out_w, err_w);
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(err_r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut junk = 0;
    let mut log = Vec::new();
    while junk < 100 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                junk += usize::from(line.contains("junk line"));
                log.push(line);
            }
            Err(_) => break,
        }
    }
    drop(stop);
    assert!(
        junk >= 100,
        "the supervisor's log stopped with stdout stalled: {junk} junk lines in 30 s; log:\n{}",
        log.join("\n")
    );
}
