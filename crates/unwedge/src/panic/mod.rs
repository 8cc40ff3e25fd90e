//! Catching panics, reporting them, and deciding what they mean for the process.
//!
//! - [`install`]: the panic hook that captures message, location, backtrace.
//! - [`PanicLayer`]: tower middleware that catches a handler's panic and answers 500.
//! - [`PanicReport`]: what happened, serializable.
//! - [`Policy`]: Recover, Crash or Auto.

pub(crate) mod context;
mod hook;
mod layer;
mod policy;
mod report;

pub use hook::install;
pub use layer::PanicLayer;
pub use policy::Policy;
pub use report::{Action, Decision, PanicReport, RequestInfo, REDACTED, REDACTED_HEADERS};
