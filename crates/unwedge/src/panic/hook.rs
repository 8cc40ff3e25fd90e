//! The process-wide panic hook.

use std::sync::OnceLock;
use std::time::SystemTime;

use super::context::{self, Captured};

use super::trace::{self, Mode, Trace};

static INSTALLED: OnceLock<()> = OnceLock::new();
static MODE: OnceLock<Mode> = OnceLock::new();

/// How backtraces are captured, fixed when the hook is installed.
pub(crate) fn backtrace_mode() -> Mode {
    *MODE.get_or_init(Mode::from_env)
}

/// Installs unwedge's panic hook. Idempotent; [`PanicLayer`](crate::PanicLayer) and
/// [`spawn`](crate::spawn) call it on first use, so calling it yourself is only needed to
/// capture panics that happen before then.
///
/// The hook records the message, location, thread name and a backtrace on the panicking
/// thread, where the layer that catches the panic turns them into a
/// [`PanicReport`](crate::PanicReport). Inside a request or a task run by unwedge the report
/// (a `tracing` event) replaces the bare `thread 'x' panicked at` line on stderr; anywhere
/// else the hook that was installed before (by default, std's printing hook) runs as well, so
/// nothing is lost. It also runs inside requests when the report's event (target
/// `unwedge::panic`, level ERROR) would be recorded by nobody: no `tracing` subscriber is set,
/// or its filter leaves the event out (`RUST_LOG=my_app=info`); and when the binary is built
/// with `panic = "abort"` (no report follows: the process aborts).
///
/// Backtraces: the hook only walks the stack (microseconds). Turning the frames into function
/// names and lines takes milliseconds per cold part of the binary (15–100 ms for a request's
/// stack in a fresh process), so it happens on a background thread (`unwedge-symbols`,
/// warmed up by `install()`), and a report waits for it at most 2 ms: a backtrace not ready
/// by then is reported as raw frames (`N: 0xADDR binary+0xOFFSET`, which
/// `addr2line -Cfipe <binary> <offsets>` resolves with the same binary), and the symbolized
/// one follows in the log (`tracing`, target `unwedge::panic`, level info) when ready. So a
/// panic never holds its request, and a graceful crash never holds the exit, for symbols.
/// `UNWEDGE_BACKTRACE` (read when the hook is installed): `0` captures none, `full` always
/// waits for symbols, `1` (or unset) is the 2 ms budget; the hook takes any other value as
/// unset, [`serve`](crate::serve()) refuses it.
///
/// ```
/// unwedge::install();
/// unwedge::install(); // a second call does nothing
/// ```
pub fn install() {
    INSTALLED.get_or_init(|| {
        let mode = backtrace_mode();
        if mode != Mode::Off {
            trace::warm_up();
        }
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let scope = context::current_scope();
            let backtrace = (mode != Mode::Off).then(Trace::capture);
            context::begin(Captured {
                message: context::payload_message(info.payload()),
                location: info
                    .location()
                    .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column())),
                thread: std::thread::current().name().map(str::to_owned),
                backtrace,
                at: SystemTime::now(),
                rolled_back: Vec::new(),
                poisoned: Vec::new(),
                poisoned_locks: Vec::new(),
                scope: scope.clone(),
                number: 0, // numbered by `begin`
            });
            // Inside a request or task the report replaces std's line, unless it could not
            // be seen: the process aborts on panic (nothing catches it), or the report's
            // event would be recorded by nobody: no `tracing` subscriber, or one whose filter
            // leaves it out (`my_app=info`, a common production filter).
            if scope.is_none() || cfg!(panic = "abort") || !report_event_enabled() {
                previous(info);
            }
        }));
    });
}

/// Whether the report's `tracing` event (target `unwedge::panic`, level ERROR) would be
/// recorded on this thread: the subscriber in effect here is the one the report goes to.
fn report_event_enabled() -> bool {
    tracing::enabled!(target: "unwedge::panic", tracing::Level::ERROR)
}
