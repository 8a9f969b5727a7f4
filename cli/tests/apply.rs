//! Black-box tests of `skiff apply -f`, `skiff delete -f` and `skiff get` through the real
//! binary: what `get` prints applies back byte for byte (and the link comes up again), bad
//! files are refused with FILE:LINE and the field and change nothing, resources applied to a
//! running two-site network carry a real client's bytes, and `-f -` reads standard input.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Echo, Site, fails, is_link, ok, text};

/// Every file under `dir` (sockets and the run lock aside) with its bytes, sorted.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                todo.push(p.clone());
                out.push((p, Vec::new()));
            } else if t.is_file() && !p.ends_with("site.lock") {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// The paths that differ between two snapshots (added, removed or changed).
fn changed(a: &[(PathBuf, Vec<u8>)], b: &[(PathBuf, Vec<u8>)]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = a
        .iter()
        .filter(|x| !b.contains(x))
        .chain(b.iter().filter(|x| !a.contains(x)))
        .map(|(p, _)| p.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// `skiff get WHAT -o yaml` at `site`: its stdout.
fn get(site: &Site, what: &str) -> String {
    let o = site.run(&["get", what, "-o", "yaml"]);
    assert!(o.status.success(), "get {what}: {}", text(&o));
    String::from_utf8(o.stdout).unwrap()
}

/// Writes `body` to `dir/name` and returns the path as a string.
fn write(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.to_str().unwrap().to_string()
}

/// Stdout of a successful `skiff ARGS --dir D` at `site`, as lines.
fn lines(site: &Site, args: &[&str]) -> Vec<String> {
    let o = site.run(args);
    assert!(o.status.success(), "skiff {args:?}: {}", text(&o));
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

const PRIORITY_LISTENER: &str = "apiVersion: skiff.io/v1alpha1
kind: Listener
metadata:
  name: failover
spec:
  priority: [db, db-standby]
  host: 127.0.0.1
  port: 0
";

#[test]
fn what_get_prints_applies_back_byte_for_byte_and_the_link_comes_up_again() {
    let mut west = Site::create("west", true);
    let mut east = Site::create("east", false);
    west.start();
    east.start();
    let files = tempfile::tempdir().unwrap();

    // Made with the verbs (a priority listener has no verb: it is applied).
    ok(&[
        "listener",
        "create",
        "db",
        "0",
        "--host",
        "127.0.0.1",
        "--dir",
        east.d(),
    ]);
    ok(&[
        "connector",
        "create",
        "api",
        "8080",
        "--type",
        "http",
        "--dir",
        east.d(),
    ]);
    ok(&[
        "connector",
        "create",
        "cache",
        "6379",
        "--host",
        "10.1.2.3",
        "--dir",
        east.d(),
    ]);
    let p = write(files.path(), "priority.yaml", PRIORITY_LISTENER);
    assert_eq!(
        lines(&east, &["apply", "-f", &p]),
        ["listener/failover created"]
    );
    common::link(&east, &west);
    east.wait_link(Duration::from_secs(10), "up to west", is_link("up", "west"));

    let before: Vec<String> = ["listeners", "connectors", "links"]
        .iter()
        .map(|w| get(&east, w))
        .collect();
    assert_eq!(
        before[0].matches("kind: Listener").count(),
        2,
        "{}",
        before[0]
    );
    assert!(before[0].contains("priority:"), "{}", before[0]);
    assert!(before[1].contains("type: http"), "{}", before[1]);
    let all = write(files.path(), "all.yaml", &before.join("---\n"));

    // Deleted with the file, then applied back.
    assert_eq!(
        lines(&east, &["delete", "-f", &all]),
        [
            "listener/db deleted",
            "listener/failover deleted",
            "connector/api deleted",
            "connector/cache deleted",
            "link/west deleted"
        ]
    );
    for w in ["listeners", "connectors", "links"] {
        assert_eq!(get(&east, w), "", "{w} left after delete -f");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !east.links().is_empty() {
        assert!(
            Instant::now() < deadline,
            "link still listed: {:?}",
            east.links()
        );
        std::thread::sleep(Duration::from_millis(25));
    }

    let started = Instant::now();
    assert_eq!(
        lines(&east, &["apply", "-f", &all]),
        [
            "listener/db created",
            "listener/failover created",
            "connector/api created",
            "connector/cache created",
            "link/west created"
        ]
    );
    let applied_in = started.elapsed();
    let after: Vec<String> = ["listeners", "connectors", "links"]
        .iter()
        .map(|w| get(&east, w))
        .collect();
    assert_eq!(after, before, "get after apply differs from get before");
    east.wait_link(Duration::from_secs(10), "up again", is_link("up", "west"));
    let up_in = started.elapsed();
    west.wait_link(
        Duration::from_secs(10),
        "inbound again",
        is_link("up", "east"),
    );
    eprintln!(
        "round trip: {} bytes of YAML; apply took {applied_in:?}; link up {up_in:?} after apply started",
        before.join("---\n").len()
    );

    // Applying it again changes nothing; the Site read back applies unchanged too.
    let site = write(files.path(), "site.yaml", &get(&east, "site"));
    let again = lines(&east, &["apply", "-f", &all, "-f", &site]);
    assert!(again.iter().all(|l| l.ends_with(" unchanged")), "{again:?}");
    assert_eq!(again.len(), 6, "{again:?}");

    // Site settings changed while the site runs: saved, and said to apply at the next start.
    let edge = write(
        files.path(),
        "edge.yaml",
        &get(&east, "site").replace("edge: false", "edge: true"),
    );
    let o = east.run(&["apply", "-f", &edge]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "site/east configured\n");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("at its next start"),
        "{}",
        text(&o)
    );
    assert!(get(&east, "site").contains("edge: true"));
}

#[test]
fn bad_files_are_refused_with_file_line_and_field_and_change_nothing() {
    let west = Site::create("west", true);
    ok(&["listener", "create", "web", "8080", "--dir", west.d()]);
    let files = tempfile::tempdir().unwrap();
    let before = snapshot(&west.dir);
    let good = "apiVersion: skiff.io/v1alpha1
kind: Connector
metadata:
  name: db
spec:
  routingKey: db
  port: 5432
";

    let unknown = write(
        files.path(),
        "unknown.yaml",
        &format!("{good}  colour: red\n"),
    );
    let err = fails(&["apply", "-f", &unknown, "--dir", west.d()]);
    assert!(
        err.contains(&format!(
            "{unknown}:8:3: spec.colour: unknown field `colour`"
        )),
        "{err}"
    );
    assert!(err.contains("nothing was applied"), "{err}");

    let bad_port = write(files.path(), "port.yaml", &good.replace("5432", "abc"));
    let err = fails(&["apply", "-f", &bad_port, "--dir", west.d()]);
    assert!(
        err.contains(&format!("{bad_port}:7:9: spec.port: \"abc\" is not a port")),
        "{err}"
    );

    // A folder: two good files, and a file whose second document is bad.
    let dir = files.path().join("svc");
    std::fs::create_dir(&dir).unwrap();
    write(&dir, "a.yaml", good);
    write(&dir, "b.yml", &good.replace("db", "cache"));
    let mixed = write(
        &dir,
        "c.yaml",
        &format!(
            "{}---\n{}",
            good.replace("db", "queue"),
            good.replace("name: db", "name: Not_A_Label")
        ),
    );
    write(&dir, "notes.txt", "not YAML: skipped");
    let err = fails(&["apply", "-f", dir.to_str().unwrap(), "--dir", west.d()]);
    assert!(
        err.contains(&format!(
            "{mixed}:12:9: metadata.name: invalid connector name \"Not_A_Label\""
        )),
        "{err}"
    );
    assert_eq!(err.matches("error: ").count(), 1, "{err}");

    // The same connector twice, and a listener with two strategies.
    let twice = write(files.path(), "twice.yaml", &format!("{good}---\n{good}"));
    let err = fails(&["apply", "-f", &twice, "--dir", west.d()]);
    assert!(
        err.contains(&format!(
            "{twice}:12:9: metadata.name: connector/db is also given at {twice}:4"
        )),
        "{err}"
    );
    let both = write(
        files.path(),
        "both.yaml",
        "apiVersion: skiff.io/v1alpha1\nkind: Listener\nmetadata: {name: x}\nspec: {routingKey: a, priority: [b], port: 1}\n",
    );
    let err = fails(&["apply", "-f", &both, "--dir", west.d()]);
    assert!(
        err.contains(&format!("{both}:4:7: spec: give exactly one of routingKey")),
        "{err}"
    );

    // A token is not a resource to apply; a Site of another name is not this site.
    let token = write(
        files.path(),
        "token.yaml",
        "apiVersion: skiff.io/v1alpha1\nkind: AccessToken\nmetadata: {name: t}\n",
    );
    let err = fails(&["apply", "-f", &token, "--dir", west.d()]);
    assert!(
        err.contains(&format!("{token}:2:7: kind: ")) && err.contains("skiff token redeem"),
        "{err}"
    );
    let other = write(
        files.path(),
        "east.yaml",
        &format!(
            "{good}---\napiVersion: skiff.io/v1alpha1\nkind: Site\nmetadata: {{name: east}}\nspec: {{linkAccess: true}}\n"
        ),
    );
    let err = fails(&["apply", "-f", &other, "--dir", west.d()]);
    assert!(
        err.contains(&format!("{other}:11:18: metadata.name: "))
            && err.contains("holds site \"west\""),
        "{err}"
    );

    assert_eq!(
        changed(&before, &snapshot(&west.dir)),
        Vec::<PathBuf>::new(),
        "a refused apply wrote these"
    );

    // No site in the folder: say how to make one.
    let empty = files.path().join("nosite");
    let missing = files.path().join("missing.yaml");
    let err = fails(&["apply", "-f", missing.to_str().unwrap(), "--dir", west.d()]);
    assert!(
        err.contains("could not read") && err.contains("missing.yaml"),
        "{err}"
    );
    let fine = write(files.path(), "fine.yaml", good);
    let err = fails(&["apply", "-f", &fine, "--dir", empty.to_str().unwrap()]);
    assert!(
        err.contains("no site in") && err.contains("skiff site create"),
        "{err}"
    );
    // A folder run by Kubernetes takes its resources from the API.
    std::fs::write(west.dir.join("kubernetes"), "west\n").unwrap();
    let err = fails(&["apply", "-f", &fine, "--dir", west.d()]);
    assert!(err.contains("run by Kubernetes"), "{err}");
}

/// Reads from `stream` until `want` bytes arrived (or EOF / 10 s).
fn read_n(stream: &mut TcpStream, want: usize) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::with_capacity(want);
    let mut buf = [0u8; 16 * 1024];
    while got.len() < want {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

#[test]
fn resources_applied_to_a_running_network_carry_a_client_and_delete_closes_the_port() {
    let mut a = Site::create("a", true);
    let mut b = Site::create("b", false);
    a.start();
    b.start();
    common::link(&b, &a);
    b.wait_link(Duration::from_secs(10), "up to a", is_link("up", "a"));
    let echo = Echo::start();
    let files = tempfile::tempdir().unwrap();

    let b_dir = files.path().join("b");
    std::fs::create_dir(&b_dir).unwrap();
    write(
        &b_dir,
        "echo.yaml",
        &format!(
            "apiVersion: skiff.io/v1alpha1\nkind: Connector\nmetadata: {{name: echo}}\nspec: {{routingKey: echo, host: 127.0.0.1, port: {}}}\n",
            echo.port
        ),
    );
    let a_dir = files.path().join("a");
    std::fs::create_dir(&a_dir).unwrap();
    write(
        &a_dir,
        "10-echo.yaml",
        "apiVersion: skiff.io/v1alpha1\nkind: Listener\nmetadata: {name: echo}\nspec: {routingKey: echo, host: 127.0.0.1, port: 0}\n",
    );
    write(
        &a_dir,
        "20-more.yml",
        "# a second listener, to the same key\napiVersion: skiff.io/v1alpha1\nkind: Listener\nmetadata: {name: echo-too}\nspec: {routingKey: echo, host: 127.0.0.1, port: 0}\n",
    );
    assert_eq!(
        lines(&b, &["apply", "-f", b_dir.to_str().unwrap()]),
        ["connector/echo created"]
    );
    let started = Instant::now();
    assert_eq!(
        lines(&a, &["apply", "-f", a_dir.to_str().unwrap()]),
        ["listener/echo created", "listener/echo-too created"]
    );
    let addr = a.wait_listener_active("echo", Duration::from_secs(10));
    let active_in = started.elapsed();

    // A real client's bytes go a -> b -> echo server and back, intact.
    let payload: Vec<u8> = (0..256 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut attempts = 0;
    let (echoed, sent_in) = loop {
        attempts += 1;
        let t = Instant::now();
        let mut c = TcpStream::connect(&addr).unwrap();
        let writer = {
            let mut w = c.try_clone().unwrap();
            let p = payload.clone();
            std::thread::spawn(move || {
                let _ = w.write_all(&p);
            })
        };
        let got = read_n(&mut c, payload.len());
        writer.join().unwrap();
        // The key may not have reached a yet: a refused flow is retried, bounded.
        if got.len() == payload.len() || Instant::now() > deadline {
            break (got, t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        echoed == payload,
        "{} of {} bytes came back, or they differ",
        echoed.len(),
        payload.len()
    );
    eprintln!(
        "applied listener active in {active_in:?}; 256 KiB echoed through two sites in {sent_in:?} (attempt {attempts})"
    );

    // A listener the running site cannot use (its port is taken): saved, reported, exit 1.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = write(
        files.path(),
        "busy.yaml",
        &format!(
            "apiVersion: skiff.io/v1alpha1\nkind: Listener\nmetadata: {{name: busy}}\nspec: {{routingKey: echo, host: 127.0.0.1, port: {}}}\n",
            taken.local_addr().unwrap().port()
        ),
    );
    let o = a.run(&["apply", "-f", &busy]);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("listener/busy is saved but the running site cannot use it"),
        "{err}"
    );
    ok(&["delete", "-f", &busy, "--dir", a.d()]);

    // delete -f of the same folder: the listener's port closes.
    let started = Instant::now();
    assert_eq!(
        lines(&a, &["delete", "-f", a_dir.to_str().unwrap()]),
        ["listener/echo deleted", "listener/echo-too deleted"]
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&addr).is_ok() {
        assert!(
            Instant::now() < deadline,
            "{addr} still accepts after delete -f"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "listener port closed {:?} after delete -f started",
        started.elapsed()
    );
    // Deleting again: not found, exit 1, unless --ignore-not-found.
    let err = fails(&["delete", "-f", a_dir.to_str().unwrap(), "--dir", a.d()]);
    assert!(err.contains("listener/echo not found"), "{err}");
    ok(&[
        "delete",
        "-f",
        a_dir.to_str().unwrap(),
        "--ignore-not-found",
        "--dir",
        a.d(),
    ]);
}

#[test]
fn apply_reads_standard_input() {
    let west = Site::create("west", false);
    let yaml = "apiVersion: skiff.io/v1alpha1
kind: Connector
metadata:
  name: db
spec:
  routingKey: db
  port: 5432
---
apiVersion: skiff.io/v1alpha1
kind: Listener
metadata:
  name: web
spec:
  routingKey: web
  port: 0
  bogus: 1
";
    let run = |input: &str| {
        let mut child = Command::new(common::skiff_bin())
            .args(["apply", "-f", "-", "--dir", west.d()])
            .env_remove("SKIFF_DIR")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let o = run(yaml);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("-:16:3: spec.bogus: unknown field `bogus`"),
        "{err}"
    );
    assert_eq!(get(&west, "connectors"), "");

    let o = run(&yaml.replace("  bogus: 1\n", ""));
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "connector/db created\nlistener/web created\n"
    );
    assert!(get(&west, "connector").contains("name: db"));
    assert!(get(&west, "listener").contains("name: web"));
}
