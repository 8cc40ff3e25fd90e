//! `--user` and `--group`: a root supervisor runs its workers as an unprivileged user, who can
//! still say `READY=1` and open `/dev/stderr`; a supervisor that is not root is refused the
//! switch. These tests need root; run without it, they say so (`SKIPPED (this environment)`)
//! and pass.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use nix::unistd::{Uid, User};

fn root() -> bool {
    if Uid::effective().is_root() {
        return true;
    }
    skip_env("switching users needs the tests to run as root");
    false
}

/// A directory everybody can enter, with `files` copied in (the checkout may be private to
/// the user running the tests).
fn open_dir(files: &[&Path]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for f in files {
        let to = dir.path().join(f.file_name().unwrap());
        std::fs::copy(f, &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

/// `key=value` out of a `/whoami` or `/env` answer.
fn field<'a>(body: &'a str, key: &str) -> &'a str {
    body.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_run_as_the_given_user_and_still_reach_the_supervisor() {
    if !root() {
        return;
    }
    let nobody = User::from_name("nobody").unwrap().expect("a `nobody` user");
    let dir = open_dir(&[&fixture("worker.py")]);
    let worker = dir.path().join("worker.py");
    let mut sup = Sup::run(
        &["--user", "nobody", "--ready", "notify", "--workers", "2"],
        &[worker.to_str().unwrap()],
    );
    // READY=1 arrives: the worker can reach the notify socket as `nobody`.
    sup.wait_line(0, &["starting 2 worker(s) as user nobody (uid "])
        .await;
    sup.wait_ready(0, 2).await;
    let addr = sup.addr().await;

    let (status, who) = get(addr, "/whoami").await;
    assert_eq!(status, 200, "{who}");
    let uid = nobody.uid.to_string();
    let gid = nobody.gid.to_string();
    assert_eq!(field(&who, "uid"), uid, "{who}");
    assert_eq!(field(&who, "euid"), uid, "{who}");
    assert_eq!(field(&who, "gid"), gid, "{who}");
    // Root's supplementary groups are gone: only the user's own.
    assert!(field(&who, "groups").split(',').all(|g| g != "0"), "{who}");
    assert_eq!(field(&who, "USER"), "nobody", "{who}");
    assert_eq!(Path::new(field(&who, "HOME")), nobody.dir, "{who}");
    // Its stdout and stderr pipes are its own: /dev/stderr opens, and what it writes there
    // reaches the supervisor's log.
    assert_eq!(field(&who, "devstderr"), "ok", "{who}");
    sup.wait_line(0, &[&format!("/dev/stderr opened by uid {uid}")])
        .await;

    // The notify socket is still private, to that user: theirs with 0600, in a directory that
    // stays root's (nobody can replace the socket) and lets their group in (0710).
    let (_, env) = get(addr, "/env").await;
    let sock = Path::new(field(&env, "NOTIFY_SOCKET")).to_owned();
    let sock_meta = std::fs::metadata(&sock).unwrap();
    let dir_meta = std::fs::metadata(sock.parent().unwrap()).unwrap();
    assert_eq!(sock_meta.mode() & 0o777, 0o600, "{}", sock.display());
    assert_eq!(sock_meta.uid(), nobody.uid.as_raw());
    assert_eq!(dir_meta.mode() & 0o777, 0o710);
    assert_eq!((dir_meta.uid(), dir_meta.gid()), (0, nobody.gid.as_raw()));

    // A reload starts the new generation as the same user; then a clean stop.
    let mark = sup.mark();
    sup.signal(Signal::SIGHUP);
    sup.wait_line(mark, &["generation 2 ready"]).await;
    let (_, who2) = get(addr, "/whoami").await;
    assert_eq!(field(&who2, "uid"), uid, "{who2}");
    sup.signal(Signal::SIGTERM);
    assert_eq!(sup.wait_exit(LONG).await.code(), Some(0), "{}", sup.log());
    assert!(
        !sock.parent().unwrap().exists(),
        "the notify directory is removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_that_cannot_be_switched_to_is_a_usage_error() {
    let (code, out) = run_to_end(&[
        "run",
        "--user",
        "no-such-user-here",
        "--listen",
        "127.0.0.1:0",
        "--",
        "/bin/true",
    ])
    .await;
    assert_eq!(code, 2, "{out}");
    assert_eq!(out.trim().lines().count(), 1, "{out}");
    assert!(
        out.contains("--user no-such-user-here: no such user"),
        "{out}"
    );

    let (code, out) =
        run_to_end(&["run", "--group", "no-such-group-here", "--", "/bin/true"]).await;
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("--group no-such-group-here: no such group"),
        "{out}"
    );

    if !root() {
        return;
    }
    // A supervisor that is not root cannot switch: it says so before starting anything.
    let nobody = User::from_name("nobody").unwrap().expect("a `nobody` user");
    let dir = open_dir(&[Path::new(BIN)]);
    let mut as_nobody = tokio::process::Command::new(dir.path().join("unwedge"));
    as_nobody
        .args(["run", "--user", "root", "--admin", "off", "--", "/bin/true"])
        .current_dir(dir.path())
        .uid(nobody.uid.as_raw())
        .gid(nobody.gid.as_raw());
    let out = output_of(as_nobody).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "--user root: running workers as another user needs the supervisor to run as root \
             (it runs as uid {})",
            nobody.uid
        )),
        "{err}"
    );

    // Root without the capabilities a switch takes (a container that dropped them): refused
    // at start, naming them, instead of every worker failing.
    if std::process::Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let mut without_caps = tokio::process::Command::new("setpriv");
        without_caps
            .args(["--bounding-set=-setuid,-setgid", BIN])
            .args([
                "run",
                "--user",
                "nobody",
                "--admin",
                "off",
                "--",
                "/bin/true",
            ]);
        let out = output_of(without_caps).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("needs CAP_SETGID, CAP_SETUID, which this root process lacks"),
            "{err}"
        );
    } else {
        skip("setpriv, for the dropped-capabilities case (apt-get install util-linux)");
    }

    // A command the user may not run: the failed start says as whom.
    let private = tempfile::tempdir().unwrap();
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let srv = private.path().join("srv");
    std::fs::copy("/bin/true", &srv).unwrap();
    let mut sup = Sup::run(
        &["--user", "nobody", "--admin", "off", "--max-restarts", "1"],
        &[srv.to_str().unwrap()],
    );
    sup.wait_line(
        0,
        &[
            &format!("cannot execute `{}` as uid {}", srv.display(), nobody.uid),
            "(--user): Permission denied",
        ],
    )
    .await;
    assert_eq!(sup.wait_exit(LONG).await.code(), Some(3), "{}", sup.log());

    // Switching to itself is no switch: allowed.
    let mut sup = tokio::process::Command::new(dir.path().join("unwedge"))
        .args([
            "run", "--user", "nobody", "--admin", "off", "--ready", "none",
        ])
        .args(["--", "sleep", "30"])
        .current_dir(dir.path())
        .uid(nobody.uid.as_raw())
        .gid(nobody.gid.as_raw())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stderr = sup.stderr.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
    let started = tokio::time::timeout(LONG, async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if l.contains("all 1 worker(s) ready") {
                return true;
            }
        }
        false
    })
    .await
    .expect("it starts");
    assert!(started);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sup.id().unwrap() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), sup.wait())
        .await
        .expect("it stops")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// Connects to unix socket `path` as `uid:gid` (a real process of that user) and sends a
/// `GET /`: the status line, or the error.
async fn get_as(uid: u32, gid: u32, path: &Path) -> String {
    let script = "import socket, sys\n\
        s = socket.socket(socket.AF_UNIX)\n\
        try:\n    s.connect(sys.argv[1])\nexcept OSError as e:\n    print(e.strerror); sys.exit(0)\n\
        s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n\
        print(s.makefile('rb').readline().decode().strip())\n";
    let mut client = tokio::process::Command::new("python3");
    client
        .args(["-c", script, path.to_str().unwrap()])
        .current_dir("/")
        .uid(uid)
        .gid(gid);
    let out = output_of(client).await;
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_sockets_are_open_to_the_users_their_mode_and_group_allow() {
    // Bad modes and groups first: usage errors.
    for (flags, says) in [
        (
            ["--socket-mode", "0999"],
            "--socket-mode 0999: not an octal mode such as 0660",
        ),
        (
            ["--socket-mode", "4755"],
            "--socket-mode 4755: only permission bits (at most 0777)",
        ),
        (
            ["--socket-group", "no-such-group-here"],
            "--socket-group no-such-group-here: no such group",
        ),
    ] {
        let mut args = vec!["run", "--listen", "unix:/nonexistent/x.sock"];
        args.extend(flags);
        args.extend(["--", "/bin/true"]);
        let (code, out) = run_to_end(&args).await;
        assert_eq!(code, 2, "{out}");
        assert!(out.contains(says), "{out}");
    }
    if !root() {
        return;
    }
    let nobody = User::from_name("nobody").unwrap().expect("a `nobody` user");
    let daemon = User::from_name("daemon").unwrap().expect("a `daemon` user");
    let dir = open_dir(&[&fixture("worker.py")]);
    let worker = dir.path().join("worker.py");
    let sock = dir.path().join("app.sock");
    let listen = format!("unix:{}", sock.display());
    let serve = |flags: &[&str]| {
        let mut args = vec!["run", "--listen", &listen, "--admin", "off"];
        args.extend_from_slice(flags);
        args.extend(["--", worker.to_str().unwrap()]);
        Sup::start(&args)
    };

    // The default, 0666: a proxy running as another user (nginx as www-data) connects.
    let mut sup = serve(&[]);
    sup.wait_ready(0, 1).await;
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o666);
    let as_nobody = get_as(nobody.uid.as_raw(), nobody.gid.as_raw(), &sock).await;
    assert_eq!(as_nobody, "HTTP/1.0 200 OK", "{}", sup.log());
    sup.signal(Signal::SIGTERM);
    assert_eq!(sup.wait_exit(LONG).await.code(), Some(0), "{}", sup.log());

    // 0660 and nobody's group: nobody connects, another user is refused.
    let group = nobody.gid.to_string();
    let mut sup = serve(&["--socket-mode", "0660", "--socket-group", &group]);
    sup.wait_ready(0, 1).await;
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(
        (meta.mode() & 0o777, meta.gid()),
        (0o660, nobody.gid.as_raw())
    );
    let as_nobody = get_as(nobody.uid.as_raw(), nobody.gid.as_raw(), &sock).await;
    assert_eq!(as_nobody, "HTTP/1.0 200 OK", "{}", sup.log());
    let as_daemon = get_as(daemon.uid.as_raw(), daemon.gid.as_raw(), &sock).await;
    assert_eq!(as_daemon, "Permission denied");
    sup.signal(Signal::SIGTERM);
    assert_eq!(sup.wait_exit(LONG).await.code(), Some(0), "{}", sup.log());
}

/// Workers run as `nobody` say `READY=1` with `systemd-notify`, which, unprivileged, sends
/// from its own pid (root's may name its parent instead) and then waits on a barrier: the
/// message is the worker's (the helper is in its session, alive until the barrier is
/// answered), for every worker of a pool started at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprivileged_workers_are_ready_by_systemd_notify() {
    if !root() {
        return;
    }
    let Some(helper) = which("systemd-notify") else {
        skip("systemd-notify (Debian package systemd)");
        return;
    };
    let worker = format!(
        "{} --ready --status=\"as $(id -un)\" || exit 9; exec sleep 600",
        helper.display()
    );
    let mut sup = Sup::run(
        &[
            "--user",
            "nobody",
            "--ready",
            "notify",
            "--ready-timeout",
            "20s",
            "--workers",
            "4",
        ],
        &["sh", "-c", &worker],
    );
    sup.wait_ready(0, 4).await;
    let log = sup.log();
    assert!(!log.contains("not a worker"), "{log}");
    assert!(!log.contains("file descriptor store"), "{log}");
    sup.signal(Signal::SIGTERM);
    assert_eq!(sup.wait_exit(LONG).await.code(), Some(0), "{}", sup.log());
}
