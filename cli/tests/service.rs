//! Black-box tests of `skiff site install-service` through the real binary: the unit it writes
//! for a real site folder (binary, folder, hardening, CAP_NET_BIND_SERVICE only for a port
//! below 1024), `--print`, the refusal without root, the system user it creates and the
//! folder it gives that user (as root), and systemd's own checks of the units
//! (`systemd-analyze verify` and `security --offline`).
//!
//! Folders live under target/tmp, not /tmp: the service's PrivateTmp= hides /tmp, so
//! install-service refuses a folder or binary there. Nothing here starts a service: every
//! install writes into a temporary `--unit-dir`, where install-service never runs systemctl.

mod common;
#[path = "service/running.rs"]
mod running;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{fails, ok, skiff, skiff_bin, text};

/// The highest exposure `systemd-analyze security` may give the units (0 = locked down, 10 =
/// unprotected; systemd calls 0.0-2.0 "OK", up to 5.0 "MEDIUM"). What remains is what a router
/// needs: the host's network (PrivateNetwork=, IPAddressDeny=), the users of the host
/// (PrivateUsers= would keep CAP_NET_BIND_SERVICE from working), and the real-time clock
/// device that PrivateDevices= still lets through. Measured with systemd 252: 1.6 (the
/// template, a plain unit), 1.8 (with CAP_NET_BIND_SERVICE), 1.7 (a folder in a home
/// directory, checked by hand).
const MAX_EXPOSURE: f64 = 2.0;

fn is_root() -> bool {
    fs::metadata("/proc/self").unwrap().uid() == 0
}

/// A temporary place for one test: a site folder, a copy of the binary, a unit folder.
struct Scratch {
    tmp: Option<tempfile::TempDir>,
    /// The shared folder made for scratch folders (removed when the last one goes).
    made: Option<PathBuf>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        drop(self.tmp.take());
        if let Some(base) = &self.made {
            // Fails while another test's scratch folder is in it: that test removes it.
            let _ = fs::remove_dir(base);
        }
    }
}

impl Scratch {
    /// A scratch folder a service could use: under target/tmp when the service's user can
    /// reach it there and it is not in a folder the unit hides (home directories, /tmp); as
    /// root otherwise under /var/lib/skiff-tests. `None` (the test prints SKIPPED and why) only
    /// for another user in such a checkout.
    fn new() -> Option<Scratch> {
        let target = Path::new(env!("CARGO_TARGET_TMPDIR"));
        fs::create_dir_all(target).unwrap();
        let hidden = ["/home", "/root", "/run/user", "/tmp", "/var/tmp"];
        let real = fs::canonicalize(target).unwrap();
        let closed = real
            .ancestors()
            .find(|d| fs::metadata(d).is_ok_and(|m| m.mode() & 0o001 == 0));
        let (base, made) = match (hidden.iter().find(|h| real.starts_with(h)), closed) {
            (None, None) => (real, None),
            _ if is_root() => {
                let base = PathBuf::from("/var/lib/skiff-tests");
                (base.clone(), Some(base))
            }
            (h, c) => {
                println!(
                    "SKIPPED: {} is {}: a service could not use it; run as root (which uses \
                     /var/lib/skiff-tests) or from a checkout elsewhere",
                    real.display(),
                    match (h, c) {
                        (Some(h), _) => format!("under {h}"),
                        (None, Some(c)) => format!("in {}, closed to others", c.display()),
                        (None, None) => unreachable!(),
                    }
                );
                return None;
            }
        };
        // Another test may remove an empty shared folder between the two steps: retry.
        let mut attempts = 0;
        let tmp = loop {
            attempts += 1;
            let made = fs::create_dir_all(&base).and_then(|()| tempfile::tempdir_in(&base));
            match made {
                Ok(t) => break t,
                Err(e) if attempts >= 3 => panic!("no scratch folder in {}: {e}", base.display()),
                Err(_) => {}
            }
        };
        // The service's user must be able to reach the folder (tempdir makes 0700 folders).
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        Some(Scratch {
            tmp: Some(tmp),
            made,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.as_ref().unwrap().path().join(name)
    }

    /// The skiff binary at a path of this scratch folder (a hard link, else a copy).
    fn binary(&self) -> PathBuf {
        let dir = self.path("bin");
        fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("skiff");
        if !bin.exists() && fs::hard_link(skiff_bin(), &bin).is_err() {
            fs::copy(skiff_bin(), &bin).unwrap();
        }
        bin
    }

    /// A site with link access on `link_port` in this scratch folder; its absolute path.
    fn site(&self, name: &str, link_port: u16) -> PathBuf {
        let dir = self.path(name);
        create_site(name, &dir, link_port);
        fs::canonicalize(&dir).unwrap()
    }
}

fn create_site(name: &str, dir: &Path, link_port: u16) {
    ok(&[
        "site",
        "create",
        name,
        "--enable-link-access",
        "--link-host",
        "west.example.com",
        "--link-port",
        &link_port.to_string(),
        "--dir",
        dir.to_str().unwrap(),
    ]);
}

/// `skiff site install-service --dir DIR --binary BIN ARGS`.
fn install(dir: &Path, bin: &Path, args: &[&str]) -> Output {
    let mut a = vec![
        "site",
        "install-service",
        "--dir",
        dir.to_str().unwrap(),
        "--binary",
        bin.to_str().unwrap(),
    ];
    a.extend_from_slice(args);
    let o = skiff(&a);
    assert!(o.status.success(), "install-service failed: {}", text(&o));
    o
}

/// The lines of a unit that are settings, not comments.
fn settings(unit: &str) -> Vec<&str> {
    unit.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Every hardening line the unit must carry, whatever the site.
const HARDENING: &[&str] = &[
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
    "RestrictNamespaces=yes",
    "RestrictRealtime=yes",
    "LockPersonality=yes",
    "MemoryDenyWriteExecute=yes",
    "SystemCallArchitectures=native",
    "SystemCallFilter=@system-service",
    "UMask=0077",
    "KillSignal=SIGTERM",
    "TimeoutStopSec=20",
    "Restart=on-failure",
    "RestartSec=2",
    "LimitNOFILE=65536",
    "ExecReload=/bin/kill -HUP $MAINPID",
];

#[test]
fn install_service_writes_a_hardened_unit_that_binds_low_ports_only_when_asked() {
    let Some(s) = Scratch::new() else { return };
    let dir = s.site("west", 45671);
    let bin = s.binary();
    let units = s.path("units");
    // `daemon` (1:1) exists on every Debian: nothing is created (not `nobody`: install-service
    // refuses it, as systemd warns against it).
    let o = install(
        &dir,
        &bin,
        &[
            "--unit-dir",
            units.to_str().unwrap(),
            "--no-start",
            "--user",
            "daemon",
        ],
    );
    let out = stdout(&o);
    let unit_path = units.join("skiff-west.service");
    let unit = fs::read_to_string(&unit_path)
        .unwrap_or_else(|e| panic!("no unit at {}: {e}: {}", unit_path.display(), text(&o)));
    let lines = settings(&unit);
    let d = dir.to_str().unwrap();
    for want in [
        format!("ExecStart={} site run", bin.display()),
        format!("Environment=SKIFF_DIR={d}"),
        format!("ReadWritePaths={d}"),
        "User=daemon".into(),
        "Group=daemon".into(),
        "CapabilityBoundingSet=".into(),
    ]
    .iter()
    .map(String::as_str)
    .chain(HARDENING.iter().copied())
    {
        assert!(lines.contains(&want), "the unit lacks {want:?}:\n{unit}");
    }
    // Port 45671 and no listener: no capability at all.
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("CAP_") || l.starts_with("AmbientCapabilities")),
        "a capability for a site on port 45671:\n{unit}"
    );
    assert!(!out.contains("below 1024"), "{out}");
    // A unit folder that is not systemd's: it says how to start it, and runs no systemctl.
    assert!(
        out.contains("systemd reads units from /etc/systemd/system"),
        "{out}"
    );
    assert!(out.contains("systemctl enable --now skiff-west"), "{out}");
    // Atomic write: nothing but the unit in the unit folder.
    let names: Vec<_> = fs::read_dir(&units)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["skiff-west.service"]);
    if is_root() {
        // As root, the folder went to the service's user.
        assert_eq!(fs::metadata(dir.join("site.yaml")).unwrap().uid(), 1);
    } else {
        assert!(out.contains("not root: user daemon not created"), "{out}");
    }

    // Link port 443: CAP_NET_BIND_SERVICE, and nothing else; the output says why.
    create_site("west", &dir, 443);
    let o = install(
        &dir,
        &bin,
        &[
            "--unit-dir",
            units.to_str().unwrap(),
            "--no-start",
            "--user",
            "daemon",
        ],
    );
    let unit = fs::read_to_string(&unit_path).unwrap();
    let lines = settings(&unit);
    assert!(
        lines.contains(&"CapabilityBoundingSet=CAP_NET_BIND_SERVICE"),
        "{unit}"
    );
    assert!(
        lines.contains(&"AmbientCapabilities=CAP_NET_BIND_SERVICE"),
        "{unit}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.contains("CAP_")).count(),
        2,
        "{unit}"
    );
    assert!(
        unit.contains("# (link port 443)."),
        "no comment says why:\n{unit}"
    );
    assert!(
        stdout(&o).contains("may bind ports below 1024 (CAP_NET_BIND_SERVICE, and no other capability): link port 443"),
        "{}",
        text(&o)
    );

    // Back to 45671, and a listener on port 80: the capability again, for the listener.
    create_site("west", &dir, 45671);
    ok(&["listener", "create", "web", "80", "--dir", d]);
    let o = install(
        &dir,
        &bin,
        &[
            "--unit-dir",
            units.to_str().unwrap(),
            "--no-start",
            "--user",
            "daemon",
        ],
    );
    let unit = fs::read_to_string(&unit_path).unwrap();
    assert!(
        settings(&unit).contains(&"AmbientCapabilities=CAP_NET_BIND_SERVICE"),
        "{unit}"
    );
    assert!(unit.contains("listener \"web\" on port 80"), "{unit}");
    assert!(
        stdout(&o).contains("listener \"web\" on port 80"),
        "{}",
        text(&o)
    );
    // Deleting it takes the capability away at the next install.
    ok(&["listener", "delete", "web", "--dir", d]);
    install(
        &dir,
        &bin,
        &[
            "--unit-dir",
            units.to_str().unwrap(),
            "--no-start",
            "--user",
            "daemon",
        ],
    );
    let unit = fs::read_to_string(&unit_path).unwrap();
    assert!(
        !settings(&unit).iter().any(|l| l.contains("CAP_")),
        "{unit}"
    );
}

#[test]
fn print_shows_the_unit_and_changes_nothing() {
    let Some(s) = Scratch::new() else { return };
    let dir = s.site("east", 443);
    let bin = s.binary();
    let units = s.path("units");
    let owner_before = fs::metadata(dir.join("site.yaml")).unwrap().uid();
    let o = install(
        &dir,
        &bin,
        &[
            "--print",
            "--unit-dir",
            units.to_str().unwrap(),
            "--user",
            "skiff-never-made",
        ],
    );
    let out = stdout(&o);
    assert!(
        out.starts_with(&format!(
            "# {}\n",
            units.join("skiff-east.service").display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("ExecStart={} site run", bin.display())),
        "{out}"
    );
    assert!(out.contains("User=skiff-never-made\n"), "{out}");
    assert!(
        out.contains("AmbientCapabilities=CAP_NET_BIND_SERVICE\n"),
        "{out}"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("link port 443"),
        "{}",
        text(&o)
    );
    // Nothing written, nobody created, nothing given away.
    assert!(!units.exists(), "--print made {}", units.display());
    let made = Command::new("getent")
        .args(["passwd", "skiff-never-made"])
        .output()
        .unwrap();
    assert_eq!(made.status.code(), Some(2), "--print created a user");
    assert_eq!(
        fs::metadata(dir.join("site.yaml")).unwrap().uid(),
        owner_before
    );
    // The shared user `nobody` is refused, with the reason. (`--binary`: the checkout may
    // be under /tmp, where the default binary itself is refused first.)
    let err = fails(&[
        "site",
        "install-service",
        "--print",
        "--user",
        "nobody",
        "--binary",
        bin.to_str().unwrap(),
        "--dir",
        dir.to_str().unwrap(),
    ]);
    assert!(
        err.contains("the user nobody is shared") && err.contains("dedicated user"),
        "{err}"
    );
    // A parent folder the service's user cannot pass through: said, with the fix.
    let private = s.path("private");
    fs::create_dir(&private).unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o750)).unwrap();
    create_site("south", &private.join("south"), 45671);
    let o = install(&private.join("south"), &bin, &["--print"]);
    let err = String::from_utf8_lossy(&o.stderr);
    let want = format!(
        "warning: {} (mode 750) does not let others pass: the service's user skiff cannot reach",
        fs::canonicalize(&private).unwrap().display()
    );
    assert!(
        err.contains(&want) && err.contains("chmod o+x"),
        "{}",
        text(&o)
    );
    let o = install(&dir, &bin, &["--print"]);
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("warning"),
        "{}",
        text(&o)
    );
    // The default: the unit named for systemd's folder, printed without root.
    let o = install(&dir, &bin, &["--print"]);
    assert!(
        stdout(&o).starts_with("# /etc/systemd/system/skiff-east.service\n"),
        "{}",
        text(&o)
    );
}

/// Without `--binary`, the unit names the binary by the path it was started with, a symbolic
/// link kept (swapping the link upgrades the service): started by its path, and by its name
/// found in PATH.
#[test]
fn the_default_binary_keeps_the_symbolic_link_it_was_started_through() {
    let Some(s) = Scratch::new() else { return };
    let dir = s.site("link", 45671);
    let bin = s.binary();
    let links = s.path("current");
    fs::create_dir_all(&links).unwrap();
    let link = links.join("skiff");
    std::os::unix::fs::symlink(&bin, &link).unwrap();
    let args = [
        "site",
        "install-service",
        "--print",
        "--dir",
        dir.to_str().unwrap(),
    ];
    let by_path = Command::new(&link)
        .args(args)
        .env_remove("SKIFF_DIR")
        .output()
        .unwrap();
    let by_name = Command::new("skiff")
        .args(args)
        .env_remove("SKIFF_DIR")
        .env("PATH", format!("{}:/usr/bin:/bin", links.display()))
        .output()
        .unwrap();
    for o in [by_path, by_name] {
        assert!(o.status.success(), "{}", text(&o));
        let out = stdout(&o);
        assert!(
            out.contains(&format!("ExecStart={} site run\n", link.display())),
            "the link was resolved: {out}"
        );
    }
}

/// Without root, and without --print or --unit-dir, install-service says it needs root and
/// what to do instead. As root the check runs the binary as `nobody` (setpriv).
#[test]
fn without_root_install_service_says_it_needs_root() {
    let Some(s) = Scratch::new() else { return };
    let dir = s.site("north", 45671);
    let args = ["site", "install-service", "--dir", dir.to_str().unwrap()];
    let err = if is_root() {
        let o = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(skiff_bin())
            .args(args)
            .env_remove("SKIFF_DIR")
            .stdin(Stdio::null())
            .output()
            .expect("run setpriv (util-linux)");
        assert!(!o.status.success(), "{}", text(&o));
        String::from_utf8_lossy(&o.stderr).into_owned()
    } else {
        fails(&args)
    };
    assert!(err.contains("error: install-service needs root"), "{err}");
    assert!(err.contains("run it with sudo"), "{err}");
    assert!(
        err.contains("--print") && err.contains("--unit-dir DIR"),
        "{err}"
    );
    assert!(!Path::new("/etc/systemd/system/skiff-north.service").exists());
}

/// Held by each test that creates and deletes a system user: useradd and userdel lock
/// /etc/passwd and fail, not wait, when another holds it.
static USERS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Removes, when dropped, the system user a test created and the folders it made.
struct Cleanup {
    user: String,
    paths: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.paths {
            let _ = fs::remove_dir_all(p);
        }
        let known = Command::new("getent").args(["passwd", &self.user]).output();
        if known.is_ok_and(|o| o.status.success()) {
            let o = Command::new("userdel").arg(&self.user).output();
            if !o.as_ref().is_ok_and(|o| o.status.success()) {
                eprintln!("could not remove test user {}: {o:?}", self.user);
            }
        }
    }
}

/// A group of the user's name that exists already (left by an earlier install, or made by
/// the operator): useradd alone refuses to make the user; install-service makes it a member.
#[test]
fn as_root_install_service_creates_the_user_in_an_existing_group_of_its_name() {
    if !is_root() {
        println!("SKIPPED: needs root (groupadd, useradd)");
        return;
    }
    let _users = USERS.lock().unwrap_or_else(|e| e.into_inner());
    let user = format!("skiff-grp-{}", std::process::id());
    // Dropped last: the user goes first, then its group.
    let _group = GroupCleanup(user.clone());
    let _cleanup = Cleanup {
        user: user.clone(),
        paths: Vec::new(),
    };
    let made = Command::new("groupadd")
        .args(["--system", &user])
        .output()
        .unwrap();
    assert!(made.status.success(), "groupadd: {made:?}");
    let Some(s) = Scratch::new() else { return };
    let dir = s.site("grp", 45671);
    let units = s.path("units");
    let o = install(
        &dir,
        &s.binary(),
        &["--unit-dir", units.to_str().unwrap(), "--user", &user],
    );
    assert!(
        stdout(&o).contains(&format!("created system user {user}")),
        "{}",
        text(&o)
    );
    let gid = |db: &str, field: usize| -> String {
        let o = Command::new("getent").args([db, &user]).output().unwrap();
        let line = String::from_utf8_lossy(&o.stdout).trim().to_string();
        line.split(':').nth(field).unwrap_or_default().to_string()
    };
    assert_eq!(gid("passwd", 3), gid("group", 2), "not in the group {user}");
    let m = fs::metadata(&dir).unwrap();
    assert_eq!(m.gid().to_string(), gid("group", 2));
}

/// Removes, when dropped, a group a test made (userdel may have removed it already).
struct GroupCleanup(String);

impl Drop for GroupCleanup {
    fn drop(&mut self) {
        let known = Command::new("getent").args(["group", &self.0]).output();
        if known.is_ok_and(|o| o.status.success()) {
            let _ = Command::new("groupdel").arg(&self.0).output();
        }
    }
}

/// systemd's own checks, when systemd-analyze is installed (Debian package `systemd`; CI sets
/// SKIFF_REQUIRE_SYSTEMD=1 so they never skip there): `verify` accepts the example template
/// and the units install-service renders, and `security --offline` rates each at most
/// [`MAX_EXPOSURE`].
#[test]
fn systemd_analyze_accepts_the_units_and_rates_them_ok() {
    let have = Command::new("systemd-analyze").arg("--version").output();
    if !have.as_ref().is_ok_and(|o| o.status.success()) {
        let why = "systemd-analyze is not installed (Debian package systemd)";
        assert!(
            std::env::var_os("SKIFF_REQUIRE_SYSTEMD").is_none(),
            "SKIFF_REQUIRE_SYSTEMD is set but {why}"
        );
        println!("SKIPPED: {why}");
        return;
    }
    let Some(s) = Scratch::new() else { return };
    let bin = s.binary();
    let units = s.path("units");
    fs::create_dir_all(&units).unwrap();
    // The example, with ExecStart pointing at a binary that exists.
    let example = include_str!("../../examples/systemd/skiff@.service")
        .replace("/usr/local/bin/skiff", bin.to_str().unwrap());
    fs::write(units.join("skiff@.service"), example).unwrap();
    let mut checked = vec![units.join("skiff@west.service")];
    // Rendered: a plain unit without capabilities, and one with them.
    let dir = s.site("west", 45671);
    let plain = s.path("plain");
    install(
        &dir,
        &bin,
        &[
            "--unit-dir",
            plain.to_str().unwrap(),
            "--no-start",
            "--user",
            "daemon",
        ],
    );
    checked.push(plain.join("skiff-west.service"));
    let dir = s.site("east", 443);
    let low = s.path("low");
    install(
        &dir,
        &bin,
        &[
            "--unit-dir",
            low.to_str().unwrap(),
            "--no-start",
            "--user",
            "daemon",
        ],
    );
    checked.push(low.join("skiff-east.service"));

    let offline = String::from_utf8_lossy(
        &Command::new("systemd-analyze")
            .arg("--help")
            .output()
            .unwrap()
            .stdout,
    )
    .contains("--offline");
    for unit in &checked {
        let o = Command::new("systemd-analyze")
            .arg("verify")
            .arg(unit)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        let name = unit.file_name().unwrap().to_string_lossy();
        assert!(o.status.success(), "verify {name}: {}", text(&o));
        assert!(
            !err.contains("skiff"),
            "systemd-analyze verify warned about {name}: {err}"
        );
        if !offline {
            println!("{name}: verify ok; SKIPPED security: this systemd-analyze has no --offline");
            continue;
        }
        let o = Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(unit)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        let line = out
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or_else(|| panic!("security {name}: no overall exposure: {}", text(&o)));
        // "→ Overall exposure level for skiff@west.service: 1.5 OK 🙂"
        let mut words = line.rsplit(": ").next().unwrap().split_whitespace();
        let score: f64 = words.next().unwrap().parse().unwrap();
        let level = words.next().unwrap_or_default();
        println!("{name}: verify ok; exposure {score} {level} (at most {MAX_EXPOSURE})");
        assert!(
            score <= MAX_EXPOSURE && level == "OK",
            "{name}: {line}\n{out}"
        );
    }
}
