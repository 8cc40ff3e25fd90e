//! # unwedge: a panicking request costs that one request
//!
//! Servers catch a handler's panic so that one bad request does not kill the process. But the
//! panic can strike inside a critical section: a `std::sync::Mutex` poisons and every later
//! request fails; a `tokio::sync::Mutex` is released over half-updated data and the service
//! silently serves corrupt state. unwedge gives a service state that cannot be left
//! half-updated, and a panic layer that knows whether the state is still sound:
//!
//! - [`Tx`]: transactional state. `update` runs on a private copy and publishes it only when
//!   the closure returns; a panic leaves the state exactly as it was.
//! - [`Mutex`]: an async lock with robust-mutex semantics for state that cannot be copied: a
//!   panic while it is held releases it and poisons it, waits are watched, deadlocks reported.
//! - [`PanicLayer`]: tower middleware that answers `500` (gRPC: `grpc-status: 13`), records a [`PanicReport`] and applies
//!   a [`Policy`]: keep serving when the state was rolled back, crash gracefully when it was
//!   not.
//! - [`health()`]: one process-wide view of whether this process is healthy, draining, tainted
//!   or wedged.
//! - [`serve()`]: the worker runtime speaking systemd's protocols (`LISTEN_FDS`, `sd_notify`).
//!
//! ```no_run
//! use axum::{routing::post, Router};
//! use unwedge::Tx;
//! use std::sync::Arc;
//!
//! #[derive(Clone, Default)]
//! struct Counter { hits: u64 }
//!
//! # async fn run() -> unwedge::serve::Outcome {
//! let state = Arc::new(Tx::named("counter", Counter::default()));
//! let app = Router::new().route("/hit", post({
//!     let state = state.clone();
//!     move || async move { state.update(|c| { c.hits += 1; c.hits }).to_string() }
//! }));
//! unwedge::serve(app).await
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod health;
pub mod panic;
pub mod probe;
pub mod serve;
pub mod state;
pub mod sync;
pub mod task;
mod text;
pub mod watchdog;

pub use health::{health, Health, HealthState};
pub use panic::{install, PanicLayer, PanicReport, Policy};
pub use serve::{serve, Server};
pub use state::{Snapshot, Tx};
pub use sync::{CommitGuard, LockError, Mutex, MutexGuard, PoisonError};
pub use task::{spawn, TaskHandle};
