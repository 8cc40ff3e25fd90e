//! `unwedge demo --duration 3s --check` and `unwedge chaos --duration 12s --check`: the real
//! binary, its real workers, real signals; a hard timeout on each, the process group killed
//! on timeout.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_unwedge");

/// Runs the binary with a hard timeout; returns (exit code, stdout, stderr).
async fn run(args: &[&str], limit: Duration) -> (Option<i32>, String, String) {
    // The demo keeps its working directory for the user to read: in one of the test's, removed
    // with it.
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let child = Command::new(BIN)
        .args(args)
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn unwedge");
    let pid = child.id().expect("pid") as i32;
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(out) => {
            let out = out.expect("wait");
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
        Err(_) => {
            // The demo and its workers share the process group.
            kill_children(pid);
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!(
                "`unwedge {}` did not finish within {limit:?}",
                args.join(" ")
            );
        }
    }
}

#[tokio::test]
async fn demo_short_check_passes_and_shows_the_comparison_corruption() {
    let (code, out, err) = run(
        &["demo", "--duration", "3s", "--check"],
        Duration::from_secs(50),
    )
    .await;
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("check: passed"), "{out}");
    // The table is there, with both columns.
    assert!(out.contains("axum + CatchPanicLayer"), "{out}");
    assert!(out.contains("invariant samples / violations"), "{out}");
    // The deadlock was found by the supervisor, the kill -9'd worker replaced.
    assert!(out.contains("detected in"), "{out}");
    assert!(out.contains("hung (wedged)"), "{out}");
    assert!(out.contains("exited: signal 9"), "{out}");
    // Piped: the progress bar is hidden, the event lines are there, nothing meant for a
    // terminal (escape sequences, carriage returns) leaks.
    assert!(
        out.lines()
            .any(|l| l.starts_with('[') && l.contains("s] unwedge: inject")),
        "{out}"
    );
    assert!(
        !out.contains('\x1b'),
        "escape sequence in piped output:\n{out:?}"
    );
    assert!(
        !out.contains('\r'),
        "carriage return in piped output:\n{out:?}"
    );
}

#[tokio::test]
async fn demo_ctrl_c_stops_it_early_with_status_130_and_no_worker_left() {
    stopped_early_by(nix::sys::signal::Signal::SIGINT, 130, "interrupted").await;
}

/// SIGTERM (a cancelled CI job, `timeout`, `docker stop`) ends the run as Ctrl-C does, with
/// 143: the demo went on driving load at the socket its stopped supervisor had closed, then
/// printed a table blaming unwedge for thousands of refused connections (review).
#[tokio::test]
async fn demo_sigterm_stops_it_early_with_status_143_and_no_worker_left() {
    stopped_early_by(nix::sys::signal::Signal::SIGTERM, 143, "terminated").await;
}

/// Starts `unwedge demo`, sends `signal` once the run has started; asserts exit `code`, `word`
/// in the output, no table, and no worker left.
async fn stopped_early_by(signal: nix::sys::signal::Signal, code: i32, word: &str) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let mut child = Command::new(BIN)
        .args(["demo", "--duration", "60s"])
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn unwedge");
    let pid = child.id().expect("pid") as i32;
    let test = async {
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut out = String::new();
        // The run has started once the first event line is out.
        while let Some(l) = lines.next_line().await.expect("read stdout") {
            out.push_str(&l);
            out.push('\n');
            if l.starts_with('[') {
                break;
            }
        }
        let workers = children(pid);
        assert!(!workers.is_empty(), "no worker processes found\n{out}");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).expect("signal");
        while let Some(l) = lines.next_line().await.expect("read stdout") {
            out.push_str(&l);
            out.push('\n');
        }
        let status = child.wait().await.expect("wait");
        (status.code(), out, workers)
    };
    let expected = code;
    let (code, out, workers) = match tokio::time::timeout(Duration::from_secs(40), test).await {
        Ok(r) => r,
        Err(_) => {
            kill_children(pid);
            panic!("`unwedge demo` did not stop within 40 s of the start and {signal}");
        }
    };
    assert_eq!(code, Some(expected), "{out}");
    assert!(out.contains(word), "{out}");
    // No table: the run was cut short.
    assert!(!out.contains("invariant samples"), "{out}");
    // The workers went with it (a zombie waiting for init counts as gone).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let alive = |p: &i32| {
        std::fs::read_to_string(format!("/proc/{p}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().starts_with('Z'))
            })
            == Some(false)
    };
    while workers.iter().any(alive) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left: Vec<_> = workers.iter().filter(|p| alive(p)).collect();
    for p in &left {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(**p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(left.is_empty(), "workers still running: {left:?}\n{out}");
}

#[tokio::test]
async fn demo_rejects_bad_flags_with_usage_exit() {
    let (code, _, err) = run(&["demo", "--duration", "forever"], Duration::from_secs(10)).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--duration"), "{err}");
    let (code, _, err) = run(&["demo", "--workers", "0"], Duration::from_secs(10)).await;
    assert_eq!(code, Some(2), "{err}");
}

/// SIGKILLs the process groups of `parent`'s children: the demo's workers, which run in
/// their own process groups.
fn kill_children(parent: i32) {
    for pid in children(parent) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The pids of `parent`'s children.
fn children(parent: i32) -> Vec<i32> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid …; comm may contain spaces, so split after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(parent) {
            found.push(pid);
        }
    }
    found
}

/// The demo's working directory is a new one of a random name, private to its user: a
/// directory another local user made first at the name the demo's pid would give
/// (`unwedge-demo-PID`), with links to the user's files in it, is left alone, and no file
/// the links point to is written.
#[tokio::test]
async fn the_demo_writes_to_a_new_private_directory_not_to_one_planted_at_its_name() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let victim = tmp.path().join("victim");
    std::fs::write(&victim, "ORIGINAL\n").unwrap();
    // `exec` keeps the shell's pid: the planted directory has the demo's pid in its name.
    let plant = r#"d="$TMPDIR/unwedge-demo-$$"; mkdir -m 755 "$d" &&
        ln -s "$TMPDIR/victim" "$d/supervisor.log" && ln -s "$TMPDIR/victim" "$d/workers.log" &&
        exec "$0" demo --duration 1s --no-compare"#;
    let out = tokio::time::timeout(
        Duration::from_secs(50),
        Command::new("sh")
            .args(["-c", plant, BIN])
            .env("TMPDIR", tmp.path())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the demo finishes within 50 s")
    .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "ORIGINAL\n");
    // The directory it used is the one it named, a new one, 0700.
    let logs = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("logs:"))
        .expect("the demo names its logs");
    let dir = std::path::Path::new(logs.trim().split("/supervisor.log").next().unwrap());
    assert_eq!(dir.parent(), Some(tmp.path()), "{stdout}");
    let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{}", dir.display());
    assert!(
        std::fs::symlink_metadata(dir.join("supervisor.log"))
            .unwrap()
            .is_file(),
        "{}",
        dir.display()
    );
}
