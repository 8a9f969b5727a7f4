//! Links through an HTTP CONNECT proxy, black box: real `skiff site run` processes and a real
//! proxy (Debian's tinyproxy on loopback). Redemption and link go through the proxy, a flow
//! crosses intact, credentials work and wrong ones are named without the password, a stopped
//! proxy is named and the link comes back by itself, a port the proxy does not allow is named
//! with its 403, and QUIC through a proxy is refused.
//!
//! Skips (saying why) when tinyproxy is not installed, unless `SKIFF_REQUIRE_PROXY=1` (CI).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Echo, Site, expose_echo, fails, is_link, ok, skiff, text};
use serde_json::Value;

/// A tinyproxy in the foreground (`-d`) on a loopback port, with its config and log in a
/// temporary folder; killed (by its PID, our child) on drop.
struct Tinyproxy {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Tinyproxy {
    /// Starts tinyproxy allowing CONNECT to `connect_ports` only (all ports when empty), with
    /// Basic authentication when `auth` is given. `None`: tinyproxy is not installed (skip).
    fn start(connect_ports: &[u16], auth: Option<(&str, &str)>) -> Option<Tinyproxy> {
        if Command::new("tinyproxy")
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            let why = "tinyproxy is not installed (apt-get install tinyproxy)";
            if std::env::var("SKIFF_REQUIRE_PROXY").as_deref() == Ok("1") {
                panic!("SKIFF_REQUIRE_PROXY=1 but {why}");
            }
            eprintln!("SKIPPED: {why}");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut conf = format!(
            "Port {port}\nListen 127.0.0.1\nAllow 127.0.0.1\nTimeout 600\nMaxClients 100\n\
             LogLevel Connect\nLogFile \"{log}\"\nPidFile \"{pid}\"\n",
            port = common::free_port(),
            log = dir.path().join("tinyproxy.log").display(),
            pid = dir.path().join("tinyproxy.pid").display(),
        );
        for p in connect_ports {
            conf.push_str(&format!("ConnectPort {p}\n"));
        }
        if let Some((user, password)) = auth {
            conf.push_str(&format!("BasicAuth {user} {password}\n"));
        }
        std::fs::write(dir.path().join("tinyproxy.conf"), conf).unwrap();
        let port = Self::port_of(dir.path());
        let mut proxy = Tinyproxy {
            port,
            child: None,
            dir,
        };
        proxy.run();
        Some(proxy)
    }

    fn port_of(dir: &Path) -> u16 {
        let conf = std::fs::read_to_string(dir.join("tinyproxy.conf")).unwrap();
        conf.lines()
            .find_map(|l| l.strip_prefix("Port "))
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Starts the process (again) and waits until it accepts connections.
    fn run(&mut self) {
        assert!(self.child.is_none(), "tinyproxy already running");
        let stderr = std::fs::File::create(self.dir.path().join("stderr")).unwrap();
        self.child = Some(
            Command::new("tinyproxy")
                .arg("-d")
                .arg("-c")
                .arg(self.dir.path().join("tinyproxy.conf"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .expect("start tinyproxy"),
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tinyproxy did not listen on {} within 5 s: {}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process (our child, by its PID) and reaps it.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn url_with(&self, user: &str, password: &str) -> String {
        format!("http://{user}:{password}@127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("tinyproxy.log"));
        let err = std::fs::read_to_string(self.dir.path().join("stderr"));
        format!("{}{}", log.unwrap_or_default(), err.unwrap_or_default())
    }

    /// How many `CONNECT target` requests the proxy logged.
    fn connects_to(&self, target: &str) -> usize {
        let want = format!("CONNECT {target} HTTP/1.1");
        self.log().lines().filter(|l| l.contains(&want)).count()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        self.stop();
    }
}

fn link_file(site: &Site, name: &str) -> PathBuf {
    site.dir.join("links").join(format!("{name}.yaml"))
}

/// Sets (or adds) `spec.proxy` in a stored link file.
fn set_link_proxy(site: &Site, name: &str, url: &str) {
    let path = link_file(site, name);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut out: Vec<String> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("proxy:"))
        .map(String::from)
        .collect();
    let at = out.iter().position(|l| l == "spec:").expect("spec:") + 1;
    out.insert(at, format!("  proxy: {url}"));
    std::fs::write(&path, out.join("\n") + "\n").unwrap();
}

fn redeem(token: &Path, east: &Site, extra: &[&str]) -> std::process::Output {
    let mut a = vec!["token", "redeem", token.to_str().unwrap()];
    a.extend_from_slice(extra);
    a.extend(["--dir", east.d()]);
    skiff(&a)
}

/// west (link access on a fixed port, an echo connector) and east (a listener for it).
fn two_sites(echo: &Echo) -> (Site, Site) {
    let mut west = Site::create_on_fixed_port("west");
    let mut east = Site::create("east", false);
    west.start();
    east.start();
    expose_echo(echo, &west, &east);
    (west, east)
}

/// Sends `size` pseudo-random bytes through `addr` (an echo across the link) and returns the
/// SHA-256 of what was sent and of what came back.
fn echo_digest(addr: &str, size: usize) -> (String, String) {
    let mut data = vec![0u8; size];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut writer = c.try_clone().unwrap();
    let sent = data.clone();
    let w = std::thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::with_capacity(size);
    c.read_to_end(&mut back).unwrap();
    w.join().unwrap();
    (sha256_hex(&data), sha256_hex(&back))
}

/// SHA-256 in hex, by `sha256sum` (coreutils).
fn sha256_hex(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run sha256sum");
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let w = std::thread::spawn(move || stdin.write_all(&data).unwrap());
    let out = child.wait_with_output().unwrap();
    w.join().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Polls east's link `name` until `pred` holds; panics after `within` with the links and logs.
fn wait_for(
    site: &Site,
    name: &str,
    within: Duration,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    site.wait_link(within, what, |l| l["name"] == name && pred(l))
}

/// When a link entered its state (`since`, RFC 3339).
fn since(l: &Value) -> time::OffsetDateTime {
    let s = l["since"].as_str().unwrap_or_default();
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("since {s:?}: {e}"))
}

#[test]
fn a_link_redeemed_through_a_proxy_is_tls_and_carries_a_flow_intact() {
    let echo = Echo::start();
    let (mut west, mut east) = two_sites(&echo);
    let port = west.link_port();
    let Some(proxy) = Tinyproxy::start(&[port], None) else {
        return;
    };
    let target = format!("127.0.0.1:{port}");
    let token = west.dir.with_file_name("t.yaml");
    west.issue(&token, &[]);
    // east stopped while it redeems: no link of east can dial, so every CONNECT the proxy
    // logs until east starts again is the redemption's.
    east.stop();
    let t0 = Instant::now();
    let out = redeem(&token, &east, &["--proxy", &proxy.url()]);
    assert!(out.status.success(), "{}", text(&out));
    // auto became tls, with a note saying why.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TLS over TCP"), "{}", text(&out));
    let stored = std::fs::read_to_string(link_file(&east, "west")).unwrap();
    assert!(stored.contains("transport: tls"), "{stored}");
    assert!(
        stored.contains(&format!("proxy: {}", proxy.url())),
        "{stored}"
    );
    // The redemption went through the proxy: one CONNECT, made before east could dial.
    assert_eq!(proxy.connects_to(&target), 1, "{}", proxy.log());
    east.start();

    let up = wait_for(
        &east,
        "west",
        Duration::from_secs(10),
        "up through the proxy",
        |l| l["status"] == "up",
    );
    let took = t0.elapsed();
    assert_eq!(up["transport"], "tls", "{up:#}");
    assert_eq!(up["proxy"], format!("127.0.0.1:{}", proxy.port), "{up:#}");
    let table =
        String::from_utf8_lossy(&ok(&["link", "list", "--dir", east.d()]).stdout).into_owned();
    assert!(
        table.contains(&format!("via proxy 127.0.0.1:{}", proxy.port)),
        "{table}"
    );
    // Redemption and link: two CONNECTs to the link port.
    let connects = proxy.connects_to(&target);
    assert!(connects >= 2, "{connects} CONNECTs: {}", proxy.log());
    eprintln!(
        "redemption to link up through tinyproxy: {took:?}; CONNECTs to {target}: {connects}"
    );

    // A flow across, bytes intact.
    let addr = east.wait_listener_active("echo", Duration::from_secs(10));
    let t = Instant::now();
    let (sent, back) = echo_digest(&addr, 8 << 20);
    eprintln!("8 MiB echoed through the proxied link in {:?}", t.elapsed());
    assert_eq!(
        sent, back,
        "bytes changed on the way through the proxied link"
    );

    // Renewing the link's certificate goes through the proxy too.
    let before = proxy.connects_to(&target);
    let renewed = ok(&["link", "renew", "--dir", east.d()]);
    let after = proxy.connects_to(&target);
    assert_eq!(after, before + 1, "renewal CONNECTs: {}", text(&renewed));

    // The peer down, the proxy up: the proxy's 500 is the link's last error, with what it means.
    west.kill();
    let down = wait_for(
        &east,
        "west",
        Duration::from_secs(15),
        "the proxy's 500",
        |l| {
            l["last_error"]
                .as_str()
                .is_some_and(|e| e.contains(" 500 "))
        },
    );
    let why = down["last_error"].as_str().unwrap();
    eprintln!("peer down behind the proxy: {why}");
    assert!(
        why.contains(&format!(
            "answered CONNECT to {target} with 500 Unable to connect"
        )) && why.contains("the proxy could not reach the peer"),
        "{why}"
    );
    assert_eq!(
        down["status"], "connecting",
        "a 5xx is retried as a network error"
    );
}

#[test]
fn proxy_credentials_work_and_wrong_ones_are_named_without_the_password() {
    const PASSWORD: &str = "s3cret-Pa55";
    const WRONG: &str = "not-the-Pa55";
    let echo = Echo::start();
    let (west, mut east) = two_sites(&echo);
    let port = west.link_port();
    let Some(proxy) = Tinyproxy::start(&[port], Some(("skiffuser", PASSWORD))) else {
        return;
    };
    // Without credentials, and with wrong ones, the redemption is refused with the proxy's
    // answer (tinyproxy: 407 without, 401 with wrong ones).
    let token = west.dir.with_file_name("t.yaml");
    west.issue(&token, &[]);
    let none = redeem(&token, &east, &["--proxy", &proxy.url()]);
    assert!(!none.status.success());
    let none = text(&none);
    assert!(
        none.contains("407") && none.contains("wants credentials and the link has none"),
        "{none}"
    );
    let wrong = redeem(
        &token,
        &east,
        &["--proxy", &proxy.url_with("skiffuser", WRONG)],
    );
    assert!(!wrong.status.success());
    let wrong = text(&wrong);
    assert!(
        wrong.contains("401 Unauthorized")
            && wrong.contains("did not accept the credentials of user \"skiffuser\""),
        "{wrong}"
    );
    assert!(!wrong.contains(WRONG), "the password was printed: {wrong}");

    // The right ones: redeemed (the one-use token was not spent by the refusals) and up.
    let right = redeem(
        &token,
        &east,
        &["--proxy", &proxy.url_with("skiffuser", PASSWORD)],
    );
    assert!(right.status.success(), "{}", text(&right));
    assert!(!text(&right).contains(PASSWORD), "{}", text(&right));
    let mode = std::fs::metadata(link_file(&east, "west"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(
        mode, 0o600,
        "a link file holding a proxy password must be 0600"
    );
    // Read back with get and applied again (after a delete): still 0600.
    let got = ok(&["get", "links", "-o", "yaml", "--dir", east.d()]);
    let saved = east.dir.with_file_name("links.yaml");
    std::fs::write(&saved, &got.stdout).unwrap();
    let before = wait_for(
        &east,
        "west",
        Duration::from_secs(10),
        "up before the delete",
        |l| l["status"] == "up",
    );
    let old_since = since(&before);
    ok(&["link", "delete", "west", "--dir", east.d()]);
    assert!(!link_file(&east, "west").exists());
    ok(&["apply", "-f", saved.to_str().unwrap(), "--dir", east.d()]);
    let mode = std::fs::metadata(link_file(&east, "west"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(
        mode, 0o600,
        "skiff apply wrote the link with its password {mode:o}"
    );
    // The new link, not the deleted one (`closing` until west hangs up; `since` is when a
    // link entered its state, with milliseconds, so a later one is the new link): then
    // `active` below is over it.
    let up = wait_for(
        &east,
        "west",
        Duration::from_secs(10),
        "up again with credentials",
        |l| l["status"] == "up" && since(l) > old_since,
    );
    assert_eq!(up["transport"], "tls");
    let addr = east.wait_listener_active("echo", Duration::from_secs(10));
    let (sent, back) = echo_digest(&addr, 1 << 20);
    assert_eq!(sent, back);

    // The stored password changed to a wrong one: the link status names the 401 and the user.
    east.stop();
    set_link_proxy(&east, "west", &proxy.url_with("skiffuser", WRONG));
    east.start();
    let refused = wait_for(
        &east,
        "west",
        Duration::from_secs(10),
        "refused with 401",
        |l| l["status"] == "refused",
    );
    let reason = refused["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!(
            "proxy 127.0.0.1:{} refused CONNECT to 127.0.0.1:{port}: 401",
            proxy.port
        )) && reason.contains("did not accept the credentials of user \"skiffuser\""),
        "{reason}"
    );
    eprintln!("wrong proxy password, link status: {reason}");
    // Not asked again every 5 s (BACKOFF_CAP): the next try is 180 s away, like a revocation.
    let target = format!("127.0.0.1:{port}");
    let tried = proxy.connects_to(&target);
    std::thread::sleep(Duration::from_secs(7));
    let again = proxy.connects_to(&target) - tried;
    eprintln!("CONNECTs in the 7 s after a 401: {again}");
    assert_eq!(
        again,
        0,
        "a refused password was retried within 7 s: {}",
        proxy.log()
    );
    let list = text(&east.run(&["link", "list"]));
    let json = text(&east.run(&["link", "list", "--output", "json"]));
    for shown in [list.as_str(), json.as_str(), &east.log()] {
        assert!(
            !shown.contains(WRONG) && !shown.contains(PASSWORD),
            "a password was shown: {shown}"
        );
    }
}

#[test]
fn a_stopped_proxy_is_named_and_the_link_comes_back_by_itself() {
    let echo = Echo::start();
    let (west, east) = two_sites(&echo);
    let port = west.link_port();
    let Some(mut proxy) = Tinyproxy::start(&[port], None) else {
        return;
    };
    let token = west.dir.with_file_name("t.yaml");
    west.issue(&token, &[]);
    let out = redeem(&token, &east, &["--proxy", &proxy.url()]);
    assert!(out.status.success(), "{}", text(&out));
    wait_for(&east, "west", Duration::from_secs(10), "up", |l| {
        l["status"] == "up"
    });

    // The tunnel is the link's only path: without the proxy the link goes down, and says why.
    proxy.stop();
    let t = Instant::now();
    let down = wait_for(
        &east,
        "west",
        Duration::from_secs(15),
        "naming the proxy",
        |l| {
            l["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("unreachable"))
        },
    );
    eprintln!("proxy killed: link status names it after {:?}", t.elapsed());
    let why = down["last_error"].as_str().unwrap();
    assert!(
        why.contains(&format!(
            "proxy 127.0.0.1:{} unreachable: connection refused",
            proxy.port
        )),
        "{why}"
    );
    // The accepting side sees the tunnel close too.
    let deadline = Instant::now() + Duration::from_secs(10);
    while west.links().iter().any(is_link("up", "east")) {
        assert!(
            Instant::now() < deadline,
            "west still has east up 10 s after the proxy died"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Down long enough for the redial backoff to reach its 5 s cap (0.1 + 0.2 + ... + 3.2 s).
    std::thread::sleep(Duration::from_secs(8));
    let still = east.links();
    assert!(
        still
            .iter()
            .any(|l| l["name"] == "west" && l["status"] != "up"),
        "{still:#?}"
    );
    // Back on the same port: the link redials by itself within the backoff cap.
    proxy.run();
    let t = Instant::now();
    wait_for(&east, "west", Duration::from_secs(10), "up again", |l| {
        l["status"] == "up"
    });
    let took = t.elapsed();
    eprintln!("proxy back: link up again in {took:?}");
    assert!(
        took < Duration::from_secs(7),
        "took {took:?}, over the 5 s backoff cap + 2 s"
    );
    let addr = east.wait_listener_active("echo", Duration::from_secs(10));
    let (sent, back) = echo_digest(&addr, 1 << 20);
    assert_eq!(sent, back);
}

#[test]
fn a_port_the_proxy_does_not_allow_is_named_with_its_403() {
    let echo = Echo::start();
    let (west, mut east) = two_sites(&echo);
    let port = west.link_port();
    // CONNECT allowed to 443 only, not to the link port.
    let Some(proxy) = Tinyproxy::start(&[443], None) else {
        return;
    };
    let target = format!("127.0.0.1:{port}");
    let token = west.dir.with_file_name("t.yaml");
    west.issue(&token, &[]);
    let out = redeem(&token, &east, &["--proxy", &proxy.url()]);
    assert!(!out.status.success());
    let out = text(&out);
    assert!(
        out.contains(&format!(
            "proxy 127.0.0.1:{} refused CONNECT to {target}: 403",
            proxy.port
        )) && out.contains("ConnectPort"),
        "{out}"
    );
    // The hint is about the proxy, not about the issuer being down.
    assert!(
        out.contains("went through --proxy") && !out.contains("issuing site runs"),
        "{out}"
    );

    // A link redeemed directly, then given that proxy (auto: it dials TLS through it).
    let direct = redeem(&token, &east, &[]);
    assert!(direct.status.success(), "{}", text(&direct));
    wait_for(&east, "west", Duration::from_secs(10), "up directly", |l| {
        l["status"] == "up"
    });
    east.stop();
    set_link_proxy(&east, "west", &proxy.url());
    east.start();
    let refused = wait_for(
        &east,
        "west",
        Duration::from_secs(10),
        "refused by the proxy",
        |l| l["status"] == "refused",
    );
    let reason = refused["reason"].as_str().unwrap();
    eprintln!("port not allowed, link status: {reason}");
    assert!(
        reason.contains(&format!(
            "proxy 127.0.0.1:{} refused CONNECT to {target}: 403",
            proxy.port
        )) && reason.contains("allow this port in the proxy"),
        "{reason}"
    );
    assert!(proxy.connects_to(&target) >= 2, "{}", proxy.log());
}

#[test]
fn quic_through_a_proxy_and_bad_proxy_urls_are_refused_with_the_reason() {
    let mut west = Site::create("west", true);
    let east = Site::create("east", false);
    west.start();
    let token = west.dir.with_file_name("t.yaml");
    west.issue(&token, &[]);
    let t = token.to_str().unwrap();
    let base = ["token", "redeem", t, "--dir", east.d()];
    let with = |extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        fails(&a)
    };
    let e = with(&["--transport", "quic", "--proxy", "http://127.0.0.1:3128"]);
    assert!(
        e.contains("--transport quic cannot go through --proxy") && e.contains("QUIC is UDP"),
        "{e}"
    );
    let e = with(&["--proxy", "https://127.0.0.1:3128"]);
    assert!(
        e.contains("\"https\" is not supported: only http://"),
        "{e}"
    );
    let e = with(&["--proxy", "http://proxy.example"]);
    assert!(e.contains("names no port"), "{e}");
    let e = with(&["--proxy", "http://proxy.example:3128/path"]);
    assert!(e.contains("has a path"), "{e}");
    let e = with(&["--proxy", "http://u:hunter2@127.0.0.1:0"]);
    assert!(
        e.contains("proxy port is not a number") && !e.contains("hunter2"),
        "{e}"
    );
    // The host forgotten, or the scheme: the password is not echoed either.
    for url in ["http://alice:hunter2", "alice:hunter2"] {
        let e = with(&["--proxy", url]);
        assert!(!e.contains("hunter2") && e.contains("proxy"), "{url}: {e}");
    }
    // Nothing was stored, and the token was not spent: it still redeems.
    assert!(!east.dir.join("links").join("west.yaml").exists());
    ok(&base);
}

#[test]
fn an_offline_link_file_installed_with_a_proxy_dials_through_it() {
    let echo = Echo::start();
    let (west, east) = two_sites(&echo);
    let port = west.link_port();
    let Some(proxy) = Tinyproxy::start(&[port], None) else {
        return;
    };
    let target = format!("127.0.0.1:{port}");
    let east_id = std::fs::read_to_string(east.dir.join("site.yaml"))
        .unwrap()
        .lines()
        .find_map(|l| l.trim().strip_prefix("id:").map(|v| v.trim().to_string()))
        .expect("id in site.yaml");
    let file = west.dir.with_file_name("east.link.yaml");
    ok(&[
        "link",
        "generate",
        file.to_str().unwrap(),
        "--site-id",
        &east_id,
        "--dir",
        west.d(),
    ]);
    // QUIC through a proxy is refused for an offline file too, and nothing is installed.
    let quic = redeem(
        &file,
        &east,
        &["--transport", "quic", "--proxy", &proxy.url()],
    );
    assert!(!quic.status.success());
    assert!(
        text(&quic).contains("--transport quic cannot go through --proxy"),
        "{}",
        text(&quic)
    );
    assert!(!east.dir.join("links").join("west.yaml").exists());

    let out = redeem(&file, &east, &["--proxy", &proxy.url()]);
    assert!(out.status.success(), "{}", text(&out));
    let stored = std::fs::read_to_string(link_file(&east, "west")).unwrap();
    assert!(
        stored.contains(&format!("proxy: {}", proxy.url())),
        "{stored}"
    );
    assert!(stored.contains("transport: tls"), "{stored}");
    let up = wait_for(&east, "west", Duration::from_secs(10), "up", |l| {
        l["status"] == "up"
    });
    assert_eq!(up["transport"], "tls");
    assert!(proxy.connects_to(&target) >= 1, "{}", proxy.log());
    let addr = east.wait_listener_active("echo", Duration::from_secs(10));
    let (sent, back) = echo_digest(&addr, 1 << 20);
    assert_eq!(sent, back);
}
