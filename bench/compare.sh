#!/usr/bin/env bash
# Side by side, in one run: a direct connection, HAProxy (2 hops, mTLS between them), and skiff
# over TLS/TCP, over QUIC and with 3 routers, all on loopback. Prints a Markdown table of
# medians with ratios to direct (docs/benchmarks.md explains every column).
# Needs (Debian): apt-get install iperf3 redis-server redis-tools haproxy openssl util-linux
# Usage: bench/compare.sh [--rounds 3] [--seconds 4] [--paths direct,haproxy,tls,quic,tls3] ...
#        (bench/compare.py --help lists every option)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p skiff-cli
exec python3 bench/compare.py "$@"
