#!/usr/bin/env python3
"""UDP request rate: dnsperf against dnsmasq directly and through skiff (QUIC, TLS/TCP), one run.

Starts a dnsmasq on loopback (authoritative for `a.skiff.test` and every name below it) and
two pairs of `skiff site run` processes: in each pair, site `east` has a UDP connector `dns`
to dnsmasq and site `west` a UDP listener `dns`, linked once over QUIC and once over TLS/TCP.
Then dnsperf runs for a fixed time with a fixed number of outstanding queries against each
path (direct, skiff over QUIC, skiff over TLS/TCP), in alternating order round by round so the
machine's noise falls on all paths alike, and prints a Markdown table of medians:
queries/s (with the ratio to direct of the same run), loss %, average and p99 latency (from
dnsperf's per-query report, -v), and the CPU the two skiff routers spent per query.

Usage: python3 bench/udp.py [--skiff target/release/skiff] [--seconds 10] [--outstanding 100]
                            [--clients 10] [--rounds 3] [--paths direct,quic,tls]
Needs (Debian): apt-get install dnsmasq-base dnsperf
Build skiff first: cargo build --release -p skiff-cli
"""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIFF = os.path.join(ROOT, "target", "release", "skiff")
CLK_TCK = os.sysconf("SC_CLK_TCK")
ANSWER = "10.9.8.7"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_udp_port():
    """A loopback port free for both UDP and TCP (dnsmasq binds both)."""
    for _ in range(50):
        t = socket.socket()
        t.bind(("127.0.0.1", 0))
        port = t.getsockname()[1]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            u.close()
            t.close()
    raise SystemExit("bench: no loopback port free for both UDP and TCP")


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def wait_for(what, check, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"bench: gave up waiting for {what} after {timeout:.0f} s")


def dns_query(port, name="probe.a.skiff.test", timeout=0.5):
    """One A query over UDP; True when the answer carries ANSWER."""
    qid = random.randrange(65536)
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    q += struct.pack("!HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(q, ("127.0.0.1", port))
        try:
            r = s.recv(4096)
        except socket.timeout:
            return False
    return (len(r) >= 12 and struct.unpack("!H", r[:2])[0] == qid
            and r[3] & 0x0F == 0 and r.endswith(socket.inet_aton(ANSWER)))


def skiff(*args, check=True):
    r = subprocess.run([SKIFF, *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise SystemExit(f"bench: skiff {' '.join(args)} failed: {r.stderr.strip()}")
    return r


class Path:
    name = ""
    procs = ()

    def pids(self):
        return [p.pid for p in self.procs]

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


class Direct(Path):
    name = "direct"

    def __init__(self, dns_port):
        self.port = dns_port
        self.procs = []


class Skiff(Path):
    """Two skiff sites: east (connector to dnsmasq, accepts the link), west (listener)."""

    def __init__(self, work, dns_port, transport):
        self.name = f"skiff, 2 routers, {'TLS/TCP' if transport == 'tls' else 'QUIC'} link"
        self.procs = []
        try:
            self._start(work, dns_port, transport)
        except BaseException:
            self.stop()
            raise

    def _start(self, work, dns_port, transport):
        east = os.path.join(work, f"{transport}-east")
        west = os.path.join(work, f"{transport}-west")
        skiff("site", "create", "east", "--enable-link-access", "--link-host", "127.0.0.1",
              "--link-port", "0", "--dir", east)
        skiff("site", "create", "west", "--dir", west)
        skiff("connector", "create", "dns", str(dns_port), "--host", "127.0.0.1",
              "--type", "udp", "--dir", east)
        self.port = free_udp_port()
        skiff("listener", "create", "dns", str(self.port), "--host", "127.0.0.1",
              "--type", "udp", "--dir", west)
        env = dict(os.environ, SKIFF_LOG="warn")
        for d in (east, west):
            self.procs.append(subprocess.Popen([SKIFF, "site", "run", "--dir", d], env=env,
                                               stdout=subprocess.DEVNULL,
                                               stderr=open(d + ".log", "w")))
        for d in (east, west):
            wait_for("skiff site", lambda d=d: skiff("site", "status", "--dir", d,
                                                     check=False).returncode == 0)
        token = os.path.join(work, f"{transport}.token")
        skiff("token", "issue", token, "--dir", east)
        skiff("token", "redeem", token, "--transport", transport, "--dir", west)

        def up():
            links = json.loads(skiff("link", "list", "--output", "json", "--dir", west).stdout)
            return bool(links) and links[0]["status"] == "up" and \
                links[0]["transport"] == transport

        wait_for(f"the {transport} link", up)
        wait_for(f"an answer through skiff over {transport}", lambda: dns_query(self.port))


def dnsperf(port, args, queries, out_dir, tag):
    """One dnsperf run; its summary and the latencies of every answered query (seconds)."""
    verbose = os.path.join(out_dir, f"dnsperf-{tag}.txt")
    with open(verbose, "w") as out:
        r = subprocess.run(["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", queries,
                            "-l", str(args.seconds), "-q", str(args.outstanding),
                            "-c", str(args.clients), "-t", "2", "-v"],
                           stdout=out, stderr=subprocess.PIPE, text=True,
                           timeout=args.seconds + 60)
    if r.returncode != 0:
        raise RuntimeError(f"dnsperf failed: {r.stderr[-400:]}")
    summary, lat, bad = {}, [], 0
    with open(verbose) as f:
        for line in f:
            if line.startswith("> "):
                parts = line.split()
                if parts[1] == "NOERROR":
                    lat.append(float(parts[-1]))
                elif parts[1] not in ("T", "I"):
                    bad += 1
                continue
            key, _, value = line.strip().partition(":")
            if key in ("Queries sent", "Queries completed", "Queries lost",
                       "Queries per second", "Run time (s)"):
                summary[key] = float(value.split()[0])
    os.unlink(verbose)
    if bad:
        raise RuntimeError(f"dnsperf: {bad} answers were not NOERROR")
    lat.sort()
    return {
        "qps": summary["Queries per second"],
        "sent": summary["Queries sent"],
        "completed": summary["Queries completed"],
        "loss": 100.0 * summary["Queries lost"] / max(summary["Queries sent"], 1),
        "avg_us": statistics.mean(lat) * 1e6 if lat else None,
        "p99_us": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e6 if lat else None,
    }


def measure(path, args, queries, out_dir, tag):
    pids = path.pids()
    cpu0 = cpu_seconds(pids) if pids else 0
    m = dnsperf(path.port, args, queries, out_dir, tag)
    m["cpu_us"] = ((cpu_seconds(pids) - cpu0) / m["completed"] * 1e6
                   if pids and m["completed"] else None)
    return m


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--skiff", default=None,
                    help="the skiff binary to measure (default: target/release/skiff)")
    ap.add_argument("--seconds", type=int, default=10, help="dnsperf run length (-l)")
    ap.add_argument("--outstanding", type=int, default=100,
                    help="queries outstanding at most (dnsperf -q)")
    ap.add_argument("--clients", type=int, default=10,
                    help="dnsperf clients (-c): source ports, so UDP flows through skiff")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--paths", default="direct,quic,tls",
                    help="comma-separated subset of direct,quic,tls")
    args = ap.parse_args()
    if args.skiff:
        globals()["SKIFF"] = os.path.abspath(args.skiff)
    for tool, pkg in (("dnsmasq", "dnsmasq-base"), ("dnsperf", "dnsperf")):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            raise SystemExit(f"bench: {tool} is missing; install it with: apt-get install {pkg}")
    if not os.access(SKIFF, os.X_OK):
        raise SystemExit(f"bench: no skiff binary at {SKIFF}; build it with: "
                         "cargo build --release -p skiff-cli")

    # SIGTERM (e.g. `timeout`) stops everything the same way as an error does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    work = tempfile.mkdtemp(prefix="skiff-bench-udp-")
    dns, paths = None, []
    try:
        dns_port = free_udp_port()
        dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
        # --no-daemon: foreground, no pid file, no change of user; answers from memory only.
        dns = subprocess.Popen([dnsmasq, "--no-daemon", "--conf-file=/dev/null", "--no-resolv",
                                "--no-hosts", f"--port={dns_port}",
                                "--listen-address=127.0.0.1", "--bind-interfaces",
                                f"--address=/a.skiff.test/{ANSWER}", "--local=/skiff.test/"],
                               stdout=subprocess.DEVNULL,
                               stderr=open(os.path.join(work, "dnsmasq.log"), "w"))
        wait_for("dnsmasq", lambda: dns_query(dns_port))
        queries = os.path.join(work, "queries.txt")
        with open(queries, "w") as f:
            for i in range(10000):
                f.write(f"q{i}.a.skiff.test A\n")
        wanted = args.paths.split(",")
        if "direct" in wanted:
            paths.append(Direct(dns_port))
        for transport in ("quic", "tls"):
            if transport in wanted:
                log(f"bench: starting skiff over {transport}")
                paths.append(Skiff(work, dns_port, transport))
        results = {p.name: [] for p in paths}
        for r in range(args.rounds):
            order = paths if r % 2 == 0 else list(reversed(paths))
            for p in order:
                log(f"bench: round {r + 1}/{args.rounds}: {p.name}")
                results[p.name].append(measure(p, args, queries, work, f"{r}"))
        report(args, paths, results, time.monotonic() - started)
    finally:
        for p in paths:
            try:
                p.stop()
            except Exception as e:  # keep stopping the rest
                log(f"bench: cleanup: {e}")
        if dns:
            dns.kill()
            dns.wait()
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)


def report(args, paths, results, elapsed):
    def med(name, key):
        vals = [m[key] for m in results[name] if m[key] is not None]
        return statistics.median(vals) if vals else None

    direct = "direct" if "direct" in results else None
    print(f"Loopback, {os.cpu_count()} CPUs, dnsperf -l {args.seconds} -q {args.outstanding} "
          f"-c {args.clients}, {args.rounds} alternating rounds, medians.\n")
    print("| path | queries/s | vs direct | loss | avg latency | p99 latency "
          "| skiff CPU per query |")
    print("|---|---|---|---|---|---|---|")
    for p in paths:
        n = p.name
        qps = med(n, "qps")
        ratio = "-" if direct in (None, n) else f"{qps / med(direct, 'qps'):.2f}"
        cpu = med(n, "cpu_us")
        print(f"| {n} | {qps / 1000:.1f}k | {ratio} | {med(n, 'loss'):.2f} % "
              f"| {med(n, 'avg_us'):.0f} us | {med(n, 'p99_us'):.0f} us "
              f"| {'-' if cpu is None else f'{cpu:.1f} us'} |")
    spread = {n: [round(m["qps"]) for m in results[n]] for n in results}
    print(f"\nqueries/s per round: {json.dumps(spread)}")
    losses = {n: [round(m["loss"], 2) for m in results[n]] for n in results}
    print(f"\nloss % per round: {json.dumps(losses)}")
    print(f"\nWhole run: {elapsed:.0f} s.")


if __name__ == "__main__":
    main()
