//! Bad input and the small subcommands: one clear line, exit 2 (usage) or 1, never a panic.

mod common;

use common::*;

fn assert_clear(code: i32, want: i32, out: &str, needle: &str) {
    assert_eq!(code, want, "exit code; output:\n{out}");
    assert!(out.contains(needle), "{needle:?} not in:\n{out}");
    assert!(!out.contains("panicked"), "panic:\n{out}");
    assert!(!out.contains("RUST_BACKTRACE"), "panic:\n{out}");
}

/// Usage errors are one line on stderr, exit 2: clap's too (no tip, usage line or pointer
/// to `--help` on lines of their own; its tip `use '-- --bogus'` would start the worker
/// command of `unwedge run`), and a negative value is the option's invalid value, not an
/// unknown flag.
#[tokio::test]
async fn usage_errors_exit_2() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["run", "--no-such-flag", "--", "true"],
            "unwedge: error: unexpected argument '--no-such-flag' (see unwedge run --help)",
        ),
        (
            &["run", "--listen", "127.0.0.1:0", "--bogus", "--", "true"],
            "unwedge: error: unexpected argument '--bogus' (see unwedge run --help)",
        ),
        (
            &["run", "--worker", "2", "--", "true"],
            "unexpected argument '--worker' (did you mean '--workers'? see unwedge run --help)",
        ),
        (
            &["run", "--watchdog", "-1s", "--", "true"],
            "invalid value '-1s' for '--watchdog <DURATION>': `-1s` is not a duration",
        ),
        (
            &["run", "--workers", "-1", "--", "true"],
            "--workers `-1` is not a number of workers or `auto`",
        ),
        (
            &["run", "-w", "-1", "--", "true"],
            "--workers `-1` is not a number of workers or `auto`",
        ),
        (
            &["run", "--watchdog", "--", "true"],
            "a value is required for '--watchdog <DURATION>' but none was supplied",
        ),
        (
            &["reports", "--since", "-1h"],
            "invalid value '-1h' for '--since <DURATION>'",
        ),
        (
            &["demo", "--workers", "99"],
            "99 is not in 1..=16 (see unwedge demo --help)",
        ),
        (
            &["reload", "--pid", "5", "--pidfile", "x"],
            "the argument '--pid <PID>' cannot be used with '--pidfile <FILE>'",
        ),
        (
            &["staus"],
            "unrecognized subcommand 'staus' (did you mean 'status'? see unwedge --help)",
        ),
        (
            &["run", "--restart-delay", "soon", "--", "true"],
            "is not a duration",
        ),
        (
            &["run", "--workers", "0", "--", "true"],
            "--workers must be at least 1",
        ),
        (
            &["run", "--max-memory", "ten", "--", "true"],
            "invalid size \"ten\"",
        ),
        (
            &["run", "--max-memory", "0", "--", "true"],
            "--max-memory must be more than 0",
        ),
        (
            &["run", "--workers", "lots", "--", "true"],
            "--workers `lots` is not a number of workers or `auto`",
        ),
        (
            &["run", "--workers", "100000", "--", "true"],
            "--workers 100000 is more than 1024",
        ),
        (
            &[
                "run",
                "--stop-timeout",
                "18446744073709551615s",
                "--",
                "true",
            ],
            "is longer than a year",
        ),
        (
            &["run", "--restart-delay-max", "1000000000d", "--", "true"],
            "is longer than a year",
        ),
        (&["run", "--listen", "127.0.0.1:0"], "no worker command"),
        (
            &["run", "--listen", "not-an-address", "--", "true"],
            "--listen",
        ),
        (
            &["run", "--dump-signal", "SIGNOPE", "--", "true"],
            "--dump-signal",
        ),
        (&["run", "--probe", "/", "--", "true"], "--probe needs"),
        (
            &[
                "run",
                "--listen",
                "127.0.0.1:0",
                "--port-env",
                "PORT",
                "--",
                "true",
            ],
            "cannot be used together",
        ),
        (&["frobnicate"], "unrecognized subcommand"),
    ];
    for (args, needle) in cases {
        let (code, out, err) = run_split(args).await;
        assert_clear(code, 2, &err, needle);
        assert_eq!(err.lines().count(), 1, "{args:?}: one line:\n{err}");
        assert!(err.starts_with("unwedge: error: "), "{args:?}: {err}");
        assert!(!err.contains("tip:"), "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
    }
    // Help and version are printed as clap has them, on stdout, exit 0.
    let (code, out, err) = run_split(&["run", "--help"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("Run CMD as a pool of supervised workers."),
        "{out}"
    );
    assert!(
        out.contains("\nUsage: unwedge run [OPTIONS] [-- <CMD>...]\n"),
        "{out}"
    );
    let (code, out, _) = run_split(&["--version"]).await;
    assert_eq!(code, 0);
    assert_eq!(out, format!("unwedge {}\n", env!("CARGO_PKG_VERSION")));
}

/// `--ready accept` watches the sockets passed to the workers: with none (no `--listen`, no
/// systemd sockets) every worker was "hung (ready_timeout)" and replaced, forever. Refused at
/// start (one line, exit 2), and by a reload that asks for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_accept_without_sockets_is_refused() {
    let (code, out, err) = run_split(&["run", "--ready", "accept", "--", "sleep", "100"]).await;
    let needle = "--ready accept needs sockets to watch (--listen, or sockets passed by systemd)";
    assert_clear(code, 2, &err, needle);
    assert_eq!(err.trim().lines().count(), 1, "one line:\n{err}");
    assert!(out.is_empty(), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("unwedge.toml");
    let write = |ready: &str| {
        let c = format!("admin = \"off\"\nready = \"{ready}\"\ncommand = [\"sleep\", \"100\"]\n");
        std::fs::write(&file, c).unwrap();
    };
    write("none");
    let mut sup = Sup::start(&["run", "-c", file.to_str().unwrap()]);
    let pid = sup.wait_ready(0, 1).await[0];
    write("accept");
    let m = sup.mark();
    sup.signal(nix::sys::signal::Signal::SIGHUP);
    let line = sup.wait_line(m, &["reload refused:"]).await;
    assert!(line.contains(needle), "{line}");
    assert!(running(pid), "the worker was stopped:\n{}", sup.log());
    sup.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(sup.wait_exit(LONG).await.code(), Some(0), "{}", sup.log());
}

#[tokio::test]
async fn a_command_that_cannot_run_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let not_exec = dir.path().join("server.sh");
    std::fs::write(&not_exec, "#!/bin/sh\n").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["run".into(), "--".into(), "no-such-command-xyz".into()],
            "not found in PATH",
        ),
        (
            vec!["run".into(), "--".into(), "/nonexistent/server".into()],
            "No such file",
        ),
        (
            vec!["run".into(), "--".into(), not_exec.display().to_string()],
            "not executable",
        ),
        (
            vec!["run".into(), "--".into(), dir.path().display().to_string()],
            "not a regular file",
        ),
    ];
    for (args, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out) = run_to_end(&args).await;
        assert_clear(code, 1, &out, needle);
        assert_eq!(out.trim().lines().count(), 1, "one line:\n{out}");
    }
}

#[tokio::test]
async fn a_port_in_use_exits_1_and_names_what_holds_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, out) = run_to_end(&["run", "--listen", &addr, "--", "true"]).await;
    assert_clear(
        code,
        1,
        &out,
        &format!("cannot listen on {addr}: Address already in use"),
    );
    // This test's own process holds it (often, in real life, one a previous run left).
    let me = std::process::id();
    assert!(
        out.contains(&format!("; pid {me} (`")) && out.contains("`) listens on it"),
        "{out}"
    );
    assert_eq!(out.trim().lines().count(), 1, "{out}");
}

/// A unix socket a server still accepts on is in use, not replaced (replacing it would take
/// that server's new connections); one nothing listens on any more is replaced.
#[tokio::test]
async fn a_unix_socket_in_use_is_not_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.sock");
    let listen = format!("unix:{}", path.display());
    let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let (code, out) = run_to_end(&["run", "--listen", &listen, "--", "true"]).await;
    assert_clear(
        code,
        1,
        &out,
        &format!("cannot listen on {listen}: a server accepts connections on it; pid "),
    );
    // Still the test's socket: a client reaches it.
    std::os::unix::net::UnixStream::connect(&path).unwrap();
    live.accept().unwrap();

    // Left behind by a server that ended: replaced.
    drop(live);
    let mut sup = Sup::start(&[
        "run", "--admin", "off", "--ready", "none", "--listen", &listen, "--", "sleep", "30",
    ]);
    sup.wait_ready(0, 1).await;
    sup.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(sup.wait_exit(LONG).await.code(), Some(0), "{}", sup.log());
}

#[tokio::test]
async fn config_files_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "listen = [\"127.0.0.1:8080\"]\nworkers = 3\nwatchdog = \"2s\"\ncommand = [\"./server\", \"--flag\"]\n",
    )
    .unwrap();
    let (code, out) = run_to_end(&["check-config", good.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}");
    for line in [
        "workers = 3",
        "watchdog = \"2s\"",
        "restart-delay = \"10ms\"",
        "max-restarts = 20",
        "dump-signal = \"SIGQUIT\"",
    ] {
        assert!(out.contains(line), "{line} not in:\n{out}");
    }

    let unknown = dir.path().join("unknown.toml");
    std::fs::write(&unknown, "wrokers = 3\n").unwrap();
    let (code, out) = run_to_end(&["check-config", unknown.to_str().unwrap()]).await;
    assert_clear(code, 2, &out, "unknown field `wrokers`");
    let (code, out) =
        run_to_end(&["run", "--config", unknown.to_str().unwrap(), "--", "true"]).await;
    assert_clear(code, 2, &out, "unknown field `wrokers`");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "restart-delay = \"fast\"\n").unwrap();
    let (code, out) = run_to_end(&["check-config", bad.to_str().unwrap()]).await;
    assert_clear(code, 2, &out, "is not a duration");

    let long = dir.path().join("long.toml");
    std::fs::write(&long, "stop-timeout = \"99999999999999999999s\"\n").unwrap();
    let (code, out) = run_to_end(&["check-config", long.to_str().unwrap()]).await;
    assert_clear(code, 2, &out, "is longer than a year");

    let zero = dir.path().join("zero.toml");
    std::fs::write(&zero, "workers = 0\ncommand = [\"true\"]\n").unwrap();
    let (code, out) = run_to_end(&["check-config", zero.to_str().unwrap()]).await;
    assert_clear(code, 2, &out, "--workers must be at least 1");

    let many = dir.path().join("many.toml");
    std::fs::write(&many, "workers = \"many\"\ncommand = [\"true\"]\n").unwrap();
    let (code, out) = run_to_end(&["check-config", many.to_str().unwrap()]).await;
    assert_clear(code, 2, &out, "not a number of workers or `auto`");

    let auto = dir.path().join("auto.toml");
    std::fs::write(&auto, "workers = \"auto\"\ncommand = [\"true\"]\n").unwrap();
    let (code, out) = run_to_end(&["check-config", auto.to_str().unwrap()]).await;
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(code, 0, "{out}");
    for line in [
        format!("workers = {cpus}\n"),
        format!("# workers = \"auto\": {cpus} here"),
    ] {
        assert!(out.contains(&line), "{line} not in:\n{out}");
    }

    let missing = dir.path().join("missing.toml");
    let (code, out) =
        run_to_end(&["run", "--config", missing.to_str().unwrap(), "--", "true"]).await;
    assert_clear(code, 1, &out, "cannot read config file");
}

#[tokio::test]
async fn flags_override_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("u.toml");
    std::fs::write(&file, "workers = 3\nrestart-delay = \"5s\"\nmax-restarts = 0\ncommand = [\"sh\", \"-c\", \"exit 0\"]\n").unwrap();
    // The file says 5 s delay and 0 restarts allowed; the flag lowers the delay, the file's
    // limit applies: the first failed start gives up at once.
    let (code, out) = run_to_end(&[
        "run",
        "--config",
        file.to_str().unwrap(),
        "--restart-delay",
        "1ms",
        "--workers",
        "1",
    ])
    .await;
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("starting 1 worker(s): sh -c exit 0"), "{out}");
    assert!(
        out.contains("giving up: worker w1 failed to start (limit 0): pid "),
        "{out}"
    );
}

#[tokio::test]
async fn reload_needs_a_live_pid() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = run_to_end(&[
        "reload",
        "--pidfile",
        dir.path().join("none").to_str().unwrap(),
    ])
    .await;
    assert_clear(code, 1, &out, "cannot read pid file");
    let (code, out) = run_to_end(&["reload", "--pid", "999999999"]).await;
    assert_clear(code, 1, &out, "cannot signal pid 999999999");

    // A stale pid file naming another program: SIGHUP would end it; it is left alone.
    let mut other = another_program().await;
    let stale = dir.path().join("stale.pid");
    std::fs::write(&stale, format!("{}\n", other.id().unwrap())).unwrap();
    let (code, out) = run_to_end(&["reload", "--pidfile", stale.to_str().unwrap()]).await;
    assert_clear(
        code,
        1,
        &out,
        "is not an unwedge supervisor (it runs `sleep 30`)",
    );
    assert!(out.contains("is the pid file stale?"), "{out}");
    assert!(
        other.try_wait().unwrap().is_none(),
        "sleep got SIGHUP: {out}"
    );
}

/// The exec shim refuses to start a worker whose supervisor is already gone (it would never be
/// killed with it), and says what is wrong with a bad parent pid; 127 as for a failed exec.
#[test]
fn the_exec_shim_starts_no_worker_for_a_gone_supervisor() {
    let shim = |parent: &str| {
        let out = std::process::Command::new(BIN)
            .args(["exec-shim", "--", "sh", "-c", "echo started"])
            .env("UNWEDGE_SHIM_PARENT", parent)
            .output()
            .expect("run the shim");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    };
    // The shim's parent is this test process, not pid 1.
    let (code, out) = shim("1");
    assert_clear(code, 127, &out, "exited before the worker started");
    assert!(
        !out.lines().any(|l| l == "started"),
        "the worker ran: {out}"
    );
    let (code, out) = shim("not-a-pid");
    assert_clear(code, 127, &out, "bad UNWEDGE_SHIM_PARENT=not-a-pid");
    // With its real parent it runs the command.
    let (code, out) = shim(&std::process::id().to_string());
    assert_eq!((code, out.as_str()), (0, "started\n"));
}

/// `unwedge status --admin` and `unwedge reload --wait --admin` take the address in the forms
/// `unwedge run --admin` does (a port alone, `localhost:PORT`), not only `IP:PORT`; `off`
/// names nothing to reach: a usage error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_reload_take_the_admin_address_as_run_does() {
    let mut sup = Sup::start(&[
        "run",
        "--admin",
        "127.0.0.1:0",
        "--ready",
        "none",
        "--",
        "sleep",
        "30",
    ]);
    sup.wait_ready(0, 1).await;
    let port = admin_addr(&sup).await.port().to_string();
    let header = format!("pid {}, up ", sup.pid);
    for admin in [port.clone(), format!("localhost:{port}")] {
        let (code, out, err) = run_split(&["status", "--admin", &admin]).await;
        assert!(
            out.starts_with("unwedge ") && out.contains(&header),
            "--admin {admin}: exit {code}\n{out}{err}"
        );
        assert!(err.is_empty(), "--admin {admin}: {err}");
    }
    let pid = sup.pid.to_string();
    let (code, out, err) = run_split(&["reload", "--pid", &pid, "--wait", "--admin", &port]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), "reloaded: generation 2 serves");

    for args in [
        &["status", "--admin", "off"][..],
        &["reload", "--pid", &pid, "--wait", "--admin", "off"],
    ] {
        let (code, out) = run_to_end(args).await;
        assert_clear(code, 2, &out, "`off` names no admin endpoint to reach");
    }
    sup.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(sup.wait_exit(LONG).await.code(), Some(0), "{}", sup.log());
}

/// Each `$ unwedge …` example of a subcommand's `--help` is a line of its own (clap joined the
/// lines of one doc-comment paragraph: `$ unwedge status $ unwedge status --admin …`).
#[tokio::test]
async fn help_examples_are_one_per_line() {
    for sub in [
        "run",
        "check-config",
        "reload",
        "status",
        "demo",
        "chaos",
        "reports",
    ] {
        let (code, out, err) = run_split(&[sub, "--help"]).await;
        assert_eq!(code, 0, "{sub} --help: {err}");
        let examples: Vec<&str> = out.lines().filter(|l| l.contains("$ unwedge")).collect();
        assert!(!examples.is_empty(), "{sub} --help has no example:\n{out}");
        for line in examples {
            assert!(
                line.starts_with(&format!("$ unwedge {sub}")) && line.matches("$ ").count() == 1,
                "{sub} --help: not one example at the start of a line: {line:?}\n{out}"
            );
        }
    }
    let (_, out, _) = run_split(&["status", "--help"]).await;
    for example in [
        "$ unwedge status",
        "$ unwedge status --admin 127.0.0.1:9100 --json",
    ] {
        assert!(
            out.lines().any(|l| l == example),
            "{example:?} not in:\n{out}"
        );
    }
}

/// `unwedge ARGS` with stdout a pipe nobody reads any more (its read end closed before the
/// start, as `unwedge status | true` can have it): (exit code, stderr).
async fn run_with_closed_stdout(args: &[&str]) -> (i32, String) {
    let (read, write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("a pipe for stdout");
    drop(read);
    let child = tokio::process::Command::new(BIN)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(write))
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn unwedge");
    let out = tokio::time::timeout(LONG, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("unwedge {args:?} did not finish"))
        .expect("wait for unwedge");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A closed stdout is one line on stderr and exit status 1 for every subcommand that prints
/// (`status`, `check-config`, `reload --wait`, `reports`), never a panic; help and version
/// have nothing to say about it (exit 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_is_one_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("unwedge.toml");
    std::fs::write(&config, "workers = 2\ncommand = [\"./server\"]\n").unwrap();
    let mut sup = Sup::start(&[
        "run",
        "--admin",
        "127.0.0.1:0",
        "--ready",
        "none",
        "--",
        "sleep",
        "30",
    ]);
    sup.wait_ready(0, 1).await;
    let admin = admin_addr(&sup).await.to_string();
    let pid = sup.pid.to_string();
    let closed = "unwedge: error: cannot write <stdout>: Broken pipe (os error 32)\n";
    let cases: &[&[&str]] = &[
        &["status", "--admin", &admin],
        &["status", "--admin", &admin, "--json"],
        &["check-config", config.to_str().unwrap()],
        &["reload", "--pid", &pid, "--wait", "--admin", &admin],
        &["reports", "--dir", dir.path().to_str().unwrap()],
    ];
    for args in cases {
        let (code, err) = run_with_closed_stdout(args).await;
        assert_eq!((code, err.as_str()), (1, closed), "{args:?}");
    }
    // The reload itself was done: only its report was lost.
    sup.wait_line(0, &["generation 2"]).await;
    for args in [&["run", "--help"][..], &["--version"]] {
        let (code, err) = run_with_closed_stdout(args).await;
        assert_eq!((code, err.as_str()), (0, ""), "{args:?}");
    }
    sup.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(sup.wait_exit(LONG).await.code(), Some(0), "{}", sup.log());
}

/// `unwedge reload` signals pid 1 when it is an unwedge supervisor, as in a container whose
/// ENTRYPOINT is `unwedge run` (`kubectl exec POD -- unwedge reload --pid 1`, or without
/// `--pid`): here the supervisor runs as pid 1 of a new pid namespace (`unshare`), and its
/// first worker runs `unwedge reload --pid 1`, the next one `unwedge reload`. Skipped where
/// unprivileged namespaces are not allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_signals_pid_1_when_it_is_a_supervisor() {
    let mut probe = tokio::process::Command::new("unshare");
    probe.args(["-Urpf", "--kill-child", "--mount-proc", "true"]);
    let can = tokio::time::timeout(LONG, probe.stderr(std::process::Stdio::null()).status())
        .await
        .is_ok_and(|s| s.is_ok_and(|s| s.success()));
    if !can {
        println!("SKIPPED: `unshare -Urpf --mount-proc` is not allowed here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("1"), dir.path().join("2"));
    let (first, second) = (first.display(), second.display());
    let script = format!(
        "if [ ! -e {first} ]; then : > {first}; {BIN} reload --pid 1; echo \"reload --pid 1: exit $?\"; \
         elif [ ! -e {second} ]; then : > {second}; {BIN} reload; echo \"reload: exit $?\"; fi; \
         exec sleep 30"
    );
    let sup = Sup::start_program(
        "unshare",
        &[
            "-Urpf",
            "--kill-child",
            "--mount-proc",
            BIN,
            "run",
            "--admin",
            "off",
            "--ready",
            "none",
            "--",
            "sh",
            "-c",
            &script,
        ],
        &[],
    );
    sup.wait_line(0, &["SIGHUP: reloading: starting generation 2"])
        .await;
    // The second reload, by `unwedge reload` alone.
    sup.wait_line(0, &["generation 3 ready"]).await;
    let log = sup.log();
    assert!(!log.contains("unwedge: error"), "{log}");
}

/// What `unwedge reload` signals is decided by [`is_supervisor`] for pid 1: true for a real
/// `unwedge run`, false for another program (and its workers), a pid that is gone, and pid 1
/// of this machine unless it is `unwedge run`; a pid 1 that is not is refused (exit 1, nothing
/// sent), as are pid 0 and negative pids (exit 2), and `unwedge reload` without a pid is a
/// usage error naming both ways to give it.
///
/// [`is_supervisor`]: unwedge_supervisor::pidfile::is_supervisor
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_signals_pid_1_only_when_it_is_a_supervisor() {
    use unwedge_supervisor::pidfile::is_supervisor;
    let mut sup = Sup::start(&[
        "run", "--admin", "off", "--ready", "none", "--", "sleep", "30",
    ]);
    let worker = sup.wait_ready(0, 1).await[0];
    assert!(is_supervisor(sup.pid), "{}", sup.log());
    let other = another_program().await;
    assert!(!is_supervisor(other.id().unwrap() as i32));
    assert!(!is_supervisor(worker), "its worker, `sleep 30`");
    assert!(!is_supervisor(i32::MAX), "gone");

    let init = unwedge_supervisor::procfs::command_line(1).unwrap_or_default();
    if is_supervisor(1) {
        println!("SKIPPED the refusal of pid 1: it is `{init}`");
    } else {
        for args in [
            &["reload", "--pid", "1"][..],
            &["reload", "--pid", "1", "--wait"],
        ] {
            let (code, out, err) = run_split(args).await;
            assert_clear(
                code,
                1,
                &err,
                "unwedge: error: pid 1 is not an unwedge supervisor (",
            );
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(!err.contains("stale"), "no pid file was given: {err}");
            assert!(out.is_empty(), "{out}");
        }
        let (code, out, err) = run_split(&["reload"]).await;
        assert_clear(
            code,
            2,
            &err,
            "unwedge: error: give --pid PID or --pidfile FILE",
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(out.is_empty(), "{out}");
    }
    for pid in ["0", "-1", "-42"] {
        let (code, out) = run_to_end(&["reload", "--pid", pid]).await;
        assert_clear(
            code,
            2,
            &out,
            &format!("unwedge: error: refusing to signal pid {pid}: not a process"),
        );
    }
    // --timeout and --admin are for --wait.
    let pid = sup.pid.to_string();
    for flag in [["--timeout", "5s"], ["--admin", "9100"]] {
        let (code, out) = run_to_end(&["reload", "--pid", &pid, flag[0], flag[1]]).await;
        assert_clear(code, 2, &out, "--wait");
    }
    assert!(
        !sup.log().contains("SIGHUP"),
        "nothing was sent:\n{}",
        sup.log()
    );
    sup.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(sup.wait_exit(LONG).await.code(), Some(0), "{}", sup.log());
}
