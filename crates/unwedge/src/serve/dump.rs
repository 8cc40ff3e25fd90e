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
use std::sync::Arc;

use signal_hook::consts::SIGQUIT;
use signal_hook::iterator::{Handle, Signals};

use crate::watchdog::Tracker;

/// The dump thread of one [`serve`](crate::serve) call; dropping it ends the thread and
/// restores SIGQUIT's default action for later calls.
#[derive(Debug)]
pub(crate) struct DumpOnQuit {
    handle: Handle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DumpOnQuit {
    /// Installs the handler; `None` (logged) when the thread or handler cannot be set up.
    pub(crate) fn install(tracker: Arc<Tracker>) -> Option<Self> {
        let mut signals = match Signals::new([SIGQUIT]) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot handle SIGQUIT: no state dump on SIGQUIT");
                return None;
            }
        };
        let handle = signals.handle();
        let thread = std::thread::Builder::new()
            .name("unwedge-dump".into())
            .spawn(move || {
                if signals.forever().next().is_some() {
                    let text = dump(&tracker);
                    let mut err = std::io::stderr().lock();
                    let _ = err.write_all(text.as_bytes());
                    let _ = err.flush();
                    drop(err);
                    let _ = signal_hook::low_level::emulate_default_handler(SIGQUIT);
                    // Only reached if SIGQUIT's default action did not end the process.
                    std::process::exit(128 + SIGQUIT);
                }
            });
        match thread {
            Ok(thread) => Some(DumpOnQuit {
                handle,
                thread: Some(thread),
            }),
            Err(e) => {
                handle.close();
                tracing::warn!(error = %e, "cannot start the SIGQUIT dump thread");
                None
            }
        }
    }
}

impl Drop for DumpOnQuit {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The dump's text: one block of lines, each starting with `unwedge dump:`.
pub(crate) fn dump(tracker: &Tracker) -> String {
    let h = crate::health();
    let mut lines = vec![format!("SIGQUIT: state of pid {}", std::process::id())];
    lines.push(format!(
        "health: {}{} (ready: {}, panics caught: {})",
        h.state.as_str(),
        h.reason.map(|r| format!(": {r}")).unwrap_or_default(),
        h.ready,
        h.panics_total
    ));
    lines.extend(tracker.describe());
    let mut out = String::new();
    for line in lines {
        out.push_str("unwedge dump: ");
        out.push_str(&line);
        out.push('\n');
    }
    out
}
