//! Black-box tests of services across sites through the real `skiff` binary: a real client
//! (redis-benchmark) against a real server (redis-server), balancing and failover between
//! sites, fast refusal with no route, and bounded memory with a client that never reads.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Site, fd_count, free_port, is_link, link, ok, rss_kib};

/// A backend answering every connection with its name, then closing.
fn name_server(name: &'static str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { return };
            let _ = c.write_all(name.as_bytes());
        }
    });
    port
}

/// Connects to `addr` and reads to the end; the backend's name, or the error.
fn ask(addr: &str) -> Result<String, String> {
    let mut c = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).map_err(|e| e.to_string())?;
    if s.is_empty() {
        Err("closed without an answer".into())
    } else {
        Ok(s)
    }
}

#[test]
fn the_same_key_at_two_sites_is_balanced_and_fails_over_and_back() {
    let mut west = Site::create_on_fixed_port("west");
    let mut south = Site::create_on_fixed_port("south");
    let mut east = Site::create("east", false);
    let (wp, sp) = (name_server("west"), name_server("south"));
    ok(&[
        "connector",
        "create",
        "backend",
        &wp.to_string(),
        "--dir",
        west.d(),
    ]);
    ok(&[
        "connector",
        "create",
        "backend",
        &sp.to_string(),
        "--dir",
        south.d(),
    ]);
    ok(&[
        "listener",
        "create",
        "backend",
        "0",
        "--host",
        "127.0.0.1",
        "--dir",
        east.d(),
    ]);
    west.start();
    south.start();
    east.start();
    link(&east, &west);
    link(&east, &south);
    east.wait_link(Duration::from_secs(5), "to west", is_link("up", "west"));
    east.wait_link(Duration::from_secs(5), "to south", is_link("up", "south"));
    let addr = east.wait_listener_active("backend", Duration::from_secs(10));
    // Both sites must be known as targets before counting.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = east.run(&["network", "status", "--output", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let serving = v["keys"][0]["sites"]
            .as_array()
            .map(|a| a.len())
            .unwrap_or(0);
        if serving == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "both sites never served the key: {v:#}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }

    let count = |n: usize| {
        let mut by = std::collections::BTreeMap::<String, usize>::new();
        for _ in 0..n {
            *by.entry(ask(&addr).expect("a connection failed"))
                .or_default() += 1;
        }
        by
    };
    let spread = count(100);
    assert!(
        spread.get("west").copied().unwrap_or(0) >= 10
            && spread.get("south").copied().unwrap_or(0) >= 10,
        "100 connections were not spread over both sites: {spread:?}"
    );

    // West dies. After the neighbour-loss window every new connection goes to south.
    west.kill();
    let deadline = Instant::now() + Duration::from_secs(15);
    while east.links().iter().any(is_link("up", "west")) {
        assert!(Instant::now() < deadline, "east never noticed west died");
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = count(100);
    assert_eq!(after.get("south"), Some(&100), "{after:?}");

    // West comes back: traffic returns to it.
    west.start();
    east.wait_link(
        Duration::from_secs(15),
        "back to west",
        is_link("up", "west"),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let back = count(20);
        if back.get("west").copied().unwrap_or(0) > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "traffic never returned to west: {back:?}"
        );
    }
}

#[test]
fn with_no_connector_anywhere_connections_are_refused_fast_and_nothing_leaks() {
    let mut west = Site::create("west", true);
    let mut east = Site::create("east", false);
    ok(&[
        "listener",
        "create",
        "nothing",
        "0",
        "--host",
        "127.0.0.1",
        "--dir",
        east.d(),
    ]);
    west.start();
    east.start();
    link(&east, &west);
    east.wait_link(Duration::from_secs(5), "up", is_link("up", "west"));
    // The listener is bound even with no target; find its address.
    let o = east.run(&["listener", "list", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["status"], "no-target", "{v:#}");
    let addr = v[0]["address"].as_str().unwrap().to_string();
    let (we, ea) = (west.pid(), east.pid());
    let fds_before = (fd_count(we), fd_count(ea));
    let mut slowest = Duration::ZERO;
    for i in 0..1000 {
        let t = Instant::now();
        match ask(&addr) {
            Err(e) if e.to_lowercase().contains("reset") => {}
            other => panic!("connection {i} was not refused with a reset: {other:?}"),
        }
        slowest = slowest.max(t.elapsed());
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "refusal {i} took {:?}",
            t.elapsed()
        );
    }
    eprintln!("1000 refusals, slowest {slowest:?}");
    // Descriptors return to where they were (allow a moment for closes to finish).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = (fd_count(we), fd_count(ea));
        if now.0 <= fds_before.0 && now.1 <= fds_before.1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "descriptors leaked: before {fds_before:?}, after {now:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_client_that_never_reads_pins_bounded_memory_and_other_flows_keep_moving() {
    let mut west = Site::create("west", true);
    let mut east = Site::create("east", false);
    // "firehose": writes up to 1 GiB to whoever connects, counting what the path accepted.
    let accepted = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let fire = TcpListener::bind("127.0.0.1:0").unwrap();
    let fire_port = fire.local_addr().unwrap().port();
    {
        let (accepted, stop) = (accepted.clone(), stop.clone());
        std::thread::spawn(move || {
            let Ok((mut c, _)) = fire.accept() else {
                return;
            };
            c.set_write_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let chunk = vec![0x5au8; 64 * 1024];
            let mut total = 0u64;
            while total < (1 << 30) && !stop.load(Ordering::Relaxed) {
                match c.write(&chunk) {
                    Ok(n) => {
                        total += n as u64;
                        accepted.store(total, Ordering::Relaxed);
                    }
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(_) => return,
                }
            }
        });
    }
    // "echo": for the flows that must keep moving.
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in echo.incoming() {
            let Ok(mut c) = c else { return };
            std::thread::spawn(move || {
                let mut r = c.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut c);
            });
        }
    });
    ok(&[
        "connector",
        "create",
        "fire",
        &fire_port.to_string(),
        "--dir",
        west.d(),
    ]);
    ok(&[
        "connector",
        "create",
        "echo",
        &echo_port.to_string(),
        "--dir",
        west.d(),
    ]);
    ok(&[
        "listener",
        "create",
        "fire",
        "0",
        "--host",
        "127.0.0.1",
        "--dir",
        east.d(),
    ]);
    ok(&[
        "listener",
        "create",
        "echo",
        "0",
        "--host",
        "127.0.0.1",
        "--dir",
        east.d(),
    ]);
    west.start();
    east.start();
    link(&east, &west);
    let fire_addr = east.wait_listener_active("fire", Duration::from_secs(10));
    let echo_addr = east.wait_listener_active("echo", Duration::from_secs(10));
    let rss_before = (rss_kib(west.pid()), rss_kib(east.pid()));

    // The client connects and never reads.
    let _idle = TcpStream::connect(&fire_addr).unwrap();
    // Wait until the path stops accepting bytes (every buffer on the way is full).
    let mut last = 0;
    let mut still_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    while still_since.elapsed() < Duration::from_secs(2) {
        let now = accepted.load(Ordering::Relaxed);
        if now != last {
            last = now;
            still_since = Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "the firehose never stalled: {now} bytes accepted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Ten other flows on the same link still move 1 MiB each, both ways.
    let movers: Vec<_> = (0..10)
        .map(|i| {
            let addr = echo_addr.clone();
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(&addr).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let data: Vec<u8> = (0..1 << 20).map(|j| (i * 7 + j) as u8).collect();
                let mut w = c.try_clone().unwrap();
                let sent = data.clone();
                let writer = std::thread::spawn(move || w.write_all(&sent).unwrap());
                let mut back = vec![0u8; data.len()];
                c.read_exact(&mut back).unwrap();
                writer.join().unwrap();
                assert!(back == data, "flow {i} got different bytes back");
            })
        })
        .collect();
    for m in movers {
        m.join()
            .expect("a flow stalled behind the client that never reads");
    }

    let rss_after = (rss_kib(west.pid()), rss_kib(east.pid()));
    let in_path = accepted.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let grown = (
        rss_after.0.saturating_sub(rss_before.0),
        rss_after.1.saturating_sub(rss_before.1),
    );
    eprintln!(
        "stalled flow: {} KiB accepted by the path (kernel socket buffers included); router RSS growth west {} KiB, east {} KiB",
        in_path / 1024,
        grown.0,
        grown.1
    );
    // The bound documented in docs/flows.md: per-flow window x hops, plus socket buffers.
    const PATH_BOUND: u64 = 32 * 1024 * 1024;
    assert!(
        in_path < PATH_BOUND,
        "the path buffered {in_path} bytes for a client that never reads"
    );
    const RSS_BOUND_KIB: u64 = 32 * 1024;
    assert!(
        grown.0 < RSS_BOUND_KIB && grown.1 < RSS_BOUND_KIB,
        "router memory grew {grown:?} KiB"
    );
}

/// A redis-server of our own on a free port, killed (by PID) when dropped.
struct Redis(Child, u16);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis() -> Option<Redis> {
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "redis-server is missing in CI: .ci/run must install redis-server and redis-tools"
        );
        eprintln!(
            "skipped: redis-server is not installed (apt-get install redis-server redis-tools)"
        );
        return None;
    }
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(Redis(child, port))
}

fn redis_commands(port: u16) -> u64 {
    let o = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "info", "stats"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("total_commands_processed:"))
        .and_then(|n| n.parse().ok())
        .unwrap()
}

#[test]
fn redis_benchmark_through_skiff_completes_every_request() {
    let Some(redis) = redis() else { return };
    let mut west = Site::create("west", true);
    let mut east = Site::create("east", false);
    ok(&[
        "connector",
        "create",
        "redis",
        &redis.1.to_string(),
        "--dir",
        west.d(),
    ]);
    ok(&[
        "listener",
        "create",
        "redis",
        "0",
        "--host",
        "127.0.0.1",
        "--dir",
        east.d(),
    ]);
    west.start();
    east.start();
    link(&east, &west);
    let addr = east.wait_listener_active("redis", Duration::from_secs(10));
    let port = addr.rsplit_once(':').unwrap().1;
    let before = redis_commands(redis.1);
    let requests = 20_000u64;
    let o = Command::new("timeout")
        .args([
            "120",
            "redis-benchmark",
            "-h",
            "127.0.0.1",
            "-p",
            port,
            "-n",
            &requests.to_string(),
            "-c",
            "20",
            "-t",
            "set,get,incr,lpush",
            "-q",
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "redis-benchmark failed: {}",
        common::text(&o)
    );
    eprintln!("{out}");
    for t in ["SET", "GET", "INCR", "LPUSH"] {
        assert!(out.contains(&format!("{t}: ")), "no result for {t}: {out}");
    }
    let served = redis_commands(redis.1) - before;
    assert!(
        served >= 4 * requests,
        "redis-server processed {served} commands, expected at least {}",
        4 * requests
    );
}

#[test]
fn a_listener_on_a_port_in_use_is_reported_by_the_create_verb() {
    let mut east = Site::create("east", false);
    east.start();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let err = common::fails(&[
        "listener",
        "create",
        "web",
        &port,
        "--host",
        "127.0.0.1",
        "--dir",
        east.d(),
    ]);
    assert!(err.contains("cannot use it"), "{err}");
    assert!(err.contains(&port), "the message must name the port: {err}");
    // The site keeps running and serves other listeners.
    ok(&[
        "listener",
        "create",
        "other",
        "0",
        "--host",
        "127.0.0.1",
        "--dir",
        east.d(),
    ]);
    assert!(east.run(&["site", "status"]).status.success());
}
