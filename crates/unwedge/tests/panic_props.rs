//! `PanicLayer` driven with whatever a client can send (proptest): any method, path,
//! `x-request-id` and header bytes, gRPC or not, and a handler that panics with any text in
//! `call`, in its future or in its response body (or does not panic). The answer is always
//! well formed, the request id it carries is bounded, the panic text reaches the client only
//! with `expose_details(true)` (at most 1 KiB of it in a problem's `detail`), and no secret,
//! a URL's password in the panic text included, reaches the report or the client.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::FutureExt;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use proptest::prelude::*;
use tower::{Layer, ServiceExt};
use unwedge::panic::{BodyPanicked, ReportSink, MAX_REQUEST_ID_LEN};
use unwedge::serve::{encode_report, MAX_REPORT_BYTES};
use unwedge::{PanicLayer, PanicReport, Policy};

/// In every panic message: the client must not see it unless details are exposed.
const PANIC_TEXT: &str = "PANICTEXT";
/// In every credential the client sends: no report may show it.
const SECRET: &str = "s3cr3tPW";

/// Where the handler panics.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Where {
    Never,
    Call,
    Future,
    Body,
}

/// Text with the hard cases (multibyte UTF-8, `%`, quotes, control characters), sometimes
/// after a run of `a`s putting the next piece at and around the 1 KiB a `grpc-message` keeps.
fn text() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "a", "é", "日本", "🦀", "%", "%4", "\"", "\\", "@", ":", "\n", "\r", "\0", "\u{7f}",
        "\u{2028}", "…",
    ]);
    let pad = prop_oneof![Just(0usize), 1usize..8, 1000usize..1030];
    (pad, prop::collection::vec(piece, 0..8))
        .prop_map(|(pad, pieces)| "a".repeat(pad) + &pieces.concat())
}

/// Bytes a header value may hold: visible ASCII, tab and obs-text (not UTF-8).
fn header_bytes(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![0x20u8..0x7f, Just(b'\t'), 0x80u8..=0xff];
    prop::collection::vec(byte, len)
}

/// The client's `x-request-id`: none, a sane one, one just around the length limit, or any
/// header bytes.
fn request_id() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        Just(None),
        "[A-Za-z0-9._:/+=@-]{1,128}".prop_map(|s| Some(s.into_bytes())),
        (MAX_REQUEST_ID_LEN - 2..MAX_REQUEST_ID_LEN + 3).prop_map(|n| Some(vec![b'i'; n])),
        header_bytes(0..300).prop_map(Some),
    ]
}

fn method() -> impl Strategy<Value = http::Method> {
    prop_oneof![
        Just(http::Method::GET),
        Just(http::Method::POST),
        "[A-Z]{1,20}".prop_map(|m| http::Method::from_bytes(m.as_bytes()).expect("a token")),
        (1000usize..3000).prop_map(|n| http::Method::from_bytes(&vec![b'M'; n]).expect("a token")),
    ]
}

/// A path `http::Uri` takes (visible ASCII, `"`, `{`, `}`), up to its 65 534-byte limit.
fn path() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec!["/", "a", "%E9", "\"", "{}", "@", ":", "%"]);
    let len = prop_oneof![Just(0usize), 1usize..64, 60_000usize..65_000];
    (len, prop::collection::vec(piece, 0..6), "[a-z=&%]{0,8}")
        .prop_map(|(len, pieces, q)| format!("/{}{}?{q}{SECRET}", "p".repeat(len), pieces.concat()))
}

#[derive(Debug, Clone)]
struct Case {
    method: http::Method,
    path: String,
    id: Option<Vec<u8>>,
    grpc: bool,
    expose: bool,
    echo: bool,
    capture: bool,
    at: Where,
    message: String,
    /// `message` as a report shows it: a URL's password planted in it hidden.
    shown: String,
}

fn case() -> impl Strategy<Value = Case> {
    let at = prop::sample::select(vec![Where::Never, Where::Call, Where::Future, Where::Body]);
    (
        (method(), path(), request_id()),
        (any::<[bool; 5]>(), at, text()),
    )
        .prop_map(
            |((method, path, id), ([grpc, expose, echo, capture, url], at, message))| {
                // A URL with a password, as in a failed connection's error.
                let (url, url_shown) = match url {
                    true => (
                        format!(" postgres://app:{SECRET}@db/x "),
                        " postgres://…@db/x ",
                    ),
                    false => (String::new(), ""),
                };
                Case {
                    method,
                    path,
                    id,
                    grpc,
                    expose,
                    echo,
                    capture,
                    at,
                    message: format!("{PANIC_TEXT}{url}{message}"),
                    shown: format!("{PANIC_TEXT}{url_shown}{message}"),
                }
            },
        )
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The handler: answers `ok`, or panics with `message` where `at` says.
fn app(
    at: Where,
    message: String,
) -> impl tower::Service<
    Request<()>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    tower::service_fn(move |_req: Request<()>| {
        let message = message.clone();
        if at == Where::Call {
            panic!("{message}");
        }
        async move {
            if at == Where::Future {
                panic!("{message}");
            }
            let body = match at {
                Where::Body => StreamBody::new(futures_util::stream::once(async move {
                    panic!("{message}");
                    #[allow(unreachable_code)]
                    Ok::<_, Infallible>(http_body::Frame::data(Bytes::new()))
                }))
                .boxed_unsync(),
                _ => Full::new(Bytes::from_static(b"ok")).boxed_unsync(),
            };
            Ok::<_, Infallible>(Response::new(body))
        }
    })
}

fn request(c: &Case) -> Request<()> {
    let mut req = Request::builder()
        .method(c.method.clone())
        .uri(&c.path)
        .header("authorization", format!("Bearer {SECRET}"))
        .header("cookie", format!("session={SECRET}"))
        .header("referer", format!("https://user:{SECRET}@shop.example/a"));
    if let Some(id) = &c.id {
        req = req.header(
            "x-request-id",
            HeaderValue::from_bytes(id).expect("valid bytes"),
        );
    }
    if c.grpc {
        req = req
            .version(http::Version::HTTP_2)
            .header("content-type", "application/grpc");
    }
    req.body(()).expect("a valid request")
}

/// A sink that keeps every report.
#[derive(Default, Clone)]
struct Keep(Arc<Mutex<Vec<PanicReport>>>);

impl ReportSink for Keep {
    fn report(&self, report: &PanicReport) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(report.clone());
    }
}

fn is_sane(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_LEN
        && id.iter().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'+' | b'=' | b'@')
        })
}

/// The id the answer must carry: the client's when sane, else 16 generated hex digits.
fn check_id(c: &Case, id: &str) -> Result<(), TestCaseError> {
    match &c.id {
        Some(sent) if is_sane(sent) => prop_assert_eq!(id.as_bytes(), &sent[..]),
        _ => prop_assert!(
            id.len() == 16 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "{id:?}"
        ),
    }
    Ok(())
}

/// `grpc-status: 13` and a `grpc-message` of printable ASCII naming the request id and, only
/// when exposed, the panic text.
fn check_grpc(c: &Case, h: &HeaderMap, id: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(h.get("grpc-status").map(|v| v.as_bytes()), Some(&b"13"[..]));
    let message = h.get("grpc-message").expect("grpc-message");
    let message = message.to_str().expect("printable ASCII");
    prop_assert!(message.len() < 4 * 1024, "{} bytes", message.len());
    prop_assert!(message.contains(id), "{message}");
    prop_assert_eq!(message.contains(PANIC_TEXT), c.expose, "{}", message);
    prop_assert!(!message.contains(SECRET), "{}", message);
    Ok(())
}

fn run(c: &Case) -> Result<(), TestCaseError> {
    let keep = Keep::default();
    let layer = PanicLayer::with_policy(Policy::Recover)
        .expose_details(c.expose)
        .echo_request_id(c.echo)
        .capture_headers(c.capture)
        .sink(Arc::new(keep.clone()));
    let svc = layer.layer(app(c.at, c.message.clone()));
    let res = svc
        .oneshot(request(c))
        .now_or_never()
        .expect("ready at once")
        .expect("infallible");
    let (parts, body) = res.into_parts();
    // The body's bytes and trailers, or the error it ended with.
    let collected = body
        .collect()
        .now_or_never()
        .expect("ready at once")
        .map(|whole| (whole.trailers().cloned(), whole.to_bytes()));
    let header_id = parts
        .headers
        .get("x-request-id")
        .map(|v| v.to_str().expect("an id is visible ASCII").to_owned());
    match c.at {
        Where::Never | Where::Body => {
            prop_assert_eq!(parts.status, StatusCode::OK);
            prop_assert_eq!(header_id.is_some(), c.echo);
            if let Some(id) = &header_id {
                check_id(c, id)?;
            }
        }
        Where::Call | Where::Future => {
            let id = header_id.expect("a panic's answer carries x-request-id");
            check_id(c, &id)?;
            let (_, body) = collected.as_ref().expect("a whole body");
            if c.grpc {
                prop_assert_eq!(parts.status, StatusCode::OK);
                prop_assert!(body.is_empty());
                check_grpc(c, &parts.headers, &id)?;
            } else {
                prop_assert_eq!(parts.status, StatusCode::INTERNAL_SERVER_ERROR);
                let v: serde_json::Value =
                    serde_json::from_slice(body).expect("problem+json parses");
                prop_assert_eq!(v["request_id"].as_str(), Some(id.as_str()));
                let detail = v.get("detail").and_then(|d| d.as_str());
                prop_assert_eq!(detail.is_some(), c.expose);
                if let Some(d) = detail {
                    // The message as the report shows it, at most 1 KiB of it (`…` if cut).
                    prop_assert!(d.len() <= 1024, "{} bytes", d.len());
                    prop_assert_eq!(d == c.shown, c.shown.len() <= 1024);
                    if d != c.shown {
                        let kept = d.strip_suffix('…').expect("a cut is marked");
                        prop_assert!(c.shown.starts_with(kept), "{kept:?} is not a prefix");
                    }
                }
                let body = String::from_utf8_lossy(body);
                prop_assert_eq!(body.contains(PANIC_TEXT), c.expose);
                prop_assert!(!body.contains(SECRET), "{}", body);
            }
        }
    }
    if c.at == Where::Body {
        match &collected {
            Ok((trailers, _)) if c.grpc => {
                let trailers = trailers.as_ref().expect("gRPC trailers");
                let reports = keep.0.lock().unwrap_or_else(|p| p.into_inner());
                let id = reports[0]
                    .request
                    .as_ref()
                    .expect("a request")
                    .request_id
                    .clone();
                check_id(c, &id)?;
                check_grpc(c, trailers, &id)?;
            }
            Ok(_) => prop_assert!(false, "a panicking body must end with an error"),
            Err(e) => {
                let e = e.downcast_ref::<BodyPanicked>().expect("BodyPanicked");
                check_id(c, e.request_id())?;
                prop_assert!(!e.to_string().contains(PANIC_TEXT));
            }
        }
    }
    let reports = keep.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    prop_assert_eq!(reports.len(), usize::from(c.at != Where::Never));
    for r in &reports {
        prop_assert_eq!(&r.message, &c.shown);
        let json = serde_json::to_string(r).expect("a report serializes");
        prop_assert!(!json.contains(SECRET), "{}", json);
        let line = encode_report(r);
        prop_assert!(line.len() <= MAX_REPORT_BYTES, "{} bytes", line.len());
        prop_assert!(!line.contains(SECRET));
    }
    Ok(())
}

proptest! {
    // XorShift: ChaCha unoptimized (a dev build) would take most of the run.
    #![proptest_config(ProptestConfig {
        cases: 256,
        rng_algorithm: proptest::test_runner::RngAlgorithm::XorShift,
        ..ProptestConfig::default()
    })]

    /// Whatever the client sends and wherever the handler panics (with whatever text): the
    /// answer is well formed (`problem+json` that parses, or gRPC's status), its
    /// `x-request-id` is the client's sane id or a generated one (never more than
    /// `MAX_REQUEST_ID_LEN` bytes of the client's), the panic text reaches the client only
    /// with `expose_details`, and the report (and its notify message, within its limit)
    /// and the answer show no credential, no URL password (in a header or the panic text),
    /// no query.
    #[test]
    fn any_request_gets_a_well_formed_answer_and_a_report_without_secrets(c in case()) {
        // A subscriber that drops everything: the hook then prints no `thread panicked` line
        // per case.
        let _ = tracing::subscriber::set_global_default(tracing::subscriber::NoSubscriber::default());
        run(&c)?;
    }
}
