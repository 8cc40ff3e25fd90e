//! A reload's new configuration: where it comes from ([`ConfigSource`]), what of it a running
//! supervisor can take, and what only a restart of the supervisor applies.
//!
//! Worker settings (the command, the number of workers, readiness, hang detection, timeouts,
//! the restart policy) change with the new generation. Settings bound to the supervisor's
//! process (its sockets, its pid file, its log format, its admin endpoint, report directory
//! and alerts) keep their running values, with a warning.

use crate::config::{Config, ListenAddr, ReadyMode};
use crate::socket;

/// Where a reload gets the new generation's configuration: typically the config file read
/// again, under the same command-line flags. An `Err` (one line) refuses the reload: the
/// workers keep running as they are.
pub type ConfigSource = Box<dyn FnMut() -> Result<Config, String> + Send>;

/// The worker settings a reload applies, by name as in the config file.
fn changed(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    macro_rules! cmp {
        ($($field:ident => $name:literal),* $(,)?) => {
            $(if old.$field != new.$field { out.push($name); })*
        };
    }
    cmp!(
        command => "command",
        workers => "workers",
        ready => "ready",
        reload_mode => "reload-mode",
        ready_timeout => "ready-timeout",
        stop_signal => "stop-signal",
        stop_timeout => "stop-timeout",
        restart_delay => "restart-delay",
        restart_delay_max => "restart-delay-max",
        stable_after => "stable-after",
        max_restarts => "max-restarts",
        within => "within",
        watchdog => "watchdog",
        probe => "probe",
        probe_timeout => "probe-timeout",
        probe_interval => "probe-interval",
        probe_failures => "probe-failures",
        dump_signal => "dump-signal",
        dump_grace => "dump-grace",
        max_memory => "max-memory",
        max_lifetime => "max-lifetime",
    );
    out
}

/// Settings a running supervisor cannot change: put back to their running values, and named.
fn keep_fixed(old: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut kept = Vec::new();
    macro_rules! keep {
        ($($field:ident => $name:literal),* $(,)?) => {
            $(if old.$field != new.$field {
                new.$field = old.$field.clone();
                kept.push($name);
            })*
        };
    }
    keep!(
        listen => "listen",
        port_env => "port-env",
        socket_mode => "socket-mode",
        socket_group => "socket-group",
        run_as => "user",
        pidfile => "pidfile",
        log_format => "log-format",
        admin => "admin",
        report_dir => "report-dir",
        report_max_bytes => "report-max-bytes",
        alert_webhook => "alert-webhook",
        alert_exec => "alert-exec",
    );
    kept
}

/// Probes (`--probe`, `--ready probe`) need somewhere to go: the shared socket probes reach
/// (`probe_target`), or each worker's own port (`--port-env`). Checked at start and on reload.
pub(crate) fn check_probe_target(
    c: &Config,
    probe_target: Option<&ListenAddr>,
) -> Result<(), String> {
    let no_target = probe_target.is_none() && c.port_env.is_none();
    if no_target && c.probe.is_some() {
        return Err("--probe needs --listen (a TCP or unix socket) or --port-env".into());
    }
    if no_target && c.ready == ReadyMode::Probe {
        return Err("--ready probe needs --listen or --port-env".into());
    }
    Ok(())
}

/// `--ready accept` watches the passed sockets: without any (no `--listen`, no sockets from
/// systemd) no worker would ever be found ready, each one "hung" at `--ready-timeout` and
/// replaced, forever. `sockets`: whether the supervisor passes any. Checked at start and on
/// reload.
pub(crate) fn check_ready_accept(c: &Config, sockets: bool) -> Result<(), String> {
    if c.ready == ReadyMode::Accept && !sockets {
        return Err(
            "--ready accept needs sockets to watch (--listen, or sockets passed by systemd); \
             without them no worker would ever be ready"
                .into(),
        );
    }
    Ok(())
}

/// `--ready port` connects to each worker's own port (`--port-env`): with the fixed `listen`
/// and `port-env` put back by a reload, a new `ready = "port"` may have no such port, and a
/// connection to the shared socket (which the supervisor holds, so it always succeeds) would
/// take any worker for ready, one that serves nothing too. Checked on reload; a start refuses
/// the same as a usage error.
pub(crate) fn check_ready_port(c: &Config) -> Result<(), String> {
    if c.ready == ReadyMode::Port && c.port_env.is_none() {
        return Err(
            "`ready = \"port\"` needs `port-env`, which a reload cannot turn on (it applies \
             only when the supervisor restarts)"
                .into(),
        );
    }
    Ok(())
}

/// A reload's new configuration, checked (see [`prepare`]).
#[derive(Debug)]
pub(crate) struct Prepared {
    /// The configuration, with the fixed settings put back.
    pub(crate) config: Config,
    /// The names of the settings that change.
    pub(crate) changes: Vec<&'static str>,
    /// The names of the fixed settings that changed, kept as they are until a restart.
    pub(crate) kept: Vec<&'static str>,
}

/// The new configuration, checked against the running one: its command must be runnable, a
/// probe must have somewhere to go (`probe_target`: the shared socket probes reach) and
/// `--ready accept` sockets to watch (`sockets`: whether the supervisor passes any). Returns
/// it with the fixed settings put back, the names of the settings that change, and those of
/// the fixed ones that changed.
pub(crate) fn prepare(
    old: &Config,
    mut new: Config,
    probe_target: Option<&ListenAddr>,
    sockets: bool,
) -> Result<Prepared, String> {
    let kept = keep_fixed(old, &mut new);
    for name in &kept {
        tracing::warn!(
            "reload: `{name}` changed; it applies only when the supervisor restarts (kept as it is)"
        );
    }
    socket::check_command(&new.command[0]).map_err(|e| e.to_string())?;
    check_ready_port(&new)?;
    check_probe_target(&new, probe_target)?;
    check_ready_accept(&new, sockets)?;
    let changes = changed(old, &new);
    Ok(Prepared {
        config: new,
        changes,
        kept,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Options;

    fn config(toml: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml).unwrap();
        let file = Options::from_file(&path).unwrap();
        Config::resolve(Some(file), Options::default(), Vec::new()).unwrap()
    }

    #[test]
    fn worker_settings_change_and_process_settings_are_kept() {
        let old = config(
            "listen = [\"127.0.0.1:8080\"]\nworkers = 2\ncommand = [\"/bin/sh\", \"-c\", \"a\"]\n",
        );
        let new = config(
            "listen = [\"127.0.0.1:9090\"]\nworkers = 4\nwatchdog = \"2s\"\nadmin = \"off\"\n\
             user = \"nobody\"\ncommand = [\"/bin/sh\", \"-c\", \"b\"]\n",
        );
        let target = old.listen[0].clone();
        let Prepared {
            config: applied,
            changes,
            ..
        } = prepare(&old, new, Some(&target), true).unwrap();
        assert_eq!(changes, vec!["command", "workers", "watchdog"]);
        assert_eq!(applied.workers, 4);
        assert_eq!(applied.listen, old.listen, "sockets stay");
        assert_eq!(applied.admin, old.admin, "the admin endpoint stays");
        // The notify socket was given to the workers' user at start.
        assert_eq!(applied.run_as, None, "the workers' user stays");
    }

    #[test]
    fn a_command_that_cannot_run_or_a_probe_without_a_target_is_refused() {
        let old = config("command = [\"/bin/sh\"]\n");
        let missing = config("command = [\"/nonexistent/server\"]\n");
        let e = prepare(&old, missing, None, false).unwrap_err();
        assert!(e.contains("/nonexistent/server"), "{e}");
        let probe = config("probe = \"/livez\"\ncommand = [\"/bin/sh\"]\n");
        let e = prepare(&old, probe, None, false).unwrap_err();
        assert!(e.contains("--probe needs"), "{e}");
        let accept = config("ready = \"accept\"\ncommand = [\"/bin/sh\"]\n");
        let e = prepare(&old, accept.clone(), None, false).unwrap_err();
        assert!(e.contains("--ready accept needs sockets"), "{e}");
        assert!(prepare(&old, accept, None, true).is_ok());
    }

    /// Sockets at start, then a file that asks for `port-env` and `ready = "port"`: the
    /// sockets stay, so `ready = "port"` would probe the shared socket (always answered, by
    /// the supervisor's backlog) and take any worker for ready. Refused.
    #[test]
    fn ready_port_without_the_port_env_a_reload_keeps_is_refused() {
        let old = config("listen = [\"127.0.0.1:8080\"]\ncommand = [\"/bin/sh\"]\n");
        let new = config("port-env = \"PORT\"\nready = \"port\"\ncommand = [\"/bin/sh\"]\n");
        let target = old.listen[0].clone();
        let e = prepare(&old, new, Some(&target), true).unwrap_err();
        assert!(e.contains("`ready = \"port\"` needs `port-env`"), "{e}");
        // With port-env from the start, it may change to `port`.
        let old = config("port-env = \"PORT\"\ncommand = [\"/bin/sh\"]\n");
        let new = config("port-env = \"PORT\"\nready = \"port\"\ncommand = [\"/bin/sh\"]\n");
        assert!(prepare(&old, new, None, false).is_ok());
    }
}
