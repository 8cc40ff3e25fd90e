//! Usage errors in one line, as every other error of `unwedge`:
//! `unwedge: error: unexpected argument '--bogus' (see unwedge run --help)`, exit status 2.
//!
//! clap's own rendering takes 3 to 8 lines (the message, tips, a usage line, a pointer to
//! `--help`), and one of its tips is harmful here: `to pass '--bogus' as a value, use
//! '-- --bogus'`, while after `unwedge run … --` comes the worker command. Its "a similar
//! argument exists" hints are kept, in the line.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::Command;

/// The exit status of a usage error.
const USAGE: u8 = 2;

/// `args` with a value that looks negative (`-1`, `-1s`) attached to the option before it
/// (`--watchdog=-1s`), so that the option's own parser says what is wrong with it: clap takes
/// `-1s` for short flags (`unexpected argument '-1'`, with a tip to write `-- -1`). Only for
/// an option of the subcommand that takes a value, and only before `--` (after it comes the
/// worker command); unwedge has no short flag that is a digit, so no valid command line
/// changes meaning.
pub(crate) fn attach_negative_values(cmd: &Command, mut args: Vec<OsString>) -> Vec<OsString> {
    let Some(sub) = args
        .get(1)
        .and_then(|a| a.to_str())
        .and_then(|a| cmd.find_subcommand(a))
    else {
        return args;
    };
    let takes_value = |arg: &str| {
        sub.get_arguments().any(|a| {
            let named = match arg.strip_prefix("--") {
                Some(long) => a.get_long() == Some(long),
                None => {
                    let mut short = arg.chars();
                    short.next() == Some('-')
                        && short.next().is_some_and(|c| a.get_short() == Some(c))
                        && short.next().is_none()
                }
            };
            named
                && a.get_action().takes_values()
                && a.get_num_args().is_none_or(|n| n.min_values() > 0)
        })
    };
    let negative = |value: &OsString| {
        let b = value.as_encoded_bytes();
        b.len() > 1 && b[0] == b'-' && b[1].is_ascii_digit()
    };
    let mut i = 2;
    while i + 1 < args.len() && args[i] != "--" {
        if args[i].to_str().is_some_and(takes_value) && negative(&args[i + 1]) {
            let value = args.remove(i + 1);
            args[i].push("=");
            args[i].push(value);
        }
        i += 1;
    }
    args
}

/// Prints what clap's error `e` (for the command line `args`, parsed against `cmd`) has to
/// say and returns the exit status: help and version as clap prints them, anything else as
/// one line on stderr with exit status 2.
pub(crate) fn report(e: &clap::Error, cmd: &Command, args: &[OsString]) -> ExitCode {
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        // A closed stdout loses the help, nothing more.
        let _ = e.print();
        return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
    }
    crate::out::eprint_line(format_args!("unwedge: error: {}", one_line(e, cmd, args)));
    ExitCode::from(USAGE)
}

/// The message of `e` in one line, with clap's suggestion of a similar name and where to read
/// more: `unexpected argument '--worker' (did you mean '--workers'? see unwedge run --help)`.
fn one_line(e: &clap::Error, cmd: &Command, args: &[OsString]) -> String {
    // clap renders `error: MESSAGE` (a list of missing arguments on lines of their own),
    // then, after a blank line, tips, the usage and `For more information …`.
    let rendered = e.render().to_string();
    let mut message = rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    if let Some(m) = message.strip_prefix("error: ") {
        message = m.to_owned();
    }
    if let Some(m) = message.strip_suffix(" found") {
        message = m.to_owned();
    }
    let mut more = Vec::new();
    for kind in [
        ContextKind::SuggestedSubcommand,
        ContextKind::SuggestedArg,
        ContextKind::SuggestedValue,
    ] {
        let names = match e.get(kind) {
            Some(ContextValue::String(s)) => vec![s.clone()],
            Some(ContextValue::Strings(s)) => s.clone(),
            _ => continue,
        };
        if !names.is_empty() {
            let quoted: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
            more.push(format!("did you mean {}?", quoted.join(" or ")));
        }
    }
    // The subcommand whose help to read: the first argument, if it names one (`help` has none).
    let sub = args
        .get(1)
        .and_then(|a| a.to_str())
        .and_then(|a| cmd.find_subcommand(a))
        .map(|s| format!(" {}", s.get_name()))
        .filter(|s| s != " help")
        .unwrap_or_default();
    more.push(format!("see unwedge{sub} --help"));
    format!("{message} ({})", more.join(" "))
}
