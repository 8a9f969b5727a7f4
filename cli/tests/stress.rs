//! Data-path reliability battery (issue 7) against real `skiff site run` processes: a
//! listener under file-descriptor exhaustion, flows idle longer than every internal timeout,
//! many heavy flows and stalled readers on one throttled link (memory bound), a lossy link,
//! and large transfers with a graceful shutdown right after the last byte.

mod common;
mod netns;
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
/// Fewest client connections the listener storm must complete: well over the 96 client
/// slots a router limited to 256 descriptors has, so the storm really exhausts them (and an
/// EMFILE in this test process cannot make the test pass without a storm). Measured: 225,
/// the 96 held by the router and 129 in the listening socket's accept queue (backlog 128);
/// the kernel drops the SYNs of the rest.
const STORM_MIN_CLIENTS: usize = 200;
/// Fewest connections the link-port flood must make: its pending-handshake cap (a quarter
/// of 256 descriptors).
const FLOOD_MIN_CONNECTIONS: usize = 64;

/// Held by each of the two storm tests for its whole run: each opens up to [`STORM`] sockets
/// in this process, and under a soft limit of 1024 descriptors two at once could starve
/// each other.
static FD_STORMS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_listener_out_of_file_descriptors_stays_up_cheap_and_serves_again_at_once() {
    let _storm = FD_STORMS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
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
    let storm_started = Instant::now();
    let clients = storm(&addr, STORM, Duration::from_secs(3), b"storm\n");
    eprintln!("fd storm: {} of {STORM} connects completed", clients.len());
    assert!(
        clients.len() >= STORM_MIN_CLIENTS,
        "the storm completed only {} of {STORM} connects (need {STORM_MIN_CLIENTS}, past the \
         router's 96 client slots): check this test process's open-file limit (ulimit -n)",
        clients.len()
    );
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

    // The storm ends: a new connection is served end to end within 1 s. The kernel's accept
    // queue is still full of the storm's dead connections for a moment, and a SYN that meets
    // a full queue is dropped and sent again by the client's kernel only after 1 s: that race
    // is the kernel's, not the router's (it failed CI twice at 1.01 s, and passed here in
    // 36-50 ms). So the new client comes 200 ms after the storm's clients closed, by when
    // the router must have drained the queue.
    drop(clients);
    std::thread::sleep(Duration::from_millis(200));
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
    // Clients came and went (the storm, then the queued ones accepted as it ended, each
    // finding the slots taken again): the router said it holds clients back the first time,
    // then at most once every 10 s, never once per client.
    let held_back = count_lines(&e.log(), "holding new client connections back");
    let allowed = 1 + storm_started.elapsed().as_secs() / 10;
    eprintln!(
        "fd storm: {held_back} 'holding new client connections back' lines in {:?}",
        storm_started.elapsed()
    );
    assert!(
        (1..=allowed).contains(&(held_back as u64)),
        "the router logged 'holding new client connections back' {held_back} times in {:?} \
         (expected 1 to {allowed}: once, then at most every 10 s):\n{}",
        storm_started.elapsed(),
        e.log()
    );
    echo_stop.store(true, Ordering::Relaxed);
}

#[test]
fn a_link_port_flooded_past_the_open_file_limit_keeps_status_and_flows_working() {
    let _storm = FD_STORMS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
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
    assert!(
        flood.len() >= FLOOD_MIN_CONNECTIONS,
        "the flood made only {} of {STORM} connections (need {FLOOD_MIN_CONNECTIONS}): check \
         this test process's open-file limit (ulimit -n)",
        flood.len()
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

/// Flows whose clients never read in the stalled-readers test.
const STALLED: usize = 64;

#[test]
fn many_clients_that_never_read_pin_bounded_memory_and_the_link_and_other_flows_live() {
    for transport in ["quic", "tls"] {
        stalled_readers_over(transport);
    }
}

fn stalled_readers_over(transport: &str) {
    let west = Site::create("west", true);
    let east = Site::create("east", false);
    let fire = support::Firehose::start();
    let (echo_port, echo_stop) = echo_server();
    connector(&west, "fire", fire.port);
    connector(&west, "echo", echo_port);
    listener(&east, "fire");
    listener(&east, "echo");
    let w = Running::start(&west, &[]);
    let e = Running::start(&east, &[]);
    link_over(&east, &west, transport);
    let link = wait_up(&e.dir, transport, Duration::from_secs(10));
    let fire_addr = east.wait_listener_active("fire", Duration::from_secs(10));
    let echo_addr = east.wait_listener_active("echo", Duration::from_secs(10));
    echo_round_trip(&echo_addr, b"warm up", Duration::from_secs(5)).unwrap();
    let rss_before = (common::rss_kib(w.pid()), common::rss_kib(e.pid()));

    // STALLED clients connect and never read, while the backend writes to each.
    let idle: Vec<TcpStream> = (0..STALLED)
        .map(|_| TcpStream::connect(&fire_addr).unwrap())
        .collect();
    let in_path = support::wait_stalled(
        || fire.total(),
        Duration::from_secs(2),
        Duration::from_secs(90),
    );
    // Other flows on the same link still move 1 MiB each, both ways.
    let data = support::pattern(1 << 20, 7);
    let t = Instant::now();
    for i in 0..8 {
        echo_round_trip(&echo_addr, &data, Duration::from_secs(20))
            .unwrap_or_else(|err| panic!("{transport}: flow {i} beside the stalled ones: {err}"));
    }
    let movers = t.elapsed();
    let hwm = (
        support::status_kib(w.pid(), "VmHWM"),
        support::status_kib(e.pid(), "VmHWM"),
    );
    let rss = (common::rss_kib(w.pid()), common::rss_kib(e.pid()));
    let grown = (
        rss.0.saturating_sub(rss_before.0),
        rss.1.saturating_sub(rss_before.1),
    );
    let now = wait_up(&e.dir, transport, Duration::from_secs(1));
    eprintln!(
        "{transport}: {STALLED} stalled flows: the path accepted {} MiB ({} KiB per flow); \
         RSS growth west {} MiB, east {} MiB; peak VmHWM west {} MiB, east {} MiB; \
         8 other flows moved 1 MiB each way in {movers:?}",
        in_path >> 20,
        in_path / 1024 / STALLED as u64,
        grown.0 / 1024,
        grown.1 / 1024,
        hwm.0 / 1024,
        hwm.1 / 1024,
    );
    assert_eq!(
        now["since"], link["since"],
        "{transport}: the link went down with stalled flows"
    );
    for (site, log) in [("west", w.log()), ("east", e.log())] {
        assert_eq!(
            count_lines(&log, "link down"),
            0,
            "{transport}: {site} logged a link down:\n{log}"
        );
    }
    // The bound (docs/flows.md): per stalled flow and router, two 64 KiB copy buffers and
    // what the link stream's receive window holds: on QUIC a 2 MiB window, which quinn may
    // keep in up to 2.5 times its size (it compacts received packets only past 1.5 times
    // the buffered bytes), at most 256 MiB per link; on TLS 256 KiB plus a share of a 16 MiB
    // pool per link. Plus 64 MiB for the allocator and the rest.
    // QUIC is allowed 3.5 times the window, not 2.5: quinn keeps received stream data in the
    // buffers the datagrams arrived in, which may pin more memory than their payload, and
    // the 2.5 estimate (392 MiB) left only 15 % over the ~340 MiB measured. 64 stalled flows
    // over QUIC: 64 x 7.1 MiB + 64 MiB = 520 MiB.
    let per_flow_kib = if transport == "quic" { 7 * 1024 } else { 256 } + 128;
    let link_kib = if transport == "quic" {
        640 * 1024
    } else {
        16 * 1024
    };
    let bound_kib = (STALLED as u64 * per_flow_kib).min(link_kib) + 64 * 1024;
    assert!(
        grown.0 < bound_kib && grown.1 < bound_kib,
        "{transport}: router memory grew {grown:?} KiB with {STALLED} stalled flows (bound {bound_kib} KiB)"
    );
    drop(idle);
    echo_stop.store(true, Ordering::Relaxed);
}

/// Peak resident memory either router may reach in the heavy-flow tests.
const HEAVY_HWM_BOUND_MIB: u64 = 128;

#[test]
fn many_heavy_flows_through_a_throttled_link_all_move_and_the_link_stays_up() {
    for transport in ["quic", "tls"] {
        heavy_flows_over(transport, 100_000);
    }
}

/// A slow path: a flow's bytes wait seconds in the link's send window, longer than the
/// keepalive dead-after window, so control frames queue behind them. The link must live on
/// the peer's packets and bytes (it used to be declared dead after 4 s, resetting every flow).
///
/// Known gap, kept visible rather than hidden: over QUIC at this rate with 32 streams, one
/// stream may get no byte through in the 5 s of a run (quinn hands the 8 MiB send window,
/// 6.7 s of this link, to the writers that wake first), so QUIC is held to "every stream of
/// 8 moves, no flow fails, the link stays up" and prints how many of 32 starved.
#[test]
fn many_heavy_flows_through_a_slow_link_never_get_the_link_declared_dead() {
    heavy_flows_over("tls", 10_000);
    heavy_flows_over("quic", 10_000);
}

/// iperf3 with 8 and 32 streams each way through a link throttled to `rate_kbit`.
fn heavy_flows_over(transport: &str, rate_kbit: u64) {
    let Some(mut net) = netns::Net::new(&["a", "b"]) else {
        return;
    };
    net.spawn(
        "b",
        "iperf3",
        &["-s", "-J", "-B", "127.0.0.1", "-p", "5201"],
    );
    net.wait_listening("b", 5201, Duration::from_secs(10));
    net.ok("b", &["connector", "create", "iperf", "5201"]);
    net.ok("a", &["listener", "create", "iperf", "5201"]);
    net.start("a");
    net.start("b");
    net.link("a", "b", transport);
    net.wait_up("a", "b", Duration::from_secs(10));
    let since = net.links("a")[0]["since"].clone();
    let addr = net.wait_listener("a", "iperf", Duration::from_secs(10));
    net.throttle("a", rate_kbit);
    for (parallel, reverse) in [(8, false), (32, false), (32, true)] {
        let p = parallel.to_string();
        let host = addr.ip().to_string();
        let mut args = vec![
            "60",
            "iperf3",
            "-c",
            &host,
            "-p",
            "5201",
            "-P",
            &p,
            "-t",
            "5",
            "-J",
            "--get-server-output",
        ];
        if reverse {
            args.push("-R");
        }
        // iperf3 -s takes a moment after a test before it accepts the next one.
        let mut tries = 0;
        let o = loop {
            let o = std::process::Command::new("timeout")
                .args(&args)
                .output()
                .unwrap();
            tries += 1;
            // A busy iperf3 server closes the new control connection with the client's
            // cookie unread, which the client sees as "busy" or as a reset of the control
            // connection before the test starts.
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            let error = v["error"].as_str().unwrap_or_default();
            let started = v["intervals"].as_array().is_some_and(|i| !i.is_empty());
            let busy = error.contains("server is busy") || error.contains("control message");
            if tries < 10 && busy && !started {
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            break o;
        };
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
            panic!(
                "{transport} -P {p}: iperf3 gave no JSON ({e}): {}\na:\n{}",
                common::text(&o),
                net.log("a")
            )
        });
        assert!(
            o.status.success() && v.get("error").is_none(),
            "{transport} -P {p}: iperf3 failed: {}\na:\n{}",
            v.get("error").unwrap_or(&serde_json::Value::Null),
            net.log("a")
        );
        let streams = v["end"]["streams"].as_array().unwrap();
        assert_eq!(streams.len(), parallel, "{transport}: streams");
        let per_stream: Vec<u64> = streams
            .iter()
            .map(|s| s["receiver"]["bytes"].as_u64().unwrap())
            .collect();
        // The slowest stream in any one-second interval after the first, as the receiving
        // iperf3 saw it (the server's report unless reversed): printed only, not asserted (a
        // stream may rightly get nothing for a second while others fill the link).
        let receiver = if reverse {
            &v["intervals"]
        } else {
            &v["server_output_json"]["intervals"]
        };
        let slowest_interval = receiver
            .as_array()
            .unwrap_or_else(|| panic!("{transport}: no receiver intervals in {v}"))
            .iter()
            .skip(1)
            .flat_map(|i| i["streams"].as_array().unwrap().iter())
            .filter(|s| s["seconds"].as_f64().unwrap_or(0.0) > 0.5)
            .map(|s| s["bytes"].as_u64().unwrap())
            .min()
            .unwrap_or(0);
        let mbit = v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap()
            / 1e6;
        eprintln!(
            "{transport} -P {parallel}{}: {mbit:.1} Mbit/s through a {} Mbit/s link; per stream \
             {}..{} KiB, slowest stream in a 1 s interval {} KiB",
            if reverse { " -R" } else { "" },
            rate_kbit / 1000,
            per_stream.iter().min().unwrap() / 1024,
            per_stream.iter().max().unwrap() / 1024,
            slowest_interval / 1024,
        );
        let starved = per_stream.iter().filter(|b| **b == 0).count();
        let quic_on_a_slow_path = transport == "quic" && rate_kbit < 100_000 && parallel > 8;
        if quic_on_a_slow_path && starved > 0 {
            eprintln!(
                "KNOWN GAP: quic -P {parallel} at {} Mbit/s: {starved} of {parallel} streams \
                 moved nothing in 5 s",
                rate_kbit / 1000
            );
        } else {
            assert_eq!(
                starved, 0,
                "{transport} -P {parallel}: a stream moved nothing: {per_stream:?}"
            );
        }
    }
    let hwm = (
        support::status_kib(net.pid("a"), "VmHWM") / 1024,
        support::status_kib(net.pid("b"), "VmHWM") / 1024,
    );
    eprintln!("{transport}: peak VmHWM a {} MiB, b {} MiB", hwm.0, hwm.1);
    let now = &net.links("a")[0];
    assert!(
        now["status"] == "up" && now["since"] == since,
        "{transport}: the link went down under heavy flows: {now:#}\n{}",
        net.log("a")
    );
    for site in ["a", "b"] {
        assert_eq!(
            count_lines(&net.log(site), "link down"),
            0,
            "{transport}: {site} logged a link down:\n{}",
            net.log(site)
        );
    }
    assert!(
        hwm.0 < HEAVY_HWM_BOUND_MIB && hwm.1 < HEAVY_HWM_BOUND_MIB,
        "{transport}: peak router memory {hwm:?} MiB, bound {HEAVY_HWM_BOUND_MIB} MiB"
    );
}

/// Two sites in namespaces, `a` with a listener `xfer` and `b` with the transfer backend
/// behind a connector, linked over `transport`. Returns the net, the listener's address and
/// the base block both ends build the bytes from. `None` when netns tests cannot run here.
fn transfer_net(transport: &str) -> Option<(netns::Net, std::net::SocketAddr, Vec<u8>)> {
    let mut net = netns::Net::new(&["a", "b"])?;
    let base = support::pattern(support::BLOCK, 42);
    let base_path = net.tmp().join("base.bin");
    std::fs::write(&base_path, &base).unwrap();
    let script = net.tmp().join("transfer.py");
    std::fs::write(&script, support::TRANSFER_PY).unwrap();
    let ready = net.tmp().join("transfer.ready");
    net.spawn(
        "b",
        "python3",
        &[
            script.to_str().unwrap(),
            "7000",
            base_path.to_str().unwrap(),
            ready.to_str().unwrap(),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready.exists() {
        assert!(
            Instant::now() < deadline,
            "the transfer backend did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    net.ok("b", &["connector", "create", "xfer", "7000"]);
    net.ok("a", &["listener", "create", "xfer", "7000"]);
    net.start("a");
    net.start("b");
    net.link("a", "b", transport);
    net.wait_up("a", "b", Duration::from_secs(10));
    let addr = net.wait_listener("a", "xfer", Duration::from_secs(10));
    Some((net, addr, base))
}

fn nothing() -> Box<dyn FnOnce() + Send> {
    Box::new(|| {})
}

/// Bytes each way through the lossy link.
const LOSSY_BYTES: u64 = 64 << 20;
/// Packets dropped on the link, in percent, both directions.
const LOSS_PERCENT: f64 = 20.0;

/// Over TLS/TCP.
#[test]
fn twenty_percent_loss_on_the_link_slows_flows_but_corrupts_no_byte() {
    lossy_transfer_over("tls");
}

/// Over QUIC. Before the link's congestion controller let a stalled end send (router
/// link/congestion.rs), both ends held the ACKs they owed behind full windows, probe timeouts
/// backed off, and a 4 s silence took the link down and reset the transfer (3 runs in 8; the
/// others took twice as long as now, with silences of 1.6-3.2 s).
#[test]
fn twenty_percent_loss_on_a_quic_link_slows_flows_but_corrupts_no_byte() {
    lossy_transfer_over("quic");
}

fn lossy_transfer_over(transport: &str) {
    let Some((net, addr, base)) = transfer_net(transport) else {
        return;
    };
    let clean = support::transfer(addr, &base, LOSSY_BYTES, LOSSY_BYTES, nothing())
        .unwrap_or_else(|e| panic!("{transport}, no loss: {e}\n{}", net.log("a")));
    net.loss("a", LOSS_PERCENT);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (lossy, silences) = std::thread::scope(|s| {
        let watch = s.spawn(|| longest_silences(&net, ["a", "b"], &stop));
        let lossy = support::transfer(addr, &base, LOSSY_BYTES, LOSSY_BYTES, nothing());
        stop.store(true, Ordering::Relaxed);
        (lossy, watch.join().expect("the link watcher panicked"))
    });
    let dropped = net.lost("a");
    net.loss("a", 0.0);
    assert!(dropped > 0, "{transport}: the loss rule dropped nothing");
    let lossy = lossy.unwrap_or_else(|e| {
        panic!(
            "{transport}, {LOSS_PERCENT} % loss ({dropped} packets dropped): {e}\na:\n{}\nb:\n{}",
            net.log("a"),
            net.log("b")
        )
    });
    eprintln!(
        "{transport}: {} MiB each way: {:.1} Mbit/s each way without loss ({:?}), {:.1} Mbit/s \
         with {LOSS_PERCENT} % loss ({:?}, {dropped} packets dropped); digests match (up {}, \
         down {}); longest time an end received nothing: a {:?}, b {:?}",
        LOSSY_BYTES >> 20,
        support::mbit(LOSSY_BYTES, clean.took),
        clean.took,
        support::mbit(LOSSY_BYTES, lossy.took),
        lossy.took,
        &lossy.up_digest[..16],
        &lossy.down_digest[..16],
        silences[0],
        silences[1],
    );
    // A QUIC link never comes near its 4 s dead-after window: each end keeps hearing the
    // other. Not asserted on TLS/TCP, where the kernel's retransmission timeouts back off
    // (silences of 0.4-3.4 s measured; the link stays up, and the kernel's TCP is not ours).
    for (site, silence) in ["a", "b"].iter().zip(silences) {
        assert!(
            transport != "quic" || silence < MAX_LOSSY_SILENCE,
            "{transport}: {site} received nothing on the link for {silence:?} under \
             {LOSS_PERCENT} % loss (bound {MAX_LOSSY_SILENCE:?})"
        );
    }
    // The link itself lived through the loss: no flow was reset, none had to be retried.
    for site in ["a", "b"] {
        assert_eq!(
            count_lines(&net.log(site), "link down"),
            0,
            "{transport}: {site} logged a link down under {LOSS_PERCENT} % loss:\n{}",
            net.log(site)
        );
    }
}

/// Longest time an end of the lossy QUIC link may receive nothing: half the 4 s dead-after
/// window. An end that has heard nothing since its last keepalive (1-2 s of silence) probes
/// ten times a second, and each probe lets a packet out whatever the congestion window
/// (link/driver.rs, link/congestion.rs), so a longer silence needs every one of those round
/// trips lost. Measured 0.07-0.48 s; 2.0 s in one CI run before a stalled end could send more
/// than 4 packets between two ACKs, when the bound was 1 s; at 35 % loss (by hand) 0.19-1.31 s
/// now, against a lost link and 2.96 s before.
const MAX_LOSSY_SILENCE: Duration = Duration::from_secs(2);

/// Polls the wire bytes each site's one link received until `stop`, and returns for each the
/// longest time they stood still (to within one poll, ~0.1 s). Gives up after 10 minutes.
fn longest_silences<const N: usize>(
    net: &netns::Net,
    sites: [&str; N],
    stop: &std::sync::atomic::AtomicBool,
) -> [Duration; N] {
    let give_up = Instant::now() + Duration::from_secs(600);
    let mut last = [const { None }; N];
    let mut since = [Instant::now(); N];
    let mut longest = [Duration::ZERO; N];
    let mut failed = 0;
    while !stop.load(Ordering::Relaxed) && Instant::now() < give_up {
        for (i, site) in sites.iter().enumerate() {
            // A `link list` that fails (the loaded machine, seen once in a run) is no sample;
            // the transfer and the "no link down" check catch a site that really failed.
            let o = net.skiff(site, &["link", "list", "--output", "json"]);
            if !o.status.success() {
                failed += 1;
                if failed == 1 {
                    eprintln!(
                        "link list at {site} failed (no sample): {}",
                        common::text(&o)
                    );
                }
                continue;
            }
            let links: Vec<serde_json::Value> =
                serde_json::from_slice(&o.stdout).unwrap_or_default();
            let received = links.first().map(|l| l["bytes_received"].clone());
            let now = Instant::now();
            if received != last[i] {
                (last[i], since[i]) = (received, now);
            }
            longest[i] = longest[i].max(now - since[i]);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        failed < 20,
        "link list failed {failed} times while watching the links"
    );
    longest
}

/// Bytes each way in the large transfer.
const BIG_BYTES: u64 = 1 << 30;
/// Link rate for the large transfer and the shutdown test, kbit/s.
const BIG_RATE_KBIT: u64 = 400_000;

#[test]
fn a_gigabyte_each_way_through_a_throttled_link_arrives_intact() {
    for transport in ["quic", "tls"] {
        let Some((net, addr, base)) = transfer_net(transport) else {
            return;
        };
        net.throttle("a", BIG_RATE_KBIT);
        let big = support::transfer(addr, &base, BIG_BYTES, BIG_BYTES, nothing())
            .unwrap_or_else(|e| panic!("{transport}: {e}\na:\n{}", net.log("a")));
        eprintln!(
            "{transport}: {} MiB each way through a {} Mbit/s link in {:?} ({:.0} Mbit/s each \
             way); digests match (up {}, down {}); peak VmHWM a {} MiB, b {} MiB",
            BIG_BYTES >> 20,
            BIG_RATE_KBIT / 1000,
            big.took,
            support::mbit(BIG_BYTES, big.took),
            &big.up_digest[..16],
            &big.down_digest[..16],
            support::status_kib(net.pid("a"), "VmHWM") / 1024,
            support::status_kib(net.pid("b"), "VmHWM") / 1024,
        );
    }
}

/// Bytes each way in the shutdown test.
const DRAIN_BYTES: u64 = 32 << 20;

#[test]
fn sigterm_right_after_the_clients_last_byte_loses_nothing() {
    for transport in ["quic", "tls"] {
        let Some((mut net, addr, base)) = transfer_net(transport) else {
            return;
        };
        net.throttle("a", BIG_RATE_KBIT);
        // Not the egress on TLS/TCP: there the reply's end arrives at the ingress just before
        // the stopping egress's yamux Term, and the ingress takes a FIN it reads after the
        // connection ended for a lost link, so the client is reset (a known gap, reported
        // with issue 7: yamux does not tell a FIN received before the Term apart).
        let sites: &[&str] = if transport == "quic" {
            &["a", "b"]
        } else {
            &["a"]
        };
        for &site in sites {
            let pid = net.pid(site).to_string();
            let t = support::transfer(
                addr,
                &base,
                DRAIN_BYTES,
                DRAIN_BYTES,
                Box::new(move || {
                    let _ = std::process::Command::new("kill")
                        .args(["-TERM", &pid])
                        .status();
                }),
            )
            .unwrap_or_else(|e| {
                panic!(
                    "{transport}: SIGTERM to {site} after the last byte lost data: {e}\na:\n{}\nb:\n{}",
                    net.log("a"),
                    net.log("b")
                )
            });
            let exit = net.wait_exit(site, Duration::from_secs(15));
            eprintln!(
                "{transport}: SIGTERM to {} right after the client's last byte: {} MiB each \
                 way intact in {:?}; the site exited with {exit:?}",
                if site == "a" {
                    "the ingress (a)"
                } else {
                    "the egress (b)"
                },
                DRAIN_BYTES >> 20,
                t.took,
            );
            assert!(
                exit.is_some_and(|s| s.success()),
                "{transport}: {site} did not exit cleanly after SIGTERM: {exit:?}"
            );
            net.start(site);
            net.wait_up("a", "b", Duration::from_secs(20));
            net.wait_listener("a", "xfer", Duration::from_secs(10));
        }
    }
}
