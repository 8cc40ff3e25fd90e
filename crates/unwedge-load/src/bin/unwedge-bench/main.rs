//! `unwedge-bench`: the load client on the command line, and unwedge's macro benchmarks.
//!
//! Run with:
//!
//! ```text
//! $ cargo run --release -p unwedge-load --features bench --bin unwedge-bench -- \
//!       load --url http://127.0.0.1:3000/ --concurrency 32 --duration 10s
//! $ cargo run --release -p unwedge-load --features bench --bin unwedge-bench -- overhead
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod overhead;
mod pin;
mod servers;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use unwedge_load::{LoadConfig, LoadReport, RequestSpec};

/// Load and benchmark tools for unwedge (loopback targets only).
#[derive(Debug, Parser)]
#[command(name = "unwedge-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send load to a local server and print the report.
    ///
    /// $ unwedge-bench load --url http://127.0.0.1:3000/ --concurrency 32 --duration 10s
    ///
    /// $ unwedge-bench load --url http://localhost:3000/items --rate 2000 --count 20000 --fresh-connections --json
    Load(LoadArgs),
    /// Request overhead side by side: bare axum::serve, + CatchPanicLayer, unwedge::serve.
    ///
    /// Each server runs as a child process (this binary re-executed) on 127.0.0.1; the load
    /// alternates between them for a few rounds; the Markdown table gives median and range.
    ///
    /// $ unwedge-bench overhead --rounds 5 --duration 5s
    Overhead(overhead::OverheadArgs),
    /// (internal) serve the hello app with bare axum::serve.
    #[command(hide = true)]
    ServeBare(servers::ServeArgs),
    /// (internal) serve the hello app with axum::serve + CatchPanicLayer.
    #[command(hide = true)]
    ServeCatchpanic(servers::ServeArgs),
    /// (internal) serve the hello app with unwedge::serve.
    #[command(hide = true)]
    ServeUnwedge(servers::ServeArgs),
}

#[derive(Debug, Args)]
struct LoadArgs {
    /// Target URL: http://127.0.0.1|[::1]|localhost:PORT/PATH.
    #[arg(long)]
    url: String,
    /// Closed model: this many concurrent workers (default 8).
    #[arg(long, short = 'c', conflicts_with = "rate")]
    concurrency: Option<usize>,
    /// Open model: this many requests per second, latency from the intended send time.
    #[arg(long, short = 'r')]
    rate: Option<f64>,
    /// Stop after this long (`10s`, `1m`). Default 10s when no --count is given.
    #[arg(long, short = 'd', value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Stop after this many requests.
    #[arg(long, short = 'n')]
    count: Option<u64>,
    /// Reuse connections (the default).
    #[arg(long, conflicts_with = "fresh_connections")]
    keep_alive: bool,
    /// Open a new connection for every request.
    #[arg(long)]
    fresh_connections: bool,
    /// Per-request timeout.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// HTTP method.
    #[arg(long, short = 'X', default_value = "GET")]
    method: String,
    /// Request body.
    #[arg(long)]
    body: Option<String>,
    /// A status to count as an expected failure (repeatable), e.g. 500 for a panic route.
    #[arg(long, value_name = "STATUS")]
    expect_failure: Vec<u16>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Exit 1 when any unexpected failure happened.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_error(&e),
    };
    match cli.command {
        Command::Load(args) => runtime(None).block_on(load(args)),
        Command::Overhead(args) => overhead::main(args),
        Command::ServeBare(args) => servers::main(servers::Kind::Bare, args),
        Command::ServeCatchpanic(args) => servers::main(servers::Kind::CatchPanic, args),
        Command::ServeUnwedge(args) => servers::main(servers::Kind::Unwedge, args),
    }
}

/// A multi-thread runtime with `threads` workers (default: one per core).
fn runtime(threads: Option<usize>) -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(n.max(1));
    }
    builder
        .enable_all()
        .build()
        .expect("cannot build the tokio runtime")
}

/// Help and version as clap prints them; any other error of the flag parser as one line
/// (clap's first, without its usage line and pointer to `--help`), exit code 2.
fn clap_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
    }
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or("invalid arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    usage_error(format_args!("{first} (see unwedge-bench --help)"))
}

/// Prints `error: …` and returns exit code 2 (usage).
fn usage_error(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(2)
}

async fn load(args: LoadArgs) -> ExitCode {
    let method = match args.method.to_ascii_uppercase().parse::<http::Method>() {
        Ok(m) => m,
        Err(_) => return usage_error(format!("invalid method `{}`", args.method)),
    };
    let mut config = match LoadConfig::new(&args.url) {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    let mut spec = RequestSpec::new(method, config.target().path().to_owned());
    if let Some(body) = args.body {
        spec = spec.body(body);
    }
    for status in args.expect_failure {
        spec = spec.expect_failure(status);
    }
    config = config
        .request(spec)
        .keep_alive(!args.fresh_connections)
        .timeout(args.timeout);
    config = match args.rate {
        Some(r) => config.rate(r),
        None => config.concurrency(args.concurrency.unwrap_or(8)),
    };
    if let Some(n) = args.count {
        config = config.count(n);
    }
    match (args.duration, args.count) {
        (Some(d), _) => config = config.duration(d),
        (None, None) => config = config.duration(Duration::from_secs(10)),
        (None, Some(_)) => {}
    }
    let running = match unwedge_load::start(config) {
        Ok(r) => r,
        Err(e) => return usage_error(e),
    };
    let live = std::io::stderr().is_terminal();
    let mut progress = running.progress();
    let ticker = tokio::spawn(async move {
        let mut last = std::time::Instant::now();
        while progress.changed().await.is_ok() {
            let p = progress.borrow_and_update().clone();
            if live && (last.elapsed() >= Duration::from_millis(500) || p.done) {
                last = std::time::Instant::now();
                eprint!(
                    "\r{:>6.1} s  {} requests  {} ok  {} expected  {} unexpected  {} in flight   ",
                    p.elapsed.as_secs_f64(),
                    p.total,
                    p.ok,
                    p.expected_failures,
                    p.unexpected_failures(),
                    p.in_flight
                );
                let _ = std::io::stderr().flush();
            }
            if p.done {
                break;
            }
        }
        if live {
            eprintln!();
        }
    });
    let report: LoadReport = running.finish().await;
    let _ = ticker.await;
    // A closed stdout (`| head`) is not an error worth a panic.
    let mut out = std::io::stdout().lock();
    let _ = if args.json {
        writeln!(out, "{}", report.to_json())
    } else {
        writeln!(out, "{report}")
    };
    if args.check && report.unexpected_failures() > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
