//! The web console in headless Chromium: three real sites (west, east, north) linked in a
//! triangle, west's admin API on a loopback TCP port, and cli/tests/console/console.mjs
//! (playwright-core) checking what the page at `/` shows while the test streams data, makes a
//! failing flow, stops north, stops west and starts west again; the script also feeds the page
//! hostile names (markup, a very long string) in place of one answer of the admin API. A second
//! test checks that `skiff connector create`, `listener create` and `apply -f` refuse a host
//! that is markup, so it cannot reach the page from a site's own files.
//!
//! Needs node, Chromium (/usr/bin/chromium, or SKIFF_CHROMIUM) and
//! `npm ci --prefix cli/tests/console`; skipped with a message when one is missing, unless
//! SKIFF_REQUIRE_CONSOLE=1 (CI). SKIFF_CONSOLE_SCREENSHOT=docs/console.png copies the
//! screenshot (taken while the three sites are up) there, relative to the workspace root.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{Echo, Site, fails, free_port, link, ok, skiff_bin, terminate};
use serde_json::Value;

/// A host that is markup: refused by `create` and `apply`.
const MARKUP: &str = "<img src=x onerror=alert(1)>";

/// The folder of the Node script and its node_modules.
fn script_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console")
}

/// Why the browser test cannot run here, if it cannot.
fn missing_tools() -> Option<String> {
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !node.is_ok_and(|s| s.success()) {
        return Some("node is not installed (apt-get install nodejs npm)".into());
    }
    let chromium = chromium_path();
    if !Path::new(&chromium).exists() {
        return Some(format!(
            "no Chromium at {chromium} (apt-get install chromium, or set SKIFF_CHROMIUM)"
        ));
    }
    if !script_dir()
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        return Some("playwright-core is not installed (npm ci --prefix cli/tests/console)".into());
    }
    None
}

fn chromium_path() -> String {
    std::env::var("SKIFF_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

/// `skiff site run --admin-address ADDR` for a site, stopped by PID (SIGTERM, then SIGKILL)
/// when dropped.
struct AdminSite {
    child: Option<Child>,
    log: PathBuf,
}

impl AdminSite {
    fn start(site: &Site, admin: SocketAddr, log: PathBuf) -> AdminSite {
        let child = Command::new(skiff_bin())
            .args(["site", "run", "--dir", site.d(), "--admin-address"])
            .arg(admin.to_string())
            .env("SKIFF_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn site run");
        let mut s = AdminSite {
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while get(admin, "/healthz").map(|(status, _, _)| status) != Some(200) {
            if let Some(status) = s.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("site run exited with {status}: {}", s.log());
            }
            assert!(
                Instant::now() < deadline,
                "the admin API did not answer on {admin} within 15 s: {}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            assert!(
                terminate(c, Duration::from_secs(10)).is_some(),
                "west did not stop on SIGTERM: {}",
                self.log()
            );
        }
    }
}

impl Drop for AdminSite {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            terminate(c, Duration::from_secs(5));
        }
    }
}

/// `GET path` over HTTP/1.1 from `addr`: status, headers (lower-case names), body. `None` when
/// nothing answers within 5 s.
fn get(addr: SocketAddr, path: &str) -> Option<(u16, String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, head.to_ascii_lowercase(), body.to_string()))
}

fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (status, _, body) = get(addr, path).unwrap_or_else(|| panic!("no answer to {path}"));
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// Waits until west sees the three sites reachable over three two-way links and key `echo`
/// served at east and north, `down` at north.
fn wait_converged(admin: SocketAddr, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let net = get_json(admin, "/v1/network");
        let routers = net["routers"].as_array().cloned().unwrap_or_default();
        let reachable = routers.iter().filter(|r| r["reachable"] == true).count();
        let two_way = routers
            .iter()
            .flat_map(|r| r["links"].as_array().cloned().unwrap_or_default())
            .filter(|l| l["up"] == true)
            .count();
        let served = |key: &str| {
            let mut sites: Vec<String> = net["keys"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|k| k["routingKey"] == key)
                .flat_map(|k| k["sites"].as_array().cloned().unwrap_or_default())
                .filter(|s| s["reachable"] == true)
                .filter_map(|s| s["siteName"].as_str().map(String::from))
                .collect();
            sites.sort();
            sites
        };
        if reachable == 3
            && two_way == 6
            && served("echo") == ["east", "north"]
            && served("down") == ["north"]
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the network did not converge within {within:?}: {net:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The address west's listener `name` is bound to.
fn listener_addr(admin: SocketAddr, name: &str) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let listeners = get_json(admin, "/v1/listeners");
        let found = listeners
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["name"] == name)
            .and_then(|l| l["address"].as_str())
            .and_then(|a| a.parse().ok());
        if let Some(a) = found {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "listener {name} not bound within 15 s: {listeners:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Bytes sent back and forth through a listener until stopped (bounded to 2 minutes), so the
/// console has traffic to show on the links; checks every byte came back.
struct Traffic {
    stop: Arc<AtomicBool>,
    echoed: Arc<AtomicU64>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl Traffic {
    fn start(addr: SocketAddr) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let echoed = Arc::new(AtomicU64::new(0));
        let (stop2, echoed2) = (stop.clone(), echoed.clone());
        let thread = std::thread::spawn(move || {
            let mut c = TcpStream::connect(addr).map_err(|e| e.to_string())?;
            c.set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| e.to_string())?;
            let chunk: Vec<u8> = (0..16 * 1024).map(|i| (i % 251) as u8).collect();
            let mut back = vec![0u8; chunk.len()];
            let until = Instant::now() + Duration::from_secs(120);
            while !stop2.load(Ordering::Relaxed) && Instant::now() < until {
                c.write_all(&chunk).map_err(|e| format!("write: {e}"))?;
                c.read_exact(&mut back).map_err(|e| format!("read: {e}"))?;
                if back != chunk {
                    return Err("the echo came back changed".into());
                }
                echoed2.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(())
        });
        Traffic {
            stop,
            echoed,
            thread: Some(thread),
        }
    }

    /// Stops it; the bytes echoed intact.
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let r = self.thread.take().unwrap().join().unwrap();
        r.unwrap_or_else(|e| panic!("traffic through the echo listener failed: {e}"));
        self.echoed.load(Ordering::Relaxed)
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The Node script, stopped by PID (SIGTERM: playwright closes its browser) when dropped.
struct Browser {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: Option<JoinHandle<String>>,
}

impl Browser {
    fn start(url: &str, screenshot: &Path) -> Browser {
        let mut child = Command::new("node")
            .arg(script_dir().join("console.mjs"))
            .arg(url)
            .arg(screenshot)
            .current_dir(script_dir())
            .env("SKIFF_CHROMIUM", chromium_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn node");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Browser {
            child: Some(child),
            stdin,
            lines,
            stderr: Some(stderr),
        }
    }

    fn reply(&mut self, action: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "done {action}").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for the script's exit and returns its status and stderr.
    fn finish(&mut self) -> (std::process::ExitStatus, String) {
        self.stdin.take();
        let c = self.child.take().unwrap();
        let status = terminate_after(c, Duration::from_secs(20));
        let err = self.stderr.take().unwrap().join().unwrap_or_default();
        (status, err)
    }
}

/// Waits up to `within` for `c` to exit by itself, then stops it.
fn terminate_after(mut c: Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(s) = c.try_wait().unwrap() {
            return s;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    terminate(c, Duration::from_secs(5)).expect("node did not stop on SIGTERM")
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.stdin.take();
        if let Some(c) = self.child.take() {
            terminate(c, Duration::from_secs(5));
        }
    }
}

#[test]
fn the_console_draws_the_network_flows_and_a_stopped_site() {
    if let Some(why) = missing_tools() {
        assert!(
            std::env::var("SKIFF_REQUIRE_CONSOLE").as_deref() != Ok("1"),
            "SKIFF_REQUIRE_CONSOLE=1 but the console test cannot run: {why}"
        );
        eprintln!("skipping the console test: {why}");
        return;
    }
    let began = Instant::now();

    let west = Site::create("west", false);
    let mut east = Site::create("east", true);
    let mut north = Site::create("north", true);
    east.start();
    north.start();
    link(&west, &east);
    link(&east, &north);
    link(&west, &north);
    let echo = Echo::start();
    ok(&[
        "connector",
        "create",
        "echo",
        &echo.port.to_string(),
        "--host",
        "127.0.0.1",
        "--dir",
        east.d(),
    ]);
    ok(&[
        "connector",
        "create",
        "echo",
        &echo.port.to_string(),
        "--host",
        "127.0.0.1",
        "--dir",
        north.d(),
    ]);
    // A backend nobody listens on: flows to key `down` are refused at north.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port().to_string();
    drop(closed);
    ok(&[
        "connector",
        "create",
        "down",
        &closed_port,
        "--host",
        "127.0.0.1",
        "--dir",
        north.d(),
    ]);
    for name in ["echo", "down", "nowhere"] {
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
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let mut west_run = AdminSite::start(&west, admin, logs.path().join("west.log"));
    wait_converged(admin, Duration::from_secs(30));
    let converged = began.elapsed();

    // The page and its assets come with the policy that forbids inline and foreign script.
    for path in ["/", "/console.js", "/console.css"] {
        let (status, head, _) = get(admin, path).unwrap();
        assert_eq!(status, 200, "GET {path}");
        assert!(
            head.contains("content-security-policy: default-src 'self'; script-src 'self';"),
            "GET {path} lacks the policy: {head}"
        );
    }

    let traffic = Traffic::start(listener_addr(admin, "echo"));
    let down = listener_addr(admin, "down");
    let shot = logs.path().join("console.png");
    let mut browser = Browser::start(&format!("http://{admin}/"), &shot);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut steps = Vec::new();
    let mut traffic = Some(traffic);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match browser.lines.recv_timeout(left) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!(
                    "the console script did not finish within 120 s; it said:\n{}",
                    steps.join("\n")
                )
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        eprintln!("console.mjs: {line}");
        steps.push(line.clone());
        match line.strip_prefix("ask ") {
            Some("failing-flow") => {
                // The ingress accepts, north's backend refuses: the client sees a reset.
                let mut c = TcpStream::connect(down).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let _ = c.write_all(b"hello");
                let mut buf = [0u8; 16];
                let got = c.read(&mut buf);
                assert!(
                    !matches!(got, Ok(n) if n > 0),
                    "a flow to the refused backend got bytes: {got:?}"
                );
                browser.reply("failing-flow");
            }
            Some("stop north") => {
                let echoed = traffic.take().unwrap().finish();
                assert!(echoed > 0, "no bytes came back through the echo listener");
                eprintln!("traffic: {echoed} bytes echoed intact through the echo listener");
                north.stop();
                browser.reply("stop north");
            }
            Some("stop west") => {
                west_run.stop();
                browser.reply("stop west");
            }
            Some("start west") => {
                west_run = AdminSite::start(&west, admin, logs.path().join("west-again.log"));
                browser.reply("start west");
            }
            Some(other) => panic!("the console script asked for {other:?}"),
            None => {}
        }
    }
    let (status, err) = browser.finish();
    assert!(
        status.success() && steps.last().map(String::as_str) == Some("ok"),
        "the console check failed ({status}): {err}\nsteps:\n{}\nwest log:\n{}",
        steps.join("\n"),
        west_run.log()
    );

    // The screenshot is a real picture of the page (PNG, at least 1280 px wide).
    let png = std::fs::read(&shot).expect("screenshot written");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert!(
        width >= 1280 && height >= 600,
        "screenshot {width}x{height}"
    );
    eprintln!(
        "console: converged in {converged:?}, whole test {:?}, screenshot {width}x{height} ({} bytes)",
        began.elapsed(),
        png.len()
    );
    if let Ok(to) = std::env::var("SKIFF_CONSOLE_SCREENSHOT") {
        let to = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(to);
        std::fs::copy(&shot, &to)
            .unwrap_or_else(|e| panic!("copy the screenshot to {}: {e}", to.display()));
        eprintln!("screenshot copied to {}", to.display());
    }
}

#[test]
fn a_host_that_is_markup_is_refused_by_create_and_apply() {
    let west = Site::create("west", false);
    let err = fails(&[
        "connector",
        "create",
        "markup",
        "9",
        "--host",
        MARKUP,
        "--dir",
        west.d(),
    ]);
    assert!(
        err.contains(&format!(
            "host {MARKUP:?} is neither an IP address nor a DNS name"
        )) && err.contains("redis.ns.svc.cluster.local"),
        "{err}"
    );
    let err = fails(&[
        "listener",
        "create",
        "markup",
        "9",
        "--host",
        MARKUP,
        "--dir",
        west.d(),
    ]);
    assert!(err.contains("is not an address to listen on"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("svc.yaml");
    std::fs::write(
        &file,
        "apiVersion: skiff.io/v1alpha1\nkind: Connector\nmetadata:\n  name: markup\nspec:\n  \
         routingKey: markup\n  host: '\"><svg onload=alert(1)>'\n  port: 9\n",
    )
    .unwrap();
    let err = fails(&["apply", "-f", file.to_str().unwrap(), "--dir", west.d()]);
    assert!(
        err.contains(&format!(
            "{}:7:9: spec.host: host \"\\\"><svg onload=alert(1)>\" is neither an IP address",
            file.display()
        )),
        "{err}"
    );
    let listed = ok(&["connector", "list", "--dir", west.d()]);
    assert!(
        !String::from_utf8_lossy(&listed.stdout).contains("markup"),
        "a refused connector was written"
    );
}
