//! Abuse of an HTTP listener (docs/http.md, Safety) through the real `skiff` binary: the request
//! smuggling corpus sent raw against a recording backend, 500 slowloris connections cut at the
//! header timeout while normal requests keep their latency, and a 10 000-stream rapid-reset
//! burst (CVE-2023-44487) that leaves the router's CPU and memory bounded.

mod common;
#[path = "http/support.rs"]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{fd_count, rss_kib};
use support::*;

/// What docs/http.md promises for a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A well-formed request: answered by the backend, seen there once.
    Pass,
    /// Refused with `400 Bad Request`.
    Refuse,
    /// Refused with `431` or `400` (the head is over 64 KiB).
    TooLarge,
    /// Normalised: answered, seen once at the backend.
    Normalise,
}

/// A request the recorder must never see: it hides in the bytes of another one.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: web\r\n\r\n";

fn corpus() -> Vec<(&'static str, Vec<u8>, Expect)> {
    use Expect::*;
    let s = SMUGGLED;
    let post = |headers: &str, body: &str| {
        format!("POST /case HTTP/1.1\r\nHost: web\r\n{headers}Connection: close\r\n\r\n{body}")
            .into_bytes()
    };
    let mut big = b"GET /case HTTP/1.1\r\nHost: web\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 70 * 1024));
    big.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    vec![
        (
            "plain GET (control)",
            b"GET /case HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n".to_vec(),
            Pass,
        ),
        (
            "chunked body holding a request (control)",
            post(
                "Transfer-Encoding: chunked\r\n",
                &format!("{:x}\r\n{s}\r\n0\r\n\r\n", s.len()),
            ),
            Pass,
        ),
        (
            "Content-Length with Transfer-Encoding",
            post(
                "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
                &format!("0\r\n\r\n{s}"),
            ),
            Normalise,
        ),
        (
            "Transfer-Encoding with Content-Length",
            post(
                "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
                &format!("{:x}\r\n{s}\r\n0\r\n\r\n", s.len()),
            ),
            Normalise,
        ),
        (
            "two different Content-Lengths",
            post(
                &format!("Content-Length: 0\r\nContent-Length: {}\r\n", s.len()),
                s,
            ),
            Refuse,
        ),
        (
            "two equal Content-Lengths",
            post(
                &format!("Content-Length: {0}\r\nContent-Length: {0}\r\n", s.len()),
                s,
            ),
            // hyper keeps one of two equal values (RFC 9110 8.6 allows it): one request.
            Normalise,
        ),
        (
            "Content-Length: +N",
            post(&format!("Content-Length: +{}\r\n", s.len()), s),
            Refuse,
        ),
        (
            "Content-Length list 0, N",
            post(&format!("Content-Length: 0, {}\r\n", s.len()), s),
            Refuse,
        ),
        (
            "Transfer-Encoding: xchunked",
            post("Transfer-Encoding: xchunked\r\n", &format!("0\r\n\r\n{s}")),
            Refuse,
        ),
        (
            "Transfer-Encoding: chunked, identity",
            post(
                "Transfer-Encoding: chunked, identity\r\n",
                &format!("0\r\n\r\n{s}"),
            ),
            Refuse,
        ),
        (
            "Transfer-Encoding: gzip, chunked",
            post("Transfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n"),
            Refuse,
        ),
        (
            "Transfer-Encoding twice (chunked, identity)",
            post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
                &format!("0\r\n\r\n{s}"),
            ),
            Refuse,
        ),
        (
            "Transfer-Encoding<TAB>: chunked",
            post("Transfer-Encoding\t: chunked\r\n", &format!("0\r\n\r\n{s}")),
            Refuse,
        ),
        (
            "Transfer-Encoding<SP>: chunked",
            post("Transfer-Encoding : chunked\r\n", &format!("0\r\n\r\n{s}")),
            Refuse,
        ),
        (
            "Transfer-Encoding: <VT>chunked",
            post("Transfer-Encoding: \x0bchunked\r\n", &format!("0\r\n\r\n{s}")),
            Refuse,
        ),
        (
            "Transfer-Encoding:<SP><SP>chunked<SP> (optional whitespace)",
            post("Transfer-Encoding:  chunked \r\n", "5\r\nhello\r\n0\r\n\r\n"),
            Pass,
        ),
        (
            "Transfer-Encoding: CHUNKED",
            post("Transfer-Encoding: CHUNKED\r\n", "5\r\nhello\r\n0\r\n\r\n"),
            Pass,
        ),
        (
            "obs-fold of an ordinary header",
            b"GET /case HTTP/1.1\r\nHost: web\r\nX-Folded: a\r\n b\r\nConnection: close\r\n\r\n"
                .to_vec(),
            Refuse,
        ),
        (
            "obs-fold of Transfer-Encoding",
            post("Transfer-Encoding:\r\n chunked\r\n", &format!("0\r\n\r\n{s}")),
            Refuse,
        ),
        (
            "bare LF line endings",
            b"GET /case HTTP/1.1\nHost: web\nConnection: close\n\n".to_vec(),
            Normalise,
        ),
        (
            "bare LF hiding a Content-Length",
            format!(
                "POST /case HTTP/1.1\r\nHost: web\nContent-Length: {}\r\nConnection: close\r\n\r\n{s}",
                s.len()
            )
            .into_bytes(),
            Normalise,
        ),
        (
            "chunk size 0x10",
            post(
                "Transfer-Encoding: chunked\r\n",
                &format!("0x10\r\n0123456789abcdef\r\n0\r\n\r\n{s}"),
            ),
            Refuse,
        ),
        (
            "chunk size -1",
            post(
                "Transfer-Encoding: chunked\r\n",
                &format!("-1\r\nabc\r\n0\r\n\r\n{s}"),
            ),
            Refuse,
        ),
        (
            "chunk size of 23 hex digits",
            post(
                "Transfer-Encoding: chunked\r\n",
                &format!("10000000000000000000005\r\nhello\r\n0\r\n\r\n{s}"),
            ),
            Refuse,
        ),
        (
            "chunk longer than its size",
            post(
                "Transfer-Encoding: chunked\r\n",
                &format!("3\r\nabc{s}\r\n0\r\n\r\n"),
            ),
            Refuse,
        ),
        ("request head over 64 KiB", big, TooLarge),
    ]
}

/// Waits until the recorder's count has not moved for 300 ms (at most 5 s); returns it.
fn settled(rec: &Recorder) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = rec.count();
    let mut since = Instant::now();
    while since.elapsed() < Duration::from_millis(300) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        let now = rec.count();
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
    last
}

#[test]
fn the_smuggling_corpus_is_refused_or_normalised_and_never_splits_a_request() {
    let rec = Recorder::start();
    let (west, _east, addr) = pair("web", rec.port, "http");
    let mut table =
        String::from("| case | docs/http.md | client got | requests at the backend | verdict |\n");
    table.push_str("| --- | --- | --- | --- | --- |\n");
    let mut failures = Vec::new();
    for (name, bytes, expect) in corpus() {
        let before = settled(&rec);
        let (raw, ended) = exchange(&addr, &bytes, Duration::from_secs(5));
        let seen = settled(&rec) - before;
        let status = parse_reply(&raw).map(|r| r.status);
        let got = match status {
            Some(s) => format!("{s}"),
            None if raw.is_empty() => format!("nothing ({ended:?})"),
            None => format!("{:?}", String::from_utf8_lossy(&raw[..raw.len().min(40)])),
        };
        let good = seen <= 1
            && match expect {
                Expect::Pass => status == Some(200) && seen == 1,
                Expect::Refuse => status == Some(400),
                Expect::TooLarge => matches!(status, Some(431 | 400)) && seen == 0,
                Expect::Normalise => status == Some(200) && seen == 1,
            };
        let verdict = if good { "ok" } else { "BROKEN" };
        table.push_str(&format!(
            "| {name} | {expect:?} | {got} | {seen} | {verdict} |\n"
        ));
        if !good {
            failures.push(format!(
                "{name}: expected {expect:?}, the client got {got}, the backend saw {seen} request(s)"
            ));
        }
    }
    eprintln!("{table}");
    let lines = rec.lines.lock().unwrap().clone();
    let smuggled: Vec<&String> = lines.iter().filter(|l| l.contains("smuggled")).collect();
    assert!(
        smuggled.is_empty(),
        "the backend parsed a smuggled request: {smuggled:?}\nall request lines: {lines:#?}\nbytes it received:\n{}",
        String::from_utf8_lossy(&rec.log.lock().unwrap())
    );
    assert!(
        failures.is_empty(),
        "{failures:#?}\n{table}\nrequest lines at the backend: {lines:#?}\nwest log:\n{}",
        west.log()
    );
}

/// `n` sequential requests, each on a new connection; their latencies, sorted.
fn latencies(addr: &str, n: usize, gap: Duration) -> Vec<Duration> {
    let mut out: Vec<Duration> = (0..n)
        .map(|i| {
            let t = Instant::now();
            let r = get(addr, "/", "");
            let took = t.elapsed();
            assert_eq!(r.status, 200, "request {i}: {r:?}");
            std::thread::sleep(gap);
            took
        })
        .collect();
    out.sort();
    out
}

/// A request head of 78 bytes: sent one byte per second, never whole within the test.
const SLOW_HEAD: &[u8] =
    b"GET / HTTP/1.1\r\nHost: web\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

#[test]
fn slowloris_connections_are_cut_at_the_header_timeout_while_requests_keep_their_latency() {
    const SLOW: usize = 500;
    let rt = runtime();
    let (port, _seen) = web_backend(&rt, "east");
    let (west, _east, addr) = pair("web", port, "http");
    let need = SLOW as u64 * 2 + 200;
    let (ours, router) = (
        open_files_limit("self"),
        open_files_limit(&west.pid().to_string()),
    );
    if ours < need || router < need {
        eprintln!(
            "skipped: {SLOW} slow connections need {need} open files; the limit is {ours} here and {router} for the router (raise it with `ulimit -n {need}`)"
        );
        return;
    }
    let baseline = latencies(&addr, 30, Duration::from_millis(20));
    let fds_before = fd_count(west.pid());

    // 500 connections: most send a request head one byte per second; one in five sends
    // nothing at all, one in five a piece of the HTTP/2 preface and then nothing (hyper reads
    // those bytes before its own header timeout starts). Each is watched every 100 ms; its age
    // when the router cut it is noted.
    let started = Instant::now();
    let mut slow: Vec<(TcpStream, Instant, usize, Option<Duration>)> = (0..SLOW)
        .map(|i| {
            let mut c = TcpStream::connect(&addr)
                .unwrap_or_else(|e| panic!("slow connection {i} was not accepted: {e}"));
            // `sent == usize::MAX`: this one never sends more.
            let sent = match i % 5 {
                0 => usize::MAX,
                1 => {
                    c.write_all(b"PRI * HTT").unwrap();
                    usize::MAX
                }
                _ => {
                    c.write_all(&SLOW_HEAD[..1]).unwrap();
                    1
                }
            };
            c.set_nonblocking(true).unwrap();
            (c, Instant::now(), sent, None)
        })
        .collect();
    let opened = started.elapsed();
    let dripper = std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        let mut last_drip = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(100));
            let drip = last_drip.elapsed() >= Duration::from_secs(1);
            if drip {
                last_drip = Instant::now();
            }
            for (c, at, sent, cut) in slow.iter_mut().filter(|s| s.3.is_none()) {
                let gone = match c.read(&mut buf) {
                    Ok(0) => true,
                    Ok(_) => false, // an answer (e.g. 408); the end follows
                    Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                };
                let failed = drip && !gone && *sent != usize::MAX && {
                    *sent += 1;
                    c.write(&[SLOW_HEAD[*sent % SLOW_HEAD.len()]]).is_err()
                };
                if gone || failed {
                    *cut = Some(at.elapsed());
                }
            }
            if slow.iter().all(|s| s.3.is_some()) {
                break;
            }
        }
        slow.into_iter().map(|s| s.3).collect::<Vec<_>>()
    });

    // Meanwhile, normal requests.
    std::thread::sleep(Duration::from_millis(500));
    let during = latencies(&addr, 30, Duration::from_millis(100));
    let fds_during = fd_count(west.pid());
    let cuts = dripper.join().unwrap();
    let cut: Vec<Duration> = cuts.iter().flatten().copied().collect();
    let p50 = |v: &[Duration]| v[v.len() / 2];
    eprintln!(
        "{SLOW} slow connections opened in {opened:?}; router fds {fds_before} -> {fds_during}; \
         cut: {} of {SLOW}, aged {:?} to {:?}; \
         normal requests p50 {:?} before, {:?} during (max {:?})",
        cut.len(),
        cut.iter().min(),
        cut.iter().max(),
        p50(&baseline),
        p50(&during),
        during.last()
    );
    assert_eq!(
        cut.len(),
        SLOW,
        "{} slow connections were still open after 20 s (header read timeout 10 s)",
        SLOW - cut.len()
    );
    let (first, last) = (*cut.iter().min().unwrap(), *cut.iter().max().unwrap());
    assert!(
        first >= Duration::from_secs(8),
        "a slow connection was cut after {first:?}, before the 10 s header timeout"
    );
    assert!(
        last <= Duration::from_millis(12_500),
        "a slow connection was cut only after {last:?}, not at the 10 s header timeout"
    );
    assert!(
        p50(&during) <= p50(&baseline) * 5 + Duration::from_millis(20),
        "normal requests slowed down under slowloris: p50 {:?} before, {:?} during",
        p50(&baseline),
        p50(&during)
    );
    // The router let go of the descriptors.
    let deadline = Instant::now() + Duration::from_secs(5);
    while fd_count(west.pid()) > fds_before + 20 {
        assert!(
            Instant::now() < deadline,
            "router descriptors: {fds_before} before, {} after the slow connections were cut",
            fd_count(west.pid())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Peak resident memory of a process (VmHWM), in KiB.
fn peak_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap()
}

#[test]
fn a_rapid_reset_burst_leaves_cpu_and_memory_bounded_and_the_listener_serving() {
    let Some(py) = venv_python() else { return };
    let rt = runtime();
    let (port, seen) = web_backend(&rt, "east");
    let (west, east, addr) = pair("web", port, "http");
    assert_eq!(get(&addr, "/", "").status, 200, "before the burst");
    let pids = [west.pid(), east.pid()];
    let (host, port) = addr.rsplit_once(':').unwrap();
    let burst = |batch: &str| {
        let rss_before = pids.map(rss_kib);
        let cpu_before = pids.map(cpu_time);
        let served_before = seen.requests.load(Ordering::Relaxed);
        let t = Instant::now();
        let o = Command::new("timeout")
            .arg("60")
            .arg(&py)
            .arg(script("rapid_reset.py"))
            .args([host, port, "10000", batch])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let took = t.elapsed();
        let out: Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|_| panic!("rapid_reset.py: {}", common::text(&o)));
        let grown = [0, 1].map(|i| peak_kib(pids[i]).saturating_sub(rss_before[i]));
        let cpu = [0, 1].map(|i| cpu_time(pids[i]).saturating_sub(cpu_before[i]));
        let served = seen.requests.load(Ordering::Relaxed) - served_before;
        eprintln!(
            "rapid reset in batches of {batch}: {out} in {took:?}; CPU west {:?}, east {:?}; peak RSS over the start west +{} KiB, east +{} KiB; {served} requests reached the backend",
            cpu[0], cpu[1], grown[0], grown[1]
        );
        assert!(
            out["sent"].as_u64().unwrap_or(0) >= 100,
            "the burst did not get going: {out}"
        );
        assert_eq!(
            out["max_concurrent_streams"], 100,
            "the listener does not limit a client connection to 100 concurrent streams: {out}"
        );
        for (i, site) in ["west (ingress)", "east (egress)"].iter().enumerate() {
            assert!(
                grown[i] < 64 * 1024,
                "{site}: peak RSS grew {} KiB during the burst in batches of {batch}",
                grown[i]
            );
            assert!(
                cpu[i] < Duration::from_secs(2),
                "{site}: the burst in batches of {batch} cost {:?} of CPU",
                cpu[i]
            );
        }
        out
    };
    // Paced: each batch of 100 may be taken up before the next arrives, so the connection
    // need not be cut off, but the 10 000 streams must cost little.
    burst("100");
    // docs/http.md: more than 100 resets pending and the connection is closed with GOAWAY
    // ENHANCE_YOUR_CALM (0xb). Batches of 1000 cross that within one read.
    let out = burst("1000");
    assert_eq!(
        out["goaway"], 11,
        "the rapid-reset connection was not closed with GOAWAY ENHANCE_YOUR_CALM: {out}"
    );
    // The listener still serves.
    let t = Instant::now();
    let r = get(&addr, "/", "");
    assert_eq!(r.status, 200, "after the burst: {r:?}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "the first request after the burst took {:?}",
        t.elapsed()
    );
}
