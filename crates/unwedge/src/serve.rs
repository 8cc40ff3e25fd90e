//! STUB: replaced by the serve() work.
/// Worker runtime builder (stub).
#[derive(Debug, Default)]
pub struct Server;
/// Serves `app` (stub).
pub async fn serve<S>(app: S) -> std::io::Result<()> {
    let _ = app;
    Ok(())
}
