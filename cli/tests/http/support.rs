//! Shared by the HTTP black-box tests (`http.rs`, `http_abuse.rs`): the real tools they drive
//! (curl, h2load, a Python venv with `h2` and `websockets`), backends written with hyper or
//! by hand, a raw HTTP/1.1 client, and sites with HTTP listeners and connectors.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener as StdListener, TcpStream};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

use crate::common::{Site, is_link, link, text};

// ---------------------------------------------------------------------------------------------
// Tools

/// Whether this is CI (`CI` set and not `false`/`0`): a missing tool fails there, never skips.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Skips (returns false, with a message) or, in CI, fails: `what` is missing.
pub fn missing(what: &str, install: &str) -> bool {
    assert!(
        !in_ci(),
        "{what} is missing in CI: .ci/run must install it ({install})"
    );
    eprintln!("skipped: {what} is not available ({install})");
    false
}

/// Whether `program --version` runs; otherwise skips or, in CI, fails.
pub fn have(program: &str, package: &str) -> bool {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    found || missing(program, &format!("apt-get install {package}"))
}

/// The cargo target folder (the venv lives there, as `.ci/run` makes it).
pub fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A helper script of `cli/tests/http/`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/http")
        .join(name)
}

/// The Python of `target/venv-http` with `h2` and `websockets` (made here if missing, as
/// `.ci/run` does); `None` (skip) when it cannot be made outside CI.
pub fn venv_python() -> Option<PathBuf> {
    static VENV: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match VENV.get_or_init(make_venv) {
        Ok(p) => Some(p.clone()),
        Err(why) => {
            missing(
                &format!("the Python venv target/venv-http ({why})"),
                "python3 -m venv target/venv-http && target/venv-http/bin/pip install h2 websockets",
            );
            None
        }
    }
}

fn make_venv() -> Result<PathBuf, String> {
    let dir = target_dir().join("venv-http");
    let py = dir.join("bin/python");
    let usable = |py: &Path| {
        Command::new(py)
            .args(["-c", "import h2, websockets"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if usable(&py) {
        return Ok(py);
    }
    let o = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&dir)
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    if !o.status.success() {
        return Err(format!("python3 -m venv failed: {}", text(&o)));
    }
    let o = Command::new(dir.join("bin/pip"))
        .args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "h2",
            "websockets",
        ])
        .output()
        .map_err(|e| format!("pip: {e}"))?;
    if !o.status.success() {
        return Err(format!("pip install h2 websockets failed: {}", text(&o)));
    }
    if usable(&py) {
        Ok(py)
    } else {
        Err("h2 or websockets does not import".into())
    }
}

/// A child process of ours, killed (by its PID) when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `program args` whose first line of output is the port it listens on.
pub fn spawn_with_port(program: &Path, args: &[&str]) -> (Proc, u16) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program:?}: {e}"));
    let out = child.stdout.take().unwrap();
    let proc = Proc(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("{program:?} {args:?} printed no port within 20 s"));
    let port = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{program:?} {args:?} printed {line:?}, not a port"));
    (proc, port)
}

/// CPU time (user + system) a process has used.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after` starts at field 3.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let hz: u64 = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100);
    Duration::from_millis(ticks * 1000 / hz)
}

/// The soft limit on open files of a process (`/proc/PID/limits`).
pub fn open_files_limit(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------------------------
// Sites

/// `skiff ARGS --dir SITE`, which must succeed.
pub fn on(site: &Site, args: &[&str]) {
    let o = site.run(args);
    assert!(
        o.status.success(),
        "skiff {args:?} at {} failed: {}",
        site.name,
        text(&o)
    );
}

/// An HTTP listener `name` on a free loopback port for `key`.
pub fn http_listener(site: &Site, name: &str, key: &str) {
    on(
        site,
        &[
            "listener",
            "create",
            name,
            "0",
            "--host",
            "127.0.0.1",
            "--routing-key",
            key,
            "--type",
            "http",
        ],
    );
}

/// A connector `name` of `kind` (`http` or `http2`) to 127.0.0.1:`port` for `key`.
pub fn http_connector(site: &Site, name: &str, key: &str, port: u16, kind: &str) {
    on(
        site,
        &[
            "connector",
            "create",
            name,
            &port.to_string(),
            "--host",
            "127.0.0.1",
            "--routing-key",
            key,
            "--type",
            kind,
        ],
    );
}

/// Polls `network status` at `site` until `key` is served by `count` reachable sites.
pub fn wait_key_served(site: &Site, key: &str, count: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let o = site.run(&["network", "status", "--output", "json"]);
        let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        let serving = v["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|k| k["routingKey"] == key)
            .and_then(|k| k["sites"].as_array())
            .map(|s| s.iter().filter(|s| s["reachable"] == true).count())
            .unwrap_or(0);
        if serving >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "site {}: key {key} not served by {count} sites within {within:?}: {v:#}\nlog:\n{}",
            site.name,
            site.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// West (listener for `key`) linked to east, where `backend_port` serves `key` as `kind`.
pub fn pair(key: &str, backend_port: u16, kind: &str) -> (Site, Site, String) {
    let mut west = Site::create("west", false);
    let mut east = Site::create("east", true);
    http_connector(&east, key, key, backend_port, kind);
    http_listener(&west, key, key);
    east.start();
    west.start();
    link(&west, &east);
    west.wait_link(Duration::from_secs(10), "to east", is_link("up", "east"));
    wait_key_served(&west, key, 1, Duration::from_secs(15));
    let addr = west.wait_listener_active(key, Duration::from_secs(10));
    (west, east, addr)
}

/// The listener `name` of `site` as `listener list --output json` shows it.
pub fn listener_json(site: &Site, name: &str) -> Value {
    let o = site.run(&["listener", "list", "--output", "json"]);
    assert!(o.status.success(), "listener list failed: {}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v.as_array()
        .into_iter()
        .flatten()
        .find(|l| l["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no listener {name}: {v:#}"))
}

/// Polls until the listener `name` has a bound address (whatever its status); returns it.
pub fn wait_listener_bound(site: &Site, name: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let l = listener_json(site, name);
        if let Some(a) = l["address"].as_str()
            && !a.is_empty()
            && !a.ends_with(":0")
        {
            return a.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "listener {name} never bound: {l:#}\nlog:\n{}",
            site.log()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// `GET path` on the admin socket of a running site; the body.
pub fn admin_get(site: &Site, path: &str) -> String {
    use std::os::unix::net::UnixStream;
    let mut s = UnixStream::connect(site.dir.join("admin.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: skiff\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let r = parse_reply(&raw).unwrap_or_else(|| {
        panic!(
            "admin {path}: unparsable answer {:?}",
            String::from_utf8_lossy(&raw)
        )
    });
    assert_eq!(r.status, 200, "admin {path}: {}", r.text());
    r.text()
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 client

/// A parsed HTTP/1.1 response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    /// The first value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Parses one response (chunked, Content-Length or to the end); `None` if it is not one.
pub fn parse_reply(raw: &[u8]) -> Option<Reply> {
    let end = find(raw, b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = &raw[end + 4..];
    let h = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let body = if h("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(rest)
    } else if let Some(n) = h("content-length").and_then(|v| v.parse::<usize>().ok()) {
        rest[..n.min(rest.len())].to_vec()
    } else {
        rest.to_vec()
    };
    Some(Reply {
        status,
        headers,
        body,
    })
}

/// The data of a chunked body (as much as is there).
pub fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = find(raw, b"\r\n") {
        let size_text = String::from_utf8_lossy(&raw[..eol]);
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
        else {
            break;
        };
        if size == 0 {
            break;
        }
        let data = &raw[eol + 2..];
        let take = size.min(data.len());
        out.extend_from_slice(&data[..take]);
        if data.len() < size + 2 {
            break;
        }
        raw = &data[size + 2..];
    }
    out
}

/// Where `needle` first occurs in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// How a raw exchange ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The server closed (FIN).
    Closed,
    /// The server reset the connection.
    Reset,
    /// Nothing more came within the timeout.
    TimedOut,
}

/// Writes `bytes` on a new connection to `addr` and reads until the server closes, resets,
/// or `quiet` passes without a byte.
pub fn exchange(addr: &str, bytes: &[u8], quiet: Duration) -> (Vec<u8>, Ended) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(quiet)).unwrap();
    if c.write_all(bytes).is_err() {
        return (Vec::new(), Ended::Reset);
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return (got, Ended::Closed),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return (got, Ended::TimedOut);
            }
            Err(_) => return (got, Ended::Reset),
        }
    }
}

/// `GET path` on a new connection (`Connection: close`) with extra header lines.
pub fn get(addr: &str, path: &str, extra: &str) -> Reply {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n");
    let (raw, _) = exchange(addr, req.as_bytes(), Duration::from_secs(40));
    parse_reply(&raw).unwrap_or_else(|| {
        panic!(
            "GET {path} via {addr}: no HTTP response, got {:?}",
            String::from_utf8_lossy(&raw)
        )
    })
}

/// FNV-1a, 64 bits: what the backend and the test compare bodies by.
pub fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

/// The byte at offset `i` of the test patterns (not periodic in any small power of two).
pub fn pattern(i: usize) -> u8 {
    ((i * 31 + i / 251) % 253) as u8
}

// ---------------------------------------------------------------------------------------------
// Backends written with hyper

/// A tokio runtime for the backends and Rust clients of one test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A response body made of given frames (data, then maybe trailers).
pub struct Frames(VecDeque<Frame<Bytes>>);

impl Frames {
    /// A body of one data frame.
    pub fn full(data: impl Into<Bytes>) -> Frames {
        Frames(VecDeque::from([Frame::data(data.into())]))
    }

    /// A body of these frames.
    pub fn of(frames: Vec<Frame<Bytes>>) -> Frames {
        Frames(frames.into())
    }
}

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a backend saw.
#[derive(Default)]
pub struct Seen {
    /// Requests answered.
    pub requests: AtomicU64,
    /// Connections accepted.
    pub connections: AtomicU64,
    /// The request heads of `/headers`, as (name, value) pairs, names lower case.
    pub heads: Mutex<Vec<Vec<(String, String)>>>,
}

/// Size of the `/big` response.
pub const BIG: usize = 5 << 20;

/// An HTTP/1.1 backend (hyper): every path answers `name`, except
/// - `/headers`: records the request head and answers with hop-by-hop headers of its own
///   (`Connection: x-internal`, `X-Internal`, `Keep-Alive`) and `X-Backend: yes`;
/// - `/upload`: answers `LENGTH HASH` of the request body (FNV-1a, hex);
/// - `/big`: streams [`BIG`] bytes of [`pattern`] in 64 KiB frames.
pub fn web_backend(rt: &tokio::runtime::Runtime, name: &'static str) -> (u16, Arc<Seen>) {
    serve_each(rt, move |conn, s| {
        let svc = hyper::service::service_fn(move |req| answer(name, s.clone(), req));
        tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(conn), svc)
                .with_upgrades(),
        );
    })
}

/// A loopback listener whose every connection is counted in a new [`Seen`] and handed to
/// `serve` (which spawns what serves it); gives the port and the counts.
fn serve_each(
    rt: &tokio::runtime::Runtime,
    serve: impl Fn(tokio::net::TcpStream, Arc<Seen>) + Send + 'static,
) -> (u16, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let l = StdListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    l.set_nonblocking(true).unwrap();
    let s = seen.clone();
    rt.spawn(async move {
        let l = tokio::net::TcpListener::from_std(l).unwrap();
        loop {
            let Ok((conn, _)) = l.accept().await else {
                return;
            };
            s.connections.fetch_add(1, Ordering::Relaxed);
            serve(conn, s.clone());
        }
    });
    (port, seen)
}

async fn answer(
    name: &'static str,
    seen: Arc<Seen>,
    req: Request<Incoming>,
) -> Result<Response<Frames>, Infallible> {
    seen.requests.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path().to_string();
    let resp = match path.as_str() {
        "/headers" => {
            let head: Vec<(String, String)> = req
                .headers()
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let dump: String = head.iter().map(|(n, v)| format!("{n}: {v}\n")).collect();
            seen.heads.lock().unwrap().push(head);
            Response::builder()
                .header("connection", "x-internal")
                .header("x-internal", "1")
                .header("keep-alive", "timeout=5")
                .header("x-backend", "yes")
                .body(Frames::full(dump))
                .unwrap()
        }
        "/upload" => match req.into_body().collect().await {
            Ok(b) => {
                let b = b.to_bytes();
                Response::new(Frames::full(format!("{} {:016x}", b.len(), fnv(&b))))
            }
            Err(e) => Response::builder()
                .status(500)
                .body(Frames::full(format!("body error: {e}")))
                .unwrap(),
        },
        "/big" => {
            let frames = (0..BIG)
                .step_by(64 * 1024)
                .map(|start| {
                    let chunk: Vec<u8> =
                        (start..(start + 64 * 1024).min(BIG)).map(pattern).collect();
                    Frame::data(Bytes::from(chunk))
                })
                .collect();
            Response::new(Frames::of(frames))
        }
        _ => Response::builder()
            .header("x-site", name)
            .body(Frames::full(name))
            .unwrap(),
    };
    Ok(resp)
}

/// A gRPC-style backend speaking HTTP/2 without TLS (prior knowledge): every request is
/// answered `200`, `content-type: application/grpc`, one length-prefixed message echoing the
/// request's, and the trailers `grpc-status: 0`, `grpc-message: all-good`.
pub fn grpc_backend(rt: &tokio::runtime::Runtime) -> (u16, Arc<Seen>) {
    serve_each(rt, |conn, s| {
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let s = s.clone();
            async move {
                s.requests.fetch_add(1, Ordering::Relaxed);
                let is_grpc = req
                    .headers()
                    .get("content-type")
                    .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                let msg = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let mut trailers = http::HeaderMap::new();
                trailers.insert(
                    "grpc-status",
                    if is_grpc { "0" } else { "3" }.parse().unwrap(),
                );
                trailers.insert("grpc-message", "all-good".parse().unwrap());
                let resp = Response::builder()
                    .header("content-type", "application/grpc")
                    .body(Frames::of(vec![
                        Frame::data(msg),
                        Frame::trailers(trailers),
                    ]))
                    .unwrap();
                Ok::<_, Infallible>(resp)
            }
        });
        tokio::spawn(
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(conn), svc),
        );
    })
}

// ---------------------------------------------------------------------------------------------
// Raw backends

/// A port on which nothing listens (connections are refused).
pub fn refusing_port() -> u16 {
    let l = StdListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A backend that accepts connections, reads what comes and never answers.
pub fn silent_backend() -> u16 {
    let l = StdListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    port
}

/// A backend that reads each request head, counts it and closes the connection without an
/// answer: a request that surely reached a backend and failed there.
pub fn dropping_backend() -> (u16, Arc<AtomicU64>) {
    let l = StdListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let heads = Arc::new(AtomicU64::new(0));
    let h = heads.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            let h = h.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while find(&head, b"\r\n\r\n").is_none() {
                    match c.read(&mut buf) {
                        Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                h.fetch_add(1, Ordering::Relaxed);
            });
        }
    });
    (port, heads)
}

/// A backend that reads each request head and never answers: counts the heads it read and
/// the connections that ended afterwards (the request was given up on).
pub fn holding_backend() -> (u16, Arc<AtomicU64>, Arc<AtomicU64>) {
    let l = StdListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let heads = Arc::new(AtomicU64::new(0));
    let ended = Arc::new(AtomicU64::new(0));
    let (h, e) = (heads.clone(), ended.clone());
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            let (h, e) = (h.clone(), e.clone());
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while find(&head, b"\r\n\r\n").is_none() {
                    match c.read(&mut buf) {
                        Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                h.fetch_add(1, Ordering::Relaxed);
                while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
                e.fetch_add(1, Ordering::Relaxed);
            });
        }
    });
    (port, heads, ended)
}

/// A backend that answers each request with `Content-Length: 100000`, 10 bytes, and a close:
/// a response broken in the middle.
pub fn truncating_backend() -> u16 {
    let l = StdListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while find(&head, b"\r\n\r\n").is_none() {
                    match c.read(&mut buf) {
                        Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n0123456789");
            });
        }
    });
    port
}

/// A backend for raw upgrades: it answers any request head with `101 Switching Protocols`
/// (`Upgrade: raw-echo`), echoes bytes until the client's FIN, then writes `bye` and closes.
pub fn upgrade_echo_backend() -> u16 {
    let l = StdListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while find(&head, b"\r\n\r\n").is_none() {
                    if !matches!(c.read(&mut byte), Ok(1)) {
                        return;
                    }
                    head.push(byte[0]);
                }
                let _ = c.write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: raw-echo\r\n\r\n",
                );
                let mut buf = [0u8; 4096];
                loop {
                    match c.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            if c.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
                let _ = c.write_all(b"bye");
                let _ = c.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}

/// A backend that logs every byte it receives and parses requests strictly as framed
/// (Content-Length, else chunked, else no body), answering each with `200 ok`.
pub struct Recorder {
    /// Its port.
    pub port: u16,
    /// Every request line it parsed, in order.
    pub lines: Arc<Mutex<Vec<String>>>,
    /// Every byte it received, all connections in arrival order.
    pub log: Arc<Mutex<Vec<u8>>>,
}

impl Recorder {
    /// Starts one on a free port.
    pub fn start() -> Recorder {
        let l = StdListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ls, lg) = (lines.clone(), log.clone());
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(c) = c else { return };
                let (ls, lg) = (ls.clone(), lg.clone());
                std::thread::spawn(move || record(c, ls, lg));
            }
        });
        Recorder { port, lines, log }
    }

    /// How many request lines it has parsed.
    pub fn count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }
}

/// Serves one connection of the recorder.
fn record(mut c: TcpStream, lines: Arc<Mutex<Vec<String>>>, log: Arc<Mutex<Vec<u8>>>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut tmp = [0u8; 8192];
    // Reads until `buf` holds at least `n` bytes; false at the end of the connection.
    let mut fill = |buf: &mut Vec<u8>, c: &mut TcpStream, n: usize| -> bool {
        while buf.len() < n {
            match c.read(&mut tmp) {
                Ok(0) | Err(_) => return false,
                Ok(k) => {
                    log.lock().unwrap().extend_from_slice(&tmp[..k]);
                    buf.extend_from_slice(&tmp[..k]);
                }
            }
        }
        true
    };
    loop {
        // The head.
        let end = loop {
            if let Some(e) = find(&buf, b"\r\n\r\n") {
                break e;
            }
            let want = buf.len() + 1;
            if !fill(&mut buf, &mut c, want) {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        let mut hl = head.split("\r\n");
        lines
            .lock()
            .unwrap()
            .push(hl.next().unwrap_or_default().to_string());
        let mut length = None;
        let mut chunked = false;
        for h in hl {
            if let Some((n, v)) = h.split_once(':') {
                if n.trim().eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse::<usize>().ok();
                }
                if n.trim().eq_ignore_ascii_case("transfer-encoding")
                    && v.to_ascii_lowercase().contains("chunked")
                {
                    chunked = true;
                }
            }
        }
        // The body, as framed.
        if let Some(n) = length {
            if !fill(&mut buf, &mut c, n) {
                return;
            }
            buf.drain(..n);
        } else if chunked {
            loop {
                let eol = loop {
                    if let Some(e) = find(&buf, b"\r\n") {
                        break e;
                    }
                    let want = buf.len() + 1;
                    if !fill(&mut buf, &mut c, want) {
                        return;
                    }
                };
                let size_text = String::from_utf8_lossy(&buf[..eol]).into_owned();
                let Ok(size) =
                    usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                else {
                    return;
                };
                buf.drain(..eol + 2);
                if size == 0 {
                    // Trailers, up to the empty line.
                    loop {
                        let eol = loop {
                            if let Some(e) = find(&buf, b"\r\n") {
                                break e;
                            }
                            let want = buf.len() + 1;
                            if !fill(&mut buf, &mut c, want) {
                                return;
                            }
                        };
                        buf.drain(..eol + 2);
                        if eol == 0 {
                            break;
                        }
                    }
                    break;
                }
                if !fill(&mut buf, &mut c, size + 2) {
                    return;
                }
                buf.drain(..size + 2);
            }
        }
        if c.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok",
        )
        .is_err()
        {
            return;
        }
    }
}
