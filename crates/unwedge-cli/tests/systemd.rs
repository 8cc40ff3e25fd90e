//! systemd integration without systemd: the test plays systemd's part, with a notify socket
//! of its own and a listening socket passed by socket activation (LISTEN_FDS/LISTEN_PID).

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::*;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::signal::Signal;

fn recv_until(sock: &UnixDatagram, needle: &str, got: &mut Vec<String>) -> String {
    let deadline = Instant::now() + LONG;
    let mut buf = vec![0u8; 4096];
    loop {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} from the supervisor; got {got:?}"
        );
        if let Ok(n) = sock.recv(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            got.push(m.clone());
            if m.contains(needle) {
                return m;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifies_systemd_and_serves_its_socket() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let notify_path = dir.path().join("notify");
        let sd = UnixDatagram::bind(&notify_path).unwrap();
        sd.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();

        // "systemd" binds the socket and activates the service with it: the exec shim plays
        // the part of systemd's fork+exec, setting LISTEN_FDS=1 and LISTEN_PID to the pid of
        // `unwedge run`.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        fcntl(&listener, FcntlArg::F_SETFD(FdFlag::empty())).unwrap();
        let fd = listener.as_raw_fd().to_string();
        let sup = Sup::start_env(
            &[
                "exec-shim",
                "--",
                BIN,
                "run",
                "--workers",
                "2",
                "--",
                BIN,
                "demo-service",
            ],
            &[
                ("UNWEDGE_SHIM_FDS", fd.as_str()),
                ("LISTEN_FDNAMES", "web"),
                ("NOTIFY_SOCKET", notify_path.to_str().unwrap()),
                ("WATCHDOG_USEC", "200000"),
            ],
        );
        drop(listener);
        let mut got = Vec::new();
        let ready = recv_until(&sd, "READY=1", &mut got);
        assert!(ready.contains("STATUS=2/2 workers ready"), "{ready}");
        // The workers serve the socket systemd passed (the supervisor bound nothing).
        assert_eq!(get(addr, "/").await.0, 200);
        let start = sup.wait_line(0, &["starting 2 worker(s)"]).await;
        assert!(start.contains(&format!("(sockets: {addr})")), "{start}");

        // Heartbeats to systemd while workers are healthy (every half of WATCHDOG_USEC).
        recv_until(&sd, "WATCHDOG=1", &mut got);
        recv_until(&sd, "WATCHDOG=1", &mut got);

        sup.signal(Signal::SIGHUP);
        let reloading = recv_until(&sd, "RELOADING=1", &mut got);
        assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
        recv_until(&sd, "READY=1", &mut got);
        assert_eq!(get(addr, "/").await.0, 200);

        sup.signal(Signal::SIGTERM);
        recv_until(&sd, "STOPPING=1", &mut got);
        // Workers never see systemd's variables.
        assert!(!sup.log().contains(notify_path.to_str().unwrap()));
    })
    .await
    .expect("test timed out");
}
