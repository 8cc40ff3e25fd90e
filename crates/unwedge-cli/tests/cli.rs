//! Bad input and the small subcommands: one clear line, exit 2 (usage) or 1, never a panic.

mod common;

use std::time::Duration;

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
            "is too long: at most 365 days",
        ),
        (
            &["run", "--restart-delay-max", "1000000000d", "--", "true"],
            "is too long: at most 365 days",
        ),
        (
            &["run", "--restart-delay", "1y", "--", "true"],
            "invalid value '1y' for '--restart-delay <DURATION>': `1y` is too long: at most 365 \
             days",
        ),
        (
            &["run", "--watchdog", "500ns", "--", "true"],
            "--watchdog 500ns is under 1ms, the shortest watchdog (0 turns it off)",
        ),
        (
            &["run", "--watchdog", "999us", "--", "true"],
            "--watchdog 999us is under 1ms",
        ),
        (
            &[
                "run",
                "--probe",
                "/",
                "--probe-interval",
                "1ns",
                "--",
                "true",
            ],
            "--probe-interval 1ns is under 10ms, the shortest probe interval",
        ),
        (
            &["run", "--probe", "/", "--probe-interval", "0", "--", "true"],
            "--probe-interval 0s is under 10ms",
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

/// A watchdog under 1 µs reached workers as `WATCHDOG_USEC=0`, which they refuse (a crash
/// loop), and `check-config` passed it: under 1 ms is refused in the file as on the command
/// line, naming where.
#[tokio::test]
async fn a_watchdog_under_1ms_in_the_config_file_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("u.toml");
    let f = file.to_str().unwrap();
    std::fs::write(&file, "command = [\"true\"]\nwatchdog = \"500ns\"\n").unwrap();
    let (code, out) = run_to_end(&["check-config", f]).await;
    assert_clear(
        code,
        2,
        &out,
        "line 2, column 12, key watchdog: 500ns is under 1ms, the shortest watchdog (0 turns it \
         off)",
    );
    assert_eq!(out.trim().lines().count(), 1, "one line:\n{out}");
    let (code, out) = run_to_end(&["run", "--config", f]).await;
    assert_clear(code, 2, &out, "key watchdog: 500ns is under 1ms");
    std::fs::write(&file, "command = [\"true\"]\nwatchdog = \"1ms\"\n").unwrap();
    let (code, out) = run_to_end(&["check-config", f]).await;
    assert_eq!(code, 0, "{out}");
}

/// `--config FIFO` and `check-config FIFO` waited for a writer for ever, without a word: a
/// file that is not a regular one is refused at once.
#[tokio::test]
async fn a_config_file_that_is_a_fifo_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("u.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let f = fifo.to_str().unwrap();
    let needle = format!("unwedge: error: config file {f} is a FIFO, not a regular file");
    for args in [
        &["check-config", f][..],
        &["run", "--config", f, "--", "true"][..],
    ] {
        let (code, out) = tokio::time::timeout(Duration::from_secs(10), run_to_end(args))
            .await
            .unwrap_or_else(|_| panic!("{args:?} still waits for the FIFO"));
        assert_clear(code, 2, &out, &needle);
        assert_eq!(out.trim().lines().count(), 1, "one line:\n{out}");
    }
}

/// A config file was read whole, however big: a 1 GiB file took `check-config` and `run` over
/// 30 s and nearly 2 GB of memory before a word. More than 1 MiB is refused, before it is read
/// (a usage error, one line); 1 MiB itself is read.
#[tokio::test]
async fn a_config_file_over_1_mib_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.toml");
    let f = big.to_str().unwrap();
    // Valid TOML all along: a command, then comments up to the size.
    let with_size = |len: usize| {
        let mut text = String::from("command = [\"true\"]\n");
        while text.len() < len {
            let line = "#".repeat((len - text.len()).min(80) - 1) + "\n";
            text.push_str(&line);
        }
        std::fs::write(&big, text).unwrap();
    };
    let needle =
        format!("unwedge: error: config file {f} is larger than 1 MiB (1048576 bytes), the most");
    with_size(2 << 20);
    for args in [
        &["check-config", f][..],
        &["run", "--config", f, "--", "true"][..],
    ] {
        let (code, out) = run_to_end(args).await;
        assert_clear(code, 2, &out, &needle);
        assert_eq!(out.trim().lines().count(), 1, "one line:\n{out}");
    }
    with_size((1 << 20) + 1);
    let (code, out) = run_to_end(&["check-config", f]).await;
    assert_clear(code, 2, &out, &needle);
    with_size(1 << 20);
    let (code, out) = run_to_end(&["check-config", f]).await;
    assert_eq!(code, 0, "{out}");
    // 1 GiB (sparse: no disk taken) is refused by its size, at once.
    std::fs::File::create(&big)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let (code, out) =
        tokio::time::timeout(Duration::from_secs(10), run_to_end(&["check-config", f]))
            .await
            .expect("check-config still reads 1 GiB");
    assert_clear(code, 2, &out, &needle);
}

/// `--port-env` naming a variable the supervisor sets for every worker (or `PATH`, which
/// finds its command) silently replaced it, or was replaced by it: refused, from the flag and
/// from the file.
#[tokio::test]
async fn a_port_env_naming_a_variable_the_supervisor_sets_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("u.toml");
    let f = file.to_str().unwrap();
    for name in [
        "NOTIFY_SOCKET",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "PATH",
        "WATCHDOG_USEC",
        "UNWEDGE_WORKER",
        "UNWEDGE_GENERATION",
        "UNWEDGE_SHIM_FDS",
    ] {
        let why = "is a variable the supervisor sets (or needs) for every worker; name another";
        let (code, out) =
            run_to_end(&["run", "--admin", "off", "--port-env", name, "--", "true"]).await;
        assert_clear(
            code,
            2,
            &out,
            &format!("unwedge: error: --port-env {name} {why}"),
        );
        assert_eq!(out.trim().lines().count(), 1, "one line:\n{out}");
        std::fs::write(
            &file,
            format!("port-env = \"{name}\"\ncommand = [\"true\"]\n"),
        )
        .unwrap();
        for args in [&["check-config", f][..], &["run", "--config", f][..]] {
            let (code, out) = run_to_end(args).await;
            assert_clear(code, 2, &out, &format!("key port-env: {name} {why}"));
        }
    }
    std::fs::write(&file, "port-env = \"PORT\"\ncommand = [\"true\"]\n").unwrap();
    let (code, out) = run_to_end(&["check-config", f]).await;
    assert_eq!(code, 0, "{out}");
}

/// The same `--listen` address twice: the second bind found it taken by the supervisor
/// itself, exit 1 naming it as the holder. A usage error now; port 0 twice is two ports.
#[tokio::test]
async fn the_same_listen_address_twice_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_loopback_addr().to_string();
    let sock = format!("unix:{}", dir.path().join("s.sock").display());
    for a in [addr.as_str(), sock.as_str()] {
        let (code, out) = run_to_end(&[
            "run", "--admin", "off", "--listen", a, "--listen", a, "--", "true",
        ])
        .await;
        assert_clear(
            code,
            2,
            &out,
            &format!("unwedge: error: --listen {a} is given twice"),
        );
        assert_eq!(out.trim().lines().count(), 1, "one line:\n{out}");
    }
    let file = dir.path().join("u.toml");
    std::fs::write(
        &file,
        format!("listen = [\"{addr}\", \"{addr}\"]\ncommand = [\"true\"]\n"),
    )
    .unwrap();
    let (code, out) = run_to_end(&["check-config", file.to_str().unwrap()]).await;
    assert_clear(code, 2, &out, &format!("key listen: {addr} is given twice"));
    std::fs::write(
        &file,
        "listen = [\"127.0.0.1:0\", \"127.0.0.1:0\"]\ncommand = [\"true\"]\n",
    )
    .unwrap();
    let (code, out) = run_to_end(&["check-config", file.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}");
}

/// `pidfile = ""` in the file passed check-config, then `run` failed (exit 1): refused as
/// `--pidfile ''` is, exit 2.
#[tokio::test]
async fn an_empty_pidfile_in_the_config_file_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("u.toml");
    let f = file.to_str().unwrap();
    std::fs::write(&file, "pidfile = \"\"\ncommand = [\"true\"]\n").unwrap();
    for args in [
        &["check-config", f][..],
        &["run", "--admin", "off", "--config", f][..],
    ] {
        let (code, out) = run_to_end(args).await;
        assert_clear(
            code,
            2,
            &out,
            &format!("unwedge: error: invalid config file {f}, line 1, column 11, key pidfile: an empty path"),
        );
        assert_eq!(out.trim().lines().count(), 1, "one line:\n{out}");
    }
}

/// A config file that is not UTF-8 was "cannot read config file" (exit 1), though an invalid
/// config file is exit 2: it is one, said where, as any other.
#[tokio::test]
async fn a_config_file_that_is_not_utf8_is_invalid() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("u.toml");
    let f = file.to_str().unwrap();
    std::fs::write(&file, b"workers = 2\ncommand = [\"caf\xe9\"]\n").unwrap();
    let needle = format!(
        "unwedge: error: invalid config file {f}, line 2, column 16, key command: not UTF-8"
    );
    for args in [
        &["check-config", f][..],
        &["run", "--admin", "off", "--config", f][..],
    ] {
        let (code, out) = run_to_end(args).await;
        assert_clear(code, 2, &out, &needle);
        assert_eq!(out.trim().lines().count(), 1, "one line:\n{out}");
    }
    // In a comment: no key named (the nearest one above, `workers`, has nothing to do with it).
    std::fs::write(&file, b"workers = 2\n# caf\xe9\ncommand = [\"sleep\"]\n").unwrap();
    let (code, out) = run_to_end(&["check-config", f]).await;
    assert_clear(
        code,
        2,
        &out,
        &format!("unwedge: error: invalid config file {f}, line 2, column 6: not UTF-8"),
    );
}

/// `--stop-timeout 0` SIGKILLed every worker at once on every stop (exit 1, a `stop_timed_out`
/// alert each time), though `--watchdog 0` and `--max-lifetime 0` mean off: a usage error,
/// saying what to give, from a flag and from the file.
#[tokio::test]
async fn a_stop_timeout_of_0_is_a_usage_error() {
    let needle =
        "--stop-timeout 0 would SIGKILL every worker as soon as it is asked to stop: give \
                  the time workers have to finish their requests, as `--stop-timeout 30s` \
                  (`stop-timeout = \"30s\"` in the config file)";
    let in_file = "key stop-timeout: 0 would SIGKILL every worker as soon as it is asked to stop: \
                   give the time workers have to finish their requests, as `stop-timeout = \"30s\"`";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("u.toml");
    let f = file.to_str().unwrap();
    for zero in ["0", "0s", "0ms"] {
        let (code, out) = run_to_end(&["run", "--stop-timeout", zero, "--", "sleep", "100"]).await;
        assert_clear(code, 2, &out, needle);
        assert_eq!(out.trim().lines().count(), 1, "one line:\n{out}");
        std::fs::write(
            &file,
            format!("stop-timeout = \"{zero}\"\ncommand = [\"sleep\"]\n"),
        )
        .unwrap();
        let (code, out) = run_to_end(&["check-config", f]).await;
        assert_clear(code, 2, &out, in_file);
    }
    std::fs::write(&file, "stop-timeout = 0\ncommand = [\"sleep\"]\n").unwrap();
    let (code, out) = run_to_end(&["check-config", f]).await;
    assert_clear(code, 2, &out, in_file);
}

/// `--probe-failures 0` was accepted and acted as 1: a usage error, from a flag and the file.
#[tokio::test]
async fn probe_failures_of_0_is_a_usage_error() {
    let needle = "--probe-failures 0: give the number of failed probes in a row that make a \
                  worker hung, at least 1 (`probe-failures = 3` in the config file)";
    let flags = [
        "run",
        "--listen",
        "127.0.0.1:0",
        "--probe",
        "/",
        "--probe-failures",
        "0",
        "--",
        "sleep",
        "100",
    ];
    let (code, out) = run_to_end(&flags).await;
    assert_clear(code, 2, &out, needle);
    assert_eq!(out.trim().lines().count(), 1, "one line:\n{out}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("u.toml");
    std::fs::write(&file, "probe-failures = 0\ncommand = [\"sleep\"]\n").unwrap();
    let (code, out) = run_to_end(&["check-config", file.to_str().unwrap()]).await;
    let in_file = "line 1, column 18, key probe-failures: 0: give the number of failed probes in \
                   a row that make a worker hung, at least 1, as `probe-failures = 3`";
    assert_clear(code, 2, &out, in_file);
}

/// `--probe '/ü bad'` was accepted, every probe got 400 and healthy workers were killed every
/// ~3 s: a path that cannot go into a request line is a usage error that gives the
/// percent-encoded path, from a flag and from the file.
#[tokio::test]
async fn a_probe_path_that_cannot_go_in_a_request_line_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("u.toml");
    let f = file.to_str().unwrap();
    for (path, needle) in [
        (
            "/ü bad",
            "--probe `/ü bad` cannot go into an HTTP request line (spaces, control and non-ASCII \
             characters must be percent-encoded): give `/%C3%BC%20bad`",
        ),
        ("/a\tb", "give `/a%09b`"),
        ("/100%", "give `/100%25`"),
        ("/x<y>", "give `/x%3Cy%3E`"),
        (
            "/livez#top",
            "a `#top` is never sent to a server; leave it out",
        ),
    ] {
        let args = [
            "run",
            "--listen",
            "127.0.0.1:0",
            "--probe",
            path,
            "--",
            "sleep",
            "100",
        ];
        let (code, out) = run_to_end(&args).await;
        assert_clear(code, 2, &out, needle);
        assert_eq!(out.trim().lines().count(), 1, "one line:\n{out}");
        let toml = format!("probe = {path:?}\ncommand = [\"sleep\"]\n");
        std::fs::write(&file, toml).unwrap();
        let (code, out) = run_to_end(&["check-config", f]).await;
        assert_clear(code, 2, &out, "key probe: ");
        let in_file = needle.strip_prefix("--probe ").unwrap_or(needle);
        assert_clear(code, 2, &out, in_file);
        assert!(!out.contains("--probe"), "in flag syntax: {out}");
    }
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:0\"\nprobe = \"/caf%C3%A9?full=1&x={}\"\ncommand = [\"sleep\"]\n",
    )
    .unwrap();
    let (code, out) = run_to_end(&["check-config", f]).await;
    assert_eq!(code, 0, "{out}");
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

/// `check-config` refuses what `run --config` refuses for want of sockets, with the same line
/// and exit 2: `ready = "accept"` with nothing to watch, a probe with nowhere to go. It
/// passed them (exit 0) and the start failed. With a `listen` address, or sockets that
/// systemd passes (`LISTEN_FDS` set, as in the unit), they are fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_refuses_what_needs_sockets_when_none_can_come() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("unwedge.toml");
    let f = file.to_str().unwrap();
    let cases = [
        (
            "ready = \"accept\"",
            "--ready accept needs sockets to watch (--listen, or sockets passed by systemd)",
        ),
        (
            "probe = \"/healthz\"",
            "--probe needs --listen (a TCP or unix socket) or --port-env",
        ),
        (
            "ready = \"probe\"",
            "--ready probe needs --listen or --port-env",
        ),
    ];
    for (setting, needle) in cases {
        std::fs::write(
            &file,
            format!("admin = \"off\"\n{setting}\ncommand = [\"/bin/cat\"]\n"),
        )
        .unwrap();
        let (code, out, err) = run_split(&["check-config", f]).await;
        assert_clear(code, 2, &err, &format!("unwedge.toml: {needle}"));
        assert_eq!(err.trim().lines().count(), 1, "one line:\n{err}");
        assert!(out.is_empty(), "{out}");
        // `run --config` says the same.
        let (code, _, run_err) = run_split(&["run", "-c", f]).await;
        assert_clear(code, 2, &run_err, needle);

        let (code, out, err) = run_split_env(&["check-config", f], &[("LISTEN_FDS", "1")]).await;
        assert_eq!(code, 0, "{setting} with LISTEN_FDS: {err}{out}");
        std::fs::write(
            &file,
            format!(
                "admin = \"off\"\nlisten = \"127.0.0.1:0\"\n{setting}\ncommand = [\"/bin/cat\"]\n"
            ),
        )
        .unwrap();
        let (code, out, err) = run_split(&["check-config", f]).await;
        assert_eq!(code, 0, "{setting} with listen: {err}{out}");
    }
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

/// A `TMPDIR` too long for a unix socket path under it failed the start with `cannot create
/// the notify socket: path must be shorter than SUN_LEN`, naming neither the path nor what to
/// do: the line names both.
#[tokio::test]
async fn a_tmpdir_too_long_for_the_notify_socket_says_which_path_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let long = dir.path().join("d".repeat(60)).join("e".repeat(60));
    std::fs::create_dir_all(&long).unwrap();
    let tmp = long.to_str().unwrap();
    let (code, out, err) = run_split_env(
        &["run", "--admin", "off", "--report-dir", "off", "--", "true"],
        // Empty, so that neither is taken before TMPDIR.
        &[
            ("TMPDIR", tmp),
            ("RUNTIME_DIRECTORY", ""),
            ("XDG_RUNTIME_DIR", ""),
        ],
    )
    .await;
    assert_clear(code, 1, &err, "");
    assert!(out.is_empty(), "{out}");
    assert_eq!(err.lines().count(), 1, "one line:\n{err}");
    let line = err.trim_end();
    let start = format!("unwedge: error: cannot create the notify socket: its path {tmp}/unwedge-");
    assert!(line.starts_with(&start), "{line}");
    let (path, rest) = line[start.len() - tmp.len() - "/unwedge-".len()..]
        .split_once(' ')
        .unwrap();
    assert!(path.ends_with("/notify.sock"), "{line}");
    assert_eq!(
        rest,
        format!(
            "({} bytes, in $TMPDIR) is longer than a unix socket path may be (107 bytes): set \
             TMPDIR (or RUNTIME_DIRECTORY) to a shorter directory",
            path.len()
        ),
        "{line}"
    );
    // Nothing left behind in it.
    assert_eq!(std::fs::read_dir(&long).unwrap().count(), 0, "{line}");
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

/// A socket held by several processes (a server that forked) names them all, in one line
/// that agrees with them: it said `pids 25367 (…), 25369 (…) listens on it`.
#[tokio::test]
async fn a_socket_several_processes_hold_names_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.sock");
    let listen = format!("unix:{}", path.display());
    // Binds and listens, forks, and both hold the socket until their stdin closes.
    let script = "import os, socket, sys\n\
                  s = socket.socket(socket.AF_UNIX)\n\
                  s.bind(sys.argv[1])\n\
                  s.listen()\n\
                  os.fork()\n\
                  os.write(1, b'holding %d\\n' % os.getpid())\n\
                  sys.stdin.read()\n";
    let mut holders = tokio::process::Command::new("python3")
        .args(["-c", script, path.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
        holders.stdout.take().unwrap(),
    ));
    let mut pids = Vec::new();
    while pids.len() < 2 {
        let line = tokio::time::timeout(LONG, lines.next_line())
            .await
            .expect("the holders started")
            .unwrap()
            .expect("a line");
        // One write(2) each, so one line each; the words that are numbers, whatever else.
        pids.extend(
            line.split_whitespace()
                .filter(|w| w.parse::<u32>().is_ok())
                .map(str::to_owned),
        );
    }
    let (code, out) = run_to_end(&["run", "--listen", &listen, "--", "true"]).await;
    assert_clear(code, 1, &out, "a server accepts connections on it; pids ");
    assert!(out.contains("`) listen on it"), "{out}");
    for pid in &pids {
        assert!(out.contains(&format!(" {pid} (`")), "{pid}: {out}");
    }
    assert_eq!(out.trim().lines().count(), 1, "{out}");
    // Their stdin closes: both end.
    drop(holders.stdin.take());
    let _ = tokio::time::timeout(LONG, holders.wait()).await;
}

#[tokio::test]
async fn config_files_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "listen = [\"127.0.0.1:8080\"]\nworkers = 3\nwatchdog = \"2s\"\ncommand = [\"/bin/sh\", \"--flag\"]\n",
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
    assert_clear(code, 2, &out, "is too long: at most 365 days");

    let zero = dir.path().join("zero.toml");
    std::fs::write(&zero, "workers = 0\ncommand = [\"true\"]\n").unwrap();
    let (code, out) = run_to_end(&["check-config", zero.to_str().unwrap()]).await;
    assert_clear(code, 2, &out, "key workers: must be at least 1");

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

/// `check-config` refuses what `run` (and a reload) refuses before binding or starting
/// anything: a command that cannot run, a report directory that cannot be written; with
/// `run`'s line and exit status 1. It binds nothing (a running supervisor holds the addresses)
/// and leaves nothing behind.
#[tokio::test]
async fn check_config_refuses_what_a_start_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("u.toml");
    let f = file.to_str().unwrap();
    let a_file = dir.path().join("a-file");
    std::fs::write(&a_file, "").unwrap();
    let cases = [
        (
            "command = [\"/nonexistent/server\"]\n".to_owned(),
            "cannot run worker command `/nonexistent/server`: No such file",
        ),
        (
            format!(
                "report-dir = {:?}\ncommand = [\"/bin/true\"]\n",
                a_file.join("reports")
            ),
            "cannot write crash reports to ",
        ),
    ];
    for (text, needle) in cases {
        std::fs::write(&file, text).unwrap();
        let (code, out) = run_to_end(&["check-config", f]).await;
        assert_clear(code, 1, &out, needle);
        assert_eq!(out.trim().lines().count(), 1, "one line:\n{out}");
        let (code, run_out) = run_to_end(&["run", "--admin", "off", "-c", f]).await;
        assert_clear(code, 1, &run_out, needle);
        let refused = run_out.lines().find(|l| l.contains(needle)).unwrap();
        let refused = refused.trim_start_matches("unwedge: error: ");
        assert_eq!(
            out.trim(),
            format!("unwedge: error: {f}: {refused}"),
            "run's error, after the file"
        );
    }

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let reports = dir.path().join("state/reports");
    let text = format!(
        "listen = [\"{}\"]\nadmin = \"{}\"\nreport-dir = {:?}\ncommand = [\"/bin/true\"]\n",
        taken.local_addr().unwrap(),
        admin.local_addr().unwrap(),
        reports
    );
    std::fs::write(&file, text).unwrap();
    let (code, out) = run_to_end(&["check-config", f]).await;
    assert_eq!(code, 0, "addresses in use are not bound:\n{out}");
    assert!(!dir.path().join("state").exists(), "nothing left behind");
    std::fs::create_dir_all(&reports).unwrap();
    std::fs::write(reports.join("reports.jsonl"), "{}\n").unwrap();
    let (code, out) = run_to_end(&["check-config", f]).await;
    assert_eq!(code, 0, "{out}");
    let left: Vec<_> = std::fs::read_dir(&reports)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["reports.jsonl"], "nothing left behind");
}

/// Addresses that overlap (the same port on all interfaces and on one, or the admin endpoint on
/// a listening socket's port) are a usage error for `check-config` and `run` alike, before
/// anything is bound: `check-config` approved them, and `run` then failed its second bind
/// with exit 1, naming its own pid as the process holding the port.
#[tokio::test]
async fn overlapping_addresses_are_a_usage_error_for_check_config_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("u.toml");
    let f = file.to_str().unwrap();
    let port = free_loopback_addr().port();
    let cases = [
        (
            format!("listen = [\":{port}\", \"127.0.0.1:{port}\"]\nadmin = \"off\"\n"),
            format!("key listen: 0.0.0.0:{port} and 127.0.0.1:{port} overlap"),
        ),
        (
            format!("listen = [\"[::]:{port}\", \"127.0.0.1:{port}\"]\nadmin = \"off\"\n"),
            format!("key listen: [::]:{port} and 127.0.0.1:{port} overlap"),
        ),
        (
            format!("listen = [\"127.0.0.1:{port}\"]\nadmin = \"127.0.0.1:{port}\"\n"),
            format!("--admin 127.0.0.1:{port} overlaps --listen 127.0.0.1:{port}"),
        ),
        (
            format!("listen = [\":{port}\"]\nadmin = \"{port}\"\n"),
            format!("--admin 127.0.0.1:{port} overlaps --listen 0.0.0.0:{port}"),
        ),
    ];
    for (text, needle) in cases {
        std::fs::write(&file, format!("{text}command = [\"sleep\", \"100\"]\n")).unwrap();
        let (code, out) = run_to_end(&["check-config", f]).await;
        assert_clear(code, 2, &out, &needle);
        let (code, out) = run_to_end(&["run", "-c", f]).await;
        assert_clear(code, 2, &out, &needle);
        assert!(!out.contains("listens on it"), "{out}");
    }
    // As flags.
    let (l1, l2) = (format!(":{port}"), format!("127.0.0.1:{port}"));
    let (code, out) = run_to_end(&[
        "run", "--admin", "off", "--listen", &l1, "--listen", &l2, "--", "sleep", "100",
    ])
    .await;
    assert_clear(
        code,
        2,
        &out,
        &format!("--listen 0.0.0.0:{port} and --listen 127.0.0.1:{port} overlap"),
    );
    // Different hosts on one port, and port 0 twice, are fine.
    std::fs::write(
        &file,
        format!(
            "listen = [\"127.0.0.1:{port}\", \"127.0.0.2:{port}\", \"127.0.0.1:0\", \
             \"127.0.0.1:0\"]\nadmin = \"off\"\ncommand = [\"sleep\", \"100\"]\n"
        ),
    )
    .unwrap();
    let (code, out) = run_to_end(&["check-config", f]).await;
    assert_eq!(code, 0, "{out}");
}

/// A config file's error is one line naming the file, the line, the column and the key, for
/// `check-config`, `run --config` and a refused reload alike; `listen` takes one address too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_errors_name_the_line_column_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.toml");
    let f = file.to_str().unwrap();
    let bad = "workers = 2\nwatchdog = \"2s\"\nstop-timeout = 30\ncommand = [\"sleep\", \"100\"]\n";
    std::fs::write(&file, bad).unwrap();
    let want = format!(
        "invalid config file {f}, line 3, column 16, key stop-timeout: a duration needs a unit, \
         as in \"10ms\" or \"2s\""
    );
    for args in [vec!["check-config", f], vec!["run", "-c", f]] {
        let (code, out) = run_to_end(&args).await;
        assert_clear(code, 2, &out, &want);
        assert_eq!(out.trim(), format!("unwedge: error: {want}"), "{args:?}");
    }
    std::fs::write(&file, "workers = 2\ncommand = [\"sleep\",\n").unwrap();
    let (code, out) = run_to_end(&["check-config", f]).await;
    let truncated = format!(
        "unwedge: error: invalid config file {f}, line 3, column 1, key command: invalid array, \
         expected `]`"
    );
    assert_eq!((code, out.trim()), (2, truncated.as_str()));

    // One address without the brackets.
    std::fs::write(
        &file,
        "admin = \"off\"\nready = \"none\"\nlisten = \"127.0.0.1:0\"\ncommand = [\"sleep\", \"100\"]\n",
    )
    .unwrap();
    let (code, out) = run_to_end(&["check-config", f]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("listen = [\"127.0.0.1:0\"]\n"), "{out}");

    // A reload refused for it logs the same line.
    let mut sup = Sup::start(&["run", "-c", f]);
    let pid = sup.wait_ready(0, 1).await[0];
    std::fs::write(&file, bad).unwrap();
    let m = sup.mark();
    sup.signal(nix::sys::signal::Signal::SIGHUP);
    let line = sup.wait_line(m, &["reload refused:"]).await;
    assert!(line.contains(&want), "{line}");
    assert!(running(pid), "the worker was stopped:\n{}", sup.log());
    sup.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(sup.wait_exit(LONG).await.code(), Some(0), "{}", sup.log());
}

/// The checks of a value made once the file is read (a number of workers above the most, a
/// stop timeout of 0, a lifetime too short, a probe path that cannot be sent) name the file,
/// the line, column and key of that value, in the file's words: they said `v.toml: --workers
/// 2000 is more than 1024…`, in flag syntax with no position (and `run -c` without the file's
/// name). The same value given as a flag is still said as the flag.
#[tokio::test]
async fn config_file_value_checks_name_the_line_column_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("v.toml");
    let f = file.to_str().unwrap();
    let cases = [
        (
            "workers = 2000",
            "line 2, column 11, key workers: 2000 is more than 1024, the most one supervisor runs",
        ),
        (
            "workers = 0",
            "line 2, column 11, key workers: must be at least 1",
        ),
        (
            "stop-timeout = \"0s\"",
            "line 2, column 16, key stop-timeout: 0 would SIGKILL every worker as soon as it is \
             asked to stop: give the time workers have to finish their requests, as \
             `stop-timeout = \"30s\"`",
        ),
        (
            "max-lifetime = \"500ms\"",
            "line 2, column 16, key max-lifetime: 500ms: too short (at least 1s): workers would \
             be replaced as fast as they start",
        ),
        (
            "  probe = \"/a b\"",
            "line 2, column 11, key probe: `/a b` cannot go into an HTTP request line",
        ),
    ];
    for (setting, want) in cases {
        std::fs::write(
            &file,
            format!("command = [\"/bin/cat\"]\n{setting}\nlisten = \"127.0.0.1:0\"\n"),
        )
        .unwrap();
        let want = format!("unwedge: error: invalid config file {f}, {want}");
        for args in [vec!["check-config", f], vec!["run", "-c", f]] {
            let (code, out) = run_to_end(&args).await;
            assert_clear(code, 2, &out, &want);
            assert_eq!(out.trim().lines().count(), 1, "{args:?}: one line: {out}");
            assert!(!out.contains(" --"), "{args:?}: flag syntax: {out}");
        }
    }
    // Given as a flag, over the file: said as the flag.
    std::fs::write(&file, "command = [\"/bin/cat\"]\nworkers = 2\n").unwrap();
    let (code, out) = run_to_end(&["run", "-c", f, "--workers", "2000"]).await;
    assert_clear(
        code,
        2,
        &out,
        "unwedge: error: --workers 2000 is more than 1024, the most one supervisor runs",
    );
}

/// `check-config` prints every setting of `unwedge run` with its effective value, normalised
/// (`admin`, `report-dir`, `report-max-bytes`, `max-memory`, `max-lifetime`, `pidfile`, `user`
/// were missing; `report-max-bytes = "10Mi"` was echoed as written), the unset ones as a
/// comment saying what that means; read back, it prints the same.
#[tokio::test]
async fn check_config_prints_every_setting_and_reads_back_the_same() {
    let (_, help) = run_to_end(&["run", "--help"]).await;
    let keys: Vec<&str> = help
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("-w, ").or(Some(l.trim_start())))
        .filter_map(|l| l.strip_prefix("--"))
        .filter_map(|l| l.split([' ', '=']).next())
        .filter(|k| !["config", "help"].contains(k))
        .chain(["command"])
        .collect();
    assert!(keys.len() > 30, "{keys:?} from:\n{help}");

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (file, again) = (dir.path().join("u.toml"), dir.path().join("again.toml"));
    let minimal = "report-max-bytes = \"10Mi\"\ncommand = [\"/bin/true\"]\n".to_owned();
    let full = format!(
        "listen = \":8080\"\nworkers = 2\nwatchdog = \"2s\"\nprobe = \"/livez\"\n\
         max-memory = \"1024Mi\"\nmax-lifetime = \"1h\"\nuser = \"{uid}\"\ngroup = \"{gid}\"\n\
         pidfile = {:?}\nadmin = \"9100\"\nreport-dir = {:?}\nreport-max-bytes = \"1024K\"\n\
         alert-exec = \"logger\"\ncommand = [\"/bin/true\"]\n",
        dir.path().join("u.pid"),
        dir.path().join("reports"),
        // This process's own user: no switch, allowed whoever runs the test.
        uid = nix::unistd::getuid(),
        gid = nix::unistd::getgid(),
    );
    let expect_minimal = [
        "# admin: 127.0.0.1:9090, the default (if that port is taken: a warning and no admin \
         endpoint)\n",
        &format!("report-dir = {:?}\n", state.join("reports")),
        "report-max-bytes = \"10M\"\n",
        "# max-memory: none\n",
        "max-lifetime = \"0\"  # off\n",
        "watchdog = \"0\"  # off\n",
        "# pidfile: none\n",
        "# user: the supervisor's\n",
        "# alert-webhook: none\n",
    ]
    .map(str::to_owned);
    let expect_full = [
        "admin = \"127.0.0.1:9100\"\n".to_owned(),
        format!("report-dir = {:?}\n", dir.path().join("reports")),
        "report-max-bytes = \"1M\"\n".to_owned(),
        "max-memory = \"1G\"\n".to_owned(),
        "max-lifetime = \"1h\"\n".to_owned(),
        format!("pidfile = {:?}\n", dir.path().join("u.pid")),
        format!("user = \"{}\"\n", nix::unistd::getuid()),
        "listen = [\"0.0.0.0:8080\"]\n".to_owned(),
    ];
    let env = [("STATE_DIRECTORY", state.to_str().unwrap())];
    for (text, expect) in [
        (minimal, expect_minimal.to_vec()),
        (full, expect_full.to_vec()),
    ] {
        std::fs::write(&file, &text).unwrap();
        let (code, out) = run_to_end_env(&["check-config", file.to_str().unwrap()], &env).await;
        assert_eq!(code, 0, "{text}\n{out}");
        for line in &expect {
            assert!(out.contains(line.as_str()), "{line:?} not in:\n{out}");
        }
        for key in &keys {
            assert!(
                out.lines()
                    .any(|l| l.starts_with(&format!("{key} = "))
                        || l.starts_with(&format!("# {key}: "))),
                "{key} not in:\n{out}"
            );
        }
        // What it prints on stdout is a config file (its notes, e.g. that `:8080` is in use
        // now, go to stderr), read back the same.
        let (code, printed, notes) =
            run_split_env(&["check-config", file.to_str().unwrap()], &env).await;
        assert_eq!(code, 0, "{notes}");
        std::fs::write(&again, &printed).unwrap();
        let (code, back, notes) =
            run_split_env(&["check-config", again.to_str().unwrap()], &env).await;
        assert_eq!(
            (code, back.as_str()),
            (0, printed.as_str()),
            "read back: {notes}"
        );
    }
    assert!(!state.exists(), "nothing left behind");
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

/// `EnvFilter` takes any word as a target: `UNWEDGE_LOG=bogus` (or empty) silenced every line
/// of the supervisor, `giving up` included. An empty value is the default; a filter that says
/// nothing of the supervisor keeps its warnings and errors, and says so.
#[tokio::test]
async fn a_log_filter_that_names_nothing_of_the_supervisor_keeps_its_errors() {
    let args = [
        "run",
        "--admin",
        "off",
        "--max-restarts",
        "1",
        "--",
        "sh",
        "-c",
        "exit 1",
    ];
    for (value, info) in [
        ("bogus", false),
        ("hyper=debug", false),
        ("", true),
        ("  ", true),
    ] {
        let (code, out) = run_to_end_env(&args, &[("UNWEDGE_LOG", value)]).await;
        assert_eq!(code, 3, "UNWEDGE_LOG={value:?}:\n{out}");
        assert!(
            out.contains("ERROR giving up: worker w1 failed to start 2 times in a row"),
            "UNWEDGE_LOG={value:?}:\n{out}"
        );
        assert!(
            out.contains("failed start"),
            "UNWEDGE_LOG={value:?}:\n{out}"
        );
        assert_eq!(
            out.contains("INFO starting 1 worker(s)"),
            info,
            "{value:?}:\n{out}"
        );
        let said = format!(
            "UNWEDGE_LOG={value:?} enables nothing of the supervisor's own log (targets \
             `unwedge…`): its warnings and errors are kept"
        );
        assert_eq!(out.contains(&said), !info, "{value:?}:\n{out}");
    }
    // A filter that names the supervisor is followed as written.
    let (code, out) = run_to_end_env(&args, &[("UNWEDGE_LOG", "unwedge=off")]).await;
    assert_eq!((code, out.as_str()), (3, ""));
}

/// `--ready auto`'s help said a silent worker still running after `--ready-timeout` is taken
/// as ready; with `--port-env` it is a failed start.
#[tokio::test]
async fn run_help_says_what_ready_auto_does_with_a_silent_worker() {
    let (code, out) = run_to_end(&["run", "--help"]).await;
    assert_eq!(code, 0, "{out}");
    let text = out.split_whitespace().collect::<Vec<_>>().join(" ");
    let auto = text
        .split("- auto:")
        .nth(1)
        .and_then(|t| t.split("- notify:").next())
        .unwrap_or_else(|| panic!("no `auto` value in:\n{out}"));
    assert!(
        auto.contains(
            "A worker that said neither within `--ready-timeout`: with `--port-env`, a failed \
             start; with shared sockets, if still running, taken as ready (with a warning) only \
             while no worker has ever said `READY=1` (a failed start once one has), and a \
             reload's worker only if the passed socket is in an epoll set of its processes"
        ),
        "{auto}"
    );
}

/// `--watchdog` under 1 ms is a usage error (exit 2), and its help did not say so.
#[tokio::test]
async fn run_help_says_the_shortest_watchdog() {
    let (code, out) = run_to_end(&["run", "--help"]).await;
    assert_eq!(code, 0, "{out}");
    let text = out.split_whitespace().collect::<Vec<_>>().join(" ");
    let watchdog = text
        .split("--watchdog <DURATION>")
        .nth(1)
        .and_then(|t| t.split(" --").next())
        .unwrap_or_else(|| panic!("no --watchdog in:\n{out}"));
    assert!(
        watchdog.contains("At least 1ms (a shorter one is a usage error)"),
        "{watchdog}"
    );
    let (code, err) = run_to_end(&["run", "--watchdog", "500us", "--", "true"]).await;
    assert_clear(code, 2, &err, "under 1ms, the shortest watchdog");
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
    std::fs::write(&config, "workers = 2\ncommand = [\"/bin/sh\"]\n").unwrap();
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
        skip_env(
            "`unshare -Urpf --mount-proc` is not allowed here (apt-get install util-linux; \
             run as root, or allow unprivileged user namespaces)",
        );
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
        skip_env(&format!("the refusal of pid 1: it is `{init}`"));
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

/// `check-config` binds what `run` would bind, and releases it: an address of no interface
/// here or a missing socket directory fails as `run` would (exit 1, one line); an address in
/// use (the running supervisor's, before a reload) is a note, exit 0.
#[tokio::test]
async fn check_config_tries_the_addresses_run_would_bind() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: String| {
        let f = dir.path().join(name);
        std::fs::write(&f, text).unwrap();
        f.to_str().unwrap().to_owned()
    };
    // TEST-NET-3 (RFC 5737): no interface has it.
    let elsewhere = write(
        "elsewhere.toml",
        "listen = [\"203.0.113.7:8080\"]\ncommand = [\"true\"]\n".into(),
    );
    let (code, out) = run_to_end(&["check-config", &elsewhere]).await;
    assert_clear(code, 1, &out, "cannot listen on 203.0.113.7:8080");
    let (code, out) = run_to_end(&["run", "--config", &elsewhere]).await;
    assert_clear(code, 1, &out, "cannot listen on 203.0.113.7:8080");

    let missing = dir.path().join("no-such-dir/app.sock");
    let nodir = write(
        "nodir.toml",
        format!(
            "listen = [\"unix:{}\"]\ncommand = [\"true\"]\n",
            missing.display()
        ),
    );
    let (code, out) = run_to_end(&["check-config", &nodir]).await;
    assert_clear(code, 1, &out, "no directory");
    assert!(!missing.parent().unwrap().exists());

    let admin_elsewhere = write(
        "admin.toml",
        "listen = [\"127.0.0.1:0\"]\nadmin = \"203.0.113.7:9100\"\ncommand = [\"true\"]\n".into(),
    );
    let (code, out) = run_to_end(&["check-config", &admin_elsewhere]).await;
    assert_clear(code, 1, &out, "203.0.113.7:9100");

    // In use: a note naming it, the config still printed, and the port still this holder's.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap();
    let busy = write(
        "busy.toml",
        format!("listen = [\"{addr}\"]\nadmin = \"off\"\ncommand = [\"true\"]\n"),
    );
    let (code, out, err) = run_split(&["check-config", &busy]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains(&format!("note: {addr} is in use now")),
        "{err}"
    );
    assert!(out.contains(&addr.to_string()), "{out}");
    let _ = std::net::TcpStream::connect(addr).expect("the holder still listens");
}

/// An error line that cannot be written (stderr is a pipe whose reader exited, as in
/// `unwedge … 2>&1 | head -0`) does not change the exit status: no panic, no 101.
#[test]
fn a_closed_stderr_keeps_the_exit_status() {
    for (args, want) in [
        (&["run", "--bogus"][..], 2),
        (&["status", "--admin", "127.0.0.1:1"][..], 1),
        (&["reports", "--dir", "/nonexistent/unwedge-reports"][..], 1),
    ] {
        let (read, write) = nix::unistd::pipe().unwrap();
        drop(read);
        let status = std::process::Command::new(BIN)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::from(write))
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(want), "unwedge {args:?}");
    }
}

/// `unwedge status` pointed at a port where another HTTP server answers (Prometheus has 9090,
/// unwedge's default, too) says that it is not an unwedge admin endpoint and how to name the
/// right one, in one line, exit 1; not only `answered 404`, which reads as unwedge's fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_against_another_server_says_it_is_not_unwedge() {
    let dir = tempfile::tempdir().unwrap();
    // A 200 that is not the status JSON, and a 404 for everything else.
    std::fs::write(dir.path().join("status"), "up\n").unwrap();
    let empty = tempfile::tempdir().unwrap();
    for (root, answer) in [
        (empty.path(), "answered 404"),
        (dir.path(), "is not the status JSON"),
    ] {
        let addr = free_loopback_addr();
        let port = addr.port().to_string();
        let mut server = tokio::process::Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", &port])
            .current_dir(root)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("python3");
        assert!(
            accepted_within(addr.port(), LONG).await,
            "http.server on {addr}"
        );
        let (code, out, err) = run_split(&["status", "--admin", &addr.to_string()]).await;
        assert_eq!(code, 1, "{out}{err}");
        assert!(out.is_empty(), "{out}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(answer), "{err}");
        assert!(err.contains("not an unwedge admin endpoint"), "{err}");
        assert!(err.contains("unwedge run --admin"), "{err}");
        server.kill().await.unwrap();
    }
}
