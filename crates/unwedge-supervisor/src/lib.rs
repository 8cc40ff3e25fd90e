//! The unwedge supervisor as a library: listening sockets bound once and passed to every
//! worker, a worker pool with Erlang/OTP restart semantics, hang detection (heartbeats and
//! HTTP probes), zero-downtime reload, graceful stop, orphan reaping and systemd integration.
//!
//! The `unwedge` binary is a thin layer over this crate (`unwedge run`); see
//! `docs/supervisor.md` for the behaviour and the trade-offs.
//!
//! ```no_run
//! use unwedge_supervisor::{config::Workers, Config, Options, Supervisor};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let flags = Options { listen: vec!["127.0.0.1:8080".into()], workers: Some(Workers::Count(2)), ..Options::default() };
//! let config = Config::resolve(None, flags, vec!["./my-server".into()])?;
//! let supervisor = Supervisor::new(config)?
//!     .with_alert_hook(|e: &unwedge_supervisor::Event| eprintln!("event: {e:?}"));
//! let handle = supervisor.handle();
//! tokio::spawn(async move {
//!     let mut events = handle.subscribe();
//!     while let Ok(e) = events.recv().await {
//!         println!("{}", serde_json::to_string(&e).unwrap());
//!     }
//! });
//! let outcome = supervisor.run().await?;
//! std::process::exit(outcome.exit_code().into());
//! # }
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod cloexec;
pub mod config;
mod early_signals;
pub mod error;
pub mod events;
pub mod memory;
pub mod notify;
pub mod oom;
mod output;
pub mod pidfile;
pub mod policy;
pub mod probe;
pub mod procfs;
pub mod reconfig;
pub mod run_as;
pub mod shim;
pub mod socket;
mod supervisor;
pub mod systemd;
mod text;

pub use config::{Config, ConfigFile, ListenAddr, LogFormat, Options, ReadyMode, ReloadMode};
pub use early_signals::catch_signals_early;
pub use error::{ConfigError, StartError};
pub use events::{
    AlertHook, Counters, Event, ExitInfo, HangKind, RestartReason, Snapshot, WorkerInfo,
    WorkerState,
};
pub use output::{last_stderr_lines, MAX_LINE, STDERR_TAIL_LINES};
pub use reconfig::ConfigSource;
pub use supervisor::{Control, Handle, Outcome, Supervisor, EXIT_GAVE_UP};
