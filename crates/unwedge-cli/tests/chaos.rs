//! The chaos soak's short version: random panics inside `Tx` updates and `Mutex` sections,
//! `kill -9`, `SIGSTOP` and reloads under continuous load, for 12 s; `--check` asserts zero
//! invariant violations, zero unexpected failures, zero refused, zero lost reports and bounded
//! memory (its verdict logic has unit tests of its own: `demo::table::tests`), and this test
//! checks that panics were answered and their reports arrived. The long one: `unwedge chaos --duration 10m --check`.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_unwedge");

#[tokio::test]
async fn chaos_short_soak_has_no_unexpected_failure() {
    // The run keeps its working directory for the user to read: in one of the test's, removed
    // with it.
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let child = Command::new(BIN)
        .args(["chaos", "--duration", "12s", "--every", "800ms", "--check"])
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn unwedge");
    let pid = child.id().expect("pid") as i32;
    let out = match tokio::time::timeout(Duration::from_secs(50), child.wait_with_output()).await {
        Ok(o) => o.expect("wait"),
        Err(_) => {
            kill_children(pid);
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("`unwedge chaos` did not finish within 50 s");
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("check: passed"), "{stdout}");
    // Faults really happened: at least one worker was killed and replaced.
    assert!(stdout.contains("replacement ready"), "{stdout}");
    // Panics were answered, and each has its report, received and on disk: the verdict's
    // report checks had something to check.
    let row = stdout
        .lines()
        .find_map(|l| l.split_once("panics answered 500 / reports received / on disk"))
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no report row:\n{stdout}"));
    let [answered, received, on_disk] = <[u64; 3]>::try_from(
        row.split('/')
            .map(|v| v.chars().filter(char::is_ascii_digit).collect::<String>())
            .map(|v| v.parse::<u64>().unwrap_or_else(|_| panic!("{row}")))
            .collect::<Vec<_>>(),
    )
    .unwrap_or_else(|_| panic!("{row}"));
    assert!(answered > 0, "no panic answered 500:\n{stdout}");
    assert!(
        received >= answered && on_disk >= answered,
        "reports missing: {row}\n{stdout}"
    );
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
