//! The seed's ByteCache as an axum app, on [`unwedge::Tx`].
//!
//! The Go original bumps `curr_size`, then panics on the key `burn` before inserting the
//! entry; `recover()` keeps the server up, and the cache claims 5 bytes used while its entries
//! hold 2 — it refuses writes forever. Here the same code runs inside [`Tx::update`]: the
//! panic drops the private copy, the request gets a 500, and the cache is exactly as before.
//!
//! | route | does |
//! | --- | --- |
//! | `PUT /cache/{key}` (body: the bytes) | stores the entry: `201`, `409` if the key exists, `507` if it would not fit, `408` if the body takes longer than [`BODY_TIMEOUT`] to arrive; the key `burn` panics mid-update |
//! | `GET /cache/{key}` | the bytes, or `404` |
//! | `GET /stats` | `{"max_size":…,"curr_size":…,"actual_size":…,"entries":{"key":len,…}}` |

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

use std::collections::BTreeMap;
use std::sync::Arc;

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use unwedge::Tx;

/// How long a `PUT`'s body may take to arrive: a client sending its body slowly, or stopping
/// half-way, gets a `408` instead of holding its request and its connection for as long as
/// it likes. (Under `serve()` such a request does not get the process declared wedged
/// either: the watchdog sees that it waits on its client.)
pub const BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// Cache size when none is configured, in bytes.
pub const DEFAULT_MAX_SIZE: usize = 1024;

/// The seed's ByteCache. `curr_size` must always equal the sum of the entries' sizes.
///
/// The entries live in an [`imbl::HashMap`], so the copy that each [`Tx::update`] makes is
/// O(1) and an insert O(log n), whatever the cache holds.
#[derive(Clone, Debug)]
pub struct ByteCache {
    max_size: usize,
    curr_size: usize,
    entries: imbl::HashMap<String, Bytes>,
}

/// What [`ByteCache::put`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// Stored.
    Stored,
    /// The key exists already (no overwrites, as in the original).
    Exists,
    /// Storing it would exceed `max_size`.
    Full,
}

impl ByteCache {
    /// An empty cache that holds at most `max_size` bytes.
    ///
    /// ```
    /// let cache = example_bytecache::ByteCache::new(5);
    /// assert_eq!(cache.stats().max_size, 5);
    /// ```
    pub fn new(max_size: usize) -> Self {
        ByteCache {
            max_size,
            curr_size: 0,
            entries: imbl::HashMap::new(),
        }
    }

    /// The seed's `Put`, line for line, including its panic on the key `burn` after
    /// `curr_size` was bumped. Run it inside [`Tx::update`].
    ///
    /// # Panics
    ///
    /// On the key `burn`, on purpose: "some programmers just want to watch the world burn".
    ///
    /// ```
    /// use example_bytecache::{ByteCache, Put};
    /// let mut cache = ByteCache::new(5);
    /// assert_eq!(cache.put("watch", vec![0].into()), Put::Stored);
    /// assert_eq!(cache.put("watch", vec![0].into()), Put::Exists);
    /// assert_eq!(cache.put("big", vec![0; 5].into()), Put::Full);
    /// ```
    pub fn put(&mut self, key: &str, data: Bytes) -> Put {
        // Don't allow overwrites to keep example short.
        if self.entries.contains_key(key) {
            return Put::Exists;
        }
        // Don't allow our cache to exceed the specified max_size.
        if self.curr_size + data.len() > self.max_size {
            return Put::Full;
        }
        self.curr_size += data.len();
        if key == "burn" {
            panic!("some programmers just want to watch the world burn");
        }
        self.entries.insert(key.to_owned(), data);
        Put::Stored
    }

    /// The entry stored under `key`.
    ///
    /// ```
    /// let cache = example_bytecache::ByteCache::new(5);
    /// assert!(cache.get("nothing").is_none());
    /// ```
    pub fn get(&self, key: &str) -> Option<Bytes> {
        self.entries.get(key).cloned()
    }

    /// Sizes, as the seed's `Print` shows them.
    ///
    /// ```
    /// let stats = example_bytecache::ByteCache::new(5).stats();
    /// assert_eq!((stats.curr_size, stats.actual_size), (0, 0));
    /// ```
    pub fn stats(&self) -> Stats {
        let entries: BTreeMap<String, usize> = self
            .entries
            .iter()
            .map(|(k, v)| (k.clone(), v.len()))
            .collect();
        Stats {
            max_size: self.max_size,
            curr_size: self.curr_size,
            actual_size: entries.values().sum(),
            entries,
        }
    }
}

/// The body of `GET /stats`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Stats {
    /// The configured maximum, in bytes.
    pub max_size: usize,
    /// What the cache believes it holds.
    pub curr_size: usize,
    /// What its entries really hold; equal to `curr_size` unless the state is corrupt.
    pub actual_size: usize,
    /// Each key with its size.
    pub entries: BTreeMap<String, usize>,
}

type Cache = Arc<Tx<ByteCache>>;

/// The app with a cache of [`DEFAULT_MAX_SIZE`] bytes.
///
/// ```
/// let app: axum::Router = example_bytecache::app();
/// ```
pub fn app() -> Router {
    app_with_max_size(DEFAULT_MAX_SIZE)
}

/// The app with a cache of `max_size` bytes (the seed uses 5).
///
/// ```
/// let app: axum::Router = example_bytecache::app_with_max_size(5);
/// ```
pub fn app_with_max_size(max_size: usize) -> Router {
    let cache: Cache = Arc::new(Tx::named("bytecache", ByteCache::new(max_size)));
    Router::new()
        .route("/cache/{key}", get(get_entry).put(put_entry))
        .route("/stats", get(stats))
        .with_state(cache)
}

async fn put_entry(State(cache): State<Cache>, Path(key): Path<String>, req: Request) -> Response {
    // The whole body within BODY_TIMEOUT, not just each chunk: a client trickling a byte now
    // and then is bounded too. (Within it, the `Bytes` extractor as usual: its size limit.)
    let body = match tokio::time::timeout(BODY_TIMEOUT, Bytes::from_request(req, &())).await {
        Ok(Ok(body)) => body,
        Ok(Err(rejection)) => return rejection.into_response(),
        Err(_) => return (StatusCode::REQUEST_TIMEOUT, "body too slow\n").into_response(),
    };
    // A panic inside the closure discards the copy: `curr_size` is never left bumped.
    match cache.update(|c| c.put(&key, body)) {
        Put::Stored => StatusCode::CREATED.into_response(),
        Put::Exists => (StatusCode::CONFLICT, "key exists\n").into_response(),
        Put::Full => (StatusCode::INSUFFICIENT_STORAGE, "cache full\n").into_response(),
    }
}

async fn get_entry(State(cache): State<Cache>, Path(key): Path<String>) -> Response {
    match cache.read().get(&key) {
        Some(data) => data.into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn stats(State(cache): State<Cache>) -> Json<Stats> {
    Json(cache.read().stats())
}
