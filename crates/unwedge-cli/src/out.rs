//! What the subcommands print on stdout. A closed stdout (`unwedge status | true`, a reader
//! that exited first) is one line on stderr and exit status 1, as `unwedge reports` has it:
//! `println!` panics when the write fails (a backtrace, exit status 101).

use std::io::Write;

/// Writes `text` to stdout and flushes it. The error is the message to print, such as
/// `cannot write <stdout>: Broken pipe (os error 32)`.
pub(crate) fn print(text: impl std::fmt::Display) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    write!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write <stdout>: {e}"))
}

/// Writes one line to stderr. A stderr that cannot be written (a pipe whose reader exited)
/// loses the line, not the exit status: `eprintln!` would panic (exit status 101, whatever the
/// command meant to say with its own).
pub(crate) fn eprint_line(line: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}
