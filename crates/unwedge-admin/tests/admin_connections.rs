//! The admin endpoint's connections are bounded: clients that connect and send nothing,
//! trickle a request or idle on keep-alive are closed, and beyond the connection limit new
//! connections wait in the listen queue instead of holding the supervisor's descriptors.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{get, sample_view};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use unwedge_admin::{AdminHandle, AdminServer, Metrics, StatusSource};

/// Far above every wait below: a loaded machine is slow, not stuck.
const LIMIT: Duration = Duration::from_secs(30);

async fn admin(max: usize, header_timeout: Duration) -> AdminHandle {
    admin_with(max, header_timeout, |s| s).await
}

/// [`admin`], with `more` applied to the server before it starts.
async fn admin_with(
    max: usize,
    header_timeout: Duration,
    more: impl FnOnce(AdminServer) -> AdminServer,
) -> AdminHandle {
    let view = sample_view("boom");
    let server = AdminServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        StatusSource::from_fn(move || view.clone()),
        Arc::new(Metrics::new("0.1.0")),
    )
    .await
    .unwrap()
    .connection_limits(max, header_timeout);
    more(server).spawn()
}

/// Waits until the server closes `s` (end of file or reset); returns what it sent before.
async fn closed_by_server(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(LIMIT, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the admin endpoint never closed the connection");
    got
}

#[tokio::test]
async fn silent_trickling_and_idle_connections_are_closed() {
    let handle = admin(64, Duration::from_millis(300)).await;
    let addr = handle.local_addr();

    // Connects and sends nothing.
    let started = Instant::now();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    assert!(closed_by_server(&mut silent).await.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );

    // Trickles a request head, one byte every 50 ms (4 s in all): the server cuts it while it
    // trickles, at the header timeout (300 ms), not at some later per-read idle limit that a
    // byte every 50 ms would keep resetting.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let head =
        b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut cut = None;
    for b in head {
        if slow.write_all(&[*b]).await.is_err() {
            cut = Some(started.elapsed());
            break;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(50), slow.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => {
                cut = Some(started.elapsed());
                break;
            }
            Ok(Ok(n)) => panic!(
                "answered a head never completed: {}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(_) => {} // still open: go on trickling
        }
    }
    let cut =
        cut.unwrap_or_else(|| panic!("the trickled head of {} bytes was never cut", head.len()));
    assert!(
        cut < Duration::from_secs(3),
        "the trickled head was read for {cut:?}"
    );

    // Asks once on a kept-alive connection, then idles.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let answer = String::from_utf8(closed_by_server(&mut idle).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");

    // The endpoint still serves.
    assert_eq!(get(addr, "/livez").await.status, 200);
    handle.shutdown().await;
}

/// Connections to `port` the server has accepted: the open descriptors of this process whose
/// socket's local port is `port` and is not the listener. Connections still in the listen
/// queue have no descriptor yet, and the clients' ends have another local port; other tests
/// sharing the process (under `cargo test`) are not counted.
fn accepted(port: u16) -> usize {
    let ours = format!(":{port:04X} ");
    let mut inodes = std::collections::HashSet::new();
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            if format!("{local} ").ends_with(&ours) && *state != "0A" {
                inodes.insert(format!("socket:[{inode}]"));
            }
        }
    }
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| inodes.contains(target.to_string_lossy().as_ref()))
        .count()
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_in_the_queue() {
    const MAX: usize = 4;
    const SILENT: usize = 20;
    let handle = admin(MAX, Duration::from_millis(400)).await;
    let addr: SocketAddr = handle.local_addr();

    let mut silent = Vec::new();
    for _ in 0..SILENT {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    // A real request behind them: it is served once silent ones time out and free a place.
    let request = tokio::spawn(get(addr, "/livez"));
    let mut most_accepted = 0;
    while !request.is_finished() {
        most_accepted = most_accepted.max(accepted(addr.port()));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(request.await.unwrap().status, 200);
    assert!(
        (1..=MAX).contains(&most_accepted),
        "{most_accepted} connections open at once, limit {MAX}"
    );
    // Every silent one was closed by the server in its turn.
    for s in &mut silent {
        assert!(closed_by_server(s).await.is_empty());
    }
    handle.shutdown().await;
}

/// Connections that pipeline requests for the status page (16 KB each) and never read an
/// answer: hyper's writes stall once the socket buffers are full, and the header timeout no
/// longer applies. They fill every place; each is closed at its lifetime, and `/livez` is then
/// answered.
#[tokio::test]
async fn clients_that_never_read_free_their_places_at_the_connection_lifetime() {
    const MAX: usize = 4;
    const LIFETIME: Duration = Duration::from_secs(2);
    let handle = admin_with(MAX, Duration::from_secs(600), |s| {
        s.connection_lifetime(LIFETIME, 1_000_000)
    })
    .await;
    let addr = handle.local_addr();
    let pipelined = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".repeat(4000);
    let started = Instant::now();
    let mut stuck = Vec::new();
    for _ in 0..MAX {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        // A small receive window: the server's writes stall sooner.
        socket.set_recv_buffer_size(4096).unwrap();
        let mut s = socket.connect(addr).await.unwrap();
        tokio::time::timeout(LIMIT, s.write_all(pipelined.as_bytes()))
            .await
            .expect("the requests were sent")
            .unwrap();
        stuck.push(s);
    }
    let live = get(addr, "/livez").await;
    assert_eq!(live.status, 200);
    // It waited for a place: the stuck clients held them all until their lifetime was over.
    assert!(
        started.elapsed() >= LIFETIME / 2,
        "answered after {:?}: the places were not all held",
        started.elapsed()
    );
    for s in &mut stuck {
        let got = closed_by_server(s).await;
        assert!(got.starts_with(b"HTTP/1.1 200 OK"));
    }
    handle.shutdown().await;
}

/// A kept-alive connection makes at most the configured number of requests: the last answer
/// says `Connection: close` and the connection ends, pipelined requests after it unanswered.
#[tokio::test]
async fn a_connection_ends_after_its_last_allowed_request() {
    let handle = admin_with(8, Duration::from_secs(10), |s| {
        s.connection_lifetime(Duration::from_secs(600), 3)
    })
    .await;
    let mut s = TcpStream::connect(handle.local_addr()).await.unwrap();
    s.write_all(
        "GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            .repeat(5)
            .as_bytes(),
    )
    .await
    .unwrap();
    let got = String::from_utf8(closed_by_server(&mut s).await).unwrap();
    assert_eq!(got.matches("HTTP/1.1 200 OK").count(), 3, "{got}");
    let last = got.rsplit("HTTP/1.1 ").next().unwrap().to_ascii_lowercase();
    assert!(last.contains("connection: close"), "{got}");
    handle.shutdown().await;
}

/// `spawn_thread` serves on a thread of its own: it answers while the runtime that started it
/// runs nothing at all (as a supervisor's event loop busy reaping and restarting workers), and
/// `shutdown` ends it. Served with `spawn` instead, the request below is never answered.
#[test]
fn a_server_on_its_own_thread_answers_while_the_callers_runtime_is_idle() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let view = sample_view("boom");
    let handle = rt.block_on(async {
        AdminServer::bind(
            "127.0.0.1:0".parse().unwrap(),
            StatusSource::from_fn(move || view.clone()),
            Arc::new(Metrics::new("0.1.0")),
        )
        .await
        .unwrap()
        .spawn_thread()
        .unwrap()
    });
    let addr = handle.local_addr();
    // Outside `block_on`: this runtime's tasks do not run until the answer is here.
    let ask = |path: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr)?;
        s.set_read_timeout(Some(LIMIT))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n"
        )?;
        let mut got = String::new();
        s.read_to_string(&mut got)?;
        Ok::<_, std::io::Error>(got)
    };
    let livez = ask("/livez").expect("an answer from the admin thread");
    assert!(livez.starts_with("HTTP/1.1 200"), "{livez}");
    let metrics = ask("/metrics").unwrap();
    assert!(metrics.contains("unwedge_build_info"), "{metrics}");
    let threads: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .collect();
    assert!(
        threads.iter().any(|c| c.trim() == "unwedge-admin"),
        "{threads:?}"
    );

    rt.block_on(async {
        tokio::time::timeout(LIMIT, handle.shutdown())
            .await
            .expect("the admin thread ends at shutdown")
    });
    // The socket closed with it.
    assert!(ask("/livez").is_err());
}
