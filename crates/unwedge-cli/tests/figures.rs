//! Figures for docs/supervisor.md ("Figures"). Ignored by default (they take a minute and
//! measure speed, which tests never assert). Run by hand on a release build:
//!
//! ```text
//! cargo build --release -p unwedge-cli -p example-hello
//! cargo nextest run --release -p unwedge-cli --test figures --run-ignored only --no-capture
//! ```

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use unwedge_load::{LoadConfig, RequestSpec};

fn hello() -> PathBuf {
    let p = PathBuf::from(BIN).with_file_name("example-hello");
    assert!(
        p.is_file(),
        "build it first: cargo build --release -p example-hello ({})",
        p.display()
    );
    p
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn load(addr: std::net::SocketAddr) -> unwedge_load::Running {
    load_with(addr, false)
}

fn load_with(addr: std::net::SocketAddr, keep_alive: bool) -> unwedge_load::Running {
    let cfg = LoadConfig::from_addr(addr)
        .unwrap()
        .request(RequestSpec::get("/"))
        .concurrency(8)
        .keep_alive(keep_alive)
        .duration(Duration::from_secs(300))
        .timeout(Duration::from_secs(5));
    unwedge_load::start(cfg).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "figures: run by hand (see the file header)"]
async fn figures() {
    println!("\n## crash-to-ready (kill -9 of examples/hello, 1 worker, --restart-delay 10ms, --stable-after 0s)");
    let h = hello();
    let sup = Sup::start(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--stable-after",
        "0s",
        "--max-restarts",
        "1000",
        "--",
        h.to_str().unwrap(),
    ]);
    let addr = sup.addr().await;
    let mut pid = sup.wait_ready(0, 1).await[0];
    let (mut c2r, mut startup, mut client) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..100 {
        let m = sup.mark();
        let t = Instant::now();
        kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
        // The client's view: a request sent once the worker is reaped waits in the backlog.
        while proc_state(pid).is_some() {
            tokio::task::yield_now().await;
        }
        let (status, _) = get(addr, "/").await;
        assert_eq!(status, 200);
        client.push(t.elapsed().as_secs_f64() * 1000.0);
        let ready = sup.wait_line(m, &["after the crash"]).await;
        c2r.push(ms_before(&ready, " after the crash"));
        startup.push(ms_after(&ready, "ready in "));
        pid = pid_in(&ready).unwrap();
    }
    println!("| measure | median | p99 |\n| --- | --- | --- |");
    for (name, v) in [
        ("crash-to-ready (supervisor: reaped → READY=1)", &mut c2r),
        ("of which worker start (spawn → READY=1)", &mut startup),
        ("client: kill → first answer", &mut client),
    ] {
        println!(
            "| {name} | {:.1} ms | {:.1} ms |",
            pct(v, 0.5),
            pct(v, 0.99)
        );
    }
    drop(sup);

    println!("\n## crash-to-ready while the admin endpoint is scraped flat out (kill -9 of one of 4 examples/hello workers; GET /metrics on 8 keep-alive connections meanwhile)");
    let sup = Sup::start(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--workers",
        "4",
        "--stable-after",
        "0s",
        "--max-restarts",
        "1000",
        "--",
        h.to_str().unwrap(),
    ]);
    let admin = admin_addr(&sup).await;
    sup.wait_ready(0, 4).await;
    let idle = crash_to_ready(&sup, 30).await;
    let scraper = unwedge_load::start(
        LoadConfig::from_addr(admin)
            .unwrap()
            .request(RequestSpec::get("/metrics"))
            .concurrency(8)
            .keep_alive(true)
            .duration(Duration::from_secs(300))
            .timeout(Duration::from_secs(5)),
    )
    .unwrap();
    let scraped = crash_to_ready(&sup, 30).await;
    scraper.stop();
    let r = scraper.finish().await;
    println!("| admin endpoint | crash-to-ready median | p99 | max | scrapes answered |\n| --- | --- | --- | --- | --- |");
    for (name, mut v, scrapes) in [
        ("idle", idle, String::from("-")),
        (
            "scraped flat out",
            scraped,
            format!("{} ({:.0}/s)", r.ok, r.ok as f64 / r.elapsed.as_secs_f64()),
        ),
    ] {
        println!(
            "| {name} | {:.1} ms | {:.1} ms | {:.1} ms | {scrapes} |",
            pct(&mut v, 0.5),
            pct(&mut v, 0.99),
            pct(&mut v, 1.0)
        );
    }
    drop(sup);

    println!("\n## requests failed per crash (demo /poison every 250 ms, GET / load: 8 concurrent, fresh connections)");
    println!("| setup | crashes | requests | failed (refused / reset / other) | failed per crash |\n| --- | --- | --- | --- | --- |");
    for workers in ["1", "2"] {
        let sup = Sup::start(&[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            workers,
            "--stable-after",
            "0s",
            "--max-restarts",
            "1000",
            "--",
            BIN,
            "demo-service",
        ]);
        let addr = sup.addr().await;
        sup.wait_ready(0, workers.parse().unwrap()).await;
        let (crashes, r) = poison_run(addr, 20, || async {}).await;
        println!(
            "| unwedge run --workers {workers} | {crashes} | {} | {} ({} / {} / {}) | {:.2} |",
            r.total,
            r.unexpected_failures(),
            r.refused,
            r.reset,
            r.unexpected_failures() - r.refused - r.reset,
            r.unexpected_failures() as f64 / crashes as f64
        );
        drop(sup);
    }
    {
        let sup = Sup::start(&[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--stable-after",
            "0s",
            "--max-restarts",
            "1000",
            "--",
            BIN,
            "demo-service",
        ]);
        let addr = sup.addr().await;
        sup.wait_ready(0, 2).await;
        let l = load_with(addr, true);
        let mut crashes = 0;
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(250)).await; // load runs meanwhile
            if let Ok((500, _)) = http(addr, "POST", "/poison").await {
                crashes += 1;
            }
        }
        l.stop();
        let r = l.finish().await;
        println!(
            "| unwedge run --workers 2, keep-alive clients | {crashes} | {} | {} ({} / {} / {}) | {:.2} |",
            r.total, r.unexpected_failures(), r.refused, r.reset, r.unexpected_failures() - r.refused - r.reset,
            r.unexpected_failures() as f64 / crashes as f64
        );
        drop(sup);
    }
    for workers in ["1", "2"] {
        // kill -9: requests in flight in the killed worker are lost; nothing is refused.
        let sup = Sup::start(&[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            workers,
            "--stable-after",
            "0s",
            "--max-restarts",
            "1000",
            "--",
            BIN,
            "demo-service",
        ]);
        let addr = sup.addr().await;
        sup.wait_ready(0, workers.parse().unwrap()).await;
        let l = load(addr);
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(250)).await; // load runs meanwhile
            let m = sup.mark();
            let victim = *sup.ready_pids(0).last().unwrap();
            kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
            sup.wait_line(m, &["after the crash"]).await;
        }
        l.stop();
        let r = l.finish().await;
        println!(
            "| kill -9, unwedge run --workers {workers} | 20 | {} | {} ({} / {} / {}) | {:.2} |",
            r.total,
            r.unexpected_failures(),
            r.refused,
            r.reset,
            r.unexpected_failures() - r.refused - r.reset,
            r.unexpected_failures() as f64 / 20.0
        );
        drop(sup);
    }
    {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let script = format!("while :; do UNWEDGE_LISTEN=127.0.0.1:{port} {BIN} demo-service 2>/dev/null; sleep 0.1; done");
        let mut loop_ = tokio::process::Command::new("sh")
            .args(["-c", &script])
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        let t = Instant::now();
        while http(addr, "GET", "/").await.is_err() {
            assert!(t.elapsed() < LONG);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (crashes, r) = poison_run(addr, 20, || async move {
            // Wait until the loop has restarted the server before the next poison.
            let t = Instant::now();
            while http(addr, "GET", "/").await.is_err() && t.elapsed() < LONG {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        println!(
            "| restart loop, 100 ms (systemd's default) | {crashes} | {} | {} ({} / {} / {}) | {:.2} |",
            r.total, r.unexpected_failures(), r.refused, r.reset, r.unexpected_failures() - r.refused - r.reset,
            r.unexpected_failures() as f64 / crashes as f64
        );
        let _ =
            nix::sys::signal::killpg(Pid::from_raw(loop_.id().unwrap() as i32), Signal::SIGKILL);
        let _ = loop_.wait().await;
    }

    println!("\n## hang detection (SIGSTOP a demo worker, --watchdog 1s: heartbeats every 500 ms)");
    let sup = Sup::start(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--watchdog",
        "1s",
        "--dump-grace",
        "200ms",
        "--stable-after",
        "0s",
        "--max-restarts",
        "1000",
        "--",
        BIN,
        "demo-service",
    ]);
    let mut pid = sup.wait_ready(0, 1).await[0];
    let (mut det, mut rep) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let m = sup.mark();
        sup.wait_line(0, &[&format!("pid {pid} sends heartbeats")])
            .await;
        let t = Instant::now();
        kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
        sup.wait_line(m, &["is hung (watchdog"]).await;
        det.push(t.elapsed().as_secs_f64() * 1000.0);
        let ready = sup.wait_line(m, &["after the crash"]).await;
        rep.push(t.elapsed().as_secs_f64() * 1000.0);
        pid = pid_in(&ready).unwrap();
    }
    println!("| measure | median | max |\n| --- | --- | --- |");
    println!(
        "| SIGSTOP → hung | {:.0} ms | {:.0} ms |",
        pct(&mut det, 0.5),
        pct(&mut det, 1.0)
    );
    println!(
        "| SIGSTOP → replacement ready | {:.0} ms | {:.0} ms |",
        pct(&mut rep, 0.5),
        pct(&mut rep, 1.0)
    );
    drop(sup);

    println!("\n## supervisor footprint (2 demo workers, --watchdog 1s --probe / --probe-interval 1s, 10 s idle)");
    let sup = Sup::start(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--watchdog",
        "1s",
        "--probe",
        "/",
        "--probe-interval",
        "1s",
        "--",
        BIN,
        "demo-service",
    ]);
    sup.wait_ready(0, 2).await;
    let c0 = cpu_time(sup.pid).unwrap();
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await; // measuring idle time: nothing to await
    let cpu = cpu_time(sup.pid).unwrap() - c0;
    let status = std::fs::read_to_string(format!("/proc/{}/status", sup.pid)).unwrap();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    println!("| RSS | idle CPU |\n| --- | --- |");
    println!(
        "| {:.1} MB | {:.2} % ({} ms in {:.0} s) |",
        rss.parse::<f64>().unwrap() / 1024.0,
        cpu.as_secs_f64() * 100.0 / t.elapsed().as_secs_f64(),
        cpu.as_millis(),
        t.elapsed().as_secs_f64()
    );
}

/// `n` times: kill -9 one ready worker, wait for its replacement; the supervisor's
/// reaped → READY=1 times (ms).
async fn crash_to_ready(sup: &Sup, n: usize) -> Vec<f64> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let m = sup.mark();
        let victim = *sup.ready_pids(0).last().unwrap();
        kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
        let ready = sup.wait_line(m, &["after the crash"]).await;
        v.push(ms_before(&ready, " after the crash"));
    }
    v
}

/// Load on GET / while POST /poison crashes a worker `n` times; (crashes, report).
async fn poison_run<F, Fut>(
    addr: std::net::SocketAddr,
    n: u32,
    between: F,
) -> (u32, unwedge_load::LoadReport)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let l = load(addr);
    let mut crashes = 0;
    for _ in 0..n {
        tokio::time::sleep(Duration::from_millis(250)).await; // load runs meanwhile
        if let Ok((500, _)) = http(addr, "POST", "/poison").await {
            crashes += 1;
        }
        between().await;
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    l.stop();
    (crashes, l.finish().await)
}
