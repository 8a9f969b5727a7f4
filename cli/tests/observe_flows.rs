//! Black-box tests of what a site tells about its flows, through real `skiff site run`
//! processes on loopback: the recent flow records of `GET /v1/flows` (exact bytes, ends,
//! client, outcome and reason), the per-key families of `/metrics`, the concrete reasons of
//! `skiff listener list` / `connector list`, the warn line a refused flow leaves in the site's
//! log (rate-limited per key), and the bound of the record ring. `observe_flows/peers.py`
//! plays the peers std Rust cannot (a client that resets, a backend that never accepts).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::{Echo, Site, admin_json, admin_text, is_link, link, ok, text};
use serde_json::Value;

/// The value of the sample `name{labels}` in Prometheus text (labels exactly as written).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `skiff KIND list --output json` at `site`, the entry `name`.
fn listed(site: &Site, kind: &str, name: &str) -> Value {
    let o = site.run(&[kind, "list", "--output", "json"]);
    assert!(o.status.success(), "{kind} list: {}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v.as_array()
        .into_iter()
        .flatten()
        .find(|i| i["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no {kind} {name}: {v:#}"))
}

/// Polls `what` every 25 ms until it gives `Some`, or panics after `within` with `context`.
fn wait_for<T>(
    within: Duration,
    what: &str,
    context: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not within {within:?}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The first WARN line about a failed flow in `site`'s log (waits up to 5 s).
fn flow_warn_line(site: &Site, name: &str) -> String {
    wait_for(
        Duration::from_secs(5),
        &format!("a warn line at {name}"),
        || site.log(),
        || {
            site.log()
                .lines()
                .find(|l| l.contains("WARN") && l.contains("flow failed"))
                .map(str::to_owned)
        },
    )
}

/// The recent records of `site` with `role` and `key`.
fn recent(site: &Site, key: &str, role: &str) -> Vec<Value> {
    admin_json(site, "/v1/flows")["recent"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["routingKey"] == key && r["role"] == role)
        .cloned()
        .collect()
}

/// Two sites, west linked to east, both running, the link up.
fn linked_pair() -> (Site, Site) {
    let mut east = Site::create("east", true);
    let mut west = Site::create("west", false);
    east.start();
    link(&west, &east);
    west.start();
    west.wait_link(Duration::from_secs(15), "up to east", is_link("up", "east"));
    (west, east)
}

/// A loopback port nothing listens on (bound, then closed).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Connects to `addr`, sends `payload`, half-closes and reads to the end: (client address,
/// what came back).
fn exchange(addr: &str, payload: &[u8]) -> (String, Vec<u8>) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let me = c.local_addr().unwrap().to_string();
    let _ = c.write_all(payload);
    let _ = c.shutdown(Shutdown::Write);
    let mut back = Vec::new();
    let _ = c.read_to_end(&mut back);
    (me, back)
}

/// A simple digest (FNV-1a) to compare payloads in messages.
fn digest(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, x| {
        (h ^ u64::from(*x)).wrapping_mul(0x100_0000_01b3)
    })
}

#[test]
fn flows_that_pass_leave_exact_records_and_metrics_at_both_ends() {
    let (west, east) = linked_pair();
    let echo = Echo::start();
    let port = echo.port.to_string();
    ok(&["connector", "create", "echo", &port, "--dir", east.d()]);
    ok(&[
        "listener",
        "create",
        "echo",
        "0",
        "--host",
        "127.0.0.1",
        "--dir",
        west.d(),
    ]);
    let addr = west.wait_listener_active("echo", Duration::from_secs(15));

    // The listener says which site it reaches.
    let l = listed(&west, "listener", "echo");
    assert_eq!(l["reason"], "reachable: east (cost 1)", "{l:#}");
    assert_eq!(l["targets"][0]["siteName"], "east", "{l:#}");

    const N: usize = 20;
    let mut sent = Vec::new();
    let t0 = Instant::now();
    for i in 0..N {
        let payload: Vec<u8> = (0..1000 + i * 3001).map(|j| (j * 7 + i) as u8).collect();
        let (client, back) = exchange(&addr, &payload);
        assert_eq!(
            (back.len(), digest(&back)),
            (payload.len(), digest(&payload)),
            "flow {i}: the echo came back different"
        );
        sent.push((client, payload.len() as u64));
    }
    eprintln!("{N} flows echoed in {:?}", t0.elapsed());

    let records = wait_for(
        Duration::from_secs(10),
        "20 ingress records at west",
        || format!("{:#}", admin_json(&west, "/v1/flows")),
        || {
            let r = recent(&west, "echo", "ingress");
            (r.len() == N).then_some(r)
        },
    );
    for (r, (client, bytes)) in records.iter().zip(&sent) {
        assert_eq!(r["outcome"], "ok", "{r:#}");
        assert_eq!(r["reason"], Value::Null, "{r:#}");
        assert_eq!(r["client"], client.as_str(), "{r:#}");
        assert_eq!(r["bytesForward"], *bytes, "{r:#}");
        assert_eq!(r["bytesBack"], *bytes, "{r:#}");
        assert_eq!(r["origin"]["name"], "west", "{r:#}");
        assert_eq!(r["destination"]["name"], "east", "{r:#}");
        assert_eq!(r["listener"], "echo", "{r:#}");
        assert!(r["durationMs"].is_u64(), "{r:#}");
        assert!(
            r["started"].as_str().is_some_and(|s| s.ends_with('Z')),
            "{r:#}"
        );
    }
    // The egress recorded the same flows, with the connector and the origin.
    let at_east = wait_for(
        Duration::from_secs(10),
        "20 egress records at east",
        || format!("{:#}", admin_json(&east, "/v1/flows")),
        || {
            let r = recent(&east, "echo", "egress");
            (r.len() == N).then_some(r)
        },
    );
    let total: u64 = sent.iter().map(|(_, b)| b).sum();
    let ids = |rs: &[Value]| {
        let mut v: Vec<String> = rs.iter().map(|r| r["id"].to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(
        ids(&records),
        ids(&at_east),
        "the same flow ids at both ends"
    );
    assert!(
        at_east
            .iter()
            .all(|r| r["connector"] == "echo" && r["origin"]["name"] == "west")
    );
    // The egress knows each flow's client too: the flow header carries it.
    for r in &at_east {
        let at_west = records.iter().find(|w| w["id"] == r["id"]).unwrap();
        assert!(r["client"].is_string(), "{r:#}");
        assert_eq!(r["client"], at_west["client"], "{r:#}");
    }
    let east_bytes: u64 = at_east
        .iter()
        .map(|r| r["bytesForward"].as_u64().unwrap())
        .sum();
    assert_eq!(east_bytes, total);

    let m = admin_text(&west, "/metrics");
    let want = [
        (
            r#"skiff_flows_total{key="echo",role="ingress",outcome="ok"}"#,
            N as f64,
        ),
        (
            r#"skiff_flows_total{key="echo",role="ingress",outcome="reset"}"#,
            0.0,
        ),
        (r#"skiff_flows_active{key="echo",role="ingress"}"#, 0.0),
        (
            r#"skiff_flow_bytes_total{key="echo",role="ingress",direction="forward"}"#,
            total as f64,
        ),
        (
            r#"skiff_flow_bytes_total{key="echo",role="ingress",direction="back"}"#,
            total as f64,
        ),
        (r#"skiff_flow_duration_seconds_count{key="echo"}"#, N as f64),
        (r#"skiff_flow_setup_seconds_count{key="echo"}"#, N as f64),
        (
            r#"skiff_listener_status{listener="echo",key="echo",status="active"}"#,
            1.0,
        ),
        (
            r#"skiff_listener_status{listener="echo",key="echo",status="no-target"}"#,
            0.0,
        ),
    ];
    for (series, value) in want {
        assert_eq!(sample(&m, series), Some(value), "{series} in:\n{m}");
    }
    let setup_sum = sample(&m, r#"skiff_flow_setup_seconds_sum{key="echo"}"#).unwrap();
    eprintln!(
        "west: {N} ok flows, {total} bytes each way; mean setup {:.2} ms",
        setup_sum * 1000.0 / N as f64
    );
    let me = admin_text(&east, "/metrics");
    assert_eq!(
        sample(
            &me,
            r#"skiff_flows_total{key="echo",role="egress",outcome="ok"}"#
        ),
        Some(N as f64),
        "{me}"
    );
    assert_eq!(
        sample(
            &me,
            r#"skiff_connector_status{connector="echo",key="echo",status="active"}"#
        ),
        Some(1.0),
        "{me}"
    );
}

#[test]
fn a_refused_backend_is_recorded_named_logged_once_a_second_and_cleared_by_a_success() {
    let (west, east) = linked_pair();
    let port = closed_port();
    let backend = format!("127.0.0.1:{port}");
    ok(&[
        "connector",
        "create",
        "redis",
        &port.to_string(),
        "--dir",
        east.d(),
    ]);
    ok(&[
        "listener",
        "create",
        "redis",
        "0",
        "--host",
        "127.0.0.1",
        "--dir",
        west.d(),
    ]);
    let addr = west.wait_listener_active("redis", Duration::from_secs(15));

    let (client, back) = exchange(&addr, b"PING\r\n");
    assert!(back.is_empty(), "a refused flow returned bytes: {back:?}");
    let r = wait_for(
        Duration::from_secs(10),
        "a connect-refused record at west",
        || format!("{:#}", admin_json(&west, "/v1/flows")),
        || recent(&west, "redis", "ingress").pop(),
    );
    eprintln!("west's record: {r:#}");
    assert_eq!(r["outcome"], "connect-refused", "{r:#}");
    assert_eq!(r["client"], client.as_str(), "{r:#}");
    assert_eq!(r["destination"]["name"], "east", "{r:#}");
    let reason = r["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("backend {backend} refused the connection")),
        "the reason does not name the backend: {reason}"
    );

    // The connector says what failed and when.
    let c = listed(&east, "connector", "redis");
    eprintln!("east's connector: {c:#}");
    assert_eq!(c["status"], "failing", "{c:#}");
    let why = c["reason"].as_str().unwrap();
    assert!(
        why.contains(&format!("backend {backend} refused the connection"))
            && why.contains(" UTC; 1 of the last 1 attempts failed"),
        "{why}"
    );
    let table = String::from_utf8_lossy(&east.run(&["connector", "list"]).stdout).into_owned();
    eprintln!("{table}");

    // The ingress's log has one warn line naming the key, the egress site, the client and why.
    let line = flow_warn_line(&west, "west");
    eprintln!("west's log line: {line}");
    for want in [
        "key=redis",
        "site=east",
        "role=ingress",
        &format!("client={client}"),
        "outcome=connect-refused",
        &backend,
    ] {
        assert!(line.contains(want), "no {want} in: {line}");
    }
    // And the egress's names the origin.
    let east_line = flow_warn_line(&east, "east");
    eprintln!("east's log line: {east_line}");
    assert!(
        east_line.contains("key=redis") && east_line.contains("site=west"),
        "{east_line}"
    );

    // A flood of refused flows: at most one line per second for the key, the next one says
    // how many it left out; every flow is still recorded and counted.
    let flood: u32 = 200;
    let t0 = Instant::now();
    for _ in 0..flood {
        let _ = exchange(&addr, b"x");
    }
    let flood_time = t0.elapsed();
    std::thread::sleep(Duration::from_millis(1100));
    let _ = exchange(&addr, b"x");
    let m = wait_for(
        Duration::from_secs(10),
        "every refused flow counted at west",
        || admin_text(&west, "/metrics"),
        || {
            let m = admin_text(&west, "/metrics");
            let n = sample(
                &m,
                r#"skiff_flows_total{key="redis",role="ingress",outcome="connect-refused"}"#,
            )?;
            (n == f64::from(flood + 2)).then_some(m)
        },
    );
    let log = west.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("flow failed") && l.contains("key=redis"))
        .collect();
    let allowed = 2 + flood_time.as_secs() as usize + 2;
    eprintln!(
        "1 refused flow, {flood} more in {flood_time:?}, one more after 1.1 s: {} warn lines at west",
        lines.len()
    );
    assert!(
        lines.len() <= allowed,
        "{} lines for {} refusals:\n{}",
        lines.len(),
        flood + 2,
        lines.join("\n")
    );
    let suppressed: u64 = lines
        .iter()
        .filter_map(|l| l.split("suppressed=").nth(1))
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert!(
        suppressed + lines.len() as u64 == u64::from(flood + 2),
        "lines ({}) and suppressed counts ({suppressed}) do not add up to {} refusals:\n{}",
        lines.len(),
        flood + 2,
        lines.join("\n")
    );
    let _ = m;
    let me = admin_text(&east, "/metrics");
    assert_eq!(
        sample(
            &me,
            r#"skiff_connector_status{connector="redis",key="redis",status="failing"}"#
        ),
        Some(1.0),
        "{me}"
    );

    // The backend comes: the next flow passes, and the connector is active again.
    let backend_listener = TcpListener::bind(&backend).unwrap();
    let server = std::thread::spawn(move || {
        let (mut c, _) = backend_listener.accept().unwrap();
        let mut b = Vec::new();
        c.read_to_end(&mut b).unwrap();
        c.write_all(&b).unwrap();
    });
    let (_, back) = exchange(&addr, b"PING\r\n");
    assert_eq!(back, b"PING\r\n");
    server.join().unwrap();
    let c = listed(&east, "connector", "redis");
    assert_eq!(c["status"], "active", "{c:#}");
    assert!(c.get("reason").is_none(), "{c:#}");
}

#[test]
fn a_key_nobody_serves_says_so_until_a_connector_appears_then_which_site_is_gone() {
    let (west, mut east) = linked_pair();
    ok(&[
        "listener",
        "create",
        "ghost",
        "0",
        "--host",
        "127.0.0.1",
        "--dir",
        west.d(),
    ]);
    let no_connector = "no site in the network has a connector for key \"ghost\"";
    let l = wait_for(
        Duration::from_secs(10),
        "listener ghost bound",
        || west.log(),
        || {
            let l = listed(&west, "listener", "ghost");
            l["address"].is_string().then_some(l)
        },
    );
    assert_eq!(l["status"], "no-target", "{l:#}");
    assert_eq!(l["reason"], no_connector, "{l:#}");
    let addr = l["address"].as_str().unwrap().to_owned();

    let (client, back) = exchange(&addr, b"hello");
    assert!(back.is_empty());
    let r = wait_for(
        Duration::from_secs(5),
        "a no-route record",
        || format!("{:#}", admin_json(&west, "/v1/flows")),
        || recent(&west, "ghost", "ingress").pop(),
    );
    eprintln!("west's record: {r:#}");
    assert_eq!(r["outcome"], "no-route", "{r:#}");
    assert_eq!(r["reason"], no_connector, "{r:#}");
    assert_eq!(r["client"], client.as_str(), "{r:#}");
    assert!(r["destination"].is_null(), "{r:#}");
    let m = admin_text(&west, "/metrics");
    assert_eq!(
        sample(
            &m,
            r#"skiff_listener_status{listener="ghost",key="ghost",status="no-target"}"#
        ),
        Some(1.0),
        "{m}"
    );

    // A connector at east: the reason turns to the reachable site, and a flow passes.
    let echo = Echo::start();
    ok(&[
        "connector",
        "create",
        "ghost",
        &echo.port.to_string(),
        "--dir",
        east.d(),
    ]);
    let l = wait_for(
        Duration::from_secs(10),
        "listener ghost reaching east",
        || format!("{:#}", listed(&west, "listener", "ghost")),
        || {
            let l = listed(&west, "listener", "ghost");
            (l["status"] == "active").then_some(l)
        },
    );
    assert_eq!(l["reason"], "reachable: east (cost 1)", "{l:#}");
    let (_, back) = exchange(&addr, b"hello");
    assert_eq!(back, b"hello");

    // East goes away: the listener names it as unreachable.
    east.kill();
    let l = wait_for(
        Duration::from_secs(20),
        "listener ghost without target after east died",
        || format!("{:#}", listed(&west, "listener", "ghost")),
        || {
            let l = listed(&west, "listener", "ghost");
            (l["status"] == "no-target").then_some(l)
        },
    );
    eprintln!("after east died: {}", l["reason"]);
    let table = String::from_utf8_lossy(&west.run(&["listener", "list"]).stdout).into_owned();
    eprintln!("{table}");
    assert_eq!(
        l["reason"],
        "key \"ghost\" is served by east, which is unreachable from here (no link path)",
        "{l:#}"
    );
}

#[test]
fn the_record_ring_stays_at_512_newest_last() {
    let mut west = Site::create("west", false);
    west.start();
    ok(&[
        "listener",
        "create",
        "ghost",
        "0",
        "--host",
        "127.0.0.1",
        "--dir",
        west.d(),
    ]);
    let addr = wait_for(
        Duration::from_secs(10),
        "listener ghost bound",
        || west.log(),
        || {
            let l = listed(&west, "listener", "ghost");
            l["address"].as_str().map(str::to_owned)
        },
    );
    let n = 700;
    let rss_before = common::rss_kib(west.pid());
    let t0 = Instant::now();
    let mut last_client = String::new();
    for _ in 0..n {
        let c = TcpStream::connect(&addr).unwrap();
        last_client = c.local_addr().unwrap().to_string();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = (&c).read(&mut [0u8; 1]);
    }
    eprintln!("{n} refused flows in {:?}", t0.elapsed());
    let flows = wait_for(
        Duration::from_secs(10),
        "every refusal counted",
        || admin_text(&west, "/metrics"),
        || {
            let m = admin_text(&west, "/metrics");
            let c = sample(
                &m,
                r#"skiff_flows_total{key="ghost",role="ingress",outcome="no-route"}"#,
            )?;
            (c == f64::from(n)).then(|| admin_json(&west, "/v1/flows"))
        },
    );
    let recent = flows["recent"].as_array().unwrap();
    let rss_after = common::rss_kib(west.pid());
    eprintln!(
        "ring: {} records after {n} flows; RSS {rss_before} KiB -> {rss_after} KiB",
        recent.len()
    );
    assert_eq!(recent.len(), 512);
    assert_eq!(recent.last().unwrap()["client"], last_client.as_str());
    let started: Vec<&str> = recent
        .iter()
        .map(|r| r["started"].as_str().unwrap())
        .collect();
    assert!(
        started.windows(2).all(|w| w[0] <= w[1]),
        "records not oldest first"
    );
    assert!(
        rss_after < rss_before + 8 * 1024,
        "memory grew by {} KiB over {n} refused flows",
        rss_after.saturating_sub(rss_before)
    );
}

/// `python3 -m http.server` on a loopback port, serving `dir`; killed (by its PID, our own
/// child) on drop.
struct PyHttp {
    child: std::process::Child,
    port: u16,
}

impl PyHttp {
    fn start(dir: &std::path::Path) -> PyHttp {
        let port = common::free_port();
        let child = std::process::Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--directory")
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 -m http.server");
        let s = PyHttp { child, port };
        wait_for(
            Duration::from_secs(10),
            "python3 http.server listening",
            String::new,
            || TcpStream::connect(("127.0.0.1", port)).ok(),
        );
        s
    }
}

impl Drop for PyHttp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_http_client_connection_is_one_record_with_its_requests_counted() {
    let (west, east) = linked_pair();
    let root = tempfile::tempdir().unwrap();
    let page = "hello from east\n".repeat(64);
    std::fs::write(root.path().join("page.txt"), &page).unwrap();
    let backend = PyHttp::start(root.path());
    let port = backend.port.to_string();
    ok(&[
        "connector",
        "create",
        "web",
        &port,
        "--type",
        "http",
        "--dir",
        east.d(),
    ]);
    ok(&[
        "listener",
        "create",
        "web",
        "0",
        "--host",
        "127.0.0.1",
        "--type",
        "http",
        "--dir",
        west.d(),
    ]);
    let addr = west.wait_listener_active("web", Duration::from_secs(15));
    let url = format!("http://{addr}/page.txt");

    // Three requests on one keep-alive connection: one record, three requests.
    let o = std::process::Command::new("curl")
        .args(["-s", "--http1.1", "--max-time", "10"])
        .args(["-w", "%{http_code} %{num_connects}\\n"])
        .args(["-o", "/dev/null", &url, "-o", "/dev/null", &url])
        .args(["-o", "/dev/null", &url])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(out, "200 1\n200 0\n200 0\n", "{}", text(&o));
    let r = wait_for(
        Duration::from_secs(10),
        "an HTTP record at west",
        || format!("{:#}", admin_json(&west, "/v1/flows")),
        || recent(&west, "web", "ingress").pop(),
    );
    eprintln!("HTTP record: {r:#}");
    assert_eq!(r["outcome"], "ok", "{r:#}");
    assert_eq!(
        (r["requests"].as_u64(), r["failedRequests"].as_u64()),
        (Some(3), Some(0))
    );
    assert_eq!(r["destination"]["name"], "east", "{r:#}");
    assert!(
        r["bytesBack"].as_u64().unwrap() > 3 * page.len() as u64,
        "three bodies of {} bytes did not pass: {r:#}",
        page.len()
    );
    assert!(
        r["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{r:#}"
    );

    // The backend gone: the request is answered by skiff, and the record says why.
    drop(backend);
    let o = std::process::Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg(&url)
        .output()
        .unwrap();
    let code = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(code.starts_with('5'), "status {code}");
    let r = wait_for(
        Duration::from_secs(10),
        "a second HTTP record at west",
        || format!("{:#}", admin_json(&west, "/v1/flows")),
        || {
            let mut r = recent(&west, "web", "ingress");
            (r.len() == 2).then(|| r.pop().unwrap())
        },
    );
    eprintln!("HTTP status {code}, record: {r:#}");
    assert_eq!(r["outcome"], "connect-refused", "{r:#}");
    assert_eq!(r["failedRequests"], 1, "{r:#}");
    let reason = r["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("1 of 1 requests failed; the last: "),
        "{reason}"
    );
    // The egress says so in its log, as for a TCP flow.
    let line = wait_for(
        Duration::from_secs(5),
        "a warn line at east (HTTP egress)",
        || east.log(),
        || {
            east.log()
                .lines()
                .find(|l| {
                    l.contains("WARN")
                        && l.contains("flow failed")
                        && l.contains("role=egress")
                        && l.contains("key=web")
                })
                .map(str::to_owned)
        },
    );
    eprintln!("east's HTTP egress line: {line}");
    assert!(
        line.contains("site=west") && line.contains("outcome=connect-refused"),
        "{line}"
    );
    assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");
    let c = listed(&east, "connector", "web");
    assert_eq!(c["status"], "failing", "{c:#}");
    assert!(
        c["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("127.0.0.1:{port}")),
        "{c:#}"
    );

    // A TCP health check (connect, then close; `nc -z`, a kube tcpSocket probe) is no
    // failure: recorded ok, with no request, and no warn line.
    let probe = std::net::TcpStream::connect(addr).unwrap();
    drop(probe);
    let started = std::time::Instant::now();
    let r = wait_for(
        Duration::from_secs(5),
        "a third HTTP record at west (the probe's)",
        || format!("{:#}", admin_json(&west, "/v1/flows")),
        || {
            let mut r = recent(&west, "web", "ingress");
            (r.len() == 3).then(|| r.pop().unwrap())
        },
    );
    eprintln!(
        "connect-and-close recorded after {:?}: {r:#}",
        started.elapsed()
    );
    assert_eq!(r["outcome"], "ok", "{r:#}");
    assert!(r["reason"].is_null(), "{r:#}");
    assert_eq!(r["requests"], 0, "{r:#}");
    let log = west.log();
    assert!(
        !log.lines()
            .any(|l| l.contains("WARN") && l.contains("no request")),
        "a health check left a warn line:\n{log}"
    );
}

/// `python3 observe_flows/peers.py ARGS`.
fn peers(args: &[&str]) -> std::process::Command {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/observe_flows/peers.py");
    let mut c = std::process::Command::new("python3");
    c.arg(script).args(args);
    c
}

/// A backend whose accept queue is full: connects to it time out. Ends (stdin closed, then
/// killed by PID, our own child) on drop.
struct Deaf {
    child: std::process::Child,
    port: u16,
}

impl Deaf {
    fn start() -> Deaf {
        let mut child = peers(&["deaf"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 peers.py deaf");
        let mut line = String::new();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("port: {line:?}"));
        Deaf { child, port }
    }
}

impl Drop for Deaf {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_client_reset_and_a_backend_that_never_accepts_are_told_apart() {
    let (west, east) = linked_pair();
    let echo = Echo::start();
    let deaf = Deaf::start();
    for (name, port) in [("echo", echo.port), ("deaf", deaf.port)] {
        ok(&[
            "connector",
            "create",
            name,
            &port.to_string(),
            "--dir",
            east.d(),
        ]);
        ok(&[
            "listener",
            "create",
            name,
            "0",
            "--host",
            "127.0.0.1",
            "--dir",
            west.d(),
        ]);
    }
    let echo_addr = west.wait_listener_active("echo", Duration::from_secs(15));
    let deaf_addr = west.wait_listener_active("deaf", Duration::from_secs(15));

    // A client that resets its connection after an exchange.
    let o = peers(&["reset", &echo_addr]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let client = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    let r = wait_for(
        Duration::from_secs(10),
        "a reset record at west",
        || format!("{:#}", admin_json(&west, "/v1/flows")),
        || recent(&west, "echo", "ingress").pop(),
    );
    eprintln!("reset by the client: {r:#}");
    assert_eq!(r["outcome"], "reset", "{r:#}");
    assert_eq!(r["client"], client.as_str(), "{r:#}");
    assert_eq!(
        (r["bytesForward"].as_u64(), r["bytesBack"].as_u64()),
        (Some(4), Some(4))
    );
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .starts_with("the client reset the flow"),
        "{r:#}"
    );
    let e = wait_for(
        Duration::from_secs(10),
        "a record of it at east",
        || format!("{:#}", admin_json(&east, "/v1/flows")),
        || recent(&east, "echo", "egress").pop(),
    );
    eprintln!("at the egress: {e:#}");
    assert_eq!(e["outcome"], "reset", "{e:#}");
    assert_eq!(e["id"], r["id"], "the same flow id at both ends");

    // A backend that never accepts: connect-timeout after the connect timeout (5 s).
    let t0 = Instant::now();
    let (_, back) = exchange(&deaf_addr, b"hello");
    let took = t0.elapsed();
    assert!(back.is_empty());
    let r = wait_for(
        Duration::from_secs(10),
        "a connect-timeout record at west",
        || format!("{:#}", admin_json(&west, "/v1/flows")),
        || recent(&west, "deaf", "ingress").pop(),
    );
    eprintln!("backend never accepts, client refused after {took:?}: {r:#}");
    assert_eq!(r["outcome"], "connect-timeout", "{r:#}");
    let reason = r["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("backend 127.0.0.1:{} did not accept", deaf.port)),
        "{reason}"
    );
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(10),
        "the client waited {took:?}"
    );
    let c = listed(&east, "connector", "deaf");
    assert_eq!(c["status"], "failing", "{c:#}");
    let m = admin_text(&west, "/metrics");
    assert_eq!(
        sample(
            &m,
            r#"skiff_flows_total{key="deaf",role="ingress",outcome="connect-timeout"}"#
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            r#"skiff_flows_total{key="echo",role="ingress",outcome="reset"}"#
        ),
        Some(1.0),
        "{m}"
    );
}
