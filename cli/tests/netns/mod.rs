//! A multi-host harness for black-box tests: every site is a real `skiff site run` in its own
//! Linux network namespace, wired to the others through a bridge, with fault tools (cut,
//! blackhole, link down, throttle, loss) built on `ip`, `nft` and `tc`.
//!
//! # How to use it
//!
//! ```ignore
//! mod netns;
//! use netns::Net;
//!
//! #[test]
//! fn my_test() {
//!     // Skips (prints why) when not root or a tool is missing, unless SKIFF_REQUIRE_NETNS=1,
//!     // in which case it panics.
//!     let Some(mut net) = Net::new(&["a", "b"]) else { return };
//!     net.spawn_backend("b", "echo", 7000, ""); // 127.0.0.1:7000 inside b only
//!     net.ok("b", &["connector", "create", "svc", "7000"]);
//!     net.ok("a", &["listener", "create", "svc", "8000"]);
//!     net.start("a");
//!     net.start("b");
//!     net.link("a", "b", "quic"); // a redeems a token issued by b
//!     net.wait_up("a", "b", Duration::from_secs(5));
//!     let addr = net.wait_listener("a", "svc", Duration::from_secs(10)); // a's mgmt ip:8000
//!     net.loss("a", 5.0); // 5 % of packets on a's hub link dropped, both directions
//!     // ... TcpStream::connect(addr) from the test process ...
//! } // Drop kills every process and deletes the namespaces.
//! ```
//!
//! # Wiring
//!
//! - A hub namespace holds a bridge; site `i` has a veth `hub0` on it with address
//!   `10.77.S.(i+1)/24` (S: a slot unique among all harness users on this machine, held with a
//!   file lock). Links between sites cross only these veths. Every site is created with
//!   `--enable-link-access --link-host <hub address> --link-port 45671`, so a restarted site
//!   comes back on the same address and port.
//! - Each site namespace also has a management veth `mgmt0` to the root namespace on its own
//!   /30 (`10.78.S.4i+2`, root side `.4i+1`): the test process reaches a site's listeners at
//!   [`Net::addr`] (listeners bind 0.0.0.0 by default). Sites cannot reach each other
//!   through the root namespace, whatever its forwarding setting: a site namespace has no
//!   default route, only its two connected subnets, so it never sends a packet for another
//!   site's management address to the root namespace.
//! - Backends started with [`Net::spawn_backend`] or [`Net::spawn`] run inside a site's
//!   namespace and bind 127.0.0.1 there: they are reachable only through skiff.
//! - The admin socket is a unix socket in the site folder, so `skiff ... --dir D` works from
//!   anywhere; [`Net::skiff`] runs every verb inside the site's namespace anyway (token
//!   redemption talks to the issuer over the hub).
//!
//! Fault tools (`faults.rs`) act on a site's hub veth: [`Net::cut`]/[`Net::heal`] (nft, between two sites,
//! both directions), [`Net::blackhole`]/[`Net::restore`] (drop everything on the hub veth),
//! [`Net::link_down`]/[`Net::link_up`] (`ip link set`), [`Net::throttle`]/[`Net::unthrottle`]
//! (`tc tbf` on both ends of the veth), [`Net::loss`]/[`Net::lost`] (nft `numgen random` in
//! the bridge, per packet, both directions), and [`Net::watch`]/[`Net::packets`] (nft
//! counters: did X send to Y).

#![allow(dead_code)]

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

mod faults;

/// The link port every site uses inside its namespace.
pub const LINK_PORT: u16 = 45671;

/// Slots (the third octet of the harness subnets) available to concurrent users.
const SLOTS: u16 = 250;

/// Why netns tests cannot run here, or `None` when they can.
pub fn unavailable() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next().map(str::to_string));
    if uid.as_deref() != Some("0") {
        return Some("network-namespace tests need root (run as root, e.g. in CI)".into());
    }
    for (tool, arg, package) in [
        ("ip", "-V", "iproute2"),
        ("tc", "-V", "iproute2"),
        ("nft", "-v", "nftables"),
        ("ss", "-V", "iproute2"),
        ("python3", "-V", "python3"),
        ("iperf3", "-v", "iperf3"),
        ("prlimit", "--version", "util-linux"),
        ("timeout", "--version", "coreutils"),
        ("sha256sum", "--version", "coreutils"),
    ] {
        let ok = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return Some(format!(
                "network-namespace tests need `{tool}` (install the {package} package)"
            ));
        }
    }
    None
}

/// Skips the calling test (returns `true` after printing why) when netns tests cannot run
/// here; panics instead when `SKIFF_REQUIRE_NETNS=1` (CI), so they are never skipped there.
pub fn skip(why: &str) -> bool {
    if std::env::var("SKIFF_REQUIRE_NETNS").as_deref() == Ok("1") {
        panic!("SKIFF_REQUIRE_NETNS=1 but {why}");
    }
    eprintln!("SKIPPED: {why}");
    true
}

/// Runs a command, panicking with its output unless it succeeds.
pub fn sh(program: &str, args: &[&str]) -> Output {
    let o = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        o.status.success(),
        "{program} {args:?} failed: {}",
        text(&o)
    );
    o
}

/// Runs a command, ignoring failure (for cleanup); returns whether it succeeded.
fn sh_quiet(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
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

/// A slot held for this net: a lock on a file; released when dropped or the process dies.
struct Slot {
    index: u16,
    _lock: File,
}

/// Where the slot locks live: a fixed directory, not under `TMPDIR`, so runs with different
/// temporary directories never take the same slot (and delete each other's interfaces).
const SLOT_DIR: &str = "/run/skiff-netns-slots";

fn take_slot() -> Slot {
    let dir = std::path::Path::new(SLOT_DIR);
    std::fs::create_dir_all(dir)
        .unwrap_or_else(|e| panic!("cannot create the netns slot directory {SLOT_DIR}: {e}"));
    // Start at a place that depends on the pid, so processes rarely contend.
    let start = (std::process::id() % u32::from(SLOTS)) as u16;
    for k in 0..SLOTS {
        let index = (start + k) % SLOTS;
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(index.to_string()))
            .unwrap();
        if f.try_lock().is_ok() {
            return Slot { index, _lock: f };
        }
    }
    panic!("all {SLOTS} netns harness slots are taken");
}

/// Deletes namespaces left by harness runs whose test process is gone (killed before its
/// drop ran), when nothing runs in them any more. Processes are never killed here: only a
/// net's own drop kills, by PID, what it started.
fn reap_stale_namespaces() {
    let Ok(o) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix("skt")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let busy = Command::new("ip")
            .args(["netns", "pids", name])
            .output()
            .map(|o| !o.status.success() || !o.stdout.is_empty())
            .unwrap_or(true);
        if !busy {
            sh_quiet("ip", &["netns", "del", name]);
        }
    }
}

/// A backend script: `name` answers each connection with a text and closes; `echo` echoes;
/// `sink` reads to the end of the client's stream, then answers `<sha256 hex> <byte count>`.
const BACKEND_PY: &str = r#"
import hashlib, socket, sys, threading
mode, port, arg, ready = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen(1024)
open(ready, "w").close()
def serve(c):
    try:
        if mode == "name":
            c.sendall(arg.encode())
        elif mode == "echo":
            while True:
                b = c.recv(65536)
                if not b:
                    break
                c.sendall(b)
        elif mode == "sink":
            h, n = hashlib.sha256(), 0
            while True:
                b = c.recv(65536)
                if not b:
                    break
                h.update(b)
                n += len(b)
            c.sendall(("%s %d" % (h.hexdigest(), n)).encode())
    except OSError:
        pass
    finally:
        c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// One site in its namespace.
pub struct NsSite {
    /// Site name (also its key in the net).
    pub name: String,
    /// Network namespace name.
    pub ns: String,
    /// Site folder.
    pub dir: PathBuf,
    /// Address on the hub (links).
    pub hub_ip: Ipv4Addr,
    /// Address on the management veth (reachable from the test process).
    pub mgmt_ip: Ipv4Addr,
    /// The root-namespace end of the management veth.
    mgmt_if: String,
    /// The hub-namespace end of the hub veth.
    bridge_port: String,
    child: Option<Child>,
    log: PathBuf,
    starts: u32,
}

/// Sites in network namespaces around a bridge; everything is deleted on drop.
pub struct Net {
    slot: Slot,
    hub: String,
    sites: Vec<NsSite>,
    backends: Vec<Child>,
    watches: Vec<(String, String)>,
    tmp: tempfile::TempDir,
}

static NETS: AtomicU32 = AtomicU32::new(0);

impl Net {
    /// Creates the namespaces and a site folder for each name (not started). `None` (after
    /// printing why) when netns tests cannot run here and are not required.
    pub fn new(names: &[&str]) -> Option<Net> {
        if let Some(why) = unavailable() {
            skip(&why);
            return None;
        }
        assert!(names.len() <= 60, "at most 60 sites per net");
        reap_stale_namespaces();
        let slot = take_slot();
        let s = slot.index;
        let run = format!(
            "skt{}-{}",
            std::process::id(),
            NETS.fetch_add(1, Ordering::Relaxed)
        );
        let hub = format!("{run}-hub");
        let mut net = Net {
            slot,
            hub: hub.clone(),
            sites: Vec::new(),
            backends: Vec::new(),
            watches: Vec::new(),
            tmp: tempfile::tempdir().unwrap(),
        };
        let o = Command::new("ip")
            .args(["netns", "add", &hub])
            .output()
            .unwrap();
        if !o.status.success() {
            let why = format!(
                "cannot create a network namespace (`ip netns add` failed: {})",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            skip(&why);
            return None;
        }
        sh("ip", &["-n", &hub, "link", "set", "lo", "up"]);
        sh("ip", &["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        sh("ip", &["-n", &hub, "link", "set", "br0", "up"]);
        for (i, name) in names.iter().enumerate() {
            let i8 = i as u8;
            let ns = format!("{run}-{name}");
            let mgmt_if = format!("sk{s}m{i}");
            let bridge_port = format!("v{i}");
            let hub_ip = Ipv4Addr::new(10, 77, s as u8, i8 + 1);
            let root_ip = Ipv4Addr::new(10, 78, s as u8, 4 * i8 + 1);
            let mgmt_ip = Ipv4Addr::new(10, 78, s as u8, 4 * i8 + 2);
            // A stale interface of a crashed run that held this slot.
            sh_quiet("ip", &["link", "del", &mgmt_if]);
            sh("ip", &["netns", "add", &ns]);
            net.sites.push(NsSite {
                name: name.to_string(),
                ns: ns.clone(),
                dir: net.tmp.path().join(name),
                hub_ip,
                mgmt_ip,
                mgmt_if: mgmt_if.clone(),
                bridge_port: bridge_port.clone(),
                child: None,
                log: net.tmp.path().join(format!("{name}.log")),
                starts: 0,
            });
            sh("ip", &["-n", &ns, "link", "set", "lo", "up"]);
            sh(
                "ip",
                &[
                    "-n",
                    &hub,
                    "link",
                    "add",
                    &bridge_port,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "hub0",
                    "netns",
                    &ns,
                ],
            );
            sh(
                "ip",
                &["-n", &hub, "link", "set", &bridge_port, "master", "br0"],
            );
            sh("ip", &["-n", &hub, "link", "set", &bridge_port, "up"]);
            sh(
                "ip",
                &[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{hub_ip}/24"),
                    "dev",
                    "hub0",
                ],
            );
            sh("ip", &["-n", &ns, "link", "set", "hub0", "up"]);
            sh(
                "ip",
                &[
                    "link", "add", &mgmt_if, "type", "veth", "peer", "name", "mgmt0", "netns", &ns,
                ],
            );
            sh(
                "ip",
                &["addr", "add", &format!("{root_ip}/30"), "dev", &mgmt_if],
            );
            sh("ip", &["link", "set", &mgmt_if, "up"]);
            sh(
                "ip",
                &[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{mgmt_ip}/30"),
                    "dev",
                    "mgmt0",
                ],
            );
            sh("ip", &["-n", &ns, "link", "set", "mgmt0", "up"]);
            net.nft(
                name,
                "add table inet skiff
                 add set inet skiff cut { type ipv4_addr; }
                 add set inet skiff holes { type ifname; }
                 add chain inet skiff watch_out { type filter hook output priority -10; policy accept; }
                 add chain inet skiff input { type filter hook input priority 0; policy accept; }
                 add rule inet skiff input iifname @holes drop
                 add rule inet skiff input ip saddr @cut drop
                 add chain inet skiff output { type filter hook output priority 0; policy accept; }
                 add rule inet skiff output oifname @holes drop
                 add rule inet skiff output ip daddr @cut drop",
            );
            let d = net.sites[i].dir.to_str().unwrap().to_string();
            let port = LINK_PORT.to_string();
            let ip = hub_ip.to_string();
            net.ok(
                name,
                &[
                    "site",
                    "create",
                    name,
                    "--enable-link-access",
                    "--link-host",
                    &ip,
                    "--link-port",
                    &port,
                    "--dir",
                    &d,
                ],
            );
        }
        Some(net)
    }

    /// The site called `name`.
    pub fn site(&self, name: &str) -> &NsSite {
        self.sites
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no site {name} in this net"))
    }

    fn site_mut(&mut self, name: &str) -> &mut NsSite {
        self.sites
            .iter_mut()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no site {name} in this net"))
    }

    /// The site's folder, as a `--dir` value.
    pub fn dir(&self, name: &str) -> String {
        self.site(name).dir.to_str().unwrap().to_string()
    }

    /// Address of the site's port `port` as the test process reaches it (management veth).
    pub fn addr(&self, name: &str, port: u16) -> SocketAddr {
        SocketAddr::from((self.site(name).mgmt_ip, port))
    }

    /// A temporary folder living as long as the net.
    pub fn tmp(&self) -> PathBuf {
        self.tmp.path().to_path_buf()
    }

    /// `skiff ARGS --dir D`, run inside the site's namespace.
    pub fn skiff(&self, name: &str, args: &[&str]) -> Output {
        let s = self.site(name);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &s.ns, skiff_bin()]).args(args);
        if !args.contains(&"--dir") {
            cmd.args(["--dir", s.dir.to_str().unwrap()]);
        }
        cmd.env_remove("SKIFF_DIR")
            .env("SKIFF_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .expect("run skiff")
    }

    /// [`Net::skiff`], panicking unless it succeeds.
    pub fn ok(&self, name: &str, args: &[&str]) -> Output {
        let o = self.skiff(name, args);
        assert!(
            o.status.success(),
            "skiff {args:?} at {name} failed: {}",
            text(&o)
        );
        o
    }

    /// Runs `program ARGS` inside the site's namespace and waits for it.
    pub fn exec(&self, name: &str, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.site(name).ns, program])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ip netns exec")
    }

    /// Starts `skiff site run` in the site's namespace and waits until `site status` answers.
    pub fn start(&mut self, name: &str) {
        let s = self.site_mut(name);
        assert!(s.child.is_none(), "site {name} already running");
        s.starts += 1;
        let log = File::options()
            .create(true)
            .append(true)
            .open(&s.log)
            .unwrap();
        use std::io::Write;
        let mut log2 = log.try_clone().unwrap();
        let _ = writeln!(log2, "==== start {} ====", s.starts);
        // `ip netns exec` execs the command: the child's PID is skiff's own.
        let child = Command::new("ip")
            .args(["netns", "exec", &s.ns, skiff_bin(), "site", "run", "--dir"])
            .arg(&s.dir)
            .env_remove("SKIFF_DIR")
            .env("SKIFF_LOG", "info,skiff_router=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn site run");
        s.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if self.skiff(name, &["site", "status"]).status.success() {
                return;
            }
            let s = self.site_mut(name);
            if let Some(status) = s.child.as_mut().unwrap().try_wait().unwrap() {
                s.child = None;
                panic!("site {name} exited with {status}: {}", self.log(name));
            }
            assert!(
                Instant::now() < deadline,
                "site {name} did not start within 15 s: {}",
                self.log(name)
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Whether the site's process runs (not exited).
    pub fn running(&mut self, name: &str) -> bool {
        match self.site_mut(name).child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// PID of the site's `site run` process.
    pub fn pid(&self, name: &str) -> u32 {
        self.site(name)
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("site {name} is not running"))
            .id()
    }

    /// Kills the site's process with SIGKILL (by PID: our own child) and reaps it.
    pub fn kill(&mut self, name: &str) {
        if let Some(mut c) = self.site_mut(name).child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM to the site's process; does not wait.
    pub fn terminate(&self, name: &str) {
        let pid = self.pid(name).to_string();
        sh("kill", &["-TERM", &pid]);
    }

    /// Waits up to `within` for the site's process to exit; its status, or `None` if it still
    /// runs (it is left running).
    pub fn wait_exit(&mut self, name: &str, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            let s = self.site_mut(name);
            let c = s.child.as_mut().expect("site was started");
            if let Some(status) = c.try_wait().unwrap() {
                s.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// What the site's `site run` processes logged (every start, in order).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(&self.site(name).log).unwrap_or_default()
    }

    /// `link list --output json` of the site.
    pub fn links(&self, name: &str) -> Vec<Value> {
        let o = self.ok(name, &["link", "list", "--output", "json"]);
        serde_json::from_slice::<Value>(&o.stdout)
            .unwrap()
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Polls `link list` of `name` until a link matching `pred` is there, or panics after
    /// `within`.
    pub fn wait_link(
        &self,
        name: &str,
        within: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let links = self.links(name);
            if let Some(l) = links.iter().find(|l| pred(l)) {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "site {name}: no link {what} within {within:?}; links: {links:#?}\nlog:\n{}",
                self.log(name)
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits until `name` shows a link `up` with `peer`; how long that took.
    pub fn wait_up(&self, name: &str, peer: &str, within: Duration) -> Duration {
        let t = Instant::now();
        self.wait_link(name, within, &format!("up with {peer}"), is_up(peer));
        t.elapsed()
    }

    /// Waits until `name` shows no link `up` with `peer`; how long that took.
    pub fn wait_not_up(&self, name: &str, peer: &str, within: Duration) -> Duration {
        let t = Instant::now();
        let up = is_up(peer);
        loop {
            let links = self.links(name);
            if !links.iter().any(&up) {
                return t.elapsed();
            }
            assert!(
                t.elapsed() < within,
                "site {name} still shows a link up with {peer} after {within:?}: {links:#?}"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Links `from` to `to`: `to` issues a token, `from` redeems it with `--transport` and
    /// `--name LINK` (default: the peer's name). Returns the link name.
    pub fn link_named(&self, from: &str, to: &str, transport: &str, link: &str) -> String {
        let token = self
            .tmp
            .path()
            .join(format!("{to}-for-{from}-{link}.token"));
        let t = token.to_str().unwrap();
        self.ok(to, &["token", "issue", t]);
        self.ok(
            from,
            &[
                "token",
                "redeem",
                t,
                "--transport",
                transport,
                "--name",
                link,
            ],
        );
        link.to_string()
    }

    /// [`Net::link_named`] with the link named after the peer.
    pub fn link(&self, from: &str, to: &str, transport: &str) -> String {
        self.link_named(from, to, transport, to)
    }

    /// Polls `listener list` until the listener `listener` at `name` is active; returns the
    /// address the test process connects to.
    pub fn wait_listener(&self, name: &str, listener: &str, within: Duration) -> SocketAddr {
        let deadline = Instant::now() + within;
        loop {
            let o = self.ok(name, &["listener", "list", "--output", "json"]);
            let v: Value = serde_json::from_slice(&o.stdout).unwrap();
            let found = v
                .as_array()
                .into_iter()
                .flatten()
                .find(|l| l["name"] == listener)
                .cloned();
            if let Some(l) = &found
                && l["status"] == "active"
            {
                return self.addr(name, l["port"].as_u64().unwrap() as u16);
            }
            assert!(
                Instant::now() < deadline,
                "listener {listener} at {name} not active within {within:?}: {found:?}\nlog:\n{}",
                self.log(name)
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Starts `program ARGS` inside the site's namespace (killed when the net is dropped);
    /// returns its PID. Stdout and stderr go to a log file in the net's temporary folder.
    pub fn spawn(&mut self, name: &str, program: &str, args: &[&str]) -> u32 {
        let log = File::create(self.tmp.path().join(format!(
            "{name}-{}-{}.log",
            program.rsplit('/').next().unwrap_or(program),
            self.backends.len()
        )))
        .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.site(name).ns, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        let pid = child.id();
        self.backends.push(child);
        pid
    }

    /// Starts a small backend at 127.0.0.1:`port` inside the site's namespace and waits until
    /// it listens. `mode`: `name` (answers each connection with `arg`, then closes), `echo`,
    /// `sink` (reads to the end, then answers `<sha256 hex> <byte count>`). Returns its PID.
    pub fn spawn_backend(&mut self, name: &str, mode: &str, port: u16, arg: &str) -> u32 {
        let script = self.tmp.path().join("backend.py");
        if !script.exists() {
            std::fs::write(&script, BACKEND_PY).unwrap();
        }
        let ready = self
            .tmp
            .path()
            .join(format!("{name}-{port}-{}.ready", self.backends.len()));
        let pid = self.spawn(
            name,
            "python3",
            &[
                script.to_str().unwrap(),
                mode,
                &port.to_string(),
                arg,
                ready.to_str().unwrap(),
            ],
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready.exists() {
            assert!(
                Instant::now() < deadline,
                "backend {mode} at {name}:{port} did not start within 10 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        pid
    }

    /// Waits until something listens on TCP `port` inside the site's namespace (e.g. a
    /// redis-server started with [`Net::spawn`]).
    pub fn wait_listening(&self, name: &str, port: u16, within: Duration) {
        let deadline = Instant::now() + within;
        let filter = format!("sport = :{port}");
        loop {
            let o = self.exec(name, "ss", &["-Hltn", &filter]);
            if o.status.success() && !o.stdout.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nothing listens on port {port} at {name} within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills a process started with [`Net::spawn`] (SIGKILL) and reaps it.
    pub fn kill_spawned(&mut self, pid: u32) {
        if let Some(i) = self.backends.iter().position(|c| c.id() == pid) {
            let mut c = self.backends.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Connects from the test process to the site's port (management address).
    pub fn connect(&self, name: &str, port: u16, timeout: Duration) -> std::io::Result<TcpStream> {
        TcpStream::connect_timeout(&self.addr(name, port), timeout)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Our own processes first (by PID), so the namespaces can go away.
        for s in &mut self.sites {
            if let Some(mut c) = s.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for mut c in self.backends.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        for s in &self.sites {
            // Namespace teardown is asynchronous: delete the root end of the veth now.
            sh_quiet("ip", &["link", "del", &s.mgmt_if]);
            if !sh_quiet("ip", &["netns", "del", &s.ns]) {
                eprintln!("could not delete network namespace {}", s.ns);
            }
        }
        if !sh_quiet("ip", &["netns", "del", &self.hub]) {
            eprintln!("could not delete network namespace {}", self.hub);
        }
    }
}

/// A link `up` with the site named `peer`.
pub fn is_up(peer: &str) -> impl Fn(&Value) -> bool {
    let peer = peer.to_string();
    move |l| l["status"] == "up" && l["peer_site_name"] == peer.as_str()
}

/// The `skiff` binary under test.
pub fn skiff_bin() -> &'static str {
    env!("CARGO_BIN_EXE_skiff")
}
