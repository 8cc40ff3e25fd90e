//! STUB: replaced by the Mutex work.
/// Robust async mutex (stub).
#[derive(Debug, Default)]
pub struct Mutex<T>(tokio::sync::Mutex<T>);
/// Guard (stub).
pub struct MutexGuard<'a, T>(tokio::sync::MutexGuard<'a, T>);
/// Poison error (stub).
#[derive(Debug)]
pub struct PoisonError<G>(G);
