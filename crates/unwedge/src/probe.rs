//! Health probes as tower services: `/livez` and `/readyz`.
//!
//! | probe | `200` when | `503` when |
//! | --- | --- | --- |
//! | [`Livez`] | Healthy or Draining | Tainted or Wedged: restart this process |
//! | [`Readyz`] | ready ([`set_ready`](crate::health::set_ready)) and Healthy | not ready, Draining, Tainted or Wedged: send no traffic |
//!
//! Both answer `application/json`: `{"status":"ok","state":"healthy","ready":true}` or
//! `{"status":"fail","state":"tainted","ready":true,"reason":"…"}`, whatever the method and path (mount
//! them where you like); [`Probes`] dispatches `/livez` and `/readyz` itself for hyper users,
//! and [`router`] (feature `axum`) gives an axum `Router` with both.
//!
//! The reason names requests (method and route: the path with its identifiers replaced by
//! placeholders, `GET /orders/{int}`) and locks. The health routes of
//! [`serve`](crate::serve()) give it to clients on this host only (loopback, `unix:`
//! sockets); a client on another host reads that it is withheld. These services, mounted by
//! you, give it to whoever reaches them: mount them where only your probes do.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use tower::ServiceExt;
//! let res = unwedge::probe::Livez.oneshot(http::Request::new(())).await.unwrap();
//! assert_eq!(res.status(), 200);
//! # }
//! ```

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use tower::Service;

use crate::health::{probe_state, HealthState};

#[derive(Serialize)]
struct Answer<'a> {
    status: &'static str,
    state: HealthState,
    ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

/// What a client not on this host reads instead of the health's reason (see [`livez_for`]).
pub(crate) const WITHHELD: &str =
    "withheld from clients on other hosts: ask from this host, or see the log and STATUS=";

fn answer(
    pass: bool,
    (state, reason, ready): (HealthState, Option<String>, bool),
    reason_if_fail: Option<&str>,
    local: bool,
) -> Response<Full<Bytes>> {
    // The health's reason names requests (method and route) and locks: for this host only.
    let state_reason = reason.as_deref().map(|r| if local { r } else { WITHHELD });
    let reason = if pass {
        state_reason
    } else {
        reason_if_fail.or(state_reason)
    };
    let body = serde_json::to_vec(&Answer {
        status: if pass { "ok" } else { "fail" },
        state,
        ready,
        reason,
    })
    .expect("a struct of strings serializes");
    let mut res = Response::new(Full::new(Bytes::from(body)));
    if !pass {
        *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// The liveness probe: `503` when the process is Tainted or Wedged (the reason in the body),
/// `200` otherwise.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use tower::ServiceExt;
/// unwedge::health::set_wedged("stall", "runtime did not schedule for 3s");
/// let res = unwedge::probe::Livez.oneshot(http::Request::new(())).await.unwrap();
/// assert_eq!(res.status(), 503);
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Livez;

/// The readiness probe: `200` when the process said it is ready and is Healthy, `503`
/// otherwise (not ready yet, Draining, Tainted, Wedged).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use tower::ServiceExt;
/// let res = unwedge::probe::Readyz.oneshot(http::Request::new(())).await.unwrap();
/// assert_eq!(res.status(), 503); // nobody called set_ready(true)
/// unwedge::health::set_ready(true);
/// let res = unwedge::probe::Readyz.oneshot(http::Request::new(())).await.unwrap();
/// assert_eq!(res.status(), 200);
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Readyz;

/// Answers `/livez` with [`Livez`], `/readyz` with [`Readyz`], and `404` elsewhere: mount it
/// on an admin listener of a hyper server.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use tower::ServiceExt;
/// use unwedge::probe::Probes;
/// let get = |path: &str| Probes.oneshot(http::Request::get(path).body(()).unwrap());
/// assert_eq!(get("/livez").await.unwrap().status(), 200);
/// assert_eq!(get("/readyz").await.unwrap().status(), 503); // nobody called set_ready(true)
/// assert_eq!(get("/metrics").await.unwrap().status(), 404);
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Probes;

impl<B> Service<Request<B>> for Livez {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<B>) -> Self::Future {
        ready(Ok(livez()))
    }
}

impl<B> Service<Request<B>> for Readyz {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<B>) -> Self::Future {
        ready(Ok(readyz()))
    }
}

impl<B> Service<Request<B>> for Probes {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        ready(Ok(match req.uri().path() {
            "/livez" => livez(),
            "/readyz" => readyz(),
            _ => {
                let mut res = Response::new(Full::new(Bytes::from_static(b"not found\n")));
                *res.status_mut() = StatusCode::NOT_FOUND;
                res
            }
        }))
    }
}

/// The `/livez` answer for the current health.
///
/// ```
/// use futures_util::FutureExt;
/// use http_body_util::BodyExt;
/// unwedge::health::set_tainted("mutex `cache` poisoned");
/// let res = unwedge::probe::livez();
/// assert_eq!(res.status(), 503);
/// let body = res.into_body().collect().now_or_never().unwrap().unwrap().to_bytes();
/// let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
/// assert_eq!(json["state"], "tainted");
/// assert_eq!(json["reason"], "mutex `cache` poisoned");
/// ```
pub fn livez() -> Response<Full<Bytes>> {
    livez_for(true)
}

/// The `/readyz` answer for the current health.
///
/// ```
/// assert_eq!(unwedge::probe::readyz().status(), 503); // not ready yet
/// unwedge::health::set_ready(true);
/// let res = unwedge::probe::readyz();
/// assert_eq!(res.status(), 200);
/// assert_eq!(res.headers()["content-type"], "application/json");
/// ```
pub fn readyz() -> Response<Full<Bytes>> {
    readyz_for(true)
}

/// [`livez`] for a client on this host (`local`), or on another, which gets the state without
/// the reason: the reason names other clients' requests (`no progress: … oldest GET
/// /users/{int}`), the mutex a request poisoned, who holds a lock. `serve()`'s health routes
/// answer so on its public port.
pub(crate) fn livez_for(local: bool) -> Response<Full<Bytes>> {
    let now = probe_state();
    answer(now.0.is_live(), now, None, local)
}

/// [`readyz`] for a client on this host or not (see [`livez_for`]).
pub(crate) fn readyz_for(local: bool) -> Response<Full<Bytes>> {
    let now = probe_state();
    let (state, _, ready) = now;
    let why = (!ready && state == HealthState::Healthy).then_some("not ready yet");
    answer(ready && state == HealthState::Healthy, now, why, local)
}

/// An axum `Router` answering `GET /livez` and `GET /readyz`; merge it into your app (or an
/// admin router). Generic over the state so it merges into any `Router<S>`.
///
/// ```
/// let app: axum::Router = axum::Router::new().merge(unwedge::probe::router());
/// # let _ = app;
/// ```
#[cfg(feature = "axum")]
pub fn router<S>() -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    use axum::routing::get_service;
    axum::Router::new()
        .route("/livez", get_service(Livez))
        .route("/readyz", get_service(Readyz))
}
