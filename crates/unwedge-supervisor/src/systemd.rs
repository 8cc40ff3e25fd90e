//! Talking to systemd when started by it (`Type=notify`): `READY=1` once the first
//! generation is ready, `STATUS=` summaries, `WATCHDOG=1` while at least one worker is
//! healthy, `RELOADING=1` (with `MONOTONIC_USEC`) and `READY=1` around reloads.
//!
//! Workers never see systemd's variables: the supervisor removes them from each worker's
//! environment and gives it its own `NOTIFY_SOCKET`.

use std::time::Duration;

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

/// The supervisor's own link to systemd (inactive when `NOTIFY_SOCKET` is unset).
#[derive(Debug, Clone)]
pub struct Systemd {
    enabled: bool,
    watchdog: Option<Duration>,
}

impl Systemd {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC`/`WATCHDOG_PID` (left in the environment).
    pub fn from_env() -> Self {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some();
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
        Systemd { enabled, watchdog }
    }

    /// Whether systemd listens.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Interval at which to send `WATCHDOG=1`: half of systemd's `WatchdogSec` (as
    /// sd_watchdog_enabled(3) recommends), but at least [`MIN_WATCHDOG_INTERVAL`].
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|d| (d / 2).max(MIN_WATCHDOG_INTERVAL))
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if self.enabled {
            if let Err(e) = sd_notify::notify(false, states) {
                tracing::debug!("sd_notify failed: {e}");
            }
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
