//! The open-file limit: raised from its soft to its hard value at start, as Go's runtime does
//! (since Go 1.19): every connection is a file descriptor, and the usual soft limit (1024)
//! makes a busy server fail `accept` with EMFILE long before the machine is short of anything.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Raises the soft `RLIMIT_NOFILE` to the hard one (at most [`MAX_NOFILE`]). Returns the soft
/// limit before and after, or `None` when unchanged (already there, or the kernel refused).
pub(crate) fn raise_nofile() -> Option<(u64, u64)> {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    let current = current?;
    // No hard limit: a bound that a `Vec` of pollers or a select() user can still live with.
    let target = maximum.unwrap_or(MAX_NOFILE).min(MAX_NOFILE);
    if current >= target {
        return None;
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(target),
            maximum,
        },
    )
    .ok()?;
    Some((current, target))
}

/// [`Server::max_connections`](crate::Server::max_connections)'s default: seven eighths of the
/// soft open-file limit, leaving the rest (at least 32 descriptors) to the app; `None` when
/// there is no limit.
pub(crate) fn default_max_connections() -> Option<usize> {
    let soft = getrlimit(Resource::Nofile).current?;
    Some(connections_for(soft))
}

/// The connections served at once under a soft open-file limit of `soft` (at least 1).
fn connections_for(soft: u64) -> usize {
    let left = (soft / 8).max(32);
    usize::try_from(soft.saturating_sub(left).max(1)).unwrap_or(usize::MAX)
}

/// The highest soft limit set (the kernel's default `fs.nr_open` is 1 048 576).
pub(crate) const MAX_NOFILE: u64 = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_leave_an_eighth_of_the_descriptors_and_at_least_32_to_the_app() {
        assert_eq!(connections_for(1 << 20), (1 << 20) - (1 << 17));
        assert_eq!(connections_for(1024), 896);
        assert_eq!(connections_for(64), 32);
        assert_eq!(connections_for(20), 1);
    }

    #[test]
    fn the_soft_limit_ends_at_the_hard_one() {
        // Lower it first (always allowed), then raise it back.
        let before = getrlimit(Resource::Nofile);
        let hard = before.maximum.unwrap_or(MAX_NOFILE);
        if hard <= 64 {
            return;
        }
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(64),
                maximum: before.maximum,
            },
        )
        .unwrap();
        let raised = raise_nofile();
        let after = getrlimit(Resource::Nofile);
        assert_eq!(raised, Some((64, hard.min(MAX_NOFILE))));
        assert_eq!(after.current, Some(hard.min(MAX_NOFILE)));
        assert_eq!(raise_nofile(), None, "a second call changes nothing");
    }
}
