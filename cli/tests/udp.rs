//! UDP services across sites, end to end with real programs and real `skiff site run`
//! processes: `dig` asks a real dnsmasq (on loopback, in its own site) through a UDP listener
//! at another site, over a QUIC link and over a TLS/TCP link (100 queries in a row, NXDOMAIN
//! for an unknown name, a TXT answer of ~1.8 KB that is larger than a QUIC datagram); and
//! 10 000 datagrams from 50 client ports cross two hops (west - mid - east) to a UDP echo
//! server: every reply must reach the client that sent it, byte for byte, and every datagram
//! that got no reply must be accounted for by the routers' counters in /metrics.
//!
//! The DNS tests skip (saying why) when dnsmasq or dig is missing, unless
//! `SKIFF_REQUIRE_UDP=1` (CI), where they fail.

mod common;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{Site, admin_text, free_port, is_link, link_over, ok};

/// The address dnsmasq gives `a.skiff.test` and every name under it.
const DNS_ANSWER: &str = "10.9.8.7";
/// The strings of the TXT record of `big.skiff.test`: 7 x 250 characters, ~1.8 KB on the
/// wire, more than a QUIC datagram can carry on loopback (1 452 bytes at most).
const TXT_STRINGS: usize = 7;

/// dnsmasq: on the PATH, or in /usr/sbin (not on a normal user's PATH).
fn dnsmasq_bin() -> &'static str {
    let on_path = Command::new("dnsmasq")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if on_path {
        "dnsmasq"
    } else {
        "/usr/sbin/dnsmasq"
    }
}

/// Whether `prog ARG` runs; if not, skips the test (returns false) or, with
/// `SKIFF_REQUIRE_UDP=1`, fails it.
fn have(prog: &str, arg: &str, package: &str) -> bool {
    let runs = Command::new(prog)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if runs {
        return true;
    }
    let why = format!("{prog} is not installed (apt-get install {package})");
    if std::env::var("SKIFF_REQUIRE_UDP").as_deref() == Ok("1") {
        panic!("SKIFF_REQUIRE_UDP=1 but {why}");
    }
    eprintln!("SKIPPED: {why}");
    false
}

/// One TXT string of `big.skiff.test`: string `i` is 250 times the letter `a + i`.
fn txt_string(i: usize) -> String {
    char::from(b'a' + i as u8).to_string().repeat(250)
}

/// A dnsmasq in the foreground (`--no-daemon`: no fork, no pid file, no change of user) on a
/// free loopback port, authoritative for `skiff.test`; killed (by its PID, our child) on drop.
struct Dnsmasq {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Dnsmasq {
    /// Starts it and waits until it answers; `None` when dnsmasq or dig is missing (skip).
    fn start() -> Option<Dnsmasq> {
        if !have(dnsmasq_bin(), "--version", "dnsmasq-base") || !have("dig", "-v", "bind9-dnsutils")
        {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let txt: Vec<String> = (0..TXT_STRINGS).map(txt_string).collect();
        let log = std::fs::File::create(dir.path().join("dnsmasq.log")).unwrap();
        let child = Command::new(dnsmasq_bin())
            .arg("--no-daemon")
            .arg("--conf-file=/dev/null")
            .arg("--no-resolv")
            .arg("--no-hosts")
            .arg(format!("--port={port}"))
            .arg("--listen-address=127.0.0.1")
            .arg("--bind-interfaces")
            // a.skiff.test and below: one address; anything else in skiff.test: NXDOMAIN.
            .arg(format!("--address=/a.skiff.test/{DNS_ANSWER}"))
            .arg("--local=/skiff.test/")
            .arg(format!("--txt-record=big.skiff.test,{}", txt.join(",")))
            // dnsmasq 2.90 caps UDP answers at 1 232 bytes unless told otherwise.
            .arg("--edns-packet-max=4096")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn dnsmasq");
        let mut d = Dnsmasq {
            port,
            child: Some(child),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = dig(port, &["+short", "a.skiff.test"]);
            if out.trim() == DNS_ANSWER {
                return Some(d);
            }
            if let Some(s) = d.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("dnsmasq exited with {s}: {}", d.log());
            }
            assert!(
                Instant::now() < deadline,
                "dnsmasq does not answer on port {port}: {out}\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dnsmasq.log")).unwrap_or_default()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `dig @127.0.0.1 -p PORT +tries=1 +time=2 ARGS`: its standard output (and error, if any).
fn dig(port: u16, args: &[&str]) -> String {
    let out = Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), "+tries=1", "+time=2"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run dig");
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    s
}

/// The port of a listener address `127.0.0.1:PORT`.
fn port_of(addr: &str) -> u16 {
    let a: SocketAddr = addr.parse().unwrap_or_else(|e| panic!("{addr}: {e}"));
    assert_ne!(a.port(), 0, "the listener shows port 0: {addr}");
    a.port()
}

/// The sum of the series of metric `name` whose labels include all of `labels`, in
/// Prometheus text.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, lbl) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let all = labels.iter().all(|(k, v)| {
                let want = format!("{k}=\"{v}\"");
                lbl.split(',').any(|kv| kv == want)
            });
            if !all {
                return None;
            }
            value.parse::<f64>().ok()
        })
        .sum::<f64>() as u64
}

/// dnsmasq at east (connector `dns`, type udp), a UDP listener `dns` at west, one link from
/// west to east over `transport`; dig at west's listener.
fn dns_across(transport: &str) {
    let Some(dns) = Dnsmasq::start() else { return };
    let mut east = Site::create("east", true);
    let mut west = Site::create("west", false);
    let dport = dns.port.to_string();
    ok(&[
        "connector",
        "create",
        "dns",
        &dport,
        "--host",
        "127.0.0.1",
        "--type",
        "udp",
        "--dir",
        east.d(),
    ]);
    ok(&[
        "listener",
        "create",
        "dns",
        "0",
        "--host",
        "127.0.0.1",
        "--type",
        "udp",
        "--dir",
        west.d(),
    ]);
    east.start();
    west.start();
    link_over(&west, &east, transport);
    let up = west.wait_link(Duration::from_secs(15), "up to east", is_link("up", "east"));
    assert_eq!(up["transport"], transport, "{up:#}");
    let port = port_of(&west.wait_listener_active("dns", Duration::from_secs(15)));

    // One query, the short answer.
    let one = dig(port, &["+short", "a.skiff.test"]);
    assert_eq!(
        one.trim(),
        DNS_ANSWER,
        "dig through skiff: {one}\n{}",
        west.log()
    );

    // 100 queries in a row (one dig, batch file; a new source port, so a new UDP flow, for
    // each), every one answered with its own name.
    let batch = dns.dir.path().join("batch");
    let names: Vec<String> = (0..100).map(|i| format!("q{i}.a.skiff.test")).collect();
    std::fs::write(&batch, names.join("\n") + "\n").unwrap();
    let t = Instant::now();
    let out = dig(port, &["+noall", "+answer", "-f", batch.to_str().unwrap()]);
    let took = t.elapsed();
    let answered: Vec<&String> = names
        .iter()
        .filter(|n| {
            out.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.first() == Some(&format!("{n}.").as_str())
                    && f.get(3) == Some(&"A")
                    && f.get(4) == Some(&DNS_ANSWER)
            })
        })
        .collect();
    assert_eq!(
        answered.len(),
        100,
        "{transport}: {} of 100 queries answered:\n{out}",
        answered.len()
    );
    eprintln!("{transport}: 100 of 100 dig queries answered in {took:?}");

    // A name dnsmasq does not know: its NXDOMAIN comes back (a real DNS answer, not any reply).
    let nx = dig(port, &["nope.skiff.test"]);
    assert!(nx.contains("status: NXDOMAIN"), "{transport}: {nx}");

    // A TXT answer of ~1.8 KB, larger than a QUIC datagram: whole, not truncated.
    let big = dig(port, &["+bufsize=4096", "+ignore", "TXT", "big.skiff.test"]);
    let quoted: Vec<String> = (0..TXT_STRINGS)
        .map(|i| format!("\"{}\"", txt_string(i)))
        .collect();
    assert!(
        big.contains(&quoted.join(" ")),
        "{transport}: the TXT answer is not whole: {big}"
    );
    assert!(big.contains("status: NOERROR"), "{transport}: {big}");
    let flags = big
        .lines()
        .find(|l| l.starts_with(";; flags:"))
        .unwrap_or_else(|| panic!("no flags line: {big}"));
    assert!(
        !flags.contains(" tc"),
        "{transport}: truncated answer: {big}"
    );
    let size: usize = big
        .lines()
        .find_map(|l| l.strip_prefix(";; MSG SIZE  rcvd: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no MSG SIZE line: {big}"));
    assert!(
        size > 1600,
        "{transport}: answer of {size} bytes only: {big}"
    );
    eprintln!("{transport}: TXT answer of {size} bytes came back whole");

    // Over QUIC that answer went whole on the flow's stream at east (the egress), counted as
    // oversize; over TLS/TCP everything goes on the stream and nothing is "oversize".
    let m = admin_text(&east, "/metrics");
    let oversize = metric(&m, "skiff_udp_oversize_total", &[("key", "dns")]);
    if transport == "quic" {
        assert!(oversize >= 1, "no oversize datagram counted at east:\n{m}");
    } else {
        assert_eq!(oversize, 0, "oversize counted over TLS/TCP:\n{m}");
    }
    // Nothing was lost on the way: no drop at either site.
    for s in [&east, &west] {
        let m = admin_text(s, "/metrics");
        let dropped = metric(&m, "skiff_udp_dropped_total", &[]);
        assert_eq!(dropped, 0, "{transport}: drops at {}:\n{m}", s.name);
    }
    let back = metric(
        &admin_text(&west, "/metrics"),
        "skiff_udp_datagrams_total",
        &[("key", "dns"), ("role", "ingress"), ("direction", "back")],
    );
    assert!(
        back >= 103,
        "{transport}: only {back} answers counted at west's ingress"
    );
    eprintln!("{transport}: oversize at east {oversize}; answers sent to dig by west {back}");
    east.stop();
    west.stop();
}

#[test]
fn dns_across_sites_over_quic() {
    dns_across("quic");
}

#[test]
fn dns_across_sites_over_tls() {
    dns_across("tls");
}

/// A UDP echo server on loopback (a thread): each datagram goes back to its sender; counts
/// what it received and sent. Stopped and joined on drop.
struct UdpEcho {
    port: u16,
    received: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEcho {
    fn start() -> UdpEcho {
        // A 4 MiB receive buffer (as far as net.core.rmem_max allows): the routers deliver
        // replies in bursts, and the echo thread shares two cores with them.
        let s2 = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .unwrap();
        let _ = s2.set_recv_buffer_size(4 << 20);
        s2.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        let sock: UdpSocket = s2.into();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let port = sock.local_addr().unwrap().port();
        let received = Arc::new(AtomicU64::new(0));
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s, st) = (received.clone(), sent.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while !st.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    r.fetch_add(1, Ordering::Relaxed);
                    if sock.send_to(&buf[..n], from).is_ok() {
                        s.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        UdpEcho {
            port,
            received,
            sent,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The kernel's count of datagrams dropped at the UDP socket bound to 127.0.0.1:`port` (the
/// `drops` column of /proc/net/udp: its receive buffer was full).
fn kernel_drops(port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&local.as_str()))
            .then(|| f.last()?.parse().ok())
            .flatten()
    })
}

/// The kernel's drops at every UDP socket of process `pid` (its QUIC link sockets, its
/// listeners' and connectors' sockets): /proc/net/udp rows whose inode is one of the
/// process's open sockets.
fn process_kernel_drops(pid: u32) -> u64 {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| {
                let link = std::fs::read_link(e.ok()?.path()).ok()?;
                let l = link.to_str()?;
                Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
            })
            .collect()
        })
        .unwrap_or_default();
    let table = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retr uid timeout inode ref pointer drops
            (inodes.contains(*f.get(9)?)).then(|| f.last()?.parse::<u64>().ok())?
        })
        .sum()
}

const CLIENTS: u32 = 50;
const PER_CLIENT: u32 = 200;
/// Datagrams a client has on the way at most (its window).
const WINDOW: usize = 20;
/// A datagram without a reply after this long is given up (it may still come, late).
const LOST_AFTER: Duration = Duration::from_secs(2);

/// Datagram `seq` of client `client`: its index, the sequence number, the length, then a
/// pattern; 16 to 1 200 bytes, varying.
fn payload(client: u32, seq: u32) -> Vec<u8> {
    let len = 16 + ((client as usize * 7919 + seq as usize * 104_729) % 1185);
    let mut p = Vec::with_capacity(len);
    p.extend_from_slice(&client.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(len as u32).to_be_bytes());
    p.extend_from_slice(b"skif");
    for i in 16..len {
        p.push((client as usize * 31 + seq as usize * 17 + i) as u8);
    }
    p
}

/// What one client saw.
#[derive(Default, Debug)]
struct ClientTally {
    sent: u64,
    replied: u64,
    /// Replies that came after the client had given them up (counted in `replied` too).
    late: u64,
    /// Replies carrying another client's datagram.
    wrong_client: u64,
    /// Replies not byte-identical to what the client sent.
    corrupt: u64,
    duplicate: u64,
    /// Datagrams from an address other than the listener's.
    wrong_source: u64,
}

/// One client: its own socket (its own port), `PER_CLIENT` datagrams at most `WINDOW` on the
/// way, each reply checked; then 500 ms more for late replies.
fn client(idx: u32, to: SocketAddr, deadline: Instant) -> ClientTally {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut t = ClientTally::default();
    let mut outstanding: HashMap<u32, Instant> = HashMap::new();
    let mut got = vec![false; PER_CLIENT as usize];
    let mut next = 0u32;
    let mut buf = [0u8; 4096];
    let mut drain_until: Option<Instant> = None;
    loop {
        while drain_until.is_none() && next < PER_CLIENT && outstanding.len() < WINDOW {
            sock.send_to(&payload(idx, next), to)
                .unwrap_or_else(|e| panic!("client {idx}: send: {e}"));
            outstanding.insert(next, Instant::now());
            t.sent += 1;
            next += 1;
        }
        let now = Instant::now();
        outstanding.retain(|_, at| now.duration_since(*at) < LOST_AFTER);
        if drain_until.is_none()
            && ((next == PER_CLIENT && outstanding.is_empty()) || now > deadline)
        {
            drain_until = Some(now + Duration::from_millis(500));
        }
        if drain_until.is_some_and(|d| now > d) {
            return t;
        }
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => panic!("client {idx}: recv: {e}"),
        };
        if from != to {
            t.wrong_source += 1;
            continue;
        }
        let d = &buf[..n];
        if n < 16 {
            t.corrupt += 1;
            continue;
        }
        let c = u32::from_be_bytes(d[0..4].try_into().unwrap());
        let seq = u32::from_be_bytes(d[4..8].try_into().unwrap());
        if c != idx {
            t.wrong_client += 1;
            continue;
        }
        if seq >= PER_CLIENT || d != payload(idx, seq).as_slice() {
            t.corrupt += 1;
            continue;
        }
        if got[seq as usize] {
            t.duplicate += 1;
            continue;
        }
        got[seq as usize] = true;
        t.replied += 1;
        if outstanding.remove(&seq).is_none() {
            t.late += 1;
        }
    }
}

/// The datagram counts of `key` at one site, from its /metrics.
#[derive(Debug, Default, Clone, PartialEq)]
struct SiteCounts {
    forward: u64,
    back: u64,
    dropped: u64,
    /// Drops by reason (non-zero ones), for the account.
    reasons: Vec<(String, u64)>,
    oversize: u64,
}

fn site_counts(site: &Site, key: &str, role: &str) -> SiteCounts {
    let m = admin_text(site, "/metrics");
    let count = |dir: &str| {
        metric(
            &m,
            "skiff_udp_datagrams_total",
            &[("key", key), ("role", role), ("direction", dir)],
        )
    };
    let mut reasons = Vec::new();
    for r in [
        "no-route",
        "flow-limit",
        "congested",
        "closed",
        "too-large",
        "socket-error",
        "no-flow",
        "socket-buffer",
    ] {
        let n = metric(&m, "skiff_udp_dropped_total", &[("reason", r)]);
        if n > 0 {
            reasons.push((r.to_string(), n));
        }
    }
    SiteCounts {
        forward: count("forward"),
        back: count("back"),
        // Every key's drops (a link's no-flow drops are under the key ""): this test's
        // datagrams are the only ones there are.
        dropped: metric(&m, "skiff_udp_dropped_total", &[]),
        reasons,
        oversize: metric(&m, "skiff_udp_oversize_total", &[("key", key)]),
    }
}

/// 10 000 datagrams from 50 client ports, west - mid - east, links over `transport`.
fn two_hops(transport: &str) {
    let echo = UdpEcho::start();
    let mut east = Site::create("east", true);
    let mut mid = Site::create("mid", true);
    let mut west = Site::create("west", false);
    let eport = echo.port.to_string();
    ok(&[
        "connector",
        "create",
        "udp-echo",
        &eport,
        "--host",
        "127.0.0.1",
        "--type",
        "udp",
        "--dir",
        east.d(),
    ]);
    ok(&[
        "listener",
        "create",
        "udp-echo",
        "0",
        "--host",
        "127.0.0.1",
        "--type",
        "udp",
        "--dir",
        west.d(),
    ]);
    east.start();
    mid.start();
    west.start();
    link_over(&mid, &east, transport);
    link_over(&west, &mid, transport);
    mid.wait_link(Duration::from_secs(15), "up to east", is_link("up", "east"));
    west.wait_link(Duration::from_secs(15), "up to mid", is_link("up", "mid"));
    let listener = west.wait_listener_active("udp-echo", Duration::from_secs(20));
    port_of(&listener);
    let addr: SocketAddr = listener.parse().unwrap();

    let start = Instant::now();
    let deadline = start + Duration::from_secs(90);
    let clients: Vec<JoinHandle<ClientTally>> = (0..CLIENTS)
        .map(|i| std::thread::spawn(move || client(i, addr, deadline)))
        .collect();
    let tallies: Vec<ClientTally> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let took = start.elapsed();
    let sum = |f: fn(&ClientTally) -> u64| tallies.iter().map(f).sum::<u64>();
    let (sent, replied, late) = (sum(|t| t.sent), sum(|t| t.replied), sum(|t| t.late));
    let (wrong_client, corrupt) = (sum(|t| t.wrong_client), sum(|t| t.corrupt));
    let (duplicate, wrong_source) = (sum(|t| t.duplicate), sum(|t| t.wrong_source));

    // Counters settle (a reply may still be on its way when the clients stop): read until two
    // reads a quarter of a second apart agree.
    let read = || {
        (
            site_counts(&west, "udp-echo", "ingress"),
            site_counts(&mid, "udp-echo", "transit"),
            site_counts(&east, "udp-echo", "egress"),
            echo.received.load(Ordering::Relaxed),
            echo.sent.load(Ordering::Relaxed),
        )
    };
    let mut counts = read();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(250));
        let again = read();
        if again == counts {
            break;
        }
        counts = again;
    }
    let (w, m, e, echo_rx, echo_tx) = counts;
    let echo_kernel_drops = kernel_drops(echo.port);
    let router_kernel_drops: Vec<(&str, u64)> = [("west", &west), ("mid", &mid), ("east", &east)]
        .into_iter()
        .map(|(n, s)| (n, process_kernel_drops(s.pid())))
        .collect();

    let mut account = String::new();
    let _ = writeln!(
        account,
        "{transport}, 2 hops: {CLIENTS} clients x {PER_CLIENT} datagrams in {took:.2?}\n\
         clients: sent {sent}, replied {replied} (late {late}), no reply {}; wrong client \
         {wrong_client}, corrupt {corrupt}, duplicate {duplicate}, wrong source {wrong_source}",
        sent - replied
    );
    let _ = writeln!(
        account,
        "forward: clients {sent} -> west ingress passed on {} -> mid transit passed on {} -> \
         east egress sent to the echo {} -> echo received {}",
        w.forward, m.forward, e.forward, echo_rx
    );
    let _ = writeln!(
        account,
        "back:    echo sent {echo_tx} -> east egress passed on {} -> mid transit passed on {} \
         -> west ingress sent to clients {} -> clients received {replied}",
        e.back, m.back, w.back
    );
    for (name, c) in [("west", &w), ("mid", &m), ("east", &e)] {
        let _ = writeln!(
            account,
            "{name}: dropped {} {:?}, oversize {}",
            c.dropped, c.reasons, c.oversize
        );
    }
    // Where the datagrams without a reply were lost, step by step.
    let steps = [
        ("clients -> west ingress (west's drops)", sent, w.forward),
        ("west -> mid (link, mid's drops)", w.forward, m.forward),
        ("mid -> east (link, east's drops)", m.forward, e.forward),
        ("east -> echo (loopback)", e.forward, echo_rx),
        ("echo (its send errors)", echo_rx, echo_tx),
        ("echo -> east egress (east's drops)", echo_tx, e.back),
        ("east -> mid (link, mid's drops)", e.back, m.back),
        ("mid -> west (link, west's drops)", m.back, w.back),
        ("west ingress -> clients (loopback)", w.back, replied),
    ];
    for (what, before, after) in steps {
        let _ = writeln!(account, "  lost {what}: {}", before as i64 - after as i64);
    }
    let _ = writeln!(
        account,
        "the kernel's drops (/proc/net/udp) at the echo server's socket: {echo_kernel_drops:?}, \
         at each router's UDP sockets (its QUIC link sockets too): {router_kernel_drops:?}"
    );
    // Loss inside skiff: all but what the echo server's socket lost.
    let inside = (sent as i64 - e.forward as i64) + (echo_tx as i64 - w.back as i64);
    let drops = (w.dropped + m.dropped + e.dropped) as i64;
    let _ = writeln!(
        account,
        "inside skiff: lost {inside}, of which counted as drops {drops}, seen only as \
         differences between routers {}",
        inside - drops
    );
    let short: Vec<String> = tallies
        .iter()
        .enumerate()
        .filter(|(_, t)| t.replied < t.sent)
        .map(|(i, t)| format!("{i}: {}/{}", t.replied, t.sent))
        .collect();
    let _ = writeln!(
        account,
        "clients without every reply (replied/sent): {}",
        short.join(", ")
    );
    eprintln!("{account}");
    let warnings = |s: &Site| -> String {
        s.log()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    };
    let _ = writeln!(
        account,
        "warnings:\nwest:\n{}\nmid:\n{}\neast:\n{}",
        warnings(&west),
        warnings(&mid),
        warnings(&east)
    );

    assert_eq!(sent, u64::from(CLIENTS * PER_CLIENT), "{account}");
    assert_eq!(
        wrong_client, 0,
        "replies reached the wrong client\n{account}"
    );
    assert_eq!(corrupt, 0, "replies not byte-identical\n{account}");
    assert_eq!(duplicate, 0, "duplicated replies\n{account}");
    assert_eq!(wrong_source, 0, "replies from another address\n{account}");
    // No router passes on more than it got (no duplicates, no ghosts): every step >= 0.
    for (what, before, after) in steps {
        assert!(after <= before, "more after {what} than before\n{account}");
    }
    // Nothing vanishes uncounted inside the ingress (the kernel's drops at the listener's
    // socket are its `socket-buffer` drops), nor between the ingress and the clients (each
    // client has at most 20 datagrams on the way: its socket never overflows).
    assert!(
        sent - w.forward <= w.dropped,
        "west passed on {} of {sent} client datagrams but counted only {} drops\n{account}",
        w.forward,
        w.dropped
    );
    assert_eq!(
        w.back, replied,
        "replies sent by west never reached the clients\n{account}"
    );
    if transport == "tls" {
        // TLS/TCP links lose nothing: every datagram lost inside skiff was dropped by a
        // router that counted it (the kernel's drops at skiff's sockets included).
        assert_eq!(
            inside, drops,
            "datagrams lost inside skiff over TLS/TCP without a counted drop\n{account}"
        );
    } else {
        // Over QUIC a link may lose datagrams (the network's loss, here loopback's); every
        // drop a router counted is one of the datagrams lost inside skiff, and the rest are
        // the differences between one router passing them on and the next.
        assert!(drops <= inside, "more drops than losses\n{account}");
        // Loss that no router counted happened on a link: the kernel dropped QUIC packets at
        // a router's UDP socket (a full receive buffer), never silently inside a router.
        let kernel: u64 = router_kernel_drops.iter().map(|(_, n)| n).sum();
        assert!(
            inside == drops || kernel > 0,
            "{} datagrams lost inside skiff with neither a counted drop nor a kernel drop\n\
             {account}",
            inside - drops
        );
    }
    // The path works: skiff loses little on loopback (the echo server's own losses aside).
    // Measured on a loaded 2-core machine: nothing over either link since the QUIC sockets
    // ask for 4 MiB buffers (5-9 % over QUIC before, all of it the kernel's drops at the
    // routers' QUIC sockets); 2 % leaves room for a busier machine.
    assert!(
        inside * 50 <= sent as i64,
        "{inside} of {sent} datagrams lost inside skiff\n{account}"
    );
    east.stop();
    mid.stop();
    west.stop();
}

#[test]
fn datagrams_two_hops_over_quic() {
    two_hops("quic");
}

#[test]
fn datagrams_two_hops_over_tls() {
    two_hops("tls");
}

/// The test's own parts work without skiff: the echo answers each client on its port, and
/// the metric parser reads labelled series.
#[test]
fn echo_and_metric_parser() {
    let echo = UdpEcho::start();
    let to: SocketAddr = format!("127.0.0.1:{}", echo.port).parse().unwrap();
    let t = client(7, to, Instant::now() + Duration::from_secs(20));
    assert_eq!((t.sent, t.replied, t.corrupt), (200, 200, 0), "{t:?}");
    let m = "# HELP x\nskiff_udp_datagrams_total{key=\"k\",role=\"ingress\",direction=\"back\"} 5\n\
             skiff_udp_datagrams_total{key=\"k\",role=\"egress\",direction=\"back\"} 7\n";
    assert_eq!(metric(m, "skiff_udp_datagrams_total", &[("key", "k")]), 12);
    assert_eq!(
        metric(m, "skiff_udp_datagrams_total", &[("role", "egress")]),
        7
    );
}
