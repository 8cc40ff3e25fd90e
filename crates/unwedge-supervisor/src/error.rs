//! Errors of the supervisor, each saying what was being attempted.

use std::path::PathBuf;

/// A configuration that cannot be used. [`ConfigError::Usage`] and [`ConfigError::Invalid`]
/// are usage errors (exit status 2); [`ConfigError::Unreadable`] is exit status 1.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum ConfigError {
    /// A flag or config value is invalid.
    #[error("{0}")]
    #[diagnostic(code(unwedge::usage))]
    Usage(String),
    /// The config file cannot be read.
    #[error("cannot read config file {}: {reason}", path.display())]
    #[diagnostic(code(unwedge::config::unreadable))]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The config file is not valid TOML or has an unknown key or a bad value: `invalid config
    /// file big.toml, line 3, column 16, key stop-timeout: a duration needs a unit, …`.
    #[error(
        "invalid config file {}{}: {reason}",
        path.display(),
        at.as_ref().map(|at| format!(", {at}")).unwrap_or_default()
    )]
    #[diagnostic(code(unwedge::config::invalid))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Where in the file, when known.
        at: Option<FilePosition>,
        /// What is wrong (one line).
        reason: String,
    },
}

/// Where in a config file an error is: the line and column (from 1) and the key it belongs
/// to, when one can be told.
///
/// ```
/// use unwedge_supervisor::error::FilePosition;
///
/// let text = "workers = 2\n\nstop-timeout = 30\n";
/// let at = FilePosition::of(text, text.find("30").unwrap());
/// assert_eq!(at.to_string(), "line 3, column 16, key stop-timeout");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePosition {
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub column: usize,
    /// The key being set there (or the table opened there), if any.
    pub key: Option<String>,
}

impl FilePosition {
    /// The position of byte `offset` of `text` (clamped to its length), and the key of the
    /// nearest line at or before it that sets one: an error inside a value that spans lines
    /// (an array) belongs to the key that opened it.
    pub fn of(text: &str, offset: usize) -> FilePosition {
        let offset = crate::text::floor_char_boundary(text, offset);
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
        FilePosition {
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
            key: text[..line_end].lines().rev().find_map(key_of_line),
        }
    }
}

impl std::fmt::Display for FilePosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)?;
        match &self.key {
            Some(key) => write!(f, ", key {key}"),
            None => Ok(()),
        }
    }
}

/// The key a TOML line sets (`key = …`, `"key" = …`) or the table it opens (`[key]`).
fn key_of_line(line: &str) -> Option<String> {
    let t = line.trim_start();
    if let Some(header) = t.strip_prefix('[') {
        let header = header.trim_start_matches('[');
        let end = header.find(']')?;
        return Some(header[..end].trim().to_owned());
    }
    let (key, rest) = match t.chars().next()? {
        q @ ('"' | '\'') => {
            let end = t[1..].find(q)? + 1;
            (&t[1..end], &t[end + 1..])
        }
        _ => {
            let end = t
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                .unwrap_or(t.len());
            (&t[..end], &t[end..])
        }
    };
    (!key.is_empty() && rest.trim_start().starts_with('=')).then(|| key.to_owned())
}

impl ConfigError {
    /// The exit status this error should end the process with (2: usage, 1: other).
    pub fn exit_code(&self) -> u8 {
        match self {
            ConfigError::Unreadable { .. } => 1,
            _ => 2,
        }
    }
}

/// The supervisor could not start.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum StartError {
    /// The options cannot work together (exit status 2).
    #[error("{0}")]
    #[diagnostic(code(unwedge::usage))]
    Usage(String),
    /// A `--listen` socket could not be bound.
    #[error("cannot listen on {addr}: {reason}")]
    #[diagnostic(code(unwedge::listen))]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// A socket passed by systemd (`LISTEN_FDS`) cannot be used.
    #[error("cannot use {socket}: {reason}")]
    #[diagnostic(code(unwedge::inherited))]
    Inherited {
        /// Which fd, e.g. `inherited fd 4 (LISTEN_FDS=2, name web)`.
        socket: String,
        /// Why.
        reason: String,
    },
    /// The worker command cannot be run.
    #[error("cannot run worker command `{command}`: {reason}")]
    #[diagnostic(code(unwedge::command))]
    Command {
        /// The command.
        command: String,
        /// Why.
        reason: String,
    },
    /// Another setup step failed (notify socket, signal handlers, pid file…).
    #[error("cannot {what}: {reason}")]
    #[diagnostic(code(unwedge::setup))]
    Setup {
        /// What was being attempted.
        what: String,
        /// Why.
        reason: String,
    },
}

impl StartError {
    /// The exit status this error should end the process with (2: usage, 1: other).
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Usage(_) => 2,
            _ => 1,
        }
    }

    pub(crate) fn setup(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        StartError::Setup {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any offset into any text (multibyte characters, CR, quotes, brackets): a position
        /// in it, never a panic.
        #[test]
        fn any_offset_of_any_text_has_a_position(
            text in "([a-z =\"'\\[\\]#\r\n.é日本🦀\0-]|\r\n){0,60}",
            offset in 0..300usize,
        ) {
            let at = FilePosition::of(&text, offset);
            prop_assert!(at.line >= 1 && at.line <= text.split('\n').count());
            prop_assert!(at.column >= 1 && at.column <= text.chars().count() + 1);
            if let Some(key) = at.key {
                prop_assert!(text.contains(&key) && !key.contains('\n'), "{key:?}");
            }
        }
    }
}
