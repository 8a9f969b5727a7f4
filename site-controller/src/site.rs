//! Site-folder operations behind the CLI verbs: create, load and delete a site; store links,
//! grants and linked sites. Every write is atomic; the resource's YAML is written last, so it
//! is the commit point (a killed command leaves the old state or the new one).

use std::fs;
use std::path::Path;

use skiff_certs::{AccessGrant, SiteCa, SiteId};

use crate::SiteError;
use crate::folder::{
    PUBLIC_MODE, SECRET_MODE, SiteFolder, read_text, remove_file, write_atomic, yaml_files,
};
use crate::resources::{
    Link, LinkedSite, Resource, Site, SiteSpec, from_yaml, to_yaml, validate_name,
};

/// What `skiff site create` was asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SiteOptions {
    /// Accept links and serve token redemptions.
    pub link_access: bool,
    /// Hosts other sites use to reach this one (tokens carry them).
    pub link_hosts: Vec<String>,
    /// Port of link access (0: any free port at each start).
    pub link_port: Option<u16>,
    /// Edge mode: dial out only, never transit.
    pub edge: bool,
}

/// A site read from its folder, with its CA and router certificate.
pub struct LoadedSite {
    /// The Site resource.
    pub site: Site,
    /// The site CA.
    pub ca: SiteCa,
    /// The router's certificate (PEM; the file also holds the key, which PEM readers skip).
    pub router_cert_pem: String,
    /// The router's key (PEM; the file also holds the certificate).
    pub router_key_pem: String,
}

impl LoadedSite {
    /// The site's name.
    pub fn name(&self) -> &str {
        &self.site.metadata.name
    }
    /// The site's id.
    pub fn id(&self) -> SiteId {
        self.site.spec.id
    }
}

/// What `create_site` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// A new site, with a new id and CA.
    New,
    /// The site existed; its settings were updated and its identity kept.
    Updated,
}

/// Creates a site in `folder`, or updates the settings of the site of the same name there
/// (keeping its id, CA and links). A folder holding a site of another name is refused.
pub fn create_site(
    folder: &SiteFolder,
    name: &str,
    opts: &SiteOptions,
) -> Result<(Site, Created), SiteError> {
    create_site_with_id(folder, name, opts, None)
}

/// [`create_site`], with the new site's id chosen (`skiff site create NAME --id ID`: the id an
/// offline link file was made for) instead of a random one. A folder holding a site with
/// another id is refused.
pub fn create_site_with_id(
    folder: &SiteFolder,
    name: &str,
    opts: &SiteOptions,
    want_id: Option<SiteId>,
) -> Result<(Site, Created), SiteError> {
    validate_name("site", name)?;
    check_site_options(opts).map_err(|p| SiteError::InvalidArgument(p.to_string()))?;
    if want_id == Some(SiteId::from_bytes([0; 16])) {
        return Err(SiteError::InvalidArgument(format!(
            "--id {} is the nil id (all zeros), which no site may have: give the id skiff link generate printed for this site, or leave --id out for a random one",
            SiteId::from_bytes([0; 16])
        )));
    }
    let existing = if folder.exists() {
        let site = load_site_resource(folder)?;
        if site.metadata.name != name {
            return Err(SiteError::SiteExists {
                dir: folder.root().to_path_buf(),
                existing: site.metadata.name,
            });
        }
        if let Some(id) = want_id
            && id != site.spec.id
        {
            return Err(SiteError::InvalidArgument(format!(
                "{} holds site {name:?} with id {}, not {id}: a site's id is fixed when it is made; create the site for id {id} in another folder (--dir), or delete this one first (skiff site delete: its links are lost)",
                folder.root().display(),
                site.spec.id
            )));
        }
        Some(site)
    } else {
        None
    };
    folder.create_dirs()?;
    let (id, created, ca) = match &existing {
        Some(site) => (site.spec.id, Created::Updated, load_ca(folder)?),
        None => {
            let id = want_id.unwrap_or_else(SiteId::random);
            let ca = SiteCa::generate(name, id)?;
            write_atomic(&folder.ca_key_file(), ca.key_pem().as_bytes(), SECRET_MODE)?;
            write_atomic(
                &folder.ca_cert_file(),
                ca.cert_pem().as_bytes(),
                PUBLIC_MODE,
            )?;
            (id, Created::New, ca)
        }
    };
    let spec = site_spec(id, opts, existing.as_ref());
    if !folder.link_key_file().is_file() {
        let key = skiff_certs::generate_link_key()?;
        write_atomic(&folder.link_key_file(), key.as_bytes(), SECRET_MODE)?;
    }
    // Certificate and key in one file: one atomic write, so they always match.
    let router = ca.issue_router_cert(id, &spec.link_hosts)?;
    let router_key = router.key_pem.as_deref().unwrap_or_default();
    let pem = format!("{}{}", router.cert_pem, router_key);
    write_atomic(&folder.router_file(), pem.as_bytes(), SECRET_MODE)?;
    let site = Site::new(name, spec);
    write_atomic(&folder.site_file(), to_yaml(&site).as_bytes(), PUBLIC_MODE)?;
    Ok((site, created))
}

/// A setting of [`SiteOptions`] that no site can have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SiteOptionsProblem {
    /// Edge mode and link access together.
    #[error("an edge site cannot accept links: drop --edge or --enable-link-access")]
    EdgeAcceptsLinks,
    /// A link host that is not a host name or IP address.
    #[error("--link-host {0:?} is not a host name or IP address (give the port with --link-port)")]
    BadLinkHost(String),
}

/// Checks the settings `create_site` would store, writing nothing.
pub fn check_site_options(opts: &SiteOptions) -> Result<(), SiteOptionsProblem> {
    if opts.edge && opts.link_access {
        return Err(SiteOptionsProblem::EdgeAcceptsLinks);
    }
    for h in &opts.link_hosts {
        if h.is_empty()
            || h.contains(['/', ' '])
            || (h.contains(':') && h.parse::<std::net::Ipv6Addr>().is_err())
            || !skiff_certs::certifiable_host(h)
        {
            return Err(SiteOptionsProblem::BadLinkHost(h.clone()));
        }
    }
    Ok(())
}

/// The settings `create_site` stores for `opts` (checked with [`check_site_options`]) at a
/// site of id `id`, whose current resource is `existing` (its link port and certificate
/// overlap are kept unless given). Pure: what `skiff apply` compares with the site.
pub fn site_spec(id: SiteId, opts: &SiteOptions, existing: Option<&Site>) -> SiteSpec {
    let link_hosts = if opts.link_hosts.is_empty() && opts.link_access {
        vec!["127.0.0.1".to_string()]
    } else {
        opts.link_hosts.clone()
    };
    SiteSpec {
        id,
        link_access: opts.link_access,
        link_hosts,
        link_port: opts
            .link_port
            .or(existing.map(|s| s.spec.link_port))
            .unwrap_or(crate::resources::DEFAULT_LINK_PORT),
        edge: opts.edge,
        certificate_overlap: existing.and_then(|s| s.spec.certificate_overlap.clone()),
    }
}

fn load_site_resource(folder: &SiteFolder) -> Result<Site, SiteError> {
    if !folder.exists() {
        return Err(SiteError::NoSite {
            dir: folder.root().to_path_buf(),
        });
    }
    let path = folder.site_file();
    from_yaml(&read_text(&path)?, &path)
}

fn load_ca(folder: &SiteFolder) -> Result<SiteCa, SiteError> {
    Ok(SiteCa::from_pem(
        &read_text(&folder.ca_cert_file())?,
        &read_text(&folder.ca_key_file())?,
    )?)
}

/// Reads the site of `folder` with its CA and router certificate.
pub fn load_site(folder: &SiteFolder) -> Result<LoadedSite, SiteError> {
    let site = load_site_resource(folder)?;
    let router_pem = read_text(&folder.router_file())?;
    Ok(LoadedSite {
        site,
        ca: load_ca(folder)?,
        router_cert_pem: router_pem.clone(),
        router_key_pem: router_pem,
    })
}

/// Deletes the site: every file skiff wrote in the folder, then the folder if it is empty.
/// Refused while the site runs. Files skiff did not write are left alone.
pub fn delete_site(folder: &SiteFolder) -> Result<String, SiteError> {
    let site = load_site_resource(folder)?;
    // Holding the run lock for the whole delete: a `site run` cannot start half way.
    let lock = folder.lock_for_run()?;
    let dirs = [
        folder.links_dir(),
        folder.listeners_dir(),
        folder.connectors_dir(),
        folder.grants_dir(),
        folder.peers_dir(),
    ];
    // A sub-folder swapped for a symbolic link (by the user of a service's folder, which root
    // deletes) would have its target's files removed: refused before anything is removed,
    // and again just before each folder is emptied.
    for dir in &dirs {
        if let Ok(meta) = fs::symlink_metadata(dir)
            && !meta.is_dir()
        {
            return Err(crate::folder::unsafe_entry(dir, &meta));
        }
    }
    // site.yaml first: from here on the folder no longer holds a site, whatever follows.
    remove_file(&folder.site_file())?;
    for dir in dirs {
        match fs::symlink_metadata(&dir) {
            Ok(meta) if !meta.is_dir() => return Err(crate::folder::unsafe_entry(&dir, &meta)),
            Ok(_) => {}
            Err(_) => continue,
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                let plain = e.file_type().is_ok_and(|t| t.is_file());
                let ours =
                    name.ends_with(".yaml") || name.ends_with(".key") || name.ends_with(".tmp");
                if plain && ours {
                    remove_file(&e.path())?;
                }
            }
        }
        let _ = fs::remove_dir(&dir);
    }
    for f in [
        folder.ca_cert_file(),
        folder.ca_key_file(),
        folder.router_file(),
        folder.link_key_file(),
        folder.admin_socket(),
        folder.renew_lock_file(),
    ] {
        remove_file(&f)?;
    }
    drop(lock);
    remove_file(&folder.lock_file())?;
    let _ = fs::remove_dir(folder.root());
    Ok(site.metadata.name)
}

/// The links this site dials, each with the private key its certificate certifies: the
/// site's `link.key`, or the link's own `links/NAME.key` (an offline link).
pub fn list_links(folder: &SiteFolder) -> Result<Vec<(Link, String)>, SiteError> {
    let paths = yaml_files(&folder.links_dir())?;
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    let mut site_key = None;
    let mut out = Vec::new();
    for path in paths {
        let link: Link = from_yaml(&read_text(&path)?, &path)?;
        let own = folder.link_own_key_file(&link.metadata.name);
        let key = if own.is_file() {
            read_text(&own)?
        } else {
            match &site_key {
                Some(k) => String::clone(k),
                None => {
                    let k = read_text(&folder.link_key_file())?;
                    site_key = Some(k.clone());
                    k
                }
            }
        };
        out.push((link, key));
    }
    Ok(out)
}

/// The site's link identity key (PEM).
pub fn link_key(folder: &SiteFolder) -> Result<String, SiteError> {
    read_text(&folder.link_key_file())
}

/// Stores a link (one atomic write: the commit point). A `clientKey` in the resource goes to
/// `links/NAME.key` (0600), written first; the YAML never holds it.
pub fn save_link(folder: &SiteFolder, link: &Link) -> Result<(), SiteError> {
    validate_name("link", &link.metadata.name)?;
    folder.create_dirs()?;
    let own = folder.link_own_key_file(&link.metadata.name);
    let mut stored = link.clone();
    match stored.spec.client_key.take() {
        Some(key) => write_atomic(&own, key.as_bytes(), SECRET_MODE)?,
        None => remove_file(&own)?,
    }
    if stored.proxy_has_credentials() {
        // The proxy's password is in the file: readable by the site's user only.
        let path = folder
            .links_dir()
            .join(format!("{}.yaml", stored.metadata.name));
        return write_atomic(&path, to_yaml(&stored).as_bytes(), SECRET_MODE);
    }
    save_resource(folder, &folder.links_dir(), &stored)
}

/// Removes a link (and its own key, if it has one).
pub fn delete_link(folder: &SiteFolder, name: &str) -> Result<(), SiteError> {
    delete_resource(&folder.links_dir(), "link", name)?;
    remove_file(&folder.link_own_key_file(name))
}

/// Why a Link resource given by a user cannot be dialled by this site: the field at fault
/// (`spec.clientCertificate`) and what is wrong with it, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkProblem {
    /// The field at fault, as written in the resource.
    pub field: &'static str,
    /// What is wrong, and what to do.
    pub reason: String,
}

impl std::fmt::Display for LinkProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// What [`check_link`] checks a link against: the site, its `link.key`, and whether
/// Kubernetes runs it.
pub struct LinkCheckSite<'a> {
    /// The site.
    pub site: &'a LoadedSite,
    /// The site's `link.key` (PEM).
    pub link_key: &'a str,
    /// The Kubernetes namespace running the site, if one does.
    pub kubernetes_namespace: Option<String>,
}

/// Checks that a Link resource given by a user (`skiff apply`, an offline link file) can be
/// dialled by this site, writing nothing. Its certificate must name this site's id and be
/// signed by `peerCa`; it must certify `clientKey` when the resource has one (an offline
/// link), else this site's `link.key` (a link read back with `skiff get links`); its proxy
/// must be usable. A Kubernetes site refuses offline links. Every refusal names its field,
/// says which check failed and what to do.
pub fn check_link(at: &LinkCheckSite<'_>, link: &Link) -> Result<(), LinkProblem> {
    let site = at.site;
    let name = &link.metadata.name;
    let bad = |field: &'static str, reason: String| LinkProblem { field, reason };
    validate_name("link", name).map_err(|e| bad("metadata.name", e.to_string()))?;
    // A Kubernetes site's links live in Secrets (kubernetes::mirror), which carry
    // `links/NAME.yaml` only: the link's own key would be lost at the next pod start.
    if link.spec.client_key.is_some()
        && let Some(ns) = &at.kubernetes_namespace
    {
        return Err(bad(
            "spec.clientKey",
            format!(
                "it is an offline link (it carries its own key), and this site runs in Kubernetes (namespace {ns}), whose Secrets would not keep that key across restarts: link this site with a token instead (skiff token issue at the other site)"
            ),
        ));
    }
    let cert = skiff_certs::first_certificate(&link.spec.client_certificate).map_err(|e| {
        bad(
            "spec.clientCertificate",
            format!("spec.clientCertificate is unusable: {e}"),
        )
    })?;
    let for_site = skiff_certs::peer_site_id(&cert).map_err(|e| {
        bad(
            "spec.clientCertificate",
            format!("spec.clientCertificate names no site: {e}"),
        )
    })?;
    if for_site != site.id() {
        return Err(bad(
            "spec.clientCertificate",
            format!(
                "its certificate was made for site {for_site}, but this site is {} ({}); \
                 make a link for this site at the other site (skiff token issue, or skiff link \
                 generate FILE --site-id {})",
                site.name(),
                site.id(),
                site.id()
            ),
        ));
    }
    if link.spec.peer_site_id == site.id() {
        return Err(bad(
            "spec.peerSiteId",
            "it points at this site itself".into(),
        ));
    }
    let peer_ca = skiff_certs::first_certificate(&link.spec.peer_ca)
        .map_err(|e| bad("spec.peerCa", format!("spec.peerCa is unusable: {e}")))?;
    signed_by(&cert, peer_ca).map_err(|why| {
        bad(
            "spec.clientCertificate",
            format!(
                "spec.clientCertificate is not a valid link certificate signed by spec.peerCa ({why}): the file was altered or made for another site; make a new one at site {} ({})",
                link.spec.peer_site_name, link.spec.peer_site_id
            ),
        )
    })?;
    if link.spec.endpoints.is_empty() {
        return Err(bad(
            "spec.endpoints",
            "spec.endpoints is empty: it needs at least one host:port".into(),
        ));
    }
    let certified = skiff_certs::key_fingerprint(&cert).map_err(|e| {
        bad(
            "spec.clientCertificate",
            format!("spec.clientCertificate is unusable: {e}"),
        )
    })?;
    match &link.spec.client_key {
        Some(key) => {
            let held = skiff_certs::private_key_fingerprint(key)
                .map_err(|e| bad("spec.clientKey", format!("spec.clientKey is unusable: {e}")))?;
            if held != certified {
                return Err(bad(
                    "spec.clientKey",
                    "its certificate does not certify spec.clientKey; the file was altered: generate the link again".into(),
                ));
            }
        }
        None => {
            let held = skiff_certs::private_key_fingerprint(at.link_key).map_err(|e| {
                bad(
                    "spec.clientCertificate",
                    format!("this site's link.key is unusable: {e}"),
                )
            })?;
            if held != certified {
                // The certificate names this site but another key: a link that had its own
                // key (an offline link), deleted with it.
                return Err(bad(
                    "spec.clientCertificate",
                    format!(
                        "link {name} is an offline link whose key (links/{name}.key) is gone (skiff delete removes it, and skiff get never shows it): ask site {} ({}) to generate a new link file (after revoking the old id there: skiff link revoke {})",
                        link.spec.peer_site_name,
                        link.spec.peer_site_id,
                        site.id()
                    ),
                ));
            }
        }
    }
    if link.spec.proxy.is_some() {
        let field = if link.spec.transport == "quic" {
            "spec.transport"
        } else {
            "spec.proxy"
        };
        link.proxy_config().map_err(|e| {
            let reason = e.to_string();
            let own = format!("link {name:?}: ");
            bad(
                field,
                reason.strip_prefix(&own).unwrap_or(&reason).to_string(),
            )
        })?;
    }
    Ok(())
}

/// Checks a Link resource given by a user ([`check_link`]), then stores it ([`save_link`]).
pub fn install_link(folder: &SiteFolder, link: &Link) -> Result<(), SiteError> {
    let site = load_site(folder)?;
    let key = link_key(folder)?;
    let at = LinkCheckSite {
        site: &site,
        link_key: &key,
        kubernetes_namespace: folder.kubernetes_namespace(),
    };
    check_link(&at, link).map_err(|p| {
        SiteError::InvalidArgument(format!("link {:?}: {}", link.metadata.name, p.reason))
    })?;
    save_link(folder, link)
}

/// Whether `cert` is a client certificate signed by `ca`, valid now (signature, validity
/// period, client-auth use): what the accepting site's link port checks.
fn signed_by(
    cert: &rustls_pki_types::CertificateDer<'static>,
    ca: rustls_pki_types::CertificateDer<'static>,
) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ca)
        .map_err(|e| format!("the CA is unusable: {e}"))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
            .build()
            .map_err(|e| format!("the CA is unusable: {e}"))?;
    verifier
        .verify_client_cert(cert, &[], rustls_pki_types::UnixTime::now())
        .map(|_| ())
        .map_err(|e| match e {
            rustls::Error::InvalidCertificate(c) => format!("{c:?}"),
            other => other.to_string(),
        })
}

/// Every resource of one kind in `dir`, sorted by name.
pub fn list_resources<R: Resource>(dir: &Path) -> Result<Vec<R>, SiteError> {
    let mut out = Vec::new();
    for path in yaml_files(dir)? {
        out.push(from_yaml(&read_text(&path)?, &path)?);
    }
    Ok(out)
}

/// Stores a resource as `dir/NAME.yaml` (one atomic write: the commit point).
pub fn save_resource<R: Resource>(
    folder: &SiteFolder,
    dir: &Path,
    resource: &R,
) -> Result<(), SiteError> {
    let what = match R::KIND {
        "Listener" => "listener",
        "Connector" => "connector",
        _ => "link",
    };
    validate_name(what, resource.name())?;
    folder.create_dirs()?;
    let path = dir.join(format!("{}.yaml", resource.name()));
    write_atomic(&path, to_yaml(resource).as_bytes(), PUBLIC_MODE)
}

/// Removes `dir/NAME.yaml`; a missing one is a NotFound error naming `what`.
pub fn delete_resource(dir: &Path, what: &'static str, name: &str) -> Result<(), SiteError> {
    validate_name(what, name)?;
    let path = dir.join(format!("{name}.yaml"));
    if !path.is_file() {
        return Err(SiteError::NotFound {
            what,
            name: name.into(),
        });
    }
    remove_file(&path)
}

/// The grants issued here.
pub fn list_grants(folder: &SiteFolder) -> Result<Vec<AccessGrant>, SiteError> {
    let mut out = Vec::new();
    for path in yaml_files(&folder.grants_dir())? {
        let text = read_text(&path)?;
        out.push(
            AccessGrant::from_yaml(&text).map_err(|e| SiteError::BadResource {
                path: path.clone(),
                reason: e.to_string(),
            })?,
        );
    }
    Ok(out)
}

/// Stores a grant (0600: it holds the token's code).
pub fn save_grant(folder: &SiteFolder, grant: &AccessGrant) -> Result<(), SiteError> {
    folder.create_dirs()?;
    let path = folder
        .grants_dir()
        .join(format!("{}.yaml", grant.metadata.name));
    write_atomic(&path, grant.to_yaml().as_bytes(), SECRET_MODE)
}

/// The sites that redeemed a grant here.
pub fn list_linked_sites(folder: &SiteFolder) -> Result<Vec<LinkedSite>, SiteError> {
    list_resources(&folder.peers_dir())
}

/// Records a site that redeemed a grant here.
pub fn save_linked_site(folder: &SiteFolder, peer: &LinkedSite) -> Result<(), SiteError> {
    folder.create_dirs()?;
    let path = folder
        .peers_dir()
        .join(format!("{}.yaml", peer.spec.site_id));
    write_atomic(&path, to_yaml(peer).as_bytes(), PUBLIC_MODE)
}

/// Reissues the router certificate (router.pem) from the site CA when less than a third of
/// its validity is left (or it cannot be read), for the site's current link hosts; one atomic
/// write of certificate and key together. Returns the new certificate's serial, `None` when
/// nothing was due.
pub fn renew_router_certificate_if_due(folder: &SiteFolder) -> Result<Option<String>, SiteError> {
    let current = read_text(&folder.router_file())?;
    if !crate::token::renewal_due(&current, time::OffsetDateTime::now_utc()) {
        return Ok(None);
    }
    let site = load_site_resource(folder)?;
    let ca = load_ca(folder)?;
    let router = ca.issue_router_cert(site.spec.id, &site.spec.link_hosts)?;
    let router_key = router.key_pem.as_deref().unwrap_or_default();
    let pem = format!("{}{}", router.cert_pem, router_key);
    write_atomic(&folder.router_file(), pem.as_bytes(), SECRET_MODE)?;
    Ok(Some(router.serial))
}

/// The record of site `id` in `peers/`, if it linked here.
pub fn load_linked_site(folder: &SiteFolder, id: SiteId) -> Result<Option<LinkedSite>, SiteError> {
    let path = folder.peers_dir().join(format!("{id}.yaml"));
    if !path.is_file() {
        return Ok(None);
    }
    Ok(Some(from_yaml(&read_text(&path)?, &path)?))
}

/// Finds the linked site `who` names: its name, its id, or a prefix of its id (8 characters
/// or more). Unknown or ambiguous: an error listing the linked sites.
pub fn find_linked_site(folder: &SiteFolder, who: &str) -> Result<LinkedSite, SiteError> {
    let all = list_linked_sites(folder)?;
    let by_id: Vec<&LinkedSite> = all
        .iter()
        .filter(|s| {
            let id = s.spec.site_id.to_string();
            id == who || (who.len() >= 8 && id.starts_with(who))
        })
        .collect();
    let matched_by_id = !by_id.is_empty();
    let found: Vec<&LinkedSite> = if matched_by_id {
        by_id
    } else {
        all.iter().filter(|s| s.spec.site_name == who).collect()
    };
    let listing = || {
        if all.is_empty() {
            "no site has linked to this one yet".to_string()
        } else {
            let names: Vec<String> = all
                .iter()
                .map(|s| {
                    format!(
                        "{} ({}{})",
                        s.spec.site_name,
                        s.spec.site_id,
                        if s.spec.revoked { ", revoked" } else { "" }
                    )
                })
                .collect();
            format!("the sites linked here are: {}", names.join(", "))
        }
    };
    match found.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(SiteError::InvalidArgument(format!(
            "no site named {who:?} (or with that id) has linked to this site; {}",
            listing()
        ))),
        many if matched_by_id => Err(SiteError::InvalidArgument(format!(
            "{} linked sites have an id starting with {who:?}: give more of the id; {}",
            many.len(),
            listing()
        ))),
        many => Err(SiteError::InvalidArgument(format!(
            "{} linked sites are named {who:?}: name one by its id (or its first 8 characters or more); {}",
            many.len(),
            listing()
        ))),
    }
}

/// Marks the linked site `who` (see [`find_linked_site`]) revoked in `peers/` (one atomic
/// write). Returns its record and whether it was revoked just now (`false`: it already was).
pub fn revoke_linked_site(folder: &SiteFolder, who: &str) -> Result<(LinkedSite, bool), SiteError> {
    let mut site = find_linked_site(folder, who)?;
    if site.spec.revoked {
        return Ok((site, false));
    }
    site.spec.revoked = true;
    site.spec.revoked_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .ok();
    save_linked_site(folder, &site)?;
    Ok((site, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> SiteOptions {
        SiteOptions {
            link_access: true,
            link_hosts: vec![],
            link_port: Some(0),
            edge: false,
        }
    }

    #[test]
    fn create_load_update_delete() {
        skiff_certs::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let folder = SiteFolder::new(dir.path().join("west"));
        let (site, how) = create_site(&folder, "west", &opts()).unwrap();
        assert_eq!(how, Created::New);
        assert_eq!(site.spec.link_hosts, ["127.0.0.1"]);
        let loaded = load_site(&folder).unwrap();
        assert_eq!(loaded.id(), site.spec.id);
        use std::os::unix::fs::PermissionsExt;
        for secret in [
            folder.ca_key_file(),
            folder.router_file(),
            folder.link_key_file(),
        ] {
            let mode = fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", secret.display());
        }

        // Same name again: settings change, identity stays.
        let mut o = opts();
        o.link_hosts = vec!["west.example.com".into()];
        let (again, how) = create_site(&folder, "west", &o).unwrap();
        assert_eq!(how, Created::Updated);
        assert_eq!(again.spec.id, site.spec.id);
        assert_eq!(
            load_site(&folder).unwrap().ca.cert_pem(),
            loaded.ca.cert_pem()
        );

        // Another name in the same folder is refused and changes nothing.
        let err = create_site(&folder, "east", &opts()).err().unwrap();
        assert!(matches!(err, SiteError::SiteExists { ref existing, .. } if existing == "west"));

        assert_eq!(delete_site(&folder).unwrap(), "west");
        assert!(!folder.root().exists());
        assert!(matches!(load_site(&folder), Err(SiteError::NoSite { .. })));
    }

    #[test]
    fn a_site_made_with_a_chosen_id_keeps_it_and_refuses_another() {
        skiff_certs::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let folder = SiteFolder::new(dir.path().join("b"));
        let id = SiteId::random();
        let (site, how) = create_site_with_id(&folder, "b", &opts(), Some(id)).unwrap();
        assert_eq!((site.spec.id, how), (id, Created::New));
        assert_eq!(load_site(&folder).unwrap().ca.site_id(), id);
        let (_, how) = create_site_with_id(&folder, "b", &opts(), Some(id)).unwrap();
        assert_eq!(how, Created::Updated);
        let other = SiteId::random();
        let err = create_site_with_id(&folder, "b", &opts(), Some(other))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains(&id.to_string()) && err.contains(&other.to_string()),
            "{err}"
        );
        assert_eq!(load_site(&folder).unwrap().id(), id);
    }

    /// A Link resource for the site `for_site`, signed by `ca`, carrying its own key.
    fn offline_link(ca: &SiteCa, for_site: SiteId) -> Link {
        let key = skiff_certs::generate_link_key().unwrap();
        let csr = skiff_certs::link_csr(for_site, "b", &key).unwrap();
        let (_, cert) = ca
            .sign_link_csr(&csr, std::time::Duration::from_secs(3600))
            .unwrap();
        let spec = serde_json::from_value(serde_json::json!({
            "peerSiteId": ca.site_id(),
            "peerSiteName": "a",
            "endpoints": ["127.0.0.1:1"],
            "peerCa": ca.cert_pem(),
            "clientCertificate": cert.cert_pem,
            "clientKey": key,
        }))
        .unwrap();
        Link::new("a", spec)
    }

    #[test]
    fn an_offline_link_keeps_its_key_apart_except_in_kubernetes() {
        skiff_certs::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let folder = SiteFolder::new(dir.path().join("b"));
        let (b, _) = create_site(&folder, "b", &opts()).unwrap();
        let ca = SiteCa::generate("a", SiteId::random()).unwrap();
        let link = offline_link(&ca, b.spec.id);

        fs::write(folder.kubernetes_marker(), "ns1\n").unwrap();
        let err = install_link(&folder, &link).err().unwrap().to_string();
        assert!(err.contains("Kubernetes") && err.contains("token"), "{err}");
        assert!(!folder.links_dir().join("a.yaml").exists());
        assert!(!folder.link_own_key_file("a").exists());

        fs::remove_file(folder.kubernetes_marker()).unwrap();
        install_link(&folder, &link).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let key_file = folder.link_own_key_file("a");
        let mode = fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let yaml = fs::read_to_string(folder.links_dir().join("a.yaml")).unwrap();
        assert!(!yaml.contains("PRIVATE KEY"), "{yaml}");
        let (listed, key) = list_links(&folder).unwrap().remove(0);
        assert_eq!(Some(key), link.spec.client_key);
        assert_eq!(listed.spec.client_certificate, link.spec.client_certificate);
    }

    #[test]
    fn a_proxied_link_with_transport_quic_is_refused_at_install() {
        skiff_certs::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let folder = SiteFolder::new(dir.path().join("b"));
        let (b, _) = create_site(&folder, "b", &opts()).unwrap();
        let ca = SiteCa::generate("a", SiteId::random()).unwrap();
        let mut link = offline_link(&ca, b.spec.id);
        link.spec.proxy = Some("http://proxy.example:3128".into());
        link.spec.transport = "quic".into();
        let err = install_link(&folder, &link).err().unwrap().to_string();
        assert!(err.contains("QUIC is UDP"), "{err}");
        assert!(!folder.links_dir().join("a.yaml").exists());
        assert!(!folder.link_own_key_file("a").exists());
        link.spec.proxy = Some("ftp://proxy.example:3128".into());
        link.spec.transport = "tls".into();
        let problem = check_link(
            &LinkCheckSite {
                site: &load_site(&folder).unwrap(),
                link_key: &link_key(&folder).unwrap(),
                kubernetes_namespace: None,
            },
            &link,
        )
        .unwrap_err();
        assert_eq!(problem.field, "spec.proxy", "{problem}");
        link.spec.transport = "auto".into();
        link.spec.proxy = Some("http://proxy.example:3128".into());
        install_link(&folder, &link).unwrap();
    }

    #[test]
    fn the_nil_id_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let folder = SiteFolder::new(dir.path().join("b"));
        let nil = SiteId::from_bytes([0; 16]);
        let err = create_site_with_id(&folder, "b", &opts(), Some(nil))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("nil id"), "{err}");
        assert!(!folder.exists());
    }

    #[test]
    fn delete_leaves_foreign_files_alone() {
        skiff_certs::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let folder = SiteFolder::new(dir.path());
        create_site(&folder, "west", &opts()).unwrap();
        fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        delete_site(&folder).unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("notes.txt")).unwrap(),
            "mine"
        );
        assert!(!folder.site_file().exists());
    }

    #[test]
    fn bad_options_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let folder = SiteFolder::new(dir.path());
        let mut o = opts();
        o.edge = true;
        assert!(create_site(&folder, "west", &o).is_err());
        let mut o = opts();
        o.link_hosts = vec!["host:80".into()];
        let err = create_site(&folder, "west", &o).err().unwrap();
        assert!(err.to_string().contains("--link-port"), "{err}");
        assert!(!folder.exists());
    }
}
