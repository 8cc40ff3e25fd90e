//! STUB: replaced by the PanicLayer work.
/// What to do about a panic (stub).
#[derive(Debug, Clone, Copy, Default)]
pub enum Policy {
    /// Keep serving.
    Recover,
    /// Graceful crash.
    Crash,
    /// Decide from the state.
    #[default]
    Auto,
}
