//! Hang detection inside the process, on its own OS thread so that a blocked runtime cannot
//! silence it.
//!
//! [`serve`](crate::serve()) starts the watchdog. It checks, every twentieth of the shortest
//! limit (between 5 and 50 ms; 50 ms with the defaults):
//!
//! | kind | condition | health source |
//! | --- | --- | --- |
//! | runtime stall | a canary task on the runtime has not run for the stall limit (default 2 s) | `watchdog:stall` |
//! | blocked poll | one poll of a request's future has run for the stall limit: the handler blocks its runtime thread (`std::thread::sleep`, a std lock) | `watchdog:blocked` |
//! | no progress | requests are in flight, the oldest for longer than the hang limit (default 10 s), and none completed within it; not raised once `serve()` is stopping (a drain takes no new requests, so a busy process turns quiet: its deadline bounds the requests left) | `watchdog:no-progress` |
//! | lock wait | reported by [`Mutex`](crate::Mutex) itself | `lock:…` |
//! | `Tx` writer wait | reported by [`Tx`](crate::Tx) itself: a writer waiting past the default wait limit | `tx:…` |
//!
//! Any of them turns the process [`Wedged`](crate::HealthState::Wedged) with a reason naming
//! the culprit; the wedge clears when its cause does, or when its watchdog stops (its
//! `serve()` returned or was dropped). A second `serve()` running at the same time has its
//! watchdog's sources numbered: `watchdog#2:stall`. While the process is not Healthy or
//! Draining the watchdog stops the `WATCHDOG=1` heartbeats, and it sends `STATUS=` on every
//! change of the health state. With [`Server::abort_when_wedged`](crate::Server::abort_when_wedged)
//! it exits the process with code 70 once it has been wedged that long.
//!
//! Limits: the builder ([`Server::stall_limit`](crate::Server::stall_limit),
//! [`Server::hang_limit`](crate::Server::hang_limit)) or `UNWEDGE_STALL_LIMIT`,
//! `UNWEDGE_HANG_LIMIT` (`2s`, `500ms`, or seconds); the environment wins. Zero turns a check
//! off: a stall limit of zero turns off the runtime-stall and blocked-poll checks, a hang
//! limit of zero the no-progress check (for services whose requests legitimately run long).
//!
//! A request counts as completed when its response head is ready (a streaming body is not
//! watched). A request long on purpose (a long poll) calls [`long_request`]: the no-progress
//! check leaves it out.
//!
//! A request whose handler waits for its body (it polled the body, which had nothing yet)
//! waits on its client, not on itself: the no-progress check leaves it out while it does, and
//! counts its age from the end of that wait ([`serve::Incoming`](crate::serve::Incoming) says
//! which polls count), so that one client sending its body slowly, or stopping half-way, does
//! not get a quiet process declared wedged. A client that sends nothing for the idle timeout
//! loses its body ([`BodyError`](crate::serve::BodyError)); still bound the whole body read in
//! time, e.g. `tokio::time::timeout(d, axum::body::Bytes::from_request(req, &()))` answering
//! `408` (as `examples/bytecache` does): a client trickling bytes holds its request and its
//! connection until then.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Method, Request};
use sd_notify::NotifyState;
use slab::Slab;

use crate::health::{self, HealthState};
use crate::serve::body::ClientWait;
use crate::serve::notify::{one_line, Notifier};

/// The default stall limit: a runtime that does not run the canary task (or a poll that does
/// not return) for this long is wedged.
pub const DEFAULT_STALL_LIMIT: Duration = Duration::from_secs(2);

/// The default hang limit: requests in flight, none completed for this long, is wedged.
pub const DEFAULT_HANG_LIMIT: Duration = Duration::from_secs(10);

/// How often the watchdog thread looks, at most and at least: a twentieth of the shortest
/// limit (and an eighth of the heartbeat interval) within these bounds. Each look wakes a
/// thread, which on a busy machine can cost a runtime thread its turn on a core.
const MAX_TICK: Duration = Duration::from_millis(50);
const MIN_TICK: Duration = Duration::from_millis(5);

/// The watchdog's period for these limits (the longest without any: the backstops and
/// `STATUS=` still need a look now and then).
fn tick_for(cfg: &Config) -> Duration {
    let shortest = [cfg.stall_limit, cfg.hang_limit]
        .into_iter()
        .flatten()
        .min();
    let mut t = shortest.map_or(MAX_TICK, |l| l / 20);
    if let Some(h) = cfg.heartbeat {
        t = t.min(h / 8);
    }
    t.clamp(MIN_TICK, MAX_TICK)
}

/// The health sources of one watchdog: its stall, blocked-poll and no-progress wedges, each
/// with whether it set it. `watchdog:stall`, `watchdog:blocked`, `watchdog:no-progress` for
/// the first running in the process; `watchdog#2:stall` and so on for a second `serve()` at
/// the same time, so that neither clears a wedge of the other's. What it set is cleared when
/// it stops: nothing would clear it after (a drain cut by its deadline while wedged, a
/// `serve()` future dropped), and the process would read Wedged for good.
struct Sources {
    /// Its number among the watchdogs running (the lowest free, from 1).
    number: u32,
    names: [String; 3],
    raised: [bool; 3],
}

const STALL: usize = 0;
const BLOCKED: usize = 1;
const NO_PROGRESS: usize = 2;

/// The numbers of the watchdogs running.
static RUNNING: Mutex<std::collections::BTreeSet<u32>> =
    Mutex::new(std::collections::BTreeSet::new());

impl Sources {
    fn claim() -> Self {
        let mut running = lock(&RUNNING);
        let number = (1..).find(|n| !running.contains(n)).expect("a free number");
        running.insert(number);
        let prefix = match number {
            1 => "watchdog".to_owned(),
            n => format!("watchdog#{n}"),
        };
        Sources {
            number,
            names: ["stall", "blocked", "no-progress"].map(|kind| format!("{prefix}:{kind}")),
            raised: [false; 3],
        }
    }

    /// Raises or clears `which`: the first reason stands until the cause clears (no
    /// `STATUS=` storm of growing ages).
    fn set(&mut self, which: usize, reason: Option<String>) {
        let (raised, name) = (&mut self.raised[which], &self.names[which]);
        match reason {
            Some(r) if !*raised => {
                health::set_wedged(name.as_str(), r);
                *raised = true;
            }
            Some(_) => {}
            None if *raised => {
                health::clear_wedged(name);
                *raised = false;
            }
            None => {}
        }
    }
}

impl Drop for Sources {
    fn drop(&mut self) {
        for which in [STALL, BLOCKED, NO_PROGRESS] {
            self.set(which, None);
        }
        lock(&RUNNING).remove(&self.number);
    }
}

/// Nanoseconds since a process-wide base instant; never 0 (0 means "not set").
pub(crate) fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    base.elapsed().as_nanos() as u64 + 1
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Critical sections here are a few field or slab operations: poison carries no meaning.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The requests in flight, for the no-progress and blocked-poll checks.
///
/// The per-request path takes no shared lock, allocates nothing and reads no clock:
///
/// - every runtime thread that touches a request gets its own [`ThreadSlot`] (registered once
///   per thread), whose counters only that thread writes (`begun`, `finished`, `completed`,
///   the last completion): the watchdog sums them;
/// - timestamps come from a coarse clock the watchdog thread publishes in each slot every tick
///   (5-50 ms, see [`tick_for`]); it measures durations from one tick ago, so that a limit is
///   reported at most a tick late, never early;
/// - while a request is polled, the thread's slot holds its label and when the poll began
///   (the blocked-poll check);
/// - a request whose first poll did not complete (it waits for something) is entered in its
///   thread's slab of pending requests until it ends, so the no-progress check can find and
///   name the oldest. A request answered in its first poll never is.
#[derive(Debug)]
pub(crate) struct Tracker {
    /// Tells this tracker's slots apart in a thread's list (several `serve()` in a process).
    id: u64,
    /// The coarse clock, for slots registered later.
    clock: AtomicU64,
    /// When the tracker was created: the "last completion" before any.
    created: u64,
    threads: Mutex<Vec<Arc<ThreadSlot>>>,
    /// The counts of slots whose thread has exited, folded in by [`tick`](Self::tick) when
    /// it drops those slots (changed and read only with `threads` locked).
    retired: Retired,
}

/// Counters of exited threads' slots (see [`Tracker::retired`]).
#[derive(Debug, Default)]
struct Retired {
    begun: AtomicU64,
    finished: AtomicU64,
    completed: AtomicU64,
    last_completion: AtomicU64,
}

/// Method and path of a request, for reason texts, as plain words (a standard method is a
/// tag; the path is cut at [`LABEL_PATH`] bytes), so that publishing it for every request's
/// first poll is a few stores: no lock, no reference count. Byte 0: the method's index in
/// [`METHODS`], or [`OTHER_METHOD`] when the text starts with the method itself; byte 1: the
/// text's length (bit 7: cut); then the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Label([u64; LABEL_WORDS]);

const LABEL_WORDS: usize = 8;
/// Longest text a label keeps (longer ones end with `…`).
const LABEL_PATH: usize = LABEL_WORDS * 8 - 2;
const METHODS: [Method; 9] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::HEAD,
    Method::OPTIONS,
    Method::CONNECT,
    Method::PATCH,
    Method::TRACE,
];
const OTHER_METHOD: u8 = u8::MAX;

impl Label {
    fn new(method: &Method, path: &str) -> Self {
        let mut bytes = [0u8; LABEL_WORDS * 8];
        // A match on the method's tag, not a comparison with each of `METHODS` (in its order).
        let code = match *method {
            Method::GET => Some(0),
            Method::POST => Some(1),
            Method::PUT => Some(2),
            Method::DELETE => Some(3),
            Method::HEAD => Some(4),
            Method::OPTIONS => Some(5),
            Method::CONNECT => Some(6),
            Method::PATCH => Some(7),
            Method::TRACE => Some(8),
            _ => None,
        };
        let mut at = 2;
        if code.is_none() {
            // An extension method: its name (a token, ASCII) leads the text.
            let name = method.as_str().as_bytes();
            let name = &name[..name.len().min(LABEL_PATH / 2)];
            bytes[at..at + name.len()].copy_from_slice(name);
            bytes[at + name.len()] = b' ';
            at += name.len() + 1;
        }
        let room = bytes.len() - at;
        let mut end = path.len().min(room);
        while !path.is_char_boundary(end) {
            end -= 1;
        }
        bytes[at..at + end].copy_from_slice(&path.as_bytes()[..end]);
        let len = (at - 2 + end) as u8;
        bytes[0] = code.map_or(OTHER_METHOD, |c| c as u8);
        bytes[1] = if end < path.len() { len | 0x80 } else { len };
        let mut words = [0u64; LABEL_WORDS];
        for (w, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
            *w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        }
        Label(words)
    }

    /// `METHOD path` with the path's identifiers replaced by placeholders
    /// ([`route_template`](unwedge_redact::route_template): `GET /orders/{int}`, not the
    /// order's number or a user's e-mail address), as panic reports name a request's route:
    /// the text goes to the log, `STATUS=` and from there to the supervisor's status and its
    /// alerts. Computed only when a reason is written, never per request.
    fn text(&self) -> String {
        let mut bytes = [0u8; LABEL_WORDS * 8];
        for (chunk, w) in bytes.chunks_exact_mut(8).zip(self.0) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        let len = usize::from(bytes[1] & 0x7f).min(LABEL_PATH);
        // Cut at a character boundary by `new`.
        let text = std::str::from_utf8(&bytes[2..2 + len]).unwrap_or_default();
        let cut = bytes[1] & 0x80 != 0;
        // A segment cut in the middle no longer looks like the identifier it was (an e-mail
        // address without its `@`): dropped, up to the last `/` kept.
        let text = match text.rfind('/') {
            Some(slash) if cut => &text[..=slash],
            _ => text,
        };
        let text = unwedge_redact::route_template(text);
        let cut = if cut { "…" } else { "" };
        match METHODS.get(usize::from(bytes[0])) {
            Some(method) => format!("{method} {text}{cut}"),
            None => format!("{text}{cut}"),
        }
    }
}

/// A [`Label`] one thread publishes and the watchdog reads: a sequence lock over atomic
/// words (odd sequence: a store is in progress).
#[derive(Debug, Default)]
struct SharedLabel {
    seq: AtomicU64,
    words: [AtomicU64; LABEL_WORDS],
}

impl SharedLabel {
    /// Only the owning thread stores.
    fn store(&self, label: &Label) {
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        for (w, v) in self.words.iter().zip(label.0) {
            w.store(v, Ordering::Relaxed);
        }
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// The label last stored, or `None` when stores kept racing with the read.
    fn load(&self) -> Option<Label> {
        for _ in 0..64 {
            let before = self.seq.load(Ordering::Acquire);
            if before & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let mut words = [0u64; LABEL_WORDS];
            for (v, w) in words.iter_mut().zip(&self.words) {
                *v = w.load(Ordering::Relaxed);
            }
            std::sync::atomic::fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == before {
                return Some(Label(words));
            }
        }
        None
    }
}

/// One runtime thread's share of a [`Tracker`]. The counters are written only by the owning
/// thread (plain load and store, no read-modify-write); `clock` only by the watchdog thread.
#[derive(Debug)]
struct ThreadSlot {
    /// Request ids of requests begun on this thread: `ids + begun` (unique per process until
    /// 2^40 requests on one thread, where the count wraps within the slot).
    ids: u64,
    /// The coarse clock (nanoseconds, [`now_ns`]), stored by the watchdog every tick.
    clock: AtomicU64,
    /// Requests that began (`call`) on this thread.
    begun: AtomicU64,
    /// Requests that ended (completed or dropped) on this thread.
    finished: AtomicU64,
    /// Requests that completed on this thread.
    completed: AtomicU64,
    /// Coarse time of the last completion on this thread.
    last_completion: AtomicU64,
    /// When the poll running on this thread now began; 0 when none is.
    polling_since: AtomicU64,
    /// When the request being polled now began.
    polled_started: AtomicU64,
    /// The request whose label `polled` holds.
    polled_id: AtomicU64,
    /// The request polled on this thread that called [`long_request`] (`u64::MAX`: none).
    let_go: AtomicU64,
    polled: SharedLabel,
    /// Requests that began waiting on this thread (their first poll returned `Pending`).
    /// Stable keys, no allocation once warm.
    pending: Mutex<Slab<Entry>>,
}

impl ThreadSlot {
    fn new(clock: u64, ids: u64) -> Self {
        ThreadSlot {
            ids,
            clock: AtomicU64::new(clock),
            begun: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            last_completion: AtomicU64::new(0),
            polling_since: AtomicU64::new(0),
            polled_started: AtomicU64::new(0),
            polled_id: AtomicU64::new(u64::MAX),
            let_go: AtomicU64::new(u64::MAX),
            polled: SharedLabel::default(),
            pending: Mutex::new(Slab::new()),
        }
    }

    /// Adds one to a counter only this thread writes.
    fn bump(counter: &AtomicU64) -> u64 {
        let n = counter.load(Ordering::Relaxed) + 1;
        counter.store(n, Ordering::Relaxed);
        n
    }
}

/// A pending request: when it began and what it is.
#[derive(Debug)]
struct Entry {
    started: u64,
    label: Label,
    /// Whether it waits for its client's body (`None`: it has none to wait for).
    client: Option<ClientWait>,
}

impl Entry {
    /// It waits for its client's body at `now`: not the app's to make progress on.
    fn on_client(&self, now: u64) -> bool {
        self.client.as_ref().is_some_and(|c| c.waiting(now))
    }

    /// When it began, for the no-progress check: when it last stopped waiting for its
    /// client's body, if it did since it began.
    fn since(&self) -> u64 {
        self.client
            .as_ref()
            .map_or(self.started, |c| self.started.max(c.resumed()))
    }
}

/// For the no-progress check, the pending request that began first (see [`Entry::since`]) of
/// those not waiting for their client's body; for a state dump (`dump`), the one that began
/// first of all. Its start, label, and whether it waits for its client.
fn first_pending(pending: &Slab<Entry>, now: u64, dump: bool) -> Option<(u64, Label, bool)> {
    pending
        .iter()
        .map(|(_, e)| e)
        .map(|e| {
            let start = if dump { e.started } else { e.since() };
            (start, e.label, e.on_client(now))
        })
        .filter(|&(_, _, on_client)| dump || !on_client)
        .min_by_key(|&(start, _, _)| start)
}

/// Whether this thread is polling the tracked request `id` now (inside its response future's
/// poll, or its service's `call`).
pub(crate) fn polling(id: u64) -> bool {
    id != 0
        && SLOTS
            .try_with(|slots| {
                slots.try_borrow().is_ok_and(|slots| {
                    slots.iter().any(|(_, s)| {
                        s.polling_since.load(Ordering::Relaxed) != 0
                            && s.polled_id.load(Ordering::Relaxed) == id
                    })
                })
            })
            .unwrap_or(false)
}

/// The live trackers, so that a thread polling a request for the first time can register its
/// slot without each request holding an `Arc<Tracker>`.
static TRACKERS: Mutex<Vec<Weak<Tracker>>> = Mutex::new(Vec::new());

thread_local! {
    /// This thread's slot in each tracker it has served requests of: (tracker id, slot).
    static SLOTS: RefCell<Vec<(u64, Arc<ThreadSlot>)>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's slot of the tracker `id`, registering the slot on first use.
/// `None` when the tracker is gone (or the thread is exiting).
fn with_slot<R>(id: u64, f: impl FnOnce(&ThreadSlot) -> R) -> Option<R> {
    SLOTS
        .try_with(|slots| {
            if let Some((_, s)) = slots.borrow().iter().find(|(i, _)| *i == id) {
                return Some(f(s));
            }
            let slot = register(id)?;
            let mut slots = slots.borrow_mut();
            // Forget the slots of trackers that are gone.
            slots.retain(|(_, s)| Arc::strong_count(s) > 1);
            slots.push((id, slot.clone()));
            drop(slots);
            Some(f(&slot))
        })
        .ok()
        .flatten()
}

/// A new slot for this thread in the tracker `id`, if it is alive.
fn register(id: u64) -> Option<Arc<ThreadSlot>> {
    static NEXT_SLOT: AtomicU64 = AtomicU64::new(1);
    let tracker = lock(&TRACKERS)
        .iter()
        .filter_map(Weak::upgrade)
        .find(|t| t.id == id)?;
    let slot = Arc::new(ThreadSlot::new(
        tracker.clock.load(Ordering::Relaxed),
        NEXT_SLOT.fetch_add(1, Ordering::Relaxed) << 40,
    ));
    lock(&tracker.threads).push(slot.clone());
    Some(slot)
}

impl Tracker {
    pub(crate) fn new() -> Arc<Self> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let now = now_ns();
        let tracker = Arc::new(Tracker {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            clock: AtomicU64::new(now),
            created: now,
            threads: Mutex::new(Vec::new()),
            retired: Retired::default(),
        });
        let mut all = lock(&TRACKERS);
        all.retain(|t| t.strong_count() > 0);
        all.push(Arc::downgrade(&tracker));
        tracker
    }

    /// Publishes the coarse clock to every thread's slot (the watchdog, every tick), and drops
    /// the slots of threads that have exited (`block_in_place` replaces runtime threads, idle
    /// blocking-pool threads exit after 10 s): their counts are folded into `retired` first,
    /// so that requests begun on one thread and finished on another still add up.
    pub(crate) fn tick(&self, now: u64) {
        self.clock.store(now, Ordering::Relaxed);
        let mut threads = lock(&self.threads);
        threads.retain(|s| {
            // Only this list holds the slot: its thread's list is gone (the thread exited),
            // and no request waits in it (a waiting request holds its slot).
            if Arc::strong_count(s) == 1 {
                let r = &self.retired;
                let add = |total: &AtomicU64, c: &AtomicU64| {
                    total.fetch_add(c.load(Ordering::Relaxed), Ordering::Relaxed);
                };
                add(&r.begun, &s.begun);
                add(&r.finished, &s.finished);
                add(&r.completed, &s.completed);
                r.last_completion
                    .fetch_max(s.last_completion.load(Ordering::Relaxed), Ordering::Relaxed);
                return false;
            }
            s.clock.store(now, Ordering::Relaxed);
            true
        });
    }

    /// (finished, begun, completed, last completion) summed over the threads.
    fn counts(&self) -> (u64, u64, u64, u64) {
        let threads = lock(&self.threads);
        let r = &self.retired;
        // Finished first: a request counted there was counted as begun before.
        let finished: u64 = threads
            .iter()
            .map(|s| s.finished.load(Ordering::Relaxed))
            .sum::<u64>()
            + r.finished.load(Ordering::Relaxed);
        let begun: u64 = threads
            .iter()
            .map(|s| s.begun.load(Ordering::Relaxed))
            .sum::<u64>()
            + r.begun.load(Ordering::Relaxed);
        let completed = threads
            .iter()
            .map(|s| s.completed.load(Ordering::Relaxed))
            .sum::<u64>()
            + r.completed.load(Ordering::Relaxed);
        let last = threads
            .iter()
            .map(|s| s.last_completion.load(Ordering::Relaxed))
            .fold(
                self.created.max(r.last_completion.load(Ordering::Relaxed)),
                u64::max,
            );
        (finished, begun, completed, last)
    }

    /// Requests in flight now.
    pub(crate) fn in_flight(&self) -> usize {
        let (finished, begun, _, _) = self.counts();
        begun.saturating_sub(finished) as usize
    }

    /// Requests completed so far.
    #[cfg(test)]
    fn completed(&self) -> u64 {
        self.counts().2
    }

    /// Counts `req` as begun and marks this thread as polling it: the caller runs the
    /// service's `call` under [`Req::call_begins`], which ends the mark, and polls the
    /// response future with [`poll_tracked`]. `client` says when the request waits for its
    /// body (`None` when it has none to wait for).
    pub(crate) fn begin<B>(&self, req: &Request<B>, client: Option<ClientWait>) -> Req {
        let mut r = Req {
            client,
            tracker: self.id,
            id: 0,
            tracked: false,
            started: 0,
            label: Label::new(req.method(), req.uri().path()),
            waiting: None,
            let_go: false,
        };
        with_slot(self.id, |s| {
            let n = ThreadSlot::bump(&s.begun);
            let now = s.clock.load(Ordering::Relaxed);
            // The count within the slot's 40 bits: past 2^40 requests on one thread (months
            // of a busy one) it wraps there instead of carrying into another slot's ids.
            r.id = s.ids | (n & ((1 << 40) - 1));
            r.started = now;
            r.tracked = now != 0;
            if r.tracked {
                if let Some(c) = &r.client {
                    c.set_request(r.id);
                }
                r.publish(s);
            }
        });
        r
    }
}

/// One tracked request, owned by its response future.
pub(crate) struct Req {
    tracker: u64,
    /// Whether it waits for its client's body.
    client: Option<ClientWait>,
    id: u64,
    /// Counted as begun (the tracker was alive) and its end not counted yet.
    tracked: bool,
    started: u64,
    label: Label,
    /// Where it is entered as pending: its thread's slot and key.
    waiting: Option<(Arc<ThreadSlot>, usize)>,
    /// It called [`long_request`]: never the oldest for the no-progress check.
    let_go: bool,
}

impl Req {
    /// For the synchronous `call` of the service, which counts as a poll of the request (a
    /// handler blocking in it is attributed): the mark [`Tracker::begin`] set ends when the
    /// returned guard drops.
    #[must_use]
    pub(crate) fn call_begins(&self) -> Option<PollEnds> {
        self.tracked.then_some(PollEnds(self.tracker))
    }

    /// Before a poll: this thread is polling this request since now.
    fn poll_begins(&self) {
        with_slot(self.tracker, |s| self.publish(s));
    }

    /// Marks `s`'s thread as polling this request since now.
    fn publish(&self, s: &ThreadSlot) {
        if s.polled_id.load(Ordering::Relaxed) != self.id {
            s.polled.store(&self.label);
            s.polled_id.store(self.id, Ordering::Relaxed);
        }
        // A request let go is never older than another (see `Tracker::scan`), nor one whose
        // body a task of its own waits for (the blocked-poll check still times this poll); one
        // that waited for its client's body is as old as the time since it stopped waiting.
        let started = match &self.client {
            _ if self.let_go => u64::MAX,
            Some(c) if c.waiting(s.clock.load(Ordering::Relaxed)) => u64::MAX,
            Some(c) => self.started.max(c.resumed()),
            None => self.started,
        };
        s.polled_started.store(started, Ordering::Relaxed);
        // Release: a watchdog that reads this mark also sees the label stored above.
        s.polling_since
            .store(s.clock.load(Ordering::Relaxed), Ordering::Release);
    }

    /// Counts the request as finished in `s`, and as completed when it was.
    fn count_end(&self, s: &ThreadSlot, completed: bool) {
        ThreadSlot::bump(&s.finished);
        if completed {
            ThreadSlot::bump(&s.completed);
            s.last_completion
                .store(s.clock.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    /// After a poll that returned `Pending`: enter the request as pending (once).
    fn wait(&mut self) {
        if self.waiting.is_some() || !self.tracked {
            return;
        }
        let entry = Entry {
            started: self.started,
            label: self.label,
            client: self.client.clone(),
        };
        self.waiting = SLOTS
            .try_with(|slots| {
                let slots = slots.borrow();
                let (_, slot) = slots.iter().find(|(i, _)| *i == self.tracker)?;
                let key = lock(&slot.pending).insert(entry);
                Some((slot.clone(), key))
            })
            .ok()
            .flatten();
    }
}

impl Drop for Req {
    fn drop(&mut self) {
        if let Some((slot, key)) = self.waiting.take() {
            lock(&slot.pending).try_remove(key);
        }
        if !self.tracked {
            return;
        }
        // Dropped before it completed (cancelled, or its connection closed).
        with_slot(self.tracker, |s| self.count_end(s, false));
    }
}

/// Clears the thread's "polling" mark after a poll, also when the poll unwinds.
pub(crate) struct PollEnds(u64);

impl Drop for PollEnds {
    fn drop(&mut self) {
        with_slot(self.0, |s| s.polling_since.store(0, Ordering::Relaxed));
    }
}

/// Polls a tracked request's future: marks this thread as polling it for the duration, and
/// counts the request as completed when it is ready (`req` is then `None`) or enters it as
/// pending when it is not.
#[inline]
pub(crate) fn poll_tracked<F: Future>(
    req: &mut Option<Req>,
    fut: Pin<&mut F>,
    cx: &mut Context<'_>,
) -> Poll<F::Output> {
    let Some(r) = req.as_mut() else {
        return fut.poll(cx);
    };
    if !r.tracked {
        let out = fut.poll(cx);
        if out.is_ready() {
            *req = None;
        }
        return out;
    }
    // The wait for the client first: this poll's start counts from its end.
    if let Some(c) = &r.client {
        c.poll_begins();
    }
    r.poll_begins();
    let ends = PollEnds(r.tracker);
    let out = fut.poll(cx);
    if out.is_ready() {
        // The end of the poll and of the request in one visit of the slot.
        std::mem::forget(ends);
        with_slot(r.tracker, |s| {
            s.polling_since.store(0, Ordering::Relaxed);
            r.count_end(s, true);
        });
        r.tracked = false; // counted: its drop only leaves the pending list
        *req = None;
    } else {
        // The end of the poll, and whether the handler called `long_request` in it.
        std::mem::forget(ends);
        let asked = with_slot(r.tracker, |s| {
            s.polling_since.store(0, Ordering::Relaxed);
            s.let_go.load(Ordering::Relaxed) == r.id
        });
        if asked == Some(true) && !r.let_go {
            r.let_go = true;
            if let Some(c) = &r.client {
                c.untime();
            }
            if let Some((slot, key)) = r.waiting.take() {
                lock(&slot.pending).try_remove(key);
            }
        }
        if !r.let_go {
            r.wait();
        }
    }
    out
}

/// Marks the request being handled as long on purpose (a long poll, an export, a slow
/// upstream call waited for on purpose): the watchdog's no-progress check leaves it out, so
/// that one such request on a quiet process does not turn it Wedged (and stop its
/// `WATCHDOG=1` heartbeats) once it is older than the hang limit. Call it in the handler,
/// before its first long `.await`; it lasts until the request ends.
///
/// It also turns off the idle timeout of the request's body under `serve()` (see
/// [`serve::Incoming`](crate::serve::Incoming)): a streaming upload whose client may be quiet
/// for minutes is not cut.
///
/// The other checks still apply: a poll of it that blocks its thread is reported (blocking
/// code in async is never fine), and so is a runtime that stalls. Requests that are not
/// marked still make the process Wedged when none of them completes within the limit.
///
/// Returns `false`, and does nothing, outside a request that [`serve`](crate::serve()) tracks
/// (another server, a task of its own, a test calling the handler directly).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// // An axum handler that waits up to 30 s for news (a long poll).
/// async fn poll_news(news: tokio::sync::watch::Receiver<String>) -> String {
///     unwedge::watchdog::long_request();
///     let mut news = news;
///     match tokio::time::timeout(Duration::from_secs(30), news.changed()).await {
///         Ok(Ok(())) => news.borrow().clone(),
///         _ => String::new(),
///     }
/// }
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // Outside serve() it only says that it did nothing.
/// assert!(!unwedge::watchdog::long_request());
/// # let (tx, rx) = tokio::sync::watch::channel(String::new());
/// # tx.send("hi".into()).unwrap();
/// # let _ = poll_news;
/// # }
/// ```
pub fn long_request() -> bool {
    SLOTS
        .try_with(|slots| {
            slots.borrow().iter().any(|(_, s)| {
                if s.polling_since.load(Ordering::Relaxed) == 0 {
                    return false;
                }
                s.let_go
                    .store(s.polled_id.load(Ordering::Relaxed), Ordering::Relaxed);
                true
            })
        })
        .unwrap_or(false)
}

/// What the watchdog finds in the requests in flight.
#[derive(Debug, Default)]
struct Scan {
    /// The longest poll running now over the stall limit: its duration and request.
    blocked: Option<(u64, Label)>,
    in_flight: u64,
    /// Nanoseconds since the last completion.
    idle: u64,
    /// The oldest request in flight, when looked for: its age and label.
    oldest: Option<(u64, Label)>,
    /// The oldest pending request waits for its client's body (for a state dump).
    oldest_on_client: bool,
}

impl Tracker {
    /// The requests in flight, for a state dump: how many, since when none completed, the
    /// longest poll running now and the oldest request (any duration).
    pub(crate) fn describe(&self) -> Vec<String> {
        let scan = self.scan(now_ns(), 0, 0);
        let mut lines = vec![format!(
            "requests in flight: {}; last completion {:.1}s ago",
            scan.in_flight,
            secs(scan.idle)
        )];
        if let Some((d, label)) = scan.blocked {
            lines.push(format!(
                "polling now for {:.1}s: {} (a poll this long blocks a runtime thread)",
                secs(d),
                label.text()
            ));
        }
        if let Some((age, label)) = scan.oldest {
            lines.push(format!(
                "oldest request: {} for {:.1}s{}",
                label.text(),
                secs(age),
                if scan.oldest_on_client {
                    " (waiting for its client's body)"
                } else {
                    ""
                }
            ));
        }
        lines
    }

    /// The longest poll running now, when it has run for more than `d`: how long, and its
    /// request. (Polls are timed with the coarse clock of the last [`tick`](Self::tick): a
    /// poll that began after it looks as old as the tick.)
    pub(crate) fn polling_longer_than(&self, d: Duration) -> Option<(Duration, String)> {
        let d_ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.scan(now_ns(), d_ns, u64::MAX)
            .blocked
            .map(|(ns, label)| (Duration::from_nanos(ns), label.text()))
    }

    /// Looks at the requests in flight; the oldest only when none completed for `hang_ns`.
    fn scan(&self, now: u64, stall_ns: u64, hang_ns: u64) -> Scan {
        let (finished, begun, _, last) = self.counts();
        let mut scan = Scan {
            in_flight: begun.saturating_sub(finished),
            idle: now.saturating_sub(last),
            ..Scan::default()
        };
        let threads = lock(&self.threads);
        let look_for_oldest = scan.in_flight > 0 && scan.idle > hang_ns;
        let mut oldest: Option<(u64, Label)> = None;
        for s in threads.iter() {
            let since = s.polling_since.load(Ordering::Acquire);
            if since == 0 {
                continue;
            }
            let d = now.saturating_sub(since);
            let started = s.polled_started.load(Ordering::Relaxed);
            let want_blocked = d > stall_ns && scan.blocked.as_ref().is_none_or(|(b, _)| d > *b);
            let want_oldest = look_for_oldest && oldest.as_ref().is_none_or(|(o, _)| started < *o);
            if want_blocked || want_oldest {
                // Stored before `polling_since` (release/acquire): this poll's label or a
                // later one, which the check of `polling_since` below rejects.
                let label = s.polled.load();
                // The same poll still runs: the label is its request's.
                if let (Some(label), true) =
                    (label, s.polling_since.load(Ordering::Relaxed) == since)
                {
                    if want_blocked {
                        scan.blocked = Some((d, label));
                    }
                    if want_oldest {
                        oldest = Some((started, label));
                    }
                }
            }
        }
        if look_for_oldest {
            // A state dump names the oldest whatever it waits on.
            let dump = hang_ns == 0;
            for s in threads.iter() {
                if let Some((start, label, on_client)) = first_pending(&lock(&s.pending), now, dump)
                {
                    if oldest.as_ref().is_none_or(|(o, _)| start < *o) {
                        oldest = Some((start, label));
                        scan.oldest_on_client = on_client;
                    }
                }
            }
            scan.oldest = oldest.map(|(started, l)| (now.saturating_sub(started), l));
        }
        scan
    }
}

/// What the watchdog thread watches and how.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// `None`: no runtime-stall or blocked-poll check.
    pub(crate) stall_limit: Option<Duration>,
    /// `None`: no no-progress check.
    pub(crate) hang_limit: Option<Duration>,
    /// Exit with 70 after being wedged this long.
    pub(crate) abort_after: Option<Duration>,
    /// Send `WATCHDOG=1` this often (half of `WATCHDOG_USEC`).
    pub(crate) heartbeat: Option<Duration>,
    /// A requested crash that has not exited after this long is forced (the runtime may be
    /// unable to finish it).
    pub(crate) crash_backstop: Duration,
    /// A graceful shutdown that has not finished this long after its signal (SIGTERM or
    /// SIGINT, seen in `stop_signal`) is forced with exit code 0: every runtime thread may be
    /// blocked, so that `serve()` cannot even see the signal, let alone its drain deadline.
    pub(crate) stop_backstop: Duration,
    /// Set by a SIGTERM or SIGINT handler (besides the runtime's own).
    pub(crate) stop_signal: Arc<AtomicBool>,
    /// `STATUS=` text while healthy.
    pub(crate) serving_on: String,
}

/// A running watchdog; [`Watchdog::stop`] ends its thread, and so does dropping it (the
/// `serve()` future dropped before it returned: a `select!`, a timeout), without waiting.
#[derive(Debug)]
pub(crate) struct Watchdog {
    stop: Arc<AtomicBool>,
    /// `None` without a stall limit.
    canary: Option<tokio::task::JoinHandle<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Starts the canary task (on the current runtime; only with a stall limit) and the
    /// watchdog thread.
    pub(crate) fn start(cfg: Config, tracker: Arc<Tracker>, notifier: Arc<Notifier>) -> Self {
        let beat = Arc::new(AtomicU64::new(now_ns()));
        let canary = cfg.stall_limit.map(|limit| {
            let period = (limit / 8).clamp(Duration::from_millis(1), Duration::from_millis(20));
            let beat = beat.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    beat.store(now_ns(), Ordering::Relaxed);
                    crate::panic::context::decide_overdue();
                }
            })
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
        let thread = self.thread.take();
        self.signal_stop(thread.as_ref());
        if let Some(t) = thread {
            let _ = t.join();
        }
    }

    /// Tells the canary and the thread to stop: the thread sees the flag as soon as it wakes,
    /// unparked now (not a tick later).
    fn signal_stop(&self, thread: Option<&std::thread::JoinHandle<()>>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(canary) = &self.canary {
            canary.abort();
        }
        if let Some(t) = thread {
            t.thread().unpark();
        }
    }
}

impl Drop for Watchdog {
    /// The `serve()` future was dropped before it returned (or [`Watchdog::stop`] ran, and
    /// this does nothing more): stops the canary and the thread without waiting for the
    /// thread, which may be inside an exit of its own, or sending a notify datagram; it ends
    /// at its next wake-up, now.
    fn drop(&mut self) {
        let thread = self.thread.take();
        self.signal_stop(thread.as_ref());
    }
}

fn run(
    cfg: Config,
    tracker: Arc<Tracker>,
    notifier: Arc<Notifier>,
    beat: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    // An absent limit is never reached.
    let as_ns = |d: Option<Duration>| {
        d.map_or(u64::MAX, |d| {
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
        })
    };
    let stall_ns = as_ns(cfg.stall_limit);
    let hang_ns = as_ns(cfg.hang_limit);
    let stall_limit = cfg.stall_limit.unwrap_or_default();
    let hang_limit = cfg.hang_limit.unwrap_or_default();
    let tick = tick_for(&cfg);
    let tick_ns = tick.as_nanos() as u64;
    let mut health_rx = health::subscribe();
    let mut last_status: Option<(HealthState, Option<String>)> = None;
    let mut next_beat = Instant::now();
    let mut beats_paused = false;
    let mut wedged_since: Option<Instant> = None;
    let mut crash_since: Option<Instant> = None;
    let mut stop_since: Option<Instant> = None;
    let mut sources = Sources::claim();

    while !stop.load(Ordering::Relaxed) {
        let now = now_ns();

        // 1. Runtime stall: the canary did not run.
        let silent = now.saturating_sub(beat.load(Ordering::Relaxed));
        sources.set(
            STALL,
            (silent > stall_ns).then(|| {
                format!(
                    "runtime stalled: the canary task has not run for {:.1}s (limit {:?})",
                    secs(silent),
                    stall_limit
                )
            }),
        );

        // 2 and 3. Blocked polls and no progress, from the requests in flight.
        tracker.tick(now);
        // The requests' timestamps are the coarse clock, up to a tick before the real time:
        // measured against one tick ago, a duration is never longer than the real one, so a
        // limit is never reported early (at worst a tick late).
        let scan = tracker.scan(now.saturating_sub(tick_ns), stall_ns, hang_ns);
        let blocked = scan.blocked.map(|(d, label)| {
            format!(
                "{} has blocked a runtime thread for {:.1}s (limit {:?}): blocking code in async",
                label.text(),
                secs(d),
                stall_limit
            )
        });
        let stuck = scan.oldest.and_then(|(age, label)| {
            (age > hang_ns && scan.idle > hang_ns).then(|| {
                format!(
                    "no progress: {} requests in flight, none completed for {:.1}s (limit {:?}); oldest {} for {:.1}s",
                    scan.in_flight,
                    secs(scan.idle),
                    hang_limit,
                    label.text(),
                    secs(age)
                )
            })
        });
        sources.set(BLOCKED, blocked);
        // Stopping (a drain, a graceful crash), no new request comes in, so a busy process
        // turns quiet: its long requests in flight would read as no progress, and a supervisor
        // would kill the process mid-drain, cutting the requests the drain is for. The drain's
        // deadline bounds them instead (and the stall and blocked-poll checks go on). A wedge
        // raised before the stop stands until its cause clears.
        let stopping = cfg.stop_signal.load(Ordering::Relaxed)
            || health::is_draining()
            || health::crash_reason().is_some();
        if !stopping || sources.raised[NO_PROGRESS] {
            sources.set(NO_PROGRESS, stuck);
        }

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

        // A graceful shutdown that the runtime cannot carry out (all its threads blocked). A
        // crash under way has its own deadline, above, and exit code.
        if cfg.stop_signal.load(Ordering::Relaxed) && health::crash_reason().is_none() {
            let since = *stop_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= cfg.stop_backstop {
                tracing::error!(
                    "graceful shutdown did not finish in {:?} after the signal (runtime threads blocked?): exiting with code 0",
                    cfg.stop_backstop
                );
                crate::serve::exit_now(0);
            }
        }

        // Parked rather than slept, so that `stop` does not wait for the tick.
        std::thread::park_timeout(tick);
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

    #[test]
    fn labels_cut_long_paths_at_a_character_boundary() {
        assert_eq!(Label::new(&Method::GET, "/a").text(), "GET /a");
        let long = format!("/x/{}", "é".repeat(40));
        let text = Label::new(&Method::POST, &long).text();
        assert_eq!(text, "POST /x/…");
        // The cut segment would show an e-mail address without its `@`, not a placeholder.
        let mail = "/api/v1/organizations/acme/customers/by-email/jonathan.smithers@example.com";
        let text = Label::new(&Method::GET, mail).text();
        assert_eq!(text, "GET /api/v1/organizations/acme/customers/by-email/…");
        assert!(text.len() <= "POST ".len() + LABEL_PATH + '…'.len_utf8());
    }

    #[test]
    fn labels_keep_extension_methods_and_exact_fits() {
        for method in METHODS {
            assert_eq!(Label::new(&method, "/x").text(), format!("{method} /x"));
        }
        let propfind = Method::from_bytes(b"PROPFIND").unwrap();
        assert_eq!(Label::new(&propfind, "/dav/x").text(), "PROPFIND /dav/x");
        assert_eq!(
            Label::new(&propfind, "/dav/ann@example.com/7").text(),
            "PROPFIND /dav/{param}/{int}"
        );
        assert_eq!(
            Label::new(&Method::GET, "/orders/42").text(),
            "GET /orders/{int}"
        );
        let fits = format!("/{}", "a".repeat(LABEL_PATH - 1));
        assert_eq!(
            Label::new(&Method::DELETE, &fits).text(),
            format!("DELETE {fits}")
        );
        // One byte over: cut, and the segment cut with it.
        let over = format!("{fits}b");
        assert_eq!(Label::new(&Method::DELETE, &over).text(), "DELETE /…");
    }

    /// A reader racing with a writer sees one whole label or the other, never a mix.
    #[test]
    fn shared_label_reads_are_never_torn() {
        let shared = Arc::new(SharedLabel::default());
        let a = Label::new(&Method::GET, &format!("/{}", "a".repeat(60)));
        let b = Label::new(&Method::POST, &format!("/{}", "b".repeat(60)));
        shared.store(&a);
        let stop = Arc::new(AtomicBool::new(false));
        let stores = Arc::new(AtomicU64::new(0));
        let writer = {
            let (shared, stop, stores) = (shared.clone(), stop.clone(), stores.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    shared.store(if n.is_multiple_of(2) { &b } else { &a });
                    n += 1;
                    stores.store(n, Ordering::Relaxed);
                }
            })
        };
        // Reads while the writer stores (it has begun), until both labels were read whole.
        while stores.load(Ordering::Relaxed) < 1000 {
            std::hint::spin_loop();
        }
        let (mut seen_a, mut seen_b) = (0u64, 0u64);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while seen_a < 1000 || seen_b < 1000 {
            assert!(
                std::time::Instant::now() < deadline,
                "read {seen_a} a and {seen_b} b in 30 s"
            );
            if let Some(l) = shared.load() {
                assert!(l == a || l == b, "torn label: {}", l.text());
                if l == a {
                    seen_a += 1;
                } else {
                    seen_b += 1;
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        assert_eq!(shared.load(), Some(shared.load().unwrap()));
    }

    use tower::{Service, ServiceExt};

    /// Tower middleware recording each request in the [`Tracker`] the way `serve()` does
    /// ([`Tracker::begin`], [`Req::call_begins`], [`poll_tracked`]), for services in tests.
    #[derive(Clone)]
    struct Tracked<S> {
        inner: S,
        tracker: Arc<Tracker>,
    }

    impl<S> Tracked<S> {
        fn new(inner: S, tracker: Arc<Tracker>) -> Self {
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
            let tracked = self.tracker.begin(&req, None);
            let inner = {
                let _ends = tracked.call_begins();
                self.inner.call(req)
            };
            TrackedFuture {
                inner,
                req: Some(tracked),
            }
        }
    }

    pin_project_lite::pin_project! {
        struct TrackedFuture<F> {
            #[pin]
            inner: F,
            req: Option<Req>,
        }
    }

    impl<F: Future> Future for TrackedFuture<F> {
        type Output = F::Output;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
            let this = self.project();
            poll_tracked(this.req, this.inner, cx)
        }
    }

    #[tokio::test]
    async fn tracked_requests_are_in_flight_until_they_complete() {
        let tracker = Tracker::new();
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
        assert_eq!(tracker.completed(), 0);
        release.send(()).unwrap();
        assert_eq!(call.await.unwrap().unwrap(), "done");
        assert_eq!(tracker.in_flight(), 0);
        assert_eq!(tracker.completed(), 1);
    }

    /// Threads come and go (`block_in_place`, the blocking pool): their slots must not pile
    /// up in the tracker, and the counts they carried must stay, also for a request begun on
    /// a thread that exited and finished on another.
    #[test]
    fn slots_of_exited_threads_are_dropped_and_their_counts_kept() {
        let tracker = Tracker::new();
        let svc = |release: Option<tokio::sync::oneshot::Receiver<()>>| {
            let release = std::sync::Mutex::new(release);
            Tracked::new(
                tower::service_fn(move |_req: Request<()>| {
                    let release = release.lock().unwrap().take();
                    async move {
                        if let Some(rx) = release {
                            let _ = rx.await;
                        }
                        Ok::<_, std::convert::Infallible>("done")
                    }
                }),
                tracker.clone(),
            )
        };
        let get = || Request::get("/x").body(()).unwrap();
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());

        for _ in 0..20 {
            let call = svc(None).oneshot(get());
            std::thread::spawn(move || {
                let mut call = Box::pin(call);
                let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
                assert!(call.as_mut().poll(&mut cx).is_ready());
            })
            .join()
            .unwrap();
        }
        // Begun on a thread that then exits, still waiting.
        let (release, rx) = tokio::sync::oneshot::channel();
        let call = svc(Some(rx)).oneshot(get());
        let mut waiting = std::thread::spawn(move || {
            let mut call = Box::pin(call);
            let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
            assert!(call.as_mut().poll(&mut cx).is_pending());
            call
        })
        .join()
        .unwrap();
        assert_eq!(lock(&tracker.threads).len(), 21);

        tracker.tick(now_ns());
        assert_eq!(
            lock(&tracker.threads).len(),
            1,
            "the waiting request's slot stays"
        );
        assert_eq!(tracker.in_flight(), 1);
        assert_eq!(tracker.completed(), 20);

        release.send(()).unwrap();
        assert!(waiting.as_mut().poll(&mut cx).is_ready());
        drop(waiting);
        tracker.tick(now_ns());
        // This thread's slot (it finished the request) stays while this thread lives.
        assert_eq!(lock(&tracker.threads).len(), 1);
        assert_eq!(tracker.in_flight(), 0);
        assert_eq!(tracker.completed(), 21);
    }

    #[tokio::test]
    async fn a_cancelled_request_leaves_the_tracker_without_counting_as_progress() {
        let tracker = Tracker::new();
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
        assert_eq!(tracker.completed(), 0);
    }

    #[tokio::test]
    async fn a_waiting_request_is_found_as_the_oldest_once_nothing_completes() {
        let tracker = Tracker::new();
        let svc = Tracked::new(
            tower::service_fn(|_req: Request<()>| async {
                std::future::pending::<Result<(), std::convert::Infallible>>().await
            }),
            tracker.clone(),
        );
        let call = tokio::spawn(svc.oneshot(Request::get("/slow?x=1").body(()).unwrap()));
        while tracker.in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        // Its first poll returned Pending: it is entered as waiting.
        let waiting = || {
            lock(&tracker.threads)
                .iter()
                .any(|s| !lock(&s.pending).is_empty())
        };
        while !waiting() {
            tokio::task::yield_now().await;
        }
        let hang = Duration::from_secs(10).as_nanos() as u64;
        let stall = Duration::from_secs(2).as_nanos() as u64;
        // Now: nothing is old yet.
        let scan = tracker.scan(now_ns(), stall, hang);
        assert_eq!(scan.in_flight, 1);
        assert!(scan.oldest.is_none() && scan.blocked.is_none());
        // 11 s later (as the watchdog would see it): the request is the oldest, named.
        let later = now_ns() + 11 * 1_000_000_000;
        let scan = tracker.scan(later, stall, hang);
        let (age, label) = scan.oldest.expect("the waiting request");
        assert!(age > hang, "{age}");
        assert_eq!(label.text(), "GET /slow");
        assert!(scan.idle > hang);
        // Cancelled: gone from the tracker, and not progress.
        call.abort();
        let _ = call.await;
        assert_eq!(tracker.in_flight(), 0);
        assert!(!waiting());
        assert_eq!(tracker.completed(), 0);
        assert!(tracker.scan(later, stall, hang).oldest.is_none());
    }

    #[tokio::test]
    async fn a_request_marked_long_is_never_the_oldest_but_still_in_flight() {
        let tracker = Tracker::new();
        let svc = tower::service_fn(|req: Request<()>| async move {
            let long = req.uri().path() == "/long";
            if long {
                assert!(long_request(), "a tracked request is found");
            }
            // One poll returns Pending before and one after the mark, as a handler that
            // awaits something first would.
            tokio::task::yield_now().await;
            if req.uri().path() == "/late" {
                assert!(long_request());
            }
            std::future::pending::<Result<(), std::convert::Infallible>>().await
        });
        let hang = Duration::from_secs(10).as_nanos() as u64;
        let stall = Duration::from_secs(2).as_nanos() as u64;
        let later = || now_ns() + 11 * 1_000_000_000;
        let pending = |t: &Tracker| {
            lock(&t.threads)
                .iter()
                .map(|s| lock(&s.pending).len())
                .sum::<usize>()
        };
        let mut calls = Vec::new();
        for path in ["/long", "/late"] {
            let svc = Tracked::new(svc, tracker.clone());
            calls.push(tokio::spawn(
                svc.oneshot(Request::get(path).body(()).unwrap()),
            ));
        }
        // Both in flight, both past their second poll, neither waiting in the list.
        while tracker.in_flight() < 2 {
            tokio::task::yield_now().await;
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(pending(&tracker), 0);
        let scan = tracker.scan(later(), stall, hang);
        assert_eq!(scan.in_flight, 2);
        assert!(
            scan.oldest.is_none(),
            "{:?}",
            scan.oldest.map(|o| o.1.text())
        );
        // One request that did not ask is found as before, the long ones do not hide it.
        let svc = Tracked::new(svc, tracker.clone());
        calls.push(tokio::spawn(
            svc.oneshot(Request::get("/plain").body(()).unwrap()),
        ));
        while pending(&tracker) == 0 {
            tokio::task::yield_now().await;
        }
        let (_, label) = tracker.scan(later(), stall, hang).oldest.expect("/plain");
        assert_eq!(label.text(), "GET /plain");
        for c in calls {
            c.abort();
            let _ = c.await;
        }
        assert_eq!(tracker.in_flight(), 0);
    }

    #[test]
    fn long_request_outside_a_tracked_request_does_nothing() {
        assert!(!long_request());
    }

    #[test]
    fn a_blocked_poll_is_named() {
        let tracker = Tracker::new();
        let (entered_tx, entered) = std::sync::mpsc::channel::<()>();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = Arc::new(std::sync::Mutex::new(Some(released)));
        let svc = Tracked::new(
            tower::service_fn(move |_req: Request<()>| {
                let entered_tx = entered_tx.clone();
                let released = released.clone();
                async move {
                    entered_tx.send(()).unwrap();
                    // Blocking code in async: the poll does not return until released.
                    let rx = released.lock().unwrap().take();
                    if let Some(rx) = rx {
                        let _ = rx.recv();
                    }
                    Ok::<_, std::convert::Infallible>("done")
                }
            }),
            tracker.clone(),
        );
        let t = tracker.clone();
        let poller = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(svc.oneshot(Request::post("/block").body(()).unwrap()))
        });
        entered.recv().unwrap();
        let stall = Duration::from_secs(2).as_nanos() as u64;
        let hang = Duration::from_secs(10).as_nanos() as u64;
        assert!(t.scan(now_ns(), stall, hang).blocked.is_none());
        let scan = t.scan(now_ns() + 3 * 1_000_000_000, stall, hang);
        let (d, label) = scan.blocked.expect("the blocked poll");
        assert!(d > stall);
        assert_eq!(label.text(), "POST /block");
        release.send(()).unwrap();
        assert_eq!(poller.join().unwrap().unwrap(), "done");
        assert!(t
            .scan(now_ns() + 3 * 1_000_000_000, stall, hang)
            .blocked
            .is_none());
        assert_eq!(t.completed(), 1);
        assert_eq!(t.in_flight(), 0);
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
