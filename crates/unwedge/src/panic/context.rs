//! Panic context that travels by thread.
//!
//! The panic hook runs on the panicking thread before unwinding starts; `Tx` and `Mutex`
//! guards are dropped on that same thread while it unwinds; and the `catch_unwind` around a
//! future's `poll` (in [`PanicLayer`](crate::PanicLayer) and [`spawn`](crate::spawn)) catches on
//! that same thread too. A thread-local slot therefore carries the message, the location,
//! the backtrace and "which `Tx` rolled back, which `Mutex` got poisoned" from the hook and
//! the guards to whoever catches the panic.
//!
//! The slot is a short stack: code run while a panic unwinds (a `Drop`) may panic and catch
//! that second panic itself, which starts a capture of its own on top. Whoever catches the
//! first panic gets the capture that matches its payload, with every `Tx` rolled back and
//! `Mutex` poisoned meanwhile (a mutex poisoned by the inner panic is poisoned all the same).

use std::cell::{Cell, RefCell};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use super::layer::RequestScope;
use super::report::hide_userinfo_in_text;

/// What the hook and the state guards learned about the panic now unwinding on this thread.
#[derive(Debug, Clone)]
pub(crate) struct Captured {
    pub(crate) message: String,
    pub(crate) location: Option<String>,
    pub(crate) thread: Option<String>,
    pub(crate) backtrace: Option<super::trace::Trace>,
    pub(crate) at: SystemTime,
    /// Names of the `Tx`s whose update this panic rolled back.
    pub(crate) rolled_back: Vec<Arc<str>>,
    /// Names of the `Mutex`es this panic poisoned.
    pub(crate) poisoned: Vec<Arc<str>>,
    /// The same `Mutex`es, in the same order, for [`settle_caught`]: a mutex the app has
    /// repaired since (or dropped) is not decided. Only on the thread's stack: a capture
    /// taken by [`take_for`] keeps the names only.
    pub(crate) poisoned_locks: Vec<(Weak<crate::sync::LockInfo>, u64)>,
    /// The request or task that was running when the panic started.
    pub(crate) scope: Option<Arc<Scope>>,
    /// Which panic of the process this is, from 1 in the order the hook saw them start (0:
    /// one the hook did not see).
    pub(crate) number: u64,
}

impl Captured {
    fn unknown() -> Self {
        Captured {
            message: "<panic not seen by the unwedge hook>".into(),
            location: None,
            thread: std::thread::current().name().map(str::to_owned),
            backtrace: None,
            at: SystemTime::now(),
            rolled_back: Vec::new(),
            poisoned: Vec::new(),
            poisoned_locks: Vec::new(),
            scope: current_scope(),
            number: 0,
        }
    }
}

/// Who is running on this thread right now: a request (set by the panic layer around each
/// poll) or a named background task (set by [`spawn`](crate::spawn)).
#[derive(Debug)]
pub(crate) struct Scope {
    /// Human-readable owner, e.g. `GET /comments (request 3f2a…)` or `task cleanup`; a
    /// request's label is formatted only when it is displayed.
    pub(crate) label: Label,
    /// A request's `Mutex`es poisoned while it ran, left to decide when the request ends or
    /// [`CAUGHT_GRACE`] after, whichever comes first (see [`Scope::defer`]): the app may catch
    /// the panic itself and repair the mutex, after an `.await` too.
    caught: StdMutex<Vec<(PoisonedLock, Instant)>>,
    /// Whether `caught` may hold any: read without the lock on every request's end.
    any_caught: AtomicBool,
}

/// A poisoned `Mutex`: its name, a handle and the poisoning (`LockInfo::poisoning`) to
/// tell later whether it was repaired since, or repaired and poisoned again by another panic
/// (which decides its own).
type PoisonedLock = (Arc<str>, Weak<crate::sync::LockInfo>, u64);

/// A request's poisons not decided at its end (recorded in a race with the end) are decided
/// when its scope goes.
impl Drop for Scope {
    fn drop(&mut self) {
        self.settle_caught_unique();
    }
}

/// How long a poison recorded in a request may wait for the app's repair while the request
/// goes on (a long poll, a streamed response): past it, the next poll of any request decides
/// it, so that a mutex is not left poisoned for the life of a long request while the process
/// looks healthy.
pub(crate) const CAUGHT_GRACE: Duration = Duration::from_secs(1);

/// Requests with poisons waiting (see [`Scope::defer`]), by when their oldest was recorded,
/// oldest first.
static WAITING: StdMutex<std::collections::VecDeque<(Instant, Weak<Scope>)>> =
    StdMutex::new(std::collections::VecDeque::new());
/// Whether [`WAITING`] may hold any: read on every poll.
static ANY_WAITING: AtomicBool = AtomicBool::new(false);

/// At each poll's entry (and each tick of `serve()`'s canary, for a process with nothing else
/// to poll): decides the poisons that have waited longer than [`CAUGHT_GRACE`]. One load when
/// there are none.
#[inline]
pub(crate) fn decide_overdue() {
    if ANY_WAITING.load(Ordering::Relaxed) {
        decide_overdue_slow();
    }
}

#[cold]
fn decide_overdue_slow() {
    let now = Instant::now();
    // Another thread deciding, or recording: the next poll looks again.
    let Ok(mut waiting) = WAITING.try_lock() else {
        return;
    };
    let mut due = Vec::new();
    while let Some((at, _)) = waiting.front() {
        if now.duration_since(*at) < CAUGHT_GRACE {
            break;
        }
        due.extend(waiting.pop_front().and_then(|(_, scope)| scope.upgrade()));
    }
    ANY_WAITING.store(!waiting.is_empty(), Ordering::Relaxed);
    drop(waiting);
    // Outside the lock: deciding (or the last handle's drop) asks for a crash.
    for scope in due {
        if let Some(oldest) = scope.decide_due(now) {
            // A poison recorded (or recorded again) since: it waits its own grace.
            wait(oldest, &scope);
        }
    }
}

/// Puts `scope` in [`WAITING`], due [`CAUGHT_GRACE`] after `since`.
fn wait(since: Instant, scope: &Arc<Scope>) {
    let mut waiting = WAITING.lock().unwrap_or_else(|e| e.into_inner());
    let at = waiting.partition_point(|(t, _)| *t <= since);
    waiting.insert(at, (since, Arc::downgrade(scope)));
    ANY_WAITING.store(true, Ordering::Relaxed);
}

/// A [`Scope`]'s label: the text itself, or the parts of a request it is made of.
#[derive(Debug)]
// A request's parts are inline: each request's scope is one allocation, and the rare task
// scopes pay the size instead.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Label {
    /// Fixed text, e.g. `task cleanup`.
    Text(Arc<str>),
    /// A request: `METHOD /path (request ID)`.
    Request(RequestScope),
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Label::Text(text) => f.write_str(text),
            Label::Request(r) => fmt::Display::fmt(r, f),
        }
    }
}

impl Scope {
    pub(crate) fn new(label: impl Into<Arc<str>>) -> Arc<Self> {
        Self::labelled(Label::Text(label.into()))
    }

    pub(crate) fn request(request: RequestScope) -> Arc<Self> {
        Self::labelled(Label::Request(request))
    }

    fn labelled(label: Label) -> Arc<Self> {
        Arc::new(Scope {
            label,
            caught: Default::default(),
            any_caught: AtomicBool::new(false),
        })
    }

    /// The request this scope runs, if it is one, to fill in.
    pub(crate) fn as_request_mut(&mut self) -> Option<&mut RequestScope> {
        match &mut self.label {
            Label::Request(r) => Some(r),
            Label::Text(_) => None,
        }
    }

    /// The request this scope runs, if it is one.
    pub(crate) fn as_request(&self) -> Option<&RequestScope> {
        match &self.label {
            Label::Request(r) => Some(r),
            Label::Text(_) => None,
        }
    }

    /// Keeps a poison recorded while this request ran, to decide when the request ends
    /// ([`Scope::settle_caught`]) or [`CAUGHT_GRACE`] after, whichever comes first. Recorded
    /// where the panic unwinds, it is the request's wherever the request goes on or ends (a
    /// thread's capture is seen again only when that thread next polls). A panic the layer
    /// catches is decided by the layer first, by the same policy: a second decision changes
    /// nothing.
    fn defer(self: &Arc<Self>, poisoned: PoisonedLock) {
        let now = Instant::now();
        let first = {
            let mut caught = self.caught.lock().unwrap_or_else(|e| e.into_inner());
            // Each mutex once: one poisoned again (a loop catching its panics) waits its
            // grace from its latest poison.
            match caught
                .iter_mut()
                .find(|((_, lock, _), _)| lock.ptr_eq(&poisoned.1))
            {
                Some((known, at)) => {
                    known.2 = poisoned.2;
                    *at = now;
                }
                None => caught.push((poisoned, now)),
            }
            !self.any_caught.swap(true, Ordering::AcqRel)
        };
        // The request waits once at a time in `WAITING`: from its first poison not yet
        // decided; when that is due, the request's later ones wait on (`decide_overdue`).
        if first {
            wait(now, self);
        }
    }

    /// Decides the poisons recorded [`CAUGHT_GRACE`] or longer before `now`; returns when
    /// the oldest of the rest was recorded.
    fn decide_due(&self, now: Instant) -> Option<Instant> {
        let (due, oldest) = {
            let mut caught = self.caught.lock().unwrap_or_else(|e| e.into_inner());
            let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut *caught)
                .into_iter()
                .partition(|(_, at)| now.duration_since(*at) >= CAUGHT_GRACE);
            let oldest = rest.iter().map(|(_, at)| *at).min();
            *caught = rest;
            self.any_caught.store(oldest.is_some(), Ordering::Relaxed);
            (due, oldest)
        };
        self.decide(due);
        oldest
    }

    /// Decides `caught`, by this scope's policy.
    fn decide(&self, caught: Vec<(PoisonedLock, Instant)>) {
        decide_caught(
            caught.into_iter().map(|(p, _)| p),
            Some(self),
            &mut Vec::new(),
        );
    }

    /// The layer decided these (a panic it caught itself, its report listing them): not
    /// decided again at the request's end, with another reason.
    pub(crate) fn forget_caught(&self, names: &[Arc<str>]) {
        if names.is_empty() || !self.any_caught.load(Ordering::Acquire) {
            return;
        }
        let mut caught = self.caught.lock().unwrap_or_else(|e| e.into_inner());
        caught.retain(|((name, _, _), _)| !names.contains(name));
    }

    /// When the request ends (its response ready, or its future dropped): decides each
    /// `Mutex` a panic the app caught while it ran left poisoned, unless the app repaired it
    /// since. One load when there is none.
    #[inline]
    pub(crate) fn settle_caught(&self) {
        if self.any_caught.load(Ordering::Acquire) {
            self.settle_caught_slow();
        }
    }

    #[cold]
    fn settle_caught_slow(&self) {
        let caught = {
            let mut caught = self.caught.lock().unwrap_or_else(|e| e.into_inner());
            self.any_caught.store(false, Ordering::Relaxed);
            std::mem::take(&mut *caught)
        };
        self.decide(caught);
    }

    /// [`Scope::settle_caught`] with the scope to itself (its last handle, before it is
    /// dropped or reused for another request): no lock, no atomic operation.
    pub(crate) fn settle_caught_unique(&mut self) {
        *self.any_caught.get_mut() = false;
        let caught = self.caught.get_mut().unwrap_or_else(|e| e.into_inner());
        if !caught.is_empty() {
            let caught = std::mem::take(caught);
            self.decide(caught);
        }
    }
}

/// Most captures kept on one thread at once (panics nested in `Drop`s while one unwinds);
/// beyond, the oldest but the first are dropped.
const MAX_NESTED: usize = 8;

thread_local! {
    static CAPTURE: RefCell<Vec<Captured>> = const { RefCell::new(Vec::new()) };
    // A `Cell` (replace, take) rather than a `RefCell`: no borrow flag on the per-poll path.
    static SCOPE: Cell<Option<Arc<Scope>>> = const { Cell::new(None) };
}

/// Runs `f` with `scope` as this thread's current scope, restoring the previous one after
/// (also when `f` panics).
pub(crate) fn with_scope<R>(scope: &Arc<Scope>, f: impl FnOnce() -> R) -> R {
    let mut slot = Some(scope.clone());
    with_scope_in(&mut slot, f)
}

/// Like [`with_scope`], but moves the scope out of `slot` into the thread-local and back
/// (also when `f` panics) instead of cloning it: no reference count is touched. `slot` is
/// `None` while `f` runs; an empty `slot` runs `f` with no scope.
pub(crate) fn with_scope_in<R>(slot: &mut Option<Arc<Scope>>, f: impl FnOnce() -> R) -> R {
    struct Restore<'a> {
        slot: &'a mut Option<Arc<Scope>>,
        prev: Option<Arc<Scope>>,
    }
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            let prev = self.prev.take();
            if let Ok(ours) = SCOPE.try_with(|s| s.replace(prev)) {
                *self.slot = ours;
            }
        }
    }
    // A capture left on this thread is stale: its panic was caught by someone else (tokio's
    // `JoinHandle`, a `catch_unwind` of the app's). A panic re-raised later with
    // `resume_unwind` skips the hook, and would otherwise be reported with that capture. It
    // goes, the mutexes its panic poisoned decided first. (Not while dropping what a panic
    // just caught left behind: that panic's capture is on the stack, to be reported next.)
    if !after_panic_here() {
        settle_caught();
        decide_overdue();
    }
    // The closure runs (and takes the scope out of `slot`) only while the thread-local lives.
    match SCOPE.try_with(|s| s.replace(slot.take())) {
        Ok(prev) => {
            let _restore = Restore { slot, prev };
            f()
        }
        // The thread is exiting: run without a scope.
        Err(_) => f(),
    }
}

/// The scope running on this thread, if any.
pub(crate) fn current_scope() -> Option<Arc<Scope>> {
    SCOPE
        .try_with(|s| {
            let scope = s.take();
            let copy = scope.clone();
            s.set(scope);
            copy
        })
        .ok()
        .flatten()
}

/// Panics the hook has seen start, in the whole process: a capture is of a panic that started
/// after a moment (a lock taken) when its number is higher than this count was then.
static STARTED: AtomicU64 = AtomicU64::new(0);

/// How many panics the hook has seen start so far (see [`peek_message_since`]).
#[inline]
pub(crate) fn panics_started() -> u64 {
    STARTED.load(Ordering::Relaxed)
}

/// Threads now dropping what a caught panic left behind ([`drop_after_panic`]): zero but for
/// those moments, so that taking and dropping a guard costs one relaxed load, not a lookup of
/// a thread-local.
static AFTER_PANIC: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static AFTER_PANIC_HERE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, which drops what a panic just caught on this thread left behind (the handler's
/// future, a response body, a task's future) before the panic is reported, as the panic's
/// unwinding would have dropped it: a `MutexGuard` it holds poisons its mutex, listed in the
/// panic's report. (An `async` block's state is dropped while the panic unwinds; a
/// hand-written future, stream or body that holds a guard is dropped only once the panic was
/// caught, with `std::thread::panicking()` false, and released the lock over half-updated data.)
pub(crate) fn drop_after_panic<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            let _ = AFTER_PANIC_HERE.try_with(|c| c.set(self.0));
            AFTER_PANIC.fetch_sub(1, Ordering::Relaxed);
        }
    }
    AFTER_PANIC.fetch_add(1, Ordering::Relaxed);
    let _reset = Reset(
        AFTER_PANIC_HERE
            .try_with(|c| c.replace(true))
            .unwrap_or(false),
    );
    f()
}

/// Whether this thread is unwinding a panic, or dropping what a caught one left behind
/// ([`drop_after_panic`]): a guard dropped now breaks its section off.
#[inline]
pub(crate) fn panicking() -> bool {
    std::thread::panicking() || after_panic_here()
}

/// Whether this thread is in [`drop_after_panic`].
#[inline]
fn after_panic_here() -> bool {
    AFTER_PANIC.load(Ordering::Relaxed) != 0
        && AFTER_PANIC_HERE
            .try_with(std::cell::Cell::get)
            .unwrap_or(false)
}

/// Called by the panic hook: starts a capture for the panic that is starting, on top of the
/// one of a panic still unwinding, if any.
pub(crate) fn begin(mut captured: Captured) {
    captured.number = STARTED.fetch_add(1, Ordering::Relaxed) + 1;
    let _ = CAPTURE.try_with(|c| {
        let mut stack = c.borrow_mut();
        if stack.len() >= MAX_NESTED {
            stack.remove(1);
        }
        stack.push(captured);
    });
}

/// Runs `f` on the capture of the innermost panic unwinding on this thread.
fn with_current(f: impl FnOnce(&mut Captured)) {
    let _ = CAPTURE.try_with(|c| {
        let mut stack = c.borrow_mut();
        if stack.is_empty() {
            stack.push(Captured::unknown());
        }
        if let Some(top) = stack.last_mut() {
            f(top);
        }
    });
}

/// Most `Tx`s, and most `Mutex`es, one capture lists. Without unwedge's hook (never installed,
/// or replaced) the panics that roll back or poison have no capture of their own: on a thread
/// no request or task of ours runs on, nothing takes the one they share, and it would grow
/// with every such panic for the life of the thread.
const MAX_NAMES: usize = 64;

/// Called by `Tx` when a panic unwinds out of an update: the update was discarded.
pub(crate) fn record_rollback(name: &Arc<str>) {
    with_current(|c| {
        if c.rolled_back.len() < MAX_NAMES && !c.rolled_back.contains(name) {
            c.rolled_back.push(name.clone());
        }
    });
}

/// Called by a `MutexGuard` dropped while its thread panics: the mutex is now poisoned.
pub(crate) fn record_poison(lock: &Arc<crate::sync::LockInfo>) {
    let stamp = lock.poisoning();
    with_current(|c| {
        let known = c
            .poisoned_locks
            .iter_mut()
            .find(|(l, _)| std::ptr::eq(l.as_ptr(), Arc::as_ptr(lock)));
        match known {
            Some((_, at)) => *at = stamp,
            None if c.poisoned.len() < MAX_NAMES => {
                c.poisoned.push(lock.name().clone());
                c.poisoned_locks.push((Arc::downgrade(lock), stamp));
            }
            None => {}
        }
    });
    // In a request: the request's to decide (see `Scope::defer`), in case the app catches
    // the panic itself.
    if let Some(scope) = current_scope().filter(|s| s.as_request().is_some()) {
        scope.defer((lock.name().clone(), Arc::downgrade(lock), stamp));
    }
}

/// When a request or task completed, and before a poll of one begins: a capture left on this
/// thread is of a panic that someone else caught (the app itself: `catch_unwind` in a handler,
/// tower-http's `CatchPanicLayer` inside the [`PanicLayer`](crate::PanicLayer); or tokio, for a
/// plain task), which no layer of ours will decide. A `Mutex` it poisoned would stay
/// poisoned, every later `lock()` an error, while the process looked healthy: each is decided
/// by the policy that decides the panics of the request or task it happened in. A request's
/// were recorded in the request as they happened, to decide when it ends or
/// [`CAUGHT_GRACE`] after ([`Scope::defer`]), so that the app may repair the mutex after an
/// `.await` first; a task's, or one outside any request, are decided now. Checked once per
/// request (and per poll entry, where the stale capture was cleared anyway): the rest is out
/// of line.
#[inline]
pub(crate) fn settle_caught() {
    let caught = CAPTURE.try_with(|c| match c.try_borrow_mut() {
        Ok(mut stack) if !stack.is_empty() => Some(std::mem::take(&mut *stack)),
        _ => None,
    });
    if let Ok(Some(caught)) = caught {
        settle(caught);
    }
}

#[cold]
fn settle(caught: Vec<Captured>) {
    let mut seen: Vec<Arc<str>> = Vec::new();
    for capture in caught {
        if capture.poisoned_locks.is_empty() {
            continue;
        }
        // A request's are its own to decide: recorded there as they happened.
        if capture
            .scope
            .as_ref()
            .is_some_and(|s| s.as_request().is_some())
        {
            continue;
        }
        let poisoned = capture
            .poisoned
            .into_iter()
            .zip(capture.poisoned_locks)
            .map(|(name, (lock, stamp))| (name, lock, stamp));
        decide_caught(poisoned, capture.scope.as_deref(), &mut seen);
    }
}

/// Decides each of `poisoned` still poisoned by that poisoning (not repaired by the app since,
/// nor repaired and poisoned again by another panic, which decides its own, nor gone) and not
/// in `seen`, by the policy of `scope`, the request or task it happened in.
fn decide_caught(
    poisoned: impl IntoIterator<Item = PoisonedLock>,
    scope: Option<&Scope>,
    seen: &mut Vec<Arc<str>>,
) {
    for (name, lock, stamp) in poisoned {
        if !lock.upgrade().is_some_and(|l| l.still_poisoned_by(stamp)) || seen.contains(&name) {
            continue;
        }
        crate::sync::escalate_poison_in(&name, "a panic the app caught itself", scope);
        seen.push(name);
    }
}

/// The message and location of the panic unwinding on this thread, if the hook saw it start
/// after [`panics_started`] returned `since`: a capture left from an earlier panic (caught by
/// code of the app, its unwinding now resumed with `resume_unwind`, which skips the hook) is
/// not this panic's.
pub(crate) fn peek_message_since(since: u64) -> Option<(String, Option<String>)> {
    CAPTURE
        .try_with(|c| {
            c.borrow()
                .last()
                .filter(|c| c.number > since)
                .map(|c| (c.message.clone(), c.location.clone()))
        })
        .ok()
        .flatten()
}

/// Takes what is known of the panic that was just caught on this thread, whose payload is
/// `payload`: the innermost capture with its message (the innermost if none has it, a stub if
/// the hook saw none), with the `Tx`s rolled back and `Mutex`es poisoned by every panic of
/// the stack (a panic caught inside a `Drop` while this one unwound poisoned them just the
/// same). The stack is left empty.
pub(crate) fn take_for(payload: &(dyn std::any::Any + Send)) -> Captured {
    let mut stack = CAPTURE
        .try_with(|c| std::mem::take(&mut *c.borrow_mut()))
        .unwrap_or_default();
    if stack.len() <= 1 {
        return stack.pop().unwrap_or_else(Captured::unknown);
    }
    let message = payload_message(payload);
    let at = stack
        .iter()
        .rposition(|c| c.message == message)
        .unwrap_or(stack.len() - 1);
    let mut chosen = stack.remove(at);
    for other in stack {
        for name in other.rolled_back {
            if !chosen.rolled_back.contains(&name) {
                chosen.rolled_back.push(name);
            }
        }
        // Only those still poisoned by that panic: one the app caught and repaired before
        // this panic (an older capture of the same poll) is no part of it.
        for (name, (lock, stamp)) in other.poisoned.into_iter().zip(other.poisoned_locks) {
            let poisoned = lock.upgrade().is_some_and(|l| l.still_poisoned_by(stamp));
            if poisoned && !chosen.poisoned.contains(&name) {
                chosen.poisoned.push(name);
            }
        }
    }
    chosen
}

/// Extracts the message from a panic payload (`&str` or `String`; anything else is opaque),
/// the user and password of every URL in it shown `…` (`postgres://…@db/app`, see
/// [`hide_userinfo_in_text`]) and the value after every credential name (`Authorization`,
/// `Cookie`, `X-Api-Key`, `password`, …) shown `[redacted]` (a request's
/// `{:?}`, whose headers print `{"authorization": "Bearer …"}`: see
/// [`scrub_credentials`](unwedge_redact::scrub_credentials)): the report, its log event, the notify message, a client's
/// `detail`, a backtrace's label and a poisoned mutex's error all take the message from here.
pub(crate) fn payload_message(payload: &(dyn std::any::Any + Send)) -> String {
    cut_message(redacted_message(payload))
}

/// A panic's message as [`payload_message`] gives it, not cut: for std's line, which prints
/// the whole message.
pub(crate) fn redacted_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = if let Some(s) = payload.downcast_ref::<&str>() {
        *s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.as_str()
    } else {
        return "Box<dyn Any>".to_owned();
    };
    let text = hide_userinfo_in_text(text);
    match unwedge_redact::scrub_credentials(&text) {
        Some(scrubbed) => scrubbed,
        None => text.into_owned(),
    }
}

/// A redacted message cut to [`MAX_MESSAGE`]. Cut after hiding: what was hidden in the whole
/// message stays hidden in its start.
pub(crate) fn cut_message(mut text: String) -> String {
    if text.len() > MAX_MESSAGE {
        text.truncate(crate::text::floor_char_boundary(&text, MAX_MESSAGE));
        text.push_str(CUT_MARK);
    }
    text
}

/// Longest panic message kept (in bytes; a longer one is cut on a character boundary and
/// [`CUT_MARK`] appended): a message is a line of a log and an entry of the health registry's
/// recent reports, and a megabyte built from a request must not be copied into each.
pub(crate) const MAX_MESSAGE: usize = unwedge_redact::MAX_MESSAGE;

/// What ends a message cut to [`MAX_MESSAGE`] (the mark a report cut to fit a notify datagram
/// ends with, which the supervisor knows).
pub(crate) const CUT_MARK: &str = unwedge_redact::CUT_MARK;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payloads_message_shows_no_url_password() {
        let text = "failed to connect to postgres://app:s3cret@db:5432/app";
        let shown = "failed to connect to postgres://…@db:5432/app";
        assert_eq!(payload_message(&text), shown);
        assert_eq!(payload_message(&text.to_owned()), shown);
        assert_eq!(payload_message(&"boom"), "boom");
        assert_eq!(payload_message(&42), "Box<dyn Any>");
        let text = r#"unexpected {"authorization": "Bearer s3cret", "cookie": "sid=c00kie"}"#;
        let shown = r#"unexpected {"authorization": "[redacted]", "cookie": "[redacted]"}"#;
        assert_eq!(payload_message(&text), shown);
        assert_eq!(
            payload_message(&"Authorization: Bearer s3cret at postgres://a:pw@db"),
            "Authorization: [redacted]"
        );
    }
}
