//! [`Tx<T>`]: transactional state that a panic cannot leave half-updated.

use std::convert::Infallible;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use self::facade::{AtomicU64, Mutex, Published};
use crate::panic::context;

/// The concurrency primitives `Tx` is built on. Under `--cfg unwedge_loom` they are loom's, so
/// that `tests/loom_tx.rs` model-checks the writer lock and the publish step (the published
/// pointer is then a loom `RwLock<Arc<T>>`: loom cannot see inside arc-swap, whose lock-free
/// load is checked by arc-swap's own tests). Not `--cfg loom`: tokio changes under that one.
mod facade {
    #[cfg(unwedge_loom)]
    pub(super) use loom::sync::{atomic::AtomicU64, Mutex};
    #[cfg(not(unwedge_loom))]
    pub(super) use std::sync::{atomic::AtomicU64, Mutex};

    use std::sync::Arc;

    /// A borrowed version, as [`Snapshot`](super::Snapshot) holds it: arc-swap's guard (a
    /// debt slot, no reference count touched), or under loom a plain `Arc`.
    #[cfg(not(unwedge_loom))]
    pub(super) type Loaned<T> = arc_swap::Guard<Arc<T>>;
    #[cfg(unwedge_loom)]
    pub(super) type Loaned<T> = Arc<T>;

    #[cfg(not(unwedge_loom))]
    pub(super) fn into_arc<T>(loaned: Loaned<T>) -> Arc<T> {
        arc_swap::Guard::into_inner(loaned)
    }
    #[cfg(unwedge_loom)]
    pub(super) fn into_arc<T>(loaned: Loaned<T>) -> Arc<T> {
        loaned
    }

    /// The current version of the state, alone in its cache lines (128 bytes: adjacent-line
    /// prefetchers pair lines): the writer's own bookkeeping (its lock, counters) then does not
    /// take the readers' line away from them on every update.
    #[repr(align(128))]
    pub(super) struct Published<T>(
        #[cfg(not(unwedge_loom))] arc_swap::ArcSwap<T>,
        #[cfg(unwedge_loom)] loom::sync::RwLock<Arc<T>>,
    );

    #[cfg(not(unwedge_loom))]
    impl<T> Published<T> {
        pub(super) fn new(value: T) -> Self {
            Published(arc_swap::ArcSwap::from_pointee(value))
        }
        pub(super) fn load_full(&self) -> Arc<T> {
            self.0.load_full()
        }
        pub(super) fn load(&self) -> Loaned<T> {
            self.0.load()
        }
        /// Borrows the current version without touching its reference count.
        pub(super) fn with<R>(&self, f: impl FnOnce(&T) -> R) -> R {
            f(&self.0.load())
        }
        pub(super) fn swap(&self, value: Arc<T>) -> Arc<T> {
            self.0.swap(value)
        }
    }

    #[cfg(unwedge_loom)]
    impl<T> Published<T> {
        pub(super) fn new(value: T) -> Self {
            Published(loom::sync::RwLock::new(Arc::new(value)))
        }
        pub(super) fn load_full(&self) -> Arc<T> {
            self.0.read().expect("never poisoned").clone()
        }
        pub(super) fn load(&self) -> Loaned<T> {
            self.load_full()
        }
        pub(super) fn with<R>(&self, f: impl FnOnce(&T) -> R) -> R {
            f(&self.load_full())
        }
        pub(super) fn swap(&self, value: Arc<T>) -> Arc<T> {
            std::mem::replace(&mut *self.0.write().expect("never poisoned"), value)
        }
    }
}

/// Transactional state: readers get consistent snapshots, writers publish all or nothing.
///
/// # Which one should you use?
///
/// - **`Tx<T>`** when the state can be cloned (cheaply: small structs, or persistent
///   collections such as [`imbl`](https://docs.rs/imbl)'s `HashMap` whose clone is O(1) and
///   whose updates are O(log n)). A panic inside [`update`](Tx::update) drops the private copy:
///   the state is exactly as before (copy-then-swap, C++'s *strong guarantee*), so the
///   [`PanicLayer`](crate::PanicLayer) can keep serving. That holds only for data `T` owns:
///   a shared handle inside it is not rolled back (see *Shared handles* below).
/// - **[`Mutex<T>`](crate::Mutex)** when the state cannot be copied (a connection, a file, a
///   huge buffer). A panic inside the critical section poisons it and the process is crashed
///   gracefully under the default policy, because the data may be half-updated.
///
/// # What it guarantees
///
/// - [`load`](Tx::load) and [`read`](Tx::read) are lock-free (an
///   [`ArcSwap`](arc_swap::ArcSwap) load): readers never wait for writers and always see a
///   state that some `update` published completely. What a reader got stays unchanged
///   however many updates follow; it is the version that was current when it read.
/// - [`update`](Tx::update) runs its closure on a private clone and publishes the clone only
///   when the closure returns. If the closure (or `T::clone`) panics, nothing is published,
///   the panic keeps unwinding, and the rollback is recorded in the panic's
///   [`PanicReport`](crate::PanicReport) (`rolled_back`), which tells the policy the state is
///   clean (what `T` owns is; what it shares through a handle is not rolled back).
/// - **Writers are serialized**: concurrent updates run one after another on a short internal
///   lock, each on the latest state, so no update is ever lost and each closure runs exactly
///   once. Side effects inside the closure (sending a message, writing a file) are therefore
///   not repeated, but they are *not* rolled back either: keep them out of the closure, or do
///   them after it returns. The closure is synchronous on purpose: no `.await`, so neither a
///   cancelled future nor a slow client can stop it halfway. It blocks the calling thread
///   while it runs, like a `std::sync::Mutex` critical section would: keep it short.
///
/// # Shared handles are not rolled back
///
/// `update` copies the state with `T::clone` and the closure changes the copy. A field that
/// is a shared handle (an `Arc<std::sync::Mutex<_>>`, an `Arc<AtomicU64>`, a `DashMap`, a
/// channel, a connection pool, a file) is shared by the copy, not copied: a write through it
/// goes straight into the published state, readers see it while the update is still running,
/// and a panic does not undo it. The panic's report still names the `Tx` in `rolled_back`,
/// and the `Auto` policy keeps serving over state that is half-updated.
///
/// So `T` must own its data: its `Clone` copies it deeply, or copy-on-write does (`imbl`
/// collections, an `Arc<U>` field changed only through [`Arc::make_mut`]). Keep shared
/// handles, atomics, pools and channels outside the `Tx`, next to it; state that lives behind
/// such a handle belongs in an [`unwedge::Mutex`](crate::Mutex), which a panic poisons.
///
/// # Reading: `load()` or `read()`?
///
/// Both give the same consistent view; they differ in what they hand out.
///
/// - **[`load`](Tx::load)** lends a [`Snapshot`]: no reference count is touched, so it costs
///   about what [`ArcSwap::load`](arc_swap::ArcSwap::load) costs and does not slow down when
///   many threads read at once. Use it on the hot path for **short reads**: a handler that
///   reads a field or two and drops the snapshot.
/// - **[`read`](Tx::read)** returns an owned `Arc<T>`: one increment of a reference count
///   that all readers share (a few nanoseconds alone, tens when threads read at once). Use it
///   for **a snapshot you keep**: stored in a struct, held across a long `.await`, handed to
///   another task. (A snapshot becomes an `Arc` with [`Snapshot::into_arc`].)
///
/// # Examples
///
/// The seed's ByteCache, whose invariant a panic can no longer break:
///
/// ```
/// use std::collections::HashMap;
/// use unwedge::Tx;
///
/// #[derive(Clone, Default)]
/// struct ByteCache { curr_size: usize, entries: HashMap<String, Vec<u8>> }
///
/// let cache = Tx::named("bytecache", ByteCache::default());
/// let put = |key: &str, data: Vec<u8>| cache.update(|c| {
///     c.curr_size += data.len();
///     if key == "burn" { panic!("some programmers just want to watch the world burn") }
///     c.entries.insert(key.to_owned(), data);
/// });
/// put("watch", vec![0]);
/// put("it", vec![0]);
/// let burned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| put("burn", vec![0; 3])));
/// assert!(burned.is_err());
///
/// let snapshot = cache.load();
/// assert_eq!(snapshot.curr_size, 2); // not 5, as in the Go original
/// assert_eq!(snapshot.entries.len(), 2);
/// ```
///
/// Large state with a persistent map, O(1) clone:
///
/// ```
/// use unwedge::Tx;
/// let sessions: Tx<imbl::HashMap<u64, String>> = Tx::named("sessions", imbl::HashMap::new());
/// sessions.update(|m| { m.insert(1, "alice".into()); });
/// assert_eq!(sessions.read().get(&1).map(String::as_str), Some("alice"));
/// ```
pub struct Tx<T> {
    current: Published<T>,
    writer: Mutex<()>,
    /// Id of the thread inside `update` right now (0: none), to turn a nested update on the
    /// same `Tx` into a clear panic instead of a self-deadlock. Shared with the register of
    /// writers waiting ([`writer_waits`]), which follows it to find a cycle.
    writer_thread: Arc<AtomicU64>,
    name: Arc<str>,
    updates: AtomicU64,
    rollbacks: AtomicU64,
}

/// The calling thread's key (never 0), the same as the mutexes' wait register's, so that its
/// name is known by key for a wait's or a deadlock's message.
#[cfg(not(unwedge_loom))]
fn thread_token() -> u64 {
    crate::sync::current_thread_key()
}

#[cfg(unwedge_loom)]
fn thread_token() -> u64 {
    use std::cell::Cell;
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    loom::thread_local! { static TOKEN: Cell<u64> = Cell::new(0); }
    TOKEN.with(|t| {
        if t.get() == 0 {
            t.set(NEXT.fetch_add(1, Ordering::Relaxed));
        }
        t.get()
    })
}

impl<T> Tx<T> {
    /// Creates transactional state named `"tx"`.
    ///
    /// ```
    /// let counter = unwedge::Tx::new(0u64);
    /// assert_eq!(*counter.read(), 0);
    /// ```
    pub fn new(value: T) -> Self {
        Self::named("tx", value)
    }

    /// Creates transactional state with a name that appears in panic reports and metrics.
    ///
    /// ```
    /// let cache = unwedge::Tx::named("cache", vec![1, 2, 3]);
    /// assert_eq!(cache.name(), "cache");
    /// ```
    pub fn named(name: impl Into<Arc<str>>, value: T) -> Self {
        Tx {
            current: Published::new(value),
            writer: Mutex::new(()),
            writer_thread: Arc::new(AtomicU64::new(0)),
            name: name.into(),
            updates: AtomicU64::new(0),
            rollbacks: AtomicU64::new(0),
        }
    }

    /// The name given at construction.
    ///
    /// ```
    /// assert_eq!(unwedge::Tx::named("sessions", 0).name(), "sessions");
    /// assert_eq!(unwedge::Tx::new(0).name(), "tx");
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A consistent snapshot of the state, owned. Lock-free; the snapshot stays valid (and
    /// unchanged) however long it is kept, while later updates publish new versions.
    ///
    /// It costs one increment (and later decrement) of a reference count that all readers
    /// share. For a short read on the hot path, [`load`](Tx::load) avoids it; use `read` for a
    /// snapshot you keep.
    ///
    /// ```
    /// let tx = unwedge::Tx::new(vec![1]);
    /// let before = tx.read();
    /// tx.update(|v| v.push(2));
    /// assert_eq!(*before, [1]);
    /// assert_eq!(*tx.read(), [1, 2]);
    /// ```
    pub fn read(&self) -> Arc<T> {
        self.current.load_full()
    }

    /// A consistent snapshot of the state, borrowed: the fast path for short reads.
    ///
    /// Lock-free and consistent like [`read`](Tx::read), but it touches no reference count
    /// (the [`Snapshot`] takes one of the few debt slots arc-swap gives each thread), so it
    /// costs about what [`ArcSwap::load`](arc_swap::ArcSwap::load) costs, with one thread or
    /// many. Read what you need and drop it; for a snapshot you keep, use
    /// [`read`](Tx::read) (see [`Snapshot`] for why).
    ///
    /// ```
    /// #[derive(Clone, Default)]
    /// struct Config { limit: u32, name: String }
    ///
    /// let config = unwedge::Tx::new(Config { limit: 10, ..Default::default() });
    /// let allowed = |n: u32| n <= config.load().limit; // borrowed, dropped at once
    /// assert!(allowed(10));
    /// config.update(|c| c.limit = 5);
    /// assert!(!allowed(10));
    /// ```
    pub fn load(&self) -> Snapshot<T> {
        Snapshot(self.current.load())
    }

    /// Number of updates published so far.
    ///
    /// ```
    /// let tx = unwedge::Tx::new(0);
    /// tx.update(|n| *n += 1);
    /// let _ = tx.try_update(|n| if *n > 0 { Err("too big") } else { Ok(()) });
    /// assert_eq!(tx.updates(), 1); // the `Err` published nothing
    /// ```
    pub fn updates(&self) -> u64 {
        self.updates.load(Ordering::Relaxed)
    }

    /// Number of updates discarded so far (by a panic or an `Err`).
    ///
    /// ```
    /// let tx = unwedge::Tx::new(0);
    /// let _ = tx.try_update(|_| Err::<(), _>("refused"));
    /// let update = std::panic::AssertUnwindSafe(|| tx.update(|_| panic!("boom")));
    /// assert!(std::panic::catch_unwind(update).is_err());
    /// assert_eq!(tx.rollbacks(), 2);
    /// assert_eq!(*tx.read(), 0);
    /// ```
    pub fn rollbacks(&self) -> u64 {
        self.rollbacks.load(Ordering::Relaxed)
    }
}

impl<T: Clone> Tx<T> {
    /// Runs `f` on a private copy of the state and publishes the copy when `f` returns.
    ///
    /// If `f` panics the copy is dropped, the state is untouched, the rollback is recorded for
    /// the panic's report, and the panic continues to unwind. The copy is dropped after the
    /// unwind out of `f`, so a `Drop` of `T` that panics over the half-updated copy fails the
    /// update with its own panic instead of aborting the process.
    ///
    /// # Panics
    ///
    /// Panics (with a message naming the `Tx`) when called from inside another `update` of
    /// the same `Tx` on the same thread: that would deadlock, and the inner update would be
    /// overwritten by the outer one anyway. Panics too, naming each `Tx` and thread, when it
    /// would wait for a `Tx` whose writer waits, directly or through others, for a `Tx` this
    /// thread is updating (two threads nesting the same two `Tx`s in opposite orders): the
    /// update it is inside then rolls back and the other thread goes on. Re-raises any panic
    /// of `f` or of `T::clone`, and of `T`'s `Drop` of the copy (after `f` panicked) or of
    /// the version replaced (after the update was published and counted).
    ///
    /// ```
    /// let tx = unwedge::Tx::new(1);
    /// let doubled = tx.update(|n| { *n *= 2; *n });
    /// assert_eq!(doubled, 2);
    /// ```
    pub fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        match self.try_update(|state| Ok::<R, Infallible>(f(state))) {
            Ok(r) => r,
            Err(never) => match never {},
        }
    }

    /// Like [`update`](Tx::update), but publishes only when `f` returns `Ok`; an `Err` rolls
    /// the copy back like a panic would (and is returned).
    ///
    /// ```
    /// let balance = unwedge::Tx::new(10i64);
    /// let withdraw = |amount: i64| balance.try_update(|b| {
    ///     *b -= amount;
    ///     if *b < 0 { Err("insufficient funds") } else { Ok(*b) }
    /// });
    /// assert_eq!(withdraw(4), Ok(6));
    /// assert_eq!(withdraw(7), Err("insufficient funds"));
    /// assert_eq!(*balance.read(), 6);
    /// ```
    pub fn try_update<R, E>(&self, f: impl FnOnce(&mut T) -> Result<R, E>) -> Result<R, E> {
        let me = thread_token();
        if self.writer_thread.load(Ordering::Relaxed) == me {
            panic!(
                "nested Tx::update on `{}`: an update closure must not update the same Tx",
                self.name
            );
        }
        // The writer lock guards no data (the state is in `current`), so its poison means
        // nothing: a panicking update published nothing.
        #[cfg(not(unwedge_loom))]
        let _writer = match self.writer.try_lock() {
            Ok(writer) => writer,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => self.wait_for_writer(me),
        };
        #[cfg(unwedge_loom)]
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.writer_thread.store(me, Ordering::Relaxed);
        let mut attempt = Attempt {
            tx: self,
            done: false,
        };
        let mut copy = self.current.with(T::clone);
        // The dirty copy is dropped after the unwind out of `f`, not during it: a `T` whose
        // `Drop` panics over a half-updated value then fails this update like `f`'s own panic
        // would (the state untouched), where a panic in a destructor during unwinding aborts
        // the process.
        let out = match panic::catch_unwind(AssertUnwindSafe(|| f(&mut copy))) {
            Ok(out) => out,
            Err(payload) => {
                // The copy first, while this thread still marks the `Tx` as its own: a `Drop`
                // that updates the same `Tx` then panics as a nested update (it would wait for
                // this very update otherwise). The attempt records the rollback either way.
                drop(copy);
                drop(attempt);
                panic::resume_unwind(payload)
            }
        };
        attempt.done = true;
        match out {
            Ok(r) => {
                let old = self.current.swap(Arc::new(copy));
                self.updates.fetch_add(1, Ordering::Relaxed);
                // The old version is dropped (if no reader holds it) once the update is
                // committed, counted and its locks released: a `Drop` that panics there
                // fails the request, not the commit.
                drop(attempt);
                drop(_writer);
                drop(old);
                Ok(r)
            }
            Err(e) => {
                self.rollbacks.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }
}

#[cfg(not(unwedge_loom))]
impl<T> Tx<T> {
    /// Waits for the writer lock another thread holds, registered as waiting for it: when that
    /// wait would close a cycle (this thread, inside an update of `A`, waits for `B`, whose
    /// writer waits for `A`), panics instead, naming both, so that the update this thread is
    /// inside rolls back and lets the other go on.
    #[cold]
    fn wait_for_writer(&self, me: u64) -> std::sync::MutexGuard<'_, ()> {
        let _waiting = writer_waits::register(me, &self.writer_thread, &self.name);
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The threads waiting for a [`Tx`]'s writer lock, and for which: the graph a deadlock between
/// `Tx`s (two updates nesting the same two `Tx`s in opposite orders) is a cycle of. Only
/// writers that found the lock taken are in it, so an uncontended update never touches it.
///
/// Sound without stopping the other threads: it is read and changed under one lock; a thread
/// in it is blocked in the writer lock (or has just got it and waits for this register's lock
/// to leave it), so it releases none of the `Tx`s it holds meanwhile; and the thread that
/// gets a writer lock marks the `Tx` as its own only after leaving the register, so a `Tx`
/// just released reads as free (0), never as another thread's.
///
/// A wait longer than the mutexes' default wait limit
/// ([`set_default_wait_limit`](crate::sync::set_default_wait_limit), 10 s) turns the process
/// [`Wedged`](crate::HealthState::Wedged), naming the `Tx` and both threads, as a
/// [`Mutex`](crate::Mutex) wait does (a writer stuck behind an update that never ends: one
/// that waits for another thread updating the same `Tx`, say); the wedge clears when the wait
/// ends. A thread of its own, started at the first wait, watches.
#[cfg(not(unwedge_loom))]
mod writer_waits {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Condvar, Mutex, OnceLock};
    use std::time::{Duration, Instant};

    use crate::sync::thread_label;

    struct Waiting {
        thread: u64,
        /// The writer mark of the `Tx` it waits for.
        holder: Arc<AtomicU64>,
        tx: Arc<str>,
        since: Instant,
        /// The `health` wedge source, once the watch reported this wait as too long.
        wedged: Option<String>,
    }

    static WAITING: Mutex<Vec<Waiting>> = Mutex::new(Vec::new());
    /// Wakes the watch when a wait begins.
    static BEGUN: Condvar = Condvar::new();

    fn waiting() -> std::sync::MutexGuard<'static, Vec<Waiting>> {
        WAITING.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ensure_watch() {
        static STARTED: OnceLock<()> = OnceLock::new();
        STARTED.get_or_init(|| {
            let spawned = std::thread::Builder::new()
                .name("unwedge-tx-watch".into())
                .spawn(watch);
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the Tx writer-wait watch thread; long Tx waits will not be reported");
            }
        });
    }

    /// Reports each wait that passed the wait limit (once), sleeping until the next one is
    /// due, or until a wait begins.
    fn watch() {
        let mut all = waiting();
        loop {
            let limit = crate::sync::default_wait_limit();
            let now = Instant::now();
            let mut next: Option<Instant> = None;
            for w in all.iter_mut().filter(|w| w.wedged.is_none()) {
                let due = w.since + limit;
                if due > now {
                    next = Some(next.map_or(due, |n| n.min(due)));
                    continue;
                }
                let by = w.holder.load(Ordering::Relaxed);
                let holder = thread_label(by);
                let reason = format!(
                    "thread `{}` has waited {} for Tx `{}` (limit {}), whose update in thread `{holder}` has not ended",
                    thread_label(w.thread),
                    humantime::format_duration(crate::sync::round_ms(now - w.since)),
                    w.tx,
                    humantime::format_duration(limit)
                );
                tracing::warn!(tx = %w.tx, "{reason}");
                let source = format!("tx:{}:{}", w.tx, w.thread);
                // Under the register's lock, so that the wait's end cannot clear it first.
                crate::health::set_wedged(source.clone(), reason);
                w.wedged = Some(source);
            }
            // A wait begun wakes it; a limit changed meanwhile is seen within a second.
            all = if all.is_empty() {
                BEGUN.wait(all).unwrap_or_else(|p| p.into_inner())
            } else {
                let sleep = next.map_or(Duration::from_secs(1), |due| {
                    due.saturating_duration_since(now)
                        .min(Duration::from_secs(1))
                });
                BEGUN
                    .wait_timeout(all, sleep)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            };
        }
    }

    /// Leaves the register when dropped.
    pub(super) struct Registered(u64);

    impl Drop for Registered {
        fn drop(&mut self) {
            let mut all = waiting();
            if let Some(i) = all.iter().position(|w| w.thread == self.0) {
                let w = all.swap_remove(i);
                if let Some(source) = w.wedged {
                    tracing::info!(tx = %w.tx, "Tx writer wait over its limit has ended");
                    crate::health::clear_wedged(&source);
                }
            }
        }
    }

    /// Registers thread `me` as waiting for the `Tx` named `tx` whose writer mark is
    /// `holder`; panics, registering nothing, when that wait closes a cycle.
    pub(super) fn register(me: u64, holder: &Arc<AtomicU64>, tx: &Arc<str>) -> Registered {
        ensure_watch();
        let mut all = waiting();
        let was_empty = all.is_empty();
        // Follow the chain: who holds `tx`, what that thread waits for, who holds that, …
        // (a Tx waited for, the thread holding it)
        let mut chain: Vec<(&str, &Waiting)> = Vec::new();
        let (mut wanted, mut by) = (&**tx, holder.load(Ordering::Relaxed));
        for _ in 0..=all.len() {
            if by == 0 {
                break;
            }
            if by == me {
                let mut text = format!(
                    "deadlock between Tx updates: this thread (`{}`) waits for `{tx}`",
                    thread_label(me)
                );
                for (i, (_, holder)) in chain.iter().enumerate() {
                    let next = chain.get(i + 1).map_or(wanted, |c| c.0);
                    text.push_str(&format!(
                        ", held by thread `{}`, which waits for `{next}`",
                        thread_label(holder.thread)
                    ));
                }
                text.push_str(
                    ", held by this thread; this update panics (and rolls back) to break it. \
                     Nest updates of several Tx in one order everywhere",
                );
                drop(all);
                panic!("{text}");
            }
            let Some(w) = all.iter().find(|w| w.thread == by) else {
                break;
            };
            chain.push((wanted, w));
            (wanted, by) = (&w.tx, w.holder.load(Ordering::Relaxed));
        }
        all.push(Waiting {
            thread: me,
            holder: holder.clone(),
            tx: tx.clone(),
            since: Instant::now(),
            wedged: None,
        });
        drop(all);
        // The watch sleeps without a timeout only while nothing waits.
        if was_empty {
            BEGUN.notify_all();
        }
        Registered(me)
    }
}

/// A borrowed, consistent version of a [`Tx`]'s state, returned by [`Tx::load`].
///
/// It dereferences to `T` and shows the version that was current when `load` ran: later
/// updates publish new versions and leave this one unchanged, as with the `Arc` of
/// [`Tx::read`]. Its `Debug` output is the value's.
///
/// # Keep it short
///
/// Instead of incrementing the reference count that all readers share, a snapshot takes one
/// of a few *debt slots* that arc-swap gives each thread (currently 8), and gives it
/// back when dropped. That is what makes `load` cheap, and why a snapshot is meant for short
/// reads:
///
/// - While a thread holds more snapshots than it has slots (of any `Tx` or `ArcSwap`), its
///   further loads fall back to a reference count increment: still correct, just no faster
///   than `read`.
/// - An update that replaces the version a snapshot shows pays that snapshot's debt (one
///   reference count increment) on the writer's side.
///
/// So load, read a field or two, drop. For a snapshot you keep (stored in a struct, held
/// across a long `.await`, handed to another task), use [`Tx::read`], or turn the snapshot
/// into an owned `Arc` with [`into_arc`](Snapshot::into_arc).
///
/// # Threads and `.await`
///
/// `Snapshot<T>` is `Send` and `Sync` when `T` is `Send + Sync`, like `Arc<T>` (arc-swap's
/// `Guard` is; its debt slot is an atomic that any thread may release). A future that holds
/// one across an `.await` therefore stays `Send`, and the snapshot stays valid when the task
/// resumes on another worker thread. It occupies a slot of the thread that loaded it until
/// it is dropped, though, and other tasks on that thread then lose the fast path: across an
/// `.await` that may take long (a network call, a client's upload), hold an `Arc` from
/// [`Tx::read`] instead.
///
/// ```
/// use unwedge::{Snapshot, Tx};
///
/// let tx = Tx::new(vec![1, 2]);
/// let before: Snapshot<Vec<i32>> = tx.load();
/// tx.update(|v| v.push(3));
/// assert_eq!(*before, [1, 2]); // the version it was taken from
/// assert_eq!(before.len(), 2); // `Deref<Target = T>`
/// assert_eq!(format!("{before:?}"), "[1, 2]");
/// assert_eq!(*tx.load(), [1, 2, 3]);
/// ```
pub struct Snapshot<T>(facade::Loaned<T>);

impl<T> Snapshot<T> {
    /// Turns the snapshot into an owned `Arc<T>` (giving its debt slot back), for keeping it
    /// beyond a short read. Costs about what [`Tx::read`] costs (one reference count
    /// increment).
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// let tx = unwedge::Tx::new(String::from("v1"));
    /// let kept: Arc<String> = tx.load().into_arc();
    /// tx.update(|s| *s = "v2".into());
    /// assert_eq!(*kept, "v1");
    /// ```
    pub fn into_arc(self) -> Arc<T> {
        facade::into_arc(self.0)
    }
}

impl<T> std::ops::Deref for Snapshot<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: fmt::Debug> fmt::Debug for Snapshot<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

/// Clears the writer mark, and records a rollback when an update unwinds.
struct Attempt<'a, T> {
    tx: &'a Tx<T>,
    done: bool,
}

impl<T> Drop for Attempt<'_, T> {
    fn drop(&mut self) {
        self.tx.writer_thread.store(0, Ordering::Relaxed);
        if !self.done {
            self.tx.rollbacks.fetch_add(1, Ordering::Relaxed);
            context::record_rollback(&self.tx.name);
        }
    }
}

impl<T: Default> Default for Tx<T> {
    fn default() -> Self {
        Tx::new(T::default())
    }
}

impl<T: fmt::Debug> fmt::Debug for Tx<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tx")
            .field("name", &self.name)
            .field("value", &*self.current.load())
            .finish()
    }
}
