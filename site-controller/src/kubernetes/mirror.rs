//! Keeps a Kubernetes site's links, grants and linked sites in Secrets, so a restarted pod
//! (whose site folder is an emptyDir) loses nothing, while the router keeps using the folder.
//!
//! Both sides change: the running site writes the folder (a peer redeems a grant, `kubectl
//! exec ... skiff token redeem`, `skiff link delete`), operators write Secrets (`kubectl
//! delete secret`, a restored backup). [`plan`] is a three-way merge against the state last
//! seen in sync (the base, kept in the folder's `mirror-base.json` so a restarted container
//! keeps it): a side that changed since then wins; when both changed, the API wins (the
//! cluster is the record an operator edits and backs up), except that a grant's count of
//! redemptions never goes down, so no backup or edit makes a spent token usable again. It is
//! pure and unit-tested; [`read_folder`] and [`write_folder`] are its folder half, the
//! `kubernetes` module its API half.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::SiteError;
use crate::folder::{SECRET_MODE, SiteFolder, read_text, remove_file, write_atomic, yaml_files};

/// What is mirrored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `links/NAME.yaml` ↔ Secret `skiff-link-NAME`.
    Link,
    /// `grants/NAME.yaml` ↔ Secret `skiff-grant-NAME`.
    Grant,
    /// `peers/ID.yaml` ↔ Secret `skiff-peer-ID`.
    Peer,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 3] = [Kind::Link, Kind::Grant, Kind::Peer];

    /// The `skiff.io/type` label value.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Link => "link",
            Kind::Grant => "grant",
            Kind::Peer => "peer",
        }
    }

    /// The Secret's data key.
    pub fn data_key(self) -> &'static str {
        match self {
            Kind::Link => "link.yaml",
            Kind::Grant => "grant.yaml",
            Kind::Peer => "peer.yaml",
        }
    }

    /// The Secret holding resource `name`.
    pub fn secret_name(self, name: &str) -> String {
        format!("skiff-{}-{name}", self.label())
    }

    /// Its folder.
    pub fn dir(self, folder: &SiteFolder) -> PathBuf {
        match self {
            Kind::Link => folder.links_dir(),
            Kind::Grant => folder.grants_dir(),
            Kind::Peer => folder.peers_dir(),
        }
    }

    /// The kind of a `skiff.io/type` label value.
    pub fn from_label(label: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.label() == label)
    }
}

/// One mirrored item: its kind and name.
pub type Item = (Kind, String);
/// Items and their contents.
pub type Blobs = BTreeMap<Item, Vec<u8>>;

/// One step of a sync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Write the item into the folder.
    ToFolder(Item, Vec<u8>),
    /// Remove it from the folder.
    RemoveFromFolder(Item),
    /// Create or replace its Secret.
    ToApi(Item, Vec<u8>),
    /// Delete its Secret.
    RemoveFromApi(Item),
}

/// The steps that bring `folder` and `api` together, given `base`, the state both had the
/// last time they were in sync. After the steps run, both sides equal the returned state,
/// which is the next `base`.
pub fn plan(base: &Blobs, folder: &Blobs, api: &Blobs) -> (Vec<Step>, Blobs) {
    let items: BTreeSet<&Item> = base.keys().chain(folder.keys()).chain(api.keys()).collect();
    let mut steps = Vec::new();
    let mut next = Blobs::new();
    for item in items {
        let (b, f, a) = (base.get(item), folder.get(item), api.get(item));
        if let (Kind::Grant, Some(fv), Some(av)) = (item.0, f, a)
            && fv != av
            && let Some(merged) = merge_grants(fv, av)
        {
            if &merged != fv {
                steps.push(Step::ToFolder(item.clone(), merged.clone()));
            }
            if &merged != av {
                steps.push(Step::ToApi(item.clone(), merged.clone()));
            }
            next.insert(item.clone(), merged);
            continue;
        }
        // A linked site revoked on one side while the other side changed it too (a renewal
        // committed there): the API's version, revoked. An undo on one side alone is a
        // plain change and goes through below.
        if let (Kind::Peer, Some(fv), Some(av)) = (item.0, f, a)
            && fv != av
            && f != b
            && a != b
            && let Some(merged) = merge_peers(fv, av)
        {
            if &merged != fv {
                steps.push(Step::ToFolder(item.clone(), merged.clone()));
            }
            if &merged != av {
                steps.push(Step::ToApi(item.clone(), merged.clone()));
            }
            next.insert(item.clone(), merged);
            continue;
        }
        let winner = if f == a {
            f
        } else if a == b {
            // Only the folder changed.
            match f {
                Some(v) => steps.push(Step::ToApi(item.clone(), v.clone())),
                None => steps.push(Step::RemoveFromApi(item.clone())),
            }
            f
        } else {
            // The API changed (alone, or both did: the API wins).
            match a {
                Some(v) => steps.push(Step::ToFolder(item.clone(), v.clone())),
                None => steps.push(Step::RemoveFromFolder(item.clone())),
            }
            a
        };
        if let Some(v) = winner {
            next.insert(item.clone(), v.clone());
        }
    }
    (steps, next)
}

/// Two versions of one grant as one: the API's (unless only the folder's count differs),
/// with the higher count of redemptions. `None` when either does not parse (the plain rules
/// then apply, and [`check`] reports the bad one).
fn merge_grants(folder: &[u8], api: &[u8]) -> Option<Vec<u8>> {
    let parse = |b: &[u8]| {
        std::str::from_utf8(b)
            .ok()
            .and_then(|t| skiff_certs::AccessGrant::from_yaml(t).ok())
    };
    let (f, a) = (parse(folder)?, parse(api)?);
    let mut merged = a.clone();
    merged.spec.redemptions_made = a.spec.redemptions_made.max(f.spec.redemptions_made);
    Some(if merged == a {
        api.to_vec()
    } else if merged == f {
        folder.to_vec()
    } else {
        merged.to_yaml().into_bytes()
    })
}

/// Two versions of one linked site, both changed since the last sync, as one: the API's,
/// revoked if either is (a revocation is never lost to a concurrent change). `None` when
/// either does not parse.
fn merge_peers(folder: &[u8], api: &[u8]) -> Option<Vec<u8>> {
    use crate::resources::LinkedSite;
    let origin = std::path::Path::new("peers");
    let parse = |b: &[u8]| {
        std::str::from_utf8(b)
            .ok()
            .and_then(|t| crate::resources::from_yaml::<LinkedSite>(t, origin).ok())
    };
    let (f, a) = (parse(folder)?, parse(api)?);
    if a.spec.revoked || !f.spec.revoked {
        return Some(api.to_vec());
    }
    let mut merged = a;
    merged.spec.revoked = true;
    merged.spec.revoked_at = f.spec.revoked_at;
    Some(crate::resources::to_yaml(&merged).into_bytes())
}

/// Whether an item may be written into the folder: a file name, and a resource this version
/// reads. A Secret that fails is reported and left alone; it never stops the site.
pub fn check(item: &Item, value: &[u8]) -> Result<(), String> {
    let (kind, name) = item;
    crate::resources::validate_name(kind.label(), name).map_err(|e| e.to_string())?;
    let text = std::str::from_utf8(value).map_err(|_| "not UTF-8 text".to_string())?;
    let origin = std::path::Path::new(kind.data_key());
    match kind {
        Kind::Link => crate::resources::from_yaml::<crate::resources::Link>(text, origin)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Kind::Peer => crate::resources::from_yaml::<crate::resources::LinkedSite>(text, origin)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Kind::Grant => skiff_certs::AccessGrant::from_yaml(text)
            .map(|_| ())
            .map_err(|e| format!("{}: {e}", kind.data_key())),
    }
}

/// File of the base, in the site folder (0600: it holds copies of the mirrored secrets).
const BASE_FILE: &str = "mirror-base.json";

/// The base saved by the last pass in this folder, if any (a container restarted in the same
/// pod keeps its emptyDir, and with it what the API has not seen yet).
pub fn load_base(folder: &SiteFolder) -> Result<Option<Blobs>, SiteError> {
    let path = folder.root().join(BASE_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SiteError::io("read", &path, e)),
    };
    let map: BTreeMap<String, String> =
        serde_json::from_str(&text).map_err(|e| SiteError::BadResource {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    let mut out = Blobs::new();
    for (key, value) in map {
        let Some((label, name)) = key.split_once('/') else {
            continue;
        };
        if let Some(kind) = Kind::from_label(label) {
            out.insert((kind, name.to_string()), value.into_bytes());
        }
    }
    Ok(Some(out))
}

/// Saves the base for [`load_base`].
pub fn save_base(folder: &SiteFolder, base: &Blobs) -> Result<(), SiteError> {
    let map: BTreeMap<String, String> = base
        .iter()
        .map(|((kind, name), v)| {
            (
                format!("{}/{name}", kind.label()),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect();
    let text = serde_json::to_string(&map).expect("strings serialise");
    write_atomic(&folder.root().join(BASE_FILE), text.as_bytes(), SECRET_MODE)
}

/// The base after some steps failed: a failed item keeps its old base, so the next pass
/// still sees its change on the side it came from (a folder change is never mistaken for
/// one from the API); items whose steps ran take their new state.
pub fn settle(base: &Blobs, mut next: Blobs, failed: &BTreeSet<Item>) -> Blobs {
    for item in failed {
        match base.get(item) {
            Some(v) => {
                next.insert(item.clone(), v.clone());
            }
            None => {
                next.remove(item);
            }
        }
    }
    next
}

/// The mirrored files of the folder.
pub fn read_folder(folder: &SiteFolder) -> Result<Blobs, SiteError> {
    let mut out = Blobs::new();
    for kind in Kind::ALL {
        for path in yaml_files(&kind.dir(folder))? {
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            out.insert((kind, name.to_string()), read_text(&path)?.into_bytes());
        }
    }
    Ok(out)
}

/// Writes or removes one item in the folder (files 0600: links name a client certificate,
/// grants hold token codes).
pub fn write_folder(
    folder: &SiteFolder,
    item: &Item,
    value: Option<&[u8]>,
) -> Result<(), SiteError> {
    let (kind, name) = item;
    crate::resources::validate_name(kind.label(), name)?;
    let dir = kind.dir(folder);
    let path = dir.join(format!("{name}.yaml"));
    match value {
        Some(v) => {
            std::fs::create_dir_all(&dir).map_err(|e| SiteError::io("create", &dir, e))?;
            write_atomic(&path, v, SECRET_MODE)
        }
        None => remove_file(&path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blobs(items: &[(Kind, &str, &str)]) -> Blobs {
        items
            .iter()
            .map(|(k, n, v)| ((*k, n.to_string()), v.as_bytes().to_vec()))
            .collect()
    }

    fn item(k: Kind, n: &str) -> Item {
        (k, n.to_string())
    }

    #[test]
    fn in_sync_means_no_steps() {
        let s = blobs(&[(Kind::Link, "east", "a"), (Kind::Grant, "g", "b")]);
        let (steps, next) = plan(&s, &s, &s);
        assert!(steps.is_empty());
        assert_eq!(next, s);
    }

    #[test]
    fn a_change_in_the_folder_goes_to_the_api() {
        let base = blobs(&[(Kind::Grant, "g", "unspent"), (Kind::Link, "old", "x")]);
        let folder = blobs(&[(Kind::Grant, "g", "spent"), (Kind::Peer, "p1", "id")]);
        let (steps, next) = plan(&base, &folder, &base);
        assert_eq!(steps.len(), 3, "{steps:?}");
        assert!(steps.contains(&Step::RemoveFromApi(item(Kind::Link, "old"))));
        assert!(steps.contains(&Step::ToApi(item(Kind::Grant, "g"), b"spent".to_vec())));
        assert!(steps.contains(&Step::ToApi(item(Kind::Peer, "p1"), b"id".to_vec())));
        assert_eq!(next, folder);
    }

    #[test]
    fn a_change_in_the_api_goes_to_the_folder() {
        let base = blobs(&[(Kind::Link, "east", "v1"), (Kind::Link, "gone", "x")]);
        let api = blobs(&[(Kind::Link, "east", "v2"), (Kind::Link, "new", "n")]);
        let (steps, next) = plan(&base, &base, &api);
        assert_eq!(steps.len(), 3);
        assert!(steps.contains(&Step::ToFolder(item(Kind::Link, "east"), b"v2".to_vec())));
        assert!(steps.contains(&Step::ToFolder(item(Kind::Link, "new"), b"n".to_vec())));
        assert!(steps.contains(&Step::RemoveFromFolder(item(Kind::Link, "gone"))));
        assert_eq!(next, api);
    }

    #[test]
    fn when_both_changed_the_api_wins() {
        let base = blobs(&[(Kind::Grant, "g", "v1")]);
        let folder = blobs(&[(Kind::Grant, "g", "folder")]);
        let api = blobs(&[(Kind::Grant, "g", "api")]);
        let (steps, next) = plan(&base, &folder, &api);
        assert_eq!(
            steps,
            vec![Step::ToFolder(item(Kind::Grant, "g"), b"api".to_vec())]
        );
        assert_eq!(next, api);
        // Deleted in the API while changed in the folder: deleted.
        let (steps, next) = plan(&base, &folder, &Blobs::new());
        assert_eq!(steps, vec![Step::RemoveFromFolder(item(Kind::Grant, "g"))]);
        assert!(next.is_empty());
    }

    #[test]
    fn the_same_change_on_both_sides_needs_no_step() {
        let base = blobs(&[(Kind::Link, "l", "v1")]);
        let both = blobs(&[(Kind::Link, "l", "v2")]);
        let (steps, next) = plan(&base, &both, &both);
        assert!(steps.is_empty());
        assert_eq!(next, both);
    }

    #[test]
    fn at_start_the_api_is_the_record() {
        // A pod starts with base = its folder: whatever the folder holds that the API does
        // not (a Secret deleted while the pod was down) goes, and the API's items come back.
        let api = blobs(&[(Kind::Link, "l", "v"), (Kind::Peer, "p", "q")]);
        let stale = blobs(&[(Kind::Link, "l", "old"), (Kind::Grant, "deleted", "x")]);
        let (steps, next) = plan(&stale, &stale, &api);
        assert_eq!(steps.len(), 3, "{steps:?}");
        assert!(steps.contains(&Step::ToFolder(item(Kind::Link, "l"), b"v".to_vec())));
        assert!(steps.contains(&Step::ToFolder(item(Kind::Peer, "p"), b"q".to_vec())));
        assert!(steps.contains(&Step::RemoveFromFolder(item(Kind::Grant, "deleted"))));
        assert_eq!(next, api);
        // An empty folder (a new emptyDir) gets everything.
        let (steps, next) = plan(&Blobs::new(), &Blobs::new(), &api);
        assert_eq!(steps.len(), 2);
        assert_eq!(next, api);
    }

    fn grant(made: u32, window_secs: u64) -> Vec<u8> {
        let mut g = skiff_certs::AccessGrant::new(
            "g",
            std::time::Duration::from_secs(window_secs),
            2,
            1,
            time::macros::datetime!(2026-11-25 12:00 UTC),
        );
        g.spec.code = "one-code-for-every-version".into();
        for _ in 0..made {
            g.spend();
        }
        g.to_yaml().into_bytes()
    }

    fn peer(serial: &str, revoked: bool) -> Vec<u8> {
        let id: skiff_certs::SiteId = "0123456789abcdef0123456789abcdef".parse().unwrap();
        let site = crate::resources::LinkedSite::new(crate::resources::LinkedSiteSpec {
            site_id: id,
            site_name: "b".into(),
            grant: "g".into(),
            certificate_serial: serial.into(),
            key_fingerprint: "k".into(),
            linked_at: String::new(),
            revoked,
            revoked_at: revoked.then(|| "2026-11-26T02:00:00Z".into()),
            renewed: false,
            replaced_certificates: Vec::new(),
            previous_certificate_serial: None,
            previous_serial_valid_until: None,
        });
        crate::resources::to_yaml(&site).into_bytes()
    }

    #[test]
    fn a_revocation_is_not_lost_to_a_concurrent_change() {
        let it = item(Kind::Peer, "0123456789abcdef0123456789abcdef");
        let base: Blobs = [(it.clone(), peer("1", false))].into();
        // Revoked in the folder while a renewal on another replica changed the Secret.
        let folder: Blobs = [(it.clone(), peer("1", true))].into();
        let api: Blobs = [(it.clone(), peer("2", false))].into();
        let (_, next) = plan(&base, &folder, &api);
        assert_eq!(next[&it], peer("2", true));
        // An undo on one side alone goes through.
        let (steps, next) = plan(&folder, &base, &folder);
        assert_eq!(next[&it], peer("1", false));
        assert_eq!(steps, vec![Step::ToApi(it.clone(), peer("1", false))]);
    }

    #[test]
    fn a_spent_grant_is_never_unspent() {
        let it = item(Kind::Grant, "g");
        let unspent = grant(0, 900);
        let spent = grant(1, 900);
        let base: Blobs = [(it.clone(), unspent.clone())].into();
        let folder: Blobs = [(it.clone(), spent.clone())].into();
        // An operator restores an old backup of the Secret with a longer window while the
        // site spends the grant: the API's version, with the spend kept, goes to both sides.
        let restored: Blobs = [(it.clone(), grant(0, 3600))].into();
        let (steps, next) = plan(&base, &folder, &restored);
        let merged = next[&it].clone();
        let text = String::from_utf8(merged.clone()).unwrap();
        assert!(text.contains("redemptionsMade: 1"), "{text}");
        assert!(
            text.contains("expirationWindow: 1h") || text.contains("3600"),
            "{text}"
        );
        assert_eq!(
            steps,
            vec![
                Step::ToFolder(it.clone(), merged.clone()),
                Step::ToApi(it.clone(), merged)
            ]
        );
        // A stale base (a step that failed) cannot make the API's unspent copy win.
        let (steps, next) = plan(&Blobs::new(), &folder, &[(it.clone(), unspent)].into());
        assert_eq!(steps, vec![Step::ToApi(it.clone(), spent.clone())]);
        assert_eq!(next[&it], spent);
    }

    #[test]
    fn a_failed_step_keeps_its_items_old_base() {
        // Pass N: a new link goes to the API, a new grant fails to.
        let (l, g) = (item(Kind::Link, "l"), item(Kind::Grant, "g"));
        let folder: Blobs = [(l.clone(), b"link".to_vec()), (g.clone(), grant(0, 900))].into();
        let (steps, next) = plan(&Blobs::new(), &folder, &Blobs::new());
        assert_eq!(steps.len(), 2);
        let base = settle(&Blobs::new(), next, &[g.clone()].into());
        assert_eq!(base.get(&l).map(Vec::as_slice), Some(&b"link"[..]));
        assert!(!base.contains_key(&g));
        // Pass N+1: the API has the link only; the grant is still the folder's to push.
        let api: Blobs = [(l.clone(), b"link".to_vec())].into();
        let (steps, _) = plan(&base, &folder, &api);
        assert_eq!(steps, vec![Step::ToApi(g, grant(0, 900))]);
    }

    #[test]
    fn items_are_checked_before_they_reach_the_folder() {
        assert!(check(&item(Kind::Grant, "g"), &grant(0, 900)).is_ok());
        let err = check(
            &item(Kind::Link, "l"),
            b"apiVersion: skiff.io/v1alpha1\nkind: Link\n",
        )
        .unwrap_err();
        assert!(err.contains("link.yaml"), "{err}");
        assert!(check(&item(Kind::Peer, "../../etc"), b"x").is_err());
        assert!(check(&item(Kind::Grant, "g"), &[0xff, 0xfe]).is_err());
    }

    #[test]
    fn the_base_survives_in_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let folder = SiteFolder::new(dir.path());
        assert_eq!(load_base(&folder).unwrap(), None);
        let base = blobs(&[(Kind::Link, "l", "a: 1\n"), (Kind::Peer, "p", "b")]);
        save_base(&folder, &base).unwrap();
        assert_eq!(load_base(&folder).unwrap(), Some(base));
    }

    #[test]
    fn folder_side_writes_and_removes_files_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let folder = SiteFolder::new(dir.path());
        let it = item(Kind::Grant, "g1");
        write_folder(&folder, &it, Some(b"code: x\n")).unwrap();
        let read = read_folder(&folder).unwrap();
        assert_eq!(read.get(&it).map(Vec::as_slice), Some(&b"code: x\n"[..]));
        let mode = std::fs::metadata(folder.grants_dir().join("g1.yaml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        write_folder(&folder, &it, None).unwrap();
        assert!(read_folder(&folder).unwrap().is_empty());
        // A name from the API that is not a file name is refused, never written.
        assert!(write_folder(&folder, &item(Kind::Link, "../x"), Some(b"x")).is_err());
    }
}
