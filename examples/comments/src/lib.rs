//! The seed's `AddComment` as an axum app, on [`unwedge::Mutex`].
//!
//! The Go original (`server2.go`) locks, indexes `comments[len(comments)]` ("Oops… Happens to
//! all of us"), panics, and never unlocks: net/http recovers the panic, and every later request
//! hangs forever while a health check still answers. Here the guard is released by the
//! unwinding panic and the mutex is *poisoned*:
//!
//! - the panicking request gets a `500` (from [`PanicLayer`](unwedge::PanicLayer));
//! - every later request gets a quick `503` with `Retry-After`, not a hang: the comments may
//!   be half-updated, so they are not served;
//! - the default [`Policy::Auto`](unwedge::Policy) sees the poisoning and asks for a graceful
//!   crash: under [`unwedge::serve()`] the process drains and exits 70, and its supervisor
//!   starts a clean one.
//!
//! | route | does |
//! | --- | --- |
//! | `POST /comments` (body: the text) | the seed's `AddComment`: panics, as the seed does |
//! | `GET /comments` | the comments, one per line |

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use unwedge::{Mutex, MutexGuard, PoisonError};

/// The seed's `MyShinyMetalThing`.
#[derive(Debug, Default)]
pub struct Thing {
    comments: Vec<String>,
}

impl Thing {
    /// The seed's `AddComment`, bug included: it indexes one past the end, so it panics on the
    /// first call (and on every other).
    ///
    /// # Panics
    ///
    /// Always: "index out of bounds: the len is 0 but the index is 0".
    pub fn add_comment(&mut self, text: String) {
        let last = &self.comments[self.comments.len()]; // Oops... Happens to all of us.
        if *last != text {
            self.comments.push(text);
        }
    }
}

type Shared = Arc<Mutex<Thing>>;

/// The app. Wrap it in [`PanicLayer`](unwedge::PanicLayer) (as [`unwedge::serve()`] does) to
/// turn the panic into a `500`.
///
/// ```
/// let app: axum::Router = example_comments::app();
/// ```
pub fn app() -> Router {
    let thing: Shared = Arc::new(Mutex::named("comments", Thing::default()));
    Router::new()
        .route("/comments", get(list).post(add))
        .with_state(thing)
}

async fn add(State(thing): State<Shared>, text: String) -> Response {
    match thing.lock().await {
        Ok(mut thing) => {
            thing.add_comment(text);
            StatusCode::CREATED.into_response()
        }
        Err(poisoned) => unavailable(poisoned),
    }
}

async fn list(State(thing): State<Shared>) -> Response {
    match thing.lock().await {
        Ok(thing) => thing.comments.join("\n").into_response(),
        Err(poisoned) => unavailable(poisoned),
    }
}

/// What to write instead of `lock().expect("mutex was poisoned")`: the lock is ours and not
/// stuck, but the data may be half-updated. Say so in the log (with what poisoned it), answer
/// `503` so the client retries (on the clean process that replaces this one), and never show
/// the panic to the client.
fn unavailable(poisoned: PoisonError<MutexGuard<'_, Thing>>) -> Response {
    tracing::error!(%poisoned, "not serving possibly half-updated comments");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        "comments unavailable: the service is restarting\n",
    )
        .into_response()
}
