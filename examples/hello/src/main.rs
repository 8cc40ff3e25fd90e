//! The smallest unwedge service: `GET /` answers `hello`.
//!
//! Run with:
//!
//! ```text
//! UNWEDGE_LISTEN=127.0.0.1:3000 cargo run -p example-hello --release
//! curl http://127.0.0.1:3000/        # hello
//! curl http://127.0.0.1:3000/livez   # {"status":"ok","state":"healthy","ready":true}
//! ```
//!
//! Without `UNWEDGE_LISTEN` it listens on 127.0.0.1:3000; under socket activation
//! (`systemd-socket-activate -l 127.0.0.1:3000 target/release/example-hello`, or the unwedge
//! supervisor) it serves on the inherited socket. SIGTERM drains and exits 0; a graceful crash
//! exits 70.

use axum::{routing::get, Router};

fn app() -> Router {
    Router::new().route("/", get(|| async { "hello" }))
}

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
    unwedge::Server::new()
        .bind("127.0.0.1:3000")
        .serve(app())
        .await
}
