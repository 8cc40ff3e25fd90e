//! # unwedge-load: a small HTTP/1.1 load client for loopback targets
//!
//! Used by unwedge's tests, its demo and `unwedge-bench`. It sends a weighted mix of requests
//! to a server on `127.0.0.1`, `[::1]` or `localhost` (nothing else is accepted), either with
//! a fixed number of concurrent workers (closed model) or at a fixed rate (open model, latency
//! from the intended send time), over kept-alive connections or a fresh connection per
//! request, until a duration or a count is reached. It reports every request exactly once:
//! ok, an expected failure status (the `500` of a route that panics on purpose), an
//! unexpected status, or no response at all — refused, reset, timeout or other — with a
//! latency histogram.
//!
//! ```no_run
//! use std::time::Duration;
//! use unwedge_load::{LoadConfig, RequestSpec};
//!
//! # async fn demo() -> Result<(), unwedge_load::LoadError> {
//! let config = LoadConfig::new("http://127.0.0.1:3000/")?
//!     .request(RequestSpec::get("/items").weight(9))
//!     .request(RequestSpec::post("/panic", "").expect_failure(500))
//!     .concurrency(16)
//!     .keep_alive(false)
//!     .duration(Duration::from_secs(5));
//! let report = unwedge_load::run(config).await?;
//! println!("{report}");
//! assert_eq!(report.unexpected_failures(), 0);
//! # Ok(()) }
//! ```
//!
//! See `docs/load.md` for what each outcome means.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod config;
mod outcome;
mod report;
mod run;

pub use config::{
    ConnectionMode, LoadConfig, LoadModel, RequestSpec, StatusClass, Target, MAX_TIME,
};
pub use outcome::{classify_error, FailureKind};
pub use report::{fmt_us, LatencySummary, LoadReport, Progress, RequestCounts, Sample};
pub use run::{run, start, Running};

/// A load run that cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The target is not a loopback address.
    #[error(
        "refusing target `{target}`: the load client only targets 127.0.0.1, [::1] or localhost"
    )]
    NotLoopback {
        /// The host or address given.
        target: String,
    },
    /// The URL cannot be used.
    #[error("invalid URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The config is inconsistent (no bound, zero concurrency, …).
    #[error("invalid load config: {0}")]
    Config(String),
}
