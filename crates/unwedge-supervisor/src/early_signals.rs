//! Signals that arrive before [`Supervisor::run`](crate::Supervisor::run) handles them.
//!
//! Until a process installs a handler, SIGHUP, SIGUSR1 and SIGUSR2 end it: a `kill -HUP`
//! sent to a supervisor a few milliseconds after it was started (while it reads its
//! configuration, binds its sockets, starts its admin endpoint) used to kill it, exit status
//! 129, instead of asking for a reload. [`catch_signals_early`] installs handlers that only
//! remember the signal; `run` then acts on what they caught, once it handles signals itself:
//! a SIGHUP becomes a reload, a SIGUSR1 or SIGUSR2 (which has no worker to go to yet) is
//! logged and dropped.
//!
//! It also unblocks the signals the supervisor handles. A signal mask survives `exec`: a
//! supervisor started by a program that blocked SIGCHLD or SIGHUP (in the thread that
//! started it) would otherwise never see its workers exit, or never reload.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
use signal_hook::SigId;

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

/// The early handlers, each with the flag its signal sets.
struct Caught {
    hup: (SigId, Arc<AtomicBool>),
    usr1: (SigId, Arc<AtomicBool>),
    usr2: (SigId, Arc<AtomicBool>),
}

/// Installed by [`catch_signals_early`], removed by [`take`].
static CAUGHT: Mutex<Option<Caught>> = Mutex::new(None);

/// Installs handlers that remember SIGHUP, SIGUSR1 and SIGUSR2 instead of letting them end
/// the process, then unblocks every signal the supervisor handles. Call it first thing in
/// `main`, before reading a configuration or building a runtime, and before any thread is
/// started (the mask is per thread, and threads inherit it). [`Supervisor::new`] calls it
/// too; calling it again before `run` does nothing.
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
    let mut caught = CAUGHT.lock().unwrap_or_else(PoisonError::into_inner);
    if caught.is_none() {
        let flag = |signal: Signal| -> io::Result<(SigId, Arc<AtomicBool>)> {
            let flag = Arc::new(AtomicBool::new(false));
            let id = signal_hook::flag::register(signal as i32, Arc::clone(&flag))?;
            Ok((id, flag))
        };
        *caught = Some(Caught {
            hup: flag(Signal::SIGHUP)?,
            usr1: flag(Signal::SIGUSR1)?,
            usr2: flag(Signal::SIGUSR2)?,
        });
    }
    let mut handled = SigSet::empty();
    for signal in HANDLED {
        handled.add(signal);
    }
    pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&handled), None).map_err(io::Error::from)
}

/// What arrived before `run` handled signals itself.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Early {
    pub(crate) hup: bool,
    pub(crate) usr1: bool,
    pub(crate) usr2: bool,
}

/// Removes the early handlers and tells what they caught. Called by `run` once its own
/// handlers are registered: a signal sent between the two is caught by both, which costs at
/// most one reload more (reloads asked for meanwhile are merged), and none is lost.
pub(crate) fn take() -> Early {
    let Some(c) = CAUGHT.lock().unwrap_or_else(PoisonError::into_inner).take() else {
        return Early::default();
    };
    let take = |(id, flag): (SigId, Arc<AtomicBool>)| {
        signal_hook::low_level::unregister(id);
        flag.load(Ordering::SeqCst)
    };
    Early {
        hup: take(c.hup),
        usr1: take(c.usr1),
        usr2: take(c.usr2),
    }
}
