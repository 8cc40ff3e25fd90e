//! The process-wide panic hook.

use std::backtrace::Backtrace;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use super::context::{self, Captured};

static INSTALLED: OnceLock<()> = OnceLock::new();
static CAPTURE_BACKTRACE: AtomicBool = AtomicBool::new(true);

/// Installs unwedge's panic hook. Idempotent; [`PanicLayer`](crate::PanicLayer) and
/// [`spawn`](crate::spawn) call it on first use, so calling it yourself is only needed to
/// capture panics that happen before then.
///
/// The hook records the message, location, thread name and a backtrace on the panicking
/// thread, where the layer that catches the panic turns them into a
/// [`PanicReport`](crate::PanicReport). Inside a request or a task run by unwedge the report
/// replaces the bare `thread 'x' panicked at` line on stderr; anywhere else the hook that was
/// installed before (by default, std's printing hook) runs as well, so nothing is lost.
///
/// Backtraces are captured with [`Backtrace::force_capture`] unless `UNWEDGE_BACKTRACE=0` is
/// set in the environment when the hook is installed. Turning a backtrace into text means
/// loading the binary's debug line tables, which takes 100 ms or more the first time; so
/// `install()` does it once on a background thread, and the first real panic's report (and a
/// graceful crash that waits for it) does not pay for it.
///
/// ```
/// unwedge::install();
/// unwedge::install(); // a second call does nothing
/// ```
pub fn install() {
    INSTALLED.get_or_init(|| {
        if std::env::var_os("UNWEDGE_BACKTRACE").is_some_and(|v| v == "0") {
            CAPTURE_BACKTRACE.store(false, Ordering::Relaxed);
        }
        if CAPTURE_BACKTRACE.load(Ordering::Relaxed) {
            warm_up_symbolizer();
        }
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let scope = context::current_scope();
            let backtrace = CAPTURE_BACKTRACE
                .load(Ordering::Relaxed)
                .then(|| Arc::new(Backtrace::force_capture()));
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
                scope: scope.clone(),
            });
            if scope.is_none() {
                previous(info);
            }
        }));
    });
}

/// Symbolizes one backtrace on a low-priority background thread so that std's symbol cache
/// (debug line tables, loaded once per process) is ready before the first panic needs it.
fn warm_up_symbolizer() {
    let spawned = std::thread::Builder::new()
        .name("unwedge-symbols".into())
        .spawn(|| {
            let _ = Backtrace::force_capture().to_string();
        });
    if let Err(e) = spawned {
        tracing::debug!(error = %e, "could not start the backtrace warm-up thread");
    }
}
