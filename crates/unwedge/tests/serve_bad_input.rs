//! Bad input to `serve()`'s builder: one clear line on stderr, exit code 2, no panic.
//!
//! Each test runs this test binary as a real worker process (see `support`) whose `main`
//! returns the `Outcome`, as an application's does.

mod support;

use std::time::Duration;

use support::Worker;

/// The worker: `Server::bind(<mode>)`, no `UNWEDGE_LISTEN`.
fn maybe_worker() {
    let Some(addr) = support::worker_mode() else {
        return;
    };
    support::run_worker(|| {
        unwedge::Server::new()
            .bind(addr.as_str())
            .serve(axum::Router::new())
    })
}

/// Runs the worker with `Server::bind(addr)`: its exit code and its stderr lines that are
/// neither the test harness's nor the worker's own `TEST:` lines.
fn bind(test: &str, addr: &str) -> (i32, Vec<String>) {
    let mut w = Worker::spawn(test, addr, &[("UNWEDGE_LISTEN", "")]);
    let code = w.wait_exit(Duration::from_secs(30));
    let lines = w
        .log()
        .lines()
        .filter(|l| !l.starts_with("TEST:") && !l.is_empty())
        .map(str::to_owned)
        .collect();
    (code, lines)
}

/// `Server::bind("unix:")`: the parser's own message, not `invalid port value` from a
/// lookup of `unix:` as a host.
#[test]
fn bind_unix_without_a_path_says_it_needs_one() {
    maybe_worker();
    let (code, lines) = bind("bind_unix_without_a_path_says_it_needs_one", "unix:");
    assert_eq!(code, 2, "{lines:#?}");
    let errors: Vec<_> = lines.iter().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(
        errors,
        [r#"error: invalid Server::bind("unix:"): `unix:` needs a path"#],
        "{lines:#?}"
    );
    assert!(!lines.iter().any(|l| l.contains("panicked")), "{lines:#?}");
}

/// `Server::bind("8080")` (a port without a host): the parser's message.
#[test]
fn bind_a_bare_port_says_what_is_expected() {
    maybe_worker();
    let (code, lines) = bind("bind_a_bare_port_says_what_is_expected", "8080");
    assert_eq!(code, 2, "{lines:#?}");
    let errors: Vec<_> = lines.iter().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(
        errors,
        [r#"error: invalid Server::bind("8080"): expected host:port or unix:/path"#],
        "{lines:#?}"
    );
}
