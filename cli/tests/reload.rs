//! Black-box tests of reload (SIGHUP and `skiff site reload`), the log flags and shell
//! completion, through the real `skiff` binary: a long flow keeps its bytes while listeners
//! are added, moved and deleted around it; a broken file is named and changes nothing; log
//! lines are JSON when asked and filtered by level; completion scripts parse.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Echo, Site, free_port, is_link, link, ok, set_field, skiff, skiff_bin, text};
use serde_json::Value;

/// Bytes each way of the flow that runs across the reloads.
const TRANSFER: u64 = 64 * 1024 * 1024;
/// The flow's reader waits here until the reloads are done, so they happen mid-flow.
const GATE: u64 = 48 * 1024 * 1024;
/// The reader's pace before the gate: bytes per second.
const PACE: u64 = 8 * 1024 * 1024;
/// Longest wait of any step.
const STEP: Duration = Duration::from_secs(20);

/// The deterministic byte stream of the flow (xorshift64), byte `i` of it at call `i`.
struct Stream(u64);

impl Stream {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            chunk.copy_from_slice(&self.0.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// FNV-1a over bytes, for a digest to compare and report.
fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}
const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// What the flow's reader saw.
struct Received {
    bytes: u64,
    digest: u64,
    expected_digest: u64,
    first_mismatch: Option<u64>,
    error: Option<String>,
}

/// Starts a flow to `addr` (an echo behind it): one thread writes [`TRANSFER`] bytes then
/// half-closes, another reads them back paced, waiting at [`GATE`] until `go_on` is set.
/// `progress` counts bytes read back.
fn start_flow(
    addr: &str,
    progress: Arc<AtomicU64>,
    go_on: Arc<AtomicBool>,
) -> (
    std::thread::JoinHandle<Result<(), String>>,
    std::thread::JoinHandle<Received>,
) {
    let c = TcpStream::connect(addr).expect("connect to listener l1");
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut s = Stream(0x9e37_79b9_7f4a_7c15);
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0;
        while sent < TRANSFER {
            s.fill(&mut buf);
            w.write_all(&buf)
                .map_err(|e| format!("write at {sent}: {e}"))?;
            sent += buf.len() as u64;
        }
        w.shutdown(Shutdown::Write)
            .map_err(|e| format!("half-close: {e}"))
    });
    let mut r = c;
    let reader = std::thread::spawn(move || {
        let mut want = Stream(0x9e37_79b9_7f4a_7c15);
        let (mut expect, mut got) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
        let mut out = Received {
            bytes: 0,
            digest: FNV_START,
            expected_digest: FNV_START,
            first_mismatch: None,
            error: None,
        };
        let mut pending = 0usize; // bytes of `expect` not yet compared
        let started = Instant::now();
        let gate_deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if out.bytes >= GATE && !go_on.load(Ordering::SeqCst) {
                if Instant::now() > gate_deadline {
                    out.error = Some("the reloads did not finish within 180 s".into());
                    return out;
                }
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            if !go_on.load(Ordering::SeqCst) {
                let due = Duration::from_secs_f64(out.bytes as f64 / PACE as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            let n = match r.read(&mut got) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    out.error = Some(format!("read at {}: {e} ({:?})", out.bytes, e.kind()));
                    return out;
                }
            };
            out.digest = fnv(out.digest, &got[..n]);
            let mut i = 0;
            while i < n {
                if pending == 0 {
                    want.fill(&mut expect);
                    out.expected_digest = fnv(out.expected_digest, &expect);
                    pending = expect.len();
                }
                let off = expect.len() - pending;
                let take = pending.min(n - i);
                if out.first_mismatch.is_none() && got[i..i + take] != expect[off..off + take] {
                    out.first_mismatch = Some(out.bytes + i as u64);
                }
                pending -= take;
                i += take;
            }
            out.bytes += n as u64;
            progress.store(out.bytes, Ordering::SeqCst);
        }
        out
    });
    (writer, reader)
}

/// Sends a line through `addr` and expects it echoed.
fn echoes(addr: &str) -> Result<(), String> {
    let mut c = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"ping\n").map_err(|e| e.to_string())?;
    let mut buf = [0u8; 5];
    c.read_exact(&mut buf)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    if &buf == b"ping\n" {
        Ok(())
    } else {
        Err(format!("{addr} answered {buf:?}"))
    }
}

/// Polls until connecting to `addr` is refused (the listener closed).
fn wait_refused(addr: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        match TcpStream::connect(addr) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return,
            other => assert!(
                Instant::now() < deadline,
                "{addr} still accepts connections: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// `kill -HUP` to our own child.
fn hangup(pid: u32) {
    let s = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(s.success(), "kill -HUP {pid} failed");
}

/// A listener file written by hand, as an operator (or config management) would.
fn write_listener(dir: &Path, name: &str, key: &str, port: u16) {
    let yaml = format!(
        "apiVersion: skiff.io/v1alpha1\nkind: Listener\nmetadata:\n  name: {name}\nspec:\n  routingKey: {key}\n  host: \"127.0.0.1\"\n  port: {port}\n  type: tcp\n"
    );
    std::fs::write(dir.join("listeners").join(format!("{name}.yaml")), yaml).unwrap();
}

/// The listeners of a running site by name.
fn listeners(site: &Site) -> Vec<Value> {
    let o = site.run(&["listener", "list", "--output", "json"]);
    assert!(o.status.success(), "listener list: {}", text(&o));
    serde_json::from_slice::<Value>(&o.stdout)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Polls the log of `site` until it contains every one of `parts` in one line.
fn wait_log_line(site: &Site, parts: &[&str], within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let log = site.log();
        if let Some(l) = log.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
            return l.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {parts:?} within {within:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn a_flow_and_the_link_survive_listeners_added_moved_and_deleted_by_reloads() {
    let mut a = Site::create("a", false);
    let mut b = Site::create("b", true);
    let echo = Echo::start();
    ok(&[
        "connector",
        "create",
        "echo",
        &echo.port.to_string(),
        "--dir",
        b.d(),
    ]);
    for l in ["l1", "l3", "l4"] {
        ok(&[
            "listener",
            "create",
            l,
            "0",
            "--routing-key",
            "echo",
            "--host",
            "127.0.0.1",
            "--dir",
            a.d(),
        ]);
    }
    a.start();
    b.start();
    link(&a, &b);
    let out_link = a.wait_link(STEP, "a->b up", is_link("up", "b"));
    let in_link = b.wait_link(STEP, "b<-a up", is_link("up", "a"));
    let l1 = a.wait_listener_active("l1", STEP);
    let l3_old = a.wait_listener_active("l3", STEP);
    let l4 = a.wait_listener_active("l4", STEP);

    let progress = Arc::new(AtomicU64::new(0));
    let go_on = Arc::new(AtomicBool::new(false));
    let began = Instant::now();
    let (writer, reader) = start_flow(&l1, progress.clone(), go_on.clone());
    let deadline = Instant::now() + STEP;
    while progress.load(Ordering::SeqCst) < 4 * 1024 * 1024 {
        assert!(Instant::now() < deadline, "the flow does not move");
        std::thread::sleep(Duration::from_millis(10));
    }
    let at_first_reload = progress.load(Ordering::SeqCst);
    let reloads_began = Instant::now();

    // 1. A listener file written by hand, applied by SIGHUP.
    write_listener(&a.dir, "l2", "echo", 0);
    hangup(a.pid());
    let l2 = a.wait_listener_active("l2", STEP);
    echoes(&l2).expect("new listener l2 carries connections");

    // 2. l3 moves to another port, applied by `skiff site reload`.
    let new_port = free_port();
    set_field(
        &a.dir.join("listeners/l3.yaml"),
        "port",
        &new_port.to_string(),
    );
    let o = a.run(&["site", "reload"]);
    assert!(o.status.success(), "site reload: {}", text(&o));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        said.contains("listeners: changed l3") && said.contains("links: unchanged"),
        "site reload should say l3 changed and links did not: {said}"
    );
    let l3_new = format!("127.0.0.1:{new_port}");
    let deadline = Instant::now() + STEP;
    while a.wait_listener_active("l3", STEP) != l3_new {
        assert!(Instant::now() < deadline, "l3 did not move to {l3_new}");
        std::thread::sleep(Duration::from_millis(25));
    }
    echoes(&l3_new).expect("l3 serves on its new port");
    wait_refused(&l3_old, STEP);

    // 3. l4's file deleted, applied by SIGHUP.
    std::fs::remove_file(a.dir.join("listeners/l4.yaml")).unwrap();
    hangup(a.pid());
    wait_refused(&l4, STEP);
    assert!(
        !listeners(&a).iter().any(|l| l["name"] == "l4"),
        "l4 still listed"
    );
    let reload_time = reloads_began.elapsed();
    let during = progress.load(Ordering::SeqCst) - at_first_reload;
    assert!(
        progress.load(Ordering::SeqCst) < TRANSFER,
        "the flow ended before the reloads did: the test proves nothing"
    );
    go_on.store(true, Ordering::SeqCst);

    writer.join().unwrap().expect("the client's writes");
    let got = reader.join().unwrap();
    let took = began.elapsed();
    assert_eq!(got.error, None, "the flow broke (a reset?)");
    assert_eq!(got.first_mismatch, None, "bytes changed in flight");
    assert_eq!(got.bytes, TRANSFER, "the flow ended early");
    assert_eq!(got.digest, got.expected_digest, "digest differs");
    echoes(&l1).expect("l1 still serves");
    // Bound to port 0: a rebound l1 would have another port.
    assert_eq!(a.wait_listener_active("l1", STEP), l1, "l1 was rebound");
    assert_eq!(a.wait_listener_active("l2", STEP), l2, "l2 was rebound");

    let out_after = a.wait_link(STEP, "a->b up", is_link("up", "b"));
    let in_after = b.wait_link(STEP, "b<-a up", is_link("up", "a"));
    assert_eq!(
        out_after["since"], out_link["since"],
        "the outbound link went down and up"
    );
    assert_eq!(
        in_after["since"], in_link["since"],
        "the inbound link went down and up"
    );
    let hups = a
        .log()
        .lines()
        .filter(|l| l.contains("SIGHUP: reloading"))
        .count();
    assert_eq!(hups, 2, "both SIGHUPs were taken:\n{}", a.log());
    eprintln!(
        "figures: 3 reloads (2 SIGHUP, 1 site reload) in {:.2} s while {} KiB of the flow moved; \
         flow {} MiB each way in {:.1} s, digest {:016x} intact; link since {} unchanged",
        reload_time.as_secs_f64(),
        during / 1024,
        TRANSFER / (1024 * 1024),
        took.as_secs_f64(),
        got.digest,
        out_link["since"]
    );
    drop(echo);
}

#[test]
fn a_broken_file_fails_the_reload_names_the_file_and_changes_nothing() {
    let mut a = Site::create("a", false);
    let echo = Echo::start();
    ok(&[
        "connector",
        "create",
        "echo",
        &echo.port.to_string(),
        "--dir",
        a.d(),
    ]);
    ok(&[
        "listener",
        "create",
        "l1",
        "0",
        "--routing-key",
        "echo",
        "--host",
        "127.0.0.1",
        "--dir",
        a.d(),
    ]);
    a.start();
    let l1 = a.wait_listener_active("l1", STEP);
    echoes(&l1).expect("l1 serves");

    // A good new file and a broken one: the reload applies neither.
    write_listener(&a.dir, "fresh", "echo", 0);
    std::fs::write(
        a.dir.join("listeners/broken.yaml"),
        "apiVersion: skiff.io/v1alpha1\nkind: Listener\nspec: [unclosed\n",
    )
    .unwrap();
    let o = a.run(&["site", "reload"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("did not reload")
            && err.contains("listeners/broken.yaml")
            && err.contains("hint: nothing was applied"),
        "the error should name the file and say nothing changed: {err}"
    );
    hangup(a.pid());
    let line = wait_log_line(&a, &["reload failed", "broken.yaml"], STEP);
    assert!(line.contains("runs on as it was"), "{line}");
    assert!(
        a.run(&["site", "status"]).status.success(),
        "the site stopped"
    );
    echoes(&l1).expect("l1 still serves after the failed reloads");
    assert!(
        !listeners(&a).iter().any(|l| l["name"] == "fresh"),
        "a failed reload applied part of the folder"
    );

    // Fixed: the next reload applies the new listener and says so.
    std::fs::remove_file(a.dir.join("listeners/broken.yaml")).unwrap();
    let o = a.run(&["site", "reload", "--output", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["reloaded"], true);
    assert_eq!(report["listeners"]["added"], serde_json::json!(["fresh"]));
    assert_eq!(report["listeners"]["changed"], serde_json::json!([]));
    assert_eq!(report["needsRestart"], serde_json::json!([]));
    echoes(&a.wait_listener_active("fresh", STEP)).expect("fresh serves");

    // A site.yaml setting that needs a restart is reported, not applied.
    let port = free_port().to_string();
    ok(&[
        "site",
        "create",
        "a",
        "--enable-link-access",
        "--link-host",
        "127.0.0.1",
        "--link-port",
        &port,
        "--dir",
        a.d(),
    ]);
    let o = a.run(&["site", "reload"]);
    assert!(o.status.success(), "{}", text(&o));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        said.contains("needs a restart")
            && said.contains("linkAccess \"false\" -> \"true\"")
            && said.contains(&format!("-> \"{port}\"")),
        "site reload should name the settings needing a restart: {said}"
    );
    let status = a.run(&["site", "status", "--output", "json"]);
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        status["site"]["linkAccess"], false,
        "link access was applied without a restart"
    );

    // Not running: refused with a hint.
    a.stop();
    let o = a.run(&["site", "reload"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("is not running") && err.contains("hint: start it with: skiff site run"),
        "{err}"
    );
    drop(echo);
}

#[test]
fn a_listener_that_cannot_bind_and_a_broken_site_yaml_fail_the_reload() {
    let mut a = Site::create("a", false);
    let echo = Echo::start();
    ok(&[
        "connector",
        "create",
        "echo",
        &echo.port.to_string(),
        "--dir",
        a.d(),
    ]);
    write_listener(&a.dir, "l1", "echo", 0);
    a.start();
    echoes(&a.wait_listener_active("l1", STEP)).expect("l1 serves");

    // l1 moved to a port another process holds: the reload says so and exits 1.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().port();
    write_listener(&a.dir, "l1", "echo", taken);
    let t = Instant::now();
    let o = a.run(&["site", "reload"]);
    let took = t.elapsed();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("listener \"l1\" did not start")
            && err.contains(&format!("127.0.0.1:{taken}"))
            && err.contains("port in use"),
        "the error should name the listener, its port and why: {}",
        text(&o)
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("listeners: changed l1"),
        "{}",
        text(&o)
    );
    // The same as JSON, for scripts, and from SIGHUP as an ERROR line in the log.
    write_listener(&a.dir, "l2", "echo", taken);
    let o = a.run(&["site", "reload", "--output", "json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    // l1 is still down too: a reload succeeds only when everything is served.
    let failed: Vec<&str> = report["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["l1", "l2"], "{report:#}");
    assert_eq!(report["failed"][1]["kind"], "listener", "{report:#}");
    write_listener(&a.dir, "l3", "echo", taken);
    hangup(a.pid());
    let line = wait_log_line(&a, &["ERROR", "not started by this reload", "l3"], STEP);
    assert!(line.contains("port in use"), "{line}");

    // The port freed, a reload with l1's file unchanged binds it there: every reload tries
    // a listener that is down again.
    drop(holder);
    std::fs::remove_file(a.dir.join("listeners/l2.yaml")).unwrap();
    std::fs::remove_file(a.dir.join("listeners/l3.yaml")).unwrap();
    ok(&["site", "reload", "--dir", a.d()]);
    let at = a.wait_listener_active("l1", STEP);
    assert!(
        at.ends_with(&format!(":{taken}")),
        "l1 is at {at}, not on the port its file names ({taken})"
    );
    echoes(&at).expect("l1 serves again");

    // A broken site.yaml fails the reload, names the file, and applies nothing.
    let site_yaml = a.dir.join("site.yaml");
    let good = std::fs::read_to_string(&site_yaml).unwrap();
    std::fs::write(
        &site_yaml,
        "apiVersion: skiff.io/v1alpha1\nkind: Site\nspec: [\n",
    )
    .unwrap();
    write_listener(&a.dir, "fresh", "echo", 0);
    let o = a.run(&["site", "reload"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("did not reload") && err.contains("site.yaml"),
        "the error should name site.yaml: {err}"
    );
    // (listener list reads site.yaml too: asked once it is whole again, before a reload.)
    std::fs::write(&site_yaml, good).unwrap();
    assert!(
        !listeners(&a).iter().any(|l| l["name"] == "fresh"),
        "a reload with a broken site.yaml applied the folder"
    );
    ok(&["site", "reload", "--dir", a.d()]);
    echoes(&a.wait_listener_active("fresh", STEP)).expect("fresh serves");
    eprintln!("figures: a reload with a listener on a taken port answered (exit 1) in {took:?}");
    drop(echo);
}

#[test]
fn link_renew_failures_are_json_lines_when_asked() {
    let mut west = Site::create_on_fixed_port("west");
    let east = Site::create("east", false);
    west.start();
    link(&east, &west);
    // The issuer stopped: the renewal cannot reach it.
    west.stop();
    let o = east.run(&["--log-format", "json", "link", "renew"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{err}")))
        .collect();
    let failure = lines
        .iter()
        .find(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("link west") && m.contains("not renewed"))
        })
        .unwrap_or_else(|| panic!("no 'not renewed' line: {err}"));
    assert_eq!(failure["level"], "ERROR");
    assert!(
        failure["fields"]["hint"]
            .as_str()
            .is_some_and(|h| h.contains("keeps its certificate")),
        "{failure}"
    );
}

#[test]
fn an_unusable_link_file_is_skipped_and_the_rest_of_the_site_runs() {
    let mut west = Site::create_on_fixed_port("west");
    let mut east = Site::create("east", false);
    west.start();
    link(&east, &west);
    let echo = Echo::start();
    ok(&[
        "connector",
        "create",
        "echo",
        &echo.port.to_string(),
        "--dir",
        east.d(),
    ]);
    write_listener(&east.dir, "l1", "echo", 0);
    east.start();
    east.wait_link(STEP, "up", is_link("up", "west"));

    // The link file edited by hand into one that cannot be dialled: quic through a proxy.
    let file = east.dir.join("links/west.yaml");
    set_field(&file, "transport", "quic");
    let yaml = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        yaml.replace("spec:\n", "spec:\n  proxy: http://127.0.0.1:3128\n"),
    )
    .unwrap();
    let o = east.run(&["site", "reload", "--output", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    let skipped = &report["skipped"][0];
    assert_eq!(skipped["kind"], "link", "{report:#}");
    assert_eq!(skipped["name"], "west", "{report:#}");
    let problem = skipped["problem"].as_str().unwrap_or_default();
    assert!(
        problem.contains("links/west.yaml") && problem.contains("QUIC is UDP"),
        "the problem should name the file and why: {problem}"
    );
    assert_eq!(report["links"]["removed"], serde_json::json!(["west"]));

    // A restart with that file: the site starts and serves its listener.
    east.stop();
    east.start();
    echoes(&east.wait_listener_active("l1", STEP)).expect("l1 serves");
    let line = wait_log_line(&east, &["skipped", "west.yaml"], STEP);
    assert!(line.contains("WARN"), "{line}");
    drop(echo);
}

/// Runs `skiff site run --dir D ARGS` with `env` until the site answers, stops it with
/// SIGTERM and returns its stderr.
fn run_and_stop(site: &Site, args: &[&str], env: &[(&str, &str)]) -> String {
    let log = site.dir.with_file_name("run.log");
    let mut cmd = Command::new(skiff_bin());
    cmd.args(["site", "run", "--dir", site.d()])
        .args(args)
        .env_remove("SKIFF_LOG")
        .env_remove("SKIFF_LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + STEP;
    while !site.run(&["site", "status"]).status.success() {
        if let Some(s) = child.try_wait().unwrap() {
            panic!(
                "site run {args:?} exited with {s}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "site run {args:?} did not start");
        std::thread::sleep(Duration::from_millis(25));
    }
    let status = common::terminate(child, Duration::from_secs(10)).expect("stops on SIGTERM");
    assert!(status.success(), "site run {args:?} exited with {status}");
    std::fs::read_to_string(&log).unwrap()
}

#[test]
fn log_lines_are_json_when_asked_and_filtered_by_level() {
    let site = Site::create("logs", false);

    let json = run_and_stop(&site, &["--log-format", "json"], &[]);
    let mut messages = Vec::new();
    for line in json.lines() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\n{json}"));
        assert!(
            v["level"].is_string() && v["target"].is_string() && v["fields"]["message"].is_string(),
            "a line lacks level, target or fields.message: {line}"
        );
        messages.push(v["fields"]["message"].as_str().unwrap().to_string());
    }
    assert!(
        messages.iter().any(|m| m == "site running"),
        "no 'site running' line: {json}"
    );
    let json_lines = messages.len();

    // The flag beats SKIFF_LOG.
    let debug = run_and_stop(&site, &["--log-level", "debug"], &[("SKIFF_LOG", "warn")]);
    assert!(debug.contains("site running"), "{debug}");
    let debug_lines = debug.lines().filter(|l| l.contains("DEBUG")).count();
    assert!(
        debug_lines > 0,
        "--log-level debug shows no DEBUG line: {debug}"
    );

    // SKIFF_LOG_FORMAT applies without the flag; warn hides the info lines.
    let warn = run_and_stop(
        &site,
        &["--log-level", "warn"],
        &[("SKIFF_LOG_FORMAT", "json")],
    );
    assert!(
        !warn.contains("site running"),
        "warn shows info lines: {warn}"
    );
    assert!(!warn.contains("DEBUG"), "{warn}");
    for line in warn.lines() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }

    // A bad level is refused before anything runs.
    let o = skiff(&["site", "run", "--dir", site.d(), "--log-level", "nonsense="]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--log-level") && err.contains("not a level") && err.contains("info,"),
        "{err}"
    );
    assert!(!site.dir.join("admin.sock").exists(), "the site ran");
    let o = skiff(&["--log-format", "xml", "version"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    // Valid filters beyond a level: a bare target, 0-5, spaces after the commas.
    for level in ["skiff_router", "3", "info, skiff_router=debug"] {
        let o = skiff(&["--log-level", level, "version"]);
        assert!(o.status.success(), "--log-level {level:?}: {}", text(&o));
    }
    // A bad SKIFF_LOG is warned about once and the default used; the verb still runs.
    let o = Command::new(skiff_bin())
        .arg("version")
        .env("SKIFF_LOG", "infoo")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err.matches("warning: env SKIFF_LOG=\"infoo\" ignored")
            .count(),
        1,
        "{err}"
    );

    // A usage error is one JSON object when JSON was asked for, by flag or environment.
    let usage = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = Command::new(skiff_bin());
        cmd.args(args).env_remove("SKIFF_LOG_FORMAT");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    for (args, env) in [
        (&["--log-format", "json", "version", "--bogus"][..], &[][..]),
        (
            &["version", "--bogus"][..],
            &[("SKIFF_LOG_FORMAT", "json")][..],
        ),
    ] {
        let o = usage(args, env);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "one JSON line expected: {err}");
        let v: Value = serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{e}: {err}"));
        assert_eq!(v["level"], "ERROR", "{v}");
        assert!(
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("--bogus")),
            "{v}"
        );
    }
    // Without JSON asked for, clap's own text.
    let o = usage(&["version", "--bogus"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).starts_with("error: unexpected argument"));
    eprintln!(
        "figures: {json_lines} JSON lines all parsed; {debug_lines} DEBUG lines at --log-level debug"
    );
}

#[test]
fn completion_scripts_name_the_verbs_and_parse() {
    for shell in ["bash", "zsh", "fish"] {
        let o = skiff(&["completion", shell]);
        assert!(o.status.success(), "completion {shell}: {}", text(&o));
        let script = String::from_utf8(o.stdout).unwrap();
        for verb in [
            "site",
            "token",
            "listener",
            "connector",
            "reload",
            "completion",
        ] {
            assert!(script.contains(verb), "{shell} script lacks {verb}");
        }
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &script).unwrap();
        match Command::new(shell).arg("-n").arg(file.path()).output() {
            Ok(check) => assert!(
                check.status.success(),
                "{shell} -n rejects the script: {}",
                String::from_utf8_lossy(&check.stderr)
            ),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                eprintln!("{shell} is not installed: its script's syntax is not checked")
            }
            Err(e) => panic!("{shell}: {e}"),
        }
        eprintln!("figures: {shell} script {} lines", script.lines().count());
    }
    let o = skiff(&["completion", "tcsh"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}
