//! nginx under `unwedge run`, for real: it takes the supervisor's socket through its own
//! inheritance variable (`NGINX="3;"`, the binary-upgrade mechanism), and `--stop-signal
//! SIGQUIT` lets a reload drain it: nginx's SIGTERM is a fast stop that cuts the responses in
//! flight. Skipped when nginx is not installed (`apt-get install nginx-light`).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Size of the file served, and nginx's rate limit for it: a download of ~2 s.
const BIG: usize = 1_000_000;
const RATE: &str = "500k";

fn nginx() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// A directory nginx can run in as any user: its configuration (listening on `port`), its
/// pid and temporary files, and the files it serves (`/` and the rate-limited `/big.bin`).
fn site(port: u16) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let www = d.join("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::write(www.join("index.html"), "hello from nginx\n").unwrap();
    std::fs::write(www.join("big.bin"), vec![b'x'; BIG]).unwrap();
    // Readable by nginx's worker processes, which run as `nobody` when started by root.
    for p in [d, &www] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for f in ["index.html", "big.bin"] {
        std::fs::set_permissions(www.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let at = |name: &str| d.join(name).display().to_string();
    let conf = format!(
        "daemon off;\n\
         worker_processes 1;\n\
         pid {pid};\n\
         events {{ worker_connections 64; }}\n\
         http {{\n\
           access_log off;\n\
           client_body_temp_path {t}/body;\n\
           proxy_temp_path {t}/proxy;\n\
           fastcgi_temp_path {t}/fastcgi;\n\
           uwsgi_temp_path {t}/uwsgi;\n\
           scgi_temp_path {t}/scgi;\n\
           server {{\n\
             listen 127.0.0.1:{port};\n\
             root {www};\n\
             location /big.bin {{ limit_rate {RATE}; }}\n\
           }}\n\
         }}\n",
        pid = at("nginx.pid"),
        t = d.display(),
        www = www.display(),
    );
    std::fs::write(d.join("nginx.conf"), conf).unwrap();
    dir
}

/// `unwedge run` of nginx on `addr`'s socket, ready when its event loop waits on it
/// (`--ready accept`: nginx does not speak sd_notify).
fn supervise(nginx: &Path, site: &Path, addr: &str, stop_signal: Option<&str>) -> Sup {
    let conf = site.join("nginx.conf").display().to_string();
    let mut args = vec![
        "run",
        "--listen",
        addr,
        "--ready",
        "accept",
        "--stop-timeout",
        "20s",
    ];
    if let Some(s) = stop_signal {
        args.extend(["--stop-signal", s]);
    }
    let nginx = nginx.to_str().unwrap();
    args.extend(["--", "env", "NGINX=3;", nginx, "-c", &conf, "-e", "stderr"]);
    Sup::start(&args)
}

/// Starts downloading `/big.bin`; returns once its first bytes came (the download is in
/// flight), with the connection and what was read so far.
async fn begin_download(addr: &str) -> (tokio::net::TcpStream, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut got = vec![0; 64 * 1024];
    let n = s.read(&mut got).await.unwrap();
    assert!(n > 0, "no answer");
    got.truncate(n);
    (s, got)
}

/// Reads the rest of the answer (until nginx closes); the body's length.
async fn finish_download(mut s: tokio::net::TcpStream, mut got: Vec<u8>) -> usize {
    let _ = tokio::time::timeout(LONG, s.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got[..got.len().min(1024)]).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let head = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    got.len() - head
}

/// Reloads `sup` (SIGHUP) while a download is in flight; the downloaded body's length.
async fn download_across_a_reload(sup: &Sup, addr: &str) -> usize {
    let (s, got) = begin_download(addr).await;
    let mark = sup.mark();
    sup.signal(Signal::SIGHUP);
    sup.wait_line(mark, &["generation 2 ready; stopping 1 old worker"])
        .await;
    finish_download(s, got).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_takes_the_socket_and_drains_across_a_reload_with_stop_signal_sigquit() {
    let Some(nginx) = nginx() else {
        skip("nginx not installed (apt-get install nginx-light)");
        return;
    };
    tokio::time::timeout(Duration::from_secs(120), async {
        // nginx matches the inherited socket to its `listen` by address: both the same.
        let addr = free_loopback_addr();
        let dir = site(addr.port());
        let addr = addr.to_string();

        let mut sup = supervise(&nginx, dir.path(), &addr, Some("SIGQUIT"));
        sup.wait_line(0, &["using inherited sockets from"]).await;
        // Ready once its worker process waits on the socket.
        let ready = sup
            .wait_line(
                0,
                &["ready in", "it waits for connections on the passed socket"],
            )
            .await;
        let old = pid_in(&ready).unwrap();
        let (status, body) = http(addr.parse().unwrap(), "GET", "/").await.unwrap();
        assert_eq!((status, body.as_str()), (200, "hello from nginx\n"));
        // The old nginx gets SIGQUIT and finishes the download before it exits.
        assert_eq!(download_across_a_reload(&sup, &addr).await, BIG);
        sup.wait_line(0, &[&format!("w1 pid {old} exit status 0")])
            .await;
        sup.signal(Signal::SIGTERM);
        assert_eq!(sup.wait_exit(LONG).await.code(), Some(0), "{}", sup.log());

        // With the default SIGTERM, the same reload cuts the download: why the flag exists.
        let sup = supervise(&nginx, dir.path(), &addr, None);
        sup.wait_ready(0, 1).await;
        let cut = download_across_a_reload(&sup, &addr).await;
        assert!(
            cut < BIG,
            "nginx's SIGTERM did not cut the download ({cut} bytes)"
        );
    })
    .await
    .expect("test timed out");
}

/// A directory for nginx as a reverse proxy on `port` to `upstream`, with nginx's defaults
/// for it: `proxy_http_version 1.0`, buffering on.
fn proxy_site(port: u16, upstream: std::net::SocketAddr) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = format!(
        "daemon off;\n\
         worker_processes 1;\n\
         pid {d}/nginx.pid;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n\
           access_log off;\n\
           client_body_temp_path {d}/body;\n\
           proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n\
           uwsgi_temp_path {d}/uwsgi;\n\
           scgi_temp_path {d}/scgi;\n\
           server {{\n\
             listen 127.0.0.1:{port};\n\
             location / {{ proxy_pass http://{upstream}; }}\n\
           }}\n\
         }}\n",
        d = d.display(),
    );
    std::fs::write(d.join("nginx.conf"), conf).unwrap();
    dir
}

/// `GET path` through `addr` with HTTP/1.1: the whole answer, as read until the close.
async fn get_raw(addr: &str, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    // A reset ends it as well as a close: what came before counts.
    let _ = tokio::time::timeout(LONG, s.read_to_end(&mut got))
        .await
        .expect("an answer within the time limit");
    String::from_utf8_lossy(&got).into_owned()
}

/// nginx in front, as configured by default (HTTP/1.0 to its upstream, so a streamed body is
/// delimited by the upstream's close): an `unwedge::serve` worker's stream that panics half-way
/// reaches the client as a broken answer (no last chunk), not as a whole one. nginx used to
/// read the worker's plain close as the end of the body and end its own with the last chunk:
/// a truncated export, looking complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_panics_behind_nginx_reaches_the_client_broken() {
    let Some(nginx) = nginx() else {
        skip("nginx not installed (apt-get install nginx-light)");
        return;
    };
    tokio::time::timeout(Duration::from_secs(120), async {
        let app = Sup::demo(&["--admin", "off"]);
        let upstream = app.addr().await;
        app.wait_ready(0, 1).await;
        let front = free_loopback_addr();
        let dir = proxy_site(front.port(), upstream);
        let addr = front.to_string();
        let proxy = supervise(&nginx, dir.path(), &addr, Some("SIGQUIT"));
        proxy.wait_ready(0, 1).await;

        let whole = get_raw(&addr, "/export?whole=1").await;
        assert!(whole.starts_with("HTTP/1.1 200"), "{whole}");
        assert!(whole.contains("row 3\n"), "{whole}");
        assert!(
            whole.ends_with("\r\n0\r\n\r\n"),
            "a whole export must end: {whole:?}"
        );

        let broken = get_raw(&addr, "/export").await;
        assert!(broken.starts_with("HTTP/1.1 200"), "{broken}");
        assert!(!broken.contains("row 3"), "{broken}");
        assert!(
            !broken.ends_with("0\r\n\r\n"),
            "nginx ended a truncated export as a whole one: {broken:?}\nworker:\n{}",
            app.log()
        );
        // The worker recovered (no state touched) and serves on.
        let (status, _) = http(upstream, "GET", "/").await.unwrap();
        assert_eq!(status, 200);
    })
    .await
    .expect("test timed out");
}
