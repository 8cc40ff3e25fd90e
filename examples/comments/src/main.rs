//! The seed's `AddComment` on `unwedge::Mutex`: the panic poisons the mutex instead of
//! leaving it locked forever; the process drains and exits 70 for its supervisor to replace.
//!
//! Run with:
//!
//! ```text
//! UNWEDGE_LISTEN=127.0.0.1:3000 cargo run -p example-comments
//! curl -i -X POST -d stub http://127.0.0.1:3000/comments   # 500 (Go's server2.go: empty reply)
//! curl -i http://127.0.0.1:3000/comments                   # refused: the process exited 70 (Go: hangs forever)
//! ```
//!
//! The poisoned mutex makes the process crash gracefully: it stops accepting, finishes the
//! requests in flight (a request it had accepted already gets `503`), and exits with code 70
//! (with nothing in flight, within milliseconds). Under the supervisor
//! (`unwedge run --listen 127.0.0.1:3000 -- target/debug/example-comments`) a fresh worker
//! takes over on the same socket, and the second `curl` gets `200`. Without `UNWEDGE_LISTEN`
//! it listens on `serve()`'s default, 127.0.0.1:8080.

#[tokio::main]
async fn main() -> unwedge::serve::Outcome {
    // The decisions (recover, crash), the reports and why the process exits (`graceful crash:
    // exiting with code 70`) are `tracing` events: without a subscriber only the panic hook's
    // line would show. `RUST_LOG` filters (default: info).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    unwedge::serve(example_comments::app()).await
}
