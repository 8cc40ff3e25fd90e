//! `unwedge demo --duration 3s --check` and `unwedge chaos --duration 12s --check`: the real
//! binary, its real workers, real signals; a hard timeout on each, the process group killed
//! on timeout.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_unwedge");

/// Runs the binary with a hard timeout; returns (exit code, stdout, stderr).
async fn run(args: &[&str], limit: Duration) -> (Option<i32>, String, String) {
    let child = Command::new(BIN)
        .args(args)
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
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
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
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
