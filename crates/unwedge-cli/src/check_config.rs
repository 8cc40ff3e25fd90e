//! `unwedge check-config FILE`: validates a config file and prints the effective
//! configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use unwedge_supervisor::socket::check_bindable;
use unwedge_supervisor::{ConfigError, ConfigFile, ListenAddr, Options, Supervisor};

use crate::{fail, observe};

/// Reads `file`, checks it as `unwedge run --config FILE` would (the sockets and the admin
/// address are bound and released at once: one in use is only a note, as a running supervisor
/// holds its own), and prints the effective configuration; an error is one line, with `run`'s
/// exit status (2 usage, 1 environment).
pub(crate) fn check_config(file: PathBuf) -> miette::Result<ExitCode> {
    let config_file = match ConfigFile::read(&file) {
        Ok(f) => f,
        Err(e) => return fail(&e, e.exit_code()),
    };
    // The command may also be given to `unwedge run` after `--`.
    let placeholder = config_file.options().command.is_empty();
    let command = if placeholder {
        vec!["-".to_owned()]
    } else {
        Vec::new()
    };
    match config_file.resolve(Options::default(), command) {
        Ok(mut c) => {
            let settings = match observe::Settings::from_config(&c) {
                Ok(s) => s,
                Err(e) => return fail(format!("{}: {e}", file.display()), 2),
            };
            if placeholder {
                c.command.clear();
            }
            // What `run` and a reload refuse before they bind or start anything; the sockets
            // and the admin address are not bound (a running supervisor holds them).
            if let Err(e) = Supervisor::preflight(&c) {
                return fail(format!("{}: {e}", file.display()), e.exit_code());
            }
            // Without `--listen`, sockets come only from systemd: `LISTEN_FDS` set here as
            // in the unit that starts `run`.
            let passed = std::env::var("LISTEN_FDS").is_ok_and(|n| n.trim() != "0");
            if let Err(e) = Supervisor::preflight_sockets(&c, passed) {
                return fail(format!("{}: {e}", file.display()), e.exit_code());
            }
            if let Err(e) = settings.check_environment() {
                return fail(format!("{}: {e}", file.display()), 1);
            }
            if let Some(warning) = Supervisor::memory_limit_warning(&c) {
                crate::out::eprint_line(format_args!("unwedge: warning: {warning}"));
            }
            // The addresses, bound and released at once: one of no interface here, a port
            // this user may not bind, a missing directory fail as `run` would; one in use is a
            // note (before a reload, the running supervisor holds them).
            let admin = settings.explicit_admin().map(ListenAddr::Tcp);
            for addr in c.listen.iter().chain(admin.as_ref()) {
                match check_bindable(addr) {
                    Ok(None) => {}
                    Ok(Some(note)) => {
                        crate::out::eprint_line(format_args!("unwedge: note: {note}"))
                    }
                    Err(e) => return fail(format!("{}: {e}", file.display()), e.exit_code()),
                }
            }
            settings.show_in(&mut c);
            let mut text = String::new();
            if c.workers_auto {
                text += &format!(
                    "# workers = \"auto\": {} here (one per CPU this process may use)\n",
                    c.workers
                );
            }
            text += &c.to_toml();
            // A closed stdout (`| head`) is one line and exit 1, not a panic.
            match crate::out::print(text) {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e) => fail(e, 1),
            }
        }
        // It names the file already.
        Err(e @ ConfigError::Invalid { .. }) => fail(&e, e.exit_code()),
        Err(e) => fail(format!("{}: {e}", file.display()), e.exit_code()),
    }
}
