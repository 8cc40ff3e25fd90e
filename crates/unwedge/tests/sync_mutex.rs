//! `unwedge::Mutex`: poisoning and repair, cancellation, timeouts, the wait watchdog, deadlock
//! detection, bounds. Each test runs in its own process under nextest, so the process-wide
//! health registry starts clean in each; the tests that rely on that check it first
//! (`support::own_process!`).

mod support;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, Barrier};
use unwedge::sync::{LockError, PoisonCause, TryLockError};
use unwedge::{health, HealthState, Mutex};

/// Hard upper bound for every test.
const LIMIT: Duration = Duration::from_secs(20);

async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test took longer than its hard limit")
}

/// Waits until the health registry reports `want` (with a reason accepted by `check`).
async fn health_becomes(want: HealthState, check: impl Fn(&str) -> bool) -> String {
    let mut rx = health::subscribe();
    let seen = rx
        .wait_for(|(state, reason)| *state == want && check(reason.as_deref().unwrap_or("")))
        .await
        .expect("health sender lives forever");
    seen.1.clone().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_while_held_poisons_releases_and_can_be_repaired() {
    unwedge::install();
    bounded(async {
        let m = Arc::new(Mutex::named("comments", vec![String::from("first")]));
        let m2 = m.clone();
        let task = tokio::spawn(async move {
            let mut list = m2.lock().await.expect("not poisoned yet");
            list.push("half".into());
            let i = list.len();
            let _oops = &list[i]; // the seed's bug
        });
        let id = task.id();
        assert!(task.await.unwrap_err().is_panic());

        assert!(m.is_poisoned());
        // The lock is not held: the next lock() returns at once, with the poison.
        let err = tokio::time::timeout(Duration::from_secs(5), m.lock())
            .await
            .expect("lock must not be held after the panic")
            .expect_err("must be poisoned");
        let info = err.info();
        assert_eq!(info.cause, PoisonCause::Panic);
        assert_eq!(&*info.lock, "comments");
        assert_eq!(info.holder.as_deref(), Some(&*format!("task {id}")));
        let message = info
            .message
            .as_deref()
            .expect("hook installed: message known");
        assert!(message.contains("index out of bounds"), "{message}");
        assert!(info.location.as_deref().unwrap().contains("sync_mutex.rs"));
        let shown = err.to_string();
        assert!(
            shown.contains("comments") && shown.contains(&format!("task {id}")),
            "{shown}"
        );

        // Repair through the guard, then clear.
        let mut list = err.into_inner();
        assert_eq!(*list, ["first", "half"]);
        list.pop();
        m.clear_poison();
        drop(list);
        assert!(!m.is_poisoned());
        let list = m.lock().await.expect("poison cleared");
        assert_eq!(*list, ["first"]);
    })
    .await;
}

#[tokio::test]
async fn poison_is_seen_by_try_lock_and_lock_timeout_too() {
    bounded(async {
        let m = Arc::new(Mutex::new(0));
        let m2 = m.clone();
        let _ = tokio::spawn(async move {
            let _g = m2.lock().await.unwrap();
            panic!("boom");
        })
        .await;
        assert!(matches!(m.try_lock(), Err(TryLockError::Poisoned(_))));
        let r = m.lock_timeout(Duration::from_secs(1)).await;
        assert!(matches!(r, Err(LockError::Poisoned(_))), "{r:?}");
    })
    .await;
}

#[tokio::test]
async fn normal_drop_does_not_poison() {
    let m = Mutex::new(1);
    *m.lock().await.unwrap() += 1;
    assert!(!m.is_poisoned());
    assert_eq!(*m.lock().await.unwrap(), 2);
}

/// A lock taken and released by a `Drop` that cleans up while an unrelated panic unwinds (a
/// registration removing itself from a shared registry): its section ran to its end, so the
/// mutex is not poisoned, as std's `Mutex` is not, and the process is not asked to crash.
/// A section the panic broke off, in the same unwinding, still poisons.
#[tokio::test]
async fn a_section_run_whole_during_another_panics_unwinding_does_not_poison() {
    support::own_process!();
    struct Registration(Arc<Mutex<Vec<u32>>>, u32);
    impl Drop for Registration {
        fn drop(&mut self) {
            if let Ok(mut list) = self.0.try_lock() {
                list.retain(|x| *x != self.1);
            }
        }
    }
    let registry = Arc::new(Mutex::named("registry", vec![7]));
    let r = registry.clone();
    let joined = std::thread::spawn(move || {
        let _registration = Registration(r, 7);
        let v: Vec<u32> = Vec::new();
        v[3] // an unrelated bug
    })
    .join();
    assert!(joined.is_err());
    assert!(!registry.is_poisoned(), "{:?}", registry.poison_info());
    assert_eq!(*registry.try_lock().unwrap(), Vec::<u32>::new());
    assert!(health::health().state.is_live(), "{:?}", health::health());

    // A cleanup's all-or-nothing section left early, uncommitted: poisoned all the same.
    struct Cleanup(Arc<Mutex<u32>>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let step = || -> Option<()> {
                let mut section = self.0.try_lock().ok()?.commit_or_poison();
                *section += 1;
                None?; // leaves before commit()
                drop(section.commit());
                Some(())
            };
            let _ = step();
        }
    }
    let counts = Arc::new(Mutex::named("counts", 0u32));
    let c = counts.clone();
    let joined = std::thread::spawn(move || {
        let _cleanup = Cleanup(c);
        panic!("an unrelated bug");
    })
    .join();
    assert!(joined.is_err());
    assert!(counts.is_poisoned(), "a half-done section was not poisoned");

    // Broken off by the panic: poisoned.
    let held = Arc::new(Mutex::named("held", 0));
    let h = held.clone();
    let joined = std::thread::spawn(move || {
        let _g = h.try_lock().unwrap();
        panic!("inside the section");
    })
    .join();
    assert!(joined.is_err());
    assert!(held.is_poisoned());
}

/// A panic caught earlier on the same thread by code of the app leaves what the hook learned
/// of it behind; a later unwinding resumed with `resume_unwind` (as rayon and futures pass
/// panics on; it skips the hook) poisons a mutex. The poison must not be blamed on the old,
/// already handled panic: its message is unknown, not the old one's.
#[tokio::test]
async fn a_poison_is_not_blamed_on_an_earlier_panic_already_caught() {
    support::own_process!();
    unwedge::install();
    unwedge::panic::set_policy(unwedge::Policy::Recover);
    let m = Arc::new(Mutex::named("resumed", 0));
    let m2 = m.clone();
    let joined = std::thread::spawn(move || {
        let _ = std::panic::catch_unwind(|| panic!("first, already handled"));
        let _g = m2.try_lock().unwrap();
        std::panic::resume_unwind(Box::new("second, the real one"));
    })
    .join();
    assert!(joined.is_err());
    let info = m.poison_info().expect("poisoned");
    assert!(
        !info.to_string().contains("first, already handled"),
        "{info}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_waiter_leaves_lock_free() {
    support::own_process!();
    bounded(async {
        let m = Arc::new(Mutex::named("queue", 0));
        let held = m.lock().await.unwrap();
        let m2 = m.clone();
        let (started_tx, started_rx) = oneshot::channel();
        let waiter = tokio::spawn(async move {
            let lock = m2.lock();
            tokio::pin!(lock);
            // Poll once so the waiter is really queued, then report and keep waiting.
            assert!(futures_poll_once(lock.as_mut()).await.is_none());
            started_tx.send(()).unwrap();
            let _ = lock.await;
            unreachable!("aborted while waiting");
        });
        started_rx.await.unwrap();
        waiter.abort();
        assert!(waiter.await.unwrap_err().is_cancelled());
        drop(held);
        // Free at once: the cancelled waiter did not keep a place in the queue.
        let g = m.try_lock().expect("lock free after a cancelled waiter");
        drop(g);
        assert!(!m.is_poisoned());
        assert_eq!(health().state, HealthState::Healthy);
    })
    .await;
}

/// Polls `fut` once; `Some` if it completed.
async fn futures_poll_once<F: Future + Unpin>(mut fut: F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut fut).poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_timeout_names_the_holder() {
    bounded(async {
        let m = Arc::new(Mutex::named("db", ()));
        let (locked_tx, locked_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel::<()>();
        let m2 = m.clone();
        let holder = tokio::spawn(async move {
            let _g = m2.lock().await.unwrap();
            locked_tx.send(()).unwrap();
            let _ = release_rx.await;
        });
        let holder_id = holder.id();
        locked_rx.await.unwrap();

        let started = std::time::Instant::now();
        let err = match m.lock_timeout(Duration::from_millis(200)).await {
            Err(LockError::TimedOut(t)) => t,
            other => panic!("expected TimedOut, got {other:?}"),
        };
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(err.holder.as_deref(), Some(&*format!("task {holder_id}")));
        let shown = err.to_string();
        assert!(
            shown.contains("`db`") && shown.contains(&format!("held by task {holder_id}")),
            "{shown}"
        );

        release_tx.send(()).unwrap();
        holder.await.unwrap();
        assert!(m.lock_timeout(Duration::from_secs(5)).await.is_ok());
    })
    .await;
}

#[tokio::test]
async fn zero_and_absurd_timeouts_are_clear_errors() {
    let m = Mutex::named("db", ());
    for bad in [Duration::ZERO, Duration::from_secs(2 * 24 * 60 * 60)] {
        match m.lock_timeout(bad).await {
            Err(LockError::InvalidTimeout(e)) => {
                assert!(e.to_string().contains("`db`"), "{e}");
            }
            other => panic!("expected InvalidTimeout for {bad:?}, got {other:?}"),
        }
    }
    // The mutex was left alone.
    assert!(m.try_lock().is_ok());
}

#[test]
fn zero_wait_limit_panics_clearly() {
    let r = std::panic::catch_unwind(|| Mutex::named("db", ()).wait_limit(Duration::ZERO));
    let msg = *r.unwrap_err().downcast::<String>().unwrap();
    assert!(msg.contains("wait_limit") && msg.contains("`db`"), "{msg}");
    let r = std::panic::catch_unwind(|| {
        unwedge::sync::set_default_wait_limit(Duration::from_secs(1_000_000))
    });
    let msg = *r.unwrap_err().downcast::<String>().unwrap();
    assert!(msg.contains("24h"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_over_limit_marks_wedged_naming_the_holder_then_clears() {
    support::own_process!();
    bounded(async {
        let m = Arc::new(Mutex::named("cache", 0).wait_limit(Duration::from_millis(200)));
        let (locked_tx, locked_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel::<()>();
        let m2 = m.clone();
        let holder = tokio::spawn(async move {
            let _g = m2.lock().await.unwrap();
            locked_tx.send(()).unwrap();
            let _ = release_rx.await;
        });
        let holder_id = holder.id();
        locked_rx.await.unwrap();
        assert_eq!(health().state, HealthState::Healthy);

        let m3 = m.clone();
        let waiter = tokio::spawn(async move {
            *m3.lock().await.unwrap() += 1;
        });
        let reason = health_becomes(HealthState::Wedged, |r| r.contains("cache")).await;
        assert!(
            reason.contains(&format!("held by task {holder_id}")),
            "{reason}"
        );
        assert!(
            reason.contains(&format!("task {}", waiter.id())),
            "{reason}"
        );

        release_tx.send(()).unwrap();
        waiter.await.unwrap();
        holder.await.unwrap();
        health_becomes(HealthState::Healthy, |_| true).await;
        assert_eq!(*m.lock().await.unwrap(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_wait_over_limit_clears_its_wedge() {
    support::own_process!();
    bounded(async {
        let m = Arc::new(Mutex::named("cache", 0).wait_limit(Duration::from_millis(100)));
        let _held = m.lock().await.unwrap();
        let m2 = m.clone();
        let waiter = tokio::spawn(async move {
            let _ = m2.lock().await;
        });
        health_becomes(HealthState::Wedged, |r| r.contains("cache")).await;
        waiter.abort();
        let _ = waiter.await;
        health_becomes(HealthState::Healthy, |_| true).await;
    })
    .await;
}

/// The wait that closes the cycle finds it when it registers (synchronously, no timer), so
/// the deadlock is reported long before any wait limit (10 s by default). The 5 s bound also
/// covers spawning the two tasks and their barrier on a loaded machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ab_ba_deadlock_is_reported_before_any_wait_limit() {
    support::own_process!();
    bounded(async {
        let x = Arc::new(Mutex::named("x", ()));
        let y = Arc::new(Mutex::named("y", ()));
        let barrier = Arc::new(Barrier::new(2));
        let spawn_pair = |first: Arc<Mutex<()>>, second: Arc<Mutex<()>>| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let _a = first.lock().await.unwrap();
                barrier.wait().await;
                let _b = second.lock().await.unwrap();
            })
        };
        let a = spawn_pair(x.clone(), y.clone());
        let b = spawn_pair(y.clone(), x.clone());
        let (a_id, b_id) = (a.id(), b.id());

        let reason = tokio::time::timeout(
            Duration::from_secs(5),
            health_becomes(HealthState::Wedged, |r| r.contains("deadlock")),
        )
        .await
        .expect("deadlock not reported within 5 s");
        for needle in [
            format!("task {a_id}"),
            format!("task {b_id}"),
            "`x`".into(),
            "`y`".into(),
        ] {
            assert!(reason.contains(&needle), "missing {needle} in: {reason}");
        }

        // Ending the deadlock (cancelling both) clears the wedge and frees both locks.
        a.abort();
        b.abort();
        let _ = (a.await, b.await);
        health_becomes(HealthState::Healthy, |_| true).await;
        assert!(x.try_lock().is_ok() && y.try_lock().is_ok());
    })
    .await;
}

#[tokio::test]
async fn commit_guard_poisons_when_dropped_uncommitted() {
    support::own_process!();
    bounded(async {
        let m = Arc::new(Mutex::named("accounts", [100i64, 0]));
        // A section cancelled at an .await, between its two writes.
        let m2 = m.clone();
        let section = async move {
            let mut s = m2.lock().await.unwrap().commit_or_poison();
            s[0] -= 10;
            std::future::pending::<()>().await;
            s[1] += 10;
            drop(s.commit());
        };
        let cancelled = tokio::time::timeout(Duration::from_millis(50), section).await;
        assert!(cancelled.is_err());
        let err = m.lock().await.expect_err("uncommitted section poisons");
        assert_eq!(err.info().cause, PoisonCause::Uncommitted);
        assert!(err
            .info()
            .location
            .as_deref()
            .unwrap()
            .contains("sync_mutex.rs"));
        assert_eq!(*err.into_inner(), [90, 0]);
        // No panic layer saw it: the process-wide policy (Auto) asks for a graceful crash,
        // so /livez fails and `serve()` restarts the process instead of answering "poisoned"
        // forever behind green probes.
        let reason = tokio::time::timeout(Duration::from_secs(5), health::crash_requested())
            .await
            .expect("a crash is requested");
        assert_eq!(
            reason,
            "mutex `accounts` poisoned by a section dropped before commit()"
        );
        assert_eq!(health::health().state, HealthState::Tainted);
        m.clear_poison();

        // Committed: no poison.
        let mut s = m.lock().await.unwrap().commit_or_poison();
        s[0] = 1;
        drop(s.commit());
        assert!(!m.is_poisoned());
    })
    .await;
}

#[tokio::test]
async fn debug_does_not_block() {
    let m = Mutex::named("dbg", 7);
    assert!(format!("{m:?}").contains('7'));
    let _g = m.lock().await.unwrap();
    let shown = format!("{m:?}");
    assert!(
        shown.contains("<locked>") && shown.contains("dbg"),
        "{shown}"
    );
}

#[test]
fn bounds() {
    fn send<T: Send>() {}
    fn sync<T: Sync>() {}
    fn unpin<T: Unpin>() {}
    send::<Mutex<Vec<u8>>>();
    sync::<Mutex<Vec<u8>>>();
    unpin::<Mutex<Vec<u8>>>();
    send::<unwedge::MutexGuard<'static, Vec<u8>>>();
    sync::<unwedge::MutexGuard<'static, Vec<u8>>>();
    send::<unwedge::CommitGuard<'static, Vec<u8>>>();
    send::<unwedge::PoisonError<unwedge::MutexGuard<'static, Vec<u8>>>>();
    send::<unwedge::Tx<Vec<u8>>>();
    sync::<unwedge::Tx<Vec<u8>>>();
    // A Mutex makes a Send-only value shareable, like std's.
    sync::<Mutex<std::cell::Cell<u8>>>();

    // The lock future can be held across an .await in a spawned task.
    fn send_future<F: Future + Send>(_: F) {}
    let m = Mutex::new(0);
    send_future(async {
        let g = m.lock().await;
        drop(g);
    });
}

/// Under Recover, a mutex poisoned where no layer decides stays poisoned for the next `lock()`
/// to repair; the process stays healthy.
#[tokio::test]
async fn under_recover_an_uncommitted_section_only_poisons() {
    support::own_process!();
    bounded(async {
        unwedge::panic::set_policy(unwedge::Policy::Recover);
        let m = Mutex::named("ledger", 0);
        drop(m.lock().await.unwrap().commit_or_poison());
        assert!(m.is_poisoned());
        assert_eq!(health::health().state, HealthState::Healthy);
        assert!(health::crash_reason().is_none());
    })
    .await;
}

/// A panic in a plain thread (no panic layer, no `unwedge::spawn`) that poisons a mutex: the
/// process-wide policy (Auto) asks for a graceful crash.
#[tokio::test]
async fn a_mutex_poisoned_by_a_panic_outside_any_request_requests_a_crash() {
    support::own_process!();
    bounded(async {
        let m = Arc::new(Mutex::named("outside", 0));
        let m2 = m.clone();
        let joined = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async {
                let _g = m2.lock().await.unwrap();
                panic!("boom outside");
            })
        })
        .join();
        assert!(joined.is_err());
        assert!(m.is_poisoned());
        let reason = tokio::time::timeout(Duration::from_secs(5), health::crash_requested())
            .await
            .expect("a crash is requested");
        assert_eq!(
            reason,
            "mutex `outside` poisoned by a panic outside any request or task"
        );
    })
    .await;
}

/// Two futures joined in one task taking turns with a mutex: the second waits for a lock its
/// own task holds, which is no deadlock (the first goes on and releases it). The process
/// stays healthy, and the second gets the lock.
#[tokio::test]
async fn joined_futures_of_one_task_taking_turns_are_not_a_deadlock() {
    support::own_process!();
    bounded(async {
        let m = Mutex::named("turns", 0);
        let (tx, rx) = oneshot::channel::<()>();
        let first = async {
            let mut g = m.lock().await.unwrap();
            *g += 1;
            rx.await.unwrap();
        };
        let second = async {
            let mut g = m.lock().await.unwrap();
            *g += 10;
        };
        let check = async {
            // `first` holds the lock and `second` waits for it by the time this runs again.
            tokio::task::yield_now().await;
            let state = health::health().state;
            tx.send(()).unwrap();
            state
        };
        let ((), (), state) = tokio::join!(first, second, check);
        assert_eq!(state, HealthState::Healthy);
        assert_eq!(*m.lock().await.unwrap(), 11);
    })
    .await;
}
