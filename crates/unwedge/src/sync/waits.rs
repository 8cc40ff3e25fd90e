//! Who holds which [`Mutex`](crate::Mutex), who waits for which: the process-wide wait-for
//! graph, the lock-wait watchdog thread, and deadlock detection.
//!
//! Holders are recorded on each mutex (atomic stores on acquire and release, see [`LockInfo`]);
//! waits are recorded here, in one global graph, only by `lock()` calls that had to wait. The
//! wait that closes a cycle (A holds X and waits for Y, B holds Y and waits for X) finds it
//! when it registers, so a deadlock is reported at once, not after a timeout.
//!
//! The watchdog is a plain OS thread, not a tokio timer: a holder that blocks the runtime's
//! threads must not be able to silence the report about itself.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex as StdMutex, MutexGuard as StdGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use crate::health;
use crate::panic::context::{self, Scope};

/// Longest accepted wait limit or lock timeout; anything longer is almost surely a unit mix-up.
pub(crate) const MAX_LIMIT: Duration = Duration::from_secs(24 * 60 * 60);

/// Locks a std mutex whose critical sections cannot panic halfway: its poison means nothing.
pub(super) fn relock<T>(m: &StdMutex<T>) -> StdGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Checks a wait limit or timeout: not zero, not longer than a day.
pub(super) fn check_limit(d: Duration) -> Result<(), String> {
    if d.is_zero() {
        Err(
            "a lock wait limit or timeout of 0 would fail every wait; use try_lock() for that"
                .into(),
        )
    } else if d > MAX_LIMIT {
        Err(format!(
            "a lock wait limit or timeout of {} is longer than the maximum of 24h; \
             a unit mix-up (ms vs s)?",
            humantime::format_duration(d)
        ))
    } else {
        Ok(())
    }
}

/// Who runs the code that locks: a tokio task, or (outside tasks, e.g. in `block_on`) a
/// thread, as one `u64` so that a lock can record its holder with plain atomic stores.
/// Tasks are their tokio id; threads have the top bit set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct OwnerKey(u64);

const THREAD_BIT: u64 = 1 << 63;

/// The number inside a tokio task id or a `ThreadId` (both hash as one `u64`; neither gives
/// it out on stable Rust).
fn raw_id(id: &impl Hash) -> u64 {
    #[derive(Default)]
    struct Capture(u64);
    impl Hasher for Capture {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 = self.0.rotate_left(8) ^ u64::from(*b);
            }
        }
        fn write_u64(&mut self, n: u64) {
            self.0 = n;
        }
    }
    let mut c = Capture::default();
    id.hash(&mut c);
    c.0
}

/// Names of the threads that have locked an unwedge mutex, for reports (a `ThreadId` alone
/// does not give the name to another thread).
fn thread_names() -> &'static StdMutex<HashMap<u64, String>> {
    static NAMES: OnceLock<StdMutex<HashMap<u64, String>>> = OnceLock::new();
    NAMES.get_or_init(Default::default)
}

struct ThreadKey(u64);

impl ThreadKey {
    fn register() -> ThreadKey {
        let me = std::thread::current();
        let key = THREAD_BIT | raw_id(&me.id());
        if let Some(name) = me.name() {
            relock(thread_names()).insert(key, name.to_owned());
        }
        ThreadKey(key)
    }
}

impl Drop for ThreadKey {
    fn drop(&mut self) {
        relock(thread_names()).remove(&self.0);
    }
}

thread_local! { static THREAD: ThreadKey = ThreadKey::register(); }

/// The calling thread's key (never 0), its name registered for [`thread_label`] while it
/// lives: what an [`OwnerKey`] outside tasks holds, and what marks a `Tx` as being updated
/// by this thread.
pub(crate) fn current_thread_key() -> u64 {
    THREAD
        .try_with(|t| t.0)
        .unwrap_or_else(|_| THREAD_BIT | raw_id(&std::thread::current().id()))
}

#[cfg(not(unwedge_loom))] // for `Tx`'s messages
/// `name #n` for the thread whose [`current_thread_key`] is `key` (`unnamed #n` for a thread
/// without a name or gone): numbered, since a runtime's threads share one name.
pub(crate) fn thread_label(key: u64) -> String {
    let name = relock(thread_names()).get(&key).cloned();
    format!(
        "{} #{}",
        name.as_deref().unwrap_or("unnamed"),
        key & !THREAD_BIT
    )
}

impl OwnerKey {
    pub(super) fn current() -> OwnerKey {
        match tokio::task::try_id() {
            Some(id) => OwnerKey(raw_id(&id) & !THREAD_BIT),
            None => OwnerKey(current_thread_key()),
        }
    }
}

impl fmt::Display for OwnerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 & THREAD_BIT == 0 {
            return write!(f, "task {}", self.0);
        }
        match relock(thread_names()).get(&self.0) {
            Some(name) => write!(f, "thread '{name}'"),
            None => write!(f, "thread {}", self.0 & !THREAD_BIT),
        }
    }
}

/// `GET /comments (request 3f2a…) (task 12)`, or `task 12`, or `thread 'main'`.
fn label(owner: OwnerKey, scope: Option<&Scope>) -> String {
    match scope {
        Some(scope) => format!("{} ({owner})", scope.label),
        None => owner.to_string(),
    }
}

/// Nanoseconds since the first call: an `Instant` that fits in an atomic. Never 0.
fn now_nanos() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX) | 1
}

/// The per-mutex part that the graph reads: name and current holder.
///
/// The holder is recorded with atomic stores only (no lock) on each acquisition: its owner,
/// and its scope (request or named task) only when that differs from the last one recorded.
/// Acquisitions are serialized by the mutex itself, so there is one writer at a time; readers
/// (waiters, the watchdog) may see a mix of two holders at the instant of a hand-over, which
/// is good enough for a report.
#[derive(Debug)]
pub(crate) struct LockInfo {
    pub(super) name: Arc<str>,
    /// The mutex is poisoned: a copy of the `Mutex`'s own flag, so that a panic's capture can
    /// tell later whether the app has repaired it since (see `context::settle_caught`).
    pub(super) poisoned: AtomicBool,
    /// Poisonings so far (set under the `Mutex`'s poison lock): a poison recorded for a
    /// panic is still that panic's while the mutex is poisoned and this has not moved on (the
    /// app repaired it and another panic poisoned it again: that one decides its own).
    pub(super) poisonings: AtomicU64,
    /// Acquisitions so far; the holder fields belong to acquisition `generation`.
    generation: AtomicU64,
    /// The generation of the last release: the lock is held while `generation` is newer.
    released: AtomicU64,
    owner: AtomicU64,
    /// When it was acquired (`now_nanos`), for locks that had to wait; 0 otherwise: an
    /// uncontended acquisition does not read the clock (that would double the cost of a
    /// lock). The first waiter that finds the lock held fills in `noticed` instead, and
    /// reports say "for at least".
    since: AtomicU64,
    noticed: AtomicU64,
    /// Address of the scope in `scope` (0: none), to skip the lock when it is unchanged.
    scope_addr: AtomicUsize,
    /// The scope (request or task) of the latest holder. Weak: a mutex must not keep a request
    /// that has ended alive (its id and headers can pin a whole connection read buffer of the
    /// server's). A holder's scope lives while it holds the lock, unless the guard was moved
    /// out of its request (into a plain `tokio::spawn`, a static): reports then name the
    /// holder's task or thread only.
    scope: StdMutex<Option<Weak<Scope>>>,
    /// Wait limit in nanoseconds; 0: the process-wide default.
    pub(super) wait_limit_nanos: AtomicU64,
}

/// Who holds a mutex right now, as reports show it.
#[derive(Debug, Clone)]
pub(super) struct HeldBy {
    pub(super) owner: OwnerKey,
    pub(super) label: String,
    pub(super) held: Duration,
    /// `false`: acquired without waiting, `held` counts from when a waiter first noticed.
    pub(super) exact: bool,
}

impl HeldBy {
    /// `for 1.2s`, or `for at least 1.2s`.
    pub(super) fn held_for(&self) -> String {
        let d = humantime::format_duration(round_ms(self.held));
        if self.exact {
            format!("for {d}")
        } else {
            format!("for at least {d}")
        }
    }
}

impl LockInfo {
    pub(super) fn new(name: Arc<str>) -> Self {
        LockInfo {
            name,
            poisoned: AtomicBool::new(false),
            poisonings: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            released: AtomicU64::new(0),
            owner: AtomicU64::new(0),
            since: AtomicU64::new(0),
            noticed: AtomicU64::new(0),
            scope_addr: AtomicUsize::new(0),
            scope: StdMutex::new(None),
            wait_limit_nanos: AtomicU64::new(0),
        }
    }

    /// The mutex's name.
    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Whether the mutex is poisoned now.
    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// Which poisoning the mutex is at (a count): with [`LockInfo::still_poisoned_by`], tells
    /// a poison recorded now from a later one.
    pub(crate) fn poisoning(&self) -> u64 {
        self.poisonings.load(Ordering::Acquire)
    }

    /// Whether the mutex is still poisoned by the poisoning `stamp` ([`LockInfo::poisoning`]
    /// when it was recorded): not repaired since, nor repaired and poisoned again.
    pub(crate) fn still_poisoned_by(&self, stamp: u64) -> bool {
        self.is_poisoned() && self.poisoning() == stamp
    }

    pub(super) fn wait_limit(&self) -> Duration {
        match self.wait_limit_nanos.load(Ordering::Relaxed) {
            0 => default_wait_limit(),
            n => Duration::from_nanos(n),
        }
    }

    /// Records the current task or thread as the holder; returns the acquisition's
    /// generation, to hand to [`released`](Self::released). Call only while holding the lock.
    pub(super) fn acquired(&self, waited: bool) -> u64 {
        let owner = OwnerKey::current();
        let scope = context::current_scope();
        let addr = scope.as_ref().map_or(0, |s| Arc::as_ptr(s) as usize);
        if self.scope_addr.load(Ordering::Relaxed) != addr {
            // The slot keeps its scope's allocation (not its contents) alive, so an equal
            // address is the same scope.
            let weak = scope.as_ref().map(Arc::downgrade);
            let previous = std::mem::replace(&mut *relock(&self.scope), weak);
            self.scope_addr.store(addr, Ordering::Relaxed);
            drop(previous);
        }
        self.owner.store(owner.0, Ordering::Relaxed);
        self.since
            .store(if waited { now_nanos() } else { 0 }, Ordering::Relaxed);
        self.noticed.store(0, Ordering::Relaxed);
        // One writer at a time (the lock's holder): no read-modify-write needed.
        let generation = self.generation.load(Ordering::Relaxed) + 1;
        self.generation.store(generation, Ordering::Release);
        generation
    }

    /// Marks acquisition `generation` as released. Call before the lock itself is released.
    pub(super) fn released(&self, generation: u64) {
        self.released.store(generation, Ordering::Release);
    }

    fn current_label(&self) -> String {
        let owner = OwnerKey(self.owner.load(Ordering::Relaxed));
        // Upgraded apart: the scope may end (and run its drop) once the slot's lock is released.
        let scope = relock(&self.scope).as_ref().and_then(Weak::upgrade);
        label(owner, scope.as_deref())
    }

    /// The label of the holder of acquisition `generation`, while it still holds the lock.
    pub(super) fn holder_label(&self, generation: u64) -> Option<String> {
        (self.generation.load(Ordering::Acquire) == generation).then(|| self.current_label())
    }

    /// Who holds the lock now, if anyone.
    pub(super) fn holder_now(&self) -> Option<HeldBy> {
        let generation = self.generation.load(Ordering::Acquire);
        if self.released.load(Ordering::Acquire) >= generation {
            return None;
        }
        let (start, exact) = match self.since.load(Ordering::Relaxed) {
            0 => {
                let now = now_nanos();
                match self
                    .noticed
                    .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
                {
                    Ok(_) => (now, false),
                    Err(earlier) => (earlier, false),
                }
            }
            since => (since, true),
        };
        Some(HeldBy {
            owner: OwnerKey(self.owner.load(Ordering::Relaxed)),
            label: self.current_label(),
            held: Duration::from_nanos(now_nanos().saturating_sub(start)),
            exact,
        })
    }
}

static DEFAULT_WAIT_LIMIT_NANOS: AtomicU64 = AtomicU64::new(10_000_000_000);

pub(crate) fn default_wait_limit() -> Duration {
    Duration::from_nanos(DEFAULT_WAIT_LIMIT_NANOS.load(Ordering::Relaxed))
}

pub(super) fn set_default_wait_limit(d: Duration) {
    let nanos = u64::try_from(d.as_nanos()).expect("checked: at most a day");
    DEFAULT_WAIT_LIMIT_NANOS.store(nanos, Ordering::Relaxed);
    // A shorter limit may already be due for waits in progress.
    graph().1.notify_all();
}

struct Wait {
    owner: OwnerKey,
    waiter: String,
    lock: Arc<LockInfo>,
    started: Instant,
    /// `health` wedge source, once the watchdog reported this wait as over its limit.
    over_limit: Option<String>,
    /// `health` wedge source, when this wait closed a wait-for cycle.
    deadlock: Option<String>,
}

#[derive(Default)]
struct Graph {
    next_id: u64,
    waits: HashMap<u64, Wait>,
    /// The waits of each owner (most owners wait for one lock at a time), so that following
    /// a wait-for chain costs the chain's length, not a scan of every wait per step.
    by_owner: HashMap<OwnerKey, Vec<u64>>,
    /// When the watchdog will next look (the earliest limit of the waits it saw): a new wait
    /// wakes it only when its own limit comes earlier.
    next_due: Option<Instant>,
}

impl Graph {
    fn insert(&mut self, id: u64, wait: Wait) {
        self.by_owner.entry(wait.owner).or_default().push(id);
        self.waits.insert(id, wait);
    }

    fn remove(&mut self, id: u64) -> Option<Wait> {
        let wait = self.waits.remove(&id)?;
        if let Some(ids) = self.by_owner.get_mut(&wait.owner) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                self.by_owner.remove(&wait.owner);
            }
        }
        Some(wait)
    }

    /// The locks `owner` waits for.
    fn waits_of(&self, owner: OwnerKey) -> impl Iterator<Item = &Wait> {
        self.by_owner
            .get(&owner)
            .into_iter()
            .flatten()
            .filter_map(|id| self.waits.get(id))
    }
}

fn graph() -> &'static (StdMutex<Graph>, Condvar) {
    static GRAPH: OnceLock<(StdMutex<Graph>, Condvar)> = OnceLock::new();
    GRAPH.get_or_init(|| (StdMutex::new(Graph::default()), Condvar::new()))
}

fn ensure_watchdog() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("unwedge-lock-watchdog".into())
            .spawn(watchdog);
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the lock-wait watchdog thread; long lock waits will not be reported");
        }
    });
}

/// A `lock()` that had to wait, registered in the graph until it is dropped (acquired or
/// cancelled). Dropping it clears any wedge the wait caused.
pub(super) struct WaitToken {
    id: u64,
}

/// Registers a wait of the current task or thread for `lock`; reports a deadlock at once
/// when this wait closes a wait-for cycle.
pub(super) fn begin_wait(lock: &Arc<LockInfo>) -> WaitToken {
    ensure_watchdog();
    let key = OwnerKey::current();
    let waiter = label(key, context::current_scope().as_deref());
    let (mutex, wake) = graph();
    let mut g = relock(mutex);
    let id = g.next_id;
    g.next_id += 1;
    let cycle = find_cycle(&g, key, lock);
    let mut wait = Wait {
        owner: key,
        waiter,
        lock: lock.clone(),
        started: Instant::now(),
        over_limit: None,
        deadlock: None,
    };
    if let Some(cycle) = cycle.as_ref().filter(|c| c.len() == 1) {
        // The waiter's own task (or thread) holds the lock. Either the same future locks it
        // twice (a deadlock), or two futures joined in one task (`join!`, `select!`,
        // `FuturesUnordered`) take turns with it (no deadlock: the holder goes on and
        // releases it). Holders are known by task, not by future, so the two look the same:
        // warn now, and leave "wedged" to the wait limit, which a real self-deadlock reaches.
        tracing::warn!(
            lock = %lock.name,
            waiter = %wait.waiter,
            "{} (a deadlock if the same future holds it; fine if another future of the same task does and goes on; reported as wedged if the wait passes its limit)",
            describe_cycle(&wait.waiter, cycle)
        );
    } else if let Some(cycle) = cycle {
        let source = format!("deadlock:{}:{id}", lock.name);
        let reason = describe_cycle(&wait.waiter, &cycle);
        tracing::error!(
            lock = %lock.name,
            waiter = %wait.waiter,
            "{reason}"
        );
        // Under the graph lock, so that the wait's end cannot clear it before it is set.
        health::set_wedged(source.clone(), reason);
        wait.deadlock = Some(source);
    }
    let due = wait.started + lock.wait_limit();
    g.insert(id, wait);
    // The watchdog sleeps until the earliest limit it knows of: wake it only for an earlier one
    // (not once per contended lock, which made each wait cost a scan of all of them).
    let sooner = g.next_due.is_none_or(|next| due < next);
    if sooner {
        g.next_due = Some(due);
    }
    drop(g);
    if sooner {
        wake.notify_all();
    }
    WaitToken { id }
}

impl Drop for WaitToken {
    fn drop(&mut self) {
        let mut g = relock(&graph().0);
        let Some(wait) = g.remove(self.id) else {
            return;
        };
        if let Some(source) = &wait.over_limit {
            tracing::info!(
                lock = %wait.lock.name,
                waiter = %wait.waiter,
                waited = %humantime::format_duration(round_ms(wait.started.elapsed())),
                "lock wait over its limit has ended"
            );
            health::clear_wedged(source);
        }
        if let Some(source) = &wait.deadlock {
            health::clear_wedged(source);
        }
    }
}

/// One edge of a wait-for cycle: `lock`, held by `holder`.
struct Edge {
    lock: Arc<str>,
    holder: HeldBy,
}

/// Follows holder → that holder's waits → their holders … from `lock`; returns the path when
/// it comes back to `start`.
fn find_cycle(g: &Graph, start: OwnerKey, lock: &LockInfo) -> Option<Vec<Edge>> {
    fn walk(
        g: &Graph,
        start: OwnerKey,
        lock: &LockInfo,
        seen: &mut HashSet<OwnerKey>,
        path: &mut Vec<Edge>,
    ) -> bool {
        let Some(holder) = lock.holder_now() else {
            return false;
        };
        let key = holder.owner;
        path.push(Edge {
            lock: lock.name.clone(),
            holder,
        });
        if key == start {
            return true;
        }
        if seen.insert(key) {
            for wait in g.waits_of(key) {
                if walk(g, start, &wait.lock, seen, path) {
                    return true;
                }
            }
        }
        path.pop();
        false
    }
    let mut path = Vec::new();
    walk(g, start, lock, &mut HashSet::new(), &mut path).then_some(path)
}

fn describe_cycle(waiter: &str, cycle: &[Edge]) -> String {
    let mut out = format!("deadlock between unwedge mutexes: {waiter}");
    for (i, edge) in cycle.iter().enumerate() {
        let last = i + 1 == cycle.len();
        out.push_str(&format!(
            " waits for `{}`, held by {}{} {};",
            edge.lock,
            edge.holder.label,
            if last { " itself" } else { "" },
            edge.holder.held_for()
        ));
        if !last {
            out.push_str(&format!(" {}", edge.holder.label));
        }
    }
    out.pop();
    out
}

pub(crate) fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The watchdog thread: sleeps until the next wait reaches its limit, then reports it.
fn watchdog() {
    let (mutex, wake) = graph();
    let mut g = relock(mutex);
    loop {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for (id, wait) in g.waits.iter_mut() {
            if wait.over_limit.is_some() {
                continue;
            }
            let limit = wait.lock.wait_limit();
            let due = wait.started + limit;
            if due > now {
                next = Some(next.map_or(due, |n| n.min(due)));
                continue;
            }
            let holder = match wait.lock.holder_now() {
                Some(held) => format!("held by {} {}", held.label, held.held_for()),
                None => "released, but the waiter has not run since (runtime stalled?)".into(),
            };
            let waited = humantime::format_duration(round_ms(now - wait.started));
            let reason = format!(
                "{} has waited {waited} for mutex `{}` (limit {}), {holder}",
                wait.waiter,
                wait.lock.name,
                humantime::format_duration(limit)
            );
            tracing::warn!(lock = %wait.lock.name, waiter = %wait.waiter, "{reason}");
            let source = format!("lock:{}:{}#{id}", wait.lock.name, wait.waiter);
            // Under the graph lock, so that the wait's end cannot clear it before it is set.
            health::set_wedged(source.clone(), reason);
            wait.over_limit = Some(source);
        }
        g.next_due = next;
        g = match next {
            Some(due) => {
                wake.wait_timeout(g, due.saturating_duration_since(now))
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0
            }
            None => wake
                .wait(g)
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        };
    }
}
