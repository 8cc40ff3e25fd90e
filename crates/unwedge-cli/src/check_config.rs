//! `unwedge check-config FILE`: validates a config file and prints the effective
//! configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use unwedge_supervisor::{Config, Options};

use crate::{fail, observe};

/// Reads `file`, checks it as `unwedge run --config FILE` would, and prints the effective
/// configuration; an error is one line, with `run`'s exit status.
pub(crate) fn check_config(file: PathBuf) -> miette::Result<ExitCode> {
    let opts = match Options::from_file(&file) {
        Ok(o) => o,
        Err(e) => return fail(&e, e.exit_code()),
    };
    // The command may also be given to `unwedge run` after `--`.
    let placeholder = opts.command.is_empty();
    let command = if placeholder {
        vec!["-".to_owned()]
    } else {
        Vec::new()
    };
    match Config::resolve(Some(opts), Options::default(), command) {
        Ok(mut c) => {
            if let Err(e) = observe::Settings::from_config(&c) {
                return fail(format!("{}: {e}", file.display()), 2);
            }
            if placeholder {
                c.command.clear();
                println!("# no `command`: give it to `unwedge run` after `--`");
            }
            if c.workers_auto {
                println!(
                    "# workers = \"auto\": {} here (one per CPU this process may use)",
                    c.workers
                );
            }
            print!("{}", c.to_toml());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => fail(format!("{}: {e}", file.display()), e.exit_code()),
    }
}
