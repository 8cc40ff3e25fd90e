//! The report directory on a real file system, including a writer killed with SIGKILL.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use unwedge_admin::{
    print_reports, read_reports, ExitRecord, ExitStatus, PanicRecord, Record, ReportDir,
    ReportDirConfig, ReportError,
};

fn exit_record(pid: u32) -> Record {
    let worker = format!("w{}", pid % 4 + 1);
    let mut e = ExitRecord::new(
        Some(&worker),
        Some(pid),
        ExitStatus {
            code: Some(70),
            signal: None,
        },
    );
    e.last_stderr_lines = vec![format!("worker {pid} panicked")];
    Record::Exit(e)
}

fn panic_record(message: &str) -> Record {
    Record::Panic(PanicRecord::new(
        Some("w1"),
        serde_json::json!({"pid": 99, "message": message, "location": "src/a.rs:1:1",
            "request": {"method": "GET", "path": "/boom", "request_id": "r1", "headers": {}}}),
    ))
}

#[test]
fn records_survive_a_fresh_open() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let dir = ReportDir::open(ReportDirConfig::new(tmp.path())).unwrap();
        dir.append(&panic_record("boom")).unwrap();
        dir.append(&exit_record(1234)).unwrap();
    }
    let dir = ReportDir::open(ReportDirConfig::new(tmp.path())).unwrap();
    dir.append(&exit_record(1235)).unwrap();
    let back = dir.list(None).unwrap();
    assert_eq!(back.len(), 3);
    assert_eq!(back[0], read_reports(tmp.path(), None).unwrap()[0]);
    assert_eq!(back[0].message(), "boom");
    assert_eq!(back[1].pid(), Some(1234));
    assert_eq!(back[2].pid(), Some(1235));
}

#[test]
fn rotation_keeps_the_newest() {
    let tmp = tempfile::tempdir().unwrap();
    let line_len = serde_json::to_string(&exit_record(10_000)).unwrap().len() as u64 + 1;
    let dir = ReportDir::open(ReportDirConfig {
        dir: tmp.path().to_owned(),
        max_bytes: line_len * 3, // three records per file
        keep: 2,
    })
    .unwrap();
    for pid in 10_000..10_020 {
        dir.append(&exit_record(pid)).unwrap();
    }
    let kept: Vec<u32> = dir
        .list(None)
        .unwrap()
        .iter()
        .filter_map(Record::pid)
        .collect();
    // 20 records, 3 per file, current + 2 rotated: the last 20 % 3 = 2 plus 2 × 3.
    assert_eq!(kept, (10_012..10_020).collect::<Vec<_>>());
    let mut files: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["reports.1.jsonl", "reports.2.jsonl", "reports.jsonl"]
    );
    for f in &files {
        let len = std::fs::metadata(tmp.path().join(f)).unwrap().len();
        assert!(len <= line_len * 3, "{f} is {len} bytes");
    }
}

#[test]
fn since_filters_by_time() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = ReportDir::open(ReportDirConfig::new(tmp.path())).unwrap();
    let mut old = ExitRecord::new(
        Some("w1"),
        Some(1),
        ExitStatus {
            code: Some(1),
            signal: None,
        },
    );
    old.time = unwedge_admin::rfc3339(std::time::SystemTime::now() - Duration::from_secs(7200));
    dir.append(&Record::Exit(old)).unwrap();
    dir.append(&exit_record(2)).unwrap();
    assert_eq!(dir.list(None).unwrap().len(), 2);
    let recent = dir.list(Some(Duration::from_secs(3600))).unwrap();
    assert_eq!(recent.len(), 1);
    assert_eq!(recent[0].pid(), Some(2));
}

#[test]
fn a_torn_last_line_is_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = ReportDir::open(ReportDirConfig::new(tmp.path())).unwrap();
    dir.append(&exit_record(1)).unwrap();
    drop(dir);
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(tmp.path().join("reports.jsonl"))
        .unwrap();
    f.write_all(br#"{"kind":"exit","time":"2026-"#).unwrap();
    assert_eq!(read_reports(tmp.path(), None).unwrap().len(), 1);
}

#[test]
fn table_and_json_output() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = ReportDir::open(ReportDirConfig::new(tmp.path())).unwrap();
    dir.append(&panic_record("index out of bounds\nsecond line"))
        .unwrap();
    dir.append(&exit_record(4242)).unwrap();

    let mut out = Vec::new();
    print_reports(tmp.path(), None, false, &mut out).unwrap();
    let table = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("TIME") && lines[0].contains("WHAT"));
    assert!(lines[1].contains("panic") && lines[1].contains("GET /boom"));
    assert!(
        lines[1].contains("index out of bounds second line"),
        "one line per record"
    );
    assert!(lines[2].contains("exit") && lines[2].contains("4242") && lines[2].contains("exit 70"));

    let mut out = Vec::new();
    print_reports(tmp.path(), None, true, &mut out).unwrap();
    let json = String::from_utf8(out).unwrap();
    let back: Vec<Record> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(back, read_reports(tmp.path(), None).unwrap());
}

/// What someone who may write to the report directory could put at `reports.jsonl`: a FIFO
/// (every write would wait for a reader: alerts, metrics and the supervisor's exit with it),
/// a hard link to another file (the reports appended to it), a file of another user (the
/// reports where that user reads them). Each is a clear error at once, and nothing is
/// written.
#[test]
fn a_fifo_a_hard_link_or_another_users_file_as_the_current_file_is_refused() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let current = tmp.path().join("reports.jsonl");
    let opened = |what: &str| {
        let started = std::time::Instant::now();
        let err = ReportDir::open(ReportDirConfig::new(tmp.path()))
            .err()
            .unwrap_or_else(|| panic!("{what} accepted"));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: waited"
        );
        err.to_string()
    };

    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        &current,
        rustix::fs::Mode::from_raw_mode(0o666),
    )
    .unwrap();
    let msg = opened("a FIFO");
    assert!(msg.contains("not a regular file"), "{msg}");
    std::fs::remove_file(&current).unwrap();

    let other = tmp.path().join("elsewhere");
    std::fs::write(&other, "keep\n").unwrap();
    std::fs::hard_link(&other, &current).unwrap();
    let msg = opened("a hard link");
    assert!(msg.contains("2 names"), "{msg}");
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "keep\n");
    std::fs::remove_file(&current).unwrap();

    // Another user's file: only root can make one here.
    if rustix::process::geteuid().is_root() {
        std::fs::write(&current, "").unwrap();
        rustix::fs::chown(
            &current,
            Some(rustix::fs::Uid::from_raw(65534)),
            Some(rustix::fs::Gid::from_raw(65534)),
        )
        .unwrap();
        let msg = opened("another user's file");
        assert!(msg.contains("owned by uid 65534"), "{msg}");
        assert_eq!(std::fs::metadata(&current).unwrap().len(), 0);
        assert_eq!(std::fs::metadata(&current).unwrap().uid(), 65534);
        std::fs::remove_file(&current).unwrap();
    }

    // A plain one is still fine.
    ReportDir::open(ReportDirConfig::new(tmp.path())).unwrap();
}

/// The check that a file can be created in the directory creates a new file under a random
/// name: a link planted under the name it once used (`.unwedge-probe-<pid>`, known in
/// advance) to another file, in a directory others may write to, is neither opened nor
/// emptied, and nothing is left behind.
#[test]
fn the_write_check_touches_no_file_planted_in_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("reports");
    std::fs::create_dir(&dir).unwrap();
    let victim = tmp.path().join("victim");
    std::fs::write(&victim, "keep me").unwrap();
    let planted = dir.join(format!(".unwedge-probe-{}", std::process::id()));
    std::fs::hard_link(&victim, &planted).unwrap();
    ReportDir::open(ReportDirConfig::new(&dir)).unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    let mut left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".unwedge-probe-"))
        .collect();
    left.sort();
    assert_eq!(left, [planted.file_name().unwrap().to_str().unwrap()]);
}

#[test]
fn unwritable_dir_is_a_clear_error_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    // Root ignores permission bits, so use a path under a regular file.
    let file = tmp.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let bad = file.join("reports");
    let err = ReportDir::open(ReportDirConfig::new(&bad)).unwrap_err();
    assert!(matches!(err, ReportError::Unwritable { .. }));
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "cannot write crash reports to {}: ",
            bad.display()
        )),
        "{msg}"
    );
    assert!(msg.to_lowercase().contains("not a directory"), "{msg}");

    // A read-only file system, when this machine has one to try.
    if std::path::Path::new("/proc/sys").is_dir() {
        let err = ReportDir::open(ReportDirConfig::new("/proc/sys/unwedge-reports")).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("cannot write crash reports to /proc/sys/unwedge-reports: "));
    }
}

/// Child half of `records_are_on_disk_when_the_writer_is_killed`: appends one record, says
/// so, then waits to be killed.
#[test]
fn child_writer() {
    let Ok(dir) = std::env::var("UNWEDGE_TEST_REPORT_DIR") else {
        return; // only meaningful when started by the test below
    };
    let dir = ReportDir::open(ReportDirConfig::new(dir)).unwrap();
    dir.append(&panic_record("written before SIGKILL")).unwrap();
    println!("APPENDED");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn records_are_on_disk_when_the_writer_is_killed() {
    /// Kills the child however the test ends.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    let tmp = tempfile::tempdir().unwrap();
    let mut child = KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
            .env("UNWEDGE_TEST_REPORT_DIR", tmp.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Wait for "APPENDED" on a reader thread, so the wait itself has a deadline.
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains("APPENDED") {
                let _ = tx.send(());
                break;
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the child appended a record in time");
    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();
    let back = read_reports(tmp.path(), None).unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].message(), "written before SIGKILL");
}

/// The supervisor often runs as root: a link planted in a report directory others may write
/// to must not make it append to another file.
#[test]
fn a_link_planted_as_the_report_file_is_refused_not_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = tmp.path().join("secret");
    std::fs::write(&secret, "keep me\n").unwrap();
    let dir = tmp.path().join("reports");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::symlink(&secret, dir.join("reports.jsonl")).unwrap();
    let err = ReportDir::open(ReportDirConfig::new(&dir)).unwrap_err();
    assert!(matches!(err, ReportError::Unwritable { .. }), "{err}");
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "keep me\n");
}

/// Credentials never come back out: a report file written before reports were redacted (or by
/// hand) lists with `<redacted>` values, names in any case, object or `[name, value]` list, and
/// an exit record's stderr lines scrubbed (`Authorization: [redacted]`).
#[test]
fn credentials_in_an_old_report_file_are_not_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let line = serde_json::json!({"kind": "panic", "time": "2026-11-29T01:00:00.000Z",
        "worker": "w1", "report": {"message": "boom", "request": {"method": "GET",
        "path": "/a", "request_id": "r1", "headers": {"COOKIE": "s=SECRET-1",
        "Authorization": "Bearer SECRET-2", "accept": "*/*"}}}});
    let pairs = serde_json::json!({"kind": "panic", "time": "2026-11-29T01:00:01.000Z",
        "worker": "w1", "report": {"message": "boom", "request": {"method": "GET",
        "path": "/b", "request_id": "r2", "headers": [["set-cookie", "id=SECRET-3"],
        ["Proxy-Authorization", "Basic SECRET-4"], ["accept", "*/*"]]}}});
    let exit = serde_json::json!({"kind": "exit", "time": "2026-11-29T01:00:02.000Z",
        "worker": "w1", "pid": 7, "code": 1, "signal": null,
        "last_stderr_lines": ["Authorization: Bearer SECRET-5", "bye */*"]});
    std::fs::write(
        tmp.path().join("reports.jsonl"),
        format!("{line}\n{pairs}\n{exit}\n"),
    )
    .unwrap();
    let mut out = Vec::new();
    print_reports(tmp.path(), None, true, &mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(!out.contains("SECRET"), "{out}");
    assert_eq!(out.matches("<redacted>").count(), 4, "{out}");
    assert!(out.contains("Authorization: [redacted]"), "{out}");
    assert_eq!(out.matches("*/*").count(), 3, "{out}");
}

/// A line that is not UTF-8 (a torn multi-byte character, or garbage) costs that line, not
/// the listing: the records around it are listed and the line is counted as skipped.
#[test]
fn a_line_that_is_not_utf8_is_skipped_not_fatal() {
    let tmp = tempfile::tempdir().unwrap();
    let good = |pid| serde_json::to_string(&exit_record(pid)).unwrap();
    let mut bytes = format!("{}\n", good(1)).into_bytes();
    bytes.extend_from_slice(b"{\"kind\":\"panic\",\"message\":\"caf\xc3\n\xff\xfe garbage\n");
    bytes.extend_from_slice(format!("{}\n", good(2)).as_bytes());
    std::fs::write(tmp.path().join("reports.jsonl"), bytes).unwrap();

    let back = read_reports(tmp.path(), None).unwrap();
    assert_eq!(
        back.iter().map(Record::pid).collect::<Vec<_>>(),
        [Some(1), Some(2)]
    );
    let mut out = Vec::new();
    assert_eq!(print_reports(tmp.path(), None, false, &mut out).unwrap(), 2);
    let table = String::from_utf8(out).unwrap();
    assert!(
        table.ends_with(
            "(2 unreadable line(s) skipped: torn by a crash mid-write, or not records)\n"
        ),
        "{table}"
    );
}

/// A supervisor killed mid-write leaves a last line without its line break: the next one to
/// open the directory starts its first record on a line of its own, so that line reads back
/// (here and for any tool reading JSON lines), and only the torn one is skipped.
#[test]
fn a_record_appended_after_a_torn_line_is_on_a_line_of_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("reports.jsonl");
    {
        let dir = ReportDir::open(ReportDirConfig::new(tmp.path())).unwrap();
        dir.append(&exit_record(1)).unwrap();
    }
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(br#"{"kind":"exit","time":"2026-"#)
        .unwrap();
    let dir = ReportDir::open(ReportDirConfig::new(tmp.path())).unwrap();
    dir.append(&exit_record(3)).unwrap();
    dir.append(&exit_record(4)).unwrap();
    drop(dir);

    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert_eq!(lines[1], r#"{"kind":"exit","time":"2026-"#);
    for line in [lines[0], lines[2], lines[3]] {
        serde_json::from_str::<Record>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
    let pids: Vec<_> = read_reports(tmp.path(), None)
        .unwrap()
        .iter()
        .map(Record::pid)
        .collect();
    assert_eq!(pids, [Some(1), Some(3), Some(4)]);
    let mut out = Vec::new();
    assert_eq!(print_reports(tmp.path(), None, true, &mut out).unwrap(), 1);
}

/// A file an older version wrote, with a record glued to a torn line: the record is read.
#[test]
fn a_record_glued_to_a_torn_line_is_still_read() {
    let tmp = tempfile::tempdir().unwrap();
    let glued = format!(
        "{{\"kind\":\"exit\",\"time\":\"2026-{}\n",
        serde_json::to_string(&exit_record(7)).unwrap()
    );
    std::fs::write(tmp.path().join("reports.jsonl"), glued).unwrap();
    let back = read_reports(tmp.path(), None).unwrap();
    assert_eq!(back.iter().map(Record::pid).collect::<Vec<_>>(), [Some(7)]);
}

/// The directory removed (and made again, or not) or the file deleted while the supervisor
/// runs: the next records go to a file `unwedge reports` reads, not to the deleted one; the
/// path become a file fails the append (the record counts as not written).
#[test]
fn records_after_the_directory_was_removed_or_replaced_are_still_read() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("state/reports");
    let dir = ReportDir::open(ReportDirConfig::new(&path)).unwrap();
    dir.append(&exit_record(1)).unwrap();

    // rm -rf and mkdir again, as an operator cleaning up would.
    std::fs::remove_dir_all(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    dir.append(&exit_record(2)).unwrap();
    let back = read_reports(&path, None).unwrap();
    assert_eq!(back.iter().map(Record::pid).collect::<Vec<_>>(), [Some(2)]);

    // rm -rf of the whole state directory: made again as at start-up.
    std::fs::remove_dir_all(tmp.path().join("state")).unwrap();
    dir.append(&exit_record(3)).unwrap();
    assert_eq!(read_reports(&path, None).unwrap()[0].pid(), Some(3));

    // Only the file deleted.
    std::fs::remove_file(path.join("reports.jsonl")).unwrap();
    dir.append(&exit_record(4)).unwrap();
    dir.append(&exit_record(5)).unwrap();
    let pids: Vec<_> = dir.list(None).unwrap().iter().map(Record::pid).collect();
    assert_eq!(pids, [Some(4), Some(5)]);

    // The directory replaced by a file: the append fails (counted as not written).
    std::fs::remove_dir_all(&path).unwrap();
    std::fs::write(&path, "not a directory").unwrap();
    let e = dir.append(&exit_record(6)).unwrap_err();
    assert!(e.to_string().contains("moved or removed while open"), "{e}");
}
