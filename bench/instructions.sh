#!/usr/bin/env bash
# Instructions per request in each overhead-benchmark server, counted by callgrind: a figure
# that does not move with other load on the machine (requests/s and CPU time do).
#
#   bench/instructions.sh                 # bare axum, + CatchPanicLayer, unwedge::serve
#   bench/instructions.sh serve-unwedge   # one server
#
# Each server runs under `valgrind --tool=callgrind` (user-space instructions only; the
# kernel's share of a request, most of it, is not counted), gets 3 000 unmeasured requests,
# then the counters are zeroed and 20 000 requests from `unwedge-bench load` (8 keep-alive
# connections) are counted. Needs valgrind (`apt-get install valgrind`).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "error: valgrind not found (apt-get install valgrind)" >&2; exit 2; }
cargo build --release --quiet -p unwedge-load --features bench --bin unwedge-bench
bench=$PWD/target/release/unwedge-bench
n=20000
servers=("$@")
[ ${#servers[@]} -eq 0 ] && servers=(serve-bare serve-catchpanic serve-unwedge)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

echo "| server | instructions per request |"
echo "| --- | ---: |"
for kind in "${servers[@]}"; do
  port=$(free_port)
  valgrind --tool=callgrind --callgrind-out-file="$tmp/$kind.out" \
    "$bench" "$kind" --listen "127.0.0.1:$port" --threads 1 >/dev/null 2>"$tmp/$kind.log" &
  pid=$!
  # Ready = the port answers (up to 60 s under valgrind).
  for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    kill -0 $pid 2>/dev/null || { echo "error: $kind exited: $(tail -3 "$tmp/$kind.log")" >&2; exit 1; }
    sleep 0.2
  done
  "$bench" load --url "http://127.0.0.1:$port/" -c 8 --count 3000 >/dev/null
  callgrind_control -z $pid >/dev/null 2>&1
  "$bench" load --url "http://127.0.0.1:$port/" -c 8 --count $n >/dev/null
  callgrind_control -d $pid >/dev/null 2>&1
  kill $pid; wait $pid 2>/dev/null || true
  dump=$(ls -t "$tmp/$kind.out".* | head -1)
  total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
  echo "| $kind | $((total / n)) |"
done
