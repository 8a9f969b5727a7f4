//! Black-box tests of the verbs for UDP services and session affinity through the real
//! binary: `listener create --type udp --affinity client-ip` and `connector create --type udp`
//! are saved, listed (table and JSON, stopped and running) and deleted; an affinity the
//! listener's type cannot take, an unknown one, an affinity on a connector and an unknown
//! type are refused with the reason and write nothing; `skiff apply -f` points at the bad
//! `affinity` as FILE:LINE:COL; `skiff get` gives back what `apply -f` takes; and a running
//! site's `/metrics` counts the datagrams a UDP listener passed to a real UDP echo server and
//! back, and the ones it dropped for a key nobody serves.

mod common;

use std::time::{Duration, Instant};

use common::{Site, fails, ok, text};
use serde_json::Value;

/// `listener list` or `connector list` at `site`: (table, JSON items).
fn list(site: &Site, kind: &str) -> (String, Vec<Value>) {
    let table = ok(&[kind, "list", "--dir", site.d()]);
    let json = ok(&[kind, "list", "--output", "json", "--dir", site.d()]);
    let items: Value = serde_json::from_slice(&json.stdout)
        .unwrap_or_else(|e| panic!("{kind} list --output json: {e}: {}", text(&json)));
    (
        String::from_utf8_lossy(&table.stdout).into_owned(),
        items.as_array().cloned().unwrap_or_default(),
    )
}

/// The item called `name`.
fn item<'a>(items: &'a [Value], name: &str) -> &'a Value {
    items
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("{name} not listed: {items:?}"))
}

/// The table row of `name`.
fn row<'a>(table: &'a str, name: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row {name} in:\n{table}"))
}

#[test]
fn udp_listeners_and_connectors_with_affinity_are_created_listed_and_deleted() {
    let mut west = Site::create("west", false);
    let d = west.d().to_string();

    // Create: the confirmation says the type and the affinity.
    let o = ok(&[
        "listener",
        "create",
        "dns",
        "0",
        "--host",
        "127.0.0.1",
        "--type",
        "udp",
        "--affinity",
        "client-ip",
        "--dir",
        &d,
    ]);
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        said.contains("listener \"dns\" created: 127.0.0.1:0 (udp) with affinity client-ip"),
        "{said}"
    );
    ok(&[
        "listener",
        "create",
        "web",
        "0",
        "--host",
        "127.0.0.1",
        "--type",
        "http",
        "--affinity",
        "header:X-User",
        "--dir",
        &d,
    ]);
    ok(&[
        "listener",
        "create",
        "db",
        "0",
        "--host",
        "127.0.0.1",
        "--dir",
        &d,
    ]);
    let o = ok(&[
        "connector",
        "create",
        "dns",
        "53",
        "--host",
        "127.0.0.1",
        "--type",
        "udp",
        "--dir",
        &d,
    ]);
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        said.contains("connector \"dns\" created: 127.0.0.1:53 (udp)"),
        "{said}"
    );

    // The files: type and canonical affinity; none is not written.
    let file = std::fs::read_to_string(west.dir.join("listeners/dns.yaml")).unwrap();
    assert!(
        file.contains("type: udp") && file.contains("affinity: client-ip"),
        "{file}"
    );
    let file = std::fs::read_to_string(west.dir.join("listeners/web.yaml")).unwrap();
    assert!(file.contains("affinity: header:x-user"), "{file}");
    let file = std::fs::read_to_string(west.dir.join("listeners/db.yaml")).unwrap();
    assert!(!file.contains("affinity"), "{file}");

    // Refusals: the reason, what to do, and nothing written.
    let err = fails(&[
        "listener",
        "create",
        "syslog",
        "514",
        "--type",
        "udp",
        "--affinity",
        "header:x",
        "--dir",
        &d,
    ]);
    assert!(
        err.contains("affinity header:x needs an HTTP listener (--type http or http2)")
            && err.contains("a udp listener takes none or client-ip"),
        "{err}"
    );
    let err = fails(&[
        "listener",
        "create",
        "syslog",
        "514",
        "--affinity",
        "cookie:sid",
        "--dir",
        &d,
    ]);
    assert!(
        err.contains("a tcp listener takes none or client-ip"),
        "{err}"
    );
    let err = fails(&[
        "listener",
        "create",
        "syslog",
        "514",
        "--type",
        "udp",
        "--affinity",
        "bogus",
        "--dir",
        &d,
    ]);
    assert!(
        err.contains("affinity \"bogus\": expected none, client-ip, header:NAME or cookie:NAME"),
        "{err}"
    );
    let err = fails(&[
        "listener", "create", "syslog", "514", "--type", "quic", "--dir", &d,
    ]);
    assert!(
        err.contains("type \"quic\" is not one of tcp, http, http2, udp"),
        "{err}"
    );
    let err = fails(&[
        "connector",
        "create",
        "syslog",
        "514",
        "--type",
        "udp",
        "--affinity",
        "client-ip",
        "--dir",
        &d,
    ]);
    assert!(
        err.contains("--affinity client-ip is a listener's setting"),
        "{err}"
    );
    assert!(
        !west.dir.join("listeners/syslog.yaml").exists()
            && !west.dir.join("connectors/syslog.yaml").exists(),
        "a refused create wrote a file"
    );

    // Stopped: the configured resources.
    let (table, items) = list(&west, "listener");
    assert_eq!(items.len(), 3, "{items:?}");
    let dns = item(&items, "dns");
    assert_eq!(
        (
            &dns["protocol"],
            &dns["affinity"],
            &dns["status"],
            &dns["port"]
        ),
        (
            &Value::from("udp"),
            &Value::from("client-ip"),
            &Value::from("stopped"),
            &Value::from(0)
        ),
        "{dns}"
    );
    assert_eq!(item(&items, "web")["affinity"], "header:x-user");
    assert!(
        item(&items, "db").get("affinity").is_none(),
        "no affinity field without one: {items:?}"
    );
    assert!(
        row(&table, "dns").contains("udp (affinity client-ip)"),
        "{table}"
    );
    assert!(
        row(&table, "web").contains("http (affinity header:x-user)"),
        "{table}"
    );
    assert!(!row(&table, "db").contains("affinity"), "{table}");
    let (table, items) = list(&west, "connector");
    let c = item(&items, "dns");
    assert_eq!(c["protocol"], "udp", "{c}");
    assert!(c.get("affinity").is_none(), "{c}");
    assert!(row(&table, "dns").contains("udp"), "{table}");

    // `get` prints what apply -f takes.
    let got = ok(&["get", "listeners", "dns", "--dir", &d]);
    let got = String::from_utf8_lossy(&got.stdout).into_owned();
    assert!(
        got.contains("type: udp") && got.contains("affinity: client-ip"),
        "{got}"
    );

    // Running: the router's status, with the affinity from the files.
    west.start();
    let deadline = Instant::now() + Duration::from_secs(10);
    let dns = loop {
        let (_, items) = list(&west, "listener");
        let dns = item(&items, "dns").clone();
        if dns["status"] != "stopped" || Instant::now() > deadline {
            break dns;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (table, _) = list(&west, "listener");
    eprintln!("listener list at west, running:\n{table}\n{dns:#}");
    assert_ne!(dns["status"], "stopped", "{dns}");
    assert_eq!(
        (&dns["protocol"], &dns["affinity"]),
        (&Value::from("udp"), &Value::from("client-ip")),
        "{dns}"
    );
    // Updated while running: --affinity none removes it.
    let o = ok(&[
        "listener",
        "create",
        "dns",
        "0",
        "--host",
        "127.0.0.1",
        "--type",
        "udp",
        "--affinity",
        "none",
        "--dir",
        &d,
    ]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("listener \"dns\" updated"),
        "{}",
        text(&o)
    );
    let (table, items) = list(&west, "listener");
    assert!(item(&items, "dns").get("affinity").is_none(), "{items:?}");
    assert!(!row(&table, "dns").contains("affinity"), "{table}");

    // Delete.
    ok(&["listener", "delete", "dns", "--dir", &d]);
    ok(&["connector", "delete", "dns", "--dir", &d]);
    let (_, items) = list(&west, "listener");
    assert!(items.iter().all(|i| i["name"] != "dns"), "{items:?}");
    let (_, items) = list(&west, "connector");
    assert!(items.is_empty(), "{items:?}");
    west.stop();
}

#[test]
fn apply_points_at_a_bad_affinity() {
    let west = Site::create("west", false);
    let files = tempfile::tempdir().unwrap();
    let good = "apiVersion: skiff.io/v1alpha1
kind: Listener
metadata:
  name: dns
spec:
  routingKey: dns
  port: 5353
  type: udp
  affinity: client-ip
";
    let path = |name: &str, body: &str| {
        let p = files.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.to_str().unwrap().to_string()
    };

    let header = path("header.yaml", &good.replace("client-ip", "header:x-user"));
    let err = fails(&["apply", "-f", &header, "--dir", west.d()]);
    assert!(
        err.contains(&format!(
            "{header}:9:13: spec.affinity: affinity header:x-user needs an HTTP listener"
        )),
        "{err}"
    );
    assert!(err.contains("nothing was applied"), "{err}");

    let bogus = path("bogus.yaml", &good.replace("client-ip", "sticky"));
    let err = fails(&["apply", "-f", &bogus, "--dir", west.d()]);
    assert!(
        err.contains(&format!(
            "{bogus}:9:13: spec.affinity: affinity \"sticky\": expected none, client-ip, header:NAME or cookie:NAME"
        )),
        "{err}"
    );
    assert!(
        !west.dir.join("listeners/dns.yaml").exists(),
        "a refused apply wrote the listener"
    );

    // The good one applies, and a udp connector with it.
    let ok_file = path(
        "good.yaml",
        &format!(
            "{good}---\napiVersion: skiff.io/v1alpha1\nkind: Connector\nmetadata:\n  name: dns\nspec:\n  routingKey: dns\n  host: 127.0.0.1\n  port: 53\n  type: udp\n"
        ),
    );
    ok(&["apply", "-f", &ok_file, "--dir", west.d()]);
    let (_, items) = list(&west, "listener");
    let dns = item(&items, "dns");
    assert_eq!(
        (&dns["protocol"], &dns["affinity"]),
        (&Value::from("udp"), &Value::from("client-ip")),
        "{dns}"
    );
    let (_, items) = list(&west, "connector");
    assert_eq!(item(&items, "dns")["protocol"], "udp");
}

/// A UDP echo server on loopback, stopped and joined on drop.
struct UdpEcho {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UdpEcho {
    fn start() -> UdpEcho {
        use std::sync::atomic::Ordering;
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let port = socket.local_addr().unwrap().port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            // Bounded: stops when told, or after two minutes whatever happens.
            let deadline = Instant::now() + Duration::from_secs(120);
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(&buf[..n], from);
                }
            }
        });
        UdpEcho {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The value of the sample `line` (name and labels) in `/metrics` of `site`, if present.
fn sample(site: &Site, line: &str) -> Option<u64> {
    common::admin_text(site, "/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
}

/// Waits up to 5 s for `line` to read `want` in `/metrics`.
fn wait_sample(site: &Site, line: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = sample(site, line);
        if got == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{line} is {got:?}, not {want}:\n{}",
            common::admin_text(site, "/metrics")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn udp_metrics_count_what_a_running_site_passed_and_dropped() {
    let echo = UdpEcho::start();
    let mut west = Site::create("west", false);
    let d = west.d().to_string();
    let port = echo.port.to_string();
    ok(&[
        "connector",
        "create",
        "echo",
        &port,
        "--host",
        "127.0.0.1",
        "--type",
        "udp",
        "--dir",
        &d,
    ]);
    for name in ["echo", "ghost"] {
        ok(&[
            "listener",
            "create",
            name,
            "0",
            "--host",
            "127.0.0.1",
            "--type",
            "udp",
            "--dir",
            &d,
        ]);
    }
    west.start();
    let echo_addr = west.wait_listener_active("echo", Duration::from_secs(10));
    let ghost_addr = {
        let (_, items) = list(&west, "listener");
        item(&items, "ghost")["address"]
            .as_str()
            .unwrap_or_else(|| panic!("ghost not bound: {items:?}"))
            .to_string()
    };

    // 20 datagrams, one at a time: each reply is the datagram sent.
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 2048];
    for i in 0..20 {
        let msg = format!("datagram {i} through skiff");
        client.send_to(msg.as_bytes(), &echo_addr).unwrap();
        let (n, from) = client
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("no reply to datagram {i}: {e}"));
        assert_eq!(&buf[..n], msg.as_bytes(), "reply {i}");
        assert_eq!(
            from.to_string(),
            echo_addr,
            "the reply comes from the listener"
        );
    }
    // 5 datagrams to a key nobody serves: each one dropped as no-route.
    for i in 0..5 {
        client
            .send_to(format!("lost {i}").as_bytes(), &ghost_addr)
            .unwrap();
    }

    let fwd = r#"skiff_udp_datagrams_total{key="echo",role="ingress",direction="forward"}"#;
    let back = r#"skiff_udp_datagrams_total{key="echo",role="ingress",direction="back"}"#;
    wait_sample(&west, fwd, 20);
    wait_sample(&west, back, 20);
    wait_sample(
        &west,
        r#"skiff_udp_dropped_total{key="ghost",reason="no-route"}"#,
        5,
    );
    // One client address: one flow, still running (well within the idle timeout).
    let (table, items) = list(&west, "listener");
    let l = item(&items, "echo");
    assert_eq!(
        (&l["flowsActive"], &l["flowsTotal"]),
        (&Value::from(1), &Value::from(1)),
        "{table}"
    );
    // The 5 datagrams to ghost, sent within a millisecond: one refused flow, not five.
    assert_eq!(item(&items, "ghost")["flowsRefused"], 1, "{table}");
    let metrics = common::admin_text(&west, "/metrics");
    for line in [
        r#"skiff_udp_oversize_total{key="echo"} 0"#,
        r#"skiff_udp_dropped_total{key="echo",reason="congested"} 0"#,
        r#"skiff_udp_dropped_total{key="echo",reason="no-route"} 0"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}:\n{metrics}");
    }
    eprintln!(
        "/metrics udp lines:\n{}",
        metrics
            .lines()
            .filter(|l| l.starts_with("skiff_udp") && !l.ends_with(" 0"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    west.stop();
}
