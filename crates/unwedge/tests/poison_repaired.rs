//! A mutex poisoned by a panic the app caught and then repaired is no part of a later
//! decision: neither of a later, unrelated panic of the same request, nor of another
//! request's end while a second panic's poison waits for its own repair.

mod support;

use std::convert::Infallible;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use tokio::sync::Notify;
use tower::{Layer, ServiceExt};
use unwedge::panic::Action;
use unwedge::PanicLayer;

fn poison_and_catch(m: &unwedge::Mutex<i32>) {
    let caught = catch_unwind(AssertUnwindSafe(|| {
        let mut g = m.try_lock().unwrap();
        *g = -1;
        panic!("caught by the app");
    }));
    assert!(caught.is_err());
    assert!(m.is_poisoned());
}

fn repair(m: &unwedge::Mutex<i32>) {
    let mut g = match m.try_lock() {
        Err(unwedge::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        other => panic!("not poisoned: {:?}", other.is_ok()),
    };
    *g = 0;
    m.clear_poison();
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("hung")
}

/// Caught and repaired, then an unrelated panic in the same poll: Auto recovers (before, the
/// repaired mutex was merged into the second panic's report, and Auto crashed).
#[tokio::test(flavor = "current_thread")]
async fn a_repaired_poison_is_not_merged_into_a_later_panics_report() {
    support::own_process!();
    static M: LazyLock<unwedge::Mutex<i32>> = LazyLock::new(|| unwedge::Mutex::named("cache", 0));
    within(async {
        let svc = PanicLayer::new().layer(tower::service_fn(|_req: http::Request<()>| async {
            poison_and_catch(&M);
            repair(&M);
            if true {
                panic!("second, unrelated to any mutex");
            }
            Ok::<_, Infallible>(http::Response::new(String::new()))
        }));
        let res = svc.oneshot(http::Request::new(())).await.unwrap();
        assert_eq!(res.status(), 500);
        let h = unwedge::health();
        let report = h.recent_reports.last().expect("a report");
        assert!(report.poisoned.is_empty(), "{report:?}");
        assert_eq!(report.decision.as_ref().unwrap().action, Action::Recover);
        assert_eq!(unwedge::health::crash_reason(), None);
    })
    .await
}

/// R1 poisons and repairs at once; R2 poisons the same mutex and repairs it after an
/// `.await` (within its grace). R1's end does not decide R2's poison by R1's record (before:
/// "mutex `cache` poisoned by a panic the app caught itself", a crash although both were
/// repaired); a poison left unrepaired is still decided (the control at the end).
#[tokio::test(flavor = "current_thread")]
async fn one_requests_end_does_not_decide_anothers_poison() {
    support::own_process!();
    static M: LazyLock<unwedge::Mutex<i32>> = LazyLock::new(|| unwedge::Mutex::named("cache", 0));
    within(async {
        let r2_poisoned = Arc::new(Notify::new());
        let r1_done = Arc::new(Notify::new());
        let (a, b) = (r2_poisoned.clone(), r1_done.clone());
        let svc = PanicLayer::new().layer(tower::service_fn(move |req: http::Request<()>| {
            let (r2_poisoned, r1_done) = (a.clone(), b.clone());
            async move {
                match req.uri().path() {
                    "/r1" => {
                        poison_and_catch(&M);
                        repair(&M);
                        r2_poisoned.notified().await;
                    }
                    "/r2" => {
                        poison_and_catch(&M);
                        r2_poisoned.notify_one();
                        r1_done.notified().await;
                        repair(&M);
                    }
                    _ => poison_and_catch(&M),
                }
                Ok::<_, Infallible>(http::Response::new(String::from("ok")))
            }
        }));
        let get = |path: &str| http::Request::get(path).body(()).unwrap();
        let r1 = tokio::spawn(svc.clone().oneshot(get("/r1")));
        tokio::task::yield_now().await;
        let r2 = tokio::spawn(svc.clone().oneshot(get("/r2")));
        assert_eq!(r1.await.unwrap().unwrap().status(), 200);
        assert_eq!(unwedge::health::crash_reason(), None, "decided at R1's end");
        r1_done.notify_one();
        assert_eq!(r2.await.unwrap().unwrap().status(), 200);
        assert!(!M.is_poisoned());
        assert_eq!(unwedge::health::crash_reason(), None);
        // Control: left poisoned, it is decided at the request's end.
        assert_eq!(svc.oneshot(get("/left")).await.unwrap().status(), 200);
        let reason = unwedge::health::crash_reason().expect("an unrepaired poison decided");
        assert!(reason.contains("cache"), "{reason}");
    })
    .await
}

/// R1 catches a poison of its own and leaves it unrepaired; meanwhile R2, under a `Recover`
/// layer, takes the poisoned data and panics over it (poisoned again, not repaired between).
/// R1's end still decides R1's poison by R1's policy, `Auto`: a crash (review: counting the
/// second poisoning as a new one dropped R1's decision).
#[tokio::test(flavor = "current_thread")]
async fn a_poison_poisoned_again_before_a_repair_is_still_decided() {
    support::own_process!();
    static M: LazyLock<unwedge::Mutex<i32>> = LazyLock::new(|| unwedge::Mutex::named("ledger", 0));
    within(async {
        let go_on = Arc::new(Notify::new());
        let wait = go_on.clone();
        let r1 = PanicLayer::with_policy(unwedge::Policy::Auto).layer(tower::service_fn(
            move |_req: http::Request<()>| {
                let wait = wait.clone();
                async move {
                    poison_and_catch(&M);
                    wait.notified().await;
                    Ok::<_, Infallible>(http::Response::new(String::new()))
                }
            },
        ));
        let r2 = PanicLayer::with_policy(unwedge::Policy::Recover).layer(tower::service_fn(
            |_req: http::Request<()>| async {
                let _data = match M.try_lock() {
                    Err(unwedge::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                    other => panic!("not poisoned: {:?}", other.is_ok()),
                };
                if true {
                    panic!("over the poisoned data");
                }
                Ok::<_, Infallible>(http::Response::new(String::new()))
            },
        ));
        let first = tokio::spawn(r1.oneshot(http::Request::new(())));
        while !M.is_poisoned() {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            r2.oneshot(http::Request::new(())).await.unwrap().status(),
            500
        );
        go_on.notify_one();
        assert_eq!(first.await.unwrap().unwrap().status(), 200);
        let reason = unwedge::health::crash_reason().expect("R1's poison decided");
        assert!(reason.contains("ledger"), "{reason}");
    })
    .await
}
