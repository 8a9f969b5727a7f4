#!/usr/bin/env bash
# Flow benchmarks: a TCP service through skiff vs a direct connection, measured in the same
# run. (1) in-process routers: throughput, 1-byte ping-pong, new-connection rate (each
# transport); (2) real processes: redis-benchmark against redis-server directly and through two
# `skiff site run` processes linked on loopback. Results go in docs/benchmarks.md.
# Needs: redis-server and redis-tools (apt-get install redis-server redis-tools).
# Usage: bench/flows.sh [MiB for throughput, default 1024] [redis requests, default 200000]
set -euo pipefail
cd "$(dirname "$0")/.."
mib="${1:-1024}"
requests="${2:-200000}"
cargo build --release -q -p skiff-router --examples
cargo build --release -q -p skiff-cli
echo "== in-process: 1 hop, skiff vs direct =="
./target/release/examples/flow_throughput "$mib" 20000 2000

echo "== redis-benchmark: direct vs through skiff (two site processes, one link) =="
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
pids+=($!)
skiff=./target/release/skiff
$skiff site create west --enable-link-access --link-host 127.0.0.1 --link-port 0 --dir "$work/west" >/dev/null
$skiff site create east --dir "$work/east" >/dev/null
$skiff connector create redis "$rport" --dir "$work/west" >/dev/null
lport=$(free_port)
$skiff listener create redis "$lport" --host 127.0.0.1 --dir "$work/east" >/dev/null
SKIFF_LOG=warn $skiff site run --dir "$work/west" 2>"$work/west.log" &
pids+=($!)
SKIFF_LOG=warn $skiff site run --dir "$work/east" 2>"$work/east.log" &
pids+=($!)
for _ in $(seq 100); do $skiff site status --dir "$work/west" >/dev/null 2>&1 && break; sleep 0.1; done
$skiff token issue "$work/t.yaml" --dir "$work/west" 2>/dev/null
$skiff token redeem "$work/t.yaml" --dir "$work/east" >/dev/null
for _ in $(seq 100); do
  $skiff listener list --output json --dir "$work/east" | grep -q '"active"' && break; sleep 0.1
done
run() { redis-benchmark -h 127.0.0.1 -p "$1" -n "$requests" -c "$2" -t set,get -q | tr '\r' '\n' | grep -E '^(SET|GET): [0-9.]+ requests' ; }
for c in 1 50; do
  echo "-- $c client connection(s), $requests requests per test"
  echo "direct:"; run "$rport" "$c"
  echo "skiff: "; run "$lport" "$c"
done
