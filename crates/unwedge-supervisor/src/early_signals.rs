//! Signals that arrive before [`Supervisor::run`](crate::Supervisor::run) handles them.
//!
//! Until a process installs a handler, SIGHUP, SIGUSR1 and SIGUSR2 end it: a `kill -HUP`
//! sent to a supervisor a few milliseconds after it was started (while it reads its
//! configuration, binds its sockets, starts its admin endpoint) used to kill it, exit status
//! 129, instead of asking for a reload. [`catch_signals_early`] installs handlers that only
//! set a flag; `run` then acts on what they caught, once it handles signals itself: a SIGHUP
//! becomes a reload, a SIGUSR1 or SIGUSR2 (which has no worker to go to yet) is logged and
//! dropped.
//!
//! It also unblocks the signals the supervisor handles. A signal mask survives `exec`: a
//! supervisor started by a program that blocked SIGCHLD or SIGHUP (in the thread that
//! started it) would otherwise never see its workers exit, or never reload.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};

/// The signals the supervisor handles: unblocked by [`catch_signals_early`].
const HANDLED: [Signal; 7] = [
    Signal::SIGHUP,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGCHLD,
];

/// The signals caught early, whose default action would end the process.
const CAUGHT: [Signal; 3] = [Signal::SIGHUP, Signal::SIGUSR1, Signal::SIGUSR2];

/// The flags of the early handlers, in the order of [`CAUGHT`]; registered by
/// [`catch_signals_early`] for the life of the process.
static REGISTERED: Mutex<Option<Flags>> = Mutex::new(None);

/// Installs handlers that remember SIGHUP, SIGUSR1 and SIGUSR2 instead of letting them end
/// the process, then unblocks every signal the supervisor handles. Call it first thing in
/// `main`, before reading a configuration or building a runtime, and before any thread is
/// started (the mask is per thread, and threads inherit it). [`Supervisor::new`] calls it
/// too; calling it again does nothing.
///
/// Signals caught this way are acted on when [`Supervisor::run`] starts: a SIGHUP is one
/// reload.
///
/// ```no_run
/// fn main() -> std::io::Result<()> {
///     unwedge_supervisor::catch_signals_early()?;
///     // … read the configuration, build the runtime, `Supervisor::new(config)?.run()`
///     Ok(())
/// }
/// ```
///
/// [`Supervisor::new`]: crate::Supervisor::new
/// [`Supervisor::run`]: crate::Supervisor::run
pub fn catch_signals_early() -> io::Result<()> {
    let mut registered = REGISTERED.lock().unwrap_or_else(PoisonError::into_inner);
    if registered.is_none() {
        let mut flags = Vec::with_capacity(CAUGHT.len());
        for signal in CAUGHT {
            let flag = Arc::new(AtomicBool::new(false));
            signal_hook::flag::register(signal as i32, Arc::clone(&flag))?;
            flags.push(flag);
        }
        *registered = Some(Flags(flags));
    }
    let mut handled = SigSet::empty();
    for signal in HANDLED {
        handled.add(signal);
    }
    pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&handled), None).map_err(io::Error::from)
}

/// The early handlers' flags, which stay registered after `run` registered its own handlers:
/// `run` takes what arrived before it handled signals, then acts on a signal its own streams
/// report only when the flag says it arrived (and clears it), so that one caught by both,
/// sent as `run` registers its streams, counts once.
#[derive(Clone, Default)]
pub(crate) struct Flags(Vec<Arc<AtomicBool>>);

impl Flags {
    /// The flags [`catch_signals_early`] registered (none if it never ran).
    pub(crate) fn registered() -> Self {
        let registered = REGISTERED.lock().unwrap_or_else(PoisonError::into_inner);
        registered.clone().unwrap_or_default()
    }

    fn flag(&self, signal: Signal) -> Option<&AtomicBool> {
        let i = CAUGHT.iter().position(|&s| s == signal)?;
        self.0.get(i).map(|f| &**f)
    }

    /// Whether `signal`, which its stream reported, arrived since last asked, clearing it
    /// (always, without a flag: the stream is the only witness).
    pub(crate) fn take(&self, signal: Signal) -> bool {
        self.flag(signal)
            .is_none_or(|f| f.swap(false, Ordering::SeqCst))
    }

    /// Whether `signal` arrived before `run` handled signals, clearing it (never, without a
    /// flag).
    pub(crate) fn arrived_early(&self, signal: Signal) -> bool {
        self.flag(signal)
            .is_some_and(|f| f.swap(false, Ordering::SeqCst))
    }
}
