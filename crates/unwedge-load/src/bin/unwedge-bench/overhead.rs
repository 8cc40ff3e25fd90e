//! `unwedge-bench overhead`: the request overhead of unwedge::serve next to bare axum::serve
//! and axum::serve + CatchPanicLayer, measured in one run, alternating, with child-process
//! servers.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use tokio::process::{Child, Command};
use unwedge_load::{fmt_us, LoadConfig};

use crate::servers::Kind;

#[derive(Debug, Args)]
pub(crate) struct OverheadArgs {
    /// Rounds; each round measures every server once, in a rotating order.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Measured load per server per round.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured load before each measurement.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Concurrent keep-alive connections.
    #[arg(long, short = 'c', default_value_t = 32)]
    concurrency: usize,
    /// Tokio worker threads of each server process.
    #[arg(long, default_value_t = 1)]
    server_threads: usize,
    /// Threads of the load client (the in-repo client's runtime, and wrk's -t).
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// A new connection per request instead of keep-alive (in-repo client only).
    #[arg(long)]
    fresh_connections: bool,
    /// Skip the wrk table even when wrk is installed.
    #[arg(long)]
    no_wrk: bool,
    /// The `unwedge` supervisor binary for the "under unwedge run" row (default: `unwedge`
    /// next to this binary, when it exists).
    #[arg(long, value_name = "PATH")]
    supervisor: Option<std::path::PathBuf>,
    /// Skip the "under unwedge run" row.
    #[arg(long, conflicts_with = "supervisor")]
    no_supervisor: bool,
    /// Print the measurements as JSON after the tables.
    #[arg(long)]
    json: bool,
    /// Leave placement to the scheduler instead of pinning the servers to one CPU and the
    /// client (this process and wrk) to another.
    #[arg(long)]
    no_pin: bool,
}

/// One measurement of one server.
#[derive(Debug, Clone, Serialize)]
struct Sample {
    server: &'static str,
    tool: &'static str,
    round: usize,
    requests_per_sec: f64,
    p50_us: u64,
    p99_us: u64,
    /// Server CPU time (user + system) per request, microseconds.
    server_cpu_us_per_request: Option<f64>,
    /// This process's CPU time per request (in-repo client only; `None` for wrk).
    client_cpu_us_per_request: Option<f64>,
    unexpected_failures: u64,
}

pub(crate) fn main(args: OverheadArgs) -> ExitCode {
    if args.rounds == 0 || args.concurrency == 0 || args.duration.is_zero() {
        return crate::usage_error("--rounds, --concurrency and --duration must be positive");
    }
    let rt = crate::runtime(Some(args.client_threads));
    match rt.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &OverheadArgs) -> Result<(), String> {
    let supervisor = if args.no_supervisor {
        None
    } else if let Some(path) = &args.supervisor {
        if !path.exists() {
            return Err(format!("--supervisor {}: no such file", path.display()));
        }
        Some(path.clone())
    } else {
        let sibling = std::env::current_exe()
            .ok()
            .and_then(|p| Some(p.parent()?.join("unwedge")));
        match sibling.filter(|p| p.exists()) {
            Some(p) => Some(p),
            None => {
                eprintln!(
                    "note: no `unwedge` binary next to this one (cargo build --release -p unwedge-cli): \
                     skipping the \"under unwedge run\" row"
                );
                None
            }
        }
    };
    let placement = if args.no_pin {
        None
    } else {
        let p = crate::pin::placement();
        if p.is_none() {
            eprintln!("note: fewer than two CPUs allowed: not pinning");
        }
        p
    };
    // The client first, before any server exists: its runtime's threads, and wrk, which
    // inherits from them, run on the client CPU.
    if let Some(p) = placement {
        crate::pin::pin_tree(std::process::id(), p.client)?;
    }
    let mut servers = Vec::new();
    for kind in Kind::ALL {
        if kind == Kind::Supervised && supervisor.is_none() {
            continue;
        }
        let server = ServerProcess::spawn(kind, args.server_threads, supervisor.as_deref()).await?;
        if let (Some(p), Some(pid)) = (placement, server.pid()) {
            crate::pin::pin_tree(pid, p.server)?;
        }
        servers.push(server);
    }
    let wrk = find_wrk().filter(|_| !args.no_wrk);
    let mut samples = Vec::new();
    let mut tools = vec!["unwedge-load"];
    if wrk.is_some() {
        tools.push("wrk");
    }
    for round in 0..args.rounds {
        for tool in &tools {
            for i in 0..servers.len() {
                // Rotate the order so no server always runs first or last.
                let n = servers.len();
                let server = &mut servers[(i + round) % n];
                server.check_alive()?;
                let sample = match *tool {
                    "wrk" => {
                        measure_wrk(wrk.as_deref().expect("wrk found"), server, args, round).await?
                    }
                    _ => measure_load(server, args, round).await?,
                };
                eprintln!(
                    "round {}/{} {:<5} {:<30} {:>10.0} req/s  p99 {}",
                    round + 1,
                    args.rounds,
                    sample.tool,
                    sample.server,
                    sample.requests_per_sec,
                    fmt_us(sample.p99_us)
                );
                samples.push(sample);
            }
        }
    }
    for server in &mut servers {
        server.stop().await;
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", markdown(args, placement, &tools, &samples));
    if args.json {
        let json = serde_json::to_string_pretty(&samples).expect("samples serialize");
        let _ = writeln!(out, "{json}");
    }
    Ok(())
}

struct ServerProcess {
    kind: Kind,
    addr: SocketAddr,
    child: Child,
}

impl ServerProcess {
    /// Re-executes this binary with the hidden serve subcommand (under the supervisor for
    /// [`Kind::Supervised`]) and waits until it answers `GET /`.
    async fn spawn(kind: Kind, threads: usize, supervisor: Option<&Path>) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
        let addr = free_port()?;
        let mut cmd = match (kind, supervisor) {
            (Kind::Supervised, Some(sup)) => {
                let mut cmd = Command::new(sup);
                cmd.args(["run", "--listen", &addr.to_string(), "--workers", "1", "--"])
                    .arg(exe);
                cmd
            }
            _ => Command::new(exe),
        };
        cmd.arg(kind.subcommand())
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--threads")
            .arg(threads.to_string())
            .args((kind == Kind::BareNodelay).then_some("--nodelay"))
            // unwedge::serve reads these; none must leak in from the caller's environment.
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("UNWEDGE_LISTEN")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", kind.label()))?;
        // Ready = one `GET /` answered 200 (a bound socket alone may not have a worker yet).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("{} exited before serving: {status}", kind.label()));
            }
            let probe = LoadConfig::from_addr(addr)
                .map_err(|e| e.to_string())?
                .count(1)
                .timeout(Duration::from_secs(1));
            if unwedge_load::run(probe).await.is_ok_and(|r| r.ok == 1) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not serve on {addr} within 20 s",
                    kind.label()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(ServerProcess { kind, addr, child })
    }

    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("{} exited: {status}", self.kind.label())),
            Err(e) => Err(format!("{}: {e}", self.kind.label())),
        }
    }

    /// CPU time so far of the server process and its descendants (the supervisor's worker).
    fn cpu(&self) -> Option<Duration> {
        let root = self.pid()?;
        let mut total = Duration::ZERO;
        for pid in process_tree(root) {
            total += cpu_time(pid)?;
        }
        Some(total)
    }

    /// SIGTERM (so a supervisor stops its worker too), then SIGKILL after 5 s.
    async fn stop(&mut self) {
        if let Some(pid) = self.pid().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
            if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
                .await
                .is_ok()
            {
                return;
            }
        }
        let _ = self.child.kill().await;
    }
}

/// The entries of `dir` named by a number (processes in `/proc`, threads in
/// `/proc/PID/task`), with their paths; none when `dir` cannot be read (a process gone).
pub(crate) fn numbered_entries(dir: impl AsRef<std::path::Path>) -> Vec<(u32, std::path::PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((n, e.path()))
        })
        .collect()
}

/// `root` and every process descending from it, from the parent pids in `/proc/*/stat`.
pub(crate) fn process_tree(root: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    for (pid, path) in numbered_entries("/proc") {
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat[i + 2..].split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parents.push((pid, ppid));
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    tree
}

/// A loopback port that was free a moment ago.
fn free_port() -> Result<SocketAddr, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot bind: {e}"))?;
    l.local_addr().map_err(|e| e.to_string())
}

/// CPU time of a process: the sum over its threads of `/proc/PID/task/TID/schedstat`'s first
/// field (ns on CPU), falling back to utime + stime of `/proc/PID/stat` (1/100 s ticks).
fn cpu_time(pid: u32) -> Option<Duration> {
    let from_schedstat = || -> Option<Duration> {
        let mut ns: u64 = 0;
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
            let text = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
            ns += text.split_whitespace().next()?.parse::<u64>().ok()?;
        }
        Some(Duration::from_nanos(ns))
    };
    from_schedstat().or_else(|| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name, which is in parentheses and may contain spaces.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(Duration::from_millis(ticks * 10))
    })
}

fn cpu_per_request(
    before: Option<Duration>,
    after: Option<Duration>,
    requests: u64,
) -> Option<f64> {
    let used = after?.checked_sub(before?)?;
    (requests > 0).then(|| used.as_secs_f64() * 1e6 / requests as f64)
}

async fn measure_load(
    server: &ServerProcess,
    args: &OverheadArgs,
    round: usize,
) -> Result<Sample, String> {
    let config = |d: Duration| {
        LoadConfig::from_addr(server.addr)
            .map(|c| {
                c.concurrency(args.concurrency)
                    .keep_alive(!args.fresh_connections)
                    .timeout(Duration::from_secs(10))
                    .duration(d)
            })
            .map_err(|e| e.to_string())
    };
    if !args.warmup.is_zero() {
        unwedge_load::run(config(args.warmup)?)
            .await
            .map_err(|e| e.to_string())?;
    }
    let before = server.cpu();
    let client_before = cpu_time(std::process::id());
    let report = unwedge_load::run(config(args.duration)?)
        .await
        .map_err(|e| e.to_string())?;
    let after = server.cpu();
    let client_after = cpu_time(std::process::id());
    Ok(Sample {
        server: server.kind.label(),
        tool: "unwedge-load",
        round,
        requests_per_sec: report.requests_per_sec,
        p50_us: report.latency.p50_us,
        p99_us: report.latency.p99_us,
        server_cpu_us_per_request: cpu_per_request(before, after, report.total),
        client_cpu_us_per_request: cpu_per_request(client_before, client_after, report.total),
        unexpected_failures: report.unexpected_failures(),
    })
}

fn find_wrk() -> Option<String> {
    ["/usr/bin/wrk", "/usr/local/bin/wrk"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .map(str::to_owned)
}

async fn measure_wrk(
    wrk: &str,
    server: &ServerProcess,
    args: &OverheadArgs,
    round: usize,
) -> Result<Sample, String> {
    let url = format!("http://{}/", server.addr);
    let wrk_run = |d: Duration| {
        let mut cmd = Command::new(wrk);
        cmd.arg(format!("-t{}", args.client_threads))
            .arg(format!("-c{}", args.concurrency.max(args.client_threads)))
            // wrk takes whole seconds.
            .arg(format!("-d{}s", d.as_secs_f64().round().max(1.0)))
            .arg("--latency")
            .arg(&url)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    };
    if !args.warmup.is_zero() {
        wrk_run(args.warmup)
            .output()
            .await
            .map_err(|e| format!("cannot run wrk: {e}"))?;
    }
    let before = server.cpu();
    let out = wrk_run(args.duration)
        .output()
        .await
        .map_err(|e| format!("cannot run wrk: {e}"))?;
    let after = server.cpu();
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "wrk failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let parsed = parse_wrk(&text).ok_or_else(|| format!("cannot read wrk's output:\n{text}"))?;
    Ok(Sample {
        server: server.kind.label(),
        tool: "wrk",
        round,
        requests_per_sec: parsed.requests_per_sec,
        p50_us: parsed.p50_us,
        p99_us: parsed.p99_us,
        server_cpu_us_per_request: cpu_per_request(before, after, parsed.requests),
        client_cpu_us_per_request: None,
        unexpected_failures: parsed.errors,
    })
}

struct WrkResult {
    requests_per_sec: f64,
    requests: u64,
    p50_us: u64,
    p99_us: u64,
    errors: u64,
}

/// Reads `Requests/sec:`, `N requests in`, the `--latency` distribution, and the
/// `Socket errors:` / `Non-2xx` lines of wrk's report.
fn parse_wrk(text: &str) -> Option<WrkResult> {
    let mut r = WrkResult {
        requests_per_sec: 0.0,
        requests: 0,
        p50_us: 0,
        p99_us: 0,
        errors: 0,
    };
    let mut saw_rps = false;
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => {
                r.requests_per_sec = v.parse().ok()?;
                saw_rps = true;
            }
            [n, "requests", "in", ..] => r.requests = n.parse().ok()?,
            ["50%", v] => r.p50_us = wrk_duration_us(v)?,
            ["99%", v] => r.p99_us = wrk_duration_us(v)?,
            ["Socket", "errors:", rest @ ..] => {
                // connect 0, read 0, write 0, timeout 0
                r.errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => r.errors += n.parse::<u64>().ok()?,
            _ => {}
        }
    }
    saw_rps.then_some(r)
}

/// `812.00us`, `1.23ms`, `2.00s` → µs.
fn wrk_duration_us(v: &str) -> Option<u64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60e6)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e6)
    } else {
        return None;
    };
    Some((num.parse::<f64>().ok()? * scale).round() as u64)
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (med, v[0], v[n - 1])
}

fn machine() -> String {
    // Online CPUs (this process may be pinned to one by now).
    let cpus = std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| s.lines().filter(|l| l.starts_with("processor")).count())
        .ok()
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(0, |n| n.get()));
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    format!("{cpus} × {model}, Linux {kernel}, load average at the end {load}")
}

fn markdown(
    args: &OverheadArgs,
    placement: Option<crate::pin::Placement>,
    tools: &[&str],
    samples: &[Sample],
) -> String {
    let mut out = String::new();
    let command = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let _ = writeln!(
        out,
        "### Request overhead: hello app, {}, {} connections, {} rounds × {:?} (+{:?} warm-up), alternating\n",
        if args.fresh_connections { "a new connection per request" } else { "keep-alive" },
        args.concurrency,
        args.rounds,
        args.duration,
        args.warmup
    );
    let _ = writeln!(
        out,
        "Machine: {}. Servers: child processes with {} tokio worker thread(s); client: {} thread(s). {}",
        machine(),
        args.server_threads,
        args.client_threads,
        match placement {
            Some(p) => format!(
                "Pinned: the servers on CPU {}, the client (and wrk) on CPU {}.",
                p.server, p.client
            ),
            None => "Not pinned.".to_owned(),
        }
    );
    let _ = writeln!(
        out,
        "Command: `cargo run --release -p unwedge-load --features bench --bin unwedge-bench -- {command}`\n"
    );
    for tool in tools {
        let _ = writeln!(out, "Load from **{tool}**:\n");
        let _ = writeln!(
            out,
            "| server | requests/s (median) | range | vs bare | vs bare, paired | p99 (median) | p99 range | server CPU per request (median) | CPU vs bare | unexpected failures |"
        );
        let _ = writeln!(
            out,
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        let of = |kind: Kind| -> Vec<&Sample> {
            samples
                .iter()
                .filter(|s| s.tool == *tool && s.server == kind.label())
                .collect()
        };
        let bare_rps = median(of(Kind::Bare).iter().map(|s| s.requests_per_sec).collect()).0;
        let cpu_median = |rows: &[&Sample]| -> Option<f64> {
            let cpu: Vec<f64> = rows
                .iter()
                .filter_map(|s| s.server_cpu_us_per_request)
                .collect();
            (!cpu.is_empty()).then(|| median(cpu).0)
        };
        let bare_cpu = cpu_median(&of(Kind::Bare));
        for kind in Kind::ALL {
            let rows = of(kind);
            if rows.is_empty() {
                continue;
            }
            let (rps, rps_lo, rps_hi) = median(rows.iter().map(|s| s.requests_per_sec).collect());
            let (p99, p99_lo, p99_hi) = median(rows.iter().map(|s| s.p99_us as f64).collect());
            let (cpu_text, cpu_ratio) = match (cpu_median(&rows), bare_cpu) {
                (Some(c), Some(b)) if b > 0.0 => (
                    format!("{c:.2} µs"),
                    format!("{:+.1} %", 100.0 * (c - b) / b),
                ),
                (Some(c), _) => (format!("{c:.2} µs"), "n/a".to_owned()),
                _ => ("n/a".to_owned(), "n/a".to_owned()),
            };
            // Each round's ratio to bare in the same round, then the median: a slow patch of
            // the machine hits both sides of a pair alike.
            let bare_rows = of(Kind::Bare);
            let paired: Vec<f64> = rows
                .iter()
                .filter_map(|s| {
                    let b = bare_rows.iter().find(|b| b.round == s.round)?;
                    (b.requests_per_sec > 0.0).then(|| s.requests_per_sec / b.requests_per_sec)
                })
                .collect();
            let paired_text = if paired.is_empty() {
                "n/a".to_owned()
            } else {
                let (m, lo, hi) = median(paired);
                format!("{:.1} % ({:.0}–{:.0})", 100.0 * m, 100.0 * lo, 100.0 * hi)
            };
            let failures: u64 = rows.iter().map(|s| s.unexpected_failures).sum();
            let _ = writeln!(
                out,
                "| {} | {:.0} | {:.0}–{:.0} | {:.1} % | {} | {} | {}–{} | {} | {} | {} |",
                kind.label(),
                rps,
                rps_lo,
                rps_hi,
                100.0 * rps / bare_rps,
                paired_text,
                fmt_us(p99 as u64),
                fmt_us(p99_lo as u64),
                fmt_us(p99_hi as u64),
                cpu_text,
                cpu_ratio,
                failures
            );
        }
        let _ = writeln!(out);
    }
    out.push_str(
        "Target: unwedge::serve ≥ 97 % of bare axum's requests/s. \"vs bare, paired\": the \
         median, over the rounds, of the server's requests/s divided by bare axum's in the same \
         round (range in brackets). Server CPU per request: the \
         server process's CPU time during the measurement (sum of its threads' \
         /proc/PID/task/*/schedstat) divided by the requests served; on a shared or small \
         machine it is steadier than requests/s, which also depends on what else runs.\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_read() {
        let text = "Running 5s test @ http://127.0.0.1:3000/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   712.95us  201.02us   5.28ms   80.31%
    Req/Sec    44.79k     1.58k   47.27k    72.00%
  Latency Distribution
     50%  671.00us
     75%  798.00us
     90%  0.93ms
     99%    1.42ms
  222851 requests in 5.00s, 27.63MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
Requests/sec:  44566.49
Transfer/sec:      5.53MB
";
        let r = parse_wrk(text).unwrap();
        assert_eq!(r.requests, 222_851);
        assert_eq!(r.p50_us, 671);
        assert_eq!(r.p99_us, 1420);
        assert_eq!(r.errors, 3);
        assert!((r.requests_per_sec - 44566.49).abs() < 0.01);
        assert!(parse_wrk("garbage").is_none());
    }

    #[test]
    fn median_and_range() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
    }
}
