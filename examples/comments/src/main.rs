//! The seed's `AddComment` on `unwedge::Mutex`: the panic poisons the mutex instead of
//! leaving it locked forever; the process drains and exits 70 for its supervisor to replace.
//!
//! Run with:
//!
//! ```text
//! UNWEDGE_LISTEN=127.0.0.1:3000 cargo run -p example-comments
//! curl -i -X POST -d stub http://127.0.0.1:3000/comments   # 500 (Go's server2.go: empty reply)
//! curl -i http://127.0.0.1:3000/comments                   # 503 while draining (Go: hangs forever)
//! ```
//!
//! The process then exits with code 70. Under the supervisor
//! (`unwedge run --listen 127.0.0.1:3000 -- target/debug/example-comments`) a fresh worker
//! takes over on the same socket. Without `UNWEDGE_LISTEN` it listens on 127.0.0.1:3000.

#[tokio::main]
async fn main() -> unwedge::serve::Outcome {
    unwedge::serve(example_comments::app()).await
}
