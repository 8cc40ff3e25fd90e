//! STUB: replaced by the PanicLayer work.
/// Tower middleware that catches panics (stub).
#[derive(Debug, Clone, Default)]
pub struct PanicLayer;
