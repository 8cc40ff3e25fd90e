//! The supervisor's log filter, from `UNWEDGE_LOG`: the default when unset or empty, and never
//! one that silences the supervisor's warnings and errors by saying nothing of them.
//!
//! `EnvFilter` takes any word as a target name: `UNWEDGE_LOG=bogus` (a typo, or a value meant
//! for another program) enables `bogus` only, and every line of the supervisor, `giving up`
//! included, vanished. A filter with no directive for the supervisor's targets (all start
//! with `unwedge`: the binary, `unwedge_supervisor`, `unwedge_admin`) gets `unwedge=warn`
//! added, and says so once. A directive that names them (`unwedge=error`, `off`, `debug`) is
//! followed as written.

use std::ffi::OsString;

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::EnvFilter;

/// The variable.
pub(crate) const LOG_ENV: &str = "UNWEDGE_LOG";

/// What every target of the supervisor's own lines starts with.
const SUPERVISOR_TARGET: &str = "unwedge";

/// The filter for `value` (the variable's value, if set), and a warning to log once the
/// logger is up.
pub(crate) fn log_filter(value: Option<OsString>) -> (EnvFilter, Option<String>) {
    let default = || EnvFilter::new("info");
    let Some(value) = value else {
        return (default(), None);
    };
    let Some(text) = value.to_str() else {
        let warning = format!(
            "{LOG_ENV}={value:?} is not UTF-8; logging at info",
            value = value.to_string_lossy()
        );
        return (default(), Some(warning));
    };
    if text.trim().is_empty() {
        return (default(), None);
    }
    let filter = match EnvFilter::builder().parse(text) {
        Ok(f) => f,
        Err(e) => {
            let warning = format!("{LOG_ENV}={text:?} is not a log filter ({e}); logging at info");
            return (default(), Some(warning));
        }
    };
    if names_the_supervisor(text) {
        return (filter, None);
    }
    let keep = format!("{SUPERVISOR_TARGET}=warn")
        .parse()
        .expect("a valid directive");
    let warning = format!(
        "{LOG_ENV}={text:?} enables nothing of the supervisor's own log (targets `{SUPERVISOR_TARGET}…`): \
         its warnings and errors are kept; add `{SUPERVISOR_TARGET}=info` for the rest"
    );
    (filter.add_directive(keep), Some(warning))
}

/// Whether a directive of `text` applies to every line of the supervisor: one without a span
/// or field filter whose target, if any, the supervisor's targets start with (`info`,
/// `unwedge=debug`). Directives are comma-separated, as `EnvFilter` reads them.
fn names_the_supervisor(text: &str) -> bool {
    text.split(',').map(str::trim).any(|d| {
        if d.is_empty() || d.contains('[') {
            return false;
        }
        let target = match d.split_once('=') {
            Some((target, _)) => target.trim(),
            // A bare level applies to every target; a bare word is a target.
            None if d.parse::<LevelFilter>().is_ok() => return true,
            None => d,
        };
        !target.is_empty() && SUPERVISOR_TARGET.starts_with(target)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_directives_for_every_supervisor_line_count() {
        for text in [
            "info",
            "off",
            "ERROR",
            "unwedge=debug",
            "bogus,unwedge",
            "unw=warn",
        ] {
            assert!(names_the_supervisor(text), "{text}");
        }
        for text in [
            "bogus",
            "hyper=debug",
            "unwedge_admin=debug",
            "unwedge::observe=trace",
            "[span]=debug",
            "unwedge[span]=debug",
        ] {
            assert!(!names_the_supervisor(text), "{text}");
        }
    }

    #[test]
    fn a_filter_that_says_nothing_of_the_supervisor_keeps_its_warnings() {
        let (filter, warning) = log_filter(Some("bogus".into()));
        assert!(filter.to_string().contains("unwedge=warn"), "{filter}");
        assert!(warning
            .unwrap()
            .contains("UNWEDGE_LOG=\"bogus\" enables nothing"));
        for empty in ["", "  "] {
            let (filter, warning) = log_filter(Some(empty.into()));
            assert_eq!((filter.to_string(), warning), ("info".to_owned(), None));
        }
        let (filter, warning) = log_filter(Some("unwedge=error".into()));
        assert_eq!(
            (filter.to_string(), warning),
            ("unwedge=error".to_owned(), None)
        );
        let (filter, warning) = log_filter(Some("unwedge=notalevel".into()));
        assert_eq!(filter.to_string(), "info");
        assert!(warning.unwrap().contains("is not a log filter"));
    }
}
