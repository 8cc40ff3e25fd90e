//! [`Policy`]: what a caught panic means for the process, and the panic budget.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::report::{Action, Decision};

/// What to do about a caught panic.
///
/// | policy | the panicking request | the process |
/// | --- | --- | --- |
/// | [`Recover`](Policy::Recover) | `500` | keeps serving |
/// | [`Crash`](Policy::Crash) | `500` | graceful crash: Tainted, drain, exit 70 |
/// | [`Auto`](Policy::Auto) (default) | `500` | keeps serving while every unwedge state the panic touched was rolled back or untouched; crashes when a [`Mutex`](crate::Mutex) was poisoned or the panic budget is spent |
///
/// "Crash" here means [`health::request_crash`](crate::health::request_crash): the process
/// turns Tainted and [`health::crash_requested`](crate::health::crash_requested) resolves;
/// [`serve`](crate::serve()) then stops accepting, drains and exits with code 70. Without
/// `serve()`, wait on `crash_requested()` yourself.
///
/// Parsed case-insensitively from `recover`, `crash` or `auto` (the values of
/// `UNWEDGE_POLICY`):
///
/// ```
/// use unwedge::Policy;
/// assert_eq!("Recover".parse::<Policy>().unwrap(), Policy::Recover);
/// assert_eq!(Policy::default(), Policy::Auto);
/// assert!("sometimes".parse::<Policy>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Policy {
    /// Answer 500 and keep serving, whatever the panic did to the state.
    Recover,
    /// Answer 500 to the panicking request, then crash gracefully.
    Crash,
    /// Recover when the state is known to be sound, crash when it is not (or when panics come
    /// too fast for untracked state to be trusted).
    #[default]
    Auto,
}

/// The environment variable [`Policy::from_env`] reads.
pub const POLICY_ENV: &str = "UNWEDGE_POLICY";

impl Policy {
    /// The lower-case name: `recover`, `crash` or `auto`.
    ///
    /// ```
    /// use unwedge::Policy;
    /// assert_eq!(Policy::Crash.as_str(), "crash");
    /// assert_eq!(Policy::Auto.as_str().parse::<Policy>(), Ok(Policy::Auto)); // round-trips
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Recover => "recover",
            Policy::Crash => "crash",
            Policy::Auto => "auto",
        }
    }

    /// Reads [`POLICY_ENV`] (`UNWEDGE_POLICY`): `Ok(None)` when unset or empty, an error when
    /// set to something else than `recover`, `crash` or `auto`.
    ///
    /// ```
    /// match unwedge::Policy::from_env() {
    ///     Ok(p) => unwedge::panic::set_policy(p.unwrap_or_default()),
    ///     Err(e) => { eprintln!("error: {e}"); std::process::exit(2) }
    /// }
    /// ```
    pub fn from_env() -> Result<Option<Policy>, ParsePolicyError> {
        match std::env::var(POLICY_ENV) {
            Ok(v) if v.trim().is_empty() => Ok(None),
            Ok(v) => v.parse().map(Some),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(v)) => Err(ParsePolicyError {
                input: v.to_string_lossy().into_owned(),
            }),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Policy {
    type Err = ParsePolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("recover") {
            Ok(Policy::Recover)
        } else if t.eq_ignore_ascii_case("crash") {
            Ok(Policy::Crash)
        } else if t.eq_ignore_ascii_case("auto") {
            Ok(Policy::Auto)
        } else {
            Err(ParsePolicyError {
                input: s.to_owned(),
            })
        }
    }
}

/// A string that names no [`Policy`].
///
/// ```
/// let err = "later".parse::<unwedge::Policy>().unwrap_err();
/// assert_eq!(err.to_string(), "invalid panic policy \"later\": expected recover, crash or auto");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsePolicyError {
    input: String,
}

impl fmt::Display for ParsePolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid panic policy {:?}: expected recover, crash or auto",
            self.input
        )
    }
}

impl std::error::Error for ParsePolicyError {}

static PROCESS_POLICY: AtomicU8 = AtomicU8::new(2);

/// Sets the process-wide policy, used by [`spawn`](crate::spawn) for background tasks (and by
/// [`serve`](crate::serve()) for the layer it installs). [`PanicLayer`](crate::PanicLayer)s built
/// by hand carry their own policy.
///
/// ```
/// use unwedge::{panic, Policy};
/// panic::set_policy(Policy::Recover);
/// assert_eq!(panic::policy(), Policy::Recover);
/// ```
pub fn set_policy(policy: Policy) {
    PROCESS_POLICY.store(policy as u8, Ordering::Relaxed);
}

/// The process-wide policy set by [`set_policy`]; [`Policy::Auto`] until then.
///
/// ```
/// use unwedge::{panic, Policy};
/// assert_eq!(panic::policy(), Policy::Auto);
/// panic::set_policy(Policy::Crash);
/// assert_eq!(panic::policy(), Policy::Crash);
/// ```
pub fn policy() -> Policy {
    match PROCESS_POLICY.load(Ordering::Relaxed) {
        0 => Policy::Recover,
        1 => Policy::Crash,
        _ => Policy::Auto,
    }
}

/// Counts panics in a sliding window: "more than `max` panics in `window`" spends it.
#[derive(Debug)]
pub(crate) struct Budget {
    pub(crate) max: u32,
    pub(crate) window: Duration,
    hits: Mutex<VecDeque<Instant>>,
}

impl Budget {
    pub(crate) fn new(max: u32, window: Duration) -> Self {
        Budget {
            max,
            window,
            hits: Mutex::new(VecDeque::new()),
        }
    }

    /// Records one panic now; true when this one makes more than `max` in the window.
    pub(crate) fn spend(&self) -> bool {
        let now = Instant::now();
        let mut hits = self.hits.lock().unwrap_or_else(|p| p.into_inner());
        while hits
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.window)
        {
            hits.pop_front();
        }
        hits.push_back(now);
        // Keep at most max + 1 entries: enough to answer, bounded memory.
        while hits.len() > self.max as usize + 1 {
            hits.pop_front();
        }
        hits.len() > self.max as usize
    }
}

fn names(list: &[String]) -> String {
    list.iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Decides about one panic from what it touched. `budget` is `None` for background tasks,
/// whose restarts are paced by their backoff instead.
pub(crate) fn decide(
    policy: Policy,
    rolled_back: &[String],
    poisoned: &[String],
    budget: Option<&Budget>,
) -> Decision {
    let spent = budget.map(|b| (b.spend(), b));
    let (action, reason) = match policy {
        Policy::Recover if poisoned.is_empty() => (Action::Recover, "policy recover".to_owned()),
        Policy::Recover => (
            Action::Recover,
            format!("policy recover (mutex {} poisoned)", names(poisoned)),
        ),
        Policy::Crash => (Action::Crash, "policy crash".to_owned()),
        Policy::Auto if !poisoned.is_empty() => {
            (Action::Crash, format!("mutex {} poisoned", names(poisoned)))
        }
        Policy::Auto => match spent {
            Some((true, b)) => (
                Action::Crash,
                format!(
                    "panic budget spent: more than {} panics in {}",
                    b.max,
                    humantime::format_duration(b.window)
                ),
            ),
            _ if rolled_back.is_empty() => (
                Action::Recover,
                "no unwedge state rolled back or poisoned".to_owned(),
            ),
            _ => (
                Action::Recover,
                format!("state rolled back: {}", names(rolled_back)),
            ),
        },
    };
    Decision { action, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_spent_on_the_sixth_panic_in_the_window() {
        let b = Budget::new(5, Duration::from_secs(10));
        let spent: Vec<bool> = (0..6).map(|_| b.spend()).collect();
        assert_eq!(spent, [false, false, false, false, false, true]);
    }

    #[test]
    fn auto_crashes_on_poison_and_recovers_on_rollback() {
        let d = decide(Policy::Auto, &[], &["cache".into()], None);
        assert_eq!(d.action, Action::Crash);
        assert_eq!(d.reason, "mutex `cache` poisoned");
        let d = decide(Policy::Auto, &["comments".into()], &[], None);
        assert_eq!(d.action, Action::Recover);
        assert_eq!(d.reason, "state rolled back: `comments`");
        let d = decide(Policy::Recover, &[], &["cache".into()], None);
        assert_eq!(d.action, Action::Recover);
        let d = decide(Policy::Crash, &["comments".into()], &[], None);
        assert_eq!(d.action, Action::Crash);
    }

    #[test]
    fn parse_is_case_insensitive() {
        assert_eq!("AUTO".parse::<Policy>(), Ok(Policy::Auto));
        assert_eq!(" crash ".parse::<Policy>(), Ok(Policy::Crash));
        assert!("".parse::<Policy>().is_err());
    }
}
