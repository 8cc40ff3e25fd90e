//! The unwedge demo worker: every way a request can panic or hang, served by
//! [`unwedge::serve()`]. See the `unwedge_demo` crate docs for the routes.
//!
//! Run with:
//!
//! ```text
//! UNWEDGE_LISTEN=127.0.0.1:8080 cargo run -p unwedge-demo --bin unwedge-demo-service
//! curl -X POST http://127.0.0.1:8080/poison   # 500, then the process exits 70
//! ```

use std::process::ExitCode;

fn main() -> ExitCode {
    unwedge_demo::init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(unwedge_demo::run());
    // A handler may still block a worker thread (that is what /block is for): don't wait.
    runtime.shutdown_background();
    code
}
