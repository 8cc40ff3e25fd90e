//! Hang detection inside the process, on its own OS thread so that a blocked runtime cannot
//! silence it.
//!
//! [`serve`](crate::serve) starts the watchdog. It checks, every 10 ms:
//!
//! | kind | condition | health source |
//! | --- | --- | --- |
//! | runtime stall | a canary task on the runtime has not run for the stall limit (default 2 s) | `watchdog:stall` |
//! | blocked poll | one poll of a request's future has run for the stall limit: the handler blocks its runtime thread (`std::thread::sleep`, a std lock) | `watchdog:blocked` |
//! | no progress | requests are in flight, the oldest for longer than the hang limit (default 10 s), and none completed within it | `watchdog:no-progress` |
//! | lock wait | reported by [`Mutex`](crate::Mutex) itself | `lock:…` |
//!
//! Any of them turns the process [`Wedged`](crate::HealthState::Wedged) with a reason naming
//! the culprit; the wedge clears when its cause does. While the process is not Healthy or
//! Draining the watchdog stops the `WATCHDOG=1` heartbeats, and it sends `STATUS=` on every
//! change of the health state. With [`Server::abort_when_wedged`](crate::Server::abort_when_wedged)
//! it exits the process with code 70 once it has been wedged that long.
//!
//! Limits: the builder ([`Server::stall_limit`](crate::Server::stall_limit),
//! [`Server::hang_limit`](crate::Server::hang_limit)) or `UNWEDGE_STALL_LIMIT`,
//! `UNWEDGE_HANG_LIMIT` (`2s`, `500ms`, or seconds); the environment wins.
//!
//! A request counts as completed when its response head is ready (a streaming body is not
//! watched).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Method, Request, Uri};
use sd_notify::NotifyState;
use tower::Service;

use crate::health::{self, HealthState};
use crate::serve::notify::{one_line, Notifier};

/// The default stall limit: a runtime that does not run the canary task (or a poll that does
/// not return) for this long is wedged.
pub const DEFAULT_STALL_LIMIT: Duration = Duration::from_secs(2);

/// The default hang limit: requests in flight, none completed for this long, is wedged.
pub const DEFAULT_HANG_LIMIT: Duration = Duration::from_secs(10);

/// How often the watchdog thread looks.
const TICK: Duration = Duration::from_millis(10);

const SRC_STALL: &str = "watchdog:stall";
const SRC_BLOCKED: &str = "watchdog:blocked";
const SRC_NO_PROGRESS: &str = "watchdog:no-progress";

/// Nanoseconds since a process-wide base instant; never 0 (0 means "not set").
fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    base.elapsed().as_nanos() as u64 + 1
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// The requests in flight, for the no-progress and blocked-poll checks.
#[derive(Debug)]
pub(crate) struct Tracker {
    next_id: AtomicU64,
    inflight: Mutex<HashMap<u64, Arc<Slot>>>,
    completed: AtomicU64,
    last_completion: AtomicU64,
}

#[derive(Debug)]
struct Slot {
    started: u64,
    /// When the current poll began; 0 when not being polled.
    polling_since: AtomicU64,
    method: Method,
    uri: Uri,
}

impl Slot {
    fn label(&self) -> String {
        format!("{} {}", self.method, self.uri.path())
    }
}

impl Tracker {
    pub(crate) fn new() -> Self {
        Tracker {
            next_id: AtomicU64::new(0),
            inflight: Mutex::new(HashMap::new()),
            completed: AtomicU64::new(0),
            last_completion: AtomicU64::new(now_ns()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Slot>>> {
        // Critical sections here are single map operations: poison carries no meaning.
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Requests in flight now.
    pub(crate) fn in_flight(&self) -> usize {
        self.lock().len()
    }

    fn begin<B>(self: &Arc<Self>, req: &Request<B>) -> Guard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            started: now_ns(),
            polling_since: AtomicU64::new(0),
            method: req.method().clone(),
            uri: req.uri().clone(),
        });
        self.lock().insert(id, slot.clone());
        Guard {
            tracker: self.clone(),
            id,
            slot,
        }
    }
}

struct Guard {
    tracker: Arc<Tracker>,
    id: u64,
    slot: Arc<Slot>,
}

impl Guard {
    fn complete(self) {
        self.tracker.completed.fetch_add(1, Ordering::Relaxed);
        self.tracker
            .last_completion
            .store(now_ns(), Ordering::Relaxed);
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.tracker.lock().remove(&self.id);
    }
}

/// Tower middleware recording each request in the [`Tracker`].
#[derive(Debug, Clone)]
pub(crate) struct Tracked<S> {
    inner: S,
    tracker: Arc<Tracker>,
}

impl<S> Tracked<S> {
    pub(crate) fn new(inner: S, tracker: Arc<Tracker>) -> Self {
        Tracked { inner, tracker }
    }
}

impl<S, B> Service<Request<B>> for Tracked<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let guard = self.tracker.begin(&req);
        TrackedFuture {
            inner: self.inner.call(req),
            guard: Some(guard),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Tracked`].
    pub(crate) struct TrackedFuture<F> {
        #[pin]
        inner: F,
        guard: Option<Guard>,
    }
}

impl<F: Future> Future for TrackedFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let guard = this
            .guard
            .as_ref()
            .expect("TrackedFuture polled after completion");
        guard.slot.polling_since.store(now_ns(), Ordering::Relaxed);
        let out = this.inner.poll(cx);
        guard.slot.polling_since.store(0, Ordering::Relaxed);
        if out.is_ready() {
            if let Some(g) = this.guard.take() {
                g.complete();
            }
        }
        out
    }
}

/// What the watchdog thread watches and how.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) stall_limit: Duration,
    pub(crate) hang_limit: Duration,
    /// Exit with 70 after being wedged this long.
    pub(crate) abort_after: Option<Duration>,
    /// Send `WATCHDOG=1` this often (half of `WATCHDOG_USEC`).
    pub(crate) heartbeat: Option<Duration>,
    /// A requested crash that has not exited after this long is forced (the runtime may be
    /// unable to finish it).
    pub(crate) crash_backstop: Duration,
    /// `STATUS=` text while healthy.
    pub(crate) serving_on: String,
}

/// A running watchdog; [`Watchdog::stop`] ends its thread.
#[derive(Debug)]
pub(crate) struct Watchdog {
    stop: Arc<AtomicBool>,
    canary: tokio::task::JoinHandle<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Starts the canary task (on the current runtime) and the watchdog thread.
    pub(crate) fn start(cfg: Config, tracker: Arc<Tracker>, notifier: Arc<Notifier>) -> Self {
        let beat = Arc::new(AtomicU64::new(now_ns()));
        let period =
            (cfg.stall_limit / 8).clamp(Duration::from_millis(1), Duration::from_millis(20));
        let canary = tokio::spawn({
            let beat = beat.clone();
            async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    beat.store(now_ns(), Ordering::Relaxed);
                }
            }
        });
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("unwedge-watchdog".into())
            .spawn({
                let stop = stop.clone();
                move || run(cfg, tracker, notifier, beat, stop)
            })
            .expect("spawning the watchdog thread");
        Watchdog {
            stop,
            canary,
            thread: Some(thread),
        }
    }

    /// Stops the canary and the thread, and waits for the thread.
    pub(crate) fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.canary.abort();
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

fn run(
    cfg: Config,
    tracker: Arc<Tracker>,
    notifier: Arc<Notifier>,
    beat: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    let stall_ns = cfg.stall_limit.as_nanos() as u64;
    let hang_ns = cfg.hang_limit.as_nanos() as u64;
    let mut health_rx = health::subscribe();
    let mut last_status: Option<(HealthState, Option<String>)> = None;
    let mut next_beat = Instant::now();
    let mut beats_paused = false;
    let mut wedged_since: Option<Instant> = None;
    let mut crash_since: Option<Instant> = None;
    let mut flags = [false; 3];

    while !stop.load(Ordering::Relaxed) {
        let now = now_ns();

        // 1. Runtime stall: the canary did not run.
        let silent = now.saturating_sub(beat.load(Ordering::Relaxed));
        set(
            &mut flags[0],
            SRC_STALL,
            (silent > stall_ns).then(|| {
                format!(
                    "runtime stalled: the canary task has not run for {:.1}s (limit {:?})",
                    secs(silent),
                    cfg.stall_limit
                )
            }),
        );

        // 2 and 3. Blocked polls and no progress, from the requests in flight.
        let (blocked, stuck) = {
            let map = tracker.lock();
            let mut blocked: Option<(u64, &Arc<Slot>)> = None;
            let mut oldest: Option<&Arc<Slot>> = None;
            for slot in map.values() {
                let since = slot.polling_since.load(Ordering::Relaxed);
                if since != 0 {
                    let d = now.saturating_sub(since);
                    if d > stall_ns && blocked.map_or(true, |(b, _)| d > b) {
                        blocked = Some((d, slot));
                    }
                }
                if oldest.map_or(true, |o| slot.started < o.started) {
                    oldest = Some(slot);
                }
            }
            let blocked = blocked.map(|(d, slot)| {
                format!(
                    "{} has blocked a runtime thread for {:.1}s (limit {:?}): blocking code in async",
                    slot.label(),
                    secs(d),
                    cfg.stall_limit
                )
            });
            let idle = now.saturating_sub(tracker.last_completion.load(Ordering::Relaxed));
            let stuck = oldest.and_then(|o| {
                let age = now.saturating_sub(o.started);
                (age > hang_ns && idle > hang_ns).then(|| {
                    format!(
                        "no progress: {} requests in flight, none completed for {:.1}s (limit {:?}); oldest {} for {:.1}s",
                        map.len(),
                        secs(idle),
                        cfg.hang_limit,
                        o.label(),
                        secs(age)
                    )
                })
            });
            (blocked, stuck)
        };
        set(&mut flags[1], SRC_BLOCKED, blocked);
        set(&mut flags[2], SRC_NO_PROGRESS, stuck);

        // STATUS= on every change of state or reason.
        let (state, reason) = health_rx.borrow_and_update().clone();
        if last_status.as_ref() != Some(&(state, reason.clone())) {
            if last_status.is_some() {
                notifier.status(&status_text(state, reason.as_deref(), &cfg.serving_on));
            }
            last_status = Some((state, reason.clone()));
        }

        // Heartbeats only while live.
        if let Some(every) = cfg.heartbeat {
            let at = Instant::now();
            if at >= next_beat {
                if state.is_live() {
                    if beats_paused {
                        tracing::info!("health is {state} again: WATCHDOG=1 heartbeats resume");
                        beats_paused = false;
                    }
                    notifier.send(&[NotifyState::Watchdog]);
                } else if !beats_paused {
                    tracing::warn!(state = %state, "WATCHDOG=1 heartbeats stopped while not healthy");
                    beats_paused = true;
                }
                next_beat = at + every;
            }
        }

        // abort_when_wedged.
        if state == HealthState::Wedged {
            let since = *wedged_since.get_or_insert_with(Instant::now);
            if let Some(after) = cfg.abort_after {
                if since.elapsed() >= after {
                    let why = reason.as_deref().unwrap_or("wedged");
                    tracing::error!(
                        reason = why,
                        "wedged for {after:?}: exiting with code 70 (abort_when_wedged)"
                    );
                    notifier.status(&format!("aborting: wedged for {after:?}: {why}"));
                    crate::serve::exit_now(70);
                }
            }
        } else {
            wedged_since = None;
        }

        // A graceful crash that the runtime cannot finish (a blocked thread) is forced.
        if health::crash_reason().is_some() {
            let since = *crash_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= cfg.crash_backstop {
                tracing::error!(
                    "graceful crash did not finish in {:?}: exiting with code 70",
                    cfg.crash_backstop
                );
                crate::serve::exit_now(70);
            }
        }

        // Parked rather than slept, so that `stop` does not wait for the tick.
        std::thread::park_timeout(TICK);
    }
}

fn set(flag: &mut bool, source: &str, reason: Option<String>) {
    match reason {
        // The first reason stands until the cause clears: no STATUS= storm of growing ages.
        Some(r) if !*flag => {
            health::set_wedged(source, r);
            *flag = true;
        }
        Some(_) => {}
        None if *flag => {
            health::clear_wedged(source);
            *flag = false;
        }
        None => {}
    }
}

/// The `STATUS=` text for a health state.
pub(crate) fn status_text(state: HealthState, reason: Option<&str>, serving_on: &str) -> String {
    one_line(&match (state, reason) {
        (HealthState::Healthy, _) => format!("healthy: serving on {serving_on}"),
        (s, Some(r)) => format!("{s}: {r}"),
        (s, None) => s.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn tracked_requests_are_in_flight_until_they_complete() {
        let tracker = Arc::new(Tracker::new());
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let released = Arc::new(tokio::sync::Mutex::new(Some(released)));
        let svc = Tracked::new(
            tower::service_fn(move |_req: Request<()>| {
                let released = released.clone();
                async move {
                    if let Some(rx) = released.lock().await.take() {
                        let _ = rx.await;
                    }
                    Ok::<_, std::convert::Infallible>("done")
                }
            }),
            tracker.clone(),
        );
        let call = tokio::spawn(svc.oneshot(Request::get("/wait").body(()).unwrap()));
        while tracker.in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(tracker.completed.load(Ordering::Relaxed), 0);
        release.send(()).unwrap();
        assert_eq!(call.await.unwrap().unwrap(), "done");
        assert_eq!(tracker.in_flight(), 0);
        assert_eq!(tracker.completed.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_cancelled_request_leaves_the_tracker_without_counting_as_progress() {
        let tracker = Arc::new(Tracker::new());
        let svc = Tracked::new(
            tower::service_fn(|_req: Request<()>| async {
                std::future::pending::<Result<(), std::convert::Infallible>>().await
            }),
            tracker.clone(),
        );
        let fut = svc.oneshot(Request::get("/never").body(()).unwrap());
        let timed_out = tokio::time::timeout(Duration::from_millis(10), fut).await;
        assert!(timed_out.is_err());
        assert_eq!(tracker.in_flight(), 0);
        assert_eq!(tracker.completed.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn status_text_is_one_line() {
        assert_eq!(
            status_text(HealthState::Healthy, None, "127.0.0.1:1"),
            "healthy: serving on 127.0.0.1:1"
        );
        assert_eq!(
            status_text(HealthState::Wedged, Some("a\nb"), "x"),
            "wedged: a b"
        );
    }
}
