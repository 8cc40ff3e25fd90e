#!/bin/sh
# Request overhead, side by side in one run: bare axum::serve, axum::serve + CatchPanicLayer,
# unwedge::serve, and unwedge::serve under the unwedge run supervisor (hello app, keep-alive). Prints a Markdown table (median and range over
# alternating rounds); extra arguments go to `unwedge-bench overhead` (see --help).
#
#   bench/overhead.sh                       # 5 rounds x 5 s, in-repo client and wrk if present
#   bench/overhead.sh --rounds 9 --duration 10s --server-threads 2
set -eu
cd "$(dirname "$0")/.."
# The supervisor binary too, for the "unwedge::serve under unwedge run" row.
cargo build --release --quiet -p unwedge-cli --bin unwedge
cargo build --release --quiet -p unwedge-load --features bench --bin unwedge-bench
exec target/release/unwedge-bench overhead "$@"
