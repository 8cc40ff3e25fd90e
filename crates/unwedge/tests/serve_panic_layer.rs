//! `serve()`'s own `PanicLayer`: configured with `Server::panic_layer`, its policy overridden
//! by `UNWEDGE_POLICY`, and the warning when a `PanicLayer` inside the app handles the panics
//! instead (it decides, with its own policy, whatever `serve()` was told).
//!
//! Each test runs this test binary as a real worker process (see `support`) on
//! `127.0.0.1:0`: a crash is an exit code.

mod support;

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use support::Worker;
use unwedge::{PanicLayer, Policy, Server};

const NESTED_WARNING: &str = "a PanicLayer inside the app";

/// `/ok`, `/panic` (a plain panic: Auto recovers), `/poison` (panics holding an unwedge
/// `Mutex`: Auto crashes), `/users/{id}` (panics).
fn routes() -> Router {
    let m = std::sync::Arc::new(unwedge::Mutex::named("counter", 0u64));
    Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route(
            "/panic",
            get(|| async {
                panic!("boom from the handler");
                #[allow(unreachable_code)]
                ""
            }),
        )
        .route(
            "/poison",
            get(move || {
                let m = m.clone();
                async move {
                    let mut n = m.lock().await.expect("not poisoned yet");
                    *n += 1;
                    panic!("panic while holding the counter");
                    #[allow(unreachable_code)]
                    ""
                }
            }),
        )
        .route(
            "/users/{id}",
            get(|| async {
                panic!("boom for a user");
                #[allow(unreachable_code)]
                ""
            }),
        )
}

fn maybe_worker() {
    let Some(mode) = support::worker_mode() else {
        return;
    };
    match mode.as_str() {
        // serve()'s layer, configured: Crash, the panic message in the answer, request ids
        // on every response.
        "given" => {
            let layer = PanicLayer::with_policy(Policy::Crash)
                .expose_details(true)
                .echo_request_id(true);
            support::run_worker(|| Server::new().panic_layer(layer).serve(routes()))
        }
        // A layer configured but given no policy (`new()`), under a process-wide Crash.
        "unset" => {
            unwedge::panic::set_policy(Policy::Crash);
            let layer = PanicLayer::new().echo_request_id(true);
            support::run_worker(|| Server::new().panic_layer(layer).serve(routes()))
        }
        // The documented mistake: a layer in the app and serve()'s own.
        "nested" => support::run_worker(|| Server::new().serve(routes().layer(PanicLayer::new()))),
        // The documented way to route templates: the app's layer only, following
        // UNWEDGE_POLICY.
        "app-only" => {
            let policy = Policy::from_env().unwrap().unwrap_or_default();
            let app = routes().layer(PanicLayer::with_policy(policy));
            support::run_worker(|| Server::new().without_panic_layer().serve(app))
        }
        other => panic!("unknown mode {other}"),
    }
}

/// The layer given to `Server::panic_layer` answers (the panic message exposed, request ids
/// echoed), with `UNWEDGE_POLICY=recover` over its own `Crash`: the worker keeps serving.
#[test]
fn serve_answers_with_the_given_layer_and_the_environment_policy_on_top() {
    maybe_worker();
    let mut w = Worker::start(
        "serve_answers_with_the_given_layer_and_the_environment_policy_on_top",
        "given",
        &[("UNWEDGE_POLICY", "recover")],
    );
    assert!(w.log().contains("policy=\"recover\""), "{}", w.log());
    let (status, res) = w.get("/panic");
    assert_eq!(status, 500, "{res}");
    assert!(
        res.contains("boom from the handler"),
        "details exposed: {res}"
    );
    let (status, res) = w.get("/ok");
    assert_eq!(status, 200, "{res}");
    assert!(res.to_ascii_lowercase().contains("x-request-id:"), "{res}");
    // serve()'s layer sits outside the Router, which matches routes: a panic's route is the
    // path with its ids replaced, one route for both users, and neither id in it.
    for user in ["17", "4242"] {
        assert_eq!(w.get(&format!("/users/{user}")).0, 500);
        // Awaited: the worker's stderr is read by a thread of this test, maybe not yet.
        let report = format!("(GET /users/{user})");
        let line = w.expect(&report, Duration::from_secs(10));
        assert!(line.contains("route=\"GET /users/{int}\""), "{line}");
    }
    let log = w.log();
    assert!(!log.contains("route=\"GET /users/17"), "{log}");
    assert_eq!(w.exited(), None, "{}", w.log());
    assert!(!w.log().contains(NESTED_WARNING), "{}", w.log());
    w.sigterm();
    assert_eq!(w.wait_exit(Duration::from_secs(30)), 0, "{}", w.log());
}

/// Without `UNWEDGE_POLICY` (blank is unset, as for `Policy::from_env`) or `Server::policy`,
/// the given layer's policy decides: `Crash`, so a plain panic (which the default `Auto`
/// recovers from) ends the worker with 70.
#[test]
fn without_a_policy_setting_the_given_layers_policy_decides() {
    maybe_worker();
    let mut w = Worker::start(
        "without_a_policy_setting_the_given_layers_policy_decides",
        "given",
        &[("UNWEDGE_POLICY", " ")],
    );
    assert!(w.log().contains("policy=\"crash\""), "{}", w.log());
    assert_eq!(w.get("/panic").0, 500);
    assert_eq!(w.wait_exit(Duration::from_secs(30)), 70, "{}", w.log());
}

/// A `PanicLayer` inside the app and `serve()`'s own, `UNWEDGE_POLICY=recover`: the app's
/// (Auto) handles the panics; one warning names both policies and the two fixes, however
/// many panics come; and the app's layer still decides (a poisoned mutex crashes, exit 70,
/// although serve() was told `recover`).
#[test]
fn a_panic_layer_inside_the_app_is_named_in_one_warning() {
    maybe_worker();
    let mut w = Worker::start(
        "a_panic_layer_inside_the_app_is_named_in_one_warning",
        "nested",
        &[("UNWEDGE_POLICY", "recover")],
    );
    assert_eq!(w.get("/panic").0, 500);
    let line = w.expect(NESTED_WARNING, Duration::from_secs(10));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("(policy auto)"), "{line}");
    assert!(line.contains("(policy recover"), "{line}");
    assert!(line.contains("Server::without_panic_layer()"), "{line}");
    assert!(line.contains("Server::panic_layer"), "{line}");
    assert_eq!(w.get("/panic").0, 500);
    assert_eq!(w.get("/poison").0, 500);
    assert_eq!(w.wait_exit(Duration::from_secs(30)), 70, "{}", w.log());
    let log = w.log();
    assert_eq!(log.matches(NESTED_WARNING).count(), 1, "{log}");
}

/// The documented way to route templates with serve(): `without_panic_layer()` and the
/// app's own layer, built from `UNWEDGE_POLICY`. Reports name the route template, the
/// variable applies (`crash`: a plain panic ends the worker), and nothing warns.
#[test]
fn the_apps_own_layer_reports_route_templates_and_follows_the_variable() {
    maybe_worker();
    let mut w = Worker::start(
        "the_apps_own_layer_reports_route_templates_and_follows_the_variable",
        "app-only",
        &[("UNWEDGE_POLICY", "crash")],
    );
    assert_eq!(w.get("/users/42").0, 500);
    assert_eq!(w.wait_exit(Duration::from_secs(30)), 70, "{}", w.log());
    let log = w.log();
    assert!(log.contains("GET /users/{id}"), "{log}");
    assert!(!log.contains(NESTED_WARNING), "{log}");
}

/// A layer made with `PanicLayer::new()` sets no policy: the process-wide one (`Crash` here)
/// decides, and a plain panic ends the worker with 70 (`new()`'s `Auto` would have recovered).
#[test]
fn a_layer_made_with_new_leaves_the_policy_to_the_process() {
    maybe_worker();
    let mut w = Worker::start(
        "a_layer_made_with_new_leaves_the_policy_to_the_process",
        "unset",
        &[],
    );
    assert!(w.log().contains("policy=\"crash\""), "{}", w.log());
    assert_eq!(w.get("/panic").0, 500);
    assert_eq!(w.wait_exit(Duration::from_secs(30)), 70, "{}", w.log());
}
