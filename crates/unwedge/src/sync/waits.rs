//! Who holds which [`Mutex`](crate::Mutex), who waits for which: the process-wide wait-for
//! graph, the lock-wait watchdog thread, and deadlock detection.
//!
//! Holders are recorded on each mutex (a short std lock, taken on acquire and release only);
//! waits are recorded here, in one global graph, only by `lock()` calls that had to wait. The
//! wait that closes a cycle (A holds X and waits for Y, B holds Y and waits for X) finds it
//! when it registers, so a deadlock is reported at once, not after a timeout.
//!
//! The watchdog is a plain OS thread, not a tokio timer: a holder that blocks the runtime's
//! threads must not be able to silence the report about itself.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex as StdMutex, MutexGuard as StdGuard, OnceLock};
use std::thread::{Thread, ThreadId};
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

/// Who runs the code that locks: a tokio task, or (outside tasks, e.g. in `block_on`) a thread.
#[derive(Clone, Debug)]
pub(super) enum Owner {
    Task(tokio::task::Id),
    Thread(Thread),
}

/// The identity of an [`Owner`] in the wait-for graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum OwnerKey {
    Task(tokio::task::Id),
    Thread(ThreadId),
}

impl Owner {
    pub(super) fn current() -> Owner {
        match tokio::task::try_id() {
            Some(id) => Owner::Task(id),
            None => Owner::Thread(std::thread::current()),
        }
    }

    pub(super) fn key(&self) -> OwnerKey {
        match self {
            Owner::Task(id) => OwnerKey::Task(*id),
            Owner::Thread(t) => OwnerKey::Thread(t.id()),
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Task(id) => write!(f, "task {id}"),
            Owner::Thread(t) => match t.name() {
                Some(name) => write!(f, "thread '{name}'"),
                None => write!(f, "thread {:?}", t.id()),
            },
        }
    }
}

/// Who holds a mutex, recorded when it is acquired.
#[derive(Clone, Debug)]
pub(super) struct Holder {
    pub(super) owner: Owner,
    /// The request or named task running at lock time (set by the panic layer / `spawn`).
    pub(super) scope: Option<Arc<Scope>>,
    /// When it was acquired, for locks that had to wait. An uncontended acquisition does not
    /// read the clock (it would double the cost of a lock); the first waiter that finds the
    /// holder there fills in `noticed` instead, and reports say "for at least".
    pub(super) since: Option<Instant>,
    pub(super) noticed: Option<Instant>,
}

impl Holder {
    fn current(waited: bool) -> Holder {
        Holder {
            owner: Owner::current(),
            scope: context::current_scope(),
            since: waited.then(Instant::now),
            noticed: None,
        }
    }

    /// `GET /comments (request 3f2a…)`, or `task 12`, or `thread 'main'`.
    pub(super) fn label(&self) -> String {
        label(&self.owner, self.scope.as_deref())
    }
}

fn label(owner: &Owner, scope: Option<&Scope>) -> String {
    match scope {
        Some(scope) => format!("{} ({owner})", scope.label),
        None => owner.to_string(),
    }
}

/// The holder of a mutex as last recorded, and its generation (one per acquisition).
#[derive(Debug, Default)]
pub(super) struct HolderSlot {
    generation: u64,
    holder: Option<Holder>,
}

/// The per-mutex part that the graph reads: name and current holder.
#[derive(Debug)]
pub(super) struct LockInfo {
    pub(super) name: Arc<str>,
    holder: StdMutex<HolderSlot>,
    /// The generation of the last release: the slot's holder is current only while its
    /// generation is newer. A release is then one atomic store, not a second lock.
    released: AtomicU64,
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
            holder: StdMutex::new(HolderSlot::default()),
            released: AtomicU64::new(0),
            wait_limit_nanos: AtomicU64::new(0),
        }
    }

    pub(super) fn wait_limit(&self) -> Duration {
        match self.wait_limit_nanos.load(Ordering::Relaxed) {
            0 => default_wait_limit(),
            n => Duration::from_nanos(n),
        }
    }

    /// Records the current task or thread as the holder; returns the acquisition's
    /// generation, to hand to [`released`](Self::released).
    pub(super) fn acquired(&self, waited: bool) -> u64 {
        let holder = Holder::current(waited);
        let mut slot = relock(&self.holder);
        slot.generation += 1;
        let previous = slot.holder.replace(holder);
        let generation = slot.generation;
        drop(slot);
        drop(previous);
        generation
    }

    /// Marks acquisition `generation` as released. Call before the lock itself is released.
    pub(super) fn released(&self, generation: u64) {
        self.released.store(generation, Ordering::Release);
    }

    /// The label of the holder of acquisition `generation`, while it still holds the lock.
    pub(super) fn holder_label(&self, generation: u64) -> Option<String> {
        let slot = relock(&self.holder);
        (slot.generation == generation)
            .then(|| slot.holder.as_ref().map(Holder::label))
            .flatten()
    }

    /// Who holds the lock now, if anyone.
    pub(super) fn holder_now(&self) -> Option<HeldBy> {
        let mut slot = relock(&self.holder);
        if self.released.load(Ordering::Acquire) >= slot.generation {
            return None;
        }
        let holder = slot.holder.as_mut()?;
        let (start, exact) = match holder.since {
            Some(since) => (since, true),
            None => (*holder.noticed.get_or_insert_with(Instant::now), false),
        };
        Some(HeldBy {
            owner: holder.owner.key(),
            label: holder.label(),
            held: start.elapsed(),
            exact,
        })
    }
}

static DEFAULT_WAIT_LIMIT_NANOS: AtomicU64 = AtomicU64::new(10_000_000_000);

pub(super) fn default_wait_limit() -> Duration {
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
    let owner = Owner::current();
    let key = owner.key();
    let waiter = label(&owner, context::current_scope().as_deref());
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
    if let Some(cycle) = cycle {
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
    g.waits.insert(id, wait);
    drop(g);
    wake.notify_all();
    WaitToken { id }
}

impl Drop for WaitToken {
    fn drop(&mut self) {
        let mut g = relock(&graph().0);
        let Some(wait) = g.waits.remove(&self.id) else {
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
            for wait in g.waits.values().filter(|w| w.owner == key) {
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

pub(super) fn round_ms(d: Duration) -> Duration {
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
