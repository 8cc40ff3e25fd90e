//! gunicorn, a preforking server (a master and its worker processes), as one `unwedge run`
//! worker: it takes the shared socket from `LISTEN_FDS` and says `READY=1` itself; its forked
//! processes count for `--max-memory`, and those a killed master leaves behind are stopped.

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The gunicorn worker process that answered `GET path` ("ok <pid>").
async fn answering_pid(addr: std::net::SocketAddr, path: &str) -> i32 {
    let (status, body) = get(addr, path).await;
    assert_eq!(status, 200, "{body}");
    body.trim()
        .strip_prefix("ok ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("not an answer of the app: {body:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gunicorn_is_supervised_with_the_processes_it_forks() {
    if !python_has("gunicorn") {
        skip("python3 cannot import gunicorn (pip install gunicorn)");
        return;
    }
    tokio::time::timeout(Duration::from_secs(120), async {
        let fixtures = fixture("");
        let sup = Sup::run(
            &[
                "--admin",
                "off",
                "--ready",
                "notify",
                "--max-memory",
                "100M",
            ],
            &[
                "python3",
                "-m",
                "gunicorn",
                "--workers",
                "2",
                "--chdir",
                fixtures.to_str().unwrap(),
                "wsgi_app:app",
            ],
        );
        let addr = sup.addr().await;
        let master = sup.wait_ready(0, 1).await[0];
        // Served by one of the master's forked workers, from the shared socket.
        let answered = answering_pid(addr, "/").await;
        assert_ne!(answered, master);
        let forked = unwedge_supervisor::procfs::stat(answered).unwrap();
        assert_eq!(
            forked.pgid, master,
            "a worker in the master's process group"
        );

        // One forked worker grows past the limit: the master's own RSS stays small, the tree
        // does not. Replaced gracefully.
        let m = sup.mark();
        answering_pid(addr, "/grow?mb=150").await;
        sup.wait_line(
            m,
            &[&format!("w1 pid {master} uses "), "over --max-memory 100M"],
        )
        .await;
        let second = sup.wait_ready(m, 1).await[0];
        sup.wait_line(m, &[&format!("pid {master}: replaced by pid {second}")])
            .await;
        assert!(gone_within(master, LONG).await, "{}", sup.log());
        assert!(gone_within(answered, LONG).await, "{}", sup.log());

        // The master killed at once (the OOM killer's way): its forked workers would serve
        // on with the socket; the supervisor stops them and starts a new master.
        let m = sup.mark();
        let worker = answering_pid(addr, "/").await;
        kill(Pid::from_raw(second), Signal::SIGKILL).unwrap();
        sup.wait_line(
            m,
            &[
                &format!("w1 pid {second} exited and left "),
                &worker.to_string(),
            ],
        )
        .await;
        assert!(gone_within(worker, LONG).await, "{}", sup.log());
        let third = sup.wait_ready(m, 1).await[0];
        let answered = answering_pid(addr, "/").await;
        assert_eq!(
            unwedge_supervisor::procfs::stat(answered).unwrap().pgid,
            third
        );
    })
    .await
    .expect("test timed out");
}
