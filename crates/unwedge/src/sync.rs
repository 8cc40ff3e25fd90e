//! [`Mutex<T>`]: an async mutex with robust-mutex semantics, for state that cannot be copied.
//!
//! See [`Mutex`] for which lock to use when, and `docs/state.md` for a longer guide.

use std::error::Error;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::panic::Location;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, SystemTime};

use crate::panic::context;

mod waits;

pub(crate) use waits::LockInfo;
use waits::{check_limit, relock};
#[cfg(not(unwedge_loom))] // for `Tx`'s writer-wait watch
pub(crate) use waits::{current_thread_key, default_wait_limit, round_ms, thread_label};

/// An async mutual-exclusion lock that a panic cannot wedge, and that tells when it is stuck.
///
/// # Which one should you use?
///
/// | state | use | a panic in the section… |
/// | --- | --- | --- |
/// | can be cloned cheaply (small struct, [`imbl`](https://docs.rs/imbl) map) | [`Tx<T>`](crate::Tx) | rolls the update back; nothing to repair, the service keeps serving |
/// | cannot be copied (connection, file, big buffer), or sections must `.await` | **`unwedge::Mutex<T>`** | releases the lock and *poisons* it: the next `lock()` gets a [`PoisonError`] saying what happened, and can repair |
/// | plain data, no `.await` in sections, you accept std's poisoning | [`std::sync::Mutex`] | poisons, with no report of the panic and no wait watchdog |
/// | you accept that a panic may leave the data half-updated | [`tokio::sync::Mutex`] | releases the lock silently over whatever was half-written |
///
/// Prefer [`Tx`](crate::Tx) whenever the state can be copied: it has no poison to handle, its
/// reads never wait, and a cancelled request cannot leave it half-updated.
///
/// # What it guarantees
///
/// - **A panic never wedges it.** A [`MutexGuard`] dropped while its thread panics releases
///   the lock and poisons the mutex (like POSIX's robust mutexes and `std`'s poisoning). The
///   next [`lock`](Mutex::lock) returns `Err(`[`PoisonError`]`)` holding the guard: the lock is
///   yours, the error says which request or task panicked, where and with which message
///   (when unwedge's [panic hook](crate::install) is installed), and
///   [`into_inner`](PoisonError::into_inner) lets you repair the data, then
///   [`clear_poison`](Mutex::clear_poison). Under the default [`Policy`](crate::Policy) the
///   [`PanicLayer`](crate::PanicLayer) learns of the poisoning and crashes the process
///   gracefully, since the data may be half-updated.
/// - **Long waits are reported.** A `lock()` that waits longer than its *wait limit* (see
///   [`wait_limit`](Mutex::wait_limit), default 10 s, process-wide default in
///   [`set_default_wait_limit`]) logs which request or task holds the lock and since when, and
///   marks the process [`Wedged`](crate::HealthState::Wedged) until the wait ends. The wait
///   itself goes on; use [`lock_timeout`](Mutex::lock_timeout) to give up instead.
/// - **Deadlocks are reported at once.** When a wait closes a cycle between unwedge mutexes
///   (task A holds X and waits for Y while task B holds Y and waits for X), it is logged with
///   both holders and both locks and the process is marked wedged. Owners are tokio tasks
///   (or threads, outside tasks): two futures joined inside *one* task count as one owner, so
///   a cycle between them may be reported although one of them could still move; such a
///   report clears itself when the wait ends.
///
/// # Cancellation
///
/// A guard cannot tell "dropped because the section finished" from "dropped because the
/// request's future was dropped at an `.await`" (a client that went away). Neither is a
/// panic, so neither poisons: **a section cancelled at an `.await` releases the lock over
/// whatever it had written so far.** Two ways to make a section all-or-nothing:
///
/// - write the data in a synchronous block: there is no `.await` inside it, so no cancellation
///   can stop it halfway (a panic still can, and poisons);
/// - or turn the guard into a [`CommitGuard`] with
///   [`commit_or_poison`](MutexGuard::commit_or_poison): dropped without
///   [`commit`](CommitGuard::commit) (cancelled, or an early `return`/`?`), it poisons the mutex,
///   so the next `lock()` knows the data may be half-updated instead of trusting it.
///
/// # Examples
///
/// The seed's comments, with its out-of-range bug, no longer hang the server:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::sync::Arc;
/// let comments = Arc::new(unwedge::Mutex::named("comments", Vec::<String>::new()));
///
/// let c = comments.clone();
/// let crashed = tokio::spawn(async move {
///     let list = c.lock().await.unwrap();
///     let _last = &list[list.len()]; // Oops... happens to all of us.
/// }).await;
/// assert!(crashed.is_err());
///
/// // Not a deadlock: the lock is free, and poisoned.
/// let err = comments.lock().await.unwrap_err();
/// assert!(err.to_string().contains("comments"));
/// let mut list = err.into_inner(); // the lock is ours: check, repair…
/// list.clear();
/// comments.clear_poison(); // …and declare it sound again
/// drop(list);
/// assert!(comments.lock().await.is_ok());
/// # }
/// ```
pub struct Mutex<T: ?Sized> {
    info: Arc<LockInfo>,
    /// Poisoned: read on every lock, so kept here, next to the lock, rather than behind
    /// `info` (measured: +3–4 ns per uncontended lock); `info` has a copy for the rare
    /// readers (see `LockInfo::is_poisoned`).
    poisoned: AtomicBool,
    poison: StdMutex<Option<Arc<PoisonInfo>>>,
    data: tokio::sync::Mutex<T>,
}

/// The result of [`Mutex::lock`]: the guard, or the guard wrapped in a [`PoisonError`].
pub type LockResult<G> = Result<G, PoisonError<G>>;

/// Sets the wait limit of every [`Mutex`] that has no limit of its own (see
/// [`Mutex::wait_limit`]), and for a [`Tx`](crate::Tx) writer waiting for another's update.
/// The default is 10 seconds. Applies to waits in progress too.
///
/// # Panics
///
/// Panics when `limit` is zero or longer than a day (almost surely a unit mix-up).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// unwedge::sync::set_default_wait_limit(Duration::from_secs(2));
/// ```
pub fn set_default_wait_limit(limit: Duration) {
    if let Err(e) = check_limit(limit) {
        panic!("unwedge::sync::set_default_wait_limit: {e}");
    }
    waits::set_default_wait_limit(limit);
}

impl<T> Mutex<T> {
    /// Creates an unlocked mutex named `"mutex"`.
    ///
    /// # Examples
    ///
    /// ```
    /// let m = unwedge::Mutex::new(5);
    /// assert_eq!(m.name(), "mutex");
    /// ```
    pub fn new(value: T) -> Self {
        Self::named("mutex", value)
    }

    /// Creates an unlocked mutex with a name that appears in poison errors, panic reports,
    /// wait and deadlock reports, and logs.
    ///
    /// # Examples
    ///
    /// ```
    /// let m = unwedge::Mutex::named("db", ());
    /// assert_eq!(m.name(), "db");
    /// ```
    pub fn named(name: impl Into<Arc<str>>, value: T) -> Self {
        Mutex {
            info: Arc::new(LockInfo::new(name.into())),
            poisoned: AtomicBool::new(false),
            poison: StdMutex::new(None),
            data: tokio::sync::Mutex::new(value),
        }
    }

    /// Sets how long a [`lock`](Mutex::lock) may wait before it is reported (logged with the
    /// holder, and the process marked wedged while the wait lasts). Without it, the
    /// process-wide default applies ([`set_default_wait_limit`], 10 s unless changed).
    ///
    /// # Panics
    ///
    /// Panics when `limit` is zero or longer than a day: a limit of zero would report every
    /// wait, and one of days would report none (a unit mix-up, most likely).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let m = unwedge::Mutex::named("db", ()).wait_limit(Duration::from_millis(500));
    /// ```
    pub fn wait_limit(self, limit: Duration) -> Self {
        if let Err(e) = check_limit(limit) {
            panic!("unwedge::Mutex::wait_limit on `{}`: {e}", self.info.name);
        }
        let nanos = u64::try_from(limit.as_nanos()).expect("checked: at most a day");
        self.info.wait_limit_nanos.store(nanos, Ordering::Relaxed);
        self
    }
}

impl<T: ?Sized> Mutex<T> {
    /// The name given at construction.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(unwedge::Mutex::named("cache", 0).name(), "cache");
    /// ```
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// Locks the mutex, waiting as long as it takes.
    ///
    /// Returns `Err(`[`PoisonError`]`)` when a holder panicked (or a [`CommitGuard`] was dropped
    /// uncommitted) and the poison was not cleared since; the error holds the guard all the
    /// same, so the lock is yours either way. A wait longer than the
    /// [wait limit](Mutex::wait_limit) is reported; a wait that closes a deadlock is reported
    /// at once. Waiters are served first come, first served.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future while it waits leaves the lock as it was (free, or
    /// held by its holder), gives up the place in the queue, and clears any wedge the wait
    /// had caused. Dropping the *guard* is a different matter; see
    /// [Cancellation](Mutex#cancellation).
    ///
    /// # Examples
    ///
    /// What to write instead of `lock().expect("mutex was poisoned")`:
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let m = unwedge::Mutex::named("counter", 0u64);
    /// let mut n = match m.lock().await {
    ///     Ok(guard) => guard,
    ///     Err(poisoned) => {
    ///         tracing::error!(%poisoned, "repairing");
    ///         let mut guard = poisoned.into_inner();
    ///         *guard = 0; // restore an invariant
    ///         m.clear_poison();
    ///         guard
    ///     }
    /// };
    /// *n += 1;
    /// # }
    /// ```
    pub async fn lock(&self) -> LockResult<MutexGuard<'_, T>> {
        if let Ok(guard) = self.data.try_lock() {
            return self.acquired(guard, false);
        }
        let wait = waits::begin_wait(&self.info);
        let guard = self.data.lock().await;
        drop(wait);
        self.acquired(guard, true)
    }

    /// Locks the mutex, giving up after `timeout` with an error that names the holder.
    ///
    /// # Errors
    ///
    /// - [`LockError::TimedOut`] when the lock was not free within `timeout`; it says who
    ///   held it and for how long.
    /// - [`LockError::Poisoned`] when the lock was acquired but is poisoned (holding the guard).
    /// - [`LockError::InvalidTimeout`] at once when `timeout` is zero (use
    ///   [`try_lock`](Mutex::try_lock)) or longer than a day (almost surely a unit mix-up).
    ///
    /// # Panics
    ///
    /// Panics when called outside a tokio runtime with the time driver enabled (like
    /// [`tokio::time::timeout`]).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`lock`](Mutex::lock).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::time::Duration;
    /// use unwedge::sync::LockError;
    /// let m = unwedge::Mutex::named("db", ());
    /// let _held = m.lock().await.unwrap();
    /// let outcome = m.lock_timeout(Duration::from_millis(10)).await;
    /// match outcome {
    ///     Err(LockError::TimedOut(t)) => assert!(t.to_string().contains("held by")),
    ///     _ => unreachable!(),
    /// }
    /// # }
    /// ```
    pub async fn lock_timeout(
        &self,
        timeout: Duration,
    ) -> Result<MutexGuard<'_, T>, LockError<MutexGuard<'_, T>>> {
        if let Err(reason) = check_limit(timeout) {
            return Err(LockError::InvalidTimeout(InvalidTimeout {
                lock: self.info.name.clone(),
                timeout,
                reason,
            }));
        }
        if let Ok(guard) = self.data.try_lock() {
            return self.acquired(guard, false).map_err(LockError::Poisoned);
        }
        let wait = waits::begin_wait(&self.info);
        let outcome = tokio::time::timeout(timeout, self.data.lock()).await;
        drop(wait);
        match outcome {
            Ok(guard) => self.acquired(guard, true).map_err(LockError::Poisoned),
            Err(_) => {
                let held = self.info.holder_now();
                Err(LockError::TimedOut(TimedOut {
                    lock: self.info.name.clone(),
                    waited: timeout,
                    holder: held.as_ref().map(|h| h.label.clone()),
                    held_for: held.as_ref().map(|h| h.held),
                    held_exact: held.is_some_and(|h| h.exact),
                }))
            }
        }
    }

    /// Locks the mutex if it is free right now, without waiting.
    ///
    /// # Errors
    ///
    /// [`TryLockError::WouldBlock`] when it is held (or others wait for it), and
    /// [`TryLockError::Poisoned`] (holding the guard) when it was free but poisoned.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use unwedge::sync::TryLockError;
    /// let m = unwedge::Mutex::new(1);
    /// let held = m.try_lock().unwrap();
    /// assert!(matches!(m.try_lock(), Err(TryLockError::WouldBlock)));
    /// drop(held);
    /// assert!(m.try_lock().is_ok());
    /// # }
    /// ```
    pub fn try_lock(&self) -> Result<MutexGuard<'_, T>, TryLockError<MutexGuard<'_, T>>> {
        match self.data.try_lock() {
            Ok(guard) => self.acquired(guard, false).map_err(TryLockError::Poisoned),
            Err(_) => Err(TryLockError::WouldBlock),
        }
    }

    /// Whether the mutex is poisoned: a holder panicked, or a [`CommitGuard`] was dropped
    /// without commit, and [`clear_poison`](Mutex::clear_poison) was not called since.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(!unwedge::Mutex::new(0).is_poisoned());
    /// ```
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// What poisoned the mutex, if it is poisoned.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(unwedge::Mutex::new(0).poison_info().is_none());
    /// ```
    pub fn poison_info(&self) -> Option<Arc<PoisonInfo>> {
        relock(&self.poison).clone()
    }

    /// Declares the data sound again after a repair: later locks succeed. Call it while
    /// holding the guard that [`PoisonError::into_inner`] gave you, once the invariants hold.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let m = unwedge::Mutex::new(0);
    /// m.clear_poison(); // clearing a healthy mutex does nothing
    /// assert!(m.lock().await.is_ok());
    /// # }
    /// ```
    pub fn clear_poison(&self) {
        let mut poison = relock(&self.poison);
        if poison.take().is_some() {
            tracing::info!(lock = %self.info.name, "mutex poison cleared");
        }
        self.info.poisoned.store(false, Ordering::Release);
        self.poisoned.store(false, Ordering::Release);
    }

    fn acquired<'a>(
        &'a self,
        guard: tokio::sync::MutexGuard<'a, T>,
        waited: bool,
    ) -> LockResult<MutexGuard<'a, T>> {
        let generation = self.info.acquired(waited);
        let guard = MutexGuard {
            lock: self,
            guard,
            generation,
            taken: Taken::now(),
        };
        if self.poisoned.load(Ordering::Acquire) {
            let info = self.poison_info().unwrap_or_else(|| {
                // Poisoned and cleared between the two loads: report it all the same.
                Arc::new(PoisonInfo::unknown(self.info.name.clone()))
            });
            Err(PoisonError { guard, info })
        } else {
            Ok(guard)
        }
    }

    fn poison(&self, info: PoisonInfo) {
        tracing::error!(lock = %self.info.name, "{}", crate::text::Escaped(&info.to_string()));
        // Both flags under the lock, as `clear_poison` clears them: they never disagree.
        let mut poison = relock(&self.poison);
        *poison = Some(Arc::new(info));
        // A new poisoning only from sound: one poisoned again before a repair is still the
        // first one's to decide (review: counting it dropped that decision).
        if !self.info.poisoned.load(Ordering::Acquire) {
            self.info.poisonings.fetch_add(1, Ordering::AcqRel);
        }
        self.info.poisoned.store(true, Ordering::Release);
        self.poisoned.store(true, Ordering::Release);
    }
}

impl<T: Default> Default for Mutex<T> {
    fn default() -> Self {
        Mutex::new(T::default())
    }
}

impl<T> From<T> for Mutex<T> {
    fn from(value: T) -> Self {
        Mutex::new(value)
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Mutex");
        d.field("name", &&*self.info.name);
        match self.data.try_lock() {
            Ok(inner) => d.field("data", &&*inner),
            Err(_) => d.field("data", &format_args!("<locked>")),
        };
        d.field("poisoned", &self.is_poisoned());
        d.finish()
    }
}

/// Exclusive access to the data of a [`Mutex`]; the lock is released when it is dropped.
///
/// Dropped while its thread panics, it poisons the mutex (and tells the panic's report).
///
/// # Examples
///
/// ```
/// use std::panic::{catch_unwind, AssertUnwindSafe};
/// let m = unwedge::Mutex::named("hits", 0);
/// *m.try_lock().unwrap() += 1; // the guard is dropped at the `;`: unlocked
/// assert_eq!(*m.try_lock().unwrap(), 1);
///
/// let _ = catch_unwind(AssertUnwindSafe(|| {
///     let _hits = m.try_lock().unwrap();
///     panic!("mid-section");
/// }));
/// assert!(m.is_poisoned()); // dropped while its thread panicked
/// ```
#[must_use = "if unused the Mutex will immediately unlock"]
pub struct MutexGuard<'a, T: ?Sized> {
    lock: &'a Mutex<T>,
    guard: tokio::sync::MutexGuard<'a, T>,
    /// Which acquisition of `lock` this is (see `LockInfo::acquired`).
    generation: u64,
    /// What was going on when it was taken (see [`Taken`]).
    taken: Taken,
}

/// When a guard was taken, in one word (a guard is moved through `lock()`'s future, and two
/// fields of its own cost the uncontended lock ~8 ns): [`context::panics_started`] then, the
/// panic that breaks its section off started later (an older capture on the thread is of a
/// panic caught by someone else); and, in the top bit, whether its thread was already
/// panicking (a `Drop` cleaning up during unwinding: released during that same unwinding, its
/// section did not break off, as with std's `Mutex`).
#[derive(Clone, Copy)]
struct Taken(u64);

impl Taken {
    const DURING_PANIC: u64 = 1 << 63;

    #[inline]
    fn now() -> Self {
        let during = if context::panicking() {
            Self::DURING_PANIC
        } else {
            0
        };
        Taken(context::panics_started() & !Self::DURING_PANIC | during)
    }

    fn during_panic(self) -> bool {
        self.0 & Self::DURING_PANIC != 0
    }

    fn panics_before(self) -> u64 {
        self.0 & !Self::DURING_PANIC
    }
}

impl<'a, T: ?Sized> MutexGuard<'a, T> {
    /// Makes the rest of the section all-or-nothing under cancellation: the returned guard
    /// poisons the mutex when it is dropped without [`commit`](CommitGuard::commit), for
    /// example because the request's future was dropped at an `.await` while the data was
    /// half-updated.
    ///
    /// A poisoned mutex is decided as a panic would be, by the policy of the request's
    /// [`PanicLayer`](crate::PanicLayer) when it was given one
    /// ([`with_policy`](crate::PanicLayer::with_policy)), otherwise by the process-wide
    /// [policy](crate::panic::policy): under the default `Auto` (and `Crash`) it is a
    /// graceful restart of the process. A section left uncommitted therefore costs the process, not only the request:
    /// a client that disconnects while its request is inside the section, a timeout that drops
    /// the handler's future there (tower-http's `TimeoutLayer`), or a `?` that returns
    /// between the first write and `commit()`, restarts the worker. Keep the section short,
    /// do what can fail before `lock()` when the order allows, and prefer
    /// [`Tx::update`](crate::Tx::update) for updates that need no `.await`. Under `Recover` the
    /// mutex stays poisoned for the next `lock()` to repair.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let accounts = unwedge::Mutex::named("accounts", [100i64, 0]);
    /// let mut section = accounts.lock().await.unwrap().commit_or_poison();
    /// section[0] -= 10;
    /// // … an `.await` here could be cancelled: the mutex would then be poisoned …
    /// section[1] += 10;
    /// section.commit();
    /// assert!(!accounts.is_poisoned());
    /// # }
    /// ```
    #[track_caller]
    pub fn commit_or_poison(self) -> CommitGuard<'a, T> {
        CommitGuard {
            guard: Some(self),
            started: Location::caller(),
        }
    }

    /// The mutex this guard belongs to.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let m = unwedge::Mutex::named("m", 0);
    /// let g = m.lock().await.unwrap();
    /// assert_eq!(unwedge::MutexGuard::mutex(&g).name(), "m");
    /// # }
    /// ```
    pub fn mutex(this: &Self) -> &'a Mutex<T> {
        this.lock
    }
}

impl<T: ?Sized> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T: ?Sized> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

impl<T: ?Sized> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        // Everything here happens before the `guard` field is dropped, i.e. before the lock
        // is released: the next holder sees the poison.
        if !self.taken.during_panic() && context::panicking() {
            let (message, location) = match context::peek_message_since(self.taken.panics_before())
            {
                Some((m, l)) => (Some(m), l),
                None => (None, None),
            };
            self.lock.poison(PoisonInfo {
                lock: self.lock.info.name.clone(),
                holder: self.lock.info.holder_label(self.generation),
                message,
                location,
                at: SystemTime::now(),
                cause: PoisonCause::Panic,
            });
            if context::current_scope().is_some() {
                // The panic layer or `spawn` catching this panic decides (its own policy).
                context::record_poison(&self.lock.info);
            } else {
                // A panic nobody of ours will catch (a plain `tokio::spawn` task, a thread):
                // the process-wide policy decides here.
                escalate_poison(&self.lock.info.name, "a panic outside any request or task");
            }
        }
        self.lock.info.released(self.generation);
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: ?Sized + fmt::Display> fmt::Display for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&**self, f)
    }
}

/// A [`MutexGuard`] whose section must end with [`commit`](CommitGuard::commit); dropped
/// without it (cancelled at an `.await`, an early return, a panic), it poisons the mutex.
/// Made by [`MutexGuard::commit_or_poison`].
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Duration;
/// let accounts = unwedge::Mutex::named("accounts", [100i64, 0]);
/// let transfer = async {
///     let mut section = accounts.lock().await.unwrap().commit_or_poison();
///     section[0] -= 10;
///     std::future::pending::<()>().await; // a slow call, cancelled by the timeout below
///     section[1] += 10;
///     section.commit();
/// };
/// assert!(tokio::time::timeout(Duration::from_millis(10), transfer).await.is_err());
/// assert!(accounts.is_poisoned()); // the next `lock()` knows the data is half-updated
/// # }
/// ```
#[must_use = "dropping a CommitGuard without commit() poisons the Mutex"]
pub struct CommitGuard<'a, T: ?Sized> {
    guard: Option<MutexGuard<'a, T>>,
    started: &'static Location<'static>,
}

impl<'a, T: ?Sized> CommitGuard<'a, T> {
    /// Ends the section: the data is consistent again. Returns the plain guard, still
    /// holding the lock; drop it to unlock.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let m = unwedge::Mutex::new(vec![1]);
    /// let mut section = m.lock().await.unwrap().commit_or_poison();
    /// section.push(2);
    /// let guard = section.commit();
    /// assert_eq!(*guard, [1, 2]);
    /// # }
    /// ```
    pub fn commit(mut self) -> MutexGuard<'a, T> {
        self.guard
            .take()
            .expect("a CommitGuard holds its guard until commit")
    }
}

impl<T: ?Sized> Deref for CommitGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.guard
            .as_ref()
            .expect("a CommitGuard holds its guard until commit")
    }
}

impl<T: ?Sized> DerefMut for CommitGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.guard
            .as_mut()
            .expect("a CommitGuard holds its guard until commit")
    }
}

impl<T: ?Sized> Drop for CommitGuard<'_, T> {
    fn drop(&mut self) {
        let Some(guard) = &self.guard else { return };
        if context::panicking() && !guard.taken.during_panic() {
            // The guard's own drop poisons, with the panic's message. (A section that began
            // during this unwinding, a cleanup, is not broken off by it: left uncommitted, it
            // poisons here as any other.)
            return;
        }
        let holder = guard.lock.info.holder_label(guard.generation);
        guard.lock.poison(PoisonInfo {
            lock: guard.lock.info.name.clone(),
            holder,
            message: Some(
                "section dropped before commit() (cancelled at an .await, or left early)".into(),
            ),
            location: Some(format!(
                "{}:{}:{}",
                self.started.file(),
                self.started.line(),
                self.started.column()
            )),
            at: SystemTime::now(),
            cause: PoisonCause::Uncommitted,
        });
        escalate_poison(&guard.lock.info.name, "a section dropped before commit()");
    }
}

/// A mutex poisoned where no panic layer or [`spawn`](crate::spawn) decides (a section left
/// uncommitted, a panic in a plain thread or `tokio::spawn` task): the process-wide
/// [`policy`](crate::panic::policy) decides as it would for a caught panic. Auto and Crash ask
/// for a graceful crash (the health turns Tainted, `/livez` fails, `serve()` drains and exits
/// 70); Recover leaves the mutex poisoned for the next `lock()` to repair.
pub(crate) fn escalate_poison(name: &str, by: &str) {
    escalate_poison_in(name, by, context::current_scope().as_deref());
}

/// [`escalate_poison`] for a poison in `scope` (the request or task it happened in).
pub(crate) fn escalate_poison_in(name: &str, by: &str, scope: Option<&context::Scope>) {
    let poisoned = [name.to_owned()];
    // The policy of the request's layer when one was given to it, the process-wide one
    // otherwise (a task, a layer made with `PanicLayer::new()`).
    let policy = scope
        .and_then(|s| s.as_request().and_then(|r| r.policy()))
        .unwrap_or_else(crate::panic::policy);
    let decision = crate::panic::decide(policy, &[], &poisoned, None);
    if decision.action == crate::panic::Action::Crash {
        crate::health::request_crash(format!("mutex `{name}` poisoned by {by}"));
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for CommitGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommitGuard")
            .field("data", &&**self)
            .field("started", &self.started)
            .finish()
    }
}

/// Why a [`Mutex`] got poisoned.
///
/// # Examples
///
/// ```
/// use std::panic::{catch_unwind, AssertUnwindSafe};
/// use unwedge::sync::PoisonCause;
/// let m = unwedge::Mutex::named("cache", 0);
/// let _ = catch_unwind(AssertUnwindSafe(|| {
///     let _guard = m.try_lock().unwrap();
///     panic!("bug");
/// }));
/// assert_eq!(m.poison_info().unwrap().cause, PoisonCause::Panic);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoisonCause {
    /// A guard was dropped while its thread panicked.
    Panic,
    /// A [`CommitGuard`] was dropped without `commit()`.
    Uncommitted,
    /// Not known (poisoned and cleared concurrently).
    Unknown,
}

/// What is known of the event that poisoned a [`Mutex`].
///
/// # Examples
///
/// ```
/// use std::panic::{catch_unwind, AssertUnwindSafe};
/// unwedge::install(); // the panic hook: it captures the message
/// let m = unwedge::Mutex::named("cache", vec![0u8]);
/// let _ = catch_unwind(AssertUnwindSafe(|| {
///     let cache = m.try_lock().unwrap();
///     let _second = cache[1]; // out of bounds: panics
/// }));
/// let info = m.poison_info().unwrap();
/// assert_eq!(&*info.lock, "cache");
/// assert!(info.message.as_deref().unwrap().contains("index out of bounds"));
/// assert!(info.location.is_some());
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PoisonInfo {
    /// The mutex's name.
    pub lock: Arc<str>,
    /// The request or task that held the lock: `GET /comments (task 12)`, `task 12`,
    /// `thread 'main'`.
    pub holder: Option<String>,
    /// The panic's message (known when unwedge's [panic hook](crate::install) is installed),
    /// or why an uncommitted section poisoned it.
    pub message: Option<String>,
    /// Where it panicked (`file:line:column`), or where the uncommitted section began.
    pub location: Option<String>,
    /// When.
    pub at: SystemTime,
    /// Panic or uncommitted section.
    pub cause: PoisonCause,
}

/// `PoisonInfo` is the `'static` error of a poisoned lock ([`PoisonError::into_info`]).
impl Error for PoisonInfo {}

impl PoisonInfo {
    fn unknown(lock: Arc<str>) -> Self {
        PoisonInfo {
            lock,
            holder: None,
            message: None,
            location: None,
            at: SystemTime::now(),
            cause: PoisonCause::Unknown,
        }
    }
}

impl fmt::Display for PoisonInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mutex `{}` poisoned: ", self.lock)?;
        let holder = self.holder.as_deref().unwrap_or("its holder");
        match self.cause {
            PoisonCause::Panic => write!(f, "{holder} panicked while holding it")?,
            PoisonCause::Uncommitted => write!(f, "{holder} left a section uncommitted")?,
            PoisonCause::Unknown => write!(f, "cause unknown")?,
        }
        if let Some(location) = &self.location {
            write!(f, " at {location}")?;
        }
        match (&self.message, self.cause) {
            (Some(message), _) => write!(f, ": {message}"),
            (None, PoisonCause::Panic) => {
                write!(
                    f,
                    " (message unknown: install unwedge's panic hook to capture it)"
                )
            }
            (None, _) => Ok(()),
        }
    }
}

/// A lock was acquired, but the mutex is poisoned: a holder panicked (or left a
/// [`CommitGuard`] uncommitted), so the data may be half-updated.
///
/// The lock *is* held: [`into_inner`](PoisonError::into_inner) gives the guard to repair the
/// data, then [`Mutex::clear_poison`].
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let orders = unwedge::Mutex::named("orders", vec![1, 2]);
/// orders.lock().await.unwrap().commit_or_poison(); // dropped uncommitted: poisoned
/// let err = orders.lock().await.unwrap_err();
/// assert!(err.to_string().starts_with("mutex `orders` poisoned"));
/// let mut list = err.into_inner(); // the lock is held all the same
/// list.retain(|&n| n > 0); // repair
/// orders.clear_poison();
/// # }
/// ```
pub struct PoisonError<G> {
    guard: G,
    info: Arc<PoisonInfo>,
}

impl<G> PoisonError<G> {
    /// The guard, to inspect and repair the data.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let m = unwedge::Mutex::new(vec![1, 2]);
    /// m.lock().await.unwrap().commit_or_poison(); // dropped uncommitted: poisoned
    /// let mut list = m.lock().await.unwrap_err().into_inner();
    /// list.clear(); // repair
    /// m.clear_poison();
    /// # }
    /// ```
    pub fn into_inner(self) -> G {
        self.guard
    }

    /// A reference to the guard.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let m = unwedge::Mutex::new(7);
    /// m.lock().await.unwrap().commit_or_poison(); // dropped uncommitted: poisoned
    /// let err = m.lock().await.unwrap_err();
    /// assert_eq!(**err.get_ref(), 7);
    /// # }
    /// ```
    pub fn get_ref(&self) -> &G {
        &self.guard
    }

    /// A mutable reference to the guard.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let m = unwedge::Mutex::new(7);
    /// m.lock().await.unwrap().commit_or_poison(); // dropped uncommitted: poisoned
    /// let mut err = m.lock().await.unwrap_err();
    /// **err.get_mut() = 0;
    /// # }
    /// ```
    pub fn get_mut(&mut self) -> &mut G {
        &mut self.guard
    }

    /// What poisoned the mutex: holder, message, location.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let m = unwedge::Mutex::named("m", 0);
    /// m.lock().await.unwrap().commit_or_poison(); // dropped uncommitted
    /// let err = m.lock().await.unwrap_err();
    /// assert_eq!(err.info().cause, unwedge::sync::PoisonCause::Uncommitted);
    /// # }
    /// ```
    pub fn info(&self) -> &PoisonInfo {
        &self.info
    }

    /// What poisoned the mutex, without the guard (the lock is released): an error that
    /// borrows nothing, for `?` in a function returning `Box<dyn Error + Send + Sync>`,
    /// `anyhow::Result` or any error type built from a `'static` error. A `PoisonError` itself
    /// borrows the mutex through its guard, so it cannot leave a function that holds the mutex
    /// only by a local `Arc`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use unwedge::PoisonError;
    ///
    /// async fn add(
    ///     comments: Arc<unwedge::Mutex<Vec<String>>>,
    ///     text: String,
    /// ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    ///     let mut list = comments.lock().await.map_err(PoisonError::into_info)?;
    ///     list.push(text);
    ///     Ok(())
    /// }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let comments = Arc::new(unwedge::Mutex::named("comments", Vec::new()));
    /// add(comments.clone(), "first".into()).await.unwrap();
    /// comments.lock().await.unwrap().commit_or_poison(); // dropped uncommitted: poisoned
    /// let err = add(comments, "second".into()).await.unwrap_err();
    /// assert!(err.to_string().starts_with("mutex `comments` poisoned"), "{err}");
    /// # }
    /// ```
    pub fn into_info(self) -> Arc<PoisonInfo> {
        self.info
    }
}

impl<G> fmt::Debug for PoisonError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoisonError")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl<G> fmt::Display for PoisonError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.info, f)
    }
}

impl<G> Error for PoisonError<G> {}

/// The error of [`Mutex::try_lock`].
///
/// # Examples
///
/// ```
/// use unwedge::sync::TryLockError;
/// let m = unwedge::Mutex::new(0);
/// let held = m.try_lock().unwrap();
/// assert!(matches!(m.try_lock(), Err(TryLockError::WouldBlock))); // busy: come back later
/// held.commit_or_poison(); // dropped uncommitted: poisoned
/// assert!(matches!(m.try_lock(), Err(TryLockError::Poisoned(_))));
/// ```
#[non_exhaustive]
pub enum TryLockError<G> {
    /// Acquired, but poisoned; holds the guard.
    Poisoned(PoisonError<G>),
    /// Held by someone else (or others are already waiting for it).
    WouldBlock,
}

impl<G> fmt::Debug for TryLockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryLockError::Poisoned(p) => f.debug_tuple("Poisoned").field(p).finish(),
            TryLockError::WouldBlock => f.write_str("WouldBlock"),
        }
    }
}

impl<G> fmt::Display for TryLockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryLockError::Poisoned(p) => fmt::Display::fmt(p, f),
            TryLockError::WouldBlock => f.write_str("mutex is held"),
        }
    }
}

impl<G> Error for TryLockError<G> {}

/// The error of [`Mutex::lock_timeout`].
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Duration;
/// use unwedge::sync::LockError;
/// let db = unwedge::Mutex::named("db", ());
/// let _held = db.lock().await.unwrap();
/// let status = match db.lock_timeout(Duration::from_millis(10)).await {
///     Ok(_guard) => 200,
///     Err(LockError::TimedOut(_)) => 503, // busy: the client may retry
///     Err(_) => 500,
/// };
/// assert_eq!(status, 503);
/// # }
/// ```
#[non_exhaustive]
pub enum LockError<G> {
    /// Acquired, but poisoned; holds the guard.
    Poisoned(PoisonError<G>),
    /// Not acquired within the timeout.
    TimedOut(TimedOut),
    /// The timeout was zero or longer than a day; nothing was attempted.
    InvalidTimeout(InvalidTimeout),
}

impl<G> fmt::Debug for LockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::Poisoned(p) => f.debug_tuple("Poisoned").field(p).finish(),
            LockError::TimedOut(t) => f.debug_tuple("TimedOut").field(t).finish(),
            LockError::InvalidTimeout(i) => f.debug_tuple("InvalidTimeout").field(i).finish(),
        }
    }
}

impl<G> fmt::Display for LockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::Poisoned(p) => fmt::Display::fmt(p, f),
            LockError::TimedOut(t) => fmt::Display::fmt(t, f),
            LockError::InvalidTimeout(i) => fmt::Display::fmt(i, f),
        }
    }
}

impl<G> Error for LockError<G> {}

/// [`Mutex::lock_timeout`] gave up: the lock was held for longer than the timeout.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Duration;
/// use unwedge::sync::LockError;
/// let db = unwedge::Mutex::named("db", ());
/// let _held = db.lock().await.unwrap();
/// let Err(LockError::TimedOut(t)) = db.lock_timeout(Duration::from_millis(10)).await else {
///     unreachable!("held above")
/// };
/// assert_eq!((&*t.lock, t.waited), ("db", Duration::from_millis(10)));
/// assert!(t.holder.is_some()); // who to blame, in the log
/// # }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TimedOut {
    /// The mutex's name.
    pub lock: Arc<str>,
    /// How long the call waited.
    pub waited: Duration,
    /// Who held it when the call gave up (`None`: just released, handed to an earlier waiter).
    pub holder: Option<String>,
    /// For how long the holder had held it: exactly when `held_exact`, otherwise at least
    /// (an uncontended acquisition does not read the clock; this counts from when a waiter
    /// first found it held).
    pub held_for: Option<Duration>,
    /// Whether `held_for` is exact.
    pub held_exact: bool,
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "gave up waiting for mutex `{}` after {}",
            self.lock,
            humantime::format_duration(self.waited)
        )?;
        match (&self.holder, self.held_for) {
            (Some(holder), Some(held)) => write!(
                f,
                ": held by {holder} for {}{}",
                if self.held_exact { "" } else { "at least " },
                humantime::format_duration(waits::round_ms(held))
            ),
            _ => write!(f, ": being handed to an earlier waiter"),
        }
    }
}

impl Error for TimedOut {}

/// [`Mutex::lock_timeout`] was given a timeout of zero or longer than a day.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Duration;
/// use unwedge::sync::LockError;
/// let db = unwedge::Mutex::named("db", ());
/// let Err(LockError::InvalidTimeout(e)) = db.lock_timeout(Duration::ZERO).await else {
///     unreachable!("a zero timeout is refused")
/// };
/// assert_eq!(e.timeout, Duration::ZERO);
/// assert!(db.try_lock().is_ok()); // nothing was attempted
/// # }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct InvalidTimeout {
    /// The mutex's name.
    pub lock: Arc<str>,
    /// The timeout given.
    pub timeout: Duration,
    reason: String,
}

impl fmt::Display for InvalidTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lock_timeout on mutex `{}`: {}", self.lock, self.reason)
    }
}

impl Error for InvalidTimeout {}
