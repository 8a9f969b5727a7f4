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
use crate::folder::SiteFolder;
use crate::grant::{LINK_CERT_VALIDITY, join_host_port};
use crate::resources::{Link, LinkSpec, LinkedSite, LinkedSiteSpec, to_yaml, validate_name};
use crate::site::{load_linked_site, load_site, save_linked_site};

/// The `grant` an offline link's LinkedSite record names (no grant was redeemed).
pub const OFFLINE_GRANT: &str = "offline";

/// What `skiff link generate` was asked for.
#[derive(Debug, Clone, Default)]
pub struct GenerateOptions {
    /// The redeeming site's id; `None`: a new id is allocated (the site is then created with
    /// `skiff site create NAME --id ID`).
    pub site_id: Option<SiteId>,
    /// The redeeming site's name as recorded here [default: `offline-<first 8 of its id>`].
    pub peer_name: Option<String>,
    /// The link's name at the redeeming site [default: this site's name].
    pub name: Option<String>,
    /// Cost of the link.
    pub cost: Option<u32>,
    /// `quic`, `tls` or `auto` [default: auto].
    pub transport: Option<String>,
}

/// An offline link made by [`prepare`], not yet recorded here: write [`OfflineLink::file`]
/// out, then [`commit`] it.
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
    let csr = skiff_certs::link_csr(site_id, &peer_name, &key)?;
    let (_, cert) = site.ca.sign_link_csr(&csr, LINK_CERT_VALIDITY)?;
    let fingerprint = skiff_certs::key_fingerprint_pem(&cert.cert_pem)?;
    let now = OffsetDateTime::now_utc();
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
        "# Install it there (no network needed): skiff token redeem FILE   (or: skiff apply -f FILE)\n",
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

/// Records the redeeming site of `link` as linked here and, if the site runs, reloads it so
/// it admits that site at once. Returns whether a running site took it. A site of that id
/// recorded meanwhile is not overwritten.
pub async fn commit(folder: &SiteFolder, link: &OfflineLink) -> Result<bool, SiteError> {
    if load_linked_site(folder, link.site_id)?.is_some() {
        return Err(SiteError::InvalidArgument(format!(
            "site {} linked here while the offline link was being made: the offline link is not recorded (delete its file); run skiff link generate again if still needed",
            link.site_id
        )));
    }
    save_linked_site(folder, &link.record)?;
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
