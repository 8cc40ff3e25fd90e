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
    /// The config file is not valid TOML or has an unknown key or a bad value.
    #[error("invalid config file {}: {reason}", path.display())]
    #[diagnostic(code(unwedge::config::invalid))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
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
