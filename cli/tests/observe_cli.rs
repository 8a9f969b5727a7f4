//! What an operator sees from the command line, black box on real `skiff site run` processes:
//! `skiff network status` names every site, link and routing key of a three-site network and
//! flags a site that died (and the key only it served) in words; `listener list` says why a
//! key cannot be reached or which sites can serve it; `skiff debug dump` writes one 0600
//! archive (to a file or stdout) with status, metrics, logs and configuration and without
//! any private key, grant code or proxy password, for a running site and a stopped one.
//!
//! The proxy part runs Debian's tinyproxy; it skips (saying why) when tinyproxy is not
//! installed, unless `SKIFF_REQUIRE_PROXY=1`.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Echo, Site, is_link, link, ok, site_id, text};
use serde_json::Value;

/// `network status --output json` of a site.
fn network_json(site: &Site) -> Value {
    let o = site.run(&["network", "status", "--output", "json"]);
    assert!(o.status.success(), "network status failed: {}", text(&o));
    serde_json::from_slice(&o.stdout).expect("network status --output json is JSON")
}

/// Polls `site`'s network view until `pred` holds; returns how long that took.
fn wait_network(
    site: &Site,
    within: Duration,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let net = network_json(site);
        if pred(&net) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{}: {what} not seen within {within:?}: {net:#}\nlog:\n{}",
            site.name,
            site.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn router<'a>(net: &'a Value, name: &str) -> &'a Value {
    net["routers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no router {name} in {net:#}"))
}

/// The counts in the first line of the text: (sites, reachable sites, routing keys).
fn header_counts(text: &str) -> (usize, usize, usize) {
    let first = text.lines().next().unwrap_or_default();
    let number_before = |word: &str| -> usize {
        let at = first
            .find(word)
            .unwrap_or_else(|| panic!("no {word:?} in {first:?}"));
        first[..at]
            .split(|c: char| !c.is_ascii_digit())
            .rfind(|s| !s.is_empty())
            .unwrap()
            .parse()
            .unwrap()
    };
    (
        number_before(" site"),
        number_before(" reachable"),
        number_before(" routing key"),
    )
}

/// The same counts from the JSON.
fn json_counts(net: &Value) -> (usize, usize, usize) {
    let routers = net["routers"].as_array().unwrap();
    (
        routers.len(),
        routers.iter().filter(|r| r["reachable"] == true).count(),
        net["keys"].as_array().unwrap().len(),
    )
}

/// The line of the text that starts (after the tree's twig) with `label`.
fn line_of<'a>(text: &'a str, label: &str) -> &'a str {
    text.lines()
        .find(|l| {
            l.trim_start_matches(['├', '└', '─', ' '])
                .starts_with(&format!("{label} "))
        })
        .unwrap_or_else(|| panic!("no line for {label:?} in:\n{text}"))
}

/// `listener list` at a site: (text, JSON).
fn listener_list(site: &Site) -> (String, Vec<Value>) {
    let t = ok(&["listener", "list", "--dir", site.d()]);
    let j = ok(&["listener", "list", "--output", "json", "--dir", site.d()]);
    (
        String::from_utf8_lossy(&t.stdout).into_owned(),
        serde_json::from_slice::<Value>(&j.stdout)
            .unwrap()
            .as_array()
            .cloned()
            .unwrap(),
    )
}

fn detail_of(items: &[Value], name: &str) -> String {
    items
        .iter()
        .find(|i| i["name"] == name)
        .and_then(|i| i["detail"].as_str())
        .unwrap_or_else(|| panic!("no detail for {name}: {items:#?}"))
        .to_string()
}

#[test]
fn network_status_names_every_site_link_and_key_and_flags_a_dead_site_in_words() {
    let echo = Echo::start();
    let mut west = Site::create("west", true);
    let mut east = Site::create("east", true);
    let mut north = Site::create("north", false);
    for s in [&mut west, &mut east, &mut north] {
        s.start();
    }
    // A chain: east dials west, north dials east.
    link(&east, &west);
    link(&north, &east);
    // redis's backend is down from the start: nothing listens on its port.
    let dead_port = common::free_port().to_string();
    ok(&[
        "connector",
        "create",
        "redis",
        &dead_port,
        "--dir",
        east.d(),
    ]);
    ok(&[
        "connector",
        "create",
        "web",
        &echo.port.to_string(),
        "--type",
        "http",
        "--dir",
        north.d(),
    ]);
    for (name, key, kind) in [
        ("cache", "redis", "tcp"),
        ("web", "web", "http"),
        ("nothing", "ghost", "tcp"),
    ] {
        ok(&[
            "listener",
            "create",
            name,
            "0",
            "--host",
            "127.0.0.1",
            "--routing-key",
            key,
            "--type",
            kind,
            "--dir",
            west.d(),
        ]);
    }
    let converged = wait_network(
        &west,
        Duration::from_secs(20),
        "3 reachable sites, 2 keys",
        |n| json_counts(n) == (3, 3, 2),
    );
    eprintln!("west saw 3 reachable sites and 2 keys after {converged:?}");

    let started = Instant::now();
    let o = west.run(&["network", "status"]);
    let took = started.elapsed();
    assert!(o.status.success(), "{}", text(&o));
    let status = String::from_utf8_lossy(&o.stdout).into_owned();
    eprintln!("network status at west ({took:?}):\n{status}");
    // The time is reported; the bound only catches a hang (a loaded CI machine is slow).
    assert!(
        took <= Duration::from_secs(10),
        "network status took {took:?}"
    );
    assert!(
        status.starts_with("network seen from west: 3 sites (3 reachable), 2 routing keys; 1 wanted by listeners here that no site serves\n"),
        "{status}"
    );
    assert!(!status.contains('\x1b'), "colour on a pipe: {status:?}");
    assert!(
        status.contains("\nwest (this site, interior)\n"),
        "{status}"
    );
    assert!(
        status.contains("\neast (interior, reachable, cost 1)\n"),
        "{status}"
    );
    assert!(
        status.contains("\nnorth (interior, reachable, cost 2, via east)\n"),
        "{status}"
    );
    // west's own link (inbound from east) with its live status, east's two, north's one.
    let west_link = line_of(&status, "link to east");
    assert!(
        west_link.contains("up, cost 1, ") && west_link.contains("inbound"),
        "{status}"
    );
    assert_eq!(
        status
            .lines()
            .filter(|l| l.contains("link to west"))
            .count(),
        1,
        "{status}"
    );
    assert!(
        line_of(&status, "link to north").contains("up, cost 1"),
        "{status}"
    );
    assert!(
        line_of(&status, "redis").contains("east (port")
            && line_of(&status, "redis").contains("1 connector)")
            && line_of(&status, "redis").contains("listener cache here"),
        "{status}"
    );
    assert!(
        line_of(&status, "web").contains("north (port") && line_of(&status, "web").contains("http"),
        "{status}"
    );
    assert!(
        line_of(&status, "ghost")
            .contains("UNREACHABLE: no site in the network has a connector for it"),
        "{status}"
    );
    let net = network_json(&west);
    assert_eq!(
        header_counts(&status),
        json_counts(&net),
        "text and JSON disagree"
    );
    assert_eq!(net["unservedKeys"][0]["routingKey"], "ghost", "{net:#}");
    assert_eq!(net["unservedKeys"][0]["listeners"][0], "nothing", "{net:#}");

    // listener list: the concrete reason for the key nobody serves, the sites for the others.
    let (list, items) = listener_list(&west);
    eprintln!("listener list at west:\n{list}");
    let nothing = detail_of(&items, "nothing");
    assert!(
        nothing.contains(r#"no site in the network has a connector for key "ghost""#),
        "{nothing}"
    );
    assert!(
        detail_of(&items, "cache").contains("reachable: east (cost 1)"),
        "{items:#?}"
    );
    assert!(
        detail_of(&items, "web").contains("reachable: north (cost 2)"),
        "{items:#?}"
    );
    let row = list.lines().find(|l| l.starts_with("nothing ")).unwrap();
    assert!(row.ends_with(&nothing), "the DETAIL column is cut: {row:?}");

    // A client of cache reaches east, whose backend refuses: east's connector list says so.
    let cache = items.iter().find(|i| i["name"] == "cache").unwrap()["address"]
        .as_str()
        .unwrap()
        .to_string();
    let mut client = TcpStream::connect(&cache).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = std::io::Write::write_all(&mut client, b"PING\r\n");
    let mut sink = Vec::new();
    let _ = client.read_to_end(&mut sink);
    assert!(sink.is_empty(), "a dead backend answered: {sink:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let (connectors, detail) = loop {
        let t = ok(&["connector", "list", "--dir", east.d()]);
        let j = ok(&["connector", "list", "--output", "json", "--dir", east.d()]);
        let items: Vec<Value> = serde_json::from_slice(&j.stdout).unwrap();
        let detail = items
            .iter()
            .find(|i| i["name"] == "redis")
            .and_then(|i| i["detail"].as_str())
            .unwrap_or_default()
            .to_string();
        if detail.contains("refused") {
            break (String::from_utf8_lossy(&t.stdout).into_owned(), detail);
        }
        assert!(
            Instant::now() < deadline,
            "east's connector does not say its backend refused: {items:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("connector list at east:\n{connectors}");
    assert!(
        detail.contains(&format!("127.0.0.1:{dead_port}")),
        "{detail}"
    );
    let row = connectors
        .lines()
        .find(|l| l.starts_with("redis "))
        .unwrap();
    assert!(row.ends_with(&detail), "the DETAIL column is cut: {row:?}");
    assert!(
        row.contains(" 1 failed "),
        "the failed attempt is not counted: {row:?}"
    );

    // north dies (SIGKILL: no goodbye): west names it unreachable, and the key only it served.
    north.kill();
    let detected = wait_network(&west, Duration::from_secs(20), "north unreachable", |n| {
        router(n, "north")["reachable"] == false
    });
    eprintln!("west saw north unreachable {detected:?} after SIGKILL");
    let o = west.run(&["network", "status"]);
    assert!(o.status.success(), "{}", text(&o));
    let status = String::from_utf8_lossy(&o.stdout).into_owned();
    eprintln!("network status at west with north dead:\n{status}");
    assert!(
        status.lines().next().unwrap().contains("1 UNREACHABLE"),
        "{status}"
    );
    assert!(
        status.contains("\nnorth (interior, UNREACHABLE: no link path from west)\n"),
        "{status}"
    );
    let web = line_of(&status, "web");
    assert!(
        web.contains("UNREACHABLE"),
        "the key only north served is not flagged: {status}"
    );
    assert!(
        !line_of(&status, "redis").contains("UNREACHABLE"),
        "{status}"
    );
    let net = network_json(&west);
    assert_eq!(
        header_counts(&status),
        json_counts(&net),
        "text and JSON disagree"
    );
    assert_eq!(json_counts(&net).1, 2, "{net:#}");
    let (list, items) = listener_list(&west);
    eprintln!("listener list at west with north dead:\n{list}");
    let web = detail_of(&items, "web");
    assert!(
        web.contains("north") && web.contains("unreachable"),
        "{web}"
    );
    assert!(
        detail_of(&items, "cache").contains("reachable: east (cost 1)"),
        "{items:#?}"
    );

    // A site that is not running says so and how to start it.
    west.stop();
    let err = common::fails(&["network", "status", "--dir", west.d()]);
    eprintln!("network status of a stopped site: {err}");
    assert!(
        err.contains("not running") && err.contains("skiff site run"),
        "{err}"
    );
}

/// A tinyproxy with Basic authentication on a loopback port, killed (by its PID, our child)
/// on drop.
struct Tinyproxy {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Tinyproxy {
    /// `None`: tinyproxy is not installed (the test skips).
    fn start(user: &str, password: &str) -> Option<Tinyproxy> {
        let installed = Command::new("tinyproxy")
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !installed {
            let why = "tinyproxy is not installed (apt-get install tinyproxy)";
            assert!(
                std::env::var("SKIFF_REQUIRE_PROXY").as_deref() != Ok("1"),
                "SKIFF_REQUIRE_PROXY=1 but {why}"
            );
            eprintln!("SKIPPED: {why}");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = common::free_port();
        let conf = format!(
            "Port {port}\nListen 127.0.0.1\nAllow 127.0.0.1\nTimeout 600\nMaxClients 100\n\
             LogLevel Connect\nLogFile \"{}\"\nBasicAuth {user} {password}\n",
            dir.path().join("tinyproxy.log").display()
        );
        std::fs::write(dir.path().join("tinyproxy.conf"), conf).unwrap();
        let child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(dir.path().join("tinyproxy.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tinyproxy");
        let proxy = Tinyproxy {
            port,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tinyproxy did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(proxy)
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The entries of a `.tar.gz`, read back with the tar and flate2 crates.
fn entries(archive: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    for e in tar.entries().expect("a tar archive") {
        let mut e = e.expect("a tar entry");
        let name = e.path().unwrap().display().to_string();
        let mut bytes = Vec::new();
        e.read_to_end(&mut bytes).unwrap();
        out.insert(name, bytes);
    }
    out
}

/// Every secret of a site folder an archive must not hold: the body lines of its private
/// key files (CA key, link key, router key, offline link keys).
fn key_lines(site: &Site) -> Vec<String> {
    let mut files = vec![
        site.dir.join("ca.key"),
        site.dir.join("link.key"),
        site.dir.join("router.pem"),
    ];
    for e in std::fs::read_dir(site.dir.join("links")).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "key") {
            files.push(e.path());
        }
    }
    let mut lines = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let mut in_key = false;
        for l in text.lines() {
            if l.starts_with("-----BEGIN") {
                in_key = l.contains("PRIVATE KEY");
            } else if l.starts_with("-----END") {
                in_key = false;
            } else if in_key && l.len() >= 16 {
                lines.push(l.to_string());
            }
        }
    }
    assert!(
        !lines.is_empty(),
        "no key lines found in {}",
        site.dir.display()
    );
    lines
}

/// Asserts no entry holds a private key, a secret string or a key file's line.
fn assert_no_secret(archive: &BTreeMap<String, Vec<u8>>, secrets: &[&str], key_lines: &[String]) {
    for (name, bytes) in archive {
        let t = String::from_utf8_lossy(bytes);
        assert!(
            !t.contains("PRIVATE KEY"),
            "{name} holds a private key:\n{t}"
        );
        for s in secrets {
            assert!(!t.contains(s), "{name} holds the secret {s:?}:\n{t}");
        }
        for l in key_lines {
            assert!(
                !t.contains(l.as_str()),
                "{name} holds a line of a key file: {l}"
            );
        }
    }
}

const STATUS_ENTRIES: [&str; 8] = [
    "status/site.json",
    "status/links.json",
    "status/listeners.json",
    "status/connectors.json",
    "status/network.json",
    "status/flows.json",
    "status/metrics.txt",
    "status/readyz.txt",
];

const CONFIG_ENTRIES: [&str; 7] = [
    "config/site.yaml",
    "config/listeners.yaml",
    "config/connectors.yaml",
    "config/links.yaml",
    "config/grants.yaml",
    "config/linked-sites.yaml",
    "config/files.txt",
];

#[test]
fn debug_dump_holds_status_logs_and_config_but_no_key_code_or_proxy_password() {
    const USER: &str = "dumper";
    const PASSWORD: &str = "Pr0xy-Secret-4217";
    let Some(proxy) = Tinyproxy::start(USER, PASSWORD) else {
        return;
    };
    let echo = Echo::start();
    let mut west = Site::create("west", true);
    let mut east = Site::create("east", true);
    let south = Site::create_on_fixed_port("south");
    west.start();
    east.start();
    // east links to west through the proxy, with its password.
    let token = west.dir.with_file_name("west.token");
    west.issue(&token, &[]);
    let url = format!("http://{USER}:{PASSWORD}@127.0.0.1:{}", proxy.port);
    ok(&[
        "token",
        "redeem",
        token.to_str().unwrap(),
        "--proxy",
        &url,
        "--dir",
        east.d(),
    ]);
    // An offline link (its own key in links/south.key) to a site that is not running.
    let east_id = serde_json::from_slice::<Value>(
        &ok(&["site", "status", "--output", "json", "--dir", east.d()]).stdout,
    )
    .unwrap()["site"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let offline = south.dir.with_file_name("south.link");
    ok(&[
        "link",
        "generate",
        offline.to_str().unwrap(),
        "--site-id",
        &east_id,
        "--dir",
        south.d(),
    ]);
    ok(&[
        "token",
        "redeem",
        offline.to_str().unwrap(),
        "--dir",
        east.d(),
    ]);
    assert!(east.dir.join("links/south.key").is_file());
    // A grant not yet redeemed: its code is a secret too.
    let unredeemed = east.dir.with_file_name("east.token");
    east.issue(&unredeemed, &[]);
    let grant_code = std::fs::read_to_string(&unredeemed)
        .unwrap()
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("code:")
                .map(|c| c.trim().trim_matches('"').to_string())
        })
        .expect("a code in the token");
    ok(&[
        "connector",
        "create",
        "echo",
        &echo.port.to_string(),
        "--dir",
        west.d(),
    ]);
    ok(&[
        "listener",
        "create",
        "echo",
        "0",
        "--host",
        "127.0.0.1",
        "--dir",
        east.d(),
    ]);
    east.wait_link(
        Duration::from_secs(20),
        "up to west through the proxy",
        is_link("up", "west"),
    );
    east.wait_listener_active("echo", Duration::from_secs(20));
    let keys = key_lines(&east);
    let secrets = [PASSWORD, grant_code.as_str()];

    // A running site, to a file.
    let out = east.dir.with_file_name("dump.tar.gz");
    let started = Instant::now();
    let o = east.run(&["debug", "dump", out.to_str().unwrap()]);
    let took = started.elapsed();
    assert!(o.status.success(), "{}", text(&o));
    let said = String::from_utf8_lossy(&o.stdout).into_owned();
    eprintln!("debug dump of running east ({took:?}): {said}");
    assert!(
        said.contains(out.to_str().unwrap()) && said.contains("KiB"),
        "{said}"
    );
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the dump is {mode:o}");
    let bytes = std::fs::read(&out).unwrap();
    eprintln!("archive: {} bytes", bytes.len());
    let archive = entries(&bytes);
    eprintln!("entries: {:?}", archive.keys().collect::<Vec<_>>());
    for want in ["README.txt"]
        .iter()
        .chain(&STATUS_ENTRIES)
        .chain(&CONFIG_ENTRIES)
    {
        assert!(
            archive.contains_key(*want),
            "no {want} in {:?}",
            archive.keys()
        );
    }
    let readme = String::from_utf8_lossy(&archive["README.txt"]).into_owned();
    eprintln!("README.txt:\n{readme}");
    assert!(readme.contains("Running: yes"), "{readme}");
    assert!(
        readme.contains(&format!("skiff version: {}", env!("CARGO_PKG_VERSION"))),
        "{readme}"
    );
    // logs.txt from GET /v1/logs, or README says why it is not there.
    assert!(
        archive.contains_key("logs.txt") || readme.contains("logs.txt: "),
        "neither logs.txt nor a word on it: {readme}"
    );
    assert_no_secret(&archive, &secrets, &keys);
    let links_yaml = String::from_utf8_lossy(&archive["config/links.yaml"]).into_owned();
    assert!(
        links_yaml.contains(&format!(
            "http://{USER}:<redacted>@127.0.0.1:{}",
            proxy.port
        )),
        "{links_yaml}"
    );
    assert!(
        links_yaml.contains("BEGIN CERTIFICATE"),
        "link certificates are public: {links_yaml}"
    );
    let links: Value = serde_json::from_slice(&archive["status/links.json"]).unwrap();
    assert!(
        links.as_array().unwrap().iter().any(is_link("up", "west")),
        "{links:#}"
    );
    let grants = String::from_utf8_lossy(&archive["config/grants.yaml"]).into_owned();
    assert!(grants.contains("code: <redacted>"), "{grants}");
    assert!(
        String::from_utf8_lossy(&archive["status/metrics.txt"]).contains("# TYPE"),
        "metrics are Prometheus text"
    );

    // To standard output.
    let o = east.run(&["debug", "dump", "-"]);
    assert!(o.status.success(), "{}", text(&o));
    let archive = entries(&o.stdout);
    assert!(
        archive.contains_key("status/network.json"),
        "{:?}",
        archive.keys()
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("written to standard output"),
        "{}",
        text(&o)
    );
    assert_no_secret(&archive, &secrets, &keys);

    // Running, but its socket does not answer (moved away here; in life: another user, a
    // wedged site): README says so instead of calling the site stopped.
    let sock = east.dir.join("admin.sock");
    let aside = east.dir.with_file_name("admin.sock.aside");
    std::fs::rename(&sock, &aside).unwrap();
    let out = east.dir.with_file_name("unanswered.tar.gz");
    let o = east.run(&["debug", "dump", out.to_str().unwrap()]);
    std::fs::rename(&aside, &sock).unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("admin socket did not answer"),
        "{}",
        text(&o)
    );
    let archive = entries(&std::fs::read(&out).unwrap());
    let readme = String::from_utf8_lossy(&archive["README.txt"]).into_owned();
    eprintln!("README.txt of a site whose socket did not answer:\n{readme}");
    assert!(readme.contains("Running: seemingly"), "{readme}");
    assert!(
        readme.contains("a `skiff site run` holds this folder's lock, but its admin socket"),
        "{readme}"
    );
    assert_no_secret(&archive, &secrets, &keys);

    // A stopped site: configuration only, and README says why.
    east.stop();
    let out = east.dir.with_file_name("stopped.tar.gz");
    let o = east.run(&["debug", "dump", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    eprintln!(
        "debug dump of stopped east: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the dump is {mode:o}");
    let archive = entries(&std::fs::read(&out).unwrap());
    for want in ["README.txt"].iter().chain(&CONFIG_ENTRIES) {
        assert!(
            archive.contains_key(*want),
            "no {want} in {:?}",
            archive.keys()
        );
    }
    assert!(
        !archive.contains_key("status/site.json"),
        "{:?}",
        archive.keys()
    );
    let readme = String::from_utf8_lossy(&archive["README.txt"]).into_owned();
    eprintln!("README.txt of the stopped site:\n{readme}");
    assert!(readme.contains("Running: no"), "{readme}");
    assert!(
        readme.contains("status/ and logs.txt: not gathered: site in")
            && readme.contains("is not running"),
        "{readme}"
    );
    assert_no_secret(&archive, &secrets, &keys);
    west.stop();

    // A folder without a site: an error naming it, no archive of nothing.
    let nowhere = east.dir.with_file_name("no-site-here");
    let out = east.dir.with_file_name("nothing.tar.gz");
    let err = common::fails(&[
        "debug",
        "dump",
        out.to_str().unwrap(),
        "--dir",
        nowhere.to_str().unwrap(),
    ]);
    assert!(err.contains("no site in"), "{err}");
    assert!(
        !out.exists(),
        "an archive was written for a folder without a site"
    );
}

#[test]
fn debug_dump_hides_proxy_passwords_with_slashes_and_quotes_no_file_text_nor_follows_links() {
    let west = Site::create_on_fixed_port("west");
    let east = Site::create("east", false);
    // An offline link from west installed at east: a real Link resource to put a proxy in.
    let file = west.dir.with_file_name("for-east.link.yaml");
    ok(&[
        "link",
        "generate",
        file.to_str().unwrap(),
        "--site-id",
        &site_id(&east),
        "--dir",
        west.d(),
    ]);
    ok(&["token", "redeem", file.to_str().unwrap(), "--dir", east.d()]);
    let link_file = std::fs::read_dir(east.dir.join("links"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "yaml"))
        .expect("east has a link file");
    let link_yaml = std::fs::read_to_string(&link_file).unwrap();

    // 1. Proxy passwords with an unescaped '/', '?' or '#' (URLs the link itself refuses).
    for pw in ["Sup3r/Secret9", "Sup3r?Secret9", "Sup3r#Secret9"] {
        let url = format!("http://bob:{pw}@proxy.example:3128");
        let with_proxy = link_yaml.replacen("spec:\n", &format!("spec:\n  proxy: '{url}'\n"), 1);
        assert_ne!(with_proxy, link_yaml, "no spec: in {link_yaml}");
        std::fs::write(&link_file, &with_proxy).unwrap();
        let out = east.dir.with_file_name("pw.tar.gz");
        let o = east.run(&["debug", "dump", out.to_str().unwrap()]);
        assert!(o.status.success(), "{}", text(&o));
        let archive = entries(&std::fs::read(&out).unwrap());
        let links = String::from_utf8_lossy(&archive["config/links.yaml"]).into_owned();
        assert!(
            links.contains("http://bob:<redacted>@proxy.example:3128"),
            "{pw}: {links}"
        );
        for (name, bytes) in &archive {
            let t = String::from_utf8_lossy(bytes);
            assert!(!t.contains("Secret9"), "{pw} is in {name}:\n{t}");
        }
    }
    std::fs::write(&link_file, &link_yaml).unwrap();

    // 2a. A broken resource line holding a password: README names the file and line only.
    let broken = east.dir.join("listeners").join("broken.yaml");
    std::fs::create_dir_all(broken.parent().unwrap()).unwrap();
    std::fs::write(
        &broken,
        "apiVersion: skiff.io/v1alpha1\nkind: Listener\nmetadata: {name: broken}\nspec:\n  port: hunter2-Pa55word-in-a-port\n",
    )
    .unwrap();
    // 2b. A symbolic link to a file outside the folder, and one to an endless device.
    let outside = east.dir.with_file_name("outside-secret.txt");
    std::fs::write(&outside, "OUTSIDE-SECRET-LINE: do not ship\n").unwrap();
    std::fs::create_dir_all(east.dir.join("connectors")).unwrap();
    std::os::unix::fs::symlink(&outside, east.dir.join("connectors").join("evil.yaml")).unwrap();
    std::fs::create_dir_all(east.dir.join("grants")).unwrap();
    // (Not a link to /dev/zero: should the check ever be bypassed, the test would eat the
    // machine's memory; an oversized regular file tests the cap.)
    std::fs::write(
        east.dir.join("grants").join("huge.yaml"),
        "# padding\n".repeat(300 * 1024),
    )
    .unwrap();

    let out = east.dir.with_file_name("evil.tar.gz");
    let started = Instant::now();
    let o = east.run(&["debug", "dump", out.to_str().unwrap()]);
    let took = started.elapsed();
    assert!(o.status.success(), "{}", text(&o));
    eprintln!("dump with a broken file, a symlink and a 3 MB file took {took:?}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    let archive = entries(&std::fs::read(&out).unwrap());
    for (name, bytes) in &archive {
        let t = String::from_utf8_lossy(bytes);
        assert!(
            !t.contains("hunter2") && !t.contains("OUTSIDE-SECRET"),
            "file text quoted in {name}:\n{t}"
        );
    }
    let readme = String::from_utf8_lossy(&archive["README.txt"]).into_owned();
    eprintln!("README.txt with refused files:\n{readme}");
    assert!(
        readme.contains("broken.yaml is not a valid resource (line 5"),
        "{readme}"
    );
    assert!(
        readme.contains("evil.yaml is a symbolic link, which a dump does not follow"),
        "{readme}"
    );
    assert!(
        readme.contains("huge.yaml holds 3072000 bytes, more than the 1048576 a dump reads"),
        "{readme}"
    );
    // What could be read is still there.
    let links = String::from_utf8_lossy(&archive["config/links.yaml"]).into_owned();
    assert!(links.contains("kind: Link"), "{links}");

    // site.yaml itself behind a link: no dump at all, in words.
    let site_yaml = east.dir.join("site.yaml");
    let real = east.dir.with_file_name("site.yaml.real");
    std::fs::rename(&site_yaml, &real).unwrap();
    std::os::unix::fs::symlink(&real, &site_yaml).unwrap();
    let out = east.dir.with_file_name("nolink.tar.gz");
    let err = common::fails(&["debug", "dump", out.to_str().unwrap(), "--dir", east.d()]);
    assert!(
        err.contains("site.yaml is a symbolic link, which a dump does not follow"),
        "{err}"
    );
    assert!(!out.exists());
}
