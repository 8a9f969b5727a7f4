//! Data-path reliability battery (issue 7) against real `skiff site run` processes: a
//! listener under file-descriptor exhaustion, flows idle longer than every internal timeout,
//! many heavy flows and stalled readers on one throttled link (memory bound), a lossy link,
//! and large transfers with a graceful shutdown right after the last byte.

mod common;
#[path = "stress/support.rs"]
mod support;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{Site, fd_count, ok};
use support::{Running, count_lines, cpu_time, echo_round_trip, echo_server, link_over, wait_up};

/// Creates a listener `key` on 127.0.0.1 (a free port) at `site`.
fn listener(site: &Site, key: &str) {
    ok(&[
        "listener",
        "create",
        key,
        "0",
        "--host",
        "127.0.0.1",
        "--dir",
        site.d(),
    ]);
}

/// Creates a connector `key` to 127.0.0.1:`port` at `site`.
fn connector(site: &Site, key: &str, port: u16) {
    ok(&[
        "connector",
        "create",
        key,
        &port.to_string(),
        "--host",
        "127.0.0.1",
        "--dir",
        site.d(),
    ]);
}

/// File descriptors the listener's router may use in the fd-exhaustion test.
const FD_LIMIT: &str = "256";
/// Client connections opened at once against it.
const STORM: usize = 1000;

#[test]
fn a_listener_out_of_file_descriptors_stays_up_cheap_and_serves_again_at_once() {
    let west = Site::create("west", true);
    let east = Site::create("east", false);
    let (echo_port, echo_stop) = echo_server();
    connector(&west, "echo", echo_port);
    listener(&east, "echo");
    let _w = Running::start(&west, &[]);
    let nofile = format!("--nofile={FD_LIMIT}:{FD_LIMIT}");
    let mut e = Running::start(&east, &["prlimit", &nofile]);
    link_over(&east, &west, "auto");
    let addr = east.wait_listener_active("echo", Duration::from_secs(10));
    let hello = b"hello through skiff".to_vec();
    echo_round_trip(&addr, &hello, Duration::from_secs(5)).expect("a flow before the storm");
    let fds_before = fd_count(e.pid());

    // The storm: STORM clients connect at once (each sends a line it never reads the answer
    // to) and hold their connections. The router runs out of descriptors long before; the
    // kernel queues some more, and drops the SYNs of the rest (their connects time out).
    let clients = storm(&addr, STORM, Duration::from_secs(3), b"storm\n");
    eprintln!("fd storm: {} of {STORM} connects completed", clients.len());
    let log_before = e.log();
    let cpu0 = cpu_time(e.pid());
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    let cpu = cpu_time(e.pid()) - cpu0;
    let wall = t0.elapsed();
    let during = e.log()[log_before.len()..].to_string();
    let fds_storm = fd_count(e.pid());
    let t = Instant::now();
    let answers = e.status_ok();
    let status_took = t.elapsed();
    let load = cpu.as_secs_f64() / wall.as_secs_f64();
    let accept_errors = count_lines(&during, "accepting a client connection failed");
    eprintln!(
        "fd storm: {} clients held; router at {fds_storm} fds (limit {FD_LIMIT}); \
         CPU {:.3} s over {:.1} s ({load:.3} cores); site status in {status_took:?}; \
         {} log lines ({accept_errors} accept errors) in the window",
        clients.len(),
        cpu.as_secs_f64(),
        wall.as_secs_f64(),
        during.lines().count(),
    );
    assert!(e.alive(), "the router died in the storm: {}", e.log());
    assert!(
        answers && status_took < Duration::from_secs(3),
        "site status did not answer within 3 s during the storm ({status_took:?}): {}",
        e.log()
    );
    assert!(
        load < 1.0,
        "the router used {load:.2} cores while out of descriptors"
    );
    assert!(
        during.lines().count() < 50,
        "the router logged {} lines in 5 s while out of descriptors:\n{}",
        during.lines().count(),
        &during[..during.len().min(4000)]
    );

    // The storm ends: a new connection is served end to end within 1 s.
    drop(clients);
    let t = Instant::now();
    let took = echo_round_trip(&addr, &hello, Duration::from_secs(5));
    let served_in = t.elapsed();
    eprintln!("after the storm: a new connection served end to end in {served_in:?}");
    took.unwrap_or_else(|err| panic!("no flow after the storm: {err}\n{}", e.log()));
    assert!(
        served_in < Duration::from_secs(1),
        "the first connection after the storm took {served_in:?}"
    );
    // And nothing leaks: the router's descriptors return to where they were.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = fd_count(e.pid());
        if now <= fds_before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "descriptors leaked after the storm: {fds_before} before, {now} after"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    echo_stop.store(true, Ordering::Relaxed);
}

#[test]
fn a_link_port_flooded_past_the_open_file_limit_keeps_status_and_flows_working() {
    // west accepts links and serves the backend; its descriptors are limited. The link
    // from east is up before the flood (QUIC: a UDP socket it already holds).
    let west = Site::create("west", true);
    let east = Site::create("east", false);
    let (echo_port, echo_stop) = echo_server();
    connector(&west, "echo", echo_port);
    listener(&east, "echo");
    let nofile = format!("--nofile={FD_LIMIT}:{FD_LIMIT}");
    let mut w = Running::start(&west, &["prlimit", &nofile]);
    let _e = Running::start(&east, &[]);
    link_over(&east, &west, "quic");
    wait_up(east.d(), "quic", Duration::from_secs(10));
    let addr = east.wait_listener_active("echo", Duration::from_secs(10));
    let hello = b"hello through skiff".to_vec();
    echo_round_trip(&addr, &hello, Duration::from_secs(5)).expect("a flow before the flood");
    let o = common::skiff(&["site", "status", "--output", "json", "--dir", west.d()]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let link_port = v["site"]["linkPort"].as_u64().expect("west's link port");
    let fds_before = fd_count(w.pid());

    // The flood: STORM TCP connections to the link port that never start a TLS handshake
    // (each is dropped by the router after its 10 s handshake timeout).
    let flood = storm(
        &format!("127.0.0.1:{link_port}"),
        STORM,
        Duration::from_secs(3),
        b"",
    );
    let log_before = w.log();
    let cpu0 = cpu_time(w.pid());
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let t = Instant::now();
    let answers = w.status_ok();
    let status_took = t.elapsed();
    // A new flow to west's backend needs a descriptor at west.
    let during = echo_round_trip(&addr, &hello, Duration::from_secs(5));
    let cpu = cpu_time(w.pid()) - cpu0;
    let wall = t0.elapsed();
    let logged = w.log()[log_before.len()..].to_string();
    let load = cpu.as_secs_f64() / wall.as_secs_f64();
    eprintln!(
        "link port flood: {} connections made; router at {} fds (limit {FD_LIMIT}); CPU {:.3} s \
         over {:.1} s ({load:.3} cores); site status in {status_took:?}; a flow meanwhile: \
         {during:?}; {} log lines in the window",
        flood.len(),
        fd_count(w.pid()),
        cpu.as_secs_f64(),
        wall.as_secs_f64(),
        logged.lines().count(),
    );
    assert!(w.alive(), "the router died in the flood: {}", w.log());
    assert!(
        answers && status_took < Duration::from_secs(3),
        "site status did not answer within 3 s during the flood ({status_took:?})"
    );
    during.unwrap_or_else(|err| panic!("a flow failed during the flood: {err}\n{logged}"));
    assert!(load < 1.0, "the router used {load:.2} cores in the flood");
    assert!(
        logged.lines().count() < 50,
        "the router logged {} lines in the flood:\n{}",
        logged.lines().count(),
        &logged[..logged.len().min(4000)]
    );

    drop(flood);
    let t = Instant::now();
    let after = echo_round_trip(&addr, &hello, Duration::from_secs(5));
    let served_in = t.elapsed();
    eprintln!("after the flood: a new connection served end to end in {served_in:?}");
    after.unwrap_or_else(|err| panic!("no flow after the flood: {err}"));
    assert!(served_in < Duration::from_secs(1), "took {served_in:?}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = fd_count(w.pid());
        if now <= fds_before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "descriptors leaked after the flood: {fds_before} before, {now} after"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    echo_stop.store(true, Ordering::Relaxed);
}

/// Opens `n` connections to `addr` at once (connects that do not complete within `within`
/// are given up), writes `line` on each, and returns those that connected.
fn storm(addr: &str, n: usize, within: Duration, line: &'static [u8]) -> Vec<std::net::TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tries: Vec<_> = (0..n)
            .map(|_| {
                let addr = addr.to_string();
                tokio::spawn(async move {
                    let mut c = tokio::time::timeout(within, tokio::net::TcpStream::connect(addr))
                        .await
                        .ok()?
                        .ok()?;
                    tokio::io::AsyncWriteExt::write_all(&mut c, line)
                        .await
                        .ok()?;
                    c.into_std().ok()
                })
            })
            .collect();
        let mut held = Vec::new();
        for t in tries {
            if let Ok(Some(c)) = t.await {
                held.push(c);
            }
        }
        held
    })
}

/// How long the flows stay idle: longer than every timeout that could end an idle flow
/// (the 15 s HEADER_TIMEOUT, the 3 s OPEN_TIMEOUT, the 4 s link dead-after and QUIC idle
/// timeout, yamux, which has none) and than the 60 s TCP keepalive idle time, so keepalive
/// probes are sent on the client and backend sockets meanwhile.
const IDLE: Duration = Duration::from_secs(65);

#[test]
fn a_flow_idle_longer_than_every_timeout_still_carries_bytes_both_ways() {
    let runs: Vec<_> = ["quic", "tls"]
        .into_iter()
        .map(|transport| std::thread::spawn(move || idle_flow_over(transport)))
        .collect();
    for r in runs {
        r.join().expect("an idle flow broke");
    }
}

fn idle_flow_over(transport: &'static str) {
    let west = Site::create("west", true);
    let east = Site::create("east", false);
    let (echo_port, echo_stop) = echo_server();
    connector(&west, "echo", echo_port);
    listener(&east, "echo");
    let w = Running::start(&west, &[]);
    let e = Running::start(&east, &[]);
    link_over(&east, &west, transport);
    let link = wait_up(&e.dir, transport, Duration::from_secs(10));
    let addr = east.wait_listener_active("echo", Duration::from_secs(10));

    let mut c = TcpStream::connect(&addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let first = support::pattern(1024, 1);
    c.write_all(&first).unwrap();
    let mut back = vec![0u8; first.len()];
    std::io::Read::read_exact(&mut c, &mut back).unwrap();
    assert_eq!(back, first);

    std::thread::sleep(IDLE);

    let after = support::pattern(256 * 1024, 2);
    let mut w2 = c.try_clone().unwrap();
    let sent = after.clone();
    let writer = std::thread::spawn(move || w2.write_all(&sent));
    let mut back = vec![0u8; after.len()];
    let read = std::io::Read::read_exact(&mut c, &mut back);
    writer.join().unwrap().unwrap_or_else(|err| {
        panic!(
            "{transport}: writing after {IDLE:?} idle failed: {err}\neast:\n{}\nwest:\n{}",
            e.log(),
            w.log()
        )
    });
    read.unwrap_or_else(|err| {
        panic!(
            "{transport}: reading after {IDLE:?} idle failed: {err}\neast:\n{}\nwest:\n{}",
            e.log(),
            w.log()
        )
    });
    assert!(
        back == after,
        "{transport}: bytes after the idle time differ"
    );
    let now = wait_up(&e.dir, transport, Duration::from_secs(1));
    assert_eq!(
        now["since"], link["since"],
        "{transport}: the link went down meanwhile"
    );
    eprintln!("{transport}: a flow idle for {IDLE:?} carried 256 KiB both ways intact");
    echo_stop.store(true, Ordering::Relaxed);
}
