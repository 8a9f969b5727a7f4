//! Helpers for the data-path reliability tests (cli/tests/stress.rs): `skiff site run` under a
//! wrapper command (prlimit, `ip netns exec`), links over a chosen transport, CPU time and peak
//! memory from /proc, echo and digest backends, and SHA-256 of byte streams via `sha256sum`.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::{Site, ok, skiff_bin};

/// A `skiff site run` of a [`Site`] started under a wrapper command; killed (by PID, our own
/// child) when dropped. Its log goes to a file next to the site folder.
pub struct Running {
    child: Option<Child>,
    pub dir: String,
    pub log_path: PathBuf,
}

impl Running {
    /// Starts `WRAPPER... skiff site run --dir D` and waits (at most 15 s) until `site status`
    /// answers. The wrapper must exec the command (prlimit and `ip netns exec` do), so the
    /// child's PID is the router's.
    pub fn start(site: &Site, wrapper: &[&str]) -> Running {
        let log_path = site.dir.with_file_name(format!("{}-run.log", site.name));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(skiff_bin());
                c
            }
            None => Command::new(skiff_bin()),
        };
        let child = cmd
            .args(["site", "run", "--dir", site.d()])
            .env("SKIFF_LOG", "info,skiff_router=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn site run");
        let mut r = Running {
            child: Some(child),
            dir: site.d().to_string(),
            log_path,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if r.status_ok() {
                return r;
            }
            if let Some(status) = r.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("site run exited with {status}: {}", r.log());
            }
            assert!(Instant::now() < deadline, "site did not start: {}", r.log());
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The router's PID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Whether `site status` exits 0.
    pub fn status_ok(&self) -> bool {
        crate::common::skiff(&["site", "status", "--dir", &self.dir])
            .status
            .success()
    }

    /// What the router logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends SIGTERM and waits (at most 15 s) for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("site did not stop on SIGTERM: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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

/// Links `from` to `to` over `transport` (`quic`, `tls` or `auto`) with a fresh token.
pub fn link_over(from: &Site, to: &Site, transport: &str) {
    let token = to
        .dir
        .with_file_name(format!("to-{}-{}.token", to.name, from.name));
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

/// The JSON of `link list` at the site in `dir`.
pub fn links(dir: &str) -> Vec<serde_json::Value> {
    let o = crate::common::skiff(&["link", "list", "--output", "json", "--dir", dir]);
    assert!(o.status.success(), "link list: {}", crate::common::text(&o));
    serde_json::from_slice::<serde_json::Value>(&o.stdout)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits (bounded by `within`) for an up link at `dir` over `transport`; returns it.
pub fn wait_up(dir: &str, transport: &str, within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let ls = links(dir);
        if let Some(l) = ls
            .iter()
            .find(|l| l["status"] == "up" && l["transport"] == transport)
        {
            return l.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {transport} link up at {dir} within {within:?}: {ls:#?}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// CPU time (user + system) a process has used, from /proc/PID/stat.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at state (field 3).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 1000 / clock_ticks())
}

fn clock_ticks() -> u64 {
    let o = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
}

/// A field of /proc/PID/status in KiB (`VmHWM`, `VmRSS`).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap()
}

/// An echo server on loopback (one thread per connection) until the returned flag is set.
pub fn echo_server() -> (u16, Arc<AtomicBool>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            if stop2.load(Ordering::Relaxed) {
                return;
            }
            let Ok(mut c) = c else { continue };
            std::thread::spawn(move || {
                let Ok(mut r) = c.try_clone() else { return };
                let _ = std::io::copy(&mut r, &mut c);
            });
        }
    });
    (port, stop)
}

/// Writes `data` to `addr`, reads the echo back, and checks it; the round trip's duration.
pub fn echo_round_trip(addr: &str, data: &[u8], within: Duration) -> Result<Duration, String> {
    let t = Instant::now();
    let mut c = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    c.set_read_timeout(Some(within)).unwrap();
    c.write_all(data).map_err(|e| format!("write: {e}"))?;
    let mut back = vec![0u8; data.len()];
    c.read_exact(&mut back)
        .map_err(|e| format!("read after {:?}: {e}", t.elapsed()))?;
    if back != data {
        return Err("the echo differs from what was sent".into());
    }
    Ok(t.elapsed())
}

/// Deterministic pseudo-random bytes (xorshift), so two ends can agree on content cheaply.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Lines of `log` containing `needle`.
pub fn count_lines(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// A backend that writes to every client as fast as it takes the bytes and never reads;
/// counts, per connection, the bytes the path accepted. Stops writing when the flag is set.
pub struct Firehose {
    pub port: u16,
    pub accepted: Arc<std::sync::Mutex<Vec<Arc<std::sync::atomic::AtomicU64>>>>,
    pub stop: Arc<AtomicBool>,
}

impl Firehose {
    pub fn start() -> Firehose {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let accepted: Arc<std::sync::Mutex<Vec<Arc<std::sync::atomic::AtomicU64>>>> =
            Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (acc, stop2) = (accepted.clone(), stop.clone());
        std::thread::spawn(move || {
            for c in l.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(mut c) = c else { continue };
                let n = Arc::new(std::sync::atomic::AtomicU64::new(0));
                acc.lock().unwrap().push(n.clone());
                let stop3 = stop2.clone();
                std::thread::spawn(move || {
                    c.set_write_timeout(Some(Duration::from_millis(200)))
                        .unwrap();
                    let chunk = vec![0x5au8; 64 * 1024];
                    while !stop3.load(Ordering::Relaxed) {
                        match c.write(&chunk) {
                            Ok(k) => {
                                n.fetch_add(k as u64, Ordering::Relaxed);
                            }
                            Err(e)
                                if e.kind() == std::io::ErrorKind::WouldBlock
                                    || e.kind() == std::io::ErrorKind::TimedOut => {}
                            Err(_) => return,
                        }
                    }
                });
            }
        });
        Firehose {
            port,
            accepted,
            stop,
        }
    }

    /// Bytes the path accepted from the backend, over all connections.
    pub fn total(&self) -> u64 {
        self.accepted
            .lock()
            .unwrap()
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum()
    }
}

impl Drop for Firehose {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Waits until `total()` has not grown for `still` (bounded by `within`); the final total.
pub fn wait_stalled(total: impl Fn() -> u64, still: Duration, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    let mut last = total();
    let mut since = Instant::now();
    while since.elapsed() < still {
        let now = total();
        if now != last {
            last = now;
            since = Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "the path never stalled: {now} bytes accepted after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    last
}
