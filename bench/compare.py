#!/usr/bin/env python3
"""Side-by-side benchmark: direct vs HAProxy (2 hops, mTLS) vs skiff (TLS/TCP, QUIC, 3 routers).

Starts its own servers (iperf3, redis-server, an idle-connection holder) and proxies on
loopback and measures every path in ONE run, alternating the paths round by round so that
the machine's noise falls on all of them alike. Prints a Markdown table of medians, with
ratios to the direct path of the same run. Run through bench/compare.sh (which builds skiff).

Metrics (per path, median of the rounds):
- iperf3 1 stream and 8 streams (client -> server), Gbit/s;
- redis GET, 50 clients (redis-benchmark), requests/s;
- GET p50 with 1 client, every process pinned to CPU 0 (per-hop latency without cross-core
  wake-ups), microseconds;
- new connections/s (redis-benchmark -k 0: a new connection for every PING, 50 clients);
- CPU s/GB: user+system CPU of the proxy processes (from /proc) during the iperf3 runs, per
  10^9 bytes delivered; CPU us/conn: the same during the new-connection run, per connection;
- peak RSS per proxy process (VmHWM) over the rounds (read before the idle-flow phase), and RSS of an idle proxy, with its
  private part (RssAnon: RSS without the shared code and library pages);
- once, after the rounds: RSS growth per idle flow with N idle connections held open, and
  for skiff the time from `token redeem` to a link that is up.
"""

import argparse
import json
import os
import resource
import selectors
import signal
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIFF = os.path.join(ROOT, "target", "release", "skiff")
CLK_TCK = os.sysconf("SC_CLK_TCK")
ALL_CPUS = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / CLK_TCK


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def pin(pids, cpus):
    for pid in pids:
        subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(pid)], check=True,
                       stdout=subprocess.DEVNULL)


def wait_for(what, check, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise SystemExit(f"bench: gave up waiting for {what} after {timeout:.0f} s")


def redis_ping(port):
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")


class Holder:
    """A server, in a process of its own (file descriptors), that accepts connections and
    holds them open; asked over a pipe how many it holds, or to drop them."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, __file__, "--holder"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())

    def ask(self, what):
        self.proc.stdin.write(what + "\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def held(self):
        return self.ask("count")

    def drop_all(self):
        self.ask("drop")

    def stop(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


def holder_main():
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    sock.setblocking(False)
    print(sock.getsockname()[1], flush=True)
    conns = []
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, "accept")
    sel.register(sys.stdin, selectors.EVENT_READ, "cmd")
    while True:
        for key, _ in sel.select():
            if key.data == "accept":
                while True:
                    try:
                        c, _ = sock.accept()
                    except BlockingIOError:
                        break
                    conns.append(c)
                continue
            cmd = sys.stdin.readline().strip()
            if not cmd:
                return
            if cmd == "drop":
                for c in conns:
                    c.close()
                conns = []
            print(len(conns), flush=True)


class Path:
    name = ""
    procs = ()
    max_idle = None

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

    def __init__(self, servers):
        self.ports = dict(servers)
        self.procs = []


class HAProxy(Path):
    """Two haproxy processes: plain TCP in at the first, mTLS between them, plain out."""

    name = "HAProxy 2 hops, mTLS between"
    # Each connection takes two descriptors in each haproxy, which must stay under the hard
    # limit of descriptors (20 000 on the development machine).
    max_idle = 9000

    def __init__(self, work, servers):
        d = os.path.join(work, "haproxy")
        os.makedirs(d)
        make_certs(d)
        self.ports = {}
        front, back = [], []
        for svc, port in servers.items():
            a, b = free_port(), free_port()
            self.ports[svc] = a
            front.append(f"frontend {svc}\n  bind 127.0.0.1:{a}\n  default_backend {svc}\n"
                         f"backend {svc}\n  server s 127.0.0.1:{b} ssl crt {d}/client.pem "
                         f"ca-file {d}/ca.pem verify required\n")
            back.append(f"frontend {svc}\n  bind 127.0.0.1:{b} ssl crt {d}/server.pem "
                        f"ca-file {d}/ca.pem verify required\n  default_backend {svc}\n"
                        f"backend {svc}\n  server s 127.0.0.1:{port}\n")
        common = ("global\n  maxconn 9500\n"
                  "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n"
                  "  timeout server 1h\n")
        self.procs = []
        try:
            self._start(d, common, back, front)
        except BaseException:
            self.stop()
            raise

    def _start(self, d, common, back, front):
        for i, parts in enumerate((back, front)):
            cfg = os.path.join(d, f"h{i}.cfg")
            with open(cfg, "w") as f:
                f.write(common + "".join(parts))
            self.procs.append(subprocess.Popen(["haproxy", "-db", "-f", cfg],
                                               stdout=subprocess.DEVNULL,
                                               stderr=open(os.path.join(d, f"h{i}.log"), "w")))
        wait_for("haproxy", lambda: redis_ping(self.ports["redis"]))


def make_certs(d):
    def ossl(*args):
        subprocess.run(["openssl", *args], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, cwd=d)

    ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=bench-ca")
    for who in ("server", "client"):
        ossl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{who}.key", "-out", f"{who}.csr", "-subj", f"/CN={who}")
        ossl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", f"{who}.crt", "-days", "2")
        with open(os.path.join(d, f"{who}.pem"), "w") as out:
            for part in (f"{who}.crt", f"{who}.key"):
                with open(os.path.join(d, part)) as f:
                    out.write(f.read())


def skiff(*args, check=True, binary=None):
    return subprocess.run([binary or SKIFF, *args], check=check, capture_output=True, text=True)


class Skiff(Path):
    """skiff sites on this machine: connectors at the first, listeners at the last, each
    site linked to the previous one (`hops` routers in a line)."""

    def __init__(self, work, servers, transport, hops, binary=None, label="skiff"):
        kind = "TLS/TCP" if transport == "tls" else "QUIC"
        self.name = f"{label}, {hops} routers, {kind} links"
        self.binary = binary or SKIFF
        self.tag = "base" if binary else "new"
        self.procs = []
        try:
            self._start(work, servers, transport, hops)
        except BaseException:
            self.stop()
            raise

    def _start(self, work, servers, transport, hops):
        self.dirs = [os.path.join(work, f"skiff-{self.tag}-{transport}-{hops}-{i}")
                     for i in range(hops)]
        self.link_up_ms = []
        for i, d in enumerate(self.dirs):
            access = ["--enable-link-access", "--link-port", "0"] if i < hops - 1 else []
            skiff("site", "create", f"s{i}", *access, "--dir", d, binary=self.binary)
        self.ports = {}
        for svc, port in servers.items():
            skiff("connector", "create", svc, str(port), "--host", "127.0.0.1",
                  "--dir", self.dirs[0], binary=self.binary)
            lport = free_port()
            skiff("listener", "create", svc, str(lport), "--host", "127.0.0.1",
                  "--dir", self.dirs[-1], binary=self.binary)
            self.ports[svc] = lport
        env = dict(os.environ, SKIFF_LOG="warn")
        for d in self.dirs:
            self.procs.append(subprocess.Popen([self.binary, "site", "run", "--dir", d], env=env,
                                               stdout=subprocess.DEVNULL,
                                               stderr=open(d + ".log", "w")))
        for d in self.dirs:
            wait_for("skiff site", lambda: skiff("site", "status", "--dir", d,
                                                 check=False, binary=self.binary).returncode == 0)
        for i in range(1, hops):
            token = os.path.join(work, f"token-{self.tag}-{transport}-{hops}-{i}.yaml")
            skiff("token", "issue", token, "--dir", self.dirs[i - 1], binary=self.binary)
            start = time.monotonic()
            skiff("token", "redeem", token, "--transport", transport, "--dir", self.dirs[i],
                  binary=self.binary)

            def up(d=self.dirs[i]):
                links = json.loads(skiff("link", "list", "--output", "json", "--dir", d,
                                         binary=self.binary).stdout)
                return links and links[0]["status"] == "up"

            wait_for("the skiff link", up)
            self.link_up_ms.append((time.monotonic() - start) * 1000)
        wait_for("skiff listeners", lambda: redis_ping(self.ports["redis"])
                 and iperf_ok(self.ports["iperf"]))


def iperf_ok(port):
    r = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-n", "1M", "-J"],
                       capture_output=True, text=True, timeout=20)
    return r.returncode == 0


def iperf(port, streams, seconds):
    r = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds),
                        "-P", str(streams), "-J"], capture_output=True, text=True,
                       timeout=seconds + 30)
    if r.returncode != 0:
        raise RuntimeError(f"iperf3 -P {streams} failed: {r.stdout[-400:]} {r.stderr[-400:]}")
    end = json.loads(r.stdout)["end"]["sum_received"]
    return end["bits_per_second"] / 1e9, end["bytes"]


def redis_bench(port, clients, requests, test="get", keepalive=True, cpu=None):
    cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", str(clients),
           "-n", str(requests), "-t", test, "--csv"]
    if not keepalive:
        cmd += ["-k", "0"]
    if cpu is not None:
        cmd = ["taskset", "-c", cpu] + cmd
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    rows = [line.replace('"', "").split(",") for line in r.stdout.splitlines()]
    rows = [row for row in rows if len(row) >= 5 and row[0] != "test"]
    if r.returncode != 0 or not rows:
        raise RuntimeError(f"redis-benchmark failed: {r.stdout[-400:]} {r.stderr[-400:]}")
    rps, p50_ms = float(rows[0][1]), float(rows[0][4])
    return rps, p50_ms * 1000


def measure(path, args, redis_pid):
    """One round of every metric on one path."""
    ports, pids = path.ports, path.pids()
    m = {}
    cpu0 = cpu_seconds(pids)
    m["iperf1"], b1 = iperf(ports["iperf"], 1, args.seconds)
    m["iperf8"], b8 = iperf(ports["iperf"], 8, args.seconds)
    cpu1 = cpu_seconds(pids)
    m["cpu_gb"] = (cpu1 - cpu0) / ((b1 + b8) / 1e9) if pids else None
    m["redis50"], _ = redis_bench(ports["redis"], 50, args.requests)
    pin(pids + [redis_pid], "0")
    try:
        _, m["p50"] = redis_bench(ports["redis"], 1, args.pinned_requests, cpu="0")
    finally:
        pin(pids + [redis_pid], ALL_CPUS)
    cpu2 = cpu_seconds(pids)
    m["conn"], _ = redis_bench(ports["redis"], 50, args.connections, test="ping_inline",
                               keepalive=False)
    m["cpu_conn"] = (cpu_seconds(pids) - cpu2) / args.connections * 1e6 if pids else None
    return m


def idle_flows(path, holder, n):
    """RSS growth per proxy process, per idle connection, with `n` connections held open."""
    pids = path.pids()
    n = min(n, path.max_idle or n)
    holder.drop_all()
    time.sleep(0.5)
    before = [status_kib(p, "VmRSS") for p in pids]
    clients = []
    for _ in range(n):
        s = socket.socket()
        s.connect(("127.0.0.1", path.ports["hold"]))
        clients.append(s)
    wait_for(f"{n} held connections", lambda: holder.held() >= n, timeout=60)
    time.sleep(1.0)
    after = [status_kib(p, "VmRSS") for p in pids]
    for s in clients:
        s.close()
    holder.drop_all()
    time.sleep(0.5)
    return max((a - b) * 1024 / n for a, b in zip(after, before))


def fmt_ratio(v, base, unit_fmt):
    if v is None:
        return "-"
    if base:
        return f"{v / base:.2f} ({unit_fmt(v)})"
    return unit_fmt(v)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=4, help="iperf3 run length")
    ap.add_argument("--requests", type=int, default=200000, help="redis GET, 50 clients")
    ap.add_argument("--pinned-requests", type=int, default=20000, help="redis GET, 1 client")
    ap.add_argument("--connections", type=int, default=10000, help="new-connection run")
    ap.add_argument("--idle-flows", type=int, default=10000,
                    help="connections held open to measure memory per idle flow; 0 skips it")
    ap.add_argument("--holder", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--skiff", default=None,
                    help="the skiff binary to measure (default: target/release/skiff)")
    ap.add_argument("--baseline", default=None,
                    help="another skiff binary (e.g. the previous release) measured in the same "
                         "run, as paths tls-base and quic-base")
    ap.add_argument("--paths", default="direct,haproxy,tls,quic,tls3",
                    help="comma-separated subset of direct,haproxy,tls,quic,tls3 (and "
                         "tls-base,quic-base with --baseline)")
    args = ap.parse_args()
    if args.skiff:
        globals()["SKIFF"] = os.path.abspath(args.skiff)
    if args.holder:
        return holder_main()

    for tool in ("iperf3", "redis-server", "redis-benchmark", "haproxy", "openssl", "taskset"):
        if not shutil.which(tool):
            raise SystemExit(f"bench: {tool} is missing; install it with: apt-get install "
                             "iperf3 redis-server redis-tools haproxy openssl util-linux")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.idle_flows + 1024
    if hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
        except (ValueError, OSError):
            raise SystemExit(f"bench: need {want} file descriptors (hard limit {hard}); "
                             "run as root or lower --idle-flows")
    else:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))

    # SIGTERM (e.g. `timeout`) stops everything the same way as an error does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    work = tempfile.mkdtemp(prefix="skiff-bench-")
    servers, paths, holder = [], [], None
    try:
        iperf_port, redis_port = free_port(), free_port()
        servers.append(subprocess.Popen(["iperf3", "-s", "-p", str(iperf_port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind",
                                  "127.0.0.1", "--save", "", "--appendonly", "no",
                                  "--maxclients", "20000"], stdout=subprocess.DEVNULL)
        servers.append(redis)
        holder = Holder()
        wait_for("redis-server", lambda: redis_ping(redis_port))
        wait_for("iperf3 server", lambda: iperf_ok(iperf_port))
        subprocess.run(["redis-cli", "-p", str(redis_port), "set", "key:__rand_int__", "x"],
                       stdout=subprocess.DEVNULL)
        svc = {"iperf": iperf_port, "redis": redis_port, "hold": holder.port}
        wanted = args.paths.split(",")
        makers = {
            "direct": lambda: Direct(svc),
            "haproxy": lambda: HAProxy(work, svc),
            "tls": lambda: Skiff(work, svc, "tls", 2),
            "quic": lambda: Skiff(work, svc, "quic", 2),
            "tls3": lambda: Skiff(work, svc, "tls", 3),
            "tls-base": lambda: Skiff(work, svc, "tls", 2, args.baseline, "skiff baseline"),
            "quic-base": lambda: Skiff(work, svc, "quic", 2, args.baseline, "skiff baseline"),
        }
        for key in wanted:
            log(f"bench: starting {key}")
            paths.append(makers[key]())  # a failed start stops its own processes
        time.sleep(1.0)
        idle_rss = {p.name: [status_kib(pid, "VmRSS") for pid in p.pids()] for p in paths}
        idle_anon = {p.name: [status_kib(pid, "RssAnon") for pid in p.pids()] for p in paths}
        results = {p.name: [] for p in paths}
        for r in range(args.rounds):
            order = paths if r % 2 == 0 else list(reversed(paths))
            for p in order:
                log(f"bench: round {r + 1}/{args.rounds}: {p.name}")
                results[p.name].append(measure(p, args, redis.pid))
        peak = {p.name: [status_kib(pid, "VmHWM") for pid in p.pids()] for p in paths}
        per_flow = {}
        for p in paths:
            # --idle-flows 0 skips the measurement (its column shows "-").
            if p.pids() and args.idle_flows > 0:
                log(f"bench: {args.idle_flows} idle flows: {p.name}")
                per_flow[p.name] = idle_flows(p, holder, args.idle_flows)
        report(args, paths, results, idle_rss, idle_anon, peak, per_flow,
               time.monotonic() - started)
    finally:
        for stop in [p.stop for p in paths] + ([holder.stop] if holder else []) + [
                s.kill for s in servers]:
            try:
                stop()
            except Exception as e:  # keep stopping the rest
                log(f"bench: cleanup: {e}")
        for s in servers:
            s.wait()
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)


def report(args, paths, results, idle_rss, idle_anon, peak, per_flow, elapsed):
    def med(name, key):
        vals = [m[key] for m in results[name] if m[key] is not None]
        return statistics.median(vals) if vals else None

    direct = next((p.name for p in paths if isinstance(p, Direct)), None)
    print(f"Loopback, {os.cpu_count()} CPUs, {args.rounds} alternating rounds, medians; "
          "throughput/rate columns are ratios to direct (absolute in brackets), latency in us.\n")
    print("| path | iperf3 1 stream | 8 streams | redis GET, 50 clients | GET p50, 1 client, "
          "pinned | new conn/s | CPU s/GB | CPU us/conn | peak RSS per process | idle RSS "
          "| per idle flow |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for p in paths:
        n = p.name
        base = (lambda k: med(direct, k)) if direct and n != direct else (lambda k: None)
        cells = [
            fmt_ratio(med(n, "iperf1"), base("iperf1"), lambda v: f"{v:.1f} Gbit/s"),
            fmt_ratio(med(n, "iperf8"), base("iperf8"), lambda v: f"{v:.1f} Gbit/s"),
            fmt_ratio(med(n, "redis50"), base("redis50"), lambda v: f"{v / 1000:.0f}k rps"),
            f"{med(n, 'p50'):.0f} us" + (f" ({med(n, 'p50') / base('p50'):.1f}x)"
                                        if base("p50") else ""),
            fmt_ratio(med(n, "conn"), base("conn"), lambda v: f"{v / 1000:.1f}k"),
            f"{med(n, 'cpu_gb'):.2f}" if med(n, "cpu_gb") is not None else "-",
            f"{med(n, 'cpu_conn'):.0f}" if med(n, "cpu_conn") is not None else "-",
            mib_range(peak[n]),
            mib_range(idle_rss[n]) + (f" ({mib_range(idle_anon[n])} private)"
                                      if idle_anon[n] else ""),
            f"{per_flow[n] / 1024:.1f} KiB" if n in per_flow else "-",
        ]
        print(f"| {n} | " + " | ".join(cells) + " |")
    ups = [ms for p in paths for ms in getattr(p, "link_up_ms", [])]
    if ups:
        print(f"\nskiff link establishment (`token redeem` to link up, including the "
              f"redemption round trip and CLI start): {min(ups):.0f}-{max(ups):.0f} ms "
              f"over {len(ups)} links.")
    print(f"\nPer-round figures (JSON): {json.dumps(results)}")
    print(f"\nWhole run: {elapsed:.0f} s.")


def mib_range(kibs):
    if not kibs:
        return "-"
    lo, hi = f"{min(kibs) / 1024:.1f}", f"{max(kibs) / 1024:.1f}"
    return f"{lo} MiB" if lo == hi else f"{lo}-{hi} MiB"


if __name__ == "__main__":
    main()
