//! `unwedge::spawn`: supervised background tasks under the process-wide policy.

mod support;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use unwedge::panic::Action;
use unwedge::task::TaskExit;
use unwedge::Policy;

const LIMIT: Duration = Duration::from_secs(30);

async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test took longer than its hard limit")
}

/// A task factory that reports each start on `tx` and panics on its first `fails` runs.
fn flaky(
    fails: u32,
    tx: mpsc::UnboundedSender<u32>,
) -> impl FnMut() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + 'static {
    let mut run = 0u32;
    move || {
        run += 1;
        let (tx, n) = (tx.clone(), run);
        Box::pin(async move {
            tx.send(n).unwrap();
            tokio::task::yield_now().await;
            if n <= fails {
                panic!("run {n} fails");
            }
            std::future::pending::<()>().await
        })
    }
}

#[tokio::test]
async fn a_panicking_task_is_restarted_and_the_restarts_counted() {
    support::own_process!();
    within(async {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let handle = unwedge::spawn("flaky", flaky(2, tx));
        for expected in 1..=3 {
            assert_eq!(rx.recv().await, Some(expected));
        }
        assert_eq!(handle.restarts(), 2);
        assert_eq!(handle.panics(), 2);
        assert!(!handle.is_finished());

        let h = unwedge::health();
        assert_eq!(h.panics_by_route["task flaky"], 2);
        let r = &h.recent_reports[0];
        assert_eq!(r.task.as_deref(), Some("flaky"));
        assert_eq!(r.message, "run 1 fails");
        assert!(r.request.is_none());
        assert_eq!(r.decision.as_ref().unwrap().action, Action::Recover);
        assert_eq!(unwedge::health::crash_reason(), None);
        handle.abort();
        assert!(handle.await.unwrap_err().is_cancelled());
    })
    .await
}

#[tokio::test]
async fn a_task_that_returns_is_not_restarted() {
    within(async {
        let handle = unwedge::spawn("once", || async {});
        assert_eq!(handle.await.unwrap(), TaskExit::Finished);
    })
    .await
}

#[tokio::test]
async fn under_crash_a_task_panic_requests_a_crash() {
    support::own_process!();
    within(async {
        unwedge::panic::set_policy(Policy::Crash);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let handle = unwedge::spawn("doomed", flaky(5, tx));
        let exit = handle.await.unwrap();
        assert!(
            matches!(&exit, TaskExit::Escalated(r) if r.contains("task doomed")),
            "{exit:?}"
        );
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, None, "no restart under Crash");
        let reason = unwedge::health::crash_requested().await;
        assert!(reason.contains("policy crash"), "{reason}");
    })
    .await
}

#[tokio::test]
async fn a_task_that_poisons_a_mutex_escalates_under_auto() {
    support::own_process!();
    within(async {
        let m = Arc::new(unwedge::Mutex::named("jobs", Vec::<u32>::new()));
        let handle = unwedge::spawn("worker", {
            let m = m.clone();
            move || {
                let m = m.clone();
                async move {
                    let mut jobs = m.lock().await.unwrap();
                    jobs.push(1);
                    panic!("half-way through the jobs");
                }
            }
        });
        let exit = handle.await.unwrap();
        assert!(
            matches!(&exit, TaskExit::Escalated(r) if r.contains("`jobs` poisoned")),
            "{exit:?}"
        );
        assert!(m.is_poisoned());
        assert_eq!(unwedge::health().state, unwedge::HealthState::Tainted);
    })
    .await
}

/// A task that catches its own panic, which poisoned a mutex: the task goes on (no panic
/// reached `spawn`), and the poisoned mutex is decided by the policy all the same (Auto: a
/// crash), not left poisoned on a healthy-looking process.
#[tokio::test]
async fn a_mutex_poisoned_by_a_panic_the_task_caught_itself_is_decided_by_the_policy() {
    support::own_process!();
    within(async {
        let m = Arc::new(unwedge::Mutex::named("caught", 0u32));
        let handle = unwedge::task::spawn_once("job", {
            let m = m.clone();
            async move {
                let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let _g = m.try_lock().unwrap();
                    panic!("boom inside the section");
                }));
                assert!(caught.is_err());
            }
        });
        assert_eq!(handle.await.unwrap(), TaskExit::Finished);
        assert!(m.is_poisoned());
        let reason =
            tokio::time::timeout(Duration::from_secs(5), unwedge::health::crash_requested())
                .await
                .expect("a crash is requested");
        assert_eq!(
            reason,
            "mutex `caught` poisoned by a panic the app caught itself"
        );
    })
    .await
}

#[tokio::test]
async fn a_one_shot_task_panic_is_reported_without_restart() {
    support::own_process!();
    within(async {
        let handle = unwedge::task::spawn_once("warmup", async { panic!("warmup failed") });
        assert_eq!(handle.await.unwrap(), TaskExit::Finished);
        let h = unwedge::health();
        assert_eq!(h.panics_by_route["task warmup"], 1);
        assert_eq!(h.recent_reports[0].message, "warmup failed");
    })
    .await
}
