//! Black-box tests of root running CLI verbs in a site folder owned by another user (a
//! service's folder after `skiff site install-service`): entries that user planted (a
//! sub-folder swapped for a symbolic link, a dangling link or a FIFO at a lock file's name)
//! never steer what root writes, removes, creates or waits for. Run as root (as CI does);
//! another user gets SKIPPED, and a failure under SKIFF_REQUIRE_SYSTEMD=1.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{ok, text};

/// The user the folders are given to: `nobody:nogroup` on Debian.
const SERVICE_UID: u32 = 65534;

/// How long a verb may take before the test calls it hung.
const HANG: Duration = Duration::from_secs(10);

/// A site folder given to `nobody`, in a scratch folder removed when dropped; `None` (the
/// test prints SKIPPED) when not root.
struct ForeignSite {
    tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl ForeignSite {
    fn new(name: &str) -> Option<ForeignSite> {
        if fs::metadata("/proc/self").unwrap().uid() != 0 {
            let why = "not root: the check applies to root acting in another user's folder";
            assert!(
                std::env::var_os("SKIFF_REQUIRE_SYSTEMD").is_none(),
                "SKIFF_REQUIRE_SYSTEMD is set but {why}"
            );
            println!("SKIPPED: {why}");
            return None;
        }
        let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
        fs::create_dir_all(base).unwrap();
        let tmp = tempfile::tempdir_in(base).unwrap();
        let dir = tmp.path().join(name);
        ok(&["site", "create", name, "--dir", dir.to_str().unwrap()]);
        // What install-service does to the folder, by hand: every entry is nobody's.
        let chown = Command::new("chown")
            .args(["-R", &format!("{SERVICE_UID}:{SERVICE_UID}")])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(chown.success());
        Some(ForeignSite { tmp, dir })
    }

    fn d(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    /// A folder outside the site (what a planted link points to), with one file in it.
    fn victim(&self) -> PathBuf {
        let v = self.tmp.path().join("victim");
        fs::create_dir_all(&v).unwrap();
        fs::write(v.join("keep.yaml"), "root's file\n").unwrap();
        v
    }
}

/// Runs `skiff ARGS` as root, killed (by its handle) if it takes longer than [`HANG`]; the
/// output and how long it took.
fn skiff_bounded(args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = Command::new(common::skiff_bin())
        .args(args)
        .env_remove("SKIFF_DIR")
        .env("SKIFF_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > HANG {
            let _ = child.kill();
            let _ = child.wait();
            panic!("skiff {args:?} hung for {HANG:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = started.elapsed();
    (child.wait_with_output().unwrap(), took)
}

/// Runs `skiff ARGS`, expects it to fail within [`HANG`]; its stderr.
fn refused(args: &[&str]) -> String {
    let (o, took) = skiff_bounded(args);
    assert!(
        !o.status.success(),
        "skiff {args:?} should fail: {}",
        text(&o)
    );
    println!("skiff {args:?} refused in {took:?}");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The names in a folder, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut n: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    n.sort();
    n
}

/// `listeners/` swapped for a link to another folder: `listener create` as root is refused,
/// naming the link, and writes nothing there.
#[test]
fn as_root_a_symlinked_sub_folder_refuses_listener_create() {
    let Some(site) = ForeignSite::new("west") else {
        return;
    };
    let victim = site.victim();
    let listeners = site.dir.join("listeners");
    fs::remove_dir(&listeners).unwrap();
    symlink(&victim, &listeners).unwrap();
    let err = refused(&["listener", "create", "web", "8080", "--dir", site.d()]);
    assert!(
        err.contains("listeners is a symbolic link, which skiff never makes there"),
        "{err}"
    );
    assert!(
        err.contains("inspect it before running skiff as root here"),
        "{err}"
    );
    assert_eq!(names(&victim), ["keep.yaml"], "root wrote through the link");
    assert_eq!(
        fs::metadata(&victim).unwrap().uid(),
        0,
        "the target was given away"
    );
    // Put back as it was, the same verb works and the file is the folder owner's.
    fs::remove_file(&listeners).unwrap();
    fs::create_dir(&listeners).unwrap();
    ok(&["listener", "create", "web", "8080", "--dir", site.d()]);
    let made = fs::metadata(listeners.join("web.yaml")).unwrap();
    assert_eq!(made.uid(), SERVICE_UID);
}

/// `connectors/` swapped for a link: `site delete` as root is refused before it removes
/// anything (site.yaml stays), and the link's target keeps its files.
#[test]
fn as_root_site_delete_refuses_a_symlinked_sub_folder() {
    let Some(site) = ForeignSite::new("east") else {
        return;
    };
    let victim = site.victim();
    let connectors = site.dir.join("connectors");
    fs::remove_dir(&connectors).unwrap();
    symlink(&victim, &connectors).unwrap();
    let err = refused(&["site", "delete", "--dir", site.d()]);
    assert!(err.contains("connectors is a symbolic link"), "{err}");
    assert_eq!(
        names(&victim),
        ["keep.yaml"],
        "root removed the link's target's files"
    );
    assert!(
        site.dir.join("site.yaml").is_file(),
        "the site was half deleted"
    );
}

/// A dangling link at `site.lock`: no verb creates a file at its target; a FIFO at
/// `site.lock` (an open of it waits for a writer): verbs are refused at once, not hung.
#[test]
fn as_root_planted_lock_files_create_nothing_and_hang_nothing() {
    let Some(site) = ForeignSite::new("north") else {
        return;
    };
    let lock = site.dir.join("site.lock");
    let _ = fs::remove_file(&lock);
    let target = site.tmp.path().join("made-by-root");
    symlink(&target, &lock).unwrap();
    for args in [
        &["listener", "create", "web", "8080"][..],
        &["site", "status"],
        &["site", "delete"],
    ] {
        let mut a = args.to_vec();
        a.extend(["--dir", site.d()]);
        let err = refused(&a);
        assert!(
            err.contains("site.lock is a symbolic link"),
            "{args:?}: {err}"
        );
        assert!(
            fs::symlink_metadata(&target).is_err(),
            "skiff {args:?} created a file at the target of a planted link"
        );
    }
    fs::remove_file(&lock).unwrap();
    let made = Command::new("mkfifo").arg(&lock).status().unwrap();
    assert!(made.success());
    let mut slowest = Duration::ZERO;
    for args in [
        &["listener", "create", "web", "8080"][..],
        &["site", "status"],
        &["site", "delete"],
        &["link", "list"],
    ] {
        let mut a = args.to_vec();
        a.extend(["--dir", site.d()]);
        let started = Instant::now();
        let err = refused(&a);
        slowest = slowest.max(started.elapsed());
        assert!(err.contains("site.lock is a FIFO"), "{args:?}: {err}");
    }
    println!("slowest refusal with a FIFO at site.lock: {slowest:?}");
}
