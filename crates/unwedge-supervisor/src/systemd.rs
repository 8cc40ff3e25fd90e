//! Talking to systemd when started by it (`Type=notify`): `READY=1` once the first
//! generation is ready, `STATUS=` summaries, `WATCHDOG=1` while at least one worker is
//! healthy, `RELOADING=1` (with `MONOTONIC_USEC`) and `READY=1` around reloads.
//!
//! Workers never see systemd's variables: the supervisor removes them from each worker's
//! environment and gives it its own `NOTIFY_SOCKET`.
//!
//! Every message is sent without blocking: a receiver that does not read (a stuck or stale
//! process bound to the socket) fills its queue after `net.unix.max_dgram_qlen` datagrams (10
//! by default), and a blocking send then froze the whole event loop: no worker reaped or
//! replaced, SIGTERM unheard. A message that finds the queue full is dropped instead, with a
//! warning at most once a minute.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// Variables of systemd's that must not reach a worker.
pub(crate) const SYSTEMD_VARS: &[&str] = &[
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
];

/// The shortest interval at which the supervisor sends `WATCHDOG=1` to systemd. A
/// `WATCHDOG_USEC` under twice this (`WatchdogSec=1us`, a typo) is no heartbeat any service
/// can keep up with: sending every half of it kept the event loop spinning (a loop turn, and a
/// datagram, every time the timer fired) for nothing.
pub const MIN_WATCHDOG_INTERVAL: Duration = Duration::from_millis(10);

/// How often at most the log says that systemd's notify socket is not being read.
const DROP_WARN_EVERY: Duration = Duration::from_secs(60);

/// The supervisor's own link to systemd (inactive when `NOTIFY_SOCKET` is unset).
#[derive(Debug, Clone)]
pub struct Systemd {
    link: Option<Arc<Link>>,
    watchdog: Option<Duration>,
}

/// A non-blocking socket to `NOTIFY_SOCKET`, and what was dropped for want of room there.
#[derive(Debug)]
struct Link {
    sock: UnixDatagram,
    to: SocketAddr,
    shown: String,
    drops: Mutex<Drops>,
}

#[derive(Debug, Default)]
struct Drops {
    /// Messages dropped since the last warning.
    count: u64,
    warned_at: Option<Instant>,
}

impl Link {
    /// `NOTIFY_SOCKET`: a socket path, or `@name` for an abstract socket (sd_notify(3)).
    fn new(var: &OsStr) -> std::io::Result<Link> {
        let to = match var.as_bytes().strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name)?
            }
            None => SocketAddr::from_pathname(var)?,
        };
        let sock = UnixDatagram::unbound()?;
        sock.set_nonblocking(true)?;
        Ok(Link {
            sock,
            to,
            shown: var.to_string_lossy().into_owned(),
            drops: Mutex::new(Drops::default()),
        })
    }

    /// Sends `msg` if the receiver has room for it now; drops it otherwise.
    fn send(&self, msg: &[u8]) {
        match self.sock.send_to_addr(msg, &self.to) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => self.dropped(msg),
            // No receiver (systemd restarting, a socket that went away): as sd_notify(3),
            // not the service's problem.
            Err(e) => tracing::debug!("sd_notify to {} failed: {e}", self.shown),
        }
    }

    fn dropped(&self, msg: &[u8]) {
        let mut drops = self.drops.lock().unwrap_or_else(|e| e.into_inner());
        drops.count += 1;
        let now = Instant::now();
        if drops
            .warned_at
            .is_some_and(|at| now.saturating_duration_since(at) < DROP_WARN_EVERY)
        {
            return;
        }
        tracing::warn!(
            "systemd's NOTIFY_SOCKET={} is not being read (its queue is full): {} message(s) \
             to it dropped (this one: {:?}), said at most once a minute; the supervisor goes \
             on, but systemd may take it for hung without its WATCHDOG=1",
            self.shown,
            drops.count,
            String::from_utf8_lossy(msg).lines().next().unwrap_or(""),
        );
        drops.count = 0;
        drops.warned_at = Some(now);
    }
}

impl Systemd {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC`/`WATCHDOG_PID` (left in the environment).
    pub fn from_env() -> Self {
        let link = std::env::var_os("NOTIFY_SOCKET").and_then(|v| {
            Link::new(&v)
                .inspect_err(|e| {
                    tracing::warn!(
                        "NOTIFY_SOCKET={}: {e}; nothing is sent to systemd",
                        v.to_string_lossy()
                    )
                })
                .ok()
        });
        let enabled = link.is_some();
        // As libsystemd's sd_watchdog_enabled: WATCHDOG_PID, when set, must be our pid.
        let usec = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok());
        let pid_ok = std::env::var("WATCHDOG_PID")
            .ok()
            .is_none_or(|p| p.parse::<u32>().ok() == Some(std::process::id()));
        let watchdog = usec
            .filter(|u| enabled && pid_ok && *u > 0)
            .map(Duration::from_micros);
        if let Some(w) = watchdog.filter(|w| *w / 2 < MIN_WATCHDOG_INTERVAL) {
            tracing::warn!(
                "WATCHDOG_USEC={} (systemd's WatchdogSec= for this service) is under {}: \
                 WATCHDOG=1 goes to systemd every {} instead of every half of it, and systemd \
                 may take the supervisor for hung; give WatchdogSec= of a second or more",
                w.as_micros(),
                humantime::format_duration(MIN_WATCHDOG_INTERVAL * 2),
                humantime::format_duration(MIN_WATCHDOG_INTERVAL),
            );
        }
        Systemd {
            link: link.map(Arc::new),
            watchdog,
        }
    }

    /// Whether systemd listens.
    pub fn enabled(&self) -> bool {
        self.link.is_some()
    }

    /// Interval at which to send `WATCHDOG=1`: half of systemd's `WatchdogSec` (as
    /// sd_watchdog_enabled(3) recommends), but at least [`MIN_WATCHDOG_INTERVAL`].
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|d| (d / 2).max(MIN_WATCHDOG_INTERVAL))
    }

    /// One datagram, one line per state (as sd_notify sends them), never waiting.
    fn send(&self, states: &[NotifyState<'_>]) {
        if let Some(link) = &self.link {
            let msg: String = states.iter().map(|s| format!("{s}\n")).collect();
            link.send(msg.as_bytes());
        }
    }

    /// `READY=1` with a status.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `RELOADING=1` with `MONOTONIC_USEC`.
    pub fn reloading(&self) {
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| t.tv_sec() as i128 * 1_000_000 + t.tv_nsec() as i128 / 1000)
            .unwrap_or(0);
        self.send(&[NotifyState::Reloading, NotifyState::MonotonicUsec(now)]);
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }

    /// `STATUS=…`.
    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// `EXTEND_TIMEOUT_USEC=…`: asks for `more` time for the start, reload or stop systemd
    /// waits on. Written out (systemd reads 64 bits; `sd_notify`'s own variant takes 32, about
    /// 71 minutes, which would cut a longer request short).
    pub fn extend_timeout(&self, more: Duration) {
        let line = format!("EXTEND_TIMEOUT_USEC={}", more.as_micros());
        self.send(&[NotifyState::Custom(&line)]);
    }

    /// `WATCHDOG=1`.
    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }
}
