//! Supervised background tasks: a panic is reported and handled by the process-wide
//! [`Policy`](crate::Policy) instead of vanishing into a dropped `JoinHandle`.
//!
//! ```no_run
//! # #[tokio::main] async fn main() {
//! use std::time::Duration;
//!
//! let cleanup = unwedge::spawn("cleanup", || async {
//!     loop {
//!         tokio::time::sleep(Duration::from_secs(60)).await;
//!         // purge expired sessions…
//!     }
//! });
//! println!("cleanup restarted {} times", cleanup.restarts());
//! # }
//! ```

use std::any::Any;
use std::fmt;
use std::future::{poll_fn, Future};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::task::{JoinError, JoinHandle};

use crate::panic::context::{self, Captured, Scope};
use crate::panic::{decide, emit, policy, Action, PanicReport};

/// The first restart delay; it doubles after each panic, up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The longest restart delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A run at least this long resets the delay to [`MIN_BACKOFF`].
pub const STABLE_RUN: Duration = Duration::from_secs(10);

/// How a supervised task ended.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use unwedge::task::TaskExit;
/// unwedge::panic::set_policy(unwedge::Policy::Crash);
/// let handle = unwedge::task::spawn_once("import", async { panic!("bad row") });
/// let exit = handle.await.unwrap();
/// assert!(matches!(&exit, TaskExit::Escalated(why) if why.starts_with("panic in task import")));
/// assert!(unwedge::health::crash_reason().is_some());
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskExit {
    /// The future returned: the task is done and is not restarted.
    Finished,
    /// The future panicked and the policy decided to crash the process
    /// ([`request_crash`](crate::health::request_crash) was called with this reason); the task
    /// is not restarted.
    Escalated(String),
}

#[derive(Debug, Default)]
struct Stats {
    restarts: AtomicU64,
    panics: AtomicU64,
}

/// Spawns a supervised background task on the current Tokio runtime.
///
/// `make` creates the task's future; it is called again to restart the task after a panic,
/// so the task starts from a clean slate each time (state to keep across restarts lives
/// outside, e.g. in a [`Tx`](crate::Tx)). When the future panics:
///
/// 1. a [`PanicReport`] with `task: Some(name)` goes to the `tracing` event, the
///    [process-wide sinks](crate::panic::add_sink) and [`health`](crate::health()) (route
///    `task NAME`);
/// 2. the process-wide [`policy`] decides: under `Recover` and `Auto`
///    the task is restarted after a delay ([`MIN_BACKOFF`] doubling up to [`MAX_BACKOFF`],
///    reset after a run of [`STABLE_RUN`]); under `Crash`, or under `Auto` when the panic
///    poisoned a [`Mutex`](crate::Mutex), a crash is requested and the task ends with
///    [`TaskExit::Escalated`]. (The request panic budget does not apply to tasks: the
///    backoff paces them.)
///
/// A future that returns ends the task ([`TaskExit::Finished`]). Dropping the handle detaches
/// the task, like a `JoinHandle`.
///
/// # Panics
/// Outside a Tokio runtime, like [`tokio::spawn`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::sync::Arc;
///
/// let runs = Arc::new(AtomicU32::new(0));
/// let handle = unwedge::spawn("flaky", {
///     let runs = runs.clone();
///     move || {
///         let runs = runs.clone();
///         async move {
///             if runs.fetch_add(1, Ordering::SeqCst) == 0 {
///                 panic!("first run fails");
///             }
///         }
///     }
/// });
/// assert_eq!(handle.await.unwrap(), unwedge::task::TaskExit::Finished);
/// assert_eq!(runs.load(Ordering::SeqCst), 2);
/// # }
/// ```
pub fn spawn<F, Fut>(name: impl Into<Arc<str>>, make: F) -> TaskHandle
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    spawn_inner(name.into(), make, true)
}

/// Like [`spawn`], for a future that cannot be re-created: a panic is reported and handled by
/// the policy the same way, but the task is not restarted (it ends with
/// [`TaskExit::Escalated`] under a crash decision, [`TaskExit::Finished`] otherwise).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let handle = unwedge::task::spawn_once("warmup", async { /* fill caches */ });
/// assert_eq!(handle.await.unwrap(), unwedge::task::TaskExit::Finished);
/// # }
/// ```
pub fn spawn_once<Fut>(name: impl Into<Arc<str>>, fut: Fut) -> TaskHandle
where
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut fut = Some(fut);
    spawn_inner(
        name.into(),
        move || fut.take().expect("a one-shot task is not restarted"),
        false,
    )
}

fn spawn_inner<F, Fut>(name: Arc<str>, mut make: F, restart: bool) -> TaskHandle
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    crate::panic::install();
    let stats = Arc::new(Stats::default());
    let join = tokio::spawn({
        let (name, stats) = (name.clone(), stats.clone());
        async move {
            let scope = Scope::new(format!("task {name}"));
            let mut backoff = MIN_BACKOFF;
            loop {
                let started = Instant::now();
                let (captured, payload) = match run_once(&scope, &mut make).await {
                    Ran::Finished => return TaskExit::Finished,
                    // Its work is done: not run again, but its drop's panic is reported and
                    // decided as any other of the task's.
                    Ran::DropPanicked((captured, payload)) => {
                        stats.panics.fetch_add(1, Ordering::Relaxed);
                        return match on_panic(&name, captured, payload) {
                            Some(reason) => TaskExit::Escalated(reason),
                            None => TaskExit::Finished,
                        };
                    }
                    Ran::Panicked(caught) => caught,
                };
                stats.panics.fetch_add(1, Ordering::Relaxed);
                if let Some(reason) = on_panic(&name, captured, payload) {
                    return TaskExit::Escalated(reason);
                }
                if !restart {
                    return TaskExit::Finished;
                }
                if started.elapsed() >= STABLE_RUN {
                    backoff = MIN_BACKOFF;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                stats.restarts.fetch_add(1, Ordering::Relaxed);
                tracing::info!(target: "unwedge::task", task = %name, "restarting task after panic");
            }
        }
    });
    TaskHandle { name, stats, join }
}

type Caught = (Captured, Box<dyn Any + Send>);

/// How one run of a task's future ended.
enum Ran {
    Finished,
    /// It returned, and then its drop panicked (a hand-written future's field).
    DropPanicked(Caught),
    /// `make` or a poll panicked.
    Panicked(Caught),
}

/// Creates and runs the future once, catching a panic in `make`, in any poll or in its drop.
async fn run_once<F, Fut>(scope: &Arc<Scope>, make: &mut F) -> Ran
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let made = context::with_scope(scope, || catch_unwind(AssertUnwindSafe(&mut *make)));
    let mut fut = match made {
        Ok(fut) => Box::pin(fut),
        Err(payload) => return Ran::Panicked((context::take_for(&*payload), payload)),
    };
    let outcome = poll_fn(|cx| {
        let polled = context::with_scope(scope, || {
            catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx)))
        });
        match polled {
            Ok(Poll::Ready(())) => {
                // A poison by a panic the task caught itself: decided now.
                context::settle_caught();
                Poll::Ready(Ok(()))
            }
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(payload)),
        }
    })
    .await;
    // A panicking `Drop` must not take the supervisor down with it.
    let drop_fut =
        move || context::with_scope(scope, || catch_unwind(AssertUnwindSafe(move || drop(fut))));
    match outcome {
        Ok(()) => match drop_fut() {
            Ok(()) => Ran::Finished,
            Err(payload) => Ran::DropPanicked((context::take_for(&*payload), payload)),
        },
        Err(payload) => {
            // The future dropped first, as the unwinding would have (see
            // `context::drop_after_panic`): a guard a hand-written one holds poisons its mutex,
            // in this panic's capture. A `Drop` that panics adds a capture of its own, whose
            // poisons `take_for` merges into this panic's.
            let dropped = context::drop_after_panic(drop_fut);
            let captured = context::take_for(&*payload);
            if let Err(second) = dropped {
                let _ = catch_unwind(AssertUnwindSafe(move || drop(second)));
            }
            Ran::Panicked((captured, payload))
        }
    }
}

/// Reports a task's panic and applies the process-wide policy; `Some(reason)` when it decided
/// to crash.
fn on_panic(name: &str, captured: Captured, payload: Box<dyn Any + Send>) -> Option<String> {
    let message = context::payload_message(&*payload);
    let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
    let mut report = PanicReport::from_captured(captured);
    if report.message != message {
        report.message = message;
    }
    report.task = Some(name.to_owned());
    let decision = decide(policy(), &report.rolled_back, &report.poisoned, None);
    let crash = (decision.action == Action::Crash)
        .then(|| format!("panic in task {name}: {}", decision.reason));
    report.decision = Some(decision);
    emit(&report, &[], &format!("task {name}"));
    if let Some(reason) = &crash {
        crate::health::request_crash(reason.clone());
    }
    crash
}

/// A handle to a task started by [`spawn`]: its restart count, and a future resolving to how
/// it ended.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let handle = unwedge::spawn("report", || async { /* send the daily report */ });
/// assert_eq!(handle.name(), "report");
/// assert_eq!(handle.await.unwrap(), unwedge::task::TaskExit::Finished);
/// # }
/// ```
pub struct TaskHandle {
    name: Arc<str>,
    stats: Arc<Stats>,
    join: JoinHandle<TaskExit>,
}

impl TaskHandle {
    /// The task's name.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let handle = unwedge::spawn("cleanup", std::future::pending);
    /// assert_eq!(handle.name(), "cleanup");
    /// # }
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many times the task was restarted after a panic.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let mut first = true;
    /// let mut handle = unwedge::spawn("flaky", move || {
    ///     let fail = std::mem::take(&mut first);
    ///     async move { if fail { panic!("first run fails") } }
    /// });
    /// (&mut handle).await.unwrap(); // restarted once, then finished
    /// assert_eq!(handle.restarts(), 1);
    /// # }
    /// ```
    pub fn restarts(&self) -> u64 {
        self.stats.restarts.load(Ordering::Relaxed)
    }

    /// How many times the task panicked.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let mut handle = unwedge::task::spawn_once("warmup", async { panic!("cache down") });
    /// (&mut handle).await.unwrap();
    /// assert_eq!(handle.panics(), 1);
    /// assert_eq!(handle.restarts(), 0); // a one-shot task is not restarted
    /// # }
    /// ```
    pub fn panics(&self) -> u64 {
        self.stats.panics.load(Ordering::Relaxed)
    }

    /// Whether the task has ended.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let mut handle = unwedge::spawn("listener", std::future::pending);
    /// assert!(!handle.is_finished());
    /// handle.abort();
    /// let _ = (&mut handle).await;
    /// assert!(handle.is_finished());
    /// # }
    /// ```
    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }

    /// Cancels the task (awaiting the handle then gives a cancelled `JoinError`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let handle = unwedge::spawn("poller", std::future::pending);
    /// handle.abort();
    /// assert!(handle.await.unwrap_err().is_cancelled());
    /// # }
    /// ```
    pub fn abort(&self) {
        self.join.abort();
    }
}

impl fmt::Debug for TaskHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle")
            .field("name", &self.name)
            .field("restarts", &self.restarts())
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl Future for TaskHandle {
    type Output = Result<TaskExit, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.join).poll(cx)
    }
}
