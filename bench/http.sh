#!/usr/bin/env bash
# HTTP benchmark: h2load against nginx directly and through two `skiff site run` processes
# (an `--type http` listener at east, an `http` connector at west, one link), in the same run,
# alternating direct and skiff for 3 rounds, over h2c (one client connection per -c, -m
# streams each) and HTTP/1.1 keep-alive. Prints a Markdown table of requests/s and p99
# latency (from h2load's --log-file) with skiff's ratio to direct. Results go in
# docs/benchmarks.md.
# Needs: nginx (apt-get install nginx-light) and h2load (apt-get install nghttp2-client);
# both are installed when missing (root), python3 for free ports and percentiles.
# Usage: bench/http.sh [requests per test, default 50000] [clients, default 10]
#                      [streams per h2 client, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
requests="${1:-50000}"
clients="${2:-10}"
streams="${3:-10}"
rounds=3

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
cargo build --release -q -p skiff-cli
skiff=./target/release/skiff

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# nginx: HTTP/1.1 on one port (the skiff connector's backend, and direct HTTP/1.1), h2c with
# prior knowledge on another (direct h2). Every request gets the same 13-byte answer.
h1port=$(free_port)
h2port=$(free_port)
mkdir -p "$work/nginx"
cat >"$work/nginx/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$h1port;
    listen 127.0.0.1:$h2port http2;
    http2_max_concurrent_streams 128;
    location / { default_type text/plain; return 200 "hello, skiff\n"; }
  }
}
EOF
"$nginx_bin" -p "$work/nginx" -c "$work/nginx/nginx.conf" &
pids+=($!)

$skiff site create west --enable-link-access --link-host 127.0.0.1 --link-port 0 --dir "$work/west" >/dev/null
$skiff site create east --dir "$work/east" >/dev/null
$skiff connector create web "$h1port" --type http --dir "$work/west" >/dev/null
lport=$(free_port)
$skiff listener create web "$lport" --host 127.0.0.1 --type http --dir "$work/east" >/dev/null
SKIFF_LOG=warn $skiff site run --dir "$work/west" 2>"$work/west.log" &
pids+=($!)
SKIFF_LOG=warn $skiff site run --dir "$work/east" 2>"$work/east.log" &
pids+=($!)
for _ in $(seq 100); do $skiff site status --dir "$work/west" >/dev/null 2>&1 && break; sleep 0.1; done
$skiff token issue "$work/t.yaml" --dir "$work/west" 2>/dev/null
$skiff token redeem "$work/t.yaml" --dir "$work/east" >/dev/null
for _ in $(seq 100); do
  $skiff listener list --output json --dir "$work/east" | grep -q '"active"' && break
  sleep 0.1
done
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$lport/" >/dev/null 2>&1 && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$lport/" >/dev/null || { echo "the skiff listener does not answer" >&2; exit 1; }

# One h2load run: prints "REQ_PER_S P99_MS" (P99 from the per-request log, in ms).
measure() { # port mode(h2|h1)
  local port=$1 mode=$2 log="$work/h2load.log" out
  rm -f "$log"
  if [ "$mode" = h2 ]; then
    out=$(h2load -n "$requests" -c "$clients" -m "$streams" --log-file="$log" "http://127.0.0.1:$port/")
  else
    out=$(h2load --h1 -n "$requests" -c "$clients" --log-file="$log" "http://127.0.0.1:$port/")
  fi
  if ! grep -q "$requests succeeded" <<<"$out"; then
    echo "h2load did not complete every request:" >&2
    echo "$out" >&2
    exit 1
  fi
  local rps
  rps=$(grep -oE 'finished in [0-9.]+m?s, [0-9.]+ req/s' <<<"$out" | grep -oE '[0-9.]+ req/s' | cut -d' ' -f1)
  local p99
  p99=$(python3 -c '
import sys
t = sorted(int(l.split()[2]) for l in open(sys.argv[1]) if l.strip())
print("%.2f" % (t[int(len(t) * 0.99) - 1] / 1000))' "$log")
  echo "$rps $p99"
}

declare -A rps p99
for round in $(seq $rounds); do
  for mode in h2 h1; do
    direct_port=$h1port
    [ "$mode" = h2 ] && direct_port=$h2port
    res=$(measure "$direct_port" "$mode")
    read -r r p <<<"$res"
    rps[$mode,direct,$round]=$r
    p99[$mode,direct,$round]=$p
    res=$(measure "$lport" "$mode")
    read -r r p <<<"$res"
    rps[$mode,skiff,$round]=$r
    p99[$mode,skiff,$round]=$p
    echo "round $round $mode: direct ${rps[$mode,direct,$round]} req/s p99 ${p99[$mode,direct,$round]} ms; skiff ${rps[$mode,skiff,$round]} req/s p99 ${p99[$mode,skiff,$round]} ms" >&2
  done
done

echo
echo "$requests requests per test, $clients client connections$( [ "$streams" -gt 1 ] && echo ", $streams streams each over h2c"); rounds alternate direct and skiff."
echo
echo "| protocol | round | direct req/s | skiff req/s | ratio | direct p99 | skiff p99 |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for mode in h2 h1; do
  name="h2c (-m $streams)"
  [ "$mode" = h1 ] && name="HTTP/1.1"
  for round in $(seq $rounds); do
    d=${rps[$mode,direct,$round]}
    s=${rps[$mode,skiff,$round]}
    ratio=$(python3 -c "print('%d %%' % round(100 * $s / $d))")
    printf '| %s | %s | %.0f | %.0f | %s | %s ms | %s ms |\n' "$name" "$round" "$d" "$s" "$ratio" \
      "${p99[$mode,direct,$round]}" "${p99[$mode,skiff,$round]}"
  done
done
