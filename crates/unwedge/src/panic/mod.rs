//! Catching panics, reporting them, and deciding what they mean for the process.
//!
//! - [`install`]: the panic hook that captures message, location, backtrace.
//! - [`PanicLayer`]: tower middleware that catches a handler's panic and answers 500.
//! - [`PanicReport`]: what happened, serializable.
//! - [`Policy`]: Recover, Crash or Auto; [`set_policy`] sets the process-wide one.
//! - [`ReportSink`], [`add_sink`]: where reports go besides the `tracing` event.
//!
//! The guide is in `docs/panic-layer.md`.

pub(crate) mod context;
mod hook;
mod layer;
mod policy;
mod report;
mod sink;
mod trace;

pub use hook::install;
pub use layer::{
    grpc_error_response, problem_response, BodyPanicked, BoxError, PanicBody, PanicLayer,
    PanicService, ResponseContext, ResponseFuture, MAX_REQUEST_ID_LEN, X_REQUEST_ID,
};
pub(crate) use policy::decide;
pub use policy::{policy, set_policy, ParsePolicyError, Policy, POLICY_ENV};
pub use report::{
    Action, Decision, PanicReport, RequestInfo, REDACTED, REDACTED_HEADERS, REPORTED_HEADERS,
};
pub(crate) use sink::emit;
pub use sink::{add_sink, ReportSink};
pub(crate) use trace::{Mode as BacktraceMode, BACKTRACE_ENV};
