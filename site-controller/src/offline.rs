//! Offline links (`skiff link generate FILE`): for a site that cannot reach this site's grant
//! endpoint (air-gapped), this site signs a link certificate in advance, with a fresh key, for
//! the redeeming site's id, records that site as linked (as a redemption would), and writes
//! both, with its CA and link endpoints, into one `kind: Link` file. The redeeming site
//! installs the file without any network (`skiff token redeem FILE`, `skiff apply -f FILE`).
//!
//! The file is a bearer credential: it holds the private key, so whoever holds it can link as
//! that site id until the certificate expires or this site revokes the id. Tokens are safer
//! when the grant endpoint is reachable (their key never leaves the redeeming site).

use skiff_certs::SiteId;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::SiteError;
use crate::admin::admin_request;
use crate::folder::{PUBLIC_MODE, SiteFolder, write_atomic};
use crate::grant::{LINK_CERT_VALIDITY, join_host_port};
use crate::resources::{Link, LinkSpec, LinkedSite, LinkedSiteSpec, to_yaml, validate_name};
use crate::site::{load_linked_site, load_site};

/// The `grant` an offline link's LinkedSite record names (no grant was redeemed).
pub const OFFLINE_GRANT: &str = "offline";

/// What `skiff link generate` was asked for.
#[derive(Debug, Clone, Default)]
pub struct GenerateOptions {
    /// The redeeming site's id; `None`: a new id is allocated (the site is then created with
    /// `skiff site create NAME --id ID`).
    pub site_id: Option<SiteId>,
    /// The redeeming site's name as recorded here (default: `offline-<first 8 of its id>`).
    pub peer_name: Option<String>,
    /// The link's name at the redeeming site [default: this site's name].
    pub name: Option<String>,
    /// Cost of the link.
    pub cost: Option<u32>,
    /// `quic`, `tls` or `auto` [default: auto].
    pub transport: Option<String>,
}

/// An offline link made by [`prepare`], not yet recorded here: write [`OfflineLink::file`]
/// out, then [`commit`] it, then [`admit`] it.
#[derive(Debug, Clone)]
pub struct OfflineLink {
    /// The redeeming site's id.
    pub site_id: SiteId,
    /// Whether the id was allocated now (no site has it yet).
    pub new_site: bool,
    /// When the certificate expires (RFC 3339 UTC).
    pub expires: String,
    /// The link, with its key (`spec.clientKey`).
    pub link: Link,
    /// The record admitting the redeeming site here.
    pub record: LinkedSite,
    /// The file's text: `#` comments, then the Link document.
    pub file: String,
}

/// Signs an offline link for the site in `folder` (which must accept links) and returns it;
/// changes nothing. Refused when `opts.site_id` is this site's id or a site of that id is
/// linked here already (its key is bound to the id: a fresh key would not be admitted).
pub async fn prepare(
    folder: &SiteFolder,
    opts: &GenerateOptions,
) -> Result<OfflineLink, SiteError> {
    let transport = opts.transport.clone().unwrap_or_else(|| "auto".into());
    transport
        .parse::<skiff_router::link::TransportChoice>()
        .map_err(|_| {
            SiteError::InvalidArgument(format!(
                "--transport {transport:?} is not one of quic, tls, auto"
            ))
        })?;
    if let Some(n) = &opts.name {
        validate_name("link", n)?;
    }
    if let Some(n) = &opts.peer_name {
        validate_name("site", n)?;
    }
    let site = load_site(folder)?;
    let spec = &site.site.spec;
    if !spec.link_access {
        return Err(SiteError::InvalidArgument(format!(
            "site {:?} does not accept links, so no site can link to it with an offline link; enable link access with: skiff site create {} --enable-link-access [--link-host H]",
            site.name(),
            site.name()
        )));
    }
    let (site_id, new_site) = match opts.site_id {
        Some(id) => (id, false),
        None => (SiteId::random(), true),
    };
    if site_id == site.id() {
        return Err(SiteError::InvalidArgument(format!(
            "--site-id {site_id} is this site's own id: give the id of the site that will link here (its skiff site status shows it)"
        )));
    }
    if let Some(known) = load_linked_site(folder, site_id)? {
        let k = &known.spec;
        return Err(SiteError::InvalidArgument(format!(
            "site {site_id} is linked here already (as {:?}, {} at {}{}), with its own key, and a site id is bound to one key; to give it a new offline link, first forget it here (skiff link revoke {site_id}, then delete {}), or have it link with a token instead (skiff token issue here, skiff token redeem there: it keeps its key)",
            k.site_name,
            if k.grant == OFFLINE_GRANT {
                "offline link made".to_string()
            } else {
                format!("token {} redeemed", k.grant)
            },
            k.linked_at,
            if k.revoked { ", revoked" } else { "" },
            folder.peers_dir().join(format!("{site_id}.yaml")).display()
        )));
    }
    let port = link_port(folder, spec.link_port).await?;
    let hosts = if spec.link_hosts.is_empty() {
        vec!["127.0.0.1".to_string()]
    } else {
        spec.link_hosts.clone()
    };
    let peer_name = opts
        .peer_name
        .clone()
        .unwrap_or_else(|| format!("offline-{}", &site_id.to_string()[..8]));
    let key = skiff_certs::generate_link_key()?;
    let now = OffsetDateTime::now_utc();
    // Signed here at once (the key travels in the file), but in the bound form every
    // redemption CSR has.
    let csr = skiff_certs::redemption_csr(site_id, site.id(), now, &key)?;
    let (_, cert) = site.ca.sign_link_csr(&csr, LINK_CERT_VALIDITY)?;
    let fingerprint = skiff_certs::key_fingerprint_pem(&cert.cert_pem)?;
    let expires = skiff_certs::certificate_validity_pem(&cert.cert_pem)?
        .1
        .format(&Rfc3339)
        .unwrap_or_default();
    let record = LinkedSite::new(LinkedSiteSpec {
        site_id,
        site_name: peer_name.clone(),
        grant: OFFLINE_GRANT.into(),
        certificate_serial: cert.serial.clone(),
        key_fingerprint: fingerprint,
        linked_at: now.format(&Rfc3339).unwrap_or_default(),
        revoked: false,
        revoked_at: None,
        renewed: false,
        replaced_certificates: Vec::new(),
        previous_certificate_serial: None,
        previous_serial_valid_until: None,
    });
    // Built through serde so that fields added to LinkSpec later take their defaults.
    let link_spec: LinkSpec = serde_json::from_value(serde_json::json!({
        "peerSiteId": site.id(),
        "peerSiteName": site.name(),
        "endpoints": hosts.iter().map(|h| join_host_port(h, port)).collect::<Vec<_>>(),
        "peerCa": site.ca.cert_pem(),
        "clientCertificate": cert.cert_pem,
        "clientKey": key,
        "cost": opts.cost.unwrap_or(crate::resources::DEFAULT_LINK_COST),
        "transport": transport,
    }))
    .map_err(|e| SiteError::InvalidArgument(format!("could not build the link: {e}")))?;
    let link = Link::new(opts.name.as_deref().unwrap_or(site.name()), link_spec);
    let mut file = format!(
        "# skiff offline link to site {name:?} ({id}), for the site with id {site_id}.\n\
         # It holds a PRIVATE KEY (spec.clientKey): whoever holds this file can link to {name:?}\n\
         # as site {site_id} until {expires}, or until {name:?} revokes it\n\
         # (skiff link revoke {site_id}).\n\
         # Move it over a trusted channel; delete it once installed.\n",
        name = site.name(),
        id = site.id(),
    );
    if new_site {
        file.push_str(&format!(
            "# No site has this id yet: create the site that uses this file with it:\n\
             #   skiff site create NAME --id {site_id}\n"
        ));
    } else {
        file.push_str(&format!(
            "# Only the site with id {site_id} can use it (skiff site status there shows its id).\n"
        ));
    }
    file.push_str(
        "# Install it there (no network needed): skiff token redeem FILE [--name N]\n\
         # (skiff apply -f FILE installs it as written: it refuses a link name in use for\n\
         # another site, where redeem picks a free name, and takes no --name/--cost/--proxy.)\n",
    );
    file.push_str(&to_yaml(&link));
    Ok(OfflineLink {
        site_id,
        new_site,
        expires,
        link,
        record,
        file,
    })
}

/// Records the redeeming site of `link` as linked here (`peers/ID.yaml`), never over a
/// record of that id (one made meanwhile, e.g. by another `link generate` for the same id):
/// the record is written whole under a temporary name, then given its name only if that name
/// is free (a hard link: atomic, fails when the name exists). Once this returns `Ok` the
/// record is kept, whatever follows: reload a running site with [`admit`].
pub fn commit(folder: &SiteFolder, link: &OfflineLink) -> Result<(), SiteError> {
    let taken = || {
        SiteError::InvalidArgument(format!(
            "site {} linked here while the offline link was being made: the offline link is not recorded (delete its file); run skiff link generate again if still needed",
            link.site_id
        ))
    };
    if load_linked_site(folder, link.site_id)?.is_some() {
        return Err(taken());
    }
    folder.create_dirs()?;
    let path = folder.peers_dir().join(format!("{}.yaml", link.site_id));
    // Unique per call (two commits in one process too): each hard link below is of its own
    // complete record.
    static COMMITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COMMITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = folder.peers_dir().join(format!(
        ".{}.yaml.new.{}.{n}.tmp",
        link.site_id,
        std::process::id()
    ));
    write_atomic(&tmp, to_yaml(&link.record).as_bytes(), PUBLIC_MODE)?;
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(taken()),
        Err(e) => Err(SiteError::io("write", &path, e)),
    }
}

/// Reloads the site if it runs, so it admits a site recorded by [`commit`] at once. Returns
/// whether a running site took it.
pub async fn admit(folder: &SiteFolder) -> Result<bool, SiteError> {
    crate::token::reload_if_running(folder).await
}

/// The port other sites dial: the running site's, else the configured one (a site configured
/// with port 0 must be running).
async fn link_port(folder: &SiteFolder, configured: u16) -> Result<u16, SiteError> {
    match admin_request(&folder.admin_socket(), http::Method::GET, "/v1/site").await {
        Ok(v) => Ok(v
            .get("linkPort")
            .and_then(|p| p.as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(configured)),
        Err(SiteError::NotRunning { .. }) if configured != 0 => Ok(configured),
        Err(SiteError::NotRunning { .. }) => Err(SiteError::InvalidArgument(
            "this site's link port is 0 (a free port at each start) and the site is not running, so the file could not name a port to dial: start it (skiff site run), or give it a fixed port (skiff site create NAME --enable-link-access --link-port P)".into(),
        )),
        Err(e) => Err(e),
    }
}

/// Whether `text` is a `kind: Link` document (an offline link file) rather than a token.
pub fn is_link_file(text: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Head {
        kind: Option<String>,
    }
    serde_saphyr::from_str::<Head>(text).is_ok_and(|h| h.kind.as_deref() == Some("Link"))
}

/// What `skiff token redeem FILE` was asked for when FILE is an offline link.
#[derive(Debug, Clone, Default)]
pub struct InstallOptions {
    /// The link's name [default: the file's `metadata.name`].
    pub name: Option<String>,
    /// Cost of the link [default: the file's].
    pub cost: Option<u32>,
    /// `quic`, `tls` or `auto` [default: the file's].
    pub transport: Option<String>,
}

/// Installs the offline link file `text` at the site in `folder` (no network): checks it
/// ([`crate::site::install_link`]), stores the link with its key in `links/NAME.key` (0600),
/// and reloads the site if it runs. A Kubernetes site refuses (see
/// [`crate::site::install_link`]).
pub async fn install(
    folder: &SiteFolder,
    text: &str,
    opts: &InstallOptions,
) -> Result<Link, SiteError> {
    let origin = std::path::Path::new("the link file");
    let mut link: Link = crate::resources::from_yaml(text, origin)?;
    if link.spec.client_key.is_none() {
        return Err(SiteError::InvalidArgument(
            "the link file has no spec.clientKey, so it is not an offline link (skiff link generate makes those); a link read back from a site is re-made with a token: skiff token issue there, skiff token redeem here".into(),
        ));
    }
    if let Some(n) = &opts.name {
        validate_name("link", n)?;
        link.metadata.name = n.clone();
    }
    if let Some(c) = opts.cost {
        link.spec.cost = c;
    }
    if let Some(t) = &opts.transport {
        link.spec.transport = t.clone();
    }
    let t = &link.spec.transport;
    t.parse::<skiff_router::link::TransportChoice>()
        .map_err(|_| {
            SiteError::InvalidArgument(format!("transport {t:?} is not one of quic, tls, auto"))
        })?;
    let existing = crate::site::list_links(folder)?;
    let taken_by_other = |n: &str| {
        existing
            .iter()
            .any(|(l, _)| l.metadata.name == n && l.spec.peer_site_id != link.spec.peer_site_id)
    };
    if taken_by_other(&link.metadata.name) {
        if opts.name.is_some() {
            return Err(SiteError::Exists {
                what: "link",
                name: link.metadata.name.clone(),
            });
        }
        link.metadata.name = (2..100)
            .map(|i| format!("{}-{i}", link.metadata.name))
            .find(|n| validate_name("link", n).is_ok() && !taken_by_other(n))
            .ok_or_else(|| SiteError::Exists {
                what: "link",
                name: link.metadata.name.clone(),
            })?;
    }
    crate::site::install_link(folder, &link)?;
    crate::token::reload_if_running(folder).await?;
    link.spec.client_key = None;
    Ok(link)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::site::{SiteOptions, create_site};

    /// An offline link for `site_id` whose record names `serial` (only the record is used).
    fn made(site_id: SiteId, serial: &str) -> OfflineLink {
        let record = LinkedSite::new(LinkedSiteSpec {
            site_id,
            site_name: "b".into(),
            grant: OFFLINE_GRANT.into(),
            certificate_serial: serial.into(),
            key_fingerprint: "f".into(),
            linked_at: "2026-01-01T00:00:00Z".into(),
            revoked: false,
            revoked_at: None,
            renewed: false,
            replaced_certificates: Vec::new(),
            previous_certificate_serial: None,
            previous_serial_valid_until: None,
        });
        let link = serde_json::from_value(serde_json::json!({
            "apiVersion": "skiff.io/v1alpha1", "kind": "Link", "metadata": {"name": "a"},
            "spec": {"peerSiteId": SiteId::random(), "endpoints": [], "peerCa": "", "clientCertificate": ""},
        }))
        .unwrap();
        OfflineLink {
            site_id,
            new_site: false,
            expires: String::new(),
            link,
            record,
            file: String::new(),
        }
    }

    #[test]
    fn two_generates_for_one_id_at_once_record_exactly_one() {
        skiff_certs::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let folder = SiteFolder::new(dir.path().join("a"));
        let opts = SiteOptions {
            link_access: true,
            link_port: Some(0),
            ..SiteOptions::default()
        };
        create_site(&folder, "a", &opts).unwrap();
        let rounds = 40;
        for round in 0..rounds {
            let id = SiteId::random();
            let barrier = std::sync::Barrier::new(2);
            let results: Vec<Result<(), SiteError>> = std::thread::scope(|s| {
                let handles: Vec<_> = ["first", "second"]
                    .into_iter()
                    .map(|serial| {
                        let (folder, barrier) = (&folder, &barrier);
                        s.spawn(move || {
                            let m = made(id, serial);
                            barrier.wait();
                            commit(folder, &m)
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let won: Vec<usize> = (0..2).filter(|&i| results[i].is_ok()).collect();
            assert_eq!(won.len(), 1, "round {round}: {results:?}");
            let recorded = load_linked_site(&folder, id).unwrap().unwrap();
            let winner = ["first", "second"][won[0]];
            assert_eq!(recorded.spec.certificate_serial, winner, "round {round}");
            let loser = results[1 - won[0]].as_ref().unwrap_err().to_string();
            assert!(loser.contains("is not recorded"), "{loser}");
        }
        // No temporary record is left behind.
        let left: Vec<_> = std::fs::read_dir(folder.peers_dir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".yaml"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
