//! A `MutexGuard` held in a hand-written future, task or response body when it panics. An
//! `async` block's state is dropped while the panic unwinds, so its guard poisons; these are
//! dropped only once the panic was caught, and must poison all the same (before, the lock was
//! released over half-updated data, no poison, and `Auto` recovered).

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex as StdMutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use tower::{Layer, ServiceExt};
use unwedge::task::TaskExit;
use unwedge::{PanicLayer, PanicReport, Policy};

/// A pair whose sum is 100 when whole: an update moves 10 from the first to the second.
type Pair = unwedge::Mutex<(i64, i64)>;

fn reports() -> (Arc<StdMutex<Vec<PanicReport>>>, PanicLayer) {
    let kept = Arc::new(StdMutex::new(Vec::new()));
    let sink = kept.clone();
    let layer = PanicLayer::with_policy(Policy::Recover).sink(Arc::new(move |r: &PanicReport| {
        sink.lock().unwrap().push(r.clone())
    }));
    (kept, layer)
}

fn assert_poisoned(m: &Pair, kept: &StdMutex<Vec<PanicReport>>, name: &str) {
    assert!(
        m.is_poisoned(),
        "{name} released over half-updated data, unpoisoned"
    );
    let kept = kept.lock().unwrap();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0].poisoned, vec![name.to_owned()], "{:?}", kept[0]);
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("hung")
}

#[tokio::test(flavor = "current_thread")]
async fn a_guard_in_a_hand_written_future_poisons_when_it_panics() {
    support::own_process!();
    static M: LazyLock<Pair> = LazyLock::new(|| Pair::named("ledger", (100, 0)));
    within(async {
        let (kept, layer) = reports();
        let svc = layer.layer(tower::service_fn(|_req: http::Request<()>| {
            let mut guard = None;
            std::future::poll_fn(move |cx| {
                let g = match &mut guard {
                    Some(g) => g,
                    None => match M.try_lock() {
                        Ok(g) => guard.insert(g),
                        Err(e) => panic!("{e}"),
                    },
                };
                if g.1 == 0 {
                    g.0 -= 10;
                    g.1 = 1; // half-way: the other 9 are not there yet
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                panic!("mid-transfer");
                #[allow(unreachable_code)]
                Poll::Ready(Ok::<_, Infallible>(http::Response::new(String::new())))
            })
        }));
        let res = svc.oneshot(http::Request::new(())).await.unwrap();
        assert_eq!(res.status(), 500);
        assert_poisoned(&M, &kept, "ledger");
    })
    .await
}

/// A streaming body holding the guard, panicking mid-stream.
struct Drain {
    guard: unwedge::MutexGuard<'static, (i64, i64)>,
    sent: bool,
}

impl http_body::Body for Drain {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if !self.sent {
            self.sent = true;
            self.guard.0 -= 10;
            return Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(b"a")))));
        }
        panic!("mid-stream, the pair half-moved");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_guard_in_a_response_body_poisons_when_it_panics() {
    support::own_process!();
    static M: LazyLock<Pair> = LazyLock::new(|| Pair::named("buffer", (100, 0)));
    within(async {
        let (kept, layer) = reports();
        let svc = layer.layer(tower::service_fn(|_req: http::Request<()>| async {
            let guard = M.lock().await.unwrap();
            Ok::<_, Infallible>(http::Response::new(Drain { guard, sent: false }))
        }));
        let res = svc.oneshot(http::Request::new(())).await.unwrap();
        let mut body = res.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "a");
        assert!(
            body.frame().await.unwrap().is_err(),
            "the panic ends the body"
        );
        assert_poisoned(&M, &kept, "buffer");
    })
    .await
}

#[tokio::test(flavor = "current_thread")]
async fn a_guard_in_a_hand_written_task_poisons_and_auto_escalates() {
    support::own_process!();
    static M: LazyLock<Pair> = LazyLock::new(|| Pair::named("settle", (100, 0)));
    within(async {
        unwedge::install();
        let mut guard = Some(M.try_lock().unwrap());
        let task = unwedge::task::spawn_once(
            "settle",
            std::future::poll_fn(move |cx| {
                let g = guard.as_mut().unwrap();
                if g.1 == 0 {
                    g.0 -= 10;
                    g.1 = 1;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                panic!("mid-transfer in a task");
            }),
        );
        let exit = task.await.unwrap();
        assert!(
            matches!(&exit, TaskExit::Escalated(why) if why.contains("settle")),
            "{exit:?}"
        );
        assert!(
            M.is_poisoned(),
            "released over half-updated data, unpoisoned"
        );
        let h = unwedge::health();
        let report = h.recent_reports.last().expect("a report");
        assert_eq!(report.poisoned, vec!["settle".to_owned()], "{report:?}");
    })
    .await
}

/// A hand-written middleware between two layers panics while the inner layer's request is
/// pending, its handler holding a guard: the outer layer's drop of what the panic left behind
/// drops the inner request too. Its poison is the outer panic's, decided once by the outer
/// layer's policy (`Recover`), as when the middleware is an `async` block; not decided again
/// by the inner layer's (`Auto`) as a cancellation (review).
#[tokio::test(flavor = "current_thread")]
async fn nested_layers_decide_a_hand_written_middlewares_panic_once() {
    support::own_process!();
    static M: LazyLock<Pair> = LazyLock::new(|| Pair::named("nested", (100, 0)));
    within(async {
        let inner = PanicLayer::with_policy(Policy::Auto).layer(tower::service_fn(
            |_req: http::Request<()>| async {
                let mut g = M.lock().await.unwrap();
                g.0 -= 10;
                std::future::pending::<()>().await;
                drop(g);
                Ok::<_, Infallible>(http::Response::new(String::new()))
            },
        ));
        let middleware = tower::service_fn(move |req: http::Request<()>| {
            let mut pending = Box::pin(inner.clone().oneshot(req));
            let mut polled = false;
            std::future::poll_fn(move |cx| {
                if !polled {
                    polled = true;
                    assert!(pending.as_mut().poll(cx).is_pending());
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                panic!("middleware panics");
                #[allow(unreachable_code)]
                Poll::Ready(Ok::<_, Infallible>(http::Response::new(String::new())))
            })
        });
        let (kept, outer) = reports();
        let res = outer
            .layer(middleware)
            .oneshot(http::Request::new(()))
            .await
            .unwrap();
        assert_eq!(res.status(), 500);
        assert_poisoned(&M, &kept, "nested");
        assert_eq!(unwedge::health::crash_reason(), None);
    })
    .await
}

/// A hand-written future that answers while it still holds a section left uncommitted (its
/// `CommitGuard` dropped with the future, after the answer): the poison is the request's,
/// decided by its layer's policy (`Recover`: no crash), as when the future is cancelled or
/// panics. Before, the finished future was dropped outside the request's scope, and the
/// process-wide policy (`Auto`) asked for a crash the layer was told not to make.
#[tokio::test(flavor = "current_thread")]
async fn a_finished_hand_written_futures_leftover_section_is_decided_by_its_layer() {
    support::own_process!();
    static M: LazyLock<Pair> = LazyLock::new(|| Pair::named("drafts", (100, 0)));
    within(async {
        let (_kept, layer) = reports();
        let svc = layer.layer(tower::service_fn(|_req: http::Request<()>| {
            // Kept by the future, dropped with it.
            let mut held = Vec::new();
            std::future::poll_fn(move |_cx| {
                let mut s = M.try_lock().unwrap().commit_or_poison();
                s.0 -= 10; // half-way, never committed
                held.push(s);
                Poll::Ready(Ok::<_, Infallible>(http::Response::new(String::new())))
            })
        }));
        let res = svc.oneshot(http::Request::new(())).await.unwrap();
        assert_eq!(res.status(), 200);
        assert!(
            M.is_poisoned(),
            "the section left uncommitted did not poison"
        );
        assert_eq!(
            unwedge::health::crash_reason(),
            None,
            "the process-wide policy decided, not the layer's Recover"
        );
    })
    .await
}

/// A hand-written future that returns, and whose drop then panics: that panic is the task's,
/// reported (with the mutex its drop poisoned) and decided by the policy (`Auto`: a crash),
/// and the task, its work done, is not run again. Before, the panic was caught and thrown
/// away: no report, no decision, the mutex poisoned and nobody told.
#[tokio::test(flavor = "current_thread")]
async fn a_task_whose_finished_future_panics_in_its_drop_is_reported_and_decided() {
    support::own_process!();
    static M: LazyLock<Pair> = LazyLock::new(|| Pair::named("ledger-close", (100, 0)));

    struct Closing {
        guard: Option<unwedge::MutexGuard<'static, (i64, i64)>>,
    }
    impl Future for Closing {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
            let g = self.guard.get_or_insert_with(|| M.try_lock().unwrap());
            g.0 -= 10; // half-moved, finished in drop
            Poll::Ready(())
        }
    }
    impl Drop for Closing {
        fn drop(&mut self) {
            panic!("closing the ledger failed");
        }
    }

    within(async {
        unwedge::install();
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let task = unwedge::spawn("close", {
            let runs = runs.clone();
            move || {
                runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Closing { guard: None }
            }
        });
        let exit = task.await.unwrap();
        assert!(
            matches!(&exit, TaskExit::Escalated(why) if why.contains("ledger-close")),
            "{exit:?}"
        );
        assert_eq!(
            runs.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "run again"
        );
        assert!(M.is_poisoned());
        let h = unwedge::health();
        let report = h.recent_reports.last().expect("a report");
        assert_eq!(report.message, "closing the ledger failed", "{report:?}");
        assert_eq!(
            report.poisoned,
            vec!["ledger-close".to_owned()],
            "{report:?}"
        );
    })
    .await
}
