//! SIGQUIT: the state dump a supervisor asks for before it kills a hung worker.
//!
//! `unwedge run` (and Go's runtime, whose convention it follows) sends SIGQUIT to a worker it
//! found hung, waits `--dump-grace`, then sends SIGKILL. A worker serving with
//! [`serve`](crate::serve) answers SIGQUIT on its own thread (so a stalled runtime cannot
//! keep it from answering) by writing what it knows to stderr, where the supervisor keeps
//! the worker's last lines: its health, the requests in flight, the poll that blocks a
//! runtime thread and the oldest request. Then it dies of SIGQUIT as it would have without
//! the handler, so that it stops holding its copy of the listening socket at once.

use std::io::Write as _;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use signal_hook::consts::SIGQUIT;
use signal_hook::iterator::Signals;

use crate::watchdog::Tracker;

/// The requests of the `serve()` running now, for the dump (none once it returned).
static CURRENT: Mutex<Option<Weak<Tracker>>> = Mutex::new(None);

/// Makes SIGQUIT dump this `serve()`'s state. The handler thread is started once per process
/// and stays: a signal handler cannot be taken back (signal-hook would leave SIGQUIT ignored),
/// so after `serve()` returns, SIGQUIT still dumps (the health part) and kills the process,
/// as its default action would.
pub(crate) fn install(tracker: &Arc<Tracker>) {
    *CURRENT.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::downgrade(tracker));
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let mut signals = match Signals::new([SIGQUIT]) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot handle SIGQUIT: no state dump on SIGQUIT");
                return;
            }
        };
        let spawned = std::thread::Builder::new()
            .name("unwedge-dump".into())
            .spawn(move || {
                if signals.forever().next().is_some() {
                    let tracker = CURRENT
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .as_ref()
                        .and_then(Weak::upgrade);
                    let text = dump(tracker.as_deref());
                    let mut err = std::io::stderr().lock();
                    let _ = err.write_all(text.as_bytes());
                    let _ = err.flush();
                    drop(err);
                    let _ = signal_hook::low_level::emulate_default_handler(SIGQUIT);
                    // Only reached if SIGQUIT's default action did not end the process.
                    std::process::exit(128 + SIGQUIT);
                }
            });
        if let Err(e) = spawned {
            // The handler is registered: without its thread SIGQUIT would be ignored.
            tracing::error!(error = %e, "cannot start the SIGQUIT dump thread; SIGQUIT now does nothing");
        }
    });
}

/// The dump's text: one block of lines, each starting with `unwedge dump:`.
pub(crate) fn dump(tracker: Option<&Tracker>) -> String {
    let h = crate::health();
    let mut lines = vec![format!("SIGQUIT: state of pid {}", std::process::id())];
    lines.push(format!(
        "health: {}{} (ready: {}, panics caught: {})",
        h.state.as_str(),
        h.reason.map(|r| format!(": {r}")).unwrap_or_default(),
        h.ready,
        h.panics_total
    ));
    match tracker {
        Some(t) => lines.extend(t.describe()),
        None => lines.push("not serving: no requests in flight".into()),
    }
    let mut out = String::new();
    for line in lines {
        out.push_str("unwedge dump: ");
        out.push_str(&line);
        out.push('\n');
    }
    out
}
