//! The process-wide panic hook.

use std::io::Write;
use std::panic::PanicHookInfo;
use std::sync::atomic::{AtomicBool, Ordering};
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
/// (a `tracing` event) replaces std's `thread 'x' panicked at` line on stderr. Anywhere else,
/// and inside requests when the report's event (target `unwedge::panic`, level ERROR) would
/// be recorded by nobody (no `tracing` subscriber is set, or its filter leaves the event out:
/// `RUST_LOG=my_app=info`) or the binary is built with `panic = "abort"` (no report follows),
/// the hook prints that line itself, as std does (`RUST_BACKTRACE` included), but with the
/// message's credentials hidden as in the report: `panic!("{req:?}")` puts no
/// `Authorization` value on stderr. So, with no hook of the application's before it (below),
/// a panic is never missing from the logs, and no secret reaches them.
///
/// A hook installed before this one that is not std's own (a crash reporter, a metrics
/// counter) is chained: it runs after this one for every panic, inside requests and tasks
/// too, and sees the panic as it was raised; what it prints or sends is its own, and this
/// hook prints no line of its own then. Most crash reporters' hooks (Sentry's) pass each panic
/// on to the hook they found, std's printer when they came first, which prints the message
/// as raised, credentials included, beside the report. So install this hook first
/// (`unwedge::install()` before the reporter's setup): the reporter's hook then passes
/// panics on to this one, which prints only what no report covers, redacted.
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
        let previous = (!is_std_hook(&*previous)).then_some(previous);
        std::panic::set_hook(Box::new(move |info| {
            let scope = context::current_scope();
            let backtrace = (mode != Mode::Off).then(Trace::capture);
            let whole = context::redacted_message(info.payload());
            let printed = (scope.is_none() || cfg!(panic = "abort") || !report_event_enabled())
                .then(|| whole.clone());
            context::begin(Captured {
                message: context::cut_message(whole),
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
            match &previous {
                // The application's own hook: it sees every panic, as raised.
                Some(hook) => hook(info),
                // Instead of std's printer. Inside a request or task the report replaces its
                // line, unless the report could not be seen: the process aborts on panic
                // (nothing catches it), or its event would be recorded by nobody (no
                // `tracing` subscriber, or one whose filter leaves it out: `my_app=info`, a
                // common production filter).
                None => {
                    if let Some(message) = printed {
                        print_like_std(info, &message);
                    }
                }
            }
        }));
    });
}

type Hook = dyn Fn(&PanicHookInfo<'_>) + Sync + Send + 'static;

/// Whether `hook` (what `take_hook` returned) is std's own printing hook, the one in place
/// when no hook was set. Takes the hook again, which gives std's, boxed anew by the same code
/// (a zero-sized function item: the same address and the same vtable), and compares the two
/// as wide pointers. Another hook differs at least in its vtable.
fn is_std_hook(hook: &Hook) -> bool {
    let std_hook = std::panic::take_hook();
    std::ptr::eq(hook as *const Hook, &*std_hook as *const Hook)
}

/// std's panic line (`thread 'main' panicked at src/main.rs:2:5:` and the message), with
/// `message` (its credentials hidden) for the panic's own; a backtrace when `RUST_BACKTRACE`
/// asks for one (`full`: every frame), and std's note on how to get one after the first
/// panic otherwise. Written with errors ignored, as std does: a closed stderr must not turn
/// a panic into an abort.
fn print_like_std(info: &PanicHookInfo<'_>, message: &str) {
    static NOTED: AtomicBool = AtomicBool::new(false);
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("<unnamed>");
    let mut out = match info.location() {
        Some(l) => format!(
            "\nthread '{name}' panicked at {}:{}:{}:\n{message}\n",
            l.file(),
            l.line(),
            l.column()
        ),
        None => format!("\nthread '{name}' panicked:\n{message}\n"),
    };
    match std::env::var("RUST_BACKTRACE").as_deref() {
        Ok("0") | Err(_) => {
            if !NOTED.swap(true, Ordering::Relaxed) {
                out.push_str(
                    "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n",
                );
            }
        }
        Ok(style) => {
            let backtrace = std::backtrace::Backtrace::force_capture();
            match style {
                "full" => out.push_str(&format!("stack backtrace:\n{backtrace:#}\n")),
                _ => out.push_str(&format!("stack backtrace:\n{backtrace}\n")),
            }
        }
    }
    let _ = std::io::stderr().lock().write_all(out.as_bytes());
}

/// Whether the report's `tracing` event (target `unwedge::panic`, level ERROR) would be
/// recorded on this thread: the subscriber in effect here is the one the report goes to.
fn report_event_enabled() -> bool {
    tracing::enabled!(target: "unwedge::panic", tracing::Level::ERROR)
}
