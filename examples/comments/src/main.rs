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
    unwedge::serve(example_comments::app()).await
}
