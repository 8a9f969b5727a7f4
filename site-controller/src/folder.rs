//! The site folder: where a site's resources, keys and admin socket live, and how files are
//! written (atomically, secrets 0600) so that a killed command never leaves half a resource.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
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
        let file = open_lock_file(&path)?;
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
            // The mode is set through a handle of the folder opened without following a link
            // (fchmod), never by its name: a name swapped for a link meanwhile fails the open.
            let mut flags = libc::O_DIRECTORY | libc::O_NONBLOCK;
            if dir != self.root {
                flags |= libc::O_NOFOLLOW;
            }
            let handle = match OpenOptions::new().read(true).custom_flags(flags).open(&dir) {
                Ok(h) => h,
                Err(e) if e.raw_os_error() == Some(libc::ELOOP) => continue,
                Err(e) => return Err(SiteError::io("open", &dir, e)),
            };
            let meta = handle
                .metadata()
                .map_err(|e| SiteError::io("read", &dir, e))?;
            if Some(meta.uid()) == own_uid() {
                handle
                    .set_permissions(fs::Permissions::from_mode(0o700))
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
        let file = open_lock_file(&path)?;
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
    ///
    /// Only a plain file counts: the name is opened without following a symbolic link and
    /// without waiting (a FIFO planted there would block an open until someone writes to it).
    pub fn is_locked(&self) -> bool {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(self.lock_file());
        let Ok(file) = file else {
            return false;
        };
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return false;
        }
        matches!(file.try_lock_shared(), Err(fs::TryLockError::WouldBlock))
    }

    /// Refuses a folder whose fixed entries are not what skiff makes, when this process runs
    /// as root and the folder belongs to another user (a service's folder after
    /// `skiff site install-service`): that user could have swapped `listeners/` for a symbolic
    /// link to `/etc`, or `site.lock` for a FIFO, to steer what root writes, reads, removes or
    /// waits for. Every sub-folder must be a real folder, every fixed file a plain file (the
    /// admin socket a socket) or absent, and every entry of a sub-folder a plain file. Checked
    /// once, before a verb acts; a change made after this check (a race with a process of that
    /// user) is not caught here: docs/vm.md says how to avoid it (`sudo -u skiff skiff ...`).
    /// Run by the folder's owner, or as root on root's folder, nothing is checked.
    pub fn check_safe_for_root(&self) -> Result<(), SiteError> {
        if own_uid() != Some(0) {
            return Ok(());
        }
        match fs::metadata(&self.root) {
            Ok(m) if m.uid() != 0 => {}
            // Root's own folder, or none yet: nobody else could have planted anything.
            _ => return Ok(()),
        }
        let dirs = [
            self.links_dir(),
            self.listeners_dir(),
            self.connectors_dir(),
            self.grants_dir(),
            self.peers_dir(),
        ];
        for dir in &dirs {
            let Some(meta) = lstat(dir)? else { continue };
            if !meta.file_type().is_dir() {
                return Err(unsafe_entry(dir, &meta));
            }
            let entries = fs::read_dir(dir).map_err(|e| SiteError::io("list", dir, e))?;
            for entry in entries {
                let path = entry.map_err(|e| SiteError::io("list", dir, e))?.path();
                if let Some(meta) = lstat(&path)?
                    && !meta.file_type().is_file()
                {
                    return Err(unsafe_entry(&path, &meta));
                }
            }
        }
        for file in [
            self.site_file(),
            self.ca_cert_file(),
            self.ca_key_file(),
            self.router_file(),
            self.link_key_file(),
            self.lock_file(),
            self.renew_lock_file(),
            self.admin_socket(),
            self.kubernetes_marker(),
        ] {
            let Some(meta) = lstat(&file)? else { continue };
            let kind = meta.file_type();
            let socket_allowed = file == self.admin_socket();
            if !(kind.is_file() || socket_allowed && kind.is_socket()) {
                return Err(unsafe_entry(&file, &meta));
            }
        }
        Ok(())
    }
}

/// Opens (creating it 0600 if need be) a lock file: never through a symbolic link (a dangling
/// one would create a file at its target), never waiting on a FIFO, and only a plain file.
fn open_lock_file(path: &Path) -> Result<File, SiteError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(SECRET_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            // ELOOP: a symbolic link; ENXIO: a FIFO nobody reads.
            match (e.raw_os_error(), fs::symlink_metadata(path)) {
                (Some(libc::ELOOP | libc::ENXIO), Ok(meta)) => unsafe_entry(path, &meta),
                _ => SiteError::io("open", path, e),
            }
        })?;
    let meta = file
        .metadata()
        .map_err(|e| SiteError::io("read", path, e))?;
    if !meta.is_file() {
        return Err(unsafe_entry(path, &meta));
    }
    Ok(file)
}

/// `lstat`: what `path` itself is (a link, not its target); `None` when nothing is there.
fn lstat(path: &Path) -> Result<Option<fs::Metadata>, SiteError> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SiteError::io("read", path, e)),
    }
}

/// The refusal of a site folder entry that skiff never makes (a link, a FIFO, a device).
pub(crate) fn unsafe_entry(path: &Path, meta: &fs::Metadata) -> SiteError {
    let kind = meta.file_type();
    let what = if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_dir() {
        "a folder"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_file() {
        "a plain file"
    } else {
        "a device"
    };
    SiteError::InvalidArgument(format!(
        "{} is {what}, which skiff never makes there: someone changed it — inspect it \
         before running skiff as root here",
        path.display()
    ))
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

/// Largest file [`read_text`] reads: the folder's files are small resources; anything bigger is
/// not one of ours.
pub const MAX_FILE: u64 = 16 * 1024 * 1024;

/// Reads a file to a string, with an error that names the file. Only a regular file of at
/// most [`MAX_FILE`] bytes is read, checked on the opened file itself (a FIFO, a device or a
/// huge file swapped in after any earlier check neither hangs nor exhausts memory).
pub fn read_text(path: &Path) -> Result<String, SiteError> {
    use std::io::Read;
    let read = || -> io::Result<String> {
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)?;
        let meta = f.metadata()?;
        if !meta.file_type().is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file (a FIFO, socket or device has no place in a site folder)",
            ));
        }
        if meta.len() > MAX_FILE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} bytes, more than the {} MiB a site folder file may have",
                    meta.len(),
                    MAX_FILE / 1024 / 1024
                ),
            ));
        }
        let mut text = String::new();
        f.take(MAX_FILE).read_to_string(&mut text)?;
        Ok(text)
    };
    read().map_err(|e| SiteError::io("read", path, e))
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

/// Whether this process runs as root (the owner of what it creates is then root).
pub(crate) fn running_as_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_text_refuses_a_fifo_and_a_huge_file_without_reading_them() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("l.yaml");
        // A FIFO with no writer: a blocking open or read would hang here.
        assert_eq!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .map(|s| s.success())
                .ok(),
            Some(true),
            "mkfifo {}",
            fifo.display()
        );
        let e = crate::error_chain(&read_text(&fifo).unwrap_err());
        assert!(e.contains("not a regular file"), "{e}");
        let huge = dir.path().join("h.yaml");
        File::create(&huge).unwrap().set_len(MAX_FILE + 1).unwrap();
        let e = crate::error_chain(&read_text(&huge).unwrap_err());
        assert!(e.contains("more than the 16 MiB"), "{e}");
        let small = dir.path().join("s.yaml");
        fs::write(&small, "kind: Listener\n").unwrap();
        assert_eq!(read_text(&small).unwrap(), "kind: Listener\n");
    }

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
        // A lock file planted as a link to a name that does not exist yet: refused, and
        // nothing is created at its target (opening through it would create a file of root's
        // there, in a place the link's maker chose).
        let target = tmp.path().join("made-through-a-link");
        std::os::unix::fs::symlink(&target, folder.renew_lock_file()).unwrap();
        let err = folder
            .lock_renewals()
            .expect_err("locked through a planted link")
            .to_string();
        assert!(err.contains("renew.lock is a symbolic link"), "{err}");
        std::os::unix::fs::symlink(&target, folder.lock_file()).unwrap();
        let err = folder
            .lock_for_run()
            .expect_err("locked through a planted link")
            .to_string();
        assert!(err.contains("site.lock is a symbolic link"), "{err}");
        assert!(!folder.is_locked());
        assert!(
            fs::symlink_metadata(&target).is_err(),
            "a lock file was created at the target of a planted link"
        );
        if me != 0 {
            println!(
                "SKIPPED (in part): not root, so the folder is this user's own: checked that \
                 nothing is written through the links, not that nothing is given away"
            );
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

    /// A FIFO at a lock file's name (which would block an open until someone writes to it)
    /// is refused at once, and a status check does not wait on it either.
    #[test]
    fn a_fifo_at_a_lock_files_name_is_refused_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let folder = SiteFolder::new(dir.path());
        for path in [folder.lock_file(), folder.renew_lock_file()] {
            let made = std::process::Command::new("mkfifo")
                .arg(&path)
                .status()
                .unwrap();
            assert!(made.success());
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let f = folder.clone();
        // A thread: a hung open must fail the test, not hang it.
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let locked = f.is_locked();
            let run = f.lock_for_run().map(drop).map_err(|e| e.to_string());
            let renew = f.lock_renewals().map(drop).map_err(|e| e.to_string());
            let _ = tx.send((locked, run, renew, started.elapsed()));
        });
        let (locked, run, renew, took) = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("a lock file that is a FIFO hung the open for 10 s");
        assert!(!locked);
        let run = run.expect_err("a FIFO taken as the run lock");
        assert!(run.contains("site.lock is a FIFO"), "{run}");
        let renew = renew.expect_err("a FIFO taken as the renew lock");
        assert!(renew.contains("renew.lock is a FIFO"), "{renew}");
        println!("refused in {took:?}: {run}");
    }

    /// Root in a folder of another user refuses a sub-folder swapped for a link, a link in a
    /// sub-folder and a FIFO lock file, naming the entry; in its own folder it checks nothing.
    #[test]
    fn as_root_a_foreign_folder_with_planted_entries_is_refused() {
        if own_uid() != Some(0) {
            println!("SKIPPED: not root; the check applies only to root in another user's folder");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("west");
        let folder = SiteFolder::new(&root);
        folder.create_dirs().unwrap();
        fs::write(folder.site_file(), "x").unwrap();
        std::os::unix::fs::chown(&root, Some(65534), Some(65534)).unwrap();
        folder.check_safe_for_root().unwrap();
        let elsewhere = tmp.path().join("etc");
        fs::create_dir(&elsewhere).unwrap();
        fs::remove_dir(folder.listeners_dir()).unwrap();
        std::os::unix::fs::symlink(&elsewhere, folder.listeners_dir()).unwrap();
        let err = folder.check_safe_for_root().unwrap_err().to_string();
        assert!(
            err.contains("listeners is a symbolic link, which skiff never makes there"),
            "{err}"
        );
        fs::remove_file(folder.listeners_dir()).unwrap();
        fs::create_dir(folder.listeners_dir()).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", folder.links_dir().join("a.yaml")).unwrap();
        let err = folder.check_safe_for_root().unwrap_err().to_string();
        assert!(err.contains("a.yaml is a symbolic link"), "{err}");
        fs::remove_file(folder.links_dir().join("a.yaml")).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(folder.lock_file())
            .status()
            .unwrap();
        assert!(made.success());
        let err = folder.check_safe_for_root().unwrap_err().to_string();
        assert!(err.contains("site.lock is a FIFO"), "{err}");
        // Root's own folder: root planted it itself.
        std::os::unix::fs::chown(&root, Some(0), Some(0)).unwrap();
        folder.check_safe_for_root().unwrap();
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
