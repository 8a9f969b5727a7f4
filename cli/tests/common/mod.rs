//! Helpers for the black-box CLI tests: sites in temporary folders, `skiff site run` as a
//! child process (killed by PID when the test ends), and polling of the admin API with bounds.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `skiff` binary under test.
pub fn skiff_bin() -> &'static str {
    env!("CARGO_BIN_EXE_skiff")
}

/// Runs `skiff ARGS` and returns its output.
pub fn skiff(args: &[&str]) -> Output {
    Command::new(skiff_bin())
        .args(args)
        .env_remove("SKIFF_DIR")
        .env("SKIFF_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run skiff")
}

/// Stdout and stderr of an output, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `GET PATH` on the admin socket of a running site (curl): the body.
pub fn admin_text(site: &Site, path: &str) -> String {
    let sock = site.dir.join("admin.sock");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--unix-socket"])
        .arg(&sock)
        .arg(format!("http://skiff{path}"))
        .output()
        .expect("run curl");
    assert!(out.status.success(), "curl {path}: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// `GET PATH` on the admin socket of a running site, as JSON.
pub fn admin_json(site: &Site, path: &str) -> Value {
    let body = admin_text(site, path);
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// A site's id, from its site.yaml.
pub fn site_id(site: &Site) -> String {
    std::fs::read_to_string(site.dir.join("site.yaml"))
        .unwrap()
        .lines()
        .find_map(|l| l.trim().strip_prefix("id:"))
        .unwrap()
        .trim()
        .trim_matches(['"', '\''])
        .to_string()
}

/// Runs `skiff ARGS` and panics unless it succeeds.
pub fn ok(args: &[&str]) -> Output {
    let o = skiff(args);
    assert!(o.status.success(), "skiff {args:?} failed: {}", text(&o));
    o
}

/// Runs `skiff ARGS`, expects failure, returns stderr.
pub fn fails(args: &[&str]) -> String {
    let o = skiff(args);
    assert!(
        !o.status.success(),
        "skiff {args:?} should fail: {}",
        text(&o)
    );
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!err.contains("panicked"), "a panic reached the user: {err}");
    assert!(
        !err.contains("RUST_BACKTRACE"),
        "a backtrace reached the user: {err}"
    );
    err
}

/// One site in a temporary folder, maybe running.
pub struct Site {
    pub name: String,
    pub dir: PathBuf,
    child: Option<Child>,
    _tmp: tempfile::TempDir,
}

impl Site {
    /// Creates a site; `link_access` sites listen on a free loopback port.
    pub fn create(name: &str, link_access: bool) -> Site {
        Site::make(name, link_access.then(|| "0".to_string()))
    }

    /// A site with link access on a fixed free port, so it can be restarted on the same port.
    pub fn create_on_fixed_port(name: &str) -> Site {
        Site::make(name, Some(free_port().to_string()))
    }

    /// A site in a new temporary folder; with a link port, it accepts links on loopback.
    fn make(name: &str, link_port: Option<String>) -> Site {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(name);
        let d = dir.to_str().unwrap();
        match &link_port {
            Some(port) => ok(&[
                "site",
                "create",
                name,
                "--enable-link-access",
                "--link-host",
                "127.0.0.1",
                "--link-port",
                port,
                "--dir",
                d,
            ]),
            None => ok(&["site", "create", name, "--dir", d]),
        };
        Site {
            name: name.into(),
            dir,
            child: None,
            _tmp: tmp,
        }
    }

    /// The `--dir` value.
    pub fn d(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    /// `skiff ARGS --dir D`.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut a: Vec<&str> = args.to_vec();
        a.extend(["--dir", self.d()]);
        skiff(&a)
    }

    /// Starts `skiff site run` and waits until `site status` answers.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::File::create(self.log_path()).unwrap();
        let child = Command::new(skiff_bin())
            .args(["site", "run", "--dir", self.d()])
            .env("SKIFF_LOG", "info,skiff_router=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn site run");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if self.run(&["site", "status"]).status.success() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("site run exited with {status}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "site {} did not start: {}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Kills the running site with SIGKILL (by PID: our own child) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the running site with SIGTERM and waits for it to exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let c = self.child.take().expect("running");
        terminate(c, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("site did not stop on SIGTERM: {}", self.log()))
    }

    fn log_path(&self) -> PathBuf {
        self._tmp.path().join(format!("{}.log", self.name))
    }

    /// What `site run` logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `link list --output json`.
    pub fn links(&self) -> Vec<Value> {
        let o = self.run(&["link", "list", "--output", "json"]);
        assert!(o.status.success(), "link list failed: {}", text(&o));
        serde_json::from_slice::<Value>(&o.stdout)
            .unwrap()
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Polls `link list` until a link matching `pred` is there, or panics after `within`.
    pub fn wait_link(&self, within: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let links = self.links();
            if let Some(l) = links.iter().find(|l| pred(l)) {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "site {}: no link {what} within {within:?}; links: {links:#?}\nlog:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Issues a token into `file` with extra args.
    pub fn issue(&self, file: &Path, extra: &[&str]) {
        let mut a = vec!["token", "issue", file.to_str().unwrap()];
        a.extend_from_slice(extra);
        let o = self.run(&a);
        assert!(o.status.success(), "token issue failed: {}", text(&o));
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A link in `state` toward `peer` (by site name).
pub fn is_link(state: &'static str, peer: &str) -> impl Fn(&Value) -> bool {
    let peer = peer.to_string();
    move |l| l["status"] == state && l["peer_site_name"] == peer.as_str()
}

impl Site {
    /// The link port of a site created with a fixed port (`linkPort:` in site.yaml).
    pub fn link_port(&self) -> u16 {
        let yaml = std::fs::read_to_string(self.dir.join("site.yaml")).unwrap();
        yaml.lines()
            .find_map(|l| l.trim().strip_prefix("linkPort:"))
            .expect("linkPort in site.yaml")
            .trim()
            .parse()
            .unwrap()
    }

    /// The PID of the running `site run`.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Polls `listener list` until the listener `name` is active; returns its address.
    pub fn wait_listener_active(&self, name: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let o = self.run(&["listener", "list", "--output", "json"]);
            assert!(o.status.success(), "listener list failed: {}", text(&o));
            let v: Value = serde_json::from_slice(&o.stdout).unwrap();
            let found = v
                .as_array()
                .into_iter()
                .flatten()
                .find(|l| l["name"] == name)
                .cloned();
            if let Some(l) = &found
                && l["status"] == "active"
            {
                return l["address"].as_str().unwrap().to_string();
            }
            assert!(
                Instant::now() < deadline,
                "listener {name} not active within {within:?}: {found:?}\nlog:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap()
}

/// Open file descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// A port free on loopback for both TCP and UDP right now.
pub fn free_port() -> u16 {
    for _ in 0..50 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both TCP and UDP");
}

/// Replaces, in a YAML file, every line whose key is `key` (e.g. `code`) by `key: value`,
/// keeping its indentation.
pub fn set_field(path: &Path, key: &str, value: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    let prefix = format!("{key}:");
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            let trimmed = l.trim_start();
            if trimmed.starts_with(&prefix) {
                let indent = &l[..l.len() - trimmed.len()];
                format!("{indent}{key}: {value}")
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(path, out.join("\n") + "\n").unwrap();
}

/// Sends SIGTERM to our own child `c` (by its PID) and waits up to `within` for its exit;
/// `None` (after a SIGKILL and reaping it) if it did not exit in time.
pub fn terminate(mut c: Child, within: Duration) -> Option<std::process::ExitStatus> {
    let _ = Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .status();
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = c.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            let _ = c.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Links `from` to `to` (which has link access) with a fresh token.
pub fn link(from: &Site, to: &Site) {
    let token = to
        .dir
        .with_file_name(format!("to-{}-{}.token", to.name, from.name));
    to.issue(&token, &[]);
    ok(&[
        "token",
        "redeem",
        token.to_str().unwrap(),
        "--dir",
        from.d(),
    ]);
}

/// A TCP echo server on loopback, stopped (and its threads joined) on drop.
pub struct Echo {
    pub port: u16,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Echo {
    pub fn start() -> Echo {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let accept = std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => {
                        let stop3 = stop2.clone();
                        conns.push(std::thread::spawn(move || echo(c, &stop3)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        Echo {
            port,
            stop,
            accept: Some(accept),
        }
    }
}

fn echo(mut c: TcpStream, stop: &AtomicBool) {
    c.set_nonblocking(false).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 16 * 1024];
    while !stop.load(Ordering::Relaxed) {
        match c.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if c.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Links `from` to `to` with a fresh token over `transport`.
/// Serves `echo` at `at` (connector `echo`) and exposes it at `to` (listener `echo` on a free
/// loopback port, found with [`Site::wait_listener_active`]).
pub fn expose_echo(echo: &Echo, at: &Site, to: &Site) {
    let port = echo.port.to_string();
    ok(&["connector", "create", "echo", &port, "--dir", at.d()]);
    ok(&[
        "listener",
        "create",
        "echo",
        "0",
        "--host",
        "127.0.0.1",
        "--dir",
        to.d(),
    ]);
}

pub fn link_over(from: &Site, to: &Site, transport: &str) {
    let token = to
        .dir
        .with_file_name(format!("to-{}-from-{}.token", to.name, from.name));
    to.issue(&token, &[]);
    ok(&[
        "token",
        "redeem",
        token.to_str().unwrap(),
        "--transport",
        transport,
        "--dir",
        from.d(),
    ]);
}
