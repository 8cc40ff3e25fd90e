//! The status page as a browser sees it: headless Chromium loads it from a real socket and
//! dumps the DOM.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{get, have, sample_view, skip};
use unwedge_admin::{AdminServer, Metrics, StatusSource};

const CHROMIUM: &str = "/usr/bin/chromium";

/// `chromium --headless --dump-dom URL`, killed if it takes longer than a minute: the DOM,
/// and Chromium's network log (`--log-net-log`). Name resolution is disabled for every host
/// but 127.0.0.1, so neither the page nor the browser's own background requests can leave
/// the machine.
async fn dump_dom(url: &str) -> (String, serde_json::Value) {
    let profile = tempfile::tempdir().unwrap();
    let netlog = profile.path().join("netlog.json");
    let mut cmd = tokio::process::Command::new(CHROMIUM);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ])
    .arg(format!(
        "--user-data-dir={}",
        profile.path().join("profile").display()
    ))
    .arg(format!("--log-net-log={}", netlog.display()))
    .args(["--dump-dom", url])
    .stdin(std::process::Stdio::null())
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("chromium finished within a minute")
        .expect("chromium ran");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = std::fs::read_to_string(&netlog).expect("chromium wrote its network log");
    (
        String::from_utf8(out.stdout).unwrap(),
        serde_json::from_str(&log).expect("a complete network log"),
    )
}

/// Every URL request the page itself started (its initiator is the page's origin), and
/// every address Chromium opened a TCP connection to.
fn page_requests(netlog: &serde_json::Value, origin: &str) -> (Vec<String>, Vec<String>) {
    let types = netlog["constants"]["logEventTypes"].as_object().unwrap();
    let id = |name: &str| types[name].as_u64().unwrap();
    let (start_job, tcp_connect) = (id("URL_REQUEST_START_JOB"), id("TCP_CONNECT"));
    let mut requests = Vec::new();
    let mut addresses = Vec::new();
    for e in netlog["events"].as_array().unwrap() {
        let t = e["type"].as_u64().unwrap();
        let p = &e["params"];
        if t == start_job && p["initiator"].as_str() == Some(origin) {
            requests.push(p["url"].as_str().unwrap_or("?").to_owned());
        }
        if t == tcp_connect {
            for a in p["address_list"].as_array().into_iter().flatten() {
                addresses.push(a.as_str().unwrap_or("?").to_owned());
            }
        }
    }
    (requests, addresses)
}

#[tokio::test]
async fn chromium_shows_the_report_and_the_restart_chart() {
    if !have(CHROMIUM) {
        skip(&format!(
            "{CHROMIUM} not installed (apt-get install chromium)"
        ));
        return;
    }
    // The message is attacker-influenced (it may echo request data): it must show as text.
    let message = "cart index 7 out of range <img src=x onerror=alert(1)>";
    let view = sample_view(message);
    let server = AdminServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        StatusSource::from_fn(move || view.clone()),
        Arc::new(Metrics::new("0.1.0-test")),
    )
    .await
    .unwrap()
    .spawn();
    let url = format!("http://{}/", server.local_addr());

    let raw = get(server.local_addr(), "/").await;
    assert_eq!(raw.status, 200);
    assert!(
        raw.body.len() < 50 * 1024,
        "page is {} bytes",
        raw.body.len()
    );
    assert!(raw
        .header("content-security-policy")
        .unwrap()
        .contains("default-src 'none'"));

    let (dom, netlog) = dump_dom(&url).await;
    // The crashed worker's report: request, message (as text), location, backtrace.
    assert!(dom.contains("POST /cart"), "request line missing:\n{dom}");
    assert!(dom.contains("req-7f3a"));
    assert!(
        dom.contains("cart index 7 out of range &lt;img src=x onerror=alert(1)&gt;"),
        "message missing or not escaped:\n{dom}"
    );
    assert!(!dom.contains("<img"), "the message became markup:\n{dom}");
    assert!(dom.contains("src/cart.rs:42:9"));
    assert!(dom.contains("<details><summary>backtrace</summary>"));
    assert!(dom.contains("cart::add"));
    assert!(dom.contains("mutex `cart` poisoned"));
    // Redacted by the worker or not, a credential never reaches the page.
    assert!(!dom.contains("leaked-token"));
    // Workers as rows with their states.
    assert_eq!(dom.matches("<tr class=\"worker\">").count(), 2);
    assert!(
        dom.contains("<tr class=\"worker\"><td>w1</td><td>4242</td>"),
        "{dom}"
    );
    assert!(
        dom.contains("worker w1 · pid 4241"),
        "report attributed to its worker"
    );
    assert!(dom.contains("<span class=\"st ready\">ready</span>"));
    assert!(dom.contains("<span class=\"st starting\">starting</span>"));
    // The chart: one restart a minute ago is one point.
    assert!(dom.contains("1 restart in the last hour"), "{dom}");
    let svg_start = dom.find("<svg").expect("an inline svg chart");
    let svg = &dom[svg_start..dom[svg_start..].find("</svg>").unwrap() + svg_start];
    assert_eq!(svg.matches("<circle").count(), 1, "{svg}");
    assert!(svg.contains("1 restart 1 min ago"));
    // Self-refreshing, and nothing loaded from anywhere else.
    assert!(dom.contains("http-equiv=\"refresh\""));
    let origin = format!("http://{}", server.local_addr());
    let (requests, addresses) = page_requests(&netlog, &origin);
    assert!(requests.is_empty(), "the page loaded {requests:?}");
    assert!(!addresses.is_empty(), "the network log saw the page load");
    assert!(
        addresses.iter().all(|a| a.starts_with("127.0.0.1:")),
        "connections left loopback: {addresses:?}"
    );
    for (i, _) in dom.match_indices("http") {
        let rest = &dom[i..];
        assert!(
            rest.starts_with("http://www.w3.org/2000/svg") || rest.starts_with("http-equiv"),
            "external reference: {}",
            &rest[..rest.len().min(80)]
        );
    }
    server.shutdown().await;
}
