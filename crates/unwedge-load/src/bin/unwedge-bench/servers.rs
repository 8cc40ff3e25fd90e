//! The three servers compared by `overhead`, each serving the same hello app.

use std::net::SocketAddr;
use std::process::ExitCode;

use axum::routing::{get, post};
use axum::Router;
use clap::Args;

/// Which server stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `axum::serve`.
    Bare,
    /// `axum::serve` with `TCP_NODELAY` on each connection, as `unwedge::serve` sets it.
    BareNodelay,
    /// `axum::serve` + tower-http's `CatchPanicLayer`.
    CatchPanic,
    /// `unwedge::serve` (PanicLayer, health routes, watchdog tracking).
    Unwedge,
    /// `unwedge::serve` as the one worker of the `unwedge run` supervisor (socket passed by fd).
    Supervised,
}

impl Kind {
    pub(crate) const ALL: [Kind; 5] = [
        Kind::Bare,
        Kind::BareNodelay,
        Kind::CatchPanic,
        Kind::Unwedge,
        Kind::Supervised,
    ];

    /// The hidden subcommand that runs it (under the supervisor for `Supervised`).
    pub(crate) fn subcommand(self) -> &'static str {
        match self {
            Kind::Bare | Kind::BareNodelay => "serve-bare",
            Kind::CatchPanic => "serve-catchpanic",
            Kind::Unwedge | Kind::Supervised => "serve-unwedge",
        }
    }

    /// The row label in tables.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Kind::Bare => "axum::serve (bare)",
            Kind::BareNodelay => "axum::serve (bare) + TCP_NODELAY",
            Kind::CatchPanic => "axum::serve + CatchPanicLayer",
            Kind::Unwedge => "unwedge::serve",
            Kind::Supervised => "unwedge::serve under unwedge run",
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Loopback address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// Tokio worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Set TCP_NODELAY on accepted connections (axum::serve servers; unwedge::serve always
    /// does).
    #[arg(long)]
    nodelay: bool,
}

/// The app every server serves: the smallest possible handler, and `POST /upload`, which
/// reads the request body (its length).
fn hello() -> Router {
    Router::new()
        .route("/", get(|| async { "Hello, World!" }))
        .route(
            "/upload",
            post(|body: axum::body::Bytes| async move { body.len().to_string() }),
        )
}

pub(crate) fn main(kind: Kind, args: ServeArgs) -> ExitCode {
    if !args.listen.ip().is_loopback() {
        return crate::usage_error(format!("--listen {}: loopback addresses only", args.listen));
    }
    crate::runtime(args.threads).block_on(async move {
        match kind {
            Kind::Bare | Kind::BareNodelay | Kind::CatchPanic => {
                let listener = match tokio::net::TcpListener::bind(args.listen).await {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("error: cannot listen on {}: {e}", args.listen);
                        return ExitCode::FAILURE;
                    }
                };
                let app = if kind == Kind::CatchPanic {
                    hello().layer(tower_http::catch_panic::CatchPanicLayer::new())
                } else {
                    hello()
                };
                use axum::serve::ListenerExt;
                let result = if args.nodelay {
                    let listener = listener.tap_io(|tcp| {
                        let _ = tcp.set_nodelay(true);
                    });
                    axum::serve(listener, app).await
                } else {
                    axum::serve(listener, app).await
                };
                match result {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("error: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Kind::Unwedge | Kind::Supervised => {
                // Under `unwedge run`, LISTEN_FDS takes precedence over this address.
                let outcome = unwedge::Server::new()
                    .bind(args.listen)
                    .serve(hello())
                    .await;
                if let unwedge::serve::Outcome::Failed(e) = &outcome {
                    eprintln!("error: {e}");
                }
                ExitCode::from(outcome.exit_code())
            }
        }
    })
}
