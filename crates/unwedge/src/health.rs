//! The process-wide health registry.
//!
//! One registry per process answers "can this process still do its job?":
//!
//! | state | meaning | `/livez` | `/readyz` |
//! | --- | --- | --- | --- |
//! | [`Healthy`](HealthState::Healthy) | serving normally | ok | ok once ready |
//! | [`Draining`](HealthState::Draining) | shutting down, finishing requests in flight | ok | fails |
//! | [`Tainted`](HealthState::Tainted) | state may be corrupt (a poisoned [`Mutex`](crate::Mutex)); a graceful crash is pending when the panic policy asked for one ([`request_crash`]) | fails | fails |
//! | [`Wedged`](HealthState::Wedged) | runtime stalled, a lock wait over its limit, a deadlock, or no request progress | fails | fails |
//!
//! Tainted is sticky: only a new process is clean. Wedged clears when its cause does (a lock
//! wait that finally succeeds, a runtime that schedules again).
//!
//! Being one per process, it speaks for every [`serve`](crate::serve()) of the process: when
//! one of several stops (its drain, its return), the process reads Draining and not ready,
//! and the others' watchdogs take it for stopping (no no-progress check) for the rest of its
//! life. A process that runs several servers stops them together, or runs the one that
//! outlives the others outside `serve()`.
//!
//! ```
//! use unwedge::{health, HealthState};
//! unwedge::health::set_ready(true);
//! assert_eq!(health().state, HealthState::Healthy);
//! unwedge::health::set_wedged("lock:db", "waiting for `db` for 12s");
//! assert_eq!(health().state, HealthState::Wedged);
//! unwedge::health::clear_wedged("lock:db");
//! assert_eq!(health().state, HealthState::Healthy);
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use serde::Serialize;
use tokio::sync::watch;

use crate::panic::PanicReport;

/// How many recent panic reports the registry keeps.
pub const RECENT_REPORTS: usize = 16;

/// How many routes [`Health::panics_by_route`] counts apart; panics on further routes are
/// counted under [`OTHER_ROUTES`] (a path that is not a matched route, e.g. outside axum, is
/// the client's choice: its identifiers become placeholders, `/users/{int}`, but a slug
/// stays, and the map must not grow with it).
pub const MAX_PANIC_ROUTES: usize = 256;

/// The longest key of [`Health::panics_by_route`], in bytes, `…` included: a longer route (a
/// raw path, up to 64 KiB, is the client's choice) is cut at a character boundary and marked
/// `…`, so that the map holds at most [`MAX_PANIC_ROUTES`] keys of this size. The `tracing`
/// event of a panic carries the same cut route.
pub const MAX_ROUTE_KEY: usize = 256;

/// The key of [`Health::panics_by_route`] for routes beyond [`MAX_PANIC_ROUTES`].
pub const OTHER_ROUTES: &str = "other";

/// The health of this process. See the [module docs](self).
///
/// ```
/// use unwedge::HealthState;
/// assert_eq!(unwedge::health().state, HealthState::Healthy);
/// unwedge::health::set_draining();
/// assert_eq!(unwedge::health().state, HealthState::Draining);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// Serving normally.
    Healthy,
    /// Shutting down gracefully: finishing requests in flight, taking no new ones.
    Draining,
    /// State may be corrupt; a graceful crash is pending when the panic policy asked for one
    /// ([`request_crash`]; [`set_tainted`] alone does not).
    Tainted,
    /// The process cannot make progress (stall, lock wait, deadlock, stuck requests).
    Wedged,
}

impl HealthState {
    /// Lower-case name, as used in `STATUS=` and JSON.
    ///
    /// ```
    /// use unwedge::HealthState;
    /// assert_eq!(HealthState::Wedged.as_str(), "wedged");
    /// assert_eq!(HealthState::Draining.to_string(), "draining"); // `Display` says the same
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Healthy => "healthy",
            HealthState::Draining => "draining",
            HealthState::Tainted => "tainted",
            HealthState::Wedged => "wedged",
        }
    }

    /// Whether `/livez` should pass: not tainted and not wedged.
    ///
    /// ```
    /// use unwedge::HealthState;
    /// assert!(HealthState::Draining.is_live()); // still finishing requests
    /// assert!(!HealthState::Tainted.is_live());
    /// assert!(!HealthState::Wedged.is_live());
    /// ```
    pub fn is_live(self) -> bool {
        matches!(self, HealthState::Healthy | HealthState::Draining)
    }
}

impl fmt::Display for HealthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot of the registry, returned by [`health()`].
///
/// ```
/// let h = unwedge::health();
/// assert_eq!(h.state, unwedge::HealthState::Healthy);
/// assert_eq!(h.panics_total, 0);
/// assert!(h.recent_reports.is_empty());
/// ```
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Health {
    /// The overall state.
    pub state: HealthState,
    /// Why the state is not Healthy (the first cause when several apply).
    pub reason: Option<String>,
    /// Whether the process said it is ready to take requests (see [`set_ready`]).
    pub ready: bool,
    /// Panics caught since the process started.
    pub panics_total: u64,
    /// Panics by route (`METHOD /route`, or `task NAME`); at most [`MAX_PANIC_ROUTES`] routes,
    /// the rest under [`OTHER_ROUTES`]. The route is axum's matched route template when the
    /// layer sits inside a `Router`, otherwise the path with its identifiers (digits, UUIDs,
    /// long hex or mixed ids, e-mail addresses) replaced by placeholders: `GET /users/{int}`
    /// (see [`unwedge_redact::route_template`]).
    pub panics_by_route: BTreeMap<String, u64>,
    /// The last [`RECENT_REPORTS`] panic reports, oldest first.
    pub recent_reports: Vec<PanicReport>,
}

impl Health {
    /// Whether `/readyz` should pass: ready, and healthy.
    ///
    /// ```
    /// assert!(!unwedge::health().is_ready()); // not until the process says so
    /// unwedge::health::set_ready(true);
    /// assert!(unwedge::health().is_ready());
    /// unwedge::health::set_draining();
    /// assert!(!unwedge::health().is_ready()); // ready, but no longer healthy
    /// ```
    pub fn is_ready(&self) -> bool {
        self.ready && self.state == HealthState::Healthy
    }
}

#[derive(Default)]
struct Inner {
    ready: bool,
    draining: bool,
    tainted: Option<String>,
    wedged: BTreeMap<String, String>,
    panics_total: u64,
    panics_by_route: BTreeMap<String, u64>,
    recent: VecDeque<PanicReport>,
    /// Changes so far: the order in which their states are published (see [`change`]).
    version: u64,
}

impl Inner {
    fn state(&self) -> (HealthState, Option<String>) {
        if let Some(r) = &self.tainted {
            (HealthState::Tainted, Some(r.clone()))
        } else if let Some(r) = self.wedged.values().next() {
            (HealthState::Wedged, Some(r.clone()))
        } else if self.draining {
            (HealthState::Draining, Some("shutting down".into()))
        } else {
            (HealthState::Healthy, None)
        }
    }
}

struct Registry {
    inner: Mutex<Inner>,
    state_tx: watch::Sender<(HealthState, Option<String>)>,
    crash_tx: watch::Sender<Option<String>>,
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| Registry {
        inner: Mutex::new(Inner::default()),
        state_tx: watch::Sender::new((HealthState::Healthy, None)),
        crash_tx: watch::Sender::new(None),
    })
}

fn lock() -> MutexGuard<'static, Inner> {
    // The registry's own critical sections cannot panic halfway; poison carries no meaning.
    registry()
        .inner
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn change(f: impl FnOnce(&mut Inner)) {
    let (now, version) = {
        let mut inner = lock();
        f(&mut inner);
        inner.version += 1;
        (inner.state(), inner.version)
    };
    // Published after the registry's lock is released (a receiver holding a `borrow()` may
    // read `health()`, which takes that lock: holding both here would deadlock it), in the
    // order of the changes: under the watch's own lock, a state computed before the one
    // published last is not published over it. The last state published is the registry's.
    static PUBLISHED: AtomicU64 = AtomicU64::new(0);
    let changed = registry().state_tx.send_if_modified(|cur| {
        if PUBLISHED.load(Ordering::Relaxed) > version {
            return false;
        }
        PUBLISHED.store(version, Ordering::Relaxed);
        if *cur == now {
            return false;
        }
        cur.clone_from(&now);
        true
    });
    if changed {
        match now.0 {
            HealthState::Healthy => tracing::info!(state = %now.0, "health changed"),
            _ => tracing::warn!(
                state = %now.0,
                reason = now.1.as_deref().unwrap_or(""),
                "health changed"
            ),
        }
    }
}

/// A snapshot of this process's health.
///
/// ```
/// let h = unwedge::health();
/// println!("{} ({} panics so far)", h.state, h.panics_total);
/// ```
pub fn health() -> Health {
    let inner = lock();
    let (state, reason) = inner.state();
    Health {
        state,
        reason,
        ready: inner.ready,
        panics_total: inner.panics_total,
        panics_by_route: inner.panics_by_route.clone(),
        recent_reports: inner.recent.iter().cloned().collect(),
    }
}

/// The state, its reason and whether the process said it is ready: what a probe answers,
/// without copying the recent reports [`health`] copies (a probe may come several times a
/// second, from anyone who reaches the port).
pub(crate) fn probe_state() -> (HealthState, Option<String>, bool) {
    let inner = lock();
    let (state, reason) = inner.state();
    (state, reason, inner.ready)
}

/// Watches the overall state and its reason: a [`watch`] receiver, which sees the latest
/// value and is woken on each change (a change undone before it looks, a brief Wedged, may be
/// missed; [`health()`] and the panic reports keep the history).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let mut rx = unwedge::health::subscribe();
/// let (state, _reason) = rx.borrow_and_update().clone();
/// println!("now {state}");
/// # }
/// ```
pub fn subscribe() -> watch::Receiver<(HealthState, Option<String>)> {
    registry().state_tx.subscribe()
}

/// Marks the process ready (or not) to take requests; `/readyz` follows it.
/// [`serve`](crate::serve()) sets it once its listeners accept.
///
/// ```
/// unwedge::health::set_ready(true);
/// assert!(unwedge::health().ready);
/// unwedge::health::set_ready(false); // e.g. while a cache warms up again
/// assert!(!unwedge::health().is_ready());
/// ```
pub fn set_ready(ready: bool) {
    change(|i| i.ready = ready);
}

/// Marks the process as draining (graceful shutdown has started).
///
/// ```
/// unwedge::health::set_draining();
/// assert_eq!(unwedge::health().state, unwedge::HealthState::Draining);
/// ```
pub fn set_draining() {
    change(|i| i.draining = true);
}

/// Whether a graceful shutdown has started ([`set_draining`]), whatever the state shows
/// (a Tainted or Wedged process may be draining too).
pub(crate) fn is_draining() -> bool {
    lock().draining
}

/// Marks the process tainted: some state may be corrupt. Sticky for the life of the process;
/// the first reason is kept. `/livez` fails from then on, but nothing ends the process:
/// [`request_crash`] taints it and asks [`serve`](crate::serve()) for a graceful crash.
///
/// ```
/// unwedge::health::set_tainted("mutex `cache` poisoned");
/// assert!(!unwedge::health().state.is_live());
/// ```
pub fn set_tainted(reason: impl Into<String>) {
    let reason = reason.into();
    change(|i| {
        i.tainted.get_or_insert(reason);
    });
}

/// Marks the process wedged because of `source` (a key such as `"stall"` or `"lock:cache"`)
/// with a human-readable reason. Each source is cleared on its own with [`clear_wedged`].
///
/// ```
/// unwedge::health::set_wedged("stall", "runtime did not schedule for 2.4s");
/// assert_eq!(unwedge::health().state, unwedge::HealthState::Wedged);
/// # unwedge::health::clear_wedged("stall");
/// ```
pub fn set_wedged(source: impl Into<String>, reason: impl Into<String>) {
    let (source, reason) = (source.into(), reason.into());
    change(|i| {
        i.wedged.insert(source, reason);
    });
}

/// Clears the wedge recorded for `source`, if any.
///
/// ```
/// unwedge::health::clear_wedged("never-set"); // clearing an unknown source is fine
/// ```
pub fn clear_wedged(source: &str) {
    change(|i| {
        i.wedged.remove(source);
    });
}

/// `route` as a key of [`Health::panics_by_route`]: at most [`MAX_ROUTE_KEY`] bytes, a longer
/// one cut at a character boundary and ended with `…` (a route already cut stays as it is).
pub(crate) fn route_key(route: &str) -> std::borrow::Cow<'_, str> {
    crate::text::cut_marked(route, MAX_ROUTE_KEY)
}

/// Records a caught panic: counts it by route and keeps the report among the recent ones.
/// Called by [`PanicLayer`](crate::PanicLayer) and [`spawn`](crate::spawn).
///
/// ```
/// # let report: unwedge::PanicReport = serde_json::from_str(r#"{"time":"t","pid":1,
/// #  "message":"m","location":null,"thread":null,"backtrace":null,"request":null,
/// #  "task":null,"rolled_back":[],"poisoned":[],"decision":null}"#).unwrap();
/// unwedge::health::record_panic("GET /x", report);
/// assert_eq!(unwedge::health().panics_by_route["GET /x"], 1);
/// ```
pub fn record_panic(route: &str, report: PanicReport) {
    let route = route_key(route);
    let route = route.as_ref();
    let mut inner = lock();
    inner.panics_total += 1;
    let routes = &mut inner.panics_by_route;
    let key = if routes.contains_key(route) || routes.len() < MAX_PANIC_ROUTES {
        route
    } else {
        OTHER_ROUTES
    };
    *routes.entry(key.to_owned()).or_default() += 1;
    if inner.recent.len() == RECENT_REPORTS {
        inner.recent.pop_front();
    }
    inner.recent.push_back(report);
}

/// Asks for a graceful crash: taints the process and wakes [`crash_requested`]. The first
/// reason wins; later requests are no-ops.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// unwedge::health::request_crash("mutex `cache` poisoned");
/// assert_eq!(unwedge::health::crash_requested().await, "mutex `cache` poisoned");
/// # }
/// ```
pub fn request_crash(reason: impl Into<String>) {
    let reason = reason.into();
    set_tainted(reason.clone());
    registry().crash_tx.send_if_modified(|cur| {
        if cur.is_none() {
            *cur = Some(reason);
            true
        } else {
            false
        }
    });
}

/// The reason of the pending crash, if one was requested.
///
/// ```
/// assert_eq!(unwedge::health::crash_reason(), None);
/// unwedge::health::request_crash("mutex `cache` poisoned");
/// unwedge::health::request_crash("a later reason"); // the first one wins
/// assert_eq!(unwedge::health::crash_reason().as_deref(), Some("mutex `cache` poisoned"));
/// ```
pub fn crash_reason() -> Option<String> {
    registry().crash_tx.borrow().clone()
}

/// Resolves (with the reason) once a graceful crash has been requested, at once if it already
/// was. [`serve`](crate::serve()) waits on this; without `serve()`, wait on it yourself, drain,
/// and exit with code 70 (`EX_SOFTWARE`).
///
/// # Cancel safety
/// Cancel safe: dropping the future loses nothing; a later call sees the same request.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// tokio::spawn(async { unwedge::health::request_crash("state corrupt") });
/// let reason = unwedge::health::crash_requested().await; // drain here, then exit 70
/// assert_eq!(reason, "state corrupt");
/// # }
/// ```
pub async fn crash_requested() -> String {
    let mut rx = registry().crash_tx.subscribe();
    let reason = rx
        .wait_for(Option::is_some)
        .await
        .expect("the crash sender lives in a static and is never dropped");
    reason.clone().expect("waited for Some")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test, since the registry is process-wide: under `cargo test` the tests of this
    /// binary share one process, and a map another test filled would count our route apart.
    #[test]
    fn panics_by_route_stays_bounded_in_key_size_and_count() {
        let report: PanicReport = serde_json::from_str(
            r#"{"time":"t","pid":1,"message":"m","location":null,"thread":null,
            "backtrace":null,"request":null,"task":null,"rolled_back":[],"poisoned":[],
            "decision":null}"#,
        )
        .unwrap();
        // 400 KiB of a client's path, with a multi-byte character across the cut.
        let long = format!(
            "GET /{}é{}",
            "a".repeat(MAX_ROUTE_KEY - 6),
            "b".repeat(400 << 10)
        );
        record_panic(&long, report.clone());
        record_panic(&long, report.clone());
        let h = health();
        let (key, count) = h
            .panics_by_route
            .iter()
            .find(|(k, _)| k.starts_with("GET /aaa"))
            .expect("counted");
        assert_eq!(*count, 2);
        assert!(key.len() <= MAX_ROUTE_KEY, "{}", key.len());
        // Cut once: the cut key is its own key.
        assert_eq!(route_key(key), key.as_str());
        assert!(key.starts_with("GET /aaa") && key.ends_with('…'), "{key}");

        // As many routes as there is room for beside the long one, then 101 more.
        for i in 0..MAX_PANIC_ROUTES + 100 {
            record_panic(&format!("GET /items/{i}"), report.clone());
        }
        // A route counted apart keeps counting apart.
        record_panic("GET /items/0", report.clone());
        let h = health();
        assert_eq!(h.panics_total, MAX_PANIC_ROUTES as u64 + 103);
        assert_eq!(h.panics_by_route.len(), MAX_PANIC_ROUTES + 1);
        assert_eq!(h.panics_by_route[OTHER_ROUTES], 101);
        assert_eq!(h.panics_by_route["GET /items/0"], 2);
        assert_eq!(h.recent_reports.len(), RECENT_REPORTS);
    }
}
