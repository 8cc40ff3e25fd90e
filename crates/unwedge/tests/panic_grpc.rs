//! A panic in a gRPC call is answered in gRPC's terms: `grpc-status: 13` (INTERNAL), over a
//! real HTTP/2 connection on 127.0.0.1, read by hyper's HTTP/2 client and by a real gRPC
//! client (Python's `grpcio`, the C-core implementation).

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tower::Layer;
use unwedge::PanicLayer;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// One gRPC message: uncompressed flag, big-endian length, the bytes.
fn grpc_message(payload: &[u8]) -> Bytes {
    let mut m = vec![0u8];
    m.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    m.extend_from_slice(payload);
    Bytes::from(m)
}

/// `/test.Echo/Panic` panics after an `.await`; `/test.Echo/Stream` sends one message, then
/// its body panics; anything else panics too (a plain HTTP request gets the usual `500`).
async fn handler(req: Request<hyper::body::Incoming>) -> Result<Response<Body>, Infallible> {
    match req.uri().path() {
        "/test.Echo/Stream" => {
            let frames = futures_util::stream::iter([Ok(Frame::data(grpc_message(b"hi")))]).chain(
                futures_util::stream::once(async {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    panic!("secret-detail in the stream")
                }),
            );
            Ok(Response::builder()
                .header("content-type", "application/grpc")
                .body(StreamBody::new(frames).boxed_unsync())
                .unwrap())
        }
        "/test.Echo/Long" => {
            tokio::task::yield_now().await;
            panic!("{}", "é%".repeat(2000))
        }
        _ => {
            tokio::task::yield_now().await;
            panic!("secret-detail in the handler")
        }
    }
}

/// An HTTP/2 (prior knowledge, as gRPC speaks it) server with the layer.
async fn start() -> SocketAddr {
    start_with(PanicLayer::with_policy(unwedge::Policy::Recover), false).await
}

/// A server with `layer`, speaking HTTP/1.1 if `http1`, else HTTP/2.
async fn start_with(layer: PanicLayer, http1: bool) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let svc = TowerToHyperService::new(layer.layer(tower::service_fn(handler)));
            let io = TokioIo::new(stream);
            if http1 {
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(io, svc));
            } else {
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc),
                );
            }
        }
    });
    addr
}

/// A call's answer as hyper's client gets it: the head, the data, the trailers.
type Answer = (http::response::Parts, Vec<Bytes>, Option<http::HeaderMap>);

/// A gRPC call over HTTP/2.
async fn call(addr: SocketAddr, path: &str, content_type: &str) -> Answer {
    let (answer, broken) = call_with(addr, path, content_type, false).await;
    assert!(!broken, "the HTTP/2 stream ended in an error");
    answer
}

/// A call over HTTP/1.1 if `http1`, else HTTP/2; also whether the body ended in an error (a
/// reset stream, a connection closed before the body's end) rather than cleanly.
async fn call_with(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    http1: bool,
) -> (Answer, bool) {
    let tcp = TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let req = Request::post(format!("http://{addr}{path}"))
        .header("content-type", content_type)
        .header("te", "trailers")
        .body(Full::new(grpc_message(b"")))
        .unwrap();
    let res = if http1 {
        let (mut send, conn) = hyper::client::conn::http1::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), tcp)
            .await
            .unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    };
    let (parts, mut body) = res.into_parts();
    let (mut data, mut trailers, mut broken) = (Vec::new(), None, false);
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            broken = true;
            break;
        };
        match frame.into_data() {
            Ok(d) => data.push(d),
            Err(f) => trailers = f.into_trailers().ok(),
        }
    }
    ((parts, data, trailers), broken)
}

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("the test finishes within 30 s")
}

#[tokio::test]
async fn a_panicking_grpc_call_gets_grpc_status_internal_not_an_http_500() {
    within(async {
        let addr = start().await;
        let (head, data, trailers) = call(addr, "/test.Echo/Panic", "application/grpc").await;
        // Trailers-only: HTTP 200, the status in the head, no body.
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.headers["content-type"], "application/grpc");
        assert_eq!(head.headers["grpc-status"], "13");
        let id = head.headers["x-request-id"].to_str().unwrap();
        let message = head.headers["grpc-message"].to_str().unwrap();
        assert_eq!(message, format!("Internal Server Error (request {id})"));
        assert!(data.iter().all(Bytes::is_empty), "{data:?}");
        assert!(trailers.is_none(), "{trailers:?}");
        // `application/grpc+proto` is gRPC too; gRPC-Web is not (its status is in its body).
        let (head, _, _) = call(addr, "/test.Echo/Panic", "application/grpc+proto").await;
        assert_eq!(head.headers["grpc-status"], "13");
        let (head, data, _) = call(addr, "/test.Echo/Panic", "application/grpc-web").await;
        assert_eq!(head.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(head.headers["content-type"], "application/problem+json");
        let body: Vec<u8> = data.concat();
        assert!(!String::from_utf8_lossy(&body).contains("secret-detail"));
    })
    .await
}

#[tokio::test]
async fn a_grpc_stream_whose_body_panics_ends_with_grpc_status_in_its_trailers() {
    within(async {
        let addr = start().await;
        let (head, data, trailers) = call(addr, "/test.Echo/Stream", "application/grpc").await;
        assert_eq!(head.status, StatusCode::OK);
        assert!(!head.headers.contains_key("grpc-status"));
        assert_eq!(data.concat(), grpc_message(b"hi"));
        let trailers = trailers.expect("the call ends with trailers, not a reset stream");
        assert_eq!(trailers["grpc-status"], "13");
        let message = trailers["grpc-message"].to_str().unwrap();
        assert!(
            message.starts_with("Internal Server Error (request "),
            "{message}"
        );
        assert!(!message.contains("secret-detail"), "{message}");
    })
    .await
}

/// gRPC's content type over HTTP/1.1 (a bridge, a confused client): HTTP/1 cannot carry the
/// trailers a gRPC status needs (hyper would drop them and end the body cleanly, a truncated
/// answer that looks complete), so the answer is HTTP's: a `500`, and a body panic breaks the
/// connection.
#[tokio::test]
async fn over_http1_a_grpc_content_type_gets_the_http_answer() {
    within(async {
        let layer = PanicLayer::with_policy(unwedge::Policy::Recover);
        let addr = start_with(layer, true).await;
        let ((head, _, _), _) = call_with(addr, "/test.Echo/Panic", "application/grpc", true).await;
        assert_eq!(head.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!head.headers.contains_key("grpc-status"));
        let ((head, data, trailers), broken) =
            call_with(addr, "/test.Echo/Stream", "application/grpc", true).await;
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(data.concat(), grpc_message(b"hi"));
        assert!(trailers.is_none(), "{trailers:?}");
        assert!(broken, "the body panicked: its end must not look complete");
    })
    .await
}

/// With `expose_details(true)` the panic message joins the `grpc-message`, percent-encoded
/// (non-ASCII and `%`) and cut to its first KiB (gRPC clients refuse larger metadata); gRPC is
/// known without captured headers too.
#[tokio::test]
async fn exposed_details_are_percent_encoded_and_cut_in_the_grpc_message() {
    within(async {
        let layer = PanicLayer::with_policy(unwedge::Policy::Recover)
            .expose_details(true)
            .capture_headers(false);
        let addr = start_with(layer, false).await;
        let (head, _, _) = call(addr, "/test.Echo/Long", "application/grpc").await;
        assert_eq!(head.headers["grpc-status"], "13");
        let message = head.headers["grpc-message"].to_str().unwrap();
        let (_, detail) = message
            .split_once("): ")
            .expect("the detail follows the id");
        assert!(detail.starts_with("%C3%A9%25%C3%A9%25"), "{detail}");
        assert!(
            detail.ends_with("%E2%80%A6"),
            "cut, with an ellipsis: {detail}"
        );
        // 1 KiB of "é%" (3 bytes each), each byte encoded in 3 characters.
        assert!(detail.len() <= 3 * (1024 + 3), "{}", detail.len());
    })
    .await
}

/// A real gRPC client: Python's `grpcio` (`pip install grpcio`; `.ci/run` installs it).
#[tokio::test]
async fn a_grpc_client_sees_internal_for_a_panicking_call_and_after_a_streams_messages() {
    const CLIENT: &str = r#"
import grpc, json, sys
ch = grpc.insecure_channel(sys.argv[1], options=[("grpc.enable_http_proxy", 0)])
out = {}
try:
    ch.unary_unary("/test.Echo/Panic")(b"", timeout=10)
    out["unary"] = "ok"
except grpc.RpcError as e:
    out["unary"] = [e.code().name, e.details()]
msgs = []
try:
    for m in ch.unary_stream("/test.Echo/Stream")(b"", timeout=10):
        msgs.append(m.decode())
    out["stream"] = "ok"
except grpc.RpcError as e:
    out["stream"] = [e.code().name, e.details()]
out["messages"] = msgs
print(json.dumps(out))
"#;
    let has_grpcio = std::process::Command::new("python3")
        .args(["-c", "import grpc"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_grpcio {
        support::skip("Python's grpcio is not installed (`pip install grpcio`)");
        return;
    }
    within(async {
        let addr = start().await;
        let out = tokio::process::Command::new("python3")
            .args(["-c", CLIENT, &addr.to_string()])
            .kill_on_drop(true)
            .output()
            .await
            .expect("run python3");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "the gRPC client failed: {stderr}");
        let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(got["unary"][0], "INTERNAL", "{got}");
        let details = got["unary"][1].as_str().unwrap();
        assert!(
            details.starts_with("Internal Server Error (request "),
            "{got}"
        );
        assert_eq!(got["messages"], serde_json::json!(["hi"]), "{got}");
        assert_eq!(got["stream"][0], "INTERNAL", "{got}");
        assert!(!got.to_string().contains("secret-detail"), "{got}");
    })
    .await
}
