//! Black-box tests of the admin API of real `skiff site run` processes, over the unix socket
//! and over `--admin-address`: what every route answers on a linked pair (JSON shapes,
//! Prometheus text, 404/405 and the socket-only 403s), the recent log lines (`/v1/logs`) with
//! a line the test caused, readiness warnings for a listener that cannot bind, and `/readyz`
//! turning 503 with its reason while a site drains a flow at shutdown.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Echo, Site, expose_echo, link, skiff, skiff_bin, text};
use serde_json::Value;

/// Where an admin API listens.
#[derive(Clone, Debug)]
enum Admin {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

/// One HTTP answer.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// `METHOD PATH` on `admin` (HTTP/1.1, one request per connection, `Host` as a browser
/// sends it: the address on TCP); `None` when the connection failed (the site is not there).
fn try_request(admin: &Admin, method: &str, path: &str) -> Option<Reply> {
    let host = match admin {
        Admin::Unix(_) => "skiff".to_string(),
        Admin::Tcp(a) => a.to_string(),
    };
    try_request_to(admin, &host, method, path)
}

/// [`try_request`] with the given `Host`.
fn try_request_to(admin: &Admin, host: &str, method: &str, path: &str) -> Option<Reply> {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    let timeout = Some(Duration::from_secs(10));
    let mut raw = Vec::new();
    match admin {
        Admin::Unix(p) => {
            let mut s = UnixStream::connect(p).ok()?;
            s.set_read_timeout(timeout).unwrap();
            s.write_all(head.as_bytes()).ok()?;
            s.read_to_end(&mut raw).ok()?;
        }
        Admin::Tcp(a) => {
            let mut s = TcpStream::connect_timeout(a, Duration::from_secs(5)).ok()?;
            s.set_read_timeout(timeout).unwrap();
            s.write_all(head.as_bytes()).ok()?;
            s.read_to_end(&mut raw).ok()?;
        }
    }
    let text = String::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Some(Reply {
        status,
        headers,
        body: body.to_string(),
    })
}

fn request(admin: &Admin, method: &str, path: &str) -> Reply {
    try_request(admin, method, path)
        .unwrap_or_else(|| panic!("{method} {path} on {admin:?}: no answer"))
}

/// `GET PATH`, which must answer 200 with JSON.
fn get_json(admin: &Admin, path: &str) -> Value {
    let r = request(admin, "GET", path);
    assert_eq!(r.status, 200, "GET {path} on {admin:?}: {r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"), "{path}");
    r.json()
}

/// A `skiff site run` of a [`Site`]'s folder with extra arguments, killed (by its PID) on
/// drop; its stderr goes to a file.
struct Running {
    child: Option<Child>,
    log: PathBuf,
    unix: Admin,
}

impl Running {
    /// Starts `site run --dir D ARGS` with `env` and waits until `/readyz` answers 200 on
    /// the socket.
    fn start(site: &Site, args: &[&str], env: &[(&str, &str)]) -> Running {
        let log = site.dir.with_file_name(format!("{}-run.log", site.name));
        let mut cmd = Command::new(skiff_bin());
        cmd.args(["site", "run", "--dir", site.d()])
            .args(args)
            .env("SKIFF_LOG", "info")
            .env_remove("SKIFF_LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut r = Running {
            child: Some(cmd.spawn().expect("spawn site run")),
            log,
            unix: Admin::Unix(site.dir.join("admin.sock")),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if try_request(&r.unix, "GET", "/readyz").is_some_and(|a| a.status == 200) {
                return r;
            }
            if let Some(s) = r.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("site run exited with {s}: {}", r.log());
            }
            assert!(
                Instant::now() < deadline,
                "not ready within 15 s: {}",
                r.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// The TCP admin address the site logged (`admin_tcp=Some(ADDR)` in "site running").
    fn tcp(&self) -> Admin {
        let log = self.log();
        let addr = log
            .lines()
            .filter(|l| l.contains("site running"))
            .find_map(|l| l.split("admin_tcp=Some(").nth(1)?.split(')').next())
            .unwrap_or_else(|| panic!("no admin_tcp in the log: {log}"));
        Admin::Tcp(addr.parse().unwrap())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `GET PATH` until `pred` holds, within `within`.
fn wait_for(
    admin: &Admin,
    path: &str,
    within: Duration,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let v = get_json(admin, path);
        if pred(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not seen within {within:?}: {v:#}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Sends `n` bytes through `addr` and reads them back; the SHA-free check: the same bytes.
fn echo_through(addr: &str, n: usize) -> TcpStream {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let out: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
    c.write_all(&out).unwrap();
    let mut back = vec![0u8; n];
    c.read_exact(&mut back).unwrap();
    assert!(back == out, "bytes changed on the way");
    c
}

/// Every non-comment line of Prometheus text is `name{labels} value` with a number value.
fn assert_prometheus_text(body: &str) -> usize {
    let mut samples = 0;
    for line in body.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line:?}"));
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "value of {line:?}"
        );
        let name = series.split('{').next().unwrap();
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "metric name of {line:?}"
        );
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            assert!(
                labels.starts_with('{') && labels.ends_with('}'),
                "labels of {line:?}"
            );
            for pair in labels[1..labels.len() - 1]
                .split("\",")
                .filter(|p| !p.is_empty())
            {
                let (k, v) = pair
                    .split_once('=')
                    .unwrap_or_else(|| panic!("label {pair:?} of {line:?}"));
                assert!(
                    k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "label name {k:?} of {line:?}"
                );
                assert!(v.starts_with('"'), "label value {v:?} of {line:?}");
            }
        }
        samples += 1;
    }
    samples
}

const GET_ROUTES: [&str; 11] = [
    "/healthz",
    "/livez",
    "/readyz",
    "/metrics",
    "/v1/site",
    "/v1/links",
    "/v1/listeners",
    "/v1/connectors",
    "/v1/network",
    "/v1/flows",
    "/v1/logs",
];

#[test]
fn every_admin_route_answers_on_a_linked_pair_over_the_socket_and_tcp() {
    let east = Site::create("east", true);
    let west = Site::create("west", false);
    // East logs everything down to debug, in JSON: the redemption of west's token is in it.
    let east_run = Running::start(
        &east,
        &[],
        &[("SKIFF_LOG_FORMAT", "json"), ("SKIFF_LOG", "debug")],
    );
    link(&west, &east);
    let token = std::fs::read_to_string(east.dir.with_file_name("to-east-west.token")).unwrap();
    let code = token
        .lines()
        .find_map(|l| l.trim().strip_prefix("code: "))
        .expect("the token's code")
        .to_string();
    let echo = Echo::start();
    expose_echo(&echo, &east, &west);
    let west_run = Running::start(&west, &["--admin-address", "127.0.0.1:0"], &[]);
    let (unix, tcp) = (west_run.unix.clone(), west_run.tcp());

    // The link is up and the listener serves: one flow of known bytes goes through.
    wait_for(
        &unix,
        "/v1/links",
        Duration::from_secs(15),
        "link up",
        |v| {
            v.as_array()
                .unwrap()
                .iter()
                .any(|l| l["peer_site_name"] == "east" && l["status"] == "up")
        },
    );
    let listeners = wait_for(
        &unix,
        "/v1/listeners",
        Duration::from_secs(15),
        "listener active",
        |v| {
            v.as_array()
                .unwrap()
                .iter()
                .any(|l| l["name"] == "echo" && l["status"] == "active")
        },
    );
    let addr = listeners[0]["address"].as_str().unwrap().to_string();
    drop(echo_through(&addr, 100_000));
    // The flow ends at the routers a moment after the client closes.
    wait_for(
        &unix,
        "/v1/flows",
        Duration::from_secs(10),
        "the flow's end",
        |v| match v {
            Value::Array(active) => active.is_empty(),
            _ => {
                v["active"].as_array().is_some_and(|a| a.is_empty())
                    && v["recent"].as_array().is_some_and(|r| !r.is_empty())
            }
        },
    );

    for admin in [&unix, &tcp] {
        for path in ["/healthz", "/livez"] {
            let r = request(admin, "GET", path);
            assert_eq!(
                (r.status, r.body.as_str()),
                (200, "ok\n"),
                "{path} on {admin:?}"
            );
        }
        let r = request(admin, "GET", "/readyz");
        assert_eq!((r.status, r.body.as_str()), (200, "ready\n"), "{admin:?}");
        let r = request(admin, "GET", "/readyz?verbose");
        assert_eq!(r.status, 200);
        let v = r.json();
        assert_eq!(v["ready"], true, "{v:#}");
        let checks: Vec<&str> = v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            checks,
            [
                "started",
                "not-stopping",
                "link-access",
                "listeners-connectors",
                "links"
            ]
        );
        let links = &v["checks"][4]["detail"];
        assert!(links.as_str().unwrap().starts_with("1 of 1 up"), "{links}");

        let site = get_json(admin, "/v1/site");
        assert_eq!(site["name"], "west");
        assert_eq!(site["mode"], "interior");
        assert_eq!(site["linkAccess"], false);
        assert!(site["id"].as_str().is_some_and(|id| !id.is_empty()));

        let links = get_json(admin, "/v1/links");
        let l = &links.as_array().unwrap()[0];
        assert_eq!(
            (&l["peer_site_name"], &l["status"], &l["direction"]),
            (
                &Value::from("east"),
                &Value::from("up"),
                &Value::from("outbound")
            ),
            "{links:#}"
        );

        let listeners = get_json(admin, "/v1/listeners");
        let l = &listeners.as_array().unwrap()[0];
        assert_eq!(
            (&l["name"], &l["status"]),
            (&Value::from("echo"), &Value::from("active"))
        );
        assert!(l["flowsTotal"].as_u64().unwrap() >= 1, "{l:#}");
        assert_eq!(get_json(admin, "/v1/connectors"), Value::Array(Vec::new()));

        let network = get_json(admin, "/v1/network");
        let mut names: Vec<&str> = network["routers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["east", "west"], "{network:#}");
        assert!(
            network["keys"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["routingKey"] == "echo"),
            "{network:#}"
        );

        // `{"active": [...], "recent": [...]}` (issue 9), or the plain list of active flows
        // of earlier versions: the flow above has ended either way.
        let flows = get_json(admin, "/v1/flows");
        match &flows {
            Value::Array(active) => assert!(active.is_empty(), "{flows:#}"),
            _ => {
                assert!(flows["active"].as_array().unwrap().is_empty(), "{flows:#}");
                let recent = flows["recent"].as_array().unwrap();
                assert!(
                    recent.iter().any(|f| f["routingKey"] == "echo"
                        && f["role"] == "ingress"
                        && f["origin"]["name"] == "west"
                        && f["destination"]["name"] == "east"
                        && f["client"]
                            .as_str()
                            .is_some_and(|c| c.starts_with("127.0.0.1:"))
                        && f["bytesForward"] == 100_000
                        && f["bytesBack"] == 100_000
                        && f["outcome"] == "ok"),
                    "{flows:#}"
                );
            }
        }

        let r = request(admin, "GET", "/metrics");
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        let samples = assert_prometheus_text(&r.body);
        assert!(r.body.contains("skiff_info{"), "{}", r.body);
        assert!(
            r.body.contains("skiff_links{status=\"up\"} 1"),
            "{}",
            r.body
        );
        eprintln!(
            "metrics over {admin:?}: {samples} samples, {} bytes",
            r.body.len()
        );

        let console = request(admin, "GET", "/");
        assert_eq!(console.status, 200);
        assert!(
            console
                .header("content-type")
                .unwrap()
                .starts_with("text/html")
        );

        // 404 for an unknown path, 405 (with Allow) for another method on every route.
        let r = request(admin, "GET", "/v1/nope");
        assert_eq!(r.status, 404);
        assert!(
            r.json()["error"]
                .as_str()
                .unwrap()
                .starts_with("no such endpoint: /v1/nope")
        );
        for path in GET_ROUTES {
            let r = request(admin, "POST", path);
            assert_eq!(r.status, 405, "POST {path} on {admin:?}: {r:?}");
            assert_eq!(r.header("allow"), Some("GET"), "{path}");
            assert_eq!(
                r.json()["error"],
                "method not allowed: this route answers GET only"
            );
        }
        for method in ["GET", "PUT", "DELETE"] {
            let r = request(admin, method, "/v1/reload");
            assert_eq!(
                (r.status, r.header("allow")),
                (405, Some("POST")),
                "{method}"
            );
        }
    }

    // DNS rebinding: a page on another name reaching the TCP address is refused with what to
    // do; IP literals and localhost names pass; the socket takes any Host.
    let Admin::Tcp(tcp_addr) = tcp else {
        unreachable!()
    };
    for host in [
        "rebind.attacker.example",
        "rebind.attacker.example:80",
        "127.0.0.1.nip.io",
    ] {
        for path in ["/v1/flows", "/v1/network", "/v1/site", "/"] {
            let r = try_request_to(&tcp, host, "GET", path).expect("an answer");
            assert_eq!(r.status, 403, "Host {host} {path}: {r:?}");
            let why = r.json()["error"].as_str().unwrap().to_string();
            assert!(
                why.contains("is refused: the TCP admin address answers only requests addressed to an IP address, localhost or a *.localhost name")
                    && why.contains("http://127.0.0.1:PORT/"),
                "{why}"
            );
            assert!(!r.body.contains("routingKey"), "{r:?}");
        }
    }
    eprintln!(
        "TCP with Host rebind.attacker.example: 403 {}",
        try_request_to(&tcp, "rebind.attacker.example", "GET", "/v1/site")
            .unwrap()
            .body
    );
    let port = tcp_addr.port();
    for host in [
        format!("localhost:{port}"),
        format!("console.localhost:{port}"),
        format!("[::1]:{port}"),
        "127.0.0.1".to_string(),
    ] {
        let r = try_request_to(&tcp, &host, "GET", "/v1/site").expect("an answer");
        assert_eq!(r.status, 200, "Host {host}: {r:?}");
    }
    let r = try_request_to(&unix, "rebind.attacker.example", "GET", "/v1/site").unwrap();
    assert_eq!(r.status, 200, "the socket: {r:?}");
    // Probes and metrics answer any name: Prometheus and health checks address sites by name.
    for path in ["/metrics", "/readyz", "/livez", "/healthz"] {
        let r = try_request_to(&tcp, "site-a.internal:9090", "GET", path).expect("an answer");
        assert_eq!(r.status, 200, "Host site-a.internal {path}: {r:?}");
    }

    // `?limit=N`: at most N of each, the newest, with the totals.
    let all = get_json(&unix, "/v1/flows");
    let recent_total = all["recent"].as_array().unwrap().len();
    assert!(recent_total >= 1, "{all:#}");
    assert!(
        all.get("recentTotal").is_none(),
        "no totals without limit: {all:#}"
    );
    let limited = get_json(&tcp, "/v1/flows?limit=0");
    assert_eq!(
        limited["recent"].as_array().unwrap().len(),
        0,
        "{limited:#}"
    );
    assert_eq!(limited["recentTotal"], recent_total, "{limited:#}");
    assert_eq!(limited["activeTotal"], 0, "{limited:#}");
    let one = get_json(&tcp, "/v1/flows?limit=1");
    assert_eq!(
        one["recent"].as_array().unwrap()[..],
        all["recent"].as_array().unwrap()[recent_total - 1..],
        "limit=1 keeps the newest"
    );
    let r = request(&tcp, "GET", "/v1/flows?limit=lots");
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        r.json()["error"].as_str().unwrap().contains("?limit=N"),
        "{r:?}"
    );

    // The socket serves the logs and reloads; TCP refuses both with the reason.
    let r = request(&tcp, "GET", "/v1/logs");
    assert_eq!(r.status, 403, "{r:?}");
    let why = r.json()["error"].as_str().unwrap().to_string();
    assert!(
        why.starts_with("GET /v1/logs is served on the admin socket only")
            && why.contains("unlike the fixed fields of /v1/flows"),
        "{why}"
    );
    eprintln!("TCP /v1/logs: 403 {why}");
    let r = request(&tcp, "POST", "/v1/reload");
    assert_eq!(r.status, 403, "{r:?}");
    let why = r.json()["error"].as_str().unwrap().to_string();
    assert!(
        why.starts_with("POST /v1/reload is served on the admin socket only"),
        "{why}"
    );
    eprintln!("TCP /v1/reload: 403 {why}");
    let r = request(&unix, "POST", "/v1/reload");
    assert_eq!(
        (r.status, &r.json()["reloaded"]),
        (200, &Value::Bool(true)),
        "{r:?}"
    );

    // A line the test caused: a listener created with the CLI, which reloads the site.
    let o = skiff(&[
        "listener",
        "create",
        "made-by-test",
        "0",
        "--routing-key",
        "echo",
        "--host",
        "127.0.0.1",
        "--dir",
        west.d(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let logs = wait_for(
        &unix,
        "/v1/logs",
        Duration::from_secs(5),
        "the reload line",
        |v| {
            v["lines"].as_array().unwrap().iter().any(|l| {
                let l = l.as_str().unwrap();
                l.contains("reloaded the site folder") && l.contains("added made-by-test")
            })
        },
    );
    let lines = logs["lines"].as_array().unwrap();
    assert_eq!(logs["dropped"], 0);
    assert!(
        lines
            .iter()
            .any(|l| l.as_str().unwrap().contains("site running")),
        "{logs:#}"
    );
    // Lines as stderr has them (same filter, same format), without colours.
    let stderr = west_run.log();
    for l in lines {
        let l = l.as_str().unwrap();
        assert!(!l.contains('\u{1b}'), "colours in {l:?}");
        // Each layer reads the clock itself: the timestamps may differ by microseconds.
        let (_, rest) = l.split_once(' ').unwrap();
        assert!(stderr.contains(rest), "not on stderr: {l:?}\n{stderr}");
    }
    eprintln!(
        "west /v1/logs: {} lines, dropped {}",
        lines.len(),
        logs["dropped"]
    );

    // East logs JSON (SKIFF_LOG_FORMAT=json): so does its ring.
    let east_logs = get_json(&east_run.unix, "/v1/logs");
    let east_lines = east_logs["lines"].as_array().unwrap();
    assert!(!east_lines.is_empty());
    for l in east_lines {
        let v: Value = serde_json::from_str(l.as_str().unwrap()).unwrap();
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{v}"
        );
    }
    // No secret reaches the ring (debug dump ships it): no key, no token code, though the
    // redemption of that token is logged.
    assert!(
        east_lines
            .iter()
            .any(|l| l.as_str().unwrap().contains("\"token redeemed\"")),
        "{east_logs:#}"
    );
    for (who, lines) in [("east", east_lines), ("west", lines)] {
        for l in lines {
            let l = l.as_str().unwrap();
            assert!(!l.contains("PRIVATE KEY"), "{who} logged a key: {l}");
            assert!(!l.contains(&code), "{who} logged the token code: {l}");
        }
    }
    eprintln!(
        "east /v1/logs at debug: {} lines, dropped {}",
        east_lines.len(),
        east_logs["dropped"]
    );
    let east_connectors = get_json(&east_run.unix, "/v1/connectors");
    assert_eq!(east_connectors[0]["name"], "echo", "{east_connectors:#}");
    drop(east_run);
}

#[test]
fn a_listener_that_cannot_bind_is_a_readiness_warning_not_unready() {
    let west = Site::create("west", false);
    let run = Running::start(&west, &[], &[]);
    // A port in use on loopback, held by this test.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let o = skiff(&[
        "listener",
        "create",
        "busy",
        &port,
        "--routing-key",
        "db",
        "--host",
        "127.0.0.1",
        "--dir",
        west.d(),
    ]);
    eprintln!("listener create on a busy port: {}", text(&o));
    let r = request(&run.unix, "GET", "/readyz");
    assert_eq!(r.status, 200, "{r:?}");
    let mut lines = r.body.lines();
    assert_eq!(lines.next(), Some("ready"));
    let warning = lines.next().unwrap_or_default();
    assert!(
        warning.starts_with("warning: listener busy is not serving: ") && warning.contains(&port),
        "{:?}",
        r.body
    );
    eprintln!("/readyz with a busy port:\n{}", r.body);
    let v = request(&run.unix, "GET", "/readyz?verbose").json();
    assert_eq!(v["ready"], true);
    assert_eq!(v["warnings"].as_array().unwrap().len(), 1, "{v:#}");
    drop(busy);
}

#[test]
fn readyz_turns_503_with_the_reason_while_the_site_drains_a_flow() {
    let east = Site::create("east", true);
    let west = Site::create("west", false);
    let east_run = Running::start(&east, &[], &[]);
    link(&west, &east);
    let echo = Echo::start();
    expose_echo(&echo, &east, &west);
    let mut west_run = Running::start(&west, &["--admin-address", "127.0.0.1:0"], &[]);
    let (unix, tcp) = (west_run.unix.clone(), west_run.tcp());
    let listeners = wait_for(
        &unix,
        "/v1/listeners",
        Duration::from_secs(15),
        "listener active",
        |v| {
            v.as_array()
                .unwrap()
                .iter()
                .any(|l| l["name"] == "echo" && l["status"] == "active")
        },
    );
    let addr = listeners[0]["address"].as_str().unwrap().to_string();
    // A flow in progress: west's shutdown waits for it (up to its grace of 5 s).
    let mut flow = echo_through(&addr, 10_000);

    let term = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &west_run.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut seen = Vec::new();
    let deadline = term + Duration::from_secs(4);
    let not_ready = loop {
        assert!(
            Instant::now() < deadline,
            "no 503 within 4 s of SIGTERM: {seen:?}\n{}",
            west_run.log()
        );
        match try_request(&tcp, "GET", "/readyz") {
            Some(r) if r.status == 503 => break (r, term.elapsed()),
            Some(r) => seen.push(r.status),
            None => seen.push(0),
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (r, after) = not_ready;
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["ready"], false, "{v:#}");
    let reason = v["reasons"][0].as_str().unwrap().to_string();
    assert!(
        reason
            .starts_with("the site is shutting down: listeners close and flows in progress drain"),
        "{reason}"
    );
    eprintln!(
        "503 after {after:?} (answers before it: {seen:?}): {}",
        r.body
    );
    // Both addresses say so; liveness holds; the other routes say why they are gone. A
    // connection that lands just as the site's server hands over to the probes-only one may
    // be closed unanswered (never a 200): each request is tried up to 3 times.
    let answer = |admin: &Admin, path: &str| {
        (0..3)
            .find_map(|i| {
                if i > 0 {
                    std::thread::sleep(Duration::from_millis(50));
                }
                try_request(admin, "GET", path)
            })
            .unwrap_or_else(|| panic!("GET {path} on {admin:?}: no answer in 3 tries"))
    };
    for admin in [&unix, &tcp] {
        let r = answer(admin, "/readyz");
        assert_eq!(r.status, 503, "{admin:?}: {r:?}");
        assert_eq!(answer(admin, "/livez").status, 200);
        let r = answer(admin, "/v1/site");
        assert_eq!(r.status, 503, "{admin:?}: {r:?}");
        assert!(
            r.json()["error"]
                .as_str()
                .unwrap()
                .starts_with("the site is shutting down"),
            "{r:?}"
        );
    }
    // The flow in progress still carries bytes intact while the site drains.
    let out = [7u8; 4096];
    flow.write_all(&out).unwrap();
    let mut back = [0u8; 4096];
    flow.read_exact(&mut back).unwrap();
    assert_eq!(back, out);
    // Once it ends the site exits, well before the grace runs out.
    drop(flow);
    let ended = Instant::now();
    let mut child = west_run.child.take().unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if ended.elapsed() > Duration::from_secs(8) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "west did not exit within 8 s of its last flow: {}",
                west_run.log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}: {}", west_run.log());
    eprintln!(
        "west exited {:?} after its last flow ended ({:?} after SIGTERM)",
        ended.elapsed(),
        term.elapsed()
    );
    assert!(
        try_request(&unix, "GET", "/readyz").is_none(),
        "socket still answers"
    );
    drop(east_run);
}

#[test]
fn the_log_lines_of_a_running_site_stay_bounded() {
    let site = Site::create("busy-log", false);
    let run = Running::start(&site, &[], &[]);
    let before = get_json(&run.unix, "/v1/logs");
    let first = before["lines"].as_array().unwrap().len() as u64;
    // Every reload logs one line ("reloaded the site folder"): 2 500 of them overflow the
    // ring's 2 000 lines.
    let reloads = 2_500u64;
    let started = Instant::now();
    for i in 0..reloads {
        let r = request(&run.unix, "POST", "/v1/reload");
        assert_eq!(r.status, 200, "reload {i}: {r:?}");
        assert!(started.elapsed() < Duration::from_secs(120), "too slow");
    }
    let took = started.elapsed();
    let logs = get_json(&run.unix, "/v1/logs");
    let lines = logs["lines"].as_array().unwrap();
    let bytes: usize = lines.iter().map(|l| l.as_str().unwrap().len()).sum();
    let dropped = logs["dropped"].as_u64().unwrap();
    assert_eq!(lines.len(), 2_000, "lines kept");
    assert_eq!(
        dropped + lines.len() as u64,
        first + reloads,
        "every line is kept or counted as dropped"
    );
    assert!(bytes <= 1024 * 1024, "{bytes} bytes kept");
    assert!(
        lines
            .last()
            .unwrap()
            .as_str()
            .unwrap()
            .contains("reloaded the site folder"),
        "{:?}",
        lines.last()
    );
    eprintln!(
        "{reloads} reloads in {took:?}: {} lines kept ({bytes} bytes), {dropped} dropped; RSS {} KiB",
        lines.len(),
        common::rss_kib(run.pid())
    );
}
