//! The seed's ByteCache on `unwedge::Tx`: the `burn` key panics mid-update, the cache stays
//! consistent, and the server keeps serving.
//!
//! Run with:
//!
//! ```text
//! UNWEDGE_LISTEN=127.0.0.1:3000 BYTECACHE_MAX_SIZE=5 cargo run -p example-bytecache
//! curl -X PUT --data-binary 'w' http://127.0.0.1:3000/cache/watch   # 201
//! curl -X PUT --data-binary 'i' http://127.0.0.1:3000/cache/it      # 201
//! curl -X PUT --data-binary 'brn' http://127.0.0.1:3000/cache/burn  # 500, the update rolled back
//! curl http://127.0.0.1:3000/stats    # {"max_size":5,"curr_size":2,"actual_size":2,…}
//! curl -X PUT --data-binary 'abc' http://127.0.0.1:3000/cache/more  # 201: still accepts writes
//! ```
//!
//! `BYTECACHE_MAX_SIZE` (bytes, default 1024) sets the cache size. Without `UNWEDGE_LISTEN`
//! it listens on `serve()`'s default, 127.0.0.1:8080.

use std::process::{ExitCode, Termination};

#[tokio::main]
async fn main() -> ExitCode {
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
    let max_size = match std::env::var("BYTECACHE_MAX_SIZE") {
        Err(_) => example_bytecache::DEFAULT_MAX_SIZE,
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) => n,
            Err(e) => {
                eprintln!(
                    "example-bytecache: BYTECACHE_MAX_SIZE={v:?} is not a size in bytes: {e}"
                );
                return ExitCode::from(2);
            }
        },
    };
    let outcome = unwedge::serve(example_bytecache::app_with_max_size(max_size)).await;
    // As returning it from `main` would: says why `serve()` failed to start (a bad
    // environment variable, a port in use), then the exit code. (`exit_code()` alone says
    // nothing.)
    outcome.report()
}
