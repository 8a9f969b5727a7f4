//! The site folder: where a site's resources, keys and admin socket live, and how files are
//! written (atomically, secrets 0600) so that a killed command never leaves half a resource.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::SiteError;

/// File mode of anything holding a secret (keys, grant codes).
pub const SECRET_MODE: u32 = 0o600;
/// File mode of public resources.
pub const PUBLIC_MODE: u32 = 0o644;

/// The folder of one site, with the names of everything in it.
///
/// ```text
/// site.yaml          Site resource (name, id, link access)
/// ca.crt ca.key      the site CA (key 0600)
/// router.pem         the router's own certificate and key (0600)
/// link.key           the site's link identity key (0600); link certificates certify it
/// links/NAME.yaml    Link resources (outbound links this site dials)
/// links/NAME.key     the private key of an offline link's certificate (0600), when it is
///                    not link.key (`skiff link generate`)
/// listeners/NAME.yaml  Listener resources (a port here sends to a routing key)
/// connectors/NAME.yaml Connector resources (a routing key served by host:port here)
/// grants/NAME.yaml   AccessGrant resources (token codes, 0600)
/// peers/ID.yaml      sites that redeemed a grant here and may link in
/// kubernetes         present when the site is run by Kubernetes (holds the namespace)
/// admin.sock         admin API of the running site (0600)
/// site.lock          held by the running `skiff site run`
/// renew.lock         held while link certificates are renewed
/// ```
#[derive(Debug, Clone)]
pub struct SiteFolder {
    root: PathBuf,
}

impl SiteFolder {
    /// A site folder at `root` (which may not exist yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        SiteFolder { root: root.into() }
    }

    /// The default folder: `$XDG_DATA_HOME/skiff`, else `$HOME/.local/share/skiff`; for root
    /// `/var/lib/skiff`.
    pub fn default_root() -> PathBuf {
        if running_as_root() {
            return PathBuf::from("/var/lib/skiff");
        }
        if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(x).join("skiff");
        }
        if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(h).join(".local/share/skiff");
        }
        PathBuf::from("skiff")
    }

    /// The folder itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `kubernetes`: written by `skiff site run --kubernetes`; listeners and connectors of
    /// such a site come from the Kubernetes API, not from the CLI.
    pub fn kubernetes_marker(&self) -> PathBuf {
        self.root.join("kubernetes")
    }

    /// The namespace, when the site is run by Kubernetes.
    pub fn kubernetes_namespace(&self) -> Option<String> {
        fs::read_to_string(self.kubernetes_marker())
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// `site.yaml`.
    pub fn site_file(&self) -> PathBuf {
        self.root.join("site.yaml")
    }
    /// `ca.crt`.
    pub fn ca_cert_file(&self) -> PathBuf {
        self.root.join("ca.crt")
    }
    /// `ca.key` (secret).
    pub fn ca_key_file(&self) -> PathBuf {
        self.root.join("ca.key")
    }
    /// `router.pem`: the router's certificate and key in one file (secret).
    pub fn router_file(&self) -> PathBuf {
        self.root.join("router.pem")
    }
    /// `link.key`: the site's link identity key (secret). Every link client certificate this
    /// site obtains certifies this key, so a site id stays bound to the site that linked first.
    pub fn link_key_file(&self) -> PathBuf {
        self.root.join("link.key")
    }
    /// `links/`.
    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }
    /// `links/NAME.key`: the key of an offline link (one made by `skiff link generate`, whose
    /// certificate does not certify `link.key`).
    pub fn link_own_key_file(&self, link: &str) -> PathBuf {
        self.links_dir().join(format!("{link}.key"))
    }
    /// `listeners/`.
    pub fn listeners_dir(&self) -> PathBuf {
        self.root.join("listeners")
    }
    /// `connectors/`.
    pub fn connectors_dir(&self) -> PathBuf {
        self.root.join("connectors")
    }
    /// `grants/`.
    pub fn grants_dir(&self) -> PathBuf {
        self.root.join("grants")
    }
    /// `peers/`.
    pub fn peers_dir(&self) -> PathBuf {
        self.root.join("peers")
    }
    /// `admin.sock`.
    pub fn admin_socket(&self) -> PathBuf {
        self.root.join("admin.sock")
    }
    /// `site.lock`.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("site.lock")
    }

    /// `renew.lock`.
    pub fn renew_lock_file(&self) -> PathBuf {
        self.root.join("renew.lock")
    }

    /// Waits for and takes the lock held while link certificates are renewed (by `skiff link
    /// renew` or the running site): two renewals of one link at once would leave the link
    /// file holding the certificate the issuer replaced second. Released when the file drops.
    pub fn lock_renewals(&self) -> Result<File, SiteError> {
        let path = self.renew_lock_file();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(SECRET_MODE)
            .open(&path)
            .map_err(|e| SiteError::io("open", &path, e))?;
        give_to_owner_of(&file, &path, &self.root).map_err(|e| SiteError::io("give", &path, e))?;
        file.lock().map_err(|e| SiteError::io("lock", &path, e))?;
        Ok(file)
    }

    /// Does a site live here?
    pub fn exists(&self) -> bool {
        self.site_file().is_file()
    }

    /// Creates the folder and its sub-folders (0700: it holds keys).
    pub fn create_dirs(&self) -> Result<(), SiteError> {
        for dir in [
            self.root.clone(),
            self.links_dir(),
            self.listeners_dir(),
            self.connectors_dir(),
            self.grants_dir(),
            self.peers_dir(),
        ] {
            fs::create_dir_all(&dir).map_err(|e| SiteError::io("create folder", &dir, e))?;
            // A folder someone else made for us (a Kubernetes emptyDir is root's, mode 0777)
            // keeps its mode: we may not change it, and every secret in it is 0600 anyway.
            // A sub-folder that is a symbolic link is left as it is: its target may be anything.
            let meta = if dir == self.root {
                fs::metadata(&dir)
            } else {
                fs::symlink_metadata(&dir)
            }
            .map_err(|e| SiteError::io("read", &dir, e))?;
            if meta.file_type().is_symlink() {
                continue;
            }
            if Some(meta.uid()) == own_uid() {
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                    .map_err(|e| SiteError::io("set permissions of", &dir, e))?;
                // A sub-folder root makes in a folder of the service's user is that user's.
                if dir != self.root {
                    give_path_to_owner_of(&dir, &self.root)
                        .map_err(|e| SiteError::io("give", &dir, e))?;
                }
            }
        }
        Ok(())
    }

    /// Takes the run lock: only one `site run` per folder. The lock goes with the file handle
    /// (and with the process, even on SIGKILL).
    pub fn lock_for_run(&self) -> Result<File, SiteError> {
        let path = self.lock_file();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(SECRET_MODE)
            .open(&path)
            .map_err(|e| SiteError::io("open", &path, e))?;
        give_to_owner_of(&file, &path, &self.root).map_err(|e| SiteError::io("give", &path, e))?;
        // `is_locked` (any CLI verb asking whether the site runs) holds a shared lock for an
        // instant: a few tries over 200 ms tell that apart from a `site run` holding it.
        for attempt in 0..20 {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(fs::TryLockError::WouldBlock) if attempt < 19 => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(fs::TryLockError::WouldBlock) => break,
                Err(fs::TryLockError::Error(e)) => return Err(SiteError::io("lock", &path, e)),
            }
        }
        Err(SiteError::AlreadyRunning {
            dir: self.root.clone(),
        })
    }

    /// Is a `site run` holding the lock on this folder?
    pub fn is_locked(&self) -> bool {
        let Ok(file) = File::open(self.lock_file()) else {
            return false;
        };
        matches!(file.try_lock_shared(), Err(fs::TryLockError::WouldBlock))
    }
}

/// How many atomic writes this process began: part of each temporary file's name.
static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Writes `contents` to `path` atomically: a temporary file in the same folder, written, synced,
/// given `mode`, then renamed over `path`, and the folder synced. A reader sees the old file or
/// the new one, never a part; a process killed half way leaves at most a `.tmp` file behind.
///
/// Run by root in a folder that belongs to another user (the site folder of a systemd service,
/// owned by its user `skiff`), the file is given the folder's owner and group: a 0600 file of
/// root's would be unreadable to the service.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), SiteError> {
    // A bare file name has an empty parent: the current folder.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Unique per call: two writes of one file at once (two tasks) never share a temporary file.
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let result = (|| -> io::Result<()> {
        // A new file, never one already there: a symbolic link planted at this name (in a
        // folder of another user) would have this process write through it.
        let create = || {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&tmp)
        };
        let mut f = match create() {
            // Left by a killed writer of the same pid, or planted: remove the name, not a target.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                fs::remove_file(&tmp)?;
                create()?
            }
            r => r?,
        };
        // The mode given to open() is filtered by the umask; set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        give_to_owner_of(&f, &tmp, dir)?;
        f.write_all(contents)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        SiteError::io("write", path, e)
    })
}

/// Reads a file to a string, with an error that names the file.
pub fn read_text(path: &Path) -> Result<String, SiteError> {
    fs::read_to_string(path).map_err(|e| SiteError::io("read", path, e))
}

/// Removes a file; a file that is already gone is not an error.
pub fn remove_file(path: &Path) -> Result<(), SiteError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SiteError::io("remove", path, e)),
    }
}

/// The `.yaml` files of a folder, sorted by name; a missing folder has none. Temporary files
/// left by a killed writer (`.NAME.tmp`) are skipped.
pub fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, SiteError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(SiteError::io("list", dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| SiteError::io("list", dir, e))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with('.') && name.ends_with(".yaml") {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// When this process runs as root and `dir` belongs to another user, gives the open `file`
/// (named `path`) to the owner and group of `dir` (what root writes into a service's folder
/// stays readable to the service). Otherwise leaves it alone.
///
/// Only a plain file that `path` names itself is given away, never the target of a symbolic or
/// hard link planted in that folder: that would hand its owner a file of root's.
fn give_to_owner_of(file: &File, path: &Path, dir: &Path) -> io::Result<()> {
    let Some((uid, gid)) = foreign_owner(dir)? else {
        return Ok(());
    };
    let opened = file.metadata()?;
    let named = fs::symlink_metadata(path)?;
    let plain = opened.is_file()
        && opened.nlink() == 1
        && !named.file_type().is_symlink()
        && (named.dev(), named.ino()) == (opened.dev(), opened.ino());
    if !plain {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "it is a link, not a plain file of the folder; remove it and retry",
        ));
    }
    std::os::unix::fs::fchown(file, Some(uid), Some(gid))
}

/// [`give_to_owner_of`] for a path (a folder); a symbolic link itself, never its target.
fn give_path_to_owner_of(path: &Path, dir: &Path) -> io::Result<()> {
    if let Some((uid, gid)) = foreign_owner(dir)? {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// The owner and group of `dir` when this process is root and `dir` is not root's.
fn foreign_owner(dir: &Path) -> io::Result<Option<(u32, u32)>> {
    if own_uid() != Some(0) {
        return Ok(None);
    }
    let meta = fs::metadata(dir)?;
    Ok((meta.uid() != 0).then(|| (meta.uid(), meta.gid())))
}

/// This process's user id (the owner of what it creates).
fn own_uid() -> Option<u32> {
    fs::metadata("/proc/self").ok().map(|m| m.uid())
}

fn running_as_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_sets_mode_and_replaces_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        write_atomic(&path, b"first", SECRET_MODE).unwrap();
        write_atomic(&path, b"second", SECRET_MODE).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    /// Root writing into a folder of another user (a service's folder) leaves files that user
    /// owns: new files, new sub-folders and the lock files. Run as root (CI): a folder given to
    /// `nobody`. Run as another user: nothing is given away.
    #[test]
    fn root_writing_into_another_users_folder_gives_files_to_its_owner() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("west");
        fs::create_dir(&root).unwrap();
        let me = own_uid().unwrap();
        // nobody:nogroup on Debian.
        let (uid, gid) = if me == 0 {
            (65534, 65534)
        } else {
            (me, fs::metadata(&root).unwrap().gid())
        };
        std::os::unix::fs::chown(&root, Some(uid), Some(gid)).unwrap();
        let folder = SiteFolder::new(&root);
        folder.create_dirs().unwrap();
        let file = folder.listeners_dir().join("web.yaml");
        write_atomic(&file, b"x", SECRET_MODE).unwrap();
        write_atomic(&folder.site_file(), b"y", PUBLIC_MODE).unwrap();
        drop(folder.lock_renewals().unwrap());
        for path in [
            file,
            folder.site_file(),
            folder.listeners_dir(),
            folder.peers_dir(),
            folder.renew_lock_file(),
        ] {
            let m = fs::metadata(&path).unwrap();
            assert_eq!(
                (m.uid(), m.gid()),
                (uid, gid),
                "{} is not the folder owner's (running as uid {me})",
                path.display()
            );
        }
        // The mode is kept: the owner reads its secret, nobody else does.
        let m = fs::metadata(folder.listeners_dir().join("web.yaml")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        if me != 0 {
            println!("not root: checked that files stay this user's; the hand-over needs root");
        }
    }

    /// Links planted in a folder of another user never make root write through them or give
    /// their targets away: the temporary name of an atomic write, a lock file.
    #[test]
    fn links_planted_in_the_folder_are_not_followed_or_given_away() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("west");
        fs::create_dir(&root).unwrap();
        let victim = tmp.path().join("victim");
        fs::write(&victim, b"root's secret").unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).unwrap();
        let me = own_uid().unwrap();
        let (uid, gid) = if me == 0 {
            (65534, 65534)
        } else {
            (me, fs::metadata(&root).unwrap().gid())
        };
        std::os::unix::fs::chown(&root, Some(uid), Some(gid)).unwrap();
        let folder = SiteFolder::new(&root);
        // The temporary names write_atomic uses next (other tests write meanwhile: a window),
        // planted as links to the victim.
        let next = WRITES.load(std::sync::atomic::Ordering::Relaxed);
        for n in next..next + 2000 {
            let planted = root.join(format!(".site.yaml.{}.{n}.tmp", std::process::id()));
            std::os::unix::fs::symlink(&victim, &planted).unwrap();
        }
        write_atomic(&folder.site_file(), b"site", PUBLIC_MODE).unwrap();
        assert_eq!(fs::read(folder.site_file()).unwrap(), b"site");
        assert_eq!(fs::metadata(folder.site_file()).unwrap().uid(), uid);
        // A lock file planted as a link: refused (as root), never given away.
        std::os::unix::fs::symlink(&victim, folder.renew_lock_file()).unwrap();
        let locked = folder.lock_renewals();
        if me == 0 {
            let err = locked
                .expect_err("root locked through a planted link")
                .to_string();
            assert!(err.contains("renew.lock"), "{err}");
        }
        let v = fs::metadata(&victim).unwrap();
        assert_eq!(
            fs::read(&victim).unwrap(),
            b"root's secret",
            "written through a link"
        );
        assert_eq!(
            (v.uid(), v.mode() & 0o777),
            (me, 0o644),
            "the link's target was given away"
        );
    }

    #[test]
    fn atomic_write_takes_a_bare_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let old = std::env::current_dir().unwrap();
        std::env::set_current_dir(dir.path()).unwrap();
        let result = write_atomic(Path::new("t.token"), b"x", SECRET_MODE);
        std::env::set_current_dir(old).unwrap();
        result.unwrap();
        assert_eq!(fs::read(dir.path().join("t.token")).unwrap(), b"x");
    }

    #[test]
    fn yaml_listing_skips_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("b.yaml"), "").unwrap();
        fs::write(dir.path().join("a.yaml"), "").unwrap();
        fs::write(dir.path().join(".a.yaml.123.tmp"), "").unwrap();
        fs::write(dir.path().join("a.key"), "").unwrap();
        let got: Vec<_> = yaml_files(dir.path())
            .unwrap()
            .into_iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(got, ["a.yaml", "b.yaml"]);
        assert!(yaml_files(&dir.path().join("missing")).unwrap().is_empty());
    }

    #[test]
    fn a_status_check_at_the_moment_a_site_starts_does_not_fail_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let folder = SiteFolder::new(dir.path());
        File::create(folder.lock_file()).unwrap();
        // What `is_locked` does, held for 50 ms (it holds it for microseconds).
        let checker = File::open(folder.lock_file()).unwrap();
        checker.lock_shared().unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            drop(checker);
        });
        let held = folder.lock_for_run();
        release.join().unwrap();
        assert!(held.is_ok(), "the start failed: {:?}", held.err());
        // A real run holding the lock still refuses a second one.
        assert!(matches!(
            folder.lock_for_run(),
            Err(SiteError::AlreadyRunning { .. })
        ));
    }

    #[test]
    fn run_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let folder = SiteFolder::new(dir.path());
        assert!(!folder.is_locked());
        let held = folder.lock_for_run().unwrap();
        assert!(folder.is_locked());
        assert!(matches!(
            folder.lock_for_run(),
            Err(SiteError::AlreadyRunning { .. })
        ));
        drop(held);
        assert!(!folder.is_locked());
    }
}
