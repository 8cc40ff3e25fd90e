//! STUB: replaced by the PanicLayer work.
use std::future::Future;
/// Spawns a supervised background task (stub).
pub fn spawn<F>(name: &str, fut: F) -> tokio::task::JoinHandle<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let _ = name;
    tokio::spawn(fut)
}
