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

/// SHA-256 (from rustls's ring provider, so the test needs no hashing crate of its own).
pub struct Sha256(Box<dyn rustls::crypto::hash::Context>);

impl Sha256 {
    pub fn new() -> Sha256 {
        let rustls::SupportedCipherSuite::Tls13(suite) =
            rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
        else {
            unreachable!("a TLS 1.3 suite")
        };
        Sha256(suite.common.hash_provider.start())
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The digest in lower-case hex.
    pub fn hex(self) -> String {
        self.0
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Size of the blocks both ends of a transfer generate.
pub const BLOCK: usize = 1 << 20;

/// Block `i` of a transfer: the block number, then a fixed pseudo-random MiB (`base`).
pub fn block(base: &[u8], i: u64) -> Vec<u8> {
    let mut b = base.to_vec();
    b[..8].copy_from_slice(&i.to_be_bytes());
    b
}

/// The transfer backend (python3): reads a 16-byte header (bytes the client will send, bytes
/// to send it), sends those bytes (blocks made like [`block`] from the file `base`) while
/// reading the client's to its end, then answers `<sha256 received> <sha256 sent>
/// <bytes received>\n` and closes.
pub const TRANSFER_PY: &str = r#"
import hashlib, socket, struct, sys, threading
port, base_path, ready = int(sys.argv[1]), sys.argv[2], sys.argv[3]
base = open(base_path, "rb").read()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen(64)
open(ready, "w").close()
def exact(c, n):
    out = b""
    while len(out) < n:
        b = c.recv(n - len(out))
        if not b:
            raise OSError("short header")
        out += b
    return out
def serve(c):
    try:
        up, down = struct.unpack(">QQ", exact(c, 16))
        sent = hashlib.sha256()
        def send():
            i, left = 0, down
            while left > 0:
                blk = (struct.pack(">Q", i) + base[8:])[:left]
                c.sendall(blk)
                sent.update(blk)
                left -= len(blk)
                i += 1
        t = threading.Thread(target=send)
        t.start()
        got, n = hashlib.sha256(), 0
        while True:
            b = c.recv(1 << 20)
            if not b:
                break
            got.update(b)
            n += len(b)
        t.join()
        c.sendall(("%s %s %d\n" % (got.hexdigest(), sent.hexdigest(), n)).encode())
    except OSError:
        pass
    finally:
        c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// What a transfer measured.
#[derive(Debug)]
pub struct Transfer {
    /// From connect to the backend's digests.
    pub took: Duration,
    /// SHA-256 of the bytes sent up, as both ends saw them.
    pub up_digest: String,
    /// SHA-256 of the bytes sent down, as both ends saw them.
    pub down_digest: String,
}

/// Sends `up` bytes to the transfer backend at `addr` while receiving `down` bytes from it,
/// and checks that both ends' SHA-256 digests and byte counts agree. `after_last_byte` runs
/// (on the writer's thread) the moment the client's last byte is written, before its FIN.
pub fn transfer(
    addr: std::net::SocketAddr,
    base: &[u8],
    up: u64,
    down: u64,
    after_last_byte: Box<dyn FnOnce() + Send>,
) -> Result<Transfer, String> {
    let t = Instant::now();
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .map_err(|e| format!("connect: {e}"))?;
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut header = up.to_be_bytes().to_vec();
    header.extend_from_slice(&down.to_be_bytes());
    c.write_all(&header).map_err(|e| format!("header: {e}"))?;
    let mut w = c.try_clone().unwrap();
    let base2 = base.to_vec();
    let writer = std::thread::spawn(move || -> Result<String, String> {
        let mut h = Sha256::new();
        let (mut i, mut left) = (0u64, up);
        while left > 0 {
            let mut b = block(&base2, i);
            b.truncate(left.min(b.len() as u64) as usize);
            w.write_all(&b)
                .map_err(|e| format!("write at {} bytes: {e}", up - left))?;
            h.update(&b);
            left -= b.len() as u64;
            i += 1;
        }
        after_last_byte();
        w.shutdown(std::net::Shutdown::Write)
            .map_err(|e| format!("shutdown: {e}"))?;
        Ok(h.hex())
    });
    let mut h = Sha256::new();
    let mut got = 0u64;
    let mut buf = vec![0u8; BLOCK];
    while got < down {
        let want = (down - got).min(buf.len() as u64) as usize;
        let n = c
            .read(&mut buf[..want])
            .map_err(|e| format!("read at {got} of {down} bytes: {e}"))?;
        if n == 0 {
            return Err(format!("the stream ended after {got} of {down} bytes"));
        }
        h.update(&buf[..n]);
        got += n as u64;
    }
    let down_digest = h.hex();
    let mut trailer = String::new();
    c.read_to_string(&mut trailer)
        .map_err(|e| format!("reading the backend's digests: {e}"))?;
    let up_digest = writer.join().unwrap()?;
    let f: Vec<&str> = trailer.split_whitespace().collect();
    if f.len() != 3 {
        return Err(format!("no digests from the backend: {trailer:?}"));
    }
    if f[2] != up.to_string() {
        return Err(format!("the backend received {} of {up} bytes", f[2]));
    }
    if f[0] != up_digest {
        return Err(format!(
            "upload corrupted: sent {up_digest}, the backend got {}",
            f[0]
        ));
    }
    if f[1] != down_digest {
        return Err(format!(
            "download corrupted: the backend sent {}, got {down_digest}",
            f[1]
        ));
    }
    Ok(Transfer {
        took: t.elapsed(),
        up_digest,
        down_digest,
    })
}

/// Mbit/s of `bytes` in `d`.
pub fn mbit(bytes: u64, d: Duration) -> f64 {
    bytes as f64 * 8.0 / d.as_secs_f64() / 1e6
}
