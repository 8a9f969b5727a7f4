#!/usr/bin/env bash
# Link benchmarks: multiplexer choice over TLS/TCP (yamux vs h2) and, per transport, the time
# from dial to an up link and single-stream throughput. Results go in docs/benchmarks.md.
# Usage: bench/links.sh [MiB per stream, default 1024]
set -euo pipefail
cd "$(dirname "$0")/.."
mib="${1:-1024}"
cargo build --release -p skiff-router --examples
echo "== multiplexer over TLS/TCP and plain TCP (${mib} MiB, one stream) =="
cargo run --release -q -p skiff-router --example mux_choice "$mib"
echo "== links: dial to up, one stream (${mib} MiB) =="
cargo run --release -q -p skiff-router --example link_throughput "$mib"
echo "== token to link, end to end through the CLI (skiff demo) =="
cargo build --release -q -p skiff-cli
for i in 1 2 3; do ./target/release/skiff demo | grep "is up"; done
