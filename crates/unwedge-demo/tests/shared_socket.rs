//! Two workers share one listening socket (the supervisor's setup); one crashes gracefully,
//! or is stopped with SIGTERM, under load. The socket's accept queue outlives the leaving
//! worker, so the only failed request is the one that panicked.

mod support;

use std::time::Duration;

use rustix::process::Signal;
use support::*;
use unwedge_load::{LoadConfig, RequestSpec};

#[test]
fn one_worker_crashes_under_load_and_no_connection_is_refused_or_reset() {
    let report = one_of_two_leaves_under_load(false, Leave::Crash);
    assert_eq!(report.unexpected_failures(), 0, "{report}");
}

/// Keep-alive clients: an idle connection gets 1 s for one more request before the leaving
/// worker closes it, and every answer in the drain says `Connection: close`; a pooled
/// connection idle for longer than the grace can still race with the close (a reset the
/// client may retry). Measured: 0 resets in 30 runs (3 in 30 before answers in the drain said
/// `Connection: close`); the bound leaves room for that race.
const KEEP_ALIVE_RACES: u64 = 2;

#[test]
fn one_worker_crashes_under_keep_alive_load_and_the_other_keeps_serving() {
    let report = one_of_two_leaves_under_load(true, Leave::Crash);
    assert!(report.unexpected_failures() <= KEEP_ALIVE_RACES, "{report}");
}

#[test]
fn one_worker_stops_under_load_and_no_connection_is_refused_or_reset() {
    let report = one_of_two_leaves_under_load(false, Leave::Sigterm);
    assert_eq!(report.unexpected_failures(), 0, "{report}");
}

#[test]
fn one_worker_stops_under_keep_alive_load_and_the_other_keeps_serving() {
    let report = one_of_two_leaves_under_load(true, Leave::Sigterm);
    assert!(report.unexpected_failures() <= KEEP_ALIVE_RACES, "{report}");
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Leave {
    Crash,
    Sigterm,
}

fn one_of_two_leaves_under_load(keep_alive: bool, how: Leave) -> unwedge_load::LoadReport {
    let mut out = None;
    run_test(Duration::from_secs(90), async {
        let dir = tempfile::tempdir().unwrap();
        let (listener, addr) = loopback_listener();
        let mut n1 = Notify::bind(dir.path(), "n1.sock");
        let mut n2 = Notify::bind(dir.path(), "n2.sock");
        let w1 = spawn_worker(
            dir.path(),
            "w1",
            Some(&listener),
            &[("NOTIFY_SOCKET", n1.path.to_str().unwrap())],
        );
        let w2 = spawn_worker(
            dir.path(),
            "w2",
            Some(&listener),
            &[("NOTIFY_SOCKET", n2.path.to_str().unwrap())],
        );
        n1.expect(
            "READY=1 from w1",
            Duration::from_secs(20),
            line_is("READY=1"),
        )
        .await;
        n2.expect(
            "READY=1 from w2",
            Duration::from_secs(20),
            line_is("READY=1"),
        )
        .await;

        // Fresh connections, so every request goes through the shared accept queue.
        let load = unwedge_load::start(
            LoadConfig::from_addr(addr)
                .unwrap()
                .request(RequestSpec::get("/slow?ms=2").weight(1))
                .request(RequestSpec::get("/").weight(3))
                .concurrency(8)
                .keep_alive(keep_alive)
                .timeout(Duration::from_secs(10))
                .duration(Duration::from_secs(30)),
        )
        .unwrap();
        let mut progress = load.progress();
        progress
            .wait_for(|p| p.total >= 300)
            .await
            .expect("load is running");

        if how == Leave::Crash {
            let (status, _) = http(addr, "POST", "/poison").await.unwrap();
            assert_eq!(status, 500);
        } else {
            w1.signal(Signal::TERM);
        }

        // Whichever worker took the panic exits 70; the other keeps serving.
        let (mut w1, mut w2) = (w1, w2);
        let (crashed, survivor) = tokio::select! {
            s = w1.child.wait() => (("w1", s.unwrap()), w2),
            s = w2.child.wait() => (("w2", s.unwrap()), w1),
        };
        let code = if how == Leave::Crash { 70 } else { 0 };
        assert_eq!(crashed.1.code(), Some(code), "{} exit", crashed.0);

        // More load after the crash, all of it on the survivor.
        let at_crash = progress.borrow().total;
        progress
            .wait_for(|p| p.total >= at_crash + 300)
            .await
            .expect("load is running");
        load.stop();
        let report = load.finish().await;
        eprintln!("{report}");
        eprintln!(
            "FIGURE shared_socket leave={how:?} keep_alive={keep_alive} total={} refused={} reset={} timeout={} other={} unexpected_status={}",
            report.total, report.refused, report.reset, report.timeout, report.other, report.unexpected_statuses
        );
        assert!(report.ok >= 600, "{report}");

        survivor.signal(Signal::TERM);
        let mut survivor = survivor;
        assert_eq!(
            survivor.wait_exit(Duration::from_secs(10)).await.code(),
            Some(0)
        );
        out = Some(report);
    });
    out.expect("the run produced a report")
}
