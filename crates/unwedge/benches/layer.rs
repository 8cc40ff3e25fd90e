//! PanicLayer overhead, in-process: a trivial `service_fn` bare, behind tower-http's
//! `CatchPanicLayer`, and behind `PanicLayer`, through `tower::ServiceExt::oneshot`; then the
//! cost of one caught panic (hook + report + 500).
//!
//! Run with:
//!
//! ```text
//! cargo bench -p unwedge --bench layer -- --warm-up-time 1 --measurement-time 3
//! UNWEDGE_BACKTRACE=0 cargo bench -p unwedge --bench layer -- --warm-up-time 1 --measurement-time 3 "^panic/"
//! ```
//!
//! The services answer synchronously, so each request is driven with `now_or_never`: no
//! runtime, no waker, only the layers' own cost. Requests are built outside the timed part;
//! each response is dropped inside it.

use std::convert::Infallible;
use std::future::{ready, Ready};

use bytes::Bytes;
use criterion::{criterion_group, BatchSize, Criterion};
use futures_util::FutureExt;
use http::{Request, Response};
use http_body_util::{Empty, Full};
use tower::{Layer, Service, ServiceExt};
use tower_http::catch_panic::CatchPanicLayer;
use unwedge::{PanicLayer, Policy};

type Req = Request<Empty<Bytes>>;

fn ok(_req: Req) -> Ready<Result<Response<Full<Bytes>>, Infallible>> {
    ready(Ok(Response::new(Full::new(Bytes::from_static(b"ok")))))
}

/// What a real handler answers: a body and its content type.
fn ok_typed(_req: Req) -> Ready<Result<Response<Full<Bytes>>, Infallible>> {
    let mut res = Response::new(Full::new(Bytes::from_static(b"ok")));
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    ready(Ok(res))
}

fn boom(_req: Req) -> Ready<Result<Response<Full<Bytes>>, Infallible>> {
    panic!("boom")
}

/// A bare request, and one with the headers a browser or a proxy typically sends. Header
/// values are slices of one shared buffer, as hyper makes them from its read buffer (so a
/// clone is a reference count, not a copy).
fn request(with_headers: bool) -> Req {
    let mut b = Request::get("/comments/42?page=2");
    if with_headers {
        static WIRE: &str = "example.com\
            Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0\
            application/json\
            gzip, deflate, br\
            Bearer abcdefghijklmnopqrstuvwxyz\
            203.0.113.7";
        thread_local!(static BUF: Bytes = Bytes::from(WIRE.to_owned()));
        let mut at = 0;
        let mut next = |len: usize| {
            let v = BUF.with(|b| b.slice(at..at + len));
            at += len;
            http::HeaderValue::from_maybe_shared(v).unwrap()
        };
        b = b
            .header("host", next(11))
            .header("user-agent", next(60))
            .header("accept", next(16))
            .header("accept-encoding", next(17))
            .header("authorization", next(33))
            .header("x-forwarded-for", next(11));
    }
    b.body(Empty::new()).unwrap()
}

fn run<S>(c: &mut Criterion, name: &str, svc: S, with_headers: bool)
where
    S: Service<Req> + Clone,
    S::Future: std::future::Future,
{
    c.bench_function(name, |b| {
        b.iter_batched(
            || request(with_headers),
            // The response is dropped inside the measurement, as a server drops it once
            // written: a request's whole cost. (Returned, criterion would drop the batch's
            // responses together after it: a batch of requests in flight at once, so that
            // `PanicLayer` allocates each one's scope instead of reusing the last one's.)
            |req| {
                let res = svc
                    .clone()
                    .oneshot(req)
                    .now_or_never()
                    .expect("the service answers synchronously");
                drop(res);
            },
            BatchSize::SmallInput,
        )
    });
}

fn no_panic(c: &mut Criterion) {
    // "plain": the trivial service, no request headers, a response without headers.
    // "typical": 6 request headers, a response with a content type, as real traffic has.
    type Handler = fn(Req) -> Ready<Result<Response<Full<Bytes>>, Infallible>>;
    let cases: [(&str, bool, Handler); 2] = [("plain", false, ok), ("typical", true, ok_typed)];
    for (case, headers, handler) in cases {
        let bare = tower::service_fn(handler);
        run(c, &format!("no_panic/{case}/bare"), bare, headers);
        let catch = CatchPanicLayer::new().layer(bare);
        run(c, &format!("no_panic/{case}/catch_panic"), catch, headers);
        let ours = PanicLayer::new().layer(bare);
        run(c, &format!("no_panic/{case}/panic_layer"), ours, headers);
    }
    let lean = PanicLayer::new()
        .capture_headers(false)
        .layer(tower::service_fn(ok_typed));
    run(
        c,
        "no_panic/typical/panic_layer_no_header_capture",
        lean,
        true,
    );
    let echo = PanicLayer::new()
        .echo_request_id(true)
        .layer(tower::service_fn(ok_typed));
    run(
        c,
        "no_panic/typical/panic_layer_echo_request_id",
        echo,
        true,
    );
}

fn one_panic(c: &mut Criterion) {
    // CatchPanicLayer first, under a silent hook (the default one would print each panic), and
    // before PanicLayer installs unwedge's hook, so that it pays for no backtrace.
    std::panic::set_hook(Box::new(|_| {}));
    let bare = tower::service_fn(boom);
    run(
        c,
        "panic/catch_panic",
        CatchPanicLayer::new().layer(bare),
        true,
    );
    let bt = if std::env::var_os("UNWEDGE_BACKTRACE").is_some_and(|v| v == "0") {
        "off"
    } else {
        "on"
    };
    // Recover: every iteration panics, and Auto's budget would crash.
    let ours = PanicLayer::with_policy(Policy::Recover).layer(bare);
    run(
        c,
        &format!("panic/panic_layer (backtrace {bt})"),
        ours,
        true,
    );
}

// one_panic first: it sets a silent hook that unwedge's hook, installed by the first
// PanicLayer, then chains (a hook set after unwedge's would replace it).
criterion_group!(benches, one_panic, no_panic);

/// `LAYER_BENCH_MIN=` (empty, or a part of the names to run): instead of criterion, print the best (minimum) mean over 3 000 batches
/// of 1 000 requests for each no-panic case. On a busy machine the minimum is the figure
/// least disturbed by other processes; criterion's mean is the figure a quiet machine gives.
fn min_of_batches() {
    fn best<S>(name: &str, svc: S, with_headers: bool)
    where
        S: Service<Req> + Clone,
    {
        let filter = std::env::var("LAYER_BENCH_MIN").unwrap_or_default();
        if !name.contains(filter.as_str()) {
            return;
        }
        const BATCH: usize = 1_000;
        let mut reqs: Vec<Req> = Vec::with_capacity(BATCH);
        let mut best = f64::MAX;
        for _ in 0..3_000 {
            reqs.extend((0..BATCH).map(|_| request(with_headers)));
            let start = std::time::Instant::now();
            for req in reqs.drain(..) {
                let res = svc.clone().oneshot(req).now_or_never();
                std::hint::black_box(res);
            }
            best = best.min(start.elapsed().as_nanos() as f64 / BATCH as f64);
        }
        println!("{name:55} {best:8.1} ns");
    }
    type Handler = fn(Req) -> Ready<Result<Response<Full<Bytes>>, Infallible>>;
    let cases: [(&str, bool, Handler); 2] = [("plain", false, ok), ("typical", true, ok_typed)];
    for (case, headers, handler) in cases {
        let bare = tower::service_fn(handler);
        best(&format!("no_panic/{case}/bare"), bare, headers);
        best(
            &format!("no_panic/{case}/catch_panic"),
            CatchPanicLayer::new().layer(bare),
            headers,
        );
        best(
            &format!("no_panic/{case}/panic_layer"),
            PanicLayer::new().layer(bare),
            headers,
        );
    }
    let lean = PanicLayer::new()
        .capture_headers(false)
        .layer(tower::service_fn(ok_typed));
    best("no_panic/typical/panic_layer_no_header_capture", lean, true);
    let echo = PanicLayer::new()
        .echo_request_id(true)
        .layer(tower::service_fn(ok_typed));
    best("no_panic/typical/panic_layer_echo_request_id", echo, true);
}

fn main() {
    if std::env::var_os("LAYER_BENCH_MIN").is_some() {
        min_of_batches();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
