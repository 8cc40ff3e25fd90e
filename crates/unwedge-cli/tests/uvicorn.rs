//! uvicorn (asyncio, no sd_notify) as `unwedge run` workers: it takes the shared socket with
//! `--fd 3`, `--ready accept` finds each worker ready once its event loop waits on the socket,
//! and a reload replaces them. Skipped when uvicorn is not installed (`pip install uvicorn`).

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uvicorn_takes_the_socket_and_is_found_ready_by_its_event_loop() {
    if !python_has("uvicorn") {
        skip("python3 cannot import uvicorn (pip install uvicorn)");
        return;
    }
    tokio::time::timeout(Duration::from_secs(120), async {
        let fixtures = fixture("");
        let fixtures = fixtures.to_str().unwrap();
        let mut sup = Sup::run(
            &["--workers", "2", "--ready", "accept"],
            &[
                "python3",
                "-m",
                "uvicorn",
                "--fd",
                "3",
                "--app-dir",
                fixtures,
                "asgi_app:app",
            ],
        );
        let addr = sup.addr().await;
        let waits = "it waits for connections on the passed socket";
        let (mut first, mut from) = (Vec::new(), 0);
        for _ in 0..2 {
            let (line, at) = sup.wait_line_idx(from, &["ready in", waits]).await;
            first.push(pid_in(&line).unwrap());
            from = at + 1;
        }
        assert_ne!(first[0], first[1]);
        let (status, body) = get(addr, "/").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with("ok "), "{body}");

        // A reload: the new generation is found ready the same way, the old one drains.
        let mark = sup.mark();
        sup.signal(Signal::SIGHUP);
        sup.wait_line(mark, &["generation 2 ready; stopping 2 old worker"])
            .await;
        // Each old one drains (uvicorn then dies of the SIGTERM it got: an ordinary stop).
        for pid in &first {
            sup.wait_line(mark, &[&format!("Finished server process [{pid}]")])
                .await;
            assert!(gone_within(*pid, LONG).await, "{}", sup.log());
        }
        assert_eq!(get(addr, "/").await.0, 200);
        sup.signal(Signal::SIGTERM);
        assert_eq!(sup.wait_exit(LONG).await.code(), Some(0), "{}", sup.log());
    })
    .await
    .expect("test timed out");
}
