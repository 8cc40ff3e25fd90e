//! Restart policy with Erlang/OTP semantics: exponential backoff per worker slot, reset after
//! stable uptime, and a restart intensity (at most R restarts in P) for the whole pool.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use unwedge_supervisor::policy::{Backoff, Intensity};
//!
//! let ms = Duration::from_millis;
//! let mut b = Backoff::new(ms(10), ms(35), Duration::from_secs(30));
//! assert_eq!(b.next_delay(ms(1)), ms(10));
//! assert_eq!(b.next_delay(ms(1)), ms(20));
//! assert_eq!(b.next_delay(ms(1)), ms(35)); // capped
//! assert_eq!(b.next_delay(Duration::from_secs(31)), ms(10)); // stable: reset
//!
//! let mut i = Intensity::new(2, Duration::from_secs(60));
//! let t = Instant::now();
//! assert!(i.record(t).is_ok());
//! assert!(i.record(t).is_ok());
//! assert!(i.record(t).is_err()); // a third restart within 60 s: give up
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The least delay after a restart that came too soon, however small the initial delay.
pub const MIN_STEP: Duration = Duration::from_millis(10);

/// Exponential restart delay of one worker slot.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    stable_after: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `initial`, doubles (at least to [`MIN_STEP`]) up to `max`, resets after
    /// `stable_after` of uptime.
    pub fn new(initial: Duration, max: Duration, stable_after: Duration) -> Self {
        Backoff {
            initial,
            max,
            stable_after,
            next: initial,
        }
    }

    /// The delay before restarting a worker that ran for `uptime`, and advances the backoff.
    pub fn next_delay(&mut self, uptime: Duration) -> Duration {
        if uptime >= self.stable_after {
            self.next = self.initial;
        }
        // Nor may a zero `max` keep every delay at zero: consecutive failures wait MIN_STEP
        // at least (the first restart, at `initial`, may still be immediate).
        let cap = self.max.max(MIN_STEP);
        let d = self.next.min(cap);
        // A zero `initial` makes the first restart immediate, but not every one after it:
        // doubling zero stays zero, so consecutive failures step up from MIN_STEP.
        self.next = (d * 2).max(MIN_STEP).min(cap).max(self.initial);
        d
    }

    /// The delay the next restart would get (without advancing).
    pub fn peek(&self) -> Duration {
        self.next.min(self.max.max(MIN_STEP))
    }
}

/// The restart intensity was exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{count} {} within {} (limit {limit})", if *count == 1 { "restart" } else { "restarts" }, humantime::format_duration(*within))]
pub struct IntensityExceeded {
    /// Restarts counted in the window, this one included.
    pub count: u32,
    /// The limit R.
    pub limit: u32,
    /// The window P.
    pub within: Duration,
}

/// Sliding-window restart counter for the whole pool.
#[derive(Debug, Clone)]
pub struct Intensity {
    limit: u32,
    within: Duration,
    times: VecDeque<Instant>,
}

impl Intensity {
    /// At most `limit` restarts within `within`.
    pub fn new(limit: u32, within: Duration) -> Self {
        Intensity {
            limit,
            within,
            times: VecDeque::new(),
        }
    }

    /// The same restarts counted against a new limit and window (a reload that changed
    /// `--max-restarts` or `--within`): a crash loop that spans reloads still gives up.
    pub fn reconfigured(&self, limit: u32, within: Duration) -> Self {
        Intensity {
            limit,
            within,
            times: self.times.clone(),
        }
    }

    /// Records a restart at `now`; an error when it is one too many.
    pub fn record(&mut self, now: Instant) -> Result<(), IntensityExceeded> {
        while self
            .times
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > self.within)
        {
            self.times.pop_front();
        }
        self.times.push_back(now);
        let count = self.times.len() as u32;
        if count > self.limit {
            Err(IntensityExceeded {
                count,
                limit: self.limit,
                within: self.within,
            })
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_maximum_delay_still_spaces_a_crash_loop() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(0), ms(0), Duration::from_secs(30));
        assert_eq!(b.next_delay(ms(1)), ms(0), "the first restart is immediate");
        for _ in 0..5 {
            assert_eq!(b.next_delay(ms(1)), MIN_STEP);
        }
    }

    #[test]
    fn a_zero_initial_delay_still_backs_off() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(0), ms(100), Duration::from_secs(30));
        assert_eq!(b.next_delay(ms(1)), ms(0), "the first restart is immediate");
        assert_eq!(b.next_delay(ms(1)), ms(10));
        assert_eq!(b.next_delay(ms(1)), ms(20));
        assert_eq!(b.next_delay(ms(1)), ms(40));
        assert_eq!(b.next_delay(ms(1)), ms(80));
        assert_eq!(b.next_delay(ms(1)), ms(100), "capped");
        assert_eq!(
            b.next_delay(Duration::from_secs(31)),
            ms(0),
            "stable: reset"
        );
    }

    #[test]
    fn window_slides() {
        let mut i = Intensity::new(1, Duration::from_secs(1));
        let t = Instant::now();
        assert!(i.record(t).is_ok());
        assert!(i.record(t + Duration::from_millis(1500)).is_ok());
        assert!(i.record(t + Duration::from_millis(1600)).is_err());
    }

    #[test]
    fn a_new_limit_keeps_the_restarts_recorded() {
        let t = Instant::now();
        let mut i = Intensity::new(5, Duration::from_secs(60));
        assert!(i.record(t).is_ok());
        assert!(i.record(t).is_ok());
        let mut i = i.reconfigured(2, Duration::from_secs(30));
        assert!(i.record(t).is_err(), "the two before count");
    }

    #[test]
    fn zero_limit_gives_up_on_first_restart() {
        let mut i = Intensity::new(0, Duration::from_secs(1));
        assert!(i.record(Instant::now()).is_err());
    }
}
