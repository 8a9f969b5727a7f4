//! The install-service tests that run sites as the service user (as root only): the user
//! created and given the folder, files root writes afterwards handed over, two service sites
//! linked and serving. Shares the helpers of service.rs.

use super::*;

/// A `skiff site run` this test started; killed (by its own handle) if the test fails first.
struct Running(Option<std::process::Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `skiff site run` on `dir` as `uid:gid`, as the service would: no capability, no
/// new privileges, no supplementary groups (setpriv, util-linux). Its log goes to `log`.
fn run_as(uid: u32, gid: u32, bin: &Path, dir: &Path, log: &Path) -> Running {
    let child = Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
            "--",
        ])
        .arg(bin)
        .args(["site", "run", "--dir", dir.to_str().unwrap()])
        .env_remove("SKIFF_DIR")
        .env("SKIFF_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(log).unwrap())
        .spawn()
        .expect("run setpriv (util-linux)");
    Running(Some(child))
}

/// Polls `skiff ARGS` (run by root) until `done` holds for its output, for at most 20 s, while
/// the site in `run` keeps running.
fn wait_for(run: &mut Running, log: &Path, args: &[&str], done: impl Fn(&Output) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = skiff(args);
        if done(&o) {
            return;
        }
        let exited = run.0.as_mut().unwrap().try_wait().unwrap();
        assert!(
            exited.is_none() && Instant::now() < deadline,
            "skiff {args:?} not as expected within 20 s (site exited: {exited:?}): {}\nlog:\n{}",
            text(&o),
            fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The status of listener `name` in the JSON of `listener list --output json`.
fn listener_status(o: &Output, name: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
    v.as_array()?
        .iter()
        .find(|l| l["name"] == name)
        .and_then(|l| l["status"].as_str().map(str::to_string))
}

/// The entries under `dir` whose owner is not `uid:gid`.
fn not_owned_by(dir: &Path, uid: u32, gid: u32) -> Vec<String> {
    let mut wrong = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(p) = pending.pop() {
        let m = fs::symlink_metadata(&p).unwrap();
        if (m.uid(), m.gid()) != (uid, gid) {
            wrong.push(format!("{} ({}:{})", p.display(), m.uid(), m.gid()));
        }
        if m.is_dir() {
            pending.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    wrong
}

/// As root: a folder under /var/lib/skiff is run by the template unit; install-service
/// creates the system user, gives it every file of the folder, puts CAP_NET_BIND_SERVICE in a
/// drop-in for that instance only; files root writes later with the CLI are the user's too.
#[test]
fn as_root_install_service_creates_the_user_and_gives_it_the_folder() {
    if !is_root() {
        println!("SKIPPED: needs root (useradd, chown)");
        return;
    }
    let _users = USERS.lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    let user = format!("skiff-test-{pid}");
    let site = format!("svc-test-{pid}");
    let state = Path::new("/var/lib/skiff");
    let mut cleanup = Cleanup {
        user: user.clone(),
        paths: Vec::new(),
    };
    if !state.exists() {
        fs::create_dir_all(state).unwrap();
        cleanup.paths.push(state.to_path_buf());
    }
    let dir = state.join(&site);
    cleanup.paths.insert(0, dir.clone());
    assert_eq!(
        Command::new("getent")
            .args(["passwd", &user])
            .output()
            .unwrap()
            .status
            .code(),
        Some(2),
        "user {user} exists before the test"
    );
    create_site(&site, &dir, 443);
    let Some(s) = Scratch::new() else { return };
    let bin = s.binary();
    let units = s.path("units");
    let o = install(
        &dir,
        &bin,
        &["--unit-dir", units.to_str().unwrap(), "--user", &user],
    );
    let out = stdout(&o);
    assert!(
        out.contains(&format!("created system user {user}")),
        "{out}"
    );

    let entry = Command::new("getent")
        .args(["passwd", &user])
        .output()
        .unwrap();
    let entry = String::from_utf8_lossy(&entry.stdout).trim().to_string();
    let fields: Vec<&str> = entry.split(':').collect();
    assert_eq!(fields.len(), 7, "{entry}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{entry}");
    assert_eq!(fields[5], "/nonexistent", "{entry}");
    let uid: u32 = fields[2].parse().unwrap();
    let gid: u32 = fields[3].parse().unwrap();
    assert!(uid < 1000, "not a system user: {entry}");
    // Every entry of the folder is the user's.
    let mut count = 0;
    let mut pending = vec![dir.clone()];
    while let Some(p) = pending.pop() {
        let m = fs::symlink_metadata(&p).unwrap();
        assert_eq!(
            (m.uid(), m.gid()),
            (uid, gid),
            "{} is not {user}'s",
            p.display()
        );
        count += 1;
        if m.is_dir() {
            pending.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    println!(
        "{count} entries of {} belong to {user} (uid {uid})",
        dir.display()
    );
    assert!(count >= 10, "only {count} entries in the folder");

    // The template (the example, shared by every instance), this instance's user and binary
    // in a drop-in, and the capability in another, for this instance only.
    let template = fs::read_to_string(units.join("skiff@.service")).unwrap();
    assert_eq!(
        template,
        include_str!("../../../examples/systemd/skiff@.service"),
        "one instance's --user or --binary changed the shared template"
    );
    let lines = settings(&template);
    let own_path = units.join(format!("skiff@{site}.service.d/40-user-binary.conf"));
    let own = fs::read_to_string(&own_path).unwrap();
    assert_eq!(
        settings(&own),
        [
            "[Service]".to_string(),
            format!("User={user}"),
            format!("Group={user}"),
            "ExecStart=".into(),
            format!("ExecStart={} site run", bin.display()),
        ],
        "{own}"
    );
    assert!(
        lines.contains(&"Environment=SKIFF_DIR=%S/skiff/%i"),
        "{template}"
    );
    assert!(lines.contains(&"StateDirectory=skiff/%i"), "{template}");
    assert!(lines.contains(&"CapabilityBoundingSet="), "{template}");
    let drop_in = units.join(format!("skiff@{site}.service.d/50-low-ports.conf"));
    let caps = fs::read_to_string(&drop_in).unwrap();
    assert!(
        settings(&caps).contains(&"AmbientCapabilities=CAP_NET_BIND_SERVICE"),
        "{caps}"
    );
    assert!(out.contains(&format!("as skiff@{site}.service")), "{out}");

    // Root adds a listener with the CLI: the new file is the service user's, not root's.
    ok(&[
        "listener",
        "create",
        "web",
        "45800",
        "--dir",
        dir.to_str().unwrap(),
    ]);
    let m = fs::metadata(dir.join("listeners/web.yaml")).unwrap();
    assert_eq!(
        (m.uid(), m.gid()),
        (uid, gid),
        "root's listener file is not {user}'s"
    );

    // What the service would do: run the site as that user, with no capability and no new
    // privileges, from the folder it was given, listener included (a free port for the link
    // now, so the drop-in goes at the next install).
    let port = common::free_port();
    create_site(&site, &dir, port);
    let listen = common::free_port().to_string();
    ok(&[
        "listener",
        "create",
        "web",
        &listen,
        "--dir",
        dir.to_str().unwrap(),
    ]);
    let started = Instant::now();
    let log = s.path("run.log");
    let mut run = run_as(uid, gid, &bin, &dir, &log);
    let d = dir.to_str().unwrap();
    wait_for(
        &mut run,
        &log,
        &["listener", "list", "--output", "json", "--dir", d],
        |o| {
            // Listening: `no-target` (no connector anywhere yet) or `active`.
            o.status.success()
                && listener_status(o, "web").is_some_and(|s| s == "no-target" || s == "active")
        },
    );
    println!(
        "the site ran as {user} with no capability, its listener listening, after {:?}",
        started.elapsed()
    );
    let status = common::terminate(run.0.take().unwrap(), Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "the site as {user} did not stop cleanly on SIGTERM: {status:?}\nlog:\n{}",
        fs::read_to_string(&log).unwrap_or_default()
    );

    // No port below 1024 now: the user is reused and the drop-in goes.
    let o = install(
        &dir,
        &bin,
        &["--unit-dir", units.to_str().unwrap(), "--user", &user],
    );
    let out = stdout(&o);
    assert!(
        out.contains(&format!("user {user} exists (uid {uid})")),
        "{out}"
    );
    assert!(out.contains("removed"), "{out}");
    assert!(!drop_in.exists(), "the low-port drop-in stayed");
}

/// As root, what docs/vm.md walks through, on one host: two sites installed as services (a
/// user created, both folders given to it), run as that user with no capability; root links
/// them with a token and connects a service with `skiff apply -f`; 1 MiB crosses the network
/// intact, and no file root's CLI wrote is left root's.
#[test]
fn as_root_two_service_sites_link_and_carry_a_service_set_up_by_root() {
    if !is_root() {
        println!("SKIPPED: needs root (useradd, chown, setpriv)");
        return;
    }
    let _users = USERS.lock().unwrap_or_else(|e| e.into_inner());
    let user = format!("skiff-t2-{}", std::process::id());
    let _cleanup = Cleanup {
        user: user.clone(),
        paths: Vec::new(),
    };
    let Some(s) = Scratch::new() else { return };
    let bin = s.binary();
    let units = s.path("units");
    let west = s.path("west");
    ok(&[
        "site",
        "create",
        "west",
        "--enable-link-access",
        "--link-host",
        "127.0.0.1",
        "--link-port",
        &common::free_port().to_string(),
        "--dir",
        west.to_str().unwrap(),
    ]);
    let east = s.path("east");
    ok(&["site", "create", "east", "--dir", east.to_str().unwrap()]);
    for dir in [&west, &east] {
        install(
            dir,
            &bin,
            &["--unit-dir", units.to_str().unwrap(), "--user", &user],
        );
    }
    let u = Command::new("getent")
        .args(["passwd", &user])
        .output()
        .unwrap();
    let u = String::from_utf8_lossy(&u.stdout).into_owned();
    let f: Vec<&str> = u.trim().split(':').collect();
    let (uid, gid): (u32, u32) = (f[2].parse().unwrap(), f[3].parse().unwrap());

    let started = Instant::now();
    let (wlog, elog) = (s.path("west.log"), s.path("east.log"));
    let mut w = run_as(uid, gid, &bin, &west, &wlog);
    let mut e = run_as(uid, gid, &bin, &east, &elog);
    let (wd, ed) = (west.to_str().unwrap(), east.to_str().unwrap());
    wait_for(&mut w, &wlog, &["site", "status", "--dir", wd], |o| {
        o.status.success()
    });
    wait_for(&mut e, &elog, &["site", "status", "--dir", ed], |o| {
        o.status.success()
    });

    // Root links east to west with a token.
    let token = s.path("west.token");
    ok(&["token", "issue", token.to_str().unwrap(), "--dir", wd]);
    ok(&["token", "redeem", token.to_str().unwrap(), "--dir", ed]);

    // Root connects a service with files.
    let echo = common::Echo::start();
    let port = common::free_port();
    let east_yaml = s.path("east.yaml");
    fs::write(
        &east_yaml,
        format!(
            "apiVersion: skiff.io/v1alpha1\nkind: Connector\nmetadata: {{name: backend}}\n\
             spec: {{routingKey: backend, host: 127.0.0.1, port: {}}}\n",
            echo.port
        ),
    )
    .unwrap();
    let west_yaml = s.path("west.yaml");
    fs::write(
        &west_yaml,
        format!(
            "apiVersion: skiff.io/v1alpha1\nkind: Listener\nmetadata: {{name: backend}}\n\
             spec: {{routingKey: backend, host: 127.0.0.1, port: {port}}}\n"
        ),
    )
    .unwrap();
    ok(&["apply", "-f", east_yaml.to_str().unwrap(), "--dir", ed]);
    ok(&["apply", "-f", west_yaml.to_str().unwrap(), "--dir", wd]);
    let list = ["listener", "list", "--output", "json", "--dir", wd];
    wait_for(&mut w, &wlog, &list, |o| {
        listener_status(o, "backend").as_deref() == Some("active")
    });
    let ready = started.elapsed();

    // 1 MiB through west's listener to east's backend and back.
    let data: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let sent = data.clone();
    let mut writer = c.try_clone().unwrap();
    let t = std::thread::spawn(move || {
        use std::io::Write;
        writer.write_all(&sent).unwrap();
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    use std::io::Read;
    c.read_to_end(&mut back).unwrap();
    t.join().unwrap();
    assert!(
        back == data,
        "{} bytes came back, not the 1 MiB sent",
        back.len()
    );
    println!(
        "two sites as {user}: linked and serving after {ready:?}; 1 MiB echoed intact across them"
    );

    // Nothing root wrote is root's: links, link keys, grants, peers, resources, locks.
    for dir in [&west, &east] {
        let wrong = not_owned_by(dir, uid, gid);
        assert!(wrong.is_empty(), "not {user}'s: {wrong:?}");
    }
    for (run, log) in [(&mut w, &wlog), (&mut e, &elog)] {
        let status = common::terminate(run.0.take().unwrap(), Duration::from_secs(10));
        assert!(
            status.is_some_and(|s| s.success()),
            "a site did not stop cleanly: {status:?}\n{}",
            fs::read_to_string(log).unwrap_or_default()
        );
    }
}
